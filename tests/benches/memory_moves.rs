//! Memory-move benchmarks on the KVM host, memtide against QEMU on the same guest image and
//! host (2 host NUMA nodes), rounds alternating between the two VMMs:
//!
//! 1. virtio-mem (issue 5): move 1 GiB from guest A to guest B (each 512 MiB boot RAM and a
//!    1 GiB hot-pluggable range, 2 MiB blocks, A on host node 0, B on host node 1, guest
//!    cmdline with `memhp_default_state=online_movable`). memtide: one `memtide run
//!    --serve-sock` holding A and B, `memtide vm rebalance A B 1G --wait`; QEMU: two q35
//!    guests with virtio-mem-pci, `qom-set requested-size` shrinks A by 1 GiB, then grows B
//!    by 1 GiB. Timed until B has it all plugged (polling every 20 ms: memtide's VM info,
//!    QEMU's `qom-get size`). Also memtide's host-side share: the time its virtio-mem devices
//!    spent on the guests' requests (queue, checks, pool allocation and free, punch-hole,
//!    remap; VM info `virtio_mem_stats.host_nanos`, read before and after) over the
//!    end-to-end time. Targets: no slower than QEMU, host share under 5%.
//! 2. virtio-balloon (issue 7): a 1536 MiB guest that has just written and freed 1 GiB
//!    inflates its balloon by 1 GiB, then deflates it; memtide: `memtide vm balloon run
//!    --guest-size`, polling the balloon's `actual_bytes`; QEMU (q35, virtio-balloon-pci):
//!    QMP `balloon`, polling `query-balloon`. Reported as times and ratios.
//!
//! The clocks run inside the host: this bench binary is copied into the host too and its
//! `probe` mode times one step there (QMP over QEMU's Unix socket, the memtide CLI and API
//! over memtide's), so the host's serial line adds nothing to either side.
//!
//! `cargo bench -p memtide-testbed --bench memory_moves` (`MEMTIDE_BENCH_ROUNDS`: moves per
//! VMM, default 4; `MEMTIDE_BENCH_BALLOON_ROUNDS`: default 2, 0 skips it;
//! `MEMTIDE_BENCH_CPU_TEMPLATE`: memtide's guest CPU template, default `x86-64-v2`; about 12
//! minutes here). A round
//! that fails (dead guest, timeout) is reported and skipped; its guests are booted again for
//! the next rounds, and a dead host too. The balloon runs in a fresh host.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{memtide_binary_with, run_argv};
use memtide_testbed::{say, Guest, GuestImage, HostConfig, KvmHost, Machine, QemuGuest};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// memtide's API socket in the host.
const SOCK: &str = "/tmp/mt.sock";
/// The guest agent's boot timeout.
const AGENT_TIMEOUT: Duration = Duration::from_secs(150);
/// How often a probe polls, milliseconds (`MEMTIDE_BENCH_POLL_MS`, default 100: a memtide
/// API call costs milliseconds of the emulated host's CPU, which the guests need too; the
/// bench passes its value to the probes in the host).
fn poll_ms() -> u64 {
    std::env::var("MEMTIDE_BENCH_POLL_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

/// memtide's guest CPU template (`MEMTIDE_BENCH_CPU_TEMPLATE`, default `x86-64-v2`: the
/// features QEMU's guest runs with here. QEMU 7.2 leaves XCR0 to the guest, whose XSETBV does
/// not reach KVM under nested KVM on TCG, so that guest turns XSAVE and AVX off at boot;
/// memtide presets XCR0 and its guest keeps them with `host`. Saving and restoring XSAVE
/// state on every context switch is emulated instruction by instruction here, so the same
/// guest features are what makes the two comparable.)
fn cpu_template() -> String {
    std::env::var("MEMTIDE_BENCH_CPU_TEMPLATE").unwrap_or_else(|_| "x86-64-v2".into())
}

/// The first argument of the in-host mode.
const PROBE: &str = "probe";

/// The in-host side: one timed step, printed as a `RESULT key=value ...` line.
mod probe {
    use super::*;
    use memtide_api::client::{Client, Endpoint};
    use serde_json::{json, Value};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::process::Command;

    fn poll() -> Duration {
        Duration::from_millis(poll_ms())
    }

    /// A QMP connection (capabilities negotiated).
    struct Qmp {
        reader: BufReader<UnixStream>,
        writer: UnixStream,
    }

    impl Qmp {
        fn connect(path: &str) -> Result<Qmp, String> {
            let s = UnixStream::connect(path).map_err(|e| format!("connect {path}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            let writer = s.try_clone().map_err(|e| e.to_string())?;
            let mut q = Qmp {
                reader: BufReader::new(s),
                writer,
            };
            loop {
                if q.read()?.get("QMP").is_some() {
                    break;
                }
            }
            q.exec("qmp_capabilities", json!({}))?;
            Ok(q)
        }

        fn read(&mut self) -> Result<Value, String> {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| format!("QMP read: {e}"))?;
            if n == 0 {
                return Err("QMP closed".into());
            }
            serde_json::from_str(&line).map_err(|e| format!("QMP answer {line:?}: {e}"))
        }

        /// Runs `cmd`; its `return` value (events in between are skipped).
        fn exec(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
            let msg = json!({"execute": cmd, "arguments": args});
            writeln!(self.writer, "{msg}").map_err(|e| format!("QMP write: {e}"))?;
            loop {
                let v = self.read()?;
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = v.get("error") {
                    return Err(format!("QMP {cmd}: {e}"));
                }
            }
        }

        fn plugged(&mut self) -> Result<u64, String> {
            self.exec(
                "qom-get",
                json!({"path": "/machine/peripheral/vm0", "property": "size"}),
            )?
            .as_u64()
            .ok_or_else(|| "qom-get size: not a number".into())
        }

        fn request(&mut self, bytes: u64) -> Result<(), String> {
            self.exec(
                "qom-set",
                json!({"path": "/machine/peripheral/vm0", "property": "requested-size", "value": bytes}),
            )
            .map(|_| ())
        }

        fn balloon_actual(&mut self) -> Result<u64, String> {
            self.exec("query-balloon", json!({}))?["actual"]
                .as_u64()
                .ok_or_else(|| "query-balloon: no actual".into())
        }
    }

    /// Polls `f` every [`poll`] interval until it is true or `timeout` passes.
    fn until(
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<bool, String>,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if f()? {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!("{what}: not done within {timeout:?}"));
            }
            std::thread::sleep(poll());
        }
    }

    fn arg(args: &[String], i: usize) -> Result<&str, String> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("probe: argument {i} missing in {args:?}"))
    }

    fn num(args: &[String], i: usize) -> Result<u64, String> {
        arg(args, i)?
            .parse()
            .map_err(|e| format!("probe: argument {i} of {args:?}: {e}"))
    }

    const TIMEOUT: Duration = Duration::from_secs(150);

    /// `qmp-move SOCK_A SOCK_B BYTES`: A's requested size down by BYTES, then B's up by as
    /// much once A gave it, B polled until plugged.
    fn qmp_move(args: &[String]) -> Result<String, String> {
        let (mut a, mut b) = (Qmp::connect(arg(args, 0)?)?, Qmp::connect(arg(args, 1)?)?);
        let size = num(args, 2)?;
        let (a0, b0) = (a.plugged()?, b.plugged()?);
        let a1 = a0
            .checked_sub(size)
            .ok_or_else(|| format!("A has {a0} plugged, cannot give {size}"))?;
        let start = Instant::now();
        a.request(a1)?;
        until("A's shrink", TIMEOUT, || Ok(a.plugged()? == a1))?;
        let shrink = start.elapsed();
        b.request(b0 + size)?;
        until("B's grow", TIMEOUT, || Ok(b.plugged()? == b0 + size))?;
        let total = start.elapsed();
        Ok(format!(
            "total={:.3} shrink={:.3} grow={:.3}",
            total.as_secs_f64(),
            shrink.as_secs_f64(),
            (total - shrink).as_secs_f64()
        ))
    }

    fn client(sock: &str) -> Result<Client, String> {
        Client::new(Endpoint::Unix(sock.into()), Duration::from_secs(30)).map_err(|e| e.to_string())
    }

    fn plugged(c: &Client, id: &str) -> Result<u64, String> {
        let v = c.vm(id).map_err(|e| format!("vm info {id}: {e}"))?;
        Ok(v.nodes.iter().map(|n| n.plugged).sum())
    }

    /// `(host_nanos, plug requests, unplug requests, plug nanos, unplug nanos)` of VM `id`.
    fn host_stats(c: &Client, id: &str) -> Result<[u64; 5], String> {
        let v = c.vm(id).map_err(|e| format!("vm info {id}: {e}"))?;
        let s = v
            .virtio_mem_stats
            .ok_or_else(|| format!("VM {id} reports no virtio_mem_stats"))?;
        let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        Ok([
            s.host_nanos,
            get(&s.requests, "plug"),
            get(&s.requests, "unplug"),
            get(&s.request_nanos, "plug"),
            get(&s.request_nanos, "unplug"),
        ])
    }

    /// `memtide-move MEMTIDE SOCK FROM TO BYTES`: `memtide vm rebalance FROM TO BYTES --wait`,
    /// FROM and TO polled until FROM gave and TO plugged BYTES; the VMs' virtio-mem host
    /// time before and after.
    fn memtide_move(args: &[String]) -> Result<String, String> {
        let (memtide, sock) = (arg(args, 0)?, arg(args, 1)?);
        let (from, to, size) = (arg(args, 2)?, arg(args, 3)?, num(args, 4)?);
        let c = client(sock)?;
        let (f0, t0) = (plugged(&c, from)?, plugged(&c, to)?);
        let f1 = f0
            .checked_sub(size)
            .ok_or_else(|| format!("{from} has {f0} plugged, cannot give {size}"))?;
        let (sf0, st0) = (host_stats(&c, from)?, host_stats(&c, to)?);
        let start = Instant::now();
        let mut cli = Command::new(memtide)
            .args(["vm", "rebalance", from, to, &size.to_string()])
            .args(["--wait", "120", "--api-sock", sock])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {memtide}: {e}"))?;
        let polled = (|| {
            until("the source's shrink", TIMEOUT, || {
                Ok(plugged(&c, from)? == f1)
            })?;
            let shrink = start.elapsed();
            until("the target's grow", TIMEOUT, || {
                Ok(plugged(&c, to)? == t0 + size)
            })?;
            Ok::<_, String>((shrink, start.elapsed()))
        })();
        let status = cli.wait().map_err(|e| e.to_string())?;
        let cli_secs = start.elapsed().as_secs_f64();
        let (shrink, total) = polled?;
        if !status.success() {
            return Err(format!("memtide vm rebalance: {status}"));
        }
        let (sf1, st1) = (host_stats(&c, from)?, host_stats(&c, to)?);
        let d = |i: usize| (sf1[i] - sf0[i]) + (st1[i] - st0[i]);
        Ok(format!(
            "total={:.3} shrink={:.3} grow={:.3} cli={cli_secs:.3} host={:.6} plugs={} unplugs={} plug_host={:.6} unplug_host={:.6}",
            total.as_secs_f64(),
            shrink.as_secs_f64(),
            (total - shrink).as_secs_f64(),
            d(0) as f64 / 1e9,
            d(1),
            d(2),
            d(3) as f64 / 1e9,
            d(4) as f64 / 1e9,
        ))
    }

    /// `qmp-balloon SOCK GUEST_BYTES`: QMP `balloon`, polled until `actual` is GUEST_BYTES.
    fn qmp_balloon(args: &[String]) -> Result<String, String> {
        let mut q = Qmp::connect(arg(args, 0)?)?;
        let target = num(args, 1)?;
        let start = Instant::now();
        q.exec("balloon", json!({ "value": target }))?;
        until("the balloon", TIMEOUT, || Ok(q.balloon_actual()? == target))?;
        Ok(format!("total={:.3}", start.elapsed().as_secs_f64()))
    }

    /// `memtide-balloon MEMTIDE SOCK ID GUEST_BYTES`: `memtide vm balloon ID --guest-size`,
    /// polled until the balloon's `actual_bytes` leaves GUEST_BYTES to the guest.
    fn memtide_balloon(args: &[String]) -> Result<String, String> {
        let (memtide, sock, id) = (arg(args, 0)?, arg(args, 1)?, arg(args, 2)?);
        let target = num(args, 3)?;
        let c = client(sock)?;
        let ram = c.balloon(id).map_err(|e| e.to_string())?.guest_ram;
        let want = ram
            .checked_sub(target)
            .ok_or_else(|| format!("guest size {target} beyond the guest's RAM {ram}"))?;
        let start = Instant::now();
        let status = Command::new(memtide)
            .args(["vm", "balloon", id, "--guest-size", &target.to_string()])
            .args(["--api-sock", sock])
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("spawn {memtide}: {e}"))?;
        if !status.success() {
            return Err(format!("memtide vm balloon: {status}"));
        }
        until("the balloon", TIMEOUT, || {
            Ok(c.balloon(id).map_err(|e| e.to_string())?.actual_bytes == want)
        })?;
        Ok(format!("total={:.3}", start.elapsed().as_secs_f64()))
    }

    /// `qmp-resize SOCK BYTES`: the device's requested size set, polled until plugged.
    fn qmp_resize(args: &[String]) -> Result<String, String> {
        let mut q = Qmp::connect(arg(args, 0)?)?;
        let size = num(args, 1)?;
        let start = Instant::now();
        q.request(size)?;
        until("the resize", TIMEOUT, || Ok(q.plugged()? == size))?;
        Ok(format!("total={:.3}", start.elapsed().as_secs_f64()))
    }

    /// Runs the probe `args[0]` with the rest; the process exit code.
    pub fn main(args: &[String]) -> i32 {
        let rest = args.get(1..).unwrap_or_default();
        let r = match args.first().map(String::as_str) {
            Some("qmp-move") => qmp_move(rest),
            Some("memtide-move") => memtide_move(rest),
            Some("qmp-balloon") => qmp_balloon(rest),
            Some("qmp-resize") => qmp_resize(rest),
            Some("memtide-balloon") => memtide_balloon(rest),
            other => Err(format!("unknown probe {other:?}")),
        };
        match r {
            Ok(line) => {
                println!("RESULT {line}");
                0
            }
            Err(e) => {
                println!("PROBE-ERROR {e}");
                1
            }
        }
    }
}

/// The `key=value` pairs of a probe's `RESULT` line.
fn probe_result(host: &KvmHost, cmd: &str) -> Result<BTreeMap<String, f64>, String> {
    let out = host
        .run(cmd, Duration::from_secs(200))
        .map_err(|e| e.to_string())?;
    let line = out
        .lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("RESULT "))
        .ok_or_else(|| format!("{cmd}: {}", out.text()))?;
    Ok(line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect())
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Figures of one kind: name -> values over the rounds.
type Series = BTreeMap<String, Vec<f64>>;

fn record(series: &mut Series, r: &BTreeMap<String, f64>) {
    for (k, v) in r {
        series.entry(k.clone()).or_default().push(*v);
    }
}

fn med(series: &Series, key: &str) -> f64 {
    series.get(key).map_or(f64::NAN, |v| median(v))
}

/// QEMU's guest memory backend: `memory-backend-ram` (QEMU's default: anonymous memory,
/// which the host may back with transparent huge pages), or with
/// `MEMTIDE_BENCH_QEMU_BACKEND=memfd` a `memory-backend-memfd` (shared memfd pages, as
/// memtide's guest memory), to tell the VMMs' work from the kind of memory.
fn qemu_backend() -> &'static str {
    match std::env::var("MEMTIDE_BENCH_QEMU_BACKEND").as_deref() {
        Ok("memfd") => "memory-backend-memfd",
        _ => "memory-backend-ram",
    }
}

/// QEMU's argv for the guest image on `host` with `memory_mib` boot RAM on host node
/// `host_node`, QMP on `qmp`, and `devices` (`-m` gets `maxmem` when `maxmem_mib` is set).
fn qemu_argv(
    host: &KvmHost,
    memory_mib: u64,
    maxmem_mib: Option<u64>,
    host_node: u32,
    qmp: &str,
    devices: &[String],
) -> Vec<String> {
    let mut extra: Vec<String> = vec![
        "-object".into(),
        format!(
            "{},id=ram0,size={memory_mib}M,host-nodes={host_node},policy=bind",
            qemu_backend()
        ),
        "-machine".into(),
        "memory-backend=ram0".into(),
        "-qmp".into(),
        format!("unix:{qmp},server=on,wait=off"),
    ];
    extra.extend(devices.iter().cloned());
    let q = QemuGuest {
        machine: Machine::Q35,
        memory_mib,
        cmdline: "memhp_default_state=online_movable".into(),
        extra,
        ..QemuGuest::default()
    };
    let mut argv = q.argv(host).expect("qemu argv");
    if let Some(max) = maxmem_mib {
        if let Some(i) = argv.iter().position(|a| a == "-m") {
            argv[i + 1] = format!("{memory_mib}M,maxmem={max}M");
        }
    }
    argv
}

/// A guest pair for the virtio-mem moves; `holder` (0: A, 1: B) has the 1 GiB plugged.
struct Pair {
    /// The guests whose consoles the harness holds (dropping them kills their VMMs).
    guests: Vec<Guest>,
    holder: usize,
}

/// memtide's pair: `memtide run` with VM `run` (A: 512 MiB on host node 0, 1 GiB
/// hot-pluggable) and the API on [`SOCK`], VM `b` created through the API (512 MiB on host
/// node 1, 1 GiB hot-pluggable); A grown by 1 GiB.
fn memtide_pair(host: &KvmHost, memtide: &str) -> Result<Pair, String> {
    let template = cpu_template();
    let argv = run_argv(
        host,
        memtide,
        &[
            "--cpu-template",
            &template,
            "--vcpus",
            "1",
            "--numa",
            "guest_numa_id=0,cpus=0,memory=512M,host_numa_id=0,hotplug_size=1G",
            "--serve-sock",
            SOCK,
        ],
    );
    let a = host
        .boot_guest("memtide-a", AGENT_TIMEOUT, |_| {
            let _ = host.run(&format!("rm -f {SOCK}"), Duration::from_secs(10));
            argv.clone()
        })
        .map_err(|e| format!("memtide A did not boot: {e}"))?;
    memtide_testbed::retry_boot("memtide-b", memtide_testbed::Policy::Guest, |_| {
        let _ = host.run(
            &format!(
                "{memtide} vm shutdown b --api-sock {SOCK}; {memtide} vm delete b --api-sock {SOCK}; rm -f /tmp/b.console"
            ),
            Duration::from_secs(60),
        );
        host.check(
            &format!(
                "{memtide} vm create --api-sock {SOCK} --id b --kernel {k} --initrd {i} \
                 --cmdline '{c}' --vcpus 1 --serial-file /tmp/b.console --cpu-template {template} \
                 --numa guest_numa_id=0,cpus=0,memory=512M,host_numa_id=1,hotplug_size=1G",
                k = host.guest_kernel(),
                i = host.guest_initrd(),
                c = memtide_testbed::image::DEFAULT_CMDLINE,
            ),
            Duration::from_secs(60),
        )?;
        let start = Instant::now();
        loop {
            let out = host.run(
                "grep -c 'AGENT ready' /tmp/b.console",
                Duration::from_secs(10),
            )?;
            if out.lines.last().is_some_and(|l| l.trim() != "0") {
                return Ok(());
            }
            let tail = host
                .run("tail -n 5 /tmp/b.console", Duration::from_secs(10))?
                .text();
            let state = host.run(
                &format!("{memtide} vm info b --json --api-sock {SOCK}"),
                Duration::from_secs(10),
            )?;
            if state.text().contains("\"stopped\"") {
                return Err(memtide_testbed::Error::GuestDied {
                    label: "memtide-b".into(),
                    status: String::new(),
                    tail,
                });
            }
            if start.elapsed() > AGENT_TIMEOUT {
                return Err(memtide_testbed::Error::GuestSilent {
                    label: "memtide-b".into(),
                    waited: AGENT_TIMEOUT,
                    tail,
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .map_err(|e| format!("memtide B did not boot: {e}"))?;
    let out = host
        .check(
            &format!("{memtide} vm resize run 1536M --wait 120 --api-sock {SOCK} 2>&1"),
            Duration::from_secs(180),
        )
        .map_err(|e| format!("growing memtide A by 1 GiB: {e}"))?;
    if out.text().contains("had not finished") {
        return Err(format!("memtide A did not plug 1 GiB: {}", out.text()));
    }
    let mut a = a;
    describe_guest(host, "memtide", &mut a);
    Ok(Pair {
        guests: vec![a],
        holder: 0,
    })
}

/// What each VMM's guest A runs on, by VMM: clocksource and CPU flags (printed at the end so
/// a reader sees the guests compare like with like).
static GUEST_PLATFORMS: std::sync::Mutex<BTreeMap<String, (String, Vec<String>)>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Records `g`'s clocksource and CPU flags under `vmm`, and prints how much of its VMM's
/// memory in the host is on huge pages.
fn describe_guest(host: &KvmHost, vmm: &str, g: &mut Guest) {
    if let Some(pgid) = g.vmm_pid() {
        let rollup = host.run(
            &format!(
                "for p in $(ps -o pid,pgid | awk '$2=={pgid} {{print $1}}'); do \
                 grep -E '^(Rss|AnonHugePages|ShmemPmdMapped):' /proc/$p/smaps_rollup \
                 2>/dev/null | tr -s ' \\n' ' '; echo; done"
            ),
            Duration::from_secs(20),
        );
        if let Ok(out) = rollup {
            for l in out.lines.iter().filter(|l| l.contains("Rss")) {
                say(&format!(
                    "bench: {vmm}'s VMM process in the host: {}",
                    l.trim()
                ));
            }
        }
    }
    let out = g.sh(
        "cat /sys/devices/system/clocksource/clocksource0/current_clocksource; \
         grep -m1 '^flags' /proc/cpuinfo",
    );
    let Ok(lines) = out else {
        say(&format!("bench: cannot describe {vmm}'s guest: {out:?}"));
        return;
    };
    let clock = lines.first().cloned().unwrap_or_default();
    let flags: Vec<String> = lines
        .iter()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == "flags"))
        .map(|(_, v)| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    GUEST_PLATFORMS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(vmm.to_string(), (clock, flags));
}

/// Prints the guests' platforms and the CPU flags only one VMM's guest has.
fn print_guest_platforms() {
    let platforms = GUEST_PLATFORMS.lock().unwrap_or_else(|p| p.into_inner());
    for (vmm, (clock, flags)) in platforms.iter() {
        let others: std::collections::BTreeSet<&String> = platforms
            .iter()
            .filter(|(v, _)| *v != vmm)
            .flat_map(|(_, (_, f))| f)
            .collect();
        let only: Vec<&str> = flags
            .iter()
            .filter(|f| !others.contains(f))
            .map(String::as_str)
            .collect();
        say(&format!(
            "bench result:   {vmm}'s guest: clocksource {clock}, {} CPU flags, only here: {}",
            flags.len(),
            if only.is_empty() {
                "none".to_string()
            } else {
                only.join(" ")
            }
        ));
    }
}

/// QEMU's QMP sockets of the pair.
const QEMU_SOCKS: [&str; 2] = ["/tmp/qa.qmp", "/tmp/qb.qmp"];

/// QEMU's pair: two q35 guests (512 MiB on host node 0 / 1, virtio-mem-pci with a 1 GiB
/// memory backend bound to the same node, 2 MiB blocks); A grown by 1 GiB.
fn qemu_pair(host: &KvmHost, probe: &str) -> Result<Pair, String> {
    let mut guests = Vec::new();
    for (i, sock) in QEMU_SOCKS.iter().enumerate() {
        let devices: Vec<String> = vec![
            "-object".into(),
            format!(
                "{},id=vmem0,size=1G,host-nodes={i},policy=bind",
                qemu_backend()
            ),
            "-device".into(),
            "virtio-mem-pci,id=vm0,memdev=vmem0,block-size=2M,requested-size=0".into(),
        ];
        let argv = qemu_argv(host, 512, Some(1536), i as u32, sock, &devices);
        guests.push(boot_qemu(
            host,
            &format!("qemu-{}", ["a", "b"][i]),
            sock,
            &argv,
        )?);
    }
    if let Some(a) = guests.first_mut() {
        describe_guest(host, "qemu", a);
    }
    probe_result(
        host,
        &format!("{probe} probe qmp-resize {} {GIB}", QEMU_SOCKS[0]),
    )
    .map_err(|e| format!("growing QEMU A by 1 GiB: {e}"))?;
    Ok(Pair { guests, holder: 0 })
}

/// Boots a QEMU guest (dead-boot retry), its QMP socket removed first.
fn boot_qemu(host: &KvmHost, label: &str, qmp: &str, argv: &[String]) -> Result<Guest, String> {
    host.boot_guest(label, AGENT_TIMEOUT, |_| {
        let _ = host.run(&format!("rm -f {qmp}"), Duration::from_secs(10));
        argv.to_vec()
    })
    .map_err(|e| format!("{label} did not boot: {e}"))
}

/// The two VMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Memtide,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Memtide => "memtide",
            Vmm::Qemu => "qemu",
        }
    }
}

/// Which VMM goes first in `round` (alternating).
fn order(round: usize) -> [Vmm; 2] {
    if round.is_multiple_of(2) {
        [Vmm::Memtide, Vmm::Qemu]
    } else {
        [Vmm::Qemu, Vmm::Memtide]
    }
}

/// Results of one benchmark: per VMM, the figures of the rounds that worked; failed rounds.
#[derive(Default)]
struct Outcome {
    series: BTreeMap<&'static str, Series>,
    failed: Vec<String>,
}

impl Outcome {
    fn med(&self, vmm: Vmm, key: &str) -> f64 {
        self.series
            .get(vmm.name())
            .map_or(f64::NAN, |s| med(s, key))
    }

    fn count(&self, vmm: Vmm) -> usize {
        self.series
            .get(vmm.name())
            .and_then(|s| s.get("total"))
            .map_or(0, Vec::len)
    }
}

/// The emulated (or hardware) KVM host with memtide and this binary in it; booted again when
/// it dies (KVM-HOST.md: the emulated host's kernel sometimes panics after several guests).
struct Bed {
    cfg: HostConfig,
    host: Option<KvmHost>,
    memtide: String,
    probe: String,
}

impl Bed {
    fn start(cfg: HostConfig, probe_name: &str) -> Bed {
        let (_sel, host) = KvmHost::start(&cfg).expect("a KVM host");
        let memtide = host.binary("memtide").expect("memtide in the host");
        let probe = host
            .binary(probe_name)
            .expect("the bench binary in the host");
        Bed {
            cfg,
            host: Some(host),
            memtide,
            probe,
        }
    }

    fn host(&self) -> &KvmHost {
        self.host
            .as_ref()
            .expect("a host (booted again after a death)")
    }

    /// Whether the host still answers.
    fn alive(&self) -> bool {
        self.host().run("true", Duration::from_secs(30)).is_ok()
    }

    /// Shuts the host down and boots a new one (between benchmarks, or after a death).
    fn fresh(&mut self, why: &str) {
        say(&format!(
            "bench: booting a new KVM host with nodes {:?} MiB ({why})",
            self.cfg.nodes_mib
        ));
        if let Some(KvmHost::Emulated(h)) = self.host.take() {
            let _ = h.shutdown();
        }
        let (_sel, host) = KvmHost::start(&self.cfg).expect("a KVM host");
        self.host = Some(host);
    }

    fn shutdown(&mut self) {
        if let Some(KvmHost::Emulated(h)) = self.host.take() {
            let _ = h.shutdown();
        }
    }
}

/// The virtio-mem benchmark: `rounds` 1 GiB moves per VMM, back and forth.
fn virtio_mem_moves(bed: &mut Bed, rounds: usize) -> Outcome {
    let mut out = Outcome::default();
    let mut pairs: [Option<Pair>; 2] = [None, None];
    for round in 0..rounds {
        for vmm in order(round) {
            let (memtide, probe) = (bed.memtide.clone(), bed.probe.clone());
            let host = bed.host();
            let slot = &mut pairs[vmm as usize];
            if slot.is_none() {
                let built = match vmm {
                    Vmm::Memtide => memtide_pair(host, &memtide),
                    Vmm::Qemu => qemu_pair(host, &probe),
                };
                match built {
                    Ok(p) => *slot = Some(p),
                    Err(e) => {
                        let msg =
                            format!("virtio-mem round {round} {}: setup failed: {e}", vmm.name());
                        say(&format!("bench: {msg}"));
                        out.failed.push(msg);
                        continue;
                    }
                }
            }
            let Some(pair) = slot.as_mut() else { continue };
            let cmd = match vmm {
                Vmm::Memtide => {
                    let ids = ["run", "b"];
                    format!(
                        "{probe} probe memtide-move {memtide} {SOCK} {} {} {GIB}",
                        ids[pair.holder],
                        ids[1 - pair.holder]
                    )
                }
                Vmm::Qemu => format!(
                    "{probe} probe qmp-move {} {} {GIB}",
                    QEMU_SOCKS[pair.holder],
                    QEMU_SOCKS[1 - pair.holder]
                ),
            };
            let dir = ["A -> B", "B -> A"][pair.holder];
            match probe_result(host, &cmd) {
                Ok(r) => {
                    say(&format!(
                        "bench virtio-mem round {round} {} 1 GiB {dir}: {r:?}",
                        vmm.name()
                    ));
                    record(out.series.entry(vmm.name()).or_default(), &r);
                    pair.holder = 1 - pair.holder;
                }
                Err(e) => {
                    let msg = format!("virtio-mem round {round} {} {dir}: {e}", vmm.name());
                    say(&format!("bench: FAILED {msg}; its guests are booted again"));
                    out.failed.push(msg);
                    *slot = None;
                    if !bed.alive() {
                        pairs = [None, None];
                        bed.fresh("the host died");
                    }
                }
            }
        }
    }
    // Power the guests off (memtide's B goes with memtide).
    for pair in pairs.iter_mut().flatten() {
        for g in &mut pair.guests {
            let _ = g.poweroff(Duration::from_secs(60));
        }
    }
    out
}

/// The balloon benchmark: per round and VMM, the guest writes and frees 1 GiB, then the
/// balloon inflates by 1 GiB and deflates again.
fn balloon_moves(bed: &mut Bed, rounds: usize) -> Outcome {
    const QMP: &str = "/tmp/qbal.qmp";
    const BSOCK: &str = "/tmp/mtb.sock";
    let (memtide, probe) = (bed.memtide.clone(), bed.probe.clone());
    let template = cpu_template();
    let memtide_argv = run_argv(
        bed.host(),
        &memtide,
        &[
            "--cpu-template",
            &template,
            "--vcpus",
            "1",
            "--numa",
            "guest_numa_id=0,cpus=0,memory=1536M,host_numa_id=0",
            "--serve-sock",
            BSOCK,
        ],
    );
    let qemu = qemu_argv(
        bed.host(),
        1536,
        None,
        1,
        QMP,
        &["-device".into(), "virtio-balloon-pci,id=balloon0".into()],
    );
    let mut out = Outcome::default();
    let mut guests: [Option<Guest>; 2] = [None, None];
    for round in 0..rounds {
        for vmm in order(round) {
            let host = bed.host();
            let slot = &mut guests[vmm as usize];
            if slot.is_none() {
                let booted = match vmm {
                    Vmm::Memtide => host
                        .boot_guest("memtide-balloon", AGENT_TIMEOUT, |_| {
                            let _ = host.run(&format!("rm -f {BSOCK}"), Duration::from_secs(10));
                            memtide_argv.clone()
                        })
                        .map_err(|e| e.to_string()),
                    Vmm::Qemu => boot_qemu(host, "qemu-balloon", QMP, &qemu),
                };
                match booted {
                    Ok(g) => *slot = Some(g),
                    Err(e) => {
                        let msg = format!("balloon round {round} {}: boot failed: {e}", vmm.name());
                        say(&format!("bench: {msg}"));
                        out.failed.push(msg);
                        if !bed.alive() {
                            guests = [None, None];
                            bed.fresh("the host died");
                        }
                        continue;
                    }
                }
            }
            let Some(guest) = slot.as_mut() else { continue };
            let step = |target: u64| match vmm {
                Vmm::Memtide => format!(
                    "{probe} probe memtide-balloon {memtide} {BSOCK} run {}",
                    target
                ),
                Vmm::Qemu => format!("{probe} probe qmp-balloon {QMP} {target}"),
            };
            let run = (|| -> Result<BTreeMap<String, f64>, String> {
                let touched = Instant::now();
                let filled = guest.fill(1024).map_err(|e| format!("fill: {e}"))?;
                guest.free().map_err(|e| format!("free: {e}"))?;
                if filled != 1024 {
                    return Err(format!("the agent filled {filled} MiB, not 1024"));
                }
                let touch = touched.elapsed().as_secs_f64();
                let inflate = probe_result(host, &step(1536 * MIB - GIB))?;
                let m = guest.mem_total_kib().map_err(|e| e.to_string())?;
                let deflate = probe_result(host, &step(1536 * MIB))?;
                let mut r = BTreeMap::new();
                r.insert("inflate".to_string(), inflate["total"]);
                r.insert("deflate".to_string(), deflate["total"]);
                r.insert("total".to_string(), inflate["total"] + deflate["total"]);
                r.insert("touch".to_string(), touch);
                r.insert("memtotal_inflated_mib".to_string(), (m / 1024) as f64);
                Ok(r)
            })();
            match run {
                Ok(r) => {
                    say(&format!(
                        "bench balloon round {round} {}: {r:?}",
                        vmm.name()
                    ));
                    record(out.series.entry(vmm.name()).or_default(), &r);
                }
                Err(e) => {
                    let msg = format!("balloon round {round} {}: {e}", vmm.name());
                    say(&format!("bench: FAILED {msg}; the guest is booted again"));
                    out.failed.push(msg);
                    *slot = None;
                    if !bed.alive() {
                        guests = [None, None];
                        bed.fresh("the host died");
                    }
                }
            }
        }
    }
    for g in guests.iter_mut().flatten() {
        let _ = g.poweroff(Duration::from_secs(60));
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A round count from the environment, at least `min`.
fn env_rounds(name: &str, default: usize, min: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
        .max(min)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(PROBE) {
        std::process::exit(probe::main(&args[2..]));
    }
    let rounds = env_rounds("MEMTIDE_BENCH_ROUNDS", 4, 1);
    // 0 skips the balloon benchmark.
    let balloon_rounds = env_rounds("MEMTIDE_BENCH_BALLOON_ROUNDS", 2, 0);
    let started = Instant::now();
    let load0 = loadavg();
    let memtide_local = memtide_binary_with(true);
    let me = std::env::current_exe().expect("the bench binary's path");
    let me_name = me
        .file_name()
        .and_then(|n| n.to_str())
        .expect("the bench binary's name")
        .to_string();
    let image = GuestImage::ensure().expect("guest image");
    // Both host nodes below 4 GiB: the pool, like Linux, takes ZONE_MOVABLE only from the
    // highest zone present (with more memory, node 0 would be all DMA32 below node 1's
    // Normal, and get no ZONE_MOVABLE for A's hot-pluggable range).
    let cfg = HostConfig {
        nodes_mib: vec![2048, 2048],
        image: Some(image),
        extra_binaries: vec![memtide_local, me.clone()],
        ..HostConfig::default()
    };
    let mut bed = Bed::start(cfg, &me_name);
    let mem = virtio_mem_moves(&mut bed, rounds);
    // A fresh host for the balloon (hosts that ran several guests are the ones that panic),
    // with room for two 1536 MiB guests that touch 1 GiB each.
    let bal = if balloon_rounds > 0 {
        bed.cfg.nodes_mib = vec![3072, 3072];
        bed.fresh("for the balloon benchmark");
        balloon_moves(&mut bed, balloon_rounds)
    } else {
        Outcome::default()
    };
    bed.shutdown();
    let load1 = loadavg();

    let (m, q) = (Vmm::Memtide, Vmm::Qemu);
    say(&format!(
        "bench result: memory moves, {} s in all, load average {load0} at the start, {load1} at the end",
        started.elapsed().as_secs()
    ));
    say(&format!(
        "bench result: virtio-mem 1 GiB move A -> B (medians; memtide {} rounds, qemu {} rounds; QEMU guest memory {}; memtide's CPU template {})",
        mem.count(m),
        mem.count(q),
        qemu_backend(),
        cpu_template()
    ));
    say("bench result:   VMM       end-to-end s  shrink A s  grow B s");
    for v in [m, q] {
        say(&format!(
            "bench result:   {:<8}  {:>12.2}  {:>10.2}  {:>8.2}",
            v.name(),
            mem.med(v, "total"),
            mem.med(v, "shrink"),
            mem.med(v, "grow")
        ));
    }
    print_guest_platforms();
    let ratio = mem.med(m, "total") / mem.med(q, "total");
    say(&format!(
        "bench result:   memtide / qemu end-to-end ratio {ratio:.2} (target <= 1: {})",
        if ratio <= 1.0 { "met" } else { "NOT met" }
    ));
    let shares: Vec<f64> = mem
        .series
        .get("memtide")
        .map(|s| {
            s.get("host")
                .into_iter()
                .flatten()
                .zip(s.get("total").into_iter().flatten())
                .map(|(h, t)| h / t)
                .collect()
        })
        .unwrap_or_default();
    let share = median(&shares);
    say(&format!(
        "bench result:   memtide host-side share {:.3}% (median; {:.1} ms host time: {} unplug requests {:.1} ms, {} plug requests {:.1} ms; memtide CLI returned after {:.2} s) (target < 5%: {})",
        share * 100.0,
        mem.med(m, "host") * 1e3,
        mem.med(m, "unplugs"),
        mem.med(m, "unplug_host") * 1e3,
        mem.med(m, "plugs"),
        mem.med(m, "plug_host") * 1e3,
        mem.med(m, "cli"),
        if share < 0.05 { "met" } else { "NOT met" }
    ));
    print_balloon(&bal, balloon_rounds);
    for f in mem.failed.iter().chain(&bal.failed) {
        say(&format!("bench result: failed round: {f}"));
    }
}

/// The balloon benchmark's figures (nothing when it was skipped).
fn print_balloon(bal: &Outcome, rounds: usize) {
    let (m, q) = (Vmm::Memtide, Vmm::Qemu);
    if rounds == 0 {
        say("bench result: virtio-balloon skipped (MEMTIDE_BENCH_BALLOON_ROUNDS=0)");
        return;
    }
    say(&format!(
        "bench result: virtio-balloon 1 GiB in a 1536 MiB guest after a 1 GiB write+free (medians; memtide {} rounds, qemu {} rounds)",
        bal.count(m),
        bal.count(q)
    ));
    say("bench result:   VMM       inflate s  deflate s  MemTotal inflated MiB");
    for v in [m, q] {
        say(&format!(
            "bench result:   {:<8}  {:>9.2}  {:>9.2}  {:>21.0}",
            v.name(),
            bal.med(v, "inflate"),
            bal.med(v, "deflate"),
            bal.med(v, "memtotal_inflated_mib")
        ));
    }
    say(&format!(
        "bench result:   memtide / qemu ratio: inflate {:.2}, deflate {:.2}",
        bal.med(m, "inflate") / bal.med(q, "inflate"),
        bal.med(m, "deflate") / bal.med(q, "deflate")
    ));
}
