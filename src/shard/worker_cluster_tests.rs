//! Three cluster members of two shards each, in one process: every
//! shard's three workers are one Raft group, messages travel through an
//! in-memory router that can cut a member off, and each member runs the
//! lead member's duty (`lead_member`). A client writes puts and two-shard
//! transactions through whichever member takes writes; the lead member is
//! isolated and healed several times, so leadership moves and the new lead
//! member voids what the old one left incomplete. Afterwards every member
//! holds the same history, every acknowledged write at the revision it was
//! acknowledged with, revisions acknowledged in increasing order, and no
//! write that was refused.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use raft::eraftpb::Message;

use super::ShardCommand;
use super::peers::PeerOutbox;
use super::test_worker::{TestMember, start_test_member};
use crate::proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
use crate::store::content_hash::hash_stored;
use crate::store::error::KvError;
use crate::store::write::WriteRequest;
use crate::test_support::{Prng, run_on_monoio as run};

/// Messages between members (with their group), and who is cut off.
#[derive(Default)]
struct Router {
    queue: RefCell<Vec<(usize, Message)>>,
    isolated: RefCell<BTreeSet<u64>>,
}

struct Outbox {
    router: Rc<Router>,
    shard: usize,
}

impl PeerOutbox for Outbox {
    fn send(&self, message: Message) {
        self.router.queue.borrow_mut().push((self.shard, message));
    }
}

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
}

/// Starts a write through `member` as a task of its own (so a late answer
/// still arrives).
fn start_write(member: &TestMember, request: WriteRequest) -> Answer {
    let (reply, answer) = oneshot::channel();
    let write_path = member.write_path.clone();
    monoio::spawn(async move {
        let outcome = write_path.write(request).await;
        let _ = reply.send(outcome.map(|outcome| outcome.revision.unwrap_or(0)));
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
    let directory = tempfile::tempdir().expect("temp dir");
    let mut random = Prng::from_env(
        "WORKER_CLUSTER_SEED",
        "a_three_member_cluster_keeps_acknowledged_writes_across_failovers",
    );
    run(async move {
        let router = Rc::new(Router::default());
        let voters = [1, 2, 3];
        let mut members = Vec::new();
        for id in voters {
            let router = router.clone();
            members.push(
                start_test_member(id, &voters, 2, directory.path(), move |shard| {
                    Box::new(Outbox {
                        router: router.clone(),
                        shard,
                    })
                })
                .await,
            );
        }
        let senders: Vec<_> = members.iter().map(|m| m.senders.clone()).collect();
        // The network and the clock: deliver every millisecond, tick every
        // two, until the test ends (the senders close).
        let network = router.clone();
        monoio::spawn(async move {
            let mut step = 0u64;
            loop {
                monoio::time::sleep(Duration::from_millis(1)).await;
                step += 1;
                let messages = std::mem::take(&mut *network.queue.borrow_mut());
                for (shard, message) in messages {
                    let cut_off = {
                        let isolated = network.isolated.borrow();
                        isolated.contains(&message.from) || isolated.contains(&message.to)
                    };
                    if cut_off {
                        continue;
                    }
                    let to = message.to as usize - 1;
                    let peer = ShardCommand::Peer(Box::new(message));
                    if senders[to][shard].send_async(peer).await.is_err() {
                        return;
                    }
                }
                if step.is_multiple_of(2) {
                    for shard in senders.iter().flat_map(|member| member.iter()) {
                        if shard.send_async(ShardCommand::Tick).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });

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
            // Every 15 rounds cut off whoever leads; now and then heal.
            if round % 15 == 7 {
                router.isolated.borrow_mut().insert(leader_hint as u64 + 1);
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
                router.isolated.borrow_mut().clear();
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
            for attempt in 0..3 {
                let member = (leader_hint + attempt) % 3;
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
                            leader_hint = member;
                        }
                        Ok(Err(KvError::LeaderChanged)) => *fate = Some(Fate::Refused),
                        Ok(Err(KvError::NotLeader)) => {}
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
        router.isolated.borrow_mut().clear();
        // Settle: one more acknowledged write, then every member reads
        // through its revision.
        let mut target = None;
        for _ in 0..500 {
            let marker = Bytes::from_static(b"settled");
            for member in &members {
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
        for member in &members {
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
                    Fate::Late(_) => {}
                }
            }
        }
        println!(
            "{acknowledged} acknowledged ({late_answers} answered late), {} refused, {} unanswered, {isolations} isolations, {linearizable_reads} linearizable reads, revision {target}",
            count(|fate| matches!(fate, Fate::Refused)),
            count(|fate| matches!(fate, Fate::Late(_)))
        );
    });
}
