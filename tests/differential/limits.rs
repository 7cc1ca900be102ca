//! Sections `request_size` and `many_shards`: the request size limit, and
//! workloads spread over many keys (and so over all shards).

use bytes::Bytes;
use metastore::proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget};
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request;

use crate::harness::{INVALID_ARGUMENT, MAX_REQUEST_BYTES, RESOURCE_EXHAUSTED, start};
use crate::requests::{
    b, cmp_t, del, del_prefix, del_range, get, get_all, get_prefix, get_range, op, op_del, op_get,
    op_put, prefix_end, put, txn,
};

#[tokio::test]
async fn diff_request_size() {
    let mut d = start!("request_size");
    d.put("setup", put("z/a", "small")).await.ok();
    let big = |n: usize| Bytes::from(vec![b'x'; n]);
    let r = d
        .put(
            "2 MiB value (over the gRPC limit)",
            pb::PutRequest {
                key: b("z/big"),
                value: big(2 << 20),
                ..Default::default()
            },
        )
        .await;
    d.script_check(
        matches!(&r, Err((RESOURCE_EXHAUSTED, _))),
        &format!(
            "2 MiB put gives ResourceExhausted, got {:?}",
            r.as_ref().map(|_| ()).map_err(|e| e.clone())
        ),
    );
    let r = d
        .put(
            "1.6 MiB value (over max-request-bytes)",
            pb::PutRequest {
                key: b("z/big"),
                value: big(1_677_722),
                ..Default::default()
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: request is too large",
        "1.6MiB",
    );
    let r = d
        .txn(
            "txn with a 1.6 MiB put",
            txn(
                vec![],
                vec![op(Request::RequestPut(pb::PutRequest {
                    key: b("z/big"),
                    value: big(1_677_722),
                    ..Default::default()
                }))],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: request is too large",
        "txn 1.6MiB",
    );
    d.range("nothing was written", get_prefix("z/")).await.ok();
    d.put(
        "1 MiB value is accepted",
        pb::PutRequest {
            key: b("z/mib"),
            value: big(1 << 20),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range("read the 1 MiB value back", get("z/mib"))
        .await
        .ok();
    for i in 1..=5 {
        d.put(
            &format!("1 MiB value #{i}"),
            pb::PutRequest {
                key: b(format!("z/m{i}")),
                value: big(1 << 20),
                ..Default::default()
            },
        )
        .await
        .ok();
    }
    d.range("~6 MiB range response (flow control)", get_prefix("z/"))
        .await
        .ok();
    // Near the limit: etcd checks the size of the whole raft entry, a few
    // dozen bytes more than the value; these two probes are far enough from
    // the exact boundary to be deterministic.
    d.put(
        "value of max-request-bytes - 100 is accepted",
        pb::PutRequest {
            key: b("z/near"),
            value: big(MAX_REQUEST_BYTES - 100),
            ..Default::default()
        },
    )
    .await
    .ok();
    let r = d
        .put(
            "value of max-request-bytes - 5 is too large",
            pb::PutRequest {
                key: b("z/near"),
                value: big(MAX_REQUEST_BYTES - 5),
                ..Default::default()
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: request is too large",
        "near limit",
    );
    d.txn(
        "txn with a put of max-request-bytes - 100",
        txn(
            vec![],
            vec![op(Request::RequestPut(pb::PutRequest {
                key: b("z/near2"),
                value: big(MAX_REQUEST_BYTES - 100),
                ..Default::default()
            }))],
            vec![],
        ),
    )
    .await
    .ok();
    d.range(
        "near-limit keys",
        pb::RangeRequest {
            keys_only: true,
            ..get_prefix("z/near")
        },
    )
    .await
    .ok();
    // etcd's order of checks: op counts, then duplicate keys, then (for a
    // write) the size. A too large txn with a duplicate key is refused as
    // a duplicate, one without as too large.
    let big_puts = |count: usize| -> Vec<pb::RequestOp> {
        (0..count)
            .map(|index| {
                op(Request::RequestPut(pb::PutRequest {
                    key: b(format!("z/dup{index:03}")),
                    value: big(16 * 1024),
                    ..Default::default()
                }))
            })
            .collect()
    };
    let r = d
        .txn(
            "1.6 MiB txn of 100 puts",
            txn(vec![], big_puts(100), vec![]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: request is too large",
        "big txn",
    );
    let mut with_duplicate = big_puts(100);
    with_duplicate.push(op_put("z/dup042", "again"));
    let r = d
        .txn(
            "1.6 MiB txn of 100 puts with a duplicate key",
            txn(vec![], with_duplicate, vec![]),
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: duplicate key given in txn request",
        "big txn with a duplicate",
    );
    d.range(
        "range with a 1.6 MiB key (reads are not size-checked by etcd)",
        pb::RangeRequest {
            key: big(1_677_722),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range(
        "still healthy",
        pb::RangeRequest {
            keys_only: true,
            ..get_prefix("z/")
        },
    )
    .await
    .ok();
    d.finish();
}

#[tokio::test]
async fn diff_many_shards() {
    let mut d = start!("many_shards");
    for i in 0..100 {
        let k = format!("k{i:02}");
        d.put(&format!("put {k}"), put(&k, &format!("v{i}")))
            .await
            .ok();
    }
    for i in (0..100).step_by(7) {
        let k = format!("k{i:02}");
        d.put(
            &format!("overwrite {k}"),
            pb::PutRequest {
                prev_kv: true,
                ..put(&k, &format!("w{i}"))
            },
        )
        .await
        .ok();
    }
    for key in [
        &b"k\x00"[..],
        b"k\x7f",
        b"k\x80",
        b"k\xfe\xff",
        b"k\xff",
        b"k99\x80",
    ] {
        d.put(
            &format!("binary key {key:?}"),
            pb::PutRequest {
                key: Bytes::copy_from_slice(key),
                value: b("bin"),
                ..Default::default()
            },
        )
        .await
        .ok();
    }
    d.range(
        "keys >= k99 (unsigned byte order across shards)",
        pb::RangeRequest {
            keys_only: true,
            ..get_range("k99", "\0")
        },
    )
    .await
    .ok();
    d.range(
        "sort KEY DESCEND limit 4 with high bytes",
        pb::RangeRequest {
            limit: 4,
            keys_only: true,
            sort_target: SortTarget::Key as i32,
            sort_order: SortOrder::Descend as i32,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "interval [k\\x7f, k\\xff)",
        pb::RangeRequest {
            key: Bytes::from_static(b"k\x7f"),
            range_end: Bytes::from_static(b"k\xff"),
            keys_only: true,
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range("prefix k (100 keys)", get_prefix("k")).await.ok();
    d.range("all keys", get_all()).await.ok();
    d.range(
        "limit 10",
        pb::RangeRequest {
            limit: 10,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range("interval [k37, k63)", get_range("k37", "k63"))
        .await
        .ok();
    d.range("from key k90", get_range("k90", "\0")).await.ok();
    d.range(
        "count_only",
        pb::RangeRequest {
            count_only: true,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "keys_only limit 5",
        pb::RangeRequest {
            keys_only: true,
            limit: 5,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "sort MOD DESCEND limit 5",
        pb::RangeRequest {
            limit: 5,
            sort_target: SortTarget::Mod as i32,
            sort_order: SortOrder::Descend as i32,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "sort CREATE ASCEND limit 5",
        pb::RangeRequest {
            limit: 5,
            sort_target: SortTarget::Create as i32,
            sort_order: SortOrder::Ascend as i32,
            ..get_range("k50", "\0")
        },
    )
    .await
    .ok();
    d.range(
        "sort KEY DESCEND limit 3",
        pb::RangeRequest {
            limit: 3,
            sort_target: SortTarget::Key as i32,
            sort_order: SortOrder::Descend as i32,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "min_mod filter across shards",
        pb::RangeRequest {
            min_mod_revision: 95,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.range(
        "historical at 50",
        pb::RangeRequest {
            revision: 50,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.txn(
        "multi-key txn across shards",
        txn(
            vec![
                cmp_t("k05", CompareTarget::Version, CompareResult::Equal, 1, ""),
                cmp_t("k55", CompareTarget::Value, CompareResult::Equal, 0, "v55"),
                cmp_t("k98", CompareTarget::Version, CompareResult::Equal, 2, ""),
            ],
            vec![
                op_put("k05", "t"),
                op_put("k55", "t"),
                op_put("k95", "t"),
                op_del(del("k11")),
                op_get(get_range("k00", "k99")),
            ],
            vec![op_put("k00", "failed")],
        ),
    )
    .await
    .ok();
    d.txn(
        "compare over all k* (versions >= 1)",
        txn(
            vec![{
                let mut c = cmp_t("k", CompareTarget::Version, CompareResult::Greater, 0, "");
                c.range_end = prefix_end(b"k");
                c
            }],
            vec![op_get(pb::RangeRequest {
                count_only: true,
                ..get_prefix("k")
            })],
            vec![],
        ),
    )
    .await
    .ok();
    d.delete(
        "delete [k10, k20) prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del_range("k10", "k20")
        },
    )
    .await
    .ok();
    d.range(
        "after delete",
        pb::RangeRequest {
            keys_only: true,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.compact("compact at 60", 60, false).await.ok();
    d.range(
        "historical at 60 after compaction",
        pb::RangeRequest {
            revision: 60,
            ..get_prefix("k")
        },
    )
    .await
    .ok();
    d.delete("delete prefix k", del_prefix("k")).await.ok();
    d.range("empty", get_all()).await.ok();
    d.finish();
}
