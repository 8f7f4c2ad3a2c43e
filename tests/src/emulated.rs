//! The emulated KVM host: `qemu-system-x86_64 -accel tcg -cpu max` running the Debian kernel
//! with irqbypass/kvm/kvm-amd loaded (nested SVM under TCG can boot unmodified Linux guests),
//! host NUMA nodes as configured, and an initramfs holding busybox, QEMU (the reference VMM,
//! with its libraries and firmware), the guest image, and the caller's extra binaries and files.
//!
//! Consoles: the host's ttyS0 is the harness's command line ([`Shell`]); ttyS1..ttyS3 are guest
//! slots, each a Unix socket on the harness side, so up to [`GUEST_SLOTS`] guests (each VMM
//! started with its stdio on one slot) can be driven at once next to host commands.

use crate::cache::{default_cache_dir, ensure_dir};
use crate::console::{Console, ConsoleError, HEARTBEAT};
use crate::cpio::Archive;
use crate::debian::DebianKernel;
use crate::error::{Error, Result};
use crate::guest::{Guest, Reaper, VMM_EXIT_MARKER};
use crate::image::{add_binary, GuestImage};
use crate::kmod::ModuleIndex;
use crate::retry::{retry_boot_at_most, Policy, HOST_BOOTS};
use crate::shell::{CmdOutput, Shell};
use crate::timing::say;
use crate::tools::{self, shell_quote};
use memtide_guest_agent::protocol::parse_node_list;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Guest consoles the host offers (its ttyS1..ttyS3).
pub const GUEST_SLOTS: usize = 3;
/// The guest kernel inside the host.
pub const HOST_GUEST_KERNEL: &str = "/guest/vmlinuz";
/// The guest initramfs inside the host.
pub const HOST_GUEST_INITRD: &str = "/guest/initrd.gz";
/// Where extra binaries go inside the host (`/bin/<file name>`).
pub const HOST_BIN_DIR: &str = "/bin";
/// QEMU inside the host.
pub const HOST_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The host's address on QEMU's user-mode network (forwarded ports arrive there).
pub const HOST_NET_ADDR: &str = "10.0.2.15";
/// The line the host's init prints when it is ready for commands.
pub const READY_MARKER: &str = "MEMTIDE-HOST-READY";

/// Seconds between the host's heartbeats on its console.
pub const HEARTBEAT_EVERY_S: u32 = 5;

/// A host silent for longer than this (no heartbeat) is taken for hung. Generous: a host
/// whose guests keep its emulated CPUs busy still beats every few seconds.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(30);

/// How long the host behind `console` has been silent, if longer than [`HEARTBEAT_STALE`];
/// None while it beats (or if it never did: nothing to judge by).
pub(crate) fn host_silence(console: &Console) -> Option<Duration> {
    console
        .heartbeat_silence()
        .filter(|silence| *silence > HEARTBEAT_STALE)
}

/// What the host's kernel prints (at `dmesg -n 1`, emergencies only) when it is no longer fit
/// to run guests: a CPU stuck for tens of seconds, a panic, an oops.
const KERNEL_TROUBLE: &[&str] = &[
    "BUG: soft lockup",
    "hard LOCKUP",
    "self-detected stall",
    "Kernel panic",
    "BUG: kernel NULL pointer",
    "BUG: TASK stack guard page",
    "Oops:",
];

/// Why the host behind `console` is dead though its QEMU runs: silent for longer than
/// [`HEARTBEAT_STALE`], or its kernel reported a lockup, panic or oops. None for a healthy host.
pub(crate) fn host_trouble(console: &Console) -> Option<String> {
    if let Some(silence) = host_silence(console) {
        return Some(format!("has printed no heartbeat for {silence:.0?}"));
    }
    console
        .lines_since(0)
        .into_iter()
        .find(|l| KERNEL_TROUBLE.iter().any(|k| l.text.contains(k)))
        .map(|l| format!("kernel reported {:?}", l.text.trim()))
}
/// The line the host's init prints when its command loop ends, before powering off.
pub const END_MARKER: &str = "MEMTIDE-HOST-END";

/// Modules the host loads (with their dependencies).
const HOST_MODULES: &[&str] = &["kvm_amd"];
/// Modules for user-mode networking.
const NET_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// QEMU firmware and option ROMs needed for `-M q35`, `-M pc` and `-M microvm` guests
/// (found with `strace -e openat`: bios-256k.bin, kvmvapic.bin, linuxboot_dma.bin for q35;
/// the rest for pc, microvm, multiboot/pvh kernels and VGA).
const QEMU_DATA: &[&str] = &[
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/seabios/bios.bin",
    "/usr/share/seabios/bios-microvm.bin",
    "/usr/share/seabios/vgabios-stdvga.bin",
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/qboot.rom",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/multiboot.bin",
    "/usr/share/qemu/multiboot_dma.bin",
    "/usr/share/qemu/pvh.bin",
];

/// What the emulated host looks like.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Memory per host NUMA node in MiB (one node per entry; default 2 × 2048).
    pub nodes_mib: Vec<u64>,
    /// Host vCPUs (default 2), spread over the nodes in contiguous ranges.
    pub cpus: u32,
    /// The guest image to put in the host (default: [`GuestImage::ensure`]).
    pub image: Option<GuestImage>,
    /// Binaries to put at `/bin/<file name>` in the host, with their shared libraries.
    pub extra_binaries: Vec<PathBuf>,
    /// Strip debug info from the extra binaries' copies (default true: a debug build of
    /// memtide is ~35 MiB, most of it debug info, which the TCG host would unpack at boot).
    pub strip_binaries: bool,
    /// Files to put into the host: (local file, absolute path in the host).
    pub extra_files: Vec<(PathBuf, String)>,
    /// TCP ports inside the host to forward from free loopback ports outside
    /// (user-mode networking; a server inside must listen on 0.0.0.0 or [`HOST_NET_ADDR`]).
    pub forward_ports: Vec<u16>,
    /// Extra host kernel arguments.
    pub kernel_args: String,
    /// How long the host may take to print its ready line.
    pub boot_timeout: Duration,
    /// Boots [`EmulatedHost::start`] may use (default [`HOST_BOOTS`]: a dead host is booted
    /// once more). A test that wraps the whole scenario in [`crate::retry_boot`] with
    /// [`Policy::Host`] sets 1 so the total stays within the policy.
    pub boots: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            nodes_mib: vec![2048, 2048],
            cpus: 2,
            image: None,
            extra_binaries: Vec::new(),
            strip_binaries: true,
            extra_files: Vec::new(),
            forward_ports: Vec::new(),
            kernel_args: String::new(),
            boot_timeout: Duration::from_secs(90),
            boots: HOST_BOOTS,
        }
    }
}

impl HostConfig {
    fn validate(&self) -> Result<()> {
        if self.nodes_mib.is_empty() || self.nodes_mib.iter().any(|m| *m < 256) {
            return Err(Error::Config(format!(
                "host nodes_mib {:?}: need at least one node, each of at least 256 MiB",
                self.nodes_mib
            )));
        }
        if self.cpus == 0 || self.cpus > 16 {
            return Err(Error::Config(format!(
                "host cpus {} not in 1..=16",
                self.cpus
            )));
        }
        for b in &self.extra_binaries {
            if !b.is_file() || b.file_name().is_none() {
                return Err(Error::Config(format!(
                    "extra binary {} is not a file",
                    b.display()
                )));
            }
        }
        for (src, dst) in &self.extra_files {
            if !src.is_file() {
                return Err(Error::Config(format!(
                    "extra file {} is not a file",
                    src.display()
                )));
            }
            if !dst.starts_with('/') {
                return Err(Error::Config(format!(
                    "extra file destination {dst:?} is not absolute"
                )));
            }
        }
        Ok(())
    }
}

/// What the host's ready line said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReady {
    /// Whether /dev/kvm exists in the host.
    pub kvm: bool,
    /// The online NUMA nodes.
    pub nodes: Vec<u32>,
    /// The vCPUs.
    pub cpus: u32,
}

fn parse_ready(line: &str) -> Option<HostReady> {
    let rest = line.trim().strip_prefix(READY_MARKER)?;
    let mut kvm = None;
    let mut nodes = None;
    let mut cpus = None;
    for tok in rest.split_whitespace() {
        match tok.split_once('=') {
            Some(("kvm", v)) => kvm = Some(v == "yes"),
            Some(("nodes", v)) => nodes = parse_node_list(v),
            Some(("cpus", v)) => cpus = v.parse().ok(),
            _ => {}
        }
    }
    Some(HostReady {
        kvm: kvm?,
        nodes: nodes?,
        cpus: cpus?,
    })
}

/// One emulated host at a time per process: tests of one binary run in parallel threads, and
/// two TCG hosts on a 2-core machine would only slow each other into timeouts.
struct HostSlot {
    busy: Mutex<bool>,
    cond: Condvar,
}

static HOST_SLOT: HostSlot = HostSlot {
    busy: Mutex::new(false),
    cond: Condvar::new(),
};

#[derive(Debug)]
struct HostTicket;

impl HostTicket {
    fn take() -> HostTicket {
        let mut busy = HOST_SLOT.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy {
            busy = HOST_SLOT.cond.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy = true;
        HostTicket
    }
}

impl Drop for HostTicket {
    fn drop(&mut self) {
        *HOST_SLOT.busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
        HOST_SLOT.cond.notify_one();
    }
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running emulated host. Dropping it kills QEMU (by pid) and removes its run directory.
#[derive(Debug)]
pub struct EmulatedHost {
    child: Option<Child>,
    console: Console,
    shell: Arc<Mutex<Shell>>,
    slot_consoles: Vec<Console>,
    slots: Arc<Mutex<Vec<bool>>>,
    run_dir: PathBuf,
    ready: HostReady,
    started_at: Instant,
    ready_at: Instant,
    forwards: Vec<(u16, SocketAddr)>,
    binaries: Vec<String>,
    _ticket: HostTicket,
}

/// A free loopback TCP port (bound and released; fine for tests).
pub fn free_loopback_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(Error::io("cannot bind", "127.0.0.1:0"))?;
    let a = l
        .local_addr()
        .map_err(Error::io("cannot read address of", "127.0.0.1:0"))?;
    Ok(a.port())
}

impl EmulatedHost {
    /// Boots a host as `cfg` says and waits for its ready line; a host that dies or stays
    /// silent is booted once more (saying so). A host without /dev/kvm is an error.
    pub fn start(cfg: &HostConfig) -> Result<EmulatedHost> {
        cfg.validate()?;
        let image = match &cfg.image {
            Some(i) => i.clone(),
            None => GuestImage::ensure()?,
        };
        let kernel = match &image.debian {
            Some(k) => k.clone(),
            None => DebianKernel::ensure(&default_cache_dir())?,
        };
        let ticket = HostTicket::take();
        let mut ticket = Some(ticket);
        retry_boot_at_most("emulated KVM host", Policy::Host, cfg.boots, |attempt| {
            let t = ticket.take().unwrap_or_else(HostTicket::take);
            Self::start_once(cfg, &image, &kernel, attempt, t)
        })
    }

    fn start_once(
        cfg: &HostConfig,
        image: &GuestImage,
        kernel: &DebianKernel,
        attempt: u32,
        ticket: HostTicket,
    ) -> Result<EmulatedHost> {
        let qemu = tools::need("qemu-system-x86_64", "qemu-system-x86")?;
        remove_stale_run_dirs(&std::env::temp_dir());
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let run_dir = std::env::temp_dir().join(format!("memtide-host-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&run_dir);
        ensure_dir(&run_dir)?;
        let log_dir = default_cache_dir().join("logs");
        ensure_dir(&log_dir)?;

        let built = Instant::now();
        let (archive, binaries) = host_archive(cfg, image, kernel, &qemu, &run_dir)?;
        let initrd = run_dir.join("host.cpio");
        archive.write_file(&initrd, false)?;
        let build_time = built.elapsed();

        let mut forwards = Vec::new();
        for p in &cfg.forward_ports {
            forwards.push((
                *p,
                SocketAddr::from(([127, 0, 0, 1], free_loopback_port()?)),
            ));
        }
        let total: u64 = cfg.nodes_mib.iter().sum();
        let mut cmd = Command::new(&qemu);
        cmd.args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            &cfg.cpus.to_string(),
        ])
        .args(["-m", &format!("{total}M")])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
        ])
        .args(["-monitor", "none", "-serial", "stdio"]);
        for (i, mib) in cfg.nodes_mib.iter().enumerate() {
            let n = cfg.nodes_mib.len() as u32;
            let (lo, hi) = (i as u32 * cfg.cpus / n, (i as u32 + 1) * cfg.cpus / n);
            let cpus = if hi > lo {
                format!(",cpus={}-{}", lo, hi - 1)
            } else {
                String::new()
            };
            cmd.args([
                "-object",
                &format!("memory-backend-ram,id=m{i},size={mib}M"),
            ])
            .args(["-numa", &format!("node,nodeid={i},memdev=m{i}{cpus}")]);
        }
        for s in 1..=GUEST_SLOTS {
            let sock = run_dir.join(format!("ttyS{s}.sock"));
            cmd.args([
                "-chardev",
                &format!(
                    "socket,id=slot{s},path={},server=on,wait=off",
                    sock.display()
                ),
            ])
            .args(["-serial", &format!("chardev:slot{s}")]);
        }
        if forwards.is_empty() {
            cmd.args(["-nic", "none"]);
        } else {
            let fw: String = forwards
                .iter()
                .map(|(p, local)| format!(",hostfwd=tcp:127.0.0.1:{}-:{p}", local.port()))
                .collect();
            cmd.args(["-nic", &format!("user,model=virtio-net-pci{fw}")]);
        }
        cmd.arg("-kernel")
            .arg(kernel.vmlinuz())
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(
                format!(
                    "console=ttyS0 panic=-1 quiet loglevel=1 {}",
                    cfg.kernel_args
                )
                .trim(),
            );
        let stderr_log = log_dir.join(format!("host-{}-{n}.qemu-stderr", std::process::id()));
        let stderr =
            fs::File::create(&stderr_log).map_err(Error::io("cannot create", &stderr_log))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // A test process killed by a signal must not leave the host running.
        tools::die_with_parent(&mut cmd);

        let started_at = Instant::now();
        let mut child = cmd.spawn().map_err(|e| Error::Command {
            cmd: tools::describe(&cmd),
            detail: e.to_string(),
        })?;
        say(&format!(
            "emulated KVM host {n} (boot {attempt}): pid {}, {} MiB in nodes {:?}, {} vCPUs, initramfs {} MiB built in {:.2} s; console log {}",
            child.id(),
            total,
            cfg.nodes_mib,
            cfg.cpus,
            fs::metadata(&initrd).map(|m| m.len() >> 20).unwrap_or(0),
            build_time.as_secs_f64(),
            log_dir.join(format!("host-{}-{n}.console", std::process::id())).display()
        ));
        let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Config("QEMU's stdio pipes are missing".into()));
        };
        let console = Console::start(
            "host",
            out,
            inp,
            Some(log_dir.join(format!("host-{}-{n}.console", std::process::id()))),
        );
        // From here on a guard reaps QEMU on every path.
        let mut host = EmulatedHost {
            child: Some(child),
            console: console.clone(),
            shell: Arc::new(Mutex::new(Shell::new(console))),
            slot_consoles: Vec::new(),
            slots: Arc::new(Mutex::new(vec![false; GUEST_SLOTS + 1])),
            run_dir,
            ready: HostReady {
                kvm: false,
                nodes: Vec::new(),
                cpus: 0,
            },
            started_at,
            ready_at: started_at,
            forwards,
            binaries,
            _ticket: ticket,
        };
        for s in 1..=GUEST_SLOTS {
            let c = host.connect_slot(s, &log_dir, n)?;
            host.slot_consoles.push(c);
        }
        let line = match host.console.wait_for(READY_MARKER, cfg.boot_timeout) {
            Ok(l) => l,
            Err(ConsoleError::Closed { tail, .. }) => {
                return Err(Error::host_died(
                    "QEMU exited before the host was ready",
                    tail,
                ))
            }
            Err(ConsoleError::Timeout { tail, waited, .. }) => {
                return Err(Error::host_died(
                    format!("no ready line within {waited:?}"),
                    tail,
                ))
            }
            Err(e) => return Err(e.into()),
        };
        host.ready_at = line.at;
        host.ready = parse_ready(&line.text).ok_or_else(|| {
            Error::Config(format!(
                "cannot parse the host's ready line {:?}",
                line.text
            ))
        })?;
        say(&format!(
            "emulated KVM host {n} ready after {:.2} s: kvm={} nodes={:?} cpus={}",
            host.ready_at.duration_since(started_at).as_secs_f64(),
            host.ready.kvm,
            host.ready.nodes,
            host.ready.cpus
        ));
        if !host.ready.kvm {
            let log = host
                .run("dmesg | tail -20", Duration::from_secs(20))
                .map(|o| o.text())
                .unwrap_or_default();
            return Err(Error::NoUsableHost(format!(
                "the emulated host has no /dev/kvm (kvm_amd did not load under `-cpu max`):\n{log}"
            )));
        }
        Ok(host)
    }

    fn connect_slot(&self, slot: usize, log_dir: &Path, n: u32) -> Result<Console> {
        let sock = self.run_dir.join(format!("ttyS{slot}.sock"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match UnixStream::connect(&sock) {
                Ok(s) => {
                    let r = s
                        .try_clone()
                        .map_err(Error::io("cannot clone socket", &sock))?;
                    let log = log_dir.join(format!("host-{}-{n}.ttyS{slot}", std::process::id()));
                    return Ok(Console::start(&format!("ttyS{slot}"), r, s, Some(log)));
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::host_died(
                        format!(
                            "cannot connect to guest console socket {}: {e}",
                            sock.display()
                        ),
                        self.console.tail(),
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// What the host's ready line said (kvm, nodes, cpus).
    pub fn ready(&self) -> &HostReady {
        &self.ready
    }

    /// When QEMU was started.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// When the host's ready line arrived.
    pub fn ready_at(&self) -> Instant {
        self.ready_at
    }

    /// The host console (ttyS0), e.g. to wait for lines a background program prints there.
    pub fn console(&self) -> Console {
        self.console.clone()
    }

    /// Runs a shell command in the host (see [`Shell::run`]).
    pub fn run(&self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let mut sh = self.shell.lock().unwrap_or_else(|p| p.into_inner());
        sh.run(cmd, timeout).map_err(|e| self.host_error(e))
    }

    /// Runs a shell command in the host; fails unless it exits 0.
    pub fn check(&self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let mut sh = self.shell.lock().unwrap_or_else(|p| p.into_inner());
        sh.check(cmd, timeout).map_err(|e| self.host_error(e))
    }

    /// A closed host console means the host died; a command without its end marker from a
    /// host in [`EmulatedHost::trouble`] (silent, or its kernel stuck) means it hung: say so. A command that hangs
    /// in a host that still beats stays a plain timeout (a real failure).
    fn host_error(&self, e: Error) -> Error {
        match e {
            Error::Console(ConsoleError::Closed { tail, .. }) => {
                Error::host_died("QEMU exited (the host kernel died?)", tail)
            }
            Error::Console(ConsoleError::Timeout {
                what, waited, tail, ..
            }) if self.trouble().is_some() => Error::host_died(
                format!(
                    "no end marker {what} within {waited:?}, and the host {}",
                    self.trouble().unwrap_or_default()
                ),
                tail,
            ),
            other => other,
        }
    }

    /// The process id of the host's QEMU (outside), while it runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Why the host is dead though its QEMU runs, if it is: it prints a
    /// [`crate::console::HEARTBEAT`] every [`HEARTBEAT_EVERY_S`] seconds while it runs and was
    /// silent for longer than [`HEARTBEAT_STALE`], or its kernel reported a lockup or panic.
    pub fn trouble(&self) -> Option<String> {
        host_trouble(&self.console)
    }

    /// The path inside the host of an extra binary given by file name.
    pub fn binary(&self, name: &str) -> Result<String> {
        self.binaries
            .iter()
            .find(|b| b.rsplit('/').next() == Some(name))
            .cloned()
            .ok_or_else(|| Error::Config(format!("no extra binary named {name} in the host")))
    }

    /// The loopback address outside that reaches `port` inside the host.
    pub fn forwarded(&self, port: u16) -> Option<SocketAddr> {
        self.forwards
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, a)| *a)
    }

    /// Starts a VMM in the host: `argv` runs with stdin/stdout/stderr on a free guest slot
    /// (ttyS1..), in its own session (killed as a process group when the [`Guest`] drops). The
    /// VMM must put the guest's serial console on its stdio.
    pub fn spawn_guest(&self, label: &str, argv: &[String]) -> Result<Guest> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let free = (1..=GUEST_SLOTS).find(|s| !slots[*s]).ok_or_else(|| {
                Error::Config(format!(
                    "all {GUEST_SLOTS} guest consoles of the host are in use"
                ))
            })?;
            slots[free] = true;
            free
        };
        let release = |slots: &Arc<Mutex<Vec<bool>>>| {
            slots.lock().unwrap_or_else(|p| p.into_inner())[slot] = false;
        };
        let mut console = self.slot_consoles[slot - 1].clone();
        console.skip_to_end();
        let tty = format!("/dev/ttyS{slot}");
        let inner = format!(
            "{} <{tty} >{tty} 2>&1; echo \"{VMM_EXIT_MARKER} $?\" >{tty}",
            argv.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let cmd = format!(
            "setsid sh -c {} >/dev/null 2>&1 & echo $!",
            shell_quote(&inner)
        );
        let spawned_at = Instant::now();
        let out = match self.check(&cmd, Duration::from_secs(30)) {
            Ok(o) => o,
            Err(e) => {
                release(&self.slots);
                return Err(e);
            }
        };
        let pgid: u32 = match out.lines.last().and_then(|l| l.trim().parse().ok()) {
            Some(p) => p,
            None => {
                release(&self.slots);
                return Err(Error::Config(format!(
                    "spawning {label} printed no pid: {:?}",
                    out.lines
                )));
            }
        };
        say(&format!(
            "guest {label}: VMM started in the emulated host on ttyS{slot} (pgid {pgid}): {}",
            argv.join(" ")
        ));
        Ok(Guest::new(
            label,
            console,
            Reaper::InHost {
                shell: Arc::clone(&self.shell),
                host_console: self.console.clone(),
                pgid,
                slot,
                slots: Arc::clone(&self.slots),
            },
            spawned_at,
        ))
    }

    /// Ends the command loop (the host prints its end marker and powers off) and waits for
    /// QEMU to exit. Returns whether the end marker was seen.
    pub fn shutdown(mut self) -> Result<bool> {
        let mut c = self.console.clone();
        c.skip_to_end();
        // `exit` in the command loop's own shell (not a subshell) ends the loop.
        let _ = self.console.send_line("break");
        let ended = c.wait_for(END_MARKER, Duration::from_secs(20)).is_ok();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        Ok(ended)
    }
}

impl Drop for EmulatedHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

/// Removes `memtide-host-<pid>-<n>` run directories (with their ~70 MiB initramfs) left by
/// test processes that were killed before their hosts dropped.
fn remove_stale_run_dirs(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("memtide-host-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The host's /init.
fn host_init(modules: &[String], net: bool) -> String {
    let net_setup = if net {
        format!(
            "ip link set eth0 up; ip addr add {HOST_NET_ADDR}/24 dev eth0; ip route add default via 10.0.2.2\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/shm /dev/pts /run /var/tmp
mount -t tmpfs tmpfs /dev/shm
mount -t devpts devpts /dev/pts
dmesg -n 1
for m in {modules}; do
  insmod /lib/modules/$m.ko || echo "MEMTIDE-HOST-WARN insmod $m failed"
done
ip link set lo up
# Let shmem (memfd) mappings that ask for it (MADV_HUGEPAGE) use transparent huge pages, as
# a host set up for VMs would: memtide's guest memory is memfd-backed.
echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null
{net_setup}for s in 1 2 3; do stty -F /dev/ttyS$s raw -echo 2>/dev/null; done
stty -echo
# A heartbeat on the console, so the harness tells a hung host from a slow command.
( while :; do printf '\036{beat}\n'; sleep {every}; done ) </dev/null >/dev/ttyS0 2>&1 &
kvm=no
[ -c /dev/kvm ] && kvm=yes
echo "{READY_MARKER} kvm=$kvm nodes=$(cat /sys/devices/system/node/online) cpus=$(grep -c ^processor /proc/cpuinfo)"
while read -r line; do
  [ "$line" = break ] && break
  eval "$line"
done
echo "{END_MARKER}"
poweroff -f
"#,
        modules = modules.join(" "),
        beat = &HEARTBEAT[1..],
        every = HEARTBEAT_EVERY_S,
    )
}

/// Everything that goes into the host's initramfs; also returns the extra binaries' paths
/// inside the host.
fn host_archive(
    cfg: &HostConfig,
    image: &GuestImage,
    kernel: &DebianKernel,
    qemu: &Path,
    run_dir: &Path,
) -> Result<(Archive, Vec<String>)> {
    let mut a = Archive::linux_root(&["guest"])?;
    let idx = ModuleIndex::scan(&kernel.modules_dir())?;
    let mut wanted: Vec<&str> = HOST_MODULES.to_vec();
    if !cfg.forward_ports.is_empty() {
        wanted.extend_from_slice(NET_MODULES);
    }
    let modules = idx.load_order(&wanted)?;
    for m in &modules {
        a.file(&format!("lib/modules/{}.ko", m.name), &m.path)?;
    }
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    a.data(
        "init",
        host_init(&names, !cfg.forward_ports.is_empty()),
        0o755,
    )?;
    add_binary(
        &mut a,
        &tools::need("busybox", "busybox-static")?,
        "bin/busybox",
    )?;
    add_binary(&mut a, qemu, HOST_QEMU)?;
    for f in QEMU_DATA {
        let p = Path::new(f);
        if p.exists() {
            a.file(f, p)?;
        }
    }
    a.file(HOST_GUEST_KERNEL, &image.kernel)?;
    a.file(HOST_GUEST_INITRD, &image.initrd)?;
    let mut binaries = Vec::new();
    for b in &cfg.extra_binaries {
        let name = b.file_name().and_then(|n| n.to_str()).unwrap_or("binary");
        let dest = format!("{HOST_BIN_DIR}/{name}");
        let src = if cfg.strip_binaries && tools::which("strip").is_some() {
            let stripped = run_dir.join(format!("stripped-{name}"));
            tools::run(
                Command::new("strip")
                    .arg("--strip-debug")
                    .arg("-o")
                    .arg(&stripped)
                    .arg(b),
            )?;
            stripped
        } else {
            b.clone()
        };
        add_binary(&mut a, &src, &dest)?;
        binaries.push(dest);
    }
    for (src, dst) in &cfg.extra_files {
        a.file(dst, src)?;
    }
    Ok((a, binaries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_run_dirs_of_dead_processes_are_removed() {
        let tmp = std::env::temp_dir().join(format!("memtide-stale-test-{}", std::process::id()));
        let dead = tmp.join("memtide-host-999999999-0");
        let mine = tmp.join(format!("memtide-host-{}-7", std::process::id()));
        let other = tmp.join("unrelated-1");
        for d in [&dead, &mine, &other] {
            fs::create_dir_all(d).expect("dir");
        }
        remove_stale_run_dirs(&tmp);
        assert!(!dead.exists() && mine.exists() && other.exists());
        let _ = fs::remove_dir_all(&tmp);
    }

    #[test]
    fn ready_line_parses() {
        assert_eq!(
            parse_ready("MEMTIDE-HOST-READY kvm=yes nodes=0-1 cpus=2"),
            Some(HostReady {
                kvm: true,
                nodes: vec![0, 1],
                cpus: 2
            })
        );
        assert_eq!(
            parse_ready("MEMTIDE-HOST-READY kvm=no nodes=0 cpus=1").map(|r| r.kvm),
            Some(false)
        );
        assert_eq!(parse_ready("MEMTIDE-HOST-READY kvm=yes"), None);
        assert_eq!(parse_ready("hello"), None);
    }

    #[test]
    fn host_init_is_valid_shell_loading_modules_in_order() {
        let s = host_init(&["irqbypass".into(), "kvm".into(), "kvm_amd".into()], true);
        assert!(s.contains("for m in irqbypass kvm kvm_amd; do"));
        assert!(s.contains("ip addr add 10.0.2.15/24 dev eth0"));
        let out = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = [
            HostConfig {
                nodes_mib: vec![],
                ..HostConfig::default()
            },
            HostConfig {
                nodes_mib: vec![100],
                ..HostConfig::default()
            },
            HostConfig {
                cpus: 0,
                ..HostConfig::default()
            },
            HostConfig {
                extra_binaries: vec!["/nonexistent/x".into()],
                ..HostConfig::default()
            },
            HostConfig {
                extra_files: vec![("/etc/hostname".into(), "rel".into())],
                ..HostConfig::default()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(Error::Config(_))), "{c:?}");
        }
        assert!(HostConfig::default().validate().is_ok());
    }
}
