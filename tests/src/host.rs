//! KVM host selection and the host tests run guests on: the machine itself when its /dev/kvm
//! can run an unmodified Linux guest (hardware VMX/SVM), else the emulated KVM host.
//! The choice and its reason are always printed; no usable host is an error naming what is
//! missing (a test must fail then, never pass).
//!
//! `MEMTIDE_KVM_HOST=emulated` forces the emulated host (e.g. to test it on a hardware
//! machine); `MEMTIDE_KVM_HOST=hardware` forces hardware KVM (an error if unusable).

use crate::console::Console;
use crate::emulated::{EmulatedHost, HostConfig, HOST_GUEST_INITRD, HOST_GUEST_KERNEL, HOST_QEMU};
use crate::error::{Error, Result};
use crate::guest::{Guest, Reaper, VMM_EXIT_MARKER};
use crate::image::{GuestImage, DEFAULT_CMDLINE};
use crate::retry::{retry_boot, Policy};
use crate::shell::CmdOutput;
use crate::timing::say;
use crate::tools::{self, shell_quote};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The kind of KVM host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// This machine's /dev/kvm (hardware virtualization).
    Hardware,
    /// The emulated KVM host under QEMU TCG.
    Emulated,
}

/// Which host the tests run on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The kind chosen.
    pub kind: HostKind,
    /// Why (what was checked).
    pub reason: String,
}

/// Whether this machine's /dev/kvm can boot an unmodified Linux guest; `Err` says why not.
pub fn hardware_kvm_usable() -> std::result::Result<String, String> {
    hardware_kvm_usable_at(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

fn hardware_kvm_usable_at(dev: &Path, modules: &Path) -> std::result::Result<String, String> {
    if !dev.exists() {
        return Err(format!("{} does not exist", dev.display()));
    }
    if modules.join("kvm_pvm").exists() {
        return Err(format!(
            "{} belongs to a PVM KVM ({} exists), which cannot boot an unmodified Linux guest",
            dev.display(),
            modules.join("kvm_pvm").display()
        ));
    }
    let vendor = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| modules.join(m).exists());
    let Some(vendor) = vendor else {
        return Err("neither kvm_intel nor kvm_amd is loaded (no hardware VMX/SVM KVM)".into());
    };
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))?;
    Ok(format!(
        "{} is usable: {vendor} is loaded (hardware virtualization)",
        dev.display()
    ))
}

/// Whether the emulated host can be started; `Err` says what is missing.
pub fn emulated_host_usable() -> std::result::Result<String, String> {
    let mut missing = Vec::new();
    if tools::which("qemu-system-x86_64").is_none() {
        missing.push("qemu-system-x86_64 (Debian package qemu-system-x86)");
    }
    if tools::which("busybox").is_none() {
        missing.push("busybox (Debian package busybox-static)");
    }
    if tools::which("apt-get").is_none() || tools::which("dpkg").is_none() {
        missing.push("apt-get and dpkg (to fetch the Debian kernel)");
    }
    if missing.is_empty() {
        Ok("qemu-system-x86_64 and busybox are installed".into())
    } else {
        Err(format!(
            "missing {} (scripts/install-deps.sh installs them)",
            missing.join(", ")
        ))
    }
}

impl Selection {
    /// Decides which host to use (see the module docs). Does not print.
    pub fn detect() -> Result<Selection> {
        let forced = std::env::var("MEMTIDE_KVM_HOST").unwrap_or_default();
        Self::decide(&forced, hardware_kvm_usable(), emulated_host_usable)
    }

    /// The decision itself: `forced` is MEMTIDE_KVM_HOST (empty if unset), `hw` the hardware
    /// check, `emulated` the emulated host's check (only run when needed).
    pub fn decide(
        forced: &str,
        hw: std::result::Result<String, String>,
        emulated: impl FnOnce() -> std::result::Result<String, String>,
    ) -> Result<Selection> {
        match (forced, hw) {
            ("hardware" | "", Ok(why)) => Ok(Selection {
                kind: HostKind::Hardware,
                reason: why,
            }),
            ("hardware", Err(why)) => Err(Error::NoUsableHost(format!(
                "MEMTIDE_KVM_HOST=hardware, but {why}"
            ))),
            ("" | "emulated", hw) => {
                let prefix = match (forced, hw) {
                    ("emulated", _) => "MEMTIDE_KVM_HOST=emulated".to_string(),
                    (_, Err(why)) => format!("hardware KVM unusable: {why}"),
                    (_, Ok(why)) => why,
                };
                match emulated() {
                    Ok(_) => Ok(Selection {
                        kind: HostKind::Emulated,
                        reason: format!(
                            "{prefix}; using the emulated KVM host (QEMU TCG -cpu max with nested SVM)"
                        ),
                    }),
                    Err(why) => Err(Error::NoUsableHost(format!(
                        "{prefix}; emulated host unusable: {why}"
                    ))),
                }
            }
            (other, _) => Err(Error::Config(format!(
                "MEMTIDE_KVM_HOST={other:?}: expected `hardware` or `emulated`"
            ))),
        }
    }

    /// Prints the selection.
    pub fn announce(&self) {
        say(&format!("KVM host: {:?} ({})", self.kind, self.reason));
    }
}

/// The local machine as KVM host.
#[derive(Debug)]
pub struct HardwareHost {
    image: GuestImage,
    binaries: Vec<String>,
    daemons: std::sync::Mutex<Vec<std::process::Child>>,
}

impl Drop for HardwareHost {
    fn drop(&mut self) {
        let daemons = self.daemons.get_mut().unwrap_or_else(|p| p.into_inner());
        for mut c in daemons.drain(..) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A host to run guests on: hardware KVM or the emulated host, behind one interface.
#[derive(Debug)]
pub enum KvmHost {
    /// This machine (boxed: the variants differ much in size).
    Hardware(Box<HardwareHost>),
    /// The emulated KVM host (boxed: it is large).
    Emulated(Box<EmulatedHost>),
}

impl KvmHost {
    /// Selects the host (printing the choice and why) and starts it. On hardware KVM the
    /// config's node layout is not applied (the machine's own NUMA nodes are used; printed).
    pub fn start(cfg: &HostConfig) -> Result<(Selection, KvmHost)> {
        let sel = Selection::detect()?;
        sel.announce();
        let host = match sel.kind {
            HostKind::Hardware => {
                say(&format!(
                    "hardware KVM host: the machine's own NUMA nodes are used (asked for {:?} MiB)",
                    cfg.nodes_mib
                ));
                let image = match &cfg.image {
                    Some(i) => i.clone(),
                    None => GuestImage::ensure()?,
                };
                let binaries = cfg
                    .extra_binaries
                    .iter()
                    .map(|b| b.to_string_lossy().into_owned())
                    .collect();
                KvmHost::Hardware(Box::new(HardwareHost {
                    image,
                    binaries,
                    daemons: Default::default(),
                }))
            }
            HostKind::Emulated => KvmHost::Emulated(Box::new(EmulatedHost::start(cfg)?)),
        };
        Ok((sel, host))
    }

    /// This machine as host without checking /dev/kvm: for VMMs that need no KVM (QEMU with
    /// TCG), so the local-guest path of the harness can be exercised anywhere. Extra binaries
    /// are used where they are.
    pub fn local(image: GuestImage, extra_binaries: &[std::path::PathBuf]) -> KvmHost {
        KvmHost::Hardware(Box::new(HardwareHost {
            image,
            binaries: extra_binaries
                .iter()
                .map(|b| b.to_string_lossy().into_owned())
                .collect(),
            daemons: Default::default(),
        }))
    }

    /// The kind of this host.
    pub fn kind(&self) -> HostKind {
        match self {
            KvmHost::Hardware(_) => HostKind::Hardware,
            KvmHost::Emulated(_) => HostKind::Emulated,
        }
    }

    /// The emulated host, if this is one.
    pub fn emulated(&self) -> Option<&EmulatedHost> {
        match self {
            KvmHost::Emulated(h) => Some(h),
            KvmHost::Hardware(_) => None,
        }
    }

    /// The guest kernel's path as seen by the host.
    pub fn guest_kernel(&self) -> String {
        match self {
            KvmHost::Hardware(h) => h.image.kernel.to_string_lossy().into_owned(),
            KvmHost::Emulated(_) => HOST_GUEST_KERNEL.to_string(),
        }
    }

    /// The guest initramfs's path as seen by the host.
    pub fn guest_initrd(&self) -> String {
        match self {
            KvmHost::Hardware(h) => h.image.initrd.to_string_lossy().into_owned(),
            KvmHost::Emulated(_) => HOST_GUEST_INITRD.to_string(),
        }
    }

    /// QEMU's path as seen by the host.
    pub fn qemu(&self) -> Result<String> {
        match self {
            KvmHost::Hardware(_) => Ok(tools::need("qemu-system-x86_64", "qemu-system-x86")?
                .to_string_lossy()
                .into_owned()),
            KvmHost::Emulated(_) => Ok(HOST_QEMU.to_string()),
        }
    }

    /// The path (as seen by the host) of an extra binary given by file name.
    pub fn binary(&self, name: &str) -> Result<String> {
        match self {
            KvmHost::Hardware(h) => h
                .binaries
                .iter()
                .find(|b| Path::new(b).file_name().and_then(|n| n.to_str()) == Some(name))
                .cloned()
                .ok_or_else(|| Error::Config(format!("no extra binary named {name}"))),
            KvmHost::Emulated(h) => h.binary(name),
        }
    }

    /// Runs a shell command on the host (`sh -c` locally on hardware).
    pub fn run(&self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        match self {
            KvmHost::Emulated(h) => h.run(cmd, timeout),
            KvmHost::Hardware(_) => run_local(cmd, timeout),
        }
    }

    /// Runs a shell command on the host; fails unless it exits 0.
    pub fn check(&self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let out = self.run(cmd, timeout)?;
        if out.status != 0 {
            return Err(Error::HostCommand {
                cmd: cmd.to_string(),
                status: out.status,
                output: out.text(),
            });
        }
        Ok(out)
    }

    /// Starts a background program on the host (e.g. `memtide serve`) in its own session,
    /// output to `log` (a path on the host), stdin from /dev/null; returns its pid. It is
    /// killed with the host (emulated: with the host's QEMU; hardware: when the host drops).
    pub fn spawn_daemon(&self, argv: &[String], log: &str) -> Result<u32> {
        let line = argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        match self {
            KvmHost::Emulated(h) => {
                let out = h.check(
                    &format!(
                        "setsid {line} >{} 2>&1 </dev/null & echo $!",
                        shell_quote(log)
                    ),
                    Duration::from_secs(30),
                )?;
                out.lines
                    .last()
                    .and_then(|l| l.trim().parse().ok())
                    .ok_or_else(|| {
                        Error::Config(format!("starting {line} printed no pid: {:?}", out.lines))
                    })
            }
            KvmHost::Hardware(h) => {
                let file = std::fs::File::create(log).map_err(Error::io("cannot create", log))?;
                let err = file.try_clone().map_err(Error::io("cannot reopen", log))?;
                let (prog, args) = argv
                    .split_first()
                    .ok_or_else(|| Error::Config("spawn_daemon needs a program".into()))?;
                let mut cmd = Command::new(prog);
                cmd.args(args)
                    .stdin(Stdio::null())
                    .stdout(file)
                    .stderr(err)
                    .process_group(0);
                tools::die_with_parent(&mut cmd);
                let child = cmd.spawn().map_err(|e| Error::Command {
                    cmd: line.clone(),
                    detail: e.to_string(),
                })?;
                let pid = child.id();
                h.daemons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(child);
                Ok(pid)
            }
        }
    }

    /// The address outside that reaches TCP `port` on the host.
    pub fn forwarded(&self, port: u16) -> Option<SocketAddr> {
        match self {
            KvmHost::Emulated(h) => h.forwarded(port),
            KvmHost::Hardware(_) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        }
    }

    /// Starts a VMM (`argv`, paths as seen by the host) whose stdio is the guest's serial
    /// console; returns the guest handle (not yet waited for).
    pub fn spawn_guest(&self, label: &str, argv: &[String]) -> Result<Guest> {
        match self {
            KvmHost::Emulated(h) => h.spawn_guest(label, argv),
            KvmHost::Hardware(_) => {
                let script = format!(
                    "{} 2>&1; echo \"{VMM_EXIT_MARKER} $?\"",
                    argv.iter()
                        .map(|a| shell_quote(a))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(&script)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .process_group(0);
                let spawned_at = Instant::now();
                let mut child = cmd.spawn().map_err(|e| Error::Command {
                    cmd: script.clone(),
                    detail: e.to_string(),
                })?;
                let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Config("the VMM's stdio pipes are missing".into()));
                };
                say(&format!(
                    "guest {label}: VMM started locally (pid {}): {}",
                    child.id(),
                    argv.join(" ")
                ));
                let console = Console::start(label, out, inp, None);
                Ok(Guest::new(label, console, Reaper::Local(child), spawned_at))
            }
        }
    }

    /// Boots a guest and waits for its agent, with the dead-boot policy: a VMM that exits
    /// before the agent's first line, or no agent line within `timeout`, boots the guest again
    /// (at most twice more, printed). `argv` is built per attempt.
    pub fn boot_guest(
        &self,
        label: &str,
        timeout: Duration,
        mut argv: impl FnMut(u32) -> Vec<String>,
    ) -> Result<Guest> {
        retry_boot(&format!("guest {label}"), Policy::Guest, |attempt| {
            let mut g = self.spawn_guest(label, &argv(attempt))?;
            g.wait_agent(timeout)?;
            Ok(g)
        })
    }
}

/// Runs `cmd` with `sh -c` (stdin /dev/null, stderr merged) in its own process group; kills
/// the group after `timeout` ([`Error::Timeout`]).
fn run_local(cmd: &str, timeout: Duration) -> Result<CmdOutput> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("( {cmd} ) 2>&1"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Command {
            cmd: cmd.to_string(),
            detail: e.to_string(),
        })?;
    let Some(out) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Config("sh's stdout pipe is missing".into()));
    };
    let console = Console::start("host-sh", out, std::io::sink(), None);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .stderr(Stdio::null())
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout {
                    what: format!("host command {cmd:?}"),
                    waited: timeout,
                    last: console.tail(),
                });
            }
        }
    };
    // Output ends when every writer is gone; a background program that kept stdout open
    // would hold it forever, so give the reader only a moment after the exit.
    let closed_by = Instant::now() + Duration::from_secs(1);
    while !console.is_closed() && Instant::now() < closed_by {
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(CmdOutput {
        status: status.code().unwrap_or(-1),
        lines: console.lines_since(0).into_iter().map(|l| l.text).collect(),
    })
}

/// The machine type of a reference QEMU guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm` (ISA serial, no PCI; fastest boot).
    Microvm,
    /// `-M q35`.
    Q35,
}

/// A guest booted by QEMU as the reference VMM (`-accel kvm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuGuest {
    /// Machine type.
    pub machine: Machine,
    /// Boot memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Kernel command line added to [`DEFAULT_CMDLINE`].
    pub cmdline: String,
    /// More QEMU arguments (devices, `-numa`, `-qmp` ...).
    pub extra: Vec<String>,
    /// Emulate the CPU (`-accel tcg -cpu max`) instead of `-accel kvm -cpu host`: for
    /// [`KvmHost::local`] checks of the harness on machines without usable KVM. Use
    /// [`Machine::Q35`] then: a microvm guest under TCG hangs calibrating its TSC (no PIT/HPET).
    pub tcg: bool,
}

impl Default for QemuGuest {
    fn default() -> Self {
        QemuGuest {
            machine: Machine::Microvm,
            memory_mib: 512,
            cpus: 1,
            cmdline: String::new(),
            extra: Vec::new(),
            tcg: false,
        }
    }
}

impl QemuGuest {
    /// The QEMU command line booting the guest image on `host`, serial console on stdio.
    pub fn argv(&self, host: &KvmHost) -> Result<Vec<String>> {
        let machine = match self.machine {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        };
        let mut v: Vec<String> = vec![host.qemu()?];
        let s = |x: &str| x.to_string();
        let (accel, cpu) = if self.tcg {
            ("tcg", "max")
        } else {
            ("kvm", "host")
        };
        v.extend([
            s("-M"),
            s(machine),
            s("-accel"),
            s(accel),
            s("-cpu"),
            s(cpu),
        ]);
        v.extend([
            s("-m"),
            format!("{}M", self.memory_mib),
            s("-smp"),
            self.cpus.to_string(),
        ]);
        v.extend([
            s("-nodefaults"),
            s("-no-user-config"),
            s("-display"),
            s("none"),
            s("-no-reboot"),
        ]);
        v.extend([s("-serial"), s("stdio")]);
        v.extend([
            s("-kernel"),
            host.guest_kernel(),
            s("-initrd"),
            host.guest_initrd(),
        ]);
        v.extend([
            s("-append"),
            format!("{DEFAULT_CMDLINE} {}", self.cmdline)
                .trim()
                .to_string(),
        ]);
        v.extend(self.extra.iter().cloned());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_and_missing_kvm_are_unusable_with_reasons() {
        let d = std::env::temp_dir().join(format!("memtide-select-{}", std::process::id()));
        let m = d.join("module");
        std::fs::create_dir_all(&m).expect("dir");
        let dev = d.join("kvm");
        let e = hardware_kvm_usable_at(&dev, &m).expect_err("no device");
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(&dev, b"").expect("fake dev");
        std::fs::create_dir_all(m.join("kvm_pvm")).expect("dir");
        let e = hardware_kvm_usable_at(&dev, &m).expect_err("pvm");
        assert!(e.contains("PVM"), "{e}");
        std::fs::remove_dir(m.join("kvm_pvm")).expect("rm");
        let e = hardware_kvm_usable_at(&dev, &m).expect_err("no vendor module");
        assert!(e.contains("kvm_intel"), "{e}");
        std::fs::create_dir_all(m.join("kvm_amd")).expect("dir");
        let ok = hardware_kvm_usable_at(&dev, &m).expect("usable");
        assert!(ok.contains("kvm_amd"), "{ok}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_decision_follows_the_checks_and_the_override() {
        let ok = || Ok::<String, String>("fine".into());
        let no = || Err::<String, String>("qemu-system-x86_64 missing".into());
        let pvm = || Err::<String, String>("PVM KVM".into());
        let hw = Selection::decide("", ok(), no).expect("hardware");
        assert_eq!(hw.kind, HostKind::Hardware);
        let em = Selection::decide("", pvm(), ok).expect("emulated");
        assert_eq!(em.kind, HostKind::Emulated);
        assert!(
            em.reason.contains("PVM KVM") && em.reason.contains("emulated"),
            "{}",
            em.reason
        );
        assert_eq!(
            Selection::decide("emulated", ok(), ok)
                .expect("forced")
                .kind,
            HostKind::Emulated
        );
        // No usable host is an error that says what is missing, never a silent pass.
        match Selection::decide("", pvm(), no) {
            Err(Error::NoUsableHost(why)) => {
                assert!(
                    why.contains("PVM KVM") && why.contains("qemu-system-x86_64 missing"),
                    "{why}"
                )
            }
            other => panic!("expected NoUsableHost, got {other:?}"),
        }
        assert!(matches!(
            Selection::decide("hardware", pvm(), ok),
            Err(Error::NoUsableHost(_))
        ));
        assert!(matches!(
            Selection::decide("tcg", ok(), ok),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn this_machine_is_classified() {
        // Whatever this machine is, detection gives a kind with a reason or says what is
        // missing; on these PVM machines it must not pick hardware.
        match Selection::detect() {
            Ok(sel) => {
                assert!(!sel.reason.is_empty());
                if Path::new("/sys/module/kvm_pvm").exists() {
                    assert_eq!(sel.kind, HostKind::Emulated);
                }
            }
            Err(Error::NoUsableHost(why)) => assert!(!why.is_empty()),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn fake_host() -> KvmHost {
        let image = GuestImage {
            kernel: "/nonexistent/vmlinuz".into(),
            initrd: "/nonexistent/initrd".into(),
            modules: Vec::new(),
            debian: None,
            agent: "/nonexistent/agent".into(),
        };
        KvmHost::Hardware(Box::new(HardwareHost {
            image,
            binaries: vec!["/bin/sh".into()],
            daemons: Default::default(),
        }))
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// A stand-in for a VMM whose guest agent answers one `echo` and one `poweroff`.
    const FAKE_AGENT: &str = "echo booting; echo 'AGENT ready version=1'; read c; \
        echo 'AGENT out hi'; echo 'AGENT done cmd=echo status=ok'; read c; \
        echo 'AGENT done cmd=poweroff status=ok'; exit 0";

    #[test]
    fn guests_are_driven_and_deaths_classified_without_a_vm() {
        let host = fake_host();
        assert_eq!(host.binary("sh").expect("listed"), "/bin/sh");
        let t = Duration::from_secs(20);

        let mut g = host
            .spawn_guest("dies", &sh("echo kernel panic; exit 3"))
            .expect("spawn");
        let e = g.wait_agent(t).expect_err("dies");
        assert!(
            matches!(e, Error::GuestDied { .. }) && e.to_string().contains("status 3"),
            "{e}"
        );
        assert_eq!(g.exit_status(), Some(3));

        let mut g = host.spawn_guest("silent", &sh("sleep 30")).expect("spawn");
        let pid = g.vmm_pid().expect("a pid");
        let e = g
            .wait_agent(Duration::from_millis(300))
            .expect_err("silent");
        assert!(matches!(e, Error::GuestSilent { .. }), "{e}");
        drop(g);
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(
            !alive.success(),
            "the silent VMM's process group was killed on drop"
        );

        let mut g = host.spawn_guest("ok", &sh(FAKE_AGENT)).expect("spawn");
        g.wait_agent(t).expect("agent");
        assert!(g.agent_at().is_some());
        let recs = g.command("echo hi", t).expect("echo");
        assert_eq!(
            recs[0],
            memtide_guest_agent::protocol::Record::Out("hi".into())
        );
        assert_eq!(g.poweroff(t).expect("poweroff"), 0);

        // An agent that is restarted by init while a command runs (OOM kill) is an error.
        let mut g = host
            .spawn_guest(
                "oom",
                &sh("echo 'AGENT ready version=1'; read c; echo 'AGENT ready version=1'; sleep 5"),
            )
            .expect("spawn");
        g.wait_agent(t).expect("agent");
        let e = g.fill(100).expect_err("restarted");
        assert!(e.to_string().contains("restarted"), "{e}");
    }

    #[test]
    fn local_host_commands_return_output_and_time_out() {
        let host = fake_host();
        let t = Duration::from_secs(10);
        let o = host.run("echo a; echo b >&2; exit 4", t).expect("runs");
        assert_eq!(
            o,
            CmdOutput {
                status: 4,
                lines: vec!["a".into(), "b".into()]
            }
        );
        assert!(matches!(
            host.check("false", t),
            Err(Error::HostCommand { status: 1, .. })
        ));
        let started = Instant::now();
        let e = host
            .run("echo slow; sleep 30", Duration::from_millis(300))
            .expect_err("times out");
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn daemons_run_with_a_log_and_die_with_the_host() {
        let host = fake_host();
        let log = std::env::temp_dir().join(format!("memtide-daemon-{}.log", std::process::id()));
        let log = log.to_string_lossy().into_owned();
        let pid = host
            .spawn_daemon(&sh("echo started; exec sleep 30"), &log)
            .expect("spawn");
        wait_until_log(&log, "started");
        drop(host);
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .expect("kill");
        assert!(!alive.success(), "the daemon was killed with the host");
        let _ = std::fs::remove_file(&log);
        assert!(matches!(
            fake_host().spawn_daemon(&[], &log),
            Err(Error::Config(_))
        ));
    }

    fn wait_until_log(log: &str, text: &str) {
        crate::retry::wait_until(
            "daemon log",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                Ok(std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .contains(text))
            },
        )
        .expect("log written");
    }

    #[test]
    fn boot_guest_boots_a_dead_guest_again_at_most_twice() {
        let host = fake_host();
        let t = Duration::from_secs(20);
        let mut attempts = Vec::new();
        let g = host
            .boot_guest("flaky", t, |a| {
                attempts.push(a);
                if a < 3 {
                    sh("exit 0")
                } else {
                    sh(FAKE_AGENT)
                }
            })
            .expect("third boot works");
        drop(g);
        assert_eq!(attempts, vec![1, 2, 3]);
        let mut n = 0;
        let e = host
            .boot_guest("dead", t, |_| {
                n += 1;
                sh("exit 0")
            })
            .expect_err("always dead");
        assert!(e.is_dead_guest());
        assert_eq!(n, 3);
        // A guest whose agent answers wrongly is not booted again.
        let mut n = 0;
        let mut g = host
            .boot_guest("wrong", t, |_| {
                n += 1;
                sh("echo 'AGENT ready version=1'; read c; echo 'AGENT done cmd=verify status=err msg=2 words lost'; sleep 5")
            })
            .expect("boots");
        let e = g.verify().expect_err("wrong result");
        assert!(
            matches!(e, Error::AgentCommand { .. }) && e.to_string().contains("2 words lost"),
            "{e}"
        );
        assert_eq!(n, 1);
    }
}
