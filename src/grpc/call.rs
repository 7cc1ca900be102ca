//! One gRPC call over one HTTP/2 stream: the messages coming in and the
//! messages and final status going out.

use std::future::poll_fn;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode};

use super::codec::{MessageDecoder, OutgoingMessage, encode_message};
use super::status::{Code, Status};

pub const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// Request messages of one call, decoded as they arrive.
pub struct RequestStream {
    body: h2::RecvStream,
    /// Holds at most one partial message: we pull DATA only when no whole
    /// message is buffered, and the decoder refuses oversize lengths up front.
    decoder: MessageDecoder,
    /// How long a message may stay partial: its bytes are ours (their flow
    /// control capacity went back to the client), up to the largest
    /// message per stream, so a client that stops mid-message must not
    /// pin them for ever.
    message_timeout: Duration,
    /// When the partial message now buffered began to arrive.
    partial_since: Option<Instant>,
    /// Set when the call failed because a message stayed partial too long.
    message_timed_out: bool,
    /// The call's first message (a reference, not a copy), kept so the
    /// slow-request log can name the key a slow call was about.
    first_message: Option<Bytes>,
}

impl RequestStream {
    pub fn new(body: h2::RecvStream, max_message_len: usize, message_timeout: Duration) -> Self {
        Self {
            body,
            decoder: MessageDecoder::new(max_message_len),
            message_timeout,
            partial_since: None,
            message_timed_out: false,
            first_message: None,
        }
    }

    /// Whether the call failed because a request message stayed partial
    /// for longer than the message timeout.
    pub fn message_timed_out(&self) -> bool {
        self.message_timed_out
    }

    pub fn first_message(&self) -> Option<&Bytes> {
        self.first_message.as_ref()
    }

    /// The next message's bytes, or `None` once the client half-closed.
    pub async fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(message) = self.decoder.decode().map_err(|error| error.to_status())? {
                // What is left belongs to the next message, whose clock
                // starts now.
                self.partial_since = (self.decoder.buffered_len() > 0).then(Instant::now);
                if self.first_message.is_none() {
                    self.first_message = Some(message.clone());
                }
                return Ok(Some(message));
            }
            let data = match self.partial_since {
                // Between messages: no deadline (a stream may stay quiet).
                None => self.body.data().await,
                Some(since) => {
                    let left = self.message_timeout.saturating_sub(since.elapsed());
                    match monoio::time::timeout(left, self.body.data()).await {
                        Ok(data) => data,
                        Err(_) => {
                            self.message_timed_out = true;
                            return Err(Status::cancelled(format!(
                                "grpc: request message incomplete after {:?} ({} bytes received)",
                                self.message_timeout,
                                self.decoder.buffered_len()
                            )));
                        }
                    }
                }
            };
            match data {
                Some(Ok(chunk)) => {
                    // Capacity goes back to the peer as soon as the bytes
                    // are ours; the decoder bounds what we keep, and the
                    // message timeout for how long.
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(chunk);
                    if self.partial_since.is_none() && self.decoder.buffered_len() > 0 {
                        self.partial_since = Some(Instant::now());
                    }
                }
                Some(Err(error)) => {
                    return Err(Status::cancelled(format!(
                        "grpc: request stream failed: {error}"
                    )));
                }
                None => {
                    self.decoder.finish().map_err(|error| error.to_status())?;
                    return Ok(None);
                }
            }
        }
    }

    /// The next message decoded as `M`, or `None` at end of stream.
    pub async fn next<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        match self.next_message().await? {
            Some(bytes) => decode_request(bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The one request message of a unary call, undecoded (a service may
    /// decode a large one off the core).
    pub async fn unary_message(&mut self) -> Result<Bytes, Status> {
        // grpc-go (etcd) answers a unary call without a message with
        // UNKNOWN "EOF".
        self.next_message()
            .await?
            .ok_or_else(|| Status::new(Code::Unknown, "EOF"))
    }

    /// The one request message of a unary or server-streaming call.
    pub async fn unary<M: prost::Message + Default>(&mut self) -> Result<M, Status> {
        // grpc-go (etcd) answers a unary call without a message with
        // UNKNOWN "EOF"; clients see the same from us.
        self.next()
            .await?
            .ok_or_else(|| Status::new(Code::Unknown, "EOF"))
    }
}

/// A request message decoded as `M`, failing as grpc-go does.
pub fn decode_request<M: prost::Message + Default>(bytes: Bytes) -> Result<M, Status> {
    M::decode(bytes)
        .map_err(|error| Status::internal(format!("grpc: error unmarshalling request: {error}")))
}

/// Response side of one call. Headers go out with the first message; the
/// status goes out last, as trailers (or alone, "trailers-only").
pub struct ResponseSink {
    respond: h2::server::SendResponse<Bytes>,
    /// Present once response headers were sent.
    stream: Option<h2::SendStream<Bytes>>,
    /// Reused encode buffer.
    buffer: BytesMut,
}

impl ResponseSink {
    pub fn new(respond: h2::server::SendResponse<Bytes>) -> Self {
        Self {
            respond,
            stream: None,
            buffer: BytesMut::new(),
        }
    }

    fn response_headers(status: StatusCode) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(GRPC_CONTENT_TYPE),
        );
        // We decode no compressed messages; tell the client so.
        headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
        response
    }

    /// Sends one message, waiting for HTTP/2 flow-control capacity so a slow
    /// reader pushes back instead of growing our buffers.
    pub async fn send<M: OutgoingMessage>(&mut self, message: &M) -> Result<(), Status> {
        self.send_all(std::slice::from_ref(message)).await
    }

    /// Sends several messages as one write: encoded back to back into one
    /// buffer, so h2 handles one DATA payload instead of one per message.
    /// A watch stream emits a response per watcher per revision; with
    /// hundreds of watchers per stream, per-message sends cost more than
    /// encoding them.
    pub async fn send_all<M: OutgoingMessage>(&mut self, messages: &[M]) -> Result<(), Status> {
        if messages.is_empty() {
            return Ok(());
        }
        self.buffer.clear();
        for message in messages {
            encode_message(message, &mut self.buffer).map_err(|error| error.to_status())?;
        }
        let mut data = self.buffer.split().freeze();
        if self.stream.is_none() {
            let stream = self
                .respond
                .send_response(Self::response_headers(StatusCode::OK), false)
                .map_err(stream_gone)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("headers were just sent");
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let available = match poll_fn(|context| stream.poll_capacity(context)).await {
                Some(Ok(available)) => available,
                Some(Err(error)) => return Err(stream_gone(error)),
                None => return Err(Status::cancelled("grpc: stream closed by the client")),
            };
            if available == 0 {
                continue;
            }
            let chunk = data.split_to(available.min(data.len()));
            stream.send_data(chunk, false).map_err(stream_gone)?;
        }
        Ok(())
    }

    /// Resolves when the client resets the stream or the connection goes
    /// away: long-lived streams (watch) select on it so they end with their
    /// client even while they have nothing to send.
    pub async fn client_gone(&mut self) {
        let _ = match self.stream.as_mut() {
            Some(stream) => poll_fn(|context| stream.poll_reset(context)).await,
            None => poll_fn(|context| self.respond.poll_reset(context)).await,
        };
    }

    /// Ends the call with `status`.
    pub fn finish(mut self, status: &Status) {
        // Errors here mean the client already went away; nothing to tell it.
        match self.stream.as_mut() {
            Some(stream) => {
                let _ = stream.send_trailers(status.to_header_map());
            }
            None => {
                let mut response = Self::response_headers(StatusCode::OK);
                status.write_to_header_map(response.headers_mut());
                let _ = self.respond.send_response(response, true);
            }
        }
    }

    /// Rejects a request that is not gRPC at all with a plain HTTP status,
    /// plus a grpc-status for clients that look only at that.
    pub fn reject_http(mut self, http_status: StatusCode, status: &Status) {
        let mut response = Self::response_headers(http_status);
        status.write_to_header_map(response.headers_mut());
        let _ = self.respond.send_response(response, true);
    }
}

fn stream_gone(error: h2::Error) -> Status {
    Status::cancelled(format!("grpc: stream closed: {error}"))
}
