//! Key → shard routing.
//!
//! `shard(key) = crc32c(key) % shard_count`. CRC-32C (Castagnoli) is fixed by
//! RFC 3720 and hardware-accelerated on x86 and ARM, so the mapping never
//! changes between MetaStore versions: the shard count is recorded in the data
//! directory and the same key must land on the same shard forever. The fixed
//! test vectors below guard that promise.

use std::ops::Range;

/// Index of a logical shard, `0..shard_count`.
pub type ShardId = usize;

/// Maps keys to shards and shards to cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMap {
    /// Fixed when the data directory is created; changing it would move keys.
    shard_count: usize,
    /// Cores in this process; shards are assigned to cores round-robin so a
    /// restart with a different core count still serves every shard.
    core_count: usize,
}

impl ShardMap {
    pub fn new(shard_count: usize, core_count: usize) -> Self {
        assert!(
            shard_count > 0 && core_count > 0,
            "shard and core counts are validated at start"
        );
        Self {
            shard_count,
            core_count,
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    pub fn core_count(&self) -> usize {
        self.core_count
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        (crc32c::crc32c(key) as usize) % self.shard_count
    }

    /// The core that owns (is the only writer of) `shard`.
    pub fn core_of(&self, shard: ShardId) -> usize {
        shard % self.core_count
    }

    /// Shards owned by `core`, in ascending order.
    pub fn shards_of_core(&self, core: usize) -> impl Iterator<Item = ShardId> + '_ {
        (core..self.shard_count).step_by(self.core_count)
    }

    pub fn all_shards(&self) -> Range<ShardId> {
        0..self.shard_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_crc32c_and_never_changes() {
        // RFC 3720 / iSCSI check value for CRC-32C.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let map = ShardMap::new(16, 2);
        // Fixed vectors: if any of these change, existing data directories break.
        let vectors: [(&[u8], usize); 5] = [
            (b"foo", 0xcfc4ae1d % 16),
            (b"a", 0xc1d04330 % 16),
            (b"123456789", 0xE306_9283 % 16),
            (b"\0", 0x527d5351 % 16),
            (b"/registry/pods/default/web-0", 0x4d15ba0f % 16),
        ];
        for (key, shard) in vectors {
            assert_eq!(map.shard_of(key), shard, "key {key:?}");
        }
    }

    #[test]
    fn shards_are_assigned_round_robin() {
        let map = ShardMap::new(5, 2);
        assert_eq!(map.shards_of_core(0).collect::<Vec<_>>(), vec![0, 2, 4]);
        assert_eq!(map.shards_of_core(1).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(map.core_of(3), 1);
    }
}
