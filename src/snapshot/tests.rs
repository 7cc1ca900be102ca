//! Tests for the snapshot format and files. Randomized tests print their
//! seed; rerun one with `SNAPSHOT_TEST_SEED=<seed>`.

use std::fs;
use std::path::Path;

use bytes::Bytes;

use super::format::Header;
use super::*;

fn sample_meta() -> SnapshotMeta {
    SnapshotMeta {
        shard: 3,
        shard_count: 8,
        raft_index: 123_456,
        raft_term: 7,
        revision: 99_999,
        compacted_revision: -1,
    }
}

/// `count` versions: every 7th a tombstone, every 5th put an empty value,
/// some leased, keys of varying length (including the empty key).
fn sample_entries(count: usize) -> Vec<SnapshotEntry> {
    (0..count)
        .map(|index| {
            let index_i64 = index as i64;
            let key = if index == 0 {
                Bytes::new()
            } else {
                Bytes::from(format!("key/{index:0width$}", width = index % 9))
            };
            if index % 7 == 3 {
                return SnapshotEntry {
                    key,
                    revision: index_i64 + 2,
                    value: Bytes::new(),
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                    sub_revision: 0,
                };
            }
            let value = if index % 5 == 0 {
                Bytes::new()
            } else {
                Bytes::from(vec![(index % 251) as u8; index % 300])
            };
            SnapshotEntry {
                key,
                revision: index_i64 + 2,
                value,
                create_revision: index_i64 / 2 + 1,
                version: index_i64 % 11 + 1,
                lease: if index % 4 == 0 {
                    0x7fff_0000 + index_i64
                } else {
                    0
                },
                sub_revision: 0,
            }
        })
        .collect()
}

fn small_image() -> Vec<u8> {
    encode_snapshot(&sample_meta(), &[], sample_entries(4)).expect("encode small snapshot")
}

/// Rewrites both checksums so that only the archive validator stands
/// between a mutated archive and the reader.
fn reseal(image: &mut [u8]) {
    let archive_length = (image.len() - HEADER_LENGTH) as u64;
    let header = Header {
        archive_length,
        archive_checksum: crc32c::crc32c(&image[HEADER_LENGTH..]),
    };
    image[..HEADER_LENGTH].copy_from_slice(&header.encode());
}

/// Reading a view must not panic whatever it holds.
fn touch_everything(view: &SnapshotView<'_>) {
    let _ = view.meta();
    let mut total = 0usize;
    for entry in view.entries() {
        total = total.wrapping_add(entry.key.len() + entry.value.len());
    }
    assert_eq!(view.entries().len(), view.len());
    std::hint::black_box(total);
}

/// SplitMix64: a tiny, version-proof PRNG so a printed seed always
/// reproduces the same inputs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for byte in bytes {
            *byte = self.next() as u8;
        }
    }
}

fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("SNAPSHOT_TEST_SEED") {
        Ok(text) => text.parse().expect("SNAPSHOT_TEST_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(0x5eed),
    };
    println!("{test}: SNAPSHOT_TEST_SEED={seed}");
    seed
}

#[test]
fn round_trip_keeps_meta_and_every_entry_in_order() {
    let meta = sample_meta();
    let entries = sample_entries(5_000);
    assert!(entries.iter().any(SnapshotEntry::is_tombstone));
    assert!(
        entries
            .iter()
            .any(|entry| entry.value.is_empty() && !entry.is_tombstone())
    );
    let image = encode_snapshot(&meta, &[], entries.clone()).expect("encode");
    let view = SnapshotView::open(&image).expect("open");
    assert_eq!(view.meta(), meta);
    assert_eq!(view.len(), entries.len());
    assert!(!view.is_empty());
    let read: Vec<SnapshotEntry> = view.entries().map(|entry| entry.to_entry()).collect();
    assert_eq!(read, entries);
    let tombstones = view.entries().filter(|entry| entry.is_tombstone()).count();
    assert_eq!(
        tombstones,
        entries.iter().filter(|entry| entry.is_tombstone()).count()
    );
}

#[test]
fn entries_keep_the_given_order_and_extreme_integers() {
    let meta = SnapshotMeta {
        shard: u32::MAX,
        shard_count: u32::MAX,
        raft_index: u64::MAX,
        raft_term: u64::MAX,
        revision: i64::MAX,
        compacted_revision: i64::MIN,
    };
    let mut entries = sample_entries(50);
    entries.reverse();
    entries[0].lease = i64::MIN;
    entries[1].create_revision = i64::MAX;
    let image = encode_snapshot(&meta, &[], entries.clone()).expect("encode");
    let view = SnapshotView::open(&image).expect("open");
    assert_eq!(view.meta(), meta);
    let read: Vec<SnapshotEntry> = view.entries().map(|entry| entry.to_entry()).collect();
    assert_eq!(read, entries);
}

#[test]
fn empty_snapshot_round_trips() {
    let image = encode_snapshot(&sample_meta(), &[], Vec::new()).expect("encode");
    let view = SnapshotView::open(&image).expect("open");
    assert_eq!(view.meta(), sample_meta());
    assert!(view.is_empty());
    assert_eq!(view.entries().count(), 0);
}

#[test]
fn image_has_the_documented_header() {
    let image = small_image();
    assert_eq!(&image[0..8], b"METASNAP");
    assert_eq!(image[8..12], FORMAT_VERSION.to_le_bytes());
    assert_eq!(image[12..16], [0; 4]);
    let archive_length = (image.len() - HEADER_LENGTH) as u64;
    assert_eq!(image[16..24], archive_length.to_le_bytes());
    let archive_checksum = crc32c::crc32c(&image[HEADER_LENGTH..]);
    assert_eq!(image[24..28], archive_checksum.to_le_bytes());
    assert_eq!(image[28..32], crc32c::crc32c(&image[..28]).to_le_bytes());
    // The encoder sizes the image exactly (unaligned archive, no padding).
    let payload: usize = sample_entries(4)
        .iter()
        .map(|entry| entry.key.len() + entry.value.len())
        .sum();
    assert_eq!(image.len(), HEADER_LENGTH + payload + 4 * 68 + 72);
}

#[test]
fn every_truncation_is_detected() {
    let image = small_image();
    for cut in 0..image.len() {
        match SnapshotView::open(&image[..cut]) {
            Err(SnapshotError::Truncated { available, .. }) => assert_eq!(available, cut as u64),
            other => panic!("cut at {cut} of {}: {other:?}", image.len()),
        }
    }
    let mut longer = image.clone();
    longer.push(0);
    assert!(matches!(
        SnapshotView::open(&longer),
        Err(SnapshotError::TrailingBytes { .. })
    ));
}

#[test]
fn every_flipped_bit_is_detected() {
    let image = small_image();
    for offset in 0..image.len() {
        for bit in 0..8 {
            let mut corrupted = image.clone();
            corrupted[offset] ^= 1 << bit;
            let result = SnapshotView::open(&corrupted);
            let expected = match offset {
                0..8 => matches!(result, Err(SnapshotError::BadMagic)),
                8..12 => matches!(result, Err(SnapshotError::UnsupportedVersion(_))),
                12..32 => matches!(result, Err(SnapshotError::HeaderChecksum { .. })),
                _ => matches!(result, Err(SnapshotError::Checksum { .. })),
            };
            assert!(expected, "bit {bit} of byte {offset}: {result:?}");
        }
    }
}

#[test]
fn huge_declared_lengths_are_refused_without_reading() {
    let mut image = small_image();
    for (declared, too_large) in [
        (u64::MAX, true),
        (MAX_ARCHIVE_LENGTH + 1, true),
        (MAX_ARCHIVE_LENGTH, false),
    ] {
        let header = Header {
            archive_length: declared,
            archive_checksum: 0,
        };
        image[..HEADER_LENGTH].copy_from_slice(&header.encode());
        let result = SnapshotView::open(&image);
        if too_large {
            assert!(
                matches!(result, Err(SnapshotError::TooLarge { .. })),
                "{result:?}"
            );
        } else {
            assert!(
                matches!(result, Err(SnapshotError::Truncated { .. })),
                "{result:?}"
            );
        }
    }
}

#[test]
fn header_checks_report_what_is_wrong() {
    let image = small_image();
    let mut future = image.clone();
    future[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert_eq!(
        SnapshotView::open(&future).unwrap_err(),
        SnapshotError::UnsupportedVersion(FORMAT_VERSION + 1)
    );

    let mut flagged = image.clone();
    flagged[12] = 1;
    let checksum = crc32c::crc32c(&flagged[..28]);
    flagged[28..32].copy_from_slice(&checksum.to_le_bytes());
    assert_eq!(
        SnapshotView::open(&flagged).unwrap_err(),
        SnapshotError::UnsupportedFlags(1)
    );

    assert_eq!(
        SnapshotView::open(b"").unwrap_err(),
        SnapshotError::Truncated {
            needed: 32,
            available: 0
        }
    );
    assert_eq!(
        SnapshotView::open(b"METAS").unwrap_err(),
        SnapshotError::Truncated {
            needed: 32,
            available: 5
        }
    );
    assert_eq!(
        SnapshotView::open(b"{\"json\": 1}").unwrap_err(),
        SnapshotError::BadMagic
    );
}

#[test]
fn forged_checksum_over_a_huge_entry_count_is_an_invalid_archive() {
    // The root is the archive's last 56 bytes: meta (40), then the entries
    // vector's relative pointer (8) and length (8).
    let mut image = small_image();
    let length_offset = image.len() - 8;
    for forged_length in [u64::MAX, 1 << 40, 5] {
        image[length_offset..].copy_from_slice(&forged_length.to_le_bytes());
        reseal(&mut image);
        match SnapshotView::open(&image) {
            Err(SnapshotError::InvalidArchive(message)) => assert!(!message.is_empty()),
            other => panic!("entries length {forged_length}: {other:?}"),
        }
    }
}

#[test]
fn seeded_random_garbage_never_panics() {
    let mut random = SplitMix64(test_seed("seeded_random_garbage_never_panics"));
    // Plain noise: refused, normally for its magic.
    for _ in 0..2_000 {
        let mut bytes = vec![0u8; random.below(600)];
        random.fill(&mut bytes);
        assert!(SnapshotView::open(&bytes).is_err());
    }
    // Noise behind a well-formed header: only bytecheck can refuse it.
    for _ in 0..2_000 {
        let mut image = vec![0u8; HEADER_LENGTH + random.below(600)];
        random.fill(&mut image[HEADER_LENGTH..]);
        reseal(&mut image);
        if let Ok(view) = SnapshotView::open(&image) {
            touch_everything(&view);
        }
    }
    // A real image with a few random bytes changed and resealed: exercises
    // the archive validator on nearly valid archives.
    let image = encode_snapshot(&sample_meta(), &[], sample_entries(20)).expect("encode");
    for _ in 0..20_000 {
        let mut mutated = image.clone();
        for _ in 0..1 + random.below(4) {
            let offset = HEADER_LENGTH + random.below(image.len() - HEADER_LENGTH);
            mutated[offset] = random.next() as u8;
        }
        reseal(&mut mutated);
        if let Ok(view) = SnapshotView::open(&mutated) {
            touch_everything(&view);
        }
    }
}

#[test]
fn names_format_and_parse() {
    for (term, index) in [(0, 0), (1, 2), (0xdead_beef, 42), (u64::MAX, u64::MAX)] {
        let name = snapshot_file_name(term, index);
        assert_eq!(name.len(), 43, "{name}");
        assert_eq!(parse_snapshot_file_name(&name), Some((term, index)));
    }
    assert_eq!(
        snapshot_file_name(0x1f, 0x2a),
        "snap-000000000000001f-000000000000002a.snap"
    );
    for bad in [
        "",
        "snap-.snap",
        "snap-000000000000001f-000000000000002a.snap.tmp",
        "snap-000000000000001F-000000000000002a.snap",
        "snap-00000000000001f-000000000000002a.snap",
        "snap-0000000000000001f-000000000000002a.snap",
        "snap-+00000000000001f-000000000000002a.snap",
        "snap-000000000000001f+000000000000002a.snap",
        "snap-000000000000001f-000000000000002a-0.snap",
        "Snap-000000000000001f-000000000000002a.snap",
        "snap-000000000000001f-000000000000002a.SNAP",
        "snap-000000000000001f-00000000000002é.snap",
    ] {
        assert_eq!(parse_snapshot_file_name(bad), None, "{bad}");
    }
}

#[test]
fn candidates_are_ordered_newest_first_by_term_then_index() {
    let names = [
        snapshot_file_name(1, 900),
        "notes.txt".to_owned(),
        snapshot_file_name(2, 5),
        format!("{}.tmp", snapshot_file_name(9, 9)),
        snapshot_file_name(2, 40),
        snapshot_file_name(1, 1000),
    ];
    let order: Vec<(u64, u64)> = snapshot_candidates_newest_first(&names)
        .into_iter()
        .map(|candidate| (candidate.raft_term, candidate.raft_index))
        .collect();
    assert_eq!(order, [(2, 40), (2, 5), (1, 1000), (1, 900)]);
}

fn meta_at(raft_term: u64, raft_index: u64) -> SnapshotMeta {
    SnapshotMeta {
        raft_term,
        raft_index,
        ..sample_meta()
    }
}

fn write_at(dir: &Path, raft_term: u64, raft_index: u64) -> std::path::PathBuf {
    let meta = meta_at(raft_term, raft_index);
    let image = encode_snapshot(&meta, &[], sample_entries(100)).expect("encode");
    write_snapshot_file(dir, &meta, &image, WritePace::Unpaced).expect("write snapshot file")
}

#[test]
fn newest_valid_file_is_loaded_and_corrupt_newer_ones_are_reported() {
    let dir = tempfile::tempdir().expect("temporary directory");
    assert!(
        load_newest_snapshot(dir.path())
            .expect("scan empty")
            .is_none()
    );

    write_at(dir.path(), 1, 10);
    let expected = write_at(dir.path(), 2, 5);
    let corrupt = write_at(dir.path(), 2, 20);
    let mut bytes = fs::read(&corrupt).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    fs::write(&corrupt, &bytes).expect("corrupt the newest");
    // A valid image under a newer name than its contents.
    let impostor = dir.path().join(snapshot_file_name(3, 1));
    fs::copy(dir.path().join(snapshot_file_name(1, 10)), &impostor).expect("copy");
    // Things that are not snapshots are ignored.
    fs::write(
        dir.path().join(format!("{}.tmp", snapshot_file_name(9, 9))),
        b"partial",
    )
    .expect("tmp");
    fs::write(dir.path().join("notes.txt"), b"hello").expect("notes");
    fs::create_dir(dir.path().join(snapshot_file_name(8, 8))).expect("directory");

    let scan = scan_snapshot_directory(dir.path()).expect("scan");
    let loaded = scan.newest.expect("a valid snapshot");
    assert_eq!(loaded.path, expected);
    assert_eq!(
        SnapshotView::open(&loaded.bytes).expect("open").meta(),
        meta_at(2, 5)
    );
    let rejected: Vec<_> = scan
        .rejected
        .iter()
        .map(|file| (file.path.clone(), file.error.clone()))
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0].0, impostor);
    assert!(matches!(
        rejected[0].1,
        SnapshotError::NameMismatch {
            name_term: 3,
            meta_term: 1,
            ..
        }
    ));
    assert_eq!(rejected[1].0, corrupt);
    assert!(matches!(rejected[1].1, SnapshotError::Checksum { .. }));

    let (path, image) = load_newest_snapshot(dir.path())
        .expect("load")
        .expect("some");
    assert_eq!(path, expected);
    assert_eq!(image, fs::read(&expected).expect("read"));
}

#[test]
fn write_is_atomic_and_refuses_non_images() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = write_at(dir.path(), 4, 44);
    assert_eq!(path, dir.path().join(snapshot_file_name(4, 44)));
    // Rewriting the same position replaces the file.
    write_at(dir.path(), 4, 44);
    let names: Vec<String> = fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [snapshot_file_name(4, 44)],
        "no temporary file is left behind"
    );

    let error = write_snapshot_file(
        dir.path(),
        &meta_at(5, 1),
        b"not a snapshot",
        WritePace::Unpaced,
    )
    .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    let mut truncated = small_image();
    truncated.pop();
    let error = write_snapshot_file(dir.path(), &meta_at(5, 1), &truncated, WritePace::Unpaced)
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(!dir.path().join(snapshot_file_name(5, 1)).exists());
}

#[test]
fn oversized_files_are_rejected_from_their_size() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(snapshot_file_name(1, 1));
    let file = fs::File::create(&path).expect("create");
    // Sparse: no disk space is used and nothing is read.
    file.set_len(HEADER_LENGTH as u64 + MAX_ARCHIVE_LENGTH + 1)
        .expect("set_len");
    let scan = scan_snapshot_directory(dir.path()).expect("scan");
    assert!(scan.newest.is_none());
    assert_eq!(scan.rejected.len(), 1);
    assert!(matches!(
        scan.rejected[0].error,
        SnapshotError::TooLarge { .. }
    ));
}

/// The exact image of the example in docs/snapshot-format.md. If this
/// changes (say, after an rkyv upgrade or a feature change), the format has
/// changed: bump FORMAT_VERSION and update the document.
#[test]
fn two_entry_image_matches_the_documented_bytes() {
    let meta = SnapshotMeta {
        shard: 1,
        shard_count: 2,
        raft_index: 3,
        raft_term: 4,
        revision: 5,
        compacted_revision: -1,
    };
    let entry = |key: &'static [u8], value: &'static [u8], revision| SnapshotEntry {
        key: Bytes::from_static(key),
        revision,
        value: Bytes::from_static(value),
        create_revision: 6,
        version: 1,
        lease: 0,
        sub_revision: 0,
    };
    let image = encode_snapshot(&meta, &[], [entry(b"KK", b"VVV", 7), entry(b"kk", b"", 8)])
        .expect("encode");
    let documented = "
        4d 45 54 41 53 4e 41 50 02 00 00 00 00 00 00 00
        d7 00 00 00 00 00 00 00 ce 20 3d 53 4c 6c f0 7c
        4b 4b 56 56 56 6b 6b f9 ff ff ff ff ff ff ff 02
        00 00 00 00 00 00 00 07 00 00 00 00 00 00 00 e3
        ff ff ff ff ff ff ff 03 00 00 00 00 00 00 00 06
        00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 ba ff ff ff ff
        ff ff ff 02 00 00 00 00 00 00 00 08 00 00 00 00
        00 00 00 a4 ff ff ff ff ff ff ff 00 00 00 00 00
        00 00 00 06 00 00 00 00 00 00 00 01 00 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01
        00 00 00 02 00 00 00 03 00 00 00 00 00 00 00 04
        00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 ff
        ff ff ff ff ff ff ff 49 ff ff ff ff ff ff ff 00
        00 00 00 00 00 00 00 40 ff ff ff ff ff ff ff 02
        00 00 00 00 00 00 00";
    let documented: Vec<u8> = documented
        .split_whitespace()
        .map(|pair| u8::from_str_radix(pair, 16).expect("hex"))
        .collect();
    let dump: Vec<String> = image
        .chunks(16)
        .map(|row| {
            row.iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(image, documented, "image bytes:\n{}", dump.join("\n"));
}
