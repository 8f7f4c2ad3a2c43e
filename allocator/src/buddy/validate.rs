//! `validate()`: rescans every zone's metadata and rechecks every counter against it.

use super::pageblock::{list_index, NR_FREE_LISTS};
use super::pcp::{pcp_entry_pfn, pindex_to_order, NR_PCP_LISTS};
use super::pool::Pool;
use super::zone::Zone;
use super::BuddyError;
use crate::types::{MigrateType, MAX_ORDER, PAGEBLOCK_NR_PAGES};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

impl Pool {
    /// Rescans all zones and checks the invariants listed in [`super`]. Takes each zone's
    /// per-CPU locks and zone lock in turn, so it may run while other threads allocate and
    /// free (blocks change hands only under those locks).
    pub fn validate(&self) -> Result<(), BuddyError> {
        for z in &self.zones {
            validate_zone(z).map_err(|m| {
                BuddyError::Corrupt(format!("node {} zone {}: {m}", z.node, z.zone_type))
            })?;
        }
        Ok(())
    }
}

fn validate_zone(z: &Zone) -> Result<(), String> {
    let pcps: Vec<_> = z.pcp.iter().map(|s| s.0.lock()).collect();
    let st = z.state.lock();
    let mut cached = HashMap::new();
    for (i, p) in pcps.iter().enumerate() {
        let n: u64 = p
            .lists
            .iter()
            .enumerate()
            .map(|(pi, l)| (l.len() as u64) << pindex_to_order(pi))
            .sum();
        if n != p.count {
            return Err(format!(
                "pcp slot {i}: count {} but {n} pages listed",
                p.count
            ));
        }
        let ext: u64 = p.lists[NR_PCP_LISTS..]
            .iter()
            .enumerate()
            .map(|(k, l)| (l.len() as u64) << pindex_to_order(NR_PCP_LISTS + k))
            .sum();
        if ext != p.ext_count {
            return Err(format!(
                "pcp slot {i}: ext_count {} but {ext} pages on extension lists",
                p.ext_count
            ));
        }
        for (pi, list) in p.lists.iter().enumerate() {
            let order = pindex_to_order(pi);
            for entry in list.iter() {
                let pfn = pcp_entry_pfn(entry, order);
                if cached.insert(pfn, order).is_some() {
                    return Err(format!("pfn {pfn:#x} twice on per-CPU lists"));
                }
                if z.alloc_order(pfn) != order {
                    return Err(format!(
                        "per-CPU block {pfn:#x} on an order-{order} list has order code {}",
                        z.alloc_order(pfn)
                    ));
                }
            }
        }
    }
    let mut counts = [[0u64; NR_FREE_LISTS]; MAX_ORDER];
    let (mut free_pages, mut nr_free_pages, mut allocated_pages, mut alloc_blocks) = (0, 0, 0, 0);
    let mut seen_cached = 0;
    let mut cached_pages = 0u64;
    let mut present = 0;
    for &(s, e) in &st.present_ranges {
        present += e - s;
        let mut pfn = s;
        while pfn < e {
            if let Some((order, list)) = st.free.free_block_at(&z.tags, pfn) {
                let end = pfn + (1 << order);
                if end > e {
                    return Err(format!(
                        "free block {pfn:#x} order {order} runs past present range end {e:#x}"
                    ));
                }
                if z.is_allocated_head(pfn) || cached.contains_key(&pfn) {
                    return Err(format!("free block {pfn:#x} is also allocated or cached"));
                }
                if !st.free.summary_flags(pfn, order, list) {
                    return Err(format!("summary misses free block {pfn:#x} order {order}"));
                }
                let pb_mt = z.pageblock_mt(pfn);
                if (list == MigrateType::Isolate) != (pb_mt == MigrateType::Isolate) {
                    return Err(format!(
                        "free block {pfn:#x} on list {list:?} in a {pb_mt:?} pageblock"
                    ));
                }
                counts[order as usize][list_index(list)] += 1;
                free_pages += 1 << order;
                if list != MigrateType::Isolate {
                    nr_free_pages += 1 << order;
                }
                pfn = end;
            } else if z.is_allocated_head(pfn) {
                let order = z.alloc_order(pfn);
                if order as usize >= MAX_ORDER
                    || pfn & ((1 << order) - 1) != 0
                    || pfn + (1 << order) > e
                {
                    return Err(format!("allocated block {pfn:#x} has bad order {order}"));
                }
                if cached.contains_key(&pfn) {
                    return Err(format!(
                        "allocated block {pfn:#x} is also on a per-CPU list"
                    ));
                }
                allocated_pages += 1 << order;
                alloc_blocks += 1;
                pfn += 1 << order;
            } else if let Some(&order) = cached.get(&pfn) {
                if pfn + (1 << order) > e {
                    return Err(format!(
                        "per-CPU block {pfn:#x} runs past present range end {e:#x}"
                    ));
                }
                seen_cached += 1;
                cached_pages += 1 << order;
                pfn += 1 << order;
            } else {
                return Err(format!(
                    "present page {pfn:#x} is neither free, allocated nor cached"
                ));
            }
        }
    }
    if seen_cached != cached.len() {
        return Err(format!(
            "{} per-CPU pages, {seen_cached} of them found in present ranges",
            cached.len()
        ));
    }
    let heads = z.tags.alloc_count_ones();
    if heads != alloc_blocks {
        return Err(format!(
            "{heads} allocated-head bits but {alloc_blocks} allocated blocks found"
        ));
    }
    for (o, a) in st.free.area.iter().enumerate() {
        if a.nr_free_mt != counts[o] {
            return Err(format!(
                "order {o}: nr_free per type {:?}, rescan {:?}",
                a.nr_free_mt, counts[o]
            ));
        }
        if a.nr_free != counts[o].iter().sum::<u64>() {
            return Err(format!("order {o}: nr_free {} != sum per type", a.nr_free));
        }
        let scanned = st
            .free
            .heads_in(&z.tags, o as u32, z.base, z.base + z.nr_pages)
            .len() as u64;
        if scanned != a.nr_free {
            return Err(format!(
                "order {o}: {scanned} head bits set, nr_free {}",
                a.nr_free
            ));
        }
    }
    if st.free.nr_free_pages != nr_free_pages
        || z.nr_free_pages.load(Ordering::Acquire) != nr_free_pages
    {
        return Err(format!(
            "NR_FREE_PAGES {} (published {}), rescan {nr_free_pages}",
            st.free.nr_free_pages,
            z.nr_free_pages()
        ));
    }
    let managed = z.managed_pages();
    if present != managed || z.present_pages() != present {
        return Err(format!(
            "present ranges hold {present} pages, present {} managed {managed}",
            z.present_pages()
        ));
    }
    if free_pages + cached_pages + allocated_pages != managed {
        return Err(format!(
            "free {free_pages} + cached {cached_pages} + allocated {allocated_pages} != managed {managed}"
        ));
    }
    let mut isolated = 0;
    for pb in 0..z.pageblocks.len() {
        let start = z.base + pb * PAGEBLOCK_NR_PAGES;
        if z.pageblocks.get(pb) == MigrateType::Isolate
            && super::zone::present_in(&st.present_ranges, start, start + PAGEBLOCK_NR_PAGES) > 0
        {
            isolated += 1;
        }
    }
    if isolated != z.nr_isolate_pageblock.load(Ordering::Acquire) {
        return Err(format!(
            "{isolated} isolated online pageblocks, nr_isolate_pageblock {}",
            z.nr_isolate_pageblock.load(Ordering::Acquire)
        ));
    }
    Ok(())
}
