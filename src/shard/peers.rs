//! Where a shard worker's Raft messages for the group's other members go.
//!
//! The worker calls the outbox after the fdatasync its messages may depend
//! on (`RaftGroup::persist`); delivery may fail silently, as Raft expects of
//! a network. The peer transport implements it between processes; tests
//! route messages between workers in one process.

use raft::eraftpb::Message;

pub trait PeerOutbox {
    fn send(&self, message: Message);
}

/// A member alone: a single voter has no one to send to, and Raft gives it
/// nothing to send.
pub struct NoPeers;

impl PeerOutbox for NoPeers {
    fn send(&self, message: Message) {
        debug_assert!(false, "a single voter produced a message: {message:?}");
        tracing::warn!(
            to = message.to,
            "dropping a Raft message: this member has no peers"
        );
    }
}
