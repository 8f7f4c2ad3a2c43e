//! The Debian kernel: `linux-image-cloud-amd64` resolved to its current versioned package with
//! `apt-cache`, fetched with `apt-get download`, unpacked with `dpkg -x` into the cache.
//! The same kernel serves as guest kernel and as the emulated host's kernel (its kvm modules).

use crate::cache::ensure_dir;
use crate::error::{Error, Result};
use crate::tools::{self, run};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The meta package that points at the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Marker written after a complete unpack.
const COMPLETE: &str = ".memtide-unpacked";

/// An unpacked Debian kernel package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianKernel {
    /// The versioned package (`linux-image-6.1.0-56-cloud-amd64`).
    pub package: String,
    /// The kernel release (`6.1.0-56-cloud-amd64`).
    pub release: String,
    /// Where the package was unpacked.
    pub root: PathBuf,
}

impl DebianKernel {
    /// The bzImage.
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// `lib/modules/<release>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// Resolves the current package and makes sure it is unpacked under `cache/debian`.
    /// Without apt metadata (no `apt-get update` yet, offline), falls back to a kernel already
    /// unpacked in the cache, saying so.
    pub fn ensure(cache: &Path) -> Result<DebianKernel> {
        let base = cache.join("debian");
        ensure_dir(&base)?;
        let package = match resolve_package() {
            Ok(p) => p,
            Err(e) => match cached_kernels(&base).into_iter().last() {
                Some(k) => {
                    crate::timing::say(&format!(
                        "cannot resolve {META_PACKAGE} ({e}); using cached {}",
                        k.package
                    ));
                    return Ok(k);
                }
                None => return Err(e),
            },
        };
        let release = package
            .strip_prefix("linux-image-")
            .ok_or_else(|| Error::Kernel(format!("unexpected package name {package}")))?
            .to_string();
        let dir = base.join(&package);
        let kernel = DebianKernel {
            package: package.clone(),
            release,
            root: dir.join("root"),
        };
        if dir.join(COMPLETE).exists() && kernel.vmlinuz().exists() {
            return Ok(kernel);
        }
        ensure_dir(&dir)?;
        tools::need("apt-get", "apt")?;
        tools::need("dpkg", "dpkg")?;
        crate::timing::say(&format!(
            "fetching {package} (apt-get download) into {}",
            dir.display()
        ));
        run(Command::new("apt-get")
            .arg("download")
            .arg("-q")
            .arg(&package)
            .current_dir(&dir))?;
        let deb = fs::read_dir(&dir)
            .map_err(Error::io("cannot read", &dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| {
                Error::Kernel(format!(
                    "apt-get download left no {package}_*.deb in {}",
                    dir.display()
                ))
            })?;
        let _ = fs::remove_dir_all(&kernel.root);
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&kernel.root))?;
        if !kernel.vmlinuz().exists() {
            return Err(Error::Kernel(format!(
                "{} has no {}",
                deb.display(),
                kernel.vmlinuz().display()
            )));
        }
        fs::write(dir.join(COMPLETE), &package)
            .map_err(Error::io("cannot write", dir.join(COMPLETE)))?;
        // The .deb is not needed once unpacked.
        let _ = fs::remove_file(&deb);
        Ok(kernel)
    }
}

/// Kernels already unpacked in `base`, sorted by package name.
fn cached_kernels(base: &Path) -> Vec<DebianKernel> {
    let mut out: Vec<DebianKernel> = fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(COMPLETE).exists())
        .filter_map(|e| {
            let package = e.file_name().to_str()?.to_string();
            let release = package.strip_prefix("linux-image-")?.to_string();
            Some(DebianKernel {
                package,
                release,
                root: e.path().join("root"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.package.cmp(&b.package));
    out
}

/// The versioned image package the meta package's candidate depends on.
pub fn resolve_package() -> Result<String> {
    tools::need("apt-cache", "apt")?;
    let policy = run(Command::new("apt-cache").arg("policy").arg(META_PACKAGE))?;
    let candidate = parse_candidate(&String::from_utf8_lossy(&policy.stdout)).ok_or_else(|| {
        Error::Kernel(format!(
            "apt-cache knows no candidate for {META_PACKAGE}: run `apt-get update` first"
        ))
    })?;
    let deps = run(Command::new("apt-cache")
        .arg("depends")
        .arg(format!("{META_PACKAGE}={candidate}")))?;
    parse_image_dependency(&String::from_utf8_lossy(&deps.stdout)).ok_or_else(|| {
        Error::Kernel(format!(
            "{META_PACKAGE}={candidate} depends on no linux-image-* package"
        ))
    })
}

/// The `Candidate:` version from `apt-cache policy` output.
pub fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
}

/// The first `Depends: linux-image-*` from `apt-cache depends` output.
pub fn parse_image_dependency(depends: &str) -> Option<String> {
    depends.lines().find_map(|l| {
        let dep = l
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?
            .trim();
        dep.starts_with("linux-image-").then(|| dep.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_output_is_parsed() {
        let policy = "linux-image-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert_eq!(parse_candidate(policy), Some("6.1.192-2".into()));
        assert_eq!(
            parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        let deps = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n  Recommends: x\n";
        assert_eq!(
            parse_image_dependency(deps),
            Some("linux-image-6.1.0-56-cloud-amd64".into())
        );
        assert_eq!(parse_image_dependency("y\n  Depends: libc6\n"), None);
    }
}
