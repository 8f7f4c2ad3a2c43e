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
//!
//! # Extension lists for orders 4..=8 (not in Linux)
//! Linux sends every request of order 4..=8 (`> PAGE_ALLOC_COSTLY_ORDER`, below pageblock
//! order) to the buddy lists under `zone->lock`. The pool's callers (guest memory, hotplug
//! blocks) allocate and free such blocks all the time, so each slot also caches them: one
//! *extension list* per (order 4..=8, migratetype), [`ext_pindex`], kept after the kernel's
//! lists in the same array. Why separate from the kernel's accounting: with large blocks
//! counted in `pcp->count`, the kernel's flush (round robin over all lists once `count >=
//! high`) would keep emptying the order-0 lists, which then refill `batch` pages at a time;
//! so the extension pages are counted in `ext_count` (and in `count`, which stays "pages on
//! all lists") but not against `high`, and they have their own, simpler policy:
//! * an empty extension list is refilled with [`ext_batch`] blocks (≈ `8 * batch` pages,
//!   at least 4 blocks) under one zone lock, after the full `zone_watermark_ok()` check, as
//!   `rmqueue_bulk()`;
//! * a free that makes a list longer than `2 * ext_batch` blocks, or the slot's extension
//!   pages more than [`ext_high`] (`4 * high`), returns the oldest `ext_batch` blocks of that
//!   list (and, while still above, of the other extension lists) to the buddy lists.
//!
//! So a slot holds at most `high + ext_high` pages (plus one batch) instead of `high`. The
//! extension obeys everything else the kernel's lists obey: pages of isolated pageblocks and
//! frees while the zone's per-CPU lists are disabled bypass it, `drain_pages()` (isolation,
//! offlining, [`super::Pool::drain_all_pages`]) empties it, and a hit checks only the order-0
//! part of the watermark, like a kernel per-CPU hit of order > 0.

use super::pageblock::{list_index, list_migratetype};
use crate::types::{MigrateType, PAGEBLOCK_ORDER};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `PAGE_ALLOC_COSTLY_ORDER`.
pub const PAGE_ALLOC_COSTLY_ORDER: u32 = 3;
/// `MIGRATE_PCPTYPES`.
const MIGRATE_PCPTYPES: usize = 3;
/// `NR_LOWORDER_PCP_LISTS`.
const NR_LOWORDER_PCP_LISTS: usize = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER as usize + 1);
/// `NR_PCP_LISTS`: the low-order lists plus one THP list.
pub(crate) const NR_PCP_LISTS: usize = NR_LOWORDER_PCP_LISTS + 1;
/// Lowest order of the extension lists (see the module docs).
pub(crate) const PCP_EXT_MIN_ORDER: u32 = PAGE_ALLOC_COSTLY_ORDER + 1;
/// Highest order of the extension lists.
pub(crate) const PCP_EXT_MAX_ORDER: u32 = PAGEBLOCK_ORDER - 1;
/// Extension lists: one per (order 4..=8, migratetype).
pub(crate) const NR_EXT_LISTS: usize =
    MIGRATE_PCPTYPES * (PCP_EXT_MAX_ORDER - PCP_EXT_MIN_ORDER + 1) as usize;
/// All lists of a slot: the kernel's, then the extension lists.
pub(crate) const NR_ALL_LISTS: usize = NR_PCP_LISTS + NR_EXT_LISTS;

/// `pcp_allowed_order()`: the orders Linux 6.1 caches per CPU.
#[inline]
pub const fn pcp_allowed_order(order: u32) -> bool {
    order <= PAGE_ALLOC_COSTLY_ORDER || order == PAGEBLOCK_ORDER
}

/// Whether `order` has extension lists (4..=8; not in Linux, see the module docs).
#[inline]
pub const fn pcp_ext_order(order: u32) -> bool {
    order >= PCP_EXT_MIN_ORDER && order <= PCP_EXT_MAX_ORDER
}

/// `PCP_PINDEX[order][list_index(mt)]`: the per-CPU list (kernel or extension) of every
/// order up to pageblock order and per-CPU migratetype; one load on the fast paths.
const PCP_PINDEX: [[u8; MIGRATE_PCPTYPES]; PAGEBLOCK_ORDER as usize + 1] = {
    let mut t = [[0u8; MIGRATE_PCPTYPES]; PAGEBLOCK_ORDER as usize + 1];
    let mut order = 0;
    while order <= PAGEBLOCK_ORDER as usize {
        let mut m = 0;
        while m < MIGRATE_PCPTYPES {
            t[order][m] = if order == PAGEBLOCK_ORDER as usize {
                NR_LOWORDER_PCP_LISTS
            } else if order > PAGE_ALLOC_COSTLY_ORDER as usize {
                NR_PCP_LISTS + MIGRATE_PCPTYPES * (order - PCP_EXT_MIN_ORDER as usize) + m
            } else {
                MIGRATE_PCPTYPES * order + m
            } as u8;
            m += 1;
        }
        order += 1;
    }
    t
};

/// The per-CPU list of `order` for free-list index `mti` (0..3: UNMOVABLE, MOVABLE,
/// RECLAIMABLE), by table; `None` for order 10 or another index.
#[inline(always)]
pub(crate) fn pcp_pindex_of(mti: usize, order: u32) -> Option<usize> {
    Some(usize::from(*PCP_PINDEX.get(order as usize)?.get(mti)?))
}

/// The per-CPU list (kernel or extension) a block of `order` and migratetype `mt` goes to,
/// or `None` if the order has none (10) or `mt` is not a per-CPU type: the reference the
/// table of [`pcp_pindex_of`] is tested against.
#[cfg(test)]
pub(crate) fn pcp_pindex(mt: MigrateType, order: u32) -> Option<usize> {
    if !matches!(
        mt,
        MigrateType::Unmovable | MigrateType::Movable | MigrateType::Reclaimable
    ) {
        return None;
    }
    if pcp_allowed_order(order) {
        Some(order_to_pindex(mt, order))
    } else if pcp_ext_order(order) {
        Some(ext_pindex(mt, order))
    } else {
        None
    }
}

/// Index of the extension list of (`mt`, `order`) in [`PerCpuPages::lists`].
#[inline]
pub(crate) fn ext_pindex(mt: MigrateType, order: u32) -> usize {
    NR_PCP_LISTS + MIGRATE_PCPTYPES * (order - PCP_EXT_MIN_ORDER) as usize + list_index(mt)
}

/// Blocks an empty extension list of `order` is refilled with, and flushed by:
/// `batch >> (order - 3)` (≈ `8 * batch` pages), at least 4, so that the lists of orders
/// 7 and 8, which hold few blocks, do not refill and flush every few operations (what the
/// slot keeps in all is bounded by [`ext_high`] either way). (Defined, and unused, for the
/// kernel's orders too, so that callers can compute it without a branch.)
#[inline]
pub(crate) fn ext_batch(batch: u64, order: u32) -> u64 {
    (batch.max(1) >> order.saturating_sub(PAGE_ALLOC_COSTLY_ORDER)).max(4)
}

/// All ones if list `l` is an extension list, else 0 (for branch-free bookkeeping).
#[inline(always)]
pub(crate) fn ext_mask(l: usize) -> u64 {
    u64::from(l >= NR_PCP_LISTS).wrapping_neg()
}

/// Pages a slot may keep on its extension lists: `4 * high`.
#[inline]
pub(crate) fn ext_high(high: u64) -> u64 {
    high << 2
}

/// `order_to_pindex()`.
#[inline]
pub(crate) fn order_to_pindex(mt: MigrateType, order: u32) -> usize {
    if order > PAGE_ALLOC_COSTLY_ORDER {
        return NR_LOWORDER_PCP_LISTS;
    }
    MIGRATE_PCPTYPES * order as usize + list_index(mt)
}

/// `pindex_to_order()`, extension lists included.
#[inline]
pub(crate) fn pindex_to_order(pindex: usize) -> u32 {
    if pindex == NR_LOWORDER_PCP_LISTS {
        PAGEBLOCK_ORDER
    } else if pindex >= NR_PCP_LISTS {
        ((pindex - NR_PCP_LISTS) / MIGRATE_PCPTYPES) as u32 + PCP_EXT_MIN_ORDER
    } else {
        (pindex / MIGRATE_PCPTYPES) as u32
    }
}

/// A list entry for a block that is freed back as free-list index `mti`
/// ([`list_index`] of its migratetype).
#[inline]
pub(crate) fn pcp_entry(pfn: u64, order: u32, mti: usize) -> u64 {
    if order == PAGEBLOCK_ORDER {
        pfn | mti as u64
    } else {
        pfn
    }
}

/// The pfn of a list entry.
#[inline]
pub(crate) fn pcp_entry_pfn(entry: u64, order: u32) -> u64 {
    if order == PAGEBLOCK_ORDER {
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
    } else if pindex >= NR_PCP_LISTS {
        list_migratetype((pindex - NR_PCP_LISTS) % MIGRATE_PCPTYPES)
    } else {
        list_migratetype(pindex % MIGRATE_PCPTYPES)
    }
}

/// One per-CPU list (`struct list_head` of `per_cpu_pages`): a double-ended queue of list
/// entries in a ring buffer whose capacity is a power of two. The front is the list head
/// (frees push there and allocations pop there, LIFO as in Linux), the back the tail
/// (refills append there and flushes take the oldest from there). Hand-written instead of
/// `VecDeque` so that the push and pop of the hit paths are a handful of inlined
/// instructions (`VecDeque::push_front` is an out-of-line call).
#[derive(Debug, Default, Clone)]
pub(crate) struct PcpList {
    /// The ring; its length is the capacity (0 or a power of two).
    buf: Vec<u64>,
    /// Index of the front entry.
    head: usize,
    /// Entries held.
    len: usize,
}

impl PcpList {
    /// Entries on the list.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn mask(&self) -> usize {
        self.buf.len().wrapping_sub(1)
    }

    /// `list_add()`: puts `entry` at the head.
    #[inline]
    pub(crate) fn push_front(&mut self, entry: u64) {
        if self.len == self.buf.len() {
            self.grow();
        }
        self.head = self.head.wrapping_sub(1) & self.mask();
        let h = self.head;
        self.buf[h] = entry;
        self.len += 1;
    }

    /// `list_add_tail()`: puts `entry` at the tail.
    #[inline]
    pub(crate) fn push_back(&mut self, entry: u64) {
        if self.len == self.buf.len() {
            self.grow();
        }
        let i = (self.head + self.len) & self.mask();
        self.buf[i] = entry;
        self.len += 1;
    }

    /// Takes the entry at the head.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let entry = self.buf[self.head];
        self.head = (self.head + 1) & self.mask();
        self.len -= 1;
        Some(entry)
    }

    /// Takes the entry at the tail (the oldest).
    #[inline]
    pub(crate) fn pop_back(&mut self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        Some(self.buf[(self.head + self.len) & self.mask()])
    }

    /// The entries from head to tail.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).map(move |i| self.buf[(self.head + i) & self.mask()])
    }

    /// Doubles the capacity (at least 8), keeping the order.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let cap = (self.buf.len() * 2).max(8);
        let mut buf = Vec::with_capacity(cap);
        buf.extend(self.iter());
        buf.resize(cap, 0);
        self.buf = buf;
        self.head = 0;
    }
}

/// `struct per_cpu_pages`.
#[derive(Debug, Default)]
pub(crate) struct PerCpuPages {
    /// Pages on all lists (`count`), the extension lists included.
    pub(crate) count: u64,
    /// Pages on the extension lists (not counted against `high`).
    pub(crate) ext_count: u64,
    /// Flush when `count` reaches this (`high`); 0 disables the cache.
    pub(crate) high: u64,
    /// Pages moved per refill or flush (`batch`).
    pub(crate) batch: u64,
    /// `free_factor`: grows while frees keep flushing, halves on each allocation.
    pub(crate) free_factor: u32,
    /// Per order: the most blocks an extension list of that order keeps
    /// (`2 * ext_batch(batch, order)`; set with `high` and `batch`).
    pub(crate) ext_cap: [u64; PAGEBLOCK_ORDER as usize + 1],
    /// The most pages the extension lists keep together ([`ext_high`] of `high`).
    pub(crate) ext_limit: u64,
    /// Lists by `order_to_pindex()`, then the extension lists by [`ext_pindex`]; the front
    /// is the list head.
    pub(crate) lists: [PcpList; NR_ALL_LISTS],
}

impl PerCpuPages {
    /// `zone_set_pageset_high_and_batch()` for this slot, with the extension lists'
    /// limits derived from the same values.
    pub(crate) fn set_high_batch(&mut self, high: u64, batch: u64) {
        self.high = high;
        self.batch = batch;
        self.ext_cap = std::array::from_fn(|o| 2 * ext_batch(batch, o as u32));
        self.ext_limit = ext_high(high);
    }

    /// Pages on the kernel's lists (what `high` limits).
    #[inline]
    pub(crate) fn kernel_count(&self) -> u64 {
        self.count - self.ext_count
    }

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
                let e = pcp_entry(512 * 7, order, list_index(mt));
                assert_eq!(pcp_entry_pfn(e, order), 512 * 7);
                assert_eq!(pcp_entry_mt(e, p), mt);
            }
        }
        assert!(!pcp_allowed_order(4) && !pcp_allowed_order(10));
    }

    #[test]
    fn extension_lists_follow_the_kernel_lists() {
        let mut seen = std::collections::HashSet::new();
        for order in PCP_EXT_MIN_ORDER..=PCP_EXT_MAX_ORDER {
            assert!(pcp_ext_order(order) && !pcp_allowed_order(order));
            for mt in MigrateType::PCPTYPES {
                let p = ext_pindex(mt, order);
                assert!((NR_PCP_LISTS..NR_ALL_LISTS).contains(&p));
                assert!(seen.insert(p));
                assert_eq!(pindex_to_order(p), order);
                assert_eq!(
                    pcp_entry_mt(pcp_entry(1 << 12, order, list_index(mt)), p),
                    mt
                );
            }
        }
        assert_eq!(seen.len(), NR_EXT_LISTS);
        for order in 0..=PAGEBLOCK_ORDER + 1 {
            for mt in [
                MigrateType::Unmovable,
                MigrateType::Movable,
                MigrateType::Reclaimable,
                MigrateType::Isolate,
            ] {
                assert_eq!(
                    pcp_pindex(mt, order),
                    pcp_pindex_of(list_index(mt), order),
                    "{mt:?} order {order}"
                );
            }
        }
        assert!(!pcp_ext_order(3) && !pcp_ext_order(9));
        // 4 GiB zone (batch 63): about 8 * batch pages per refill, at least four blocks.
        assert_eq!(ext_batch(63, 4), 31);
        assert_eq!(ext_batch(63, 6), 7);
        assert_eq!(ext_batch(63, 7), 4);
        assert_eq!(ext_batch(63, 8), 4);
        assert_eq!(ext_batch(1, 8), 4);
    }

    #[test]
    fn pcp_list_is_a_deque() {
        let mut l = PcpList::default();
        let mut model = std::collections::VecDeque::new();
        for i in 0..100u64 {
            if i % 3 == 0 {
                l.push_back(i);
                model.push_back(i);
            } else {
                l.push_front(i);
                model.push_front(i);
            }
            if i % 7 == 0 {
                assert_eq!(l.pop_back(), model.pop_back());
            }
            if i % 11 == 0 {
                assert_eq!(l.pop_front(), model.pop_front());
            }
            assert_eq!(l.len(), model.len());
            assert!(l.iter().eq(model.iter().copied()));
        }
        while let Some(v) = model.pop_front() {
            assert_eq!(l.pop_front(), Some(v));
        }
        assert!(l.is_empty() && l.pop_back().is_none() && l.pop_front().is_none());
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
