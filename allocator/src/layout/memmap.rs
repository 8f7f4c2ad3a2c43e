//! The host memory map: physical memory ranges per NUMA node, as Linux keeps them in
//! `memblock.memory` (`struct memblock_region`), with the `MEMBLOCK_HOTPLUG` and
//! `MEMBLOCK_MIRROR` flags.
//!
//! Ranges are given as the kernel prints them in "Early memory node ranges": byte addresses
//! with an inclusive end. They must be page aligned, sorted by address and disjoint; adjacent
//! ranges of the same node with the same flags are merged as `memblock_merge_regions()` does.

use crate::types::{NodeId, Pfn, MAX_NUMNODES, PAGE_SHIFT, PAGE_SIZE};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use thiserror::Error;

/// Physical address bits accepted (x86_64 `MAX_PHYSMEM_BITS` with 5-level paging).
pub const MAX_PHYSMEM_BITS: u32 = 52;

/// One past the highest physical address accepted.
pub const MAX_PHYS_ADDR: u64 = 1 << MAX_PHYSMEM_BITS;

/// Problems with a host memory map or with one range of it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemMapError {
    /// The memory map holds no range at all.
    #[error("the memory map is empty: give at least one node range")]
    EmptyMap,
    /// A range whose inclusive end lies below its start.
    #[error("range {start:#x}-{end:#x} of node {node} is empty (end below start)")]
    EmptyRange {
        /// Node of the range.
        node: u32,
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A range that does not start or end on a page boundary.
    #[error("range {start:#x}-{end:#x} of node {node} is not page aligned (start must be a multiple of {page:#x}, end one byte below one)")]
    Unaligned {
        /// Node of the range.
        node: u32,
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
        /// The page size.
        page: u64,
    },
    /// A range reaching beyond the physical address space.
    #[error("range {start:#x}-{end:#x} of node {node} ends beyond the {bits}-bit physical address space")]
    AddressTooLarge {
        /// Node of the range.
        node: u32,
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
        /// `MAX_PHYSMEM_BITS`.
        bits: u32,
    },
    /// A node id at or above `MAX_NUMNODES`.
    #[error("node id {node} is too large (at most {max})")]
    NodeIdTooLarge {
        /// The node id given.
        node: u64,
        /// The highest node id accepted.
        max: usize,
    },
    /// A range that starts below the previous range.
    #[error("ranges are not sorted by address: {start:#x}-{end:#x} (node {node}) comes after {prev_start:#x}-{prev_end:#x}")]
    Unsorted {
        /// Node of the offending range.
        node: u32,
        /// First byte of the offending range.
        start: u64,
        /// Last byte of the offending range.
        end: u64,
        /// First byte of the range before it.
        prev_start: u64,
        /// Last byte of the range before it.
        prev_end: u64,
    },
    /// A range that overlaps the previous range.
    #[error("range {start:#x}-{end:#x} (node {node}) overlaps {prev_start:#x}-{prev_end:#x} (node {prev_node})")]
    Overlap {
        /// Node of the offending range.
        node: u32,
        /// First byte of the offending range.
        start: u64,
        /// Last byte of the offending range.
        end: u64,
        /// Node of the range before it.
        prev_node: u32,
        /// First byte of the range before it.
        prev_start: u64,
        /// Last byte of the range before it.
        prev_end: u64,
    },
    /// A node range specification that does not have the form `N:START-END[:FLAGS]`.
    #[error("bad node range '{spec}': expected N:START-END[:hotplug|mirror[,...]] ({reason})")]
    BadSpec {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An address or node number that is not a decimal or `0x` hexadecimal number.
    #[error("bad number '{text}' in node range '{spec}'")]
    BadNumber {
        /// The number as given.
        text: String,
        /// The whole specification.
        spec: String,
    },
    /// A flag other than `hotplug` or `mirror`.
    #[error("unknown flag '{flag}' in node range '{spec}' (known: hotplug, mirror)")]
    UnknownFlag {
        /// The flag as given.
        flag: String,
        /// The whole specification.
        spec: String,
    },
}

/// Flags of a memory region (`enum memblock_flags`, the two zone layout looks at).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemblockFlags {
    /// `MEMBLOCK_HOTPLUG`: the firmware marked the range hot-removable; with `movable_node`
    /// its node's memory from here on goes to ZONE_MOVABLE.
    pub hotplug: bool,
    /// `MEMBLOCK_MIRROR`: the range is mirrored (reliable) memory; with `kernelcore=mirror`
    /// only such memory serves the kernel.
    pub mirror: bool,
}

/// One range of physical memory of one node (`struct memblock_region`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemblockRegion {
    /// First byte (`base`).
    pub base: u64,
    /// Length in bytes (`size`), a non-zero multiple of the page size.
    pub size: u64,
    /// Region flags.
    pub flags: MemblockFlags,
    /// The node the memory belongs to.
    pub nid: NodeId,
}

impl MemblockRegion {
    /// A region of node `nid` from byte `start` to byte `end` inclusive, checked: non-empty,
    /// page aligned, inside the physical address space, node id below `MAX_NUMNODES`.
    pub fn new(
        nid: u64,
        start: u64,
        end: u64,
        flags: MemblockFlags,
    ) -> Result<MemblockRegion, MemMapError> {
        let node = u32::try_from(nid)
            .ok()
            .filter(|n| (*n as usize) < MAX_NUMNODES)
            .ok_or(MemMapError::NodeIdTooLarge {
                node: nid,
                max: MAX_NUMNODES - 1,
            })?;
        if end < start {
            return Err(MemMapError::EmptyRange { node, start, end });
        }
        if end >= MAX_PHYS_ADDR {
            return Err(MemMapError::AddressTooLarge {
                node,
                start,
                end,
                bits: MAX_PHYSMEM_BITS,
            });
        }
        if start & (PAGE_SIZE - 1) != 0 || (end + 1) & (PAGE_SIZE - 1) != 0 {
            return Err(MemMapError::Unaligned {
                node,
                start,
                end,
                page: PAGE_SIZE,
            });
        }
        Ok(MemblockRegion {
            base: start,
            size: end + 1 - start,
            flags,
            nid: NodeId(node),
        })
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// The last byte (inclusive end, as the kernel prints it).
    pub fn last(&self) -> u64 {
        self.end() - 1
    }

    /// First pfn of the region (`memblock_region_memory_base_pfn`: `PFN_UP(base)`).
    pub fn base_pfn(&self) -> Pfn {
        Pfn::from_addr_up(self.base)
    }

    /// One past the last pfn of the region (`memblock_region_memory_end_pfn`:
    /// `PFN_DOWN(base + size)`).
    pub fn end_pfn(&self) -> Pfn {
        Pfn::from_addr_down(self.end())
    }

    /// Pages in the region.
    pub fn pages(&self) -> u64 {
        self.size >> PAGE_SHIFT
    }

    /// `memblock_is_hotpluggable()`.
    pub fn is_hotpluggable(&self) -> bool {
        self.flags.hotplug
    }

    /// `memblock_is_mirror()`.
    pub fn is_mirror(&self) -> bool {
        self.flags.mirror
    }
}

/// Parses a decimal or `0x`/`0X` hexadecimal number.
fn parse_number(text: &str, spec: &str) -> Result<u64, MemMapError> {
    let bad = || MemMapError::BadNumber {
        text: text.to_string(),
        spec: spec.to_string(),
    };
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    u64::from_str_radix(digits, radix).map_err(|_| bad())
}

/// Parses `N:START-END[:FLAGS]`: node `N` owns bytes `START..=END` (decimal or `0x` hex);
/// FLAGS is a comma-separated list of `hotplug` (alias `hotpluggable`) and `mirror`.
impl FromStr for MemblockRegion {
    type Err = MemMapError;

    fn from_str(spec: &str) -> Result<MemblockRegion, MemMapError> {
        let bad = |reason: &str| MemMapError::BadSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = spec.split(':');
        let node = parts.next().ok_or_else(|| bad("missing node"))?;
        let range = parts
            .next()
            .ok_or_else(|| bad("missing ':' after the node"))?;
        let flags_text = parts.next();
        if parts.next().is_some() {
            return Err(bad("too many ':'"));
        }
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| bad("missing '-' between START and END"))?;
        let node = parse_number(node, spec)?;
        let start = parse_number(start, spec)?;
        let end = parse_number(end, spec)?;
        let mut flags = MemblockFlags::default();
        if let Some(list) = flags_text {
            for flag in list.split(',') {
                match flag {
                    "hotplug" | "hotpluggable" => flags.hotplug = true,
                    "mirror" => flags.mirror = true,
                    _ => {
                        return Err(MemMapError::UnknownFlag {
                            flag: flag.to_string(),
                            spec: spec.to_string(),
                        })
                    }
                }
            }
        }
        MemblockRegion::new(node, start, end, flags)
    }
}

/// The host memory map (`memblock.memory`): sorted, disjoint regions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemoryMap {
    regions: Vec<MemblockRegion>,
}

impl HostMemoryMap {
    /// Checks that `regions` is non-empty, sorted by address and free of overlaps, then
    /// merges neighbours of the same node and flags (`memblock_merge_regions()`).
    pub fn new(regions: Vec<MemblockRegion>) -> Result<HostMemoryMap, MemMapError> {
        if regions.is_empty() {
            return Err(MemMapError::EmptyMap);
        }
        let mut merged: Vec<MemblockRegion> = Vec::with_capacity(regions.len());
        for r in regions {
            if let Some(prev) = merged.last_mut() {
                if r.base < prev.base {
                    return Err(MemMapError::Unsorted {
                        node: r.nid.0,
                        start: r.base,
                        end: r.last(),
                        prev_start: prev.base,
                        prev_end: prev.last(),
                    });
                }
                if r.base < prev.end() {
                    return Err(MemMapError::Overlap {
                        node: r.nid.0,
                        start: r.base,
                        end: r.last(),
                        prev_node: prev.nid.0,
                        prev_start: prev.base,
                        prev_end: prev.last(),
                    });
                }
                if r.base == prev.end() && r.nid == prev.nid && r.flags == prev.flags {
                    prev.size += r.size;
                    continue;
                }
            }
            merged.push(r);
        }
        Ok(HostMemoryMap { regions: merged })
    }

    /// Builds the map from `N:START-END[:FLAGS]` specifications (see [`MemblockRegion`]'s
    /// `FromStr`).
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<HostMemoryMap, MemMapError> {
        let regions = specs
            .iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<Vec<MemblockRegion>, _>>()?;
        HostMemoryMap::new(regions)
    }

    /// The regions, sorted by address (`for_each_mem_region`).
    pub fn regions(&self) -> &[MemblockRegion] {
        &self.regions
    }

    /// Page ranges `(start_pfn, end_pfn, nid)` of node `nid`, or of all nodes for `None`
    /// (`for_each_mem_pfn_range`); ranges shorter than a page are skipped as the kernel does.
    pub fn pfn_ranges(&self, nid: Option<NodeId>) -> impl Iterator<Item = (Pfn, Pfn, NodeId)> + '_ {
        self.regions
            .iter()
            .filter(move |r| match nid {
                None => true,
                Some(n) => r.nid == n,
            })
            .filter(|r| r.base_pfn() < r.end_pfn())
            .map(|r| (r.base_pfn(), r.end_pfn(), r.nid))
    }

    /// The pfn span of node `nid`: `(0, 0)` if it has no memory (`get_pfn_range_for_nid`).
    pub fn get_pfn_range_for_nid(&self, nid: NodeId) -> (Pfn, Pfn) {
        let mut start = u64::MAX;
        let mut end = 0;
        for (s, e, _) in self.pfn_ranges(Some(nid)) {
            start = start.min(s.0);
            end = end.max(e.0);
        }
        if start == u64::MAX {
            start = 0;
        }
        (Pfn(start), Pfn(end))
    }

    /// Nodes that have memory, ascending (`for_each_node_state(nid, N_MEMORY)`).
    pub fn nodes_with_memory(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.pfn_ranges(None).map(|(_, _, n)| n).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Pages of memory in all regions (`early_calculate_totalpages`).
    pub fn totalpages(&self) -> u64 {
        self.pfn_ranges(None).map(|(s, e, _)| e.0 - s.0).sum()
    }

    /// Pages of memory of node `nid`.
    pub fn node_pages(&self, nid: NodeId) -> u64 {
        self.pfn_ranges(Some(nid)).map(|(s, e, _)| e.0 - s.0).sum()
    }

    /// Address of the first byte of memory (`memblock_start_of_DRAM()`).
    pub fn start_of_dram(&self) -> u64 {
        self.regions.first().map_or(0, |r| r.base)
    }

    /// One past the highest pfn of memory (x86 `max_pfn`, `e820__end_of_ram_pfn()`).
    pub fn max_pfn(&self) -> Pfn {
        Pfn(self
            .regions
            .iter()
            .map(|r| r.end_pfn().0)
            .max()
            .unwrap_or(0))
    }

    /// Whether any region is mirrored (`memblock_has_mirror()`).
    pub fn has_mirror(&self) -> bool {
        self.regions.iter().any(|r| r.is_mirror())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(spec: &str) -> Result<MemblockRegion, MemMapError> {
        spec.parse()
    }

    #[test]
    fn parses_hex_decimal_and_flags() {
        let r = region("1:0x100000-0x1fffffff:mirror,hotplug").expect("valid spec");
        assert_eq!(r.nid, NodeId(1));
        assert_eq!(r.base, 0x100000);
        assert_eq!(r.last(), 0x1fffffff);
        assert!(r.is_mirror() && r.is_hotpluggable());
        assert_eq!(r.base_pfn(), Pfn(0x100));
        assert_eq!(r.end_pfn(), Pfn(0x20000));
        let r = region("0:4096-8191").expect("decimal spec");
        assert_eq!(
            (r.base, r.size, r.flags),
            (4096, 4096, MemblockFlags::default())
        );
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(
            region("0x1000-0x1fff"),
            Err(MemMapError::BadSpec { .. })
        ));
        assert!(matches!(
            region("0:0x1000"),
            Err(MemMapError::BadSpec { .. })
        ));
        assert!(matches!(
            region("0:0x1000-0x1fff:a:b"),
            Err(MemMapError::BadSpec { .. })
        ));
        assert!(matches!(
            region("x:0x1000-0x1fff"),
            Err(MemMapError::BadNumber { .. })
        ));
        assert!(matches!(
            region("0:0x-0x1fff"),
            Err(MemMapError::BadNumber { .. })
        ));
        assert!(matches!(
            region("0:12k-0x1fff"),
            Err(MemMapError::BadNumber { .. })
        ));
        assert!(matches!(
            region("0:-0x1fff"),
            Err(MemMapError::BadNumber { .. })
        ));
        assert!(matches!(
            region("0:0x1000-0x1fff:fast"),
            Err(MemMapError::UnknownFlag { flag, .. }) if flag == "fast"
        ));
    }

    #[test]
    fn rejects_empty_unaligned_huge_and_bad_nodes() {
        assert_eq!(
            region("0:0x2000-0x1fff"),
            Err(MemMapError::EmptyRange {
                node: 0,
                start: 0x2000,
                end: 0x1fff
            })
        );
        assert!(matches!(
            region("0:0x1001-0x1fff"),
            Err(MemMapError::Unaligned { start: 0x1001, .. })
        ));
        assert!(matches!(
            region("0:0x1000-0x1ffe"),
            Err(MemMapError::Unaligned { end: 0x1ffe, .. })
        ));
        assert!(matches!(
            region("0:0x1000-0xffffffffffffffff"),
            Err(MemMapError::AddressTooLarge { .. })
        ));
        assert_eq!(
            region("64:0x1000-0x1fff"),
            Err(MemMapError::NodeIdTooLarge { node: 64, max: 63 })
        );
        assert!(matches!(
            region("99999999999:0x1000-0x1fff"),
            Err(MemMapError::NodeIdTooLarge {
                node: 99999999999,
                ..
            })
        ));
    }

    #[test]
    fn rejects_unsorted_overlapping_and_empty_maps() {
        assert_eq!(
            HostMemoryMap::parse::<&str>(&[]),
            Err(MemMapError::EmptyMap)
        );
        assert!(matches!(
            HostMemoryMap::parse(&["0:0x100000-0x1fffff", "0:0x1000-0x9ffff"]),
            Err(MemMapError::Unsorted { start: 0x1000, .. })
        ));
        assert!(matches!(
            HostMemoryMap::parse(&["0:0x100000-0x1fffff", "1:0x1ff000-0x2fffff"]),
            Err(MemMapError::Overlap {
                start: 0x1ff000,
                prev_node: 0,
                ..
            })
        ));
    }

    #[test]
    fn merges_adjacent_regions_like_memblock() {
        let map = HostMemoryMap::parse(&[
            "0:0x1000-0x9efff",
            "0:0x100000-0x1fffff",
            "0:0x200000-0x2fffff",
            "1:0x300000-0x3fffff",
            "1:0x400000-0x4fffff:mirror",
        ])
        .expect("valid map");
        let spans: Vec<(u64, u64)> = map.regions().iter().map(|r| (r.base, r.last())).collect();
        assert_eq!(
            spans,
            vec![
                (0x1000, 0x9efff),
                (0x100000, 0x2fffff),
                (0x300000, 0x3fffff),
                (0x400000, 0x4fffff)
            ]
        );
        assert_eq!(map.nodes_with_memory(), vec![NodeId(0), NodeId(1)]);
        assert_eq!(map.get_pfn_range_for_nid(NodeId(0)), (Pfn(1), Pfn(0x300)));
        assert_eq!(map.get_pfn_range_for_nid(NodeId(5)), (Pfn(0), Pfn(0)));
        assert_eq!(map.totalpages(), 0x9e + 0x200 + 0x100 + 0x100);
        assert_eq!(map.max_pfn(), Pfn(0x500));
        assert!(map.has_mirror());
    }
}
