//! `etcdserverpb.Cluster`: MemberList (every member of the cluster as this
//! member applied the membership, with the name and client URLs each
//! announced over the peer connections; a server alone lists itself), and
//! MemberAdd, MemberRemove, MemberUpdate and MemberPromote (carried out by
//! the lead member, `shard::member_change` and `shard::conf_change`).

use super::{ServiceContext, missing_method, unary};
use crate::data_dir::MemberRecord;
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::shard::member_change::MemberChange;

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
        "MemberAdd" => {
            unary(requests, responses, async |request: MemberAddRequest| {
                member_add(context, request).await
            })
            .await
        }
        "MemberRemove" => {
            unary(requests, responses, async |request: MemberRemoveRequest| {
                member_remove(context, request).await
            })
            .await
        }
        "MemberUpdate" => {
            unary(requests, responses, async |request: MemberUpdateRequest| {
                let change = MemberChange::Update {
                    id: request.id,
                    peer_urls: peer_urls(&request.peer_ur_ls)?,
                };
                let members = change_member(context, change).await?;
                let mut response = MemberUpdateResponse {
                    header: None,
                    members,
                };
                context.fill_header(&mut response.header);
                Ok(response)
            })
            .await
        }
        "MemberPromote" => {
            unary(
                requests,
                responses,
                async |request: MemberPromoteRequest| {
                    let members = change_member(context, MemberChange::Promote(request.id)).await?;
                    let mut response = MemberPromoteResponse {
                        header: None,
                        members,
                    };
                    context.fill_header(&mut response.header);
                    Ok(response)
                },
            )
            .await
        }
        other => Err(missing_method("etcdserverpb.Cluster", other, &[])),
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
                // A member added at runtime is named once it starts and
                // announces itself (etcd: once it publishes its name).
                name: if member.id == identity.member_id {
                    identity.name.clone()
                } else if member.name.is_empty() {
                    identity
                        .directory
                        .as_ref()
                        .and_then(|directory| directory.name(member.id))
                        .unwrap_or_default()
                } else {
                    member.name.clone()
                },
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

/// etcd's MemberAdd: the new member's ID is drawn as etcd draws it (its
/// peer URLs and the time; no name until it starts and announces one).
async fn member_add(
    context: &ServiceContext,
    request: MemberAddRequest,
) -> Result<MemberAddResponse, Status> {
    let urls = peer_urls(&request.peer_ur_ls)?;
    if context.identity.configurations.is_none() {
        // A server alone has no peer listener for a new member to reach.
        return Err(not_enough_started());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64);
    let url_refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let record = MemberRecord {
        id: crate::membership::member_id(&url_refs, "", Some(now)),
        name: String::new(),
        peer_urls: urls,
        is_learner: request.is_learner,
    };
    let member = Member {
        id: record.id,
        name: String::new(),
        peer_ur_ls: record.peer_urls.clone(),
        client_ur_ls: Vec::new(),
        is_learner: record.is_learner,
    };
    let mut members = change_member(context, MemberChange::Add(record)).await?;
    // This member may not have applied the addition yet if another
    // carried it out: the answer is the list after it.
    if !members.iter().any(|listed| listed.id == member.id) {
        members.push(member.clone());
    }
    let mut response = MemberAddResponse {
        header: None,
        member: Some(member),
        members,
    };
    context.fill_header(&mut response.header);
    Ok(response)
}

/// etcd's MemberRemove. A server alone cannot remove itself (etcd's
/// answer for its only member is "not enough started members"; there is
/// no other member to name). The answer lists the members after the
/// removal, as etcd's does.
async fn member_remove(
    context: &ServiceContext,
    request: MemberRemoveRequest,
) -> Result<MemberRemoveResponse, Status> {
    let members = change_member(context, MemberChange::Remove(request.id))
        .await?
        .into_iter()
        .filter(|member| member.id != request.id)
        .collect();
    let mut response = MemberRemoveResponse {
        header: None,
        members,
    };
    context.fill_header(&mut response.header);
    Ok(response)
}

/// Has the lead member carry out `change`; the member list after it as
/// this member knows it. On a server alone every change names an unknown
/// member or this one, which cannot change.
async fn change_member(
    context: &ServiceContext,
    change: MemberChange,
) -> Result<Vec<Member>, Status> {
    if context.identity.configurations.is_none() {
        return Err(if change.member_id() == context.identity.member_id {
            not_enough_started()
        } else {
            Status::not_found("etcdserver: member not found")
        });
    }
    context.write_path.change_member(change.clone()).await?;
    // The lead member answered once its groups applied the change; the
    // answer lists the members as this member knows them, so wait (a
    // little) until it applied the change too.
    let deadline = std::time::Instant::now() + MEMBER_LIST_CATCH_UP;
    while !change.is_reflected_in(&context.identity.members())
        && std::time::Instant::now() < deadline
    {
        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(member_list(context).members)
}

/// How long a member that forwarded a membership change waits to apply it
/// before answering with the list it has.
const MEMBER_LIST_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

fn not_enough_started() -> Status {
    Status::failed_precondition(
        "etcdserver: re-configuration failed due to not enough started members",
    )
}

/// etcd's check of a member's peer URLs (`types.NewURLs`), normalized as
/// `--initial-cluster`'s are.
fn peer_urls(given: &[String]) -> Result<Vec<String>, Status> {
    let bad = || Status::invalid_argument("etcdserver: given member URLs are invalid");
    if given.is_empty() {
        return Err(bad());
    }
    given
        .iter()
        .map(|url| {
            crate::config::parse_client_url(url)
                .map(|_| url.trim_end_matches('/').to_owned())
                .map_err(|_| bad())
        })
        .collect()
}
