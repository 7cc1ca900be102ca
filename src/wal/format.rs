//! The WAL's on-disk format: pure encode/decode functions, no I/O.
//!
//! Byte-by-byte description and the reasons behind it: `docs/wal-format.md`.
//! Summary (all integers little-endian, checksums crc32c):
//!
//! ```text
//! segment file wal-<first record sequence, 16 lowercase hex>.log
//! block 0        segment header (SEGMENT_HEADER_LEN bytes used, rest zero)
//! block 1..      frames, each starting on a block boundary:
//!   0   4  magic "MSWF"
//!   4   4  header crc32c over bytes 8..48
//!   8   8  log id (random per WAL, same in every segment)
//!   16  8  frame sequence (1, 2, 3, ... across the whole WAL)
//!   24  8  first record sequence
//!   32  4  record count (>= 1)
//!   36  4  payload length (bytes of the records that follow)
//!   40  4  payload crc32c
//!   44  4  reserved, zero
//!   48  .. records: u32 length + bytes, repeated; then zeros to the block end
//! ```
//!
//! Decoders never trust a length field: every length is checked against
//! the bytes actually present (and the caller checks frame lengths against
//! the file) before anything is sliced or allocated.

use bytes::Bytes;

use super::device::{BLOCK_SIZE, round_up_to_block};

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MSWALSEG";
/// Magic at the start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"MSWF";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of block 0 that the segment header uses.
pub const SEGMENT_HEADER_LEN: usize = 44;
/// Where the first frame of a segment starts: the header owns block 0.
pub const FIRST_FRAME_OFFSET: u64 = BLOCK_SIZE as u64;
/// Bytes of the frame header; records follow directly.
pub const FRAME_HEADER_LEN: usize = 48;
/// Bytes in front of every record: its length as a u32.
pub const RECORD_PREFIX_LEN: usize = 4;
/// The largest payload a frame can describe (the length field is a u32).
pub const MAX_FRAME_PAYLOAD: usize = u32::MAX as usize;

/// Why bytes are not a valid header or frame. One enum for this layer; the
/// log turns these into `WalError::Corrupt` or a torn tail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("bad magic {found:02x?} (expected {expected:02x?})")]
    BadMagic { found: Vec<u8>, expected: Vec<u8> },
    #[error("unsupported format version {found} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("reserved header field is {found:#x}, not zero")]
    ReservedNotZero { found: u32 },
    #[error("frame holds no records")]
    EmptyFrame,
    #[error("{records} records cannot fit in a payload of {payload_length} bytes")]
    RecordCountTooLarge { records: u32, payload_length: u32 },
    #[error("payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("record {index} declares {length} bytes but only {remaining} remain in the payload")]
    RecordOverrun {
        index: u32,
        length: u32,
        remaining: usize,
    },
    #[error("payload has {extra} bytes after its last record")]
    TrailingPayload { extra: usize },
}

/// Block 0 of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Random per WAL; frames must carry the same id. Keeps frames of another
    /// WAL (or frame-shaped bytes inside a record) from ever looking valid.
    pub log_id: u64,
    /// Sequence of the first record in this segment; also the file name.
    pub first_record_sequence: u64,
    /// Frame sequence of the first frame in this segment, so a segment can be
    /// checked on its own after older segments are released.
    pub first_frame_sequence: u64,
}

/// The fixed part at the start of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub log_id: u64,
    pub frame_sequence: u64,
    pub first_record_sequence: u64,
    pub record_count: u32,
    pub payload_length: u32,
    pub payload_crc: u32,
}

impl FrameHeader {
    /// Bytes the frame occupies on disk: header + payload, padded to whole
    /// blocks. Computed in u64 so no length field can overflow it.
    pub fn frame_len(&self) -> u64 {
        frame_len_for_payload(self.payload_length as usize) as u64
    }
}

/// Bytes a frame with a `payload_length`-byte payload occupies on disk.
pub const fn frame_len_for_payload(payload_length: usize) -> usize {
    round_up_to_block(FRAME_HEADER_LEN + payload_length)
}

/// Name of the segment whose first record has `first_record_sequence`.
pub fn segment_file_name(first_record_sequence: u64) -> String {
    format!("wal-{first_record_sequence:016x}.log")
}

/// The first record sequence encoded in a segment file name, or `None` if
/// `name` is not exactly `wal-<16 lowercase hex digits>.log`.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    let lowercase_hex = |byte: u8| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
    if digits.len() != 16 || !digits.bytes().all(lowercase_hex) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Writes the segment header into `out[..SEGMENT_HEADER_LEN]`.
pub fn encode_segment_header(header: &SegmentHeader, out: &mut [u8]) {
    let out = &mut out[..SEGMENT_HEADER_LEN];
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&0u32.to_le_bytes());
    out[16..24].copy_from_slice(&header.log_id.to_le_bytes());
    out[24..32].copy_from_slice(&header.first_record_sequence.to_le_bytes());
    out[32..40].copy_from_slice(&header.first_frame_sequence.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..40]);
    out[40..44].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a segment header; `Ok(None)` if fewer than
/// [`SEGMENT_HEADER_LEN`] bytes are given.
pub fn decode_segment_header(bytes: &[u8]) -> Result<Option<SegmentHeader>, FormatError> {
    let Some(bytes) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return Ok(None);
    };
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(FormatError::BadMagic {
            found: bytes[0..8].to_vec(),
            expected: SEGMENT_MAGIC.to_vec(),
        });
    }
    // The checksum is checked before any field is believed: a torn or
    // flipped header must not be read as a different version or sequence.
    let stored = read_u32(bytes, 40);
    let computed = crc32c::crc32c(&bytes[0..40]);
    if stored != computed {
        return Err(FormatError::HeaderChecksum { stored, computed });
    }
    let version = read_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let reserved = read_u32(bytes, 12);
    if reserved != 0 {
        return Err(FormatError::ReservedNotZero { found: reserved });
    }
    Ok(Some(SegmentHeader {
        log_id: read_u64(bytes, 16),
        first_record_sequence: read_u64(bytes, 24),
        first_frame_sequence: read_u64(bytes, 32),
    }))
}

/// Writes the frame header into `out[..FRAME_HEADER_LEN]`.
pub fn encode_frame_header(header: &FrameHeader, out: &mut [u8]) {
    let out = &mut out[..FRAME_HEADER_LEN];
    out[0..4].copy_from_slice(&FRAME_MAGIC);
    out[8..16].copy_from_slice(&header.log_id.to_le_bytes());
    out[16..24].copy_from_slice(&header.frame_sequence.to_le_bytes());
    out[24..32].copy_from_slice(&header.first_record_sequence.to_le_bytes());
    out[32..36].copy_from_slice(&header.record_count.to_le_bytes());
    out[36..40].copy_from_slice(&header.payload_length.to_le_bytes());
    out[40..44].copy_from_slice(&header.payload_crc.to_le_bytes());
    out[44..48].copy_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&out[8..48]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a frame header; `Ok(None)` if fewer than [`FRAME_HEADER_LEN`]
/// bytes are given. Checks magic, header checksum and the fields that can
/// be checked without the payload; the caller checks sequences and that the
/// frame fits in the file.
pub fn decode_frame_header(bytes: &[u8]) -> Result<Option<FrameHeader>, FormatError> {
    let Some(bytes) = bytes.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    if bytes[0..4] != FRAME_MAGIC {
        return Err(FormatError::BadMagic {
            found: bytes[0..4].to_vec(),
            expected: FRAME_MAGIC.to_vec(),
        });
    }
    let stored = read_u32(bytes, 4);
    let computed = crc32c::crc32c(&bytes[8..48]);
    if stored != computed {
        return Err(FormatError::HeaderChecksum { stored, computed });
    }
    let reserved = read_u32(bytes, 44);
    if reserved != 0 {
        return Err(FormatError::ReservedNotZero { found: reserved });
    }
    let header = FrameHeader {
        log_id: read_u64(bytes, 8),
        frame_sequence: read_u64(bytes, 16),
        first_record_sequence: read_u64(bytes, 24),
        record_count: read_u32(bytes, 32),
        payload_length: read_u32(bytes, 36),
        payload_crc: read_u32(bytes, 40),
    };
    if header.record_count == 0 {
        return Err(FormatError::EmptyFrame);
    }
    // Each record needs at least its 4-byte prefix: a count that cannot fit
    // is refused here, so nothing is ever sized from it.
    if u64::from(header.record_count) * RECORD_PREFIX_LEN as u64 > u64::from(header.payload_length)
    {
        return Err(FormatError::RecordCountTooLarge {
            records: header.record_count,
            payload_length: header.payload_length,
        });
    }
    Ok(Some(header))
}

/// Checks the payload of a frame (the `header.payload_length` bytes after
/// the header) and splits it into record payloads without copying. `Ok(None)`
/// if `payload` is shorter than the header says.
pub fn decode_records(
    header: &FrameHeader,
    payload: &Bytes,
) -> Result<Option<Vec<Bytes>>, FormatError> {
    let payload_length = header.payload_length as usize;
    if payload.len() < payload_length {
        return Ok(None);
    }
    let payload = payload.slice(..payload_length);
    let computed = crc32c::crc32c(&payload);
    if computed != header.payload_crc {
        return Err(FormatError::PayloadChecksum {
            stored: header.payload_crc,
            computed,
        });
    }
    // `record_count * 4 <= payload_length` was checked with the header, so
    // this capacity is bounded by bytes that are really here.
    let mut records = Vec::with_capacity(header.record_count as usize);
    let mut position = 0usize;
    for index in 0..header.record_count {
        let remaining = payload_length - position;
        if remaining < RECORD_PREFIX_LEN {
            return Err(FormatError::RecordOverrun {
                index,
                length: RECORD_PREFIX_LEN as u32,
                remaining,
            });
        }
        let length = read_u32(&payload, position);
        position += RECORD_PREFIX_LEN;
        let remaining = payload_length - position;
        if length as usize > remaining {
            return Err(FormatError::RecordOverrun {
                index,
                length,
                remaining,
            });
        }
        records.push(payload.slice(position..position + length as usize));
        position += length as usize;
    }
    if position != payload_length {
        return Err(FormatError::TrailingPayload {
            extra: payload_length - position,
        });
    }
    Ok(Some(records))
}

/// The 4-byte prefix written in front of a record of `payload_length`
/// bytes; `None` if the length does not fit its u32.
pub fn record_prefix(payload_length: usize) -> Option<[u8; RECORD_PREFIX_LEN]> {
    u32::try_from(payload_length).ok().map(u32::to_le_bytes)
}

/// Whether every byte is zero (a never-written, preallocated region).
pub fn is_zeroed(bytes: &[u8]) -> bool {
    // Compared in chunks against a zero block: slice equality is a memcmp,
    // fast even in debug builds, and recovery checks whole segment tails.
    const ZEROS: [u8; 512] = [0; 512];
    bytes
        .chunks(ZEROS.len())
        .all(|chunk| chunk == &ZEROS[..chunk.len()])
}

/// Callers pass slices at least `at + 4` long (checked by `get(..LEN)`
/// above), so the conversion cannot fail.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(records: &[&[u8]]) -> (FrameHeader, Vec<u8>) {
        let mut payload = Vec::new();
        for record in records {
            payload.extend_from_slice(&record_prefix(record.len()).expect("small record"));
            payload.extend_from_slice(record);
        }
        let header = FrameHeader {
            log_id: 42,
            frame_sequence: 3,
            first_record_sequence: 10,
            record_count: records.len() as u32,
            payload_length: payload.len() as u32,
            payload_crc: crc32c::crc32c(&payload),
        };
        let mut bytes = vec![0u8; FRAME_HEADER_LEN];
        encode_frame_header(&header, &mut bytes);
        bytes.extend_from_slice(&payload);
        (header, bytes)
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let header = SegmentHeader {
            log_id: 7,
            first_record_sequence: 100,
            first_frame_sequence: 9,
        };
        let mut block = vec![0u8; BLOCK_SIZE];
        encode_segment_header(&header, &mut block);
        assert_eq!(decode_segment_header(&block), Ok(Some(header)));
        assert_eq!(decode_segment_header(&block[..10]), Ok(None));
        for byte in 0..SEGMENT_HEADER_LEN {
            let mut damaged = block.clone();
            damaged[byte] ^= 0x10;
            assert!(
                decode_segment_header(&damaged).is_err(),
                "flip in byte {byte} went unnoticed"
            );
        }
    }

    #[test]
    fn frame_round_trips_and_rejects_damage() {
        let (header, bytes) = frame_bytes(&[b"alpha", b"", b"gamma"]);
        let decoded = decode_frame_header(&bytes)
            .expect("valid")
            .expect("complete");
        assert_eq!(decoded, header);
        let payload = Bytes::copy_from_slice(&bytes[FRAME_HEADER_LEN..]);
        let records = decode_records(&decoded, &payload)
            .expect("valid")
            .expect("complete");
        assert_eq!(records, vec![&b"alpha"[..], b"", b"gamma"]);
        assert_eq!(decode_records(&decoded, &payload.slice(..3)), Ok(None));
        for byte in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 0x01;
            let result = decode_frame_header(&damaged).and_then(|header| match header {
                Some(header) => decode_records(
                    &header,
                    &Bytes::copy_from_slice(&damaged[FRAME_HEADER_LEN..]),
                ),
                None => Ok(None),
            });
            assert!(result.is_err(), "flip in byte {byte} went unnoticed");
        }
    }

    #[test]
    fn lying_lengths_are_refused_without_allocation() {
        // A header with a valid checksum whose count/length are absurd.
        let header = FrameHeader {
            log_id: 1,
            frame_sequence: 1,
            first_record_sequence: 1,
            record_count: u32::MAX,
            payload_length: 8,
            payload_crc: 0,
        };
        let mut bytes = vec![0u8; FRAME_HEADER_LEN];
        encode_frame_header(&header, &mut bytes);
        assert!(matches!(
            decode_frame_header(&bytes),
            Err(FormatError::RecordCountTooLarge { .. })
        ));
        // A record whose length prefix runs past the payload.
        let payload = Bytes::from(vec![0xff, 0xff, 0xff, 0xff, 1, 2]);
        let header = FrameHeader {
            record_count: 1,
            payload_length: 6,
            payload_crc: crc32c::crc32c(&payload),
            ..header
        };
        assert!(matches!(
            decode_records(&header, &payload),
            Err(FormatError::RecordOverrun { .. })
        ));
    }

    #[test]
    fn segment_names_are_strict() {
        assert_eq!(segment_file_name(0x1f), "wal-000000000000001f.log");
        assert_eq!(
            parse_segment_file_name("wal-000000000000001f.log"),
            Some(0x1f)
        );
        assert_eq!(parse_segment_file_name("wal-000000000000001F.log"), None);
        assert_eq!(parse_segment_file_name("wal-1f.log"), None);
        assert_eq!(parse_segment_file_name("wal-+00000000000001f.log"), None);
        assert_eq!(
            parse_segment_file_name("wal-000000000000001f.log.tmp"),
            None
        );
    }
}
