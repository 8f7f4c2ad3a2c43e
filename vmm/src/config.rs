//! The description of a VM before it exists: [`VmConfig`] is what the CLI (and later the REST
//! API) builds; [`crate::vm::Vm::new`] turns a validated config into live objects.
//!
//! Everything here is pure: validation needs no KVM and touches no file, so bad input is
//! rejected before anything is created.

use std::path::PathBuf;
use std::str::FromStr;

/// Guest RAM granularity: every guest node's boot RAM is a multiple of this (2 MiB, a huge
/// page, so the guest's memory map never splits a pageblock).
pub const RAM_ALIGN: u64 = 2 << 20;

/// Smallest boot RAM a guest NUMA node may have. Linux ignores nodes below `NODE_MIN_SIZE`
/// (4 MiB, arch/x86/mm/numa.c); we ask for 16 MiB so the node can hold its own `pglist_data`,
/// memmap and per-cpu areas.
pub const NODE_MIN_MEMORY: u64 = 16 << 20;

/// Alignment of a node's hot-pluggable range (the Linux memory block size is 128 MiB).
pub const HOTPLUG_ALIGN: u64 = 128 << 20;

/// The largest number of vCPUs memtide supports: xAPIC ids are 8 bits and 0xff is broadcast.
pub const MAX_VCPUS: u32 = 254;

/// Errors in a VM configuration (always the user's input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The VM needs at least one vCPU.
    #[error("--vcpus must be at least 1")]
    NoVcpus,
    /// More vCPUs than memtide can address.
    #[error("--vcpus {0} exceeds memtide's limit of {MAX_VCPUS} (8-bit APIC ids)")]
    TooManyVcpus(u32),
    /// Boot RAM is not a multiple of [`RAM_ALIGN`].
    #[error("memory size {0:#x} is not a multiple of 2 MiB")]
    UnalignedMemory(u64),
    /// A size could not be parsed.
    #[error("bad size {0:?}: expected a number with an optional K, M, G or T suffix")]
    BadSize(String),
    /// A `--numa` option could not be parsed.
    #[error("bad --numa {0:?}: {1}")]
    BadNuma(String, String),
    /// Guest NUMA node ids must be 0..n-1 without gaps or duplicates.
    #[error("guest NUMA node ids must be 0..{0} each exactly once, got {1:?}")]
    NumaIds(usize, Vec<u32>),
    /// A guest NUMA node has less boot RAM than [`NODE_MIN_MEMORY`].
    #[error("guest NUMA node {0} has {1} bytes of memory; each node needs at least 16 MiB (more NUMA nodes than memory?)")]
    NodeTooSmall(u32, u64),
    /// A vCPU belongs to no node or to two nodes.
    #[error("vCPU {0} must belong to exactly one guest NUMA node")]
    VcpuNodes(u32),
    /// A node names a vCPU that does not exist.
    #[error("guest NUMA node {0} names vCPU {1}, but the VM has only {2} vCPUs")]
    NoSuchVcpu(u32, u32, u32),
    /// `--memory` and the sum of the nodes' memory disagree.
    #[error("--memory {0} differs from the sum of the --numa nodes' memory {1}")]
    MemoryMismatch(u64, u64),
    /// A hot-pluggable range is not a multiple of [`HOTPLUG_ALIGN`].
    #[error("hotplug_size {0:#x} of guest NUMA node {1} is not a multiple of 128 MiB")]
    UnalignedHotplug(u64, u32),
    /// The topology (one package per node) needs APIC ids beyond 254.
    #[error("{0} vCPUs over {1} NUMA nodes need APIC id {2}, beyond the xAPIC limit of 254")]
    ApicIdsExhausted(u32, usize, u32),
    /// Guest RAM beyond what x86_64 guests can address here (1 TiB).
    #[error("guest memory {0} bytes is beyond memtide's 1 TiB limit")]
    MemoryTooLarge(u64),
    /// The virtio-mem block size is not a power of two from 2 MiB to 1 GiB.
    #[error("virtio-mem block size {0:#x} is not a power of two from 2 MiB to 1 GiB")]
    HotplugBlockSize(u64),
    /// A hot-pluggable range is not a multiple of the virtio-mem block size.
    #[error("hotplug_size {0:#x} of guest NUMA node {1} is not a multiple of the virtio-mem block size {2:#x}")]
    HotplugNotBlocks(u64, u32, u64),
}

/// Parses a size: a decimal number with an optional binary suffix `K`, `M`, `G` or `T`
/// (case-insensitive, optional trailing `B`/`iB`), e.g. `512M`, `1G`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Parses a vCPU list: `0-3`, `[0-1,4]`, `2`, or `[]` for a node with memory only.
fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    if s.trim() == "[]" {
        return Ok(Vec::new());
    }
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let mut cpus = Vec::new();
    for part in inner.split([',', ':']).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: u32 = a.parse().map_err(|_| format!("bad vCPU number {a:?}"))?;
        let b: u32 = b.parse().map_err(|_| format!("bad vCPU number {b:?}"))?;
        if b < a || b - a > MAX_VCPUS {
            return Err(format!("bad vCPU range {part:?}"));
        }
        cpus.extend(a..=b);
    }
    if cpus.is_empty() {
        return Err("empty vCPU list".into());
    }
    Ok(cpus)
}

/// One guest NUMA node: which vCPUs it holds, how much boot RAM, which host node backs it and
/// how large its hot-pluggable range (for virtio-mem) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNodeConfig {
    /// Guest node id, also its ACPI proximity domain.
    pub guest_node: u32,
    /// The vCPUs (indices 0..vcpus) on this node.
    pub vcpus: Vec<u32>,
    /// Boot RAM of the node in bytes (in the e820 map, from the host node's non-movable zones).
    pub memory: u64,
    /// Host NUMA node whose memory backs this guest node.
    pub host_node: u32,
    /// Size of the node's hot-pluggable range (SRAT only, absent from e820), bytes.
    pub hotplug_size: u64,
}

impl FromStr for NumaNodeConfig {
    type Err = ConfigError;

    /// Parses `guest_numa_id=0,cpus=[0-1],memory=512M,host_numa_id=0,hotplug_size=1G`
    /// (`cpus` may also be `0-3` or `0:2`; `host_numa_id` defaults to 0, `hotplug_size` to 0).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ConfigError::BadNuma(s.to_string(), why);
        // Split on commas that are not inside brackets.
        let mut fields = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        for (i, c) in s.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ',' if depth == 0 => {
                    fields.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        fields.push(&s[start..]);
        let (mut id, mut cpus, mut memory, mut host, mut hotplug) = (None, None, None, 0, 0);
        for f in fields.into_iter().filter(|f| !f.is_empty()) {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| bad(format!("{f:?} is not key=value")))?;
            match k {
                "guest_numa_id" | "id" => {
                    id = Some(v.parse().map_err(|_| bad(format!("bad node id {v:?}")))?)
                }
                "cpus" => cpus = Some(parse_cpu_list(v).map_err(bad)?),
                "memory" | "size" => memory = Some(parse_size(v)?),
                "host_numa_id" | "host_node" => {
                    host = v.parse().map_err(|_| bad(format!("bad host node {v:?}")))?
                }
                "hotplug_size" => hotplug = parse_size(v)?,
                _ => return Err(bad(format!("unknown key {k:?}"))),
            }
        }
        Ok(NumaNodeConfig {
            guest_node: id.ok_or_else(|| bad("guest_numa_id is missing".into()))?,
            vcpus: cpus.ok_or_else(|| bad("cpus is missing".into()))?,
            memory: memory.ok_or_else(|| bad("memory is missing".into()))?,
            host_node: host,
            hotplug_size: hotplug,
        })
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// A Unix socket the VMM listens on: one client at a time gets the output (recent output
    /// first) and feeds the input ([`crate::devices::console_socket`]).
    Socket(PathBuf),
}

/// Everything needed to build and boot one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest kernel (bzImage).
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line arguments, appended after memtide's defaults.
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Total boot RAM in bytes (the sum over the guest nodes).
    pub memory: u64,
    /// Guest NUMA nodes; empty means one node with every vCPU and all memory on host node 0.
    pub numa: Vec<NumaNodeConfig>,
    /// The guest kernel's `kernelcore=` argument.
    pub guest_kernelcore: Option<String>,
    /// The guest kernel's `movablecore=` argument.
    pub guest_movablecore: Option<String>,
    /// Serial console output.
    pub serial_output: SerialOutput,
    /// Whether the VMM's stdin feeds the serial console's input.
    pub serial_input: bool,
    /// The virtio-balloon device, if any (default: [`crate::balloon::default_balloon_config`]).
    pub balloon: Option<crate::devices::virtio::balloon::VirtioBalloonConfig>,
    /// Block size of the virtio-mem devices (default [`crate::hotplug::DEFAULT_BLOCK_SIZE`],
    /// a power of two from 2 MiB to 1 GiB).
    pub hotplug_block_size: u64,
    /// Which CPUID features the guest sees (default: all KVM supports).
    pub cpu_template: crate::cpu::template::CpuTemplate,
}

impl VmConfig {
    /// A config with one node, no initrd and the serial console on stdout/stdin.
    pub fn new(kernel: PathBuf, vcpus: u32, memory: u64) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: None,
            vcpus,
            memory,
            numa: Vec::new(),
            guest_kernelcore: None,
            guest_movablecore: None,
            serial_output: SerialOutput::Stdout,
            serial_input: true,
            balloon: Some(crate::balloon::default_balloon_config()),
            hotplug_block_size: crate::hotplug::DEFAULT_BLOCK_SIZE,
            cpu_template: crate::cpu::template::CpuTemplate::Host,
        }
    }

    /// The guest NUMA nodes, with the default single node filled in, sorted by id. Call
    /// [`VmConfig::validate`] first.
    pub fn nodes(&self) -> Vec<NumaNodeConfig> {
        if self.numa.is_empty() {
            return vec![NumaNodeConfig {
                guest_node: 0,
                vcpus: (0..self.vcpus).collect(),
                memory: self.memory,
                host_node: 0,
                hotplug_size: 0,
            }];
        }
        let mut nodes = self.numa.clone();
        nodes.sort_by_key(|n| n.guest_node);
        nodes
    }

    /// The guest node of each vCPU (index = vCPU). Call [`VmConfig::validate`] first.
    pub fn vcpu_nodes(&self) -> Vec<u32> {
        let mut out = vec![0; self.vcpus as usize];
        for n in self.nodes() {
            for &c in &n.vcpus {
                if let Some(slot) = out.get_mut(c as usize) {
                    *slot = n.guest_node;
                }
            }
        }
        out
    }

    /// Checks everything that can be checked without touching files or KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > MAX_VCPUS {
            return Err(ConfigError::TooManyVcpus(self.vcpus));
        }
        if !self.numa.is_empty() {
            let total: u64 = self
                .numa
                .iter()
                .try_fold(0u64, |acc, n| acc.checked_add(n.memory))
                .ok_or(ConfigError::MemoryTooLarge(u64::MAX))?;
            if total != self.memory {
                return Err(ConfigError::MemoryMismatch(self.memory, total));
            }
            let mut ids: Vec<u32> = self.numa.iter().map(|n| n.guest_node).collect();
            ids.sort_unstable();
            if ids.iter().enumerate().any(|(i, &id)| id != i as u32) {
                return Err(ConfigError::NumaIds(self.numa.len(), ids));
            }
        }
        if self.memory > (1 << 40) {
            return Err(ConfigError::MemoryTooLarge(self.memory));
        }
        let mut owner = vec![0u32; self.vcpus as usize];
        for n in self.nodes() {
            if !n.memory.is_multiple_of(RAM_ALIGN) {
                return Err(ConfigError::UnalignedMemory(n.memory));
            }
            if n.memory < NODE_MIN_MEMORY {
                return Err(ConfigError::NodeTooSmall(n.guest_node, n.memory));
            }
            if !n.hotplug_size.is_multiple_of(HOTPLUG_ALIGN) {
                return Err(ConfigError::UnalignedHotplug(n.hotplug_size, n.guest_node));
            }
            let bs = self.hotplug_block_size;
            if !bs.is_power_of_two() || !(2 << 20..=1 << 30).contains(&bs) {
                return Err(ConfigError::HotplugBlockSize(bs));
            }
            if !n.hotplug_size.is_multiple_of(bs) {
                return Err(ConfigError::HotplugNotBlocks(
                    n.hotplug_size,
                    n.guest_node,
                    bs,
                ));
            }
            for &c in &n.vcpus {
                let slot = owner.get_mut(c as usize).ok_or(ConfigError::NoSuchVcpu(
                    n.guest_node,
                    c,
                    self.vcpus,
                ))?;
                *slot += 1;
            }
        }
        if let Some(c) = owner.iter().position(|&k| k != 1) {
            return Err(ConfigError::VcpuNodes(c as u32));
        }
        let max_apic = crate::cpu::topology::CpuTopology::new(&self.vcpu_nodes()).max_apic_id();
        if max_apic > MAX_VCPUS {
            return Err(ConfigError::ApicIdsExhausted(
                self.vcpus,
                self.nodes().len(),
                max_apic,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig::new("/k".into(), 2, 512 << 20)
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn numa_parses() {
        let n: NumaNodeConfig =
            "guest_numa_id=1,cpus=[0-1,3],memory=256M,host_numa_id=1,hotplug_size=1G"
                .parse()
                .expect("valid");
        assert_eq!(n.guest_node, 1);
        assert_eq!(n.vcpus, vec![0, 1, 3]);
        assert_eq!(n.memory, 256 << 20);
        assert_eq!(n.host_node, 1);
        assert_eq!(n.hotplug_size, 1 << 30);
        let n: NumaNodeConfig = "guest_numa_id=1,cpus=[],memory=64M".parse().expect("valid");
        assert!(n.vcpus.is_empty());
        let n: NumaNodeConfig = "guest_numa_id=0,cpus=2,memory=64M".parse().expect("valid");
        assert_eq!((n.vcpus.clone(), n.host_node), (vec![2], 0));
        assert!("guest_numa_id=0,memory=64M"
            .parse::<NumaNodeConfig>()
            .is_err());
        assert!("guest_numa_id=0,cpus=3-1,memory=64M"
            .parse::<NumaNodeConfig>()
            .is_err());
        assert!("guest_numa_id=0,cpus=0,memory=64M,colour=red"
            .parse::<NumaNodeConfig>()
            .is_err());
    }

    #[test]
    fn default_node_holds_everything() {
        let c = cfg();
        c.validate().expect("valid");
        let nodes = c.nodes();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].vcpus, vec![0, 1]);
        assert_eq!(nodes[0].memory, 512 << 20);
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut c = cfg();
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::NoVcpus));
        c.vcpus = 300;
        assert_eq!(c.validate(), Err(ConfigError::TooManyVcpus(300)));
        let mut c = cfg();
        c.memory = (512 << 20) + 4096;
        assert!(matches!(c.validate(), Err(ConfigError::UnalignedMemory(_))));
        let mut c = cfg();
        c.memory = 32 << 20;
        c.numa = (0..4)
            .map(|i| NumaNodeConfig {
                guest_node: i,
                vcpus: if i < 2 { vec![i] } else { vec![] },
                memory: 8 << 20,
                host_node: 0,
                hotplug_size: 0,
            })
            .collect();
        assert!(matches!(c.validate(), Err(ConfigError::NodeTooSmall(0, _))));
        let mut c = cfg();
        c.numa = vec![NumaNodeConfig {
            guest_node: 0,
            vcpus: vec![0],
            memory: 512 << 20,
            host_node: 0,
            hotplug_size: 0,
        }];
        assert_eq!(c.validate(), Err(ConfigError::VcpuNodes(1)));
        c.numa[0].vcpus = vec![0, 1, 2];
        assert_eq!(c.validate(), Err(ConfigError::NoSuchVcpu(0, 2, 2)));
        c.numa[0].vcpus = vec![0, 1];
        c.numa[0].guest_node = 1;
        assert!(matches!(c.validate(), Err(ConfigError::NumaIds(1, _))));
        c.numa[0].guest_node = 0;
        c.memory = 1 << 30;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemoryMismatch(_, _))
        ));
    }

    #[test]
    fn hotplug_block_size_is_checked() {
        let mut c = cfg();
        c.numa = vec![NumaNodeConfig {
            guest_node: 0,
            vcpus: vec![0, 1],
            memory: 512 << 20,
            host_node: 0,
            hotplug_size: 384 << 20,
        }];
        assert_eq!(c.hotplug_block_size, 2 << 20, "default");
        c.validate().expect("valid");
        for bad in [0, 1 << 20, 3 << 20, 2 << 30] {
            c.hotplug_block_size = bad;
            assert_eq!(c.validate(), Err(ConfigError::HotplugBlockSize(bad)));
        }
        c.hotplug_block_size = 128 << 20;
        c.validate().expect("384 MiB is three 128 MiB blocks");
        c.hotplug_block_size = 256 << 20;
        assert_eq!(
            c.validate(),
            Err(ConfigError::HotplugNotBlocks(384 << 20, 0, 256 << 20))
        );
    }

    #[test]
    fn apic_ids_beyond_xapic_are_rejected() {
        let mut c = VmConfig::new("/k".into(), 202, 512 << 20);
        c.numa = vec![
            "guest_numa_id=0,cpus=0-199,memory=256M"
                .parse()
                .expect("valid"),
            "guest_numa_id=1,cpus=200-201,memory=256M"
                .parse()
                .expect("valid"),
        ];
        assert_eq!(
            c.validate(),
            Err(ConfigError::ApicIdsExhausted(202, 2, 257))
        );
    }

    #[test]
    fn two_nodes_validate() {
        let mut c = cfg();
        c.numa = vec![
            "guest_numa_id=0,cpus=0,memory=256M".parse().expect("valid"),
            "guest_numa_id=1,cpus=1,memory=256M,hotplug_size=1G"
                .parse()
                .expect("valid"),
        ];
        c.validate().expect("valid");
        assert_eq!(c.vcpu_nodes(), vec![0, 1]);
    }
}
