//! 200 random resize and rebalance steps across three real Linux guests sharing one memtide
//! pool (issue 5 acceptance): `memtide serve` in the KVM host (half of each host node's memory
//! in ZONE_MOVABLE), VMs `a` and `c` on host node 0 and `b` on host node 1, each with 256 MiB
//! boot RAM and a 512 MiB hot-pluggable range, created through the API with their consoles on
//! sockets (`memtide vm console` attached, so their agents answer). The steps are REST calls
//! from outside through the host's forwarded port.
//!
//! Each step resizes one guest to 256 MiB + k × 128 MiB without waiting (so requests land
//! while the guests are still plugging or unplugging for earlier ones), or moves 128/256 MiB
//! from one guest to another. Growth the pool cannot back (HTTP 503) and moves a guest
//! cannot give (4xx) are refused and change nothing: valid outcomes too. Every 25 steps the test
//! waits for the guests to reach their requested sizes, then checks:
//! - the pool audit: the buddy allocator's invariants, no page with two owners, no page
//!   leaked (the pages the pool handed out are exactly the VMs' boot RAM and plugged blocks);
//! - every guest is running, its agent answers, and all the patterns it wrote are intact;
//! - every guest's MemTotal is its boot MemTotal plus what memtide says it plugged;
//!
//! and each guest writes 4 MiB more pattern (which may land in plugged memory and must be
//! migrated by later unplugs). At the end every guest shrinks to its boot RAM and the pool's
//! free pages are exactly what they were before the steps.
//!
//! The step sequence comes from a seed (printed; `MEMTIDE_RANDOM_SEED` replays one). Guests
//! are booted with the dead-boot policy; a wrong result is never retried.

#[allow(dead_code)]
mod common;

use common::{api_vm, memtide_binary};
use memtide_api::client::{Client, ClientError};
use memtide_api::hosted;
use memtide_api::model::{RebalanceBody, ResizeBody, Size};
use memtide_testbed::{say, Guest, GuestImage, HostConfig, KvmHost, Result, Timeline};
use memtide_vmm::control::{VmInfo, VmState};
use std::time::{Duration, Instant};

const SOCK: &str = "/tmp/random.sock";
/// The service's TCP port in the host (forwarded to loopback outside).
const PORT: u16 = 8095;
const STEPS: u32 = 200;
const SETTLE_EVERY: u32 = 25;
const MIB: u64 = 1 << 20;
const BOOT: u64 = 256 * MIB;
/// Largest plugged size a step asks for (three 128 MiB memory blocks).
const MAX_PLUGGED_BLOCKS: u64 = 3;
const IDS: [&str; 3] = ["a", "b", "c"];

/// xorshift64*: a small deterministic generator for the step sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every VM.
fn vms(c: &Client) -> Result<Vec<VmInfo>> {
    c.list_vms().map_err(hosted::api_error)
}

fn plugged(v: &VmInfo) -> u64 {
    v.nodes.iter().map(|n| n.plugged).sum()
}

fn requested(v: &VmInfo) -> u64 {
    v.nodes.iter().map(|n| n.requested).sum()
}

/// What became of the steps.
#[derive(Debug, Default)]
struct Tally {
    resized: u32,
    moved: u32,
    refused: u32,
}

/// One random step (see the module docs).
#[derive(Debug)]
enum Step {
    Resize {
        id: &'static str,
        size: u64,
    },
    Move {
        from: &'static str,
        to: &'static str,
        size: u64,
    },
}

impl Step {
    fn random(rng: &mut Rng) -> Step {
        if rng.below(100) < 65 {
            Step::Resize {
                id: IDS[rng.below(3) as usize],
                size: BOOT + rng.below(MAX_PLUGGED_BLOCKS + 1) * 128 * MIB,
            }
        } else {
            let from = rng.below(3) as usize;
            let to = (from + 1 + rng.below(2) as usize) % 3;
            Step::Move {
                from: IDS[from],
                to: IDS[to],
                size: (1 + rng.below(2)) * 128 * MIB,
            }
        }
    }
}

/// Runs one step through the API and judges it: success changed something; a refusal must
/// be a 4xx (bad for the VM's current state or limits) or a 503 (the pool cannot back the
/// growth) with a message; anything else is a failure.
fn step(c: &Client, n: u32, s: &Step, tally: &mut Tally) -> String {
    let r = match *s {
        Step::Resize { id, size } => c
            .resize(
                id,
                &ResizeBody {
                    size: Size(size),
                    node: None,
                    wait_secs: 0,
                },
            )
            .map(|r| format!("{} MiB plugged", plugged(&r.vm) / MIB)),
        Step::Move { from, to, size } => c
            .rebalance(&RebalanceBody {
                from: from.into(),
                to: to.into(),
                size: Size(size),
                from_node: None,
                to_node: None,
                wait_secs: 5,
            })
            .map(|m| format!("moved {} MiB", m.moved / MIB)),
    };
    match r {
        Ok(what) => {
            match s {
                Step::Resize { .. } => tally.resized += 1,
                Step::Move { .. } => tally.moved += 1,
            }
            what
        }
        Err(ClientError::Api { status, message })
            if (400..500).contains(&status) || status == 503 =>
        {
            assert!(!message.is_empty(), "step {n}: {s:?}: a refusal says why");
            tally.refused += 1;
            format!("refused ({status}): {message}")
        }
        Err(e) => panic!("step {n} failed: {s:?}: {e}"),
    }
}

/// Waits (at most `wait`) until every VM plugged what it requested; returns the VMs and
/// whether they settled.
fn settle(c: &Client, wait: Duration) -> Result<(Vec<VmInfo>, bool)> {
    let start = Instant::now();
    loop {
        let v = vms(c)?;
        let settled = v.iter().all(|x| plugged(x) == requested(x));
        if settled || start.elapsed() > wait {
            return Ok((v, settled));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What the service says of its VMs (state, exit reason) and its log's last lines, for a
/// failure message.
fn service_state(host: &KvmHost, c: &Client) -> String {
    let vms = match c.list_vms() {
        Ok(vms) => vms
            .iter()
            .map(|v| format!("{} {:?} exit {:?}", v.id, v.state, v.exit_reason))
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("cannot list VMs: {e}"),
    };
    let log = host
        .run("tail -n 30 /tmp/serve.log", Duration::from_secs(20))
        .map(|o| o.text())
        .unwrap_or_else(|e| format!("cannot read the service log: {e}"));
    format!("VMs: {vms}\nmemtide serve's log:\n{log}")
}

/// The checks of a settle point (see the module docs); `held` is each guest's pattern MiB.
fn check_point(
    c: &Client,
    guests: &mut [Guest],
    boot_kib: &[u64],
    held: &[u64],
    label: &str,
    wait: Duration,
) -> Result<()> {
    let (vms, settled) = settle(c, wait)?;
    let audit = c.pool_audit().map_err(hosted::api_error)?;
    assert!(
        audit.consistent,
        "{label}: pool audit: {:?}",
        audit.problems
    );
    let owned = audit.owned_pages;
    let sizes: Vec<String> = vms
        .iter()
        .map(|v| {
            format!(
                "{} {}+{}M (req {}M)",
                v.id,
                v.boot_memory / MIB,
                plugged(v) / MIB,
                requested(v) / MIB
            )
        })
        .collect();
    say(&format!(
        "{label}: {} ; pool audit consistent, {owned} pages owned{}",
        sizes.join(", "),
        if settled {
            ""
        } else {
            " ; NOT settled (a guest is still unplugging)"
        }
    ));
    for (i, id) in IDS.iter().enumerate() {
        let v = vms
            .iter()
            .find(|v| v.id == *id)
            .unwrap_or_else(|| panic!("{label}: VM {id} is gone"));
        if v.state == VmState::Stopped
            && v.exit_reason.as_deref() == Some("reset")
            && !memtide_testbed::Error::console_shows_guest_failure(&guests[i].console().tail())
        {
            memtide_testbed::Error::note_silent_guest_reset(id);
        }
        assert_eq!(
            v.state,
            VmState::Running,
            "{label}: {id} did not crash (exit reason {:?}; its console's last lines:\n{})",
            v.exit_reason,
            guests[i].console().tail()
        );
        assert_eq!(
            guests[i].verify()?,
            held[i],
            "{label}: {id}'s patterns are intact"
        );
        if plugged(v) == requested(v) {
            // The guest onlines a block right after its plug ACK and offlines it before
            // asking to unplug: once memtide's plugged size is steady, MemTotal follows.
            let want = boot_kib[i] + plugged(v) / 1024;
            let start = Instant::now();
            let mut got = guests[i].mem_total_kib()?;
            while got != want && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(500));
                got = guests[i].mem_total_kib()?;
            }
            assert_eq!(
                got,
                want,
                "{label}: {id}'s MemTotal is boot + plugged ({} MiB)",
                plugged(v) / MIB
            );
        }
    }
    Ok(())
}

/// A host that dies mid-test (not a result) runs the test again once on a fresh host.
#[test]
fn random_resizes_across_three_guests_keep_the_pool_exact() {
    memtide_testbed::rerun_on_host_death("resize_random", |_| {
        random_resizes_across_three_guests_keep_the_pool_exact_on_a_fresh_host()
    });
}

fn random_resizes_across_three_guests_keep_the_pool_exact_on_a_fresh_host() {
    let mut t = Timeline::new("resize_random");
    let seed = std::env::var("MEMTIDE_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    say(&format!(
        "seed {seed} (MEMTIDE_RANDOM_SEED={seed} replays this step sequence)"
    ));
    let mut rng = Rng(seed);
    let memtide_local = memtide_binary();
    let image = GuestImage::ensure().expect("guest image");
    let cfg = HostConfig {
        nodes_mib: vec![1536, 1536],
        image: Some(image),
        extra_binaries: vec![memtide_local],
        forward_ports: vec![PORT],
        ..HostConfig::default()
    };
    let (_sel, host) = KvmHost::start(&cfg).expect("a KVM host");
    t.mark("host up");
    let memtide = host.binary("memtide").expect("memtide in the host");
    let svc = hosted::start_serve(
        &host,
        &memtide,
        PORT,
        SOCK,
        "/tmp/serve.log",
        &["--movablecore", "50%"],
        Duration::from_secs(30),
    )
    .expect("memtide serve");
    let c = &svc.client;
    t.mark("service up");
    let mut guests = Vec::new();
    for (id, host_node) in [("a", 0), ("b", 1), ("c", 0)] {
        guests.push(
            api_vm::create_attached(
                &host,
                &memtide,
                SOCK,
                id,
                &format!(
                    "guest_numa_id=0,cpus=0,memory=256M,host_numa_id={host_node},hotplug_size=512M"
                ),
            )
            .unwrap_or_else(|e| panic!("{id} boots: {e}")),
        );
    }
    t.mark("a, b and c: agents ready");
    let mut boot_kib = [0u64; 3];
    let mut held = [0u64; 3];
    for (i, g) in guests.iter_mut().enumerate() {
        boot_kib[i] = g.mem_total_kib().expect("MemTotal");
        held[i] = g.fill(32).expect("fill");
    }
    let audit0 = c.pool_audit().expect("audit at boot");
    assert!(audit0.consistent, "{:?}", audit0.problems);
    assert_eq!(
        audit0.allocated_pages,
        3 * BOOT / 4096,
        "before any step the VMs hold their boot RAM only"
    );
    let free0 = c.pool().expect("pool").free_pages;
    t.mark("32 MiB pattern in each guest");

    let mut tally = Tally::default();
    let started = Instant::now();
    for n in 1..=STEPS {
        let s = Step::random(&mut rng);
        let what = step(c, n, &s, &mut tally);
        if n.is_multiple_of(10) {
            say(&format!("step {n}: {s:?}: {what}"));
        }
        if n.is_multiple_of(SETTLE_EVERY) {
            say(&format!(
                "steps up to {n}: {:.1} s",
                started.elapsed().as_secs_f64()
            ));
            check_point(
                c,
                &mut guests,
                &boot_kib,
                &held,
                &format!("after step {n}"),
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("checks: {e}\n{}", service_state(&host, c)));
            for (i, g) in guests.iter_mut().enumerate() {
                held[i] = g.fill(4).expect("fill");
            }
        }
    }
    t.mark("200 steps");
    say(&format!(
        "steps: {} resizes, {} moves, {} refused",
        tally.resized, tally.moved, tally.refused
    ));
    assert!(
        tally.resized + tally.moved > STEPS / 2,
        "most steps changed something: {tally:?}"
    );

    // Everyone back to boot RAM: every plugged page returns to the pool.
    for id in IDS {
        c.resize(
            id,
            &ResizeBody {
                size: Size(BOOT),
                node: None,
                wait_secs: 0,
            },
        )
        .expect("shrink to boot");
    }
    check_point(
        c,
        &mut guests,
        &boot_kib,
        &held,
        "all shrunk to boot",
        Duration::from_secs(240),
    )
    .expect("final checks");
    let audit = c.pool_audit().expect("audit");
    assert_eq!(
        (audit.allocated_pages, audit.owned_pages),
        (audit0.allocated_pages, audit0.allocated_pages),
        "the pool has every plugged page back"
    );
    assert_eq!(
        c.pool().expect("pool").free_pages,
        free0,
        "pool free pages as before"
    );
    t.mark("all back to boot RAM; pool exact");
    for id in IDS {
        api_vm::delete(&host, &memtide, SOCK, id).expect("delete");
    }
    for g in &mut guests {
        assert_eq!(
            g.wait_exit(Duration::from_secs(30)).expect("console ends"),
            0,
            "the console of a deleted VM ends"
        );
    }
    svc.stop(&host, Duration::from_secs(30))
        .expect("stop serve");
    t.mark("done");
}
