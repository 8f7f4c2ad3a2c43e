//! The virtio-mmio transport, version 2 (virtio 1.2 section 4.2.2): the register file the
//! driver programs, the device status state machine and queue setup. One transport per device;
//! the VMM places it in a [`MMIO_WINDOW_SIZE`] window and forwards accesses of that window.
//!
//! Driver mistakes (writes in the wrong state, unaligned register accesses, bad queue numbers)
//! are ignored, never fatal; [`MmioTransport::ignored_accesses`] counts them.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};

use super::{
    FeatureError, InterruptKind, VirtioDevice, VirtioGuestMemory, VirtioInterrupt,
    FEATURE_VERSION_1,
};

/// Size of one device's MMIO window (registers and configuration space), as QEMU and
/// Firecracker use.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// `MagicValue`: "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version`: 2, the modern (virtio 1.x) register layout.
pub const MMIO_VERSION: u32 = 2;
/// `VendorID`: "MTID". Linux ignores it; the spec leaves it to the device.
pub const MMIO_VENDOR_ID: u32 = 0x4449_544d;
/// `QueueReset` (virtio 1.2, only with VIRTIO_F_RING_RESET, which memtide does not offer).
const VIRTIO_MMIO_QUEUE_RESET: u32 = 0xc0;

/// Errors building a transport.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    /// A device queue's maximum size is not a power of two in 1..=32768.
    #[error("queue {0}: maximum size {1} is not a power of two in 1..=32768")]
    QueueSize(usize, u16),
}

/// The virtio-mmio register file around one device.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: VirtioGuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    shm_select: u32,
    activated: bool,
    ignored_accesses: u64,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .field("activated", &self.activated)
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`, whose buffers live in `mem` and whose signals go to `interrupt`
    /// (the same `Arc` the device was given, if it signals configuration changes itself).
    pub fn new(
        device: D,
        mem: VirtioGuestMemory,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<Self, TransportError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(i, &max)| Queue::new(max).map_err(|_| TransportError::QueueSize(i, max)))
            .collect::<Result<_, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            shm_select: 0,
            activated: false,
            ignored_accesses: 0,
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, e.g. to change virtio-mem's requested size.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device's signals (the `Arc` given to [`MmioTransport::new`]).
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver started the device (DRIVER_OK) and it accepted.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The features the driver accepted (final once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// How many driver accesses were ignored as invalid.
    pub fn ignored_accesses(&self) -> u64 {
        self.ignored_accesses
    }

    /// A guest read of `data.len()` bytes at `offset` into the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // Registers are 32 bits wide and accessed as such (virtio 1.2 section 4.2.2.2).
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.ignored_accesses += 1;
            data.fill(0);
            return;
        }
        let value = self.read_register(offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` into the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            if self.status & VIRTIO_CONFIG_S_DRIVER != 0 {
                self.device
                    .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            } else {
                self.ignored_accesses += 1;
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.ignored_accesses += 1;
            return;
        };
        if !offset.is_multiple_of(4) {
            self.ignored_accesses += 1;
            return;
        }
        self.write_register(offset as u32, u32::from_le_bytes(bytes));
    }

    /// The driver notified queue `index` (a QueueNotify write, or the VMM's ioeventfd on
    /// QueueNotify fired): process it if the device runs, and interrupt if buffers were used.
    pub fn notify(&mut self, index: u32) {
        if !self.is_running() {
            self.ignored_accesses += 1;
            return;
        }
        let Some(queue) = self.queues.get_mut(index as usize) else {
            self.ignored_accesses += 1;
            return;
        };
        if !queue.ready() {
            self.ignored_accesses += 1;
            return;
        }
        if self.device.process_queue(index as usize, queue, &self.mem) {
            self.interrupt.trigger(InterruptKind::UsedBuffer);
        }
    }

    fn is_running(&self) -> bool {
        self.activated && self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: a length of all ones says "no such region".
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => 0,
            VIRTIO_MMIO_QUEUE_RESET => 0,
            VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                self.ignored_accesses += 1;
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_config(offset, value),
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_SHM_SEL => self.shm_select = value,
            _ => self.ignored_accesses += 1,
        }
    }

    /// What the device offers; VERSION_1 always, as a modern-only transport requires.
    fn offered_features(&self) -> u64 {
        self.device.device_features() | FEATURE_VERSION_1
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are accepted between DRIVER and FEATURES_OK (virtio 1.2 section 3.1.1).
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            self.ignored_accesses += 1;
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => self.ignored_accesses += 1,
        }
    }

    /// Queue layout writes are valid after FEATURES_OK, before DRIVER_OK, on a queue that is
    /// not ready (virtio 1.2 section 4.2.3.2).
    fn queue_config_writable(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
            && self.selected_queue().is_some_and(|q| !q.ready())
    }

    fn write_queue_config(&mut self, offset: u32, value: u32) {
        if !self.queue_config_writable() {
            self.ignored_accesses += 1;
            return;
        }
        let Some(q) = self.queues.get_mut(self.queue_select as usize) else {
            return;
        };
        match offset {
            VIRTIO_MMIO_QUEUE_NUM => match u16::try_from(value) {
                Ok(size) if q.try_set_size(size).is_ok() => {}
                _ => self.ignored_accesses += 1,
            },
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.set_used_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let writable = self.queue_config_writable();
        let Some(q) = self.queues.get_mut(self.queue_select as usize) else {
            self.ignored_accesses += 1;
            return;
        };
        match value {
            // Disabling is always allowed (Linux does it when deleting queues).
            0 => q.set_ready(false),
            1 if writable => q.set_ready(true),
            _ => self.ignored_accesses += 1,
        }
    }

    /// The device status state machine (virtio 1.2 sections 2.1 and 3.1): 0 resets; otherwise
    /// bits are only added, each after its predecessor (ACKNOWLEDGE → DRIVER → FEATURES_OK →
    /// DRIVER_OK); FEATURES_OK is kept only if the accepted features are acceptable; DRIVER_OK
    /// activates the device, which on failure asks for a reset (DEVICE_NEEDS_RESET).
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if old & !value != 0 {
            // Clearing bits other than by a reset is not a valid transition.
            self.ignored_accesses += 1;
            return;
        }
        let added = value & !old;
        let mut status = old;
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            status |= VIRTIO_CONFIG_S_FAILED;
        }
        if added & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            status |= VIRTIO_CONFIG_S_ACKNOWLEDGE;
        }
        if added & VIRTIO_CONFIG_S_DRIVER != 0 {
            if status & VIRTIO_CONFIG_S_ACKNOWLEDGE == 0 {
                self.ignored_accesses += 1;
                return;
            }
            status |= VIRTIO_CONFIG_S_DRIVER;
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            if status & VIRTIO_CONFIG_S_DRIVER == 0 {
                self.ignored_accesses += 1;
                return;
            }
            if self.check_features().is_ok() {
                status |= VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                self.ignored_accesses += 1;
                self.status = status;
                return;
            }
            status |= VIRTIO_CONFIG_S_DRIVER_OK;
            self.status = status;
            self.activate();
            return;
        }
        self.status = status;
    }

    /// Whether the driver's accepted features can be used: VERSION_1 accepted, nothing
    /// accepted that was not offered, and the device agrees.
    pub fn check_features(&self) -> Result<(), FeatureError> {
        let acked = self.driver_features;
        let unoffered = acked & !self.offered_features();
        if unoffered != 0 {
            return Err(FeatureError::NotOffered(unoffered));
        }
        if acked & FEATURE_VERSION_1 == 0 {
            return Err(FeatureError::Missing(FEATURE_VERSION_1));
        }
        self.device.check_features(acked)
    }

    fn activate(&mut self) {
        let result = self
            .queues
            .iter()
            .enumerate()
            .find_map(|(i, q)| {
                if !q.ready() {
                    Some(super::ActivateError::QueueNotReady(i))
                } else if !q.is_valid(&self.mem) {
                    Some(super::ActivateError::QueueInvalid(i))
                } else {
                    None
                }
            })
            .map_or_else(
                || self.device.activate(self.driver_features, &self.queues),
                Err,
            );
        match result {
            Ok(()) => {
                self.activated = true;
                self.interrupt.set_driver_ok(true);
            }
            Err(_) => {
                // The driver learns through DEVICE_NEEDS_RESET and a config interrupt.
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                self.interrupt.trigger(InterruptKind::ConfigChange);
            }
        }
    }

    /// Device reset (status 0): registers, queues and pending interrupts back to their initial
    /// values; the device itself keeps what the spec keeps.
    fn reset(&mut self) {
        if self.activated || self.status != 0 {
            self.device.reset();
        }
        self.activated = false;
        self.status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.shm_select = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.reset();
    }
}

#[cfg(test)]
mod tests;
