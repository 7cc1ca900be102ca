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

/// How one [`Watcher::deliver`] shapes what it produces.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// etcd's fragmenting threshold for a watch that asked for fragments.
    pub max_response_bytes: usize,
    /// Event bytes after which delivery stops at a revision boundary.
    pub max_bytes: usize,
    /// The revision the responses' headers carry: etcd stamps a catch-up
    /// with the store revision it caught up to, not its last event's.
    pub header_revision: i64,
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
    /// `out`, and moves the watcher past what it delivered. A response
    /// holds whole revisions only (atomic), at most
    /// [`MAX_REVISIONS_PER_RESPONSE`] of them, unless fragmenting splits a
    /// large one. Once `max_bytes` of events are out, delivery stops at the
    /// next revision boundary and the watcher's position stays there (etcd
    /// does the same past `watchBatchMaxRevs`): the caller sends what it
    /// has before producing more. Returns the bytes of events delivered.
    pub fn deliver<'a>(
        &mut self,
        changes: impl IntoIterator<Item = DeliverableChange<'a>>,
        through: i64,
        space: &KeySpace,
        stamp: &HeaderStamp,
        delivery: Delivery,
        out: &mut Vec<WatchReply>,
    ) -> usize {
        if through < self.next_revision {
            return 0;
        }
        let mut events = Vec::new();
        let mut revisions_in_response = 0usize;
        let mut last_revision = 0;
        let mut delivered_bytes = 0usize;
        let mut stopped_at = None;
        for deliverable in changes {
            let change = deliverable.change;
            if !self.wants(change) {
                continue;
            }
            let revision = change.position.revision;
            if revision != last_revision {
                // At least one revision per delivery, so every call
                // makes progress.
                if last_revision != 0 && delivered_bytes >= delivery.max_bytes {
                    stopped_at = Some(revision);
                    break;
                }
                if revisions_in_response == MAX_REVISIONS_PER_RESPONSE {
                    self.push_response(
                        std::mem::take(&mut events),
                        delivery.header_revision,
                        stamp,
                        delivery.max_response_bytes,
                        out,
                    );
                    revisions_in_response = 0;
                }
                revisions_in_response += 1;
                last_revision = revision;
            }
            let event = self.encoded_event(deliverable, space);
            delivered_bytes += WatchReply::event_field_len(&event);
            events.push(event);
        }
        if !events.is_empty() {
            self.push_response(
                events,
                delivery.header_revision,
                stamp,
                delivery.max_response_bytes,
                out,
            );
        }
        // Every change below `stopped_at` was looked at; none at or above.
        self.next_revision = stopped_at.unwrap_or(through + 1);
        delivered_bytes
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

    /// A watch delivered in small steps (as a stream whose client reads
    /// slowly does) gets every change once, in order, whole revisions per
    /// response, and every step makes progress.
    #[test]
    fn bounded_deliveries_resume_where_they_stopped() {
        use crate::lease::table::LeaseTable;
        use crate::store::memtable::Version;
        use crate::store::revision::RevisionClock;
        use crate::store::shard_map::ShardMap;
        use crate::watch::history::read_changes;

        let space = KeySpace::new(
            ShardMap::new(4, 1),
            RevisionClock::new(1, 1),
            LeaseTable::for_member(0),
        );
        // Revisions 2..=40; every fifth spans four keys (a txn).
        let mut expected = Vec::new();
        for revision in 2..=40i64 {
            let keys = if revision % 5 == 0 { 4 } else { 1 };
            for sub_revision in 0..keys {
                let key = Bytes::from(format!("k{revision}-{sub_revision}"));
                let shard = space.shard_map().shard_of(&key);
                space.memtable(shard).insert(
                    key.clone(),
                    revision,
                    Version {
                        value: Bytes::from(vec![b'v'; 10 + revision as usize]),
                        create_revision: revision,
                        version: 1,
                        lease: 0,
                        sub_revision,
                    },
                );
                expected.push((revision, key));
            }
        }
        let all: Vec<ShardId> = space.shard_map().all_shards().collect();
        let chunk = read_changes(&space, &all, 1, 40, usize::MAX, usize::MAX).expect("history");
        let request = WatchCreateRequest::default();
        let range = KeyRange::from_bytes(&Bytes::from_static(b"\0"), &Bytes::from_static(b"\0"));
        let mut watcher = Watcher::new(7, range, &request, 2);
        let stamp = HeaderStamp::default();
        let delivery = Delivery {
            max_response_bytes: usize::MAX,
            max_bytes: 150,
            header_revision: 40,
        };
        let mut received = Vec::new();
        let mut steps = 0;
        while watcher.next_revision <= 40 {
            let before = watcher.next_revision;
            let mut out = Vec::new();
            let delivered = watcher.deliver(
                chunk.deliverable_from(before),
                chunk.through,
                &space,
                &stamp,
                delivery,
                &mut out,
            );
            assert!(watcher.next_revision > before, "every step makes progress");
            assert!(delivered > 0);
            let mut step_revisions = Vec::new();
            for reply in out {
                for event in &reply.events {
                    let event = <Event as prost::Message>::decode(event.clone()).unwrap();
                    let kv = event.kv.unwrap();
                    received.push((kv.mod_revision, kv.key.clone()));
                    step_revisions.push(kv.mod_revision);
                }
            }
            // Whole revisions: a txn's four changes never straddle steps.
            for revision in &step_revisions {
                let in_step = step_revisions
                    .iter()
                    .filter(|other| *other == revision)
                    .count();
                assert_eq!(in_step, if revision % 5 == 0 { 4 } else { 1 });
            }
            steps += 1;
        }
        assert!(steps > 5, "the limit split the delivery ({steps} steps)");
        assert_eq!(received, expected);
    }
}
