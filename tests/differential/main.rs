//! Differential tests: the same scripted requests go to a fresh real etcd and
//! to a fresh MetaStore; every response (or gRPC error) must be identical
//! after normalizing the fields that legitimately differ (cluster_id,
//! member_id, raft_term in every ResponseHeader, nested ones included).
//!
//! Each section runs against its own pair of fresh servers, so revisions line
//! up (both start at revision 1). All differences of a section are collected
//! and reported together, each with the step name and a line diff.
//!
//! Environment:
//! * `DIFF_SELF_CHECK=1` compares etcd against a second etcd instead of
//!   MetaStore (validates the harness and the normalization).
//! * `CI` set: a missing `etcd` binary is a failure instead of a skip.
//!
//! Layout: [`harness`] holds the comparison driver ([`harness::Diff`]) and
//! response normalization, [`requests`] the request builders shared by the
//! sections, [`streams`] the streaming (Watch, LeaseKeepAlive) and Lease
//! extensions of the driver; every other module is one section (or a few
//! related ones).

#[path = "../common/mod.rs"]
mod common;

mod harness;
mod requests;
mod streams;

mod compaction;
mod delete;
mod grpc_protocol;
mod lease;
mod limits;
mod maintenance;
mod put;
mod range;
mod txn_compare;
mod txn_semantics;
mod watch;
