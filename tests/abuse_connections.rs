//! Connection hygiene against the real binary over loopback: deadlines for
//! each stage of a new connection and for partly received messages, the
//! open file limit and the connection cap sized from it, what happens at
//! the cap and when descriptors run out, and the metrics port's limits.
//! Short timeouts are set by flags so the tests are fast; each test asserts
//! what the server did (closed, refused, answered, which GOAWAY), and that
//! connections already open kept working.

mod common;

use std::time::{Duration, Instant};

use common::raw_h2::{self, Ending, RawConnection};
use common::{MetastoreServer, test_seed};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Generous: every wait below ends in well under a second when the server
/// does its job.
const WAIT: Duration = Duration::from_secs(10);
const RANGE: &str = "/etcdserverpb.KV/Range";
const PUT: &str = "/etcdserverpb.KV/Put";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `etcd-client` connected to the server, proving a Put works.
async fn well_behaved_client(server: &MetastoreServer) -> etcd_client::Client {
    let mut client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .expect("etcd-client connects");
    client.put("probe", "before", None).await.expect("a put");
    client
}

/// The fields of the first HEADERS frame the server sends on `stream`.
async fn first_headers(
    connection: &mut RawConnection,
    stream: u32,
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = connection.next_frame(left).await.ok()??;
        if frame.kind == raw_h2::HEADERS {
            let fields = connection.decode_headers(&frame);
            if frame.stream_id == stream {
                return Some(fields);
            }
        }
    }
}

fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(field, _)| field == name.as_bytes())
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

/// A client that connects and sends only part of the HTTP/2 preface, or
/// the preface and no SETTINGS, is closed once --grpc-handshake-timeout
/// has passed (not before); the one without SETTINGS hears
/// SETTINGS_TIMEOUT first.
#[test]
fn a_stalled_handshake_is_closed_at_the_handshake_timeout() {
    let server = MetastoreServer::start(&["--grpc-handshake-timeout", "500ms"]);
    runtime().block_on(async {
        let started = Instant::now();
        let mut partial = RawConnection::connect(server.addr())
            .await
            .expect("connect");
        partial.send(&raw_h2::PREFACE[..10]).await.expect("send");
        assert!(
            partial.closes_within(WAIT).await,
            "a partial preface is closed"
        );
        assert!(started.elapsed() >= Duration::from_millis(500));

        let started = Instant::now();
        let mut no_settings = RawConnection::connect(server.addr())
            .await
            .expect("connect");
        no_settings.send(raw_h2::PREFACE).await.expect("send");
        assert_eq!(
            no_settings.wait_for_ending(WAIT, |_| {}).await,
            Ending::GoAway(raw_h2::SETTINGS_TIMEOUT)
        );
        assert!(no_settings.closes_within(WAIT).await);
        assert!(started.elapsed() >= Duration::from_millis(500));
    });
    assert!(common::probe(server.addr()).is_ok());
}

/// A connection that opens properly but sends no request is told to go
/// away (GOAWAY NO_ERROR) at --grpc-first-request-timeout; one that sent a
/// request in time is not, and keeps serving after the deadline.
#[test]
fn a_connection_without_a_request_is_closed_at_the_first_request_timeout() {
    // The handshake deadline is later than the wait below: the first
    // request's deadline must not wait for it.
    let server = MetastoreServer::start(&[
        "--grpc-first-request-timeout",
        "1s",
        "--grpc-handshake-timeout",
        "20s",
    ]);
    runtime().block_on(async {
        let mut silent = RawConnection::connect(server.addr())
            .await
            .expect("connect");
        silent.send(&raw_h2::opening()).await.expect("send");
        let mut busy = RawConnection::connect(server.addr())
            .await
            .expect("connect");
        busy.send(&raw_h2::opening()).await.expect("send");
        let mut encoder = loona_hpack::Encoder::new();
        let mut call = |stream: u32| {
            let mut bytes = raw_h2::frame(
                raw_h2::HEADERS,
                raw_h2::END_HEADERS,
                stream,
                &raw_h2::request_block(&mut encoder, RANGE, &[]),
            );
            bytes.extend(raw_h2::frame(
                raw_h2::DATA,
                raw_h2::END_STREAM,
                stream,
                &raw_h2::grpc_message(&[0x0a, 0x01, b'a']),
            ));
            bytes
        };
        busy.send(&call(1)).await.expect("send");
        assert_eq!(
            first_headers(&mut busy, 1)
                .await
                .as_deref()
                .and_then(|f| field(f, ":status")),
            Some("200")
        );
        let started = Instant::now();
        assert_eq!(
            silent.wait_for_ending(WAIT, |_| {}).await,
            Ending::GoAway(raw_h2::NO_ERROR)
        );
        assert!(silent.closes_within(WAIT).await);
        // Past the deadline, the connection that called goes on.
        tokio::time::sleep(
            Duration::from_secs(1).saturating_sub(started.elapsed()) + Duration::from_millis(500),
        )
        .await;
        busy.send(&call(3)).await.expect("send");
        assert_eq!(
            first_headers(&mut busy, 3)
                .await
                .as_deref()
                .and_then(|f| field(f, ":status")),
            Some("200")
        );
    });
}

/// A request message that stops arriving part way (its 5-byte prefix
/// promises more than comes) fails its call with CANCELLED at
/// --grpc-request-message-timeout, releasing what was buffered; the
/// connection serves the next call.
#[test]
fn a_partly_received_message_fails_its_call_at_the_message_timeout() {
    let seed = test_seed("a_partly_received_message_fails_its_call_at_the_message_timeout");
    let mut rng = StdRng::seed_from_u64(seed);
    let server = MetastoreServer::start(&["--grpc-request-message-timeout", "1s"]);
    runtime().block_on(async {
        let mut connection = RawConnection::connect(server.addr())
            .await
            .expect("connect");
        connection.send(&raw_h2::opening()).await.expect("send");
        let mut encoder = loona_hpack::Encoder::new();
        let promised = rng.random_range(100..1_000_000u32);
        let sent = rng.random_range(0..promised.min(60_000)) as usize;
        let mut partial = vec![0u8];
        partial.extend(promised.to_be_bytes());
        partial.extend(std::iter::repeat_n(b'x', sent));
        let mut bytes = raw_h2::frame(
            raw_h2::HEADERS,
            raw_h2::END_HEADERS,
            1,
            &raw_h2::request_block(&mut encoder, PUT, &[]),
        );
        bytes.extend(raw_h2::frame(raw_h2::DATA, 0, 1, &partial));
        connection.send(&bytes).await.expect("send");
        let answer = first_headers(&mut connection, 1).await.expect("an answer");
        assert_eq!(
            field(&answer, "grpc-status"),
            Some("1"),
            "CANCELLED for {sent} of {promised} bytes (seed {seed}): {answer:?}"
        );
        let mut next = raw_h2::frame(
            raw_h2::HEADERS,
            raw_h2::END_HEADERS,
            3,
            &raw_h2::request_block(&mut encoder, RANGE, &[]),
        );
        next.extend(raw_h2::frame(
            raw_h2::DATA,
            raw_h2::END_STREAM,
            3,
            &raw_h2::grpc_message(&[0x0a, 0x01, b'a']),
        ));
        connection.send(&next).await.expect("send");
        assert_eq!(
            first_headers(&mut connection, 3)
                .await
                .as_deref()
                .and_then(|f| field(f, ":status")),
            Some("200")
        );
    });
    let metrics = common::http_request(&server.metrics_url(), "GET", "/metrics").1;
    assert!(
        metrics.contains("metastore_request_message_timeouts_total 1"),
        "{}",
        metrics
            .lines()
            .filter(|line| line.contains("timeouts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The soft open file limit is raised to the hard limit at start, and the
/// default connection cap is sized from it.
#[test]
fn the_open_file_limit_is_raised_and_sizes_the_default_cap() {
    let server = MetastoreServer::start_wrapped(&["prlimit", "--nofile=256:2048", "--"], &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).expect("limits");
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("Max open files");
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["2048", "2048"],
        "{open_files}"
    );
    // 2,048 less max(2,048 / 8, 256 + 64 per core), with 2 cores.
    let log = server.output_tail(64 * 1024);
    assert!(
        log.contains("max_connections=Some(1664)"),
        "{}",
        log.lines()
            .find(|line| line.contains("open file limit"))
            .unwrap_or(&log)
    );
}

/// Opens `count` connections that complete the HTTP/2 opening and are
/// served (they receive the server's SETTINGS), and keeps them.
async fn hold_connections(server: &MetastoreServer, count: usize) -> Vec<RawConnection> {
    let mut held = Vec::new();
    for _ in 0..count {
        let mut connection = RawConnection::connect(server.addr())
            .await
            .expect("connect");
        connection.send(&raw_h2::opening()).await.expect("send");
        let first = connection
            .next_frame(WAIT)
            .await
            .expect("a frame")
            .expect("open");
        assert_eq!(first.kind, raw_h2::SETTINGS);
        held.push(connection);
    }
    held
}

/// How a new connection was received.
#[derive(Debug, PartialEq, Eq)]
enum Reception {
    /// Its call was answered with this gRPC status.
    Answered(String),
    /// Closed or reset without an answer.
    Closed,
    /// Nothing within the wait: the client would time out.
    Ignored,
}

/// Connects, sends a Range call and reports how it was received.
async fn try_new_connection(addr: std::net::SocketAddr) -> Reception {
    try_and_keep_new_connection(addr).await.0
}

/// Like `try_new_connection`, handing back the connection if it was
/// served, so that it keeps its descriptor on the server.
async fn try_and_keep_new_connection(
    addr: std::net::SocketAddr,
) -> (Reception, Option<RawConnection>) {
    let Ok(mut connection) = RawConnection::connect(addr).await else {
        return (Reception::Closed, None);
    };
    let mut bytes = raw_h2::opening();
    bytes.extend(raw_h2::frame(
        raw_h2::HEADERS,
        raw_h2::END_HEADERS,
        1,
        &raw_h2::request_block(&mut loona_hpack::Encoder::new(), RANGE, &[]),
    ));
    bytes.extend(raw_h2::frame(
        raw_h2::DATA,
        raw_h2::END_STREAM,
        1,
        &raw_h2::grpc_message(&[0x0a, 0x01, b'a']),
    ));
    if connection.send(&bytes).await.is_err() {
        return (Reception::Closed, None);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connection.next_frame(left).await {
            Ok(Some(frame)) if frame.kind == raw_h2::HEADERS && frame.stream_id == 1 => {
                let fields = connection.decode_headers(&frame);
                if let Some(status) = field(&fields, "grpc-status") {
                    return (Reception::Answered(status.to_owned()), Some(connection));
                }
            }
            Ok(Some(frame)) if frame.kind == raw_h2::HEADERS => {
                connection.decode_headers(&frame);
            }
            Ok(Some(_)) => {}
            Ok(None) => return (Reception::Closed, None),
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                return (Reception::Ignored, Some(connection));
            }
            Err(_) => return (Reception::Closed, None),
        }
    }
}

/// Without --max-connections the cap comes from the open file limit (here
/// 400, so the cap is its floor, 64). Connections beyond it are refused at
/// once, with RESOURCE_EXHAUSTED or by closing them, while the connections
/// already open keep working. Before the default, nothing was refused.
#[test]
fn the_default_cap_refuses_new_connections_promptly_and_spares_open_ones() {
    let server = MetastoreServer::start_wrapped(&["prlimit", "--nofile=400:400", "--"], &[]);
    runtime().block_on(async {
        let mut client = well_behaved_client(&server).await;
        // The readiness probe and etcd-client hold one or two.
        let _held = hold_connections(&server, 62).await;
        let addr = server.addr();
        let attempts: Vec<_> = (0..200)
            .map(|_| tokio::spawn(try_new_connection(addr)))
            .collect();
        let mut receptions = Vec::new();
        for attempt in attempts {
            receptions.push(attempt.await.expect("attempt"));
        }
        let refused = receptions
            .iter()
            .filter(|reception| {
                **reception == Reception::Answered("8".to_owned())
                    || **reception == Reception::Closed
            })
            .count();
        assert!(
            !receptions.contains(&Reception::Ignored),
            "every new connection learns its fate: {receptions:?}"
        );
        assert!(refused >= 190, "refused {refused} of 200: {receptions:?}");
        client
            .put("probe", "during", None)
            .await
            .expect("an open connection still works at the cap");
    });
    let metrics = common::http_request(&server.metrics_url(), "GET", "/metrics").1;
    let rejected: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("metastore_client_connections_rejected_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the rejected counter");
    assert!(rejected >= 190.0, "rejected counter: {rejected}");
}

/// With no cap and a small file limit, the process runs out of
/// descriptors. New connections are then refused or reset at once (not
/// left in the accept queue until their clients time out), the server says
/// so in a counter and a log line, and the open connections keep working;
/// once connections close, new ones are served again.
#[test]
fn out_of_descriptors_new_connections_are_reset_and_open_ones_keep_working() {
    let server = MetastoreServer::start_wrapped(
        &["prlimit", "--nofile=128:128", "--"],
        &["--max-connections", "0"],
    );
    runtime().block_on(async {
        let mut client = well_behaved_client(&server).await;
        let addr = server.addr();
        // Hold connections until one is refused: the process is out.
        let mut held = Vec::new();
        for _ in 0..200 {
            // A reset can come as early as the connect (in set_nodelay).
            let Ok(mut connection) = RawConnection::connect(addr).await else {
                break;
            };
            if connection.send(&raw_h2::opening()).await.is_err() {
                break;
            }
            match connection.next_frame(WAIT).await {
                Ok(Some(frame)) if frame.kind == raw_h2::SETTINGS => held.push(connection),
                Ok(None) | Err(_) => break,
                Ok(Some(frame)) => panic!("unexpected {frame:?}"),
            }
        }
        assert!(held.len() < 128, "held {} connections", held.len());
        // Served ones are kept open, so they do not free descriptors.
        let attempts: Vec<_> = (0..50)
            .map(|_| tokio::spawn(try_and_keep_new_connection(addr)))
            .collect();
        let mut receptions = Vec::new();
        for attempt in attempts {
            let (reception, connection) = attempt.await.expect("attempt");
            receptions.push(reception);
            held.extend(connection);
        }
        // A descriptor the server used for a moment when the process ran
        // out (a connection closing, a probe) may let a few through; none
        // is left waiting.
        assert!(
            !receptions.contains(&Reception::Ignored),
            "every new connection learns its fate: {receptions:?}"
        );
        let reset = receptions
            .iter()
            .filter(|reception| **reception == Reception::Closed)
            .count();
        assert!(reset >= 40, "reset {reset} of 50: {receptions:?}");
        client
            .put("probe", "out of descriptors", None)
            .await
            .expect("an open connection still works");
        drop(held);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            try_new_connection(addr).await,
            Reception::Answered("0".to_owned()),
            "served again once descriptors are free"
        );
    });
    let metrics = common::http_request(&server.metrics_url(), "GET", "/metrics").1;
    let out_of_fds: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("metastore_client_accepts_out_of_fds_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the out-of-descriptors counter");
    assert!(
        out_of_fds >= 1.0,
        "out-of-descriptors counter: {out_of_fds}"
    );
    let log = server.output_tail(256 * 1024);
    let warnings = log.matches("out of file descriptors").count();
    assert!(
        (1..=5).contains(&warnings),
        "logged {warnings} times: rate limited, but logged"
    );
}

/// The metrics port: beyond --metrics-max-connections a connection gets
/// 503 at once; connections that send no request head are closed at
/// --metrics-header-read-timeout, after which requests are served again.
#[test]
fn the_metrics_port_caps_connections_and_times_out_silent_ones() {
    use std::io::{Read, Write};
    let server = MetastoreServer::start(&[
        "--metrics-max-connections",
        "4",
        "--metrics-header-read-timeout",
        "1s",
    ]);
    let address = server
        .metrics_url()
        .trim_start_matches("http://")
        .to_owned();
    let silent: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&address).expect("connect"))
        .collect();
    // Let the server count them before the fifth arrives.
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = std::net::TcpStream::connect(&address).expect("connect");
    fifth.set_read_timeout(Some(WAIT)).expect("timeout");
    fifth
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    let _ = fifth.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    for mut connection in silent {
        connection.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut byte = [0u8; 1];
        let started = Instant::now();
        let read = connection.read(&mut byte);
        assert!(
            matches!(read, Ok(0)) || read.is_err() && started.elapsed() < WAIT,
            "closed after the header timeout: {read:?}"
        );
    }
    let (status, _) = common::http_request(&server.metrics_url(), "GET", "/metrics");
    assert_eq!(status, 200);
}

/// etcd's keepalive enforcement (`--grpc-keepalive-min-time`): a client
/// that pings more often, more than twice, is told to go away
/// (ENHANCE_YOUR_CALM); one that keeps to the minimum time is answered.
#[test]
fn a_ping_flood_is_told_to_calm_down() {
    let server = MetastoreServer::start(&["--grpc-keepalive-min-time", "1s"]);
    runtime().block_on(async {
        let ping = raw_h2::frame(raw_h2::PING, 0, 0, &[7; 8]);
        let mut polite = RawConnection::connect(server.addr())
            .await
            .expect("connect");
        polite.send(&raw_h2::opening()).await.expect("send");
        for _ in 0..3 {
            polite.send(&ping).await.expect("send");
            let mut acked = false;
            while !acked {
                let frame = polite
                    .next_frame(WAIT)
                    .await
                    .expect("a frame")
                    .expect("open");
                assert_ne!(frame.kind, raw_h2::GOAWAY, "{frame:?}");
                acked = frame.kind == raw_h2::PING && frame.flags & raw_h2::ACK != 0;
            }
            tokio::time::sleep(Duration::from_millis(1_200)).await;
        }

        let mut flood = RawConnection::connect(server.addr())
            .await
            .expect("connect");
        let mut bytes = raw_h2::opening();
        for _ in 0..100 {
            bytes.extend(&ping);
        }
        flood.send(&bytes).await.expect("send");
        let mut acks = 0;
        let ending = flood
            .wait_for_ending(WAIT, |frame| {
                if frame.kind == raw_h2::PING {
                    acks += 1;
                }
            })
            .await;
        assert_eq!(ending, Ending::GoAway(raw_h2::ENHANCE_YOUR_CALM));
        assert!(acks <= 3, "{acks} pings answered before GOAWAY");
        assert!(flood.closes_within(WAIT).await);
    });
}
