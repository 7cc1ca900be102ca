//! A connection's budget of outgoing bytes: how much response data may be
//! encoded and not yet written to the socket, over all its calls.
//!
//! HTTP/2 flow control does not bound this: a client may advertise windows
//! of 2^31-1 bytes and then stop reading, and h2 queues whatever a call
//! hands it until the socket takes it. Each call's [`ResponseSink`] charges
//! its encoded messages here *before* handing them to h2 and waits while
//! the connection is over budget; [`MeteredIo`] sees the bytes h2 writes
//! and credits each stream's DATA payload back as it leaves. So what a
//! connection holds in response data is at most the budget plus one
//! batch, whether its client reads or not.
//!
//! A stream's bytes that will never be written are dropped from the
//! account when h2 drops them: when a stream is reset, in either
//! direction. Resets we send are seen on the way out; a client's reset is
//! seen on the way in, or by the call's sink when it ends.
//!
//! [`ResponseSink`]: super::call::ResponseSink
//! [`MeteredIo`]: super::frame_meter::MeteredIo

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use event_listener::Event;

/// One stream's part of the account.
#[derive(Debug, Default, Clone, Copy)]
struct StreamAccount {
    /// Charged and not yet written (or dropped).
    unwritten: usize,
    /// The call's sink still exists and may charge more.
    sink_alive: bool,
    /// The client reset the stream while its sink was alive: h2 drops
    /// what is queued once it processes the reset, so the sink forgets
    /// the rest when it ends.
    reset_by_client: bool,
}

/// One connection's outgoing byte account (one per connection, on its
/// core: `Cell`s, no locks).
pub struct SendBudget {
    /// Above this many unwritten bytes, new output waits.
    limit: usize,
    /// The sum of every account's `unwritten`.
    unwritten: Cell<usize>,
    /// By HTTP/2 stream id.
    accounts: RefCell<HashMap<u32, StreamAccount>>,
    /// Set when a producer found no room; the next fall below the limit
    /// wakes every waiter (edge-triggered, so a connection whose budget
    /// is not contended pays nothing for notifications).
    waited: Cell<bool>,
    room: Event,
    /// The most ever unwritten at once, for tests and measurements.
    peak: Cell<usize>,
}

impl SendBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            unwritten: Cell::new(0),
            accounts: RefCell::new(HashMap::new()),
            waited: Cell::new(false),
            room: Event::new(),
            peak: Cell::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged and not yet written or dropped.
    pub fn unwritten(&self) -> usize {
        self.unwritten.get()
    }

    pub fn peak(&self) -> usize {
        self.peak.get()
    }

    /// Whether a call may encode more output now.
    pub fn has_room(&self) -> bool {
        self.unwritten.get() < self.limit
    }

    /// Waits until the connection is under its limit. A producer that
    /// then charges a batch without awaiting in between may take the
    /// account past the limit by that batch; the next one waits.
    pub async fn room(&self) {
        loop {
            if self.has_room() {
                return;
            }
            let listener = self.room.listen();
            self.waited.set(true);
            if self.has_room() {
                return;
            }
            listener.await;
        }
    }

    /// A call's sink for `stream` begins.
    pub fn open(&self, stream: u32) {
        self.accounts
            .borrow_mut()
            .entry(stream)
            .or_default()
            .sink_alive = true;
    }

    /// `bytes` encoded for `stream`, from now until they are written.
    pub fn charge(&self, stream: u32, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.accounts
            .borrow_mut()
            .entry(stream)
            .or_default()
            .unwritten += bytes;
        let unwritten = self.unwritten.get() + bytes;
        self.unwritten.set(unwritten);
        self.peak.set(self.peak.get().max(unwritten));
    }

    /// `bytes` of `stream`'s DATA left for the socket, or were charged and
    /// never handed to h2. Bytes of a stream no longer accounted are
    /// ignored (its account was dropped at a reset).
    pub fn credit(&self, stream: u32, bytes: usize) {
        let mut accounts = self.accounts.borrow_mut();
        let Some(account) = accounts.get_mut(&stream) else {
            return;
        };
        let credited = bytes.min(account.unwritten);
        account.unwritten -= credited;
        if account.unwritten == 0 && !account.sink_alive {
            accounts.remove(&stream);
        }
        drop(accounts);
        self.give_back(credited);
    }

    /// We reset `stream` (h2 writes RST_STREAM after emptying its queue):
    /// nothing more of it will be written.
    pub fn reset_sent(&self, stream: u32) {
        let mut accounts = self.accounts.borrow_mut();
        let Some(account) = accounts.get_mut(&stream) else {
            return;
        };
        let dropped = std::mem::take(&mut account.unwritten);
        if !account.sink_alive {
            accounts.remove(&stream);
        }
        drop(accounts);
        self.give_back(dropped);
    }

    /// The client reset `stream`. If its sink is gone the account is
    /// dropped now; otherwise h2 may still be handed data before it
    /// processes the reset, so the sink drops the account when it ends.
    pub fn reset_received(&self, stream: u32) {
        let mut accounts = self.accounts.borrow_mut();
        match accounts.get_mut(&stream) {
            Some(account) if account.sink_alive => account.reset_by_client = true,
            Some(_) => {
                let dropped = accounts
                    .remove(&stream)
                    .map_or(0, |account| account.unwritten);
                drop(accounts);
                self.give_back(dropped);
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
        if reset || account.reset_by_client || account.unwritten == 0 {
            let dropped = accounts
                .remove(&stream)
                .map_or(0, |account| account.unwritten);
            drop(accounts);
            self.give_back(dropped);
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let unwritten = self.unwritten.get() - bytes;
        self.unwritten.set(unwritten);
        if self.waited.get() && unwritten < self.limit {
            self.waited.set(false);
            self.room.notify(usize::MAX);
        }
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

    #[test]
    fn written_bytes_are_credited_per_stream() {
        let budget = SendBudget::new(100);
        budget.open(1);
        budget.open(3);
        budget.charge(1, 60);
        budget.charge(3, 50);
        assert_eq!(budget.unwritten(), 110);
        assert!(!budget.has_room());
        budget.credit(1, 30);
        assert_eq!(budget.unwritten(), 80);
        assert!(budget.has_room());
        // More than was charged (or for an unknown stream) is ignored.
        budget.credit(3, 500);
        budget.credit(9, 500);
        assert_eq!(budget.unwritten(), 30);
        assert_eq!(budget.peak(), 110);
    }

    #[test]
    fn a_waiter_wakes_when_the_account_falls_below_the_limit() {
        let budget = SendBudget::new(100);
        budget.open(1);
        budget.charge(1, 150);
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
    fn a_finished_stream_stays_accounted_until_written() {
        let budget = SendBudget::new(100);
        budget.open(5);
        budget.charge(5, 70);
        budget.close(5, false);
        assert_eq!(budget.unwritten(), 70, "still queued in h2");
        budget.credit(5, 70);
        assert_eq!(budget.unwritten(), 0);
        assert_eq!(budget.accounted_streams(), 0);
    }

    #[test]
    fn resets_drop_what_will_never_be_written() {
        let budget = SendBudget::new(100);
        // Reset by the client after its call ended.
        budget.open(1);
        budget.charge(1, 40);
        budget.close(1, false);
        budget.reset_received(1);
        assert_eq!(budget.unwritten(), 0);
        // Reset by the client while the call runs: the account stays
        // until the sink ends, whatever it charged meanwhile.
        budget.open(3);
        budget.charge(3, 40);
        budget.reset_received(3);
        budget.charge(3, 10);
        assert_eq!(budget.unwritten(), 50);
        budget.close(3, false);
        assert_eq!(budget.unwritten(), 0);
        // Reset by us.
        budget.open(7);
        budget.charge(7, 30);
        budget.reset_sent(7);
        assert_eq!(budget.unwritten(), 0);
        budget.close(7, true);
        assert_eq!(budget.accounted_streams(), 0);
        assert!(ready(budget.room()));
    }
}
