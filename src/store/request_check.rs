//! The checks etcd runs on a request before it reaches the store
//! (`etcdserver/api/v3rpc/key.go` in etcd 3.4), in the same order, so the
//! same bad request gets the same error from both servers.

use std::collections::HashSet;

use bytes::Bytes;

use super::error::KvError;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op::Request,
};

pub fn check_range(request: &RangeRequest) -> Result<(), KvError> {
    if request.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(request: &PutRequest) -> Result<(), KvError> {
    if request.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(request: &DeleteRangeRequest) -> Result<(), KvError> {
    if request.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` followed by `checkIntervals` on both branches.
pub fn check_txn(request: &TxnRequest, max_txn_ops: usize) -> Result<(), KvError> {
    check_txn_shape(request, max_txn_ops as i64)?;
    // Overlap checks run after the shape checks so a huge request is
    // rejected before the quadratic-ish work.
    check_intervals(&request.success)?;
    check_intervals(&request.failure)?;
    Ok(())
}

/// `max_txn_ops` is signed: etcd passes `max - ops` down to nested txns and
/// that budget can go negative.
fn check_txn_shape(request: &TxnRequest, max_txn_ops: i64) -> Result<(), KvError> {
    // etcd limits the largest of the three lists, not their sum.
    let ops = request
        .compare
        .len()
        .max(request.success.len())
        .max(request.failure.len()) as i64;
    if ops > max_txn_ops {
        return Err(KvError::TooManyOps);
    }
    if request.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in request.success.iter().chain(&request.failure) {
        check_request_op(op, max_txn_ops - ops)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, max_txn_ops: i64) -> Result<(), KvError> {
    match &op.request {
        Some(Request::RequestRange(range)) => check_range(range),
        Some(Request::RequestPut(put)) => check_put(put),
        Some(Request::RequestDeleteRange(delete)) => check_delete(delete),
        Some(Request::RequestTxn(txn)) => check_txn_shape(txn, max_txn_ops),
        None => Err(KvError::EmptyRequestOp),
    }
}

/// A deleted interval as etcd's `adt` interval tree compares it: strings
/// compare bytewise, except that an empty string is +infinity.
#[derive(Debug, Clone)]
enum DeletedInterval {
    Point(Bytes),
    /// `[start, end)`. etcd builds this even for `range_end == "\0"`, which
    /// makes "from key" deletes overlap nothing; we keep that behaviour.
    Span {
        start: Bytes,
        end: Bytes,
    },
}

impl DeletedInterval {
    fn contains(&self, key: &[u8]) -> bool {
        match self {
            DeletedInterval::Point(point) => point == key,
            DeletedInterval::Span { start, end } => {
                affine_less_equal(start, key) && affine_less(key, end)
            }
        }
    }
}

/// `a < b` where the empty string is larger than everything.
fn affine_less(left: &[u8], right: &[u8]) -> bool {
    match (left.is_empty(), right.is_empty()) {
        (true, _) => false,
        (false, true) => true,
        (false, false) => left < right,
    }
}

fn affine_less_equal(left: &[u8], right: &[u8]) -> bool {
    !affine_less(right, left)
}

/// etcd's `checkIntervals`: within one list of ops (and recursively through
/// nested txns), a key may not be put twice, and may not be put inside a
/// deleted range. A nested txn's then/else branches exclude each other, so
/// the same key may be put in both.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<DeletedInterval>), KvError> {
    let mut deleted: Vec<DeletedInterval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(delete)) if delete.range_end.is_empty() => {
                Some(DeletedInterval::Point(delete.key.clone()))
            }
            Some(Request::RequestDeleteRange(delete)) => Some(DeletedInterval::Span {
                start: delete.key.clone(),
                end: delete.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let is_deleted = |deleted: &[DeletedInterval], key: &[u8]| {
        deleted.iter().any(|interval| interval.contains(key))
    };

    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deleted_then) = check_intervals(&nested.success)?;
        let (puts_else, deleted_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || is_deleted(&deleted, key) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in &puts_else {
            if puts.contains(key) && !puts_then.contains(key) {
                return Err(KvError::DuplicateKey);
            }
            if is_deleted(&deleted, key) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        deleted.extend(deleted_then);
        deleted.extend(deleted_else);
    }

    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || is_deleted(&deleted, &put.key) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &'static str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::from_static(key.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &'static str, end: &'static str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(key.as_bytes()),
                range_end: Bytes::from_static(end.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: Vec::new(),
            success,
            failure,
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(txn(success, failure))),
        }
    }

    #[test]
    fn duplicate_puts_and_puts_in_deleted_ranges_are_rejected() {
        assert_eq!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![delete("a", "c"), put("b")], vec![]), 128),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![delete("a", ""), put("a")], vec![]), 128),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put("a")], vec![put("a")]), 128),
            Ok(()),
            "branches are separate lists"
        );
        // etcd quirk: a "from key" delete overlaps nothing.
        assert_eq!(
            check_txn(&txn(vec![delete("a", "\0"), put("b")], vec![]), 128),
            Ok(())
        );
    }

    #[test]
    fn nested_branches_may_share_keys_but_not_with_the_parent() {
        assert_eq!(
            check_txn(
                &txn(vec![nested(vec![put("a")], vec![put("a")])], vec![]),
                128
            ),
            Ok(())
        );
        assert_eq!(
            check_txn(
                &txn(vec![nested(vec![put("a")], vec![]), put("a")], vec![]),
                128
            ),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check_txn(
                &txn(
                    vec![nested(vec![delete("a", "b")], vec![]), put("a")],
                    vec![]
                ),
                128
            ),
            Err(KvError::DuplicateKey)
        );
    }

    #[test]
    fn op_limits_and_empty_keys() {
        let many: Vec<RequestOp> = (0..129).map(|_| RequestOp { request: None }).collect();
        assert_eq!(check_txn(&txn(many, vec![]), 128), Err(KvError::TooManyOps));
        assert_eq!(
            check_txn(&txn(vec![RequestOp { request: None }], vec![]), 128),
            Err(KvError::EmptyRequestOp)
        );
        assert_eq!(
            check_txn(&txn(vec![put("")], vec![]), 128),
            Err(KvError::EmptyKey)
        );
    }
}
