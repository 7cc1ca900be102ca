//! WAL tests on `MemoryDevice`: round trips, the one-write-one-fsync
//! contract, crashes, torn writes at every byte, bit rot, fsync failure,
//! garbage input and segment release. `DirectDevice` has its own tests in
//! `direct.rs`.

use super::format::{
    FIRST_FRAME_OFFSET, FRAME_HEADER_LEN, FrameHeader, decode_frame_header, encode_frame_header,
};
use super::log::ZERO_AHEAD_BYTES;
use super::*;
use crate::test_support::Prng;

/// The smallest segment size: rotation happens after ~1 MiB.
pub(super) const SMALL: WalOptions = WalOptions {
    segment_bytes: 1 << 20,
};

pub(super) use crate::test_support::run_on_monoio as run;

/// Deterministic payload for record `sequence`, `len` bytes.
fn payload(sequence: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|index| (sequence as usize).wrapping_mul(31).wrapping_add(index) as u8)
        .collect()
}

pub(super) async fn open(device: &MemoryDevice) -> (Wal<MemoryDevice>, Vec<Record>) {
    Wal::open(device.clone(), SMALL)
        .await
        .expect("open the WAL")
}

async fn open_err(device: &MemoryDevice) -> WalError {
    match Wal::open(device.clone(), SMALL).await {
        Ok((_, records)) => panic!("expected an error, recovered {} records", records.len()),
        Err(error) => error,
    }
}

/// Appends one record per length and syncs them as one frame; returns the
/// (sequence, payload) pairs.
pub(super) async fn sync_frame(
    wal: &mut Wal<MemoryDevice>,
    lengths: &[usize],
) -> Vec<(u64, Vec<u8>)> {
    let mut written = Vec::new();
    for &len in lengths {
        let sequence = wal.next_sequence();
        let bytes = payload(sequence, len);
        assert_eq!(wal.append(&bytes), sequence);
        written.push((sequence, bytes));
    }
    wal.sync().await.expect("sync");
    written
}

pub(super) fn assert_records(records: &[Record], expected: &[(u64, Vec<u8>)]) {
    assert_eq!(records.len(), expected.len(), "record count");
    for (record, (sequence, bytes)) in records.iter().zip(expected) {
        assert_eq!(record.sequence, *sequence);
        assert_eq!(
            &record.payload[..],
            &bytes[..],
            "payload of record {sequence}"
        );
    }
}

/// Offsets of the valid frames at the start of a segment's bytes.
pub(super) fn frame_offsets(bytes: &[u8]) -> Vec<u64> {
    let mut offsets = Vec::new();
    let mut offset = FIRST_FRAME_OFFSET as usize;
    while let Some(Ok(Some(header))) = bytes.get(offset..).map(decode_frame_header) {
        offsets.push(offset as u64);
        offset += header.frame_len() as usize;
    }
    offsets
}

fn corrupt_location(error: &WalError) -> (String, u64) {
    match error {
        WalError::Corrupt { file, offset, .. } => (file.clone(), *offset),
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn options_are_validated() {
    for segment_bytes in [0, 4096, (1 << 20) - 4096, (1 << 20) + 1, 1 << 40] {
        let options = WalOptions { segment_bytes };
        assert!(options.validate().is_err(), "{segment_bytes} accepted");
    }
    assert!(WalOptions::default().validate().is_ok());
    assert_eq!(WalOptions::default().segment_bytes, 64 << 20);
    assert!(SMALL.validate().is_ok());
}

#[test]
fn empty_device_is_a_new_wal_and_empty_sync_does_nothing() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, records) = open(&device).await;
        assert!(records.is_empty());
        assert_eq!(wal.durable_sequence(), 0);
        assert_eq!(wal.sync().await.expect("empty sync"), SyncReport::default());
        assert_eq!((device.write_count(), device.sync_count()), (0, 0));
        assert!(device.file_names().is_empty());
        assert_eq!(wal.append(b"first"), 1);
        assert_eq!(wal.append(b"second"), 2);
        assert_eq!(wal.unsynced_records(), 2);
        let report = wal.sync().await.expect("sync");
        assert_eq!(report.records, 2);
        assert_eq!(report.frames, 1);
        assert_eq!(wal.unsynced_records(), 0);
        assert_eq!(wal.durable_sequence(), 2);
        assert_eq!(
            device.file_names(),
            vec!["wal-0000000000000001.log".to_owned()]
        );
    });
}

#[test]
fn round_trip_across_many_syncs_and_rotations() {
    run(async {
        let device = MemoryDevice::new();
        let mut expected = Vec::new();
        let mut prng = Prng::seeded(7);
        {
            let (mut wal, _) = open(&device).await;
            for frame in 0..300 {
                let count = 1 + prng.below(12) as usize;
                let lengths: Vec<usize> = (0..count)
                    .map(|_| match prng.below(20) {
                        0 => 60_000 + prng.below(40_000) as usize, // multi-block frames
                        1 => 0,                                    // empty records are fine
                        _ => prng.below(700) as usize,
                    })
                    .collect();
                expected.extend(sync_frame(&mut wal, &lengths).await);
                assert_eq!(
                    wal.durable_sequence(),
                    expected.len() as u64,
                    "after frame {frame}"
                );
            }
            assert!(
                wal.segment_names().len() >= 3,
                "expected rotations, got {:?}",
                wal.segment_names()
            );
        }
        let (mut wal, records) = open(&device).await;
        assert_records(&records, &expected);
        // Writing resumes after the last frame, and the result reopens.
        expected.extend(sync_frame(&mut wal, &[10, 20]).await);
        drop(wal);
        let (_, records) = open(&device).await;
        assert_records(&records, &expected);
    });
}

#[test]
fn each_sync_is_one_frame_write_and_one_fsync() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let mut rotations = 0;
        let mut zeroing_writes = 0;
        let mut frame_bytes = 0;
        for round in 0..80u64 {
            let segments_before = wal.segment_names().len();
            let (writes, syncs) = (device.write_count(), device.sync_count());
            let records = 1 + (round % 5) as usize;
            for _ in 0..records {
                wal.append(&payload(round, 30_000));
            }
            let report = wal.sync().await.expect("sync");
            // The frame, plus now and then the zeros ahead of it.
            let extra_writes = device.write_count() - writes - 1;
            assert!(extra_writes <= 1, "writes in round {round}");
            zeroing_writes += extra_writes;
            frame_bytes += report.bytes_written as u64;
            assert_eq!(
                device.sync_count() - syncs,
                1,
                "fdatasyncs in round {round}"
            );
            assert_eq!(report.records, records);
            assert_eq!(report.frames, 1);
            assert_eq!(report.bytes_written % BLOCK_SIZE, 0);
            if wal.segment_names().len() > segments_before {
                rotations += 1;
            }
        }
        assert!(rotations >= 2, "rotation was exercised {rotations} times");
        // Zeroing runs once per segment and then once per half of
        // ZERO_AHEAD_BYTES of frames, not in every sync.
        let most = rotations + 1 + frame_bytes / (ZERO_AHEAD_BYTES / 2);
        assert!(
            (1..=most).contains(&zeroing_writes),
            "{zeroing_writes} zeroing writes for {frame_bytes} bytes of frames, {rotations} rotations"
        );
    });
}

#[test]
fn the_segment_is_kept_written_ahead_of_the_last_frame() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let mut expected = Vec::new();
        for round in 0..40u64 {
            expected.extend(sync_frame(&mut wal, &[3_000, 500]).await);
            let active = wal.active.as_ref().expect("an active segment");
            let written = device.written_len(&active.name).expect("segment exists") as u64;
            assert!(
                written >= (active.write_offset + ZERO_AHEAD_BYTES / 2).min(active.capacity),
                "round {round}: written up to {written}, frames end at {}",
                active.write_offset
            );
            assert!(written <= active.write_offset + ZERO_AHEAD_BYTES);
        }
        // The zeros never cover a frame: everything reads back, after a
        // crash too.
        device.crash();
        let (_, records) = open(&device).await;
        assert_records(&records, &expected);
    });
}

#[test]
fn crash_between_write_and_fsync_loses_only_the_unsynced_frame() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let mut expected = Vec::new();
        for _ in 0..5 {
            expected.extend(sync_frame(&mut wal, &[100, 5000, 7]).await);
        }
        let durable = wal.durable_sequence();
        wal.append(&payload(99, 9000));
        device.fail_next_sync(); // the write happens, its fsync does not
        assert!(wal.sync().await.is_err());
        assert_eq!(wal.durable_sequence(), durable);
        device.crash();
        drop(wal);
        let (_, records) = open(&device).await;
        assert_records(&records, &expected);
    });
}

/// Where the next frame of segment `name` goes (just past its last frame).
fn write_offset(device: &MemoryDevice, name: &str) -> u64 {
    let bytes = device.file_bytes(name).expect("segment exists");
    match frame_offsets(&bytes).last() {
        Some(&last) => {
            let header = decode_frame_header(&bytes[last as usize..])
                .ok()
                .flatten()
                .expect("valid frame");
            last + header.frame_len()
        }
        None => FIRST_FRAME_OFFSET,
    }
}

/// Builds a WAL with durable frames (with `rotate`, the active segment is
/// filled so the next frame starts a new segment; with `first_sync`, there
/// are none), then writes a frame of three blocks whose fsync fails.
/// Returns the device, the durable records and the torn frame's records.
async fn torn_write_setup(
    rotate: bool,
    first_sync: bool,
) -> (MemoryDevice, Vec<(u64, Vec<u8>)>, Vec<(u64, Vec<u8>)>) {
    let device = MemoryDevice::new();
    let (mut wal, _) = open(&device).await;
    let mut durable = Vec::new();
    if !first_sync {
        durable.extend(sync_frame(&mut wal, &[300, 20]).await);
        durable.extend(sync_frame(&mut wal, &[4000]).await);
        if rotate {
            // Leave exactly one free block in the active segment.
            loop {
                let active = wal.segment_names().last().cloned().expect("a segment");
                let remaining = SMALL.segment_bytes - write_offset(&device, &active);
                if remaining == BLOCK_SIZE as u64 {
                    break;
                }
                let fill = (remaining as usize - BLOCK_SIZE - FRAME_HEADER_LEN - 4).min(200_000);
                durable.extend(sync_frame(&mut wal, &[fill]).await);
            }
        }
    }
    let mut torn = Vec::new();
    for len in [3000, 2500, 4100] {
        let bytes = payload(wal.next_sequence() + 1000, len);
        torn.push((wal.append(&bytes), bytes));
    }
    let files_before = device.file_names().len();
    device.fail_next_sync();
    assert!(wal.sync().await.is_err());
    if rotate {
        assert!(
            device.file_names().len() > files_before,
            "the torn frame should start a segment"
        );
        // The new name reached the disk (a journal commit can do that
        // without the data); otherwise the crash would simply remove the
        // file and the test would prove little.
        device.sync_directory().await.expect("directory sync");
    }
    (device, durable, torn)
}

/// Tears the write of a three-block frame after `keep` bytes, for every
/// `keep` that `include` accepts, and checks recovery and resumption.
fn check_torn_writes(rotate: bool, first_sync: bool, include: impl Fn(usize) -> bool) {
    run(async {
        let (base, durable, torn) = torn_write_setup(rotate, first_sync).await;
        let write_len = base.last_write_len();
        assert!(
            write_len >= 3 * BLOCK_SIZE,
            "the torn write spans {write_len} bytes"
        );
        for keep in (0..=write_len).filter(|&keep| include(keep) || keep == write_len) {
            let device = base.fork();
            device.tear_last_write(keep);
            let (mut wal, records) = match Wal::open(device.clone(), SMALL).await {
                Ok(opened) => opened,
                Err(error) => panic!("keep {keep}: {error}"),
            };
            let mut expected = durable.clone();
            if records.len() > durable.len() {
                // Only a completely intact torn frame may come back.
                expected.extend(torn.iter().cloned());
            }
            if keep == write_len {
                assert_eq!(
                    records.len(),
                    durable.len() + torn.len(),
                    "keep {keep}: the whole write landed"
                );
            }
            assert_records(&records, &expected);
            if !keep.is_multiple_of(8) && keep != write_len {
                continue; // the resumption check below is the slow part
            }
            // Writing resumes cleanly over the torn bytes.
            expected.extend(sync_frame(&mut wal, &[123, 7000]).await);
            drop(wal);
            let (_, records) = open(&device).await;
            assert_records(&records, &expected);
        }
    });
}

#[test]
fn torn_write_at_every_byte_offset_keeps_earlier_frames() {
    check_torn_writes(false, false, |_| true);
}

/// Where headers live (the first bytes of each block) every byte is torn;
/// elsewhere every third byte, to keep the debug-build run time sane (each
/// case re-reads a full 1 MiB segment).
fn header_bytes_and_every_third(keep: usize) -> bool {
    keep % BLOCK_SIZE <= 64 || keep.is_multiple_of(3)
}

#[test]
fn torn_segment_creation_keeps_earlier_frames() {
    check_torn_writes(true, false, header_bytes_and_every_third);
}

#[test]
fn torn_first_write_of_a_new_wal() {
    check_torn_writes(true, true, header_bytes_and_every_third);
}

#[test]
fn flipped_bit_in_an_early_frame_is_corruption_with_file_and_offset() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        for frame in 0..6 {
            sync_frame(&mut wal, &[frame * 1000 + 10, 20]).await;
        }
        drop(wal);
        let name = device.file_names()[0].clone();
        let bytes = device.file_bytes(&name).expect("segment exists");
        let offsets = frame_offsets(&bytes);
        assert_eq!(offsets.len(), 6);
        // Header magic, header checksum, sequence field, payload: all caught.
        for (within, bit) in [(0usize, 0u8), (5, 3), (17, 1), (FRAME_HEADER_LEN + 9, 6)] {
            let damaged = MemoryDevice::new();
            damaged.put_file(&name, bytes.clone());
            damaged
                .flip_bit(&name, offsets[2] as usize + within, bit)
                .expect("flip");
            let error = open_err(&damaged).await;
            assert_eq!(
                corrupt_location(&error),
                (name.clone(), offsets[2]),
                "flip at +{within}"
            );
            let message = error.to_string();
            assert!(
                message.contains(&name) && message.contains(&offsets[2].to_string()),
                "{message}"
            );
            assert!(
                message.contains("backup") && message.contains("remove"),
                "{message}"
            );
        }
    });
}

#[test]
fn flipped_bit_in_an_earlier_segment_is_corruption_there() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        while wal.segment_names().len() < 3 {
            sync_frame(&mut wal, &[150_000]).await;
        }
        drop(wal);
        let names = device.file_names();
        let first = device.file_bytes(&names[0]).expect("first segment");
        let offsets = frame_offsets(&first);
        // The last frame of the first segment: later data is in later segments.
        let last = *offsets.last().expect("frames");
        device
            .flip_bit(&names[0], last as usize + FRAME_HEADER_LEN + 100, 2)
            .expect("flip");
        assert_eq!(
            corrupt_location(&open_err(&device).await),
            (names[0].clone(), last)
        );
        device
            .flip_bit(&names[0], last as usize + FRAME_HEADER_LEN + 100, 2)
            .expect("flip back");
        // A damaged header of the middle segment: corruption too.
        device.flip_bit(&names[1], 20, 0).expect("flip");
        let (file, _) = corrupt_location(&open_err(&device).await);
        assert_eq!(file, names[0]);
    });
}

#[test]
fn failed_fsync_is_an_error_and_makes_nothing_durable() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let expected = sync_frame(&mut wal, &[10, 20, 30]).await;
        wal.append(b"never acknowledged");
        device.fail_next_sync();
        match wal.sync().await {
            Err(WalError::Io { .. }) => {}
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert_eq!(wal.durable_sequence(), 3);
        // No retry: the WAL refuses from now on.
        assert!(matches!(wal.sync().await, Err(WalError::Failed)));
        wal.append(b"more");
        assert!(matches!(wal.sync().await, Err(WalError::Failed)));
        assert!(matches!(
            wal.release_before(100).await,
            Err(WalError::Failed)
        ));
        device.crash();
        drop(wal);
        let (_, records) = open(&device).await;
        assert_records(&records, &expected);
    });
}

#[test]
fn release_deletes_only_fully_covered_segments_and_reopen_recovers_the_rest() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let mut expected = Vec::new();
        while wal.segment_names().len() < 5 {
            expected.extend(sync_frame(&mut wal, &[90_000, 10]).await);
        }
        let names = wal.segment_names();
        let firsts: Vec<u64> = names
            .iter()
            .map(|name| format::parse_segment_file_name(name).expect("segment name"))
            .collect();
        // Just below the second segment's first record: segment 0 still
        // holds a needed record.
        wal.release_before(firsts[1] - 1).await.expect("release");
        assert_eq!(wal.segment_names(), names);
        wal.release_before(firsts[1]).await.expect("release");
        assert_eq!(wal.segment_names(), names[1..]);
        wal.release_before(firsts[3] + 1).await.expect("release");
        assert_eq!(wal.segment_names(), names[3..]);
        assert_eq!(device.file_names(), names[3..]);
        // Everything covered: the active segment stays.
        wal.release_before(u64::MAX).await.expect("release");
        assert_eq!(wal.segment_names(), names[4..]);
        expected.extend(sync_frame(&mut wal, &[5]).await);
        drop(wal);
        device.crash(); // releases were made durable
        let (_, records) = open(&device).await;
        let kept: Vec<_> = expected
            .iter()
            .filter(|(sequence, _)| *sequence >= firsts[4])
            .cloned()
            .collect();
        assert_records(&records, &kept);
    });
}

#[test]
fn detached_segments_stay_readable_until_removed_and_the_wal_writes_on() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let mut expected = Vec::new();
        while wal.segment_names().len() < 3 {
            expected.extend(sync_frame(&mut wal, &[90_000, 10]).await);
        }
        let names = wal.segment_names();
        let second_first = format::parse_segment_file_name(&names[1]).expect("segment name");
        let released = wal.detach_segments_before(second_first).expect("detach");
        assert!(!released.is_empty());
        assert_eq!(wal.segment_names(), names[1..]);
        // Bookkeeping only: the file is still there, and the log goes on.
        assert_eq!(device.file_names(), names);
        expected.extend(sync_frame(&mut wal, &[7]).await);
        // A crash before the removal: recovery reads every record again
        // (the caller skips what its snapshot covers).
        device.crash();
        drop(wal);
        let (mut wal, records) = open(&device).await;
        assert_records(&records, &expected);
        let released = wal.detach_segments_before(second_first).expect("detach");
        released.remove(wal.device()).await.expect("remove");
        assert_eq!(device.file_names(), names[1..]);
        device.crash(); // the removal was made durable
        drop(wal);
        let (_, records) = open(&device).await;
        let kept: Vec<_> = expected
            .into_iter()
            .filter(|(sequence, _)| *sequence >= second_first)
            .collect();
        assert_records(&records, &kept);
    });
}

#[test]
fn truncated_files_recover_a_prefix_or_report_lost_data() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let mut expected = Vec::new();
        while wal.segment_names().len() < 2 {
            expected.extend(sync_frame(&mut wal, &[70_000, 3]).await);
        }
        expected.extend(sync_frame(&mut wal, &[9000]).await);
        drop(wal);
        let names = device.file_names();
        let last = device.file_bytes(&names[1]).expect("last segment");
        let offsets = frame_offsets(&last);
        let in_first_segment = expected.len() - 2 * (offsets.len() - 1) - 1;
        // The last segment cut inside its last frame, at its last frame, at
        // its header, to nothing: all torn tails.
        for (cut, kept) in [
            (offsets[1] as usize + 5000, in_first_segment + 2),
            (offsets[1] as usize, in_first_segment + 2),
            (100, in_first_segment),
            (0, in_first_segment),
        ] {
            let copy = MemoryDevice::new();
            copy.put_file(&names[0], device.file_bytes(&names[0]).expect("first"));
            copy.put_file(&names[1], last[..cut].to_vec());
            let (_, records) = open(&copy).await;
            assert_records(&records, &expected[..kept]);
        }
        // The first segment cut inside a frame while a later segment exists.
        let first = device.file_bytes(&names[0]).expect("first");
        let first_offsets = frame_offsets(&first);
        let cut = first_offsets[1] as usize + 100;
        let copy = MemoryDevice::new();
        copy.put_file(&names[0], first[..cut].to_vec());
        copy.put_file(&names[1], last.clone());
        assert_eq!(
            corrupt_location(&open_err(&copy).await),
            (names[0].clone(), first_offsets[1])
        );
    });
}

#[test]
fn missing_or_foreign_segments_are_corruption() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        while wal.segment_names().len() < 3 {
            sync_frame(&mut wal, &[200_000]).await;
        }
        drop(wal);
        let names = device.file_names();
        let bytes: Vec<Vec<u8>> = names
            .iter()
            .map(|name| device.file_bytes(name).expect("segment"))
            .collect();
        // A gap: the middle segment is gone.
        let gap = MemoryDevice::new();
        gap.put_file(&names[0], bytes[0].clone());
        gap.put_file(&names[2], bytes[2].clone());
        assert_eq!(corrupt_location(&open_err(&gap).await).0, names[0]);
        // A segment of another log in the middle.
        let other = MemoryDevice::new();
        let (mut foreign, _) = open(&other).await;
        while foreign.segment_names().len() < 3 {
            sync_frame(&mut foreign, &[200_000]).await;
        }
        drop(foreign);
        let mixed = MemoryDevice::new();
        mixed.put_file(&names[0], bytes[0].clone());
        mixed.put_file(
            &names[1],
            other.file_bytes(&names[1]).expect("foreign segment"),
        );
        mixed.put_file(&names[2], bytes[2].clone());
        let error = open_err(&mixed).await;
        assert!(error.to_string().contains("different log"), "{error}");
    });
}

#[test]
fn oversized_frame_gets_a_segment_of_its_own() {
    run(async {
        let device = MemoryDevice::new();
        let (mut wal, _) = open(&device).await;
        let mut expected = sync_frame(&mut wal, &[10]).await;
        expected.extend(sync_frame(&mut wal, &[3 << 20, 5]).await);
        expected.extend(sync_frame(&mut wal, &[20]).await);
        drop(wal);
        let (_, records) = open(&device).await;
        assert_records(&records, &expected);
    });
}

/// A valid-looking (checksummed) frame header with absurd lengths, to plant
/// in files: recovery must refuse it without reading or allocating its
/// length.
fn lying_header(
    log_id: u64,
    frame_sequence: u64,
    payload_length: u32,
    record_count: u32,
) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK_SIZE];
    let header = FrameHeader {
        log_id,
        frame_sequence,
        first_record_sequence: 1,
        record_count,
        payload_length,
        payload_crc: 0,
    };
    encode_frame_header(&header, &mut block);
    block
}

#[test]
fn garbage_truncation_and_lying_lengths_never_panic_or_overallocate() {
    run(async {
        let mut prng = Prng::from_env("WAL_TEST_SEED", "garbage_truncation_and_lying_lengths");
        // A valid WAL to mutate.
        let source = MemoryDevice::new();
        let (mut wal, _) = open(&source).await;
        let mut expected = Vec::new();
        while wal.segment_names().len() < 3 {
            let lengths: Vec<usize> = (0..1 + prng.below(4))
                .map(|_| prng.below(60_000) as usize)
                .collect();
            expected.extend(sync_frame(&mut wal, &lengths).await);
        }
        drop(wal);
        let names = source.file_names();
        let originals: Vec<Vec<u8>> = names
            .iter()
            .map(|name| source.file_bytes(name).expect("segment"))
            .collect();
        let header = format::decode_segment_header(&originals[0])
            .ok()
            .flatten()
            .expect("valid header");

        let mut outcomes = [[0usize; 2]; 6]; // per case kind: [recovered, corrupt]
        for case in 0..300 {
            let device = MemoryDevice::new();
            let mut files = originals.clone();
            match case % 6 {
                // Pure garbage in every segment file.
                0 => {
                    for file in &mut files {
                        let len = prng.below(3 * BLOCK_SIZE as u64) as usize;
                        *file = prng.bytes(len);
                    }
                }
                // Random truncation of one file.
                1 => {
                    let which = prng.below(files.len() as u64) as usize;
                    let len = files[which].len() as u64;
                    files[which].truncate(prng.below(len + 1) as usize);
                }
                // Random bit flips.
                2 => {
                    for _ in 0..1 + prng.below(4) {
                        let which = prng.below(files.len() as u64) as usize;
                        let at = prng.below(files[which].len() as u64) as usize;
                        files[which][at] ^= 1 << prng.below(8);
                    }
                }
                // Random garbage blocks pasted over a valid file.
                3 => {
                    let which = prng.below(files.len() as u64) as usize;
                    let at = prng.below(files[which].len() as u64 / BLOCK_SIZE as u64) as usize
                        * BLOCK_SIZE;
                    let junk = prng.bytes(BLOCK_SIZE);
                    files[which][at..at + BLOCK_SIZE].copy_from_slice(&junk);
                }
                // A checksummed header with lying lengths after the last frame.
                4 => {
                    let last = files.len() - 1;
                    let end = *frame_offsets(&files[last]).last().expect("frames") as usize;
                    let end = end
                        + decode_frame_header(&files[last][end..])
                            .ok()
                            .flatten()
                            .expect("frame")
                            .frame_len() as usize;
                    if files[last].len() < end + BLOCK_SIZE {
                        files[last].resize(end + BLOCK_SIZE, 0);
                    }
                    let lengths = [
                        u32::MAX,
                        u32::MAX - 3,
                        (1 << 30) + prng.below(1 << 20) as u32,
                    ];
                    let payload_length = lengths[prng.below(3) as usize];
                    let record_count =
                        [1, u32::MAX / 4, payload_length / 4][prng.below(3) as usize];
                    let sequence = [0, 1, u64::MAX, prng.next()][prng.below(4) as usize];
                    let block = lying_header(header.log_id, sequence, payload_length, record_count);
                    files[last][end..end + BLOCK_SIZE].copy_from_slice(&block);
                }
                // Segment files with random names and lengths.
                _ => {
                    files.clear();
                    for _ in 0..1 + prng.below(3) {
                        let len = prng.below(4 * BLOCK_SIZE as u64) as usize;
                        let name = format::segment_file_name(prng.below(5));
                        device.put_file(&name, prng.bytes(len));
                    }
                }
            }
            for (name, bytes) in names.iter().zip(&files) {
                device.put_file(name, bytes.clone());
            }
            let largest_file = device
                .file_names()
                .iter()
                .filter_map(|name| device.file_bytes(name))
                .map(|bytes| bytes.len())
                .max()
                .unwrap_or(0);
            match Wal::open(device.clone(), SMALL).await {
                Ok((mut wal, records)) => {
                    outcomes[case % 6][0] += 1;
                    if case % 6 != 0 && case % 6 != 5 {
                        // Mutations of a valid WAL recover a prefix of it.
                        assert!(records.len() <= expected.len(), "case {case}");
                        assert_records(&records, &expected[..records.len()]);
                    }
                    // The recovered WAL is writable and reopens.
                    let next = wal.next_sequence();
                    sync_frame(&mut wal, &[17]).await;
                    drop(wal);
                    let (_, again) = open(&device).await;
                    assert_eq!(
                        again.last().map(|record| record.sequence),
                        Some(next),
                        "case {case}"
                    );
                }
                Err(WalError::Corrupt { .. }) => outcomes[case % 6][1] += 1,
                Err(other) => panic!("case {case}: unexpected error {other}"),
            }
            // No read (and so no allocation) was sized by a length field:
            // reads are bounded by the largest file or the 1 MiB window.
            assert!(
                device.largest_read() <= largest_file.max(1 << 20),
                "case {case}: read {} bytes from files of at most {largest_file}",
                device.largest_read()
            );
        }
        println!(
            "[recovered, corrupt] per kind (garbage, truncate, flips, junk block, lying header, random names): {outcomes:?}"
        );
    });
}
