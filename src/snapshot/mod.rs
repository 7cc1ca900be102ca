//! Shard snapshot files: the whole MVCC state of one shard at a Raft log
//! position, in a form that can be validated and then read in place.
//!
//! A snapshot file image is a fixed 32-byte header followed by an rkyv
//! archive of the snapshot's facts ([`SnapshotMeta`]) and its versions
//! ([`SnapshotEntry`]). The byte layout and the reasons behind it are in
//! `docs/snapshot-format.md`.
//!
//! [`backup`] is the whole-node backup file (`Maintenance.Snapshot`) made of
//! such images, and [`restore`] turns one into a new data directory.
//!
//! This module is pure apart from [`restore`] and the file helpers in [`files`] (named
//! atomic writes and picking the newest valid file at startup); it starts no
//! tasks and takes no locks.
//!
//! Invariants:
//! - No input panics a reader or makes it allocate in proportion to a length
//!   field: declared lengths are compared with the bytes actually present
//!   before anything is read through them, and the archive is checked by
//!   rkyv's bytecheck before any archived value is touched.
//! - [`SnapshotView::open`] accepts an image only if the header is intact
//!   (its own checksum), the archive has exactly the declared length, the
//!   archive's crc32c matches, and the archive validates. Anything else is a
//!   [`SnapshotError`].
//! - The format is fixed by this build, not by the machine: rkyv is built
//!   little-endian, unaligned and with 64-bit offsets (see `Cargo.toml`), and
//!   the header is little-endian.

pub mod backup;
mod files;
mod format;
pub mod restore;

#[cfg(test)]
mod tests;

pub use files::{
    LoadedSnapshot, RejectedSnapshotFile, SnapshotCandidate, SnapshotScan, WritePace,
    load_newest_snapshot, parse_snapshot_file_name, scan_snapshot_directory,
    snapshot_candidates_newest_first, snapshot_file_name, write_snapshot_file,
};
pub use format::{
    FORMAT_VERSION, HEADER_LENGTH, MAX_ARCHIVE_LENGTH, SNAPSHOT_MAGIC, SnapshotView,
    encode_snapshot,
};

use bytes::Bytes;

/// Facts about the state a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub shard: u32,
    pub shard_count: u32,
    /// Raft log position the snapshot covers (everything at or below is in it).
    pub raft_index: u64,
    pub raft_term: u64,
    /// Highest store revision applied in the snapshot, and the compaction
    /// point (-1 = never).
    pub revision: i64,
    pub compacted_revision: i64,
}

/// One stored version, as in the memtable: the memtable's
/// `(key, revision) -> Version` entry flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub key: Bytes,
    /// The `mod_revision` of this version.
    pub revision: i64,
    pub value: Bytes,
    pub create_revision: i64,
    /// Number of puts since creation; 0 marks a tombstone.
    pub version: i64,
    pub lease: i64,
    /// The change's place among its revision's changes (watch order).
    pub sub_revision: u32,
}

/// A lease recorded in its home shard's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLease {
    pub id: i64,
    /// The TTL it was granted with; a restarted server gives it in full.
    pub ttl_seconds: i64,
}

impl SnapshotEntry {
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }
}

/// One stored version read in place from a snapshot image: key and value
/// borrow the image, the integers are copied out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEntryRef<'a> {
    pub key: &'a [u8],
    pub revision: i64,
    pub value: &'a [u8],
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub sub_revision: u32,
}

impl SnapshotEntryRef<'_> {
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    /// Copies key and value out of the image into an owned entry.
    pub fn to_entry(&self) -> SnapshotEntry {
        SnapshotEntry {
            key: Bytes::copy_from_slice(self.key),
            revision: self.revision,
            value: Bytes::copy_from_slice(self.value),
            create_revision: self.create_revision,
            version: self.version,
            lease: self.lease,
            sub_revision: self.sub_revision,
        }
    }
}

/// Why a snapshot image was refused (or could not be built).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a snapshot file: the magic bytes do not match")]
    BadMagic,
    #[error("unsupported snapshot format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("snapshot header has unknown flags {0:#x}")]
    UnsupportedFlags(u32),
    #[error("snapshot truncated: needs {needed} bytes, has {available}")]
    Truncated { needed: u64, available: u64 },
    #[error("snapshot has {available} bytes where the header declares {declared}")]
    TrailingBytes { declared: u64, available: u64 },
    #[error("snapshot header checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    HeaderChecksum { expected: u32, actual: u32 },
    #[error("snapshot archive checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("invalid snapshot archive: {0}")]
    InvalidArchive(String),
    #[error("snapshot archive of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge { length: u64, limit: u64 },
    #[error("snapshot encoding failed: {0}")]
    Encode(String),
    #[error(
        "snapshot file name says term {name_term} index {name_index}, \
         its contents say term {meta_term} index {meta_index}"
    )]
    NameMismatch {
        name_term: u64,
        name_index: u64,
        meta_term: u64,
        meta_index: u64,
    },
}
