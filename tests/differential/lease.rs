//! Sections `lease_*`: LeaseGrant/Revoke/TimeToLive/Leases, keys attached to
//! leases (Put, Txn, revoke deleting them in one revision, seen by a
//! watcher), the LeaseKeepAlive stream and expiry. Lease IDs are chosen by
//! the client wherever possible so that responses compare exactly; remaining
//! TTLs are compared within one second.

use std::time::Duration;

use metastore::proto::etcdserverpb as pb;
use pb::watch_request::RequestUnion;

use crate::common::GrpcResult;
use crate::harness::{Diff, INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE, start};
use crate::requests::{b, get, get_prefix, op_put, prefix_end, put, txn};
use crate::streams::{
    LEASE_GRANT, LEASE_KEEP_ALIVE, LEASE_LEASES, LEASE_REVOKE, LEASE_TIME_TO_LIVE, StreamPair,
    WATCH, ttl_within_1s,
};
use crate::watch::etcd_sent;

pub const FAILED_PRECONDITION: i32 = 9;

/// etcd's lease TTL upper bound (lease.MaxLeaseTTL).
const MAX_LEASE_TTL: i64 = 9_000_000_000;

fn grant(id: i64, ttl: i64) -> pb::LeaseGrantRequest {
    pb::LeaseGrantRequest { ttl, id }
}

fn put_lease(k: &str, v: &str, lease: i64) -> pb::PutRequest {
    pb::PutRequest { lease, ..put(k, v) }
}

fn ttl_req(id: i64, keys: bool) -> pb::LeaseTimeToLiveRequest {
    pb::LeaseTimeToLiveRequest { id, keys }
}

impl Diff {
    async fn lease_grant(
        &mut self,
        step: &str,
        r: pb::LeaseGrantRequest,
    ) -> GrpcResult<pb::LeaseGrantResponse> {
        self.call(step, LEASE_GRANT, &r).await
    }
    async fn lease_revoke(&mut self, step: &str, id: i64) -> GrpcResult<pb::LeaseRevokeResponse> {
        self.call(step, LEASE_REVOKE, &pb::LeaseRevokeRequest { id })
            .await
    }
    /// TimeToLive, with the remaining TTL compared within one second.
    async fn lease_ttl(
        &mut self,
        step: &str,
        id: i64,
        keys: bool,
    ) -> GrpcResult<pb::LeaseTimeToLiveResponse> {
        let r = ttl_req(id, keys);
        self.call_pair(step, LEASE_TIME_TO_LIVE, &r, &r, ttl_within_1s)
            .await
            .0
    }
    async fn lease_leases(&mut self, step: &str) -> GrpcResult<pb::LeaseLeasesResponse> {
        self.call(step, LEASE_LEASES, &pb::LeaseLeasesRequest {})
            .await
    }
}

fn ttl_of(r: &GrpcResult<pb::LeaseTimeToLiveResponse>) -> Option<(i64, i64, Vec<String>)> {
    r.as_ref().ok().map(|r| {
        (
            r.ttl,
            r.granted_ttl,
            r.keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect(),
        )
    })
}

fn watch_prefix(p: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: b(p),
            range_end: prefix_end(p.as_bytes()),
            ..Default::default()
        })),
    }
}

// ---------------------------------------------------------------------------
// Grant, TTL bounds, TimeToLive, Leases, keys, revoke
// ---------------------------------------------------------------------------

#[tokio::test]
async fn diff_lease_basic() {
    let mut d = start!("lease_basic");
    let r = d.lease_grant("grant id 1000 ttl 60", grant(1000, 60)).await;
    d.script_check(
        matches!(&r, Ok(g) if g.id == 1000 && g.ttl == 60 && g.error.is_empty()
            && g.header.as_ref().map(|h| h.revision) == Some(1)),
        &format!("grant echoes id and ttl, header at revision 1: {r:?}"),
    );
    let r = d
        .lease_grant("grant existing id 1000", grant(1000, 30))
        .await;
    d.expect_err(
        &r,
        FAILED_PRECONDITION,
        "etcdserver: lease already exists",
        "grant existing id",
    );

    // ID 0: the server picks a positive ID; compare everything else.
    let req = grant(0, 45);
    let (e, o) = d
        .call_pair(
            "grant id 0 (server-chosen id)",
            LEASE_GRANT,
            &req,
            &req,
            |o: &mut pb::LeaseGrantResponse, e: &pb::LeaseGrantResponse| {
                if o.id > 0 {
                    o.id = e.id;
                }
            },
        )
        .await;
    let (e_id, o_id) = (
        e.as_ref().map(|r| r.id).unwrap_or(0),
        o.as_ref().map(|r| r.id).unwrap_or(0),
    );
    d.script_check(e_id > 0, &format!("etcd chose a positive id: {e:?}"));
    if e_id > 0 {
        let (er, or) = (
            pb::LeaseRevokeRequest { id: e_id },
            pb::LeaseRevokeRequest { id: o_id },
        );
        let _ = d
            .call_pair::<_, pb::LeaseRevokeResponse>(
                "revoke the server-chosen id",
                LEASE_REVOKE,
                &er,
                &or,
                |_, _| {},
            )
            .await;
    }

    // TTL bounds: below the minimum (1.5 election timeouts, rounded up to
    // 2 s with etcd's defaults) is raised; above MaxLeaseTTL is an error.
    for (id, ttl) in [(1001, 1), (1002, 0), (1003, -5)] {
        let r = d
            .lease_grant(&format!("grant ttl {ttl} (below minimum)"), grant(id, ttl))
            .await;
        d.script_check(
            matches!(&r, Ok(g) if g.ttl == 2),
            &format!("ttl {ttl} raised to 2: {r:?}"),
        );
        let t = d
            .lease_ttl(&format!("timetolive of ttl-{ttl} lease"), id, false)
            .await;
        d.script_check(
            matches!(ttl_of(&t), Some((1 | 2, 2, _))),
            &format!("granted_ttl 2: {t:?}"),
        );
        d.lease_revoke(&format!("revoke ttl-{ttl} lease"), id)
            .await
            .ok();
    }
    let r = d
        .lease_grant("grant ttl MaxLeaseTTL+1", grant(1004, MAX_LEASE_TTL + 1))
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: too large lease TTL",
        "too large ttl",
    );
    let r = d
        .lease_grant(
            "grant ttl MaxLeaseTTL+1 with id 0",
            grant(0, MAX_LEASE_TTL + 1),
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: too large lease TTL",
        "too large ttl, id 0",
    );
    d.lease_grant("grant ttl MaxLeaseTTL", grant(1005, MAX_LEASE_TTL))
        .await
        .ok();
    d.lease_ttl("timetolive of MaxLeaseTTL lease", 1005, false)
        .await
        .ok();
    d.lease_revoke("revoke MaxLeaseTTL lease", 1005).await.ok();
    let r = d.lease_grant("grant negative id", grant(-7, 30)).await;
    d.script_check(
        matches!(&r, Ok(g) if g.id == -7),
        &format!("negative ids are accepted: {r:?}"),
    );
    d.lease_revoke("revoke negative id", -7).await.ok();

    // Keys attached to a lease.
    d.lease_grant("grant id 2000 ttl 120", grant(2000, 120))
        .await
        .ok();
    d.put("put l/a with lease", put_lease("l/a", "1", 1000))
        .await
        .ok(); // 2
    d.put("put l/b with lease", put_lease("l/b", "1", 1000))
        .await
        .ok(); // 3
    d.range("keys show their lease", get_prefix("l/"))
        .await
        .ok();
    let r = d
        .put("put with unknown lease", put_lease("l/x", "1", 999_999))
        .await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "put unknown lease",
    );
    let r = d
        .put("put with revoked lease", put_lease("l/x", "1", 1001))
        .await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "put revoked lease",
    );
    d.put(
        "ignore_lease keeps the lease",
        pb::PutRequest {
            ignore_lease: true,
            prev_kv: true,
            ..put("l/a", "2")
        },
    )
    .await
    .ok(); // 4
    d.range("l/a still on lease 1000", get("l/a")).await.ok();
    let r = d
        .put(
            "ignore_lease with a lease",
            pb::PutRequest {
                ignore_lease: true,
                ..put_lease("l/a", "3", 1000)
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: lease is provided",
        "ignore_lease + lease",
    );
    let r = d
        .put(
            "ignore_lease on a missing key",
            pb::PutRequest {
                ignore_lease: true,
                ..put("l/none", "3")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key not found",
        "ignore_lease missing key",
    );
    d.put("put l/c with lease 2000", put_lease("l/c", "1", 2000))
        .await
        .ok(); // 5
    d.put("move l/c to lease 1000", put_lease("l/c", "2", 1000))
        .await
        .ok(); // 6
    d.put("put l/d with lease 1000", put_lease("l/d", "1", 1000))
        .await
        .ok(); // 7
    d.put("detach l/d (plain put)", put("l/d", "2")).await.ok(); // 8
    d.txn(
        "txn put with lease",
        txn(
            vec![],
            vec![
                op_put("l/e", "1"),
                crate::requests::op(pb::request_op::Request::RequestPut(put_lease(
                    "l/f", "1", 2000,
                ))),
            ],
            vec![],
        ),
    )
    .await
    .ok(); // 9
    let r = d
        .txn(
            "txn put with unknown lease",
            txn(
                vec![],
                vec![crate::requests::op(pb::request_op::Request::RequestPut(
                    put_lease("l/g", "1", 4242),
                ))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "txn unknown lease",
    );

    let t = d
        .lease_ttl("timetolive 1000 without keys", 1000, false)
        .await;
    d.script_check(
        matches!(ttl_of(&t), Some((58..=60, 60, k)) if k.is_empty()),
        &format!("{t:?}"),
    );
    let t = d.lease_ttl("timetolive 1000 with keys", 1000, true).await;
    d.script_check(
        matches!(ttl_of(&t), Some((_, 60, k)) if k == ["l/a", "l/b", "l/c"]),
        &format!("keys of lease 1000 (sorted): {t:?}"),
    );
    d.lease_ttl("timetolive 2000 with keys", 2000, true)
        .await
        .ok();
    let t = d
        .lease_ttl("timetolive of an unknown lease", 4242, true)
        .await;
    d.script_check(
        matches!(&t, Ok(r) if r.id == 4242 && r.ttl == -1 && r.granted_ttl == 0 && r.keys.is_empty()
            && r.header.as_ref().map(|h| h.revision) == Some(9)),
        &format!("unknown lease: id echoed, ttl -1, header filled: {t:?}"),
    );
    d.lease_ttl("timetolive of id 0", 0, false).await.ok();
    let l = d.lease_leases("leases").await;
    d.script_check(
        matches!(&l, Ok(r) if r.leases.iter().map(|l| l.id).collect::<Vec<_>>() == [1000, 2000]),
        &format!("two leases: {l:?}"),
    );

    // Revoke: all keys deleted in one revision, seen together by a watcher.
    let mut w = d.open_stream("watch l/", WATCH).await;
    d.send(&mut w, "watch l/", &watch_prefix("l/"));
    let got = d.expect::<pb::WatchResponse>(&mut w, "created", 1).await;
    etcd_sent(&mut d, "created", &got, &["w0 created rev=9"]);
    let r = d.lease_revoke("revoke 1000 (3 keys)", 1000).await;
    d.script_check(
        matches!(&r, Ok(x) if x.header.as_ref().map(|h| h.revision) == Some(10)),
        &format!("revoke header is the deletion's revision: {r:?}"),
    );
    let got = d
        .expect::<pb::WatchResponse>(&mut w, "deletes of the revoke", 1)
        .await;
    etcd_sent(
        &mut d,
        "deletes of the revoke",
        &got,
        &["w0 rev=10: DEL l/a@10, DEL l/b@10, DEL l/c@10"],
    );
    d.range("keys of lease 1000 are gone", get_prefix("l/"))
        .await
        .ok();
    let t = d
        .lease_ttl("timetolive of the revoked lease", 1000, true)
        .await;
    d.script_check(matches!(ttl_of(&t), Some((-1, 0, _))), &format!("{t:?}"));
    let r = d.lease_revoke("revoke 1000 again", 1000).await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "revoke unknown",
    );
    let r = d.lease_revoke("revoke id 0", 0).await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "revoke 0",
    );
    d.lease_grant("grant 3000 (no keys)", grant(3000, 60))
        .await
        .ok();
    let r = d.lease_revoke("revoke a lease without keys", 3000).await;
    d.script_check(
        matches!(&r, Ok(x) if x.header.as_ref().map(|h| h.revision) == Some(10)),
        &format!("no keys: no new revision: {r:?}"),
    );
    d.expect_quiet::<pb::WatchResponse>(&mut w, "no event for a lease without keys")
        .await;
    // Deleting a key detaches it from its lease; the lease stays.
    d.delete("delete l/f (on lease 2000)", crate::requests::del("l/f"))
        .await
        .ok(); // 11
    let t = d
        .lease_ttl("timetolive 2000 after its key was deleted", 2000, true)
        .await;
    d.script_check(
        matches!(ttl_of(&t), Some((_, 120, k)) if k.is_empty()),
        &format!("no keys left on 2000: {t:?}"),
    );
    let got = d.expect::<pb::WatchResponse>(&mut w, "delete l/f", 1).await;
    etcd_sent(&mut d, "delete l/f", &got, &["w0 rev=11: DEL l/f@11"]);
    d.lease_grant("grant id 1000 again after revoke", grant(1000, 60))
        .await
        .ok();
    d.lease_leases("leases at the end").await.ok();
    d.finish();
}

// ---------------------------------------------------------------------------
// LeaseKeepAlive stream
// ---------------------------------------------------------------------------

async fn keep_alive(
    d: &mut Diff,
    s: &mut StreamPair,
    step: &str,
    id: i64,
) -> Option<pb::LeaseKeepAliveResponse> {
    d.send(s, step, &pb::LeaseKeepAliveRequest { id });
    d.expect::<pb::LeaseKeepAliveResponse>(s, step, 1)
        .await
        .pop()
}

#[tokio::test]
async fn diff_lease_keepalive() {
    let mut d = start!("lease_keepalive");
    d.lease_grant("grant 10 ttl 30", grant(10, 30)).await.ok();
    d.lease_grant("grant 11 ttl 1 (raised to 2)", grant(11, 1))
        .await
        .ok();
    d.put("put k on lease 10", put_lease("k", "v", 10))
        .await
        .ok(); // 2
    let mut s = d.open_stream("keepalive", LEASE_KEEP_ALIVE).await;
    let r = keep_alive(&mut d, &mut s, "keepalive 10", 10).await;
    d.script_check(
        matches!(&r, Some(x) if x.id == 10 && x.ttl == 30 && x.header.as_ref().map(|h| h.revision) == Some(2)),
        &format!("keepalive returns the granted ttl: {r:?}"),
    );
    let r = keep_alive(&mut d, &mut s, "keepalive 11", 11).await;
    d.script_check(
        matches!(&r, Some(x) if x.ttl == 2),
        &format!("raised ttl: {r:?}"),
    );
    let r = keep_alive(&mut d, &mut s, "keepalive unknown 777", 777).await;
    d.script_check(
        matches!(&r, Some(x) if x.id == 777 && x.ttl == 0),
        &format!("unknown lease: ttl 0, id echoed: {r:?}"),
    );
    keep_alive(&mut d, &mut s, "keepalive id 0", 0).await;
    // Several requests in a row: answered in order.
    for id in [10, 777, 10] {
        d.send(
            &mut s,
            "pipelined keepalive",
            &pb::LeaseKeepAliveRequest { id },
        );
    }
    d.expect::<pb::LeaseKeepAliveResponse>(&mut s, "three pipelined answers", 3)
        .await;
    d.lease_ttl("timetolive after keepalive", 10, true)
        .await
        .ok();
    d.lease_revoke("revoke 10", 10).await.ok(); // 3
    let r = keep_alive(&mut d, &mut s, "keepalive of revoked 10", 10).await;
    d.script_check(
        matches!(&r, Some(x) if x.id == 10 && x.ttl == 0 && x.header.as_ref().map(|h| h.revision) == Some(3)),
        &format!("revoked: ttl 0: {r:?}"),
    );
    d.expect_quiet::<pb::LeaseKeepAliveResponse>(&mut s, "nothing unasked")
        .await;
    d.close_send(&mut s, "close send");
    let end = d
        .expect_end::<pb::LeaseKeepAliveResponse>(&mut s, "stream ends OK after close send")
        .await;
    d.script_check(
        end == Some((0, String::new())),
        &format!("grpc-status 0: {end:?}"),
    );

    // Keepalives on a second stream, with a server-chosen id.
    let req = grant(0, 20);
    let (e, o) = d
        .call_pair(
            "grant id 0",
            LEASE_GRANT,
            &req,
            &req,
            |o: &mut pb::LeaseGrantResponse, e: &pb::LeaseGrantResponse| {
                if o.id > 0 {
                    o.id = e.id;
                }
            },
        )
        .await;
    if let (Ok(e), Ok(o)) = (e, o) {
        let mut s2 = d.open_stream("keepalive 2", LEASE_KEEP_ALIVE).await;
        d.send_each(
            &mut s2,
            "keepalive server-chosen id",
            &pb::LeaseKeepAliveRequest { id: e.id },
            &pb::LeaseKeepAliveRequest { id: o.id },
        );
        let mut got = d
            .expect_adjusted(
                &mut s2,
                "keepalive server-chosen id",
                1,
                |o: &mut pb::LeaseKeepAliveResponse, e: &pb::LeaseKeepAliveResponse| {
                    if o.id > 0 {
                        o.id = e.id;
                    }
                },
            )
            .await;
        d.script_check(
            matches!(got.pop(), Some(x) if x.id == e.id && x.ttl == 20),
            "keepalive echoes the server-chosen id",
        );
    }
    d.finish();
}

// ---------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------

#[tokio::test]
async fn diff_lease_expiry() {
    let mut d = start!("lease_expiry");
    d.put("unrelated key", put("x", "1")).await.ok(); // 2
    d.lease_grant("grant 50 with the minimum ttl", grant(50, 2))
        .await
        .ok();
    d.put("exp/b on lease 50", put_lease("exp/b", "1", 50))
        .await
        .ok(); // 3
    d.put("exp/a on lease 50", put_lease("exp/a", "1", 50))
        .await
        .ok(); // 4
    let mut w = d.open_stream("watch exp/", WATCH).await;
    d.send(&mut w, "watch exp/", &watch_prefix("exp/"));
    let got = d.expect::<pb::WatchResponse>(&mut w, "created", 1).await;
    etcd_sent(&mut d, "created", &got, &["w0 created rev=4"]);
    // etcd checks for expired leases every 500 ms; the revoke goes through
    // raft: both keys vanish in one revision.
    let got = d
        .expect::<pb::WatchResponse>(&mut w, "expiry deletes both keys at once", 1)
        .await;
    etcd_sent(
        &mut d,
        "expiry",
        &got,
        &["w0 rev=5: DEL exp/a@5, DEL exp/b@5"],
    );
    d.range("keys gone", get_prefix("exp/")).await.ok();
    let t = d
        .lease_ttl("timetolive of the expired lease", 50, true)
        .await;
    d.script_check(matches!(ttl_of(&t), Some((-1, 0, _))), &format!("{t:?}"));
    let l = d.lease_leases("no leases left").await;
    d.script_check(
        matches!(&l, Ok(r) if r.leases.is_empty()),
        &format!("{l:?}"),
    );
    let r = d.lease_revoke("revoke the expired lease", 50).await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "revoke expired",
    );

    // A lease kept alive does not expire.
    d.lease_grant("grant 51 ttl 2", grant(51, 2)).await.ok();
    d.put("exp/c on lease 51", put_lease("exp/c", "1", 51))
        .await
        .ok(); // 6
    let got = d.expect::<pb::WatchResponse>(&mut w, "put exp/c", 1).await;
    etcd_sent(
        &mut d,
        "put exp/c",
        &got,
        &["w0 rev=6: PUT exp/c=1@6 lease=51"],
    );
    let mut s = d.open_stream("keepalive", LEASE_KEEP_ALIVE).await;
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        d.send(
            &mut s,
            "keepalive 51",
            &pb::LeaseKeepAliveRequest { id: 51 },
        );
        d.expect::<pb::LeaseKeepAliveResponse>(&mut s, &format!("keepalive 51 #{i}"), 1)
            .await;
    }
    d.expect_quiet::<pb::WatchResponse>(&mut w, "kept-alive key not deleted")
        .await;
    d.range("exp/c still there", get_prefix("exp/")).await.ok();
    d.finish();
}
