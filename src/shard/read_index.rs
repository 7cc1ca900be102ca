//! A shard worker's linearizable reads waiting on Raft's ReadIndex (pure:
//! the worker asks Raft and hands in what comes back).
//!
//! A read is asked under a number (its Raft context); the group's leader
//! answers with its commit index once a quorum confirmed it still leads;
//! the read is released once the worker applied through that index.
//! Raft never answers a read asked of a leader that lost its place, so a
//! change of leader drops the reads asked before it (their callers see the
//! channel closed and ask again).

use futures_channel::oneshot;

#[derive(Default)]
pub struct ReadIndexWaits {
    /// Asked and not answered, by number.
    asked: Vec<(u64, oneshot::Sender<()>)>,
    /// Answered with a commit index, waiting to have it applied.
    answered: Vec<(u64, oneshot::Sender<()>)>,
    next_number: u64,
    /// The group's leader when last told.
    leader: u64,
}

impl ReadIndexWaits {
    /// Records a read by member `member_id`; returns the context to ask
    /// Raft's ReadIndex with. It names the member too: the leader
    /// ignores a request whose context equals one it is still confirming,
    /// so contexts must differ across members.
    pub fn ask(&mut self, member_id: u64, done: oneshot::Sender<()>) -> Vec<u8> {
        // Readers that gave up (timed out) need no answer.
        self.asked.retain(|(_, done)| !done.is_canceled());
        let number = self.next_number;
        self.next_number += 1;
        self.asked.push((number, done));
        let mut context = member_id.to_be_bytes().to_vec();
        context.extend_from_slice(&number.to_be_bytes());
        context
    }

    /// Raft answered the read asked with `context`: it waits for `index`.
    /// An unknown context (from before a leader change) is ignored.
    pub fn answered(&mut self, context: &[u8], index: u64) {
        let number = context
            .get(8..)
            .and_then(|number| <[u8; 8]>::try_from(number).ok())
            .map(u64::from_be_bytes);
        if let Some(position) = self
            .asked
            .iter()
            .position(|(asked, _)| Some(*asked) == number)
        {
            let (_, done) = self.asked.swap_remove(position);
            self.answered.push((index, done));
        }
    }

    /// The worker applied through `index`: releases the reads waiting for
    /// it or less.
    pub fn applied_through(&mut self, index: u64) {
        if self.answered.is_empty() {
            return;
        }
        for (_, done) in self.answered.extract_if(.., |(wanted, _)| *wanted <= index) {
            let _ = done.send(());
        }
    }

    /// The group's leader is now `leader`: reads asked of another one are
    /// dropped (Raft will not answer them).
    pub fn leader_is(&mut self, leader: u64) {
        if leader != self.leader {
            self.leader = leader;
            self.asked.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_released_once_its_index_is_applied() {
        let mut waits = ReadIndexWaits::default();
        waits.leader_is(2);
        let (done, mut released) = oneshot::channel();
        let context = waits.ask(1, done);
        waits.answered(&context, 7);
        waits.applied_through(6);
        assert_eq!(released.try_recv(), Ok(None));
        waits.applied_through(7);
        assert_eq!(released.try_recv(), Ok(Some(())));
    }

    #[test]
    fn a_leader_change_drops_reads_asked_of_the_old_one() {
        let mut waits = ReadIndexWaits::default();
        waits.leader_is(2);
        let (done, mut released) = oneshot::channel();
        let context = waits.ask(1, done);
        waits.leader_is(3);
        assert!(released.try_recv().is_err(), "dropped: ask again");
        waits.answered(&context, 1);
        waits.applied_through(10);
    }
}
