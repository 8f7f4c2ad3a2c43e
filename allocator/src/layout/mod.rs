//! Zone layout: from a host memory map and the `kernelcore=` / `movablecore=` /
//! `movable_node` boot parameters to the zones of every node, computed exactly as Linux 6.1
//! does on x86_64 (4 KiB pages, `MAX_ORDER` 11) in `free_area_init()`.
//!
//! - [`memmap`]: the memory map (memblock regions per node) and its validation;
//! - [`cmdline`]: the boot parameters, parsed as the kernel parses them (but strictly);
//! - [`zones`]: the architecture's zone ranges and each node's zone spans and sizes;
//! - [`movable`]: where ZONE_MOVABLE starts on each node;
//! - [`report`]: the kernel's printouts, a `/proc/zoneinfo`-style summary and JSON.
//!
//! [`ZoneLayout::free_area_init`] runs them in the kernel's order; the result hands the buddy
//! allocator one [`ZoneDescriptor`] per node and zone.
//!
//! Invariants of a layout (checked by the property tests): a node's zones are disjoint and
//! ascending (except with `kernelcore=mirror`, where ZONE_NORMAL and ZONE_MOVABLE spans
//! interleave as in the kernel); `present_pages <= spanned_pages`; without `kernelcore=mirror`
//! the present pages of a node's zones add up to the node's memory; every ZONE_MOVABLE start is
//! a multiple of `MAX_ORDER_NR_PAGES` inside its node.

pub mod cmdline;
pub mod memmap;
pub mod movable;
pub mod report;
pub mod zones;

pub use cmdline::{CmdlineError, CoreSpec, KernelArgs, KernelcoreSpec};
pub use memmap::{HostMemoryMap, MemMapError, MemblockFlags, MemblockRegion};
pub use movable::ZoneMovable;
pub use zones::{ArchZoneRanges, NodeZones, Zone};

use crate::types::{NodeId, Pfn, ZoneDescriptor, ZoneType};
use thiserror::Error;

/// Why a zone layout could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// The memory map is invalid.
    #[error(transparent)]
    MemMap(#[from] MemMapError),
    /// A boot parameter is invalid.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// `kernelcore=mirror` but no range is flagged mirrored (the kernel would ignore it).
    #[error("kernelcore=mirror needs mirrored memory, but no range is flagged mirror")]
    NoMirroredMemory,
}

/// The zones of every node of a memory map, as Linux 6.1 sizes them at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneLayout {
    map: HostMemoryMap,
    args: KernelArgs,
    arch: ArchZoneRanges,
    movable: ZoneMovable,
    nodes: Vec<NodeZones>,
}

impl ZoneLayout {
    /// `free_area_init()`: records the zone ranges, places ZONE_MOVABLE on each node and
    /// sizes every zone of every node with memory.
    pub fn free_area_init(map: HostMemoryMap, args: KernelArgs) -> Result<ZoneLayout, LayoutError> {
        let arch = ArchZoneRanges::x86_64(&map);
        let movable = movable::find_zone_movable_pfns_for_nodes(&map, &arch, &args)?;
        let nodes = map
            .nodes_with_memory()
            .into_iter()
            .map(|nid| zones::calculate_node_totalpages(&map, &movable, &arch, nid))
            .collect();
        Ok(ZoneLayout {
            map,
            args,
            arch,
            movable,
            nodes,
        })
    }

    /// Parses node ranges (`N:START-END[:FLAGS]`), `kernelcore=` and `movablecore=` values and
    /// the `movable_node` switch, then runs [`ZoneLayout::free_area_init`].
    pub fn from_specs<S: AsRef<str>>(
        node_specs: &[S],
        kernelcore: Option<&str>,
        movablecore: Option<&str>,
        movable_node: bool,
    ) -> Result<ZoneLayout, LayoutError> {
        let map = HostMemoryMap::parse(node_specs)?;
        let args = KernelArgs::from_values(kernelcore, movablecore, movable_node)?;
        ZoneLayout::free_area_init(map, args)
    }

    /// The memory map.
    pub fn map(&self) -> &HostMemoryMap {
        &self.map
    }

    /// The boot parameters.
    pub fn args(&self) -> &KernelArgs {
        &self.args
    }

    /// The architecture's zone ranges ("Zone ranges:").
    pub fn arch_zone_ranges(&self) -> &ArchZoneRanges {
        &self.arch
    }

    /// Where ZONE_MOVABLE starts per node, and from which zone it takes its pages.
    pub fn zone_movable(&self) -> &ZoneMovable {
        &self.movable
    }

    /// ZONE_MOVABLE start addresses per node ("Movable zone start for each node").
    pub fn movable_start(&self) -> Vec<(NodeId, u64)> {
        self.movable
            .starts()
            .into_iter()
            .map(|(nid, pfn)| (nid, pfn.addr()))
            .collect()
    }

    /// The nodes with memory and their zones, ascending by node id.
    pub fn nodes(&self) -> &[NodeZones] {
        &self.nodes
    }

    /// One zone of one node, if the node has memory.
    pub fn zone(&self, nid: NodeId, zone: ZoneType) -> Option<&Zone> {
        self.nodes
            .iter()
            .find(|n| n.nid == nid)
            .map(|n| &n.zones[zone.index()])
    }

    /// Warnings the kernel would print while computing this layout.
    pub fn warnings(&self) -> &[String] {
        &self.movable.warnings
    }

    /// One descriptor per node with memory and zone (all four zone types, empty ones
    /// included), for the buddy allocator. `present_ranges` are the node's memory ranges
    /// clipped to the zone's span; with `kernelcore=mirror`, ZONE_NORMAL keeps only mirrored
    /// and ZONE_MOVABLE only unmirrored memory, as the kernel counts them.
    pub fn zone_descriptors(&self) -> Vec<ZoneDescriptor> {
        let mut out = Vec::with_capacity(self.nodes.len() * ZoneType::ALL.len());
        for node in &self.nodes {
            for zone in &node.zones {
                let (lo, hi) = (zone.zone_start_pfn.0, zone.zone_end_pfn().0);
                let mirror_filter = |mirror: bool| {
                    if !self.movable.mirrored_kernelcore
                        || self.movable.zone_movable_pfn(node.nid).0 == 0
                    {
                        return true;
                    }
                    match zone.zone_type {
                        ZoneType::Normal => mirror,
                        ZoneType::Movable => !mirror,
                        _ => true,
                    }
                };
                let present_ranges = self
                    .map
                    .regions()
                    .iter()
                    .filter(|r| r.nid == node.nid && mirror_filter(r.is_mirror()))
                    .map(|r| (r.base_pfn().0.clamp(lo, hi), r.end_pfn().0.clamp(lo, hi)))
                    .filter(|(s, e)| s < e)
                    .map(|(s, e)| (Pfn(s), Pfn(e)))
                    .collect();
                out.push(ZoneDescriptor {
                    node: node.nid,
                    zone: zone.zone_type,
                    zone_start_pfn: zone.zone_start_pfn,
                    spanned_pages: zone.spanned_pages,
                    present_ranges,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
