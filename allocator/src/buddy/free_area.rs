//! The free-block index of one zone: Linux's `free_area[MAX_ORDER]` with its per-migratetype
//! free lists, kept as bitmaps instead of linked `struct page`s.
//!
//! Representation (all indices relative to the zone's `base`, a pfn aligned to
//! `MAX_ORDER_NR_PAGES`):
//!
//! * `heads[o]`: one bit per naturally aligned block of order `o`; set iff that block is a
//!   free buddy block of exactly order `o` (Linux: `PageBuddy(page) && buddy_order(page) == o`).
//!   Summed over the orders this is `2` bits per page.
//! * the free list a free block is on is its two-bit tag in the zone's `AtomicTags` at the
//!   head page (`get_pcppage_migratetype`-like: it can differ from the pageblock's migratetype,
//!   exactly as in Linux after a single-page fallback steal). `2` bits per page.
//! * `summary[o][l]`: one bit per pageblock, a *superset* of the pageblocks that hold a free
//!   block of order `o` on list `l`. Adding a block sets the bit; a search that finds no such
//!   block in a flagged pageblock clears it. With its summary levels this is
//!   `44 * 1.02 / 512 ≈ 0.09` bits per page.
//! * `area[o]`: `nr_free` per order and per list (Linux counts only `nr_free`; the per-list
//!   counts make `free_area_empty()` O(1) and are checked by `validate()`).
//!
//! Free lists are address-ordered: `get_page_from_free_area` returns the lowest free block of
//! the list, where Linux returns the most recently added one. Which block is chosen differs,
//! the counts and the split/merge/steal decisions do not.
//!
//! Invariants (checked by `Zone::validate`):
//! * free blocks are disjoint, lie in present, online pages, and never contain an allocated
//!   head;
//! * `area[o].nr_free_mt[l]` equals the number of set `heads[o]` bits whose tag is `l`, and
//!   `area[o].nr_free` is their sum;
//! * `nr_free_pages` (`NR_FREE_PAGES`) equals the pages of all free blocks not on the ISOLATE
//!   list.

use super::bitmap::{AtomicTags, Bitmap, LevelBitmap};
use super::pageblock::{list_index, list_migratetype, NR_FREE_LISTS};
use crate::types::{MigrateType, MAX_ORDER, PAGEBLOCK_ORDER};

/// `struct free_area`: the number of free blocks of one order, in total and per free list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FreeArea {
    /// Free blocks of this order (`nr_free`).
    pub nr_free: u64,
    /// Free blocks of this order per free list, indexed UNMOVABLE, MOVABLE, RECLAIMABLE,
    /// ISOLATE.
    pub nr_free_mt: [u64; NR_FREE_LISTS],
}

/// The free-block index of a zone (see the module docs).
#[derive(Debug)]
pub(crate) struct FreeIndex {
    base: u64,
    nr_pages: u64,
    heads: Vec<Bitmap>,
    summary: Vec<[LevelBitmap; NR_FREE_LISTS]>,
    /// `zone->free_area[]`.
    pub(crate) area: [FreeArea; MAX_ORDER],
    /// `NR_FREE_PAGES`: free pages outside isolated pageblocks.
    pub(crate) nr_free_pages: u64,
}

impl FreeIndex {
    /// An empty index for `nr_pages` pages from `base` (both multiples of
    /// `MAX_ORDER_NR_PAGES`).
    pub(crate) fn new(base: u64, nr_pages: u64) -> FreeIndex {
        let nr_pageblocks = nr_pages >> PAGEBLOCK_ORDER;
        FreeIndex {
            base,
            nr_pages,
            heads: (0..MAX_ORDER).map(|o| Bitmap::new(nr_pages >> o)).collect(),
            summary: (0..MAX_ORDER)
                .map(|_| std::array::from_fn(|_| LevelBitmap::new(nr_pageblocks)))
                .collect(),
            area: [FreeArea::default(); MAX_ORDER],
            nr_free_pages: 0,
        }
    }

    /// Whether `pfn` lies in the indexed range.
    #[inline]
    pub(crate) fn covers(&self, pfn: u64) -> bool {
        pfn >= self.base && pfn - self.base < self.nr_pages
    }

    /// `add_to_free_list()`: puts the block at `pfn` of `order` on list `mt`.
    #[inline]
    pub(crate) fn add_to_free_list(
        &mut self,
        tags: &AtomicTags,
        pfn: u64,
        order: u32,
        mt: MigrateType,
    ) {
        let idx = pfn - self.base;
        let l = list_index(mt);
        self.heads[order as usize].set(idx >> order);
        tags.set(idx, l as u8);
        self.summary[order as usize][l].set(idx >> PAGEBLOCK_ORDER);
        let area = &mut self.area[order as usize];
        area.nr_free += 1;
        area.nr_free_mt[l] += 1;
        if mt != MigrateType::Isolate {
            self.nr_free_pages += 1 << order;
        }
    }

    /// `del_page_from_free_list()`: takes the free block at `pfn` of `order` off list `mt`.
    #[inline]
    pub(crate) fn del_page_from_free_list(&mut self, pfn: u64, order: u32, mt: MigrateType) {
        let idx = pfn - self.base;
        let l = list_index(mt);
        self.heads[order as usize].clear(idx >> order);
        // Keep the summary tight: once the pageblock holds no free head of this order at
        // all, its bit for this list is cleared (it can only stay stale while blocks of the
        // same order on other lists remain in the pageblock).
        let pb = idx >> PAGEBLOCK_ORDER;
        let (start, end) = pageblock_bits(pb, order);
        if self.heads[order as usize].find_next(start, end).is_none() {
            self.summary[order as usize][l].clear(pb);
        }
        let area = &mut self.area[order as usize];
        area.nr_free -= 1;
        area.nr_free_mt[l] -= 1;
        if mt != MigrateType::Isolate {
            self.nr_free_pages -= 1 << order;
        }
    }

    /// `move_to_free_list()`: moves a free block from list `from` to list `to`.
    #[inline]
    pub(crate) fn move_to_free_list(
        &mut self,
        tags: &AtomicTags,
        pfn: u64,
        order: u32,
        from: MigrateType,
        to: MigrateType,
    ) {
        self.del_page_from_free_list(pfn, order, from);
        self.add_to_free_list(tags, pfn, order, to);
    }

    /// If `pfn` is the head of a free block of exactly `order` (`page_is_buddy()`), the list
    /// the block is on.
    #[inline]
    pub(crate) fn free_block_list(
        &self,
        tags: &AtomicTags,
        pfn: u64,
        order: u32,
    ) -> Option<MigrateType> {
        if !self.covers(pfn) {
            return None;
        }
        let idx = pfn - self.base;
        if idx & ((1 << order) - 1) != 0 || !self.heads[order as usize].test(idx >> order) {
            return None;
        }
        Some(list_migratetype(usize::from(tags.get(idx))))
    }

    /// If `pfn` is the head of a free block of any order, that order and its list.
    pub(crate) fn free_block_at(&self, tags: &AtomicTags, pfn: u64) -> Option<(u32, MigrateType)> {
        if !self.covers(pfn) {
            return None;
        }
        let idx = pfn - self.base;
        let max = if idx == 0 {
            MAX_ORDER as u32 - 1
        } else {
            idx.trailing_zeros().min(MAX_ORDER as u32 - 1)
        };
        (0..=max).find_map(|o| self.free_block_list(tags, pfn, o).map(|mt| (o, mt)))
    }

    /// `free_area_empty()`.
    #[inline]
    pub(crate) fn free_area_empty(&self, order: u32, mt: MigrateType) -> bool {
        self.area[order as usize].nr_free_mt[list_index(mt)] == 0
    }

    /// `get_page_from_free_area()`: the lowest free block of `order` on list `mt`.
    #[inline]
    pub(crate) fn get_page_from_free_area(
        &mut self,
        tags: &AtomicTags,
        order: u32,
        mt: MigrateType,
    ) -> Option<u64> {
        if self.free_area_empty(order, mt) {
            return None;
        }
        let l = list_index(mt);
        let o = order as usize;
        while let Some(pb) = self.summary[o][l].find_first() {
            let (start, end) = pageblock_bits(pb, order);
            let mut i = start;
            while let Some(bit) = self.heads[o].find_next(i, end) {
                let idx = bit << order;
                if usize::from(tags.get(idx)) == l {
                    return Some(self.base + idx);
                }
                i = bit + 1;
            }
            // Stale summary bit: no block of this order and list left in the pageblock.
            self.summary[o][l].clear(pb);
        }
        None
    }

    /// Free blocks of `order` whose heads lie in `[start, end)`, as (pfn, list).
    pub(crate) fn heads_in(
        &self,
        tags: &AtomicTags,
        order: u32,
        start: u64,
        end: u64,
    ) -> Vec<(u64, MigrateType)> {
        let mut out = Vec::new();
        let lo = (start.max(self.base) - self.base + (1 << order) - 1) >> order;
        let hi = (end.min(self.base + self.nr_pages).saturating_sub(self.base) + (1 << order) - 1)
            >> order;
        let mut i = lo;
        while let Some(bit) = self.heads[order as usize].find_next(i, hi) {
            let idx = bit << order;
            out.push((
                self.base + idx,
                list_migratetype(usize::from(tags.get(idx))),
            ));
            i = bit + 1;
        }
        out
    }

    /// Whether the summary for (`order`, `mt`) flags the pageblock of `pfn` (used by
    /// `validate()` to check the superset property).
    pub(crate) fn summary_flags(&self, pfn: u64, order: u32, mt: MigrateType) -> bool {
        self.summary[order as usize][list_index(mt)].test((pfn - self.base) >> PAGEBLOCK_ORDER)
    }

    /// Bytes of memory the index occupies (heads and summaries).
    pub(crate) fn bytes(&self) -> usize {
        self.heads.iter().map(Bitmap::bytes).sum::<usize>()
            + self
                .summary
                .iter()
                .flat_map(|s| s.iter().map(LevelBitmap::bytes))
                .sum::<usize>()
    }
}

/// The bit range of `heads[order]` whose blocks start in pageblock `pb` (for order 10 only
/// even pageblocks have one).
#[inline]
fn pageblock_bits(pb: u64, order: u32) -> (u64, u64) {
    let pb_start = pb << PAGEBLOCK_ORDER;
    let round = (1u64 << order) - 1;
    (
        (pb_start + round) >> order,
        (pb_start + (1 << PAGEBLOCK_ORDER) + round) >> order,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_find_del_round_trip() {
        let tags = AtomicTags::new(4096);
        let mut fi = FreeIndex::new(1024, 4096);
        fi.add_to_free_list(&tags, 1024 + 1536, 9, MigrateType::Movable);
        fi.add_to_free_list(&tags, 1024 + 8, 3, MigrateType::Unmovable);
        fi.add_to_free_list(&tags, 1024 + 16, 3, MigrateType::Movable);
        assert_eq!(fi.nr_free_pages, 512 + 16);
        assert_eq!(
            fi.get_page_from_free_area(&tags, 3, MigrateType::Movable),
            Some(1040)
        );
        assert_eq!(
            fi.get_page_from_free_area(&tags, 3, MigrateType::Unmovable),
            Some(1032)
        );
        assert_eq!(
            fi.free_block_list(&tags, 1032, 3),
            Some(MigrateType::Unmovable)
        );
        assert_eq!(
            fi.free_block_at(&tags, 1024 + 1536),
            Some((9, MigrateType::Movable))
        );
        fi.del_page_from_free_list(1040, 3, MigrateType::Movable);
        assert_eq!(
            fi.get_page_from_free_area(&tags, 3, MigrateType::Movable),
            None
        );
        fi.move_to_free_list(&tags, 1032, 3, MigrateType::Unmovable, MigrateType::Isolate);
        assert_eq!(fi.nr_free_pages, 512);
        assert_eq!(fi.area[3].nr_free_mt, [0, 0, 0, 1]);
        assert_eq!(
            fi.heads_in(&tags, 3, 1024, 1024 + 64),
            vec![(1032, MigrateType::Isolate)]
        );
    }

    #[test]
    fn order_ten_heads_map_to_even_pageblocks() {
        let tags = AtomicTags::new(4096);
        let mut fi = FreeIndex::new(0, 4096);
        fi.add_to_free_list(&tags, 2048, 10, MigrateType::Movable);
        assert_eq!(
            fi.get_page_from_free_area(&tags, 10, MigrateType::Movable),
            Some(2048)
        );
        assert!(fi.summary_flags(2048, 10, MigrateType::Movable));
    }
}
