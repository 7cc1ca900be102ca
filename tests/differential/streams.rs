//! Streaming calls (Watch, LeaseKeepAlive) and the Lease service in the
//! differential driver: [`StreamPair`] is one stream opened on each server;
//! the script sends the same messages to both and compares the sequences of
//! normalized responses, waiting for each expected response before the next
//! write so that both servers see the same history.
//!
//! Also here: normalization of the Watch and Lease messages and
//! [`Diff::call_pair`], a unary call whose request and comparison may differ
//! per server (server-chosen lease IDs, remaining TTLs).

use std::fmt::Debug;
use std::time::Duration;

use metastore::proto::etcdserverpb as pb;

use crate::common::{GrpcResult, GrpcStream, StreamItem, TRANSPORT_ERROR, line_diff};
use crate::harness::{Diff, Normalize};

pub const WATCH: &str = "/etcdserverpb.Watch/Watch";
pub const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
pub const LEASE_REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
pub const LEASE_KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
pub const LEASE_TIME_TO_LIVE: &str = "/etcdserverpb.Lease/LeaseTimeToLive";
pub const LEASE_LEASES: &str = "/etcdserverpb.Lease/LeaseLeases";

/// How long an expected stream message may take. etcd delivers history
/// replays from a 100 ms sync loop, so a few seconds is plenty.
pub const WAIT: Duration = Duration::from_secs(5);
/// Silence window used to assert that nothing (more) arrives.
pub const QUIET: Duration = Duration::from_millis(600);

// ---------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------

fn norm_header(h: &mut Option<pb::ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

impl Normalize for pb::WatchResponse {
    fn normalize(&mut self) {
        norm_header(&mut self.header);
    }
}
impl Normalize for pb::LeaseGrantResponse {
    fn normalize(&mut self) {
        norm_header(&mut self.header);
    }
}
impl Normalize for pb::LeaseRevokeResponse {
    fn normalize(&mut self) {
        norm_header(&mut self.header);
    }
}
impl Normalize for pb::LeaseKeepAliveResponse {
    fn normalize(&mut self) {
        norm_header(&mut self.header);
    }
}
impl Normalize for pb::LeaseTimeToLiveResponse {
    /// etcd lists a lease's keys in Go map order (random): sort them.
    fn normalize(&mut self) {
        norm_header(&mut self.header);
        self.keys.sort();
    }
}
impl Normalize for pb::LeaseLeasesResponse {
    /// etcd orders leases by expiry time; compare them as a set.
    fn normalize(&mut self) {
        norm_header(&mut self.header);
        self.leases.sort_by_key(|l| l.id);
    }
}

/// Makes `other`'s remaining TTL equal to etcd's when they are within one
/// second of each other (etcd truncates the remaining time to whole seconds,
/// and the two servers are asked a few milliseconds apart).
pub fn ttl_within_1s(other: &mut pb::LeaseTimeToLiveResponse, etcd: &pb::LeaseTimeToLiveResponse) {
    if other.ttl >= 0 && etcd.ttl >= 0 && (other.ttl - etcd.ttl).abs() <= 1 {
        other.ttl = etcd.ttl;
    }
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// The same stream call opened on etcd and on the server under test.
pub struct StreamPair {
    name: String,
    etcd: GrpcStream,
    other: GrpcStream,
    /// The other side's stream ended while etcd's did not: one difference
    /// has been reported; later steps of this stream are not compared again.
    other_broken: bool,
}

impl Diff {
    /// Opens `path` on both servers. `name` prefixes the step names.
    pub async fn open_stream(&mut self, name: &str, path: &str) -> StreamPair {
        let etcd = match self.etcd.open_stream(path).await {
            Ok(s) => s,
            Err(e) => self.abort(&format!("open {path} on etcd: {e:?}")),
        };
        let other = match self.other.open_stream(path).await {
            Ok(s) => s,
            Err(e) => self.abort(&format!("open {path} on {}: {e:?}", self.other_name)),
        };
        StreamPair {
            name: name.to_string(),
            etcd,
            other,
            other_broken: false,
        }
    }

    /// Sends `msg` on both sides of the stream.
    pub fn send<M: prost::Message + Debug>(&mut self, s: &mut StreamPair, step: &str, msg: &M) {
        self.send_each(s, step, msg, msg);
    }

    /// Sends `to_etcd` to etcd and `to_other` to the other server (for
    /// server-chosen IDs).
    pub fn send_each<M: prost::Message + Debug>(
        &mut self,
        s: &mut StreamPair,
        step: &str,
        to_etcd: &M,
        to_other: &M,
    ) {
        if std::env::var_os("DIFF_VERBOSE").is_some() {
            eprintln!("[{}] {}: {step}: send {to_etcd:?}", self.section, s.name);
        }
        if let Err(e) = s.etcd.send(to_etcd) {
            self.script_check(false, &format!("{}: {step}: send to etcd: {e:?}", s.name));
        }
        // A failed send to the other server (stream already ended) shows up
        // as an End item on its next receive.
        let _ = s.other.send(to_other);
    }

    /// Half-closes both sides (gRPC CloseSend).
    pub fn close_send(&mut self, s: &mut StreamPair, step: &str) {
        if let Err(e) = s.etcd.close_send() {
            self.script_check(false, &format!("{}: {step}: close etcd: {e:?}", s.name));
        }
        let _ = s.other.close_send();
    }

    /// Receives `n` responses on both sides (each within [`WAIT`]) and
    /// compares the normalized sequences, in arrival order. Returns etcd's.
    pub async fn expect<T>(&mut self, s: &mut StreamPair, step: &str, n: usize) -> Vec<T>
    where
        T: prost::Message + Default + Normalize + PartialEq + Debug + Clone,
    {
        self.expect_items(s, step, n, None, None).await
    }

    /// Like [`Self::expect`]; `adjust(other, etcd)` reconciles each of the
    /// other server's messages with etcd's (same position) before comparing,
    /// e.g. for server-chosen lease IDs.
    pub async fn expect_adjusted<T>(
        &mut self,
        s: &mut StreamPair,
        step: &str,
        n: usize,
        adjust: fn(&mut T, &T),
    ) -> Vec<T>
    where
        T: prost::Message + Default + Normalize + PartialEq + Debug + Clone,
    {
        self.expect_items(s, step, n, None, Some(adjust)).await
    }

    /// Like [`Self::expect`], for responses of several watchers on one
    /// stream to the same write: etcd sends them in Go map order, so both
    /// sequences are stably sorted by watch_id before comparing (each
    /// watcher's own responses keep their order).
    pub async fn expect_any_order(
        &mut self,
        s: &mut StreamPair,
        step: &str,
        n: usize,
    ) -> Vec<pb::WatchResponse> {
        self.expect_items(s, step, n, Some(|r: &pb::WatchResponse| r.watch_id), None)
            .await
    }

    /// Asserts that neither side sends anything for [`QUIET`].
    pub async fn expect_quiet<T>(&mut self, s: &mut StreamPair, step: &str)
    where
        T: prost::Message + Default + Normalize + PartialEq + Debug + Clone,
    {
        self.expect::<T>(s, step, 0).await;
    }

    /// Receives the stream's end (grpc-status) within [`WAIT`] on both sides;
    /// returns etcd's (code, message). Messages before it are compared too.
    pub async fn expect_end<T>(&mut self, s: &mut StreamPair, step: &str) -> Option<(i32, String)>
    where
        T: prost::Message + Default + Normalize + PartialEq + Debug + Clone,
    {
        self.steps += 1;
        let (e, o) = tokio::join!(
            read_until_end::<T>(&mut s.etcd),
            read_until_end::<T>(&mut s.other)
        );
        let end = match e.last() {
            Some(StreamItem::End(c, m)) => Some((*c, m.clone())),
            _ => None,
        };
        self.script_check(
            end.is_some(),
            &format!("{}: {step}: etcd did not end the stream: {e:?}", s.name),
        );
        self.compare_items(s, step, e, o);
        end
    }

    async fn expect_items<T>(
        &mut self,
        s: &mut StreamPair,
        step: &str,
        n: usize,
        sort_key: Option<fn(&T) -> i64>,
        adjust: Option<fn(&mut T, &T)>,
    ) -> Vec<T>
    where
        T: prost::Message + Default + Normalize + PartialEq + Debug + Clone,
    {
        self.steps += 1;
        let (mut e, mut o) =
            tokio::join!(read_n::<T>(&mut s.etcd, n), read_n::<T>(&mut s.other, n));
        if let Some(key) = sort_key {
            for items in [&mut e, &mut o] {
                items.sort_by_key(|i| match i {
                    StreamItem::Msg(m) => key(m),
                    _ => i64::MAX,
                });
            }
        }
        if let Some(adjust) = adjust {
            for (oi, ei) in o.iter_mut().zip(&e) {
                if let (StreamItem::Msg(om), StreamItem::Msg(em)) = (oi, ei) {
                    adjust(om, em);
                }
            }
        }
        let got: Vec<T> = e
            .iter()
            .filter_map(|i| match i {
                StreamItem::Msg(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        self.script_check(
            got.len() == n && (n > 0 || e == [StreamItem::Quiet]),
            &format!(
                "{}: {step}: expected {n} message(s) (or silence) from etcd, got {}",
                s.name,
                clip_lines(&format!("{e:#?}"))
            ),
        );
        self.compare_items(s, step, e, o);
        got
    }

    fn compare_items<T: PartialEq + Debug>(
        &mut self,
        s: &mut StreamPair,
        step: &str,
        e: Vec<StreamItem<T>>,
        o: Vec<StreamItem<T>>,
    ) {
        if std::env::var_os("DIFF_VERBOSE").is_some() {
            let mut line = format!("{e:?}");
            line.truncate(600);
            eprintln!("[{}] {}: {step}: etcd {line}", self.section, s.name);
        }
        if e == o || s.other_broken {
            return;
        }
        let other_ended = matches!(o.last(), Some(StreamItem::End(..)));
        let etcd_ended = matches!(e.last(), Some(StreamItem::End(..)));
        if other_ended && !etcd_ended {
            s.other_broken = true;
        }
        self.failures.push(format!(
            "[{}] step #{} stream `{}` `{step}`: etcd and {} differ{}\n{}",
            self.section,
            self.steps,
            s.name,
            self.other_name,
            if s.other_broken {
                format!(
                    " ({} ended the stream; its later steps are not compared)",
                    self.other_name
                )
            } else {
                String::new()
            },
            clip_lines(&line_diff(
                &format!("{e:#?}"),
                &format!("{o:#?}"),
                "etcd",
                self.other_name
            ))
        ));
    }

    /// A unary call with a per-server request; `adjust(other, etcd)` may
    /// reconcile fields that legitimately differ before the comparison.
    /// Returns (etcd's, other's) normalized results.
    pub async fn call_pair<Req, Resp>(
        &mut self,
        step: &str,
        path: &str,
        to_etcd: &Req,
        to_other: &Req,
        adjust: impl FnOnce(&mut Resp, &Resp),
    ) -> (GrpcResult<Resp>, GrpcResult<Resp>)
    where
        Req: prost::Message + Debug,
        Resp: prost::Message + Default + Normalize + PartialEq + Debug + Clone,
    {
        self.steps += 1;
        let mut e: GrpcResult<Resp> = self.etcd.unary(path, to_etcd).await;
        let mut o: GrpcResult<Resp> = self.other.unary(path, to_other).await;
        if let Ok(r) = &mut e {
            r.normalize();
        }
        if let Ok(r) = &mut o {
            r.normalize();
        }
        let mut o_cmp = o.clone();
        if let (Ok(oc), Ok(er)) = (&mut o_cmp, &e) {
            adjust(oc, er);
        }
        if std::env::var_os("DIFF_VERBOSE").is_some() {
            eprintln!("[{}] #{} {step}: etcd {e:?}", self.section, self.steps);
        }
        if e != o_cmp {
            self.failures.push(format!(
                "[{}] step #{} `{step}` ({path}): etcd and {} differ\nrequest: {to_etcd:?}\n{}",
                self.section,
                self.steps,
                self.other_name,
                line_diff(
                    &format!("{e:#?}"),
                    &format!("{o_cmp:#?}"),
                    "etcd",
                    self.other_name
                )
            ));
        }
        for (r, who) in [(&e, "etcd"), (&o, self.other_name)] {
            if let Err((TRANSPORT_ERROR, m)) = r {
                self.abort(&format!("transport error from {who} in `{step}`: {m}"));
            }
        }
        (e, o)
    }
}

/// Up to `n` messages, each within [`WAIT`], then (n == 0 only) a [`QUIET`]
/// check. Stops early at the stream's end or a timeout, which are recorded.
async fn read_n<T: prost::Message + Default + Normalize>(
    s: &mut GrpcStream,
    n: usize,
) -> Vec<StreamItem<T>> {
    let mut out = Vec::new();
    if n == 0 {
        out.push(normalized(s.recv::<T>(QUIET).await));
        return out;
    }
    for _ in 0..n {
        let item = normalized(s.recv::<T>(WAIT).await);
        let stop = !matches!(item, StreamItem::Msg(_));
        out.push(item);
        if stop {
            break;
        }
    }
    out
}

/// Messages until the stream ends (at most 100, each within [`WAIT`]).
async fn read_until_end<T: prost::Message + Default + Normalize>(
    s: &mut GrpcStream,
) -> Vec<StreamItem<T>> {
    let mut out = Vec::new();
    while out.len() < 100 {
        let item = normalized(s.recv::<T>(WAIT).await);
        let stop = !matches!(item, StreamItem::Msg(_));
        out.push(item);
        if stop {
            break;
        }
    }
    out
}

fn normalized<T: Normalize>(mut item: StreamItem<T>) -> StreamItem<T> {
    if let StreamItem::Msg(m) = &mut item {
        m.normalize();
    }
    item
}

/// Shortens very long lines (big values) in a failure report.
fn clip_lines(s: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::with_capacity(s.len().min(1 << 16));
    for line in s.lines() {
        if line.len() > MAX {
            let cut = (0..=MAX)
                .rev()
                .find(|&i| line.is_char_boundary(i))
                .unwrap_or(0);
            out.push_str(&format!("{}...({} bytes)", &line[..cut], line.len()));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}
