//! The transport over real loopback sockets: handshakes refuse other
//! clusters and strangers, and three shard workers form one Raft group
//! whose writes reach every member.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpListener;

use super::frame::HelloAnswer;
use super::join::{ClusterDescription, JOIN_QUESTION};
use super::queues::PeerQueueTable;
use super::transport::{
    Acceptance, PEER_QUEUE_CAPACITY, PeerError, PeerIdentity, PeerInbox, PeerRoutes, dial,
    send_to_peer, serve_peers,
};
use crate::membership::configurations::test_member;
use crate::proto::etcdserverpb::PutRequest;
use crate::shard::ShardCommand;
use crate::shard::forwarding::{CallQueues, ForwardTable};
use crate::shard::raft_group::GroupConfig;
use crate::shard::test_worker::{self, write_command};
use crate::store::error::KvError;
use crate::store::write::{LATEST, WriteRequest};
use crate::test_support::run_on_monoio as run;
use crate::wal::MemoryDevice;

const CLUSTER: u64 = 0x5eed;

/// What a member of one shard receives into (nobody forwards calls here).
/// Members `members` of a cluster bootstrapped with them, one shard.
fn acceptance(members: &[u64]) -> Rc<Acceptance> {
    let records: Vec<_> = members.iter().map(|id| test_member(*id, false)).collect();
    Rc::new(Acceptance {
        configurations: std::sync::Arc::new(crate::membership::Configurations::in_memory(
            1, &records,
        )),
        initial_members: records,
        shard_count: 1,
    })
}

fn inbox(shard: flume::Sender<ShardCommand>) -> PeerInbox {
    PeerInbox {
        shards: Rc::from(vec![shard]),
        calls: CallQueues::new(vec![flume::bounded(1).0]),
        waiting: ForwardTable::new(),
        directory: Default::default(),
    }
}

/// Member 1's peer listener on a free port (its one shard's commands
/// are dropped): where it listens.
fn serve_member_one(acceptance: Rc<Acceptance>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let (shard, _) = flume::bounded(8);
    let identity = PeerIdentity {
        cluster_id: CLUSTER,
        member_id: 1,
    };
    monoio::spawn(serve_peers(listener, identity, acceptance, inbox(shard)));
    address
}

#[test]
fn handshakes_refuse_other_clusters_and_strangers() {
    run(async {
        let address = serve_member_one(acceptance(&[1, 2, 3]));
        let from = |cluster_id, member_id| PeerIdentity {
            cluster_id,
            member_id,
        };
        assert!(dial(from(CLUSTER, 2), 1, address).await.is_ok());
        let refused = |result: Result<_, PeerError>| match result {
            Err(PeerError::Refused(answer)) => Some(answer),
            _ => None,
        };
        assert_eq!(
            refused(dial(from(CLUSTER + 1, 2), 1, address).await),
            Some(HelloAnswer::OtherCluster)
        );
        assert_eq!(
            refused(dial(from(CLUSTER, 2), 3, address).await),
            Some(HelloAnswer::NotThisMember)
        );
        assert_eq!(
            refused(dial(from(CLUSTER, 9), 1, address).await),
            Some(HelloAnswer::UnknownMember)
        );
    });
}

#[test]
fn a_member_joining_is_told_the_cluster_and_then_accepted() {
    use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRentExt};
    run(async {
        let acceptance = acceptance(&[1, 2]);
        let address = serve_member_one(acceptance.clone());
        let joining = PeerIdentity {
            cluster_id: CLUSTER,
            member_id: 9,
        };
        assert!(
            matches!(
                dial(joining, 1, address).await,
                Err(PeerError::Refused(HelloAnswer::UnknownMember))
            ),
            "not a member yet"
        );
        let mut stream = monoio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let mut question = Vec::new();
        JOIN_QUESTION.encode(&mut question);
        let (written, _) = stream.write_all(question).await;
        written.expect("ask");
        let mut answer = Vec::new();
        loop {
            let (read, chunk) = stream.read(vec![0u8; 4096]).await;
            let read = read.expect("read");
            assert!(read > 0, "closed before the whole description");
            answer.extend_from_slice(&chunk[..read]);
            if let Some(description) = ClusterDescription::decode(&answer[1..]).expect("valid") {
                assert_eq!(answer[0], HelloAnswer::Accepted as u8);
                assert_eq!(description.cluster_id, CLUSTER);
                assert_eq!(description.members.len(), 2);
                assert_eq!(description.initial_members, description.members);
                break;
            }
        }
        // Once the member list holds it, the new member's connection is
        // accepted: the list is read at each handshake.
        let mut members = acceptance.configurations.members();
        members.push(test_member(9, true));
        acceptance
            .configurations
            .record(
                0,
                5,
                &raft::eraftpb::ConfState::from((vec![1, 2], vec![9])),
                Some(members),
            )
            .expect("record");
        assert!(dial(joining, 1, address).await.is_ok());
        let _ = stream.read_exact(vec![0u8; 1]).await;
    });
}

#[test]
fn three_workers_replicate_writes_over_loopback_tcp() {
    let directory = tempfile::tempdir().expect("temp dir");
    run(async {
        let members = [1u64, 2, 3];
        let mut listeners = BTreeMap::new();
        for id in members {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listeners.insert(id, listener);
        }
        let addresses: BTreeMap<u64, _> = listeners
            .iter()
            .map(|(id, listener)| (*id, listener.local_addr().expect("address")))
            .collect();
        let dropped = Rc::new(Cell::new(0));
        let mut senders = Vec::new();
        let mut spaces = Vec::new();
        for id in members {
            let identity = PeerIdentity {
                cluster_id: CLUSTER,
                member_id: id,
            };
            let mut queues = BTreeMap::new();
            let mut receivers = Vec::new();
            for peer in members.iter().copied().filter(|peer| *peer != id) {
                let (queue, outgoing) = flume::bounded(PEER_QUEUE_CAPACITY);
                queues.insert(peer, queue);
                receivers.push((peer, outgoing));
            }
            let table = PeerQueueTable::new(queues);
            for (peer, outgoing) in receivers {
                monoio::spawn(send_to_peer(
                    identity,
                    (peer, addresses[&peer]),
                    outgoing,
                    table.clone(),
                    Rc::from(Vec::new()),
                    Rc::default(),
                ));
            }
            let config = GroupConfig {
                member_id: id,
                voters: members.to_vec(),
                election_ticks: 10..20,
                pre_vote: true,
            };
            let shard = test_worker::new_member_worker(
                &MemoryDevice::new(),
                directory.path(),
                None,
                &config,
            )
            .await;
            let worker = shard.worker.with_peers(Box::new(PeerRoutes {
                shard: 0,
                queues: table.view(),
                dropped: dropped.clone(),
            }));
            monoio::spawn(worker.run(shard.commands));
            let listener = listeners.remove(&id).expect("listener");
            monoio::spawn(serve_peers(
                listener,
                identity,
                acceptance(&members),
                inbox(shard.sender.clone()),
            ));
            senders.push(shard.sender);
            spaces.push(shard.space);
        }
        let tickers = senders.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(Duration::from_millis(2)).await;
                for ticker in &tickers {
                    if ticker.send_async(ShardCommand::Tick).await.is_err() {
                        return;
                    }
                }
            }
        });

        let started = Instant::now();
        let mut written = 0;
        while written < 100 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "only {written} writes in 20 s"
            );
            let key = Bytes::from(format!("key-{written}"));
            let mut acknowledged = false;
            for sender in &senders {
                let (command, answer) = write_command(WriteRequest::Put(PutRequest {
                    key: key.clone(),
                    value: key.clone(),
                    ..Default::default()
                }));
                sender.send_async(command).await.expect("worker runs");
                match answer.await.expect("answered") {
                    Ok(_) => {
                        acknowledged = true;
                        break;
                    }
                    Err(KvError::NotLeader) => {}
                    Err(other) => panic!("unexpected answer {other:?}"),
                }
            }
            if acknowledged {
                written += 1;
            } else {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let target = spaces
            .iter()
            .map(|space| space.clock().current())
            .max()
            .unwrap_or(0);
        for space in &spaces {
            let reached =
                monoio::time::timeout(Duration::from_secs(10), space.clock().wait_applied(target))
                    .await;
            assert!(reached.is_ok(), "a member did not apply through {target}");
            for index in 0..100 {
                let key = format!("key-{index}");
                let found = space.memtable(0).get(key.as_bytes(), LATEST);
                assert_eq!(
                    found.map(|kv| kv.value),
                    Some(Bytes::from(key.clone())),
                    "{key} missing on a member"
                );
            }
        }
        println!(
            "100 writes replicated to 3 members in {:?}; {} messages dropped",
            started.elapsed(),
            dropped.get()
        );
    });
}
