//! `Maintenance.Snapshot`: streams a backup (`snapshot::backup`) of the
//! whole node at one revision, as etcd does: 32 KiB `SnapshotResponse`
//! blobs, then one message whose blob is the SHA-256 of all the data.
//!
//! The backup is produced on a thread of its own, which reads the memtables
//! lock-free (like shard snapshots, `shard::snapshotting`) and hands 32 KiB
//! chunks to the stream's task through a bounded channel: the core's
//! executor only forwards chunks, so other requests are not stalled, and a
//! slow client holds at most [`QUEUED_CHUNKS`] chunks in memory (the thread
//! waits). A client that goes away drops the channel, which stops the
//! thread.
//!
//! Consistency: the backup holds every version at or below R, the
//! watermark when it starts (complete on every shard). A compaction at a
//! point C <= R running meanwhile may free versions while they are read;
//! that only removes versions no read at or above C needs, so the backup
//! declares the compaction point read *after* the scan and a restore
//! compacts there. A compaction above R could free versions a read at R
//! needs: the stream then fails with ABORTED and the client retries.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;

use crate::grpc::{Code, RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::{SnapshotRequest, SnapshotResponse};
use crate::snapshot::backup::{BackupWriter, SHA256_LENGTH};
use crate::snapshot::{SnapshotEntry, SnapshotLease};
use crate::store::key_space::KeySpace;

use super::ServiceContext;

/// etcd's `snapshotSendBufferSize`: the data blob of each response.
pub const CHUNK_BYTES: usize = 32 * 1024;
/// Chunks the producer may run ahead of the client.
const QUEUED_CHUNKS: usize = 8;
/// A versions frame is closed once its keys and values reach this size, so
/// the producer holds about this much besides the chunks.
const FRAME_PAYLOAD_BYTES: usize = 1 << 20;
/// Bytes a version costs in a frame besides its key and value (the
/// archived entry record), for the `remaining_bytes` estimate.
const VERSION_OVERHEAD_BYTES: u64 = 68;

/// What the producer thread hands the stream.
enum Produced {
    Data(Vec<u8>),
    /// The backup is complete: the SHA-256 of all data sent.
    Finished([u8; SHA256_LENGTH]),
    Failed(BackupFailure),
}

/// Why a backup could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum BackupFailure {
    #[error(
        "a compaction at revision {compacted} passed the snapshot's revision {revision} while it was taken; retry"
    )]
    CompactedPastRevision { revision: i64, compacted: i64 },
    #[error("writing the snapshot: {0}")]
    Io(#[from] io::Error),
}

pub async fn serve(
    context: &ServiceContext,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    let _: SnapshotRequest = requests.unary().await?;
    let space = context.write_path.space().clone();
    let (_, live_bytes) = space.totals();
    let versions: usize = space
        .shard_map()
        .all_shards()
        .map(|shard| space.memtable(shard).version_count())
        .sum();
    // An estimate: the real size is known only once the scan is done.
    let estimate = live_bytes.max(0) as u64 + versions as u64 * VERSION_OVERHEAD_BYTES;
    let (sender, chunks) = flume::bounded(QUEUED_CHUNKS);
    std::thread::Builder::new()
        .name("metastore-backup".to_owned())
        .spawn(move || {
            crate::shard::snapshotting::run_in_background();
            produce(&space, sender)
        })
        .map_err(|error| Status::internal(format!("cannot start the snapshot thread: {error}")))?;
    let mut sent = 0u64;
    while let Ok(produced) = chunks.recv_async().await {
        match produced {
            Produced::Data(blob) => {
                sent += blob.len() as u64;
                let response = SnapshotResponse {
                    header: None,
                    remaining_bytes: estimate.saturating_sub(sent),
                    blob: blob.into(),
                };
                responses.send(&response).await?;
            }
            Produced::Finished(digest) => {
                tracing::info!(bytes = sent, "sent a snapshot");
                let response = SnapshotResponse {
                    header: None,
                    remaining_bytes: 0,
                    blob: digest.to_vec().into(),
                };
                return responses.send(&response).await;
            }
            Produced::Failed(failure) => {
                tracing::warn!(%failure, "snapshot failed");
                let code = match failure {
                    BackupFailure::CompactedPastRevision { .. } => Code::Aborted,
                    BackupFailure::Io(_) => Code::Internal,
                };
                return Err(Status::new(code, format!("etcdserver: {failure}")));
            }
        }
    }
    Err(Status::internal("etcdserver: the snapshot thread stopped"))
}

/// The producer thread's body: writes the backup through a chunking sink.
fn produce(space: &KeySpace, sender: flume::Sender<Produced>) {
    let sink = ChunkSink {
        sender: sender.clone(),
        buffer: Vec::with_capacity(CHUNK_BYTES),
    };
    let last = match write_backup(space, sink) {
        Ok((_, digest)) => Produced::Finished(digest),
        Err(failure) => Produced::Failed(failure),
    };
    // The client may be gone; nothing is left to do either way.
    let _ = sender.send(last);
}

/// Writes a backup of `space` at its current watermark to `sink`; returns
/// the sink and the SHA-256 of the data. Blocking (a full scan).
pub fn write_backup<W: Write>(
    space: &KeySpace,
    sink: W,
) -> Result<(W, [u8; SHA256_LENGTH]), BackupFailure> {
    // Leases are not versioned: read the table on both sides of taking R
    // and keep the union, so a lease with keys at R is there even if it was
    // granted just before or revoked just after. An extra lease without
    // keys is harmless (it expires).
    let leases_before = space.leases().all_leases();
    let revision = space.clock().watermark();
    let leases_after = space.leases().all_leases();
    let leases: BTreeMap<i64, SnapshotLease> = leases_before
        .into_iter()
        .chain(leases_after)
        .map(|lease| (lease.id, lease))
        .collect();
    let leases: Vec<SnapshotLease> = leases.into_values().collect();
    let shard_count = space.shard_map().shard_count() as u32;
    let mut writer = BackupWriter::new(sink, revision, shard_count)?;
    writer.write_leases(&leases)?;
    for shard in space.shard_map().all_shards() {
        let mut frame = Vec::new();
        let mut frame_bytes = 0usize;
        for (key, version_revision, version) in space.memtable(shard).versions() {
            if version_revision > revision {
                continue;
            }
            frame_bytes += key.len() + version.value.len();
            frame.push(SnapshotEntry {
                key,
                revision: version_revision,
                value: version.value,
                create_revision: version.create_revision,
                version: version.version,
                lease: version.lease,
                sub_revision: version.sub_revision,
            });
            if frame_bytes >= FRAME_PAYLOAD_BYTES {
                writer.write_versions(shard as u32, std::mem::take(&mut frame))?;
                frame_bytes = 0;
            }
        }
        writer.write_versions(shard as u32, frame)?;
    }
    let compacted = space.compacted_revision();
    if compacted > revision {
        return Err(BackupFailure::CompactedPastRevision {
            revision,
            compacted,
        });
    }
    Ok(writer.finish(compacted)?)
}

/// An `io::Write` that cuts the byte stream into [`CHUNK_BYTES`] chunks for
/// the stream's task; a gone receiver (client left) fails the write.
struct ChunkSink {
    sender: flume::Sender<Produced>,
    buffer: Vec<u8>,
}

impl ChunkSink {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.sender
            .send(Produced::Data(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let taken = room.min(bytes.len());
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

/// A whole backup in memory with its SHA-256 appended: the file a client
/// saves. Blocking.
pub fn backup_file_image(space: &Arc<KeySpace>) -> Result<Vec<u8>, BackupFailure> {
    let (mut data, digest) = write_backup(space, Vec::new())?;
    data.extend_from_slice(&digest);
    Ok(data)
}

#[cfg(test)]
#[path = "snapshot_stream_tests.rs"]
mod tests;
