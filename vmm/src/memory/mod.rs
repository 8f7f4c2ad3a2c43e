//! Guest RAM: each guest RAM range is one reserved (`PROT_NONE`) virtual range of the VMM,
//! registered as one KVM memslot, into which the extents the pool hands out are mapped with
//! `mmap(MAP_FIXED | MAP_SHARED, memfd, offset)`. vm-memory sees each range as one region.

pub mod backing;
pub mod host;
pub mod pool;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout::GuestMemoryMap;
use backing::{BackingAllocator, BackingError, BackingExtent};
use host::HostMemory;

/// Guest memory as the rest of the VMM sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors while building guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The pool could not back the RAM.
    #[error("backing guest RAM: {0}")]
    Backing(#[from] BackingError),
    /// No memfd for the host node the allocator named.
    #[error("no memfd for host node {0}")]
    NoMemfd(u32),
    /// Reserving the virtual range failed.
    #[error("reserving {0} bytes of address space: {1}")]
    Reserve(u64, vm_memory::mmap::MmapRegionError),
    /// Mapping an extent into the reserved range failed.
    #[error("mapping {0:?} at guest address {1:#x}: {2}")]
    MapExtent(BackingExtent, u64, std::io::Error),
    /// vm-memory refused the regions.
    #[error("building the guest memory map: {0}")]
    Regions(String),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("registering memslot {0} at {1:#x}: {2}")]
    Memslot(u32, u64, kvm_ioctls::Error),
}

/// The RAM of one VM and the pool extents behind it.
pub struct GuestRam {
    memory: GuestMemory,
    extents: Vec<BackingExtent>,
    next_slot: u32,
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("extents", &self.extents.len())
            .field("slots", &self.next_slot)
            .finish()
    }
}

impl GuestRam {
    /// Backs every boot RAM range of `map` with boot memory from `allocator` on the range's
    /// host node, maps it and, when `vm` is given, registers one memslot per range.
    pub fn new(
        map: &GuestMemoryMap,
        host: &HostMemory,
        allocator: &mut dyn BackingAllocator,
        vm: Option<&VmFd>,
    ) -> Result<Self, MemoryError> {
        let mut extents = Vec::new();
        let memory = match map_ranges(map, host, allocator, &mut extents) {
            Ok(m) => m,
            Err(e) => {
                allocator.free(&extents);
                return Err(e);
            }
        };
        let mut ram = GuestRam {
            memory,
            extents,
            next_slot: 0,
        };
        if let Some(vm) = vm {
            if let Err(e) = ram.register(vm) {
                allocator.free(&ram.extents);
                return Err(e);
            }
        }
        Ok(ram)
    }

    fn register(&mut self, vm: &VmFd) -> Result<(), MemoryError> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let regions: Vec<(u64, u64, u64)> = self
            .memory
            .iter()
            .map(|r| (r.start_addr().0, r.len(), r.as_ptr() as u64))
            .collect();
        for (start, len, host) in regions {
            let slot = self.next_slot;
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: start,
                memory_size: len,
                userspace_addr: host,
            };
            // SAFETY: the host range is a live mapping owned by `self.memory`, which outlives
            // the VM's use of it: the memslots die with the VM fd, and `Vm` drops the vCPUs and
            // the VM fd before the guest RAM.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(|e| MemoryError::Memslot(slot, start, e))?;
            self.next_slot += 1;
        }
        Ok(())
    }

    /// The guest memory (cheap to clone: regions are reference counted).
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The pool extents behind this RAM (to give back when the VM ends).
    pub fn extents(&self) -> &[BackingExtent] {
        &self.extents
    }

    /// The next free memslot number (for device regions such as virtio-mem).
    pub fn next_slot(&self) -> u32 {
        self.next_slot
    }
}

/// Allocates and maps every boot RAM range of `map`; records what it took in `extents` so
/// the caller can give it back on failure.
fn map_ranges(
    map: &GuestMemoryMap,
    host: &HostMemory,
    allocator: &mut dyn BackingAllocator,
    extents: &mut Vec<BackingExtent>,
) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    for r in &map.ram {
        let got = allocator.alloc_boot_ram(r.host_node, r.size)?;
        extents.extend_from_slice(&got);
        let region = reserve(host, r.host_node, r.size)?;
        let mut off = 0u64;
        for e in &got {
            let memfd = host
                .memfd(e.host_node)
                .ok_or(MemoryError::NoMemfd(e.host_node))?;
            map_extent(&region, off, e, memfd.as_raw_fd())
                .map_err(|err| MemoryError::MapExtent(*e, r.start + off, err))?;
            off += e.len;
        }
        regions.push(
            GuestRegionMmap::with_arc(region, GuestAddress(r.start))
                .ok_or_else(|| MemoryError::Regions(format!("range {r:?} overflows")))?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Regions(e.to_string()))
}

/// Reserves `size` bytes of address space, inaccessible until extents of `node`'s memfd are
/// mapped into it ([`HostMemory::reserve`]: huge-page aligned where the host allows).
fn reserve(host: &HostMemory, node: u32, size: u64) -> Result<Arc<MmapRegion<()>>, MemoryError> {
    let len = usize::try_from(size)
        .map_err(|_| MemoryError::Regions(format!("{size} bytes do not fit in usize")))?;
    host.reserve(node, len)
        .map(Arc::new)
        .map_err(|e| MemoryError::Reserve(size, e))
}

/// Maps `extent` of the memfd `fd` at byte `offset` of the reserved `region`.
fn map_extent(
    region: &MmapRegion<()>,
    offset: u64,
    extent: &BackingExtent,
    fd: i32,
) -> Result<(), std::io::Error> {
    offset
        .checked_add(extent.len)
        .filter(|&e| e <= region.size() as u64)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ERANGE))?;
    let file_off = libc::off_t::try_from(extent.offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: `offset..offset+len` lies inside the reservation owned by `region` (checked
    // above); MAP_FIXED replaces only that part of our own reservation.
    let addr = unsafe {
        libc::mmap(
            region.as_ptr().add(offset as usize).cast(),
            extent.len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE,
            fd,
            file_off,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `addr` is the mapping just made inside our own reservation.
    unsafe { host::advise_huge_pages(addr, extent.len as usize) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NumaNodeConfig;
    use backing::LinearBacking;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_backed_by_the_memfd() {
        let nodes = [NumaNodeConfig {
            guest_node: 0,
            vcpus: vec![0],
            memory: 16 << 20,
            host_node: 0,
            hotplug_size: 0,
        }];
        let map = GuestMemoryMap::new(&nodes);
        let host = HostMemory::new(&[(0, 16 << 20)]).expect("memfd");
        let mut alloc = LinearBacking::new(&[(0, 16 << 20)]);
        let ram = GuestRam::new(&map, &host, &mut alloc, None).expect("ram");
        ram.memory()
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .expect("write");
        let mut buf = [0u8; 4];
        let memfd = host.memfd(0).expect("memfd");
        std::os::unix::fs::FileExt::read_exact_at(memfd, &mut buf, 0x1000).expect("pread");
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.extents().iter().map(|e| e.len).sum::<u64>(), 16 << 20);
    }

    #[test]
    fn exhausted_pool_is_reported() {
        let nodes = [NumaNodeConfig {
            guest_node: 0,
            vcpus: vec![0],
            memory: 32 << 20,
            host_node: 0,
            hotplug_size: 0,
        }];
        let map = GuestMemoryMap::new(&nodes);
        let host = HostMemory::new(&[(0, 16 << 20)]).expect("memfd");
        let mut alloc = LinearBacking::new(&[(0, 16 << 20)]);
        let err = GuestRam::new(&map, &host, &mut alloc, None).expect_err("too big");
        assert!(matches!(
            err,
            MemoryError::Backing(BackingError::Exhausted { .. })
        ));
    }
}
