//! A cheap pass over an HPACK header block (RFC 7541) that counts what
//! decoding it would cost, without decoding: no Huffman, no dynamic table,
//! no allocation. Representations are self-delimiting (a prefix integer,
//! then length-prefixed strings), so one pass over the bytes finds every
//! field, every insertion into the dynamic table and every table size
//! update.
//!
//! `inbound` runs it on every header block a client sends, before the
//! decoders (ours and h2's) see the block, and refuses blocks whose decoding
//! would be abuse: more fields than the advertised header list size can
//! hold, dynamic table churn, size updates the RFC forbids.

use thiserror::Error;

/// What one header block would make a decoder do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    /// Header fields the block decodes to.
    pub fields: usize,
    /// Literal fields with incremental indexing: dynamic table insertions.
    pub insertions: usize,
    /// Dynamic table size updates.
    pub size_updates: usize,
}

/// The bounds a block must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLimits {
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise.
    pub max_header_list_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE we advertise (the decoder's table limit).
    pub max_table_size: usize,
    /// Dynamic table insertions allowed in one block.
    pub max_insertions: usize,
}

#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum ScanError {
    /// RFC 7541 §5.1, §5.2: an integer or string that runs past the block,
    /// or an integer too large to be a length or index.
    #[error("malformed HPACK representation at offset {0}")]
    Malformed(usize),
    /// RFC 7541 §4.2: a size update after the first field.
    #[error("dynamic table size update after a header field")]
    SizeUpdateNotAtStart,
    /// RFC 7541 §4.2: at most two size updates start a block.
    #[error("more than two dynamic table size updates in one block")]
    TooManySizeUpdates,
    /// RFC 7541 §6.3: above the table size the decoder allows.
    #[error("dynamic table size update to {0} bytes, above the advertised limit")]
    TableSizeAboveLimit(usize),
    /// RFC 9113 §6.5.2: every field counts 32 octets plus its name and
    /// value, so this many fields cannot fit the advertised list size.
    #[error("{0} header fields cannot fit SETTINGS_MAX_HEADER_LIST_SIZE")]
    TooManyFields(usize),
    #[error("{0} dynamic table insertions in one header block")]
    TooManyInsertions(usize),
}

impl ScanError {
    /// RFC 9113 §4.3: "A decoding error in a field block MUST be treated as
    /// a connection error of type COMPRESSION_ERROR." Bounds we chose (not
    /// the RFC's) are abuse: ENHANCE_YOUR_CALM (RFC 9113 §7).
    pub fn is_decoding_error(self) -> bool {
        matches!(
            self,
            ScanError::Malformed(_)
                | ScanError::SizeUpdateNotAtStart
                | ScanError::TableSizeAboveLimit(_)
        )
    }
}

/// RFC 9113 §6.5.2: "The value is based on the uncompressed size of header
/// fields, including the length of the name and value in octets plus an
/// overhead of 32 octets for each header field."
pub const FIELD_OVERHEAD: usize = 32;

/// Scans a complete header block.
pub fn scan(block: &[u8], limits: &BlockLimits) -> Result<BlockShape, ScanError> {
    let mut shape = BlockShape::default();
    let mut position = 0;
    let max_fields = limits.max_header_list_size / FIELD_OVERHEAD;
    while position < block.len() {
        let start = position;
        let first = block[position];
        if first & 0x80 != 0 {
            // §6.1 Indexed Header Field: 1xxxxxxx, index (7-bit prefix).
            read_integer(block, &mut position, 7)?;
            shape.fields += 1;
        } else if first & 0x40 != 0 {
            // §6.2.1 Literal with Incremental Indexing: 01xxxxxx.
            read_literal(block, &mut position, 6)?;
            shape.fields += 1;
            shape.insertions += 1;
        } else if first & 0x20 != 0 {
            // §6.3 Dynamic Table Size Update: 001xxxxx.
            // §4.2: "This dynamic table size update MUST occur at the
            // beginning of the first header block following the change to
            // the dynamic table size."
            if shape.fields > 0 {
                return Err(ScanError::SizeUpdateNotAtStart);
            }
            let size = read_integer(block, &mut position, 5)?;
            // §6.3: "The new maximum size MUST be lower than or equal to the
            // limit determined by the protocol using HPACK. A value that
            // exceeds this limit MUST be treated as a decoding error."
            if size > limits.max_table_size {
                return Err(ScanError::TableSizeAboveLimit(size));
            }
            shape.size_updates += 1;
            // §4.2: "...the smallest maximum table size that occurs in that
            // interval MUST be signaled in a dynamic table size update. The
            // final maximum size is always signaled, resulting in at most
            // two dynamic table size updates."
            if shape.size_updates > 2 {
                return Err(ScanError::TooManySizeUpdates);
            }
        } else {
            // §6.2.2 Literal without Indexing (0000xxxx) and §6.2.3 Literal
            // Never Indexed (0001xxxx): 4-bit prefix.
            read_literal(block, &mut position, 4)?;
            shape.fields += 1;
        }
        debug_assert!(position > start, "every representation consumes bytes");
        if shape.fields > max_fields {
            return Err(ScanError::TooManyFields(shape.fields));
        }
        if shape.insertions > limits.max_insertions {
            return Err(ScanError::TooManyInsertions(shape.insertions));
        }
    }
    // §4.2 again: a block that ends with a size update (no field after it)
    // is fine for the RFC; loona's decoder refuses it, h2's accepts it.
    Ok(shape)
}

/// §6.2: a name index (0: a literal name follows), then a value string.
fn read_literal(block: &[u8], position: &mut usize, prefix_bits: u8) -> Result<(), ScanError> {
    let name_index = read_integer(block, position, prefix_bits)?;
    if name_index == 0 {
        skip_string(block, position)?;
    }
    skip_string(block, position)
}

/// §5.2: H bit, length (7-bit prefix), then that many octets.
fn skip_string(block: &[u8], position: &mut usize) -> Result<(), ScanError> {
    let start = *position;
    let length = read_integer(block, position, 7)?;
    let end = position
        .checked_add(length)
        .filter(|end| *end <= block.len())
        .ok_or(ScanError::Malformed(start))?;
    *position = end;
    Ok(())
}

/// §5.1 prefix integers. Values beyond 2^28 are refused: no index, length
/// or table size we accept comes near it (§5.1: "excessively large integer
/// encodings ... MUST be treated as a decoding error").
fn read_integer(block: &[u8], position: &mut usize, prefix_bits: u8) -> Result<usize, ScanError> {
    let start = *position;
    let malformed = ScanError::Malformed(start);
    let mask = (1u8 << prefix_bits) - 1;
    let first = *block.get(*position).ok_or(malformed)?;
    *position += 1;
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*position).ok_or(malformed)?;
        *position += 1;
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        if shift > 21 {
            return Err(malformed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BlockLimits = BlockLimits {
        max_header_list_size: 16 * 1024,
        max_table_size: 4096,
        max_insertions: 64,
    };

    fn encode(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        encoder.encode(fields.iter().map(|(name, value)| (*name, *value)))
    }

    #[test]
    fn counts_what_an_encoder_produced() {
        let block = encode(&[
            (b":method", b"POST"),
            (b":path", b"/etcdserverpb.KV/Put"),
            (b"content-type", b"application/grpc"),
            (b"x-custom", b"value"),
        ]);
        let shape = scan(&block, &LIMITS).expect("valid");
        assert_eq!(shape.fields, 4);
        // loona inserts only fields whose name no table holds.
        assert_eq!(shape.insertions, 1);
        assert_eq!(shape.size_updates, 0);
    }

    #[test]
    fn agrees_with_a_real_decoder_on_random_blocks() {
        let seed = std::env::var("HPACK_SCAN_TEST_SEED")
            .ok()
            .map(|text| text.parse().expect("HPACK_SCAN_TEST_SEED must be a u64"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |elapsed| elapsed.as_nanos() as u64)
            });
        println!("agrees_with_a_real_decoder_on_random_blocks: HPACK_SCAN_TEST_SEED={seed}");
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let limits = BlockLimits {
            max_insertions: usize::MAX,
            ..LIMITS
        };
        for case in 0..2_000 {
            let mut encoder = loona_hpack::Encoder::new();
            let count = (next() % 40) as usize;
            let fields: Vec<(Vec<u8>, Vec<u8>)> = (0..count)
                .map(|_| {
                    let name = format!("n{}", next() % 8).into_bytes();
                    let value = vec![b'a' + (next() % 26) as u8; (next() % 300) as usize];
                    (name, value)
                })
                .collect();
            let block = encoder.encode(fields.iter().map(|(name, value)| (&name[..], &value[..])));
            let shape = scan(&block, &limits).expect("valid block");
            let decoded = loona_hpack::Decoder::new()
                .decode(&block)
                .expect("decodable");
            assert_eq!(shape.fields, decoded.len(), "seed {seed} case {case}");
            // Every byte of the block is accounted for: a truncated block
            // never scans as valid.
            if !block.is_empty() {
                let cut = (next() as usize) % block.len();
                if let Ok(partial) = scan(&block[..cut], &limits) {
                    assert!(partial.fields < shape.fields, "seed {seed} case {case}");
                }
            }
        }
    }

    #[test]
    fn size_updates_follow_rfc_7541_section_4_2() {
        // 0x3f 0xe1 0x1f = size update to 4096; 0x20 = size update to 0.
        let update_4096: &[u8] = &[0x3f, 0xe1, 0x1f];
        let indexed_method = 0x82;
        let two = [&[0x20][..], update_4096, &[indexed_method]].concat();
        assert_eq!(scan(&two, &LIMITS).map(|shape| shape.size_updates), Ok(2));
        let three = [&[0x20, 0x20][..], update_4096, &[indexed_method]].concat();
        assert_eq!(scan(&three, &LIMITS), Err(ScanError::TooManySizeUpdates));
        let late = [&[indexed_method][..], &[0x20]].concat();
        assert_eq!(scan(&late, &LIMITS), Err(ScanError::SizeUpdateNotAtStart));
        // 0x3f 0xe2 0x1f = 4097.
        assert_eq!(
            scan(&[0x3f, 0xe2, 0x1f], &LIMITS),
            Err(ScanError::TableSizeAboveLimit(4097))
        );
    }

    #[test]
    fn field_and_insertion_bounds() {
        let bomb = vec![0xbe; 16 * 1024];
        assert_eq!(
            scan(&bomb, &LIMITS),
            Err(ScanError::TooManyFields(16 * 1024 / FIELD_OVERHEAD + 1))
        );
        let fine = vec![0xbe; 16 * 1024 / FIELD_OVERHEAD];
        assert!(scan(&fine, &LIMITS).is_ok());
        // Literal with incremental indexing, indexed name 1, empty value.
        let inserts = [0x41, 0x00].repeat(65);
        assert_eq!(
            scan(&inserts, &LIMITS),
            Err(ScanError::TooManyInsertions(65))
        );
        assert!(scan(&inserts[..128], &LIMITS).is_ok());
    }

    #[test]
    fn malformed_blocks_never_panic() {
        for block in [
            &[0xff][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x40, 0x05, b'a'],
            &[0x00, 0x7f],
            &[0x00, 0x01, b'a', 0x7f, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ] {
            assert!(
                matches!(scan(block, &LIMITS), Err(ScanError::Malformed(_))),
                "{block:?}"
            );
        }
    }
}
