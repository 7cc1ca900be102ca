//! Runs the real `loadgen` binary against a MetaStore started by the test
//! (in this process, through the library's `runtime::start`) and, when it
//! is installed, against a real etcd; checks that each workload's counts
//! are right by reading the server back with the `etcd-client` crate.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

/// A server under test; dropping it stops an etcd (an in-process MetaStore
/// lives until the test process exits).
struct Target {
    name: &'static str,
    endpoint: String,
    _etcd: Option<EtcdProcess>,
    _data_dir: tempfile::TempDir,
}

struct EtcdProcess(Child);

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

fn start_metastore() -> Target {
    let data_dir = tempfile::tempdir().expect("temp dir");
    for attempt in 0..3 {
        let url = format!("http://127.0.0.1:{}", free_port());
        let metrics_url = format!("http://127.0.0.1:{}", free_port());
        let flags = metastore::config::Flags::try_parse_from([
            "metastore",
            "--listen-metrics-urls",
            &metrics_url,
            "--data-dir",
            data_dir.path().join("data").to_str().unwrap(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--cores",
            "1",
            "--shards",
            "2",
        ])
        .expect("valid flags");
        let open_files = metastore::runtime::raise_open_file_limit().now;
        let config = metastore::config::ServerConfig::from_flags(flags, 1, open_files)
            .expect("valid config");
        match metastore::runtime::start(&config) {
            Ok(_node) => {
                return Target {
                    name: "MetaStore",
                    endpoint: url,
                    _etcd: None,
                    _data_dir: data_dir,
                };
            }
            // Another test may have taken the port between probe and bind.
            Err(error) if attempt < 2 => eprintln!("retrying MetaStore start: {error}"),
            Err(error) => panic!("start MetaStore: {error}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// A real etcd, or `None` (with a loud message) when it is not installed
/// and CI is not set; CI must run these comparisons.
fn start_etcd() -> Option<Target> {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd is not installed but CI is set: CI must run the etcd comparison"
        );
        eprintln!("SKIPPED against etcd: etcd not installed (apt-get install etcd-server)");
        return None;
    }
    let data_dir = tempfile::tempdir().expect("temp dir");
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new("etcd")
        .args(["--name", "default", "--data-dir"])
        .arg(data_dir.path().join("etcd"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("default={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcd");
    let target = Target {
        name: "etcd",
        endpoint: client,
        _etcd: Some(EtcdProcess(child)),
        _data_dir: data_dir,
    };
    // Ready once a Status call answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let ready = runtime().block_on(async {
            let mut client = connect(&target.endpoint).await.ok()?;
            client.status().await.ok()
        });
        if ready.is_some() {
            return Some(target);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("etcd did not become ready at {}", target.endpoint);
}

fn targets() -> Vec<Target> {
    let mut targets = vec![start_metastore()];
    targets.extend(start_etcd());
    targets
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(endpoint: &str) -> Result<etcd_client::Client, etcd_client::Error> {
    let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
    etcd_client::Client::connect([endpoint], Some(options)).await
}

/// Runs loadgen with `args` against `target`; returns its output.
fn loadgen(target: &Target, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--endpoints", &target.endpoint])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    eprintln!(
        "[{}] loadgen {args:?}: {}\n{}",
        target.name,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs loadgen with `--json`, expects success, returns the report.
fn loadgen_json(target: &Target, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = loadgen(target, &all);
    assert!(
        output.status.success(),
        "[{}] loadgen {args:?} failed",
        target.name
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "[{}] bad JSON ({error}): {}",
            target.name,
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn section<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["sections"]
        .as_array()
        .and_then(|sections| sections.iter().find(|section| section["name"] == name))
        .unwrap_or_else(|| panic!("no section {name} in {report}"))
}

fn requests(report: &Value, name: &str) -> u64 {
    let section = section(report, name);
    assert_eq!(section["failures"], 0, "failures in {section}");
    section["requests"].as_u64().unwrap()
}

/// (revision, number of keys) as the server reports them.
fn revision_and_count(target: &Target, prefix: &[u8]) -> (i64, i64) {
    runtime().block_on(async {
        let mut client = connect(&target.endpoint).await.expect("connect");
        let options = if prefix.is_empty() {
            etcd_client::GetOptions::new()
                .with_all_keys()
                .with_count_only()
        } else {
            etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only()
        };
        let response = client.get(prefix, Some(options)).await.expect("count");
        (response.header().unwrap().revision(), response.count())
    })
}

#[test]
fn put_writes_exactly_the_requested_keys() {
    for target in targets() {
        let report = loadgen_json(
            &target,
            &[
                "--clients",
                "8",
                "--conns",
                "2",
                "put",
                "--total",
                "1000",
                "--key-space-size",
                "1000",
                "--sequential-keys",
                "--val-size",
                "64",
            ],
        );
        assert_eq!(requests(&report, "put"), 1000, "[{}]", target.name);
        assert_eq!(
            revision_and_count(&target, b""),
            (1001, 1000),
            "[{}]",
            target.name
        );
        // Text output has etcd's report shape.
        let output = loadgen(&target, &["put", "--total", "10"]);
        let text = String::from_utf8_lossy(&output.stdout);
        for heading in [
            "Summary:",
            "Requests/sec:",
            "Response time histogram:",
            "Latency distribution:",
        ] {
            assert!(
                text.contains(heading),
                "[{}] missing {heading}: {text}",
                target.name
            );
        }
    }
}

#[test]
fn range_and_txn_workloads_count_right() {
    for target in targets() {
        for consistency in ["l", "s"] {
            let report = loadgen_json(
                &target,
                &[
                    "--clients",
                    "4",
                    "range",
                    "foo",
                    "--consistency",
                    consistency,
                    "--total",
                    "300",
                ],
            );
            assert_eq!(requests(&report, "range"), 300, "[{}]", target.name);
        }
        let report = loadgen_json(
            &target,
            &["range", "a", "--prefix", "--count-only", "--total", "20"],
        );
        assert_eq!(requests(&report, "range"), 20);
        // Reads do not write.
        assert_eq!(revision_and_count(&target, b"").0, 1, "[{}]", target.name);

        let report = loadgen_json(
            &target,
            &[
                "--clients",
                "4",
                "txn-put",
                "--total",
                "100",
                "--txn-ops",
                "4",
                "--key-space-size",
                "100",
            ],
        );
        assert_eq!(requests(&report, "txn-put"), 100, "[{}]", target.name);
        // One revision per txn; 400 puts cover the 100-key space.
        assert_eq!(
            revision_and_count(&target, b""),
            (101, 100),
            "[{}]",
            target.name
        );

        let report = loadgen_json(
            &target,
            &[
                "txn-mixed",
                "foo",
                "--total",
                "200",
                "--rw-ratio",
                "3",
                "--key-space-size",
                "100",
            ],
        );
        let (reads, writes) = (requests(&report, "read"), requests(&report, "write"));
        assert_eq!(reads + writes, 200, "[{}]", target.name);
        assert!(
            reads > writes,
            "[{}] rw-ratio 3 gave {reads} reads, {writes} writes",
            target.name
        );
        assert_eq!(
            revision_and_count(&target, b"").0,
            101 + writes as i64,
            "[{}]",
            target.name
        );
    }
}

#[test]
fn watch_workloads_deliver_every_event() {
    for target in targets() {
        // 2 streams x 3 watchers over 2 keys; 20 puts, 10 per key: each
        // watcher gets 10 events.
        let report = loadgen_json(
            &target,
            &[
                "--conns",
                "2",
                "--clients",
                "2",
                "watch",
                "--streams",
                "2",
                "--watch-per-stream",
                "3",
                "--watched-key-total",
                "2",
                "--put-total",
                "20",
            ],
        );
        assert_eq!(requests(&report, "watch creation"), 6);
        assert_eq!(requests(&report, "put"), 20);
        assert_eq!(requests(&report, "events"), 60, "[{}]", target.name);

        let report = loadgen_json(
            &target,
            &[
                "watch",
                "--streams",
                "2",
                "--watch-per-stream",
                "5",
                "--watch-prefix",
                "--put-total",
                "10",
            ],
        );
        assert_eq!(requests(&report, "events"), 100, "[{}]", target.name);

        let report = loadgen_json(
            &target,
            &[
                "watch-latency",
                "--put-total",
                "30",
                "--put-rate",
                "300",
                "--streams",
                "2",
                "--watchers-per-stream",
                "2",
                "--prevkv",
            ],
        );
        assert_eq!(requests(&report, "events"), 120, "[{}]", target.name);
        let p99 = section(&report, "events")["latency"]["percentiles"]["p99"]
            .as_f64()
            .unwrap();
        assert!(p99 > 0.0);
        // Every put of the three runs went to /watch/ keys.
        let (revision, _) = revision_and_count(&target, b"/watch/");
        assert_eq!(revision, 1 + 20 + 10 + 30, "[{}]", target.name);
    }
}

#[test]
fn lease_keepalive_renews_one_lease_per_client() {
    for target in targets() {
        let report = loadgen_json(
            &target,
            &["--clients", "4", "lease-keepalive", "--total", "200"],
        );
        assert_eq!(
            requests(&report, "lease-keepalive"),
            200,
            "[{}]",
            target.name
        );
        let leases = runtime().block_on(async {
            let mut client = connect(&target.endpoint).await.unwrap();
            client.leases().await.unwrap().leases().len()
        });
        assert_eq!(leases, 4, "[{}]", target.name);
    }
}

#[test]
fn duration_and_rate_run_open_loop() {
    let target = start_metastore();
    let report = loadgen_json(
        &target,
        &["--clients", "4", "put", "--duration", "1s", "--rate", "200"],
    );
    let done = requests(&report, "put");
    // The schedule offers exactly 200 requests due within the second.
    assert_eq!(done, 200);
    let (revision, _) = revision_and_count(&target, b"");
    assert_eq!(revision, 201);
}

#[test]
fn plan_writes_table_and_chart() {
    let target = start_metastore();
    let directory = tempfile::tempdir().unwrap();
    let table = directory.path().join("plan.md");
    let chart = directory.path().join("plan.svg");
    let output = loadgen(
        &target,
        &[
            "--clients",
            "4",
            "plan",
            "--slo",
            "p99=2s",
            "--start-rate",
            "50",
            "--step-factor",
            "2",
            "--max-rate",
            "200",
            "--step-duration",
            "300ms",
            "--table",
            table.to_str().unwrap(),
            "--chart",
            chart.to_str().unwrap(),
            "range",
            "foo",
        ],
    );
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("Highest sustainable throughput"),
        "{stdout}"
    );
    let table = read(&table);
    // Rates 50, 100 and 200 all meet a 2 s objective.
    for rate in ["| 50 |", "| 100 |", "| 200 |"] {
        assert!(table.contains(rate), "missing {rate} in {table}");
    }
    assert!(!table.contains("broken"), "{table}");
    assert!(read(&chart).starts_with("<svg"));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

#[test]
fn bad_input_gets_a_clear_error() {
    let target = start_metastore();
    let output = loadgen(
        &target,
        &["put", "--key-size", "1", "--key-space-size", "100000"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--key-size 1 is too small"));

    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--endpoints",
            &format!("127.0.0.1:{}", free_port()),
            "put",
            "--total",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("connect"));

    let output = loadgen(&target, &["watch", "--val-size", "4"]);
    assert_eq!(output.status.code(), Some(2));
}
