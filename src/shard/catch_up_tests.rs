//! A member cut off while its groups' logs move on past their snapshots
//! catches up from the leaders' snapshots (`snapshot_install`): three
//! members of two shards in one process (`test_cluster`), each group
//! snapshotting every 40 entries it proposes (which releases the log
//! below, so a member further behind can only get a snapshot). While
//! the follower is cut off the others take puts and two-shard
//! transactions, overwrite and delete keys and compact; once healed it
//! installs a snapshot in each group, and in the end holds exactly the
//! history the others hold. A reader on it meanwhile never sees a
//! revision that changes later. The follower that stayed connected
//! snapshots (and releases its log) as the leader does.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::test_cluster::TestCluster;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op,
};
use crate::store::content_hash::{hash_history, hash_kv};
use crate::store::write::WriteRequest;
use crate::test_support::{Prng, run_on_monoio as run};

fn put(key: String, value: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: Bytes::from(key),
            value: Bytes::from(value),
            ..Default::default()
        })),
    }
}

/// Writes through whichever member takes writes until one takes it;
/// returns the revision (0: nothing changed).
async fn write(cluster: &TestCluster, request: WriteRequest) -> i64 {
    for _ in 0..2000 {
        for member in &cluster.members {
            if !member.role.takes_writes() {
                continue;
            }
            let answer = monoio::time::timeout(
                Duration::from_millis(500),
                member.write_path.write(request.clone()),
            )
            .await;
            if let Ok(Ok(outcome)) = answer {
                return outcome.revision.unwrap_or(0);
            }
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no member took a write in 10 s");
}

#[test]
fn a_member_behind_the_released_log_catches_up_from_snapshots() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut random = Prng::from_env(
        "CATCH_UP_SEED",
        "a_member_behind_the_released_log_catches_up_from_snapshots",
    );
    run(async move {
        let cluster = TestCluster::start(&[1, 2, 3], 2, directory.path(), None, 40).await;
        cluster.run_network();
        let key = |index: u64| format!("key-{index}");
        for round in 0..20 {
            write(
                &cluster,
                WriteRequest::Put(PutRequest {
                    key: Bytes::from(key(round % 8)),
                    value: Bytes::from(format!("before-{round}")),
                    ..Default::default()
                }),
            )
            .await;
        }
        let lead = cluster
            .members
            .iter()
            .position(|member| member.role.takes_writes())
            .expect("a lead member");
        let behind = (lead + 1) % 3;
        let behind_id = cluster.members[behind].id;
        cluster.isolated.borrow_mut().insert(behind_id);

        // What the member behind serves must never change later. Compared
        // as the history the test's compaction leaves: the versions it
        // frees are stored or not depending on how far each member freed.
        // Each read is (revision, compaction point, hash).
        let compaction_point: Rc<std::cell::Cell<i64>> = Rc::default();
        let observed: Rc<RefCell<Vec<(i64, i64, u32)>>> = Rc::default();
        let reader = {
            let observed = observed.clone();
            let compaction_point = compaction_point.clone();
            let space = cluster.members[behind].space.clone();
            monoio::spawn(async move {
                while Rc::strong_count(&observed) > 1 {
                    monoio::time::sleep(Duration::from_millis(2)).await;
                    let at = space.clock().watermark();
                    let compacted = compaction_point.get();
                    let hash = hash_history(&space, at, compacted);
                    observed.borrow_mut().push((at, compacted, hash));
                }
            })
        };

        let mut compacted_at = 0;
        let mut newest = 0;
        for round in 0..400u64 {
            let request = match random.below(10) {
                0 => WriteRequest::DeleteRange(DeleteRangeRequest {
                    key: Bytes::from(key(random.below(30))),
                    ..Default::default()
                }),
                1..=4 => WriteRequest::Txn(TxnRequest {
                    success: (0..2)
                        .map(|slot| put(key(random.below(30)), format!("txn-{round}-{slot}")))
                        .collect(),
                    ..Default::default()
                }),
                _ => WriteRequest::Put(PutRequest {
                    key: Bytes::from(key(random.below(30))),
                    value: Bytes::from(format!("put-{round}")),
                    ..Default::default()
                }),
            };
            newest = newest.max(write(&cluster, request).await);
            if round == 300 {
                compacted_at = newest - 50;
                compaction_point.set(compacted_at);
                let lead_path = cluster
                    .members
                    .iter()
                    .find(|member| member.role.takes_writes())
                    .map(|member| member.write_path.clone())
                    .expect("a lead member");
                lead_path
                    .compact(compacted_at, false)
                    .await
                    .expect("compact");
            }
        }
        let behind_member = &cluster.members[behind];
        let stale = behind_member.space.clock().watermark();

        cluster.isolated.borrow_mut().clear();
        let target = write(
            &cluster,
            WriteRequest::Put(PutRequest {
                key: Bytes::from_static(b"healed"),
                value: Bytes::from_static(b"yes"),
                ..Default::default()
            }),
        )
        .await;
        let caught_up = monoio::time::timeout(
            Duration::from_secs(20),
            behind_member.space.clock().wait_applied(target),
        )
        .await;
        assert!(
            caught_up.is_ok(),
            "the member behind reads at {} and never reached {target}",
            behind_member.space.clock().watermark()
        );
        // The follower that stayed snapshots what it applied, releasing
        // its log as the leader does.
        let stayed_id = cluster.members[(lead + 2) % 3].id;
        for shard in 0..2 {
            let snapshots = |member: u64| {
                std::fs::read_dir(
                    directory
                        .path()
                        .join(format!("member-{member}"))
                        .join(format!("shard-{shard}")),
                )
                .expect("snapshot directory")
                .count()
            };
            assert!(
                snapshots(stayed_id) > 0,
                "a follower never snapshots shard {shard}"
            );
            let installed = std::fs::read_dir(
                directory
                    .path()
                    .join(format!("member-{behind_id}"))
                    .join(format!("shard-{shard}")),
            )
            .expect("snapshot directory")
            .count();
            assert!(installed > 0, "shard {shard} caught up without a snapshot");
        }
        // etcd's HashKV: what the history holds after the compaction (the
        // stored versions below it depend on how far each member freed).
        let hashes: Vec<u32> = cluster
            .members
            .iter()
            .map(|member| {
                hash_kv(&member.space, target, target)
                    .expect("hashable")
                    .hash
            })
            .collect();
        if hashes.iter().any(|hash| *hash != hashes[0]) {
            for shard in 0..2 {
                let listing = |index: usize| -> std::collections::BTreeSet<(Bytes, i64, Bytes)> {
                    cluster.members[index]
                        .space
                        .memtable(shard)
                        .versions()
                        .filter(|(_, revision, _)| *revision <= target && *revision > compacted_at)
                        .map(|(key, revision, version)| (key, revision, version.value))
                        .collect()
                };
                let (lead_versions, behind_versions) = (listing(lead), listing(behind));
                let missing: Vec<_> = lead_versions.difference(&behind_versions).take(5).collect();
                let extra: Vec<_> = behind_versions.difference(&lead_versions).take(5).collect();
                println!(
                    "shard {shard}: missing on the member behind {missing:?}; extra {extra:?}"
                );
            }
        }
        assert!(
            hashes.iter().all(|hash| *hash == hashes[0]),
            "members hold different histories after the catch-up: {hashes:?}"
        );
        assert!(
            behind_member.space.compacted_revision() >= compacted_at,
            "the compaction did not reach the member behind"
        );
        drop(reader);
        let reads = observed.borrow().clone();
        let lead_space = &cluster.members[lead].space;
        // Reads at or below the compaction point cannot be compared (the
        // lead member no longer holds that history); the member behind
        // reads no further than its stale revision until it is healed,
        // long after the point was chosen.
        for (at, compacted, hash) in &reads {
            if *at > compacted_at {
                assert_eq!(
                    hash_history(lead_space, *at, *compacted),
                    *hash,
                    "the member behind served revision {at} and it changed later"
                );
            }
        }
        println!(
            "caught up from revision {stale} to {target} through snapshots; {} reads checked",
            reads.len()
        );
    });
}
