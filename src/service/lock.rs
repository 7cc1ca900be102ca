//! `v3lockpb.Lock`: Lock and Unlock, etcd's `concurrency.Mutex` run in the
//! server (etcd's `v3lock` does the same through an internal client).

use std::rc::Rc;

use bytes::Bytes;

use super::recipes::{self, OwnKey, Undo, session_key};
use super::{ServiceContext, missing_method, unary};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::TxnRequest;
use crate::proto::etcdserverpb::range_request::SortOrder;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

pub async fn call(
    context: &Rc<ServiceContext>,
    method: &str,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    match method {
        "Lock" => {
            let request = requests.unary::<LockRequest>().await?;
            let (response, waiter_key) = lock(context, request).await?;
            // The key stays only once the client has its answer: a call
            // canceled while the answer waits for the client deletes it.
            responses.send(&response).await?;
            waiter_key.keep();
            Ok(())
        }
        "Unlock" => {
            unary(requests, responses, async |request| {
                unlock(context, request).await
            })
            .await
        }
        other => Err(missing_method("v3lockpb.Lock", other, &[])),
    }
}

/// etcd's `Mutex.Lock`: create `name/<lease hex>` if absent, then wait
/// until every key under `name/` created before it is gone. The waiter's
/// key is deleted if the call ends before its client has the answer
/// (etcd's `Mutex.Lock` unlocks when its context ends).
async fn lock(
    context: &Rc<ServiceContext>,
    request: LockRequest,
) -> Result<(LockResponse, OwnKey), Status> {
    let lease = recipes::session_lease(context, request.lease).await?;
    let prefix = recipes::recipe_prefix(&request.name);
    let key = session_key(&prefix, lease);
    let owner = recipes::range_op(recipes::first_by_create(&prefix, SortOrder::Ascend, 0));
    let txn = TxnRequest {
        compare: vec![recipes::compare_create_revision(&key, 0)],
        success: vec![recipes::put_op(&key, Bytes::new(), lease), owner.clone()],
        failure: vec![recipes::get_op(&key), owner],
    };
    let response = recipes::txn_creating_key(context, txn, key.clone()).await?;
    // Armed before the next await, so no cancellation can slip between.
    let waiter_key = OwnKey::new(
        context.write_path.clone(),
        Undo {
            key: key.clone(),
            created_at: None,
        },
    );
    let header_revision = response.header.as_ref().map_or(0, |header| header.revision);
    let ranges: Vec<_> = response
        .responses
        .iter()
        .filter_map(|op| match &op.response {
            Some(Response::ResponseRange(range)) => Some(range),
            _ => None,
        })
        .collect();
    let my_revision = if response.succeeded {
        header_revision
    } else {
        ranges
            .first()
            .and_then(|range| range.kvs.first())
            .map_or(header_revision, |kv| kv.create_revision)
    };
    let owner_revision = ranges
        .last()
        .and_then(|range| range.kvs.first())
        .map(|kv| kv.create_revision);
    if owner_revision.is_none_or(|owner| owner == my_revision) {
        let header = response.header;
        return Ok((LockResponse { header, key }, waiter_key));
    }
    let header = recipes::wait_deletes(context, &prefix, my_revision - 1).await?;
    Ok((LockResponse { header, key }, waiter_key))
}

async fn unlock(
    context: &ServiceContext,
    request: UnlockRequest,
) -> Result<UnlockResponse, Status> {
    let header = recipes::delete(context, request.key).await?;
    Ok(UnlockResponse { header })
}
