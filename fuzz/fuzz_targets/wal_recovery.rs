//! WAL recovery (`Wal::open`) over the in-memory device twin
//! (`wal::MemoryDevice`).
//!
//! Input: the device's files, one after another, each
//! `[first record sequence: u64 LE][length: u32 LE][stored: u32 LE][bytes]`:
//! the file is named `segment_file_name(sequence)`, holds `stored` bytes
//! (fewer if the input ends) and is `length` bytes long (up to 4 MiB; the
//! rest reads as zeros, like a preallocated segment; a `length` below
//! `stored` truncates). The seeds are valid small logs (`examples/seeds.rs`);
//! mutating them flips bytes, truncates files, drops or reorders segments.
//!
//! Properties:
//! - `Wal::open` returns a log or `WalError::Corrupt` naming one of the
//!   files and an offset inside it (or at most at the end of the file's
//!   last block, where a frame would start); it never panics, never reads more than
//!   a file holds or its 1 MiB window (so no length field sizes a read);
//! - recovered records have consecutive sequences ending at the durable one;
//! - recovery is idempotent: opening again gives the same records;
//! - a recovered log stays usable: one more record appended and synced is
//!   recovered after the others by the next open.
//!
//! NOTE: written against `Wal::open`'s API as of the fuzzing branch; the
//! recovery API is being split into reading and truncation, and this target
//! is meant to follow it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metastore::wal::format::{FIRST_FRAME_OFFSET, segment_file_name};
use metastore::wal::{DeviceFile, MemoryDevice, Record, StorageDevice, Wal, WalError, WalOptions};
use metastore_fuzz::{BoundedAllocator, Input, block_on_ready};

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

/// Longest file the target makes (a real segment is 64 MiB, but recovery
/// treats length the same way at any size, and reading it costs time).
const MAX_FILE_LEN: usize = 4 << 20;
/// Recovery's read window: no single read may be larger unless a whole
/// frame that fits in its file is.
const READ_WINDOW: usize = 1 << 20;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 1 << 20,
    }
}

/// Plants the input's files; returns (name, length) of each.
fn plant(device: &MemoryDevice, data: &[u8]) -> Vec<(String, usize)> {
    let mut input = Input::new(data);
    let mut files = Vec::new();
    while !input.is_empty() {
        let name = segment_file_name(input.u64_le());
        let length = (input.u32_le() as usize).min(MAX_FILE_LEN);
        let stored = input.u32_le() as usize;
        let mut bytes = input.take(stored).to_vec();
        bytes.truncate(length);
        device.put_file(&name, bytes);
        block_on_ready(async {
            let file = device.open_file(&name, false).await.expect("just planted");
            file.allocate(length as u64)
                .await
                .expect("memory allocates");
        });
        files.retain(|(planted, _)| planted != &name);
        files.push((name, length));
    }
    files
}

fn open(device: &MemoryDevice) -> Result<(Wal<MemoryDevice>, Vec<Record>), WalError> {
    block_on_ready(Wal::open(device.clone(), options()))
}

fuzz_target!(|data: &[u8]| {
    let device = MemoryDevice::new();
    let files = plant(&device, data);
    let largest_file = files.iter().map(|(_, length)| *length).max().unwrap_or(0);

    let (wal, records) = match open(&device) {
        Ok(opened) => opened,
        Err(WalError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            let length = files
                .iter()
                .find(|(name, _)| *name == file)
                .map(|(_, length)| *length);
            let length = length.unwrap_or_else(|| panic!("corruption named {file}, no such file"));
            // The offset is where reading stopped: inside the file, the
            // first frame's place in a file too short to hold one, or just
            // after a last frame whose zero padding the file's end cut off.
            let limit = (length as u64)
                .next_multiple_of(4096)
                .max(FIRST_FRAME_OFFSET);
            assert!(
                offset <= limit,
                "offset {offset} past the end of {file}: {reason}"
            );
            return;
        }
        Err(error) => panic!("recovery failed with something other than corruption: {error}"),
    };
    assert!(
        device.largest_read() <= READ_WINDOW.max(largest_file),
        "a read larger than any file"
    );
    for pair in records.windows(2) {
        assert_eq!(
            pair[0].sequence + 1,
            pair[1].sequence,
            "recovered records skip or repeat"
        );
    }
    let durable = wal.durable_sequence();
    if let Some(last) = records.last() {
        assert_eq!(
            last.sequence, durable,
            "the last record is not the durable one"
        );
    }
    assert_eq!(wal.next_sequence(), durable + 1);
    drop(wal);

    let (wal, again) = open(&device).expect("a log recovered once opens again");
    assert_eq!(again, records, "recovery is not idempotent");
    assert_eq!(wal.durable_sequence(), durable);
    let mut wal = wal;
    let appended = wal.append(b"after recovery");
    block_on_ready(wal.sync()).expect("a recovered log takes new records");
    drop(wal);

    let (_wal, after) = open(&device).expect("a log written after recovery opens");
    let (new, old) = after.split_last().expect("the appended record");
    assert_eq!(
        old,
        &records[..],
        "writing after recovery changed older records"
    );
    assert_eq!(
        (new.sequence, &new.payload[..]),
        (appended, &b"after recovery"[..])
    );
});
