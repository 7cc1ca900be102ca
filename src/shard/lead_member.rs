//! The lead member of a cluster (design §6): the one member that leads
//! every shard's Raft group and alone takes revisions, so the revision
//! stays one sequence across all groups.
//!
//! Group 0's leader is the lead member. A member leading any other group
//! hands that group's leadership to it (Raft's leadership transfer, on the
//! next tick), so after an election every group converges on one member
//! without a protocol of its own. The lead member takes writes only once
//! it leads every group, has applied each group's log through the entry
//! that began its term (so every revision any earlier leader got
//! committed is applied here and its sequencer is above it), and has
//! voided what the failed lead member left undecided: every revision
//! above its readable prefix up to the highest it has seen
//! (`store::applied_revisions`). None of those was acknowledged, since a
//! write is acknowledged only once readable. Any worker that stops leading
//! its group stops the member taking writes until the next decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_channel::oneshot;

use super::ShardCommand;
use crate::store::error::KvError;
use crate::store::key_space::KeySpace;

/// What this member knows of its role, shared by its shard workers.
#[derive(Debug)]
pub struct MemberRole {
    pub member_id: u64,
    /// Per shard: the leader this member's replica of the group last
    /// knew (0: none).
    leaders: Box<[AtomicU64]>,
    /// Per shard: this member leads the group and applied its log through
    /// its term's first entry.
    caught_up: Box<[AtomicBool]>,
    /// Set by the lead member's decision (`run`), cleared by any worker
    /// that stops leading its group.
    taking_writes: AtomicBool,
    /// The member is shutting down: it hands its groups on and never
    /// takes writes again.
    stopping: AtomicBool,
    /// Times group 0's leader (the lead member) became a member other
    /// than the one seen before (etcd's `leader_changes_seen_total`).
    lead_member_changes: AtomicU64,
    /// A MoveLeader under way on this lead member: the member every
    /// group's leadership moves to (0: none). Meanwhile this member takes
    /// no writes.
    moving_to: AtomicU64,
    /// Group 0 applied this member's removal (`MemberRemove`): it takes no
    /// writes and the process stops, as a removed etcd member does.
    removed: AtomicBool,
}

impl MemberRole {
    pub fn new(member_id: u64, shard_count: usize) -> Arc<Self> {
        Arc::new(Self {
            member_id,
            leaders: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
            caught_up: (0..shard_count).map(|_| AtomicBool::new(false)).collect(),
            taking_writes: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            lead_member_changes: AtomicU64::new(0),
            moving_to: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        })
    }

    /// Group 0 applied this member's removal.
    pub fn note_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.stop_leading();
    }

    /// Whether this member was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// The member is shutting down (`runtime::Node::hand_off_leadership`).
    pub fn stop_leading(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.taking_writes.store(false, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// MoveLeader: hand every group to `target` (`ShardWorker`'s tick does
    /// it), taking no writes meanwhile.
    pub fn begin_move(&self, target: u64) {
        self.moving_to.store(target, Ordering::SeqCst);
        self.taking_writes.store(false, Ordering::SeqCst);
    }

    /// The move is over (done, or given up).
    pub fn end_move(&self) {
        self.moving_to.store(0, Ordering::SeqCst);
    }

    /// The member a MoveLeader moves every group to (0: none).
    pub fn moving_to(&self) -> u64 {
        self.moving_to.load(Ordering::SeqCst)
    }

    /// Whether this member leads any group, as its workers last saw.
    pub fn leads_any_group(&self) -> bool {
        self.leaders
            .iter()
            .any(|leader| leader.load(Ordering::SeqCst) == self.member_id)
    }

    /// A worker's view of its group: who leads it, and whether this
    /// member leads it with its log applied through its term's start.
    pub fn note_group(&self, shard: usize, leader: u64, caught_up: bool) {
        let previous = self.leaders[shard].swap(leader, Ordering::SeqCst);
        if shard == 0 && leader != 0 && leader != previous {
            self.lead_member_changes.fetch_add(1, Ordering::Relaxed);
        }
        self.caught_up[shard].store(caught_up, Ordering::SeqCst);
        if leader != self.member_id {
            self.taking_writes.store(false, Ordering::SeqCst);
        }
    }

    /// How many times a new lead member was seen here.
    pub fn lead_member_changes(&self) -> u64 {
        self.lead_member_changes.load(Ordering::Relaxed)
    }

    /// The member every group's leadership should move to (0: unknown).
    pub fn lead_member(&self) -> u64 {
        self.leaders[0].load(Ordering::SeqCst)
    }

    /// Whether workers may evaluate and propose writes.
    pub fn takes_writes(&self) -> bool {
        self.taking_writes.load(Ordering::SeqCst) && self.lead_member() == self.member_id
    }

    /// Whether this member leads every group, each applied through its
    /// term's start.
    pub fn leads_every_group(&self) -> bool {
        self.leaders
            .iter()
            .zip(self.caught_up.iter())
            .all(|(leader, caught_up)| {
                leader.load(Ordering::SeqCst) == self.member_id && caught_up.load(Ordering::SeqCst)
            })
    }
}

/// The lead member's duty, run by one task per member: whenever this
/// member leads every group and does not take writes yet, void what the
/// previous lead member left undecided, then take writes. Runs until the
/// shards' channels close.
///
/// Every member's task also settles the floor a group's installed
/// snapshot left (`shard::snapshot_install`): once every group confirmed
/// a read with its leader and applied through it, every part of every
/// revision up to the floor is applied here. Until then this member
/// voids nothing (its readable prefix is not yet what it holds).
pub async fn run(
    role: Arc<MemberRole>,
    space: Arc<KeySpace>,
    shards: Arc<[flume::Sender<ShardCommand>]>,
    interval: Duration,
) {
    let clock = space.clock().clone();
    loop {
        monoio::time::sleep(interval).await;
        let floor = clock.floor_to_confirm();
        if floor > 0 {
            match super::write_path::confirm_every_group(&shards, interval * 20).await {
                Ok(()) => clock.floor_confirmed(floor),
                Err(KvError::ShardUnavailable(_)) => return,
                // No leader, or none reachable: try again next time.
                Err(_) => continue,
            }
        }
        if role.is_stopping()
            || role.moving_to() != 0
            || role.takes_writes()
            || !role.leads_every_group()
        {
            continue;
        }
        let readable = clock.readable_through();
        let highest = clock.current();
        if highest > readable {
            match void_in_every_group(&shards, readable + 1, highest).await {
                Ok(()) => {}
                Err(Stop) => return,
            }
            if clock.readable_through() < highest {
                // A group lost its leadership meanwhile; the next lead
                // member decides again.
                continue;
            }
            tracing::warn!(
                from = readable + 1,
                to = highest,
                "voided revisions the previous lead member took and did not complete (none was acknowledged)"
            );
        }
        if role.leads_every_group() && !role.is_stopping() && role.moving_to() == 0 {
            // Keep-alives went to the previous lead member.
            space.leases().renew_all(std::time::Instant::now());
            role.taking_writes.store(true, Ordering::SeqCst);
            tracing::info!(
                member = format!("{:x}", role.member_id),
                revision = clock.current(),
                "this member is the lead member and takes writes"
            );
        }
    }
}

/// This process is stopping.
struct Stop;

/// Has every group log the void of `from..=to` and waits until each
/// applied it (or refused: no longer its leader).
async fn void_in_every_group(
    shards: &[flume::Sender<ShardCommand>],
    from: i64,
    to: i64,
) -> Result<(), Stop> {
    let mut answers = Vec::with_capacity(shards.len());
    for shard in shards {
        let (done, answer) = oneshot::channel::<Result<(), KvError>>();
        shard
            .send_async(ShardCommand::Void { from, to, done })
            .await
            .map_err(|_| Stop)?;
        answers.push(answer);
    }
    for answer in answers {
        // A refusal or a lost entry shows in the readable prefix.
        let _ = answer.await;
    }
    Ok(())
}
