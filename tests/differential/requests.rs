//! Request builders shared by the sections: single keys, ranges, prefixes
//! (clientv3's prefix end), txn ops and compares.

use bytes::Bytes;
use metastore::proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request;

pub fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
}

/// etcd's clientv3.GetPrefixRangeEnd.
pub fn prefix_end(p: &[u8]) -> Bytes {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

pub fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    }
}

pub fn get(k: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(k),
        ..Default::default()
    }
}

pub fn get_range(k: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}

pub fn get_prefix(p: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(p),
        range_end: prefix_end(p.as_bytes()),
        ..Default::default()
    }
}

pub fn get_all() -> pb::RangeRequest {
    get_range("\0", "\0")
}

pub fn del(k: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: b(k),
        ..Default::default()
    }
}

pub fn del_range(k: &str, end: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}

pub fn del_prefix(p: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: b(p),
        range_end: prefix_end(p.as_bytes()),
        ..Default::default()
    }
}

pub fn op_put(k: &str, v: &str) -> pb::RequestOp {
    op(Request::RequestPut(put(k, v)))
}
pub fn op_get(r: pb::RangeRequest) -> pb::RequestOp {
    op(Request::RequestRange(r))
}
pub fn op_del(r: pb::DeleteRangeRequest) -> pb::RequestOp {
    op(Request::RequestDeleteRange(r))
}
pub fn op_txn(t: pb::TxnRequest) -> pb::RequestOp {
    op(Request::RequestTxn(t))
}
pub fn op(r: Request) -> pb::RequestOp {
    pb::RequestOp { request: Some(r) }
}

pub fn txn(
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
    failure: Vec<pb::RequestOp>,
) -> pb::TxnRequest {
    pb::TxnRequest {
        compare,
        success,
        failure,
    }
}

pub fn cmp(key: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: b(key),
        range_end: Bytes::new(),
        target_union: Some(u),
    }
}

/// A compare of `target` against the integer/bytes `v` (the union variant
/// matching the target).
pub fn cmp_t(
    key: &str,
    target: CompareTarget,
    result: CompareResult,
    v: i64,
    s: &str,
) -> pb::Compare {
    let u = match target {
        CompareTarget::Version => TargetUnion::Version(v),
        CompareTarget::Create => TargetUnion::CreateRevision(v),
        CompareTarget::Mod => TargetUnion::ModRevision(v),
        CompareTarget::Value => TargetUnion::Value(b(s)),
        CompareTarget::Lease => TargetUnion::Lease(v),
    };
    cmp(key, target, result, u)
}

pub fn rev_of(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map(|h| h.revision).unwrap_or(-1)
}
