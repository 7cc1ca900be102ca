//! `v3electionpb.Election`: Campaign, Proclaim, Leader, Observe, Resign;
//! etcd's `concurrency.Election` run in the server.

use std::rc::Rc;

use bytes::Bytes;

use super::recipes::{self, OwnKey, Undo, recipe_error, session_key};
use super::{ServiceContext, missing_method, unary};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::TxnRequest;
use crate::proto::etcdserverpb::range_request::SortOrder;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::store::key_range::{KeyRange, prefix_end};

/// etcd's `v3election.ErrMissingLeaderKey`.
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
/// etcd's `concurrency.ErrElectionNotLeader`.
const NOT_LEADER: &str = "election: not leader";
/// etcd's `concurrency.ErrElectionNoLeader`.
const NO_LEADER: &str = "election: no leader";

pub async fn call(
    context: &Rc<ServiceContext>,
    method: &str,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    match method {
        "Campaign" => {
            let request = requests.unary::<CampaignRequest>().await?;
            let (response, candidate_key) = campaign(context, request).await?;
            // The key stays only once the client has its answer (etcd's
            // Campaign resigns when its context ends).
            responses.send(&response).await?;
            candidate_key.keep();
            Ok(())
        }
        "Proclaim" => {
            unary(requests, responses, async |request| {
                proclaim(context, request).await
            })
            .await
        }
        "Leader" => {
            unary(requests, responses, async |request| {
                leader(context, request).await
            })
            .await
        }
        "Observe" => {
            let request = requests.unary::<LeaderRequest>().await?;
            observe(context, request, responses).await
        }
        "Resign" => {
            unary(requests, responses, async |request| {
                resign(context, request).await
            })
            .await
        }
        other => Err(missing_method("v3electionpb.Election", other, &[])),
    }
}

/// etcd's `Election.Campaign`: create `name/<lease hex>` with the value
/// (or proclaim the value on a key this lease already has), then wait until
/// every older candidate is gone. The candidate's key is deleted (if it is
/// still the one this campaign stands on) when the call ends before its
/// client has the answer.
async fn campaign(
    context: &Rc<ServiceContext>,
    request: CampaignRequest,
) -> Result<(CampaignResponse, OwnKey), Status> {
    let lease = recipes::session_lease(context, request.lease).await?;
    let prefix = recipes::recipe_prefix(&request.name);
    let key = session_key(&prefix, lease);
    let txn = TxnRequest {
        compare: vec![recipes::compare_create_revision(&key, 0)],
        success: vec![recipes::put_op(&key, request.value.clone(), lease)],
        failure: vec![recipes::get_op(&key)],
    };
    let response = recipes::txn_creating_key(context, txn, key.clone()).await?;
    let mut leader = LeaderKey {
        name: request.name.clone(),
        key: key.clone(),
        rev: response.header.as_ref().map_or(0, |header| header.revision),
        lease,
    };
    let existing = if response.succeeded {
        None
    } else {
        response
            .responses
            .first()
            .and_then(|op| match &op.response {
                Some(Response::ResponseRange(range)) => range.kvs.first().cloned(),
                _ => None,
            })
    };
    if let Some(existing) = &existing {
        leader.rev = existing.create_revision;
    }
    // Armed before the next await, so no cancellation can slip between.
    let candidate_key = OwnKey::new(
        context.write_path.clone(),
        Undo {
            key,
            created_at: Some(leader.rev),
        },
    );
    if let Some(existing) = existing
        && existing.value != request.value
    {
        proclaim_value(context, &leader, request.value.clone()).await?;
    }
    recipes::wait_deletes(context, &prefix, leader.rev - 1).await?;
    let response = CampaignResponse {
        header: response.header,
        leader: Some(leader),
    };
    Ok((response, candidate_key))
}

async fn proclaim_value(
    context: &ServiceContext,
    leader: &LeaderKey,
    value: Bytes,
) -> Result<Option<crate::proto::etcdserverpb::ResponseHeader>, Status> {
    let txn = TxnRequest {
        compare: vec![recipes::compare_create_revision(&leader.key, leader.rev)],
        success: vec![recipes::put_op(&leader.key, value, leader.lease)],
        failure: Vec::new(),
    };
    let response = recipes::txn(context, txn).await?;
    if !response.succeeded {
        return Err(recipe_error(NOT_LEADER));
    }
    Ok(response.header)
}

async fn proclaim(
    context: &ServiceContext,
    request: ProclaimRequest,
) -> Result<ProclaimResponse, Status> {
    let leader = request
        .leader
        .ok_or_else(|| recipe_error(MISSING_LEADER_KEY))?;
    let header = proclaim_value(context, &leader, request.value).await?;
    Ok(ProclaimResponse { header })
}

async fn leader(
    context: &ServiceContext,
    request: LeaderRequest,
) -> Result<LeaderResponse, Status> {
    let prefix = recipes::recipe_prefix(&request.name);
    let (header, kvs) = recipes::range(
        context,
        recipes::first_by_create(&prefix, SortOrder::Ascend, 0),
    )
    .await?;
    let kv = kvs
        .into_iter()
        .next()
        .ok_or_else(|| recipe_error(NO_LEADER))?;
    Ok(LeaderResponse {
        header,
        kv: Some(kv),
    })
}

/// etcd's `Election.Observe`: the current leader (waiting for a first one
/// if there is none), then every change of the leader's value until its
/// key is deleted; then the next leader, and so on.
async fn observe(
    context: &ServiceContext,
    request: LeaderRequest,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    let prefix = recipes::recipe_prefix(&request.name);
    let prefix_range = KeyRange::from_bytes(&prefix, &prefix_end(&prefix));
    loop {
        let (mut header, kvs) = recipes::range(
            context,
            recipes::first_by_create(&prefix, SortOrder::Ascend, 0),
        )
        .await?;
        let revision = header.as_ref().map_or(0, |header| header.revision);
        let leader = match kvs.into_iter().next() {
            Some(kv) => kv,
            None => {
                // Wait for the first put under the prefix (deletes are
                // skipped, as etcd's observe does).
                let mut after = revision;
                loop {
                    let (at, kv) = recipes::next_change(context, &prefix_range, after).await?;
                    after = at;
                    if let Some(kv) = kv {
                        if let Some(header) = header.as_mut() {
                            header.revision = kv.mod_revision;
                        }
                        break kv;
                    }
                }
            }
        };
        let mut after = header.as_ref().map_or(0, |header| header.revision);
        responses
            .send(&LeaderResponse {
                header,
                kv: Some(leader.clone()),
            })
            .await?;
        // Follow the leader key until it is deleted.
        let leader_range = KeyRange::Single(leader.key.clone());
        loop {
            let (at, kv) = recipes::next_change(context, &leader_range, after).await?;
            after = at;
            let Some(kv) = kv else { break };
            let mut header = header;
            context.fill_header(&mut header);
            if let Some(header) = header.as_mut() {
                header.revision = at;
            }
            responses
                .send(&LeaderResponse {
                    header,
                    kv: Some(kv),
                })
                .await?;
        }
    }
}

async fn resign(
    context: &ServiceContext,
    request: ResignRequest,
) -> Result<ResignResponse, Status> {
    let leader = request
        .leader
        .ok_or_else(|| recipe_error(MISSING_LEADER_KEY))?;
    let txn = TxnRequest {
        compare: vec![recipes::compare_create_revision(&leader.key, leader.rev)],
        success: vec![recipes::delete_op(&leader.key)],
        failure: Vec::new(),
    };
    let response = recipes::txn(context, txn).await?;
    Ok(ResignResponse {
        header: response.header,
    })
}
