//! The zero page (`struct boot_params`) and the e820 memory map the guest kernel reads.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress};

use super::loader::LoadedKernel;
use crate::layout::{
    GuestMemoryMap, ACPI_END, ACPI_START, CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START,
};
use crate::memory::GuestMemory;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// `type_of_loader` for a boot loader without an assigned id (boot.rst).
const LOADER_UNDEFINED: u8 = 0xff;
/// Signature at the end of the boot sector.
const BOOT_FLAG: u16 = 0xaa55;
/// Most e820 entries the zero page holds.
const E820_MAX: usize = 128;

/// One e820 entry: `(address, size, type)`.
pub type E820Entry = (u64, u64, u32);

/// Errors while writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// More e820 entries than the zero page holds.
    #[error("{0} e820 entries do not fit in the zero page (max 128)")]
    TooManyE820(usize),
    /// Writing guest memory failed.
    #[error("writing the zero page: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// The e820 map: low RAM below the EBDA, the ACPI area reserved, then every boot RAM range
/// (the first one starting at 1 MiB). Hot-pluggable ranges are not in it.
pub fn e820_map(map: &GuestMemoryMap) -> Vec<E820Entry> {
    let mut out = vec![
        (0, EBDA_START, E820_RAM),
        (ACPI_START, ACPI_END - ACPI_START, E820_RESERVED),
    ];
    for r in &map.ram {
        let start = r.start.max(HIMEM_START);
        if start < r.end() {
            out.push((start, r.end() - start, E820_RAM));
        }
    }
    out
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_boot_params(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<(), ParamsError> {
    if e820.len() > E820_MAX {
        return Err(ParamsError::TooManyE820(e820.len()));
    }
    let mut params = boot_params {
        hdr: kernel.header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = kernel.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let mut table = params.e820_table;
    for (slot, &(addr, size, kind)) in table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: kind,
        };
    }
    params.e820_table = table;
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(ParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NumaNodeConfig;

    #[test]
    fn e820_covers_ram_but_not_the_bios_area() {
        let nodes = [
            NumaNodeConfig {
                guest_node: 0,
                vcpus: vec![0],
                memory: 256 << 20,
                host_node: 0,
                hotplug_size: 1 << 30,
            },
            NumaNodeConfig {
                guest_node: 1,
                vcpus: vec![1],
                memory: 256 << 20,
                host_node: 0,
                hotplug_size: 0,
            },
        ];
        let e = e820_map(&GuestMemoryMap::new(&nodes));
        assert_eq!(
            e,
            vec![
                (0, 0x9fc00, E820_RAM),
                (0xe0000, 0x20000, E820_RESERVED),
                (0x100000, (256 << 20) - 0x100000, E820_RAM),
                (256 << 20, 256 << 20, E820_RAM),
            ]
        );
    }
}
