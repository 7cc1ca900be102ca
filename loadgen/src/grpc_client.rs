//! A small gRPC client over `h2`, enough for etcd's unary and
//! bidirectional calls.
//!
//! Framing and status trailers reuse the server's pure protocol code
//! (`metastore::grpc::codec` and `status`), so client and server agree on
//! the wire by construction; the etcd differential tests check that both
//! agree with real gRPC.
//!
//! One [`Channel`] is one HTTP/2 connection. It is cheap to clone (h2's
//! `SendRequest` is a handle), and any number of calls may run on it at
//! once, up to the server's `SETTINGS_MAX_CONCURRENT_STREAMS`, beyond which
//! `ready()` waits.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Uri};
use metastore::grpc::codec::{MessageDecoder, encode_message};
use metastore::grpc::write_coalescing::WriteCoalescing;
use metastore::grpc::{Code, Status};
use tokio::net::TcpStream;

/// Largest response message accepted: etcd's client default (math.MaxInt32
/// in clientv3) is more than a benchmark ever needs; 64 MiB bounds memory.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Per-stream receive window. h2's 64 KiB default would make a watch
/// stream carrying thousands of events per second wait for WINDOW_UPDATEs.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// Connection receive window: room for several busy streams.
const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// Messages up to this size are handed to h2 without waiting for window
/// capacity (at most one such message per call is in flight, so what h2
/// buffers stays bounded); larger ones are sent as capacity is granted.
const UNRESERVED_SEND_BYTES: usize = 64 << 10;

/// One HTTP/2 connection to an endpoint.
#[derive(Clone)]
pub struct Channel {
    /// h2's request handle; cloned per call because `ready()` consumes it.
    sender: SendRequest<Bytes>,
    /// Parsed once; every request URI is built from it and a static path.
    authority: Authority,
}

impl Channel {
    /// Connects to `endpoint` (`host:port`, optionally prefixed with
    /// `http://`) with prior-knowledge HTTP/2, as gRPC does over plain TCP.
    /// The connection is driven by a task spawned on the current runtime
    /// (a `LocalSet` is not required: the driver is `Send`).
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel, Status> {
        let address = endpoint
            .strip_prefix("http://")
            .unwrap_or(endpoint)
            .trim_end_matches('/');
        if endpoint.starts_with("https://") {
            return Err(Status::unimplemented(format!(
                "{endpoint}: TLS endpoints are not supported by loadgen yet"
            )));
        }
        let authority: Authority = address.parse().map_err(|error| {
            Status::invalid_argument(format!("bad endpoint {endpoint}: {error}"))
        })?;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                Status::unavailable(format!("connect {address}: timed out after {timeout:?}"))
            })?
            .map_err(|error| Status::unavailable(format!("connect {address}: {error}")))?;
        // Requests are small and latency-bound; Nagle would hold them back.
        tcp.set_nodelay(true).map_err(|error| {
            Status::unavailable(format!("set TCP_NODELAY on {address}: {error}"))
        })?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            // The server's socket wrapper: without it h2 writes every
            // request of 256 bytes or more (a put of a 256-byte value) in
            // a system call of its own, a quarter of loadgen's CPU per put.
            .handshake(WriteCoalescing::new(tcp))
            .await
            .map_err(|error| transport_status(address, &error))?;
        tokio::spawn(async move {
            // Errors here surface as failed calls; nothing else to do.
            let _ = connection.await;
        });
        Ok(Channel { sender, authority })
    }

    /// Sends one request message and returns the single response message.
    pub async fn unary<Req, Resp>(&self, path: &'static str, request: &Req) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut stream = self.open(path).await?;
        stream.send(request, true).await?;
        let response = stream.receive::<Resp>().await?;
        // Drain to the trailers: the call's real status lives there, and a
        // server may fail a call after sending a message.
        match stream.receive::<Resp>().await {
            Err(status) => Err(status),
            Ok(Some(_)) => Err(Status::new(
                Code::Internal,
                format!("{path}: server sent more than one response message"),
            )),
            Ok(None) => response
                .ok_or_else(|| Status::new(Code::Internal, format!("{path}: no response message"))),
        }
    }

    /// Opens a call whose messages are sent and received one at a time
    /// (bidirectional streaming; unary calls use it too).
    pub async fn open(&self, path: &'static str) -> Result<CallStream, Status> {
        let mut sender = self
            .sender
            .clone()
            .ready()
            .await
            .map_err(|error| transport_status(self.authority.as_str(), &error))?;
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|error| Status::internal(format!("{path}: {error}")))?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        let (response, send) = sender
            .send_request(request, false)
            .map_err(|error| transport_status(self.authority.as_str(), &error))?;
        Ok(CallStream {
            path,
            send,
            response: Some(response),
            receive: None,
            decoder: MessageDecoder::new(MAX_RESPONSE_BYTES),
            finished: false,
        })
    }
}

/// One open call: send messages, receive messages, then the status.
pub struct CallStream {
    path: &'static str,
    send: SendStream<Bytes>,
    /// The response headers, awaited on the first receive.
    response: Option<h2::client::ResponseFuture>,
    /// The response body once the headers arrived.
    receive: Option<RecvStream>,
    decoder: MessageDecoder,
    /// Set once the status was read; further receives return `Ok(None)`.
    finished: bool,
}

impl CallStream {
    /// Sends one message, waiting for flow-control capacity as needed;
    /// `end` half-closes the request side after it.
    pub async fn send<M: prost::Message>(&mut self, message: &M, end: bool) -> Result<(), Status> {
        let mut buffer = BytesMut::new();
        encode_message(message, &mut buffer).map_err(|error| error.to_status())?;
        let mut remaining = buffer.freeze();
        if remaining.len() <= UNRESERVED_SEND_BYTES {
            // h2 queues data beyond the peer's window itself; asking for
            // capacity first would cost a task wake-up per request.
            return self
                .send
                .send_data(remaining, end)
                .map_err(|error| self.stream_status(&error));
        }
        while !remaining.is_empty() {
            self.send.reserve_capacity(remaining.len());
            let granted = match std::future::poll_fn(|context| self.send.poll_capacity(context))
                .await
            {
                Some(Ok(granted)) => granted,
                Some(Err(error)) => return Err(self.stream_status(&error)),
                None => return Err(Status::unavailable(format!("{}: stream closed", self.path))),
            };
            let chunk = remaining.split_to(granted.min(remaining.len()));
            let last = remaining.is_empty() && end;
            self.send
                .send_data(chunk, last)
                .map_err(|error| self.stream_status(&error))?;
        }
        Ok(())
    }

    /// The next response message; `Ok(None)` once the call ended with OK;
    /// `Err` with the call's status otherwise.
    pub async fn receive<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(body) = self.decoder.decode().map_err(|error| error.to_status())? {
                return M::decode(body).map(Some).map_err(|error| {
                    Status::internal(format!("{}: bad response: {error}", self.path))
                });
            }
            if self.receive.is_none() {
                self.await_headers().await?;
                continue;
            }
            let body = self.receive.as_mut().expect("checked above");
            match body.data().await {
                Some(Ok(chunk)) => {
                    // Give the window back at once: messages are consumed
                    // as fast as they are decoded.
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(chunk);
                }
                Some(Err(error)) => return Err(self.stream_status(&error)),
                None => {
                    self.decoder.finish().map_err(|error| error.to_status())?;
                    let trailers = body
                        .trailers()
                        .await
                        .map_err(|error| self.stream_status(&error))?;
                    self.finished = true;
                    let status = trailers
                        .as_ref()
                        .and_then(Status::from_header_map)
                        .unwrap_or_else(|| {
                            Status::internal(format!("{}: response without grpc-status", self.path))
                        });
                    return if status.is_ok() {
                        Ok(None)
                    } else {
                        Err(status)
                    };
                }
            }
        }
    }

    async fn await_headers(&mut self) -> Result<(), Status> {
        let Some(response) = self.response.take() else {
            return Err(Status::internal(format!(
                "{}: response already consumed",
                self.path
            )));
        };
        let response = response.await.map_err(|error| self.stream_status(&error))?;
        let (parts, body) = response.into_parts();
        // "Trailers-Only": a call that fails before any message carries its
        // status in the only HEADERS frame.
        if let Some(status) = Status::from_header_map(&parts.headers) {
            self.finished = true;
            return if status.is_ok() { Ok(()) } else { Err(status) };
        }
        if parts.status != http::StatusCode::OK {
            self.finished = true;
            return Err(Status::new(
                Code::Unknown,
                format!("{}: HTTP status {}", self.path, parts.status),
            ));
        }
        self.receive = Some(body);
        Ok(())
    }

    fn stream_status(&self, error: &h2::Error) -> Status {
        transport_status(self.path, error)
    }
}

/// Maps an HTTP/2 error to the status grpc-go reports for it: a stream
/// reset with CANCEL is CANCELLED, everything else UNAVAILABLE.
fn transport_status(context: &str, error: &h2::Error) -> Status {
    if error.reason() == Some(h2::Reason::CANCEL) {
        return Status::cancelled(format!("{context}: {error}"));
    }
    Status::unavailable(format!("{context}: {error}"))
}
