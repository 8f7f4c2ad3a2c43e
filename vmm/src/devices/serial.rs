//! COM1: a 16550 UART (vm-superio) at 0x3f8 whose interrupt is an EventFd registered as an
//! irqfd for GSI 4, so raising it never leaves the kernel.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::PioDevice;

/// COM1's base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's ISA IRQ (and GSI).
pub const COM1_IRQ: u32 = 4;
/// Number of ports a 16550 decodes.
pub const UART_PORTS: u16 = 8;

/// An EventFd as vm-superio's interrupt line.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Where console bytes go.
pub type SerialOut = Box<dyn Write + Send>;

/// The serial console device.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, SerialOut>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        SerialDevice {
            serial: Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// Queues input bytes for the guest; returns how many fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.serial.fifo_capacity();
        let n = bytes.len().min(room);
        if n == 0 {
            return 0;
        }
        self.serial
            .enqueue_raw_bytes(&bytes[..n])
            .unwrap_or_default()
    }
}

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.serial.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let Some(&b) = data.first() {
            // An output error (closed stdout) must not stop the guest.
            let _ = self.serial.write(offset as u8, b);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// A writer that keeps what it got (for tests).
    #[derive(Clone, Default)]
    pub(crate) struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmit_and_receive() {
        let buf = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut s = SerialDevice::new(irq.try_clone().expect("clone"), Box::new(buf.clone()));
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*buf.0.lock().expect("lock"), b"hi");
        // Enable the received-data interrupt, then queue input.
        s.write(1, &[1]);
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert!(irq.read().expect("interrupt raised") >= 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b, [b'a']);
    }
}
