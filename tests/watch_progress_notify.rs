//! Server-initiated progress notifications
//! (`--experimental-watch-progress-notify-interval`, watches created with
//! `progress_notify`), end to end through the `etcd-client` crate:
//!
//! * an idle watch that asked for them gets notifications (no events, its
//!   own watch ID, the current revision) about once per interval; a watch
//!   on the same stream that did not ask gets none;
//! * after a write outside the watched range, notifications carry the new
//!   revision (a notification is a bookmark: nothing at or below its
//!   revision is still to come);
//! * while writes to the watched key flow, a notification never reports a
//!   revision below an event already received, and no event at or below a
//!   notification's revision arrives after it.
//!
//! Timing is asserted only loosely (the machine is shared): at least two
//! notifications within seconds, and never more than the interval allows.
//! `TEST_AGAINST_ETCD=1` runs the same tests against a real etcd.

mod common;
mod wl_support;

use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchOptions, WatchResponse, WatchStream};

use wl_support::{CALL, connect, ok, server_name, start_server};

const INTERVAL_FLAG: &str = "--experimental-watch-progress-notify-interval";
const INTERVAL_ARG: &str = "200ms";
const INTERVAL: Duration = Duration::from_millis(200);
/// How long a test waits for notifications that should come every
/// [`INTERVAL`].
const WINDOW: Duration = Duration::from_secs(5);

fn start() -> Option<(common::TestServer, String)> {
    start_server(&[INTERVAL_FLAG, INTERVAL_ARG])
}

/// A periodic progress notification: no events, not a create or cancel.
fn is_progress(response: &WatchResponse) -> bool {
    response.events().is_empty()
        && !response.created()
        && !response.canceled()
        && response.compact_revision() == 0
}

fn revision(response: &WatchResponse) -> i64 {
    response.header().expect("watch response header").revision()
}

/// The next response, or `None` once `deadline` passed. Panics if the
/// stream fails or ends.
async fn next_until(stream: &mut WatchStream, deadline: Instant) -> Option<WatchResponse> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, stream.message()).await {
        Err(_) => None,
        Ok(Ok(Some(response))) => Some(response),
        Ok(Ok(None)) => panic!("the watch stream ended ({})", server_name()),
        Ok(Err(e)) => panic!("the watch stream failed ({}): {e}", server_name()),
    }
}

/// Waits for the `created` response of the next watch; responses to other
/// watches meanwhile must be progress notifications, returned too.
async fn created(stream: &mut WatchStream, what: &str) -> (i64, Vec<WatchResponse>) {
    let deadline = Instant::now() + CALL;
    let mut others = Vec::new();
    loop {
        let response = next_until(stream, deadline)
            .await
            .unwrap_or_else(|| panic!("{what}: no created response within {CALL:?}"));
        if response.created() {
            assert!(!response.canceled(), "{what}: refused: {response:?}");
            return (response.watch_id(), others);
        }
        assert!(
            is_progress(&response),
            "{what}: unexpected response before created: {response:?}"
        );
        others.push(response);
    }
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    ok(&format!("put {key}"), c.put(key, value, None))
        .await
        .header()
        .expect("put header")
        .revision()
}

/// Checks one response on the idle stream: a progress notification for
/// `with` (never for `without`) at a revision in `lowest..=highest`;
/// returns that revision.
fn idle_notification(
    response: &WatchResponse,
    with: i64,
    without: i64,
    lowest: i64,
    highest: i64,
) -> i64 {
    assert!(
        is_progress(response),
        "{}: no events were due on the idle range, got {response:?}",
        server_name()
    );
    assert_ne!(
        response.watch_id(),
        without,
        "{}: a watch without progress_notify got a progress notification: {response:?}",
        server_name()
    );
    assert_eq!(
        response.watch_id(),
        with,
        "{}: a notification for an unknown watch: {response:?}",
        server_name()
    );
    let rev = revision(response);
    assert!(
        (lowest..=highest).contains(&rev),
        "{}: notification at revision {rev}, expected {lowest}..={highest}: {response:?}",
        server_name()
    );
    rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watches_get_notifications_with_the_current_revision() {
    let Some((_server, ep)) = start() else {
        return;
    };
    let mut c = connect(&ep).await;
    let r0 = put(&mut c, "pn/other", "0").await;

    let started = Instant::now();
    let mut stream = ok(
        "watch pn/idle/ with progress_notify",
        c.watch(
            "pn/idle/",
            Some(WatchOptions::new().with_prefix().with_progress_notify()),
        ),
    )
    .await;
    let (with, _) = created(&mut stream, "watch with progress_notify").await;
    ok(
        "watch pn/idle/ without progress_notify",
        stream.watch("pn/idle/", Some(WatchOptions::new().with_prefix())),
    )
    .await;
    let (without, early) = created(&mut stream, "watch without progress_notify").await;
    assert_ne!(with, without);

    // Several intervals with nothing written: only `with` is notified, at
    // the current revision.
    let mut notified = 0;
    for response in &early {
        idle_notification(response, with, without, r0, r0);
        notified += 1;
    }
    let deadline = Instant::now() + WINDOW;
    while notified < 3 {
        let Some(response) = next_until(&mut stream, deadline).await else {
            break;
        };
        idle_notification(&response, with, without, r0, r0);
        notified += 1;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{}: {notified} notifications in {elapsed:?} (interval {INTERVAL:?})",
        server_name()
    );
    assert!(
        notified >= 2,
        "{}: {notified} progress notifications in {elapsed:?} with an interval of {INTERVAL:?}",
        server_name()
    );
    // At most one per interval is sent (etcd adds up to 10% jitter, which
    // only makes them rarer); a slack of 2 for the client's clock.
    let most = (elapsed.as_millis() / INTERVAL.as_millis()) as usize + 2;
    assert!(
        notified <= most,
        "{}: {notified} progress notifications in {elapsed:?}: more than one per {INTERVAL:?}",
        server_name()
    );

    // A write outside the range: the watch has no event to wait for, so
    // the notifications move on to the new revision. One sent just before
    // the write may still arrive with the old revision, but revisions never
    // go back and never exceed the current one.
    let r1 = put(&mut c, "pn/other", "1").await;
    assert!(r1 > r0);
    let deadline = Instant::now() + WINDOW;
    let mut last = r0;
    let mut at_r1 = 0;
    let mut seen = Vec::new();
    while at_r1 < 2 {
        let response = next_until(&mut stream, deadline).await.unwrap_or_else(|| {
            panic!(
                "{}: {at_r1} notifications with revision {r1} within {WINDOW:?} after the put (last one: {last})",
                server_name()
            )
        });
        let rev = idle_notification(&response, with, without, last, r1);
        seen.push(rev);
        last = rev;
        if rev == r1 {
            at_r1 += 1;
        }
    }
    eprintln!(
        "{}: notification revisions after the put at {r1}: {seen:?}",
        server_name()
    );
}

/// The violation looked for needs a tick to land between a write's commit
/// and its delivery to the watch, a narrow window: a pass is evidence, not
/// proof (`watch_guarantees` checks the same under heavier load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_never_overtake_events() {
    let Some((_server, ep)) = start() else {
        return;
    };
    let mut c = connect(&ep).await;
    let r0 = put(&mut c, "pn/elsewhere", "0").await;
    let mut stream = ok(
        "watch pn/busy with progress_notify",
        c.watch("pn/busy", Some(WatchOptions::new().with_progress_notify())),
    )
    .await;
    let (id, _) = created(&mut stream, "watch pn/busy").await;

    // Bursts of writes to the watched key (with writes elsewhere mixed in),
    // then pauses of a few intervals with writes elsewhere only, so that
    // notifications fall between deliveries and carry revisions above the
    // last event.
    let mut writer_client = connect(&ep).await;
    let writer = tokio::spawn(async move {
        let c = &mut writer_client;
        let mut busy = Vec::new();
        for burst in 0..6 {
            for i in 0..8 {
                busy.push(put(c, "pn/busy", &format!("{burst}.{i}")).await);
                if i % 3 == 0 {
                    put(c, "pn/elsewhere", &format!("{burst}.{i}")).await;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            for i in 0..7 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                put(c, "pn/elsewhere", &format!("pause {burst}.{i}")).await;
            }
        }
        let last = put(c, "pn/elsewhere", "done").await;
        (busy, last)
    });

    let mut events = Vec::new();
    let mut last_event = r0;
    let mut last_notification = 0;
    let mut notifications = 0;
    // Notifications that arrived before some event: the interleavings the
    // checks are about.
    let mut between_events = 0;
    let mut writes: Option<(Vec<i64>, i64)> = None;
    let mut writer = Some(writer);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Done once every write to pn/busy arrived and, after the writes
        // stopped, a notification brought the watch to the final revision.
        if let Some((busy, last)) = &writes
            && busy.last() == events.last()
            && last_notification >= *last
        {
            break;
        }
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            writes = Some(writer.take().unwrap().await.expect("writer"));
        }
        assert!(
            Instant::now() < deadline,
            "{}: the watch did not catch up within 60 s: {} events (writes: {writes:?}), last notification at {last_notification}",
            server_name(),
            events.len(),
        );
        let poll = (Instant::now() + Duration::from_millis(200)).min(deadline);
        let Some(response) = next_until(&mut stream, poll).await else {
            continue;
        };
        assert_eq!(response.watch_id(), id, "{response:?}");
        assert!(
            !response.created() && !response.canceled(),
            "{}: {response:?}",
            server_name()
        );
        if is_progress(&response) {
            let rev = revision(&response);
            assert!(
                rev >= last_event,
                "{}: a notification at revision {rev} after an event at {last_event}",
                server_name()
            );
            assert!(
                rev >= last_notification,
                "{}: notifications went back from {last_notification} to {rev}",
                server_name()
            );
            last_notification = rev;
            notifications += 1;
            continue;
        }
        for event in response.events() {
            let kv = event.kv().expect("event kv");
            assert_eq!(event.event_type(), EventType::Put);
            assert_eq!(kv.key(), b"pn/busy");
            let rev = kv.mod_revision();
            assert!(
                rev > last_notification,
                "{}: an event at revision {rev} after a notification at {last_notification}",
                server_name()
            );
            assert!(
                rev > last_event,
                "events out of order: {rev} after {last_event}"
            );
            last_event = rev;
            events.push(rev);
            between_events = notifications;
        }
    }
    let (busy, _) = writes.expect("writes");
    assert_eq!(events, busy, "{}: the events of pn/busy", server_name());
    eprintln!(
        "{}: {} events, {notifications} notifications ({between_events} before the last event)",
        server_name(),
        events.len()
    );
    // The pauses last several intervals, so notifications fall between
    // events; without any the checks above prove nothing.
    assert!(
        between_events >= 2,
        "{}: only {between_events} notifications arrived between events",
        server_name()
    );
}
