//! `etcdserverpb.Watch/Watch`: the bidirectional watch stream.
//!
//! One task per stream runs the loop: bring every watch up to the core
//! feed's head (from the feed's batches, or from history for watches that
//! are behind), then wait for a request, a feed advance or a progress tick.
//! Responses are sent as they are produced, each waiting for flow-control
//! capacity: a client that does not read stops its own stream and nothing
//! else (no per-watch queue grows; see `crate::watch`).

use std::rc::Rc;

use super::ServiceContext;
use crate::grpc::{RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb::{WatchRequest, WatchResponse, watch_request::RequestUnion};
use crate::watch::CATCH_UP_CHUNK_CHANGES;
use crate::watch::feed::{EventFeed, Subscription};
use crate::watch::history::{Compacted, check_not_compacted, read_changes};
use crate::watch::reply::WatchReply;
use crate::watch::stream::WatchStream;
use crate::watch::watcher::{Delivery, HeaderStamp};

/// etcd's `grpcOverheadBytes`, added to `--max-request-bytes` for the
/// fragmenting threshold.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Responses collected from a stream's watches before they are written as
/// one send: keeps the per-write cost of h2 off each of a revision's many
/// small responses.
const FLUSH_RESPONSES: usize = 256;
/// Most event bytes collected before a send, and so what watches deliver
/// per batch from the feed: a stream produces what `writable` allows (at
/// most this, less when the connection's queue or the client's window has
/// less room), sends it, and produces more only once its connection and
/// its client can take it. So a stream holds at most one batch, whatever
/// its client does. (A count of events or responses bounded nothing: a
/// response of 1,000 revisions can be any size, and sends of ~20 MB made
/// the allocator take fresh pages from the kernel for each.)
const FLUSH_BYTES: usize = 64 * 1024;

/// What woke the stream's loop.
enum Wakeup {
    Request(Option<WatchRequest>),
    FeedAdvanced,
    ProgressTick,
    ClientGone,
}

struct StreamTask<'a> {
    context: &'a ServiceContext,
    feed: Rc<EventFeed>,
    stamp: HeaderStamp,
    watches: WatchStream,
    /// Held while the stream has watches, so the core's feed reads history.
    subscription: Option<Subscription>,
    responses: &'a mut ResponseSink,
    outbox: Vec<WatchReply>,
    /// The event bytes in `outbox`.
    outbox_bytes: usize,
    /// What the batch being gathered may hold, from `writable`: at most
    /// [`FLUSH_BYTES`], the connection's budget room and the client's
    /// window.
    allowance: usize,
    /// Keeps the core's watch stream and watcher gauges in step with this
    /// stream, and takes its share back when the stream ends however it ends.
    gauge: WatchGauge,
}

/// This stream's part of the core's `etcd_debugging_mvcc_watch_stream_total`
/// and `etcd_debugging_mvcc_watcher_total`.
struct WatchGauge {
    metrics: Rc<crate::metrics::CoreMetrics>,
    watchers: i64,
}

impl WatchGauge {
    fn open(metrics: Rc<crate::metrics::CoreMetrics>) -> Self {
        metrics.count(|counters| counters.watch_streams += 1);
        Self {
            metrics,
            watchers: 0,
        }
    }

    fn set_watchers(&mut self, watchers: usize) {
        let change = watchers as i64 - self.watchers;
        if change != 0 {
            self.metrics.count(|counters| counters.watchers += change);
            self.watchers = watchers as i64;
        }
    }
}

impl Drop for WatchGauge {
    fn drop(&mut self) {
        let watchers = self.watchers;
        self.metrics.count(|counters| {
            counters.watch_streams -= 1;
            counters.watchers -= watchers;
        });
    }
}

pub async fn serve(
    context: &ServiceContext,
    requests: &mut RequestStream,
    responses: &mut ResponseSink,
) -> Result<(), Status> {
    let mut task = StreamTask {
        context,
        feed: context.watch_feed.clone(),
        stamp: context.header_stamp(),
        watches: WatchStream::new(),
        subscription: None,
        responses,
        outbox: Vec::new(),
        outbox_bytes: 0,
        allowance: FLUSH_BYTES,
        gauge: WatchGauge::open(context.metrics.clone()),
    };
    let interval = context.watch_progress_interval;
    let mut ticker = monoio::time::interval_at(monoio::time::Instant::now() + interval, interval);
    // etcd keeps delivering after the client half-closes; the stream ends
    // when the client resets it or goes away.
    let mut receiving = true;
    loop {
        let head = task.feed.head().max(task.current_revision());
        task.catch_up(head).await?;
        let feed = task.feed.clone();
        let wakeup = if receiving {
            monoio::select! {
                message = requests.next::<WatchRequest>() => Wakeup::Request(message?),
                _ = feed.advanced_past(head) => Wakeup::FeedAdvanced,
                _ = ticker.tick() => Wakeup::ProgressTick,
            }
        } else {
            monoio::select! {
                _ = feed.advanced_past(head) => Wakeup::FeedAdvanced,
                _ = ticker.tick() => Wakeup::ProgressTick,
                _ = task.responses.client_gone() => Wakeup::ClientGone,
            }
        };
        match wakeup {
            Wakeup::Request(None) => receiving = false,
            Wakeup::ClientGone => return Ok(()),
            Wakeup::Request(Some(request)) => task.handle(request).await?,
            Wakeup::FeedAdvanced => {}
            Wakeup::ProgressTick => task.progress_tick().await?,
        }
    }
}

impl StreamTask<'_> {
    fn current_revision(&self) -> i64 {
        self.context.write_path.space().clock().watermark()
    }

    async fn send(&mut self, response: &WatchResponse) -> Result<(), Status> {
        self.responses.send(response).await
    }

    async fn flush(&mut self) -> Result<(), Status> {
        if self.outbox.is_empty() {
            self.responses.release_capacity();
            return Ok(());
        }
        let encoded = self.responses.encode_all(&self.outbox).await?;
        // The replies go before the bytes wait for the client: the
        // stream holds one copy of what it sends, not two.
        self.outbox.clear();
        self.outbox_bytes = 0;
        self.responses.send_encoded(encoded).await
    }

    fn outbox_is_full(&self) -> bool {
        self.outbox.len() >= FLUSH_RESPONSES || self.outbox_bytes >= self.allowance
    }

    fn update_subscription(&mut self) {
        self.gauge.set_watchers(self.watches.len());
        if self.watches.is_empty() {
            self.subscription = None;
        } else if self.subscription.is_none() {
            self.subscription = Some(self.feed.subscribe());
        }
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Status> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let current = self.current_revision();
                let response = self.watches.create(create, current, &self.stamp);
                self.update_subscription();
                self.send(&response).await
            }
            Some(RequestUnion::CancelRequest(cancel)) => {
                let current = self.current_revision();
                let response = self.watches.cancel(cancel.watch_id, current, &self.stamp);
                self.update_subscription();
                match response {
                    Some(response) => self.send(&response).await,
                    None => Ok(()),
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Answer with the current revision, but only once every
                // watch was given everything up to it (bookmarkable).
                let current = self.current_revision();
                self.catch_up(current).await?;
                self.send(&WatchStream::progress_response(current, &self.stamp))
                    .await
            }
            // etcd ignores requests it does not understand.
            None => Ok(()),
        }
    }

    /// Brings every watch up to `head`.
    async fn catch_up(&mut self, head: i64) -> Result<(), Status> {
        if !self.watches.any_behind(head) {
            return Ok(());
        }
        for id in self.watches.ids() {
            loop {
                if self.outbox.is_empty() {
                    // A batch starts only when the connection and the
                    // client can take it, and is about what they can take.
                    // A stream whose client does not read waits here
                    // holding nothing: its watches stay where they are and
                    // later resume from the feed or history, or end with
                    // `compact_revision`.
                    self.allowance = self.responses.writable(FLUSH_BYTES).await?;
                }
                let behind = self.step(id, head);
                // Small deliveries of many watches go out together.
                if self.outbox_is_full() {
                    self.flush().await?;
                }
                if !behind {
                    break;
                }
            }
        }
        self.flush().await?;
        self.update_subscription();
        Ok(())
    }

    /// Moves watch `id` forward, into the outbox, by one step: from the
    /// feed, up to the batch's allowance; from history, one catch-up
    /// response as etcd shapes it (up to 1,000 revisions), cut at a
    /// revision boundary once it reaches etcd's fragmenting threshold
    /// (or, while the connection holds too much ahead of its windows, the
    /// allowance). False once the watch is at `head` (or gone).
    fn step(&mut self, id: i64, head: i64) -> bool {
        let space = self.context.write_path.space().clone();
        // etcd fragments above its request limit plus gRPC overhead.
        let max_response_bytes = self.context.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let Some(watcher) = self.watches.get_mut(id) else {
            return false;
        };
        if watcher.next_revision > head {
            return false;
        }
        // A watch whose next revision was compacted away ends, even if the
        // feed still holds batches read before the compaction (etcd cancels
        // on `minRev < compactRev`).
        if let Err(compacted) = check_not_compacted(&space, watcher.next_revision - 1) {
            self.end_compacted(id, compacted);
            return false;
        }
        // The feed may lag the watermark briefly; what it lacks comes from
        // history, so a watch behind gets everything up to `head` at once.
        if let Some(batches) = self.feed.batches_from(watcher.next_revision) {
            // One delivery over all batches: a watch that is behind gets
            // its backlog in few responses (as etcd's catch-up does).
            let through = batches.last().map_or(head, |batch| batch.through);
            let from = watcher.next_revision;
            let changes = batches
                .iter()
                .flat_map(|batch| batch.deliverable_from(from));
            let delivery = Delivery {
                max_response_bytes,
                max_bytes: self.allowance.saturating_sub(self.outbox_bytes),
                header_revision: through,
            };
            self.outbox_bytes += watcher.deliver(
                changes,
                through,
                &space,
                &self.stamp,
                delivery,
                &mut self.outbox,
            );
            return watcher.next_revision <= head;
        }
        let shards = watcher.shards(&space);
        let after = watcher.next_revision - 1;
        // A catch-up response as etcd shapes it may be far larger than the
        // client's window; it is produced only while the connection may
        // hold that much ahead of its windows, otherwise the step is what
        // the window admits.
        let catch_up_bytes = if self.responses.may_hold(max_response_bytes) {
            max_response_bytes
        } else {
            self.allowance.saturating_sub(self.outbox_bytes)
        };
        // Read about what the step may send: a chunk read and mostly left
        // unsent would be read again.
        let read = read_changes(
            &space,
            &shards,
            after,
            head,
            CATCH_UP_CHUNK_CHANGES,
            catch_up_bytes,
        );
        match read {
            Ok(chunk) => {
                let delivery = Delivery {
                    max_response_bytes,
                    max_bytes: catch_up_bytes,
                    header_revision: head,
                };
                self.outbox_bytes += watcher.deliver(
                    chunk.deliverable(),
                    chunk.through,
                    &space,
                    &self.stamp,
                    delivery,
                    &mut self.outbox,
                );
                watcher.next_revision <= head
            }
            Err(compacted) => {
                self.end_compacted(id, compacted);
                false
            }
        }
    }

    /// Ends watch `id`, whose history is gone, with etcd's cancel.
    fn end_compacted(&mut self, id: i64, compacted: Compacted) {
        if let Some(watcher) = self.watches.get_mut(id) {
            let response = watcher.compacted_response(compacted.compact_revision, &self.stamp);
            self.outbox.push(response.into());
        }
        self.watches.end(id);
    }

    /// etcd's periodic progress notification: to each watch that asked for
    /// them, is caught up, and got no events since the last tick.
    async fn progress_tick(&mut self) -> Result<(), Status> {
        let head = self.feed.head();
        for watcher in self.watches.watchers_mut() {
            if watcher.progress_notify && !watcher.sent_since_tick && watcher.next_revision > head {
                self.outbox
                    .push(watcher.progress_response(head, &self.stamp).into());
            }
            watcher.sent_since_tick = false;
        }
        self.flush().await
    }
}
