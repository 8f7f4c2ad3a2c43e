//! Typed identifiers and constants shared by zone layout and the buddy allocator.
//!
//! The constants mirror Linux 6.1 on x86_64 with 4 KiB pages.

use serde::{Deserialize, Serialize};
use std::fmt;

/// log2 of the page size (`PAGE_SHIFT`).
pub const PAGE_SHIFT: u32 = 12;
/// Page size in bytes (`PAGE_SIZE`).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Number of buddy orders (`MAX_ORDER` in Linux 6.1: orders 0..=10).
pub const MAX_ORDER: usize = 11;
/// Pages in the largest buddy block (`MAX_ORDER_NR_PAGES`).
pub const MAX_ORDER_NR_PAGES: u64 = 1 << (MAX_ORDER - 1);
/// Order of a pageblock (`pageblock_order`, HPAGE_PMD_ORDER on x86_64).
pub const PAGEBLOCK_ORDER: u32 = 9;
/// Pages in a pageblock (`pageblock_nr_pages`).
pub const PAGEBLOCK_NR_PAGES: u64 = 1 << PAGEBLOCK_ORDER;
/// Maximum number of NUMA nodes supported (`MAX_NUMNODES` is much larger in Linux; 64 is
/// plenty for a host pool and keeps per-node tables small).
pub const MAX_NUMNODES: usize = 64;

/// A page frame number: a physical address shifted right by [`PAGE_SHIFT`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The page frame containing byte address `addr` (`PFN_DOWN`).
    pub const fn from_addr_down(addr: u64) -> Pfn {
        Pfn(addr >> PAGE_SHIFT)
    }
    /// The first page frame at or above byte address `addr` (`PFN_UP`).
    pub const fn from_addr_up(addr: u64) -> Pfn {
        Pfn(addr.div_ceil(PAGE_SIZE))
    }
    /// Byte address of the start of this frame (`PFN_PHYS`).
    pub const fn addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A NUMA node id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A buddy order: a block of order `n` holds `1 << n` pages.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Order(pub u32);

impl Order {
    /// Pages in a block of this order.
    pub const fn nr_pages(self) -> u64 {
        1 << self.0
    }
}

/// Zone types of x86_64 in Linux 6.1 (`enum zone_type`), in the kernel's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ZoneType {
    /// `ZONE_DMA`: below 16 MiB.
    Dma,
    /// `ZONE_DMA32`: below 4 GiB.
    Dma32,
    /// `ZONE_NORMAL`: the rest of kernel memory.
    Normal,
    /// `ZONE_MOVABLE`: only movable allocations; sized by kernelcore=/movablecore=.
    Movable,
}

impl ZoneType {
    /// All zone types, lowest first (`MAX_NR_ZONES` entries, without ZONE_DEVICE).
    pub const ALL: [ZoneType; 4] = [
        ZoneType::Dma,
        ZoneType::Dma32,
        ZoneType::Normal,
        ZoneType::Movable,
    ];

    /// The kernel's name for the zone, as printed in `/proc/zoneinfo`.
    pub const fn name(self) -> &'static str {
        match self {
            ZoneType::Dma => "DMA",
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
            ZoneType::Movable => "Movable",
        }
    }

    /// Index of the zone in per-node arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ZoneType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Migrate types of pageblocks and free lists (`enum migratetype`, without CMA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MigrateType {
    /// `MIGRATE_UNMOVABLE`.
    Unmovable,
    /// `MIGRATE_MOVABLE`.
    Movable,
    /// `MIGRATE_RECLAIMABLE`.
    Reclaimable,
    /// `MIGRATE_HIGHATOMIC`: reserve for high-order atomic allocations.
    HighAtomic,
    /// `MIGRATE_ISOLATE`: pages of an isolated range are never handed out.
    Isolate,
}

impl MigrateType {
    /// Migrate types that have free lists allocations may take from
    /// (`MIGRATE_PCPTYPES`).
    pub const PCPTYPES: [MigrateType; 3] = [
        MigrateType::Unmovable,
        MigrateType::Movable,
        MigrateType::Reclaimable,
    ];

    /// The name used in `/proc/pagetypeinfo`.
    pub const fn name(self) -> &'static str {
        match self {
            MigrateType::Unmovable => "Unmovable",
            MigrateType::Movable => "Movable",
            MigrateType::Reclaimable => "Reclaimable",
            MigrateType::HighAtomic => "HighAtomic",
            MigrateType::Isolate => "Isolate",
        }
    }
}

/// One zone of one node as zone layout computed it: the input from which the buddy allocator
/// builds that zone's free lists. Produced by the zone layout (`layout`) for the host memory map,
/// consumed by the pool (`buddy`).
///
/// Invariants: `present_ranges` are sorted, disjoint, non-empty half-open pfn ranges inside
/// `[zone_start_pfn, zone_start_pfn + spanned_pages)`, and their lengths add up to
/// `present_pages()`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneDescriptor {
    /// The node the zone belongs to.
    pub node: NodeId,
    /// Which zone of the node.
    pub zone: ZoneType,
    /// First pfn the zone spans (`zone->zone_start_pfn`).
    pub zone_start_pfn: Pfn,
    /// Pages the zone spans, holes included (`zone->spanned_pages`).
    pub spanned_pages: u64,
    /// The memory that exists inside the span, as half-open pfn ranges `(start, end)`.
    pub present_ranges: Vec<(Pfn, Pfn)>,
}

impl ZoneDescriptor {
    /// Pages that exist in the zone (`zone->present_pages`).
    pub fn present_pages(&self) -> u64 {
        self.present_ranges.iter().map(|(s, e)| e.0 - s.0).sum()
    }
    /// One past the last pfn the zone spans (`zone_end_pfn()`).
    pub fn zone_end_pfn(&self) -> Pfn {
        Pfn(self.zone_start_pfn.0 + self.spanned_pages)
    }
}
