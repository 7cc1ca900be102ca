//! The gRPC methods MetaStore records metrics for: etcd's services and the
//! standard health service, with grpc-go's method types.
//!
//! Metrics are only kept for these names. A call to any other path is still
//! answered (UNIMPLEMENTED), but is not given a label of its own: label
//! values come from this fixed table, never from the request, so a client
//! cannot grow the exposition without bound.

/// grpc-go-prometheus's `grpc_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    Unary,
    ServerStream,
    BidiStream,
}

impl CallType {
    pub fn label(self) -> &'static str {
        match self {
            CallType::Unary => "unary",
            CallType::ServerStream => "server_stream",
            CallType::BidiStream => "bidi_stream",
        }
    }
}

/// A known method: its index in [`METHODS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodId(pub u16);

pub struct KnownMethod {
    pub service: &'static str,
    pub method: &'static str,
    pub call_type: CallType,
}

const fn unary(service: &'static str, method: &'static str) -> KnownMethod {
    KnownMethod {
        service,
        method,
        call_type: CallType::Unary,
    }
}

const fn streaming(
    service: &'static str,
    method: &'static str,
    call_type: CallType,
) -> KnownMethod {
    KnownMethod {
        service,
        method,
        call_type,
    }
}

const KV: &str = "etcdserverpb.KV";
const LEASE: &str = "etcdserverpb.Lease";
const CLUSTER: &str = "etcdserverpb.Cluster";
const MAINTENANCE: &str = "etcdserverpb.Maintenance";
const AUTH: &str = "etcdserverpb.Auth";
const LOCK: &str = "v3lockpb.Lock";
const ELECTION: &str = "v3electionpb.Election";
const HEALTH: &str = "grpc.health.v1.Health";

/// Every method of etcd 3.4's `rpc.proto`, `v3lock.proto`,
/// `v3election.proto`, and `grpc.health.v1`.
pub const METHODS: &[KnownMethod] = &[
    unary(KV, "Range"),
    unary(KV, "Put"),
    unary(KV, "DeleteRange"),
    unary(KV, "Txn"),
    unary(KV, "Compact"),
    streaming("etcdserverpb.Watch", "Watch", CallType::BidiStream),
    unary(LEASE, "LeaseGrant"),
    unary(LEASE, "LeaseRevoke"),
    streaming(LEASE, "LeaseKeepAlive", CallType::BidiStream),
    unary(LEASE, "LeaseTimeToLive"),
    unary(LEASE, "LeaseLeases"),
    unary(CLUSTER, "MemberAdd"),
    unary(CLUSTER, "MemberRemove"),
    unary(CLUSTER, "MemberUpdate"),
    unary(CLUSTER, "MemberList"),
    unary(CLUSTER, "MemberPromote"),
    unary(MAINTENANCE, "Alarm"),
    unary(MAINTENANCE, "Status"),
    unary(MAINTENANCE, "Defragment"),
    unary(MAINTENANCE, "Hash"),
    unary(MAINTENANCE, "HashKV"),
    streaming(MAINTENANCE, "Snapshot", CallType::ServerStream),
    unary(MAINTENANCE, "MoveLeader"),
    unary(AUTH, "AuthEnable"),
    unary(AUTH, "AuthDisable"),
    unary(AUTH, "Authenticate"),
    unary(AUTH, "UserAdd"),
    unary(AUTH, "UserGet"),
    unary(AUTH, "UserList"),
    unary(AUTH, "UserDelete"),
    unary(AUTH, "UserChangePassword"),
    unary(AUTH, "UserGrantRole"),
    unary(AUTH, "UserRevokeRole"),
    unary(AUTH, "RoleAdd"),
    unary(AUTH, "RoleGet"),
    unary(AUTH, "RoleList"),
    unary(AUTH, "RoleDelete"),
    unary(AUTH, "RoleGrantPermission"),
    unary(AUTH, "RoleRevokePermission"),
    unary(LOCK, "Lock"),
    unary(LOCK, "Unlock"),
    unary(ELECTION, "Campaign"),
    unary(ELECTION, "Proclaim"),
    unary(ELECTION, "Leader"),
    streaming(ELECTION, "Observe", CallType::ServerStream),
    unary(ELECTION, "Resign"),
    unary(HEALTH, "Check"),
    streaming(HEALTH, "Watch", CallType::ServerStream),
];

/// The known method named `service`/`method`, if any.
pub fn find_method(service: &str, method: &str) -> Option<MethodId> {
    METHODS
        .iter()
        .position(|known| known.service == service && known.method == method)
        .map(|index| MethodId(index as u16))
}

pub fn method(id: MethodId) -> &'static KnownMethod {
    &METHODS[usize::from(id.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_are_found_and_others_are_not() {
        let put = find_method("etcdserverpb.KV", "Put").expect("Put is known");
        assert_eq!(method(put).method, "Put");
        assert_eq!(
            method(find_method("etcdserverpb.Watch", "Watch").expect("known")).call_type,
            CallType::BidiStream
        );
        assert_eq!(find_method("etcdserverpb.KV", "Nope"), None);
        assert_eq!(find_method("x", "Put"), None);
    }

    #[test]
    fn names_are_unique() {
        for (index, known) in METHODS.iter().enumerate() {
            assert_eq!(
                find_method(known.service, known.method),
                Some(MethodId(index as u16)),
                "{}/{} is listed twice",
                known.service,
                known.method
            );
        }
    }
}
