//! Lease IDs for grants that do not choose one, built like etcd's
//! `idutil.Generator`: the member ID's low 16 bits, then a 40-bit
//! millisecond timestamp taken at startup, then an 8-bit counter that
//! carries into the timestamp. IDs are positive and increase, so they do not
//! repeat within a process; across restarts the timestamp moves on.

use std::sync::atomic::{AtomicU64, Ordering};

const TIMESTAMP_BITS: u32 = 40;
const COUNTER_BITS: u32 = 8;
const SUFFIX_BITS: u32 = TIMESTAMP_BITS + COUNTER_BITS;

pub struct LeaseIdGenerator {
    /// Member bits, fixed for the process.
    prefix: u64,
    /// Timestamp and counter; incremented atomically (cores grant
    /// concurrently).
    suffix: AtomicU64,
}

impl LeaseIdGenerator {
    pub fn new(member_id: u64, unix_millis: u64) -> Self {
        let timestamp = unix_millis & ((1 << TIMESTAMP_BITS) - 1);
        Self {
            prefix: (member_id & 0xffff) << SUFFIX_BITS,
            suffix: AtomicU64::new(timestamp << COUNTER_BITS),
        }
    }

    /// The next ID: positive (etcd keeps lease IDs in int64 and never hands
    /// out 0, which means "no lease").
    pub fn next(&self) -> i64 {
        loop {
            let suffix = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
            let id = (self.prefix | (suffix & ((1 << SUFFIX_BITS) - 1))) & (i64::MAX as u64);
            if id != 0 {
                return id as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_distinct_and_carry_the_member_bits() {
        let generator = LeaseIdGenerator::new(0xabcd_1234_5678, 1_700_000_000_000);
        let first = generator.next();
        let second = generator.next();
        assert!(first > 0 && second > first);
        assert_eq!((first as u64) >> SUFFIX_BITS, 0x5678 & 0x7fff);
    }

    #[test]
    fn the_sign_bit_is_never_set() {
        let generator = LeaseIdGenerator::new(u64::MAX, u64::MAX);
        for _ in 0..1000 {
            assert!(generator.next() > 0);
        }
    }
}
