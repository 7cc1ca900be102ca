//! What a cluster member may read: the longest prefix of revisions that are
//! complete here (design §6, "Watermark on followers").
//!
//! On a cluster member, revisions are applied by S Raft groups, each in its
//! own log order, so they arrive out of order and a multi-shard write
//! arrives in parts. A revision is *complete* on this member when every
//! part of it is applied (a record lists its participants; none listed:
//! one part), or when the lead member's decision to void it is applied in
//! every group. Readers stop at `readable_through`, the highest R with
//! every revision `<= R` complete, so a read is a consistent cut on every
//! member alike and an idle group holds nothing back (no revision waits
//! for it).
//!
//! A revision the failed lead member took may be in no log, or in some of
//! its participants' logs only. It was never acknowledged (acknowledging R
//! waits until R is readable, which needs every part committed). The new
//! lead member voids every revision above its own readable prefix up to
//! the highest it has seen, in every group; applying the void in a group
//! removes that group's versions at those revisions. A void counts only
//! once applied in every group: before that, a group that has not applied
//! it may still apply a part of a voided revision from its log.
//!
//! Pure: no I/O, no locking (the clock wraps it in a mutex).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Void ranges remembered after they were decided, so a writer waiting on
/// a revision learns that its write was voided (a failover happens rarely
/// and voids a few in-flight revisions at a time).
const DECIDED_VOIDS_KEPT: usize = 1024;

#[derive(Debug)]
pub struct AppliedRevisions {
    /// Groups (shards) per member: a void counts once all applied it.
    shard_count: usize,
    /// Every revision at or below it is complete.
    readable_through: i64,
    /// Revisions above `readable_through` with some part applied:
    /// `(parts applied, parts expected)`.
    partial: BTreeMap<i64, (u32, u32)>,
    /// Void decisions `(from, to)` not yet applied in every group, with
    /// the groups that applied them.
    voids_in_progress: BTreeMap<(i64, i64), BTreeSet<u32>>,
    /// Void decisions applied in every group, newest last.
    decided_voids: VecDeque<(i64, i64)>,
    /// The highest revision a group's installed snapshot covers that the
    /// prefix has not passed yet (0: none): complete once every group has
    /// applied what its leader had committed (`shard::snapshot_install`).
    floor_to_confirm: i64,
}

impl AppliedRevisions {
    /// A member of `shard_count` groups whose revisions through
    /// `readable_through` are complete (recovery's prefix).
    pub fn new(shard_count: usize, readable_through: i64) -> Self {
        Self {
            shard_count,
            readable_through,
            partial: BTreeMap::new(),
            voids_in_progress: BTreeMap::new(),
            decided_voids: VecDeque::new(),
            floor_to_confirm: 0,
        }
    }

    pub fn readable_through(&self) -> i64 {
        self.readable_through
    }

    /// One part of `revision` (of `parts`) was applied. Returns whether
    /// the readable prefix grew.
    pub fn part_applied(&mut self, revision: i64, parts: u32) -> bool {
        if revision <= self.readable_through {
            // Replay of what a snapshot or the recovered prefix covers.
            return false;
        }
        let entry = self.partial.entry(revision).or_insert((0, parts.max(1)));
        entry.0 += 1;
        self.advance()
    }

    /// Group `shard` applied the decision that `from..=to` is void.
    /// Returns whether the readable prefix grew.
    pub fn void_applied(&mut self, shard: u32, from: i64, to: i64) -> bool {
        if to <= self.readable_through || from > to {
            return false;
        }
        let groups = self.voids_in_progress.entry((from, to)).or_default();
        groups.insert(shard);
        if groups.len() < self.shard_count {
            return false;
        }
        self.voids_in_progress.remove(&(from, to));
        if self.decided_voids.len() == DECIDED_VOIDS_KEPT {
            self.decided_voids.pop_front();
        }
        self.decided_voids.push_back((from, to));
        // Parts of voided revisions will never complete: forget them.
        let voided: Vec<i64> = self.partial.range(from..=to).map(|(r, _)| *r).collect();
        for revision in voided {
            self.partial.remove(&revision);
        }
        self.advance()
    }

    /// A group installed a snapshot through `revision` (see the field).
    pub fn await_floor(&mut self, revision: i64) {
        if revision > self.readable_through {
            self.floor_to_confirm = self.floor_to_confirm.max(revision);
        }
    }

    pub fn floor_to_confirm(&self) -> i64 {
        self.floor_to_confirm
    }

    /// Every revision through `revision` is complete here: moves the
    /// prefix there (and on over what is complete after it). Parts and
    /// voids at or below it are settled with it.
    pub fn floor_confirmed(&mut self, revision: i64) -> bool {
        if self.floor_to_confirm <= revision {
            self.floor_to_confirm = 0;
        }
        if revision <= self.readable_through {
            return false;
        }
        self.readable_through = revision;
        self.partial = self.partial.split_off(&(revision + 1));
        self.voids_in_progress.retain(|(_, to), _| *to > revision);
        self.advance();
        true
    }

    /// Whether `revision` was voided by a decision applied in every group
    /// (among the last `DECIDED_VOIDS_KEPT` decisions).
    pub fn was_voided(&self, revision: i64) -> bool {
        self.decided_voids
            .iter()
            .any(|(from, to)| (*from..=*to).contains(&revision))
    }

    fn decided_void_covering(&self, revision: i64) -> Option<i64> {
        self.decided_voids
            .iter()
            .filter(|(from, to)| (*from..=*to).contains(&revision))
            .map(|(_, to)| *to)
            .max()
    }

    /// Moves `readable_through` over every complete revision after it.
    fn advance(&mut self) -> bool {
        let before = self.readable_through;
        loop {
            let next = self.readable_through + 1;
            if let Some(to) = self.decided_void_covering(next) {
                self.readable_through = to;
                let passed: Vec<i64> = self.partial.range(..=to).map(|(r, _)| *r).collect();
                for revision in passed {
                    self.partial.remove(&revision);
                }
                continue;
            }
            match self.partial.get(&next) {
                Some((applied, expected)) if applied >= expected => {
                    self.partial.remove(&next);
                    self.readable_through = next;
                }
                _ => break,
            }
        }
        self.readable_through > before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_parts_complete_in_order() {
        let mut applied = AppliedRevisions::new(2, 10);
        assert!(!applied.part_applied(12, 1));
        assert!(!applied.part_applied(11, 2), "one of two parts");
        assert_eq!(applied.readable_through(), 10);
        assert!(applied.part_applied(11, 2));
        assert_eq!(applied.readable_through(), 12);
        assert!(!applied.part_applied(5, 1), "below the prefix: replay");
    }

    #[test]
    fn a_void_counts_once_every_group_applied_it() {
        let mut applied = AppliedRevisions::new(3, 10);
        applied.part_applied(11, 2); // half of a write the old leader took
        applied.part_applied(13, 1);
        assert!(!applied.void_applied(0, 11, 13));
        assert!(!applied.void_applied(1, 11, 13));
        assert!(!applied.was_voided(12));
        assert!(applied.void_applied(2, 11, 13));
        assert_eq!(applied.readable_through(), 13);
        assert!(applied.was_voided(11) && applied.was_voided(13));
        assert!(!applied.was_voided(14));
        // The new leader's writes continue above the void.
        assert!(applied.part_applied(14, 1));
        assert_eq!(applied.readable_through(), 14);
    }

    #[test]
    fn a_confirmed_snapshot_floor_settles_everything_below_it() {
        let mut applied = AppliedRevisions::new(2, 10);
        applied.part_applied(11, 2); // one part here, the other in the snapshot
        applied.void_applied(0, 12, 12); // the other group's void was in it too
        applied.part_applied(16, 1);
        applied.await_floor(15);
        assert_eq!(applied.floor_to_confirm(), 15);
        assert_eq!(applied.readable_through(), 10, "not before it is confirmed");
        assert!(applied.floor_confirmed(15));
        assert_eq!(applied.readable_through(), 16, "and on over what follows");
        assert_eq!(applied.floor_to_confirm(), 0);
        // A floor the prefix already passed is nothing to confirm.
        applied.await_floor(14);
        assert_eq!(applied.floor_to_confirm(), 0);
    }

    #[test]
    fn a_void_decided_again_after_a_crash_still_counts() {
        // A lead member voided 11..=12 in one group and failed; the next
        // one voids 11..=15 everywhere.
        let mut applied = AppliedRevisions::new(2, 10);
        applied.void_applied(0, 11, 12);
        applied.part_applied(15, 1);
        applied.void_applied(0, 11, 15);
        assert_eq!(applied.readable_through(), 10);
        assert!(applied.void_applied(1, 11, 15));
        assert_eq!(applied.readable_through(), 15);
    }
}
