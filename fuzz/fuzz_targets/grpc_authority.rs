//! The HTTP/2 header-block rewriting pass (`grpc::authority`), a pure
//! byte-stream transformer from the client's bytes to what h2 reads.
//!
//! Input: `[block limit selector][chunking plan][bytes after the preface]`
//! (the target prepends the client preface, which the rewriter passes on
//! unread; spending mutations on it would find nothing).
//!
//! Properties:
//! - the same output and the same outcome whether the bytes arrive whole,
//!   in the planned chunks or one byte at a time;
//! - the output never grows by more than re-encoding can explain;
//! - when the stream is accepted, the output carries the same frames and
//!   the same header lists, decoded with HPACK from a fresh table, as the
//!   input, in the same order, except that a URL-shaped `:authority` is
//!   now bare (no `/`, a part of the original) and header blocks may be
//!   re-framed (padding dropped, split in frames of at most 16 KiB).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use metastore::grpc::authority::{AuthorityError, AuthorityRewriter};
use metastore_fuzz::{BoundedAllocator, Input, chunk_lengths, split};

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

fn run(max_block_len: usize, pieces: &[&[u8]]) -> (Vec<u8>, Result<(), AuthorityError>) {
    let mut rewriter = AuthorityRewriter::new(max_block_len);
    let mut output = BytesMut::new();
    for piece in pieces {
        if let Err(error) = rewriter.feed(piece, &mut output) {
            return (output.to_vec(), Err(error));
        }
    }
    (output.to_vec(), Ok(()))
}

/// One frame as h2 would see it, with header blocks reassembled and
/// decoded.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Frame {
        frame_type: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    },
    HeaderBlock {
        stream_id: u32,
        end_stream: bool,
        priority: Option<Vec<u8>>,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// A header block being reassembled from HEADERS + CONTINUATION frames.
struct PartialBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<Vec<u8>>,
    fragment: Vec<u8>,
}

/// The events of the complete frames in `bytes`; `None` if a header block
/// does not decode (the rewriter must then have refused the stream).
fn events(mut bytes: &[u8]) -> Option<Vec<Event>> {
    let mut decoder = loona_hpack::Decoder::new();
    // As the rewriter (and h2): the default SETTINGS_HEADER_TABLE_SIZE.
    decoder.set_max_allowed_table_size(4096);
    let mut events = Vec::new();
    let mut block: Option<PartialBlock> = None;
    while bytes.len() >= FRAME_HEADER_LEN {
        let length =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        let Some(payload) = bytes.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + length) else {
            break;
        };
        let (frame_type, flags) = (bytes[3], bytes[4]);
        let stream_id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        bytes = &bytes[FRAME_HEADER_LEN + length..];
        let fragment = match frame_type {
            HEADERS => {
                let (priority, fragment) = split_headers_payload(flags, payload)?;
                block = Some(PartialBlock {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: Vec::new(),
                });
                fragment
            }
            CONTINUATION => payload,
            _ => {
                events.push(Event::Frame {
                    frame_type,
                    flags,
                    stream_id,
                    payload: payload.to_vec(),
                });
                continue;
            }
        };
        block.as_mut()?.fragment.extend_from_slice(fragment);
        if flags & END_HEADERS != 0 {
            let finished = block.take()?;
            let fields = decoder.decode(&finished.fragment).ok()?;
            events.push(Event::HeaderBlock {
                stream_id: finished.stream_id,
                end_stream: finished.end_stream,
                priority: finished.priority,
                fields,
            });
        }
    }
    Some(events)
}

/// RFC 9113 §6.2: [Pad Length] [Priority] Fragment [Padding].
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<Vec<u8>>, &[u8])> {
    let mut body = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&pad_length, rest) = body.split_first()?;
        padding = usize::from(pad_length);
        body = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(body.get(..5)?.to_vec());
        body = &body[5..];
    }
    let end = body.len().checked_sub(padding)?;
    Some((priority, &body[..end]))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    // The server passes its SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB).
    let max_block_len = match input.byte() {
        255 => 16 * 1024,
        small => 16 + usize::from(small) * 4,
    };
    let lengths = chunk_lengths(&mut input);
    let mut stream = PREFACE.to_vec();
    stream.extend_from_slice(input.rest());

    let (output, outcome) = run(max_block_len, &[&stream]);
    let chunked = run(max_block_len, &split(&stream, &lengths));
    assert_eq!(
        (&output, &outcome),
        (&chunked.0, &chunked.1),
        "chunking changed the result"
    );
    let bytewise = run(max_block_len, &split(&stream, &[1]));
    assert_eq!(
        (&output, &outcome),
        (&bytewise.0, &bytewise.1),
        "one-byte chunks changed the result"
    );

    assert!(output.starts_with(PREFACE));
    // Refused, or passed through untouched (the connection's first block
    // needed no rewrite): nothing more to compare.
    if outcome.is_err() || output == stream {
        return;
    }
    let before = events(&stream[PREFACE.len()..]).expect("accepted blocks decode");
    let after = events(&output[PREFACE.len()..]).expect("rewritten blocks decode");
    // A block still being assembled at the end is held back, so the output
    // may have fewer events; never other ones.
    assert!(after.len() <= before.len(), "events invented");
    for (was, now) in before.iter().zip(&after) {
        match (was, now) {
            (
                Event::HeaderBlock {
                    stream_id,
                    end_stream,
                    priority,
                    fields,
                },
                Event::HeaderBlock {
                    stream_id: new_stream_id,
                    end_stream: new_end_stream,
                    priority: new_priority,
                    fields: new_fields,
                },
            ) => {
                assert_eq!(
                    (stream_id, end_stream, priority),
                    (new_stream_id, new_end_stream, new_priority)
                );
                assert_eq!(fields.len(), new_fields.len(), "fields lost or added");
                for ((name, value), (new_name, new_value)) in fields.iter().zip(new_fields) {
                    assert_eq!(name, new_name);
                    if name == b":authority" && value != new_value {
                        assert!(!new_value.contains(&b'/'), "still URL-shaped");
                        assert!(
                            value
                                .windows(new_value.len().max(1))
                                .any(|part| part == &new_value[..])
                                || new_value.is_empty(),
                            "an authority that was not in the original"
                        );
                    } else {
                        assert_eq!(value, new_value, "a field changed");
                    }
                }
            }
            _ => assert_eq!(was, now, "a frame changed"),
        }
    }
});
