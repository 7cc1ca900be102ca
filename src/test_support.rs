//! What the crate's unit tests share: a monoio runtime to drive one async
//! test, and a seeded PRNG whose seed is printed so a failure can be
//! replayed.

use std::future::Future;

/// Runs `future` to completion on a fresh single-threaded monoio runtime
/// (the epoll driver, with timers).
pub fn run_on_monoio<F: Future>(future: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("build a monoio runtime")
        .block_on(future)
}

/// splitmix64: a tiny seeded PRNG.
pub struct Prng(u64);

impl Prng {
    /// A fixed seed, for tests that need the same sequence every run.
    pub fn seeded(seed: u64) -> Prng {
        Prng(seed)
    }

    /// Seeded from the environment variable `variable` if set, else from
    /// the clock; prints the seed and how to replay it.
    pub fn from_env(variable: &str, test: &str) -> Prng {
        let seed = std::env::var(variable)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("{test}: seed {seed} (replay with {variable}={seed})");
        Prng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        value ^ (value >> 31)
    }

    /// A value in `0..bound` (0 for a bound of 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
