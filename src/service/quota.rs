//! `--quota-backend-bytes`: etcd's two checks on writes that add data.
//!
//! 1. Before a Put, a Txn with puts or a LeaseGrant (etcd's `quotaKVServer`
//!    and `quotaLeaseServer`, which run before the request's own checks):
//!    if the stored size plus the request's estimated cost would reach the
//!    quota, raise the NOSPACE alarm and refuse the request.
//! 2. While NOSPACE is raised (etcd's `applierV3Capped`), refuse those same
//!    requests whatever their size; reads, deletes, Txns without puts,
//!    Compact, LeaseRevoke and keep-alives still run, so an operator can
//!    free space, then disarm the alarm.
//!
//! The stored size is the memtables' approximate bytes (keys and values of
//! every version held, `KeySpace::totals`), which compaction frees; etcd
//! measures its bolt file instead, so the exact thresholds differ.

use super::ServiceContext;
use super::alarm::RaisedAlarm;
use crate::grpc::Status;
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{AlarmType, PutRequest, TxnRequest};
use crate::store::error::KvError;

/// etcd's estimate for storing a lease (`leaseOverhead`).
pub const LEASE_GRANT_COST: u64 = 64;
/// etcd's estimate for a key's metadata (`kvOverhead`).
const KEY_VALUE_OVERHEAD: u64 = 256;

/// etcd's `costPut`.
pub fn put_cost(request: &PutRequest) -> u64 {
    KEY_VALUE_OVERHEAD + request.key.len() as u64 + request.value.len() as u64
}

/// etcd's `costTxn`: the puts of the costlier branch. Like etcd 3.4, only
/// a branch's own puts count, not those of nested Txns; a Txn without
/// puts costs nothing and is never refused.
pub fn txn_cost(request: &TxnRequest) -> u64 {
    let branch_cost = |ops: &[crate::proto::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(put)) => put_cost(put),
                _ => 0,
            })
            .sum()
    };
    branch_cost(&request.success).max(branch_cost(&request.failure))
}

/// etcd's `backendQuota.Available`: a request fits while the stored size
/// plus its cost stays below the quota. `None`: no quota.
pub fn fits(quota_bytes: Option<u64>, stored_bytes: u64, cost: u64) -> bool {
    quota_bytes.is_none_or(|quota| stored_bytes.saturating_add(cost) < quota)
}

/// Admits a request of estimated `cost` or refuses it with NOSPACE (both of
/// etcd's checks). A request that does not fit raises the alarm first; the
/// caller's write is refused even if the alarm cannot be persisted.
pub async fn admit(context: &ServiceContext, cost: u64) -> Result<(), Status> {
    if cost == 0 {
        return Ok(());
    }
    if context.alarms.no_space_raised() {
        return Err(KvError::NoSpace.into());
    }
    let (_, stored_bytes) = context.write_path.space().totals();
    if fits(context.quota_bytes, stored_bytes.max(0) as u64, cost) {
        return Ok(());
    }
    tracing::warn!(
        quota_bytes = context.quota_bytes,
        stored_bytes,
        cost,
        "message exceeded backend quota; raising alarm"
    );
    let alarm = RaisedAlarm {
        member_id: context.identity.member_id,
        alarm: AlarmType::Nospace as i32,
    };
    if let Err(error) = context.alarms.activate(alarm).await {
        tracing::error!(%error, "cannot raise the NOSPACE alarm");
    }
    Err(KvError::NoSpace.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{RangeRequest, RequestOp};
    use bytes::Bytes;

    fn put(key: &'static [u8], value: &'static [u8]) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::from_static(key),
                value: Bytes::from_static(value),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn costs_follow_etcd() {
        let single = PutRequest {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
            ..Default::default()
        };
        assert_eq!(put_cost(&single), 256 + 3 + 5);
        let range = RequestOp {
            request: Some(Request::RequestRange(RangeRequest::default())),
        };
        let txn = TxnRequest {
            success: vec![put(b"a", b"1"), range.clone()],
            failure: vec![put(b"b", b"22"), put(b"c", b"")],
            ..Default::default()
        };
        assert_eq!(
            txn_cost(&txn),
            (256 + 1 + 2) + (256 + 1),
            "the costlier branch"
        );
        let nested = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestTxn(txn)),
            }],
            failure: vec![range],
            ..Default::default()
        };
        assert_eq!(txn_cost(&nested), 0, "etcd 3.4 counts no nested puts");
    }

    #[test]
    fn a_request_fits_strictly_below_the_quota() {
        assert!(fits(Some(1000), 700, 299));
        assert!(!fits(Some(1000), 700, 300));
        assert!(fits(None, u64::MAX, u64::MAX));
    }
}
