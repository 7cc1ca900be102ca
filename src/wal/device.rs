//! The storage abstraction under the WAL, and the aligned buffer it writes
//! from.
//!
//! A [`StorageDevice`] is one directory holding the WAL's segment files; a
//! [`DeviceFile`] is one open file in it. Two implementations exist:
//! [`super::DirectDevice`] (real files, `O_DIRECT`, monoio) and
//! [`super::MemoryDevice`] (an in-memory twin with fault injection for tests).
//!
//! Invariants every implementation keeps:
//! - `write_at` writes whole blocks: `offset` and `buffer.len()` are multiples
//!   of [`BLOCK_SIZE`]. With `O_DIRECT` this is what the kernel requires; for
//!   the WAL it means a write never shares a block with earlier data.
//! - Nothing written is durable until `sync_data` on that file returns `Ok`.
//!   A created or removed file name is durable only after `sync_directory`.
//! - A failed `sync_data` leaves it unknown what reached the disk; callers do
//!   not retry (see `Wal::sync`).

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::io;
use std::ptr::NonNull;

/// The unit of every write and of every buffer alignment: 4 KiB, the page
/// size and the logical block size of every disk we target (512-byte-sector
/// disks accept 4 KiB-aligned `O_DIRECT` I/O too).
pub const BLOCK_SIZE: usize = 4096;

/// One directory holding the WAL's segment files.
#[allow(
    async_fn_in_trait,
    reason = "monoio executors are single-threaded, so the futures need not be Send"
)]
pub trait StorageDevice: Clone + 'static {
    type File: DeviceFile;

    /// Opens `name` in the directory for reading and writing. With `create`,
    /// creates a new empty file and fails with `AlreadyExists` if one is
    /// there already: the WAL never reuses a segment name, so an existing
    /// file would mean something else is wrong and must not be clobbered.
    async fn open_file(&self, name: &str, create: bool) -> io::Result<Self::File>;
    /// Names of the files in the directory, in no particular order.
    async fn list_files(&self) -> io::Result<Vec<String>>;
    /// Removes `name`; durable after the next `sync_directory`.
    async fn remove_file(&self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to` (replacing nothing: `to` must not exist);
    /// durable after the next `sync_directory`. Open handles stay valid.
    async fn rename_file(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes file creations and removals in the directory durable.
    async fn sync_directory(&self) -> io::Result<()>;
}

/// One open file of a [`StorageDevice`].
#[allow(
    async_fn_in_trait,
    reason = "monoio executors are single-threaded, so the futures need not be Send"
)]
#[allow(
    clippy::len_without_is_empty,
    reason = "`len` is the file size for preallocation checks; emptiness is never asked"
)]
pub trait DeviceFile {
    /// Writes all of `buffer` at `offset`. `offset` and `buffer.len()` are
    /// multiples of [`BLOCK_SIZE`]. Returns the buffer for reuse (monoio owns
    /// buffers while the kernel uses them).
    async fn write_at(&self, offset: u64, buffer: AlignedBuffer)
    -> (io::Result<()>, AlignedBuffer);
    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// `fdatasync`: makes every completed write to this file durable.
    async fn sync_data(&self) -> io::Result<()>;
    /// Preallocates (`fallocate`) so the file is at least `len` bytes long.
    /// Never shrinks the file.
    async fn allocate(&self, len: u64) -> io::Result<()>;
    /// Current length of the file in bytes.
    async fn len(&self) -> io::Result<u64>;
}

/// A heap buffer whose start address and capacity are multiples of
/// [`BLOCK_SIZE`], as `O_DIRECT` requires.
///
/// Invariant: every byte in `[len, capacity)` is zero. So growing the length
/// (`resize`, `pad_to_block`) exposes zeros without writing them, and a frame
/// is zero-padded to its block boundary for free. Shrinking re-zeroes the
/// bytes it drops.
pub struct AlignedBuffer {
    /// Start of an allocation of `capacity` bytes with alignment
    /// [`BLOCK_SIZE`]; never null, never dangling (capacity is at least one
    /// block, so there is always a real allocation).
    pointer: NonNull<u8>,
    capacity: usize,
    /// Bytes in use (what `write_at` writes, what `as_slice` shows).
    len: usize,
}

impl AlignedBuffer {
    /// An empty buffer holding at least `capacity` bytes (rounded up to
    /// whole blocks, at least one block), all zero.
    pub fn with_capacity(capacity: usize) -> AlignedBuffer {
        let capacity = round_up_to_block(capacity.max(1));
        let layout = Self::layout(capacity);
        // SAFETY: `layout` has a non-zero size (at least one block) and a
        // valid power-of-two alignment, as `alloc_zeroed` requires.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(pointer) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        AlignedBuffer {
            pointer,
            capacity,
            len: 0,
        }
    }

    fn layout(capacity: usize) -> Layout {
        // A capacity that is a multiple of 4096 and fits `isize` (the caller
        // just allocated or is about to allocate it) always makes a valid
        // layout; anything else is a bug in this file, not bad input.
        Layout::from_size_align(capacity, BLOCK_SIZE).expect("block-aligned layout is valid")
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated (a multiple of [`BLOCK_SIZE`]).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `pointer` is valid for `capacity` bytes, all initialised
        // (allocated zeroed), and `len <= capacity`. The shared borrow of
        // `self` prevents writes for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the exclusive borrow of `self` makes
        // this the only access for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.len) }
    }

    /// Makes sure `capacity >= wanted`, keeping the contents. Grows at least
    /// geometrically so repeated appends stay amortised O(1).
    pub fn reserve_total(&mut self, wanted: usize) {
        if wanted <= self.capacity {
            return;
        }
        let mut grown = AlignedBuffer::with_capacity(wanted.max(self.capacity.saturating_mul(2)));
        grown.len = self.len;
        grown.as_mut_slice().copy_from_slice(self.as_slice());
        *self = grown;
    }

    /// Appends `bytes`, growing the allocation if needed.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let start = self.len;
        self.resize(start + bytes.len());
        self.as_mut_slice()[start..].copy_from_slice(bytes);
    }

    /// Sets the length to `new_len`. Growing exposes zeros; shrinking zeroes
    /// the dropped bytes (keeping the zero-tail invariant).
    pub fn resize(&mut self, new_len: usize) {
        if new_len > self.len {
            self.reserve_total(new_len);
        } else {
            let old_len = self.len;
            // Zero `[new_len, old_len)` while it is still inside `len`.
            self.as_mut_slice()[new_len..old_len].fill(0);
        }
        self.len = new_len;
    }

    /// Grows the length to the next multiple of [`BLOCK_SIZE`] (zero bytes).
    pub fn pad_to_block(&mut self) {
        self.resize(round_up_to_block(self.len));
    }

    /// Empties the buffer (zeroing what was used), keeping the allocation.
    pub fn clear(&mut self) {
        self.resize(0);
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: `pointer` came from `alloc_zeroed` with exactly this
        // layout (capacity never changes without replacing the whole
        // buffer) and is freed only here, once.
        unsafe { dealloc(self.pointer.as_ptr(), Self::layout(self.capacity)) }
    }
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AlignedBuffer")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

// SAFETY: monoio pins the buffer while the kernel reads from it; the heap
// allocation behind `pointer` does not move when the `AlignedBuffer` value
// moves, so `read_ptr` stays valid and stable, and `len` initialised bytes
// are readable there (all `capacity` bytes are initialised).
unsafe impl monoio::buf::IoBuf for AlignedBuffer {
    fn read_ptr(&self) -> *const u8 {
        self.pointer.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: as for `IoBuf`: the allocation is stable and `capacity` bytes are
// writable at `write_ptr`. Reads land in `[0, bytes_total)`, and `set_init`
// never raises `len` past `capacity`.
unsafe impl monoio::buf::IoBufMut for AlignedBuffer {
    fn write_ptr(&mut self) -> *mut u8 {
        self.pointer.as_ptr()
    }

    fn bytes_total(&mut self) -> usize {
        self.capacity
    }

    unsafe fn set_init(&mut self, position: usize) {
        // Same rule as monoio's impl for Vec: only ever grows the length.
        // The bytes up to `position` were written by the kernel or are the
        // zeros from allocation, so they are initialised either way.
        if position > self.len {
            self.len = position.min(self.capacity);
        }
    }
}

/// `value` rounded up to a multiple of [`BLOCK_SIZE`].
pub(crate) const fn round_up_to_block(value: usize) -> usize {
    value.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_aligned_and_zero_tailed() {
        let mut buffer = AlignedBuffer::with_capacity(10);
        assert_eq!(buffer.capacity(), BLOCK_SIZE);
        assert_eq!(buffer.as_slice().as_ptr() as usize % BLOCK_SIZE, 0);
        buffer.extend_from_slice(&[7; 5000]);
        assert_eq!(buffer.len(), 5000);
        assert_eq!(buffer.capacity() % BLOCK_SIZE, 0);
        assert_eq!(buffer.as_slice().as_ptr() as usize % BLOCK_SIZE, 0);
        buffer.pad_to_block();
        assert_eq!(buffer.len(), 2 * BLOCK_SIZE);
        assert!(buffer.as_slice()[5000..].iter().all(|&byte| byte == 0));
        buffer.resize(3);
        buffer.resize(5000);
        assert_eq!(&buffer.as_slice()[..3], &[7, 7, 7]);
        assert!(buffer.as_slice()[3..].iter().all(|&byte| byte == 0));
        buffer.clear();
        assert!(buffer.is_empty());
        buffer.resize(BLOCK_SIZE);
        assert!(buffer.as_slice().iter().all(|&byte| byte == 0));
    }
}
