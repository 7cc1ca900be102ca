//! A shard's state changes only by applying committed entries: a proposed
//! write is invisible to the memtable until its entry is durable and
//! applied, the next write is still evaluated against it, and replaying the
//! log rebuilds exactly the state the worker applied.

use std::time::Instant;

use bytes::Bytes;
use futures_channel::oneshot;

use super::apply::apply_command;
use super::recovery::read_shard_log;
use super::test_worker::{self, Answer, write_command};
use super::{DeferredReply, ShardCommand};
use crate::lease::table::LeaseTable;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op::Request,
};
use crate::store::content_hash::hash_stored;
use crate::store::error::KvError;
use crate::store::key_space::KeySpace;
use crate::store::revision::RevisionClock;
use crate::store::shard_map::ShardMap;
use crate::store::write::{LATEST, WriteRequest};
use crate::test_support::run_on_monoio as run;
use crate::wal::MemoryDevice;

fn put(key: &str, value: &str, lease: i64) -> WriteRequest {
    WriteRequest::Put(PutRequest {
        key: Bytes::from(key.to_owned()),
        value: Bytes::from(value.to_owned()),
        lease,
        ..Default::default()
    })
}

/// A txn that puts `then_key` iff `key`'s version is `version`.
fn put_if_version(key: &str, version: i64, then_key: &str) -> WriteRequest {
    WriteRequest::Txn(TxnRequest {
        compare: vec![Compare {
            key: Bytes::from(key.to_owned()),
            target: CompareTarget::Version as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Version(version)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::from(then_key.to_owned()),
                value: Bytes::from_static(b"then"),
                ..Default::default()
            })),
        }],
        ..Default::default()
    })
}

fn answered_revision(mut answer: Answer) -> i64 {
    match answer.try_recv() {
        Ok(Some(Ok(outcome))) => outcome.revision.unwrap_or(0),
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[test]
fn proposed_writes_are_evaluated_against_but_applied_only_once_committed() {
    let directory = tempfile::tempdir().expect("temp dir");
    let device = MemoryDevice::new();
    run(async {
        let mut shard = test_worker::new_worker(&device, directory.path(), None).await;
        let mut deferred: Vec<DeferredReply> = Vec::new();
        let mut answers = Vec::new();
        // One turn: two puts of one key, a txn that sees the second, and a
        // delete of a key put earlier in the same turn.
        for request in [
            put("k", "one", 0),
            put("k", "two", 0),
            put_if_version("k", 2, "seen-two"),
            put("doomed", "x", 0),
            WriteRequest::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"doomed"),
                ..Default::default()
            }),
        ] {
            let (command, answer) = write_command(request);
            shard.worker.handle(command, &mut deferred).await;
            answers.push(answer);
        }
        let memtable = shard.space.memtable(0);
        for key in [&b"k"[..], b"seen-two", b"doomed"] {
            assert!(
                memtable.get(key, LATEST).is_none(),
                "proposed, not committed: not applied"
            );
        }
        assert_eq!(deferred.len(), 5, "every write changes something");
        let syncs = device.sync_count();
        shard.worker.persist_and_reply(&mut deferred).await;
        assert_eq!(device.sync_count(), syncs + 1, "one group commit");
        assert!(deferred.is_empty());
        assert!(shard.worker.pending.is_empty() && shard.worker.proposals.is_empty());
        let k = memtable.get(b"k", LATEST).expect("applied");
        assert_eq!((k.version, &k.value[..]), (2, &b"two"[..]));
        assert!(
            memtable.get(b"seen-two", LATEST).is_some(),
            "the txn saw version 2"
        );
        assert!(
            memtable.get(b"doomed", LATEST).is_none(),
            "put then deleted"
        );
        let revisions: Vec<i64> = answers.into_iter().map(answered_revision).collect();
        assert_eq!(revisions, [2, 3, 4, 5, 6]);
        assert_eq!(shard.space.clock().watermark(), 6);
    });
}

#[test]
fn replaying_the_log_rebuilds_what_the_worker_applied() {
    let directory = tempfile::tempdir().expect("temp dir");
    let device = MemoryDevice::new();
    let (applied_hash, applied_leases, current) = run(async {
        let mut shard = test_worker::new_worker(&device, directory.path(), None).await;
        let mut deferred: Vec<DeferredReply> = Vec::new();
        for id in [7, 8] {
            let (reply, _answer) = oneshot::channel();
            let command = ShardCommand::GrantLease {
                id,
                ttl_seconds: 60,
                reply,
            };
            shard.worker.handle(command, &mut deferred).await;
        }
        shard.worker.persist_and_reply(&mut deferred).await;
        for turn in 0..4 {
            for request in [
                put(&format!("a{turn}"), "v", 7),
                put(&format!("b{turn}"), "v", 8),
                put("shared", &format!("v{turn}"), 0),
                put_if_version("shared", turn + 1, &format!("c{turn}")),
            ] {
                let (command, _answer) = write_command(request);
                shard.worker.handle(command, &mut deferred).await;
            }
            if turn == 2 {
                let (command, _answer) = write_command(WriteRequest::LeaseRevoke(7));
                shard.worker.handle(command, &mut deferred).await;
                // Proposed after the revocation: in log order the lease is
                // gone, so the put is refused, as etcd refuses it.
                let (command, mut late) = write_command(put("late", "v", 7));
                shard.worker.handle(command, &mut deferred).await;
                assert!(
                    matches!(late.try_recv(), Ok(Some(Err(KvError::LeaseNotFound)))),
                    "a put after a proposed revocation attached to the lease"
                );
                let (done, _) = oneshot::channel();
                let compact = ShardCommand::Compact {
                    revision: 5,
                    physical: false,
                    done,
                };
                shard.worker.handle(compact, &mut deferred).await;
            }
            shard.worker.persist_and_reply(&mut deferred).await;
        }
        let current = shard.space.clock().current();
        (
            hash_stored(&shard.space, current),
            shard.space.leases().ids(),
            current,
        )
    });
    assert_eq!(applied_leases, [8], "lease 7 was revoked");

    let replayed = run(async {
        let log = read_shard_log(0, device.clone(), 0).await.expect("read");
        let space = KeySpace::new(
            ShardMap::new(1, 1),
            RevisionClock::new(current, 1),
            LeaseTable::for_member(7),
        );
        let now = Instant::now();
        for command in &log.commands {
            apply_command(&space, 0, command, now);
        }
        (hash_stored(&space, current), space.leases().ids())
    });
    assert_eq!(replayed, (applied_hash, applied_leases));
}
