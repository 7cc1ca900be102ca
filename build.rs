//! Generates Rust types for the etcd v3 wire protocol from `proto/`.
//!
//! Parsing is done by the pure-Rust `protox` compiler, so no `protoc`
//! binary is needed. Only messages and enums are generated; the gRPC
//! layer is hand-written.

use std::io::Result;

const PROTO_ROOT: &str = "proto";

const PROTO_FILES: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "grpc/health/v1/health.proto",
];

fn main() -> Result<()> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let files: Vec<String> = PROTO_FILES
        .iter()
        .map(|f| format!("{PROTO_ROOT}/{f}"))
        .collect();
    let fds = protox::compile(&files, [PROTO_ROOT])
        .map_err(|e| std::io::Error::other(format!("protox: {e:?}")))?;

    prost_build::Config::new()
        // All `bytes` fields become `bytes::Bytes` (zero-copy slices of the
        // receive buffer) instead of `Vec<u8>`.
        .bytes(["."])
        .compile_fds(fds)
}
