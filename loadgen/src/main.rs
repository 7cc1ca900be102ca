//! `loadgen`: a load generator for etcd-compatible servers, flag-compatible
//! with etcd's `benchmark` tool, plus capacity planning (`plan`).
//!
//! - [`cli`]: the command line.
//! - [`grpc_client`]: a small gRPC client over `h2`.
//! - [`pacing`]: the shared schedule (budget, open-loop due times).
//! - [`runner`]: worker threads, connections and clients.
//! - [`recorder`], [`report`]: HDR histograms and etcd-shaped reports.
//! - [`keys`]: etcd's key layout and a small RNG.
//! - [`workload`]: put, range, txn-put, txn-mixed, watch, watch-latency,
//!   lease-keepalive.
//! - [`plan`]: stepping the offered rate up to find the SLO knee, with a
//!   chart and a table.

mod cli;
mod grpc_client;
mod keys;
mod pacer;
mod pacing;
mod plan;
mod progress;
mod recorder;
mod report;
mod runner;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use progress::Progress;

/// The same allocator as the server. The worker threads allocate a request
/// and a response per call; mimalloc took loadgen's CPU per put from
/// 8.7-8.9 µs to 8.3-8.5 µs, a gain within the run-to-run noise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Workload(workload) => {
            let progress = Progress::new(cli.global.quiet || cli.global.json);
            workload::run(&cli.global, workload, &progress).map(|report| {
                if cli.global.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("reports serialize")
                    );
                } else {
                    print!("{}", report.render());
                }
                report.failures()
            })
        }
        Command::Plan(args) => plan::run(&cli.global, args),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::from(2)
        }
    }
}
