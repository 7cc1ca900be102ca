//! When a shard worker snapshots, and what it does once a snapshot is
//! written: the schedule (every `--snapshot-count` entries, or on request),
//! starting the snapshot thread, releasing the WAL below a written snapshot
//! and removing the released segments off the worker's path.

use futures_channel::oneshot;

use super::{ShardCommand, ShardWorker, snapshotting};
use crate::wal::{ReleasedSegments, StorageDevice};

/// When and where a shard snapshots (see `snapshotting`).
pub struct SnapshotSchedule {
    /// Entries logged between snapshots (etcd's `--snapshot-count`).
    pub every_entries: u64,
    pub directory: std::path::PathBuf,
    /// The shard's own command channel, for the snapshot thread's report.
    pub report_to: flume::Sender<ShardCommand>,
    /// `(raft index, revision)` of each command logged since the last
    /// snapshot (revision 0 for entries without one); the log is in
    /// revision order.
    pub(super) logged: std::collections::VecDeque<(u64, i64)>,
    pub(super) entries_since_snapshot: u64,
    pub(super) in_flight: bool,
    /// Raft index the newest snapshot covers (0: none): a requested
    /// snapshot that would cover no more is not written.
    pub(super) last_snapshot_index: u64,
    /// Requests for a snapshot that starts after they arrived.
    pub(super) requested: Vec<oneshot::Sender<Result<(), String>>>,
    /// Requests the snapshot in flight answers.
    pub(super) answered_by_in_flight: Vec<oneshot::Sender<Result<(), String>>>,
    /// The task removing the WAL segments the newest snapshot released, if
    /// it may still run; the next such task waits for it.
    pub(super) removing: Option<monoio::task::JoinHandle<()>>,
}

impl SnapshotSchedule {
    pub fn new(
        every_entries: u64,
        directory: std::path::PathBuf,
        report_to: flume::Sender<ShardCommand>,
    ) -> Self {
        Self {
            every_entries,
            directory,
            report_to,
            logged: Default::default(),
            entries_since_snapshot: 0,
            in_flight: false,
            last_snapshot_index: 0,
            requested: Vec::new(),
            answered_by_in_flight: Vec::new(),
            removing: None,
        }
    }

    /// An entry logged at `index` (proposed here, or applied from another
    /// leader): it counts toward the next snapshot. An entry at an index
    /// already recorded replaces it and everything after (a new leader
    /// overwrote this member's uncommitted tail).
    ///
    /// A void counts as its last revision: a snapshot covers it only once
    /// the readable prefix passed it, so a follower that installs the
    /// snapshot needs nothing the void decided.
    pub(super) fn logged_entry(
        &mut self,
        index: u64,
        record: &super::log_entry::ShardCommandRecord,
    ) {
        while self
            .logged
            .back()
            .is_some_and(|(logged, _)| *logged >= index)
        {
            self.logged.pop_back();
        }
        let revision = record.revision.max(record.void_to);
        self.logged.push_back((index, revision));
        self.entries_since_snapshot += 1;
    }

    /// A configuration change applied at `index`: a snapshot may cover it
    /// as soon as it covers what precedes it (it changes no key), so a
    /// snapshot for a member just added can name it. Kept in index order.
    pub(super) fn logged_conf_change(&mut self, index: u64) {
        if index <= self.last_snapshot_index {
            return;
        }
        let position = self.logged.partition_point(|(logged, _)| *logged < index);
        if self
            .logged
            .get(position)
            .is_none_or(|(logged, _)| *logged != index)
        {
            self.logged.insert(position, (index, 0));
        }
    }

    /// Asks for a snapshot as soon as one can start (none is answered).
    pub(super) fn request(&mut self) {
        let (done, _) = oneshot::channel();
        self.requested.push(done);
    }

    /// Records the Raft index the snapshot loaded at startup covers.
    pub fn after_snapshot(mut self, raft_index: u64) -> Self {
        self.last_snapshot_index = raft_index;
        self
    }
}

impl<D: StorageDevice> ShardWorker<D> {
    /// Starts a snapshot thread once enough entries were logged, or when
    /// one was requested: it covers the log through the last entry at or
    /// below the node's watermark.
    pub(super) fn maybe_snapshot(&mut self) {
        let schedule = &mut self.snapshots;
        let requested = !schedule.requested.is_empty();
        if schedule.in_flight
            || (!requested && schedule.entries_since_snapshot < schedule.every_entries)
        {
            return;
        }
        let watermark = self.space.clock().watermark();
        let covered = schedule
            .logged
            .iter()
            .take_while(|(_, revision)| *revision <= watermark)
            .last()
            .map(|(index, _)| *index);
        let covered = match (covered, schedule.logged.front()) {
            (Some(index), _) => Some(index),
            (None, _) if !requested => None,
            // Entries logged before this run (replayed at startup, so at or
            // below the watermark) or without a revision: all covered.
            (None, None) => Some(self.group.last_index()),
            (None, Some((first, _))) => Some(first - 1),
        };
        let covered = covered.filter(|index| *index > schedule.last_snapshot_index);
        let raft_term = covered.and_then(|index| self.group.term_of(index));
        let (Some(raft_index), Some(raft_term)) = (covered, raft_term) else {
            // Nothing a new snapshot would release: the request is done.
            for done in schedule.requested.drain(..) {
                let _ = done.send(Ok(()));
            }
            return;
        };
        let point = snapshotting::SnapshotPoint {
            raft_index,
            raft_term,
            revision: watermark,
        };
        let (space, shard, directory, report_to) = (
            self.space.clone(),
            self.shard,
            schedule.directory.clone(),
            schedule.report_to.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("metastore-snapshot-{shard}"))
            .spawn(move || {
                snapshotting::run_in_background();
                let result = snapshotting::write_shard_snapshot(&space, shard, point, &directory);
                let _ = report_to.send(ShardCommand::SnapshotWritten { raft_index, result });
            });
        match spawned {
            Ok(_) => {
                schedule.in_flight = true;
                schedule.entries_since_snapshot = 0;
                schedule.answered_by_in_flight = std::mem::take(&mut schedule.requested);
            }
            Err(error) => {
                tracing::warn!(shard, %error, "cannot start a snapshot thread; will retry");
                for done in schedule.requested.drain(..) {
                    let _ = done.send(Err(format!("cannot start a snapshot thread: {error}")));
                }
            }
        }
    }

    pub(super) async fn snapshot_written(
        &mut self,
        raft_index: u64,
        result: Result<std::path::PathBuf, snapshotting::SnapshotFailure>,
    ) {
        self.snapshots.in_flight = false;
        // Requesters (Defragment) are answered once the log is released.
        match result {
            Ok(path) => {
                let answer_to = std::mem::take(&mut self.snapshots.answered_by_in_flight);
                self.release_log_through(raft_index, path, answer_to).await;
                tracing::debug!(
                    shard = self.shard,
                    raft_index,
                    "snapshot written; log released"
                );
            }
            Err(failure) => {
                tracing::warn!(shard = self.shard, error = %failure, "snapshot failed; the log is kept and a later one will be tried");
                if failure.out_of_space {
                    self.disk.snapshot_refused(&failure.message);
                }
                for done in self.snapshots.answered_by_in_flight.drain(..) {
                    let _ = done.send(Err(failure.message.clone()));
                }
            }
        }
    }

    /// The snapshot at `newest` covers the log through `raft_index` (one
    /// this worker wrote, or its leader's, installed): releases the WAL
    /// below it, removes older snapshot files off the core, and answers
    /// `answer_to` once the released segments are gone.
    pub(super) async fn release_log_through(
        &mut self,
        raft_index: u64,
        newest: std::path::PathBuf,
        answer_to: Vec<oneshot::Sender<Result<(), String>>>,
    ) {
        self.snapshots.last_snapshot_index = raft_index;
        let released = match self.group.compact_through(raft_index).await {
            Ok(released) => released,
            Err(error) => {
                tracing::error!(shard = self.shard, %error, "WAL write or fdatasync failed while releasing the log; aborting");
                std::process::abort();
            }
        };
        self.snapshots
            .logged
            .retain(|(index, _)| *index > raft_index);
        // Unlinking a large file takes milliseconds: not on the core.
        let directory = self.snapshots.directory.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("metastore-snapshot-cleanup-{}", self.shard))
            .spawn(move || snapshotting::remove_older_snapshots(&directory, &newest));
        if let Err(error) = spawned {
            tracing::warn!(shard = self.shard, %error, "cannot start a thread to remove old snapshots; a later snapshot will");
        }
        self.remove_released_segments(released, answer_to);
    }

    /// Removes released WAL segments on a task of its own, then answers the
    /// requesters (Defragment answers once the space is given back). The
    /// worker does not wait: an unlink plus directory sync took 20-45 ms per
    /// 64 MiB segment here, and every write of the shard queued behind it
    /// (the whole put p99 at a steady load). Removals stay oldest first
    /// across snapshots (each task waits for the previous one), so a crash
    /// never leaves a gap in the log.
    fn remove_released_segments(
        &mut self,
        released: ReleasedSegments,
        answer_to: Vec<oneshot::Sender<Result<(), String>>>,
    ) {
        let previous = self.snapshots.removing.take();
        let device = self.group.wal_device().clone();
        let shard = self.shard;
        self.snapshots.removing = Some(monoio::spawn(async move {
            if let Some(previous) = previous {
                previous.await;
            }
            if let Err(error) = released.remove(&device).await {
                // As for any WAL fsync: the directory's state is unknown
                // and a later removal could become durable before this one.
                tracing::error!(shard, %error, "removing released WAL segments failed; aborting");
                std::process::abort();
            }
            for done in answer_to {
                let _ = done.send(Ok(()));
            }
        }));
    }
}
