//! virtio-mem in a VM: one device per guest node with a hot-pluggable range
//! ([`crate::layout::HotplugRange`]), backed by the pool's ZONE_MOVABLE of the host node
//! behind that guest node ([`backend::PoolMemoryBackend`]).
//!
//! [`VmHotplug::attach`] does the wiring for all of a VM's devices: per range it reserves the
//! region (inaccessible) and registers it as one KVM memslot, creates the device with
//! `node_id` = the guest node's proximity domain (`VIRTIO_MEM_F_ACPI_PXM`), its virtio-mmio
//! transport, irqfd and queue ioeventfds, and the DSDT object. vCPUs route MMIO exits
//! through [`VmHotplug::mmio_read`] / [`VmHotplug::mmio_write`] (register accesses); a
//! QueueNotify write completes in KVM on the queue's ioeventfd, which the VM's event loop
//! watches ([`VmHotplug::take_subscribers`]) and hands to the transport, so request
//! handling never holds up the vCPU that notified. The control plane gets
//! [`VmHotplug::hotplug_memory`]; when the VM ends, [`VmHotplug::release_all`] gives every
//! plugged block back to the pool.

pub mod backend;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::control::machine::HotplugMemory;
use crate::control::virtio_mem::{SharedMemDevice, VirtioMemHotplug};
use crate::devices::virtio::acpi::{AcpiDescriptionError, VirtioMmioAcpi};
use crate::devices::virtio::event_handler::{
    register_queue_notifiers, NotifyError, QueueNotifyHandler,
};
use crate::devices::virtio::mem::{VirtioMem, VirtioMemConfig, VirtioMemError};
use crate::devices::virtio::mmio::{MmioTransport, TransportError, MMIO_WINDOW_SIZE};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::VirtioInterrupt;
use crate::event_loop::Subscriber;
use crate::layout::{GuestMemoryMap, VIRTIO_MMIO_START};
use crate::memory::host::HostMemory;
use crate::memory::pool::PoolBacking;
use crate::memory::GuestMemory;
pub use backend::{PoolBackendError, PoolMemoryBackend};

/// Default virtio-mem block size (2 MiB, Linux's x86_64 THP size and the spec's usual one).
pub const DEFAULT_BLOCK_SIZE: u64 = 2 << 20;

/// IOAPIC inputs for the virtio-mem devices, in device order (edge-triggered irqfds; COM1
/// has 4; the rest of the legacy ISA lines are avoided).
const DEVICE_GSIS: [u32; 8] = [5, 6, 7, 10, 11, 13, 14, 15];

/// Why virtio-mem could not be wired into a VM.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// More hot-pluggable nodes than memtide has interrupt lines for.
    #[error("{0} guest nodes with hot-pluggable memory; at most {max} are supported", max = DEVICE_GSIS.len())]
    TooManyDevices(usize),
    /// Reserving the region's address space failed.
    #[error("reserving {0:#x} bytes for the virtio-mem region of guest node {1}: {2}")]
    Reserve(u64, u32, String),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("registering memslot {0} for the virtio-mem region at {1:#x}: {2}")]
    Memslot(u32, u64, kvm_ioctls::Error),
    /// The guest memory map refused the region.
    #[error("adding the virtio-mem region at {0:#x} to guest memory: {1}")]
    Regions(u64, String),
    /// The backend could not be built.
    #[error(transparent)]
    Backend(#[from] PoolBackendError),
    /// The device refused its configuration.
    #[error("virtio-mem device of guest node {0}: {1}")]
    Device(u32, VirtioMemError),
    /// The transport refused the device.
    #[error("virtio-mem transport: {0}")]
    Transport(#[from] TransportError),
    /// Creating or registering the irqfd failed.
    #[error("virtio-mem irqfd on gsi {0}: {1}")]
    IrqFd(u32, String),
    /// The DSDT object could not be described.
    #[error("virtio-mem DSDT object: {0}")]
    Acpi(#[from] AcpiDescriptionError),
    /// The queue ioeventfds could not be registered.
    #[error("virtio-mem queue notifications: {0}")]
    Notify(#[from] NotifyError),
}

/// Whether guest range `(addr, len)` lies wholly in plugged blocks ([`VmHotplug::plugged_check`]).
pub type PluggedCheck = Box<dyn Fn(u64, u64) -> bool + Send + Sync>;

/// One wired device.
struct Attached {
    guest_node: u32,
    base: u64,
    transport: SharedMemDevice<PoolMemoryBackend>,
}

/// The virtio-mem devices of one VM.
pub struct VmHotplug {
    devices: Vec<Attached>,
    acpi: Vec<VirtioMmioAcpi>,
    memory: GuestMemory,
    /// The queue-notification handlers, until the event loop takes them.
    subscribers: Mutex<Vec<Subscriber>>,
}

impl std::fmt::Debug for VmHotplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d: Vec<_> = self
            .devices
            .iter()
            .map(|d| (d.guest_node, d.base))
            .collect();
        f.debug_struct("VmHotplug").field("devices", &d).finish()
    }
}

/// Reserves `size` bytes of inaccessible address space (the unplugged region) for blocks of
/// `host_node`'s memfd ([`HostMemory::reserve`]: huge-page aligned where the host allows).
fn reserve(
    host: &HostMemory,
    host_node: u32,
    size: u64,
    guest_node: u32,
) -> Result<Arc<MmapRegion<()>>, HotplugError> {
    let len = usize::try_from(size)
        .map_err(|_| HotplugError::Reserve(size, guest_node, "does not fit in usize".into()))?;
    host.reserve(host_node, len)
        .map(Arc::new)
        .map_err(|e| HotplugError::Reserve(size, guest_node, e.to_string()))
}

impl VmHotplug {
    /// Wires one virtio-mem device per hot-pluggable range of `map` into the VM of `vm`
    /// (in-kernel irqchip already created), whose boot RAM is `boot`: memslots from
    /// `first_slot` on, blocks of `block_size` from `pool` over `host`. Returns `None` if the
    /// map has no hot-pluggable range. On error, what KVM accepted stays until the VM is
    /// destroyed; nothing is taken from the pool.
    pub fn attach(
        vm: &VmFd,
        map: &GuestMemoryMap,
        boot: &GuestMemory,
        first_slot: u32,
        pool: &PoolBacking,
        host: &Arc<HostMemory>,
        block_size: u64,
    ) -> Result<Option<Self>, HotplugError> {
        if map.hotplug.is_empty() {
            return Ok(None);
        }
        if map.hotplug.len() > DEVICE_GSIS.len() {
            return Err(HotplugError::TooManyDevices(map.hotplug.len()));
        }
        // Every region first: the devices' guest memory must include all of them.
        let mut memory = boot.clone();
        let mut regions = Vec::new();
        for (i, h) in map.hotplug.iter().enumerate() {
            let region = reserve(host, h.host_node, h.size, h.guest_node)?;
            let slot = first_slot + i as u32;
            let mem_region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: h.start,
                memory_size: h.size,
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range is a live reservation kept alive by `region`, which the
            // backend and the guest memory hold for as long as the VM (the memslot dies with
            // the VM fd, which `Vm` drops first). Unplugged parts are PROT_NONE: a guest
            // access to them fails in KVM_RUN instead of reaching other memory.
            unsafe { vm.set_user_memory_region(mem_region) }
                .map_err(|e| HotplugError::Memslot(slot, h.start, e))?;
            let guest_region = GuestRegionMmap::with_arc(region.clone(), GuestAddress(h.start))
                .ok_or_else(|| HotplugError::Regions(h.start, "overflows".into()))?;
            memory = memory
                .insert_region(Arc::new(guest_region))
                .map_err(|e| HotplugError::Regions(h.start, e.to_string()))?;
            regions.push(region);
        }
        let mut devices = Vec::new();
        let mut acpi = Vec::new();
        let mut subscribers = Vec::new();
        for (i, (h, region)) in map.hotplug.iter().zip(regions).enumerate() {
            let base = VIRTIO_MMIO_START + i as u64 * MMIO_WINDOW_SIZE;
            let gsi = DEVICE_GSIS[i];
            let description = VirtioMmioAcpi::new(i as u32, base, MMIO_WINDOW_SIZE, gsi)?;
            let backend = PoolMemoryBackend::new(
                pool.clone(),
                host.clone(),
                h.host_node,
                region,
                h.start,
                block_size,
            )?;
            let config = VirtioMemConfig {
                addr: h.start,
                region_size: h.size,
                block_size,
                node_id: u16::try_from(h.guest_node).ok(),
                requested_size: 0,
            };
            let irqfd =
                EventFd::new(EFD_NONBLOCK).map_err(|e| HotplugError::IrqFd(gsi, e.to_string()))?;
            vm.register_irqfd(&irqfd, gsi)
                .map_err(|e| HotplugError::IrqFd(gsi, e.to_string()))?;
            let irq = Arc::new(VirtioInterrupt::new(Box::new(irqfd)));
            let device = VirtioMem::new(config, backend, irq.clone())
                .map_err(|e| HotplugError::Device(h.guest_node, e))?;
            let transport = MmioTransport::new(device, memory.clone(), irq)?;
            let queues = transport.device().queue_max_sizes().len();
            let transport = Arc::new(Mutex::new(transport));
            let notifiers = register_queue_notifiers(vm, base, queues)?;
            subscribers.push(Arc::new(Mutex::new(QueueNotifyHandler::new(
                transport.clone(),
                notifiers,
            ))) as Subscriber);
            devices.push(Attached {
                guest_node: h.guest_node,
                base,
                transport,
            });
            acpi.push(description);
        }
        Ok(Some(VmHotplug {
            devices,
            acpi,
            memory,
            subscribers: Mutex::new(subscribers),
        }))
    }

    /// The devices' queue-notification handlers, for the VM's event loop (once: later calls
    /// get none).
    pub fn take_subscribers(&self) -> Vec<Subscriber> {
        std::mem::take(&mut *self.subscribers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The DSDT objects of the devices.
    pub fn acpi(&self) -> &[VirtioMmioAcpi] {
        &self.acpi
    }

    /// Guest memory with the device regions (boot RAM plus every region).
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Whether a guest range lies wholly in plugged virtio-mem blocks (`(addr, len)`), for
    /// the balloon: such pages are memfd memory the VMM maps, which it may discard like boot
    /// RAM. Shares the devices; each call locks the one device whose region holds `addr`.
    pub fn plugged_check(&self) -> PluggedCheck {
        let devices: Vec<SharedMemDevice<PoolMemoryBackend>> =
            self.devices.iter().map(|d| d.transport.clone()).collect();
        Box::new(move |addr, len| {
            devices.iter().any(|t| {
                t.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .device()
                    .range_plugged(addr, len)
            })
        })
    }

    /// The devices for the control plane.
    pub fn hotplug_memory(&self) -> Arc<dyn HotplugMemory> {
        Arc::new(VirtioMemHotplug::new(
            self.devices
                .iter()
                .map(|d| (d.guest_node, d.transport.clone()))
                .collect(),
        ))
    }

    fn device_at(&self, addr: u64) -> Option<(&Attached, u64)> {
        self.devices.iter().find_map(|d| {
            addr.checked_sub(d.base)
                .filter(|&off| off < MMIO_WINDOW_SIZE)
                .map(|off| (d, off))
        })
    }

    /// A vCPU's MMIO read at guest physical `addr`; false if no device window holds it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((d, off)) = self.device_at(addr) else {
            return false;
        };
        d.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(off, data);
        true
    }

    /// A vCPU's MMIO write at guest physical `addr`; false if no device window holds it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((d, off)) = self.device_at(addr) else {
            return false;
        };
        d.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(off, data);
        true
    }

    /// Unplugs everything (the VM has ended): every block goes back to the pool and the
    /// devices report nothing plugged.
    pub fn release_all(&self) {
        for d in &self.devices {
            let mut t = d.transport.lock().unwrap_or_else(|p| p.into_inner());
            let dev = t.device_mut();
            if dev.unplug_all().is_err() {
                // The device keeps its state on a backend error; the backend still lets go.
                dev.backend_mut().release_all();
            }
        }
    }
}

impl crate::cpu::vcpu::MmioHandler for VmHotplug {
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.mmio_read(addr, data)
    }
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.mmio_write(addr, data)
    }
}
