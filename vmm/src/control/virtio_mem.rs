//! [`HotplugMemory`] over memtide's virtio-mem devices, each behind its virtio-mmio transport
//! (shared with the MMIO bus and the queue notifiers): what a VM hands the control plane once
//! virtio-mem is wired into it, e.g. `Some(Arc::new(VirtioMemHotplug::new(devices)))` from
//! its [`super::Machine::hotplug`].

use std::sync::{Arc, Mutex};

use super::machine::{HotplugMemory, HotplugNode};
use crate::devices::virtio::mem::{MemoryBackend, VirtioMem, VirtioMemStats};
use crate::devices::virtio::mmio::MmioTransport;

/// One transport-wrapped virtio-mem device as the VM shares it.
pub type SharedMemDevice<B> = Arc<Mutex<MmioTransport<VirtioMem<B>>>>;

/// A VM's virtio-mem devices by guest node.
pub struct VirtioMemHotplug<B: MemoryBackend> {
    devices: Vec<(u32, SharedMemDevice<B>)>,
}

impl<B: MemoryBackend> VirtioMemHotplug<B> {
    /// The devices, as `(guest node, device)`.
    pub fn new(devices: Vec<(u32, SharedMemDevice<B>)>) -> Self {
        VirtioMemHotplug { devices }
    }
}

impl<B: MemoryBackend> HotplugMemory for VirtioMemHotplug<B>
where
    MmioTransport<VirtioMem<B>>: Send,
{
    fn nodes(&self) -> Vec<HotplugNode> {
        self.devices
            .iter()
            .map(|(n, t)| {
                let t = t.lock().unwrap_or_else(|p| p.into_inner());
                let d = t.device();
                HotplugNode {
                    guest_node: *n,
                    block_size: d.block_size(),
                    region_size: d.region_size(),
                    usable: d.usable_region_size(),
                    plugged: d.plugged_size(),
                    requested: d.requested_size(),
                }
            })
            .collect()
    }

    fn set_requested(&self, guest_node: u32, bytes: u64) -> Result<(), String> {
        let (_, t) = self
            .devices
            .iter()
            .find(|(n, _)| *n == guest_node)
            .ok_or_else(|| format!("no virtio-mem device on guest node {guest_node}"))?;
        let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
        t.device_mut()
            .set_requested_size(bytes)
            .map_err(|e| e.to_string())
    }

    fn stats(&self) -> Option<VirtioMemStats> {
        let mut sum = VirtioMemStats::default();
        for (_, t) in &self.devices {
            let t = t.lock().unwrap_or_else(|p| p.into_inner());
            sum.add(&t.device().stats());
        }
        Some(sum)
    }

    fn pool_blocks(&self) -> Vec<(u64, u32)> {
        self.devices
            .iter()
            .flat_map(|(_, t)| {
                t.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .device()
                    .backend()
                    .pool_blocks()
            })
            .collect()
    }

    fn kick_busy(&self) -> usize {
        let mut kicked = 0;
        for (_, t) in &self.devices {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            let d = t.device_mut();
            if d.busy_pending() && d.plugged_size() < d.requested_size() {
                d.kick();
                kicked += 1;
            }
        }
        kicked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mem::{BackendError, VirtioMemConfig};
    use crate::devices::virtio::test_utils::{counting_interrupt, test_memory};
    use vm_memory::GuestAddress;

    struct NoBackend;

    impl MemoryBackend for NoBackend {
        fn plug(&mut self, _: GuestAddress, _: u64) -> Result<(), BackendError> {
            Ok(())
        }
        fn unplug(&mut self, _: GuestAddress, _: u64) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[test]
    fn reads_and_sets_the_devices() {
        let (irq, _line) = counting_interrupt();
        let cfg = VirtioMemConfig {
            addr: 4 << 30,
            region_size: 256 << 20,
            block_size: 2 << 20,
            node_id: Some(1),
            requested_size: 0,
        };
        let dev = VirtioMem::new(cfg, NoBackend, irq.clone()).expect("device");
        let t = MmioTransport::new(dev, test_memory(), irq).expect("transport");
        let h = VirtioMemHotplug::new(vec![(1, Arc::new(Mutex::new(t)))]);
        let n = h.nodes();
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].guest_node, n[0].region_size, n[0].block_size),
            (1, 256 << 20, 2 << 20)
        );
        assert_eq!((n[0].plugged, n[0].requested), (0, 0));
        h.set_requested(1, 64 << 20).expect("resize");
        let n = h.nodes();
        assert_eq!(n[0].requested, 64 << 20);
        assert!(n[0].usable >= 64 << 20);
        assert!(h.set_requested(1, 3 << 20).is_err(), "unaligned");
        assert!(h.set_requested(1, 512 << 20).is_err(), "beyond the region");
        assert!(h.set_requested(0, 2 << 20).is_err(), "no device on node 0");
        assert_eq!(h.nodes()[0].requested, 64 << 20);
        assert_eq!(h.kick_busy(), 0, "nobody waits");
    }

    /// A backend that is out of memory until told otherwise.
    struct ShortPool(Arc<std::sync::atomic::AtomicBool>);

    impl MemoryBackend for ShortPool {
        fn plug(&mut self, _: GuestAddress, size: u64) -> Result<(), BackendError> {
            if self.0.load(std::sync::atomic::Ordering::Acquire) {
                Err(BackendError::OutOfMemory(size))
            } else {
                Ok(())
            }
        }
        fn unplug(&mut self, _: GuestAddress, _: u64) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[test]
    fn busy_devices_are_kicked_when_memory_returns() {
        use crate::devices::virtio::mem::{BlockRequest, Request, Response};
        let (irq, line) = counting_interrupt();
        let cfg = VirtioMemConfig {
            addr: 4 << 30,
            region_size: 256 << 20,
            block_size: 2 << 20,
            node_id: None,
            requested_size: 0,
        };
        let short = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let dev = VirtioMem::new(cfg, ShortPool(short.clone()), irq.clone()).expect("device");
        let t = Arc::new(Mutex::new(
            MmioTransport::new(dev, test_memory(), irq).expect("transport"),
        ));
        let h = VirtioMemHotplug::new(vec![(0, t.clone())]);
        h.set_requested(0, 4 << 20).expect("resize");
        let plug = Request::Plug(BlockRequest {
            addr: 4 << 30,
            nb_blocks: 2,
        });
        let answer = t.lock().expect("lock").device_mut().handle_request(plug);
        assert_eq!(answer, Response::Busy, "the pool is short");
        assert!(t.lock().expect("lock").device().busy_pending());
        let generation = t.lock().expect("lock").interrupt().config_generation();
        short.store(false, std::sync::atomic::Ordering::Release);
        assert_eq!(h.kick_busy(), 1);
        assert!(!t.lock().expect("lock").device().busy_pending());
        assert!(t.lock().expect("lock").interrupt().config_generation() > generation);
        assert_eq!(h.kick_busy(), 0, "kicked once");
        let answer = t.lock().expect("lock").device_mut().handle_request(plug);
        assert_eq!(answer, Response::Ack);
        assert_eq!(h.kick_busy(), 0, "plugged as requested");
        let _ = line;
    }

    #[test]
    fn stats_sum_the_devices_and_move_with_requests() {
        use crate::control::VirtioMemReport;
        use crate::devices::virtio::mem::{BlockRequest, Request};
        let (irq, _line) = counting_interrupt();
        let mut devices = Vec::new();
        for (node, addr) in [(0u32, 4u64 << 30), (1, 5 << 30)] {
            let cfg = VirtioMemConfig {
                addr,
                region_size: 256 << 20,
                block_size: 2 << 20,
                node_id: None,
                requested_size: 8 << 20,
            };
            let dev = VirtioMem::new(cfg, NoBackend, irq.clone()).expect("device");
            let t = MmioTransport::new(dev, test_memory(), irq.clone()).expect("transport");
            devices.push((node, Arc::new(Mutex::new(t))));
        }
        let h = VirtioMemHotplug::new(devices.clone());
        let before = h.stats().expect("measured");
        assert_eq!(before.requests.plug + before.queue_nanos, 0);
        for (i, (_, t)) in devices.iter().enumerate() {
            let addr = (4 + i as u64) << 30;
            let mut t = t.lock().expect("lock");
            let d = t.device_mut();
            d.handle_request(Request::Plug(BlockRequest { addr, nb_blocks: 2 }));
            d.handle_request(Request::Unplug(BlockRequest { addr, nb_blocks: 1 }));
        }
        let after = h.stats().expect("measured");
        assert_eq!((after.requests.plug, after.requests.unplug), (2, 2));
        assert_eq!(after.acks, 4);
        let report = VirtioMemReport::new(&after);
        assert_eq!(report.requests["plug"], 2);
        assert_eq!(report.requests["unplug"], 2);
        assert_eq!(report.requests["state"], 0);
        assert_eq!(report.answers["ack"], 4);
        assert_eq!(report.host_nanos, after.queue_nanos);
        assert_eq!(report.request_nanos["plug"], after.request_nanos.plug);
    }
}
