//! Inflate throughput of the virtio-balloon device: pfn buffers as Linux sends them (256 pfns
//! each) go through the virtio-mmio transport and the device to `HostMappingBackend`, which
//! punches the pages out of a real memfd mapping (`MADV_REMOVE`), as memtide maps guest RAM.
//!
//! Cases: contiguous pfns (each buffer merges into one range: one madvise per buffer) and
//! scattered pfns (every other page: 256 madvise calls per buffer), over touched pages (the
//! host really frees memory); and both again with a backend that does nothing, which leaves
//! the device's own share (queue handling, pfn sorting and merging, the page set). Deflate
//! between iterations is not timed.
//!
//! Run: `cargo bench -p memtide-vmm --bench balloon_inflate`.

use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memtide_vmm::devices::virtio::balloon::{
    BalloonBackend, BalloonBackendError, DiscardKind, GuestRange, HostMappingBackend,
    VirtioBalloon, VirtioBalloonConfig,
};
use memtide_vmm::devices::virtio::mmio::MmioTransport;
use memtide_vmm::devices::virtio::{IrqLine, VirtioGuestMemory, VirtioInterrupt};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, FileOffset, GuestAddress};

const MIB: u64 = 1 << 20;
const RAM: u64 = 256 * MIB;
/// Pages inflated per iteration: 64 MiB.
const PAGES: u32 = 16384;
const FIRST_PFN: u32 = (64 * MIB / 4096) as u32;
/// Linux's `VIRTIO_BALLOON_ARRAY_PFNS_MAX`.
const PFNS_PER_BUFFER: usize = 256;
const QSIZE: u16 = 16;
const RINGS: u64 = 0x1000;
const RING_STRIDE: u64 = 0x1000;
const BUF: u64 = 0x10_0000;

struct NoIrq;
impl IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Accepts everything and does nothing: the device's own cost.
struct NoopBackend;
impl BalloonBackend for NoopBackend {
    fn is_backed(&self, _: GuestRange) -> bool {
        true
    }
    fn discard(&mut self, _: GuestRange, _: DiscardKind) -> Result<(), BalloonBackendError> {
        Ok(())
    }
    fn reclaim(&mut self, _: GuestRange) -> Result<(), BalloonBackendError> {
        Ok(())
    }
}

type Balloon = MmioTransport<VirtioBalloon<Box<dyn BalloonBackend>>>;

fn memfd_memory() -> VirtioGuestMemory {
    // SAFETY: memfd_create with a valid C string; the fd is checked and then owned by the File.
    let file = unsafe {
        let fd = libc::memfd_create(c"balloon-bench".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0, "memfd_create failed");
        std::fs::File::from_raw_fd(fd)
    };
    file.set_len(RAM).expect("memfd size");
    VirtioGuestMemory::from_ranges_with_files([(
        GuestAddress(0),
        RAM as usize,
        Some(FileOffset::new(file, 0)),
    )])
    .expect("guest memory")
}

fn w32(t: &mut Balloon, reg: u32, v: u32) {
    t.write(u64::from(reg), &v.to_le_bytes());
}

/// A running balloon with inflate (0) and deflate (1) queues at `RINGS`.
fn start(mem: &VirtioGuestMemory, backend: Box<dyn BalloonBackend>) -> Balloon {
    let irq = Arc::new(VirtioInterrupt::new(Box::new(NoIrq)));
    let dev = VirtioBalloon::new(VirtioBalloonConfig::default(), backend, irq.clone());
    let mut t = MmioTransport::new(dev, mem.clone(), irq).expect("transport");
    let s1 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    let s2 = s1 | VIRTIO_CONFIG_S_DRIVER;
    let s3 = s2 | VIRTIO_CONFIG_S_FEATURES_OK;
    w32(&mut t, VIRTIO_MMIO_STATUS, s1);
    w32(&mut t, VIRTIO_MMIO_STATUS, s2);
    // VERSION_1 (bit 32) and MUST_TELL_HOST (bit 0).
    w32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    w32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    w32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    w32(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    w32(&mut t, VIRTIO_MMIO_STATUS, s3);
    for q in 0..2u32 {
        let base = RINGS + u64::from(q) * RING_STRIDE;
        w32(&mut t, VIRTIO_MMIO_QUEUE_SEL, q);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
        w32(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, base as u32);
        w32(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (base + 0x100) as u32);
        w32(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, (base + 0x200) as u32);
        w32(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
    w32(&mut t, VIRTIO_MMIO_STATUS, s3 | VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(t.is_activated(), "balloon running");
    t
}

/// The driver side: one single-descriptor chain per buffer, in descriptor slot 0.
struct Driver {
    avail_idx: [u16; 2],
}

impl Driver {
    fn send(&mut self, t: &mut Balloon, mem: &VirtioGuestMemory, queue: u32, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(BUF)).expect("buffer");
        let base = RINGS + u64::from(queue) * RING_STRIDE;
        let d = RawDescriptor::from(SplitDescriptor::new(BUF, bytes.len() as u32, 0, 0));
        mem.write_obj(d, GuestAddress(base)).expect("descriptor");
        let idx = &mut self.avail_idx[queue as usize];
        let slot = base + 0x100 + 4 + 2 * u64::from(*idx % QSIZE);
        mem.write_obj(0u16, GuestAddress(slot)).expect("avail slot");
        *idx = idx.wrapping_add(1);
        mem.write_obj(*idx, GuestAddress(base + 0x100 + 2))
            .expect("avail idx");
        t.notify(queue);
        let used: u16 = mem
            .read_obj(GuestAddress(base + 0x200 + 2))
            .expect("used idx");
        assert_eq!(used, *idx, "buffer returned");
    }
}

fn pfn_list(scattered: bool) -> Vec<u32> {
    let step = if scattered { 2 } else { 1 };
    (0..PAGES).map(|i| FIRST_PFN + i * step).collect()
}

fn touch(mem: &VirtioGuestMemory, pfns: &[u32]) {
    for &p in pfns {
        mem.write_obj(1u8, GuestAddress(u64::from(p) * 4096))
            .expect("touch");
    }
}

fn bench_inflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("balloon_inflate_64MiB");
    group.throughput(Throughput::Elements(u64::from(PAGES)));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    for (name, scattered, noop) in [
        ("contiguous", false, false),
        ("scattered", true, false),
        ("contiguous_noop_backend", false, true),
        ("scattered_noop_backend", true, true),
    ] {
        let mem = memfd_memory();
        let backend: Box<dyn BalloonBackend> = if noop {
            Box::new(NoopBackend)
        } else {
            Box::new(HostMappingBackend::new(mem.clone()))
        };
        let mut t = start(&mem, backend);
        let mut driver = Driver { avail_idx: [0, 0] };
        let pfns = pfn_list(scattered);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    touch(&mem, &pfns);
                    let start = Instant::now();
                    for chunk in pfns.chunks(PFNS_PER_BUFFER) {
                        driver.send(&mut t, &mem, 0, chunk);
                    }
                    total += start.elapsed();
                    assert_eq!(t.device().ballooned_pages(), u64::from(PAGES));
                    for chunk in pfns.chunks(PFNS_PER_BUFFER) {
                        driver.send(&mut t, &mem, 1, chunk);
                    }
                    assert_eq!(t.device().ballooned_pages(), 0);
                }
                total
            })
        });
        assert_eq!(t.device().counters().discard_errors, 0);
    }
    group.finish();
}

criterion_group!(benches, bench_inflate);
criterion_main!(benches);
