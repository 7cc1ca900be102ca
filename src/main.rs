//! `metastore`: start the server. With no arguments it serves on
//! 127.0.0.1:2379 with data directory ./default.metastore, like etcd.

use std::process::ExitCode;

use metastore::config::{self, ConfigError, ServerConfig};
use tracing_subscriber::EnvFilter;

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
        eprintln!("error: {command:?} is not available yet");
        return ExitCode::from(2);
    }
    let available_cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let config = match ServerConfig::from_flags(flags, available_cores) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(config.log_level.as_filter()))
        .with_writer(std::io::stderr)
        .init();
    let node = match metastore::runtime::start(&config) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    wait_for_shutdown_signal();
    tracing::info!("received shutdown signal, exiting");
    node.log_summary();
    ExitCode::SUCCESS
}

/// Blocks the main thread until SIGINT or SIGTERM.
fn wait_for_shutdown_signal() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            let _ = signals.forever().next();
        }
        Err(error) => {
            tracing::error!(%error, "cannot install signal handlers; running until killed");
            loop {
                std::thread::park();
            }
        }
    }
}
