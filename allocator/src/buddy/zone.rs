//! One zone: its lock, free-block index, pageblocks, counters and per-CPU caches, with the
//! buddy algorithms of Linux 6.1 `mm/page_alloc.c` (`__rmqueue_smallest`,
//! `__rmqueue_fallback`, `steal_suitable_fallback`, `move_freepages_block`, `expand`,
//! `__free_one_page`, `rmqueue_bulk`, `free_pcppages_bulk`).
//!
//! Per-page state of a zone (the whole metadata budget, see [`super`]):
//! * free-block heads per order (in `FreeIndex`, under the lock): 2 bits per page;
//! * a two-bit tag per page (`AtomicTags`): for the head of a free block, its free list;
//!   for the head of an allocated block, its order (`0` = order 0, else
//!   `tag[h] = 1 + (order-1)/4`, `tag[h+1] = (order-1)%4`, using the block's second page);
//! * one "allocated head" bit per page (also kept by `AtomicTags`, in its own array): set
//!   while the block starting there is handed out to a caller (not while it sits on a
//!   per-CPU list).

use super::bitmap::AtomicTags;
use super::free_area::FreeIndex;
use super::pageblock::{
    can_steal_fallback, fallbacks, list_index, migratetype_is_mergeable, Pageblocks,
};
use super::pcp::{
    ext_batch, ext_mask, ext_pindex, order_to_pindex, pcp_entry, pcp_entry_mt, pcp_entry_pfn,
    pcp_ext_order, pcp_pindex_of, pindex_to_order, PerCpuPages, NR_ALL_LISTS, NR_PCP_LISTS,
    PAGE_ALLOC_COSTLY_ORDER,
};
use super::spinlock::SpinLock;
use super::watermark::{Wmark, MAX_NR_ZONES};
use crate::types::{
    MigrateType, NodeId, ZoneDescriptor, ZoneType, MAX_ORDER, MAX_ORDER_NR_PAGES,
    PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Keeps each per-CPU cache on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CacheAligned<T>(pub(crate) T);

/// `alloc_flags` that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AllocFlags {
    /// Which watermark the pass checks.
    pub(crate) wmark: Wmark,
    /// `ALLOC_NOFRAGMENT`: do not steal below pageblock order.
    pub(crate) nofragment: bool,
}

/// State under the zone lock (`zone->lock`).
#[derive(Debug)]
pub(crate) struct ZoneState {
    /// `free_area[]` and its index.
    pub(crate) free: FreeIndex,
    /// Present (online) pfn ranges, sorted, disjoint, half-open.
    pub(crate) present_ranges: Vec<(u64, u64)>,
}

/// One zone of one node (`struct zone`).
#[derive(Debug)]
pub struct Zone {
    pub(crate) node: NodeId,
    pub(crate) zone_type: ZoneType,
    pub(crate) zone_start_pfn: u64,
    pub(crate) spanned_pages: u64,
    /// First pfn of the metadata, `zone_start_pfn` rounded down to `MAX_ORDER_NR_PAGES`.
    pub(crate) base: u64,
    /// Pages the metadata covers (a multiple of `MAX_ORDER_NR_PAGES`).
    pub(crate) nr_pages: u64,
    pub(crate) state: SpinLock<ZoneState>,
    pub(crate) tags: AtomicTags,
    pub(crate) pageblocks: Pageblocks,
    /// `NR_FREE_PAGES`, published after every locked section for lock-free watermark checks.
    pub(crate) nr_free_pages: AtomicU64,
    pub(crate) managed: AtomicU64,
    pub(crate) present: AtomicU64,
    /// `_watermark[WMARK_MIN..=WMARK_HIGH]`.
    pub(crate) wmark: [AtomicU64; 3],
    pub(crate) lowmem_reserve: [AtomicU64; MAX_NR_ZONES],
    pub(crate) nr_isolate_pageblock: AtomicU64,
    /// `zone_pcp_disable()` in force: frees and allocations bypass the per-CPU lists.
    pub(crate) pcp_disabled: AtomicBool,
    pub(crate) pcp: Box<[CacheAligned<SpinLock<PerCpuPages>>]>,
}

/// Locks a mutex (the hotplug lock and the baseline allocator's), recovering the data if a
/// panicking thread poisoned it. The zone and per-CPU locks are [`SpinLock`]s.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Zone {
    /// Builds a zone from its descriptor (or an empty zone) and frees its present pages to
    /// the buddy allocator as `memblock_free_all()` does (every pageblock MOVABLE).
    pub(crate) fn new(
        node: NodeId,
        zone_type: ZoneType,
        desc: Option<&ZoneDescriptor>,
        nr_slots: usize,
    ) -> Zone {
        let (start, spanned, ranges) = match desc {
            Some(d) if d.spanned_pages > 0 => (
                d.zone_start_pfn.0,
                d.spanned_pages,
                d.present_ranges
                    .iter()
                    .map(|(s, e)| (s.0, e.0))
                    .collect::<Vec<_>>(),
            ),
            _ => (0, 0, Vec::new()),
        };
        let base = start & !(MAX_ORDER_NR_PAGES - 1);
        let nr_pages = if spanned == 0 {
            0
        } else {
            (start + spanned).next_multiple_of(MAX_ORDER_NR_PAGES) - base
        };
        let present: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        let zone = Zone {
            node,
            zone_type,
            zone_start_pfn: start,
            spanned_pages: spanned,
            base,
            nr_pages,
            state: SpinLock::new(ZoneState {
                free: FreeIndex::new(base, nr_pages),
                present_ranges: ranges.clone(),
            }),
            tags: AtomicTags::new(nr_pages),
            pageblocks: Pageblocks::new(nr_pages >> PAGEBLOCK_ORDER),
            nr_free_pages: AtomicU64::new(0),
            managed: AtomicU64::new(present),
            present: AtomicU64::new(present),
            wmark: Default::default(),
            lowmem_reserve: Default::default(),
            nr_isolate_pageblock: AtomicU64::new(0),
            pcp_disabled: AtomicBool::new(false),
            pcp: (0..nr_slots.max(1))
                .map(|_| CacheAligned(SpinLock::new(PerCpuPages::default())))
                .collect(),
        };
        {
            let mut st = zone.state.lock();
            for &(s, e) in &ranges {
                zone.free_range(&mut st, s, e, MigrateType::Movable);
            }
            zone.publish(&st);
        }
        zone
    }

    /// Frees `[s, e)` in maximal aligned chunks (`__free_pages_core` per chunk).
    pub(crate) fn free_range(&self, st: &mut ZoneState, s: u64, e: u64, mt: MigrateType) {
        let mut p = s;
        while p < e {
            let align = if p == 0 {
                MAX_ORDER as u32 - 1
            } else {
                p.trailing_zeros()
            };
            let fit = 63 - (e - p).leading_zeros();
            let order = align.min(fit).min(MAX_ORDER as u32 - 1);
            self.free_one_page_locked(st, p, order, mt);
            p += 1 << order;
        }
    }

    /// The node of the zone.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The zone type.
    pub fn zone_type(&self) -> ZoneType {
        self.zone_type
    }

    /// `zone_managed_pages()`.
    pub fn managed_pages(&self) -> u64 {
        self.managed.load(Ordering::Acquire)
    }

    /// `zone->present_pages`.
    pub fn present_pages(&self) -> u64 {
        self.present.load(Ordering::Acquire)
    }

    /// `zone->spanned_pages`.
    pub fn spanned_pages(&self) -> u64 {
        self.spanned_pages
    }

    /// `zone->zone_start_pfn`.
    pub fn zone_start_pfn(&self) -> u64 {
        self.zone_start_pfn
    }

    /// `NR_FREE_PAGES`.
    #[inline]
    pub fn nr_free_pages(&self) -> u64 {
        self.nr_free_pages.load(Ordering::Acquire)
    }

    /// The watermark `w` in pages.
    #[inline]
    pub fn wmark_pages(&self, w: Wmark) -> u64 {
        self.wmark[w as usize].load(Ordering::Acquire)
    }

    /// `zone->lowmem_reserve[]`.
    pub fn lowmem_reserve(&self) -> [u64; MAX_NR_ZONES] {
        std::array::from_fn(|i| self.lowmem_reserve[i].load(Ordering::Acquire))
    }

    /// `managed_zone()`.
    pub fn is_managed(&self) -> bool {
        self.managed_pages() > 0
    }

    /// Whether `pfn` lies in the zone's span.
    #[inline]
    pub(crate) fn spans(&self, pfn: u64) -> bool {
        pfn >= self.zone_start_pfn && pfn - self.zone_start_pfn < self.spanned_pages
    }

    #[inline]
    pub(crate) fn pb(&self, pfn: u64) -> u64 {
        (pfn - self.base) >> PAGEBLOCK_ORDER
    }

    /// `get_pfnblock_migratetype()`.
    #[inline]
    pub(crate) fn pageblock_mt(&self, pfn: u64) -> MigrateType {
        self.pageblocks.get(self.pb(pfn))
    }

    /// Publishes `NR_FREE_PAGES` for lock-free readers; called before every unlock.
    #[inline]
    pub(crate) fn publish(&self, st: &ZoneState) {
        self.nr_free_pages
            .store(st.free.nr_free_pages, Ordering::Release);
    }

    /// Writes the order code of an allocated block (under the zone lock).
    #[inline(always)]
    pub(crate) fn set_alloc_order(&self, pfn: u64, order: u32) {
        let idx = pfn - self.base;
        if order == 0 {
            self.tags.set(idx, 0);
        } else {
            let c = order - 1;
            self.tags.set(idx, (1 + (c >> 2)) as u8);
            self.tags.set(idx + 1, (c & 3) as u8);
        }
    }

    /// Reads the order code of an allocated block.
    #[inline]
    pub(crate) fn alloc_order(&self, pfn: u64) -> u32 {
        let idx = pfn - self.base;
        let t = u32::from(self.tags.get(idx));
        if t == 0 {
            0
        } else {
            (((t - 1) << 2) | u32::from(self.tags.get(idx + 1))) + 1
        }
    }

    /// The order code at `pfn` read as an allocated head's (`alloc_order`) with one load
    /// and no branch, whether or not the block is allocated: the fast free compares it with
    /// the caller's order and then lets the allocated-head bit, cleared under the slot
    /// lock, decide (a block that is not allocated fails there and takes the full path).
    #[inline(always)]
    pub(crate) fn alloc_order_fast(&self, pfn: u64) -> u32 {
        let pair = u32::from(self.tags.get_pair(pfn - self.base));
        let t = pair & 3;
        let code = ((t.wrapping_sub(1) << 2) | (pair >> 2)).wrapping_add(1);
        code & u32::from(t != 0).wrapping_neg()
    }

    /// Whether the block at `pfn` is handed out to a caller.
    #[inline]
    pub(crate) fn is_allocated_head(&self, pfn: u64) -> bool {
        self.tags.alloc_test(pfn - self.base)
    }

    // ----- buddy core (zone lock held) -------------------------------------------------

    /// `expand()`: splits a block of `high` down to `low`, freeing the upper halves to `mt`.
    #[inline]
    fn expand(&self, st: &mut ZoneState, pfn: u64, low: u32, mut high: u32, mt: MigrateType) {
        while high > low {
            high -= 1;
            st.free
                .add_to_free_list(&self.tags, pfn + (1 << high), high, mt);
        }
    }

    /// `__rmqueue_smallest()`.
    #[inline]
    pub(crate) fn rmqueue_smallest(
        &self,
        st: &mut ZoneState,
        order: u32,
        mt: MigrateType,
    ) -> Option<u64> {
        for current in order..MAX_ORDER as u32 {
            if let Some(pfn) = st.free.take_page_from_free_area(&self.tags, current, mt) {
                self.expand(st, pfn, order, current, mt);
                return Some(pfn);
            }
        }
        None
    }

    /// `find_suitable_fallback(area, order, mt, only_stealable = false, &can_steal)`.
    fn find_suitable_fallback(
        &self,
        st: &ZoneState,
        order: u32,
        mt: MigrateType,
    ) -> Option<(MigrateType, bool)> {
        if st.free.area[order as usize].nr_free == 0 {
            return None;
        }
        for &fallback in fallbacks(mt) {
            if st.free.free_area_empty(order, fallback) {
                continue;
            }
            return Some((fallback, can_steal_fallback(order, mt)));
        }
        None
    }

    /// `__rmqueue_fallback()`: steals the largest suitable free block of another
    /// migratetype (or, for a movable request that cannot take the whole pageblock, the
    /// smallest one) and moves it, or its whole pageblock, to `start_mt`.
    fn rmqueue_fallback(
        &self,
        st: &mut ZoneState,
        order: u32,
        start_mt: MigrateType,
        flags: AllocFlags,
    ) -> bool {
        let min_order = if flags.nofragment {
            PAGEBLOCK_ORDER
        } else {
            order
        };
        let mut found = None;
        for current in (min_order..MAX_ORDER as u32).rev() {
            let Some((fallback, can_steal)) = self.find_suitable_fallback(st, current, start_mt)
            else {
                continue;
            };
            if !can_steal && start_mt == MigrateType::Movable && current > order {
                // find_smallest
                found = (order..MAX_ORDER as u32).find_map(|o| {
                    self.find_suitable_fallback(st, o, start_mt)
                        .map(|(f, c)| (o, f, c))
                });
            } else {
                found = Some((current, fallback, can_steal));
            }
            break;
        }
        let Some((current, fallback, can_steal)) = found else {
            return false;
        };
        let Some(pfn) = st
            .free
            .get_page_from_free_area(&self.tags, current, fallback)
        else {
            return false;
        };
        self.steal_suitable_fallback(st, pfn, current, fallback, start_mt, can_steal);
        true
    }

    /// `steal_suitable_fallback()`. Watermark boosting is not done (there is no kswapd to
    /// undo it), so `boost` stays 0.
    fn steal_suitable_fallback(
        &self,
        st: &mut ZoneState,
        pfn: u64,
        current_order: u32,
        list: MigrateType,
        start_type: MigrateType,
        whole_block: bool,
    ) {
        let old_block_type = self.pageblock_mt(pfn);
        if current_order >= PAGEBLOCK_ORDER {
            // change_pageblock_range()
            let first = self.pb(pfn);
            for pb in first..first + (1 << (current_order - PAGEBLOCK_ORDER)) {
                self.pageblocks.set(pb, start_type);
            }
        } else if whole_block {
            let (free_pages, movable_pages) = self.move_freepages_block(st, pfn, start_type);
            if free_pages > 0 {
                let alike_pages = if start_type == MigrateType::Movable {
                    movable_pages
                } else if old_block_type == MigrateType::Movable {
                    PAGEBLOCK_NR_PAGES.saturating_sub(free_pages + movable_pages)
                } else {
                    0
                };
                if free_pages + alike_pages >= 1 << (PAGEBLOCK_ORDER - 1) {
                    self.pageblocks.set(self.pb(pfn), start_type);
                }
                return;
            }
        }
        // single_page:
        st.free
            .move_to_free_list(&self.tags, pfn, current_order, list, start_type);
    }

    /// `move_freepages_block()`: moves every free block whose head lies in the pageblock of
    /// `pfn` to list `mt`. Returns (pages moved, "movable" allocated pages). Without a
    /// `struct page` the pool cannot see `PageLRU`/`__PageMovable`; it counts the allocated
    /// pages of a MOVABLE pageblock as movable and those of other pageblocks as not.
    pub(crate) fn move_freepages_block(
        &self,
        st: &mut ZoneState,
        pfn: u64,
        mt: MigrateType,
    ) -> (u64, u64) {
        let mut start = pfn & !(PAGEBLOCK_NR_PAGES - 1);
        let end = start + PAGEBLOCK_NR_PAGES;
        if !self.spans(start) {
            start = pfn;
        }
        if !self.spans(end - 1) {
            return (0, 0);
        }
        let mut moved = 0;
        for order in 0..MAX_ORDER as u32 {
            for (head, list) in st.free.heads_in(&self.tags, order, start, end) {
                if list != mt {
                    st.free.move_to_free_list(&self.tags, head, order, list, mt);
                }
                moved += 1 << order;
            }
        }
        let movable = if self.pageblock_mt(start) == MigrateType::Movable {
            present_in(&st.present_ranges, start, end).saturating_sub(moved)
        } else {
            0
        };
        (moved, movable)
    }

    /// `__rmqueue()`.
    #[inline]
    pub(crate) fn rmqueue_locked(
        &self,
        st: &mut ZoneState,
        order: u32,
        mt: MigrateType,
        flags: AllocFlags,
    ) -> Option<u64> {
        loop {
            if let Some(pfn) = self.rmqueue_smallest(st, order, mt) {
                return Some(pfn);
            }
            if !self.rmqueue_fallback(st, order, mt, flags) {
                return None;
            }
        }
    }

    /// `__free_one_page()`: frees a block and merges it with its buddies while they are free
    /// blocks of the same order; at pageblock order and above not across an isolated
    /// pageblock boundary.
    #[inline]
    pub(crate) fn free_one_page_locked(
        &self,
        st: &mut ZoneState,
        mut pfn: u64,
        mut order: u32,
        mt: MigrateType,
    ) {
        while order < MAX_ORDER as u32 - 1 {
            let buddy = pfn ^ (1 << order);
            let Some(buddy_list) = st.free.free_block_list(&self.tags, buddy, order) else {
                break;
            };
            if order >= PAGEBLOCK_ORDER {
                let buddy_mt = self.pageblock_mt(buddy);
                if mt != buddy_mt
                    && (!migratetype_is_mergeable(mt) || !migratetype_is_mergeable(buddy_mt))
                {
                    break;
                }
            }
            st.free.del_page_from_free_list(buddy, order, buddy_list);
            pfn &= buddy;
            order += 1;
        }
        st.free.add_to_free_list(&self.tags, pfn, order, mt);
    }

    // ----- allocation and free entry points -------------------------------------------

    /// `rmqueue_buddy()` with the watermark check done under the lock for high orders:
    /// takes a block for a caller, or `None`.
    pub(crate) fn rmqueue_buddy(
        &self,
        order: u32,
        mt: MigrateType,
        flags: AllocFlags,
        mark_plus_reserve: Option<u64>,
    ) -> Option<u64> {
        let mut st = self.state.lock();
        if let Some(limit) = mark_plus_reserve {
            if !super::watermark::zone_watermark_ok(
                st.free.nr_free_pages,
                order,
                limit,
                0,
                &st.free.area,
            ) {
                return None;
            }
        }
        let pfn = self.rmqueue_locked(&mut st, order, mt, flags);
        if let Some(p) = pfn {
            self.set_alloc_order(p, order);
            self.tags.alloc_test_and_set(p - self.base);
        }
        self.publish(&st);
        pfn
    }

    /// `rmqueue_pcplist()`: a block of a per-CPU order from this slot's list, refilled
    /// with `rmqueue_bulk()` (`batch`, or `max(batch >> order, 2)` blocks; for an
    /// extension order [`ext_batch`] blocks) when empty.
    #[inline]
    pub(crate) fn rmqueue_pcplist(
        &self,
        slot: usize,
        order: u32,
        mt: MigrateType,
        flags: AllocFlags,
        mark_plus_reserve: u64,
    ) -> Option<u64> {
        let mut pcp = self.pcp[slot].0.lock();
        pcp.free_factor >>= 1;
        let ext = pcp_ext_order(order);
        let l = if ext {
            ext_pindex(mt, order)
        } else {
            order_to_pindex(mt, order)
        };
        if pcp.lists[l].is_empty()
            && !self.rmqueue_bulk(&mut pcp, l, order, mt, flags, mark_plus_reserve)
        {
            return None;
        }
        let entry = pcp.lists[l].pop_front()?;
        pcp.count -= 1 << order;
        if ext {
            pcp.ext_count -= 1 << order;
        }
        let pfn = pcp_entry_pfn(entry, order);
        self.tags.alloc_test_and_set(pfn - self.base);
        Some(pfn)
    }

    /// `get_page_from_freelist()` → `rmqueue_pcplist()` for the first zone of the first
    /// pass (ALLOC_WMARK_LOW, `nofragment` as the caller computed it for this preferred
    /// zone): if the zone is above its LOW watermark plus `lowmem_reserve[highest_zoneidx]`
    /// (`zone_watermark_fast()`) and its per-CPU lists are enabled, takes a block from this
    /// slot's list `l`, refilling it first with `rmqueue_bulk()` when empty. Exactly what the
    /// full path does for this zone; `None` (nothing changed) sends the caller down the full
    /// path (other zones, the MIN pass), which repeats the failed step unchanged first.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rmqueue_pcplist_fast(
        &self,
        slot: usize,
        l: usize,
        order: u32,
        mt: MigrateType,
        highest_zoneidx: usize,
        nofragment: bool,
    ) -> Option<u64> {
        let limit = self.wmark_pages(Wmark::Low)
            + self.lowmem_reserve[highest_zoneidx].load(Ordering::Relaxed);
        if self.nr_free_pages() <= limit || self.pcp_disabled.load(Ordering::Acquire) {
            return None;
        }
        let mut pcp = self.pcp.get(slot)?.0.lock();
        let list = pcp.lists.get(l)?;
        if list.is_empty() {
            let flags = AllocFlags {
                wmark: Wmark::Low,
                nofragment,
            };
            if !self.rmqueue_bulk(&mut pcp, l, order, mt, flags, limit) {
                return None;
            }
        }
        let entry = pcp.lists[l].pop_front()?;
        pcp.free_factor >>= 1;
        let pages = 1u64 << order;
        pcp.count -= pages;
        // Branch-free: whether the list is an extension list follows the (random) order.
        pcp.ext_count -= pages & ext_mask(l);
        let pfn = pcp_entry_pfn(entry, order);
        self.tags.alloc_test_and_set(pfn - self.base);
        Some(pfn)
    }

    /// `rmqueue_bulk()`: refills the empty per-CPU list `l` with `batch` (order 0),
    /// `max(batch >> order, 2)` blocks, or [`ext_batch`] blocks for an extension list,
    /// under one zone lock, after checking the watermark for orders above 0. Returns false
    /// when the watermark check fails. Kept out of line: the hit path of `rmqueue_pcplist`
    /// stays short.
    #[cold]
    #[inline(never)]
    fn rmqueue_bulk(
        &self,
        pcp: &mut PerCpuPages,
        l: usize,
        order: u32,
        mt: MigrateType,
        flags: AllocFlags,
        mark_plus_reserve: u64,
    ) -> bool {
        let ext = pcp_ext_order(order);
        let mut batch = pcp.batch.max(1);
        if ext {
            batch = ext_batch(batch, order);
        } else if order > 0 {
            batch = (batch >> order).max(2);
        }
        let mut st = self.state.lock();
        if order > 0
            && !super::watermark::zone_watermark_ok(
                st.free.nr_free_pages,
                order,
                mark_plus_reserve,
                0,
                &st.free.area,
            )
        {
            return false;
        }
        let mut got = 0;
        for _ in 0..batch {
            let Some(pfn) = self.rmqueue_locked(&mut st, order, mt, flags) else {
                break;
            };
            self.set_alloc_order(pfn, order);
            pcp.lists[l].push_back(pcp_entry(pfn, order, list_index(mt)));
            got += 1;
        }
        self.publish(&st);
        drop(st);
        pcp.count += got << order;
        if ext {
            pcp.ext_count += got << order;
        }
        true
    }

    /// `free_one_page()`: frees straight to the buddy lists under the zone lock.
    /// Returns false (and changes nothing) if the block is no longer allocated, i.e. a
    /// concurrent free of the same block won.
    pub(crate) fn free_one_page(&self, pfn: u64, order: u32) -> bool {
        let mut st = self.state.lock();
        if !self.tags.alloc_test_and_clear(pfn - self.base) {
            return false;
        }
        let mt = self.pageblock_mt(pfn);
        self.free_one_page_locked(&mut st, pfn, order, mt);
        self.publish(&st);
        true
    }

    /// `free_unref_page()`: onto this slot's per-CPU list, flushing when the slot reaches
    /// `high` (or everything, when high-order frees keep flushing: `free_high`); pages of
    /// isolated pageblocks go straight to the buddy lists. An extension order goes to its
    /// extension list, flushed by its own rule (see [`super::pcp`]).
    /// Returns false (and changes nothing) if a concurrent free of the block won.
    #[inline]
    pub(crate) fn free_unref_page(&self, slot: usize, pfn: u64, order: u32) -> bool {
        let mt = self.pageblock_mt(pfn);
        if mt == MigrateType::Isolate || self.pcp_disabled.load(Ordering::Acquire) {
            return self.free_one_page(pfn, order);
        }
        let mti = list_index(mt);
        match pcp_pindex_of(mti, order) {
            Some(l) => self.free_unref_page_commit(slot, pfn, order, l, mti),
            None => self.free_one_page(pfn, order),
        }
    }

    /// The free path for a caller that has checked everything [`Pool::free`] checks: `pfn`
    /// is an allocated head of `order` in this zone. Frees to the per-CPU list when the
    /// pageblock is not isolated and the lists are enabled; false (nothing changed)
    /// otherwise, or when a concurrent free of the block won, and the caller takes the
    /// full path, which reports that.
    ///
    /// [`Pool::free`]: super::Pool::free
    #[inline(always)]
    pub(crate) fn free_pcp_fast(&self, slot: usize, pfn: u64, order: u32) -> bool {
        let mti = self.pageblocks.get_index(self.pb(pfn));
        if self.pcp_disabled.load(Ordering::Acquire) {
            return false;
        }
        // ISOLATE (index 3) has no per-CPU list.
        let Some(l) = pcp_pindex_of(mti, order) else {
            return false;
        };
        self.free_unref_page_commit(slot, pfn, order, l, mti)
    }

    /// `free_unref_page_commit()`: puts the block on this slot's list `l` (the list of
    /// `order` and free-list index `mti`) and flushes by the list's rule: a kernel list
    /// when the kernel's pages reach `high` (`nr_pcp_high()`, `free_high`), an extension
    /// list when it holds more than `2 * ext_batch` blocks or the slot more than `ext_high`
    /// extension pages. The bookkeeping is branch-free and both rules end in one rarely
    /// taken branch: which list a free hits follows the caller's (often random) order.
    #[inline(always)]
    fn free_unref_page_commit(
        &self,
        slot: usize,
        pfn: u64,
        order: u32,
        l: usize,
        mti: usize,
    ) -> bool {
        let mut pcp = self.pcp[slot].0.lock();
        if !self.tags.alloc_test_and_clear(pfn - self.base) {
            return false;
        }
        let pages = 1u64 << order;
        let ext = ext_mask(l);
        pcp.lists[l].push_front(pcp_entry(pfn, order, mti));
        pcp.count += pages;
        pcp.ext_count += pages & ext;
        let ext = ext != 0;
        let ext_flush = ext
            & ((pcp.lists[l].len() as u64 > pcp.ext_cap[order as usize])
                | (pcp.ext_count > pcp.ext_limit));
        let free_high =
            !ext & (pcp.free_factor > 0) & (order > 0) & (order <= PAGE_ALLOC_COSTLY_ORDER);
        // nr_pcp_high()
        let high = if free_high { 0 } else { pcp.high };
        let kernel_flush = !ext & (pcp.kernel_count() >= high);
        if ext_flush | kernel_flush {
            self.flush_after_free(&mut pcp, l, order, free_high, high);
        }
        true
    }

    /// The flush of [`Self::free_unref_page_commit`]: `free_pcppages_bulk(nr_pcp_free())`
    /// for a kernel list, [`Self::free_ext_pages`] for an extension list.
    #[cold]
    #[inline(never)]
    fn flush_after_free(
        &self,
        pcp: &mut PerCpuPages,
        l: usize,
        order: u32,
        free_high: bool,
        high: u64,
    ) {
        if l >= NR_PCP_LISTS {
            let batch = ext_batch(pcp.batch, order);
            self.free_ext_pages(pcp, l, batch);
        } else {
            let batch = pcp.batch;
            let n = pcp.nr_pcp_free(high, batch, free_high);
            self.free_pcppages_bulk(pcp, n, l);
        }
    }

    /// Returns the oldest `blocks` blocks of extension list `l` to the buddy lists, then,
    /// while the slot keeps more than [`super::pcp::ext_high`] extension pages, the oldest blocks of
    /// the other extension lists (highest order first), all under one zone lock.
    #[cold]
    #[inline(never)]
    fn free_ext_pages(&self, pcp: &mut PerCpuPages, l: usize, blocks: u64) {
        let mut st = self.state.lock();
        let order = pindex_to_order(l);
        for _ in 0..blocks {
            let Some(pfn) = pcp.lists[l].pop_back() else {
                break;
            };
            self.ext_free_locked(&mut st, pcp, pfn, l, order);
        }
        let limit = pcp.ext_limit;
        if pcp.ext_count <= limit {
            self.publish(&st);
            return;
        }
        for other in (NR_PCP_LISTS..NR_ALL_LISTS).rev() {
            let order = pindex_to_order(other);
            while pcp.ext_count > limit {
                let Some(pfn) = pcp.lists[other].pop_back() else {
                    break;
                };
                self.ext_free_locked(&mut st, pcp, pfn, other, order);
            }
        }
        self.publish(&st);
    }

    /// Frees one block taken off extension list `l` (zone lock held).
    #[inline]
    fn ext_free_locked(
        &self,
        st: &mut ZoneState,
        pcp: &mut PerCpuPages,
        pfn: u64,
        l: usize,
        order: u32,
    ) {
        pcp.count -= 1 << order;
        pcp.ext_count -= 1 << order;
        let mt = if self.nr_isolate_pageblock.load(Ordering::Acquire) > 0 {
            self.pageblock_mt(pfn)
        } else {
            pcp_entry_mt(pfn, l)
        };
        self.free_one_page_locked(st, pfn, order, mt);
    }

    /// `free_pcppages_bulk()`: returns `count` pages, round robin over the kernel's lists
    /// starting with list `pindex`, oldest first.
    pub(crate) fn free_pcppages_bulk(&self, pcp: &mut PerCpuPages, count: u64, pindex: usize) {
        let mut count = count.min(pcp.kernel_count()) as i64;
        if count <= 0 {
            return;
        }
        let isolated = self.nr_isolate_pageblock.load(Ordering::Acquire) > 0;
        let nlists = NR_PCP_LISTS;
        let mut p = (pindex + nlists - 1) % nlists;
        let mut st = self.state.lock();
        while count > 0 {
            loop {
                p = (p + 1) % nlists;
                if !pcp.lists[p].is_empty() {
                    break;
                }
            }
            let order = pindex_to_order(p);
            while let Some(entry) = pcp.lists[p].pop_back() {
                count -= 1 << order;
                pcp.count -= 1 << order;
                let pfn = pcp_entry_pfn(entry, order);
                let mt = if isolated {
                    self.pageblock_mt(pfn)
                } else {
                    pcp_entry_mt(entry, p)
                };
                self.free_one_page_locked(&mut st, pfn, order, mt);
                if count <= 0 {
                    break;
                }
            }
        }
        self.publish(&st);
    }

    /// `drain_pages_zone()` for every slot, extension lists included.
    pub(crate) fn drain_pages(&self) {
        for slot in self.pcp.iter() {
            let mut pcp = slot.0.lock();
            let n = pcp.kernel_count();
            self.free_pcppages_bulk(&mut pcp, n, 0);
            if pcp.ext_count > 0 {
                let mut st = self.state.lock();
                for l in NR_PCP_LISTS..NR_ALL_LISTS {
                    let order = pindex_to_order(l);
                    while let Some(pfn) = pcp.lists[l].pop_back() {
                        self.ext_free_locked(&mut st, &mut pcp, pfn, l, order);
                    }
                }
                self.publish(&st);
            }
        }
    }

    /// `zone_pcp_update()`: sets high and batch of every slot.
    pub(crate) fn set_pcp_high_batch(&self, high: u64, batch: u64) {
        for slot in self.pcp.iter() {
            slot.0.lock().set_high_batch(high, batch);
        }
    }

    /// Pages on the per-CPU lists of all slots.
    pub(crate) fn pcp_count(&self) -> u64 {
        self.pcp.iter().map(|s| s.0.lock().count).sum()
    }

    /// Bytes of metadata the zone allocated.
    pub(crate) fn metadata_bytes(&self) -> usize {
        self.state.lock().free.bytes() + self.tags.bytes() + self.pageblocks.bytes()
    }
}

/// Pages of `ranges` inside `[start, end)`.
pub(crate) fn present_in(ranges: &[(u64, u64)], start: u64, end: u64) -> u64 {
    ranges
        .iter()
        .map(|&(s, e)| e.min(end).saturating_sub(s.max(start)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Pfn;

    fn zone_1024() -> Zone {
        let d = ZoneDescriptor {
            node: NodeId(0),
            zone: ZoneType::Normal,
            zone_start_pfn: Pfn(0),
            spanned_pages: 1024,
            present_ranges: vec![(Pfn(0), Pfn(1024))],
        };
        Zone::new(NodeId(0), ZoneType::Normal, Some(&d), 1)
    }

    const FLAGS: AllocFlags = AllocFlags {
        wmark: Wmark::Min,
        nofragment: false,
    };

    #[test]
    fn expand_keeps_lower_half_and_frees_upper_halves() {
        let z = zone_1024();
        let mut st = z.state.lock();
        assert_eq!(st.free.area[10].nr_free, 1);
        let p = z.rmqueue_locked(&mut st, 0, MigrateType::Movable, FLAGS);
        assert_eq!(p, Some(0));
        for o in 0..10 {
            assert_eq!(st.free.area[o].nr_free, 1, "order {o}");
            assert_eq!(
                st.free.free_block_list(&z.tags, 1 << o, o as u32),
                Some(MigrateType::Movable)
            );
        }
        z.free_one_page_locked(&mut st, 0, 0, MigrateType::Movable);
        assert_eq!(st.free.area[10].nr_free, 1);
        assert_eq!(st.free.nr_free_pages, 1024);
    }

    #[test]
    fn movable_fallback_that_cannot_steal_takes_smallest_block() {
        let z = zone_1024();
        let mut st = z.state.lock();
        // Leave only an order-2 block at 0 and an order-3 block at 64, both UNMOVABLE, in
        // UNMOVABLE pageblocks.
        st.free.del_page_from_free_list(0, 10, MigrateType::Movable);
        z.pageblocks.set(0, MigrateType::Unmovable);
        z.pageblocks.set(1, MigrateType::Unmovable);
        st.free
            .add_to_free_list(&z.tags, 0, 2, MigrateType::Unmovable);
        st.free
            .add_to_free_list(&z.tags, 64, 3, MigrateType::Unmovable);
        let p = z.rmqueue_locked(&mut st, 0, MigrateType::Movable, FLAGS);
        // can_steal_fallback(3, MOVABLE) is false, so find_smallest picks the order-2 block,
        // moves just that block to MOVABLE (single_page) and splits it.
        assert_eq!(p, Some(0));
        assert_eq!(z.pageblock_mt(0), MigrateType::Unmovable);
        assert_eq!(
            st.free.free_block_list(&z.tags, 1, 0),
            Some(MigrateType::Movable)
        );
        assert_eq!(
            st.free.free_block_list(&z.tags, 2, 1),
            Some(MigrateType::Movable)
        );
        assert_eq!(
            st.free.free_block_list(&z.tags, 64, 3),
            Some(MigrateType::Unmovable)
        );
    }

    #[test]
    fn unmovable_fallback_claims_pageblock_when_half_is_free() {
        let z = zone_1024();
        let mut st = z.state.lock();
        let p = z.rmqueue_locked(&mut st, 0, MigrateType::Unmovable, FLAGS);
        // The order-10 block is stolen whole: both pageblocks change type.
        assert_eq!(p, Some(0));
        assert_eq!(z.pageblock_mt(0), MigrateType::Unmovable);
        assert_eq!(z.pageblock_mt(512), MigrateType::Unmovable);
        // A reclaimable request then steals from UNMOVABLE: order 9 block at 512 is taken
        // whole (order >= pageblock_order), changing that pageblock to RECLAIMABLE.
        let r = z.rmqueue_locked(&mut st, 0, MigrateType::Reclaimable, FLAGS);
        assert_eq!(r, Some(512));
        assert_eq!(z.pageblock_mt(512), MigrateType::Reclaimable);
        assert_eq!(z.pageblock_mt(0), MigrateType::Unmovable);
    }

    #[test]
    fn nofragment_refuses_to_steal_below_pageblock_order() {
        let z = zone_1024();
        let mut st = z.state.lock();
        st.free.del_page_from_free_list(0, 10, MigrateType::Movable);
        st.free
            .add_to_free_list(&z.tags, 0, 3, MigrateType::Movable);
        let nofrag = AllocFlags {
            wmark: Wmark::Low,
            nofragment: true,
        };
        assert_eq!(
            z.rmqueue_locked(&mut st, 0, MigrateType::Unmovable, nofrag),
            None
        );
        assert_eq!(
            z.rmqueue_locked(&mut st, 0, MigrateType::Unmovable, FLAGS),
            Some(0)
        );
    }

    #[test]
    fn merge_stops_at_isolated_pageblock() {
        let z = zone_1024();
        let mut st = z.state.lock();
        st.free.del_page_from_free_list(0, 10, MigrateType::Movable);
        z.pageblocks.set(1, MigrateType::Isolate);
        st.free
            .add_to_free_list(&z.tags, 512, 9, MigrateType::Isolate);
        z.free_one_page_locked(&mut st, 0, 9, MigrateType::Movable);
        assert_eq!(st.free.area[9].nr_free, 2);
        assert_eq!(st.free.area[10].nr_free, 0);
        assert_eq!(st.free.nr_free_pages, 512);
    }
}
