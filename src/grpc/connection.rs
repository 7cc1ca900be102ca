//! Serving one client connection: the HTTP/2 handshake with our limits,
//! one task per call, the connection's outgoing byte budget, keepalive
//! pings, idle close, the deadlines of a new connection's stages
//! (`deadlines`), GOAWAY for a client whose header blocks break
//! `inbound`'s bounds, and the polite refusal of a connection over
//! `--max-connections`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

use super::call::ResponseSink;
use super::deadlines::{MissedStage, missed_stage};
use super::frame_meter::MeteredIo;
use super::inbound::{InboundSignals, InboundViolation};
use super::send_budget::SendBudget;
use super::server::{GrpcService, ServerLimits, Serving, serve_stream};
use super::status::Status;
use crate::metrics::ConnectionClose;

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
#[derive(Debug, Clone, PartialEq, Eq)]
enum Closing {
    /// No call in flight for `--grpc-max-connection-idle`: GOAWAY, let
    /// anything that races it finish.
    Idle,
    /// A keepalive ping went unanswered: the peer is gone; drop it.
    Unresponsive,
    /// A stage of the new connection missed its deadline: GOAWAY, close.
    Stage(MissedStage),
    /// The client's bytes broke `inbound`'s bounds: GOAWAY, close.
    Abuse(InboundViolation),
    /// A GOAWAY was sent and the connection is still open: drop it.
    Overdue,
}

/// How long a connection told to go away may take to close: long enough
/// to flush the GOAWAY, short enough that a client that stopped reading
/// cannot keep it.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// What the idle watcher reads: calls in flight and when that last changed.
struct Activity {
    open_calls: Cell<usize>,
    last_change: Cell<Instant>,
    /// Set when the connection ends, so its helper tasks stop too.
    ended: Cell<bool>,
    /// Helper tasks waiting in `Activity::ended`: a connection flood must
    /// not leave a sleeping keepalive task per closed connection behind.
    ended_waiters: RefCell<Vec<Waker>>,
}

impl Activity {
    fn new() -> Self {
        Self {
            open_calls: Cell::new(0),
            last_change: Cell::new(Instant::now()),
            ended: Cell::new(false),
            ended_waiters: RefCell::new(Vec::new()),
        }
    }

    fn end(&self) {
        self.ended.set(true);
        for waker in self.ended_waiters.take() {
            waker.wake();
        }
    }

    /// Resolves once the connection has ended.
    async fn ended(&self) {
        std::future::poll_fn(|context| {
            if self.ended.get() {
                Poll::Ready(())
            } else {
                self.ended_waiters
                    .borrow_mut()
                    .push(context.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Sleeps for `duration`; `false` if the connection ended meanwhile.
    async fn sleep(&self, duration: Duration) -> bool {
        monoio::select! {
            _ = monoio::time::sleep(duration) => !self.ended.get(),
            _ = self.ended() => false,
        }
    }
}

/// What the select loop of `serve_connection` woke up for.
#[allow(
    clippy::large_enum_variant,
    reason = "a stack temporary per turn of the loop; boxing the stream would allocate per call"
)]
enum Event {
    Accepted(Option<Result<Stream, h2::Error>>),
    Closing(Option<Closing>),
}

type Stream = (
    http::Request<h2::RecvStream>,
    h2::server::SendResponse<Bytes>,
);

/// Serves every stream of one connection until the peer closes it, it is
/// idle too long, it stops answering pings, it misses a stage deadline,
/// or its header blocks break `inbound`'s bounds.
pub async fn serve_connection<Io, Service>(
    io: Io,
    peer: SocketAddr,
    service: Rc<Service>,
    serving: Rc<Serving>,
    signals: Rc<InboundSignals>,
) -> Result<(), h2::Error>
where
    Io: AsyncRead + AsyncWrite + Unpin + 'static,
    Service: GrpcService + 'static,
{
    let accepted_at = Instant::now();
    // Every call on the connection accounts its response bytes in one
    // budget, which the socket's frames credit back (see `send_budget`).
    let limits = &serving.limits;
    let budget = Rc::new(SendBudget::new(
        limits.connection_send_budget,
        limits.connection_held_budget,
    ));
    let io = MeteredIo::new(io, budget.clone());
    // The client preface: h2's handshake ends once it has read it.
    let handshake = builder(&serving.limits).handshake::<_, Bytes>(io);
    let mut connection = match monoio::time::timeout(serving.stages.handshake, handshake).await {
        Ok(connection) => connection?,
        Err(_) => {
            serving
                .metrics
                .connection_closed(ConnectionClose::HandshakeTimeout);
            tracing::debug!(%peer, "closing a connection that sent no client preface in time");
            return Ok(());
        }
    };
    let activity = Rc::new(Activity::new());
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
        monoio::spawn(watch_idle(idle, activity.clone(), closing_sender.clone()));
    }
    // Fused: once it has resolved it stays pending.
    let mut inbound = std::pin::pin!(
        async {
            monoio::select! {
                violation = signals.violation() => Closing::Abuse(violation),
                missed = missed_stage(&signals, accepted_at, serving.stages) => Closing::Stage(missed),
            }
        }
        .fuse()
    );
    let outcome = loop {
        let event = monoio::select! {
            accepted = connection.accept() => Event::Accepted(accepted),
            reason = closing.next() => Event::Closing(reason),
            reason = inbound.as_mut() => Event::Closing(Some(reason)),
        };
        let accepted = match event {
            Event::Accepted(accepted) => accepted,
            Event::Closing(None) => continue,
            Event::Closing(Some(reason)) => {
                match begin_closing(&mut connection, reason, &serving, peer) {
                    Some(grace) => {
                        monoio::spawn(overdue(grace, activity.clone(), closing_sender.clone()));
                        continue;
                    }
                    None => break Ok(()),
                }
            }
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
    activity.end();
    outcome
}

/// How long a connection told to go away may stay open.
#[derive(Debug, Clone, Copy)]
struct Grace {
    period: Duration,
    /// Whether calls still in flight keep it open beyond `period` (an idle
    /// close lets calls that raced the GOAWAY finish; an abrupt one not).
    waits_for_calls: bool,
}

/// Starts closing the connection for `reason`: GOAWAY and the grace the
/// connection then has to close by itself, or `None` to drop it now.
fn begin_closing<Io>(
    connection: &mut h2::server::Connection<Io, Bytes>,
    reason: Closing,
    serving: &Serving,
    peer: SocketAddr,
) -> Option<Grace>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = &serving.metrics;
    match reason {
        Closing::Idle => {
            metrics.connection_closed(ConnectionClose::Idle);
            // GOAWAY; accept() then ends once in-flight calls end.
            connection.graceful_shutdown();
            Some(Grace {
                period: serving.keepalive_timeout,
                waits_for_calls: true,
            })
        }
        Closing::Unresponsive => {
            metrics.connection_closed(ConnectionClose::Unresponsive);
            tracing::debug!(%peer, "closing a connection whose keepalive ping went unanswered");
            None
        }
        Closing::Stage(missed) => {
            metrics.connection_closed(match missed {
                MissedStage::Settings => ConnectionClose::SettingsTimeout,
                MissedStage::FirstRequest => ConnectionClose::FirstRequestTimeout,
            });
            tracing::debug!(%peer, ?missed, "closing a connection that missed a stage deadline");
            connection.abrupt_shutdown(missed.reason());
            Some(Grace {
                period: GOAWAY_GRACE,
                waits_for_calls: false,
            })
        }
        Closing::Abuse(violation) => {
            metrics.connection_closed(ConnectionClose::HeaderAbuse);
            tracing::debug!(%peer, %violation, "closing a connection whose header blocks broke the limits");
            connection.abrupt_shutdown(violation.reason());
            Some(Grace {
                period: GOAWAY_GRACE,
                waits_for_calls: false,
            })
        }
        Closing::Overdue => None,
    }
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
        if !activity.sleep(serving.keepalive_interval).await {
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

/// Asks for the connection to be dropped once its grace after a GOAWAY has
/// passed, unless it closed by itself (or, for an idle close, still has
/// calls in flight: they are bounded by their own deadlines and the
/// keepalive).
async fn overdue(
    grace: Grace,
    activity: Rc<Activity>,
    closing: futures_channel::mpsc::UnboundedSender<Closing>,
) {
    while activity.sleep(grace.period).await {
        if !grace.waits_for_calls || activity.open_calls.get() == 0 {
            let _ = closing.unbounded_send(Closing::Overdue);
            return;
        }
    }
}

/// Asks for a graceful close once no call has been in flight for `idle`.
async fn watch_idle(
    idle: Duration,
    activity: Rc<Activity>,
    closing: futures_channel::mpsc::UnboundedSender<Closing>,
) {
    loop {
        let quiet_for = activity.last_change.get().elapsed();
        if quiet_for < idle || activity.open_calls.get() > 0 {
            if !activity
                .sleep(idle.saturating_sub(quiet_for).max(idle / 8))
                .await
            {
                return;
            }
        } else {
            let _ = closing.unbounded_send(Closing::Idle);
            return;
        }
    }
}

/// How long a refused connection is kept to tell its first calls why.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::grpc::deadlines::StageTimeouts;
    use crate::grpc::rate_limit::RateLimiter;
    use crate::grpc::server::MethodPath;
    use crate::grpc::{RequestStream, ResponseSink};
    use crate::metrics::CoreMetrics;

    struct Unimplemented;

    impl GrpcService for Unimplemented {
        async fn call(
            &self,
            _method: &MethodPath,
            _requests: &mut RequestStream,
            _responses: &mut ResponseSink,
        ) -> Result<(), Status> {
            Err(Status::unimplemented("none"))
        }
    }

    /// Found by the `grpc_connection` fuzz target, whose memory grew by the
    /// core's metrics with every connection: the keepalive and idle
    /// helpers of a connection slept out their interval (2 h by default)
    /// after the connection had ended, each holding the core's `Serving`,
    /// so a client that connects and disconnects in a loop piled up tasks.
    #[test]
    fn helpers_end_with_their_connection() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let serving = Rc::new(Serving {
                limits: ServerLimits::for_max_request_bytes(1024),
                metrics: Rc::new(CoreMetrics::new(true)),
                rate_limiter: Arc::new(RateLimiter::default()),
                slow_request_threshold: Duration::from_secs(1),
                keepalive_interval: Duration::from_secs(2 * 60 * 60),
                keepalive_timeout: Duration::from_secs(20),
                max_connection_idle: Some(Duration::from_secs(2 * 60 * 60)),
                stages: StageTimeouts {
                    handshake: Duration::from_secs(3600),
                    first_request: Duration::from_secs(3600),
                },
            });
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let peer = SocketAddr::from(([127, 0, 0, 1], 1));
            let client = async move {
                // The preface, an empty SETTINGS frame, then the end.
                client
                    .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                    .await
                    .expect("write");
                client.shutdown().await.expect("shutdown");
                client
            };
            let signals = Rc::new(InboundSignals::default());
            let served = serve_connection(
                server,
                peer,
                Rc::new(Unimplemented),
                serving.clone(),
                signals,
            );
            let (_outcome, _client) = monoio::join!(served, client);
            // Let anything the end of the connection woke run.
            monoio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(
                Rc::strong_count(&serving),
                1,
                "a helper task still holds the core's Serving after its connection ended"
            );
        });
    }
}
