//! The monitoring thread's view of the node: shared state it may read
//! directly (lock-free), and the cores it must ask (with a deadline).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_channel::oneshot;

use super::health::{Check, CheckOutcome};
use crate::metrics::exposition::{NodeView, ShardView};
use crate::metrics::{CoreSnapshot, exposition};
use crate::proto::etcdserverpb::AlarmType;
use crate::runtime::control::CoreRequest;
use crate::shard::ShardCommand;
use crate::shard::raft_group::LogStats;
use crate::store::key_space::KeySpace;

/// How long a core or a check may take before it counts as failed. Well
/// below Kubernetes' default probe timeout multiples, well above a healthy
/// core's microseconds.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(2);

/// Everything the monitoring thread reads. Every field is `Send + Sync`
/// and read without locks.
pub struct NodeHandles {
    pub space: Arc<KeySpace>,
    /// Per-shard counters, indexed by shard.
    pub log_stats: Vec<Arc<LogStats>>,
    /// Every shard's command channel (its length is the queue depth).
    pub shard_senders: Arc<[flume::Sender<ShardCommand>]>,
    /// Each core's control channel (see `runtime::control`).
    pub cores: Vec<flume::Sender<CoreRequest>>,
    pub data_dir: PathBuf,
    /// `None`: no quota.
    pub quota_bytes: Option<u64>,
    /// The node's alarms (NOSPACE fails the disk check, CORRUPT the
    /// corruption check; `/health` reports any).
    pub alarms: crate::service::alarm::AlarmSet,
    /// Free bytes the disk check wants: one WAL segment, so the next
    /// rotation cannot fail for lack of space.
    pub minimum_free_bytes: u64,
    /// etcd's `etcd_server_health_success` / `_failures`.
    pub health_passed: AtomicU64,
    pub health_failed: AtomicU64,
    /// A cluster member's role: whether a lead member is known, and that a
    /// linearizable check must be confirmed with the groups' leaders.
    /// `None` alone.
    pub role: Option<Arc<crate::shard::lead_member::MemberRole>>,
}

impl NodeHandles {
    /// Every core's metrics, merged; a core that does not answer in time
    /// is left out (and logged) rather than holding up the scrape.
    pub async fn gather_core_metrics(&self) -> CoreSnapshot {
        // Ask every core at once and wait once: a stalled core costs a
        // scrape one deadline, and a core whose control queue is full
        // (stalled, with earlier requests waiting) is not asked again.
        let deadline = tokio::time::Instant::now() + CHECK_DEADLINE;
        let mut answers = Vec::new();
        for (core, requests) in self.cores.iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            match requests.try_send(CoreRequest::Metrics(reply)) {
                Ok(()) => answers.push((core, answer)),
                Err(_) => tracing::warn!(core, "core is not taking metrics requests"),
            }
        }
        let mut merged = CoreSnapshot::empty();
        for (core, answer) in answers {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(snapshot)) => merged.merge(&snapshot),
                _ => tracing::warn!(core, "core did not report its metrics in time"),
            }
        }
        merged
    }

    /// The shared-state part of a scrape.
    pub fn node_view(&self) -> NodeView {
        let (keys, bytes) = self.space.totals();
        NodeView {
            keys_total: keys as u64,
            db_total_bytes: crate::data_dir::shard_files_bytes(&self.data_dir) as i64,
            db_in_use_bytes: bytes,
            quota_bytes: self.quota_bytes.unwrap_or(0) as i64,
            current_revision: self.space.clock().watermark(),
            compact_revision: self.space.compacted_revision(),
            leases: self.space.leases().len() as u64,
            shards: self
                .log_stats
                .iter()
                .zip(self.shard_senders.iter())
                .map(|(stats, sender)| ShardView {
                    commands: stats.commands.load(Ordering::Relaxed),
                    queue_depth: sender.len() as u64,
                    entries: stats.entries.load(Ordering::Relaxed),
                    fsyncs: stats.fsyncs.load(Ordering::Relaxed),
                })
                .collect(),
            driver: crate::runtime::driver_name(),
            cores: self.cores.len(),
            health_passed: self.health_passed.load(Ordering::Relaxed),
            health_failed: self.health_failed.load(Ordering::Relaxed),
            has_leader: !self.knows_no_leader(),
            is_leader: self.role.as_ref().is_none_or(|role| role.takes_writes()),
            leader_changes: self
                .role
                .as_ref()
                .map_or(1, |role| role.lead_member_changes()),
        }
    }

    /// The `/metrics` body.
    pub async fn scrape(&self) -> Result<String, prometheus::Error> {
        use prometheus::core::Collector;
        let cores = self.gather_core_metrics().await;
        let mut families = exposition::metric_families(&self.node_view(), &cores);
        families.extend(prometheus::process_collector::ProcessCollector::for_self().collect());
        exposition::encode_text(&families)
    }

    /// Runs `checks` one after another, each within [`CHECK_DEADLINE`].
    pub async fn run_checks(&self, checks: &[Check]) -> Vec<CheckOutcome> {
        let mut outcomes = Vec::new();
        for check in checks {
            let result = match tokio::time::timeout(CHECK_DEADLINE, self.run_check(*check)).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "no answer within {}",
                    humantime::format_duration(CHECK_DEADLINE)
                )),
            };
            outcomes.push(CheckOutcome {
                check: *check,
                result,
            });
        }
        self.count_health(outcomes.iter().all(|outcome| outcome.result.is_ok()));
        outcomes
    }

    pub fn count_health(&self, passed: bool) {
        let counter = if passed {
            &self.health_passed
        } else {
            &self.health_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    async fn run_check(&self, check: Check) -> Result<(), String> {
        match check {
            Check::SerializableRead => self.probe_cores().await,
            Check::LinearizableRead => {
                if self.role.is_some() {
                    self.confirm_with_group_leaders().await?;
                }
                let clock = self.space.clock();
                let at = clock.wait_applied(clock.current()).await;
                let key =
                    crate::store::key_range::KeyRange::Single(bytes::Bytes::from_static(b"health"));
                self.space
                    .range(&key, at, 1, true)
                    .map(|_| ())
                    .map_err(|error| error.to_string())
            }
            Check::DiskSpace => self.check_disk_space(),
            Check::DataCorruption => match self.raised_alarms(&[]).contains(&AlarmType::Corrupt) {
                true => Err("alarm CORRUPT is raised".to_owned()),
                false => Ok(()),
            },
            Check::DataDirWritable => {
                let directory = self.data_dir.clone();
                tokio::task::spawn_blocking(move || write_probe_file(&directory))
                    .await
                    .map_err(|error| format!("the probe write did not finish: {error}"))?
            }
        }
    }

    /// Whether this is a cluster member that knows no lead member (etcd's
    /// "RAFT NO LEADER").
    pub fn knows_no_leader(&self) -> bool {
        self.role
            .as_ref()
            .is_some_and(|role| role.lead_member() == 0)
    }

    /// A cluster member's linearizable barrier (Raft's ReadIndex, as
    /// `WritePath::confirm_reads`): every group's leader confirms with a
    /// quorum that it still leads, and this member applies through the
    /// commit index it names. A member cut off from a quorum cannot pass
    /// it (etcd's QGET through Raft fails there too). Asks a group again
    /// while its leader changes; the caller bounds the time.
    async fn confirm_with_group_leaders(&self) -> Result<(), String> {
        for (shard, commands) in self.shard_senders.iter().enumerate() {
            loop {
                let (done, confirmed) = oneshot::channel();
                commands
                    .send_async(ShardCommand::ReadIndex { done })
                    .await
                    .map_err(|_| format!("shard {shard} has stopped"))?;
                if confirmed.await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    async fn probe_cores(&self) -> Result<(), String> {
        // Ask every core at once, so one slow core costs one deadline.
        let mut answers = Vec::new();
        for (core, requests) in self.cores.iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            requests
                .send_async(CoreRequest::Probe(reply))
                .await
                .map_err(|_| format!("core {core} has stopped"))?;
            answers.push((core, answer));
        }
        for (core, answer) in answers {
            answer
                .await
                .map_err(|_| format!("core {core} has stopped"))?
                .map_err(|error| format!("core {core}: {error}"))?;
        }
        Ok(())
    }

    /// The types of the raised alarms, minus the `excluded` names.
    pub fn raised_alarms(&self, excluded: &[String]) -> Vec<AlarmType> {
        self.alarms
            .list(AlarmType::None as i32)
            .into_iter()
            .filter_map(|raised| AlarmType::try_from(raised.alarm).ok())
            .filter(|alarm| !excluded.iter().any(|name| name == alarm.as_str_name()))
            .collect()
    }

    fn check_disk_space(&self) -> Result<(), String> {
        if self.alarms.no_space_raised() {
            return Err(match self.alarms.full_disk_reason() {
                Some(reason) => format!("alarm NOSPACE is raised: the disk is full ({reason})"),
                None => "alarm NOSPACE is raised (the quota is full)".to_owned(),
            });
        }
        let stats = rustix::fs::statvfs(&self.data_dir)
            .map_err(|error| format!("cannot stat the data directory's file system: {error}"))?;
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        if free < self.minimum_free_bytes {
            return Err(format!(
                "{free} bytes free on the data directory's file system; a WAL segment needs {}",
                self.minimum_free_bytes
            ));
        }
        Ok(())
    }
}

/// Creates, writes, syncs and removes a file in `directory`.
fn write_probe_file(directory: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    let path = directory.join(".health-probe");
    let describe = |error: std::io::Error| format!("{}: {error}", path.display());
    let mut file = std::fs::File::create(&path).map_err(describe)?;
    file.write_all(b"health probe\n").map_err(describe)?;
    file.sync_data().map_err(describe)?;
    drop(file);
    std::fs::remove_file(&path).map_err(describe)
}
