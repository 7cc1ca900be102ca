//! The one place where internal errors become gRPC statuses, with etcd's
//! exact codes and messages (etcd 3.4 `api/v3rpc/rpctypes/error.go`).
//! Clients match on these strings, so they must never drift.

use crate::grpc::{Code, Status};
use crate::service::alarm::AlarmError;
use crate::store::error::KvError;

pub fn kv_error_status(error: &KvError) -> Status {
    let (code, message) = match error {
        KvError::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
        KvError::KeyNotFound | KvError::EmptyRequestOp => {
            (Code::InvalidArgument, "etcdserver: key not found")
        }
        KvError::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
        KvError::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
        KvError::TooManyOps => (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        KvError::DuplicateKey => (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        KvError::Compacted => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        KvError::FutureRevision => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        KvError::LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
        KvError::LeaseExists => (Code::FailedPrecondition, "etcdserver: lease already exists"),
        KvError::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
        KvError::RequestTooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
        KvError::NoSpace => (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        // etcd's nearest equivalent: the server cannot serve right now.
        KvError::ShardUnavailable(_) => (Code::Unavailable, "etcdserver: server stopped"),
        KvError::NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
        KvError::LeaderChanged => (Code::Unavailable, "etcdserver: leader changed"),
        KvError::RequestTimedOut => (Code::Unavailable, "etcdserver: request timed out"),
        KvError::UnhealthyCluster => (Code::Unavailable, "etcdserver: unhealthy cluster"),
        KvError::MemberNotFound => (Code::NotFound, "etcdserver: member not found"),
        KvError::MemberExists => (
            Code::FailedPrecondition,
            "etcdserver: member ID already exist",
        ),
        KvError::PeerUrlExists => (
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        KvError::NotEnoughStartedMembers => (
            Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        KvError::MemberNotLearner => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
        KvError::LearnerNotReady => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        KvError::TooManyLearners => (
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        ),
    };
    Status::new(code, message)
}

impl From<KvError> for Status {
    fn from(error: KvError) -> Self {
        kv_error_status(&error)
    }
}

/// An alarm change that could not be made durable. etcd has no such
/// error (its alarms go through Raft); the server is stopping, or the
/// data directory cannot be written.
impl From<AlarmError> for Status {
    fn from(error: AlarmError) -> Self {
        match error {
            AlarmError::Stopped => Status::new(Code::Unavailable, "etcdserver: server stopped"),
            other => Status::new(Code::Internal, format!("etcdserver: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_clients_match_on() {
        let status = kv_error_status(&KvError::Compacted);
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        let status = kv_error_status(&KvError::LeaseNotFound);
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
        let status = kv_error_status(&KvError::NoSpace);
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded"
            )
        );
    }
}
