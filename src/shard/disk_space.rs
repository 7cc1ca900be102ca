//! A shard's answer to a full disk.
//!
//! The WAL allocates its next segment ahead of need (`Wal::prepare_spare`).
//! When that fails because the disk is full, nothing is harmed: the active
//! segment still has room, and no write has yet been accepted that needs
//! more. From then on the shard (etcd's NOSPACE semantics):
//! - refuses writes that may add data (Put, Txn with puts, lease grants)
//!   with etcd's "database space exceeded";
//! - still takes deletions, revocations and compactions (they free space)
//!   while the active segment has more than its headroom left, then
//!   refuses those too, keeping the rest for the records a restart writes;
//! - raises the NOSPACE alarm (published even if `alarms.json` cannot be
//!   written), so every core refuses such writes, `/readyz` says why and
//!   `etcdctl alarm list` shows it; reads, watches and lease keep-alives go
//!   on untouched;
//! - tries to prepare the segment again at most once per second, when a
//!   write or a turn comes. Once it succeeds, writes are taken again; as in
//!   etcd, the alarm stays until the operator disarms it.
//!
//! A failed fsync is something else: the process still aborts (an fsync is
//! never retried). This module only decides; the shard worker does the I/O.

use std::time::{Duration, Instant};

use crate::service::alarm::AlarmSet;
use crate::store::shard_map::ShardId;
use crate::wal::WalError;

/// How often a shard out of space tries to allocate its next segment again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Where a shard reports a full disk: the node's alarms, as this member.
#[derive(Clone)]
pub struct FullDiskReporter {
    pub alarms: AlarmSet,
    pub member_id: u64,
}

/// Why a shard is out of space, and when it last tried to get some.
#[derive(Debug, Clone)]
struct OutOfSpace {
    reason: String,
    last_attempt: Instant,
}

/// One shard's disk-space state (owned by its worker).
pub struct DiskSpaceGuard {
    shard: ShardId,
    /// `None` in tests that have no alarm set.
    reporter: Option<FullDiskReporter>,
    /// Set while the WAL could not prepare its next segment.
    out_of_space: Option<OutOfSpace>,
    /// Below this many bytes of room in the active segment, even writes
    /// that free space are refused (what is left is for startup records).
    headroom: u64,
}

impl DiskSpaceGuard {
    pub fn new(shard: ShardId, reporter: Option<FullDiskReporter>, segment_bytes: u64) -> Self {
        Self {
            shard,
            reporter,
            out_of_space: None,
            headroom: segment_bytes / 8,
        }
    }

    /// Whether to try preparing the next segment now (the WAL has none).
    pub fn attempt_due(&self, now: Instant) -> bool {
        self.out_of_space
            .as_ref()
            .is_none_or(|out| now.duration_since(out.last_attempt) >= RETRY_INTERVAL)
    }

    /// The WAL's next segment is ready.
    pub fn spare_prepared(&mut self) {
        if let Some(out) = self.out_of_space.take() {
            tracing::warn!(shard = self.shard, was = %out.reason, "disk space is available again: the shard takes writes (disarm the NOSPACE alarm to let every request through)");
        }
    }

    /// Preparing the next segment failed with `error` at `now`.
    pub fn spare_refused(&mut self, error: &WalError, now: Instant) {
        let reason = format!(
            "shard {} cannot allocate its next WAL segment: {error}",
            self.shard
        );
        if self.out_of_space.is_none() {
            tracing::error!(shard = self.shard, %error, "out of disk space: refusing writes that add data and raising the NOSPACE alarm; reads, watches and lease keep-alives go on");
        }
        self.raise_alarm(&reason);
        self.out_of_space = Some(OutOfSpace {
            reason,
            last_attempt: now,
        });
    }

    /// A snapshot could not be written for lack of space (`reason`); the
    /// log is kept and grows, so the operator must hear of it now.
    pub fn snapshot_refused(&mut self, reason: &str) {
        let reason = format!("shard {} cannot write a snapshot: {reason}", self.shard);
        tracing::error!(shard = self.shard, %reason, "out of disk space: raising the NOSPACE alarm");
        self.raise_alarm(&reason);
    }

    /// Whether a write must be refused with NOSPACE: `adds_data` (it may
    /// store new data) while out of space, or any write once the active
    /// segment is down to its headroom.
    pub fn refuses(&self, adds_data: bool, room_in_active_segment: u64) -> bool {
        self.out_of_space.is_some() && (adds_data || room_in_active_segment < self.headroom)
    }

    /// Raised again if an operator disarmed the alarm while the disk is
    /// still full (as etcd's quota raises it again on the next write).
    pub fn remind(&self) {
        if let Some(out) = &self.out_of_space
            && self
                .reporter
                .as_ref()
                .is_some_and(|reporter| !reporter.alarms.no_space_raised())
        {
            self.raise_alarm(&out.reason);
        }
    }

    fn raise_alarm(&self, reason: &str) {
        if let Some(reporter) = &self.reporter {
            reporter
                .alarms
                .raise_for_full_disk(reporter.member_id, reason.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_space() -> WalError {
        WalError::NoSpace {
            operation: "preallocating the spare segment",
            file: "wal-next.spare".to_owned(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }

    #[test]
    fn out_of_space_refuses_additions_then_everything_below_the_headroom() {
        let mut guard = DiskSpaceGuard::new(3, None, 64 << 20);
        assert!(
            !guard.refuses(true, 0),
            "a shard with space refuses nothing"
        );
        let start = Instant::now();
        guard.spare_refused(&no_space(), start);
        assert!(guard.refuses(true, 60 << 20));
        assert!(!guard.refuses(false, 60 << 20), "deletions free space");
        assert!(guard.refuses(false, (64 << 20) / 8 - 1));
        assert!(!guard.attempt_due(start + Duration::from_millis(500)));
        assert!(guard.attempt_due(start + RETRY_INTERVAL));
        guard.spare_prepared();
        assert!(!guard.refuses(true, 0));
        assert!(guard.attempt_due(start));
    }

    #[test]
    fn the_alarm_is_raised_with_the_reason_and_again_after_a_disarm() {
        let directory = tempfile::tempdir().expect("temp dir");
        let alarms = AlarmSet::open(directory.path()).expect("alarms");
        let reporter = FullDiskReporter {
            alarms: alarms.clone(),
            member_id: 9,
        };
        let mut guard = DiskSpaceGuard::new(1, Some(reporter), 1 << 20);
        guard.spare_refused(&no_space(), Instant::now());
        let raised = || {
            (0..200).any(|_| {
                std::thread::sleep(Duration::from_millis(5));
                alarms.no_space_raised()
            })
        };
        assert!(raised());
        let reason = alarms.full_disk_reason().expect("a reason");
        assert!(
            reason.contains("shard 1") && reason.contains("No space left"),
            "{reason}"
        );
        // Disarmed while still full: the next reminder raises it again.
        let disarm = alarms.deactivate(crate::service::alarm::RaisedAlarm {
            member_id: 9,
            alarm: crate::proto::etcdserverpb::AlarmType::Nospace as i32,
        });
        futures_executor_block_on(disarm).expect("disarm");
        assert!(!alarms.no_space_raised());
        guard.remind();
        assert!(raised());
    }

    fn futures_executor_block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut context) {
                return value;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
