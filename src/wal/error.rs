//! Errors of the WAL layer. Format-level problems (`format::FormatError`)
//! never escape: the log decides whether they are a torn tail (dropped) or
//! corruption (`WalError::Corrupt`).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// `WalOptions` failed validation.
    #[error("invalid WAL options: {reason}")]
    InvalidOptions { reason: String },

    /// A device operation failed. After a failed `sync` the process must
    /// abort: the kernel may have dropped the unwritten pages, so a retried
    /// fsync could report success for data that is gone.
    #[error("WAL I/O error while {operation} ({file}): {source}")]
    Io {
        operation: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },

    /// Acknowledged data is damaged: a bad frame or segment header is
    /// followed by later valid data, so it cannot be a torn final write.
    #[error(
        "WAL corruption in segment file {file} at byte offset {offset}: {reason}. \
         Records before this point are intact, but acknowledged records after it \
         cannot be recovered from this member's log, so MetaStore refuses to start \
         rather than silently lose them. Restore this member's data directory from a \
         backup, or save a copy of the data directory for diagnosis and then remove it \
         so the member starts empty (in a cluster it is then re-populated by its peers)."
    )]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },

    /// Space for the log could not be allocated ahead of need (the
    /// filesystem or a quota is full). Nothing was written and the WAL
    /// stays usable: unlike a failed fsync, this is not fatal.
    #[error("no space for the WAL while {operation} ({file}): {source}")]
    NoSpace {
        operation: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },

    /// A single record is too large for its u32 length prefix.
    #[error("record {sequence} is {length} bytes; a WAL record is at most {max} bytes")]
    RecordTooLarge {
        sequence: u64,
        length: usize,
        max: usize,
    },

    /// The records buffered for one sync exceed what one frame can describe.
    #[error("{bytes} bytes buffered for one sync; a WAL frame holds at most {max} bytes")]
    FrameTooLarge { bytes: usize, max: usize },

    /// An earlier `sync` failed or was cancelled part-way. The WAL refuses
    /// all further writes: it never retries an fsync.
    #[error(
        "the WAL is unusable after an earlier failed or cancelled sync; the process must restart"
    )]
    Failed,
}

impl WalError {
    /// For allocations made ahead of need: running out of space (ENOSPC,
    /// EDQUOT) is `NoSpace`, anything else `Io`.
    pub(crate) fn allocation(
        operation: &'static str,
        file: impl Into<String>,
    ) -> impl FnOnce(io::Error) -> WalError {
        let file = file.into();
        move |source| {
            if is_out_of_space(&source) {
                WalError::NoSpace {
                    operation,
                    file,
                    source,
                }
            } else {
                WalError::Io {
                    operation,
                    file,
                    source,
                }
            }
        }
    }

    pub(crate) fn io(
        operation: &'static str,
        file: impl Into<String>,
    ) -> impl FnOnce(io::Error) -> WalError {
        let file = file.into();
        move |source| WalError::Io {
            operation,
            file,
            source,
        }
    }
}

/// Whether `error` says the filesystem (or the user's quota) is full.
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}
