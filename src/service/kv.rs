//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use prost::Message;

use super::{ServiceContext, missing_method, quota, unary};
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
            unary(requests, responses, async |request| {
                txn(context, request).await
            })
            .await
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
/// includes every write acknowledged before it (read-your-writes).
async fn read_revision(context: &ServiceContext, serializable: bool) -> i64 {
    let clock = context.write_path.space().clock();
    if serializable {
        clock.watermark()
    } else {
        clock.wait_applied(clock.current()).await
    }
}

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
    let at = read_revision(context, request.serializable).await;
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

pub(super) async fn txn(
    context: &ServiceContext,
    request: TxnRequest,
) -> Result<TxnResponse, Status> {
    quota::admit(context, quota::txn_cost(&request)).await?;
    let request = check_txn(context, request).await?;
    let mut response = if write::is_read_only(&request) {
        let at = read_revision(context, is_serializable(&request)).await;
        write::read_only_txn(context.write_path.space(), &request, at)?
    } else {
        check_request_size(context, &request)?;
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

/// Txns with more ops than this (at all depths) have their duplicate-key
/// check run on a helper thread: the check is O(n log n), but a 2 MiB txn
/// holds about 250,000 ops, tens of milliseconds of work that would stall
/// every connection and shard worker on this core. Below it, the check
/// costs less than handing it over.
const INLINE_OVERLAP_CHECK_OPS: usize = 1024;

/// etcd's txn checks, in etcd's order (`request_check`); hands the
/// request back for the write.
async fn check_txn(context: &ServiceContext, request: TxnRequest) -> Result<TxnRequest, Status> {
    let total_ops = request_check::check_txn_shape(&request, context.max_txn_ops)?;
    if total_ops <= INLINE_OVERLAP_CHECK_OPS {
        request_check::check_txn_overlaps(&request)?;
        return Ok(request);
    }
    let (request, checked) = context
        .helpers
        .run(move || {
            let checked = request_check::check_txn_overlaps(&request);
            (request, checked)
        })
        .await
        .map_err(|error| Status::internal(format!("checking a txn failed: {error}")))?;
    checked?;
    Ok(request)
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
