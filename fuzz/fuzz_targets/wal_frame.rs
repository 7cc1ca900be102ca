//! The WAL's pure frame and segment-header decoders (`wal::format`).
//!
//! Input: `[mode][bytes...]`. Mode bit 0 "forges" the checksums first
//! (payload crc, then header crc, then the segment header's crc, computed
//! over the bytes as given), so mutations get past the crc32c checks to
//! the field checks behind them; without it the checksums guard as on disk.
//! The same bytes are decoded as a frame and as a segment header, and as
//! text as a segment file name.
//!
//! Properties:
//! - a decoded frame header re-encodes to exactly the bytes it came from;
//! - accepted records lie inside the payload, are `record_count` many, and
//!   with their length prefixes fill `payload_length` exactly;
//! - a decoded segment header re-encodes to its bytes;
//! - a parsed segment file name is the name its sequence is written as.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use metastore::wal::format::{
    FRAME_HEADER_LEN, RECORD_PREFIX_LEN, SEGMENT_HEADER_LEN, decode_frame_header, decode_records,
    decode_segment_header, encode_frame_header, encode_segment_header, parse_segment_file_name,
    segment_file_name,
};
use metastore_fuzz::{BoundedAllocator, Input};

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

/// Rewrites the checksums of `bytes` (as a frame and as a segment header;
/// the layouts overlap, so the segment header's comes last and may spoil
/// the frame's, which is itself an input worth having).
fn forge_checksums(bytes: &mut [u8]) {
    if bytes.len() >= FRAME_HEADER_LEN {
        let payload_length = u32::from_le_bytes([bytes[36], bytes[37], bytes[38], bytes[39]]);
        let end = FRAME_HEADER_LEN
            .saturating_add(payload_length as usize)
            .min(bytes.len());
        let payload_crc = crc32c::crc32c(&bytes[FRAME_HEADER_LEN..end]);
        bytes[40..44].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&bytes[8..48]);
        bytes[4..8].copy_from_slice(&header_crc.to_le_bytes());
    }
    if bytes.len() >= SEGMENT_HEADER_LEN && bytes.starts_with(b"MSWALSEG") {
        let crc = crc32c::crc32c(&bytes[0..40]);
        bytes[40..44].copy_from_slice(&crc.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let mut bytes = input.rest().to_vec();
    if mode & 1 != 0 {
        forge_checksums(&mut bytes);
    }

    if let Ok(Some(header)) = decode_frame_header(&bytes) {
        let mut encoded = [0u8; FRAME_HEADER_LEN];
        encode_frame_header(&header, &mut encoded);
        assert_eq!(
            encoded[..],
            bytes[..FRAME_HEADER_LEN],
            "the header re-encodes differently"
        );
        let payload = Bytes::copy_from_slice(&bytes[FRAME_HEADER_LEN..]);
        if let Ok(Some(records)) = decode_records(&header, &payload) {
            assert_eq!(records.len(), header.record_count as usize);
            let filled: usize = records
                .iter()
                .map(|record| RECORD_PREFIX_LEN + record.len())
                .sum();
            assert_eq!(
                filled, header.payload_length as usize,
                "records do not fill the payload"
            );
            assert!(header.frame_len() >= (FRAME_HEADER_LEN + filled) as u64);
        }
    }

    if let Ok(Some(header)) = decode_segment_header(&bytes) {
        let mut encoded = [0u8; SEGMENT_HEADER_LEN];
        encode_segment_header(&header, &mut encoded);
        assert_eq!(
            encoded[..],
            bytes[..SEGMENT_HEADER_LEN],
            "the segment header re-encodes differently"
        );
    }

    if let Ok(name) = std::str::from_utf8(&bytes)
        && let Some(sequence) = parse_segment_file_name(name)
    {
        assert_eq!(segment_file_name(sequence), name);
    }
});
