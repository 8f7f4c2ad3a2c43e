//! The `memtide vm` and `memtide pool` clients against an in-process server (fake launcher,
//! real pool): tables, `--json`, progress of a resize, and exit codes (0, 2 on a refused
//! request or bad arguments, 1 when the service cannot be reached).

mod common;

use std::process::Command;

use common::TestServer;
use memtide_vmm::control::{PoolInfo, VmInfo, VmState};

fn memtide(s: &TestServer, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memtide"))
        .args(args)
        .arg("--api-sock")
        .arg(&s.sock)
        .output()
        .expect("memtide runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn vm_and_pool_commands() {
    let s = TestServer::start(true);
    let (code, out, err) = memtide(
        &s,
        &[
            "vm",
            "create",
            "--id",
            "a",
            "--kernel",
            "/k",
            "--vcpus",
            "2",
            "--numa",
            "guest_numa_id=0,cpus=[0-1],memory=64M,hotplug_size=256M",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("state:       running"), "{out}");
    let (code, out, err) = memtide(
        &s,
        &[
            "vm",
            "create",
            "--id",
            "b",
            "--kernel",
            "/k",
            "--numa",
            "guest_numa_id=0,cpus=0,memory=64M,hotplug_size=256M",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, _) = memtide(&s, &["vm", "list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID") && lines.len() == 3, "{out}");
    assert!(
        lines[1].starts_with("a ") && lines[1].contains("running"),
        "{out}"
    );

    let (code, out, _) = memtide(&s, &["vm", "info", "a", "--json"]);
    assert_eq!(code, 0);
    let v: VmInfo = serde_json::from_str(&out).expect("VmInfo JSON");
    assert_eq!((v.vcpus, v.nodes[0].hotplug_size), (2, 256 << 20));

    // A resize shows its progress and ends with the VM's table.
    let (code, out, err) = memtide(&s, &["vm", "resize", "a", "192M", "--wait", "10"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("plugged 128M of 128M requested"), "{err}");
    assert!(out.contains("64M boot, 192M in all"), "{out}");
    let (code, out, err) = memtide(&s, &["vm", "rebalance", "a", "b", "64M"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("moved 64M of 64M from a to b"), "{out}");

    assert_eq!(memtide(&s, &["vm", "pause", "a"]).0, 0);
    let (code, _, err) = memtide(&s, &["vm", "pause", "a"]);
    assert_eq!(code, 2, "paused twice: {err}");
    assert!(err.contains("is paused: cannot pause (HTTP 409)"), "{err}");
    assert_eq!(memtide(&s, &["vm", "resume", "a"]).0, 0);

    // The balloon: set in either size, show, refuse bad targets with exit 2.
    let (code, out, err) = memtide(&s, &["vm", "balloon", "b", "--guest-size", "48M"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("16M target, 16M actual, 16M ballooned; guest keeps 48M of 64M"),
        "{out}"
    );
    let (code, out, err) = memtide(&s, &["vm", "balloon", "b", "--balloon-size", "8M"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("8M target"), "{out}");
    let (code, out, _) = memtide(&s, &["vm", "info", "b"]);
    assert_eq!(code, 0);
    assert!(out.contains("guest keeps 56M of 64M"), "{out}");
    for args in [
        &["vm", "balloon", "b", "--guest-size", "100M"][..],
        &["vm", "balloon", "b", "--balloon-size", "12X"],
        &[
            "vm",
            "balloon",
            "b",
            "--guest-size",
            "8M",
            "--balloon-size",
            "8M",
        ],
        &["vm", "balloon", "nope", "--guest-size", "8M"],
    ] {
        let (code, _, err) = memtide(&s, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
    let (code, out, err) = memtide(
        &s,
        &[
            "vm",
            "create",
            "--id",
            "c",
            "--kernel",
            "/k",
            "--memory",
            "64M",
            "--no-balloon",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: VmInfo = serde_json::from_str(&out).expect("VmInfo JSON");
    assert!(v.balloon.is_none(), "--no-balloon reaches the service");
    assert_eq!(memtide(&s, &["vm", "shutdown", "c"]).0, 0);
    assert_eq!(memtide(&s, &["vm", "delete", "c"]).0, 0);
    let (code, out, _) = memtide(&s, &["vm", "balloon", "b", "--json"]);
    assert_eq!(code, 0);
    let b: serde_json::Value = serde_json::from_str(&out).expect("balloon JSON");
    assert_eq!(
        b["target_bytes"],
        8 << 20,
        "unchanged by the refused targets"
    );

    let (code, out, _) = memtide(&s, &["pool", "--json"]);
    assert_eq!(code, 0);
    let p: PoolInfo = serde_json::from_str(&out).expect("PoolInfo JSON");
    assert_eq!(p.nodes.len(), 1);
    let (code, out, _) = memtide(&s, &["pool"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("0     Movable")), "{out}");

    // Refused and bad input: exit 2, nothing changes.
    for args in [
        &["vm", "info", "nope"][..],
        &["vm", "resize", "a", "3M"],
        &["vm", "resize", "a", "12X"],
        &["vm", "delete", "a"],
        &[
            "vm",
            "create",
            "--id",
            "c",
            "--kernel",
            "/k",
            "--numa",
            "guest_numa_id=0,memory=1G",
        ],
        &[
            "vm", "create", "--id", "a", "--kernel", "/k", "--memory", "64M",
        ],
    ] {
        let (code, _, err) = memtide(&s, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("error:"), "{args:?}: {err}");
    }
    assert_eq!(s.client().list_vms().expect("list").len(), 2);

    for id in ["a", "b"] {
        let (code, out, _) = memtide(&s, &["vm", "shutdown", id, "--json"]);
        assert_eq!(code, 0);
        let v: VmInfo = serde_json::from_str(&out).expect("json");
        assert_eq!(v.state, VmState::Stopped);
        let (code, out, _) = memtide(&s, &["vm", "delete", id]);
        assert_eq!((code, out.trim()), (0, format!("deleted {id}").as_str()));
    }

    // No service: exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_memtide"))
        .args(["vm", "list", "--api-sock", "/nonexistent/memtide.sock"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}
