//! Where ZONE_MOVABLE starts on each node: Linux 6.1's `find_usable_zone_for_movable()` and
//! `find_zone_movable_pfns_for_nodes()`, step for step.
//!
//! `kernelcore=` (or the kernelcore implied by `movablecore=`) is spread evenly over the nodes
//! with memory; a node too small for its share gives what it has and the rest is spread again
//! over the others (the re-pass). Memory below the start of the zone ZONE_MOVABLE is taken from
//! (the highest populated zone) always counts as kernelcore. Each node's start is rounded up to
//! `MAX_ORDER_NR_PAGES`; a start at or beyond the node's end means no ZONE_MOVABLE there.

use super::cmdline::{CoreSpec, KernelArgs, KernelcoreSpec};
use super::memmap::HostMemoryMap;
use super::zones::ArchZoneRanges;
use super::LayoutError;
use crate::types::{NodeId, Pfn, ZoneType, MAX_NUMNODES, MAX_ORDER_NR_PAGES, PAGE_SHIFT};
use serde::Serialize;

/// The kernel's message when `kernelcore=mirror` leaves unmirrored memory below 4 GiB to the
/// kernel.
pub const UNMIRRORED_KERNEL_MEMORY: &str =
    "This configuration results in unmirrored kernel memory.";

/// The outcome of `find_zone_movable_pfns_for_nodes()`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ZoneMovable {
    /// The zone ZONE_MOVABLE takes its pages from (`movable_zone`).
    pub movable_zone: ZoneType,
    /// `zone_movable_pfn[nid]`: first pfn of ZONE_MOVABLE per node, 0 = none.
    zone_movable_pfn: Vec<u64>,
    /// `mirrored_kernelcore` (`kernelcore=mirror`).
    pub mirrored_kernelcore: bool,
    /// Warnings the kernel would print.
    pub warnings: Vec<String>,
}

impl ZoneMovable {
    /// `zone_movable_pfn[nid]`: where ZONE_MOVABLE starts on the node, `Pfn(0)` if it has none.
    pub fn zone_movable_pfn(&self, nid: NodeId) -> Pfn {
        Pfn(self
            .zone_movable_pfn
            .get(nid.0 as usize)
            .copied()
            .unwrap_or(0))
    }

    /// Nodes with a ZONE_MOVABLE and its first pfn, ascending by node.
    pub fn starts(&self) -> Vec<(NodeId, Pfn)> {
        self.zone_movable_pfn
            .iter()
            .enumerate()
            .filter(|(_, pfn)| **pfn != 0)
            .map(|(nid, pfn)| (NodeId(nid as u32), Pfn(*pfn)))
            .collect()
    }
}

/// `find_usable_zone_for_movable()`: the highest zone with a non-empty range.
pub fn find_usable_zone_for_movable(arch: &ArchZoneRanges) -> ZoneType {
    ZoneType::ALL
        .iter()
        .rev()
        .copied()
        .filter(|z| *z != ZoneType::Movable)
        .find(|z| arch.highest(*z) > arch.lowest(*z))
        // The kernel's VM_BUG_ON(zone_index == -1): a map with memory always has a zone.
        .unwrap_or(ZoneType::Dma)
}

/// Pages requested by a size spec: bytes `>> PAGE_SHIFT`, or the kernel's percentage formula
/// `totalpages * 100 * percent / 10000` (a percentage of 0 is "not given": 0 pages).
fn required_pages(spec: CoreSpec, totalpages: u64) -> u64 {
    match spec {
        CoreSpec::Bytes(bytes) => bytes >> PAGE_SHIFT,
        CoreSpec::Percent(p) => totalpages * 100 * p / 10000,
    }
}

/// `find_zone_movable_pfns_for_nodes()`.
pub fn find_zone_movable_pfns_for_nodes(
    map: &HostMemoryMap,
    arch: &ArchZoneRanges,
    args: &KernelArgs,
) -> Result<ZoneMovable, LayoutError> {
    let mirrored_kernelcore = args.kernelcore == Some(KernelcoreSpec::Mirror);
    if mirrored_kernelcore && !map.has_mirror() {
        return Err(LayoutError::NoMirroredMemory);
    }
    let mut zone_movable_pfn = vec![0u64; MAX_NUMNODES];
    let mut warnings = Vec::new();
    let totalpages = map.totalpages();
    let nodes = map.nodes_with_memory();
    let mut usable_nodes = nodes.len() as u64;
    // Need to find movable_zone earlier when movable_node is specified.
    let movable_zone = find_usable_zone_for_movable(arch);
    let mut result = ZoneMovable {
        movable_zone,
        zone_movable_pfn: Vec::new(),
        mirrored_kernelcore,
        warnings: Vec::new(),
    };

    if args.movable_node {
        // movable_node: ignore kernelcore and movablecore; hotpluggable memory is movable.
        for r in map.regions().iter().filter(|r| r.is_hotpluggable()) {
            let slot = &mut zone_movable_pfn[r.nid.0 as usize];
            let usable_startpfn = Pfn::from_addr_down(r.base).0;
            *slot = if *slot != 0 {
                usable_startpfn.min(*slot)
            } else {
                usable_startpfn
            };
        }
    } else if mirrored_kernelcore {
        // kernelcore=mirror: ignore movablecore; unmirrored memory above 4 GiB is movable.
        let mut mem_below_4gb_not_mirrored = false;
        for r in map.regions().iter().filter(|r| !r.is_mirror()) {
            let usable_startpfn = r.base_pfn().0;
            if usable_startpfn < Pfn::from_addr_down(1 << 32).0 {
                mem_below_4gb_not_mirrored = true;
                continue;
            }
            let slot = &mut zone_movable_pfn[r.nid.0 as usize];
            *slot = if *slot != 0 {
                usable_startpfn.min(*slot)
            } else {
                usable_startpfn
            };
        }
        if mem_below_4gb_not_mirrored {
            warnings.push(UNMIRRORED_KERNEL_MEMORY.to_string());
        }
    } else {
        let mut required_kernelcore = match args.kernelcore {
            Some(KernelcoreSpec::Core(spec)) => required_pages(spec, totalpages),
            _ => 0,
        };
        if let Some(spec) = args.movablecore {
            let mut required_movablecore = required_pages(spec, totalpages);
            // If movablecore= was given, the kernelcore that corresponds to it; the larger
            // of the two wins when both are given.
            if required_movablecore != 0 {
                // Round up so that ZONE_MOVABLE is at least as large as requested.
                required_movablecore =
                    required_movablecore.div_ceil(MAX_ORDER_NR_PAGES) * MAX_ORDER_NR_PAGES;
                required_movablecore = totalpages.min(required_movablecore);
                let corepages = totalpages - required_movablecore;
                required_kernelcore = required_kernelcore.max(corepages);
            }
        }
        // If kernelcore was not specified or is at least all memory: no ZONE_MOVABLE.
        if required_kernelcore == 0 || required_kernelcore >= totalpages {
            result.warnings = warnings;
            result.zone_movable_pfn = zone_movable_pfn;
            return Ok(result);
        }
        spread_kernelcore(
            map,
            &nodes,
            arch.lowest(movable_zone).0,
            required_kernelcore,
            &mut usable_nodes,
            &mut zone_movable_pfn,
        );
    }

    // out2: align the start of ZONE_MOVABLE on all nodes to MAX_ORDER_NR_PAGES.
    for (nid, slot) in zone_movable_pfn.iter_mut().enumerate() {
        *slot = slot.div_ceil(MAX_ORDER_NR_PAGES) * MAX_ORDER_NR_PAGES;
        let (_, end_pfn) = map.get_pfn_range_for_nid(NodeId(nid as u32));
        if *slot >= end_pfn.0 {
            *slot = 0;
        }
    }
    result.warnings = warnings;
    result.zone_movable_pfn = zone_movable_pfn;
    Ok(result)
}

/// The `restart:` loop of `find_zone_movable_pfns_for_nodes()`: spreads `required_kernelcore`
/// pages as evenly as possible over `nodes`, pushing `zone_movable_pfn[nid]` up, and passes
/// again with one node less while kernelcore remains.
fn spread_kernelcore(
    map: &HostMemoryMap,
    nodes: &[NodeId],
    usable_startpfn: u64,
    mut required_kernelcore: u64,
    usable_nodes: &mut u64,
    zone_movable_pfn: &mut [u64],
) {
    loop {
        // Spread kernelcore memory as evenly as possible throughout nodes.
        let mut kernelcore_node = required_kernelcore / *usable_nodes;
        for &nid in nodes {
            // Recalculate kernelcore_node if the division per node now exceeds what is
            // necessary to satisfy the requested amount of memory for the kernel.
            if required_kernelcore < kernelcore_node {
                kernelcore_node = required_kernelcore / *usable_nodes;
            }
            // Track how much of this node's share is still to be placed.
            let mut kernelcore_remaining = kernelcore_node;
            let slot = &mut zone_movable_pfn[nid.0 as usize];
            for (start_pfn, end_pfn, _) in map.pfn_ranges(Some(nid)) {
                let end_pfn = end_pfn.0;
                let mut start_pfn = start_pfn.0.max(*slot);
                if start_pfn >= end_pfn {
                    continue;
                }
                // Account for what is only usable for kernelcore.
                if start_pfn < usable_startpfn {
                    let kernel_pages = end_pfn.min(usable_startpfn) - start_pfn;
                    kernelcore_remaining -= kernel_pages.min(kernelcore_remaining);
                    required_kernelcore -= kernel_pages.min(required_kernelcore);
                    // Continue if range is now fully accounted.
                    if end_pfn <= usable_startpfn {
                        // Push zone_movable_pfn to the end so that a rebalance across nodes
                        // does not account this range twice.
                        *slot = end_pfn;
                        continue;
                    }
                    start_pfn = usable_startpfn;
                }
                // The usable range for ZONE_MOVABLE is start_pfn..end_pfn; size_pages of it
                // serve as kernelcore.
                let size_pages = (end_pfn - start_pfn).min(kernelcore_remaining);
                *slot = start_pfn + size_pages;
                // Some kernelcore has been met: update counts, stop when the node's share is
                // satisfied.
                required_kernelcore -= required_kernelcore.min(size_pages);
                kernelcore_remaining -= size_pages;
                if kernelcore_remaining == 0 {
                    break;
                }
            }
        }
        // If kernelcore remains, pass again with one node less in the count, pushing
        // zone_movable_pfn further along on the nodes that still have memory.
        *usable_nodes -= 1;
        if *usable_nodes == 0 || required_kernelcore <= *usable_nodes {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movable(specs: &[&str], cmdline: &str) -> Result<ZoneMovable, LayoutError> {
        let map = HostMemoryMap::parse(specs).expect("valid map");
        let arch = ArchZoneRanges::x86_64(&map);
        let args = KernelArgs::parse_cmdline(cmdline).expect("valid args");
        find_zone_movable_pfns_for_nodes(&map, &arch, &args)
    }

    const QEMU_512M: [&str; 2] = ["0:0x1000-0x9efff", "0:0x100000-0x1ffdffff"];

    #[test]
    fn movablecore_on_one_node() {
        // case-01 of the kernel fixtures: 512 MiB, movablecore=128M.
        let m = movable(&QEMU_512M, "movablecore=128M").expect("layout");
        assert_eq!(m.movable_zone, ZoneType::Dma32);
        assert_eq!(m.starts(), vec![(NodeId(0), Pfn(0x18000))]);
    }

    #[test]
    fn no_movable_zone_without_args_or_with_everything_kernel() {
        for cmdline in [
            "",
            "kernelcore=0",
            "kernelcore=0%",
            "movablecore=0",
            "kernelcore=512M",
            "kernelcore=100%",
        ] {
            assert!(
                movable(&QEMU_512M, cmdline)
                    .expect("layout")
                    .starts()
                    .is_empty(),
                "{cmdline}"
            );
        }
    }

    #[test]
    fn movablecore_of_everything_leaves_the_kernel_only_low_memory() {
        // required_kernelcore = 0 after movablecore=100% -> no ZONE_MOVABLE at all.
        let m = movable(&QEMU_512M, "movablecore=100%").expect("layout");
        assert!(m.starts().is_empty());
    }

    #[test]
    fn repass_when_a_node_is_too_small() {
        // Node 0 (16..64 MiB) cannot hold its half of kernelcore=256M; node 1 takes the rest.
        let m = movable(
            &["0:0x1000000-0x3ffffff", "1:0x4000000-0x43ffffff"],
            "kernelcore=256M",
        )
        .expect("layout");
        // Node 0 is all kernel; node 1 gives 128 MiB + what node 0 could not (80 MiB).
        assert_eq!(
            m.starts(),
            vec![(NodeId(1), Pfn((0x4000000 >> 12) + ((256 - 48) << 8)))]
        );
    }

    #[test]
    fn movable_node_uses_hotpluggable_regions() {
        let m = movable(
            &[
                "0:0x1000-0x9efff",
                "0:0x100000-0x7fffffff",
                "1:0x80000000-0xbfffffff:hotplug",
            ],
            "movable_node kernelcore=1G",
        )
        .expect("layout");
        assert_eq!(m.starts(), vec![(NodeId(1), Pfn(0x80000))]);
    }

    #[test]
    fn mirror() {
        let specs = [
            "0:0x1000-0x9efff:mirror",
            "0:0x100000-0xbfffffff:mirror",
            "0:0x100000000-0x17fffffff",
            "1:0x180000000-0x1bfffffff:mirror",
            "1:0x1c0000000-0x1ffffffff",
        ];
        let m = movable(&specs, "kernelcore=mirror").expect("layout");
        assert!(m.mirrored_kernelcore && m.warnings.is_empty());
        assert_eq!(
            m.starts(),
            vec![(NodeId(0), Pfn(0x100000)), (NodeId(1), Pfn(0x1c0000))]
        );
        let m = movable(
            &["0:0x1000-0x9efff", "0:0x100000-0xbfffffff:mirror"],
            "kernelcore=mirror",
        )
        .expect("layout");
        assert_eq!(m.warnings, vec![UNMIRRORED_KERNEL_MEMORY.to_string()]);
        assert!(m.starts().is_empty());
        assert_eq!(
            movable(&QEMU_512M, "kernelcore=mirror"),
            Err(LayoutError::NoMirroredMemory)
        );
    }
}
