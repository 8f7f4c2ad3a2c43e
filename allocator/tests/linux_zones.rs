//! The zone layout against what a real Linux 6.1 kernel computed.
//!
//! Every JSON file in `tests/fixtures/linux-zones/` records one boot of Debian's
//! `linux-image-6.1.0-56-cloud-amd64` under QEMU (made by `linux-zone-oracle.py`, see
//! `/work/shared/README.md`): the kernel's memblock node ranges, its `kernelcore=` /
//! `movablecore=` arguments, the zone ranges and ZONE_MOVABLE starts it printed, and its
//! `/proc/zoneinfo`. This test feeds the node ranges and the arguments into the layout and
//! compares every number (the always-empty ZONE_DEVICE aside). `partial-*.json` files record
//! boots that died before user space (tiny `kernelcore=`): only the kernel's printout
//! (zone ranges, ZONE_MOVABLE starts) is compared for them.

use memtide_allocator::layout::{
    CmdlineError, HostMemoryMap, KernelArgs, KernelcoreSpec, LayoutError, ZoneLayout,
};
use memtide_allocator::{NodeId, ZoneType};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linux-zones");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn as_u64(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

fn zone_type(name: &str) -> Option<ZoneType> {
    ZoneType::ALL.into_iter().find(|z| z.name() == name)
}

/// Computes the layout for a fixture. `kernelcore=mirror` on a machine without mirrored memory
/// is an error here; the kernel warns and ignores it, so such a fixture is compared with the
/// layout computed without the argument.
fn layout_for(fixture: &Value) -> Result<ZoneLayout, String> {
    let specs: Vec<String> = fixture["node_ranges"]
        .as_array()
        .ok_or("node_ranges missing")?
        .iter()
        .map(|r| {
            format!(
                "{}:{:#x}-{:#x}",
                as_u64(&r[0], "node"),
                as_u64(&r[1], "start"),
                as_u64(&r[2], "end")
            )
        })
        .collect();
    let map = HostMemoryMap::parse(&specs).map_err(|e| e.to_string())?;
    let cmdline = fixture["args"].as_str().ok_or("args missing")?;
    let mut args = KernelArgs::parse_cmdline(cmdline).map_err(|e: CmdlineError| e.to_string())?;
    match ZoneLayout::free_area_init(map.clone(), args) {
        Err(LayoutError::NoMirroredMemory) => {
            assert_eq!(args.kernelcore, Some(KernelcoreSpec::Mirror));
            args.kernelcore = None;
            ZoneLayout::free_area_init(map, args).map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

/// All differences between the layout and the kernel's record, one line each.
fn compare(fixture: &Value, layout: &ZoneLayout) -> Vec<String> {
    let mut diffs = Vec::new();
    let arch = layout.arch_zone_ranges();
    for zone in [ZoneType::Dma, ZoneType::Dma32, ZoneType::Normal] {
        let kernel = &fixture["zone_ranges"][zone.name()];
        let kernel = kernel
            .as_array()
            .map(|r| (as_u64(&r[0], "range start"), as_u64(&r[1], "range end")));
        if kernel != arch.byte_range(zone) {
            diffs.push(format!(
                "zone range {zone}: kernel {kernel:x?}, ours {:x?}",
                arch.byte_range(zone)
            ));
        }
    }
    let kernel_movable: Vec<(u32, u64)> = fixture["movable_start"]
        .as_object()
        .map(|m| {
            let mut v: Vec<(u32, u64)> = m
                .iter()
                .map(|(k, v)| (k.parse().expect("node key"), as_u64(v, "movable start")))
                .collect();
            v.sort_unstable();
            v
        })
        .unwrap_or_default();
    let ours_movable: Vec<(u32, u64)> = layout
        .movable_start()
        .into_iter()
        .map(|(n, a)| (n.0, a))
        .collect();
    if kernel_movable != ours_movable {
        diffs.push(format!(
            "movable start: kernel {kernel_movable:x?}, ours {ours_movable:x?}"
        ));
    }
    // Boots with a tiny kernelcore= die before user space: the kernel's printout is all
    // there is (no /proc/zoneinfo).
    if fixture["boot_failed"].as_bool() == Some(true) {
        return diffs;
    }
    let mut kernel_zones = 0;
    for z in fixture["zones"].as_array().into_iter().flatten() {
        let name = z["zone"].as_str().unwrap_or("?");
        if name == "Device" {
            continue;
        }
        kernel_zones += 1;
        let node = as_u64(&z["node"], "node") as u32;
        let Some(ty) = zone_type(name) else {
            diffs.push(format!("unknown zone {name}"));
            continue;
        };
        let Some(ours) = layout.zone(NodeId(node), ty) else {
            diffs.push(format!("node {node} zone {name}: missing"));
            continue;
        };
        let start_pfn = z.get("start_pfn").map(|v| as_u64(v, "start_pfn"));
        let ours_start = ours.is_populated().then_some(ours.zone_start_pfn.0);
        let kernel = (
            as_u64(&z["spanned"], "spanned"),
            as_u64(&z["present"], "present"),
            start_pfn,
        );
        let mine = (ours.spanned_pages, ours.present_pages, ours_start);
        if kernel != mine {
            diffs.push(format!(
                "node {node} zone {name}: kernel (spanned, present, start_pfn) {kernel:?}, ours {mine:?}"
            ));
        }
    }
    let ours_zones = layout.nodes().len() * ZoneType::ALL.len();
    if kernel_zones != ours_zones {
        diffs.push(format!(
            "zone count: kernel {kernel_zones}, ours {ours_zones}"
        ));
    }
    diffs
}

#[test]
fn layout_matches_the_real_kernel() {
    let files = fixtures();
    assert!(files.len() >= 8, "fixtures missing: {}", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let fixture: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let context = format!(
            "{name} (nodes {} MiB, args '{}')",
            fixture["nodes_mib"],
            fixture["args"].as_str().unwrap_or("")
        );
        match layout_for(&fixture) {
            Err(e) => failures.push(format!("{context}: layout failed: {e}")),
            Ok(layout) => {
                for d in compare(&fixture, &layout) {
                    failures.push(format!("{context}: {d}"));
                }
            }
        }
    }
    println!("{} real-kernel cases compared", files.len());
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
