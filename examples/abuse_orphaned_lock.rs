//! Issue 18's orphaned Lock waiter, as a measurement driver.
//!
//! Against a running server (MetaStore or etcd): a holder takes a lock, a
//! waiter on its own connection waits for it and then abandons the call,
//! once by resetting its stream (RST_STREAM) and once by dropping its
//! connection. Every lease is kept alive throughout, so only the server
//! can remove the waiter's key. Prints, per way of abandoning, how long
//! the waiter's key lived (capped at `--patience`) and, after the holder
//! unlocked, how long a new client waited for the lock (capped too: if the
//! orphan took the lock, nobody else gets it while its lease lives).
//!
//! ```text
//! cargo run --release --example abuse_orphaned_lock -- --endpoint 127.0.0.1:2379
//! ```

#[path = "../tests/common/raw_client.rs"]
mod raw_client;

#[path = "../tests/common/orphaned_lock.rs"]
mod orphaned_lock;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use orphaned_lock::{Abandon, abandon_lock_waiter};

#[derive(Parser, Debug)]
struct Arguments {
    /// The server's client address.
    #[arg(long)]
    endpoint: SocketAddr,
    /// The longest any one wait lasts, in seconds.
    #[arg(long, default_value_t = 30)]
    patience: u64,
}

fn main() {
    let arguments = Arguments::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let patience = Duration::from_secs(arguments.patience);
    let mut line = Vec::new();
    for (how, label) in [
        (Abandon::ResetStream, "reset"),
        (Abandon::DropConnection, "drop"),
    ] {
        let name = format!("/abuse/orphaned-lock/{label}");
        match runtime.block_on(abandon_lock_waiter(
            arguments.endpoint,
            &name,
            how,
            patience,
        )) {
            Ok(report) => {
                let shown = |after: Option<Duration>| match after {
                    Some(after) => format!("{:.3}", after.as_secs_f64()),
                    None => format!(">{}", arguments.patience),
                };
                line.push(format!(
                    "{label}_orphan_key_seconds={} {label}_next_lock_seconds={}",
                    shown(report.key_gone_after),
                    shown(report.next_acquired_after)
                ));
            }
            Err(error) => {
                eprintln!("abuse_orphaned_lock ({label}): {error}");
                std::process::exit(1);
            }
        }
    }
    println!("{}", line.join(" "));
}
