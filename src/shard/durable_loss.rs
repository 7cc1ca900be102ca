//! Protocol-Aware Recovery's question: did any shard's log lose records
//! that had been durable?
//!
//! Within one log, a damaged last frame looks exactly like a torn final
//! write, which was never acknowledged and may be dropped. But every frame
//! a shard writes starts with the durable frontier (`shard::frontier`):
//! how far each other shard's log was durable at that moment. So if a
//! surviving frame of shard B says shard A's log was durable through
//! record N, and A's log is now readable only up to some M < N, then A's
//! records M+1..=N had been durable, were possibly acknowledged (a write
//! is acknowledged once durable everywhere it is logged), and are lost to
//! corruption: the node must refuse to start rather than drop them (Alagappan
//! et al., "Protocol-Aware Recovery for Consensus-Based Storage", FAST '18).
//!
//! Proofs of loss, per shard:
//! - its log has a bad spot followed by valid later frames (the WAL proves
//!   it on its own);
//! - another log names this log and a durable sequence past its end;
//! - another log names a different log of this shard that was durable
//!   (the WAL files were replaced or removed), unless `metastore repair`
//!   retired that log;
//! - the log itself was retired by a repair that did not finish.
//!
//! A damaged tail no other log names stays a torn write: truncated, as
//! the single-log rule always did.

use std::collections::BTreeSet;
use std::fmt;

use super::recovery::{LogFacts, RecoveryPlan, ShardInventory, plan};
use crate::wal::LogEnd;

/// A log a repair replaced: claims about it no longer bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetiredLog {
    pub shard: u32,
    pub log_id: u64,
}

/// Why a shard's log is known to have lost durable records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossProof {
    /// A bad spot with valid frames after it.
    LaterFrames,
    /// `witness`'s log says this log was durable through `durable_through`.
    Witness { witness: u32, durable_through: u64 },
    /// `witness`'s log says a different log of this shard (`log_id`) was
    /// durable through `durable_through`: this one replaced it.
    ReplacedLog {
        witness: u32,
        log_id: u64,
        durable_through: u64,
    },
    /// This log's id was retired by a repair that did not finish.
    RetiredLogInUse,
}

/// One shard whose log lost durable records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableLoss {
    pub shard: u32,
    pub log: LogFacts,
    pub proof: LossProof,
}

/// The node's startup decision over every shard's inventory (sorted by
/// shard): refuse if any log provably lost durable records, else the
/// recovery plan (which truncates torn tails and voids what they held).
pub fn decide(
    inventories: &[ShardInventory],
    retired: &[RetiredLog],
    data_dir: &std::path::Path,
    initial_revision: i64,
) -> Result<RecoveryPlan, LostDurableData> {
    let plan = plan(inventories, initial_revision);
    let losses = find_durable_losses(inventories, retired);
    if losses.is_empty() {
        Ok(plan)
    } else {
        Err(LostDurableData {
            data_dir: data_dir.to_owned(),
            losses,
            at_stake: RevisionsAtStake::of(inventories, &plan),
        })
    }
}

/// Every shard whose log provably lost durable records.
pub fn find_durable_losses(
    inventories: &[ShardInventory],
    retired: &[RetiredLog],
) -> Vec<DurableLoss> {
    let is_retired = |shard: u32, log_id: u64| {
        retired
            .iter()
            .any(|log| log.shard == shard && log.log_id == log_id)
    };
    let mut losses = Vec::new();
    for inventory in inventories {
        let shard = inventory.shard;
        let log = &inventory.log;
        // Claims by other logs about this shard, strongest first.
        let mut witness: Option<(u32, u64)> = None;
        let mut replaced: Option<(u32, u64, u64)> = None;
        for other in inventories.iter().filter(|other| other.shard != shard) {
            for claim in other.claims.iter().filter(|claim| claim.shard == shard) {
                if claim.log_id == log.log_id {
                    if claim.durable_through > log.readable_through
                        && witness.is_none_or(|(_, through)| claim.durable_through > through)
                    {
                        witness = Some((other.shard, claim.durable_through));
                    }
                } else if claim.durable_through > 0 && !is_retired(shard, claim.log_id) {
                    replaced.get_or_insert((other.shard, claim.log_id, claim.durable_through));
                }
            }
        }
        let proof = if matches!(log.end, LogEnd::Corrupt(_)) {
            LossProof::LaterFrames
        } else if is_retired(shard, log.log_id) {
            LossProof::RetiredLogInUse
        } else if let Some((witness, durable_through)) = witness {
            LossProof::Witness {
                witness,
                durable_through,
            }
        } else if let Some((witness, log_id, durable_through)) = replaced {
            LossProof::ReplacedLog {
                witness,
                log_id,
                durable_through,
            }
        } else {
            continue;
        };
        losses.push(DurableLoss {
            shard,
            log: log.clone(),
            proof,
        });
    }
    losses
}

/// The revisions a start (or a repair) would discard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionsAtStake {
    pub from: i64,
    pub to: i64,
    /// Of those, revisions still intact in some shard's log, discarded to
    /// keep the history a prefix (a multi-shard write all-or-nothing, and
    /// no write kept that may have read a lost one).
    pub intact_elsewhere: usize,
}

impl RevisionsAtStake {
    /// What `plan` discards, if anything.
    pub fn of(inventories: &[ShardInventory], plan: &RecoveryPlan) -> Option<Self> {
        let (from, to) = plan.newly_void()?;
        let intact: BTreeSet<i64> = inventories
            .iter()
            .flat_map(|inventory| inventory.revisions.iter().map(|(revision, _)| *revision))
            .filter(|revision| (from..=to).contains(revision))
            .filter(|revision| {
                !plan
                    .voids
                    .iter()
                    .any(|(void_from, void_to)| (*void_from..=*void_to).contains(revision))
            })
            .collect();
        Some(Self {
            from,
            to,
            intact_elsewhere: intact.len(),
        })
    }
}

impl fmt::Display for RevisionsAtStake {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.to - self.from + 1;
        write!(
            formatter,
            "revisions {}..={} ({count} revision{}; {} of them intact in other shards' logs, dropped so \
             that the kept history is a prefix: multi-shard writes stay all-or-nothing and no kept write \
             depends on a lost one)",
            self.from,
            self.to,
            if count == 1 { "" } else { "s" },
            self.intact_elsewhere
        )
    }
}

/// Where a shard's log lives, relative to the data directory.
fn wal_path(shard: u32) -> String {
    format!("shards/{shard:04}/wal")
}

impl fmt::Display for DurableLoss {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shard = self.shard;
        let through = self.log.readable_through;
        write!(
            formatter,
            "shard {shard}: its log ({}) is readable through record {through}",
            wal_path(shard)
        )?;
        match &self.log.end {
            LogEnd::Clean => write!(formatter, " and ends there")?,
            LogEnd::Damaged(damage) | LogEnd::Corrupt(damage) => write!(
                formatter,
                "; then {} at byte offset {}: {}",
                damage.file, damage.offset, damage.reason
            )?,
        }
        match &self.proof {
            LossProof::LaterFrames => write!(
                formatter,
                ". Valid frames follow the damage, so records after it had been durable"
            ),
            LossProof::Witness {
                witness,
                durable_through,
            } => write!(
                formatter,
                ". Shard {witness}'s log records that this log had been durable through record \
                 {durable_through}, so records {}..={durable_through} were written and synced before \
                 later writes, not torn by a crash",
                through + 1
            ),
            LossProof::ReplacedLog {
                witness,
                log_id,
                durable_through,
            } => write!(
                formatter,
                ". Shard {witness}'s log records that this shard's log {log_id:#018x} had been durable \
                 through record {durable_through}, but the log found is {:#018x}: the shard's WAL files \
                 were replaced or removed",
                self.log.log_id
            ),
            LossProof::RetiredLogInUse => write!(
                formatter,
                ". This log ({:#018x}) was retired by a `metastore repair` that did not finish",
                self.log.log_id
            ),
        }
    }
}

/// Why a node refuses to start: acknowledged data would be lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostDurableData {
    /// The data directory, for the advice.
    pub data_dir: std::path::PathBuf,
    pub losses: Vec<DurableLoss>,
    pub at_stake: Option<RevisionsAtStake>,
}

impl fmt::Display for LostDurableData {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "data directory {}: acknowledged data was lost to corruption (not to a torn write) in {} \
             shard log{}:",
            self.data_dir.display(),
            self.losses.len(),
            if self.losses.len() == 1 { "" } else { "s" }
        )?;
        for loss in &self.losses {
            writeln!(formatter, "  - {loss}.")?;
        }
        match &self.at_stake {
            Some(at_stake) => writeln!(formatter, "Starting would discard {at_stake}.")?,
            None => writeln!(
                formatter,
                "No key revision would be discarded; the lost records may have held Raft bookkeeping, \
                 lease grants or revocations, or compactions, which cannot be listed."
            )?,
        }
        let data_dir = self.data_dir.display();
        write!(
            formatter,
            "Nothing was changed. Restore the data directory from a backup, or run `metastore repair \
             --data-dir {data_dir}` to see exactly what a repair drops and `metastore repair --data-dir \
             {data_dir} --apply` to drop it and start from what remains."
        )
    }
}

impl std::error::Error for LostDurableData {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::recovery::DurableClaim;
    use crate::wal::LogDamage;

    fn shard(shard: u32, log_id: u64, readable_through: u64, end: LogEnd) -> ShardInventory {
        ShardInventory {
            shard,
            log: LogFacts {
                log_id,
                readable_through,
                end,
            },
            ..Default::default()
        }
    }

    fn damaged() -> LogEnd {
        LogEnd::Damaged(LogDamage {
            file: "wal-0000000000000001.log".to_owned(),
            offset: 8192,
            reason: "invalid frame (payload checksum mismatch)".to_owned(),
        })
    }

    fn claim(shard: u32, log_id: u64, durable_through: u64) -> DurableClaim {
        DurableClaim {
            shard,
            log_id,
            durable_through,
        }
    }

    #[test]
    fn a_damaged_tail_nobody_names_is_a_torn_write() {
        let mut other = shard(1, 200, 9, LogEnd::Clean);
        other.claims = vec![claim(0, 100, 4)];
        let inventories = [shard(0, 100, 4, damaged()), other];
        assert!(find_durable_losses(&inventories, &[]).is_empty());
    }

    #[test]
    fn a_damaged_tail_another_log_names_is_a_loss() {
        let mut other = shard(1, 200, 9, LogEnd::Clean);
        other.claims = vec![claim(0, 100, 3), claim(0, 100, 6)];
        let inventories = [shard(0, 100, 4, damaged()), other];
        let losses = find_durable_losses(&inventories, &[]);
        assert_eq!(losses.len(), 1);
        assert_eq!(
            losses[0].proof,
            LossProof::Witness {
                witness: 1,
                durable_through: 6
            }
        );
        let message = losses[0].to_string();
        assert!(
            message.contains("shard 0")
                && message.contains("shards/0000/wal")
                && message.contains("wal-0000000000000001.log")
                && message.contains("8192")
                && message.contains("records 5..=6"),
            "{message}"
        );
    }

    #[test]
    fn a_log_that_ends_cleanly_short_of_a_claim_lost_whole_frames() {
        let mut other = shard(1, 200, 9, LogEnd::Clean);
        other.claims = vec![claim(0, 100, 6)];
        let losses = find_durable_losses(&[shard(0, 100, 4, LogEnd::Clean), other], &[]);
        assert_eq!(losses.len(), 1);
    }

    #[test]
    fn a_replaced_log_is_a_loss_unless_a_repair_retired_the_old_one() {
        let mut other = shard(1, 200, 9, LogEnd::Clean);
        other.claims = vec![claim(0, 99, 6)];
        let inventories = [shard(0, 100, 0, LogEnd::Clean), other];
        let losses = find_durable_losses(&inventories, &[]);
        assert!(matches!(
            losses[0].proof,
            LossProof::ReplacedLog { log_id: 99, .. }
        ));
        let retired = [RetiredLog {
            shard: 0,
            log_id: 99,
        }];
        assert!(find_durable_losses(&inventories, &retired).is_empty());
        // A claim that nothing was durable yet proves nothing.
        let mut other = shard(1, 200, 9, LogEnd::Clean);
        other.claims = vec![claim(0, 99, 0)];
        assert!(find_durable_losses(&[shard(0, 100, 0, LogEnd::Clean), other], &[]).is_empty());
    }

    #[test]
    fn a_retired_log_still_in_place_means_an_unfinished_repair() {
        let retired = [RetiredLog {
            shard: 0,
            log_id: 100,
        }];
        let losses = find_durable_losses(&[shard(0, 100, 4, LogEnd::Clean)], &retired);
        assert_eq!(losses[0].proof, LossProof::RetiredLogInUse);
    }

    #[test]
    fn corruption_inside_a_log_is_a_loss_on_its_own() {
        let end = LogEnd::Corrupt(LogDamage {
            file: "wal-0000000000000001.log".to_owned(),
            offset: 4096,
            reason: "bad".to_owned(),
        });
        let losses = find_durable_losses(&[shard(0, 100, 4, end)], &[]);
        assert_eq!(losses[0].proof, LossProof::LaterFrames);
    }

    #[test]
    fn revisions_at_stake_count_what_other_logs_still_hold() {
        let mut damaged_shard = shard(0, 100, 4, damaged());
        damaged_shard.revisions = vec![(2, vec![])];
        let mut other = shard(1, 200, 9, LogEnd::Clean);
        // Revision 3 was in shard 0's lost frame; 4 and 5 are intact.
        other.revisions = vec![(4, vec![]), (5, vec![])];
        other.claims = vec![claim(0, 100, 6)];
        let inventories = [damaged_shard, other];
        let plan = plan(&inventories, 1);
        let at_stake = RevisionsAtStake::of(&inventories, &plan).expect("a cut");
        assert_eq!(
            at_stake,
            RevisionsAtStake {
                from: 3,
                to: 5,
                intact_elsewhere: 2
            }
        );
        let refusal = LostDurableData {
            data_dir: "/var/lib/metastore".into(),
            losses: find_durable_losses(&inventories, &[]),
            at_stake: Some(at_stake),
        }
        .to_string();
        assert!(
            refusal.contains("revisions 3..=5")
                && refusal.contains("metastore repair --data-dir /var/lib/metastore --apply")
                && refusal.contains("Nothing was changed"),
            "{refusal}"
        );
    }
}
