//! One client connection end to end, as the server runs it: the client's
//! bytes go through the inbound guard (`GuardedIo`: header-block and
//! stage bounds), `AuthorityRewritingIo` and `WriteCoalescing` into h2
//! and `grpc::connection::serve_connection`, whose `serve_stream` checks
//! each call's headers (content type → 415, method → 405, `grpc-timeout`,
//! `grpc-encoding`, the `:path` method name) before a small echo service
//! reads the request messages (`RequestStream`, the codec) and sends them
//! back. The slow-request threshold is zero, so every known unary call
//! also goes through the slow-request log's key extraction.
//!
//! Input: the client's bytes after the connection preface (prepended by the
//! target). Each run gets a fresh monoio runtime (epoll driver, which needs
//! no io_uring) over an in-memory pipe, so nothing outlives an input.
//!
//! Properties: the server neither panics nor hangs, ends the connection
//! once the client's bytes run out, and keeps nothing of it afterwards
//! (libFuzzer's RSS limit catches what would pile up).
#![no_main]

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use metastore::grpc::authority::AuthorityRewritingIo;
use metastore::grpc::codec::OutgoingMessage;
use metastore::grpc::connection::serve_connection;
use metastore::grpc::deadlines::StageTimeouts;
use metastore::grpc::inbound::{GuardedIo, InboundLimits, InboundSignals};
use metastore::grpc::rate_limit::RateLimiter;
use metastore::grpc::server::{GrpcService, MethodPath, ServerLimits, Serving};
use metastore::grpc::write_coalescing::WriteCoalescing;
use metastore::grpc::{RequestStream, ResponseSink, Status};
use metastore::metrics::CoreMetrics;
use metastore::proto::etcdserverpb::PutRequest;
use metastore_fuzz::BoundedAllocator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request message sent back as it came.
struct Raw(Bytes);

impl OutgoingMessage for Raw {
    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn encode_raw(&self, dst: &mut BytesMut) {
        dst.extend_from_slice(&self.0);
    }
}

/// `Put` decodes its request as etcd's `PutRequest`; every other method
/// echoes each request message.
struct Echo;

impl GrpcService for Echo {
    async fn call(
        &self,
        method: &MethodPath,
        requests: &mut RequestStream,
        responses: &mut ResponseSink,
    ) -> Result<(), Status> {
        if method.method == "Put" {
            let request: PutRequest = requests.unary().await?;
            return responses.send(&request).await;
        }
        while let Some(message) = requests.next_message().await? {
            responses.send(&Raw(message)).await?;
        }
        Ok(())
    }
}

/// Lets every other runnable task run once.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|context| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        context.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

fn serving() -> Serving {
    let mut limits = ServerLimits::for_max_request_bytes(1024);
    // Small enough that inputs of libFuzzer's sizes can exceed it.
    limits.max_receive_message_len = 1024;
    Serving {
        limits,
        metrics: Rc::new(CoreMetrics::new(true)),
        rate_limiter: Arc::new(RateLimiter::default()),
        slow_request_threshold: Duration::ZERO,
        keepalive_interval: Duration::from_secs(2 * 60 * 60),
        keepalive_timeout: Duration::from_secs(20),
        max_connection_idle: None,
        stages: StageTimeouts {
            handshake: Duration::from_secs(3600),
            first_request: Duration::from_secs(3600),
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("an epoll runtime");
    runtime.block_on(async {
        let serving = Rc::new(serving());
        let (client, server) = tokio::io::duplex(256 * 1024);
        let signals = Rc::new(InboundSignals::default());
        let limits = InboundLimits::new(
            serving.limits.max_header_list_size as usize,
            serving.limits.keepalive_min_time,
        );
        let guarded = GuardedIo::new(server, limits, signals.clone());
        let io = WriteCoalescing::new(AuthorityRewritingIo::new(
            guarded,
            serving.limits.max_header_list_size as usize,
            signals.clone(),
        ));
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        // Reads (and drops) whatever the server answers, so its writes
        // never wait on a full pipe; ends when the server drops its end.
        let reader = monoio::spawn(async move {
            let mut answer = Vec::new();
            let _ = client_read.read_to_end(&mut answer).await;
        });
        let writer = async move {
            let _ = client_write.write_all(PREFACE).await;
            let _ = client_write.write_all(data).await;
            let _ = client_write.shutdown().await;
            client_write
        };
        let server = serve_connection(io, peer, Rc::new(Echo), serving, signals);
        let finished = monoio::time::timeout(Duration::from_secs(10), async {
            let (_outcome, client_write) = monoio::join!(server, writer);
            drop(client_write);
            reader.await;
            // Tasks the end of the connection woke (its calls, its helpers)
            // run to their end before the runtime goes: monoio does not
            // drop the futures of tasks left when it is dropped.
            for _ in 0..8 {
                yield_now().await;
            }
        })
        .await;
        assert!(
            finished.is_ok(),
            "the connection did not end within 10 s of the client's last byte"
        );
    });
});
