//! Rate limits on calls: one node-wide token bucket and one per method,
//! shared by every core.
//!
//! Each bucket is the generic cell rate algorithm (GCRA), which is a token
//! bucket kept as a single number: the "theoretical arrival time" (TAT) of
//! the next call if calls came exactly at the rate. A call at `now` is
//! admitted when `max(TAT, now) - now <= (burst - 1) * interval`, and then
//! TAT moves to `max(TAT, now) + interval`. One atomic compare-and-swap per
//! admitted call, and nothing at all when no limit is set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::{MethodRateLimit, RateLimit};
use crate::metrics::methods::{METHODS, MethodId};

/// A token bucket of `burst` calls refilled at `requests_per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    /// Nanoseconds between two calls at the sustained rate.
    interval_nanos: u64,
    /// How far ahead of now TAT may be and still admit a call.
    tolerance_nanos: u64,
    /// The next call's theoretical arrival, in nanoseconds since `epoch`.
    theoretical_arrival: AtomicU64,
    epoch: Instant,
}

impl TokenBucket {
    pub fn new(limit: RateLimit, epoch: Instant) -> Self {
        let interval_nanos = 1_000_000_000 / u64::from(limit.requests_per_second.max(1));
        Self {
            interval_nanos,
            tolerance_nanos: interval_nanos * u64::from(limit.burst.max(1) - 1),
            theoretical_arrival: AtomicU64::new(0),
            epoch,
        }
    }

    /// Takes a token if one is there.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let mut arrival = self.theoretical_arrival.load(Ordering::Relaxed);
        loop {
            let start = arrival.max(now);
            if start - now > self.tolerance_nanos {
                return false;
            }
            match self.theoretical_arrival.compare_exchange_weak(
                arrival,
                start + self.interval_nanos,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => arrival = current,
            }
        }
    }
}

/// Every limit a call passes through.
#[derive(Debug, Default)]
pub struct RateLimiter {
    global: Option<TokenBucket>,
    /// Indexed by [`MethodId`].
    per_method: Vec<Option<TokenBucket>>,
}

/// A `--method-rate-limits` entry that names no method we serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid value '{0}' for '--method-rate-limits': no such method (use e.g. Put or etcdserverpb.KV/Put)"
)]
pub struct UnknownMethod(pub String);

impl RateLimiter {
    /// A bare method name (`Put`) limits every method of that name; a full
    /// one (`etcdserverpb.KV/Put`) exactly that one.
    pub fn new(
        global: Option<RateLimit>,
        methods: &[MethodRateLimit],
    ) -> Result<Self, UnknownMethod> {
        let epoch = Instant::now();
        let mut per_method: Vec<Option<TokenBucket>> = METHODS.iter().map(|_| None).collect();
        for limit in methods {
            let mut matched = false;
            for (index, known) in METHODS.iter().enumerate() {
                let full = format!("{}/{}", known.service, known.method);
                if limit.method == known.method || limit.method == full {
                    let rate = RateLimit {
                        requests_per_second: limit.requests_per_second,
                        burst: limit.requests_per_second,
                    };
                    per_method[index] = Some(TokenBucket::new(rate, epoch));
                    matched = true;
                }
            }
            if !matched {
                return Err(UnknownMethod(limit.method.clone()));
            }
        }
        Ok(Self {
            global: global.map(|limit| TokenBucket::new(limit, epoch)),
            per_method,
        })
    }

    /// Whether a call to `method` (`None`: not a method we know) may start
    /// now. The method's own limit is checked first, so a call it refuses
    /// does not use up the node-wide budget.
    pub fn admit(&self, method: Option<MethodId>, now: Instant) -> bool {
        // `get`: a limiter built without the method table (`Default`: no
        // limits) has no entry for any method, and admits every call.
        let method_bucket = method.and_then(|id| {
            self.per_method
                .get(usize::from(id.0))
                .and_then(Option::as_ref)
        });
        if let Some(bucket) = method_bucket
            && !bucket.try_acquire(now)
        {
            return false;
        }
        self.global
            .as_ref()
            .is_none_or(|bucket| bucket.try_acquire(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::methods::find_method;
    use std::time::Duration;

    /// Found by the `grpc_connection` fuzz target, whose server uses a
    /// default (unlimited) limiter: a known method indexed past its empty
    /// table and panicked the call.
    #[test]
    fn a_limiter_without_limits_admits_every_method() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        for name in ["Put", "Range"] {
            let method = find_method("etcdserverpb.KV", name);
            assert!(method.is_some(), "{name} is a known method");
            assert!(limiter.admit(method, now));
        }
        assert!(limiter.admit(None, now));
    }

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let epoch = Instant::now();
        let bucket = TokenBucket::new(
            RateLimit {
                requests_per_second: 10,
                burst: 3,
            },
            epoch,
        );
        let admitted = (0..10).filter(|_| bucket.try_acquire(epoch)).count();
        assert_eq!(admitted, 3, "a burst of 3 at one instant");
        // 100 ms later exactly one more token has arrived.
        let later = epoch + Duration::from_millis(100);
        assert!(bucket.try_acquire(later));
        assert!(!bucket.try_acquire(later));
        // Over one idle second the bucket refills to its burst, no more.
        let much_later = epoch + Duration::from_secs(2);
        let admitted = (0..10).filter(|_| bucket.try_acquire(much_later)).count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn method_limits_apply_by_name_and_unknown_names_are_refused() {
        let limiter = RateLimiter::new(
            None,
            &[MethodRateLimit {
                method: "etcdserverpb.KV/Put".to_owned(),
                requests_per_second: 1,
            }],
        )
        .expect("known method");
        let now = Instant::now();
        let put = find_method("etcdserverpb.KV", "Put");
        let range = find_method("etcdserverpb.KV", "Range");
        assert!(limiter.admit(put, now));
        assert!(!limiter.admit(put, now));
        assert!((0..100).all(|_| limiter.admit(range, now)));
        assert!(limiter.admit(None, now));
        assert_eq!(
            RateLimiter::new(
                None,
                &[MethodRateLimit {
                    method: "Teleport".to_owned(),
                    requests_per_second: 1
                }]
            )
            .unwrap_err(),
            UnknownMethod("Teleport".to_owned())
        );
    }

    #[test]
    fn the_global_limit_covers_every_call() {
        let limiter = RateLimiter::new(
            Some(RateLimit {
                requests_per_second: 5,
                burst: 5,
            }),
            &[],
        )
        .expect("valid");
        let now = Instant::now();
        let admitted = (0..20).filter(|_| limiter.admit(None, now)).count();
        assert_eq!(admitted, 5);
    }
}
