//! Tests of the virtio-balloon device through the virtio-mmio transport, with split queues in
//! real guest memory: queue layout by feature, inflate/deflate with merged ranges reaching the
//! backend, hostile pfns and buffers, the statistics cycle, free page reporting, the
//! configuration space, reset, a real discard on memfd and anonymous memory, and random
//! inflate/deflate sequences.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use proptest::prelude::*;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::backend::{BalloonBackend, BalloonBackendError, DiscardKind, GuestRange};
use super::device::{VirtioBalloon, VirtioBalloonConfig, CONFIG_SIZE, QUEUE_SIZE};
use super::event_handler::{StatsPoller, StatsTimer, StatsTimerError};
use super::pages::{PfnRun, BALLOON_PAGE_SIZE};
use super::queues::{queue_roles, QueueRole};
use super::stats::*;
use super::*;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::test_utils::*;
use crate::devices::virtio::{FeatureError, VirtioDevice, VirtioGuestMemory, FEATURE_VERSION_1};

const MIB: u64 = 1 << 20;
/// Guest RAM of the tests: two adjacent regions (0-16 MiB, 16-24 MiB), a hole, 64-68 MiB.
const REGIONS: [(u64, u64); 3] = [(0, 16 * MIB), (16 * MIB, 8 * MIB), (64 * MIB, 4 * MIB)];
/// Where pfn, stats and report buffers go (inside the first region, below the pages the
/// tests balloon).
const PFN_BUF: u64 = BUFFER_ADDR;
const STATS_BUF: u64 = BUFFER_ADDR + 0x2_0000;

fn balloon_memory() -> VirtioGuestMemory {
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(a, l)| (GuestAddress(a), l as usize))
        .collect();
    VirtioGuestMemory::from_ranges(&ranges).expect("anonymous guest memory")
}

fn pfn(addr: u64) -> u32 {
    (addr / BALLOON_PAGE_SIZE) as u32
}

/// Records what the device asks of the host and checks the contract of [`BalloonBackend`].
#[derive(Debug, Default)]
struct TestBackend {
    /// Pfns discarded as inflated and not reclaimed.
    inflated: BTreeSet<u64>,
    discards: Vec<(GuestRange, DiscardKind)>,
    reclaims: Vec<GuestRange>,
    /// Ranges that are not backed (e.g. unplugged virtio-mem blocks).
    unbacked: Vec<(u64, u64)>,
    fail_discards: usize,
    fail_reclaims: usize,
    /// Contract violations: ranges crossing a region, unaligned, outside RAM, unbacked,
    /// inflating an inflated page, reclaiming a page that was not inflated.
    violations: Vec<String>,
}

impl TestBackend {
    fn check_range(&mut self, r: GuestRange) {
        let a = r.addr.0;
        if r.len == 0
            || !a.is_multiple_of(BALLOON_PAGE_SIZE)
            || !r.len.is_multiple_of(BALLOON_PAGE_SIZE)
        {
            self.violations.push(format!("unaligned {r:?}"));
        }
        if !REGIONS.iter().any(|&(s, l)| a >= s && r.end() <= s + l) {
            self.violations.push(format!("not inside one region {r:?}"));
        }
    }

    fn pfns(r: GuestRange) -> std::ops::Range<u64> {
        let first = r.addr.0 / BALLOON_PAGE_SIZE;
        first..first + r.pages()
    }
}

impl BalloonBackend for TestBackend {
    fn is_backed(&self, r: GuestRange) -> bool {
        !self
            .unbacked
            .iter()
            .any(|&(s, l)| r.addr.0 < s + l && s < r.end())
    }

    fn discard(&mut self, r: GuestRange, kind: DiscardKind) -> Result<(), BalloonBackendError> {
        self.check_range(r);
        if !self.is_backed(r) {
            self.violations.push(format!("discard of unbacked {r:?}"));
        }
        if self.fail_discards > 0 {
            self.fail_discards -= 1;
            return Err(BalloonBackendError {
                op: "discard",
                addr: r.addr.0,
                len: r.len,
                reason: "injected".into(),
            });
        }
        self.discards.push((r, kind));
        for p in Self::pfns(r) {
            let inflated = self.inflated.contains(&p);
            match kind {
                DiscardKind::Inflated if inflated => {
                    self.violations.push(format!("pfn {p:#x} inflated twice"))
                }
                DiscardKind::Inflated => {
                    self.inflated.insert(p);
                }
                DiscardKind::Reported if inflated => self
                    .violations
                    .push(format!("reported pfn {p:#x} is in the balloon")),
                DiscardKind::Reported => {}
            }
        }
        Ok(())
    }

    fn reclaim(&mut self, r: GuestRange) -> Result<(), BalloonBackendError> {
        self.check_range(r);
        for p in Self::pfns(r) {
            if !self.inflated.contains(&p) {
                self.violations
                    .push(format!("reclaim of pfn {p:#x} not inflated"));
            }
        }
        if self.fail_reclaims > 0 {
            self.fail_reclaims -= 1;
            return Err(BalloonBackendError {
                op: "reclaim",
                addr: r.addr.0,
                len: r.len,
                reason: "injected".into(),
            });
        }
        self.reclaims.push(r);
        for p in Self::pfns(r) {
            self.inflated.remove(&p);
        }
        Ok(())
    }
}

type Transport = MmioTransport<VirtioBalloon<TestBackend>>;

/// The driver side of one queue for long sequences: chains are written at rotating
/// descriptor slots and published in the available ring modulo its size (the test_utils
/// driver's `MockSplitQueue::add_desc_chains` does not wrap the available ring).
struct Ring<'a> {
    q: QueueDriver<'a>,
    mem: &'a VirtioGuestMemory,
    next_desc: u16,
    avail_idx: u16,
}

impl<'a> Ring<'a> {
    fn at(mem: &'a VirtioGuestMemory, addr: u64) -> Self {
        Ring {
            q: QueueDriver::at(mem, addr),
            mem,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Makes `bufs` one chain, offers it, and returns its head.
    fn offer(&mut self, bufs: &[Buf]) -> u16 {
        use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
        use vm_memory::Bytes;
        assert!(!bufs.is_empty() && bufs.len() <= usize::from(QUEUE_LEN));
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_LEN;
            let mut flags = if b.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = SplitDescriptor::new(b.addr, b.len, flags, (idx + 1) % QUEUE_LEN);
            self.q
                .mock
                .desc_table()
                .store(idx, RawDescriptor::from(d))
                .expect("descriptor slot");
        }
        self.next_desc = (head + bufs.len() as u16) % QUEUE_LEN;
        let avail = self.q.mock.avail_addr();
        let slot = 4 + 2 * u64::from(self.avail_idx % QUEUE_LEN);
        self.mem
            .write_obj(head.to_le(), GuestAddress(avail.0 + slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(avail.0 + 2))
            .expect("avail idx");
        head
    }
}

/// A running device and the driver side of its queues.
struct Harness<'a> {
    t: Transport,
    queues: Vec<Ring<'a>>,
    line: CountingIrq,
}

fn config(stats: bool, reporting: bool) -> VirtioBalloonConfig {
    VirtioBalloonConfig {
        deflate_on_oom: false,
        free_page_reporting: reporting,
        stats_interval: stats.then_some(Duration::from_secs(1)),
        target_pages: 0,
    }
}

fn transport(
    mem: &VirtioGuestMemory,
    cfg: VirtioBalloonConfig,
    backend: TestBackend,
) -> (Transport, CountingIrq) {
    let (irq, line) = counting_interrupt();
    let dev = VirtioBalloon::new(cfg, backend, irq.clone());
    (
        MmioTransport::new(dev, mem.clone(), irq).expect("valid queues"),
        line,
    )
}

impl<'a> Harness<'a> {
    /// Negotiates everything offered and starts the device with every queue.
    fn start(mem: &'a VirtioGuestMemory, cfg: VirtioBalloonConfig) -> Self {
        Self::start_with(mem, cfg, TestBackend::default())
    }

    fn start_with(
        mem: &'a VirtioGuestMemory,
        cfg: VirtioBalloonConfig,
        backend: TestBackend,
    ) -> Self {
        let (mut t, line) = transport(mem, cfg, backend);
        let offered = device_features(&mut t);
        assert!(negotiate(&mut t, offered), "features accepted");
        let n = t.device().queue_max_sizes().len();
        let mut queues = Vec::new();
        for i in 0..n {
            let r = Ring::at(mem, RING_ADDR + 0x1000 * i as u64);
            setup_queue(&mut t, i as u32, u32::from(QUEUE_LEN), &r.q.mock);
            queues.push(r);
        }
        driver_ok(&mut t);
        assert!(t.is_activated());
        Harness { t, queues, line }
    }

    fn dev(&self) -> &VirtioBalloon<TestBackend> {
        self.t.device()
    }

    fn backend(&self) -> &TestBackend {
        self.t.device().backend()
    }

    fn index(&self, role: QueueRole) -> usize {
        self.dev().queue_index(role).expect("queue present")
    }

    /// Offers `bufs` on queue `role`, notifies, and returns the used element if any.
    fn submit(&mut self, role: QueueRole, bufs: &[Buf]) -> Option<(u32, u32)> {
        let i = self.index(role);
        let head = self.queues[i].offer(bufs);
        write32(&mut self.t, VIRTIO_MMIO_QUEUE_NOTIFY, i as u32);
        let used = self.queues[i].q.take_used();
        if let Some((id, _)) = used {
            if role != QueueRole::Stats {
                assert_eq!(id, u32::from(head), "the offered chain came back");
            }
        }
        used
    }

    /// Sends `pfns` in one buffer on the inflate or deflate queue; the buffer must come back.
    fn send_pfns(&mut self, role: QueueRole, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.queues[0].q.put(PFN_BUF, &bytes);
        let used = self.submit(
            role,
            &[Buf {
                addr: PFN_BUF,
                len: bytes.len() as u32,
                write: false,
            }],
        );
        assert_eq!(
            used.map(|u| u.1),
            Some(0),
            "pfn buffer returned, nothing written"
        );
    }

    fn inflate(&mut self, pfns: &[u32]) {
        self.send_pfns(QueueRole::Inflate, pfns);
    }

    fn deflate(&mut self, pfns: &[u32]) {
        self.send_pfns(QueueRole::Deflate, pfns);
    }

    /// Offers a statistics buffer holding `entries`; returns the used element if any.
    fn send_stats(&mut self, entries: &[(u16, u64)]) -> Option<(u32, u32)> {
        let bytes = encode_stats(entries);
        self.queues[0].q.put(STATS_BUF, &bytes);
        self.submit(
            QueueRole::Stats,
            &[Buf {
                addr: STATS_BUF,
                len: bytes.len() as u32,
                write: false,
            }],
        )
    }

    fn read_config_u32(&mut self, offset: u32) -> u32 {
        read32(&mut self.t, VIRTIO_MMIO_CONFIG + offset)
    }

    /// Device and backend agree, and the backend saw no contract violation.
    fn check_consistent(&self) {
        let dev: BTreeSet<u64> = self
            .dev()
            .ballooned_runs()
            .iter()
            .flat_map(|r| r.first..r.first + r.count)
            .collect();
        assert_eq!(dev, self.backend().inflated, "device and backend disagree");
        assert_eq!(self.dev().ballooned_pages(), dev.len() as u64);
        let c = self.dev().counters();
        assert_eq!(
            c.inflated_pages - c.deflated_pages - c.reset_reclaimed_pages,
            dev.len() as u64
        );
        assert!(
            self.backend().violations.is_empty(),
            "{:?}",
            self.backend().violations
        );
    }
}

fn discarded(b: &TestBackend, kind: DiscardKind) -> Vec<(u64, u64)> {
    b.discards
        .iter()
        .filter(|(_, k)| *k == kind)
        .map(|(r, _)| (r.addr.0, r.len))
        .collect()
}

#[test]
fn identity_features_and_queue_counts() {
    let mem = balloon_memory();
    let cases = [
        (config(false, false), 2, 0),
        (config(true, false), 3, VIRTIO_BALLOON_F_STATS_VQ),
        (
            config(false, true),
            3,
            VIRTIO_BALLOON_F_REPORTING | VIRTIO_BALLOON_F_PAGE_POISON,
        ),
        (
            VirtioBalloonConfig {
                deflate_on_oom: true,
                ..config(true, true)
            },
            4,
            VIRTIO_BALLOON_F_STATS_VQ
                | VIRTIO_BALLOON_F_REPORTING
                | VIRTIO_BALLOON_F_PAGE_POISON
                | VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
        ),
    ];
    for (cfg, queues, extra) in cases {
        let (mut t, _) = transport(&mem, cfg, TestBackend::default());
        assert_eq!(read32(&mut t, VIRTIO_MMIO_DEVICE_ID), 5, "virtio-balloon");
        assert_eq!(
            device_features(&mut t),
            FEATURE_VERSION_1 | VIRTIO_BALLOON_F_MUST_TELL_HOST | extra,
            "{cfg:?}"
        );
        assert_eq!(
            t.device().queue_max_sizes(),
            vec![QUEUE_SIZE; queues].as_slice()
        );
    }
}

#[test]
fn queue_indexes_shift_with_absent_features() {
    use QueueRole::*;
    assert_eq!(queue_roles(0), vec![Inflate, Deflate]);
    assert_eq!(
        queue_roles(VIRTIO_BALLOON_F_STATS_VQ),
        vec![Inflate, Deflate, Stats]
    );
    assert_eq!(
        queue_roles(VIRTIO_BALLOON_F_REPORTING),
        vec![Inflate, Deflate, Reporting]
    );
    assert_eq!(
        queue_roles(VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_REPORTING),
        vec![Inflate, Deflate, Stats, Reporting]
    );
    assert_eq!(
        queue_roles(VIRTIO_BALLOON_F_FREE_PAGE_HINT | VIRTIO_BALLOON_F_REPORTING),
        vec![Inflate, Deflate, FreePageHint, Reporting]
    );
    // Non-queue features move nothing.
    assert_eq!(
        queue_roles(VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_MUST_TELL_HOST),
        vec![Inflate, Deflate]
    );

    // A running device: without stats, the reporting queue is queue 2 and works there.
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(false, true));
    assert_eq!(h.index(QueueRole::Reporting), 2);
    assert_eq!(h.dev().queue_index(QueueRole::Stats), None);
    let used = h.submit(
        QueueRole::Reporting,
        &[Buf {
            addr: 4 * MIB,
            len: (2 * MIB) as u32,
            write: true,
        }],
    );
    assert_eq!(used.map(|u| u.1), Some(0));
    assert_eq!(
        discarded(h.backend(), DiscardKind::Reported),
        vec![(4 * MIB, 2 * MIB)]
    );

    // With stats, reporting is queue 3.
    let mut h = Harness::start(&mem, config(true, true));
    assert_eq!(h.index(QueueRole::Stats), 2);
    assert_eq!(h.index(QueueRole::Reporting), 3);
    h.submit(
        QueueRole::Reporting,
        &[Buf {
            addr: 6 * MIB,
            len: (2 * MIB) as u32,
            write: true,
        }],
    );
    assert_eq!(h.dev().counters().reported_bytes, 2 * MIB);
}

#[test]
fn features_without_an_offered_queue_are_refused() {
    let mem = balloon_memory();
    let (mut t, _) = transport(&mem, config(true, true), TestBackend::default());
    let offered = device_features(&mut t);
    assert!(!negotiate(&mut t, offered & !VIRTIO_BALLOON_F_REPORTING));
    assert_eq!(
        t.check_features(),
        Err(FeatureError::Missing(VIRTIO_BALLOON_F_REPORTING))
    );
    assert!(!negotiate(&mut t, offered & !VIRTIO_BALLOON_F_STATS_VQ));
    // Leaving out features without a queue is fine.
    let (mut t, _) = transport(
        &mem,
        VirtioBalloonConfig {
            deflate_on_oom: true,
            ..config(false, false)
        },
        TestBackend::default(),
    );
    assert!(negotiate(&mut t, FEATURE_VERSION_1));
}

#[test]
fn inflate_merges_adjacent_pfns_into_ranges() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(false, false));
    let base = pfn(4 * MIB);
    // Unsorted, as a driver may send them.
    h.inflate(&[base + 2, base, base + 1, base + 0x100, base + 3]);
    assert_eq!(
        discarded(h.backend(), DiscardKind::Inflated),
        vec![
            (4 * MIB, 4 * BALLOON_PAGE_SIZE),
            (5 * MIB, BALLOON_PAGE_SIZE)
        ]
    );
    assert_eq!(h.dev().ballooned_pages(), 5);
    assert_eq!(h.dev().ballooned_bytes(), 5 * BALLOON_PAGE_SIZE);
    assert_eq!(h.dev().counters().inflated_pages, 5);
    assert_eq!(h.dev().counters().inflated_bytes(), 5 * BALLOON_PAGE_SIZE);
    assert_eq!(h.dev().counters().pfn_buffers, 1);
    assert_eq!(h.line.get(), 1, "used-buffer interrupt");
    assert_eq!(read32(&mut h.t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    h.check_consistent();
}

#[test]
fn a_run_across_adjacent_regions_is_split_at_the_boundary() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(false, false));
    let b = pfn(16 * MIB);
    h.inflate(&[b - 2, b - 1, b, b + 1]);
    assert_eq!(
        discarded(h.backend(), DiscardKind::Inflated),
        vec![(16 * MIB - 8192, 8192), (16 * MIB, 8192)]
    );
    h.deflate(&[b - 1, b]);
    assert_eq!(
        h.backend().reclaims,
        vec![
            GuestRange::new(16 * MIB - 4096, 4096),
            GuestRange::new(16 * MIB, 4096)
        ]
    );
    h.check_consistent();
}

#[test]
fn hostile_pfns_are_skipped_and_counted() {
    let mem = balloon_memory();
    let backend = TestBackend {
        // An unplugged 2 MiB block in the middle of the first region.
        unbacked: vec![(8 * MIB, 2 * MIB)],
        ..TestBackend::default()
    };
    let mut h = Harness::start_with(&mem, config(false, false), backend);
    let good = pfn(4 * MIB);
    h.inflate(&[
        u32::MAX,          // far beyond RAM
        pfn(30 * MIB),     // in the hole between regions
        pfn(68 * MIB),     // just past the last region
        pfn(8 * MIB),      // unbacked
        pfn(10 * MIB) - 1, // unbacked (last page of the block)
        good,
        good,              // repeated in the buffer
        pfn(68 * MIB) - 1, // last page of the last region: valid
    ]);
    assert_eq!(
        discarded(h.backend(), DiscardKind::Inflated),
        vec![(4 * MIB, 4096), (68 * MIB - 4096, 4096)]
    );
    let c = h.dev().counters();
    assert_eq!(c.invalid_pfns, 5);
    assert_eq!(c.redundant_pfns, 1);
    assert_eq!(c.inflated_pages, 2);
    // Inflating a ballooned page again, deflating pages never inflated: skipped.
    h.inflate(&[good]);
    h.deflate(&[good + 1, u32::MAX, pfn(30 * MIB)]);
    let c = h.dev().counters();
    assert_eq!(c.redundant_pfns, 5);
    assert_eq!(c.deflated_pages, 0);
    assert!(h.backend().reclaims.is_empty());
    // A trailing partial pfn: the whole pfns before it still count.
    let bytes: Vec<u8> = (good + 10)
        .to_le_bytes()
        .into_iter()
        .chain([1, 2])
        .collect();
    h.queues[0].q.put(PFN_BUF, &bytes);
    h.submit(
        QueueRole::Inflate,
        &[Buf {
            addr: PFN_BUF,
            len: 6,
            write: false,
        }],
    );
    assert_eq!(h.dev().counters().invalid_pfns, 6);
    assert_eq!(h.dev().ballooned_pages(), 3);
    h.check_consistent();
}

#[test]
fn deflate_reclaims_merged_ranges_before_returning_the_buffer() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(false, false));
    let base = pfn(4 * MIB);
    let pfns: Vec<u32> = (0..256).map(|i| base + i).collect();
    h.inflate(&pfns);
    assert_eq!(
        discarded(h.backend(), DiscardKind::Inflated),
        vec![(4 * MIB, MIB)]
    );
    h.deflate(&[base + 10, base + 11, base + 12, base + 200]);
    assert_eq!(
        h.backend().reclaims,
        vec![
            GuestRange::new(4 * MIB + 10 * 4096, 3 * 4096),
            GuestRange::new(4 * MIB + 200 * 4096, 4096)
        ]
    );
    assert_eq!(h.dev().ballooned_pages(), 252);
    assert_eq!(h.dev().counters().deflated_pages, 4);
    assert_eq!(h.dev().counters().deflated_bytes(), 4 * 4096);
    // Deflated pages can be inflated again.
    h.inflate(&[base + 10]);
    assert_eq!(h.dev().ballooned_pages(), 253);
    h.deflate(&pfns);
    assert_eq!(h.dev().ballooned_pages(), 0);
    h.check_consistent();
}

#[test]
fn backend_failures_keep_the_accounting_exact() {
    let mem = balloon_memory();
    let backend = TestBackend {
        fail_discards: 1,
        ..TestBackend::default()
    };
    let mut h = Harness::start_with(&mem, config(false, false), backend);
    let a = pfn(4 * MIB);
    let b = pfn(6 * MIB);
    h.inflate(&[a, b]);
    // The first range failed: its page is not in the balloon; the second is.
    assert_eq!(h.dev().counters().discard_errors, 1);
    assert_eq!(
        h.dev().ballooned_runs(),
        vec![PfnRun {
            first: u64::from(b),
            count: 1
        }]
    );
    h.check_consistent();
    // A failed reclaim still takes the pages out of the balloon (the guest owns them).
    h.t.device_mut().backend_mut().fail_reclaims = 1;
    h.deflate(&[b]);
    assert_eq!(h.dev().counters().reclaim_errors, 1);
    assert_eq!(h.dev().ballooned_pages(), 0);
    assert_eq!(
        h.backend().inflated.len(),
        1,
        "the backend kept it, as it failed"
    );
}

#[test]
fn buffers_in_unbacked_or_missing_memory_are_returned_unread() {
    let mem = balloon_memory();
    let backend = TestBackend {
        unbacked: vec![(PFN_BUF, 4096)],
        ..TestBackend::default()
    };
    let mut h = Harness::start_with(&mem, config(false, false), backend);
    h.inflate(&[pfn(4 * MIB)]);
    assert!(
        h.backend().discards.is_empty(),
        "pfns in unbacked memory not read"
    );
    assert_eq!(h.dev().counters().dropped_chains, 1);
    // A buffer in the hole between regions.
    let used = h.submit(
        QueueRole::Inflate,
        &[Buf {
            addr: 30 * MIB,
            len: 64,
            write: false,
        }],
    );
    assert_eq!(used.map(|u| u.1), Some(0));
    // A buffer crossing the end of guest RAM.
    h.submit(
        QueueRole::Deflate,
        &[Buf {
            addr: 68 * MIB - 8,
            len: 64,
            write: false,
        }],
    );
    assert_eq!(h.dev().counters().dropped_chains, 3);
    assert!(h.backend().discards.is_empty());
    h.check_consistent();
}

#[test]
fn activation_refuses_rings_in_unbacked_memory() {
    let mem = balloon_memory();
    let backend = TestBackend {
        unbacked: vec![(RING_ADDR + 0x1000, 0x1000)],
        ..TestBackend::default()
    };
    let (mut t, _) = transport(&mem, config(false, false), backend);
    let offered = device_features(&mut t);
    assert!(negotiate(&mut t, offered));
    for i in 0..2u64 {
        let q = QueueDriver::at(&mem, RING_ADDR + 0x1000 * i);
        setup_queue(&mut t, i as u32, u32::from(QUEUE_LEN), &q.mock);
    }
    driver_ok(&mut t);
    assert!(!t.is_activated());
    assert_ne!(
        read32(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
}

#[test]
fn target_and_actual_in_the_configuration_space() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(false, false));
    let generation = read32(&mut h.t, VIRTIO_MMIO_CONFIG_GENERATION);
    let before = h.line.get();
    h.t.device_mut().set_target_pages(65536);
    assert_eq!(h.read_config_u32(0), 65536, "num_pages");
    assert_eq!(h.dev().target_pages(), 65536);
    assert_eq!(h.line.get(), before + 1, "configuration-change interrupt");
    assert_eq!(read32(&mut h.t, VIRTIO_MMIO_INTERRUPT_STATUS) & 2, 2);
    assert_ne!(read32(&mut h.t, VIRTIO_MMIO_CONFIG_GENERATION), generation);
    // Sizes in bytes.
    h.t.device_mut()
        .set_balloon_size(256 * MIB)
        .expect("aligned");
    assert_eq!(h.dev().target_pages(), 65536);
    assert_eq!(
        h.t.device_mut().set_balloon_size(MIB + 1),
        Err(TargetError::Unaligned(MIB + 1))
    );
    assert_eq!(h.dev().target_pages(), 65536, "unchanged on error");

    // The driver writes `actual`, as Linux's virtio_cwrite does (32 bits at offset 4)...
    write32(&mut h.t, VIRTIO_MMIO_CONFIG + 4, 1000);
    assert_eq!(h.dev().actual_pages(), 1000);
    assert_eq!(h.read_config_u32(4), 1000);
    // ... or byte by byte.
    h.t.write(u64::from(VIRTIO_MMIO_CONFIG) + 5, &[0x01]);
    assert_eq!(
        h.dev().actual_pages(),
        0x01e8,
        "byte 1 of 1000 (0x3e8) replaced"
    );
    // num_pages and free_page_hint_cmd_id are read-only for the driver, poison_val is
    // writable only with PAGE_POISON offered (not here), writes past the space are ignored.
    write32(&mut h.t, VIRTIO_MMIO_CONFIG, 7);
    write32(&mut h.t, VIRTIO_MMIO_CONFIG + 8, 7);
    write32(&mut h.t, VIRTIO_MMIO_CONFIG + 12, 7);
    h.t.write(u64::from(VIRTIO_MMIO_CONFIG) + 16, &[1, 2, 3, 4]);
    assert_eq!(h.dev().target_pages(), 65536);
    assert_eq!(h.dev().poison_val(), 0);
    assert_eq!(h.dev().counters().ignored_config_writes, 4);
    let mut wide = [0xffu8; 24];
    h.t.read(u64::from(VIRTIO_MMIO_CONFIG), &mut wide);
    assert_eq!(
        &wide[8..CONFIG_SIZE],
        &[0u8; 8],
        "hint id and poison_val read 0"
    );
    assert_eq!(
        &wide[CONFIG_SIZE..],
        &[0u8; 8],
        "past the configuration space reads 0"
    );
}

#[test]
fn statistics_request_and_response_cycle() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(true, false));
    // Nothing held, nothing waiting: a request returns nothing and does not interrupt.
    let before = h.line.get();
    let idx = h.t.device_mut().request_stats().expect("stats queue");
    h.t.notify(idx as u32);
    assert_eq!(h.line.get(), before);
    assert_eq!(h.dev().counters().stats_requests, 0);
    // The driver primes the queue with its first values; the device keeps the buffer.
    let used = h.send_stats(&[
        (VIRTIO_BALLOON_S_MEMFREE, 300 * MIB),
        (VIRTIO_BALLOON_S_MEMTOT, 1024 * MIB),
        (VIRTIO_BALLOON_S_MINFLT, 42),
    ]);
    assert_eq!(used, None, "the stats buffer is held");
    assert!(h.dev().holds_stats_buffer());
    let s = h.dev().stats().expect("stats").clone();
    assert_eq!(s.free_memory(), Some(300 * MIB));
    assert_eq!(s.total_memory(), Some(1024 * MIB));
    assert_eq!(s.minor_faults(), Some(42));
    assert_eq!(s.swap_in(), None);
    // The host asks for more: the buffer goes back, with an interrupt.
    let before = h.line.get();
    let idx = h.t.device_mut().request_stats().expect("stats queue");
    assert_eq!(idx, 2);
    h.t.notify(idx as u32);
    assert_eq!(h.queues[idx].q.take_used().map(|u| u.1), Some(0));
    assert_eq!(h.line.get(), before + 1);
    assert!(!h.dev().holds_stats_buffer());
    // A request before the driver answered returns nothing more.
    h.t.device_mut().request_stats();
    h.t.notify(idx as u32);
    assert_eq!(h.queues[idx].q.take_used(), None);
    assert_eq!(h.line.get(), before + 1);
    // The driver answers with fresh values.
    assert_eq!(h.send_stats(&[(VIRTIO_BALLOON_S_MEMFREE, 100 * MIB)]), None);
    let s2 = h.dev().stats().expect("stats");
    assert_eq!(s2.free_memory(), Some(100 * MIB));
    assert_eq!(
        s2.total_memory(),
        None,
        "only what the driver sent this time"
    );
    assert!(s2.updated_at >= s.updated_at);
    let c = h.dev().counters();
    assert_eq!((c.stats_updates, c.stats_requests), (2, 1));
    // A second buffer while one is held: the older one is returned.
    let used = h.send_stats(&[(VIRTIO_BALLOON_S_AVAIL, 5)]);
    assert!(used.is_some());
    assert!(h.dev().holds_stats_buffer());
    assert_eq!(h.dev().stats().and_then(|s| s.available_memory()), Some(5));
}

#[test]
fn the_stats_timer_returns_the_buffer_on_the_event_loop() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(true, false));
    h.send_stats(&[(VIRTIO_BALLOON_S_MEMFREE, 1)]);
    let Harness {
        t,
        mut queues,
        line,
    } = h;
    let transport = Arc::new(Mutex::new(t));
    assert!(matches!(
        StatsTimer::new(transport.clone(), Duration::ZERO),
        Err(StatsTimerError::ZeroInterval(_))
    ));
    let timer = StatsTimer::new(transport.clone(), Duration::from_millis(5)).expect("timer");
    assert_eq!(timer.interval(), Duration::from_millis(5));
    assert!(
        !timer.is_starting(),
        "short intervals need no start-up period"
    );
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().expect("epoll");
    em.add_subscriber(Arc::new(Mutex::new(timer)));
    let before = line.get();
    // The timer fires within 5 ms; wait up to 5 s for it.
    assert_eq!(em.run_with_timeout(5000).expect("run"), 1);
    assert_eq!(
        queues[2].q.take_used().map(|u| u.1),
        Some(0),
        "buffer returned"
    );
    assert_eq!(line.get(), before + 1);
    let t = transport.lock().expect("lock");
    assert_eq!(t.device().counters().stats_requests, 1);
    assert!(!t.device().holds_stats_buffer());
}

#[test]
fn free_page_reporting_discards_whole_backed_pages_outside_the_balloon() {
    let mem = balloon_memory();
    let backend = TestBackend {
        unbacked: vec![(12 * MIB, 2 * MIB)],
        ..TestBackend::default()
    };
    let mut h = Harness::start_with(&mem, config(false, true), backend);
    // One page in the balloon inside a reported range.
    h.inflate(&[pfn(6 * MIB) + 1]);
    let used = h.submit(
        QueueRole::Reporting,
        &[
            Buf {
                addr: 4 * MIB,
                len: (2 * MIB) as u32,
                write: true,
            },
            Buf {
                addr: 6 * MIB,
                len: (2 * MIB) as u32,
                write: true,
            },
            // Unaligned: only the whole pages inside count.
            Buf {
                addr: 10 * MIB + 100,
                len: 3 * 4096,
                write: true,
            },
            // Unbacked, outside RAM.
            Buf {
                addr: 12 * MIB,
                len: (2 * MIB) as u32,
                write: true,
            },
            Buf {
                addr: 40 * MIB,
                len: 4096,
                write: true,
            },
        ],
    );
    assert_eq!(used.map(|u| u.1), Some(0));
    assert_eq!(
        discarded(h.backend(), DiscardKind::Reported),
        vec![
            (4 * MIB, 2 * MIB),
            (6 * MIB, 4096),
            (6 * MIB + 8192, 2 * MIB - 8192),
            (10 * MIB + 4096, 2 * 4096),
        ]
    );
    let c = h.dev().counters();
    assert_eq!(c.reports, 1);
    assert_eq!(c.reported_bytes, 4 * MIB - 4096 + 2 * 4096);
    assert_eq!(
        c.invalid_report_bytes,
        (3 * 4096 - 2 * 4096) + 2 * MIB + 4096
    );
    assert_eq!(
        h.dev().ballooned_pages(),
        1,
        "reporting does not change the balloon"
    );
    h.check_consistent();
}

#[test]
fn reset_gives_every_ballooned_page_back() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(true, false));
    let base = pfn(4 * MIB);
    h.inflate(&[base, base + 1, pfn(16 * MIB) - 1, pfn(16 * MIB)]);
    write32(&mut h.t, VIRTIO_MMIO_CONFIG + 4, 4);
    h.send_stats(&[(VIRTIO_BALLOON_S_MEMFREE, 1)]);
    h.t.device_mut().set_target_pages(10);
    write32(&mut h.t, VIRTIO_MMIO_STATUS, 0);
    assert!(!h.dev().is_active());
    assert_eq!(h.dev().ballooned_pages(), 0);
    assert!(h.backend().inflated.is_empty());
    assert_eq!(
        h.backend().reclaims.len(),
        3,
        "split at the region boundary"
    );
    assert_eq!(h.dev().counters().reset_reclaimed_pages, 4);
    assert_eq!(h.dev().actual_pages(), 0);
    assert_eq!(h.dev().target_pages(), 10, "the host's target stays");
    assert!(!h.dev().holds_stats_buffer());
    h.check_consistent();
}

/// A memfd of `size` bytes mapped shared as guest memory at 0, as the VMM maps pool memory.
fn memfd_memory(size: u64) -> (VirtioGuestMemory, std::fs::File) {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a valid C string; the returned fd is checked and then owned
    // by the File.
    let file = unsafe {
        let fd = libc::memfd_create(c"balloon-test".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        std::fs::File::from_raw_fd(fd)
    };
    file.set_len(size).expect("size");
    let clone = file.try_clone().expect("dup");
    let mem = VirtioGuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        size as usize,
        Some(vm_memory::FileOffset::new(clone, 0)),
    )])
    .expect("memfd guest memory");
    (mem, file)
}

fn allocated_bytes(file: &std::fs::File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata().expect("stat").blocks() * 512
}

#[test]
fn host_mapping_backend_punches_pages_out_of_a_memfd() {
    use vm_memory::Bytes;
    let (mem, file) = memfd_memory(16 * MIB);
    // The guest filled 4 MiB at 4 MiB.
    mem.write_slice(&vec![0xa5u8; (4 * MIB) as usize], GuestAddress(4 * MIB))
        .expect("write");
    let (irq, _) = counting_interrupt();
    let dev = VirtioBalloon::new(
        config(false, false),
        HostMappingBackend::new(mem.clone()),
        irq.clone(),
    );
    let mut t = MmioTransport::new(dev, mem.clone(), irq).expect("valid");
    let offered = device_features(&mut t);
    assert!(negotiate(&mut t, offered));
    let mut q = QueueDriver::at(&mem, RING_ADDR);
    setup_queue(&mut t, 0, u32::from(QUEUE_LEN), &q.mock);
    let q1 = QueueDriver::at(&mem, RING_ADDR + 0x1000);
    setup_queue(&mut t, 1, u32::from(QUEUE_LEN), &q1.mock);
    driver_ok(&mut t);
    q.put(PFN_BUF, &[0u8; 1024]);
    let before = allocated_bytes(&file);
    assert!(before >= 4 * MIB);
    // Inflate the 1024 pages (4 MiB), in four buffers of 256 pfns as Linux sends them.
    for chunk in 0..4u32 {
        let pfns: Vec<u8> = (0..256u32)
            .flat_map(|i| (pfn(4 * MIB) + chunk * 256 + i).to_le_bytes())
            .collect();
        q.put(PFN_BUF, &pfns);
        q.offer(&[Buf {
            addr: PFN_BUF,
            len: 1024,
            write: false,
        }]);
        t.notify(0);
        assert!(q.take_used().is_some());
    }
    assert_eq!(t.device().ballooned_bytes(), 4 * MIB);
    assert_eq!(t.device().counters().discard_errors, 0);
    let after = allocated_bytes(&file);
    assert!(
        before - after >= 4 * MIB,
        "memfd allocation {before} -> {after} should drop by 4 MiB"
    );
    let mut page = [0xffu8; 4096];
    mem.read_slice(&mut page, GuestAddress(5 * MIB))
        .expect("read");
    assert_eq!(page, [0u8; 4096], "a discarded page reads as zeroes");
    mem.read_slice(&mut page, GuestAddress(8 * MIB))
        .expect("read");
    assert_eq!(page, [0u8; 4096]);
    mem.read_slice(&mut page, GuestAddress(4 * MIB - 4096))
        .expect("read");
    assert_eq!(page, [0u8; 4096], "untouched memory unchanged");
}

#[test]
fn host_mapping_backend_drops_anonymous_pages() {
    use vm_memory::Bytes;
    let mem = balloon_memory();
    mem.write_slice(&[7u8; 8192], GuestAddress(64 * MIB))
        .expect("write");
    let mut b = HostMappingBackend::new(mem.clone());
    assert!(b.is_backed(GuestRange::new(64 * MIB, 4 * MIB)));
    assert!(!b.is_backed(GuestRange::new(30 * MIB, 4096)));
    b.discard(GuestRange::new(64 * MIB, 4096), DiscardKind::Reported)
        .expect("discard");
    let mut two = [0u8; 2];
    mem.read_slice(&mut two, GuestAddress(64 * MIB + 4095))
        .expect("read");
    assert_eq!(two, [0, 7], "only the discarded page is zero");
    let err = b
        .discard(GuestRange::new(30 * MIB, 4096), DiscardKind::Inflated)
        .expect_err("not guest memory");
    assert!(err.to_string().contains("0x1e00000"), "{err}");
    assert!(b
        .discard(
            GuestRange::new(68 * MIB - 4096, 8192),
            DiscardKind::Inflated
        )
        .is_err());
    b.reclaim(GuestRange::new(64 * MIB, 4096))
        .expect("nothing to do");
    // With a check (e.g. plugged virtio-mem blocks only), nothing else is touched.
    mem.write_slice(&[9u8; 4096], GuestAddress(65 * MIB))
        .expect("write");
    let mut b =
        HostMappingBackend::with_check(mem.clone(), Box::new(|r: GuestRange| r.end() <= 65 * MIB));
    assert!(b.is_backed(GuestRange::new(64 * MIB, MIB)));
    assert!(!b.is_backed(GuestRange::new(64 * MIB, MIB + 4096)));
    assert!(b
        .discard(GuestRange::new(65 * MIB, 4096), DiscardKind::Reported)
        .is_err());
    let mut one = [0u8; 1];
    mem.read_slice(&mut one, GuestAddress(65 * MIB))
        .expect("read");
    assert_eq!(one, [9], "an unbacked page keeps its contents");
    assert!(format!("{b:?}").contains("check: true"));
    // The regions the tests rely on.
    assert_eq!(mem.num_regions(), 3);
    assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 28 * MIB);
}

#[derive(Debug, Clone)]
enum Op {
    Inflate(Vec<u32>),
    Deflate(Vec<u32>),
    Report(u64, u32),
}

fn pfn_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        // Mostly pages around the region boundary at 16 MiB and in the last region.
        8 => pfn(14 * MIB)..pfn(18 * MIB),
        2 => pfn(64 * MIB) - 8..pfn(68 * MIB) + 8,
        1 => any::<u32>(),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(pfn_strategy(), 0..64).prop_map(Op::Inflate),
        3 => prop::collection::vec(pfn_strategy(), 0..64).prop_map(Op::Deflate),
        1 => ((12 * MIB)..(20 * MIB), 0u32..(64 * 1024)).prop_map(|(a, l)| Op::Report(a, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xba11),
        ..ProptestConfig::default()
    })]

    /// Random inflate/deflate/report sequences, with hostile pfns and an unbacked block: the
    /// device's balloon, the backend's inflated set, a model set and the counters agree after
    /// every step, and the backend never sees a contract violation.
    #[test]
    fn random_sequences_keep_device_backend_and_counters_in_step(
        ops in prop::collection::vec(op_strategy(), 1..40),
        fail_every in 0usize..5,
    ) {
        let mem = balloon_memory();
        let backend = TestBackend {
            unbacked: vec![(17 * MIB, 64 * 1024)],
            ..TestBackend::default()
        };
        let mut h = Harness::start_with(&mem, config(false, true), backend);
        let mut model: BTreeSet<u64> = BTreeSet::new();
        let valid = |p: u64| {
            let a = p * BALLOON_PAGE_SIZE;
            REGIONS.iter().any(|&(s, l)| a >= s && a < s + l) && !(17 * MIB..17 * MIB + 64 * 1024).contains(&a)
        };
        for (step, op) in ops.into_iter().enumerate() {
            if fail_every != 0 && step % fail_every == 0 {
                h.t.device_mut().backend_mut().fail_discards = 1;
            }
            match op {
                Op::Inflate(pfns) => {
                    let errors = h.dev().counters().discard_errors;
                    h.inflate(&pfns);
                    if h.dev().counters().discard_errors == errors {
                        model.extend(pfns.iter().map(|&p| u64::from(p)).filter(|&p| valid(p)));
                    } else {
                        // One range failed: take the device's word for which.
                        model = h.dev().ballooned_runs().iter().flat_map(|r| r.first..r.first + r.count).collect();
                    }
                }
                Op::Deflate(pfns) => {
                    h.deflate(&pfns);
                    for p in pfns {
                        model.remove(&u64::from(p));
                    }
                }
                Op::Report(addr, len) => {
                    h.submit(QueueRole::Reporting, &[Buf { addr, len, write: true }]);
                }
            }
            h.t.device_mut().backend_mut().fail_discards = 0;
            let dev: BTreeSet<u64> = h.dev().ballooned_runs().iter().flat_map(|r| r.first..r.first + r.count).collect();
            prop_assert_eq!(&dev, &model);
            prop_assert!(dev.iter().all(|&p| valid(p)));
            h.check_consistent();
        }
    }
}

/// Linux's `update_balloon_size_func` as a test driver: reads `num_pages`, inflates or
/// deflates in buffers of at most 256 pfns from its own page list, writes `actual`.
fn linux_driver_round(h: &mut Harness<'_>, owned: &mut Vec<u32>, free: &mut Vec<u32>) {
    let target = h.read_config_u32(0);
    let have = owned.len() as u32;
    if target > have {
        let take: Vec<u32> = free.drain(..(target - have) as usize).collect();
        for chunk in take.chunks(256) {
            h.inflate(chunk);
        }
        owned.extend(take);
    } else {
        let give: Vec<u32> = owned.drain(..(have - target) as usize).collect();
        for chunk in give.chunks(256) {
            h.deflate(chunk);
        }
        free.extend(give);
    }
    write32(&mut h.t, VIRTIO_MMIO_CONFIG + 4, owned.len() as u32);
}

#[test]
fn a_driver_follows_the_target_up_and_down() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(true, true));
    // The guest's free pages: scattered over both adjacent regions and the last one.
    let mut free: Vec<u32> = (pfn(2 * MIB)..pfn(24 * MIB))
        .step_by(3)
        .chain(pfn(64 * MIB)..pfn(68 * MIB))
        .collect();
    let mut owned = Vec::new();
    for target in [300u32, 1000, 100, 2000, 0] {
        let interrupts = h.line.get();
        h.t.device_mut().set_target_pages(target);
        assert_eq!(
            h.line.get(),
            interrupts + 1,
            "configuration change announced"
        );
        linux_driver_round(&mut h, &mut owned, &mut free);
        assert_eq!(h.dev().actual_pages(), target);
        let info = h.dev().info();
        assert_eq!(info.actual_bytes(), u64::from(target) * 4096);
        assert_eq!(info.target_bytes(), info.ballooned_bytes());
        assert_eq!(h.dev().ballooned_pages(), u64::from(target));
        h.check_consistent();
    }
    let info = h.dev().info();
    assert!(info.active && info.free_page_reporting && !info.deflate_on_oom);
    assert_eq!(
        (
            info.target_bytes(),
            info.actual_bytes(),
            info.ballooned_bytes()
        ),
        (0, 0, 0)
    );
    assert_eq!(info.config, config(true, true));
    assert_eq!(info.counters, h.dev().counters());
    assert_eq!(info.stats, None);
    let c = h.dev().counters();
    assert_eq!(c.inflated_pages, 300 + 700 + 1900);
    assert_eq!(c.deflated_pages, 900 + 2000);
    assert_eq!(
        (c.invalid_pfns, c.redundant_pfns, c.dropped_chains),
        (0, 0, 0)
    );
}

#[test]
fn a_stats_buffer_offered_before_driver_ok_is_picked_up_by_the_first_request() {
    let mem = balloon_memory();
    let (mut t, line) = transport(&mem, config(true, false), TestBackend::default());
    let offered = device_features(&mut t);
    assert!(negotiate(&mut t, offered));
    let mut rings: Vec<Ring<'_>> = (0..3u64)
        .map(|i| Ring::at(&mem, RING_ADDR + 0x1000 * i))
        .collect();
    for (i, r) in rings.iter().enumerate() {
        setup_queue(&mut t, i as u32, u32::from(QUEUE_LEN), &r.q.mock);
    }
    // Linux's init_vqs: prime the stats queue and kick it, before DRIVER_OK.
    let bytes = encode_stats(&[(VIRTIO_BALLOON_S_MEMFREE, 7 * MIB)]);
    rings[2].q.put(STATS_BUF, &bytes);
    rings[2].offer(&[Buf {
        addr: STATS_BUF,
        len: bytes.len() as u32,
        write: false,
    }]);
    write32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 2);
    driver_ok(&mut t);
    assert!(t.device().stats().is_none(), "the early kick was ignored");
    // The first request takes the buffer in and returns it for fresh values.
    let idx = t.device_mut().request_stats().expect("stats queue");
    t.notify(idx as u32);
    assert_eq!(
        t.device().stats().and_then(|s| s.free_memory()),
        Some(7 * MIB)
    );
    assert_eq!(rings[2].q.take_used().map(|u| u.1), Some(0));
    assert_eq!(line.get(), 1);
    assert_eq!(t.device().counters().stats_requests, 1);
}

#[test]
fn oversized_buffers_and_reports_are_cut_off() {
    use super::device::{MAX_PFNS_PER_BUFFER, MAX_REPORT_BYTES};
    // 2 GiB of anonymous guest RAM (untouched, so nearly free) holds a pfn buffer longer than
    // the limit, and reports can name more than the limit.
    let mem = VirtioGuestMemory::from_ranges(&[(GuestAddress(0), 2 << 30)]).expect("memory");
    let mut h = Harness::start(&mem, config(false, true));
    let n = MAX_PFNS_PER_BUFFER + 10;
    let pfns: Vec<u8> = (0..n as u32)
        .flat_map(|i| (pfn(64 * MIB) + i).to_le_bytes())
        .collect();
    h.queues[0].q.put(PFN_BUF, &pfns);
    h.submit(
        QueueRole::Inflate,
        &[Buf {
            addr: PFN_BUF,
            len: pfns.len() as u32,
            write: false,
        }],
    );
    let c = h.dev().counters();
    assert_eq!(h.dev().ballooned_pages(), MAX_PFNS_PER_BUFFER as u64);
    assert_eq!((c.oversized_chains, c.invalid_pfns), (1, 10));
    // A report of 1.5 GiB in two descriptors: only the first 1 GiB counts.
    h.submit(
        QueueRole::Reporting,
        &[
            Buf {
                addr: 1 << 30,
                len: 1 << 30,
                write: true,
            },
            Buf {
                addr: 2 * MIB,
                len: 512 << 20,
                write: true,
            },
        ],
    );
    let c = h.dev().counters();
    assert_eq!(c.oversized_chains, 2);
    // The first 64 MiB of the reported GiB are in the balloon (64 MiB + 1 GiB of pfns).
    assert_eq!(c.reported_bytes, MAX_REPORT_BYTES - 64 * MIB);
    assert_eq!(c.invalid_report_bytes, 512 << 20);
    // (The test backend's region checks know only the usual test memory, so compare directly.)
    assert_eq!(h.backend().inflated.len() as u64, h.dev().ballooned_pages());
}

#[test]
fn a_long_stats_interval_starts_at_the_startup_period_until_values_arrive() {
    use super::event_handler::STARTUP_PERIOD;
    let mem = balloon_memory();
    let h = Harness::start(&mem, config(true, false));
    let Harness { t, mut queues, .. } = h;
    // The driver's buffer waits in the queue (offered before DRIVER_OK in real life).
    let bytes = encode_stats(&[(VIRTIO_BALLOON_S_MEMFREE, 3 * MIB)]);
    queues[2].q.put(STATS_BUF, &bytes);
    queues[2].offer(&[Buf {
        addr: STATS_BUF,
        len: bytes.len() as u32,
        write: false,
    }]);
    let transport = Arc::new(Mutex::new(t));
    let timer = Arc::new(Mutex::new(
        StatsTimer::new(transport.clone(), Duration::from_secs(3600)).expect("timer"),
    ));
    assert!(timer.lock().expect("lock").is_starting());
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().expect("epoll");
    em.add_subscriber(timer.clone());
    // The first tick comes after STARTUP_PERIOD, not an hour: wait up to 5 s for it.
    assert!(STARTUP_PERIOD < Duration::from_secs(5));
    assert_eq!(em.run_with_timeout(5000).expect("run"), 1);
    let t = transport.lock().expect("lock");
    assert_eq!(
        t.device().stats().and_then(|s| s.free_memory()),
        Some(3 * MIB)
    );
    assert_eq!(
        queues[2].q.take_used().map(|u| u.1),
        Some(0),
        "returned for fresh values"
    );
    assert!(
        !timer.lock().expect("lock").is_starting(),
        "back to the configured interval"
    );
}

#[test]
fn reports_of_a_guest_that_poisons_free_pages_are_kept() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(false, true));
    assert_ne!(h.dev().acked_features() & VIRTIO_BALLOON_F_PAGE_POISON, 0);
    let report = |h: &mut Harness<'_>| {
        h.submit(
            QueueRole::Reporting,
            &[Buf {
                addr: 4 * MIB,
                len: (2 * MIB) as u32,
                write: true,
            }],
        )
    };
    // Linux writes PAGE_POISON (0xaa) repeated when page poisoning is on.
    write32(&mut h.t, VIRTIO_MMIO_CONFIG + 12, 0xaaaa_aaaa);
    assert_eq!(h.dev().poison_val(), 0xaaaa_aaaa);
    assert_eq!(h.read_config_u32(12), 0xaaaa_aaaa);
    assert_eq!(
        report(&mut h).map(|u| u.1),
        Some(0),
        "acknowledged all the same"
    );
    assert!(
        h.backend().discards.is_empty(),
        "poisoned pages keep their contents"
    );
    assert_eq!(h.dev().counters().kept_report_bytes, 2 * MIB);
    assert_eq!(h.dev().counters().reported_bytes, 0);
    // init_on_free guests write 0: zero-filled refaults are what they expect.
    write32(&mut h.t, VIRTIO_MMIO_CONFIG + 12, 0);
    report(&mut h);
    assert_eq!(h.dev().counters().reported_bytes, 2 * MIB);
    // A reset forgets the poison value.
    write32(&mut h.t, VIRTIO_MMIO_CONFIG + 12, 0x55);
    write32(&mut h.t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(h.dev().poison_val(), 0);

    // A driver that does not accept PAGE_POISON still gets reporting, with discards.
    let (mut t, _) = transport(&mem, config(false, true), TestBackend::default());
    let offered = device_features(&mut t);
    assert!(negotiate(&mut t, offered & !VIRTIO_BALLOON_F_PAGE_POISON));
}

#[test]
fn the_stats_poller_thread_requests_stats_and_stops_on_drop() {
    let mem = balloon_memory();
    let mut h = Harness::start(&mem, config(true, false));
    h.send_stats(&[(VIRTIO_BALLOON_S_MEMFREE, 1)]);
    let Harness { t, mut queues, .. } = h;
    let transport = Arc::new(Mutex::new(t));
    assert!(matches!(
        StatsPoller::spawn(transport.clone(), Duration::ZERO),
        Err(StatsTimerError::ZeroInterval(_))
    ));
    let poller = StatsPoller::spawn(transport.clone(), Duration::from_millis(2)).expect("thread");
    // Wait (up to 5 s) for the first request: the buffer comes back.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut returned = None;
    while returned.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        let _t = transport.lock().expect("lock");
        returned = queues[2].q.take_used();
    }
    assert_eq!(
        returned.map(|u| u.1),
        Some(0),
        "buffer returned by the poller"
    );
    // Dropping while this thread holds the transport lock must not deadlock; the thread
    // ends (and lets go of the transport) soon after.
    let guard = transport.lock().expect("lock");
    drop(poller);
    assert_eq!(guard.device().counters().stats_requests, 1);
    drop(guard);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&transport) > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(Arc::strong_count(&transport), 1, "the poller thread ended");
    // stop() joins.
    let poller = StatsPoller::spawn(transport.clone(), Duration::from_secs(60)).expect("thread");
    assert_eq!(Arc::strong_count(&transport), 2);
    poller.stop();
    assert_eq!(Arc::strong_count(&transport), 1, "joined");
}
