//! gRPC length-prefixed message framing (`grpc::codec::MessageDecoder`).
//!
//! Input: `[max selector][chunking plan][stream...]`.
//!
//! Properties, beyond "never panics, never allocates from an unchecked
//! length" (the bounded allocator):
//! - the same messages, the same first error and the same `finish` result
//!   whether the stream arrives whole, in the planned chunks or one byte at
//!   a time (DATA frames may split messages anywhere);
//! - every message is at most the maximum and is exactly the bytes that
//!   follow its header in the stream (re-encoding the messages gives back
//!   the stream's prefix they were decoded from);
//! - errors are terminal: decoding again gives the same error.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use metastore::grpc::codec::{CodecError, HEADER_LEN, MessageDecoder, encode_raw_message};
use metastore_fuzz::{BoundedAllocator, Input, chunk_lengths, split};

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

/// What one decoder made of one stream.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    messages: Vec<Bytes>,
    /// The first error `decode` returned, if any.
    error: Option<CodecError>,
    /// `finish()` once the stream ended, if no error came first.
    finish: Option<Result<(), CodecError>>,
    /// Bytes held at the end, if no error came first (after one, how much
    /// of the stream had been pushed depends on the chunking).
    buffered: Option<usize>,
}

fn run(max: usize, pieces: &[&[u8]]) -> Outcome {
    let mut decoder = MessageDecoder::new(max);
    let mut messages = Vec::new();
    for piece in pieces {
        decoder.push(Bytes::copy_from_slice(piece));
        loop {
            match decoder.decode() {
                Ok(Some(message)) => {
                    assert!(message.len() <= max, "a message over the maximum");
                    messages.push(message);
                }
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(decoder.decode(), Err(error.clone()), "errors are terminal");
                    let _ = error.to_status();
                    return Outcome {
                        messages,
                        error: Some(error),
                        finish: None,
                        buffered: None,
                    };
                }
            }
        }
    }
    Outcome {
        messages,
        error: None,
        finish: Some(decoder.finish()),
        buffered: Some(decoder.buffered_len()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    // Small maxima make "too large" reachable with small inputs; 255 stands
    // for the server's real limit (1.5 MiB + 512 KiB).
    let max = match input.byte() {
        255 => 2 * 1024 * 1024,
        small => usize::from(small),
    };
    let lengths = chunk_lengths(&mut input);
    let stream = input.rest();

    let whole = run(max, &[stream]);
    let chunked = run(max, &split(stream, &lengths));
    let bytewise = run(max, &split(stream, &[1]));
    assert_eq!(whole, chunked, "chunking changed the result");
    assert_eq!(whole, bytewise, "one-byte chunks changed the result");

    let mut reencoded = BytesMut::new();
    for message in &whole.messages {
        encode_raw_message(message, &mut reencoded).expect("messages are at most the maximum");
    }
    assert!(
        stream.starts_with(&reencoded),
        "the messages are not the stream's own bytes"
    );
    let consumed = reencoded.len();
    // Every byte after the messages is held, except the header of a
    // message whose body is awaited (parsed and dropped).
    if let Some(buffered) = whole.buffered {
        assert!(consumed + buffered <= stream.len(), "bytes invented");
        let unaccounted = stream.len() - consumed - buffered;
        assert!(
            unaccounted == 0 || unaccounted == HEADER_LEN,
            "{unaccounted} bytes lost"
        );
    }
    if let Some(Ok(())) = whole.finish {
        assert_eq!(consumed, stream.len(), "finish accepted a partial message");
    }
});
