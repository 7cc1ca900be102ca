//! Section `compaction`: Compact and reads/txns at and around the compacted
//! revision.

use metastore::proto::etcdserverpb as pb;

use crate::harness::{OUT_OF_RANGE, start};
use crate::requests::{del, get, get_prefix, op_get, put, txn};

#[tokio::test]
async fn diff_compaction() {
    let mut d = start!("compaction");
    for i in 1..=6 {
        d.put(&format!("setup p/a v{i}"), put("p/a", &format!("v{i}")))
            .await
            .ok();
    }
    // p/a: revs 2..=7
    d.put("setup p/b", put("p/b", "b")).await.ok(); // 8
    d.delete("setup delete p/b", del("p/b")).await.ok(); // 9
    d.put("setup p/c", put("p/c", "c")).await.ok(); // 10
    let cur = d.current_rev("current").await;
    d.script_check(cur == 10, "setup ends at revision 10");

    let r = d
        .compact("compact to future revision", cur + 1, false)
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
        "compact future",
    );
    d.compact("compact to 4", 4, false).await.ok();
    for rev in [1, 2, 3] {
        let r = d
            .range(
                &format!("range p/a at compacted rev {rev}"),
                pb::RangeRequest {
                    revision: rev,
                    ..get("p/a")
                },
            )
            .await;
        d.expect_err(
            &r,
            OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted",
            "compacted read",
        );
    }
    d.range(
        "range p/a at the compaction revision 4",
        pb::RangeRequest {
            revision: 4,
            ..get("p/a")
        },
    )
    .await
    .ok();
    d.range(
        "range prefix at 5",
        pb::RangeRequest {
            revision: 5,
            ..get_prefix("p/")
        },
    )
    .await
    .ok();
    d.range("range current", get_prefix("p/")).await.ok();
    let r = d
        .range(
            "count_only at compacted rev",
            pb::RangeRequest {
                revision: 3,
                count_only: true,
                ..get_prefix("p/")
            },
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "count compacted",
    );
    let r = d.compact("compact to 4 again", 4, false).await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "compact again",
    );
    let r = d.compact("compact to 3 (below)", 3, false).await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "compact below",
    );
    let r = d.compact("compact to 0", 0, false).await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "compact 0",
    );
    let r = d.compact("compact to -1", -1, false).await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "compact -1",
    );
    let r = d
        .txn(
            "txn range at compacted revision",
            txn(
                vec![],
                vec![op_get(pb::RangeRequest {
                    revision: 2,
                    ..get("p/a")
                })],
                vec![],
            ),
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "txn compacted",
    );
    d.txn(
        "txn range at compaction revision",
        txn(
            vec![],
            vec![op_get(pb::RangeRequest {
                revision: 4,
                ..get("p/a")
            })],
            vec![],
        ),
    )
    .await
    .ok();
    d.compact("physical compact to 9 (p/b deleted at 9)", 9, true)
        .await
        .ok();
    d.range(
        "p/b at 9 after compaction",
        pb::RangeRequest {
            revision: 9,
            ..get("p/b")
        },
    )
    .await
    .ok();
    d.range(
        "prefix at 9",
        pb::RangeRequest {
            revision: 9,
            ..get_prefix("p/")
        },
    )
    .await
    .ok();
    let r = d
        .range(
            "p/b at 8 after compaction",
            pb::RangeRequest {
                revision: 8,
                ..get("p/b")
            },
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        "p/b compacted",
    );
    d.compact("compact to current revision", cur, false)
        .await
        .ok();
    d.range("current after compacting to current", get_prefix("p/"))
        .await
        .ok();
    d.put(
        "write after compaction",
        pb::PutRequest {
            prev_kv: true,
            ..put("p/a", "after")
        },
    )
    .await
    .ok();
    d.range("versions survive compaction", get_prefix("p/"))
        .await
        .ok();
    d.range(
        "at the compaction revision",
        pb::RangeRequest {
            revision: cur,
            ..get_prefix("p/")
        },
    )
    .await
    .ok();
    d.compact("compact again at new revision", cur + 1, false)
        .await
        .ok();
    d.finish();
}
