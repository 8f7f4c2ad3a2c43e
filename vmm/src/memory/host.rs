//! Host memory behind guest RAM: one memfd per host NUMA node, bound to that node with
//! `mbind(MPOL_BIND)`, so every page the kernel ever allocates for it comes from that node.
//! The pool hands out offsets into these memfds; guest ranges map them.
//!
//! Transparent huge pages: guest memory is reserved with [`HostMemory::reserve`] (placed on a
//! 2 MiB boundary whenever the host lets shmem use huge pages) and every memfd range mapped
//! into it is advised `MADV_HUGEPAGE` ([`advise_huge_pages`]), so with the host's
//! `/sys/kernel/mm/transparent_hugepage/shmem_enabled` at `advise` (or `always`/`within_size`)
//! guest memory faults in 2 MiB at a time, as QEMU's anonymous guest RAM does with THP. With
//! `never` (the kernel's default) it stays 4 KiB pages; both work.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

/// `MPOL_BIND` from include/uapi/linux/mempolicy.h.
const MPOL_BIND: libc::c_int = 2;

/// Errors while creating the per-node memfds.
#[derive(Debug, thiserror::Error)]
pub enum HostMemoryError {
    /// The host has no such NUMA node.
    #[error("host NUMA node {0} does not exist (see /sys/devices/system/node)")]
    NoSuchNode(u32),
    /// memfd_create failed.
    #[error("memfd_create for host node {0}: {1}")]
    MemfdCreate(u32, std::io::Error),
    /// ftruncate of the memfd failed.
    #[error("sizing the memfd of host node {0} to {1} bytes: {2}")]
    Truncate(u32, u64, std::io::Error),
    /// Mapping the memfd to bind it failed.
    #[error("mapping the memfd of host node {0} for mbind: {1}")]
    Mmap(u32, std::io::Error),
    /// mbind failed.
    #[error("mbind of the memfd to host node {0}: {1}")]
    Mbind(u32, std::io::Error),
}

/// Whether host node `node` exists. A kernel without NUMA support has no
/// /sys/devices/system/node; it then has exactly node 0.
pub fn host_node_exists(node: u32) -> bool {
    let base = Path::new("/sys/devices/system/node");
    if !base.exists() {
        return node == 0;
    }
    base.join(format!("node{node}")).exists()
}

/// Memory of host node `node` in bytes (its MemTotal; /proc/meminfo's for node 0 of a kernel
/// without NUMA), rounded down to 4 MiB; `None` if it cannot be read.
pub fn host_node_bytes(node: u32) -> Option<u64> {
    let base = Path::new("/sys/devices/system/node");
    let (path, key) = if base.exists() {
        (base.join(format!("node{node}/meminfo")), "MemTotal:")
    } else if node == 0 {
        (Path::new("/proc/meminfo").to_path_buf(), "MemTotal:")
    } else {
        return None;
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.contains(key))?;
    let mut words = line.split_whitespace().skip_while(|w| *w != key).skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    Some((kib * 1024) & !((4 << 20) - 1))
}

/// The memfds backing guest RAM, one per host NUMA node.
#[derive(Debug)]
pub struct HostMemory {
    memfds: BTreeMap<u32, File>,
}

impl HostMemory {
    /// Creates one memfd of `size` bytes (sparse) per `(host node, size)` and binds its pages
    /// to that node.
    pub fn new(nodes: &[(u32, u64)]) -> Result<Self, HostMemoryError> {
        let mut memfds = BTreeMap::new();
        for &(node, size) in nodes {
            if !host_node_exists(node) {
                return Err(HostMemoryError::NoSuchNode(node));
            }
            let file = create_memfd(node)?;
            file.set_len(size)
                .map_err(|e| HostMemoryError::Truncate(node, size, e))?;
            if size > 0 {
                bind_to_node(&file, node, size)?;
            }
            memfds.insert(node, file);
        }
        Ok(HostMemory { memfds })
    }

    /// The memfd of host node `node`.
    pub fn memfd(&self, node: u32) -> Option<&File> {
        self.memfds.get(&node)
    }

    /// The host nodes that have a memfd.
    pub fn nodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.memfds.keys().copied()
    }

    /// Reserves `size` bytes of inaccessible address space for guest memory that will be
    /// mapped (`MAP_FIXED`) from `node`'s memfd. The reservation is a `PROT_NONE` shared
    /// mapping of that memfd from offset 0 rather than an anonymous one: the kernel places
    /// shared memfd mappings on a 2 MiB boundary whenever shmem may use huge pages
    /// (`shmem_get_unmapped_area`), so memfd ranges mapped at 2 MiB-aligned offsets of the
    /// region can be backed by huge pages. Without a memfd for `node` it is anonymous. The
    /// region owns the reservation and unmaps it when the last reference goes.
    pub fn reserve(
        &self,
        node: u32,
        size: usize,
    ) -> Result<MmapRegion<()>, vm_memory::mmap::MmapRegionError> {
        let shared = self
            .memfd(node)
            .and_then(|f| f.try_clone().ok())
            .map(|f| FileOffset::new(f, 0));
        let flags = if shared.is_some() {
            libc::MAP_SHARED | libc::MAP_NORESERVE
        } else {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
        };
        MmapRegion::build(shared, size, libc::PROT_NONE, flags)
    }
}

/// Asks for transparent huge pages behind `len` bytes at `addr`, a memfd range just mapped
/// (`MADV_HUGEPAGE`; the mapping is a new VMA and does not inherit the advice). Best effort:
/// a kernel without THP refuses it and the pages stay 4 KiB.
///
/// # Safety
/// `addr..addr+len` must be a mapping the caller owns (MADV_HUGEPAGE changes no contents,
/// but it must not reach someone else's memory).
pub unsafe fn advise_huge_pages(addr: *mut libc::c_void, len: usize) {
    // SAFETY: the caller owns the mapping (see above); the advice only sets a VMA flag.
    let _ = unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) };
}

fn create_memfd(node: u32) -> Result<File, HostMemoryError> {
    let name = CString::new(format!("memtide-node{node}")).map_err(|e| {
        HostMemoryError::MemfdCreate(
            node,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })?;
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(HostMemoryError::MemfdCreate(
            node,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Sets the shared memory policy of the memfd's pages to MPOL_BIND(node). For shmem the
/// policy set through a shared mapping is stored with the file (`shmem_set_policy`), so it
/// outlives the temporary mapping and applies to every later mapping of the memfd.
fn bind_to_node(file: &File, node: u32, size: u64) -> Result<(), HostMemoryError> {
    if !Path::new("/sys/devices/system/node").exists() {
        // No NUMA in this kernel: there is only node 0 and nothing to bind.
        return Ok(());
    }
    let len = usize::try_from(size).map_err(|_| {
        HostMemoryError::Mmap(node, std::io::Error::from_raw_os_error(libc::EOVERFLOW))
    })?;
    // SAFETY: a fresh shared mapping of our own memfd at an address the kernel picks; no
    // existing memory is affected.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(HostMemoryError::Mmap(node, std::io::Error::last_os_error()));
    }
    let mut mask = [0 as libc::c_ulong; 16];
    let bits = libc::c_ulong::BITS;
    mask[(node / bits) as usize % 16] |= 1 << (node % bits);
    let maxnode = (mask.len() as libc::c_ulong) * libc::c_ulong::from(bits) + 1;
    // SAFETY: `addr..addr+len` is the mapping created above; `mask` outlives the call and
    // holds `maxnode - 1` bits.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            0u32,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmapping exactly the mapping created above.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(HostMemoryError::Mbind(node, err));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_zero_memfd_is_created_and_bound() {
        let hm = HostMemory::new(&[(0, 8 << 20)]).expect("node 0 exists everywhere");
        let f = hm.memfd(0).expect("memfd of node 0");
        assert_eq!(f.metadata().expect("stat").len(), 8 << 20);
        assert!(hm.memfd(1).is_none());
    }

    #[test]
    fn node_zero_has_memory() {
        let b = host_node_bytes(0).expect("node 0 meminfo");
        assert!(b > 0 && b.is_multiple_of(4 << 20));
        assert_eq!(host_node_bytes(999), None);
    }

    #[test]
    fn missing_node_is_an_error() {
        let err = HostMemory::new(&[(999, 8 << 20)]).expect_err("no host has node 999");
        assert!(matches!(err, HostMemoryError::NoSuchNode(999)));
    }
}
