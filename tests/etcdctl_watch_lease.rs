//! Scripted runs of the real `etcdctl` (API v3) against the server under
//! test for the streaming and session commands: `watch` (key, range,
//! `--prefix`, `--rev`, `--prev-kv`, interactive with `progress`, `-w json`,
//! compacted revisions), `lease grant/keep-alive/timetolive/revoke/list`,
//! `put --lease`, `lock` (holder, waiter, exec form) and `elect` (candidates
//! and `-l` observer).
//!
//! The expected outputs are what etcd 3.4 prints (`TEST_AGAINST_ETCD=1` runs
//! the same scripts against a real etcd). Lease ids, which legitimately
//! differ between servers, are replaced by `<L1>`, `<L2>`, ... in order of
//! first appearance; everything else (revisions included: every scenario
//! starts on a fresh server) must match exactly.
//!
//! Note: `etcdctl lock` and `etcdctl elect` do not call the v3lock /
//! v3election gRPC services; they run the clientv3 `concurrency` recipes
//! over KV, Lease and Watch (see the report in each test).

mod common;
mod wl_support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::require_tool;
use serde_json::Value;
use wl_support::{server_name, start_server};

/// How long a background etcdctl may take to print what is expected.
const WAIT: Duration = Duration::from_secs(15);

/// Output of a finished etcdctl.
#[derive(Debug)]
struct Done {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Done {
    /// etcdctl's `Error:` lines (its retry warnings carry timestamps).
    fn errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .collect()
    }
}

/// Runs etcdctl to completion (bounded).
fn run(endpoint: &str, args: &[&str]) -> Done {
    let mut bg = Bg::spawn(endpoint, args, false);
    bg.wait_exit(Duration::from_secs(30))
}

/// Runs etcdctl and expects exit code 0.
fn run_ok(endpoint: &str, args: &[&str]) -> String {
    let d = run(endpoint, args);
    assert_eq!(
        d.code,
        Some(0),
        "etcdctl {args:?} failed on {}: {d:?}",
        server_name()
    );
    d.stdout
}

/// A background etcdctl whose output is collected as it comes.
struct Bg {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Bg {
    fn spawn(endpoint: &str, args: &[&str], with_stdin: bool) -> Bg {
        let mut cmd = common::etcdctl_command(endpoint, args);
        cmd.stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn etcdctl");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        for (pipe, buf) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                out.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), err.clone()),
        ] {
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut b = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut b) {
                    if n == 0 {
                        break;
                    }
                    buf.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&b[..n]));
                }
            });
        }
        Bg {
            what: format!("etcdctl {}", args.join(" ")),
            stdin: child.stdin.take(),
            child,
            out,
            err,
            status: None,
        }
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Writes a line to its stdin (interactive watch).
    fn send_line(&mut self, line: &str) {
        let si = self.stdin.as_mut().expect("spawned without stdin");
        writeln!(si, "{line}").expect("write to etcdctl stdin");
        si.flush().unwrap();
    }

    /// Waits until `pred(stdout)` holds; panics with the output otherwise.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.stdout();
            if pred(&out) {
                return out;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader threads drain.
                std::thread::sleep(Duration::from_millis(100));
                let out = self.stdout();
                if pred(&out) {
                    return out;
                }
                panic!(
                    "{} exited ({st}) before {what} on {}.\nstdout:\n{out}\nstderr:\n{}",
                    self.what,
                    server_name(),
                    self.stderr()
                );
            }
            let err = self.stderr();
            if err.contains("watch was canceled") || err.lines().any(|l| l.starts_with("Error:")) {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{}: failed before {what} on {}.\nstdout so far:\n{}\nstderr:\n{}",
                    self.what,
                    server_name(),
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no {what} within {WAIT:?} on {}.\nstdout so far:\n{out}\nstderr:\n{}",
                    self.what,
                    server_name(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT (what Ctrl-C does; lock/elect release on it).
    fn interrupt(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> Done {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {limit:?} on {}.\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    server_name(),
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.status = Some(status);
        // The pipes close with the process; give the readers a moment.
        std::thread::sleep(Duration::from_millis(100));
        Done {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Replaces lease ids by `<L1>`, `<L2>`, ... in order of first appearance.
/// Ids appear as 16 hex digits (`lease grant`, `timetolive`...), as
/// unpadded hex after a lock/election prefix (`mylock/694d7a...`), and as
/// decimal in JSON (`"lease":7587...`, `"id":...`, `"ID":...`).
#[derive(Default)]
struct LeaseNames {
    names: HashMap<u64, String>,
}

impl LeaseNames {
    fn name(&mut self, id: u64) -> String {
        let n = self.names.len() + 1;
        self.names
            .entry(id)
            .or_insert_with(|| format!("<L{n}>"))
            .clone()
    }

    /// Registers the ids of a text output first seen in this order.
    fn normalize(&mut self, text: &str, key_prefixes: &[&str]) -> String {
        let mut out = String::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            // unpadded hex after a lock/election key prefix
            if let Some(p) = key_prefixes
                .iter()
                .find(|p| text[i..].starts_with(**p) && (i == 0 || !is_word(b[i - 1])))
            {
                out.push_str(p);
                i += p.len();
                let j = hex_run_end(b, i);
                if j > i {
                    let id = u64::from_str_radix(&text[i..j], 16).unwrap();
                    out.push_str(&self.name(id));
                    i = j;
                }
                continue;
            }
            // 16 hex digits standing alone
            if (i == 0 || !is_word(b[i - 1])) && hex_run_end(b, i) == i + 16 {
                let end = i + 16;
                if end == b.len() || !is_word(b[end]) {
                    let id = u64::from_str_radix(&text[i..end], 16).unwrap();
                    out.push_str(&self.name(id));
                    i = end;
                    continue;
                }
            }
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
        out
    }

    /// Rewrites a JSON value: lease ids (decimal) under "lease", "id", "ID";
    /// header ids and raft terms dropped.
    fn normalize_json(&mut self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| !matches!(k.as_str(), "cluster_id" | "member_id" | "raft_term"));
                for (k, val) in m.iter_mut() {
                    if matches!(k.as_str(), "lease" | "id" | "ID")
                        && let Some(id) = val.as_i64()
                    {
                        *val = Value::String(self.name(id as u64));
                        continue;
                    }
                    self.normalize_json(val);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.normalize_json(x)),
            _ => {}
        }
    }

    /// One JSON document per line, normalized, compact.
    fn json_lines(&mut self, text: &str) -> String {
        text.lines()
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(mut v) => {
                    self.normalize_json(&mut v);
                    v.to_string()
                }
                Err(_) => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn hex_run_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b'0'..=b'9' | b'a'..=b'f') {
        i += 1;
    }
    i
}

fn expect_eq(what: &str, got: &str, want: &str) {
    assert!(
        got == want,
        "{what} on {}:\n{}",
        server_name(),
        common::line_diff(want, got, "expected (etcd 3.4)", "got")
    );
}

fn setup() -> Option<(common::TestServer, String)> {
    if !require_tool("etcdctl") {
        return None;
    }
    start_server(&[])
}

// ---------------------------------------------------------------------------
// watch
// ---------------------------------------------------------------------------

/// The write script of the watch scenario (fresh server: revisions 2..=8).
fn watch_writes(ep: &str) {
    for args in [
        &["put", "foo", "1"][..], // 2
        &["put", "fo", "2"],      // 3
        &["put", "foo", "3"],     // 4
        &["put", "fop", "4"],     // 5
        &["del", "foo"],          // 6
    ] {
        run_ok(ep, args);
    }
    // 7: one revision, two keys
    let mut txn = Bg::spawn(ep, &["txn"], true);
    txn.send_line("");
    txn.send_line("put foo1 a");
    txn.send_line("put fo b");
    txn.send_line("");
    txn.send_line("");
    drop(txn.stdin.take());
    let d = txn.wait_exit(Duration::from_secs(30));
    expect_eq("txn output", &d.stdout, "SUCCESS\n\nOK\n\nOK\n");
    // 8: one revision, three deletes (fo, foo1, fop)
    assert_eq!(run_ok(ep, &["del", "--prefix", "fo"]), "3\n");
}

#[test]
fn etcdctl_watch() {
    let Some((_server, ep)) = setup() else {
        return;
    };
    let ep = ep.as_str();
    // From revision 2 on a fresh store: the output does not depend on when
    // these watchers get going.
    let mut w_key = Bg::spawn(ep, &["watch", "--rev", "2", "foo"], false);
    let mut w_prefix = Bg::spawn(
        ep,
        &["watch", "--rev", "2", "--prefix", "fo", "--prev-kv"],
        false,
    );
    let mut w_range = Bg::spawn(ep, &["watch", "--rev", "2", "foo", "fop"], false);
    // "From now" watchers, interactive: `progress` prints "progress notify:
    // <revision>" once the watch stream answers, i.e. the watch exists.
    let mut w_now = Bg::spawn(ep, &["watch", "-i"], true);
    w_now.send_line("watch --prev-kv foo");
    w_now.send_line("progress");
    w_now.wait_for("progress notify", |o| o.contains("progress notify: 1\n"));
    let mut w_json = Bg::spawn(ep, &["-w", "json", "watch", "-i"], true);
    w_json.send_line("watch --prefix fop");
    w_json.send_line("progress");
    w_json.wait_for("progress notify", |o| o.contains("progress notify: 1\n"));

    watch_writes(ep);

    let want_key = "PUT\nfoo\n1\nPUT\nfoo\n3\nDELETE\nfoo\n\n";
    let out = w_key.wait_for("3 events", |o| o.len() >= want_key.len());
    expect_eq("etcdctl watch --rev 2 foo", &out, want_key);

    let want_prefix = "\
PUT\nfoo\n1\n\
PUT\nfo\n2\n\
PUT\nfoo\n1\nfoo\n3\n\
PUT\nfop\n4\n\
DELETE\nfoo\n3\nfoo\n\n\
PUT\nfoo1\na\n\
PUT\nfo\n2\nfo\nb\n\
DELETE\nfo\nb\nfo\n\n\
DELETE\nfoo1\na\nfoo1\n\n\
DELETE\nfop\n4\nfop\n\n";
    let out = w_prefix.wait_for("10 events", |o| o.len() >= want_prefix.len());
    expect_eq(
        "etcdctl watch --rev 2 --prefix fo --prev-kv",
        &out,
        want_prefix,
    );

    let want_range = "PUT\nfoo\n1\nPUT\nfoo\n3\nDELETE\nfoo\n\nPUT\nfoo1\na\nDELETE\nfoo1\n\n";
    let out = w_range.wait_for("5 events", |o| o.len() >= want_range.len());
    expect_eq("etcdctl watch --rev 2 foo fop (range)", &out, want_range);

    let want_now = "progress notify: 1\nPUT\nfoo\n1\nPUT\nfoo\n1\nfoo\n3\nDELETE\nfoo\n3\nfoo\n\n";
    let out = w_now.wait_for("3 events", |o| o.len() >= want_now.len());
    expect_eq(
        "etcdctl watch -i: watch --prev-kv foo; progress",
        &out,
        want_now,
    );
    // Another progress request, after the writes: the current revision.
    w_now.send_line("progress");
    let out = w_now.wait_for("second progress", |o| o.ends_with("progress notify: 8\n"));
    expect_eq(
        "second progress",
        &out,
        &format!("{want_now}progress notify: 8\n"),
    );

    // JSON: one line per response; a live watcher gets one response per
    // revision whose header revision is the event's.
    let mut names = LeaseNames::default();
    let want_json = [
        r#"progress notify: 1"#,
        r#"{"Canceled":false,"CompactRevision":0,"Created":false,"Events":[],"Header":{"revision":1}}"#,
        r#"{"Canceled":false,"CompactRevision":0,"Created":false,"Events":[{"kv":{"create_revision":5,"key":"Zm9w","mod_revision":5,"value":"NA==","version":1}}],"Header":{"revision":5}}"#,
        r#"{"Canceled":false,"CompactRevision":0,"Created":false,"Events":[{"kv":{"key":"Zm9w","mod_revision":8},"type":1}],"Header":{"revision":8}}"#,
    ]
    .join("\n");
    let out = w_json.wait_for("2 event responses", |o| o.lines().count() >= 4);
    expect_eq(
        "etcdctl -w json watch -i: watch --prefix fop; progress",
        &names.json_lines(&out),
        &want_json,
    );

    // Compacted start revision: canceled with the compaction error.
    assert_eq!(run_ok(ep, &["compact", "4"]), "compacted revision 4\n");
    let d = run(ep, &["watch", "--rev", "2", "foo"]);
    assert_eq!(
        (d.code, d.stdout.as_str()),
        (Some(5), ""),
        "watch from a compacted revision exits with 5 (ExitInterrupted), prints nothing: {d:?}"
    );
    assert!(
        d.stderr.contains(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n"
        ),
        "stderr: {}",
        d.stderr
    );
    assert_eq!(d.errors(), ["Error: watch is canceled by the server"]);
    // From the compaction revision itself: fine.
    let mut w = Bg::spawn(ep, &["watch", "--rev", "4", "foo"], false);
    let want = "PUT\nfoo\n3\nDELETE\nfoo\n\n";
    let out = w.wait_for("2 events", |o| o.len() >= want.len());
    expect_eq("etcdctl watch --rev 4 foo (compacted at 4)", &out, want);
    // A future revision waits for it.
    let mut w = Bg::spawn(ep, &["watch", "--rev", "10", "--prefix", ""], false);
    run_ok(ep, &["put", "a", "9"]); // 9
    run_ok(ep, &["put", "b", "10"]); // 10
    let want = "PUT\nb\n10\n";
    let out = w.wait_for("1 event", |o| o.len() >= want.len());
    expect_eq("etcdctl watch --rev 10 --prefix ''", &out, want);
    for mut bg in [w_key, w_prefix, w_range, w_now, w_json, w] {
        bg.interrupt();
        bg.wait_exit(Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------
// lease
// ---------------------------------------------------------------------------

/// `remaining(Ns)` / `"ttl":N` vary with timing: checks `lo <= N <= hi` and
/// replaces N by `*`.
fn mask_remaining(text: &str, lo: i64, hi: i64) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(p) = rest.find("remaining(") {
        let (head, tail) = rest.split_at(p + "remaining(".len());
        out.push_str(head);
        let end = tail.find("s)").expect("remaining(...s)");
        let n: i64 = tail[..end].parse().expect("remaining seconds");
        assert!(
            (lo..=hi).contains(&n),
            "remaining({n}s) outside {lo}..={hi}: {text}"
        );
        out.push('*');
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// "attached keys([b a])" -> "attached keys([a b])": etcd lists a lease's
/// keys in map order.
fn sort_attached(text: &str) -> String {
    let Some(p) = text.find("attached keys([") else {
        return text.to_string();
    };
    let start = p + "attached keys([".len();
    let end = start + text[start..].find("])").unwrap();
    let mut keys: Vec<&str> = text[start..end].split(' ').collect();
    keys.sort();
    format!("{}{}{}", &text[..start], keys.join(" "), &text[end..])
}

#[test]
fn etcdctl_lease() {
    let Some((_server, ep)) = setup() else {
        return;
    };
    let ep = ep.as_str();
    let mut n = LeaseNames::default();
    let mut norm = |s: &str| n.normalize(s, &[]);

    let out = run_ok(ep, &["lease", "grant", "60"]);
    let l1 = out.split_whitespace().nth(1).unwrap().to_string();
    expect_eq(
        "lease grant 60",
        &norm(&out),
        "lease <L1> granted with TTL(60s)\n",
    );
    let out = run_ok(ep, &["lease", "grant", "6"]);
    let l2 = out.split_whitespace().nth(1).unwrap().to_string();
    expect_eq(
        "lease grant 6",
        &norm(&out),
        "lease <L2> granted with TTL(6s)\n",
    );
    let lease_flag = format!("--lease={l1}");
    expect_eq(
        "put --lease",
        &run_ok(ep, &["put", &lease_flag, "k1", "v1"]),
        "OK\n",
    );
    expect_eq(
        "put --lease",
        &run_ok(ep, &["put", &lease_flag, "k2", "v2"]),
        "OK\n",
    );
    let out = run_ok(ep, &["get", "k1", "-w", "json"]);
    expect_eq(
        "get -w json of a key with a lease",
        &n.json_lines(&out),
        r#"{"count":1,"header":{"revision":3},"kvs":[{"create_revision":2,"key":"azE=","lease":"<L1>","mod_revision":2,"value":"djE=","version":1}]}"#,
    );
    let mut norm = |s: &str| n.normalize(s, &[]);

    let out = run_ok(ep, &["lease", "timetolive", &l1]);
    expect_eq(
        "lease timetolive",
        &norm(&mask_remaining(&out, 55, 60)),
        "lease <L1> granted with TTL(60s), remaining(*s)\n",
    );
    let out = run_ok(ep, &["lease", "timetolive", "--keys", &l1]);
    expect_eq(
        "lease timetolive --keys",
        &norm(&sort_attached(&mask_remaining(&out, 55, 60))),
        "lease <L1> granted with TTL(60s), remaining(*s), attached keys([k1 k2])\n",
    );
    let out = run_ok(ep, &["lease", "timetolive", "--keys", "-w", "json", &l1]);
    let mut v: Value = serde_json::from_str(out.trim()).expect("json");
    let ttl = v["ttl"].as_i64().unwrap();
    assert!((55..=60).contains(&ttl), "ttl {ttl}");
    v["ttl"] = Value::from("*");
    v["keys"]
        .as_array_mut()
        .unwrap()
        .sort_by_key(|k| k.to_string());
    n.normalize_json(&mut v);
    expect_eq(
        "lease timetolive --keys -w json",
        &v.to_string(),
        r#"{"granted-ttl":60,"id":"<L1>","keys":["azE=","azI="],"revision":3,"ttl":"*"}"#,
    );
    let mut norm = |s: &str| n.normalize(s, &[]);

    let out = run_ok(ep, &["lease", "list"]);
    let mut lines: Vec<String> = out.lines().map(|l| l.to_string()).collect();
    lines[1..].sort_by_key(|l| (l != &l1, l.clone()));
    expect_eq(
        "lease list",
        &norm(&(lines.join("\n") + "\n")),
        "found 2 leases\n<L1>\n<L2>\n",
    );
    let out = run_ok(ep, &["lease", "keep-alive", "--once", &l1]);
    expect_eq(
        "lease keep-alive --once",
        &norm(&out),
        "lease <L1> keepalived with TTL(60)\n",
    );
    let out = run_ok(ep, &["lease", "keep-alive", "--once", "-w", "json", &l1]);
    expect_eq(
        "lease keep-alive --once -w json",
        &n.json_lines(&out),
        r#"{"ID":"<L1>","TTL":60,"revision":3}"#,
    );
    let mut norm = |s: &str| n.normalize(s, &[]);

    // Streaming keep-alive of L2 (TTL 6: the client renews every 2 s); it
    // ends by itself once the lease is revoked.
    let mut ka = Bg::spawn(ep, &["lease", "keep-alive", &l2], false);
    ka.wait_for("two keep-alives", |o| o.lines().count() >= 2);
    let out = run_ok(ep, &["lease", "revoke", &l2]);
    expect_eq("lease revoke", &norm(&out), "lease <L2> revoked\n");
    let d = ka.wait_exit(WAIT);
    assert_eq!(d.code, Some(0), "keep-alive after revoke: {d:?}");
    let lines: Vec<String> = norm(&d.stdout).lines().map(|l| l.to_string()).collect();
    let (last, keepalives) = lines.split_last().unwrap();
    assert!(keepalives.len() >= 2, "{lines:?}");
    for l in keepalives {
        expect_eq(
            "streaming keep-alive",
            l,
            "lease <L2> keepalived with TTL(6)",
        );
    }
    expect_eq(
        "end of streaming keep-alive",
        last,
        "lease <L2> expired or revoked.",
    );

    let out = run_ok(ep, &["lease", "revoke", &l1]);
    expect_eq("lease revoke", &norm(&out), "lease <L1> revoked\n");
    expect_eq(
        "get --prefix k after revoke",
        &run_ok(ep, &["get", "--prefix", "k"]),
        "",
    );
    let out = run_ok(ep, &["lease", "timetolive", &l1]);
    expect_eq(
        "timetolive of a revoked lease",
        &norm(&out),
        "lease <L1> already expired\n",
    );
    let out = run_ok(ep, &["lease", "timetolive", "--keys", "-w", "json", &l1]);
    expect_eq(
        "timetolive -w json of a revoked lease",
        &n.json_lines(&out),
        r#"{"granted-ttl":0,"id":"<L1>","keys":null,"revision":4,"ttl":-1}"#,
    );
    expect_eq(
        "lease list",
        &run_ok(ep, &["lease", "list"]),
        "found 0 leases\n",
    );

    let d = run(ep, &["lease", "revoke", &l1]);
    assert_eq!(d.code, Some(1), "{d:?}");
    assert_eq!(
        d.errors(),
        ["Error: failed to revoke lease (etcdserver: requested lease not found)"]
    );
    let d = run(ep, &["lease", "keep-alive", "--once", &l1]);
    assert_eq!(d.code, Some(2), "{d:?}");
    assert_eq!(d.errors(), ["Error: etcdserver: requested lease not found"]);
    let d = run(ep, &["lease", "keep-alive", &l1]);
    assert_eq!(d.code, Some(0), "{d:?}");
    assert_eq!(
        n.normalize(&d.stdout, &[]),
        "lease <L1> expired or revoked.\n",
        "streaming keep-alive of a revoked lease"
    );
    let d = run(ep, &["put", &lease_flag, "k3", "v3"]);
    assert_eq!(d.code, Some(1), "{d:?}");
    assert_eq!(d.errors(), ["Error: etcdserver: requested lease not found"]);
}

// ---------------------------------------------------------------------------
// lock
// ---------------------------------------------------------------------------

fn keys_under(ep: &str, prefix: &str) -> Vec<String> {
    run_ok(ep, &["get", "--prefix", prefix, "--keys-only"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.to_string())
        .collect()
}

fn wait_keys(ep: &str, prefix: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let keys = keys_under(ep, prefix);
        if keys.len() == n {
            return keys;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} keys under {prefix} on {}, have {keys:?}",
            server_name()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn etcdctl_lock() {
    let Some((_server, ep)) = setup() else {
        return;
    };
    let ep = ep.as_str();
    let mut n = LeaseNames::default();
    let pfx = ["mylock/"];

    // The holder prints its key (mylock/<lease id in hex>) and an empty value.
    let mut holder = Bg::spawn(ep, &["lock", "mylock"], false);
    let out = holder.wait_for("the lock key", |o| {
        o.lines().count() >= 1 && o.ends_with("\n\n")
    });
    expect_eq("lock holder", &n.normalize(&out, &pfx), "mylock/<L1>\n\n");
    // A second locker queues (its key exists) but must not get the lock.
    let mut waiter = Bg::spawn(ep, &["lock", "mylock"], false);
    let keys = wait_keys(ep, "mylock/", 2);
    assert_eq!(
        n.normalize(&keys.join("\n"), &pfx),
        "mylock/<L1>\nmylock/<L2>",
        "lock keys"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        waiter.stdout(),
        "",
        "the second `etcdctl lock` acquired the lock while the first holds it"
    );
    // Both keys: the holder's created first; each on its session's lease.
    let json = run_ok(ep, &["get", "--prefix", "mylock/", "-w", "json"]);
    expect_eq(
        "lock keys (json)",
        &n.json_lines(&json),
        r#"{"count":2,"header":{"revision":3},"kvs":[{"create_revision":2,"key":"bXlsb2NrLzxMMT4=","lease":"<L1>","mod_revision":2,"version":1},{"create_revision":3,"key":"bXlsb2NrLzxMMj4=","lease":"<L2>","mod_revision":3,"version":1}]}"#
            .replace("bXlsb2NrLzxMMT4=", &b64(&keys[0]))
            .replace("bXlsb2NrLzxMMj4=", &b64(&keys[1]))
            .as_str(),
    );
    // The lock session's lease has etcdctl's default TTL (--ttl 10).
    let l1 = keys[0].strip_prefix("mylock/").unwrap();
    let out = run_ok(ep, &["lease", "timetolive", l1]);
    expect_eq(
        "lock session lease",
        &n.normalize(&mask_remaining(&out, 1, 10), &pfx),
        "lease <L1> granted with TTL(10s), remaining(*s)\n",
    );

    // Ctrl-C: the holder deletes its key and exits; the waiter gets the lock.
    holder.interrupt();
    let d = holder.wait_exit(WAIT);
    assert_eq!(d.code, Some(0), "lock holder after SIGINT: {d:?}");
    let out = waiter.wait_for("the lock key", |o| o.ends_with("\n\n"));
    expect_eq("second locker", &n.normalize(&out, &pfx), "mylock/<L2>\n\n");
    assert_eq!(
        n.normalize(&keys_under(ep, "mylock/").join("\n"), &pfx),
        "mylock/<L2>"
    );
    waiter.interrupt();
    assert_eq!(waiter.wait_exit(WAIT).code, Some(0));
    assert!(keys_under(ep, "mylock/").is_empty(), "lock keys left");

    // Exec form: the command runs under the lock with ETCD_LOCK_KEY/REV set;
    // the key is deleted afterwards. Revision 6 is the queue entry's put.
    let out = run_ok(
        ep,
        &[
            "lock",
            "mylock",
            "--",
            "sh",
            "-c",
            "echo key=$ETCD_LOCK_KEY rev=$ETCD_LOCK_REV",
        ],
    );
    expect_eq(
        "lock exec form",
        &n.normalize(&out, &pfx),
        "key=mylock/<L3> rev=6\n",
    );
    assert!(
        keys_under(ep, "mylock/").is_empty(),
        "lock key left by exec form"
    );
    let d = run(ep, &["lock", "mylock", "--", "sh", "-c", "exit 3"]);
    assert_eq!(d.code, Some(1), "{d:?}");
    assert_eq!(d.errors(), ["Error: exit status 3"]);

    // Exec form waits for a holder too.
    let mut holder = Bg::spawn(ep, &["lock", "--ttl", "5", "mylock"], false);
    holder.wait_for("the lock key", |o| o.ends_with("\n\n"));
    let mut exec = Bg::spawn(ep, &["lock", "mylock", "--", "echo", "ran"], false);
    let keys = wait_keys(ep, "mylock/", 2);
    let l_holder = keys[0].strip_prefix("mylock/").unwrap();
    let out = run_ok(ep, &["lease", "timetolive", l_holder]);
    assert!(out.contains("granted with TTL(5s)"), "--ttl 5: {out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(exec.stdout(), "", "exec ran while the lock was held");
    holder.interrupt();
    holder.wait_exit(WAIT);
    let d = exec.wait_exit(WAIT);
    assert_eq!((d.code, d.stdout.as_str()), (Some(0), "ran\n"), "{d:?}");
    assert!(keys_under(ep, "mylock/").is_empty());
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// elect
// ---------------------------------------------------------------------------

#[test]
fn etcdctl_elect() {
    let Some((_server, ep)) = setup() else {
        return;
    };
    let ep = ep.as_str();
    let mut n = LeaseNames::default();
    let pfx = ["myelection/"];

    let d = run(ep, &["elect", "myelection"]);
    assert_eq!(d.code, Some(128), "{d:?}");
    assert_eq!(d.errors(), ["Error: no proposal argument but -l not set"]);

    // The observer prints each new leader (key, value).
    let mut observer = Bg::spawn(ep, &["elect", "-l", "myelection"], false);
    let mut c1 = Bg::spawn(ep, &["elect", "myelection", "p1"], false);
    let out = c1.wait_for("leadership", |o| o.ends_with("p1\n"));
    // Names in order of appearance: the observer's session lease may be
    // granted before or after c1's, so name c1's first.
    expect_eq(
        "first candidate",
        &n.normalize(&out, &pfx),
        "myelection/<L1>\np1\n",
    );
    let out = observer.wait_for("first leader", |o| o.ends_with("p1\n"));
    expect_eq(
        "observer",
        &n.normalize(&out, &pfx),
        "myelection/<L1>\np1\n",
    );

    let mut c2 = Bg::spawn(ep, &["elect", "myelection", "p2"], false);
    let keys = wait_keys(ep, "myelection/", 2);
    assert_eq!(
        n.normalize(&keys.join("\n"), &pfx),
        "myelection/<L1>\nmyelection/<L2>"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c2.stdout(),
        "",
        "second candidate elected while the first leads"
    );
    // Sessions of `elect` use the default session TTL, 60 s.
    let out = run_ok(
        ep,
        &[
            "lease",
            "timetolive",
            keys[1].strip_prefix("myelection/").unwrap(),
        ],
    );
    expect_eq(
        "candidate session lease",
        &n.normalize(&mask_remaining(&out, 50, 60), &pfx),
        "lease <L2> granted with TTL(60s), remaining(*s)\n",
    );

    // The leader exits (Ctrl-C resigns: deletes its key); the next takes over.
    c1.interrupt();
    let d = c1.wait_exit(WAIT);
    assert_eq!(d.code, Some(0), "{d:?}");
    let out = c2.wait_for("leadership", |o| o.ends_with("p2\n"));
    expect_eq(
        "second candidate",
        &n.normalize(&out, &pfx),
        "myelection/<L2>\np2\n",
    );
    let out = observer.wait_for("leader change", |o| o.ends_with("p2\n"));
    expect_eq(
        "observer after the leader change",
        &n.normalize(&out, &pfx),
        "myelection/<L1>\np1\nmyelection/<L2>\np2\n",
    );
    c2.interrupt();
    assert_eq!(c2.wait_exit(WAIT).code, Some(0));
    assert!(
        keys_under(ep, "myelection/").is_empty(),
        "election keys left"
    );
    std::thread::sleep(Duration::from_millis(300));
    observer.interrupt();
    let d = observer.wait_exit(WAIT);
    assert_eq!(d.code, Some(0), "{d:?}");
    expect_eq(
        "observer output (nothing when there is no leader)",
        &n.normalize(&d.stdout, &pfx),
        "myelection/<L1>\np1\nmyelection/<L2>\np2\n",
    );
}
