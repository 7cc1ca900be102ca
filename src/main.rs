//! `metastore`: start the server. With no arguments it serves on
//! 127.0.0.1:2379 with data directory ./default.metastore, like etcd.

use std::process::ExitCode;

use metastore::config::{self, ConfigError, ServerConfig, SnapshotCommand, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: the cores are threads, and glibc
/// gives each a heap of its own that it grew and shrank with `mprotect`
/// (about 35,000 calls per 200,000 puts). With mimalloc the server's CPU
/// per put went from 21.4-22.1 µs to 18.2-18.5 µs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let flags = match config::load(std::env::args_os(), |name| std::env::var_os(name)) {
        Ok(flags) => flags,
        // Usage errors, --help and --version, printed and exited as clap does.
        Err(ConfigError::CommandLine(error)) => error.exit(),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(command) = flags.command {
        return run_subcommand(command);
    }
    let available_cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    // Before anything opens a file, and before the connection cap's
    // default is sized for the limit.
    let open_files = metastore::runtime::raise_open_file_limit();
    let config = match ServerConfig::from_flags(flags, available_cores, open_files.now) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    // Fault injection for tests (`FAILPOINTS=name=action`); compiled to
    // nothing unless the `fail` crate's `failpoints` feature is on, which
    // only the test build turns on.
    let _failpoints = fail::FailScenario::setup();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(config.log_level.as_filter()))
        .with_writer(std::io::stderr)
        .init();
    match &open_files.error {
        None => tracing::info!(
            before = open_files.before,
            now = open_files.now,
            max_connections = ?config.connection_limits.max_connections,
            "open file limit"
        ),
        Some(error) => tracing::warn!(
            limit = open_files.now,
            %error,
            max_connections = ?config.connection_limits.max_connections,
            "cannot raise the open file limit to its hard limit"
        ),
    }
    let node = match metastore::runtime::start(&config) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    if wait_for_shutdown(&node) == Shutdown::Removed {
        // etcd's words; exit status 0: the member did what was asked of the
        // cluster, and a supervisor must not start it again.
        tracing::warn!("the member has been permanently removed from the cluster");
        // Answers in flight (the MemberRemove itself, when asked of this
        // member) get a moment to go out.
        std::thread::sleep(std::time::Duration::from_millis(500));
        node.log_summary();
        return ExitCode::SUCCESS;
    }
    tracing::info!("received shutdown signal, exiting");
    // A cluster member leading groups hands them on first (bounded, so a
    // member cut off from the others still stops).
    node.hand_off_leadership(std::time::Duration::from_secs(5));
    node.log_summary();
    ExitCode::SUCCESS
}

#[derive(PartialEq)]
enum Shutdown {
    Signal,
    Removed,
}

/// Waits for SIGINT or SIGTERM, or for the cluster to remove this member.
fn wait_for_shutdown(node: &metastore::runtime::Node) -> Shutdown {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot install signal handlers; running until killed or removed");
            loop {
                if node.is_removed() {
                    return Shutdown::Removed;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    loop {
        if signals.pending().next().is_some() {
            return Shutdown::Signal;
        }
        if node.is_removed() {
            return Shutdown::Removed;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs a tool instead of the server. Exit status 2 for a bad input (a
/// corrupt snapshot file, a non-empty target, a data directory that cannot
/// be repaired), 1 for a failure while writing.
fn run_subcommand(command: Subcommand) -> ExitCode {
    match command {
        Subcommand::Repair { data_dir, apply } => repair(&data_dir, apply),
        Subcommand::Snapshot(SnapshotCommand::Restore {
            file,
            data_dir,
            shards,
        }) => {
            let shards = shards.map(|shards| shards as usize);
            match metastore::snapshot::restore::restore(&file, &data_dir, shards) {
                Ok(summary) => {
                    println!(
                        "restored {} versions and {} leases at revision {} (compacted at {}) into {} with {} shards; cluster ID {:x}, member ID {:x}{}",
                        summary.versions,
                        summary.leases,
                        summary.revision,
                        summary.compacted_revision,
                        data_dir.display(),
                        summary.shards,
                        summary.cluster_id,
                        summary.member_id,
                        if summary.verified_hash {
                            ""
                        } else {
                            " (the file had no SHA-256 to verify)"
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(if error.is_usage_error() { 2 } else { 1 })
                }
            }
        }
    }
}

/// `metastore repair`: prints what a repair drops; with `apply`, does it.
fn repair(data_dir: &std::path::Path, apply: bool) -> ExitCode {
    let failed = |error: metastore::repair::RepairError| {
        eprintln!("error: {error}");
        ExitCode::from(if error.is_usage_error() { 2 } else { 1 })
    };
    let (mut directory, plan) = match metastore::repair::examine(data_dir) {
        Ok(examined) => examined,
        Err(error) => return failed(error),
    };
    println!("{plan}");
    if plan.losses.is_empty() {
        return ExitCode::SUCCESS;
    }
    if !apply {
        println!(
            "Nothing was changed. To repair: metastore repair --data-dir {} --apply",
            data_dir.display()
        );
        return ExitCode::SUCCESS;
    }
    match metastore::repair::apply(&mut directory, &plan) {
        Ok(repaired) => {
            for shard in repaired {
                println!(
                    "repaired shard {}: its log now holds {} records under log id {:#018x}; the damaged log is kept in {}",
                    shard.shard,
                    shard.records,
                    shard.new_log_id,
                    shard.damaged_log.display()
                );
            }
            println!("The data directory can start now.");
            ExitCode::SUCCESS
        }
        Err(error) => failed(error),
    }
}
