//! Members talking to members: the peer protocol (`frame`, pure) and its
//! TCP transport (`transport`). Layout and rules: `docs/peer-protocol.md`.

pub mod frame;
pub mod transport;
#[cfg(test)]
mod transport_tests;
