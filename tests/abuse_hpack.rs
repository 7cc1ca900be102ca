//! HPACK abuse against the real binary over loopback, with hand-built
//! frames (`common::raw_h2`): header blocks whose decoding would be far
//! more work than their size, dynamic table churn, oversized header lists,
//! and a connection that keeps sending heavy blocks. Each test asserts the
//! bound (the GOAWAY code, what the server did and did not decode, the
//! connection going on), not just that the server survived.

mod common;

use std::time::{Duration, Instant};

use common::raw_h2::{self, Ending, RawConnection};
use common::{MetastoreServer, proc_status_kib, test_seed};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What the server advertises and enforces (ServerLimits).
const MAX_HEADER_LIST_SIZE: usize = 16 * 1024;
/// RFC 9113 §6.5.2: each field counts 32 octets besides name and value.
const FIELD_OVERHEAD: usize = 32;
const WAIT: Duration = Duration::from_secs(10);
const RANGE: &str = "/etcdserverpb.KV/Range";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens a connection and sends the preface and SETTINGS.
async fn open(server: &MetastoreServer) -> RawConnection {
    let mut connection = RawConnection::connect(server.addr())
        .await
        .expect("connect");
    connection.send(&raw_h2::opening()).await.expect("opening");
    connection
}

/// The first request block of a bomb: the static pseudo-headers, one
/// literal field inserted into the dynamic table (a `value_len`-byte
/// value), then `references` one-byte references to it.
fn bomb_block(value_len: usize, references: usize) -> Vec<u8> {
    // :method POST, :scheme http, :path /
    let mut block = vec![0x83, 0x86, 0x84];
    // Literal with incremental indexing, new name "x-b" (RFC 7541 §6.2.1).
    block.extend([0x40, 0x03]);
    block.extend(b"x-b");
    block.extend(hpack_length(value_len));
    block.extend(std::iter::repeat_n(b'v', value_len));
    // Index 62: the newest dynamic table entry (§2.3.3).
    block.extend(std::iter::repeat_n(0xbe, references));
    block
}

/// An HPACK string length with the H bit clear (§5.1, 7-bit prefix).
fn hpack_length(length: usize) -> Vec<u8> {
    if length < 127 {
        return vec![length as u8];
    }
    let mut out = vec![0x7f];
    let mut rest = length - 127;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// The client's first frames (preface, SETTINGS) are answered with the
/// server's SETTINGS, which must carry the limit the guard enforces.
#[test]
fn the_header_list_size_is_advertised() {
    let server = MetastoreServer::start(&[]);
    runtime().block_on(async {
        let mut connection = open(&server).await;
        let first = connection
            .next_frame(WAIT)
            .await
            .expect("a frame")
            .expect("not EOF");
        assert_eq!(first.kind, raw_h2::SETTINGS);
        assert!(
            raw_h2::settings(&first.payload).contains(&(
                raw_h2::SETTINGS_MAX_HEADER_LIST_SIZE,
                MAX_HEADER_LIST_SIZE as u32
            )),
            "{:?}",
            raw_h2::settings(&first.payload)
        );
    });
}

/// Bomb blocks of 16 KiB that decode to 38-48 MiB each, on many
/// connections at once. The server must refuse each one with GOAWAY
/// (ENHANCE_YOUR_CALM) without decoding it: its peak RSS grows by far less
/// than one decoded bomb. (Before the guard, each was decoded into owned
/// copies first: the peak grew by one bomb per core at least.)
#[test]
fn an_hpack_bomb_is_refused_without_being_decoded() {
    let seed = test_seed("an_hpack_bomb_is_refused_without_being_decoded");
    let mut rng = StdRng::seed_from_u64(seed);
    let server = MetastoreServer::start(&[]);
    let peak_before = proc_status_kib(server.pid(), "VmHWM");
    let mut smallest_decoded = usize::MAX;
    let bombs: Vec<Vec<u8>> = (0..16)
        .map(|_| {
            let value_len = rng.random_range(3_000..=4_000);
            // The whole frame stays within 16 KiB, so no frame size rule
            // refuses it; only its decoded size is the problem.
            let references = MAX_HEADER_LIST_SIZE - 3 - 5 - 3 - value_len;
            smallest_decoded = smallest_decoded.min(references * (3 + value_len + FIELD_OVERHEAD));
            bomb_block(value_len, references)
        })
        .collect();
    assert!(
        smallest_decoded > 32 << 20,
        "each bomb decodes to over 32 MiB"
    );
    let endings = runtime().block_on(async {
        let mut attacks = Vec::new();
        for bomb in bombs {
            let addr = server.addr();
            attacks.push(tokio::spawn(async move {
                let mut connection = RawConnection::connect(addr).await.expect("connect");
                let mut bytes = raw_h2::opening();
                bytes.extend(raw_h2::frame(
                    raw_h2::HEADERS,
                    raw_h2::END_HEADERS | raw_h2::END_STREAM,
                    1,
                    &bomb,
                ));
                connection.send(&bytes).await.expect("send");
                let ending = connection.wait_for_ending(WAIT, |_| {}).await;
                (ending, connection.closes_within(WAIT).await)
            }));
        }
        let mut endings = Vec::new();
        for attack in attacks {
            endings.push(attack.await.expect("attack task"));
        }
        endings
    });
    for (index, ending) in endings.iter().enumerate() {
        assert_eq!(
            ending,
            &(Ending::GoAway(raw_h2::ENHANCE_YOUR_CALM), true),
            "connection {index} (seed {seed})"
        );
    }
    let grown_kib = proc_status_kib(server.pid(), "VmHWM").saturating_sub(peak_before);
    assert!(
        grown_kib < 16 * 1024,
        "peak RSS grew by {grown_kib} KiB under 16 bombs of over {} MiB each (seed {seed})",
        smallest_decoded >> 20
    );
    assert!(
        common::probe(server.addr()).is_ok(),
        "the server still serves"
    );
}

/// Sends one request header block as the connection's first and returns
/// how the server ended the connection.
async fn first_block_ending(server: &MetastoreServer, block: &[u8]) -> Ending {
    let mut connection = open(server).await;
    connection
        .send(&raw_h2::frame(
            raw_h2::HEADERS,
            raw_h2::END_HEADERS | raw_h2::END_STREAM,
            1,
            block,
        ))
        .await
        .expect("send");
    let ending = connection.wait_for_ending(WAIT, |_| {}).await;
    if matches!(ending, Ending::GoAway(_)) {
        assert!(connection.closes_within(WAIT).await, "closed after GOAWAY");
    }
    ending
}

/// RFC 7541 §4.2: a table size update must start a block (else a decoding
/// error: COMPRESSION_ERROR), and an encoder signals at most two; more are
/// refused as churn, as are many insertions in one block.
#[test]
fn dynamic_table_churn_in_one_block_is_refused() {
    let server = MetastoreServer::start(&[]);
    runtime().block_on(async {
        let request = raw_h2::request_block(&mut loona_hpack::Encoder::new(), RANGE, &[]);
        // A size update to 0 after the first field.
        let mut late_update = request[..1].to_vec();
        late_update.push(0x20);
        late_update.extend(&request[1..]);
        assert_eq!(
            first_block_ending(&server, &late_update).await,
            Ending::GoAway(raw_h2::COMPRESSION_ERROR)
        );

        // Size updates to 0, 0, then 4096 (§6.3), then the request.
        let mut three_updates = vec![0x20, 0x20, 0x3f, 0xe1, 0x1f];
        three_updates.extend(&request);
        assert_eq!(
            first_block_ending(&server, &three_updates).await,
            Ending::GoAway(raw_h2::ENHANCE_YOUR_CALM)
        );

        // 100 small fields, each inserted into the dynamic table: 3.7 KiB
        // decoded, well within the list size, but 100 insertions.
        let names: Vec<Vec<u8>> = (0..100)
            .map(|index| format!("x-{index}").into_bytes())
            .collect();
        let extra: Vec<(&[u8], &[u8])> = names.iter().map(|name| (&name[..], &b"v"[..])).collect();
        let churn = raw_h2::request_block(&mut loona_hpack::Encoder::new(), RANGE, &extra);
        assert_eq!(
            first_block_ending(&server, &churn).await,
            Ending::GoAway(raw_h2::ENHANCE_YOUR_CALM)
        );

        // The same fields over 100 blocks are fine: churn is per block.
        let mut encoder = loona_hpack::Encoder::new();
        let mut connection = open(&server).await;
        for (index, name) in names.iter().enumerate() {
            let stream = 1 + 2 * index as u32;
            let block = raw_h2::request_block(&mut encoder, RANGE, &[(&name[..], &b"v"[..])]);
            connection
                .send(&raw_h2::frame(
                    raw_h2::HEADERS,
                    raw_h2::END_HEADERS | raw_h2::END_STREAM,
                    stream,
                    &block,
                ))
                .await
                .expect("send");
            assert_eq!(
                wait_for_answer(&mut connection, stream).await,
                Answer::Status(200)
            );
        }
    });
    assert!(
        common::probe(server.addr()).is_ok(),
        "the server still serves"
    );
}

/// A header list over SETTINGS_MAX_HEADER_LIST_SIZE that is cheap to
/// decode (five fields, 20 KiB decoded) is refused for its stream only
/// (RFC 9113 §10.5.1: 431), and the connection goes on serving.
#[test]
fn an_oversized_header_list_is_refused_and_the_connection_goes_on() {
    let server = MetastoreServer::start(&[]);
    runtime().block_on(async {
        let big = vec![b'v'; 4_000];
        let extra: Vec<(&[u8], &[u8])> = (0..5).map(|_| (&b"x-big"[..], &big[..])).collect();
        let mut encoder = loona_hpack::Encoder::new();
        let oversized = raw_h2::request_block(&mut encoder, RANGE, &extra);
        assert!(oversized.len() < 4_200, "compressed: {}", oversized.len());
        let mut connection = open(&server).await;
        connection
            .send(&raw_h2::frame(
                raw_h2::HEADERS,
                raw_h2::END_HEADERS | raw_h2::END_STREAM,
                1,
                &oversized,
            ))
            .await
            .expect("send");
        let refused = wait_for_answer(&mut connection, 1).await;
        assert_eq!(refused, Answer::Status(431));

        // The same connection (and HPACK state) serves the next call.
        let range = raw_h2::request_block(&mut encoder, RANGE, &[]);
        connection
            .send(&raw_h2::frame(
                raw_h2::HEADERS,
                raw_h2::END_HEADERS,
                3,
                &range,
            ))
            .await
            .expect("send");
        connection
            .send(&raw_h2::frame(
                raw_h2::DATA,
                raw_h2::END_STREAM,
                3,
                &raw_h2::grpc_message(&[0x0a, 0x01, b'a']),
            ))
            .await
            .expect("send");
        assert_eq!(
            wait_for_answer(&mut connection, 3).await,
            Answer::Status(200)
        );
    });
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Response headers with this `:status`.
    Status(u16),
    Reset,
    Ended(Ending),
}

/// The server's first answer on `stream`.
async fn wait_for_answer(connection: &mut RawConnection, stream: u32) -> Answer {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match connection.next_frame(left).await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return Answer::Ended(Ending::Closed),
        };
        match frame.kind {
            raw_h2::HEADERS if frame.stream_id == stream => {
                let fields = connection.decode_headers(&frame);
                let status = fields
                    .iter()
                    .find(|(name, _)| name == b":status")
                    .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
                    .expect(":status");
                return Answer::Status(status);
            }
            // Keep the HPACK state in step with every other block.
            raw_h2::HEADERS => {
                connection.decode_headers(&frame);
            }
            raw_h2::RST_STREAM if frame.stream_id == stream => return Answer::Reset,
            raw_h2::GOAWAY => {
                let code = u32::from_be_bytes(frame.payload[4..8].try_into().expect("code"));
                return Answer::Ended(Ending::GoAway(code));
            }
            _ => {}
        }
    }
}

/// Header blocks of 6-14 KiB, each a valid request whose list fits the
/// limit, one after another on one connection: each is served, until the
/// bytes beyond each block's free 2 KiB use up the connection's budget
/// (256 KiB, refilled at 64 KiB/s); then GOAWAY (ENHANCE_YOUR_CALM).
#[test]
fn a_connection_that_keeps_sending_heavy_header_blocks_is_told_to_calm_down() {
    const FREE: usize = 2 * 1024;
    const BUDGET: usize = 256 * 1024;
    const REFILL_PER_SECOND: usize = 64 * 1024;
    let seed =
        test_seed("a_connection_that_keeps_sending_heavy_header_blocks_is_told_to_calm_down");
    let mut rng = StdRng::seed_from_u64(seed);
    let server = MetastoreServer::start(&[]);
    runtime().block_on(async {
        let mut encoder = loona_hpack::Encoder::new();
        let mut connection = open(&server).await;
        let started = Instant::now();
        let mut charged = 0usize;
        let mut largest_charge = 0usize;
        for index in 0..200u32 {
            let stream = 1 + 2 * index;
            let padding = vec![b'p'; rng.random_range(6 * 1024..14 * 1024)];
            let block =
                raw_h2::request_block(&mut encoder, RANGE, &[(&b"x-pad"[..], &padding[..])]);
            assert!(block.len() < MAX_HEADER_LIST_SIZE - 512);
            connection
                .send(&raw_h2::frame(
                    raw_h2::HEADERS,
                    raw_h2::END_HEADERS | raw_h2::END_STREAM,
                    stream,
                    &block,
                ))
                .await
                .expect("send");
            let charge = block.len().saturating_sub(FREE);
            match wait_for_answer(&mut connection, stream).await {
                Answer::Status(200) => {
                    charged += charge;
                    largest_charge = largest_charge.max(charge);
                }
                Answer::Ended(Ending::GoAway(code)) => {
                    assert_eq!(code, raw_h2::ENHANCE_YOUR_CALM, "seed {seed}");
                    let refilled = REFILL_PER_SECOND as f64 * started.elapsed().as_secs_f64();
                    // The block that crossed the budget was refused, and
                    // not much earlier than the budget allows.
                    assert!(
                        charged + charge > BUDGET,
                        "refused after only {charged} bytes (seed {seed})"
                    );
                    assert!(
                        (charged as f64) <= BUDGET as f64 + refilled + 1.0,
                        "{charged} bytes passed a {BUDGET}-byte budget (seed {seed})"
                    );
                    assert!(connection.closes_within(WAIT).await);
                    return;
                }
                other => panic!("block {index}: {other:?} (seed {seed})"),
            }
        }
        panic!("200 heavy header blocks ({charged} bytes beyond the free allowance) and no GOAWAY (seed {seed})");
    });
}
