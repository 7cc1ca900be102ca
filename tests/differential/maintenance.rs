//! Section `maintenance_and_cluster`: Maintenance/Status and Cluster/MemberList,
//! whose ids differ by nature, so checked field by field for a single member.

use metastore::proto::etcdserverpb as pb;

use crate::common::GrpcResult;
use crate::harness::{MEMBER_LIST, STATUS, start};
use crate::requests::{get_prefix, put};

#[tokio::test]
async fn diff_maintenance_and_cluster() {
    let mut d = start!("maintenance_and_cluster");
    d.put("setup 1", put("m/a", "1")).await.ok();
    d.put("setup 2", put("m/b", "2")).await.ok();
    let etcd_ep = format!("http://{}", d.etcd.addr());
    let other_ep = format!("http://{}", d.other.addr());

    let req = pb::StatusRequest {};
    let e: GrpcResult<pb::StatusResponse> = d.etcd.unary(STATUS, &req).await;
    let o: GrpcResult<pb::StatusResponse> = d.other.unary(STATUS, &req).await;
    d.steps += 1;
    match (&e, &o) {
        (Ok(e), Ok(o)) => {
            let (eh, oh) = (
                e.header.iter().next().cloned().unwrap_or_default(),
                o.header.iter().next().cloned().unwrap_or_default(),
            );
            let mut check = |ok: bool, what: String| {
                if !ok {
                    d.failures.push(format!(
                        "[maintenance] Status: {what}\netcd: {e:#?}\nother: {o:#?}"
                    ));
                }
            };
            check(
                eh.revision == oh.revision,
                format!("header.revision {} vs {}", eh.revision, oh.revision),
            );
            check(o.leader != 0, "leader must be non-zero".into());
            check(
                oh.member_id != 0,
                "header.member_id must be non-zero".into(),
            );
            check(
                oh.cluster_id != 0,
                "header.cluster_id must be non-zero".into(),
            );
            check(
                o.leader == oh.member_id,
                "single member must be the leader (leader == header.member_id)".into(),
            );
            check(!o.version.is_empty(), "version must be set".into());
            check(
                o.errors.is_empty(),
                format!("errors must be empty: {:?}", o.errors),
            );
            check(!o.is_learner, "must not be a learner".into());
            check(
                e.leader == eh.member_id,
                "SCRIPT: etcd leader == member_id".into(),
            );
        }
        _ => d
            .failures
            .push(format!("[maintenance] Status: etcd {e:?} vs other {o:?}")),
    }

    let req = pb::MemberListRequest::default();
    let e: GrpcResult<pb::MemberListResponse> = d.etcd.unary(MEMBER_LIST, &req).await;
    let o: GrpcResult<pb::MemberListResponse> = d.other.unary(MEMBER_LIST, &req).await;
    d.steps += 1;
    match (&e, &o) {
        (Ok(e), Ok(o)) => {
            let oh = o.header.iter().next().cloned().unwrap_or_default();
            let mut check = |ok: bool, what: String| {
                if !ok {
                    d.failures.push(format!(
                        "[cluster] MemberList: {what}\netcd: {e:#?}\nother: {o:#?}"
                    ));
                }
            };
            check(e.members.len() == 1, "SCRIPT: etcd has one member".into());
            check(
                e.members[0].client_ur_ls == vec![etcd_ep.clone()],
                "SCRIPT: etcd client url".into(),
            );
            check(
                o.members.len() == 1,
                format!("exactly one member, got {}", o.members.len()),
            );
            if let Some(m) = o.members.first() {
                check(m.id != 0, "member id must be non-zero".into());
                check(
                    m.name == e.members[0].name,
                    format!("name {:?} vs etcd's {:?}", m.name, e.members[0].name),
                );
                check(
                    m.client_ur_ls == vec![other_ep.clone()],
                    format!("clientURLs {:?}, want [{other_ep}]", m.client_ur_ls),
                );
                check(!m.is_learner, "must not be a learner".into());
                check(
                    oh.member_id == m.id,
                    format!("header.member_id {} != member id {}", oh.member_id, m.id),
                );
            }
        }
        _ => d
            .failures
            .push(format!("[cluster] MemberList: etcd {e:?} vs other {o:?}")),
    }
    d.range("after status", get_prefix("m/")).await.ok();
    d.finish();
}
