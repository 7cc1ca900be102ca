//! `metastore repair`: the way out when a start is refused because a
//! shard's log lost records that had been durable (`shard::durable_loss`).
//!
//! Without `--apply` it only reads and says exactly what a repair drops:
//! which shard logs are cut where, and which revisions the next start
//! then discards (the kept history stays a prefix, so multi-shard writes
//! stay atomic and no kept write depends on a lost one). With `--apply` it
//! rewrites each such shard's log with its readable records under a new
//! log id, so other logs' claims about the damaged one no longer bind, and
//! keeps the damaged log beside it for diagnosis. The next start then
//! proceeds as after any crash.
//!
//! Crash safety of `--apply`, per shard: (1) the new log is written and
//! synced in `wal.repair-<time>`; (2) the old log id is recorded as
//! retired in `metastore.json` (atomically); (3) `wal` and
//! `wal.repair-<time>` are swapped with one `renameat2(RENAME_EXCHANGE)`;
//! (4) the old log is renamed `wal.damaged-<time>`. A crash before (2)
//! leaves the old log in force (the start is refused again; rerun). A
//! crash between (2) and (3) leaves a retired log in force, which a start
//! refuses as an unfinished repair; rerun. Leftover `wal.repair-*`
//! directories are tidied on the next run: a retired log is kept as
//! `wal.damaged-*`, an unfinished new copy removed.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::data_dir::{DataDir, DataDirError, ShardDirectories, shard_directories};
use crate::shard::durable_loss::{DurableLoss, RetiredLog, RevisionsAtStake, find_durable_losses};
use crate::shard::recovery::{ShardInventory, plan, read_shard};
use crate::wal::{DirectDevice, LogDamage, LogEnd, Wal, WalError, WalOptions};

/// The revision of an empty store (as the server's startup uses).
const INITIAL_REVISION: i64 = 1;
/// Payload bytes per frame of a rewritten log.
const REWRITE_FRAME_BYTES: usize = 8 << 20;

#[derive(Debug, Error)]
pub enum RepairError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(
        "{0}; this cannot be repaired by cutting the log: restore the data directory from a backup"
    )]
    Unrepairable(String),
    #[error("repair failed while {operation} ({path}): {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("repair failed while rewriting the log of shard {shard}: {source}")]
    Wal { shard: u32, source: WalError },
    #[error("cannot run the I/O executor: {0}")]
    Runtime(std::io::Error),
}

impl RepairError {
    /// True when the data directory is at fault, not the machine: the
    /// command exits with 2 then.
    pub fn is_usage_error(&self) -> bool {
        matches!(self, Self::DataDir(_) | Self::Unrepairable(_))
    }
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepairError {
    let path = path.to_owned();
    move |source| RepairError::Io {
        operation,
        path,
        source,
    }
}

/// What a repair does, found by reading only.
#[derive(Debug, Clone)]
pub struct RepairPlan {
    pub data_dir: PathBuf,
    pub shard_count: usize,
    /// Logs that lost durable records: each is cut at its readable end.
    pub losses: Vec<DurableLoss>,
    /// Damaged tails nothing proves durable: torn writes, which any start
    /// drops; no repair needed for them.
    pub torn_tails: Vec<(u32, LogDamage)>,
    /// What the next start discards once the cut logs are in place.
    pub at_stake: Option<RevisionsAtStake>,
    /// Per repaired shard, every log of it that some log names (and its
    /// current one): all are retired, so no claim about a log the repair
    /// replaced binds any more.
    pub retire: Vec<RetiredLog>,
}

/// One shard whose log was rewritten.
#[derive(Debug, Clone)]
pub struct RepairedShard {
    pub shard: u32,
    pub records: usize,
    pub new_log_id: u64,
    /// Where the damaged log was kept.
    pub damaged_log: PathBuf,
}

/// Reads every shard of `data_dir` (holding its lock) and works out what a
/// repair would drop.
pub fn examine(data_dir: &Path) -> Result<(DataDir, RepairPlan), RepairError> {
    let directory = DataDir::open_existing(data_dir)?;
    let shard_count = directory.meta.shard_count;
    let retired = directory.meta.retired_wal_logs.clone();
    let inventories = block_on(read_inventories(data_dir, shard_count, retired.clone()))??;
    let plan = plan(&inventories, INITIAL_REVISION);
    let losses = find_durable_losses(&inventories, &retired);
    let torn_tails = inventories
        .iter()
        .filter(|inventory| !losses.iter().any(|loss| loss.shard == inventory.shard))
        .filter_map(|inventory| match &inventory.log.end {
            LogEnd::Damaged(damage) => Some((inventory.shard, damage.clone())),
            _ => None,
        })
        .collect();
    let at_stake = RevisionsAtStake::of(&inventories, &plan);
    let mut retire: Vec<RetiredLog> = Vec::new();
    for loss in &losses {
        let named = inventories
            .iter()
            .flat_map(|inventory| inventory.claims.iter())
            .filter(|claim| claim.shard == loss.shard)
            .map(|claim| claim.log_id)
            .chain([loss.log.log_id]);
        for log_id in named {
            let log = RetiredLog {
                shard: loss.shard,
                log_id,
            };
            if !retire.contains(&log) {
                retire.push(log);
            }
        }
    }
    Ok((
        directory,
        RepairPlan {
            data_dir: data_dir.to_owned(),
            shard_count,
            losses,
            torn_tails,
            at_stake,
            retire,
        },
    ))
}

/// Carries out `plan`: rewrites every log that lost durable records.
pub fn apply(
    directory: &mut DataDir,
    plan: &RepairPlan,
) -> Result<Vec<RepairedShard>, RepairError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    let mut repaired = Vec::new();
    for loss in &plan.losses {
        let directories = shard_directories(&directory.path, loss.shard as usize);
        let (old_log_id, new_log) = block_on(rewrite_log(loss.shard, &directories, stamp))??;
        let retired = plan
            .retire
            .iter()
            .filter(|log| log.shard == loss.shard)
            .copied()
            .chain([RetiredLog {
                shard: loss.shard,
                log_id: old_log_id,
            }]);
        for log in retired {
            directory.retire_wal_log(log)?;
        }
        let damaged_log = swap_in(&directories, &new_log.path, stamp)?;
        repaired.push(RepairedShard {
            shard: loss.shard,
            records: new_log.records,
            new_log_id: new_log.log_id,
            damaged_log,
        });
    }
    Ok(repaired)
}

fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, RepairError> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(RepairError::Runtime)?;
    Ok(runtime.block_on(future))
}

async fn read_inventories(
    data_dir: &Path,
    shard_count: usize,
    retired: Vec<RetiredLog>,
) -> Result<Vec<ShardInventory>, RepairError> {
    let mut inventories = Vec::with_capacity(shard_count);
    for shard in 0..shard_count {
        let directories = shard_directories(data_dir, shard);
        tidy_interrupted_repairs(shard as u32, &directories, &retired).await?;
        let on_disk = read_shard(shard, &directories)
            .await
            .map_err(RepairError::Unrepairable)?;
        inventories.push(on_disk.inventory);
    }
    Ok(inventories)
}

/// The directory holding a shard's `wal` and `snap`.
fn shard_root(directories: &ShardDirectories) -> &Path {
    directories.wal.parent().unwrap_or(Path::new("."))
}

/// Handles `wal.repair-*` left by an interrupted `--apply`: one holding a
/// retired log is the damaged original (kept as `wal.damaged-*`); any
/// other is an unfinished new copy (removed).
async fn tidy_interrupted_repairs(
    shard: u32,
    directories: &ShardDirectories,
    retired: &[RetiredLog],
) -> Result<(), RepairError> {
    let root = shard_root(directories);
    let Ok(listing) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(suffix) = name.strip_prefix("wal.repair-") else {
            continue;
        };
        let path = entry.path();
        let device =
            DirectDevice::open(&path).map_err(io_error("opening a leftover repair", &path))?;
        let log_id = Wal::read(device).await.map(|reading| reading.log_id()).ok();
        let was_retired =
            log_id.is_some_and(|log_id| retired.contains(&RetiredLog { shard, log_id }));
        if was_retired {
            let kept = root.join(format!("wal.damaged-{suffix}"));
            std::fs::rename(&path, &kept).map_err(io_error("keeping a damaged log", &path))?;
        } else {
            std::fs::remove_dir_all(&path)
                .map_err(io_error("removing an unfinished repair", &path))?;
        }
        sync_directory(root)?;
    }
    Ok(())
}

/// A rewritten log, not yet in place.
struct NewLog {
    path: PathBuf,
    log_id: u64,
    records: usize,
}

/// Writes the readable records of `shard`'s log into a new log (new id) in
/// `wal.repair-<stamp>`; returns the old log's id and the new log.
async fn rewrite_log(
    shard: u32,
    directories: &ShardDirectories,
    stamp: u64,
) -> Result<(u64, NewLog), RepairError> {
    let wal_error = |source| RepairError::Wal { shard, source };
    let device = DirectDevice::open(&directories.wal)
        .map_err(io_error("opening the WAL", &directories.wal))?;
    let mut reading = Wal::read(device).await.map_err(wal_error)?;
    let old_log_id = reading.log_id();
    let records = reading.take_records();
    drop(reading);
    let path = shard_root(directories).join(format!("wal.repair-{stamp}"));
    std::fs::create_dir(&path).map_err(io_error("creating the new log's directory", &path))?;
    let device = DirectDevice::open(&path).map_err(io_error("opening the new log", &path))?;
    let (mut wal, _) = Wal::open(device, WalOptions::default())
        .await
        .map_err(wal_error)?;
    let mut buffered = 0;
    for record in &records {
        wal.append(&record.payload);
        buffered += record.payload.len();
        if buffered >= REWRITE_FRAME_BYTES {
            wal.sync().await.map_err(wal_error)?;
            buffered = 0;
        }
    }
    wal.sync().await.map_err(wal_error)?;
    let log_id = wal.log_id();
    drop(wal);
    sync_directory(&path)?;
    Ok((
        old_log_id,
        NewLog {
            path,
            log_id,
            records: records.len(),
        },
    ))
}

/// Puts `new_log` in place of the shard's `wal` in one atomic exchange and
/// keeps the old one as `wal.damaged-<stamp>`; returns its path.
fn swap_in(
    directories: &ShardDirectories,
    new_log: &Path,
    stamp: u64,
) -> Result<PathBuf, RepairError> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    let root = shard_root(directories);
    renameat_with(CWD, &directories.wal, CWD, new_log, RenameFlags::EXCHANGE)
        .map_err(|errno| io_error("swapping in the new log", &directories.wal)(errno.into()))?;
    sync_directory(root)?;
    let damaged = root.join(format!("wal.damaged-{stamp}"));
    std::fs::rename(new_log, &damaged).map_err(io_error("keeping the damaged log", new_log))?;
    sync_directory(root)?;
    Ok(damaged)
}

fn sync_directory(path: &Path) -> Result<(), RepairError> {
    std::fs::File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error("syncing a directory", path))
}

impl fmt::Display for RepairPlan {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "data directory {} ({} shards)",
            self.data_dir.display(),
            self.shard_count
        )?;
        if self.losses.is_empty() {
            writeln!(
                formatter,
                "No shard log lost durable records: nothing to repair."
            )?;
        }
        for loss in &self.losses {
            writeln!(formatter, "- {loss}.")?;
            writeln!(
                formatter,
                "  Repair: cut this log after record {} (everything after it is dropped) by \
                 rewriting its readable records as a new log; the damaged log is kept beside it as \
                 shards/{:04}/wal.damaged-<time>.",
                loss.log.readable_through, loss.shard
            )?;
        }
        for (shard, damage) in &self.torn_tails {
            writeln!(
                formatter,
                "- shard {shard}: its log ends in a torn write ({} at byte offset {}: {}); no other \
                 log proves it durable, so any start drops it (it was never acknowledged).",
                damage.file, damage.offset, damage.reason
            )?;
        }
        match &self.at_stake {
            Some(at_stake) => write!(formatter, "The next start discards {at_stake}."),
            None => write!(formatter, "The next start discards no key revision."),
        }
    }
}
