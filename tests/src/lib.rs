//! memtide's integration-test ground: builds the guest image (Debian kernel, initramfs with
//! busybox, virtio modules and the guest agent), selects a KVM host that can boot Linux
//! (hardware KVM, or the emulated KVM host under QEMU TCG) and drives guests in it.
//!
//! # How a test boots guests
//!
//! ```no_run
//! use memtide_testbed::{GuestImage, HostConfig, KvmHost, QemuGuest, Timeline};
//! use std::time::Duration;
//!
//! # fn main() -> memtide_testbed::Result<()> {
//! let mut t = Timeline::new("my-test");
//! // 1. The guest image (cached under $MEMTIDE_CACHE or <workspace>/target/memtide-cache).
//! let image = GuestImage::ensure()?;
//! // 2. The host: prints which kind and why; fails if there is none (never skip).
//! let cfg = HostConfig {
//!     nodes_mib: vec![1024, 1024],             // host NUMA nodes (emulated host only)
//!     image: Some(image),
//!     extra_binaries: vec!["target/release/memtide".into()], // at /bin/memtide in the host
//!     forward_ports: vec![8080],               // host port 8080 <- 127.0.0.1:<free port>
//!     ..HostConfig::default()
//! };
//! let (_selection, host) = KvmHost::start(&cfg)?;
//! // 3. A guest: argv (paths as the host sees them) runs with its stdio on a guest console.
//! //    boot_guest applies the dead-boot policy (at most 2 more boots, printed).
//! let memtide = host.binary("memtide")?;
//! let mut guest = host.boot_guest("a", Duration::from_secs(60), |_attempt| {
//!     vec![memtide.clone(), "run".into(), "--kernel".into(), host.guest_kernel(),
//!          "--initrd".into(), host.guest_initrd(), "--memory".into(), "512M".into(),
//!          "--cmdline".into(), memtide_testbed::image::DEFAULT_CMDLINE.into()]
//! })?;
//! t.mark_at("agent ready", guest.agent_at().unwrap_or_else(std::time::Instant::now));
//! // 4. Talk to the guest agent.
//! let report = guest.report()?;
//! assert_eq!(report.managed_kib(), report.mem_total_kib);
//! guest.fill(64)?;
//! guest.verify()?;
//! guest.free()?;
//! // Poll until a condition holds (e.g. after a resize).
//! guest.wait_for_report("MemTotal > 400 MiB", Duration::from_secs(30),
//!     Duration::from_millis(200), |r| r.mem_total_kib > 400 << 10)?;
//! // 5. Host commands, e.g. the memtide CLI against a service started in the host.
//! let out = host.check("cat /sys/devices/system/node/online", Duration::from_secs(10))?;
//! assert_eq!(out.lines, vec!["0-1"]);
//! let _pid = host.spawn_daemon(&[memtide.clone(), "serve".into()], "/tmp/serve.log")?;
//! let _api = host.forwarded(8080); // 127.0.0.1:<port> outside -> 10.0.2.15:8080 inside
//! // 6. Power off; the VMM's exit status comes back. Drops reap everything by pid.
//! assert_eq!(guest.poweroff(Duration::from_secs(30))?, 0);
//! // QEMU as the reference VMM: QemuGuest::default().argv(&host)?
//! # let _ = QemuGuest::default();
//! # Ok(())
//! # }
//! ```
//!
//! # Pieces
//! - [`image`]: [`GuestImage::ensure`] / [`GuestImage::build`] (also `memtide image build`).
//! - [`host`]: [`Selection::detect`], [`KvmHost`] (hardware or emulated, one interface),
//!   [`QemuGuest`] (QEMU `-accel kvm` as reference VMM).
//! - [`emulated`]: [`EmulatedHost`] and [`HostConfig`]; guests run on the host's ttyS1..3
//!   ([`emulated::GUEST_SLOTS`] at once), host commands on ttyS0 ([`shell`]).
//! - [`guest`]: [`Guest`] (agent commands, VMM exit) and [`Report`].
//! - [`console`]: [`Console`] (`send_line`, `wait_for_line`, `wait_for`, timestamps).
//! - [`retry`]: [`retry_boot`], the dead-boot policy of KVM-HOST.md; [`wait_until`].
//! - [`timing`]: [`Timeline`], [`say`] (prints past libtest's capture), [`process_age`].
//! - The agent's line protocol is `memtide_guest_agent::protocol` (re-exported as
//!   [`protocol`]).
//!
//! # Things worth knowing
//! - Use [`image::DEFAULT_CMDLINE`] (or at least its `quiet loglevel=1` and
//!   `initcall_blacklist=cmos_init`) for guests on the emulated host: every console byte is a
//!   nested exit, a verbose boot takes a minute, and the CMOS RTC probe of a machine without
//!   an RTC (microvm, memtide) costs 5-8 s.
//! - A guest's VMM runs inside the host as `setsid sh -c 'ARGV <ttySn >ttySn 2>&1; echo
//!   @@MEMTIDE-VMM-EXIT $?'`: the VMM's stdio *is* the guest console (its own stderr lines
//!   appear there too; only `AGENT ` lines are parsed). At most 3 guests at once.
//! - Host commands run in a subshell with stdin from /dev/null and must fit one tty line
//!   (4000 bytes); background programs go through [`KvmHost::spawn_daemon`] (output to a log
//!   file, never to the host console).
//! - A server inside the emulated host that the test reaches through
//!   [`HostConfig::forward_ports`] must listen on 0.0.0.0 (or 10.0.2.15), not 127.0.0.1.
//! - One emulated host per test process at a time (a second `start` waits): tests of one
//!   binary run in parallel threads and two TCG hosts on 2 cores only starve each other.
//! - The emulated host's QEMU (and daemons) die with the thread that started them
//!   (PR_SET_PDEATHSIG), so a test killed by a signal leaves no host behind: keep the host in
//!   the thread that created it.
//! - `cargo test` captures test output; [`say`] prints past the capture (host choice, retries,
//!   timings always show).
//!
//! Environment: `MEMTIDE_CACHE` (cache dir), `MEMTIDE_KVM_HOST=emulated|hardware` (force a
//! host kind), `MEMTIDE_CONSOLE_ECHO=1` (print every console line to stderr). Console logs of
//! emulated hosts are kept in `<cache>/logs`.

pub mod cache;
pub mod console;
pub mod cpio;
pub mod debian;
pub mod emulated;
pub mod error;
pub mod guest;
pub mod host;
pub mod image;
pub mod kmod;
pub mod ldd;
pub mod retry;
pub mod shell;
pub mod timing;
pub mod tools;

pub use console::{Console, Line};
pub use emulated::{EmulatedHost, HostConfig};
pub use error::{Error, Result};
pub use guest::{Guest, Report};
pub use host::{HostKind, KvmHost, Machine, QemuGuest, Selection};
pub use image::{GuestImage, ImageConfig};
pub use memtide_guest_agent::protocol;
pub use retry::{rerun_on_host_death, retry_boot, retry_boot_at_most, wait_until, Policy};
pub use timing::{cargo_age, process_age, say, Timeline};
