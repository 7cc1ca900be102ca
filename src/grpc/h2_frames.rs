//! The HTTP/2 frame layout (RFC 9113 §3.4, §4.1, §6.2) as far as the layers
//! that read a client's bytes before h2 does (`inbound`, `authority`)
//! need it.

/// RFC 9113 §3.4: the client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const PREFACE_LEN: usize = PREFACE.len();
/// RFC 9113 §4.1: every frame starts with a 9-octet header.
pub const FRAME_HEADER_LEN: usize = 9;
pub const FRAME_DATA: u8 = 0x0;
pub const FRAME_HEADERS: u8 = 0x1;
pub const FRAME_SETTINGS: u8 = 0x4;
pub const FRAME_PING: u8 = 0x6;
pub const FRAME_CONTINUATION: u8 = 0x9;
pub const FLAG_END_STREAM: u8 = 0x1;
/// SETTINGS and PING acknowledgements (RFC 9113 §6.5, §6.7).
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;
/// RFC 9113 §6.2: stream dependency (4 octets) + weight (1 octet).
pub const PRIORITY_LEN: usize = 5;

/// A frame header (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
}

impl FrameHeader {
    pub fn decode(bytes: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            length: (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            // "R: A reserved 1-bit field ... MUST be ignored when receiving."
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    /// HEADERS and CONTINUATION carry header block fragments.
    pub fn carries_header_block(&self) -> bool {
        self.kind == FRAME_HEADERS || self.kind == FRAME_CONTINUATION
    }
}

/// The payload of a HEADERS frame was shorter than its padding or
/// priority fields say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPadding;

/// RFC 9113 §6.2: [Pad Length] [Priority] Fragment [Padding]. Returns the
/// priority fields (if present) and the header block fragment.
pub fn split_headers_payload(
    flags: u8,
    payload: &[u8],
) -> Result<(Option<[u8; PRIORITY_LEN]>, &[u8]), BadPadding> {
    let mut body = payload;
    let mut padding = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&pad_len, rest) = body.split_first().ok_or(BadPadding)?;
        padding = usize::from(pad_len);
        body = rest;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        if body.len() < PRIORITY_LEN {
            return Err(BadPadding);
        }
        let mut bytes = [0u8; PRIORITY_LEN];
        bytes.copy_from_slice(&body[..PRIORITY_LEN]);
        priority = Some(bytes);
        body = &body[PRIORITY_LEN..];
    }
    // "If the length of the padding is the length of the frame payload or
    // greater, the recipient MUST treat this as a connection error."
    if padding > body.len() {
        return Err(BadPadding);
    }
    Ok((priority, &body[..body.len() - padding]))
}
