//! Three shard workers as one Raft group, in one process: messages travel
//! through an in-memory router that can cut a member off. A client writes
//! through whichever member leads; the leader is isolated and healed
//! several times. Afterwards every member holds the same history
//! (revisions included), every acknowledged write, and no write that was
//! answered "leader changed".

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft::eraftpb::Message;

use super::ShardCommand;
use super::peers::PeerOutbox;
use super::raft_group::GroupConfig;
use super::test_worker::{self, Answer, write_command};
use crate::proto::etcdserverpb::PutRequest;
use crate::store::content_hash::hash_stored;
use crate::store::error::KvError;
use crate::store::key_space::KeySpace;
use crate::store::write::WriteRequest;
use crate::test_support::{Prng, run_on_monoio as run};
use crate::wal::MemoryDevice;

/// Messages between members, and who is cut off.
#[derive(Default)]
struct Router {
    queue: RefCell<Vec<Message>>,
    isolated: RefCell<BTreeSet<u64>>,
}

struct Outbox(Rc<Router>);

impl PeerOutbox for Outbox {
    fn send(&self, message: Message) {
        self.0.queue.borrow_mut().push(message);
    }
}

struct Member {
    sender: flume::Sender<ShardCommand>,
    space: Arc<KeySpace>,
}

/// What the client learned of one write.
#[derive(Debug)]
enum Fate {
    Acknowledged,
    /// Answered "leader changed": it must not be anywhere.
    Refused,
    /// No answer in time; the answer may still come (looked at once the
    /// group has settled).
    Late(Answer),
}

/// A put through `member`: its answer within 200 ms, or the way to a late
/// one (`Err(None)`: the worker is gone).
async fn put(
    member: &Member,
    key: &Bytes,
    value: &Bytes,
) -> Result<Result<(), KvError>, Option<Answer>> {
    let (command, answer) = write_command(WriteRequest::Put(PutRequest {
        key: key.clone(),
        value: value.clone(),
        ..Default::default()
    }));
    if member.sender.send_async(command).await.is_err() {
        return Err(None);
    }
    let mut answer = answer;
    match monoio::time::timeout(Duration::from_millis(200), &mut answer).await {
        Ok(Ok(result)) => Ok(result.map(|_| ())),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(answer)),
    }
}

#[test]
fn a_three_member_group_keeps_acknowledged_writes_across_leader_isolation() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut random = Prng::from_env(
        "WORKER_CLUSTER_SEED",
        "a_three_member_group_keeps_acknowledged_writes_across_leader_isolation",
    );
    run(async move {
        let router = Rc::new(Router::default());
        let voters = vec![1, 2, 3];
        let mut members = Vec::new();
        for id in 1..=3u64 {
            let config = GroupConfig {
                member_id: id,
                voters: voters.clone(),
                election_ticks: 10..20,
            };
            let device = MemoryDevice::new();
            let shard =
                test_worker::new_member_worker(&device, directory.path(), None, &config).await;
            let worker = shard.worker.with_peers(Box::new(Outbox(router.clone())));
            monoio::spawn(worker.run(shard.commands));
            members.push(Member {
                sender: shard.sender,
                space: shard.space,
            });
        }
        let senders: Vec<_> = members.iter().map(|m| m.sender.clone()).collect();
        // The network and the clock: deliver every millisecond, tick every
        // two, until the test ends (the senders close).
        let network = router.clone();
        monoio::spawn(async move {
            let mut step = 0u64;
            loop {
                monoio::time::sleep(Duration::from_millis(1)).await;
                step += 1;
                let messages = std::mem::take(&mut *network.queue.borrow_mut());
                for message in messages {
                    let cut_off = {
                        let isolated = network.isolated.borrow();
                        isolated.contains(&message.from) || isolated.contains(&message.to)
                    };
                    if cut_off {
                        continue;
                    }
                    let to = message.to as usize - 1;
                    if senders[to]
                        .send_async(ShardCommand::Peer(Box::new(message)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if step.is_multiple_of(2) {
                    for sender in &senders {
                        if sender.send_async(ShardCommand::Tick).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });

        let mut fates: BTreeMap<Bytes, (Bytes, Fate)> = BTreeMap::new();
        let mut isolations = 0;
        let mut leader_hint = 0usize;
        for round in 0..400u64 {
            // Now and then cut off whoever leads, or heal.
            match random.below(40) {
                0 => {
                    router.isolated.borrow_mut().insert(leader_hint as u64 + 1);
                    isolations += 1;
                }
                1..=3 => router.isolated.borrow_mut().clear(),
                _ => {}
            }
            let key = Bytes::from(format!("key-{}", random.below(50)));
            let value = Bytes::from(format!("value-{round}"));
            let mut fate = None;
            for attempt in 0..3 {
                let member = (leader_hint + attempt) % 3;
                match put(&members[member], &key, &value).await {
                    Ok(Ok(())) => {
                        fate = Some(Fate::Acknowledged);
                        leader_hint = member;
                        break;
                    }
                    Ok(Err(KvError::LeaderChanged)) => {
                        fate = Some(Fate::Refused);
                        break;
                    }
                    Ok(Err(KvError::NotLeader)) => continue,
                    Ok(Err(other)) => panic!("unexpected answer {other:?}"),
                    // No answer yet: the write may still happen.
                    Err(late) => {
                        fate = late.map(Fate::Late);
                        monoio::time::sleep(Duration::from_millis(20)).await;
                        break;
                    }
                }
            }
            match fate {
                Some(fate) => {
                    fates.insert(value.clone(), (key, fate));
                }
                // No member leads right now: give the election time.
                None => monoio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        router.isolated.borrow_mut().clear();
        // Settle: one more acknowledged write, then every member applies
        // through the same revision.
        let mut settled = false;
        for _ in 0..500 {
            let marker = Bytes::from_static(b"settled");
            for member in &members {
                if let Ok(Ok(())) = put(member, &marker, &marker).await {
                    settled = true;
                }
            }
            if settled {
                break;
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(settled, "no leader after healing");
        let target = members
            .iter()
            .map(|member| member.space.clock().current())
            .max()
            .unwrap_or(0);
        for member in &members {
            let reached = monoio::time::timeout(
                Duration::from_secs(10),
                member.space.clock().wait_applied(target),
            )
            .await;
            assert!(reached.is_ok(), "a member did not catch up to {target}");
        }

        // Late answers have come by now: every proposal's index applied.
        let mut late_answers = 0;
        for (_, fate) in fates.values_mut() {
            if let Fate::Late(answer) = fate {
                match answer.try_recv() {
                    Ok(Some(Ok(_))) => *fate = Fate::Acknowledged,
                    Ok(Some(Err(KvError::LeaderChanged))) => *fate = Fate::Refused,
                    Ok(Some(Err(other))) => panic!("unexpected late answer {other:?}"),
                    Ok(None) | Err(_) => continue,
                }
                late_answers += 1;
            }
        }
        let count =
            |wanted: fn(&Fate) -> bool| fates.values().filter(|(_, fate)| wanted(fate)).count();
        let acknowledged = count(|fate| matches!(fate, Fate::Acknowledged));
        assert!(
            acknowledged > 100,
            "only {acknowledged} writes acknowledged"
        );
        assert!(isolations > 0, "the leader was never cut off");
        let hashes: Vec<u32> = members
            .iter()
            .map(|member| hash_stored(&member.space, target))
            .collect();
        assert!(
            hashes.iter().all(|hash| *hash == hashes[0]),
            "members hold different histories: {hashes:?}"
        );
        // Every value ever stored, with its key, as member 1 holds them.
        let space = &members[0].space;
        let stored: BTreeSet<(Bytes, Bytes)> = (1..=target)
            .flat_map(|revision| {
                fates
                    .iter()
                    .filter_map(move |(value, (key, _))| {
                        space
                            .memtable(0)
                            .get(key, revision)
                            .filter(|kv| kv.mod_revision == revision && kv.value == *value)
                            .map(|_| (key.clone(), value.clone()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for (value, (key, fate)) in &fates {
            let present = stored.contains(&(key.clone(), value.clone()));
            match fate {
                Fate::Acknowledged => assert!(present, "acknowledged {value:?} is lost"),
                Fate::Refused => assert!(
                    !present,
                    "{value:?} was answered leader changed yet applied"
                ),
                Fate::Late(_) => {}
            }
        }
        println!(
            "{acknowledged} acknowledged ({late_answers} answered late), {} refused, {} unanswered, {isolations} isolations, revision {target}",
            count(|fate| matches!(fate, Fate::Refused)),
            count(|fate| matches!(fate, Fate::Late(_)))
        );
    });
}
