//! The MVCC key space (pure: no I/O, no tasks).
//!
//! - [`shard_map`]: key → shard (stable hash) and shard → core.
//! - [`revision`]: the global revision sequencer and the applied watermark.
//! - [`memtable`]: one shard's lock-free multi-version skip list.
//! - [`pending`]: what a shard proposed and has not applied yet, for evaluating the next write.
//! - [`version_key`]: the skip list's order, searched without owned keys.
//! - [`key_range`]: etcd's `key`/`range_end` forms.
//! - [`key_space`]: all shards together, consistent reads at a revision.
//! - [`request_check`]: etcd's request validation, same order, same errors.
//! - [`txn_intervals`]: etcd's duplicate-key rule for txns, in O(n log n).
//! - [`range`]: Range semantics (filters, sort, limit, count).
//! - [`write`]: Put/DeleteRange/Txn evaluation into a change set.
//! - [`content_hash`]: `HashKV`/`Hash`, equal on equal data for any shard count.
//! - [`error`]: the layer's error enum.

pub mod applied_revisions;
pub mod content_hash;
pub mod error;
pub mod key_range;
pub mod key_space;
pub mod memtable;
pub mod pending;
pub mod range;
pub mod request_check;
pub mod revision;
pub mod shard_map;
pub mod txn_intervals;
pub mod version_key;
pub mod write;
