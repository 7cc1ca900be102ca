//! A raw HTTP/2 client for abuse tests: hand-built frames over a plain TCP
//! stream, so a test can send what no well-behaved client library would
//! (HPACK bombs, stalled prefaces), and read back exactly what the server
//! answered (SETTINGS, GOAWAY codes, 431 responses, when it closed).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// RFC 9113 §6.5.2.
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// RFC 9113 §7 error codes.
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const SETTINGS_TIMEOUT: u32 = 0x4;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as received.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    pub payload: Vec<u8>,
}

/// How a wait for the server ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection closed (EOF or reset) without a GOAWAY.
    Closed,
    /// Nothing decisive within the wait.
    StillOpen,
}

pub fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The preface and an empty SETTINGS frame: a client's opening.
pub fn opening() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes
}

/// A gRPC request's header block for `path`, plus `extra` fields.
pub fn request_block(
    encoder: &mut loona_hpack::Encoder<'static>,
    path: &str,
    extra: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    fields.extend_from_slice(extra);
    encoder.encode(fields)
}

/// A gRPC message: the 5-byte prefix and the body.
pub fn grpc_message(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub struct RawConnection {
    stream: tokio::net::TcpStream,
    received: BytesMut,
    /// Decodes the server's header blocks.
    decoder: loona_hpack::Decoder<'static>,
}

impl RawConnection {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawConnection> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawConnection {
            stream,
            received: BytesMut::new(),
            decoder: loona_hpack::Decoder::new(),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame, `Ok(None)` at EOF, `Err` on a reset or if nothing
    /// came within `wait`.
    pub async fn next_frame(&mut self, wait: Duration) -> std::io::Result<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.received.len() >= 9 {
                let length = (usize::from(self.received[0]) << 16)
                    | (usize::from(self.received[1]) << 8)
                    | usize::from(self.received[2]);
                if self.received.len() >= 9 + length {
                    let header = self.received.split_to(9);
                    let payload = self.received.split_to(length).to_vec();
                    return Ok(Some(Frame {
                        kind: header[3],
                        flags: header[4],
                        stream_id: u32::from_be_bytes([header[5], header[6], header[7], header[8]])
                            & 0x7fff_ffff,
                        payload,
                    }));
                }
            }
            let mut buffer = [0u8; 16 * 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut buffer))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no frame"))??;
            if read == 0 {
                return Ok(None);
            }
            self.received.extend_from_slice(&buffer[..read]);
        }
    }

    /// Reads frames until a GOAWAY, the end of the connection, or `wait`;
    /// calls `each` for every other frame.
    pub async fn wait_for_ending(
        &mut self,
        wait: Duration,
        mut each: impl FnMut(&Frame),
    ) -> Ending {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(Some(frame)) if frame.kind == GOAWAY => {
                    let mut payload = &frame.payload[..];
                    payload.advance(4);
                    return Ending::GoAway(payload.get_u32());
                }
                Ok(Some(frame)) => each(&frame),
                Ok(None) => return Ending::Closed,
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                    return Ending::StillOpen;
                }
                Err(_) => return Ending::Closed,
            }
        }
    }

    /// Whether the server closes the connection within `wait` (reading
    /// and dropping anything it sends meanwhile).
    pub async fn closes_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }

    /// Decodes a HEADERS frame's block (no padding or priority: the server
    /// sends neither).
    pub fn decode_headers(&mut self, frame: &Frame) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.decoder.decode(&frame.payload).expect("server's HPACK")
    }
}

/// The settings in a SETTINGS frame's payload (RFC 9113 §6.5.1).
pub fn settings(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|setting| {
            (
                u16::from_be_bytes([setting[0], setting[1]]),
                u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]),
            )
        })
        .collect()
}
