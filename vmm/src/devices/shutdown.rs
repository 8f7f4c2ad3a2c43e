//! How the guest ends the VM: the ACPI sleep control / reset register of the hardware-reduced
//! FADT, and the i8042 keyboard controller's reset line (`reboot=k`).

use std::sync::Arc;

use super::PioDevice;
use crate::exit::{ExitReason, ExitSignal};

/// Port of the ACPI sleep control/status and reset registers (as in Cloud Hypervisor).
pub const SHUTDOWN_PORT: u16 = 0x600;
/// Value the kernel writes to the reset register (FADT `reset_value`).
pub const RESET_VALUE: u8 = 1;
/// Sleep type of S5 (soft off) in the DSDT's `_S5_` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Sleep control register layout (ACPI 6.5, 4.8.3.7): SLP_TYPx in bits 2..4, SLP_EN bit 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_EN: u8 = 1 << 5;
/// i8042 command/status port.
pub const I8042_PORT: u16 = 0x64;
/// i8042 command "pulse reset line".
const I8042_RESET_CMD: u8 = 0xfe;

/// The ACPI shutdown device at [`SHUTDOWN_PORT`].
#[derive(Debug)]
pub struct AcpiShutdown {
    exit: Arc<ExitSignal>,
}

impl AcpiShutdown {
    /// A device that reports to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiShutdown { exit }
    }
}

impl PioDevice for AcpiShutdown {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Sleep status: never "woken" (WAK_STS clear).
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if v == RESET_VALUE {
            self.exit.request(ExitReason::Reset);
        } else if v & SLP_EN != 0 && (v >> SLP_TYP_SHIFT) & 0x7 == S5_SLEEP_TYPE {
            self.exit.request(ExitReason::PowerOff);
        }
    }
}

/// Just enough of an i8042 for the kernel's keyboard-controller reboot: the status register
/// reads as empty buffers, command 0xfe resets the VM.
#[derive(Debug)]
pub struct I8042Reset {
    exit: Arc<ExitSignal>,
}

impl I8042Reset {
    /// A device that reports to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042Reset { exit }
    }
}

impl PioDevice for I8042Reset {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        if data.first() == Some(&I8042_RESET_CMD) {
            self.exit.request(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_resets() {
        let e = Arc::new(ExitSignal::new().expect("eventfd"));
        let mut d = AcpiShutdown::new(e.clone());
        d.write(0, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]); // no SLP_EN: ignored
        assert_eq!(e.reason(), None);
        d.write(0, &[(S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(e.reason(), Some(ExitReason::PowerOff));
        let e = Arc::new(ExitSignal::new().expect("eventfd"));
        AcpiShutdown::new(e.clone()).write(0, &[RESET_VALUE]);
        assert_eq!(e.reason(), Some(ExitReason::Reset));
        let e = Arc::new(ExitSignal::new().expect("eventfd"));
        I8042Reset::new(e.clone()).write(0, &[I8042_RESET_CMD]);
        assert_eq!(e.reason(), Some(ExitReason::Reset));
    }
}
