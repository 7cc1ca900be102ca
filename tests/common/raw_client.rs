//! Raw h2 client connections for the abuse tests and measurement drivers
//! of issue 18: clients that advertise windows as large as HTTP/2 allows
//! and then stop reading their socket (slow readers), that reset a call's
//! stream (RST_STREAM), or that drop their connection. Self-contained (h2,
//! tokio, prost and the server's proto types only) so the drivers in
//! `examples/` can include it with `#[path]`.
//!
//! A [`ReadGate`] sits between h2 and the TCP socket: while it is closed
//! h2 gets no bytes at all, so the kernel's receive buffer fills and the
//! server's writes back up, exactly as with a client that stopped reading.
//! Opening it again lets everything the kernel held flow, so a test can
//! check what a resumed watcher receives.

#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2's largest window (RFC 9113 §6.9.1: 2^31-1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Failures are reported as text: these are test and measurement tools.
pub type Result<T> = std::result::Result<T, String>;

/// Opens and closes a connection's read side (see the module docs).
#[derive(Clone, Default)]
pub struct ReadGate {
    state: Arc<GateState>,
}

#[derive(Default)]
struct GateState {
    closed: AtomicBool,
    /// The reader that found the gate closed, woken when it opens.
    waiting: Mutex<Option<Waker>>,
}

impl ReadGate {
    /// Stops reading: h2 receives nothing until [`Self::open`].
    pub fn close(&self) {
        self.state.closed.store(true, Ordering::SeqCst);
    }

    pub fn open(&self) {
        self.state.closed.store(false, Ordering::SeqCst);
        if let Some(waker) = self.state.waiting.lock().unwrap().take() {
            waker.wake();
        }
    }
}

/// A socket whose reads pass through a [`ReadGate`].
pub struct GatedIo<T> {
    inner: T,
    gate: ReadGate,
}

impl<T: AsyncRead + Unpin> AsyncRead for GatedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let state = &this.gate.state;
        if state.closed.load(Ordering::SeqCst) {
            *state.waiting.lock().unwrap() = Some(context.waker().clone());
            // Re-check: `open` may have run between the load and the store.
            if state.closed.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        Pin::new(&mut this.inner).poll_read(context, buffer)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GatedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(context, buffer)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }
}

/// One raw HTTP/2 connection (prior knowledge h2c) with a read gate.
#[derive(Clone)]
pub struct Connection {
    addr: SocketAddr,
    send: h2::client::SendRequest<Bytes>,
    pub gate: ReadGate,
    /// Ends the task driving the connection (dropping it closes the socket).
    closer: Arc<tokio::sync::Notify>,
}

impl Connection {
    /// Connects with the given stream and connection windows. A client that
    /// means to stall passes [`MAX_WINDOW`] for both: the server may then
    /// send as much as it likes, as far as HTTP/2 flow control goes.
    pub async fn connect(addr: SocketAddr, window: u32) -> Result<Connection> {
        Self::connect_with(addr, window, window, None).await
    }

    /// [`Self::connect`] with the socket's receive buffer (SO_RCVBUF) set:
    /// a small one keeps the kernel from absorbing what the server sends
    /// while the gate is closed.
    pub async fn connect_with_receive_buffer(
        addr: SocketAddr,
        window: u32,
        receive_buffer: Option<u32>,
    ) -> Result<Connection> {
        Self::connect_with(addr, window, window, receive_buffer).await
    }

    /// A connection whose streams start with `stream_window` and whose
    /// connection window is `connection_window`. A stream's window only
    /// grows back as its messages are read with [`Call::next`].
    pub async fn connect_with(
        addr: SocketAddr,
        stream_window: u32,
        connection_window: u32,
        receive_buffer: Option<u32>,
    ) -> Result<Connection> {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|error| error.to_string())?;
        if let Some(bytes) = receive_buffer {
            socket
                .set_recv_buffer_size(bytes)
                .map_err(|error| error.to_string())?;
        }
        let tcp = socket
            .connect(addr)
            .await
            .map_err(|error| format!("connect {addr}: {error}"))?;
        tcp.set_nodelay(true).ok();
        let gate = ReadGate::default();
        let io = GatedIo {
            inner: tcp,
            gate: gate.clone(),
        };
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(stream_window)
            .initial_connection_window_size(connection_window)
            .max_concurrent_reset_streams(4096)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|error| format!("h2 handshake with {addr}: {error}"))?;
        let closer = Arc::new(tokio::sync::Notify::new());
        let closed = closer.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = closed.notified() => {}
            }
        });
        Ok(Connection {
            addr,
            send,
            gate,
            closer,
        })
    }

    /// Closes the TCP connection at once, without GOAWAY: a client process
    /// that died.
    pub fn drop_connection(&self) {
        self.closer.notify_one();
    }

    /// Starts a call on `path`; nothing is awaited from the server yet.
    pub async fn call(&self, path: &str) -> Result<Call> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{}{}", self.addr, path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|error| error.to_string())?;
        let mut send = self.send.clone();
        send = tokio::time::timeout(Duration::from_secs(30), send.ready())
            .await
            .map_err(|_| format!("{path}: no stream slot within 30 s"))?
            .map_err(|error| format!("{path}: {error}"))?;
        let (response, body) = send
            .send_request(request, false)
            .map_err(|error| format!("{path}: {error}"))?;
        Ok(Call {
            path: path.to_owned(),
            send: body,
            receive: Receive::Headers(response),
            buffer: BytesMut::new(),
        })
    }

    /// A unary call: one request, one response (or the call's status).
    pub async fn unary<Request, Response>(&self, path: &str, request: &Request) -> Result<Response>
    where
        Request: prost::Message,
        Response: prost::Message + Default,
    {
        let mut call = self.call(path).await?;
        call.send(request, true)?;
        match call.next::<Response>().await? {
            Message::Message(response) => Ok(response),
            Message::End(code, message) => Err(format!("{path}: status {code}: {message}")),
        }
    }
}

enum Receive {
    Headers(h2::client::ResponseFuture),
    Body(h2::RecvStream),
}

/// What a call gave next.
#[derive(Debug)]
pub enum Message<T> {
    Message(T),
    /// The call ended with this grpc-status and message.
    End(i32, String),
}

/// One call (unary or streaming) on a [`Connection`].
pub struct Call {
    path: String,
    send: h2::SendStream<Bytes>,
    receive: Receive,
    /// Received bytes that do not form a whole message yet.
    buffer: BytesMut,
}

impl Call {
    /// Sends one message; `end` half-closes the request side after it.
    pub fn send<M: prost::Message>(&mut self, message: &M, end: bool) -> Result<()> {
        let encoded = message.encode_to_vec();
        let mut framed = BytesMut::with_capacity(5 + encoded.len());
        framed.put_u8(0);
        framed.put_u32(encoded.len() as u32);
        framed.extend_from_slice(&encoded);
        self.send
            .send_data(framed.freeze(), end)
            .map_err(|error| format!("{}: send: {error}", self.path))
    }

    /// Resets the stream (RST_STREAM CANCEL): what a client does when the
    /// caller's context is cancelled.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }

    /// The next message decoded as `T`, or how the call ended. Waits as
    /// long as it takes; callers bound it with a timeout.
    pub async fn next<T: prost::Message + Default>(&mut self) -> Result<Message<T>> {
        loop {
            if let Some(bytes) = self.take_message()? {
                return T::decode(bytes)
                    .map(Message::Message)
                    .map_err(|error| format!("{}: decode: {error}", self.path));
            }
            match &mut self.receive {
                Receive::Headers(response) => {
                    let response = response
                        .await
                        .map_err(|error| format!("{}: response: {error}", self.path))?;
                    let (parts, body) = response.into_parts();
                    if let Some(status) = grpc_status(&parts.headers) {
                        return Ok(Message::End(status.0, status.1));
                    }
                    self.receive = Receive::Body(body);
                }
                Receive::Body(body) => match body.data().await {
                    Some(Ok(chunk)) => {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        self.buffer.extend_from_slice(&chunk);
                    }
                    Some(Err(error)) => return Err(format!("{}: receive: {error}", self.path)),
                    None => {
                        let trailers = body
                            .trailers()
                            .await
                            .map_err(|error| format!("{}: trailers: {error}", self.path))?;
                        let status = trailers
                            .as_ref()
                            .and_then(grpc_status)
                            .unwrap_or((-1, "no grpc-status".to_owned()));
                        return Ok(Message::End(status.0, status.1));
                    }
                },
            }
        }
    }

    fn take_message(&mut self) -> Result<Option<Bytes>> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        if self.buffer[0] != 0 {
            return Err(format!("{}: compressed message", self.path));
        }
        let length = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
        if self.buffer.len() < 5 + length {
            return Ok(None);
        }
        self.buffer.advance(5);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<(i32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((code, message))
}

/// What one watch received after its client resumed reading.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WatchOutcome {
    /// Revisions of the events received, in arrival order.
    pub revisions: Vec<i64>,
    /// `compact_revision` if the server canceled the watch for compaction.
    pub compacted_at: Option<i64>,
}

impl WatchOutcome {
    /// Checks what this watch received against `expected`, every revision
    /// written under its range in order. Ok(true): all of them, in order;
    /// Ok(false): an in-order prefix, then canceled with a compaction
    /// point past it (etcd's answer when the rest of its history is gone);
    /// Err: a gap, a duplicate, disorder, or an early cancel.
    pub fn check(&self, expected: &[i64]) -> Result<bool> {
        let received = &self.revisions;
        if received.len() > expected.len() || expected[..received.len()] != received[..] {
            return Err(format!(
                "{} events, not an in-order prefix of the {} written",
                received.len(),
                expected.len()
            ));
        }
        match self.compacted_at {
            None if received.len() == expected.len() => Ok(true),
            None => Err("incomplete without a cancel".to_owned()),
            Some(compact_revision) => {
                let next = expected.get(received.len()).copied().unwrap_or(i64::MAX);
                if next < compact_revision {
                    Ok(false)
                } else {
                    Err(format!(
                        "canceled at compaction point {compact_revision} though its next event {next} was still there"
                    ))
                }
            }
        }
    }
}

/// One Watch stream holding `watches` watches on `[key, range_end)`, all
/// starting at `start_revision` (0: now).
pub struct WatchCall {
    pub call: Call,
    /// The watch ids the server assigned, in creation order.
    pub watch_ids: Vec<i64>,
}

impl WatchCall {
    pub async fn open(
        connection: &Connection,
        watches: usize,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<WatchCall> {
        use metastore::proto::etcdserverpb::{
            WatchCreateRequest, WatchRequest, WatchResponse, watch_request::RequestUnion,
        };
        let mut call = connection.call("/etcdserverpb.Watch/Watch").await?;
        for _ in 0..watches {
            let create = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: Bytes::copy_from_slice(key),
                    range_end: Bytes::copy_from_slice(range_end),
                    start_revision,
                    ..Default::default()
                })),
            };
            call.send(&create, false)?;
        }
        let mut watch_ids = Vec::new();
        while watch_ids.len() < watches {
            match call.next::<WatchResponse>().await? {
                Message::Message(response) if response.created => {
                    if response.canceled {
                        return Err(format!("watch refused: {}", response.cancel_reason));
                    }
                    watch_ids.push(response.watch_id);
                }
                Message::Message(_) => return Err("events before every watch was created".into()),
                Message::End(code, message) => {
                    return Err(format!("watch ended {code}: {message}"));
                }
            }
        }
        Ok(WatchCall { call, watch_ids })
    }

    /// The next response; `None` once the stream ended.
    pub async fn next(&mut self) -> Result<Option<metastore::proto::etcdserverpb::WatchResponse>> {
        match self.call.next().await? {
            Message::Message(response) => Ok(Some(response)),
            Message::End(code, message) => Err(format!("watch stream ended {code}: {message}")),
        }
    }

    /// Reads until every watch saw an event at `last_revision` or was
    /// canceled for compaction; what each watch received.
    pub async fn collect_through(&mut self, last_revision: i64) -> Result<Vec<WatchOutcome>> {
        let mut outcomes = vec![WatchOutcome::default(); self.watch_ids.len()];
        let done = |outcome: &WatchOutcome| {
            outcome.compacted_at.is_some() || outcome.revisions.last() >= Some(&last_revision)
        };
        while !outcomes.iter().all(done) {
            let Some(response) = self.next().await? else {
                return Err("stream ended early".into());
            };
            let Some(index) = self
                .watch_ids
                .iter()
                .position(|id| *id == response.watch_id)
            else {
                continue;
            };
            let outcome = &mut outcomes[index];
            if response.canceled {
                outcome.compacted_at = Some(response.compact_revision);
            }
            outcome.revisions.extend(
                response
                    .events
                    .iter()
                    .filter_map(|event| event.kv.as_ref().map(|kv| kv.mod_revision)),
            );
        }
        Ok(outcomes)
    }
}

/// The resident set size of process `pid`, in bytes (Linux).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of process `pid` so far, in seconds (Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are fields 14 and 15 (1-based).
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_second as f64)
}
