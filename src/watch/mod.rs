//! Watch: delivering the global history to watchers, in revision order,
//! across shards.
//!
//! - [`history`]: reads the changes of a revision interval from the shards'
//!   revision indexes and merges them (pure).
//! - [`watcher`]: one watch: range, filters, position; changes into
//!   `WatchResponse`s, fragmenting as etcd does (pure).
//! - [`reply`]: a response with its events already encoded, so a change
//!   is encoded once per core however many watchers receive it (pure).
//! - [`stream`]: the watches of one gRPC stream: create/cancel with etcd's
//!   rules and answers (pure).
//! - [`feed`]: a core's shared window of recent history, read once per
//!   watermark advance for all its streams.
//!
//! Guarantees (etcd's): a watcher's position (`next_revision`) only moves
//! forward, past history it was given in full, and history is read only at
//! or below the watermark (complete revisions): ordered, unique, reliable.
//! A response holds whole revisions (atomic). A progress notification at R
//! is sent only when every watch concerned was given everything at or below
//! R (bookmarkable). Memory per watcher is bounded: nothing is queued per
//! watcher; a stream that cannot send stops reading and later resumes from
//! history, or is canceled with `compact_revision` if that history is gone.

pub mod feed;
pub mod history;
pub mod reply;
pub mod stream;
pub mod watcher;

/// Most revisions in one watch response (etcd's `watchBatchMaxRevs`).
pub const MAX_REVISIONS_PER_RESPONSE: usize = 1000;

/// Changes a core's feed keeps; older batches are dropped and watchers that
/// still need them read history instead.
pub const FEED_MAX_CHANGES: usize = 65_536;

/// Keys and values a core's feed keeps, whose encoded events it also holds
/// once watchers have sent them: a bound on that copy (the changes
/// themselves share the memtable's bytes).
pub const FEED_MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// Changes a lagging watcher reads from history per step, so catching up
/// needs bounded memory however far behind it is.
pub const CATCH_UP_CHUNK_CHANGES: usize = 4096;
