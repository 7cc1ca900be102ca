//! Sections `range_basic`, `range_sort` and `range_filters`: Range over keys,
//! ranges and prefixes, limits, historical revisions, sorting and filters.

use metastore::proto::etcdserverpb as pb;
use pb::range_request::{SortOrder, SortTarget};

use crate::harness::{INVALID_ARGUMENT, OUT_OF_RANGE, start};
use crate::requests::{del, get, get_all, get_prefix, get_range, put};

const SORT_TARGETS: [SortTarget; 5] = [
    SortTarget::Key,
    SortTarget::Version,
    SortTarget::Create,
    SortTarget::Mod,
    SortTarget::Value,
];
const SORT_ORDERS: [SortOrder; 3] = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];

#[tokio::test]
async fn diff_range_basic() {
    let mut d = start!("range_basic");
    for (k, v) in [
        ("r/a", "1"),
        ("r/b", "2"),
        ("r/c", "3"),
        ("r/d/1", "4"),
        ("r/d/2", "5"),
        ("r/e", "6"),
        ("r0", "outside"),
        ("q", "before"),
        ("r/b", "2b"),
        ("r/c", "3b"),
        ("r/b", "2c"),
    ] {
        d.put(&format!("setup put {k}={v}"), put(k, v)).await.ok();
    }
    d.delete("setup delete r/e", del("r/e")).await.ok();
    let cur = d.current_rev("current revision").await;

    d.range("single key", get("r/b")).await.ok();
    d.range("missing key", get("r/zz")).await.ok();
    d.range("prefix r/", get_prefix("r/")).await.ok();
    d.range("prefix r/d/", get_prefix("r/d/")).await.ok();
    d.range("prefix r (includes r0)", get_prefix("r"))
        .await
        .ok();
    d.range("interval [r/b, r/d)", get_range("r/b", "r/d"))
        .await
        .ok();
    d.range(
        "interval [r/b, r/d/1] end inclusive?",
        get_range("r/b", "r/d/1"),
    )
    .await
    .ok();
    d.range("from key r/c (range_end \\0)", get_range("r/c", "\0"))
        .await
        .ok();
    d.range("all keys (\\0, \\0)", get_all()).await.ok();
    d.range("key \\0 without range_end", get("\0")).await.ok();
    d.range("range_end < key", get_range("r/d", "r/a"))
        .await
        .ok();
    d.range("range_end == key", get_range("r/b", "r/b"))
        .await
        .ok();
    let r = d.range("empty key", get("")).await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "range empty key",
    );
    let r = d
        .range("empty key with range_end", get_range("", "z"))
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "range empty key 2",
    );

    for limit in [1, 2, 3, 6, 7, 100] {
        d.range(
            &format!("prefix r/ limit {limit}"),
            pb::RangeRequest {
                limit,
                ..get_prefix("r/")
            },
        )
        .await
        .ok();
    }
    d.range(
        "limit 0 means no limit",
        pb::RangeRequest {
            limit: 0,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "negative limit",
        pb::RangeRequest {
            limit: -3,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "limit on single key",
        pb::RangeRequest {
            limit: 1,
            ..get("r/a")
        },
    )
    .await
    .ok();
    d.range(
        "count_only prefix",
        pb::RangeRequest {
            count_only: true,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "count_only missing",
        pb::RangeRequest {
            count_only: true,
            ..get("nope")
        },
    )
    .await
    .ok();
    d.range(
        "count_only with limit",
        pb::RangeRequest {
            count_only: true,
            limit: 2,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "keys_only prefix",
        pb::RangeRequest {
            keys_only: true,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "keys_only + count_only",
        pb::RangeRequest {
            keys_only: true,
            count_only: true,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "keys_only + limit",
        pb::RangeRequest {
            keys_only: true,
            limit: 2,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "serializable single",
        pb::RangeRequest {
            serializable: true,
            ..get("r/b")
        },
    )
    .await
    .ok();
    d.range(
        "serializable prefix limit",
        pb::RangeRequest {
            serializable: true,
            limit: 2,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();

    // Historical reads: every revision from 1 to the current one.
    for rev in 1..=cur {
        d.range(
            &format!("prefix r/ at revision {rev}"),
            pb::RangeRequest {
                revision: rev,
                ..get_prefix("r/")
            },
        )
        .await
        .ok();
        d.range(
            &format!("r/b at revision {rev}"),
            pb::RangeRequest {
                revision: rev,
                ..get("r/b")
            },
        )
        .await
        .ok();
    }
    d.range(
        "historical read of deleted key r/e",
        pb::RangeRequest {
            revision: cur - 1,
            ..get("r/e")
        },
    )
    .await
    .ok();
    d.range(
        "historical count_only",
        pb::RangeRequest {
            revision: 4,
            count_only: true,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "historical with limit",
        pb::RangeRequest {
            revision: 5,
            limit: 1,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    let r = d
        .range(
            "revision current+1 (future)",
            pb::RangeRequest {
                revision: cur + 1,
                ..get("r/a")
            },
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
        "future rev",
    );
    let r = d
        .range(
            "revision far future",
            pb::RangeRequest {
                revision: 1_000_000,
                ..get_prefix("r/")
            },
        )
        .await;
    d.expect_err(
        &r,
        OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
        "future rev 2",
    );
    d.range(
        "negative revision means current",
        pb::RangeRequest {
            revision: -1,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.range(
        "revision == current",
        pb::RangeRequest {
            revision: cur,
            ..get_prefix("r/")
        },
    )
    .await
    .ok();
    d.finish();
}

#[tokio::test]
async fn diff_range_sort() {
    let mut d = start!("range_sort");
    // At most 12 keys: Go's sort.Sort is an insertion sort there, so etcd's
    // order among ties is deterministic (stable w.r.t. key order).
    for (k, v) in [
        ("s/c", "3"),
        ("s/a", "2"),
        ("s/f", "2"),
        ("s/b", "9"),
        ("s/e", "1"),
        ("s/d", "3"),
        ("s/a", "5"),
        ("s/e", "1"),
        ("s/c", "0"),
        ("s/c", "3"),
        ("s0", "outside"),
        ("s", "outside"),
    ] {
        d.put(&format!("setup put {k}={v}"), put(k, v)).await.ok();
    }
    for t in SORT_TARGETS {
        for o in SORT_ORDERS {
            let base = pb::RangeRequest {
                sort_target: t as i32,
                sort_order: o as i32,
                ..get_prefix("s/")
            };
            d.range(&format!("sort {t:?} {o:?}"), base.clone())
                .await
                .ok();
            d.range(
                &format!("sort {t:?} {o:?} limit 2"),
                pb::RangeRequest {
                    limit: 2,
                    ..base.clone()
                },
            )
            .await
            .ok();
            d.range(
                &format!("sort {t:?} {o:?} keys_only"),
                pb::RangeRequest {
                    keys_only: true,
                    ..base.clone()
                },
            )
            .await
            .ok();
            d.range(
                &format!("sort {t:?} {o:?} count_only"),
                pb::RangeRequest {
                    count_only: true,
                    ..base.clone()
                },
            )
            .await
            .ok();
            d.range(
                &format!("sort {t:?} {o:?} at revision 7"),
                pb::RangeRequest {
                    revision: 7,
                    ..base.clone()
                },
            )
            .await
            .ok();
        }
    }
    d.range(
        "sort MOD DESCEND over all keys",
        pb::RangeRequest {
            sort_target: SortTarget::Mod as i32,
            sort_order: SortOrder::Descend as i32,
            ..get_all()
        },
    )
    .await
    .ok();
    d.range(
        "sort VALUE DESCEND single key",
        pb::RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            ..get("s/a")
        },
    )
    .await
    .ok();
    d.finish();
}

#[tokio::test]
async fn diff_range_filters() {
    let mut d = start!("range_filters");
    for (k, v) in [
        ("f/a", "1"),
        ("f/b", "2"),
        ("f/c", "3"),
        ("f/d", "4"),
        ("f/a", "5"),
        ("f/c", "6"),
        ("f/e", "7"),
        ("f/b", "8"),
    ] {
        d.put(&format!("setup put {k}={v}"), put(k, v)).await.ok();
    }
    let cases: Vec<(&str, pb::RangeRequest)> = vec![
        (
            "min_mod 5",
            pb::RangeRequest {
                min_mod_revision: 5,
                ..get_prefix("f/")
            },
        ),
        (
            "max_mod 5",
            pb::RangeRequest {
                max_mod_revision: 5,
                ..get_prefix("f/")
            },
        ),
        (
            "min_create 4",
            pb::RangeRequest {
                min_create_revision: 4,
                ..get_prefix("f/")
            },
        ),
        (
            "max_create 3",
            pb::RangeRequest {
                max_create_revision: 3,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 4 max_mod 7",
            pb::RangeRequest {
                min_mod_revision: 4,
                max_mod_revision: 7,
                ..get_prefix("f/")
            },
        ),
        (
            "min_create 3 max_create 5",
            pb::RangeRequest {
                min_create_revision: 3,
                max_create_revision: 5,
                ..get_prefix("f/")
            },
        ),
        (
            "all four filters",
            pb::RangeRequest {
                min_mod_revision: 3,
                max_mod_revision: 8,
                min_create_revision: 2,
                max_create_revision: 4,
                ..get_prefix("f/")
            },
        ),
        (
            "filters matching nothing",
            pb::RangeRequest {
                min_mod_revision: 100,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 6 limit 1 (more after filtering?)",
            pb::RangeRequest {
                min_mod_revision: 6,
                limit: 1,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 8 limit 1 (exactly one passes)",
            pb::RangeRequest {
                min_mod_revision: 8,
                limit: 1,
                ..get_prefix("f/")
            },
        ),
        (
            "max_create 2 limit 1",
            pb::RangeRequest {
                max_create_revision: 2,
                limit: 1,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 5 count_only",
            pb::RangeRequest {
                min_mod_revision: 5,
                count_only: true,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 5 keys_only",
            pb::RangeRequest {
                min_mod_revision: 5,
                keys_only: true,
                ..get_prefix("f/")
            },
        ),
        (
            "min_mod 5 sort CREATE DESCEND",
            pb::RangeRequest {
                min_mod_revision: 5,
                sort_target: SortTarget::Create as i32,
                sort_order: SortOrder::Descend as i32,
                ..get_prefix("f/")
            },
        ),
        (
            "max_mod 4 at revision 5",
            pb::RangeRequest {
                max_mod_revision: 4,
                revision: 5,
                ..get_prefix("f/")
            },
        ),
        (
            "min_create 2 on single key",
            pb::RangeRequest {
                min_create_revision: 3,
                ..get("f/a")
            },
        ),
        (
            "negative filters",
            pb::RangeRequest {
                min_mod_revision: -1,
                max_create_revision: -1,
                ..get_prefix("f/")
            },
        ),
    ];
    for (name, req) in cases {
        d.range(name, req).await.ok();
    }
    d.finish();
}
