//! Restart: read each shard's log back and decide, across all shards, which
//! revisions survive.
//!
//! # The global prefix rule
//!
//! Every revision that was ever taken was logged by each shard that holds
//! part of it, and a write at revision R is acknowledged only once every
//! revision `<= R` is durable on all its shards (the watermark rule). So
//! after a crash the acknowledged history is a *prefix* of the revisions:
//! recovery keeps every revision up to the first one that is incomplete
//! (some participant lacks its part) and discards everything above it. That
//! makes multi-shard writes all-or-nothing, and also discards any write
//! that read state a discarded revision produced (such a write has a higher
//! revision). The discarded range is logged as a *void* record on every
//! shard, so later recoveries skip it instead of cutting there again; new
//! revisions start above everything ever taken, so none is reused.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use raft::eraftpb::{Entry, EntryType, HardState};
use thiserror::Error;

use super::log_entry::{ShardCommandRecord, WalRecord, wal_record};
use super::snapshotting::{LoadedShardSnapshot, load_shard_snapshot};
use crate::data_dir::ShardDirectories;
use crate::store::shard_map::ShardId;
use crate::wal::{DirectDevice, LogEnd, StorageDevice, Wal, WalError, WalReading};

#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(
        "shard {shard}: WAL record {sequence} does not decode ({reason}); the log is corrupt: restore the data directory from a backup"
    )]
    UndecodableRecord {
        shard: ShardId,
        sequence: u64,
        reason: String,
    },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(
        "shard {shard}: the newest usable snapshot ends at Raft index {snapshot_index} but the WAL resumes at {first_logged}; history in between is missing (was a snapshot file removed or corrupted?): restore the data directory from a backup"
    )]
    MissingHistory {
        shard: ShardId,
        snapshot_index: u64,
        first_logged: u64,
    },
}

/// One shard's log, read back (nothing on disk changed yet).
pub struct RecoveredLog<D: StorageDevice> {
    /// Resumed for writing once the node has checked that nothing durable
    /// was lost (`shard::durable_loss`).
    pub reading: WalReading<D>,
    pub entries: Vec<Entry>,
    /// The WAL record sequence of each entry in `entries`, so a later
    /// snapshot knows which segments it may release.
    pub entry_sequences: Vec<u64>,
    pub hard_state: Option<HardState>,
    /// The shard commands in log order.
    pub commands: Vec<ShardCommandRecord>,
    /// What this log's frontier records say about other logs.
    pub claims: Vec<DurableClaim>,
}

impl<D: StorageDevice> RecoveredLog<D> {
    /// `(raft index, WAL record sequence)` of each entry, oldest first:
    /// what the Raft group needs to know which segments a snapshot frees.
    pub fn entry_records(&self) -> std::collections::VecDeque<(u64, u64)> {
        self.entries
            .iter()
            .map(|entry| entry.index)
            .zip(self.entry_sequences.iter().copied())
            .collect()
    }
}

/// A log's statement that another shard's log was durable this far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableClaim {
    /// The shard whose log is named.
    pub shard: u32,
    /// Which log of that shard (a repaired log gets a new id).
    pub log_id: u64,
    /// Records up to this sequence had been durable.
    pub durable_through: u64,
}

/// Reads a shard's WAL without changing it: Raft entries after
/// `snapshot_index` (later entries at an index replace earlier ones, as Raft
/// overwrites an uncommitted tail), the last hard state, the shard commands
/// inside the entries, and the frontier claims about other logs. The log
/// must continue right after the snapshot: a gap means history is missing,
/// and the shard refuses to start.
pub async fn read_shard_log<D: StorageDevice>(
    shard: ShardId,
    device: D,
    snapshot_index: u64,
) -> Result<RecoveredLog<D>, RecoveryError> {
    let mut reading = Wal::read(device).await?;
    let records = reading.take_records();
    let mut entries: Vec<Entry> = Vec::new();
    let mut entry_sequences: Vec<u64> = Vec::new();
    // The last restore record: entries continue right after it.
    let mut restored_through: Option<u64> = None;
    let mut hard_state = None;
    let mut claims: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for record in records {
        let undecodable = |reason: String| RecoveryError::UndecodableRecord {
            shard,
            sequence: record.sequence,
            reason,
        };
        let decoded = WalRecord::decode(record.payload.clone())
            .map_err(|error| undecodable(error.to_string()))?;
        match decoded.kind {
            Some(wal_record::Kind::Entry(logged)) => {
                let entry = logged.to_entry();
                let expected = entries
                    .last()
                    .map(|last| last.index + 1)
                    .or(restored_through.map(|index| index + 1))
                    .unwrap_or(entry.index);
                if entry.index > expected || entry.index == 0 {
                    return Err(undecodable(format!(
                        "entry index {} follows index {}",
                        entry.index,
                        expected.saturating_sub(1)
                    )));
                }
                let first_index = entries.first().map_or(entry.index, |first| first.index);
                let keep = entry.index.saturating_sub(first_index) as usize;
                entries.truncate(keep);
                entry_sequences.truncate(keep);
                entries.push(entry);
                entry_sequences.push(record.sequence);
            }
            Some(wal_record::Kind::HardState(logged)) => hard_state = Some(logged.to_hard_state()),
            Some(wal_record::Kind::Restored(restore)) => {
                // A leader's snapshot replaced everything logged before.
                if restore.index > snapshot_index {
                    return Err(RecoveryError::MissingHistory {
                        shard,
                        snapshot_index,
                        first_logged: restore.index + 1,
                    });
                }
                entries.clear();
                entry_sequences.clear();
                restored_through = Some(restore.index);
            }
            Some(wal_record::Kind::Frontier(logged)) => {
                for log in logged.logs {
                    let known = claims.entry((log.shard, log.log_id)).or_default();
                    *known = (*known).max(log.durable_through);
                }
            }
            None => return Err(undecodable("empty record".to_owned())),
        }
    }
    let covered = entries
        .iter()
        .take_while(|entry| entry.index <= snapshot_index)
        .count();
    entries.drain(..covered);
    entry_sequences.drain(..covered);
    if let Some(first) = entries.first()
        && first.index != snapshot_index + 1
    {
        return Err(RecoveryError::MissingHistory {
            shard,
            snapshot_index,
            first_logged: first.index,
        });
    }
    let mut commands = Vec::new();
    for entry in entries
        .iter()
        .filter(|entry| entry.entry_type == EntryType::EntryNormal && !entry.data.is_empty())
    {
        let command = ShardCommandRecord::decode(entry.data.clone()).map_err(|error| {
            RecoveryError::UndecodableRecord {
                shard,
                sequence: entry.index,
                reason: format!("raft entry {}: {error}", entry.index),
            }
        })?;
        commands.push(command);
    }
    let claims = claims
        .into_iter()
        .map(|((shard, log_id), durable_through)| DurableClaim {
            shard,
            log_id,
            durable_through,
        })
        .collect();
    Ok(RecoveredLog {
        reading,
        entries,
        entry_sequences,
        hard_state,
        commands,
        claims,
    })
}

/// A shard as found on disk: its newest snapshot, its log read back, and
/// what recovery needs to know of them.
pub struct ShardOnDisk {
    pub snapshot: Option<LoadedShardSnapshot>,
    pub log: RecoveredLog<DirectDevice>,
    pub inventory: ShardInventory,
}

/// Reads a shard's snapshot and log from its directories, changing
/// nothing (the server at startup, `metastore repair`). Errors name the
/// shard and the directory.
pub async fn read_shard(
    shard: ShardId,
    directories: &ShardDirectories,
) -> Result<ShardOnDisk, String> {
    let snapshot = load_shard_snapshot(&directories.snapshots, shard)
        .map_err(|error| format!("shard {shard}: {error}"))?;
    let snapshot_index = snapshot
        .as_ref()
        .map_or(0, |snapshot| snapshot.meta.raft_index);
    let device = DirectDevice::open(&directories.wal).map_err(|error| {
        format!(
            "shard {shard}: cannot open WAL directory {}: {error}",
            directories.wal.display()
        )
    })?;
    let log = read_shard_log(shard, device, snapshot_index)
        .await
        .map_err(|error| {
            format!(
                "shard {shard} (WAL in {}): {error}",
                directories.wal.display()
            )
        })?;
    let mut inventory = ShardInventory::of_log(shard as u32, &log);
    if let Some(snapshot) = &snapshot {
        inventory.snapshot_revision = snapshot.meta.revision;
        inventory.compacted_in_snapshot = snapshot.meta.compacted_revision;
    }
    Ok(ShardOnDisk {
        snapshot,
        log,
        inventory,
    })
}

impl ShardOnDisk {
    /// Keeps only the commands of entries the log's hard state says were
    /// committed (a cluster member: the rest may yet be replaced by a new
    /// leader's entries, and are applied, if ever, once committed).
    pub fn committed_only(mut self) -> Self {
        let snapshot_index = self
            .snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.meta.raft_index);
        let commit = self
            .log
            .hard_state
            .as_ref()
            .map_or(0, |hard_state| hard_state.commit)
            .max(snapshot_index);
        let uncommitted = self
            .log
            .entries
            .iter()
            .filter(|entry| {
                entry.index > commit
                    && entry.entry_type == EntryType::EntryNormal
                    && !entry.data.is_empty()
            })
            .count();
        let keep = self.log.commands.len() - uncommitted;
        self.log.commands.truncate(keep);
        let of_log = ShardInventory::from_commands(self.inventory.shard, &self.log.commands);
        self.inventory.revisions = of_log.revisions;
        self.inventory.voids = of_log.voids;
        self.inventory.compactions = of_log.compactions;
        self
    }
}

/// A cluster member's voids count only where every group logged them: a
/// lead member that failed while logging its decision left it in some
/// groups, and a group without it may still hold a part of a voided
/// revision (`store::applied_revisions`). The next lead member decides
/// again.
pub fn keep_voids_in_every_shard(inventories: &mut [ShardInventory]) {
    let everywhere: Vec<(i64, i64)> = inventories
        .first()
        .map(|first| {
            first
                .voids
                .iter()
                .copied()
                .filter(|void| {
                    inventories
                        .iter()
                        .all(|inventory| inventory.voids.contains(void))
                })
                .collect()
        })
        .unwrap_or_default();
    for inventory in inventories {
        inventory.voids.retain(|void| everywhere.contains(void));
    }
}

/// What one shard's log says about revisions, for [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardInventory {
    pub shard: u32,
    /// Each logged revision with its participant set (empty: this shard only).
    pub revisions: Vec<(i64, Vec<u32>)>,
    /// Revision ranges an earlier recovery discarded.
    pub voids: Vec<(i64, i64)>,
    /// Compaction points logged.
    pub compactions: Vec<i64>,
    /// The revision the shard's snapshot holds (0: no snapshot). Every
    /// revision at or below it was complete on every shard when taken.
    pub snapshot_revision: i64,
    /// The compaction point the snapshot declares (-1: none).
    pub compacted_in_snapshot: i64,
    /// How far this shard's own log reaches, and how it ends.
    pub log: LogFacts,
    /// What this shard's log says about how far other logs were durable.
    pub claims: Vec<DurableClaim>,
}

/// How far a shard's log reaches, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFacts {
    /// `Wal::log_id`.
    pub log_id: u64,
    /// The last readable record sequence (0: none).
    pub readable_through: u64,
    pub end: LogEnd,
}

impl ShardInventory {
    /// What recovery needs to know of one shard's log.
    pub fn of_log<D: StorageDevice>(shard: u32, log: &RecoveredLog<D>) -> Self {
        let mut inventory = Self::from_commands(shard, &log.commands);
        inventory.log = LogFacts {
            log_id: log.reading.log_id(),
            readable_through: log.reading.readable_through(),
            end: log.reading.end().clone(),
        };
        inventory.claims = log.claims.clone();
        inventory
    }

    pub fn from_commands(shard: u32, commands: &[ShardCommandRecord]) -> Self {
        let mut inventory = Self {
            shard,
            ..Default::default()
        };
        for command in commands {
            if command.revision != 0 {
                inventory
                    .revisions
                    .push((command.revision, command.participants.clone()));
            }
            if command.void_from != 0 {
                inventory.voids.push((command.void_from, command.void_to));
            }
            if command.compact_revision != 0 {
                inventory.compactions.push(command.compact_revision);
            }
        }
        inventory
    }
}

/// The decision recovery applies on every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    /// Revisions `<= keep_through` survive (unless voided earlier).
    pub keep_through: i64,
    /// The highest revision ever taken; new revisions start above it.
    pub highest_taken: i64,
    /// The compaction point to restore (-1: never compacted).
    pub compacted: i64,
    /// Ranges earlier recoveries discarded, from every shard's log (a crash
    /// while logging a void may have left it on only some shards).
    pub voids: Vec<(i64, i64)>,
}

impl RecoveryPlan {
    /// The range this recovery discards, if any.
    pub fn newly_void(&self) -> Option<(i64, i64)> {
        (self.highest_taken > self.keep_through)
            .then_some((self.keep_through + 1, self.highest_taken))
    }

    /// True when a logged change at `revision` must be applied.
    pub fn keeps(&self, revision: i64) -> bool {
        revision <= self.keep_through
            && !self
                .voids
                .iter()
                .any(|(from, to)| (*from..=*to).contains(&revision))
    }
}

/// Applies the global prefix rule (module docs) to every shard's inventory.
/// `initial_revision` is the revision of an empty store.
pub fn plan(inventories: &[ShardInventory], initial_revision: i64) -> RecoveryPlan {
    let mut expected: BTreeMap<i64, BTreeSet<u32>> = BTreeMap::new();
    let mut present: BTreeMap<i64, BTreeSet<u32>> = BTreeMap::new();
    let mut voids: Vec<(i64, i64)> = Vec::new();
    for inventory in inventories {
        for (revision, participants) in &inventory.revisions {
            let participants: BTreeSet<u32> = if participants.is_empty() {
                [inventory.shard].into()
            } else {
                participants.iter().copied().collect()
            };
            expected.entry(*revision).or_default().extend(participants);
            present
                .entry(*revision)
                .or_default()
                .insert(inventory.shard);
        }
        voids.extend(inventory.voids.iter().copied());
    }
    // Snapshots hold only revisions that were complete everywhere.
    let settled = inventories
        .iter()
        .map(|inventory| inventory.snapshot_revision)
        .max()
        .unwrap_or(0)
        .max(initial_revision);
    let highest_taken = expected
        .keys()
        .next_back()
        .copied()
        .into_iter()
        .chain(voids.iter().map(|(_, to)| *to))
        .max()
        .unwrap_or(settled)
        .max(settled);
    let is_void = |revision: i64| {
        voids
            .iter()
            .any(|(from, to)| (*from..=*to).contains(&revision))
    };
    let mut keep_through = highest_taken;
    for revision in (settled + 1)..=highest_taken {
        if is_void(revision) {
            continue;
        }
        let complete = match (expected.get(&revision), present.get(&revision)) {
            (Some(expected), Some(present)) => expected.is_subset(present),
            _ => false,
        };
        if !complete {
            keep_through = revision - 1;
            break;
        }
    }
    let compacted = inventories
        .iter()
        .flat_map(|inventory| inventory.compactions.iter().copied())
        .filter(|revision| *revision <= keep_through)
        .max()
        .unwrap_or(-1);
    let compacted = inventories
        .iter()
        .filter(|inventory| inventory.snapshot_revision > 0)
        .map(|inventory| inventory.compacted_in_snapshot)
        .fold(compacted, i64::max);
    voids.sort_unstable();
    voids.dedup();
    RecoveryPlan {
        keep_through,
        highest_taken,
        compacted,
        voids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `records` (entries `(index, term)`, or a restore record
    /// at `(index, term)` where `restore` says), read back after a
    /// snapshot through `snapshot_index`.
    fn read_back(
        records: &[(bool, u64, u64)],
        snapshot_index: u64,
    ) -> Result<Vec<u64>, RecoveryError> {
        crate::test_support::run_on_monoio(async {
            let device = crate::wal::MemoryDevice::new();
            let options = crate::wal::WalOptions {
                segment_bytes: 1 << 20,
            };
            let (mut wal, _) = Wal::open(device.clone(), options).await.expect("open");
            for (restore, index, term) in records {
                let record = if *restore {
                    WalRecord::restored(*index, *term)
                } else {
                    WalRecord::entry(&Entry {
                        index: *index,
                        term: *term,
                        ..Default::default()
                    })
                };
                wal.append(&prost::Message::encode_to_vec(&record));
            }
            wal.sync().await.expect("sync");
            let log = read_shard_log(0, device, snapshot_index).await?;
            Ok(log.entries.iter().map(|entry| entry.index).collect())
        })
    }

    #[test]
    fn a_restore_record_voids_the_entries_before_it() {
        // Behind at 5, restored to a snapshot at 10, then 11 and 12.
        let log = [
            (false, 4, 1),
            (false, 5, 1),
            (false, 6, 1),
            (true, 10, 2),
            (false, 11, 2),
            (false, 12, 2),
        ];
        assert_eq!(read_back(&log, 10).expect("readable"), [11, 12]);
        // Crash before anything followed the restore record.
        assert_eq!(
            read_back(&log[..4], 10).expect("readable"),
            Vec::<u64>::new()
        );
        // Without the record, the log would not continue after 6.
        let without: Vec<_> = log
            .iter()
            .copied()
            .filter(|(restore, ..)| !restore)
            .collect();
        assert!(read_back(&without, 10).is_err());
        // A restore past the newest snapshot: that snapshot is missing.
        assert!(matches!(
            read_back(&log, 8),
            Err(RecoveryError::MissingHistory { .. })
        ));
    }

    fn inventory(shard: u32, revisions: &[(i64, &[u32])]) -> ShardInventory {
        ShardInventory {
            shard,
            revisions: revisions
                .iter()
                .map(|(revision, participants)| (*revision, participants.to_vec()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn complete_history_is_kept() {
        let shards = [
            inventory(0, &[(2, &[]), (4, &[0, 1])]),
            inventory(1, &[(3, &[]), (4, &[0, 1])]),
        ];
        assert_eq!(
            plan(&shards, 1),
            RecoveryPlan {
                keep_through: 4,
                highest_taken: 4,
                compacted: -1,
                voids: Vec::new()
            }
        );
        assert_eq!(plan(&shards, 1).newly_void(), None);
    }

    #[test]
    fn a_missing_part_cuts_the_prefix_there() {
        // Revision 3 is a two-shard write whose part on shard 1 was lost;
        // revision 4 (single shard, durable) depends on nothing but is above the cut.
        let shards = [
            inventory(0, &[(2, &[]), (3, &[0, 1]), (4, &[])]),
            inventory(1, &[]),
        ];
        let plan = plan(&shards, 1);
        assert_eq!((plan.keep_through, plan.highest_taken), (2, 4));
        assert_eq!(plan.newly_void(), Some((3, 4)));
        assert!(plan.keeps(2) && !plan.keeps(3) && !plan.keeps(4));
    }

    #[test]
    fn a_lost_single_shard_revision_cuts_too() {
        let shards = [
            inventory(0, &[(2, &[]), (4, &[])]),
            inventory(1, &[(5, &[])]),
        ];
        assert_eq!(
            plan(&shards, 1).keep_through,
            2,
            "revision 3 was taken but never became durable"
        );
    }

    #[test]
    fn earlier_voids_are_skipped_not_cut_again() {
        let mut shard0 = inventory(0, &[(2, &[]), (3, &[0, 1]), (6, &[])]);
        shard0.voids.push((3, 5));
        let mut shard1 = inventory(1, &[(7, &[])]);
        shard1.voids.push((3, 5));
        let plan = plan(&[shard0, shard1], 1);
        assert_eq!((plan.keep_through, plan.highest_taken), (7, 7));
        assert!(
            !plan.keeps(3) && plan.keeps(6),
            "voided revisions are never applied"
        );
    }

    #[test]
    fn snapshots_settle_everything_below_them() {
        // Shard 1's log was released below its snapshot at revision 5; the
        // two-shard revision 4 is no longer in any log but is settled.
        let mut shard0 = inventory(0, &[(6, &[])]);
        shard0.snapshot_revision = 3;
        let mut shard1 = inventory(1, &[(7, &[])]);
        shard1.snapshot_revision = 5;
        let plan = plan(&[shard0, shard1], 1);
        assert_eq!((plan.keep_through, plan.highest_taken), (7, 7));
    }

    #[test]
    fn compaction_beyond_the_cut_is_not_restored() {
        let mut shard0 = inventory(0, &[(2, &[]), (3, &[])]);
        shard0.compactions = vec![2, 3];
        let shard1 = inventory(1, &[(5, &[])]);
        assert_eq!(plan(&[shard0, shard1], 1).compacted, 3);
        assert_eq!(
            plan(&[], 1),
            RecoveryPlan {
                keep_through: 1,
                highest_taken: 1,
                compacted: -1,
                voids: Vec::new()
            }
        );
    }
}
