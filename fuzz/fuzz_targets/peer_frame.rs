//! The peer protocol's pure decoders (`peer::frame`): the handshake, its
//! answer byte and the frames of batched Raft messages, forwarded calls
//! and their answers (`peer::forward`) another member sends.
//!
//! Input: `[mode][chunking plan][stream...]`. Mode bit 0 "forges" the
//! checksums first (the handshake's over its first 32 bytes, each frame's
//! over its body, walking the stream by the length fields as given), so
//! mutations get past the crc32c checks to the decoders behind them.
//!
//! Properties, beyond "never panics, never allocates from an unchecked
//! length" (the bounded allocator):
//! - a decoded handshake re-encodes to exactly the bytes it came from;
//!   `Ok(None)` only while the bytes are a prefix of a valid magic;
//! - the same batches and the same first error whether the frames arrive
//!   whole, in the planned chunks or one byte at a time;
//! - every decoded batch encodes to a frame that decodes to it again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metastore::peer::frame::{Batch, Hello, HelloAnswer, MAGIC, PeerFrameError};
use metastore_fuzz::{BoundedAllocator, Input, chunk_lengths, split};

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

fn forge_checksums(stream: &mut [u8]) {
    if stream.len() >= Hello::LEN {
        let checksum = crc32c::crc32c(&stream[..32]);
        stream[32..36].copy_from_slice(&checksum.to_be_bytes());
    }
    // The frames after a handshake-sized prefix, as a receiver sees them.
    let mut at = Hello::LEN.min(stream.len());
    while stream.len() >= at + 8 {
        let length = u32::from_be_bytes(stream[at..at + 4].try_into().expect("4 bytes")) as usize;
        let end = (at + 8).saturating_add(length).min(stream.len());
        let checksum = crc32c::crc32c(&stream[at + 8..end]);
        stream[at + 4..at + 8].copy_from_slice(&checksum.to_be_bytes());
        at = end;
    }
}

/// What a receiver made of a stream of frames.
#[derive(Debug, PartialEq)]
struct Outcome {
    batches: Vec<Batch>,
    error: Option<PeerFrameError>,
}

fn receive(pieces: &[&[u8]]) -> Outcome {
    let mut buffered = Vec::new();
    let mut batches = Vec::new();
    for piece in pieces {
        buffered.extend_from_slice(piece);
        loop {
            match Batch::decode(&buffered) {
                Ok(Some((batch, used))) => {
                    assert!(used >= 8 && used <= buffered.len());
                    buffered.drain(..used);
                    batches.push(batch);
                }
                Ok(None) => break,
                Err(error) => {
                    return Outcome {
                        batches,
                        error: Some(error),
                    };
                }
            }
        }
    }
    Outcome {
        batches,
        error: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let lengths = chunk_lengths(&mut input);
    let mut stream = input.rest().to_vec();
    if mode & 1 == 1 {
        forge_checksums(&mut stream);
    }

    match Hello::decode(&stream) {
        Ok(Some(hello)) => {
            let mut encoded = Vec::new();
            hello.encode(&mut encoded);
            assert_eq!(encoded, stream[..Hello::LEN], "a handshake re-encodes");
            let _ = HelloAnswer::judge(&hello, 1, 1, &[1, 2, 3]);
        }
        Ok(None) => {
            assert!(stream.len() < Hello::LEN);
            let seen = stream.len().min(6);
            assert_eq!(stream[..seen], MAGIC[..seen], "waited on a bad magic");
        }
        Err(_) => {}
    }
    if let Some(byte) = stream.first() {
        let _ = HelloAnswer::decode(*byte);
    }

    let frames = &stream[Hello::LEN.min(stream.len())..];
    let whole = receive(&[frames]);
    let chunked = receive(&split(frames, &lengths));
    let bytewise = receive(&split(frames, &[1]));
    assert_eq!(whole, chunked, "chunking changed the result");
    assert_eq!(whole, bytewise, "one-byte chunks changed the result");
    for batch in &whole.batches {
        let mut encoded = Vec::new();
        batch.encode(&mut encoded);
        let (again, used) = Batch::decode(&encoded)
            .expect("our own frame decodes")
            .expect("our own frame is whole");
        assert_eq!(used, encoded.len());
        assert_eq!(&again, batch, "a batch round-trips");
    }
});
