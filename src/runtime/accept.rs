//! A core's accept loop: admission against the node-wide connection cap
//! (`--max-connections`), the refusal of connections over it, and what
//! happens when the process runs out of file descriptors.
//!
//! Whatever the load, connections already open keep working and a new one
//! learns its fate at once: over the cap it gets a gRPC status
//! (RESOURCE_EXHAUSTED) or, when too many refusals are already in flight,
//! an immediate close; when accept itself fails for want of a file
//! descriptor (EMFILE, ENFILE), a descriptor kept in reserve is released
//! to take the waiting connections off the queue and reset them, instead of
//! leaving their clients to time out. The loop backs off while accepts
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
/// Waiting connections reset per round while out of descriptors.
const RESETS_PER_ROUND: usize = 256;
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
    open_connections: Arc<AtomicUsize>,
    metrics: Rc<CoreMetrics>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
        self.metrics
            .count(|counters| counters.connections_open -= 1);
    }
}

/// A descriptor held so that, when the process has none left, one can be
/// freed to accept (and reset) a waiting connection.
struct FdReserve {
    file: Option<std::fs::File>,
}

impl FdReserve {
    fn new() -> Self {
        Self {
            file: std::fs::File::open("/dev/null").ok(),
        }
    }

    fn release(&mut self) {
        self.file = None;
    }

    /// Takes a descriptor again; another thread may have taken the freed
    /// one, in which case the next round tries again.
    fn restore(&mut self) {
        if self.file.is_none() {
            self.file = std::fs::File::open("/dev/null").ok();
        }
    }
}

/// Pauses between failing accepts, doubling while they keep failing.
struct Backoff {
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

/// Resets connections waiting in `listener`'s queue, using the reserve
/// descriptor for each accept. `listener` is a second handle on the core's
/// listening socket; only this core accepts on that socket, so a queue
/// found readable stays readable until this accept.
fn reset_waiting_connections(listener: &StdTcpListener, reserve: &mut FdReserve) -> usize {
    reserve.release();
    let mut reset = 0;
    while reset < RESETS_PER_ROUND {
        let mut ready = [rustix::event::PollFd::new(
            listener,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut ready, Some(&zero)) {
            Ok(1) => {}
            _ => break,
        }
        match listener.accept() {
            Ok((stream, _)) => {
                // RST rather than FIN: the client learns at once, and no
                // TIME_WAIT is left on this side.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                reset += 1;
            }
            Err(_) => break,
        }
    }
    reserve.restore();
    reset
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
    let mut reserve = FdReserve::new();
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
            Err(error) if out_of_descriptors(&error) => {
                let reset = reset_waiting_connections(&spare_handle, &mut reserve);
                admission
                    .metrics
                    .count(|counters| counters.connections_refused_no_fd += reset as u64);
                logs.out_of_descriptors.log(Instant::now(), |suppressed| {
                    tracing::warn!(%error, reset, suppressed, "out of file descriptors: new client connections are reset until some close (raise `ulimit -n` or lower --max-connections)");
                });
                monoio::time::sleep(backoff.take()).await;
                continue;
            }
            Err(error) => {
                logs.failed.log(Instant::now(), |suppressed| {
                    tracing::warn!(%error, suppressed, "accept failed");
                });
                monoio::time::sleep(backoff.take()).await;
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
        let guarded = GuardedIo::new(
            io,
            InboundLimits::for_header_list_size(max_header_list_size),
            signals.clone(),
        );
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
        let guarded = GuardedIo::new(
            io,
            InboundLimits::for_header_list_size(max_header_list_size),
            signals.clone(),
        );
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
    fn waiting_connections_are_reset_with_the_reserve_descriptor() {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let clients: Vec<std::net::TcpStream> = (0..3)
            .map(|_| std::net::TcpStream::connect(address).expect("connect"))
            .collect();
        let mut reserve = FdReserve::new();
        assert_eq!(reset_waiting_connections(&listener, &mut reserve), 3);
        assert!(reserve.file.is_some(), "the reserve is taken again");
        for mut client in clients {
            use std::io::Read;
            let mut byte = [0u8; 1];
            let read = client.read(&mut byte);
            assert!(
                matches!(&read, Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset),
                "{read:?}"
            );
        }
        assert_eq!(
            reset_waiting_connections(&listener, &mut reserve),
            0,
            "an empty queue does not block"
        );
    }
}
