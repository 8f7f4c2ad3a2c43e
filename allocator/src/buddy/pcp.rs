//! Per-CPU page caches (`struct per_cpu_pages`, `pcp_allowed_order`, `order_to_pindex`,
//! `zone_batchsize`, `zone_highsize`, `nr_pcp_free`) for the orders Linux 6.1 caches:
//! 0..=`PAGE_ALLOC_COSTLY_ORDER` (3) with a list per migratetype, and pageblock order (THP,
//! 9) with one list for all migratetypes.
//!
//! Each zone has one cache per slot; a thread uses the slot it was given the first time it
//! touched any pool (round robin over the slots), so with as many slots as CPUs two threads
//! never share a cache. Each slot has its own lock (Linux: `pcp->lock`); the zone lock is
//! only taken to refill (`rmqueue_bulk`) or flush (`free_pcppages_bulk`) a batch.
//! A list entry is the block's pfn; on the THP list, whose blocks are 512-aligned, the low
//! bits also carry the migratetype the block is freed back as (`get_pcppage_migratetype`).
//!
//! Pages on a per-CPU list are allocated as far as the buddy allocator is concerned: they are
//! not in `NR_FREE_PAGES`, exactly as in Linux.

use super::pageblock::{list_index, list_migratetype};
use crate::types::{MigrateType, PAGEBLOCK_ORDER};
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `PAGE_ALLOC_COSTLY_ORDER`.
pub const PAGE_ALLOC_COSTLY_ORDER: u32 = 3;
/// `MIGRATE_PCPTYPES`.
const MIGRATE_PCPTYPES: usize = 3;
/// `NR_LOWORDER_PCP_LISTS`.
const NR_LOWORDER_PCP_LISTS: usize = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER as usize + 1);
/// `NR_PCP_LISTS`: the low-order lists plus one THP list.
pub(crate) const NR_PCP_LISTS: usize = NR_LOWORDER_PCP_LISTS + 1;

/// `pcp_allowed_order()`.
#[inline]
pub const fn pcp_allowed_order(order: u32) -> bool {
    order <= PAGE_ALLOC_COSTLY_ORDER || order == PAGEBLOCK_ORDER
}

/// `order_to_pindex()`.
#[inline]
pub(crate) fn order_to_pindex(mt: MigrateType, order: u32) -> usize {
    if order > PAGE_ALLOC_COSTLY_ORDER {
        return NR_LOWORDER_PCP_LISTS;
    }
    MIGRATE_PCPTYPES * order as usize + list_index(mt)
}

/// `pindex_to_order()`.
#[inline]
pub(crate) fn pindex_to_order(pindex: usize) -> u32 {
    if pindex == NR_LOWORDER_PCP_LISTS {
        PAGEBLOCK_ORDER
    } else {
        (pindex / MIGRATE_PCPTYPES) as u32
    }
}

/// A list entry for a block.
#[inline]
pub(crate) fn pcp_entry(pfn: u64, order: u32, mt: MigrateType) -> u64 {
    if order > PAGE_ALLOC_COSTLY_ORDER {
        pfn | list_index(mt) as u64
    } else {
        pfn
    }
}

/// The pfn of a list entry.
#[inline]
pub(crate) fn pcp_entry_pfn(entry: u64, order: u32) -> u64 {
    if order > PAGE_ALLOC_COSTLY_ORDER {
        entry & !3
    } else {
        entry
    }
}

/// The migratetype a list entry is freed back as.
#[inline]
pub(crate) fn pcp_entry_mt(entry: u64, pindex: usize) -> MigrateType {
    if pindex == NR_LOWORDER_PCP_LISTS {
        list_migratetype((entry & 3) as usize)
    } else {
        list_migratetype(pindex % MIGRATE_PCPTYPES)
    }
}

/// `struct per_cpu_pages`.
#[derive(Debug, Default)]
pub(crate) struct PerCpuPages {
    /// Pages on all lists (`count`).
    pub(crate) count: u64,
    /// Flush when `count` reaches this (`high`); 0 disables the cache.
    pub(crate) high: u64,
    /// Pages moved per refill or flush (`batch`).
    pub(crate) batch: u64,
    /// `free_factor`: grows while frees keep flushing, halves on each allocation.
    pub(crate) free_factor: u32,
    /// Lists by `order_to_pindex()`; the front is the list head.
    pub(crate) lists: [VecDeque<u64>; NR_PCP_LISTS],
}

impl PerCpuPages {
    /// `nr_pcp_free()`: how many pages to flush once `count >= high`.
    pub(crate) fn nr_pcp_free(&mut self, high: u64, batch: u64, free_high: bool) -> u64 {
        if free_high {
            return self.count;
        }
        if high < batch {
            return 1;
        }
        let min_nr_free = batch;
        let max_nr_free = high - batch;
        let batch = batch << self.free_factor.min(32);
        if batch < max_nr_free {
            self.free_factor += 1;
        }
        batch.clamp(min_nr_free, max_nr_free.max(min_nr_free))
    }
}

/// `zone_batchsize()`: about 0.1% of the zone or 1 MiB, whichever is smaller, as 2^n - 1.
pub fn zone_batchsize(managed_pages: u64) -> u64 {
    let mut batch = (managed_pages >> 10).min((1 << 20) / crate::types::PAGE_SIZE);
    batch /= 4;
    if batch < 1 {
        batch = 1;
    }
    let x = batch + batch / 2;
    // rounddown_pow_of_two(x) - 1
    (1u64 << (63 - x.leading_zeros())) - 1
}

/// `zone_highsize()` with `percpu_pagelist_high_fraction` 0: the low watermark split over the
/// CPUs of the node, at least `4 * batch`.
pub fn zone_highsize(low_wmark: u64, batch: u64, nr_split_cpus: u64) -> u64 {
    (low_wmark / nr_split_cpus.max(1)).max(batch << 2)
}

/// `zone_set_pageset_high_and_batch()`: (high, batch) for a zone.
pub fn pageset_high_and_batch(managed_pages: u64, low_wmark: u64, nr_cpus: u64) -> (u64, u64) {
    let batch = zone_batchsize(managed_pages).max(1);
    (zone_highsize(low_wmark, batch, nr_cpus), batch)
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's cache slot among `nr_slots`.
#[inline]
pub(crate) fn this_slot(nr_slots: usize) -> usize {
    let mut s = SLOT.get();
    if s == usize::MAX {
        s = assign_slot();
    }
    if s < nr_slots {
        s
    } else {
        s % nr_slots
    }
}

/// Gives the calling thread its slot number (round robin), once.
#[cold]
#[inline(never)]
fn assign_slot() -> usize {
    let v = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    SLOT.set(v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_matches_linux_examples() {
        // 4 GiB zone: min(1024, 256) / 4 = 64 -> rounddown_pow_of_two(96) - 1 = 63.
        assert_eq!(zone_batchsize(1 << 20), 63);
        // Tiny DMA zone: batch 0, raised to 1 by zone_set_pageset_high_and_batch.
        assert_eq!(zone_batchsize(3998), 0);
        assert_eq!(pageset_high_and_batch(3998, 10, 2), (5, 1));
        assert_eq!(zone_highsize(100, 63, 2), 252);
    }

    #[test]
    fn pindex_round_trips() {
        for order in [0, 1, 2, 3, 9] {
            assert!(pcp_allowed_order(order));
            for mt in MigrateType::PCPTYPES {
                let p = order_to_pindex(mt, order);
                assert_eq!(pindex_to_order(p), order);
                let e = pcp_entry(512 * 7, order, mt);
                assert_eq!(pcp_entry_pfn(e, order), 512 * 7);
                assert_eq!(pcp_entry_mt(e, p), mt);
            }
        }
        assert!(!pcp_allowed_order(4) && !pcp_allowed_order(10));
    }

    #[test]
    fn nr_pcp_free_grows_and_clamps() {
        let mut p = PerCpuPages::default();
        assert_eq!(p.nr_pcp_free(1000, 63, false), 63);
        assert_eq!(p.nr_pcp_free(1000, 63, false), 126);
        assert_eq!(p.free_factor, 2);
        assert_eq!(p.nr_pcp_free(10, 63, false), 1);
        for _ in 0..10 {
            p.nr_pcp_free(1000, 63, false);
        }
        assert_eq!(p.nr_pcp_free(1000, 63, false), 937);
    }
}
