//! A Raft snapshot crossing to another member in chunks
//! (`docs/peer-protocol.md`, "Snapshots"). Pure: [`split`] cuts a
//! `MsgSnapshot` into chunks, [`SnapshotAssembly`] puts them back together
//! on the receiving side, refusing anything out of order.
//!
//! A snapshot is a whole shard image (as large as the shard), far beyond
//! one frame's 16 MiB; in chunks it travels on a connection of its own, so
//! it never delays the heartbeats and appends on the member pair's main
//! connection, and TCP's flow control paces it.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::frame::PeerFrameError;

/// Image bytes per chunk (one chunk per frame).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// One piece of a snapshot image. The first (offset 0) carries the Raft
/// message the image belongs to, without its data.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotChunk {
    pub shard: u32,
    pub message: Option<Message>,
    /// Where `data` starts in the image.
    pub offset: u64,
    /// The whole image's length.
    pub total: u64,
    pub data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WireSnapshotChunk {
    #[prost(uint32, tag = "1")]
    shard: u32,
    /// raft-rs's `Message` without its snapshot data; absent after the
    /// first chunk. Present-but-empty is a message of all defaults, so
    /// presence is explicit (found by fuzzing: an empty message came back
    /// as none).
    #[prost(bytes = "vec", optional, tag = "2")]
    message: Option<Vec<u8>>,
    #[prost(uint64, tag = "3")]
    offset: u64,
    #[prost(uint64, tag = "4")]
    total: u64,
    #[prost(bytes = "bytes", tag = "5")]
    data: Bytes,
}

impl SnapshotChunk {
    pub(super) fn to_wire(&self) -> WireSnapshotChunk {
        WireSnapshotChunk {
            shard: self.shard,
            message: self.message.as_ref().map(|message| {
                message
                    .write_to_bytes()
                    .expect("a raft message always encodes")
            }),
            offset: self.offset,
            total: self.total,
            data: self.data.clone(),
        }
    }

    pub(super) fn from_wire(wire: WireSnapshotChunk) -> Result<Self, PeerFrameError> {
        let message = match wire.message {
            None => None,
            Some(bytes) => Some(
                Message::parse_from_bytes(&bytes)
                    .map_err(|error| PeerFrameError::Undecodable(error.to_string()))?,
            ),
        };
        Ok(Self {
            shard: wire.shard,
            message,
            offset: wire.offset,
            total: wire.total,
            data: wire.data,
        })
    }
}

/// Whether `message` is a snapshot, to go in chunks on its own connection.
pub fn is_snapshot(message: &Message) -> bool {
    message.get_msg_type() == MessageType::MsgSnapshot
}

/// Cuts `message` (a `MsgSnapshot` of group `shard`) into chunks.
pub fn split(shard: u32, mut message: Message) -> Vec<SnapshotChunk> {
    let image = message.mut_snapshot().take_data();
    let total = image.len() as u64;
    let mut chunks = Vec::with_capacity(image.len() / SNAPSHOT_CHUNK_BYTES + 1);
    let mut offset = 0;
    let mut header = Some(message);
    loop {
        let end = (offset + SNAPSHOT_CHUNK_BYTES).min(image.len());
        chunks.push(SnapshotChunk {
            shard,
            message: header.take(),
            offset: offset as u64,
            total,
            data: image.slice(offset..end),
        });
        offset = end;
        if offset >= image.len() {
            return chunks;
        }
    }
}

/// The snapshot a connection is receiving, put back together.
#[derive(Default)]
pub struct SnapshotAssembly {
    receiving: Option<Receiving>,
}

struct Receiving {
    shard: u32,
    message: Message,
    image: Vec<u8>,
    total: u64,
}

impl SnapshotAssembly {
    /// Takes the next chunk; returns the whole message once its last chunk
    /// arrived. A chunk at offset 0 starts a new snapshot (one cut short
    /// is dropped: its sender failed and reported it); any other chunk
    /// must continue the current one exactly where it stopped.
    pub fn accept(
        &mut self,
        chunk: SnapshotChunk,
    ) -> Result<Option<(u32, Message)>, PeerFrameError> {
        let refuse = |why: &str| {
            Err(PeerFrameError::Undecodable(format!(
                "snapshot chunk: {why}"
            )))
        };
        if chunk.offset == 0 {
            let Some(message) = chunk.message else {
                return refuse("the first chunk carries no message");
            };
            if !is_snapshot(&message) {
                return refuse("the first chunk's message is not a snapshot");
            }
            self.receiving = Some(Receiving {
                shard: chunk.shard,
                message,
                // Grown as bytes arrive: `total` is only a claim.
                image: Vec::with_capacity(chunk.total.min(SNAPSHOT_CHUNK_BYTES as u64) as usize),
                total: chunk.total,
            });
        } else if chunk.message.is_some() {
            return refuse("a message after the first chunk");
        }
        let Some(receiving) = self.receiving.as_mut() else {
            return refuse("a chunk with no snapshot begun");
        };
        if chunk.shard != receiving.shard
            || chunk.total != receiving.total
            || chunk.offset != receiving.image.len() as u64
        {
            self.receiving = None;
            return refuse("out of order");
        }
        if chunk.data.len() as u64 > receiving.total - chunk.offset {
            self.receiving = None;
            return refuse("more bytes than the snapshot has");
        }
        receiving.image.extend_from_slice(&chunk.data);
        if (receiving.image.len() as u64) < receiving.total {
            return Ok(None);
        }
        let Receiving {
            shard,
            mut message,
            image,
            ..
        } = self.receiving.take().expect("receiving");
        message.mut_snapshot().data = image.into();
        Ok(Some((shard, message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(bytes: usize) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgSnapshot);
        (message.to, message.from, message.term) = (2, 1, 4);
        let snapshot = message.mut_snapshot();
        snapshot.mut_metadata().index = 77;
        snapshot.data = (0..bytes)
            .map(|byte| byte as u8)
            .collect::<Vec<u8>>()
            .into();
        message
    }

    #[test]
    fn chunks_reassemble_to_the_message() {
        for size in [0, 1, SNAPSHOT_CHUNK_BYTES, 2 * SNAPSHOT_CHUNK_BYTES + 5] {
            let message = snapshot(size);
            let chunks = split(3, message.clone());
            assert_eq!(chunks.len(), size.div_ceil(SNAPSHOT_CHUNK_BYTES).max(1));
            let mut assembly = SnapshotAssembly::default();
            let mut done = None;
            for chunk in chunks {
                let wire = SnapshotChunk::from_wire(chunk.to_wire()).expect("round trip");
                assert_eq!(wire, chunk);
                assert!(done.is_none(), "complete before the last chunk");
                done = assembly.accept(chunk).expect("in order");
            }
            assert_eq!(done, Some((3, message)), "size {size}");
        }
    }

    #[test]
    fn a_message_of_all_defaults_is_not_taken_for_none() {
        let chunk = SnapshotChunk {
            shard: 0,
            message: Some(Message::default()),
            offset: 0,
            total: 0,
            data: Bytes::new(),
        };
        let back = SnapshotChunk::from_wire(chunk.to_wire()).expect("decodes");
        assert_eq!(back, chunk);
        let none = SnapshotChunk {
            message: None,
            ..chunk
        };
        assert_eq!(
            SnapshotChunk::from_wire(none.to_wire()).expect("decodes"),
            none
        );
    }

    #[test]
    fn out_of_order_or_overlong_chunks_are_refused_and_a_new_start_recovers() {
        let chunks = split(0, snapshot(2 * SNAPSHOT_CHUNK_BYTES + 1));
        let mut assembly = SnapshotAssembly::default();
        assert!(assembly.accept(chunks[1].clone()).is_err(), "no start");
        assembly.accept(chunks[0].clone()).expect("start");
        assert!(assembly.accept(chunks[2].clone()).is_err(), "a gap");
        // A sender that failed starts over from the first chunk.
        assembly.accept(chunks[0].clone()).expect("start again");
        assembly.accept(chunks[1].clone()).expect("second");
        let mut overlong = chunks[2].clone();
        overlong.data = Bytes::from(vec![0u8; 2]);
        assert!(assembly.accept(overlong).is_err());
        let mut heartbeat = chunks[0].clone();
        heartbeat
            .message
            .as_mut()
            .expect("message")
            .set_msg_type(MessageType::MsgHeartbeat);
        assert!(assembly.accept(heartbeat).is_err(), "not a snapshot");
    }
}
