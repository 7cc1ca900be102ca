//! Section `grpc_protocol`: hand-made gRPC bodies (unknown methods/services,
//! unknown fields, malformed framing, messages split over many DATA frames).

use bytes::Bytes;
use metastore::proto::etcdserverpb as pb;

use crate::common::GrpcResult;
use crate::harness::{Normalize, PUT, RANGE, start};
use crate::requests::{b, get, put};

#[tokio::test]
async fn diff_grpc_protocol() {
    use prost::Message;
    let mut d = start!("grpc_protocol");
    d.put("setup", put("g/a", "1")).await.ok();
    let range_msg = get("g/a").encode_to_vec();
    let frame = |flag: u8, declared: u32, payload: &[u8]| -> Bytes {
        let mut v = vec![flag];
        v.extend_from_slice(&declared.to_be_bytes());
        v.extend_from_slice(payload);
        Bytes::from(v)
    };
    let ok = frame(0, range_msg.len() as u32, &range_msg);

    d.call_raw::<pb::RangeResponse>("well-formed raw Range", RANGE, ok.clone(), true)
        .await
        .ok();
    let r = d
        .call_raw::<pb::RangeResponse>(
            "unknown method",
            "/etcdserverpb.KV/NoSuchMethod",
            ok.clone(),
            true,
        )
        .await;
    d.script_check(matches!(r, Err((12, _))), "unknown method is UNIMPLEMENTED");
    let r = d
        .call_raw::<pb::RangeResponse>(
            "unknown service",
            "/etcdserverpb.NoSuchService/Range",
            ok.clone(),
            true,
        )
        .await;
    d.script_check(
        matches!(r, Err((12, _))),
        "unknown service is UNIMPLEMENTED",
    );
    d.call_raw::<pb::RangeResponse>("unknown package", "/nosuchpkg.KV/Range", ok.clone(), true)
        .await
        .ok();

    // Unknown fields must be skipped (newer clients send fields we do not know).
    let mut with_unknown = range_msg.clone();
    with_unknown.extend_from_slice(&[0xf8, 0x06, 0x01]); // field 111, varint 1
    with_unknown.extend_from_slice(&[0x82, 0x07, 0x02, b'h', b'i']); // field 112, bytes "hi"
    d.call_raw::<pb::RangeResponse>(
        "Range with unknown fields",
        RANGE,
        frame(0, with_unknown.len() as u32, &with_unknown),
        true,
    )
    .await
    .ok();
    // An empty message is a valid RangeRequest with an empty key.
    d.call_raw::<pb::RangeResponse>("empty message (empty key)", RANGE, frame(0, 0, &[]), true)
        .await
        .ok();
    // Malformed input: compare codes only.
    d.call_raw::<pb::RangeResponse>("no message at all", RANGE, Bytes::new(), false)
        .await
        .ok();
    d.call_raw::<pb::RangeResponse>(
        "truncated prefix",
        RANGE,
        Bytes::from_static(&[0, 0, 0]),
        false,
    )
    .await
    .ok();
    d.call_raw::<pb::RangeResponse>(
        "declared length longer than body",
        RANGE,
        frame(0, range_msg.len() as u32 + 10, &range_msg),
        false,
    )
    .await
    .ok();
    d.call_raw::<pb::RangeResponse>(
        "invalid protobuf",
        RANGE,
        frame(0, 4, &[0x0a, 0x10, b'x', b'y']),
        false,
    )
    .await
    .ok();
    d.call_raw::<pb::RangeResponse>(
        "wrong wire type for key",
        RANGE,
        frame(0, 2, &[0x08, 0x01]),
        false,
    )
    .await
    .ok();
    d.call_raw::<pb::RangeResponse>(
        "compressed flag without grpc-encoding",
        RANGE,
        frame(1, range_msg.len() as u32, &range_msg),
        false,
    )
    .await
    .ok();
    let mut two = ok.to_vec();
    two.extend_from_slice(&ok);
    d.call_raw::<pb::RangeResponse>(
        "two messages in a unary request",
        RANGE,
        Bytes::from(two),
        false,
    )
    .await
    .ok();
    // Message split over many DATA frames (prefix split too).
    let big_put = pb::PutRequest {
        key: b("g/chunked"),
        value: Bytes::from(vec![b'c'; 3000]),
        prev_kv: true,
        ..Default::default()
    }
    .encode_to_vec();
    let big_put = frame(0, big_put.len() as u32, &big_put);
    for chunk in [1usize, 3, 7, 1000] {
        d.steps += 1;
        let e = d.etcd.unary_raw_chunked(PUT, big_put.clone(), chunk).await;
        let o = d.other.unary_raw_chunked(PUT, big_put.clone(), chunk).await;
        let dec = |r: GrpcResult<Bytes>| {
            r.map(|b| {
                let mut m = pb::PutResponse::decode(b).unwrap_or_default();
                m.normalize();
                m
            })
        };
        let (e, o) = (dec(e), dec(o));
        if e != o {
            d.failures.push(format!(
                "[grpc_protocol] Put sent in {chunk}-byte DATA frames: etcd {e:?} vs {} {o:?}",
                d.other_name
            ));
        }
    }
    d.call_raw::<pb::RangeResponse>("still works afterwards", RANGE, ok.clone(), true)
        .await
        .ok();
    d.finish();
}
