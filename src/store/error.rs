//! Errors of the storage layer. Their gRPC codes and etcd's exact strings
//! live in one place: `crate::status_map`.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KvError {
    #[error("key is not provided")]
    EmptyKey,
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("required revision has been compacted")]
    Compacted,
    #[error("required revision is a future revision")]
    FutureRevision,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("request is too large")]
    RequestTooLarge,
    /// A request op with no operation set (etcd answers "key not found").
    #[error("empty request op")]
    EmptyRequestOp,
    /// The NOSPACE alarm is raised, or the write would pass the quota
    /// (`--quota-backend-bytes`).
    #[error("database space exceeded")]
    NoSpace,
    /// The shard that owns a key is not running (the server is stopping).
    #[error("shard {0} is unavailable")]
    ShardUnavailable(usize),
    /// This member does not lead the key's group (or has not caught up
    /// with its own log since it became leader).
    #[error("not leader")]
    NotLeader,
    /// The entry a write was proposed in was replaced by another leader's:
    /// the write did not happen.
    #[error("leader changed")]
    LeaderChanged,
    /// A cluster member could not confirm a linearizable read with its
    /// groups' leaders in time (no leader, or none reachable).
    #[error("request timed out")]
    RequestTimedOut,
    /// A membership change could not be made now: another is still being
    /// carried to every group, or it would leave the cluster without a
    /// healthy quorum (`--strict-reconfig-check`).
    #[error("unhealthy cluster")]
    UnhealthyCluster,
    /// A membership call named an ID that is no member (or was removed).
    #[error("member not found")]
    MemberNotFound,
    /// MemberAdd drew an ID a member already has.
    #[error("member ID already exist")]
    MemberExists,
    /// MemberAdd named a peer URL a member already has.
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    /// The change would leave fewer started voters than a quorum
    /// (`--strict-reconfig-check`).
    #[error("re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// MemberPromote of a voter.
    #[error("can only promote a learner member")]
    MemberNotLearner,
    /// MemberPromote of a learner whose log is not yet near the leader's.
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// MemberAdd of a learner beyond `--max-learners`.
    #[error("too many learner members in cluster")]
    TooManyLearners,
}
