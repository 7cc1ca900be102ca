//! `watch` and `watch-latency`: watchers on many streams, then puts, and
//! every event's delivery time measured.
//!
//! Each put's value starts with the time it was due (8 bytes, nanoseconds
//! since the run's epoch, little-endian), so a watcher can compute
//! put-to-event latency from the event alone, without matching revisions
//! to puts across threads. All threads share one monotonic epoch.
//!
//! Sections reported: `watch creation` (create round trips), `put` (the
//! puts themselves) and `events` (put-to-event latency of every event
//! every watcher received; requests/sec there is events per second, the
//! watch fan-out throughput). Events that never arrive are counted as
//! failures of the `events` section.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use metastore::grpc::{Code, Status};
use metastore::proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_request,
};
use metastore::store::key_range::prefix_end;

use super::RunError;
use super::kv::put;
use crate::cli::{WatchArgs, WatchLatencyArgs};
use crate::grpc_client::{CallStream, Channel};
use crate::keys::{KeyGenerator, Rng, random_value};
use crate::pacing::{Budget, Schedule, Ticket};
use crate::progress::Progress;
use crate::recorder::Recorder;
use crate::report::Section;
use crate::runner::{
    Client, Completion, ThreadPlan, Topology, connect_thread_channels, drive_clients,
    local_clients, run_threads,
};

pub const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";
/// Every benchmark key starts with this, so `--watch-prefix` watchers see
/// exactly the benchmark's puts.
const KEY_PREFIX: &[u8] = b"/watch/";
/// A watcher that receives nothing for this long while it still expects
/// events gives up; the missing events are reported as failures.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of the send time at the start of each value.
const STAMP_LEN: usize = 8;

/// What to run, from either subcommand's flags.
#[derive(Debug, Clone)]
struct WatchBenchmark {
    streams: usize,
    watchers_per_stream: usize,
    watched_keys: u64,
    watch_prefix: bool,
    put_total: u64,
    put_rate: Option<f64>,
    key_size: usize,
    val_size: usize,
    prev_kv: bool,
}

pub fn run_watch(
    topology: &Topology,
    args: &WatchArgs,
    progress: &Progress,
) -> Result<Vec<Section>, RunError> {
    run(
        topology,
        WatchBenchmark {
            streams: args.streams,
            watchers_per_stream: args.watch_per_stream,
            watched_keys: args.watched_key_total,
            watch_prefix: args.watch_prefix,
            put_total: args.put_total,
            put_rate: (args.put_rate > 0.0).then_some(args.put_rate),
            key_size: args.key_size,
            val_size: args.val_size,
            prev_kv: false,
        },
        progress,
    )
}

pub fn run_watch_latency(
    topology: &Topology,
    args: &WatchLatencyArgs,
    progress: &Progress,
) -> Result<Vec<Section>, RunError> {
    run(
        topology,
        WatchBenchmark {
            streams: args.streams,
            watchers_per_stream: args.watchers_per_stream,
            watched_keys: 1,
            watch_prefix: false,
            put_total: args.put_total,
            put_rate: (args.put_rate > 0.0).then_some(args.put_rate),
            key_size: args.key_size,
            val_size: args.val_size,
            prev_kv: args.prevkv,
        },
        progress,
    )
}

fn run(
    topology: &Topology,
    benchmark: WatchBenchmark,
    progress: &Progress,
) -> Result<Vec<Section>, RunError> {
    if benchmark.val_size < STAMP_LEN {
        return Err(RunError::Usage(format!(
            "--val-size must be at least {STAMP_LEN}: each value carries its put's send time"
        )));
    }
    if benchmark.streams == 0 || benchmark.watchers_per_stream == 0 {
        return Err(RunError::Usage(
            "--streams and watchers per stream must be at least 1".into(),
        ));
    }
    let keys = KeyGenerator::new(KEY_PREFIX, benchmark.key_size, benchmark.watched_keys, true)
        .map_err(RunError::Usage)?;
    let padding = random_value(benchmark.val_size - STAMP_LEN, &mut Rng::new(0x0077_a7c4));
    let plan = WatchPlan {
        topology: topology.clone(),
        benchmark: benchmark.clone(),
        keys: Arc::new(keys),
        padding,
        epoch: Instant::now(),
    };
    // The progress bar follows the puts; the events trail them closely.
    let budget = Budget::Total(benchmark.put_total);
    let (outputs, elapsed) = run_threads(topology, budget, benchmark.put_rate, progress, plan)?;
    let mut total = ThreadOutput::default();
    for output in &outputs {
        total.merge(output);
    }
    let watchers = (benchmark.streams * benchmark.watchers_per_stream) as f64;
    let expected_events: u64 = (0..benchmark.streams)
        .map(|stream| benchmark.expected_events_on_stream(stream))
        .sum();
    Ok(vec![
        Section::new("watch creation", &total.creation, total.creation_elapsed)
            .with_extra("watchers", watchers),
        Section::new("put", &total.puts, total.puts_elapsed.unwrap_or(elapsed)),
        Section::new(
            "events",
            &total.events,
            total.events_elapsed.unwrap_or(elapsed),
        )
        .with_extra("watchers", watchers)
        .with_extra("events expected", expected_events as f64),
    ])
}

impl WatchBenchmark {
    /// The key or range watcher `index` (over all streams) watches.
    fn watch_range(&self, keys: &KeyGenerator, index: usize) -> (Bytes, Bytes) {
        if self.watch_prefix {
            (keys.prefix().clone(), prefix_end(keys.prefix()))
        } else {
            (
                keys.key_number(index as u64 % self.watched_keys),
                Bytes::new(),
            )
        }
    }

    /// Events watcher `index` should receive: put `i` goes to key number
    /// `i % watched_keys`.
    fn expected_events(&self, index: usize) -> u64 {
        if self.watch_prefix {
            return self.put_total;
        }
        let key = index as u64 % self.watched_keys;
        self.put_total / self.watched_keys + u64::from(key < self.put_total % self.watched_keys)
    }

    fn expected_events_on_stream(&self, stream: usize) -> u64 {
        (0..self.watchers_per_stream)
            .map(|watcher| self.expected_events(stream * self.watchers_per_stream + watcher))
            .sum()
    }
}

struct WatchPlan {
    topology: Topology,
    benchmark: WatchBenchmark,
    keys: Arc<KeyGenerator>,
    /// The value after the time stamp; the same for every put.
    padding: Bytes,
    epoch: Instant,
}

/// A thread's streams (with the events each must deliver) and put clients.
struct Prepared {
    streams: Vec<(CallStream, u64)>,
    putters: Vec<(Channel, StampedPutClient)>,
    creation: Recorder,
    creation_elapsed: Duration,
}

#[derive(Default)]
struct ThreadOutput {
    creation: Recorder,
    creation_elapsed: Duration,
    puts: Recorder,
    /// From the start of the puts to this thread's last put completion.
    puts_elapsed: Option<Duration>,
    events: Recorder,
    /// From the start of the puts to this thread's last event.
    events_elapsed: Option<Duration>,
}

impl ThreadOutput {
    fn merge(&mut self, other: &ThreadOutput) {
        self.creation.merge(&other.creation);
        self.creation_elapsed = self.creation_elapsed.max(other.creation_elapsed);
        self.puts.merge(&other.puts);
        self.puts_elapsed = self.puts_elapsed.max(other.puts_elapsed);
        self.events.merge(&other.events);
        self.events_elapsed = self.events_elapsed.max(other.events_elapsed);
    }
}

impl ThreadPlan for WatchPlan {
    type Prepared = Prepared;
    type Output = ThreadOutput;

    async fn prepare(&self, thread_index: usize) -> Result<Prepared, Status> {
        let topology = &self.topology;
        let channels = connect_thread_channels(thread_index, topology).await?;
        let mut creation = Recorder::new();
        let started = Instant::now();
        let mut streams = Vec::new();
        for (stream_index, channel) in local_clients(topology, &channels, self.benchmark.streams) {
            let mut stream = channel.open(WATCH_PATH).await?;
            for watcher in 0..self.benchmark.watchers_per_stream {
                let index = stream_index * self.benchmark.watchers_per_stream + watcher;
                let (key, range_end) = self.benchmark.watch_range(&self.keys, index);
                let sent = Instant::now();
                create_watch(&mut stream, key, range_end, self.benchmark.prev_kv).await?;
                creation.record_success(sent.elapsed());
            }
            streams.push((
                stream,
                self.benchmark.expected_events_on_stream(stream_index),
            ));
        }
        let creation_elapsed = started.elapsed();
        let putters = local_clients(topology, &channels, topology.clients)
            .map(|(_, channel)| {
                let putter = StampedPutClient {
                    keys: Arc::clone(&self.keys),
                    padding: self.padding.clone(),
                    epoch: self.epoch,
                };
                (channel.clone(), putter)
            })
            .collect();
        Ok(Prepared {
            streams,
            putters,
            creation,
            creation_elapsed,
        })
    }

    async fn run(&self, prepared: Prepared, schedule: Arc<Schedule>) -> ThreadOutput {
        let epoch = self.epoch;
        let readers: Vec<_> = prepared
            .streams
            .into_iter()
            .map(|(stream, expected)| {
                tokio::task::spawn_local(read_events(stream, expected, epoch))
            })
            .collect();
        let put_recorders = drive_clients(prepared.putters, &schedule).await;
        let mut output = ThreadOutput {
            creation: prepared.creation,
            creation_elapsed: prepared.creation_elapsed,
            ..ThreadOutput::default()
        };
        for recorder in &put_recorders {
            output.puts.merge(recorder);
        }
        if output.puts.successes() + output.puts.failures() > 0 {
            output.puts_elapsed = Some(schedule.started().elapsed());
        }
        for reader in readers {
            if let Ok((events, last_event)) = reader.await {
                output.events.merge(&events);
                let elapsed =
                    last_event.map(|last| last.saturating_duration_since(schedule.started()));
                output.events_elapsed = output.events_elapsed.max(elapsed);
            }
        }
        output
    }
}

/// Creates one watch and waits for its `created` response.
async fn create_watch(
    stream: &mut CallStream,
    key: Bytes,
    range_end: Bytes,
    prev_kv: bool,
) -> Result<(), Status> {
    let request = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key,
                range_end,
                prev_kv,
                ..Default::default()
            },
        )),
    };
    stream.send(&request, false).await?;
    let response: WatchResponse = stream
        .receive()
        .await?
        .ok_or_else(|| Status::unavailable("watch stream ended during creation"))?;
    if !response.created || response.canceled {
        return Err(Status::new(
            Code::FailedPrecondition,
            format!("watch not created: {}", response.cancel_reason),
        ));
    }
    Ok(())
}

/// Receives until the stream's watchers got `expected` events, recording
/// each event's put-to-event latency. Returns the recorder and the time of
/// the last event.
async fn read_events(
    mut stream: CallStream,
    expected: u64,
    epoch: Instant,
) -> (Recorder, Option<Instant>) {
    let mut recorder = Recorder::new();
    let mut received = 0u64;
    let mut last_event = None;
    while received < expected {
        let ended =
            match tokio::time::timeout(IDLE_TIMEOUT, stream.receive::<WatchResponse>()).await {
                Err(_) => Some(Status::deadline_exceeded(format!(
                    "events did not arrive within {IDLE_TIMEOUT:?} of the previous one"
                ))),
                Ok(Err(status)) => Some(status),
                Ok(Ok(None)) => Some(Status::unavailable("watch stream ended")),
                Ok(Ok(Some(response))) if response.canceled => Some(Status::new(
                    Code::Aborted,
                    format!("watch canceled: {}", response.cancel_reason),
                )),
                Ok(Ok(Some(response))) => {
                    let now = Instant::now();
                    for event in &response.events {
                        let latency = event
                            .kv
                            .as_ref()
                            .and_then(|kv| stamp_of(&kv.value))
                            .map(|sent| now.saturating_duration_since(epoch + sent));
                        match latency {
                            Some(latency) => recorder.record_success(latency),
                            None => recorder
                                .record_error(&Status::internal("event without a send time")),
                        }
                    }
                    received += response.events.len() as u64;
                    if !response.events.is_empty() {
                        last_event = Some(now);
                    }
                    None
                }
            };
        if let Some(status) = ended {
            recorder.record_errors(&status, expected.saturating_sub(received));
            break;
        }
    }
    (recorder, last_event)
}

/// The send time at the start of `value`, as an offset from the epoch.
fn stamp_of(value: &[u8]) -> Option<Duration> {
    let stamp: [u8; STAMP_LEN] = value.get(..STAMP_LEN)?.try_into().ok()?;
    Some(Duration::from_nanos(u64::from_le_bytes(stamp)))
}

fn stamped_value(sent: Duration, padding: &[u8]) -> Bytes {
    let mut value = BytesMut::with_capacity(STAMP_LEN + padding.len());
    value.put_u64_le(u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX));
    value.put_slice(padding);
    value.freeze()
}

/// Puts whose value carries the time each was due.
struct StampedPutClient {
    keys: Arc<KeyGenerator>,
    padding: Bytes,
    epoch: Instant,
}

impl Client for StampedPutClient {
    async fn execute(&mut self, channel: &Channel, ticket: Ticket) -> Completion {
        let sent = ticket.intended_start.saturating_duration_since(self.epoch);
        let key = self.keys.sequential_key(ticket.sequence);
        put(channel, key, stamped_value(sent, &self.padding))
            .await
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn benchmark(watched_keys: u64, watch_prefix: bool, put_total: u64) -> WatchBenchmark {
        WatchBenchmark {
            streams: 2,
            watchers_per_stream: 3,
            watched_keys,
            watch_prefix,
            put_total,
            put_rate: None,
            key_size: 8,
            val_size: 16,
            prev_kv: false,
        }
    }

    #[test]
    fn expected_events_add_up_to_the_puts_each_watched_key_gets() {
        // 6 watchers over 4 keys: keys 0 and 1 have two watchers each.
        let plan = benchmark(4, false, 10);
        // Puts 0..10 over 4 keys: key 0 and 1 get 3, keys 2 and 3 get 2.
        let per_watcher: Vec<u64> = (0..6).map(|index| plan.expected_events(index)).collect();
        assert_eq!(per_watcher, vec![3, 3, 2, 2, 3, 3]);
        assert_eq!(
            plan.expected_events_on_stream(0) + plan.expected_events_on_stream(1),
            16
        );
    }

    #[test]
    fn prefix_watchers_see_every_put() {
        let plan = benchmark(4, true, 10);
        assert_eq!(plan.expected_events_on_stream(0), 30);
        let keys = KeyGenerator::new(KEY_PREFIX, 8, 4, true).unwrap();
        let (key, end) = plan.watch_range(&keys, 5);
        assert_eq!(&key[..], KEY_PREFIX);
        assert_eq!(&end[..], b"/watch0");
    }

    #[test]
    fn stamps_round_trip() {
        let sent = Duration::from_nanos(123_456_789);
        let value = stamped_value(sent, b"padding!");
        assert_eq!(value.len(), 16);
        assert_eq!(stamp_of(&value), Some(sent));
        assert_eq!(stamp_of(b"short"), None);
    }
}
