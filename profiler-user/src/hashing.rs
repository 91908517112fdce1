//! A fast hasher for the integer keys heapwatch's tables use on every record.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// Hashes integer keys (addresses, process and thread ids, stack hashes)
/// with a folded 128-bit multiply: fast, and every bit of the key (an
/// address's alignment zeros included) spreads into the low bits a table
/// indexes by and the high bits it tags entries with. SipHash, the
/// default, took a quarter of the daemon's time on these keys.
#[derive(Default)]
pub struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        let product = u128::from(self.0 ^ value) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (product as u64) ^ (product >> 64) as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A hash map of integer keys, hashed by [`FoldHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FoldHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::Hash;

    use super::*;

    #[test]
    fn consecutive_process_ids_spread_over_the_low_bits_of_their_hashes() {
        let hash = |id: u32| {
            let mut hasher = FoldHasher::default();
            id.hash(&mut hasher);
            hasher.finish()
        };
        let buckets: std::collections::HashSet<u64> =
            (1000..5096u32).map(|id| hash(id) & 4095).collect();
        assert!(
            buckets.len() > 2048,
            "{} of 4096 buckets used",
            buckets.len()
        );
    }
}
