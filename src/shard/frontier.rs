//! The durable frontier: how far every shard's log is durable, as the node
//! knows it right now.
//!
//! Each shard publishes its WAL's durable record sequence after every
//! fdatasync, and writes the others' published values as the first record
//! of each frame it writes (`WalRecord::Frontier`). A surviving frame thus
//! proves that the records it names had been durable before it was
//! written. That is the cross-log evidence Protocol-Aware Recovery needs: a
//! shard's damaged last frame that another shard's log names was durable,
//! so it was not a torn write and dropping it would lose acknowledged data
//! (`shard::durable_loss`).
//!
//! Ordering: a shard publishes only after its `fdatasync` returned, and a
//! writer reads the values before its own write is issued, so a value in
//! a frame never runs ahead of what was durable.
//!
//! Cost: one store per shard per sync (to a cache line of its own) and one
//! load per shard per frame; no locks.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::log_entry::{LoggedDurableLog, WalRecord};
use crate::store::shard_map::ShardId;

/// One shard's published durability.
#[derive(Debug)]
struct PublishedLog {
    /// The id of the log the sequences belong to; fixed once the node
    /// starts (a log keeps its id for life).
    log_id: u64,
    /// Its last durable record sequence. Written only by the owning core.
    durable_through: CachePadded<AtomicU64>,
}

/// Every shard's durable record sequence, shared by all cores.
#[derive(Debug)]
pub struct DurableFrontier {
    logs: Box<[PublishedLog]>,
}

impl DurableFrontier {
    /// The frontier at startup: each shard's `(log id, last durable record)`
    /// as read back from disk, indexed by shard.
    pub fn new(logs: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let logs = logs
            .into_iter()
            .map(|(log_id, durable_through)| PublishedLog {
                log_id,
                durable_through: CachePadded::new(AtomicU64::new(durable_through)),
            })
            .collect();
        Self { logs }
    }

    /// Records that `shard`'s log is durable through `sequence`. Called by
    /// the owning core after each successful fdatasync.
    pub fn publish(&self, shard: ShardId, sequence: u64) {
        if let Some(log) = self.logs.get(shard) {
            log.durable_through.store(sequence, Ordering::Release);
        }
    }

    /// The record `shard` writes first in its next frame: every other
    /// shard's published durability (a shard's claim about itself would
    /// add nothing: its own earlier frames precede the new one in its log).
    /// Logs with nothing durable yet are left out.
    pub fn record_for(&self, shard: ShardId) -> WalRecord {
        let logs = self
            .logs
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != shard)
            .filter_map(|(other, log)| {
                let durable_through = log.durable_through.load(Ordering::Acquire);
                (durable_through > 0).then_some(LoggedDurableLog {
                    shard: other as u32,
                    log_id: log.log_id,
                    durable_through,
                })
            })
            .collect();
        WalRecord::frontier(logs)
    }

    /// Shards the frontier covers.
    pub fn shard_count(&self) -> usize {
        self.logs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::log_entry::wal_record;

    #[test]
    fn a_frame_names_every_other_shard_with_durable_records() {
        let frontier = DurableFrontier::new([(10, 5), (11, 0), (12, 7)]);
        frontier.publish(1, 3);
        frontier.publish(2, 9);
        let Some(wal_record::Kind::Frontier(logged)) = frontier.record_for(2).kind else {
            panic!("a frontier record")
        };
        let named: Vec<(u32, u64, u64)> = logged
            .logs
            .iter()
            .map(|log| (log.shard, log.log_id, log.durable_through))
            .collect();
        assert_eq!(named, vec![(0, 10, 5), (1, 11, 3)]);
        assert_eq!(frontier.shard_count(), 3);
    }
}
