//! A connection's budget of outgoing bytes.
//!
//! HTTP/2 flow control does not bound what a server holds for a client: a
//! client may advertise windows of 2^31-1 bytes and then stop reading its
//! socket, and h2 queues whatever a call hands it until the socket takes
//! it. Or it may keep reading the socket and close its streams' windows,
//! so that encoded responses wait for windows that do not open. So each
//! connection keeps two accounts of its response bytes:
//!
//! - **queued**: handed to h2 and not yet written to the socket. Calls
//!   encode and hand over data only while this is under its limit (socket
//!   backpressure: when it is over, the client is not reading the
//!   connection at all, so every call waits).
//! - **held**: encoded by a call's sink and not handed to h2 yet, mostly
//!   waiting for the stream's window. This one does not make other calls
//!   wait (HTTP/2 flow control is per stream: a stream the client does
//!   not read must not stall the ones it reads); producers that choose how
//!   much to produce (watch streams) wait while it is over its own limit,
//!   and size what they produce to the stream's window.
//!
//! [`MeteredIo`] sees the bytes h2 writes and credits each stream's DATA
//! payload back as it leaves. A stream's queued bytes that will never be
//! written are dropped when h2 drops them: when the stream is reset, in
//! either direction. Resets we send are seen on the way out; a client's
//! reset is seen on the way in, or by the call's sink when it ends.
//!
//! [`MeteredIo`]: super::frame_meter::MeteredIo

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use event_listener::Event;

/// One stream's part of the queued account.
#[derive(Debug, Default, Clone, Copy)]
struct StreamAccount {
    /// Handed to h2 and not yet written (or dropped).
    queued: usize,
    /// The call's sink still exists and may hand over more.
    sink_alive: bool,
    /// The client reset the stream while its sink was alive: h2 drops
    /// what is queued once it processes the reset, so the sink forgets
    /// the rest when it ends.
    reset_by_client: bool,
}

/// A limit that producers wait on: woken when the account falls back
/// under it (edge-triggered, so an uncontended connection pays nothing
/// for notifications).
struct Limited {
    limit: usize,
    current: Cell<usize>,
    waited: Cell<bool>,
    event: Event,
}

impl Limited {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            current: Cell::new(0),
            waited: Cell::new(false),
            event: Event::new(),
        }
    }

    fn has_room(&self) -> bool {
        self.current.get() < self.limit
    }

    async fn room(&self) {
        loop {
            if self.has_room() {
                return;
            }
            let listener = self.event.listen();
            self.waited.set(true);
            if self.has_room() {
                return;
            }
            listener.await;
        }
    }

    fn add(&self, bytes: usize) {
        self.current.set(self.current.get() + bytes);
    }

    fn remove(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let current = self.current.get() - bytes;
        self.current.set(current);
        if self.waited.get() && current < self.limit {
            self.waited.set(false);
            self.event.notify(usize::MAX);
        }
    }
}

/// One connection's outgoing byte accounts (one per connection, on its
/// core: `Cell`s, no locks).
pub struct SendBudget {
    queued: Limited,
    held: Limited,
    /// The queued bytes by HTTP/2 stream id.
    accounts: RefCell<HashMap<u32, StreamAccount>>,
    /// The most ever queued and held at once, for tests and measurements.
    peak: Cell<usize>,
}

impl SendBudget {
    /// `queued_limit`: bytes h2 may hold unwritten before calls wait;
    /// `held_limit`: encoded bytes not handed over yet before producers
    /// that can wait (watch streams) do.
    pub fn new(queued_limit: usize, held_limit: usize) -> Self {
        Self {
            queued: Limited::new(queued_limit),
            held: Limited::new(held_limit),
            accounts: RefCell::new(HashMap::new()),
            peak: Cell::new(0),
        }
    }

    /// Bytes handed to h2 and not yet written or dropped.
    pub fn queued(&self) -> usize {
        self.queued.current.get()
    }

    /// Bytes encoded and not yet handed to h2.
    pub fn held(&self) -> usize {
        self.held.current.get()
    }

    pub fn peak(&self) -> usize {
        self.peak.get()
    }

    /// What may still be queued before the limit.
    pub fn queue_room(&self) -> usize {
        self.queued.limit.saturating_sub(self.queued())
    }

    /// Whether h2's queue for the connection is under its limit.
    pub fn has_room(&self) -> bool {
        self.queued.has_room()
    }

    /// Waits until h2's queue for the connection is under its limit. A
    /// call that then encodes or hands over a batch without awaiting in
    /// between may take the account past the limit by that batch.
    pub async fn room(&self) {
        self.queued.room().await
    }

    /// Waits until the held bytes are under their limit (and h2's queue
    /// under its own): before a producer that may wait starts a batch.
    pub async fn producer_room(&self) {
        loop {
            self.held.room().await;
            self.queued.room().await;
            if self.held.has_room() {
                return;
            }
        }
    }

    /// Whether `bytes` more may be held without passing the held limit.
    pub fn may_hold(&self, bytes: usize) -> bool {
        self.held().saturating_add(bytes) <= self.held.limit
    }

    /// A call's sink for `stream` begins.
    pub fn open(&self, stream: u32) {
        self.accounts
            .borrow_mut()
            .entry(stream)
            .or_default()
            .sink_alive = true;
    }

    /// `bytes` were encoded and wait to be handed to h2.
    pub fn hold(&self, bytes: usize) {
        self.held.add(bytes);
        self.note_peak();
    }

    /// `bytes` held will never be handed over (their call ended).
    pub fn unhold(&self, bytes: usize) {
        self.held.remove(bytes);
    }

    /// `bytes` held were handed to h2 for `stream`, until written.
    pub fn hand_over(&self, stream: u32, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.held.remove(bytes);
        self.accounts.borrow_mut().entry(stream).or_default().queued += bytes;
        self.queued.add(bytes);
        self.note_peak();
    }

    /// `bytes` of `stream`'s DATA left for the socket. Bytes of a stream
    /// no longer accounted are ignored (its account was dropped at a
    /// reset).
    pub fn credit(&self, stream: u32, bytes: usize) {
        let mut accounts = self.accounts.borrow_mut();
        let Some(account) = accounts.get_mut(&stream) else {
            return;
        };
        let credited = bytes.min(account.queued);
        account.queued -= credited;
        if account.queued == 0 && !account.sink_alive {
            accounts.remove(&stream);
        }
        drop(accounts);
        self.queued.remove(credited);
    }

    /// We reset `stream` (h2 writes RST_STREAM after emptying its queue):
    /// nothing more of it will be written.
    pub fn reset_sent(&self, stream: u32) {
        let mut accounts = self.accounts.borrow_mut();
        let Some(account) = accounts.get_mut(&stream) else {
            return;
        };
        let dropped = std::mem::take(&mut account.queued);
        if !account.sink_alive {
            accounts.remove(&stream);
        }
        drop(accounts);
        self.queued.remove(dropped);
    }

    /// The client reset `stream`. If its sink is gone the account is
    /// dropped now; otherwise h2 may still be handed data before it
    /// processes the reset, so the sink drops the account when it ends.
    pub fn reset_received(&self, stream: u32) {
        let mut accounts = self.accounts.borrow_mut();
        match accounts.get_mut(&stream) {
            Some(account) if account.sink_alive => account.reset_by_client = true,
            Some(_) => {
                let dropped = accounts.remove(&stream).map_or(0, |account| account.queued);
                drop(accounts);
                self.queued.remove(dropped);
            }
            None => {}
        }
    }

    /// The sink of `stream` ended. `reset`: the stream was reset (h2 said
    /// so), so what is still queued for it will never be written.
    pub fn close(&self, stream: u32, reset: bool) {
        let mut accounts = self.accounts.borrow_mut();
        let Some(account) = accounts.get_mut(&stream) else {
            return;
        };
        account.sink_alive = false;
        if reset || account.reset_by_client || account.queued == 0 {
            let dropped = accounts.remove(&stream).map_or(0, |account| account.queued);
            drop(accounts);
            self.queued.remove(dropped);
        }
    }

    fn note_peak(&self) {
        self.peak
            .set(self.peak.get().max(self.queued() + self.held()));
    }

    /// Streams with an account (tests: accounts must not leak).
    pub fn accounted_streams(&self) -> usize {
        self.accounts.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    fn ready(future: impl Future<Output = ()>) -> bool {
        let mut future = pin!(future);
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    fn queue(budget: &SendBudget, stream: u32, bytes: usize) {
        budget.hold(bytes);
        budget.hand_over(stream, bytes);
    }

    #[test]
    fn written_bytes_are_credited_per_stream() {
        let budget = SendBudget::new(100, 1000);
        budget.open(1);
        budget.open(3);
        queue(&budget, 1, 60);
        queue(&budget, 3, 50);
        assert_eq!(budget.queued(), 110);
        assert!(!ready(budget.room()));
        budget.credit(1, 30);
        assert_eq!(budget.queued(), 80);
        assert!(ready(budget.room()));
        // More than was queued (or for an unknown stream) is ignored.
        budget.credit(3, 500);
        budget.credit(9, 500);
        assert_eq!(budget.queued(), 30);
        assert_eq!(budget.peak(), 110);
    }

    #[test]
    fn a_waiter_wakes_when_the_queue_falls_below_the_limit() {
        let budget = SendBudget::new(100, 1000);
        budget.open(1);
        queue(&budget, 1, 150);
        let mut waiting = pin!(budget.room());
        let mut context = Context::from_waker(Waker::noop());
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        budget.credit(1, 40);
        assert!(
            waiting.as_mut().poll(&mut context).is_pending(),
            "110 is over"
        );
        budget.credit(1, 20);
        assert!(waiting.as_mut().poll(&mut context).is_ready());
    }

    #[test]
    fn held_bytes_stop_producers_but_not_other_calls() {
        let budget = SendBudget::new(100, 200);
        budget.hold(250);
        assert!(ready(budget.room()), "a call may still send");
        assert!(!ready(budget.producer_room()), "a producer waits");
        assert!(!budget.may_hold(1));
        budget.open(1);
        budget.hand_over(1, 100);
        assert_eq!((budget.held(), budget.queued()), (150, 100));
        assert!(!ready(budget.room()), "now the queue is full");
        budget.credit(1, 100);
        assert!(ready(budget.producer_room()));
        budget.unhold(150);
        assert!(budget.may_hold(200));
        assert_eq!(budget.peak(), 250, "handing over moves bytes, adds none");
    }

    #[test]
    fn a_finished_stream_stays_accounted_until_written() {
        let budget = SendBudget::new(100, 1000);
        budget.open(5);
        queue(&budget, 5, 70);
        budget.close(5, false);
        assert_eq!(budget.queued(), 70, "still queued in h2");
        budget.credit(5, 70);
        assert_eq!(budget.queued(), 0);
        assert_eq!(budget.accounted_streams(), 0);
    }

    #[test]
    fn resets_drop_what_will_never_be_written() {
        let budget = SendBudget::new(100, 1000);
        // Reset by the client after its call ended.
        budget.open(1);
        queue(&budget, 1, 40);
        budget.close(1, false);
        budget.reset_received(1);
        assert_eq!(budget.queued(), 0);
        // Reset by the client while the call runs: the account stays
        // until the sink ends, whatever it handed over meanwhile.
        budget.open(3);
        queue(&budget, 3, 40);
        budget.reset_received(3);
        queue(&budget, 3, 10);
        assert_eq!(budget.queued(), 50);
        budget.close(3, false);
        assert_eq!(budget.queued(), 0);
        // Reset by us.
        budget.open(7);
        queue(&budget, 7, 30);
        budget.reset_sent(7);
        assert_eq!(budget.queued(), 0);
        budget.close(7, true);
        assert_eq!(budget.accounted_streams(), 0);
        assert!(ready(budget.room()));
    }
}
