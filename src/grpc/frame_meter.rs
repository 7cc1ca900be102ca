//! Keeping a connection's [`SendBudget`] from the frames that pass its
//! socket: DATA payload leaving credits its stream; RST_STREAM in either
//! direction drops what the stream still had queued.
//!
//! [`FrameScanner`] is pure: it follows the frame boundaries of one
//! direction's byte stream (frame headers only; payloads are skipped).
//! [`MeteredIo`] runs one per direction over the bytes h2 actually reads
//! and writes, so the account follows h2's own view of the connection.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::send_budget::SendBudget;

/// RFC 9113 §4.1: "All frames begin with a fixed 9-octet header".
const FRAME_HEADER_LEN: usize = 9;
/// RFC 9113 §3.4: the client connection preface starts with the 24 octets
/// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", followed by a SETTINGS frame.
const CLIENT_PREFACE_LEN: usize = 24;
/// RFC 9113 §6.1.
const DATA: u8 = 0x0;
/// RFC 9113 §6.4.
const RST_STREAM: u8 = 0x3;

/// What a scanner saw in the bytes given to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A whole frame header: the frame's type and stream.
    Frame { kind: u8, stream: u32 },
    /// `bytes` more of a frame's payload went past.
    Payload { kind: u8, stream: u32, bytes: usize },
}

/// Follows frame boundaries in one direction of an HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    /// Octets of the client preface still to skip (incoming only).
    preface_left: usize,
    header: [u8; FRAME_HEADER_LEN],
    /// Octets of `header` received so far.
    header_len: usize,
    /// The current frame's type, stream and payload octets still to come.
    kind: u8,
    stream: u32,
    payload_left: usize,
}

impl FrameScanner {
    /// For what a server writes: frames from the first byte.
    pub fn outgoing() -> Self {
        Self::with_preface(0)
    }

    /// For what a server reads: the client preface, then frames.
    pub fn incoming() -> Self {
        Self::with_preface(CLIENT_PREFACE_LEN)
    }

    fn with_preface(preface_left: usize) -> Self {
        Self {
            preface_left,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            kind: 0,
            stream: 0,
            payload_left: 0,
        }
    }

    /// Follows `bytes`, the next bytes of the direction, reporting each
    /// frame header and payload piece to `seen`.
    pub fn scan(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Seen)) {
        let skipped = self.preface_left.min(bytes.len());
        self.preface_left -= skipped;
        bytes = &bytes[skipped..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let taken = self.payload_left.min(bytes.len());
                self.payload_left -= taken;
                bytes = &bytes[taken..];
                seen(Seen::Payload {
                    kind: self.kind,
                    stream: self.stream,
                    bytes: taken,
                });
                continue;
            }
            let taken = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + taken].copy_from_slice(&bytes[..taken]);
            self.header_len += taken;
            bytes = &bytes[taken..];
            if self.header_len < FRAME_HEADER_LEN {
                return;
            }
            self.header_len = 0;
            let header = &self.header;
            // Length (24), Type (8), Flags (8), Reserved (1), Stream
            // Identifier (31).
            self.payload_left =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            self.kind = header[3];
            self.stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            seen(Seen::Frame {
                kind: self.kind,
                stream: self.stream,
            });
        }
    }
}

/// A connection's socket as h2 uses it, keeping the connection's
/// [`SendBudget`] (see the module docs). Bytes pass unchanged.
pub struct MeteredIo<T> {
    inner: T,
    budget: Rc<SendBudget>,
    incoming: FrameScanner,
    outgoing: FrameScanner,
}

impl<T> MeteredIo<T> {
    pub fn new(inner: T, budget: Rc<SendBudget>) -> Self {
        Self {
            inner,
            budget,
            incoming: FrameScanner::incoming(),
            outgoing: FrameScanner::outgoing(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MeteredIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buffer.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(context, buffer);
        if let Poll::Ready(Ok(())) = polled {
            let budget = &this.budget;
            this.incoming
                .scan(&buffer.filled()[before..], |seen| match seen {
                    Seen::Frame {
                        kind: RST_STREAM,
                        stream,
                    } => budget.reset_received(stream),
                    Seen::Frame { .. } | Seen::Payload { .. } => {}
                });
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MeteredIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(context, buffer);
        if let Poll::Ready(Ok(written)) = polled {
            let budget = &this.budget;
            this.outgoing.scan(&buffer[..written], |seen| match seen {
                Seen::Payload {
                    kind: DATA,
                    stream,
                    bytes,
                } => budget.credit(stream, bytes),
                Seen::Frame {
                    kind: RST_STREAM,
                    stream,
                } => budget.reset_sent(stream),
                Seen::Frame { .. } | Seen::Payload { .. } => {}
            });
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }

    // `poll_write_vectored` and `is_write_vectored` keep their defaults
    // (one slice at a time, "not vectored"), which is what
    // `WriteCoalescing` below us tells h2 anyway, so every byte h2 writes
    // passes `poll_write` and the scanner.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len();
        let mut bytes = vec![
            (length >> 16) as u8,
            (length >> 8) as u8,
            length as u8,
            kind,
            0,
        ];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn data_per_stream(seen: &[Seen]) -> Vec<(u32, usize)> {
        let mut totals: Vec<(u32, usize)> = Vec::new();
        for event in seen {
            if let Seen::Payload {
                kind: DATA,
                stream,
                bytes,
            } = *event
            {
                match totals.iter_mut().find(|(id, _)| *id == stream) {
                    Some((_, total)) => *total += bytes,
                    None => totals.push((stream, bytes)),
                }
            }
        }
        totals
    }

    #[test]
    fn frames_are_followed_however_the_bytes_are_split() {
        let mut wire = Vec::new();
        wire.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        wire.extend(frame(0x1, 1, &[7; 20])); // HEADERS
        wire.extend(frame(DATA, 1, &[1; 300]));
        wire.extend(frame(DATA, 3, &[2; 17]));
        wire.extend(frame(RST_STREAM, 3, &[0, 0, 0, 8]));
        wire.extend(frame(DATA, 1, &[]));
        let mut whole = Vec::new();
        FrameScanner::outgoing().scan(&wire, |seen| whole.push(seen));
        assert_eq!(data_per_stream(&whole), vec![(1, 300), (3, 17)]);
        assert!(whole.contains(&Seen::Frame {
            kind: RST_STREAM,
            stream: 3
        }));
        // The same bytes in every split into pieces of 1..=10 bytes.
        for piece in 1..=10 {
            let mut scanner = FrameScanner::outgoing();
            let mut split = Vec::new();
            for chunk in wire.chunks(piece) {
                scanner.scan(chunk, |seen| split.push(seen));
            }
            assert_eq!(data_per_stream(&split), vec![(1, 300), (3, 17)]);
            let frames = |all: &[Seen]| -> Vec<Seen> {
                all.iter()
                    .copied()
                    .filter(|seen| matches!(seen, Seen::Frame { .. }))
                    .collect()
            };
            assert_eq!(frames(&split), frames(&whole), "pieces of {piece}");
        }
    }

    #[test]
    fn the_incoming_side_skips_the_client_preface() {
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(RST_STREAM, 0x8000_0005, &[0, 0, 0, 8]));
        let mut seen = Vec::new();
        FrameScanner::incoming().scan(&wire, |event| seen.push(event));
        // The reserved bit is not part of the stream id.
        assert_eq!(
            seen.first(),
            Some(&Seen::Frame {
                kind: RST_STREAM,
                stream: 5
            })
        );
    }
}
