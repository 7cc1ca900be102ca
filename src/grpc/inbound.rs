//! Watching what a client sends, before h2 (or the `authority` rewriter)
//! decodes it: which stage of the connection it has reached, and whether
//! its header blocks are within bounds.
//!
//! [`InboundGuard`] is pure: fed the client's bytes as they arrive, it
//! follows the frame boundaries (RFC 9113 §4.1), gathers each header block
//! (HEADERS + CONTINUATION, at most SETTINGS_MAX_HEADER_LIST_SIZE bytes),
//! and checks every complete block with `hpack_scan` before any decoder
//! runs: no more fields than the advertised header list size can hold, no
//! dynamic table churn, no size update the RFC forbids, and a per
//! connection budget of header bytes. Work per block is then bounded by a
//! constant, and a connection that keeps sending heavy blocks is closed.
//! It also counts the client's PINGs against etcd's keepalive policy
//! (`--grpc-keepalive-min-time`), which h2 alone answers without limit.
//!
//! [`GuardedIo`] runs it in place over the socket's reads (no copy: the
//! bytes land in h2's buffer as before). On a violation it hands h2 only
//! the bytes before the offending frame, so no decoder sees the block, and
//! raises [`InboundSignals`]; the connection task answers with GOAWAY
//! (`ENHANCE_YOUR_CALM`, or `COMPRESSION_ERROR` for a malformed block) and
//! closes. A header list that is within these bounds but decodes to more
//! than SETTINGS_MAX_HEADER_LIST_SIZE is h2's to refuse, per stream, with
//! 431 (RFC 9113 §10.5.1).

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::authority::AuthorityError;
use super::h2_frames::{
    FLAG_ACK, FLAG_END_HEADERS, FRAME_CONTINUATION, FRAME_DATA, FRAME_HEADER_LEN, FRAME_HEADERS,
    FRAME_PING, FRAME_SETTINGS, FrameHeader, PREFACE_LEN, PRIORITY_LEN, split_headers_payload,
};
use super::hpack_scan::{self, BlockLimits, ScanError};

/// How far a new connection has come (each stage has a deadline, kept by
/// `connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// RFC 9113 §3.4: the 24-octet client preface.
    Preface,
    /// "That sequence MUST be followed by a SETTINGS frame."
    Settings,
    /// The first complete request header block.
    FirstRequest,
    /// The client has sent a whole request's headers.
    Established,
}

/// The bounds on a client's header blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    pub block: BlockLimits,
    /// Bytes of each header block that cost nothing from the budget: a
    /// gRPC client's blocks are a few hundred bytes at most (grpc-go's
    /// first request about 200, later ones about 20, once indexed).
    pub free_block_bytes: usize,
    /// The budget of header bytes beyond the free allowance a connection
    /// may spend at once, and how fast it refills.
    pub budget_bytes: usize,
    pub budget_refill_per_second: usize,
    /// etcd's `--grpc-keepalive-min-time`: a client should not ping more
    /// often than this.
    pub min_ping_interval: Duration,
}

/// Pings sooner than `min_ping_interval` after the previous one that a
/// client may send before it is told to calm down (grpc-go's
/// `maxPingStrikes`).
const MAX_PING_STRIKES: u32 = 2;

impl InboundLimits {
    /// Limits for the advertised SETTINGS_MAX_HEADER_LIST_SIZE and the
    /// keepalive policy.
    pub fn new(max_header_list_size: usize, min_ping_interval: Duration) -> Self {
        Self {
            block: BlockLimits {
                max_header_list_size,
                // h2's SETTINGS_HEADER_TABLE_SIZE (the RFC's default; we
                // do not change it).
                max_table_size: 4096,
                // grpc-go's first request inserts about 10 fields; custom
                // metadata may add some. Each insertion is an allocation
                // in the decoder and may evict others.
                max_insertions: 64,
            },
            free_block_bytes: 2 * 1024,
            budget_bytes: 256 * 1024,
            budget_refill_per_second: 64 * 1024,
            min_ping_interval,
        }
    }
}

/// Why the server closes a connection because of what it sent.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum InboundViolation {
    #[error("header block of {bytes} bytes, above the {limit}-byte limit")]
    HeaderBlockTooLarge { bytes: usize, limit: usize },
    #[error("header block refused: {0}")]
    Hpack(ScanError),
    #[error("header blocks used up the connection's budget of header bytes")]
    HeaderBudgetExhausted,
    /// grpc-go's keepalive enforcement: pings more often than the minimum
    /// time, more than `MAX_PING_STRIKES` times.
    #[error("too many pings")]
    TooManyPings,
    /// RFC 9113 §6.10: nothing may come between HEADERS and the
    /// CONTINUATION frames of its block.
    #[error("frame interleaved inside a header block")]
    InterleavedHeaderBlock,
    #[error("malformed HEADERS frame padding")]
    BadPadding,
    #[error("{0}")]
    Authority(AuthorityError),
}

impl InboundViolation {
    /// The GOAWAY error code (RFC 9113 §7).
    pub fn reason(&self) -> h2::Reason {
        match self {
            InboundViolation::Hpack(error) if error.is_decoding_error() => {
                h2::Reason::COMPRESSION_ERROR
            }
            InboundViolation::Authority(AuthorityError::Hpack(_)) => h2::Reason::COMPRESSION_ERROR,
            InboundViolation::InterleavedHeaderBlock
            | InboundViolation::BadPadding
            | InboundViolation::Authority(
                AuthorityError::BadPadding | AuthorityError::InterleavedHeaderBlock,
            ) => h2::Reason::PROTOCOL_ERROR,
            InboundViolation::HeaderBlockTooLarge { .. }
            | InboundViolation::Hpack(_)
            | InboundViolation::HeaderBudgetExhausted
            | InboundViolation::TooManyPings
            | InboundViolation::Authority(
                AuthorityError::HeaderBlockTooLarge(_) | AuthorityError::HeaderListTooLarge(_),
            ) => h2::Reason::ENHANCE_YOUR_CALM,
        }
    }
}

/// What one call to [`InboundGuard::inspect`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Inspection {
    /// How many of the bytes may go on to h2: all of them, or those before
    /// the frame that broke a rule.
    pub accepted: usize,
    pub violation: Option<InboundViolation>,
}

/// A token bucket of header bytes, refilled with time.
#[derive(Debug)]
struct HeaderBudget {
    /// The most it holds: how much a connection may spend at once.
    capacity: f64,
    refill_per_second: f64,
    /// What it holds now; negative once a block overdrew it.
    level: f64,
    /// When `level` was last brought up to date (`None`: never spent).
    updated: Option<Instant>,
}

impl HeaderBudget {
    fn new(limits: &InboundLimits) -> Self {
        Self {
            capacity: limits.budget_bytes as f64,
            refill_per_second: limits.budget_refill_per_second as f64,
            level: limits.budget_bytes as f64,
            updated: None,
        }
    }

    /// Takes `bytes`; `false` if the budget does not hold them.
    fn spend(&mut self, bytes: usize, now: Instant) -> bool {
        if let Some(updated) = self.updated {
            let elapsed = now.saturating_duration_since(updated).as_secs_f64();
            self.level = (self.level + elapsed * self.refill_per_second).min(self.capacity);
        }
        self.updated = Some(now);
        self.level -= bytes as f64;
        self.level >= 0.0
    }
}

/// The frame whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct CurrentFrame {
    header: FrameHeader,
    /// Payload bytes still to come.
    remaining: usize,
}

/// Follows a client's byte stream; see the module documentation.
pub struct InboundGuard {
    limits: InboundLimits,
    /// How far the connection has come; its deadlines depend on it.
    stage: Stage,
    /// Octets of the 24-octet preface received so far.
    preface_seen: usize,
    /// A frame header split across reads.
    partial_header: [u8; FRAME_HEADER_LEN],
    partial_header_len: usize,
    frame: Option<CurrentFrame>,
    /// The payload of the current HEADERS or CONTINUATION frame.
    header_frame_payload: Vec<u8>,
    /// The header block being gathered, and the stream it belongs to.
    block: Vec<u8>,
    block_stream: Option<u32>,
    budget: HeaderBudget,
    /// When the client last pinged, and how many pings came too soon since
    /// it last sent a request or data.
    last_ping: Option<Instant>,
    ping_strikes: u32,
}

/// Buffer capacity a connection keeps between header blocks.
const RETAINED_BUFFER: usize = 1024;

/// HEADERS may carry up to 255 octets of padding and the priority fields
/// besides its fragment.
const MAX_HEADERS_FRAME_OVERHEAD: usize = 1 + 255 + PRIORITY_LEN;

impl InboundGuard {
    pub fn new(limits: InboundLimits) -> Self {
        Self {
            budget: HeaderBudget::new(&limits),
            limits,
            stage: Stage::Preface,
            preface_seen: 0,
            partial_header: [0; FRAME_HEADER_LEN],
            partial_header_len: 0,
            frame: None,
            header_frame_payload: Vec::new(),
            block: Vec::new(),
            block_stream: None,
            last_ping: None,
            ping_strikes: 0,
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Follows `bytes`, the next bytes the client sent.
    pub fn inspect(&mut self, bytes: &[u8], now: Instant) -> Inspection {
        let mut offset = 0;
        if self.stage == Stage::Preface {
            // h2 checks the preface's content; here it only counts.
            let take = (PREFACE_LEN - self.preface_seen).min(bytes.len());
            self.preface_seen += take;
            offset += take;
            if self.preface_seen == PREFACE_LEN {
                self.stage = Stage::Settings;
            }
        }
        // Where the frame being read began in `bytes` (0: in an earlier read).
        let mut frame_start = offset;
        while offset < bytes.len() {
            let frame = match self.frame {
                Some(frame) => frame,
                None => {
                    if self.partial_header_len == 0 {
                        frame_start = offset;
                    }
                    let take =
                        (FRAME_HEADER_LEN - self.partial_header_len).min(bytes.len() - offset);
                    self.partial_header[self.partial_header_len..self.partial_header_len + take]
                        .copy_from_slice(&bytes[offset..offset + take]);
                    self.partial_header_len += take;
                    offset += take;
                    if self.partial_header_len < FRAME_HEADER_LEN {
                        break;
                    }
                    self.partial_header_len = 0;
                    let header = FrameHeader::decode(&self.partial_header);
                    if let Err(violation) = self.begin_frame(&header) {
                        return Inspection {
                            accepted: frame_start,
                            violation: Some(violation),
                        };
                    }
                    let frame = CurrentFrame {
                        header,
                        remaining: header.length,
                    };
                    self.frame = Some(frame);
                    frame
                }
            };
            let take = frame.remaining.min(bytes.len() - offset);
            if frame.header.carries_header_block() {
                self.header_frame_payload
                    .extend_from_slice(&bytes[offset..offset + take]);
            }
            offset += take;
            let remaining = frame.remaining - take;
            if remaining > 0 {
                self.frame = Some(CurrentFrame { remaining, ..frame });
                break;
            }
            self.frame = None;
            if let Err(violation) = self.end_frame(&frame.header, now) {
                return Inspection {
                    accepted: frame_start,
                    violation: Some(violation),
                };
            }
        }
        Inspection {
            accepted: bytes.len(),
            violation: None,
        }
    }

    /// Checks a frame's header before its payload is read.
    fn begin_frame(&mut self, header: &FrameHeader) -> Result<(), InboundViolation> {
        let starts_block = match (self.block_stream, header.kind) {
            (Some(stream), FRAME_CONTINUATION) if stream == header.stream_id => false,
            // RFC 9113 §6.10: "Any number of CONTINUATION frames can be
            // sent, as long as the preceding frame is on the same stream
            // and is a HEADERS, PUSH_PROMISE, or CONTINUATION frame
            // without the END_HEADERS flag set."
            (Some(_), _) | (None, FRAME_CONTINUATION) => {
                return Err(InboundViolation::InterleavedHeaderBlock);
            }
            (None, FRAME_HEADERS) => true,
            (None, _) => return Ok(()),
        };
        let limit = self.limits.block.max_header_list_size;
        let overhead = if starts_block {
            MAX_HEADERS_FRAME_OVERHEAD
        } else {
            0
        };
        // Refused from the frame header, before its payload is kept.
        if self.block.len() + header.length > limit + overhead {
            return Err(InboundViolation::HeaderBlockTooLarge {
                bytes: self.block.len() + header.length,
                limit,
            });
        }
        if starts_block {
            self.block_stream = Some(header.stream_id);
        }
        Ok(())
    }

    fn end_frame(&mut self, header: &FrameHeader, now: Instant) -> Result<(), InboundViolation> {
        if header.kind == FRAME_SETTINGS && self.stage == Stage::Settings {
            self.stage = Stage::FirstRequest;
        }
        match header.kind {
            FRAME_PING if header.flags & FLAG_ACK == 0 => self.ping(now)?,
            // grpc-go forgives early pings once the connection carries
            // calls again (it resets its strikes when it sends headers or
            // data; on this side, when the client does).
            FRAME_DATA | FRAME_HEADERS => self.ping_strikes = 0,
            _ => {}
        }
        if !header.carries_header_block() {
            return Ok(());
        }
        let payload = std::mem::take(&mut self.header_frame_payload);
        if header.kind == FRAME_HEADERS {
            let (_, fragment) = split_headers_payload(header.flags, &payload)
                .map_err(|_| InboundViolation::BadPadding)?;
            self.block.extend_from_slice(fragment);
        } else {
            self.block.extend_from_slice(&payload);
        }
        self.header_frame_payload = payload;
        self.header_frame_payload.clear();
        let limit = self.limits.block.max_header_list_size;
        if self.block.len() > limit {
            return Err(InboundViolation::HeaderBlockTooLarge {
                bytes: self.block.len(),
                limit,
            });
        }
        if header.flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        self.block_stream = None;
        let checked = self.check_block(now);
        self.block.clear();
        // A connection keeps its buffers between blocks; one large block
        // must not leave 16 KiB behind on each of thousands of connections.
        if self.block.capacity() > RETAINED_BUFFER {
            self.block = Vec::new();
        }
        if self.header_frame_payload.capacity() > RETAINED_BUFFER {
            self.header_frame_payload = Vec::new();
        }
        if checked.is_ok() && self.stage == Stage::FirstRequest {
            self.stage = Stage::Established;
        }
        checked
    }

    /// A PING from the client (h2 answers it). grpc-go's server keepalive
    /// enforcement, as etcd configures it with `--grpc-keepalive-min-time`:
    /// a ping sooner than the minimum time after the previous one is a
    /// strike; more than two, and the client is told to go away.
    fn ping(&mut self, now: Instant) -> Result<(), InboundViolation> {
        let too_soon = self.last_ping.is_some_and(|last| {
            now.saturating_duration_since(last) < self.limits.min_ping_interval
        });
        self.last_ping = Some(now);
        if too_soon {
            self.ping_strikes += 1;
            if self.ping_strikes > MAX_PING_STRIKES {
                return Err(InboundViolation::TooManyPings);
            }
        }
        Ok(())
    }

    /// A complete header block, before any decoder sees it.
    fn check_block(&mut self, now: Instant) -> Result<(), InboundViolation> {
        hpack_scan::scan(&self.block, &self.limits.block).map_err(InboundViolation::Hpack)?;
        let charged = self
            .block
            .len()
            .saturating_sub(self.limits.free_block_bytes);
        if charged > 0 && !self.budget.spend(charged, now) {
            return Err(InboundViolation::HeaderBudgetExhausted);
        }
        Ok(())
    }
}

/// What a connection's guard tells the connection task: its stage, and
/// the violation that ends it. Shared on one core only.
#[derive(Default)]
pub struct InboundSignals {
    /// The guard's stage after the last read (`None`: nothing read yet).
    stage: Cell<Option<Stage>>,
    /// The first violation found; the connection closes for it.
    violation: RefCell<Option<InboundViolation>>,
    /// The task waiting in [`InboundSignals::violation`].
    waiter: Cell<Option<Waker>>,
}

impl InboundSignals {
    pub fn stage(&self) -> Stage {
        self.stage.get().unwrap_or(Stage::Preface)
    }

    fn set_stage(&self, stage: Stage) {
        self.stage.set(Some(stage));
    }

    /// Records the first violation and wakes the connection task.
    pub fn raise(&self, violation: InboundViolation) {
        let mut slot = self.violation.borrow_mut();
        if slot.is_none() {
            *slot = Some(violation);
        }
        drop(slot);
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    /// Resolves once a violation is raised.
    pub async fn violation(&self) -> InboundViolation {
        std::future::poll_fn(|context| match self.violation.borrow().clone() {
            Some(violation) => Poll::Ready(violation),
            None => {
                self.waiter.set(Some(context.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// The socket as the rest of the stack reads it, with an [`InboundGuard`]
/// looking at every byte in place.
pub struct GuardedIo<T> {
    inner: T,
    guard: InboundGuard,
    /// Shared with the connection task: the stage, and the violation that
    /// ends the connection.
    signals: std::rc::Rc<InboundSignals>,
    /// Set once a violation was found: nothing more is read.
    stopped: bool,
}

impl<T> GuardedIo<T> {
    pub fn new(inner: T, limits: InboundLimits, signals: std::rc::Rc<InboundSignals>) -> Self {
        Self {
            inner,
            guard: InboundGuard::new(limits),
            signals,
            stopped: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stopped {
            // The connection task was woken by `raise` and is closing.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(context, buf))?;
        if buf.filled().len() == before {
            return Poll::Ready(Ok(()));
        }
        let inspection = this.guard.inspect(&buf.filled()[before..], Instant::now());
        this.signals.set_stage(this.guard.stage());
        if let Some(violation) = inspection.violation {
            buf.set_filled(before + inspection.accepted);
            this.stopped = true;
            this.signals.raise(violation);
            if inspection.accepted == 0 {
                // Nothing to hand over; an empty read would mean EOF.
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(context, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(context, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
