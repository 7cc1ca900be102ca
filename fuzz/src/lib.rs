//! Helpers shared by the fuzz targets in `fuzz_targets/` (see `README.md`).
//!
//! - [`BoundedAllocator`]: aborts on any single allocation above a limit,
//!   so "a length field sized an allocation" is a crash even without a
//!   sanitizer (`--sanitizer none`, which works on the stable toolchain,
//!   leaves libFuzzer's `-malloc_limit_mb` without its malloc hooks).
//! - [`Input`]: reads structured parameters off the front of an input.
//! - [`chunk_lengths`]: turns fuzzer bytes into a way of splitting a stream,
//!   for the "same result however the input is chunked" properties.
//! - [`block_on_ready`]: runs a future that never waits (the WAL over the
//!   in-memory device) to completion without an executor.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Largest single allocation any target may make. Far above what a valid
/// input of libFuzzer's sizes needs (the largest legitimate one is the WAL
/// twin's 1 MiB segment and read window), far below what a length field
/// read from the input could ask for (up to 4 GiB or more).
pub const ALLOCATION_LIMIT: usize = 64 << 20;

/// The system allocator, refusing allocations above [`ALLOCATION_LIMIT`].
/// Each target installs it with `#[global_allocator]`.
pub struct BoundedAllocator;

impl BoundedAllocator {
    fn check(size: usize) {
        if size > ALLOCATION_LIMIT {
            // Abort rather than panic: unwinding allocates, and libFuzzer
            // reports SIGABRT as a crash and saves the input.
            eprintln!(
                "fuzz: an allocation of {size} bytes exceeds the {ALLOCATION_LIMIT}-byte limit; \
                 a length read from the input probably sized it"
            );
            std::process::abort();
        }
    }
}

// SAFETY: forwards to `System` unchanged after a size check that only
// aborts; every `GlobalAlloc` contract is `System`'s.
unsafe impl GlobalAlloc for BoundedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: same layout, same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Structured parameters read off the front of a fuzz input; reading past
/// the end yields zeros, so every input is usable.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&first, rest)) => {
                self.bytes = rest;
                first
            }
            None => 0,
        }
    }

    /// Up to `count` bytes (fewer at the end of the input).
    pub fn take(&mut self, count: usize) -> &'a [u8] {
        let (taken, rest) = self.bytes.split_at(count.min(self.bytes.len()));
        self.bytes = rest;
        taken
    }

    pub fn u32_le(&mut self) -> u32 {
        let mut word = [0u8; 4];
        let taken = self.take(4);
        word[..taken.len()].copy_from_slice(taken);
        u32::from_le_bytes(word)
    }

    pub fn u64_le(&mut self) -> u64 {
        let mut word = [0u8; 8];
        let taken = self.take(8);
        word[..taken.len()].copy_from_slice(taken);
        u64::from_le_bytes(word)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

/// Reads a chunking plan: one count byte (0..16 lengths follow), each
/// length byte giving a chunk of 1..=64 bytes; the plan repeats until the
/// stream is used up. No lengths means one-byte chunks.
pub fn chunk_lengths(input: &mut Input<'_>) -> Vec<usize> {
    let count = usize::from(input.byte() % 16);
    let lengths: Vec<usize> = input
        .take(count)
        .iter()
        .map(|byte| 1 + usize::from(byte % 64))
        .collect();
    if lengths.is_empty() { vec![1] } else { lengths }
}

/// Splits `stream` into consecutive pieces of the planned lengths.
pub fn split<'a>(stream: &'a [u8], lengths: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = stream;
    for length in lengths.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at((*length).min(rest.len()));
        pieces.push(piece);
        rest = after;
    }
    pieces
}

/// Runs a future that completes without ever waiting (the WAL over
/// `MemoryDevice`, whose operations are all immediate). Panics if it does
/// wait: that would be a bug in the twin, not an input the target handles.
pub fn block_on_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut context) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a MemoryDevice operation waited; the twin never should"),
    }
}

/// Makes `image`'s snapshot header (`docs/snapshot-format.md`) claim
/// exactly the bytes after it, with correct magic, version and checksums
/// (flags are left as they are), so that mutations of the archive reach
/// rkyv's validation instead of stopping at a checksum. Too short: as is.
pub fn forge_snapshot_image(image: &mut [u8]) {
    const HEADER: usize = 32;
    if image.len() < HEADER {
        return;
    }
    image[0..8].copy_from_slice(b"METASNAP");
    image[8..12].copy_from_slice(&2u32.to_le_bytes());
    let archive_length = (image.len() - HEADER) as u64;
    image[16..24].copy_from_slice(&archive_length.to_le_bytes());
    let archive_crc = crc32c::crc32c(&image[HEADER..]);
    image[24..28].copy_from_slice(&archive_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&image[..28]);
    image[28..32].copy_from_slice(&header_crc.to_le_bytes());
}

/// Rewrites every checksum of a backup file (`docs/backup-format.md`) that
/// can be found by walking it: the file header's, each frame's (forging
/// the snapshot image inside leases and versions frames first), and the
/// trailing SHA-256 if the length says there is one. Lengths, kinds and
/// the end frame's counts stay as they are.
pub fn forge_backup(file: &mut [u8]) {
    use sha2::Digest;
    const FILE_HEADER: usize = 32;
    const FRAME_HEADER: usize = 16;
    let data_length = if file.len() % 512 == 32 {
        file.len() - 32
    } else {
        file.len()
    };
    let data = &mut file[..data_length];
    if data.len() >= FILE_HEADER {
        let crc = crc32c::crc32c(&data[..28]);
        data[28..32].copy_from_slice(&crc.to_le_bytes());
        let mut offset = FILE_HEADER;
        while let Some(header) = data.get(offset..offset + FRAME_HEADER) {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            let body_start = offset + FRAME_HEADER;
            let Some(body) = data.get_mut(body_start..body_start.saturating_add(length)) else {
                break;
            };
            if kind == 1 || kind == 2 {
                forge_snapshot_image(body);
            }
            let body_crc = crc32c::crc32c(body);
            data[offset + 8..offset + 12].copy_from_slice(&body_crc.to_le_bytes());
            let header_crc = crc32c::crc32c(&data[offset..offset + 12]);
            data[offset + 12..offset + 16].copy_from_slice(&header_crc.to_le_bytes());
            if kind == 3 {
                break;
            }
            offset = body_start + length;
        }
    }
    if data_length < file.len() {
        let hash: [u8; 32] = sha2::Sha256::digest(&file[..data_length]).into();
        file[data_length..].copy_from_slice(&hash);
    }
}
