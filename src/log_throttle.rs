//! Warnings that can repeat at the rate of an attack (refused connections,
//! accept failures) are logged at most once per interval, with how many
//! were left out since the last one: the log says what happens without
//! becoming the next thing that fills a disk.

use std::time::{Duration, Instant};

/// One kind of warning's throttle. Owned by the one task that logs it.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_logged: None,
            suppressed: 0,
        }
    }

    /// Calls `log` with the number of events left out since the last call
    /// that logged, if `interval` has passed since then; otherwise counts
    /// this event as left out.
    pub fn log(&mut self, now: Instant, log: impl FnOnce(u64)) {
        let due = self
            .last_logged
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            log(self.suppressed);
            self.suppressed = 0;
            self.last_logged = Some(now);
        } else {
            self.suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let start = Instant::now();
        let mut throttle = LogThrottle::new(Duration::from_secs(10));
        let mut logged = Vec::new();
        for second in 0..25u64 {
            throttle.log(start + Duration::from_secs(second), |suppressed| {
                logged.push((second, suppressed))
            });
        }
        assert_eq!(logged, vec![(0, 0), (10, 9), (20, 9)]);
    }
}
