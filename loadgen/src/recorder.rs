//! Per-thread result recording, merged once at the end of a run.
//!
//! Each worker thread owns a [`Recorder`]: recording a latency is a plain
//! histogram increment with no lock and no shared cache line, so the load
//! generator does not become the bottleneck it is trying to measure. The
//! recorders are merged into one after the threads finish.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use metastore::grpc::Status;

/// Latencies are recorded in nanoseconds with 3 significant digits
/// (0.1% error), from 1 ns up to this bound; longer ones are clamped.
const HIGHEST_TRACKABLE_NANOS: u64 = 3_600_000_000_000;

/// What one thread (or, after merging, the whole run) observed.
#[derive(Clone)]
pub struct Recorder {
    /// Successful requests' latencies in nanoseconds.
    latencies: Histogram<u64>,
    /// Failed requests by `"<code>: <message>"`, as etcd's benchmark groups
    /// errors by their text. Ordered so reports are stable.
    errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            latencies: Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_NANOS, 3)
                .expect("constant histogram bounds are valid"),
            errors: BTreeMap::new(),
        }
    }

    pub fn record_success(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latencies.saturating_record(nanos.max(1));
    }

    pub fn record_error(&mut self, status: &Status) {
        self.record_errors(status, 1);
    }

    /// Records `count` failures with the same cause (e.g. events that never
    /// arrived on a stream that ended).
    pub fn record_errors(&mut self, status: &Status, count: u64) {
        if count == 0 {
            return;
        }
        let key = format!("{:?}: {}", status.code(), status.message());
        *self.errors.entry(key).or_insert(0) += count;
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so adding cannot fail.
        self.latencies
            .add(&other.latencies)
            .expect("recorders share histogram bounds");
        for (error, count) in &other.errors {
            *self.errors.entry(error.clone()).or_insert(0) += count;
        }
    }

    pub fn successes(&self) -> u64 {
        self.latencies.len()
    }

    pub fn failures(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn latencies(&self) -> &Histogram<u64> {
        &self.latencies
    }

    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }
}

#[cfg(test)]
mod tests {
    use metastore::grpc::Code;

    use super::*;

    #[test]
    fn merge_adds_counts_and_errors() {
        let mut first = Recorder::new();
        first.record_success(Duration::from_micros(100));
        first.record_error(&Status::new(Code::Unavailable, "down"));
        let mut second = Recorder::new();
        second.record_success(Duration::from_micros(300));
        second.record_error(&Status::new(Code::Unavailable, "down"));
        second.record_error(&Status::new(Code::ResourceExhausted, "slow down"));
        first.merge(&second);
        assert_eq!(first.successes(), 2);
        assert_eq!(first.failures(), 3);
        assert_eq!(first.errors()["Unavailable: down"], 2);
        let max = first.latencies().max();
        assert!((299_000..=301_000).contains(&max), "max {max}");
    }

    #[test]
    fn absurd_latencies_are_clamped_not_lost() {
        let mut recorder = Recorder::new();
        recorder.record_success(Duration::from_secs(100_000));
        recorder.record_success(Duration::ZERO);
        assert_eq!(recorder.successes(), 2);
    }
}
