//! A socket wrapper that lets h2 send the frames of one turn in one write.
//!
//! h2's `FramedWrite` copies a DATA payload into its 16 KiB write buffer
//! only when the payload is under a threshold: 256 bytes when the socket
//! says it writes vectored, 1 KiB when it does not. A larger payload is
//! kept aside and written, chained behind the buffer, before h2 encodes
//! the next frame. At 256 bytes that made every put request and every
//! range response with one 256-byte value cost a `writev` of its own
//! (loadgen: one per put; server: serializable ranges of one such key at
//! 93k/s against 146k/s once they were batched).
//!
//! [`WriteCoalescing`] reports no vectored writes, so h2 copies payloads up
//! to 1 KiB, and it holds what h2 writes (up to [`CORK_BYTES`]) until h2
//! flushes, which h2 does once its buffer and any chained payload are out.
//! A payload too large to hold leaves in one vectored write together with
//! what is held, so large frames cost one system call, not two.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held before a write reaches the socket: h2's own write
/// buffer size, so a full buffer is held whole and what is held per
/// connection stays bounded.
pub const CORK_BYTES: usize = 16 * 1024;

/// `inner` with writes held until flushed (see the module docs). Reads
/// pass straight through.
pub struct WriteCoalescing<T> {
    inner: T,
    /// Bytes accepted from the writer and not yet written to `inner`, in
    /// order; always written before anything accepted later.
    held: BytesMut,
}

impl<T> WriteCoalescing<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            held: BytesMut::new(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> WriteCoalescing<T> {
    /// Writes everything held to `inner`.
    fn poll_write_held(&mut self, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(context, &self.held))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteCoalescing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(context, buffer)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteCoalescing<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() + buffer.len() <= CORK_BYTES {
            this.held.extend_from_slice(buffer);
            return Poll::Ready(Ok(buffer.len()));
        }
        // Too much to hold: what is held goes first, in the same system
        // call as `buffer` when the socket writes vectored.
        while !this.held.is_empty() {
            let slices = [IoSlice::new(&this.held), IoSlice::new(buffer)];
            let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(context, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_held = written.min(this.held.len());
            this.held.advance(from_held);
            if written > from_held {
                return Poll::Ready(Ok(written - from_held));
            }
        }
        Pin::new(&mut this.inner).poll_write(context, buffer)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(context))?;
        Pin::new(&mut this.inner).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(context))?;
        Pin::new(&mut this.inner).poll_shutdown(context)
    }

    /// False on purpose: this is what makes h2 copy payloads up to 1 KiB
    /// into its buffer instead of writing each such frame alone.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    /// A socket that records each write call and accepts at most `limit`
    /// bytes per call, or none (`Pending`) while `blocked`.
    #[derive(Default)]
    struct RecordingSocket {
        writes: Vec<Vec<u8>>,
        limit: Option<usize>,
        blocked: bool,
        flushes: usize,
    }

    impl RecordingSocket {
        fn accept(&mut self, slices: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            if self.blocked {
                return Poll::Pending;
            }
            let mut call = Vec::new();
            for slice in slices {
                call.extend_from_slice(slice);
            }
            call.truncate(self.limit.unwrap_or(usize::MAX));
            let written = call.len();
            self.writes.push(call);
            Poll::Ready(Ok(written))
        }

        fn bytes(&self) -> Vec<u8> {
            self.writes.concat()
        }
    }

    impl AsyncWrite for RecordingSocket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buffer: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().accept(&[IoSlice::new(buffer)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().accept(slices)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn context() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn write(socket: &mut WriteCoalescing<RecordingSocket>, bytes: &[u8]) -> Poll<usize> {
        Pin::new(socket)
            .poll_write(&mut context(), bytes)
            .map(|result| result.unwrap())
    }

    fn flush(socket: &mut WriteCoalescing<RecordingSocket>) -> Poll<()> {
        Pin::new(socket)
            .poll_flush(&mut context())
            .map(|result| result.unwrap())
    }

    #[test]
    fn small_writes_leave_in_one_call_at_flush() {
        let mut socket = WriteCoalescing::new(RecordingSocket::default());
        for frame in [&b"abc"[..], b"de", b"fgh"] {
            assert_eq!(write(&mut socket, frame), Poll::Ready(frame.len()));
        }
        assert!(socket.get_ref().writes.is_empty());
        assert_eq!(flush(&mut socket), Poll::Ready(()));
        assert_eq!(socket.get_ref().writes, vec![b"abcdefgh".to_vec()]);
        assert_eq!(socket.get_ref().flushes, 1);
    }

    #[test]
    fn a_large_write_leaves_with_what_is_held_in_one_call() {
        let mut socket = WriteCoalescing::new(RecordingSocket::default());
        let large = vec![7u8; CORK_BYTES];
        assert_eq!(write(&mut socket, b"head"), Poll::Ready(4));
        assert_eq!(write(&mut socket, &large), Poll::Ready(large.len()));
        assert_eq!(socket.get_ref().writes.len(), 1);
        assert_eq!(flush(&mut socket), Poll::Ready(()));
        assert_eq!(socket.get_ref().writes.len(), 1);
        assert_eq!(socket.get_ref().bytes(), [&b"head"[..], &large].concat());
    }

    #[test]
    fn short_writes_keep_the_byte_order() {
        let socket = RecordingSocket {
            limit: Some(3),
            ..RecordingSocket::default()
        };
        let mut socket = WriteCoalescing::new(socket);
        let large: Vec<u8> = (0..CORK_BYTES as u32 + 10).map(|n| n as u8).collect();
        assert_eq!(write(&mut socket, b"held"), Poll::Ready(4));
        let mut sent = 0;
        while sent < large.len() {
            match write(&mut socket, &large[sent..]) {
                Poll::Ready(written) => sent += written,
                Poll::Pending => unreachable!("the socket never blocks here"),
            }
        }
        assert_eq!(flush(&mut socket), Poll::Ready(()));
        assert_eq!(socket.get_ref().bytes(), [&b"held"[..], &large].concat());
    }

    #[test]
    fn a_blocked_socket_keeps_everything_until_it_drains() {
        let mut socket = WriteCoalescing::new(RecordingSocket::default());
        assert_eq!(write(&mut socket, b"first"), Poll::Ready(5));
        socket.inner.blocked = true;
        assert_eq!(flush(&mut socket), Poll::Pending);
        let large = vec![1u8; CORK_BYTES];
        assert_eq!(write(&mut socket, &large), Poll::Pending);
        socket.inner.blocked = false;
        assert_eq!(write(&mut socket, &large), Poll::Ready(large.len()));
        assert_eq!(flush(&mut socket), Poll::Ready(()));
        assert_eq!(socket.get_ref().bytes(), [&b"first"[..], &large].concat());
    }

    #[test]
    fn shutdown_writes_what_is_held_first() {
        let mut socket = WriteCoalescing::new(RecordingSocket::default());
        assert_eq!(write(&mut socket, b"last words"), Poll::Ready(10));
        let shut = Pin::new(&mut socket).poll_shutdown(&mut context());
        assert!(matches!(shut, Poll::Ready(Ok(()))));
        assert_eq!(socket.get_ref().bytes(), b"last words");
    }

    #[test]
    fn h2_is_told_the_socket_does_not_write_vectored() {
        let socket = WriteCoalescing::new(RecordingSocket::default());
        assert!(!socket.is_write_vectored());
    }
}
