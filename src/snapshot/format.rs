//! The snapshot image: header encoding and checking, the rkyv archive types,
//! [`encode_snapshot`] and the validated in-place reader [`SnapshotView`].

use bytes::Bytes;
use rkyv::rancor;

use super::{SnapshotEntry, SnapshotEntryRef, SnapshotError, SnapshotLease, SnapshotMeta};

/// First eight bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"METASNAP";
/// The one format version this build writes and reads. Bump it whenever the
/// header or any archived type below changes shape.
pub const FORMAT_VERSION: u32 = 2;
/// Length of the fixed header that precedes the archive.
pub const HEADER_LENGTH: usize = 32;
/// Largest archive accepted or produced (16 GiB): twice etcd's largest
/// recommended backend quota, so only a corrupt length field or a runaway
/// shard reaches it. Checked before any allocation made for a length.
pub const MAX_ARCHIVE_LENGTH: u64 = 16 << 30;

// Header field offsets; every integer is little-endian.
const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = 8;
const FLAGS_OFFSET: usize = 12;
const ARCHIVE_LENGTH_OFFSET: usize = 16;
const ARCHIVE_CHECKSUM_OFFSET: usize = 24;
const HEADER_CHECKSUM_OFFSET: usize = 28;

// The fields tile the header exactly, so the fixed-offset reads below stay
// inside the 32-byte array.
const _: () = assert!(MAGIC_OFFSET + SNAPSHOT_MAGIC.len() == VERSION_OFFSET);
const _: () = assert!(HEADER_CHECKSUM_OFFSET + 4 == HEADER_LENGTH);

/// The header fields that vary between images (magic, version and flags are
/// constants in this format version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) archive_length: u64,
    pub(super) archive_checksum: u32,
}

impl Header {
    pub(super) fn encode(&self) -> [u8; HEADER_LENGTH] {
        let mut header = [0u8; HEADER_LENGTH];
        header[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&SNAPSHOT_MAGIC);
        header[VERSION_OFFSET..FLAGS_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Flags (bytes 12..16) stay zero: no version defines any yet.
        header[ARCHIVE_LENGTH_OFFSET..ARCHIVE_CHECKSUM_OFFSET]
            .copy_from_slice(&self.archive_length.to_le_bytes());
        header[ARCHIVE_CHECKSUM_OFFSET..HEADER_CHECKSUM_OFFSET]
            .copy_from_slice(&self.archive_checksum.to_le_bytes());
        let header_checksum = crc32c::crc32c(&header[..HEADER_CHECKSUM_OFFSET]);
        header[HEADER_CHECKSUM_OFFSET..].copy_from_slice(&header_checksum.to_le_bytes());
        header
    }

    /// Checks a whole image's header and that the image holds exactly the
    /// declared archive length; returns the header and the archive bytes.
    ///
    /// Order of checks: magic, then version (the only fields every format
    /// version must keep in place), then the header's own checksum (so no
    /// later field is trusted unless intact), then flags and the declared
    /// length against the limit and against the bytes present.
    pub(super) fn check(image: &[u8]) -> Result<(Header, &[u8]), SnapshotError> {
        let available = image.len() as u64;
        let Some((header, archive)) = image.split_first_chunk::<HEADER_LENGTH>() else {
            // Too short for a header. Name a wrong magic if the bytes that
            // are there already disagree with it, so garbage reads as such.
            let prefix_length = image.len().min(SNAPSHOT_MAGIC.len());
            if image[..prefix_length] != SNAPSHOT_MAGIC[..prefix_length] {
                return Err(SnapshotError::BadMagic);
            }
            return Err(SnapshotError::Truncated {
                needed: HEADER_LENGTH as u64,
                available,
            });
        };
        if header[MAGIC_OFFSET..VERSION_OFFSET] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = read_u32(header, VERSION_OFFSET);
        if version != FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let stored_header_checksum = read_u32(header, HEADER_CHECKSUM_OFFSET);
        let header_checksum = crc32c::crc32c(&header[..HEADER_CHECKSUM_OFFSET]);
        if stored_header_checksum != header_checksum {
            return Err(SnapshotError::HeaderChecksum {
                expected: stored_header_checksum,
                actual: header_checksum,
            });
        }
        let flags = read_u32(header, FLAGS_OFFSET);
        if flags != 0 {
            return Err(SnapshotError::UnsupportedFlags(flags));
        }
        let archive_length = read_u64(header, ARCHIVE_LENGTH_OFFSET);
        if archive_length > MAX_ARCHIVE_LENGTH {
            return Err(SnapshotError::TooLarge {
                length: archive_length,
                limit: MAX_ARCHIVE_LENGTH,
            });
        }
        let present = archive.len() as u64;
        if archive_length > present {
            return Err(SnapshotError::Truncated {
                needed: HEADER_LENGTH as u64 + archive_length,
                available,
            });
        }
        if archive_length < present {
            return Err(SnapshotError::TrailingBytes {
                declared: HEADER_LENGTH as u64 + archive_length,
                available,
            });
        }
        let header = Header {
            archive_length,
            archive_checksum: read_u32(header, ARCHIVE_CHECKSUM_OFFSET),
        };
        Ok((header, archive))
    }
}

fn read_u32(header: &[u8; HEADER_LENGTH], offset: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&header[offset..offset + 4]);
    u32::from_le_bytes(field)
}

fn read_u64(header: &[u8; HEADER_LENGTH], offset: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&header[offset..offset + 8]);
    u64::from_le_bytes(field)
}

// The archived schema. These private types *are* the on-disk format (the
// public `SnapshotMeta`/`SnapshotEntry` can change without touching it):
// any change to a field here needs a new FORMAT_VERSION. rkyv lays each
// struct out in declaration order (`repr(C)`), without padding because the
// crate is built with rkyv's `unaligned` feature.

/// Root of the archive.
#[derive(rkyv::Archive, rkyv::Serialize)]
pub(super) struct SnapshotRecord {
    pub(super) meta: MetaRecord,
    pub(super) leases: Vec<LeaseRecord>,
    pub(super) entries: Vec<EntryRecord>,
}

/// A lease whose home is this shard (format version 2).
#[derive(rkyv::Archive, rkyv::Serialize)]
pub(super) struct LeaseRecord {
    pub(super) id: i64,
    pub(super) ttl_seconds: i64,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
pub(super) struct MetaRecord {
    pub(super) shard: u32,
    pub(super) shard_count: u32,
    pub(super) raft_index: u64,
    pub(super) raft_term: u64,
    pub(super) revision: i64,
    pub(super) compacted_revision: i64,
}

/// One version. `Bytes` archives as a byte vector (rkyv's `bytes-1`
/// feature), so encoding copies each key and value once, straight from the
/// memtable's buffers into the image.
#[derive(rkyv::Archive, rkyv::Serialize)]
pub(super) struct EntryRecord {
    pub(super) key: Bytes,
    pub(super) revision: i64,
    pub(super) value: Bytes,
    pub(super) create_revision: i64,
    pub(super) version: i64,
    pub(super) lease: i64,
    /// Format version 2: the change's place within its revision.
    pub(super) sub_revision: u32,
}

impl From<&SnapshotMeta> for MetaRecord {
    fn from(meta: &SnapshotMeta) -> Self {
        MetaRecord {
            shard: meta.shard,
            shard_count: meta.shard_count,
            raft_index: meta.raft_index,
            raft_term: meta.raft_term,
            revision: meta.revision,
            compacted_revision: meta.compacted_revision,
        }
    }
}

impl From<SnapshotEntry> for EntryRecord {
    fn from(entry: SnapshotEntry) -> Self {
        EntryRecord {
            key: entry.key,
            revision: entry.revision,
            value: entry.value,
            create_revision: entry.create_revision,
            version: entry.version,
            lease: entry.lease,
            sub_revision: entry.sub_revision,
        }
    }
}

/// Serializes a snapshot file image: a fixed header (magic, format version,
/// archived length, crc32c of the archive) followed by the rkyv archive of
/// (meta, entries). Entries are written in the order given.
///
/// Memory: the entries are collected (sharing the callers' `Bytes`, no copy)
/// and the image is allocated once at its exact final size.
pub fn encode_snapshot(
    meta: &SnapshotMeta,
    leases: &[SnapshotLease],
    entries: impl IntoIterator<Item = SnapshotEntry>,
) -> Result<Vec<u8>, SnapshotError> {
    let entries: Vec<EntryRecord> = entries.into_iter().map(EntryRecord::from).collect();
    // With the unaligned format the archive is exactly: every key and value
    // byte, one fixed-size record per entry, and the root. Refuse an
    // oversized snapshot before allocating its image.
    let payload_length: u64 = entries
        .iter()
        .map(|entry| entry.key.len() as u64 + entry.value.len() as u64)
        .sum();
    let expected_archive_length = payload_length
        + entries.len() as u64 * size_of::<ArchivedEntryRecord>() as u64
        + leases.len() as u64 * size_of::<ArchivedLeaseRecord>() as u64
        + size_of::<ArchivedSnapshotRecord>() as u64;
    let too_large = |length: u64| SnapshotError::TooLarge {
        length,
        limit: MAX_ARCHIVE_LENGTH,
    };
    if expected_archive_length > MAX_ARCHIVE_LENGTH {
        return Err(too_large(expected_archive_length));
    }
    let capacity = usize::try_from(HEADER_LENGTH as u64 + expected_archive_length)
        .map_err(|_| too_large(expected_archive_length))?;

    let record = SnapshotRecord {
        meta: MetaRecord::from(meta),
        leases: leases
            .iter()
            .map(|lease| LeaseRecord {
                id: lease.id,
                ttl_seconds: lease.ttl_seconds,
            })
            .collect(),
        entries,
    };
    // Serialize straight after a placeholder header. rkyv's pointers are
    // relative, so the archive does not depend on where it starts.
    let mut image = Vec::with_capacity(capacity);
    image.resize(HEADER_LENGTH, 0);
    let mut image = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&record, image)
        .map_err(|error| SnapshotError::Encode(error.to_string()))?;
    drop(record);

    let (header_bytes, archive) = image.split_at_mut(HEADER_LENGTH);
    let archive_length = archive.len() as u64;
    if archive_length > MAX_ARCHIVE_LENGTH {
        return Err(too_large(archive_length));
    }
    let header = Header {
        archive_length,
        archive_checksum: crc32c::crc32c(archive),
    };
    header_bytes.copy_from_slice(&header.encode());
    Ok(image)
}

/// A validated snapshot image, read in place: header, checksum and archive
/// (rkyv bytecheck) have been checked, so every accessor is infallible and
/// borrows the image rather than copying it.
#[derive(Clone, Copy)]
pub struct SnapshotView<'a> {
    archive: &'a ArchivedSnapshotRecord,
}

impl<'a> SnapshotView<'a> {
    /// Validates `bytes` as a whole snapshot image. Costs one crc32c pass and
    /// one bytecheck pass over the archive; allocates nothing proportional to
    /// any length field.
    pub fn open(bytes: &'a [u8]) -> Result<SnapshotView<'a>, SnapshotError> {
        let (header, archive_bytes) = Header::check(bytes)?;
        // Checksum before bytecheck: a corrupt archive is reported as
        // corruption, and bytecheck only ever walks bytes that were written
        // by `encode_snapshot` (or by someone who forged the checksum).
        let actual = crc32c::crc32c(archive_bytes);
        if actual != header.archive_checksum {
            return Err(SnapshotError::Checksum {
                expected: header.archive_checksum,
                actual,
            });
        }
        let archive = rkyv::access::<ArchivedSnapshotRecord, rancor::Error>(archive_bytes)
            .map_err(|error| SnapshotError::InvalidArchive(error.to_string()))?;
        Ok(SnapshotView { archive })
    }

    pub fn meta(&self) -> SnapshotMeta {
        let meta = &self.archive.meta;
        SnapshotMeta {
            shard: meta.shard.to_native(),
            shard_count: meta.shard_count.to_native(),
            raft_index: meta.raft_index.to_native(),
            raft_term: meta.raft_term.to_native(),
            revision: meta.revision.to_native(),
            compacted_revision: meta.compacted_revision.to_native(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.archive.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.archive.entries.is_empty()
    }

    /// The entries in the order they were given to [`encode_snapshot`].
    /// The iterator borrows the image, not this view.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = SnapshotEntryRef<'a>> + use<'a> {
        let archive: &'a ArchivedSnapshotRecord = self.archive;
        archive.entries.iter().map(|entry| SnapshotEntryRef {
            key: entry.key.as_slice(),
            revision: entry.revision.to_native(),
            value: entry.value.as_slice(),
            create_revision: entry.create_revision.to_native(),
            version: entry.version.to_native(),
            lease: entry.lease.to_native(),
            sub_revision: entry.sub_revision.to_native(),
        })
    }

    /// The leases whose home is this shard.
    pub fn leases(&self) -> Vec<SnapshotLease> {
        self.archive
            .leases
            .iter()
            .map(|lease| SnapshotLease {
                id: lease.id.to_native(),
                ttl_seconds: lease.ttl_seconds.to_native(),
            })
            .collect()
    }
}

impl std::fmt::Debug for SnapshotView<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SnapshotView")
            .field("meta", &self.meta())
            .field("len", &self.len())
            .finish()
    }
}
