//! `etcdserverpb.Cluster`: MemberList (every member of the cluster as this
//! member applied the membership, with the client URLs each announced over
//! the peer connections; a server alone lists itself) and MemberRemove
//! (through the lead member, `shard::conf_change`).

use super::{ServiceContext, missing_method, unary};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::{
    Member, MemberListRequest, MemberListResponse, MemberRemoveRequest, MemberRemoveResponse,
};

const NOT_YET_SERVED: &[&str] = &["MemberAdd", "MemberUpdate", "MemberPromote"];

pub async fn call(
    context: &ServiceContext,
    method: &str,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    match method {
        "MemberList" => {
            unary(requests, responses, async |_: MemberListRequest| {
                Ok(member_list(context))
            })
            .await
        }
        "MemberRemove" => {
            unary(requests, responses, async |request: MemberRemoveRequest| {
                member_remove(context, request).await
            })
            .await
        }
        other => Err(missing_method(
            "etcdserverpb.Cluster",
            other,
            NOT_YET_SERVED,
        )),
    }
}

fn member_list(context: &ServiceContext) -> MemberListResponse {
    let identity = &context.identity;
    let recorded = identity.members();
    let members = if recorded.is_empty() {
        vec![Member {
            id: identity.member_id,
            name: identity.name.clone(),
            // A server alone listens on no peer port.
            peer_ur_ls: Vec::new(),
            client_ur_ls: identity.client_urls.clone(),
            is_learner: false,
        }]
    } else {
        recorded
            .iter()
            .map(|member| Member {
                id: member.id,
                name: member.name.clone(),
                peer_ur_ls: member.peer_urls.clone(),
                // Others' as they announced them when they connected
                // (etcd publishes them through Raft); none from a member
                // not heard from since this one started.
                client_ur_ls: if member.id == identity.member_id {
                    identity.client_urls.clone()
                } else {
                    identity
                        .directory
                        .as_ref()
                        .and_then(|directory| directory.client_urls(member.id))
                        .unwrap_or_default()
                },
                is_learner: member.is_learner,
            })
            .collect()
    };
    let mut response = MemberListResponse {
        header: None,
        members,
    };
    context.fill_header(&mut response.header);
    response
}

/// etcd's MemberRemove. A server alone cannot remove itself (etcd's
/// answer for its only member is "not enough started members"; there is
/// no other member to name). The answer lists the members after the
/// removal, as etcd's does.
async fn member_remove(
    context: &ServiceContext,
    request: MemberRemoveRequest,
) -> Result<MemberRemoveResponse, Status> {
    if context.identity.configurations.is_none() {
        return Err(if request.id == context.identity.member_id {
            Status::failed_precondition(
                "etcdserver: re-configuration failed due to not enough started members",
            )
        } else {
            Status::not_found("etcdserver: member not found")
        });
    }
    context.write_path.remove_member(request.id).await?;
    let mut response = MemberRemoveResponse {
        header: None,
        // This member may not have applied the removal yet if it was
        // carried out by another: the answer is the list after it.
        members: member_list(context)
            .members
            .into_iter()
            .filter(|member| member.id != request.id)
            .collect(),
    };
    context.fill_header(&mut response.header);
    Ok(response)
}
