//! Our gRPC layer over the `h2` crate.
//!
//! - [`codec`], [`status`], [`timeout`]: pure protocol code (framing,
//!   status trailers, deadlines), no I/O.
//! - [`call`]: one call's request stream and response sink over an h2
//!   stream; unary, server-streaming and bidirectional calls all use them.
//! - [`authority`]: accepts etcd 3.4 clients' URL-shaped `:authority`,
//!   which h2 alone would reject.
//! - [`server`]: accepts HTTP/2 connections (prior-knowledge h2c), checks
//!   each request's headers and hands the call to a [`server::GrpcService`].

pub mod authority;
pub mod call;
pub mod codec;
pub mod server;
pub mod status;
pub mod timeout;

pub use call::{RequestStream, ResponseSink};
pub use status::{Code, Status};

#[cfg(test)]
mod server_tests;
