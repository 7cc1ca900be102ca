//! A realistic workflow through the Rust `etcd-client` crate (tonic based)
//! against MetaStore, asserting etcd's semantics with explicit expected
//! values. `TEST_AGAINST_ETCD=1` runs the same test against a real etcd, to
//! validate the expectations themselves.

mod common;

use common::start_metastore_or_etcd;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

/// (gRPC code name, message) of a failed call.
fn grpc_err<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> (String, String) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            (format!("{:?}", s.code()), s.message().to_string())
        }
        other => panic!("expected a gRPC error status, got {other:?}"),
    }
}

fn kv_pairs(kvs: &[etcd_client::KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rev<T>(h: Option<&etcd_client::ResponseHeader>, what: T) -> i64
where
    T: std::fmt::Display,
{
    h.unwrap_or_else(|| panic!("{what}: response without header"))
        .revision()
}

#[tokio::test]
async fn etcd_client_workflow() {
    let Some((_server, ep)) = start_metastore_or_etcd(&[]) else {
        return;
    };
    let mut c = Client::connect([ep.as_str()], None).await.expect("connect");

    // --- Maintenance / Cluster -------------------------------------------
    let st = c.status().await.expect("status");
    assert!(!st.version().is_empty(), "status version empty");
    assert_ne!(st.leader(), 0, "status leader");
    let h = st.header().expect("status header");
    assert_eq!(h.revision(), 1, "fresh store is at revision 1");
    assert_eq!(st.leader(), h.member_id(), "single member is the leader");

    let ml = c.member_list().await.expect("member_list");
    assert_eq!(ml.members().len(), 1, "one member: {:?}", ml.members());
    let m = &ml.members()[0];
    assert_ne!(m.id(), 0);
    assert_eq!(m.name(), "default");
    assert_eq!(m.client_urls(), [ep.clone()].as_slice());
    assert!(!m.is_learner());

    // --- Put ---------------------------------------------------------------
    let r = c.put("app/a", "1", None).await.expect("put");
    assert_eq!(rev(r.header(), "put"), 2);
    assert!(r.prev_key().is_none());
    let r = c
        .put("app/a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put prev");
    assert_eq!(rev(r.header(), "put"), 3);
    let p = r.prev_key().expect("prev kv");
    assert_eq!((p.key(), p.value()), (&b"app/a"[..], &b"1"[..]));
    assert_eq!(
        (p.create_revision(), p.mod_revision(), p.version()),
        (2, 2, 1)
    );
    c.put("app/b", "3", None).await.unwrap(); // 4
    c.put("app/c", "4", None).await.unwrap(); // 5
    c.put("other/x", "5", None).await.unwrap(); // 6

    // --- Get -----------------------------------------------------------------
    let r = c.get("app/a", None).await.unwrap();
    assert_eq!(r.count(), 1);
    assert_eq!(rev(r.header(), "get"), 6);
    let kv = &r.kvs()[0];
    assert_eq!(kv.value(), b"2");
    assert_eq!(
        (
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ),
        (2, 3, 2, 0)
    );

    let r = c.get("missing", None).await.unwrap();
    assert_eq!((r.count(), r.kvs().len(), r.more()), (0, 0, false));

    let r = c
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(
        kv_pairs(r.kvs()),
        pairs(&[("app/a", "2"), ("app/b", "3"), ("app/c", "4")])
    );
    assert_eq!((r.count(), r.more()), (3, false));

    let r = c
        .get("app/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(kv_pairs(r.kvs()), pairs(&[("app/a", "2"), ("app/b", "3")]));
    assert_eq!(
        (r.count(), r.more()),
        (3, true),
        "count ignores limit, more set"
    );

    let r = c
        .get(
            "app/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        kv_pairs(r.kvs()),
        pairs(&[("app/c", "4"), ("app/b", "3"), ("app/a", "2")])
    );

    let r = c
        .get(
            "app/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!(kv_pairs(r.kvs()), pairs(&[("app/c", "4")]));
    assert!(r.more());

    let r = c
        .get("app/a", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(kv_pairs(r.kvs()), pairs(&[("app/a", "1")]));
    assert_eq!(
        rev(r.header(), "historical get"),
        6,
        "header carries the current revision"
    );

    let r = c
        .get(
            "app/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(
        kv_pairs(r.kvs()),
        pairs(&[("app/a", ""), ("app/b", ""), ("app/c", "")])
    );

    let r = c
        .get(
            "app/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((r.count(), r.kvs().len()), (3, 0));

    let r = c
        .get("app/b", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(
        kv_pairs(r.kvs()),
        pairs(&[("app/b", "3"), ("app/c", "4"), ("other/x", "5")])
    );
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(r.count(), 4);
    let r = c
        .get("app/b", Some(GetOptions::new().with_range("app/c")))
        .await
        .unwrap();
    assert_eq!(
        kv_pairs(r.kvs()),
        pairs(&[("app/b", "3")]),
        "range end is exclusive"
    );

    let r = c
        .get(
            "app/",
            Some(GetOptions::new().with_prefix().with_min_mod_revision(4)),
        )
        .await
        .unwrap();
    assert_eq!(kv_pairs(r.kvs()), pairs(&[("app/b", "3"), ("app/c", "4")]));
    assert_eq!(
        r.count(),
        3,
        "etcd's count ignores mod/create revision filters"
    );

    let r = c
        .get("app/a", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(kv_pairs(r.kvs()), pairs(&[("app/a", "2")]));

    let (code, msg) = grpc_err(
        c.get("app/a", Some(GetOptions::new().with_revision(100)))
            .await,
    );
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "OutOfRange",
            "etcdserver: mvcc: required revision is a future revision"
        )
    );

    // --- Put options and errors ---------------------------------------------
    let r = c
        .put("app/b", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    assert_eq!(rev(r.header(), "put ignore_value"), 7);
    let r = c.get("app/b", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"3", "ignore_value keeps the value");
    assert_eq!(r.kvs()[0].version(), 2);

    let (code, msg) = grpc_err(
        c.put("app/nokey", "", Some(PutOptions::new().with_ignore_value()))
            .await,
    );
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidArgument", "etcdserver: key not found")
    );
    let (code, msg) = grpc_err(
        c.put("app/a", "x", Some(PutOptions::new().with_lease(0x1234)))
            .await,
    );
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("NotFound", "etcdserver: requested lease not found")
    );
    let (code, msg) = grpc_err(c.put("", "x", None).await);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidArgument", "etcdserver: key is not provided")
    );
    let (code, msg) = grpc_err(c.get("", None).await);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidArgument", "etcdserver: key is not provided")
    );

    // --- Delete ----------------------------------------------------------------
    let r = c
        .delete("app/c", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(r.deleted(), 1);
    assert_eq!(rev(r.header(), "delete"), 8);
    assert_eq!(kv_pairs(r.prev_kvs()), pairs(&[("app/c", "4")]));
    let r = c.delete("app/c", None).await.unwrap();
    assert_eq!(r.deleted(), 0);
    assert_eq!(
        rev(r.header(), "delete nothing"),
        8,
        "deleting nothing creates no revision"
    );

    // --- Txn -------------------------------------------------------------------
    let t = Txn::new()
        .when([
            Compare::version("app/a", CompareOp::Equal, 2),
            Compare::value("app/b", CompareOp::Equal, "3"),
            Compare::mod_revision("app/b", CompareOp::Greater, 4),
            Compare::create_revision("app/b", CompareOp::Equal, 4),
            Compare::lease("app/b", CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put("app/t", "x", None),
            TxnOp::get("app/", Some(GetOptions::new().with_prefix())),
        ])
        .or_else([TxnOp::put("app/f", "failed", None)]);
    let r = c.txn(t).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(rev(r.header(), "txn"), 9);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 2);
    match &ops[0] {
        TxnOpResponse::Put(p) => assert_eq!(rev(p.header(), "txn put"), 9),
        o => panic!("expected put response, got {o:?}"),
    }
    match &ops[1] {
        TxnOpResponse::Get(g) => {
            assert_eq!(
                kv_pairs(g.kvs()),
                pairs(&[("app/a", "2"), ("app/b", "3"), ("app/t", "x")]),
                "a range in a txn sees the txn's earlier put"
            );
        }
        o => panic!("expected get response, got {o:?}"),
    }

    let t = Txn::new()
        .when([Compare::mod_revision("app/a", CompareOp::Greater, 100)])
        .and_then([TxnOp::put("app/never", "x", None)])
        .or_else([
            TxnOp::delete("app/t", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::get("app/t", None),
        ]);
    let r = c.txn(t).await.unwrap();
    assert!(!r.succeeded());
    assert_eq!(rev(r.header(), "txn failure"), 10);
    match &r.op_responses()[..] {
        [TxnOpResponse::Delete(d), TxnOpResponse::Get(g)] => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(kv_pairs(d.prev_kvs()), pairs(&[("app/t", "x")]));
            assert_eq!(g.count(), 0);
        }
        o => panic!("unexpected responses {o:?}"),
    }

    // Create-if-absent idiom: the second attempt must fail.
    for (attempt, want) in [(1, true), (2, false)] {
        let t = Txn::new()
            .when([Compare::create_revision("app/lock", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("app/lock", format!("owner{attempt}"), None)])
            .or_else([TxnOp::get("app/lock", None)]);
        let r = c.txn(t).await.unwrap();
        assert_eq!(r.succeeded(), want, "create-if-absent attempt {attempt}");
    }
    let r = c.get("app/lock", None).await.unwrap();
    assert_eq!(kv_pairs(r.kvs()), pairs(&[("app/lock", "owner1")]));
    assert_eq!(r.kvs()[0].create_revision(), 11);

    // Compare over a prefix: every key must satisfy it.
    let t = Txn::new().when([Compare::version("app/", CompareOp::Greater, 0).with_prefix()]);
    assert!(c.txn(t).await.unwrap().succeeded());
    let t = Txn::new().when([Compare::version("app/", CompareOp::Greater, 1).with_prefix()]);
    assert!(
        !c.txn(t).await.unwrap().succeeded(),
        "app/lock has version 1"
    );
    let t = Txn::new().when([Compare::value("app/missing", CompareOp::NotEqual, "x")]);
    assert!(
        !c.txn(t).await.unwrap().succeeded(),
        "value compare on a missing key fails"
    );

    // Nested txn.
    let inner = Txn::new()
        .when([Compare::value("app/a", CompareOp::Equal, "2")])
        .and_then([TxnOp::put("app/inner", "yes", None)])
        .or_else([TxnOp::put("app/inner", "no", None)]);
    let t = Txn::new().and_then([TxnOp::txn(inner), TxnOp::put("app/outer", "1", None)]);
    let r = c.txn(t).await.unwrap();
    assert!(r.succeeded());
    let nested_rev = rev(r.header(), "nested txn");
    assert_eq!(nested_rev, 12);
    match &r.op_responses()[..] {
        [TxnOpResponse::Txn(t), TxnOpResponse::Put(_)] => assert!(t.succeeded()),
        o => panic!("unexpected responses {o:?}"),
    }
    let r = c.get("app/inner", None).await.unwrap();
    assert_eq!(kv_pairs(r.kvs()), pairs(&[("app/inner", "yes")]));
    assert_eq!(r.kvs()[0].mod_revision(), 12);
    let r = c.get("app/outer", None).await.unwrap();
    assert_eq!(r.kvs()[0].mod_revision(), 12, "one txn, one revision");

    // Invalid txns.
    let (code, msg) = grpc_err(
        c.txn(Txn::new().and_then([
            TxnOp::put("app/d", "1", None),
            TxnOp::put("app/d", "2", None),
        ]))
        .await,
    );
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "InvalidArgument",
            "etcdserver: duplicate key given in txn request"
        )
    );
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("app/m{i}"), "v", None))
        .collect();
    let (code, msg) = grpc_err(c.txn(Txn::new().and_then(ops)).await);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "InvalidArgument",
            "etcdserver: too many operations in txn request"
        )
    );

    // --- Compaction ------------------------------------------------------------
    let cur = rev(c.get("app/a", None).await.unwrap().header(), "get");
    assert_eq!(cur, 12, "invalid txns must not create revisions");
    c.compact(5, None).await.expect("compact 5");
    let (code, msg) = grpc_err(
        c.get("app/a", Some(GetOptions::new().with_revision(4)))
            .await,
    );
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "OutOfRange",
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let r = c
        .get(
            "app/",
            Some(GetOptions::new().with_prefix().with_revision(5)),
        )
        .await
        .unwrap();
    assert_eq!(
        kv_pairs(r.kvs()),
        pairs(&[("app/a", "2"), ("app/b", "3"), ("app/c", "4")])
    );
    let (code, msg) = grpc_err(c.compact(5, None).await);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "OutOfRange",
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let (code, msg) = grpc_err(c.compact(1000, None).await);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "OutOfRange",
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    let r = c
        .compact(cur, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("physical compact");
    assert_eq!(rev(r.header(), "compact"), cur);
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
        .await
        .unwrap();
    let keys: Vec<String> = kv_pairs(r.kvs()).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "app/a",
            "app/b",
            "app/inner",
            "app/lock",
            "app/outer",
            "other/x"
        ],
        "final key set"
    );
    let st = c.status().await.expect("status");
    assert_eq!(st.header().unwrap().revision(), cur);

    // --- Delete everything -----------------------------------------------------
    let r = c
        .delete("", Some(DeleteOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(r.deleted(), 6);
    assert_eq!(rev(r.header(), "delete all"), cur + 1);
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(r.count(), 0);
}
