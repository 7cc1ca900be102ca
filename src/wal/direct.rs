//! `DirectDevice`: WAL segment files in a real directory, opened with
//! `O_DIRECT` and read, written and synced through monoio (io_uring, or
//! the epoll driver's blocking fallback).
//!
//! - Data I/O (`write_at`, `read_at`, `sync_data`) goes through monoio from
//!   [`AlignedBuffer`]s, so `O_DIRECT`'s alignment rules always hold.
//! - `list_files` uses `std::fs` (short, at startup; monoio 0.2 has no
//!   readdir) and `fallocate` is a direct syscall; `remove_file` renames
//!   through monoio and frees the file gradually on a thread of its own,
//!   since unlinking a large segment stalls the disk's journal.
//! - If the filesystem refuses `O_DIRECT` (`EINVAL`, e.g. older tmpfs), the
//!   device falls back to buffered I/O for all its files and warns once.
//!   Durability is unchanged (every sync is still an `fdatasync`); only the
//!   page cache is used.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use monoio::buf::IoBufMut;

use super::device::{AlignedBuffer, BLOCK_SIZE, DeviceFile, StorageDevice, round_up_to_block};

/// Appended to a released segment's name while it is being freed.
const RELEASED_SUFFIX: &str = ".released";

#[derive(Clone)]
pub struct DirectDevice {
    directory: PathBuf,
    /// Whether files are opened with `O_DIRECT`; cleared (for this device,
    /// for good) the first time the filesystem refuses it.
    use_direct_io: Cell<bool>,
}

impl DirectDevice {
    /// Uses `dir` (created if missing) for the WAL's segment files.
    pub fn open(dir: &Path) -> io::Result<DirectDevice> {
        std::fs::create_dir_all(dir)?;
        // Segments released before a crash and not yet freed.
        let leftovers: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.to_str()
                    .is_some_and(|path| path.ends_with(RELEASED_SUFFIX))
            })
            .collect();
        if !leftovers.is_empty() {
            drop(crate::data_dir::spawn_gradual_removal(leftovers));
        }
        Ok(DirectDevice {
            directory: dir.to_path_buf(),
            use_direct_io: Cell::new(true),
        })
    }

    /// The directory holding the segment files.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Whether files are opened with `O_DIRECT` (false after a fallback).
    pub fn uses_direct_io(&self) -> bool {
        self.use_direct_io.get()
    }

    async fn open_with(
        &self,
        path: &Path,
        create: bool,
        direct: bool,
    ) -> io::Result<monoio::fs::File> {
        let mut flags = libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        monoio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
            .await
    }
}

impl StorageDevice for DirectDevice {
    type File = DirectFile;

    async fn open_file(&self, name: &str, create: bool) -> io::Result<DirectFile> {
        let path = self.directory.join(name);
        let file = if self.use_direct_io.get() {
            match self.open_with(&path, create, true).await {
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    self.use_direct_io.set(false);
                    tracing::warn!(
                        directory = %self.directory.display(),
                        "the filesystem refuses O_DIRECT; the WAL falls back to buffered I/O \
                         (every sync is still an fdatasync, so durability is unchanged)"
                    );
                    match self.open_with(&path, create, false).await {
                        // Linux checks O_DIRECT support after O_CREAT made
                        // the file, so the refused attempt may have created
                        // it. O_EXCL proved it did not exist before, so this
                        // is our new, empty file.
                        Err(error) if create && error.kind() == io::ErrorKind::AlreadyExists => {
                            self.open_with(&path, false, false).await?
                        }
                        other => other?,
                    }
                }
                other => other?,
            }
        } else {
            self.open_with(&path, create, false).await?
        };
        Ok(DirectFile { file, path })
    }

    async fn list_files(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.directory)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    async fn remove_file(&self, name: &str) -> io::Result<()> {
        // Renamed out of the log's names first (recovery ignores other
        // names) and the rename made durable, so a crash while the file is
        // freed never leaves a shortened segment that recovery would take
        // for a damaged log. Then freed gradually off the core
        // (`remove_gradually` says why: one unlink of a 64 MiB segment
        // stalled the WAL's own syncs 40-50 ms).
        let released = self.directory.join(format!("{name}{RELEASED_SUFFIX}"));
        monoio::fs::rename(self.directory.join(name), &released).await?;
        self.sync_directory().await?;
        let _ = crate::data_dir::spawn_gradual_removal(vec![released]).await;
        Ok(())
    }

    async fn rename_file(&self, from: &str, to: &str) -> io::Result<()> {
        let target = self.directory.join(to);
        if std::fs::symlink_metadata(&target).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", target.display()),
            ));
        }
        monoio::fs::rename(self.directory.join(from), target).await
    }

    async fn sync_directory(&self) -> io::Result<()> {
        // fsync on a directory descriptor makes its entries durable.
        let directory = monoio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&self.directory)
            .await?;
        directory.sync_all().await?;
        directory.close().await
    }
}

/// One segment file of a [`DirectDevice`].
pub struct DirectFile {
    file: monoio::fs::File,
    path: PathBuf,
}

impl DeviceFile for DirectFile {
    async fn write_at(
        &self,
        offset: u64,
        buffer: AlignedBuffer,
    ) -> (io::Result<()>, AlignedBuffer) {
        if !offset.is_multiple_of(BLOCK_SIZE as u64) || !buffer.len().is_multiple_of(BLOCK_SIZE) {
            let error = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unaligned write of {} bytes at {offset}", buffer.len()),
            );
            return (Err(error), buffer);
        }
        // `write_all_at` resubmits the rest after a short write.
        self.file.write_all_at(buffer, offset).await
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        // O_DIRECT reads need an aligned offset, length and buffer: read the
        // enclosing whole blocks and copy out the part asked for.
        let skip = (offset % BLOCK_SIZE as u64) as usize;
        let start = offset - skip as u64;
        let wanted = round_up_to_block(skip + len);
        let mut buffer = AlignedBuffer::with_capacity(wanted);
        let mut filled = 0usize;
        while filled < wanted {
            let (result, slice) = self
                .file
                .read_at(buffer.slice_mut(filled..wanted), start + filled as u64)
                .await;
            buffer = slice.into_inner();
            match result {
                Ok(0) => break, // end of file
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        let end = filled.min(skip + len);
        Ok(buffer
            .as_slice()
            .get(skip..end)
            .unwrap_or_default()
            .to_vec())
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data().await
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        if self.len().await? >= len {
            return Ok(()); // never shrink, and skip the syscall when done
        }
        let length = libc::off_t::try_from(len).map_err(io::Error::other)?;
        let descriptor = self.file.as_raw_fd();
        // A blocking syscall on the executor thread: it runs once per
        // segment (every 64 MiB by default) and monoio 0.2 has no async
        // fallocate. Mode 0 allocates blocks and extends the file size.
        // SAFETY: `descriptor` is an open file owned by `self.file` for the
        // duration of the call; fallocate reads no memory of ours.
        let result = unsafe { libc::fallocate(descriptor, 0, 0, length) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(error);
        }
        // The filesystem cannot preallocate: extend the size with ftruncate
        // instead. The file is then sparse, so each write also allocates
        // blocks and the fdatasync after it carries that metadata: slower
        // syncs, identical durability.
        // SAFETY: as above; ftruncate only grows the file here (we checked
        // `len` exceeds the current length).
        let result = unsafe { libc::ftruncate(descriptor, length) };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    async fn len(&self) -> io::Result<u64> {
        // statx on the descriptor via monoio.
        Ok(self.file.metadata().await?.len())
    }
}

impl std::fmt::Debug for DirectFile {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DirectFile")
            .field("path", &self.path)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::{FIRST_FRAME_OFFSET, FRAME_HEADER_LEN, decode_frame_header};
    use crate::wal::{Wal, WalError, WalOptions};

    const OPTIONS: WalOptions = WalOptions {
        segment_bytes: 1 << 20,
    };

    fn payload(sequence: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|index| (sequence as usize * 7 + index) as u8)
            .collect()
    }

    /// Whether `error` says the filesystem refused our I/O flags outright.
    fn refused(error: &WalError) -> bool {
        matches!(error, WalError::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL))
    }

    async fn round_trip(directory: &Path) -> Result<(), WalError> {
        let mut expected = Vec::new();
        {
            let (mut wal, records) = Wal::open(
                DirectDevice::open(directory).map_err(WalError::io("open", "dir"))?,
                OPTIONS,
            )
            .await?;
            assert!(records.is_empty());
            for frame in 0..40u64 {
                for record in 0..=frame % 4 {
                    let len = if record == 0 {
                        90_000
                    } else {
                        100 + frame as usize
                    };
                    let bytes = payload(frame * 10 + record, len);
                    expected.push((wal.append(&bytes), bytes));
                }
                let report = wal.sync().await?;
                assert_eq!(report.frames, 1);
            }
            assert!(
                wal.segment_names().len() >= 3,
                "rotated: {:?}",
                wal.segment_names()
            );
            let first = directory.join(&wal.segment_names()[0]);
            assert_eq!(
                std::fs::metadata(first).map(|meta| meta.len()).ok(),
                Some(OPTIONS.segment_bytes)
            );
        }
        // Reopen: everything is back.
        let (wal, records) = Wal::open(
            DirectDevice::open(directory).map_err(WalError::io("open", "dir"))?,
            OPTIONS,
        )
        .await?;
        let recovered: Vec<_> = records
            .iter()
            .map(|record| (record.sequence, record.payload.to_vec()))
            .collect();
        assert_eq!(recovered, expected);
        // Damage the last frame on disk: it is dropped as a torn tail.
        let last_name = wal.segment_names().last().cloned().expect("a segment");
        let last_path = directory.join(&last_name);
        let mut bytes = std::fs::read(&last_path).map_err(WalError::io("read", "segment"))?;
        let mut offset = FIRST_FRAME_OFFSET as usize;
        let mut last_frame = (offset, 0u32);
        while let Ok(Some(header)) = decode_frame_header(&bytes[offset..]) {
            last_frame = (offset, header.record_count);
            offset += header.frame_len() as usize;
        }
        drop(wal);
        bytes[last_frame.0 + FRAME_HEADER_LEN + 1] ^= 0x40;
        std::fs::write(&last_path, &bytes).map_err(WalError::io("write", "segment"))?;
        let device = DirectDevice::open(directory).map_err(WalError::io("open", "dir"))?;
        let (mut wal, records) = Wal::open(device, OPTIONS).await?;
        expected.truncate(expected.len() - last_frame.1 as usize);
        assert_eq!(records.len(), expected.len());
        // Release everything before the last segment, write on, reopen.
        let names = wal.segment_names();
        wal.release_before(wal.durable_sequence() + 1).await?;
        assert_eq!(wal.segment_names(), names[names.len() - 1..]);
        let bytes = payload(999, 5000);
        let sequence = wal.append(&bytes);
        wal.sync().await?;
        let first_kept =
            crate::wal::format::parse_segment_file_name(&names[names.len() - 1]).expect("name");
        drop(wal);
        let (_, records) = Wal::open(
            DirectDevice::open(directory).map_err(WalError::io("open", "dir"))?,
            OPTIONS,
        )
        .await?;
        let mut kept: Vec<_> = expected
            .into_iter()
            .filter(|(sequence, _)| *sequence >= first_kept)
            .collect();
        kept.push((sequence, bytes));
        let recovered: Vec<_> = records
            .iter()
            .map(|record| (record.sequence, record.payload.to_vec()))
            .collect();
        assert_eq!(recovered, kept);
        Ok(())
    }

    /// Runs `round_trip` in a fresh directory on disk (not tmpfs, where
    /// O_DIRECT may be refused) and reports a refusal as a skip.
    fn check(driver: &str, run: impl FnOnce(&Path) -> Result<(), WalError>) {
        let directory = tempfile::tempdir_in("/var/tmp")
            .or_else(|_| tempfile::tempdir())
            .expect("create a temporary directory");
        match run(directory.path()) {
            Ok(()) => {}
            Err(error) if refused(&error) => {
                println!(
                    "skipping the DirectDevice test ({driver}): O_DIRECT and buffered I/O both refused: {error}"
                );
            }
            Err(error) => panic!("DirectDevice round trip ({driver}): {error}"),
        }
    }

    #[test]
    fn direct_device_round_trip_with_io_uring_when_available() {
        check("fusion driver", |directory| {
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .expect("build a monoio runtime")
                .block_on(round_trip(directory))
        });
    }

    #[test]
    fn direct_device_round_trip_with_the_epoll_driver() {
        check("legacy driver", |directory| {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("build a monoio runtime")
                .block_on(round_trip(directory))
        });
    }
}
