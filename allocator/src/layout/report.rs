//! Output of a zone layout: the lines the kernel prints in `free_area_init()` (same printk
//! formats), a `/proc/zoneinfo`-style summary, and a JSON document with the fields of the
//! real-kernel fixtures.

use super::ZoneLayout;
use crate::types::{ZoneType, PAGE_SHIFT};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The lines `free_area_init()` prints: "Zone ranges:", "Movable zone start for each node",
/// "Early memory node ranges" and "Initmem setup node", with the kernel's formats
/// (`"  %-8s "`, `"[mem %#018Lx-%#018Lx]"`, `"  Node %d: %#018Lx"`, `"  node %3d: ..."`).
/// Warnings the kernel would print come first.
pub fn free_area_init_lines(layout: &ZoneLayout) -> String {
    let mut out = String::new();
    for warning in layout.warnings() {
        let _ = writeln!(out, "{warning}");
    }
    let arch = layout.arch_zone_ranges();
    out.push_str("Zone ranges:\n");
    for zone in ZoneType::ALL {
        if zone == ZoneType::Movable {
            continue;
        }
        let _ = write!(out, "  {:<8} ", zone.name());
        match arch.byte_range(zone) {
            None => out.push_str("empty\n"),
            Some((start, end)) => {
                let _ = writeln!(out, "[mem {start:#018x}-{end:#018x}]");
            }
        }
    }
    // ZONE_DEVICE (CONFIG_ZONE_DEVICE=y in distribution kernels) never has a range at boot.
    let _ = writeln!(out, "  {:<8} empty", "Device");
    out.push_str("Movable zone start for each node\n");
    for (nid, addr) in layout.movable_start() {
        let _ = writeln!(out, "  Node {nid}: {addr:#018x}");
    }
    out.push_str("Early memory node ranges\n");
    for (start, end, nid) in layout.map().pfn_ranges(None) {
        let _ = writeln!(
            out,
            "  node {:>3}: [mem {:#018x}-{:#018x}]",
            nid.0,
            start.addr(),
            end.addr() - 1
        );
    }
    for node in layout.nodes() {
        let end = node.node_end_pfn.0;
        let _ = writeln!(
            out,
            "Initmem setup node {} [mem {:#018x}-{:#018x}]",
            node.nid,
            node.node_start_pfn.addr(),
            if end != 0 { (end << PAGE_SHIFT) - 1 } else { 0 }
        );
    }
    out
}

/// A `/proc/zoneinfo`-style summary: per node and zone the `spanned` and `present` lines, and
/// `start_pfn` for populated zones, in the file's layout.
pub fn zoneinfo_summary(layout: &ZoneLayout) -> String {
    let mut out = String::new();
    for node in layout.nodes() {
        for zone in &node.zones {
            let _ = writeln!(out, "Node {}, zone {:>8}", node.nid, zone.zone_type.name());
            let _ = writeln!(out, "        spanned  {}", zone.spanned_pages);
            let _ = writeln!(out, "        present  {}", zone.present_pages);
            if zone.is_populated() {
                let _ = writeln!(out, "  start_pfn:           {}", zone.zone_start_pfn.0);
            }
        }
    }
    out
}

/// The zone ranges of [`ZonesReport`]: inclusive byte addresses, `None` (JSON `null`) when
/// empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ZoneRangesReport {
    /// ZONE_DMA.
    #[serde(rename = "DMA")]
    pub dma: Option<[u64; 2]>,
    /// ZONE_DMA32.
    #[serde(rename = "DMA32")]
    pub dma32: Option<[u64; 2]>,
    /// ZONE_NORMAL.
    #[serde(rename = "Normal")]
    pub normal: Option<[u64; 2]>,
}

/// One zone of one node in [`ZonesReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ZoneReport {
    /// Node id.
    pub node: u32,
    /// Zone name ("DMA", "DMA32", "Normal", "Movable").
    pub zone: &'static str,
    /// `zone_start_pfn`, only for populated zones (as `/proc/zoneinfo` prints it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_pfn: Option<u64>,
    /// `spanned_pages`.
    pub spanned: u64,
    /// `present_pages`.
    pub present: u64,
}

/// The JSON document of `memtide zones --json`, with the fixtures' field meanings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ZonesReport {
    /// "Zone ranges:".
    pub zone_ranges: ZoneRangesReport,
    /// "Movable zone start for each node": node id -> byte address.
    pub movable_start: BTreeMap<u32, u64>,
    /// Every zone of every node with memory, by node then zone.
    pub zones: Vec<ZoneReport>,
}

impl ZonesReport {
    /// The report of a layout.
    pub fn new(layout: &ZoneLayout) -> ZonesReport {
        let arch = layout.arch_zone_ranges();
        let range = |z| arch.byte_range(z).map(|(s, e)| [s, e]);
        ZonesReport {
            zone_ranges: ZoneRangesReport {
                dma: range(ZoneType::Dma),
                dma32: range(ZoneType::Dma32),
                normal: range(ZoneType::Normal),
            },
            movable_start: layout
                .movable_start()
                .into_iter()
                .map(|(nid, addr)| (nid.0, addr))
                .collect(),
            zones: layout
                .nodes()
                .iter()
                .flat_map(|node| {
                    node.zones.iter().map(move |z| ZoneReport {
                        node: node.nid.0,
                        zone: z.zone_type.name(),
                        start_pfn: z.is_populated().then_some(z.zone_start_pfn.0),
                        spanned: z.spanned_pages,
                        present: z.present_pages,
                    })
                })
                .collect(),
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs, maps with integer keys and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
