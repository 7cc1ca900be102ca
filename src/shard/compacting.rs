//! A shard's compaction, freed in bounded steps between the worker's turns.
//!
//! `ShardCommand::Compact` logs the compaction record in the worker's turn
//! (the compaction point was already raised in the key space, so no read
//! can need what is freed); the history is then freed a step at a time,
//! each step at most [`COMPACTION_STEP_BUDGET`] units of work, with the
//! worker's command turns and the core's other tasks running in between.
//! A request therefore waits behind at most one step, never behind a whole
//! memtable's worth of versions.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_channel::oneshot;

use crate::store::memtable::{CompactionCursor, Memtable};

/// Work done per step: revision-index entries removed or versions visited.
/// About a couple of hundred microseconds, so a request queued behind a
/// step barely notices it.
pub const COMPACTION_STEP_BUDGET: usize = 2048;

/// The compaction a shard is freeing.
pub struct ShardCompaction {
    /// Where the next step resumes; its revision is the highest asked for.
    cursor: CompactionCursor,
    /// Callers that asked to be told when the history is freed (etcd's
    /// `physical` compaction).
    waiters: Vec<oneshot::Sender<()>>,
    /// When the current pass began, for the log line.
    started: Instant,
}

impl ShardCompaction {
    pub fn new(revision: i64) -> Self {
        Self {
            cursor: CompactionCursor::new(revision),
            waiters: Vec::new(),
            started: Instant::now(),
        }
    }

    /// A compaction asked for while this one runs. A higher revision
    /// restarts the pass from the beginning: keys already passed were
    /// compacted only to the lower point, and one pass at the higher point
    /// does both compactions' work.
    pub fn raise_to(&mut self, revision: i64) {
        if revision > self.cursor.revision() {
            self.cursor = CompactionCursor::new(revision);
            self.started = Instant::now();
        }
    }

    pub fn revision(&self) -> i64 {
        self.cursor.revision()
    }

    pub fn notify_when_freed(&mut self, done: oneshot::Sender<()>) {
        self.waiters.push(done);
    }

    /// One bounded step; returns true once the history is freed.
    pub fn step(&mut self, memtable: &Memtable) -> bool {
        memtable.compact_step(&mut self.cursor, COMPACTION_STEP_BUDGET)
    }

    /// Answers every waiter; called once `step` returned true.
    pub fn finish(self, shard: usize) {
        tracing::debug!(
            shard,
            revision = self.cursor.revision(),
            took = ?self.started.elapsed(),
            "finished scheduled compaction"
        );
        for waiter in self.waiters {
            // The caller may have gone away; the compaction stands.
            let _ = waiter.send(());
        }
    }
}

/// Lets the core's other tasks run before the worker continues: ready on
/// the second poll, having woken itself on the first (so it goes to the
/// back of the executor's queue).
pub fn yield_now() -> impl Future<Output = ()> {
    YieldNow { yielded: false }
}

struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        context.waker().wake_by_ref();
        Poll::Pending
    }
}
