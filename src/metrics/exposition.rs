//! Turning a scrape's data into Prometheus metric families, with etcd's
//! metric names where the meaning matches (so etcd dashboards and alerts
//! keep working) and `metastore_` ones for what etcd does not have.
//!
//! Pure: the HTTP layer gathers a [`NodeView`] and the cores' merged
//! [`CoreSnapshot`]; this module only builds the families, and the
//! `prometheus` crate's text encoder writes them.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use super::methods::METHODS;
use super::recorder::{CODE_COUNT, ConnectionClose, CoreSnapshot, Distribution};
use crate::grpc::Code;

/// Bucket bounds for request latencies, in seconds: grpc-go-prometheus's
/// defaults (0.005..10) extended below, since MetaStore answers well under
/// 5 ms; HDR histograms let us choose any bounds at scrape time.
const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// etcd's `etcd_disk_wal_fsync_duration_seconds` and
/// `etcd_disk_backend_commit_duration_seconds` buckets: 1 ms doubling 14 times.
const DISK_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];
/// Cross-core hops are microseconds apart.
const HOP_BUCKETS: &[f64] = &[
    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
];
/// Entries per fsync: 1 to 1024, doubling.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Node-wide facts read from shared state at scrape time.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub keys_total: u64,
    /// Bytes the stored data takes on disk (`etcd_mvcc_db_total_size_in_bytes`).
    pub db_total_bytes: i64,
    /// Bytes of live data (`etcd_mvcc_db_total_size_in_use_in_bytes`).
    pub db_in_use_bytes: i64,
    /// 0 when the quota is disabled.
    pub quota_bytes: i64,
    pub current_revision: i64,
    pub compact_revision: i64,
    pub leases: u64,
    pub shards: Vec<ShardView>,
    /// `io_uring` or `epoll`.
    pub driver: &'static str,
    pub cores: usize,
    /// Health endpoint requests that passed / failed.
    pub health_passed: u64,
    pub health_failed: u64,
    /// Whether a leader (a cluster's lead member) is known, whether it is
    /// this member, and how many times it changed as seen here; a server
    /// alone is its own leader, seen once.
    pub has_leader: bool,
    pub is_leader: bool,
    pub leader_changes: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ShardView {
    /// Commands its worker has taken.
    pub commands: u64,
    /// Commands waiting in its queue now.
    pub queue_depth: u64,
    /// Raft entries made durable (committed and applied: one voter).
    pub entries: u64,
    pub fsyncs: u64,
}

/// Every family a scrape exposes, except the process metrics (added by the
/// caller from `prometheus`'s process collector).
pub fn metric_families(node: &NodeView, cores: &CoreSnapshot) -> Vec<MetricFamily> {
    let mut families = grpc_families(cores);
    families.extend(server_families(node));
    families.extend(disk_families(cores));
    families.extend(store_families(node, cores));
    families.extend(metastore_families(node, cores));
    // A family without a sample (`grpc_server_handled_total` before any
    // call finished) is left out: the encoder refuses it, and Prometheus
    // has nothing to show for it.
    families.retain(|family| !family.get_metric().is_empty());
    families
}

fn grpc_families(cores: &CoreSnapshot) -> Vec<MetricFamily> {
    let mut started = family(
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        MetricType::COUNTER,
    );
    let mut handled = family(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        MetricType::COUNTER,
    );
    let mut handling = family(
        "grpc_server_handling_seconds",
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
        MetricType::HISTOGRAM,
    );
    for (known, stats) in METHODS.iter().zip(&cores.methods) {
        let labels = [
            ("grpc_type", known.call_type.label()),
            ("grpc_service", known.service),
            ("grpc_method", known.method),
        ];
        started
            .mut_metric()
            .push(counter(&labels, stats.started as f64));
        for code in (0..CODE_COUNT as i32).map(Code::from_i32) {
            let count = stats.handled[code as usize];
            if count > 0 {
                let mut with_code = labels.to_vec();
                with_code.push(("grpc_code", code.as_str()));
                handled.mut_metric().push(counter(&with_code, count as f64));
            }
        }
        if stats.handling.count() > 0 {
            handling.mut_metric().push(histogram(
                &labels,
                &stats.handling,
                REQUEST_BUCKETS,
                Unit::Seconds,
            ));
        }
    }
    vec![started, handled, handling]
}

fn server_families(node: &NodeView) -> Vec<MetricFamily> {
    let entries: u64 = node.shards.iter().map(|shard| shard.entries).sum();
    let pending: u64 = node.shards.iter().map(|shard| shard.queue_depth).sum();
    vec![
        // A cluster's leader is its lead member (every group's leader).
        single(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            MetricType::GAUGE,
            f64::from(u8::from(node.has_leader)),
        ),
        single(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            MetricType::GAUGE,
            f64::from(u8::from(node.is_leader)),
        ),
        single(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            MetricType::COUNTER,
            node.leader_changes as f64,
        ),
        single(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            MetricType::GAUGE,
            entries as f64,
        ),
        single(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            MetricType::GAUGE,
            entries as f64,
        ),
        single(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            MetricType::GAUGE,
            pending as f64,
        ),
        // A failed proposal aborts the process (see ARCHITECTURE.md), so
        // a running server has none.
        single(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            MetricType::COUNTER,
            0.0,
        ),
        single(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            MetricType::GAUGE,
            node.quota_bytes as f64,
        ),
        single(
            "etcd_server_health_success",
            "The total number of successful health checks",
            MetricType::COUNTER,
            node.health_passed as f64,
        ),
        single(
            "etcd_server_health_failures",
            "The total number of failed health checks",
            MetricType::COUNTER,
            node.health_failed as f64,
        ),
    ]
}

fn disk_families(cores: &CoreSnapshot) -> Vec<MetricFamily> {
    vec![
        single_histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            &cores.wal_fsync,
            DISK_BUCKETS,
            Unit::Seconds,
        ),
        // MetaStore's log is its backend: a commit is one WAL write plus
        // its fdatasync (a shard worker's persist).
        single_histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &cores.backend_commit,
            DISK_BUCKETS,
            Unit::Seconds,
        ),
    ]
}

fn store_families(node: &NodeView, cores: &CoreSnapshot) -> Vec<MetricFamily> {
    let counters = &cores.counters;
    vec![
        single(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            MetricType::GAUGE,
            node.db_total_bytes as f64,
        ),
        single(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            MetricType::GAUGE,
            node.db_in_use_bytes as f64,
        ),
        single(
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            MetricType::GAUGE,
            node.keys_total as f64,
        ),
        single(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            MetricType::GAUGE,
            node.current_revision as f64,
        ),
        single(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            MetricType::GAUGE,
            node.compact_revision.max(0) as f64,
        ),
        single(
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams.",
            MetricType::GAUGE,
            counters.watch_streams as f64,
        ),
        single(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            MetricType::GAUGE,
            counters.watchers as f64,
        ),
        single(
            "etcd_debugging_lease_granted_total",
            "The total number of granted leases.",
            MetricType::COUNTER,
            counters.leases_granted as f64,
        ),
        single(
            "etcd_debugging_lease_revoked_total",
            "The total number of revoked leases.",
            MetricType::COUNTER,
            counters.leases_revoked as f64,
        ),
        single(
            "etcd_debugging_lease_renewed_total",
            "The number of renewed leases seen by the leader.",
            MetricType::COUNTER,
            counters.leases_renewed as f64,
        ),
        single(
            "metastore_leases",
            "Leases that exist now.",
            MetricType::GAUGE,
            node.leases as f64,
        ),
    ]
}

fn metastore_families(node: &NodeView, cores: &CoreSnapshot) -> Vec<MetricFamily> {
    let counters = &cores.counters;
    let mut requests = family(
        "metastore_shard_commands_total",
        "Commands (writes, holds, compactions, lease grants) each shard's worker has taken.",
        MetricType::COUNTER,
    );
    let mut depth = family(
        "metastore_shard_queue_depth",
        "Commands waiting in each shard's queue.",
        MetricType::GAUGE,
    );
    let mut syncs = family(
        "metastore_shard_wal_fsyncs_total",
        "WAL fdatasync calls per shard (one per group commit).",
        MetricType::COUNTER,
    );
    for (shard, view) in node.shards.iter().enumerate() {
        let shard_label = shard.to_string();
        let labels = [("shard", shard_label.as_str())];
        requests
            .mut_metric()
            .push(counter(&labels, view.commands as f64));
        depth
            .mut_metric()
            .push(gauge(&labels, view.queue_depth as f64));
        syncs
            .mut_metric()
            .push(counter(&labels, view.fsyncs as f64));
    }
    let mut driver = family(
        "metastore_io_driver",
        "The I/O driver the executors use (1 for the one in use).",
        MetricType::GAUGE,
    );
    driver
        .mut_metric()
        .push(gauge(&[("driver", node.driver)], 1.0));
    vec![
        requests,
        depth,
        syncs,
        driver,
        single(
            "metastore_cores",
            "Executor threads (cores) serving.",
            MetricType::GAUGE,
            node.cores as f64,
        ),
        single_histogram(
            "metastore_cross_core_hop_seconds",
            "Time a write waits between being queued for its shard and the shard's worker taking it.",
            &cores.cross_core_hop,
            HOP_BUCKETS,
            Unit::Seconds,
        ),
        single_histogram(
            "metastore_wal_entries_per_fsync",
            "Raft entries made durable by each WAL fdatasync (group commit size).",
            &cores.entries_per_fsync,
            BATCH_BUCKETS,
            Unit::Count,
        ),
        single(
            "metastore_client_connections",
            "Client connections open now.",
            MetricType::GAUGE,
            counters.connections_open as f64,
        ),
        single(
            "metastore_client_connections_accepted_total",
            "Client connections accepted.",
            MetricType::COUNTER,
            counters.connections_accepted as f64,
        ),
        single(
            "metastore_client_connections_rejected_total",
            "Client connections closed at once because --max-connections were open.",
            MetricType::COUNTER,
            counters.connections_rejected as f64,
        ),
        single(
            "metastore_client_accepts_out_of_fds_total",
            "Accepts that failed because the process or the system was out of file descriptors (EMFILE/ENFILE); each time the listener stops listening for a moment, refusing new connections.",
            MetricType::COUNTER,
            counters.accepts_out_of_fds as f64,
        ),
        {
            let mut family = family(
                "metastore_client_connections_closed_total",
                "Client connections the server closed, by reason.",
                MetricType::COUNTER,
            );
            for (reason, count) in ConnectionClose::ALL.iter().zip(counters.connections_closed) {
                family
                    .mut_metric()
                    .push(counter(&[("reason", reason.label())], count as f64));
            }
            family
        },
        single(
            "metastore_request_message_timeouts_total",
            "Calls failed because a request message stayed incomplete for --grpc-request-message-timeout.",
            MetricType::COUNTER,
            counters.request_message_timeouts as f64,
        ),
        single(
            "metastore_txn_checks_off_core_total",
            "Txn requests large enough to be decoded and checked on a helper thread, off the core.",
            MetricType::COUNTER,
            counters.txn_checks_off_core as f64,
        ),
        single(
            "metastore_rate_limited_total",
            "Calls refused with RESOURCE_EXHAUSTED by a rate limit.",
            MetricType::COUNTER,
            counters.rate_limited as f64,
        ),
        single(
            "metastore_slow_requests_total",
            "Unary calls slower than --warning-unary-request-duration.",
            MetricType::COUNTER,
            counters.slow_requests as f64,
        ),
        single(
            "metastore_handler_panics_total",
            "Calls that failed with INTERNAL because their handler panicked.",
            MetricType::COUNTER,
            counters.handler_panics as f64,
        ),
    ]
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family
}

fn single(name: &str, help: &str, kind: MetricType, value: f64) -> MetricFamily {
    let mut family = family(name, help, kind);
    let metric = match kind {
        MetricType::COUNTER => counter(&[], value),
        _ => gauge(&[], value),
    };
    family.mut_metric().push(metric);
    family
}

/// What a distribution recorded, against what its family exposes.
#[derive(Clone, Copy)]
enum Unit {
    /// Recorded in microseconds, exposed in seconds.
    Seconds,
    /// Recorded and exposed as plain counts.
    Count,
}

impl Unit {
    fn recorded_per_exposed(self) -> f64 {
        match self {
            Unit::Seconds => 1e6,
            Unit::Count => 1.0,
        }
    }
}

fn single_histogram(
    name: &str,
    help: &str,
    values: &Distribution,
    bounds: &[f64],
    unit: Unit,
) -> MetricFamily {
    let mut family = family(name, help, MetricType::HISTOGRAM);
    family
        .mut_metric()
        .push(histogram(&[], values, bounds, unit));
    family
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect(),
    );
    metric
}

fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = labelled(labels);
    let mut counter = Counter::default();
    counter.set_value(value);
    metric.set_counter(counter);
    metric
}

fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = labelled(labels);
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    metric.set_gauge(gauge);
    metric
}

/// A Prometheus histogram from an HDR one: cumulative counts at each bound
/// (HDR's 1% precision), the exact count and sum. `bounds` are in the
/// exposed unit; `unit` is how many recorded units make one of it.
fn histogram(labels: &[(&str, &str)], values: &Distribution, bounds: &[f64], unit: Unit) -> Metric {
    let scale = unit.recorded_per_exposed();
    let mut metric = labelled(labels);
    let mut histogram = Histogram::default();
    histogram.set_sample_count(values.count());
    histogram.set_sample_sum(values.sum() as f64 / scale);
    histogram.set_bucket(
        bounds
            .iter()
            .map(|bound| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(values.count_at_or_below((bound * scale) as u64));
                bucket
            })
            .collect(),
    );
    metric.set_histogram(histogram);
    metric
}

/// The text exposition of `families`.
pub fn encode_text(families: &[MetricFamily]) -> Result<String, prometheus::Error> {
    use prometheus::Encoder;
    let mut text = Vec::new();
    prometheus::TextEncoder::new().encode(families, &mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_has_finished_no_call_still_exposes_its_metrics() {
        let node = NodeView {
            has_leader: true,
            is_leader: true,
            leader_changes: 1,
            ..Default::default()
        };
        let families = metric_families(&node, &CoreSnapshot::empty());
        let text = encode_text(&families).expect("encodes");
        assert!(text.contains("grpc_server_started_total{"), "{text}");
        assert!(!text.contains("grpc_server_handled_total"), "{text}");
        assert!(text.contains("etcd_server_has_leader 1"), "{text}");
        assert!(
            text.contains("etcd_server_leader_changes_seen_total 1"),
            "{text}"
        );
        // A cluster member cut off from the others.
        let cut_off = NodeView::default();
        let text =
            encode_text(&metric_families(&cut_off, &CoreSnapshot::empty())).expect("encodes");
        assert!(text.contains("etcd_server_has_leader 0"), "{text}");
        assert!(text.contains("etcd_server_is_leader 0"), "{text}");
    }
}
