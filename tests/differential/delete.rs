//! Section `delete_range`: DeleteRange of single keys, ranges and prefixes,
//! with prev_kv and the revisions it creates.

use metastore::proto::etcdserverpb as pb;

use crate::harness::{INVALID_ARGUMENT, start};
use crate::requests::{del, del_prefix, del_range, get, get_all, get_prefix, put};

#[tokio::test]
async fn diff_delete_range() {
    let mut d = start!("delete_range");
    for k in [
        "d/a", "d/b", "d/c", "d/d", "d/e", "d/f/1", "d/f/2", "d/g", "d/h", "e",
    ] {
        d.put(&format!("setup put {k}"), put(k, &format!("val-{k}")))
            .await
            .ok();
    }
    d.put("setup overwrite d/a", put("d/a", "again")).await.ok();
    d.delete("single existing", del("d/a")).await.ok();
    let before = d.current_rev("rev before no-op delete").await;
    d.delete("single missing (no new revision)", del("d/a"))
        .await
        .ok();
    d.delete("range with nothing in it", del_range("d/x", "d/z"))
        .await
        .ok();
    let after = d.current_rev("rev after no-op delete").await;
    d.script_check(
        before == after,
        "deleting nothing must not create a revision",
    );
    d.delete("range [d/b, d/d)", del_range("d/b", "d/d"))
        .await
        .ok();
    d.delete(
        "prefix d/f/ with prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del_prefix("d/f/")
        },
    )
    .await
    .ok();
    d.delete(
        "single with prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del("d/d")
        },
    )
    .await
    .ok();
    d.delete(
        "missing with prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del("d/d")
        },
    )
    .await
    .ok();
    d.delete("range_end < key deletes nothing", del_range("d/h", "d/e"))
        .await
        .ok();
    let r = d.delete("empty key", del("")).await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "delete empty key",
    );
    d.range("what is left", get_all()).await.ok();
    d.delete(
        "from key d/g (range_end \\0) prev_kv",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del_range("d/g", "\0")
        },
    )
    .await
    .ok();
    d.range("what is left 2", get_all()).await.ok();
    d.range(
        "deleted key at old revision",
        pb::RangeRequest {
            revision: 5,
            ..get_prefix("d/")
        },
    )
    .await
    .ok();
    d.put("recreate d/b", put("d/b", "new")).await.ok();
    d.range("recreated d/b", get("d/b")).await.ok();
    d.put(
        "recreate d/b again",
        pb::PutRequest {
            prev_kv: true,
            ..put("d/b", "newer")
        },
    )
    .await
    .ok();
    d.delete(
        "all keys (\\0, \\0)",
        pb::DeleteRangeRequest {
            prev_kv: true,
            ..del_range("\0", "\0")
        },
    )
    .await
    .ok();
    d.range("empty store", get_all()).await.ok();
    d.delete("all keys again (nothing)", del_range("\0", "\0"))
        .await
        .ok();
    d.range("empty store, revision unchanged", get_all())
        .await
        .ok();
    d.finish();
}
