//! The gRPC layer end to end over loopback: a real h2 client against
//! `serve_connection` with a test service, on a monoio runtime.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request};

use super::codec::encode_message;
use super::connection::serve_connection;
use super::deadlines::StageTimeouts;
use super::inbound::InboundSignals;
use super::rate_limit::RateLimiter;
use super::server::{GrpcService, MethodPath, ServerLimits, Serving};
use super::status::{Code, Status};
use super::{RequestStream, ResponseSink};
use crate::metrics::CoreMetrics;

/// A tiny message for the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Note {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    count: u32,
}

struct EchoService;

impl GrpcService for EchoService {
    async fn call(
        &self,
        method: &MethodPath,
        requests: &mut RequestStream,
        responses: &mut ResponseSink,
    ) -> Result<(), Status> {
        match method.method.as_str() {
            "Unary" => {
                let note: Note = requests.unary().await?;
                responses.send(&note).await
            }
            "ServerStream" => {
                let note: Note = requests.unary().await?;
                for index in 0..note.count {
                    responses
                        .send(&Note {
                            text: format!("{}-{index}", note.text),
                            count: index,
                        })
                        .await?;
                }
                Ok(())
            }
            "Bidi" => {
                while let Some(note) = requests.next::<Note>().await? {
                    responses.send(&note).await?;
                }
                Ok(())
            }
            "Sleep" => {
                monoio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            }
            other => Err(Status::unimplemented(format!("unknown method {other}"))),
        }
    }
}

/// What the client saw for one call.
#[derive(Debug)]
struct CallResult {
    http_status: u16,
    messages: Vec<Note>,
    status: Option<Status>,
}

fn frame(note: &Note) -> Bytes {
    let mut buffer = BytesMut::new();
    encode_message(note, &mut buffer).expect("encode");
    buffer.freeze()
}

async fn call(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    headers: &[(&str, &str)],
    body_chunks: Vec<Bytes>,
) -> CallResult {
    let mut builder = Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(()).expect("request");
    let mut ready = client.clone().ready().await.expect("ready");
    let (response, mut body) = ready.send_request(request, false).expect("send");
    let count = body_chunks.len();
    for (index, chunk) in body_chunks.into_iter().enumerate() {
        body.send_data(chunk, index + 1 == count).expect("data");
    }
    if count == 0 {
        body.send_data(Bytes::new(), true).expect("end");
    }
    let response = response.await.expect("response");
    let http_status = response.status().as_u16();
    let trailers_only = Status::from_header_map(response.headers());
    let mut body = response.into_body();
    let mut raw = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        raw.extend_from_slice(&chunk);
    }
    let trailers: Option<HeaderMap> = body.trailers().await.expect("trailers");
    let status = trailers
        .as_ref()
        .and_then(Status::from_header_map)
        .or(trailers_only);
    let mut messages = Vec::new();
    let mut decoder = super::codec::MessageDecoder::new(1 << 20);
    decoder.push(raw.freeze());
    while let Some(message) = decoder.decode().expect("well-framed response") {
        messages.push(<Note as prost::Message>::decode(message).expect("note"));
    }
    CallResult {
        http_status,
        messages,
        status,
    }
}

const GRPC: (&str, &str) = ("content-type", "application/grpc");

#[test]
fn unary_streaming_and_error_paths_over_h2() {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let mut limits = ServerLimits::for_max_request_bytes(1024);
        limits.max_receive_message_len = 1024;
        let serving = Rc::new(Serving {
            limits,
            metrics: Rc::new(CoreMetrics::new(true)),
            rate_limiter: Arc::new(RateLimiter::default()),
            slow_request_threshold: Duration::from_millis(300),
            keepalive_interval: Duration::from_secs(2 * 60 * 60),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_idle: None,
            stages: StageTimeouts {
                handshake: Duration::from_secs(3600),
                first_request: Duration::from_secs(3600),
            },
        });
        monoio::spawn(async move {
            let (stream, peer) = listener.accept().await.expect("accept");
            let io = stream
                .try_into_poll_io()
                .map_err(|(error, _)| error)
                .expect("poll io");
            let signals = Rc::new(InboundSignals::default());
            let _ = serve_connection(io, peer, Rc::new(EchoService), serving, signals).await;
        });
        let stream = monoio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let io = stream
            .try_into_poll_io()
            .map_err(|(error, _)| error)
            .expect("poll io");
        let (mut client, connection) = h2::client::handshake(io).await.expect("handshake");
        monoio::spawn(async move {
            let _ = connection.await;
        });

        let hello = Note {
            text: "hello".into(),
            count: 3,
        };
        let result = call(
            &mut client,
            "/test.Echo/Unary",
            &[GRPC],
            vec![frame(&hello)],
        )
        .await;
        assert_eq!(
            (result.http_status, result.messages.clone()),
            (200, vec![hello.clone()])
        );
        assert_eq!(result.status.map(|status| status.code()), Some(Code::Ok));

        // One message split across DATA frames at every byte.
        let framed = frame(&hello);
        let pieces: Vec<Bytes> = (0..framed.len())
            .map(|index| framed.slice(index..index + 1))
            .collect();
        let result = call(&mut client, "/test.Echo/Unary", &[GRPC], pieces).await;
        assert_eq!(result.messages, vec![hello.clone()]);

        let result = call(
            &mut client,
            "/test.Echo/ServerStream",
            &[GRPC],
            vec![frame(&hello)],
        )
        .await;
        assert_eq!(
            result
                .messages
                .iter()
                .map(|note| note.text.as_str())
                .collect::<Vec<_>>(),
            vec!["hello-0", "hello-1", "hello-2"]
        );

        // Bidi: several messages in one DATA frame, and a zero-length message.
        let mut both = BytesMut::new();
        both.extend_from_slice(&frame(&Note {
            text: "a".into(),
            count: 1,
        }));
        both.extend_from_slice(&frame(&Note::default()));
        both.extend_from_slice(&frame(&Note {
            text: "b".into(),
            count: 2,
        }));
        let result = call(&mut client, "/test.Echo/Bidi", &[GRPC], vec![both.freeze()]).await;
        assert_eq!(result.messages.len(), 3);
        assert_eq!(result.messages[1], Note::default());

        let result = call(&mut client, "/test.Echo/Nope", &[GRPC], vec![frame(&hello)]).await;
        assert_eq!(
            result.status.map(|status| status.code()),
            Some(Code::Unimplemented)
        );

        let result = call(
            &mut client,
            "/test.Echo/Unary",
            &[("content-type", "application/json")],
            vec![frame(&hello)],
        )
        .await;
        assert_eq!(result.http_status, 415);

        let result = call(&mut client, "/test.Echo/Unary", &[], vec![frame(&hello)]).await;
        assert_eq!(
            result.http_status, 415,
            "a missing content-type is not gRPC either"
        );

        let big = Note {
            text: "x".repeat(2000),
            count: 0,
        };
        let result = call(&mut client, "/test.Echo/Unary", &[GRPC], vec![frame(&big)]).await;
        let status = result.status.expect("status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("larger than max"), "{status}");

        let mut compressed = BytesMut::from(&frame(&hello)[..]);
        compressed[0] = 1;
        let result = call(
            &mut client,
            "/test.Echo/Unary",
            &[GRPC, ("grpc-encoding", "gzip")],
            vec![compressed.freeze()],
        )
        .await;
        assert_eq!(
            result.status.map(|status| status.code()),
            Some(Code::Unimplemented)
        );

        let mut garbage = BytesMut::new();
        garbage.put_u8(7);
        garbage.put_u32(3);
        garbage.put_slice(b"abc");
        let result = call(
            &mut client,
            "/test.Echo/Unary",
            &[GRPC],
            vec![garbage.freeze()],
        )
        .await;
        assert_eq!(
            result.status.map(|status| status.code()),
            Some(Code::Internal)
        );

        let result = call(
            &mut client,
            "/test.Echo/Sleep",
            &[GRPC, ("grpc-timeout", "50m")],
            vec![frame(&hello)],
        )
        .await;
        assert_eq!(
            result.status.map(|status| status.code()),
            Some(Code::DeadlineExceeded)
        );

        let result = call(
            &mut client,
            "/test.Echo/Unary",
            &[GRPC, ("grpc-timeout", "soon")],
            vec![frame(&hello)],
        )
        .await;
        assert_eq!(
            result.status.map(|status| status.code()),
            Some(Code::Internal)
        );

        // Truncated: the stream ends inside a message (grpc-go: UNKNOWN).
        let framed = frame(&hello);
        let result = call(
            &mut client,
            "/test.Echo/Unary",
            &[GRPC],
            vec![framed.slice(..framed.len() - 1)],
        )
        .await;
        assert_eq!(
            result.status.map(|status| status.code()),
            Some(Code::Unknown)
        );

        let mut compressed = BytesMut::from(&frame(&hello)[..]);
        compressed[0] = 1;
        let result = call(
            &mut client,
            "/test.Echo/Unary",
            &[GRPC],
            vec![compressed.freeze()],
        )
        .await;
        assert_eq!(
            result.status.map(|status| status.code()),
            Some(Code::Internal),
            "compressed flag without an encoding"
        );
    });
}
