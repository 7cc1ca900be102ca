//! The node's alarms (etcd's `v3alarm` store) and `Maintenance.Alarm`.
//!
//! An alarm is a `(member ID, alarm type)` pair. The set is shared by every
//! core: readers see a lock-free skip set, and the write path asks "is
//! NOSPACE raised?" with one relaxed atomic load. Changes are rare (the
//! quota check raising NOSPACE, an operator disarming it), so one thread
//! applies them in order and persists the whole set to `alarms.json` in the
//! data directory atomically (temp file, fsync, rename, fsync directory)
//! before publishing it: an alarm a client has seen survives a restart, as
//! etcd's do (they live in its backend), and no executor thread waits on a
//! disk. The one exception is NOSPACE raised because the disk is full
//! (`raise_for_full_disk`): writing `alarms.json` may fail then, so it is
//! published even if it cannot be persisted; every start finds the full
//! disk again and raises it again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_skiplist::SkipSet;
use futures_channel::oneshot;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ServiceContext;
use crate::grpc::Status;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType};

/// The file holding the raised alarms, in the data directory.
pub const ALARM_FILE: &str = "alarms.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum AlarmError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}; fix or remove it (removing it disarms every alarm)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot start the alarm thread: {0}")]
    Thread(std::io::Error),
    /// The alarm thread is gone (the server is stopping).
    #[error("the alarm store has stopped")]
    Stopped,
}

/// One raised alarm. Ordered by member, then type: the order `GET` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RaisedAlarm {
    pub member_id: u64,
    /// An `AlarmType` value (kept as etcd's wire integer).
    pub alarm: i32,
}

impl RaisedAlarm {
    fn to_member(self) -> AlarmMember {
        AlarmMember {
            member_id: self.member_id,
            alarm: self.alarm,
        }
    }

    /// etcd's `AlarmMember.String()` (protobuf text format), as `Status`
    /// lists it in `errors`: `memberID:<id> alarm:NOSPACE ` (trailing
    /// space included).
    pub fn describe(self) -> String {
        format!(
            "memberID:{} alarm:{} ",
            self.member_id,
            alarm_name(self.alarm)
        )
    }
}

/// etcd's name for an alarm type; unknown values print as their number,
/// as Go's protobuf text format does.
fn alarm_name(alarm: i32) -> String {
    AlarmType::try_from(alarm)
        .map(|known| known.as_str_name().to_owned())
        .unwrap_or_else(|_| alarm.to_string())
}

/// What the alarm thread and the readers share.
struct PublishedAlarms {
    /// Every raised alarm, as the last durable change left it.
    raised: SkipSet<(u64, i32)>,
    /// Whether any NOSPACE alarm is raised: the write path's one load.
    no_space: AtomicBool,
    /// Why the disk-full NOSPACE was raised (for `/readyz` and `Status`),
    /// until NOSPACE is disarmed. Written on those rare transitions only.
    full_disk: std::sync::Mutex<Option<String>>,
}

impl PublishedAlarms {
    fn replace(&self, alarms: &BTreeSet<RaisedAlarm>) {
        for entry in self.raised.iter() {
            let (member_id, alarm) = *entry.value();
            if !alarms.contains(&RaisedAlarm { member_id, alarm }) {
                entry.remove();
            }
        }
        for raised in alarms {
            self.raised.insert((raised.member_id, raised.alarm));
        }
        let no_space = alarms
            .iter()
            .any(|raised| raised.alarm == AlarmType::Nospace as i32);
        self.no_space.store(no_space, Ordering::Relaxed);
        if !no_space && let Ok(mut full_disk) = self.full_disk.lock() {
            *full_disk = None;
        }
    }
}

/// A change for the alarm thread, and where to send its outcome.
struct AlarmChange {
    alarm: RaisedAlarm,
    activate: bool,
    /// The alarm activated (new or already raised) or deactivated (if it
    /// was raised); etcd's response lists it.
    reply: oneshot::Sender<Result<Option<RaisedAlarm>, AlarmError>>,
    /// Publish the change even if it cannot be persisted (a full disk).
    publish_unpersisted: bool,
}

/// The node's alarms. Cloned handles share one set and one thread.
#[derive(Clone)]
pub struct AlarmSet {
    published: Arc<PublishedAlarms>,
    changes: flume::Sender<AlarmChange>,
}

impl AlarmSet {
    /// Loads `alarms.json` from `data_dir` (none: no alarm) and starts the
    /// thread that persists changes.
    pub fn open(data_dir: &Path) -> Result<Self, AlarmError> {
        let path = data_dir.join(ALARM_FILE);
        let alarms = load(&path)?;
        let published = Arc::new(PublishedAlarms {
            raised: SkipSet::new(),
            no_space: AtomicBool::new(false),
            full_disk: std::sync::Mutex::new(None),
        });
        published.replace(&alarms);
        for raised in &alarms {
            tracing::warn!(
                alarm = alarm_name(raised.alarm),
                member_id = raised.member_id,
                "alarm raised before the restart is still active"
            );
        }
        let (changes, received) = flume::unbounded();
        let (thread_published, directory) = (published.clone(), data_dir.to_owned());
        std::thread::Builder::new()
            .name("metastore-alarms".to_owned())
            .spawn(move || apply_changes(&directory, alarms, &thread_published, received))
            .map_err(AlarmError::Thread)?;
        Ok(Self { published, changes })
    }

    /// Whether writes are capped (etcd's `applierV3Capped`).
    pub fn no_space_raised(&self) -> bool {
        self.published.no_space.load(Ordering::Relaxed)
    }

    /// The raised alarms of type `alarm` (`NONE`: all), in member order.
    pub fn list(&self, alarm: i32) -> Vec<RaisedAlarm> {
        self.published
            .raised
            .iter()
            .map(|entry| *entry.value())
            .filter(|&(_, raised)| alarm == AlarmType::None as i32 || raised == alarm)
            .map(|(member_id, alarm)| RaisedAlarm { member_id, alarm })
            .collect()
    }

    /// etcd's `StatusResponse.errors` entries for the raised alarms.
    pub fn status_errors(&self) -> Vec<String> {
        self.list(AlarmType::None as i32)
            .into_iter()
            .map(RaisedAlarm::describe)
            .collect()
    }

    /// Raises NOSPACE for `member_id` because the disk is full (`reason`
    /// says where). Published before it returns; the alarm thread persists
    /// it if it can, without the caller waiting.
    pub fn raise_for_full_disk(&self, member_id: u64, reason: String) {
        if let Ok(mut full_disk) = self.published.full_disk.lock() {
            *full_disk = Some(reason);
        }
        // Visible at once: the caller refuses writes from now on, and so
        // must every core. The thread then records it (and persists it if
        // the disk lets it).
        self.published
            .raised
            .insert((member_id, AlarmType::Nospace as i32));
        self.published.no_space.store(true, Ordering::Relaxed);
        let (reply, _) = oneshot::channel();
        let change = AlarmChange {
            alarm: RaisedAlarm {
                member_id,
                alarm: AlarmType::Nospace as i32,
            },
            activate: true,
            reply,
            publish_unpersisted: true,
        };
        let _ = self.changes.send(change);
    }

    /// Why the disk-full NOSPACE is raised, if it is.
    pub fn full_disk_reason(&self) -> Option<String> {
        if !self.no_space_raised() {
            return None;
        }
        self.published
            .full_disk
            .lock()
            .ok()
            .and_then(|reason| reason.clone())
    }

    /// Raises `alarm` (durably) and returns it.
    pub async fn activate(&self, alarm: RaisedAlarm) -> Result<Option<RaisedAlarm>, AlarmError> {
        self.change(alarm, true).await
    }

    /// Disarms `alarm` (durably); returns it if it was raised.
    pub async fn deactivate(&self, alarm: RaisedAlarm) -> Result<Option<RaisedAlarm>, AlarmError> {
        self.change(alarm, false).await
    }

    async fn change(
        &self,
        alarm: RaisedAlarm,
        activate: bool,
    ) -> Result<Option<RaisedAlarm>, AlarmError> {
        let (reply, outcome) = oneshot::channel();
        let change = AlarmChange {
            alarm,
            activate,
            reply,
            publish_unpersisted: false,
        };
        self.changes
            .send_async(change)
            .await
            .map_err(|_| AlarmError::Stopped)?;
        outcome.await.map_err(|_| AlarmError::Stopped)?
    }
}

/// The alarm thread: applies changes in arrival order, persisting the set
/// before publishing it. A failed write leaves both the file and the
/// published set as they were, and the requester gets the error.
fn apply_changes(
    data_dir: &Path,
    mut alarms: BTreeSet<RaisedAlarm>,
    published: &PublishedAlarms,
    changes: flume::Receiver<AlarmChange>,
) {
    while let Ok(change) = changes.recv() {
        let mut next = alarms.clone();
        let (changed, answer) = if change.activate {
            (next.insert(change.alarm), Some(change.alarm))
        } else {
            let removed = next.remove(&change.alarm);
            (removed, removed.then_some(change.alarm))
        };
        let outcome = if changed {
            let stored = store(data_dir, &next);
            if let Err(error) = &stored
                && change.publish_unpersisted
            {
                tracing::error!(%error, "cannot persist the NOSPACE alarm (the disk is full); it is raised until disarmed or restarted, and raised again at start while the disk stays full");
            }
            if stored.is_ok() || change.publish_unpersisted {
                log_transition(&alarms, &next, change.alarm);
                published.replace(&next);
                alarms = next;
            }
            stored.map(|()| answer)
        } else {
            Ok(answer)
        };
        let _ = change.reply.send(outcome);
    }
}

/// etcd logs when a type of alarm goes from none raised to some, and back.
fn log_transition(
    before: &BTreeSet<RaisedAlarm>,
    after: &BTreeSet<RaisedAlarm>,
    alarm: RaisedAlarm,
) {
    let of_type = |set: &BTreeSet<RaisedAlarm>| {
        set.iter()
            .filter(|raised| raised.alarm == alarm.alarm)
            .count()
    };
    let name = alarm_name(alarm.alarm);
    match (of_type(before), of_type(after)) {
        (0, 1) => tracing::warn!(alarm = name, from = alarm.member_id, "alarm raised"),
        (1, 0) => tracing::warn!(alarm = name, from = alarm.member_id, "alarm disarmed"),
        _ => {}
    }
}

/// `alarms.json`: what is persisted.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmFile {
    format_version: u32,
    alarms: Vec<StoredAlarm>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredAlarm {
    member_id: u64,
    /// etcd's name (`NOSPACE`, `CORRUPT`), readable by an operator.
    alarm: String,
}

fn load(path: &Path) -> Result<BTreeSet<RaisedAlarm>, AlarmError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => {
            return Err(AlarmError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |reason: String| AlarmError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file: AlarmFile =
        serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
    if file.format_version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "unknown format_version {}",
            file.format_version
        )));
    }
    file.alarms
        .iter()
        .map(|stored| {
            let alarm = AlarmType::from_str_name(&stored.alarm)
                .ok_or_else(|| corrupt(format!("unknown alarm {:?}", stored.alarm)))?;
            Ok(RaisedAlarm {
                member_id: stored.member_id,
                alarm: alarm as i32,
            })
        })
        .collect()
}

fn store(data_dir: &Path, alarms: &BTreeSet<RaisedAlarm>) -> Result<(), AlarmError> {
    let file = AlarmFile {
        format_version: FORMAT_VERSION,
        alarms: alarms
            .iter()
            .map(|raised| StoredAlarm {
                member_id: raised.member_id,
                alarm: alarm_name(raised.alarm),
            })
            .collect(),
    };
    let path = data_dir.join(ALARM_FILE);
    let bytes = serde_json::to_vec_pretty(&file).map_err(|error| AlarmError::Corrupt {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    crate::data_dir::write_atomically(data_dir, ALARM_FILE, &bytes)
        .map_err(|source| AlarmError::Io { path, source })
}

/// `Maintenance.Alarm`, as etcd's applier answers it: GET lists the raised
/// alarms of a type (member ignored), ACTIVATE returns the alarm raised,
/// DEACTIVATE the one disarmed (if it was raised). Disarming NOSPACE while
/// still over the quota is allowed, as in etcd: the next write that does
/// not fit raises it again. The response has no header (etcd sets none).
pub async fn alarm(
    context: &ServiceContext,
    request: AlarmRequest,
) -> Result<AlarmResponse, Status> {
    let alarms = &context.alarms;
    let requested = RaisedAlarm {
        member_id: request.member_id,
        alarm: request.alarm,
    };
    let listed = match AlarmAction::try_from(request.action) {
        Ok(AlarmAction::Get) => alarms.list(request.alarm),
        Ok(AlarmAction::Activate) => alarms.activate(requested).await?.into_iter().collect(),
        Ok(AlarmAction::Deactivate) => alarms.deactivate(requested).await?.into_iter().collect(),
        // etcd's applier answers an unknown action with nothing.
        Err(_) => Vec::new(),
    };
    Ok(AlarmResponse {
        header: None,
        alarms: listed.into_iter().map(RaisedAlarm::to_member).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_space(member_id: u64) -> RaisedAlarm {
        RaisedAlarm {
            member_id,
            alarm: AlarmType::Nospace as i32,
        }
    }

    #[test]
    fn alarms_persist_and_the_flag_follows_them() {
        let directory = tempfile::tempdir().expect("temp dir");
        let alarms = AlarmSet::open(directory.path()).expect("open");
        assert!(!alarms.no_space_raised());
        let raised = block_on(alarms.activate(no_space(7))).expect("activate");
        assert_eq!(raised, Some(no_space(7)));
        assert!(alarms.no_space_raised());
        assert_eq!(
            alarms.status_errors(),
            vec!["memberID:7 alarm:NOSPACE ".to_owned()]
        );
        drop(alarms);
        let reopened = AlarmSet::open(directory.path()).expect("reopen");
        assert!(reopened.no_space_raised(), "the alarm survives a restart");
        assert_eq!(reopened.list(AlarmType::Corrupt as i32), vec![]);
        let missing = block_on(reopened.deactivate(no_space(8))).expect("deactivate");
        assert_eq!(missing, None, "not raised by member 8: nothing disarmed");
        let disarmed = block_on(reopened.deactivate(no_space(7))).expect("deactivate");
        assert_eq!(disarmed, Some(no_space(7)));
        assert!(!reopened.no_space_raised());
        drop(reopened);
        assert!(
            AlarmSet::open(directory.path())
                .expect("reopen")
                .list(0)
                .is_empty()
        );
    }

    #[test]
    fn a_corrupt_file_is_refused() {
        let directory = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            directory.path().join(ALARM_FILE),
            b"{\"format_version\":1,\"alarms\":[{\"member_id\":1,\"alarm\":\"SOON\"}]}",
        )
        .expect("write");
        let error = AlarmSet::open(directory.path()).err().expect("refused");
        assert!(error.to_string().contains("unknown alarm"), "{error}");
    }

    /// Drives a future on this thread (the alarm thread answers meanwhile).
    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        loop {
            if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut context) {
                return value;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
