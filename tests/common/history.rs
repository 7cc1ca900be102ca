//! A recorded history of client operations against an etcd-like store, and
//! its linearizability check.
//!
//! etcd orders every write by revision, so the check follows the revision
//! order instead of searching interleavings (as etcd's own robustness tests
//! do): the store's full history `(revision, key, value)` is read back at
//! the end, and then
//! - every acknowledged write is in it at the revision it was acknowledged
//!   with, all its keys together (a transaction is atomic);
//! - no write that failed definitely (an error meaning "not done") is in it;
//! - a write acknowledged before another was invoked has the lower
//!   revision (real-time order);
//! - every read saw exactly the history's value of its key at the revision
//!   its header names (a consistent cut, on any member), and a
//!   linearizable read's revision is at least that of every write
//!   acknowledged before it was invoked.
//!
//! Together these mean the operations can be ordered by revision in a way
//! that respects real time and the register semantics of every key.

use std::collections::BTreeMap;
use std::time::Instant;

/// How a write ended, as its client saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteEnd {
    /// Succeeded at this revision.
    Acknowledged(i64),
    /// An error that means the write did not happen.
    Failed,
    /// No answer (timeout, broken connection): it may or may not have.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct WriteRecord {
    /// Every key put, all with `value`.
    pub keys: Vec<String>,
    pub value: String,
    pub invoked: Instant,
    pub completed: Instant,
    pub end: WriteEnd,
}

#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub member: usize,
    pub key: String,
    /// The value seen (`None`: absent).
    pub value: Option<String>,
    /// The response header's revision.
    pub revision: i64,
    pub linearizable: bool,
    pub invoked: Instant,
}

/// The store's history: for each key, its values by revision (a delete
/// would be `None`; these tests only put).
pub type StoreHistory = BTreeMap<String, BTreeMap<i64, Option<String>>>;

fn value_at(history: &StoreHistory, key: &str, revision: i64) -> Option<String> {
    history
        .get(key)
        .and_then(|versions| versions.range(..=revision).next_back())
        .and_then(|(_, value)| value.clone())
}

/// Checks `writes` and `reads` against `history`; the violations found.
pub fn check(writes: &[WriteRecord], reads: &[ReadRecord], history: &StoreHistory) -> Vec<String> {
    let mut violations = Vec::new();
    // Where each value was stored: (key, value) → revision.
    let mut stored: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (key, versions) in history {
        for (revision, value) in versions {
            if let Some(value) = value {
                stored.insert((key.as_str(), value.as_str()), *revision);
            }
        }
    }
    for write in writes {
        let found: Vec<Option<i64>> = write
            .keys
            .iter()
            .map(|key| stored.get(&(key.as_str(), write.value.as_str())).copied())
            .collect();
        match write.end {
            WriteEnd::Acknowledged(revision) => {
                if found.iter().any(|at| *at != Some(revision)) {
                    violations.push(format!(
                        "write {:?} of {:?} acknowledged at {revision} is stored at {found:?}",
                        write.value, write.keys
                    ));
                }
            }
            WriteEnd::Failed => {
                if found.iter().any(Option::is_some) {
                    violations.push(format!(
                        "write {:?} failed yet is stored at {found:?}",
                        write.value
                    ));
                }
            }
            WriteEnd::Unknown => {
                let first = found[0];
                if found.iter().any(|at| *at != first) {
                    violations.push(format!(
                        "write {:?} is stored partly: {found:?} (not atomic)",
                        write.value
                    ));
                }
            }
        }
    }
    let mut acknowledged: Vec<(Instant, Instant, i64)> = writes
        .iter()
        .filter_map(|write| match write.end {
            WriteEnd::Acknowledged(revision) => Some((write.invoked, write.completed, revision)),
            _ => None,
        })
        .collect();
    acknowledged.sort_by_key(|(invoked, _, _)| *invoked);
    for (index, (_, completed, revision)) in acknowledged.iter().enumerate() {
        for (invoked, _, later) in &acknowledged[index + 1..] {
            if invoked > completed && later <= revision {
                violations.push(format!(
                    "a write acknowledged at {revision} finished before one acknowledged at {later} began"
                ));
            }
        }
    }
    for read in reads {
        let expected = value_at(history, &read.key, read.revision);
        if expected != read.value {
            violations.push(format!(
                "member {} read {:?} at revision {} as {:?}; the history has {:?}",
                read.member + 1,
                read.key,
                read.revision,
                read.value,
                expected
            ));
        }
        if read.linearizable {
            let floor = acknowledged
                .iter()
                .filter(|(_, completed, _)| *completed < read.invoked)
                .map(|(_, _, revision)| *revision)
                .max()
                .unwrap_or(0);
            if read.revision < floor {
                violations.push(format!(
                    "a linearizable read on member {} at revision {} missed a write acknowledged at {floor} before it began",
                    read.member + 1,
                    read.revision
                ));
            }
        }
    }
    violations
}
