//! Routing a write to its shards: the single-shard fast path, and the
//! coordinator for writes that span shards (design §4).

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;

use super::{HeldCommand, ShardCommand, WriteOutcome, run_write};
use crate::store::error::KvError;
use crate::store::key_space::KeySpace;
use crate::store::revision::RevisionSlot;
use crate::store::shard_map::ShardId;
use crate::store::write::{WriteRequest, touched_ranges};

/// A core's handle for submitting writes to any shard.
#[derive(Clone)]
pub struct WritePath {
    space: Arc<KeySpace>,
    /// One sender per shard, indexed by shard id.
    senders: Arc<[flume::Sender<ShardCommand>]>,
    /// This core's revision slot, for writes this core coordinates.
    slot: RevisionSlot,
}

impl WritePath {
    pub fn new(
        space: Arc<KeySpace>,
        senders: Arc<[flume::Sender<ShardCommand>]>,
        slot: RevisionSlot,
    ) -> Rc<Self> {
        Rc::new(Self {
            space,
            senders,
            slot,
        })
    }

    pub fn space(&self) -> &Arc<KeySpace> {
        &self.space
    }

    /// Runs `request` and returns once its effects are visible to every
    /// reader (the watermark has reached its revision), so a client that
    /// reads after the reply sees its write.
    pub async fn write(self: &Rc<Self>, request: WriteRequest) -> Result<WriteOutcome, KvError> {
        let participants: BTreeSet<ShardId> = touched_ranges(&request)
            .iter()
            .flat_map(|range| self.space.shards_for(range))
            .collect();
        let outcome = match participants.len() {
            0 => {
                // Nothing can change (e.g. an empty range); no shard to hold.
                let (outcome, _, _) = run_write(&self.space, &self.slot, request, None)?;
                outcome
            }
            1 => {
                let shard = *participants.first().expect("one participant");
                let (reply, response) = oneshot::channel();
                self.send(
                    shard,
                    ShardCommand::Write {
                        request,
                        reply,
                        queued_at: std::time::Instant::now(),
                    },
                )
                .await?;
                response
                    .await
                    .map_err(|_| KvError::ShardUnavailable(shard))??
            }
            _ => {
                // Spawned so that a client going away cannot cancel a
                // multi-shard write half way: the task runs to completion.
                let this = self.clone();
                monoio::spawn(async move { this.coordinate(request, participants).await }).await?
            }
        };
        if let Some(revision) = outcome.revision {
            let clock = self.space.clock();
            clock.wait_applied(revision).await;
            if clock.was_voided(revision) {
                // A cluster's new lead member voided it: it did not happen.
                return Err(KvError::LeaderChanged);
            }
        }
        Ok(outcome)
    }

    /// A cluster member's barrier for a linearizable read: returns once
    /// every group has applied here all it had committed when this was
    /// called, each group's leader having confirmed with a quorum that it
    /// still leads (ReadIndex). Every write acknowledged before is then
    /// within the readable prefix (`store::applied_revisions`). Asks again
    /// while a group's leader changes; gives up after `limit`.
    pub async fn confirm_reads(&self, limit: std::time::Duration) -> Result<(), KvError> {
        let deadline = std::time::Instant::now() + limit;
        // Every group asked at once; a group whose leader changed is asked
        // again.
        let mut waiting = Vec::new();
        for shard in self.space.shard_map().all_shards() {
            waiting.push((shard, self.ask_read_index(shard).await?));
        }
        for (shard, mut confirmed) in waiting {
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match monoio::time::timeout(left, confirmed).await {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) if std::time::Instant::now() < deadline => {
                        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                        confirmed = self.ask_read_index(shard).await?;
                    }
                    Ok(Err(_)) | Err(_) => return Err(KvError::RequestTimedOut),
                }
            }
        }
        Ok(())
    }

    async fn ask_read_index(&self, shard: ShardId) -> Result<oneshot::Receiver<()>, KvError> {
        let (done, confirmed) = oneshot::channel();
        self.send(shard, ShardCommand::ReadIndex { done }).await?;
        Ok(confirmed)
    }

    /// Logs a lease grant on the lease's home shard; returns once the lease
    /// is durable and in the table.
    pub async fn grant_lease(&self, id: i64, ttl_seconds: i64) -> Result<(), KvError> {
        let shard = crate::lease::home_shard(self.space.shard_map(), id);
        let (reply, granted) = oneshot::channel();
        self.send(
            shard,
            ShardCommand::GrantLease {
                id,
                ttl_seconds,
                reply,
            },
        )
        .await?;
        granted
            .await
            .map_err(|_| KvError::ShardUnavailable(shard))?
    }

    async fn send(&self, shard: ShardId, command: ShardCommand) -> Result<(), KvError> {
        self.senders[shard]
            .send_async(command)
            .await
            .map_err(|_| KvError::ShardUnavailable(shard))
    }

    /// Holds every participant (ascending: no two coordinators can wait on
    /// each other), evaluates the write against the held state, and has each
    /// participant apply its part before the revision is released.
    async fn coordinate(
        &self,
        request: WriteRequest,
        participants: BTreeSet<ShardId>,
    ) -> Result<WriteOutcome, KvError> {
        let mut holds: Vec<(ShardId, flume::Sender<HeldCommand>)> =
            Vec::with_capacity(participants.len());
        // What the held shards proposed and have not applied (nothing on a
        // server alone): the write is evaluated against it too.
        let mut pending_here = crate::store::pending::PendingVersions::default();
        for shard in participants {
            let (commands, held_commands) = flume::bounded(1);
            let (held, granted) = oneshot::channel();
            self.send(
                shard,
                ShardCommand::Hold {
                    held,
                    commands: held_commands,
                },
            )
            .await?;
            let pending = granted
                .await
                .map_err(|_| KvError::ShardUnavailable(shard))??;
            pending_here.absorb(pending);
            holds.push((shard, commands));
        }
        let (outcome, changes, pending) =
            run_write(&self.space, &self.slot, request, Some(&pending_here))?;
        if changes.is_empty() {
            // Nothing changed: nothing to log; releasing the holds is all.
            return Ok(outcome);
        }
        let shard_map = self.space.shard_map();
        let lease_home = changes
            .revoked_lease
            .map(|lease| crate::lease::home_shard(shard_map, lease));
        let mut parts: Vec<(ShardId, Vec<_>)> = Vec::new();
        for (shard, _) in &holds {
            let part: Vec<_> = changes
                .changes
                .iter()
                .filter(|(key, _)| shard_map.shard_of(key) == *shard)
                .map(|(key, version)| (key.clone(), version.clone()))
                .collect();
            if !part.is_empty() || lease_home == Some(*shard) {
                parts.push((*shard, part));
            }
        }
        // Recovery keeps this revision only if every shard listed here
        // logged its part (see `recovery`).
        let participants: Vec<u32> = parts.iter().map(|(shard, _)| *shard as u32).collect();
        let mut waits = Vec::new();
        for (shard, part) in parts {
            let commands = &holds
                .iter()
                .find(|(held, _)| *held == shard)
                .expect("every part belongs to a held shard")
                .1;
            let (durable, done) = oneshot::channel();
            let apply = HeldCommand::Apply {
                changes: part,
                revision: changes.revision,
                participants: participants.clone(),
                revoked_lease: changes.revoked_lease.filter(|_| lease_home == Some(shard)),
                durable,
            };
            // A failure from here on drops `pending` uncompleted, which
            // aborts the process: the revision must not be skipped.
            commands
                .send_async(apply)
                .await
                .map_err(|_| KvError::ShardUnavailable(shard))?;
            waits.push((shard, done));
        }
        // Every part is proposed and pending on its shard: later writes
        // there are evaluated against it, so the shards may go on.
        drop(holds);
        let mut refused = None;
        for (shard, done) in waits {
            match done.await {
                Ok(Ok(())) => {}
                // Only a cluster member's part can be refused (its group's
                // leadership moved): the readable prefix never passes a
                // revision whose parts are not all applied, and the next
                // lead member voids it, so releasing it is safe.
                Ok(Err(error)) => refused = Some(error),
                // The worker is gone: dropping `pending` aborts.
                Err(_) => return Err(KvError::ShardUnavailable(shard)),
            }
        }
        // Every part is applied (a revoked lease left the table with its
        // home shard's part): readers may see the revision.
        if let Some(pending) = pending {
            pending.complete();
        }
        match refused {
            Some(error) => Err(error),
            None => Ok(outcome),
        }
    }

    /// Has every shard write a snapshot now and release its WAL below it
    /// (Defragment). The snapshots are written on threads of their own; the
    /// shards keep serving meanwhile.
    pub async fn snapshot_every_shard(&self) -> Result<(), String> {
        let mut waits = Vec::new();
        for shard in self.space.shard_map().all_shards() {
            let (done, written) = oneshot::channel();
            self.send(shard, ShardCommand::Snapshot { done })
                .await
                .map_err(|error| error.to_string())?;
            waits.push((shard, written));
        }
        for (shard, written) in waits {
            written
                .await
                .map_err(|_| format!("shard {shard} is unavailable"))?
                .map_err(|error| format!("shard {shard}: {error}"))?;
        }
        Ok(())
    }

    /// Compacts every shard at `revision` after etcd's checks. Returns once
    /// every shard logged the compaction durably; with `physical` (etcd's
    /// flag), once every shard also freed the history below it.
    ///
    /// Runs as a task of its own, like a multi-shard write's coordinator:
    /// a Compact call whose client goes away is canceled, and a compaction
    /// point raised with only some shards told would be torn.
    pub async fn compact(self: &Rc<Self>, revision: i64, physical: bool) -> Result<(), KvError> {
        let this = self.clone();
        monoio::spawn(async move { this.compact_every_shard(revision, physical).await }).await
    }

    async fn compact_every_shard(&self, revision: i64, physical: bool) -> Result<(), KvError> {
        self.space.begin_compaction(revision)?;
        let mut waits = Vec::new();
        for shard in self.space.shard_map().all_shards() {
            let (done, finished) = oneshot::channel();
            let command = ShardCommand::Compact {
                revision,
                physical,
                done,
            };
            self.send(shard, command).await?;
            waits.push((shard, finished));
        }
        for (shard, finished) in waits {
            finished
                .await
                .map_err(|_| KvError::ShardUnavailable(shard))?;
        }
        Ok(())
    }
}
