//! Turning a run's [`Recorder`] into etcd's report shape or JSON.
//!
//! The text layout follows etcd's `pkg/report` (Summary, Response time
//! histogram, Latency distribution, Error distribution, `%4.4f secs`), so
//! output can be read side by side with published `benchmark` results.
//! Percentiles come from the HDR histogram (0.1% precision) instead of a
//! sorted slice of every latency.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::recorder::Recorder;

/// The percentiles etcd prints, plus the maximum.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// One measured quantity of a run (a run may have several: the watch
/// workload reports watch creation and event delivery separately).
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub name: String,
    /// Successful operations.
    pub requests: u64,
    pub failures: u64,
    /// Failures by `"<code>: <message>"`.
    pub errors: BTreeMap<String, u64>,
    /// Wall time the operations took, first start to last completion.
    pub elapsed_seconds: f64,
    /// `requests / elapsed_seconds`.
    pub requests_per_second: f64,
    /// Latency statistics in seconds; absent when nothing succeeded.
    pub latency: Option<LatencySummary>,
    /// Workload-specific figures (e.g. events delivered, watchers).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
    /// The 11 buckets of etcd's response-time histogram (text output only).
    #[serde(skip)]
    buckets: Vec<(f64, u64)>,
    /// Kept for percentiles other than the printed ones (`plan`'s
    /// objective may be any percentile).
    #[serde(skip)]
    histogram: Histogram<u64>,
}

/// Latency statistics in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub fastest: f64,
    pub slowest: f64,
    pub average: f64,
    pub stddev: f64,
    /// `"p50"` → seconds, for every entry of [`PERCENTILES`].
    pub percentiles: BTreeMap<String, f64>,
}

impl LatencySummary {
    pub fn percentile(&self, percentile: f64) -> Option<f64> {
        self.percentiles.get(&percentile_label(percentile)).copied()
    }
}

/// `99.9` → `"p99.9"`, `50` → `"p50"`.
pub fn percentile_label(percentile: f64) -> String {
    format!("p{percentile}")
}

const NANOS_PER_SECOND: f64 = 1e9;

impl Section {
    pub fn new(name: &str, recorder: &Recorder, elapsed: Duration) -> Self {
        let histogram = recorder.latencies();
        let requests = recorder.successes();
        let elapsed_seconds = elapsed.as_secs_f64();
        let latency = (requests > 0).then(|| LatencySummary {
            fastest: histogram.min() as f64 / NANOS_PER_SECOND,
            slowest: histogram.max() as f64 / NANOS_PER_SECOND,
            average: histogram.mean() / NANOS_PER_SECOND,
            stddev: histogram.stdev() / NANOS_PER_SECOND,
            percentiles: PERCENTILES
                .iter()
                .map(|&percentile| {
                    let nanos = histogram.value_at_percentile(percentile);
                    (
                        percentile_label(percentile),
                        nanos as f64 / NANOS_PER_SECOND,
                    )
                })
                .collect(),
        });
        Self {
            name: name.to_string(),
            requests,
            failures: recorder.failures(),
            errors: recorder.errors().clone(),
            elapsed_seconds,
            requests_per_second: if elapsed_seconds > 0.0 {
                requests as f64 / elapsed_seconds
            } else {
                0.0
            },
            latency,
            extra: BTreeMap::new(),
            buckets: linear_buckets(recorder),
            histogram: histogram.clone(),
        }
    }

    /// Any percentile of the latencies, in seconds; `None` when nothing
    /// succeeded.
    pub fn percentile_seconds(&self, percentile: f64) -> Option<f64> {
        (!self.histogram.is_empty())
            .then(|| self.histogram.value_at_percentile(percentile) as f64 / NANOS_PER_SECOND)
    }

    pub fn with_extra(mut self, name: &str, value: f64) -> Self {
        self.extra.insert(name.to_string(), value);
        self
    }

    /// etcd's text report for this section.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n{}:", self.name);
        if let Some(latency) = &self.latency {
            let _ = writeln!(out, "\nSummary:");
            let _ = writeln!(out, "  Total:\t{:4.4} secs.", self.elapsed_seconds);
            let _ = writeln!(out, "  Slowest:\t{:4.4} secs.", latency.slowest);
            let _ = writeln!(out, "  Fastest:\t{:4.4} secs.", latency.fastest);
            let _ = writeln!(out, "  Average:\t{:4.4} secs.", latency.average);
            let _ = writeln!(out, "  Stddev:\t{:4.4} secs.", latency.stddev);
            let _ = writeln!(out, "  Requests/sec:\t{:4.4}", self.requests_per_second);
            out.push_str(&self.render_histogram());
            let _ = writeln!(out, "\nLatency distribution:");
            for percentile in PERCENTILES {
                if let Some(seconds) = latency.percentile(percentile) {
                    let _ = writeln!(out, "  {percentile}% in {seconds:4.4} secs.");
                }
            }
        }
        for (name, value) in &self.extra {
            let _ = writeln!(out, "  {name}:\t{value}");
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nError distribution:");
            for (error, count) in &self.errors {
                let _ = writeln!(out, "  [{count}]\t{error}");
            }
        }
        out
    }

    fn render_histogram(&self) -> String {
        let widest = self
            .buckets
            .iter()
            .map(|(_, count)| *count)
            .max()
            .unwrap_or(0);
        let mut out = String::from("\nResponse time histogram:\n");
        for (upper_seconds, count) in &self.buckets {
            let bar_len = (count * 40).checked_div(widest).unwrap_or(0);
            let bar = "∎".repeat(bar_len as usize);
            let _ = writeln!(out, "  {upper_seconds:4.4} [{count}]\t|{bar}");
        }
        out
    }
}

/// etcd's histogram: 10 equal-width buckets from the fastest to the
/// slowest latency plus one ending exactly at the slowest; each bucket
/// counts latencies above the previous bound and at most its own.
fn linear_buckets(recorder: &Recorder) -> Vec<(f64, u64)> {
    let histogram = recorder.latencies();
    if histogram.is_empty() {
        return Vec::new();
    }
    let fastest = histogram.min() as f64;
    let slowest = histogram.max() as f64;
    let width = (slowest - fastest) / 10.0;
    let mut bounds: Vec<f64> = (0..10)
        .map(|index| fastest + width * index as f64)
        .collect();
    bounds.push(slowest);
    let mut counts = vec![0u64; bounds.len()];
    for value in histogram.iter_recorded() {
        let nanos = histogram.lowest_equivalent(value.value_iterated_to()) as f64;
        let bucket = bounds
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(bounds.len() - 1);
        counts[bucket] += value.count_at_value();
    }
    bounds
        .into_iter()
        .map(|bound| bound / NANOS_PER_SECOND)
        .zip(counts)
        .collect()
}

/// A whole run: what was run and its sections.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub workload: String,
    /// The command line's settings that shape the load.
    pub settings: BTreeMap<String, String>,
    pub sections: Vec<Section>,
}

impl RunReport {
    pub fn render(&self) -> String {
        self.sections.iter().map(Section::render).collect()
    }

    /// Failures in every section.
    pub fn failures(&self) -> u64 {
        self.sections.iter().map(|section| section.failures).sum()
    }

    pub fn requests(&self) -> u64 {
        self.sections.iter().map(|section| section.requests).sum()
    }
}

#[cfg(test)]
mod tests {
    use metastore::grpc::{Code, Status};

    use super::*;

    fn recorder_with(latencies_micros: &[u64]) -> Recorder {
        let mut recorder = Recorder::new();
        for micros in latencies_micros {
            recorder.record_success(Duration::from_micros(*micros));
        }
        recorder
    }

    #[test]
    fn percentiles_and_rate() {
        let latencies: Vec<u64> = (1..=1000).collect();
        let section = Section::new("put", &recorder_with(&latencies), Duration::from_secs(2));
        assert_eq!(section.requests, 1000);
        assert!((section.requests_per_second - 500.0).abs() < 1e-9);
        let latency = section.latency.as_ref().unwrap();
        let p50 = latency.percentile(50.0).unwrap();
        assert!((p50 - 500e-6).abs() < 1e-6, "p50 {p50}");
        let p99 = latency.percentile(99.0).unwrap();
        assert!((p99 - 990e-6).abs() < 2e-6, "p99 {p99}");
        assert!((latency.fastest - 1e-6).abs() < 1e-8);
    }

    #[test]
    fn buckets_cover_every_request_once() {
        let latencies: Vec<u64> = (0..500).map(|index| 100 + index * 7).collect();
        let section = Section::new("range", &recorder_with(&latencies), Duration::from_secs(1));
        assert_eq!(section.buckets.len(), 11);
        let counted: u64 = section.buckets.iter().map(|(_, count)| count).sum();
        assert_eq!(counted, 500);
    }

    #[test]
    fn text_has_etcds_headings_and_errors() {
        let mut recorder = recorder_with(&[100, 200]);
        recorder.record_error(&Status::new(Code::Unavailable, "gone"));
        let text = Section::new("put", &recorder, Duration::from_secs(1)).render();
        for heading in [
            "Summary:",
            "Requests/sec:",
            "Response time histogram:",
            "Latency distribution:",
            "99.9% in",
            "Error distribution:",
            "[1]\tUnavailable: gone",
        ] {
            assert!(text.contains(heading), "missing {heading:?} in\n{text}");
        }
    }

    #[test]
    fn all_failed_has_no_latency() {
        let mut recorder = Recorder::new();
        recorder.record_error(&Status::new(Code::Unavailable, "gone"));
        let section = Section::new("put", &recorder, Duration::from_secs(1));
        assert!(section.latency.is_none());
        assert_eq!(section.failures, 1);
        let json = serde_json::to_value(&section).unwrap();
        assert_eq!(json["latency"], serde_json::Value::Null);
    }
}
