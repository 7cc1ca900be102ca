//! The shard runtime: each shard has one worker task on its owning core,
//! the only code that ever writes the shard's memtable.
//!
//! Other cores talk to a shard through a bounded channel of
//! [`ShardCommand`]s. Writes that touch one shard are executed entirely by
//! its worker; writes that touch several are run by a coordinator
//! ([`write_path`]) that first *holds* every participant, in ascending shard
//! order so two coordinators never deadlock, then sends each participant
//! its part to apply.

pub mod write_path;

use bytes::Bytes;
use futures_channel::oneshot;

use crate::store::error::KvError;
use crate::store::key_space::KeySpace;
use crate::store::memtable::Version;
use crate::store::revision::{PendingRevision, RevisionSlot};
use crate::store::shard_map::ShardId;
use crate::store::write::{self, ChangeSet, WriteContext, WriteRequest, WriteResponse};

/// Capacity of each shard's command channel. Senders wait when it is full,
/// which pushes back on the connections producing the load.
pub const SHARD_QUEUE_CAPACITY: usize = 1024;

/// A write's result: the response and the revision it took, if any.
#[derive(Debug)]
pub struct WriteOutcome {
    pub response: WriteResponse,
    pub revision: Option<i64>,
}

pub type WriteReply = oneshot::Sender<Result<WriteOutcome, KvError>>;

pub enum ShardCommand {
    /// Execute a write whose keys all live on this shard.
    Write {
        request: WriteRequest,
        reply: WriteReply,
    },
    /// Start no other write until the coordinator lets go (drops the sender
    /// behind `commands`); meanwhile obey only `commands`.
    Hold {
        held: oneshot::Sender<()>,
        commands: flume::Receiver<HeldCommand>,
    },
    /// Free history below `revision` (the compaction point is already
    /// recorded in the key space).
    Compact {
        revision: i64,
        done: oneshot::Sender<()>,
    },
}

/// What a coordinator may ask of a shard it holds.
pub enum HeldCommand {
    Apply {
        changes: Vec<(Bytes, Version)>,
        revision: i64,
        applied: oneshot::Sender<()>,
    },
}

/// A shard's worker: owns the right to write `shard`'s memtable.
pub struct ShardWorker {
    shard: ShardId,
    space: std::sync::Arc<KeySpace>,
    /// The owning core's revision slot, shared with the core's other tasks.
    slot: RevisionSlot,
}

impl ShardWorker {
    pub fn new(shard: ShardId, space: std::sync::Arc<KeySpace>, slot: RevisionSlot) -> Self {
        Self { shard, space, slot }
    }

    /// The worker loop. Returns when every sender is gone (shutdown).
    pub async fn run(self, commands: flume::Receiver<ShardCommand>) {
        while let Ok(command) = commands.recv_async().await {
            match command {
                ShardCommand::Write { request, reply } => {
                    let outcome = run_write(&self.space, &self.slot, request).map(
                        |(outcome, changes, pending)| {
                            self.apply(
                                &changes.changes.into_iter().collect::<Vec<_>>(),
                                changes.revision,
                            );
                            drop(pending);
                            outcome
                        },
                    );
                    // The requester may have gone away; the write stands.
                    let _ = reply.send(outcome);
                }
                ShardCommand::Hold {
                    held,
                    commands: held_commands,
                } => {
                    if held.send(()).is_ok() {
                        while let Ok(HeldCommand::Apply {
                            changes,
                            revision,
                            applied,
                        }) = held_commands.recv_async().await
                        {
                            self.apply(&changes, revision);
                            let _ = applied.send(());
                        }
                    }
                }
                ShardCommand::Compact { revision, done } => {
                    self.space.memtable(self.shard).compact(revision);
                    let _ = done.send(());
                }
            }
        }
    }

    fn apply(&self, changes: &[(Bytes, Version)], revision: i64) {
        let memtable = self.space.memtable(self.shard);
        for (key, version) in changes {
            debug_assert_eq!(
                self.space.shard_map().shard_of(key),
                self.shard,
                "change routed to the wrong shard"
            );
            memtable.insert(key.clone(), revision, version.clone());
        }
    }
}

/// Prepares and executes `request` against the current state, taking a
/// revision only if it changes something. The caller must hold every shard
/// the request touches and apply the returned changes before dropping the
/// pending revision.
pub fn run_write(
    space: &KeySpace,
    slot: &RevisionSlot,
    request: WriteRequest,
) -> Result<(WriteOutcome, ChangeSet, Option<PendingRevision>), KvError> {
    // Leases arrive with the lease service; until then no lease exists.
    let lease_exists = |_: i64| false;
    let mut context = WriteContext {
        space,
        begin_revision: space.clock().watermark(),
        // The shards this write touches are held still: read their newest state.
        read_revision: write::LATEST,
        lease_exists: &lease_exists,
    };
    let prepared = write::prepare(&context, request)?;
    let pending = prepared.changes_something.then(|| slot.take());
    let revision = pending.as_ref().map(PendingRevision::revision);
    if let Some(revision) = revision {
        context.begin_revision = revision - 1;
    }
    let (response, changes) = write::execute(&context, &prepared, revision);
    Ok((WriteOutcome { response, revision }, changes, pending))
}
