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

use super::bitmap::AtomicTags;
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
///
/// Storage is flat (one allocation for the heads of all orders, one for all summaries
/// with their levels) so that a lookup is one offset computation, not a walk through
/// nested vectors.
#[derive(Debug)]
pub(crate) struct FreeIndex {
    base: u64,
    nr_pages: u64,
    /// `heads[o]` of every order, each starting on a word boundary.
    heads: Vec<u64>,
    /// Word offset of `heads[o]` in `heads`.
    head_off: [usize; MAX_ORDER],
    /// Words of `heads[o]`.
    head_words: [usize; MAX_ORDER],
    /// The summary bitmaps of every (order, list), level by level.
    sum: Vec<u64>,
    /// Per summary level: (word offset of that level of bitmap 0, words per bitmap). Level 0
    /// holds one bit per pageblock; the last level is one word per bitmap.
    sum_levels: Vec<(usize, usize)>,
    /// `zone->free_area[]`.
    pub(crate) area: [FreeArea; MAX_ORDER],
    /// `NR_FREE_PAGES`: free pages outside isolated pageblocks.
    pub(crate) nr_free_pages: u64,
}

/// Summary bitmaps: one per (order, free list).
const NR_SUMMARIES: usize = MAX_ORDER * NR_FREE_LISTS;

#[inline]
fn summary_id(order: u32, l: usize) -> usize {
    order as usize * NR_FREE_LISTS + l
}

impl FreeIndex {
    /// An empty index for `nr_pages` pages from `base` (both multiples of
    /// `MAX_ORDER_NR_PAGES`).
    pub(crate) fn new(base: u64, nr_pages: u64) -> FreeIndex {
        let nr_pageblocks = nr_pages >> PAGEBLOCK_ORDER;
        let mut head_off = [0; MAX_ORDER];
        let mut head_words = [0; MAX_ORDER];
        let mut total = 0;
        for o in 0..MAX_ORDER {
            head_off[o] = total;
            head_words[o] = words_for(nr_pages >> o);
            total += head_words[o];
        }
        let mut sum_levels = Vec::new();
        let mut sum_total = 0;
        let mut bits = nr_pageblocks.max(1);
        loop {
            let words = words_for(bits);
            sum_levels.push((sum_total, words));
            sum_total += words * NR_SUMMARIES;
            if words == 1 {
                break;
            }
            bits = words as u64;
        }
        FreeIndex {
            base,
            nr_pages,
            heads: vec![0; total],
            head_off,
            head_words,
            sum: vec![0; sum_total],
            sum_levels,
            area: [FreeArea::default(); MAX_ORDER],
            nr_free_pages: 0,
        }
    }

    /// Whether `pfn` lies in the indexed range.
    #[inline]
    pub(crate) fn covers(&self, pfn: u64) -> bool {
        pfn >= self.base && pfn - self.base < self.nr_pages
    }

    /// Word index in `heads` and bit mask of block `bit` of `heads[order]`.
    #[inline]
    fn head_pos(&self, order: u32, bit: u64) -> (usize, u64) {
        (
            self.head_off[order as usize] + (bit / WORD_BITS) as usize,
            1 << (bit % WORD_BITS),
        )
    }

    #[inline]
    fn head_test(&self, order: u32, bit: u64) -> bool {
        let (w, m) = self.head_pos(order, bit);
        self.heads[w] & m != 0
    }

    /// Whether any bit of `heads[order]` in `[start, end)` is set.
    #[inline]
    fn heads_any(&self, order: u32, start: u64, end: u64) -> bool {
        self.heads_find_next(order, start, end).is_some()
    }

    /// The first set bit of `heads[order]` in `[start, end)`.
    #[inline]
    fn heads_find_next(&self, order: u32, start: u64, end: u64) -> Option<u64> {
        let words = &self.heads[self.head_off[order as usize]..][..self.head_words[order as usize]];
        let mut i = start;
        while i < end {
            let w = (i / WORD_BITS) as usize;
            let masked = words[w] & (!0u64 << (i % WORD_BITS));
            if masked != 0 {
                let bit = w as u64 * WORD_BITS + u64::from(masked.trailing_zeros());
                return (bit < end).then_some(bit);
            }
            i = (w as u64 + 1) * WORD_BITS;
        }
        None
    }

    /// Sets pageblock `pb` in summary `id` and the levels above it.
    #[inline]
    fn sum_set(&mut self, id: usize, mut i: u64) {
        for &(off, words) in &self.sum_levels {
            let w = off + id * words + (i / WORD_BITS) as usize;
            let was = self.sum[w];
            self.sum[w] = was | (1 << (i % WORD_BITS));
            if was != 0 {
                break;
            }
            i /= WORD_BITS;
        }
    }

    /// Clears pageblock `pb` in summary `id` and the levels that become stale.
    #[inline]
    fn sum_clear(&mut self, id: usize, mut i: u64) {
        for &(off, words) in &self.sum_levels {
            let w = off + id * words + (i / WORD_BITS) as usize;
            let now = self.sum[w] & !(1 << (i % WORD_BITS));
            self.sum[w] = now;
            if now != 0 {
                break;
            }
            i /= WORD_BITS;
        }
    }

    /// The lowest pageblock flagged in summary `id`.
    #[inline]
    fn sum_first(&self, id: usize) -> Option<u64> {
        let mut idx = 0u64;
        for &(off, words) in self.sum_levels.iter().rev() {
            let w = self.sum[off + id * words + idx as usize];
            if w == 0 {
                return None;
            }
            idx = idx * WORD_BITS + u64::from(w.trailing_zeros());
        }
        Some(idx)
    }

    #[inline]
    fn sum_test(&self, id: usize, i: u64) -> bool {
        let (off, words) = self.sum_levels[0];
        self.sum[off + id * words + (i / WORD_BITS) as usize] & (1 << (i % WORD_BITS)) != 0
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
        let (w, m) = self.head_pos(order, idx >> order);
        self.heads[w] |= m;
        tags.set(idx, l as u8);
        self.sum_set(summary_id(order, l), idx >> PAGEBLOCK_ORDER);
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
        let bit = idx >> order;
        let (w, m) = self.head_pos(order, bit);
        let now = self.heads[w] & !m;
        self.heads[w] = now;
        let pb = idx >> PAGEBLOCK_ORDER;
        if self.pageblock_emptied(order, pb, now) {
            self.sum_clear(summary_id(order, l), pb);
        }
        let area = &mut self.area[order as usize];
        area.nr_free -= 1;
        area.nr_free_mt[l] -= 1;
        if mt != MigrateType::Isolate {
            self.nr_free_pages -= 1 << order;
        }
    }

    /// After a head of `order` in pageblock `pb` was cleared, leaving `now` in its word:
    /// whether the pageblock holds no free head of this order any more, so that its
    /// summary bit can be cleared (keeping the summary tight; it can only stay stale while
    /// blocks of the same order on other lists remain in the pageblock). From order 3 up
    /// the heads of one pageblock lie in one word, and `now` answers it.
    #[inline(always)]
    fn pageblock_emptied(&self, order: u32, pb: u64, now: u64) -> bool {
        let (start, end) = pageblock_bits(pb, order);
        let span = end - start;
        if span == 0 {
            true
        } else if start / WORD_BITS == (end - 1) / WORD_BITS {
            let mask = if span == WORD_BITS {
                !0
            } else {
                ((1u64 << span) - 1) << (start % WORD_BITS)
            };
            now & mask == 0
        } else {
            !self.heads_any(order, start, end)
        }
    }

    /// `get_page_from_free_area()` followed by `del_page_from_free_list()` in one pass:
    /// takes the lowest free block of `order` off list `mt` and returns its pfn.
    #[inline]
    pub(crate) fn take_page_from_free_area(
        &mut self,
        tags: &AtomicTags,
        order: u32,
        mt: MigrateType,
    ) -> Option<u64> {
        if self.free_area_empty(order, mt) {
            return None;
        }
        let l = list_index(mt);
        let id = summary_id(order, l);
        let off = self.head_off[order as usize];
        while let Some(pb) = self.sum_first(id) {
            let (start, end) = pageblock_bits(pb, order);
            let mut i = start;
            while let Some(bit) = self.heads_find_next(order, i, end) {
                let idx = bit << order;
                if usize::from(tags.get(idx)) == l {
                    let w = off + (bit / WORD_BITS) as usize;
                    let now = self.heads[w] & !(1 << (bit % WORD_BITS));
                    self.heads[w] = now;
                    if self.pageblock_emptied(order, pb, now) {
                        self.sum_clear(id, pb);
                    }
                    let area = &mut self.area[order as usize];
                    area.nr_free -= 1;
                    area.nr_free_mt[l] -= 1;
                    if mt != MigrateType::Isolate {
                        self.nr_free_pages -= 1 << order;
                    }
                    return Some(self.base + idx);
                }
                i = bit + 1;
            }
            // Stale summary bit: no block of this order and list left in the pageblock.
            self.sum_clear(id, pb);
        }
        None
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
        if idx & ((1 << order) - 1) != 0 || !self.head_test(order, idx >> order) {
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
        let id = summary_id(order, l);
        while let Some(pb) = self.sum_first(id) {
            let (start, end) = pageblock_bits(pb, order);
            let mut i = start;
            while let Some(bit) = self.heads_find_next(order, i, end) {
                let idx = bit << order;
                if usize::from(tags.get(idx)) == l {
                    return Some(self.base + idx);
                }
                i = bit + 1;
            }
            // Stale summary bit: no block of this order and list left in the pageblock.
            self.sum_clear(id, pb);
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
        while let Some(bit) = self.heads_find_next(order, i, hi) {
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
        self.sum_test(
            summary_id(order, list_index(mt)),
            (pfn - self.base) >> PAGEBLOCK_ORDER,
        )
    }

    /// Bytes of memory the index occupies (heads and summaries).
    pub(crate) fn bytes(&self) -> usize {
        (self.heads.len() + self.sum.len()) * 8
    }
}

const WORD_BITS: u64 = 64;

fn words_for(bits: u64) -> usize {
    bits.div_ceil(WORD_BITS) as usize
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
    fn summary_levels_find_lowest_block_in_a_large_zone() {
        // 2^22 pages: 8192 pageblocks, three summary levels (128 words, 2 words, 1 word).
        let n = 1 << 22;
        let tags = AtomicTags::new(n);
        let mut fi = FreeIndex::new(0, n);
        assert_eq!(fi.sum_levels.len(), 3);
        let far = 4_000 * 512 + 48;
        let near = 70 * 512 + 16;
        fi.add_to_free_list(&tags, far, 4, MigrateType::Movable);
        fi.add_to_free_list(&tags, near, 4, MigrateType::Movable);
        fi.add_to_free_list(&tags, near + 64, 6, MigrateType::Unmovable);
        assert_eq!(
            fi.get_page_from_free_area(&tags, 4, MigrateType::Movable),
            Some(near)
        );
        fi.del_page_from_free_list(near, 4, MigrateType::Movable);
        assert!(!fi.summary_flags(near, 4, MigrateType::Movable));
        assert!(fi.summary_flags(near, 6, MigrateType::Unmovable));
        assert_eq!(
            fi.get_page_from_free_area(&tags, 4, MigrateType::Movable),
            Some(far)
        );
        fi.del_page_from_free_list(far, 4, MigrateType::Movable);
        assert_eq!(
            fi.get_page_from_free_area(&tags, 4, MigrateType::Movable),
            None
        );
        // Order 0: a pageblock's heads span eight words; the summary bit stays while any
        // head of the order is left in the pageblock.
        fi.add_to_free_list(&tags, 512 * 9 + 3, 0, MigrateType::Movable);
        fi.add_to_free_list(&tags, 512 * 9 + 500, 0, MigrateType::Movable);
        fi.del_page_from_free_list(512 * 9 + 3, 0, MigrateType::Movable);
        assert!(fi.summary_flags(512 * 9, 0, MigrateType::Movable));
        fi.del_page_from_free_list(512 * 9 + 500, 0, MigrateType::Movable);
        assert!(!fi.summary_flags(512 * 9, 0, MigrateType::Movable));
        assert_eq!(fi.nr_free_pages, 64);
    }

    #[test]
    fn take_equals_get_then_del() {
        let tags = AtomicTags::new(1 << 14);
        let mut a = FreeIndex::new(0, 1 << 14);
        let mut b = FreeIndex::new(0, 1 << 14);
        for (pfn, order, mt) in [
            (4096 + 512, 9, MigrateType::Movable),
            (64, 4, MigrateType::Unmovable),
            (96, 4, MigrateType::Movable),
            (2048 + 8, 3, MigrateType::Movable),
            (3, 0, MigrateType::Movable),
            (700, 0, MigrateType::Movable),
        ] {
            a.add_to_free_list(&tags, pfn, order, mt);
            b.add_to_free_list(&tags, pfn, order, mt);
        }
        for (order, mt) in [
            (0, MigrateType::Movable),
            (4, MigrateType::Movable),
            (4, MigrateType::Unmovable),
            (0, MigrateType::Movable),
            (9, MigrateType::Movable),
            (3, MigrateType::Movable),
            (3, MigrateType::Movable),
        ] {
            let got = a.get_page_from_free_area(&tags, order, mt);
            if let Some(p) = got {
                a.del_page_from_free_list(p, order, mt);
            }
            assert_eq!(b.take_page_from_free_area(&tags, order, mt), got);
            assert_eq!(a.area, b.area);
            assert_eq!(a.nr_free_pages, b.nr_free_pages);
            assert_eq!(a.heads, b.heads);
            assert_eq!(a.sum, b.sum);
        }
        assert_eq!(b.nr_free_pages, 0);
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
