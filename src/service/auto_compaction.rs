//! `--auto-compaction-mode` / `--auto-compaction-retention`: etcd 3.4's
//! `v3compactor`, as a pure scheduler ([`AutoCompactor`]: given the time
//! and the current revision, compact to what, if anything) and one task on
//! core 0 that samples, sleeps, and compacts through the `WritePath` (so
//! the shards free history in steps, never stalling their requests); on a
//! cluster, only the lead member's task compacts.
//!
//! - Periodic (retention P): every `min(P, 1h) / 10` the current revision
//!   is sampled, keeping the last `P / interval + 1` samples. Once P has
//!   passed since the start, and then every `min(P, 1h)` since the last
//!   success, compact to the oldest sample kept (about P ago); after a
//!   failure, retry at the next check.
//! - Revision (retention N): every 5 minutes compact to current − N, unless
//!   that is not positive or is what the last success compacted to.
//!
//! A compaction that finds the revision already compacted counts as a
//! success, as in etcd.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::AutoCompaction;
use crate::shard::write_path::WritePath;
use crate::store::error::KvError;

/// etcd's `revInterval`: how often revision mode compacts.
pub const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// etcd caps the periodic compactor's cadence at an hour.
const PERIODIC_CADENCE_CAP: Duration = Duration::from_secs(3600);
/// etcd's `retryDivisor`: samples per cadence.
const SAMPLES_PER_CADENCE: u32 = 10;
/// Floor for the check interval, so a tiny retention cannot spin.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(1);

/// etcd's periodic compactor (`v3compactor.Periodic`).
#[derive(Debug)]
pub struct PeriodicCompactor {
    /// The retention: how much time of history to keep.
    period: Duration,
    /// Between samples and checks (etcd's `retryInterval`).
    check_interval: Duration,
    /// Between compactions after the first (etcd's `compactInterval`).
    compact_interval: Duration,
    /// Samples kept (etcd's `retentions`): the oldest is about `period` old.
    samples_kept: usize,
    /// Revisions sampled at each check, oldest first.
    samples: VecDeque<i64>,
    /// The start, then the last successful compaction.
    last_success: Instant,
    /// Wait since `last_success` before compacting: `period` before the
    /// first attempt, `compact_interval` after (etcd's `baseInterval`).
    wait: Duration,
}

impl PeriodicCompactor {
    pub fn new(period: Duration, now: Instant) -> Self {
        let compact_interval = period.min(PERIODIC_CADENCE_CAP);
        let check_interval = (compact_interval / SAMPLES_PER_CADENCE).max(MIN_CHECK_INTERVAL);
        let samples_kept = (period.as_nanos() / check_interval.as_nanos()) as usize + 1;
        Self {
            period,
            check_interval,
            compact_interval,
            samples_kept,
            samples: VecDeque::with_capacity(samples_kept + 1),
            last_success: now,
            wait: period,
        }
    }

    /// Records the current revision; called before each wait.
    fn sample(&mut self, revision: i64) {
        self.samples.push_back(revision);
        if self.samples.len() > self.samples_kept {
            self.samples.pop_front();
        }
    }

    /// After a wait: the revision to compact to, if a compaction is due.
    fn due(&mut self, now: Instant) -> Option<i64> {
        if now.saturating_duration_since(self.last_success) < self.wait {
            return None;
        }
        self.wait = self.compact_interval;
        self.samples.front().copied()
    }

    fn finished(&mut self, now: Instant, succeeded: bool) {
        if succeeded {
            self.last_success = now;
        }
    }
}

/// etcd's revision compactor (`v3compactor.Revision`).
#[derive(Debug)]
pub struct RevisionCompactor {
    /// Revisions of history to keep.
    retention: i64,
    check_interval: Duration,
    /// What the last successful compaction compacted to (0: none yet).
    previous: i64,
}

impl RevisionCompactor {
    pub fn new(retention: i64, check_interval: Duration) -> Self {
        Self {
            retention,
            check_interval,
            previous: 0,
        }
    }

    fn due(&self, current_revision: i64) -> Option<i64> {
        let revision = current_revision - self.retention;
        (revision > 0 && revision != self.previous).then_some(revision)
    }

    fn finished(&mut self, revision: i64, succeeded: bool) {
        if succeeded {
            self.previous = revision;
        }
    }
}

/// The node's automatic compaction schedule: pure decisions, no I/O.
#[derive(Debug)]
pub enum AutoCompactor {
    Periodic(PeriodicCompactor),
    Revision(RevisionCompactor),
}

impl AutoCompactor {
    /// `revision_interval` is etcd's 5 minutes except in tests.
    pub fn new(policy: AutoCompaction, now: Instant, revision_interval: Duration) -> Self {
        match policy {
            AutoCompaction::Periodic(period) => Self::Periodic(PeriodicCompactor::new(period, now)),
            AutoCompaction::Revision(retention) => {
                Self::Revision(RevisionCompactor::new(retention, revision_interval))
            }
        }
    }

    /// How long to wait between `before_wait` and `after_wait`.
    pub fn check_interval(&self) -> Duration {
        match self {
            Self::Periodic(periodic) => periodic.check_interval,
            Self::Revision(revision) => revision.check_interval,
        }
    }

    /// Called with the current revision before each wait.
    pub fn before_wait(&mut self, current_revision: i64) {
        if let Self::Periodic(periodic) = self {
            periodic.sample(current_revision);
        }
    }

    /// Called after each wait: the revision to compact to, if any.
    pub fn after_wait(&mut self, now: Instant, current_revision: i64) -> Option<i64> {
        match self {
            Self::Periodic(periodic) => periodic.due(now),
            Self::Revision(revision) => revision.due(current_revision),
        }
    }

    /// Reports how the compaction `after_wait` asked for went.
    pub fn finished(&mut self, now: Instant, revision: i64, succeeded: bool) {
        match self {
            Self::Periodic(periodic) => periodic.finished(now, succeeded),
            Self::Revision(compactor) => compactor.finished(revision, succeeded),
        }
    }

    /// The retention as etcd prints it in its log lines.
    fn retention(&self) -> String {
        match self {
            Self::Periodic(periodic) => humantime::format_duration(periodic.period).to_string(),
            Self::Revision(revision) => format!("{} revisions", revision.retention),
        }
    }
}

/// The auto-compaction task (core 0). Runs for the life of the process.
///
/// On a cluster member (`role`) only the lead member compacts, as only
/// etcd's leader runs its compactor; the others keep sampling, so the one
/// that becomes lead member compacts to what its own samples say.
pub async fn run(
    write_path: Rc<WritePath>,
    policy: AutoCompaction,
    revision_interval: Duration,
    role: Option<std::sync::Arc<crate::shard::lead_member::MemberRole>>,
) {
    let mut compactor = AutoCompactor::new(policy, Instant::now(), revision_interval);
    let retention = compactor.retention();
    tracing::info!(%retention, check_interval = ?compactor.check_interval(), "auto-compaction enabled");
    let current = || write_path.space().clock().watermark();
    loop {
        compactor.before_wait(current());
        monoio::time::sleep(compactor.check_interval()).await;
        let Some(revision) = compactor.after_wait(Instant::now(), current()) else {
            continue;
        };
        if role.as_ref().is_some_and(|role| !role.takes_writes()) {
            compactor.finished(Instant::now(), revision, false);
            continue;
        }
        tracing::info!(revision, %retention, "Starting auto-compaction at revision {revision} (retention: {retention})");
        let started = Instant::now();
        let succeeded = match write_path.compact(revision, false).await {
            Ok(()) | Err(KvError::Compacted) => {
                tracing::info!(revision, took = ?started.elapsed(), "Finished auto-compaction at revision {revision}");
                true
            }
            Err(error) => {
                let retry = compactor.check_interval();
                tracing::warn!(revision, %error, "Failed auto-compaction at revision {revision} ({error}); retry after {retry:?}");
                false
            }
        };
        compactor.finished(Instant::now(), revision, succeeded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// Runs `checks` rounds of sample, wait, decide (every compaction
    /// succeeding), the revision growing by 10 per check; returns the
    /// (minutes since start, revision) of each compaction.
    fn periodic_decisions(period: Duration, checks: u32) -> Vec<(u64, i64)> {
        let start = Instant::now();
        let mut compactor = AutoCompactor::new(
            AutoCompaction::Periodic(period),
            start,
            REVISION_MODE_INTERVAL,
        );
        let interval = compactor.check_interval();
        let mut decisions = Vec::new();
        for check in 0..checks {
            compactor.before_wait(i64::from(check) * 10 + 1);
            let now = start + interval * (check + 1);
            let current = i64::from(check + 1) * 10 + 1;
            if let Some(revision) = compactor.after_wait(now, current) {
                compactor.finished(now, revision, true);
                decisions.push(((now - start).as_secs() / 60, revision));
            }
        }
        decisions
    }

    #[test]
    fn periodic_one_hour_compacts_hourly_to_the_oldest_sample() {
        assert_eq!(
            AutoCompactor::new(
                AutoCompaction::Periodic(60 * MINUTE),
                Instant::now(),
                MINUTE
            )
            .check_interval(),
            6 * MINUTE
        );
        // Samples every 6 minutes (revision 1, 11, 21, ...); 11 kept. At 60
        // minutes the oldest is the start's; at 120 it is minute 54's.
        assert_eq!(
            periodic_decisions(60 * MINUTE, 30),
            vec![(60, 1), (120, 91), (180, 191)]
        );
    }

    #[test]
    fn periodic_long_retention_waits_then_compacts_every_hour() {
        // 3h: checks every 6 minutes, 31 samples kept, the first
        // compaction after 3 hours, then hourly, each to ~3h before.
        assert_eq!(
            periodic_decisions(180 * MINUTE, 50),
            vec![(180, 1), (240, 91), (300, 191)]
        );
    }

    #[test]
    fn periodic_short_retention_and_a_failure() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut compactor = AutoCompactor::new(AutoCompaction::Periodic(second), start, MINUTE);
        assert_eq!(compactor.check_interval(), Duration::from_millis(100));
        for tick in 1..10 {
            compactor.before_wait(tick);
            assert_eq!(
                compactor.after_wait(start + second * tick as u32 / 10, tick),
                None
            );
        }
        compactor.before_wait(10);
        let now = start + second;
        assert_eq!(compactor.after_wait(now, 10), Some(1));
        compactor.finished(now, 1, false);
        compactor.before_wait(11);
        let retry = now + Duration::from_millis(100);
        assert_eq!(
            compactor.after_wait(retry, 11),
            Some(1),
            "retried at the next check"
        );
        compactor.finished(retry, 1, true);
        compactor.before_wait(12);
        assert_eq!(
            compactor.after_wait(retry + Duration::from_millis(100), 12),
            None
        );
    }

    #[test]
    fn revision_mode_compacts_to_current_minus_retention() {
        let start = Instant::now();
        let mut compactor = AutoCompactor::new(
            AutoCompaction::Revision(1000),
            start,
            REVISION_MODE_INTERVAL,
        );
        assert_eq!(compactor.check_interval(), REVISION_MODE_INTERVAL);
        assert_eq!(compactor.after_wait(start, 900), None, "not positive");
        assert_eq!(compactor.after_wait(start, 1000), None, "not positive");
        assert_eq!(compactor.after_wait(start, 1500), Some(500));
        compactor.finished(start, 500, false);
        assert_eq!(
            compactor.after_wait(start, 1500),
            Some(500),
            "retried after a failure"
        );
        compactor.finished(start, 500, true);
        assert_eq!(
            compactor.after_wait(start, 1500),
            None,
            "already compacted there"
        );
        assert_eq!(compactor.after_wait(start, 2600), Some(1600));
    }
}
