//! The monitoring endpoint: `/metrics`, `/health`, `/livez` and `/readyz`
//! over HTTP on `--listen-metrics-urls`.
//!
//! It runs on a thread of its own with a small tokio runtime and `hyper`,
//! off the cores that serve clients: a scrape or probe costs a core one
//! message on its control channel (see `runtime::control`), never a lock.
//!
//! - [`health`]: the checks and etcd's response formats (pure).
//! - [`node`]: what the thread reads and asks to answer them.
//! - [`http`](self::http): routing.

pub mod health;
pub mod http;
pub mod node;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::log_throttle::LogThrottle;

pub use node::NodeHandles;

/// `--metrics-max-connections`' default: scrapers and probes use a few.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// What keeps the monitoring endpoint from being the way to exhaust the
/// server's descriptors and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorLimits {
    /// Connections served at once over all metrics URLs; beyond it a
    /// connection gets 503 and is closed.
    pub max_connections: usize,
    /// A request's header must arrive within this, and an idle keep-alive
    /// connection is closed after it (hyper starts the timer whenever it
    /// waits for a request head).
    pub header_read_timeout: Duration,
}
/// The largest request head accepted (hyper answers 431 above it).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// After a failed accept the loop pauses this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// A refusal or accept failure is logged at most this often.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// What an over-the-limit connection is told before it is closed.
const BUSY_REPLY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Binds every address now (so a taken port fails startup, as etcd's
/// does), then serves them from a new thread.
pub fn start(
    addresses: &[SocketAddr],
    limits: MonitorLimits,
    node: NodeHandles,
) -> std::io::Result<()> {
    let listeners = addresses
        .iter()
        .map(|address| {
            let listener = TcpListener::bind(address)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let node = Arc::new(node);
    std::thread::Builder::new()
        .name("metastore-monitor".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot start the monitoring endpoint");
                    return;
                }
            };
            runtime.block_on(serve(listeners, limits, node));
        })?;
    Ok(())
}

async fn serve(listeners: Vec<TcpListener>, limits: MonitorLimits, node: Arc<NodeHandles>) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut accepts = Vec::new();
    for listener in listeners {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => accepts.push(tokio::spawn(accept_loop(
                listener,
                limits,
                node.clone(),
                open.clone(),
            ))),
            Err(error) => tracing::error!(%error, "cannot serve a metrics listener"),
        }
    }
    for accept in accepts {
        let _ = accept.await;
    }
}

/// One served connection; dropping it counts the connection out.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    limits: MonitorLimits,
    node: Arc<NodeHandles>,
    open: Arc<AtomicUsize>,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving /metrics, /health, /livez and /readyz");
    }
    let mut refusals = LogThrottle::new(LOG_INTERVAL);
    let mut failures = LogThrottle::new(LOG_INTERVAL);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                failures.log(Instant::now(), |suppressed| {
                    tracing::warn!(%error, suppressed, "metrics accept failed");
                });
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            refusals.log(Instant::now(), |suppressed| {
                tracing::warn!(%peer, suppressed, limit = limits.max_connections, "refusing metrics connections: too many open (--metrics-max-connections)");
            });
            // Best effort, without waiting: the socket buffer takes it.
            let _ = stream.try_write(BUSY_REPLY);
            continue;
        }
        let slot = Slot(open.clone());
        let node = node.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| http::route(node.clone(), request));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "metrics connection closed with an error");
            }
            drop(slot);
        });
    }
}
