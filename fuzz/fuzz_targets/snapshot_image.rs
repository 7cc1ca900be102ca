//! The shard snapshot image reader (`snapshot::SnapshotView::open`): the
//! 32-byte header, the crc32c of the archive and rkyv's bytecheck.
//!
//! Input: `[mode][image...]`. Mode bit 0 forges the header (magic, version,
//! length and both checksums made to fit the bytes), so mutations reach
//! rkyv's validation of the archive; without it the header guards as on
//! disk.
//!
//! Properties:
//! - an accepted image can be read in full (meta, every entry, leases)
//!   without panicking;
//! - what it holds survives a round trip: encoding what was read and
//!   opening that gives the same meta, leases and entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metastore::snapshot::{SnapshotEntry, SnapshotView, encode_snapshot};
use metastore_fuzz::{BoundedAllocator, Input, forge_snapshot_image};

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let mut image = input.rest().to_vec();
    if mode & 1 != 0 {
        forge_snapshot_image(&mut image);
    }
    let Ok(view) = SnapshotView::open(&image) else {
        return;
    };
    let meta = view.meta();
    let leases = view.leases();
    let entries: Vec<SnapshotEntry> = view.entries().map(|entry| entry.to_entry()).collect();
    assert_eq!(entries.len(), view.len());
    assert_eq!(view.is_empty(), entries.is_empty());
    let _ = format!("{view:?}");

    let encoded = encode_snapshot(&meta, &leases, entries.clone()).expect("what was read encodes");
    let again = SnapshotView::open(&encoded).expect("our own encoding opens");
    assert_eq!(again.meta(), meta);
    assert_eq!(again.leases(), leases);
    let entries_again: Vec<SnapshotEntry> = again.entries().map(|entry| entry.to_entry()).collect();
    assert_eq!(entries_again, entries, "the round trip changed the entries");
});
