//! The expiry task's deadline queue: which leases' deadlines have passed,
//! without scanning the lease table.
//!
//! Owned by the one expiry task (core 0), so it needs no lock. Keep-alives
//! do not touch it: they renew in the table, and the queue notices lazily,
//! when a lease's queued deadline comes up and the table says it is later.
//! New leases reach it through the table's lock-free set of inserted IDs,
//! drained at every check.
//!
//! Invariant: every lease in the table is either waiting in that set or
//! has exactly one live heap entry, whose deadline is at or before the
//! lease's current deadline (deadlines only move later, except when a lease
//! is inserted again, which announces it again; two keep-alives racing on
//! different cores may store theirs out of order, making that expiry late
//! by the gap between them). So every lease whose deadline passed is
//! popped; a check costs O((expired + renewed since queued + inserted) ·
//! log n), not O(n).
//!
//! Time is passed in, never read here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use super::table::LeaseTable;

#[derive(Default)]
pub struct LeaseExpiryQueue {
    /// (deadline in table milliseconds, lease ID), earliest first. Entries
    /// that do not match `queued` are stale and skipped when popped.
    heap: BinaryHeap<Reverse<(i64, i64)>>,
    /// Each queued lease's live heap entry.
    queued: HashMap<i64, i64>,
}

impl LeaseExpiryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Leases whose deadline is at or before `now`, each once, earliest
    /// deadline first.
    ///
    /// They stay queued: a lease still in the table at the next check (its
    /// revocation failed) is reported again then; one that left is dropped.
    pub fn expired(&mut self, table: &LeaseTable, now: Instant) -> Vec<i64> {
        while let Some(id) = table.take_inserted() {
            // Removed meanwhile: nothing to expire.
            if let Some(deadline) = table.deadline_millis(id) {
                self.queue(id, deadline);
            }
        }
        let now = table.millis(now);
        let mut expired = Vec::new();
        while let Some(&Reverse((queued_deadline, id))) = self.heap.peek() {
            if queued_deadline > now {
                break;
            }
            self.heap.pop();
            if self.queued.get(&id) != Some(&queued_deadline) {
                continue;
            }
            self.queued.remove(&id);
            match table.deadline_millis(id) {
                // Revoked: forget it.
                None => {}
                // Renewed since it was queued: back in at the new deadline
                // (popped again in this loop if that passed too, so leases
                // come out in the order of their deadlines).
                Some(deadline) if deadline > queued_deadline => self.queue(id, deadline),
                Some(deadline) => expired.push((deadline, id)),
            }
        }
        // Re-queued only now, or the loop above would pop them again.
        for &(deadline, id) in &expired {
            self.queue(id, deadline);
        }
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// Number of leases queued (not counting ones not yet drained from the
    /// table).
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Gives `id` a heap entry at `deadline` unless it has one at or before
    /// it (which will re-read the deadline when it comes up).
    fn queue(&mut self, id: i64, deadline: i64) {
        if let Some(&queued) = self.queued.get(&id)
            && queued <= deadline
        {
            return;
        }
        // An entry at a later deadline (a lease inserted again with a
        // shorter TTL) becomes stale: it no longer matches `queued`.
        self.queued.insert(id, deadline);
        self.heap.push(Reverse((deadline, id)));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::lease::id::LeaseIdGenerator;

    fn table() -> (LeaseTable, Instant) {
        let epoch = Instant::now();
        (LeaseTable::new(epoch, LeaseIdGenerator::new(1, 0)), epoch)
    }

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn a_lease_expires_at_its_deadline_unless_renewed() {
        let (table, start) = table();
        let mut queue = LeaseExpiryQueue::new();
        table.insert(7, 10, start);
        assert!(queue.expired(&table, at(start, 9_999)).is_empty());
        assert_eq!(table.renew(7, at(start, 5_000)), Some(10));
        assert!(queue.expired(&table, at(start, 14_999)).is_empty());
        assert_eq!(queue.expired(&table, at(start, 15_000)), vec![7]);
    }

    #[test]
    fn leases_expire_in_deadline_order() {
        let (table, start) = table();
        let mut queue = LeaseExpiryQueue::new();
        for (id, ttl) in [(1, 30), (2, 10), (3, 20), (4, 10), (5, 40)] {
            table.insert(id, ttl, start);
        }
        assert!(queue.expired(&table, at(start, 5_000)).is_empty());
        assert_eq!(queue.len(), 5);
        assert_eq!(queue.expired(&table, at(start, 25_000)), vec![2, 4, 3]);
        for id in [2, 4, 3] {
            table.remove(id);
        }
        assert_eq!(queue.expired(&table, at(start, 35_000)), vec![1]);
        assert_eq!(queue.len(), 2, "lease 1 stays queued until removed");
    }

    #[test]
    fn a_renewed_lease_is_pushed_back_to_its_new_deadline() {
        let (table, start) = table();
        let mut queue = LeaseExpiryQueue::new();
        table.insert(1, 10, start);
        table.insert(2, 12, start);
        assert!(queue.expired(&table, start).is_empty());
        // Renewed twice before its first deadline comes up: one re-queue.
        table.renew(1, at(start, 4_000));
        table.renew(1, at(start, 8_000));
        assert_eq!(queue.expired(&table, at(start, 12_000)), vec![2]);
        assert_eq!(queue.heap.len(), 2, "no duplicate entries");
        table.remove(2);
        table.renew(1, at(start, 17_000));
        assert!(queue.expired(&table, at(start, 18_000)).is_empty());
        assert_eq!(queue.expired(&table, at(start, 27_000)), vec![1]);
    }

    #[test]
    fn removed_leases_are_dropped() {
        let (table, start) = table();
        let mut queue = LeaseExpiryQueue::new();
        table.insert(1, 10, start);
        table.insert(2, 10, start);
        assert!(queue.expired(&table, start).is_empty());
        table.remove(1);
        // Inserted and removed between two checks: never queued.
        table.insert(3, 10, start);
        table.remove(3);
        assert_eq!(queue.expired(&table, at(start, 10_000)), vec![2]);
        assert!(!queue.queued.contains_key(&1) && !queue.queued.contains_key(&3));
        table.remove(2);
        assert!(queue.expired(&table, at(start, 20_000)).is_empty());
        assert!(queue.is_empty() && queue.heap.is_empty());
    }

    #[test]
    fn a_lease_inserted_after_the_queue_was_built_is_found() {
        let (table, start) = table();
        table.insert(1, 10, start);
        let mut queue = LeaseExpiryQueue::new();
        assert!(queue.expired(&table, at(start, 1_000)).is_empty());
        table.insert(2, 5, at(start, 2_000));
        assert_eq!(queue.expired(&table, at(start, 7_000)), vec![2]);
        assert_eq!(queue.expired(&table, at(start, 10_000)), vec![2, 1]);
    }

    #[test]
    fn a_lease_inserted_again_expires_at_its_new_deadline() {
        let (table, start) = table();
        let mut queue = LeaseExpiryQueue::new();
        table.insert(1, 60, start);
        assert!(queue.expired(&table, start).is_empty());
        // Revoked and granted again with a shorter TTL between two checks.
        table.remove(1);
        table.insert(1, 5, at(start, 1_000));
        assert_eq!(queue.expired(&table, at(start, 6_000)), vec![1]);
        table.remove(1);
        assert!(queue.expired(&table, at(start, 61_000)).is_empty());
        assert!(queue.is_empty());
    }

    #[test]
    fn a_lease_whose_revocation_failed_is_reported_again() {
        let (table, start) = table();
        let mut queue = LeaseExpiryQueue::new();
        table.insert(1, 10, start);
        assert_eq!(queue.expired(&table, at(start, 10_000)), vec![1]);
        // The revocation failed: the lease is still there.
        assert_eq!(queue.expired(&table, at(start, 10_500)), vec![1]);
        assert_eq!(queue.expired(&table, at(start, 11_000)), vec![1]);
        table.remove(1);
        assert!(queue.expired(&table, at(start, 11_500)).is_empty());
        assert!(queue.is_empty());
    }

    /// Random grants, renewals, revocations and checks, each check compared
    /// with a scan of the whole table.
    #[test]
    fn matches_a_full_scan_over_random_steps() {
        let seed = std::env::var("LEASE_TEST_SEED")
            .ok()
            .map(|text| text.parse().expect("LEASE_TEST_SEED must be a u64"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |elapsed| elapsed.as_nanos() as u64)
            });
        println!("matches_a_full_scan_over_random_steps: LEASE_TEST_SEED={seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        for round in 0..20 {
            let (table, start) = table();
            let mut queue = LeaseExpiryQueue::new();
            let mut now_millis = 0u64;
            // A small ID space, so IDs are revoked and granted again.
            let ids = rng.random_range(1..40i64);
            // How often a reported lease's revocation fails.
            let failure_percent = rng.random_range(0..50u32);
            for step in 0..2_000 {
                let now = at(start, now_millis);
                let id = rng.random_range(0..ids);
                match rng.random_range(0..100u32) {
                    0..30 => {
                        if !table.exists(id) || rng.random_bool(0.1) {
                            table.insert(id, rng.random_range(1..6), now);
                        }
                    }
                    30..60 => {
                        table.renew(id, now);
                    }
                    60..70 => {
                        table.remove(id);
                    }
                    _ => {
                        let scanned: BTreeSet<i64> = table
                            .ids()
                            .into_iter()
                            .filter(|&id| table.deadline_millis(id).unwrap() <= table.millis(now))
                            .collect();
                        let reported = queue.expired(&table, now);
                        let reported_set: BTreeSet<i64> = reported.iter().copied().collect();
                        assert_eq!(
                            reported.len(),
                            reported_set.len(),
                            "seed {seed}, round {round}, step {step}: reported twice: {reported:?}"
                        );
                        assert_eq!(
                            reported_set, scanned,
                            "seed {seed}, round {round}, step {step}, at {now_millis} ms"
                        );
                        let deadlines: Vec<i64> = reported
                            .iter()
                            .map(|&id| table.deadline_millis(id).unwrap())
                            .collect();
                        assert!(
                            deadlines.is_sorted(),
                            "seed {seed}, round {round}, step {step}: not in deadline order: {reported:?} {deadlines:?}"
                        );
                        // The invariant: every lease is queued at or
                        // before its deadline.
                        for id in table.ids() {
                            let queued = queue.queued.get(&id).copied();
                            assert!(
                                queued.is_some_and(
                                    |queued| queued <= table.deadline_millis(id).unwrap()
                                ),
                                "seed {seed}, round {round}, step {step}: lease {id} queued at {queued:?}"
                            );
                        }
                        for id in reported {
                            if rng.random_range(0..100) >= failure_percent {
                                table.remove(id);
                            }
                        }
                    }
                }
                now_millis += rng.random_range(0..700);
            }
        }
    }
}
