//! `MemoryDevice`: the WAL's storage kept in memory, with a model of what is
//! durable and hooks to inject crashes, torn writes, bit rot and fsync
//! failures. Used by the WAL's tests and benchmarks; never by the server.
//!
//! Durability model (a simplification of Linux with a journaling
//! filesystem):
//! - each file has its current bytes and its durable bytes; `sync_data`
//!   copies current to durable (size changes from `allocate` included, as
//!   `fdatasync` flushes the metadata needed to read the data back);
//! - the directory has its current names and its durable names; creation
//!   and removal become durable at `sync_directory`;
//! - `crash` keeps only what is durable. Handles opened before a crash stop
//!   working, so a test cannot keep using a WAL that "died".

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use super::device::{AlignedBuffer, BLOCK_SIZE, DeviceFile, StorageDevice};

/// Cloneable handle: every clone sees the same files, so a test keeps one
/// while the WAL owns another.
#[derive(Clone, Default)]
pub struct MemoryDevice {
    state: Rc<RefCell<State>>,
}

#[derive(Default, Clone)]
struct State {
    /// File contents by identity. A file lives here while a current or a
    /// durable name refers to it.
    files: BTreeMap<u64, FileData>,
    /// The directory as a reader sees it now.
    names: BTreeMap<String, u64>,
    /// The directory as it would be after a crash.
    durable_names: BTreeMap<String, u64>,
    next_file_id: u64,
    /// Bumped by every crash; handles from an earlier epoch are dead.
    epoch: u64,
    last_write: Option<LastWrite>,
    fail_next_sync: bool,
    write_count: u64,
    sync_count: u64,
    directory_sync_count: u64,
    largest_read: usize,
    /// Bytes the "disk" holds in all (`None`: unlimited). Growing a file
    /// (`allocate`, or a write past its end) beyond it fails with ENOSPC
    /// and changes nothing, as a full filesystem does.
    capacity: Option<u64>,
}

#[derive(Default, Clone)]
struct FileData {
    current: SparseBytes,
    durable: SparseBytes,
    /// Byte range written since the last successful `sync_data`, so a sync
    /// copies only that (segments are 64 MiB; copying all of one per sync
    /// would make the benchmark measure memcpy).
    dirty: Option<(usize, usize)>,
}

impl FileData {
    fn mark_dirty(&mut self, start: usize, end: usize) {
        self.dirty = Some(match self.dirty {
            Some((low, high)) => (low.min(start), high.max(end)),
            None => (start, end),
        });
    }

    fn make_durable(&mut self) {
        // Size first (covers `allocate`), then the written bytes.
        self.durable.set_len(self.current.len());
        if let Some((start, end)) = self.dirty.take() {
            let end = end.min(self.current.len());
            let start = start.min(end);
            self.durable.write(start, &self.current.read(start, end));
        }
    }

    fn revert_to_durable(&mut self) {
        self.current = self.durable.clone();
        self.dirty = None;
    }
}

/// File contents with a logical length: bytes past `bytes.len()` (up to
/// `len`) are zeros that were never materialised. Preallocating a 64 MiB
/// segment is then free, as `fallocate` is on a real filesystem.
#[derive(Default, Clone)]
struct SparseBytes {
    /// Invariant: `bytes.len() <= len`.
    bytes: Vec<u8>,
    len: usize,
}

impl SparseBytes {
    fn from_vec(bytes: Vec<u8>) -> SparseBytes {
        SparseBytes {
            len: bytes.len(),
            bytes,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Grows (with zeros) or shrinks to `len`. Growing reserves the
    /// address space (not touched until written), so writes that fill a
    /// preallocated segment never reallocate and copy it.
    fn set_len(&mut self, len: usize) {
        self.bytes.truncate(len);
        self.bytes.reserve(len - self.bytes.len());
        self.len = len;
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        grow_zeroed(&mut self.bytes, end);
        self.bytes[offset..end].copy_from_slice(data);
        self.len = self.len.max(end);
    }

    /// Bytes `[start, end)`, clamped to the length.
    fn read(&self, start: usize, end: usize) -> Vec<u8> {
        let end = end.min(self.len);
        let start = start.min(end);
        let mut out = Vec::with_capacity(end - start);
        if let Some(materialised) = self.bytes.get(start..end.min(self.bytes.len())) {
            out.extend_from_slice(materialised);
        }
        grow_zeroed(&mut out, end - start);
        out
    }

    fn byte_mut(&mut self, offset: usize) -> Option<&mut u8> {
        if offset >= self.len {
            return None;
        }
        grow_zeroed(&mut self.bytes, offset + 1);
        self.bytes.get_mut(offset)
    }
}

/// Where the most recent write went. Its bytes are still in the file's
/// current content (no later write happened), so they are not copied.
#[derive(Clone)]
struct LastWrite {
    file_id: u64,
    offset: usize,
    len: usize,
}

impl MemoryDevice {
    pub fn new() -> MemoryDevice {
        MemoryDevice::default()
    }

    /// Power loss: every file reverts to its durable bytes, the directory to
    /// its durable names (files never made durable vanish; removals not made
    /// durable are undone).
    pub fn crash(&self) {
        let mut state = self.state.borrow_mut();
        state.epoch += 1;
        state.last_write = None;
        state.fail_next_sync = false;
        state.names = state.durable_names.clone();
        for file in state.files.values_mut() {
            file.revert_to_durable();
        }
        state.collect_unreferenced();
    }

    /// Power loss during the most recent `write_at`: its first `keep_bytes`
    /// bytes reach the disk on top of the file's durable bytes, the rest do
    /// not; then [`crash`](Self::crash).
    pub fn tear_last_write(&self, keep_bytes: usize) {
        {
            let mut state = self.state.borrow_mut();
            if let Some(write) = state.last_write.take()
                && let Some(file) = state.files.get_mut(&write.file_id)
            {
                let kept = file
                    .current
                    .read(write.offset, write.offset + keep_bytes.min(write.len));
                file.durable.write(write.offset, &kept);
            }
        }
        self.crash();
    }

    /// Bit rot: flips `bit` (0..8) of byte `byte_offset` of `file`, in both
    /// its current and durable bytes.
    pub fn flip_bit(&self, file: &str, byte_offset: usize, bit: u8) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let id = state.lookup(file)?;
        let data = state.file_mut(id)?;
        for bytes in [&mut data.current, &mut data.durable] {
            if let Some(byte) = bytes.byte_mut(byte_offset) {
                *byte ^= 1 << (bit % 8);
            }
        }
        if byte_offset >= data.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{file} has no byte {byte_offset}"),
            ));
        }
        Ok(())
    }

    /// An independent copy of the whole device (files, durability state,
    /// last write, counters): lets a test replay many faults from one setup.
    /// Handles opened on `self` do not work on the copy.
    pub fn fork(&self) -> MemoryDevice {
        let mut state = self.state.borrow().clone();
        state.epoch += 1;
        MemoryDevice {
            state: Rc::new(RefCell::new(state)),
        }
    }

    /// Length of the most recent `write_at` (0 if none since the last crash).
    pub fn last_write_len(&self) -> usize {
        self.state
            .borrow()
            .last_write
            .as_ref()
            .map_or(0, |write| write.len)
    }

    /// The next `sync_data` fails and makes nothing durable.
    pub fn fail_next_sync(&self) {
        self.state.borrow_mut().fail_next_sync = true;
    }

    /// Number of `write_at` calls so far.
    pub fn write_count(&self) -> u64 {
        self.state.borrow().write_count
    }

    /// Number of `sync_data` calls so far (failed ones included).
    pub fn sync_count(&self) -> u64 {
        self.state.borrow().sync_count
    }

    /// Number of `sync_directory` calls so far.
    pub fn directory_sync_count(&self) -> u64 {
        self.state.borrow().directory_sync_count
    }

    /// The largest `len` any `read_at` asked for: lets tests check that no
    /// length field read from "disk" sized a read (and so an allocation).
    pub fn largest_read(&self) -> usize {
        self.state.borrow().largest_read
    }

    /// Limits the bytes all files may take together (`None`: no limit);
    /// see [`used_bytes`](Self::used_bytes). Lowering it below what is used
    /// loses nothing; only growth fails.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.state.borrow_mut().capacity = capacity;
    }

    /// Bytes taken by every file still referenced (current lengths,
    /// preallocated space included).
    pub fn used_bytes(&self) -> u64 {
        self.state.borrow().used_bytes()
    }

    /// Current file names, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.state.borrow().names.keys().cloned().collect()
    }

    /// Current bytes of `name`, if it exists.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        let id = state.names.get(name)?;
        state
            .files
            .get(id)
            .map(|file| file.current.read(0, usize::MAX))
    }

    /// How many leading bytes of `name` have been written (durable or
    /// not); the rest of its length is preallocated and never written, as
    /// `fallocate`'s unwritten extents are.
    pub fn written_len(&self, name: &str) -> Option<usize> {
        let state = self.state.borrow();
        let id = state.names.get(name)?;
        state.files.get(id).map(|file| file.current.bytes.len())
    }

    /// Creates or replaces `name` with `bytes`, durable at once (name and
    /// content): for tests that plant damaged or foreign files.
    pub fn put_file(&self, name: &str, bytes: Vec<u8>) {
        let mut state = self.state.borrow_mut();
        let id = state.next_file_id;
        state.next_file_id += 1;
        state.files.insert(
            id,
            FileData {
                current: SparseBytes::from_vec(bytes.clone()),
                durable: SparseBytes::from_vec(bytes),
                dirty: None,
            },
        );
        state.names.insert(name.to_owned(), id);
        state.durable_names.insert(name.to_owned(), id);
        state.collect_unreferenced();
    }

    /// Shortens `name` to `len` bytes, durably (a lost tail).
    pub fn truncate_file(&self, name: &str, len: usize) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let id = state.lookup(name)?;
        let data = state.file_mut(id)?;
        let len = len.min(data.current.len());
        data.current.set_len(len);
        data.durable.set_len(len.min(data.durable.len()));
        Ok(())
    }
}

impl State {
    fn used_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|file| file.current.len().max(file.durable.len()) as u64)
            .sum()
    }

    /// Fails with ENOSPC if growing file `id` to `len` bytes would take the
    /// device past its capacity.
    fn reserve_growth(&self, id: u64, len: usize) -> io::Result<()> {
        let Some(capacity) = self.capacity else {
            return Ok(());
        };
        let current = self
            .files
            .get(&id)
            .map_or(0, |file| file.current.len().max(file.durable.len()));
        let growth = len.saturating_sub(current) as u64;
        if growth > 0 && self.used_bytes() + growth > capacity {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn lookup(&self, name: &str) -> io::Result<u64> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file {name}")))
    }

    fn file_mut(&mut self, id: u64) -> io::Result<&mut FileData> {
        self.files
            .get_mut(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file was removed"))
    }

    /// Drops contents no name (current or durable) refers to any more.
    fn collect_unreferenced(&mut self) {
        let State {
            files,
            names,
            durable_names,
            ..
        } = self;
        files.retain(|id, _| {
            names.values().any(|v| v == id) || durable_names.values().any(|v| v == id)
        });
    }
}

/// Extends `bytes` with zeros to `len` (no-op if already that long).
/// Appends slices of a zero block: `Vec::resize` fills byte by byte, which
/// is slow in the debug builds the tests run in.
fn grow_zeroed(bytes: &mut Vec<u8>, len: usize) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while bytes.len() < len {
        let step = (len - bytes.len()).min(ZEROS.len());
        bytes.extend_from_slice(&ZEROS[..step]);
    }
}

/// An open file of a [`MemoryDevice`].
pub struct MemoryFile {
    state: Rc<RefCell<State>>,
    id: u64,
    name: String,
    epoch: u64,
}

impl MemoryFile {
    /// Runs `operation` on this file's data, failing if the device crashed
    /// since the file was opened (the process that opened it is "dead").
    fn with_data<T>(
        &self,
        operation: impl FnOnce(&mut State, u64) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = self.state.borrow_mut();
        if state.epoch != self.epoch {
            return Err(io::Error::other(format!(
                "{}: handle opened before a simulated crash",
                self.name
            )));
        }
        if !state.files.contains_key(&self.id) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} was removed", self.name),
            ));
        }
        operation(&mut state, self.id)
    }
}

impl StorageDevice for MemoryDevice {
    type File = MemoryFile;

    async fn open_file(&self, name: &str, create: bool) -> io::Result<MemoryFile> {
        let mut state = self.state.borrow_mut();
        let id = match (state.names.get(name).copied(), create) {
            (Some(_), true) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{name} exists"),
                ));
            }
            (Some(id), false) => id,
            (None, false) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no file {name}"),
                ));
            }
            (None, true) => {
                let id = state.next_file_id;
                state.next_file_id += 1;
                state.files.insert(id, FileData::default());
                state.names.insert(name.to_owned(), id);
                id
            }
        };
        Ok(MemoryFile {
            state: Rc::clone(&self.state),
            id,
            name: name.to_owned(),
            epoch: state.epoch,
        })
    }

    async fn list_files(&self) -> io::Result<Vec<String>> {
        Ok(self.file_names())
    }

    async fn remove_file(&self, name: &str) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.lookup(name)?;
        state.names.remove(name);
        state.collect_unreferenced();
        Ok(())
    }

    async fn rename_file(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let id = state.lookup(from)?;
        if state.names.contains_key(to) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{to} exists"),
            ));
        }
        state.names.remove(from);
        state.names.insert(to.to_owned(), id);
        Ok(())
    }

    async fn sync_directory(&self) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.directory_sync_count += 1;
        state.durable_names = state.names.clone();
        state.collect_unreferenced();
        Ok(())
    }
}

impl DeviceFile for MemoryFile {
    async fn write_at(
        &self,
        offset: u64,
        buffer: AlignedBuffer,
    ) -> (io::Result<()>, AlignedBuffer) {
        let result = self.with_data(|state, id| {
            if !offset.is_multiple_of(BLOCK_SIZE as u64) || !buffer.len().is_multiple_of(BLOCK_SIZE)
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unaligned write of {} bytes at {offset}", buffer.len()),
                ));
            }
            let offset = usize::try_from(offset).map_err(io::Error::other)?;
            let end = offset + buffer.len();
            state.reserve_growth(id, end)?;
            let data = state.file_mut(id)?;
            data.current.write(offset, buffer.as_slice());
            data.mark_dirty(offset, end);
            state.write_count += 1;
            state.last_write = Some(LastWrite {
                file_id: id,
                offset,
                len: buffer.len(),
            });
            Ok(())
        });
        (result, buffer)
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.with_data(|state, id| {
            state.largest_read = state.largest_read.max(len);
            let data = state.file_mut(id)?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            Ok(data.current.read(start, start.saturating_add(len)))
        })
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.with_data(|state, id| {
            state.sync_count += 1;
            if state.fail_next_sync {
                state.fail_next_sync = false;
                return Err(io::Error::other("injected fsync failure"));
            }
            state.file_mut(id)?.make_durable();
            Ok(())
        })
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        self.with_data(|state, id| {
            let len = usize::try_from(len).map_err(io::Error::other)?;
            state.reserve_growth(id, len)?;
            let data = state.file_mut(id)?;
            if data.current.len() < len {
                data.current.set_len(len);
            }
            Ok(())
        })
    }

    async fn len(&self) -> io::Result<u64> {
        self.with_data(|state, id| Ok(state.file_mut(id)?.current.len() as u64))
    }
}
