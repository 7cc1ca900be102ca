//! Serving one client connection: the HTTP/2 handshake with our limits,
//! one task per call, the connection's outgoing byte budget, keepalive
//! pings, idle close, and the polite refusal of a connection over
//! `--max-connections`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};

use super::call::ResponseSink;
use super::frame_meter::MeteredIo;
use super::send_budget::SendBudget;
use super::server::{GrpcService, ServerLimits, Serving, serve_stream};
use super::status::Status;

fn builder(limits: &ServerLimits) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .max_concurrent_reset_streams(limits.max_concurrent_reset_streams)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.max_local_error_reset_streams))
        .initial_window_size(limits.initial_stream_window)
        .initial_connection_window_size(limits.initial_connection_window)
        .max_frame_size(limits.max_frame_size)
        .max_send_buffer_size(limits.max_send_buffer_size);
    builder
}

/// Why the connection's helpers want it closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// No call in flight for `--grpc-max-connection-idle`: GOAWAY, let
    /// anything that races it finish.
    Idle,
    /// A keepalive ping went unanswered: the peer is gone; drop it.
    Unresponsive,
}

/// What the idle watcher reads: calls in flight and when that last changed.
struct Activity {
    open_calls: Cell<usize>,
    last_change: Cell<Instant>,
    /// Set when the connection ends, so its helper tasks stop too.
    ended: Cell<bool>,
}

/// Serves every stream of one connection until the peer closes it, it is
/// idle too long, or it stops answering pings.
pub async fn serve_connection<Io, Service>(
    io: Io,
    peer: SocketAddr,
    service: Rc<Service>,
    serving: Rc<Serving>,
) -> Result<(), h2::Error>
where
    Io: AsyncRead + AsyncWrite + Unpin + 'static,
    Service: GrpcService + 'static,
{
    // Every call on the connection accounts its response bytes in one
    // budget, which the socket's frames credit back (see `send_budget`).
    let limits = &serving.limits;
    let budget = Rc::new(SendBudget::new(
        limits.connection_send_budget,
        limits.connection_held_budget,
    ));
    let io = MeteredIo::new(io, budget.clone());
    let mut connection = builder(&serving.limits).handshake::<_, Bytes>(io).await?;
    let activity = Rc::new(Activity {
        open_calls: Cell::new(0),
        last_change: Cell::new(Instant::now()),
        ended: Cell::new(false),
    });
    let (closing_sender, mut closing) = futures_channel::mpsc::unbounded();
    if let Some(ping_pong) = connection.ping_pong() {
        monoio::spawn(keep_alive(
            ping_pong,
            serving.clone(),
            activity.clone(),
            closing_sender.clone(),
        ));
    }
    if let Some(idle) = serving.max_connection_idle {
        monoio::spawn(watch_idle(idle, activity.clone(), closing_sender));
    }
    let outcome = loop {
        let accepted = monoio::select! {
            accepted = connection.accept() => accepted,
            reason = closing.next() => match reason {
                Some(Closing::Idle) => {
                    // GOAWAY; accept() then ends once in-flight calls end.
                    connection.graceful_shutdown();
                    continue;
                }
                Some(Closing::Unresponsive) => {
                    tracing::debug!(%peer, "closing a connection whose keepalive ping went unanswered");
                    break Ok(());
                }
                None => continue,
            },
        };
        let Some(accepted) = accepted else {
            break Ok(());
        };
        let (request, respond) = match accepted {
            Ok(stream) => stream,
            Err(error) => break Err(error),
        };
        let (service, serving, activity) = (service.clone(), serving.clone(), activity.clone());
        let budget = budget.clone();
        activity.open_calls.set(activity.open_calls.get() + 1);
        activity.last_change.set(Instant::now());
        monoio::spawn(async move {
            serve_stream(request, respond, &*service, &serving, peer, budget).await;
            activity.open_calls.set(activity.open_calls.get() - 1);
            activity.last_change.set(Instant::now());
        });
    };
    activity.ended.set(true);
    outcome
}

/// Pings the client every keepalive interval; a pong that does not come in
/// time closes the connection (grpc-go's server keepalive).
async fn keep_alive(
    mut ping_pong: h2::PingPong,
    serving: Rc<Serving>,
    activity: Rc<Activity>,
    closing: futures_channel::mpsc::UnboundedSender<Closing>,
) {
    loop {
        monoio::time::sleep(serving.keepalive_interval).await;
        if activity.ended.get() {
            return;
        }
        let pong = monoio::time::timeout(
            serving.keepalive_timeout,
            ping_pong.ping(h2::Ping::opaque()),
        )
        .await;
        match pong {
            Ok(Ok(_)) => {}
            // The connection is gone already.
            Ok(Err(_)) => return,
            Err(_) => {
                let _ = closing.unbounded_send(Closing::Unresponsive);
                return;
            }
        }
    }
}

/// Asks for a graceful close once no call has been in flight for `idle`.
async fn watch_idle(
    idle: std::time::Duration,
    activity: Rc<Activity>,
    closing: futures_channel::mpsc::UnboundedSender<Closing>,
) {
    loop {
        let quiet_for = activity.last_change.get().elapsed();
        if quiet_for < idle || activity.open_calls.get() > 0 {
            monoio::time::sleep(idle.saturating_sub(quiet_for).max(idle / 8)).await;
        } else {
            let _ = closing.unbounded_send(Closing::Idle);
            return;
        }
        if activity.ended.get() {
            return;
        }
    }
}

/// How long a refused connection is kept to tell its first calls why.
const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers a connection over the connection limit: completes the HTTP/2
/// handshake so the client gets a gRPC status rather than a reset, fails
/// the calls it sends with `status`, sends GOAWAY, and closes.
pub async fn refuse_connection<Io>(io: Io, limits: &ServerLimits, status: Status)
where
    Io: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let refusing = async {
        let mut connection = builder(limits).handshake::<_, Bytes>(io).await.ok()?;
        // Only trailers go out here: nothing is ever accounted.
        let budget = Rc::new(SendBudget::new(
            limits.connection_send_budget,
            limits.connection_held_budget,
        ));
        while let Some(Ok((_request, respond))) = connection.accept().await {
            ResponseSink::new(respond, budget.clone()).finish(&status);
            connection.graceful_shutdown();
        }
        Some(())
    };
    let _ = monoio::time::timeout(REFUSAL_GRACE, refusing).await;
}
