//! Deterministic fault tests of node recovery over the storage-device
//! twin: several shards' Raft groups write real frames (with the durable
//! frontier) to `MemoryDevice`s, then one bit is flipped at every byte of
//! a shard's last frame and the node's startup decision is checked.
//!
//! The rule under test (`shard::durable_loss`): a damaged frame that
//! another shard's log proves durable must refuse the start, naming shard,
//! file and offset; a damaged frame no other log names (the last write in
//! flight anywhere) is a torn write: it is dropped, its revisions are
//! voided on every shard (multi-shard writes stay atomic), and everything
//! else survives.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::durable_loss::{self, LossProof};
use super::frontier::DurableFrontier;
use super::log_entry::{ShardCommandRecord, WalRecord, encode, wal_record};
use super::raft_group::{GroupConfig, RaftGroup};
use super::recovery::{RecoveryPlan, ShardInventory, read_shard_log};
use crate::store::memtable::Version;
use crate::test_support::{Prng, run_on_monoio as run};
use crate::wal::format::{
    FIRST_FRAME_OFFSET, FRAME_HEADER_LEN, decode_frame_header, decode_records, segment_file_name,
};
use crate::wal::{LogEnd, MemoryDevice, Wal, WalOptions};

const OPTIONS: WalOptions = WalOptions {
    segment_bytes: 1 << 20,
};
const INITIAL_REVISION: i64 = 1;

/// What the node wrote, for checking a recovery against.
#[derive(Default)]
struct History {
    /// Each revision's participant shards.
    revisions: BTreeMap<i64, BTreeSet<u32>>,
    /// Per shard, when its last sync happened (a global sync counter).
    last_sync: BTreeMap<u32, u64>,
}

/// A node of `shards` Raft groups on memory devices.
struct TwinNode {
    devices: Vec<MemoryDevice>,
    groups: Vec<RaftGroup<MemoryDevice>>,
    next_revision: i64,
    syncs: u64,
    history: History,
}

impl TwinNode {
    async fn start(shards: usize) -> TwinNode {
        let devices: Vec<MemoryDevice> = (0..shards).map(|_| MemoryDevice::new()).collect();
        let mut wals = Vec::new();
        for device in &devices {
            let (wal, _) = Wal::open(device.clone(), OPTIONS).await.expect("open");
            wals.push(wal);
        }
        let frontier = Arc::new(DurableFrontier::new(
            wals.iter().map(|wal| (wal.log_id(), 0)),
        ));
        let mut node = TwinNode {
            devices,
            groups: Vec::new(),
            next_revision: INITIAL_REVISION + 1,
            syncs: 0,
            history: History::default(),
        };
        for (shard, wal) in wals.into_iter().enumerate() {
            let group = super::test_worker::start_empty_group(
                wal,
                shard,
                &frontier,
                &std::env::temp_dir(),
                &GroupConfig::single_voter(),
                None,
            )
            .await;
            node.groups.push(group);
            node.note_sync(shard);
        }
        node
    }

    fn note_sync(&mut self, shard: usize) {
        self.syncs += 1;
        self.history.last_sync.insert(shard as u32, self.syncs);
    }

    /// A write at the next revision with a part on each of `participants`.
    fn propose_write(&mut self, participants: &[u32]) {
        let revision = self.next_revision;
        self.next_revision += 1;
        let listed = if participants.len() > 1 {
            participants.to_vec()
        } else {
            Vec::new()
        };
        for shard in participants {
            let key = Bytes::from(format!("key-{revision}-{shard}"));
            let version = Version {
                value: Bytes::from_static(b"value"),
                create_revision: revision,
                version: 1,
                lease: 0,
                sub_revision: 0,
            };
            let record =
                ShardCommandRecord::for_changes(revision, listed.clone(), [(&key, &version)], None);
            self.groups[*shard as usize]
                .propose(encode(&record))
                .expect("propose");
        }
        self.history
            .revisions
            .insert(revision, participants.iter().copied().collect());
    }

    fn propose_lease_grant(&mut self, shard: usize, id: i64) {
        let record = ShardCommandRecord::lease_grant(id, 60);
        self.groups[shard]
            .propose(encode(&record))
            .expect("propose");
    }

    async fn persist(&mut self, shard: usize) {
        let before = self.devices[shard].sync_count();
        self.groups[shard].persist().await.expect("persist");
        if self.devices[shard].sync_count() > before {
            self.note_sync(shard);
        }
    }
}

/// Reads every device as startup does and decides.
async fn recover(devices: &[MemoryDevice]) -> (Vec<ShardInventory>, Result<RecoveryPlan, String>) {
    let mut inventories = Vec::new();
    for (shard, device) in devices.iter().enumerate() {
        let log = read_shard_log(shard, device.clone(), 0)
            .await
            .expect("readable");
        inventories.push(ShardInventory::of_log(shard as u32, &log));
    }
    let decision = durable_loss::decide(&inventories, &[], Path::new("/data"), INITIAL_REVISION)
        .map_err(|refusal| {
            assert!(
                refusal
                    .losses
                    .iter()
                    .all(|loss| matches!(loss.proof, LossProof::Witness { .. })),
                "{refusal}"
            );
            refusal.to_string()
        });
    (inventories, decision)
}

/// The last frame of `device`'s only segment: file, byte range, and the
/// revisions its records hold.
fn last_frame(device: &MemoryDevice) -> (String, usize, usize, BTreeSet<i64>) {
    let name = segment_file_name(1);
    let bytes = Bytes::from(device.file_bytes(&name).expect("the first segment"));
    let mut offset = FIRST_FRAME_OFFSET as usize;
    let mut last = None;
    while let Some(Ok(Some(header))) = bytes.get(offset..).map(decode_frame_header) {
        last = Some((offset, header));
        offset += header.frame_len() as usize;
    }
    let (start, header) = last.expect("a frame");
    let payload = bytes.slice(start + FRAME_HEADER_LEN..);
    let records = decode_records(&header, &payload)
        .expect("valid")
        .expect("whole");
    let mut revisions = BTreeSet::new();
    for record in records {
        if let Some(wal_record::Kind::Entry(entry)) =
            WalRecord::decode(record).expect("record").kind
            && !entry.data.is_empty()
        {
            let command = ShardCommandRecord::decode(entry.data).expect("command");
            if command.revision != 0 {
                revisions.insert(command.revision);
            }
        }
    }
    (name, start, header.frame_len() as usize, revisions)
}

/// Which bytes of a frame of `len` bytes to flip.
enum Flips<'random> {
    Every,
    /// The 48-byte header and `count` random bytes after it.
    HeaderAndSome(&'random mut Prng, usize),
}

impl Flips<'_> {
    fn offsets(&mut self, len: usize) -> Vec<usize> {
        match self {
            Flips::Every => (0..len).collect(),
            Flips::HeaderAndSome(random, count) => {
                let mut offsets: Vec<usize> = (0..FRAME_HEADER_LEN).collect();
                offsets.extend((0..*count).map(|_| random.below(len as u64) as usize));
                offsets
            }
        }
    }
}

/// Flips one bit at bytes of each shard's last frame and checks each
/// startup decision against the history.
async fn check_flips(node: &TwinNode, mut flips: Flips<'_>) -> usize {
    let history = &node.history;
    let highest = node.next_revision - 1;
    let mut checked = 0;
    for (shard, device) in node.devices.iter().enumerate() {
        let shard = shard as u32;
        let (file, start, len, lost) = last_frame(device);
        let followed = history
            .last_sync
            .iter()
            .any(|(other, when)| *other != shard && *when > history.last_sync[&shard]);
        for byte in flips.offsets(len).into_iter().map(|offset| start + offset) {
            let devices: Vec<MemoryDevice> = node.devices.iter().map(MemoryDevice::fork).collect();
            devices[shard as usize]
                .flip_bit(&file, byte, (byte % 8) as u8)
                .expect("flip");
            let (inventories, decision) = recover(&devices).await;
            let context = format!("shard {shard}, byte {byte} (frame at {start}, {len} bytes)");
            match &inventories[shard as usize].log.end {
                LogEnd::Clean => {
                    // The flip hit padding no checksum covers: nothing lost.
                    let plan = decision.unwrap_or_else(|refusal| panic!("{context}: {refusal}"));
                    assert_eq!(plan.keep_through, highest, "{context}");
                }
                LogEnd::Damaged(damage) => {
                    assert_eq!(
                        (damage.file.as_str(), damage.offset),
                        (file.as_str(), start as u64)
                    );
                    if followed {
                        let refusal = decision.expect_err(&context);
                        let named = format!("shard {shard}: its log (shards/{shard:04}/wal)");
                        assert!(
                            refusal.contains(&named)
                                && refusal.contains(&file)
                                && refusal.contains(&format!("byte offset {start}")),
                            "{context}: {refusal}"
                        );
                    } else {
                        let plan =
                            decision.unwrap_or_else(|refusal| panic!("{context}: {refusal}"));
                        let first_lost = lost.iter().next().copied().unwrap_or(highest + 1);
                        assert_eq!(plan.keep_through, first_lost - 1, "{context}");
                        for revision in history.revisions.keys() {
                            assert_eq!(plan.keeps(*revision), *revision < first_lost, "{context}");
                        }
                    }
                }
                LogEnd::Corrupt(damage) => panic!("{context}: corrupt {damage:?} in a last frame"),
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_flip_in_each_shards_last_frame_is_refused_when_proven_durable_else_truncated() {
    run(async {
        let mut node = TwinNode::start(3).await;
        for round in 0..3_u32 {
            node.propose_write(&[round % 3]);
            node.propose_write(&[0, 1, 2]);
            node.propose_lease_grant((round % 3) as usize, 1000 + i64::from(round));
            for shard in 0..3 {
                node.persist(shard).await;
            }
        }
        // The last write straddles every shard; shard 2 syncs its part last,
        // so only its last frame may have been in flight at a crash.
        node.propose_write(&[1]);
        node.propose_write(&[0, 1, 2]);
        for shard in 0..3 {
            node.persist(shard).await;
        }
        let checked = check_flips(&node, Flips::Every).await;
        assert!(checked >= 3 * 4096, "{checked} flips");
    });
}

#[test]
fn seeded_workloads_with_random_sync_orders() {
    let mut random = Prng::from_env(
        "RECOVERY_FAULT_SEED",
        "seeded_workloads_with_random_sync_orders",
    );
    run(async {
        for _ in 0..4 {
            let shards = 2 + random.below(3) as usize;
            let mut node = TwinNode::start(shards).await;
            for step in 0..(10 + random.below(20)) {
                match random.below(4) {
                    0 => node
                        .propose_lease_grant(random.below(shards as u64) as usize, step as i64 + 1),
                    1 => {
                        let mut participants: Vec<u32> = (0..shards as u32)
                            .filter(|_| random.below(2) == 0)
                            .collect();
                        if participants.len() < 2 {
                            participants = vec![0, shards as u32 - 1];
                        }
                        node.propose_write(&participants);
                    }
                    _ => node.propose_write(&[random.below(shards as u64) as u32]),
                }
                if random.below(3) == 0 {
                    let shard = random.below(shards as u64) as usize;
                    node.persist(shard).await;
                }
            }
            let mut order: Vec<usize> = (0..shards).collect();
            for index in (1..order.len()).rev() {
                order.swap(index, random.below(index as u64 + 1) as usize);
            }
            for shard in order {
                node.persist(shard).await;
            }
            check_flips(&node, Flips::HeaderAndSome(&mut random, 64)).await;
        }
    });
}
