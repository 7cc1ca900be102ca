//! Protection limits, each tripped by a test client over loopback: the
//! client gets the right gRPC code and message, and the server keeps
//! serving everyone else.

mod common;

use std::time::{Duration, Instant};

use common::{GrpcClient, MetastoreServer, TRANSPORT_ERROR};
use metastore::proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    }
}

fn range(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

async fn try_put(client: &mut GrpcClient, key: &str) -> Result<PutResponse, (i32, String)> {
    client.unary("/etcdserverpb.KV/Put", &put(key)).await
}

async fn try_range(client: &mut GrpcClient, key: &str) -> Result<RangeResponse, (i32, String)> {
    client.unary("/etcdserverpb.KV/Range", &range(key)).await
}

const RESOURCE_EXHAUSTED: i32 = 8;

#[test]
fn a_method_rate_limit_refuses_the_excess_with_etcds_error_and_spares_other_methods() {
    let server = MetastoreServer::start(&["--method-rate-limits", "Put=5"]);
    runtime().block_on(async {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        let started = Instant::now();
        let mut refused = 0;
        for index in 0..30 {
            match try_put(&mut client, &format!("k{index}")).await {
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(
                        error,
                        (
                            RESOURCE_EXHAUSTED,
                            "etcdserver: too many requests".to_owned()
                        )
                    );
                    refused += 1;
                }
            }
        }
        // A burst of 5 plus 5 per second: however slow this machine is,
        // most of 30 back-to-back puts made in well under 5 s are refused.
        let elapsed = started.elapsed().as_secs_f64();
        let admitted_at_most = 5.0 + 5.0 * elapsed + 1.0;
        assert!(
            (30 - refused) as f64 <= admitted_at_most,
            "{refused} refused in {elapsed:.2}s"
        );
        for _ in 0..50 {
            try_range(&mut client, "k0")
                .await
                .expect("ranges are not limited");
        }
    });
}

#[test]
fn a_global_rate_limit_covers_every_method() {
    let server = MetastoreServer::start(&["--rate-limit-requests", "5"]);
    runtime().block_on(async {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        let mut refused = 0;
        for _ in 0..40 {
            if let Err(error) = try_range(&mut client, "k").await {
                assert_eq!(error.0, RESOURCE_EXHAUSTED, "{error:?}");
                refused += 1;
            }
        }
        assert!(refused > 0, "40 back-to-back calls must exceed 5/s");
    });
}

/// Connects until a call succeeds: the server counts a connection out only
/// once it has seen it close, so the harness's startup probe may briefly
/// still hold a slot.
async fn connect_admitted(server: &MetastoreServer) -> GrpcClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        match try_range(&mut client, "k").await {
            Ok(_) => return client,
            Err(error) if Instant::now() < deadline => {
                assert_eq!(error.0, RESOURCE_EXHAUSTED, "{error:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("never admitted: {error:?}"),
        }
    }
}

#[test]
fn connections_over_the_limit_are_refused_with_a_grpc_status() {
    let server = MetastoreServer::start(&["--max-connections", "1"]);
    runtime().block_on(async {
        let mut first = connect_admitted(&server).await;
        let mut second = GrpcClient::connect(server.addr())
            .await
            .expect("tcp connect");
        let refused = try_range(&mut second, "k").await.unwrap_err();
        assert_eq!(
            refused,
            (
                RESOURCE_EXHAUSTED,
                "metastore: too many client connections".to_owned()
            )
        );
        try_put(&mut first, "still-served")
            .await
            .expect("first client still served");
        drop(first);
        // Its slot comes back once the server sees it close.
        let mut third = connect_admitted(&server).await;
        try_range(&mut third, "still-served").await.expect("served");
    });
}

#[test]
fn a_panicking_handler_fails_only_its_call() {
    let server =
        MetastoreServer::start_with_env(&[], &[("FAILPOINTS", "grpc-handler-panic=return(Put)")]);
    runtime().block_on(async {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        for _ in 0..3 {
            let error = try_put(&mut client, "boom").await.unwrap_err();
            assert_eq!(error.0, 13, "INTERNAL: {error:?}");
            // The same connection and core keep serving other calls.
            try_range(&mut client, "boom")
                .await
                .expect("range after a panic");
        }
    });
    let (_, metrics) = common::http_request(&server.metrics_url(), "GET", "/metrics");
    assert!(
        metrics.contains("metastore_handler_panics_total 3"),
        "three panics counted"
    );
    let (status, _) = common::http_request(&server.metrics_url(), "GET", "/livez");
    assert_eq!(status, 200, "the server stays healthy");
}

#[test]
fn idle_connections_are_closed() {
    let server = MetastoreServer::start(&["--grpc-max-connection-idle", "300ms"]);
    runtime().block_on(async {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        try_range(&mut client, "k").await.expect("first call");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let error = try_range(&mut client, "k").await.unwrap_err();
        assert_eq!(
            error.0, TRANSPORT_ERROR,
            "the idle connection is gone: {error:?}"
        );
        let mut fresh = GrpcClient::connect(server.addr()).await.expect("connect");
        try_range(&mut fresh, "k")
            .await
            .expect("a new connection is served");
    });
}

#[test]
fn concurrent_streams_per_connection_are_limited() {
    let server = MetastoreServer::start(&["--max-concurrent-streams", "1"]);
    runtime().block_on(async {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        // One call first, so the client has the server's SETTINGS (before
        // them a client may open more streams, which the server refuses
        // with REFUSED_STREAM, safe to retry).
        try_range(&mut client, "k").await.expect("first call");
        let watch = client
            .open_stream("/etcdserverpb.Watch/Watch")
            .await
            .expect("the one stream");
        let mut same_connection = client.clone();
        let queued = tokio::spawn(async move { try_range(&mut same_connection, "k").await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        if queued.is_finished() {
            panic!(
                "a second stream must wait for the first: {:?}",
                queued.await
            );
        }
        let mut other = GrpcClient::connect(server.addr()).await.expect("connect");
        try_range(&mut other, "k")
            .await
            .expect("other connections are served");
        drop(watch);
        tokio::time::timeout(Duration::from_secs(10), queued)
            .await
            .expect("runs once the first stream ends")
            .expect("task")
            .expect("range");
    });
}

#[test]
fn slow_requests_are_logged_with_method_peer_and_key() {
    let mut server = MetastoreServer::start(&[
        "--warning-unary-request-duration",
        "1us",
        "--log-level",
        "warn",
    ]);
    runtime().block_on(async {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        try_put(&mut client, "slow/key").await.expect("put");
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.output_tail(64 * 1024);
        if log.contains("request took too long") {
            assert!(log.contains("/etcdserverpb.KV/Put"), "{log}");
            assert!(log.contains("slow/key"), "{log}");
            assert!(log.contains("127.0.0.1:"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no slow-request line: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.is_running());
}
