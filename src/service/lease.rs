//! `etcdserverpb.Lease`: LeaseGrant, LeaseRevoke, LeaseKeepAlive,
//! LeaseTimeToLive, LeaseLeases; and the expiry task that revokes leases
//! whose TTL ran out.

use std::rc::Rc;
use std::time::Instant;

use super::{ServiceContext, missing_method, unary};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::lease::expiry::LeaseExpiryQueue;
use crate::lease::table::effective_ttl;
use crate::lease::{EXPIRY_CHECK_INTERVAL, MAX_LEASE_TTL_SECONDS};
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::shard::write_path::WritePath;
use crate::store::error::KvError;
use crate::store::write::{WriteRequest, WriteResponse};

pub async fn call(
    context: &ServiceContext,
    method: &str,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    match method {
        "LeaseGrant" => {
            unary(requests, responses, async |request| {
                grant(context, request).await
            })
            .await
        }
        "LeaseRevoke" => {
            unary(requests, responses, async |request| {
                revoke(context, request).await
            })
            .await
        }
        "LeaseKeepAlive" => keep_alive(context, requests, responses).await,
        "LeaseTimeToLive" => {
            unary(requests, responses, async |request| {
                time_to_live(context, request).await
            })
            .await
        }
        "LeaseLeases" => {
            unary(requests, responses, async |request| {
                leases(context, request)
            })
            .await
        }
        other => Err(missing_method("etcdserverpb.Lease", other, &[])),
    }
}

async fn grant(
    context: &ServiceContext,
    request: LeaseGrantRequest,
) -> Result<LeaseGrantResponse, Status> {
    super::quota::admit(context, super::quota::LEASE_GRANT_COST).await?;
    if request.ttl > MAX_LEASE_TTL_SECONDS {
        return Err(KvError::LeaseTtlTooLarge.into());
    }
    let leases = context.write_path.space().leases();
    // etcd picks a positive ID when the client does not.
    let id = if request.id == 0 {
        leases.new_id()
    } else {
        request.id
    };
    let ttl = effective_ttl(request.ttl);
    context.write_path.grant_lease(id, ttl).await?;
    context
        .metrics
        .count(|counters| counters.leases_granted += 1);
    let mut response = LeaseGrantResponse {
        id,
        ttl,
        ..Default::default()
    };
    context.fill_header(&mut response.header);
    Ok(response)
}

async fn revoke(
    context: &ServiceContext,
    request: LeaseRevokeRequest,
) -> Result<LeaseRevokeResponse, Status> {
    let outcome = context
        .write_path
        .write(WriteRequest::LeaseRevoke(request.id))
        .await?;
    context
        .metrics
        .count(|counters| counters.leases_revoked += 1);
    match outcome.response {
        WriteResponse::LeaseRevoke(mut response) => {
            context.fill_header(&mut response.header);
            Ok(response)
        }
        other => Err(super::kv::mismatched_response("LeaseRevoke", &other)),
    }
}

/// etcd: each request renews its lease and is answered in order; an
/// unknown (or expired) lease is answered with TTL 0. The header is filled
/// before renewing, so its revision is never above one at which the lease
/// could have been revoked. On a cluster member the lead member renews it
/// (only its deadlines count).
async fn keep_alive(
    context: &ServiceContext,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    while let Some(request) = requests.next::<LeaseKeepAliveRequest>().await? {
        let mut response = LeaseKeepAliveResponse {
            id: request.id,
            ..Default::default()
        };
        context.fill_header(&mut response.header);
        response.ttl = context.write_path.renew_lease(request.id).await?;
        if response.ttl > 0 {
            context
                .metrics
                .count(|counters| counters.leases_renewed += 1);
        }
        responses.send(&response).await?;
    }
    Ok(())
}

/// The remaining TTL is the lead member's (a cluster member asks it); the
/// keys are this member's.
async fn time_to_live(
    context: &ServiceContext,
    request: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Status> {
    let space = context.write_path.space();
    let mut response = match context.write_path.lease_status(request.id).await? {
        // etcd answers an unknown lease with TTL -1, not an error.
        None => LeaseTimeToLiveResponse {
            id: request.id,
            ttl: -1,
            ..Default::default()
        },
        Some(status) => LeaseTimeToLiveResponse {
            id: request.id,
            ttl: status.remaining_seconds,
            granted_ttl: status.granted_ttl_seconds,
            keys: if request.keys {
                space.keys_with_lease(request.id)
            } else {
                Vec::new()
            },
            ..Default::default()
        },
    };
    context.fill_header(&mut response.header);
    Ok(response)
}

fn leases(
    context: &ServiceContext,
    _request: LeaseLeasesRequest,
) -> Result<LeaseLeasesResponse, Status> {
    let mut response = LeaseLeasesResponse {
        leases: context
            .write_path
            .space()
            .leases()
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect(),
        ..Default::default()
    };
    context.fill_header(&mut response.header);
    Ok(response)
}

/// Revokes leases whose deadline passed. Runs on one core for the node,
/// which owns the deadline heap. A lease whose revocation fails stays in
/// the table, so the queue reports it again at the next check.
///
/// On a cluster member only the lead member expires leases (etcd: only the
/// leader's lessor revokes); `role` says whether this member is it.
pub async fn expire_leases(
    write_path: Rc<WritePath>,
    metrics: Rc<crate::metrics::CoreMetrics>,
    role: Option<std::sync::Arc<crate::shard::lead_member::MemberRole>>,
) {
    let mut queue = LeaseExpiryQueue::new();
    loop {
        monoio::time::sleep(EXPIRY_CHECK_INTERVAL).await;
        if role.as_ref().is_some_and(|role| !role.takes_writes()) {
            continue;
        }
        let expired = queue.expired(write_path.space().leases(), Instant::now());
        for lease in expired {
            match write_path.write(WriteRequest::LeaseRevoke(lease)).await {
                Ok(_) => metrics.count(|counters| counters.leases_revoked += 1),
                // Revoked by a client meanwhile: nothing to do.
                Err(KvError::LeaseNotFound) => {}
                Err(error) => {
                    tracing::warn!(lease, %error, "cannot revoke an expired lease; will retry")
                }
            }
        }
    }
}
