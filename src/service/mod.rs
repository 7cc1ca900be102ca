//! The etcd gRPC services, dispatched by method path.
//!
//! Each core has one [`EtcdServices`]; connections accepted on that core
//! share it. Services translate between protobuf and the store and fill
//! response headers; they hold no state of their own.

pub mod alarm;
pub mod auto_compaction;
pub mod cluster;
pub mod election;
pub mod health;
pub mod helper_pool;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod quota;
pub mod recipes;
pub mod snapshot_stream;
pub mod watch;

use std::rc::Rc;

use crate::grpc::server::{GrpcService, MethodPath};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::shard::write_path::WritePath;

/// Who this member is, for response headers and membership answers.
#[derive(Debug, Clone)]
pub struct MemberIdentity {
    pub name: String,
    pub cluster_id: u64,
    pub member_id: u64,
    pub client_urls: Vec<String>,
    /// A cluster member's membership (who belongs to the cluster and to
    /// each group, as applied here); `None` alone.
    pub configurations: Option<std::sync::Arc<crate::membership::Configurations>>,
    /// A cluster member's role (who the lead member is); `None` alone.
    pub role: Option<std::sync::Arc<crate::shard::lead_member::MemberRole>>,
    /// What the other members announced of themselves (their client
    /// URLs); `None` alone.
    pub directory: Option<std::sync::Arc<crate::membership::MemberDirectory>>,
}

impl MemberIdentity {
    /// The cluster's members as this member applied them (empty alone).
    pub fn members(&self) -> Vec<crate::data_dir::MemberRecord> {
        self.configurations
            .as_ref()
            .map(|configurations| configurations.members())
            .unwrap_or_default()
    }

    /// The lead member's ID as this member knows it (0: none known); a
    /// server alone is its own leader.
    pub fn leader(&self) -> u64 {
        self.role
            .as_ref()
            .map_or(self.member_id, |role| role.lead_member())
    }
}

/// What every service on a core needs.
pub struct ServiceContext {
    pub identity: MemberIdentity,
    pub write_path: Rc<WritePath>,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    /// This core's shared window of recent history for watch streams.
    pub watch_feed: Rc<crate::watch::feed::EventFeed>,
    /// How often watches that asked for progress notifications get one
    /// (etcd's `--experimental-watch-progress-notify-interval`).
    pub watch_progress_interval: std::time::Duration,
    /// This core's metrics (watch and lease gauges and counters).
    pub metrics: Rc<crate::metrics::CoreMetrics>,
    /// The data directory, whose shard files `Status` sizes.
    pub data_dir: std::path::PathBuf,
    /// Every shard's Raft log counters, indexed by shard: `Status`'s
    /// member-wide Raft index is their sum.
    pub log_stats: std::sync::Arc<[std::sync::Arc<crate::shard::raft_group::LogStats>]>,
    /// The node's alarms (shared by every core); NOSPACE caps writes.
    pub alarms: alarm::AlarmSet,
    /// `--quota-backend-bytes`; `None`: no quota (see `quota`).
    pub quota_bytes: Option<u64>,
    /// Node-wide threads for request work too heavy for the executor
    /// (decoding and checking a large txn).
    pub helpers: std::sync::Arc<helper_pool::HelperPool>,
}

impl ServiceContext {
    /// The identity part of every watch response header.
    pub fn header_stamp(&self) -> crate::watch::watcher::HeaderStamp {
        crate::watch::watcher::HeaderStamp {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            raft_term: self.raft_term(),
        }
    }

    /// The term response headers report: a cluster member's group 0 term
    /// (the lead member leads every group); alone, a constant, as no
    /// election ever happens.
    pub fn raft_term(&self) -> u64 {
        match &self.identity.role {
            Some(_) => self.log_stats.first().map_or(RAFT_TERM, |stats| {
                stats.term.load(std::sync::atomic::Ordering::Relaxed)
            }),
            None => RAFT_TERM,
        }
    }

    /// etcd's `header.fill`: the member's identity and term, and the
    /// current revision if the response did not set one.
    pub fn fill_header(&self, header: &mut Option<ResponseHeader>) {
        let header = header.get_or_insert_with(ResponseHeader::default);
        header.cluster_id = self.identity.cluster_id;
        header.member_id = self.identity.member_id;
        header.raft_term = self.raft_term();
        if header.revision == 0 {
            header.revision = self.write_path.space().clock().watermark();
        }
    }
}

/// The term reported while MetaStore runs as one member.
pub const RAFT_TERM: u64 = 1;

/// etcd's services that MetaStore does not serve yet (they answer
/// UNIMPLEMENTED naming the method, like a generated gRPC stub).
const NOT_YET_SERVED: &[&str] = &["etcdserverpb.Auth"];

pub struct EtcdServices {
    context: Rc<ServiceContext>,
}

impl EtcdServices {
    pub fn new(context: Rc<ServiceContext>) -> Self {
        Self { context }
    }
}

impl GrpcService for EtcdServices {
    async fn call(
        &self,
        method: &MethodPath,
        requests: &mut RequestStream,
        responses: &mut ResponseSink,
    ) -> Result<(), Status> {
        let context = &*self.context;
        // Only KV is served inline: this future is part of every call's
        // task, which is allocated and moved per call, so the rarer
        // services' larger state machines (up to twice KV's) live in a
        // box of their own instead of widening every KV call's.
        match (method.service.as_str(), method.method.as_str()) {
            ("etcdserverpb.KV", name) => kv::call(context, name, requests, responses).await,
            ("etcdserverpb.Maintenance", name) => {
                Box::pin(maintenance::call(context, name, requests, responses)).await
            }
            ("etcdserverpb.Watch", "Watch") => {
                Box::pin(watch::serve(context, requests, responses)).await
            }
            ("etcdserverpb.Watch", name) => Err(missing_method("etcdserverpb.Watch", name, &[])),
            ("etcdserverpb.Lease", name) => {
                Box::pin(lease::call(context, name, requests, responses)).await
            }
            ("v3lockpb.Lock", name) => {
                Box::pin(lock::call(&self.context, name, requests, responses)).await
            }
            ("v3electionpb.Election", name) => {
                Box::pin(election::call(&self.context, name, requests, responses)).await
            }
            ("grpc.health.v1.Health", name) => health::call(name, requests, responses).await,
            ("etcdserverpb.Cluster", name) => {
                Box::pin(cluster::call(context, name, requests, responses)).await
            }
            (service, name) if NOT_YET_SERVED.contains(&service) => Err(Status::unimplemented(
                format!("method {name} not implemented"),
            )),
            (service, _) => Err(Status::unimplemented(format!("unknown service {service}"))),
        }
    }
}

/// Runs a unary method: one request in, one response out.
pub async fn unary<Request, Response, Handler>(
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
    handler: Handler,
) -> Result<(), Status>
where
    Request: prost::Message + Default,
    Response: prost::Message,
    Handler: AsyncFnOnce(Request) -> Result<Response, Status>,
{
    let request = requests.unary::<Request>().await?;
    let response = handler(request).await?;
    responses.send(&response).await
}

/// The answer for a method a known service does not serve: etcd's methods
/// that MetaStore does not serve yet (`not_yet_served`) answer like a
/// generated gRPC stub; any other name is unknown, as grpc-go says.
pub fn missing_method(service: &str, method: &str, not_yet_served: &[&str]) -> Status {
    if not_yet_served.contains(&method) {
        Status::unimplemented(format!("method {method} not implemented"))
    } else {
        Status::unimplemented(format!("unknown method {method} for service {service}"))
    }
}
