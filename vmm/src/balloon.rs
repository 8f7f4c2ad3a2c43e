//! virtio-balloon in a VM: one balloon per VM at a fixed place next to the virtio-mem
//! windows (uid [`BALLOON_UID`], base [`BALLOON_BASE`], GSI [`BALLOON_GSI`]), wired with
//! [`crate::devices::virtio::balloon::attach()`] in [`NotifyMode::EventLoop`]: QueueNotify
//! writes complete in KVM on ioeventfds and the statistics timer is a timerfd, both watched
//! by the VM's event loop ([`VmBalloon::take_subscribers`]).
//!
//! The backend is a [`HostMappingBackend`] that only discards boot RAM (the memfd mapping
//! `GuestRam` made): pages of virtio-mem regions are refused (counted as invalid pfns), as
//! unplugged blocks are `PROT_NONE` over pool memory of other owners, and plugged ones go
//! back to the pool through virtio-mem.
//!
//! The control plane reaches the balloon through [`BalloonControl`]; vCPUs reach it (and the
//! virtio-mem devices) through an [`MmioRouter`].

use std::sync::Arc;

use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::cpu::vcpu::MmioHandler;
use crate::devices::virtio::acpi::VirtioMmioAcpi;
use crate::devices::virtio::balloon::{
    attach, balloon_size_for_guest_size, AttachError, AttachedBalloon, BalloonInfo,
    BalloonPlacement, GuestRange, HostMappingBackend, NotifyMode, TargetError, VirtioBalloonConfig,
};
use crate::devices::virtio::mmio::MMIO_WINDOW_SIZE;
use crate::layout::VIRTIO_MMIO_START;
use crate::memory::GuestMemory;

/// The balloon's `_UID` in the DSDT (virtio-mem devices take 0-7).
pub const BALLOON_UID: u32 = 8;
/// The guest physical base of the balloon's register window.
pub const BALLOON_BASE: u64 = VIRTIO_MMIO_START + BALLOON_UID as u64 * MMIO_WINDOW_SIZE;
/// The balloon's IOAPIC input: free of COM1 (4), the ACPI SCI (9) and the virtio-mem lines
/// (5, 6, 7, 10, 11, 13, 14, 15).
pub const BALLOON_GSI: u32 = 12;

/// How often the guest is asked for statistics by default.
pub const DEFAULT_STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// memtide's default balloon: statistics every [`DEFAULT_STATS_INTERVAL`], no deflate on OOM,
/// no free page reporting.
pub fn default_balloon_config() -> VirtioBalloonConfig {
    VirtioBalloonConfig {
        stats_interval: Some(DEFAULT_STATS_INTERVAL),
        ..VirtioBalloonConfig::default()
    }
}

/// A balloon target, in either of the two sizes people think in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonTarget {
    /// The memory the guest should end up with, bytes.
    GuestSize(u64),
    /// The memory the balloon should hold, bytes.
    BalloonSize(u64),
}

/// The control plane's view of a VM's balloon.
pub trait BalloonControl: Send + Sync {
    /// The guest RAM the balloon works on (boot RAM), bytes.
    fn guest_ram(&self) -> u64;
    /// A snapshot of the device.
    fn info(&self) -> BalloonInfo;
    /// Asks the guest for `target`; nothing changes on error.
    fn set_target(&self, target: BalloonTarget) -> Result<(), TargetError>;
}

/// The balloon of one VM.
pub struct VmBalloon {
    attached: AttachedBalloon<HostMappingBackend>,
    guest_ram: u64,
    /// The queue notifiers and the stats timer, until the event loop takes them.
    subscribers: std::sync::Mutex<Vec<crate::event_loop::Subscriber>>,
}

impl std::fmt::Debug for VmBalloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBalloon")
            .field("attached", &self.attached)
            .field("guest_ram", &self.guest_ram)
            .finish_non_exhaustive()
    }
}

/// Whether `range` lies wholly inside one of `ram`'s `(start, len)` ranges.
fn in_ranges(ram: &[(u64, u64)], range: GuestRange) -> bool {
    ram.iter().any(|&(start, len)| {
        range.addr.0 >= start && range.end().checked_sub(start).is_some_and(|off| off <= len)
    })
}

impl VmBalloon {
    /// Attaches the balloon of `config` to the VM of `vm` (irqchip created). `boot` is the
    /// boot RAM; `mem` is all guest memory the driver may put its queues in (boot RAM plus
    /// virtio-mem regions). The balloon discards pages of boot RAM and, through `plugged`
    /// (the VM's [`crate::hotplug::VmHotplug::plugged_check`]), of plugged virtio-mem
    /// blocks: a guest's movable allocations, balloon pages included, come from its
    /// ZONE_MOVABLE first, which is where plugged memory is onlined.
    pub fn attach(
        vm: &VmFd,
        boot: &GuestMemory,
        mem: &GuestMemory,
        config: VirtioBalloonConfig,
        plugged: Option<crate::hotplug::PluggedCheck>,
    ) -> Result<Self, AttachError> {
        let ram: Vec<(u64, u64)> = boot.iter().map(|r| (r.start_addr().0, r.len())).collect();
        let guest_ram = ram.iter().map(|&(_, len)| len).sum();
        let backend = HostMappingBackend::with_check(
            mem.clone(),
            Box::new(move |range| {
                in_ranges(&ram, range)
                    || plugged.as_ref().is_some_and(|p| p(range.addr.0, range.len))
            }),
        );
        let mut attached = attach(
            vm,
            mem.clone(),
            BalloonPlacement {
                uid: BALLOON_UID,
                base: BALLOON_BASE,
                gsi: BALLOON_GSI,
            },
            NotifyMode::EventLoop,
            config,
            backend,
        )?;
        let subscribers = std::sync::Mutex::new(attached.take_subscribers());
        Ok(VmBalloon {
            attached,
            guest_ram,
            subscribers,
        })
    }

    /// The queue notifiers and the stats timer, for the VM's event loop (once: later calls
    /// get none).
    pub fn take_subscribers(&self) -> Vec<crate::event_loop::Subscriber> {
        std::mem::take(&mut *self.subscribers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The DSDT object.
    pub fn acpi(&self) -> &VirtioMmioAcpi {
        &self.attached.acpi
    }

    /// Resets the device (the VM ended, its RAM is about to go back to the pool): the device
    /// lets go of its queues and the driver's stats buffer, so the stats poller, which may
    /// outlive the VM as long as the control plane holds the balloon, never writes to that
    /// memory again. The balloon then reports nothing ballooned.
    pub fn quiesce(&self) {
        use virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS;
        self.attached
            .lock()
            .write(u64::from(VIRTIO_MMIO_STATUS), &0u32.to_le_bytes());
    }
}

impl BalloonControl for VmBalloon {
    fn guest_ram(&self) -> u64 {
        self.guest_ram
    }

    fn info(&self) -> BalloonInfo {
        self.attached.lock().device().info()
    }

    fn set_target(&self, target: BalloonTarget) -> Result<(), TargetError> {
        let balloon_size = match target {
            BalloonTarget::GuestSize(g) => balloon_size_for_guest_size(self.guest_ram, g)?,
            BalloonTarget::BalloonSize(b) if b > self.guest_ram => {
                return Err(TargetError::BalloonSizeTooLarge(b, self.guest_ram))
            }
            BalloonTarget::BalloonSize(b) => b,
        };
        self.attached
            .lock()
            .device_mut()
            .set_balloon_size(balloon_size)
    }
}

impl MmioHandler for VmBalloon {
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.attached.mmio_read(addr, data)
    }
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.attached.mmio_write(addr, data)
    }
}

/// Several MMIO handlers behind one: the first that holds the address answers.
#[derive(Default)]
pub struct MmioRouter {
    handlers: Vec<Arc<dyn MmioHandler>>,
}

impl std::fmt::Debug for MmioRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioRouter")
            .field("handlers", &self.handlers.len())
            .finish()
    }
}

impl MmioRouter {
    /// Adds `handler` after the ones added before.
    pub fn push(&mut self, handler: Arc<dyn MmioHandler>) {
        self.handlers.push(handler);
    }

    /// Whether no handler was added.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

impl MmioHandler for MmioRouter {
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.handlers.iter().any(|h| h.read(addr, data))
    }
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.handlers.iter().any(|h| h.write(addr, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::balloon::BalloonBackend;
    use vm_memory::GuestAddress;

    #[test]
    fn the_check_takes_only_ranges_inside_boot_ram() {
        let ram = [(0, 0x8000_0000), (0x1_0000_0000, 0x4000_0000)];
        assert!(in_ranges(&ram, GuestRange::new(0x1000, 0x1000)));
        assert!(in_ranges(&ram, GuestRange::new(0x7fff_f000, 0x1000)));
        assert!(!in_ranges(&ram, GuestRange::new(0x7fff_f000, 0x2000)));
        assert!(!in_ranges(&ram, GuestRange::new(0x8000_0000, 0x1000)));
        assert!(in_ranges(&ram, GuestRange::new(0x1_3fff_f000, 0x1000)));
        assert!(!in_ranges(&ram, GuestRange::new(0x1_4000_0000, 0x1000)));
        assert!(!in_ranges(&ram, GuestRange::new(u64::MAX - 0x1fff, 0x1000)));
    }

    fn vm() -> VmFd {
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
        let vm = kvm.create_vm().expect("VM");
        vm.create_irq_chip().expect("irqchip");
        vm
    }

    fn memory(regions: &[(u64, usize)]) -> GuestMemory {
        let r: Vec<_> = regions.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        GuestMemory::from_ranges(&r).expect("memory")
    }

    #[test]
    fn attached_balloon_answers_its_window_and_takes_targets_in_both_sizes() {
        let vm = vm();
        let boot = memory(&[(0, 64 << 20)]);
        let all = memory(&[(0, 64 << 20), (1 << 32, 16 << 20)]);
        let b =
            VmBalloon::attach(&vm, &boot, &all, default_balloon_config(), None).expect("attached");
        assert_eq!(b.guest_ram(), 64 << 20);
        let mut word = [0u8; 4];
        assert!(MmioHandler::read(&b, BALLOON_BASE, &mut word));
        assert_eq!(u32::from_le_bytes(word), 0x7472_6976, "virtio magic");
        assert!(MmioHandler::read(&b, BALLOON_BASE + 8, &mut word));
        assert_eq!(u32::from_le_bytes(word), 5, "balloon device id");
        assert!(!MmioHandler::read(&b, BALLOON_BASE - 4, &mut word));
        assert!(b.acpi().to_bytes().windows(8).any(|w| w == b"LNRO0005"));

        b.set_target(BalloonTarget::GuestSize(48 << 20))
            .expect("guest size");
        assert_eq!(b.info().target_bytes(), 16 << 20);
        b.set_target(BalloonTarget::BalloonSize(8 << 20))
            .expect("balloon size");
        assert_eq!(b.info().target_bytes(), 8 << 20);
        for bad in [
            BalloonTarget::GuestSize(65 << 20),
            BalloonTarget::BalloonSize(65 << 20),
            BalloonTarget::GuestSize((32 << 20) + 1),
        ] {
            assert!(b.set_target(bad).is_err(), "{bad:?}");
            assert_eq!(b.info().target_bytes(), 8 << 20, "unchanged after {bad:?}");
        }
        // The backend discards boot RAM only, never the virtio-mem region.
        {
            let t = b.attached.lock();
            let backend = t.device().backend();
            assert!(backend.is_backed(GuestRange::new(0x10_0000, 0x1000)));
            assert!(!backend.is_backed(GuestRange::new(1 << 32, 0x1000)));
        }
        // After quiesce the device is reset: no driver, nothing held.
        b.quiesce();
        assert!(!b.info().active);
        assert!(!b.attached.lock().device().holds_stats_buffer());
    }

    #[test]
    fn the_router_asks_each_handler_in_turn() {
        let vm = vm();
        let boot = memory(&[(0, 16 << 20)]);
        let b = Arc::new(
            VmBalloon::attach(&vm, &boot, &boot, VirtioBalloonConfig::default(), None).expect("b"),
        );
        let mut router = MmioRouter::default();
        assert!(router.is_empty());
        let mut word = [0u8; 4];
        assert!(!router.read(BALLOON_BASE, &mut word));
        router.push(b);
        assert!(router.read(BALLOON_BASE, &mut word));
        assert!(!router.write(BALLOON_BASE + MMIO_WINDOW_SIZE, &[0; 4]));
    }
}
