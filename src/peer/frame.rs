//! The peer protocol's bytes (`docs/peer-protocol.md`): the handshake a
//! member sends when it dials another, the one-byte answer, and the
//! checksummed frames of batched Raft messages that follow. Pure: `decode`
//! returns `Ok(None)` when more bytes are needed, `encode` appends.

use bytes::{Buf, BufMut};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::Message;
use thiserror::Error;

use super::forward::{ForwardReply, ForwardRequest, WireAnswer, WireCall};
use super::snapshot_stream::{SnapshotChunk, WireSnapshotChunk};

/// First bytes of every peer connection: "MSPEER", a zero, the version.
pub const MAGIC: [u8; 8] = *b"MSPEER\x00\x01";

/// A frame body larger than this is refused before anything is allocated
/// for it. Raft messages are capped at 1 MiB of entries (`max_size_per_msg`)
/// and a sender cuts batches at [`BATCH_TARGET_BYTES`].
pub const MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;

/// A sender closes a batch once its encoding passes this size.
pub const BATCH_TARGET_BYTES: usize = 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerFrameError {
    #[error("not a MetaStore peer connection (bad magic)")]
    BadMagic,
    #[error("peer protocol version {0} is not supported (this member speaks 1)")]
    UnsupportedVersion(u8),
    #[error("checksum mismatch in a peer {0}")]
    Checksum(&'static str),
    #[error("peer frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    FrameTooLarge(u32),
    #[error("undecodable peer frame: {0}")]
    Undecodable(String),
    #[error("unknown handshake answer {0}")]
    UnknownAnswer(u8),
}

/// What the dialing member says first: who it is, and whom it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: u64,
    pub from_member: u64,
    pub to_member: u64,
}

impl Hello {
    /// magic (8) + three u64 (24) + crc32c (4).
    pub const LEN: usize = 36;

    pub fn encode(&self, buffer: &mut impl BufMut) {
        let mut bytes = [0u8; Self::LEN];
        bytes[..8].copy_from_slice(&MAGIC);
        bytes[8..16].copy_from_slice(&self.cluster_id.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.from_member.to_be_bytes());
        bytes[24..32].copy_from_slice(&self.to_member.to_be_bytes());
        let checksum = crc32c::crc32c(&bytes[..32]);
        bytes[32..].copy_from_slice(&checksum.to_be_bytes());
        buffer.put_slice(&bytes);
    }

    pub fn decode(bytes: &[u8]) -> Result<Option<Hello>, PeerFrameError> {
        // Judge the magic as soon as it is there: a stray client (an HTTP
        // request, a scanner) is refused without waiting for 36 bytes.
        let magic_seen = bytes.len().min(6);
        if bytes[..magic_seen] != MAGIC[..magic_seen] {
            return Err(PeerFrameError::BadMagic);
        }
        if bytes.len() < Self::LEN {
            return Ok(None);
        }
        if bytes[6] != 0 {
            return Err(PeerFrameError::BadMagic);
        }
        if bytes[7] != MAGIC[7] {
            return Err(PeerFrameError::UnsupportedVersion(bytes[7]));
        }
        let checksum = u32::from_be_bytes(bytes[32..36].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..32]) != checksum {
            return Err(PeerFrameError::Checksum("handshake"));
        }
        let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(Some(Hello {
            cluster_id: word(8),
            from_member: word(16),
            to_member: word(24),
        }))
    }
}

/// The accepting member's one-byte answer to a [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloAnswer {
    Accepted = 0,
    /// The dialer belongs to another cluster: two clusters never merge.
    OtherCluster = 1,
    /// The dialer expected another member at this address.
    NotThisMember = 2,
    /// The dialer is not a member of this cluster.
    UnknownMember = 3,
}

impl HelloAnswer {
    pub fn decode(byte: u8) -> Result<HelloAnswer, PeerFrameError> {
        match byte {
            0 => Ok(HelloAnswer::Accepted),
            1 => Ok(HelloAnswer::OtherCluster),
            2 => Ok(HelloAnswer::NotThisMember),
            3 => Ok(HelloAnswer::UnknownMember),
            other => Err(PeerFrameError::UnknownAnswer(other)),
        }
    }

    /// The answer `hello` gets from member `member_id` of `cluster_id`.
    pub fn judge(hello: &Hello, cluster_id: u64, member_id: u64, members: &[u64]) -> HelloAnswer {
        if hello.cluster_id != cluster_id {
            HelloAnswer::OtherCluster
        } else if hello.to_member != member_id {
            HelloAnswer::NotThisMember
        } else if !members.contains(&hello.from_member) || hello.from_member == member_id {
            HelloAnswer::UnknownMember
        } else {
            HelloAnswer::Accepted
        }
    }
}

/// What one frame carries from a member to another: Raft messages of any
/// of the pair's groups in send order, and forwarded calls and answers
/// (`super::forward`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    /// `(shard, message)`: shard i of every member is one group.
    pub messages: Vec<(u32, Message)>,
    /// Calls for the receiving member to carry out as the lead member.
    pub requests: Vec<ForwardRequest>,
    /// Answers to calls the receiving member forwarded.
    pub replies: Vec<ForwardReply>,
    /// Pieces of a snapshot (on a connection of their own,
    /// `super::snapshot_stream`).
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Who the sending member is, in the first frame of each connection.
    pub attributes: Option<MemberAttributes>,
}

/// What a member says of itself (etcd publishes the same through Raft as
/// the member's attributes): the name and client URLs `MemberList`
/// shows.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberAttributes {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub client_urls: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireBatch {
    #[prost(message, repeated, tag = "1")]
    messages: Vec<WireGroupMessage>,
    #[prost(message, repeated, tag = "2")]
    requests: Vec<WireCall>,
    #[prost(message, repeated, tag = "3")]
    replies: Vec<WireAnswer>,
    #[prost(message, repeated, tag = "4")]
    snapshot_chunks: Vec<WireSnapshotChunk>,
    #[prost(message, optional, tag = "5")]
    attributes: Option<MemberAttributes>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireGroupMessage {
    #[prost(uint32, tag = "1")]
    shard: u32,
    /// raft-rs's `Message` in its own protobuf encoding.
    #[prost(bytes = "vec", tag = "2")]
    raft_message: Vec<u8>,
}

impl Batch {
    /// Appends one frame: body length (u32 BE), crc32c of the body (u32
    /// BE), body.
    pub fn encode(&self, buffer: &mut impl BufMut) {
        let wire = WireBatch {
            messages: self
                .messages
                .iter()
                .map(|(shard, message)| WireGroupMessage {
                    shard: *shard,
                    raft_message: message
                        .write_to_bytes()
                        .expect("a raft message always encodes"),
                })
                .collect(),
            requests: self.requests.iter().map(ForwardRequest::to_wire).collect(),
            replies: self.replies.iter().map(ForwardReply::to_wire).collect(),
            snapshot_chunks: self
                .snapshot_chunks
                .iter()
                .map(SnapshotChunk::to_wire)
                .collect(),
            attributes: self.attributes.clone(),
        };
        let body = wire.encode_to_vec();
        buffer.put_u32(body.len() as u32);
        buffer.put_u32(crc32c::crc32c(&body));
        buffer.put_slice(&body);
    }

    /// One frame from the front of `bytes` and how many bytes it took.
    pub fn decode(bytes: &[u8]) -> Result<Option<(Batch, usize)>, PeerFrameError> {
        if bytes.len() < 8 {
            return Ok(None);
        }
        let mut header = &bytes[..8];
        let length = header.get_u32();
        let checksum = header.get_u32();
        if length > MAX_FRAME_BYTES {
            return Err(PeerFrameError::FrameTooLarge(length));
        }
        let end = 8 + length as usize;
        if bytes.len() < end {
            return Ok(None);
        }
        let body = &bytes[8..end];
        if crc32c::crc32c(body) != checksum {
            return Err(PeerFrameError::Checksum("frame"));
        }
        let wire = WireBatch::decode(body)
            .map_err(|error| PeerFrameError::Undecodable(error.to_string()))?;
        let mut messages = Vec::with_capacity(wire.messages.len());
        for group_message in wire.messages {
            let message = Message::parse_from_bytes(&group_message.raft_message)
                .map_err(|error| PeerFrameError::Undecodable(error.to_string()))?;
            messages.push((group_message.shard, message));
        }
        let requests = wire
            .requests
            .into_iter()
            .map(ForwardRequest::from_wire)
            .collect::<Result<_, _>>()?;
        let replies = wire
            .replies
            .into_iter()
            .map(ForwardReply::from_wire)
            .collect::<Result<_, _>>()?;
        let snapshot_chunks = wire
            .snapshot_chunks
            .into_iter()
            .map(SnapshotChunk::from_wire)
            .collect::<Result<_, _>>()?;
        let batch = Batch {
            messages,
            requests,
            replies,
            snapshot_chunks,
            attributes: wire.attributes,
        };
        Ok(Some((batch, end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::forward::{ForwardedAnswer, ForwardedCall};
    use raft::eraftpb::{Entry, MessageType};

    fn message(to: u64, index: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = to;
        message.from = 1;
        message.term = 3;
        message.index = index;
        message.mut_entries().push(Entry {
            index: index + 1,
            term: 3,
            data: bytes::Bytes::from_static(b"payload"),
            ..Default::default()
        });
        message
    }

    #[test]
    fn hello_round_trips_and_needs_all_its_bytes() {
        let hello = Hello {
            cluster_id: 0xfeed,
            from_member: 2,
            to_member: 3,
        };
        let mut bytes = Vec::new();
        hello.encode(&mut bytes);
        assert_eq!(bytes.len(), Hello::LEN);
        for cut in 0..Hello::LEN {
            assert_eq!(Hello::decode(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(Hello::decode(&bytes), Ok(Some(hello)));
    }

    #[test]
    fn hello_refuses_strangers_early_and_damage_always() {
        assert_eq!(Hello::decode(b"GET / HT"), Err(PeerFrameError::BadMagic));
        assert_eq!(Hello::decode(b"PR"), Err(PeerFrameError::BadMagic));
        let mut bytes = Vec::new();
        Hello {
            cluster_id: 1,
            from_member: 1,
            to_member: 2,
        }
        .encode(&mut bytes);
        let mut newer = bytes.clone();
        newer[7] = 2;
        assert_eq!(
            Hello::decode(&newer),
            Err(PeerFrameError::UnsupportedVersion(2))
        );
        for byte in 8..Hello::LEN {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 0x10;
            assert_eq!(
                Hello::decode(&damaged),
                Err(PeerFrameError::Checksum("handshake")),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn judging_a_hello() {
        let hello = Hello {
            cluster_id: 7,
            from_member: 2,
            to_member: 1,
        };
        let members = [1, 2, 3];
        assert_eq!(
            HelloAnswer::judge(&hello, 7, 1, &members),
            HelloAnswer::Accepted
        );
        assert_eq!(
            HelloAnswer::judge(&hello, 8, 1, &members),
            HelloAnswer::OtherCluster
        );
        assert_eq!(
            HelloAnswer::judge(&hello, 7, 3, &members),
            HelloAnswer::NotThisMember
        );
        assert_eq!(
            HelloAnswer::judge(&hello, 7, 1, &[1, 3]),
            HelloAnswer::UnknownMember
        );
        for answer in [0u8, 1, 2, 3] {
            assert_eq!(HelloAnswer::decode(answer).map(|a| a as u8), Ok(answer));
        }
        assert_eq!(
            HelloAnswer::decode(9),
            Err(PeerFrameError::UnknownAnswer(9))
        );
    }

    #[test]
    fn batches_round_trip_in_any_chunking() {
        let batches = [
            Batch {
                messages: vec![(0, message(2, 10)), (5, message(2, 11))],
                ..Default::default()
            },
            Batch::default(),
            Batch {
                messages: vec![(1, message(3, 12))],
                requests: vec![ForwardRequest {
                    id: 3,
                    call: ForwardedCall::RenewLease { id: 8 },
                }],
                replies: vec![ForwardReply {
                    id: 2,
                    answer: ForwardedAnswer::Failed(crate::store::error::KvError::NotLeader),
                }],
                snapshot_chunks: vec![SnapshotChunk {
                    shard: 1,
                    message: None,
                    offset: 8,
                    total: 12,
                    data: bytes::Bytes::from_static(b"tail"),
                }],
                attributes: Some(MemberAttributes {
                    name: "m2".to_owned(),
                    client_urls: vec!["http://127.0.0.1:2379".to_owned()],
                }),
            },
        ];
        let mut stream = Vec::new();
        for batch in &batches {
            batch.encode(&mut stream);
        }
        // Fed byte by byte, as a slow socket would.
        let mut decoded = Vec::new();
        let mut buffered = Vec::new();
        for byte in &stream {
            buffered.push(*byte);
            while let Some((batch, used)) = Batch::decode(&buffered).expect("valid") {
                buffered.drain(..used);
                decoded.push(batch);
            }
        }
        assert!(buffered.is_empty());
        assert_eq!(decoded, batches);
    }

    #[test]
    fn damaged_or_oversized_frames_are_refused() {
        let mut frame = Vec::new();
        Batch {
            messages: vec![(0, message(2, 1))],
            ..Default::default()
        }
        .encode(&mut frame);
        for byte in 8..frame.len() {
            let mut damaged = frame.clone();
            damaged[byte] ^= 1;
            assert_eq!(
                Batch::decode(&damaged),
                Err(PeerFrameError::Checksum("frame")),
                "byte {byte}"
            );
        }
        let mut huge = Vec::new();
        huge.put_u32(MAX_FRAME_BYTES + 1);
        huge.put_u32(0);
        assert_eq!(
            Batch::decode(&huge),
            Err(PeerFrameError::FrameTooLarge(MAX_FRAME_BYTES + 1))
        );
        // A checksummed body that is not a batch.
        let body = [0xffu8; 5];
        let mut garbage = Vec::new();
        garbage.put_u32(body.len() as u32);
        garbage.put_u32(crc32c::crc32c(&body));
        garbage.put_slice(&body);
        assert!(matches!(
            Batch::decode(&garbage),
            Err(PeerFrameError::Undecodable(_))
        ));
    }
}
