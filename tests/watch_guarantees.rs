//! Seeded randomized end-to-end test of etcd's watch guarantees
//! (<https://etcd.io/docs/v3.4/learning/api_guarantees/#watch-apis>).
//!
//! While a few writers run puts, multi-key txns, delete-ranges, lease grants
//! (keys attached) and revocations, short leases that expire on their own,
//! and a compactor compacts now and then, several dozen watch streams are
//! opened at random moments: single keys, prefixes, from-key ranges, start
//! revisions near the current one (some in the past, some in the future,
//! some deliberately compacted), some with `prev_kv`, some with
//! `progress_notify`, some sending `WatchProgressRequest`s, some slow (they
//! sleep between reads and fall behind), some restarting from their last
//! bookmark, some carrying several watchers on one stream. Every response
//! is recorded with its grouping.
//!
//! A recorder watch (all keys, from revision 1, started before any write) is
//! the server's own history. It is first validated against what the writers
//! were told (each response's revision must carry exactly that request's
//! events, every revision 2..=F has events, unclaimed revisions are lease
//! expiries, the replayed state equals a final Range). Then every watcher is
//! checked against it:
//!
//! * created: the first response is `created` (not canceled), with a header
//!   revision no lower than what writers had already been told;
//! * ordered: revisions never go back; unique: no event twice;
//! * atomic: all events of one revision arrive in one response;
//! * reliable: the events are exactly the history's events in its range from
//!   its start revision (a prefix for watchers that were dropped or canceled
//!   by compaction, all of them up to F for the others);
//! * resumable: restarted watchers resume from their bookmark + 1 and must
//!   again get exactly the continuation (plus fresh probes at the end, one
//!   over the whole key space from the last compaction);
//! * bookmarkable: a progress notification (per watcher, or stream-wide
//!   answer to a WatchProgressRequest) with revision R comes after every event
//!   <= R of the watcher and before every event > R;
//! * compaction: a watcher whose start revision was already compacted gets a
//!   `created` response, then one with `canceled` and `compact_revision` set;
//!   a cancel by compaction (also of a watcher that fell behind) names a
//!   compaction that happened and is above everything the watcher got;
//! * prev_kv: the previous version of the key, exactly (absent only for
//!   creations and when that revision was compacted), never when not asked.
//!
//! Every violation is reported with the seed, the watcher's parameters and
//! the offending responses. `TEST_SEED` reproduces the parameters (not the
//! thread interleaving). `TEST_AGAINST_ETCD=1` runs the same test against a
//! real etcd 3.4 to validate the checker.

mod common;
mod wl_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::watch;

use common::test_seed;
use wl_support::{against_etcd, connect, prefix_end, server_name, start_server, within};

/// Server-side interval of `progress_notify` notifications (etcd 3.4 flag;
/// MetaStore accepts the same flag).
const PROGRESS_INTERVAL_FLAG: &str = "--experimental-watch-progress-notify-interval";
const PROGRESS_INTERVAL: &str = "500ms";

const PREFIXES: [&str; 3] = ["a/", "b/", "c/"];
const KEYS_PER_PREFIX: usize = 5;
/// Keys outside the prefixes (covered only by from-key and all-keys watches).
const LOOSE_KEYS: [&str; 2] = ["m", "z"];

const WRITERS: usize = 3;
const OPS_PER_WRITER: usize = 110;
const WATCH_STREAMS: usize = 36;
const CLIENTS: usize = 3;
const SHORT_TTL: i64 = 2;
const LONG_TTL: i64 = 120;

/// Bound for one unary call.
const OP_LIMIT: Duration = Duration::from_secs(10);
/// Bound for opening a watch stream (until the response headers).
const OPEN_LIMIT: Duration = Duration::from_secs(10);
/// How long watchers get, after the writes stopped, to deliver everything.
const DRAIN_LIMIT: Duration = Duration::from_secs(12);

fn all_keys() -> Vec<String> {
    let mut keys: Vec<String> = PREFIXES
        .iter()
        .flat_map(|p| (0..KEYS_PER_PREFIX).map(move |i| format!("{p}{i}")))
        .collect();
    keys.extend(LOOSE_KEYS.iter().map(|k| k.to_string()));
    keys
}

fn ms_since(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

// ---------------------------------------------------------------------------
// Recorded data
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct Kv {
    key: String,
    value: String,
    create: i64,
    modr: i64,
    ver: i64,
    lease: i64,
}

impl Kv {
    fn of(kv: &etcd_client::KeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create: kv.create_revision(),
            modr: kv.mod_revision(),
            ver: kv.version(),
            lease: kv.lease(),
        }
    }
}

fn short_value(v: &str) -> String {
    if v.len() > 16 {
        format!("{}..({}B)", &v[..12], v.len())
    } else {
        v.to_string()
    }
}

impl fmt::Display for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?} create={} mod={} ver={}",
            self.key,
            short_value(&self.value),
            self.create,
            self.modr,
            self.ver
        )?;
        if self.lease != 0 {
            write!(f, " lease={:x}", self.lease)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Ev {
    put: bool,
    kv: Kv,
    prev: Option<Kv>,
}

impl Ev {
    fn of(e: &etcd_client::Event) -> Ev {
        Ev {
            put: e.event_type() == EventType::Put,
            kv: e.kv().map(Kv::of).unwrap_or_else(|| Kv {
                key: "<event without kv>".into(),
                ..Kv::default()
            }),
            prev: e.prev_kv().map(Kv::of),
        }
    }

    fn rev(&self) -> i64 {
        self.kv.modr
    }

    /// Same change (type and kv), ignoring prev_kv.
    fn same_change(&self, o: &Ev) -> bool {
        self.put == o.put && self.kv == o.kv
    }
}

impl fmt::Display for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.put {
            write!(f, "PUT {}", self.kv)?;
        } else if self.kv
            == (Kv {
                key: self.kv.key.clone(),
                modr: self.kv.modr,
                ..Kv::default()
            })
        {
            write!(f, "DELETE {} @{}", self.kv.key, self.kv.modr)?;
        } else {
            write!(f, "DELETE {}", self.kv)?;
        }
        if let Some(p) = &self.prev {
            write!(f, " [prev {p}]")?;
        }
        Ok(())
    }
}

fn fmt_events(evs: &[Ev], max: usize) -> String {
    let mut s: Vec<String> = evs.iter().take(max).map(|e| format!("{e}")).collect();
    if evs.len() > max {
        s.push(format!("... ({} more)", evs.len() - max));
    }
    s.join("; ")
}

/// One WatchResponse as received.
#[derive(Clone, Debug)]
struct Resp {
    /// Milliseconds since the test started.
    ms: u64,
    watch_id: i64,
    created: bool,
    canceled: bool,
    compact: i64,
    reason: String,
    rev: i64,
    events: Vec<Ev>,
}

impl Resp {
    fn of(r: &etcd_client::WatchResponse, t0: Instant) -> Resp {
        Resp {
            ms: ms_since(t0),
            watch_id: r.watch_id(),
            created: r.created(),
            canceled: r.canceled(),
            compact: r.compact_revision(),
            reason: r.cancel_reason().to_string(),
            rev: r.header().map(|h| h.revision()).unwrap_or(-1),
            events: r.events().iter().map(Ev::of).collect(),
        }
    }

    /// A progress notification: no events, not a create/cancel answer.
    fn is_progress(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled && self.compact == 0
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[t={}ms watch_id={} header.revision={}",
            self.ms, self.watch_id, self.rev
        )?;
        if self.created {
            write!(f, " created")?;
        }
        if self.canceled {
            write!(f, " canceled")?;
        }
        if self.compact != 0 {
            write!(f, " compact_revision={}", self.compact)?;
        }
        if !self.reason.is_empty() {
            write!(f, " cancel_reason={:?}", self.reason)?;
        }
        if self.is_progress() {
            write!(f, " (progress)")?;
        }
        write!(f, "]")?;
        if !self.events.is_empty() {
            write!(
                f,
                " {} events: {}",
                self.events.len(),
                fmt_events(&self.events, 8)
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Watch specifications
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum KeyRange {
    Key(String),
    /// "" is the whole key space.
    Prefix(String),
    FromKey(String),
}

impl KeyRange {
    fn contains(&self, k: &str) -> bool {
        match self {
            KeyRange::Key(x) => k == x,
            KeyRange::Prefix(p) => k.starts_with(p.as_str()),
            KeyRange::FromKey(f) => k >= f.as_str(),
        }
    }

    /// (key, options with the range end) for a watch create request.
    fn watch_args(&self) -> (Vec<u8>, WatchOptions) {
        match self {
            KeyRange::Key(k) => (k.as_bytes().to_vec(), WatchOptions::new()),
            KeyRange::Prefix(p) if p.is_empty() => {
                (vec![0], WatchOptions::new().with_range(vec![0u8]))
            }
            KeyRange::Prefix(p) => (
                p.as_bytes().to_vec(),
                WatchOptions::new().with_range(prefix_end(p.as_bytes())),
            ),
            KeyRange::FromKey(f) => (
                f.as_bytes().to_vec(),
                WatchOptions::new().with_range(vec![0u8]),
            ),
        }
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRange::Key(k) => write!(f, "key {k:?}"),
            KeyRange::Prefix(p) if p.is_empty() => write!(f, "all keys"),
            KeyRange::Prefix(p) => write!(f, "prefix {p:?}"),
            KeyRange::FromKey(k) => write!(f, "from key {k:?}"),
        }
    }
}

/// One watcher of a stream.
#[derive(Clone, Debug)]
struct MemberSpec {
    range: KeyRange,
    /// 0: "from now".
    start_rev: i64,
    prev_kv: bool,
    progress_notify: bool,
}

impl fmt::Display for MemberSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} start_revision={}", self.range, self.start_rev)?;
        if self.prev_kv {
            write!(f, " prev_kv")?;
        }
        if self.progress_notify {
            write!(f, " progress_notify")?;
        }
        Ok(())
    }
}

/// One Watch gRPC stream and how its reader behaves.
#[derive(Clone, Debug)]
struct StreamSpec {
    id: usize,
    client: usize,
    members: Vec<MemberSpec>,
    /// Sleep this long after each response while the writers run.
    slow_ms: u64,
    /// Send WatchProgressRequests now and then (and one after the writes).
    progress_requests: bool,
    /// Single-watcher streams only: after this many event responses, drop
    /// the stream and resume from the last bookmark + 1.
    restart_every: Option<usize>,
}

impl fmt::Display for StreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {} (client {}", self.id, self.client)?;
        if self.slow_ms > 0 {
            write!(f, ", slow {}ms/response", self.slow_ms)?;
        }
        if self.progress_requests {
            write!(f, ", sends WatchProgressRequests")?;
        }
        if let Some(n) = self.restart_every {
            write!(f, ", restarts every {n} event responses")?;
        }
        if self.members.len() > 1 {
            write!(f, ", {} watchers on the stream", self.members.len())?;
        }
        write!(f, ")")
    }
}

// ---------------------------------------------------------------------------
// Watch stream runner
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum End {
    Open,
    /// Dropped by the test to restart from a bookmark.
    Dropped,
    /// Canceled by the server.
    Canceled,
    /// Everything expected arrived after the writes stopped.
    Drained,
    /// Not everything expected arrived within the drain limit.
    Timeout,
    Failed(String),
}

/// One watcher incarnation (a restart starts a new segment).
#[derive(Clone, Debug)]
struct Segment {
    start_req: i64,
    /// Last compaction that had completed when the create request was sent.
    compacted_floor: i64,
    /// Highest revision returned to a writer before the create was sent.
    rev_before: i64,
    watch_id: Option<i64>,
    resps: Vec<Resp>,
    end: End,
    /// When the stream's WatchProgressRequest after the writes was sent.
    final_progress_req_ms: Option<u64>,
}

impl Segment {
    fn new(start_req: i64, shared: &Shared) -> Segment {
        Segment {
            start_req,
            compacted_floor: shared.compacted.load(Ordering::SeqCst),
            rev_before: shared.write_rev.load(Ordering::SeqCst),
            watch_id: None,
            resps: Vec::new(),
            end: End::Open,
            final_progress_req_ms: None,
        }
    }

    fn created_rev(&self) -> Option<i64> {
        self.resps
            .first()
            .filter(|r| r.created && !r.canceled)
            .map(|r| r.rev)
    }

    /// The first revision this watcher must report.
    fn effective_start(&self) -> Option<i64> {
        if self.start_req > 0 {
            Some(self.start_req)
        } else {
            self.created_rev().map(|h| h + 1)
        }
    }

    fn events(&self) -> impl Iterator<Item = &Ev> {
        self.resps.iter().flat_map(|r| r.events.iter())
    }

    fn is_own_progress(&self, r: &Resp) -> bool {
        r.is_progress() && Some(r.watch_id) == self.watch_id
    }

    fn is_stream_progress(r: &Resp) -> bool {
        r.is_progress() && r.watch_id == -1
    }

    /// Highest revision this watcher is known to be complete up to.
    fn bookmark(&self) -> i64 {
        let mut b = self.effective_start().map(|s| s - 1).unwrap_or(0);
        for r in &self.resps {
            if let Some(e) = r.events.last() {
                b = b.max(e.rev());
            }
            if self.is_own_progress(r) || Self::is_stream_progress(r) {
                b = b.max(r.rev);
            }
        }
        b
    }
}

#[derive(Clone, Debug)]
struct StreamRecord {
    spec: StreamSpec,
    /// Per member, its segments in order.
    members: Vec<Vec<Segment>>,
    /// Responses that could not be attributed to a watcher.
    stray: Vec<String>,
    progress_requests_sent: usize,
}

struct DrainInfo {
    history: Arc<History>,
    deadline: Instant,
}

#[derive(Clone)]
enum Phase {
    Running,
    Drain(Arc<DrainInfo>),
}

struct Shared {
    t0: Instant,
    /// Highest revision returned to any writer so far.
    write_rev: AtomicI64,
    /// Revision of the last completed compaction (0: none).
    compacted: AtomicI64,
    /// Highest event revision the recorder has received.
    recorder_rev: AtomicI64,
    writes_done: AtomicBool,
}

/// Whether a watcher has received everything it must get after the writes.
fn member_done(seg: &Segment, m: &MemberSpec, spec: &StreamSpec, info: &DrainInfo) -> bool {
    if seg.end != End::Open {
        return true;
    }
    let Some(s) = seg.effective_start() else {
        return false;
    };
    let f = info.history.final_rev;
    if let Some(last) = info.history.last_rev_in(&m.range, s, against_etcd()) {
        match seg.events().last() {
            Some(e) if e.rev() >= last => {}
            _ => return false,
        }
    }
    if m.progress_notify
        && s <= f + 1
        && !seg
            .resps
            .iter()
            .any(|r| seg.is_own_progress(r) && r.rev >= f)
    {
        return false;
    }
    if spec.progress_requests {
        let Some(t) = seg.final_progress_req_ms else {
            return false;
        };
        if !seg
            .resps
            .iter()
            .any(|r| Segment::is_stream_progress(r) && r.ms >= t)
        {
            return false;
        }
    }
    true
}

fn create_options(m: &MemberSpec, start: i64) -> (Vec<u8>, WatchOptions) {
    let (key, mut opts) = m.range.watch_args();
    if start > 0 {
        opts = opts.with_start_revision(start);
    }
    if m.prev_kv {
        opts = opts.with_prev_key();
    }
    if m.progress_notify {
        opts = opts.with_progress_notify();
    }
    (key, opts)
}

/// Runs one watch stream until drained, timed out or failed; everything is
/// recorded in `rec` as it happens (the recorder's is read live).
async fn run_stream(
    client: Client,
    shared: Arc<Shared>,
    mut phase_rx: watch::Receiver<Phase>,
    rec: Arc<Mutex<StreamRecord>>,
    seed: u64,
    recorder_rev: Option<Arc<AtomicI64>>,
) {
    let spec = rec.lock().unwrap().spec.clone();
    let mut rng =
        StdRng::seed_from_u64(seed ^ (spec.id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut wc = client.watch_client();
    let mut start0 = spec.members[0].start_rev;
    let progress_gap = |rng: &mut StdRng| Duration::from_millis(rng.random_range(200..800));

    'incarnation: loop {
        let (key, opts) = create_options(&spec.members[0], start0);
        rec.lock().unwrap().members[0].push(Segment::new(start0, &shared));
        let open = within(OPEN_LIMIT, "open watch stream", wc.watch(key, Some(opts))).await;
        let stream = match open {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                rec.lock().unwrap().members[0].last_mut().unwrap().end =
                    End::Failed(format!("Watch call failed: {e}"));
                return;
            }
            Err(e) => {
                rec.lock().unwrap().members[0].last_mut().unwrap().end = End::Failed(e);
                return;
            }
        };
        let (mut tx, mut rx) = stream.split();
        // The member whose `created` response is awaited (members are
        // created one after the other, so ids map unambiguously).
        let mut pending: Option<usize> = Some(0);
        let mut ids: HashMap<i64, usize> = HashMap::new();
        let mut next_progress = tokio::time::Instant::now() + progress_gap(&mut rng);
        let mut final_req_sent = false;

        loop {
            let phase = phase_rx.borrow().clone();
            if let Phase::Drain(info) = &phase {
                if spec.progress_requests && !final_req_sent && pending.is_none() {
                    final_req_sent = true;
                    let t = ms_since(shared.t0);
                    if let Err(e) = tx.request_progress().await {
                        let mut r = rec.lock().unwrap();
                        fail_open(&mut r, &format!("sending WatchProgressRequest: {e}"));
                        return;
                    }
                    let mut r = rec.lock().unwrap();
                    r.progress_requests_sent += 1;
                    for segs in r.members.iter_mut() {
                        if let Some(seg) = segs.last_mut() {
                            seg.final_progress_req_ms = Some(t);
                        }
                    }
                }
                let r = rec.lock().unwrap();
                let all_done = pending.is_none()
                    && r.members.len() == spec.members.len()
                    && spec.members.iter().enumerate().all(|(i, m)| {
                        r.members[i]
                            .last()
                            .is_some_and(|seg| member_done(seg, m, &spec, info))
                    });
                drop(r);
                if all_done {
                    let mut r = rec.lock().unwrap();
                    for segs in r.members.iter_mut() {
                        if let Some(seg) = segs.last_mut()
                            && seg.end == End::Open
                        {
                            seg.end = End::Drained;
                        }
                    }
                    return;
                }
            }
            let draining = matches!(phase, Phase::Drain(_));
            let deadline = match &phase {
                Phase::Drain(info) => tokio::time::Instant::from_std(info.deadline),
                Phase::Running => tokio::time::Instant::now() + Duration::from_secs(3600),
            };
            let progress_due = spec.progress_requests && !draining && pending.is_none();

            tokio::select! {
                msg = rx.message() => {
                    let wr = match msg {
                        Ok(Some(wr)) => wr,
                        Ok(None) => {
                            fail_open(&mut rec.lock().unwrap(), "the server ended the watch stream");
                            return;
                        }
                        Err(e) => {
                            fail_open(&mut rec.lock().unwrap(), &format!("watch stream error: {e}"));
                            return;
                        }
                    };
                    let resp = Resp::of(&wr, shared.t0);
                    let mut create_next: Option<usize> = None;
                    {
                        let mut r = rec.lock().unwrap();
                        if Segment::is_stream_progress(&resp) {
                            for segs in r.members.iter_mut() {
                                if let Some(seg) = segs.last_mut()
                                    && seg.end == End::Open
                                    && seg.watch_id.is_some()
                                {
                                    seg.resps.push(resp.clone());
                                }
                            }
                        } else if resp.created && pending.is_some() {
                            let m = pending.take().unwrap();
                            ids.insert(resp.watch_id, m);
                            let seg = r.members[m].last_mut().unwrap();
                            seg.watch_id = Some(resp.watch_id);
                            if resp.canceled {
                                seg.end = End::Canceled;
                            }
                            seg.resps.push(resp);
                            if m + 1 < spec.members.len() {
                                create_next = Some(m + 1);
                            }
                        } else if let Some(&m) = ids.get(&resp.watch_id) {
                            let seg = r.members[m].last_mut().unwrap();
                            if seg.end == End::Open && resp.canceled {
                                seg.end = End::Canceled;
                            }
                            if let (Some(rr), Some(e)) = (&recorder_rev, resp.events.last()) {
                                rr.fetch_max(e.rev(), Ordering::SeqCst);
                            }
                            seg.resps.push(resp);
                        } else {
                            r.stray.push(format!("{resp}"));
                        }
                    }
                    if let Some(m) = create_next {
                        let start = spec.members[m].start_rev;
                        rec.lock().unwrap().members[m].push(Segment::new(start, &shared));
                        let (key, opts) = create_options(&spec.members[m], start);
                        if let Err(e) = tx.watch(key, Some(opts)).await {
                            fail_open(&mut rec.lock().unwrap(), &format!("sending a create request: {e}"));
                            return;
                        }
                        pending = Some(m);
                    }
                    if let (Some(n), false) = (spec.restart_every, draining) {
                        let mut r = rec.lock().unwrap();
                        let seg = r.members[0].last_mut().unwrap();
                        let event_resps = seg.resps.iter().filter(|r| !r.events.is_empty()).count();
                        if seg.end == End::Open && event_resps >= n {
                            seg.end = End::Dropped;
                            start0 = seg.bookmark() + 1;
                            drop(r);
                            drop(tx);
                            drop(rx);
                            continue 'incarnation;
                        }
                    }
                    if spec.slow_ms > 0 && !draining {
                        tokio::time::sleep(Duration::from_millis(spec.slow_ms)).await;
                    }
                }
                changed = phase_rx.changed() => {
                    if changed.is_err() {
                        // The test is over (or failed) without a drain.
                        fail_open(&mut rec.lock().unwrap(), "test ended before the drain phase");
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next_progress), if progress_due => {
                    next_progress = tokio::time::Instant::now() + progress_gap(&mut rng);
                    if let Err(e) = tx.request_progress().await {
                        fail_open(&mut rec.lock().unwrap(), &format!("sending WatchProgressRequest: {e}"));
                        return;
                    }
                    rec.lock().unwrap().progress_requests_sent += 1;
                }
                _ = tokio::time::sleep_until(deadline), if draining => {
                    let mut r = rec.lock().unwrap();
                    for segs in r.members.iter_mut() {
                        if let Some(seg) = segs.last_mut()
                            && seg.end == End::Open
                        {
                            seg.end = End::Timeout;
                        }
                    }
                    return;
                }
            }
        }
    }
}

fn fail_open(r: &mut StreamRecord, why: &str) {
    for segs in r.members.iter_mut() {
        if let Some(seg) = segs.last_mut()
            && seg.end == End::Open
        {
            seg.end = End::Failed(why.to_string());
        }
    }
}

// ---------------------------------------------------------------------------
// Writers, compactor
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Effect {
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    /// What a delete (or a txn's delete op) reported as deleted (prev_kvs).
    Delete { deleted: Vec<Kv> },
}

#[derive(Clone, Debug)]
enum OpKind {
    /// A put, a txn's executed branch or a delete-range that changed something.
    Write(Vec<Effect>),
    Revoke {
        lease: i64,
    },
}

#[derive(Clone, Debug)]
struct Op {
    who: String,
    kind: OpKind,
    /// Header revision of the response.
    rev: i64,
}

#[derive(Default)]
struct WriterLog {
    ops: Vec<Op>,
    /// Lease id -> TTL, for every lease granted.
    leases: HashMap<i64, i64>,
    /// Leases granted and not revoked by this writer.
    live: Vec<i64>,
    errors: Vec<String>,
}

async fn call<T>(
    what: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_LIMIT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {OP_LIMIT:?}")),
    }
}

fn lease_not_found(e: &str) -> bool {
    e.contains("requested lease not found")
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(-1)
}

fn make_value(rng: &mut StdRng, writer: usize, op: usize) -> String {
    // Sizeable values make slow readers fall behind sooner.
    format!(
        "w{writer}.{op}.{}",
        "x".repeat(rng.random_range(0..500usize))
    )
}

async fn writer(id: usize, mut c: Client, seed: u64, shared: Arc<Shared>) -> WriterLog {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x5752_0000 + id as u64));
    let keys = all_keys();
    let mut log = WriterLog::default();
    let pick = |rng: &mut StdRng| keys[rng.random_range(0..keys.len())].clone();
    for i in 0..OPS_PER_WRITER {
        if log.errors.len() >= 3 {
            log.errors
                .push(format!("writer {id}: stopped after 3 errors"));
            break;
        }
        let pause = rng.random_range(0..30u64);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let who = format!("writer {id} op {i}");
        let dice = rng.random_range(0..100);
        let res: Result<(), String> = async {
            match dice {
                0..=39 => {
                    let key = pick(&mut rng);
                    let value = make_value(&mut rng, id, i);
                    let r = call(&who, c.put(key.clone(), value.clone(), None)).await?;
                    log.ops.push(Op {
                        who: format!("{who}: put {key}"),
                        kind: OpKind::Write(vec![Effect::Put { key, value, lease: 0 }]),
                        rev: header_rev(r.header()),
                    });
                }
                40..=64 => {
                    let mut ks = keys.clone();
                    let n_then = rng.random_range(1..=3);
                    let n_else = rng.random_range(1..=3);
                    let mut chosen = Vec::new();
                    for _ in 0..n_then + n_else {
                        let k = ks.remove(rng.random_range(0..ks.len()));
                        chosen.push((k, rng.random_bool(0.7)));
                    }
                    let (then_plan, else_plan) = chosen.split_at(n_then);
                    let to_ops = |plan: &[(String, bool)], rng: &mut StdRng| -> (Vec<TxnOp>, Vec<Option<String>>) {
                        let mut ops = Vec::new();
                        let mut values = Vec::new();
                        for (k, is_put) in plan {
                            if *is_put {
                                let v = make_value(rng, id, i);
                                ops.push(TxnOp::put(k.clone(), v.clone(), None));
                                values.push(Some(v));
                            } else {
                                ops.push(TxnOp::delete(
                                    k.clone(),
                                    Some(DeleteOptions::new().with_prev_key()),
                                ));
                                values.push(None);
                            }
                        }
                        (ops, values)
                    };
                    let (then_ops, then_vals) = to_ops(then_plan, &mut rng);
                    let (else_ops, else_vals) = to_ops(else_plan, &mut rng);
                    let cmp_key = pick(&mut rng);
                    let txn = Txn::new()
                        .when([Compare::version(cmp_key.clone(), CompareOp::Greater, 0)])
                        .and_then(then_ops)
                        .or_else(else_ops);
                    let r = call(&who, c.txn(txn)).await?;
                    let (plan, vals) = if r.succeeded() {
                        (then_plan, then_vals)
                    } else {
                        (else_plan, else_vals)
                    };
                    let op_resps = r.op_responses();
                    if op_resps.len() != plan.len() {
                        return Err(format!(
                            "{who}: txn returned {} op responses for {} ops",
                            op_resps.len(),
                            plan.len()
                        ));
                    }
                    let mut effects = Vec::new();
                    let mut changed = false;
                    for (((k, _), v), resp) in plan.iter().zip(vals).zip(op_resps) {
                        match (v, resp) {
                            (Some(value), TxnOpResponse::Put(_)) => {
                                changed = true;
                                effects.push(Effect::Put { key: k.clone(), value, lease: 0 });
                            }
                            (None, TxnOpResponse::Delete(d)) => {
                                let deleted: Vec<Kv> = d.prev_kvs().iter().map(Kv::of).collect();
                                if deleted.len() as i64 != d.deleted() {
                                    return Err(format!(
                                        "{who}: txn delete of {k} says deleted={} but returned {} prev_kvs",
                                        d.deleted(),
                                        deleted.len()
                                    ));
                                }
                                changed |= !deleted.is_empty();
                                effects.push(Effect::Delete { deleted });
                            }
                            (_, other) => {
                                return Err(format!("{who}: unexpected txn op response {other:?}"))
                            }
                        }
                    }
                    if changed {
                        log.ops.push(Op {
                            who: format!(
                                "{who}: txn if version({cmp_key})>0 -> {} branch {:?}",
                                if r.succeeded() { "then" } else { "else" },
                                plan
                            ),
                            kind: OpKind::Write(effects),
                            rev: header_rev(r.header()),
                        });
                    }
                }
                65..=79 => {
                    let (desc, key, opts) = match rng.random_range(0..10) {
                        0..=4 => {
                            let k = pick(&mut rng);
                            (format!("delete {k}"), k, DeleteOptions::new())
                        }
                        5..=7 => {
                            let p = PREFIXES[rng.random_range(0..PREFIXES.len())];
                            (format!("delete prefix {p}"), p.to_string(), DeleteOptions::new().with_prefix())
                        }
                        _ => {
                            let p = PREFIXES[rng.random_range(0..PREFIXES.len())];
                            let a = rng.random_range(0..KEYS_PER_PREFIX - 1);
                            let b = rng.random_range(a + 1..=KEYS_PER_PREFIX);
                            let (from, to) = (format!("{p}{a}"), format!("{p}{b}"));
                            (format!("delete [{from}, {to})"), from, DeleteOptions::new().with_range(to))
                        }
                    };
                    let r = call(&who, c.delete(key, Some(opts.with_prev_key()))).await?;
                    let deleted: Vec<Kv> = r.prev_kvs().iter().map(Kv::of).collect();
                    if deleted.len() as i64 != r.deleted() {
                        return Err(format!(
                            "{who}: {desc} says deleted={} but returned {} prev_kvs",
                            r.deleted(),
                            deleted.len()
                        ));
                    }
                    if !deleted.is_empty() {
                        log.ops.push(Op {
                            who: format!("{who}: {desc}"),
                            kind: OpKind::Write(vec![Effect::Delete { deleted }]),
                            rev: header_rev(r.header()),
                        });
                    }
                }
                80..=89 => {
                    // Grant a lease and attach a few keys to it; one in four
                    // leases is short and left to expire.
                    let short = rng.random_bool(0.25);
                    let ttl = if short { SHORT_TTL } else { LONG_TTL };
                    let g = call(&format!("{who}: grant"), c.lease_grant(ttl, None)).await?;
                    let lease = g.id();
                    log.leases.insert(lease, ttl);
                    log.live.push(lease);
                    for _ in 0..rng.random_range(1..=3) {
                        let key = pick(&mut rng);
                        let value = make_value(&mut rng, id, i);
                        let what = format!("{who}: put {key} with lease {lease:x} (ttl {ttl})");
                        match call(&what, c.put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)))).await {
                            Ok(r) => log.ops.push(Op {
                                who: what,
                                kind: OpKind::Write(vec![Effect::Put { key, value, lease }]),
                                rev: header_rev(r.header()),
                            }),
                            // A short lease may already have expired.
                            Err(e) if short && lease_not_found(&e) => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                _ => {
                    if log.live.is_empty() {
                        return Ok(());
                    }
                    let lease = log.live.remove(rng.random_range(0..log.live.len()));
                    let what = format!("{who}: revoke lease {lease:x}");
                    match call(&what, c.lease_revoke(lease)).await {
                        Ok(r) => log.ops.push(Op {
                            who: what,
                            kind: OpKind::Revoke { lease },
                            rev: header_rev(r.header()),
                        }),
                        Err(e) if log.leases[&lease] == SHORT_TTL && lease_not_found(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => {
                if let Some(op) = log.ops.last() {
                    shared.write_rev.fetch_max(op.rev, Ordering::SeqCst);
                }
            }
            Err(e) => log.errors.push(e),
        }
    }
    log
}

async fn compactor(mut c: Client, seed: u64, shared: Arc<Shared>) -> (Vec<i64>, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC0_4AC7);
    let mut done = Vec::new();
    let mut last = 0;
    while !shared.writes_done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(600..1300))).await;
        if shared.writes_done.load(Ordering::SeqCst) {
            break;
        }
        // Never compact what the recorder has not received yet: it is the
        // reference history and must not be canceled.
        let target = shared
            .recorder_rev
            .load(Ordering::SeqCst)
            .min(shared.write_rev.load(Ordering::SeqCst) - 40);
        if target <= last + 10 {
            continue;
        }
        match call(&format!("compact {target}"), c.compact(target, None)).await {
            Ok(_) => {
                last = target;
                shared.compacted.store(target, Ordering::SeqCst);
                done.push(target);
            }
            Err(e) => return (done, vec![e]),
        }
    }
    (done, Vec::new())
}

fn gen_range(rng: &mut StdRng, keys: &[String]) -> KeyRange {
    match rng.random_range(0..10) {
        0..=3 => KeyRange::Key(keys[rng.random_range(0..keys.len())].clone()),
        4..=6 => KeyRange::Prefix(PREFIXES[rng.random_range(0..PREFIXES.len())].to_string()),
        7 => KeyRange::Prefix(String::new()),
        _ => KeyRange::FromKey(keys[rng.random_range(0..keys.len())].clone()),
    }
}

fn gen_stream(id: usize, rng: &mut StdRng, shared: &Shared) -> StreamSpec {
    let keys = all_keys();
    let n = if rng.random_bool(0.2) {
        rng.random_range(2..=3)
    } else {
        1
    };
    let members = (0..n)
        .map(|_| {
            let cur = shared.write_rev.load(Ordering::SeqCst).max(1);
            let compacted = shared.compacted.load(Ordering::SeqCst);
            let start_rev = match rng.random_range(0..100) {
                0..=24 => 0,
                25..=64 => (cur - rng.random_range(0..30)).max(1),
                65..=74 => cur + rng.random_range(1..=5),
                // Deliberately below the last compaction.
                75..=84 if compacted > 1 => rng.random_range((compacted - 10).max(1)..compacted),
                _ => (cur - rng.random_range(0..300)).max(1),
            };
            MemberSpec {
                range: gen_range(rng, &keys),
                start_rev,
                prev_kv: rng.random_bool(0.35),
                progress_notify: rng.random_bool(0.35),
            }
        })
        .collect();
    StreamSpec {
        id,
        client: rng.random_range(0..CLIENTS),
        members,
        slow_ms: if rng.random_bool(0.25) {
            rng.random_range(150..400)
        } else {
            0
        },
        progress_requests: rng.random_bool(0.3),
        restart_every: if n == 1 && rng.random_bool(0.25) {
            Some(rng.random_range(2..8))
        } else {
            None
        },
    }
}

// ---------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------

struct History {
    /// Revision -> its events, in order.
    by_rev: BTreeMap<i64, Vec<Ev>>,
    /// All events in order.
    flat: Vec<Ev>,
    /// (revision, key) -> the key's kv just before that revision.
    prev_of: HashMap<(i64, String), Option<Kv>>,
    final_rev: i64,
    compactions: Vec<i64>,
}

impl History {
    fn events_in<'a>(&'a self, range: &'a KeyRange, from: i64) -> impl Iterator<Item = &'a Ev> {
        self.flat
            .iter()
            .filter(move |e| e.rev() >= from && range.contains(&e.kv.key))
    }

    /// The last event revision a watcher of `range` from `from` must get
    /// (against etcd, not counting DELETEs etcd may lose, see
    /// [`Self::lost_by_etcd_compaction`]).
    fn last_rev_in(&self, range: &KeyRange, from: i64, etcd: bool) -> Option<i64> {
        self.flat
            .iter()
            .rev()
            .filter(|e| !(etcd && self.lost_by_etcd_compaction(e)))
            .find(|e| e.rev() >= from && range.contains(&e.kv.key))
            .map(|e| e.rev())
    }

    /// A DELETE at exactly a compaction revision, which etcd 3.4.23 loses
    /// for watchers reading that revision after the compaction.
    fn lost_by_etcd_compaction(&self, e: &Ev) -> bool {
        !e.put && self.compactions.contains(&e.rev())
    }

    fn max_compaction(&self) -> i64 {
        self.compactions.iter().copied().max().unwrap_or(0)
    }
}

#[derive(Debug)]
struct Violation {
    who: String,
    what: String,
    /// A known deviation of the etcd version under test (reported, not fatal
    /// against etcd; fatal against MetaStore).
    known_etcd_bug: bool,
}

fn violation(who: &str, what: String) -> Violation {
    Violation {
        who: who.to_string(),
        what,
        known_etcd_bug: false,
    }
}

fn delete_ev(key: &str, rev: i64) -> Ev {
    Ev {
        put: false,
        kv: Kv {
            key: key.to_string(),
            modr: rev,
            ..Kv::default()
        },
        prev: None,
    }
}

/// Validates the recorder's events against the writers' results and builds
/// the reference history.
fn build_history(
    recorder_events: Vec<Ev>,
    ops: &[Op],
    leases: &HashMap<i64, i64>,
    final_rev: i64,
    compactions: Vec<i64>,
    out: &mut Vec<Violation>,
) -> History {
    let who = "history (recorder watch vs. writers' responses)";
    let mut by_rev: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    for e in recorder_events.into_iter().filter(|e| e.rev() <= final_rev) {
        by_rev.entry(e.rev()).or_default().push(e);
    }
    let mut writes: HashMap<i64, &Op> = HashMap::new();
    let mut revokes: HashMap<i64, Vec<&Op>> = HashMap::new();
    for op in ops {
        if op.rev < 1 || op.rev > final_rev {
            out.push(violation(
                who,
                format!(
                    "{}: response revision {} outside 1..={final_rev}",
                    op.who, op.rev
                ),
            ));
            continue;
        }
        match &op.kind {
            OpKind::Write(_) => {
                if let Some(other) = writes.insert(op.rev, op) {
                    out.push(violation(
                        who,
                        format!(
                            "two writes were told the same revision {}: {} and {}",
                            op.rev, other.who, op.who
                        ),
                    ));
                }
            }
            OpKind::Revoke { .. } => revokes.entry(op.rev).or_default().push(op),
        }
    }

    let mut state: BTreeMap<String, Kv> = BTreeMap::new();
    let mut prev_of = HashMap::new();
    let lease_keys = |state: &BTreeMap<String, Kv>, lease: i64, rev: i64| -> Vec<Ev> {
        state
            .values()
            .filter(|kv| kv.lease == lease)
            .map(|kv| delete_ev(&kv.key, rev))
            .collect()
    };
    for rev in 2..=final_rev {
        let Some(evs) = by_rev.get(&rev) else {
            out.push(violation(
                who,
                format!(
                    "revision {rev} has no events (each revision up to {final_rev} must come from a change){}",
                    writes
                        .get(&rev)
                        .map(|op| format!("; it was returned to {}", op.who))
                        .unwrap_or_default()
                ),
            ));
            continue;
        };
        for e in evs {
            prev_of.insert((rev, e.kv.key.clone()), state.get(&e.kv.key).cloned());
        }
        let (cause, expected): (String, Vec<Ev>) = if let Some(op) = writes.get(&rev) {
            let OpKind::Write(effects) = &op.kind else {
                unreachable!()
            };
            let mut exp = Vec::new();
            for eff in effects {
                match eff {
                    Effect::Put { key, value, lease } => {
                        let prev = state.get(key);
                        exp.push(Ev {
                            put: true,
                            kv: Kv {
                                key: key.clone(),
                                value: value.clone(),
                                create: prev.map(|p| p.create).unwrap_or(rev),
                                modr: rev,
                                ver: prev.map(|p| p.ver + 1).unwrap_or(1),
                                lease: *lease,
                            },
                            prev: None,
                        });
                    }
                    Effect::Delete { deleted } => {
                        for d in deleted {
                            if state.get(&d.key) != Some(d) {
                                out.push(violation(
                                    who,
                                    format!(
                                        "{} (revision {rev}) returned prev_kv {d} but the history had {}",
                                        op.who,
                                        state
                                            .get(&d.key)
                                            .map(|k| k.to_string())
                                            .unwrap_or_else(|| "no such key".into())
                                    ),
                                ));
                            }
                            exp.push(delete_ev(&d.key, rev));
                        }
                    }
                }
            }
            (op.who.clone(), exp)
        } else if let Some(op) = revokes.get(&rev).and_then(|v| {
            v.iter().find(|op| {
                let OpKind::Revoke { lease } = op.kind else {
                    return false;
                };
                state.values().any(|kv| kv.lease == lease)
            })
        }) {
            let OpKind::Revoke { lease } = op.kind else {
                unreachable!()
            };
            (op.who.clone(), lease_keys(&state, lease, rev))
        } else {
            // Not a client write: must be a lease expiring on its own.
            let lease = evs
                .first()
                .filter(|e| !e.put)
                .and_then(|e| state.get(&e.kv.key))
                .map(|kv| kv.lease)
                .unwrap_or(0);
            match leases.get(&lease) {
                Some(&ttl) if ttl == SHORT_TTL => (
                    format!("expiry of lease {lease:x} (ttl {ttl}s)"),
                    lease_keys(&state, lease, rev),
                ),
                Some(&ttl) => {
                    out.push(violation(
                        who,
                        format!(
                            "revision {rev}: lease {lease:x} with ttl {ttl}s expired (or was revoked by nobody) long before its TTL; events: {}",
                            fmt_events(evs, 10)
                        ),
                    ));
                    (String::new(), evs.clone())
                }
                None => {
                    out.push(violation(
                        who,
                        format!(
                            "revision {rev} was returned to no writer and is no lease expiry; events: {}",
                            fmt_events(evs, 10)
                        ),
                    ));
                    (String::new(), evs.clone())
                }
            }
        };
        let same =
            evs.len() == expected.len() && evs.iter().zip(&expected).all(|(a, b)| a.same_change(b));
        if !same {
            out.push(violation(
                who,
                format!(
                    "revision {rev} ({cause}): the recorder got [{}] but the request implies [{}]",
                    fmt_events(evs, 10),
                    fmt_events(&expected, 10)
                ),
            ));
        }
        for e in evs {
            if e.put {
                state.insert(e.kv.key.clone(), e.kv.clone());
            } else {
                state.remove(&e.kv.key);
            }
        }
        for op in revokes.get(&rev).into_iter().flatten() {
            let OpKind::Revoke { lease } = op.kind else {
                unreachable!()
            };
            let left: Vec<&str> = state
                .values()
                .filter(|kv| kv.lease == lease)
                .map(|kv| kv.key.as_str())
                .collect();
            if !left.is_empty() {
                out.push(violation(
                    who,
                    format!(
                        "{} returned revision {rev}, but keys {left:?} of that lease still exist after it",
                        op.who
                    ),
                ));
            }
        }
    }
    for (&rev, evs) in by_rev.range(..2) {
        out.push(violation(
            who,
            format!("events at revision {rev}: {}", fmt_events(evs, 5)),
        ));
    }
    let flat = by_rev.values().flatten().cloned().collect();
    History {
        by_rev,
        flat,
        prev_of,
        final_rev,
        compactions,
    }
}

/// Replays the history into the final state.
fn replay(h: &History) -> BTreeMap<String, Kv> {
    let mut state = BTreeMap::new();
    for e in &h.flat {
        if e.put {
            state.insert(e.kv.key.clone(), e.kv.clone());
        } else {
            state.remove(&e.kv.key);
        }
    }
    state
}

// ---------------------------------------------------------------------------
// Checker
// ---------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Stats {
    segments: usize,
    events: usize,
    own_progress: usize,
    stream_progress: usize,
    compaction_cancels: usize,
    deliberate_compacted: usize,
    restarts: usize,
    prev_kvs_checked: usize,
    multi_rev_responses: usize,
}

fn check_stream(rec: &StreamRecord, h: &History, etcd: bool, stats: &mut Stats) -> Vec<Violation> {
    let mut out = Vec::new();
    for s in &rec.stray {
        out.push(violation(
            &format!("{}", rec.spec),
            format!("response for no watcher of this stream: {s}"),
        ));
    }
    for (m, segs) in rec.members.iter().enumerate() {
        let mspec = &rec.spec.members[m];
        for (k, seg) in segs.iter().enumerate() {
            let who = format!(
                "{} watcher {m} [{mspec}] segment {k} (start_revision={}, watch_id={:?}, ended {:?})",
                rec.spec, seg.start_req, seg.watch_id, seg.end
            );
            stats.segments += 1;
            if seg.end == End::Dropped {
                stats.restarts += 1;
            }
            check_segment(
                seg,
                mspec,
                &rec.spec,
                k + 1 == segs.len(),
                h,
                etcd,
                &who,
                stats,
                &mut out,
            );
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn check_segment(
    seg: &Segment,
    m: &MemberSpec,
    spec: &StreamSpec,
    last_segment: bool,
    h: &History,
    etcd: bool,
    who: &str,
    stats: &mut Stats,
    out: &mut Vec<Violation>,
) {
    let mut errs: Vec<String> = Vec::new();
    let mut known: Vec<String> = Vec::new();
    check_segment_into(
        seg,
        m,
        spec,
        last_segment,
        h,
        etcd,
        stats,
        &mut errs,
        &mut known,
    );
    out.extend(errs.into_iter().map(|what| violation(who, what)));
    out.extend(known.into_iter().map(|what| Violation {
        who: who.to_string(),
        what,
        known_etcd_bug: true,
    }));
}

#[allow(clippy::too_many_arguments)]
fn check_segment_into(
    seg: &Segment,
    m: &MemberSpec,
    spec: &StreamSpec,
    last_segment: bool,
    h: &History,
    etcd: bool,
    stats: &mut Stats,
    errs: &mut Vec<String>,
    known: &mut Vec<String>,
) {
    let f = h.final_rev;
    let mut v = |what: String| errs.push(what);
    if let End::Failed(why) = &seg.end {
        v(format!("failed: {why}"));
    }
    let Some(first) = seg.resps.first() else {
        if !matches!(seg.end, End::Failed(_)) {
            v("no response at all (not even `created`)".into());
        }
        return;
    };
    if !first.created || first.canceled {
        v(format!(
            "the first response must be `created` (and not canceled): {first}"
        ));
        return;
    }
    let h_rev = first.rev;
    if h_rev < seg.rev_before {
        v(format!(
            "created response has header revision {h_rev}, below revision {} already returned to a writer before the watch was requested",
            seg.rev_before
        ));
    }
    let s = seg.effective_start().unwrap();
    let mut expected: Vec<&Ev> = h.events_in(&m.range, s).collect();
    if etcd {
        // etcd 3.4.23 loses the tombstone of a key deleted exactly at the
        // compaction revision, so a watcher reading that revision after the
        // compaction misses the DELETE (etcd-io/etcd#18089).
        let got_keys: HashSet<(i64, &str)> =
            seg.events().map(|e| (e.rev(), e.kv.key.as_str())).collect();
        // Only what it could have received: before its last event, or all
        // when it ran to the end.
        let reached = if matches!(seg.end, End::Drained | End::Timeout) {
            i64::MAX
        } else {
            seg.events().map(|e| e.rev()).max().unwrap_or(0)
        };
        let missed = |e: &Ev| {
            h.lost_by_etcd_compaction(e)
                && e.rev() < reached
                && !got_keys.contains(&(e.rev(), e.kv.key.as_str()))
        };
        let lost: Vec<String> = expected
            .iter()
            .filter(|e| missed(e))
            .map(|e| e.to_string())
            .collect();
        if !lost.is_empty() {
            expected.retain(|e| !missed(e));
            known.push(format!(
                "did not get {} DELETE event(s) at a compaction revision: {} [etcd 3.4.23 drops the tombstone at exactly the compaction revision (etcd-io/etcd#18089, fixed by #18274 in later releases)]",
                lost.len(),
                lost.join("; ")
            ));
        }
    }
    let count_upto = |r: i64| expected.iter().take_while(|e| e.rev() <= r).count();
    let compacted_at_create = seg.start_req > 0 && seg.start_req < seg.compacted_floor;
    if compacted_at_create {
        stats.deliberate_compacted += 1;
    }

    let mut got: Vec<&Ev> = Vec::new();
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    let mut last_rev = 0;
    let mut mismatch_reported = false;
    let mut cancel: Option<&Resp> = None;
    for (i, r) in seg.resps.iter().enumerate().skip(1) {
        if cancel.is_some() {
            v(format!("response after the cancel: {r}"));
            continue;
        }
        if r.created {
            v(format!("a second `created` response: {r}"));
            continue;
        }
        if r.canceled {
            cancel = Some(r);
            if !r.events.is_empty() {
                v(format!("cancel response carries events: {r}"));
            }
            continue;
        }
        if r.compact != 0 {
            v(format!("compact_revision set without canceled: {r}"));
        }
        if r.is_progress() {
            let stream_wide = r.watch_id == -1;
            if stream_wide {
                stats.stream_progress += 1;
            } else {
                stats.own_progress += 1;
            }
            if r.rev > f {
                v(format!(
                    "progress notification above the final revision {f}: {r}"
                ));
            }
            // Everything <= R must have been delivered, nothing > R yet.
            let want = count_upto(r.rev);
            if got.len() != want && !mismatch_reported {
                let missing = expected
                    .get(got.len())
                    .map(|e| format!("first event not yet delivered: {e}"))
                    .unwrap_or_default();
                let what = format!(
                    "progress notification {r} (response #{i}) came after {} events but the history has {want} events <= {} in range from {s}; {missing}; last event delivered before it: {}",
                    got.len(),
                    r.rev,
                    got.last()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "none".into())
                );
                if stream_wide && etcd {
                    known.push(format!(
                        "{what} [etcd 3.4.23 answers WatchProgressRequest out of band (etcd-io/etcd#15220, fixed by #15237 in later releases)]"
                    ));
                } else {
                    v(what);
                }
            }
            continue;
        }
        if r.events.is_empty() {
            v(format!(
                "response without events that is no progress notification: {r}"
            ));
            continue;
        }
        if r.watch_id != seg.watch_id.unwrap_or(i64::MIN) {
            v(format!("event response with a foreign watch id: {r}"));
        }
        let revs: Vec<i64> = r.events.iter().map(|e| e.rev()).collect();
        let distinct: HashSet<i64> = revs.iter().copied().collect();
        if distinct.len() > 1 {
            stats.multi_rev_responses += 1;
        }
        if let Some(&max) = revs.iter().max()
            && r.rev < max
        {
            v(format!(
                "header revision {} below an event revision {max}: {r}",
                r.rev
            ));
        }
        // atomic: each revision of this response is complete in it
        for &rev in &distinct {
            let in_resp = r.events.iter().filter(|e| e.rev() == rev).count();
            let in_hist = expected.iter().filter(|e| e.rev() == rev).count();
            if rev >= s && in_resp != in_hist {
                v(format!(
                    "revision {rev} split: this response has {in_resp} of its {in_hist} events in range: {r}; the revision's events: {}",
                    fmt_events(h.by_rev.get(&rev).map(|v| v.as_slice()).unwrap_or(&[]), 8)
                ));
            }
        }
        for e in &r.events {
            stats.events += 1;
            if e.rev() < last_rev {
                v(format!(
                    "out of order: event {e} (revision {}) after revision {last_rev}, in {r}",
                    e.rev()
                ));
            }
            last_rev = last_rev.max(e.rev());
            if !seen.insert((e.rev(), e.kv.key.as_str())) {
                v(format!("duplicate event {e} in {r}"));
            }
            if !m.range.contains(&e.kv.key) {
                v(format!("event outside the watched range: {e}"));
            }
            if e.rev() < s {
                v(format!("event {e} below the start revision {s}"));
            }
            // reliable: position by position equal to the history
            let pos = got.len();
            if !mismatch_reported {
                match expected.get(pos) {
                    Some(x) if x.same_change(e) => {}
                    Some(x) => {
                        mismatch_reported = true;
                        v(format!(
                            "gap or wrong event at position {pos}: got {e} but the history's next event in range from {s} is {x} (previous delivered: {}); in {r}",
                            got.last()
                                .map(|e| e.to_string())
                                .unwrap_or_else(|| "none".into())
                        ));
                    }
                    None => {
                        mismatch_reported = true;
                        v(format!(
                            "event {e} beyond the history (which has {} events in range from {s}, up to revision {f})",
                            expected.len()
                        ));
                    }
                }
            }
            got.push(e);
            check_prev_kv(e, m, h, &mut v, stats);
        }
    }

    // compaction
    if let Some(c) = cancel {
        if c.compact == 0 {
            v(format!(
                "canceled by the server without compact_revision (the test never cancels): {c}"
            ));
        } else {
            stats.compaction_cancels += 1;
            if !h.compactions.contains(&c.compact) {
                v(format!(
                    "compact_revision {} is no compaction the test made ({:?}): {c}",
                    c.compact, h.compactions
                ));
            }
            if c.compact <= s {
                v(format!(
                    "canceled for compaction {} although it starts at {s} (not compacted): {c}",
                    c.compact
                ));
            }
            if let Some(e) = got.last()
                && c.compact <= e.rev() + 1
            {
                v(format!(
                    "canceled for compaction {} although it had received everything up to {} (its next revision {} is not compacted): {c}",
                    c.compact,
                    e.rev(),
                    e.rev() + 1
                ));
            }
        }
    }
    if compacted_at_create {
        match cancel {
            Some(c) if c.compact >= seg.compacted_floor && got.is_empty() => {}
            _ => v(format!(
                "start revision {} was compacted (compaction at {} had completed before the create request), so the watch must be created and then canceled with compact_revision >= {}; got: {}",
                seg.start_req,
                seg.compacted_floor,
                seg.compacted_floor,
                seg.resps
                    .iter()
                    .take(4)
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(" | ")
            )),
        }
    }

    // completeness at the end
    if matches!(seg.end, End::Drained | End::Timeout) && cancel.is_none() && !mismatch_reported {
        if got.len() < expected.len() {
            v(format!(
                "missing events: got {} of the {} events in range from revision {s} up to {f}; first missing: {}; last got: {}",
                got.len(),
                expected.len(),
                expected[got.len()],
                got.last()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "none".into())
            ));
        }
        if last_segment && seg.end == End::Timeout {
            if m.progress_notify
                && s <= f + 1
                && !seg
                    .resps
                    .iter()
                    .any(|r| seg.is_own_progress(r) && r.rev >= f)
            {
                v(format!(
                    "progress_notify watcher got no progress notification with revision {f} within {DRAIN_LIMIT:?} after the writes stopped (server flag {PROGRESS_INTERVAL_FLAG} {PROGRESS_INTERVAL})"
                ));
            }
            if spec.progress_requests {
                let answered = seg.final_progress_req_ms.is_some_and(|t| {
                    seg.resps
                        .iter()
                        .any(|r| Segment::is_stream_progress(r) && r.ms >= t)
                });
                if !answered {
                    v(format!(
                        "the WatchProgressRequest sent after the writes (t={:?}ms) got no answer (a response with watch_id -1, no events, header.revision {f})",
                        seg.final_progress_req_ms
                    ));
                }
            }
        }
    }
}

fn check_prev_kv(
    e: &Ev,
    m: &MemberSpec,
    h: &History,
    v: &mut impl FnMut(String),
    stats: &mut Stats,
) {
    let rev = e.rev();
    let is_create = e.put && e.kv.create == e.kv.modr;
    if !m.prev_kv || is_create {
        if let Some(p) = &e.prev {
            v(format!(
                "prev_kv {p} present although {}: {e}",
                if m.prev_kv {
                    "the event is a creation"
                } else {
                    "prev_kv was not requested"
                }
            ));
        }
        return;
    }
    stats.prev_kvs_checked += 1;
    let want = h.prev_of.get(&(rev, e.kv.key.clone())).cloned().flatten();
    match (&e.prev, &want) {
        (a, b) if a == b => {}
        // The previous revision may have been compacted meanwhile.
        (None, _) if rev - 1 < h.max_compaction() => {}
        _ => v(format!(
            "wrong prev_kv for {e}: expected {}",
            want.map(|k| k.to_string()).unwrap_or_else(|| "none".into())
        )),
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

fn new_record(spec: StreamSpec) -> Arc<Mutex<StreamRecord>> {
    let n = spec.members.len();
    Arc::new(Mutex::new(StreamRecord {
        spec,
        members: vec![Vec::new(); n],
        stray: Vec::new(),
        progress_requests_sent: 0,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_guarantees_under_concurrent_writes() {
    let seed = test_seed("watch_guarantees_under_concurrent_writes");
    let Some((_server, ep)) = start_server(&[PROGRESS_INTERVAL_FLAG, PROGRESS_INTERVAL]) else {
        return;
    };
    let etcd = against_etcd();
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect(&ep).await);
    }
    let mut c = clients[0].clone();
    let r0 = call("initial get", c.get("m", None))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(
        header_rev(r0.header()),
        1,
        "seed {seed}: the test needs a fresh server"
    );

    let shared = Arc::new(Shared {
        t0: Instant::now(),
        write_rev: AtomicI64::new(1),
        compacted: AtomicI64::new(0),
        recorder_rev: AtomicI64::new(1),
        writes_done: AtomicBool::new(false),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);

    // The recorder: all keys from revision 1, read as fast as possible.
    let recorder_spec = StreamSpec {
        id: 0,
        client: 0,
        members: vec![MemberSpec {
            range: KeyRange::Prefix(String::new()),
            start_rev: 1,
            prev_kv: false,
            progress_notify: false,
        }],
        slow_ms: 0,
        progress_requests: false,
        restart_every: None,
    };
    let recorder = new_record(recorder_spec);
    let recorder_rev = Arc::new(AtomicI64::new(1));
    let recorder_task = tokio::spawn(run_stream(
        clients[0].clone(),
        shared.clone(),
        phase_rx.clone(),
        recorder.clone(),
        seed,
        Some(recorder_rev.clone()),
    ));
    // Mirror the recorder's progress for the compactor.
    let mirror = {
        let (shared, rr) = (shared.clone(), recorder_rev.clone());
        tokio::spawn(async move {
            loop {
                shared
                    .recorder_rev
                    .store(rr.load(Ordering::SeqCst), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Wait until the recorder is created, so it sees revision 2 onwards.
    let created = within(OPEN_LIMIT, "recorder watch created", async {
        loop {
            {
                let r = recorder.lock().unwrap();
                if let Some(seg) = r.members[0].first() {
                    if !seg.resps.is_empty() {
                        return Ok(());
                    }
                    if let End::Failed(e) = &seg.end {
                        return Err(e.clone());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    match created {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => panic!(
            "seed {seed}: the recorder watch (all keys from revision 1) could not be created on {}: {e}",
            server_name()
        ),
    }

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                w,
                clients[w % CLIENTS].clone(),
                seed,
                shared.clone(),
            ))
        })
        .collect();
    let compactor_task = tokio::spawn(compactor(
        clients[1 % CLIENTS].clone(),
        seed,
        shared.clone(),
    ));
    let spawner = {
        let (shared, clients, phase_rx) = (shared.clone(), clients.clone(), phase_rx.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5350_4157);
            let mut streams = Vec::new();
            for id in 1..=WATCH_STREAMS {
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
                let spec = gen_stream(id, &mut rng, &shared);
                let rec = new_record(spec.clone());
                let task = tokio::spawn(run_stream(
                    clients[spec.client].clone(),
                    shared.clone(),
                    phase_rx.clone(),
                    rec.clone(),
                    seed,
                    None,
                ));
                streams.push((rec, task));
            }
            streams
        })
    };

    // --- the writes -------------------------------------------------------
    let mut ops: Vec<Op> = Vec::new();
    let mut leases: HashMap<i64, i64> = HashMap::new();
    let mut live: Vec<i64> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for w in writers {
        match within(Duration::from_secs(90), "writer", w).await {
            Ok(Ok(log)) => {
                ops.extend(log.ops);
                leases.extend(log.leases);
                live.extend(log.live);
                errors.extend(log.errors);
            }
            Ok(Err(e)) => errors.push(format!("writer panicked: {e}")),
            Err(e) => errors.push(e),
        }
    }
    let streams = match within(Duration::from_secs(30), "watch spawner", spawner).await {
        Ok(Ok(s)) => s,
        other => panic!("seed {seed}: spawner: {other:?}"),
    };
    shared.writes_done.store(true, Ordering::SeqCst);
    let compactions = match within(Duration::from_secs(20), "compactor", compactor_task).await {
        Ok(Ok((done, errs))) => {
            errors.extend(errs);
            done
        }
        other => panic!("seed {seed}: compactor: {other:?}"),
    };
    // No lease may expire after the final revision: revoke what is left.
    for lease in live {
        let what = format!("cleanup: revoke lease {lease:x}");
        match call(&what, c.lease_revoke(lease)).await {
            Ok(r) => ops.push(Op {
                who: what,
                kind: OpKind::Revoke { lease },
                rev: header_rev(r.header()),
            }),
            Err(e) if leases.get(&lease) == Some(&SHORT_TTL) && lease_not_found(&e) => {}
            Err(e) => errors.push(e),
        }
    }
    let final_get = call(
        "final get",
        c.get(vec![0], Some(GetOptions::new().with_all_keys())),
    )
    .await
    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let final_rev = header_rev(final_get.header());
    let writes_took = started.elapsed();
    eprintln!(
        "seed {seed}: {} writes/revokes up to revision {final_rev}, compactions at {compactions:?}, {} watch streams, writes took {writes_took:?}",
        ops.len(),
        streams.len()
    );
    if !errors.is_empty() {
        panic!(
            "seed {seed}: requests failed on {}:\n{}",
            server_name(),
            errors.join("\n")
        );
    }

    // --- the reference history --------------------------------------------
    let waited = within(Duration::from_secs(15), "recorder catching up", async {
        while recorder_rev.load(Ordering::SeqCst) < final_rev {
            if let Some(End::Failed(e)) = recorder.lock().unwrap().members[0]
                .last()
                .map(|s| s.end.clone())
            {
                return Err(e);
            }
            if recorder.lock().unwrap().members[0]
                .last()
                .map(|s| s.end.clone())
                == Some(End::Canceled)
            {
                return Err("the recorder watch was canceled".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })
    .await;
    mirror.abort();
    if let Ok(Err(e)) | Err(e) = waited {
        let r = recorder.lock().unwrap();
        let tail: Vec<String> = r.members[0]
            .iter()
            .flat_map(|s| s.resps.iter())
            .rev()
            .take(5)
            .map(|r| r.to_string())
            .collect();
        panic!(
            "seed {seed}: the recorder watch (all keys from revision 1) did not deliver events up to the final revision {final_rev} (got up to {}): {e}; its last responses: {tail:#?}",
            recorder_rev.load(Ordering::SeqCst)
        );
    }
    let recorder_events: Vec<Ev> = recorder.lock().unwrap().members[0]
        .iter()
        .flat_map(|s| s.events().cloned().collect::<Vec<_>>())
        .collect();
    let mut violations = Vec::new();
    let history = Arc::new(build_history(
        recorder_events,
        &ops,
        &leases,
        final_rev,
        compactions.clone(),
        &mut violations,
    ));
    let state = replay(&history);
    let actual: BTreeMap<String, Kv> = final_get
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), Kv::of(kv)))
        .collect();
    if state != actual {
        let diff: Vec<String> = state
            .keys()
            .chain(actual.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| state.get(*k) != actual.get(*k))
            .map(|k| {
                format!(
                    "{k}: history says {:?}, Range says {:?}",
                    state.get(k).map(|kv| kv.to_string()),
                    actual.get(k).map(|kv| kv.to_string())
                )
            })
            .collect();
        violations.push(violation(
            "history vs. final Range",
            format!(
                "replaying the recorder's events does not give the final state:\n    {}",
                diff.join("\n    ")
            ),
        ));
    }

    // --- drain ---------------------------------------------------------------
    let info = Arc::new(DrainInfo {
        history: history.clone(),
        deadline: Instant::now() + DRAIN_LIMIT,
    });
    phase_tx.send_replace(Phase::Drain(info));
    let mut records = vec![recorder.clone()];
    let _ = within(
        DRAIN_LIMIT + Duration::from_secs(5),
        "recorder drain",
        recorder_task,
    )
    .await;
    for (rec, task) in streams {
        if let Err(e) = within(
            DRAIN_LIMIT + Duration::from_secs(5),
            "watch stream drain",
            task,
        )
        .await
        {
            violations.push(violation(&rec.lock().unwrap().spec.to_string(), e));
        }
        records.push(rec);
    }

    // --- resume probes: fresh watchers after everything settled -------------
    let cmax = history.max_compaction();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5052_4F42);
    let keys = all_keys();
    let mut probe_specs = vec![MemberSpec {
        range: KeyRange::Prefix(String::new()),
        start_rev: cmax.max(1),
        prev_kv: true,
        progress_notify: false,
    }];
    for i in 0..6 {
        let start_rev = if i < 2 && cmax > 1 {
            rng.random_range(1..cmax)
        } else {
            rng.random_range(cmax.max(2)..=final_rev + 1)
        };
        probe_specs.push(MemberSpec {
            range: gen_range(&mut rng, &keys),
            start_rev,
            prev_kv: rng.random_bool(0.5),
            progress_notify: false,
        });
    }
    let (probe_tx, probe_rx) = watch::channel(Phase::Drain(Arc::new(DrainInfo {
        history: history.clone(),
        deadline: Instant::now() + Duration::from_secs(10),
    })));
    let mut probes = Vec::new();
    for (i, m) in probe_specs.into_iter().enumerate() {
        let spec = StreamSpec {
            id: 1000 + i,
            client: i % CLIENTS,
            members: vec![m],
            slow_ms: 0,
            progress_requests: true,
            restart_every: None,
        };
        let rec = new_record(spec);
        let task = tokio::spawn(run_stream(
            clients[i % CLIENTS].clone(),
            shared.clone(),
            probe_rx.clone(),
            rec.clone(),
            seed,
            None,
        ));
        probes.push((rec, task));
    }
    for (rec, task) in probes {
        if let Err(e) = within(Duration::from_secs(15), "probe watch", task).await {
            violations.push(violation(&rec.lock().unwrap().spec.to_string(), e));
        }
        records.push(rec);
    }
    drop(probe_tx);
    drop(phase_tx);

    // --- check ---------------------------------------------------------------
    let mut stats = Stats::default();
    for rec in &records {
        let rec = rec.lock().unwrap();
        violations.extend(check_stream(&rec, &history, etcd, &mut stats));
    }
    eprintln!(
        "seed {seed}: checked {} watcher segments: {stats:?}; total {:?}",
        stats.segments,
        started.elapsed()
    );
    let (known, fatal): (Vec<_>, Vec<_>) = violations
        .into_iter()
        .partition(|v| v.known_etcd_bug && etcd);
    if !known.is_empty() {
        eprintln!(
            "seed {seed}: {} deviations of etcd 3.4.23 tolerated (fatal against MetaStore):",
            known.len()
        );
        for v in known.iter().take(10) {
            eprintln!("  - {}: {}", v.who, v.what);
        }
    }
    if !fatal.is_empty() {
        let shown: Vec<String> = fatal
            .iter()
            .take(40)
            .map(|v| format!("  - {}:\n      {}", v.who, v.what))
            .collect();
        panic!(
            "seed {seed}: {} watch guarantee violations on {} (rerun with TEST_SEED={seed}):\n{}{}",
            fatal.len(),
            server_name(),
            shown.join("\n"),
            if fatal.len() > 40 {
                format!("\n  ... and {} more", fatal.len() - 40)
            } else {
                String::new()
            }
        );
    }
}
