//! etcd's Range semantics on top of a raw key-ordered result: revision
//! filters, sort, limit and `more`, `count`, keys_only (etcd 3.4's
//! `applierV3backend.Range`).

use std::cmp::Ordering;

use super::key_space::RangeResult;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;

/// How many keys to fetch before filtering: etcd fetches everything when it
/// must sort or filter, and one extra otherwise to learn `more`.
pub fn fetch_limit(request: &RangeRequest) -> usize {
    let needs_all = request.sort_order != SortOrder::None as i32
        || request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    if needs_all || request.limit <= 0 {
        0
    } else {
        request.limit as usize + 1
    }
}

/// Shapes `result` into the response etcd would give. `header_revision` is
/// the store revision the read ran against (etcd reports the current
/// revision even for historical reads).
pub fn build_response(
    request: &RangeRequest,
    result: RangeResult,
    header_revision: i64,
) -> RangeResponse {
    let mut key_values = result.key_values;
    let keep = |predicate: &dyn Fn(&KeyValue) -> bool, key_values: &mut Vec<KeyValue>| {
        key_values.retain(|kv| predicate(kv))
    };
    if request.max_mod_revision != 0 {
        keep(
            &|kv| kv.mod_revision <= request.max_mod_revision,
            &mut key_values,
        );
    }
    if request.min_mod_revision != 0 {
        keep(
            &|kv| kv.mod_revision >= request.min_mod_revision,
            &mut key_values,
        );
    }
    if request.max_create_revision != 0 {
        keep(
            &|kv| kv.create_revision <= request.max_create_revision,
            &mut key_values,
        );
    }
    if request.min_create_revision != 0 {
        keep(
            &|kv| kv.create_revision >= request.min_create_revision,
            &mut key_values,
        );
    }
    sort(request, &mut key_values);
    let mut more = false;
    if request.limit > 0 && key_values.len() > request.limit as usize {
        key_values.truncate(request.limit as usize);
        more = true;
    }
    if request.keys_only {
        for key_value in &mut key_values {
            key_value.value = bytes::Bytes::new();
        }
    }
    RangeResponse {
        header: Some(ResponseHeader {
            revision: header_revision,
            ..Default::default()
        }),
        kvs: key_values,
        more,
        count: result.count as i64,
    }
}

/// etcd sorts ascending by default only when the target is not the key
/// (results already come in key order). Sorting is stable, so ties keep key
/// order in both directions, as etcd's sort does on the small inputs where
/// the difference could show.
fn sort(request: &RangeRequest, key_values: &mut [KeyValue]) {
    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let compare = |left: &KeyValue, right: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => left.key.cmp(&right.key),
            SortTarget::Version => left.version.cmp(&right.version),
            SortTarget::Create => left.create_revision.cmp(&right.create_revision),
            SortTarget::Mod => left.mod_revision.cmp(&right.mod_revision),
            SortTarget::Value => left.value.cmp(&right.value),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => key_values.sort_by(compare),
        SortOrder::Descend => key_values.sort_by(|left, right| compare(right, left)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(key: &'static str, mod_revision: i64, version: i64) -> KeyValue {
        KeyValue {
            key: Bytes::from_static(key.as_bytes()),
            mod_revision,
            create_revision: mod_revision,
            version,
            ..Default::default()
        }
    }

    #[test]
    fn count_ignores_filters_and_limit_sets_more() {
        let result = RangeResult {
            key_values: vec![kv("a", 2, 1), kv("b", 3, 1), kv("c", 4, 1)],
            count: 3,
        };
        let request = RangeRequest {
            limit: 1,
            min_mod_revision: 3,
            ..Default::default()
        };
        let response = build_response(&request, result, 9);
        assert_eq!(response.count, 3);
        assert!(response.more);
        assert_eq!(response.kvs.len(), 1);
        assert_eq!(response.kvs[0].key, Bytes::from_static(b"b"));
        assert_eq!(response.header.map(|header| header.revision), Some(9));
    }

    #[test]
    fn non_key_target_defaults_to_ascending_and_ties_keep_key_order() {
        let result = RangeResult {
            key_values: vec![kv("a", 5, 2), kv("b", 3, 1), kv("c", 4, 2)],
            count: 3,
        };
        let request = RangeRequest {
            sort_target: SortTarget::Version as i32,
            ..Default::default()
        };
        let keys: Vec<_> = build_response(&request, result, 9)
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(
            keys,
            vec![
                Bytes::from_static(b"b"),
                Bytes::from_static(b"a"),
                Bytes::from_static(b"c")
            ]
        );
    }
}
