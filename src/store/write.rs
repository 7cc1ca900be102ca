//! Evaluation of write requests (Put, DeleteRange, Txn), pure: reads come
//! from the key space, effects come out as a [`ChangeSet`] that the caller
//! applies to the owning shards.
//!
//! A write runs in two steps so that it takes a revision only if it changes
//! something (etcd: "every write that changes the store takes exactly one
//! revision"):
//! 1. [`prepare`] evaluates compares and etcd's apply-time checks against the
//!    state before the write and decides whether anything will change;
//! 2. [`execute`] produces the response and the changes at the revision
//!    taken (or none).
//!
//! Both steps must see the same state: the caller holds every participant
//! shard still between them (see `crate::shard`).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::error::KvError;
use super::key_range::KeyRange;
use super::key_space::{KeySpace, RangeResult};
use super::memtable::Version;
use super::pending::{PendingVersions, lay_over};
use super::range;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    request_op::Request, response_op::Response,
};
use crate::proto::mvccpb::KeyValue;

/// Reads with this revision see the newest version of every key.
pub const LATEST: i64 = i64::MAX;

/// A write request as the store sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteRequest {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Delete every key attached to the lease, at one revision, and end the
    /// lease. Touches every shard (see `crate::lease`).
    LeaseRevoke(i64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    LeaseRevoke(LeaseRevokeResponse),
}

/// The keys a write changes, all at one revision.
#[derive(Debug, Default, Clone)]
pub struct ChangeSet {
    pub revision: i64,
    /// Key order; a key appears at most once (its final version).
    pub changes: BTreeMap<Bytes, Version>,
    /// The lease this write ends (a `LeaseRevoke`): logged on the lease's
    /// home shard even when no key was attached (and no revision taken).
    pub revoked_lease: Option<i64>,
}

impl ChangeSet {
    /// Whether this write must be logged: it changed keys or ended a lease.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.revoked_lease.is_none()
    }
}

/// Which branch each txn (and each nested txn on the taken path) takes,
/// decided against the state before the write, as etcd does.
#[derive(Debug, Clone)]
pub struct TxnPath {
    pub succeeded: bool,
    /// One entry per nested txn in the taken branch, in op order.
    pub nested: Vec<TxnPath>,
}

/// Outcome of [`prepare`].
#[derive(Debug, Clone)]
pub struct PreparedWrite {
    pub request: WriteRequest,
    pub txn_path: Option<TxnPath>,
    /// True when the write changes at least one key and so takes a revision.
    pub changes_something: bool,
}

/// Where a write reads from and which revisions it reports.
pub struct WriteContext<'a> {
    pub space: &'a KeySpace,
    /// etcd's `beginRev`: the store revision before this write.
    pub begin_revision: i64,
    /// The revision reads without an explicit revision see: [`LATEST`] for
    /// writes (their shards are held still), the read revision for a
    /// read-only txn.
    pub read_revision: i64,
    /// Looks up a lease by ID.
    pub lease_exists: &'a dyn Fn(i64) -> bool,
    /// What the shard proposed and has not applied yet (a shard worker's
    /// own writes; `None` where every participant is applied through, as
    /// for a coordinator's held shards and for reads). Reads at [`LATEST`]
    /// see it, so a write sees the writes accepted before it.
    pub pending: Option<&'a PendingVersions>,
}

impl WriteContext<'_> {
    /// `key`'s live version at `at`, pending versions included.
    fn get(&self, key: &Bytes, at: i64) -> Option<KeyValue> {
        if let Some((revision, version)) = self.pending.and_then(|pending| pending.newest(key, at))
        {
            return (!version.is_tombstone()).then(|| version.to_key_value(key, revision));
        }
        self.space
            .memtable(self.space.shard_map().shard_of(key))
            .get(key, at)
    }

    /// `KeySpace::range` with pending versions laid over it.
    fn range(
        &self,
        range: &KeyRange,
        at: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult, KvError> {
        let Some(pending) = self.pending.filter(|pending| pending.touches(range)) else {
            return self.space.range(range, at, limit, count_only);
        };
        let stored = self.space.range(range, at, 0, false)?;
        let mut key_values = pending.overlay(range, at, stored.key_values);
        let count = key_values.len();
        if count_only {
            key_values.clear();
        } else if limit != 0 {
            key_values.truncate(limit);
        }
        Ok(RangeResult { key_values, count })
    }

    /// True when at least one key of `range` is live at `at`.
    fn any_live(&self, range: &KeyRange, at: i64) -> bool {
        match self.pending.filter(|pending| pending.touches(range)) {
            None => self.space.any_live(range, at),
            Some(_) => self
                .range(range, at, 0, true)
                .is_ok_and(|found| found.count > 0),
        }
    }

    /// Every key attached to `lease`, in key order, pending versions included.
    fn keys_with_lease(&self, lease: i64) -> Vec<Bytes> {
        let stored = self.space.keys_with_lease(lease);
        match self.pending {
            Some(pending) => pending.keys_with_lease(lease, stored),
            None => stored,
        }
    }
}

/// Every key a write request may read or change, as ranges; the caller
/// derives the participant shards from them.
pub fn touched_ranges(request: &WriteRequest) -> Vec<KeyRange> {
    let mut ranges = Vec::new();
    match request {
        WriteRequest::Put(put) => ranges.push(KeyRange::Single(put.key.clone())),
        WriteRequest::DeleteRange(delete) => {
            ranges.push(KeyRange::from_bytes(&delete.key, &delete.range_end))
        }
        WriteRequest::Txn(txn) => collect_txn_ranges(txn, &mut ranges),
        // Any key may be attached to the lease, and no put may attach one
        // while the revocation runs: every shard takes part.
        WriteRequest::LeaseRevoke(_) => ranges.push(KeyRange::from_request(b"\0", b"\0")),
    }
    ranges
}

fn collect_txn_ranges(txn: &TxnRequest, ranges: &mut Vec<KeyRange>) {
    ranges.extend(
        txn.compare
            .iter()
            .map(|compare| KeyRange::from_bytes(&compare.key, &compare.range_end)),
    );
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(Request::RequestRange(range)) => {
                ranges.push(KeyRange::from_bytes(&range.key, &range.range_end))
            }
            Some(Request::RequestPut(put)) => ranges.push(KeyRange::Single(put.key.clone())),
            Some(Request::RequestDeleteRange(delete)) => {
                ranges.push(KeyRange::from_bytes(&delete.key, &delete.range_end))
            }
            Some(Request::RequestTxn(nested)) => collect_txn_ranges(nested, ranges),
            None => {}
        }
    }
}

impl WriteRequest {
    /// Whether the request may store new data (a put anywhere in it, nested
    /// Txns included): what a full disk refuses while it still lets
    /// deletions through.
    pub fn may_add_data(&self) -> bool {
        fn txn_has_put(txn: &TxnRequest) -> bool {
            txn.success
                .iter()
                .chain(&txn.failure)
                .any(|op| match &op.request {
                    Some(Request::RequestPut(_)) => true,
                    Some(Request::RequestTxn(nested)) => txn_has_put(nested),
                    _ => false,
                })
        }
        match self {
            WriteRequest::Put(_) => true,
            WriteRequest::Txn(txn) => txn_has_put(txn),
            WriteRequest::DeleteRange(_) | WriteRequest::LeaseRevoke(_) => false,
        }
    }
}

/// True when every op in both branches (recursively) is a Range.
pub fn is_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) | None => true,
            Some(Request::RequestTxn(nested)) => is_read_only(nested),
            _ => false,
        })
}

/// Step 1: evaluate against the state before the write.
pub fn prepare(
    context: &WriteContext<'_>,
    request: WriteRequest,
) -> Result<PreparedWrite, KvError> {
    match &request {
        WriteRequest::Put(put) => {
            check_put_preconditions(context, put)?;
            Ok(PreparedWrite {
                request,
                txn_path: None,
                changes_something: true,
            })
        }
        WriteRequest::DeleteRange(delete) => {
            let changes_something = context.any_live(
                &KeyRange::from_bytes(&delete.key, &delete.range_end),
                context.read_revision,
            );
            Ok(PreparedWrite {
                request,
                txn_path: None,
                changes_something,
            })
        }
        WriteRequest::Txn(txn) => {
            let path = compare_to_path(context, txn, context.read_revision);
            if !is_read_only(txn) {
                for_each_op_on_path(txn, &path, &mut |op| match op {
                    Request::RequestPut(put) => check_put_preconditions(context, put),
                    _ => Ok(()),
                })?;
            }
            check_txn_range_revisions(context, txn, &path)?;
            let mut changes_something = false;
            for_each_op_on_path(txn, &path, &mut |op| {
                changes_something |= match op {
                    Request::RequestPut(_) => true,
                    // A delete changes something iff its range holds a live
                    // key before the txn: checkIntervals forbids puts inside
                    // deleted ranges, so earlier ops cannot create one.
                    Request::RequestDeleteRange(delete) => context.any_live(
                        &KeyRange::from_bytes(&delete.key, &delete.range_end),
                        context.read_revision,
                    ),
                    _ => false,
                };
                Ok(())
            })?;
            Ok(PreparedWrite {
                request,
                txn_path: Some(path),
                changes_something,
            })
        }
        WriteRequest::LeaseRevoke(lease) => {
            if !(context.lease_exists)(*lease) {
                return Err(KvError::LeaseNotFound);
            }
            let changes_something = match context.pending {
                None => context.space.has_keys_with_lease(*lease),
                Some(_) => !context.keys_with_lease(*lease).is_empty(),
            };
            Ok(PreparedWrite {
                request,
                txn_path: None,
                changes_something,
            })
        }
    }
}

/// etcd's `checkRequestRange`, run over the taken path before any write.
pub fn check_txn_range_revisions(
    context: &WriteContext<'_>,
    txn: &TxnRequest,
    path: &TxnPath,
) -> Result<(), KvError> {
    for_each_op_on_path(txn, path, &mut |op| match op {
        Request::RequestRange(range) if range.revision > context.begin_revision => {
            Err(KvError::FutureRevision)
        }
        Request::RequestRange(range)
            if range.revision != 0 && range.revision < context.space.compacted_revision() =>
        {
            Err(KvError::Compacted)
        }
        _ => Ok(()),
    })
}

fn check_put_preconditions(context: &WriteContext<'_>, put: &PutRequest) -> Result<(), KvError> {
    if (put.ignore_value || put.ignore_lease)
        && context.get(&put.key, context.read_revision).is_none()
    {
        return Err(KvError::KeyNotFound);
    }
    if put.lease != 0 && !(context.lease_exists)(put.lease) {
        return Err(KvError::LeaseNotFound);
    }
    Ok(())
}

/// Visits every non-txn op on the taken path, depth first, in op order.
fn for_each_op_on_path(
    txn: &TxnRequest,
    path: &TxnPath,
    visit: &mut dyn FnMut(&Request) -> Result<(), KvError>,
) -> Result<(), KvError> {
    let ops = if path.succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let mut nested_paths = path.nested.iter();
    for op in ops {
        match &op.request {
            Some(Request::RequestTxn(nested)) => {
                let nested_path = nested_paths
                    .next()
                    .expect("txn path has one entry per nested txn");
                for_each_op_on_path(nested, nested_path, visit)?;
            }
            Some(other) => visit(other)?,
            None => {}
        }
    }
    Ok(())
}

/// Evaluates the compares of `txn` and of every nested txn on the taken
/// path, all against the same state (etcd's `compareToPath`).
pub fn compare_to_path(context: &WriteContext<'_>, txn: &TxnRequest, at: i64) -> TxnPath {
    let succeeded = txn
        .compare
        .iter()
        .all(|compare| evaluate_compare(context, compare, at));
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let nested = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestTxn(nested)) => Some(compare_to_path(context, nested, at)),
            _ => None,
        })
        .collect();
    TxnPath { succeeded, nested }
}

/// etcd's `applyCompare`: every key in the range must satisfy the compare;
/// an empty range compares against a zero KeyValue, except for VALUE,
/// which always fails (a missing value cannot be told from an empty one).
fn evaluate_compare(context: &WriteContext<'_>, compare: &Compare, at: i64) -> bool {
    let range = KeyRange::from_bytes(&compare.key, &compare.range_end);
    let found = match context.range(&range, at, 0, false) {
        Ok(found) => found.key_values,
        Err(_) => return false,
    };
    if found.is_empty() {
        if compare.target == CompareTarget::Value as i32 {
            return false;
        }
        return compare_key_value(compare, &KeyValue::default());
    }
    found
        .iter()
        .all(|key_value| compare_key_value(compare, key_value))
}

fn compare_key_value(compare: &Compare, key_value: &KeyValue) -> bool {
    let target = CompareTarget::try_from(compare.target).unwrap_or(CompareTarget::Version);
    let union = compare.target_union.as_ref();
    // A target union of another kind counts as the zero value, as in etcd.
    let ordering = match target {
        CompareTarget::Value => {
            let wanted = match union {
                Some(TargetUnion::Value(value)) => &value[..],
                _ => &[],
            };
            key_value.value[..].cmp(wanted)
        }
        CompareTarget::Create => key_value.create_revision.cmp(&union_integer(union, |u| {
            matches!(u, TargetUnion::CreateRevision(_))
        })),
        CompareTarget::Mod => key_value.mod_revision.cmp(&union_integer(union, |u| {
            matches!(u, TargetUnion::ModRevision(_))
        })),
        CompareTarget::Version => key_value.version.cmp(&union_integer(union, |u| {
            matches!(u, TargetUnion::Version(_))
        })),
        CompareTarget::Lease => key_value.lease.cmp(&union_integer(union, |u| {
            matches!(u, TargetUnion::Lease(_))
        })),
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => !ordering.is_eq(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

fn union_integer(
    union: Option<&TargetUnion>,
    is_wanted_kind: impl Fn(&TargetUnion) -> bool,
) -> i64 {
    match union {
        Some(union) if is_wanted_kind(union) => match union {
            TargetUnion::Version(value)
            | TargetUnion::CreateRevision(value)
            | TargetUnion::ModRevision(value)
            | TargetUnion::Lease(value) => *value,
            TargetUnion::Value(_) => 0,
        },
        _ => 0,
    }
}

/// Step 2: run the write at `revision` (`None` when nothing changes).
pub fn execute(
    context: &WriteContext<'_>,
    prepared: &PreparedWrite,
    revision: Option<i64>,
) -> (WriteResponse, ChangeSet) {
    let mut execution = Execution {
        context,
        revision,
        changes: BTreeMap::new(),
        next_sub_revision: 0,
    };
    let response = match &prepared.request {
        WriteRequest::Put(put) => WriteResponse::Put(execution.put(put)),
        WriteRequest::DeleteRange(delete) => {
            WriteResponse::DeleteRange(execution.delete_range(delete))
        }
        WriteRequest::Txn(txn) => {
            let path = prepared
                .txn_path
                .as_ref()
                .expect("prepare always sets a txn path");
            let mut response = execution.txn(txn, path);
            response.header = Some(header(execution.current_revision()));
            WriteResponse::Txn(response)
        }
        WriteRequest::LeaseRevoke(lease) => {
            // etcd deletes a lease's keys in sorted order, in one txn.
            for key in context.keys_with_lease(*lease) {
                execution.record_change(key, Version::tombstone());
            }
            WriteResponse::LeaseRevoke(LeaseRevokeResponse {
                header: Some(header(execution.current_revision())),
            })
        }
    };
    debug_assert_eq!(
        execution.changes.is_empty(),
        revision.is_none(),
        "prepare and execute disagree on whether the write changes something"
    );
    let revoked_lease = match &prepared.request {
        WriteRequest::LeaseRevoke(lease) => Some(*lease),
        _ => None,
    };
    let changes = ChangeSet {
        revision: revision.unwrap_or(0),
        changes: execution.changes,
        revoked_lease,
    };
    (response, changes)
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

/// One write in progress: earlier ops' changes are visible to later ops.
struct Execution<'a, 'b> {
    context: &'a WriteContext<'b>,
    revision: Option<i64>,
    changes: BTreeMap<Bytes, Version>,
    /// The sub-revision the next change gets: changes are numbered in the
    /// order the write makes them, as etcd numbers them.
    next_sub_revision: u32,
}

impl Execution<'_, '_> {
    fn record_change(&mut self, key: Bytes, mut version: Version) {
        version.sub_revision = self.next_sub_revision;
        self.next_sub_revision += 1;
        self.changes.insert(key, version);
    }

    /// etcd's write-txn `Rev()`: begin revision, plus one once it changed something.
    fn current_revision(&self) -> i64 {
        self.context.begin_revision + i64::from(!self.changes.is_empty())
    }

    fn write_revision(&self) -> i64 {
        self.revision
            .expect("a write that changes a key was prepared with a revision")
    }

    fn newest(&self, key: &Bytes) -> Option<KeyValue> {
        match self.changes.get(key) {
            Some(version) if version.is_tombstone() => None,
            Some(version) => Some(version.to_key_value(key, self.write_revision())),
            None => self.context.get(key, self.context.read_revision),
        }
    }

    /// Live keys of `range` including this write's own changes.
    fn range_with_changes(&self, range: &KeyRange) -> RangeResult {
        let stored = self
            .context
            .range(range, self.context.read_revision, 0, false)
            .unwrap_or_default();
        if self.changes.is_empty() {
            return stored;
        }
        let revision = self.write_revision();
        let own = self
            .changes
            .iter()
            .filter(|(key, _)| range.contains(key))
            .map(|(key, version)| (key, revision, version));
        let key_values = lay_over(stored.key_values, own);
        RangeResult {
            count: key_values.len(),
            key_values,
        }
    }

    fn put(&mut self, put: &PutRequest) -> PutResponse {
        let revision = self.write_revision();
        let previous = self.newest(&put.key);
        // Request bytes are slices of the connection's receive buffer; a
        // stored version must not pin that whole buffer for its lifetime,
        // so the key and a new value get allocations of their own.
        let value = match (&previous, put.ignore_value) {
            (Some(previous), true) => previous.value.clone(),
            _ => Bytes::copy_from_slice(&put.value),
        };
        let lease = match (&previous, put.ignore_lease) {
            (Some(previous), true) => previous.lease,
            _ => put.lease,
        };
        let (create_revision, version) = match &previous {
            Some(previous) => (previous.create_revision, previous.version + 1),
            None => (revision, 1),
        };
        self.record_change(
            Bytes::copy_from_slice(&put.key),
            Version {
                value,
                create_revision,
                version,
                lease,
                sub_revision: 0,
            },
        );
        PutResponse {
            header: Some(header(revision)),
            prev_kv: if put.prev_kv { previous } else { None },
        }
    }

    fn delete_range(&mut self, delete: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed = self
            .range_with_changes(&KeyRange::from_bytes(&delete.key, &delete.range_end))
            .key_values;
        for key_value in &doomed {
            self.record_change(key_value.key.clone(), Version::tombstone());
        }
        DeleteRangeResponse {
            header: Some(header(self.current_revision())),
            deleted: doomed.len() as i64,
            prev_kvs: if delete.prev_kv { doomed } else { Vec::new() },
        }
    }

    fn range(&self, request: &RangeRequest) -> RangeResponse {
        let current = self.current_revision();
        let range = KeyRange::from_bytes(&request.key, &request.range_end);
        let result = if request.revision == 0 && !self.changes.is_empty() {
            let mut result = self.range_with_changes(&range);
            if request.count_only {
                result.key_values.clear();
            }
            result
        } else {
            // Revisions were validated in `prepare`; a historical read sees
            // nothing of this write.
            let at = if request.revision == 0 {
                self.context.read_revision
            } else {
                request.revision
            };
            self.context
                .range(&range, at, range::fetch_limit(request), request.count_only)
                .unwrap_or_default()
        };
        range::build_response(request, result, current)
    }

    fn txn(&mut self, txn: &TxnRequest, path: &TxnPath) -> TxnResponse {
        let ops: &[RequestOp] = if path.succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut nested_paths = path.nested.iter();
        let responses = ops
            .iter()
            .map(|op| {
                let response = match &op.request {
                    Some(Request::RequestRange(range)) => {
                        Some(Response::ResponseRange(self.range(range)))
                    }
                    Some(Request::RequestPut(put)) => Some(Response::ResponsePut(self.put(put))),
                    Some(Request::RequestDeleteRange(delete)) => {
                        Some(Response::ResponseDeleteRange(self.delete_range(delete)))
                    }
                    Some(Request::RequestTxn(nested)) => {
                        let nested_path = nested_paths
                            .next()
                            .expect("txn path has one entry per nested txn");
                        // etcd leaves nested txn headers empty.
                        let mut nested_response = self.txn(nested, nested_path);
                        nested_response.header = Some(ResponseHeader::default());
                        Some(Response::ResponseTxn(nested_response))
                    }
                    None => None,
                };
                ResponseOp { response }
            })
            .collect();
        TxnResponse {
            header: None,
            succeeded: path.succeeded,
            responses,
        }
    }
}

/// A read-only txn at revision `at` (no locks, no revision taken).
pub fn read_only_txn(space: &KeySpace, txn: &TxnRequest, at: i64) -> Result<TxnResponse, KvError> {
    let no_leases = |_: i64| false;
    let context = WriteContext {
        space,
        begin_revision: at,
        read_revision: at,
        lease_exists: &no_leases,
        pending: None,
    };
    let path = compare_to_path(&context, txn, at);
    check_txn_range_revisions(&context, txn, &path)?;
    let mut execution = Execution {
        context: &context,
        revision: None,
        changes: BTreeMap::new(),
        next_sub_revision: 0,
    };
    let mut response = execution.txn(txn, &path);
    response.header = Some(header(at));
    Ok(response)
}

/// A standalone Range at read revision `current`.
pub fn read_range(
    space: &KeySpace,
    request: &RangeRequest,
    current: i64,
) -> Result<RangeResponse, KvError> {
    let at = space.resolve_read_revision(request.revision, current)?;
    let range = KeyRange::from_bytes(&request.key, &request.range_end);
    let result = space.range(&range, at, range::fetch_limit(request), request.count_only)?;
    Ok(range::build_response(request, result, current))
}
