//! A fast hasher for the integer keys heapwatch's tables use on every record.

use std::{
    collections::{HashMap, HashSet},
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

/// A set with [`FoldHasher`].
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FoldHasher>>;

/// Bytes a map of `capacity` with `entry_bytes` entries takes: the table
/// has a power-of-two number of buckets, 8 for every 7 entries it may hold
/// (fewer below 8), each an entry and a control byte, and 16 control bytes
/// more. An empty map has no table.
pub fn table_bytes(capacity: usize, entry_bytes: usize) -> u64 {
    let buckets = match capacity {
        0 => return 0,
        1..7 => capacity + 1,
        _ => capacity / 7 * 8,
    };
    (buckets * (entry_bytes + 1) + 16) as u64
}

#[cfg(test)]
mod tests {
    use std::hash::Hash;

    use super::*;

    #[test]
    fn table_bytes_counts_every_bucket_of_the_table() {
        for entries in [1, 3, 7, 8, 100, 917_505, 1_000_000] {
            let mut map = FastMap::<u64, u64>::default();
            map.extend((0..entries).map(|k| (k, k)));
            let capacity = map.capacity();
            let buckets = (table_bytes(capacity, 16) - 16) / 17;
            assert!(buckets.is_power_of_two(), "{entries}: {buckets} buckets");
            assert!(
                buckets as usize > capacity,
                "{entries}: {buckets} <= {capacity}"
            );
            assert!(
                buckets as usize <= 2 * capacity.max(2),
                "{entries}: {buckets}"
            );
        }
        assert_eq!(table_bytes(0, 16), 0);
    }

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
