//! Metrics: recorded per core without locks, merged and exposed on scrape.
//!
//! - [`methods`]: the fixed table of gRPC methods that get labels.
//! - [`recorder`]: each core's [`CoreMetrics`] (HDR histograms, counters)
//!   and the [`CoreSnapshot`] a scrape collects from it.
//! - [`exposition`]: Prometheus families with etcd's names, from the
//!   merged snapshots and a [`exposition::NodeView`] of shared state.

pub mod exposition;
pub mod methods;
pub mod recorder;

pub use recorder::{ConnectionClose, CoreMetrics, CoreSnapshot};
