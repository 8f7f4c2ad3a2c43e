//! `memtide demo`: memtide's main job shown end to end, with no flags. It builds (or finds)
//! the guest image, selects the KVM host (hardware KVM, or the emulated KVM host with two
//! NUMA nodes under QEMU), starts `memtide serve` there (this very binary), creates two
//! guests A and B with hot-pluggable memory, grows A to 1 GiB, prints per-VM and per-zone
//! tables, moves memory from A to B (virtio-mem unplug in A, plug in B, through the pool)
//! with progress, prints the tables again, and shuts everything down. Every step is named as
//! it happens.
//!
//! Exit status: 0 done, 1 a step failed (named), 2 bad arguments.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use memtide_testbed::emulated::free_loopback_port;
use memtide_testbed::{GuestImage, HostConfig, HostKind, KvmHost};
use memtide_vmm::config::parse_size;
use memtide_vmm::control::{PoolInfo, VmInfo, VmState};

use crate::client::{Client, ClientError, Endpoint};
use crate::hosted::{self, HostedService};
use crate::model::{CreateVmBody, RebalanceBody, ResizeBody, Size};

const M: u64 = 1 << 20;
/// Boot RAM of each guest (two guest nodes of 128 MiB).
const BOOT: u64 = 256 * M;
/// Hot-pluggable range of each guest (on its second guest node).
const HOTPLUG: u64 = 1024 * M;
/// A's size before the move.
const A_SIZE: u64 = 1024 * M;
/// NUMA nodes of the emulated host, MiB each.
const HOST_NODES_MIB: u64 = 2048;
/// How long a guest may take to its agent's first line.
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a resize or the move may take.
const WAIT_SECS: u64 = 120;
/// The guests' extra kernel command line (quiet: every console byte is slow when nested).
const GUEST_CMDLINE: &str = "quiet loglevel=1 initcall_blacklist=cmos_init";

/// Arguments of `memtide demo` (all optional).
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How much memory to move from A to B (a multiple of 2M, at most A's plugged 768M).
    #[arg(long = "move", value_name = "SIZE", default_value = "512M")]
    pub move_size: String,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The test bed (image, host, guest boot) failed.
    #[error("{0}")]
    Testbed(#[from] memtide_testbed::Error),
    /// The service answered with an error.
    #[error("API: {0}")]
    Api(#[from] ClientError),
    /// A step ended without the expected result.
    #[error("{0}")]
    Step(String),
}

/// Prints a numbered step.
fn step(n: u32, what: &str) {
    println!("\n== step {n}/8: {what}");
    let _ = std::io::stdout().flush();
}

fn say(what: &str) {
    println!("   {what}");
    let _ = std::io::stdout().flush();
}

fn mib(b: u64) -> String {
    format!("{}M", b >> 20)
}

/// The guest-side body of a demo VM: node 0 with the vCPU and 128 MiB on `host_node`, node 1
/// with 128 MiB boot RAM and the hot-pluggable range on the same host node.
fn body(host: &KvmHost, id: &str, host_node: u32, console: &str) -> CreateVmBody {
    hosted::vm_body(
        host,
        id,
        1,
        vec![
            hosted::numa_node(0, vec![0], BOOT / 2, host_node, 0),
            hosted::numa_node(1, vec![], BOOT / 2, host_node, HOTPLUG),
        ],
        GUEST_CMDLINE,
        console,
    )
}

/// Per VM and guest node: boot, plugged, requested.
pub fn vms_table(vms: &[VmInfo]) -> String {
    let mut out = format!(
        "{:<4} {:<5} {:<5} {:>7} {:>8} {:>9} {:>8} {:>8}  {}\n",
        "VM", "NODE", "HOST", "BOOT", "PLUGGED", "REQUESTED", "HOTPLUG", "TOTAL", "STATE"
    );
    for v in vms {
        for n in &v.nodes {
            out.push_str(&format!(
                "{:<4} {:<5} {:<5} {:>7} {:>8} {:>9} {:>8} {:>8}\n",
                v.id,
                n.guest_node,
                n.host_node,
                mib(n.boot_memory),
                mib(n.plugged),
                mib(n.requested),
                mib(n.hotplug_size),
                ""
            ));
        }
        let plugged: u64 = v.nodes.iter().map(|n| n.plugged).sum();
        let requested: u64 = v.nodes.iter().map(|n| n.requested).sum();
        out.push_str(&format!(
            "{:<4} {:<5} {:<5} {:>7} {:>8} {:>9} {:>8} {:>8}  {}{}\n",
            v.id,
            "all",
            "",
            mib(v.boot_memory),
            mib(plugged),
            mib(requested),
            "",
            mib(v.total_memory),
            v.state.name(),
            v.exit_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
    }
    out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// Per pool zone: managed and free, and the change of free since `before` if given.
pub fn zones_table(p: &PoolInfo, before: Option<&PoolInfo>) -> String {
    let pages = |n: u64| (n * p.page_size) >> 20;
    let old: BTreeMap<(u32, String), u64> = before
        .map(|b| {
            b.nodes
                .iter()
                .flat_map(|n| {
                    n.zones
                        .iter()
                        .map(move |z| ((n.node, z.zone.clone()), z.free))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = format!(
        "{:<5} {:<8} {:>9} {:>9}{}\n",
        "NODE",
        "ZONE",
        "MANAGED",
        "FREE",
        if before.is_some() { "  CHANGE" } else { "" }
    );
    for n in &p.nodes {
        for z in n.zones.iter().filter(|z| z.managed > 0) {
            let change = match old.get(&(n.node, z.zone.clone())) {
                Some(&f) if f != z.free => {
                    let d = z.free as i64 - f as i64;
                    format!(
                        "  {}{}M",
                        if d > 0 { "+" } else { "-" },
                        pages(d.unsigned_abs())
                    )
                }
                Some(_) => "  0".into(),
                None => String::new(),
            };
            out.push_str(&format!(
                "{:<5} {:<8} {:>8}M {:>8}M{}\n",
                n.node,
                z.zone,
                pages(z.managed),
                pages(z.free),
                change
            ));
        }
    }
    out.push_str(&format!(
        "pool: {}M managed, {}M free\n",
        pages(p.managed_pages),
        pages(p.free_pages)
    ));
    out
}

fn print_tables(c: &Client, before: Option<&PoolInfo>) -> Result<PoolInfo, DemoError> {
    let vms = c.list_vms()?;
    let pool = c.pool()?;
    println!("{}", indent(&vms_table(&vms)));
    println!("{}", indent(&zones_table(&pool, before)));
    Ok(pool)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}

fn plugged(v: &VmInfo) -> u64 {
    v.nodes.iter().map(|n| n.plugged).sum()
}

/// Resizes `id` to `size` in all, printing the plugged size as it changes.
fn resize(c: &Client, id: &str, size: u64) -> Result<VmInfo, DemoError> {
    c.resize(
        id,
        &ResizeBody {
            size: Size(size),
            node: None,
            wait_secs: 0,
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(WAIT_SECS);
    let start = Instant::now();
    let mut last = None;
    loop {
        let v = c.vm(id)?;
        let (p, r): (u64, u64) = (plugged(&v), v.nodes.iter().map(|n| n.requested).sum());
        if last != Some(p) {
            say(&format!(
                "{id}: plugged {} of {} requested ({:.1} s)",
                mib(p),
                mib(r),
                start.elapsed().as_secs_f64()
            ));
            last = Some(p);
        }
        if p == r {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Step(format!(
                "{id}: plugged {} of {} after {WAIT_SECS} s",
                mib(p),
                mib(r)
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Moves `size` from `from` to `to` (one rebalance call in a thread), printing both VMs'
/// plugged sizes as they change.
fn rebalance(
    c: &Client,
    addr: std::net::SocketAddr,
    from: &str,
    to: &str,
    size: u64,
) -> Result<(), DemoError> {
    let body = RebalanceBody {
        from: from.into(),
        to: to.into(),
        size: Size(size),
        from_node: None,
        to_node: None,
        wait_secs: WAIT_SECS,
    };
    let start = Instant::now();
    let worker = std::thread::spawn(move || {
        Client::new(Endpoint::Tcp(addr), Duration::from_secs(WAIT_SECS + 60))
            .and_then(|c| c.rebalance(&body))
    });
    let mut last = None;
    let result = loop {
        let done = worker.is_finished();
        let (a, b) = (c.vm(from)?, c.vm(to)?);
        let now = (plugged(&a), plugged(&b));
        if last != Some(now) {
            say(&format!(
                "{:>5.1} s  {from}: {} plugged   {to}: {} plugged",
                start.elapsed().as_secs_f64(),
                mib(now.0),
                mib(now.1)
            ));
            last = Some(now);
        }
        if done {
            break worker
                .join()
                .map_err(|_| DemoError::Step("the rebalance thread panicked".into()))??;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    say(&format!(
        "moved {} of {} from {from} to {to} in {:.1} s{}",
        mib(result.moved),
        mib(result.requested),
        start.elapsed().as_secs_f64(),
        if result.complete {
            ""
        } else {
            " (incomplete: the guest did not give more back in time)"
        }
    ));
    if result.moved == 0 {
        return Err(DemoError::Step(format!(
            "nothing moved from {from} to {to}"
        )));
    }
    Ok(())
}

fn demo(move_size: u64) -> Result<(), DemoError> {
    let t0 = Instant::now();
    let exe = std::env::current_exe()
        .map_err(|e| DemoError::Step(format!("cannot find this memtide binary: {e}")))?;

    step(
        1,
        "guest image (Debian kernel + initramfs with the guest agent; built on first use, cached)",
    );
    let image = GuestImage::ensure()?;
    say(&format!("kernel {}", image.kernel.display()));
    say(&format!("initrd {}", image.initrd.display()));

    step(2, "KVM host (hardware KVM if this machine's /dev/kvm boots Linux, else the emulated KVM host)");
    let port = free_loopback_port()?;
    let cfg = HostConfig {
        nodes_mib: vec![HOST_NODES_MIB, HOST_NODES_MIB],
        image: Some(image),
        extra_binaries: vec![exe],
        forward_ports: vec![port],
        ..HostConfig::default()
    };
    let host_start = Instant::now();
    let (sel, host) = KvmHost::start(&cfg)?;
    match sel.kind {
        HostKind::Hardware => say(&format!(
            "hardware KVM ({}); this machine's own NUMA nodes",
            sel.reason
        )),
        HostKind::Emulated => say(&format!(
            "emulated KVM host: {} ({}); 2 NUMA nodes of {HOST_NODES_MIB} MiB, up in {:.1} s",
            sel.reason,
            if cfg!(target_arch = "x86_64") {
                "QEMU TCG, nested KVM inside"
            } else {
                "QEMU"
            },
            host_start.elapsed().as_secs_f64()
        )),
    }

    step(
        3,
        "memtide serve in the host (pool with ZONE_MOVABLE on every node: --movablecore 50%)",
    );
    let memtide = host.binary("memtide")?;
    let tag = std::process::id();
    let (sock, log) = match host.kind() {
        HostKind::Emulated => (
            "/tmp/memtide-demo.sock".to_string(),
            "/tmp/memtide-demo-serve.log".to_string(),
        ),
        HostKind::Hardware => (
            format!("/tmp/memtide-demo-{tag}.sock"),
            format!("/tmp/memtide-demo-{tag}-serve.log"),
        ),
    };
    let svc: HostedService = hosted::start_serve(
        &host,
        &memtide,
        port,
        &sock,
        &log,
        &["--movablecore", "50%"],
        Duration::from_secs(60),
    )?;
    say(&format!(
        "memtide serve (pid {} in the host, log {log}) answers at http://{}",
        svc.pid, svc.addr
    ));
    let consoles = [
        format!("/tmp/memtide-demo-{tag}-a.console"),
        format!("/tmp/memtide-demo-{tag}-b.console"),
    ];
    if let Err(e) = guests(&host, &svc, &consoles, move_size) {
        // Say what the service and the guests said last, while the host is still up.
        for (what, file) in [
            ("memtide serve log", &log),
            ("A's console", &consoles[0]),
            ("B's console", &consoles[1]),
        ] {
            if let Ok(out) = host.run(&format!("tail -n 15 {file}"), Duration::from_secs(10)) {
                println!("\n-- {what} ({file}), last lines:\n{}", out.text());
            }
        }
        return Err(e);
    }
    svc.stop(&host, Duration::from_secs(30))?;
    say("memtide serve stopped");
    if let KvmHost::Emulated(h) = host {
        h.shutdown()?;
        say("emulated host powered off");
    }
    println!("\ndone in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Steps 4 to 8 up to stopping the service: the guests, the move, the tables.
fn guests(
    host: &KvmHost,
    svc: &HostedService,
    consoles: &[String; 2],
    move_size: u64,
) -> Result<(), DemoError> {
    let c = &svc.client;
    let pool0 = c.pool()?;

    step(4, "two guests: A and B, each 256M boot RAM on 2 guest nodes + a 1G hot-pluggable range (virtio-mem)");
    let a = body(host, "a", 0, &consoles[0]);
    let b = body(host, "b", 1, &consoles[1]);
    say("A on host node 0, B on host node 1; booting both, waiting for their guest agents");
    let (ta, tb) = (hosted::create_vm(c, &a)?, hosted::create_vm(c, &b)?);
    hosted::boot_vm(host, c, &a, ta, AGENT_TIMEOUT)?;
    say(&format!(
        "A: guest up in {:.1} s",
        ta.elapsed().as_secs_f64()
    ));
    hosted::boot_vm(host, c, &b, tb, AGENT_TIMEOUT)?;
    say(&format!(
        "B: guest up in {:.1} s",
        tb.elapsed().as_secs_f64()
    ));
    say(&format!(
        "growing A to {} (plugs {} of movable blocks)",
        mib(A_SIZE),
        mib(A_SIZE - BOOT)
    ));
    resize(c, "a", A_SIZE)?;

    step(5, "before: per VM and guest node, per pool zone");
    let before = print_tables(c, None)?;

    step(6, &format!("move {} from A to B (A's guest unplugs, the blocks return to the pool, B's guest plugs)", mib(move_size)));
    rebalance(c, svc.addr, "a", "b", move_size)?;
    for v in c.list_vms()? {
        if v.state != VmState::Running {
            print_tables(c, Some(&before))?;
            return Err(DemoError::Step(format!(
                "VM {} is {} after the move ({})",
                v.id,
                v.state.name(),
                v.exit_reason.as_deref().unwrap_or("no reason given")
            )));
        }
    }

    step(
        7,
        "after: per VM and guest node, per pool zone (CHANGE: free since before)",
    );
    print_tables(c, Some(&before))?;

    step(8, "shut down: guests, memtide serve, the host");
    for id in ["a", "b"] {
        if c.vm(id)?.state != VmState::Stopped {
            c.vm_verb(id, "shutdown")?;
        }
        c.delete_vm(id)?;
        say(&format!("{id}: shut down and deleted"));
    }
    let pool = c.pool()?;
    if pool.free_pages != pool0.free_pages {
        return Err(DemoError::Step(format!(
            "pool: {} free pages after the guests, {} before them",
            pool.free_pages, pool0.free_pages
        )));
    }
    say("every page back in the pool");
    Ok(())
}

/// Runs `memtide demo`.
pub fn run(args: &DemoArgs) -> ExitCode {
    let size = match parse_size(&args.move_size) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("memtide demo: error: --move {}: {e}", args.move_size);
            return ExitCode::from(2);
        }
    };
    if size == 0 || size % (2 * M) != 0 || size > A_SIZE - BOOT {
        eprintln!(
            "memtide demo: error: --move {}: must be a multiple of 2M between 2M and {} (what A has plugged)",
            args.move_size,
            mib(A_SIZE - BOOT)
        );
        return ExitCode::from(2);
    }
    match demo(size) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memtide demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memtide_vmm::control::info::{PoolNodeInfo, Watermarks, ZoneInfo};

    fn zone(name: &str, managed: u64, free: u64) -> ZoneInfo {
        ZoneInfo {
            zone: name.into(),
            start_pfn: 0,
            spanned: managed,
            present: managed,
            managed,
            free,
            watermarks: Watermarks {
                min: 0,
                low: 0,
                high: 0,
            },
            buddyinfo: vec![0; 11],
        }
    }

    #[test]
    fn zones_table_shows_the_change_of_free() {
        let pool = |free: u64| PoolInfo {
            page_size: 4096,
            min_free_kbytes: 0,
            managed_pages: 2 * 65536,
            free_pages: free + 65536,
            nodes: vec![PoolNodeInfo {
                node: 0,
                zones: vec![
                    zone("Normal", 65536, 65536),
                    zone("Movable", 65536, free),
                    zone("DMA", 0, 0),
                ],
            }],
        };
        let t = zones_table(&pool(32768), Some(&pool(65536)));
        assert!(
            t.contains("0     Movable       256M      128M  -128M"),
            "{t}"
        );
        assert!(t.contains("0     Normal        256M      256M  0\n"), "{t}");
        assert!(!t.contains("DMA"), "{t}");
        let t = zones_table(&pool(65536), None);
        assert!(!t.contains("CHANGE"), "{t}");
    }
}
