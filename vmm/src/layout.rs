//! The guest physical address map memtide gives every x86_64 guest, and the placement of the
//! guest NUMA nodes' RAM in it.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA, GDT (0x500), IDT (0x520), zero page (0x7000), boot stack,
//!              page tables (0x9000..0xc000), command line (0x20000)
//! 0x0009_fc00  EBDA .. 0x000f_ffff: not RAM in e820; ACPI tables at 0xe0000
//! 0x0010_0000  kernel (bzImage protected-mode part at code32_start), then RAM
//! 0xc000_0000  32-bit MMIO hole (virtio-mmio devices at 0xd000_0000, IOAPIC, LAPIC)
//! 0x1_0000_0000 RAM continues above 4 GiB
//! ...          after all boot RAM, 1 GiB aligned: one hot-pluggable range per guest node
//! ```

use crate::config::NumaNodeConfig;

/// Global descriptor table (boot protocol: any low address; Firecracker uses the same).
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty, the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (`struct boot_params`), Documentation/x86/boot.rst.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the identity-mapped boot page tables.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the boot page tables.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot page tables (2 MiB pages for the first 1 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we pass (Linux x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: RAM in e820 ends here below 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first, so the kernel's legacy 0xe0000..0xfffff scan finds it too).
pub const ACPI_START: u64 = 0xe0000;
/// End of the area reserved for ACPI tables.
pub const ACPI_END: u64 = 0x100000;
/// Start of high memory, where the protected-mode kernel is loaded.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Base of the virtio-mmio device windows (inside the MMIO hole).
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) for real-mode emulation on Intel, just below the BIOS area.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Alignment of the hot-pluggable ranges.
pub const HOTPLUG_REGION_ALIGN: u64 = 1 << 30;

/// A contiguous range of guest physical RAM on one guest node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest NUMA node (proximity domain).
    pub guest_node: u32,
    /// Host NUMA node backing it.
    pub host_node: u32,
    /// Guest physical start.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

impl RamRange {
    /// First address past the range.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A guest node's hot-pluggable range: in SRAT, not in e820 (for virtio-mem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugRange {
    /// Guest NUMA node (proximity domain).
    pub guest_node: u32,
    /// Host NUMA node that will back what gets plugged.
    pub host_node: u32,
    /// Guest physical start (1 GiB aligned).
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The guest physical memory map of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMemoryMap {
    /// Boot RAM ranges, ascending, node by node (a node's RAM splits at the MMIO hole).
    pub ram: Vec<RamRange>,
    /// Hot-pluggable ranges, ascending, one per node that has one.
    pub hotplug: Vec<HotplugRange>,
}

impl GuestMemoryMap {
    /// Lays the nodes' boot RAM out one after the other from address 0, skipping the 32-bit
    /// MMIO hole, then one 1 GiB aligned hot-pluggable range per node that asks for one.
    pub fn new(nodes: &[NumaNodeConfig]) -> Self {
        let mut ram = Vec::new();
        let mut next = 0u64;
        for n in nodes {
            let mut left = n.memory;
            while left > 0 {
                if (MMIO_GAP_START..MMIO_GAP_END).contains(&next) {
                    next = MMIO_GAP_END;
                }
                let limit = if next < MMIO_GAP_START {
                    MMIO_GAP_START - next
                } else {
                    u64::MAX
                };
                let size = left.min(limit);
                ram.push(RamRange {
                    guest_node: n.guest_node,
                    host_node: n.host_node,
                    start: next,
                    size,
                });
                next += size;
                left -= size;
            }
        }
        let mut hotplug = Vec::new();
        let mut next = align_up(next.max(MMIO_GAP_END), HOTPLUG_REGION_ALIGN);
        for n in nodes.iter().filter(|n| n.hotplug_size > 0) {
            hotplug.push(HotplugRange {
                guest_node: n.guest_node,
                host_node: n.host_node,
                start: next,
                size: n.hotplug_size,
            });
            next = align_up(next + n.hotplug_size, HOTPLUG_REGION_ALIGN);
        }
        GuestMemoryMap { ram, hotplug }
    }

    /// The RAM range that holds the low memory (boot structures, kernel, initrd).
    pub fn low_ram_end(&self) -> u64 {
        self.ram.first().map(|r| r.end()).unwrap_or(0)
    }

    /// First address past all boot RAM.
    pub fn ram_end(&self) -> u64 {
        self.ram.last().map(|r| r.end()).unwrap_or(0)
    }

    /// The guest kernel's memblock as it prints it under "Early memory node ranges":
    /// `(node, start, end inclusive)`. The e820 RAM below the EBDA loses page 0
    /// (`trim_bios_range` reserves it) and is cut to whole pages; every boot RAM range from
    /// 1 MiB up follows, in its node.
    pub fn early_node_ranges(&self) -> Vec<(u32, u64, u64)> {
        let mut out = Vec::new();
        if let Some(first) = self.ram.first() {
            out.push((first.guest_node, 0x1000, (EBDA_START & !0xfff) - 1));
        }
        for r in &self.ram {
            let start = r.start.max(HIMEM_START);
            if start < r.end() {
                out.push((r.guest_node, start, r.end() - 1));
            }
        }
        out
    }
}

/// Rounds `v` up to a multiple of the power of two `align`.
pub const fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, mem: u64, hotplug: u64) -> NumaNodeConfig {
        NumaNodeConfig {
            guest_node: id,
            vcpus: vec![id],
            memory: mem,
            host_node: id,
            hotplug_size: hotplug,
        }
    }

    #[test]
    fn nodes_follow_each_other() {
        let m = GuestMemoryMap::new(&[node(0, 512 << 20, 0), node(1, 256 << 20, 1 << 30)]);
        assert_eq!(m.ram.len(), 2);
        assert_eq!((m.ram[0].start, m.ram[0].size), (0, 512 << 20));
        assert_eq!((m.ram[1].start, m.ram[1].size), (512 << 20, 256 << 20));
        assert_eq!(m.hotplug.len(), 1);
        assert_eq!(m.hotplug[0].start, 4 << 30);
        assert_eq!(m.hotplug[0].guest_node, 1);
    }

    #[test]
    fn early_node_ranges_match_the_kernels_memblock() {
        let m = GuestMemoryMap::new(&[node(0, 256 << 20, 0), node(1, 256 << 20, 0)]);
        assert_eq!(
            m.early_node_ranges(),
            vec![
                (0, 0x1000, 0x9efff),
                (0, 0x100000, 0xfff_ffff),
                (1, 0x1000_0000, 0x1fff_ffff)
            ]
        );
    }

    #[test]
    fn ram_skips_the_mmio_hole() {
        let m = GuestMemoryMap::new(&[node(0, 2 << 30, 0), node(1, 2 << 30, 512 << 20)]);
        // Node 1 starts at 2 GiB, fills up to 3 GiB, continues at 4 GiB.
        assert_eq!(m.ram.len(), 3);
        assert_eq!((m.ram[1].start, m.ram[1].end()), (2 << 30, MMIO_GAP_START));
        assert_eq!((m.ram[2].start, m.ram[2].size), (MMIO_GAP_END, 1 << 30));
        assert_eq!(m.ram_end(), 5 << 30);
        assert_eq!(m.hotplug[0].start, 5 << 30);
    }
}
