//! Routing a write to its shards: the single-shard fast path, and the
//! coordinator for writes that span shards (design §4).

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use std::time::Instant;

use futures_channel::oneshot;

use super::forwarding::{Forwarder, RETRY_PAUSE, Route};
use super::member_change::MemberChange;
use super::{HeldCommand, ShardCommand, WriteOutcome, run_write};
use crate::lease::table::LeaseStatus;
use crate::peer::forward::{ForwardedAnswer, ForwardedCall};
use crate::store::error::KvError;
use crate::store::key_space::KeySpace;
use crate::store::revision::RevisionSlot;
use crate::store::shard_map::ShardId;
use crate::store::write::{WriteRequest, touched_ranges};

/// A core's handle for submitting writes to any shard.
pub struct WritePath {
    space: Arc<KeySpace>,
    /// One sender per shard, indexed by shard id.
    senders: Arc<[flume::Sender<ShardCommand>]>,
    /// This core's revision slot, for writes this core coordinates.
    slot: RevisionSlot,
    /// A cluster member's way to the lead member; `None` alone, where
    /// every write is carried out here.
    forwarder: Option<Forwarder>,
}

impl WritePath {
    pub fn new(
        space: Arc<KeySpace>,
        senders: Arc<[flume::Sender<ShardCommand>]>,
        slot: RevisionSlot,
        forwarder: Option<Forwarder>,
    ) -> Rc<Self> {
        Rc::new(Self {
            space,
            senders,
            slot,
            forwarder,
        })
    }

    pub fn space(&self) -> &Arc<KeySpace> {
        &self.space
    }

    /// etcd's request timeout on a cluster member; a server alone waits
    /// for nobody, so a generous bound.
    pub fn request_timeout(&self) -> std::time::Duration {
        self.forwarder
            .as_ref()
            .map_or(std::time::Duration::from_secs(7), |forwarder| {
                forwarder.request_timeout
            })
    }

    /// Runs `request` on the member that takes writes and returns once
    /// its effects are visible to every reader here (the watermark has
    /// reached its revision), so a client that reads after the reply sees
    /// its write.
    pub async fn write(self: &Rc<Self>, request: WriteRequest) -> Result<WriteOutcome, KvError> {
        match self.carry_out(ForwardedCall::Write(request)).await? {
            ForwardedAnswer::Written(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Logs a lease grant on the lease's home shard; returns once the lease
    /// is durable and in the table.
    pub async fn grant_lease(self: &Rc<Self>, id: i64, ttl_seconds: i64) -> Result<(), KvError> {
        match self
            .carry_out(ForwardedCall::GrantLease { id, ttl_seconds })
            .await?
        {
            ForwardedAnswer::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Compacts every shard at `revision` after etcd's checks. Returns once
    /// every shard logged the compaction durably; with `physical` (etcd's
    /// flag), once every shard also freed the history below it.
    pub async fn compact(self: &Rc<Self>, revision: i64, physical: bool) -> Result<(), KvError> {
        match self
            .carry_out(ForwardedCall::Compact { revision, physical })
            .await?
        {
            ForwardedAnswer::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// A keep-alive: the lease's TTL once renewed, 0 when it is unknown
    /// (or expired). Only the lead member's deadlines count.
    pub async fn renew_lease(self: &Rc<Self>, id: i64) -> Result<i64, KvError> {
        match self.carry_out(ForwardedCall::RenewLease { id }).await? {
            ForwardedAnswer::Renewed { ttl_seconds } => Ok(ttl_seconds),
            other => Err(unexpected(other)),
        }
    }

    /// A lease's TTLs as the lead member's deadlines say; `None`: unknown.
    pub async fn lease_status(self: &Rc<Self>, id: i64) -> Result<Option<LeaseStatus>, KvError> {
        match self.carry_out(ForwardedCall::LeaseStatus { id }).await? {
            ForwardedAnswer::LeaseStatus(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// Carries `call` out where writes are taken: here alone or on the
    /// lead member, else forwarded to it. While no member takes writes
    /// (an election), or one refuses the call before doing anything
    /// (`NotLeader`: leadership just moved), it is tried again until the
    /// request timeout, which then answers "request timed out", as etcd.
    async fn carry_out(self: &Rc<Self>, call: ForwardedCall) -> Result<ForwardedAnswer, KvError> {
        let Some(forwarder) = &self.forwarder else {
            return self.carry_out_here(call).await;
        };
        let deadline = Instant::now() + forwarder.request_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = match forwarder.route() {
                Route::Here => monoio::time::timeout(left, self.carry_out_here(call.clone()))
                    .await
                    .unwrap_or(Err(KvError::RequestTimedOut)),
                Route::Forward(lead) => match forwarder.call(lead, call.clone(), deadline).await {
                    Ok(answer) => self.readable_here(answer, deadline).await,
                    Err(error) => Err(error),
                },
                Route::Wait => Err(KvError::NotLeader),
            };
            match attempt {
                Err(KvError::NotLeader) if Instant::now() + RETRY_PAUSE < deadline => {
                    monoio::time::sleep(RETRY_PAUSE).await;
                }
                Err(KvError::NotLeader) => return Err(KvError::RequestTimedOut),
                other => return other,
            }
        }
    }

    /// What the lead member answered, once a write it reports is readable
    /// on this member too (it is committed, so it comes; a member cut off
    /// since times out).
    async fn readable_here(
        &self,
        answer: ForwardedAnswer,
        deadline: Instant,
    ) -> Result<ForwardedAnswer, KvError> {
        match answer {
            ForwardedAnswer::Failed(error) => Err(error),
            ForwardedAnswer::Written(outcome) => {
                if let Some(revision) = outcome.revision {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let clock = self.space.clock();
                    monoio::time::timeout(left, clock.wait_applied(revision))
                        .await
                        .map_err(|_| KvError::RequestTimedOut)?;
                }
                Ok(ForwardedAnswer::Written(outcome))
            }
            other => Ok(other),
        }
    }

    /// Carries `call` out on this member, which must take writes (a
    /// cluster member that does not refuses with `NotLeader`). What the
    /// lead member runs for calls forwarded to it.
    pub async fn carry_out_here(
        self: &Rc<Self>,
        call: ForwardedCall,
    ) -> Result<ForwardedAnswer, KvError> {
        if let Some(forwarder) = &self.forwarder
            && !forwarder.role.takes_writes()
        {
            return Err(KvError::NotLeader);
        }
        let leases = self.space.leases();
        Ok(match call {
            ForwardedCall::Write(request) => {
                ForwardedAnswer::Written(self.write_here(request).await?)
            }
            ForwardedCall::GrantLease { id, ttl_seconds } => {
                self.grant_lease_here(id, ttl_seconds).await?;
                ForwardedAnswer::Done
            }
            ForwardedCall::Compact { revision, physical } => {
                self.compact_here(revision, physical).await?;
                ForwardedAnswer::Done
            }
            ForwardedCall::RenewLease { id } => ForwardedAnswer::Renewed {
                ttl_seconds: leases.renew(id, Instant::now()).unwrap_or(0),
            },
            ForwardedCall::LeaseStatus { id } => {
                ForwardedAnswer::LeaseStatus(leases.status(id, Instant::now()))
            }
            ForwardedCall::ChangeMember(change) => {
                let Some(forwarder) = &self.forwarder else {
                    return Err(KvError::NotLeader);
                };
                super::conf_change::change_member_here(
                    &self.senders[0],
                    &forwarder.configurations,
                    (forwarder.role.member_id, &change),
                    forwarder.reconfig,
                    Instant::now() + forwarder.request_timeout,
                )
                .await?;
                ForwardedAnswer::Done
            }
        })
    }

    /// etcd's MemberAdd, MemberRemove, MemberPromote and MemberUpdate, carried out by
    /// the lead member: answered once every group of the lead member
    /// applied the change (see `member_change` for what refuses one).
    pub async fn change_member(self: &Rc<Self>, change: MemberChange) -> Result<(), KvError> {
        match self.carry_out(ForwardedCall::ChangeMember(change)).await? {
            ForwardedAnswer::Done => Ok(()),
            _ => Err(KvError::RequestTimedOut),
        }
    }

    /// Runs `request` on this member's shards (see [`Self::write`]).
    async fn write_here(self: &Rc<Self>, request: WriteRequest) -> Result<WriteOutcome, KvError> {
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
        confirm_every_group(&self.senders, limit).await
    }

    async fn grant_lease_here(&self, id: i64, ttl_seconds: i64) -> Result<(), KvError> {
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

    /// Runs as a task of its own, like a multi-shard write's coordinator:
    /// a Compact call whose client goes away is canceled, and a compaction
    /// point raised with only some shards told would be torn.
    async fn compact_here(self: &Rc<Self>, revision: i64, physical: bool) -> Result<(), KvError> {
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

/// An answer of the wrong kind for its call: only a peer that breaks the
/// protocol sends one. The client learns what it would had the answer
/// never come.
fn unexpected(answer: ForwardedAnswer) -> KvError {
    tracing::warn!(
        ?answer,
        "the lead member answered a call with the wrong kind of answer"
    );
    KvError::RequestTimedOut
}

/// [`WritePath::confirm_reads`] over the groups whose workers `shards`
/// reach. `RequestTimedOut` after `limit`; `ShardUnavailable` once a
/// worker is gone (the member is stopping).
pub async fn confirm_every_group(
    shards: &[flume::Sender<ShardCommand>],
    limit: std::time::Duration,
) -> Result<(), KvError> {
    let ask = async |shard: usize| {
        let (done, confirmed) = oneshot::channel();
        shards[shard]
            .send_async(ShardCommand::ReadIndex { done })
            .await
            .map_err(|_| KvError::ShardUnavailable(shard))?;
        Ok::<_, KvError>(confirmed)
    };
    let deadline = std::time::Instant::now() + limit;
    // Every group asked at once; a group whose leader changed is asked
    // again.
    let mut waiting = Vec::with_capacity(shards.len());
    for shard in 0..shards.len() {
        waiting.push((shard, ask(shard).await?));
    }
    for (shard, mut confirmed) in waiting {
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match monoio::time::timeout(left, confirmed).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) if std::time::Instant::now() < deadline => {
                    monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                    confirmed = ask(shard).await?;
                }
                Ok(Err(_)) | Err(_) => return Err(KvError::RequestTimedOut),
            }
        }
    }
    Ok(())
}
