//! The guest image: a kernel (the Debian cloud kernel, or the user's bzImage) and a gzip newc
//! initramfs holding busybox, the virtio modules (with their dependencies, loaded in order by
//! the init script) and the guest agent, which init starts and restarts until it exits 0
//! (`poweroff`), then powers the guest off.

use crate::cache::{default_cache_dir, ensure_dir, workspace_root};
use crate::cpio::Archive;
use crate::debian::DebianKernel;
use crate::error::{Error, Result};
use crate::kmod::ModuleIndex;
use crate::ldd;
use crate::tools::{self, run};
use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The modules the guest loads (their dependencies are added).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_mmio",
    "virtio_mem",
    "virtio_balloon",
];

/// The kernel command line the image is made for (add `memhp_default_state=online_movable`,
/// `kernelcore=` etc. as needed). `panic=-1` turns a guest panic into a reboot, which a VMM
/// run with "no reboot" semantics turns into an exit. `quiet loglevel=1` because every console
/// byte is slow under nested virtualization on the emulated host (a verbose boot takes
/// minutes there). `initcall_blacklist=cmos_init` skips the RTC probe, which takes 5–8 s
/// on the emulated host when the machine has no CMOS RTC (microvm, memtide): each of its
/// port reads is a nested exit.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 quiet loglevel=1 panic=-1 initcall_blacklist=cmos_init";

/// Where the agent binary lives in the guest.
pub const AGENT_PATH: &str = "/bin/memtide-guest-agent";

/// The target the static guest agent is built for.
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// What to build the image from.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The cache directory (see [`crate::cache`]).
    pub cache: PathBuf,
    /// A bzImage to use instead of the Debian kernel (no modules are added then: its virtio
    /// drivers must be built in).
    pub kernel: Option<PathBuf>,
    /// A prebuilt static guest agent instead of building it from this workspace.
    pub agent: Option<PathBuf>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            cache: default_cache_dir(),
            kernel: None,
            agent: None,
        }
    }
}

/// A built guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The gzip newc initramfs.
    pub initrd: PathBuf,
    /// The modules init loads, in load order.
    pub modules: Vec<String>,
    /// The Debian kernel package (also the emulated host's kernel), when it is used.
    pub debian: Option<DebianKernel>,
    /// The static guest agent binary put into the initramfs.
    pub agent: PathBuf,
}

/// Serializes image builds within one process (tests run in parallel threads).
static BUILD_LOCK: Mutex<()> = Mutex::new(());

impl GuestImage {
    /// Builds (or finds in the default cache) the default image: Debian kernel, agent from
    /// this workspace.
    pub fn ensure() -> Result<GuestImage> {
        Self::build(&ImageConfig::default())
    }

    /// Builds (or finds in the cache) the image `cfg` describes. Only what is missing or
    /// changed is redone: a second call fetches nothing.
    pub fn build(cfg: &ImageConfig) -> Result<GuestImage> {
        let _guard = BUILD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cfg.kernel.as_ref().filter(|k| !k.is_file()) {
            return Err(Error::Config(format!(
                "kernel {} is not a file",
                k.display()
            )));
        }
        if let Some(a) = cfg.agent.as_ref().filter(|a| !a.is_file()) {
            return Err(Error::Config(format!(
                "guest agent {} is not a file",
                a.display()
            )));
        }
        ensure_dir(&cfg.cache)?;
        let agent = match &cfg.agent {
            Some(a) => {
                if !a.is_file() {
                    return Err(Error::Config(format!(
                        "guest agent {} is not a file",
                        a.display()
                    )));
                }
                a.clone()
            }
            None => build_agent()?,
        };
        let (kernel, debian, modules, flavour) = match &cfg.kernel {
            Some(k) => {
                if !k.is_file() {
                    return Err(Error::Config(format!(
                        "kernel {} is not a file",
                        k.display()
                    )));
                }
                (k.clone(), None, Vec::new(), "custom".to_string())
            }
            None => {
                let deb = DebianKernel::ensure(&cfg.cache)?;
                let idx = ModuleIndex::scan(&deb.modules_dir())?;
                let mods = idx.load_order(GUEST_MODULES)?;
                (deb.vmlinuz(), Some(deb.clone()), mods, deb.release.clone())
            }
        };
        let busybox = tools::need("busybox", "busybox-static")?;
        let init = guest_init(&modules.iter().map(|m| m.name.clone()).collect::<Vec<_>>());

        let mut hasher = DefaultHasher::new();
        init.hash(&mut hasher);
        for f in std::iter::once(&agent)
            .chain(std::iter::once(&busybox))
            .chain(modules.iter().map(|m| &m.path))
        {
            fs::read(f)
                .map_err(Error::io("cannot read", f))?
                .hash(&mut hasher);
        }
        let stamp = format!("{:016x}", hasher.finish());
        let dir = cfg.cache.join("guest").join(&flavour);
        ensure_dir(&dir)?;
        let initrd = dir.join("initramfs.cpio.gz");
        let stamp_path = dir.join("initramfs.stamp");
        let fresh = initrd.exists() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
        if !fresh {
            let mut a = Archive::linux_root(&[])?;
            a.data("init", init, 0o755)?;
            add_binary(&mut a, &busybox, "bin/busybox")?;
            add_binary(&mut a, &agent, AGENT_PATH)?;
            for m in &modules {
                a.file(&format!("lib/modules/{}.ko", m.name), &m.path)?;
            }
            a.write_file(&initrd, true)?;
            fs::write(&stamp_path, &stamp).map_err(Error::io("cannot write", &stamp_path))?;
        }
        Ok(GuestImage {
            kernel,
            initrd,
            modules: modules.into_iter().map(|m| m.name).collect(),
            debian,
            agent,
        })
    }
}

/// Adds `binary` at `dest` plus the shared libraries (and loader) it needs at their own paths.
pub fn add_binary(a: &mut Archive, binary: &Path, dest: &str) -> Result<()> {
    a.file(dest, binary)?;
    for lib in ldd::shared_libraries(binary)? {
        let path = lib.to_string_lossy().into_owned();
        if !a.contains(&path) {
            a.file(&path, &lib)?;
        }
    }
    Ok(())
}

/// The guest's /init script.
pub fn guest_init(modules: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
dmesg -n 1
for m in {modules}; do
  insmod /lib/modules/$m.ko || echo "INIT insmod $m failed"
done
stty -echo 2>/dev/null
echo "INIT memtide guest up: modules loaded, starting the agent"
while true; do
  {agent}
  rc=$?
  [ "$rc" = 0 ] && break
  echo "INIT agent exited with status $rc; restarting it"
  sleep 1
done
echo "INIT powering off"
poweroff -f
"#,
        modules = if modules.is_empty() {
            "''".to_string()
        } else {
            modules.join(" ")
        },
        agent = AGENT_PATH,
    )
    .replace("for m in ''; do", "for m in; do")
}

/// Builds the static guest agent from this workspace with cargo (in its own target dir,
/// `<workspace>/target/guest-agent`) and returns the binary.
pub fn build_agent() -> Result<PathBuf> {
    let ws = workspace_root();
    let manifest = ws.join("tests/guest-agent/Cargo.toml");
    if !manifest.is_file() {
        return Err(Error::Config(format!(
            "the guest agent's source {} is not here: pass a prebuilt agent",
            manifest.display()
        )));
    }
    let target_dir = ws.join("target").join("guest-agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--release",
        "--bin",
        "memtide-guest-agent",
        "--target",
        AGENT_TARGET,
    ])
    .arg("--manifest-path")
    .arg(&manifest)
    .env("CARGO_TARGET_DIR", &target_dir)
    .env("RUSTFLAGS", "-C target-feature=+crt-static")
    // No debug info in the guest's copy: it would quadruple the initramfs the guest unpacks.
    .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
    .env("CARGO_PROFILE_RELEASE_STRIP", "true")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("CARGO_BUILD_TARGET");
    run(&mut cmd)?;
    let bin = target_dir
        .join(AGENT_TARGET)
        .join("release")
        .join("memtide-guest-agent");
    if !ldd::shared_libraries(&bin)?.is_empty() {
        return Err(Error::Config(format!(
            "guest agent {} is not static",
            bin.display()
        )));
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_loads_modules_in_the_given_order_and_runs_the_agent() {
        let s = guest_init(&["virtio_ring".into(), "virtio".into()]);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("for m in virtio_ring virtio; do"));
        assert!(s.contains(AGENT_PATH));
        let empty = guest_init(&[]);
        assert!(empty.contains("for m in; do"));
        // The script is valid shell.
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
}
