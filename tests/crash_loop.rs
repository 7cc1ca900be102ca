//! Crash loop: the real binary under concurrent writes (single puts and
//! multi-shard txns) is SIGKILLed at random moments and restarted on the
//! same data directory, again and again. After every restart:
//! - every acknowledged write is present, with the revision it was
//!   acknowledged at;
//! - every txn is all-or-nothing, acknowledged or not;
//! - the store's revision never goes backwards.
//!
//! Seeded: the seed is printed; `TEST_SEED=<n>` replays a run's timing
//! choices. `CRASH_LOOP_ROUNDS` changes the number of crashes (default 20).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{GrpcClient, MetastoreServer, test_seed};
use metastore::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use metastore::proto::etcdserverpb::request_op::Request;
use metastore::proto::etcdserverpb::{
    Compare, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse,
};
use rand::{RngExt, SeedableRng};

const WRITERS: usize = 4;
const TXN_KEYS: usize = 4;

/// One write a client attempted.
#[derive(Debug, Clone)]
struct Attempt {
    keys: Vec<Bytes>,
    value: Bytes,
    /// The header revision of the success reply, if one arrived.
    acknowledged: Option<i64>,
}

type Journal = Arc<Mutex<Vec<Attempt>>>;

fn record(journal: &Journal, keys: Vec<Bytes>, value: &Bytes) -> usize {
    let mut attempts = journal.lock().expect("journal");
    attempts.push(Attempt {
        keys,
        value: value.clone(),
        acknowledged: None,
    });
    attempts.len() - 1
}

fn acknowledge(journal: &Journal, index: usize, revision: i64) {
    journal.lock().expect("journal")[index].acknowledged = Some(revision);
}

/// Writes until the server goes away.
async fn writer(address: std::net::SocketAddr, round: usize, writer: usize, journal: Journal) {
    let Ok(mut client) = GrpcClient::connect(address).await else {
        return;
    };
    for sequence in 0.. {
        let id = format!("r{round:02}-w{writer}-{sequence:05}");
        let value = Bytes::from(id.clone());
        if sequence % 3 == 2 {
            let keys: Vec<Bytes> = (0..TXN_KEYS)
                .map(|part| Bytes::from(format!("t/{id}/{part}")))
                .collect();
            let index = record(&journal, keys.clone(), &value);
            let txn = TxnRequest {
                compare: vec![Compare {
                    key: keys[0].clone(),
                    target: CompareTarget::Version as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(TargetUnion::Version(0)),
                    ..Default::default()
                }],
                success: keys
                    .iter()
                    .map(|key| RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: key.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect(),
                failure: Vec::new(),
            };
            match client
                .unary::<_, TxnResponse>("/etcdserverpb.KV/Txn", &txn)
                .await
            {
                Ok(response) if response.succeeded => acknowledge(
                    &journal,
                    index,
                    response.header.map_or(0, |header| header.revision),
                ),
                Ok(response) => panic!("txn on a fresh key failed its compare: {response:?}"),
                Err(_) => return,
            }
        } else {
            let key = Bytes::from(format!("p/{id}"));
            let index = record(&journal, vec![key.clone()], &value);
            match client
                .unary::<_, PutResponse>(
                    "/etcdserverpb.KV/Put",
                    &PutRequest {
                        key,
                        value,
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(response) => acknowledge(
                    &journal,
                    index,
                    response.header.map_or(0, |header| header.revision),
                ),
                Err(_) => return,
            }
        }
    }
}

/// Every key in the store: value and mod revision; plus the header revision.
async fn snapshot(address: std::net::SocketAddr) -> (BTreeMap<Bytes, (Bytes, i64)>, i64) {
    let mut client = GrpcClient::connect(address)
        .await
        .expect("connect for verification");
    let all = RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        ..Default::default()
    };
    let response: RangeResponse = client
        .unary("/etcdserverpb.KV/Range", &all)
        .await
        .expect("range everything");
    let keys = response
        .kvs
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
        .collect();
    (keys, response.header.map_or(0, |header| header.revision))
}

fn verify(round: usize, seed: u64, attempts: &[Attempt], keys: &BTreeMap<Bytes, (Bytes, i64)>) {
    for attempt in attempts {
        let found: Vec<Option<&(Bytes, i64)>> =
            attempt.keys.iter().map(|key| keys.get(key)).collect();
        let present = found.iter().filter(|entry| entry.is_some()).count();
        if let Some(revision) = attempt.acknowledged {
            for (key, entry) in attempt.keys.iter().zip(&found) {
                assert_eq!(
                    entry.map(|(value, mod_revision)| (value.clone(), *mod_revision)),
                    Some((attempt.value.clone(), revision)),
                    "round {round} (seed {seed}): acknowledged write of {key:?} at revision {revision} is missing or changed"
                );
            }
        } else {
            assert!(
                present == 0 || present == attempt.keys.len(),
                "round {round} (seed {seed}): unacknowledged write {:?} is partially visible ({present} of {} keys)",
                attempt.value,
                attempt.keys.len()
            );
            if present == attempt.keys.len() {
                let revisions: Vec<i64> = found
                    .iter()
                    .flatten()
                    .map(|(_, revision)| *revision)
                    .collect();
                assert!(
                    revisions.windows(2).all(|pair| pair[0] == pair[1]),
                    "round {round} (seed {seed}): txn {:?} survived with mixed revisions {revisions:?}",
                    attempt.value
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_and_txns_stay_atomic() {
    let seed = test_seed("crash_loop");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rounds: usize = std::env::var("CRASH_LOOP_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20);
    // Kept on failure (the path is printed) so the logs can be inspected.
    let data_dir = tempfile::Builder::new()
        .prefix("metastore-crash-")
        .tempdir()
        .expect("temp dir")
        .keep();
    eprintln!("crash loop data directory: {}", data_dir.display());
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut last_revision = 0i64;
    let mut acknowledged_total = 0usize;
    for round in 0..rounds {
        let mut server = MetastoreServer::start_in(
            &data_dir,
            &["--wal-segment-bytes", "4194304", "--snapshot-count", "64"],
        );
        let (keys, revision) = snapshot(server.addr()).await;
        assert!(
            revision >= last_revision,
            "round {round} (seed {seed}): revision went backwards from {last_revision} to {revision}"
        );
        verify(round, seed, &attempts, &keys);
        last_revision = revision;

        let journal: Journal = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|index| tokio::spawn(writer(server.addr(), round, index, journal.clone())))
            .collect();
        let crash_after = Duration::from_millis(rng.random_range(50..600));
        tokio::time::sleep(crash_after).await;
        server.kill_hard();
        for task in tasks {
            task.await.expect("writer task");
        }
        let round_attempts = journal.lock().expect("journal").clone();
        acknowledged_total += round_attempts
            .iter()
            .filter(|attempt| attempt.acknowledged.is_some())
            .count();
        if let Some(highest) = round_attempts
            .iter()
            .filter_map(|attempt| attempt.acknowledged)
            .max()
        {
            last_revision = last_revision.max(highest);
        }
        attempts.extend(round_attempts);
    }
    let server = MetastoreServer::start_in(
        &data_dir,
        &["--wal-segment-bytes", "4194304", "--snapshot-count", "64"],
    );
    let (keys, revision) = snapshot(server.addr()).await;
    assert!(
        revision >= last_revision,
        "final (seed {seed}): revision went backwards from {last_revision} to {revision}"
    );
    verify(rounds, seed, &attempts, &keys);
    assert!(
        acknowledged_total > rounds,
        "seed {seed}: the load acknowledged only {acknowledged_total} writes in {rounds} rounds; the test did not exercise much"
    );
    // A crash may cut the removal of released segments short, and a
    // loaded machine may crash every round before one finishes: some load
    // without crashes gives every shard the time to release its first
    // segment.
    let settle_journal: Journal = Arc::new(Mutex::new(Vec::new()));
    let settle_writers: Vec<_> = (0..WRITERS)
        .map(|index| {
            tokio::spawn(writer(
                server.addr(),
                rounds + 1,
                index,
                settle_journal.clone(),
            ))
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline && !any_shard_released_its_first_segment(&data_dir) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server);
    for task in settle_writers {
        task.await.expect("writer task");
    }
    // Snapshots release the log below them: with 4 MiB segments and a
    // snapshot every 64 entries, no shard may keep more than a few segments.
    let mut released_any = false;
    for shard in std::fs::read_dir(data_dir.join("shards"))
        .expect("shards")
        .flatten()
    {
        let segments: Vec<String> = std::fs::read_dir(shard.path().join("wal"))
            .expect("wal")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".log"))
            .collect();
        eprintln!("{}: WAL segments {segments:?}", shard.path().display());
        assert!(
            segments.len() <= 3,
            "seed {seed}: {} keeps {} WAL segments; snapshots should have released the older ones",
            shard.path().display(),
            segments.len()
        );
        released_any |= !segments
            .iter()
            .any(|name| name == "wal-0000000000000001.log");
    }
    assert!(
        released_any,
        "seed {seed}: no shard ever released its first segment; the run did not exercise rotation and release"
    );
    std::fs::remove_dir_all(&data_dir).expect("remove the data directory after a passing run");
    eprintln!(
        "crash loop (seed {seed}): {rounds} crashes, {} writes attempted, {acknowledged_total} acknowledged, final revision {revision}",
        attempts.len()
    );
}

/// Whether some shard's WAL no longer has its first segment.
fn any_shard_released_its_first_segment(data_dir: &std::path::Path) -> bool {
    std::fs::read_dir(data_dir.join("shards"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|shard| {
            !shard
                .path()
                .join("wal")
                .join("wal-0000000000000001.log")
                .exists()
        })
}
