//! The epoll glue of a virtio-mmio device: queue notifications that KVM signals on ioeventfds
//! (a guest write of the queue index to QueueNotify completes in the kernel, without a VM
//! exit to the VMM) are read on the event loop and handed to [`MmioTransport::notify`].

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::MmioTransport;
use super::VirtioDevice;

/// Errors setting up queue notifications.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Creating an EventFd failed.
    #[error("creating the notify eventfd of queue {0}: {1}")]
    EventFd(u32, std::io::Error),
    /// KVM_IOEVENTFD failed.
    #[error("registering the ioeventfd of queue {0} at {1:#x}: {2}")]
    Register(u32, u64, kvm_ioctls::Error),
}

/// The guest physical address whose writes notify the queues of the device at `base`.
pub fn queue_notify_address(base: u64) -> u64 {
    base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY)
}

/// One ioeventfd per queue of the device at MMIO `base`, each matching a 4-byte write of its
/// queue index to QueueNotify. Index `i` of the result belongs to queue `i`.
pub fn register_queue_notifiers(
    vm: &VmFd,
    base: u64,
    queues: usize,
) -> Result<Vec<EventFd>, NotifyError> {
    let addr = queue_notify_address(base);
    let mut fds = Vec::with_capacity(queues);
    for q in 0..queues as u32 {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| NotifyError::EventFd(q, e))?;
        vm.register_ioevent(&fd, &IoEventAddress::Mmio(addr), q)
            .map_err(|e| NotifyError::Register(q, addr, e))?;
        fds.push(fd);
    }
    Ok(fds)
}

/// Event-loop subscriber: queue `i`'s notifier firing → `transport.notify(i)`.
pub struct QueueNotifyHandler<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
    notifiers: Vec<EventFd>,
}

impl<D: VirtioDevice> QueueNotifyHandler<D> {
    /// Watches `notifiers` (index = queue, e.g. from [`register_queue_notifiers`]).
    pub fn new(transport: Arc<Mutex<MmioTransport<D>>>, notifiers: Vec<EventFd>) -> Self {
        QueueNotifyHandler {
            transport,
            notifiers,
        }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for QueueNotifyHandler<D> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let queue = events.data();
        let Some(fd) = self.notifiers.get(queue as usize) else {
            return;
        };
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            let _ = ops.remove(events);
            return;
        }
        // Drain the counter first: a notification after this read fires the fd again.
        if fd.read().is_err() {
            return;
        }
        self.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify(queue);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (q, fd) in self.notifiers.iter().enumerate() {
            let _ = ops.add(Events::with_data(fd, q as u32, EventSet::IN));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mem::request::BlockRequest;
    use crate::devices::virtio::mem::{
        BackendError, MemoryBackend, Request, VirtioMem, VirtioMemConfig,
    };
    use crate::devices::virtio::test_utils::*;
    use event_manager::{EventManager, SubscriberOps};
    use vm_memory::GuestAddress;

    struct Accept;
    impl MemoryBackend for Accept {
        fn plug(&mut self, _: GuestAddress, _: u64) -> Result<(), BackendError> {
            Ok(())
        }
        fn unplug(&mut self, _: GuestAddress, _: u64) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[test]
    fn an_eventfd_notification_processes_the_queue() {
        let mem = test_memory();
        let (irq, line) = counting_interrupt();
        let cfg = VirtioMemConfig {
            addr: 4 << 30,
            region_size: 1 << 30,
            block_size: 2 << 20,
            node_id: None,
            requested_size: 4 << 20,
        };
        let dev = VirtioMem::new(cfg, Accept, irq.clone()).expect("valid");
        let mut t = MmioTransport::new(dev, mem.clone(), irq).expect("valid");
        let offered = device_features(&mut t);
        assert!(negotiate(&mut t, offered));
        let mut q = QueueDriver::new(&mem);
        setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q.mock);
        driver_ok(&mut t);
        let transport = Arc::new(Mutex::new(t));

        let fd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let kick = fd.try_clone().expect("clone");
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().expect("epoll");
        em.add_subscriber(Arc::new(Mutex::new(QueueNotifyHandler::new(
            transport.clone(),
            vec![fd],
        ))));

        let req = Request::Plug(BlockRequest {
            addr: 4 << 30,
            nb_blocks: 2,
        });
        q.put(BUFFER_ADDR, &req.to_bytes());
        q.offer(&[
            Buf {
                addr: BUFFER_ADDR,
                len: 24,
                write: false,
            },
            Buf {
                addr: BUFFER_ADDR + 0x100,
                len: 10,
                write: true,
            },
        ]);
        kick.write(1).expect("kick");
        assert_eq!(em.run_with_timeout(1000).expect("run"), 1);
        assert_eq!(q.take_used(), Some((0, 10)));
        assert_eq!(q.get::<2>(BUFFER_ADDR + 0x100), [0, 0], "ACK");
        assert_eq!(line.get(), 1);
        let t = transport.lock().expect("lock");
        assert_eq!(t.device().plugged_size(), 4 << 20);
    }

    #[test]
    fn notifiers_register_with_kvm() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
        let vm = kvm.create_vm().expect("VM");
        let fds = register_queue_notifiers(&vm, 0xd000_0000, 2).expect("registered");
        assert_eq!(fds.len(), 2);
        assert_eq!(queue_notify_address(0xd000_0000), 0xd000_0050);
        // The same address and datamatch twice is refused by KVM.
        assert!(matches!(
            register_queue_notifiers(&vm, 0xd000_0000, 1),
            Err(NotifyError::Register(0, 0xd000_0050, _))
        ));
    }
}
