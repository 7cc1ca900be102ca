//! Member removal across every group (`conf_change`), on three members of
//! three shards in one process (`test_cluster`): a removal asked of any
//! member reaches the lead member, is applied in group 0 and then carried
//! to the other groups; the removed member learns it; writes go on with
//! the two left. When the lead member removes itself it stops at once
//! (only group 0 has applied the removal), and the next lead member
//! finishes carrying it to the other groups: the change survives the loss
//! of the member that began it.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::member_change::MemberChange;
use super::test_cluster::{TestCluster, test_record};
use crate::proto::etcdserverpb::{PutRequest, RequestOp, request_op};
use crate::store::error::KvError;
use crate::store::write::WriteRequest;
use crate::test_support::run_on_monoio as run;

const SHARDS: usize = 3;

fn put(key: &str) -> WriteRequest {
    WriteRequest::Txn(crate::proto::etcdserverpb::TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from(key.to_owned()),
                value: Bytes::from_static(b"value"),
                ..Default::default()
            })),
        }],
        ..Default::default()
    })
}

/// Waits (bounded) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..20_000 {
        if condition() {
            return;
        }
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

fn lead_member(cluster: &TestCluster) -> Option<u64> {
    cluster
        .members
        .iter()
        .find(|member| member.role.takes_writes())
        .map(|member| member.id)
}

/// Whether member `at` has every group without `removed` and the member
/// list without it.
fn applied_everywhere(cluster: &TestCluster, at: u64, removed: u64) -> bool {
    let configurations = &cluster.members[cluster.index_of(at)].configurations;
    let gone = !configurations
        .members()
        .iter()
        .any(|member| member.id == removed);
    gone && (0..SHARDS).all(|group| !configurations.latest(group).voters.contains(&removed))
}

async fn write_through(cluster: &TestCluster, member: u64, key: &str) -> Result<(), KvError> {
    let member = &cluster.members[cluster.index_of(member)];
    member.write_path.write(put(key)).await.map(|_| ())
}

/// Three members with forwarding, once a lead member took a write;
/// returns the cluster and the lead member.
async fn started_with_a_write(directory: &std::path::Path) -> (Rc<TestCluster>, u64) {
    let cluster = TestCluster::start(
        &[1, 2, 3],
        SHARDS,
        directory,
        Some(Duration::from_secs(2)),
        1_000,
    )
    .await;
    cluster.run_network();
    eventually("a lead member", || lead_member(&cluster).is_some()).await;
    let lead = lead_member(&cluster).expect("lead");
    write_through(&cluster, lead, "before").await.expect("put");
    (cluster, lead)
}

#[test]
fn a_removal_asked_of_any_member_reaches_every_group() {
    let directory = tempfile::tempdir().expect("dir");
    run(async {
        let (cluster, lead) = started_with_a_write(directory.path()).await;
        // Asked of a member that is not the lead member and not the one
        // removed: forwarded.
        let removed = [1, 2, 3].into_iter().find(|id| *id != lead).expect("other");
        let asked = [1, 2, 3]
            .into_iter()
            .find(|id| *id != lead && *id != removed)
            .expect("third");
        let asking = &cluster.members[cluster.index_of(asked)];
        asking
            .write_path
            .change_member(MemberChange::Remove(removed))
            .await
            .expect("removed");
        assert!(
            applied_everywhere(&cluster, lead, removed),
            "the lead member answers once every group of its applied it"
        );
        eventually("the other member applies it", || {
            applied_everywhere(&cluster, asked, removed)
        })
        .await;
        let removed_member = &cluster.members[cluster.index_of(removed)];
        eventually("the removed member learns it", || {
            removed_member.role.is_removed()
        })
        .await;
        assert!(!removed_member.role.takes_writes());
        // It would stop now; cut off, the two left go on.
        cluster.isolated.borrow_mut().insert(removed);
        for index in 0..20 {
            write_through(&cluster, asked, &format!("after-{index}"))
                .await
                .expect("writes go on with two members");
        }
        assert_eq!(
            asking
                .write_path
                .change_member(MemberChange::Remove(removed))
                .await,
            Err(KvError::MemberNotFound),
            "etcd: member not found"
        );
    });
}

#[test]
fn the_next_lead_member_finishes_a_removal_of_the_lead_member() {
    let directory = tempfile::tempdir().expect("dir");
    run(async {
        let (cluster, lead) = started_with_a_write(directory.path()).await;
        let member = &cluster.members[cluster.index_of(lead)];
        member
            .write_path
            .change_member(MemberChange::Remove(lead))
            .await
            .expect("removed itself");
        assert!(member.role.is_removed());
        // It stops as soon as group 0 applied the removal: the other
        // groups may not have it yet.
        cluster.isolated.borrow_mut().insert(lead);
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != lead).collect();
        eventually("a new lead member", || {
            lead_member(&cluster).is_some_and(|id| id != lead)
        })
        .await;
        for member in &others {
            eventually("the removal reaches every group", || {
                applied_everywhere(&cluster, *member, lead)
            })
            .await;
        }
        write_through(&cluster, others[0], "after")
            .await
            .expect("writes go on");
    });
}

/// Whether member `at` has every group with `member` voting (or learning).
fn member_everywhere(cluster: &TestCluster, at: u64, member: u64, voting: bool) -> bool {
    let configurations = &cluster.members[cluster.index_of(at)].configurations;
    (0..SHARDS).all(|group| {
        let latest = configurations.latest(group);
        if voting {
            latest.voters.contains(&member)
        } else {
            latest.learners.contains(&member)
        }
    })
}

#[test]
fn a_member_added_as_a_learner_catches_up_and_is_promoted() {
    let directory = tempfile::tempdir().expect("dir");
    run(async {
        // Groups snapshot every 30 entries (releasing their logs), so the
        // new member catches up from snapshots as well as from entries.
        let cluster = TestCluster::start_joining(
            (&[1, 2, 3], &[4]),
            SHARDS,
            directory.path(),
            Some(Duration::from_secs(2)),
            30,
        )
        .await;
        cluster.run_network();
        eventually("a lead member", || lead_member(&cluster).is_some()).await;
        let lead = lead_member(&cluster).expect("lead");
        for index in 0..150 {
            write_through(&cluster, lead, &format!("before-{index}"))
                .await
                .expect("put");
        }
        let asked = [1, 2, 3].into_iter().find(|id| *id != lead).expect("other");
        let asking = &cluster.members[cluster.index_of(asked)];
        // A voter cut off: strict checks refuse to add even a learner
        // while not every voter is connected (etcd: unhealthy cluster).
        let cut = [1, 2, 3]
            .into_iter()
            .find(|id| *id != lead && *id != asked)
            .expect("third");
        cluster.isolated.borrow_mut().insert(cut);
        cluster.isolated.borrow_mut().insert(4);
        // Long enough for the lead member to stop hearing from it.
        monoio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            asking
                .write_path
                .change_member(MemberChange::Add(test_record(4, true)))
                .await,
            Err(KvError::UnhealthyCluster)
        );
        cluster.isolated.borrow_mut().remove(&cut);
        monoio::time::sleep(Duration::from_millis(100)).await;
        asking
            .write_path
            .change_member(MemberChange::Add(test_record(4, true)))
            .await
            .expect("added as a learner");
        assert!(member_everywhere(&cluster, lead, 4, false));
        assert_eq!(
            asking
                .write_path
                .change_member(MemberChange::Add(test_record(5, true)))
                .await,
            Err(KvError::TooManyLearners)
        );
        // Not reachable yet: far behind, so not promoted.
        assert_eq!(
            asking
                .write_path
                .change_member(MemberChange::Promote(4))
                .await,
            Err(KvError::LearnerNotReady)
        );
        cluster.isolated.borrow_mut().remove(&4);
        let joined = &cluster.members[cluster.index_of(4)];
        let lead_space = &cluster.members[cluster.index_of(lead)].space;
        let target = lead_space.clock().watermark();
        monoio::time::timeout(
            Duration::from_secs(20),
            joined.space.clock().wait_applied(target),
        )
        .await
        .expect("the new member catches up");
        for shard in 0..SHARDS {
            let installed = std::fs::read_dir(
                directory
                    .path()
                    .join("member-4")
                    .join(format!("shard-{shard}")),
            )
            .expect("snapshot directory")
            .count();
            assert!(installed > 0, "shard {shard} caught up without a snapshot");
        }
        let mut promoted = Err(KvError::LearnerNotReady);
        for _ in 0..200 {
            promoted = asking
                .write_path
                .change_member(MemberChange::Promote(4))
                .await;
            if promoted != Err(KvError::LearnerNotReady) {
                break;
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        promoted.expect("promoted once caught up");
        for member in [1, 2, 3, 4] {
            eventually("every member has four voters in every group", || {
                member_everywhere(&cluster, member, 4, true)
            })
            .await;
        }
        // Four voters: one cut off leaves a quorum of three, which
        // includes the new member.
        cluster.isolated.borrow_mut().insert(cut);
        for index in 0..20 {
            write_through(&cluster, 4, &format!("after-{index}"))
                .await
                .expect("writes go on through the new member");
        }
        let target = lead_space.clock().watermark();
        joined.space.clock().wait_applied(target).await;
        let hash = |space: &crate::store::key_space::KeySpace| {
            crate::store::content_hash::hash_kv(space, target, target)
                .expect("hash")
                .hash
        };
        assert_eq!(hash(&joined.space), hash(lead_space), "the same history");
    });
}

/// raft-rs keeps a leader that applied its own removal as leader, with no
/// progress of its own: the next entry it proposes and counts
/// acknowledgements for panics it (`maybe_commit`). `RaftGroup` makes it
/// step down when it applies the removal.
#[test]
fn a_leader_that_applied_its_own_removal_leads_no_more() {
    use super::frontier::DurableFrontier;
    use super::raft_group::{GroupConfig, RaftGroup};
    use super::recovery::read_shard_log;
    use super::test_worker::{OPTIONS, start_empty_group};
    use crate::wal::MemoryDevice;

    /// Hands every group's messages on (and their answers) until quiet;
    /// applies committed conf changes as the worker does.
    async fn settle(groups: &mut [RaftGroup<MemoryDevice>]) {
        for _ in 0..20 {
            let mut messages = Vec::new();
            for group in groups.iter_mut() {
                let persisted = group.persist().await.expect("persist");
                for entry in &persisted.committed {
                    if entry.entry_type == raft::eraftpb::EntryType::EntryConfChange {
                        let change = super::conf_change::decode(entry).expect("decodes");
                        group
                            .apply_conf_change(entry.index, &change)
                            .expect("apply");
                    }
                }
                if let Some(last) = persisted.committed.last() {
                    group.applied_through(last.index);
                }
                messages.extend(persisted.messages);
            }
            if messages.is_empty() {
                return;
            }
            for message in messages {
                let to = message.to as usize - 1;
                let _ = groups[to].step(message);
            }
        }
    }

    let directory = tempfile::tempdir().expect("dir");
    run(async move {
        let frontier = std::sync::Arc::new(DurableFrontier::new(std::iter::empty()));
        let mut groups = Vec::new();
        for member_id in 1..=3u64 {
            let log = read_shard_log(0, MemoryDevice::new(), 0)
                .await
                .expect("read");
            let wal = log.reading.resume(OPTIONS).await.expect("resume");
            // Member 1 times out first and leads.
            let ticks = if member_id == 1 { 10 } else { 30 };
            let config = GroupConfig {
                member_id,
                voters: vec![1, 2, 3],
                election_ticks: ticks..ticks + 1,
                pre_vote: true,
            };
            let snapshots = directory.path().join(format!("member-{member_id}"));
            std::fs::create_dir_all(&snapshots).expect("dir");
            groups.push(start_empty_group(wal, 0, &frontier, &snapshots, &config, None).await);
        }
        for _ in 0..12 {
            groups[0].tick();
            settle(&mut groups).await;
        }
        assert!(groups[0].is_leader(), "member 1 leads");
        groups[0]
            .propose_conf_change(super::conf_change::removal(1))
            .expect("propose");
        settle(&mut groups).await;
        assert!(
            !groups[0].is_leader(),
            "a leader that applied its own removal steps down"
        );
        // A proposal is refused rather than counted without a progress.
        assert!(groups[0].propose(b"after".to_vec()).is_err());
        settle(&mut groups).await;
    });
}
