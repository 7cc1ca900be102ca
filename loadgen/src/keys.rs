//! Keys and values the way etcd's `benchmark` tool makes them, so the
//! same flags produce the same key distribution: a key is `--key-size`
//! zero bytes with the key number written at the front as a Go
//! `binary.PutVarint` (zig-zag varint); the number is uniform over
//! `--key-space-size` or, with `--sequential-keys`, the request number
//! modulo it. Values are random bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// Makes the keys of one workload.
#[derive(Debug, Clone)]
pub struct KeyGenerator {
    /// Prepended to every key (empty for etcd's layout); lets a watch
    /// benchmark put all keys under one watched prefix.
    prefix: Bytes,
    key_size: usize,
    key_space_size: u64,
    sequential: bool,
}

impl KeyGenerator {
    /// Fails when a key number cannot fit in `key_size` bytes (etcd's tool
    /// would panic there).
    pub fn new(
        prefix: &[u8],
        key_size: usize,
        key_space_size: u64,
        sequential: bool,
    ) -> Result<Self, String> {
        if key_space_size == 0 {
            return Err("--key-space-size must be at least 1".into());
        }
        let needed = varint_len(zigzag(key_space_size - 1));
        if key_size < needed {
            return Err(format!(
                "--key-size {key_size} is too small for --key-space-size {key_space_size}: \
                 key numbers need {needed} bytes"
            ));
        }
        Ok(Self {
            prefix: Bytes::copy_from_slice(prefix),
            key_size,
            key_space_size,
            sequential,
        })
    }

    /// The key for request `sequence`, drawing from `rng` unless sequential.
    pub fn key(&self, sequence: u64, rng: &mut Rng) -> Bytes {
        if self.sequential {
            self.sequential_key(sequence)
        } else {
            self.key_number(rng.below(self.key_space_size))
        }
    }

    /// The `sequence`-th key in order, wrapping at the key space.
    pub fn sequential_key(&self, sequence: u64) -> Bytes {
        self.key_number(sequence % self.key_space_size)
    }

    /// The key with number `number` (which must be below the key space).
    pub fn key_number(&self, number: u64) -> Bytes {
        let mut key = BytesMut::with_capacity(self.prefix.len() + self.key_size);
        key.put_slice(&self.prefix);
        let mut value = zigzag(number);
        let mut written = 0;
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                key.put_u8(byte);
                written += 1;
                break;
            }
            key.put_u8(byte | 0x80);
            written += 1;
        }
        key.put_bytes(0, self.key_size - written);
        key.freeze()
    }

    pub fn prefix(&self) -> &Bytes {
        &self.prefix
    }
}

fn zigzag(number: u64) -> u64 {
    // Go's PutVarint encodes int64 x as uint64(x<<1) ^ uint64(x>>63); key
    // numbers are never negative, so that is x << 1.
    number << 1
}

fn varint_len(mut value: u64) -> usize {
    let mut length = 1;
    while value >= 0x80 {
        value >>= 7;
        length += 1;
    }
    length
}

/// `size` random bytes (etcd's values are random, so they do not
/// compress).
pub fn random_value(size: usize, rng: &mut Rng) -> Bytes {
    let mut value = BytesMut::with_capacity(size);
    while value.len() < size {
        let word = rng.next_u64().to_le_bytes();
        let take = word.len().min(size - value.len());
        value.put_slice(&word[..take]);
    }
    value.freeze()
}

/// SplitMix64: tiny, fast, and good enough to pick keys; seeded per client
/// so clients do not share state.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in `0..bound` (bound > 0), by Lemire's multiply-shift.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with probability `probability`.
    pub fn chance(&mut self, probability: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= probability
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_gos_put_varint_layout() {
        let keys = KeyGenerator::new(b"", 8, 1000, true).unwrap();
        let mut rng = Rng::new(1);
        // PutVarint(5) = zig-zag 10 = 0x0a.
        assert_eq!(&keys.key(5, &mut rng)[..], &[0x0a, 0, 0, 0, 0, 0, 0, 0]);
        // PutVarint(100) = zig-zag 200 = 0xc8 0x01.
        assert_eq!(
            &keys.key(100, &mut rng)[..],
            &[0xc8, 0x01, 0, 0, 0, 0, 0, 0]
        );
        // Sequential keys wrap at the key space.
        assert_eq!(keys.key(1005, &mut rng), keys.key(5, &mut rng));
    }

    #[test]
    fn sequential_keys_cover_the_space_exactly() {
        let keys = KeyGenerator::new(b"p/", 4, 300, true).unwrap();
        let mut rng = Rng::new(1);
        let distinct: std::collections::HashSet<Bytes> = (0..600)
            .map(|sequence| keys.key(sequence, &mut rng))
            .collect();
        assert_eq!(distinct.len(), 300);
        assert!(
            distinct
                .iter()
                .all(|key| key.starts_with(b"p/") && key.len() == 6)
        );
    }

    #[test]
    fn too_small_key_size_is_an_error() {
        let error = KeyGenerator::new(b"", 1, 1000, false).unwrap_err();
        assert!(error.contains("--key-size 1"), "{error}");
        assert!(KeyGenerator::new(b"", 1, 64, false).is_ok());
        assert!(KeyGenerator::new(b"", 8, 0, false).is_err());
    }

    #[test]
    fn random_keys_stay_in_the_space() {
        let keys = KeyGenerator::new(b"", 8, 10, false).unwrap();
        let allowed: std::collections::HashSet<Bytes> =
            (0..10).map(|number| keys.key_number(number)).collect();
        let mut rng = Rng::new(7);
        for sequence in 0..1000 {
            assert!(allowed.contains(&keys.key(sequence, &mut rng)));
        }
    }

    #[test]
    fn values_have_the_requested_size() {
        let mut rng = Rng::new(3);
        assert_eq!(random_value(0, &mut rng).len(), 0);
        assert_eq!(random_value(13, &mut rng).len(), 13);
        assert_eq!(random_value(256, &mut rng).len(), 256);
    }
}
