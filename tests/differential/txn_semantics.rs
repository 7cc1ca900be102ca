//! Section `txn_semantics`: what a Txn does (branch choice, op ordering,
//! nested txns, duplicate keys, op limits) and the errors it returns.

use metastore::proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget};
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request;

use crate::harness::{INVALID_ARGUMENT, MAX_TXN_OPS, NOT_FOUND, OUT_OF_RANGE, start};
use crate::requests::{
    cmp_t, del, del_prefix, del_range, get, get_all, get_prefix, op, op_del, op_get, op_put,
    op_txn, put, txn,
};

#[tokio::test]
async fn diff_txn_semantics() {
    let mut d = start!("txn_semantics");
    d.put("setup t/a", put("t/a", "1")).await.ok();
    d.put("setup t/b", put("t/b", "2")).await.ok();

    let c_true = || cmp_t("t/a", CompareTarget::Value, CompareResult::Equal, 0, "1");
    let c_false = || cmp_t("t/a", CompareTarget::Value, CompareResult::Equal, 0, "nope");

    d.txn(
        "success branch writes two keys at one revision",
        txn(
            vec![c_true()],
            vec![op_put("t/x", "s1"), op_put("t/y", "s2")],
            vec![op_put("t/z", "f")],
        ),
    )
    .await
    .ok();
    d.txn(
        "failure branch",
        txn(
            vec![c_false()],
            vec![op_put("t/x", "s1")],
            vec![op_put("t/z", "f1"), op_get(get_prefix("t/"))],
        ),
    )
    .await
    .ok();
    d.txn(
        "range before and after put in the same txn",
        txn(
            vec![],
            vec![
                op_get(get("t/n")),
                op_put("t/n", "new"),
                op_get(get("t/n")),
                op_get(get_prefix("t/")),
                op_put("t/m", "new2"),
                op_get(pb::RangeRequest {
                    count_only: true,
                    ..get_prefix("t/")
                }),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "put then delete other key then range",
        txn(
            vec![],
            vec![
                op_put("t/p", "1"),
                op_del(del("t/z")),
                op_get(get_prefix("t/")),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "delete with prev_kv then range",
        txn(
            vec![],
            vec![
                op_del(pb::DeleteRangeRequest {
                    prev_kv: true,
                    ..del_range("t/m", "t/o")
                }),
                op_get(get_prefix("t/")),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "put with prev_kv in txn",
        txn(
            vec![],
            vec![op(Request::RequestPut(pb::PutRequest {
                prev_kv: true,
                ..put("t/a", "1")
            }))],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "ignore_value put in txn",
        txn(
            vec![],
            vec![op(Request::RequestPut(pb::PutRequest {
                ignore_value: true,
                ..put("t/b", "")
            }))],
            vec![],
        ),
    )
    .await
    .ok();
    // Nested txns: compares are all evaluated against the state before the txn.
    d.txn(
        "nested txn: inner compare sees pre-txn state",
        txn(
            vec![],
            vec![
                op_put("t/a", "changed"),
                op_txn(txn(
                    vec![c_true()],
                    vec![op_put("t/inner", "then"), op_get(get("t/a"))],
                    vec![op_put("t/inner", "else")],
                )),
                op_get(get("t/inner")),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.put("restore t/a", put("t/a", "1")).await.ok();
    d.txn(
        "nested txn two levels, failure branches",
        txn(
            vec![c_false()],
            vec![],
            vec![
                op_txn(txn(
                    vec![c_false()],
                    vec![op_put("t/n1", "x")],
                    vec![
                        op_put("t/n2", "y"),
                        op_txn(txn(
                            vec![c_true()],
                            vec![op_put("t/n3", "z"), op_get(get_prefix("t/n"))],
                            vec![],
                        )),
                    ],
                )),
                op_get(get_prefix("t/n")),
                op_txn(txn(vec![], vec![], vec![])),
            ],
        ),
    )
    .await
    .ok();
    d.txn(
        "nested read-only txn",
        txn(
            vec![],
            vec![op_txn(txn(
                vec![c_true()],
                vec![op_get(get("t/a"))],
                vec![],
            ))],
            vec![],
        ),
    )
    .await
    .ok();

    d.txn(
        "put, then delete nothing, then range (delete header = new revision)",
        txn(
            vec![],
            vec![
                op_put("t/w", "1"),
                op_del(del("t/none")),
                op_get(get("t/w")),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "delete nothing, then put (delete header = old revision)",
        txn(
            vec![],
            vec![op_del(del("t/none")), op_put("t/w", "2")],
            vec![],
        ),
    )
    .await
    .ok();
    let before = d.current_rev("rev before non-writing txns").await;
    d.txn(
        "txn whose chosen branch writes nothing (other branch would)",
        txn(
            vec![c_true()],
            vec![op_get(get("t/a"))],
            vec![op_put("t/never", "x")],
        ),
    )
    .await
    .ok();
    d.txn(
        "txn deleting nothing",
        txn(
            vec![],
            vec![op_del(del("t/none")), op_get(get("t/a"))],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "read-only txn",
        txn(
            vec![c_true()],
            vec![op_get(get_prefix("t/"))],
            vec![op_get(get("t/b"))],
        ),
    )
    .await
    .ok();
    d.txn("empty txn", txn(vec![], vec![], vec![])).await.ok();
    d.txn("compare only", txn(vec![c_false()], vec![], vec![]))
        .await
        .ok();
    let after = d.current_rev("rev after non-writing txns").await;
    d.script_check(
        before == after,
        "txns that write nothing must not create a revision",
    );

    d.txn(
        "txn delete then put another key in nested txn",
        txn(
            vec![],
            vec![
                op_del(del("t/x")),
                op_txn(txn(vec![], vec![op_put("t/y2", "v")], vec![])),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "range inside txn at historical revision",
        txn(
            vec![],
            vec![op_get(pb::RangeRequest {
                revision: 3,
                ..get_prefix("t/")
            })],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "range inside txn with limit and sort",
        txn(
            vec![],
            vec![op_get(pb::RangeRequest {
                limit: 2,
                sort_target: SortTarget::Mod as i32,
                sort_order: SortOrder::Descend as i32,
                ..get_prefix("t/")
            })],
            vec![],
        ),
    )
    .await
    .ok();

    // Errors raised by the chosen branch only.
    let r = d
        .txn(
            "range at future revision inside txn",
            txn(
                vec![],
                vec![op_get(pb::RangeRequest {
                    revision: 10_000,
                    ..get("t/a")
                })],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
        "txn future",
    );
    d.txn(
        "future-revision range in the branch not taken",
        txn(
            vec![c_true()],
            vec![op_get(get("t/a"))],
            vec![op_get(pb::RangeRequest {
                revision: 10_000,
                ..get("t/a")
            })],
        ),
    )
    .await
    .ok();
    let r = d
        .txn(
            "put with unknown lease in chosen branch",
            txn(
                vec![],
                vec![op(Request::RequestPut(pb::PutRequest {
                    lease: 77,
                    ..put("t/l", "v")
                }))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "txn lease",
    );
    d.txn(
        "put with unknown lease in the branch not taken",
        txn(
            vec![c_false()],
            vec![op(Request::RequestPut(pb::PutRequest {
                lease: 77,
                ..put("t/l", "v")
            }))],
            vec![op_put("t/l", "fine")],
        ),
    )
    .await
    .ok();
    let r = d
        .txn(
            "ignore_value put on missing key in txn",
            txn(
                vec![],
                vec![op(Request::RequestPut(pb::PutRequest {
                    ignore_value: true,
                    ..put("t/nokey", "")
                }))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key not found",
        "txn ignore_value",
    );
    let r = d
        .txn(
            "ignore_value with value in the branch not taken (checked statically)",
            txn(
                vec![c_false()],
                vec![op(Request::RequestPut(pb::PutRequest {
                    ignore_value: true,
                    ..put("t/a", "v")
                }))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: value is provided",
        "txn static check",
    );
    let r = d
        .txn(
            "empty key in put in txn",
            txn(vec![], vec![], vec![op_put("", "v")]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "txn empty key",
    );
    let r = d
        .txn(
            "empty key in range in txn",
            txn(vec![], vec![op_get(get(""))], vec![]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "txn empty range key",
    );
    let r = d
        .txn(
            "empty key in delete in nested txn",
            txn(
                vec![],
                vec![op_txn(txn(vec![], vec![op_del(del(""))], vec![]))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "txn nested empty del key",
    );
    let r = d
        .txn(
            "empty RequestOp",
            txn(vec![], vec![pb::RequestOp { request: None }], vec![]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key not found",
        "empty request op",
    );

    // Too many operations.
    let many = |n: usize, p: &str| -> Vec<pb::RequestOp> {
        (0..n).map(|i| op_put(&format!("{p}{i:03}"), "v")).collect()
    };
    let r = d
        .txn(
            "129 puts in success",
            txn(vec![], many(MAX_TXN_OPS + 1, "t/many/"), vec![]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: too many operations in txn request",
        "129 puts",
    );
    let r = d
        .txn(
            "129 ops in failure",
            txn(vec![], vec![], many(MAX_TXN_OPS + 1, "t/many/")),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: too many operations in txn request",
        "129 fail",
    );
    let r = d
        .txn(
            "129 compares",
            txn(
                (0..=MAX_TXN_OPS).map(|_| c_true()).collect(),
                vec![],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: too many operations in txn request",
        "129 cmps",
    );
    d.txn(
        "128 puts (the maximum)",
        txn(vec![], many(MAX_TXN_OPS, "t/many/"), vec![]),
    )
    .await
    .ok();
    d.txn(
        "128 compares + 128 success + 128 failure",
        txn(
            (0..MAX_TXN_OPS).map(|_| c_true()).collect(),
            many(MAX_TXN_OPS, "t/many/"),
            many(MAX_TXN_OPS, "t/many2/"),
        ),
    )
    .await
    .ok();
    let gets = |n: usize| -> Vec<pb::RequestOp> { (0..n).map(|_| op_get(get("t/a"))).collect() };
    let mut outer = gets(100);
    outer.push(op_txn(txn(vec![], gets(28), vec![])));
    d.txn(
        "nested: 101 outer ops + 28 inner (limit 128-101... ok?)",
        txn(vec![], outer, vec![]),
    )
    .await
    .ok();
    let mut outer = gets(99);
    outer.push(op_txn(txn(vec![], gets(29), vec![])));
    d.txn(
        "nested: 100 outer ops + 29 inner",
        txn(vec![], outer, vec![]),
    )
    .await
    .ok();
    let mut outer = gets(99);
    outer.push(op_txn(txn(vec![], gets(28), vec![])));
    d.txn(
        "nested: 100 outer ops + 28 inner",
        txn(vec![], outer, vec![]),
    )
    .await
    .ok();

    // Duplicate keys.
    let dup = "etcdserver: duplicate key given in txn request";
    let r = d
        .txn(
            "two puts on one key",
            txn(vec![], vec![op_put("t/d", "1"), op_put("t/d", "2")], vec![]),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "two puts");
    let r = d
        .txn(
            "two puts on one key in failure branch",
            txn(vec![], vec![], vec![op_put("t/d", "1"), op_put("t/d", "2")]),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "two puts failure");
    d.txn(
        "same key in success and failure is fine",
        txn(vec![], vec![op_put("t/d", "1")], vec![op_put("t/d", "2")]),
    )
    .await
    .ok();
    let r = d
        .txn(
            "put + delete same key",
            txn(vec![], vec![op_put("t/d", "1"), op_del(del("t/d"))], vec![]),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "put+del");
    let r = d
        .txn(
            "delete before put same key",
            txn(vec![], vec![op_del(del("t/d")), op_put("t/d", "1")], vec![]),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "del+put");
    let r = d
        .txn(
            "put inside a deleted range",
            txn(
                vec![],
                vec![op_del(del_range("t/c", "t/e")), op_put("t/d", "1")],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "put in del range");
    d.txn(
        "put at a deleted range's end (exclusive) is fine",
        txn(
            vec![],
            vec![op_del(del_range("t/c", "t/d")), op_put("t/d", "1")],
            vec![],
        ),
    )
    .await
    .ok();
    // etcd quirk: checkIntervals takes range_end "\0" literally, so the
    // interval ["t/c", "\0") is empty and this is *not* a duplicate.
    let r = d
        .txn(
            "put inside a from-key delete (etcd accepts it)",
            txn(
                vec![],
                vec![op_del(del_range("t/c", "\0")), op_put("t/zzz", "1")],
                vec![],
            ),
        )
        .await;
    d.script_check(r.is_ok(), "etcd accepts a put inside a from-key delete");
    d.txn(
        "two overlapping deletes are fine",
        txn(
            vec![],
            vec![op_del(del_range("t/c", "t/e")), op_del(del("t/d"))],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "range + put same key is fine",
        txn(vec![], vec![op_get(get("t/d")), op_put("t/d", "r")], vec![]),
    )
    .await
    .ok();
    let r = d
        .txn(
            "outer put + nested put same key",
            txn(
                vec![],
                vec![
                    op_put("t/d", "1"),
                    op_txn(txn(vec![], vec![op_put("t/d", "2")], vec![])),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "outer+nested put");
    d.txn(
        "nested then/else put same key is fine",
        txn(
            vec![],
            vec![op_txn(txn(
                vec![c_true()],
                vec![op_put("t/d", "then")],
                vec![op_put("t/d", "else")],
            ))],
            vec![],
        ),
    )
    .await
    .ok();
    let r = d
        .txn(
            "two nested txns put same key",
            txn(
                vec![],
                vec![
                    op_txn(txn(vec![], vec![op_put("t/d", "1")], vec![])),
                    op_txn(txn(vec![], vec![op_put("t/d", "2")], vec![])),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "two nested");
    let r = d
        .txn(
            "nested else put vs sibling nested then put",
            txn(
                vec![],
                vec![
                    op_txn(txn(vec![], vec![op_put("t/d", "1")], vec![])),
                    op_txn(txn(vec![], vec![], vec![op_put("t/d", "2")])),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "nested else vs then");
    let r = d
        .txn(
            "outer delete + nested put in range",
            txn(
                vec![],
                vec![
                    op_del(del_prefix("t/")),
                    op_txn(txn(vec![], vec![op_put("t/d", "1")], vec![])),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "outer del nested put");
    let r = d
        .txn(
            "nested delete + outer put in range",
            txn(
                vec![],
                vec![
                    op_txn(txn(vec![], vec![op_del(del_prefix("t/"))], vec![])),
                    op_put("t/d", "1"),
                ],
                vec![],
            ),
        )
        .await;
    d.expect_err(&r, INVALID_ARGUMENT, dup, "nested del outer put");
    d.txn(
        "nested delete + outer put outside range is fine",
        txn(
            vec![],
            vec![
                op_txn(txn(vec![], vec![op_del(del_prefix("t/d"))], vec![])),
                op_put("t/e", "1"),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.txn(
        "nested put + sibling nested delete of same key (not checked across siblings)",
        txn(
            vec![],
            vec![
                op_txn(txn(vec![], vec![op_put("t/q", "1")], vec![])),
                op_txn(txn(vec![], vec![op_del(del("t/q"))], vec![])),
            ],
            vec![],
        ),
    )
    .await
    .ok();
    d.range("final state", get_prefix("t/")).await.ok();
    d.range(
        "final state count",
        pb::RangeRequest {
            count_only: true,
            ..get_all()
        },
    )
    .await
    .ok();
    d.finish();
}
