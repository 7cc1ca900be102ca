//! One shard's Raft group with several members, each on its own storage
//! twin, over an in-memory network twin that delays, reorders, drops and
//! duplicates messages, partitions members and crashes and restarts them
//! (their WAL reverts to what was durable). Seeded and deterministic: the
//! seed is printed, and elections are made deterministic by giving each
//! member an election timeout range of one value.
//!
//! Checked at every step: no two members ever apply different entries at
//! one index (Raft's state machine safety, through our WAL and recovery).
//! Checked at the end, after healing everything: every entry its proposer
//! applied (what a leader acknowledges) is applied on every member, and all
//! members applied the same log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use raft::eraftpb::{EntryType, Message};

use super::frontier::DurableFrontier;
use super::log_entry::{ShardCommandRecord, encode};
use super::log_storage::ShardLogStorage;
use super::raft_group::{GroupConfig, LogStats, RaftGroup, log_mirror};
use super::recovery::read_shard_log;
use super::test_worker::OPTIONS;
use crate::store::memtable::Version;
use crate::test_support::{Prng, run_on_monoio as run};
use crate::wal::MemoryDevice;

/// How hostile the network and the machines are in a phase of the run.
#[derive(Clone, Copy, PartialEq)]
enum Weather {
    Stormy,
    Calm,
}

struct Member {
    id: u64,
    device: MemoryDevice,
    /// `None` while the member is down.
    group: Option<RaftGroup<MemoryDevice>>,
    /// What this member applied, in order: `(index, data)`.
    applied: Vec<(u64, Bytes)>,
    /// Payloads this member proposed (as leader), to tell which of its
    /// applied entries it would have acknowledged.
    proposed: BTreeSet<Bytes>,
}

impl Member {
    fn config(&self, voters: &[u64]) -> GroupConfig {
        // One value per member: deterministic, yet staggered so that
        // elections resolve.
        let ticks = 10 + 3 * self.id as usize;
        GroupConfig {
            member_id: self.id,
            voters: voters.to_vec(),
            election_ticks: ticks..ticks + 1,
            pre_vote: true,
        }
    }

    /// Starts (or restarts) the member from what its device holds; what it
    /// applied is what its log says was committed.
    async fn start(&mut self, voters: &[u64]) {
        let config = self.config(voters);
        let log = read_shard_log(0, self.device.clone(), 0)
            .await
            .expect("a member's log reads back");
        let mirror = log_mirror(
            None,
            &log.entries,
            log.hard_state.clone(),
            &config,
            config.conf_state(),
        )
        .expect("mirror");
        let committed = raft::Storage::initial_state(&mirror)
            .expect("state")
            .hard_state
            .commit;
        self.applied = log
            .entries
            .iter()
            .filter(|entry| entry.index <= committed)
            .map(|entry| (entry.index, entry.data.clone()))
            .collect();
        let entry_records = log.entry_records();
        let wal = log.reading.resume(OPTIONS).await.expect("resume");
        let frontier = Arc::new(DurableFrontier::new([(wal.log_id(), 0)]));
        let storage = ShardLogStorage::new(mirror, std::env::temp_dir());
        let group = RaftGroup::start(
            storage,
            wal,
            entry_records,
            (0, frontier),
            Arc::new(LogStats::default()),
            &config,
        )
        .await
        .expect("start");
        self.group = Some(group);
    }

    fn crash(&mut self) {
        self.group = None;
        self.device.crash();
    }
}

/// Messages on their way, each with the step it arrives at.
#[derive(Default)]
struct Network {
    in_flight: Vec<(u64, Message)>,
    /// Members cut off from every other member.
    isolated: BTreeSet<u64>,
}

impl Network {
    fn send(&mut self, now: u64, message: Message, weather: Weather, random: &mut Prng) {
        if weather == Weather::Stormy {
            if random.below(20) == 0 {
                return;
            }
            if random.below(50) == 0 {
                self.in_flight
                    .push((now + 1 + random.below(3), message.clone()));
            }
        }
        let delay = match weather {
            Weather::Stormy => 1 + random.below(3),
            Weather::Calm => 1,
        };
        self.in_flight.push((now + delay, message));
    }

    /// Takes the messages due at `now`, in a random order.
    fn due(&mut self, now: u64, random: &mut Prng) -> Vec<Message> {
        let (mut due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.in_flight = later;
        for index in (1..due.len()).rev() {
            due.swap(index, random.below(index as u64 + 1) as usize);
        }
        due.into_iter()
            .map(|(_, message)| message)
            .filter(|message| {
                !self.isolated.contains(&message.from) && !self.isolated.contains(&message.to)
            })
            .collect()
    }
}

struct Cluster {
    members: Vec<Member>,
    voters: Vec<u64>,
    network: Network,
    now: u64,
    next_payload: u64,
    /// Every index any member applied, with what it applied there.
    applied_anywhere: BTreeMap<u64, Bytes>,
    /// Crashes and distinct leader terms seen, so a run shows it tested
    /// something.
    crashes: u64,
    terms_led: BTreeSet<u64>,
}

impl Cluster {
    async fn new(size: u64) -> Cluster {
        let voters: Vec<u64> = (1..=size).collect();
        let mut members = Vec::new();
        for id in 1..=size {
            let mut member = Member {
                id,
                device: MemoryDevice::new(),
                group: None,
                applied: Vec::new(),
                proposed: BTreeSet::new(),
            };
            member.start(&voters).await;
            members.push(member);
        }
        Cluster {
            members,
            voters,
            network: Network::default(),
            now: 0,
            next_payload: 0,
            applied_anywhere: BTreeMap::new(),
            crashes: 0,
            terms_led: BTreeSet::new(),
        }
    }

    /// One step of logical time: deliveries, ticks, a proposal, every
    /// member's Ready.
    async fn step(&mut self, weather: Weather, random: &mut Prng) {
        self.now += 1;
        for message in self.network.due(self.now, random) {
            let to = message.to;
            if let Some(group) = self.members[to as usize - 1].group.as_mut() {
                // A message Raft refuses changes nothing.
                let _ = group.step(message);
            }
        }
        for member in &mut self.members {
            if let Some(group) = member.group.as_mut() {
                group.tick();
            }
        }
        if random.below(2) == 0 {
            self.propose();
        }
        for position in 0..self.members.len() {
            self.handle_ready(position, weather, random).await;
        }
    }

    fn propose(&mut self) {
        // A real shard command: a restarted member's recovery decodes it.
        let key = Bytes::from(format!("write-{}", self.next_payload));
        let version = Version {
            value: Bytes::from_static(b"v"),
            create_revision: self.next_payload as i64 + 1,
            version: 1,
            lease: 0,
            sub_revision: 0,
        };
        let command = ShardCommandRecord::for_changes(
            self.next_payload as i64 + 1,
            Vec::new(),
            [(&key, &version)],
            None,
        );
        let payload = Bytes::from(encode(&command));
        for member in &mut self.members {
            let Some(group) = member.group.as_mut() else {
                continue;
            };
            if group.is_leader() {
                self.terms_led.insert(group.term());
            }
            if group.is_leader() && group.propose(payload.to_vec()).is_ok() {
                member.proposed.insert(payload);
                self.next_payload += 1;
                return;
            }
        }
    }

    async fn handle_ready(&mut self, position: usize, weather: Weather, random: &mut Prng) {
        let member = &mut self.members[position];
        let Some(group) = member.group.as_mut() else {
            return;
        };
        let persisted = group.persist().await.expect("persist");
        for message in persisted.messages {
            self.network.send(self.now, message, weather, random);
        }
        for entry in &persisted.committed {
            if entry.entry_type != EntryType::EntryNormal {
                continue;
            }
            if let Some((last, _)) = member.applied.last() {
                assert_eq!(
                    entry.index,
                    last + 1,
                    "member {} applied out of order",
                    member.id
                );
            }
            member.applied.push((entry.index, entry.data.clone()));
            let agreed = self
                .applied_anywhere
                .entry(entry.index)
                .or_insert_with(|| entry.data.clone());
            assert_eq!(
                *agreed, entry.data,
                "member {} applied a different entry at index {}",
                member.id, entry.index
            );
        }
        if let Some(last) = persisted.committed.last() {
            group.applied_through(last.index);
        }
    }

    /// Crashes, restarts, partitions and heals, a little at a time.
    async fn weather(&mut self, random: &mut Prng) {
        let down = self.members.iter().filter(|m| m.group.is_none()).count();
        let roll = random.below(400);
        let member = random.below(self.members.len() as u64) as usize;
        match roll {
            // Keep a majority up most of the time, so there is progress
            // to be safe about.
            0..=3 if down < self.members.len().div_ceil(2) - 1 => {
                self.members[member].crash();
                self.crashes += 1;
            }
            4..=11 if self.members[member].group.is_none() => {
                self.restart(member).await;
            }
            12..=14 => {
                self.network.isolated.insert(self.members[member].id);
            }
            15..=18 => self.network.isolated.clear(),
            _ => {}
        }
    }

    async fn heal(&mut self) {
        self.network.isolated.clear();
        for position in 0..self.members.len() {
            if self.members[position].group.is_none() {
                self.restart(position).await;
            }
        }
    }

    /// Restarts a member from its device; what its log says was committed
    /// counts as applied, and must agree with every other member too.
    async fn restart(&mut self, position: usize) {
        let member = &mut self.members[position];
        member.start(&self.voters).await;
        for (index, data) in &member.applied {
            let agreed = self
                .applied_anywhere
                .entry(*index)
                .or_insert_with(|| data.clone());
            assert_eq!(
                agreed, data,
                "member {} recovered a different entry at index {index} as committed",
                member.id
            );
        }
    }

    /// Whether every member applied the same log, through the last entry
    /// some member applied.
    fn converged(&self) -> bool {
        let longest = self.applied_anywhere.keys().last().copied().unwrap_or(0);
        self.members
            .iter()
            .all(|member| member.applied.last().map_or(0, |(index, _)| *index) == longest)
    }
}

fn run_seed(seed: u64, size: u64, steps: u64) {
    run_with(Prng::seeded(seed), &seed.to_string(), size, steps);
}

/// One run; `seed` names it in every failure.
fn run_with(mut random: Prng, seed: &str, size: u64, steps: u64) {
    run(async {
        let mut cluster = Cluster::new(size).await;
        for _ in 0..steps {
            cluster.step(Weather::Stormy, &mut random).await;
            cluster.weather(&mut random).await;
        }
        cluster.heal().await;
        // Calm until every member caught up, with proposals still coming
        // so that entries of earlier terms get committed.
        let mut calm_steps = 0;
        while !(cluster.converged() && calm_steps > 100) {
            cluster.step(Weather::Calm, &mut random).await;
            calm_steps += 1;
            assert!(
                calm_steps < 5_000,
                "seed {seed}: no convergence after healing"
            );
        }
        let acknowledged: BTreeSet<Bytes> = cluster
            .members
            .iter()
            .flat_map(|member| {
                member
                    .applied
                    .iter()
                    .filter(|(_, data)| member.proposed.contains(data))
                    .map(|(_, data)| data.clone())
            })
            .collect();
        assert!(
            cluster.crashes > 0 && cluster.terms_led.len() > 2,
            "seed {seed}: {} crashes, {} terms with a leader: the weather did nothing",
            cluster.crashes,
            cluster.terms_led.len()
        );
        assert!(
            acknowledged.len() as u64 > steps / 20,
            "seed {seed}: only {} writes acknowledged in {steps} steps; the twin is too hostile to test anything",
            acknowledged.len()
        );
        let first = &cluster.members[0].applied;
        for member in &cluster.members {
            assert_eq!(
                &member.applied, first,
                "seed {seed}: members {} and 1 applied different logs",
                member.id
            );
            let holds: BTreeSet<&Bytes> = member.applied.iter().map(|(_, data)| data).collect();
            for write in &acknowledged {
                assert!(
                    holds.contains(write),
                    "seed {seed}: member {} lost acknowledged {write:?}",
                    member.id
                );
            }
        }
        println!(
            "seed {seed}: {size} members, {steps} stormy steps, {} crashes, {} terms with a leader, {} acknowledged writes, log of {}",
            cluster.crashes,
            cluster.terms_led.len(),
            acknowledged.len(),
            first.len()
        );
    });
}

#[test]
fn three_members_agree_and_keep_acknowledged_writes_through_faults() {
    for seed in [1, 2, 3] {
        run_seed(seed, 3, 3_000);
    }
}

#[test]
fn five_members_agree_and_keep_acknowledged_writes_through_faults() {
    run_seed(11, 5, 3_000);
}

#[test]
fn a_random_seed_agrees_too() {
    let random = Prng::from_env("GROUP_TWIN_SEED", "a_random_seed_agrees_too");
    run_with(random, "from GROUP_TWIN_SEED (printed above)", 3, 2_000);
}
