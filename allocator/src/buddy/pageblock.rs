//! Pageblocks and their migratetypes (`include/linux/pageblock-flags.h`,
//! `set_pageblock_migratetype`, the `fallbacks[]` table of `mm/page_alloc.c`).
//!
//! A pageblock is `1 << PAGEBLOCK_ORDER` pages. Each has one migratetype, stored in one byte
//! (Linux keeps 4 bits in the zone's `pageblock_flags`); at 512 pages per block that is
//! 0.016 bits per page. Every pageblock starts MOVABLE, as `memmap_init_range` sets it.

use crate::types::{MigrateType, PAGEBLOCK_ORDER};
use std::sync::atomic::{AtomicU8, Ordering};

/// Number of free lists per order: UNMOVABLE, MOVABLE, RECLAIMABLE and ISOLATE.
/// `MIGRATE_HIGHATOMIC` reserves are not modelled (the pool has no atomic allocations), and
/// CMA does not exist here.
pub const NR_FREE_LISTS: usize = 4;

/// Index of a free list (and the value stored per pageblock).
pub(crate) const fn list_index(mt: MigrateType) -> usize {
    match mt {
        MigrateType::Unmovable => 0,
        MigrateType::Movable => 1,
        MigrateType::Reclaimable => 2,
        // HighAtomic has no free list of its own here; never produced by the pool.
        MigrateType::HighAtomic => 1,
        MigrateType::Isolate => 3,
    }
}

/// The migratetype of free list `idx`.
pub(crate) const fn list_migratetype(idx: usize) -> MigrateType {
    match idx {
        0 => MigrateType::Unmovable,
        2 => MigrateType::Reclaimable,
        3 => MigrateType::Isolate,
        _ => MigrateType::Movable,
    }
}

/// The free lists in index order.
#[cfg(test)]
pub(crate) const LIST_TYPES: [MigrateType; NR_FREE_LISTS] = [
    MigrateType::Unmovable,
    MigrateType::Movable,
    MigrateType::Reclaimable,
    MigrateType::Isolate,
];

/// `fallbacks[]` of Linux 6.1: which free lists a request of each migratetype may steal from,
/// in order of preference.
pub(crate) fn fallbacks(mt: MigrateType) -> &'static [MigrateType] {
    match mt {
        MigrateType::Unmovable => &[MigrateType::Reclaimable, MigrateType::Movable],
        MigrateType::Movable => &[MigrateType::Reclaimable, MigrateType::Unmovable],
        MigrateType::Reclaimable => &[MigrateType::Unmovable, MigrateType::Movable],
        MigrateType::HighAtomic | MigrateType::Isolate => &[],
    }
}

/// `migratetype_is_mergeable()`: free blocks of these types may merge across pageblocks.
pub(crate) const fn migratetype_is_mergeable(mt: MigrateType) -> bool {
    matches!(
        mt,
        MigrateType::Unmovable | MigrateType::Movable | MigrateType::Reclaimable
    )
}

/// `can_steal_fallback()`: whether a fallback at `order` may take the whole pageblock.
/// (`page_group_by_mobility_disabled` is false: the pool is never that small.)
pub(crate) const fn can_steal_fallback(order: u32, start_mt: MigrateType) -> bool {
    if order >= PAGEBLOCK_ORDER {
        return true;
    }
    order >= PAGEBLOCK_ORDER / 2
        || matches!(start_mt, MigrateType::Reclaimable | MigrateType::Unmovable)
}

/// The migratetype of every pageblock of a zone; readable without the zone lock, written
/// under it.
#[derive(Debug, Default)]
pub(crate) struct Pageblocks {
    mt: Vec<AtomicU8>,
}

impl Pageblocks {
    /// `n` pageblocks, all MOVABLE.
    pub(crate) fn new(n: u64) -> Pageblocks {
        let movable = list_index(MigrateType::Movable) as u8;
        Pageblocks {
            mt: (0..n).map(|_| AtomicU8::new(movable)).collect(),
        }
    }

    /// `get_pageblock_migratetype()` of pageblock `pb`.
    #[inline]
    pub(crate) fn get(&self, pb: u64) -> MigrateType {
        list_migratetype(usize::from(self.mt[pb as usize].load(Ordering::Acquire)))
    }

    /// The free-list index ([`list_index`]) of pageblock `pb`'s migratetype.
    #[inline]
    pub(crate) fn get_index(&self, pb: u64) -> usize {
        usize::from(self.mt[pb as usize].load(Ordering::Acquire))
    }

    /// `set_pageblock_migratetype()`; the caller holds the zone lock.
    #[inline]
    pub(crate) fn set(&self, pb: u64, mt: MigrateType) {
        self.mt[pb as usize].store(list_index(mt) as u8, Ordering::Release);
    }

    /// Number of pageblocks.
    pub(crate) fn len(&self) -> u64 {
        self.mt.len() as u64
    }

    /// Bytes of memory used.
    pub(crate) fn bytes(&self) -> usize {
        self.mt.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_index_round_trips() {
        for mt in LIST_TYPES {
            assert_eq!(list_migratetype(list_index(mt)), mt);
        }
    }

    #[test]
    fn steal_rules_follow_linux() {
        assert!(can_steal_fallback(9, MigrateType::Movable));
        assert!(can_steal_fallback(4, MigrateType::Movable));
        assert!(!can_steal_fallback(3, MigrateType::Movable));
        assert!(can_steal_fallback(0, MigrateType::Unmovable));
        assert!(can_steal_fallback(0, MigrateType::Reclaimable));
        assert_eq!(fallbacks(MigrateType::Movable)[0], MigrateType::Reclaimable);
        assert!(!migratetype_is_mergeable(MigrateType::Isolate));
    }

    #[test]
    fn pageblocks_start_movable() {
        let p = Pageblocks::new(3);
        assert_eq!(p.get(2), MigrateType::Movable);
        p.set(1, MigrateType::Isolate);
        assert_eq!(p.get(1), MigrateType::Isolate);
        assert_eq!(p.len(), 3);
    }
}
