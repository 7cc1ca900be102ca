//! Issue 18's slow-reader attack on watch, as a measurement driver.
//!
//! Against a running server (MetaStore or etcd) whose process id is given:
//! opens `--connections` raw HTTP/2 connections that advertise the largest
//! windows HTTP/2 allows, each with `--streams` Watch streams of
//! `--watches` watches on one prefix, then stops reading them. A writer
//! puts `--value-bytes` values under the prefix at `--rate` per second for
//! `--seconds`, while one well-behaved watcher on its own connection reads
//! everything. The server's RSS is sampled every 100 ms.
//!
//! Afterwards every stalled connection reads again, and each watch must
//! have received every put in order without gaps (or been canceled with
//! `compact_revision`, etcd's answer when its history is gone).
//!
//! Prints one `key=value` line (RSS idle/peak/end in MiB, server CPU
//! seconds, delivery checks). `scripts/abuse/watch-flow.sh` runs it against
//! the old and the new binary side by side.
//!
//! ```text
//! cargo run --release --example abuse_slow_watchers -- \
//!     --endpoint 127.0.0.1:2379 --pid $(pgrep -n metastore)
//! ```

#[path = "../tests/common/raw_client.rs"]
mod raw_client;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use metastore::proto::etcdserverpb::{PutRequest, PutResponse};
use raw_client::{Connection, MAX_WINDOW, WatchCall, cpu_seconds, rss_bytes};

#[derive(Parser, Debug)]
struct Arguments {
    /// The server's client address.
    #[arg(long)]
    endpoint: SocketAddr,
    /// The server's process id (RSS and CPU are read from /proc).
    #[arg(long)]
    pid: u32,
    /// Connections that stop reading.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Watch streams per stalled connection.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Watches per stream.
    #[arg(long, default_value_t = 1)]
    watches: usize,
    /// Puts per second while the readers are stalled.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// How long the write load runs.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Size of each put's value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Stop after the load (skip resuming the stalled readers).
    #[arg(long)]
    no_resume: bool,
}

const PREFIX: &[u8] = b"/abuse/slow-watchers/";
const PREFIX_END: &[u8] = b"/abuse/slow-watchers0";

fn main() {
    let arguments = Arguments::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(arguments)) {
        Ok(line) => println!("{line}"),
        Err(error) => {
            eprintln!("abuse_slow_watchers: {error}");
            std::process::exit(1);
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

async fn run(arguments: Arguments) -> Result<String, String> {
    let pid = arguments.pid;
    let rss = move || rss_bytes(pid).ok_or_else(|| format!("no process {pid}"));
    let writer = Connection::connect(arguments.endpoint, 1 << 20).await?;
    // One put so the server has touched its write path before "idle".
    put(&writer, 0, arguments.value_bytes).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss()?;
    let start_revision = put(&writer, 1, arguments.value_bytes).await? + 1;

    let well_behaved = Connection::connect(arguments.endpoint, 1 << 20).await?;
    let mut reader = WatchCall::open(&well_behaved, 1, PREFIX, PREFIX_END, start_revision).await?;

    let mut stalled = Vec::new();
    for _ in 0..arguments.connections {
        let connection = Connection::connect(arguments.endpoint, MAX_WINDOW).await?;
        let mut calls = Vec::new();
        for _ in 0..arguments.streams {
            calls.push(
                WatchCall::open(
                    &connection,
                    arguments.watches,
                    PREFIX,
                    PREFIX_END,
                    start_revision,
                )
                .await?,
            );
        }
        connection.gate.close();
        stalled.push((connection, calls));
    }
    let watchers_rss = rss()?;

    // The well-behaved watcher reads all along.
    let expected_total = arguments.rate * arguments.seconds;
    let reading = tokio::spawn(async move {
        let mut revisions = Vec::new();
        while (revisions.len() as u64) < expected_total {
            match tokio::time::timeout(Duration::from_secs(60), reader.next()).await {
                Ok(Ok(Some(response))) => revisions.extend(
                    response
                        .events
                        .iter()
                        .filter_map(|event| event.kv.as_ref().map(|kv| kv.mod_revision)),
                ),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            }
        }
        revisions
    });

    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let peak = Arc::new(Mutex::new(watchers_rss));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(now) = rss_bytes(pid) else { return };
                let mut peak = peak.lock().unwrap();
                *peak = (*peak).max(now);
            }
        })
    };
    let written = write_load(&arguments, &writer).await?;
    let cpu_load = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end_rss = rss()?;
    sampling.abort();
    let peak_rss = *peak.lock().unwrap();

    let mut expected = written.clone();
    expected.sort_unstable();
    let seen = tokio::time::timeout(Duration::from_secs(120), reading)
        .await
        .map_err(|_| "the well-behaved watcher did not finish".to_owned())?
        .map_err(|error| error.to_string())?;
    let well_behaved_ok = seen == expected;

    let mut line = format!(
        "idle_rss_mib={:.1} watchers_rss_mib={:.1} peak_rss_mib={:.1} end_rss_mib={:.1} \
         cpu_seconds={:.2} puts={} well_behaved_in_order={}",
        idle_rss as f64 / MIB,
        watchers_rss as f64 / MIB,
        peak_rss as f64 / MIB,
        end_rss as f64 / MIB,
        cpu_load,
        written.len(),
        well_behaved_ok,
    );
    if !arguments.no_resume {
        let last = *expected.last().ok_or("nothing was written")?;
        let resumed = resume(stalled, last, &expected).await?;
        line.push_str(&format!(" {resumed}"));
    }
    Ok(line)
}

/// Puts key `index` under the prefix; the revision it got.
async fn put(connection: &Connection, index: u64, value_bytes: usize) -> Result<i64, String> {
    let request = PutRequest {
        key: Bytes::from(format!("{}{index:08}", String::from_utf8_lossy(PREFIX))),
        value: Bytes::from(vec![b'v'; value_bytes]),
        ..Default::default()
    };
    let response: PutResponse = connection.unary("/etcdserverpb.KV/Put", &request).await?;
    Ok(response.header.map_or(0, |header| header.revision))
}

/// Puts at the configured rate for the configured time, from 8 writers;
/// the revisions written.
async fn write_load(arguments: &Arguments, writer: &Connection) -> Result<Vec<i64>, String> {
    const WRITERS: u64 = 8;
    let per_writer = arguments.rate * arguments.seconds / WRITERS;
    let interval = Duration::from_secs_f64(WRITERS as f64 / arguments.rate as f64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer_index in 0..WRITERS {
        let connection = writer.clone();
        let value_bytes = arguments.value_bytes;
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for sequence in 0..per_writer {
                let due = started + interval.mul_f64(sequence as f64);
                tokio::time::sleep_until(due.into()).await;
                let index = 2 + writer_index * per_writer + sequence;
                revisions.push(put(&connection, index, value_bytes).await?);
            }
            Ok::<_, String>(revisions)
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.extend(task.await.map_err(|error| error.to_string())??);
    }
    Ok(revisions)
}

/// Opens every stalled connection's reads again and checks what each watch
/// then receives.
async fn resume(
    stalled: Vec<(Connection, Vec<WatchCall>)>,
    last: i64,
    expected: &[i64],
) -> Result<String, String> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (connection, calls) in stalled {
        connection.gate.open();
        for mut call in calls {
            let connection = connection.clone();
            tasks.push(tokio::spawn(async move {
                let outcome =
                    tokio::time::timeout(Duration::from_secs(300), call.collect_through(last))
                        .await;
                drop(connection);
                match outcome {
                    Ok(result) => result,
                    Err(_) => Err("timed out".to_owned()),
                }
            }));
        }
    }
    let (mut complete, mut compacted, mut failed) = (0usize, 0usize, 0usize);
    let mut first_failure = None;
    for task in tasks {
        let outcomes = task.await.map_err(|error| error.to_string())?;
        match outcomes {
            Ok(outcomes) => {
                for outcome in outcomes {
                    match outcome.check(expected) {
                        Ok(true) => complete += 1,
                        Ok(false) => compacted += 1,
                        Err(why) => {
                            failed += 1;
                            first_failure.get_or_insert(why);
                        }
                    }
                }
            }
            Err(why) => {
                failed += 1;
                first_failure.get_or_insert(why);
            }
        }
    }
    Ok(format!(
        "resumed_complete={complete} resumed_compacted={compacted} resumed_failed={failed} \
         resume_seconds={:.1}{}",
        started.elapsed().as_secs_f64(),
        first_failure
            .map(|why| format!(" first_failure={why:?}"))
            .unwrap_or_default()
    ))
}
