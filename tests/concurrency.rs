//! Concurrent writers through `etcd-client` against MetaStore (with several
//! cores and shards), checking the global invariants etcd guarantees:
//! one revision per write request, contiguous and unique; last writer (by
//! revision) wins; versions count writes; a txn's writes share one revision.
//!
//! `TEST_SEED=N` reproduces a run; `TEST_AGAINST_ETCD=1` runs against a real
//! etcd to validate the checks themselves.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{start_metastore_or_etcd, test_seed};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const TASKS: usize = 16;
const OPS_PER_TASK: usize = 50;
const SHARED_KEYS: usize = 6;
const OWN_KEYS: usize = 4;

/// One successful write request: its revision and the (key, value) pairs it wrote.
#[derive(Debug, Clone)]
struct Write {
    rev: i64,
    task: usize,
    kvs: Vec<(String, String)>,
    kind: &'static str,
}

fn shared_key(i: usize) -> String {
    // Names spread widely so that they land on different shards.
    format!(
        "{}-shared-{i}",
        ["alpha", "kilo", "tango", "zulu", "bravo", "mike"][i % 6]
    )
}

fn own_key(task: usize, i: usize) -> String {
    format!("own/{task:02}/{i}")
}

async fn writer(ep: String, task: usize, seed: u64) -> Result<Vec<Write>, String> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(task as u64 * 0x9E37_79B9));
    let mut c = Client::connect([ep.as_str()], None)
        .await
        .map_err(|e| format!("task {task}: connect: {e}"))?;
    let mut out = Vec::with_capacity(OPS_PER_TASK);
    for op in 0..OPS_PER_TASK {
        let value = format!("t{task}-op{op}");
        let dice = rng.random_range(0..100);
        if dice < 40 {
            let k = own_key(task, rng.random_range(0..OWN_KEYS));
            let r = c
                .put(k.clone(), value.clone(), None)
                .await
                .map_err(|e| format!("task {task} put {k}: {e}"))?;
            let rev = r.header().ok_or("put without header")?.revision();
            out.push(Write {
                rev,
                task,
                kvs: vec![(k, value)],
                kind: "put-own",
            });
        } else if dice < 75 {
            let k = shared_key(rng.random_range(0..SHARED_KEYS));
            let r = c
                .put(k.clone(), value.clone(), None)
                .await
                .map_err(|e| format!("task {task} put {k}: {e}"))?;
            let rev = r.header().ok_or("put without header")?.revision();
            out.push(Write {
                rev,
                task,
                kvs: vec![(k, value)],
                kind: "put-shared",
            });
        } else {
            // Multi-key txn over an own key and 2-3 distinct shared keys.
            let mut keys = vec![own_key(task, rng.random_range(0..OWN_KEYS))];
            let n = rng.random_range(2..=3);
            while keys.len() < 1 + n {
                let k = shared_key(rng.random_range(0..SHARED_KEYS));
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            let conditional = dice >= 90;
            let then_ops: Vec<TxnOp> = keys
                .iter()
                .map(|k| TxnOp::put(k.clone(), format!("{value}-then"), None))
                .collect();
            let else_ops: Vec<TxnOp> = keys
                .iter()
                .map(|k| TxnOp::put(k.clone(), format!("{value}-else"), None))
                .collect();
            let mut t = Txn::new();
            if conditional {
                // Outcome depends on concurrent writers; both branches write the same keys.
                t = t.when([Compare::version(keys[1].clone(), CompareOp::Greater, 3)]);
            }
            let t = t.and_then(then_ops).or_else(else_ops);
            let r = c
                .txn(t)
                .await
                .map_err(|e| format!("task {task} txn {keys:?}: {e}"))?;
            let rev = r.header().ok_or("txn without header")?.revision();
            let suffix = if r.succeeded() { "then" } else { "else" };
            let resps = r.op_responses();
            if resps.len() != keys.len() {
                return Err(format!(
                    "task {task}: txn returned {} responses for {} puts",
                    resps.len(),
                    keys.len()
                ));
            }
            for (i, resp) in resps.iter().enumerate() {
                match resp {
                    TxnOpResponse::Put(p) => {
                        let prev = p.header().map(|h| h.revision());
                        if prev != Some(rev) {
                            return Err(format!(
                                "task {task}: put #{i} in txn at revision {rev} reports revision {prev:?} (keys {keys:?})"
                            ));
                        }
                    }
                    other => return Err(format!("task {task}: unexpected txn response {other:?}")),
                }
            }
            out.push(Write {
                rev,
                task,
                kvs: keys
                    .into_iter()
                    .map(|k| (k, format!("{value}-{suffix}")))
                    .collect(),
                kind: if conditional { "txn-cond" } else { "txn" },
            });
        }
    }
    Ok(out)
}

/// Reads while writers run: per connection, header revisions must never go
/// backwards, and no returned kv may be newer than the header revision.
async fn reader(ep: String, stop: Arc<AtomicBool>, id: usize) -> Result<usize, String> {
    let mut c = Client::connect([ep.as_str()], None)
        .await
        .map_err(|e| format!("reader {id}: connect: {e}"))?;
    let mut last = 0i64;
    let mut reads = 0;
    loop {
        let opts = GetOptions::new().with_all_keys();
        let r = c
            .get("", Some(opts))
            .await
            .map_err(|e| format!("reader {id}: {e}"))?;
        let rev = r.header().ok_or("range without header")?.revision();
        if rev < last {
            return Err(format!(
                "reader {id}: header revision went backwards {last} -> {rev}"
            ));
        }
        last = rev;
        for kv in r.kvs() {
            if kv.mod_revision() > rev {
                return Err(format!(
                    "reader {id}: key {:?} has mod_revision {} > header revision {rev}",
                    String::from_utf8_lossy(kv.key()),
                    kv.mod_revision()
                ));
            }
        }
        if r.count() != r.kvs().len() as i64 {
            return Err(format!(
                "reader {id}: count {} but {} kvs",
                r.count(),
                r.kvs().len()
            ));
        }
        reads += 1;
        if stop.load(Ordering::SeqCst) {
            return Ok(reads);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Awaits `task` for at most `limit`; its error, a panic or a timeout
/// becomes an error message naming `what`.
async fn join_within<T>(
    task: tokio::task::JoinHandle<Result<T, String>>,
    limit: Duration,
    what: &str,
) -> Result<T, String> {
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(result)) => result.map_err(|error| format!("{what} failed: {error}")),
        Ok(Err(join)) => Err(format!("{what} panicked: {join}")),
        Err(_) => Err(format!("{what} timed out after {}s", limit.as_secs())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_get_unique_contiguous_revisions() {
    let seed = test_seed("concurrent_writes_get_unique_contiguous_revisions");
    let Some((_server, ep)) = start_metastore_or_etcd(&["--cores", "2", "--shards", "4"]) else {
        return;
    };

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(reader(ep.clone(), stop.clone(), i)))
        .collect();
    let writers: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(writer(ep.clone(), t, seed)))
        .collect();
    let mut writes: Vec<Write> = Vec::new();
    let mut errors = Vec::new();
    for w in writers {
        match join_within(w, Duration::from_secs(60), "writer").await {
            Ok(ws) => writes.extend(ws),
            Err(e) => errors.push(e),
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        match join_within(r, Duration::from_secs(30), "reader").await {
            Ok(n) => eprintln!("reader did {n} consistent reads"),
            Err(e) => errors.push(e),
        }
    }
    assert!(
        errors.is_empty(),
        "seed {seed}: errors during the run:\n{}",
        errors.join("\n")
    );
    assert_eq!(writes.len(), TASKS * OPS_PER_TASK, "seed {seed}");

    // 1. Revisions: unique and exactly 2..=1+N.
    let total = writes.len() as i64;
    let mut revs: Vec<i64> = writes.iter().map(|w| w.rev).collect();
    revs.sort_unstable();
    let mut dups: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for w in &writes {
        dups.entry(w.rev)
            .or_default()
            .push(format!("task {} {} {:?}", w.task, w.kind, w.kvs));
    }
    dups.retain(|_, v| v.len() > 1);
    assert!(
        dups.is_empty(),
        "seed {seed}: {} revision(s) were given to more than one write request, e.g. {:?}",
        dups.len(),
        dups.iter().take(5).collect::<Vec<_>>()
    );
    let expected: Vec<i64> = (2..=1 + total).collect();
    if revs != expected {
        let missing: Vec<i64> = expected
            .iter()
            .filter(|r| revs.binary_search(r).is_err())
            .copied()
            .collect();
        let extra: Vec<i64> = revs
            .iter()
            .filter(|r| !(2..=1 + total).contains(*r))
            .copied()
            .collect();
        panic!(
            "seed {seed}: write revisions are not exactly 2..={}: missing {:?}{} / out of range {:?}{}",
            1 + total,
            &missing[..missing.len().min(20)],
            if missing.len() > 20 { " ..." } else { "" },
            &extra[..extra.len().min(20)],
            if extra.len() > 20 { " ..." } else { "" },
        );
    }

    // 2. Per key: last writer by revision wins; version counts writes;
    //    create_revision is the first write; mod_revision the last.
    let mut per_key: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for w in &writes {
        for (k, v) in &w.kvs {
            per_key
                .entry(k.clone())
                .or_default()
                .push((w.rev, v.clone()));
        }
    }
    let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("final range");
    let final_rev = all.header().unwrap().revision();
    assert_eq!(final_rev, 1 + total, "seed {seed}: final header revision");
    assert_eq!(
        all.count() as usize,
        per_key.len(),
        "seed {seed}: count of keys"
    );
    assert_eq!(
        all.kvs().len(),
        per_key.len(),
        "seed {seed}: number of kvs returned"
    );
    let mut problems = Vec::new();
    for kv in all.kvs() {
        let k = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(hist) = per_key.get_mut(&k) else {
            problems.push(format!("unexpected key {k:?}"));
            continue;
        };
        hist.sort_by_key(|(r, _)| *r);
        let (last_rev, last_val) = hist.last().unwrap().clone();
        let first_rev = hist[0].0;
        let got_val = String::from_utf8_lossy(kv.value()).into_owned();
        if got_val != last_val {
            problems.push(format!(
                "{k}: value {got_val:?}, but the highest-revision write (rev {last_rev}) wrote {last_val:?}"
            ));
        }
        if kv.mod_revision() != last_rev {
            problems.push(format!(
                "{k}: mod_revision {} != last write revision {last_rev}",
                kv.mod_revision()
            ));
        }
        if kv.create_revision() != first_rev {
            problems.push(format!(
                "{k}: create_revision {} != first write revision {first_rev}",
                kv.create_revision()
            ));
        }
        if kv.version() != hist.len() as i64 {
            problems.push(format!(
                "{k}: version {} but {} writes",
                kv.version(),
                hist.len()
            ));
        }
    }
    // 3. Every txn's keys must carry the txn's revision in history.
    for w in writes.iter().filter(|w| w.kind.starts_with("txn")) {
        for (k, _) in &w.kvs {
            let r = c
                .get(k.clone(), Some(GetOptions::new().with_revision(w.rev)))
                .await
                .expect("historical get");
            let kv = &r.kvs()[0];
            if kv.mod_revision() != w.rev {
                problems.push(format!(
                    "txn at rev {} (task {}): {k} read at that revision has mod_revision {}",
                    w.rev,
                    w.task,
                    kv.mod_revision()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    eprintln!(
        "ok: {} writes ({} txns) over {} keys, final revision {final_rev}",
        writes.len(),
        writes.iter().filter(|w| w.kind.starts_with("txn")).count(),
        per_key.len()
    );
}

/// Compare-and-swap increments from many clients: every successful CAS must
/// be applied exactly once (txn compare + put atomic across cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_swap_counter() {
    const CLIENTS: usize = 8;
    const INCREMENTS: usize = 10;
    let Some((_server, ep)) = start_metastore_or_etcd(&["--cores", "2", "--shards", "4"]) else {
        return;
    };
    let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
    c.put("counter", "0", None).await.expect("init");
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let ep = ep.clone();
            tokio::spawn(async move {
                let mut c = Client::connect([ep.as_str()], None)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut attempts = 0usize;
                for _ in 0..INCREMENTS {
                    loop {
                        attempts += 1;
                        if attempts > 5_000 {
                            return Err(format!("client {id}: too many CAS attempts"));
                        }
                        let r = c.get("counter", None).await.map_err(|e| e.to_string())?;
                        let kv = &r.kvs()[0];
                        let n: u64 = std::str::from_utf8(kv.value()).unwrap().parse().unwrap();
                        let t = Txn::new()
                            .when([Compare::mod_revision(
                                "counter",
                                CompareOp::Equal,
                                kv.mod_revision(),
                            )])
                            .and_then([TxnOp::put("counter", (n + 1).to_string(), None)]);
                        if c.txn(t).await.map_err(|e| e.to_string())?.succeeded() {
                            break;
                        }
                    }
                }
                Ok::<usize, String>(attempts)
            })
        })
        .collect();
    let mut attempts = 0;
    for t in tasks {
        attempts += join_within(t, Duration::from_secs(60), "CAS client")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let r = c.get("counter", None).await.unwrap();
    let kv = &r.kvs()[0];
    let want = CLIENTS * INCREMENTS;
    assert_eq!(
        kv.value(),
        want.to_string().as_bytes(),
        "lost or duplicated CAS updates"
    );
    assert_eq!(
        kv.version() as usize,
        want + 1,
        "one version per successful CAS (+ init)"
    );
    assert_eq!(
        r.header().unwrap().revision() as usize,
        want + 2,
        "failed CAS txns must not create revisions"
    );
    eprintln!("CAS: {want} increments in {attempts} attempts");
}

/// Multi-key txns over keys on different shards must be atomic for readers:
/// a range over all of them (at the current or any historical revision) sees
/// either all or none of a txn's writes. Also checks read-your-writes across
/// connections: after a write returns revision R, a fresh read on another
/// connection has header revision >= R and sees the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_shard_txns_are_atomic_for_readers() {
    const WRITERS: usize = 4;
    const TXNS_PER_WRITER: usize = 30;
    const KEYS: usize = 8;
    let seed = test_seed("multi_shard_txns_are_atomic_for_readers");
    let Some((_server, ep)) = start_metastore_or_etcd(&["--cores", "2", "--shards", "4"]) else {
        return;
    };
    let key = |i: usize| {
        format!(
            "atom/{}-{i}",
            ["q", "c", "x", "h", "a", "n", "t", "f"][i % 8]
        )
    };
    let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
    let init: Vec<TxnOp> = (0..KEYS)
        .map(|i| TxnOp::put(key(i), "init", None))
        .collect();
    c.txn(Txn::new().and_then(init)).await.expect("init txn");

    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for id in 0..3usize {
        let (ep, stop) = (ep.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (id as u64 + 1000));
            let mut c = Client::connect([ep.as_str()], None).await.map_err(|e| e.to_string())?;
            let mut reads = 0usize;
            let mut max_rev = 2i64;
            loop {
                // Alternate between current reads and historical ones.
                let historical = reads % 3 == 2 && max_rev > 2;
                let opts = GetOptions::new().with_prefix();
                let opts = if historical {
                    opts.with_revision(rng.random_range(2..=max_rev))
                } else {
                    opts
                };
                let r = c.get("atom/", Some(opts)).await.map_err(|e| format!("reader {id}: {e}"))?;
                let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                max_rev = max_rev.max(rev);
                if r.kvs().len() != KEYS {
                    return Err(format!("reader {id}: {} keys, want {KEYS}", r.kvs().len()));
                }
                let vals: Vec<&[u8]> = r.kvs().iter().map(|kv| kv.value()).collect();
                let mods: Vec<i64> = r.kvs().iter().map(|kv| kv.mod_revision()).collect();
                if vals.iter().any(|v| *v != vals[0]) || mods.iter().any(|m| *m != mods[0]) {
                    return Err(format!(
                        "reader {id}: torn txn visible (historical: {historical}, header rev {rev}): values {:?} mod_revisions {mods:?}",
                        vals.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect::<Vec<_>>()
                    ));
                }
                reads += 1;
                if stop.load(Ordering::SeqCst) {
                    return Ok::<usize, String>(reads);
                }
            }
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let ep = ep.clone();
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect([ep.as_str()], None).await.map_err(|e| e.to_string())?;
            let mut other = Client::connect([ep.as_str()], None).await.map_err(|e| e.to_string())?;
            for i in 0..TXNS_PER_WRITER {
                let v = format!("w{w}-{i}");
                let ops: Vec<TxnOp> = (0..KEYS).map(|k| TxnOp::put(key(k), v.clone(), None)).collect();
                let r = c.txn(Txn::new().and_then(ops)).await.map_err(|e| format!("writer {w}: {e}"))?;
                let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                // Read-your-writes from another connection.
                let own = format!("ryw/{w}");
                let p = c.put(own.clone(), v.clone(), None).await.map_err(|e| e.to_string())?;
                let prev = p.header().map(|h| h.revision()).unwrap_or(0);
                let g = other.get(own.clone(), None).await.map_err(|e| e.to_string())?;
                let grev = g.header().map(|h| h.revision()).unwrap_or(0);
                if grev < prev || g.kvs().first().map(|kv| kv.value()) != Some(v.as_bytes()) {
                    return Err(format!(
                        "writer {w}: put {own}={v} returned revision {prev}, but a later read on another connection \
                         has header revision {grev} and kvs {:?}",
                        g.kvs()
                    ));
                }
                if rev >= prev {
                    return Err(format!("writer {w}: txn revision {rev} >= later put revision {prev}"));
                }
            }
            Ok::<(), String>(())
        }));
    }
    let mut errors = Vec::new();
    for w in writers {
        if let Err(e) = join_within(w, Duration::from_secs(60), "writer").await {
            errors.push(e);
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        match join_within(r, Duration::from_secs(30), "reader").await {
            Ok(n) => eprintln!("reader did {n} atomic reads"),
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "seed {seed}:\n{}", errors.join("\n"));
    let r = c
        .get("atom/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    for kv in r.kvs() {
        assert_eq!(
            kv.version() as usize,
            1 + WRITERS * TXNS_PER_WRITER,
            "version of {:?}",
            kv.key_str()
        );
    }
}

/// Many concurrent streams multiplexed on one HTTP/2 connection (the raw
/// client), more than a typical small max_concurrent_streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_streams_on_one_connection() {
    use metastore::proto::etcdserverpb as pb;
    const STREAMS: usize = 300;
    let Some((_server, ep)) = start_metastore_or_etcd(&["--cores", "2", "--shards", "4"]) else {
        return;
    };
    let addr: std::net::SocketAddr = ep.trim_start_matches("http://").parse().unwrap();
    let client = common::GrpcClient::connect(addr).await.expect("connect");
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let req = pb::PutRequest {
                    key: bytes::Bytes::from(format!("mux/{i:03}")),
                    value: bytes::Bytes::from(vec![b'v'; 100 + i * 50]),
                    ..Default::default()
                };
                let r: common::GrpcResult<pb::PutResponse> =
                    c.unary("/etcdserverpb.KV/Put", &req).await;
                r.map(|r| r.header.map(|h| h.revision).unwrap_or(0))
            })
        })
        .collect();
    let mut revs = Vec::new();
    for t in tasks {
        revs.push(t.await.expect("task").expect("put over shared connection"));
    }
    revs.sort_unstable();
    let want: Vec<i64> = (2..2 + STREAMS as i64).collect();
    assert_eq!(revs, want, "each multiplexed put gets its own revision");
    let mut c = client.clone();
    let r: pb::RangeResponse = c
        .unary(
            "/etcdserverpb.KV/Range",
            &pb::RangeRequest {
                key: bytes::Bytes::from_static(b"mux/"),
                range_end: bytes::Bytes::from_static(b"mux0"),
                ..Default::default()
            },
        )
        .await
        .expect("range");
    assert_eq!(r.count as usize, STREAMS);
    for (i, kv) in r.kvs.iter().enumerate() {
        assert_eq!(kv.value.len(), 100 + i * 50, "value size of {:?}", kv.key);
    }
}
