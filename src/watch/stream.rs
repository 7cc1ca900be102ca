//! The watches of one gRPC Watch stream: creation and cancellation with
//! etcd's rules and answers. Pure; the service's loop does the I/O.

use std::collections::BTreeMap;

use super::watcher::{HeaderStamp, Watcher};
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchResponse};
use crate::store::key_range::KeyRange;

/// etcd's `clientv3.InvalidWatchID`: the watch ID of answers that belong
/// to no watch (a refused create, a stream-wide progress notification).
pub const INVALID_WATCH_ID: i64 = -1;
/// etcd's `AutoWatchID`: a create request with this ID lets the server pick.
const AUTO_WATCH_ID: i64 = 0;

/// etcd's `mvcc.ErrEmptyWatcherRange`.
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's `mvcc.ErrWatcherDuplicateID`.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

#[derive(Debug, Default)]
pub struct WatchStream {
    watchers: BTreeMap<i64, Watcher>,
    /// Watches the server ended (compaction): etcd still answers one cancel
    /// for them.
    ended: std::collections::BTreeSet<i64>,
    /// Next ID to try for an automatic one (etcd counts up and skips IDs
    /// in use).
    next_auto_id: i64,
}

impl WatchStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// etcd's create: normalizes the key forms, validates, assigns the ID
    /// and answers `created` (or `created` + `canceled` with a reason).
    /// `current` is the store revision now; a watch without a start
    /// revision begins right after it.
    pub fn create(
        &mut self,
        mut request: WatchCreateRequest,
        current: i64,
        stamp: &HeaderStamp,
    ) -> WatchResponse {
        if request.key.is_empty() {
            // "\x00 is the smallest key"
            request.key = bytes::Bytes::from_static(b"\0");
        }
        let range = KeyRange::from_bytes(&request.key, &request.range_end);
        let refused = |reason: &str| WatchResponse {
            header: stamp.header(current),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_owned(),
            ..Default::default()
        };
        // "prevent wrong range where key >= end lexicographically"
        if range.is_empty() {
            return refused(EMPTY_RANGE);
        }
        let id = if request.watch_id == AUTO_WATCH_ID {
            while self.watchers.contains_key(&self.next_auto_id)
                || self.ended.contains(&self.next_auto_id)
            {
                self.next_auto_id += 1;
            }
            self.next_auto_id += 1;
            self.next_auto_id - 1
        } else if self.watchers.contains_key(&request.watch_id)
            || self.ended.contains(&request.watch_id)
        {
            return refused(DUPLICATE_ID);
        } else {
            request.watch_id
        };
        let start = if request.start_revision == 0 {
            current + 1
        } else {
            request.start_revision
        };
        self.watchers
            .insert(id, Watcher::new(id, range, &request, start));
        WatchResponse {
            header: stamp.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        }
    }

    /// etcd answers a cancel of an unknown watch with nothing at all.
    pub fn cancel(&mut self, id: i64, current: i64, stamp: &HeaderStamp) -> Option<WatchResponse> {
        if self.watchers.remove(&id).is_none() && !self.ended.remove(&id) {
            return None;
        }
        Some(WatchResponse {
            header: stamp.header(current),
            watch_id: id,
            canceled: true,
            ..Default::default()
        })
    }

    /// The stream-wide answer to a progress request, once every watch has
    /// been given everything at or below `revision`.
    pub fn progress_response(revision: i64, stamp: &HeaderStamp) -> WatchResponse {
        WatchResponse {
            header: stamp.header(revision),
            watch_id: INVALID_WATCH_ID,
            ..Default::default()
        }
    }

    /// Ends a watch from the server side (its history was compacted).
    pub fn end(&mut self, id: i64) {
        if self.watchers.remove(&id).is_some() {
            self.ended.insert(id);
        }
    }

    pub fn ids(&self) -> Vec<i64> {
        self.watchers.keys().copied().collect()
    }

    pub fn get_mut(&mut self, id: i64) -> Option<&mut Watcher> {
        self.watchers.get_mut(&id)
    }

    pub fn watchers_mut(&mut self) -> impl Iterator<Item = &mut Watcher> {
        self.watchers.values_mut()
    }

    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Whether some watch still lacks history at or below `head`.
    pub fn any_behind(&self, head: i64) -> bool {
        self.watchers
            .values()
            .any(|watcher| watcher.next_revision <= head)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn create(key: &str, range_end: &str, watch_id: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(range_end.as_bytes()),
            watch_id,
            ..Default::default()
        }
    }

    #[test]
    fn automatic_ids_count_up_and_skip_chosen_ones() {
        let stamp = HeaderStamp::default();
        let mut stream = WatchStream::new();
        assert_eq!(stream.create(create("a", "", 1), 5, &stamp).watch_id, 1);
        assert_eq!(stream.create(create("a", "", 0), 5, &stamp).watch_id, 0);
        assert_eq!(stream.create(create("a", "", 0), 5, &stamp).watch_id, 2);
        let duplicate = stream.create(create("a", "", 2), 5, &stamp);
        assert!(duplicate.created && duplicate.canceled);
        assert_eq!(duplicate.watch_id, INVALID_WATCH_ID);
        assert_eq!(duplicate.cancel_reason, DUPLICATE_ID);
    }

    #[test]
    fn empty_ranges_are_refused_and_unknown_cancels_are_silent() {
        let stamp = HeaderStamp::default();
        let mut stream = WatchStream::new();
        let refused = stream.create(create("b", "a", 0), 5, &stamp);
        assert_eq!(refused.cancel_reason, EMPTY_RANGE);
        assert!(stream.is_empty());
        assert_eq!(stream.cancel(9, 5, &stamp), None);
        let created = stream.create(create("", "\0", 0), 5, &stamp);
        assert!(
            created.created && !created.canceled,
            "empty key means from \\0"
        );
        assert!(stream.cancel(created.watch_id, 5, &stamp).is_some());
    }
}
