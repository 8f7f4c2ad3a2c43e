//! Test helpers: guest memory, interrupt lines that count, a driver that programs the
//! virtio-mmio registers as Linux's `virtio_mmio` does, and one that submits buffers on a
//! split queue laid out in guest memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::mmio::MmioTransport;
use super::{IrqLine, VirtioDevice, VirtioGuestMemory, VirtioInterrupt};

/// Size of the test guest's RAM.
pub const TEST_RAM_SIZE: u64 = 16 << 20;
/// Where [`QueueDriver`] lays out its rings.
pub const RING_ADDR: u64 = 0x1000;
/// Where [`QueueDriver`] puts request buffers.
pub const BUFFER_ADDR: u64 = 0x10_0000;

/// 16 MiB of anonymous guest RAM at guest address 0.
pub fn test_memory() -> VirtioGuestMemory {
    VirtioGuestMemory::from_ranges(&[(GuestAddress(0), TEST_RAM_SIZE as usize)])
        .expect("anonymous guest memory")
}

/// An interrupt line that counts its pulses (and can be told to fail).
#[derive(Debug, Default, Clone)]
pub struct CountingIrq {
    /// Pulses so far.
    pub count: Arc<AtomicU64>,
    /// Whether pulses fail.
    pub fail: bool,
}

impl CountingIrq {
    /// Pulses so far.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl IrqLine for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        if self.fail {
            return Err(std::io::Error::other("line down"));
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A shared interrupt on a counting line, and the line.
pub fn counting_interrupt() -> (Arc<VirtioInterrupt>, CountingIrq) {
    let irq = CountingIrq::default();
    (Arc::new(VirtioInterrupt::new(Box::new(irq.clone()))), irq)
}

/// A 32-bit register read.
pub fn read32<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(offset), &mut b);
    u32::from_le_bytes(b)
}

/// A 32-bit register write.
pub fn write32<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

/// The 64 device feature bits, read as the driver does.
pub fn device_features<D: VirtioDevice>(t: &mut MmioTransport<D>) -> u64 {
    write32(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let high = read32(t, VIRTIO_MMIO_DEVICE_FEATURES);
    write32(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = read32(t, VIRTIO_MMIO_DEVICE_FEATURES);
    (u64::from(high) << 32) | u64::from(low)
}

/// Writes the 64 accepted feature bits.
pub fn write_driver_features<D: VirtioDevice>(t: &mut MmioTransport<D>, features: u64) {
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write32(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
}

/// Reset, ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK; returns whether the device kept
/// FEATURES_OK.
pub fn negotiate<D: VirtioDevice>(t: &mut MmioTransport<D>, features: u64) -> bool {
    write32(t, VIRTIO_MMIO_STATUS, 0);
    write32(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write32(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    write_driver_features(t, features);
    write32(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    read32(t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0
}

/// Programs queue `index` with the rings of `q` (size `size`) and makes it ready, as Linux's
/// `vm_setup_vq` does.
pub fn setup_queue<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    index: u32,
    size: u32,
    q: &MockSplitQueue<'_, VirtioGuestMemory>,
) {
    write32(t, VIRTIO_MMIO_QUEUE_SEL, index);
    assert_eq!(read32(t, VIRTIO_MMIO_QUEUE_READY), 0, "queue already live");
    assert!(read32(t, VIRTIO_MMIO_QUEUE_NUM_MAX) >= size);
    write32(t, VIRTIO_MMIO_QUEUE_NUM, size);
    let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
    let (lo, hi) = split(q.desc_table_addr());
    write32(t, VIRTIO_MMIO_QUEUE_DESC_LOW, lo);
    write32(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, hi);
    let (lo, hi) = split(q.avail_addr());
    write32(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, lo);
    write32(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, hi);
    let (lo, hi) = split(q.used_addr());
    write32(t, VIRTIO_MMIO_QUEUE_USED_LOW, lo);
    write32(t, VIRTIO_MMIO_QUEUE_USED_HIGH, hi);
    write32(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

/// Sets DRIVER_OK on top of the current status.
pub fn driver_ok<D: VirtioDevice>(t: &mut MmioTransport<D>) {
    let s = read32(t, VIRTIO_MMIO_STATUS);
    write32(t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
}

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// The driver side of one split queue of size 16 at [`RING_ADDR`].
pub struct QueueDriver<'a> {
    /// The rings.
    pub mock: MockSplitQueue<'a, VirtioGuestMemory>,
    mem: &'a VirtioGuestMemory,
    next_desc: u16,
    next_used: u16,
}

/// Queue size of [`QueueDriver`].
pub const QUEUE_LEN: u16 = 16;

impl<'a> QueueDriver<'a> {
    /// Rings in `mem` at [`RING_ADDR`].
    pub fn new(mem: &'a VirtioGuestMemory) -> Self {
        Self::at(mem, RING_ADDR)
    }

    /// Rings in `mem` at `addr`.
    pub fn at(mem: &'a VirtioGuestMemory, addr: u64) -> Self {
        QueueDriver {
            mock: MockSplitQueue::create(mem, GuestAddress(addr), QUEUE_LEN),
            mem,
            next_desc: 0,
            next_used: 0,
        }
    }

    /// Makes `bufs` one chain and offers it in the available ring; returns its head index.
    pub fn offer(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let idx = (head + i as u16) % QUEUE_LEN;
                let last = i + 1 == bufs.len();
                let mut flags = if b.write {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(
                    b.addr,
                    b.len,
                    flags,
                    (idx + 1) % QUEUE_LEN,
                ))
            })
            .collect();
        assert!(
            head + bufs.len() as u16 <= QUEUE_LEN,
            "chain wraps the table"
        );
        self.mock
            .add_desc_chains(&descs, head)
            .expect("descriptors fit");
        self.next_desc = (head + bufs.len() as u16) % QUEUE_LEN;
        if self.next_desc + 4 > QUEUE_LEN {
            self.next_desc = 0;
        }
        head
    }

    /// The next used element, if the device returned one: (head, length).
    pub fn take_used(&mut self) -> Option<(u32, u32)> {
        let idx: u16 = self.mock.used().idx().load();
        if idx == self.next_used {
            return None;
        }
        let elem = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(self.next_used % QUEUE_LEN))
            .expect("in ring")
            .load();
        self.next_used = self.next_used.wrapping_add(1);
        Some((elem.id(), elem.len()))
    }

    /// Writes `bytes` at `addr`.
    pub fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("in guest RAM");
    }

    /// Reads `N` bytes at `addr`.
    pub fn get<const N: usize>(&self, addr: u64) -> [u8; N] {
        let mut b = [0u8; N];
        self.mem
            .read_slice(&mut b, GuestAddress(addr))
            .expect("in guest RAM");
        b
    }
}
