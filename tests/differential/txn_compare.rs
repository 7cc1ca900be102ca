//! Section `txn_compare`: every Txn compare target against every result,
//! on present and missing keys and ranges, plus odd unions and an empty key.

use metastore::proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};

use crate::harness::{INVALID_ARGUMENT, start};
use crate::requests::{b, cmp, cmp_t, get, op_get, op_put, prefix_end, put, txn};

const TARGETS: [CompareTarget; 5] = [
    CompareTarget::Version,
    CompareTarget::Create,
    CompareTarget::Mod,
    CompareTarget::Value,
    CompareTarget::Lease,
];
const RESULTS: [CompareResult; 4] = [
    CompareResult::Equal,
    CompareResult::NotEqual,
    CompareResult::Greater,
    CompareResult::Less,
];

#[tokio::test]
async fn diff_txn_compare() {
    let mut d = start!("txn_compare");
    d.put("setup c/k v1", put("c/k", "m")).await.ok();
    d.put("setup c/other", put("c/other", "zz")).await.ok();
    d.put("setup c/k v2", put("c/k", "m")).await.ok();
    d.put("setup c/p/1", put("c/p/1", "b")).await.ok();
    d.put("setup c/p/2", put("c/p/2", "c")).await.ok();
    // c/k: version 2, create 2, mod 4, value "m", lease 0.
    let probe = |target: CompareTarget| -> [(i64, &'static str); 3] {
        match target {
            CompareTarget::Version => [(1, ""), (2, ""), (3, "")],
            CompareTarget::Create => [(1, ""), (2, ""), (3, "")],
            CompareTarget::Mod => [(3, ""), (4, ""), (5, "")],
            CompareTarget::Value => [(0, "l"), (0, "m"), (0, "n")],
            CompareTarget::Lease => [(-1, ""), (0, ""), (1, "")],
        }
    };
    for t in TARGETS {
        for r in RESULTS {
            for (v, s) in probe(t) {
                let c = cmp_t("c/k", t, r, v, s);
                d.txn(
                    &format!("compare c/k {t:?} {r:?} {v}{s:?}"),
                    txn(
                        vec![c],
                        vec![op_get(get("c/k"))],
                        vec![op_get(get("c/other"))],
                    ),
                )
                .await
                .ok();
            }
            // Against a missing key.
            for (v, s) in [(0, ""), (1, "a")] {
                let c = cmp_t("c/missing", t, r, v, s);
                d.txn(
                    &format!("compare missing key {t:?} {r:?} {v}/{s:?}"),
                    txn(vec![c], vec![op_get(get("c/k"))], vec![]),
                )
                .await
                .ok();
            }
            // Over a range (all keys must satisfy).
            for (v, s) in [(1, "b"), (2, "c"), (3, "d")] {
                let mut c = cmp_t("c/p/", t, r, v, s);
                c.range_end = prefix_end(b"c/p/");
                d.txn(
                    &format!("compare prefix c/p/ {t:?} {r:?} {v}/{s:?}"),
                    txn(vec![c], vec![], vec![]),
                )
                .await
                .ok();
            }
            // Over an empty range.
            let mut c = cmp_t("c/q/", t, r, 0, "");
            c.range_end = prefix_end(b"c/q/");
            d.txn(
                &format!("compare empty range {t:?} {r:?}"),
                txn(vec![c], vec![], vec![]),
            )
            .await
            .ok();
        }
    }
    // Compare on all keys (from \0 to \0).
    let mut c = cmp_t("\0", CompareTarget::Version, CompareResult::Greater, 0, "");
    c.range_end = b("\0");
    d.txn("compare all keys version > 0", txn(vec![c], vec![], vec![]))
        .await
        .ok();
    // From-key compare.
    let mut c = cmp_t("c/o", CompareTarget::Create, CompareResult::Greater, 2, "");
    c.range_end = b("\0");
    d.txn(
        "compare from-key c/o create > 2",
        txn(vec![c], vec![], vec![]),
    )
    .await
    .ok();
    // Value compare on a missing key always fails, even NOT_EQUAL.
    let c = cmp_t(
        "c/missing",
        CompareTarget::Value,
        CompareResult::NotEqual,
        0,
        "x",
    );
    let r = d
        .txn(
            "value NOT_EQUAL on missing key",
            txn(vec![c], vec![], vec![]),
        )
        .await;
    d.script_check(
        matches!(&r, Ok(t) if !t.succeeded),
        "value compare on missing key fails",
    );
    // Compare with the union variant not matching the target.
    let c = cmp(
        "c/k",
        CompareTarget::Version,
        CompareResult::Equal,
        TargetUnion::Value(b("m")),
    );
    d.txn(
        "target VERSION with value union",
        txn(vec![c], vec![], vec![]),
    )
    .await
    .ok();
    let c = cmp(
        "c/k",
        CompareTarget::Mod,
        CompareResult::Greater,
        TargetUnion::Version(3),
    );
    d.txn(
        "target MOD with version union",
        txn(vec![c], vec![], vec![]),
    )
    .await
    .ok();
    // Compare without any union: compares against 0 / "".
    let mut c = cmp(
        "c/k",
        CompareTarget::Version,
        CompareResult::Greater,
        TargetUnion::Version(0),
    );
    c.target_union = None;
    d.txn("target VERSION without union", txn(vec![c], vec![], vec![]))
        .await
        .ok();
    let mut c = cmp(
        "c/k",
        CompareTarget::Value,
        CompareResult::Greater,
        TargetUnion::Value(b("")),
    );
    c.target_union = None;
    d.txn("target VALUE without union", txn(vec![c], vec![], vec![]))
        .await
        .ok();
    // Several compares: all must hold.
    let cs = vec![
        cmp_t("c/k", CompareTarget::Version, CompareResult::Equal, 2, ""),
        cmp_t(
            "c/other",
            CompareTarget::Value,
            CompareResult::Equal,
            0,
            "zz",
        ),
    ];
    d.txn(
        "two compares, both true",
        txn(
            cs,
            vec![op_put("c/res", "both")],
            vec![op_put("c/res", "notboth")],
        ),
    )
    .await
    .ok();
    let cs = vec![
        cmp_t("c/k", CompareTarget::Version, CompareResult::Equal, 2, ""),
        cmp_t(
            "c/other",
            CompareTarget::Value,
            CompareResult::Equal,
            0,
            "zy",
        ),
    ];
    d.txn(
        "two compares, second false",
        txn(
            cs,
            vec![op_put("c/res", "both")],
            vec![op_put("c/res", "notboth")],
        ),
    )
    .await
    .ok();
    d.range("c/res", get("c/res")).await.ok();
    // Empty key in a compare.
    let c = cmp_t("", CompareTarget::Version, CompareResult::Equal, 0, "");
    let r = d
        .txn("empty key in compare", txn(vec![c], vec![], vec![]))
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "empty compare key",
    );
    d.finish();
}
