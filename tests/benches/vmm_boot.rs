//! Boot benchmark (issue 4): time from VMM process start to the guest agent's first line, for
//! memtide and for QEMU (`-M microvm -accel kvm`) booting the same guest image (1 vCPU,
//! 512 MiB) on the same KVM host, and each VMM's own RSS beyond guest memory (resident pages
//! outside the guest-memory memfd mappings, from /proc/PID/smaps: both VMMs keep guest RAM in
//! a memfd here, QEMU through memory-backend-memfd).
//! Targets: memtide boots faster than QEMU and uses under 10 MiB of its own memory.
//!
//! `cargo bench -p memtide-testbed --bench vmm_boot` (`MEMTIDE_BENCH_ROUNDS`, default 3).
//! Guest boots are timed alternately so drift of the machine's speed hits both alike.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{memtide_binary_with, run_argv};
use memtide_testbed::{say, GuestImage, HostConfig, KvmHost, QemuGuest};
use std::time::Duration;

/// RSS of the VMM process named `comm` in the host: `(total, own)` KiB, where own is every
/// resident page not in a guest-memory memfd mapping (binary, libraries, heap, stacks),
/// summed from /proc/PID/smaps.
fn own_rss_kib(host: &KvmHost, comm: &str) -> Option<(u64, u64)> {
    let script = format!(
        "awk '/^[0-9a-f]+-[0-9a-f]+ /{{m=($6 ~ /^\\/memfd:/)}} /^Rss:/{{if (m) g+=$2; else o+=$2}} \
         END{{print g+0, o+0}}' /proc/$(pidof {comm} | cut -d' ' -f1)/smaps"
    );
    let out = host.run(&script, Duration::from_secs(20)).ok()?;
    let mut nums = out
        .lines
        .last()?
        .split_whitespace()
        .map(|w| w.parse::<u64>().ok());
    let guest = nums.next()??;
    let own = nums.next()??;
    Some((guest + own, own))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("MEMTIDE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let memtide_local = memtide_binary_with(true);
    let image = GuestImage::ensure().expect("guest image");
    let cfg = HostConfig {
        nodes_mib: vec![1536, 1536],
        image: Some(image),
        extra_binaries: vec![memtide_local],
        ..HostConfig::default()
    };
    let (_sel, host) = KvmHost::start(&cfg).expect("a KVM host");
    let memtide = host.binary("memtide").expect("memtide in the host");
    let memtide_argv = run_argv(&host, &memtide, &["--vcpus", "1", "--memory", "512M"]);
    let qemu = QemuGuest {
        extra: vec![
            "-object".into(),
            "memory-backend-memfd,id=mem0,size=512M".into(),
            "-machine".into(),
            "memory-backend=mem0".into(),
        ],
        ..QemuGuest::default()
    };
    let qemu_argv = qemu.argv(&host).expect("qemu argv");
    let qemu_comm = "qemu-system-x86_64";
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut own: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, (name, argv, comm)) in [
            ("memtide", &memtide_argv, "memtide"),
            ("qemu", &qemu_argv, qemu_comm),
        ]
        .into_iter()
        .enumerate()
        {
            let label = format!("{name}-{round}");
            let mut guest = host
                .boot_guest(&label, Duration::from_secs(120), |_| argv.clone())
                .expect("guest boots");
            let secs = guest
                .agent_at()
                .map(|a| a.duration_since(guest.spawned_at()).as_secs_f64())
                .expect("agent line time");
            let rss = own_rss_kib(&host, comm);
            let uptime = guest
                .sh("cut -d' ' -f1 /proc/uptime")
                .ok()
                .and_then(|l| l.first().cloned())
                .unwrap_or_default();
            say(&format!(
                "bench {label}: process start -> agent line {secs:.2} s (guest kernel uptime then {uptime} s), RSS (total, own) {rss:?} KiB"
            ));
            times[i].push(secs);
            if let Some((_, o)) = rss {
                own[i].push(o as f64);
            }
            assert_eq!(
                guest.poweroff(Duration::from_secs(60)).expect("poweroff"),
                0
            );
        }
    }
    let names = ["memtide", "qemu microvm"];
    for i in 0..2 {
        let t = median(&mut times[i]);
        let o = if own[i].is_empty() {
            f64::NAN
        } else {
            median(&mut own[i]) / 1024.0
        };
        say(&format!(
            "bench result: {:<13} boot to agent line median {t:.2} s over {rounds} rounds, own RSS beyond guest memory {o:.1} MiB",
            names[i]
        ));
    }
    let (m, q) = (median(&mut times[0]), median(&mut times[1]));
    say(&format!(
        "bench result: memtide / qemu boot time ratio {:.2} ({})",
        m / q,
        if m < q {
            "memtide faster"
        } else {
            "memtide NOT faster"
        }
    ));
    if let KvmHost::Emulated(h) = host {
        let _ = h.shutdown();
    }
}
