//! Each other member's outgoing queue, as the membership changes.
//!
//! Every core's workers, forwarders and answer tasks send into these
//! queues; core 0's senders drain them (`transport::send_to_peer`). The
//! table changes only when a member joins, leaves or moves (rare); a send
//! must not take a lock shared by the cores. So each user keeps its own
//! copy of the table and checks one atomic version number per send,
//! copying the table again only after it changed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::transport::{Outgoing, PEER_QUEUE_CAPACITY};

type QueueMap = BTreeMap<u64, flume::Sender<Outgoing>>;

/// The shared table: written by core 0 when the membership changes.
#[derive(Debug, Default)]
pub struct PeerQueueTable {
    /// Bumped after every change, so copies know to refresh.
    version: AtomicU64,
    queues: Mutex<QueueMap>,
}

impl PeerQueueTable {
    pub fn new(queues: QueueMap) -> Arc<Self> {
        Arc::new(Self {
            version: AtomicU64::new(1),
            queues: Mutex::new(queues),
        })
    }

    pub fn insert(&self, member: u64, queue: flume::Sender<Outgoing>) {
        self.lock().insert(member, queue);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// A new queue for `member` (replacing its old one, whose sender stops
    /// once no copy holds it): the receiving end, for its sender.
    pub fn open(&self, member: u64) -> flume::Receiver<Outgoing> {
        let (queue, receiver) = flume::bounded(PEER_QUEUE_CAPACITY);
        self.insert(member, queue);
        receiver
    }

    /// Drops `member`'s queue here; its sender stops once no copy holds it.
    pub fn remove(&self, member: u64) {
        if self.lock().remove(&member).is_some() {
            self.version.fetch_add(1, Ordering::Release);
        }
    }

    pub fn contains(&self, member: u64) -> bool {
        self.lock().contains_key(&member)
    }

    pub fn members(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }

    /// A copy for one core's user (see the module comment).
    pub fn view(self: &Arc<Self>) -> PeerQueues {
        PeerQueues {
            table: self.clone(),
            copy: Rc::new(RefCell::new((0, QueueMap::new()))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueMap> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One core's copy of the table (clones share it).
#[derive(Clone)]
pub struct PeerQueues {
    table: Arc<PeerQueueTable>,
    /// `(version, queues)` as last copied.
    copy: Rc<RefCell<(u64, QueueMap)>>,
}

impl PeerQueues {
    /// Queues `item` for `member` without waiting. `false`: no such
    /// member, or its queue is full (Raft and the callers treat both as a
    /// lost message).
    pub fn try_send(&self, member: u64, item: Outgoing) -> bool {
        let version = self.table.version.load(Ordering::Acquire);
        let mut copy = self.copy.borrow_mut();
        if copy.0 != version {
            *copy = (version, self.table.lock().clone());
        }
        copy.1
            .get(&member)
            .is_some_and(|queue| queue.try_send(item).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64) -> Outgoing {
        Outgoing::Request(super::super::forward::ForwardRequest {
            id,
            call: super::super::forward::ForwardedCall::RenewLease { id: 1 },
        })
    }

    #[test]
    fn copies_follow_members_joining_and_leaving() {
        let (to_two, from_two) = flume::bounded(4);
        let table = PeerQueueTable::new(BTreeMap::from([(2, to_two)]));
        let view = table.view();
        assert!(view.try_send(2, request(1)));
        assert!(!view.try_send(3, request(2)), "no member 3 yet");
        let (to_three, from_three) = flume::bounded(4);
        table.insert(3, to_three);
        assert!(view.try_send(3, request(3)), "the copy refreshed");
        table.remove(2);
        assert!(!view.try_send(2, request(4)));
        assert!(
            from_two.is_disconnected(),
            "member 2's sender stops once the copies let go"
        );
        assert_eq!(from_three.len(), 1);
        assert_eq!(table.members(), vec![3]);
        // A member that moved gets a new queue; the old one's sender stops.
        let moved = table.open(3);
        assert!(view.try_send(3, request(5)));
        assert_eq!(moved.len(), 1);
        assert!(from_three.is_disconnected());
    }
}
