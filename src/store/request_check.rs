//! The checks etcd runs on a request before it reaches the store
//! (`etcdserver/api/v3rpc/key.go` in etcd 3.4), in the same order, so the
//! same bad request gets the same error from both servers.

use super::error::KvError;
use super::txn_intervals::check_intervals;
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

/// etcd's `checkTxnRequest` (op counts and empty keys, at every depth)
/// followed by `checkIntervals` on both branches (`txn_intervals`, O(n log
/// n)). The size of the request is checked later, and only for writes, as
/// etcd does: a too large txn with a duplicate key gets "duplicate key"
/// from both servers.
pub fn check_txn(request: &TxnRequest, max_txn_ops: usize) -> Result<(), KvError> {
    check_txn_shape(request, max_txn_ops as i64)?;
    check_intervals(&request.success)?;
    check_intervals(&request.failure)
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

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;

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
