//! gRPC length-prefixed message framing over HTTP/2 DATA frames.
//!
//! Pure code, no I/O, in the style of the h2 crate: decoding returns
//! `Ok(None)` when more bytes are needed, encoding appends to a `BytesMut`.
//! Rules from PROTOCOL-HTTP2.md in grpc/grpc are paraphrased beside the
//! checks that enforce them.
//!
//! Wire format of one message (spec "Length-Prefixed-Message"):
//!
//! ```text
//! +------------------+---------------------------+-----------------+
//! | compressed flag  | message length            | message         |
//! | 1 byte (0 or 1)  | 4 bytes, unsigned, big-   | `length` bytes  |
//! |                  | endian                    |                 |
//! +------------------+---------------------------+-----------------+
//! ```

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::status::Status;

/// Size of the prefix in front of every message: flag byte + u32 length.
pub const HEADER_LEN: usize = 5;

const FLAG_UNCOMPRESSED: u8 = 0;
const FLAG_COMPRESSED: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The peer set the compressed flag. The server refuses any
    /// `grpc-encoding` other than identity before reading messages, so a
    /// compressed message here names no algorithm. Text is grpc-go's.
    #[error("grpc: compressed flag set with identity or empty encoding")]
    Compressed,
    /// The flag byte was neither 0 nor 1: the framing itself is broken.
    #[error("grpc: received unexpected payload format {0}")]
    InvalidFlag(u8),
    /// The declared body length is above the configured maximum. Text is
    /// grpc-go's, which is what etcd clients see from a real etcd.
    #[error("grpc: received message larger than max ({length} vs. {max})")]
    MessageTooLarge { length: usize, max: usize },
    /// The stream ended part-way through a message. `expected` and `got`
    /// count the bytes of that message, header included.
    /// Text is grpc-go's (Go's `io.ErrUnexpectedEOF`).
    #[error("unexpected EOF")]
    Truncated { expected: usize, got: usize },
    /// An outgoing message cannot be framed because its length does not fit
    /// the 4-byte length prefix. Text mirrors grpc-go's send-side check.
    #[error("grpc: message too large ({length} bytes)")]
    EncodeTooLarge { length: usize },
}

impl CodecError {
    /// The status the server should end the RPC with for this error.
    pub fn to_status(&self) -> Status {
        let message = self.to_string();
        match self {
            // grpc-go (what etcd runs) answers a compressed flag without
            // an encoding with INTERNAL.
            CodecError::Compressed => Status::internal(message),
            // grpc-go answers oversize messages, in either direction, with
            // RESOURCE_EXHAUSTED.
            CodecError::MessageTooLarge { .. } | CodecError::EncodeTooLarge { .. } => {
                Status::resource_exhausted(message)
            }
            // grpc-go: a bad payload format is INTERNAL; a stream that ends
            // inside a message surfaces as UNKNOWN "unexpected EOF".
            CodecError::InvalidFlag(_) => Status::internal(message),
            CodecError::Truncated { .. } => Status::new(super::status::Code::Unknown, message),
        }
    }
}

/// Incremental decoder for the messages of one gRPC request or response
/// body.
///
/// Feed it the payload of each DATA frame with [`push`](Self::push) and
/// drain it with [`decode`](Self::decode). DATA frames split messages at
/// arbitrary points and one frame may carry several messages.
///
/// Memory: the decoder only holds the chunks it was given (whose size the
/// caller bounds through HTTP/2 flow control) plus, for a body that spans
/// several chunks, one buffer of exactly the body length, allocated only
/// after that length was checked against `max_message_len` and the whole
/// body has arrived. A declared length is never used to size anything
/// before that check.
///
/// Errors are terminal: the offending header is not consumed, so calling
/// `decode` again returns the same error. The RPC should be ended with
/// [`CodecError::to_status`].
#[derive(Debug)]
pub struct MessageDecoder {
    /// Largest message body accepted. Compared with the declared length as
    /// soon as a 5-byte header is complete, before waiting for the body.
    max_message_len: usize,
    /// Received bytes not yet returned, oldest first, exactly as pushed
    /// (minus what was consumed from the front). Invariant: never contains
    /// an empty `Bytes`, so a non-empty deque always has a readable byte at
    /// its front.
    chunks: VecDeque<Bytes>,
    /// Total length of `chunks`, maintained on every push and consume so
    /// that "has the whole body arrived?" is O(1) rather than a walk over
    /// the deque for every DATA frame of a large message.
    buffered_len: usize,
    /// Body length of the message whose header has already been consumed
    /// from `chunks` and validated; `None` while positioned at a message
    /// boundary. Invariant: when `Some`, the value is at most
    /// `max_message_len`.
    pending_body_len: Option<usize>,
    /// Largest buffer the decoder itself allocated to assemble a body that
    /// spanned chunks. Test-only, so tests can assert that no allocation is
    /// ever sized from an unchecked length.
    #[cfg(test)]
    largest_allocation: usize,
}

impl MessageDecoder {
    pub fn new(max_message_len: usize) -> MessageDecoder {
        MessageDecoder {
            max_message_len,
            chunks: VecDeque::new(),
            buffered_len: 0,
            pending_body_len: None,
            #[cfg(test)]
            largest_allocation: 0,
        }
    }

    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// Appends the payload of one DATA frame. Cheap: the `Bytes` is kept as
    /// is (reference-counted), nothing is copied.
    pub fn push(&mut self, chunk: Bytes) {
        // Keeps the "no empty chunk" invariant; empty DATA frames (for
        // example a bare END_STREAM) are legal and carry nothing.
        if chunk.is_empty() {
            return;
        }
        self.buffered_len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Bytes held and not yet returned. Does not count the header of a
    /// message whose header was already parsed while its body is awaited.
    pub fn buffered_len(&self) -> usize {
        self.buffered_len
    }

    /// Returns the next complete message body, `Ok(None)` if more bytes are
    /// needed.
    ///
    /// When the body lies inside a single pushed chunk the result is a
    /// zero-copy slice of that chunk (which keeps the chunk's allocation
    /// alive while the slice lives); otherwise the pieces are copied into
    /// one new buffer of exactly the body length.
    pub fn decode(&mut self) -> Result<Option<Bytes>, CodecError> {
        let body_len = match self.pending_body_len {
            Some(body_len) => body_len,
            None => {
                let Some(header) = self.peek_header() else {
                    return Ok(None);
                };
                let body_len = self.check_header(header)?;
                self.discard_front(HEADER_LEN);
                self.pending_body_len = Some(body_len);
                body_len
            }
        };
        if self.buffered_len < body_len {
            return Ok(None);
        }
        self.pending_body_len = None;
        Ok(Some(self.take_body(body_len)))
    }

    /// Checks that the stream ended on a message boundary.
    ///
    /// Call once the peer's END_STREAM has been seen and `decode` has
    /// returned `Ok(None)`: any bytes still held at that point are the start
    /// of a message that can never complete.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.pending_body_len {
            Some(body_len) => Err(CodecError::Truncated {
                expected: HEADER_LEN.saturating_add(body_len),
                got: HEADER_LEN.saturating_add(self.buffered_len),
            }),
            None if self.buffered_len == 0 => Ok(()),
            None => {
                // The header may be complete but not yet parsed (decode not
                // called since the last push); report the full message size
                // it announces if so.
                let expected = match self.peek_header() {
                    Some(header) => HEADER_LEN.saturating_add(declared_length(header)),
                    None => HEADER_LEN,
                };
                Err(CodecError::Truncated {
                    expected,
                    got: self.buffered_len,
                })
            }
        }
    }

    /// Copies the first `HEADER_LEN` buffered bytes, which may straddle
    /// chunks, without consuming them. `None` if fewer are buffered.
    fn peek_header(&self) -> Option<[u8; HEADER_LEN]> {
        if self.buffered_len < HEADER_LEN {
            return None;
        }
        let mut header = [0u8; HEADER_LEN];
        let mut filled = 0;
        for chunk in &self.chunks {
            let wanted = (HEADER_LEN - filled).min(chunk.len());
            header[filled..filled + wanted].copy_from_slice(&chunk[..wanted]);
            filled += wanted;
            if filled == HEADER_LEN {
                break;
            }
        }
        Some(header)
    }

    /// Validates a message header and returns the body length it declares.
    fn check_header(&self, header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
        // Spec: Compressed-Flag is one unsigned byte whose only values are
        // 0 and 1; anything else means the framing is corrupt.
        match header[0] {
            FLAG_UNCOMPRESSED => {}
            // Spec: flag 1 means the message is compressed with the
            // algorithm named by the grpc-encoding header, and without such
            // a header the flag must be 0. We accept no grpc-encoding at
            // all, so a compressed message can never be decoded here.
            FLAG_COMPRESSED => return Err(CodecError::Compressed),
            other => return Err(CodecError::InvalidFlag(other)),
        }
        // Spec: Message-Length is the body size as a 4-byte unsigned
        // big-endian integer. Checked against our limit right away, so an
        // oversized message is refused before its body is waited for.
        let length = declared_length(header);
        if length > self.max_message_len {
            return Err(CodecError::MessageTooLarge {
                length,
                max: self.max_message_len,
            });
        }
        Ok(length)
    }

    /// Drops `count` bytes from the front. Caller guarantees
    /// `count <= buffered_len`.
    fn discard_front(&mut self, mut count: usize) {
        while count > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() > count {
                front.advance(count);
                self.buffered_len -= count;
                break;
            }
            count -= front.len();
            self.buffered_len -= front.len();
            self.chunks.pop_front();
        }
    }

    /// Removes and returns the next `body_len` bytes. Caller guarantees
    /// `body_len <= buffered_len` and `body_len <= max_message_len`.
    fn take_body(&mut self, body_len: usize) -> Bytes {
        if body_len == 0 {
            return Bytes::new();
        }
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= body_len
        {
            let body = front.split_to(body_len);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.buffered_len -= body_len;
            return body;
        }
        // The body spans chunks. Its length was bounded by max_message_len
        // in check_header and every byte is already here, so this is one
        // right-sized allocation that is filled completely.
        let mut body = BytesMut::with_capacity(body_len);
        #[cfg(test)]
        {
            self.largest_allocation = self.largest_allocation.max(body_len);
        }
        while body.len() < body_len {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let wanted = (body_len - body.len()).min(front.len());
            body.extend_from_slice(&front[..wanted]);
            front.advance(wanted);
            self.buffered_len -= wanted;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        body.freeze()
    }
}

/// Body length announced by a header. A u32 always fits in usize on the
/// 32- and 64-bit targets we build for; on anything smaller, saturating
/// makes the length exceed any possible maximum, which is the right answer.
fn declared_length(header: [u8; HEADER_LEN]) -> usize {
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    usize::try_from(length).unwrap_or(usize::MAX)
}

/// Writes the 5-byte prefix for a body of `body_len` bytes.
fn put_header(body_len: usize, dst: &mut BytesMut) -> Result<(), CodecError> {
    // Spec: Message-Length is a 4-byte unsigned integer, so a body of 4 GiB
    // or more cannot be framed at all.
    let length_prefix =
        u32::try_from(body_len).map_err(|_| CodecError::EncodeTooLarge { length: body_len })?;
    dst.reserve(HEADER_LEN.saturating_add(body_len));
    // Spec: without a grpc-encoding header the flag must be 0; we never
    // compress.
    dst.put_u8(FLAG_UNCOMPRESSED);
    dst.put_u32(length_prefix);
    Ok(())
}

/// A message the server can send: any protobuf message, or a type that
/// writes protobuf bytes it partly encoded earlier (a watch response whose
/// events are encoded once and shared by every watcher).
pub trait OutgoingMessage {
    /// The exact number of bytes [`encode_raw`](Self::encode_raw) writes.
    fn encoded_len(&self) -> usize;
    /// Appends the protobuf encoding, without the gRPC prefix.
    fn encode_raw(&self, dst: &mut BytesMut);
}

impl<M: prost::Message> OutgoingMessage for M {
    fn encoded_len(&self) -> usize {
        prost::Message::encoded_len(self)
    }

    fn encode_raw(&self, dst: &mut BytesMut) {
        prost::Message::encode_raw(self, dst)
    }
}

/// Appends `message` as one length-prefixed, uncompressed gRPC message,
/// encoding the protobuf straight into `dst` (no intermediate buffer).
/// On error `dst` is left unchanged.
pub fn encode_message<M: OutgoingMessage + ?Sized>(
    message: &M,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    encode_message_of_len(message, message.encoded_len(), dst)
}

/// [`encode_message`] for a caller that already asked the message for its
/// `encoded_len` (to size a buffer), so it is not computed twice.
pub fn encode_message_of_len<M: OutgoingMessage + ?Sized>(
    message: &M,
    body_len: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    put_header(body_len, dst)?;
    // `encode_raw` rather than `encode`: `encode` would walk the message a
    // second time only to compare encoded_len with the remaining capacity,
    // and a BytesMut grows on demand (and was reserved above) so that check
    // cannot fail.
    let body_start = dst.len();
    message.encode_raw(dst);
    debug_assert_eq!(
        dst.len() - body_start,
        body_len,
        "encoded_len does not match what encode_raw wrote"
    );
    Ok(())
}

/// Appends an already-encoded body as one length-prefixed, uncompressed
/// gRPC message. On error `dst` is left unchanged.
pub fn encode_raw_message(body: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
    put_header(body.len(), dst)?;
    dst.put_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::status::Code;
    use super::*;

    fn frame(flag: u8, body: &[u8]) -> Vec<u8> {
        let mut framed = vec![flag];
        let length = u32::try_from(body.len()).expect("test bodies are small");
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(body);
        framed
    }

    fn frame_all(bodies: &[&[u8]]) -> Vec<u8> {
        bodies.iter().flat_map(|body| frame(0, body)).collect()
    }

    fn drain(decoder: &mut MessageDecoder) -> Vec<Bytes> {
        let mut messages = Vec::new();
        while let Some(message) = decoder.decode().expect("valid stream") {
            messages.push(message);
        }
        messages
    }

    #[test]
    fn one_message_in_one_chunk_is_zero_copy() {
        let chunk = Bytes::from(frame(0, b"hello"));
        let mut decoder = MessageDecoder::new(1024);
        decoder.push(chunk.clone());
        let message = decoder.decode().expect("valid").expect("complete");
        assert_eq!(&message[..], b"hello");
        assert_eq!(
            message.as_ptr(),
            chunk[HEADER_LEN..].as_ptr(),
            "must be a slice of the chunk"
        );
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.buffered_len(), 0);
        assert_eq!(decoder.finish(), Ok(()));
        assert_eq!(decoder.largest_allocation, 0);
    }

    #[test]
    fn several_messages_in_one_chunk() {
        let bodies: [&[u8]; 4] = [b"first", b"", b"third message", b"x"];
        let mut decoder = MessageDecoder::new(1024);
        decoder.push(Bytes::from(frame_all(&bodies)));
        let messages = drain(&mut decoder);
        assert_eq!(messages, bodies.to_vec());
        assert_eq!(decoder.finish(), Ok(()));
        assert_eq!(
            decoder.largest_allocation, 0,
            "each body sat inside the one chunk"
        );
    }

    #[test]
    fn body_in_its_own_chunk_after_split_header_is_zero_copy() {
        let framed = frame(0, b"payload");
        let mut decoder = MessageDecoder::new(1024);
        decoder.push(Bytes::copy_from_slice(&framed[..2]));
        decoder.push(Bytes::copy_from_slice(&framed[2..HEADER_LEN]));
        assert_eq!(decoder.decode(), Ok(None));
        let body_chunk = Bytes::copy_from_slice(&framed[HEADER_LEN..]);
        decoder.push(body_chunk.clone());
        let message = decoder.decode().expect("valid").expect("complete");
        assert_eq!(message.as_ptr(), body_chunk.as_ptr());
        assert_eq!(decoder.largest_allocation, 0);
    }

    #[test]
    fn message_split_at_every_boundary_across_two_chunks() {
        let bodies: [&[u8]; 3] = [b"0123456789", b"", b"abc"];
        let stream = frame_all(&bodies);
        for split in 0..=stream.len() {
            let mut decoder = MessageDecoder::new(64);
            decoder.push(Bytes::copy_from_slice(&stream[..split]));
            let mut messages = drain(&mut decoder);
            decoder.push(Bytes::copy_from_slice(&stream[split..]));
            messages.extend(drain(&mut decoder));
            assert_eq!(messages, bodies.to_vec(), "split at {split}");
            assert_eq!(decoder.finish(), Ok(()), "split at {split}");
        }
    }

    #[test]
    fn message_split_into_one_byte_chunks() {
        let bodies: [&[u8]; 3] = [b"spread over many frames", b"", b"z"];
        let stream = frame_all(&bodies);
        let mut decoder = MessageDecoder::new(64);
        let mut messages = Vec::new();
        for byte in &stream {
            decoder.push(Bytes::copy_from_slice(std::slice::from_ref(byte)));
            messages.extend(drain(&mut decoder));
        }
        assert_eq!(messages, bodies.to_vec());
        assert_eq!(decoder.finish(), Ok(()));
        assert_eq!(decoder.largest_allocation, bodies[0].len());
    }

    #[test]
    fn empty_chunks_are_ignored() {
        let mut decoder = MessageDecoder::new(64);
        decoder.push(Bytes::new());
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn zero_length_message_is_valid() {
        let mut decoder = MessageDecoder::new(0);
        decoder.push(Bytes::from(frame(0, b"")));
        let message = decoder.decode().expect("valid").expect("complete");
        assert!(message.is_empty());
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn exactly_max_is_accepted() {
        let body = vec![7u8; 16];
        let mut decoder = MessageDecoder::new(16);
        decoder.push(Bytes::from(frame(0, &body)));
        assert_eq!(decoder.decode().expect("valid").as_deref(), Some(&body[..]));
    }

    #[test]
    fn max_plus_one_is_rejected_from_the_header_alone() {
        let framed = frame(0, &[7u8; 17]);
        let mut decoder = MessageDecoder::new(16);
        // Only the header: the error must not wait for the body.
        decoder.push(Bytes::copy_from_slice(&framed[..HEADER_LEN]));
        let error = decoder.decode().expect_err("too large");
        assert_eq!(
            error,
            CodecError::MessageTooLarge {
                length: 17,
                max: 16
            }
        );
        let status = error.to_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "grpc: received message larger than max (17 vs. 16)"
        );
        // Terminal: the same error again.
        assert_eq!(decoder.decode(), Err(error));
    }

    #[test]
    fn huge_declared_length_allocates_nothing() {
        let mut decoder = MessageDecoder::new(4 * 1024 * 1024);
        decoder.push(Bytes::from_static(&[0, 0xFF, 0xFF, 0xFF, 0xFF]));
        assert_eq!(
            decoder.decode(),
            Err(CodecError::MessageTooLarge {
                length: 4_294_967_295,
                max: 4 * 1024 * 1024
            })
        );
        assert_eq!(decoder.largest_allocation, 0);
    }

    #[test]
    fn compressed_flag_is_internal_like_grpc_go() {
        let mut decoder = MessageDecoder::new(64);
        decoder.push(Bytes::from(frame(1, b"gzipped?")));
        let error = decoder.decode().expect_err("compressed");
        assert_eq!(error, CodecError::Compressed);
        let status = error.to_status();
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status
                .message()
                .contains("compressed flag set with identity or empty encoding")
        );
    }

    #[test]
    fn invalid_flag_is_internal() {
        for flag in [2u8, 0x80, 0xFF] {
            let mut decoder = MessageDecoder::new(64);
            decoder.push(Bytes::from(frame(flag, b"abc")));
            let error = decoder.decode().expect_err("bad flag");
            assert_eq!(error, CodecError::InvalidFlag(flag));
            assert_eq!(error.to_status().code(), Code::Internal);
            assert_eq!(
                error.to_status().message(),
                format!("grpc: received unexpected payload format {flag}")
            );
        }
    }

    #[test]
    fn truncated_stream_is_reported_by_finish() {
        // Inside the header.
        let mut decoder = MessageDecoder::new(64);
        decoder.push(Bytes::from_static(&[0, 0, 0]));
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(
            decoder.finish(),
            Err(CodecError::Truncated {
                expected: 5,
                got: 3
            })
        );

        // Header parsed, body incomplete.
        let framed = frame(0, b"0123456789");
        let mut decoder = MessageDecoder::new(64);
        decoder.push(Bytes::copy_from_slice(&framed[..HEADER_LEN + 4]));
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(
            decoder.finish(),
            Err(CodecError::Truncated {
                expected: 15,
                got: 9
            })
        );
        let status = decoder.finish().expect_err("truncated").to_status();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unknown, "unexpected EOF")
        );

        // Header complete but decode not called since the push.
        let mut decoder = MessageDecoder::new(64);
        decoder.push(Bytes::copy_from_slice(&framed[..HEADER_LEN + 2]));
        assert_eq!(
            decoder.finish(),
            Err(CodecError::Truncated {
                expected: 15,
                got: 7
            })
        );

        // Trailing partial message after complete ones.
        let mut stream = frame_all(&[b"ok"]);
        stream.extend_from_slice(&framed[..HEADER_LEN + 1]);
        let mut decoder = MessageDecoder::new(64);
        decoder.push(Bytes::from(stream));
        assert_eq!(drain(&mut decoder), vec![Bytes::from_static(b"ok")]);
        assert_eq!(
            decoder.finish(),
            Err(CodecError::Truncated {
                expected: 15,
                got: 6
            })
        );
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Probe {
        #[prost(bytes = "vec", tag = "1")]
        data: Vec<u8>,
    }

    #[test]
    fn prost_round_trip() {
        let probes = [
            Probe {
                data: b"hello".to_vec(),
            },
            Probe { data: Vec::new() },
            Probe {
                data: vec![0xAB; 300],
            },
        ];
        let mut wire = BytesMut::new();
        for probe in &probes {
            encode_message(probe, &mut wire).expect("small message");
        }
        // An empty Probe encodes to zero bytes: header only.
        assert_eq!(&wire[7 + 5..7 + 10], &[0, 0, 0, 0, 0]);
        assert_eq!(&wire[..HEADER_LEN], &[0, 0, 0, 0, 7]);

        let mut decoder = MessageDecoder::new(1024);
        // Split the wire into uneven chunks to exercise assembly too.
        let wire = wire.freeze();
        for piece in wire.chunks(13) {
            decoder.push(Bytes::copy_from_slice(piece));
        }
        let decoded: Vec<Probe> = drain(&mut decoder)
            .into_iter()
            .map(|body| <Probe as prost::Message>::decode(body).expect("valid protobuf"))
            .collect();
        assert_eq!(decoded, probes.to_vec());
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn encode_raw_message_frames_bytes() {
        let mut wire = BytesMut::from(&b"existing"[..]);
        encode_raw_message(b"abc", &mut wire).expect("small body");
        assert_eq!(&wire[..], b"existing\x00\x00\x00\x00\x03abc");
    }

    /// Tiny deterministic PRNG (xorshift64) so failures reproduce from the
    /// printed seed without an external crate.
    struct XorShift64 {
        state: u64,
    }

    impl XorShift64 {
        fn new(seed: u64) -> XorShift64 {
            // One splitmix64 step decorrelates consecutive seeds (xorshift's
            // first outputs for nearby seeds are similar); `max(1)` because
            // xorshift never leaves the all-zero state.
            let mut mixed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            mixed ^= mixed >> 31;
            XorShift64 {
                state: mixed.max(1),
            }
        }

        fn next_u64(&mut self) -> u64 {
            let mut value = self.state;
            value ^= value << 13;
            value ^= value >> 7;
            value ^= value << 17;
            self.state = value;
            value
        }

        /// Uniform-ish in `0..bound` (modulo bias is irrelevant here).
        fn below(&mut self, bound: usize) -> usize {
            let bound = u64::try_from(bound.max(1)).expect("usize fits u64");
            usize::try_from(self.next_u64() % bound).expect("below a usize bound")
        }

        fn byte(&mut self) -> u8 {
            self.next_u64().to_le_bytes()[0]
        }
    }

    /// Builds a stream that is sometimes valid, sometimes mutated, sometimes
    /// pure noise, and returns the bodies expected when it is valid.
    fn fuzz_stream(rng: &mut XorShift64, max: usize) -> (Vec<u8>, Option<Vec<Vec<u8>>>) {
        let mode = rng.below(3);
        if mode == 0 {
            let length = rng.below(200);
            return ((0..length).map(|_| rng.byte()).collect(), None);
        }
        let mut stream = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..rng.below(6) {
            let body: Vec<u8> = (0..rng.below(max + 1)).map(|_| rng.byte()).collect();
            stream.extend(frame(0, &body));
            bodies.push(body);
        }
        if mode == 1 {
            return (stream, Some(bodies));
        }
        for _ in 0..=rng.below(4) {
            if stream.is_empty() {
                break;
            }
            let index = rng.below(stream.len());
            stream[index] = rng.byte();
        }
        (stream, None)
    }

    fn fuzz_one(seed: u64) {
        let mut rng = XorShift64::new(seed);
        let max = rng.below(64);
        let (stream, expected) = fuzz_stream(&mut rng, max);
        let mut decoder = MessageDecoder::new(max);
        let mut decoded = Vec::new();
        let mut failed = false;
        let mut offset = 0;
        while offset < stream.len() && !failed {
            let chunk_len = 1 + rng.below(24);
            let end = (offset + chunk_len).min(stream.len());
            decoder.push(Bytes::copy_from_slice(&stream[offset..end]));
            offset = end;
            loop {
                match decoder.decode() {
                    Ok(Some(message)) => {
                        assert!(message.len() <= max, "message over max");
                        decoded.push(message.to_vec());
                    }
                    Ok(None) => break,
                    Err(error) => {
                        // Errors are terminal and stable.
                        assert_eq!(decoder.decode(), Err(error.clone()));
                        let _ = error.to_status();
                        failed = true;
                        break;
                    }
                }
            }
            assert!(decoder.largest_allocation <= max, "allocated past max");
        }
        let consumed: usize = decoded.iter().map(|body| body.len() + HEADER_LEN).sum();
        assert!(
            consumed + decoder.buffered_len() <= stream.len(),
            "bytes invented"
        );
        if !failed {
            let _ = decoder.finish();
        }
        if let Some(expected) = expected {
            assert!(!failed, "valid stream rejected");
            assert_eq!(decoded, expected);
            assert_eq!(decoder.finish(), Ok(()));
        }
    }

    #[test]
    fn random_chunks_never_panic_or_over_allocate() {
        // GRPC_CODEC_FUZZ_SEED=<n> replays a single failing seed.
        let seeds: Vec<u64> = match std::env::var("GRPC_CODEC_FUZZ_SEED") {
            Ok(text) => vec![text.parse().expect("seed must be a u64")],
            Err(_) => (0..2000u64).collect(),
        };
        for seed in seeds {
            let outcome = std::panic::catch_unwind(|| fuzz_one(seed));
            assert!(
                outcome.is_ok(),
                "codec fuzz failed; replay with GRPC_CODEC_FUZZ_SEED={seed}"
            );
        }
    }
}
