//! Issue 18, slow readers and watch flushes: watchers on connections that
//! advertise the largest windows HTTP/2 allows and then stop reading their
//! socket must not make the server buffer without limit. Each connection
//! holds at most its send budget of response data (README, "Memory per
//! connection"); a watcher whose client does not keep up falls behind and
//! catches up from history when it reads again, or is canceled with
//! `compact_revision` when that history was compacted meanwhile (etcd's
//! slow-watcher semantics). A well-behaved watcher on another connection
//! is not disturbed, nor are the calls of a client that stops reading only
//! some of its streams.
//!
//! Against the real binary over loopback, with raw h2 clients
//! (`common::raw_client`). Value sizes are random (printed seed).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::raw_client::{Connection, MAX_WINDOW, WatchCall, rss_bytes};
use common::{MetastoreServer, test_seed};
use metastore::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const MIB: u64 = 1 << 20;
/// Connections that stop reading, and the Watch streams on each (one
/// watch per stream): issue 18's 1,000 watchers on 100 connections.
const CONNECTIONS: usize = 100;
const STREAMS: usize = 10;
/// What the README documents a connection whose client does not read may
/// hold (256 KiB queued, one 128 KiB hand-over, one 64 KiB batch and
/// ~0.15 MiB of HTTP/2 and socket state: ~0.6 MiB), with a margin of two
/// for allocator slack and a shared machine.
const PER_CONNECTION_BOUND: u64 = 2 * 640 * 1024;
/// Puts while the readers are stalled, from this many writers.
const PUTS: usize = 3000;
const WRITERS: usize = 8;
/// Longest wait for anything the server does.
const PATIENCE: Duration = Duration::from_secs(60);

const PREFIX: &[u8] = b"/abuse/slow/";
const PREFIX_END: &[u8] = b"/abuse/slow0";

fn address(server: &MetastoreServer) -> SocketAddr {
    server.addr()
}

async fn put(connection: &Connection, key: String, value_bytes: usize) -> i64 {
    let response: PutResponse = connection
        .unary(
            "/etcdserverpb.KV/Put",
            &PutRequest {
                key: Bytes::from(key),
                value: Bytes::from(vec![b'v'; value_bytes]),
                ..Default::default()
            },
        )
        .await
        .expect("put");
    response.header.expect("a header").revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_that_stop_reading_hold_bounded_memory_and_miss_nothing() {
    let seed = test_seed("watchers_that_stop_reading_hold_bounded_memory_and_miss_nothing");
    let server = MetastoreServer::start(&[]);
    let addr = address(&server);
    let pid = server.pid();
    let writer = Connection::connect(addr, 1 << 20).await.expect("connect");
    put(&writer, "/warm-up".into(), 100).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_bytes(pid).expect("the server's RSS");
    let start_revision = put(&writer, "/warm-up".into(), 100).await + 1;

    let reader_connection = Connection::connect(addr, 1 << 20).await.expect("connect");
    let mut reader = WatchCall::open(&reader_connection, 1, PREFIX, PREFIX_END, start_revision)
        .await
        .expect("a well-behaved watcher");
    let mut stalled = Vec::new();
    for _ in 0..CONNECTIONS {
        let connection = Connection::connect(addr, MAX_WINDOW)
            .await
            .expect("connect");
        let mut calls = Vec::new();
        for _ in 0..STREAMS {
            let call = WatchCall::open(&connection, 1, PREFIX, PREFIX_END, start_revision)
                .await
                .expect("a watch");
            calls.push(call);
        }
        connection.gate.close();
        stalled.push((connection, calls));
    }

    let peak = Arc::new(Mutex::new(0u64));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while let Some(now) = rss_bytes(pid) {
                {
                    let mut peak = peak.lock().unwrap();
                    *peak = (*peak).max(now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut random = StdRng::seed_from_u64(seed);
    let mut writing = Vec::new();
    for writer_index in 0..WRITERS {
        let connection = writer.clone();
        let sizes: Vec<usize> = (0..PUTS / WRITERS)
            .map(|_| random.random_range(256..2048))
            .collect();
        writing.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for (index, size) in sizes.into_iter().enumerate() {
                let key = format!("/abuse/slow/{writer_index}/{index:05}");
                revisions.push(put(&connection, key, size).await);
            }
            revisions
        }));
    }
    let mut written = Vec::new();
    for task in writing {
        written.extend(task.await.expect("a writer"));
    }
    written.sort_unstable();
    let last = *written.last().expect("puts were made");
    // Let the server settle into whatever it holds for the stalled readers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampler.abort();
    let peak = *peak.lock().unwrap();
    let bound = 2 * idle + CONNECTIONS as u64 * PER_CONNECTION_BOUND;
    eprintln!(
        "idle RSS {:.1} MiB, peak {:.1} MiB, bound {:.1} MiB",
        idle as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
    assert!(
        peak <= bound,
        "with {} watchers on {CONNECTIONS} connections that stopped reading, the server's RSS \
         reached {:.1} MiB: over twice its idle RSS ({:.1} MiB) plus {:.1} MiB per connection \
         (seed {seed})",
        CONNECTIONS * STREAMS,
        peak as f64 / MIB as f64,
        idle as f64 / MIB as f64,
        PER_CONNECTION_BOUND as f64 / MIB as f64,
    );

    // The watcher that reads got everything, in order, while the others
    // stalled.
    let outcomes = tokio::time::timeout(PATIENCE, reader.collect_through(last))
        .await
        .expect("the well-behaved watcher keeps up")
        .expect("its stream works");
    assert_eq!(
        outcomes[0].check(&written),
        Ok(true),
        "the well-behaved watcher (seed {seed})"
    );

    // Stalled watchers that read again get every event in order...
    let mut rest = stalled.into_iter();
    for (connection, calls) in rest.by_ref().take(5) {
        connection.gate.open();
        for mut call in calls {
            let outcomes = tokio::time::timeout(PATIENCE, call.collect_through(last))
                .await
                .expect("a resumed watcher catches up")
                .expect("its stream works");
            assert_eq!(
                outcomes[0].check(&written),
                Ok(true),
                "a resumed watcher (seed {seed})"
            );
        }
    }
    // ...or, once their history is compacted, what they had and then a
    // cancel with the compaction point.
    let _: CompactionResponse = writer
        .unary(
            "/etcdserverpb.KV/Compact",
            &CompactionRequest {
                revision: last,
                physical: true,
            },
        )
        .await
        .expect("compact");
    let mut canceled = 0;
    for (connection, calls) in rest.by_ref().take(5) {
        connection.gate.open();
        for mut call in calls {
            let outcomes = tokio::time::timeout(PATIENCE, call.collect_through(last))
                .await
                .expect("a resumed watcher catches up or is canceled")
                .expect("its stream works");
            match outcomes[0].check(&written) {
                Ok(true) => {}
                Ok(false) => canceled += 1,
                Err(why) => panic!("a watcher resumed after compaction: {why} (seed {seed})"),
            }
        }
    }
    assert!(
        canceled > 0,
        "no stalled watcher was behind the compaction point: the test did not stall them"
    );
    drop(server);
}

/// A connection's send budget is given back when its streams are reset
/// with data still queued: the same connection then serves a response
/// larger than the budget, and a new watch gets its whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_stalled_streams_gives_their_budget_back() {
    let server = MetastoreServer::start(&[]);
    let addr = address(&server);
    let writer = Connection::connect(addr, 1 << 20).await.expect("connect");
    const KEYS: usize = 120;
    const VALUE_BYTES: usize = 64 * 1024;
    let mut last = 0;
    for index in 0..KEYS {
        last = put(&writer, format!("/abuse/slow/{index:04}"), VALUE_BYTES).await;
    }
    let connection = Connection::connect_with_receive_buffer(addr, MAX_WINDOW, Some(64 * 1024))
        .await
        .expect("connect");
    let mut calls = Vec::new();
    for _ in 0..8 {
        // From revision 1: each stream has ~7.5 MiB of history to send.
        calls.push(
            WatchCall::open(&connection, 1, PREFIX, PREFIX_END, 1)
                .await
                .expect("a watch"),
        );
    }
    connection.gate.close();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for call in &mut calls {
        call.call.reset();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    connection.gate.open();

    let everything = RangeRequest {
        key: Bytes::from_static(PREFIX),
        range_end: Bytes::from_static(PREFIX_END),
        ..Default::default()
    };
    let range = connection.unary::<_, RangeResponse>("/etcdserverpb.KV/Range", &everything);
    let response = tokio::time::timeout(PATIENCE, range)
        .await
        .expect("a range larger than the budget is answered on the same connection")
        .expect("range");
    assert_eq!(response.kvs.len(), KEYS);

    let mut watch = WatchCall::open(&connection, 1, PREFIX, PREFIX_END, 1)
        .await
        .expect("a new watch on the same connection");
    let outcomes = tokio::time::timeout(PATIENCE, watch.collect_through(last))
        .await
        .expect("the new watch gets its history")
        .expect("its stream works");
    assert_eq!(outcomes[0].revisions.len(), KEYS);
    drop(calls);
}

/// A client that stops reading some streams of a connection (their
/// windows run out) while it reads the others: what those streams have
/// encoded for their closed windows must not make the connection's other
/// calls wait, or they would wait for streams the client is not reading
/// (HTTP/2 flow control is per stream; etcd's calls are independent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_client_stops_reading_do_not_stall_its_other_calls() {
    let server = MetastoreServer::start(&[]);
    let addr = address(&server);
    let writer = Connection::connect(addr, 1 << 20).await.expect("connect");
    // 2 MiB of history under the prefix, before anyone watches: watches
    // from revision 1 catch up from history, in responses of up to
    // ~2 MiB (etcd's shape).
    for index in 0..256 {
        put(&writer, format!("/abuse/slow/{index:04}"), 8 * 1024).await;
    }
    // 16 KiB stream windows, a connection window as large as allowed; the
    // watches are never read, so each window runs out after 16 KiB.
    let connection = Connection::connect_with(addr, 16 * 1024, MAX_WINDOW, None)
        .await
        .expect("connect");
    let mut ignored = Vec::new();
    for _ in 0..32 {
        let open = WatchCall::open(&connection, 1, PREFIX, PREFIX_END, 1);
        let watch = tokio::time::timeout(PATIENCE, open)
            .await
            .expect("a watch is created on a connection whose other streams are not read")
            .expect("a watch");
        ignored.push(watch);
    }
    // And more, from the feed, while they are not read.
    for index in 256..384 {
        put(&writer, format!("/abuse/slow/{index:04}"), 8 * 1024).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let one_key = RangeRequest {
        key: Bytes::from_static(b"/abuse/slow/0000"),
        ..Default::default()
    };
    for _ in 0..3 {
        let range = connection.unary::<_, RangeResponse>("/etcdserverpb.KV/Range", &one_key);
        let response = tokio::time::timeout(PATIENCE, range).await;
        assert!(
            matches!(&response, Ok(Ok(answer)) if answer.kvs.len() == 1),
            "a call on a connection whose other streams are not read did not complete: \
             {response:?}"
        );
    }
    // A new watch on the same connection, read, gets its history too.
    let open = WatchCall::open(&connection, 1, b"/abuse/slow/0000", b"", 1);
    let mut read = tokio::time::timeout(PATIENCE, open)
        .await
        .expect("a watch is created on a connection whose other streams are not read")
        .expect("a watch");
    let outcome = tokio::time::timeout(PATIENCE, read.next())
        .await
        .expect("the read watch gets its event")
        .expect("its stream works")
        .expect("a response");
    assert_eq!(outcome.events.len(), 1);
    drop(ignored);
}
