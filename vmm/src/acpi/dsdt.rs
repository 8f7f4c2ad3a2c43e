//! DSDT: the devices on the (ACPI-only) platform — COM1 — and the `_S5_` sleep type the
//! kernel writes to the sleep control register to power off. Virtio-mmio devices
//! (`_HID "LNRO0005"`) are added here by [`dsdt_with`].

use acpi_tables::aml;
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{bytes_of, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::serial::{COM1_IRQ, COM1_PORT};
use crate::devices::shutdown::S5_SLEEP_TYPE;

/// COM1 as a PNP0501 16550 at 0x3f8, IRQ 4 (edge, active high).
fn com1() -> Vec<u8> {
    let io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    bytes_of(&aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// The DSDT with only memtide's fixed devices.
pub fn dsdt() -> Vec<u8> {
    dsdt_with(&[])
}

/// The DSDT with extra device objects (AML bytes, e.g. virtio-mmio devices).
pub fn dsdt_with(devices: &[&dyn Aml]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(com1());
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE]);
    body.extend(bytes_of(&aml::Name::new("_S5_".into(), &s5)));
    for d in devices {
        body.extend(bytes_of(*d));
    }
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsdt_names_com1_and_s5() {
        let d = dsdt();
        assert_eq!(&d[..4], b"DSDT");
        assert_eq!(
            u32::from_le_bytes(d[4..8].try_into().expect("4")) as usize,
            d.len()
        );
        assert_eq!(super::super::checksum(&d), 0);
        let has = |s: &[u8]| d.windows(s.len()).any(|w| w == s);
        assert!(has(b"COM1"));
        assert!(has(b"_S5_"));
        // PNP0501 as an EISA id: 0x41d0 0x0105 in big-endian compressed form.
        assert!(has(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
    }
}
