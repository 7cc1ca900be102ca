//! The building blocks of etcd's `concurrency` package (mutex and
//! election), run inside the server on the store directly: the Lock and
//! Election services are etcd's recipes over KV, Lease and Watch, and give
//! the same answers.

use bytes::Bytes;

use super::ServiceContext;
use crate::grpc::{Code, Status};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use crate::store::write::{self, WriteRequest, WriteResponse};
use crate::watch::history::read_changes;

/// etcd's `concurrency.DefaultSessionTTL`: the lease a recipe grants when
/// the request names none.
pub const DEFAULT_SESSION_TTL_SECONDS: i64 = 60;

/// The end of the range of keys starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// The session lease: the one given, or a fresh one with etcd's default
/// session TTL (a session never keeps it alive: the server-side recipes
/// "orphan" their sessions, as etcd's do).
pub async fn session_lease(context: &ServiceContext, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let id = context.write_path.space().leases().new_id();
    context
        .write_path
        .grant_lease(id, DEFAULT_SESSION_TTL_SECONDS)
        .await
        .map_err(|error| as_recipe_error(error.into()))?;
    Ok(id)
}

/// The key a session holds under `prefix`: `prefix` + the lease in hex.
pub fn session_key(prefix: &[u8], lease: i64) -> Bytes {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    Bytes::from(key)
}

pub fn compare_create_revision(key: &Bytes, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

pub fn put_op(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub fn get_op(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    }
}

pub fn delete_op(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    }
}

/// The oldest (`SortOrder::Ascend`) or newest key under `prefix` by
/// create revision, with create revision at most `max_create_revision`
/// (0: any): etcd's `WithFirstCreate` / `WithLastCreate`.
pub fn first_by_create(prefix: &[u8], order: SortOrder, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

/// etcd's recipes get store errors through an internal client as plain Go
/// errors, which grpc-go sends as UNKNOWN with the same text.
pub fn as_recipe_error(status: Status) -> Status {
    Status::new(Code::Unknown, status.message())
}

pub async fn txn(context: &ServiceContext, request: TxnRequest) -> Result<TxnResponse, Status> {
    txn_inner(context, request).await.map_err(as_recipe_error)
}

async fn txn_inner(context: &ServiceContext, request: TxnRequest) -> Result<TxnResponse, Status> {
    let outcome = if write::is_read_only(&request) {
        let space = context.write_path.space();
        let at = space.clock().watermark();
        write::read_only_txn(space, &request, at)?
    } else {
        match context
            .write_path
            .write(WriteRequest::Txn(request))
            .await?
            .response
        {
            WriteResponse::Txn(response) => response,
            other => return Err(super::kv::mismatched_response("Txn", &other)),
        }
    };
    let mut response = outcome;
    context.fill_header(&mut response.header);
    Ok(response)
}

/// A range read at the watermark (every acknowledged write is visible:
/// writes are acknowledged only once the watermark passed them).
pub fn range(
    context: &ServiceContext,
    request: &RangeRequest,
) -> Result<(Option<ResponseHeader>, Vec<KeyValue>), Status> {
    let space = context.write_path.space();
    let mut response = write::read_range(space, request, space.clock().watermark())
        .map_err(|error| as_recipe_error(error.into()))?;
    context.fill_header(&mut response.header);
    Ok((response.header, response.kvs))
}

/// etcd's `waitDeletes`: waits until no key under `prefix` with create
/// revision at most `max_create_revision` is left; returns the header of
/// the read that found none.
pub async fn wait_deletes(
    context: &ServiceContext,
    prefix: &[u8],
    max_create_revision: i64,
) -> Result<Option<ResponseHeader>, Status> {
    loop {
        let request = first_by_create(prefix, SortOrder::Descend, max_create_revision);
        let (header, kvs) = range(context, &request)?;
        let Some(newest) = kvs.into_iter().next() else {
            return Ok(header);
        };
        let revision = header.as_ref().map_or(0, |header| header.revision);
        wait_delete(context, &newest.key, revision).await?;
    }
}

/// Waits for a delete of `key` after `revision` (the key existed then).
pub async fn wait_delete(
    context: &ServiceContext,
    key: &Bytes,
    revision: i64,
) -> Result<(), Status> {
    let space = context.write_path.space();
    let shards = [space.shard_map().shard_of(key)];
    let mut after = revision;
    loop {
        let through = space.clock().wait_applied(after + 1).await;
        match read_changes(
            space,
            &shards,
            after,
            through,
            crate::watch::CATCH_UP_CHUNK_CHANGES,
        ) {
            Ok(chunk) => {
                let deleted = chunk
                    .changes
                    .iter()
                    .any(|change| change.key == *key && change.version.is_none());
                if deleted {
                    return Ok(());
                }
                after = chunk.through;
            }
            // History compacted under us: look at the key itself instead.
            Err(_) => {
                if space.memtable(shards[0]).get(key, through).is_none() {
                    return Ok(());
                }
                after = through;
            }
        }
    }
}

/// Waits for the first change of `key` after `revision`; returns it as a
/// key-value (`None` for a delete) with the revision it happened at.
pub async fn next_change(
    context: &ServiceContext,
    range_start: &Bytes,
    range_end: &Bytes,
    revision: i64,
) -> Result<(i64, Option<KeyValue>, Bytes), Status> {
    let space = context.write_path.space();
    let key_range = crate::store::key_range::KeyRange::from_bytes(range_start, range_end);
    let shards = space.shards_for(&key_range);
    let mut after = revision;
    loop {
        let through = space.clock().wait_applied(after + 1).await;
        let chunk = read_changes(
            space,
            &shards,
            after,
            through,
            crate::watch::CATCH_UP_CHUNK_CHANGES,
        )
        .map_err(|_| {
            Status::new(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            )
        })?;
        if let Some(change) = chunk
            .changes
            .iter()
            .find(|change| key_range.contains(&change.key))
        {
            let revision = change.position.revision;
            let value = change
                .version
                .as_ref()
                .map(|version| version.to_key_value(&change.key, revision));
            return Ok((revision, value, change.key.clone()));
        }
        after = chunk.through;
    }
}

/// Errors the recipes return as plain Go errors, which grpc-go sends as
/// UNKNOWN with the error's text.
pub fn recipe_error(message: &str) -> Status {
    Status::new(Code::Unknown, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_and_session_keys() {
        assert_eq!(prefix_end(b"abc"), Bytes::from_static(b"abd"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
        assert_eq!(
            session_key(b"lock/", 0x694d),
            Bytes::from_static(b"lock/694d")
        );
    }
}
