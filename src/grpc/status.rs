//! gRPC status codes and the `grpc-status` / `grpc-message` trailers.
//!
//! Pure data and header conversion, no I/O. The wire rules come from
//! PROTOCOL-HTTP2.md in the grpc/grpc repository; each rule is paraphrased
//! next to the code that enforces it.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Trailer carrying the numeric status code.
pub const GRPC_STATUS_HEADER: &str = "grpc-status";
/// Trailer carrying the human-readable, percent-encoded status message.
pub const GRPC_MESSAGE_HEADER: &str = "grpc-message";

/// The 17 canonical gRPC status codes. Discriminants are the wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// Maps a wire value to a code. Values outside 0..=16 become `Unknown`,
    /// which is what the gRPC status-code document asks receivers to do with
    /// codes they do not recognise.
    pub fn from_i32(value: i32) -> Code {
        match value {
            0 => Code::Ok,
            1 => Code::Cancelled,
            2 => Code::Unknown,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            6 => Code::AlreadyExists,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            11 => Code::OutOfRange,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            15 => Code::DataLoss,
            16 => Code::Unauthenticated,
            _ => Code::Unknown,
        }
    }

    /// Name for logs and metric labels. Spelled exactly like grpc-go's
    /// `codes.Code.String()` ("OK", "Canceled", ...), because etcd exports
    /// `grpc_code` labels with those strings and existing dashboards and
    /// alerts match on them.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "Canceled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Outcome of an RPC: a code plus a human-readable message (plain UTF-8 here;
/// percent-encoding happens only at the header boundary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    pub fn ok() -> Status {
        Status::new(Code::Ok, String::new())
    }

    pub fn cancelled(message: impl Into<String>) -> Status {
        Status::new(Code::Cancelled, message)
    }

    pub fn invalid_argument(message: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, message)
    }

    pub fn deadline_exceeded(message: impl Into<String>) -> Status {
        Status::new(Code::DeadlineExceeded, message)
    }

    pub fn not_found(message: impl Into<String>) -> Status {
        Status::new(Code::NotFound, message)
    }

    pub fn resource_exhausted(message: impl Into<String>) -> Status {
        Status::new(Code::ResourceExhausted, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Status {
        Status::new(Code::FailedPrecondition, message)
    }

    pub fn out_of_range(message: impl Into<String>) -> Status {
        Status::new(Code::OutOfRange, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Status {
        Status::new(Code::Unimplemented, message)
    }

    pub fn internal(message: impl Into<String>) -> Status {
        Status::new(Code::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Status {
        Status::new(Code::Unavailable, message)
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }

    /// Builds the trailers (or Trailers-Only headers) for this status.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(2);
        self.write_to_header_map(&mut headers);
        headers
    }

    /// Inserts `grpc-status` and, when the message is non-empty,
    /// `grpc-message` into an existing map (for example one that already
    /// holds `content-type` for a Trailers-Only response).
    pub fn write_to_header_map(&self, headers: &mut HeaderMap) {
        // Spec: Status is "grpc-status" followed by one or more ASCII decimal
        // digits, i.e. the code written as a plain decimal number.
        headers.insert(
            HeaderName::from_static(GRPC_STATUS_HEADER),
            HeaderValue::from(self.code.as_i32()),
        );
        // Spec: Status-Message is optional, so an empty message is simply
        // left out instead of sending an empty header.
        if self.message.is_empty() {
            headers.remove(GRPC_MESSAGE_HEADER);
            return;
        }
        let encoded = percent_encode_message(&self.message);
        // The encoder only emits bytes in 0x20..=0x7E, all legal in a header
        // value, so this cannot fail; if it ever did, dropping the optional
        // message is better than dropping the status.
        match HeaderValue::from_str(&encoded) {
            Ok(value) => {
                headers.insert(HeaderName::from_static(GRPC_MESSAGE_HEADER), value);
            }
            Err(_) => {
                headers.remove(GRPC_MESSAGE_HEADER);
            }
        }
    }

    /// Reads `grpc-status` / `grpc-message` back. Returns `None` when there
    /// is no `grpc-status` header at all (for example the first HEADERS frame
    /// of a normal response, whose status arrives later in the trailers).
    ///
    /// Tolerant by design: a `grpc-status` that is not a decimal number maps
    /// to `Unknown` rather than being discarded, and broken percent escapes
    /// in the message are kept literally.
    pub fn from_header_map(headers: &HeaderMap) -> Option<Status> {
        let status_value = headers.get(GRPC_STATUS_HEADER)?;
        let code = parse_status_code(status_value.as_bytes());
        let message = headers
            .get(GRPC_MESSAGE_HEADER)
            .map(|value| percent_decode_message(value.as_bytes()))
            .unwrap_or_default();
        Some(Status { code, message })
    }
}

impl fmt::Display for Status {
    /// Same shape as grpc-go's error string, which is what etcd users are
    /// used to reading in logs.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "rpc error: code = {} desc = {}",
            self.code.as_str(),
            self.message
        )
    }
}

impl std::error::Error for Status {}

/// Spec: grpc-status is 1*DIGIT. Anything else (empty, sign, letters, a
/// number too big for i32) is a peer bug; report it as `Unknown`.
fn parse_status_code(value: &[u8]) -> Code {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Code::Unknown;
    }
    let parsed = std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<i32>().ok());
    match parsed {
        Some(number) => Code::from_i32(number),
        None => Code::Unknown,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Spec: the message is UTF-8 that is then percent-encoded. Bytes that may
/// stay as they are ("Percent-Byte-Unencoded") are space and visible ASCII,
/// 0x20..=0x7E, except '%' itself; every other byte is written as '%'
/// followed by two hex digits.
///
/// Additionally a space at the very start or end is escaped: HTTP/2 (RFC
/// 9113 section 8.2.1) forbids field values that begin or end with
/// whitespace, and "%20" is an equally valid encoding of a space under the
/// gRPC grammar, so every decoder accepts it.
pub fn percent_encode_message(message: &str) -> String {
    let bytes = message.as_bytes();
    let last_index = bytes.len().saturating_sub(1);
    // Most messages need no escaping; size for that common case.
    let mut encoded = String::with_capacity(bytes.len());
    for (index, &byte) in bytes.iter().enumerate() {
        let is_edge_space = byte == b' ' && (index == 0 || index == last_index);
        let is_unreserved = (0x20..=0x7E).contains(&byte) && byte != b'%';
        if is_unreserved && !is_edge_space {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX_UPPER[usize::from(byte & 0x0F)]));
        }
    }
    encoded
}

/// Spec: when decoding an invalid value the receiver must not fail or throw
/// the message away; it may leave broken %-sequences as they are. We decode
/// every well-formed "%XX" (either hex case), keep malformed ones literally,
/// and turn bytes that are not valid UTF-8 after decoding into U+FFFD.
pub fn percent_decode_message(encoded: &[u8]) -> String {
    let mut decoded = Vec::with_capacity(encoded.len());
    let mut index = 0;
    while let Some(&byte) = encoded.get(index) {
        if byte == b'%' {
            let high = encoded.get(index + 1).copied().and_then(hex_value);
            let low = encoded.get(index + 2).copied().and_then(hex_value);
            if let (Some(high), Some(low)) = (high, low) {
                decoded.push((high << 4) | low);
                index += 3;
                continue;
            }
        }
        decoded.push(byte);
        index += 1;
    }
    match String::from_utf8(decoded) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CODES: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    #[test]
    fn codes_round_trip_through_wire_values() {
        for (expected_value, code) in ALL_CODES.iter().enumerate() {
            let value = code.as_i32();
            assert_eq!(usize::try_from(value).ok(), Some(expected_value));
            assert_eq!(Code::from_i32(value), *code);
        }
        assert_eq!(Code::from_i32(17), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        assert_eq!(Code::from_i32(i32::MAX), Code::Unknown);
    }

    #[test]
    fn code_names_match_grpc_go() {
        assert_eq!(Code::Ok.as_str(), "OK");
        assert_eq!(Code::Cancelled.as_str(), "Canceled");
        assert_eq!(Code::InvalidArgument.as_str(), "InvalidArgument");
        assert_eq!(Code::Unauthenticated.as_str(), "Unauthenticated");
        assert_eq!(Code::ResourceExhausted.to_string(), "ResourceExhausted");
    }

    #[test]
    fn helpers_set_the_expected_code() {
        let cases = [
            (Status::cancelled("x"), Code::Cancelled),
            (Status::invalid_argument("x"), Code::InvalidArgument),
            (Status::deadline_exceeded("x"), Code::DeadlineExceeded),
            (Status::not_found("x"), Code::NotFound),
            (Status::resource_exhausted("x"), Code::ResourceExhausted),
            (Status::failed_precondition("x"), Code::FailedPrecondition),
            (Status::out_of_range("x"), Code::OutOfRange),
            (Status::unimplemented("x"), Code::Unimplemented),
            (Status::internal("x"), Code::Internal),
            (Status::unavailable("x"), Code::Unavailable),
        ];
        for (status, code) in cases {
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), "x");
        }
        assert!(Status::ok().is_ok());
        assert_eq!(Status::ok().message(), "");
    }

    #[test]
    fn ok_status_has_no_message_header() {
        let headers = Status::ok().to_header_map();
        assert_eq!(
            headers.get(GRPC_STATUS_HEADER).map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        assert!(headers.get(GRPC_MESSAGE_HEADER).is_none());
        assert_eq!(Status::from_header_map(&headers), Some(Status::ok()));
    }

    #[test]
    fn status_header_is_decimal() {
        let headers = Status::new(Code::Unauthenticated, "").to_header_map();
        assert_eq!(
            headers.get(GRPC_STATUS_HEADER).map(|v| v.as_bytes()),
            Some(&b"16"[..])
        );
    }

    #[test]
    fn message_percent_encoding() {
        assert_eq!(percent_encode_message("plain text ok"), "plain text ok");
        assert_eq!(percent_encode_message("100%"), "100%25");
        assert_eq!(percent_encode_message("a\nb\tc"), "a%0Ab%09c");
        assert_eq!(percent_encode_message("\u{7f}"), "%7F");
        // U+00E9 is C3 A9 in UTF-8; U+1F600 is F0 9F 98 80.
        assert_eq!(percent_encode_message("caf\u{e9}"), "caf%C3%A9");
        assert_eq!(percent_encode_message("\u{1F600}"), "%F0%9F%98%80");
        assert_eq!(percent_encode_message(" x "), "%20x%20");
        assert_eq!(percent_encode_message(" "), "%20");
        assert_eq!(percent_encode_message(""), "");
    }

    #[test]
    fn message_round_trips_through_headers() {
        let messages = [
            "etcdserver: mvcc: required revision has been compacted",
            "100% done, 0% left",
            "%%%",
            "caf\u{e9} \u{1F600} \u{4e2d}\u{6587}",
            "line one\nline two\r\n\ttabbed\u{0}nul",
            "  leading and trailing  ",
            "%zz is not an escape",
        ];
        for message in messages {
            let status = Status::invalid_argument(message);
            let headers = status.to_header_map();
            let value = headers
                .get(GRPC_MESSAGE_HEADER)
                .map(|v| v.as_bytes().to_vec());
            let value = value.unwrap_or_default();
            assert!(value.iter().all(|byte| (0x20..=0x7E).contains(byte)));
            assert_ne!(value.first(), Some(&b' '));
            assert_ne!(value.last(), Some(&b' '));
            assert_eq!(Status::from_header_map(&headers), Some(status));
        }
    }

    #[test]
    fn malformed_escapes_are_kept_literally() {
        assert_eq!(percent_decode_message(b"50%"), "50%");
        assert_eq!(percent_decode_message(b"50%4"), "50%4");
        assert_eq!(percent_decode_message(b"%zz%41"), "%zzA");
        assert_eq!(percent_decode_message(b"%4g"), "%4g");
        assert_eq!(percent_decode_message(b"%%41"), "%A");
        assert_eq!(percent_decode_message(b"%c3%A9"), "\u{e9}");
        // A lone continuation byte is not UTF-8: replaced, not dropped.
        assert_eq!(percent_decode_message(b"a%80b"), "a\u{FFFD}b");
    }

    #[test]
    fn from_header_map_is_tolerant() {
        assert_eq!(Status::from_header_map(&HeaderMap::new()), None);

        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS_HEADER, HeaderValue::from_static("not-a-number"));
        let status = Status::from_header_map(&headers);
        assert_eq!(status.map(|s| s.code()), Some(Code::Unknown));

        for bad in ["", "-1", "+3", "99999999999", "17"] {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_STATUS_HEADER, HeaderValue::from_static(bad));
            let status = Status::from_header_map(&headers);
            assert_eq!(status.map(|s| s.code()), Some(Code::Unknown), "{bad:?}");
        }

        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS_HEADER, HeaderValue::from_static("5"));
        headers.insert(
            GRPC_MESSAGE_HEADER,
            HeaderValue::from_static("key%20not found%"),
        );
        assert_eq!(
            Status::from_header_map(&headers),
            Some(Status::not_found("key not found%"))
        );
    }

    #[test]
    fn write_to_header_map_replaces_stale_message() {
        let mut headers = Status::internal("old").to_header_map();
        Status::ok().write_to_header_map(&mut headers);
        assert_eq!(Status::from_header_map(&headers), Some(Status::ok()));
    }

    #[test]
    fn display_matches_grpc_go() {
        let status = Status::invalid_argument("etcdserver: key is not provided");
        assert_eq!(
            status.to_string(),
            "rpc error: code = InvalidArgument desc = etcdserver: key is not provided"
        );
        let error: Box<dyn std::error::Error> = Box::new(status);
        assert!(error.to_string().starts_with("rpc error"));
    }
}
