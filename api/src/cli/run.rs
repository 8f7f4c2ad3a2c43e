//! `memtide run`: boot one VM in the foreground, its serial console on stdout/stdin.
//!
//! ```text
//! memtide run [--kernel K] [--initrd I] [--cmdline ARGS] [--vcpus N] [--memory SIZE]
//!             [--numa guest_numa_id=0,cpus=[0-1],memory=512M,host_numa_id=0,hotplug_size=1G]...
//!             [--kernelcore SPEC] [--movablecore SPEC] [--cpu-template host|x86-64-v2]
//!             [--serial-file PATH]
//! ```
//!
//! Without `--kernel` the guest image (`memtide image build`) is used: found in the cache
//! (`$MEMTIDE_CACHE`, default `<workspace>/target/memtide-cache`: `guest/<release>/
//! initramfs.cpio.gz` and `debian/*/root/boot/vmlinuz-<release>`), else built there first. Exit status: 0 when the guest powers off (or
//! memtide is stopped with SIGTERM/SIGINT), 3 when the guest resets (reboot, panic, triple
//! fault), 1 on a VMM failure, 2 on bad input (reported before the VM starts).

use clap::Args;
use memtide_vmm::config::{parse_size, NumaNodeConfig};
use memtide_vmm::{SerialOutput, Vm, VmConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `memtide run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest kernel (bzImage). Default: the harness's cached guest image.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs. Default: the guest image's when --kernel is not given.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Extra guest kernel command-line arguments (after memtide's defaults).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Boot RAM, e.g. 512M or 2G (default: the sum of the --numa nodes, else 512M).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// A guest NUMA node: guest_numa_id=N,cpus=[A-B,..],memory=SIZE[,host_numa_id=H]
    /// [,hotplug_size=SIZE]. Repeat per node.
    #[arg(long, value_name = "SPEC")]
    pub numa: Vec<String>,
    /// The guest kernel's kernelcore= argument.
    #[arg(long, value_name = "SPEC")]
    pub kernelcore: Option<String>,
    /// The guest kernel's movablecore= argument.
    #[arg(long, value_name = "SPEC")]
    pub movablecore: Option<String>,
    /// CPUID features the guest sees: `host` (all KVM supports) or `x86-64-v2` (no XSAVE,
    /// AVX or anything needing them).
    #[arg(long, value_name = "NAME", default_value = "host")]
    pub cpu_template: memtide_vmm::CpuTemplate,
    /// Write the serial console to this file instead of stdout.
    #[arg(long, value_name = "PATH", conflicts_with = "serial_socket")]
    pub serial_file: Option<PathBuf>,
    /// Serve the serial console on this Unix socket (mode 0600; one client at a time, recent
    /// output first): attach with `memtide vm console ID` or any Unix-socket client.
    #[arg(long, value_name = "PATH")]
    pub serial_socket: Option<PathBuf>,
    /// Do not feed stdin to the serial console.
    #[arg(long)]
    pub no_stdin: bool,
    /// Serve the REST API on this Unix socket while the VM (id `run`) runs: resize it with
    /// `memtide vm resize run SIZE --api-sock PATH` (virtio-mem, needs hotplug_size).
    #[arg(long, value_name = "PATH")]
    pub serve_sock: Option<PathBuf>,
    /// virtio-mem block size (a power of two from 2 MiB to 1 GiB; default 2M).
    #[arg(long, value_name = "SIZE")]
    pub hotplug_block_size: Option<String>,
    /// With --serve-sock: the host pool's movablecore= (default: room for the hotplug sizes).
    #[arg(long, value_name = "SPEC", requires = "serve_sock")]
    pub pool_movablecore: Option<String>,
    /// virtio-balloon options.
    #[command(flatten)]
    pub balloon: super::balloon_args::BalloonArgs,
}

/// The harness's guest image in `cache`: `(kernel, initrd)`.
fn cached_guest_image(cache: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut releases: Vec<PathBuf> = std::fs::read_dir(cache.join("guest"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("initramfs.cpio.gz").is_file())
        .collect();
    releases.sort();
    for dir in releases.iter().rev() {
        let release = dir.file_name()?.to_string_lossy().into_owned();
        let Ok(debs) = std::fs::read_dir(cache.join("debian")) else {
            continue;
        };
        for d in debs.filter_map(|e| e.ok()) {
            let k = d
                .path()
                .join("root/boot")
                .join(format!("vmlinuz-{release}"));
            if k.is_file() {
                return Some((k, dir.join("initramfs.cpio.gz")));
            }
        }
    }
    None
}

/// Why the arguments give no config: the exit code (2 bad input, 1 failure) and a message.
pub type ArgsError = (u8, String);

/// Turns the arguments into a [`VmConfig`] (no file or KVM access beyond locating, or
/// building, the default image).
pub fn config_from_args(args: &RunArgs) -> Result<VmConfig, ArgsError> {
    let (kernel, initrd) = match &args.kernel {
        Some(k) => (k.clone(), args.initrd.clone()),
        None => {
            let cache = memtide_testbed::cache::default_cache_dir();
            let (k, i) = match cached_guest_image(&cache) {
                Some(found) => found,
                None => {
                    eprintln!(
                        "memtide run: no --kernel and no guest image in {}: building it",
                        cache.display()
                    );
                    let cfg = memtide_testbed::ImageConfig {
                        cache: cache.clone(),
                        ..Default::default()
                    };
                    let img = memtide_testbed::GuestImage::build(&cfg).map_err(|e| {
                        (
                            1,
                            format!("no --kernel given and the guest image cannot be built: {e}"),
                        )
                    })?;
                    (img.kernel, img.initrd)
                }
            };
            (k, Some(args.initrd.clone().unwrap_or(i)))
        }
    };
    let numa = args
        .numa
        .iter()
        .map(|s| s.parse::<NumaNodeConfig>().map_err(|e| (2, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let memory = match &args.memory {
        Some(m) => parse_size(m).map_err(|e| (2, e.to_string()))?,
        None if !numa.is_empty() => numa.iter().map(|n| n.memory).sum(),
        None => 512 << 20,
    };
    let mut c = VmConfig::new(kernel, args.vcpus, memory);
    c.initrd = initrd;
    c.cmdline = args.cmdline.clone();
    c.numa = numa;
    c.guest_kernelcore = args.kernelcore.clone();
    c.guest_movablecore = args.movablecore.clone();
    c.cpu_template = args.cpu_template;
    if let Some(f) = &args.serial_file {
        c.serial_output = SerialOutput::File(f.clone());
    }
    if let Some(s) = &args.serial_socket {
        c.serial_output = SerialOutput::Socket(s.clone());
    }
    c.serial_input = !args.no_stdin && args.serial_socket.is_none();
    if let Some(b) = &args.hotplug_block_size {
        c.hotplug_block_size = parse_size(b).map_err(|e| (2, e.to_string()))?;
    }
    args.balloon.apply(&mut c);
    Ok(c)
}

/// Runs `memtide run`.
pub fn run(args: &RunArgs) -> ExitCode {
    let config = match config_from_args(args) {
        Ok(c) => c,
        Err((code, e)) => {
            eprintln!("memtide run: error: {e}");
            return ExitCode::from(code);
        }
    };
    if let Some(sock) = &args.serve_sock {
        return super::run_api::run_with_api(config, sock, args.pool_movablecore.clone());
    }
    // Before any thread exists (building the VM spawns device helper threads): every thread
    // inherits the blocked SIGTERM/SIGINT, so only the event loop's signalfd sees them.
    if let Err(e) = memtide_vmm::event_loop::block_exit_signals() {
        eprintln!("memtide run: error: blocking SIGTERM/SIGINT: {e}");
        return ExitCode::from(1);
    }
    let vm = match Vm::new(&config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("memtide run: error: {e}");
            return ExitCode::from(if e.is_bad_input() { 2 } else { 1 });
        }
    };
    match vm.run(true) {
        Ok(reason) => {
            eprintln!("memtide run: VM stopped: {reason:?}");
            ExitCode::from(reason.exit_code())
        }
        Err(e) => {
            eprintln!("memtide run: error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .expect("valid arguments")
            .run
    }

    #[test]
    fn numa_nodes_sum_to_memory() {
        let a = parse(&[
            "--kernel",
            "/k",
            "--vcpus",
            "2",
            "--numa",
            "guest_numa_id=0,cpus=0,memory=256M",
            "--numa",
            "guest_numa_id=1,cpus=1,memory=256M,host_numa_id=0",
        ]);
        let c = config_from_args(&a).expect("config");
        assert_eq!(c.memory, 512 << 20);
        assert_eq!(c.numa.len(), 2);
        c.validate().expect("valid");
    }

    #[test]
    fn bad_numa_is_reported() {
        let a = parse(&["--kernel", "/k", "--numa", "guest_numa_id=0,memory=1G"]);
        let (code, e) = config_from_args(&a).expect_err("cpus missing");
        assert_eq!(code, 2);
        assert!(e.contains("cpus is missing"), "{e}");
    }

    #[test]
    fn missing_default_image_is_reported() {
        assert!(cached_guest_image(Path::new("/nonexistent")).is_none());
    }
}
