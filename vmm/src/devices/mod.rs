//! Emulated devices and the port-I/O bus the vCPUs dispatch to.

pub mod console_socket;
pub mod serial;
pub mod shutdown;
pub mod virtio;

use std::sync::{Arc, Mutex};

/// A device on the port-I/O bus. Offsets are relative to the device's base port.
pub trait PioDevice: Send {
    /// An `in` from `base + offset`; fill `data`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// An `out` to `base + offset`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A shared device on the bus.
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

/// Errors registering devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping ports.
    #[error("port range {0:#x}+{1} overlaps another device")]
    Overlap(u16, u16),
}

/// The port-I/O bus: a sorted list of `(base, len, device)`.
#[derive(Default, Clone)]
pub struct PioBus {
    devices: Vec<(u16, u16, SharedPioDevice)>,
}

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.devices.iter().map(|(b, l, _)| (*b, *l)).collect();
        f.debug_struct("PioBus").field("ranges", &ranges).finish()
    }
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at ports `base..base+len`.
    pub fn insert(&mut self, base: u16, len: u16, device: SharedPioDevice) -> Result<(), BusError> {
        let end = u32::from(base) + u32::from(len);
        if self
            .devices
            .iter()
            .any(|(b, l, _)| u32::from(*b) < end && u32::from(base) < u32::from(*b) + u32::from(*l))
        {
            return Err(BusError::Overlap(base, len));
        }
        self.devices.push((base, len, device));
        self.devices.sort_by_key(|d| d.0);
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(u16, &SharedPioDevice)> {
        self.devices
            .iter()
            .find(|(b, l, _)| port >= *b && u32::from(port) < u32::from(*b) + u32::from(*l))
            .map(|(b, _, d)| (port - b, d))
    }

    /// Dispatches an `in`; ports without a device read as all ones (an open bus).
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((off, d)) => d.lock().unwrap_or_else(|p| p.into_inner()).read(off, data),
            None => data.fill(0xff),
        }
    }

    /// Dispatches an `out`; writes to ports without a device are dropped.
    pub fn write(&self, port: u16, data: &[u8]) {
        if let Some((off, d)) = self.find(port) {
            d.lock().unwrap_or_else(|p| p.into_inner()).write(off, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Latch(Vec<(u16, u8)>);
    impl PioDevice for Latch {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn dispatch_by_port() {
        let dev = Arc::new(Mutex::new(Latch(Vec::new())));
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, dev.clone()).expect("free");
        assert_eq!(
            bus.insert(0x3fc, 8, dev.clone()),
            Err(BusError::Overlap(0x3fc, 8))
        );
        let mut b = [0u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b, [2]);
        bus.read(0x400, &mut b);
        assert_eq!(b, [0xff]);
        bus.write(0x3f9, &[7]);
        bus.write(0x80, &[1]);
        assert_eq!(dev.lock().expect("lock").0, vec![(1, 7)]);
    }
}
