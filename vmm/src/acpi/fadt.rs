//! FADT: a hardware-reduced platform whose sleep control/status and reset registers are the
//! VMM's shutdown device ([`crate::devices::shutdown`]).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use super::{bytes_of, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::shutdown::{RESET_VALUE, SHUTDOWN_PORT};

/// IA-PC boot architecture flag: no VGA.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IA-PC boot architecture flag: no CMOS RTC.
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// The FADT pointing at the DSDT at `dsdt`.
pub fn fadt(dsdt: u64) -> Vec<u8> {
    let port = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(SHUTDOWN_PORT),
    );
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt);
    b.reset_reg = port;
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = port;
    b.sleep_status_reg = port;
    b.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"MEMTIDE\0").into();
    bytes_of(&b.finalize())
}
