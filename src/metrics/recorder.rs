//! Per-core recording: each core owns one [`CoreMetrics`] and is the only
//! thread that writes it.
//!
//! Invariant: no metric write takes a lock or touches a cache line another
//! core writes. Counters are `Cell`s and histograms `RefCell`s on the
//! core's own thread; a scrape asks every core for a [`CoreSnapshot`]
//! (a copy, made by the core itself between two tasks) and merges them.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::methods::{METHODS, MethodId};
use crate::grpc::Code;

/// Values from 1 to 3.6e9 (an hour in microseconds), with two significant
/// digits (1% precision): a few KiB per histogram.
const LOWEST_VALUE: u64 = 1;
const HIGHEST_VALUE: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

/// gRPC status codes 0..=16.
pub const CODE_COUNT: usize = 17;

/// A distribution of whole numbers (microseconds for latencies, entries
/// for batch sizes) plus its exact sum: HDR keeps counts, not sums, and
/// Prometheus histograms report both.
#[derive(Clone)]
pub struct Distribution {
    histogram: Histogram<u64>,
    sum: u64,
}

impl Default for Distribution {
    fn default() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(LOWEST_VALUE, HIGHEST_VALUE, SIGNIFICANT_DIGITS)
                .expect("constant bounds are valid"),
            sum: 0,
        }
    }
}

impl Distribution {
    pub fn record(&mut self, value: u64) {
        let value = value.clamp(LOWEST_VALUE, HIGHEST_VALUE);
        self.histogram.saturating_record(value);
        self.sum = self.sum.saturating_add(value);
    }

    /// Records a latency in microseconds.
    pub fn record_duration(&mut self, elapsed: Duration) {
        self.record(elapsed.as_micros().min(u128::from(HIGHEST_VALUE)) as u64);
    }

    pub fn merge(&mut self, other: &Distribution) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.sum = self.sum.saturating_add(other.sum);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Recorded values at or below `bound` (HDR precision: 1%).
    pub fn count_at_or_below(&self, bound: u64) -> u64 {
        if bound < LOWEST_VALUE {
            return 0;
        }
        self.histogram.count_between(0, bound.min(HIGHEST_VALUE))
    }
}

/// One method's calls on one core.
#[derive(Clone, Default)]
pub struct MethodStats {
    pub started: u64,
    /// Finished calls by gRPC status code.
    pub handled: [u64; CODE_COUNT],
    pub handling: Distribution,
}

/// Why the server closed a client connection: the `reason` label of
/// `metastore_client_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionClose {
    /// No client preface within `--grpc-handshake-timeout`.
    HandshakeTimeout,
    /// No SETTINGS after the preface within `--grpc-handshake-timeout`.
    SettingsTimeout,
    /// No request within `--grpc-first-request-timeout`.
    FirstRequestTimeout,
    /// No call for `--grpc-max-connection-idle`.
    Idle,
    /// A keepalive ping went unanswered.
    Unresponsive,
    /// Header blocks broke the HPACK bounds (`grpc::inbound`).
    HeaderAbuse,
}

impl ConnectionClose {
    pub const ALL: [ConnectionClose; 6] = [
        ConnectionClose::HandshakeTimeout,
        ConnectionClose::SettingsTimeout,
        ConnectionClose::FirstRequestTimeout,
        ConnectionClose::Idle,
        ConnectionClose::Unresponsive,
        ConnectionClose::HeaderAbuse,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ConnectionClose::HandshakeTimeout => "handshake_timeout",
            ConnectionClose::SettingsTimeout => "settings_timeout",
            ConnectionClose::FirstRequestTimeout => "first_request_timeout",
            ConnectionClose::Idle => "idle",
            ConnectionClose::Unresponsive => "keepalive_unanswered",
            ConnectionClose::HeaderAbuse => "header_abuse",
        }
    }
}

/// Plain counters a core keeps; gauges are counts that also go down.
#[derive(Clone, Copy, Default, Debug)]
pub struct CoreCounters {
    pub connections_open: i64,
    pub connections_accepted: u64,
    /// Refused because `--max-connections` were open.
    pub connections_rejected: u64,
    /// Accepts that failed because the process or the system was out of
    /// file descriptors (EMFILE / ENFILE); each time the listener stops
    /// listening for a moment, refusing new connections.
    pub accepts_out_of_fds: u64,
    /// Closed by the server, by [`ConnectionClose`] (indexed by its
    /// position in `ConnectionClose::ALL`).
    pub connections_closed: [u64; ConnectionClose::ALL.len()],
    /// Calls failed because a request message stayed incomplete for
    /// `--grpc-request-message-timeout`.
    pub request_message_timeouts: u64,
    /// Txn requests large enough to be decoded and checked on a helper
    /// thread rather than on the core.
    pub txn_checks_off_core: u64,
    pub rate_limited: u64,
    pub slow_requests: u64,
    pub handler_panics: u64,
    pub watch_streams: i64,
    pub watchers: i64,
    pub leases_granted: u64,
    pub leases_revoked: u64,
    pub leases_renewed: u64,
}

/// What a scrape receives from one core.
#[derive(Clone)]
pub struct CoreSnapshot {
    pub methods: Vec<MethodStats>,
    pub wal_fsync: Distribution,
    pub backend_commit: Distribution,
    pub cross_core_hop: Distribution,
    /// Entries made durable by each fsync.
    pub entries_per_fsync: Distribution,
    pub counters: CoreCounters,
}

impl CoreSnapshot {
    pub fn empty() -> Self {
        Self {
            methods: vec![MethodStats::default(); METHODS.len()],
            wal_fsync: Distribution::default(),
            backend_commit: Distribution::default(),
            cross_core_hop: Distribution::default(),
            entries_per_fsync: Distribution::default(),
            counters: CoreCounters::default(),
        }
    }

    pub fn merge(&mut self, other: &CoreSnapshot) {
        for (mine, theirs) in self.methods.iter_mut().zip(&other.methods) {
            mine.started += theirs.started;
            for (count, more) in mine.handled.iter_mut().zip(theirs.handled) {
                *count += more;
            }
            mine.handling.merge(&theirs.handling);
        }
        self.wal_fsync.merge(&other.wal_fsync);
        self.backend_commit.merge(&other.backend_commit);
        self.cross_core_hop.merge(&other.cross_core_hop);
        self.entries_per_fsync.merge(&other.entries_per_fsync);
        let (mine, theirs) = (&mut self.counters, other.counters);
        mine.connections_open += theirs.connections_open;
        mine.connections_accepted += theirs.connections_accepted;
        mine.connections_rejected += theirs.connections_rejected;
        mine.accepts_out_of_fds += theirs.accepts_out_of_fds;
        for (count, more) in mine
            .connections_closed
            .iter_mut()
            .zip(theirs.connections_closed)
        {
            *count += more;
        }
        mine.request_message_timeouts += theirs.request_message_timeouts;
        mine.txn_checks_off_core += theirs.txn_checks_off_core;
        mine.rate_limited += theirs.rate_limited;
        mine.slow_requests += theirs.slow_requests;
        mine.handler_panics += theirs.handler_panics;
        mine.watch_streams += theirs.watch_streams;
        mine.watchers += theirs.watchers;
        mine.leases_granted += theirs.leases_granted;
        mine.leases_revoked += theirs.leases_revoked;
        mine.leases_renewed += theirs.leases_renewed;
    }
}

/// One core's metrics. Shared by `Rc` among that core's tasks only.
pub struct CoreMetrics {
    /// `false` with `--metrics off`: every recording call returns at once,
    /// which is how the cost of recording is measured.
    enabled: bool,
    snapshot: RefCell<CoreSnapshot>,
    /// Kept apart from `snapshot` so a counter bump never borrows the
    /// histograms' `RefCell`.
    counters: Cell<CoreCounters>,
}

impl CoreMetrics {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            snapshot: RefCell::new(CoreSnapshot::empty()),
            counters: Cell::new(CoreCounters::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A copy of everything recorded so far, for a scrape.
    pub fn snapshot(&self) -> CoreSnapshot {
        let mut snapshot = self.snapshot.borrow().clone();
        snapshot.counters = self.counters.get();
        snapshot
    }

    pub fn call_started(&self, method: MethodId) {
        if self.enabled {
            self.snapshot.borrow_mut().methods[usize::from(method.0)].started += 1;
        }
    }

    pub fn call_handled(&self, method: MethodId, code: Code, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        let mut snapshot = self.snapshot.borrow_mut();
        let stats = &mut snapshot.methods[usize::from(method.0)];
        stats.handled[(code.as_i32() as usize).min(CODE_COUNT - 1)] += 1;
        stats.handling.record_duration(elapsed);
    }

    /// One WAL sync: how long the fdatasync took, how long the whole
    /// persist (write + sync) took, and how many entries it made durable.
    pub fn wal_synced(&self, fsync: Duration, persist: Duration, entries: usize) {
        if !self.enabled {
            return;
        }
        let mut snapshot = self.snapshot.borrow_mut();
        snapshot.wal_fsync.record_duration(fsync);
        snapshot.backend_commit.record_duration(persist);
        snapshot.entries_per_fsync.record(entries as u64);
    }

    /// A command waited `elapsed` between being queued on another core (or
    /// this one) and its shard worker taking it.
    pub fn hop(&self, elapsed: Duration) {
        if self.enabled {
            self.snapshot
                .borrow_mut()
                .cross_core_hop
                .record_duration(elapsed);
        }
    }

    /// Counts a connection the server closed.
    pub fn connection_closed(&self, reason: ConnectionClose) {
        let index = ConnectionClose::ALL
            .iter()
            .position(|known| *known == reason)
            .unwrap_or_default();
        self.count(|counters| counters.connections_closed[index] += 1);
    }

    /// Adjusts the plain counters; always recorded, even with metrics off,
    /// because limits and health checks report through them.
    pub fn count(&self, change: impl FnOnce(&mut CoreCounters)) {
        let mut counters = self.counters.get();
        change(&mut counters);
        self.counters.set(counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::methods::find_method;

    #[test]
    fn calls_are_counted_by_code_and_merged_across_cores() {
        let put = find_method("etcdserverpb.KV", "Put").expect("known");
        let cores = [CoreMetrics::new(true), CoreMetrics::new(true)];
        for (index, core) in cores.iter().enumerate() {
            core.call_started(put);
            core.call_handled(put, Code::Ok, Duration::from_millis(2 + index as u64));
            core.count(|counters| counters.connections_open += 1);
        }
        cores[1].call_handled(put, Code::ResourceExhausted, Duration::from_millis(1));
        let mut merged = CoreSnapshot::empty();
        for core in &cores {
            merged.merge(&core.snapshot());
        }
        let stats = &merged.methods[usize::from(put.0)];
        assert_eq!(stats.started, 2);
        assert_eq!(stats.handled[Code::Ok as usize], 2);
        assert_eq!(stats.handled[Code::ResourceExhausted as usize], 1);
        assert_eq!(stats.handling.count(), 3);
        assert_eq!(stats.handling.count_at_or_below(1_500), 1);
        assert_eq!(stats.handling.count_at_or_below(3_500), 3);
        assert_eq!(stats.handling.sum(), 6_000);
        assert_eq!(merged.counters.connections_open, 2);
    }

    #[test]
    fn disabled_metrics_record_no_calls() {
        let put = find_method("etcdserverpb.KV", "Put").expect("known");
        let core = CoreMetrics::new(false);
        core.call_started(put);
        core.call_handled(put, Code::Ok, Duration::from_millis(1));
        core.wal_synced(Duration::from_millis(1), Duration::from_millis(1), 3);
        let snapshot = core.snapshot();
        assert_eq!(snapshot.methods[usize::from(put.0)].started, 0);
        assert_eq!(snapshot.wal_fsync.count(), 0);
    }
}
