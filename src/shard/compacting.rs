//! A shard's compaction, freed in bounded steps between the worker's turns.
//!
//! `ShardCommand::Compact` logs the compaction record in the worker's turn
//! (the compaction point was already raised in the key space, so no read
//! can need what is freed); the history is then freed a step at a time,
//! each step at most [`COMPACTION_STEP_BUDGET`] units of work, with the
//! worker's command turns and a short pause (so the core serves its
//! connections) in between. A request therefore waits behind at most one
//! step, never behind a whole memtable's worth of versions.

use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_util::future::Either;

use super::ShardCommand;

use crate::store::memtable::{CompactionCursor, Memtable};

/// Work done per step: revision-index entries removed or versions visited.
/// Measured at about 0.5 µs a unit (a release build, 1M versions), so a
/// step takes about half a millisecond and a request queued behind one
/// barely notices it.
pub const COMPACTION_STEP_BUDGET: usize = 1024;

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

/// How long the worker waits between steps unless a command arrives.
///
/// The wait is what lets the core serve its connections: monoio polls its
/// sockets for readiness only when its task queue drains and it parks (a
/// task that merely re-queues itself keeps it from ever parking, starving
/// every connection on the core). The timer rounds up to a millisecond.
pub const STEP_PAUSE: Duration = Duration::from_micros(500);

/// What the worker got while pausing between steps.
pub enum Paused {
    /// A command arrived: run a turn now.
    Command(ShardCommand),
    /// The pause ran out: take the next step.
    Elapsed,
    /// Every sender is gone (shutdown).
    Closed,
}

/// Waits [`STEP_PAUSE`] for a command.
pub async fn pause(commands: &flume::Receiver<ShardCommand>) -> Paused {
    let received = std::pin::pin!(commands.recv_async());
    let elapsed = std::pin::pin!(monoio::time::sleep(STEP_PAUSE));
    // Dropping an unfinished `recv_async` loses no command.
    match futures_util::future::select(received, elapsed).await {
        Either::Left((Ok(command), _)) => Paused::Command(command),
        Either::Left((Err(_), _)) => Paused::Closed,
        Either::Right(_) => Paused::Elapsed,
    }
}
