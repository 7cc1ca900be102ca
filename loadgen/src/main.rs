//! `loadgen`: the etcd-benchmark-compatible load generator. Its workloads
//! arrive with the loadgen issue; until then it says so and exits non-zero.

fn main() -> std::process::ExitCode {
    eprintln!("loadgen: no workloads yet (see the loadgen issue); nothing was run");
    std::process::ExitCode::from(2)
}
