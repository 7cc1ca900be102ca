//! Protobuf message and enum types of the etcd v3 API.
//!
//! The types are generated at build time (see `build.rs`) from our own
//! `.proto` files under `proto/`, which are written to be wire-compatible with
//! etcd 3.4: package, service, method and message names, field numbers and enum
//! values follow etcd's `rpc.proto`, `kv.proto`, `auth.proto`, `v3lock.proto`
//! and `v3election.proto`. Each module below is named after its protobuf
//! package, so a message's full name (e.g. `etcdserverpb.RangeRequest`) maps to
//! `proto::etcdserverpb::RangeRequest`. All `bytes` fields are `bytes::Bytes`.
//!
//! Only messages and enums are generated; service/client code is not (the gRPC
//! layer is ours). The modules must stay siblings: generated code refers to
//! other packages as `super::mvccpb`, `super::authpb`, and so on.

/// Package `mvccpb`: `KeyValue` and `Event`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// Package `authpb`: stored user/role/permission records.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

/// Package `etcdserverpb`: requests and responses of the KV, Watch, Lease,
/// Cluster, Maintenance and Auth services.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// Package `v3lockpb`: messages of the Lock service.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// Package `v3electionpb`: messages of the Election service.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

/// Package `grpc.health.v1`: the standard gRPC health checking protocol.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod grpc_health_v1 {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
}

#[cfg(test)]
mod tests {
    use super::etcdserverpb::{Compare, RangeRequest, compare};
    use bytes::Bytes;
    use prost::Message;

    #[test]
    fn range_request_field_tags() {
        let req = RangeRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"b"),
            limit: 5,
            ..Default::default()
        };
        let buf = req.encode_to_vec();
        // key = 1 (LEN), range_end = 2 (LEN), limit = 3 (VARINT).
        assert_eq!(buf, [0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 5]);

        let back = RangeRequest::decode(buf.as_slice()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn compare_mod_revision_uses_field_6() {
        let cmp = Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: Bytes::from_static(b"k"),
            target_union: Some(compare::TargetUnion::ModRevision(7)),
            range_end: Bytes::new(),
        };
        let buf = cmp.encode_to_vec();
        // result/EQUAL (0) is omitted; target = 2 (VARINT) MOD = 2;
        // key = 3 (LEN); mod_revision = 6 (VARINT) -> tag (6 << 3) | 0 = 0x30.
        assert_eq!(buf, [0x10, 2, 0x1a, 1, b'k', 0x30, 7]);

        let back = Compare::decode(buf.as_slice()).unwrap();
        assert_eq!(
            back.target_union,
            Some(compare::TargetUnion::ModRevision(7))
        );
    }

    #[test]
    fn compare_range_end_uses_field_64() {
        let cmp = Compare {
            range_end: Bytes::from_static(b"z"),
            ..Default::default()
        };
        // Field 64, LEN: tag (64 << 3) | 2 = 514 = varint [0x82, 0x04].
        assert_eq!(cmp.encode_to_vec(), [0x82, 0x04, 1, b'z']);
    }
}
