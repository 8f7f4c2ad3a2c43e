//! virtio-balloon free page reporting and deflate on OOM on real Linux guests (issue 7): one
//! emulated host, two `memtide run` guests of 512 MiB with their REST APIs on sockets:
//! `fpr` offers free page reporting, `oom` offers deflate on OOM (and no reporting, so it is
//! the control of the first part).
//!
//! - Free page reporting: once the boot-time reports have settled, both agents fill 256 MiB
//!   and free it. Within 30 s memtide's resident shared memory (RssShmem) of `fpr` drops by at
//!   least 192 MiB and its balloon counts at least 192 MiB more reported; the control's stays
//!   within 32 MiB over at least as long, and it reports nothing.
//! - Deflate on OOM: `oom`'s balloon inflates to 320 MiB, which leaves MemTotal as it was (the
//!   driver counts ballooned pages as used with the feature) and the guest about 100 MiB free.
//!   The agent then fills 64 MiB more than the guest has free: the fill completes only because
//!   the driver's OOM notifier deflates, the pattern verifies, the guest killed nothing, and
//!   the balloon's actual size (and the device's page count with it) shrank by at least
//!   48 MiB while the host's target stayed.
//!
//! Guests are booted with the dead-boot policy (`KvmHost::boot_guest`); wrong results are
//! never retried.

#[allow(dead_code)]
mod common;

use common::balloon::{flag, memtide_pid, num, shmem_of, BalloonCli, MIB};
use common::{memtide_binary, run_argv};
use memtide_testbed::protocol::Record;
use memtide_testbed::{say, Guest, GuestImage, HostConfig, KvmHost, Timeline};
use std::time::{Duration, Instant};

const AGENT_TIMEOUT: Duration = Duration::from_secs(150);
/// Each guest's RAM.
const GUEST_MIB: u64 = 512;
/// What the agents fill and free in the reporting part.
const FILL_MIB: u64 = 256;
/// How much of the freed memory must come back to the host (and be counted as reported).
const REPORTED_MIN_MIB: u64 = 192;
/// How long the host may take to get it back (Linux reports in passes 2 s apart).
const REPORT_WAIT: Duration = Duration::from_secs(30);
/// The least time the control is watched after its free.
const CONTROL_WAIT: Duration = Duration::from_secs(8);
/// How much the control's RssShmem may drop without free page reporting.
const CONTROL_SLACK_MIB: u64 = 32;
/// The balloon of the deflate-on-OOM part.
const BALLOON_MIB: u64 = 320;
/// How much more than the guest has free the agent fills under the inflated balloon.
const OVER_MIB: u64 = 64;
/// The least the balloon must give back for that fill (the rest: the guest's last free pages
/// below the watermarks, reclaimable caches).
const DEFLATED_MIN_MIB: u64 = 48;
/// Time for the fill that drives the guest into its OOM path (one notifier call gives back
/// 1 MiB).
const OOM_FILL_TIMEOUT: Duration = Duration::from_secs(300);

/// Boots a `memtide run` guest of [`GUEST_MIB`] serving its API on `cli`'s socket, with the
/// balloon flag `feature`.
fn boot(host: &KvmHost, memtide: &str, label: &str, cli: &BalloonCli, feature: &str) -> Guest {
    let memory = format!("{GUEST_MIB}M");
    let argv = run_argv(
        host,
        memtide,
        &[
            "--vcpus",
            "1",
            "--memory",
            &memory,
            "--serve-sock",
            cli.sock(),
            feature,
        ],
    );
    host.boot_guest(label, AGENT_TIMEOUT, |_| {
        let _ = host.run(&format!("rm -f {}", cli.sock()), Duration::from_secs(10));
        argv.clone()
    })
    .unwrap_or_else(|e| panic!("guest {label} boots: {e}"))
}

/// A counter of the balloon's JSON.
fn counter(b: &str, name: &str) -> u64 {
    num(b, name).unwrap_or_else(|| panic!("no counter {name}: {b}"))
}

/// Waits until a reporting pass adds nothing (Linux reports the boot-time free memory in
/// passes 2 s apart); returns the counters then. Gives up after 60 s, saying so: the bounds
/// later still hold for what the fill and free alone must cause.
fn settle_reports(host: &KvmHost, cli: &BalloonCli) -> String {
    let start = Instant::now();
    let mut last = cli.show(host).expect("balloon");
    loop {
        std::thread::sleep(Duration::from_secs(5));
        let b = cli.show(host).expect("balloon");
        let settled = counter(&b, "reported_bytes") == counter(&last, "reported_bytes");
        if settled || start.elapsed() > Duration::from_secs(60) {
            say(&format!(
                "fpr: boot-time reports {} after {:.1} s: {} reports, {} MiB",
                if settled { "settled" } else { "still running" },
                start.elapsed().as_secs_f64(),
                counter(&b, "reports"),
                counter(&b, "reported_bytes") / MIB
            ));
            return b;
        }
        last = b;
    }
}

/// A host that dies mid-test (not a result) runs the test again once on a fresh host.
#[test]
fn free_page_reporting_gives_freed_memory_back_and_deflate_on_oom_saves_the_guest() {
    memtide_testbed::rerun_on_host_death("balloon_reporting", |_| {
        free_page_reporting_gives_freed_memory_back_and_deflate_on_oom_saves_the_guest_on_a_fresh_host()
    });
}

fn free_page_reporting_gives_freed_memory_back_and_deflate_on_oom_saves_the_guest_on_a_fresh_host()
{
    let mut t = Timeline::new("balloon-reporting");
    let image = GuestImage::ensure().expect("guest image");
    let cfg = HostConfig {
        nodes_mib: vec![2048],
        image: Some(image),
        extra_binaries: vec![memtide_binary()],
        ..HostConfig::default()
    };
    let (_sel, host) = KvmHost::start(&cfg).expect("a KVM host");
    t.mark("host up");
    let memtide = host.binary("memtide").expect("memtide in the host");
    let fpr_cli = BalloonCli::new(&memtide, "/tmp/fpr.sock");
    let oom_cli = BalloonCli::new(&memtide, "/tmp/oom.sock");
    let mut fpr = boot(
        &host,
        &memtide,
        "fpr",
        &fpr_cli,
        "--balloon-free-page-reporting",
    );
    t.mark("fpr agent ready");
    let mut oom = boot(&host, &memtide, "oom", &oom_cli, "--balloon-deflate-on-oom");
    t.mark("oom agent ready");
    let fpr_pid = memtide_pid(&host, fpr.vmm_pid().expect("pgid")).expect("fpr's memtide");
    let oom_pid = memtide_pid(&host, oom.vmm_pid().expect("pgid")).expect("oom's memtide");

    // Each driver runs its device and accepted the feature offered, and only that one.
    for (cli, reporting) in [(&fpr_cli, true), (&oom_cli, false)] {
        let b = cli
            .until(&host, Duration::from_secs(30), |b| {
                flag(b, "active") == Some(true)
            })
            .expect("balloon");
        assert_eq!(flag(&b, "active"), Some(true), "{b}");
        assert_eq!(flag(&b, "free_page_reporting"), Some(reporting), "{b}");
        assert_eq!(flag(&b, "deflate_on_oom"), Some(!reporting), "{b}");
    }

    // --- Free page reporting, with `oom` as the control. ---
    let b = settle_reports(&host, &fpr_cli);
    let (reported0, reports0) = (counter(&b, "reported_bytes"), counter(&b, "reports"));
    let (a0, c0) = (
        shmem_of(&host, fpr_pid).expect("rss"),
        shmem_of(&host, oom_pid).expect("rss"),
    );
    // Both fills at once (each guest has a vCPU of the host's two).
    std::thread::scope(|s| {
        let control = s.spawn(|| oom.fill(FILL_MIB));
        assert_eq!(fpr.fill(FILL_MIB).expect("fill"), FILL_MIB);
        let filled = control.join().expect("control fill thread");
        assert_eq!(filled.expect("fill"), FILL_MIB);
    });
    let (a1, c1) = (
        shmem_of(&host, fpr_pid).expect("rss"),
        shmem_of(&host, oom_pid).expect("rss"),
    );
    say(&format!(
        "RssShmem after a {FILL_MIB} MiB fill: fpr {} -> {} MiB, control {} -> {} MiB",
        a0 / MIB,
        a1 / MIB,
        c0 / MIB,
        c1 / MIB
    ));
    // The settled reports had freed the guest's free memory on the host, so the fill had to
    // fault it back in.
    assert!(
        a1 >= a0 + REPORTED_MIN_MIB * MIB,
        "fpr's fill faulted host memory back in: {} -> {} MiB",
        a0 / MIB,
        a1 / MIB
    );
    t.mark("filled");
    assert_eq!(fpr.free().expect("free"), FILL_MIB);
    let freed_at = Instant::now();
    assert_eq!(oom.free().expect("free"), FILL_MIB);
    let control_freed_at = Instant::now();
    let mut a2 = a1;
    while freed_at.elapsed() < REPORT_WAIT {
        a2 = shmem_of(&host, fpr_pid).expect("rss");
        if a1.saturating_sub(a2) >= REPORTED_MIN_MIB * MIB {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let took = freed_at.elapsed();
    say(&format!(
        "fpr: RssShmem {} -> {} MiB (-{} MiB) {:.1} s after the free",
        a1 / MIB,
        a2 / MIB,
        a1.saturating_sub(a2) / MIB,
        took.as_secs_f64()
    ));
    assert!(
        a1.saturating_sub(a2) >= REPORTED_MIN_MIB * MIB,
        "the host got at least {REPORTED_MIN_MIB} of the {FILL_MIB} freed MiB back within \
         {REPORT_WAIT:?}: RssShmem {} -> {} MiB",
        a1 / MIB,
        a2 / MIB
    );
    t.mark("reported memory freed on the host");
    let b = fpr_cli.show(&host).expect("balloon");
    let (reported1, reports1) = (counter(&b, "reported_bytes"), counter(&b, "reports"));
    say(&format!(
        "fpr: {} reports, {} MiB reported since the fill",
        reports1 - reports0,
        (reported1 - reported0) / MIB
    ));
    assert!(
        reported1 - reported0 >= REPORTED_MIN_MIB * MIB && reports1 > reports0,
        "the balloon counts the reported memory: {b}"
    );
    assert_eq!(counter(&b, "discard_errors"), 0, "{b}");
    assert_eq!(num(&b, "ballooned_bytes"), Some(0), "nothing inflated: {b}");

    // The control, watched at least as long: no reporting, no drop.
    let watch = took.max(CONTROL_WAIT);
    if let Some(rest) = watch.checked_sub(control_freed_at.elapsed()) {
        std::thread::sleep(rest);
    }
    let c2 = shmem_of(&host, oom_pid).expect("rss");
    say(&format!(
        "control: RssShmem {} -> {} MiB {:.1} s after its free",
        c1 / MIB,
        c2 / MIB,
        control_freed_at.elapsed().as_secs_f64()
    ));
    assert!(
        c1.saturating_sub(c2) < CONTROL_SLACK_MIB * MIB,
        "without free page reporting the freed memory stays with the guest: {} -> {} MiB",
        c1 / MIB,
        c2 / MIB
    );
    let b = oom_cli.show(&host).expect("balloon");
    assert_eq!(counter(&b, "reports"), 0, "{b}");
    assert_eq!(counter(&b, "reported_bytes"), 0, "{b}");
    let _ = fpr.poweroff(Duration::from_secs(60));
    drop(fpr);
    t.mark("control checked");

    // --- Deflate on OOM. ---
    let r0 = oom.report().expect("report");
    let start = Instant::now();
    oom_cli
        .run(&host, &format!("--balloon-size {BALLOON_MIB}M"))
        .expect("inflate");
    let b = oom_cli
        .until(&host, Duration::from_secs(120), |b| {
            num(b, "actual_bytes") == Some(BALLOON_MIB * MIB)
        })
        .expect("balloon");
    say(&format!(
        "oom: inflated {BALLOON_MIB} MiB in {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    assert_eq!(num(&b, "actual_bytes"), Some(BALLOON_MIB * MIB), "{b}");
    assert_eq!(num(&b, "ballooned_bytes"), Some(BALLOON_MIB * MIB), "{b}");
    let deflated0 = counter(&b, "deflated_pages");
    t.mark("inflated");
    let r1 = oom.report().expect("report");
    say(&format!(
        "oom: MemTotal {} -> {} kB, MemFree {} -> {} kB",
        r0.mem_total_kib, r1.mem_total_kib, r0.mem_free_kib, r1.mem_free_kib
    ));
    assert_eq!(
        r1.mem_total_kib, r0.mem_total_kib,
        "with deflate on OOM ballooned pages stay in MemTotal"
    );
    assert!(
        r1.mem_free_kib + (BALLOON_MIB - 16) * 1024 <= r0.mem_free_kib,
        "the balloon took the guest's free memory: MemFree {} -> {} kB",
        r0.mem_free_kib,
        r1.mem_free_kib
    );

    let over = r1.mem_free_kib / 1024 + OVER_MIB;
    let start = Instant::now();
    let recs = oom
        .command(&format!("fill {over}"), OOM_FILL_TIMEOUT)
        .expect("the guest survives a fill beyond its free memory");
    let filled = recs.iter().find_map(|r| match r {
        Record::Filled { total_mib, .. } => Some(*total_mib),
        _ => None,
    });
    say(&format!(
        "oom: filled {over} MiB ({OVER_MIB} MiB more than free) in {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    assert_eq!(filled, Some(over), "{recs:?}");
    t.mark("filled beyond free memory");
    assert_eq!(oom.verify().expect("pattern intact"), over);
    let vmstat = oom.sh("grep oom_kill /proc/vmstat").expect("vmstat");
    assert!(
        vmstat.iter().any(|l| l.trim() == "oom_kill 0"),
        "the guest killed nothing: {vmstat:?}"
    );
    // The driver writes `actual` after the device acknowledged the deflated pages.
    let b = oom_cli
        .until(&host, Duration::from_secs(30), |b| {
            num(b, "actual_bytes") == num(b, "ballooned_bytes")
        })
        .expect("balloon");
    let actual = counter(&b, "actual_bytes");
    let shrunk = (BALLOON_MIB * MIB).saturating_sub(actual);
    say(&format!(
        "oom: balloon {BALLOON_MIB} -> {} MiB actual, {} pages deflated",
        actual / MIB,
        counter(&b, "deflated_pages") - deflated0
    ));
    assert!(
        shrunk >= DEFLATED_MIN_MIB * MIB,
        "the balloon gave at least {DEFLATED_MIN_MIB} MiB back: {b}"
    );
    assert_eq!(num(&b, "ballooned_bytes"), Some(actual), "{b}");
    assert!(
        (counter(&b, "deflated_pages") - deflated0) * 4096 >= shrunk,
        "the device counted the deflated pages: {b}"
    );
    assert_eq!(
        num(&b, "target_bytes"),
        Some(BALLOON_MIB * MIB),
        "the host's target stands: {b}"
    );
    assert_eq!(counter(&b, "reclaim_errors"), 0, "{b}");
    let r2 = oom.report().expect("the agent still answers");
    assert_eq!(r2.mem_total_kib, r0.mem_total_kib, "MemTotal unchanged");
    assert_eq!(oom.free().expect("free"), over);
    t.mark("deflated on OOM");
    let _ = oom.poweroff(Duration::from_secs(60));
}
