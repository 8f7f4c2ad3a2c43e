//! MADT: one local APIC per vCPU (in vCPU order, ACPI uid = vCPU index), the in-kernel IOAPIC, ISA IRQ 0 →
//! GSI 2 (KVM routes the PIT to IOAPIC pin 2) and LINT1 as NMI on every CPU.

use acpi_tables::sdt::Sdt;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{APIC_START, IOAPIC_START};

/// MADT structure types (ACPI 6.5, 5.2.12).
const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IO_APIC: u8 = 1;
const TYPE_INTERRUPT_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;

/// The MADT for vCPUs with `apic_ids` (by vCPU index).
pub fn madt(apic_ids: &[u32]) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"APIC", 36, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    body.extend((APIC_START as u32).to_le_bytes());
    body.extend(0u32.to_le_bytes()); // flags: no PC-AT dual 8259 to mask
    for (uid, &apic) in apic_ids.iter().enumerate() {
        // type, length, ACPI processor uid, APIC id, flags (enabled)
        body.extend([TYPE_LOCAL_APIC, 8, uid as u8, apic as u8]);
        body.extend(1u32.to_le_bytes());
    }
    body.extend([TYPE_IO_APIC, 12, 0, 0]);
    body.extend((IOAPIC_START as u32).to_le_bytes());
    body.extend(0u32.to_le_bytes()); // GSI base
                                     // ISA IRQ 0 (bus 0) -> GSI 2, conforming polarity and trigger.
    body.extend([TYPE_INTERRUPT_OVERRIDE, 10, 0, 0]);
    body.extend(2u32.to_le_bytes());
    body.extend(0u16.to_le_bytes());
    // LINT1 of all processors (uid 0xff) is NMI.
    body.extend([TYPE_LOCAL_APIC_NMI, 6, 0xff]);
    body.extend(0u16.to_le_bytes());
    body.push(1);
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn madt_has_one_lapic_per_vcpu() {
        let m = madt(&[0, 1, 4, 5]);
        assert_eq!(super::super::checksum(&m), 0);
        let mut off = 44;
        let mut lapics = Vec::new();
        while off < m.len() {
            if m[off] == TYPE_LOCAL_APIC {
                lapics.push(m[off + 3]);
            }
            off += m[off + 1] as usize;
        }
        assert_eq!(off, m.len());
        assert_eq!(lapics, vec![0, 1, 4, 5]);
    }
}
