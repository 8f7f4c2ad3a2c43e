//! Tests of the virtio-mem device: request rules, the driver's view through the transport and
//! a split queue in real guest memory, bad guest input, and random request sequences.

use std::collections::BTreeSet;

use proptest::prelude::*;
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_QUEUE_NOTIFY,
};

use super::device::*;
use super::request::{BlockState, Request, Response};
use crate::devices::virtio::mem::request::BlockRequest;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::test_utils::*;
use crate::devices::virtio::{FeatureError, VirtioDevice, VirtioGuestMemory, FEATURE_VERSION_1};
use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;
const BS: u64 = 2 * MIB;
const REGION: u64 = 4096 * MIB;
const REGION_SIZE: u64 = 1024 * MIB;
const GOOD: u64 = FEATURE_VERSION_1 | VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE;

/// Records the plugged blocks; counts double plugs/unplugs; fails on demand.
#[derive(Debug, Default)]
struct TestBackend {
    blocks: BTreeSet<u64>,
    violations: usize,
    fail_next: usize,
    calls: usize,
}

impl TestBackend {
    fn take_failure(&mut self) -> bool {
        self.calls += 1;
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return true;
        }
        false
    }
}

impl MemoryBackend for TestBackend {
    fn plug(&mut self, addr: GuestAddress, size: u64) -> Result<(), BackendError> {
        if self.take_failure() {
            return Err(BackendError::OutOfMemory(size));
        }
        for b in (addr.0..addr.0 + size).step_by(BS as usize) {
            if !self.blocks.insert(b) {
                self.violations += 1;
            }
        }
        Ok(())
    }
    fn unplug(&mut self, addr: GuestAddress, size: u64) -> Result<(), BackendError> {
        if self.take_failure() {
            return Err(BackendError::Host {
                addr: addr.0,
                size,
                reason: "injected".into(),
            });
        }
        for b in (addr.0..addr.0 + size).step_by(BS as usize) {
            if !self.blocks.remove(&b) {
                self.violations += 1;
            }
        }
        Ok(())
    }
}

fn config(requested: u64) -> VirtioMemConfig {
    VirtioMemConfig {
        addr: REGION,
        region_size: REGION_SIZE,
        block_size: BS,
        node_id: Some(1),
        requested_size: requested,
    }
}

fn device(requested: u64) -> (VirtioMem<TestBackend>, CountingIrq) {
    let (irq, line) = counting_interrupt();
    let d = VirtioMem::new(config(requested), TestBackend::default(), irq).expect("valid");
    (d, line)
}

fn plug(addr: u64, nb_blocks: u16) -> Request {
    Request::Plug(BlockRequest { addr, nb_blocks })
}
fn unplug(addr: u64, nb_blocks: u16) -> Request {
    Request::Unplug(BlockRequest { addr, nb_blocks })
}
fn state(addr: u64, nb_blocks: u16) -> Request {
    Request::State(BlockRequest { addr, nb_blocks })
}
fn blk(i: u64) -> u64 {
    REGION + i * BS
}

/// The bitmap, plugged_size and the backend agree.
fn check_consistent(d: &VirtioMem<TestBackend>) {
    let bitmap: BTreeSet<u64> = (0..d.plugged_blocks().len())
        .filter(|&i| d.plugged_blocks().get(i))
        .map(|i| blk(i as u64))
        .collect();
    assert_eq!(bitmap, d.backend().blocks);
    assert_eq!(d.plugged_size(), bitmap.len() as u64 * BS);
    assert_eq!(d.backend().violations, 0);
    assert!(d.usable_region_size() >= d.requested_size());
    assert!(d.usable_region_size() <= d.region_size());
    assert!(d.usable_region_size().is_multiple_of(BS));
}

#[test]
fn new_rejects_bad_layouts() {
    let (irq, _) = counting_interrupt();
    let make =
        |c: VirtioMemConfig| VirtioMem::new(c, TestBackend::default(), irq.clone()).map(|_| ());
    let c = config(0);
    assert_eq!(
        make(VirtioMemConfig {
            block_size: MIB,
            ..c
        }),
        Err(VirtioMemError::BlockSize(MIB))
    );
    assert_eq!(
        make(VirtioMemConfig {
            block_size: 3 * MIB,
            ..c
        }),
        Err(VirtioMemError::BlockSize(3 * MIB))
    );
    for (addr, size) in [
        (REGION + 64 * MIB, REGION_SIZE),
        (REGION, 0),
        (REGION, 192 * MIB),
        (u64::MAX - 128 * MIB + 1, 256 * MIB),
    ] {
        assert_eq!(
            make(VirtioMemConfig {
                addr,
                region_size: size,
                ..c
            }),
            Err(VirtioMemError::Region(addr, size))
        );
    }
    // A 1 GiB block needs a 1 GiB-aligned region.
    assert_eq!(
        make(VirtioMemConfig {
            block_size: 1024 * MIB,
            region_size: 512 * MIB,
            ..c
        }),
        Err(VirtioMemError::Region(REGION, 512 * MIB))
    );
    assert_eq!(
        make(VirtioMemConfig {
            requested_size: MIB,
            ..c
        }),
        Err(VirtioMemError::RequestedUnaligned(MIB, BS))
    );
    assert_eq!(
        make(VirtioMemConfig {
            requested_size: 2 * REGION_SIZE,
            ..c
        }),
        Err(VirtioMemError::RequestedTooLarge(
            2 * REGION_SIZE,
            REGION_SIZE
        ))
    );
    assert_eq!(make(c), Ok(()));
}

#[test]
fn config_space_layout() {
    let (mut d, _) = device(64 * MIB);
    assert_eq!(d.handle_request(plug(REGION, 3)), Response::Ack);
    let mut c = [0xffu8; CONFIG_SIZE];
    d.read_config(0, &mut c);
    let u64_at = |o: usize| u64::from_le_bytes(c[o..o + 8].try_into().expect("8"));
    assert_eq!(u64_at(0), BS);
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
    assert_eq!(&c[10..16], &[0; 6]);
    assert_eq!(u64_at(16), REGION);
    assert_eq!(u64_at(24), REGION_SIZE);
    assert_eq!(u64_at(32), 64 * MIB + USABLE_EXTENT);
    assert_eq!(u64_at(40), 3 * BS);
    assert_eq!(u64_at(48), 64 * MIB);
    // Partial and out-of-range reads.
    let mut b = [0xffu8; 4];
    d.read_config(44, &mut b);
    assert_eq!(b, [0; 4], "high half of plugged_size");
    d.read_config(54, &mut b);
    assert_eq!(b, [0, 0, 0, 0]);
    d.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
    // Writes change nothing.
    d.write_config(48, &[0xff; 8]);
    assert_eq!(d.requested_size(), 64 * MIB);
    // The usable region never exceeds the region.
    d.set_requested_size(REGION_SIZE).expect("whole region");
    assert_eq!(d.usable_region_size(), REGION_SIZE);
}

#[test]
fn features_offered() {
    let (d, _) = device(0);
    assert_eq!(d.device_features(), GOOD | VIRTIO_MEM_F_ACPI_PXM);
    let (irq, _) = counting_interrupt();
    let no_node = VirtioMemConfig {
        node_id: None,
        ..config(0)
    };
    let d2 = VirtioMem::new(no_node, TestBackend::default(), irq).expect("valid");
    assert_eq!(d2.device_features(), GOOD);
    assert_eq!(d2.device_type(), 24);
    assert_eq!(
        d.check_features(FEATURE_VERSION_1),
        Err(FeatureError::Missing(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE))
    );
    assert_eq!(d.check_features(GOOD), Ok(()));
}

#[test]
fn plug_unplug_state_sequence() {
    let (mut d, _) = device(0);
    assert_eq!(
        d.handle_request(plug(REGION, 1)),
        Response::Nack,
        "nothing requested"
    );
    d.set_requested_size(8 * MIB).expect("valid");
    assert_eq!(d.usable_region_size(), 8 * MIB + USABLE_EXTENT);
    assert_eq!(d.handle_request(plug(blk(0), 2)), Response::Ack);
    assert_eq!(d.plugged_size(), 4 * MIB);
    assert_eq!(
        d.handle_request(plug(blk(0), 1)),
        Response::Error,
        "already plugged"
    );
    assert_eq!(
        d.handle_request(plug(blk(1), 2)),
        Response::Error,
        "overlaps"
    );
    assert_eq!(
        d.handle_request(plug(blk(4), 3)),
        Response::Nack,
        "beyond requested"
    );
    assert_eq!(d.handle_request(plug(blk(4), 2)), Response::Ack);
    assert_eq!(
        d.handle_request(plug(blk(9), 1)),
        Response::Nack,
        "at requested"
    );
    assert_eq!(d.plugged_size(), 8 * MIB);
    assert_eq!(
        d.handle_request(state(blk(0), 2)),
        Response::AckState(BlockState::Plugged)
    );
    assert_eq!(
        d.handle_request(state(blk(0), 5)),
        Response::AckState(BlockState::Mixed)
    );
    assert_eq!(
        d.handle_request(state(blk(10), 2)),
        Response::AckState(BlockState::Unplugged)
    );
    assert_eq!(
        d.handle_request(unplug(blk(1), 3)),
        Response::Error,
        "block 2 unplugged"
    );
    assert_eq!(d.handle_request(unplug(blk(1), 1)), Response::Ack);
    assert_eq!(
        d.handle_request(unplug(blk(1), 1)),
        Response::Error,
        "twice"
    );
    assert_eq!(d.plugged_size(), 6 * MIB);
    assert_eq!(
        d.plugged_ranges(),
        vec![(GuestAddress(blk(0)), BS), (GuestAddress(blk(4)), 2 * BS)]
    );
    // What the balloon may discard: ranges wholly inside plugged blocks.
    assert!(d.range_plugged(blk(0), BS));
    assert!(d.range_plugged(blk(0) + 4096, 4096));
    assert!(
        d.range_plugged(blk(4), 2 * BS),
        "two adjacent plugged blocks"
    );
    assert!(
        !d.range_plugged(blk(0), BS + 4096),
        "runs into unplugged block 1"
    );
    assert!(
        !d.range_plugged(blk(3) + BS - 4096, 8192),
        "starts in unplugged block 3"
    );
    assert!(!d.range_plugged(blk(0), 0), "empty");
    assert!(
        !d.range_plugged(blk(0) - 4096, 8192),
        "starts below the region"
    );
    assert!(!d.range_plugged(u64::MAX - 4095, 4096), "beyond everything");
    // Unplug works whatever requested_size says.
    d.set_requested_size(0).expect("valid");
    assert_eq!(d.handle_request(unplug(blk(4), 2)), Response::Ack);
    check_consistent(&d);
    let s = d.stats();
    assert_eq!(s.nacks, 3);
    assert_eq!(s.errors, 4);
    assert_eq!(s.acks, 7);
}

#[test]
fn out_of_range_requests_are_errors() {
    let (mut d, _) = device(8 * MIB);
    let usable_end = REGION + d.usable_region_size();
    for req in [
        plug(REGION + 4096, 1),
        plug(REGION, 0),
        plug(REGION - BS, 1),
        plug(usable_end, 1),
        plug(usable_end - BS, 2),
        plug(u64::MAX - BS + 1, u16::MAX),
        unplug(REGION + 4096, 1),
        unplug(REGION, 0),
        unplug(usable_end, 1),
        state(REGION + 4096, 1),
        state(REGION, 0),
        state(usable_end, 1),
        state(REGION + REGION_SIZE, 1),
        state(0, 1),
    ] {
        assert_eq!(d.handle_request(req), Response::Error, "{req:?}");
    }
    // Out of the usable region, but inside the region: still an error for STATE.
    assert!(usable_end < REGION + REGION_SIZE);
    assert_eq!(d.plugged_size(), 0);
    assert_eq!(d.backend().calls, 0);
}

#[test]
fn unplug_all_unplugs_everything_and_may_shrink_the_usable_region() {
    let (mut d, _) = device(0);
    assert_eq!(
        d.handle_request(Request::UnplugAll),
        Response::Ack,
        "nothing plugged"
    );
    d.set_requested_size(512 * MIB).expect("valid");
    assert_eq!(d.usable_region_size(), 768 * MIB);
    assert_eq!(d.handle_request(plug(blk(0), 3)), Response::Ack);
    assert_eq!(d.handle_request(plug(blk(300), 5)), Response::Ack);
    d.set_requested_size(0).expect("valid");
    assert_eq!(
        d.usable_region_size(),
        768 * MIB,
        "only UNPLUG_ALL shrinks it"
    );
    assert_eq!(d.handle_request(Request::UnplugAll), Response::Ack);
    assert_eq!(d.plugged_size(), 0);
    assert!(d.backend().blocks.is_empty());
    assert_eq!(d.usable_region_size(), USABLE_EXTENT);
    check_consistent(&d);
}

#[test]
fn backend_failures_answer_busy_and_change_nothing() {
    let (mut d, _) = device(64 * MIB);
    d.backend_mut().fail_next = 1;
    assert_eq!(d.handle_request(plug(blk(0), 4)), Response::Busy);
    assert_eq!(d.plugged_size(), 0);
    assert_eq!(
        d.handle_request(plug(blk(0), 4)),
        Response::Ack,
        "retry works"
    );
    d.backend_mut().fail_next = 1;
    assert_eq!(d.handle_request(unplug(blk(0), 2)), Response::Busy);
    assert_eq!(d.plugged_size(), 4 * BS);
    assert_eq!(d.handle_request(plug(blk(10), 2)), Response::Ack);
    check_consistent(&d);

    // UNPLUG_ALL over two runs whose second unplug fails: the first stays unplugged.
    let (irq, _) = counting_interrupt();
    let mut d3 = VirtioMem::new(config(64 * MIB), SecondCallFails::default(), irq).expect("valid");
    assert_eq!(d3.handle_request(plug(blk(0), 2)), Response::Ack);
    assert_eq!(d3.handle_request(plug(blk(5), 2)), Response::Ack);
    d3.backend_mut().armed = true;
    assert_eq!(d3.handle_request(Request::UnplugAll), Response::Busy);
    assert_eq!(d3.plugged_size(), 2 * BS, "first run unplugged");
    assert_eq!(d3.plugged_ranges(), vec![(GuestAddress(blk(5)), 2 * BS)]);
    assert_eq!(
        d3.handle_request(Request::UnplugAll),
        Response::Ack,
        "retry"
    );
    assert_eq!(d3.plugged_size(), 0);
    assert_eq!(d3.stats().busy, 1);
}

#[test]
fn a_kick_after_busy_reannounces_the_configuration() {
    let mem = test_memory();
    let (mut t, mut q, line) = running(&mem, 16 * MIB);
    t.device_mut().backend_mut().fail_next = 1;
    let (_, r) = submit(&mut t, &mut q, &plug(blk(0), 2).to_bytes());
    assert_eq!(resp_type(r), 2, "BUSY");
    assert!(t.device().busy_pending());
    write32(
        &mut t,
        virtio_bindings::virtio_mmio::VIRTIO_MMIO_INTERRUPT_ACK,
        3,
    );
    let before = line.get();
    let gen = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
    t.device_mut().kick();
    assert!(!t.device().busy_pending());
    assert_eq!(line.get(), before + 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_ne!(read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), gen);
    assert_eq!(config_u64(&mut t, 48), 16 * MIB, "nothing changed");
    let (_, r) = submit(&mut t, &mut q, &plug(blk(0), 2).to_bytes());
    assert_eq!(resp_type(r), 0);
    assert!(!t.device().busy_pending());
}

/// A backend whose second unplug after arming fails once.
#[derive(Default)]
struct SecondCallFails {
    armed: bool,
    unplugs: usize,
}
impl MemoryBackend for SecondCallFails {
    fn plug(&mut self, _: GuestAddress, _: u64) -> Result<(), BackendError> {
        Ok(())
    }
    fn unplug(&mut self, addr: GuestAddress, size: u64) -> Result<(), BackendError> {
        if self.armed {
            self.unplugs += 1;
            if self.unplugs == 2 {
                self.armed = false;
                return Err(BackendError::Host {
                    addr: addr.0,
                    size,
                    reason: "injected".into(),
                });
            }
        }
        Ok(())
    }
}

type MemTransport = MmioTransport<VirtioMem<TestBackend>>;

/// A running device behind the transport, and its queue, as the Linux driver leaves it.
fn running<'a>(
    mem: &'a VirtioGuestMemory,
    requested: u64,
) -> (MemTransport, QueueDriver<'a>, CountingIrq) {
    let (irq, line) = counting_interrupt();
    let dev =
        VirtioMem::new(config(requested), TestBackend::default(), irq.clone()).expect("valid");
    let mut t = MmioTransport::new(dev, mem.clone(), irq).expect("valid queue");
    assert_eq!(
        read32(&mut t, virtio_bindings::virtio_mmio::VIRTIO_MMIO_DEVICE_ID),
        24
    );
    let offered = device_features(&mut t);
    assert!(negotiate(&mut t, offered));
    let q = QueueDriver::new(mem);
    setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q.mock);
    driver_ok(&mut t);
    assert!(t.is_activated());
    assert!(t.device().is_active());
    (t, q, line)
}

/// Reads a 64-bit config field as Linux's virtio_mmio does: two 32-bit reads.
fn config_u64(t: &mut MemTransport, offset: u32) -> u64 {
    let lo = read32(t, VIRTIO_MMIO_CONFIG + offset);
    let hi = read32(t, VIRTIO_MMIO_CONFIG + offset + 4);
    u64::from(lo) | (u64::from(hi) << 32)
}

const REQ_AT: u64 = BUFFER_ADDR;
const RESP_AT: u64 = BUFFER_ADDR + 0x100;

/// Submits `raw` as a request with a 10-byte response buffer; returns (used len, response).
fn submit(t: &mut MemTransport, q: &mut QueueDriver<'_>, raw: &[u8]) -> (u32, [u8; 10]) {
    q.put(REQ_AT, raw);
    q.put(RESP_AT, &[0xee; 10]);
    let head = q.offer(&[
        Buf {
            addr: REQ_AT,
            len: raw.len() as u32,
            write: false,
        },
        Buf {
            addr: RESP_AT,
            len: 10,
            write: true,
        },
    ]);
    write32(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let (id, len) = q.take_used().expect("request answered");
    assert_eq!(id, u32::from(head));
    (len, q.get::<10>(RESP_AT))
}

fn resp_type(r: [u8; 10]) -> u16 {
    u16::from_le_bytes([r[0], r[1]])
}

#[test]
fn driver_handshake_resize_and_requests_over_the_queue() {
    let mem = test_memory();
    let (mut t, mut q, line) = running(&mem, 0);
    assert_eq!(
        t.driver_features() & VIRTIO_MEM_F_ACPI_PXM,
        VIRTIO_MEM_F_ACPI_PXM
    );
    assert_eq!(config_u64(&mut t, 0), BS);
    assert_eq!(config_u64(&mut t, 16), REGION);
    assert_eq!(config_u64(&mut t, 24), REGION_SIZE);
    assert_eq!(config_u64(&mut t, 48), 0);

    // The control plane asks for 16 MiB: a config interrupt and a new generation.
    let gen = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
    t.device_mut().set_requested_size(16 * MIB).expect("valid");
    assert_eq!(line.get(), 1);
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_ne!(read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), gen);
    assert_eq!(config_u64(&mut t, 48), 16 * MIB);
    assert_eq!(config_u64(&mut t, 32), 16 * MIB + USABLE_EXTENT);

    // The driver plugs 8 blocks in two requests.
    let (len, r) = submit(&mut t, &mut q, &plug(blk(0), 4).to_bytes());
    assert_eq!((len, resp_type(r)), (10, 0));
    assert_eq!(line.get(), 2, "used-buffer interrupt");
    assert_eq!(read32(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    let gen = read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
    let (_, r) = submit(&mut t, &mut q, &plug(blk(4), 4).to_bytes());
    assert_eq!(resp_type(r), 0);
    assert_ne!(
        read32(&mut t, VIRTIO_MMIO_CONFIG_GENERATION),
        gen,
        "plugged_size moved"
    );
    assert_eq!(config_u64(&mut t, 40), 16 * MIB);
    let (_, r) = submit(&mut t, &mut q, &plug(blk(8), 1).to_bytes());
    assert_eq!(resp_type(r), 1, "NACK beyond requested");
    let (_, r) = submit(&mut t, &mut q, &state(blk(6), 4).to_bytes());
    assert_eq!(r, [0, 0, 0, 0, 0, 0, 0, 0, 2, 0], "ACK, MIXED");
    let (_, r) = submit(&mut t, &mut q, &unplug(blk(0), 2).to_bytes());
    assert_eq!(resp_type(r), 0);
    let (_, r) = submit(&mut t, &mut q, &Request::UnplugAll.to_bytes());
    assert_eq!(resp_type(r), 0);
    assert_eq!(config_u64(&mut t, 40), 0);
    assert!(t.device().backend().blocks.is_empty());

    // A device reset keeps block states; the driver starts over.
    let (_, r) = submit(&mut t, &mut q, &plug(blk(0), 1).to_bytes());
    assert_eq!(resp_type(r), 0);
    write32(&mut t, virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS, 0);
    assert!(!t.device().is_active());
    assert_eq!(t.device().plugged_size(), BS);
    check_consistent(t.device());
}

#[test]
fn the_device_refuses_a_driver_without_unplugged_inaccessible() {
    let mem = test_memory();
    let (irq, _) = counting_interrupt();
    let dev = VirtioMem::new(config(0), TestBackend::default(), irq.clone()).expect("valid");
    let mut t = MmioTransport::new(dev, mem.clone(), irq).expect("valid");
    assert!(!negotiate(
        &mut t,
        FEATURE_VERSION_1 | VIRTIO_MEM_F_ACPI_PXM
    ));
    driver_ok(&mut t);
    assert!(!t.is_activated());
    assert!(!t.device().is_active());
    assert!(negotiate(&mut t, GOOD), "without ACPI_PXM is fine");
}

#[test]
fn bad_guest_buffers_are_answered_or_dropped_without_harm() {
    let mem = test_memory();
    let (mut t, mut q, _) = running(&mem, 64 * MIB);

    // A request shorter than 24 bytes: ERROR.
    let (len, r) = submit(&mut t, &mut q, &plug(blk(0), 1).to_bytes()[..16]);
    assert_eq!((len, resp_type(r)), (10, 3));
    // An unknown request type: ERROR.
    let mut raw = plug(blk(0), 1).to_bytes();
    raw[0] = 9;
    let (_, r) = submit(&mut t, &mut q, &raw);
    assert_eq!(resp_type(r), 3);

    // No room for the response: returned with nothing written.
    q.put(REQ_AT, &plug(blk(0), 1).to_bytes());
    q.put(RESP_AT, &[0xee; 10]);
    q.offer(&[
        Buf {
            addr: REQ_AT,
            len: 24,
            write: false,
        },
        Buf {
            addr: RESP_AT,
            len: 4,
            write: true,
        },
    ]);
    t.notify(0);
    assert_eq!(q.take_used().map(|u| u.1), Some(0));
    assert_eq!(q.get::<10>(RESP_AT), [0xee; 10]);

    // Only a response buffer (no request): ERROR.
    q.offer(&[Buf {
        addr: RESP_AT,
        len: 10,
        write: true,
    }]);
    t.notify(0);
    assert_eq!(q.take_used().map(|u| u.1), Some(10));
    assert_eq!(resp_type(q.get::<10>(RESP_AT)), 3);

    // Buffers outside guest RAM.
    q.offer(&[
        Buf {
            addr: 1 << 40,
            len: 24,
            write: false,
        },
        Buf {
            addr: RESP_AT,
            len: 10,
            write: true,
        },
    ]);
    t.notify(0);
    assert_eq!(
        q.take_used().map(|u| u.1),
        Some(10),
        "unreadable request: ERROR"
    );
    q.offer(&[
        Buf {
            addr: REQ_AT,
            len: 24,
            write: false,
        },
        Buf {
            addr: TEST_RAM_SIZE - 4,
            len: 10,
            write: true,
        },
    ]);
    t.notify(0);
    assert_eq!(
        q.take_used().map(|u| u.1),
        Some(0),
        "response beyond RAM: dropped"
    );

    // A response buffer in unplugged device memory is never touched.
    q.offer(&[
        Buf {
            addr: REQ_AT,
            len: 24,
            write: false,
        },
        Buf {
            addr: blk(7),
            len: 10,
            write: true,
        },
    ]);
    t.notify(0);
    assert_eq!(q.take_used().map(|u| u.1), Some(0));

    // A request split over two descriptors is fine.
    let raw = plug(blk(2), 2).to_bytes();
    q.put(REQ_AT, &raw[..8]);
    q.put(REQ_AT + 0x40, &raw[8..]);
    q.offer(&[
        Buf {
            addr: REQ_AT,
            len: 8,
            write: false,
        },
        Buf {
            addr: REQ_AT + 0x40,
            len: 16,
            write: false,
        },
        Buf {
            addr: RESP_AT,
            len: 10,
            write: true,
        },
    ]);
    t.notify(0);
    assert_eq!(q.take_used().map(|u| u.1), Some(10));
    assert_eq!(resp_type(q.get::<10>(RESP_AT)), 0);
    assert_eq!(t.device().plugged_size(), 2 * BS);

    // A chain whose next index leaves the table ends; a bogus avail index is refused.
    let desc = virtio_queue::desc::RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
        REQ_AT, 24, 1, 200,
    ));
    q.mock.add_desc_chains(&[desc], 12).expect("fits");
    t.notify(0);
    assert!(q.take_used().is_some());
    let idx: u16 = q.mock.avail().idx().load();
    q.mock.avail().idx().store(idx.wrapping_add(1000));
    t.notify(0);
    assert!(q.take_used().is_none());

    let s = t.device().stats();
    assert_eq!(s.dropped_chains, 4);
    assert_eq!(s.errors, 4);
    check_consistent(t.device());
}

#[test]
fn a_boxed_backend_works_like_the_backend() {
    let (irq, _) = counting_interrupt();
    let backend: Box<dyn MemoryBackend> = Box::new(TestBackend::default());
    let mut d = VirtioMem::new(config(8 * MIB), backend, irq).expect("valid");
    assert_eq!(d.handle_request(plug(blk(0), 4)), Response::Ack);
    assert_eq!(d.handle_request(unplug(blk(1), 2)), Response::Ack);
    assert_eq!(
        d.plugged_ranges(),
        vec![(GuestAddress(blk(0)), BS), (GuestAddress(blk(3)), BS)]
    );
}

#[test]
fn set_requested_size_validates() {
    let (mut d, line) = device(0);
    assert_eq!(
        d.set_requested_size(MIB),
        Err(VirtioMemError::RequestedUnaligned(MIB, BS))
    );
    assert_eq!(
        d.set_requested_size(REGION_SIZE + BS),
        Err(VirtioMemError::RequestedTooLarge(
            REGION_SIZE + BS,
            REGION_SIZE
        ))
    );
    assert_eq!(d.requested_size(), 0);
    d.set_requested_size(REGION_SIZE).expect("whole region");
    assert_eq!(line.get(), 0, "no driver yet: no interrupt");
}

/// One step of a random run.
#[derive(Debug, Clone)]
enum Step {
    Request(Request),
    Resize(u64),
    FailNext,
}

fn step() -> impl Strategy<Value = Step> {
    let addr = prop_oneof![
        8 => (0u64..520).prop_map(blk),
        1 => any::<u64>(),
        1 => (0u64..1024).prop_map(|i| REGION + i * 4096),
    ];
    let block = (addr, 0u16..12).prop_map(|(addr, nb_blocks)| BlockRequest { addr, nb_blocks });
    prop_oneof![
        4 => block.clone().prop_map(|b| Step::Request(Request::Plug(b))),
        3 => block.clone().prop_map(|b| Step::Request(Request::Unplug(b))),
        1 => block.prop_map(|b| Step::Request(Request::State(b))),
        1 => Just(Step::Request(Request::UnplugAll)),
        1 => (0u64..520).prop_map(|n| Step::Resize(n * BS)),
        1 => Just(Step::FailNext),
    ]
}

proptest! {
    #[test]
    fn bitmap_plugged_size_and_backend_always_agree(steps in proptest::collection::vec(step(), 1..120)) {
        let (mut d, _) = device(64 * MIB);
        for s in steps {
            match s {
                Step::Resize(size) => {
                    let ok = d.set_requested_size(size).is_ok();
                    prop_assert_eq!(ok, size <= REGION_SIZE);
                }
                Step::FailNext => d.backend_mut().fail_next = 1,
                Step::Request(r) => {
                    let before = d.plugged_size();
                    let resp = d.handle_request(r);
                    match (r, resp) {
                        (Request::Plug(b), Response::Ack) => {
                            prop_assert_eq!(d.plugged_size(), before + u64::from(b.nb_blocks) * BS);
                            prop_assert!(d.plugged_size() <= d.requested_size());
                        }
                        (Request::Plug(b), Response::Nack) => {
                            prop_assert!(before + u64::from(b.nb_blocks) * BS > d.requested_size());
                        }
                        (Request::Unplug(b), Response::Ack) => {
                            prop_assert_eq!(d.plugged_size(), before - u64::from(b.nb_blocks) * BS);
                        }
                        (Request::UnplugAll, Response::Ack) => prop_assert_eq!(d.plugged_size(), 0),
                        (Request::State(_), Response::AckState(_) | Response::Error) => {}
                        (_, Response::Error | Response::Busy) => prop_assert_eq!(d.plugged_size(), before),
                        (r, resp) => prop_assert!(false, "{:?} answered {:?}", r, resp),
                    }
                }
            }
            check_consistent(&d);
        }
    }
}

/// 16 MiB of RAM at 0 and the first 16 MiB of the device region, mapped (as anonymous
/// memory, whatever the plugged state) so that a missing guard would show as success.
fn memory_with_region() -> VirtioGuestMemory {
    VirtioGuestMemory::from_ranges(&[
        (GuestAddress(0), TEST_RAM_SIZE as usize),
        (GuestAddress(REGION), 16 << 20),
    ])
    .expect("anonymous guest memory")
}

#[test]
fn the_driver_cannot_unplug_its_own_rings_nor_use_rings_in_unplugged_memory() {
    let mem = memory_with_region();
    let (irq, _) = counting_interrupt();
    let mut dev =
        VirtioMem::new(config(64 * MIB), TestBackend::default(), irq.clone()).expect("valid");
    assert_eq!(dev.handle_request(plug(blk(0), 2)), Response::Ack);
    let mut t = MmioTransport::new(dev, mem.clone(), irq).expect("valid");
    assert!(negotiate(&mut t, GOOD));
    let mut q = QueueDriver::at(&mem, REGION + 0x1000);
    setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q.mock);
    driver_ok(&mut t);
    assert!(t.is_activated(), "rings in plugged device memory are fine");
    let (_, r) = submit(&mut t, &mut q, &unplug(blk(0), 1).to_bytes());
    assert_eq!(resp_type(r), 3, "ERROR: the rings live there");
    let (_, r) = submit(&mut t, &mut q, &Request::UnplugAll.to_bytes());
    assert_eq!(resp_type(r), 2, "BUSY");
    let (_, r) = submit(&mut t, &mut q, &unplug(blk(1), 1).to_bytes());
    assert_eq!(resp_type(r), 0);
    assert_eq!(t.device().plugged_size(), BS);

    // After a reset the block can go; rings there then refuse to start the device.
    write32(&mut t, virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(
        t.device_mut().handle_request(unplug(blk(0), 1)),
        Response::Ack
    );
    assert!(negotiate(&mut t, GOOD));
    let q2 = QueueDriver::at(&mem, REGION + 0x1000);
    setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q2.mock);
    driver_ok(&mut t);
    assert!(!t.is_activated());
    let status = read32(&mut t, virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS);
    assert_ne!(
        status & virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    check_consistent(t.device());
}

#[test]
fn an_indirect_table_in_unplugged_memory_is_not_read() {
    let mem = memory_with_region();
    let (mut t, mut q, _) = running(&mem, 64 * MIB);
    // A valid indirect table (request + response descriptors) in unplugged block 5,
    // which this test maps, so only the device's guard keeps it from being used.
    let table = blk(5);
    let req = plug(blk(0), 1).to_bytes();
    q.put(REQ_AT, &req);
    let d0 = RawDescriptor::from(SplitDescriptor::new(REQ_AT, 24, 1, 1));
    let d1 = RawDescriptor::from(SplitDescriptor::new(RESP_AT, 10, 2, 0));
    mem.write_obj(d0, GuestAddress(table)).expect("mapped");
    mem.write_obj(d1, GuestAddress(table + 16)).expect("mapped");
    let head = RawDescriptor::from(SplitDescriptor::new(
        table,
        32,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    q.mock.add_desc_chains(&[head], 0).expect("fits");
    t.notify(0);
    assert_eq!(q.take_used(), Some((0, 0)));
    assert_eq!(t.device().plugged_size(), 0);
    assert_eq!(t.device().stats().dropped_chains, 1);

    // The same table in plugged memory works (the guard is not too strict).
    assert_eq!(
        t.device_mut().handle_request(plug(blk(5), 1)),
        Response::Ack
    );
    q.mock.add_desc_chains(&[head], 1).expect("fits");
    t.notify(0);
    assert_eq!(q.take_used(), Some((1, 10)));
    assert_eq!(resp_type(q.get::<10>(RESP_AT)), 0);
    assert_eq!(t.device().plugged_size(), 2 * BS);
}

/// One guest access in a random run.
#[derive(Debug, Clone)]
enum Access {
    Read(u64, usize),
    Write(u64, Vec<u8>),
    Notify(u32),
    Resize(u64),
}

fn access() -> impl Strategy<Value = Access> {
    // Mostly registers (every 4 bytes, sometimes unaligned), some config space.
    let offset = prop_oneof![
        6 => (0u64..0x40).prop_map(|r| r * 4),
        1 => 0u64..0x100,
        2 => 0x100u64..0x140,
        1 => any::<u64>(),
    ];
    let width = prop_oneof![Just(1usize), Just(2), Just(4), Just(8), Just(0)];
    // Values that matter for the state machine, plus anything.
    let value = prop_oneof![
        3 => (0u32..16).prop_map(|v| v),
        2 => prop_oneof![Just(0x0fu32), Just(0x1000), Just(0x2000), Just(0x3000), Just(16)],
        1 => any::<u32>(),
    ];
    prop_oneof![
        3 => (offset.clone(), width.clone()).prop_map(|(o, w)| Access::Read(o, w)),
        6 => (offset, width, value).prop_map(|(o, w, v)| {
            let mut b = v.to_le_bytes().to_vec();
            b.resize(w, 0);
            Access::Write(o, b)
        }),
        1 => (0u32..3).prop_map(Access::Notify),
        1 => (0u64..600).prop_map(|n| Access::Resize(n * BS)),
    ]
}

/// A descriptor of a random chain: mostly request or response buffers of the test layout,
/// sometimes anything.
fn random_descriptor() -> impl Strategy<Value = RawDescriptor> {
    let buffer = prop_oneof![
        4 => (0u64..16).prop_map(|i| (0x2000 + 32 * i, 24u32, 0u16)),
        4 => (0u64..16).prop_map(|i| (0x3000 + 16 * i, 10u32, 2u16)),
        1 => (any::<u64>(), any::<u32>(), 0u16..8),
        1 => (0u64..0x4000, 0u32..64, 0u16..8),
    ];
    (buffer, any::<bool>(), 0u16..20).prop_map(|((addr, len, flags), chained, next)| {
        let flags = if chained { flags | 1 } else { flags & !1 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    })
}

fn random_request() -> impl Strategy<Value = [u8; 24]> {
    let addr = prop_oneof![
        4 => (0u64..300).prop_map(blk),
        1 => any::<u64>(),
    ];
    (0u16..5, addr, 0u16..8).prop_map(|(ty, addr, nb)| {
        let mut raw = plug(addr, nb).to_bytes();
        raw[..2].copy_from_slice(&ty.to_le_bytes());
        raw
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn random_mmio_traffic_never_panics_and_keeps_the_rules(
        handshake in any::<bool>(),
        accesses in proptest::collection::vec(access(), 1..200),
        pairs in proptest::collection::vec(
            prop_oneof![3 => Just(None), 1 => (random_descriptor(), random_descriptor()).prop_map(Some)],
            8,
        ),
        heads in proptest::collection::vec(prop_oneof![3 => (0u16..8).prop_map(|i| 2 * i), 1 => 0u16..20], 16),
        avail_idx in 0u16..=16,
        requests in proptest::collection::vec(random_request(), 16),
    ) {
        use virtio_bindings::virtio_config::{
            VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
        };
        let mem = test_memory();
        let (irq, _) = counting_interrupt();
        let dev = VirtioMem::new(config(64 * MIB), TestBackend::default(), irq.clone())
            .expect("valid");
        let mut t = MmioTransport::new(dev, mem.clone(), irq).expect("valid");
        if handshake {
            // Half the runs start from a running device with random chains on offer.
            prop_assert!(negotiate(&mut t, GOOD));
            let q = QueueDriver::new(&mem);
            setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q.mock);
            driver_ok(&mut t);
            prop_assert!(t.is_activated());
            // Descriptor pairs 2i, 2i+1: a well-formed request → response chain, or garbage.
            for (i, pair) in pairs.iter().enumerate() {
                let i = i as u16;
                let (a, b) = pair.unwrap_or_else(|| {
                    (
                        RawDescriptor::from(SplitDescriptor::new(0x2000 + 32 * u64::from(i), 24, 1, 2 * i + 1)),
                        RawDescriptor::from(SplitDescriptor::new(0x3000 + 16 * u64::from(i), 10, 2, 0)),
                    )
                });
                q.mock.desc_table().store(2 * i, a).expect("in table");
                q.mock.desc_table().store(2 * i + 1, b).expect("in table");
            }
            for (i, h) in heads.iter().enumerate() {
                q.mock.avail().ring().ref_at(i).expect("in ring").store(*h);
            }
            q.mock.avail().idx().store(avail_idx);
            for (i, r) in requests.iter().enumerate() {
                q.put(0x2000 + 32 * i as u64, r);
            }
            t.device_mut().set_requested_size(64 * MIB).expect("valid");
            t.notify(0);
        }
        for a in accesses {
            match a {
                Access::Read(o, w) => {
                    let mut b = vec![0u8; w];
                    t.read(o, &mut b);
                }
                Access::Write(o, b) => t.write(o, &b),
                Access::Notify(q) => t.notify(q),
                Access::Resize(size) => {
                    let _ = t.device_mut().set_requested_size(size);
                }
            }
            let status = t.status();
            if status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
                prop_assert_ne!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
            }
            if t.is_activated() {
                prop_assert_ne!(t.driver_features() & VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, 0);
                prop_assert!(t.device().is_active());
            }
            check_consistent(t.device());
        }
        check_consistent(t.device());
    }
}

/// Takes `delay` for every plug and unplug.
struct SlowBackend(std::time::Duration);

impl MemoryBackend for SlowBackend {
    fn plug(&mut self, _: GuestAddress, _: u64) -> Result<(), BackendError> {
        std::thread::sleep(self.0);
        Ok(())
    }
    fn unplug(&mut self, _: GuestAddress, _: u64) -> Result<(), BackendError> {
        std::thread::sleep(self.0);
        Ok(())
    }
}

#[test]
fn requests_and_host_time_are_counted_by_type() {
    let mem = test_memory();
    let (irq, _line) = counting_interrupt();
    let delay = std::time::Duration::from_millis(3);
    let dev = VirtioMem::new(config(8 * MIB), SlowBackend(delay), irq.clone()).expect("valid");
    let mut t = MmioTransport::new(dev, mem.clone(), irq).expect("valid queue");
    let offered = device_features(&mut t);
    assert!(negotiate(&mut t, offered));
    let mut q = QueueDriver::new(&mem);
    setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q.mock);
    driver_ok(&mut t);
    assert_eq!(t.device().stats().queue_nanos, 0);
    let send =
        |t: &mut MmioTransport<VirtioMem<SlowBackend>>, q: &mut QueueDriver<'_>, r: Request| {
            q.put(REQ_AT, &r.to_bytes());
            q.offer(&[
                Buf {
                    addr: REQ_AT,
                    len: 24,
                    write: false,
                },
                Buf {
                    addr: RESP_AT,
                    len: 10,
                    write: true,
                },
            ]);
            write32(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            assert!(q.take_used().is_some(), "{r:?} answered");
        };
    send(&mut t, &mut q, plug(blk(0), 2));
    send(&mut t, &mut q, plug(blk(2), 2));
    send(&mut t, &mut q, state(blk(0), 4));
    send(&mut t, &mut q, unplug(blk(0), 2));
    send(&mut t, &mut q, Request::UnplugAll);
    let s = t.device().stats();
    assert_eq!(
        s.requests,
        RequestCounts {
            plug: 2,
            unplug: 1,
            unplug_all: 1,
            state: 1
        }
    );
    let ns = |d: std::time::Duration| d.as_nanos() as u64;
    assert!(s.request_nanos.plug >= 2 * ns(delay), "{s:?}");
    assert!(s.request_nanos.unplug >= ns(delay), "{s:?}");
    assert!(s.request_nanos.unplug_all >= ns(delay), "{s:?}");
    let handled: u64 = s.request_nanos.named().iter().map(|(_, n)| n).sum();
    assert!(
        s.queue_nanos >= handled,
        "queue time includes handling: {s:?}"
    );
    // Summing devices adds every counter.
    let mut sum = s;
    sum.add(&s);
    assert_eq!(sum.requests.plug, 4);
    assert_eq!(sum.queue_nanos, 2 * s.queue_nanos);
    assert_eq!(sum.acks, 2 * s.acks);
}
