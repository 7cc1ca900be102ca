//! Serving one gRPC call (an HTTP/2 stream); `connection` serves the
//! connection it arrives on.
//!
//! The request headers are checked here, before any service code runs, so
//! a malformed request always gets a clean gRPC error and never a panic.
//! Here too each call is counted, rate limited, timed, logged when slow,
//! and isolated: a handler that panics fails its own call only.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{Either, select};
use http::{Method, Request, StatusCode};

use super::call::{GRPC_CONTENT_TYPE, RequestStream, ResponseSink};
use super::rate_limit::RateLimiter;
use super::send_budget::SendBudget;
use super::status::Status;
use super::timeout::parse_grpc_timeout;
use crate::metrics::CoreMetrics;
use crate::metrics::methods::{self, CallType, find_method};

/// Response bytes h2 may queue for one stream (see
/// [`ServerLimits::max_send_buffer_size`]).
pub const MAX_SEND_BUFFER_PER_STREAM: usize = 128 * 1024;
/// Response bytes h2 may queue unwritten for one connection (see
/// [`ServerLimits::connection_send_budget`]); documented in
/// `docs/ARCHITECTURE.md` and the README.
pub const CONNECTION_SEND_BUDGET: usize = 256 * 1024;

/// HTTP/2 and gRPC limits, all set explicitly rather than inherited from
/// the h2 crate's defaults (which change between versions).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS we advertise per connection.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: bounds memory per request's headers.
    pub max_header_list_size: u32,
    /// Streams reset by the peer that we remember at once (h2 keeps them to
    /// tell late frames from protocol errors); bounds the "rapid reset" cost.
    pub max_concurrent_reset_streams: usize,
    /// Peer-reset streams not yet accepted before we call GOAWAY (rapid
    /// reset, CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams we reset because of peer errors before we call GOAWAY.
    pub max_local_error_reset_streams: usize,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_frame_size: u32,
    /// Bytes h2 may queue per stream for sending before the call waits.
    /// Flow control does not bound this: a client may advertise 2^31-1
    /// byte windows and then stop reading.
    pub max_send_buffer_size: usize,
    /// Response bytes h2 may hold unwritten for a connection, over all its
    /// calls, before they wait (see `send_budget`): the per-connection
    /// bound on outgoing data while its client does not read the socket.
    pub connection_send_budget: usize,
    /// Response bytes a connection's calls may hold encoded ahead of their
    /// streams' windows before its watch streams wait to produce more
    /// (other calls never wait on it: flow control is per stream).
    pub connection_held_budget: usize,
    /// Largest request message accepted; above it RESOURCE_EXHAUSTED.
    pub max_receive_message_len: usize,
    /// How long a request message may stay partially received.
    pub request_message_timeout: Duration,
    /// etcd's `--grpc-keepalive-min-time`: clients pinging more often are
    /// told to go away (`inbound`).
    pub keepalive_min_time: Duration,
}

impl ServerLimits {
    /// etcd's limits: it accepts `max_request_bytes` plus 512 KiB of gRPC
    /// overhead (`grpcOverheadBytes`) per message.
    pub fn for_max_request_bytes(max_request_bytes: usize) -> Self {
        Self {
            max_concurrent_streams: 1024,
            max_header_list_size: 16 * 1024,
            max_concurrent_reset_streams: 64,
            max_pending_accept_reset_streams: 64,
            max_local_error_reset_streams: 256,
            initial_stream_window: 1024 * 1024,
            initial_connection_window: 4 * 1024 * 1024,
            max_frame_size: 64 * 1024,
            max_send_buffer_size: MAX_SEND_BUFFER_PER_STREAM,
            connection_send_budget: CONNECTION_SEND_BUDGET,
            // Two of etcd's largest watch responses (what a watch catch-up
            // may encode at once, see `service::watch`).
            connection_held_budget: max_request_bytes
                .saturating_add(512 * 1024)
                .saturating_mul(2),
            max_receive_message_len: max_request_bytes.saturating_add(512 * 1024),
            request_message_timeout: DEFAULT_REQUEST_MESSAGE_TIMEOUT,
            keepalive_min_time: DEFAULT_KEEPALIVE_MIN_TIME,
        }
    }
}

/// `--grpc-request-message-timeout`'s default: a 2 MiB message at 1 Mbit/s
/// takes 17 s.
pub const DEFAULT_REQUEST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// etcd's `--grpc-keepalive-min-time` default.
pub const DEFAULT_KEEPALIVE_MIN_TIME: Duration = Duration::from_secs(5);

/// The method a call names in its `:path`, `/package.Service/Method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodPath {
    pub service: String,
    pub method: String,
}

impl MethodPath {
    pub fn parse(path: &str) -> Option<Self> {
        let rest = path.strip_prefix('/')?;
        let (service, method) = rest.split_once('/')?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        Some(Self {
            service: service.to_owned(),
            method: method.to_owned(),
        })
    }
}

/// What a gRPC server serves. Implementations read requests from
/// `requests` and write responses to `responses`; returning `Ok` ends the
/// call with status OK.
#[allow(
    async_fn_in_trait,
    reason = "services run on one core's executor and are never sent across threads"
)]
pub trait GrpcService {
    async fn call(
        &self,
        method: &MethodPath,
        requests: &mut RequestStream,
        responses: &mut ResponseSink,
    ) -> Result<(), Status>;
}

/// How a core serves its connections: limits, metrics and protections.
/// One per core, shared by its connections.
pub struct Serving {
    pub limits: ServerLimits,
    /// The core's metrics: calls started and handled, panics, slow calls.
    pub metrics: Rc<CoreMetrics>,
    /// Node-wide and per-method rate limits (shared by all cores).
    pub rate_limiter: Arc<RateLimiter>,
    /// Unary calls slower than this are logged.
    pub slow_request_threshold: Duration,
    /// Ping a client this often; close its connection if the pong does not
    /// come within `keepalive_timeout`.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Close a connection with no call in flight for this long.
    pub max_connection_idle: Option<Duration>,
    /// Deadlines of a new connection's stages.
    pub stages: super::deadlines::StageTimeouts,
}

/// The message of a call refused by a rate limit: etcd's
/// `ErrTooManyRequests`, which its clients already treat as "back off".
pub const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";

/// Serves one call. `budget` is its connection's outgoing byte account.
pub(super) async fn serve_stream<Service: GrpcService>(
    request: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    service: &Service,
    serving: &Serving,
    peer: SocketAddr,
    budget: Rc<SendBudget>,
) {
    let started = Instant::now();
    let sink = ResponseSink::new(respond, budget);
    let headers = request.headers();
    // Spec: a request whose content-type does not start with
    // "application/grpc" is not gRPC; answer HTTP 415.
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if !is_grpc_content_type(content_type) {
        let shown = String::from_utf8_lossy(content_type);
        return sink.reject_http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &Status::internal(format!("invalid gRPC request content-type {shown:?}")),
        );
    }
    // Spec: gRPC calls are always POST.
    if request.method() != Method::POST {
        return sink.reject_http(
            StatusCode::METHOD_NOT_ALLOWED,
            &Status::internal(format!("invalid gRPC request method {}", request.method())),
        );
    }
    let deadline = match headers
        .get("grpc-timeout")
        .map(|value| parse_grpc_timeout(value.as_bytes()))
    {
        None => None,
        Some(Ok(timeout)) => Some(timeout),
        Some(Err(error)) => {
            return sink.finish(&Status::internal(format!(
                "malformed grpc-timeout: {error}"
            )));
        }
    };
    // compression.md: a message compressed with an algorithm the server
    // does not support ends the call with UNIMPLEMENTED; we support none.
    if let Some(encoding) = headers
        .get("grpc-encoding")
        .filter(|encoding| encoding.as_bytes() != b"identity")
    {
        let shown = String::from_utf8_lossy(encoding.as_bytes());
        return sink.finish(&Status::unimplemented(format!(
            "grpc: Decompressor is not installed for grpc-encoding {shown:?}"
        )));
    }
    let Some(method) = MethodPath::parse(request.uri().path()) else {
        return sink.finish(&Status::unimplemented(format!(
            "malformed method name: {:?}",
            request.uri().path()
        )));
    };
    let known = find_method(&method.service, &method.method);
    if let Some(id) = known {
        serving.metrics.call_started(id);
    }
    let mut requests = RequestStream::new(
        request.into_body(),
        serving.limits.max_receive_message_len,
        serving.limits.request_message_timeout,
    );
    let mut sink = sink;
    let status = if serving.rate_limiter.admit(known, started) {
        let client_gone = sink.gone();
        let call = run_isolated(
            service,
            &method,
            &mut requests,
            &mut sink,
            deadline,
            serving,
        );
        match select(pin!(call), client_gone).await {
            Either::Left((status, _)) => status,
            // The client reset the stream or its connection ended: the
            // handler's future is dropped here, so its work stops and its
            // guards undo what it would have left behind (a Lock waiter's
            // key), as etcd does when a call's context is canceled. Writes
            // already handed to a shard still complete (the write path
            // does not depend on this future); nobody hears the reply.
            // Counted as CANCELLED, as grpc-go counts a call whose client
            // canceled it.
            Either::Right(((), _)) => Status::cancelled("context canceled"),
        }
    } else {
        serving.metrics.count(|counters| counters.rate_limited += 1);
        Status::resource_exhausted(TOO_MANY_REQUESTS)
    };
    let elapsed = started.elapsed();
    if requests.message_timed_out() {
        serving
            .metrics
            .count(|counters| counters.request_message_timeouts += 1);
    }
    if let Some(id) = known {
        serving.metrics.call_handled(id, status.code(), elapsed);
        let unary = methods::method(id).call_type == CallType::Unary;
        if unary && elapsed > serving.slow_request_threshold {
            serving
                .metrics
                .count(|counters| counters.slow_requests += 1);
            tracing::warn!(
                method = %format_args!("/{}/{}", method.service, method.method),
                took = ?elapsed,
                %peer,
                key = %key_prefix(&method, requests.first_message()),
                code = %status.code(),
                "request took too long"
            );
        }
    }
    sink.finish(&status);
}

/// Runs the call under its deadline. A panic in the handler fails only
/// this call (INTERNAL) and is counted; the core keeps serving.
async fn run_isolated<Service: GrpcService>(
    service: &Service,
    method: &MethodPath,
    requests: &mut RequestStream,
    sink: &mut ResponseSink,
    deadline: Option<Duration>,
    serving: &Serving,
) -> Status {
    let work = async {
        // Fault injection for tests: `return(Method)` panics that method.
        #[cfg(debug_assertions)]
        if let Some(target) = fail::eval("grpc-handler-panic", |name| name)
            && target.is_none_or(|name| name == method.method)
        {
            panic!("failpoint grpc-handler-panic in {}", method.method);
        }
        service.call(method, requests, sink).await
    };
    match AssertUnwindSafe(run_with_deadline(work, deadline))
        .catch_unwind()
        .await
    {
        Ok(Some(Ok(()))) => Status::ok(),
        Ok(Some(Err(status))) => status,
        Ok(None) => Status::deadline_exceeded("context deadline exceeded"),
        Err(panic) => {
            serving
                .metrics
                .count(|counters| counters.handler_panics += 1);
            let what = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(method = %format_args!("/{}/{}", method.service, method.method), panic = %what, "a request handler panicked; the request failed and the server goes on");
            Status::internal("grpc: the server panicked while handling the request")
        }
    }
}

/// The key a KV call names (Range, Put, DeleteRange: field 1 of the
/// request), shortened and made printable, for the slow-request log.
/// Public for the fuzz targets (`fuzz/`): it reads request bytes.
pub fn key_prefix(method: &MethodPath, first_message: Option<&Bytes>) -> String {
    const SHOWN: usize = 32;
    let keyed = method.service == "etcdserverpb.KV"
        && matches!(method.method.as_str(), "Range" | "Put" | "DeleteRange");
    let Some(key) = first_message
        .filter(|_| keyed)
        .and_then(|message| field_one_bytes(message))
    else {
        return String::new();
    };
    let shown = String::from_utf8_lossy(&key[..key.len().min(SHOWN)]).into_owned();
    if key.len() > SHOWN {
        format!("{shown}...")
    } else {
        shown
    }
}

/// Field 1 of a protobuf message when it comes first and is
/// length-delimited (how prost and Go encode `key`).
fn field_one_bytes(message: &[u8]) -> Option<&[u8]> {
    // Tag for field 1, wire type 2 (LEN).
    let rest = message.strip_prefix(&[0x0a])?;
    let mut length = 0u64;
    for (index, byte) in rest.iter().enumerate().take(10) {
        length |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            let body = &rest[index + 1..];
            // The length comes from the request: compared with the bytes
            // present before it is used, never added to (a ten-byte varint
            // is close to u64::MAX).
            let length = usize::try_from(length)
                .ok()
                .filter(|length| *length <= body.len())?;
            return Some(&body[..length]);
        }
    }
    None
}

/// `None` when the deadline passed first.
///
/// This future is part of every call's task, which is allocated and moved
/// per call, so it is kept small: a plain function returning one of two
/// futures (an `async fn` would hold `work` twice, as its argument and
/// inside the future it awaits), and the timer (640 bytes in monoio) boxed,
/// only for calls that carry a deadline.
fn run_with_deadline<Work: Future>(
    work: Work,
    deadline: Option<Duration>,
) -> impl Future<Output = Option<Work::Output>> {
    match deadline {
        Some(deadline) => {
            Either::Left(Box::pin(monoio::time::timeout(deadline, work)).map(Result::ok))
        }
        None => Either::Right(work.map(Some)),
    }
}

/// "application/grpc", optionally followed by "+format" or ";params".
/// Public for the fuzz targets (`fuzz/`).
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    let Some(rest) = value.strip_prefix(GRPC_CONTENT_TYPE.as_bytes()) else {
        return false;
    };
    rest.is_empty() || rest.starts_with(b"+") || rest.starts_with(b";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_paths() {
        assert_eq!(
            MethodPath::parse("/etcdserverpb.KV/Range"),
            Some(MethodPath {
                service: "etcdserverpb.KV".into(),
                method: "Range".into()
            })
        );
        for bad in ["", "/", "//", "/KV", "/KV/", "KV/Range", "/a/b/c"] {
            assert_eq!(MethodPath::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn slow_request_log_names_the_key() {
        use prost::Message;
        let put = MethodPath::parse("/etcdserverpb.KV/Put").expect("path");
        let request = crate::proto::etcdserverpb::PutRequest {
            key: Bytes::from_static(b"/registry/pods/default/web-0"),
            value: Bytes::from(vec![b'x'; 300]),
            ..Default::default()
        };
        let message = Bytes::from(request.encode_to_vec());
        assert_eq!(
            key_prefix(&put, Some(&message)),
            "/registry/pods/default/web-0"
        );
        let long = crate::proto::etcdserverpb::RangeRequest {
            key: Bytes::from(vec![b'k'; 100]),
            ..Default::default()
        };
        let range = MethodPath::parse("/etcdserverpb.KV/Range").expect("path");
        let shown = key_prefix(&range, Some(&Bytes::from(long.encode_to_vec())));
        assert_eq!(shown, format!("{}...", "k".repeat(32)));
        let status = MethodPath::parse("/etcdserverpb.Maintenance/Status").expect("path");
        assert_eq!(key_prefix(&status, Some(&message)), "");
        assert_eq!(
            key_prefix(&put, Some(&Bytes::from_static(&[0x0a, 0x90]))),
            ""
        );
    }

    /// Found by the `grpc_headers` fuzz target: a ten-byte length varint
    /// decodes to nearly `usize::MAX`, and adding the varint's own length
    /// to it overflowed (a panic in debug builds, where the log is on the
    /// request path of every slow unary call).
    #[test]
    fn slow_request_log_survives_a_huge_key_length() {
        let put = MethodPath::parse("/etcdserverpb.KV/Put").expect("path");
        let mut message = vec![0x0a];
        message.extend_from_slice(&[0xff; 9]);
        message.push(0x01);
        assert_eq!(key_prefix(&put, Some(&Bytes::from(message))), "");
        // The same overflow with a declared length one short of the end of
        // the address space, and a payload after it.
        let mut message = vec![0x0a];
        message.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        message.extend_from_slice(b"grpc-timeout");
        assert_eq!(key_prefix(&put, Some(&Bytes::from(message))), "");
    }

    #[test]
    fn content_types() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(is_grpc_content_type(b"application/grpc; charset=utf-8"));
        assert!(!is_grpc_content_type(b"application/grpcx"));
        assert!(!is_grpc_content_type(b"application/json"));
        assert!(!is_grpc_content_type(b""));
    }
}
