//! Everything a VMM does to put one balloon into a VM, in one call: the irqfd, the device and
//! its transport, the queue notification path, the statistics polling and the DSDT object.
//! What is left to the VMM: route MMIO exits of the window to [`AttachedBalloon::mmio_read`] /
//! [`AttachedBalloon::mmio_write`], put [`AttachedBalloon::acpi`] into the DSDT, and with
//! [`NotifyMode::EventLoop`] add [`AttachedBalloon::take_subscribers`] to its event loop.

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::BalloonBackend;
use super::device::{VirtioBalloon, VirtioBalloonConfig};
use super::event_handler::{StatsPoller, StatsTimer, StatsTimerError};
use crate::devices::virtio::acpi::{AcpiDescriptionError, VirtioMmioAcpi};
use crate::devices::virtio::event_handler::{
    register_queue_notifiers, NotifyError, QueueNotifyHandler,
};
use crate::devices::virtio::mmio::{MmioTransport, TransportError, MMIO_WINDOW_SIZE};
use crate::devices::virtio::{VirtioDevice, VirtioGuestMemory, VirtioInterrupt};

/// Where the balloon sits in the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonPlacement {
    /// Device number in the DSDT (`_UID`, name `\_SB.VRxx`), unique among virtio-mmio devices.
    pub uid: u32,
    /// Guest physical base of the [`MMIO_WINDOW_SIZE`] register window (below 4 GiB).
    pub base: u64,
    /// The IOAPIC input the device interrupts on (through an irqfd).
    pub gsi: u32,
}

/// How queue notifications and statistics requests reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyMode {
    /// The VMM runs an event loop for device subscribers: QueueNotify writes complete in KVM
    /// on ioeventfds, and a timerfd asks for statistics; both are subscribers from
    /// [`AttachedBalloon::take_subscribers`], which the VMM must add to its loop (else the
    /// device never hears of the driver's buffers).
    EventLoop,
    /// No event loop: QueueNotify writes arrive as MMIO exits (no ioeventfd is registered),
    /// and a thread of the balloon's own ([`StatsPoller`]) asks for statistics.
    MmioExits,
}

/// Why the balloon could not be attached. Bad placements and intervals are refused before
/// anything is registered; after a KVM failure, what KVM accepted stays until the VM is
/// destroyed (an irqfd, ioeventfds).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Creating the irqfd failed.
    #[error("creating the balloon irqfd: {0}")]
    IrqFd(std::io::Error),
    /// KVM_IRQFD failed (no in-kernel irqchip, or a bad gsi).
    #[error("registering the balloon irqfd on gsi {0}: {1}")]
    RegisterIrqFd(u32, kvm_ioctls::Error),
    /// The transport refused the device's queues.
    #[error("balloon transport: {0}")]
    Transport(#[from] TransportError),
    /// Registering the queue notifiers failed.
    #[error("balloon queue notifiers: {0}")]
    Notify(#[from] NotifyError),
    /// The stats timer could not be set up.
    #[error("balloon stats timer: {0}")]
    StatsTimer(#[from] StatsTimerError),
    /// The DSDT object could not be described.
    #[error("balloon DSDT object: {0}")]
    Acpi(#[from] AcpiDescriptionError),
}

/// A balloon attached to a VM.
pub struct AttachedBalloon<B: BalloonBackend + 'static> {
    /// The transport around the device (lock it to reach the device).
    pub transport: Arc<Mutex<MmioTransport<VirtioBalloon<B>>>>,
    /// The device's DSDT object.
    pub acpi: VirtioMmioAcpi,
    placement: BalloonPlacement,
    notifier: Option<QueueNotifyHandler<VirtioBalloon<B>>>,
    stats_timer: Option<StatsTimer<B>>,
    stats_poller: Option<StatsPoller>,
}

impl<B: BalloonBackend + 'static> std::fmt::Debug for AttachedBalloon<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedBalloon")
            .field("placement", &self.placement)
            .field("stats_timer", &self.stats_timer.is_some())
            .field("stats_poller", &self.stats_poller.is_some())
            .finish()
    }
}

/// Creates the balloon of `config` over `backend` at `placement` in the VM of `vm`, whose
/// guest RAM is `mem`, with notifications as `mode` says. The VM needs its in-kernel irqchip
/// already (KVM_CREATE_IRQCHIP).
pub fn attach<B: BalloonBackend + 'static>(
    vm: &VmFd,
    mem: VirtioGuestMemory,
    placement: BalloonPlacement,
    mode: NotifyMode,
    config: VirtioBalloonConfig,
    backend: B,
) -> Result<AttachedBalloon<B>, AttachError> {
    let acpi = VirtioMmioAcpi::new(
        placement.uid,
        placement.base,
        MMIO_WINDOW_SIZE,
        placement.gsi,
    )?;
    if let Some(interval) = config.stats_interval.filter(|i| i.is_zero()) {
        return Err(StatsTimerError::ZeroInterval(interval).into());
    }
    let irqfd = EventFd::new(EFD_NONBLOCK).map_err(AttachError::IrqFd)?;
    vm.register_irqfd(&irqfd, placement.gsi)
        .map_err(|e| AttachError::RegisterIrqFd(placement.gsi, e))?;
    let irq = Arc::new(VirtioInterrupt::new(Box::new(irqfd)));
    let device = VirtioBalloon::new(config, backend, irq.clone());
    let queues = device.queue_max_sizes().len();
    let transport = Arc::new(Mutex::new(MmioTransport::new(device, mem, irq)?));
    let mut attached = AttachedBalloon {
        transport: transport.clone(),
        acpi,
        placement,
        notifier: None,
        stats_timer: None,
        stats_poller: None,
    };
    match mode {
        NotifyMode::EventLoop => {
            let notifiers = register_queue_notifiers(vm, placement.base, queues)?;
            attached.notifier = Some(QueueNotifyHandler::new(transport.clone(), notifiers));
            attached.stats_timer = config
                .stats_interval
                .map(|interval| StatsTimer::new(transport.clone(), interval))
                .transpose()?;
        }
        NotifyMode::MmioExits => {
            attached.stats_poller = config
                .stats_interval
                .map(|interval| StatsPoller::spawn(transport.clone(), interval))
                .transpose()?;
        }
    }
    Ok(attached)
}

impl<B: BalloonBackend + 'static> AttachedBalloon<B> {
    /// Where the balloon sits.
    pub fn placement(&self) -> BalloonPlacement {
        self.placement
    }

    /// Whether guest physical `addr` lies in the balloon's register window.
    pub fn contains(&self, addr: u64) -> bool {
        addr.checked_sub(self.placement.base)
            .is_some_and(|off| off < MMIO_WINDOW_SIZE)
    }

    /// A vCPU's MMIO read at guest physical `addr`; false if not in the window.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        if !self.contains(addr) {
            return false;
        }
        self.lock().read(addr - self.placement.base, data);
        true
    }

    /// A vCPU's MMIO write at guest physical `addr`; false if not in the window.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        if !self.contains(addr) {
            return false;
        }
        self.lock().write(addr - self.placement.base, data);
        true
    }

    /// The transport, locked (a poisoned lock is taken over: the transport's state stays
    /// consistent between accesses).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, MmioTransport<VirtioBalloon<B>>> {
        self.transport.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The event-loop subscribers (queue notifiers, stats timer) for the VMM's event manager
    /// ([`NotifyMode::EventLoop`]); empty on a second call and with
    /// [`NotifyMode::MmioExits`].
    pub fn take_subscribers(&mut self) -> Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
        let mut subs: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> = Vec::new();
        if let Some(n) = self.notifier.take() {
            subs.push(Arc::new(Mutex::new(n)));
        }
        if let Some(t) = self.stats_timer.take() {
            subs.push(Arc::new(Mutex::new(t)));
        }
        subs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::balloon::HostMappingBackend;
    use crate::devices::virtio::test_utils::{device_features, negotiate, read32, test_memory};
    use std::time::Duration;
    use virtio_bindings::virtio_mmio::{
        VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_NUM_MAX,
        VIRTIO_MMIO_QUEUE_SEL,
    };

    fn vm_with_irqchip() -> VmFd {
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
        let vm = kvm.create_vm().expect("VM");
        vm.create_irq_chip().expect("irqchip");
        vm
    }

    #[test]
    fn attach_registers_everything_and_routes_the_window() {
        let vm = vm_with_irqchip();
        let mem = test_memory();
        let placement = BalloonPlacement {
            uid: 3,
            base: 0xd000_3000,
            gsi: 9,
        };
        let config = VirtioBalloonConfig {
            stats_interval: Some(Duration::from_secs(5)),
            free_page_reporting: true,
            ..VirtioBalloonConfig::default()
        };
        let mut b = attach(
            &vm,
            mem.clone(),
            placement,
            NotifyMode::EventLoop,
            config,
            HostMappingBackend::new(mem),
        )
        .expect("attached");
        assert_eq!(b.placement(), placement);
        let mut word = [0u8; 4];
        assert!(b.mmio_read(0xd000_3000 + u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut word));
        assert_eq!(u32::from_le_bytes(word), 0x7472_6976);
        assert!(b.mmio_read(0xd000_3000 + u64::from(VIRTIO_MMIO_DEVICE_ID), &mut word));
        assert_eq!(u32::from_le_bytes(word), 5);
        assert!(!b.mmio_read(0xd000_4000, &mut word), "outside the window");
        assert!(!b.mmio_write(0xd000_2fff, &[0]));
        assert!(b.mmio_write(
            0xd000_3000 + u64::from(VIRTIO_MMIO_QUEUE_SEL),
            &3u32.to_le_bytes()
        ));
        assert!(b.mmio_read(
            0xd000_3000 + u64::from(VIRTIO_MMIO_QUEUE_NUM_MAX),
            &mut word
        ));
        assert_eq!(u32::from_le_bytes(word), 256, "queue 3 (reporting) exists");
        {
            let mut t = b.lock();
            let offered = device_features(&mut t);
            assert!(negotiate(&mut t, offered));
            assert_eq!(read32(&mut t, 0x70) & 8, 8, "FEATURES_OK");
        }
        assert_eq!(b.take_subscribers().len(), 2, "notifiers and stats timer");
        assert!(b.take_subscribers().is_empty());
        assert!(b.acpi.to_bytes().windows(8).any(|w| w == b"LNRO0005"));
        // The same window again: KVM refuses the second set of ioeventfds.
        let mem = test_memory();
        let again = attach(
            &vm,
            mem.clone(),
            BalloonPlacement {
                gsi: 10,
                ..placement
            },
            NotifyMode::EventLoop,
            VirtioBalloonConfig::default(),
            HostMappingBackend::new(mem.clone()),
        );
        assert!(matches!(again, Err(AttachError::Notify(_))), "{again:?}");
        // Without an event loop the same window needs no ioeventfd, and stats come from a
        // thread the balloon owns.
        let config = VirtioBalloonConfig {
            stats_interval: Some(Duration::from_secs(5)),
            ..VirtioBalloonConfig::default()
        };
        let mut exits = attach(
            &vm,
            mem.clone(),
            BalloonPlacement {
                gsi: 11,
                ..placement
            },
            NotifyMode::MmioExits,
            config,
            HostMappingBackend::new(mem),
        )
        .expect("attached without ioeventfds");
        assert!(exits.take_subscribers().is_empty());
        assert!(format!("{exits:?}").contains("stats_poller: true"));
    }

    #[test]
    fn attach_rejects_bad_placements_and_intervals_before_touching_kvm() {
        let vm = vm_with_irqchip();
        let mem = test_memory();
        let bad = [
            BalloonPlacement {
                uid: 256,
                base: 0xd000_0000,
                gsi: 5,
            },
            BalloonPlacement {
                uid: 0,
                base: 0xffff_f800,
                gsi: 5,
            },
        ];
        for p in bad {
            let r = attach(
                &vm,
                mem.clone(),
                p,
                NotifyMode::MmioExits,
                VirtioBalloonConfig::default(),
                HostMappingBackend::new(mem.clone()),
            );
            assert!(matches!(r, Err(AttachError::Acpi(_))), "{p:?}");
        }
        let zero = VirtioBalloonConfig {
            stats_interval: Some(Duration::ZERO),
            ..VirtioBalloonConfig::default()
        };
        let p = BalloonPlacement {
            uid: 0,
            base: 0xd000_0000,
            gsi: 5,
        };
        let r = attach(
            &vm,
            mem.clone(),
            p,
            NotifyMode::MmioExits,
            zero,
            HostMappingBackend::new(mem.clone()),
        );
        assert!(matches!(
            r,
            Err(AttachError::StatsTimer(StatsTimerError::ZeroInterval(_)))
        ));
    }
}
