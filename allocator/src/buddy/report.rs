//! Reports in the formats of `/proc/zoneinfo`, `/proc/buddyinfo` and `/proc/pagetypeinfo`
//! (Linux 6.1 `mm/vmstat.c`: `zoneinfo_show_print`, `frag_show_print`,
//! `pagetypeinfo_showfree_print`, `pagetypeinfo_showblockcount_print`).
//!
//! zoneinfo prints the subset of fields the pool has, in the kernel's layout: `pages free`,
//! `boost` (always 0), `min`, `low`, `high`, `spanned`, `present`, `managed`, `cma` (0),
//! `protection:` (five entries: the kernel's `MAX_NR_ZONES` with ZONE_DEVICE), then for
//! populated zones `nr_free_pages`, the pagesets of each cache slot (with `vm stats
//! threshold` as `calculate_normal_threshold` computes it), `node_unreclaimable`
//! and `start_pfn`. The per-node stats block and the other vmstat counters are left out.
//! A ZONE_DEVICE entry (always empty) follows each node's Movable zone, as on x86_64.
//! pagetypeinfo lists the migratetypes Unmovable, Movable, Reclaimable, HighAtomic, Isolate
//! (a kernel without CMA).

use super::pageblock::list_index;
use super::pool::Pool;
use super::watermark::{Wmark, MAX_NR_ZONES};
use super::zone::Zone;
use crate::types::{MigrateType, MAX_ORDER, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};
use std::fmt::Write;

/// Migratetypes as `/proc/pagetypeinfo` lists them (`migratetype_names[]` without CMA).
const PAGETYPE_NAMES: [MigrateType; 5] = [
    MigrateType::Unmovable,
    MigrateType::Movable,
    MigrateType::Reclaimable,
    MigrateType::HighAtomic,
    MigrateType::Isolate,
];

fn populated(z: &Zone) -> bool {
    z.present_pages() != 0
}

impl Pool {
    /// `/proc/zoneinfo` (the subset described in the module docs).
    pub fn zoneinfo(&self) -> String {
        let mut m = String::new();
        for (pos, node) in self.nodes.iter().enumerate() {
            for z in &self.zones[pos * 4..pos * 4 + 4] {
                zoneinfo_zone(&mut m, node.0, z.zone_type.name(), Some(z));
            }
            zoneinfo_zone(&mut m, node.0, "Device", None);
        }
        m
    }

    /// `/proc/buddyinfo`: free blocks per order of every populated zone.
    pub fn buddyinfo(&self) -> String {
        let mut m = String::new();
        for z in self.zones.iter().filter(|z| populated(z)) {
            let _ = write!(m, "Node {}, zone {:>8} ", z.node.0, z.zone_type.name());
            let st = z.state.lock();
            for a in &st.free.area {
                let _ = write!(m, "{:6} ", a.nr_free);
            }
            m.push('\n');
        }
        m
    }

    /// `/proc/pagetypeinfo` (free blocks per order and migratetype, pageblocks per
    /// migratetype).
    pub fn pagetypeinfo(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "Page block order: {PAGEBLOCK_ORDER}");
        let _ = writeln!(m, "Pages per block:  {PAGEBLOCK_NR_PAGES}");
        m.push('\n');
        // pagetypeinfo_show() runs once per node.
        for (pos, _) in self.nodes.iter().enumerate() {
            let zones: Vec<&Zone> = self.zones[pos * 4..pos * 4 + 4]
                .iter()
                .filter(|z| populated(z))
                .collect();
            let _ = write!(m, "{:<43} ", "Free pages count per migrate type at order");
            for o in 0..MAX_ORDER {
                let _ = write!(m, "{o:6} ");
            }
            m.push('\n');
            for z in &zones {
                let st = z.state.lock();
                for mt in PAGETYPE_NAMES {
                    let _ = write!(
                        m,
                        "Node {:4}, zone {:>8}, type {:>12} ",
                        z.node.0,
                        z.zone_type.name(),
                        mt.name()
                    );
                    for a in &st.free.area {
                        let n = if mt == MigrateType::HighAtomic {
                            0
                        } else {
                            a.nr_free_mt[list_index(mt)]
                        };
                        if n >= 100_000 {
                            let _ = write!(m, ">{:6} ", 100_000);
                        } else {
                            let _ = write!(m, "{n:6} ");
                        }
                    }
                    m.push('\n');
                }
            }
            let _ = write!(m, "\n{:<23}", "Number of blocks type ");
            for mt in PAGETYPE_NAMES {
                let _ = write!(m, "{:>12} ", mt.name());
            }
            m.push('\n');
            for z in &zones {
                let counts = pageblock_counts(z);
                let _ = write!(m, "Node {}, zone {:>8} ", z.node.0, z.zone_type.name());
                for c in counts {
                    let _ = write!(m, "{c:12} ");
                }
                m.push('\n');
            }
        }
        m
    }
}

/// `pagetypeinfo_showblockcount_print()`: pageblocks by migratetype, stepping from
/// `zone_start_pfn` by `pageblock_nr_pages` over online pages of the zone.
fn pageblock_counts(z: &Zone) -> [u64; 5] {
    let st = z.state.lock();
    let mut count = [0u64; 5];
    let mut pfn = z.zone_start_pfn;
    let end = z.zone_start_pfn + z.spanned_pages;
    while pfn < end {
        if st.present_ranges.iter().any(|&(s, e)| s <= pfn && pfn < e) {
            let mt = z.pageblock_mt(pfn);
            if let Some(i) = PAGETYPE_NAMES.iter().position(|&t| t == mt) {
                count[i] += 1;
            }
        }
        pfn += PAGEBLOCK_NR_PAGES;
    }
    count
}

/// `fls()`: one-based index of the highest set bit, 0 for 0.
fn fls(x: u64) -> u64 {
    u64::from(64 - x.leading_zeros())
}

/// `calculate_normal_threshold()`: the per-CPU vmstat threshold zoneinfo prints.
pub fn calculate_normal_threshold(managed_pages: u64, nr_cpus: u64) -> u64 {
    let mem = managed_pages >> (27 - crate::types::PAGE_SHIFT);
    (2 * fls(nr_cpus) * (1 + fls(mem))).min(125)
}

fn zoneinfo_zone(m: &mut String, node: u32, name: &str, z: Option<&Zone>) {
    let _ = write!(m, "Node {node}, zone {name:>8}");
    let free = z.map_or(0, Zone::nr_free_pages);
    let w = |wm: Wmark| z.map_or(0, |z| z.wmark_pages(wm));
    let _ = write!(
        m,
        "\n  pages free     {free}\n        boost    0\n        min      {}\n        low      {}\n        high     {}\n        spanned  {}\n        present  {}\n        managed  {}\n        cma      0",
        w(Wmark::Min),
        w(Wmark::Low),
        w(Wmark::High),
        z.map_or(0, Zone::spanned_pages),
        z.map_or(0, Zone::present_pages),
        z.map_or(0, Zone::managed_pages),
    );
    let reserve = z.map_or([0; MAX_NR_ZONES], Zone::lowmem_reserve);
    let _ = write!(m, "\n        protection: ({}", reserve[0]);
    for r in &reserve[1..] {
        let _ = write!(m, ", {r}");
    }
    m.push(')');
    let Some(z) = z.filter(|z| populated(z)) else {
        m.push('\n');
        return;
    };
    let _ = write!(m, "\n      {:<12} {free}", "nr_free_pages");
    let _ = write!(m, "\n  pagesets");
    let threshold = calculate_normal_threshold(z.managed_pages(), z.pcp.len() as u64);
    for (i, slot) in z.pcp.iter().enumerate() {
        let p = slot.0.lock();
        let _ = write!(
            m,
            "\n    cpu: {i}\n              count: {}\n              high:  {}\n              batch: {}\n  vm stats threshold: {threshold}",
            p.count, p.high, p.batch
        );
    }
    let _ = write!(
        m,
        "\n  node_unreclaimable:  0\n  start_pfn:           {}",
        z.zone_start_pfn
    );
    m.push('\n');
}
