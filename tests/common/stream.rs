//! A minimal bidirectional-streaming gRPC client on the same raw h2
//! connection as [`GrpcClient`] (Watch, LeaseKeepAlive).
//!
//! [`GrpcStream::recv`] waits at most a given time for the next message and
//! says so when none came ([`StreamItem::Quiet`]), so tests can assert that
//! nothing arrives. Every wait is bounded: nothing here can hang a test.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use super::{GrpcClient, GrpcResult, TRANSPORT_ERROR, grpc_status, transport};

/// One thing read from a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem<T> {
    /// A decoded message.
    Msg(T),
    /// Nothing arrived within the wait.
    Quiet,
    /// The server ended the stream with this (grpc-status, grpc-message);
    /// code [`TRANSPORT_ERROR`] for an h2-level failure.
    End(i32, String),
}

enum Recv {
    /// Response headers not received yet (grpc-go sends them with the first
    /// message, so a quiet stream stays here).
    Headers(h2::client::ResponseFuture),
    Body(h2::RecvStream),
    /// The stream is over; every further `recv` returns this again.
    Ended(i32, String),
}

/// One open bidi-stream call.
pub struct GrpcStream {
    path: String,
    send: h2::SendStream<Bytes>,
    recv: Recv,
    /// Received bytes not yet forming a complete message.
    buf: BytesMut,
    /// Status from trailers-only response headers, used when the body ends.
    header_status: Option<(i32, String)>,
}

impl GrpcClient {
    /// Opens a streaming call on `path` (e.g. "/etcdserverpb.Watch/Watch").
    /// Nothing is awaited from the server yet.
    pub async fn open_stream(&self, path: &str) -> GrpcResult<GrpcStream> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{}{}", self.addr, path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "metastore-tests/0.1")
            .body(())
            .unwrap();
        let mut send = tokio::time::timeout(super::CALL_TIMEOUT, self.send.clone().ready())
            .await
            .map_err(transport("h2 ready"))?
            .map_err(transport("h2 ready"))?;
        let (response, stream) = send
            .send_request(request, false)
            .map_err(transport("send request"))?;
        Ok(GrpcStream {
            path: path.to_string(),
            send: stream,
            recv: Recv::Headers(response),
            buf: BytesMut::new(),
            header_status: None,
        })
    }
}

impl GrpcStream {
    /// Sends one message (framed). An error means the stream is already
    /// reset/closed; the reason shows up in the next [`Self::recv`].
    pub fn send<M: prost::Message>(&mut self, msg: &M) -> GrpcResult<()> {
        self.send
            .send_data(GrpcClient::frame(&msg.encode_to_vec()), false)
            .map_err(transport("send message"))
    }

    /// Half-closes the request side (the client's "CloseSend").
    pub fn close_send(&mut self) -> GrpcResult<()> {
        self.send
            .send_data(Bytes::new(), true)
            .map_err(transport("close send"))
    }

    /// Next message, decoded as `T`, waiting at most `wait`.
    pub async fn recv<T: prost::Message + Default>(&mut self, wait: Duration) -> StreamItem<T> {
        match tokio::time::timeout(wait, self.next_raw()).await {
            Err(_) => StreamItem::Quiet,
            Ok(Ok(bytes)) => match T::decode(bytes) {
                Ok(m) => StreamItem::Msg(m),
                Err(e) => self.end(TRANSPORT_ERROR, format!("decode {}: {e}", self.path)),
            },
            Ok(Err((code, msg))) => self.end(code, msg),
        }
    }

    fn end<T>(&mut self, code: i32, msg: String) -> StreamItem<T> {
        self.recv = Recv::Ended(code, msg.clone());
        StreamItem::End(code, msg)
    }

    /// One complete message payload, or Err(final status) when the stream
    /// ended (grpc-status 0 included). Cancel-safe: partial data stays in
    /// `buf` and h2 keeps undelivered frames, so a timeout loses nothing.
    async fn next_raw(&mut self) -> GrpcResult<Bytes> {
        loop {
            if let Some(msg) = self.take_message()? {
                return Ok(msg);
            }
            match &mut self.recv {
                Recv::Ended(code, msg) => return Err((*code, msg.clone())),
                Recv::Headers(fut) => {
                    let resp = fut.await.map_err(transport("response"))?;
                    let (parts, body) = resp.into_parts();
                    if parts.status != http::StatusCode::OK {
                        return Err((TRANSPORT_ERROR, format!("HTTP status {}", parts.status)));
                    }
                    self.header_status = grpc_status(&parts.headers)?;
                    self.recv = Recv::Body(body);
                }
                Recv::Body(body) => match body.data().await {
                    Some(chunk) => {
                        let chunk = chunk.map_err(transport("receive"))?;
                        let _ = body.flow_control().release_capacity(chunk.len());
                        self.buf.extend_from_slice(&chunk);
                    }
                    None => {
                        let trailers = body.trailers().await.map_err(transport("trailers"))?;
                        let status = match trailers.as_ref().map(grpc_status).transpose()? {
                            Some(Some(st)) => st,
                            _ => self.header_status.clone().unwrap_or((
                                TRANSPORT_ERROR,
                                "stream ended without grpc-status".into(),
                            )),
                        };
                        if !self.buf.is_empty() {
                            return Err((
                                TRANSPORT_ERROR,
                                format!(
                                    "stream ended ({status:?}) inside a message ({} bytes left)",
                                    self.buf.len()
                                ),
                            ));
                        }
                        return Err(status);
                    }
                },
            }
        }
    }

    /// Splits one complete length-prefixed message off `buf`, if there is one.
    fn take_message(&mut self) -> GrpcResult<Option<Bytes>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flag = self.buf[0];
        if flag != 0 {
            return Err((TRANSPORT_ERROR, format!("compressed flag {flag}")));
        }
        let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}
