//! The key ranges etcd requests name with `key` and `range_end`.
//!
//! etcd's rules (`mkGteRange` and the index):
//! - empty `range_end`: the single key `key`;
//! - `range_end == "\0"`: every key `>= key` ("from key");
//! - otherwise the half-open interval `[key, range_end)`, empty when
//!   `range_end <= key`.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    Single(Bytes),
    /// `[start, end)`; `end == None` means unbounded.
    Span {
        start: Bytes,
        end: Option<Bytes>,
    },
}

impl KeyRange {
    pub fn from_request(key: &[u8], range_end: &[u8]) -> Self {
        let start = Bytes::copy_from_slice(key);
        match range_end {
            [] => KeyRange::Single(start),
            [0] => KeyRange::Span { start, end: None },
            end => KeyRange::Span {
                start,
                end: Some(Bytes::copy_from_slice(end)),
            },
        }
    }

    /// Same as [`from_request`](Self::from_request) without copying.
    pub fn from_bytes(key: &Bytes, range_end: &Bytes) -> Self {
        match &range_end[..] {
            [] => KeyRange::Single(key.clone()),
            [0] => KeyRange::Span {
                start: key.clone(),
                end: None,
            },
            _ => KeyRange::Span {
                start: key.clone(),
                end: Some(range_end.clone()),
            },
        }
    }

    pub fn start(&self) -> &Bytes {
        match self {
            KeyRange::Single(key) => key,
            KeyRange::Span { start, .. } => start,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(single) => single == key,
            KeyRange::Span { start, end } => {
                key >= &start[..] && end.as_ref().is_none_or(|end| key < &end[..])
            }
        }
    }

    /// True when no key can fall in the range.
    pub fn is_empty(&self) -> bool {
        match self {
            KeyRange::Single(_) => false,
            KeyRange::Span { start, end } => end.as_ref().is_some_and(|end| end <= start),
        }
    }
}

/// The end of the range of keys starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented and what follows dropped; `\0` (every key) if there is none.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_match_etcd() {
        assert_eq!(prefix_end(b"abc"), Bytes::from_static(b"abd"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
        assert_eq!(prefix_end(b""), Bytes::from_static(b"\0"));
    }

    #[test]
    fn request_forms() {
        assert_eq!(
            KeyRange::from_request(b"a", b""),
            KeyRange::Single(Bytes::from_static(b"a"))
        );
        let from_key = KeyRange::from_request(b"b", b"\0");
        assert!(from_key.contains(b"zzz") && !from_key.contains(b"a"));
        let prefix = KeyRange::from_request(b"p/", b"p0");
        assert!(prefix.contains(b"p/x") && !prefix.contains(b"p0") && !prefix.contains(b"p"));
        assert!(KeyRange::from_request(b"b", b"a").is_empty());
        assert!(!KeyRange::from_request(b"b", b"a").contains(b"b"));
    }
}
