//! `v3lockpb.Lock`: Lock and Unlock, etcd's `concurrency.Mutex` run in the
//! server (etcd's `v3lock` does the same through an internal client).

use std::rc::Rc;

use bytes::Bytes;

use super::recipes::{self, session_key};
use super::{ServiceContext, missing_method, unary};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::range_request::SortOrder;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{DeleteRangeRequest, TxnRequest};
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::shard::write_path::WritePath;
use crate::store::write::WriteRequest;

pub async fn call(
    context: &ServiceContext,
    method: &str,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    match method {
        "Lock" => {
            unary(requests, responses, async |request| {
                lock(context, request).await
            })
            .await
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

/// Deletes a waiter's key if its Lock call ends before it is acquired
/// (the client went away or the deadline passed), as etcd's mutex does.
pub struct ReleaseOnDrop {
    pub write_path: Rc<WritePath>,
    pub key: Option<Bytes>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let write_path = self.write_path.clone();
            monoio::spawn(async move {
                let delete = WriteRequest::DeleteRange(DeleteRangeRequest {
                    key,
                    ..Default::default()
                });
                let _ = write_path.write(delete).await;
            });
        }
    }
}

/// etcd's `Mutex.Lock`: create `name/<lease hex>` if absent, then wait
/// until every key under `name/` created before it is gone.
async fn lock(context: &ServiceContext, request: LockRequest) -> Result<LockResponse, Status> {
    let lease = recipes::session_lease(context, request.lease).await?;
    let prefix = recipes::recipe_prefix(&request.name);
    let key = session_key(&prefix, lease);
    let owner = recipes::range_op(recipes::first_by_create(&prefix, SortOrder::Ascend, 0));
    let txn = TxnRequest {
        compare: vec![recipes::compare_create_revision(&key, 0)],
        success: vec![recipes::put_op(&key, Bytes::new(), lease), owner.clone()],
        failure: vec![recipes::get_op(&key), owner],
    };
    let response = recipes::txn(context, txn).await?;
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
        return Ok(LockResponse {
            header: response.header,
            key,
        });
    }
    let mut guard = ReleaseOnDrop {
        write_path: context.write_path.clone(),
        key: Some(key.clone()),
    };
    let header = recipes::wait_deletes(context, &prefix, my_revision - 1).await?;
    guard.key = None;
    Ok(LockResponse { header, key })
}

async fn unlock(
    context: &ServiceContext,
    request: UnlockRequest,
) -> Result<UnlockResponse, Status> {
    let header = recipes::delete(context, request.key).await?;
    Ok(UnlockResponse { header })
}
