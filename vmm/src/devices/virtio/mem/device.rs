//! The virtio-mem device: configuration, plugged-block state and request handling.
//!
//! The rules follow the virtio 1.2 spec (section 5.15) and the order in which QEMU's
//! `virtio-mem` checks a PLUG/UNPLUG request: range (ERROR) → `requested_size` (NACK, plug
//! only) → state of every block (ERROR) → backend (BUSY on failure) → ACK.

use std::sync::Arc;
use std::time::Instant;

use virtio_bindings::virtio_ids::VIRTIO_ID_MEM;
use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::{Bytes, GuestAddress};

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
    /// The pool blocks behind the plugged memory, `(pfn, order)`, for the pool audit (a
    /// backend that does not take memory from the pool holds none).
    fn pool_blocks(&self) -> Vec<(u64, u32)> {
        Vec::new()
    }
}

impl<T: MemoryBackend + ?Sized> MemoryBackend for Box<T> {
    fn plug(&mut self, addr: GuestAddress, size: u64) -> Result<(), BackendError> {
        (**self).plug(addr, size)
    }
    fn unplug(&mut self, addr: GuestAddress, size: u64) -> Result<(), BackendError> {
        (**self).unplug(addr, size)
    }
    fn pool_blocks(&self) -> Vec<(u64, u32)> {
        (**self).pool_blocks()
    }
}

/// What the device answered so far, and the host time it spent on requests.
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
    /// Well-formed requests handled, by type.
    pub requests: RequestCounts,
    /// Wall time spent handling them, by type, nanoseconds (range and state checks, the
    /// backend: pool allocation or free, memfd punch-hole, remapping).
    pub request_nanos: RequestCounts,
    /// Wall time spent in queue processing, nanoseconds: everything the device does for the
    /// driver's requests (popping chains, reading requests, handling them, writing answers,
    /// the used ring). Includes `request_nanos`.
    pub queue_nanos: u64,
}

impl VirtioMemStats {
    /// Adds `other`'s counts to these (a VM's devices summed).
    pub fn add(&mut self, other: &VirtioMemStats) {
        self.acks += other.acks;
        self.nacks += other.nacks;
        self.busy += other.busy;
        self.errors += other.errors;
        self.dropped_chains += other.dropped_chains;
        self.requests.add(&other.requests);
        self.request_nanos.add(&other.request_nanos);
        self.queue_nanos += other.queue_nanos;
    }
}

/// A count per request type.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    /// `VIRTIO_MEM_REQ_PLUG`.
    pub plug: u64,
    /// `VIRTIO_MEM_REQ_UNPLUG`.
    pub unplug: u64,
    /// `VIRTIO_MEM_REQ_UNPLUG_ALL`.
    pub unplug_all: u64,
    /// `VIRTIO_MEM_REQ_STATE`.
    pub state: u64,
}

impl RequestCounts {
    /// The counts by the names the API uses: `plug`, `unplug`, `unplug_all`, `state`.
    pub fn named(&self) -> [(&'static str, u64); 4] {
        [
            ("plug", self.plug),
            ("unplug", self.unplug),
            ("unplug_all", self.unplug_all),
            ("state", self.state),
        ]
    }

    fn add(&mut self, other: &RequestCounts) {
        self.plug += other.plug;
        self.unplug += other.unplug;
        self.unplug_all += other.unplug_all;
        self.state += other.state;
    }

    fn of(&mut self, request: &Request) -> &mut u64 {
        match request {
            Request::Plug(_) => &mut self.plug,
            Request::Unplug(_) => &mut self.unplug,
            Request::UnplugAll => &mut self.unplug_all,
            Request::State(_) => &mut self.state,
        }
    }
}

/// Nanoseconds since `start`, saturating.
fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
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
    /// The running queue's rings as `(guest address, length)`: blocks under them cannot be
    /// unplugged while the driver runs.
    rings: Vec<(u64, u64)>,
    busy_pending: bool,
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
            rings: Vec::new(),
            busy_pending: false,
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
        self.busy_pending = false;
        self.interrupt.config_changed();
        Ok(())
    }

    /// Re-announces the configuration: a configuration-change interrupt with nothing changed,
    /// which the spec allows (virtio 1.2 section 5.15.4.2). Linux's driver then works towards
    /// `requested_size` at once, instead of when its retry timer fires (50 s or more after a
    /// BUSY answer). The control plane calls this when the pool has memory again.
    pub fn kick(&mut self) {
        self.busy_pending = false;
        self.interrupt.config_changed();
    }

    /// Whether a request was answered BUSY since the last [`VirtioMem::kick`] or resize: the
    /// guest is waiting for its retry timer, and a kick would resume it.
    pub fn busy_pending(&self) -> bool {
        self.busy_pending
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
        let start = Instant::now();
        let response = match request {
            Request::Plug(b) => self.plug(b),
            Request::Unplug(b) => self.unplug(b),
            Request::UnplugAll => self.unplug_all_request(),
            Request::State(b) => self.state(b),
        };
        let nanos = nanos_since(start);
        *self.stats.requests.of(&request) += 1;
        let spent = self.stats.request_nanos.of(&request);
        *spent = spent.saturating_add(nanos);
        self.count(response);
        response
    }

    fn count(&mut self, response: Response) {
        let counter = match response {
            Response::Ack | Response::AckState(_) => &mut self.stats.acks,
            Response::Nack => &mut self.stats.nacks,
            Response::Busy => {
                self.busy_pending = true;
                &mut self.stats.busy
            }
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
        if self.overlaps_rings(req.addr, size) {
            // The driver would pull the memory of its own queue away: refused, or the
            // VMM would fault on the next notification.
            return Response::Error;
        }
        if self.backend.unplug(GuestAddress(req.addr), size).is_err() {
            return Response::Busy;
        }
        self.plugged.set_range(range.first, range.count, false);
        self.plugged_size -= size;
        self.interrupt.bump_config_generation();
        Response::Ack
    }

    fn unplug_all_request(&mut self) -> Response {
        let in_use = self
            .plugged_ranges()
            .iter()
            .any(|(a, s)| self.overlaps_rings(a.0, *s));
        if in_use || self.unplug_all().is_err() {
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

    fn overlaps_rings(&self, addr: u64, size: u64) -> bool {
        let end = addr.saturating_add(size);
        self.rings
            .iter()
            .any(|&(a, l)| a < end && addr < a.saturating_add(l))
    }

    /// Whether the chain at `head` in `queue`'s descriptor table refers to an indirect table
    /// in unplugged device memory (which virtio-queue would read while walking the chain).
    /// Walks the direct part of the chain, at most the queue size many descriptors.
    fn indirect_table_unplugged(&self, queue: &Queue, head: u16, mem: &VirtioGuestMemory) -> bool {
        let mut index = head;
        for _ in 0..queue.size() {
            if index >= queue.size() {
                return false;
            }
            let Some(at) = queue.desc_table().checked_add(16 * u64::from(index)) else {
                return false;
            };
            let Ok(raw) = mem.read_obj::<RawDescriptor>(GuestAddress(at)) else {
                return false;
            };
            let desc = SplitDescriptor::from(raw);
            if desc.flags() & VRING_DESC_F_INDIRECT as u16 != 0 {
                return self.touches_unplugged(desc.addr().0, desc.len());
            }
            if !desc.has_next() {
                return false;
            }
            index = desc.next();
        }
        false
    }

    /// Whether all of `addr..addr+len` (non-empty) lies in plugged blocks of the device
    /// region: guest RAM the VMM has mapped (the balloon discards such pages too).
    pub fn range_plugged(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let region_end = self.region.addr + self.region_size;
        if len == 0 || addr < self.region.addr || end > region_end {
            return false;
        }
        let bs = self.region.block_size;
        let first = ((addr - self.region.addr) / bs) as usize;
        let last = ((end - 1 - self.region.addr) / bs) as usize;
        self.plugged.count_range(first, last - first + 1) == last - first + 1
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

    fn activate(&mut self, acked_features: u64, queues: &[Queue]) -> Result<(), ActivateError> {
        let mut rings = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            let n = u64::from(q.size());
            // Split ring sizes (virtio 1.2 section 2.7): 16-byte descriptors, avail ring
            // flags/idx/ring/used_event, used ring flags/idx/8-byte elements/avail_event.
            let parts = [
                (q.desc_table(), 16 * n),
                (q.avail_ring(), 6 + 2 * n),
                (q.used_ring(), 6 + 8 * n),
            ];
            for (addr, len) in parts {
                let len32 = u32::try_from(len).map_err(|_| ActivateError::QueueInvalid(i))?;
                if self.touches_unplugged(addr, len32) {
                    return Err(ActivateError::RingsInaccessible(i));
                }
                rings.push((addr, len));
            }
        }
        self.rings = rings;
        self.acked_features = acked_features;
        self.active = true;
        Ok(())
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &VirtioGuestMemory) -> bool {
        if !self.active || index != 0 {
            return false;
        }
        let start = Instant::now();
        let used = self.drain_queue(queue, mem);
        self.stats.queue_nanos = self.stats.queue_nanos.saturating_add(nanos_since(start));
        used
    }

    fn reset(&mut self) {
        // Block states survive a device reset (virtio 1.2 section 5.15.5.2).
        self.active = false;
        self.acked_features = 0;
        self.rings.clear();
    }
}

impl<B: MemoryBackend> VirtioMem<B> {
    /// Answers every available chain of the request queue; true if any was used.
    fn drain_queue(&mut self, queue: &mut Queue, mem: &VirtioGuestMemory) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = if self.indirect_table_unplugged(queue, head, mem) {
                self.stats.dropped_chains += 1;
                0
            } else {
                self.handle_chain(chain, mem)
            };
            if queue.add_used(mem, head, len).is_err() {
                self.stats.dropped_chains += 1;
                break;
            }
            used = true;
        }
        used
    }
}
