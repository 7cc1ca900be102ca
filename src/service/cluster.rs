//! `etcdserverpb.Cluster`: MemberList for a single member.

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
    let member = Member {
        id: identity.member_id,
        name: identity.name.clone(),
        // No peer port until clustering exists.
        peer_ur_ls: Vec::new(),
        client_ur_ls: identity.client_urls.clone(),
        is_learner: false,
    };
    let mut response = MemberListResponse {
        header: None,
        members: vec![member],
    };
    context.fill_header(&mut response.header);
    response
}
