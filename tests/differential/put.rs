//! Section `put`: Put with prev_kv, ignore_value/ignore_lease, unknown leases,
//! empty and binary keys, delete-and-recreate, and the errors etcd returns.

use bytes::Bytes;
use metastore::proto::etcdserverpb as pb;

use crate::harness::{INVALID_ARGUMENT, NOT_FOUND, start};
use crate::requests::{b, del, get, get_all, get_prefix, prefix_end, put};

#[tokio::test]
async fn diff_put() {
    let mut d = start!("put");
    d.put("plain put", put("a/1", "v1")).await.ok();
    d.put(
        "overwrite with prev_kv",
        pb::PutRequest {
            prev_kv: true,
            ..put("a/1", "v2")
        },
    )
    .await
    .ok();
    d.put(
        "prev_kv on a new key",
        pb::PutRequest {
            prev_kv: true,
            ..put("a/2", "x")
        },
    )
    .await
    .ok();
    d.put(
        "ignore_value keeps the old value",
        pb::PutRequest {
            ignore_value: true,
            ..put("a/1", "")
        },
    )
    .await
    .ok();
    d.range("after ignore_value", get("a/1")).await.ok();
    d.put(
        "ignore_value + prev_kv",
        pb::PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put("a/1", "")
        },
    )
    .await
    .ok();
    let r = d
        .put(
            "ignore_value with a value",
            pb::PutRequest {
                ignore_value: true,
                ..put("a/1", "zzz")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: value is provided",
        "ignore_value with value",
    );
    d.put(
        "ignore_lease",
        pb::PutRequest {
            ignore_lease: true,
            ..put("a/1", "v3")
        },
    )
    .await
    .ok();
    let r = d
        .put(
            "ignore_lease with a lease",
            pb::PutRequest {
                ignore_lease: true,
                lease: 5,
                ..put("a/1", "v4")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: lease is provided",
        "ignore_lease with lease",
    );
    let r = d
        .put(
            "ignore_value on a missing key",
            pb::PutRequest {
                ignore_value: true,
                ..put("a/missing", "")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key not found",
        "ignore_value missing",
    );
    let r = d
        .put(
            "ignore_lease on a missing key",
            pb::PutRequest {
                ignore_lease: true,
                ..put("a/missing", "v")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key not found",
        "ignore_lease missing",
    );
    let r = d
        .put(
            "put with unknown lease",
            pb::PutRequest {
                lease: 12345,
                ..put("a/3", "v")
            },
        )
        .await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "lease",
    );
    let r = d
        .put(
            "put with unknown lease on existing key",
            pb::PutRequest {
                lease: 1,
                ..put("a/1", "v")
            },
        )
        .await;
    d.expect_err(
        &r,
        NOT_FOUND,
        "etcdserver: requested lease not found",
        "lease existing",
    );
    let r = d.put("empty key", put("", "v")).await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "empty key",
    );
    let r = d
        .put(
            "empty key + ignore_value with value",
            pb::PutRequest {
                ignore_value: true,
                ..put("", "v")
            },
        )
        .await;
    d.expect_err(
        &r,
        INVALID_ARGUMENT,
        "etcdserver: key is not provided",
        "empty key first",
    );
    d.put("empty value", put("a/empty", "")).await.ok();
    d.put("same value again bumps version", put("a/1", "v3"))
        .await
        .ok();
    d.put(
        "binary key with NUL and 0xff",
        pb::PutRequest {
            key: Bytes::from_static(b"a/\x00bin\xff\xfe"),
            value: Bytes::from_static(b"\x00\x01\xff"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.put(
        "key that is a single 0xff byte",
        pb::PutRequest {
            key: Bytes::from_static(b"\xff"),
            value: b("ff"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.put("key \\0", put("\0", "nul")).await.ok();
    d.range("everything", get_all()).await.ok();
    d.range("prefix a/", get_prefix("a/")).await.ok();
    d.range(
        "binary key",
        pb::RangeRequest {
            key: Bytes::from_static(b"a/\x00bin\xff\xfe"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.put("delete-and-recreate: put", put("a/re", "1"))
        .await
        .ok();
    d.delete("delete-and-recreate: delete", del("a/re"))
        .await
        .ok();
    d.put(
        "delete-and-recreate: put again (version 1, new create_revision)",
        pb::PutRequest {
            prev_kv: true,
            ..put("a/re", "2")
        },
    )
    .await
    .ok();
    d.range("delete-and-recreate: get", get("a/re")).await.ok();
    let cur = d.current_rev("current").await;
    for rev in cur - 3..=cur {
        d.range(
            &format!("delete-and-recreate: get at revision {rev}"),
            pb::RangeRequest {
                revision: rev,
                ..get("a/re")
            },
        )
        .await
        .ok();
    }
    let all_bytes: Vec<u8> = (1..=255u8).collect();
    d.put(
        "key with every byte value 1..=255",
        pb::PutRequest {
            key: Bytes::from(all_bytes.clone()),
            value: b("all"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range(
        "prefix \\x01 (covers the every-byte key)",
        pb::RangeRequest {
            key: b("\x01"),
            range_end: prefix_end(b"\x01"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range(
        "prefix \\xff (range_end becomes \\0)",
        pb::RangeRequest {
            key: Bytes::from_static(b"\xff"),
            range_end: prefix_end(b"\xff"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.range(
        "prefix \\xff\\xff (range_end becomes \\0)",
        pb::RangeRequest {
            key: Bytes::from_static(b"\xff\xff"),
            range_end: prefix_end(b"\xff\xff"),
            ..Default::default()
        },
    )
    .await
    .ok();
    d.finish();
}
