//! Releasing open-loop requests at their due times, precisely and in
//! batches: one timer per worker thread.
//!
//! In an open loop a request's latency counts from its due time, so any
//! lateness of the generator is charged to the server. tokio's timer fires
//! on whole-millisecond ticks (its driver sleeps in `epoll_wait`, whose
//! timeout is in milliseconds, and rounds deadlines up): paced ranges that
//! take 65 µs measured p50 1.2 ms and p99 2.1 ms, almost all of it the
//! timer's.
//!
//! A `timerfd` fires at the nanosecond it is set for. One per *client* was
//! tried first and cost too much CPU: at 15k puts/s every request woke its
//! thread on its own and went out in its own write. So each thread has one
//! [`Pacer`]: clients queue their due times with it, and its driver task
//! sleeps until the earliest, then releases every request that is due. Releases are at least
//! [`MIN_SPACING`] apart, which bounds the wake-ups a thread spends on
//! pacing (at most 1 / `MIN_SPACING` per second) and lets requests that
//! fall due close together go out in one write, as they did under tokio's
//! tick. A request is never released before its due time.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustix::fd::OwnedFd;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// The least time between two releases of one thread's pacer: the most a
/// request can be held past its due time by batching (beyond the
/// kernel's wake-up latency), half of tokio's tick. Measured at 15k paced
/// puts/s on this 2-core machine, loadgen's CPU for a 5 s run was 1.4 s
/// with tokio's timer, 1.7 s at 500 µs and 2.0 s at 200 µs: finer
/// spacing takes CPU from the server it measures.
pub const MIN_SPACING: Duration = Duration::from_micros(500);

/// A thread's pacer; cloned into every client on the thread. Must be
/// created inside the thread's `LocalSet`, which runs its driver task.
#[derive(Clone)]
pub struct Pacer {
    inner: Rc<PacerInner>,
}

struct PacerInner {
    queue: Rc<DueQueue>,
    /// The driver task; aborted when the last clone of the pacer goes, so a
    /// finished run leaves no task behind.
    driver: JoinHandle<()>,
}

impl Drop for PacerInner {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Pacer {
    /// Starts the thread's driver task (on the current `LocalSet`).
    pub fn start() -> Self {
        let queue = Rc::new(DueQueue::default());
        let driver = tokio::task::spawn_local(drive(Rc::clone(&queue), Timer::new()));
        Self {
            inner: Rc::new(PacerInner { queue, driver }),
        }
    }

    /// Returns at `due` or, if batched, at most [`MIN_SPACING`] later;
    /// at once if `due` has passed.
    pub async fn wait_until(&self, due: Instant) {
        if due <= Instant::now() {
            return;
        }
        let released = self.inner.queue.push(due);
        // An error means the driver is gone (the run is being torn down):
        // nothing is left to wait for.
        let _ = released.await;
    }
}

/// The requests waiting on one thread, in due-time order.
///
/// A plain FIFO is in order because of how tickets are taken: the clients
/// of a thread take them one after another from one counter on one
/// single-threaded runtime and queue here before their next `await`, and
/// later tickets are never due earlier. (Were one out of order, it would
/// be released with the one ahead of it: late, never early.)
#[derive(Default)]
struct DueQueue {
    waiting: RefCell<VecDeque<(Instant, oneshot::Sender<()>)>>,
    /// Wakes the driver when the queue goes from empty to not; while it is
    /// not empty the driver is already asleep until the front's due time.
    became_non_empty: Notify,
    /// The driver's last release, for the spacing rule.
    last_release: Cell<Option<Instant>>,
}

impl DueQueue {
    fn push(&self, due: Instant) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        let mut waiting = self.waiting.borrow_mut();
        waiting.push_back((due, sender));
        if waiting.len() == 1 {
            self.became_non_empty.notify_one();
        }
        receiver
    }

    /// When the driver should next wake, or `None` if nothing waits.
    fn next_release(&self) -> Option<Instant> {
        let front_due = self.waiting.borrow().front()?.0;
        Some(match self.last_release.get() {
            Some(last) => front_due.max(last + MIN_SPACING),
            None => front_due,
        })
    }

    /// Releases everything due by `now`.
    fn release_due(&self, now: Instant) {
        self.last_release.set(Some(now));
        let mut waiting = self.waiting.borrow_mut();
        while waiting.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, sender)) = waiting.pop_front() {
                // A dropped receiver is a client that stopped waiting.
                let _ = sender.send(());
            }
        }
    }
}

/// The pacer's driver task: sleeps until the next release is due, then
/// releases; parks while nothing waits.
async fn drive(queue: Rc<DueQueue>, mut timer: Timer) {
    loop {
        let Some(release_at) = queue.next_release() else {
            queue.became_non_empty.notified().await;
            continue;
        };
        timer.sleep_until(release_at).await;
        queue.release_due(Instant::now());
    }
}

/// A one-shot `timerfd` registered with the thread's tokio reactor, reused
/// for every wait; `None` if it could not be created or registered, and
/// waits then fall back to tokio's millisecond timer rather than failing
/// the run.
struct Timer {
    timerfd: Option<AsyncFd<OwnedFd>>,
}

impl Timer {
    fn new() -> Self {
        let timerfd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(io::Error::from)
        .and_then(register);
        Self {
            timerfd: timerfd.ok(),
        }
    }

    /// Returns at `due` (at once if it has passed), never before.
    async fn sleep_until(&mut self, due: Instant) {
        let remaining = due.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return;
        }
        let Some(timerfd) = &self.timerfd else {
            tokio::time::sleep_until(due.into()).await;
            return;
        };
        if arm(timerfd, remaining).is_err() {
            tokio::time::sleep_until(due.into()).await;
            return;
        }
        loop {
            let Ok(mut guard) = timerfd.readable().await else {
                tokio::time::sleep_until(due.into()).await;
                return;
            };
            // Reading the expiration count drains the timer, so its
            // readiness is cleared either way; EAGAIN is a stale or
            // spurious wake-up: wait again.
            let mut expirations = [0u8; 8];
            let read = rustix::io::read(guard.get_inner(), &mut expirations);
            guard.clear_ready();
            match read {
                Ok(_) => return,
                Err(rustix::io::Errno::AGAIN) => {}
                Err(_) => {
                    tokio::time::sleep_until(due.into()).await;
                    return;
                }
            }
        }
    }
}

/// Registers the timer with the thread's reactor.
///
/// tokio deprecated the safe constructor because a generic `AsRawFd` may
/// not own its descriptor; an `OwnedFd` does, and the `AsyncFd` owns it in
/// turn, so the descriptor stays open and the same for the registration's
/// whole life, which is the condition its unsafe replacement states.
#[allow(deprecated)]
fn register(timerfd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(timerfd, Interest::READABLE)
}

/// Sets `timerfd` to expire once, `after` from now.
fn arm(timerfd: &AsyncFd<OwnedFd>, after: Duration) -> rustix::io::Result<()> {
    let value = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: after.as_secs().try_into().unwrap_or(i64::MAX),
            // A zero it_value would disarm the timer instead of firing it.
            tv_nsec: i64::from(after.subsec_nanos()).max(1),
        },
    };
    timerfd_settime(timerfd.get_ref(), TimerfdTimerFlags::empty(), &value).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_local<F: std::future::Future<Output = ()>>(future: F) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&runtime, future);
    }

    #[test]
    fn timer_never_returns_before_the_due_time() {
        run_local(async {
            let mut timer = Timer::new();
            assert!(timer.timerfd.is_some(), "timerfd available on Linux");
            for micros in [1u64, 50, 300, 2_000] {
                let due = Instant::now() + Duration::from_micros(micros);
                timer.sleep_until(due).await;
                assert!(Instant::now() >= due, "woke before {micros} µs");
            }
            // A due time in the past returns at once and leaves the timer
            // usable.
            timer.sleep_until(Instant::now()).await;
            let due = Instant::now() + Duration::from_micros(200);
            timer.sleep_until(due).await;
            assert!(Instant::now() >= due);
        });
    }

    #[test]
    fn every_waiter_is_released_at_or_after_its_due_time() {
        run_local(async {
            let pacer = Pacer::start();
            let start = Instant::now();
            let waiters: Vec<_> = (0..50u64)
                .map(|index| {
                    let pacer = pacer.clone();
                    let due = start + Duration::from_micros(100 * index);
                    tokio::task::spawn_local(async move {
                        pacer.wait_until(due).await;
                        (due, Instant::now())
                    })
                })
                .collect();
            for waiter in waiters {
                let (due, released) = waiter.await.expect("waiter");
                assert!(released >= due, "released {:?} early", due - released);
            }
        });
    }

    #[test]
    fn releases_are_spaced_so_close_due_times_share_one_wake_up() {
        let queue = DueQueue::default();
        let start = Instant::now();
        let mut receivers: Vec<_> = (0..4u64)
            .map(|index| queue.push(start + Duration::from_micros(10 * index)))
            .collect();
        assert_eq!(queue.next_release(), Some(start));
        queue.release_due(start);
        assert!(receivers[0].try_recv().is_ok());
        assert!(receivers[1].try_recv().is_err(), "not due yet");
        // The next three are due within 30 µs, but the next release waits
        // out the spacing and then takes all three at once.
        assert_eq!(queue.next_release(), Some(start + MIN_SPACING));
        queue.release_due(start + MIN_SPACING);
        for receiver in &mut receivers[1..] {
            assert!(receiver.try_recv().is_ok());
        }
        assert_eq!(queue.next_release(), None);
    }

    #[test]
    fn a_past_due_time_does_not_queue() {
        run_local(async {
            let pacer = Pacer::start();
            let now = Instant::now();
            pacer.wait_until(now).await;
            if let Some(past) = now.checked_sub(Duration::from_millis(1)) {
                pacer.wait_until(past).await;
            }
            assert!(pacer.inner.queue.waiting.borrow().is_empty());
            assert_eq!(pacer.inner.queue.next_release(), None);
        });
    }
}
