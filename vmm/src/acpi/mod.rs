//! ACPI tables (ACPI 6.5): RSDP → XSDT → FADT (hardware-reduced, with the DSDT), MADT, SRAT,
//! SLIT. They are written into the reserved area at [`ACPI_START`]; the RSDP comes first so
//! both `boot_params.acpi_rsdp_addr` and the kernel's legacy scan of 0xe0000 find it.

pub mod dsdt;
pub mod fadt;
pub mod madt;
pub mod slit;
pub mod srat;

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{GuestMemoryMap, ACPI_END, ACPI_START};
use crate::memory::GuestMemory;

/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"MEMTDE";
/// OEM table id in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"MEMTIDE0";
/// OEM revision.
pub const OEM_REVISION: u32 = 1;

/// What the tables describe.
#[derive(Debug, Clone)]
pub struct AcpiConfig<'a> {
    /// Guest NUMA node of each vCPU (by vCPU index).
    pub vcpu_nodes: &'a [u32],
    /// APIC id of each vCPU (by vCPU index).
    pub apic_ids: &'a [u32],
    /// Number of guest NUMA nodes.
    pub nodes: u32,
    /// The guest memory map (boot RAM and hot-pluggable ranges).
    pub map: &'a GuestMemoryMap,
    /// virtio-mmio devices to describe in the DSDT.
    pub virtio_devices: &'a [crate::devices::virtio::acpi::VirtioMmioAcpi],
}

/// Errors while writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables outgrew the reserved area.
    #[error("ACPI tables need {0} bytes, more than the {1} reserved")]
    TooLarge(u64, u64),
    /// Writing guest memory failed.
    #[error("writing ACPI table at {0:#x}: {1}")]
    Write(u64, vm_memory::GuestMemoryError),
}

/// Serialises an ACPI object.
pub fn bytes_of(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Places tables one after another (8-byte aligned) in the ACPI area.
struct Writer<'a> {
    mem: &'a GuestMemory,
    next: u64,
}

impl Writer<'_> {
    fn put(&mut self, data: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.next;
        let end = addr + data.len() as u64;
        if end > ACPI_END {
            return Err(AcpiError::TooLarge(end - ACPI_START, ACPI_END - ACPI_START));
        }
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|e| AcpiError::Write(addr, e))?;
        self.next = crate::layout::align_up(end, 8);
        Ok(addr)
    }
}

/// Writes all tables into guest memory and returns the RSDP's address.
pub fn create_acpi_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let rsdp_addr = ACPI_START;
    let mut w = Writer {
        mem,
        next: crate::layout::align_up(ACPI_START + Rsdp::len() as u64, 16),
    };
    let objects: Vec<&dyn Aml> = cfg.virtio_devices.iter().map(|d| d as &dyn Aml).collect();
    let dsdt = w.put(&dsdt::dsdt_with(&objects))?;
    let fadt = w.put(&fadt::fadt(dsdt))?;
    let madt = w.put(&madt::madt(cfg.apic_ids))?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    if cfg.nodes > 1 || !cfg.map.hotplug.is_empty() {
        xsdt.add_entry(w.put(&srat::srat(cfg.vcpu_nodes, cfg.apic_ids, cfg.map))?);
        xsdt.add_entry(w.put(&slit::slit(cfg.nodes))?);
    }
    let xsdt_addr = w.put(&bytes_of(&xsdt))?;
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    mem.write_slice(&bytes_of(&rsdp), GuestAddress(rsdp_addr))
        .map_err(|e| AcpiError::Write(rsdp_addr, e))?;
    Ok(rsdp_addr)
}

/// Sums bytes the way ACPI checksums do (a valid table sums to 0).
pub fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NumaNodeConfig;
    use vm_memory::GuestMemoryMmap;

    fn read_table(mem: &GuestMemory, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).expect("length");
        let mut v = vec![0u8; len as usize];
        mem.read_slice(&mut v, GuestAddress(addr)).expect("table");
        v
    }

    #[test]
    fn tables_link_up_and_checksum() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("mem");
        let nodes: Vec<NumaNodeConfig> = (0..2)
            .map(|i| NumaNodeConfig {
                guest_node: i,
                vcpus: vec![i],
                memory: 256 << 20,
                host_node: 0,
                hotplug_size: 1 << 30,
            })
            .collect();
        let map = GuestMemoryMap::new(&nodes);
        let rsdp = create_acpi_tables(
            &mem,
            &AcpiConfig {
                vcpu_nodes: &[0, 1],
                apic_ids: &[0, 1],
                nodes: 2,
                map: &map,
                virtio_devices: &[],
            },
        )
        .expect("tables");
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).expect("rsdp");
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(checksum(&r[..20]), 0);
        assert_eq!(checksum(&r), 0);
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().expect("8 bytes"));
        let xsdt = read_table(&mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(checksum(&xsdt), 0);
        let mut sigs = Vec::new();
        for e in xsdt[36..].chunks(8) {
            let t = read_table(&mem, u64::from_le_bytes(e.try_into().expect("8 bytes")));
            assert_eq!(checksum(&t), 0, "{:?}", String::from_utf8_lossy(&t[..4]));
            sigs.push(String::from_utf8_lossy(&t[..4]).to_string());
            if &t[..4] == b"FACP" {
                let dsdt = u64::from_le_bytes(t[140..148].try_into().expect("8 bytes"));
                let d = read_table(&mem, dsdt);
                assert_eq!(&d[..4], b"DSDT");
                assert_eq!(checksum(&d), 0);
            }
        }
        assert_eq!(sigs, ["FACP", "APIC", "SRAT", "SLIT"]);
    }
}
