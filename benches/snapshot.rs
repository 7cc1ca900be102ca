//! Snapshot encode and load costs at the scale of the "restart time with 1M
//! keys" measurement: 1,000,000 versions, 8-byte keys, 256-byte values:
//! encode, validate, iterate, and the whole restore into a `Memtable`.
//! Reading the file is not included: that is the cost of touching a fresh
//! buffer of the image's size, set by the machine rather than this code.
//! Run with `cargo bench --bench snapshot`; compare before/after on the same
//! machine, never against fixed numbers.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use metastore::snapshot::{SnapshotEntry, SnapshotMeta, SnapshotView, encode_snapshot};
use metastore::store::memtable::{Memtable, Version};

const ENTRIES: u64 = 1_000_000;

fn meta() -> SnapshotMeta {
    SnapshotMeta {
        shard: 0,
        shard_count: 1,
        raft_index: ENTRIES,
        raft_term: 1,
        revision: ENTRIES as i64 + 1,
        compacted_revision: -1,
    }
}

/// The memtable's shape: distinct keys, one live version each, values in
/// their own buffers (as a put leaves them).
fn entries() -> Vec<SnapshotEntry> {
    (0..ENTRIES)
        .map(|index| {
            let revision = index as i64 + 2;
            SnapshotEntry {
                key: Bytes::copy_from_slice(&index.to_be_bytes()),
                revision,
                value: Bytes::from(vec![(index % 251) as u8; 256]),
                create_revision: revision,
                version: 1,
                lease: 0,
                sub_revision: 0,
            }
        })
        .collect()
}

fn snapshot_benches(criterion: &mut Criterion) {
    let entries = entries();
    let image = encode_snapshot(&meta(), &[], entries.iter().cloned()).expect("encode");
    eprintln!(
        "snapshot of {ENTRIES} entries: {} bytes ({:.1} MiB)",
        image.len(),
        image.len() as f64 / (1024.0 * 1024.0)
    );

    let mut group = criterion.benchmark_group("snapshot 1M entries (8 B keys, 256 B values)");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(ENTRIES));

    // Cloning the entries shares their buffers (reference counts only), as
    // the snapshot writer does when it walks the memtable.
    group.bench_function("encode", |bench| {
        bench.iter(|| encode_snapshot(&meta(), &[], entries.iter().cloned()).expect("encode"))
    });
    group.bench_function("open (header, crc32c, bytecheck)", |bench| {
        bench.iter(|| SnapshotView::open(black_box(&image)).expect("open").len())
    });
    group.bench_function("open + iterate", |bench| {
        bench.iter(|| {
            let view = SnapshotView::open(black_box(&image)).expect("open");
            let mut checksum = 0u64;
            for entry in view.entries() {
                checksum = checksum
                    .wrapping_add(entry.key.len() as u64 + entry.value.len() as u64)
                    .wrapping_add(entry.revision as u64);
            }
            checksum
        })
    });
    group.bench_function("open + iterate + copy into Bytes", |bench| {
        bench.iter(|| {
            let view = SnapshotView::open(black_box(&image)).expect("open");
            view.entries()
                .map(|entry| entry.to_entry())
                .collect::<Vec<_>>()
        })
    });
    // The zero-copy alternative for a restart: keep the image alive as one
    // `Bytes` and hand out slices of it (pins the image while any survive).
    let shared_image = Bytes::from(image.clone());
    group.bench_function("open + iterate + slice_ref of a shared image", |bench| {
        bench.iter(|| {
            let view = SnapshotView::open(black_box(&shared_image)).expect("open");
            view.entries()
                .map(|entry| {
                    (
                        shared_image.slice_ref(entry.key),
                        shared_image.slice_ref(entry.value),
                    )
                })
                .collect::<Vec<_>>()
        })
    });
    // The whole restore a restart does: validate, then rebuild the memtable
    // from slices of the shared image. Dropping the memtable is not timed.
    group.bench_function("restore into a memtable (slice_ref)", |bench| {
        bench.iter_with_large_drop(|| {
            let view = SnapshotView::open(black_box(&shared_image)).expect("open");
            let memtable = Memtable::new();
            for entry in view.entries() {
                memtable.insert(
                    shared_image.slice_ref(entry.key),
                    entry.revision,
                    Version {
                        value: shared_image.slice_ref(entry.value),
                        create_revision: entry.create_revision,
                        version: entry.version,
                        lease: entry.lease,
                        sub_revision: 0,
                    },
                );
            }
            memtable
        })
    });
    group.finish();
}

criterion_group!(benches, snapshot_benches);
criterion_main!(benches);
