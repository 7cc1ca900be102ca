//! End-to-end tests of the v3lock (`Lock`, `Unlock`) and v3election
//! (`Campaign`, `Proclaim`, `Leader`, `Observe`, `Resign`) gRPC services
//! through the `etcd-client` crate.
//!
//! `etcdctl lock` / `etcdctl elect` do not use these services (they run the
//! clientv3 concurrency recipes on the client, see etcdctl_watch_lease.rs);
//! these tests are what exercises them. In etcd both services are the same
//! recipes run inside the server on the caller's lease:
//! * Lock(name, lease): key `name/<lease id in hex>` put with the lease in a
//!   txn (`create_revision == 0`), then waits until every key under `name/`
//!   with a lower create revision is deleted; answers the key.
//! * Unlock(key): deletes the key.
//! * Campaign(name, value, lease): the same queue under `name/`; answers a
//!   LeaderKey {name, key, rev = the key's create revision, lease}.
//! * Proclaim / Resign(leader): a txn guarded by
//!   `create_revision(key) == leader.rev` (put the value keeping the lease /
//!   delete the key).
//! * Leader(name) / Observe(name): the first-created key under `name/`.
//!
//! Errors are etcd's: the services return the recipes' plain errors, which
//! gRPC reports with code Unknown (`election: no leader`, `election: not
//! leader`, `etcdserver: requested lease not found`).
//!
//! `TEST_AGAINST_ETCD=1` runs the same tests against a real etcd.

mod common;
mod wl_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};
use wl_support::{CALL, connect, err, grpc_code, ok, server_name, start_server, within};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn rev_now(c: &mut Client) -> i64 {
    ok("get", c.get("probe", None))
        .await
        .header()
        .unwrap()
        .revision()
}

async fn keys_under(c: &mut Client, prefix: &str) -> Vec<String> {
    let r = ok(
        "range prefix",
        c.get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ),
    )
    .await;
    r.kvs().iter().map(|kv| text(kv.key())).collect()
}

/// Waits until `n` keys exist under `prefix` (a waiter has queued).
async fn wait_keys(c: &mut Client, prefix: &str, n: usize) {
    let deadline = Instant::now() + CALL;
    loop {
        let keys = keys_under(c, prefix).await;
        if keys.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} keys under {prefix} on {}, have {keys:?}",
            server_name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that a spawned blocking call has not returned (it must wait).
async fn assert_blocked<T>(task: &tokio::task::JoinHandle<T>, what: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !task.is_finished(),
        "{what} returned while it must wait ({})",
        server_name()
    );
}

async fn join<T>(task: tokio::task::JoinHandle<T>, limit: Duration, what: &str) -> T {
    match within(limit, what, task).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what} panicked: {e}"),
        Err(e) => panic!("{e} ({})", server_name()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_service() {
    let Some((_server, ep)) = start_server(&[]) else {
        return;
    };
    let mut c = connect(&ep).await;
    let l1 = ok("grant", c.lease_grant(30, None)).await.id();
    let l2 = ok("grant", c.lease_grant(30, None)).await.id();

    // Uncontended: the key is name/<lease hex>, put with the lease.
    let r = ok(
        "lock 1",
        c.lock("mylock", Some(LockOptions::new().with_lease(l1))),
    )
    .await;
    let key1 = text(r.key());
    assert_eq!(key1, format!("mylock/{l1:x}"), "lock key");
    assert_eq!(r.header().unwrap().revision(), 2, "lock response header");
    let kv = ok("get lock key", c.get(key1.clone(), None)).await;
    let kv = &kv.kvs()[0];
    assert_eq!(
        (kv.value(), kv.lease(), kv.create_revision(), kv.version()),
        (&b""[..], l1, 2, 1),
        "lock key: empty value, on the caller's lease"
    );

    // Contended: the second locker queues its key and waits.
    let mut c2 = c.clone();
    let waiter = tokio::spawn(async move {
        c2.lock("mylock", Some(LockOptions::new().with_lease(l2)))
            .await
    });
    wait_keys(&mut c, "mylock/", 2).await;
    assert_blocked(&waiter, "a second Lock while the first holds").await;
    let u = ok("unlock 1", c.unlock(key1.clone())).await;
    assert_eq!(u.header().unwrap().revision(), 4, "unlock deletes the key");
    let r = join(waiter, CALL, "waiting Lock").await;
    let r = r.unwrap_or_else(|e| panic!("waiting Lock failed: {}", grpc_code(&e)));
    let key2 = text(r.key());
    assert_eq!(key2, format!("mylock/{l2:x}"));
    assert_eq!(
        r.header().unwrap().revision(),
        4,
        "the waiter's header is the revision at which it saw the lock free"
    );
    // Locking again on the lease that holds it returns at once, same key.
    let r = ok(
        "re-lock by the holder",
        c.lock("mylock", Some(LockOptions::new().with_lease(l2))),
    )
    .await;
    assert_eq!(text(r.key()), key2);
    assert_eq!(rev_now(&mut c).await, 4, "re-locking writes nothing");
    ok("unlock 2", c.unlock(key2.clone())).await;
    let u = ok("unlock of a missing key", c.unlock(key2.clone())).await;
    assert_eq!(u.header().unwrap().revision(), 5, "unlocking nothing");
    assert!(keys_under(&mut c, "mylock/").await.is_empty());

    // Without a lease the server creates a session lease (TTL 60).
    let r = ok("lock without lease", c.lock("nolease", None)).await;
    let key = text(r.key());
    let hex = key.strip_prefix("nolease/").expect("key under nolease/");
    let id = i64::from_str_radix(hex, 16).expect("hex lease id");
    let t = ok("timetolive", c.lease_time_to_live(id, None)).await;
    assert_eq!(t.granted_ttl(), 60, "session lease of a lease-less Lock");
    ok("unlock", c.unlock(key)).await;
    ok("revoke", c.lease_revoke(id)).await;

    // An unknown lease is refused.
    let e = err(
        "lock with an unknown lease",
        c.lock("mylock", Some(LockOptions::new().with_lease(0x7777))),
    )
    .await;
    assert_eq!(
        e, "Unknown: etcdserver: requested lease not found",
        "lock with an unknown lease"
    );

    // The holder's lease expiring (or being revoked) releases the lock.
    let short = ok("grant short", c.lease_grant(2, None)).await.id();
    let long = ok("grant long", c.lease_grant(30, None)).await.id();
    let r = ok(
        "lock short",
        c.lock("exp", Some(LockOptions::new().with_lease(short))),
    )
    .await;
    assert_eq!(text(r.key()), format!("exp/{short:x}"));
    let mut c2 = c.clone();
    let waiter = tokio::spawn(async move {
        c2.lock("exp", Some(LockOptions::new().with_lease(long)))
            .await
    });
    wait_keys(&mut c, "exp/", 2).await;
    let r = join(
        waiter,
        Duration::from_secs(15),
        "Lock waiting for an expiring holder",
    )
    .await;
    let r = r.unwrap_or_else(|e| panic!("waiting Lock failed: {}", grpc_code(&e)));
    assert_eq!(text(r.key()), format!("exp/{long:x}"));
    let mut c2 = c.clone();
    let waiter = tokio::spawn(async move {
        c2.lock("exp", Some(LockOptions::new().with_lease(l1)))
            .await
    });
    wait_keys(&mut c, "exp/", 2).await;
    assert_blocked(&waiter, "Lock behind a live holder").await;
    ok("revoke the holder's lease", c.lease_revoke(long)).await;
    let r = join(waiter, CALL, "Lock after revoke").await;
    let r = r.unwrap_or_else(|e| panic!("waiting Lock failed: {}", grpc_code(&e)));
    assert_eq!(text(r.key()), format!("exp/{l1:x}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_service_mutual_exclusion_is_fifo() {
    let Some((_server, ep)) = start_server(&[]) else {
        return;
    };
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 3;
    let held = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let mut c = connect(&ep).await;
        let held = held.clone();
        tasks.push(tokio::spawn(async move {
            let lease = c
                .lease_grant(30, None)
                .await
                .map_err(|e| e.to_string())?
                .id();
            let mut got = Vec::new();
            for round in 0..ROUNDS {
                let r = c
                    .lock("mx", Some(LockOptions::new().with_lease(lease)))
                    .await
                    .map_err(|e| format!("lock: {e}"))?;
                if held.swap(true, Ordering::SeqCst) {
                    return Err(format!("client {w} round {round}: lock granted while held"));
                }
                let key = r.key().to_vec();
                let kv = c.get(key.clone(), None).await.map_err(|e| e.to_string())?;
                let create = kv
                    .kvs()
                    .first()
                    .map(|kv| kv.create_revision())
                    .unwrap_or(-1);
                let me = format!("{w}.{round}");
                c.put("mx-owner", me.clone(), None)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let o = c.get("mx-owner", None).await.map_err(|e| e.to_string())?;
                if o.kvs()[0].value() != me.as_bytes() {
                    return Err(format!("client {w} round {round}: owner overwritten"));
                }
                held.store(false, Ordering::SeqCst);
                got.push((create, r.header().map(|h| h.revision()).unwrap_or(-1)));
                c.unlock(key).await.map_err(|e| format!("unlock: {e}"))?;
            }
            Ok::<_, String>(got)
        }));
    }
    let mut acquisitions = Vec::new();
    for t in tasks {
        let got = join(t, Duration::from_secs(60), "locking client").await;
        acquisitions.extend(got.unwrap_or_else(|e| panic!("{e} ({})", server_name())));
    }
    // FIFO: in the order of the queue keys' create revisions, each holder
    // saw the lock free at a revision no earlier than its predecessor.
    acquisitions.sort();
    for w in acquisitions.windows(2) {
        assert!(
            w[0].1 <= w[1].1,
            "acquisitions out of queue order: {acquisitions:?}"
        );
    }
    assert_eq!(acquisitions.len(), CLIENTS * ROUNDS);
}

fn leader_of(r: &etcd_client::CampaignResponse) -> LeaderKey {
    r.leader()
        .expect("campaign response without leader")
        .clone()
}

/// (key, value, create, mod, version, lease, header revision) of a LeaderResponse.
fn observed(r: &etcd_client::LeaderResponse) -> (String, String, i64, i64, i64, i64, i64) {
    let kv = r.kv().expect("leader response without kv");
    (
        text(kv.key()),
        text(kv.value()),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
        r.header().map(|h| h.revision()).unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_service() {
    let Some((_server, ep)) = start_server(&[]) else {
        return;
    };
    let mut c = connect(&ep).await;
    let l1 = ok("grant", c.lease_grant(30, None)).await.id();
    let l2 = ok("grant", c.lease_grant(30, None)).await.id();
    let l3 = ok("grant", c.lease_grant(30, None)).await.id();

    let e = err("leader without candidates", c.leader("el")).await;
    assert_eq!(
        e, "Unknown: election: no leader",
        "Leader with no candidate"
    );
    // Observe answers nothing (not even response headers) until there is a
    // leader, so it runs in its own task.
    let (otx, mut orx) = tokio::sync::mpsc::unbounded_channel();
    let mut co = c.clone();
    let observer = tokio::spawn(async move {
        let mut s = match co.observe("el").await {
            Ok(s) => s,
            Err(e) => {
                let _ = otx.send(Err(format!("Observe failed: {}", grpc_code(&e))));
                return;
            }
        };
        loop {
            let item = match s.message().await {
                Ok(Some(m)) => Ok(observed(&m)),
                Ok(None) => Err("the Observe stream ended".to_string()),
                Err(e) => Err(format!("Observe stream error: {}", grpc_code(&e))),
            };
            let stop = item.is_err();
            if otx.send(item).is_err() || stop {
                return;
            }
        }
    });
    let mut next_observed = async |what: &str| {
        within(CALL, format!("Observe: {what}"), orx.recv())
            .await
            .unwrap_or_else(|e| panic!("{e} ({})", server_name()))
            .unwrap_or_else(|| panic!("observer task gone before {what}"))
            .unwrap_or_else(|e| panic!("{e} ({}), waiting for {what}", server_name()))
    };

    // The first candidate wins at once.
    let r = ok("campaign p1", c.campaign("el", "p1", l1)).await;
    let k1 = leader_of(&r);
    let key1 = format!("el/{l1:x}");
    assert_eq!(
        (text(k1.name()), text(k1.key()), k1.rev(), k1.lease()),
        ("el".to_string(), key1.clone(), 2, l1),
        "leader key"
    );
    assert_eq!(r.header().unwrap().revision(), 2);
    assert_eq!(
        next_observed("first leader").await,
        (key1.clone(), "p1".into(), 2, 2, 1, l1, 2)
    );
    let l = ok("leader", c.leader("el")).await;
    assert_eq!(observed(&l), (key1.clone(), "p1".into(), 2, 2, 1, l1, 2));

    // A second candidate queues and waits.
    let mut c2 = c.clone();
    let second = tokio::spawn(async move { c2.campaign("el", "p2", l2).await });
    wait_keys(&mut c, "el/", 2).await;
    assert_blocked(&second, "a second Campaign while the first leads").await;

    // Proclaim changes the leader's value in place.
    let p = ok(
        "proclaim p1b",
        c.proclaim("p1b", Some(ProclaimOptions::new().with_leader(k1.clone()))),
    )
    .await;
    assert_eq!(p.header().unwrap().revision(), 4);
    assert_eq!(
        next_observed("proclaim").await,
        (key1.clone(), "p1b".into(), 2, 4, 2, l1, 4)
    );
    let not_leader = LeaderKey::new()
        .with_name("el")
        .with_key(key1.clone())
        .with_rev(3)
        .with_lease(l1);
    let e = err(
        "proclaim with a stale leader key",
        c.proclaim(
            "x",
            Some(ProclaimOptions::new().with_leader(not_leader.clone())),
        ),
    )
    .await;
    assert_eq!(
        e, "Unknown: election: not leader",
        "proclaim by a non-leader"
    );
    // Resign with a stale key does nothing (and is no error).
    ok(
        "resign with a stale leader key",
        c.resign(Some(ResignOptions::new().with_leader(not_leader))),
    )
    .await;
    assert_eq!(rev_now(&mut c).await, 4);

    // The leader resigns: the second candidate takes over.
    let rs = ok(
        "resign p1",
        c.resign(Some(ResignOptions::new().with_leader(k1.clone()))),
    )
    .await;
    assert_eq!(rs.header().unwrap().revision(), 5);
    let r = join(second, CALL, "second Campaign").await;
    let r = r.unwrap_or_else(|e| panic!("second Campaign failed: {}", grpc_code(&e)));
    let k2 = leader_of(&r);
    let key2 = format!("el/{l2:x}");
    assert_eq!(
        (text(k2.name()), text(k2.key()), k2.rev(), k2.lease()),
        ("el".to_string(), key2.clone(), 3, l2),
        "second leader key (rev: its create revision)"
    );
    assert_eq!(
        next_observed("leader change").await,
        (key2.clone(), "p2".into(), 3, 3, 1, l2, 5)
    );
    let l = ok("leader", c.leader("el")).await;
    assert_eq!(observed(&l), (key2.clone(), "p2".into(), 3, 3, 1, l2, 5));

    // No leader: Leader fails, Observe stays quiet until the next one.
    ok(
        "resign p2",
        c.resign(Some(ResignOptions::new().with_leader(k2))),
    )
    .await;
    let e = err("leader after all resigned", c.leader("el")).await;
    assert_eq!(e, "Unknown: election: no leader");
    let r = ok("campaign p3", c.campaign("el", "p3", l3)).await;
    let k3 = leader_of(&r);
    assert_eq!(k3.rev(), 7);
    assert_eq!(
        next_observed("third leader").await,
        (format!("el/{l3:x}"), "p3".into(), 7, 7, 1, l3, 7)
    );
    // Campaigning again on the leader's lease with another value proclaims it.
    let r = ok("re-campaign p3b", c.campaign("el", "p3b", l3)).await;
    assert_eq!(leader_of(&r).rev(), 7);
    assert_eq!(
        next_observed("re-campaign").await,
        (format!("el/{l3:x}"), "p3b".into(), 7, 8, 2, l3, 8)
    );
    // The leader's lease ending ends its leadership.
    ok("revoke the leader's lease", c.lease_revoke(l3)).await;
    let e = err("leader after the lease ended", c.leader("el")).await;
    assert_eq!(e, "Unknown: election: no leader");
    let e = err(
        "campaign with an unknown lease",
        c.campaign("el", "p4", 0x7777),
    )
    .await;
    assert_eq!(
        e, "Unknown: etcdserver: requested lease not found",
        "campaign with an unknown lease"
    );
    observer.abort();
}
