//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use prost::Message;

use bytes::Bytes;

use super::{ServiceContext, missing_method, quota, unary};
use crate::grpc::call::decode_request;
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::store::error::KvError;
use crate::store::request_check;
use crate::store::write::{self, WriteRequest, WriteResponse};

pub async fn call(
    context: &ServiceContext,
    method: &str,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    match method {
        "Range" => {
            unary(requests, responses, async |request| {
                range(context, request).await
            })
            .await
        }
        "Put" => {
            unary(requests, responses, async |request| {
                put(context, request).await
            })
            .await
        }
        "DeleteRange" => {
            unary(requests, responses, async |request| {
                delete_range(context, request).await
            })
            .await
        }
        "Txn" => {
            let message = requests.unary_message().await?;
            let response = txn_message(context, message).await?;
            responses.send(&response).await
        }
        "Compact" => {
            unary(requests, responses, async |request| {
                compact(context, request).await
            })
            .await
        }
        other => Err(missing_method("etcdserverpb.KV", other, &[])),
    }
}

/// The revision a read runs at. Serializable: whatever is applied now.
/// Linearizable: everything taken before the request arrived, which
/// includes every write acknowledged before it (read-your-writes); on a
/// cluster member, everything committed when it arrived, as the groups'
/// leaders confirm (ReadIndex), so a member that was cut off or fell
/// behind never answers from stale state.
async fn read_revision(context: &ServiceContext, serializable: bool) -> Result<i64, KvError> {
    let clock = context.write_path.space().clock();
    if serializable {
        Ok(clock.watermark())
    } else if context.identity.role.is_some() {
        context
            .write_path
            .confirm_reads(LINEARIZABLE_READ_LIMIT)
            .await?;
        Ok(clock.watermark())
    } else {
        Ok(clock.wait_applied(clock.current()).await)
    }
}

/// How long a cluster member's linearizable read waits for its groups'
/// leaders (etcd waits for its ReadIndex up to its request timeout).
const LINEARIZABLE_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// etcd refuses a write whose raft entry would exceed `--max-request-bytes`.
fn check_request_size(context: &ServiceContext, request: &impl Message) -> Result<(), KvError> {
    if request.encoded_len() > context.max_request_bytes {
        return Err(KvError::RequestTooLarge);
    }
    Ok(())
}

pub(super) async fn range(
    context: &ServiceContext,
    request: RangeRequest,
) -> Result<RangeResponse, Status> {
    request_check::check_range(&request)?;
    let at = read_revision(context, request.serializable).await?;
    let mut response = write::read_range(context.write_path.space(), &request, at)?;
    context.fill_header(&mut response.header);
    Ok(response)
}

async fn put(context: &ServiceContext, request: PutRequest) -> Result<PutResponse, Status> {
    // etcd's quota check runs before the request's own checks.
    quota::admit(context, quota::put_cost(&request)).await?;
    request_check::check_put(&request)?;
    check_request_size(context, &request)?;
    match context
        .write_path
        .write(WriteRequest::Put(request))
        .await?
        .response
    {
        WriteResponse::Put(mut response) => {
            context.fill_header(&mut response.header);
            Ok(response)
        }
        other => Err(mismatched_response("Put", &other)),
    }
}

pub(super) async fn delete_range(
    context: &ServiceContext,
    request: DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Status> {
    request_check::check_delete(&request)?;
    check_request_size(context, &request)?;
    match context
        .write_path
        .write(WriteRequest::DeleteRange(request))
        .await?
        .response
    {
        WriteResponse::DeleteRange(mut response) => {
            context.fill_header(&mut response.header);
            Ok(response)
        }
        other => Err(mismatched_response("DeleteRange", &other)),
    }
}

/// A Txn request message larger than this is decoded and checked on a
/// helper thread: a 2 MiB txn holds about 250,000 ops, and decoding them
/// (about 6 ms, 25 ms cold) plus etcd's duplicate-key check (15-20 ms,
/// O(n log n)) would stall every connection and shard worker on this core
/// meanwhile. Smaller ones cost less than the hand-over.
const INLINE_TXN_BYTES: usize = 64 * 1024;

/// A Txn call's message: decoded and checked inline when small, on the
/// node's helper threads when large. Errors come in etcd's order either
/// way: the quota first, then the request's own checks.
async fn txn_message(context: &ServiceContext, message: Bytes) -> Result<TxnResponse, Status> {
    if message.len() <= INLINE_TXN_BYTES {
        return txn(context, decode_request(message)?).await;
    }
    context
        .metrics
        .count(|counters| counters.txn_checks_off_core += 1);
    let max_txn_ops = context.max_txn_ops;
    let (request, checked, size) = context
        .helpers
        .run(move || -> Result<_, Status> {
            let request: TxnRequest = decode_request(message)?;
            let checked = request_check::check_txn(&request, max_txn_ops);
            let size = request.encoded_len();
            Ok((request, checked, size))
        })
        .await
        .map_err(|error| Status::internal(format!("checking a txn failed: {error}")))??;
    quota::admit(context, quota::txn_cost(&request)).await?;
    checked?;
    txn_checked(context, request, size).await
}

/// A Txn from inside the server (the lock and election recipes) or a
/// small one from a client.
pub(super) async fn txn(
    context: &ServiceContext,
    request: TxnRequest,
) -> Result<TxnResponse, Status> {
    // etcd's quota check runs before the request's own checks.
    quota::admit(context, quota::txn_cost(&request)).await?;
    request_check::check_txn(&request, context.max_txn_ops)?;
    let size = request.encoded_len();
    txn_checked(context, request, size).await
}

/// A txn that passed etcd's checks; `size` is its encoded length, which
/// etcd compares with `--max-request-bytes` for writes only.
async fn txn_checked(
    context: &ServiceContext,
    request: TxnRequest,
    size: usize,
) -> Result<TxnResponse, Status> {
    let mut response = if write::is_read_only(&request) {
        let at = read_revision(context, is_serializable(&request)).await?;
        write::read_only_txn(context.write_path.space(), &request, at)?
    } else {
        if size > context.max_request_bytes {
            return Err(KvError::RequestTooLarge.into());
        }
        match context
            .write_path
            .write(WriteRequest::Txn(request))
            .await?
            .response
        {
            WriteResponse::Txn(response) => response,
            other => return Err(mismatched_response("Txn", &other)),
        }
    };
    context.fill_header(&mut response.header);
    Ok(response)
}

/// etcd serves a read-only txn without a linearizable barrier only when
/// every range in it (at any depth) asked to be serializable.
fn is_serializable(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(range)) => range.serializable,
            Some(Request::RequestTxn(nested)) => is_serializable(nested),
            _ => true,
        })
}

async fn compact(
    context: &ServiceContext,
    request: CompactionRequest,
) -> Result<CompactionResponse, Status> {
    context
        .write_path
        .compact(request.revision, request.physical)
        .await?;
    let mut response = CompactionResponse::default();
    context.fill_header(&mut response.header);
    Ok(response)
}

pub(super) fn mismatched_response(method: &str, response: &WriteResponse) -> Status {
    Status::internal(format!(
        "{method} produced a mismatched response: {response:?}"
    ))
}
