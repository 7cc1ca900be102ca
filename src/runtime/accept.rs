//! A core's accept loop: admission against the node-wide connection cap
//! (`--max-connections`), the refusal of connections over it, and what
//! happens when the process runs out of file descriptors.
//!
//! Whatever the load, connections already open keep working and a new one
//! learns its fate at once: over the cap it gets a gRPC status
//! (RESOURCE_EXHAUSTED) or, when too many refusals are already in flight,
//! an immediate close. When accept itself fails for want of a file
//! descriptor (EMFILE, ENFILE), the core's listener stops listening while
//! the loop backs off: the kernel resets the connections waiting in its
//! queue and refuses new ones (or hands them to another core's listener),
//! instead of leaving their clients to time out, and it needs no
//! descriptor to do so. (A descriptor kept in reserve and freed to accept
//! and reset them would be taken by another thread first: the other cores'
//! accepts are waiting in the kernel.) The loop backs off while accepts
//! fail, and each refusal is counted (per core) and logged at most every
//! few seconds.

use std::cell::Cell;
use std::net::TcpListener as StdTcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::grpc::Status;
use crate::grpc::authority::AuthorityRewritingIo;
use crate::grpc::connection::{refuse_connection, serve_connection};
use crate::grpc::inbound::{GuardedIo, InboundLimits, InboundSignals};
use crate::grpc::server::Serving;
use crate::grpc::write_coalescing::WriteCoalescing;
use crate::log_throttle::LogThrottle;
use crate::metrics::CoreMetrics;
use crate::service::EtcdServices;

/// The status of calls on a connection over `--max-connections`.
const TOO_MANY_CONNECTIONS: &str = "metastore: too many client connections";
/// Refused connections a core keeps open at once to tell their clients why
/// (each holds a descriptor for up to a second); beyond it a refused
/// connection is closed at once.
const POLITE_REFUSALS: usize = 64;
/// After a failed accept the loop pauses this long, doubling up to
/// `MAX_ACCEPT_BACKOFF` while accepts keep failing.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(500);
/// A refusal or accept failure is logged at most this often.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The node-wide connection count and its limit, as one core sees them.
pub(super) struct Admission {
    /// Shared by all cores; touched once per connection, never per call.
    pub open_connections: Arc<AtomicUsize>,
    pub max_connections: Option<usize>,
    pub metrics: Rc<CoreMetrics>,
}

impl Admission {
    /// Counts a new connection in, unless the node is at its limit.
    fn admit(&self) -> Option<ConnectionSlot> {
        let open = self.open_connections.fetch_add(1, Ordering::AcqRel);
        if self.max_connections.is_some_and(|max| open >= max) {
            self.open_connections.fetch_sub(1, Ordering::AcqRel);
            self.metrics
                .count(|counters| counters.connections_rejected += 1);
            return None;
        }
        self.metrics.count(|counters| {
            counters.connections_accepted += 1;
            counters.connections_open += 1;
        });
        Some(ConnectionSlot {
            open_connections: self.open_connections.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

/// One admitted connection; dropping it counts the connection out.
struct ConnectionSlot {
    /// The node-wide count it is part of.
    open_connections: Arc<AtomicUsize>,
    /// The core's gauge of open connections.
    metrics: Rc<CoreMetrics>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
        self.metrics
            .count(|counters| counters.connections_open -= 1);
    }
}

/// Pauses between failing accepts, doubling while they keep failing.
struct Backoff {
    /// The next pause.
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: MIN_ACCEPT_BACKOFF,
        }
    }

    fn reset(&mut self) {
        self.next = MIN_ACCEPT_BACKOFF;
    }

    fn take(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(MAX_ACCEPT_BACKOFF);
        pause
    }
}

/// EMFILE: the process's limit; ENFILE: the system's.
fn out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Stops listening on the socket behind `listener` (a second handle on a
/// core's listening socket): on Linux, `shutdown(SHUT_RD)` on a listening
/// TCP socket resets the connections in its accept queue and takes it out
/// of the port's SO_REUSEPORT group, so new connections go to another
/// core's listener or are refused. The socket keeps its port because the
/// port was bound explicitly (a socket bound to port 0 would lose it), so
/// it can listen again.
fn stop_listening(listener: &StdTcpListener) -> std::io::Result<()> {
    socket2::SockRef::from(listener).shutdown(std::net::Shutdown::Read)
}

/// Listens again; on a socket that never stopped, `listen` only sets the
/// backlog again.
fn listen_again(listener: &StdTcpListener) -> std::io::Result<()> {
    socket2::SockRef::from(listener).listen(super::LISTEN_BACKLOG)
}

/// What the accept loop logs, each at most every `LOG_INTERVAL`.
struct AcceptLogs {
    over_cap: LogThrottle,
    out_of_descriptors: LogThrottle,
    failed: LogThrottle,
}

pub(super) async fn accept_loop(
    listener: StdTcpListener,
    services: Rc<EtcdServices>,
    serving: Rc<Serving>,
    admission: Rc<Admission>,
) -> Result<(), String> {
    let spare_handle = listener
        .try_clone()
        .map_err(|error| format!("cannot use listener: {error}"))?;
    let listener = monoio::net::TcpListener::from_std(listener)
        .map_err(|error| format!("cannot use listener: {error}"))?;
    let mut backoff = Backoff::new();
    let polite_refusals = Rc::new(Cell::new(0usize));
    let mut logs = AcceptLogs {
        over_cap: LogThrottle::new(LOG_INTERVAL),
        out_of_descriptors: LogThrottle::new(LOG_INTERVAL),
        failed: LogThrottle::new(LOG_INTERVAL),
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            Err(error) => {
                if out_of_descriptors(&error) {
                    admission
                        .metrics
                        .count(|counters| counters.accepts_out_of_fds += 1);
                    let stopped = stop_listening(&spare_handle);
                    logs.out_of_descriptors.log(Instant::now(), |suppressed| {
                        tracing::warn!(%error, suppressed, stopped_listening = stopped.is_ok(), "out of file descriptors: new client connections are refused until some close (raise `ulimit -n` or lower --max-connections)");
                    });
                } else {
                    logs.failed.log(Instant::now(), |suppressed| {
                        tracing::warn!(%error, suppressed, "accept failed");
                    });
                }
                monoio::time::sleep(backoff.take()).await;
                // Also after other errors: a listener that could not
                // listen again last time gets another chance.
                if let Err(error) = listen_again(&spare_handle) {
                    logs.failed.log(Instant::now(), |suppressed| {
                        tracing::error!(%error, suppressed, "cannot listen again; retrying");
                    });
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = admission.admit() else {
            logs.over_cap.log(Instant::now(), |suppressed| {
                tracing::warn!(%peer, suppressed, "refusing client connections: --max-connections are open");
            });
            if polite_refusals.get() < POLITE_REFUSALS {
                refuse_politely(stream, serving.clone(), polite_refusals.clone());
            }
            // Otherwise dropping the stream closes it now.
            continue;
        };
        let io = match stream.try_into_poll_io() {
            Ok(io) => io,
            Err((error, _)) => {
                tracing::warn!(%peer, %error, "cannot drive connection");
                continue;
            }
        };
        let signals = Rc::new(InboundSignals::default());
        let max_header_list_size = serving.limits.max_header_list_size as usize;
        let guarded = GuardedIo::new(io, inbound_limits(&serving), signals.clone());
        let io = WriteCoalescing::new(AuthorityRewritingIo::new(
            guarded,
            max_header_list_size,
            signals.clone(),
        ));
        let (services, serving) = (services.clone(), serving.clone());
        monoio::spawn(async move {
            if let Err(error) = serve_connection(io, peer, services, serving, signals).await {
                tracing::debug!(%peer, %error, "connection closed with an error");
            }
            drop(slot);
        });
    }
}

fn inbound_limits(serving: &Serving) -> InboundLimits {
    InboundLimits::new(
        serving.limits.max_header_list_size as usize,
        serving.limits.keepalive_min_time,
    )
}

/// Completes the handshake of a connection over the cap to fail its calls
/// with RESOURCE_EXHAUSTED (grpc-go's listener limit would leave it
/// waiting in the accept queue instead).
fn refuse_politely(
    stream: monoio::net::TcpStream,
    serving: Rc<Serving>,
    in_flight: Rc<Cell<usize>>,
) {
    let Ok(io) = stream.try_into_poll_io() else {
        return;
    };
    in_flight.set(in_flight.get() + 1);
    monoio::spawn(async move {
        // The same layers as a served connection, so an etcd 3.4 client's
        // URL-shaped authority gets the status too; a violation just ends
        // the refusal early.
        let signals = Rc::new(InboundSignals::default());
        let max_header_list_size = serving.limits.max_header_list_size as usize;
        let guarded = GuardedIo::new(io, inbound_limits(&serving), signals.clone());
        let io = WriteCoalescing::new(AuthorityRewritingIo::new(
            guarded,
            max_header_list_size,
            signals,
        ));
        let status = Status::resource_exhausted(TOO_MANY_CONNECTIONS);
        refuse_connection(io, &serving.limits, status).await;
        in_flight.set(in_flight.get() - 1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut backoff = Backoff::new();
        let pauses: Vec<Duration> = (0..9).map(|_| backoff.take()).collect();
        assert_eq!(pauses[0], MIN_ACCEPT_BACKOFF);
        assert_eq!(pauses[1], MIN_ACCEPT_BACKOFF * 2);
        assert_eq!(pauses[8], MAX_ACCEPT_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.take(), MIN_ACCEPT_BACKOFF);
    }

    #[test]
    fn a_listener_that_stops_resets_its_queue_refuses_new_connections_and_listens_again() {
        use std::io::Read;
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        // An explicit port, as the server's: one bound to port 0 gives it
        // back when it stops listening.
        let port = StdTcpListener::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .expect("a free port")
            .port();
        let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        socket.bind(&address.into()).expect("bind");
        socket.listen(16).expect("listen");
        let listener: StdTcpListener = socket.into();
        let mut queued: Vec<std::net::TcpStream> = (0..3)
            .map(|_| std::net::TcpStream::connect(address).expect("connect"))
            .collect();
        stop_listening(&listener).expect("stop");
        for client in &mut queued {
            let mut byte = [0u8; 1];
            let read = client.read(&mut byte);
            assert!(
                matches!(&read, Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset),
                "{read:?}"
            );
        }
        let refused = std::net::TcpStream::connect(address);
        assert!(
            matches!(&refused, Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused),
            "{refused:?}"
        );
        listen_again(&listener).expect("listen again");
        let client = std::net::TcpStream::connect(address).expect("connect again");
        let (accepted, _) = listener.accept().expect("accept");
        assert_eq!(accepted.peer_addr().ok(), client.local_addr().ok());
    }
}
