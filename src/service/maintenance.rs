//! `etcdserverpb.Maintenance`: Status (a cluster member reports its lead
//! member and group 0's term), Hash, HashKV, Defragment, Snapshot (in
//! `snapshot_stream`), MoveLeader (the lead member hands every group to
//! the target) and Alarm (in `alarm`).
//!
//! Everything that scans the key space or walks the disk runs on a helper
//! thread ([`off_core`]), never on the core's executor: a hash of a large
//! store must not stall the other requests of the core.

use std::sync::atomic::Ordering;

use super::{ServiceContext, missing_method, snapshot_stream, unary};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::{
    DefragmentRequest, DefragmentResponse, HashKvRequest, HashKvResponse, HashRequest,
    HashResponse, MoveLeaderRequest, MoveLeaderResponse, ResponseHeader, StatusRequest,
    StatusResponse,
};
use crate::store::content_hash;

/// The etcd API level MetaStore speaks; clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.4.0";

pub async fn call(
    context: &ServiceContext,
    method: &str,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    match method {
        "Status" => {
            unary(requests, responses, async |_: StatusRequest| {
                status(context).await
            })
            .await
        }
        "Hash" => {
            unary(requests, responses, async |_: HashRequest| {
                hash(context).await
            })
            .await
        }
        "HashKV" => {
            unary(requests, responses, async |request: HashKvRequest| {
                hash_kv(context, request).await
            })
            .await
        }
        "Defragment" => {
            unary(requests, responses, async |_: DefragmentRequest| {
                defragment(context).await
            })
            .await
        }
        "MoveLeader" => {
            unary(requests, responses, async |request: MoveLeaderRequest| {
                move_leader(context, request).await
            })
            .await
        }
        "Snapshot" => snapshot_stream::serve(context, requests, responses).await,
        "Alarm" => {
            unary(requests, responses, async |request| {
                super::alarm::alarm(context, request).await
            })
            .await
        }
        other => Err(missing_method("etcdserverpb.Maintenance", other, &[])),
    }
}

/// Runs blocking `work` on a thread of its own and waits for it without
/// blocking the executor.
async fn off_core<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    let (sender, receiver) = futures_channel::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("metastore-{name}"))
        .spawn(move || {
            let _ = sender.send(work());
        })
        .map_err(|error| Status::internal(format!("cannot start a {name} thread: {error}")))?;
    receiver
        .await
        .map_err(|_| Status::internal(format!("the {name} thread failed")))
}

/// etcd's Status for one member. The Raft figures aggregate the shards'
/// Raft groups: index and applied index are the sums of every shard's
/// commit and applied indexes (monotonic while the data directory lives);
/// the term is the one every response header reports.
async fn status(context: &ServiceContext) -> Result<StatusResponse, Status> {
    let space = context.write_path.space();
    let (_, in_use) = space.totals();
    let data_dir = context.data_dir.clone();
    let db_size = off_core("status", move || {
        crate::data_dir::shard_files_bytes(&data_dir)
    })
    .await?;
    let sum = |read: fn(&crate::shard::raft_group::LogStats) -> u64| -> u64 {
        context.log_stats.iter().map(|stats| read(stats)).sum()
    };
    let raft_index = sum(|stats| stats.committed_index.load(Ordering::Relaxed));
    let raft_applied_index = sum(|stats| stats.applied_index.load(Ordering::Relaxed));
    let mut response = StatusResponse {
        header: None,
        version: ETCD_API_VERSION.to_owned(),
        db_size: db_size as i64,
        leader: context.identity.leader(),
        raft_index,
        raft_term: context.raft_term(),
        raft_applied_index,
        errors: context.alarms.status_errors(),
        db_size_in_use: in_use.max(0),
        // As group 0 applied the membership (etcd's `IsLearner` of itself).
        is_learner: context
            .identity
            .configurations
            .as_ref()
            .is_some_and(|configurations| {
                configurations
                    .member(context.identity.member_id)
                    .is_some_and(|member| member.is_learner)
            }),
    };
    context.fill_header(&mut response.header);
    Ok(response)
}

/// `Hash`: every stored version at or below the current revision (see
/// `content_hash::hash_stored`).
async fn hash(context: &ServiceContext) -> Result<HashResponse, Status> {
    let space = context.write_path.space().clone();
    let revision = space.clock().watermark();
    let hash = off_core("hash", move || content_hash::hash_stored(&space, revision)).await?;
    let mut response = HashResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        hash,
    };
    context.fill_header(&mut response.header);
    Ok(response)
}

/// `HashKV`: etcd's `HashByRev` (see `content_hash::hash_kv`); the header
/// carries the current revision, as etcd's does.
async fn hash_kv(
    context: &ServiceContext,
    request: HashKvRequest,
) -> Result<HashKvResponse, Status> {
    let space = context.write_path.space().clone();
    let current = space.clock().watermark();
    let hashed = off_core("hash", move || {
        content_hash::hash_kv(&space, request.revision, current)
    })
    .await??;
    let mut response = HashKvResponse {
        header: Some(ResponseHeader {
            revision: current,
            ..Default::default()
        }),
        hash: hashed.hash,
        compact_revision: hashed.compacted_revision,
    };
    context.fill_header(&mut response.header);
    Ok(response)
}

/// `Defragment`: has every shard write a snapshot and release the WAL
/// segments below it, which is where space is reclaimed (the memtables free
/// compacted versions at once). Each snapshot is written on a thread of its
/// own while the shard keeps serving, so unlike etcd's defrag nothing waits
/// for it but this call.
async fn defragment(context: &ServiceContext) -> Result<DefragmentResponse, Status> {
    tracing::info!("starting defragment");
    context
        .write_path
        .snapshot_every_shard()
        .await
        .map_err(|error| Status::internal(format!("etcdserver: defragment failed: {error}")))?;
    tracing::info!("finished defragment");
    let mut response = DefragmentResponse { header: None };
    context.fill_header(&mut response.header);
    Ok(response)
}

/// `MoveLeader` as etcd answers it for a single member: to itself it is a
/// no-op; any other target is not a member. A cluster member answers the
/// same for now (moving the lead member on request is not built yet).
/// etcd's MoveLeader: asked of the leader (the lead member), it moves
/// every group's leadership to `target_id` and answers once the target
/// leads, within the request timeout ("leader transfer took too long"
/// after). A server alone is its own only possible leader.
async fn move_leader(
    context: &ServiceContext,
    request: MoveLeaderRequest,
) -> Result<MoveLeaderResponse, Status> {
    let identity = &context.identity;
    let target = request.target_id;
    let known = match &identity.role {
        None => target == identity.member_id,
        Some(_) => identity
            .members()
            .iter()
            .any(|member| member.id == target && !member.is_learner),
    };
    if !known {
        return Err(Status::failed_precondition(
            "etcdserver: bad leader transferee",
        ));
    }
    if let Some(role) = &identity.role {
        move_lead_member(role, target, context.write_path.request_timeout()).await?;
    }
    let mut response = MoveLeaderResponse { header: None };
    context.fill_header(&mut response.header);
    Ok(response)
}

async fn move_lead_member(
    role: &crate::shard::lead_member::MemberRole,
    target: u64,
    limit: std::time::Duration,
) -> Result<(), Status> {
    if role.lead_member() == target && (target != role.member_id || role.takes_writes()) {
        return Ok(());
    }
    if !role.takes_writes() {
        return Err(crate::store::error::KvError::NotLeader.into());
    }
    role.begin_move(target);
    let deadline = std::time::Instant::now() + limit;
    while role.lead_member() != target {
        if std::time::Instant::now() >= deadline {
            role.end_move();
            return Err(Status::new(
                crate::grpc::Code::Unavailable,
                "etcdserver: request timed out, leader transfer took too long",
            ));
        }
        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    role.end_move();
    Ok(())
}
