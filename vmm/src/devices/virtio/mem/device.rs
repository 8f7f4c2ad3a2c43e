//! The virtio-mem device: configuration, plugged-block state and request handling.
//!
//! The rules follow the virtio 1.2 spec (section 5.15) and the order in which QEMU's
//! `virtio-mem` checks a PLUG/UNPLUG request: range (ERROR) → `requested_size` (NACK, plug
//! only) → state of every block (ERROR) → backend (BUSY on failure) → ACK.

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_MEM;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestAddress;

use super::bitmap::BlockBitmap;
use super::request::{
    BlockRange, BlockRequest, BlockState, Request, Response, UsableRegion, REQUEST_SIZE,
    RESPONSE_SIZE,
};
use crate::devices::virtio::{
    ActivateError, FeatureError, VirtioDevice, VirtioGuestMemory, VirtioInterrupt,
    FEATURE_VERSION_1,
};

/// `VIRTIO_MEM_F_ACPI_PXM`: `node_id` is an ACPI proximity domain.
pub const VIRTIO_MEM_F_ACPI_PXM: u64 = 1 << 0;
/// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`: the driver does not touch unplugged memory. memtide
/// requires it (unplugged blocks are not mapped), as QEMU does with `unplugged-inaccessible=on`.
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;

/// Size of the one request queue ("guest-request").
pub const QUEUE_SIZE: u16 = 128;
/// Smallest block size memtide offers (Linux's THP size on x86_64).
pub const MIN_BLOCK_SIZE: u64 = 2 << 20;
/// The region's start and size are multiples of Linux's x86_64 memory block size (128 MiB),
/// or the guest cannot add all of it as memory blocks.
pub const REGION_ALIGN: u64 = 128 << 20;
/// How far the usable region reaches beyond `requested_size` (QEMU's
/// `VIRTIO_MEM_USABLE_EXTENT` on x86_64): room for the driver to pick blocks in whole memory
/// blocks.
pub const USABLE_EXTENT: u64 = 256 << 20;
/// `sizeof(struct virtio_mem_config)`.
pub const CONFIG_SIZE: usize = 56;

/// A device's fixed layout and initial request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMemConfig {
    /// Guest physical start of the region.
    pub addr: u64,
    /// Size of the region (the most the device can plug).
    pub region_size: u64,
    /// Block size: a power of two, at least [`MIN_BLOCK_SIZE`].
    pub block_size: u64,
    /// The guest NUMA node's ACPI proximity domain, if known (offers `VIRTIO_MEM_F_ACPI_PXM`).
    pub node_id: Option<u16>,
    /// The initial `requested_size` (usually 0).
    pub requested_size: u64,
}

/// Invalid device configuration or resize.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VirtioMemError {
    /// The block size is not a power of two of at least 2 MiB.
    #[error("block size {0:#x} is not a power of two >= 2 MiB")]
    BlockSize(u64),
    /// The region is empty, overflows, or is not aligned to 128 MiB and the block size.
    #[error(
        "region {0:#x}+{1:#x} is empty, overflows, or is not aligned to 128 MiB and the block size"
    )]
    Region(u64, u64),
    /// The requested size is not a multiple of the block size.
    #[error("requested size {0:#x} is not a multiple of the block size {1:#x}")]
    RequestedUnaligned(u64, u64),
    /// The requested size exceeds the region.
    #[error("requested size {0:#x} exceeds the region size {1:#x}")]
    RequestedTooLarge(u64, u64),
}

/// Why the host side of a plug or unplug failed. The device answers BUSY: the guest retries
/// later.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The pool cannot give this many bytes now (e.g. below its low watermark).
    #[error("the pool cannot provide {0:#x} bytes now")]
    OutOfMemory(u64),
    /// Mapping or unmapping the range failed.
    #[error("host side of {addr:#x}+{size:#x} failed: {reason}")]
    Host {
        /// Guest address of the range.
        addr: u64,
        /// Size of the range.
        size: u64,
        /// What failed.
        reason: String,
    },
}

/// The host side of plugging, implemented by the VMM: back a guest range with memory from the
/// pool, or give it back.
///
/// Both calls are all-or-nothing: on `Err` the range must be exactly as before the call (the
/// device keeps its block state unchanged and answers BUSY). Ranges are block-aligned, lie in
/// the device region and are entirely unplugged (`plug`) or plugged (`unplug`).
pub trait MemoryBackend: Send {
    /// Makes `addr..addr+size` guest RAM backed by host memory.
    fn plug(&mut self, addr: GuestAddress, size: u64) -> Result<(), BackendError>;
    /// Releases the host memory behind `addr..addr+size` and makes the range inaccessible.
    fn unplug(&mut self, addr: GuestAddress, size: u64) -> Result<(), BackendError>;
}

/// What the device answered so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMemStats {
    /// Requests answered ACK.
    pub acks: u64,
    /// Requests answered NACK.
    pub nacks: u64,
    /// Requests answered BUSY.
    pub busy: u64,
    /// Requests answered ERROR.
    pub errors: u64,
    /// Descriptor chains that could not be answered (bad descriptors, no room for a response,
    /// buffers in unplugged device memory): returned to the driver with nothing written.
    pub dropped_chains: u64,
}

/// A virtio-mem device.
pub struct VirtioMem<B: MemoryBackend> {
    region: UsableRegion,
    region_size: u64,
    node_id: Option<u16>,
    plugged_size: u64,
    requested_size: u64,
    plugged: BlockBitmap,
    backend: B,
    interrupt: Arc<VirtioInterrupt>,
    acked_features: u64,
    active: bool,
    stats: VirtioMemStats,
}

impl<B: MemoryBackend> std::fmt::Debug for VirtioMem<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioMem")
            .field("addr", &self.region.addr)
            .field("region_size", &self.region_size)
            .field("block_size", &self.region.block_size)
            .field("usable_region_size", &self.region.usable_size)
            .field("plugged_size", &self.plugged_size)
            .field("requested_size", &self.requested_size)
            .field("active", &self.active)
            .finish()
    }
}

/// `min(region_size, align_up(requested + USABLE_EXTENT, block_size))`.
fn usable_size_for(requested: u64, region_size: u64, block_size: u64) -> u64 {
    requested
        .saturating_add(USABLE_EXTENT)
        .checked_next_multiple_of(block_size)
        .map_or(region_size, |s| s.min(region_size))
}

impl<B: MemoryBackend> VirtioMem<B> {
    /// A device with every block unplugged. `interrupt` is the `Arc` later given to the
    /// transport; the device announces `requested_size` changes through it.
    pub fn new(
        config: VirtioMemConfig,
        backend: B,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<Self, VirtioMemError> {
        let bs = config.block_size;
        if !bs.is_power_of_two() || bs < MIN_BLOCK_SIZE {
            return Err(VirtioMemError::BlockSize(bs));
        }
        let align = bs.max(REGION_ALIGN);
        let region_err = VirtioMemError::Region(config.addr, config.region_size);
        if config.region_size == 0
            || !config.addr.is_multiple_of(align)
            || !config.region_size.is_multiple_of(align)
            || config.addr.checked_add(config.region_size).is_none()
        {
            return Err(region_err);
        }
        let blocks = usize::try_from(config.region_size / bs).map_err(|_| region_err)?;
        Self::check_requested(config.requested_size, bs, config.region_size)?;
        Ok(VirtioMem {
            region: UsableRegion {
                addr: config.addr,
                block_size: bs,
                usable_size: usable_size_for(config.requested_size, config.region_size, bs),
            },
            region_size: config.region_size,
            node_id: config.node_id,
            plugged_size: 0,
            requested_size: config.requested_size,
            plugged: BlockBitmap::new(blocks),
            backend,
            interrupt,
            acked_features: 0,
            active: false,
            stats: VirtioMemStats::default(),
        })
    }

    fn check_requested(size: u64, block_size: u64, region_size: u64) -> Result<(), VirtioMemError> {
        if !size.is_multiple_of(block_size) {
            return Err(VirtioMemError::RequestedUnaligned(size, block_size));
        }
        if size > region_size {
            return Err(VirtioMemError::RequestedTooLarge(size, region_size));
        }
        Ok(())
    }

    /// Asks the guest to plug or unplug towards `size` bytes: validates it (a multiple of the
    /// block size, at most the region), grows the usable region to fit, and raises a
    /// configuration-change interrupt. Nothing changes on error.
    pub fn set_requested_size(&mut self, size: u64) -> Result<(), VirtioMemError> {
        Self::check_requested(size, self.region.block_size, self.region_size)?;
        self.requested_size = size;
        let usable = usable_size_for(size, self.region_size, self.region.block_size);
        // The usable region only grows here (it shrinks only on UNPLUG_ALL).
        self.region.usable_size = self.region.usable_size.max(usable);
        self.interrupt.config_changed();
        Ok(())
    }

    /// `requested_size`.
    pub fn requested_size(&self) -> u64 {
        self.requested_size
    }

    /// `plugged_size`.
    pub fn plugged_size(&self) -> u64 {
        self.plugged_size
    }

    /// `usable_region_size`.
    pub fn usable_region_size(&self) -> u64 {
        self.region.usable_size
    }

    /// `region_size`.
    pub fn region_size(&self) -> u64 {
        self.region_size
    }

    /// `addr`: the guest physical start of the region.
    pub fn addr(&self) -> u64 {
        self.region.addr
    }

    /// `block_size`.
    pub fn block_size(&self) -> u64 {
        self.region.block_size
    }

    /// Whether the driver is running the device.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The plugged state of every block.
    pub fn plugged_blocks(&self) -> &BlockBitmap {
        &self.plugged
    }

    /// The plugged memory as maximal `(guest address, size)` ranges, ascending.
    pub fn plugged_ranges(&self) -> Vec<(GuestAddress, u64)> {
        self.plugged
            .set_runs()
            .into_iter()
            .map(|(first, count)| {
                (
                    self.block_addr(first),
                    count as u64 * self.region.block_size,
                )
            })
            .collect()
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Answer counts.
    pub fn stats(&self) -> VirtioMemStats {
        self.stats
    }

    fn block_addr(&self, index: usize) -> GuestAddress {
        GuestAddress(self.region.addr + index as u64 * self.region.block_size)
    }

    fn range_size(&self, range: BlockRange) -> u64 {
        range.count as u64 * self.region.block_size
    }

    /// Unplugs every plugged block (as an UNPLUG_ALL request does, without shrinking the usable
    /// region): for the VMM on a system reset, or to tear the device down. Stops at the first
    /// backend failure; what was unplugged up to it stays unplugged.
    pub fn unplug_all(&mut self) -> Result<(), BackendError> {
        for (first, count) in self.plugged.set_runs() {
            let size = count as u64 * self.region.block_size;
            self.backend.unplug(self.block_addr(first), size)?;
            self.plugged.set_range(first, count, false);
            self.plugged_size -= size;
            self.interrupt.bump_config_generation();
        }
        Ok(())
    }

    /// Handles one request and returns the answer (the state changes, if any, are done).
    pub fn handle_request(&mut self, request: Request) -> Response {
        let response = match request {
            Request::Plug(b) => self.plug(b),
            Request::Unplug(b) => self.unplug(b),
            Request::UnplugAll => self.unplug_all_request(),
            Request::State(b) => self.state(b),
        };
        self.count(response);
        response
    }

    fn count(&mut self, response: Response) {
        let counter = match response {
            Response::Ack | Response::AckState(_) => &mut self.stats.acks,
            Response::Nack => &mut self.stats.nacks,
            Response::Busy => &mut self.stats.busy,
            Response::Error => &mut self.stats.errors,
        };
        *counter += 1;
    }

    fn plug(&mut self, req: BlockRequest) -> Response {
        let Ok(range) = self.region.blocks(req) else {
            return Response::Error;
        };
        let size = self.range_size(range);
        match self.plugged_size.checked_add(size) {
            Some(total) if total <= self.requested_size => {}
            _ => return Response::Nack,
        }
        if self.plugged.count_range(range.first, range.count) != 0 {
            return Response::Error;
        }
        if self.backend.plug(GuestAddress(req.addr), size).is_err() {
            return Response::Busy;
        }
        self.plugged.set_range(range.first, range.count, true);
        self.plugged_size += size;
        self.interrupt.bump_config_generation();
        Response::Ack
    }

    fn unplug(&mut self, req: BlockRequest) -> Response {
        let Ok(range) = self.region.blocks(req) else {
            return Response::Error;
        };
        if self.plugged.count_range(range.first, range.count) != range.count {
            return Response::Error;
        }
        let size = self.range_size(range);
        if self.backend.unplug(GuestAddress(req.addr), size).is_err() {
            return Response::Busy;
        }
        self.plugged.set_range(range.first, range.count, false);
        self.plugged_size -= size;
        self.interrupt.bump_config_generation();
        Response::Ack
    }

    fn unplug_all_request(&mut self) -> Response {
        if self.unplug_all().is_err() {
            return Response::Busy;
        }
        // Everything is unplugged: the usable region may shrink back to what the request
        // needs (no configuration-change interrupt for this, virtio 1.2 section 5.15.4.2).
        let usable = usable_size_for(
            self.requested_size,
            self.region_size,
            self.region.block_size,
        );
        if usable != self.region.usable_size {
            self.region.usable_size = usable;
            self.interrupt.bump_config_generation();
        }
        Response::Ack
    }

    fn state(&self, req: BlockRequest) -> Response {
        let Ok(range) = self.region.blocks(req) else {
            return Response::Error;
        };
        let plugged = self.plugged.count_range(range.first, range.count);
        Response::AckState(if plugged == range.count {
            BlockState::Plugged
        } else if plugged == 0 {
            BlockState::Unplugged
        } else {
            BlockState::Mixed
        })
    }

    /// Whether `addr..addr+len` touches a block of the device region that is not plugged
    /// (and therefore not mapped: the VMM must not read or write it).
    fn touches_unplugged(&self, addr: u64, len: u32) -> bool {
        let end = addr.saturating_add(u64::from(len));
        let region_end = self.region.addr + self.region_size;
        let (start, stop) = (addr.max(self.region.addr), end.min(region_end));
        if len == 0 || start >= stop {
            return false;
        }
        let bs = self.region.block_size;
        let first = ((start - self.region.addr) / bs) as usize;
        let last = ((stop - 1 - self.region.addr) / bs) as usize;
        self.plugged.count_range(first, last - first + 1) != last - first + 1
    }

    /// Answers one descriptor chain; returns the bytes written for the used ring.
    fn handle_chain(
        &mut self,
        chain: DescriptorChain<&VirtioGuestMemory>,
        mem: &VirtioGuestMemory,
    ) -> u32 {
        // Buffers are only read and written where guest RAM is mapped.
        if chain
            .clone()
            .any(|d| self.touches_unplugged(d.addr().0, d.len()))
        {
            self.stats.dropped_chains += 1;
            return 0;
        }
        let writer: Result<Writer<'_, ()>, _> = Writer::new(mem, chain.clone());
        let mut writer = match writer {
            Ok(w) if w.available_bytes() >= RESPONSE_SIZE => w,
            _ => {
                self.stats.dropped_chains += 1;
                return 0;
            }
        };
        let reader: Result<Reader<'_, ()>, _> = Reader::new(mem, chain);
        let request = reader
            .ok()
            .and_then(|mut r| r.read_obj::<[u8; REQUEST_SIZE]>().ok())
            .map(|raw| Request::parse(&raw));
        let response = match request {
            Some(Ok(req)) => self.handle_request(req),
            // A short or unreadable request, or an unknown type.
            _ => {
                self.count(Response::Error);
                Response::Error
            }
        };
        match writer.write_obj(response.to_bytes()) {
            Ok(()) => RESPONSE_SIZE as u32,
            Err(_) => {
                self.stats.dropped_chains += 1;
                0
            }
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[0..8].copy_from_slice(&self.region.block_size.to_le_bytes());
        c[8..10].copy_from_slice(&self.node_id.unwrap_or(0).to_le_bytes());
        c[16..24].copy_from_slice(&self.region.addr.to_le_bytes());
        c[24..32].copy_from_slice(&self.region_size.to_le_bytes());
        c[32..40].copy_from_slice(&self.region.usable_size.to_le_bytes());
        c[40..48].copy_from_slice(&self.plugged_size.to_le_bytes());
        c[48..56].copy_from_slice(&self.requested_size.to_le_bytes());
        c
    }
}

impl<B: MemoryBackend> VirtioDevice for VirtioMem<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        let pxm = if self.node_id.is_some() {
            VIRTIO_MEM_F_ACPI_PXM
        } else {
            0
        };
        FEATURE_VERSION_1 | VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE | pxm
    }

    fn check_features(&self, acked: u64) -> Result<(), FeatureError> {
        if acked & VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE == 0 {
            return Err(FeatureError::Missing(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE));
        }
        Ok(())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only for the driver (virtio 1.2 section 5.15.4.1).
    }

    fn activate(&mut self, acked_features: u64, _queues: &[Queue]) -> Result<(), ActivateError> {
        self.acked_features = acked_features;
        self.active = true;
        Ok(())
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &VirtioGuestMemory) -> bool {
        if !self.active || index != 0 {
            return false;
        }
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.handle_chain(chain, mem);
            if queue.add_used(mem, head, len).is_err() {
                self.stats.dropped_chains += 1;
                break;
            }
            used = true;
        }
        used
    }

    fn reset(&mut self) {
        // Block states survive a device reset (virtio 1.2 section 5.15.5.2).
        self.active = false;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use virtio_bindings::virtio_mmio::{
        VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_INTERRUPT_STATUS,
        VIRTIO_MMIO_QUEUE_NOTIFY,
    };

    use super::*;
    use crate::devices::virtio::mem::request::BlockRequest;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::test_utils::*;

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
        let mut d3 =
            VirtioMem::new(config(64 * MIB), SecondCallFails::default(), irq).expect("valid");
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
        let desc = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(REQ_AT, 24, 1, 200),
        );
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
}
