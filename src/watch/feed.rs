//! A core's event feed: the recent history, read once and shared by every
//! watch stream on the core.
//!
//! One producer task per core follows the watermark: each time it moves it
//! reads the new changes of every shard (one merge for all watchers) and
//! appends them as a batch. Streams deliver from the batches to watchers
//! that are caught up; a watcher behind the oldest batch reads the history
//! itself (etcd's "unsynced" watchers) and then rejoins.
//!
//! Bounds: the feed holds at most [`FEED_MAX_CHANGES`] changes and
//! [`FEED_MAX_PAYLOAD_BYTES`] of their keys and values, which their shared
//! encoded events copy (oldest batches are dropped first), and it reads
//! nothing while no stream on the core is subscribed. A stream that cannot send (a slow client) holds
//! nothing of its own: it just stops advancing and later reads history.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use event_listener::Event;

use super::history::{HistoryChunk, read_changes};
use super::{FEED_MAX_CHANGES, FEED_MAX_PAYLOAD_BYTES};
use crate::store::key_space::KeySpace;
use crate::store::shard_map::ShardId;

pub struct EventFeed {
    space: Arc<KeySpace>,
    all_shards: Vec<ShardId>,
    state: RefCell<FeedState>,
    /// Streams subscribed; the producer idles at zero.
    subscribers: Cell<usize>,
    /// Notified when the head moves.
    advanced: Event,
    /// Notified when the first stream subscribes.
    subscribed: Event,
}

#[derive(Default)]
struct FeedState {
    /// Contiguous, oldest first: each batch's `after` is the previous
    /// batch's `through`.
    batches: VecDeque<Rc<HistoryChunk>>,
    /// Every change at or below this revision has been read (or skipped
    /// while nobody listened).
    head: i64,
    held_changes: usize,
    /// The batches' `payload_bytes`.
    held_payload_bytes: usize,
}

/// Keeps a stream subscribed to its core's feed while alive.
pub struct Subscription {
    feed: Rc<EventFeed>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.subscribers.set(self.feed.subscribers.get() - 1);
    }
}

impl EventFeed {
    pub fn new(space: Arc<KeySpace>) -> Rc<Self> {
        let head = space.clock().watermark();
        let all_shards = space.shard_map().all_shards().collect();
        Rc::new(Self {
            space,
            all_shards,
            state: RefCell::new(FeedState {
                head,
                ..Default::default()
            }),
            subscribers: Cell::new(0),
            advanced: Event::new(),
            subscribed: Event::new(),
        })
    }

    pub fn subscribe(self: &Rc<Self>) -> Subscription {
        self.subscribers.set(self.subscribers.get() + 1);
        self.subscribed.notify(usize::MAX);
        Subscription { feed: self.clone() }
    }

    /// Everything at or below this revision can be delivered now.
    pub fn head(&self) -> i64 {
        self.state.borrow().head
    }

    /// The batches covering `next_revision` onwards, or `None` when the
    /// feed does not hold `next_revision` (already dropped, or not read
    /// yet): the caller reads history.
    pub fn batches_from(&self, next_revision: i64) -> Option<Vec<Rc<HistoryChunk>>> {
        let state = self.state.borrow();
        let oldest_after = state
            .batches
            .front()
            .map_or(state.head, |batch| batch.after);
        if next_revision <= oldest_after || next_revision > state.head {
            return None;
        }
        // The batches are contiguous and in order, so the ones needed are
        // a suffix: found by binary search, not by a pass over all of them
        // per watcher (with a batch per revision the feed holds thousands,
        // and that pass was 28% of the server in a paced fan-out).
        let first = state
            .batches
            .partition_point(|batch| batch.through < next_revision);
        Some(state.batches.range(first..).cloned().collect())
    }

    /// Resolves once the head is past `head`.
    pub async fn advanced_past(&self, head: i64) {
        loop {
            if self.head() > head {
                return;
            }
            let listener = self.advanced.listen();
            if self.head() > head {
                return;
            }
            listener.await;
        }
    }

    /// The producer: run once per core, forever.
    pub async fn run(self: Rc<Self>) {
        loop {
            if self.subscribers.get() == 0 {
                // Nobody listens: drop what is held and skip ahead, so a
                // first subscriber does not make the feed read old history.
                {
                    let mut state = self.state.borrow_mut();
                    state.batches.clear();
                    state.held_changes = 0;
                    state.held_payload_bytes = 0;
                }
                let listener = self.subscribed.listen();
                if self.subscribers.get() == 0 {
                    listener.await;
                }
                let watermark = self.space.clock().watermark();
                let mut state = self.state.borrow_mut();
                state.head = state.head.max(watermark);
                drop(state);
                self.advanced.notify(usize::MAX);
                continue;
            }
            let head = self.head();
            let watermark = self.space.clock().wait_applied(head + 1).await;
            self.read_through(watermark);
            self.advanced.notify(usize::MAX);
        }
    }

    fn read_through(&self, watermark: i64) {
        let head = self.head();
        match read_changes(
            &self.space,
            &self.all_shards,
            head,
            watermark,
            FEED_MAX_CHANGES,
            FEED_MAX_PAYLOAD_BYTES,
        ) {
            Ok(chunk) => {
                let mut state = self.state.borrow_mut();
                state.head = chunk.through;
                state.held_changes += chunk.changes().len();
                state.held_payload_bytes += chunk.payload_bytes();
                state.batches.push_back(Rc::new(chunk));
                while (state.held_changes > FEED_MAX_CHANGES
                    || state.held_payload_bytes > FEED_MAX_PAYLOAD_BYTES)
                    && state.batches.len() > 1
                {
                    let oldest = state.batches.pop_front().expect("more than one batch");
                    state.held_changes -= oldest.changes().len();
                    state.held_payload_bytes -= oldest.payload_bytes();
                }
            }
            Err(_) => {
                // Compacted under the feed (it was idle): restart at the
                // watermark; watchers behind read history and learn of the
                // compaction there.
                let mut state = self.state.borrow_mut();
                state.batches.clear();
                state.held_changes = 0;
                state.held_payload_bytes = 0;
                state.head = watermark;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::lease::table::LeaseTable;
    use crate::store::memtable::Version;
    use crate::store::revision::RevisionClock;
    use crate::store::shard_map::ShardMap;

    #[test]
    fn the_feed_drops_its_oldest_batches_beyond_its_payload_bound() {
        let space = KeySpace::new(
            ShardMap::new(2, 1),
            RevisionClock::new(1, 1),
            LeaseTable::for_member(0),
        );
        // One buffer shared by every version: the bound counts bytes the
        // encoded events would copy, not what the memtable holds.
        let value = Bytes::from(vec![b'v'; 1 << 20]);
        for revision in 2..=101 {
            let key = Bytes::from(format!("key{revision}"));
            let shard = space.shard_map().shard_of(&key);
            space.memtable(shard).insert(
                key,
                revision,
                Version {
                    value: value.clone(),
                    create_revision: revision,
                    version: 1,
                    lease: 0,
                    sub_revision: 0,
                },
            );
        }
        let feed = EventFeed::new(space);
        assert_eq!(feed.head(), 1);
        for through in (11..=101).step_by(10) {
            feed.read_through(through);
        }
        let state = feed.state.borrow();
        assert_eq!(state.head, 101);
        assert!(state.held_payload_bytes <= FEED_MAX_PAYLOAD_BYTES);
        assert!(state.held_payload_bytes > FEED_MAX_PAYLOAD_BYTES - (10 << 20) - 1024);
        let counted: usize = state
            .batches
            .iter()
            .map(|batch| batch.payload_bytes())
            .sum();
        assert_eq!(counted, state.held_payload_bytes);
        drop(state);
        assert!(feed.batches_from(2).is_none(), "the oldest were dropped");
        let recent = feed.batches_from(95).expect("recent changes are held");
        let bounds = |batches: &[Rc<HistoryChunk>]| -> Vec<(i64, i64)> {
            batches
                .iter()
                .map(|batch| (batch.after, batch.through))
                .collect()
        };
        assert_eq!(bounds(&recent), vec![(91, 101)], "only the batches needed");
        let from_91 = feed.batches_from(91).expect("held");
        assert_eq!(bounds(&from_91), vec![(81, 91), (91, 101)]);
        assert!(feed.batches_from(102).is_none(), "not read yet");
    }
}
