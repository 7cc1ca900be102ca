//! The `metastore` command line, driven as a user would: bad flags exit
//! non-zero naming the flag, the data directory is private and keeps its
//! identity across restarts, and no arguments at all start a working server.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{GrpcClient, free_port, probe};
use metastore::proto::etcdserverpb::{MemberListRequest, MemberListResponse};

fn metastore() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_metastore"));
    command.stdin(Stdio::null());
    command
}

/// Runs `metastore args...` to completion and returns (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (i32, String) {
    let output = metastore().args(args).output().expect("run metastore");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_values_exit_non_zero_naming_the_flag() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = data_dir.path().to_str().expect("utf-8 path");
    let cases: &[(&[&str], &str)] = &[
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--cores", "0"], "--cores"),
        (&["--cores", "100000"], "--cores"),
        (&["--shards", "abc"], "--shards"),
        (&["--max-txn-ops", "0"], "--max-txn-ops"),
        (&["--max-request-bytes", "-5"], "--max-request-bytes"),
        (&["--log-level", "loud"], "--log-level"),
        (
            &["--listen-client-urls", "localhost:2379"],
            "--listen-client-urls",
        ),
        (&["--listen-client-urls", "https://127.0.0.1:2379"], "TLS"),
        (
            &["--advertise-client-urls", "http://host"],
            "--advertise-client-urls",
        ),
        (&["--data-dir", ""], "--data-dir"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["--data-dir", dir];
        full.extend_from_slice(args);
        let (code, stderr) = run_to_exit(&full);
        assert_ne!(code, 0, "{args:?} must fail; stderr: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr should name {needle:?}: {stderr}"
        );
    }
}

/// Starts the binary on a free port with `args`, waits until it answers.
fn start(args: &[&str]) -> (std::process::Child, SocketAddr) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let metrics_url = format!("http://127.0.0.1:{}", free_port());
    let mut full = vec![
        "--listen-client-urls",
        url.as_str(),
        "--listen-metrics-urls",
        metrics_url.as_str(),
        "--log-level",
        "warn",
    ];
    full.extend_from_slice(args);
    let child = metastore()
        .args(&full)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    wait_until_serving(address);
    (child, address)
}

fn wait_until_serving(address: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe(address).is_err() {
        assert!(
            Instant::now() < deadline,
            "metastore did not start serving on {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn member_list(address: SocketAddr) -> MemberListResponse {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = GrpcClient::connect(address).await.expect("connect");
        client
            .unary(
                "/etcdserverpb.Cluster/MemberList",
                &MemberListRequest::default(),
            )
            .await
            .expect("member list")
    })
}

fn member_ids(address: SocketAddr) -> (u64, u64) {
    let header = member_list(address).header.expect("header");
    (header.cluster_id, header.member_id)
}

#[test]
fn data_dir_is_private_locked_and_keeps_identity_and_shard_count() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = data_dir.path().join("member");
    let dir = dir.to_str().expect("utf-8 path");
    let (mut first, address) = start(&["--data-dir", dir, "--shards", "3", "--cores", "1"]);
    let identity = member_ids(address);
    let mode = std::fs::metadata(dir).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data directory must be private");

    let (code, stderr) = run_to_exit(&[
        "--data-dir",
        dir,
        "--listen-client-urls",
        &format!("http://127.0.0.1:{}", free_port()),
    ]);
    assert_ne!(
        code, 0,
        "a second process must not open the same data directory"
    );
    assert!(stderr.contains("in use"), "{stderr}");

    first.kill().expect("kill");
    first.wait().expect("wait");
    let (code, stderr) = run_to_exit(&[
        "--data-dir",
        dir,
        "--shards",
        "5",
        "--listen-client-urls",
        &format!("http://127.0.0.1:{}", free_port()),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--shards") && stderr.contains('3'),
        "the recorded shard count cannot change: {stderr}"
    );

    let (mut second, address) = start(&["--data-dir", dir, "--cores", "1"]);
    assert_eq!(
        member_ids(address),
        identity,
        "cluster and member IDs survive a restart"
    );
    second.kill().expect("kill");
    second.wait().expect("wait");
}

#[test]
fn no_arguments_serve_on_2379_with_default_data_dir() {
    let default_address: SocketAddr = "127.0.0.1:2379".parse().expect("address");
    if TcpListener::bind(default_address).is_err() {
        eprintln!(
            "SKIPPED: 127.0.0.1:2379 is in use on this machine; cannot test the no-argument start"
        );
        return;
    }
    let working_dir = tempfile::tempdir().expect("temp dir");
    let mut child = metastore()
        .current_dir(working_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until_serving(default_address);
    assert!(
        working_dir.path().join("default.metastore").is_dir(),
        "default data directory is ./default.metastore"
    );
    child.kill().expect("kill");
    child.wait().expect("wait");
}

/// The config file places the data directory and the client port, and an
/// environment variable overrides the file's member name (the unit tests in
/// `config::load` cover every pair of sources); an unknown key exits 2.
#[test]
fn config_file_and_environment_configure_the_server() {
    let directory = tempfile::tempdir().expect("temp dir");
    let data_dir = directory.path().join("from-file");
    let config_file = directory.path().join("metastore.yaml");
    let config_file = config_file.to_str().expect("utf-8 path");
    let port = free_port();
    let yaml = format!(
        "data-dir: {}\nlisten-client-urls: [http://127.0.0.1:{port}]\n\
         listen-metrics-urls: http://127.0.0.1:{}\nname: from-file\ncores: 1\nlog-level: info\n",
        data_dir.display(),
        free_port(),
    );
    std::fs::write(config_file, yaml).expect("write config file");
    let mut child = metastore()
        .args(["--config-file", config_file, "--log-level", "warn"])
        .env("METASTORE_NAME", "from-env")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    wait_until_serving(address);
    assert!(data_dir.is_dir(), "the data directory is the file's");
    let members = member_list(address).members;
    let names: Vec<&str> = members.iter().map(|member| member.name.as_str()).collect();
    assert_eq!(names, ["from-env"], "the environment overrides the file");
    child.kill().expect("kill");
    child.wait().expect("wait");

    std::fs::write(config_file, "name: a\ndata-dri: /tmp/elsewhere\n").expect("write");
    let (code, stderr) = run_to_exit(&["--config-file", config_file]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("'data-dri' (line 2)") && stderr.contains(config_file),
        "an unknown key is named with its file: {stderr}"
    );
}
