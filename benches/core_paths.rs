//! Micro-benchmarks of the hot paths: memtable insert/lookup/scan, gRPC
//! frame decoding and the cross-core hop (WAL group commit is in
//! `benches/wal.rs`). Run with `cargo bench --bench core_paths`; compare
//! before/after on the same machine, never against fixed numbers.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use metastore::grpc::codec::{MessageDecoder, encode_message};
use metastore::proto::etcdserverpb::PutRequest;
use metastore::store::key_range::KeyRange;
use metastore::store::memtable::{Memtable, Version};

fn key(index: u64) -> Bytes {
    Bytes::from(format!("key/{index:08}"))
}

fn memtable_with(keys: u64) -> Memtable {
    let memtable = Memtable::new();
    for index in 0..keys {
        let revision = index as i64 + 2;
        memtable.insert(
            key(index),
            revision,
            Version {
                value: Bytes::from_static(&[7; 256]),
                create_revision: revision,
                version: 1,
                lease: 0,
                sub_revision: 0,
            },
        );
    }
    memtable
}

fn memtable_benches(criterion: &mut Criterion) {
    let memtable = memtable_with(100_000);
    let mut next = 0u64;
    criterion.bench_function("memtable get (100k keys)", |bench| {
        bench.iter(|| {
            next = (next + 7919) % 100_000;
            black_box(memtable.get(&key(next), i64::MAX))
        })
    });
    let mut revision = 1_000_000i64;
    criterion.bench_function("memtable insert new version", |bench| {
        bench.iter(|| {
            revision += 1;
            next = (next + 7919) % 100_000;
            memtable.insert(
                key(next),
                revision,
                Version {
                    value: Bytes::from_static(&[1; 256]),
                    create_revision: 2,
                    version: 2,
                    lease: 0,
                    sub_revision: 0,
                },
            );
        })
    });
    let range = KeyRange::from_request(b"key/00050000", b"key/00050100");
    criterion.bench_function("memtable scan 100 keys", |bench| {
        bench.iter(|| {
            let mut count = 0;
            memtable.scan(&range, i64::MAX, |_| {
                count += 1;
                true
            });
            black_box(count)
        })
    });
}

fn codec_benches(criterion: &mut Criterion) {
    let request = PutRequest {
        key: Bytes::from_static(b"12345678"),
        value: Bytes::from_static(&[0; 256]),
        ..Default::default()
    };
    let mut framed = BytesMut::new();
    for _ in 0..64 {
        encode_message(&request, &mut framed).expect("encode");
    }
    let framed = framed.freeze();
    criterion.bench_function("decode 64 put frames from one chunk", |bench| {
        bench.iter(|| {
            let mut decoder = MessageDecoder::new(2 << 20);
            decoder.push(framed.clone());
            let mut messages = 0;
            while let Ok(Some(message)) = decoder.decode() {
                messages += black_box(message).len();
            }
            messages
        })
    });
}

/// A request's hop to the core that owns its shard and back, as the server
/// makes it: a bounded `flume` channel into a task on the owner's monoio
/// runtime (pinned to another core when there is one), and the reply on a
/// channel back. Measures the round trip, so one hop is about half.
fn cross_core_hop_benches(criterion: &mut Criterion) {
    let (request_sender, request_receiver) = flume::bounded::<(u64, flume::Sender<u64>)>(1024);
    let owner = std::thread::spawn(move || {
        if let Some(core) = core_affinity::get_core_ids().and_then(|cores| cores.last().copied()) {
            core_affinity::set_for_current(core);
        }
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("monoio runtime");
        runtime.block_on(async move {
            while let Ok((value, reply)) = request_receiver.recv_async().await {
                let _ = reply.send(value + 1);
            }
        });
    });
    let (reply_sender, reply_receiver) = flume::bounded::<u64>(1);
    criterion.bench_function(
        "cross-core hop round trip (flume to a monoio task and back)",
        |bench| {
            let mut value = 0;
            bench.iter(|| {
                request_sender
                    .send((value, reply_sender.clone()))
                    .expect("owner alive");
                value = reply_receiver.recv().expect("owner replies");
                value
            })
        },
    );
    drop(request_sender);
    owner.join().expect("owner thread");
}

criterion_group!(
    benches,
    memtable_benches,
    codec_benches,
    cross_core_hop_benches
);
criterion_main!(benches);
