//! `etcdserverpb.Cluster`: MemberList (every member of a cluster as
//! bootstrapped, with the client URLs each announced over the peer
//! connections; a server alone lists itself).

use super::{ServiceContext, missing_method, unary};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::{Member, MemberListRequest, MemberListResponse};

const NOT_YET_SERVED: &[&str] = &["MemberAdd", "MemberRemove", "MemberUpdate", "MemberPromote"];

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
        other => Err(missing_method(
            "etcdserverpb.Cluster",
            other,
            NOT_YET_SERVED,
        )),
    }
}

fn member_list(context: &ServiceContext) -> MemberListResponse {
    let identity = &context.identity;
    let members = if identity.members.is_empty() {
        vec![Member {
            id: identity.member_id,
            name: identity.name.clone(),
            // A server alone listens on no peer port.
            peer_ur_ls: Vec::new(),
            client_ur_ls: identity.client_urls.clone(),
            is_learner: false,
        }]
    } else {
        identity
            .members
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
                is_learner: false,
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
