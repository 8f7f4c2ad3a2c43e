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
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use crate::devices::virtio::ActivateError;
    use virtio_queue::QueueT;

    const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    const DRV: u32 = VIRTIO_CONFIG_S_DRIVER;
    const FOK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
    const DOK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
    const FEATURE_X: u64 = 1 << 3;

    /// A device with two queues that needs feature X and returns every buffer unused.
    #[derive(Default)]
    struct Dummy {
        config: [u8; 8],
        activations: Vec<u64>,
        resets: usize,
        processed: usize,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn device_features(&self) -> u64 {
            FEATURE_X | (1 << 40)
        }
        fn check_features(&self, acked: u64) -> Result<(), FeatureError> {
            if acked & FEATURE_X == 0 {
                return Err(FeatureError::Missing(FEATURE_X));
            }
            Ok(())
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(0);
            for (i, b) in data.iter_mut().enumerate() {
                if let Some(v) = self.config.get(offset as usize + i) {
                    *b = *v;
                }
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(v) = self.config.get_mut(offset as usize + i) {
                    *v = *b;
                }
            }
        }
        fn activate(&mut self, acked: u64, queues: &[Queue]) -> Result<(), ActivateError> {
            assert_eq!(queues.len(), 2);
            self.activations.push(acked);
            Ok(())
        }
        fn process_queue(&mut self, _i: usize, q: &mut Queue, mem: &VirtioGuestMemory) -> bool {
            let mut used = false;
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                q.add_used(mem, chain.head_index(), 0).expect("used ring");
                self.processed += 1;
                used = true;
            }
            used
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    const GOOD: u64 = FEATURE_VERSION_1 | FEATURE_X;

    fn transport(mem: &VirtioGuestMemory) -> (MmioTransport<Dummy>, CountingIrq) {
        let (irq, line) = counting_interrupt();
        let t = MmioTransport::new(Dummy::default(), mem.clone(), irq).expect("valid queues");
        (t, line)
    }

    /// Negotiates GOOD, sets up both queues on rings in `mem`, DRIVER_OK.
    fn start<'a>(t: &mut MmioTransport<Dummy>, mem: &'a VirtioGuestMemory) -> QueueDriver<'a> {
        assert!(negotiate(t, GOOD));
        let q0 = QueueDriver::new(mem);
        setup_queue(t, 0, u32::from(QUEUE_LEN), &q0.mock);
        let q1 = virtio_queue::mock::MockSplitQueue::create(mem, GuestAddress(0x8000), 8);
        setup_queue(t, 1, 8, &q1);
        driver_ok(t);
        q0
    }

    use vm_memory::GuestAddress;

    #[test]
    fn identification_registers() {
        let mem = test_memory();
        let (mut t, _) = transport(&mem);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(
            device_features(&mut t),
            FEATURE_X | (1 << 40) | FEATURE_VERSION_1
        );
        write32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
        for (q, max) in [(0, 16), (1, 8), (2, 0), (u32::MAX, 0)] {
            write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, q);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), max);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        }
        assert_eq!(read32(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), 0);
        // Registers are read 32 bits at a time; anything else reads zero and is counted.
        let mut b = [0xffu8; 2];
        t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        t.read(2, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(t.ignored_accesses(), 2);
        assert_eq!(
            MmioTransport::new(BadQueues, mem.clone(), counting_interrupt().0).err(),
            Some(TransportError::QueueSize(0, 3))
        );
    }

    struct BadQueues;
    impl VirtioDevice for BadQueues {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[3]
        }
        fn device_features(&self) -> u64 {
            0
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: u64, _: &[Queue]) -> Result<(), ActivateError> {
            Ok(())
        }
        fn process_queue(&mut self, _: usize, _: &mut Queue, _: &VirtioGuestMemory) -> bool {
            false
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn full_handshake_activates_with_the_accepted_features() {
        let mem = test_memory();
        let (mut t, line) = transport(&mem);
        start(&mut t, &mem);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV | FOK | DOK);
        assert!(t.is_activated());
        assert_eq!(t.device().activations, vec![GOOD]);
        assert_eq!(t.driver_features(), GOOD);
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert_eq!(line.get(), 0);
        assert_eq!(t.ignored_accesses(), 0);
    }

    #[test]
    fn features_ok_needs_version_1_offered_bits_and_the_device_consent() {
        let mem = test_memory();
        let (mut t, _) = transport(&mem);
        assert!(!negotiate(&mut t, FEATURE_X), "VERSION_1 missing");
        assert_eq!(
            t.check_features(),
            Err(FeatureError::Missing(FEATURE_VERSION_1))
        );
        assert!(!negotiate(&mut t, GOOD | (1 << 5)), "bit 5 not offered");
        assert_eq!(t.check_features(), Err(FeatureError::NotOffered(1 << 5)));
        assert!(!negotiate(&mut t, FEATURE_VERSION_1), "device needs X");
        // DRIVER_OK without FEATURES_OK does nothing.
        driver_ok(&mut t);
        assert!(!t.is_activated());
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), ACK | DRV);
        assert!(negotiate(&mut t, GOOD | (1 << 40)));
        assert_eq!(t.driver_features(), GOOD | (1 << 40));
    }

    #[test]
    fn driver_features_are_writable_only_between_driver_and_features_ok() {
        let mem = test_memory();
        let (mut t, _) = transport(&mem);
        write_driver_features(&mut t, GOOD);
        assert_eq!(t.driver_features(), 0, "before DRIVER");
        assert!(negotiate(&mut t, GOOD));
        write_driver_features(&mut t, FEATURE_VERSION_1);
        assert_eq!(t.driver_features(), GOOD, "after FEATURES_OK");
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 7);
        write32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        assert_eq!(t.driver_features(), GOOD);
    }

    #[test]
    fn status_bits_come_in_order_and_never_go_away() {
        let mem = test_memory();
        let (mut t, _) = transport(&mem);
        write32(&mut t, VIRTIO_MMIO_STATUS, DRV);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_STATUS),
            0,
            "DRIVER before ACKNOWLEDGE"
        );
        write32(&mut t, VIRTIO_MMIO_STATUS, ACK | FOK);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_STATUS),
            0,
            "FEATURES_OK before DRIVER"
        );
        write32(&mut t, VIRTIO_MMIO_STATUS, ACK | DRV);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_STATUS),
            ACK | DRV,
            "both at once"
        );
        write32(&mut t, VIRTIO_MMIO_STATUS, ACK);
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_STATUS),
            ACK | DRV,
            "cleared a bit"
        );
        write32(
            &mut t,
            VIRTIO_MMIO_STATUS,
            ACK | DRV | VIRTIO_CONFIG_S_FAILED,
        );
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_STATUS),
            ACK | DRV | VIRTIO_CONFIG_S_FAILED
        );
        assert!(t.ignored_accesses() >= 3);
    }

    #[test]
    fn queue_registers_follow_the_setup_rules() {
        let mem = test_memory();
        let (mut t, _) = transport(&mem);
        // Before FEATURES_OK nothing sticks.
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert!(negotiate(&mut t, GOOD));
        // Sizes that are too big or not powers of two are refused.
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 32);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 12);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 1 << 20);
        assert_eq!(t.queues[0].size(), 16);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        assert_eq!(t.queues[0].size(), 4);
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x2000);
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x1);
        assert_eq!(t.queues[0].desc_table(), 0x1_0000_2000);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        // A ready queue's layout is frozen.
        write32(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        assert_eq!(t.queues[0].desc_table(), 0x1_0000_2000);
        // Disabling is allowed, and the queue reads back not ready (Linux checks this).
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        // A queue that does not exist takes nothing.
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 9);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn activation_needs_valid_ready_queues() {
        let mem = test_memory();
        let (mut t, line) = transport(&mem);
        assert!(negotiate(&mut t, GOOD));
        let q0 = QueueDriver::new(&mem);
        setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q0.mock);
        driver_ok(&mut t);
        assert!(!t.is_activated(), "queue 1 not ready");
        assert_ne!(
            read32(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(line.get(), 1);
        assert!(t.device().activations.is_empty());

        // Rings outside guest RAM.
        assert!(negotiate(&mut t, GOOD));
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            0,
            "reset clears it"
        );
        setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q0.mock);
        write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        write32(&mut t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0x10);
        write32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        driver_ok(&mut t);
        assert!(!t.is_activated(), "queue 1 rings beyond RAM");
        assert_ne!(
            read32(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
    }

    #[test]
    fn notify_processes_and_interrupts() {
        let mem = test_memory();
        let (mut t, line) = transport(&mem);
        let mut q = start(&mut t, &mem);
        q.offer(&[Buf {
            addr: BUFFER_ADDR,
            len: 8,
            write: false,
        }]);
        write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(t.device().processed, 1);
        assert_eq!(q.take_used(), Some((0, 0)));
        assert_eq!(line.get(), 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        write32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        // Nothing new: no interrupt. Unknown queue: ignored.
        t.notify(0);
        t.notify(7);
        assert_eq!(line.get(), 1);
        // The ioeventfd path.
        q.offer(&[Buf {
            addr: BUFFER_ADDR,
            len: 8,
            write: false,
        }]);
        t.notify(0);
        assert_eq!(line.get(), 2);
        assert_eq!(t.device().processed, 2);
    }

    #[test]
    fn notify_before_driver_ok_or_after_failure_is_ignored() {
        let mem = test_memory();
        let (mut t, line) = transport(&mem);
        assert!(negotiate(&mut t, GOOD));
        let mut q = QueueDriver::new(&mem);
        setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q.mock);
        q.offer(&[Buf {
            addr: BUFFER_ADDR,
            len: 8,
            write: false,
        }]);
        t.notify(0);
        assert_eq!(t.device().processed, 0);
        let q1 = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0x8000), 8);
        setup_queue(&mut t, 1, 8, &q1);
        driver_ok(&mut t);
        let s = read32(&mut t, VIRTIO_MMIO_STATUS);
        write32(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FAILED);
        t.notify(0);
        assert_eq!(t.device().processed, 0);
        assert_eq!(line.get(), 0);
    }

    #[test]
    fn reset_returns_to_the_initial_state() {
        let mem = test_memory();
        let (mut t, line) = transport(&mem);
        let mut q = start(&mut t, &mem);
        q.offer(&[Buf {
            addr: BUFFER_ADDR,
            len: 8,
            write: false,
        }]);
        t.notify(0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        write32(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert!(!t.is_activated());
        assert_eq!(t.driver_features(), 0);
        assert_eq!(t.device().resets, 1);
        for i in 0..2 {
            write32(&mut t, VIRTIO_MMIO_QUEUE_SEL, i);
            assert_eq!(read32(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        }
        // The config interrupt is held back until the driver runs again.
        t.interrupt().config_changed();
        assert_eq!(line.get(), 1);
        // A second handshake works on fresh rings.
        let mem2 = test_memory();
        let (mut t2, _) = transport(&mem2);
        start(&mut t2, &mem2);
        assert!(t2.is_activated());
    }

    #[test]
    fn config_space_and_generation() {
        let mem = test_memory();
        let (mut t, line) = transport(&mem);
        t.write(0x100, &[1, 2]);
        assert_eq!(
            t.device().config,
            [0; 8],
            "writes before DRIVER are ignored"
        );
        assert!(negotiate(&mut t, GOOD));
        t.write(0x102, &[7, 8, 9]);
        let mut b = [0u8; 8];
        t.read(0x100, &mut b);
        assert_eq!(b, [0, 0, 7, 8, 9, 0, 0, 0]);
        let mut one = [0u8; 1];
        t.read(0x104, &mut one);
        assert_eq!(one, [9]);
        let g = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
        t.interrupt().config_changed();
        assert_eq!(
            read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION),
            g.wrapping_add(1)
        );
        assert_eq!(line.get(), 0, "driver not running yet");
        let q1 = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0x8000), 8);
        let q0 = QueueDriver::new(&mem);
        setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q0.mock);
        setup_queue(&mut t, 1, 8, &q1);
        driver_ok(&mut t);
        t.interrupt().config_changed();
        assert_eq!(line.get(), 1);
        assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    }

    #[test]
    fn a_failing_line_is_counted_and_the_status_bit_stays() {
        let irq = CountingIrq {
            fail: true,
            ..Default::default()
        };
        let interrupt = Arc::new(VirtioInterrupt::new(Box::new(irq)));
        interrupt.trigger(InterruptKind::UsedBuffer);
        assert_eq!(interrupt.failed_triggers(), 1);
        assert_eq!(interrupt.status(), 1);
    }
}
