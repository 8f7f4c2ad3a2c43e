//! Layout-level tests: worked examples and property tests of the invariants in the module
//! documentation.

use super::*;
use crate::types::{MAX_ORDER_NR_PAGES, PAGE_SHIFT};
use proptest::prelude::*;

fn layout(specs: &[&str], cmdline: &str) -> ZoneLayout {
    let map = HostMemoryMap::parse(specs).expect("valid map");
    let args = KernelArgs::parse_cmdline(cmdline).expect("valid args");
    ZoneLayout::free_area_init(map, args).expect("layout")
}

fn sizes(l: &ZoneLayout, nid: u32) -> Vec<(u64, u64, u64)> {
    ZoneType::ALL
        .iter()
        .map(|z| {
            let zone = l.zone(NodeId(nid), *z).expect("node has memory");
            (
                zone.zone_start_pfn.0,
                zone.spanned_pages,
                zone.present_pages,
            )
        })
        .collect()
}

#[test]
fn two_nodes_with_the_pci_hole() {
    // case-16 of the kernel fixtures: nodes of 3 GiB and 1 GiB, kernelcore=3G.
    let l = layout(
        &[
            "0:0x1000-0x9efff",
            "0:0x100000-0xbffdffff",
            "1:0x100000000-0x13fffffff",
        ],
        "kernelcore=3G",
    );
    assert_eq!(l.movable_start(), vec![(NodeId(1), 4299161600)]);
    assert_eq!(
        sizes(&l, 0),
        vec![
            (1, 4095, 3998),
            (4096, 782304, 782304),
            (0, 0, 0),
            (0, 0, 0)
        ]
    );
    assert_eq!(
        sizes(&l, 1),
        vec![
            (0, 0, 0),
            (0, 0, 0),
            (1048576, 1024, 1024),
            (1049600, 261120, 261120)
        ]
    );
}

#[test]
fn descriptors_clip_node_memory_to_zones() {
    let l = layout(
        &["0:0x1000-0x9efff", "0:0x100000-0x1ffdffff"],
        "movablecore=128M",
    );
    let d = l.zone_descriptors();
    assert_eq!(d.len(), 4);
    assert_eq!(d[0].zone, ZoneType::Dma);
    assert_eq!(
        d[0].present_ranges,
        vec![(Pfn(1), Pfn(0x9f)), (Pfn(0x100), Pfn(0x1000))]
    );
    assert_eq!(d[1].present_ranges, vec![(Pfn(0x1000), Pfn(0x18000))]);
    assert!(d[2].present_ranges.is_empty() && d[2].spanned_pages == 0);
    assert_eq!(d[3].present_ranges, vec![(Pfn(0x18000), Pfn(0x1ffe0))]);
    for (desc, node_zone) in d.iter().zip(&l.nodes()[0].zones) {
        assert_eq!(desc.present_pages(), node_zone.present_pages);
    }
}

#[test]
fn mirror_splits_normal_and_movable_by_mirroring() {
    let l = layout(
        &[
            "0:0x1000-0x9efff:mirror",
            "0:0x100000-0xbfffffff:mirror",
            "0:0x100000000-0x13fffffff:mirror",
            "0:0x140000000-0x17fffffff",
        ],
        "kernelcore=mirror",
    );
    assert_eq!(l.movable_start(), vec![(NodeId(0), 0x140000000)]);
    let normal = l.zone(NodeId(0), ZoneType::Normal).expect("zone");
    let movable = l.zone(NodeId(0), ZoneType::Movable).expect("zone");
    // ZONE_NORMAL still spans up to the node's end but only mirrored memory is present.
    assert_eq!(
        (normal.zone_start_pfn.0, normal.spanned_pages),
        (0x100000, 0x80000)
    );
    assert_eq!(normal.present_pages, 0x40000);
    assert_eq!(
        (movable.zone_start_pfn.0, movable.spanned_pages),
        (0x140000, 0x40000)
    );
    assert_eq!(movable.present_pages, 0x40000);
    let d = l.zone_descriptors();
    assert_eq!(d[2].present_ranges, vec![(Pfn(0x100000), Pfn(0x140000))]);
    assert_eq!(d[3].present_ranges, vec![(Pfn(0x140000), Pfn(0x180000))]);
}

#[test]
fn report_lines_use_the_kernel_formats() {
    let l = layout(
        &["0:0x1000-0x9efff", "0:0x100000-0x1ffdffff"],
        "movablecore=128M",
    );
    let text = report::free_area_init_lines(&l);
    let expected = "Zone ranges:\n\
        \x20 DMA      [mem 0x0000000000001000-0x0000000000ffffff]\n\
        \x20 DMA32    [mem 0x0000000001000000-0x000000001ffdffff]\n\
        \x20 Normal   empty\n\
        \x20 Device   empty\n\
        Movable zone start for each node\n\
        \x20 Node 0: 0x0000000018000000\n\
        Early memory node ranges\n\
        \x20 node   0: [mem 0x0000000000001000-0x000000000009efff]\n\
        \x20 node   0: [mem 0x0000000000100000-0x000000001ffdffff]\n\
        Initmem setup node 0 [mem 0x0000000000001000-0x000000001ffdffff]\n";
    assert_eq!(text, expected);
    let info = report::zoneinfo_summary(&l);
    assert!(info.starts_with("Node 0, zone      DMA\n        spanned  4095\n        present  3998\n  start_pfn:           1\n"));
    assert!(info.contains(
        "Node 0, zone   Normal\n        spanned  0\n        present  0\nNode 0, zone  Movable\n"
    ));
    let json = report::ZonesReport::new(&l).to_json();
    assert!(json.starts_with(r#"{"zone_ranges":{"DMA":[4096,16777215],"DMA32":[16777216,536739839],"Normal":null},"movable_start":{"0":402653184},"zones":[{"node":0,"zone":"DMA","start_pfn":1,"spanned":4095,"present":3998}"#), "{json}");
    assert!(json.contains(r#"{"node":0,"zone":"Normal","spanned":0,"present":0}"#));
}

#[test]
fn errors_carry_the_offending_value() {
    let err = ZoneLayout::from_specs(&["0:0x1000-0x9efff"], Some("120%"), None, false);
    assert!(matches!(
        err,
        Err(LayoutError::Cmdline(CmdlineError::PercentTooLarge {
            percent: 120,
            ..
        }))
    ));
    let err = ZoneLayout::from_specs(&["0:0x1000-0x9efff"], Some("mirror"), None, false);
    assert_eq!(err, Err(LayoutError::NoMirroredMemory));
    let err = ZoneLayout::from_specs(&["0:0x1000-0x9efff"], None, Some("1Q"), false);
    assert!(matches!(
        err,
        Err(LayoutError::Cmdline(CmdlineError::BadSuffix { .. }))
    ));
    let err = ZoneLayout::from_specs(
        &["0:0x1000-0x9efff", "0:0x9e000-0xfffff"],
        None,
        None,
        false,
    );
    assert!(matches!(
        err,
        Err(LayoutError::MemMap(MemMapError::Overlap { .. }))
    ));
}

/// A random memory map: sorted ranges with random gaps, owned by random nodes (so nodes may
/// interleave), some hotpluggable, reaching up to a few tens of GiB.
fn arb_map() -> impl Strategy<Value = HostMemoryMap> {
    (
        0u64..0x2000,
        prop::collection::vec(
            (
                1u64..0x8_0000,
                0u64..0x4_0000,
                0u32..4,
                prop::bool::weighted(0.2),
            ),
            1..8,
        ),
    )
        .prop_map(|(first_pfn, ranges)| {
            let mut pfn = first_pfn;
            let regions = ranges
                .into_iter()
                .map(|(pages, gap, nid, hotplug)| {
                    let start = pfn;
                    pfn += pages;
                    let r = MemblockRegion::new(
                        u64::from(nid),
                        start << PAGE_SHIFT,
                        (pfn << PAGE_SHIFT) - 1,
                        MemblockFlags {
                            hotplug,
                            mirror: false,
                        },
                    )
                    .expect("generated region is valid");
                    pfn += gap;
                    r
                })
                .collect();
            HostMemoryMap::new(regions).expect("generated map is valid")
        })
}

fn arb_core() -> impl Strategy<Value = Option<CoreSpec>> {
    prop_oneof![
        Just(None),
        (0u64..=100).prop_map(|p| Some(CoreSpec::Percent(p))),
        (0u64..(48 << 30)).prop_map(|b| Some(CoreSpec::Bytes(b))),
    ]
}

fn arb_args() -> impl Strategy<Value = KernelArgs> {
    (arb_core(), arb_core(), prop::bool::weighted(0.15)).prop_map(
        |(k, movablecore, movable_node)| KernelArgs {
            kernelcore: k.map(KernelcoreSpec::Core),
            movablecore,
            movable_node,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn layout_invariants(map in arb_map(), args in arb_args()) {
        let l = ZoneLayout::free_area_init(map.clone(), args).expect("valid input lays out");
        prop_assert_eq!(l.nodes().len(), map.nodes_with_memory().len());
        for node in l.nodes() {
            let mut prev_end = node.node_start_pfn.0;
            for zone in node.zones.iter().filter(|z| z.spanned_pages > 0) {
                // Zones of a node are disjoint, ascending and inside the node.
                prop_assert!(zone.zone_start_pfn.0 >= prev_end, "{:?} overlaps", zone);
                prop_assert!(zone.zone_end_pfn() <= node.node_end_pfn);
                prev_end = zone.zone_end_pfn().0;
            }
            for zone in &node.zones {
                prop_assert!(zone.present_pages <= zone.spanned_pages);
            }
            // The node's memory is all present, in exactly one zone.
            prop_assert_eq!(node.node_present_pages, map.node_pages(node.nid));
            let zmp = l.zone_movable().zone_movable_pfn(node.nid).0;
            let movable = node.zones[ZoneType::Movable.index()];
            if zmp != 0 {
                prop_assert_eq!(zmp % MAX_ORDER_NR_PAGES, 0);
                prop_assert!(zmp < node.node_end_pfn.0);
                prop_assert_eq!(movable.zone_start_pfn.0, zmp);
                prop_assert!(movable.spanned_pages > 0);
            } else {
                prop_assert_eq!(movable.spanned_pages, 0);
            }
        }
        // Descriptors describe the same zones.
        let descriptors = l.zone_descriptors();
        prop_assert_eq!(descriptors.len(), l.nodes().len() * ZoneType::ALL.len());
        for (d, zone) in descriptors.iter().zip(l.nodes().iter().flat_map(|n| n.zones.iter())) {
            prop_assert_eq!(d.present_pages(), zone.present_pages);
            prop_assert_eq!(d.spanned_pages, zone.spanned_pages);
            let mut prev = d.zone_start_pfn;
            for (s, e) in &d.present_ranges {
                prop_assert!(*s >= prev && s < e && *e <= d.zone_end_pfn());
                prev = *e;
            }
        }
        // Without movable arguments there is no ZONE_MOVABLE.
        if args.kernelcore.is_none() && args.movablecore.is_none() && !args.movable_node {
            prop_assert!(l.movable_start().is_empty());
        }
        // kernelcore=size alone: the kernel gets what it asked for, up to the pages the
        // re-pass leaves to spread (fewer than one per node).
        if let (Some(KernelcoreSpec::Core(CoreSpec::Bytes(b))), None, false) =
            (args.kernelcore, args.movablecore, args.movable_node)
        {
            let kernel: u64 = l.nodes().iter().map(|n| n.node_present_pages - n.zones[ZoneType::Movable.index()].present_pages).sum();
            let nodes = l.nodes().len() as u64;
            prop_assert!(kernel + nodes >= (b >> PAGE_SHIFT).min(map.totalpages()), "kernel {} < {}", kernel, b >> PAGE_SHIFT);
        }
    }
}

/// A random map with some mirrored ranges, nodes ascending by address, reaching above 4 GiB.
fn arb_mirror_map() -> impl Strategy<Value = HostMemoryMap> {
    prop::collection::vec(
        (1u64..0x10_0000, 0u64..0x4_0000, 0u32..2, prop::bool::ANY),
        1..8,
    )
    .prop_map(|ranges| {
        let mut pfn = 1;
        let mut nid = 0;
        let regions = ranges
            .into_iter()
            .map(|(pages, gap, next_node, mirror)| {
                nid += next_node;
                let start = pfn;
                pfn += pages;
                let r = MemblockRegion::new(
                    u64::from(nid),
                    start << PAGE_SHIFT,
                    (pfn << PAGE_SHIFT) - 1,
                    MemblockFlags {
                        hotplug: false,
                        mirror,
                    },
                )
                .expect("generated region is valid");
                pfn += gap;
                r
            })
            .collect();
        HostMemoryMap::new(regions).expect("generated map is valid")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mirror_layout_invariants(map in arb_mirror_map()) {
        let args = KernelArgs { kernelcore: Some(KernelcoreSpec::Mirror), ..KernelArgs::default() };
        let l = match ZoneLayout::free_area_init(map.clone(), args) {
            Err(LayoutError::NoMirroredMemory) => {
                prop_assert!(!map.has_mirror());
                return Ok(());
            }
            other => other.expect("mirrored map lays out"),
        };
        for node in l.nodes() {
            for zone in &node.zones {
                prop_assert!(zone.present_pages <= zone.spanned_pages);
                prop_assert!(zone.zone_end_pfn() <= node.node_end_pfn);
            }
            // Mirrored memory above ZONE_MOVABLE's start may be lost (as in the kernel), never
            // counted twice.
            prop_assert!(node.node_present_pages <= map.node_pages(node.nid));
            let zmp = l.zone_movable().zone_movable_pfn(node.nid).0;
            if zmp != 0 {
                prop_assert!(zmp >= 1 << (32 - PAGE_SHIFT));
                prop_assert_eq!(zmp % MAX_ORDER_NR_PAGES, 0);
            }
        }
        for (d, zone) in l.zone_descriptors().iter().zip(l.nodes().iter().flat_map(|n| n.zones.iter())) {
            prop_assert_eq!(d.present_pages(), zone.present_pages);
        }
    }
}
