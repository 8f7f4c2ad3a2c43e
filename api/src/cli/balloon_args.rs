//! The virtio-balloon flags of `memtide run` (and `memtide vm create`).

use std::time::Duration;

use clap::Args;
use memtide_vmm::balloon::default_balloon_config;
use memtide_vmm::VmConfig;

/// virtio-balloon options; the default is a balloon with guest statistics every 2 s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct BalloonArgs {
    /// No virtio-balloon device.
    #[arg(long, conflicts_with_all = ["balloon_deflate_on_oom", "balloon_free_page_reporting", "balloon_stats_interval"])]
    pub no_balloon: bool,
    /// Offer deflate on OOM: the guest takes ballooned pages back under memory pressure.
    #[arg(long)]
    pub balloon_deflate_on_oom: bool,
    /// Offer free page reporting: the guest reports free pages, whose host memory is freed.
    #[arg(long)]
    pub balloon_free_page_reporting: bool,
    /// Ask the guest for statistics every SECS seconds (0: no statistics queue; default 2).
    #[arg(long, value_name = "SECS")]
    pub balloon_stats_interval: Option<u64>,
}

impl BalloonArgs {
    /// Whether every flag is at its default.
    pub fn is_default(&self) -> bool {
        *self == BalloonArgs::default()
    }

    /// Sets `config.balloon` from the flags.
    pub fn apply(&self, config: &mut VmConfig) {
        if self.no_balloon {
            config.balloon = None;
            return;
        }
        let mut b = default_balloon_config();
        b.deflate_on_oom = self.balloon_deflate_on_oom;
        b.free_page_reporting = self.balloon_free_page_reporting;
        if let Some(secs) = self.balloon_stats_interval {
            b.stats_interval = (secs > 0).then(|| Duration::from_secs(secs));
        }
        config.balloon = Some(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_set_the_config() {
        let mut c = VmConfig::new("/k".into(), 1, 64 << 20);
        BalloonArgs::default().apply(&mut c);
        assert_eq!(c.balloon, Some(default_balloon_config()));
        BalloonArgs {
            balloon_deflate_on_oom: true,
            balloon_free_page_reporting: true,
            balloon_stats_interval: Some(0),
            ..BalloonArgs::default()
        }
        .apply(&mut c);
        let b = c.balloon.expect("balloon");
        assert!(b.deflate_on_oom && b.free_page_reporting && b.stats_interval.is_none());
        BalloonArgs {
            no_balloon: true,
            ..BalloonArgs::default()
        }
        .apply(&mut c);
        assert!(c.balloon.is_none());
    }
}
