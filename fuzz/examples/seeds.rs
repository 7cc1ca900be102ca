//! Writes the committed seed corpora (`fuzz/seeds/<target>/`) and the
//! dictionaries (`fuzz/dicts/`): small valid inputs built with MetaStore's
//! own encoders, plus a few near misses, in each target's input layout (see
//! the comment at the top of each target).
//!
//! Run from `fuzz/` after a format changes: `cargo run --example seeds`.
//! Everything is deterministic except the WAL's log id, which `Wal::open`
//! draws at random, so the WAL seeds' bytes change on each run.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use metastore::grpc::codec::{encode_message, encode_raw_message};
use metastore::proto::etcdserverpb::{PutRequest, RangeRequest};
use metastore::snapshot::backup::BackupWriter;
use metastore::snapshot::{SnapshotEntry, SnapshotLease, SnapshotMeta, encode_snapshot};
use metastore::wal::format::{
    FIRST_FRAME_OFFSET, FRAME_HEADER_LEN, FrameHeader, SegmentHeader, encode_frame_header,
    encode_segment_header, frame_len_for_payload, record_prefix, segment_file_name,
};
use metastore::wal::{MemoryDevice, Wal, WalOptions};
use metastore_fuzz::block_on_ready;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = root.join("seeds");
    // Nothing is removed first: crash inputs kept as seeds (README, "Found
    // so far") live beside the generated ones, which are overwritten.
    grpc_codec(&seeds.join("grpc_codec"));
    grpc_headers(&seeds.join("grpc_headers"));
    grpc_authority(&seeds.join("grpc_authority"));
    grpc_connection(&seeds.join("grpc_connection"));
    wal_frame(&seeds.join("wal_frame"));
    wal_recovery(&seeds.join("wal_recovery"));
    snapshot_image(&seeds.join("snapshot_image"));
    snapshot_backup(&seeds.join("snapshot_backup"));
    config(&seeds.join("config"));
    peer_frame(&seeds.join("peer_frame"));
    dictionaries(&root.join("dicts"));
}

fn write(directory: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(directory).expect("create the seed directory");
    let path: PathBuf = directory.join(name);
    fs::write(&path, bytes).expect("write a seed");
}

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(rest);
    bytes
}

fn put(key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        ..Default::default()
    }
}

fn grpc_messages() -> Vec<u8> {
    let mut stream = BytesMut::new();
    encode_message(&put(b"/registry/pods/web-0", b"running"), &mut stream).expect("small");
    let range = RangeRequest {
        key: Bytes::from_static(b"a"),
        range_end: Bytes::from_static(b"z"),
        ..Default::default()
    };
    encode_message(&range, &mut stream).expect("small");
    encode_raw_message(b"", &mut stream).expect("small");
    stream.to_vec()
}

/// `[max selector][chunking plan][stream]`.
fn grpc_codec(directory: &Path) {
    let stream = grpc_messages();
    write(
        directory,
        "server-limit-bytewise",
        &prefixed(&[255, 0], &stream),
    );
    write(
        directory,
        "server-limit-chunks",
        &prefixed(&[255, 3, 2, 6, 40], &stream),
    );
    let mut exact = Vec::new();
    encode_raw_message_into(&[7; 16], &mut exact);
    encode_raw_message_into(&[8; 17], &mut exact);
    write(directory, "max-16-then-17", &prefixed(&[16, 1, 4], &exact));
    write(
        directory,
        "compressed-flag",
        &[255, 0, 1, 0, 0, 0, 2, 0xAB, 0xCD],
    );
    write(
        directory,
        "truncated-body",
        &prefixed(&[255, 0], &stream[..stream.len() - 3]),
    );
    write(
        directory,
        "huge-length",
        &[255, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF],
    );
}

fn encode_raw_message_into(body: &[u8], out: &mut Vec<u8>) {
    let mut framed = BytesMut::new();
    encode_raw_message(body, &mut framed).expect("small");
    out.extend_from_slice(&framed);
}

/// The same bytes go to every check.
fn grpc_headers(directory: &Path) {
    for (name, value) in [
        ("timeout-ms", &b"100m"[..]),
        ("timeout-max", b"99999999H"),
        ("timeout-zero", b"0n"),
        ("timeout-bad-unit", b"12x"),
        ("path-put", b"/etcdserverpb.KV/Put"),
        ("content-type", b"application/grpc+proto"),
    ] {
        write(directory, name, value);
    }
    write(
        directory,
        "put-short-key",
        &prost::Message::encode_to_vec(&put(b"foo", b"bar")),
    );
    let long_key = [b'k'; 40];
    write(
        directory,
        "put-long-key",
        &prost::Message::encode_to_vec(&put(&long_key, b"v")),
    );
    write(
        directory,
        "put-invalid-utf8",
        &prost::Message::encode_to_vec(&put(&[0xff, 0xfe, b'a'], b"v")),
    );
    write(
        directory,
        "key-length-varint-10-bytes",
        &[
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    );
}

/// HPACK (RFC 7541 §5.1) integer with an `prefix_bits`-bit prefix.
fn hpack_integer(mut value: usize, prefix_bits: u8, first_byte_flags: u8, out: &mut Vec<u8>) {
    let limit = (1usize << prefix_bits) - 1;
    if value < limit {
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | limit as u8);
    value -= limit;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields with incremental indexing and new
/// names, without Huffman coding (RFC 7541 §6.2.1), so names and values
/// appear in the seed as plain bytes for the fuzzer to mutate.
fn literal_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x40);
        hpack_integer(name.len(), 7, 0, &mut block);
        block.extend_from_slice(name.as_bytes());
        hpack_integer(value.len(), 7, 0, &mut block);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_uint(payload.len() as u64, 3);
    out.put_u8(frame_type);
    out.put_u8(flags);
    out.put_u32(stream_id);
    out.put_slice(payload);
    out.to_vec()
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

fn request_fields<'a>(
    path: &'a str,
    authority: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    fields.extend_from_slice(extra);
    fields
}

/// A unary call on `stream_id`: HEADERS, then the body in one DATA frame.
fn unary_call(stream_id: u32, fields: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut bytes = frame(HEADERS, END_HEADERS, stream_id, &literal_block(fields));
    bytes.extend(frame(DATA, END_STREAM, stream_id, body));
    bytes
}

fn framed(message: &PutRequest) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_message(message, &mut out).expect("small");
    out.to_vec()
}

/// `[block limit selector][chunking plan][frames after the preface]`.
fn grpc_authority(directory: &Path) {
    let settings = frame(SETTINGS, 0, 0, &[]);
    let url_fields = request_fields(
        "/etcdserverpb.Maintenance/Status",
        "http://127.0.0.1:2379",
        &[],
    );
    let mut rewrite = settings.clone();
    rewrite.extend(unary_call(1, &url_fields, &[0, 0, 0, 0, 0]));
    rewrite.extend(unary_call(3, &url_fields, &[0, 0, 0, 0, 0]));
    write(
        directory,
        "url-authority-two-calls",
        &prefixed(&[255, 0], &rewrite),
    );
    write(
        directory,
        "url-authority-chunks",
        &prefixed(&[255, 3, 5, 1, 17], &rewrite),
    );

    let bare = request_fields("/etcdserverpb.KV/Range", "127.0.0.1:2379", &[]);
    let mut passthrough = settings.clone();
    passthrough.extend(unary_call(1, &bare, &[0, 0, 0, 0, 0]));
    write(
        directory,
        "bare-authority",
        &prefixed(&[255, 2, 9, 3], &passthrough),
    );

    // A block split over HEADERS (padded, with priority) and CONTINUATION.
    let block = literal_block(&url_fields);
    let (first, second) = block.split_at(block.len() / 2);
    let mut payload = vec![3u8];
    payload.extend_from_slice(&[0, 0, 0, 0, 16]);
    payload.extend_from_slice(first);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut split = settings;
    split.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
    split.extend(frame(CONTINUATION, END_HEADERS, 1, second));
    split.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
    write(
        directory,
        "continuation-padded-priority",
        &prefixed(&[255, 1, 30], &split),
    );
}

/// The client's bytes after the preface.
fn grpc_connection(directory: &Path) {
    let settings = frame(SETTINGS, 0, 0, &[]);
    let echo = request_fields("/test.Echo/Echo", "127.0.0.1:2379", &[]);
    let mut body = Vec::new();
    encode_raw_message_into(b"hello", &mut body);
    encode_raw_message_into(b"", &mut body);
    let with = |calls: Vec<u8>| prefixed(&settings, &calls);

    write(
        directory,
        "echo-two-messages",
        &with(unary_call(1, &echo, &body)),
    );
    let put_path = request_fields("/etcdserverpb.KV/Put", "127.0.0.1:2379", &[]);
    write(
        directory,
        "put",
        &with(unary_call(
            1,
            &put_path,
            &framed(&put(b"/registry/a", b"v")),
        )),
    );
    let cases: [(&str, Vec<(&str, &str)>); 6] = [
        ("content-type-json", {
            let mut fields = echo.clone();
            fields[4] = ("content-type", "application/json");
            fields
        }),
        ("method-get", {
            let mut fields = echo.clone();
            fields[0] = (":method", "GET");
            fields
        }),
        (
            "timeout-1ns",
            request_fields(
                "/test.Echo/Echo",
                "127.0.0.1:2379",
                &[("grpc-timeout", "1n")],
            ),
        ),
        (
            "timeout-malformed",
            request_fields(
                "/test.Echo/Echo",
                "127.0.0.1:2379",
                &[("grpc-timeout", "soon")],
            ),
        ),
        (
            "encoding-gzip",
            request_fields(
                "/test.Echo/Echo",
                "127.0.0.1:2379",
                &[("grpc-encoding", "gzip")],
            ),
        ),
        (
            "path-malformed",
            request_fields("/test.Echo", "127.0.0.1:2379", &[]),
        ),
    ];
    for (name, fields) in cases {
        write(directory, name, &with(unary_call(1, &fields, &body)));
    }
    let url = request_fields("/test.Echo/Echo", "http://127.0.0.1:2379/", &[]);
    let mut two = unary_call(1, &url, &body);
    two.extend(unary_call(3, &url, &body));
    write(directory, "url-authority-two-calls", &with(two));

    // One message over three DATA frames, then a compressed one, a reset
    // stream, a ping and a window update.
    let mut calls = frame(HEADERS, END_HEADERS, 1, &literal_block(&echo));
    let mut message = Vec::new();
    encode_raw_message_into(b"split over frames", &mut message);
    calls.extend(frame(DATA, 0, 1, &message[..3]));
    calls.extend(frame(DATA, 0, 1, &message[3..9]));
    calls.extend(frame(DATA, END_STREAM, 1, &message[9..]));
    calls.extend(unary_call(3, &echo, &[1, 0, 0, 0, 1, 0xAA]));
    calls.extend(frame(HEADERS, END_HEADERS, 5, &literal_block(&echo)));
    calls.extend(frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
    calls.extend(frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]));
    calls.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]));
    write(directory, "frames-mixed", &with(calls));
    // A declared length above the 1 KiB limit.
    write(
        directory,
        "message-too-large",
        &with(unary_call(1, &echo, &[0, 0, 0, 0x10, 0])),
    );
}

fn frame_bytes(records: &[&[u8]], frame_sequence: u64, first_record: u64, log_id: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    for record in records {
        payload.extend_from_slice(&record_prefix(record.len()).expect("small record"));
        payload.extend_from_slice(record);
    }
    let header = FrameHeader {
        log_id,
        frame_sequence,
        first_record_sequence: first_record,
        record_count: records.len() as u32,
        payload_length: payload.len() as u32,
        payload_crc: crc32c::crc32c(&payload),
    };
    let mut bytes = vec![0u8; FRAME_HEADER_LEN];
    encode_frame_header(&header, &mut bytes);
    bytes.extend_from_slice(&payload);
    bytes
}

/// `[mode][chunking plan][handshake][frames...]`: a dialer's first bytes.
fn peer_frame(directory: &Path) {
    use metastore::peer::forward::{ForwardReply, ForwardRequest, ForwardedAnswer, ForwardedCall};
    use metastore::peer::frame::{Batch, Hello};
    use metastore::peer::snapshot_stream::split;
    use metastore::store::error::KvError;
    use metastore::store::write::WriteRequest;
    use raft::eraftpb::{Entry, Message, MessageType};
    let mut stream = Vec::new();
    Hello {
        cluster_id: 0x5eed,
        from_member: 2,
        to_member: 1,
    }
    .encode(&mut stream);
    let mut append = Message::default();
    append.set_msg_type(MessageType::MsgAppend);
    (append.to, append.from, append.term, append.index) = (1, 2, 3, 9);
    append.mut_entries().push(Entry {
        index: 10,
        term: 3,
        data: Bytes::from_static(b"command"),
        ..Default::default()
    });
    let mut heartbeat = Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    (heartbeat.to, heartbeat.from, heartbeat.term) = (1, 2, 3);
    Batch {
        messages: vec![(0, append), (3, heartbeat)],
        ..Default::default()
    }
    .encode(&mut stream);
    Batch::default().encode(&mut stream);
    // Forwarded calls and answers (`peer::forward`).
    let put = metastore::proto::etcdserverpb::PutRequest {
        key: Bytes::from_static(b"key"),
        value: Bytes::from_static(b"value"),
        ..Default::default()
    };
    Batch {
        requests: vec![
            ForwardRequest {
                id: 1,
                call: ForwardedCall::Write(WriteRequest::Put(put)),
            },
            ForwardRequest {
                id: 2,
                call: ForwardedCall::RenewLease { id: 7 },
            },
        ],
        replies: vec![ForwardReply {
            id: 9,
            answer: ForwardedAnswer::Failed(KvError::NotLeader),
        }],
        ..Default::default()
    }
    .encode(&mut stream);
    // A snapshot's first chunk (`peer::snapshot_stream`).
    let mut snapshot = Message::default();
    snapshot.set_msg_type(MessageType::MsgSnapshot);
    (snapshot.to, snapshot.from, snapshot.term) = (1, 2, 3);
    snapshot.mut_snapshot().mut_metadata().index = 40;
    snapshot.mut_snapshot().data = Bytes::from_static(b"image bytes");
    Batch {
        snapshot_chunks: split(0, snapshot),
        ..Default::default()
    }
    .encode(&mut stream);
    write(
        directory,
        "handshake-and-frames",
        &prefixed(&[0, 0], &stream),
    );
    write(directory, "forged", &prefixed(&[1, 2, 7, 30], &stream));
}

/// `[mode][bytes]`.
fn wal_frame(directory: &Path) {
    let frame = frame_bytes(&[b"alpha", b"", b"gamma"], 3, 10, 42);
    write(directory, "frame", &prefixed(&[0], &frame));
    write(directory, "frame-forged", &prefixed(&[1], &frame));
    let mut segment = [0u8; 64];
    let header = SegmentHeader {
        log_id: 42,
        first_record_sequence: 10,
        first_frame_sequence: 3,
    };
    encode_segment_header(&header, &mut segment);
    write(directory, "segment-header", &prefixed(&[0], &segment[..48]));
    write(
        directory,
        "segment-name",
        &prefixed(&[0], segment_file_name(0x1f).as_bytes()),
    );
}

/// One file of the `wal_recovery` input: `[sequence][length][stored][bytes]`
/// with the bytes' trailing zeros left out (the length restores them).
fn wal_file(out: &mut Vec<u8>, first_record: u64, length: usize, bytes: &[u8]) {
    let stored = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |last| last + 1);
    out.extend_from_slice(&first_record.to_le_bytes());
    out.extend_from_slice(&(length as u32).to_le_bytes());
    out.extend_from_slice(&(stored as u32).to_le_bytes());
    out.extend_from_slice(&bytes[..stored]);
}

/// A segment written by hand: header block, then the frames back to back.
fn segment(log_id: u64, first_frame: u64, first_record: u64, frames: &[&[&[u8]]]) -> Vec<u8> {
    let mut bytes = vec![0u8; FIRST_FRAME_OFFSET as usize];
    let header = SegmentHeader {
        log_id,
        first_record_sequence: first_record,
        first_frame_sequence: first_frame,
    };
    encode_segment_header(&header, &mut bytes);
    let (mut frame_sequence, mut record) = (first_frame, first_record);
    for records in frames {
        let mut frame = frame_bytes(records, frame_sequence, record, log_id);
        frame.resize(frame_len_for_payload(frame.len() - FRAME_HEADER_LEN), 0);
        bytes.extend_from_slice(&frame);
        frame_sequence += 1;
        record += records.len() as u64;
    }
    bytes
}

/// Files of the device, each `[sequence][length][stored][bytes]`.
fn wal_recovery(directory: &Path) {
    // A log written by the WAL itself: three group commits.
    let device = MemoryDevice::new();
    let options = WalOptions {
        segment_bytes: 1 << 20,
    };
    let (mut wal, _) = block_on_ready(Wal::open(device.clone(), options)).expect("new WAL");
    for batch in [
        &[&b"first"[..], b"second"][..],
        &[b""],
        &[b"fourth record", b"5", b"six"],
    ] {
        for record in batch {
            wal.append(record);
        }
        block_on_ready(wal.sync()).expect("sync to memory");
    }
    drop(wal);
    let mut written = Vec::new();
    for name in device.file_names() {
        let bytes = device.file_bytes(&name).expect("listed");
        let sequence = metastore::wal::format::parse_segment_file_name(&name).expect("segment");
        wal_file(&mut written, sequence, bytes.len(), &bytes);
    }
    write(directory, "written-by-wal", &written);

    // Two segments written by hand (the WAL rotates only after 1 MiB).
    let log_id = 0x5eed;
    let first = segment(log_id, 1, 1, &[&[b"a", b"b"], &[b"c"]]);
    let second = segment(log_id, 3, 4, &[&[b"d", b"e"]]);
    let mut two = Vec::new();
    wal_file(&mut two, 1, 64 << 10, &first);
    wal_file(&mut two, 4, 64 << 10, &second);
    write(directory, "two-segments", &two);

    // The same, the second segment's frame torn (its tail never written).
    let mut torn = Vec::new();
    wal_file(&mut torn, 1, 64 << 10, &first);
    let cut = FIRST_FRAME_OFFSET as usize + FRAME_HEADER_LEN + 3;
    wal_file(&mut torn, 4, 64 << 10, &second[..cut]);
    write(directory, "torn-second-segment", &torn);
}

fn meta(shard_count: u32, revision: i64) -> SnapshotMeta {
    SnapshotMeta {
        shard: 1,
        shard_count,
        raft_index: 7,
        raft_term: 1,
        revision,
        compacted_revision: -1,
    }
}

fn entry(key: &[u8], revision: i64, value: &[u8], version: i64) -> SnapshotEntry {
    SnapshotEntry {
        key: Bytes::copy_from_slice(key),
        revision,
        value: Bytes::copy_from_slice(value),
        create_revision: revision,
        version,
        lease: 0,
        sub_revision: 0,
    }
}

fn entries() -> Vec<SnapshotEntry> {
    vec![
        entry(b"/a", 3, b"one", 1),
        entry(b"/a", 2, b"", 0),
        entry(b"/b", 4, b"two", 2),
    ]
}

/// `[mode][image]`.
fn snapshot_image(directory: &Path) {
    let leases = [SnapshotLease {
        id: 7,
        ttl_seconds: 60,
    }];
    let image = encode_snapshot(&meta(4, 4), &leases, entries()).expect("encode");
    write(directory, "entries-and-lease", &prefixed(&[0], &image));
    write(
        directory,
        "entries-and-lease-forged",
        &prefixed(&[1], &image),
    );
    let empty = encode_snapshot(&meta(1, 0), &[], Vec::new()).expect("encode");
    write(directory, "empty", &prefixed(&[0], &empty));
}

/// `[mode][file]`.
fn snapshot_backup(directory: &Path) {
    let backup = |with_hash: bool| {
        let mut writer = BackupWriter::new(Vec::new(), 4, 2).expect("memory");
        writer
            .write_leases(&[SnapshotLease {
                id: 7,
                ttl_seconds: 60,
            }])
            .expect("memory");
        writer
            .write_versions(0, entries()[..2].to_vec())
            .expect("memory");
        writer
            .write_versions(1, entries()[2..].to_vec())
            .expect("memory");
        let (mut file, hash) = writer.finish(2).expect("memory");
        if with_hash {
            file.extend_from_slice(&hash);
        }
        file
    };
    write(directory, "with-hash", &prefixed(&[0], &backup(true)));
    write(
        directory,
        "with-hash-forged",
        &prefixed(&[1], &backup(true)),
    );
    write(directory, "without-hash", &prefixed(&[0], &backup(false)));
}

/// `YAML \0 word \0 word ...`.
fn config(directory: &Path) {
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "layers",
            "name: file\nmax-txn-ops: 10\n",
            &["--max-txn-ops=30", "METASTORE_SHARDS=3"],
        ),
        (
            "lists",
            "listen-client-urls: [http://127.0.0.1:2479, http://[::1]:2579/]\nmethod-rate-limits:\n  - Put=5\n  - etcdserverpb.KV/Range=10\n",
            &[],
        ),
        (
            "durations",
            "grpc-keepalive-interval: 30s\ngrpc-max-connection-idle: 0\nexperimental-watch-progress-notify-interval: 500ms\n",
            &["METASTORE_WARNING_UNARY_REQUEST_DURATION=1s"],
        ),
        (
            "compaction",
            "auto-compaction-mode: revision\nauto-compaction-retention: \"100\"\n",
            &["--quota-backend-bytes=-1"],
        ),
        ("bad-value", "max-txn-ops: 0\n", &[]),
        ("unknown-key", "data-dri: /tmp/x\n", &[]),
        (
            "anchors",
            "name: &n member\nlog-level: debug\ncores: 2\nshards: ~\n",
            &["--rate-limit-requests", "100"],
        ),
    ];
    for (name, yaml, words) in cases {
        let mut input = yaml.as_bytes().to_vec();
        for word in words {
            input.push(0);
            input.extend_from_slice(word.as_bytes());
        }
        write(directory, name, &input);
    }
}

/// libFuzzer dictionaries (`-dict=`): tokens a mutation is unlikely to
/// spell by chance.
fn dictionaries(directory: &Path) {
    fs::create_dir_all(directory).expect("create the dictionary directory");
    let mut grpc = vec![
        ":method",
        ":path",
        ":authority",
        ":scheme",
        "content-type",
        "te",
        "trailers",
        "grpc-timeout",
        "grpc-encoding",
        "application/grpc",
        "application/grpc+proto",
        "POST",
        "GET",
        "http://",
        "identity",
        "gzip",
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Maintenance/Status",
    ]
    .into_iter()
    .map(dictionary_entry)
    .collect::<Vec<_>>();
    grpc.sort();
    fs::write(directory.join("grpc.dict"), grpc.join("\n") + "\n").expect("write a dictionary");

    let command = metastore::config::command();
    let mut config = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        config.push(dictionary_entry(&format!("--{long}=")));
        config.push(dictionary_entry(&format!("{long}: ")));
        let variable = long.to_ascii_uppercase().replace('-', "_");
        config.push(dictionary_entry(&format!("METASTORE_{variable}=")));
    }
    for token in [
        "http://127.0.0.1:",
        "true",
        "false",
        "~",
        "[",
        "]",
        "- ",
        "&a",
        "*a",
        "!!str",
        "---",
        "500ms",
        "1h",
    ] {
        config.push(dictionary_entry(token));
    }
    config.sort();
    config.dedup();
    fs::write(directory.join("config.dict"), config.join("\n") + "\n").expect("write a dictionary");
}

fn dictionary_entry(token: &str) -> String {
    let escaped: String = token
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' => format!("\\{}", byte as char),
            0x20..=0x7e => (byte as char).to_string(),
            _ => format!("\\x{byte:02x}"),
        })
        .collect();
    format!("\"{escaped}\"")
}
