//! Per-flow maps reach their steady size while the table fills, not minutes later.
//!
//! The flow table and the exporter's per-flow memo are `HashMap`s of tens of thousands of
//! entries under constant churn (flows come, flows expire). A removal leaves a tombstone; when
//! the tombstones have used up the free slots, the map rehashes in place if its entries fill at
//! most half of its buckets, else it doubles. So a churning map holding more than half of its
//! buckets doubles once, at a moment set by the churn: on a node of ~40,000 table entries that
//! was +20 MiB of live heap each, minutes after the table had filled (RELIABILITY.md,
//! "Endurance"), which looks like a leak and is not. [`keep_headroom`] gives such a map twice
//! its entries in capacity as it grows, which is where the churn takes it anyway: its memory
//! follows the number of flows from the start, and a churning map then rehashes in place, or
//! into a map of the same size, about once per its length in new entries. After a flood, the
//! same call gives the memory back.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Below this many entries a map is left to the standard library's own policy.
const FLOOR: usize = 4096;

/// Keeps the map's capacity between twice and eight times its entries (once per poll, after
/// the poll's insertions and removals): reserves room for twice its entries as it grows, and
/// gives a flood's memory back once the entries fell to an eighth of it (the gap keeps a map
/// near either edge from rehashing every poll). Cheap when inside (two comparisons);
/// otherwise one rehash.
pub fn keep_headroom<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    let len = map.len();
    if len >= FLOOR && map.capacity() < 2 * len {
        map.reserve(len);
    } else if map.capacity() > 8 * len.max(FLOOR) {
        map.shrink_to(2 * len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_growing_map_keeps_room_for_twice_its_entries() {
        let mut m: HashMap<u32, u64> = HashMap::new();
        for i in 0..100_000 {
            m.insert(i, 0);
            if i % 1000 == 0 {
                keep_headroom(&mut m);
                if m.len() >= FLOOR {
                    assert!(m.capacity() >= 2 * m.len(), "{} entries, capacity {}", m.len(), m.capacity());
                }
            }
        }
    }

    #[test]
    fn a_churning_map_stays_within_four_times_its_entries() {
        // 40,000 live entries, 400 new and 400 removed per "poll", for 1,000 polls.
        let mut m: HashMap<u32, u64> = (0..40_000).map(|i| (i, 0)).collect();
        let (mut lo, mut hi) = (0u32, 40_000u32);
        for _ in 0..1_000 {
            for _ in 0..400 {
                m.remove(&lo);
                m.insert(hi, 0);
                lo += 1;
                hi += 1;
            }
            keep_headroom(&mut m);
            assert!(m.capacity() >= 2 * m.len() && m.capacity() <= 4 * m.len(), "capacity {}", m.capacity());
        }
        assert_eq!(m.len(), 40_000);
    }

    #[test]
    fn a_flood_is_given_back_once_it_is_over() {
        let mut m: HashMap<u32, u64> = (0..200_000).map(|i| (i, 0)).collect();
        keep_headroom(&mut m);
        let flood = m.capacity();
        m.retain(|&k, _| k < 80_000);
        // Still more than an eighth of the flood: kept (no rehash back and forth; removals'
        // tombstones only lower the reported capacity a little).
        keep_headroom(&mut m);
        assert!(m.capacity() > flood / 2, "capacity {} after {flood}", m.capacity());
        m.retain(|&k, _| k < 10_000);
        keep_headroom(&mut m);
        assert!(
            m.capacity() >= 20_000 && m.capacity() < flood / 8,
            "capacity {} after {flood}",
            m.capacity()
        );
        assert_eq!(m.len(), 10_000);
    }

    #[test]
    fn small_maps_are_left_alone() {
        let mut m: HashMap<u32, u8> = (0..4_000).map(|i| (i, 0)).collect();
        let cap = m.capacity();
        keep_headroom(&mut m);
        assert_eq!(m.capacity(), cap);
    }
}
