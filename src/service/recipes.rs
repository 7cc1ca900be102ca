//! The building blocks of etcd's `concurrency` package (mutex and
//! election), run inside the server on the store directly: the Lock and
//! Election services are etcd's recipes over KV, Lease and Watch, and give
//! the same answers.

use std::rc::Rc;

use bytes::Bytes;
use futures_channel::oneshot;

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
use crate::shard::write_path::WritePath;
use crate::store::error::KvError;
use crate::store::key_range::{KeyRange, prefix_end};
use crate::store::write::WriteRequest;
use crate::watch::CATCH_UP_CHUNK_CHANGES;
use crate::watch::history::read_changes;

/// etcd's `concurrency.DefaultSessionTTL`: the lease a recipe grants when
/// the request names none.
pub const DEFAULT_SESSION_TTL_SECONDS: i64 = 60;

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
        .map_err(recipe_error_from)?;
    Ok(id)
}

/// The prefix a recipe's keys live under: `name/`.
pub fn recipe_prefix(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Bytes::from(prefix)
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
    range_op(RangeRequest {
        key: key.clone(),
        ..Default::default()
    })
}

pub fn range_op(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(request)),
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
    recipe_error(status.message())
}

/// A Txn as a client sends it (the KV service's own checks and reads).
pub async fn txn(context: &ServiceContext, request: TxnRequest) -> Result<TxnResponse, Status> {
    super::kv::txn(context, request)
        .await
        .map_err(as_recipe_error)
}

/// A linearizable Range as a client sends it; the header and the keys.
pub async fn range(
    context: &ServiceContext,
    request: RangeRequest,
) -> Result<(Option<ResponseHeader>, Vec<KeyValue>), Status> {
    let response = super::kv::range(context, request)
        .await
        .map_err(as_recipe_error)?;
    Ok((response.header, response.kvs))
}

/// A DeleteRange of one key as a client sends it; the response header.
pub async fn delete(
    context: &ServiceContext,
    key: Bytes,
) -> Result<Option<ResponseHeader>, Status> {
    let request = DeleteRangeRequest {
        key,
        ..Default::default()
    };
    let response = super::kv::delete_range(context, request)
        .await
        .map_err(as_recipe_error)?;
    Ok(response.header)
}

/// A key a Lock or Campaign call put in place for its client (a lock
/// waiter's, an election candidate's), deleted if the call ends before
/// its client has the answer: the client reset the stream, went away, or
/// the deadline passed. etcd's `Mutex.Lock` unlocks and
/// `Election.Campaign` resigns when their context ends the same way.
/// [`Self::keep`] once the answer is out.
pub struct OwnKey {
    write_path: Rc<WritePath>,
    /// What to delete; `None` once kept.
    undo: Option<Undo>,
}

/// How a dropped [`OwnKey`] undoes its key.
#[derive(Debug, Clone)]
pub struct Undo {
    pub key: Bytes,
    /// Delete only while the key is still the one created at this
    /// revision (etcd's `Resign`); `None`: delete whatever is there
    /// (etcd's `Unlock`).
    pub created_at: Option<i64>,
}

impl Undo {
    fn request(self) -> WriteRequest {
        let delete = DeleteRangeRequest {
            key: self.key.clone(),
            ..Default::default()
        };
        match self.created_at {
            None => WriteRequest::DeleteRange(delete),
            Some(revision) => WriteRequest::Txn(TxnRequest {
                compare: vec![compare_create_revision(&self.key, revision)],
                success: vec![delete_op(&self.key)],
                failure: Vec::new(),
            }),
        }
    }

    /// Runs the delete on a task of its own: the call that owned the key
    /// is ending (its future is being dropped) and cannot wait for it.
    fn spawn(self, write_path: Rc<WritePath>) {
        let request = self.request();
        monoio::spawn(async move {
            if let Err(error) = write_path.write(request).await {
                tracing::warn!(%error, "could not delete the key of a canceled Lock or Campaign; its lease will expire it");
            }
        });
    }
}

impl OwnKey {
    pub fn new(write_path: Rc<WritePath>, undo: Undo) -> Self {
        Self {
            write_path,
            undo: Some(undo),
        }
    }

    /// The client has its answer: the key stays.
    pub fn keep(mut self) {
        self.undo = None;
    }
}

impl Drop for OwnKey {
    fn drop(&mut self) {
        if let Some(undo) = self.undo.take() {
            undo.spawn(self.write_path.clone());
        }
    }
}

/// Runs `txn`, which creates `key` when it succeeds, on a task of its own.
/// Once handed to the write path a write completes even if the call that
/// sent it is canceled (it may commit without a reply, as in etcd); a
/// call canceled while its txn runs would then leave the key behind with
/// nobody to learn of it. So the key is deleted if the call is gone when
/// the txn answers, or ends before taking the answer.
pub async fn txn_creating_key(
    context: &Rc<ServiceContext>,
    request: TxnRequest,
    key: Bytes,
) -> Result<TxnResponse, Status> {
    let (answer, answered) = oneshot::channel();
    let task_context = context.clone();
    let task_key = key.clone();
    monoio::spawn(async move {
        let result = txn(&task_context, request).await;
        if let Err(Ok(response)) = answer.send(result) {
            undo_created(&response, task_key, &task_context.write_path);
        }
    });
    let mut pending = PendingAnswer {
        answered,
        key,
        write_path: context.write_path.clone(),
    };
    (&mut pending.answered)
        .await
        .map_err(|_| Status::internal("grpc: the recipe's txn task ended without an answer"))?
}

/// The answer of a [`txn_creating_key`] task: if the call ends with the
/// answer delivered but not taken, the key it created is deleted.
struct PendingAnswer {
    answered: oneshot::Receiver<Result<TxnResponse, Status>>,
    key: Bytes,
    write_path: Rc<WritePath>,
}

impl Drop for PendingAnswer {
    fn drop(&mut self) {
        if let Ok(Some(Ok(response))) = self.answered.try_recv() {
            undo_created(&response, self.key.clone(), &self.write_path);
        }
    }
}

/// Deletes `key` if `response` (of a txn that creates it) created it.
fn undo_created(response: &TxnResponse, key: Bytes, write_path: &Rc<WritePath>) {
    if response.succeeded {
        let created_at = response.header.as_ref().map(|header| header.revision);
        Undo { key, created_at }.spawn(write_path.clone());
    }
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
        let (header, kvs) = range(context, request).await?;
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
    let key_range = KeyRange::Single(key.clone());
    let mut after = revision;
    loop {
        match first_change(context, &key_range, after).await {
            Ok((_, None)) => return Ok(()),
            Ok((at, Some(_))) => after = at,
            // History compacted under us: look at the key itself instead.
            Err(through) => {
                let space = context.write_path.space();
                let shard = space.shard_map().shard_of(key);
                if space.memtable(shard).get(key, through).is_none() {
                    return Ok(());
                }
                after = through;
            }
        }
    }
}

/// Waits for the first change in `key_range` after `revision`: the
/// revision it happened at and the key-value written (`None` for a delete).
pub async fn next_change(
    context: &ServiceContext,
    key_range: &KeyRange,
    revision: i64,
) -> Result<(i64, Option<KeyValue>), Status> {
    first_change(context, key_range, revision)
        .await
        .map_err(|_| KvError::Compacted.into())
}

/// [`next_change`], or `Err(through)` when the history after `revision`
/// was compacted (`through`: the watermark it read up to).
async fn first_change(
    context: &ServiceContext,
    key_range: &KeyRange,
    revision: i64,
) -> Result<(i64, Option<KeyValue>), i64> {
    let space = context.write_path.space();
    let shards = space.shards_for(key_range);
    let mut after = revision;
    loop {
        let through = space.clock().wait_applied(after + 1).await;
        let chunk = read_changes(
            space,
            &shards,
            after,
            through,
            CATCH_UP_CHUNK_CHANGES,
            usize::MAX,
        )
        .map_err(|_| through)?;
        if let Some(change) = chunk
            .changes()
            .iter()
            .find(|change| key_range.contains(&change.key))
        {
            let revision = change.position.revision;
            let value = change
                .version
                .as_ref()
                .map(|version| version.to_key_value(&change.key, revision));
            return Ok((revision, value));
        }
        after = chunk.through;
    }
}

/// Errors the recipes return as plain Go errors, which grpc-go sends as
/// UNKNOWN with the error's text.
pub fn recipe_error(message: &str) -> Status {
    Status::new(Code::Unknown, message)
}

fn recipe_error_from(error: KvError) -> Status {
    as_recipe_error(error.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys() {
        assert_eq!(
            session_key(b"lock/", 0x694d),
            Bytes::from_static(b"lock/694d")
        );
    }
}
