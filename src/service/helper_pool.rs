//! A few threads for request work too heavy for a core's executor (today:
//! decoding a large txn and etcd's checks on it). A core that ran it inline would
//! stall every connection and shard worker on that core meanwhile.
//!
//! Node-wide and bounded: at most `queue` jobs wait, so a flood of heavy
//! requests waits for room (each caller's own call waits, asynchronously)
//! instead of growing a queue or spawning threads. The threads run at a
//! lower CPU priority than the pinned executors, so under load the heavy
//! request waits rather than the light ones.

use thiserror::Error;

type Job = Box<dyn FnOnce() + Send>;

/// Nice value of the helper threads: below the executors (0), above the
/// snapshot threads (19), so a heavy request still makes progress while
/// the cores are busy.
const HELPER_NICE: i32 = 10;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HelperError {
    #[error("the helper threads have stopped")]
    Stopped,
    #[error("the helper job panicked")]
    Panicked,
}

pub struct HelperPool {
    jobs: flume::Sender<Job>,
}

impl HelperPool {
    /// Starts `threads` helper threads sharing a queue of `queue` jobs.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, receiver) = flume::bounded::<Job>(queue);
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("metastore-helper-{index}"))
                .spawn(move || {
                    if let Err(error) = rustix::process::setpriority_process(None, HELPER_NICE) {
                        tracing::debug!(%error, "cannot lower a helper thread's priority");
                    }
                    // A job that panics drops its answer channel; the
                    // caller sees `Panicked` and the thread goes on.
                    while let Ok(job) = receiver.recv() {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on a helper thread; waits (without blocking the
    /// executor) for room in the queue and for the result.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HelperError> {
        let (answer, result) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(work());
        });
        self.jobs
            .send_async(job)
            .await
            .map_err(|_| HelperError::Stopped)?;
        result.await.map_err(|_| HelperError::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_work_off_the_calling_thread_and_survives_a_panic() {
        let pool = HelperPool::start(1, 2).expect("start");
        let caller = std::thread::current().id();
        let ran_on = block_on(pool.run(|| std::thread::current().id()));
        assert_ne!(ran_on, Ok(caller));
        let panicked = block_on(pool.run(|| -> u32 { panic!("job panics") }));
        assert_eq!(panicked, Err(HelperError::Panicked));
        assert_eq!(block_on(pool.run(|| 7)), Ok(7));
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime")
            .block_on(future)
    }
}
