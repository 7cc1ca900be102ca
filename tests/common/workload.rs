//! A client workload for cluster tests: writers (one- and two-key
//! transactions through random members) and readers (half linearizable)
//! recording a history, read-your-writes checked on the member written
//! through; then every member's history, which must be one, and the
//! clients' history checked linearizable against it (`super::history`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, Txn, TxnOp, WatchOptions};
use rand::{RngExt, SeedableRng};

use super::cluster::CALL_LIMIT;
use super::history::{ReadRecord, StoreHistory, WriteEnd, WriteRecord, check};

pub const WRITERS: usize = 3;
pub const READERS: usize = 2;
pub const KEYS: usize = 16;

/// What the clients share: the history, and what broke read-your-writes.
pub struct Shared {
    pub stop: AtomicBool,
    pub writes: Mutex<Vec<WriteRecord>>,
    pub reads: Mutex<Vec<ReadRecord>>,
    /// `(member, acknowledged revision, revision a read there saw next)`.
    pub stale_after_write: Mutex<Vec<(usize, i64, i64)>>,
    /// Writes acknowledged by a member that did not take writes itself.
    pub forwarded: AtomicUsize,
}

pub fn is_definite_failure(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            message.contains("not leader") || message.contains("leader changed")
        }
        _ => false,
    }
}

pub async fn writer(id: usize, endpoints: Arc<Vec<String>>, shared: Arc<Shared>, seed: u64) {
    let mut random = rand::rngs::StdRng::seed_from_u64(seed ^ id as u64);
    let mut clients: Vec<Option<Client>> = endpoints.iter().map(|_| None).collect();
    let mut sequence = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let member = random.random_range(0..endpoints.len());
        let Some(client) = connected(&mut clients, &endpoints, member).await else {
            continue;
        };
        sequence += 1;
        let value = format!("w{id}-{sequence}");
        let mut keys: Vec<String> = (0..random.random_range(1..=2))
            .map(|_| format!("key{}", random.random_range(0..KEYS)))
            .collect();
        keys.sort();
        keys.dedup();
        let invoked = Instant::now();
        let operations: Vec<TxnOp> = keys
            .iter()
            .map(|key| TxnOp::put(key.as_str(), value.as_str(), None))
            .collect();
        let outcome =
            tokio::time::timeout(CALL_LIMIT, client.txn(Txn::new().and_then(operations))).await;
        let end = match outcome {
            Ok(Ok(response)) => {
                WriteEnd::Acknowledged(response.header().map_or(0, |header| header.revision()))
            }
            Ok(Err(error)) if is_definite_failure(&error) => WriteEnd::Failed,
            Ok(Err(_)) | Err(_) => {
                clients[member] = None;
                WriteEnd::Unknown
            }
        };
        if let WriteEnd::Acknowledged(revision) = end {
            read_own_write(client_of(&mut clients, member), member, revision, &shared).await;
        }
        let failed = end == WriteEnd::Failed;
        shared.writes.lock().expect("writes").push(WriteRecord {
            keys,
            value,
            invoked,
            completed: Instant::now(),
            end,
        });
        if failed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The client of `member`, connecting first if there is none; `None`
/// (after a pause) when the member does not answer (down, or not started
/// yet).
async fn connected<'a>(
    clients: &'a mut [Option<Client>],
    endpoints: &[String],
    member: usize,
) -> Option<&'a mut Client> {
    if clients[member].is_none() {
        match tokio::time::timeout(CALL_LIMIT, Client::connect([&endpoints[member]], None)).await {
            Ok(Ok(client)) => clients[member] = Some(client),
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
        }
    }
    clients[member].as_mut()
}

pub fn client_of(clients: &mut [Option<Client>], member: usize) -> &mut Client {
    clients[member].as_mut().expect("connected")
}

/// A serializable read through the member that acknowledged `revision`
/// must see it (the member answers only once it applied the write).
pub async fn read_own_write(client: &mut Client, member: usize, revision: i64, shared: &Shared) {
    let options = GetOptions::new().with_serializable();
    if let Ok(Ok(response)) =
        tokio::time::timeout(CALL_LIMIT, client.get("key0", Some(options))).await
    {
        let read_at = response.header().map_or(0, |header| header.revision());
        if read_at < revision {
            let stale = (member, revision, read_at);
            shared.stale_after_write.lock().expect("stale").push(stale);
        }
        if let Ok(Ok(status)) = tokio::time::timeout(CALL_LIMIT, client.status()).await
            && status.header().map(|header| header.member_id()) != Some(status.leader())
        {
            shared.forwarded.fetch_add(1, Ordering::SeqCst);
        }
    }
}

pub async fn reader(id: usize, endpoints: Arc<Vec<String>>, shared: Arc<Shared>, seed: u64) {
    let mut random = rand::rngs::StdRng::seed_from_u64(seed ^ (100 + id as u64));
    let mut clients: Vec<Option<Client>> = endpoints.iter().map(|_| None).collect();
    while !shared.stop.load(Ordering::SeqCst) {
        let member = random.random_range(0..endpoints.len());
        let Some(client) = connected(&mut clients, &endpoints, member).await else {
            continue;
        };
        let key = format!("key{}", random.random_range(0..KEYS));
        let invoked = Instant::now();
        // Half the reads linearizable: a member confirms them with its
        // groups' leaders first (ReadIndex).
        let linearizable = random.random_bool(0.5);
        let options = if linearizable {
            GetOptions::new()
        } else {
            GetOptions::new().with_serializable()
        };
        match tokio::time::timeout(CALL_LIMIT, client.get(key.as_str(), Some(options))).await {
            Ok(Ok(response)) => {
                let value = response
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                shared.reads.lock().expect("reads").push(ReadRecord {
                    member,
                    key,
                    value,
                    revision: response.header().map_or(0, |header| header.revision()),
                    linearizable,
                    invoked,
                });
            }
            Ok(Err(_)) | Err(_) => clients[member] = None,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every put in member `index`'s history, read back with a watch from
/// revision 1 through `through`.
pub async fn store_history(endpoint: &str, through: i64) -> Result<StoreHistory, String> {
    let mut client = Client::connect([endpoint], None)
        .await
        .map_err(|error| error.to_string())?;
    let options = WatchOptions::new().with_prefix().with_start_revision(1);
    let mut stream = client
        .watch("", Some(options))
        .await
        .map_err(|error| error.to_string())?;
    let mut history = StoreHistory::new();
    let mut seen = 0;
    while seen < through {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .map_err(|_| format!("no history past revision {seen} from {endpoint}"))?
            .map_err(|error| error.to_string())?
            .ok_or("the watch ended")?;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            seen = seen.max(kv.mod_revision());
            history
                .entry(String::from_utf8_lossy(kv.key()).into_owned())
                .or_default()
                .insert(
                    kv.mod_revision(),
                    Some(String::from_utf8_lossy(kv.value()).into_owned()),
                );
        }
    }
    Ok(history)
}

/// The revision member `index` serves once it serves anything.
pub async fn served_revision(endpoint: &str) -> Option<i64> {
    let mut client = Client::connect([endpoint], None).await.ok()?;
    let options = GetOptions::new().with_serializable();
    let response = client.get("key0", Some(options)).await.ok()?;
    response.header().map(|header| header.revision())
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            stop: AtomicBool::new(false),
            writes: Mutex::default(),
            reads: Mutex::default(),
            stale_after_write: Mutex::default(),
            forwarded: AtomicUsize::new(0),
        })
    }

    /// Acknowledged writes so far.
    pub fn acknowledged(&self) -> usize {
        self.writes
            .lock()
            .expect("writes")
            .iter()
            .filter(|write| matches!(write.end, WriteEnd::Acknowledged(_)))
            .count()
    }
}

/// Starts [`WRITERS`] writers and [`READERS`] readers on `runtime`
/// against `endpoints`; they run until `shared.stop`.
pub fn start_clients(
    runtime: &tokio::runtime::Runtime,
    endpoints: &Arc<Vec<String>>,
    shared: &Arc<Shared>,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut clients = Vec::new();
    for id in 0..WRITERS {
        clients.push(runtime.spawn(writer(id, endpoints.clone(), shared.clone(), seed)));
    }
    for id in 0..READERS {
        clients.push(runtime.spawn(reader(id, endpoints.clone(), shared.clone(), seed)));
    }
    clients
}

/// Stops the clients; prints what they did and checks read-your-writes.
pub fn stop_clients(
    runtime: &tokio::runtime::Runtime,
    clients: Vec<tokio::task::JoinHandle<()>>,
    shared: &Shared,
) -> (Vec<WriteRecord>, Vec<ReadRecord>) {
    shared.stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for client in clients {
            let _ = client.await;
        }
    });
    let writes = shared.writes.lock().expect("writes").clone();
    let reads = shared.reads.lock().expect("reads").clone();
    let count = |wanted: fn(&WriteEnd) -> bool| writes.iter().filter(|w| wanted(&w.end)).count();
    println!(
        "{} writes: {} acknowledged ({} through a follower), {} failed, {} unknown; {} reads",
        writes.len(),
        count(|end| matches!(end, WriteEnd::Acknowledged(_))),
        shared.forwarded.load(Ordering::SeqCst),
        count(|end| *end == WriteEnd::Failed),
        count(|end| *end == WriteEnd::Unknown),
        reads.len()
    );
    let stale = shared.stale_after_write.lock().expect("stale").clone();
    assert!(
        stale.is_empty(),
        "members read below writes they acknowledged (member, acknowledged, read at): {stale:?}"
    );
    (writes, reads)
}

/// Every member at `endpoints` converges on one history, and the
/// clients' history is linearizable against it.
pub fn check_histories(
    runtime: &tokio::runtime::Runtime,
    endpoints: &[String],
    writes: &[WriteRecord],
    reads: &[ReadRecord],
) {
    let histories = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let target = loop {
            let mut revisions = Vec::new();
            for endpoint in endpoints.iter() {
                revisions.push(served_revision(endpoint).await);
            }
            if let Some(first) = revisions[0]
                && revisions.iter().all(|revision| *revision == Some(first))
            {
                break first;
            }
            assert!(
                Instant::now() < deadline,
                "members did not converge: {revisions:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut histories = Vec::new();
        for endpoint in endpoints.iter() {
            histories.push(store_history(endpoint, target).await.expect("history"));
        }
        histories
    });
    for (index, history) in histories.iter().enumerate().skip(1) {
        assert!(
            *history == histories[0],
            "member {} holds another history than member 1",
            index + 1
        );
    }
    let violations = check(writes, reads, &histories[0]);
    assert!(
        violations.is_empty(),
        "{} violations, the first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
}
