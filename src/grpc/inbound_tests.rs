//! `InboundGuard` on hand-built byte streams, whole and cut into pieces.

use std::time::{Duration, Instant};

use super::*;
use crate::grpc::h2_frames::{FLAG_PADDED, FLAG_PRIORITY, PREFACE};

const LIMIT: usize = 16 * 1024;

fn limits() -> InboundLimits {
    InboundLimits::new(LIMIT, Duration::from_secs(5))
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings() -> Vec<u8> {
    frame(FRAME_SETTINGS, 0, 0, &[])
}

fn request_block(encoder: &mut loona_hpack::Encoder<'static>) -> Vec<u8> {
    encoder.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/etcdserverpb.KV/Put"),
        (b":authority", b"127.0.0.1:2379"),
        (b"content-type", b"application/grpc"),
    ])
}

/// Preface, SETTINGS and one request: what every client sends first.
fn opening() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings());
    let block = request_block(&mut loona_hpack::Encoder::new());
    bytes.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
    bytes
}

/// Where the frame starting at `start` (after the preface) ends.
fn frame_end_after(bytes: &[u8], start: usize) -> usize {
    let header: [u8; FRAME_HEADER_LEN] = bytes[start..start + FRAME_HEADER_LEN]
        .try_into()
        .expect("a frame header");
    start + FRAME_HEADER_LEN + FrameHeader::decode(&header).length
}

/// Feeds `bytes` in pieces of the given sizes (cycled); returns the bytes
/// accepted in total, the violation, and the stages seen after each piece.
fn feed(
    guard: &mut InboundGuard,
    bytes: &[u8],
    pieces: &[usize],
    now: Instant,
) -> (usize, Option<InboundViolation>) {
    let mut offset = 0;
    let mut accepted = 0;
    let mut sizes = pieces.iter().cycle();
    while offset < bytes.len() {
        let size = (*sizes.next().expect("pieces"))
            .max(1)
            .min(bytes.len() - offset);
        let inspection = guard.inspect(&bytes[offset..offset + size], now);
        accepted += inspection.accepted;
        if inspection.violation.is_some() {
            return (accepted, inspection.violation);
        }
        offset += size;
    }
    (accepted, None)
}

#[test]
fn stages_advance_with_the_opening_however_it_is_cut() {
    let bytes = opening();
    let now = Instant::now();
    for piece in [1, 2, 3, 5, 9, 24, 1000] {
        let mut guard = InboundGuard::new(limits());
        let mut stages = Vec::new();
        for chunk in bytes.chunks(piece) {
            let inspection = guard.inspect(chunk, now);
            assert_eq!(inspection.accepted, chunk.len());
            assert_eq!(inspection.violation, None);
            if stages.last() != Some(&guard.stage()) {
                stages.push(guard.stage());
            }
        }
        assert_eq!(guard.stage(), Stage::Established, "piece {piece}");
        assert!(
            stages.windows(2).all(|pair| pair[0] < pair[1]),
            "{stages:?}"
        );
    }
    let mut guard = InboundGuard::new(limits());
    guard.inspect(&bytes[..PREFACE_LEN], now);
    assert_eq!(guard.stage(), Stage::Settings);
    guard.inspect(&settings(), now);
    assert_eq!(guard.stage(), Stage::FirstRequest);
}

#[test]
fn an_hpack_bomb_is_refused_before_any_decoder_sees_it() {
    // A 4 KiB entry, then 16,000 one-byte references to it: 64 MiB decoded.
    let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e];
    block.extend(std::iter::repeat_n(b'v', 4000));
    block.extend(std::iter::repeat_n(0xbe, 12_000));
    let mut bytes = opening();
    let bomb_at = bytes.len();
    bytes.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 3, &block));
    for piece in [7, 4096, 100_000] {
        let mut guard = InboundGuard::new(limits());
        let (accepted, violation) = feed(&mut guard, &bytes, &[piece], Instant::now());
        assert_eq!(
            violation,
            Some(InboundViolation::Hpack(ScanError::TooManyFields(
                LIMIT / 32 + 1
            )))
        );
        // h2 may have been handed the start of the frame (it waits for a
        // whole frame), never all of it.
        assert!(
            (bomb_at..bytes.len()).contains(&accepted),
            "h2 gets no whole bomb frame (piece {piece}): {accepted}"
        );
        assert_eq!(
            violation.map(|violation| violation.reason()),
            Some(h2::Reason::ENHANCE_YOUR_CALM)
        );
    }
}

#[test]
fn an_oversized_block_is_refused_from_its_frame_header() {
    let mut bytes = opening();
    let header_at = bytes.len();
    // Only the frame header: the payload never needs to arrive.
    bytes.extend(&frame(FRAME_HEADERS, 0, 3, &vec![0; LIMIT + 300])[..FRAME_HEADER_LEN]);
    let mut guard = InboundGuard::new(limits());
    let (accepted, violation) = feed(&mut guard, &bytes, &[5], Instant::now());
    assert!((header_at..header_at + FRAME_HEADER_LEN).contains(&accepted));
    assert!(matches!(
        violation,
        Some(InboundViolation::HeaderBlockTooLarge { .. })
    ));

    // CONTINUATION frames adding up past the limit.
    let mut bytes = opening();
    bytes.extend(frame(FRAME_HEADERS, 0, 3, &vec![0x82; 10_000]));
    let second_at = bytes.len();
    bytes.extend(frame(FRAME_CONTINUATION, 0, 3, &vec![0x82; 10_000]));
    let mut guard = InboundGuard::new(limits());
    let (accepted, violation) = feed(&mut guard, &bytes, &[1 << 20], Instant::now());
    assert_eq!(accepted, second_at);
    assert!(matches!(
        violation,
        Some(InboundViolation::HeaderBlockTooLarge { .. })
    ));
}

#[test]
fn nothing_may_interrupt_a_header_block() {
    let mut bytes = opening();
    bytes.extend(frame(FRAME_HEADERS, 0, 3, &[0x82]));
    let ping_at = bytes.len();
    bytes.extend(frame(0x6, 0, 0, &[0; 8]));
    let mut guard = InboundGuard::new(limits());
    let (accepted, violation) = feed(&mut guard, &bytes, &[1000], Instant::now());
    assert_eq!(accepted, ping_at);
    assert_eq!(violation, Some(InboundViolation::InterleavedHeaderBlock));
    assert_eq!(
        InboundViolation::InterleavedHeaderBlock.reason(),
        h2::Reason::PROTOCOL_ERROR
    );
}

#[test]
fn padding_and_priority_are_not_part_of_the_block() {
    // Three size updates would be refused; padded with bytes that look
    // like them, the block itself is one indexed field.
    let mut payload = vec![200u8];
    payload.extend([0, 0, 0, 3, 16]);
    payload.push(0x82);
    payload.extend(std::iter::repeat_n(0x20, 200));
    let mut bytes = opening();
    bytes.extend(frame(
        FRAME_HEADERS,
        FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
        3,
        &payload,
    ));
    let mut guard = InboundGuard::new(limits());
    let (accepted, violation) = feed(&mut guard, &bytes, &[13], Instant::now());
    assert_eq!((accepted, violation), (bytes.len(), None));
}

#[test]
fn heavy_blocks_use_up_the_budget_which_refills_with_time() {
    let heavy = limits().free_block_bytes + 8 * 1024;
    // Literal without indexing, indexed name 1, raw value: one field.
    let mut block = vec![0x01, 0x7f];
    let value_len = heavy - 4;
    block.extend([
        ((value_len - 127) % 128) as u8 | 0x80,
        ((value_len - 127) / 128) as u8,
    ]);
    block.extend(std::iter::repeat_n(b'v', value_len));
    assert_eq!(block.len(), heavy);
    let start = Instant::now();
    let mut guard = InboundGuard::new(limits());
    assert_eq!(guard.inspect(&opening(), start).violation, None);
    let charge = 8 * 1024;
    let allowed = limits().budget_bytes / charge;
    let mut stream_id = 3;
    let mut send = |guard: &mut InboundGuard, now: Instant| {
        let bytes = frame(FRAME_HEADERS, FLAG_END_HEADERS, stream_id, &block);
        stream_id += 2;
        guard.inspect(&bytes, now).violation
    };
    for sent in 0..allowed {
        assert_eq!(send(&mut guard, start), None, "block {sent}");
    }
    // A second later the budget holds 64 KiB more: eight blocks.
    let later = start + Duration::from_secs(1);
    for sent in 0..limits().budget_refill_per_second / charge {
        assert_eq!(send(&mut guard, later), None, "refilled block {sent}");
    }
    assert_eq!(
        send(&mut guard, later),
        Some(InboundViolation::HeaderBudgetExhausted)
    );
}

#[test]
fn small_blocks_cost_nothing() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut guard = InboundGuard::new(limits());
    let now = Instant::now();
    assert_eq!(guard.inspect(&opening(), now).violation, None);
    for stream in 0..100_000u32 {
        let block = request_block(&mut encoder);
        let bytes = frame(FRAME_HEADERS, FLAG_END_HEADERS, 3 + 2 * stream, &block);
        assert_eq!(guard.inspect(&bytes, now).violation, None);
    }
}

/// Random streams of frames, fed whole and in random pieces: the verdict
/// never depends on how the bytes were cut, and the frame that broke a
/// rule never reaches h2 whole.
#[test]
fn the_verdict_does_not_depend_on_how_the_bytes_arrive() {
    let seed = std::env::var("INBOUND_TEST_SEED")
        .ok()
        .map(|text| text.parse().expect("INBOUND_TEST_SEED must be a u64"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64)
        });
    println!("the_verdict_does_not_depend_on_how_the_bytes_arrive: INBOUND_TEST_SEED={seed}");
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let now = Instant::now();
    for case in 0..300 {
        let mut bytes = opening();
        for _ in 0..(next() % 12) {
            let stream = 3 + 2 * (next() % 50) as u32;
            let bytes_to_add = match next() % 6 {
                0 => frame(0x0, 0, stream, &vec![0; (next() % 3000) as usize]),
                1 => frame(0x6, 0, 0, &[0; 8]),
                2 => frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS,
                    stream,
                    &vec![0x82; (next() % 700) as usize],
                ),
                3 => frame(FRAME_HEADERS, 0, stream, &[0x82, 0x86]),
                4 => frame(FRAME_CONTINUATION, FLAG_END_HEADERS, stream, &[0x84]),
                _ => frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS,
                    stream,
                    &[0x20, 0x20, 0x20, 0x82],
                ),
            };
            bytes.extend(bytes_to_add);
        }
        let mut whole = InboundGuard::new(limits());
        let (whole_accepted, expected) = feed(&mut whole, &bytes, &[bytes.len()], now);
        let pieces: Vec<usize> = (0..8).map(|_| 1 + (next() % 40) as usize).collect();
        let mut cut = InboundGuard::new(limits());
        let (cut_accepted, got) = feed(&mut cut, &bytes, &pieces, now);
        assert_eq!(got, expected, "seed {seed} case {case} pieces {pieces:?}");
        assert_eq!(cut.stage(), whole.stage(), "seed {seed} case {case}");
        match expected {
            None => assert_eq!((whole_accepted, cut_accepted), (bytes.len(), bytes.len())),
            // Whole, the offending frame is withheld from its first byte;
            // cut, from some byte of it on, never after its last.
            Some(_) => {
                let frame_end = frame_end_after(&bytes, whole_accepted);
                assert!(
                    (whole_accepted..frame_end).contains(&cut_accepted),
                    "seed {seed} case {case}: {cut_accepted} not in {whole_accepted}..{frame_end}"
                );
            }
        }
    }
}

#[test]
fn pings_sooner_than_the_minimum_time_are_struck_out() {
    let ping = frame(FRAME_PING, 0, 0, &[0; 8]);
    let ack = frame(FRAME_PING, FLAG_ACK, 0, &[0; 8]);
    let start = Instant::now();
    let mut guard = InboundGuard::new(limits());
    assert_eq!(guard.inspect(&opening(), start).violation, None);
    // Every 5 s is fine, however long; acknowledgements do not count.
    for second in 0..20u64 {
        let at = start + Duration::from_secs(5 * second);
        assert_eq!(guard.inspect(&ping, at).violation, None);
        assert_eq!(guard.inspect(&ack, at).violation, None);
    }
    // Two strikes are forgiven, the third is not...
    let later = start + Duration::from_secs(200);
    for _ in 0..3 {
        assert_eq!(guard.inspect(&ping, later).violation, None);
    }
    let mut guard = InboundGuard::new(limits());
    guard.inspect(&opening(), start);
    let burst = [ping.clone(), ping.clone(), ping.clone(), ping.clone()].concat();
    assert_eq!(
        guard.inspect(&burst, start).violation,
        Some(InboundViolation::TooManyPings)
    );
    // ...unless the connection carried calls in between.
    let mut guard = InboundGuard::new(limits());
    guard.inspect(&opening(), start);
    let data = frame(FRAME_DATA, 0, 1, &[0; 5]);
    for _ in 0..10 {
        assert_eq!(
            guard
                .inspect(&[ping.clone(), ping.clone(), data.clone()].concat(), start)
                .violation,
            None
        );
    }
}
