//! Durability through the real binary: data survives a clean restart, and a
//! corrupted log refuses to start with a message that says where and what to do.

mod common;

use std::process::{Command, Stdio};

use bytes::Bytes;
use common::{GrpcClient, MetastoreServer};
use metastore::proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};

const WAL_BLOCK: u64 = 4096;

async fn put_many(address: std::net::SocketAddr, count: usize) {
    let mut client = GrpcClient::connect(address).await.expect("connect");
    for index in 0..count {
        let put = PutRequest {
            key: Bytes::from_static(b"one-key"),
            value: Bytes::from(format!("value-{index}")),
            ..Default::default()
        };
        let _: PutResponse = client
            .unary("/etcdserverpb.KV/Put", &put)
            .await
            .expect("put");
    }
}

async fn read(address: std::net::SocketAddr) -> RangeResponse {
    let mut client = GrpcClient::connect(address).await.expect("connect");
    client
        .unary(
            "/etcdserverpb.KV/Range",
            &RangeRequest {
                key: Bytes::from_static(b"one-key"),
                ..Default::default()
            },
        )
        .await
        .expect("range")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_mid_log_corruption_refuses_to_start() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut server = MetastoreServer::start_in(data_dir.path(), &["--cores", "1", "--shards", "1"]);
    put_many(server.addr(), 40).await;
    server.kill_hard();
    drop(server);

    let server = MetastoreServer::start_in(data_dir.path(), &["--cores", "1", "--shards", "1"]);
    let response = read(server.addr()).await;
    assert_eq!(
        response
            .kvs
            .first()
            .map(|kv| (kv.value.clone(), kv.version)),
        Some((Bytes::from_static(b"value-39"), 40))
    );
    drop(server);

    // Damage the first frame of the log (later frames stay valid): that is
    // corruption, not a torn tail, and the server must refuse to start.
    let wal_dir = data_dir.path().join("shards").join("0000").join("wal");
    let segment = std::fs::read_dir(&wal_dir)
        .expect("wal dir")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|extension| extension == "log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    let damaged_at = (WAL_BLOCK + 60) as usize;
    bytes[damaged_at] ^= 0x40;
    std::fs::write(&segment, &bytes).expect("write segment");
    let output = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args([
            "--data-dir",
            data_dir.path().to_str().expect("utf-8"),
            "--cores",
            "1",
            "--shards",
            "1",
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", common::free_port()),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run metastore");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a corrupted log must stop the server; stderr: {stderr}"
    );
    let segment_name = segment
        .file_name()
        .and_then(|name| name.to_str())
        .expect("name");
    assert!(
        stderr.contains(segment_name) && stderr.contains("offset"),
        "the error must name the file and offset: {stderr}"
    );
    assert!(
        stderr.contains("backup"),
        "the error must say what to do: {stderr}"
    );
}
