//! Zone boundaries and per-node zone sizes, as Linux 6.1 computes them in `free_area_init()`
//! (x86_64: `zone_sizes_init()`), `zone_spanned_pages_in_node()`,
//! `zone_absent_pages_in_node()` and `calculate_node_totalpages()`.

use super::memmap::HostMemoryMap;
use super::movable::ZoneMovable;
use crate::types::{NodeId, Pfn, ZoneType, PAGE_SHIFT};
use serde::Serialize;

/// End of ZONE_DMA on x86_64: 16 MiB (`MAX_DMA_PFN`).
pub const MAX_DMA_PFN: u64 = (16 << 20) >> PAGE_SHIFT;
/// End of ZONE_DMA32 on x86_64: 4 GiB (`MAX_DMA32_PFN`).
pub const MAX_DMA32_PFN: u64 = 1 << (32 - PAGE_SHIFT);

/// The architecture's zone ranges (`arch_zone_lowest_possible_pfn[]` /
/// `arch_zone_highest_possible_pfn[]`), half-open pfn ranges. ZONE_MOVABLE has none: it is
/// `[0, 0)` here as in the kernel, and is placed per node by `zone_movable_pfn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ArchZoneRanges {
    lowest: [u64; ZoneType::ALL.len()],
    highest: [u64; ZoneType::ALL.len()],
}

impl ArchZoneRanges {
    /// The ranges `free_area_init()` records for the limits of x86_64's `zone_sizes_init()`:
    /// DMA up to `min(MAX_DMA_PFN, max_low_pfn)`, DMA32 up to `min(MAX_DMA32_PFN,
    /// max_low_pfn)`, Normal up to `max_low_pfn` (= `max_pfn` on 64-bit). Each zone starts
    /// where the previous one ended, the first at the start of memory.
    pub fn x86_64(map: &HostMemoryMap) -> ArchZoneRanges {
        let max_low_pfn = map.max_pfn().0;
        let max_zone_pfn = [
            MAX_DMA_PFN.min(max_low_pfn),
            MAX_DMA32_PFN.min(max_low_pfn),
            max_low_pfn,
            0,
        ];
        let mut ranges = ArchZoneRanges {
            lowest: [0; ZoneType::ALL.len()],
            highest: [0; ZoneType::ALL.len()],
        };
        let mut start_pfn = Pfn::from_addr_down(map.start_of_dram()).0;
        for zone in ZoneType::ALL {
            if zone == ZoneType::Movable {
                continue;
            }
            let end_pfn = max_zone_pfn[zone.index()].max(start_pfn);
            ranges.lowest[zone.index()] = start_pfn;
            ranges.highest[zone.index()] = end_pfn;
            start_pfn = end_pfn;
        }
        ranges
    }

    /// `arch_zone_lowest_possible_pfn[zone]`.
    pub fn lowest(&self, zone: ZoneType) -> Pfn {
        Pfn(self.lowest[zone.index()])
    }

    /// `arch_zone_highest_possible_pfn[zone]` (exclusive).
    pub fn highest(&self, zone: ZoneType) -> Pfn {
        Pfn(self.highest[zone.index()])
    }

    /// Whether the zone has no range ("empty" in the "Zone ranges:" printout).
    pub fn is_empty(&self, zone: ZoneType) -> bool {
        self.lowest[zone.index()] == self.highest[zone.index()]
    }

    /// The zone's range as inclusive byte addresses, as "Zone ranges:" prints it, or `None`
    /// when empty.
    pub fn byte_range(&self, zone: ZoneType) -> Option<(u64, u64)> {
        if self.is_empty(zone) {
            None
        } else {
            Some((self.lowest(zone).addr(), self.highest(zone).addr() - 1))
        }
    }
}

/// One zone of one node: the sizes `calculate_node_totalpages()` stores in `struct zone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Zone {
    /// Which zone.
    pub zone_type: ZoneType,
    /// `zone_start_pfn` (0 when the zone spans nothing).
    pub zone_start_pfn: Pfn,
    /// `spanned_pages`: pages in `[zone_start_pfn, zone_end_pfn)`, holes included.
    pub spanned_pages: u64,
    /// `present_pages`: spanned minus absent pages.
    pub present_pages: u64,
}

impl Zone {
    /// One past the last pfn spanned (`zone_end_pfn()`).
    pub fn zone_end_pfn(&self) -> Pfn {
        Pfn(self.zone_start_pfn.0 + self.spanned_pages)
    }

    /// Whether the zone has pages (`populated_zone()`); `/proc/zoneinfo` prints `start_pfn`
    /// only for such zones.
    pub fn is_populated(&self) -> bool {
        self.present_pages != 0
    }
}

/// The zones of one node (`pg_data_t`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeZones {
    /// The node.
    pub nid: NodeId,
    /// First pfn of the node (`node_start_pfn`).
    pub node_start_pfn: Pfn,
    /// One past the last pfn of the node.
    pub node_end_pfn: Pfn,
    /// `node_spanned_pages`: sum of the zones' spanned pages.
    pub node_spanned_pages: u64,
    /// `node_present_pages`: sum of the zones' present pages.
    pub node_present_pages: u64,
    /// The zones, indexed by [`ZoneType::index`].
    pub zones: [Zone; ZoneType::ALL.len()],
}

/// `adjust_zone_range_for_zone_movable()`: carves ZONE_MOVABLE out of the node's zones.
fn adjust_zone_range_for_zone_movable(
    movable: &ZoneMovable,
    arch: &ArchZoneRanges,
    nid: NodeId,
    zone_type: ZoneType,
    node_end_pfn: u64,
    zone_start_pfn: &mut u64,
    zone_end_pfn: &mut u64,
) {
    let zmp = movable.zone_movable_pfn(nid).0;
    // Only adjust if ZONE_MOVABLE is on this node.
    if zmp == 0 {
        return;
    }
    if zone_type == ZoneType::Movable {
        *zone_start_pfn = zmp;
        *zone_end_pfn = node_end_pfn.min(arch.highest(movable.movable_zone).0);
    } else if !movable.mirrored_kernelcore && *zone_start_pfn < zmp && *zone_end_pfn > zmp {
        // ZONE_MOVABLE starts within this range.
        *zone_end_pfn = zmp;
    } else if *zone_start_pfn >= zmp {
        // The whole range is within ZONE_MOVABLE.
        *zone_start_pfn = *zone_end_pfn;
    }
}

/// `zone_spanned_pages_in_node()`: the zone's span inside the node as `(start, end)` pfns and
/// the number of pages spanned.
pub fn zone_spanned_pages_in_node(
    movable: &ZoneMovable,
    arch: &ArchZoneRanges,
    nid: NodeId,
    zone_type: ZoneType,
    node_start_pfn: Pfn,
    node_end_pfn: Pfn,
) -> (Pfn, Pfn, u64) {
    let (node_start, node_end) = (node_start_pfn.0, node_end_pfn.0);
    let zone_low = arch.lowest(zone_type).0;
    let zone_high = arch.highest(zone_type).0;
    if node_start == 0 && node_end == 0 {
        return (Pfn(0), Pfn(0), 0);
    }
    let mut zone_start = node_start.clamp(zone_low, zone_high);
    let mut zone_end = node_end.clamp(zone_low, zone_high);
    adjust_zone_range_for_zone_movable(
        movable,
        arch,
        nid,
        zone_type,
        node_end,
        &mut zone_start,
        &mut zone_end,
    );
    // Check that this node has pages within the zone's required range.
    if zone_end < node_start || zone_start > node_end {
        return (Pfn(zone_start), Pfn(zone_end), 0);
    }
    // Move the zone boundaries inside the node if necessary.
    zone_end = zone_end.min(node_end);
    zone_start = zone_start.max(node_start);
    // The kernel subtracts unsigned; the span is never negative for a valid map.
    (
        Pfn(zone_start),
        Pfn(zone_end),
        zone_end.saturating_sub(zone_start),
    )
}

/// `__absent_pages_in_range()`: pages of `[range_start, range_end)` not covered by memory of
/// node `nid` (of any node for `None`).
pub fn absent_pages_in_range(
    map: &HostMemoryMap,
    nid: Option<NodeId>,
    range_start_pfn: Pfn,
    range_end_pfn: Pfn,
) -> u64 {
    let (lo, hi) = (range_start_pfn.0, range_end_pfn.0);
    let mut nr_absent = hi.saturating_sub(lo);
    for (start, end, _) in map.pfn_ranges(nid) {
        let start = start.0.clamp(lo, hi.max(lo));
        let end = end.0.clamp(lo, hi.max(lo));
        nr_absent = nr_absent.saturating_sub(end - start);
    }
    nr_absent
}

/// `zone_absent_pages_in_node()`: holes in the zone's range on the node, plus, with
/// `kernelcore=mirror`, the non-mirrored memory of ZONE_NORMAL and the mirrored memory of
/// ZONE_MOVABLE (those pages belong to the other zone).
pub fn zone_absent_pages_in_node(
    map: &HostMemoryMap,
    movable: &ZoneMovable,
    arch: &ArchZoneRanges,
    nid: NodeId,
    zone_type: ZoneType,
    node_start_pfn: Pfn,
    node_end_pfn: Pfn,
) -> u64 {
    let (node_start, node_end) = (node_start_pfn.0, node_end_pfn.0);
    let zone_low = arch.lowest(zone_type).0;
    let zone_high = arch.highest(zone_type).0;
    if node_start == 0 && node_end == 0 {
        return 0;
    }
    let mut zone_start = node_start.clamp(zone_low, zone_high);
    let mut zone_end = node_end.clamp(zone_low, zone_high);
    adjust_zone_range_for_zone_movable(
        movable,
        arch,
        nid,
        zone_type,
        node_end,
        &mut zone_start,
        &mut zone_end,
    );
    let mut nr_absent = absent_pages_in_range(map, Some(nid), Pfn(zone_start), Pfn(zone_end));

    // ZONE_MOVABLE handling: treat pages to be ZONE_MOVABLE in ZONE_NORMAL as absent pages
    // and vice versa.
    if movable.mirrored_kernelcore && movable.zone_movable_pfn(nid).0 != 0 {
        for r in map.regions() {
            let start = r.base_pfn().0.clamp(zone_start, zone_end.max(zone_start));
            let end = r.end_pfn().0.clamp(zone_start, zone_end.max(zone_start));
            if zone_type == ZoneType::Movable && r.is_mirror() {
                nr_absent += end - start;
            }
            if zone_type == ZoneType::Normal && !r.is_mirror() {
                nr_absent += end - start;
            }
        }
    }
    nr_absent
}

/// `calculate_node_totalpages()` for node `nid`.
pub fn calculate_node_totalpages(
    map: &HostMemoryMap,
    movable: &ZoneMovable,
    arch: &ArchZoneRanges,
    nid: NodeId,
) -> NodeZones {
    let (node_start_pfn, node_end_pfn) = map.get_pfn_range_for_nid(nid);
    let zones = ZoneType::ALL.map(|zone_type| {
        let (zone_start_pfn, _, spanned) =
            zone_spanned_pages_in_node(movable, arch, nid, zone_type, node_start_pfn, node_end_pfn);
        let absent = zone_absent_pages_in_node(
            map,
            movable,
            arch,
            nid,
            zone_type,
            node_start_pfn,
            node_end_pfn,
        );
        Zone {
            zone_type,
            zone_start_pfn: if spanned != 0 { zone_start_pfn } else { Pfn(0) },
            spanned_pages: spanned,
            // The kernel subtracts unsigned; with kernelcore=mirror and nodes interleaved in
            // the address space it could wrap, here it stops at 0.
            present_pages: spanned.saturating_sub(absent),
        }
    });
    NodeZones {
        nid,
        node_start_pfn,
        node_end_pfn,
        node_spanned_pages: zones.iter().map(|z| z.spanned_pages).sum(),
        node_present_pages: zones.iter().map(|z| z.present_pages).sum(),
        zones,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(specs: &[&str]) -> HostMemoryMap {
        HostMemoryMap::parse(specs).expect("valid map")
    }

    #[test]
    fn zone_ranges_below_4g() {
        let arch = ArchZoneRanges::x86_64(&map(&["0:0x1000-0x9efff", "0:0x100000-0x1ffdffff"]));
        assert_eq!(arch.byte_range(ZoneType::Dma), Some((0x1000, 0xffffff)));
        assert_eq!(
            arch.byte_range(ZoneType::Dma32),
            Some((0x1000000, 0x1ffdffff))
        );
        assert_eq!(arch.byte_range(ZoneType::Normal), None);
        assert_eq!(arch.byte_range(ZoneType::Movable), None);
    }

    #[test]
    fn zone_ranges_above_4g_and_memory_starting_high() {
        let arch = ArchZoneRanges::x86_64(&map(&["0:0x1000-0x9efff", "0:0x100000000-0x13fffffff"]));
        assert_eq!(
            arch.byte_range(ZoneType::Dma32),
            Some((0x1000000, 0xffffffff))
        );
        assert_eq!(
            arch.byte_range(ZoneType::Normal),
            Some((0x100000000, 0x13fffffff))
        );
        let arch = ArchZoneRanges::x86_64(&map(&["0:0x20000000-0x3fffffff"]));
        assert_eq!(arch.byte_range(ZoneType::Dma), None);
        assert_eq!(
            arch.byte_range(ZoneType::Dma32),
            Some((0x20000000, 0x3fffffff))
        );
        let arch = ArchZoneRanges::x86_64(&map(&["0:0x200000000-0x2ffffffff"]));
        assert_eq!(arch.byte_range(ZoneType::Dma), None);
        assert_eq!(arch.byte_range(ZoneType::Dma32), None);
        assert_eq!(
            arch.byte_range(ZoneType::Normal),
            Some((0x200000000, 0x2ffffffff))
        );
    }

    #[test]
    fn absent_pages_count_holes_of_the_node_only() {
        let m = map(&["0:0x0-0xfff", "1:0x1000-0x1fff", "0:0x3000-0x3fff"]);
        assert_eq!(
            absent_pages_in_range(&m, Some(NodeId(0)), Pfn(0), Pfn(4)),
            2
        );
        assert_eq!(absent_pages_in_range(&m, None, Pfn(0), Pfn(4)), 1);
        assert_eq!(absent_pages_in_range(&m, None, Pfn(4), Pfn(4)), 0);
    }
}
