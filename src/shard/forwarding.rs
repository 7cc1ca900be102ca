//! Every member takes every write (issue 19 §4): a cluster member that
//! does not take writes itself has the lead member carry them out, over
//! the peer transport (`peer::forward`).
//!
//! The caller's side is a [`Forwarder`] per core: it numbers each call,
//! queues it for the lead member and waits for the answer until etcd's
//! request timeout. The lead member's side is
//! [`carry_out_forwarded_calls`], one task per core, each with its own
//! queue ([`CallQueues`]); it answers once a write is readable there. The caller
//! then waits until the write is readable on its own member too, so a
//! client reads its own write from the member it wrote through.
//!
//! A call is retried only while it is refused with `NotLeader`, which is
//! answered before anything was evaluated or proposed: a retried call can
//! never happen twice.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use super::lead_member::MemberRole;
use super::write_path::WritePath;
use crate::peer::forward::{ForwardReply, ForwardRequest, ForwardedAnswer, ForwardedCall};
use crate::peer::queues::PeerQueues;
use crate::peer::transport::Outgoing;
use crate::store::error::KvError;

/// How long a call refused with `NotLeader` (or one with no lead member to
/// go to) waits before it is tried again: about an election's pace, far
/// below the request timeout.
pub const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// etcd's request timeout (`ServerConfig.ReqTimeout`): 5 s for the
/// request plus two election timeouts for a new leader to be found.
pub fn request_timeout(election_timeout: Duration) -> Duration {
    Duration::from_secs(5) + 2 * election_timeout
}

/// The callers on this member waiting for the lead member's answers,
/// shared by every core (answers arrive on core 0's peer connections).
#[derive(Default)]
pub struct ForwardTable {
    /// Call numbers are never reused while the process lives, so a late
    /// answer to a call that timed out finds nobody.
    next_id: AtomicU64,
    /// Taken only to add, answer or forget a forwarded call: a follower's
    /// path that already costs a network round trip.
    waiting: Mutex<HashMap<u64, oneshot::Sender<ForwardedAnswer>>>,
}

impl ForwardTable {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn register(&self) -> (u64, oneshot::Receiver<ForwardedAnswer>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (answer, answered) = oneshot::channel();
        self.lock().insert(id, answer);
        (id, answered)
    }

    fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Hands `reply` to its caller; an answer nobody waits for any more
    /// (the call timed out) is dropped.
    pub fn answer(&self, reply: ForwardReply) {
        if let Some(caller) = self.lock().remove(&reply.id) {
            let _ = caller.send(reply.answer);
        }
    }

    /// Callers still waiting.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<ForwardedAnswer>>> {
        // A poisoned table only means a panic elsewhere; its map is whole.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Forgets a call when its caller stops waiting, answered or not.
struct Registration<'a> {
    table: &'a ForwardTable,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.table.forget(self.id);
    }
}

/// Where a call is carried out right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This member takes writes.
    Here,
    /// The member named does.
    Forward(u64),
    /// No member is known to take writes (an election, or this member is
    /// becoming the lead member): ask again shortly.
    Wait,
}

/// One core's way to the lead member.
pub struct Forwarder {
    pub role: Arc<MemberRole>,
    /// Each other member's outgoing queue.
    pub queues: PeerQueues,
    pub table: Arc<ForwardTable>,
    /// How long a call may take in all, retries and waits included
    /// ([`request_timeout`]).
    pub request_timeout: Duration,
    /// The member's membership, which member changes consult and wait on.
    pub configurations: Arc<crate::membership::Configurations>,
    /// The operator's limits on membership changes (used on the lead
    /// member).
    pub reconfig: super::member_change::ReconfigPolicy,
}

impl Forwarder {
    pub fn route(&self) -> Route {
        if self.role.takes_writes() {
            return Route::Here;
        }
        match self.role.lead_member() {
            0 => Route::Wait,
            // Itself, not taking writes yet (still catching up or voiding).
            lead if lead == self.role.member_id => Route::Wait,
            lead => Route::Forward(lead),
        }
    }

    /// Sends `call` to member `lead` and waits for its answer until
    /// `deadline`. `NotLeader` when it cannot be sent now (the queue is
    /// full or `lead` is no member): nothing was done, try again.
    pub async fn call(
        &self,
        lead: u64,
        call: ForwardedCall,
        deadline: Instant,
    ) -> Result<ForwardedAnswer, KvError> {
        let (id, answered) = self.table.register();
        let _registration = Registration {
            table: &self.table,
            id,
        };
        if !self
            .queues
            .try_send(lead, Outgoing::Request(ForwardRequest { id, call }))
        {
            return Err(KvError::NotLeader);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, answered).await {
            Ok(Ok(answer)) => Ok(answer),
            // Sent, so it may have been carried out: only a timeout is
            // honest now.
            Ok(Err(_)) | Err(_) => Err(KvError::RequestTimedOut),
        }
    }
}

/// Where a member's peer connections put the calls forwarded to it: one
/// queue per core, taken in turn, each with one receiver. (flume's async
/// receivers sharing one channel can spin: a receiver woken for a message
/// another one took re-queues itself on every poll, and a monoio waker
/// that does not `will_wake` its predecessor polls it again at once. Seen
/// as a core at 100% and gigabytes of queued wakers under forwarded
/// load.)
#[derive(Clone)]
pub struct CallQueues {
    queues: Rc<[flume::Sender<(u64, ForwardRequest)>]>,
    next: Rc<std::cell::Cell<usize>>,
}

impl CallQueues {
    pub fn new(queues: Vec<flume::Sender<(u64, ForwardRequest)>>) -> Self {
        Self {
            queues: queues.into(),
            next: Rc::default(),
        }
    }

    /// Queues a call from member `from` for the next core. A full queue
    /// drops it (this member cannot keep up; its caller times out, as if
    /// the frame were lost); `false` once the cores are gone.
    pub fn push(&self, from: u64, request: ForwardRequest) -> bool {
        let core = self.next.get() % self.queues.len().max(1);
        self.next.set(core + 1);
        let queued = self
            .queues
            .get(core)
            .map(|queue| queue.try_send((from, request)));
        !matches!(
            queued,
            Some(Err(flume::TrySendError::Disconnected(_))) | None
        )
    }
}

/// The lead member's side, one task per core: carries out the calls
/// other members forwarded (`calls`, this core's queue) and queues
/// each answer for the member that asked. A call is answered whatever
/// happens, within the request timeout, unless the asking member's queue
/// is full (it then times out, as if the answer were lost).
pub async fn carry_out_forwarded_calls(
    write_path: Rc<WritePath>,
    calls: flume::Receiver<(u64, ForwardRequest)>,
    queues: PeerQueues,
    request_timeout: Duration,
) {
    while let Ok((from, request)) = calls.recv_async().await {
        let (write_path, queues) = (write_path.clone(), queues.clone());
        monoio::spawn(async move {
            let carried_out =
                monoio::time::timeout(request_timeout, write_path.carry_out_here(request.call))
                    .await;
            let answer = match carried_out {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => ForwardedAnswer::Failed(error),
                Err(_) => ForwardedAnswer::Failed(KvError::RequestTimedOut),
            };
            let reply = ForwardReply {
                id: request.id,
                answer,
            };
            let _ = queues.try_send(from, Outgoing::Reply(reply));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_reach_their_caller_once_and_late_ones_nobody() {
        let table = ForwardTable::new();
        let (first, mut first_answer) = table.register();
        let (second, second_answer) = table.register();
        assert_ne!(first, second);
        table.answer(ForwardReply {
            id: first,
            answer: ForwardedAnswer::Done,
        });
        assert_eq!(first_answer.try_recv(), Ok(Some(ForwardedAnswer::Done)));
        // The second caller gave up.
        drop(Registration {
            table: &table,
            id: second,
        });
        drop(second_answer);
        table.answer(ForwardReply {
            id: second,
            answer: ForwardedAnswer::Done,
        });
        // An answer to a number never given.
        table.answer(ForwardReply {
            id: 999,
            answer: ForwardedAnswer::Done,
        });
        assert_eq!(table.waiting(), 0);
    }

    #[test]
    fn calls_go_to_each_core_in_turn() {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..2).map(|_| flume::bounded(4)).unzip();
        let queues = CallQueues::new(senders);
        for id in 0..4 {
            let call = ForwardRequest {
                id,
                call: ForwardedCall::RenewLease { id: 1 },
            };
            assert!(queues.push(7, call));
        }
        assert_eq!((receivers[0].len(), receivers[1].len()), (2, 2));
        drop(receivers);
        let call = ForwardRequest {
            id: 9,
            call: ForwardedCall::RenewLease { id: 1 },
        };
        assert!(!queues.push(7, call), "the cores are gone");
    }

    #[test]
    fn etcds_request_timeout() {
        assert_eq!(
            request_timeout(Duration::from_millis(1000)),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn routes_follow_the_role() {
        let role = MemberRole::new(2, 1);
        let forwarder = Forwarder {
            role: role.clone(),
            queues: crate::peer::queues::PeerQueueTable::new(Default::default()).view(),
            table: ForwardTable::new(),
            request_timeout: Duration::from_secs(1),
            configurations: Arc::new(crate::membership::Configurations::in_memory(1, &[])),
            reconfig: Default::default(),
        };
        assert_eq!(forwarder.route(), Route::Wait);
        role.note_group(0, 3, false);
        assert_eq!(forwarder.route(), Route::Forward(3));
        role.note_group(0, 2, true);
        assert_eq!(forwarder.route(), Route::Wait, "not taking writes yet");
    }
}
