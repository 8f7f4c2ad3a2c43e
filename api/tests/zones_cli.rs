//! `memtide zones` end to end: JSON against a real-kernel fixture, the kernel-style text, and
//! exit code 2 with a message naming the problem for bad input.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn memtide(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memtide"))
        .args(args)
        .output()
        .expect("memtide runs")
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../allocator/tests/fixtures/linux-zones")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

#[test]
fn json_matches_the_kernel_for_a_two_node_fixture() {
    // Two nodes, memory above 4 GiB, kernelcore=3G: what Linux 6.1 reported.
    let f = fixture("case-16.json");
    let mut args: Vec<String> = vec!["zones".into()];
    for r in f["node_ranges"].as_array().expect("node_ranges") {
        args.push("--node".into());
        args.push(format!(
            "{}:{:#x}-{:#x}",
            r[0],
            r[1].as_u64().expect("start"),
            r[2].as_u64().expect("end")
        ));
    }
    for word in f["args"].as_str().expect("args").split_whitespace() {
        let (name, value) = word.split_once('=').expect("name=value");
        args.push(format!("--{name}"));
        args.push(value.into());
    }
    args.push("--json".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = memtide(&argv);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    for zone in ["DMA", "DMA32", "Normal"] {
        assert_eq!(got["zone_ranges"][zone], f["zone_ranges"][zone], "{zone}");
    }
    assert_eq!(got["movable_start"], f["movable_start"]);
    let kernel_zones: Vec<&Value> = f["zones"]
        .as_array()
        .expect("zones")
        .iter()
        .filter(|z| z["zone"] != "Device")
        .collect();
    let got_zones = got["zones"].as_array().expect("zones");
    assert_eq!(got_zones.len(), kernel_zones.len());
    for (g, k) in got_zones.iter().zip(kernel_zones) {
        for field in ["node", "zone", "spanned", "present", "start_pfn"] {
            assert_eq!(g.get(field), k.get(field), "{field} of {k}");
        }
    }
}

#[test]
fn text_is_the_kernel_printout_and_a_zoneinfo_summary() {
    let out = memtide(&[
        "zones",
        "--node",
        "0:0x1000-0x9efff",
        "--node",
        "0:0x100000-0x1ffdffff",
        "--movablecore",
        "128M",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let expected = "\
Zone ranges:
  DMA      [mem 0x0000000000001000-0x0000000000ffffff]
  DMA32    [mem 0x0000000001000000-0x000000001ffdffff]
  Normal   empty
  Device   empty
Movable zone start for each node
  Node 0: 0x0000000018000000
Early memory node ranges
  node   0: [mem 0x0000000000001000-0x000000000009efff]
  node   0: [mem 0x0000000000100000-0x000000001ffdffff]
Initmem setup node 0 [mem 0x0000000000001000-0x000000001ffdffff]

Node 0, zone      DMA
        spanned  4095
        present  3998
  start_pfn:           1
Node 0, zone    DMA32
        spanned  94208
        present  94208
  start_pfn:           4096
Node 0, zone   Normal
        spanned  0
        present  0
Node 0, zone  Movable
        spanned  32736
        present  32736
  start_pfn:           98304
";
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn bad_input_exits_2_naming_the_problem() {
    let ok = "0:0x1000-0x9efff";
    let cases: &[(&[&str], &str)] = &[
        (&["zones", "--node", ok, "--kernelcore", "120%"], "120"),
        (&["zones", "--node", ok, "--kernelcore", "1Q"], "'Q'"),
        (&["zones", "--node", ok, "--movablecore", "lots"], "lots"),
        (&["zones", "--node", ok, "--kernelcore", "mirror"], "mirror"),
        (
            &["zones", "--node", "0:0x100000-0x1fffff", "--node", ok],
            "not sorted",
        ),
        (
            &["zones", "--node", ok, "--node", "1:0x9e000-0xfffff"],
            "overlaps",
        ),
        (&["zones", "--node", "0:0x2000-0x1fff"], "empty"),
        (&["zones", "--node", "64:0x1000-0x1fff"], "node id 64"),
        (&["zones", "--node", "0:0x1000-0x1ffe"], "page aligned"),
        (&["zones", "--node", "0:0x1000-0x1fff:fast"], "fast"),
        (&["zones", "--node", "0:4k-8k"], "4k"),
        (&["zones"], "--node"),
    ];
    for (args, needle) in cases {
        let out = memtide(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: '{needle}' not in: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}
