//! `check_intervals` against the pairwise check it replaced (kept here,
//! unchanged, as the oracle), on hand-picked and on random txns.

use std::collections::HashSet;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::check_intervals;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op::Request,
};
use crate::store::error::KvError;

/// The pairwise implementation (MetaStore before issue 18), a direct
/// transcription of etcd 3.4's recursive `checkIntervals`.
mod pairwise {
    use super::*;

    #[derive(Debug, Clone)]
    pub enum DeletedInterval {
        Point(Bytes),
        Span { start: Bytes, end: Bytes },
    }

    impl DeletedInterval {
        fn contains(&self, key: &[u8]) -> bool {
            match self {
                DeletedInterval::Point(point) => point == key,
                DeletedInterval::Span { start, end } => {
                    affine_less_equal(start, key) && affine_less(key, end)
                }
            }
        }
    }

    fn affine_less(left: &[u8], right: &[u8]) -> bool {
        match (left.is_empty(), right.is_empty()) {
            (true, _) => false,
            (false, true) => true,
            (false, false) => left < right,
        }
    }

    fn affine_less_equal(left: &[u8], right: &[u8]) -> bool {
        !affine_less(right, left)
    }

    type Checked = Result<(HashSet<Bytes>, Vec<DeletedInterval>), KvError>;

    pub fn check_intervals(ops: &[RequestOp]) -> Checked {
        let mut deleted: Vec<DeletedInterval> = ops
            .iter()
            .filter_map(|op| match &op.request {
                Some(Request::RequestDeleteRange(delete)) if delete.range_end.is_empty() => {
                    Some(DeletedInterval::Point(delete.key.clone()))
                }
                Some(Request::RequestDeleteRange(delete)) => Some(DeletedInterval::Span {
                    start: delete.key.clone(),
                    end: delete.range_end.clone(),
                }),
                _ => None,
            })
            .collect();
        let is_deleted = |deleted: &[DeletedInterval], key: &[u8]| {
            deleted.iter().any(|interval| interval.contains(key))
        };
        let mut puts: HashSet<Bytes> = HashSet::new();
        for op in ops {
            let Some(Request::RequestTxn(nested)) = &op.request else {
                continue;
            };
            let (puts_then, deleted_then) = check_intervals(&nested.success)?;
            let (puts_else, deleted_else) = check_intervals(&nested.failure)?;
            for key in &puts_then {
                if puts.contains(key) || is_deleted(&deleted, key) {
                    return Err(KvError::DuplicateKey);
                }
                puts.insert(key.clone());
            }
            for key in &puts_else {
                if puts.contains(key) && !puts_then.contains(key) {
                    return Err(KvError::DuplicateKey);
                }
                if is_deleted(&deleted, key) {
                    return Err(KvError::DuplicateKey);
                }
                puts.insert(key.clone());
            }
            deleted.extend(deleted_then);
            deleted.extend(deleted_else);
        }
        for op in ops {
            let Some(Request::RequestPut(put)) = &op.request else {
                continue;
            };
            if puts.contains(&put.key) || is_deleted(&deleted, &put.key) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(put.key.clone());
        }
        Ok((puts, deleted))
    }
}

fn put(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })),
    }
}

fn delete(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
            ..Default::default()
        })),
    }
}

fn range(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })),
    }
}

fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(TxnRequest {
            compare: Vec::new(),
            success,
            failure,
        })),
    }
}

fn both(ops: &[RequestOp]) -> (Result<(), KvError>, Result<(), KvError>) {
    (
        check_intervals(ops),
        pairwise::check_intervals(ops).map(|_| ()),
    )
}

#[track_caller]
fn expect(ops: Vec<RequestOp>, expected: Result<(), KvError>) {
    let (fast, oracle) = both(&ops);
    assert_eq!(
        oracle, expected,
        "the oracle disagrees with the test: {ops:?}"
    );
    assert_eq!(fast, expected, "{ops:?}");
}

#[test]
fn etcds_rules_case_by_case() {
    let dup = Err(KvError::DuplicateKey);
    expect(vec![put("a"), put("a")], dup.clone());
    expect(vec![put("a"), put("b"), range("a")], Ok(()));
    expect(vec![delete("a", "c"), put("b")], dup.clone());
    expect(vec![put("b"), delete("a", "c")], dup.clone());
    expect(vec![delete("a", "b"), put("b")], Ok(()));
    // An empty range_end is the key alone (etcd builds a point).
    expect(vec![delete("a", ""), put("zzz")], Ok(()));
    expect(vec![delete("a", "\0"), put("b")], Ok(()));
    expect(vec![delete("c", "a"), put("b")], Ok(()));
    expect(vec![delete("b", ""), put("b")], dup.clone());
    // Then and else exclude each other, at any depth.
    expect(vec![nested(vec![put("a")], vec![put("a")])], Ok(()));
    expect(vec![nested(vec![put("a")], vec![delete("a", "")])], Ok(()));
    expect(
        vec![nested(
            vec![nested(vec![put("a")], vec![put("a")])],
            vec![put("a")],
        )],
        Ok(()),
    );
    // Parent and child, either order.
    expect(vec![nested(vec![put("a")], vec![]), put("a")], dup.clone());
    expect(vec![put("a"), nested(vec![], vec![put("a")])], dup.clone());
    expect(
        vec![nested(vec![delete("a", "b")], vec![]), put("a")],
        dup.clone(),
    );
    expect(
        vec![put("a"), nested(vec![delete("a", "b")], vec![])],
        dup.clone(),
    );
    expect(
        vec![nested(vec![put("a")], vec![]), delete("a", "b")],
        dup.clone(),
    );
    expect(
        vec![delete("a", "b"), nested(vec![], vec![put("a")])],
        dup.clone(),
    );
    // Sibling nested txns: an earlier delete covers a later put, but not
    // the other way round (etcd had not gathered the later delete yet).
    expect(
        vec![
            nested(vec![delete("a", "c")], vec![]),
            nested(vec![put("b")], vec![]),
        ],
        dup.clone(),
    );
    expect(
        vec![
            nested(vec![put("b")], vec![]),
            nested(vec![delete("a", "c")], vec![]),
        ],
        Ok(()),
    );
    expect(
        vec![
            nested(vec![put("b")], vec![]),
            nested(vec![], vec![put("b")]),
        ],
        dup,
    );
}

/// Random txn branches over a handful of keys, so puts and deletes meet
/// often; every answer must be the oracle's.
#[test]
fn matches_the_pairwise_check_on_random_txns() {
    let seed = std::env::var("TXN_INTERVALS_TEST_SEED")
        .ok()
        .map(|text| text.parse().expect("TXN_INTERVALS_TEST_SEED must be a u64"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64)
        });
    println!("matches_the_pairwise_check_on_random_txns: TXN_INTERVALS_TEST_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut accepted, mut refused) = (0u32, 0u32);
    for case in 0..30_000 {
        let keys = rng.random_range(1..8usize);
        let depth = rng.random_range(0..5u32);
        let ops = random_list(&mut rng, keys, depth);
        let (fast, oracle) = both(&ops);
        assert_eq!(
            fast, oracle,
            "case {case} (TXN_INTERVALS_TEST_SEED={seed}): {ops:?}"
        );
        match oracle {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    // Both outcomes must be common, or the comparison proves little.
    assert!(
        accepted > 3_000 && refused > 3_000,
        "accepted {accepted}, refused {refused}"
    );
}

const KEYS: [&str; 8] = ["a", "b", "ba", "c", "\0", "\0\0", "d", "\u{7f}"];

fn random_key(rng: &mut StdRng, keys: usize) -> &'static str {
    KEYS[rng.random_range(0..keys)]
}

fn random_list(rng: &mut StdRng, keys: usize, depth: u32) -> Vec<RequestOp> {
    let length = rng.random_range(0..6usize);
    (0..length)
        .map(|_| match rng.random_range(0..100u32) {
            0..35 => put(random_key(rng, keys)),
            35..50 => delete(random_key(rng, keys), ""),
            50..70 => {
                let end = match rng.random_range(0..10u32) {
                    0 => "",
                    1 => "\0",
                    _ => random_key(rng, keys),
                };
                let start = random_key(rng, keys);
                // Mostly non-empty spans; empty and inverted ones too.
                if end.is_empty() || rng.random_bool(0.2) || start <= end {
                    delete(start, end)
                } else {
                    delete(end, start)
                }
            }
            70..78 => range(random_key(rng, keys)),
            _ if depth > 0 => nested(
                random_list(rng, keys, depth - 1),
                random_list(rng, keys, depth - 1),
            ),
            _ => put(random_key(rng, keys)),
        })
        .collect()
}

/// The shape that froze a core for 29 s: many puts and deletes spread over
/// nested txns. Only the count of work matters here; the time is measured
/// by `scripts/abuse/txn_check.sh`, not asserted.
#[test]
fn a_large_nested_txn_is_checked() {
    let mut ops = Vec::new();
    for outer in 0..64 {
        let mut then_ops = Vec::new();
        for inner in 0..2_000 {
            then_ops.push(put(&format!("k/{outer:03}/{inner:05}")));
        }
        let mut else_ops = Vec::new();
        for inner in 0..1_000 {
            else_ops.push(delete(
                &format!("k/{outer:03}/{inner:05}"),
                &format!("k/{outer:03}/{inner:05}x"),
            ));
        }
        ops.push(nested(then_ops, else_ops));
    }
    assert_eq!(check_intervals(&ops), Ok(()));
    ops.push(nested(vec![delete("k/063/01999", "")], vec![]));
    assert_eq!(
        check_intervals(&ops),
        Ok(()),
        "a delete in a later nested txn is allowed"
    );
    ops.push(put("k/000/00000"));
    assert_eq!(check_intervals(&ops), Err(KvError::DuplicateKey));
}
