//! The lease table: every durable lease, its TTL and its deadline.
//!
//! Shared by all cores. Keep-alives from any core renew a deadline with one
//! atomic store; grants and revocations come from shard workers once their
//! log records are durable. Time is passed in, never read here, so tests
//! drive it. Expiry is found by the expiry task's own deadline heap
//! ([`super::expiry`]); the table only hands it the IDs of new leases.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use crossbeam_skiplist::{SkipMap, SkipSet};

use super::id::LeaseIdGenerator;
use super::{MIN_LEASE_TTL_SECONDS, home_shard};
use crate::snapshot::SnapshotLease;
use crate::store::shard_map::{ShardId, ShardMap};

struct LeaseState {
    /// The TTL granted (after raising it to the minimum).
    ttl_seconds: i64,
    /// Milliseconds after the table's epoch at which the lease expires.
    deadline_millis: AtomicI64,
}

/// What `LeaseTimeToLive` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Whole seconds left, rounded down (etcd: `int64(Remaining().Seconds())`).
    pub remaining_seconds: i64,
    pub granted_ttl_seconds: i64,
}

pub struct LeaseTable {
    leases: SkipMap<i64, LeaseState>,
    /// Deadlines count from here (a monotonic clock: wall-clock jumps must
    /// not expire leases).
    epoch: Instant,
    ids: LeaseIdGenerator,
    /// Leases inserted since the expiry task last looked: how a new lease
    /// reaches its heap without a lock on the grant path. A lock-free set
    /// from the skiplist crate we already use (a `SegQueue` would need
    /// `crossbeam-queue` as a new dependency); keyed by ID alone, since the
    /// task reads the current deadline from `leases` anyway, so inserting a
    /// lease twice before it is drained leaves one entry.
    inserted: SkipSet<i64>,
}

/// The TTL a grant of `requested` seconds gets.
pub fn effective_ttl(requested: i64) -> i64 {
    requested.max(MIN_LEASE_TTL_SECONDS)
}

impl LeaseTable {
    pub fn new(epoch: Instant, ids: LeaseIdGenerator) -> Self {
        Self {
            leases: SkipMap::new(),
            epoch,
            ids,
            inserted: SkipSet::new(),
        }
    }

    /// A table whose epoch is now, with etcd-style IDs for `member_id`.
    pub fn for_member(member_id: u64) -> Self {
        let unix_millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        Self::new(
            Instant::now(),
            LeaseIdGenerator::new(member_id, unix_millis),
        )
    }

    /// `now` as milliseconds after the table's epoch, the unit deadlines
    /// are kept in.
    pub(super) fn millis(&self, now: Instant) -> i64 {
        now.saturating_duration_since(self.epoch).as_millis() as i64
    }

    fn deadline(&self, ttl_seconds: i64, now: Instant) -> i64 {
        self.millis(now)
            .saturating_add(ttl_seconds.saturating_mul(1000))
    }

    /// An ID for a grant that did not choose one; not currently in use.
    pub fn new_id(&self) -> i64 {
        loop {
            let id = self.ids.next();
            if !self.exists(id) {
                return id;
            }
        }
    }

    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Adds a granted (or restored) lease with its full TTL from `now`.
    /// Re-adding an existing lease (replaying a snapshot and then its WAL)
    /// just restarts its TTL.
    ///
    /// Every lease enters through here (grants, and snapshot and WAL replay
    /// at startup), so every lease is announced to the expiry task.
    pub fn insert(&self, id: i64, ttl_seconds: i64, now: Instant) {
        self.leases.insert(
            id,
            LeaseState {
                ttl_seconds,
                deadline_millis: AtomicI64::new(self.deadline(ttl_seconds, now)),
            },
        );
        // After the lease is in `leases`, so whoever takes this ID finds it.
        self.inserted.insert(id);
    }

    /// Takes one lease ID inserted since the last call (for the expiry
    /// task, the only caller). The lease may have been removed since.
    pub(super) fn take_inserted(&self) -> Option<i64> {
        self.inserted.pop_front().map(|entry| *entry.value())
    }

    /// The lease's current deadline (milliseconds after the epoch).
    pub(super) fn deadline_millis(&self, id: i64) -> Option<i64> {
        self.leases
            .get(&id)
            .map(|entry| entry.value().deadline_millis.load(Ordering::Acquire))
    }

    /// Removes a revoked lease; false if it was not there.
    pub fn remove(&self, id: i64) -> bool {
        self.leases.remove(&id).is_some()
    }

    /// A keep-alive: restarts the lease's TTL and returns it. `None` when
    /// the lease does not exist or already expired (it is about to be
    /// revoked; etcd answers TTL 0 then too).
    pub fn renew(&self, id: i64, now: Instant) -> Option<i64> {
        let entry = self.leases.get(&id)?;
        let state = entry.value();
        let now_millis = self.millis(now);
        if state.deadline_millis.load(Ordering::Acquire) <= now_millis {
            return None;
        }
        state
            .deadline_millis
            .store(self.deadline(state.ttl_seconds, now), Ordering::Release);
        Some(state.ttl_seconds)
    }

    /// Gives every lease its full TTL from `now`: a cluster's new lead
    /// member does, since keep-alives went to the previous one (etcd's
    /// `lessor.Promote`).
    pub fn renew_all(&self, now: Instant) {
        for entry in self.leases.iter() {
            let state = entry.value();
            state
                .deadline_millis
                .store(self.deadline(state.ttl_seconds, now), Ordering::Release);
        }
    }

    pub fn status(&self, id: i64, now: Instant) -> Option<LeaseStatus> {
        let entry = self.leases.get(&id)?;
        let state = entry.value();
        let left_millis = state.deadline_millis.load(Ordering::Acquire) - self.millis(now);
        Some(LeaseStatus {
            remaining_seconds: left_millis.max(0) / 1000,
            granted_ttl_seconds: state.ttl_seconds,
        })
    }

    /// Every lease ID, ascending.
    pub fn ids(&self) -> Vec<i64> {
        self.leases.iter().map(|entry| *entry.key()).collect()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Every lease with its granted TTL, by ID (for a backup).
    pub fn all_leases(&self) -> Vec<SnapshotLease> {
        self.leases
            .iter()
            .map(|entry| SnapshotLease {
                id: *entry.key(),
                ttl_seconds: entry.value().ttl_seconds,
            })
            .collect()
    }

    /// The leases `shard` is home to, for its snapshot.
    pub fn leases_homed_on(&self, shard_map: &ShardMap, shard: ShardId) -> Vec<SnapshotLease> {
        self.leases
            .iter()
            .filter(|entry| home_shard(shard_map, *entry.key()) == shard)
            .map(|entry| SnapshotLease {
                id: *entry.key(),
                ttl_seconds: entry.value().ttl_seconds,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn table() -> (LeaseTable, Instant) {
        let epoch = Instant::now();
        (LeaseTable::new(epoch, LeaseIdGenerator::new(1, 0)), epoch)
    }

    #[test]
    fn an_expired_lease_cannot_be_renewed() {
        let (table, start) = table();
        table.insert(7, 10, start);
        assert_eq!(table.renew(7, start + Duration::from_secs(5)), Some(10));
        assert_eq!(
            table.deadline_millis(7),
            Some(15_000),
            "a renewal restarts the TTL"
        );
        assert_eq!(
            table.renew(7, start + Duration::from_secs(15)),
            None,
            "an expired lease cannot be renewed"
        );
        assert_eq!(table.deadline_millis(7), Some(15_000));
    }

    #[test]
    fn status_rounds_remaining_time_down() {
        let (table, start) = table();
        table.insert(1, 30, start);
        let status = table.status(1, start + Duration::from_millis(500)).unwrap();
        assert_eq!(status.remaining_seconds, 29);
        assert_eq!(status.granted_ttl_seconds, 30);
        assert_eq!(table.status(2, start), None);
    }

    #[test]
    fn grants_below_the_minimum_are_raised() {
        assert_eq!(effective_ttl(1), MIN_LEASE_TTL_SECONDS);
        assert_eq!(effective_ttl(-5), MIN_LEASE_TTL_SECONDS);
        assert_eq!(effective_ttl(60), 60);
    }

    #[test]
    fn removal_and_ids() {
        let (table, start) = table();
        table.insert(5, 10, start);
        table.insert(3, 10, start);
        assert_eq!(table.ids(), vec![3, 5]);
        assert!(table.remove(3));
        assert!(!table.remove(3));
        assert_eq!(table.len(), 1);
        let fresh = table.new_id();
        assert!(fresh > 0 && !table.exists(fresh));
    }
}
