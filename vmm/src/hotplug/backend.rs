//! [`PoolMemoryBackend`]: the host side of one virtio-mem device. A plugged block is pool
//! memory from ZONE_MOVABLE of the host node behind the guest node (MOVABLE buddy blocks of
//! the block's order, or several smaller ones when no such block is free), mapped
//! `MAP_FIXED | MAP_SHARED` from that node's memfd into the device region. Unplug punches the
//! pages out of the memfd, maps the block inaccessible again and frees the pages to the pool.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use memtide_allocator::buddy::AllocRequest;
use memtide_allocator::{MigrateType, NodeId, Order, Pfn, ZoneType, MAX_ORDER, PAGE_SIZE};
use vm_memory::{GuestAddress, MmapRegion};

use crate::devices::virtio::mem::{BackendError, MemoryBackend};
use crate::memory::host::HostMemory;
use crate::memory::pool::PoolBacking;

/// Largest order the pool hands out (4 MiB).
const MAX_CHUNK_ORDER: u32 = (MAX_ORDER - 1) as u32;

/// Why a backend could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolBackendError {
    /// The pool has no range for the host node.
    #[error("host node {0} is not part of the memory pool")]
    NoPoolNode(u32),
    /// There is no memfd for the host node.
    #[error("no memfd for host node {0}")]
    NoMemfd(u32),
    /// The block size is not a power of two of at least one page.
    #[error("block size {0:#x} is not a power of two of at least 4 KiB")]
    BlockSize(u64),
}

/// One pool block behind part of a plugged device block: `(pfn, order)`.
type Chunk = (Pfn, u32);

/// Pool memory behind one virtio-mem device region.
pub struct PoolMemoryBackend {
    pool: PoolBacking,
    host: Arc<HostMemory>,
    host_node: u32,
    node_start_pfn: u64,
    region: Arc<MmapRegion<()>>,
    region_start: u64,
    block_size: u64,
    /// Plugged blocks by their offset in the region, with the pool blocks behind them.
    plugged: BTreeMap<u64, Vec<Chunk>>,
}

impl std::fmt::Debug for PoolMemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMemoryBackend")
            .field("host_node", &self.host_node)
            .field("region_start", &self.region_start)
            .field("block_size", &self.block_size)
            .field("plugged_blocks", &self.plugged.len())
            .finish()
    }
}

impl PoolMemoryBackend {
    /// A backend for the device region at guest address `region_start`, reserved in the VMM
    /// as `region` (inaccessible), filled from `host_node`'s ZONE_MOVABLE of `pool` through
    /// the node's memfd in `host`, in blocks of `block_size` bytes.
    pub fn new(
        pool: PoolBacking,
        host: Arc<HostMemory>,
        host_node: u32,
        region: Arc<MmapRegion<()>>,
        region_start: u64,
        block_size: u64,
    ) -> Result<Self, PoolBackendError> {
        let (node_start_pfn, _) = pool
            .node_pfn_range(host_node)
            .ok_or(PoolBackendError::NoPoolNode(host_node))?;
        if host.memfd(host_node).is_none() {
            return Err(PoolBackendError::NoMemfd(host_node));
        }
        if !block_size.is_power_of_two() || block_size < PAGE_SIZE {
            return Err(PoolBackendError::BlockSize(block_size));
        }
        Ok(PoolMemoryBackend {
            pool,
            host,
            host_node,
            node_start_pfn,
            region,
            region_start,
            block_size,
            plugged: BTreeMap::new(),
        })
    }

    /// Bytes currently plugged.
    pub fn plugged_bytes(&self) -> u64 {
        self.plugged.len() as u64 * self.block_size
    }

    /// The pool blocks behind the plugged memory, `(pfn, order)` (for accounting checks).
    pub fn pool_blocks(&self) -> Vec<(u64, u32)> {
        self.plugged
            .values()
            .flatten()
            .map(|&(p, o)| (p.0, o))
            .collect()
    }

    fn fd(&self) -> RawFd {
        // Checked in new(); HostMemory never drops a memfd.
        self.host
            .memfd(self.host_node)
            .map_or(-1, |f| f.as_raw_fd())
    }

    /// One MOVABLE block of `order` from `host_node`'s ZONE_MOVABLE, or None.
    fn alloc_one(&self, order: u32) -> Option<Pfn> {
        let pool = self.pool.pool();
        let zone = pool.zone(NodeId(self.host_node), ZoneType::Movable)?;
        let (zs, zl) = (zone.zone_start_pfn(), zone.spanned_pages());
        let pfn = pool
            .alloc(AllocRequest {
                order: Order(order),
                migratetype: MigrateType::Movable,
                node: NodeId(self.host_node),
                highest_zone: Some(ZoneType::Movable),
            })
            .ok()?;
        if pfn.0 >= zs && pfn.0 + (1 << order) <= zs + zl {
            Some(pfn)
        } else {
            // The zonelist fell back to another zone or node: not for virtio-mem.
            let _ = pool.free(pfn, Order(order));
            None
        }
    }

    /// Pool blocks for `pages` pages: as few as possible, the largest order first, smaller
    /// ones when the pool has no free block of an order. All or nothing.
    fn alloc_chunks(&self, pages: u64) -> Option<Vec<Chunk>> {
        let mut out = Vec::new();
        let mut left = pages;
        let mut order = MAX_CHUNK_ORDER;
        while left > 0 {
            order = order.min(63 - left.leading_zeros());
            match self.alloc_one(order) {
                Some(p) => {
                    out.push((p, order));
                    left -= 1 << order;
                }
                None if order > 0 => order -= 1,
                None => {
                    self.free_chunks(&out);
                    return None;
                }
            }
        }
        Some(out)
    }

    fn free_chunks(&self, chunks: &[Chunk]) {
        for &(pfn, order) in chunks {
            // Each chunk came from this pool with this order: freeing cannot fail.
            let _ = self.pool.pool().free(pfn, Order(order));
        }
    }

    fn memfd_offset(&self, pfn: Pfn) -> u64 {
        (pfn.0 - self.node_start_pfn) * PAGE_SIZE
    }

    /// Punches the chunks out of the memfd (their pages read as zeros afterwards).
    fn punch(&self, chunks: &[Chunk]) -> std::io::Result<()> {
        for &(pfn, order) in chunks {
            let off = libc::off_t::try_from(self.memfd_offset(pfn))
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            let len = (PAGE_SIZE << order) as libc::off_t;
            // SAFETY: fallocate on our own memfd; no memory of this process is touched.
            let r = unsafe {
                libc::fallocate(
                    self.fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Maps the chunks one after another at region offset `offset`.
    fn map_block(&self, offset: u64, chunks: &[Chunk]) -> std::io::Result<()> {
        let mut at = offset;
        for &(pfn, order) in chunks {
            let len = PAGE_SIZE << order;
            let file_off = libc::off_t::try_from(self.memfd_offset(pfn))
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            self.check_in_region(at, len)?;
            // SAFETY: `at..at+len` lies inside the reservation owned by `self.region`
            // (checked); MAP_FIXED replaces only that part of our own reservation, which no
            // Rust reference points into (guest memory is accessed through raw volatile
            // copies by vm-memory, and the device never touches unplugged blocks).
            let addr = unsafe {
                libc::mmap(
                    self.region.as_ptr().add(at as usize).cast(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    self.fd(),
                    file_off,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `addr` is the mapping just made inside our own reservation.
            unsafe { crate::memory::host::advise_huge_pages(addr, len as usize) };
            at += len;
        }
        Ok(())
    }

    /// Maps `offset..offset+len` of the region inaccessible again (anonymous, PROT_NONE).
    fn unmap_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.check_in_region(offset, len)?;
        // SAFETY: the range lies inside our own reservation (checked); replacing it with an
        // inaccessible anonymous mapping is what the reservation held before plugging.
        let addr = unsafe {
            libc::mmap(
                self.region.as_ptr().add(offset as usize).cast(),
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn check_in_region(&self, offset: u64, len: u64) -> std::io::Result<()> {
        offset
            .checked_add(len)
            .filter(|&e| e <= self.region.size() as u64)
            .map(|_| ())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ERANGE))
    }

    /// Region offsets of the blocks in `addr..addr+size`.
    fn block_offsets(&self, addr: GuestAddress, size: u64) -> Result<Vec<u64>, BackendError> {
        let host_err = |reason: &str| BackendError::Host {
            addr: addr.0,
            size,
            reason: reason.to_string(),
        };
        let off = addr
            .0
            .checked_sub(self.region_start)
            .ok_or_else(|| host_err("below the device region"))?;
        if !off.is_multiple_of(self.block_size) || !size.is_multiple_of(self.block_size) {
            return Err(host_err("not block aligned"));
        }
        self.check_in_region(off, size)
            .map_err(|_| host_err("beyond the device region"))?;
        Ok((0..size / self.block_size)
            .map(|i| off + i * self.block_size)
            .collect())
    }

    /// Unplugs every plugged block (VM teardown): the pool gets all of it back.
    pub fn release_all(&mut self) {
        let plugged = std::mem::take(&mut self.plugged);
        for (off, chunks) in plugged {
            let _ = self.punch(&chunks);
            let _ = self.unmap_range(off, self.block_size);
            self.free_chunks(&chunks);
        }
    }
}

impl MemoryBackend for PoolMemoryBackend {
    fn pool_blocks(&self) -> Vec<(u64, u32)> {
        PoolMemoryBackend::pool_blocks(self)
    }

    fn plug(&mut self, addr: GuestAddress, size: u64) -> Result<(), BackendError> {
        let offsets = self.block_offsets(addr, size)?;
        if offsets.iter().any(|o| self.plugged.contains_key(o)) {
            return Err(BackendError::Host {
                addr: addr.0,
                size,
                reason: "block already plugged".into(),
            });
        }
        let pages = self.block_size / PAGE_SIZE;
        let mut done: Vec<(u64, Vec<Chunk>)> = Vec::new();
        let undo = |this: &Self, done: &[(u64, Vec<Chunk>)]| {
            for (off, chunks) in done {
                let _ = this.punch(chunks);
                let _ = this.unmap_range(*off, this.block_size);
                this.free_chunks(chunks);
            }
        };
        for &off in &offsets {
            let Some(chunks) = self.alloc_chunks(pages) else {
                undo(self, &done);
                return Err(BackendError::OutOfMemory(size));
            };
            // Whatever the pages held before (another VM's boot RAM) must not reach this
            // guest: punching leaves zeros.
            let mapped = self
                .punch(&chunks)
                .and_then(|()| self.map_block(off, &chunks));
            if let Err(e) = mapped {
                let _ = self.unmap_range(off, self.block_size);
                self.free_chunks(&chunks);
                undo(self, &done);
                return Err(BackendError::Host {
                    addr: addr.0,
                    size,
                    reason: e.to_string(),
                });
            }
            done.push((off, chunks));
        }
        self.plugged.extend(done);
        Ok(())
    }

    fn unplug(&mut self, addr: GuestAddress, size: u64) -> Result<(), BackendError> {
        let offsets = self.block_offsets(addr, size)?;
        if offsets.iter().any(|o| !self.plugged.contains_key(o)) {
            return Err(BackendError::Host {
                addr: addr.0,
                size,
                reason: "block not plugged".into(),
            });
        }
        let host_err = |e: std::io::Error| BackendError::Host {
            addr: addr.0,
            size,
            reason: e.to_string(),
        };
        // Inaccessible first; if that fails for one block, the others get their mapping back
        // (nothing was punched yet, so their contents are intact).
        for (i, &off) in offsets.iter().enumerate() {
            if let Err(e) = self.unmap_range(off, self.block_size) {
                for &o in &offsets[..i] {
                    if let Some(chunks) = self.plugged.get(&o) {
                        let _ = self.map_block(o, chunks);
                    }
                }
                return Err(host_err(e));
            }
        }
        for off in offsets {
            if let Some(chunks) = self.plugged.remove(&off) {
                // A failed punch leaves data in the memfd; the next plug of these pages
                // punches before mapping, so no guest ever sees it.
                let _ = self.punch(&chunks);
                self.free_chunks(&chunks);
            }
        }
        Ok(())
    }
}

impl Drop for PoolMemoryBackend {
    fn drop(&mut self) {
        self.release_all();
    }
}
