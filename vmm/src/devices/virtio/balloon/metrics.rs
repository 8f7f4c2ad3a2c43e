//! What the balloon device did: cumulative counters for the control plane and /metrics.

use super::device::VirtioBalloonConfig;
use super::pages::BALLOON_PAGE_SIZE;
use super::stats::BalloonStats;

/// A snapshot of one balloon for the control plane (VM info, the API, /metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonInfo {
    /// What the device offers.
    pub config: VirtioBalloonConfig,
    /// Whether the guest driver runs the device.
    pub active: bool,
    /// Whether the driver accepted deflate on OOM.
    pub deflate_on_oom: bool,
    /// Whether the driver accepted free page reporting.
    pub free_page_reporting: bool,
    /// `num_pages`: the balloon size the host asks for, in 4 KiB pages.
    pub target_pages: u32,
    /// `actual`: the balloon size the driver reports, in 4 KiB pages.
    pub actual_pages: u32,
    /// The pages the device holds in the balloon.
    pub ballooned_pages: u64,
    /// Cumulative counters.
    pub counters: BalloonCounters,
    /// The guest's latest statistics.
    pub stats: Option<BalloonStats>,
}

impl BalloonInfo {
    /// The balloon size the host asks for, in bytes.
    pub fn target_bytes(&self) -> u64 {
        u64::from(self.target_pages) * BALLOON_PAGE_SIZE
    }

    /// The balloon size the driver reports, in bytes.
    pub fn actual_bytes(&self) -> u64 {
        u64::from(self.actual_pages) * BALLOON_PAGE_SIZE
    }

    /// The bytes the device holds in the balloon (their host memory given back).
    pub fn ballooned_bytes(&self) -> u64 {
        self.ballooned_pages * BALLOON_PAGE_SIZE
    }
}

/// Cumulative counters of one balloon device (never reset, not even by a device reset).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Pages inflated into the balloon (their host memory discarded).
    pub inflated_pages: u64,
    /// Pages deflated out of the balloon (given back to the guest).
    pub deflated_pages: u64,
    /// Pages taken back from the balloon on a device reset (the new driver knows nothing of
    /// them).
    pub reset_reclaimed_pages: u64,
    /// Bytes reported free by free page reporting and discarded.
    pub reported_bytes: u64,
    /// Bytes reported free but kept, because the guest poisons free pages (`poison_val` not 0).
    pub kept_report_bytes: u64,
    /// Free page reports (descriptor chains) handled.
    pub reports: u64,
    /// Inflate/deflate buffers (descriptor chains) handled.
    pub pfn_buffers: u64,
    /// Pfns outside guest RAM or in memory that is not backed (e.g. unplugged virtio-mem
    /// blocks): skipped.
    pub invalid_pfns: u64,
    /// Pfns inflated while already in the balloon, deflated while not in it, or repeated
    /// within one buffer: skipped.
    pub redundant_pfns: u64,
    /// Reported bytes outside guest RAM, in unbacked memory, or in partial pages: skipped.
    pub invalid_report_bytes: u64,
    /// Ranges the backend failed to discard (their pages stay out of the balloon).
    pub discard_errors: u64,
    /// Ranges the backend failed to reclaim (their pages leave the balloon all the same:
    /// the guest owns them).
    pub reclaim_errors: u64,
    /// Descriptor chains returned unprocessed: unreadable buffers, buffers in unbacked
    /// memory, trailing partial pfns, or a full used ring.
    pub dropped_chains: u64,
    /// Inflate/deflate buffers with more than `MAX_PFNS_PER_BUFFER` pfns, or reports covering
    /// more than `MAX_REPORT_BYTES`: the excess was ignored.
    pub oversized_chains: u64,
    /// Statistics buffers received.
    pub stats_updates: u64,
    /// Statistics requests sent to the driver (buffers returned).
    pub stats_requests: u64,
    /// Driver writes to read-only configuration fields (`num_pages`) or past the
    /// configuration space: ignored.
    pub ignored_config_writes: u64,
}

impl BalloonCounters {
    /// Bytes inflated so far.
    pub fn inflated_bytes(&self) -> u64 {
        self.inflated_pages * BALLOON_PAGE_SIZE
    }

    /// Bytes deflated so far.
    pub fn deflated_bytes(&self) -> u64 {
        self.deflated_pages * BALLOON_PAGE_SIZE
    }

    /// Every counter as `(name, value)` (e.g. for /metrics).
    pub fn named_values(&self) -> [(&'static str, u64); 17] {
        [
            ("inflated_pages", self.inflated_pages),
            ("deflated_pages", self.deflated_pages),
            ("reset_reclaimed_pages", self.reset_reclaimed_pages),
            ("reported_bytes", self.reported_bytes),
            ("kept_report_bytes", self.kept_report_bytes),
            ("reports", self.reports),
            ("pfn_buffers", self.pfn_buffers),
            ("invalid_pfns", self.invalid_pfns),
            ("redundant_pfns", self.redundant_pfns),
            ("invalid_report_bytes", self.invalid_report_bytes),
            ("discard_errors", self.discard_errors),
            ("reclaim_errors", self.reclaim_errors),
            ("dropped_chains", self.dropped_chains),
            ("oversized_chains", self.oversized_chains),
            ("stats_updates", self.stats_updates),
            ("stats_requests", self.stats_requests),
            ("ignored_config_writes", self.ignored_config_writes),
        ]
    }
}
