//! One watch: what it watches, where it is in history, and how changes
//! become its `WatchResponse`s. Pure.

use bytes::Bytes;

use super::MAX_REVISIONS_PER_RESPONSE;
use super::history::DeliverableChange;
use super::reply::{WatchReply, encode_event};
use crate::grpc::codec::OutgoingMessage;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchResponse};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::store::key_range::KeyRange;
use crate::store::key_space::KeySpace;
use crate::store::memtable::HistoricalChange;
use crate::store::shard_map::ShardId;

/// The member's identity as every watch response header carries it.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderStamp {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft_term: u64,
}

impl HeaderStamp {
    /// etcd's `newResponseHeader(rev)`: the revision is whatever the
    /// response is about, taken as given (etcd sends 0 on a compaction
    /// cancel).
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Watcher {
    pub id: i64,
    range: KeyRange,
    /// The first revision not yet delivered: every change below it that
    /// matches was sent, none at or above it was (reliable + unique).
    pub next_revision: i64,
    filter_puts: bool,
    filter_deletes: bool,
    prev_kv: bool,
    pub progress_notify: bool,
    fragment: bool,
    /// Events were sent since the last progress tick; etcd then skips the
    /// next periodic notification.
    pub sent_since_tick: bool,
}

impl Watcher {
    /// A watcher for an already validated create request.
    pub fn new(id: i64, range: KeyRange, request: &WatchCreateRequest, next_revision: i64) -> Self {
        let filters = &request.filters;
        Self {
            id,
            range,
            next_revision,
            filter_puts: filters.contains(&(FilterType::Noput as i32)),
            filter_deletes: filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: request.prev_kv,
            progress_notify: request.progress_notify,
            fragment: request.fragment,
            sent_since_tick: false,
        }
    }

    /// The shards holding keys this watcher can see.
    pub fn shards(&self, space: &KeySpace) -> Vec<ShardId> {
        space.shards_for(&self.range)
    }

    fn wants(&self, change: &HistoricalChange) -> bool {
        if change.position.revision < self.next_revision || !self.range.contains(&change.key) {
            return false;
        }
        match change.version {
            Some(_) => !self.filter_puts,
            None => !self.filter_deletes,
        }
    }

    /// Delivers `changes` (a contiguous piece of history ending at
    /// `through`, possibly starting before this watcher's position) into
    /// `out`, and moves the watcher past `through`. A response holds whole
    /// revisions only (atomic), at most [`MAX_REVISIONS_PER_RESPONSE`] of
    /// them, unless fragmenting splits a large one.
    pub fn deliver<'a>(
        &mut self,
        changes: impl IntoIterator<Item = DeliverableChange<'a>>,
        through: i64,
        space: &KeySpace,
        stamp: &HeaderStamp,
        max_response_bytes: usize,
        out: &mut Vec<WatchReply>,
    ) {
        if through < self.next_revision {
            return;
        }
        let mut events = Vec::new();
        let mut revisions_in_response = 0usize;
        let mut last_revision = 0;
        for deliverable in changes {
            let change = deliverable.change;
            if !self.wants(change) {
                continue;
            }
            let revision = change.position.revision;
            if revision != last_revision {
                if revisions_in_response == MAX_REVISIONS_PER_RESPONSE {
                    // etcd stamps every batch of a catch-up with the
                    // revision read through, not the batch's last event.
                    self.push_response(
                        std::mem::take(&mut events),
                        through,
                        stamp,
                        max_response_bytes,
                        out,
                    );
                    revisions_in_response = 0;
                }
                revisions_in_response += 1;
                last_revision = revision;
            }
            events.push(self.encoded_event(deliverable, space));
        }
        if !events.is_empty() {
            self.push_response(events, through, stamp, max_response_bytes, out);
        }
        self.next_revision = through + 1;
    }

    /// The change's event for this watcher, encoded. Without `prev_kv`
    /// every watcher sends the same bytes, so they are encoded once and
    /// shared.
    fn encoded_event(&self, deliverable: DeliverableChange<'_>, space: &KeySpace) -> Bytes {
        let change = deliverable.change;
        if self.prev_kv {
            return encode_event(&event(change, true, space));
        }
        deliverable
            .encoded_event
            .get_or_init(|| encode_event(&event(change, false, space)))
            .clone()
    }

    fn push_response(
        &mut self,
        events: Vec<Bytes>,
        revision: i64,
        stamp: &HeaderStamp,
        max_response_bytes: usize,
        out: &mut Vec<WatchReply>,
    ) {
        self.sent_since_tick = true;
        let reply = WatchReply {
            response: WatchResponse {
                header: stamp.header(revision),
                watch_id: self.id,
                ..Default::default()
            },
            events,
        };
        if self.fragment {
            out.extend(fragments(reply, max_response_bytes));
        } else {
            out.push(reply);
        }
    }

    /// The response that ends this watch because its history is gone.
    /// etcd sends it with a zero header revision.
    pub fn compacted_response(&self, compact_revision: i64, stamp: &HeaderStamp) -> WatchResponse {
        WatchResponse {
            header: stamp.header(0),
            watch_id: self.id,
            canceled: true,
            compact_revision,
            ..Default::default()
        }
    }

    /// A progress notification: nothing for this watch at or below
    /// `revision` remains undelivered.
    pub fn progress_response(&self, revision: i64, stamp: &HeaderStamp) -> WatchResponse {
        WatchResponse {
            header: stamp.header(revision),
            watch_id: self.id,
            ..Default::default()
        }
    }
}

/// etcd's event for `change`; with `prev_kv`, carrying the key's previous
/// version.
fn event(change: &HistoricalChange, prev_kv: bool, space: &KeySpace) -> Event {
    let revision = change.position.revision;
    let (kind, kv) = match &change.version {
        Some(version) => (EventType::Put, version.to_key_value(&change.key, revision)),
        // etcd's delete event carries only the key and the revision.
        None => (
            EventType::Delete,
            KeyValue {
                key: change.key.clone(),
                mod_revision: revision,
                ..Default::default()
            },
        ),
    };
    // etcd looks up the previous version except for a key's creation.
    let is_create = kind == EventType::Put && kv.create_revision == kv.mod_revision;
    let prev_kv = (prev_kv && !is_create)
        .then(|| previous_version(space, &change.key, revision))
        .flatten();
    Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv,
    }
}

fn previous_version(space: &KeySpace, key: &Bytes, revision: i64) -> Option<KeyValue> {
    let shard = space.shard_map().shard_of(key);
    space.memtable(shard).get(key, revision - 1)
}

/// etcd's `sendFragments`: a response over `max_bytes` with two or more
/// events is split into pieces of at most `max_bytes` (a single event may
/// exceed it), all but the last flagged `fragment`.
pub fn fragments(reply: WatchReply, max_bytes: usize) -> Vec<WatchReply> {
    if OutgoingMessage::encoded_len(&reply) < max_bytes || reply.events.len() < 2 {
        return vec![reply];
    }
    let template = WatchResponse {
        fragment: true,
        ..reply.response
    };
    // Every piece is measured with the flag set, the last one included.
    let empty_len = prost::Message::encoded_len(&template);
    let mut pieces = Vec::new();
    let mut current = Vec::new();
    let mut current_len = empty_len;
    for event in reply.events {
        let added = WatchReply::event_field_len(&event);
        if !current.is_empty() && current_len + added >= max_bytes {
            pieces.push(WatchReply {
                response: template.clone(),
                events: std::mem::take(&mut current),
            });
            current_len = empty_len;
        }
        current.push(event);
        current_len += added;
    }
    pieces.push(WatchReply {
        response: WatchResponse {
            fragment: false,
            ..template
        },
        events: current,
    });
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str) -> Event {
        Event {
            kv: Some(KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from(vec![b'x'; 100]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fragments_split_large_responses_and_flag_all_but_the_last() {
        let response = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|index| event(&index.to_string())).collect(),
            ..Default::default()
        };
        let reply = WatchReply::from(response.clone());
        let pieces = fragments(reply.clone(), 350);
        assert!(pieces.len() > 1);
        let flags: Vec<bool> = pieces.iter().map(|piece| piece.response.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|flag| *flag));
        assert!(!flags[flags.len() - 1]);
        for piece in &pieces {
            let flagged = WatchReply {
                response: WatchResponse {
                    fragment: true,
                    ..piece.response.clone()
                },
                events: piece.events.clone(),
            };
            assert!(
                OutgoingMessage::encoded_len(&flagged) < 350 || piece.events.len() == 1,
                "a piece of several events stays under the limit"
            );
        }
        let rejoined: Vec<Bytes> = pieces.into_iter().flat_map(|piece| piece.events).collect();
        assert_eq!(rejoined, reply.events);
        assert_eq!(fragments(reply.clone(), 1 << 20), vec![reply]);
    }
}
