//! The allocator's own view of the process's memory, for `/healthz` and `kovn_heap_bytes`.
//!
//! The binary's global allocator is jemalloc (`main.rs`). Its statistics tell apart what RSS
//! alone cannot: a leak grows the bytes the program holds (`allocated`), while fragmentation or
//! pages not yet returned grow only what the allocator keeps resident (`resident`). Read once per
//! poll (two `mallctl` reads after an epoch advance: microseconds).

use crate::model::HeapStats;

/// jemalloc's counters now, or `None` when they cannot be read (statistics not built in, or
/// the process allocates with another allocator and the numbers would be jemalloc's unused
/// own).
pub fn stats() -> Option<HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are a snapshot taken at the last epoch advance.
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()?;
    let resident = stats::resident::read().ok()?;
    // A process whose allocations go elsewhere (a test binary) has jemalloc's bootstrap only.
    if allocated == 0 {
        return None;
    }
    Some(HeapStats { allocated_bytes: allocated as u64, resident_bytes: resident as u64 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn stats_are_absent_or_consistent() {
        // Unit tests run on the system allocator, so jemalloc holds (almost) nothing; whatever
        // it reports must still be self-consistent.
        if let Some(s) = super::stats() {
            assert!(s.resident_bytes >= s.allocated_bytes, "{s:?}");
        }
    }
}
