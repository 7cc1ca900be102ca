//! A watch response ready to send, with its events already encoded.
//!
//! In a fan-out every watcher of a change sends the same event: encoding it
//! once per watcher (prost's length pass, then the encoding, of the same
//! key and value) was 40% of the server's CPU with 10,000 watchers on one
//! prefix. A core's feed keeps each change's encoded event (see
//! [`super::history::HistoryChunk`]) and every reply on the core copies
//! those bytes instead. Pure.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::grpc::codec::OutgoingMessage;
use crate::proto::etcdserverpb::WatchResponse;
use crate::proto::mvccpb::Event;

/// `WatchResponse.events`' field number (rpc.proto: `repeated mvccpb.Event
/// events = 11;`). It is the highest of the message's fields, so writing
/// the events after the other fields gives the bytes prost would.
const EVENTS_FIELD: u32 = 11;

/// One `WatchResponse` to send: every field but the events in `response`,
/// and the events as encoded `mvccpb.Event` messages.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WatchReply {
    /// Header, watch id, flags; its `events` is always empty.
    pub response: WatchResponse,
    /// Each an encoded `mvccpb.Event`, often shared with other replies.
    pub events: Vec<Bytes>,
}

impl WatchReply {
    /// The bytes one event adds to a response: its key, length and body.
    pub fn event_field_len(event: &Bytes) -> usize {
        key_len(EVENTS_FIELD) + encoded_len_varint(event.len() as u64) + event.len()
    }
}

/// Encodes one event as it goes into a `WatchResponse`.
pub fn encode_event(event: &Event) -> Bytes {
    Bytes::from(event.encode_to_vec())
}

impl From<WatchResponse> for WatchReply {
    fn from(mut response: WatchResponse) -> Self {
        let events = std::mem::take(&mut response.events)
            .iter()
            .map(encode_event)
            .collect();
        Self { response, events }
    }
}

impl OutgoingMessage for WatchReply {
    fn encoded_len(&self) -> usize {
        debug_assert!(self.response.events.is_empty());
        Message::encoded_len(&self.response)
            + self.events.iter().map(Self::event_field_len).sum::<usize>()
    }

    fn encode_raw(&self, dst: &mut BytesMut) {
        debug_assert!(self.response.events.is_empty());
        Message::encode_raw(&self.response, dst);
        for event in &self.events {
            encode_key(EVENTS_FIELD, WireType::LengthDelimited, dst);
            encode_varint(event.len() as u64, dst);
            dst.put_slice(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::ResponseHeader;
    use crate::proto::mvccpb::KeyValue;

    fn event(key: &str, value_len: usize) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from(vec![b'v'; value_len]),
                create_revision: 2,
                mod_revision: 7,
                version: 3,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn a_reply_encodes_to_the_bytes_prost_gives_the_response() {
        let response = WatchResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 7,
                raft_term: 3,
            }),
            watch_id: 5,
            fragment: true,
            // 200 bytes makes the event's length a two-byte varint.
            events: vec![event("a", 3), event("bb", 200)],
            ..Default::default()
        };
        let reply = WatchReply::from(response.clone());
        assert!(reply.response.events.is_empty());
        let mut encoded = BytesMut::new();
        reply.encode_raw(&mut encoded);
        assert_eq!(encoded.to_vec(), response.encode_to_vec());
        assert_eq!(OutgoingMessage::encoded_len(&reply), encoded.len());
        assert_eq!(WatchResponse::decode(encoded.freeze()).unwrap(), response);
    }

    #[test]
    fn a_reply_without_events_is_the_plain_response() {
        let response = WatchResponse {
            watch_id: 9,
            canceled: true,
            compact_revision: 4,
            ..Default::default()
        };
        let reply = WatchReply::from(response.clone());
        let mut encoded = BytesMut::new();
        reply.encode_raw(&mut encoded);
        assert_eq!(encoded.to_vec(), response.encode_to_vec());
    }
}
