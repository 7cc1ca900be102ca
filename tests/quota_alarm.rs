//! `--quota-backend-bytes`, the NOSPACE alarm and `Maintenance.Alarm`, and
//! automatic compaction, through the real binary (and `etcdctl`).
//!
//! MetaStore's stored size is its memtables' bytes and etcd's is its bolt
//! file, so thresholds differ; the differential test compares only what a
//! client sees (error code and message, `etcdctl alarm` output).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{EtcdServer, GrpcClient, GrpcResult, MetastoreServer, require_tool};
use metastore::proto::etcdserverpb::request_op::Request;
use metastore::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};

/// gRPC's RESOURCE_EXHAUSTED and etcd's `ErrGRPCNoSpace` message.
const RESOURCE_EXHAUSTED: i32 = 8;
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// The quota the MetaStore tests run with, and the value size filling it.
const QUOTA: &str = "65536";
const VALUE_BYTES: usize = 4096;

fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let output = common::etcdctl_command(endpoint, args)
        .output()
        .expect("run etcdctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// etcdctl's output with member IDs replaced by `<ID>`.
fn without_member_ids(text: &str) -> String {
    text.split("memberID")
        .enumerate()
        .map(|(index, part)| {
            if index == 0 {
                return part.to_owned();
            }
            let separator: String = part.chars().take_while(|c| !c.is_ascii_digit()).collect();
            let rest = part[separator.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
            format!("memberID{separator}<ID>{rest}")
        })
        .collect()
}

async fn put(client: &mut GrpcClient, key: &str, value_bytes: usize) -> GrpcResult<PutResponse> {
    let request = PutRequest {
        key: Bytes::from(key.to_owned()),
        value: Bytes::from(vec![b'v'; value_bytes]),
        ..Default::default()
    };
    client.unary("/etcdserverpb.KV/Put", &request).await
}

/// Puts big values until a put is refused; returns the refusal.
async fn fill_until_refused(address: SocketAddr, prefix: &str) -> (i32, String) {
    let mut client = GrpcClient::connect(address).await.expect("connect");
    for index in 0..1000 {
        if let Err(refusal) = put(&mut client, &format!("{prefix}{index:04}"), VALUE_BYTES).await {
            return refusal;
        }
    }
    panic!("1000 puts of {VALUE_BYTES} bytes all fit in the quota");
}

fn range_prefix(prefix: &str) -> RangeRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    RangeRequest {
        key: Bytes::from(prefix.to_owned()),
        range_end: Bytes::from(end),
        count_only: true,
        ..Default::default()
    }
}

/// With NOSPACE raised: every write that adds data is refused (whatever
/// its size), everything else is served, on any connection.
async fn check_capped(address: SocketAddr) {
    let mut client = GrpcClient::connect(address).await.expect("connect");
    let refused = put(&mut client, "tiny", 1).await.map(|_| ());
    assert_eq!(refused, Err((RESOURCE_EXHAUSTED, NO_SPACE.to_owned())));
    let grant: GrpcResult<LeaseGrantResponse> = client
        .unary(
            "/etcdserverpb.Lease/LeaseGrant",
            &LeaseGrantRequest { ttl: 60, id: 0 },
        )
        .await;
    assert_eq!(
        grant.map(|_| ()),
        Err((RESOURCE_EXHAUSTED, NO_SPACE.to_owned()))
    );
    let put_op = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: Bytes::from_static(b"tiny"),
            ..Default::default()
        })),
    };
    let range_op = RequestOp {
        request: Some(Request::RequestRange(range_prefix("fill-"))),
    };
    let txn: GrpcResult<TxnResponse> = client
        .unary(
            "/etcdserverpb.KV/Txn",
            &TxnRequest {
                success: vec![put_op],
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        txn.map(|_| ()),
        Err((RESOURCE_EXHAUSTED, NO_SPACE.to_owned()))
    );
    let read_only: TxnResponse = client
        .unary(
            "/etcdserverpb.KV/Txn",
            &TxnRequest {
                success: vec![range_op],
                ..Default::default()
            },
        )
        .await
        .expect("a txn without puts is served");
    assert!(read_only.succeeded);
    let range: RangeResponse = client
        .unary("/etcdserverpb.KV/Range", &range_prefix("fill-"))
        .await
        .expect("reads are served");
    assert!(range.count > 0);
    let _: StatusResponse = client
        .unary("/etcdserverpb.Maintenance/Status", &StatusRequest {})
        .await
        .expect("status is served");
}

/// Deletes the filler keys, compacts (physically) at the current revision
/// and disarms with etcdctl; returns what `alarm disarm` printed.
async fn free_space_and_disarm(address: SocketAddr, endpoint: &str) -> String {
    let mut client = GrpcClient::connect(address).await.expect("connect");
    let mut delete = DeleteRangeRequest {
        key: Bytes::from_static(b"fill-"),
        range_end: Bytes::from_static(b"fill."),
        ..Default::default()
    };
    delete.prev_kv = false;
    let deleted: DeleteRangeResponse = client
        .unary("/etcdserverpb.KV/DeleteRange", &delete)
        .await
        .expect("deletes are served while NOSPACE is raised");
    assert!(deleted.deleted > 0);
    let revision = deleted.header.expect("header").revision;
    let _: CompactionResponse = client
        .unary(
            "/etcdserverpb.KV/Compact",
            &CompactionRequest {
                revision,
                physical: true,
            },
        )
        .await
        .expect("compaction is served while NOSPACE is raised");
    let (ok, disarmed, stderr) = etcdctl(endpoint, &["alarm", "disarm"]);
    assert!(ok, "etcdctl alarm disarm: {stderr}");
    disarmed
}

/// A full quota fails readiness and etcd's `/health` (unless NOSPACE is
/// excluded), but not liveness: a restart would not free space.
fn assert_health_reports_no_space(server: &MetastoreServer) {
    let url = server.metrics_url();
    let (status, body) = common::http_request(&url, "GET", "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("[-]disk_space failed: alarm NOSPACE"),
        "{body}"
    );
    assert!(body.contains("[+]serializable_read ok"), "{body}");
    assert_eq!(common::http_request(&url, "GET", "/livez").0, 200);
    assert_eq!(
        common::http_request(&url, "GET", "/health"),
        (
            503,
            r#"{"health":"false","reason":"ALARM NOSPACE"}"#.to_owned()
        )
    );
    assert_eq!(
        common::http_request(&url, "GET", "/health?exclude=NOSPACE").0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_quota_refuses_writes_until_space_is_freed_and_the_alarm_disarmed() {
    if !require_tool("etcdctl") {
        return;
    }
    let data_dir = tempfile::tempdir().expect("temp dir");
    let args = ["--quota-backend-bytes", QUOTA];
    let mut server = MetastoreServer::start_in(data_dir.path(), &args);
    let (address, endpoint) = (server.addr(), server.endpoint());
    // Another client, connected before the quota is reached, keeps being
    // served throughout.
    let mut bystander = GrpcClient::connect(address).await.expect("connect");

    let refusal = fill_until_refused(address, "fill-").await;
    assert_eq!(refusal, (RESOURCE_EXHAUSTED, NO_SPACE.to_owned()));
    let (ok, listed, stderr) = etcdctl(&endpoint, &["alarm", "list"]);
    assert!(ok, "etcdctl alarm list: {stderr}");
    assert_eq!(
        without_member_ids(&listed),
        "memberID:<ID> alarm:NOSPACE \n"
    );
    check_capped(address).await;
    assert_health_reports_no_space(&server);
    let _: RangeResponse = bystander
        .unary("/etcdserverpb.KV/Range", &range_prefix("fill-"))
        .await
        .expect("the other client is still served");

    // The alarm survives a crash.
    server.kill_hard();
    drop(server);
    let server = MetastoreServer::start_in(data_dir.path(), &args);
    let (address, endpoint) = (server.addr(), server.endpoint());
    let (_, listed, _) = etcdctl(&endpoint, &["alarm", "list"]);
    assert_eq!(
        without_member_ids(&listed),
        "memberID:<ID> alarm:NOSPACE \n"
    );
    check_capped(address).await;

    let disarmed = free_space_and_disarm(address, &endpoint).await;
    assert_eq!(
        without_member_ids(&disarmed),
        "memberID:<ID> alarm:NOSPACE \n"
    );
    let (_, listed, _) = etcdctl(&endpoint, &["alarm", "list"]);
    assert_eq!(listed, "", "disarmed");
    let url = server.metrics_url();
    assert_eq!(common::http_request(&url, "GET", "/readyz").0, 200);
    assert_eq!(common::http_request(&url, "GET", "/health").0, 200);
    let mut client = GrpcClient::connect(address).await.expect("connect");
    put(&mut client, "after", VALUE_BYTES)
        .await
        .expect("writes succeed again");
    let (ok, _, stderr) = etcdctl(&endpoint, &["put", "with-etcdctl", "value"]);
    assert!(ok, "etcdctl put after disarming: {stderr}");
}

/// The same story against etcd and MetaStore: the refusal's code and
/// message, and what `etcdctl alarm list` / `alarm disarm` print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_and_alarm_output_match_etcd() {
    if !require_tool("etcdctl") {
        return;
    }
    let Some(etcd) = EtcdServer::start_with(&["--quota-backend-bytes", "100000"]) else {
        return;
    };
    let metastore = MetastoreServer::start(&["--quota-backend-bytes", QUOTA]);
    let mut seen = Vec::new();
    for (address, endpoint) in [
        (etcd.addr(), etcd.endpoint()),
        (metastore.addr(), metastore.endpoint()),
    ] {
        let refusal = fill_until_refused(address, "fill-").await;
        let (_, listed, _) = etcdctl(&endpoint, &["alarm", "list"]);
        let (_, json, _) = etcdctl(&endpoint, &["-w", "json", "alarm", "list"]);
        let (put_ok, _, put_error) = etcdctl(&endpoint, &["put", "k", "v"]);
        let put_error: Vec<String> = put_error
            .lines()
            .filter(|line| line.starts_with("Error:"))
            .map(str::to_owned)
            .collect();
        let (_, disarmed, _) = etcdctl(&endpoint, &["alarm", "disarm"]);
        let (_, after, _) = etcdctl(&endpoint, &["alarm", "list"]);
        seen.push((
            refusal,
            without_member_ids(&listed),
            without_member_ids(&json),
            put_ok,
            put_error,
            without_member_ids(&disarmed),
            after,
        ));
    }
    assert_eq!(
        seen[1], seen[0],
        "MetaStore (right) differs from etcd (left)"
    );
}

/// `--auto-compaction-retention 1s` (periodic): the first compaction, a
/// second after start, goes to the revision sampled at start; the next,
/// every second after, to about a second before. Old revisions become
/// unreadable; the log says so like etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_compacts_old_revisions() {
    let server = MetastoreServer::start(&[
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "1s",
    ]);
    let mut client = GrpcClient::connect(server.addr()).await.expect("connect");
    let first = put(&mut client, "key", 8).await.expect("put");
    let first_revision = first.header.expect("header").revision;
    for _ in 0..10 {
        put(&mut client, "key", 8).await.expect("put");
    }
    let old = RangeRequest {
        key: Bytes::from_static(b"key"),
        revision: first_revision,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let read: GrpcResult<RangeResponse> = client.unary("/etcdserverpb.KV/Range", &old).await;
        match read {
            Err((code, message)) => {
                assert_eq!(
                    (code, message.as_str()),
                    (11, "etcdserver: mvcc: required revision has been compacted")
                );
                break;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(_) => panic!("revision {first_revision} was never compacted"),
        }
    }
    let latest: RangeResponse = client
        .unary(
            "/etcdserverpb.KV/Range",
            &RangeRequest {
                key: Bytes::from_static(b"key"),
                ..Default::default()
            },
        )
        .await
        .expect("the newest revision stays readable");
    assert_eq!(latest.kvs.first().map(|kv| kv.version), Some(11));
    let log = server.output_tail(64 * 1024);
    assert!(
        log.contains("Starting auto-compaction at revision"),
        "{log}"
    );
    assert!(
        log.contains("Finished auto-compaction at revision"),
        "{log}"
    );
}
