//! Differential tests: the same scripted requests go to a fresh real etcd and
//! to a fresh MetaStore; every response (or gRPC error) must be identical
//! after normalizing the fields that legitimately differ (cluster_id,
//! member_id, raft_term in every ResponseHeader, nested ones included).
//!
//! Each section runs against its own pair of fresh servers, so revisions line
//! up (both start at revision 1). All differences of a section are collected
//! and reported together, each with the step name and a line diff.
//!
//! Environment:
//! * `DIFF_SELF_CHECK=1` compares etcd against a second etcd instead of
//!   MetaStore (validates the harness and the normalization).
//! * `CI` set: a missing `etcd` binary is a failure instead of a skip.

mod common;

use std::fmt::Debug;

use bytes::Bytes;
use common::{EtcdServer, GrpcClient, GrpcResult, MetastoreServer, TRANSPORT_ERROR, line_diff};
use metastore::proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request;
use pb::response_op::Response;

const MAX_REQUEST_BYTES: usize = 1_572_864; // etcd's default, 1.5 MiB
const MAX_TXN_OPS: usize = 128; // etcd's default

const RANGE: &str = "/etcdserverpb.KV/Range";
const PUT: &str = "/etcdserverpb.KV/Put";
const DELETE: &str = "/etcdserverpb.KV/DeleteRange";
const TXN: &str = "/etcdserverpb.KV/Txn";
const COMPACT: &str = "/etcdserverpb.KV/Compact";
const STATUS: &str = "/etcdserverpb.Maintenance/Status";
const MEMBER_LIST: &str = "/etcdserverpb.Cluster/MemberList";

// gRPC codes used by etcd.
const INVALID_ARGUMENT: i32 = 3;
const NOT_FOUND: i32 = 5;
const RESOURCE_EXHAUSTED: i32 = 8;
const OUT_OF_RANGE: i32 = 11;

// ---------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------

trait Normalize {
    fn normalize(&mut self);
}

fn norm_header(h: &mut Option<pb::ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

impl Normalize for pb::RangeResponse {
    fn normalize(&mut self) {
        norm_header(&mut self.header);
    }
}
impl Normalize for pb::PutResponse {
    fn normalize(&mut self) {
        norm_header(&mut self.header);
    }
}
impl Normalize for pb::DeleteRangeResponse {
    fn normalize(&mut self) {
        norm_header(&mut self.header);
    }
}
impl Normalize for pb::CompactionResponse {
    fn normalize(&mut self) {
        norm_header(&mut self.header);
    }
}
impl Normalize for pb::TxnResponse {
    fn normalize(&mut self) {
        norm_header(&mut self.header);
        for r in &mut self.responses {
            match &mut r.response {
                Some(Response::ResponseRange(x)) => x.normalize(),
                Some(Response::ResponsePut(x)) => x.normalize(),
                Some(Response::ResponseDeleteRange(x)) => x.normalize(),
                Some(Response::ResponseTxn(x)) => x.normalize(),
                None => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------

fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
}

/// etcd's clientv3.GetPrefixRangeEnd.
fn prefix_end(p: &[u8]) -> Bytes {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    }
}

fn get(k: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(k),
        ..Default::default()
    }
}

fn get_range(k: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}

fn get_prefix(p: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(p),
        range_end: prefix_end(p.as_bytes()),
        ..Default::default()
    }
}

fn get_all() -> pb::RangeRequest {
    get_range("\0", "\0")
}

fn del(k: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: b(k),
        ..Default::default()
    }
}

fn del_range(k: &str, end: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}

fn del_prefix(p: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: b(p),
        range_end: prefix_end(p.as_bytes()),
        ..Default::default()
    }
}

fn op_put(k: &str, v: &str) -> pb::RequestOp {
    op(Request::RequestPut(put(k, v)))
}
fn op_get(r: pb::RangeRequest) -> pb::RequestOp {
    op(Request::RequestRange(r))
}
fn op_del(r: pb::DeleteRangeRequest) -> pb::RequestOp {
    op(Request::RequestDeleteRange(r))
}
fn op_txn(t: pb::TxnRequest) -> pb::RequestOp {
    op(Request::RequestTxn(t))
}
fn op(r: Request) -> pb::RequestOp {
    pb::RequestOp { request: Some(r) }
}

fn txn(
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
    failure: Vec<pb::RequestOp>,
) -> pb::TxnRequest {
    pb::TxnRequest {
        compare,
        success,
        failure,
    }
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: b(key),
        range_end: Bytes::new(),
        target_union: Some(u),
    }
}

/// A compare of `target` against the integer/bytes `v` (the union variant
/// matching the target).
fn cmp_t(key: &str, target: CompareTarget, result: CompareResult, v: i64, s: &str) -> pb::Compare {
    let u = match target {
        CompareTarget::Version => TargetUnion::Version(v),
        CompareTarget::Create => TargetUnion::CreateRevision(v),
        CompareTarget::Mod => TargetUnion::ModRevision(v),
        CompareTarget::Value => TargetUnion::Value(b(s)),
        CompareTarget::Lease => TargetUnion::Lease(v),
    };
    cmp(key, target, result, u)
}

fn rev_of(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map(|h| h.revision).unwrap_or(-1)
}

const TARGETS: [CompareTarget; 5] = [
    CompareTarget::Version,
    CompareTarget::Create,
    CompareTarget::Mod,
    CompareTarget::Value,
    CompareTarget::Lease,
];
const RESULTS: [CompareResult; 4] = [
    CompareResult::Equal,
    CompareResult::NotEqual,
    CompareResult::Greater,
    CompareResult::Less,
];
const SORT_TARGETS: [SortTarget; 5] = [
    SortTarget::Key,
    SortTarget::Version,
    SortTarget::Create,
    SortTarget::Mod,
    SortTarget::Value,
];
const SORT_ORDERS: [SortOrder; 3] = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];

// ---------------------------------------------------------------------------
// The differential driver
// ---------------------------------------------------------------------------

#[allow(dead_code)]
enum Other {
    Meta(MetastoreServer),
    Etcd(EtcdServer),
}

struct Diff {
    section: &'static str,
    etcd: GrpcClient,
    other: GrpcClient,
    other_name: &'static str,
    failures: Vec<String>,
    steps: usize,
    // Dropped last: kills the servers.
    _other_server: Other,
    _etcd_server: EtcdServer,
}

fn server_args() -> Vec<String> {
    vec![
        "--max-request-bytes".into(),
        MAX_REQUEST_BYTES.to_string(),
        "--max-txn-ops".into(),
        MAX_TXN_OPS.to_string(),
    ]
}

impl Diff {
    /// Starts a fresh etcd and a fresh MetaStore (or a second etcd with
    /// DIFF_SELF_CHECK). None when etcd is not installed outside CI.
    async fn start(section: &'static str) -> Option<Diff> {
        let args = server_args();
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let etcd = EtcdServer::start_with(&args)?;
        let self_check = std::env::var_os("DIFF_SELF_CHECK").is_some();
        let (other, other_addr, other_name) = if self_check {
            let e = EtcdServer::start_with(&args)?;
            let a = e.addr();
            (Other::Etcd(e), a, "etcd#2")
        } else {
            let m = MetastoreServer::start(&args);
            let a = m.addr();
            (Other::Meta(m), a, "metastore")
        };
        let etcd_client = GrpcClient::connect(etcd.addr())
            .await
            .unwrap_or_else(|e| panic!("connect to etcd: {e:?}"));
        let other_client = GrpcClient::connect(other_addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {other_name}: {e:?}"));
        eprintln!("[{section}] comparing etcd with {other_name}");
        Some(Diff {
            section,
            etcd: etcd_client,
            other: other_client,
            other_name,
            failures: Vec::new(),
            steps: 0,
            _other_server: other,
            _etcd_server: etcd,
        })
    }

    /// Sends `req` to both servers, compares the normalized results and
    /// returns etcd's (the reference) for the script to use.
    async fn call<Req, Resp>(&mut self, step: &str, path: &str, req: &Req) -> GrpcResult<Resp>
    where
        Req: prost::Message + Debug,
        Resp: prost::Message + Default + Normalize + PartialEq + Debug,
    {
        self.steps += 1;
        let mut e: GrpcResult<Resp> = self.etcd.unary(path, req).await;
        let mut o: GrpcResult<Resp> = self.other.unary(path, req).await;
        if let Ok(r) = &mut e {
            r.normalize();
        }
        if let Ok(r) = &mut o {
            r.normalize();
        }
        if std::env::var_os("DIFF_VERBOSE").is_some() {
            let mut line = format!("{e:?}");
            line.truncate(300);
            eprintln!("[{}] #{} {step}: etcd {line}", self.section, self.steps);
        }
        if e != o {
            let mut req_dbg = format!("{req:?}");
            if req_dbg.len() > 800 {
                req_dbg.truncate(800);
                req_dbg.push_str("...(truncated)");
            }
            let ed = format!("{e:#?}");
            let od = format!("{o:#?}");
            self.failures.push(format!(
                "[{}] step #{} `{}` ({path}): etcd and {} differ\nrequest: {req_dbg}\n{}",
                self.section,
                self.steps,
                step,
                self.other_name,
                line_diff(&ed, &od, "etcd", self.other_name)
            ));
        }
        if let Err((TRANSPORT_ERROR, m)) = &e {
            self.failures.push(format!(
                "[{}] step `{step}`: HARNESS: transport error talking to etcd: {m}",
                self.section
            ));
            self.etcd = GrpcClient::connect(self.etcd.addr())
                .await
                .unwrap_or_else(|e| self.abort(&format!("cannot reconnect to etcd: {e:?}")));
        }
        if let Err((TRANSPORT_ERROR, _)) = &o {
            match GrpcClient::connect(self.other.addr()).await {
                Ok(c) => self.other = c,
                Err(err) => self.abort(&format!(
                    "{} unreachable after step `{step}` ({err:?}); aborting section",
                    self.other_name
                )),
            }
        }
        e
    }

    /// Sends a hand-made (possibly malformed) framed body to `path`. A
    /// successful answer is decoded as `Resp` and compared normalized; for
    /// errors the gRPC code is always compared, the message only if
    /// `exact_message` (grpc-go's wording for malformed input is Go-specific).
    async fn call_raw<Resp>(
        &mut self,
        step: &str,
        path: &str,
        body: Bytes,
        exact_message: bool,
    ) -> GrpcResult<Resp>
    where
        Resp: prost::Message + Default + Normalize + PartialEq + Debug,
    {
        self.steps += 1;
        let decode = |r: GrpcResult<Bytes>| -> GrpcResult<Resp> {
            r.and_then(|b| {
                Resp::decode(b)
                    .map(|mut m| {
                        m.normalize();
                        m
                    })
                    .map_err(|e| (TRANSPORT_ERROR, format!("decode: {e}")))
            })
        };
        let e = decode(self.etcd.unary_raw(path, body.clone()).await);
        let o = decode(self.other.unary_raw(path, body.clone()).await);
        if std::env::var_os("DIFF_VERBOSE").is_some() {
            eprintln!(
                "[{}] #{} {step}: etcd {e:?} / {} {o:?}",
                self.section, self.steps, self.other_name
            );
        }
        let same = match (&e, &o) {
            (Err((ec, em)), Err((oc, om))) => ec == oc && (!exact_message || em == om),
            _ => e == o,
        };
        if !same {
            self.failures.push(format!(
                "[{}] step #{} `{step}` ({path}, raw body {:?}): etcd and {} differ{}\n{}",
                self.section,
                self.steps,
                &body[..body.len().min(64)],
                self.other_name,
                if exact_message {
                    ""
                } else {
                    " (comparing gRPC codes only)"
                },
                line_diff(
                    &format!("{e:#?}"),
                    &format!("{o:#?}"),
                    "etcd",
                    self.other_name
                )
            ));
        }
        for (res, is_etcd) in [(&e, true), (&o, false)] {
            if let Err((TRANSPORT_ERROR, _)) = res {
                let addr = if is_etcd {
                    self.etcd.addr()
                } else {
                    self.other.addr()
                };
                match GrpcClient::connect(addr).await {
                    Ok(c) if is_etcd => self.etcd = c,
                    Ok(c) => self.other = c,
                    Err(err) => self.abort(&format!("cannot reconnect after `{step}`: {err:?}")),
                }
            }
        }
        e
    }

    async fn put(&mut self, step: &str, r: pb::PutRequest) -> GrpcResult<pb::PutResponse> {
        self.call(step, PUT, &r).await
    }
    async fn range(&mut self, step: &str, r: pb::RangeRequest) -> GrpcResult<pb::RangeResponse> {
        self.call(step, RANGE, &r).await
    }
    async fn delete(
        &mut self,
        step: &str,
        r: pb::DeleteRangeRequest,
    ) -> GrpcResult<pb::DeleteRangeResponse> {
        self.call(step, DELETE, &r).await
    }
    async fn txn(&mut self, step: &str, r: pb::TxnRequest) -> GrpcResult<pb::TxnResponse> {
        self.call(step, TXN, &r).await
    }
    async fn compact(
        &mut self,
        step: &str,
        rev: i64,
        physical: bool,
    ) -> GrpcResult<pb::CompactionResponse> {
        let r = pb::CompactionRequest {
            revision: rev,
            physical,
        };
        self.call(step, COMPACT, &r).await
    }

    /// Current revision according to etcd (also compared).
    async fn current_rev(&mut self, step: &str) -> i64 {
        let r = self.range(step, get("\0no-such-key")).await;
        match r {
            Ok(r) => rev_of(&r.header),
            Err(e) => self.abort(&format!("etcd failed a plain range: {e:?}")),
        }
    }

    /// Checks an assumption of the script about etcd's own answer, so that a
    /// step really exercises what it is meant to.
    fn script_check(&mut self, ok: bool, what: &str) {
        if !ok {
            self.failures.push(format!(
                "[{}] SCRIPT: etcd did not behave as the script assumes: {what}",
                self.section
            ));
        }
    }

    fn expect_err<T: Debug>(&mut self, r: &GrpcResult<T>, code: i32, msg: &str, step: &str) {
        let ok = matches!(r, Err((c, m)) if *c == code && m == msg);
        self.script_check(
            ok,
            &format!("{step}: expected error ({code}, {msg:?}), etcd gave {r:?}"),
        );
    }

    fn abort(&self, why: &str) -> ! {
        let mut all = self.failures.clone();
        all.push(format!("[{}] ABORTED: {why}", self.section));
        panic!(
            "{} difference(s)/problem(s) in section {}:\n\n{}",
            all.len(),
            self.section,
            all.join("\n\n")
        );
    }

    fn finish(self) {
        eprintln!(
            "[{}] {} steps compared, {} difference(s)",
            self.section,
            self.steps,
            self.failures.len()
        );
        if !self.failures.is_empty() {
            panic!(
                "{} difference(s) in section {} (etcd vs {}):\n\n{}",
                self.failures.len(),
                self.section,
                self.other_name,
                self.failures.join("\n\n")
            );
        }
    }
}

macro_rules! start {
    ($section:expr) => {
        match Diff::start($section).await {
            Some(d) => d,
            None => return,
        }
    };
}

// ---------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------

#[tokio::test]
async fn diff_put() {
    let mut d = start!("put");
    d.put("plain put", put("a/1", "v1")).await.ok();
    d.put(
        "overwrite with prev_kv",
        pb::PutRequest {
            prev_kv: true,
            ..put("a/1", "v2")
        },
    )
    .await
    .ok();
    d.put(
        "prev_kv on a new key",
        pb::PutRequest {
            prev_kv: true,
            ..put("a/2", "x")
        },
    )
    .await
    .ok();
    d.put(
        "ignore_value keeps the old value",
        pb::PutRequest {
            ignore_value: true,
            ..put("a/1", "")
        },
    )
    .await
    .ok();
    d.range("after ignore_value", get("a/1")).await.ok();
    d.put(
        "ignore_value + prev_kv",
        pb::PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put("a/1", "")
        },
    )
    .await
    .ok();
    let r = d
        .put(
            "ignore_value with a value",
            pb::PutRequest {
                ignore_value: true,
                ..put("a/1", "zzz")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: value is provided",
        "ignore_value with value",
    );
    d.put(
        "ignore_lease",
        pb::PutRequest {
            ignore_lease: true,
            ..put("a/1", "v3")
        },
    )
    .await
    .ok();
    let r = d
        .put(
            "ignore_lease with a lease",
            pb::PutRequest {
                ignore_lease: true,
                lease: 5,
                ..put("a/1", "v4")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: lease is provided",
        "ignore_lease with lease",
    );
    let r = d
        .put(
            "ignore_value on a missing key",
            pb::PutRequest {
                ignore_value: true,
                ..put("a/missing", "")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key not found",
        "ignore_value missing",
    );
    let r = d
        .put(
            "ignore_lease on a missing key",
            pb::PutRequest {
                ignore_lease: true,
                ..put("a/missing", "v")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key not found",
        "ignore_lease missing",
    );
    let r = d
        .put(
            "put with unknown lease",
            pb::PutRequest {
                lease: 12345,
                ..put("a/3", "v")
            },
        )
        .await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "lease",
    );
    let r = d
        .put(
            "put with unknown lease on existing key",
            pb::PutRequest {
                lease: 1,
                ..put("a/1", "v")
            },
        )
        .await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "lease existing",
    );
    let r = d.put("empty key", put("", "v")).await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "empty key",
    );
    let r = d
        .put(
            "empty key + ignore_value with value",
            pb::PutRequest {
                ignore_value: true,
                ..put("", "v")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "empty key first",
    );
    d.put("empty value", put("a/empty", "")).await.ok();
    d.put("same value again bumps version", put("a/1", "v3"))
        .await
        .ok();
    d.put(
        "binary key with NUL and 0xff",
        pb::PutRequest {
            key: Bytes::from_static(b"a/\x00bin\xff\xfe"),
            value: Bytes::from_static(b"\x00\x01\xff"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.put(
        "key that is a single 0xff byte",
        pb::PutRequest {
            key: Bytes::from_static(b"\xff"),
            value: b("ff"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.put("key \\0", put("\0", "nul")).await.ok();
    d.range("everything", get_all()).await.ok();
    d.range("prefix a/", get_prefix("a/")).await.ok();
    d.range(
        "binary key",
        pb::RangeRequest {
            key: Bytes::from_static(b"a/\x00bin\xff\xfe"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.put("delete-and-recreate: put", put("a/re", "1"))
        .await
        .ok();
    d.delete("delete-and-recreate: delete", del("a/re"))
        .await
        .ok();
    d.put(
        "delete-and-recreate: put again (version 1, new create_revision)",
        pb::PutRequest {
            prev_kv: true,
            ..put("a/re", "2")
        },
    )
    .await
    .ok();
    d.range("delete-and-recreate: get", get("a/re")).await.ok();
    let cur = d.current_rev("current").await;
    for rev in cur - 3..=cur {
        d.range(
            &format!("delete-and-recreate: get at revision {rev}"),
            pb::RangeRequest {
                revision: rev,
                ..get("a/re")
            },
        )
        .await
        .ok();
    }
    let all_bytes: Vec<u8> = (1..=255u8).collect();
    d.put(
        "key with every byte value 1..=255",
        pb::PutRequest {
            key: Bytes::from(all_bytes.clone()),
            value: b("all"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range(
        "prefix \\x01 (covers the every-byte key)",
        pb::RangeRequest {
            key: b("\x01"),
            range_end: prefix_end(b"\x01"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range(
        "prefix \\xff (range_end becomes \\0)",
        pb::RangeRequest {
            key: Bytes::from_static(b"\xff"),
            range_end: prefix_end(b"\xff"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range(
        "prefix \\xff\\xff (range_end becomes \\0)",
        pb::RangeRequest {
            key: Bytes::from_static(b"\xff\xff"),
            range_end: prefix_end(b"\xff\xff"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.finish();
}

#[tokio::test]
async fn diff_range_basic() {
    let mut d = start!("range_basic");
    for (k, v) in [
        ("r/a", "1"),
        ("r/b", "2"),
        ("r/c", "3"),
        ("r/d/1", "4"),
        ("r/d/2", "5"),
        ("r/e", "6"),
        ("r0", "outside"),
        ("q", "before"),
        ("r/b", "2b"),
        ("r/c", "3b"),
        ("r/b", "2c"),
    ] {
        d.put(&format!("setup put {k}={v}"), put(k, v)).await.ok();
    }
    d.delete("setup delete r/e", del("r/e")).await.ok();
    let cur = d.current_rev("current revision").await;

    d.range("single key", get("r/b")).await.ok();
    d.range("missing key", get("r/zz")).await.ok();
    d.range("prefix r/", get_prefix("r/")).await.ok();
    d.range("prefix r/d/", get_prefix("r/d/")).await.ok();
    d.range("prefix r (includes r0)", get_prefix("r"))
        .await
        .ok();
    d.range("interval [r/b, r/d)", get_range("r/b", "r/d"))
        .await
        .ok();
    d.range(
        "interval [r/b, r/d/1] end inclusive?",
        get_range("r/b", "r/d/1"),
    )
    .await
    .ok();
    d.range("from key r/c (range_end \\0)", get_range("r/c", "\0"))
        .await
        .ok();
    d.range("all keys (\\0, \\0)", get_all()).await.ok();
    d.range("key \\0 without range_end", get("\0")).await.ok();
    d.range("range_end < key", get_range("r/d", "r/a"))
        .await
        .ok();
    d.range("range_end == key", get_range("r/b", "r/b"))
        .await
        .ok();
    let r = d.range("empty key", get("")).await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "range empty key",
    );
    let r = d
        .range("empty key with range_end", get_range("", "z"))
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "range empty key 2",
    );

    for limit in [1, 2, 3, 6, 7, 100] {
        d.range(
            &format!("prefix r/ limit {limit}"),
            pb::RangeRequest {
                limit,
                ..get_prefix("r/")
            },
        )
        .await
        .ok();
    }
    d.range(
        "limit 0 means no limit",
        pb::RangeRequest {
            limit: 0,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "negative limit",
        pb::RangeRequest {
            limit: -3,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "limit on single key",
        pb::RangeRequest {
            limit: 1,
            ..get("r/a")
        },
    )
    .await
    .ok();
    d.range(
        "count_only prefix",
        pb::RangeRequest {
            count_only: true,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "count_only missing",
        pb::RangeRequest {
            count_only: true,
            ..get("nope")
        },
    )
    .await
    .ok();
    d.range(
        "count_only with limit",
        pb::RangeRequest {
            count_only: true,
            limit: 2,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "keys_only prefix",
        pb::RangeRequest {
            keys_only: true,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "keys_only + count_only",
        pb::RangeRequest {
            keys_only: true,
            count_only: true,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "keys_only + limit",
        pb::RangeRequest {
            keys_only: true,
            limit: 2,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "serializable single",
        pb::RangeRequest {
            serializable: true,
            ..get("r/b")
        },
    )
    .await
    .ok();
    d.range(
        "serializable prefix limit",
        pb::RangeRequest {
            serializable: true,
            limit: 2,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();

    // Historical reads: every revision from 1 to the current one.
    for rev in 1..=cur {
        d.range(
            &format!("prefix r/ at revision {rev}"),
            pb::RangeRequest {
                revision: rev,
                ..get_prefix("r/")
            },
        )
        .await
        .ok();
        d.range(
            &format!("r/b at revision {rev}"),
            pb::RangeRequest {
                revision: rev,
                ..get("r/b")
            },
        )
        .await
        .ok();
    }
    d.range(
        "historical read of deleted key r/e",
        pb::RangeRequest {
            revision: cur - 1,
            ..get("r/e")
        },
    )
    .await
    .ok();
    d.range(
        "historical count_only",
        pb::RangeRequest {
            revision: 4,
            count_only: true,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "historical with limit",
        pb::RangeRequest {
            revision: 5,
            limit: 1,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    let r = d
        .range(
            "revision current+1 (future)",
            pb::RangeRequest {
                revision: cur + 1,
                ..get("r/a")
            },
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
        "future rev",
    );
    let r = d
        .range(
            "revision far future",
            pb::RangeRequest {
                revision: 1_000_000,
                ..get_prefix("r/")
            },
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
        "future rev 2",
    );
    d.range(
        "negative revision means current",
        pb::RangeRequest {
            revision: -1,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "revision == current",
        pb::RangeRequest {
            revision: cur,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.finish();
}

#[tokio::test]
async fn diff_range_sort() {
    let mut d = start!("range_sort");
    // At most 12 keys: Go's sort.Sort is an insertion sort there, so etcd's
    // order among ties is deterministic (stable w.r.t. key order).
    for (k, v) in [
        ("s/c", "3"),
        ("s/a", "2"),
        ("s/f", "2"),
        ("s/b", "9"),
        ("s/e", "1"),
        ("s/d", "3"),
        ("s/a", "5"),
        ("s/e", "1"),
        ("s/c", "0"),
        ("s/c", "3"),
        ("s0", "outside"),
        ("s", "outside"),
    ] {
        d.put(&format!("setup put {k}={v}"), put(k, v)).await.ok();
    }
    for t in SORT_TARGETS {
        for o in SORT_ORDERS {
            let base = pb::RangeRequest {
                sort_target: t as i32,
                sort_order: o as i32,
                ..get_prefix("s/")
            };
            d.range(&format!("sort {t:?} {o:?}"), base.clone())
                .await
                .ok();
            d.range(
                &format!("sort {t:?} {o:?} limit 2"),
                pb::RangeRequest {
                    limit: 2,
                    ..base.clone()
                },
            )
            .await
            .ok();
            d.range(
                &format!("sort {t:?} {o:?} keys_only"),
                pb::RangeRequest {
                    keys_only: true,
                    ..base.clone()
                },
            )
            .await
            .ok();
            d.range(
                &format!("sort {t:?} {o:?} count_only"),
                pb::RangeRequest {
                    count_only: true,
                    ..base.clone()
                },
            )
            .await
            .ok();
            d.range(
                &format!("sort {t:?} {o:?} at revision 7"),
                pb::RangeRequest {
                    revision: 7,
                    ..base.clone()
                },
            )
            .await
            .ok();
        }
    }
    d.range(
        "sort MOD DESCEND over all keys",
        pb::RangeRequest {
            sort_target: SortTarget::Mod as i32,
            sort_order: SortOrder::Descend as i32,
            ..get_all()
        },
    )
    .await
    .ok();
    d.range(
        "sort VALUE DESCEND single key",
        pb::RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            ..get("s/a")
        },
    )
    .await
    .ok();
    d.finish();
}

#[tokio::test]
async fn diff_range_filters() {
    let mut d = start!("range_filters");
    for (k, v) in [
        ("f/a", "1"),
        ("f/b", "2"),
        ("f/c", "3"),
        ("f/d", "4"),
        ("f/a", "5"),
        ("f/c", "6"),
        ("f/e", "7"),
        ("f/b", "8"),
    ] {
        d.put(&format!("setup put {k}={v}"), put(k, v)).await.ok();
    }
    let cases: Vec<(&str, pb::RangeRequest)> = vec![
        (
            "min_mod 5",
            pb::RangeRequest {
                min_mod_revision: 5,
                ..get_prefix("f/")
            },
        ),
        (
            "max_mod 5",
            pb::RangeRequest {
                max_mod_revision: 5,
                ..get_prefix("f/")
            },
        ),
        (
            "min_create 4",
            pb::RangeRequest {
                min_create_revision: 4,
                ..get_prefix("f/")
            },
        ),
        (
            "max_create 3",
            pb::RangeRequest {
                max_create_revision: 3,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 4 max_mod 7",
            pb::RangeRequest {
                min_mod_revision: 4,
                max_mod_revision: 7,
                ..get_prefix("f/")
            },
        ),
        (
            "min_create 3 max_create 5",
            pb::RangeRequest {
                min_create_revision: 3,
                max_create_revision: 5,
                ..get_prefix("f/")
            },
        ),
        (
            "all four filters",
            pb::RangeRequest {
                min_mod_revision: 3,
                max_mod_revision: 8,
                min_create_revision: 2,
                max_create_revision: 4,
                ..get_prefix("f/")
            },
        ),
        (
            "filters matching nothing",
            pb::RangeRequest {
                min_mod_revision: 100,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 6 limit 1 (more after filtering?)",
            pb::RangeRequest {
                min_mod_revision: 6,
                limit: 1,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 8 limit 1 (exactly one passes)",
            pb::RangeRequest {
                min_mod_revision: 8,
                limit: 1,
                ..get_prefix("f/")
            },
        ),
        (
            "max_create 2 limit 1",
            pb::RangeRequest {
                max_create_revision: 2,
                limit: 1,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 5 count_only",
            pb::RangeRequest {
                min_mod_revision: 5,
                count_only: true,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 5 keys_only",
            pb::RangeRequest {
                min_mod_revision: 5,
                keys_only: true,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 5 sort CREATE DESCEND",
            pb::RangeRequest {
                min_mod_revision: 5,
                sort_target: SortTarget::Create as i32,
                sort_order: SortOrder::Descend as i32,
                ..get_prefix("f/")
            },
        ),
        (
            "max_mod 4 at revision 5",
            pb::RangeRequest {
                max_mod_revision: 4,
                revision: 5,
                ..get_prefix("f/")
            },
        ),
        (
            "min_create 2 on single key",
            pb::RangeRequest {
                min_create_revision: 3,
                ..get("f/a")
            },
        ),
        (
            "negative filters",
            pb::RangeRequest {
                min_mod_revision: -1,
                max_create_revision: -1,
                ..get_prefix("f/")
            },
        ),
    ];
    for (name, req) in cases {
        d.range(name, req).await.ok();
    }
    d.finish();
}

#[tokio::test]
async fn diff_delete_range() {
    let mut d = start!("delete_range");
    for k in [
        "d/a", "d/b", "d/c", "d/d", "d/e", "d/f/1", "d/f/2", "d/g", "d/h", "e",
    ] {
        d.put(&format!("setup put {k}"), put(k, &format!("val-{k}")))
            .await
            .ok();
    }
    d.put("setup overwrite d/a", put("d/a", "again")).await.ok();
    d.delete("single existing", del("d/a")).await.ok();
    let before = d.current_rev("rev before no-op delete").await;
    d.delete("single missing (no new revision)", del("d/a"))
        .await
        .ok();
    d.delete("range with nothing in it", del_range("d/x", "d/z"))
        .await
        .ok();
    let after = d.current_rev("rev after no-op delete").await;
    d.script_check(
        before == after,
        "deleting nothing must not create a revision",
    );
    d.delete("range [d/b, d/d)", del_range("d/b", "d/d"))
        .await
        .ok();
    d.delete(
        "prefix d/f/ with prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del_prefix("d/f/")
        },
    )
    .await
    .ok();
    d.delete(
        "single with prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del("d/d")
        },
    )
    .await
    .ok();
    d.delete(
        "missing with prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del("d/d")
        },
    )
    .await
    .ok();
    d.delete("range_end < key deletes nothing", del_range("d/h", "d/e"))
        .await
        .ok();
    let r = d.delete("empty key", del("")).await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "delete empty key",
    );
    d.range("what is left", get_all()).await.ok();
    d.delete(
        "from key d/g (range_end \\0) prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del_range("d/g", "\0")
        },
    )
    .await
    .ok();
    d.range("what is left 2", get_all()).await.ok();
    d.range(
        "deleted key at old revision",
        pb::RangeRequest {
            revision: 5,
            ..get_prefix("d/")
        },
    )
    .await
    .ok();
    d.put("recreate d/b", put("d/b", "new")).await.ok();
    d.range("recreated d/b", get("d/b")).await.ok();
    d.put(
        "recreate d/b again",
        pb::PutRequest {
            prev_kv: true,
            ..put("d/b", "newer")
        },
    )
    .await
    .ok();
    d.delete(
        "all keys (\\0, \\0)",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del_range("\0", "\0")
        },
    )
    .await
    .ok();
    d.range("empty store", get_all()).await.ok();
    d.delete("all keys again (nothing)", del_range("\0", "\0"))
        .await
        .ok();
    d.range("empty store, revision unchanged", get_all())
        .await
        .ok();
    d.finish();
}

#[tokio::test]
async fn diff_txn_compare() {
    let mut d = start!("txn_compare");
    d.put("setup c/k v1", put("c/k", "m")).await.ok();
    d.put("setup c/other", put("c/other", "zz")).await.ok();
    d.put("setup c/k v2", put("c/k", "m")).await.ok();
    d.put("setup c/p/1", put("c/p/1", "b")).await.ok();
    d.put("setup c/p/2", put("c/p/2", "c")).await.ok();
    // c/k: version 2, create 2, mod 4, value "m", lease 0.
    let probe = |target: CompareTarget| -> [(i64, &'static str); 3] {
        match target {
            CompareTarget::Version => [(1, ""), (2, ""), (3, "")],
            CompareTarget::Create => [(1, ""), (2, ""), (3, "")],
            CompareTarget::Mod => [(3, ""), (4, ""), (5, "")],
            CompareTarget::Value => [(0, "l"), (0, "m"), (0, "n")],
            CompareTarget::Lease => [(-1, ""), (0, ""), (1, "")],
        }
    };
    for t in TARGETS {
        for r in RESULTS {
            for (v, s) in probe(t) {
                let c = cmp_t("c/k", t, r, v, s);
                d.txn(
                    &format!("compare c/k {t:?} {r:?} {v}{s:?}"),
                    txn(
                        vec![c],
                        vec![op_get(get("c/k"))],
                        vec![op_get(get("c/other"))],
                    ),
                )
                .await
                .ok();
            }
            // Against a missing key.
            for (v, s) in [(0, ""), (1, "a")] {
                let c = cmp_t("c/missing", t, r, v, s);
                d.txn(
                    &format!("compare missing key {t:?} {r:?} {v}/{s:?}"),
                    txn(vec![c], vec![op_get(get("c/k"))], vec![]),
                )
                .await
                .ok();
            }
            // Over a range (all keys must satisfy).
            for (v, s) in [(1, "b"), (2, "c"), (3, "d")] {
                let mut c = cmp_t("c/p/", t, r, v, s);
                c.range_end = prefix_end(b"c/p/");
                d.txn(
                    &format!("compare prefix c/p/ {t:?} {r:?} {v}/{s:?}"),
                    txn(vec![c], vec![], vec![]),
                )
                .await
                .ok();
            }
            // Over an empty range.
            let mut c = cmp_t("c/q/", t, r, 0, "");
            c.range_end = prefix_end(b"c/q/");
            d.txn(
                &format!("compare empty range {t:?} {r:?}"),
                txn(vec![c], vec![], vec![]),
            )
            .await
            .ok();
        }
    }
    // Compare on all keys (from \0 to \0).
    let mut c = cmp_t("\0", CompareTarget::Version, CompareResult::Greater, 0, "");
    c.range_end = b("\0");
    d.txn("compare all keys version > 0", txn(vec![c], vec![], vec![]))
        .await
        .ok();
    // From-key compare.
    let mut c = cmp_t("c/o", CompareTarget::Create, CompareResult::Greater, 2, "");
    c.range_end = b("\0");
    d.txn(
        "compare from-key c/o create > 2",
        txn(vec![c], vec![], vec![]),
    )
    .await
    .ok();
    // Value compare on a missing key always fails, even NOT_EQUAL.
    let c = cmp_t(
        "c/missing",
        CompareTarget::Value,
        CompareResult::NotEqual,
        0,
        "x",
    );
    let r = d
        .txn(
            "value NOT_EQUAL on missing key",
            txn(vec![c], vec![], vec![]),
        )
        .await;
    d.script_check(
        matches!(&r, Ok(t) if !t.succeeded),
        "value compare on missing key fails",
    );
    // Compare with the union variant not matching the target.
    let c = cmp(
        "c/k",
        CompareTarget::Version,
        CompareResult::Equal,
        TargetUnion::Value(b("m")),
    );
    d.txn(
        "target VERSION with value union",
        txn(vec![c], vec![], vec![]),
    )
    .await
    .ok();
    let c = cmp(
        "c/k",
        CompareTarget::Mod,
        CompareResult::Greater,
        TargetUnion::Version(3),
    );
    d.txn(
        "target MOD with version union",
        txn(vec![c], vec![], vec![]),
    )
    .await
    .ok();
    // Compare without any union: compares against 0 / "".
    let mut c = cmp(
        "c/k",
        CompareTarget::Version,
        CompareResult::Greater,
        TargetUnion::Version(0),
    );
    c.target_union = None;
    d.txn("target VERSION without union", txn(vec![c], vec![], vec![]))
        .await
        .ok();
    let mut c = cmp(
        "c/k",
        CompareTarget::Value,
        CompareResult::Greater,
        TargetUnion::Value(b("")),
    );
    c.target_union = None;
    d.txn("target VALUE without union", txn(vec![c], vec![], vec![]))
        .await
        .ok();
    // Several compares: all must hold.
    let cs = vec![
        cmp_t("c/k", CompareTarget::Version, CompareResult::Equal, 2, ""),
        cmp_t(
            "c/other",
            CompareTarget::Value,
            CompareResult::Equal,
            0,
            "zz",
        ),
    ];
    d.txn(
        "two compares, both true",
        txn(
            cs,
            vec![op_put("c/res", "both")],
            vec![op_put("c/res", "notboth")],
        ),
    )
    .await
    .ok();
    let cs = vec![
        cmp_t("c/k", CompareTarget::Version, CompareResult::Equal, 2, ""),
        cmp_t(
            "c/other",
            CompareTarget::Value,
            CompareResult::Equal,
            0,
            "zy",
        ),
    ];
    d.txn(
        "two compares, second false",
        txn(
            cs,
            vec![op_put("c/res", "both")],
            vec![op_put("c/res", "notboth")],
        ),
    )
    .await
    .ok();
    d.range("c/res", get("c/res")).await.ok();
    // Empty key in a compare.
    let c = cmp_t("", CompareTarget::Version, CompareResult::Equal, 0, "");
    let r = d
        .txn("empty key in compare", txn(vec![c], vec![], vec![]))
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "empty compare key",
    );
    d.finish();
}

#[tokio::test]
async fn diff_txn_semantics() {
    let mut d = start!("txn_semantics");
    d.put("setup t/a", put("t/a", "1")).await.ok();
    d.put("setup t/b", put("t/b", "2")).await.ok();

    let c_true = || cmp_t("t/a", CompareTarget::Value, CompareResult::Equal, 0, "1");
    let c_false = || cmp_t("t/a", CompareTarget::Value, CompareResult::Equal, 0, "nope");

    d.txn(
        "success branch writes two keys at one revision",
        txn(
            vec![c_true()],
            vec![op_put("t/x", "s1"), op_put("t/y", "s2")],
            vec![op_put("t/z", "f")],
        ),
    )
    .await
    .ok();
    d.txn(
        "failure branch",
        txn(
            vec![c_false()],
            vec![op_put("t/x", "s1")],
            vec![op_put("t/z", "f1"), op_get(get_prefix("t/"))],
        ),
    )
    .await
    .ok();
    d.txn(
        "range before and after put in the same txn",
        txn(
            vec![],
            vec![
                op_get(get("t/n")),
                op_put("t/n", "new"),
                op_get(get("t/n")),
                op_get(get_prefix("t/")),
                op_put("t/m", "new2"),
                op_get(pb::RangeRequest {
                    count_only: true,
                    ..get_prefix("t/")
                }),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "put then delete other key then range",
        txn(
            vec![],
            vec![
                op_put("t/p", "1"),
                op_del(del("t/z")),
                op_get(get_prefix("t/")),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "delete with prev_kv then range",
        txn(
            vec![],
            vec![
                op_del(pb::DeleteRangeRequest {
                    prev_kv: true,
                    ..del_range("t/m", "t/o")
                }),
                op_get(get_prefix("t/")),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "put with prev_kv in txn",
        txn(
            vec![],
            vec![op(Request::RequestPut(pb::PutRequest {
                prev_kv: true,
                ..put("t/a", "1")
            }))],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "ignore_value put in txn",
        txn(
            vec![],
            vec![op(Request::RequestPut(pb::PutRequest {
                ignore_value: true,
                ..put("t/b", "")
            }))],
            vec![],
        ),
    )
    .await
    .ok();
    // Nested txns: compares are all evaluated against the state before the txn.
    d.txn(
        "nested txn: inner compare sees pre-txn state",
        txn(
            vec![],
            vec![
                op_put("t/a", "changed"),
                op_txn(txn(
                    vec![c_true()],
                    vec![op_put("t/inner", "then"), op_get(get("t/a"))],
                    vec![op_put("t/inner", "else")],
                )),
                op_get(get("t/inner")),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.put("restore t/a", put("t/a", "1")).await.ok();
    d.txn(
        "nested txn two levels, failure branches",
        txn(
            vec![c_false()],
            vec![],
            vec![
                op_txn(txn(
                    vec![c_false()],
                    vec![op_put("t/n1", "x")],
                    vec![
                        op_put("t/n2", "y"),
                        op_txn(txn(
                            vec![c_true()],
                            vec![op_put("t/n3", "z"), op_get(get_prefix("t/n"))],
                            vec![],
                        )),
                    ],
                )),
                op_get(get_prefix("t/n")),
                op_txn(txn(vec![], vec![], vec![])),
            ],
        ),
    )
    .await
    .ok();
    d.txn(
        "nested read-only txn",
        txn(
            vec![],
            vec![op_txn(txn(
                vec![c_true()],
                vec![op_get(get("t/a"))],
                vec![],
            ))],
            vec![],
        ),
    )
    .await
    .ok();

    d.txn(
        "put, then delete nothing, then range (delete header = new revision)",
        txn(
            vec![],
            vec![
                op_put("t/w", "1"),
                op_del(del("t/none")),
                op_get(get("t/w")),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "delete nothing, then put (delete header = old revision)",
        txn(
            vec![],
            vec![op_del(del("t/none")), op_put("t/w", "2")],
            vec![],
        ),
    )
    .await
    .ok();
    let before = d.current_rev("rev before non-writing txns").await;
    d.txn(
        "txn whose chosen branch writes nothing (other branch would)",
        txn(
            vec![c_true()],
            vec![op_get(get("t/a"))],
            vec![op_put("t/never", "x")],
        ),
    )
    .await
    .ok();
    d.txn(
        "txn deleting nothing",
        txn(
            vec![],
            vec![op_del(del("t/none")), op_get(get("t/a"))],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "read-only txn",
        txn(
            vec![c_true()],
            vec![op_get(get_prefix("t/"))],
            vec![op_get(get("t/b"))],
        ),
    )
    .await
    .ok();
    d.txn("empty txn", txn(vec![], vec![], vec![])).await.ok();
    d.txn("compare only", txn(vec![c_false()], vec![], vec![]))
        .await
        .ok();
    let after = d.current_rev("rev after non-writing txns").await;
    d.script_check(
        before == after,
        "txns that write nothing must not create a revision",
    );

    d.txn(
        "txn delete then put another key in nested txn",
        txn(
            vec![],
            vec![
                op_del(del("t/x")),
                op_txn(txn(vec![], vec![op_put("t/y2", "v")], vec![])),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "range inside txn at historical revision",
        txn(
            vec![],
            vec![op_get(pb::RangeRequest {
                revision: 3,
                ..get_prefix("t/")
            })],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "range inside txn with limit and sort",
        txn(
            vec![],
            vec![op_get(pb::RangeRequest {
                limit: 2,
                sort_target: SortTarget::Mod as i32,
                sort_order: SortOrder::Descend as i32,
                ..get_prefix("t/")
            })],
            vec![],
        ),
    )
    .await
    .ok();

    // Errors raised by the chosen branch only.
    let r = d
        .txn(
            "range at future revision inside txn",
            txn(
                vec![],
                vec![op_get(pb::RangeRequest {
                    revision: 10_000,
                    ..get("t/a")
                })],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
        "txn future",
    );
    d.txn(
        "future-revision range in the branch not taken",
        txn(
            vec![c_true()],
            vec![op_get(get("t/a"))],
            vec![op_get(pb::RangeRequest {
                revision: 10_000,
                ..get("t/a")
            })],
        ),
    )
    .await
    .ok();
    let r = d
        .txn(
            "put with unknown lease in chosen branch",
            txn(
                vec![],
                vec![op(Request::RequestPut(pb::PutRequest {
                    lease: 77,
                    ..put("t/l", "v")
                }))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "txn lease",
    );
    d.txn(
        "put with unknown lease in the branch not taken",
        txn(
            vec![c_false()],
            vec![op(Request::RequestPut(pb::PutRequest {
                lease: 77,
                ..put("t/l", "v")
            }))],
            vec![op_put("t/l", "fine")],
        ),
    )
    .await
    .ok();
    let r = d
        .txn(
            "ignore_value put on missing key in txn",
            txn(
                vec![],
                vec![op(Request::RequestPut(pb::PutRequest {
                    ignore_value: true,
                    ..put("t/nokey", "")
                }))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key not found",
        "txn ignore_value",
    );
    let r = d
        .txn(
            "ignore_value with value in the branch not taken (checked statically)",
            txn(
                vec![c_false()],
                vec![op(Request::RequestPut(pb::PutRequest {
                    ignore_value: true,
                    ..put("t/a", "v")
                }))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: value is provided",
        "txn static check",
    );
    let r = d
        .txn(
            "empty key in put in txn",
            txn(vec![], vec![], vec![op_put("", "v")]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "txn empty key",
    );
    let r = d
        .txn(
            "empty key in range in txn",
            txn(vec![], vec![op_get(get(""))], vec![]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "txn empty range key",
    );
    let r = d
        .txn(
            "empty key in delete in nested txn",
            txn(
                vec![],
                vec![op_txn(txn(vec![], vec![op_del(del(""))], vec![]))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "txn nested empty del key",
    );
    let r = d
        .txn(
            "empty RequestOp",
            txn(vec![], vec![pb::RequestOp { request: None }], vec![]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key not found",
        "empty request op",
    );

    // Too many operations.
    let many = |n: usize, p: &str| -> Vec<pb::RequestOp> {
        (0..n).map(|i| op_put(&format!("{p}{i:03}"), "v")).collect()
    };
    let r = d
        .txn(
            "129 puts in success",
            txn(vec![], many(MAX_TXN_OPS + 1, "t/many/"), vec![]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: too many operations in txn request",
        "129 puts",
    );
    let r = d
        .txn(
            "129 ops in failure",
            txn(vec![], vec![], many(MAX_TXN_OPS + 1, "t/many/")),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: too many operations in txn request",
        "129 fail",
    );
    let r = d
        .txn(
            "129 compares",
            txn(
                (0..=MAX_TXN_OPS).map(|_| c_true()).collect(),
                vec![],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: too many operations in txn request",
        "129 cmps",
    );
    d.txn(
        "128 puts (the maximum)",
        txn(vec![], many(MAX_TXN_OPS, "t/many/"), vec![]),
    )
    .await
    .ok();
    d.txn(
        "128 compares + 128 success + 128 failure",
        txn(
            (0..MAX_TXN_OPS).map(|_| c_true()).collect(),
            many(MAX_TXN_OPS, "t/many/"),
            many(MAX_TXN_OPS, "t/many2/"),
        ),
    )
    .await
    .ok();
    let gets = |n: usize| -> Vec<pb::RequestOp> { (0..n).map(|_| op_get(get("t/a"))).collect() };
    let mut outer = gets(100);
    outer.push(op_txn(txn(vec![], gets(28), vec![])));
    d.txn(
        "nested: 101 outer ops + 28 inner (limit 128-101... ok?)",
        txn(vec![], outer, vec![]),
    )
    .await
    .ok();
    let mut outer = gets(99);
    outer.push(op_txn(txn(vec![], gets(29), vec![])));
    d.txn(
        "nested: 100 outer ops + 29 inner",
        txn(vec![], outer, vec![]),
    )
    .await
    .ok();
    let mut outer = gets(99);
    outer.push(op_txn(txn(vec![], gets(28), vec![])));
    d.txn(
        "nested: 100 outer ops + 28 inner",
        txn(vec![], outer, vec![]),
    )
    .await
    .ok();

    // Duplicate keys.
    let dup = "etcdserver: duplicate key given in txn request";
    let r = d
        .txn(
            "two puts on one key",
            txn(vec![], vec![op_put("t/d", "1"), op_put("t/d", "2")], vec![]),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "two puts");
    let r = d
        .txn(
            "two puts on one key in failure branch",
            txn(vec![], vec![], vec![op_put("t/d", "1"), op_put("t/d", "2")]),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "two puts failure");
    d.txn(
        "same key in success and failure is fine",
        txn(vec![], vec![op_put("t/d", "1")], vec![op_put("t/d", "2")]),
    )
    .await
    .ok();
    let r = d
        .txn(
            "put + delete same key",
            txn(vec![], vec![op_put("t/d", "1"), op_del(del("t/d"))], vec![]),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "put+del");
    let r = d
        .txn(
            "delete before put same key",
            txn(vec![], vec![op_del(del("t/d")), op_put("t/d", "1")], vec![]),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "del+put");
    let r = d
        .txn(
            "put inside a deleted range",
            txn(
                vec![],
                vec![op_del(del_range("t/c", "t/e")), op_put("t/d", "1")],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "put in del range");
    d.txn(
        "put at a deleted range's end (exclusive) is fine",
        txn(
            vec![],
            vec![op_del(del_range("t/c", "t/d")), op_put("t/d", "1")],
            vec![],
        ),
    )
    .await
    .ok();
    // etcd quirk: checkIntervals takes range_end "\0" literally, so the
    // interval ["t/c", "\0") is empty and this is *not* a duplicate.
    let r = d
        .txn(
            "put inside a from-key delete (etcd accepts it)",
            txn(
                vec![],
                vec![op_del(del_range("t/c", "\0")), op_put("t/zzz", "1")],
                vec![],
            ),
        )
        .await;
    d.script_check(r.is_ok(), "etcd accepts a put inside a from-key delete");
    d.txn(
        "two overlapping deletes are fine",
        txn(
            vec![],
            vec![op_del(del_range("t/c", "t/e")), op_del(del("t/d"))],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "range + put same key is fine",
        txn(vec![], vec![op_get(get("t/d")), op_put("t/d", "r")], vec![]),
    )
    .await
    .ok();
    let r = d
        .txn(
            "outer put + nested put same key",
            txn(
                vec![],
                vec![
                    op_put("t/d", "1"),
                    op_txn(txn(vec![], vec![op_put("t/d", "2")], vec![])),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "outer+nested put");
    d.txn(
        "nested then/else put same key is fine",
        txn(
            vec![],
            vec![op_txn(txn(
                vec![c_true()],
                vec![op_put("t/d", "then")],
                vec![op_put("t/d", "else")],
            ))],
            vec![],
        ),
    )
    .await
    .ok();
    let r = d
        .txn(
            "two nested txns put same key",
            txn(
                vec![],
                vec![
                    op_txn(txn(vec![], vec![op_put("t/d", "1")], vec![])),
                    op_txn(txn(vec![], vec![op_put("t/d", "2")], vec![])),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "two nested");
    let r = d
        .txn(
            "nested else put vs sibling nested then put",
            txn(
                vec![],
                vec![
                    op_txn(txn(vec![], vec![op_put("t/d", "1")], vec![])),
                    op_txn(txn(vec![], vec![], vec![op_put("t/d", "2")])),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "nested else vs then");
    let r = d
        .txn(
            "outer delete + nested put in range",
            txn(
                vec![],
                vec![
                    op_del(del_prefix("t/")),
                    op_txn(txn(vec![], vec![op_put("t/d", "1")], vec![])),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "outer del nested put");
    let r = d
        .txn(
            "nested delete + outer put in range",
            txn(
                vec![],
                vec![
                    op_txn(txn(vec![], vec![op_del(del_prefix("t/"))], vec![])),
                    op_put("t/d", "1"),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "nested del outer put");
    d.txn(
        "nested delete + outer put outside range is fine",
        txn(
            vec![],
            vec![
                op_txn(txn(vec![], vec![op_del(del_prefix("t/d"))], vec![])),
                op_put("t/e", "1"),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "nested put + sibling nested delete of same key (not checked across siblings)",
        txn(
            vec![],
            vec![
                op_txn(txn(vec![], vec![op_put("t/q", "1")], vec![])),
                op_txn(txn(vec![], vec![op_del(del("t/q"))], vec![])),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.range("final state", get_prefix("t/")).await.ok();
    d.range(
        "final state count",
        pb::RangeRequest {
            count_only: true,
            ..get_all()
        },
    )
    .await
    .ok();
    d.finish();
}

#[tokio::test]
async fn diff_compaction() {
    let mut d = start!("compaction");
    for i in 1..=6 {
        d.put(&format!("setup p/a v{i}"), put("p/a", &format!("v{i}")))
            .await
            .ok();
    }
    // p/a: revs 2..=7
    d.put("setup p/b", put("p/b", "b")).await.ok(); // 8
    d.delete("setup delete p/b", del("p/b")).await.ok(); // 9
    d.put("setup p/c", put("p/c", "c")).await.ok(); // 10
    let cur = d.current_rev("current").await;
    d.script_check(cur == 10, "setup ends at revision 10");

    let r = d
        .compact("compact to future revision", cur + 1, false)
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
        "compact future",
    );
    d.compact("compact to 4", 4, false).await.ok();
    for rev in [1, 2, 3] {
        let r = d
            .range(
                &format!("range p/a at compacted rev {rev}"),
                pb::RangeRequest {
                    revision: rev,
                    ..get("p/a")
                },
            )
            .await;
        d.expect_err(
            &r,
            OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted",
            "compacted read",
        );
    }
    d.range(
        "range p/a at the compaction revision 4",
        pb::RangeRequest {
            revision: 4,
            ..get("p/a")
        },
    )
    .await
    .ok();
    d.range(
        "range prefix at 5",
        pb::RangeRequest {
            revision: 5,
            ..get_prefix("p/")
        },
    )
    .await
    .ok();
    d.range("range current", get_prefix("p/")).await.ok();
    let r = d
        .range(
            "count_only at compacted rev",
            pb::RangeRequest {
                revision: 3,
                count_only: true,
                ..get_prefix("p/")
            },
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "count compacted",
    );
    let r = d.compact("compact to 4 again", 4, false).await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "compact again",
    );
    let r = d.compact("compact to 3 (below)", 3, false).await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "compact below",
    );
    let r = d.compact("compact to 0", 0, false).await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "compact 0",
    );
    let r = d.compact("compact to -1", -1, false).await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "compact -1",
    );
    let r = d
        .txn(
            "txn range at compacted revision",
            txn(
                vec![],
                vec![op_get(pb::RangeRequest {
                    revision: 2,
                    ..get("p/a")
                })],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "txn compacted",
    );
    d.txn(
        "txn range at compaction revision",
        txn(
            vec![],
            vec![op_get(pb::RangeRequest {
                revision: 4,
                ..get("p/a")
            })],
            vec![],
        ),
    )
    .await
    .ok();
    d.compact("physical compact to 9 (p/b deleted at 9)", 9, true)
        .await
        .ok();
    d.range(
        "p/b at 9 after compaction",
        pb::RangeRequest {
            revision: 9,
            ..get("p/b")
        },
    )
    .await
    .ok();
    d.range(
        "prefix at 9",
        pb::RangeRequest {
            revision: 9,
            ..get_prefix("p/")
        },
    )
    .await
    .ok();
    let r = d
        .range(
            "p/b at 8 after compaction",
            pb::RangeRequest {
                revision: 8,
                ..get("p/b")
            },
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "p/b compacted",
    );
    d.compact("compact to current revision", cur, false)
        .await
        .ok();
    d.range("current after compacting to current", get_prefix("p/"))
        .await
        .ok();
    d.put(
        "write after compaction",
        pb::PutRequest {
            prev_kv: true,
            ..put("p/a", "after")
        },
    )
    .await
    .ok();
    d.range("versions survive compaction", get_prefix("p/"))
        .await
        .ok();
    d.range(
        "at the compaction revision",
        pb::RangeRequest {
            revision: cur,
            ..get_prefix("p/")
        },
    )
    .await
    .ok();
    d.compact("compact again at new revision", cur + 1, false)
        .await
        .ok();
    d.finish();
}

#[tokio::test]
async fn diff_request_size() {
    let mut d = start!("request_size");
    d.put("setup", put("z/a", "small")).await.ok();
    let big = |n: usize| Bytes::from(vec![b'x'; n]);
    let r = d
        .put(
            "2 MiB value (over the gRPC limit)",
            pb::PutRequest {
                key: b("z/big"),
                value: big(2 << 20),
                ..Default::default()
            },
        )
        .await;
    d.script_check(
        matches!(&r, Err((RESOURCE_EXHAUSTED, _))),
        &format!(
            "2 MiB put gives ResourceExhausted, got {:?}",
            r.as_ref().map(|_| ()).map_err(|e| e.clone())
        ),
    );
    let r = d
        .put(
            "1.6 MiB value (over max-request-bytes)",
            pb::PutRequest {
                key: b("z/big"),
                value: big(1_677_722),
                ..Default::default()
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: request is too large",
        "1.6MiB",
    );
    let r = d
        .txn(
            "txn with a 1.6 MiB put",
            txn(
                vec![],
                vec![op(Request::RequestPut(pb::PutRequest {
                    key: b("z/big"),
                    value: big(1_677_722),
                    ..Default::default()
                }))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: request is too large",
        "txn 1.6MiB",
    );
    d.range("nothing was written", get_prefix("z/")).await.ok();
    d.put(
        "1 MiB value is accepted",
        pb::PutRequest {
            key: b("z/mib"),
            value: big(1 << 20),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range("read the 1 MiB value back", get("z/mib"))
        .await
        .ok();
    for i in 1..=5 {
        d.put(
            &format!("1 MiB value #{i}"),
            pb::PutRequest {
                key: b(format!("z/m{i}")),
                value: big(1 << 20),
                ..Default::default()
            },
        )
        .await
        .ok();
    }
    d.range("~6 MiB range response (flow control)", get_prefix("z/"))
        .await
        .ok();
    // Near the limit: etcd checks the size of the whole raft entry, a few
    // dozen bytes more than the value; these two probes are far enough from
    // the exact boundary to be deterministic.
    d.put(
        "value of max-request-bytes - 100 is accepted",
        pb::PutRequest {
            key: b("z/near"),
            value: big(MAX_REQUEST_BYTES - 100),
            ..Default::default()
        },
    )
    .await
    .ok();
    let r = d
        .put(
            "value of max-request-bytes - 5 is too large",
            pb::PutRequest {
                key: b("z/near"),
                value: big(MAX_REQUEST_BYTES - 5),
                ..Default::default()
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: request is too large",
        "near limit",
    );
    d.txn(
        "txn with a put of max-request-bytes - 100",
        txn(
            vec![],
            vec![op(Request::RequestPut(pb::PutRequest {
                key: b("z/near2"),
                value: big(MAX_REQUEST_BYTES - 100),
                ..Default::default()
            }))],
            vec![],
        ),
    )
    .await
    .ok();
    d.range(
        "near-limit keys",
        pb::RangeRequest {
            keys_only: true,
            ..get_prefix("z/near")
        },
    )
    .await
    .ok();
    d.range(
        "range with a 1.6 MiB key (reads are not size-checked by etcd)",
        pb::RangeRequest {
            key: big(1_677_722),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range(
        "still healthy",
        pb::RangeRequest {
            keys_only: true,
            ..get_prefix("z/")
        },
    )
    .await
    .ok();
    d.finish();
}

#[tokio::test]
async fn diff_many_shards() {
    let mut d = start!("many_shards");
    for i in 0..100 {
        let k = format!("k{i:02}");
        d.put(&format!("put {k}"), put(&k, &format!("v{i}")))
            .await
            .ok();
    }
    for i in (0..100).step_by(7) {
        let k = format!("k{i:02}");
        d.put(
            &format!("overwrite {k}"),
            pb::PutRequest {
                prev_kv: true,
                ..put(&k, &format!("w{i}"))
            },
        )
        .await
        .ok();
    }
    for key in [
        &b"k\x00"[..],
        b"k\x7f",
        b"k\x80",
        b"k\xfe\xff",
        b"k\xff",
        b"k99\x80",
    ] {
        d.put(
            &format!("binary key {key:?}"),
            pb::PutRequest {
                key: Bytes::copy_from_slice(key),
                value: b("bin"),
                ..Default::default()
            },
        )
        .await
        .ok();
    }
    d.range(
        "keys >= k99 (unsigned byte order across shards)",
        pb::RangeRequest {
            keys_only: true,
            ..get_range("k99", "\0")
        },
    )
    .await
    .ok();
    d.range(
        "sort KEY DESCEND limit 4 with high bytes",
        pb::RangeRequest {
            limit: 4,
            keys_only: true,
            sort_target: SortTarget::Key as i32,
            sort_order: SortOrder::Descend as i32,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "interval [k\\x7f, k\\xff)",
        pb::RangeRequest {
            key: Bytes::from_static(b"k\x7f"),
            range_end: Bytes::from_static(b"k\xff"),
            keys_only: true,
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range("prefix k (100 keys)", get_prefix("k")).await.ok();
    d.range("all keys", get_all()).await.ok();
    d.range(
        "limit 10",
        pb::RangeRequest {
            limit: 10,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range("interval [k37, k63)", get_range("k37", "k63"))
        .await
        .ok();
    d.range("from key k90", get_range("k90", "\0")).await.ok();
    d.range(
        "count_only",
        pb::RangeRequest {
            count_only: true,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "keys_only limit 5",
        pb::RangeRequest {
            keys_only: true,
            limit: 5,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "sort MOD DESCEND limit 5",
        pb::RangeRequest {
            limit: 5,
            sort_target: SortTarget::Mod as i32,
            sort_order: SortOrder::Descend as i32,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "sort CREATE ASCEND limit 5",
        pb::RangeRequest {
            limit: 5,
            sort_target: SortTarget::Create as i32,
            sort_order: SortOrder::Ascend as i32,
            ..get_range("k50", "\0")
        },
    )
    .await
    .ok();
    d.range(
        "sort KEY DESCEND limit 3",
        pb::RangeRequest {
            limit: 3,
            sort_target: SortTarget::Key as i32,
            sort_order: SortOrder::Descend as i32,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "min_mod filter across shards",
        pb::RangeRequest {
            min_mod_revision: 95,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "historical at 50",
        pb::RangeRequest {
            revision: 50,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.txn(
        "multi-key txn across shards",
        txn(
            vec![
                cmp_t("k05", CompareTarget::Version, CompareResult::Equal, 1, ""),
                cmp_t("k55", CompareTarget::Value, CompareResult::Equal, 0, "v55"),
                cmp_t("k98", CompareTarget::Version, CompareResult::Equal, 2, ""),
            ],
            vec![
                op_put("k05", "t"),
                op_put("k55", "t"),
                op_put("k95", "t"),
                op_del(del("k11")),
                op_get(get_range("k00", "k99")),
            ],
            vec![op_put("k00", "failed")],
        ),
    )
    .await
    .ok();
    d.txn(
        "compare over all k* (versions >= 1)",
        txn(
            vec![{
                let mut c = cmp_t("k", CompareTarget::Version, CompareResult::Greater, 0, "");
                c.range_end = prefix_end(b"k");
                c
            }],
            vec![op_get(pb::RangeRequest {
                count_only: true,
                ..get_prefix("k")
            })],
            vec![],
        ),
    )
    .await
    .ok();
    d.delete(
        "delete [k10, k20) prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del_range("k10", "k20")
        },
    )
    .await
    .ok();
    d.range(
        "after delete",
        pb::RangeRequest {
            keys_only: true,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.compact("compact at 60", 60, false).await.ok();
    d.range(
        "historical at 60 after compaction",
        pb::RangeRequest {
            revision: 60,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.delete("delete prefix k", del_prefix("k")).await.ok();
    d.range("empty", get_all()).await.ok();
    d.finish();
}

#[tokio::test]
async fn diff_maintenance_and_cluster() {
    let mut d = start!("maintenance_and_cluster");
    d.put("setup 1", put("m/a", "1")).await.ok();
    d.put("setup 2", put("m/b", "2")).await.ok();
    let etcd_ep = format!("http://{}", d.etcd.addr());
    let other_ep = format!("http://{}", d.other.addr());

    let req = pb::StatusRequest {};
    let e: GrpcResult<pb::StatusResponse> = d.etcd.unary(STATUS, &req).await;
    let o: GrpcResult<pb::StatusResponse> = d.other.unary(STATUS, &req).await;
    d.steps += 1;
    match (&e, &o) {
        (Ok(e), Ok(o)) => {
            let (eh, oh) = (
                e.header.iter().next().cloned().unwrap_or_default(),
                o.header.iter().next().cloned().unwrap_or_default(),
            );
            let mut check = |ok: bool, what: String| {
                if !ok {
                    d.failures.push(format!(
                        "[maintenance] Status: {what}\netcd: {e:#?}\nother: {o:#?}"
                    ));
                }
            };
            check(
                eh.revision == oh.revision,
                format!("header.revision {} vs {}", eh.revision, oh.revision),
            );
            check(o.leader != 0, "leader must be non-zero".into());
            check(
                oh.member_id != 0,
                "header.member_id must be non-zero".into(),
            );
            check(
                oh.cluster_id != 0,
                "header.cluster_id must be non-zero".into(),
            );
            check(
                o.leader == oh.member_id,
                "single member must be the leader (leader == header.member_id)".into(),
            );
            check(!o.version.is_empty(), "version must be set".into());
            check(
                o.errors.is_empty(),
                format!("errors must be empty: {:?}", o.errors),
            );
            check(!o.is_learner, "must not be a learner".into());
            check(
                e.leader == eh.member_id,
                "SCRIPT: etcd leader == member_id".into(),
            );
        }
        _ => d
            .failures
            .push(format!("[maintenance] Status: etcd {e:?} vs other {o:?}")),
    }

    let req = pb::MemberListRequest::default();
    let e: GrpcResult<pb::MemberListResponse> = d.etcd.unary(MEMBER_LIST, &req).await;
    let o: GrpcResult<pb::MemberListResponse> = d.other.unary(MEMBER_LIST, &req).await;
    d.steps += 1;
    match (&e, &o) {
        (Ok(e), Ok(o)) => {
            let oh = o.header.iter().next().cloned().unwrap_or_default();
            let mut check = |ok: bool, what: String| {
                if !ok {
                    d.failures.push(format!(
                        "[cluster] MemberList: {what}\netcd: {e:#?}\nother: {o:#?}"
                    ));
                }
            };
            check(e.members.len() == 1, "SCRIPT: etcd has one member".into());
            check(
                e.members[0].client_ur_ls == vec![etcd_ep.clone()],
                "SCRIPT: etcd client url".into(),
            );
            check(
                o.members.len() == 1,
                format!("exactly one member, got {}", o.members.len()),
            );
            if let Some(m) = o.members.first() {
                check(m.id != 0, "member id must be non-zero".into());
                check(
                    m.name == e.members[0].name,
                    format!("name {:?} vs etcd's {:?}", m.name, e.members[0].name),
                );
                check(
                    m.client_ur_ls == vec![other_ep.clone()],
                    format!("clientURLs {:?}, want [{other_ep}]", m.client_ur_ls),
                );
                check(!m.is_learner, "must not be a learner".into());
                check(
                    oh.member_id == m.id,
                    format!("header.member_id {} != member id {}", oh.member_id, m.id),
                );
            }
        }
        _ => d
            .failures
            .push(format!("[cluster] MemberList: etcd {e:?} vs other {o:?}")),
    }
    d.range("after status", get_prefix("m/")).await.ok();
    d.finish();
}

#[tokio::test]
async fn diff_grpc_protocol() {
    use prost::Message;
    let mut d = start!("grpc_protocol");
    d.put("setup", put("g/a", "1")).await.ok();
    let range_msg = get("g/a").encode_to_vec();
    let frame = |flag: u8, declared: u32, payload: &[u8]| -> Bytes {
        let mut v = vec![flag];
        v.extend_from_slice(&declared.to_be_bytes());
        v.extend_from_slice(payload);
        Bytes::from(v)
    };
    let ok = frame(0, range_msg.len() as u32, &range_msg);

    d.call_raw::<pb::RangeResponse>("well-formed raw Range", RANGE, ok.clone(), true)
        .await
        .ok();
    let r = d
        .call_raw::<pb::RangeResponse>(
            "unknown method",
            "/etcdserverpb.KV/NoSuchMethod",
            ok.clone(),
            true,
        )
        .await;
    d.script_check(matches!(r, Err((12, _))), "unknown method is UNIMPLEMENTED");
    let r = d
        .call_raw::<pb::RangeResponse>(
            "unknown service",
            "/etcdserverpb.NoSuchService/Range",
            ok.clone(),
            true,
        )
        .await;
    d.script_check(
        matches!(r, Err((12, _))),
        "unknown service is UNIMPLEMENTED",
    );
    d.call_raw::<pb::RangeResponse>("unknown package", "/nosuchpkg.KV/Range", ok.clone(), true)
        .await
        .ok();

    // Unknown fields must be skipped (newer clients send fields we do not know).
    let mut with_unknown = range_msg.clone();
    with_unknown.extend_from_slice(&[0xf8, 0x06, 0x01]); // field 111, varint 1
    with_unknown.extend_from_slice(&[0x82, 0x07, 0x02, b'h', b'i']); // field 112, bytes "hi"
    d.call_raw::<pb::RangeResponse>(
        "Range with unknown fields",
        RANGE,
        frame(0, with_unknown.len() as u32, &with_unknown),
        true,
    )
    .await
    .ok();
    // An empty message is a valid RangeRequest with an empty key.
    d.call_raw::<pb::RangeResponse>("empty message (empty key)", RANGE, frame(0, 0, &[]), true)
        .await
        .ok();
    // Malformed input: compare codes only.
    d.call_raw::<pb::RangeResponse>("no message at all", RANGE, Bytes::new(), false)
        .await
        .ok();
    d.call_raw::<pb::RangeResponse>(
        "truncated prefix",
        RANGE,
        Bytes::from_static(&[0, 0, 0]),
        false,
    )
    .await
    .ok();
    d.call_raw::<pb::RangeResponse>(
        "declared length longer than body",
        RANGE,
        frame(0, range_msg.len() as u32 + 10, &range_msg),
        false,
    )
    .await
    .ok();
    d.call_raw::<pb::RangeResponse>(
        "invalid protobuf",
        RANGE,
        frame(0, 4, &[0x0a, 0x10, b'x', b'y']),
        false,
    )
    .await
    .ok();
    d.call_raw::<pb::RangeResponse>(
        "wrong wire type for key",
        RANGE,
        frame(0, 2, &[0x08, 0x01]),
        false,
    )
    .await
    .ok();
    d.call_raw::<pb::RangeResponse>(
        "compressed flag without grpc-encoding",
        RANGE,
        frame(1, range_msg.len() as u32, &range_msg),
        false,
    )
    .await
    .ok();
    let mut two = ok.to_vec();
    two.extend_from_slice(&ok);
    d.call_raw::<pb::RangeResponse>(
        "two messages in a unary request",
        RANGE,
        Bytes::from(two),
        false,
    )
    .await
    .ok();
    // Message split over many DATA frames (prefix split too).
    let big_put = pb::PutRequest {
        key: b("g/chunked"),
        value: Bytes::from(vec![b'c'; 3000]),
        prev_kv: true,
        ..Default::default()
    }
    .encode_to_vec();
    let big_put = frame(0, big_put.len() as u32, &big_put);
    for chunk in [1usize, 3, 7, 1000] {
        d.steps += 1;
        let e = d.etcd.unary_raw_chunked(PUT, big_put.clone(), chunk).await;
        let o = d.other.unary_raw_chunked(PUT, big_put.clone(), chunk).await;
        let dec = |r: GrpcResult<Bytes>| {
            r.map(|b| {
                let mut m = pb::PutResponse::decode(b).unwrap_or_default();
                m.normalize();
                m
            })
        };
        let (e, o) = (dec(e), dec(o));
        if e != o {
            d.failures.push(format!(
                "[grpc_protocol] Put sent in {chunk}-byte DATA frames: etcd {e:?} vs {} {o:?}",
                d.other_name
            ));
        }
    }
    d.call_raw::<pb::RangeResponse>("still works afterwards", RANGE, ok.clone(), true)
        .await
        .ok();
    d.finish();
}
