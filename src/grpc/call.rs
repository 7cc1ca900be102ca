//! One gRPC call over one HTTP/2 stream: the messages coming in and the
//! messages and final status going out.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode};

use super::codec::{HEADER_LEN, MessageDecoder, OutgoingMessage, encode_message_of_len};
use super::send_budget::SendBudget;
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

/// The h2 handles of a call's response. The call's [`ResponseSink`] (which
/// the handler holds) and its [`ClientGone`] (which `serve_stream` races the
/// handler against) share them; they are borrowed only inside a poll or a
/// plain call, never across an await, so the two cannot collide.
struct ResponseHandles {
    respond: h2::server::SendResponse<Bytes>,
    /// Present once response headers were sent.
    stream: Option<h2::SendStream<Bytes>>,
}

impl ResponseHandles {
    /// Ready once the client reset the stream or the connection ended.
    fn poll_reset(&mut self, context: &mut Context<'_>) -> Poll<()> {
        // Before headers go out the reset is watched through `respond`;
        // after, only the send stream may ask (h2 refuses the other).
        let polled = match self.stream.as_mut() {
            Some(stream) => stream.poll_reset(context),
            None => self.respond.poll_reset(context),
        };
        polled.map(|_| ())
    }

    fn stream(&mut self) -> &mut h2::SendStream<Bytes> {
        self.stream
            .as_mut()
            .expect("response headers are sent before any data")
    }
}

/// Resolves when the client resets the call's stream or its connection
/// ends: the handler's work is then for nobody.
pub struct ClientGone {
    handles: Rc<RefCell<ResponseHandles>>,
}

impl Future for ClientGone {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        self.handles.borrow_mut().poll_reset(context)
    }
}

/// Messages encoded by [`ResponseSink::encode_all`] and held in the
/// connection's account, to be handed to [`ResponseSink::send_encoded`]
/// of the same sink.
#[must_use = "encoded messages are held in the connection's account until sent"]
pub struct Encoded(Bytes);

/// Response side of one call. Headers go out with the first message; the
/// status goes out last, as trailers (or alone, "trailers-only").
///
/// Bounded output: messages are encoded and handed to h2 only while the
/// connection's queue in h2 is under its [`SendBudget`], and handed only as
/// the stream's flow-control window allows (h2 queues at most its
/// `max_send_buffer_size` per stream). What is encoded and not handed yet
/// is held (accounted too) and given back if the call ends first.
pub struct ResponseSink {
    handles: Rc<RefCell<ResponseHandles>>,
    /// The HTTP/2 stream id, the key of this call's budget account.
    stream_id: u32,
    /// The connection's outgoing byte account, shared by its calls.
    budget: Rc<SendBudget>,
    /// Bytes encoded (held in the budget's account) and not yet handed to
    /// h2; given back if the call ends first.
    held: usize,
    /// Reused for the encoded lengths of the messages of one send.
    lengths: Vec<usize>,
}

impl ResponseSink {
    pub fn new(respond: h2::server::SendResponse<Bytes>, budget: Rc<SendBudget>) -> Self {
        let stream_id = u32::from(respond.stream_id());
        budget.open(stream_id);
        Self {
            handles: Rc::new(RefCell::new(ResponseHandles {
                respond,
                stream: None,
            })),
            stream_id,
            budget,
            held: 0,
            lengths: Vec::new(),
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
        let encoded = self.encode_all(messages).await?;
        self.send_encoded(encoded).await
    }

    /// Encodes `messages` for [`Self::send_encoded`], once the connection's
    /// queue is under its budget, and accounts them as held. A caller that
    /// drops its messages before sending the bytes holds them only once.
    pub async fn encode_all<M: OutgoingMessage>(
        &mut self,
        messages: &[M],
    ) -> Result<Encoded, Status> {
        if messages.is_empty() {
            return Ok(Encoded(Bytes::new()));
        }
        // Nothing is encoded while the connection's queue is over its
        // budget: a client that does not read holds its calls here, not
        // our memory.
        self.budget.room().await;
        // One allocation of exactly the bytes accounted: a buffer grown by
        // doubling (or shared with the next send) would hold up to twice
        // what the budget counts for as long as h2 queues any of it.
        self.lengths.clear();
        self.lengths
            .extend(messages.iter().map(OutgoingMessage::encoded_len));
        let total = self.lengths.iter().fold(0usize, |total, length| {
            total.saturating_add(HEADER_LEN + length)
        });
        let mut buffer = BytesMut::with_capacity(total);
        for (message, length) in messages.iter().zip(&self.lengths) {
            encode_message_of_len(message, *length, &mut buffer)
                .map_err(|error| error.to_status())?;
        }
        self.budget.hold(buffer.len());
        self.held += buffer.len();
        Ok(Encoded(buffer.freeze()))
    }

    /// Hands encoded messages to h2 as the stream's flow-control capacity
    /// allows.
    pub async fn send_encoded(&mut self, encoded: Encoded) -> Result<(), Status> {
        let Encoded(mut data) = encoded;
        if data.is_empty() {
            return Ok(());
        }
        self.start_response()?;
        while !data.is_empty() {
            // h2 is handed data only while its queue for the connection is
            // under the limit, and only what the stream's window admits.
            self.budget.room().await;
            let available = self.capacity(data.len()).await?;
            if !self.budget.has_room() {
                // The window took a while; the queue filled meanwhile.
                continue;
            }
            let chunk = data.split_to(available.min(data.len()));
            let handed = chunk.len();
            self.handles
                .borrow_mut()
                .stream()
                .send_data(chunk, false)
                .map_err(stream_gone)?;
            self.budget.hand_over(self.stream_id, handed);
            self.held -= handed;
        }
        self.release_capacity();
        Ok(())
    }

    /// Waits until this call should produce more output, and says how
    /// much: the connection is under its send budget and, once the
    /// response has started, the stream's flow-control window is open.
    /// The answer is at most `want`, the budget's room and what h2 would
    /// take for the stream now. A producer that waits here before each
    /// batch and produces about the answer (a watch stream) holds nothing
    /// while its client does not read, and little beyond what the
    /// client's window admits: its encoded bytes cannot pin the budget of
    /// the connection's other calls. [`Self::release_capacity`] gives
    /// back what was reserved and not sent.
    pub async fn writable(&mut self, want: usize) -> Result<usize, Status> {
        self.budget.producer_room().await;
        let mut allowance = want.min(self.budget.queue_room()).max(1);
        if self.handles.borrow().stream.is_some() {
            self.handles
                .borrow_mut()
                .stream()
                .reserve_capacity(allowance);
            allowance = allowance.min(self.capacity(allowance).await?);
        }
        Ok(allowance)
    }

    /// Whether `bytes` more may be encoded ahead of the stream's window
    /// without passing the connection's limit on such bytes: a producer
    /// that would rather send one large message than several (a watch's
    /// catch-up response, as etcd shapes it) asks first.
    pub fn may_hold(&self, bytes: usize) -> bool {
        self.budget.may_hold(bytes)
    }

    /// Gives back stream capacity reserved by [`Self::writable`] and not
    /// used, so an idle stream holds none of the connection's window.
    pub fn release_capacity(&mut self) {
        if let Some(stream) = self.handles.borrow_mut().stream.as_mut() {
            stream.reserve_capacity(0);
        }
    }

    /// Sends the response headers if they have not gone yet.
    fn start_response(&mut self) -> Result<(), Status> {
        let mut handles = self.handles.borrow_mut();
        if handles.stream.is_none() {
            let stream = handles
                .respond
                .send_response(Self::response_headers(StatusCode::OK), false)
                .map_err(stream_gone)?;
            handles.stream = Some(stream);
        }
        Ok(())
    }

    /// The stream's send capacity, waiting until it is above zero; asks h2
    /// for `wanted` bytes when there is none.
    async fn capacity(&mut self, wanted: usize) -> Result<usize, Status> {
        loop {
            let current = self.handles.borrow_mut().stream().capacity();
            if current > 0 {
                return Ok(current);
            }
            self.handles.borrow_mut().stream().reserve_capacity(wanted);
            let polled =
                poll_fn(|context| self.handles.borrow_mut().stream().poll_capacity(context)).await;
            match polled {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(stream_gone(error)),
                None => return Err(Status::cancelled("grpc: stream closed by the client")),
            }
        }
    }

    /// Resolves when the client resets the stream or the connection goes
    /// away: long-lived streams (watch) select on it so they end with their
    /// client even while they have nothing to send.
    pub async fn client_gone(&mut self) {
        self.gone().await
    }

    /// A future for [`Self::client_gone`] that does not borrow the sink,
    /// so it can be raced against the handler that does.
    pub fn gone(&self) -> ClientGone {
        ClientGone {
            handles: self.handles.clone(),
        }
    }

    /// Ends the call with `status`.
    pub fn finish(self, status: &Status) {
        // Errors here mean the client already went away; nothing to tell it.
        let mut handles = self.handles.borrow_mut();
        match handles.stream.as_mut() {
            Some(stream) => {
                let _ = stream.send_trailers(status.to_header_map());
            }
            None => {
                let mut response = Self::response_headers(StatusCode::OK);
                status.write_to_header_map(response.headers_mut());
                let _ = handles.respond.send_response(response, true);
            }
        }
    }

    /// Rejects a request that is not gRPC at all with a plain HTTP status,
    /// plus a grpc-status for clients that look only at that.
    pub fn reject_http(self, http_status: StatusCode, status: &Status) {
        let mut response = Self::response_headers(http_status);
        status.write_to_header_map(response.headers_mut());
        let _ = self
            .handles
            .borrow_mut()
            .respond
            .send_response(response, true);
    }
}

impl Drop for ResponseSink {
    fn drop(&mut self) {
        // What was encoded and never handed to h2 will not be written.
        self.budget.unhold(self.held);
        // A reset stream's queue is dropped by h2: nothing more of it
        // will be written either. (A waker that never wakes is fine: this
        // only asks for the state now.)
        let reset = self
            .handles
            .borrow_mut()
            .poll_reset(&mut Context::from_waker(Waker::noop()))
            .is_ready();
        self.budget.close(self.stream_id, reset);
    }
}

fn stream_gone(error: h2::Error) -> Status {
    Status::cancelled(format!("grpc: stream closed: {error}"))
}
