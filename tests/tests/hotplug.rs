//! virtio-mem on a real Linux guest (issue 5 acceptance, first part): `memtide run` with a
//! 1 GiB hot-pluggable range on guest node 0 and the REST API on a socket; the guest grows
//! from 256 MiB to 1 GiB and back through `memtide vm resize`. MemTotal and the agent's
//! zoneinfo follow exactly, the plugged memory is the guest's ZONE_MOVABLE, the guest fills
//! and verifies a pattern in it, and the host pool's free pages come back exactly.
//!
//! The guest is booted with the dead-boot policy (`KvmHost::boot_guest`); wrong results are
//! never retried.

#[allow(dead_code)]
mod common;

use common::balloon::num;
use common::{api_vm, memtide_binary, run_argv};
use memtide_testbed::{say, GuestImage, HostConfig, KvmHost, Report, Result, Timeline};
use std::time::{Duration, Instant};

const AGENT_TIMEOUT: Duration = Duration::from_secs(150);
const SOCK: &str = "/tmp/run.sock";
const MIB_KB: u64 = 1024;

/// The pool's free pages, from `memtide pool --json`.
fn pool_free_pages(host: &KvmHost, memtide: &str) -> Result<u64> {
    pool_pages(host, memtide).map(|(_, free)| free)
}

/// What `memtide vm resize` prints when the guest had not reached the size in time.
const UNFINISHED: &str = "had not finished";

/// Resizes VM `run` to `size` and returns the CLI's output.
fn resize(host: &KvmHost, memtide: &str, size: &str) -> Result<String> {
    resize_waiting(host, memtide, size, 120)
}

/// Resizes VM `run` to `size`, following it for at most `wait` seconds.
fn resize_waiting(host: &KvmHost, memtide: &str, size: &str, wait: u64) -> Result<String> {
    let start = Instant::now();
    let out = host.check(
        &format!("{memtide} vm resize run {size} --wait {wait} --api-sock {SOCK} 2>&1"),
        Duration::from_secs(180),
    )?;
    say(&format!(
        "resize to {size}: {:.2} s: {:?}",
        start.elapsed().as_secs_f64(),
        out.lines
    ));
    Ok(out.text())
}

/// Polls the agent until MemTotal is `want_kib` (the guest onlines what was plugged right
/// after each ACK, so this is quick); returns the last report.
fn report_when(
    guest: &mut memtide_testbed::Guest,
    want_kib: u64,
    timeout: Duration,
) -> Result<Report> {
    let start = Instant::now();
    loop {
        let r = guest.report()?;
        if r.mem_total_kib == want_kib || start.elapsed() > timeout {
            return Ok(r);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn movable_kib(r: &Report) -> u64 {
    r.zone_managed_kib("Movable")
}

/// Runs a `memtide ... --json` client command in the host and reads the first number after
/// each of `keys` in its output (the first occurrence: top-level totals come first).
fn json_numbers<const N: usize>(
    host: &KvmHost,
    command: &str,
    keys: [&str; N],
) -> Result<[u64; N]> {
    let out = host.check(command, Duration::from_secs(30))?;
    let text = out.text();
    let mut values = [0u64; N];
    for (value, key) in values.iter_mut().zip(keys) {
        *value = num(&text, key)
            .ok_or_else(|| memtide_testbed::Error::Config(format!("no {key} in {text}")))?;
    }
    Ok(values)
}

/// Pool page counts from `memtide pool --json`: `(managed, free)`.
fn pool_pages(host: &KvmHost, memtide: &str) -> Result<(u64, u64)> {
    let [managed, free] = json_numbers(
        host,
        &format!("{memtide} pool --json --api-sock {SOCK}"),
        ["managed_pages", "free_pages"],
    )?;
    Ok((managed, free))
}

/// `(boot_memory, total_memory)` of VM `id`, bytes.
fn vm_sizes(host: &KvmHost, memtide: &str, id: &str) -> Result<(u64, u64)> {
    let [boot, total] = json_numbers(
        host,
        &format!("{memtide} vm info {id} --json --api-sock {SOCK}"),
        ["boot_memory", "total_memory"],
    )?;
    Ok((boot, total))
}

/// Creates VM `b` (256 MiB on host node 1, 1 GiB hot-pluggable) in the same memtide, its
/// console on a socket with `memtide vm console` attached, and waits for its agent.
fn create_b(host: &KvmHost, memtide: &str) -> Result<memtide_testbed::Guest> {
    api_vm::create_attached(
        host,
        memtide,
        SOCK,
        "b",
        "guest_numa_id=0,cpus=0,memory=256M,host_numa_id=1,hotplug_size=1G",
    )
}

/// Issue 5's two-guest step: A (`run`, agent on the console) holds 512 MiB plugged and a
/// 64 MiB pattern; 512 MiB move A -> b; A's pattern is intact, b has 512 MiB plugged and its
/// agent fills and verifies a pattern in that new memory, and at every step pool free +
/// plugged + boot = managed and the pool audit (no page with two owners, none leaked) holds.
fn rebalance_a_to_b(
    host: &KvmHost,
    memtide: &str,
    guest: &mut memtide_testbed::Guest,
    m0: u64,
    t: &mut Timeline,
) -> Result<()> {
    const PAGE: u64 = 4096;
    let accounted = |label: &str| -> Result<()> {
        let (managed, free) = pool_pages(host, memtide)?;
        let mut used = 0;
        for id in ["run", "b"] {
            if let Ok((_, total)) = vm_sizes(host, memtide, id) {
                used += total;
            }
        }
        say(&format!(
            "{label}: pool managed {managed}, free {free}, VMs (boot + plugged) {} pages",
            used / PAGE
        ));
        assert_eq!(
            free + used / PAGE,
            managed,
            "{label}: free + plugged + boot = managed"
        );
        let (allocated, owned) = api_vm::audit(host, memtide, SOCK)?;
        assert_eq!(
            allocated,
            used / PAGE,
            "{label}: the audit counts the same pages"
        );
        say(&format!(
            "{label}: pool audit consistent ({owned} pages owned)"
        ));
        Ok(())
    };
    resize(host, memtide, "768M")?;
    let r = report_when(guest, m0 + 512 * MIB_KB, Duration::from_secs(60))?;
    assert_eq!(r.mem_total_kib - m0, 512 * MIB_KB, "A grew by 512 MiB");
    assert_eq!(guest.fill(64)?, 64);
    t.mark("A: 512 MiB plugged, 64 MiB pattern");
    let mut b = create_b(host, memtide)?;
    let b0 = b.report()?;
    t.mark("b: agent ready");
    accounted("before the move")?;
    let start = Instant::now();
    let out = host.check(
        &format!("{memtide} vm rebalance run b 512M --wait 120 --api-sock {SOCK} 2>&1"),
        Duration::from_secs(180),
    )?;
    say(&format!(
        "rebalance 512 MiB run -> b: {:.2} s: {:?}",
        start.elapsed().as_secs_f64(),
        out.lines
    ));
    t.mark("512 MiB moved A -> b");
    let (boot_a, total_a) = vm_sizes(host, memtide, "run")?;
    let (boot_b, total_b) = vm_sizes(host, memtide, "b")?;
    assert_eq!(total_a - boot_a, 0, "A gave all 512 MiB");
    // b's guest plugs on its own time after the request; wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut plugged_b = total_b - boot_b;
    while plugged_b < 512 << 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let (b0, b1) = vm_sizes(host, memtide, "b")?;
        plugged_b = b1 - b0;
    }
    assert_eq!(plugged_b, 512 << 20, "b plugged 512 MiB");
    // b's guest has the memory: MemTotal grew by 512 MiB, all of it ZONE_MOVABLE, and a
    // pattern the agent writes there reads back (user pages go to ZONE_MOVABLE first).
    let rb = report_when(
        &mut b,
        b0.mem_total_kib + 512 * MIB_KB,
        Duration::from_secs(60),
    )?;
    assert_eq!(
        rb.mem_total_kib - b0.mem_total_kib,
        512 * MIB_KB,
        "b's MemTotal grew by 512 MiB"
    );
    assert_eq!(
        movable_kib(&rb) - movable_kib(&b0),
        512 * MIB_KB,
        "b's new memory is movable"
    );
    assert_eq!(b.fill(128)?, 128);
    let filled = b.report()?;
    let used_movable = filled.zone(0, "Movable").map_or(0, |z| z.managed - z.free);
    assert!(
        used_movable >= 96 * 256,
        "b's pattern is in the memory it got: {used_movable} Movable pages in use"
    );
    assert_eq!(b.verify()?, 128, "b's pattern in its new memory is intact");
    t.mark("b: 128 MiB pattern verified in the moved memory");
    assert_eq!(guest.verify()?, 64, "A's pattern intact after the unplug");
    assert_eq!(guest.free()?, 64);
    let r = report_when(guest, m0, Duration::from_secs(30))?;
    assert_eq!(r.mem_total_kib, m0, "A back to its boot RAM");
    accounted("after the move")?;
    api_vm::delete(host, memtide, SOCK, "b")?;
    assert_eq!(
        b.wait_exit(Duration::from_secs(30))?,
        0,
        "b's console ends with b"
    );
    accounted("b deleted")?;
    Ok(())
}

/// A shrink the guest cannot complete (its plugged memory holds data that does not fit in
/// boot RAM) ends after the wait with what it reached, and the CLI says so; once the guest
/// frees its memory the same resize completes.
fn shrink_in_use_is_partial(
    host: &KvmHost,
    memtide: &str,
    guest: &mut memtide_testbed::Guest,
    m0: u64,
    t: &mut Timeline,
) -> Result<()> {
    let out = resize(host, memtide, "512M")?;
    assert!(!out.contains(UNFINISHED), "{out}");
    let r = report_when(guest, m0 + 256 * MIB_KB, Duration::from_secs(60))?;
    assert_eq!(r.mem_total_kib - m0, 256 * MIB_KB);
    // About 100 MiB of boot RAM are free: 224 MiB of data cannot all leave the plugged part.
    assert_eq!(guest.fill(224)?, 224);
    t.mark("A: 256 MiB plugged, 224 MiB in use");
    let out = resize_waiting(host, memtide, "256M", 15)?;
    t.mark("shrink in use: wait over");
    assert!(
        out.contains(UNFINISHED),
        "the CLI says the shrink is partial: {out}"
    );
    let (boot, total) = vm_sizes(host, memtide, "run")?;
    assert!(
        total > boot,
        "some memory stays plugged: {total} of boot {boot}"
    );
    assert_eq!(guest.verify()?, 224, "the pattern survived the attempt");
    assert_eq!(guest.free()?, 224);
    // The same request again re-announces the size; now the guest can give it all.
    let out = resize(host, memtide, "256M")?;
    assert!(!out.contains(UNFINISHED), "{out}");
    let r = report_when(guest, m0, Duration::from_secs(60))?;
    assert_eq!(r.mem_total_kib, m0);
    t.mark("shrink completed after the free");
    Ok(())
}

/// A host that dies mid-test (not a result) runs the test again once on a fresh host.
#[test]
fn guest_grows_to_1g_and_back_through_virtio_mem() {
    memtide_testbed::rerun_on_host_death("hotplug", |_| {
        guest_grows_to_1g_and_back_through_virtio_mem_on_a_fresh_host()
    });
}

fn guest_grows_to_1g_and_back_through_virtio_mem_on_a_fresh_host() {
    let mut t = Timeline::new("hotplug");
    let memtide_local = memtide_binary();
    let image = GuestImage::ensure().expect("guest image");
    let cfg = HostConfig {
        nodes_mib: vec![1536, 1536],
        image: Some(image),
        extra_binaries: vec![memtide_local],
        ..HostConfig::default()
    };
    let (_sel, host) = KvmHost::start(&cfg).expect("a KVM host");
    t.mark("host up");
    let memtide = host.binary("memtide").expect("memtide in the host");
    let argv = run_argv(
        &host,
        &memtide,
        &[
            "--vcpus",
            "1",
            "--numa",
            "guest_numa_id=0,cpus=0,memory=256M,host_numa_id=0,hotplug_size=1G",
            "--serve-sock",
            SOCK,
        ],
    );
    let mut guest = host
        .boot_guest("grow", AGENT_TIMEOUT, |_| {
            // A dead boot may leave its socket behind.
            let _ = host.run(&format!("rm -f {SOCK}"), Duration::from_secs(10));
            argv.clone()
        })
        .expect("guest boots");
    t.mark("agent ready");
    let r0 = guest.report().expect("report");
    let (m0, mov0) = (r0.mem_total_kib, movable_kib(&r0));
    let free0 = pool_free_pages(&host, &memtide).expect("pool");
    say(&format!(
        "boot: MemTotal {m0} kB, Movable {mov0} kB, pool free {free0} pages"
    ));
    // The guest's virtio-mem driver found the device (DSDT) on node 0.
    let dmesg = guest
        .sh("ls /sys/bus/virtio/drivers/virtio_mem/")
        .expect("sysfs");
    assert!(
        dmesg.iter().any(|l| l.contains("virtio")),
        "virtio_mem bound a device: {dmesg:?}"
    );

    let out = resize(&host, &memtide, "1G").expect("grow");
    t.mark("grown to 1 GiB");
    assert!(!out.contains(UNFINISHED), "{out}");
    let r1 = report_when(&mut guest, m0 + 768 * MIB_KB, Duration::from_secs(60)).expect("report");
    say(&format!(
        "grown: MemTotal {} kB, Movable {} kB, Movable blocks online {}",
        r1.mem_total_kib,
        movable_kib(&r1),
        r1.online_blocks_in("Movable")
    ));
    assert_eq!(
        r1.mem_total_kib - m0,
        768 * MIB_KB,
        "MemTotal grew by 768 MiB"
    );
    assert_eq!(
        movable_kib(&r1) - mov0,
        768 * MIB_KB,
        "all of it is ZONE_MOVABLE"
    );
    assert_eq!(
        r1.online_blocks_in("Movable"),
        6,
        "six 128 MiB blocks online movable"
    );
    let free1 = pool_free_pages(&host, &memtide).expect("pool");
    assert_eq!(free0 - free1, 768 * 256, "the pool gave exactly 768 MiB");
    // The new memory works: user pages go to ZONE_MOVABLE first, so a 128 MiB pattern lands
    // in plugged memory (first touches are slow under the emulated host: kept small).
    assert_eq!(guest.fill(128).expect("fill"), 128);
    let filled = guest.report().expect("report");
    let used_movable = filled.zone(0, "Movable").map_or(0, |z| z.managed - z.free);
    say(&format!("after fill: {used_movable} Movable pages in use"));
    assert!(
        used_movable >= 96 * 256,
        "the pattern is in plugged memory: {used_movable} Movable pages in use"
    );
    assert_eq!(guest.verify().expect("verify"), 128);
    // The host backs it with transparent huge pages (the emulated host sets shmem_enabled
    // to advise; memtide maps memfd ranges 2 MiB-aligned with MADV_HUGEPAGE).
    let thp = host
        .check(
            "p=$(grep -l '^memtide$' /proc/[0-9]*/comm | head -n 1); \
             awk '/^ShmemPmdMapped:/ {print $2}' \"${p%/comm}/smaps_rollup\"",
            Duration::from_secs(30),
        )
        .expect("smaps_rollup")
        .lines
        .last()
        .and_then(|l| l.trim().parse::<u64>().ok())
        .expect("ShmemPmdMapped");
    say(&format!(
        "memtide maps {thp} kB of guest memory with huge pages"
    ));
    assert!(
        thp >= 64 * MIB_KB,
        "most of the 128 MiB pattern sits in 2 MiB pages: {thp} kB"
    );
    assert_eq!(guest.free().expect("free"), 128);
    t.mark("128 MiB filled and verified in plugged memory");

    let out = resize(&host, &memtide, "256M").expect("shrink");
    t.mark("shrunk to 256 MiB");
    assert!(!out.contains(UNFINISHED), "{out}");
    let r2 = report_when(&mut guest, m0, Duration::from_secs(60)).expect("report");
    say(&format!(
        "shrunk: MemTotal {} kB, Movable {} kB",
        r2.mem_total_kib,
        movable_kib(&r2)
    ));
    assert_eq!(r2.mem_total_kib, m0, "MemTotal back to boot");
    assert_eq!(movable_kib(&r2), mov0, "ZONE_MOVABLE back to boot");
    assert_eq!(
        pool_free_pages(&host, &memtide).expect("pool"),
        free0,
        "every plugged page back in the pool"
    );
    rebalance_a_to_b(&host, &memtide, &mut guest, m0, &mut t).expect("rebalance A -> b");
    shrink_in_use_is_partial(&host, &memtide, &mut guest, m0, &mut t).expect("partial shrink");
    assert_eq!(
        pool_free_pages(&host, &memtide).expect("pool"),
        free0,
        "every page back in the pool"
    );
    assert_eq!(
        guest.poweroff(Duration::from_secs(60)).expect("poweroff"),
        0,
        "memtide exits 0 after the guest's poweroff"
    );
    t.mark("powered off");
}
