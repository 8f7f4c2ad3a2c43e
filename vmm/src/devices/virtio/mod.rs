//! Virtio devices on the virtio-mmio transport (virtio 1.2, modern only).
//!
//! The pieces, and who calls what:
//! - [`VirtioDevice`]: what a concrete device (e.g. [`mem::VirtioMem`]) implements — its id,
//!   feature bits, configuration space, activation and queue processing.
//! - [`mmio::MmioTransport`]: the virtio-mmio register file around one device. The VMM routes
//!   guest MMIO reads/writes of the device's window to [`mmio::MmioTransport::read`] /
//!   [`mmio::MmioTransport::write`], and queue notifications that arrive through an ioeventfd to
//!   [`mmio::MmioTransport::notify`].
//! - [`VirtioInterrupt`]: the device → driver signals (interrupt status bits, the config
//!   generation) and the [`IrqLine`] they pulse; the VMM's line is an irqfd (an [`EventFd`]).
//! - [`acpi::VirtioMmioAcpi`]: the DSDT description (`_HID "LNRO0005"`) through which a Linux
//!   guest finds the device (Debian kernels take no virtio-mmio devices from the command line).
//! - [`event_handler`]: ioeventfds on QueueNotify and the event-loop subscriber that forwards
//!   them to [`mmio::MmioTransport::notify`].
//!
//! Wiring one virtio-mem device into a VM (what the VMM does):
//! 1. Pick a window `base` (e.g. from `layout::VIRTIO_MMIO_START`, [`mmio::MMIO_WINDOW_SIZE`]
//!    apart) and a free IOAPIC input `gsi`; create an `EventFd` and register it as the irqfd
//!    of `gsi` (`VmFd::register_irqfd`).
//! 2. `let irq = Arc::new(VirtioInterrupt::new(Box::new(irqfd)));`
//!    `let dev = mem::VirtioMem::new(config, backend, irq.clone())?;`
//!    `let transport = Arc::new(Mutex::new(MmioTransport::new(dev, guest_memory, irq)?));`
//! 3. Route vCPU MMIO exits in `base..base + MMIO_WINDOW_SIZE` to
//!    `transport.lock().read(addr - base, data)` / `.write(addr - base, data)`.
//! 4. `event_handler::register_queue_notifiers(&vm_fd, base, 1)` and add an
//!    `event_handler::QueueNotifyHandler` to the event loop (without it, QueueNotify writes
//!    still arrive as MMIO exits and work, only slower).
//! 5. Add `acpi::VirtioMmioAcpi::new(uid, base, MMIO_WINDOW_SIZE, gsi)?` to the DSDT.
//! 6. Resize: `transport.lock().device_mut().set_requested_size(bytes)`; progress:
//!    `.device().plugged_size()`; after the pool got memory back: `.device_mut().kick()`.

pub mod acpi;
pub mod balloon;
pub mod event_handler;
pub mod mem;
pub mod mmio;

#[cfg(test)]
pub(crate) mod test_utils;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as virtio devices access it (the same type as the VMM's guest RAM).
pub type VirtioGuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Feature bit `VIRTIO_F_VERSION_1` as a mask (virtio 1.2 section 6): every modern device
/// offers it and the transport refuses FEATURES_OK without it.
pub const FEATURE_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

/// Why a device refuses the features the driver accepted (FEATURES_OK stays clear).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeatureError {
    /// The driver accepted a feature the device did not offer.
    #[error("driver accepted features {0:#x} the device does not offer")]
    NotOffered(u64),
    /// The driver did not accept a feature the device needs.
    #[error("driver did not accept required feature bits {0:#x}")]
    Missing(u64),
}

/// Why a device could not start when the driver set DRIVER_OK.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// A queue the device needs was not made ready by the driver.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// A ready queue's size or ring addresses do not fit guest memory.
    #[error("queue {0} has an invalid size or ring address")]
    QueueInvalid(usize),
    /// A queue's rings lie in guest memory the VMM must not touch (e.g. unplugged
    /// virtio-mem blocks).
    #[error("queue {0} has rings in inaccessible guest memory")]
    RingsInaccessible(usize),
}

/// What a concrete virtio device implements; the transport does the rest.
pub trait VirtioDevice: Send {
    /// The virtio device id (virtio 1.2 section 5), e.g. 24 for a memory device.
    fn device_type(&self) -> u32;

    /// The maximum size of each of the device's virtqueues (its length is the queue count).
    fn queue_max_sizes(&self) -> &[u16];

    /// Every feature bit the device offers, [`FEATURE_VERSION_1`] included.
    fn device_features(&self) -> u64;

    /// Device-specific check of the accepted features when the driver sets FEATURES_OK
    /// (the transport has already checked VERSION_1 and that nothing unoffered was accepted).
    fn check_features(&self, _acked: u64) -> Result<(), FeatureError> {
        Ok(())
    }

    /// Reads `data.len()` bytes of the configuration space at `offset`; bytes past its end
    /// read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// A driver write to the configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// The driver set DRIVER_OK with these accepted features; `queues` are the ready and
    /// valid queues, for a device that wants to check them.
    fn activate(&mut self, acked_features: u64, queues: &[Queue]) -> Result<(), ActivateError>;

    /// Handles the available buffers of queue `index`. Returns whether used buffers were
    /// added (the transport then raises the used-buffer interrupt).
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &VirtioGuestMemory) -> bool;

    /// The driver reset the device (status 0): back to the pre-activation state. Device
    /// state the spec keeps across a reset (e.g. plugged memory) stays.
    fn reset(&mut self);
}

/// A guest interrupt line (the VMM's is an irqfd; tests count pulses).
pub trait IrqLine: Send + Sync {
    /// Pulses the line (edge-triggered).
    fn trigger(&self) -> std::io::Result<()>;
}

impl IrqLine for EventFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}

/// Why the driver is being interrupted: the bits of the InterruptStatus register
/// (virtio 1.2 section 4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device used buffers in a queue.
    UsedBuffer,
    /// The device configuration changed.
    ConfigChange,
}

impl InterruptKind {
    /// The InterruptStatus bit.
    pub fn bit(self) -> u32 {
        match self {
            InterruptKind::UsedBuffer => VIRTIO_MMIO_INT_VRING,
            InterruptKind::ConfigChange => VIRTIO_MMIO_INT_CONFIG,
        }
    }
}

/// The device → driver signals of one device: the InterruptStatus bits, the configuration
/// generation and the interrupt line. Shared (in an `Arc`) by the transport and the device,
/// so a device can announce a configuration change from outside a queue notification (e.g.
/// the control plane changing virtio-mem's `requested_size`).
pub struct VirtioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    driver_ok: AtomicBool,
    failed_triggers: AtomicU64,
    line: Box<dyn IrqLine>,
}

impl std::fmt::Debug for VirtioInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioInterrupt")
            .field("status", &self.status())
            .field("config_generation", &self.config_generation())
            .field("driver_ok", &self.driver_ok.load(Ordering::Acquire))
            .finish()
    }
}

impl VirtioInterrupt {
    /// Signals on `line`.
    pub fn new(line: Box<dyn IrqLine>) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            driver_ok: AtomicBool::new(false),
            failed_triggers: AtomicU64::new(0),
            line,
        }
    }

    /// Sets the status bit of `kind` and pulses the line. A failed pulse is counted (see
    /// [`VirtioInterrupt::failed_triggers`]); the status bit stays set, so the driver sees it
    /// with the next interrupt.
    pub fn trigger(&self, kind: InterruptKind) {
        self.status.fetch_or(kind.bit(), Ordering::AcqRel);
        if self.line.trigger().is_err() {
            self.failed_triggers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The configuration changed in a way the driver must react to: a new generation and,
    /// once the driver is running (DRIVER_OK), a configuration-change interrupt.
    pub fn config_changed(&self) {
        self.bump_config_generation();
        if self.driver_ok.load(Ordering::Acquire) {
            self.trigger(InterruptKind::ConfigChange);
        }
    }

    /// The configuration changed without an interrupt (e.g. virtio-mem's `plugged_size`): a
    /// new generation, so a driver reading a field in several accesses retries.
    pub fn bump_config_generation(&self) {
        self.config_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// How many pulses of the line failed.
    pub fn failed_triggers(&self) -> u64 {
        self.failed_triggers.load(Ordering::Relaxed)
    }

    /// InterruptACK: clears `bits`.
    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    fn set_driver_ok(&self, ok: bool) {
        self.driver_ok.store(ok, Ordering::Release);
    }

    /// Device reset: no pending interrupt, no running driver.
    fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.set_driver_ok(false);
    }
}
