//! The host side of the balloon, implemented by the VMM: which guest ranges are backed, and
//! giving their host memory back or taking it again.
//!
//! [`HostMappingBackend`] is a complete backend that discards through the VMM's own mapping
//! of guest RAM (`madvise`); a pool-aware VMM backend can wrap it and additionally return pool
//! blocks that became wholly unused.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::pages::BALLOON_PAGE_SIZE;
use crate::devices::virtio::VirtioGuestMemory;

/// A page-aligned range of guest physical memory that lies inside one guest memory region
/// (the device never hands the backend a range that crosses regions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestRange {
    /// Guest physical start.
    pub addr: GuestAddress,
    /// Length in bytes (a multiple of 4 KiB, never 0).
    pub len: u64,
}

impl GuestRange {
    /// `addr..addr+len`.
    pub fn new(addr: u64, len: u64) -> Self {
        GuestRange {
            addr: GuestAddress(addr),
            len,
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr.0 + self.len
    }

    /// How many 4 KiB balloon pages the range holds.
    pub fn pages(&self) -> u64 {
        self.len / BALLOON_PAGE_SIZE
    }
}

/// Why a range is being discarded: it decides what the host may do with its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscardKind {
    /// Inflated into the balloon: the guest does not touch the range until it deflates it
    /// (memtide offers `VIRTIO_BALLOON_F_MUST_TELL_HOST`, and Linux tells first anyway), and
    /// [`BalloonBackend::reclaim`] runs before the deflate is acknowledged. The host may
    /// return wholly unused pool blocks behind such ranges to the pool.
    Inflated,
    /// Reported free by free page reporting: the guest may touch the range again at any time
    /// after the report is acknowledged, without telling. The host may free the pages (a touch
    /// faults in zeroed memory) but must keep the range backed.
    Reported,
}

/// The host side of a balloon operation failed for one range.
#[derive(Debug, thiserror::Error)]
#[error("balloon backend: {op} of {addr:#x}+{len:#x} failed: {reason}")]
pub struct BalloonBackendError {
    /// "discard" or "reclaim".
    pub op: &'static str,
    /// Guest address of the range.
    pub addr: u64,
    /// Length of the range.
    pub len: u64,
    /// What failed.
    pub reason: String,
}

/// What the VMM implements for the balloon. Every call is about one [`GuestRange`];
/// `discard` and `reclaim` are all-or-nothing: on `Err` the range is as before the call, and
/// the device keeps its page accounting unchanged for it (and counts the error).
///
/// The device calls `discard(r, Inflated)` only for pages not currently in the balloon, and
/// `reclaim(r)` only for pages that are (each after a successful `discard(.., Inflated)`):
/// the backend's set of inflated pages is always exactly the device's. `Reported` ranges may
/// overlap anything and may repeat.
pub trait BalloonBackend: Send {
    /// Whether `range` is guest RAM backed by host memory the device may read and discard
    /// (false, e.g., for unplugged virtio-mem blocks). The device has already checked that the
    /// range lies inside one region of guest memory.
    fn is_backed(&self, range: GuestRange) -> bool;

    /// Gives the host memory behind `range` back (see [`DiscardKind`]).
    fn discard(&mut self, range: GuestRange, kind: DiscardKind) -> Result<(), BalloonBackendError>;

    /// The guest takes inflated `range` back (deflate, or a device reset forgetting the
    /// balloon): it must be backed again before this returns. A hostile guest may have
    /// unplugged (virtio-mem) memory under ballooned pages meanwhile: such a range is no
    /// longer guest RAM to back, and the backend should leave it alone and return `Ok`.
    fn reclaim(&mut self, range: GuestRange) -> Result<(), BalloonBackendError>;
}

impl<T: BalloonBackend + ?Sized> BalloonBackend for Box<T> {
    fn is_backed(&self, range: GuestRange) -> bool {
        (**self).is_backed(range)
    }
    fn discard(&mut self, range: GuestRange, kind: DiscardKind) -> Result<(), BalloonBackendError> {
        (**self).discard(range, kind)
    }
    fn reclaim(&mut self, range: GuestRange) -> Result<(), BalloonBackendError> {
        (**self).reclaim(range)
    }
}

/// Which guest ranges a [`HostMappingBackend`] may touch besides being guest memory.
pub type BackedCheck = Box<dyn Fn(GuestRange) -> bool + Send>;

/// A backend that frees the host pages behind a range through the VMM's mapping of guest
/// RAM: `madvise(MADV_REMOVE)` on shared file mappings (memfd: punches the pages out of the
/// file), `MADV_DONTNEED` on private anonymous ones. `reclaim` has nothing to do (the next
/// guest touch faults a zeroed page in).
///
/// A range counts as backed when it is guest memory and the optional check agrees. Guest
/// memory with parts that are not mapped to this VM's memory (unplugged virtio-mem blocks,
/// `PROT_NONE` over pool memory that may belong to someone else) needs that check: a punch
/// there would free memory of another owner.
pub struct HostMappingBackend {
    mem: VirtioGuestMemory,
    check: Option<BackedCheck>,
}

impl std::fmt::Debug for HostMappingBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMappingBackend")
            .field("regions", &self.mem.num_regions())
            .field("check", &self.check.is_some())
            .finish()
    }
}

impl HostMappingBackend {
    /// Discards through the mappings of `mem` (the VMM's guest memory), all of which is
    /// mapped to this VM's memory.
    pub fn new(mem: VirtioGuestMemory) -> Self {
        HostMappingBackend { mem, check: None }
    }

    /// Discards through the mappings of `mem`, only where `check` says the range is backed
    /// by this VM's memory (e.g. plugged virtio-mem blocks).
    pub fn with_check(mem: VirtioGuestMemory, check: BackedCheck) -> Self {
        HostMappingBackend {
            mem,
            check: Some(check),
        }
    }

    fn host_range(&self, range: GuestRange) -> Result<(*mut u8, usize), String> {
        if !self.is_backed(range) {
            return Err("not backed guest memory".into());
        }
        let len = usize::try_from(range.len).map_err(|_| "length overflows usize".to_string())?;
        let region = self
            .mem
            .find_region(range.addr)
            .ok_or_else(|| "not guest memory".to_string())?;
        let offset = range.addr.0 - region.start_addr().0;
        if offset
            .checked_add(range.len)
            .is_none_or(|end| end > region.len())
        {
            return Err("crosses the end of its region".into());
        }
        let host = self
            .mem
            .get_host_address(range.addr)
            .map_err(|e| e.to_string())?;
        Ok((host, len))
    }
}

impl BalloonBackend for HostMappingBackend {
    fn is_backed(&self, range: GuestRange) -> bool {
        usize::try_from(range.len).is_ok_and(|len| self.mem.check_range(range.addr, len))
            && self.check.as_ref().is_none_or(|check| check(range))
    }

    fn discard(
        &mut self,
        range: GuestRange,
        _kind: DiscardKind,
    ) -> Result<(), BalloonBackendError> {
        let err = |reason: String| BalloonBackendError {
            op: "discard",
            addr: range.addr.0,
            len: range.len,
            reason,
        };
        let (host, len) = self.host_range(range).map_err(err)?;
        // SAFETY: `host..host+len` lies inside one mapping of guest memory owned by `self.mem`
        // (checked by `host_range`); dropping its pages changes only the guest-visible
        // contents, which the guest gave up, and never unmaps anything.
        let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_REMOVE) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::EACCES | libc::EOPNOTSUPP)
        ) {
            return Err(err(format!("madvise(MADV_REMOVE): {e}")));
        }
        // Not a shared file mapping: private anonymous memory drops its pages this way.
        // SAFETY: as above.
        let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(err(format!("madvise(MADV_DONTNEED): {e}")));
        }
        Ok(())
    }

    fn reclaim(&mut self, _range: GuestRange) -> Result<(), BalloonBackendError> {
        Ok(())
    }
}
