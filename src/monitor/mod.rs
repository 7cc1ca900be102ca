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

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub use node::NodeHandles;

/// Binds every address now (so a taken port fails startup, as etcd's
/// does), then serves them from a new thread.
pub fn start(addresses: &[SocketAddr], node: NodeHandles) -> std::io::Result<()> {
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
            runtime.block_on(serve(listeners, node));
        })?;
    Ok(())
}

async fn serve(listeners: Vec<TcpListener>, node: Arc<NodeHandles>) {
    let mut accepts = Vec::new();
    for listener in listeners {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => accepts.push(tokio::spawn(accept_loop(listener, node.clone()))),
            Err(error) => tracing::error!(%error, "cannot serve a metrics listener"),
        }
    }
    for accept in accepts {
        let _ = accept.await;
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, node: Arc<NodeHandles>) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving /metrics, /health, /livez and /readyz");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| http::route(node.clone(), request));
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "metrics connection closed with an error");
            }
        });
    }
}
