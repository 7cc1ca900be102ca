//! Three cluster members of two shards each, in one process
//! (`test_cluster`): every shard's three workers are one Raft group,
//! messages and forwarded calls travel through an in-memory network that
//! can cut a member off, and each member runs the lead member's duty
//! (`lead_member`). A client writes puts and two-shard transactions; the
//! lead member is isolated and healed several times, so leadership moves
//! and the new lead member voids what the old one left incomplete.
//! Afterwards every member holds the same history, every acknowledged
//! write at the revision it was acknowledged with, revisions acknowledged
//! in increasing order, and no write that was refused.
//!
//! The scenario runs twice: with writes sent to whichever member takes
//! them (the others refuse), and with writes sent to members that do not
//! take them, which forward them to the lead member (`forwarding`); a
//! forwarded write is readable on the member it was sent to once
//! acknowledged.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;

use super::test_cluster::{TestCluster, TestMember};
use crate::proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
use crate::store::content_hash::hash_stored;
use crate::store::error::KvError;
use crate::store::write::WriteRequest;
use crate::test_support::{Prng, run_on_monoio as run};

type Answer = oneshot::Receiver<Result<i64, KvError>>;

/// What the client learned of one write.
#[derive(Debug)]
enum Fate {
    /// At this revision.
    Acknowledged(i64),
    /// Answered "leader changed": it must not be anywhere.
    Refused,
    /// No answer in time; the answer may still come (looked at once the
    /// cluster has settled).
    Late(Answer),
    /// "request timed out": it may or may not have happened.
    TimedOut,
}

/// Starts a write through `member` as a task of its own (so a late answer
/// still arrives). Once acknowledged, the write is readable on `member`
/// (read-your-writes on the member written through).
fn start_write(member: &TestMember, request: WriteRequest) -> Answer {
    let (reply, answer) = oneshot::channel();
    let write_path = member.write_path.clone();
    let id = member.id;
    monoio::spawn(async move {
        let outcome = write_path.write(request).await;
        let revision = outcome.map(|outcome| outcome.revision.unwrap_or(0));
        if let Ok(revision) = revision {
            let readable = write_path.space().clock().watermark();
            assert!(
                readable >= revision,
                "revision {revision} acknowledged by member {id}, which reads at {readable}"
            );
        }
        let _ = reply.send(revision);
    });
    answer
}

/// A write's answer within 300 ms, or the way to a late one.
async fn settle_write(mut answer: Answer) -> Result<Result<i64, KvError>, Answer> {
    match monoio::time::timeout(Duration::from_millis(300), &mut answer).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(_)) => panic!("a write task ended without an answer"),
        Err(_) => Err(answer),
    }
}

/// A write through `member`: its answer within 300 ms, or the way to a
/// late one.
async fn write(member: &TestMember, request: WriteRequest) -> Result<Result<i64, KvError>, Answer> {
    settle_write(start_write(member, request)).await
}

fn put(key: &Bytes, value: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        })),
    }
}

#[test]
fn a_three_member_cluster_keeps_acknowledged_writes_across_failovers() {
    failover_scenario(
        "a_three_member_cluster_keeps_acknowledged_writes_across_failovers",
        false,
    );
}

#[test]
fn writes_forwarded_by_any_member_survive_failovers() {
    failover_scenario("writes_forwarded_by_any_member_survive_failovers", true);
}

/// The scenario of this file; `forwarding`: writes go to members that do
/// not take them (see the top).
fn failover_scenario(name: &str, forwarding: bool) {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut random = Prng::from_env("WORKER_CLUSTER_SEED", name);
    run(async move {
        let voters = [1, 2, 3];
        // Forwarded calls give up within a round (`settle_write`).
        let request_timeout = forwarding.then_some(Duration::from_millis(250));
        let cluster =
            TestCluster::start(&voters, 2, directory.path(), request_timeout, u64::MAX).await;
        let members = &cluster.members;
        cluster.run_network();

        // A reader on every member: what it saw at its watermark must be
        // what every member holds at that revision in the end (a read is
        // never undone by a failover).
        let observed: Rc<RefCell<Vec<(usize, i64, u32)>>> = Rc::default();
        let reader = {
            let observed = observed.clone();
            let spaces: Vec<_> = members.iter().map(|member| member.space.clone()).collect();
            monoio::spawn(async move {
                loop {
                    monoio::time::sleep(Duration::from_millis(3)).await;
                    for (index, space) in spaces.iter().enumerate() {
                        let at = space.clock().watermark();
                        observed
                            .borrow_mut()
                            .push((index, at, hash_stored(space, at)));
                    }
                    if Rc::strong_count(&observed) == 1 {
                        return;
                    }
                }
            })
        };
        let mut fates: BTreeMap<Bytes, (Vec<Bytes>, Fate)> = BTreeMap::new();
        let mut isolations = 0;
        let mut leader_hint = 0usize;
        // The highest revision acknowledged before this round's writes
        // were sent: each of them must come after it (real-time order).
        let mut acknowledged_before = 0i64;
        let mut linearizable_reads = 0;
        let stale_reads: Rc<RefCell<Vec<(i64, i64)>>> = Rc::default();
        let isolated_reads_timed_out: Rc<std::cell::Cell<u32>> = Rc::default();
        // Until 250 writes are acknowledged (a loaded machine takes more
        // rounds for them), at most 600 rounds.
        for round in 0..600u64 {
            let acknowledged = fates
                .values()
                .filter(|(_, fate)| matches!(fate, Fate::Acknowledged(_)))
                .count();
            if acknowledged >= 250 {
                break;
            }
            // Whoever takes writes now, as far as the client can tell.
            if let Some(lead) = members.iter().position(|member| member.role.takes_writes()) {
                leader_hint = lead;
            }
            // Every 15 rounds cut off whoever leads; now and then heal.
            if round % 15 == 7 {
                cluster
                    .isolated
                    .borrow_mut()
                    .insert(members[leader_hint].id);
                isolations += 1;
                // Cut off, it must not answer a linearizable read from
                // what it has, even while it still believes it leads: it
                // times out, or answers after the heal with all that was
                // acknowledged before the read began.
                let write_path = members[leader_hint].write_path.clone();
                let (floor, stale) = (acknowledged_before, stale_reads.clone());
                let timed_out = isolated_reads_timed_out.clone();
                monoio::spawn(async move {
                    match write_path.confirm_reads(Duration::from_millis(300)).await {
                        Ok(()) => {
                            let readable = write_path.space().clock().watermark();
                            if readable < floor {
                                stale.borrow_mut().push((readable, floor));
                            }
                        }
                        Err(KvError::RequestTimedOut) => timed_out.set(timed_out.get() + 1),
                        Err(other) => panic!("unexpected read answer {other:?}"),
                    }
                });
            } else if random.below(8) == 0 {
                cluster.isolated.borrow_mut().clear();
            }
            // A few writes at once, so several revisions are in flight
            // when the lead member is cut off.
            let mut writes = Vec::new();
            for slot in 0..1 + random.below(4) {
                let value = Bytes::from(format!("value-{round}-{slot}"));
                let keys: Vec<Bytes> = (0..1 + random.below(2))
                    .map(|_| Bytes::from(format!("key-{}", random.below(50))))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                writes.push((value, keys));
            }
            let mut pending: Vec<_> = writes.into_iter().map(|write| (write, None)).collect();
            let mut highest_now = acknowledged_before;
            // Forwarding: one attempt through a member that does not take
            // writes. Else up to three, one per member, until one takes it.
            let attempts = if forwarding { 1 } else { 3 };
            for attempt in 0..attempts {
                let member = if forwarding {
                    (leader_hint + 1 + random.below(2) as usize) % 3
                } else {
                    (leader_hint + attempt) % 3
                };
                let mut answers = Vec::new();
                for ((value, keys), fate) in pending.iter_mut() {
                    if fate.is_some() {
                        continue;
                    }
                    let request = WriteRequest::Txn(TxnRequest {
                        success: keys.iter().map(|key| put(key, value)).collect(),
                        ..Default::default()
                    });
                    answers.push((fate, start_write(&members[member], request)));
                }
                if answers.is_empty() {
                    break;
                }
                for (fate, answer) in answers {
                    match settle_write(answer).await {
                        Ok(Ok(revision)) => {
                            assert!(
                                revision > acknowledged_before,
                                "revision {revision} acknowledged after {acknowledged_before}"
                            );
                            highest_now = highest_now.max(revision);
                            *fate = Some(Fate::Acknowledged(revision));
                        }
                        Ok(Err(KvError::LeaderChanged)) => *fate = Some(Fate::Refused),
                        Ok(Err(KvError::RequestTimedOut)) if forwarding => {
                            *fate = Some(Fate::TimedOut)
                        }
                        Ok(Err(KvError::NotLeader)) if !forwarding => {}
                        Ok(Err(other)) => panic!("unexpected answer {other:?}"),
                        // No answer yet: the write may still happen.
                        Err(late) => *fate = Some(Fate::Late(late)),
                    }
                }
            }
            acknowledged_before = highest_now;
            // A linearizable read on any member that can reach a quorum
            // sees every write acknowledged before it began.
            let reader = &members[random.below(3) as usize];
            if reader
                .write_path
                .confirm_reads(Duration::from_millis(300))
                .await
                .is_ok()
            {
                let readable = reader.space.clock().watermark();
                assert!(
                    readable >= acknowledged_before,
                    "a linearizable read at {readable} missed revision {acknowledged_before}"
                );
                linearizable_reads += 1;
            }
            let mut unanswered = false;
            for ((value, keys), fate) in pending {
                match fate {
                    Some(fate) => {
                        fates.insert(value, (keys, fate));
                    }
                    None => unanswered = true,
                }
            }
            if unanswered {
                // No member takes writes right now: give the election time.
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        cluster.isolated.borrow_mut().clear();
        // Settle: one more acknowledged write, then every member reads
        // through its revision.
        let mut target = None;
        for _ in 0..500 {
            let marker = Bytes::from_static(b"settled");
            for member in members {
                if let Ok(Ok(revision)) = write(
                    member,
                    WriteRequest::Txn(TxnRequest {
                        success: vec![put(&marker, &marker)],
                        ..Default::default()
                    }),
                )
                .await
                {
                    target = Some(revision);
                    break;
                }
            }
            if target.is_some() {
                break;
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let target = target.expect("no lead member after healing");
        for member in members {
            let reached = monoio::time::timeout(
                Duration::from_secs(10),
                member.space.clock().wait_applied(target),
            )
            .await;
            assert!(reached.is_ok(), "a member did not catch up to {target}");
        }

        // Late answers have come by now.
        let mut late_answers = 0;
        for (_, fate) in fates.values_mut() {
            if let Fate::Late(answer) = fate {
                match answer.try_recv() {
                    Ok(Some(Ok(revision))) => *fate = Fate::Acknowledged(revision),
                    Ok(Some(Err(KvError::LeaderChanged))) => *fate = Fate::Refused,
                    Ok(Some(Err(KvError::RequestTimedOut))) if forwarding => *fate = Fate::TimedOut,
                    Ok(Some(Err(other))) => panic!("unexpected late answer {other:?}"),
                    Ok(None) | Err(_) => continue,
                }
                late_answers += 1;
            }
        }
        let count =
            |wanted: fn(&Fate) -> bool| fates.values().filter(|(_, fate)| wanted(fate)).count();
        let acknowledged = count(|fate| matches!(fate, Fate::Acknowledged(_)));
        assert!(acknowledged > 50, "only {acknowledged} writes acknowledged");
        assert!(isolations > 0, "the leader was never cut off");
        assert!(
            linearizable_reads > 20,
            "only {linearizable_reads} linearizable reads confirmed"
        );
        assert!(
            stale_reads.borrow().is_empty(),
            "cut-off members answered stale linearizable reads (read at, acknowledged before): {:?}",
            stale_reads.borrow()
        );
        assert!(
            isolated_reads_timed_out.get() > 0,
            "no cut-off member was ever asked a read it could not answer"
        );
        let hashes: Vec<u32> = members
            .iter()
            .map(|member| hash_stored(&member.space, target))
            .collect();
        assert!(
            hashes.iter().all(|hash| *hash == hashes[0]),
            "members hold different histories: {hashes:?}"
        );
        drop(reader);
        let reads = observed.borrow().clone();
        for (member, at, hash) in &reads {
            assert_eq!(
                hash_stored(&members[0].space, *at),
                *hash,
                "member {} read revision {at} and it changed later",
                member + 1
            );
        }
        // Every (key, value, revision) stored, as member 1 holds them.
        let space = &members[0].space;
        let mut stored: BTreeMap<(Bytes, Bytes), i64> = BTreeMap::new();
        for shard in space.shard_map().all_shards() {
            for (key, revision, version) in space.memtable(shard).versions() {
                if revision <= target {
                    stored.insert((key, version.value.clone()), revision);
                }
            }
        }
        for (value, (keys, fate)) in &fates {
            for key in keys {
                let at = stored.get(&(key.clone(), value.clone()));
                match fate {
                    Fate::Acknowledged(revision) => assert_eq!(
                        at,
                        Some(revision),
                        "acknowledged {value:?} of {key:?} is not at its revision"
                    ),
                    Fate::Refused => assert!(at.is_none(), "{value:?} was refused yet applied"),
                    Fate::Late(_) | Fate::TimedOut => {}
                }
            }
        }
        println!(
            "{acknowledged} acknowledged ({late_answers} answered late), {} refused, {} timed out, {} unanswered, {isolations} isolations, {linearizable_reads} linearizable reads, revision {target}",
            count(|fate| matches!(fate, Fate::Refused)),
            count(|fate| matches!(fate, Fate::TimedOut)),
            count(|fate| matches!(fate, Fate::Late(_)))
        );
    });
}
