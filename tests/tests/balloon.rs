//! virtio-balloon on a real Linux guest (issue 7): `memtide run` with 768 MiB of boot RAM, a
//! 512 MiB hot-pluggable range of which 256 MiB is plugged (virtio-mem), and the REST API on a
//! socket inside the emulated host. The guest touches most of its memory (agent fill, then
//! free); inflating by 256 MiB through `memtide vm balloon` lowers the guest's MemTotal by 256
//! MiB and memtide's resident shared memory (the memfd pages behind guest RAM) by about as
//! much. The guest takes balloon pages from its ZONE_MOVABLE first, which is the plugged
//! memory: those pages are discarded too (every page the guest gave is ballooned on the host).
//! The guest's statistics arrive and follow an agent allocation; deflating restores MemTotal.
//!
//! The guest is booted with the dead-boot policy (`KvmHost::boot_guest`); wrong results are
//! never retried.

#[allow(dead_code)]
mod common;

use common::balloon::{memtide_shmem, num, BalloonCli, MIB};
use common::{memtide_binary, run_argv};
use memtide_testbed::{say, GuestImage, HostConfig, KvmHost, Result, Timeline};
use std::time::{Duration, Instant};

const AGENT_TIMEOUT: Duration = Duration::from_secs(150);
const SOCK: &str = "/tmp/run.sock";

/// Polls the agent until MemTotal is `want_kib`; returns the last MemTotal.
fn mem_total_when(
    guest: &mut memtide_testbed::Guest,
    want_kib: u64,
    timeout: Duration,
) -> Result<u64> {
    let start = Instant::now();
    loop {
        let m = guest.report()?.mem_total_kib;
        if m == want_kib || start.elapsed() > timeout {
            return Ok(m);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A host that dies mid-test (not a result) runs the test again once on a fresh host.
#[test]
fn balloon_inflates_gives_memory_back_and_deflates() {
    memtide_testbed::rerun_on_host_death("balloon", |_| {
        balloon_inflates_gives_memory_back_and_deflates_on_a_fresh_host()
    });
}

fn balloon_inflates_gives_memory_back_and_deflates_on_a_fresh_host() {
    let mut t = Timeline::new("balloon");
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
    let cli = BalloonCli::new(&memtide, SOCK);
    let argv = run_argv(
        &host,
        &memtide,
        &[
            "--vcpus",
            "1",
            "--numa",
            "guest_numa_id=0,cpus=0,memory=768M,hotplug_size=512M",
            "--serve-sock",
            SOCK,
        ],
    );
    let mut guest = host
        .boot_guest("balloon", AGENT_TIMEOUT, |_| {
            let _ = host.run(&format!("rm -f {SOCK}"), Duration::from_secs(10));
            argv.clone()
        })
        .expect("guest boots");
    t.mark("agent ready");
    let boot_kib = guest.report().expect("report").mem_total_kib;
    let out = host
        .check(
            &format!("{memtide} vm resize run 1024M --wait 120 --api-sock {SOCK} 2>&1"),
            Duration::from_secs(180),
        )
        .expect("plug 256 MiB");
    say(&format!("plugged 256 MiB: {:?}", out.lines));
    let plugged_kib =
        mem_total_when(&mut guest, boot_kib + 256 * 1024, Duration::from_secs(60)).expect("report");
    assert_eq!(
        plugged_kib,
        boot_kib + 256 * 1024,
        "MemTotal grew by 256 MiB"
    );
    t.mark("256 MiB plugged");
    let bound = guest
        .sh("ls /sys/bus/virtio/drivers/virtio_balloon/")
        .expect("sysfs");
    assert!(
        bound.iter().any(|l| l.contains("virtio")),
        "virtio_balloon bound a device: {bound:?}"
    );

    // Statistics arrive (every 2 s), count the plugged memory, and follow an allocation of
    // the agent.
    let b = cli
        .until(&host, Duration::from_secs(30), |b| {
            num(b, "free-memory").is_some() && num(b, "total-memory") == Some(plugged_kib * 1024)
        })
        .expect("balloon");
    let free0 = num(&b, "free-memory").expect("stats arrived");
    assert_eq!(guest.fill(128).expect("fill"), 128);
    let b = cli
        .until(&host, Duration::from_secs(30), |b| {
            num(b, "free-memory").is_some_and(|f| f + 96 * MIB < free0)
        })
        .expect("balloon");
    let free1 = num(&b, "free-memory").unwrap_or(free0);
    say(&format!(
        "stats: free-memory {} MiB -> {} MiB after a 128 MiB fill",
        free0 / MIB,
        free1 / MIB
    ));
    assert!(free1 + 96 * MIB < free0, "stats follow the fill: {b}");
    assert_eq!(guest.free().expect("free"), 128);
    t.mark("stats follow the agent");

    // Touch most of the guest's memory, then give it back to the guest's free lists.
    assert_eq!(guest.fill(560).expect("fill"), 560);
    assert_eq!(guest.free().expect("free"), 560);
    let r0 = guest.report().expect("report");
    let m0 = r0.mem_total_kib;
    let movable_free0 = r0.zone(0, "Movable").map_or(0, |z| z.free);
    let rss0 = memtide_shmem(&host).expect("rss");
    say(&format!(
        "before: MemTotal {m0} kB, memtide RssShmem {} MiB",
        rss0 / MIB
    ));

    let start = Instant::now();
    cli.run(&host, "--balloon-size 256M").expect("inflate");
    let b = cli
        .until(&host, Duration::from_secs(60), |b| {
            num(b, "actual_bytes") == Some(256 * MIB)
        })
        .expect("balloon");
    say(&format!(
        "inflated 256 MiB in {:.2} s",
        start.elapsed().as_secs_f64()
    ));
    assert_eq!(num(&b, "actual_bytes"), Some(256 * MIB), "{b}");
    // Every page the guest gave was discarded on the host, plugged memory's too.
    assert_eq!(num(&b, "ballooned_bytes"), Some(256 * MIB), "{b}");
    assert_eq!(num(&b, "invalid_pfns"), Some(0), "no page refused: {b}");
    t.mark("inflated");
    let movable_free1 = guest
        .report()
        .expect("report")
        .zone(0, "Movable")
        .map_or(0, |z| z.free);
    say(&format!(
        "guest ZONE_MOVABLE (plugged memory) free pages {movable_free0} -> {movable_free1}"
    ));
    assert!(
        movable_free0.saturating_sub(movable_free1) >= 64 * 256,
        "the balloon took at least 64 MiB of plugged memory: free {movable_free0} -> \
         {movable_free1} pages"
    );
    let m1 = mem_total_when(&mut guest, m0 - 256 * 1024, Duration::from_secs(30)).expect("report");
    assert_eq!(m0 - m1, 256 * 1024, "MemTotal dropped by 256 MiB");
    let rss1 = memtide_shmem(&host).expect("rss");
    say(&format!(
        "inflated: MemTotal {m1} kB, memtide RssShmem {} MiB (-{} MiB)",
        rss1 / MIB,
        rss0.saturating_sub(rss1) / MIB
    ));
    assert!(
        rss0.saturating_sub(rss1) >= 192 * MIB,
        "the host got most of the 256 MiB back: RssShmem {} -> {} MiB",
        rss0 / MIB,
        rss1 / MIB
    );

    // The guest size form deflates back to all of its RAM.
    cli.run(&host, "--guest-size 768M").expect("deflate");
    let b = cli
        .until(&host, Duration::from_secs(60), |b| {
            num(b, "actual_bytes") == Some(0)
        })
        .expect("balloon");
    assert_eq!(num(&b, "ballooned_bytes"), Some(0), "{b}");
    let m2 = mem_total_when(&mut guest, m0, Duration::from_secs(30)).expect("report");
    assert_eq!(m2, m0, "MemTotal restored");
    assert_eq!(guest.fill(128).expect("fill after deflate"), 128);
    assert_eq!(guest.verify().expect("verify"), 128);
    t.mark("deflated");
    let _ = guest.poweroff(Duration::from_secs(60));
}
