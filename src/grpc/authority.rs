//! Accepting the `:authority` that etcd 3.4's Go client sends.
//!
//! etcd 3.4's clientv3 dials some endpoints (`Maintenance.Status`,
//! `Snapshot`, `HashKV`, ...) with the whole URL as the gRPC target, so the
//! request's `:authority` is `http://127.0.0.1:2379`. grpc-go servers (etcd
//! itself) accept it; the `h2` crate refuses it as malformed (RFC 3986 does
//! not allow `/` in an authority) and resets the stream, and its maintainers
//! will not relax that. So before h2 sees the bytes, this layer decodes
//! every client header block and, where `:authority` carries a scheme or
//! path, rewrites it to the bare `host:port`.
//!
//! A gRPC client's `:authority` is fixed per connection (grpc-go sets it per
//! `ClientConn`), so the first header block decides: if it needs no
//! rewrite, the connection switches to pure pass-through and this layer
//! costs nothing more (the IO adapter then reads straight into h2's
//! buffer). If it does, the connection stays in rewrite mode: HPACK is
//! stateful, and once one block is re-encoded h2's decoding table no longer
//! mirrors the client's, so every later block is re-encoded with our own
//! encoder. DATA and other frames always pass through unbuffered.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_frames::{
    FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PRIORITY, FRAME_CONTINUATION, FRAME_HEADER_LEN,
    FRAME_HEADERS, PREFACE_LEN, PRIORITY_LEN, split_headers_payload,
};
use super::hpack_scan::FIELD_OVERHEAD;
use super::inbound::{InboundSignals, InboundViolation};

/// Frames we emit stay within the initial SETTINGS_MAX_FRAME_SIZE, valid
/// before and after settings are acknowledged.
const EMIT_MAX_FRAME: usize = 16_384;
/// The HPACK table size h2 uses (SETTINGS_HEADER_TABLE_SIZE default).
const HPACK_TABLE_SIZE: usize = 4096;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AuthorityError {
    #[error("header block larger than {0} bytes")]
    HeaderBlockTooLarge(usize),
    #[error("header list larger than {0} bytes (SETTINGS_MAX_HEADER_LIST_SIZE)")]
    HeaderListTooLarge(usize),
    #[error("malformed HEADERS frame padding")]
    BadPadding,
    #[error("frame interleaved inside a header block")]
    InterleavedHeaderBlock,
    #[error("HPACK decoding failed: {0}")]
    Hpack(String),
}

/// A header block being assembled from HEADERS + CONTINUATION frames.
struct PartialBlock {
    stream_id: u32,
    /// END_STREAM of the HEADERS frame, kept for re-emission.
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: BytesMut,
    /// The frames exactly as received, for pass-through.
    raw: BytesMut,
}

/// Pure byte-stream transformer for the client → server direction.
pub struct AuthorityRewriter {
    /// Received bytes not yet forming a whole frame header or header frame.
    pending: BytesMut,
    preface_done: bool,
    /// Payload bytes of the current non-header frame still to pass through.
    passthrough_remaining: usize,
    decoder: loona_hpack::Decoder<'static>,
    /// Set by the first rewrite; from then on every block is re-encoded.
    encoder: Option<loona_hpack::Encoder<'static>>,
    /// The first header block needed no rewrite: every byte after it passes
    /// through untouched.
    passthrough: bool,
    block: Option<PartialBlock>,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the bound on one header block,
    /// compressed, and on the list it decodes to.
    max_block_len: usize,
}

impl AuthorityRewriter {
    pub fn new(max_block_len: usize) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        Self {
            pending: BytesMut::new(),
            preface_done: false,
            passthrough_remaining: 0,
            passthrough: false,
            decoder,
            encoder: None,
            block: None,
            max_block_len,
        }
    }

    /// Consumes `input`, appending the (possibly rewritten) stream to `output`.
    pub fn feed(&mut self, input: &[u8], output: &mut BytesMut) -> Result<(), AuthorityError> {
        if self.passthrough {
            output.put_slice(input);
            return Ok(());
        }
        let mut input = input;
        if self.passthrough_remaining > 0 {
            let take = self.passthrough_remaining.min(input.len());
            output.put_slice(&input[..take]);
            self.passthrough_remaining -= take;
            input = &input[take..];
        }
        self.pending.extend_from_slice(input);
        self.drain(output)
    }

    fn drain(&mut self, output: &mut BytesMut) -> Result<(), AuthorityError> {
        if !self.preface_done {
            if self.pending.len() < PREFACE_LEN {
                return Ok(());
            }
            // h2 validates the preface itself.
            output.put_slice(&self.pending.split_to(PREFACE_LEN));
            self.preface_done = true;
        }
        while self.passthrough_remaining == 0 && self.pending.len() >= FRAME_HEADER_LEN {
            let header = &self.pending[..FRAME_HEADER_LEN];
            let length = (usize::from(header[0]) << 16)
                | (usize::from(header[1]) << 8)
                | usize::from(header[2]);
            let frame_type = header[3];
            if frame_type != FRAME_HEADERS && frame_type != FRAME_CONTINUATION {
                if self.block.is_some() {
                    // RFC 9113 §6.10: nothing may come between HEADERS and its CONTINUATIONs.
                    return Err(AuthorityError::InterleavedHeaderBlock);
                }
                output.put_slice(&self.pending.split_to(FRAME_HEADER_LEN));
                let take = length.min(self.pending.len());
                output.put_slice(&self.pending.split_to(take));
                self.passthrough_remaining = length - take;
                continue;
            }
            if length > self.max_block_len {
                return Err(AuthorityError::HeaderBlockTooLarge(self.max_block_len));
            }
            if self.pending.len() < FRAME_HEADER_LEN + length {
                return Ok(());
            }
            let frame = self.pending.split_to(FRAME_HEADER_LEN + length);
            self.header_frame(&frame, output)?;
        }
        Ok(())
    }

    fn header_frame(&mut self, frame: &[u8], output: &mut BytesMut) -> Result<(), AuthorityError> {
        let (frame_type, flags) = (frame[3], frame[4]);
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match (frame_type, self.block.as_mut()) {
            (FRAME_HEADERS, None) => {
                let (priority, fragment) = split_headers_payload(flags, payload)
                    .map_err(|_| AuthorityError::BadPadding)?;
                self.block = Some(PartialBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: BytesMut::from(fragment),
                    raw: BytesMut::from(frame),
                });
            }
            (FRAME_CONTINUATION, Some(block)) if block.stream_id == stream_id => {
                if block.fragment.len() + payload.len() > self.max_block_len {
                    return Err(AuthorityError::HeaderBlockTooLarge(self.max_block_len));
                }
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(frame);
            }
            _ => return Err(AuthorityError::InterleavedHeaderBlock),
        }
        if flags & FLAG_END_HEADERS != 0 {
            let block = self.block.take().expect("a block is being assembled");
            self.finish_block(block, output)?;
        }
        Ok(())
    }

    fn finish_block(
        &mut self,
        block: PartialBlock,
        output: &mut BytesMut,
    ) -> Result<(), AuthorityError> {
        // RFC 9113 §6.5.2: the list's size is its fields' names and values
        // plus 32 octets each. Nothing past SETTINGS_MAX_HEADER_LIST_SIZE
        // is copied: `inbound` bounds the fields of a block, but each may
        // name a 4 KiB table entry.
        let limit = self.max_block_len;
        let mut list_size = 0usize;
        let mut authority_needs_rewrite = false;
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + FIELD_OVERHEAD);
                if &*name == b":authority" && bare_authority(&value).is_some() {
                    authority_needs_rewrite = true;
                }
                if list_size <= limit {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|error| AuthorityError::Hpack(error.to_string()))?;
        let rewriting = authority_needs_rewrite || self.encoder.is_some();
        // RFC 9113 §10.5.1: "A server that receives a larger header section
        // than it is willing to handle can send an HTTP 431 ... The header
        // section MUST be processed to ensure a consistent connection
        // state, unless the connection is closed." Not rewriting, the block
        // goes to h2 as it came: h2 decodes it (its table stays in step)
        // and answers 431. Rewriting, re-encoding a partial list is no
        // option: the connection is closed.
        if list_size > limit && rewriting {
            return Err(AuthorityError::HeaderListTooLarge(limit));
        }
        if !rewriting {
            output.put_slice(&block.raw);
            // The connection's authority is fine: stop parsing. Whatever
            // was received after this block goes out as it came.
            self.passthrough = true;
            output.put_slice(&self.pending.split());
            return Ok(());
        }
        for (name, value) in &mut fields {
            if name == b":authority"
                && let Some(bare) = bare_authority(value)
            {
                *value = bare;
            }
        }
        let encoder = self.encoder.get_or_insert_with(|| {
            let mut encoder = loona_hpack::Encoder::new();
            encoder.set_max_table_size(HPACK_TABLE_SIZE);
            encoder
        });
        let mut encoded = Vec::new();
        encoder
            .encode_into(
                fields.iter().map(|(name, value)| (&name[..], &value[..])),
                &mut encoded,
            )
            .map_err(|error| AuthorityError::Hpack(error.to_string()))?;
        emit_header_block(
            block.stream_id,
            block.end_stream,
            block.priority,
            &encoded,
            output,
        );
        Ok(())
    }
}

/// The bare `host:port` of an authority that carries a scheme and/or path
/// (`http://host:port/`), or `None` if it is already bare.
fn bare_authority(value: &[u8]) -> Option<Vec<u8>> {
    let without_scheme = value
        .windows(3)
        .position(|window| window == b"://")
        .map(|position| &value[position + 3..]);
    let rest = without_scheme.unwrap_or(value);
    let bare = rest.split(|byte| *byte == b'/').next().unwrap_or_default();
    (bare.len() != value.len()).then(|| bare.to_vec())
}

fn emit_header_block(
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    block: &[u8],
    output: &mut BytesMut,
) {
    let mut payload = Vec::with_capacity(block.len() + PRIORITY_LEN);
    if let Some(priority) = priority {
        payload.extend_from_slice(&priority);
    }
    payload.extend_from_slice(block);
    let mut chunks = payload.chunks(EMIT_MAX_FRAME).peekable();
    let mut frame_type = FRAME_HEADERS;
    let mut first = true;
    // An empty block still needs one HEADERS frame.
    let empty: &[u8] = &[];
    let mut next = chunks.next().or(Some(empty));
    while let Some(chunk) = next {
        next = chunks.next();
        let mut flags = 0u8;
        if first {
            flags |= if end_stream { FLAG_END_STREAM } else { 0 }
                | if priority.is_some() { FLAG_PRIORITY } else { 0 };
        }
        if next.is_none() {
            flags |= FLAG_END_HEADERS;
        }
        output.put_uint(chunk.len() as u64, 3);
        output.put_u8(frame_type);
        output.put_u8(flags);
        output.put_u32(stream_id);
        output.put_slice(chunk);
        frame_type = FRAME_CONTINUATION;
        first = false;
    }
}

/// Bytes read from the socket at a time while the rewriter inspects them.
const READ_CHUNK: usize = 16 * 1024;

/// The IO adapter: reads through an [`AuthorityRewriter`], writes untouched.
pub struct AuthorityRewritingIo<T> {
    inner: T,
    rewriter: AuthorityRewriter,
    /// Where a block the rewriter refuses is reported, so the connection
    /// closes with GOAWAY rather than a bare read error.
    signals: Rc<InboundSignals>,
    /// Set once the rewriter refused a block: nothing more is read.
    stopped: bool,
    /// Raw bytes read from the socket, reused until the connection passes
    /// through, then freed: with thousands of connections open, 16 KiB
    /// each that is never used again adds up.
    read_buffer: Vec<u8>,
    /// Rewritten bytes not yet handed to h2.
    ready: BytesMut,
}

impl<T> AuthorityRewritingIo<T> {
    pub fn new(inner: T, max_block_len: usize, signals: Rc<InboundSignals>) -> Self {
        Self {
            inner,
            rewriter: AuthorityRewriter::new(max_block_len),
            signals,
            stopped: false,
            read_buffer: Vec::new(),
            ready: BytesMut::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityRewritingIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                // Bytes before a refused block still go to h2.
                let take = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..take]);
                this.ready.advance(take);
                return Poll::Ready(Ok(()));
            }
            if this.stopped {
                // The connection task was woken by `raise` and is closing.
                return Poll::Pending;
            }
            if this.rewriter.passthrough {
                if !this.read_buffer.is_empty() {
                    this.read_buffer = Vec::new();
                    this.ready = BytesMut::new();
                }
                // Nothing left to inspect: read straight into h2's buffer.
                return Pin::new(&mut this.inner).poll_read(context, buf);
            }
            if this.read_buffer.is_empty() {
                this.read_buffer = vec![0; READ_CHUNK];
            }
            let mut raw = ReadBuf::new(&mut this.read_buffer);
            ready!(Pin::new(&mut this.inner).poll_read(context, &mut raw))?;
            if raw.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Err(error) = this.rewriter.feed(raw.filled(), &mut this.ready) {
                this.stopped = true;
                this.signals.raise(InboundViolation::Authority(error));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityRewritingIo<T> {
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
mod tests {
    use super::*;

    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn headers_frame(stream_id: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_uint(block.len() as u64, 3);
        out.put_u8(FRAME_HEADERS);
        out.put_u8(flags);
        out.put_u32(stream_id);
        out.put_slice(block);
        out.to_vec()
    }

    fn decode_all(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        // Parse our own output: preface, then frames; decode header blocks.
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut rest = &bytes[PREFACE_LEN..];
        let mut fragment = Vec::new();
        while rest.len() >= FRAME_HEADER_LEN {
            let length =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (frame_type, flags) = (rest[3], rest[4]);
            let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + length];
            if frame_type == FRAME_HEADERS || frame_type == FRAME_CONTINUATION {
                fragment.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(decoder.decode(&fragment).expect("valid hpack"));
                    fragment.clear();
                }
            }
            rest = &rest[FRAME_HEADER_LEN + length..];
        }
        blocks
    }

    fn run(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut rewriter = AuthorityRewriter::new(64 * 1024);
        let mut output = BytesMut::new();
        for piece in input.chunks(chunk.max(1)) {
            rewriter.feed(piece, &mut output).expect("feed");
        }
        output.to_vec()
    }

    #[test]
    fn scheme_prefixed_authority_is_rewritten_and_later_blocks_stay_decodable() {
        let mut client = loona_hpack::Encoder::new();
        let first = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
        ]);
        // The client's second block refers to its dynamic table.
        let second = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.KV/Range"),
        ]);
        let data_frame = [0u8, 0, 2, 0x0, 0x1, 0, 0, 0, 1, 0xAA, 0xBB];
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &first));
        input.extend(data_frame);
        input.extend(headers_frame(
            3,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            &second,
        ));
        for chunk in [1, 2, 7, 1000] {
            let output = run(&input, chunk);
            let blocks = decode_all(&output);
            assert_eq!(blocks.len(), 2);
            for block in &blocks {
                let authority = block
                    .iter()
                    .find(|(name, _)| name == b":authority")
                    .map(|(_, value)| value.clone());
                assert_eq!(authority, Some(b"127.0.0.1:2379".to_vec()), "chunk {chunk}");
            }
            assert!(
                output.windows(2).any(|window| window == [0xAA, 0xBB]),
                "DATA passes through"
            );
        }
    }

    #[test]
    fn bare_authority_passes_through_byte_for_byte() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"127.0.0.1:2379"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &block));
        assert_eq!(run(&input, 3), input);
    }

    #[test]
    fn a_fine_first_block_switches_the_connection_to_pass_through() {
        let mut client = loona_hpack::Encoder::new();
        let first = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"127.0.0.1:2379"),
        ]);
        let second = client.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"not even / valid"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &first));
        input.extend(headers_frame(3, FLAG_END_HEADERS, &second));
        let mut rewriter = AuthorityRewriter::new(64 * 1024);
        let mut output = BytesMut::new();
        rewriter.feed(&input, &mut output).expect("feed");
        assert!(rewriter.passthrough);
        assert_eq!(output.to_vec(), input, "later blocks are not inspected");
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for seed in 0..500u64 {
            state ^= seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
            let mut input = PREFACE.to_vec();
            for _ in 0..200 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push((state & 0xff) as u8);
            }
            let mut rewriter = AuthorityRewriter::new(1024);
            let mut output = BytesMut::new();
            let _ = rewriter.feed(&input, &mut output);
            assert!(
                output.len() <= input.len() + 2 * FRAME_HEADER_LEN + 1024,
                "seed {seed}: output bounded"
            );
        }
    }

    #[test]
    fn bare_authority_forms() {
        assert_eq!(
            bare_authority(b"http://127.0.0.1:2379"),
            Some(b"127.0.0.1:2379".to_vec())
        );
        assert_eq!(
            bare_authority(b"http://127.0.0.1:2379/"),
            Some(b"127.0.0.1:2379".to_vec())
        );
        assert_eq!(bare_authority(b"127.0.0.1:2379"), None);
        assert_eq!(bare_authority(b"localhost:2379"), None);
    }
}
