//! End-to-end lease semantics through the `etcd-client` crate: expiry
//! (keys vanish within TTL + 1 s of the last keep-alive, one DELETE per key,
//! all in one revision), keep-alives, atomic revocation of a lease whose keys
//! span many prefixes (so several MetaStore shards), durability of leases
//! across a server crash and restart, and the Lease API's edge cases.
//!
//! The only timing assertion is the TTL + 1 s upper bound on expiry; every
//! wait is bounded so a broken server fails instead of hanging.
//! `TEST_AGAINST_ETCD=1` runs the same tests against a real etcd.

mod common;
mod wl_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions, WatchStream,
};

use wl_support::{CALL, connect, err, ok, server_name, start_server, start_server_in, within};

/// Bound for one unary call or one awaited stream message.
/// The slack the spec allows after a lease's TTL.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);
/// etcd extends every lease by the election timeout (1 s by default) when
/// a leader takes over, which includes a restart of a single member.
const PROMOTE_EXTENSION: Duration = Duration::from_secs(1);

fn key_of(kv: &etcd_client::KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

async fn rev_now(c: &mut Client) -> i64 {
    ok("get", c.get("probe", None))
        .await
        .header()
        .expect("header")
        .revision()
}

/// Existing keys among `keys` (one Range over everything).
async fn existing(c: &mut Client, keys: &BTreeSet<String>) -> BTreeSet<String> {
    let r = ok(
        "range all",
        c.get(
            vec![0],
            Some(GetOptions::new().with_all_keys().with_keys_only()),
        ),
    )
    .await;
    r.kvs()
        .iter()
        .map(key_of)
        .filter(|k| keys.contains(k))
        .collect()
}

/// Keys at revision `rev` (all keys).
async fn keys_at(c: &mut Client, rev: i64) -> BTreeSet<String> {
    let r = ok(
        &format!("range all at revision {rev}"),
        c.get(
            vec![0],
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_keys_only()
                    .with_revision(rev),
            ),
        ),
    )
    .await;
    r.kvs().iter().map(key_of).collect()
}

/// Polls until none of `keys` exists; returns when that was first seen.
/// Panics if they are still there `give_up` after `since`.
async fn wait_gone(
    c: &mut Client,
    keys: &BTreeSet<String>,
    since: Instant,
    give_up: Duration,
) -> Instant {
    loop {
        let left = existing(c, keys).await;
        if left.is_empty() {
            return Instant::now();
        }
        if since.elapsed() > give_up {
            panic!(
                "keys {left:?} of the lease still exist {:?} after its last keep-alive on {}",
                since.elapsed(),
                server_name()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A watch over all keys from `from_rev`, after its `created` response.
async fn watch_all(c: &mut Client, from_rev: i64) -> WatchStream {
    let mut s = ok(
        "watch all keys",
        c.watch(
            vec![0],
            Some(
                WatchOptions::new()
                    .with_range(vec![0u8])
                    .with_start_revision(from_rev),
            ),
        ),
    )
    .await;
    let created = ok("watch created response", s.message()).await;
    let created = created.expect("watch stream ended before `created`");
    assert!(
        created.created() && !created.canceled(),
        "first watch response must be `created`: {created:?}"
    );
    s
}

/// One watch response: (header revision, [(type, key, mod_revision)]).
type WatchResp = (i64, Vec<(EventType, String, i64)>);

/// Reads watch responses until `n` events arrived (or `limit` passed);
/// returns them grouped per response as (header revision, [(type, key, mod_revision)]).
async fn collect_events(s: &mut WatchStream, n: usize, limit: Duration) -> Vec<WatchResp> {
    let deadline = Instant::now() + limit;
    let mut out: Vec<WatchResp> = Vec::new();
    while out.iter().map(|r| r.1.len()).sum::<usize>() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, s.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => panic!("watch stream ended; got so far: {out:?}"),
            Ok(Err(e)) => panic!("watch stream error {e}; got so far: {out:?}"),
            Err(_) => panic!(
                "only {} of {n} expected watch events within {limit:?} on {}: {out:?}",
                out.iter().map(|r| r.1.len()).sum::<usize>(),
                server_name()
            ),
        };
        if msg.events().is_empty() {
            continue; // progress notification
        }
        out.push((
            msg.header().map(|h| h.revision()).unwrap_or(-1),
            msg.events()
                .iter()
                .map(|e| {
                    let kv = e.kv().expect("event kv");
                    (e.event_type(), key_of(kv), kv.mod_revision())
                })
                .collect(),
        ));
    }
    out
}

/// Asserts that `resps` is exactly one response of DELETE events for
/// `keys`, in key order, all at one revision; returns that revision.
fn assert_one_delete_revision(resps: &[WatchResp], keys: &BTreeSet<String>, what: &str) -> i64 {
    assert_eq!(
        resps.len(),
        1,
        "{what}: the deletes of all {} keys must arrive in one watch response (one revision); got {resps:?}",
        keys.len()
    );
    let evs = &resps[0].1;
    let rev = evs[0].2;
    for (t, k, r) in evs {
        assert_eq!(
            *t,
            EventType::Delete,
            "{what}: {k} is not a DELETE: {evs:?}"
        );
        assert_eq!(*r, rev, "{what}: deletes at different revisions: {evs:?}");
    }
    let got: Vec<&String> = evs.iter().map(|e| &e.1).collect();
    let want: Vec<&String> = keys.iter().collect();
    assert_eq!(
        got, want,
        "{what}: DELETE events must be exactly the lease's keys, in key order (etcd sorts them)"
    );
    rev
}

fn lease_keys(prefixes: &[&str], per_prefix: usize, tag: &str) -> BTreeSet<String> {
    prefixes
        .iter()
        .flat_map(|p| (0..per_prefix).map(move |i| format!("{p}{tag}{i}")))
        .collect()
}

async fn attach(c: &mut Client, keys: &BTreeSet<String>, lease: i64) -> i64 {
    let mut rev = 0;
    for k in keys {
        let r = ok(
            &format!("put {k} with lease {lease:x}"),
            c.put(k.clone(), "v", Some(PutOptions::new().with_lease(lease))),
        )
        .await;
        rev = r.header().unwrap().revision();
    }
    rev
}

const PREFIXES: [&str; 8] = ["a/", "b/", "c/", "d/", "e/", "m/", "x/", "zz/"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_keys_vanish_within_ttl_plus_one_second() {
    let Some((_server, ep)) = start_server(&[]) else {
        return;
    };
    let mut c = connect(&ep).await;

    // Lease A is kept alive for more than twice its TTL, then let go.
    const TTL_A: i64 = 3;
    let a = ok("grant A", c.lease_grant(TTL_A, None)).await;
    let a_granted = Instant::now();
    assert_eq!(a.ttl(), TTL_A, "granted TTL");
    assert_ne!(a.id(), 0, "lease id");
    let keys_a = lease_keys(&PREFIXES, 2, "la");
    attach(&mut c, &keys_a, a.id()).await;
    // Lease B is never kept alive: its grant is its last keep-alive.
    const TTL_B: i64 = 2;
    let keys_b = lease_keys(&PREFIXES[..4], 1, "lb");
    let b = ok("grant B", c.lease_grant(TTL_B, None)).await;
    let b_granted = Instant::now();
    attach(&mut c, &keys_b, b.id()).await;
    let start = rev_now(&mut c).await + 1;
    let mut w = watch_all(&mut c, start).await;

    // Keep A alive in the background (every 0.9 s) until told to stop.
    let (keeper, mut ka) = ok("keep-alive stream", c.lease_keep_alive(a.id())).await;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let a_id = a.id();
    let keep_task = tokio::spawn(async move {
        let mut keeper = keeper;
        let mut last_ka = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop_rx => return Ok(last_ka),
                _ = tokio::time::sleep(Duration::from_millis(900)) => {}
            }
            if let Err(e) = keeper.keep_alive().await {
                return Err(format!("keep-alive request: {e}"));
            }
            match tokio::time::timeout(CALL, ka.message()).await {
                Ok(Ok(Some(resp))) if (resp.id(), resp.ttl()) == (a_id, TTL_A) => {
                    last_ka = Instant::now();
                }
                other => {
                    return Err(format!(
                        "keep-alive response: expected id {a_id:x} ttl {TTL_A}, got {other:?}"
                    ));
                }
            }
        }
    });

    // B expires on its own while A is kept alive.
    let b_gone = wait_gone(
        &mut c,
        &keys_b,
        b_granted,
        Duration::from_secs(TTL_B as u64) + EXPIRY_SLACK + Duration::from_secs(10),
    )
    .await;
    let b_after = b_gone - b_granted;
    eprintln!("lease B (ttl {TTL_B}s, never kept alive): keys gone {b_after:?} after the grant");
    assert!(
        b_after <= Duration::from_secs(TTL_B as u64) + EXPIRY_SLACK,
        "keys of lease B (ttl {TTL_B}s) vanished {b_after:?} after its grant: more than TTL + 1s"
    );
    let resps = collect_events(&mut w, keys_b.len(), Duration::from_secs(5)).await;
    let rev_b = assert_one_delete_revision(&resps, &keys_b, "expiry of lease B");
    let ttl_b = ok("timetolive B", c.lease_time_to_live(b.id(), None)).await;
    assert_eq!(
        (ttl_b.ttl(), ttl_b.granted_ttl()),
        (-1, 0),
        "TimeToLive of an expired lease: TTL -1, granted TTL 0 (no error)"
    );

    // A outlives twice its TTL thanks to the keep-alives; its keys stay.
    while a_granted.elapsed() < Duration::from_secs(2 * TTL_A as u64 + 1) {
        let left = existing(&mut c, &keys_a).await;
        assert_eq!(left, keys_a, "keys of the kept-alive lease A disappeared");
        assert!(!keep_task.is_finished(), "keep-alive task stopped early");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t = ok(
        "timetolive A --keys",
        c.lease_time_to_live(a.id(), Some(LeaseTimeToLiveOptions::new().with_keys())),
    )
    .await;
    assert_eq!(t.granted_ttl(), TTL_A, "granted TTL of A");
    assert!(
        t.ttl() > 0 && t.ttl() <= TTL_A,
        "remaining TTL of A right after a keep-alive: {}",
        t.ttl()
    );
    let listed: BTreeSet<String> = t
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(listed, keys_a, "TimeToLive keys of A");

    // Stop keeping A alive.
    let _ = stop_tx.send(());
    let last_ka = match within(CALL, "keep-alive task", keep_task).await {
        Ok(Ok(Ok(t))) => t,
        other => panic!(
            "keeping lease A alive failed on {}: {other:?}",
            server_name()
        ),
    };
    let a_gone = wait_gone(
        &mut c,
        &keys_a,
        last_ka,
        Duration::from_secs(TTL_A as u64) + EXPIRY_SLACK + Duration::from_secs(10),
    )
    .await;
    let a_after = a_gone - last_ka;
    eprintln!("lease A (ttl {TTL_A}s): keys gone {a_after:?} after the last keep-alive");
    assert!(
        a_after <= Duration::from_secs(TTL_A as u64) + EXPIRY_SLACK,
        "keys of lease A (ttl {TTL_A}s) vanished {a_after:?} after the last keep-alive: more than TTL + 1s"
    );
    let resps = collect_events(&mut w, keys_a.len(), Duration::from_secs(5)).await;
    let rev_a = assert_one_delete_revision(&resps, &keys_a, "expiry of lease A");
    assert_eq!(
        rev_a,
        rev_b + 1,
        "the two expiries are consecutive revisions"
    );
    assert_eq!(
        resps[0].0, rev_a,
        "header revision of the expiry's watch response"
    );
    // The store itself agrees: all keys at rev_a - 1, none at rev_a.
    let before = keys_at(&mut c, rev_a - 1).await;
    assert!(
        keys_a.is_subset(&before),
        "keys of A at revision {}",
        rev_a - 1
    );
    let after = keys_at(&mut c, rev_a).await;
    assert!(
        after.is_disjoint(&keys_a),
        "keys of A at revision {rev_a}: {after:?}"
    );

    // The expired lease is gone everywhere.
    let ls = ok("leases", c.leases()).await;
    assert!(
        !ls.leases()
            .iter()
            .any(|l| l.id() == a.id() || l.id() == b.id()),
        "expired leases still listed: {:?}",
        ls.leases().iter().map(|l| l.id()).collect::<Vec<_>>()
    );
    let e = err("keep-alive of an expired lease", c.lease_keep_alive(a.id())).await;
    assert!(
        e.contains("lease not found"),
        "keep-alive of an expired lease: {e}"
    );
    let e = err(
        "put with an expired lease",
        c.put("a/late", "v", Some(PutOptions::new().with_lease(a.id()))),
    )
    .await;
    assert_eq!(e, "NotFound: etcdserver: requested lease not found");
    let e = err("revoke of an expired lease", c.lease_revoke(a.id())).await;
    assert_eq!(e, "NotFound: etcdserver: requested lease not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_lease_with_keys_on_many_prefixes_is_atomic() {
    let Some((_server, ep)) = start_server(&[]) else {
        return;
    };
    let mut c = connect(&ep).await;
    let lease = ok("grant", c.lease_grant(60, None)).await.id();
    let other = ok("grant other", c.lease_grant(60, None)).await.id();
    let keys = lease_keys(&PREFIXES, 6, "k");
    attach(&mut c, &keys, lease).await;
    // Neighbours that must survive: no lease, and another lease.
    let plain = lease_keys(&PREFIXES, 1, "plain");
    for k in &plain {
        ok("put plain", c.put(k.clone(), "p", None)).await;
    }
    let others = lease_keys(&PREFIXES, 1, "other");
    attach(&mut c, &others, other).await;
    // A key moved off the lease by a later put without lease must survive too.
    let moved = "c/k0".to_string();
    ok(
        "put moved key without lease",
        c.put(moved.clone(), "w", None),
    )
    .await;
    let mut keys = keys;
    keys.remove(&moved);

    let t = ok(
        "timetolive --keys",
        c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys())),
    )
    .await;
    let listed: BTreeSet<String> = t
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        listed, keys,
        "TimeToLive keys (a key re-put without lease is detached)"
    );
    assert_eq!(t.granted_ttl(), 60);

    let before_rev = rev_now(&mut c).await;
    let mut w = watch_all(&mut c, before_rev + 1).await;
    let r = ok("revoke", c.lease_revoke(lease)).await;
    let rev = r.header().unwrap().revision();
    assert_eq!(
        rev,
        before_rev + 1,
        "a revoke deleting keys is one revision"
    );
    let resps = collect_events(&mut w, keys.len(), Duration::from_secs(5)).await;
    let ev_rev = assert_one_delete_revision(&resps, &keys, "revoke");
    assert_eq!(ev_rev, rev, "DELETE events carry the revoke's revision");

    let at_before = keys_at(&mut c, rev - 1).await;
    assert!(
        keys.is_subset(&at_before),
        "all keys exist at revision {}",
        rev - 1
    );
    let at_rev = keys_at(&mut c, rev).await;
    assert!(
        at_rev.is_disjoint(&keys),
        "no key of the lease at revision {rev}"
    );
    for k in plain.iter().chain(&others).chain([&moved]) {
        assert!(
            at_rev.contains(k),
            "{k} (not on the revoked lease) must survive"
        );
    }
    let t = ok("timetolive after revoke", c.lease_time_to_live(lease, None)).await;
    assert_eq!(
        (t.ttl(), t.granted_ttl()),
        (-1, 0),
        "TimeToLive of a revoked lease"
    );
    let ids: Vec<i64> = ok("leases", c.leases())
        .await
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(ids, vec![other], "lease list after the revoke");
    let e = err("second revoke", c.lease_revoke(lease)).await;
    assert_eq!(e, "NotFound: etcdserver: requested lease not found");
    // Nothing else happened.
    assert_eq!(rev_now(&mut c).await, rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_api_edge_cases() {
    let Some((_server, ep)) = start_server(&[]) else {
        return;
    };
    let mut c = connect(&ep).await;
    // etcd raises TTLs below its minimum (1.5 x election timeout, rounded up:
    // 2s with the default 1s election timeout).
    let min = ok("grant ttl 1", c.lease_grant(1, None)).await;
    assert_eq!(min.ttl(), 2, "TTL 1 is raised to the minimum");
    // Client-chosen ids.
    let g = ok(
        "grant with id",
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234))),
    )
    .await;
    assert_eq!((g.id(), g.ttl()), (0x1234, 30));
    let e = err(
        "grant with an existing id",
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234))),
    )
    .await;
    assert_eq!(e, "FailedPrecondition: etcdserver: lease already exists");
    let e = err("grant ttl too large", c.lease_grant(9_000_000_001, None)).await;
    assert_eq!(e, "OutOfRange: etcdserver: too large lease TTL");
    // Unknown leases.
    let t = ok("timetolive unknown", c.lease_time_to_live(0x7777, None)).await;
    assert_eq!(
        (t.id(), t.ttl(), t.granted_ttl(), t.keys().len()),
        (0x7777, -1, 0, 0),
        "TimeToLive of an unknown lease is no error"
    );
    let e = err("keep-alive unknown", c.lease_keep_alive(0x7777)).await;
    assert!(
        e.contains("lease not found"),
        "keep-alive of an unknown lease is answered with TTL 0: {e}"
    );
    let e = err("revoke unknown", c.lease_revoke(0x7777)).await;
    assert_eq!(e, "NotFound: etcdserver: requested lease not found");
    let e = err(
        "put with unknown lease",
        c.put("k", "v", Some(PutOptions::new().with_lease(0x7777))),
    )
    .await;
    assert_eq!(e, "NotFound: etcdserver: requested lease not found");
    // Grants do not move the revision; a revoke without keys does not either.
    let rev = rev_now(&mut c).await;
    assert_eq!(rev, 1, "lease grants are not KV revisions");
    ok("revoke 0x1234", c.lease_revoke(0x1234)).await;
    assert_eq!(rev_now(&mut c).await, 1, "revoking a lease without keys");
    let ids: BTreeSet<i64> = ok("leases", c.leases())
        .await
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(!ids.contains(&0x1234), "revoked lease listed: {ids:?}");
    // Keep-alive of a live lease answers its full granted TTL.
    let (_k, _s) = ok("keep-alive live lease", c.lease_keep_alive(min.id())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_crash_and_restart() {
    let dir = tempfile::Builder::new()
        .prefix("lease-restart-")
        .tempdir()
        .expect("temp dir");
    let Some((server, ep)) = start_server_in(dir.path(), &[]) else {
        return;
    };
    let mut c = connect(&ep).await;
    let long = ok("grant long", c.lease_grant(60, None)).await.id();
    let empty = ok("grant empty", c.lease_grant(60, None)).await.id();
    const SHORT_TTL: i64 = 3;
    let short = ok("grant short", c.lease_grant(SHORT_TTL, None)).await.id();
    let keys_long = lease_keys(&PREFIXES[..4], 1, "long");
    let keys_short = lease_keys(&PREFIXES[4..], 1, "short");
    attach(&mut c, &keys_long, long).await;
    let last_rev = attach(&mut c, &keys_short, short).await;

    // Crash (SIGKILL) and restart on the same data directory.
    drop(c);
    drop(server);
    let Some((_server, ep)) = start_server_in(dir.path(), &[]) else {
        return;
    };
    let ready = Instant::now();
    let mut c = connect(&ep).await;
    assert_eq!(
        rev_now(&mut c).await,
        last_rev,
        "revision after the restart (nothing expired yet)"
    );
    let mut w = watch_all(&mut c, last_rev + 1).await;

    let t = ok(
        "timetolive long --keys after restart",
        c.lease_time_to_live(long, Some(LeaseTimeToLiveOptions::new().with_keys())),
    )
    .await;
    assert_eq!(t.granted_ttl(), 60, "granted TTL survives the restart");
    assert!(t.ttl() > 0 && t.ttl() <= 60, "remaining TTL {}", t.ttl());
    let listed: BTreeSet<String> = t
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(listed, keys_long, "attached keys survive the restart");
    let t = ok("timetolive empty", c.lease_time_to_live(empty, None)).await;
    assert_eq!(
        t.granted_ttl(),
        60,
        "a lease without keys survives the restart"
    );
    let ids: BTreeSet<i64> = ok("leases", c.leases())
        .await
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(
        ids.contains(&long) && ids.contains(&empty),
        "leases after restart: {ids:?}"
    );

    // The short lease still expires. etcd renews every lease when its raft
    // leader is elected (`lessor.Promote`: TTL + election timeout, 1 s by
    // default), so the bound after a restart is TTL + 1 s + the usual 1 s.
    let gone = wait_gone(
        &mut c,
        &keys_short,
        ready,
        Duration::from_secs(SHORT_TTL as u64) + EXPIRY_SLACK + Duration::from_secs(10),
    )
    .await;
    let after = gone - ready;
    eprintln!("short lease after restart: keys gone {after:?} after the server was ready");
    assert!(
        after <= Duration::from_secs(SHORT_TTL as u64) + PROMOTE_EXTENSION + EXPIRY_SLACK,
        "keys of the short lease vanished {after:?} after the restart: more than TTL + 2s"
    );
    let resps = collect_events(&mut w, keys_short.len(), Duration::from_secs(5)).await;
    let rev = assert_one_delete_revision(&resps, &keys_short, "expiry after restart");
    assert_eq!(rev, last_rev + 1);
    assert_eq!(
        existing(&mut c, &keys_long).await,
        keys_long,
        "keys of the long lease"
    );

    // Keep-alive and revoke work on a recovered lease; new ids are fresh.
    let (_k, _s) = ok("keep-alive recovered lease", c.lease_keep_alive(long)).await;
    let fresh = ok("grant after restart", c.lease_grant(60, None))
        .await
        .id();
    assert!(
        ![long, empty, short].contains(&fresh),
        "lease id {fresh:x} reused after the restart"
    );
    let r = ok("revoke recovered lease", c.lease_revoke(long)).await;
    assert_eq!(r.header().unwrap().revision(), rev + 1);
    let resps = collect_events(&mut w, keys_long.len(), Duration::from_secs(5)).await;
    assert_one_delete_revision(&resps, &keys_long, "revoke after restart");
}
