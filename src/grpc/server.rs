//! Serving gRPC on one HTTP/2 connection.
//!
//! Each accepted stream becomes a task on the connection's core. The
//! request headers are checked here, before any service code runs, so a
//! malformed request always gets a clean gRPC error and never a panic.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::call::{GRPC_CONTENT_TYPE, RequestStream, ResponseSink};
use super::status::Status;
use super::timeout::parse_grpc_timeout;

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
    /// Bytes h2 may buffer per stream for sending before we wait.
    pub max_send_buffer_size: usize,
    /// Largest request message accepted; above it RESOURCE_EXHAUSTED.
    pub max_receive_message_len: usize,
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
            max_send_buffer_size: 1024 * 1024,
            max_receive_message_len: max_request_bytes.saturating_add(512 * 1024),
        }
    }
}

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

/// Serves every stream of one connection until the peer closes it.
pub async fn serve_connection<Io, Service>(
    io: Io,
    service: Rc<Service>,
    limits: Rc<ServerLimits>,
) -> Result<(), h2::Error>
where
    Io: AsyncRead + AsyncWrite + Unpin + 'static,
    Service: GrpcService + 'static,
{
    let mut connection = builder(&limits).handshake::<_, Bytes>(io).await?;
    while let Some(accepted) = connection.accept().await {
        let (request, respond) = accepted?;
        let (service, limits) = (service.clone(), limits.clone());
        monoio::spawn(async move { serve_stream(request, respond, &*service, &limits).await });
    }
    Ok(())
}

async fn serve_stream<Service: GrpcService>(
    request: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    service: &Service,
    limits: &ServerLimits,
) {
    let sink = ResponseSink::new(respond);
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
    let mut requests = RequestStream::new(request.into_body(), limits.max_receive_message_len);
    let mut sink = sink;
    let status =
        match run_with_deadline(service.call(&method, &mut requests, &mut sink), deadline).await {
            Some(Ok(())) => Status::ok(),
            Some(Err(status)) => status,
            None => Status::deadline_exceeded("context deadline exceeded"),
        };
    sink.finish(&status);
}

/// `None` when the deadline passed first.
async fn run_with_deadline<T>(
    work: impl Future<Output = T>,
    deadline: Option<Duration>,
) -> Option<T> {
    match deadline {
        Some(deadline) => monoio::time::timeout(deadline, work).await.ok(),
        None => Some(work.await),
    }
}

/// "application/grpc", optionally followed by "+format" or ";params".
fn is_grpc_content_type(value: &[u8]) -> bool {
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
    fn content_types() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(is_grpc_content_type(b"application/grpc; charset=utf-8"));
        assert!(!is_grpc_content_type(b"application/grpcx"));
        assert!(!is_grpc_content_type(b"application/json"));
        assert!(!is_grpc_content_type(b""));
    }
}
