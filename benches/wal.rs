//! WAL group-commit throughput: `Wal::sync` with 1, 16 and 256 records of
//! 128 bytes per frame (the parameter is entries per fsync), reported by
//! criterion as records/second ("elements").
//!
//! - `wal sync/discard`: a device that drops every write: the WAL's own CPU
//!   cost per sync (framing, checksums, copies), nothing else.
//! - `wal sync/memory`: `MemoryDevice`, which also stores every block twice
//!   (current and durable copies) in fresh memory: page faults dominate.
//! - `wal sync/direct`: `DirectDevice` in a temporary directory under
//!   /var/tmp: a real O_DIRECT write and fdatasync per sync, through io_uring
//!   when the kernel allows (the epoll driver otherwise).
//!
//! Run with `cargo bench --bench wal`; compare before/after on the same
//! machine and disk, never against fixed numbers.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use metastore::wal::{
    AlignedBuffer, DeviceFile, DirectDevice, MemoryDevice, StorageDevice, Wal, WalOptions,
};

const RECORD_BYTES: usize = 128;
const RECORDS_PER_FRAME: [u64; 3] = [1, 16, 256];

/// A device that accepts and forgets every write; files read as empty.
#[derive(Clone)]
struct DiscardDevice;

impl StorageDevice for DiscardDevice {
    type File = DiscardDevice;

    async fn open_file(&self, _name: &str, _create: bool) -> std::io::Result<DiscardDevice> {
        Ok(DiscardDevice)
    }

    async fn list_files(&self) -> std::io::Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn remove_file(&self, _name: &str) -> std::io::Result<()> {
        Ok(())
    }

    async fn rename_file(&self, _from: &str, _to: &str) -> std::io::Result<()> {
        Ok(())
    }

    async fn sync_directory(&self) -> std::io::Result<()> {
        Ok(())
    }
}

impl DeviceFile for DiscardDevice {
    async fn write_at(
        &self,
        _offset: u64,
        buffer: AlignedBuffer,
    ) -> (std::io::Result<()>, AlignedBuffer) {
        (Ok(()), std::hint::black_box(buffer))
    }

    async fn read_at(&self, _offset: u64, _len: usize) -> std::io::Result<Vec<u8>> {
        Ok(Vec::new())
    }

    async fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    async fn allocate(&self, _len: u64) -> std::io::Result<()> {
        Ok(())
    }

    async fn len(&self) -> std::io::Result<u64> {
        Ok(0)
    }
}

fn bench_device<D: StorageDevice>(
    criterion: &mut Criterion,
    name: &str,
    mut make_device: impl FnMut() -> D,
) {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("build a monoio runtime");
    let mut group = criterion.benchmark_group(format!("wal sync/{name}"));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let record = [0x5a_u8; RECORD_BYTES];
    for records_per_frame in RECORDS_PER_FRAME {
        group.throughput(Throughput::Elements(records_per_frame));
        let (mut wal, _) = runtime
            .block_on(Wal::open(make_device(), WalOptions::default()))
            .expect("open the WAL");
        group.bench_function(
            BenchmarkId::new("records per fsync", records_per_frame),
            |bench| {
                bench.iter_custom(|iterations| {
                    runtime.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iterations {
                            for _ in 0..records_per_frame {
                                wal.append(&record);
                            }
                            wal.sync().await.expect("sync");
                        }
                        let elapsed = start.elapsed();
                        // Untimed: drop covered segments so the device stays small.
                        wal.release_before(wal.durable_sequence())
                            .await
                            .expect("release");
                        elapsed
                    })
                })
            },
        );
    }
    group.finish();
}

fn wal_benches(criterion: &mut Criterion) {
    bench_device(criterion, "discard", || DiscardDevice);
    bench_device(criterion, "memory", MemoryDevice::new);
    let root = tempfile::tempdir_in("/var/tmp")
        .or_else(|_| tempfile::tempdir())
        .expect("create a temporary directory");
    let mut next = 0;
    bench_device(criterion, "direct", || {
        next += 1;
        DirectDevice::open(&root.path().join(format!("wal-{next}"))).expect("open the directory")
    });
}

criterion_group!(benches, wal_benches);
criterion_main!(benches);
