//! The DSDT description of a virtio-mmio device, which is how a Linux guest without
//! device-tree or `virtio_mmio.device=` arguments finds it: the `virtio_mmio` driver binds to
//! ACPI devices with `_HID "LNRO0005"` and takes the register window and the interrupt from
//! `_CRS`. The object is the one QEMU's microvm (`-M microvm,acpi=on`) writes:
//!
//! ```text
//! Device (\_SB.VR00) {
//!     Name (_HID, "LNRO0005")
//!     Name (_UID, 0)
//!     Name (_CCA, One)
//!     Name (_CRS, ResourceTemplate () {
//!         Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000)
//!         Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 5 }
//!     })
//! }
//! ```
//!
//! memtide pulses the interrupt through an irqfd without a resample fd, so the line is
//! described edge-triggered: a level-triggered IOAPIC pin would drop a pulse that arrives while
//! the previous interrupt is still unacknowledged (remote IRR set). QEMU microvm says `Level`
//! because its IOAPIC models a real level line.

use acpi_tables::{aml, Aml, AmlSink};

/// The ACPI hardware id Linux's `virtio_mmio` driver matches (`virtio_mmio_acpi_match`).
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// Errors describing a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiDescriptionError {
    /// Only 256 devices get a four-character name `VRxx`.
    #[error("virtio-mmio device number {0} is above 255")]
    TooManyDevices(u32),
    /// `Memory32Fixed` describes windows below 4 GiB only.
    #[error("virtio-mmio window {0:#x}+{1:#x} does not lie below 4 GiB")]
    WindowAbove4G(u64, u64),
}

/// One virtio-mmio device as a DSDT object (see the module documentation); add it to the
/// DSDT with `crate::acpi::dsdt::dsdt_with(&[&description])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioMmioAcpi {
    uid: u32,
    name: String,
    base: u32,
    size: u32,
    gsi: u32,
}

impl VirtioMmioAcpi {
    /// Device number `uid` (its `_UID`, and the name `\_SB.VRxx` in hex), register window
    /// `base..base+size`, interrupt `gsi` (an IOAPIC input).
    pub fn new(uid: u32, base: u64, size: u64, gsi: u32) -> Result<Self, AcpiDescriptionError> {
        if uid > 0xff {
            return Err(AcpiDescriptionError::TooManyDevices(uid));
        }
        let fits = base
            .checked_add(size)
            .is_some_and(|end| end <= 1 << 32 && size > 0);
        let (Ok(base32), Ok(size32), true) = (u32::try_from(base), u32::try_from(size), fits)
        else {
            return Err(AcpiDescriptionError::WindowAbove4G(base, size));
        };
        Ok(VirtioMmioAcpi {
            uid,
            name: format!("_SB_.VR{uid:02X}"),
            base: base32,
            size: size32,
            gsi,
        })
    }

    /// The AML bytes of the device object.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.to_aml_bytes(&mut v);
        v
    }
}

impl Aml for VirtioMmioAcpi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid: &'static str = VIRTIO_MMIO_HID;
        let window = aml::Memory32Fixed::new(true, self.base, self.size);
        // consumer, edge-triggered, active high, exclusive.
        let irq = aml::Interrupt::new(true, true, false, false, self.gsi);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        aml::Device::new(
            self.name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &hid),
                &aml::Name::new("_UID".into(), &self.uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_object_bytes() {
        let d = VirtioMmioAcpi::new(0, 0xd000_0000, 0x1000, 5).expect("valid");
        let b = d.to_bytes();
        // ExtOpPrefix DeviceOp PkgLength, then the dual name \_SB.VR00.
        assert_eq!(&b[..2], &[0x5b, 0x82]);
        let has = |s: &[u8]| b.windows(s.len()).any(|w| w == s);
        assert!(has(&[0x2e, b'_', b'S', b'B', b'_', b'V', b'R', b'0', b'0']));
        // Name(_HID, "LNRO0005") as a string object.
        assert!(has(b"\x08_HID\x0dLNRO0005\x00"));
        assert!(has(b"\x08_UID\x00"));
        assert!(has(b"\x08_CCA\x01"));
        // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
        assert!(has(&[
            0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00
        ]));
        // Extended interrupt: tag 0x89, length 6, flags consumer|edge, one GSI (5).
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00]));
        // End tag with checksum byte.
        assert!(has(&[0x79, 0x00]));
        // The package length covers exactly the rest of the object.
        let pkg_len = usize::from(b[2] & 0x3f) | usize::from(b[3]) << 4;
        assert_eq!(b[2] >> 6, 1, "two-byte package length");
        assert_eq!(pkg_len, b.len() - 2);
    }

    #[test]
    fn names_and_uids_follow_the_number() {
        let d = VirtioMmioAcpi::new(0x1a, 0xd000_1a00, 0x200, 23).expect("valid");
        let b = d.to_bytes();
        let has = |s: &[u8]| b.windows(s.len()).any(|w| w == s);
        assert!(has(b"VR1A"));
        assert!(has(b"\x08_UID\x0a\x1a"));
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 23, 0, 0, 0]));
    }

    #[test]
    fn rejects_what_cannot_be_described() {
        assert_eq!(
            VirtioMmioAcpi::new(256, 0xd000_0000, 0x1000, 5),
            Err(AcpiDescriptionError::TooManyDevices(256))
        );
        assert_eq!(
            VirtioMmioAcpi::new(0, 0xffff_f800, 0x1000, 5),
            Err(AcpiDescriptionError::WindowAbove4G(0xffff_f800, 0x1000))
        );
        assert_eq!(
            VirtioMmioAcpi::new(0, 1 << 32, 0x1000, 5),
            Err(AcpiDescriptionError::WindowAbove4G(1 << 32, 0x1000))
        );
        assert_eq!(
            VirtioMmioAcpi::new(0, 0xd000_0000, 0, 5),
            Err(AcpiDescriptionError::WindowAbove4G(0xd000_0000, 0))
        );
        assert!(VirtioMmioAcpi::new(0, 0xffff_f000, 0x1000, 5).is_ok());
    }
}
