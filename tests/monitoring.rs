//! The monitoring endpoint driven over loopback: `/metrics` parsed with a
//! Prometheus text-format parser, etcd's health endpoints in healthy and
//! unhealthy states, and the standard gRPC health service.

mod common;

use std::time::Duration;

use common::{GrpcClient, MetastoreServer, http_request as http};
use metastore::proto::etcdserverpb::{
    PutRequest, PutResponse, WatchCreateRequest, WatchRequest, watch_request::RequestUnion,
};
use metastore::proto::grpc_health_v1::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};

fn scrape(server: &MetastoreServer) -> prometheus_parse::Scrape {
    let (status, body) = http(&server.metrics_url(), "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_owned())))
        .expect("valid Prometheus text format")
}

/// The value of the sample named `name` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .find(|sample| {
            labels
                .iter()
                .all(|(label, wanted)| sample.labels.get(label) == Some(*wanted))
        })
        .map(|sample| match &sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => *value,
            prometheus_parse::Value::Histogram(buckets) => buckets
                .iter()
                .map(|bucket| bucket.count)
                .fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

const PUT: [(&str, &str); 3] = [
    ("grpc_type", "unary"),
    ("grpc_service", "etcdserverpb.KV"),
    ("grpc_method", "Put"),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn metrics_exist_and_move_with_traffic() {
    let server = MetastoreServer::start(&[]);
    let before = scrape(&server);
    for name in [
        "grpc_server_started_total",
        "etcd_server_has_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_server_quota_backend_bytes",
        "etcd_debugging_mvcc_keys_total",
        "etcd_debugging_mvcc_watch_stream_total",
        "etcd_debugging_mvcc_watcher_total",
        "etcd_debugging_lease_granted_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "metastore_shard_commands_total",
        "metastore_shard_queue_depth",
        "metastore_cross_core_hop_seconds_count",
        "metastore_wal_entries_per_fsync_count",
        "metastore_io_driver",
    ] {
        assert!(
            before.samples.iter().any(|sample| sample.metric == name),
            "{name} is missing from /metrics"
        );
    }
    assert_eq!(value(&before, "etcd_server_has_leader", &[]), Some(1.0));
    assert_eq!(
        value(&before, "etcd_server_quota_backend_bytes", &[]),
        Some(2.0 * 1024.0 * 1024.0 * 1024.0)
    );
    let fsyncs_before =
        value(&before, "etcd_disk_wal_fsync_duration_seconds_count", &[]).expect("fsync count");

    let runtime = runtime();
    runtime.block_on(async {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        for index in 0..20 {
            let _: PutResponse = client
                .unary(
                    "/etcdserverpb.KV/Put",
                    &PutRequest {
                        key: format!("key-{index}").into_bytes().into(),
                        value: b"value".to_vec().into(),
                        ..Default::default()
                    },
                )
                .await
                .expect("put");
        }
        // A watch stream stays open while we scrape.
        let mut watch = client
            .open_stream("/etcdserverpb.Watch/Watch")
            .await
            .expect("watch");
        watch
            .send(&WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: b"key".to_vec().into(),
                    ..Default::default()
                })),
            })
            .expect("create watch");
        let _ = watch
            .recv::<metastore::proto::etcdserverpb::WatchResponse>(Duration::from_secs(5))
            .await;
        let after = scrape(&server);
        let started = value(&after, "grpc_server_started_total", &PUT).expect("started");
        assert_eq!(started, 20.0);
        let mut handled = PUT.to_vec();
        handled.push(("grpc_code", "OK"));
        assert_eq!(
            value(&after, "grpc_server_handled_total", &handled),
            Some(20.0)
        );
        assert_eq!(
            value(&after, "grpc_server_handling_seconds_count", &PUT),
            Some(20.0)
        );
        assert_eq!(
            value(&after, "etcd_debugging_mvcc_keys_total", &[]),
            Some(20.0)
        );
        assert_eq!(
            value(&after, "etcd_debugging_mvcc_current_revision", &[]),
            Some(21.0)
        );
        assert_eq!(
            value(&after, "etcd_debugging_mvcc_watch_stream_total", &[]),
            Some(1.0)
        );
        assert_eq!(
            value(&after, "etcd_debugging_mvcc_watcher_total", &[]),
            Some(1.0)
        );
        let fsyncs =
            value(&after, "etcd_disk_wal_fsync_duration_seconds_count", &[]).expect("fsync count");
        assert!(fsyncs >= fsyncs_before + 1.0, "{fsyncs_before} -> {fsyncs}");
        let hops = value(&after, "metastore_cross_core_hop_seconds_count", &[]).expect("hops");
        assert!(hops >= 20.0, "every put queued for its shard: {hops}");
        drop(watch);
    });
}

#[test]
fn health_endpoints_report_a_healthy_server_in_etcds_formats() {
    let server = MetastoreServer::start(&[]);
    let url = server.metrics_url();
    assert_eq!(
        http(&url, "GET", "/health"),
        (200, r#"{"health":"true","reason":""}"#.to_owned())
    );
    assert_eq!(http(&url, "GET", "/livez"), (200, "ok\n".to_owned()));
    assert_eq!(http(&url, "GET", "/readyz"), (200, "ok\n".to_owned()));
    let (status, verbose) = http(&url, "GET", "/readyz?verbose");
    assert_eq!(status, 200);
    assert_eq!(
        verbose,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]disk_space ok\n[+]data_dir_writable ok\nok\n"
    );
    let (_, excluded) = http(&url, "GET", "/readyz?verbose&exclude=linearizable_read");
    assert!(!excluded.contains("linearizable_read"), "{excluded}");
    assert_eq!(
        http(&url, "GET", "/readyz/data_dir_writable?verbose"),
        (200, "[+]data_dir_writable ok\nok\n".to_owned())
    );
    assert_eq!(http(&url, "GET", "/livez/serializable_read").0, 200);
    assert_eq!(http(&url, "GET", "/livez/disk_space").0, 404);
    assert_eq!(http(&url, "GET", "/nothing-here").0, 404);
    assert_eq!(http(&url, "POST", "/health").0, 405);
    let scrape = scrape(&server);
    assert!(value(&scrape, "etcd_server_health_success", &[]).expect("counted") >= 6.0);
}

#[test]
fn a_stalled_shard_fails_the_probes() {
    // Shard 0's worker blocks its core for 5 s whenever probed.
    let server = MetastoreServer::start_with_env(
        &["--cores", "2", "--shards", "2"],
        &[("FAILPOINTS", "shard-worker-stall=return(0)")],
    );
    let url = server.metrics_url();
    let (status, body) = http(&url, "GET", "/livez");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("[-]serializable_read failed: no answer within 2s"),
        "{body}"
    );
    let (status, body) = http(&url, "GET", "/health?serializable=true");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""health":"false""#), "{body}");
    // Other checks still pass while that core is stuck, and a scrape
    // answers within its deadline, without the stuck core's numbers.
    assert_eq!(http(&url, "GET", "/readyz/data_dir_writable").0, 200);
    let started = std::time::Instant::now();
    let (_, _) = http(&url, "GET", "/livez");
    let (status, body) = http(&url, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "probe and scrape each wait one deadline: {:?}",
        started.elapsed()
    );
}

#[test]
fn grpc_health_service_answers_like_etcd() {
    let server = MetastoreServer::start(&[]);
    runtime().block_on(async {
        let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
        let response: HealthCheckResponse = client
            .unary(
                "/grpc.health.v1.Health/Check",
                &HealthCheckRequest {
                    service: String::new(),
                },
            )
            .await
            .expect("check");
        assert_eq!(response.status, ServingStatus::Serving as i32);
        let unknown = client
            .unary::<_, HealthCheckResponse>(
                "/grpc.health.v1.Health/Check",
                &HealthCheckRequest {
                    service: "etcdserverpb.Nope".to_owned(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(unknown, (5, "unknown service".to_owned()));
    });
}
