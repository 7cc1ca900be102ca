//! `etcdserverpb.Maintenance`: Status, enough for `etcdctl endpoint status`
//! and `endpoint health`. The rest arrives with the operations issue.

use super::{RAFT_TERM, ServiceContext, missing_method, unary};
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::{StatusRequest, StatusResponse};

/// The etcd API level MetaStore speaks; clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.4.0";

const NOT_YET_SERVED: &[&str] = &["Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader"];

pub async fn call(
    context: &ServiceContext,
    method: &str,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    match method {
        "Status" => {
            unary(requests, responses, async |_: StatusRequest| {
                Ok(status(context))
            })
            .await
        }
        "Alarm" => {
            unary(requests, responses, async |request| {
                super::alarm::alarm(context, request).await
            })
            .await
        }
        other => Err(missing_method(
            "etcdserverpb.Maintenance",
            other,
            NOT_YET_SERVED,
        )),
    }
}

fn status(context: &ServiceContext) -> StatusResponse {
    let space = context.write_path.space();
    let (_, bytes) = space.totals();
    // Without a Raft log yet, every applied revision stands for one applied
    // entry; the raft issue replaces this with real log indexes.
    let applied = space.clock().watermark() as u64;
    let mut response = StatusResponse {
        header: None,
        version: ETCD_API_VERSION.to_owned(),
        db_size: bytes,
        leader: context.identity.member_id,
        raft_index: applied,
        raft_term: RAFT_TERM,
        raft_applied_index: applied,
        errors: Vec::new(),
        db_size_in_use: bytes,
        is_learner: false,
    };
    context.fill_header(&mut response.header);
    response
}
