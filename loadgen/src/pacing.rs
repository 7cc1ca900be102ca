//! How many requests to send and when: the run's budget and schedule.
//!
//! Every client of every thread takes its next request from one shared
//! [`Schedule`] (an atomic ticket counter), so `--total` is exact however
//! many clients there are, and with `--rate` the run is open loop: request
//! `n` is *due* at `start + n / rate` whether or not earlier requests have
//! finished. Latency is then measured from the due time, not from when a
//! busy client got round to sending it, so queueing caused by a slow server
//! is counted (no coordinated omission; see Gil Tene's "How NOT to measure
//! latency"). Without `--rate` the run is closed loop: each client sends
//! its next request when the previous one completes, and latency runs from
//! the actual send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When the run stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Exactly this many requests.
    Total(u64),
    /// Requests are issued until this much time has passed since the start.
    Duration(Duration),
}

/// One request handed to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// 0, 1, 2, ... across the whole run; workloads derive sequential keys
    /// from it.
    pub sequence: u64,
    /// When the request should start: its due time with `--rate`, or the
    /// moment the ticket was taken without. Latency is measured from here.
    pub intended_start: Instant,
}

/// The shared schedule; see the module comment.
pub struct Schedule {
    budget: Budget,
    /// Requests per second; `None` for closed loop.
    rate: Option<f64>,
    started: Instant,
    /// Next ticket number. Relaxed ordering is enough: it only has to hand
    /// out each number once.
    next: AtomicU64,
}

impl Schedule {
    pub fn new(budget: Budget, rate: Option<f64>, started: Instant) -> Self {
        Self {
            budget,
            rate: rate.filter(|rate| *rate > 0.0),
            started,
            next: AtomicU64::new(0),
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Tickets handed out so far (for progress reporting).
    pub fn issued(&self) -> u64 {
        let next = self.next.load(Ordering::Relaxed);
        match self.budget {
            Budget::Total(total) => next.min(total),
            Budget::Duration(_) => next,
        }
    }

    /// The next ticket, or `None` when the budget is spent. `now` is passed
    /// in so tests can drive time.
    pub fn take(&self, now: Instant) -> Option<Ticket> {
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        let intended_start = match self.rate {
            Some(rate) => self.started + Duration::from_secs_f64(sequence as f64 / rate),
            None => now,
        };
        let within = match self.budget {
            Budget::Total(total) => sequence < total,
            // Open loop: a request due after the end is not part of the run,
            // even if a client is free earlier. Closed loop: stop taking
            // work once the time is up.
            Budget::Duration(duration) => intended_start < self.started + duration,
        };
        within.then_some(Ticket {
            sequence,
            intended_start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_hands_out_exactly_that_many() {
        let start = Instant::now();
        let schedule = Schedule::new(Budget::Total(3), None, start);
        let taken: Vec<u64> =
            std::iter::from_fn(|| schedule.take(start).map(|t| t.sequence)).collect();
        assert_eq!(taken, vec![0, 1, 2]);
        assert!(schedule.take(start).is_none());
        assert_eq!(schedule.issued(), 3);
    }

    #[test]
    fn rate_spaces_due_times_regardless_of_when_taken() {
        let start = Instant::now();
        let schedule = Schedule::new(Budget::Total(4), Some(100.0), start);
        // Taken late (the client was busy): the due time does not move.
        let late = start + Duration::from_secs(1);
        let due: Vec<Duration> = std::iter::from_fn(|| schedule.take(late))
            .map(|ticket| ticket.intended_start - start)
            .collect();
        assert_eq!(
            due,
            vec![
                Duration::ZERO,
                Duration::from_millis(10),
                Duration::from_millis(20),
                Duration::from_millis(30)
            ]
        );
    }

    #[test]
    fn duration_budget_with_rate_stops_at_the_last_due_time() {
        let start = Instant::now();
        let schedule = Schedule::new(Budget::Duration(Duration::from_secs(1)), Some(10.0), start);
        let count = std::iter::from_fn(|| schedule.take(start)).count();
        assert_eq!(count, 10);
    }

    #[test]
    fn duration_budget_closed_loop_stops_when_time_is_up() {
        let start = Instant::now();
        let schedule = Schedule::new(Budget::Duration(Duration::from_secs(1)), None, start);
        assert!(schedule.take(start + Duration::from_millis(999)).is_some());
        assert!(schedule.take(start + Duration::from_secs(1)).is_none());
    }
}
