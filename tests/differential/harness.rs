//! The differential driver: [`Diff`] sends each request to etcd and to the
//! server under test, normalizes both answers and records any difference.

use std::fmt::Debug;

use bytes::Bytes;
use metastore::proto::etcdserverpb as pb;
use pb::response_op::Response;

use crate::common::{
    EtcdServer, GrpcClient, GrpcResult, MetastoreServer, TRANSPORT_ERROR, line_diff,
};
use crate::requests::{get, rev_of};

pub const MAX_REQUEST_BYTES: usize = 1_572_864; // etcd's default, 1.5 MiB
pub const MAX_TXN_OPS: usize = 128; // etcd's default

pub const RANGE: &str = "/etcdserverpb.KV/Range";
pub const PUT: &str = "/etcdserverpb.KV/Put";
pub const DELETE: &str = "/etcdserverpb.KV/DeleteRange";
pub const TXN: &str = "/etcdserverpb.KV/Txn";
pub const COMPACT: &str = "/etcdserverpb.KV/Compact";
pub const STATUS: &str = "/etcdserverpb.Maintenance/Status";
pub const MEMBER_LIST: &str = "/etcdserverpb.Cluster/MemberList";

// gRPC codes used by etcd.
pub const INVALID_ARGUMENT: i32 = 3;
pub const NOT_FOUND: i32 = 5;
pub const RESOURCE_EXHAUSTED: i32 = 8;
pub const OUT_OF_RANGE: i32 = 11;

// ---------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------

pub trait Normalize {
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
// The differential driver
// ---------------------------------------------------------------------------

#[allow(dead_code)]
enum Other {
    Meta(MetastoreServer),
    Etcd(EtcdServer),
}

pub struct Diff {
    pub section: &'static str,
    pub etcd: GrpcClient,
    pub other: GrpcClient,
    pub other_name: &'static str,
    pub failures: Vec<String>,
    pub steps: usize,
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
    pub async fn start(section: &'static str) -> Option<Diff> {
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
    pub async fn call<Req, Resp>(&mut self, step: &str, path: &str, req: &Req) -> GrpcResult<Resp>
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
    pub async fn call_raw<Resp>(
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

    pub async fn put(&mut self, step: &str, r: pb::PutRequest) -> GrpcResult<pb::PutResponse> {
        self.call(step, PUT, &r).await
    }
    pub async fn range(
        &mut self,
        step: &str,
        r: pb::RangeRequest,
    ) -> GrpcResult<pb::RangeResponse> {
        self.call(step, RANGE, &r).await
    }
    pub async fn delete(
        &mut self,
        step: &str,
        r: pb::DeleteRangeRequest,
    ) -> GrpcResult<pb::DeleteRangeResponse> {
        self.call(step, DELETE, &r).await
    }
    pub async fn txn(&mut self, step: &str, r: pb::TxnRequest) -> GrpcResult<pb::TxnResponse> {
        self.call(step, TXN, &r).await
    }
    pub async fn compact(
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
    pub async fn current_rev(&mut self, step: &str) -> i64 {
        let r = self.range(step, get("\0no-such-key")).await;
        match r {
            Ok(r) => rev_of(&r.header),
            Err(e) => self.abort(&format!("etcd failed a plain range: {e:?}")),
        }
    }

    /// Checks an assumption of the script about etcd's own answer, so that a
    /// step really exercises what it is meant to.
    pub fn script_check(&mut self, ok: bool, what: &str) {
        if !ok {
            self.failures.push(format!(
                "[{}] SCRIPT: etcd did not behave as the script assumes: {what}",
                self.section
            ));
        }
    }

    pub fn expect_err<T: Debug>(&mut self, r: &GrpcResult<T>, code: i32, msg: &str, step: &str) {
        let ok = matches!(r, Err((c, m)) if *c == code && m == msg);
        self.script_check(
            ok,
            &format!("{step}: expected error ({code}, {msg:?}), etcd gave {r:?}"),
        );
    }

    pub fn abort(&self, why: &str) -> ! {
        let mut all = self.failures.clone();
        all.push(format!("[{}] ABORTED: {why}", self.section));
        panic!(
            "{} difference(s)/problem(s) in section {}:\n\n{}",
            all.len(),
            self.section,
            all.join("\n\n")
        );
    }

    pub fn finish(self) {
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
        match $crate::harness::Diff::start($section).await {
            Some(d) => d,
            None => return,
        }
    };
}

pub(crate) use start;
