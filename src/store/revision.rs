//! One global revision across all shards: the sequencer and the applied
//! watermark (design §3).
//!
//! Every write that changes something takes exactly one revision from the
//! node-wide sequencer. Writes run on several cores at once, so revisions are
//! *taken* in order but *applied* out of order. Readers must never see
//! revision R while some revision below R is taken but not yet applied, or a
//! multi-shard read would not be a consistent cut. The watermark is the
//! highest revision below which everything is applied; readers never look
//! past it.
//!
//! # How the watermark stays safe
//!
//! Each core owns one *pending floor* slot: a lower bound of every revision
//! that core has taken and not yet finished applying (`i64::MAX` = none).
//! A core takes a revision like this:
//!
//! 1. if it has nothing pending, store `floor = current + 1` (SeqCst);
//! 2. `revision = current.fetch_add(1) + 1` (SeqCst), so `revision >= floor`.
//!
//! A reader computes the watermark like this:
//!
//! a. `c = current` (SeqCst);
//! b. `m = min(floor of every slot)` (SeqCst);
//! c. `watermark = min(c, m - 1)`.
//!
//! Claim: the watermark never reaches a revision R that is taken but not yet
//! finished. If the reader's load (a) does not observe the `fetch_add` that
//! produced R, then `c < R` and the watermark is below R. If it does, then in
//! the single SeqCst order step 1 precedes step 2 precedes (a) precedes (b),
//! so (b) observes a floor `<= R` for the taking core (a floor is only raised
//! when the core's pending set empties, i.e. after R is finished), and the
//! watermark is at most `R - 1`. The stress test below checks this on real
//! threads.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crossbeam_utils::CachePadded;
use event_listener::Event;

use super::applied_revisions::AppliedRevisions;

/// No revision pending on a slot.
const NO_PENDING: i64 = i64::MAX;

/// The node-wide revision sequencer and the per-core pending floors.
pub struct RevisionClock {
    /// Highest revision handed out. etcd starts an empty store at revision 1.
    current: CachePadded<AtomicI64>,
    /// One slot per core; padded so cores never share a cache line on the
    /// write path.
    pending_floors: Box<[CachePadded<AtomicI64>]>,
    /// Woken whenever a slot's floor rises, so linearizable readers and
    /// writers waiting for their revision to become visible can re-check.
    floor_raised: Event,
    /// On a cluster member, the complete prefix of revisions applied here
    /// (`applied`'s `readable_through`): the watermark never passes it.
    /// `i64::MAX` on a server alone, whose own floors say it all.
    readable_through: CachePadded<AtomicI64>,
    /// A cluster member's record of applied parts and voids; `None` alone.
    applied: Option<std::sync::Mutex<AppliedRevisions>>,
}

impl RevisionClock {
    /// A clock whose last handed-out revision is `current`, with one pending
    /// slot per core.
    pub fn new(current: i64, cores: usize) -> Arc<Self> {
        let pending_floors = (0..cores)
            .map(|_| CachePadded::new(AtomicI64::new(NO_PENDING)))
            .collect();
        Arc::new(Self {
            current: CachePadded::new(AtomicI64::new(current)),
            pending_floors,
            floor_raised: Event::new(),
            readable_through: CachePadded::new(AtomicI64::new(i64::MAX)),
            applied: None,
        })
    }

    /// The clock of a cluster member with `shard_count` groups, whose
    /// revisions through `readable_through` are complete: readers stop at
    /// the complete prefix of what its groups applied
    /// (`applied_revisions`).
    pub fn for_cluster(
        current: i64,
        cores: usize,
        shard_count: usize,
        readable_through: i64,
    ) -> Arc<Self> {
        let pending_floors = (0..cores)
            .map(|_| CachePadded::new(AtomicI64::new(NO_PENDING)))
            .collect();
        Arc::new(Self {
            current: CachePadded::new(AtomicI64::new(current.max(readable_through))),
            pending_floors,
            floor_raised: Event::new(),
            readable_through: CachePadded::new(AtomicI64::new(readable_through)),
            applied: Some(std::sync::Mutex::new(AppliedRevisions::new(
                shard_count,
                readable_through,
            ))),
        })
    }

    /// Whether this is a cluster member's clock.
    pub fn is_cluster_member(&self) -> bool {
        self.applied.is_some()
    }

    /// A cluster member applied one of `parts` parts of `revision`.
    pub fn part_applied(&self, revision: i64, parts: u32) {
        self.record_applied(|applied| applied.part_applied(revision, parts));
    }

    /// A cluster member's group `shard` applied the void of `from..=to`.
    pub fn void_applied(&self, shard: u32, from: i64, to: i64) {
        self.record_applied(|applied| applied.void_applied(shard, from, to));
    }

    /// A group of this cluster member installed its leader's snapshot
    /// through `revision`: every revision up to it is complete once the
    /// member's other groups applied what their leaders committed
    /// (`floor_to_confirm`, `floor_confirmed`).
    pub fn await_floor(&self, revision: i64) {
        self.record_applied(|applied| {
            applied.await_floor(revision);
            false
        });
    }

    /// The floor a snapshot left to confirm, if any (0: none).
    pub fn floor_to_confirm(&self) -> i64 {
        self.applied.as_ref().map_or(0, |applied| {
            applied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .floor_to_confirm()
        })
    }

    /// Every group applied through a commit index its leader confirmed
    /// after the floor `revision` was set: the readable prefix may pass it.
    pub fn floor_confirmed(&self, revision: i64) {
        self.record_applied(|applied| applied.floor_confirmed(revision));
    }

    /// Whether `revision` was voided after a failover (its write did not
    /// happen). Always `false` on a server alone.
    pub fn was_voided(&self, revision: i64) -> bool {
        self.applied.as_ref().is_some_and(|applied| {
            applied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .was_voided(revision)
        })
    }

    /// The complete prefix on a cluster member (`i64::MAX` alone).
    pub fn readable_through(&self) -> i64 {
        self.readable_through.load(Ordering::SeqCst)
    }

    fn record_applied(&self, change: impl FnOnce(&mut AppliedRevisions) -> bool) {
        let Some(applied) = &self.applied else {
            return;
        };
        let mut applied = applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if change(&mut applied) {
            self.readable_through
                .store(applied.readable_through(), Ordering::SeqCst);
            drop(applied);
            self.floor_raised.notify(usize::MAX);
        }
    }

    /// The highest revision handed out so far (possibly not yet applied).
    pub fn current(&self) -> i64 {
        self.current.load(Ordering::SeqCst)
    }

    /// The highest revision R such that every revision `<= R` is applied.
    ///
    /// On a cluster member that is the readable prefix of what its groups
    /// applied, and nothing else: a revision this member took is in it
    /// only once every part of it is applied, like any other. Its pending
    /// floors must not count there: a revision it took as lead member and
    /// lost may be taken again by the next one, and the floor would hold
    /// its readers below writes acknowledged since (found by the
    /// linearizable reads of `worker_cluster_tests`).
    pub fn watermark(&self) -> i64 {
        let current = self.current.load(Ordering::SeqCst);
        if self.applied.is_some() {
            return current.min(self.readable_through.load(Ordering::SeqCst));
        }
        let lowest_pending = self
            .pending_floors
            .iter()
            .map(|floor| floor.load(Ordering::SeqCst))
            .min()
            .unwrap_or(NO_PENDING);
        current.min(lowest_pending.saturating_sub(1))
    }

    /// Waits until every revision `<= target` is applied, and returns the
    /// watermark then (which is `>= target`).
    pub async fn wait_applied(&self, target: i64) -> i64 {
        loop {
            let watermark = self.watermark();
            if watermark >= target {
                return watermark;
            }
            let listener = self.floor_raised.listen();
            // Re-check after registering: a floor raised between the check
            // above and `listen` would otherwise be missed.
            let watermark = self.watermark();
            if watermark >= target {
                return watermark;
            }
            listener.await;
        }
    }

    /// A cluster member applied `revision`, which a leader took: the
    /// sequencer moves up to it, so that when this member takes revisions
    /// itself it starts above every revision in its logs (readers are held
    /// back by `readable_through`, not by this).
    pub fn observe_applied(&self, revision: i64) {
        self.current.fetch_max(revision, Ordering::SeqCst);
        self.floor_raised.notify(usize::MAX);
    }

    /// The slot through which core `core` takes revisions. Exactly one
    /// `RevisionSlot` may exist per core: the slot's floor has one writer.
    pub fn slot(self: &Arc<Self>, core: usize) -> RevisionSlot {
        assert!(core < self.pending_floors.len());
        RevisionSlot {
            clock: self.clone(),
            core,
            pending: Rc::new(RefCell::new(BTreeSet::new())),
        }
    }
}

/// A core's handle for taking revisions. Not `Send`: it lives on its core.
#[derive(Clone)]
pub struct RevisionSlot {
    clock: Arc<RevisionClock>,
    core: usize,
    /// Revisions this core has taken and not finished applying. Its minimum
    /// is what the core's floor publishes.
    pending: Rc<RefCell<BTreeSet<i64>>>,
}

impl RevisionSlot {
    pub fn clock(&self) -> &Arc<RevisionClock> {
        &self.clock
    }

    /// Takes the next revision. Until the returned guard is dropped, no
    /// reader's watermark reaches it.
    pub fn take(&self) -> PendingRevision {
        let mut pending = self.pending.borrow_mut();
        let floor = &self.clock.pending_floors[self.core];
        if pending.is_empty() {
            // Step 1 of the protocol in the module docs.
            floor.store(
                self.clock.current.load(Ordering::SeqCst) + 1,
                Ordering::SeqCst,
            );
        }
        // Step 2.
        let revision = self.clock.current.fetch_add(1, Ordering::SeqCst) + 1;
        pending.insert(revision);
        PendingRevision {
            slot: self.clone(),
            revision,
            completed: false,
        }
    }

    fn finish(&self, revision: i64) {
        let mut pending = self.pending.borrow_mut();
        pending.remove(&revision);
        let new_floor = pending.first().copied().unwrap_or(NO_PENDING);
        self.clock.pending_floors[self.core].store(new_floor, Ordering::SeqCst);
        drop(pending);
        self.clock.floor_raised.notify(usize::MAX);
    }
}

/// A revision that has been taken. [`complete`](Self::complete) it only
/// after every change at this revision is durable and in the memtables.
///
/// Invariant: a taken revision is always completed. Recovery relies on it
/// (a gap in the logged revisions cuts history there), so dropping one
/// without completing it means a write was lost half way: the process
/// aborts rather than let the watermark pass it.
pub struct PendingRevision {
    slot: RevisionSlot,
    revision: i64,
    completed: bool,
}

impl PendingRevision {
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Marks the revision applied: readers may now see it.
    pub fn complete(mut self) {
        self.completed = true;
        self.slot.finish(self.revision);
    }
}

impl Drop for PendingRevision {
    fn drop(&mut self) {
        if !self.completed {
            tracing::error!(
                revision = self.revision,
                "a taken revision was abandoned before it was logged; aborting to keep the log gap-free"
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn watermark_waits_for_out_of_order_finish() {
        let clock = RevisionClock::new(1, 2);
        let slot0 = clock.slot(0);
        let slot1 = clock.slot(1);
        let first = slot0.take();
        let second = slot1.take();
        assert_eq!((first.revision(), second.revision()), (2, 3));
        assert_eq!(clock.watermark(), 1);
        second.complete();
        assert_eq!(clock.watermark(), 1, "revision 2 is still pending");
        first.complete();
        assert_eq!(clock.watermark(), 3);
    }

    #[test]
    fn same_core_pending_set_keeps_lowest_floor() {
        let clock = RevisionClock::new(10, 1);
        let slot = clock.slot(0);
        let a = slot.take();
        let b = slot.take();
        a.complete();
        assert_eq!(clock.watermark(), 11);
        b.complete();
        assert_eq!(clock.watermark(), 12);
    }

    /// Stress: writers on several threads publish "applied" flags for their
    /// revisions before finishing; readers check that every revision at or
    /// below any watermark they compute is flagged applied.
    #[test]
    fn watermark_never_passes_unapplied_revision_under_stress() {
        const THREADS: usize = 3;
        const PER_THREAD: usize = 20_000;
        let clock = RevisionClock::new(0, THREADS);
        let applied: Arc<Vec<AtomicBool>> = Arc::new(
            (0..=THREADS * PER_THREAD + 1)
                .map(|_| AtomicBool::new(false))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (clock, applied, stop) = (clock.clone(), applied.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut checked = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let watermark = clock.watermark();
                    for revision in (checked + 1)..=(watermark.max(0) as usize) {
                        assert!(
                            applied[revision].load(Ordering::SeqCst),
                            "watermark {watermark} passed unapplied revision {revision}"
                        );
                    }
                    checked = checked.max(watermark.max(0) as usize);
                }
            })
        };
        let writers: Vec<_> = (0..THREADS)
            .map(|core| {
                let (clock, applied) = (clock.clone(), applied.clone());
                std::thread::spawn(move || {
                    let slot = clock.slot(core);
                    let mut held = Vec::new();
                    for i in 0..PER_THREAD {
                        held.push(slot.take());
                        // Finish out of order now and then, as a coordinator would.
                        if i % 3 != 0 {
                            for pending in held.drain(..).rev() {
                                applied[pending.revision() as usize].store(true, Ordering::SeqCst);
                                pending.complete();
                            }
                        }
                    }
                    for pending in held {
                        applied[pending.revision() as usize].store(true, Ordering::SeqCst);
                        pending.complete();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer thread");
        }
        stop.store(true, Ordering::SeqCst);
        reader.join().expect("reader thread");
        assert_eq!(clock.watermark(), (THREADS * PER_THREAD) as i64);
    }
}
