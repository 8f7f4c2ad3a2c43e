//! Harness self-test (issue 3 acceptance): start the KVM host (the emulated one here: 2 host
//! NUMA nodes), check /dev/kvm and both nodes in it, boot the guest image with QEMU as the
//! reference VMM (`-accel kvm`, microvm), read and check the guest agent's report, exercise
//! fill/verify/free, power off cleanly; print the time from test start to the guest report
//! and from host start to the agent's first line.

use memtide_testbed::{
    cargo_age, process_age, retry_boot, say, GuestImage, HostConfig, HostKind, KvmHost, Policy,
    QemuGuest, Result, Timeline,
};
use std::time::{Duration, Instant};

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

fn scenario(image: &GuestImage, t: &mut Timeline) -> Result<()> {
    // The whole scenario is retried once on a dead host (below), so start() boots only once.
    let cfg = HostConfig {
        nodes_mib: vec![1024, 1024],
        image: Some(image.clone()),
        boots: 1,
        ..HostConfig::default()
    };
    let (_sel, host) = KvmHost::start(&cfg)?;
    let host_start = match host.emulated() {
        Some(h) => {
            t.mark_at("emulated host started", h.started_at());
            t.mark_at("emulated host ready", h.ready_at());
            assert_eq!(
                h.ready().nodes,
                vec![0, 1],
                "the host reports both NUMA nodes"
            );
            let nodes = host.check(
                "ls -1d /sys/devices/system/node/node*",
                Duration::from_secs(20),
            )?;
            assert_eq!(
                nodes.lines,
                vec![
                    "/sys/devices/system/node/node0",
                    "/sys/devices/system/node/node1"
                ]
            );
            // Each node has the memory we gave it (MemTotal per node within 1024 MiB).
            for n in 0..2 {
                let m = host.check(
                    &format!("grep MemTotal /sys/devices/system/node/node{n}/meminfo"),
                    Duration::from_secs(20),
                )?;
                let kib: u64 = m
                    .text()
                    .split_whitespace()
                    .nth(3)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                assert!(
                    kib > 700 * 1024 && kib <= 1024 * 1024,
                    "node {n} MemTotal {kib} kB: {m:?}"
                );
            }
            host.check(
                "[ -c /dev/kvm ] && grep -qw svm /proc/cpuinfo",
                Duration::from_secs(20),
            )?;
            h.started_at()
        }
        None => {
            assert_eq!(host.kind(), HostKind::Hardware);
            Instant::now()
        }
    };
    let spec = QemuGuest::default();
    let argv = spec.argv(&host)?;
    let mut guest = host.boot_guest("reference-qemu", AGENT_TIMEOUT, |_| argv.clone())?;
    let agent_at = guest.agent_at().unwrap_or_else(Instant::now);
    t.mark_at("guest agent's first line", agent_at);
    say(&format!(
        "timing: host start -> guest agent line: {:.2} s",
        agent_at.duration_since(host_start).as_secs_f64()
    ));
    let report = guest.report()?;
    t.mark("guest report received");
    say(&format!(
        "guest report: MemTotal {} kB, nodes {:?}, zones {:?}",
        report.mem_total_kib,
        report.nodes.online,
        report
            .zones
            .iter()
            .map(|z| format!("{}:{}={}", z.node, z.name, z.managed))
            .collect::<Vec<_>>()
    ));
    // 512 MiB of boot RAM: MemTotal is a bit less (kernel image, reserved pages).
    assert!(
        report.mem_total_kib > 400 * 1024 && report.mem_total_kib < 512 * 1024,
        "MemTotal {} kB",
        report.mem_total_kib
    );
    assert_eq!(
        report.managed_kib(),
        report.mem_total_kib,
        "MemTotal = sum of managed pages"
    );
    assert_eq!(report.nodes.online, vec![0]);
    let dma32 = report.zone(0, "DMA32").expect("a DMA32 zone");
    assert!(dma32.managed > 0 && dma32.present >= dma32.managed && dma32.spanned >= dma32.present);
    assert_eq!(
        report.zone(0, "Movable").map(|z| z.present),
        Some(0),
        "no movable memory at boot"
    );
    assert!(
        report.block_size.is_some() && !report.blocks.is_empty(),
        "memory blocks are reported"
    );
    assert_eq!(guest.fill(64)?, 64);
    assert_eq!(guest.verify()?, 64);
    assert_eq!(guest.free()?, 64);
    let modules = guest.sh("cat /proc/modules")?;
    for m in ["virtio_mem", "virtio_balloon", "virtio_mmio", "virtio_pci"] {
        assert!(
            modules.iter().any(|l| l.starts_with(&format!("{m} "))),
            "{m} loaded: {modules:?}"
        );
    }
    assert_eq!(
        guest.poweroff(Duration::from_secs(60))?,
        0,
        "QEMU exits 0 after the guest's poweroff"
    );
    t.mark("guest powered off");
    drop(guest);
    if let KvmHost::Emulated(h) = host {
        assert!(h.shutdown()?, "the host printed its end marker");
        t.mark("host shut down");
    }
    Ok(())
}

#[test]
fn emulated_host_boots_the_guest_image_with_reference_qemu() {
    let mut t = Timeline::new("selftest");
    if let Some(age) = process_age() {
        say(&format!(
            "timing: test binary had been running {:.2} s when the self-test started",
            age.as_secs_f64()
        ));
    }
    let image = GuestImage::ensure().unwrap_or_else(|e| panic!("guest image: {e}"));
    t.mark("guest image ready");
    say(&format!(
        "guest image: kernel {}, initrd {}, modules {:?}",
        image.kernel.display(),
        image.initrd.display(),
        image.modules
    ));
    retry_boot("self-test host", Policy::Host, |_| scenario(&image, &mut t))
        .unwrap_or_else(|e| panic!("{e}"));
    let total = t
        .get("guest report received")
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    // Offsets of the test binary's and cargo's start before the self-test's own start.
    let now = t.start().elapsed().as_secs_f64();
    let binary_before = process_age()
        .map(|a| a.as_secs_f64() - now)
        .unwrap_or(0.0)
        .max(0.0);
    say(&format!(
        "timing: self-test start -> guest report {total:.2} s; test binary start -> guest report {:.2} s",
        binary_before + total
    ));
    if let Some(c) = cargo_age() {
        say(&format!(
            "timing: `cargo test` start -> guest report {:.2} s (includes building and earlier test binaries)",
            c.as_secs_f64() - now + total
        ));
    }
}
