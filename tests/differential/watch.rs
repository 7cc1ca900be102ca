//! Sections `watch_*`: the Watch bidi stream. Each step sends the same
//! WatchRequest (or KV write) to both servers and compares the complete
//! sequence of WatchResponses that follows; the script waits for every
//! expected response before the next write, so both servers see the same
//! history. `summary` lines document what etcd sends (checked against
//! etcd itself with `script_check`).

use metastore::proto::etcdserverpb as pb;
use metastore::proto::mvccpb;
use pb::watch_create_request::FilterType;
use pb::watch_request::RequestUnion;

use crate::harness::{Diff, start};
use crate::requests::{b, del, del_prefix, get_all, op_del, op_put, prefix_end, put, txn};
use crate::streams::{StreamPair, WATCH};

type Wr = pb::WatchResponse;

// ---------------------------------------------------------------------------
// Request builders and etcd-behaviour checks
// ---------------------------------------------------------------------------

fn create(c: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(c)),
    }
}

/// A watch on one key.
fn on_key(k: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: b(k),
        ..Default::default()
    }
}

/// A watch on [k, end); end "\0" means "k and everything after".
fn on_range(k: &str, end: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}

fn on_prefix(p: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: b(p),
        range_end: prefix_end(p.as_bytes()),
        ..Default::default()
    }
}

fn cancel(id: i64) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: id,
        })),
    }
}

fn progress() -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
    }
}

fn show(bytes: &[u8]) -> String {
    if bytes.len() > 16 {
        format!("<{} bytes>", bytes.len())
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

fn show_event(e: &mvccpb::Event) -> String {
    let kv = e.kv.clone().unwrap_or_default();
    let mut s = if e.r#type == mvccpb::event::EventType::Delete as i32 {
        format!("DEL {}@{}", show(&kv.key), kv.mod_revision)
    } else {
        format!(
            "PUT {}={}@{}",
            show(&kv.key),
            show(&kv.value),
            kv.mod_revision
        )
    };
    if kv.lease != 0 {
        s.push_str(&format!(" lease={}", kv.lease));
    }
    if let Some(p) = &e.prev_kv {
        s.push_str(&format!(" (prev {}@{})", show(&p.value), p.mod_revision));
    }
    s
}

/// One line per response: `w<id> [created] [canceled] [compact=N]
/// [reason=".."] [fragment] rev=<header revision>: <events>`.
pub fn summary(r: &Wr) -> String {
    let mut s = format!("w{}", r.watch_id);
    if r.created {
        s.push_str(" created");
    }
    if r.canceled {
        s.push_str(" canceled");
    }
    if r.compact_revision != 0 {
        s.push_str(&format!(" compact={}", r.compact_revision));
    }
    if !r.cancel_reason.is_empty() {
        s.push_str(&format!(" reason={:?}", r.cancel_reason));
    }
    if r.fragment {
        s.push_str(" fragment");
    }
    let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(-1);
    s.push_str(&format!(" rev={rev}"));
    if !r.events.is_empty() {
        let evs: Vec<String> = r.events.iter().map(show_event).collect();
        s.push_str(": ");
        s.push_str(&evs.join(", "));
    }
    s
}

/// Checks that etcd's responses are the ones the script documents (in
/// watch_id order when several watchers answered the same write).
pub fn etcd_sent(d: &mut Diff, step: &str, got: &[Wr], want: &[&str]) {
    let got: Vec<String> = got.iter().map(summary).collect();
    d.script_check(
        got == want,
        &format!(
            "{step}: etcd sent\n  {}\nscript expects\n  {}",
            got.join("\n  "),
            want.join("\n  ")
        ),
    );
}

/// Sends `req` on the stream and compares the `want.len()` responses.
async fn send_expect(
    d: &mut Diff,
    s: &mut StreamPair,
    step: &str,
    req: &pb::WatchRequest,
    want: &[&str],
) {
    d.send(s, step, req);
    let got = d.expect::<Wr>(s, step, want.len()).await;
    etcd_sent(d, step, &got, want);
}

/// Compares the next responses (sorted by watch_id: several watchers).
async fn expect_any(d: &mut Diff, s: &mut StreamPair, step: &str, want: &[&str]) {
    let got = d.expect_any_order(s, step, want.len()).await;
    etcd_sent(d, step, &got, want);
}

async fn expect_in_order(d: &mut Diff, s: &mut StreamPair, step: &str, want: &[&str]) {
    let got = d.expect::<Wr>(s, step, want.len()).await;
    etcd_sent(d, step, &got, want);
}

// ---------------------------------------------------------------------------
// Live events, several watchers on one stream
// ---------------------------------------------------------------------------

#[tokio::test]
async fn diff_watch_live() {
    let mut d = start!("watch_live");
    d.put("setup k", put("k", "v0")).await.ok(); // rev 2
    let mut w = d.open_stream("live", WATCH).await;
    send_expect(
        &mut d,
        &mut w,
        "create on key k",
        &create(on_key("k")),
        &["w0 created rev=2"],
    )
    .await;
    d.put("put k v1", put("k", "v1")).await.ok(); // 3
    expect_in_order(&mut d, &mut w, "event k v1", &["w0 rev=3: PUT k=v1@3"]).await;
    d.put("put k2 (other key)", put("k2", "x")).await.ok(); // 4
    d.put("put j (other key)", put("j", "x")).await.ok(); // 5
    d.put("put k v2", put("k", "v2")).await.ok(); // 6
    expect_in_order(&mut d, &mut w, "only k's event", &["w0 rev=6: PUT k=v2@6"]).await;

    send_expect(
        &mut d,
        &mut w,
        "create on prefix p/",
        &create(on_prefix("p/")),
        &["w1 created rev=6"],
    )
    .await;
    send_expect(
        &mut d,
        &mut w,
        "create from key m (range_end \\0)",
        &create(on_range("m", "\0")),
        &["w2 created rev=6"],
    )
    .await;
    d.put("put p/a", put("p/a", "1")).await.ok(); // 7
    expect_any(
        &mut d,
        &mut w,
        "p/a: prefix and from-key watchers",
        &["w1 rev=7: PUT p/a=1@7", "w2 rev=7: PUT p/a=1@7"],
    )
    .await;
    d.put("put z", put("z", "1")).await.ok(); // 8
    expect_in_order(
        &mut d,
        &mut w,
        "z: from-key watcher only",
        &["w2 rev=8: PUT z=1@8"],
    )
    .await;
    d.put("put a (no watcher)", put("a", "1")).await.ok(); // 9
    d.put("put p (not in prefix p/)", put("p", "1")).await.ok(); // 10
    expect_in_order(
        &mut d,
        &mut w,
        "p: from-key watcher only, nothing for a",
        &["w2 rev=10: PUT p=1@10"],
    )
    .await;
    d.put("put p/b", put("p/b", "1")).await.ok(); // 11
    expect_any(
        &mut d,
        &mut w,
        "p/b",
        &["w1 rev=11: PUT p/b=1@11", "w2 rev=11: PUT p/b=1@11"],
    )
    .await;

    d.txn(
        "txn put p/c then p/b",
        txn(vec![], vec![op_put("p/c", "2"), op_put("p/b", "2")], vec![]),
    )
    .await
    .ok(); // 12
    expect_any(
        &mut d,
        &mut w,
        "one response per watcher, events in op order",
        &[
            "w1 rev=12: PUT p/c=2@12, PUT p/b=2@12",
            "w2 rev=12: PUT p/c=2@12, PUT p/b=2@12",
        ],
    )
    .await;
    d.delete("delete prefix p/ (3 keys)", del_prefix("p/"))
        .await
        .ok(); // 13
    expect_any(
        &mut d,
        &mut w,
        "deletes in key order, one response",
        &[
            "w1 rev=13: DEL p/a@13, DEL p/b@13, DEL p/c@13",
            "w2 rev=13: DEL p/a@13, DEL p/b@13, DEL p/c@13",
        ],
    )
    .await;
    d.txn(
        "txn put p/y, delete k, put p/x",
        txn(
            vec![],
            vec![op_put("p/y", "3"), op_del(del("k")), op_put("p/x", "3")],
            vec![],
        ),
    )
    .await
    .ok(); // 14
    expect_any(
        &mut d,
        &mut w,
        "txn events split per watcher, op order kept",
        &[
            "w0 rev=14: DEL k@14",
            "w1 rev=14: PUT p/y=3@14, PUT p/x=3@14",
            "w2 rev=14: PUT p/y=3@14, PUT p/x=3@14",
        ],
    )
    .await;
    d.txn(
        "txn whose ops are all reads (no revision, no event)",
        txn(vec![], vec![crate::requests::op_get(get_all())], vec![]),
    )
    .await
    .ok();
    d.delete("delete of a missing key (no event)", del("p/none"))
        .await
        .ok();

    send_expect(
        &mut d,
        &mut w,
        "cancel w1",
        &cancel(1),
        &["w1 canceled rev=14"],
    )
    .await;
    d.put("put p/z after cancel", put("p/z", "1")).await.ok(); // 15
    expect_in_order(
        &mut d,
        &mut w,
        "only from-key watcher left for p/z",
        &["w2 rev=15: PUT p/z=1@15"],
    )
    .await;
    d.send(&mut w, "cancel w1 again", &cancel(1));
    d.send(&mut w, "cancel unknown w42", &cancel(42));
    d.send(
        &mut w,
        "request with no union",
        &pb::WatchRequest {
            request_union: None,
        },
    );
    d.expect_quiet::<Wr>(&mut w, "no answer to unknown cancels or empty requests")
        .await;
    send_expect(
        &mut d,
        &mut w,
        "progress request",
        &progress(),
        &["w-1 rev=15"],
    )
    .await;

    // fragment=true with small events behaves like a normal watch.
    send_expect(
        &mut d,
        &mut w,
        "create with fragment on fr",
        &create(pb::WatchCreateRequest {
            fragment: true,
            ..on_key("fr")
        }),
        &["w3 created rev=15"],
    )
    .await;
    d.put("put fr", put("fr", "1")).await.ok(); // 16
    expect_in_order(
        &mut d,
        &mut w,
        "fragment watch, small event",
        &["w3 rev=16: PUT fr=1@16"],
    )
    .await;

    // prev_kv: none on a create event, set on updates and deletes.
    send_expect(
        &mut d,
        &mut w,
        "create with prev_kv on e",
        &create(pb::WatchCreateRequest {
            prev_kv: true,
            ..on_key("e")
        }),
        &["w4 created rev=16"],
    )
    .await;
    d.put("put e v1 (create)", put("e", "v1")).await.ok(); // 17
    expect_in_order(
        &mut d,
        &mut w,
        "create event has no prev_kv",
        &["w4 rev=17: PUT e=v1@17"],
    )
    .await;
    d.put("put e v2", put("e", "v2")).await.ok(); // 18
    expect_in_order(
        &mut d,
        &mut w,
        "update with prev_kv",
        &["w4 rev=18: PUT e=v2@18 (prev v1@17)"],
    )
    .await;
    d.delete("delete e", del("e")).await.ok(); // 19
    expect_in_order(
        &mut d,
        &mut w,
        "delete with prev_kv",
        &["w4 rev=19: DEL e@19 (prev v2@18)"],
    )
    .await;
    d.put("put e v3 (recreate)", put("e", "v3")).await.ok(); // 20
    expect_in_order(
        &mut d,
        &mut w,
        "recreate: no prev_kv",
        &["w4 rev=20: PUT e=v3@20"],
    )
    .await;

    // Filters.
    let nop = FilterType::Noput as i32;
    let nodel = FilterType::Nodelete as i32;
    send_expect(
        &mut d,
        &mut w,
        "create NOPUT on f",
        &create(pb::WatchCreateRequest {
            filters: vec![nop],
            ..on_key("f")
        }),
        &["w5 created rev=20"],
    )
    .await;
    send_expect(
        &mut d,
        &mut w,
        "create NODELETE on f",
        &create(pb::WatchCreateRequest {
            filters: vec![nodel],
            ..on_key("f")
        }),
        &["w6 created rev=20"],
    )
    .await;
    send_expect(
        &mut d,
        &mut w,
        "create NOPUT+NODELETE on f",
        &create(pb::WatchCreateRequest {
            filters: vec![nop, nodel],
            ..on_key("f")
        }),
        &["w7 created rev=20"],
    )
    .await;
    d.put("put f", put("f", "1")).await.ok(); // 21
    expect_in_order(
        &mut d,
        &mut w,
        "put seen by NODELETE only",
        &["w6 rev=21: PUT f=1@21"],
    )
    .await;
    d.delete("delete f", del("f")).await.ok(); // 22
    expect_in_order(
        &mut d,
        &mut w,
        "delete seen by NOPUT only",
        &["w5 rev=22: DEL f@22"],
    )
    .await;
    d.txn("txn put f2", txn(vec![], vec![op_put("f2", "1")], vec![]))
        .await
        .ok(); // 23
    d.expect_quiet::<Wr>(&mut w, "f2 is not f: nothing").await;

    // An empty key watches the key "\0".
    send_expect(
        &mut d,
        &mut w,
        "create with empty key",
        &create(on_key("")),
        &["w8 created rev=23"],
    )
    .await;
    d.put("put key \\0", put("\0", "zero")).await.ok(); // 24
    expect_in_order(
        &mut d,
        &mut w,
        "empty-key watcher sees key \\0",
        &["w8 rev=24: PUT \0=zero@24"],
    )
    .await;

    // A half-closed watch stream stays open and keeps delivering events.
    d.close_send(&mut w, "close send");
    d.put("put k after close send", put("k", "v3")).await.ok(); // 25
    expect_in_order(
        &mut d,
        &mut w,
        "events after close send",
        &["w0 rev=25: PUT k=v3@25"],
    )
    .await;
    d.expect_quiet::<Wr>(&mut w, "stream stays open").await;
    d.finish();
}

// ---------------------------------------------------------------------------
// Watch IDs, duplicates, invalid ranges, several streams
// ---------------------------------------------------------------------------

#[tokio::test]
async fn diff_watch_ids_and_errors() {
    let mut d = start!("watch_ids_and_errors");
    d.put("setup a", put("a", "1")).await.ok(); // 2
    let mut s1 = d.open_stream("s1", WATCH).await;
    send_expect(
        &mut d,
        &mut s1,
        "client-chosen id 100",
        &create(pb::WatchCreateRequest {
            watch_id: 100,
            ..on_key("a")
        }),
        &["w100 created rev=2"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "duplicate id 100",
        &create(pb::WatchCreateRequest { watch_id: 100, ..on_key("b") }),
        &[r#"w-1 created canceled reason="mvcc: duplicate watch ID provided on the WatchStream" rev=2"#],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "auto id",
        &create(on_key("x")),
        &["w0 created rev=2"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "client-chosen id 1",
        &create(pb::WatchCreateRequest {
            watch_id: 1,
            ..on_key("x")
        }),
        &["w1 created rev=2"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "auto id skips taken 1",
        &create(on_key("x")),
        &["w2 created rev=2"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "client-chosen id 3",
        &create(pb::WatchCreateRequest {
            watch_id: 3,
            ..on_key("x")
        }),
        &["w3 created rev=2"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "auto id skips taken 3",
        &create(on_key("x")),
        &["w4 created rev=2"],
    )
    .await;
    d.put("put a", put("a", "2")).await.ok(); // 3
    expect_in_order(
        &mut d,
        &mut s1,
        "event on id 100",
        &["w100 rev=3: PUT a=2@3"],
    )
    .await;
    d.put("put x", put("x", "1")).await.ok(); // 4
    expect_any(
        &mut d,
        &mut s1,
        "x: five watchers",
        &[
            "w0 rev=4: PUT x=1@4",
            "w1 rev=4: PUT x=1@4",
            "w2 rev=4: PUT x=1@4",
            "w3 rev=4: PUT x=1@4",
            "w4 rev=4: PUT x=1@4",
        ],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "cancel 100",
        &cancel(100),
        &["w100 canceled rev=4"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "cancel 2",
        &cancel(2),
        &["w2 canceled rev=4"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "reuse id 100 after cancel",
        &create(pb::WatchCreateRequest {
            watch_id: 100,
            ..on_key("a")
        }),
        &["w100 created rev=4"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "auto id after cancels",
        &create(on_key("y")),
        &["w5 created rev=4"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "range_end < key",
        &create(on_range("b", "a")),
        &[r#"w-1 created canceled reason="mvcc: watcher range is empty" rev=4"#],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "range_end == key",
        &create(on_range("a", "a")),
        &[r#"w-1 created canceled reason="mvcc: watcher range is empty" rev=4"#],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "empty key, range_end a: [\\0, a)",
        &create(on_range("", "a")),
        &["w6 created rev=4"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s1,
        "empty key, range_end \\0: every key",
        &create(on_range("", "\0")),
        &["w7 created rev=4"],
    )
    .await;
    d.put("put 0 (in both ranges)", put("0", "1")).await.ok(); // 5
    expect_any(
        &mut d,
        &mut s1,
        "key 0",
        &["w6 rev=5: PUT 0=1@5", "w7 rev=5: PUT 0=1@5"],
    )
    .await;
    d.put("put a", put("a", "3")).await.ok(); // 6
    expect_any(
        &mut d,
        &mut s1,
        "key a",
        &["w7 rev=6: PUT a=3@6", "w100 rev=6: PUT a=3@6"],
    )
    .await;

    // Watch IDs are per stream.
    let mut s2 = d.open_stream("s2", WATCH).await;
    send_expect(
        &mut d,
        &mut s2,
        "id 100 on a second stream",
        &create(pb::WatchCreateRequest {
            watch_id: 100,
            ..on_key("a")
        }),
        &["w100 created rev=6"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s2,
        "auto id on a second stream",
        &create(on_key("a")),
        &["w0 created rev=6"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s2,
        "progress on s2",
        &progress(),
        &["w-1 rev=6"],
    )
    .await;
    d.put("put a", put("a", "4")).await.ok(); // 7
    expect_any(
        &mut d,
        &mut s2,
        "s2 watchers",
        &["w0 rev=7: PUT a=4@7", "w100 rev=7: PUT a=4@7"],
    )
    .await;
    expect_any(
        &mut d,
        &mut s1,
        "s1 watchers",
        &["w7 rev=7: PUT a=4@7", "w100 rev=7: PUT a=4@7"],
    )
    .await;

    // Closing (resetting) s2 does not disturb s1.
    drop(s2);
    d.put("put a after s2 is gone", put("a", "5")).await.ok(); // 8
    expect_any(
        &mut d,
        &mut s1,
        "s1 unaffected",
        &["w7 rev=8: PUT a=5@8", "w100 rev=8: PUT a=5@8"],
    )
    .await;
    d.expect_quiet::<Wr>(&mut s1, "nothing else on s1").await;
    d.finish();
}

// ---------------------------------------------------------------------------
// start_revision: history replay, future revisions, compaction
// ---------------------------------------------------------------------------

#[tokio::test]
async fn diff_watch_history() {
    let mut d = start!("watch_history");
    d.put("a=1", put("a", "1")).await.ok(); // 2
    d.put("b=1", put("b", "1")).await.ok(); // 3
    d.put("a=2", put("a", "2")).await.ok(); // 4
    d.txn(
        "txn b=2, a=3",
        txn(vec![], vec![op_put("b", "2"), op_put("a", "3")], vec![]),
    )
    .await
    .ok(); // 5
    d.delete("delete a", del("a")).await.ok(); // 6
    d.put("c=1", put("c", "1")).await.ok(); // 7
    d.delete("delete [b, d)", crate::requests::del_range("b", "d"))
        .await
        .ok(); // 8
    d.put("a=4", put("a", "4")).await.ok(); // 9

    let mut h = d.open_stream("history", WATCH).await;
    send_expect(
        &mut d,
        &mut h,
        "key a from rev 2",
        &create(pb::WatchCreateRequest {
            start_revision: 2,
            ..on_key("a")
        }),
        &[
            "w0 created rev=9",
            "w0 rev=9: PUT a=1@2, PUT a=2@4, PUT a=3@5, DEL a@6, PUT a=4@9",
        ],
    )
    .await;
    send_expect(
        &mut d,
        &mut h,
        "every key from rev 3 with prev_kv",
        &create(pb::WatchCreateRequest { start_revision: 3, prev_kv: true, ..on_range("\0", "\0") }),
        &[
            "w1 created rev=9",
            "w1 rev=9: PUT b=1@3, PUT a=2@4 (prev 1@2), PUT b=2@5 (prev 1@3), PUT a=3@5 (prev 2@4), \
             DEL a@6 (prev 3@5), PUT c=1@7, DEL b@8 (prev 2@5), DEL c@8 (prev 1@7), PUT a=4@9",
        ],
    )
    .await;
    send_expect(
        &mut d,
        &mut h,
        "b from rev 5, NODELETE",
        &create(pb::WatchCreateRequest {
            start_revision: 5,
            filters: vec![FilterType::Nodelete as i32],
            ..on_key("b")
        }),
        &["w2 created rev=9", "w2 rev=9: PUT b=2@5"],
    )
    .await;
    send_expect(
        &mut d,
        &mut h,
        "[b, z) from rev 7, NOPUT",
        &create(pb::WatchCreateRequest {
            start_revision: 7,
            filters: vec![FilterType::Noput as i32],
            ..on_range("b", "z")
        }),
        &["w3 created rev=9", "w3 rev=9: DEL b@8, DEL c@8"],
    )
    .await;
    send_expect(
        &mut d,
        &mut h,
        "key d from rev 2: no history, no response",
        &create(pb::WatchCreateRequest {
            start_revision: 2,
            ..on_key("d")
        }),
        &["w4 created rev=9"],
    )
    .await;
    d.expect_quiet::<Wr>(&mut h, "nothing for d").await;
    send_expect(
        &mut d,
        &mut h,
        "c from the current revision 9 (nothing at 9)",
        &create(pb::WatchCreateRequest {
            start_revision: 9,
            ..on_key("c")
        }),
        &["w5 created rev=9"],
    )
    .await;
    send_expect(
        &mut d,
        &mut h,
        "a from the current revision 9",
        &create(pb::WatchCreateRequest {
            start_revision: 9,
            ..on_key("a")
        }),
        &["w6 created rev=9", "w6 rev=9: PUT a=4@9"],
    )
    .await;
    drop(h);

    // Future start revisions.
    let mut f = d.open_stream("future", WATCH).await;
    send_expect(
        &mut d,
        &mut f,
        "a from rev 10 (next)",
        &create(pb::WatchCreateRequest {
            start_revision: 10,
            ..on_key("a")
        }),
        &["w0 created rev=9"],
    )
    .await;
    send_expect(
        &mut d,
        &mut f,
        "a from rev 12",
        &create(pb::WatchCreateRequest {
            start_revision: 12,
            ..on_key("a")
        }),
        &["w1 created rev=9"],
    )
    .await;
    d.expect_quiet::<Wr>(&mut f, "nothing yet").await;
    d.put("a=5", put("a", "5")).await.ok(); // 10
    expect_in_order(
        &mut d,
        &mut f,
        "rev 10: only the rev-10 watcher",
        &["w0 rev=10: PUT a=5@10"],
    )
    .await;
    d.put("a=6", put("a", "6")).await.ok(); // 11
    expect_in_order(
        &mut d,
        &mut f,
        "rev 11: only the rev-10 watcher",
        &["w0 rev=11: PUT a=6@11"],
    )
    .await;
    d.put("a=7", put("a", "7")).await.ok(); // 12
    expect_any(
        &mut d,
        &mut f,
        "rev 12: both",
        &["w0 rev=12: PUT a=7@12", "w1 rev=12: PUT a=7@12"],
    )
    .await;
    drop(f);

    // Compaction. Revision 12 is the last put of a; compact at 8 (the
    // delete of b and c), physically.
    d.compact("compact at 8", 8, true).await.ok();
    let mut c = d.open_stream("compacted", WATCH).await;
    send_expect(
        &mut d,
        &mut c,
        "a from rev 7 (< compaction)",
        &create(pb::WatchCreateRequest {
            start_revision: 7,
            ..on_key("a")
        }),
        &["w0 created rev=12", "w0 canceled compact=8 rev=0"],
    )
    .await;
    send_expect(
        &mut d,
        &mut c,
        "cancel the compacted watcher",
        &cancel(0),
        &["w0 canceled rev=12"],
    )
    .await;
    send_expect(
        &mut d,
        &mut c,
        "cancel it once more: nothing",
        &cancel(0),
        &[],
    )
    .await;
    send_expect(
        &mut d,
        &mut c,
        "every key from rev 1",
        &create(pb::WatchCreateRequest {
            start_revision: 1,
            ..on_range("\0", "\0")
        }),
        &["w1 created rev=12", "w1 canceled compact=8 rev=0"],
    )
    .await;
    send_expect(
        &mut d,
        &mut c,
        // Not from rev 8 (== compaction): etcd 3.4.23 drops the DELETEs at
        // exactly the compaction revision (etcd-io/etcd#18089, fixed
        // upstream); MetaStore delivers them, which tests/watch_guarantees.rs
        // checks.
        "every key from rev 9 (just after compaction)",
        &create(pb::WatchCreateRequest { start_revision: 9, prev_kv: true, ..on_range("\0", "\0") }),
        &[
            "w2 created rev=12",
            "w2 rev=12: PUT a=4@9, PUT a=5@10 (prev 4@9), PUT a=6@11 (prev 5@10), PUT a=7@12 (prev 6@11)",
        ],
    )
    .await;
    send_expect(
        &mut d,
        &mut c,
        "a from rev 9",
        &create(pb::WatchCreateRequest {
            start_revision: 9,
            ..on_key("a")
        }),
        &[
            "w3 created rev=12",
            "w3 rev=12: PUT a=4@9, PUT a=5@10, PUT a=6@11, PUT a=7@12",
        ],
    )
    .await;
    d.put("a=8", put("a", "8")).await.ok(); // 13
    expect_any(
        &mut d,
        &mut c,
        "live after replay",
        &["w2 rev=13: PUT a=8@13 (prev 7@12)", "w3 rev=13: PUT a=8@13"],
    )
    .await;
    send_expect(
        &mut d,
        &mut c,
        "negative start_revision",
        &create(pb::WatchCreateRequest {
            start_revision: -1,
            ..on_key("a")
        }),
        &["w4 created rev=13", "w4 canceled compact=8 rev=0"],
    )
    .await;
    d.expect_quiet::<Wr>(&mut c, "nothing more").await;
    d.finish();
}

/// Negative start_revision before any compaction: etcd's compacted-main
/// revision starts at -1.
#[tokio::test]
async fn diff_watch_negative_start_revision() {
    let mut d = start!("watch_negative_start_revision");
    d.put("a=1", put("a", "1")).await.ok(); // 2
    let mut s = d.open_stream("neg", WATCH).await;
    send_expect(
        &mut d,
        &mut s,
        "start_revision -5",
        &create(pb::WatchCreateRequest {
            start_revision: -5,
            ..on_key("a")
        }),
        &["w0 created rev=2", "w0 canceled compact=-1 rev=0"],
    )
    .await;
    send_expect(
        &mut d,
        &mut s,
        "start_revision 1 (nothing compacted)",
        &create(pb::WatchCreateRequest {
            start_revision: 1,
            ..on_key("a")
        }),
        &["w1 created rev=2", "w1 rev=2: PUT a=1@2"],
    )
    .await;
    d.finish();
}

// ---------------------------------------------------------------------------
// Large replays: 1000-revision batches and fragments
// ---------------------------------------------------------------------------

#[tokio::test]
async fn diff_watch_large_history() {
    let mut d = start!("watch_large_history");
    // 1005 revisions of one key: a replay is sent in batches of at most
    // 1000 revisions.
    for i in 0..1005 {
        d.put("bulk put", put("n", &i.to_string())).await.ok(); // 2..=1006
    }
    let mut s = d.open_stream("batches", WATCH).await;
    d.send(
        &mut s,
        "n from rev 2",
        &create(pb::WatchCreateRequest {
            start_revision: 2,
            ..on_key("n")
        }),
    );
    let got = d.expect::<Wr>(&mut s, "created + two batches", 3).await;
    let shape: Vec<(bool, usize, i64)> = got
        .iter()
        .map(|r| {
            (
                r.created,
                r.events.len(),
                r.header.as_ref().map(|h| h.revision).unwrap_or(-1),
            )
        })
        .collect();
    d.script_check(
        shape == [(true, 0, 1006), (false, 1000, 1006), (false, 5, 1006)],
        &format!("1000-revision batches: etcd sent (created, events, rev) {shape:?}"),
    );
    drop(s);

    // Three ~800 KB values: a replay of all three exceeds max-request-bytes
    // + 512 KiB (2 MiB), so with fragment=true it is split.
    let big = "x".repeat(800 * 1024);
    for k in ["big/1", "big/2", "big/3"] {
        d.put("big put", put(k, &big)).await.ok(); // 1007..=1009
    }
    let mut f = d.open_stream("fragments", WATCH).await;
    send_expect(
        &mut d,
        &mut f,
        "big/ from 1007 with fragment",
        &create(pb::WatchCreateRequest {
            start_revision: 1007,
            fragment: true,
            ..on_prefix("big/")
        }),
        &[
            "w0 created rev=1009",
            "w0 fragment rev=1009: PUT big/1=<819200 bytes>@1007, PUT big/2=<819200 bytes>@1008",
            "w0 rev=1009: PUT big/3=<819200 bytes>@1009",
        ],
    )
    .await;
    send_expect(
        &mut d,
        &mut f,
        "big/ from 1007 without fragment: one message",
        &create(pb::WatchCreateRequest { start_revision: 1007, ..on_prefix("big/") }),
        &[
            "w1 created rev=1009",
            "w1 rev=1009: PUT big/1=<819200 bytes>@1007, PUT big/2=<819200 bytes>@1008, PUT big/3=<819200 bytes>@1009",
        ],
    )
    .await;
    d.delete("delete the big keys", del_prefix("big/"))
        .await
        .ok(); // 1010
    expect_any(
        &mut d,
        &mut f,
        "small live event on a fragment watcher",
        &[
            "w0 rev=1010: DEL big/1@1010, DEL big/2@1010, DEL big/3@1010",
            "w1 rev=1010: DEL big/1@1010, DEL big/2@1010, DEL big/3@1010",
        ],
    )
    .await;
    d.finish();
}
