//! The quadratic txn check, against the real binary: a 1.6 MB nested txn
//! whose duplicate-key check used to compare every put with every delete
//! gathered before it (one such request held a core for 29 s). It must be
//! answered with etcd's errors, in etcd's order, its check must run off the
//! core (counted), and another client's writes on the same core go on
//! meanwhile. How long it takes is measured by `scripts/abuse/measure.sh`,
//! not asserted; the two-minute waits below only keep a hung server from
//! hanging the test.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{GrpcClient, MetastoreServer, test_seed};
use metastore::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, PutResponse, RequestOp, TxnRequest, TxnResponse,
    request_op::Request,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const INVALID_ARGUMENT: i32 = 3;
const TOO_LARGE: &str = "etcdserver: request is too large";
const DUPLICATE: &str = "etcdserver: duplicate key given in txn request";
/// Ops per nested txn allowed by the server started below.
const MAX_TXN_OPS: &str = "4096";

fn put(key: String) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: Bytes::from(key),
            ..Default::default()
        })),
    }
}

fn delete(key: String, end: String) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: Bytes::from(key),
            range_end: Bytes::from(end),
            ..Default::default()
        })),
    }
}

/// 64 nested txns, each putting its own keys in its success branch and
/// deleting ranges of them in its failure branch (allowed: the branches
/// exclude each other), so no key conflicts, but the old check compared
/// each nested txn's puts with every delete of the txns before it.
fn nested_txn(rng: &mut StdRng) -> TxnRequest {
    let mut outer = Vec::new();
    for nested in 0..64 {
        let puts = rng.random_range(1_500..1_700);
        let success = (0..puts)
            .map(|index| put(format!("{nested:02}{index:04}")))
            .collect();
        let failure = (0..300)
            .map(|index| {
                let start = index * 5;
                delete(
                    format!("{nested:02}{start:04}"),
                    format!("{nested:02}{:04}", start + 3),
                )
            })
            .collect();
        outer.push(RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: Vec::new(),
                success,
                failure,
            })),
        });
    }
    TxnRequest {
        compare: Vec::new(),
        success: outer,
        failure: Vec::new(),
    }
}

#[test]
fn a_huge_nested_txn_gets_etcds_errors_and_does_not_stall_other_writes() {
    use prost::Message;
    let seed = test_seed("a_huge_nested_txn_gets_etcds_errors_and_does_not_stall_other_writes");
    let mut rng = StdRng::seed_from_u64(seed);
    let request = nested_txn(&mut rng);
    let size = request.encoded_len();
    assert!(
        (1_572_864..2_000_000).contains(&size),
        "over --max-request-bytes, under the gRPC limit: {size}"
    );
    let mut with_duplicate = request.clone();
    let duplicated = format!(
        "{:02}{:04}",
        rng.random_range(0..64),
        rng.random_range(0..1_500)
    );
    with_duplicate.success.push(put(duplicated.clone()));

    // One core: the big txn and the other client's puts share it.
    let server = MetastoreServer::start(&["--cores", "1", "--max-txn-ops", MAX_TXN_OPS]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let addr = server.addr();
        for (request, expected) in [(request, TOO_LARGE), (with_duplicate, DUPLICATE)] {
            let mut big = GrpcClient::connect(addr).await.expect("connect");
            let mut other = GrpcClient::connect(addr).await.expect("connect");
            let checked = tokio::spawn(async move {
                big.unary::<_, TxnResponse>("/etcdserverpb.KV/Txn", &request)
                    .await
            });
            // Puts from another connection while the txn is received,
            // decoded and checked. The old check held the core for the
            // whole check, so none could finish before the txn's answer.
            let mut puts_during_check = 0;
            while !checked.is_finished() {
                let put = PutRequest {
                    key: Bytes::from_static(b"other"),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                };
                let answered = tokio::time::timeout(
                    Duration::from_secs(120),
                    other.unary::<_, PutResponse>("/etcdserverpb.KV/Put", &put),
                )
                .await
                .expect("the put is answered")
                .expect("the put succeeds");
                drop(answered);
                if !checked.is_finished() {
                    puts_during_check += 1;
                }
            }
            let answer = tokio::time::timeout(Duration::from_secs(120), checked)
                .await
                .expect("the txn is answered")
                .expect("txn task");
            assert_eq!(
                answer.map(|_| ()),
                Err((INVALID_ARGUMENT, expected.to_owned())),
                "seed {seed} (duplicate {duplicated})"
            );
            assert!(
                puts_during_check >= 1,
                "no other write finished while the txn was pending (seed {seed})"
            );
        }
    });
    // Both checks ran on a helper thread, not on the core that the puts
    // (and the shard workers) share.
    let metrics = common::http_request(&server.metrics_url(), "GET", "/metrics").1;
    assert!(
        metrics.contains("metastore_txn_checks_off_core_total 2"),
        "{}",
        metrics
            .lines()
            .filter(|line| line.contains("txn_checks"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
