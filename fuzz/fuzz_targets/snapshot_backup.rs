//! The backup file reader (`snapshot::backup::read_backup`): file header,
//! frames holding snapshot images, the end frame, padding, SHA-256.
//!
//! Input: `[mode][file...]`. Mode bit 0 forges every checksum that can be
//! found by walking the file (file header, frame headers and bodies, the
//! snapshot images inside, the trailing SHA-256), so mutations reach the
//! checks behind them (kinds, lengths, counts, revisions, padding).
//!
//! Properties:
//! - an accepted backup's versions lie in `1..=revision` and its
//!   compaction point is at most the revision;
//! - what it holds survives a round trip: writing it again with
//!   `BackupWriter` and reading that gives the same backup.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use metastore::snapshot::backup::{BackupWriter, read_backup};
use metastore_fuzz::{BoundedAllocator, Input, forge_backup};

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let mut file = input.rest().to_vec();
    if mode & 1 != 0 {
        forge_backup(&mut file);
    }
    let Ok(backup) = read_backup(&Bytes::from(file)) else {
        return;
    };
    assert!(backup.compacted_revision <= backup.revision);
    for entry in &backup.entries {
        assert!((1..=backup.revision).contains(&entry.revision));
    }

    let mut writer = BackupWriter::new(Vec::new(), backup.revision, backup.source_shard_count)
        .expect("writing to memory");
    writer
        .write_leases(&backup.leases)
        .expect("writing to memory");
    writer
        .write_versions(0, backup.entries.clone())
        .expect("writing to memory");
    let (mut written, hash) = writer
        .finish(backup.compacted_revision)
        .expect("writing to memory");
    written.extend_from_slice(&hash);
    let again = read_backup(&Bytes::from(written)).expect("our own backup reads back");
    assert_eq!(again.source_shard_count, backup.source_shard_count);
    assert_eq!(again.revision, backup.revision);
    assert_eq!(again.compacted_revision, backup.compacted_revision);
    assert_eq!(again.leases, backup.leases);
    assert_eq!(
        again.entries, backup.entries,
        "the round trip changed the versions"
    );
    assert!(again.verified_hash);
});
