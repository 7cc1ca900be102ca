//! The per-shard write-ahead log.
//!
//! Contents:
//! - `device`: the `StorageDevice`/`DeviceFile` traits the WAL writes
//!   through, and `AlignedBuffer` (4 KiB-aligned, for `O_DIRECT`).
//! - `direct`: `DirectDevice`, real files with `O_DIRECT` through monoio.
//! - `memory`: `MemoryDevice`, an in-memory twin with crash, torn-write,
//!   bit-flip and fsync-failure injection, for tests and benchmarks.
//! - `format`: the on-disk format as pure encode/decode functions
//!   (byte-level description in `docs/wal-format.md`).
//! - `log`: `Wal` itself: append, group-commit `sync`, rotation, release.
//! - `reading`: `WalReading`, a log read back without changing it, and
//!   `LogEnd` (clean, damaged last frame, corrupt); `resume` opens it for
//!   writing once the node decided a damaged tail may be dropped.
//! - `recovery`: how the segments found are read (the rule below).
//! - `error`: `WalError`.
//!
//! Invariants:
//! - A record is acknowledged (`durable_sequence` covers it) only after the
//!   write of its frame AND the following `fdatasync` succeeded.
//! - One `sync` = one frame = one positioned write of whole new 4 KiB
//!   blocks + one `fdatasync`. No write ever touches a block holding
//!   acknowledged data, so a torn write can only damage the frame being
//!   written.
//! - Recovery drops a bad frame only if no valid later frame exists; a bad
//!   frame with valid data after it is reported as corruption with its file
//!   and byte offset, never skipped. Reading changes nothing: a damaged
//!   tail is dropped only by `WalReading::resume`, after the node checked
//!   that no other shard's log proves it durable.
//! - A failed or cancelled sync leaves the WAL refusing further syncs: an
//!   fsync is never retried.
//! - Nothing read from disk is trusted before its checksum is verified, and
//!   no length field sizes an allocation before it is checked against the
//!   file's real length.

pub mod device;
pub mod direct;
pub mod error;
pub mod format;
pub mod log;
pub mod memory;
pub mod reading;
mod recovery;

#[cfg(test)]
mod space_tests;
#[cfg(test)]
mod tests;

pub use device::{AlignedBuffer, BLOCK_SIZE, DeviceFile, StorageDevice};
pub use direct::DirectDevice;
pub use error::WalError;
pub use log::{Record, ReleasedSegments, SyncReport, Wal, WalOptions};
pub use memory::MemoryDevice;
pub use reading::{LogDamage, LogEnd, WalReading};
