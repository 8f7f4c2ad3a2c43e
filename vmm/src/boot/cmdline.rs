//! The guest kernel command line memtide builds.

use linux_loader::cmdline::Cmdline;

use crate::config::VmConfig;
use crate::layout::CMDLINE_MAX_SIZE;

/// What every guest gets: the serial console, reboot through the keyboard controller (which
/// memtide turns into a VM exit), reboot on panic (so a panicking guest ends the VMM), no PCI
/// probing (there is no PCI bus), and hot-plugged memory onlined as movable (virtio-mem).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off memhp_default_state=online_movable";

/// Errors building the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// The command line is too long or has invalid characters.
    #[error("guest command line {0:?}: {1}")]
    Invalid(String, linux_loader::cmdline::Error),
}

/// memtide's defaults, the guest's kernelcore/movablecore, then the user's extra arguments.
pub fn build(config: &VmConfig) -> Result<Cmdline, CmdlineError> {
    let mut text = DEFAULT_CMDLINE.to_string();
    if let Some(k) = &config.guest_kernelcore {
        text.push_str(&format!(" kernelcore={k}"));
    }
    if let Some(m) = &config.guest_movablecore {
        text.push_str(&format!(" movablecore={m}"));
    }
    if let Some(extra) = config.cmdline.as_deref().filter(|s| !s.trim().is_empty()) {
        text.push(' ');
        text.push_str(extra.trim());
    }
    Cmdline::try_from(&text, CMDLINE_MAX_SIZE).map_err(|e| CmdlineError::Invalid(text, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_zone_args_and_extra() {
        let mut c = VmConfig::new("/k".into(), 1, 256 << 20);
        c.guest_kernelcore = Some("128M".into());
        c.cmdline = Some("quiet init=/init".into());
        let s = build(&c).expect("valid").as_cstring().expect("cstring");
        let s = s.to_str().expect("utf8");
        assert!(s.starts_with("console=ttyS0 "));
        assert!(s.contains("memhp_default_state=online_movable"));
        assert!(s.contains(" kernelcore=128M"));
        assert!(!s.contains("movablecore"));
        assert!(s.ends_with("quiet init=/init"));
    }

    #[test]
    fn too_long_is_an_error() {
        let mut c = VmConfig::new("/k".into(), 1, 256 << 20);
        c.cmdline = Some("x".repeat(4000));
        assert!(build(&c).is_err());
    }
}
