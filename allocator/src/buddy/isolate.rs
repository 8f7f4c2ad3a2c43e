//! Range isolation, offlining and onlining of ZONE_MOVABLE memory
//! (`mm/page_isolation.c`: `start_isolate_page_range`, `undo_isolate_page_range`,
//! `test_pages_isolated`; `mm/memory_hotplug.c`: `offline_pages`, `online_pages`).
//!
//! Offlining a range: per-CPU caches of the zone are disabled and drained
//! (`zone_pcp_disable`), every pageblock becomes MIGRATE_ISOLATE and its free pages move to
//! the ISOLATE lists (they leave `NR_FREE_PAGES`, and are never handed out again); the
//! blocks still allocated in the range are reported to the owner's migrate callback, which
//! must free them (typically after allocating a replacement elsewhere — the pool never hands
//! out isolated pages); when `test_pages_isolated` passes, the free blocks are taken out of
//! the zone (`__offline_isolated_pages`): present and managed pages drop and watermarks are
//! recomputed. The pageblocks of offline memory stay ISOLATE, as in Linux.
//!
//! Onlining is the reverse: the range is added to the zone's present pages with isolated
//! pageblocks, freed to the buddy lists, and un-isolated to MOVABLE.

use super::pool::Pool;
use super::zone::{lock, present_in, Zone, ZoneState};
use super::BuddyError;
use crate::types::{
    MigrateType, Order, Pfn, ZoneType, MAX_ORDER, MAX_ORDER_NR_PAGES, PAGEBLOCK_NR_PAGES,
    PAGEBLOCK_ORDER,
};
use std::sync::atomic::Ordering;

/// What an offline did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineReport {
    /// Pages taken out of the zone.
    pub nr_pages: u64,
    /// Blocks the migrate callback was asked to move, in the order asked.
    pub migrated: Vec<(Pfn, Order)>,
}

/// How often `offline_pages` rescans for allocated blocks before giving up.
const OFFLINE_RETRIES: usize = 8;

impl Pool {
    /// The zone index of a ZONE_MOVABLE whose span holds `[start, end)`.
    fn movable_zone_for(&self, start: Pfn, end: Pfn) -> Result<usize, BuddyError> {
        if start.0 >= end.0
            || !start.0.is_multiple_of(MAX_ORDER_NR_PAGES)
            || !end.0.is_multiple_of(MAX_ORDER_NR_PAGES)
        {
            return Err(BuddyError::RangeNotAligned { start, end });
        }
        self.zones
            .iter()
            .position(|z| {
                z.zone_type == ZoneType::Movable && z.spans(start.0) && z.spans(end.0 - 1)
            })
            .ok_or(BuddyError::RangeNotMovable { start, end })
    }

    fn check_online(st: &ZoneState, start: Pfn, end: Pfn) -> Result<(), BuddyError> {
        let present = present_in(&st.present_ranges, start.0, end.0);
        let missing = (end.0 - start.0) - present;
        if missing > 0 {
            return Err(BuddyError::RangeHasHoles {
                start,
                end,
                missing,
            });
        }
        Ok(())
    }

    /// `start_isolate_page_range()`: every pageblock of `[start, end)` (which must be
    /// online memory of one ZONE_MOVABLE, aligned to `MAX_ORDER_NR_PAGES`) becomes
    /// MIGRATE_ISOLATE and its free pages move to the ISOLATE lists. Fails without change if
    /// a pageblock is already isolated.
    pub fn start_isolate_page_range(&self, start: Pfn, end: Pfn) -> Result<(), BuddyError> {
        let zi = self.movable_zone_for(start, end)?;
        let zone = &self.zones[zi];
        let mut st = zone.state.lock();
        Self::check_online(&st, start, end)?;
        let mut pfn = start.0;
        while pfn < end.0 {
            if zone.pageblock_mt(pfn) == MigrateType::Isolate {
                return Err(BuddyError::AlreadyIsolated(Pfn(pfn)));
            }
            pfn += PAGEBLOCK_NR_PAGES;
        }
        let mut pfn = start.0;
        while pfn < end.0 {
            // set_migratetype_isolate()
            zone.pageblocks.set(zone.pb(pfn), MigrateType::Isolate);
            zone.nr_isolate_pageblock.fetch_add(1, Ordering::AcqRel);
            zone.move_freepages_block(&mut st, pfn, MigrateType::Isolate);
            pfn += PAGEBLOCK_NR_PAGES;
        }
        zone.publish(&st);
        Ok(())
    }

    /// `undo_isolate_page_range()`: the pageblocks of `[start, end)` go back to MOVABLE,
    /// their free pages with them (merging with free buddies outside the range again).
    pub fn undo_isolate_page_range(&self, start: Pfn, end: Pfn) -> Result<(), BuddyError> {
        let zi = self.movable_zone_for(start, end)?;
        let zone = &self.zones[zi];
        let mut st = zone.state.lock();
        let mut pfn = start.0;
        while pfn < end.0 {
            if zone.pageblock_mt(pfn) != MigrateType::Isolate {
                return Err(BuddyError::NotIsolated {
                    start,
                    end,
                    pfn: Pfn(pfn),
                });
            }
            pfn += PAGEBLOCK_NR_PAGES;
        }
        let mut pfn = start.0;
        while pfn < end.0 {
            unset_migratetype_isolate(zone, &mut st, pfn, MigrateType::Movable);
            pfn += PAGEBLOCK_NR_PAGES;
        }
        zone.publish(&st);
        Ok(())
    }

    /// The blocks still allocated in `[start, end)` as (pfn, order). Pages on per-CPU lists
    /// are not included (drain first).
    pub fn allocated_in_range(
        &self,
        start: Pfn,
        end: Pfn,
    ) -> Result<Vec<(Pfn, Order)>, BuddyError> {
        let zi = self.movable_zone_for(start, end)?;
        let zone = &self.zones[zi];
        let st = zone.state.lock();
        let mut out = Vec::new();
        let mut pfn = start.0;
        while pfn < end.0 {
            if let Some((order, _)) = st.free.free_block_at(&zone.tags, pfn) {
                pfn += 1 << order;
            } else if zone.is_allocated_head(pfn) {
                let order = zone.alloc_order(pfn).min(MAX_ORDER as u32 - 1);
                out.push((Pfn(pfn), Order(order)));
                pfn += 1 << order;
            } else {
                pfn += 1;
            }
        }
        Ok(out)
    }

    /// `test_pages_isolated()`: whether every page of `[start, end)` is free on an ISOLATE
    /// list. Returns the first page that is not.
    pub fn test_pages_isolated(&self, start: Pfn, end: Pfn) -> Result<(), BuddyError> {
        let zi = self.movable_zone_for(start, end)?;
        let zone = &self.zones[zi];
        let st = zone.state.lock();
        test_pages_isolated_locked(zone, &st, start.0, end.0)
            .map_err(|p| BuddyError::StillBusy(Pfn(p)))
    }

    /// `offline_pages()`: isolates `[start, end)` of a ZONE_MOVABLE, asks `migrate` to move
    /// every block still allocated there (the callback must free the block, e.g. after
    /// allocating and filling a replacement), and takes the range out of the zone. On any
    /// failure the isolation is undone and the zone is as before (minus what was migrated).
    pub fn offline_pages<F>(
        &self,
        start: Pfn,
        end: Pfn,
        mut migrate: F,
    ) -> Result<OfflineReport, BuddyError>
    where
        F: FnMut(Pfn, Order) -> Result<(), String>,
    {
        let _hotplug = lock(&self.hotplug);
        let zi = self.movable_zone_for(start, end)?;
        let zone = &self.zones[zi];
        {
            let st = zone.state.lock();
            Self::check_online(&st, start, end)?;
        }
        // zone_pcp_disable()
        zone.pcp_disabled.store(true, Ordering::Release);
        zone.drain_pages();
        let result = self.offline_isolated(zi, start, end, &mut migrate);
        zone.pcp_disabled.store(false, Ordering::Release);
        if result.is_ok() {
            self.init_per_zone_wmark_min();
        }
        result
    }

    fn offline_isolated(
        &self,
        zi: usize,
        start: Pfn,
        end: Pfn,
        migrate: &mut dyn FnMut(Pfn, Order) -> Result<(), String>,
    ) -> Result<OfflineReport, BuddyError> {
        let zone = &self.zones[zi];
        self.start_isolate_page_range(start, end)?;
        let mut migrated = Vec::new();
        let mut outcome = Err(BuddyError::StillBusy(start));
        for _ in 0..OFFLINE_RETRIES {
            zone.drain_pages();
            let busy = self.allocated_in_range(start, end)?;
            for &(pfn, order) in &busy {
                if let Err(reason) = migrate(pfn, order) {
                    outcome = Err(BuddyError::MigrateFailed {
                        pfn,
                        order: order.0,
                        reason,
                    });
                    break;
                }
                migrated.push((pfn, order));
            }
            if matches!(outcome, Err(BuddyError::MigrateFailed { .. })) {
                break;
            }
            zone.drain_pages();
            outcome = self.test_pages_isolated(start, end);
            if outcome.is_ok() {
                break;
            }
        }
        if let Err(e) = outcome {
            self.undo_isolate_page_range(start, end)?;
            return Err(e);
        }
        // __offline_isolated_pages()
        let mut st = zone.state.lock();
        let mut pfn = start.0;
        while pfn < end.0 {
            let Some((order, list)) = st.free.free_block_at(&zone.tags, pfn) else {
                return Err(BuddyError::Corrupt(format!(
                    "page {pfn:#x} not free after test_pages_isolated"
                )));
            };
            st.free.del_page_from_free_list(pfn, order, list);
            pfn += 1 << order;
        }
        let n = end.0 - start.0;
        st.present_ranges = subtract_range(&st.present_ranges, start.0, end.0);
        zone.nr_isolate_pageblock
            .fetch_sub(n >> PAGEBLOCK_ORDER, Ordering::AcqRel);
        zone.managed.fetch_sub(n, Ordering::AcqRel);
        zone.present.fetch_sub(n, Ordering::AcqRel);
        zone.publish(&st);
        Ok(OfflineReport {
            nr_pages: n,
            migrated,
        })
    }

    /// `online_pages()`: adds `[start, end)` (aligned to `MAX_ORDER_NR_PAGES`, inside a
    /// ZONE_MOVABLE span, not online anywhere) to the zone and frees it, then recomputes
    /// watermarks.
    pub fn online_pages(&self, start: Pfn, end: Pfn) -> Result<(), BuddyError> {
        let _hotplug = lock(&self.hotplug);
        let zi = self.movable_zone_for(start, end)?;
        for z in &self.zones {
            let st = z.state.lock();
            if present_in(&st.present_ranges, start.0, end.0) > 0 {
                return Err(BuddyError::RangeOnline { start, end });
            }
        }
        let zone = &self.zones[zi];
        {
            let mut st = zone.state.lock();
            let n = end.0 - start.0;
            // move_pfn_range_to_zone(..., MIGRATE_ISOLATE)
            let mut pfn = start.0;
            while pfn < end.0 {
                zone.pageblocks.set(zone.pb(pfn), MigrateType::Isolate);
                pfn += PAGEBLOCK_NR_PAGES;
            }
            zone.nr_isolate_pageblock
                .fetch_add(n >> PAGEBLOCK_ORDER, Ordering::AcqRel);
            st.present_ranges = add_range(&st.present_ranges, start.0, end.0);
            zone.managed.fetch_add(n, Ordering::AcqRel);
            zone.present.fetch_add(n, Ordering::AcqRel);
            // online_pages_range(): free the pages (to the ISOLATE lists).
            zone.free_range(&mut st, start.0, end.0, MigrateType::Isolate);
            // undo_isolate_page_range(..., MIGRATE_MOVABLE)
            let mut pfn = start.0;
            while pfn < end.0 {
                unset_migratetype_isolate(zone, &mut st, pfn, MigrateType::Movable);
                pfn += PAGEBLOCK_NR_PAGES;
            }
            zone.publish(&st);
        }
        self.init_per_zone_wmark_min();
        Ok(())
    }
}

/// `unset_migratetype_isolate()`: a free block of order `pageblock_order..MAX_ORDER-1` at
/// the start of the pageblock is taken off and freed again after the pageblock changed type,
/// so it merges with a non-isolated buddy; other free pages are moved to `mt`.
fn unset_migratetype_isolate(zone: &Zone, st: &mut ZoneState, pfn: u64, mt: MigrateType) {
    let mut isolated_page = None;
    if let Some((order, list)) = st.free.free_block_at(&zone.tags, pfn) {
        if order >= PAGEBLOCK_ORDER && order < MAX_ORDER as u32 - 1 {
            let buddy = pfn ^ (1 << order);
            if zone.spans(buddy) && zone.pageblock_mt(buddy) != MigrateType::Isolate {
                st.free.del_page_from_free_list(pfn, order, list);
                isolated_page = Some(order);
            }
        }
    }
    if isolated_page.is_none() {
        zone.move_freepages_block(st, pfn, mt);
    }
    zone.pageblocks.set(zone.pb(pfn), mt);
    zone.nr_isolate_pageblock.fetch_sub(1, Ordering::AcqRel);
    if let Some(order) = isolated_page {
        // __putback_isolated_page()
        zone.free_one_page_locked(st, pfn, order, mt);
    }
}

fn test_pages_isolated_locked(
    zone: &Zone,
    st: &ZoneState,
    start: u64,
    end: u64,
) -> Result<(), u64> {
    let mut pfn = start;
    while pfn < end {
        match st.free.free_block_at(&zone.tags, pfn) {
            Some((order, MigrateType::Isolate)) => pfn += 1 << order,
            _ => return Err(pfn),
        }
    }
    Ok(())
}

fn subtract_range(ranges: &[(u64, u64)], s: u64, e: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(a, b) in ranges {
        if b <= s || a >= e {
            out.push((a, b));
            continue;
        }
        if a < s {
            out.push((a, s));
        }
        if b > e {
            out.push((e, b));
        }
    }
    out
}

fn add_range(ranges: &[(u64, u64)], s: u64, e: u64) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = ranges.to_vec();
    all.push((s, e));
    all.sort();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (a, b) in all {
        match out.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_arithmetic() {
        let r = vec![(0, 100), (200, 300)];
        assert_eq!(subtract_range(&r, 50, 250), vec![(0, 50), (250, 300)]);
        assert_eq!(add_range(&[(0, 50), (250, 300)], 50, 250), vec![(0, 300)]);
    }
}
