//! memtide's own VMM boots the unmodified guest image on the KVM host (issue 4 acceptance):
//! 1 and 4 vCPUs, 1 and 2 guest NUMA nodes (backed by host nodes 0 and 1), the guest agent's
//! report (nodes, CPUs, MemTotal, zones) and a clean poweroff with exit status 0; and bad
//! configurations that fail before any VM starts, with exit status 2 and a clear message.

mod common;

use common::{memtide_binary, run_argv};
use memtide_testbed::{say, GuestImage, HostConfig, KvmHost, Result, Timeline};
use std::time::{Duration, Instant};

/// Generous: on a loaded 2-core machine a 4-vCPU guest under TCG took 70 s to its agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(150);

struct Scenario {
    label: &'static str,
    args: &'static [&'static str],
    vcpus: u32,
    nodes: Vec<u32>,
    /// Boot RAM per guest node, MiB.
    node_mib: Vec<u64>,
    /// The guest's cpulist of each node.
    node_cpus: &'static [&'static str],
    /// CPU flags the guest must show, and must not (its CPU template).
    flags: (&'static [&'static str], &'static [&'static str]),
}

/// What every guest shows, whatever its template: x86-64-v2.
const V2_FLAGS: &[&str] = &["sse4_2", "popcnt", "cx16", "ssse3"];
/// What `--cpu-template x86-64-v2` hides (the host's KVM offers them here).
const ABOVE_V2: &[&str] = &["xsave", "avx", "avx2", "fma", "pku"];

fn boot_and_check(host: &KvmHost, memtide: &str, s: &Scenario, t: &mut Timeline) -> Result<()> {
    let argv = run_argv(host, memtide, s.args);
    let start = Instant::now();
    let mut guest = host.boot_guest(s.label, AGENT_TIMEOUT, |_| argv.clone())?;
    let agent_at = guest.agent_at().unwrap_or_else(Instant::now);
    t.mark_at(&format!("{}: agent's first line", s.label), agent_at);
    say(&format!(
        "{}: VMM start -> agent line {:.2} s",
        s.label,
        agent_at.duration_since(start).as_secs_f64()
    ));
    let report = guest.report()?;
    say(&format!(
        "{}: MemTotal {} kB, nodes {:?}, zones {:?}",
        s.label,
        report.mem_total_kib,
        report.nodes.online,
        report
            .zones
            .iter()
            .map(|z| format!(
                "{}:{} spanned {} present {}",
                z.node, z.name, z.spanned, z.present
            ))
            .collect::<Vec<_>>()
    ));
    assert_eq!(
        report.nodes.online, s.nodes,
        "{}: guest NUMA nodes",
        s.label
    );
    assert_eq!(
        report.nodes.has_memory, s.nodes,
        "{}: every node has memory",
        s.label
    );
    let total_mib: u64 = s.node_mib.iter().sum();
    assert!(
        report.mem_total_kib > total_mib * 1024 * 7 / 10 && report.mem_total_kib < total_mib * 1024,
        "{}: MemTotal {} kB for {} MiB of boot RAM",
        s.label,
        report.mem_total_kib,
        total_mib
    );
    assert_eq!(
        report.managed_kib(),
        report.mem_total_kib,
        "{}: MemTotal = managed",
        s.label
    );
    // Present pages per node: the node's RAM, less the BIOS hole below 1 MiB on node 0.
    for (node, mib) in s.nodes.iter().zip(&s.node_mib) {
        let present: u64 = report
            .zones
            .iter()
            .filter(|z| z.node == *node)
            .map(|z| z.present)
            .sum();
        let pages = mib * 256;
        let hole = if *node == 0 { 256 - 0x9f + 1 } else { 0 };
        assert_eq!(
            present,
            pages - hole,
            "{}: present pages of node {node}",
            s.label
        );
    }
    let online = guest.sh("cat /sys/devices/system/cpu/online")?;
    let want = if s.vcpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", s.vcpus - 1)
    };
    assert_eq!(online, vec![want], "{}: online CPUs", s.label);
    let flags = guest.sh("grep -m1 '^flags' /proc/cpuinfo")?;
    let flags: Vec<&str> = flags
        .first()
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let (present, absent) = s.flags;
    for f in present {
        assert!(flags.contains(f), "{}: CPU flag {f} in {flags:?}", s.label);
    }
    for f in absent {
        assert!(
            !flags.contains(f),
            "{}: no CPU flag {f} in {flags:?}",
            s.label
        );
    }
    for (n, want) in s.nodes.iter().zip(s.node_cpus) {
        let cpus = guest.sh(&format!("cat /sys/devices/system/node/node{n}/cpulist"))?;
        let got = cpus
            .first()
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        assert_eq!(&got, want, "{}: CPUs of guest node {n}", s.label);
    }
    if s.nodes.len() > 1 {
        host_memory_is_node_bound(host, s.label)?;
    }
    assert_eq!(guest.fill(32)?, 32);
    assert_eq!(guest.verify()?, 32);
    assert_eq!(guest.free()?, 32);
    assert_eq!(
        guest.poweroff(Duration::from_secs(60))?,
        0,
        "{}: memtide exits 0 after the guest's poweroff",
        s.label
    );
    t.mark(&format!("{}: powered off", s.label));
    Ok(())
}

/// Guest RAM lives in one memfd per host node, bound there (mbind MPOL_BIND): in memtide's
/// numa_maps every `memtide-nodeH` mapping says `bind:H` and has pages on node H only.
fn host_memory_is_node_bound(host: &KvmHost, label: &str) -> Result<()> {
    let out = host.check(
        "grep memfd:memtide-node /proc/$(pidof memtide)/numa_maps",
        Duration::from_secs(20),
    )?;
    let mut seen = Vec::new();
    for line in &out.lines {
        let h: u32 = line
            .split("memfd:memtide-node")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{label}: no node in {line:?}"));
        assert!(line.contains(&format!("bind:{h} ")), "{label}: {line}");
        for w in line.split_whitespace() {
            if let Some(rest) = w.strip_prefix('N') {
                if let Some((n, _)) = rest.split_once('=') {
                    assert_eq!(
                        n,
                        h.to_string(),
                        "{label}: pages of node {h}'s memfd elsewhere: {line}"
                    );
                }
            }
        }
        seen.push(h);
    }
    seen.sort_unstable();
    seen.dedup();
    say(&format!(
        "{label}: guest RAM mappings bound to host nodes {seen:?}"
    ));
    assert_eq!(seen, vec![0, 1], "{label}: both host nodes back the guest");
    Ok(())
}

/// A guest reboot (`reboot=k`: the i8042 reset line) ends memtide with status 3.
fn guest_reboot_ends_with_status_3(host: &KvmHost, memtide: &str) -> Result<()> {
    let argv = run_argv(host, memtide, &["--vcpus", "2", "--memory", "256M"]);
    let mut guest = host.boot_guest("reboot", AGENT_TIMEOUT, |_| argv.clone())?;
    // The agent's shell does not come back: the guest resets under it.
    let _ = guest.console().send_line("sh reboot -f");
    assert_eq!(
        guest.wait_exit(Duration::from_secs(60))?,
        3,
        "exit status after reset"
    );
    let tail = guest.console().tail();
    assert!(
        tail.contains("VM stopped: Reset"),
        "memtide says why: {tail}"
    );
    Ok(())
}

/// SIGTERM to a running memtide stops the VM and memtide exits 0, saying why.
fn sigterm_stops_cleanly(host: &KvmHost, memtide: &str) -> Result<()> {
    let argv = run_argv(host, memtide, &["--vcpus", "2", "--memory", "256M"]);
    let mut guest = host.boot_guest("sigterm", AGENT_TIMEOUT, |_| argv.clone())?;
    let out = host.run("kill -TERM $(pidof memtide)", Duration::from_secs(20))?;
    assert_eq!(out.status, 0, "kill found memtide: {out:?}");
    assert_eq!(
        guest.wait_exit(Duration::from_secs(30))?,
        0,
        "exit status after SIGTERM"
    );
    let tail = guest.console().tail();
    assert!(
        tail.contains("VM stopped: Stopped"),
        "memtide says why: {tail}"
    );
    Ok(())
}

/// Bad configurations: exit status 2 and the message, nothing started.
fn bad_configs(host: &KvmHost, memtide: &str) -> Result<()> {
    let k = host.guest_kernel();
    let i = host.guest_initrd();
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{memtide} run --kernel {k} --initrd {i} --memory 32M --no-stdin"),
            "guest memory too small",
        ),
        (
            format!(
                "{memtide} run --kernel {k} --initrd {i} --vcpus 2 --memory 32M --no-stdin \
                 --numa guest_numa_id=0,cpus=0,memory=16M --numa guest_numa_id=1,cpus=1,memory=8M \
                 --numa guest_numa_id=2,cpus=[],memory=8M"
            ),
            "each node needs at least 16 MiB",
        ),
        (
            format!("{memtide} run --kernel /nonexistent/vmlinuz --memory 512M --no-stdin"),
            "cannot read kernel /nonexistent/vmlinuz",
        ),
        (
            format!("{memtide} run --kernel {i} --memory 512M --no-stdin"),
            "is not a bzImage",
        ),
        (
            format!("{memtide} run --kernel {k} --initrd {i} --vcpus 300 --memory 512M --no-stdin"),
            "exceeds memtide's limit",
        ),
        (
            format!(
                "{memtide} run --kernel {k} --initrd {i} --memory 512M --no-stdin \
                 --numa guest_numa_id=0,cpus=0,memory=512M,host_numa_id=7"
            ),
            "host node 7, which does not exist",
        ),
        (
            format!(
                "{memtide} run --kernel {k} --initrd {i} --memory 512M --no-stdin \
                 --cpu-template x86-64-v9"
            ),
            "unknown CPU template \"x86-64-v9\"",
        ),
    ];
    for (cmd, msg) in cases {
        let out = host.run(&format!("{cmd} 2>&1"), Duration::from_secs(30))?;
        say(&format!(
            "bad config: {cmd} -> {} {:?}",
            out.status, out.lines
        ));
        assert_eq!(out.status, 2, "{cmd}: exit status 2, got {out:?}");
        assert!(
            out.text().contains(msg),
            "{cmd}: message {msg:?} in {out:?}"
        );
    }
    Ok(())
}

/// A host that dies mid-test (not a result) runs the test again once on a fresh host.
#[test]
fn memtide_boots_the_guest_image_with_smp_and_numa() {
    memtide_testbed::rerun_on_host_death("vmm_boot", |_| {
        memtide_boots_the_guest_image_with_smp_and_numa_on_a_fresh_host()
    });
}

fn memtide_boots_the_guest_image_with_smp_and_numa_on_a_fresh_host() {
    let mut t = Timeline::new("vmm-boot");
    let memtide_local = memtide_binary();
    t.mark("memtide built");
    let image = GuestImage::ensure().expect("guest image");
    t.mark("guest image ready");
    let cfg = HostConfig {
        nodes_mib: vec![1536, 1536],
        image: Some(image),
        extra_binaries: vec![memtide_local],
        ..HostConfig::default()
    };
    let (_sel, host) = KvmHost::start(&cfg).expect("a KVM host");
    let memtide = host.binary("memtide").expect("memtide in the host");
    let scenarios = [
        Scenario {
            label: "1cpu-1node",
            args: &["--vcpus", "1", "--memory", "512M"],
            vcpus: 1,
            nodes: vec![0],
            node_mib: vec![512],
            node_cpus: &["0"],
            flags: (&["sse4_2", "xsave"], &[]),
        },
        Scenario {
            label: "4cpu-1node",
            args: &[
                "--vcpus",
                "4",
                "--memory",
                "512M",
                "--cpu-template",
                "x86-64-v2",
            ],
            vcpus: 4,
            nodes: vec![0],
            node_mib: vec![512],
            node_cpus: &["0-3"],
            flags: (V2_FLAGS, ABOVE_V2),
        },
        Scenario {
            label: "1cpu-2nodes",
            args: &[
                "--vcpus",
                "1",
                "--numa",
                "guest_numa_id=0,cpus=0,memory=256M,host_numa_id=0",
                "--numa",
                // A node may have memory and no CPU.
                "guest_numa_id=1,cpus=[],memory=256M,host_numa_id=1",
            ],
            vcpus: 1,
            nodes: vec![0, 1],
            node_mib: vec![256, 256],
            node_cpus: &["0", ""],
            flags: (V2_FLAGS, &[]),
        },
        Scenario {
            label: "4cpu-2nodes",
            args: &[
                "--vcpus",
                "4",
                "--numa",
                "guest_numa_id=0,cpus=[0-1],memory=384M,host_numa_id=0",
                "--numa",
                "guest_numa_id=1,cpus=[2-3],memory=256M,host_numa_id=1,hotplug_size=1G",
            ],
            vcpus: 4,
            nodes: vec![0, 1],
            node_mib: vec![384, 256],
            node_cpus: &["0-1", "2-3"],
            flags: (V2_FLAGS, &[]),
        },
    ];
    for s in &scenarios {
        boot_and_check(&host, &memtide, s, &mut t).expect(s.label);
    }
    guest_reboot_ends_with_status_3(&host, &memtide).expect("guest reboot");
    t.mark("guest reboot handled");
    sigterm_stops_cleanly(&host, &memtide).expect("SIGTERM");
    t.mark("SIGTERM handled");
    bad_configs(&host, &memtide).expect("bad configurations");
    t.mark("bad configurations rejected");
    if let KvmHost::Emulated(h) = host {
        assert!(
            h.shutdown().expect("shutdown"),
            "the host printed its end marker"
        );
    }
}
