//! Issue 18, handler cancellation: when a client resets a call's stream
//! (RST_STREAM) or drops its connection, the call's work stops and what it
//! would have left behind is undone, as etcd does when a call's context is
//! canceled: a `Lock` waiter's key and a `Campaign` candidate's key are
//! deleted at once. Writes already handed to the store are not torn: a
//! canceled multi-shard Txn is applied whole or not at all.
//!
//! Against the real binary over loopback; `TEST_AGAINST_ETCD=1` runs the
//! same expectations against etcd. Waits poll with generous upper bounds
//! (the machine is shared); what is asserted is that the key goes, not how
//! fast.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::orphaned_lock::{
    Abandon, abandon_lock_waiter, grant, keep_alive, key_exists, wait_until,
};
use common::raw_client::{Connection, Message};
use common::{TestServer, start_metastore_or_etcd, test_seed};
use metastore::proto::etcdserverpb::request_op::Request;
use metastore::proto::etcdserverpb::{
    PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use metastore::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, ResignRequest, ResignResponse,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The longest any wait for the server lasts.
const PATIENCE: Duration = Duration::from_secs(20);

fn start() -> Option<(TestServer, SocketAddr)> {
    let (server, endpoint) = start_metastore_or_etcd(&[])?;
    let addr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("a loopback address");
    Some((server, addr))
}

async fn orphaned_lock_waiter(how: Abandon) {
    let Some((_server, addr)) = start() else {
        return;
    };
    let report = abandon_lock_waiter(addr, "/abuse/lock", how, PATIENCE)
        .await
        .expect("the scenario runs");
    assert!(
        report.key_gone_after.is_some(),
        "{how:?}: the abandoned waiter's key was still there after {PATIENCE:?}"
    );
    assert!(
        report.next_acquired_after.is_some(),
        "{how:?}: after the holder unlocked, nobody else got the lock within {PATIENCE:?} \
         (the abandoned waiter took it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_whose_stream_is_reset_leaves_no_key() {
    orphaned_lock_waiter(Abandon::ResetStream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_whose_connection_drops_leaves_no_key() {
    orphaned_lock_waiter(Abandon::DropConnection).await;
}

/// etcd's Campaign resigns when its context ends: a waiting candidate
/// whose client resets the call leaves no key, and does not become leader
/// once the leader resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_stream_is_reset_leaves_no_key() {
    let Some((_server, addr)) = start() else {
        return;
    };
    let control = Connection::connect(addr, 1 << 20).await.expect("connect");
    let leader_lease = grant(&control).await.expect("grant");
    let candidate_lease = grant(&control).await.expect("grant");
    let next_lease = grant(&control).await.expect("grant");
    let renewing = tokio::spawn(keep_alive(
        control.clone(),
        vec![leader_lease, candidate_lease, next_lease],
    ));
    let campaign = |lease: i64, value: &str| CampaignRequest {
        name: Bytes::from_static(b"/abuse/election"),
        lease,
        value: Bytes::copy_from_slice(value.as_bytes()),
    };
    let leader: CampaignResponse = control
        .unary(
            "/v3electionpb.Election/Campaign",
            &campaign(leader_lease, "first"),
        )
        .await
        .expect("the first candidate leads at once");
    let leader: LeaderKey = leader.leader.expect("a leader key");

    let candidate_connection = Connection::connect(addr, 1 << 20).await.expect("connect");
    let mut candidate = candidate_connection
        .call("/v3electionpb.Election/Campaign")
        .await
        .expect("call");
    candidate
        .send(&campaign(candidate_lease, "second"), true)
        .expect("send");
    let candidate_key = Bytes::from(format!("/abuse/election/{candidate_lease:x}"));
    let appeared = wait_until(PATIENCE, || key_exists(&control, &candidate_key)).await;
    assert_eq!(appeared, Ok(Some(())), "the candidate's key never appeared");

    candidate.reset();
    let gone = wait_until(PATIENCE, || async {
        key_exists(&control, &candidate_key)
            .await
            .map(|exists| !exists)
    })
    .await;
    assert_eq!(
        gone,
        Ok(Some(())),
        "the reset candidate's key was still there after {PATIENCE:?}"
    );

    let _: ResignResponse = control
        .unary(
            "/v3electionpb.Election/Resign",
            &ResignRequest {
                leader: Some(leader),
            },
        )
        .await
        .expect("resign");
    let next = tokio::time::timeout(
        PATIENCE,
        control.unary::<_, CampaignResponse>(
            "/v3electionpb.Election/Campaign",
            &campaign(next_lease, "third"),
        ),
    )
    .await;
    assert!(
        matches!(next, Ok(Ok(_))),
        "after the leader resigned, a new candidate did not lead within {PATIENCE:?}: {next:?}"
    );
    renewing.abort();
}

/// Keys of one Txn, spread over the shards (so the write takes the
/// multi-shard path).
const KEYS_PER_TXN: usize = 8;

/// A Txn whose client resets it at a random moment after sending it is
/// applied whole or not at all (it may commit without a reply, as in etcd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_transaction_is_applied_whole_or_not_at_all() {
    let Some((_server, addr)) = start() else {
        return;
    };
    let seed = test_seed("a_canceled_transaction_is_applied_whole_or_not_at_all");
    let mut random = StdRng::seed_from_u64(seed);
    let connection = Connection::connect(addr, 1 << 20).await.expect("connect");
    const ROUNDS: usize = 60;
    for round in 0..ROUNDS {
        let success = (0..KEYS_PER_TXN)
            .map(|index| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: Bytes::from(format!("/abuse/txn/{round:03}/{index}")),
                    value: Bytes::from(vec![b'v'; random.random_range(1..4096)]),
                    ..Default::default()
                })),
            })
            .collect();
        let mut call = connection.call("/etcdserverpb.KV/Txn").await.expect("call");
        call.send(
            &TxnRequest {
                success,
                ..Default::default()
            },
            true,
        )
        .expect("send");
        // A third are reset at once, before the request can have left the
        // client; the others after a random moment.
        if random.random_range(0..3) == 0 {
            call.reset();
            continue;
        }
        let delay = random.random_range(0..3000u64);
        match tokio::time::timeout(Duration::from_micros(delay), call.next::<TxnResponse>()).await {
            // Answered before the reset: applied, of course.
            Ok(Ok(Message::Message(_))) => {}
            Ok(other) => panic!("round {round} (seed {seed}): {other:?}"),
            Err(_) => call.reset(),
        }
    }
    // A fresh read after every reset sees each Txn whole or not at all.
    // (Wait until the store is quiet: a canceled write may still commit.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut whole = 0;
    for round in 0..ROUNDS {
        let prefix = format!("/abuse/txn/{round:03}/");
        let response: RangeResponse = connection
            .unary(
                "/etcdserverpb.KV/Range",
                &RangeRequest {
                    key: Bytes::from(prefix.clone()),
                    range_end: Bytes::from(format!("/abuse/txn/{round:03}0")),
                    count_only: true,
                    ..Default::default()
                },
            )
            .await
            .expect("range");
        assert!(
            response.count == 0 || response.count == KEYS_PER_TXN as i64,
            "round {round} (seed {seed}): {} of {KEYS_PER_TXN} keys of one Txn",
            response.count
        );
        if response.count > 0 {
            whole += 1;
        }
    }
    eprintln!("{whole} of {ROUNDS} canceled or answered Txns were applied");
}
