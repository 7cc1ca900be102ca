//! The pure checks `grpc::server` applies to a call's request headers and
//! first message, each fed the whole input: `grpc-timeout`
//! (`grpc::timeout`), the `:path` method name, the content type, and the
//! key the slow-request log shows (read from the raw request bytes).
//! `grpc_connection` drives the same checks in place, through h2.
//!
//! Properties:
//! - an accepted `grpc-timeout` has 1-8 digits and a unit, and our own
//!   encoding of the duration parses back to no less (the client side must
//!   never shorten a deadline);
//! - an accepted path is exactly `/service/method`;
//! - for a canonically encoded `PutRequest`, the slow-request log shows
//!   the (prefix of the) key prost decodes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use metastore::grpc::server::{MethodPath, is_grpc_content_type, key_prefix};
use metastore::grpc::timeout::{MAX_TIMEOUT_DIGITS, encode_grpc_timeout, parse_grpc_timeout};
use metastore::proto::etcdserverpb::PutRequest;
use metastore_fuzz::BoundedAllocator;
use prost::Message;

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

/// Characters the log shows of a key before "...".
const SHOWN: usize = 32;

fuzz_target!(|data: &[u8]| {
    if let Ok(duration) = parse_grpc_timeout(data) {
        let (_unit, digits) = data.split_last().expect("accepted, so not empty");
        assert!((1..=MAX_TIMEOUT_DIGITS).contains(&digits.len()));
        assert!(digits.iter().all(u8::is_ascii_digit));
        let encoded = encode_grpc_timeout(duration);
        let again = parse_grpc_timeout(encoded.as_bytes()).expect("our own encoding parses");
        assert!(again >= duration, "{encoded} shortens {duration:?}");
    }

    let _ = is_grpc_content_type(data);

    if let Ok(path) = std::str::from_utf8(data)
        && let Some(method) = MethodPath::parse(path)
    {
        assert_eq!(format!("/{}/{}", method.service, method.method), path);
    }

    let message = Bytes::copy_from_slice(data);
    let put = MethodPath::parse("/etcdserverpb.KV/Put").expect("valid path");
    let shown = key_prefix(&put, Some(&message));
    assert!(shown.chars().count() <= SHOWN + 3, "the log shows too much");
    if let Ok(request) = PutRequest::decode(data)
        && !request.key.is_empty()
        && request.encode_to_vec() == data
    {
        let key = &request.key[..request.key.len().min(SHOWN)];
        let mut expected = String::from_utf8_lossy(key).into_owned();
        if request.key.len() > SHOWN {
            expected.push_str("...");
        }
        assert_eq!(
            shown, expected,
            "the log names another key than the request"
        );
    }
    let status = MethodPath::parse("/etcdserverpb.Maintenance/Status").expect("valid path");
    assert_eq!(
        key_prefix(&status, Some(&message)),
        "",
        "Status names no key"
    );
});
