//! Our gRPC layer over the `h2` crate.
//!
//! - [`codec`], [`status`], [`timeout`]: pure protocol code (framing,
//!   status trailers, deadlines), no I/O.
//! - [`call`]: one call's request stream and response sink over an h2
//!   stream; unary, server-streaming and bidirectional calls all use them.
//! - [`inbound`]: watches a client's bytes before any decoder does: the
//!   connection's stage and bounded header blocks ([`hpack_scan`] counts
//!   a block's cost without decoding it; [`h2_frames`] is the frame
//!   layout both need).
//! - [`authority`]: accepts etcd 3.4 clients' URL-shaped `:authority`,
//!   which h2 alone would reject.
//! - [`connection`]: one HTTP/2 connection (prior-knowledge h2c): our
//!   limits, a task per call, keepalive pings, idle close, refusal;
//!   [`deadlines`]: the deadline of each stage of a new connection.
//! - [`send_budget`], [`frame_meter`]: a connection's bound on response
//!   bytes encoded and not yet written, kept from the frames that pass
//!   its socket.
//! - [`server`]: one call: checks its headers, counts, rate limits, times
//!   and isolates it, and hands it to a [`server::GrpcService`].
//! - [`rate_limit`]: node-wide and per-method token buckets (GCRA).
//! - [`write_coalescing`]: holds h2's writes until it flushes, so the
//!   frames of one turn leave in one system call.

pub mod authority;
pub mod call;
pub mod codec;
pub mod connection;
pub mod deadlines;
pub mod frame_meter;
pub mod h2_frames;
pub mod hpack_scan;
pub mod inbound;
pub mod rate_limit;
pub mod send_budget;
pub mod server;
pub mod status;
pub mod timeout;
pub mod write_coalescing;

pub use call::{RequestStream, ResponseSink};
pub use status::{Code, Status};

#[cfg(test)]
mod server_tests;
