//! [`PoolMemoryBackend`]: the host side of one virtio-mem device. A plugged block is pool
//! memory from ZONE_MOVABLE of the host node behind the guest node (MOVABLE buddy blocks of
//! the block's order, or several smaller ones when no such block is free), mapped
//! `MAP_FIXED | MAP_SHARED` from that node's memfd into the device region. Unplug maps the
//! blocks inaccessible again, punches the pages out of the memfd and frees them to the pool.
//!
//! Host syscalls are the cost of a request (every one is expensive under an emulated host), so
//! a request is handled as a whole rather than block by block: plug allocates the pool blocks
//! of every device block first, then punches maximal memfd-contiguous stretches
//! ([`coalesce_pfns`]) and maps (and advises) maximal stretches contiguous both in the region
//! and in the memfd ([`coalesce_runs`]) with one syscall each; unplug makes the request's range
//! inaccessible with one `mmap` and punches coalesced stretches. With a pool that hands out
//! adjacent blocks, a 128 MiB request is three syscalls to plug and two to unplug.

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

/// A stretch of the region backed by one stretch of the memfd: mapped with one `mmap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Offset of the stretch in the device region, bytes.
    pub region_off: u64,
    /// First pool page behind it.
    pub pfn: u64,
    /// Length in pages.
    pub pages: u64,
}

/// Merges chunks `(region offset, pfn, order)` (disjoint in the region and in the pool) into
/// maximal [`Run`]s: a chunk joins the run before it (by region offset) when it starts where
/// that run ends both in the region and in the pool. Every chunk is in exactly one run; runs
/// come in region order.
pub fn coalesce_runs(chunks: &[(u64, u64, u32)]) -> Vec<Run> {
    let mut sorted = chunks.to_vec();
    sorted.sort_unstable_by_key(|&(off, _, _)| off);
    let mut runs: Vec<Run> = Vec::new();
    for (region_off, pfn, order) in sorted {
        let pages = 1u64 << order;
        match runs.last_mut() {
            Some(r)
                if r.pages
                    .checked_mul(PAGE_SIZE)
                    .and_then(|len| r.region_off.checked_add(len))
                    == Some(region_off)
                    && r.pfn.checked_add(r.pages) == Some(pfn) =>
            {
                r.pages += pages;
            }
            _ => runs.push(Run {
                region_off,
                pfn,
                pages,
            }),
        }
    }
    runs
}

/// Merges pool blocks `(pfn, order)` (disjoint) into maximal contiguous page ranges
/// `(first pfn, pages)`, in pfn order: what one `fallocate` can punch.
pub fn coalesce_pfns(chunks: impl IntoIterator<Item = (u64, u32)>) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u32)> = chunks.into_iter().collect();
    sorted.sort_unstable_by_key(|&(pfn, _)| pfn);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (pfn, order) in sorted {
        let pages = 1u64 << order;
        match ranges.last_mut() {
            Some((start, len)) if start.checked_add(*len) == Some(pfn) => *len += pages,
            _ => ranges.push((pfn, pages)),
        }
    }
    ranges
}

/// Region offsets `offsets` (ascending, multiples of `block_size`) as maximal contiguous
/// ranges `(offset, len)`.
fn contiguous_ranges(offsets: impl IntoIterator<Item = u64>, block_size: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for off in offsets {
        match ranges.last_mut() {
            Some((start, len)) if *start + *len == off => *len += block_size,
            _ => ranges.push((off, block_size)),
        }
    }
    ranges
}

/// Pool memory behind one virtio-mem device region.
pub struct PoolMemoryBackend {
    pool: PoolBacking,
    host: Arc<HostMemory>,
    host_node: u32,
    node_start_pfn: u64,
    region: Arc<MmapRegion<()>>,
    region_start: u64,
    block_size: u64,
    /// Plugged blocks by their offset in the region, with the pool blocks behind them (in
    /// the order they are mapped).
    plugged: BTreeMap<u64, Vec<Chunk>>,
    /// Fault injection and syscall counts for the tests.
    #[cfg(test)]
    hooks: test_hooks::Hooks,
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
            #[cfg(test)]
            hooks: test_hooks::Hooks::default(),
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

    /// Punches the chunks out of the memfd (their pages read as zeros afterwards), one
    /// `fallocate` per memfd-contiguous stretch.
    fn punch<'a>(&self, chunks: impl IntoIterator<Item = &'a Chunk>) -> std::io::Result<()> {
        for (pfn, pages) in coalesce_pfns(chunks.into_iter().map(|&(p, o)| (p.0, o))) {
            let off = libc::off_t::try_from(self.memfd_offset(Pfn(pfn)))
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            let len = libc::off_t::try_from(pages * PAGE_SIZE)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            #[cfg(test)]
            self.hooks.before_punch();
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

    /// The chunks of `blocks` (region offset, chunks in mapping order) as
    /// `(region offset, pfn, order)`.
    fn placements<'a>(
        &self,
        blocks: impl IntoIterator<Item = (u64, &'a [Chunk])>,
    ) -> Vec<(u64, u64, u32)> {
        let mut out = Vec::new();
        for (off, chunks) in blocks {
            let mut at = off;
            for &(pfn, order) in chunks {
                out.push((at, pfn.0, order));
                at += PAGE_SIZE << order;
            }
        }
        out
    }

    /// Maps every chunk of `blocks` at its place in the region, one `mmap` (and one
    /// `madvise`) per [`Run`]. On error some runs may be mapped: the caller maps the blocks
    /// inaccessible again.
    fn map_blocks<'a>(
        &self,
        blocks: impl IntoIterator<Item = (u64, &'a [Chunk])>,
    ) -> std::io::Result<()> {
        for run in coalesce_runs(&self.placements(blocks)) {
            let len = run.pages * PAGE_SIZE;
            let file_off = libc::off_t::try_from(self.memfd_offset(Pfn(run.pfn)))
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            let addr = self.mmap_fixed(
                run.region_off,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                self.fd(),
                file_off,
            )?;
            // SAFETY: `addr` is the mapping just made inside our own reservation.
            unsafe { crate::memory::host::advise_huge_pages(addr, len as usize) };
        }
        Ok(())
    }

    /// Maps `offset..offset+len` of the region inaccessible again (anonymous, PROT_NONE).
    fn unmap_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.mmap_fixed(
            offset,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
        .map(|_| ())
    }

    /// `mmap(MAP_FIXED)` of `len` bytes at region offset `offset` with `prot` and `flags`.
    fn mmap_fixed(
        &self,
        offset: u64,
        len: u64,
        prot: libc::c_int,
        flags: libc::c_int,
        fd: RawFd,
        file_off: libc::off_t,
    ) -> std::io::Result<*mut libc::c_void> {
        self.check_in_region(offset, len)?;
        #[cfg(test)]
        self.hooks.before_mmap()?;
        // SAFETY: `offset..offset+len` lies inside the reservation owned by `self.region`
        // (checked); MAP_FIXED replaces only that part of our own reservation, which no Rust
        // reference points into (guest memory is accessed through raw volatile copies by
        // vm-memory, and the device never touches blocks it is plugging or unplugging). An
        // inaccessible anonymous mapping is what the reservation holds for unplugged blocks.
        let addr = unsafe {
            libc::mmap(
                self.region.as_ptr().add(offset as usize).cast(),
                len as usize,
                prot,
                flags | libc::MAP_FIXED,
                fd,
                file_off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(addr)
    }

    /// Fault injection and syscall counts (tests only).
    #[cfg(test)]
    pub(super) fn hooks(&self) -> &test_hooks::Hooks {
        &self.hooks
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
        for (off, len) in contiguous_ranges(plugged.keys().copied(), self.block_size) {
            let _ = self.unmap_range(off, len);
        }
        let _ = self.punch(plugged.values().flatten());
        for chunks in plugged.values() {
            self.free_chunks(chunks);
        }
    }

    /// Gives back what a failed plug took: maps `off..off+size` inaccessible again, punches
    /// (the guest may have written to what was mapped) and frees the pool blocks.
    fn undo_plug(&self, off: u64, size: u64, blocks: &[(u64, Vec<Chunk>)]) {
        let _ = self.unmap_range(off, size);
        let _ = self.punch(blocks.iter().flat_map(|(_, c)| c));
        for (_, chunks) in blocks {
            self.free_chunks(chunks);
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
        let Some(&first) = offsets.first() else {
            return Ok(());
        };
        // Pool blocks for every device block first, all or nothing.
        let pages = self.block_size / PAGE_SIZE;
        let mut lists: Vec<Vec<Chunk>> = Vec::with_capacity(offsets.len());
        for _ in &offsets {
            let Some(chunks) = self.alloc_chunks(pages) else {
                for chunks in &lists {
                    self.free_chunks(chunks);
                }
                return Err(BackendError::OutOfMemory(size));
            };
            lists.push(chunks);
        }
        // Every list fills any block of the request: in pool order, adjacent pool blocks land
        // in adjacent device blocks and map with one mmap.
        lists.sort_unstable_by_key(|chunks| chunks.first().map(|&(p, _)| p.0));
        let blocks: Vec<(u64, Vec<Chunk>)> = offsets.into_iter().zip(lists).collect();
        // Whatever the pages held before (another VM's boot RAM) must not reach this guest:
        // punching leaves zeros.
        let mapped = self
            .punch(blocks.iter().flat_map(|(_, c)| c))
            .and_then(|()| self.map_blocks(blocks.iter().map(|(o, c)| (*o, c.as_slice()))));
        if let Err(e) = mapped {
            self.undo_plug(first, size, &blocks);
            return Err(BackendError::Host {
                addr: addr.0,
                size,
                reason: e.to_string(),
            });
        }
        self.plugged.extend(blocks);
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
        let Some(&first) = offsets.first() else {
            return Ok(());
        };
        // Inaccessible first, the whole request with one mmap; if that fails, every block
        // gets its mapping back (nothing was punched yet, so the contents are intact).
        if let Err(e) = self.unmap_range(first, size) {
            let _ = self.map_blocks(
                offsets
                    .iter()
                    .filter_map(|o| self.plugged.get(o).map(|c| (*o, c.as_slice()))),
            );
            return Err(BackendError::Host {
                addr: addr.0,
                size,
                reason: e.to_string(),
            });
        }
        let blocks: Vec<Vec<Chunk>> = offsets
            .iter()
            .filter_map(|o| self.plugged.remove(o))
            .collect();
        // A failed punch leaves data in the memfd; the next plug of these pages punches
        // before mapping, so no guest ever sees it.
        let _ = self.punch(blocks.iter().flatten());
        for chunks in &blocks {
            self.free_chunks(chunks);
        }
        Ok(())
    }
}

impl Drop for PoolMemoryBackend {
    fn drop(&mut self) {
        self.release_all();
    }
}

#[cfg(test)]
pub(super) mod test_hooks {
    //! Fault injection and syscall counts for [`super::PoolMemoryBackend`]'s tests.

    use std::sync::atomic::{AtomicU64, Ordering};

    /// What the backend's `mmap` and `fallocate` calls see in tests.
    #[derive(Debug)]
    pub struct Hooks {
        /// `mmap`s to let through before one fails (`u64::MAX`: none).
        fail_mmap_after: AtomicU64,
        mmaps: AtomicU64,
        punches: AtomicU64,
    }

    impl Default for Hooks {
        fn default() -> Self {
            Hooks {
                fail_mmap_after: AtomicU64::new(u64::MAX),
                mmaps: AtomicU64::new(0),
                punches: AtomicU64::new(0),
            }
        }
    }

    impl Hooks {
        /// Lets `n` more `mmap`s through, then fails the next one (once) with ENOMEM.
        pub fn fail_mmap_after(&self, n: u64) {
            self.fail_mmap_after.store(n, Ordering::Relaxed);
        }

        /// `(mmap, fallocate)` calls so far; resets the counts.
        pub fn take_counts(&self) -> (u64, u64) {
            (
                self.mmaps.swap(0, Ordering::Relaxed),
                self.punches.swap(0, Ordering::Relaxed),
            )
        }

        pub(super) fn before_mmap(&self) -> std::io::Result<()> {
            let left = self.fail_mmap_after.load(Ordering::Relaxed);
            if left != u64::MAX {
                let next = left.checked_sub(1).unwrap_or(u64::MAX);
                self.fail_mmap_after.store(next, Ordering::Relaxed);
                if left == 0 {
                    return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
                }
            }
            self.mmaps.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        pub(super) fn before_punch(&self) {
            self.punches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: u64 = PAGE_SIZE;

    fn run(region_off: u64, pfn: u64, pages: u64) -> Run {
        Run {
            region_off,
            pfn,
            pages,
        }
    }

    #[test]
    fn runs_join_chunks_contiguous_in_region_and_pool() {
        // Adjacent in both: one run, whatever the input order.
        assert_eq!(
            coalesce_runs(&[(512 * P, 1536, 9), (0, 1024, 9)]),
            vec![run(0, 1024, 1024)]
        );
        // Adjacent in the region only, in the pool only, or pool order reversed: two runs.
        assert_eq!(
            coalesce_runs(&[(0, 1024, 9), (512 * P, 2048, 9)]),
            vec![run(0, 1024, 512), run(512 * P, 2048, 512)]
        );
        assert_eq!(
            coalesce_runs(&[(0, 1024, 9), (1024 * P, 1536, 9)]),
            vec![run(0, 1024, 512), run(1024 * P, 1536, 512)]
        );
        assert_eq!(
            coalesce_runs(&[(0, 1536, 9), (512 * P, 1024, 9)]),
            vec![run(0, 1536, 512), run(512 * P, 1024, 512)]
        );
        // Mixed orders (a block filled from smaller pool blocks) join too.
        assert_eq!(
            coalesce_runs(&[(0, 8, 3), (8 * P, 16, 4), (24 * P, 32, 0), (25 * P, 40, 0)]),
            vec![run(0, 8, 25), run(25 * P, 40, 1)]
        );
        assert_eq!(coalesce_runs(&[]), vec![]);
    }

    #[test]
    fn punch_ranges_join_pool_neighbours_in_any_order() {
        assert_eq!(
            coalesce_pfns([(1536, 9), (0, 9), (1024, 9), (2048, 0), (2050, 1)]),
            vec![(0, 512), (1024, 1025), (2050, 2)]
        );
        assert_eq!(coalesce_pfns([]), vec![]);
    }

    #[test]
    fn plugged_offsets_group_into_contiguous_ranges() {
        let b = 2 << 20;
        assert_eq!(
            contiguous_ranges([0, b, 2 * b, 5 * b, 7 * b, 8 * b], b),
            vec![(0, 3 * b), (5 * b, b), (7 * b, 2 * b)]
        );
        assert_eq!(contiguous_ranges([], b), vec![]);
    }

    /// Chunks disjoint in the region and in the pool: orders, gaps before each chunk in the
    /// region and in the pool, and the order in which they are laid out in the pool.
    fn chunks() -> impl Strategy<Value = Vec<(u64, u64, u32)>> {
        prop::collection::vec((0u32..=10, 0u64..3, 0u64..3), 0..40)
            .prop_flat_map(|spec| {
                let n = spec.len();
                let identity: Vec<usize> = (0..n).collect();
                (
                    Just(spec),
                    prop_oneof![Just(identity.clone()), Just(identity).prop_shuffle()],
                )
            })
            .prop_map(|(spec, pool_order)| {
                let mut out = vec![(0, 0, 0); spec.len()];
                let mut off = 0;
                for (i, &(order, gap, _)) in spec.iter().enumerate() {
                    off += gap * P;
                    out[i] = (off, 0, order);
                    off += P << order;
                }
                let mut pfn = 0;
                for &i in &pool_order {
                    let (order, _, pool_gap) = spec[i];
                    pfn += pool_gap;
                    out[i].1 = pfn;
                    pfn += 1 << order;
                }
                out
            })
    }

    proptest! {
        #[test]
        fn runs_cover_every_chunk_once_and_are_maximal(
            chunks in chunks(),
            seed in any::<u64>(),
        ) {
            let runs = coalesce_runs(&chunks);
            let pages: u64 = chunks.iter().map(|&(_, _, o)| 1u64 << o).sum();
            prop_assert_eq!(runs.iter().map(|r| r.pages).sum::<u64>(), pages);
            for &(off, pfn, order) in &chunks {
                let holding: Vec<_> = runs
                    .iter()
                    .filter(|r| r.region_off <= off && off < r.region_off + r.pages * P)
                    .collect();
                prop_assert_eq!(holding.len(), 1);
                let r = holding[0];
                let at = (off - r.region_off) / P;
                prop_assert!(at + (1 << order) <= r.pages, "chunk spills out of its run");
                prop_assert_eq!(r.pfn + at, pfn, "region and pool offsets agree");
            }
            for w in runs.windows(2) {
                let end = w[0].region_off + w[0].pages * P;
                prop_assert!(end <= w[1].region_off, "runs in region order, disjoint");
                prop_assert!(
                    end != w[1].region_off || w[0].pfn + w[0].pages != w[1].pfn,
                    "two runs that should be one: {:?}", w
                );
            }
            // The input order does not matter.
            let mut shuffled = chunks.clone();
            let n = shuffled.len();
            for i in 0..n {
                shuffled.swap(i, (seed.rotate_left(i as u32) as usize) % n);
            }
            prop_assert_eq!(coalesce_runs(&shuffled), runs);
        }

        #[test]
        fn punch_ranges_cover_every_pool_block_once_and_are_maximal(chunks in chunks()) {
            let ranges = coalesce_pfns(chunks.iter().map(|&(_, p, o)| (p, o)));
            let pages: u64 = chunks.iter().map(|&(_, _, o)| 1u64 << o).sum();
            prop_assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), pages);
            for &(_, pfn, order) in &chunks {
                prop_assert_eq!(
                    ranges
                        .iter()
                        .filter(|&&(s, l)| s <= pfn && pfn + (1 << order) <= s + l)
                        .count(),
                    1
                );
            }
            for w in ranges.windows(2) {
                prop_assert!(w[0].0 + w[0].1 < w[1].0, "sorted, disjoint, maximal: {:?}", w);
            }
        }
    }
}
