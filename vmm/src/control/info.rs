//! What the control plane reports: VM info and pool info (serde types the REST API sends
//! as JSON and its client reads back).

use memtide_allocator::buddy::{Pool, Wmark};
use memtide_allocator::{NodeId, ZoneType, MAX_ORDER, PAGE_SIZE};
use serde::{Deserialize, Serialize};

/// The life cycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// vCPUs running.
    Running,
    /// vCPUs parked (pause).
    Paused,
    /// The VM ended (guest power off or reset, shutdown, or an error); its boot RAM is back
    /// in the pool.
    Stopped,
}

impl VmState {
    /// The state's name as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        }
    }
}

/// One guest NUMA node of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// Guest node id (ACPI proximity domain).
    pub guest_node: u32,
    /// Host node backing it.
    pub host_node: u32,
    /// vCPUs of the node.
    pub vcpus: Vec<u32>,
    /// Boot RAM, bytes.
    pub boot_memory: u64,
    /// Size of the hot-pluggable range (virtio-mem region), bytes.
    pub hotplug_size: u64,
    /// Guest physical address of the hot-pluggable range, if any.
    pub hotplug_addr: Option<u64>,
    /// Bytes plugged now (0 without virtio-mem).
    pub plugged: u64,
    /// Bytes the device asks the guest to have plugged.
    pub requested: u64,
    /// Bytes of the range the guest may plug (virtio-mem `usable_region_size`).
    pub usable: u64,
    /// virtio-mem block size, bytes (0 without a device).
    pub block_size: u64,
}

/// The CPU template of a VM whose info does not name one (an older memtide's).
fn host_template() -> String {
    crate::CpuTemplate::Host.to_string()
}

/// A VM as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    /// The VM's id.
    pub id: String,
    /// Its state.
    pub state: VmState,
    /// Why it stopped (`power_off`, `reset`, `stopped`, or an error), once stopped.
    pub exit_reason: Option<String>,
    /// vCPUs.
    pub vcpus: u32,
    /// Boot RAM over all nodes, bytes.
    pub boot_memory: u64,
    /// Boot RAM plus plugged memory, bytes.
    pub total_memory: u64,
    /// Whether the VM has virtio-mem devices (memory can be resized).
    pub virtio_mem: bool,
    /// Guest kernel.
    pub kernel: String,
    /// Initramfs.
    pub initrd: Option<String>,
    /// Extra kernel command line.
    pub cmdline: Option<String>,
    /// The guest's kernelcore=.
    pub kernelcore: Option<String>,
    /// The guest's movablecore=.
    pub movablecore: Option<String>,
    /// The CPU template: `host` or `x86-64-v2` (see [`crate::CpuTemplate`]).
    #[serde(default = "host_template")]
    pub cpu_template: String,
    /// Where the serial console goes (a file), if not the service's stdout.
    pub console: Option<String>,
    /// The Unix socket the serial console listens on (`memtide vm console` attaches to it).
    pub console_socket: Option<String>,
    /// Seconds since the VM was created.
    pub uptime_secs: u64,
    /// The guest NUMA nodes.
    pub nodes: Vec<NodeInfo>,
    /// The virtio-balloon, if the VM has one.
    #[serde(default)]
    pub balloon: Option<BalloonReport>,
    /// Request counts and host time of the VM's virtio-mem devices (summed), if it has any.
    #[serde(default)]
    pub virtio_mem_stats: Option<VirtioMemReport>,
}

/// What a VM's virtio-mem devices did for its guest, summed over its devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioMemReport {
    /// Requests handled, by type (`plug`, `unplug`, `unplug_all`, `state`).
    pub requests: std::collections::BTreeMap<String, u64>,
    /// Wall time memtide spent handling them, by type, nanoseconds (checks, pool allocation
    /// or free, memfd punch-hole, remapping).
    pub request_nanos: std::collections::BTreeMap<String, u64>,
    /// Answers by kind (`ack`, `nack`, `busy`, `error`, `dropped_chain`).
    pub answers: std::collections::BTreeMap<String, u64>,
    /// Wall time memtide spent serving the request queue, nanoseconds: the request handling
    /// above plus reading requests, writing answers and the used ring.
    pub host_nanos: u64,
}

impl VirtioMemReport {
    /// The report of a VM's devices' summed counters.
    pub fn new(s: &crate::devices::virtio::mem::VirtioMemStats) -> Self {
        let named = |c: &crate::devices::virtio::mem::RequestCounts| {
            c.named().iter().map(|&(k, v)| (k.to_string(), v)).collect()
        };
        VirtioMemReport {
            requests: named(&s.requests),
            request_nanos: named(&s.request_nanos),
            answers: [
                ("ack", s.acks),
                ("nack", s.nacks),
                ("busy", s.busy),
                ("error", s.errors),
                ("dropped_chain", s.dropped_chains),
            ]
            .iter()
            .map(|&(k, v)| (k.to_string(), v))
            .collect(),
            host_nanos: s.queue_nanos,
        }
    }
}

/// A VM's virtio-balloon as the API reports it (sizes in bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonReport {
    /// Whether the guest driver runs the device.
    pub active: bool,
    /// The guest RAM the balloon works on (boot RAM).
    pub guest_ram: u64,
    /// The balloon size the host asks for (`num_pages` x 4 KiB).
    pub target_bytes: u64,
    /// The balloon size the driver reports (`actual` x 4 KiB).
    pub actual_bytes: u64,
    /// The bytes the device holds in the balloon (their host memory given back).
    pub ballooned_bytes: u64,
    /// The guest RAM left to the guest: `guest_ram - actual_bytes`.
    pub guest_size: u64,
    /// Offered and accepted deflate on OOM.
    pub deflate_on_oom: bool,
    /// Offered and accepted free page reporting.
    pub free_page_reporting: bool,
    /// Statistics interval, seconds (None: no stats queue).
    pub stats_interval_secs: Option<u64>,
    /// The guest's latest statistics by name (`swap-in`, `free-memory`, ...; bytes or counts as
    /// the spec defines them), if any arrived.
    pub stats: Option<std::collections::BTreeMap<String, u64>>,
    /// Seconds since the UNIX epoch of the latest statistics.
    pub stats_updated_at: Option<u64>,
    /// Cumulative device counters by name.
    pub counters: std::collections::BTreeMap<String, u64>,
}

impl BalloonReport {
    /// The report of a device snapshot on `guest_ram` bytes.
    pub fn new(info: &crate::devices::virtio::balloon::BalloonInfo, guest_ram: u64) -> Self {
        BalloonReport {
            active: info.active,
            guest_ram,
            target_bytes: info.target_bytes(),
            actual_bytes: info.actual_bytes(),
            ballooned_bytes: info.ballooned_bytes(),
            guest_size: guest_ram.saturating_sub(info.actual_bytes()),
            deflate_on_oom: info.deflate_on_oom,
            free_page_reporting: info.free_page_reporting,
            stats_interval_secs: info.config.stats_interval.map(|d| d.as_secs()),
            stats: info
                .stats
                .as_ref()
                .map(|s| s.named_values().map(|(k, v)| (k.to_string(), v)).collect()),
            stats_updated_at: info.stats.as_ref().and_then(|s| {
                s.updated_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs())
            }),
            counters: info
                .counters
                .named_values()
                .iter()
                .map(|&(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

/// Watermarks of a zone, pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermarks {
    /// `WMARK_MIN`.
    pub min: u64,
    /// `WMARK_LOW`.
    pub low: u64,
    /// `WMARK_HIGH`.
    pub high: u64,
}

/// One zone of the host pool (page counts as /proc/zoneinfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneInfo {
    /// Zone name (`DMA`, `DMA32`, `Normal`, `Movable`).
    pub zone: String,
    /// First pfn.
    pub start_pfn: u64,
    /// Spanned pages.
    pub spanned: u64,
    /// Present pages.
    pub present: u64,
    /// Managed pages.
    pub managed: u64,
    /// Free pages (`NR_FREE_PAGES`).
    pub free: u64,
    /// Watermarks.
    pub watermarks: Watermarks,
    /// Free blocks per order 0..=10 (`/proc/buddyinfo`).
    pub buddyinfo: Vec<u64>,
}

/// One host node of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolNodeInfo {
    /// Host node id.
    pub node: u32,
    /// Its zones (DMA, DMA32, Normal, Movable; empty ones included).
    pub zones: Vec<ZoneInfo>,
}

/// The host memory pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolInfo {
    /// Page size, bytes.
    pub page_size: u64,
    /// `min_free_kbytes` the watermarks derive from.
    pub min_free_kbytes: u64,
    /// Managed pages of all zones.
    pub managed_pages: u64,
    /// Free pages of all zones (buddy and per-CPU lists).
    pub free_pages: u64,
    /// Per host node.
    pub nodes: Vec<PoolNodeInfo>,
}

/// Free blocks per order of every populated zone, from the pool's `/proc/buddyinfo` report.
fn buddyinfo(pool: &Pool) -> Vec<(u32, String, Vec<u64>)> {
    pool.buddyinfo()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Node ")?;
            let (node, rest) = rest.split_once(',')?;
            let rest = rest.trim_start().strip_prefix("zone")?;
            let mut words = rest.split_whitespace();
            let zone = words.next()?.to_string();
            let counts: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
            Some((node.trim().parse().ok()?, zone, counts))
        })
        .collect()
}

impl PoolInfo {
    /// Reads the pool's counters.
    pub fn from_pool(pool: &Pool) -> PoolInfo {
        let buddy = buddyinfo(pool);
        let nodes = pool
            .nodes()
            .iter()
            .map(|&NodeId(node)| PoolNodeInfo {
                node,
                zones: ZoneType::ALL
                    .iter()
                    .filter_map(|&zt| pool.zone(NodeId(node), zt))
                    .map(|z| ZoneInfo {
                        zone: z.zone_type().name().to_string(),
                        start_pfn: z.zone_start_pfn(),
                        spanned: z.spanned_pages(),
                        present: z.present_pages(),
                        managed: z.managed_pages(),
                        free: z.nr_free_pages(),
                        watermarks: Watermarks {
                            min: z.wmark_pages(Wmark::Min),
                            low: z.wmark_pages(Wmark::Low),
                            high: z.wmark_pages(Wmark::High),
                        },
                        buddyinfo: buddy
                            .iter()
                            .find(|(n, name, _)| *n == node && name == z.zone_type().name())
                            .map(|(_, _, c)| c.clone())
                            .unwrap_or_else(|| vec![0; MAX_ORDER]),
                    })
                    .collect(),
            })
            .collect();
        PoolInfo {
            page_size: PAGE_SIZE,
            min_free_kbytes: pool.min_free_kbytes(),
            managed_pages: pool.managed_pages(),
            free_pages: pool.free_pages_total(),
            nodes,
        }
    }

    /// Free pages of `node`'s ZONE_MOVABLE and its low watermark.
    pub fn movable_free(&self, node: u32) -> Option<(u64, u64)> {
        let z = self
            .nodes
            .iter()
            .find(|n| n.node == node)?
            .zones
            .iter()
            .find(|z| z.zone == ZoneType::Movable.name())?;
        Some((z.free, z.watermarks.low))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::pool::PoolBacking;

    #[test]
    fn pool_info_matches_the_pool() {
        let p = PoolBacking::new(&[(0, 1 << 30), (1, 1 << 30)], None, Some("50%")).expect("pool");
        let info = PoolInfo::from_pool(p.pool());
        assert_eq!(info.nodes.len(), 2);
        assert_eq!(info.page_size, 4096);
        let zones: Vec<&str> = info.nodes[0]
            .zones
            .iter()
            .map(|z| z.zone.as_str())
            .collect();
        assert_eq!(zones, vec!["DMA", "DMA32", "Normal", "Movable"]);
        let free: u64 = info
            .nodes
            .iter()
            .flat_map(|n| &n.zones)
            .map(|z| z.free)
            .sum();
        assert_eq!(free, info.free_pages);
        for z in info.nodes.iter().flat_map(|n| &n.zones) {
            assert_eq!(z.buddyinfo.len(), MAX_ORDER);
            let by_order: u64 = z.buddyinfo.iter().enumerate().map(|(o, c)| c << o).sum();
            assert_eq!(by_order, z.free, "{} buddyinfo sums to free", z.zone);
            assert!(z.watermarks.min <= z.watermarks.low && z.watermarks.low <= z.watermarks.high);
        }
        let (free, low) = info.movable_free(1).expect("node 1 has ZONE_MOVABLE");
        assert!(free > low);
    }
}
