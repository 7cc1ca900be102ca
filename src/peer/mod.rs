//! Members talking to members: the peer protocol (`frame` and the
//! forwarded calls it carries, `forward`; both pure) and its TCP transport
//! (`transport`). Layout and rules: `docs/peer-protocol.md`.

pub mod forward;
pub mod frame;
pub mod join;
pub mod queues;
pub mod snapshot_stream;
pub mod transport;
#[cfg(test)]
mod transport_tests;
