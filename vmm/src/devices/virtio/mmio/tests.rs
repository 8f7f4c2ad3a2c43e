//! Tests of the virtio-mmio transport with a two-queue dummy device: identification, the
//! status state machine, feature negotiation, queue setup rules, activation, notification,
//! interrupts, reset and the configuration space.

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
