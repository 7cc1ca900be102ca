//! Runs the real `etcdctl` (API v3) against a fresh etcd and a fresh MetaStore
//! and compares what it prints. Header ids/terms are normalized in JSON and
//! "fields" output; for failing commands only etcdctl's `Error:` lines are
//! compared (its retry warnings contain timestamps and addresses).

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{EtcdServer, MetastoreServer, line_diff, require_tool};
use serde_json::Value;

#[derive(Debug, PartialEq)]
struct CtlOutput {
    success: bool,
    stdout: String,
    errors: Vec<String>,
}

/// Runs `etcdctl --endpoints ENDPOINT args...` with optional stdin.
fn etcdctl_raw(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = common::etcdctl_command(endpoint, args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn etcdctl");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        si.write_all(input.as_bytes()).unwrap();
    }
    // etcdctl has its own timeouts; this is just a guard against hangs.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Drops cluster_id / member_id / raft_term wherever they appear (etcd's JSON
/// omits zero fields, so "absent" and "0" must normalize to the same thing).
fn normalize_json(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !matches!(k.as_str(), "cluster_id" | "member_id" | "raft_term"));
            m.values_mut().for_each(normalize_json);
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_json),
        _ => {}
    }
}

fn normalize_stdout(args: &[&str], stdout: &str) -> String {
    let json = args.windows(2).any(|w| w == ["-w", "json"]) || args.contains(&"--write-out=json");
    let fields = args.windows(2).any(|w| w == ["-w", "fields"]);
    if json {
        // One JSON document per line (txn prints one, get prints one).
        return stdout
            .lines()
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(mut v) => {
                    normalize_json(&mut v);
                    serde_json::to_string_pretty(&v).unwrap()
                }
                Err(_) => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    if fields {
        return stdout
            .lines()
            .map(|l| {
                for f in ["\"ClusterID\"", "\"MemberID\"", "\"RaftTerm\""] {
                    if l.starts_with(f) {
                        return format!("{f} : 0");
                    }
                }
                l.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    stdout.to_string()
}

fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> CtlOutput {
    let (success, stdout, stderr) = etcdctl_raw(endpoint, args, stdin);
    CtlOutput {
        success,
        stdout: normalize_stdout(args, &stdout),
        errors: stderr
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .map(|l| l.to_string())
            .collect(),
    }
}

struct Step {
    args: Vec<&'static str>,
    stdin: Option<&'static str>,
    /// What etcd is expected to do (sanity check of the script itself).
    expect_success: bool,
}

fn s(args: &[&'static str]) -> Step {
    Step {
        args: args.to_vec(),
        stdin: None,
        expect_success: true,
    }
}

fn fails(args: &[&'static str]) -> Step {
    Step {
        args: args.to_vec(),
        stdin: None,
        expect_success: false,
    }
}

fn txn(stdin: &'static str) -> Step {
    Step {
        args: vec!["txn", "-i=false"],
        stdin: Some(stdin),
        expect_success: true,
    }
}

fn txn_json(stdin: &'static str) -> Step {
    Step {
        args: vec!["txn", "-i=false", "-w", "json"],
        stdin: Some(stdin),
        expect_success: true,
    }
}

#[test]
fn etcdctl_output_matches_etcd() {
    if !require_tool("etcdctl") {
        return;
    }
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    // DIFF_SELF_CHECK=1: compare against a second etcd (validates the script).
    let (_guard, other_ep, other_name): (Box<dyn std::any::Any>, String, &str) =
        if std::env::var_os("DIFF_SELF_CHECK").is_some() {
            let e = EtcdServer::start().unwrap();
            let ep = e.endpoint();
            (Box::new(e), ep, "etcd#2")
        } else {
            let m = MetastoreServer::start(&[]);
            let ep = m.endpoint();
            (Box::new(m), ep, "metastore")
        };
    let steps: Vec<Step> = vec![
        s(&["put", "foo", "bar"]),   // rev 2
        s(&["put", "foo2", "bar2"]), // 3
        s(&["put", "p/a", "1"]),     // 4
        s(&["put", "p/b", "2"]),     // 5
        s(&["put", "p/c", "3"]),     // 6
        s(&["put", "p/b", "22"]),    // 7
        s(&["put", "q", "outside"]), // 8
        s(&["get", "foo"]),
        s(&["get", "missing"]),
        s(&["get", "--prefix", "p/"]),
        s(&["get", "--prefix", "p"]),
        s(&["get", "--from-key", "p/b"]),
        s(&["get", "--from-key", ""]),
        s(&["get", "p/a", "p/c"]),
        s(&["get", "--limit", "2", "--prefix", "p/"]),
        s(&[
            "get",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "--prefix",
            "p/",
        ]),
        s(&[
            "get",
            "--sort-by=MODIFY",
            "--order=ASCEND",
            "--prefix",
            "p/",
        ]),
        s(&[
            "get",
            "--sort-by=VALUE",
            "--order=DESCEND",
            "--prefix",
            "p/",
        ]),
        s(&["get", "--sort-by=VERSION", "--prefix", "p/"]),
        s(&[
            "get",
            "--sort-by=CREATE",
            "--order=DESCEND",
            "--prefix",
            "p/",
        ]),
        s(&["get", "--sort-by=KEY", "--order=DESCEND", "--prefix", "p/"]),
        s(&["get", "--order=DESCEND", "--prefix", "p/", "--limit", "2"]),
        s(&["get", "--rev", "5", "--prefix", "p/"]),
        s(&["get", "--rev", "1", "--prefix", "p/"]),
        fails(&["get", "--rev", "100", "foo"]),
        s(&["get", "--keys-only", "--prefix", "p/"]),
        s(&["get", "--print-value-only", "--prefix", "p/"]),
        s(&["get", "--consistency=s", "foo"]),
        s(&["get", "-w", "json", "foo"]),
        s(&["get", "-w", "json", "--prefix", "p/"]),
        s(&["get", "-w", "json", "missing"]),
        s(&["get", "-w", "json", "--limit", "1", "--prefix", "p/"]),
        s(&["get", "-w", "json", "--rev", "4", "--prefix", "p/"]),
        s(&["get", "-w", "fields", "p/b"]),
        s(&["put", "-w", "json", "--prev-kv", "foo", "baz"]), // 9
        s(&["put", "--prev-kv", "foo", "qux"]),               // 10
        s(&["put", "--ignore-value", "foo"]),                 // 11
        fails(&["put", "--ignore-value", "nokey"]),
        s(&["put", "--ignore-lease", "foo", "withlease"]), // 12
        fails(&["put", "--lease=1234", "foo", "x"]),
        s(&["get", "-w", "json", "foo"]),
        s(&["del", "foo2"]), // 13
        s(&["del", "foo2"]),
        s(&["del", "-w", "json", "missing"]),
        s(&["put", "d/1", "a"]),         // 14
        s(&["put", "d/2", "b"]),         // 15
        s(&["put", "d/3", "c"]),         // 16
        s(&["del", "--prev-kv", "d/1"]), // 17
        s(&["del", "--prefix", "d/"]),   // 18
        s(&["del", "d/1", "d/9"]),
        s(&["get", "--prefix", "d/"]),
        s(&["put", "e/1", "a"]),                                  // 19
        s(&["put", "e/2", "b"]),                                  // 20
        s(&["del", "-w", "json", "--prev-kv", "--prefix", "e/"]), // 21
        txn(
            "value(\"p/a\") = \"1\"\n\nput p/a won\nput t/x 1\nget --prefix p/\n\nput p/a lost\n\n",
        ), // 22
        txn("mod(\"p/a\") < \"5\"\n\nput p/a won\n\nput t/y failed\ndel p/c\nget --prefix p/\n\n"), // 23
        txn("version(\"p/b\") = \"2\"\ncreate(\"p/b\") = \"5\"\n\nget p/b\n\n\n"),
        txn("value(\"nokey\") != \"x\"\n\nput t/z never\n\nget nokey\n\n"),
        txn("\nput t/1 a\nput t/2 b\n\n\n"), // 24
        txn(
            "c(\"t/1\") > \"0\"\nver(\"t/2\") = \"1\"\nm(\"t/1\") = \"24\"\n\ndel --prefix t/\n\n\n",
        ), // 25
        txn_json("val(\"p/a\") = \"lost\"\n\nget p/a\n\nput p/a viajson\nget --prefix p\n\n"), // 26
        Step {
            args: vec!["txn", "-i=false"],
            stdin: Some("\nput dup 1\nput dup 2\n\n\n"),
            expect_success: false,
        },
        s(&["get", "--prefix", ""]),
        s(&["get", "-w", "json", "--prefix", "", "--keys-only"]),
        s(&["compaction", "5"]),
        fails(&["compaction", "5"]),
        fails(&["compaction", "3"]),
        fails(&["compaction", "1000"]),
        fails(&["get", "--rev", "4", "--prefix", "p/"]),
        s(&["get", "--rev", "5", "--prefix", "p/"]),
        s(&["compaction", "--physical", "10"]),
        s(&["get", "-w", "json", "--rev", "10", "p/a"]),
        s(&["get", "--prefix", "p/"]),
    ];

    let mut failures = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let e = etcdctl(&etcd.endpoint(), &step.args, step.stdin);
        let m = etcdctl(&other_ep, &step.args, step.stdin);
        let name = format!(
            "step #{i}: etcdctl {}{}",
            step.args.join(" "),
            step.stdin
                .map(|x| format!(" <<< {x:?}"))
                .unwrap_or_default()
        );
        if std::env::var_os("ETCDCTL_TEST_VERBOSE").is_some() {
            eprintln!("{name}\n  etcd: {e:?}");
        }
        if e.success != step.expect_success {
            failures.push(format!("SCRIPT {name}: etcd gave {e:#?}"));
        }
        if e != m {
            failures.push(format!(
                "{name}: output differs\n{}",
                line_diff(&format!("{e:#?}"), &format!("{m:#?}"), "etcd", other_name)
            ));
        }
    }
    eprintln!(
        "{} etcdctl steps compared, {} difference(s)",
        steps.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} difference(s) between etcdctl against etcd and against {other_name}:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn etcdctl_endpoint_and_member_commands() {
    if !require_tool("etcdctl") {
        return;
    }
    let ms = MetastoreServer::start(&[]);
    let ep = ms.endpoint();
    let (ok, _, err) = etcdctl_raw(&ep, &["put", "x", "1"], None);
    assert!(ok, "put failed: {err}");

    // endpoint health
    let (ok, out, err) = etcdctl_raw(&ep, &["endpoint", "health"], None);
    assert!(ok, "endpoint health failed:\nstdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!("{ep} is healthy")) || err.contains(&format!("{ep} is healthy")),
        "unexpected endpoint health output:\nstdout: {out}\nstderr: {err}"
    );

    // endpoint status (table form and JSON form)
    let (ok, out, err) = etcdctl_raw(&ep, &["endpoint", "status"], None);
    assert!(ok, "endpoint status failed:\nstdout: {out}\nstderr: {err}");
    assert!(
        out.starts_with(&ep),
        "endpoint status should start with the endpoint: {out:?}"
    );
    let (ok, out, err) = etcdctl_raw(&ep, &["endpoint", "status", "-w", "json"], None);
    assert!(
        ok,
        "endpoint status -w json failed:\nstdout: {out}\nstderr: {err}"
    );
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad json {out:?}: {e}"));
    let st = &v[0]["Status"];
    assert_eq!(v[0]["Endpoint"], Value::from(ep.clone()), "{out}");
    assert_eq!(
        st["header"]["revision"],
        Value::from(2),
        "revision after one put: {out}"
    );
    assert!(
        st["leader"].as_u64().unwrap_or(0) != 0,
        "leader must be set: {out}"
    );
    assert_eq!(
        st["leader"], st["header"]["member_id"],
        "single member must be leader (etcdctl shows IS LEADER false otherwise): {out}"
    );
    assert!(
        st["version"].as_str().is_some_and(|s| !s.is_empty()),
        "version: {out}"
    );
    let (ok, out, err) = etcdctl_raw(&ep, &["endpoint", "status", "-w", "table"], None);
    assert!(
        ok,
        "endpoint status -w table failed:\nstdout: {out}\nstderr: {err}"
    );
    assert!(out.contains("IS LEADER"), "{out}");

    // --cluster: endpoints come from MemberList's clientURLs.
    for cmd in [
        &["endpoint", "health", "--cluster"][..],
        &["endpoint", "status", "--cluster"][..],
    ] {
        let (ok, out, err) = etcdctl_raw(&ep, cmd, None);
        assert!(ok, "etcdctl {cmd:?} failed:\nstdout: {out}\nstderr: {err}");
        assert!(
            out.contains(&ep) || err.contains(&ep),
            "etcdctl {cmd:?} should mention {ep}:\nstdout: {out}\nstderr: {err}"
        );
    }

    // member list
    let (ok, out, err) = etcdctl_raw(&ep, &["member", "list"], None);
    assert!(ok, "member list failed:\nstdout: {out}\nstderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one member expected: {out:?}");
    // "<hex id>, started, <name>, <peer urls>, <client urls>, <is learner>"
    let cols: Vec<&str> = lines[0].split(", ").collect();
    assert!(cols.len() >= 5, "member list line: {out:?}");
    assert_eq!(cols[1], "started", "{out:?}");
    assert_eq!(cols[2], "default", "member name is --name: {out:?}");
    assert_eq!(
        cols[4], ep,
        "client URL is --advertise-client-urls: {out:?}"
    );
    let (ok, out, err) = etcdctl_raw(&ep, &["member", "list", "-w", "json"], None);
    assert!(
        ok,
        "member list -w json failed:\nstdout: {out}\nstderr: {err}"
    );
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad json {out:?}: {e}"));
    let members = v["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {out}"));
    assert_eq!(members.len(), 1, "{out}");
    assert_eq!(members[0]["clientURLs"], serde_json::json!([ep]), "{out}");
    assert_eq!(members[0]["ID"], v["header"]["member_id"], "{out}");

    // endpoint hashkv is not required; version check is sane.
    let (ok, out, err) = etcdctl_raw(&ep, &["get", "x", "--print-value-only"], None);
    assert!(ok && out == "1\n", "get after status: {out:?} {err}");
}
