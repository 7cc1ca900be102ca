//! The backup file: what `Maintenance.Snapshot` streams and `metastore
//! snapshot restore` reads. A whole node's MVCC state at one revision, in
//! frames that each hold a shard snapshot image (`format.rs`), so a backup
//! can be written shard by shard, in bounded chunks, while it streams.
//! Byte layout: `docs/backup-format.md`.
//!
//! Invariants:
//! - The data part is a multiple of 512 bytes (zero padding after the end
//!   frame), and a transfer appends the SHA-256 of the data, as etcd does,
//!   so `etcdctl snapshot save`'s `size % 512 == 32` check holds.
//! - Reading is strict and never panics: every header and frame has a
//!   checksum, every length is compared with the bytes present before it is
//!   used, each image is validated by `SnapshotView::open`, and the end frame's
//!   counts and length must match what was read. Anything else is a
//!   [`BackupError`] naming the offset.

use std::io::{self, Write};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{
    SnapshotEntry, SnapshotError, SnapshotLease, SnapshotMeta, SnapshotView, encode_snapshot,
};

/// First eight bytes of every backup.
pub const BACKUP_MAGIC: [u8; 8] = *b"METABKUP";
/// The one backup format version this build writes and reads.
pub const BACKUP_FORMAT_VERSION: u32 = 1;
/// Length of the file header.
pub const BACKUP_HEADER_LENGTH: usize = 32;
/// Length of each frame's header.
pub const FRAME_HEADER_LENGTH: usize = 16;
/// Length of the end frame's body.
pub const END_BODY_LENGTH: usize = 40;
/// The data part's length is a multiple of this (etcd's check).
pub const BACKUP_ALIGNMENT: usize = 512;
/// Length of the optional trailing SHA-256 of the data part.
pub const SHA256_LENGTH: usize = 32;
/// Largest frame body accepted or written (one image; 1 GiB).
pub const MAX_FRAME_BODY: u64 = 1 << 30;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum FrameKind {
    /// A snapshot image with the leases and no versions.
    Leases = 1,
    /// A snapshot image with versions of one source shard.
    Versions = 2,
    /// The end frame: compaction point, counts, data length.
    End = 3,
}

impl FrameKind {
    fn from_u32(value: u32) -> Option<Self> {
        [Self::Leases, Self::Versions, Self::End]
            .into_iter()
            .find(|kind| *kind as u32 == value)
    }
}

/// Why a backup file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error(
        "not a MetaStore snapshot (bad magic; a snapshot taken from etcd cannot be restored by MetaStore)"
    )]
    BadMagic,
    #[error(
        "unsupported snapshot format version {0} (this build reads version {BACKUP_FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    #[error(
        "file is {0} bytes, neither a multiple of 512 nor 32 more (with a SHA-256): it is truncated or has bytes appended"
    )]
    BadLength(u64),
    #[error("SHA-256 mismatch: the file is corrupt (stored {expected}, computed {actual})")]
    HashMismatch { expected: String, actual: String },
    #[error("corrupt {what} at offset {offset}: {reason}")]
    Corrupt {
        what: &'static str,
        offset: u64,
        reason: String,
    },
    #[error("truncated: {what} at offset {offset} needs {needed} bytes, {available} remain")]
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("snapshot image at offset {offset}: {source}")]
    Image { offset: u64, source: SnapshotError },
}

/// A backup read back: everything a restore needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub source_shard_count: u32,
    /// The revision the backup is a point-in-time image of.
    pub revision: i64,
    /// The compaction point at that revision (-1: never compacted).
    pub compacted_revision: i64,
    pub leases: Vec<SnapshotLease>,
    /// Keys and values are slices of the file image.
    pub entries: Vec<SnapshotEntry>,
    /// Whether a trailing SHA-256 was present (and matched).
    pub verified_hash: bool,
}

/// Writes a backup to `sink` frame by frame, hashing every byte written.
pub struct BackupWriter<W: Write> {
    sink: W,
    /// SHA-256 of everything written so far (the data part).
    digest: Sha256,
    /// Bytes written so far, for the padding and the end frame.
    written: u64,
    /// Header facts every frame's image must repeat.
    revision: i64,
    shard_count: u32,
    /// Counts the end frame declares.
    versions: u64,
    leases: u64,
    frames: u64,
}

impl<W: Write> BackupWriter<W> {
    /// Writes the file header for a backup at `revision` of a node with
    /// `shard_count` shards.
    pub fn new(sink: W, revision: i64, shard_count: u32) -> io::Result<Self> {
        let mut writer = Self {
            sink,
            digest: Sha256::new(),
            written: 0,
            revision,
            shard_count,
            versions: 0,
            leases: 0,
            frames: 0,
        };
        let mut header = [0u8; BACKUP_HEADER_LENGTH];
        header[0..8].copy_from_slice(&BACKUP_MAGIC);
        header[8..12].copy_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
        // Bytes 12..16: flags, zero (none defined).
        header[16..24].copy_from_slice(&revision.to_le_bytes());
        header[24..28].copy_from_slice(&shard_count.to_le_bytes());
        let checksum = crc32c::crc32c(&header[..28]);
        header[28..32].copy_from_slice(&checksum.to_le_bytes());
        writer.write_bytes(&header)?;
        Ok(writer)
    }

    /// Writes the leases frame.
    pub fn write_leases(&mut self, leases: &[SnapshotLease]) -> io::Result<()> {
        let image =
            encode_snapshot(&self.frame_meta(0), leases, Vec::new()).map_err(io::Error::other)?;
        self.leases += leases.len() as u64;
        self.write_frame(FrameKind::Leases, &image)
    }

    /// Writes one frame of versions from `shard`; an empty list writes
    /// nothing.
    pub fn write_versions(&mut self, shard: u32, entries: Vec<SnapshotEntry>) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let count = entries.len() as u64;
        let image =
            encode_snapshot(&self.frame_meta(shard), &[], entries).map_err(io::Error::other)?;
        self.versions += count;
        self.write_frame(FrameKind::Versions, &image)
    }

    /// Writes the end frame and the padding; returns the sink and the
    /// SHA-256 of all the data, which a transfer appends.
    pub fn finish(mut self, compacted_revision: i64) -> io::Result<(W, [u8; SHA256_LENGTH])> {
        let end_of_frame = self.written + (FRAME_HEADER_LENGTH + END_BODY_LENGTH) as u64;
        let data_length = end_of_frame.next_multiple_of(BACKUP_ALIGNMENT as u64);
        let mut body = [0u8; END_BODY_LENGTH];
        body[0..8].copy_from_slice(&compacted_revision.to_le_bytes());
        body[8..16].copy_from_slice(&self.versions.to_le_bytes());
        body[16..24].copy_from_slice(&self.leases.to_le_bytes());
        body[24..32].copy_from_slice(&self.frames.to_le_bytes());
        body[32..40].copy_from_slice(&data_length.to_le_bytes());
        self.write_frame(FrameKind::End, &body)?;
        let padding = vec![0u8; (data_length - self.written) as usize];
        self.write_bytes(&padding)?;
        self.sink.flush()?;
        Ok((self.sink, self.digest.finalize().into()))
    }

    fn frame_meta(&self, shard: u32) -> SnapshotMeta {
        SnapshotMeta {
            shard,
            shard_count: self.shard_count,
            raft_index: 0,
            raft_term: 0,
            revision: self.revision,
            // The real compaction point is read after the scan and goes in
            // the end frame.
            compacted_revision: -1,
        }
    }

    fn write_frame(&mut self, kind: FrameKind, body: &[u8]) -> io::Result<()> {
        let length = u32::try_from(body.len())
            .ok()
            .filter(|length| u64::from(*length) <= MAX_FRAME_BODY)
            .ok_or_else(|| io::Error::other("a backup frame exceeds 1 GiB"))?;
        let mut header = [0u8; FRAME_HEADER_LENGTH];
        header[0..4].copy_from_slice(&(kind as u32).to_le_bytes());
        header[4..8].copy_from_slice(&length.to_le_bytes());
        header[8..12].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
        let checksum = crc32c::crc32c(&header[..12]);
        header[12..16].copy_from_slice(&checksum.to_le_bytes());
        self.write_bytes(&header)?;
        self.write_bytes(body)?;
        if kind != FrameKind::End {
            self.frames += 1;
        }
        Ok(())
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sink.write_all(bytes)?;
        self.digest.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Reads and validates a whole backup file image (see the module's
/// invariants). Keys and values of the result are slices of `file`.
pub fn read_backup(file: &Bytes) -> Result<Backup, BackupError> {
    let (data, verified_hash) = split_hash(file)?;
    let mut cursor = Cursor { data, offset: 0 };
    let header = cursor.take("file header", BACKUP_HEADER_LENGTH as u64)?;
    if header[0..8] != BACKUP_MAGIC {
        return Err(BackupError::BadMagic);
    }
    let version = le_u32(&header[8..12]);
    if version != BACKUP_FORMAT_VERSION {
        return Err(BackupError::UnsupportedVersion(version));
    }
    check_crc("file header", 0, &header[..28], le_u32(&header[28..32]))?;
    let flags = le_u32(&header[12..16]);
    if flags != 0 {
        return Err(corrupt(
            "file header",
            12,
            format!("unknown flags {flags:#x}"),
        ));
    }
    let mut backup = Backup {
        source_shard_count: le_u32(&header[24..28]),
        revision: le_i64(&header[16..24]),
        compacted_revision: -1,
        leases: Vec::new(),
        entries: Vec::new(),
        verified_hash,
    };
    let mut frames = 0u64;
    loop {
        let (kind, offset, body) = cursor.frame()?;
        match kind {
            FrameKind::Leases | FrameKind::Versions => {
                read_image_frame(file, &mut backup, kind, offset, body)?;
                frames += 1;
            }
            FrameKind::End => {
                read_end_frame(&mut backup, frames, offset, body, &cursor)?;
                return Ok(backup);
            }
        }
    }
}

/// Splits off and checks the trailing SHA-256, if the length says there is
/// one (etcd's rule: `size % 512 == 32`).
fn split_hash(file: &[u8]) -> Result<(&[u8], bool), BackupError> {
    let length = file.len();
    match length % BACKUP_ALIGNMENT {
        0 => Ok((file, false)),
        SHA256_LENGTH => {
            let (data, stored) = file.split_at(length - SHA256_LENGTH);
            let actual: [u8; SHA256_LENGTH] = Sha256::digest(data).into();
            if actual != stored {
                return Err(BackupError::HashMismatch {
                    expected: hex(stored),
                    actual: hex(&actual),
                });
            }
            Ok((data, true))
        }
        _ => Err(BackupError::BadLength(length as u64)),
    }
}

fn read_image_frame(
    file: &Bytes,
    backup: &mut Backup,
    kind: FrameKind,
    offset: u64,
    body: &[u8],
) -> Result<(), BackupError> {
    let view = SnapshotView::open(body).map_err(|source| BackupError::Image { offset, source })?;
    let meta = view.meta();
    if meta.revision != backup.revision || meta.shard_count != backup.source_shard_count {
        return Err(corrupt(
            "frame",
            offset,
            format!(
                "image is of revision {} with {} shards, the file header says revision {} with {} shards",
                meta.revision, meta.shard_count, backup.revision, backup.source_shard_count
            ),
        ));
    }
    match kind {
        FrameKind::Leases => backup.leases.extend(view.leases()),
        _ => {
            for entry in view.entries() {
                if entry.revision < 1 || entry.revision > backup.revision {
                    return Err(corrupt(
                        "frame",
                        offset,
                        format!(
                            "a version at revision {} in a snapshot of revision {}",
                            entry.revision, backup.revision
                        ),
                    ));
                }
                backup.entries.push(SnapshotEntry {
                    key: file.slice_ref(entry.key),
                    revision: entry.revision,
                    value: file.slice_ref(entry.value),
                    create_revision: entry.create_revision,
                    version: entry.version,
                    lease: entry.lease,
                    sub_revision: entry.sub_revision,
                });
            }
        }
    }
    Ok(())
}

fn read_end_frame(
    backup: &mut Backup,
    frames: u64,
    offset: u64,
    body: &[u8],
    cursor: &Cursor<'_>,
) -> Result<(), BackupError> {
    if body.len() != END_BODY_LENGTH {
        return Err(corrupt(
            "end frame",
            offset,
            format!("body of {} bytes, expected {END_BODY_LENGTH}", body.len()),
        ));
    }
    backup.compacted_revision = le_i64(&body[0..8]);
    let declared = [
        (
            "versions",
            le_u64(&body[8..16]),
            backup.entries.len() as u64,
        ),
        ("leases", le_u64(&body[16..24]), backup.leases.len() as u64),
        ("frames", le_u64(&body[24..32]), frames),
        (
            "data bytes",
            le_u64(&body[32..40]),
            cursor.data.len() as u64,
        ),
    ];
    for (what, declared, found) in declared {
        if declared != found {
            return Err(corrupt(
                "end frame",
                offset,
                format!("declares {declared} {what}, the file holds {found}"),
            ));
        }
    }
    if backup.compacted_revision > backup.revision {
        return Err(corrupt(
            "end frame",
            offset,
            format!(
                "compaction point {} above the snapshot's revision {}",
                backup.compacted_revision, backup.revision
            ),
        ));
    }
    let padding = &cursor.data[cursor.offset as usize..];
    if let Some(position) = padding.iter().position(|byte| *byte != 0) {
        return Err(corrupt(
            "padding",
            cursor.offset + position as u64,
            "non-zero byte after the end frame".to_owned(),
        ));
    }
    Ok(())
}

/// A position in the data part.
struct Cursor<'a> {
    data: &'a [u8],
    offset: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, what: &'static str, length: u64) -> Result<&'a [u8], BackupError> {
        let start = self.offset as usize;
        let available = self.data.len() - start;
        if length > available as u64 {
            return Err(BackupError::Truncated {
                what,
                offset: self.offset,
                needed: length,
                available: available as u64,
            });
        }
        self.offset += length;
        Ok(&self.data[start..start + length as usize])
    }

    /// The next frame: kind, offset of its header, checked body.
    fn frame(&mut self) -> Result<(FrameKind, u64, &'a [u8]), BackupError> {
        let offset = self.offset;
        let header = self.take("frame header", FRAME_HEADER_LENGTH as u64)?;
        check_crc(
            "frame header",
            offset,
            &header[..12],
            le_u32(&header[12..16]),
        )?;
        let raw_kind = le_u32(&header[0..4]);
        let kind = FrameKind::from_u32(raw_kind)
            .ok_or_else(|| corrupt("frame header", offset, format!("unknown kind {raw_kind}")))?;
        let length = u64::from(le_u32(&header[4..8]));
        if length > MAX_FRAME_BODY {
            return Err(corrupt(
                "frame header",
                offset,
                format!("body of {length} bytes exceeds the limit of {MAX_FRAME_BODY}"),
            ));
        }
        let body = self.take("frame body", length)?;
        check_crc("frame body", offset, body, le_u32(&header[8..12]))?;
        Ok((kind, offset, body))
    }
}

fn check_crc(
    what: &'static str,
    offset: u64,
    bytes: &[u8],
    stored: u32,
) -> Result<(), BackupError> {
    let actual = crc32c::crc32c(bytes);
    if actual != stored {
        return Err(corrupt(
            what,
            offset,
            format!("checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"),
        ));
    }
    Ok(())
}

fn corrupt(what: &'static str, offset: u64, reason: String) -> BackupError {
    BackupError::Corrupt {
        what,
        offset,
        reason,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

// Callers pass slices of the exact width (fixed offsets into checked
// buffers), so the copies below cannot fail.
fn le_u32(bytes: &[u8]) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(bytes);
    u32::from_le_bytes(field)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(bytes);
    u64::from_le_bytes(field)
}

fn le_i64(bytes: &[u8]) -> i64 {
    le_u64(bytes) as i64
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
