//! Applying a shard command from a committed log entry: the one way a
//! shard's key-value state and the node's lease table change (design §6).
//!
//! The same function serves the live path (a worker applies what Raft
//! committed, in log order) and recovery (replaying the log after the
//! snapshot), so a restart rebuilds exactly the state the running process
//! had. Entries carry resolved results (`log_entry`), so applying evaluates
//! nothing: every member applies an entry to the same effect.

use std::time::Instant;

use super::log_entry::ShardCommandRecord;
use crate::store::key_space::KeySpace;
use crate::store::shard_map::ShardId;

/// Applies `command` to `shard`'s memtable and the lease table. Stepwise
/// freeing of history for a compaction record is the caller's (the worker
/// runs it between turns, recovery once at the end). `now` starts the TTL
/// of a granted lease.
pub fn apply_command(space: &KeySpace, shard: ShardId, command: &ShardCommandRecord, now: Instant) {
    let memtable = space.memtable(shard);
    for change in &command.changes {
        debug_assert_eq!(
            space.shard_map().shard_of(&change.key),
            shard,
            "change logged on the wrong shard"
        );
        memtable.insert(change.key.clone(), command.revision, change.to_version());
    }
    if let Some(grant) = &command.lease_grant {
        space.leases().insert(grant.id, grant.ttl_seconds, now);
    }
    if command.lease_revoke != 0 {
        space.leases().remove(command.lease_revoke);
    }
    if command.compact_revision > 0 {
        // Raised already where the compaction was asked for; on the other
        // members of a cluster reads below it must fail from now on, as
        // the history they would need is being freed.
        space.restore_compaction(command.compact_revision);
    }
    if command.void_from > 0 {
        // On a server alone replay skips void revisions and this finds
        // nothing; on a cluster member it undoes parts the failed lead
        // member's groups committed of writes that did not happen.
        memtable.remove_revisions(command.void_from, command.void_to);
    }
    let clock = space.clock();
    if clock.is_cluster_member() {
        if command.revision > 0 {
            // Whoever took it, this member's sequencer is above it should
            // it become the lead member.
            clock.observe_applied(command.revision);
            let parts = command.participants.len().max(1) as u32;
            clock.part_applied(command.revision, parts);
        }
        if command.void_from > 0 {
            clock.void_applied(shard as u32, command.void_from, command.void_to);
            // A voided revision is never taken again: a later lead member
            // starts above it (a writer still waiting on it learns it was
            // voided, and no reader may see a new write appear there).
            clock.observe_applied(command.void_to);
        }
    }
}
