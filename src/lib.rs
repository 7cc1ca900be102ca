//! MetaStore: an etcd v3 compatible key-value server, thread-per-core.
//!
//! Table of contents, from the wire inwards:
//!
//! - [`config`]: the command line (etcd's flag names) and its validation.
//! - [`data_dir`]: the data directory: private, locked, facts fixed at creation.
//! - [`runtime`]: one pinned `monoio` executor per core, listeners, startup.
//! - [`grpc`]: our gRPC layer over `h2`: framing, status, deadlines, calls.
//! - [`proto`]: etcd's protobuf messages, generated from `proto/`.
//! - [`service`]: the etcd services (KV, Maintenance, Cluster) on top of the store.
//! - [`metrics`]: per-core recording (HDR histograms, counters), merged on scrape.
//! - [`log_throttle`]: warnings an attack could repeat, logged at most once per interval.
//! - [`monitor`]: `/metrics`, `/health`, `/livez`, `/readyz` on their own thread.
//! - [`lease`]: leases: the node's lease table, IDs, where leases are logged.
//! - [`watch`]: watchers: matching, history catch-up, the per-core event feed.
//! - [`status_map`]: every internal error to gRPC code + etcd's exact message.
//! - [`shard`]: shard workers (the only writers) and the write path across shards.
//! - [`peer`]: the peer protocol and transport: Raft messages between members.
//! - [`membership`]: member and cluster IDs, derived as etcd derives them.
//! - [`snapshot`]: the shard snapshot file format (rkyv archive, checksummed).
//! - [`repair`]: `metastore repair`, the way out of a refused start after corruption.
//! - [`store`]: the MVCC key space: memtables, global revision, etcd's KV semantics.
//! - [`wal`]: the per-shard write-ahead log on O_DIRECT files, and its in-memory twin.

pub mod config;
pub mod data_dir;
pub mod grpc;
pub mod lease;
pub mod log_throttle;
pub mod membership;
pub mod metrics;
pub mod monitor;
pub mod peer;
pub mod proto;
pub mod repair;
pub mod runtime;
pub mod service;
pub mod shard;
pub mod snapshot;
pub mod status_map;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod wal;
pub mod watch;
