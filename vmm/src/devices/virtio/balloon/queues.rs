//! Which virtqueue is which, and the guest-controlled addresses the queues carry: turning
//! pfn runs and reported buffers into page-aligned [`GuestRange`]s the backend may act on,
//! and checking that a chain's buffers lie in backed guest RAM before the device reads them.

use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::backend::{BalloonBackend, GuestRange};
use super::pages::BALLOON_PAGE_SIZE;
use super::{
    VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::devices::virtio::VirtioGuestMemory;

/// What a balloon virtqueue carries (virtio 1.2 section 5.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    /// `inflateq`: pfns the guest gives up.
    Inflate,
    /// `deflateq`: pfns the guest takes back.
    Deflate,
    /// `statsq`: the statistics buffer (with `VIRTIO_BALLOON_F_STATS_VQ`).
    Stats,
    /// `free_page_vq` (with `VIRTIO_BALLOON_F_FREE_PAGE_HINT`; memtide never offers it).
    FreePageHint,
    /// `reporting_vq`: free page reports (with `VIRTIO_BALLOON_F_REPORTING`).
    Reporting,
}

/// The queues of a device with `features`, by index. Queues of absent features take no
/// index: the next present queue moves down, as Linux's `virtio_find_vqs` numbers only the
/// queues it names (`drivers/virtio/virtio_balloon.c` `init_vqs` leaves the names of absent
/// features NULL and `vm_find_vqs` skips them). So the reporting queue is index 2 without
/// stats, 3 with.
pub fn queue_roles(features: u64) -> Vec<QueueRole> {
    let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
    for (bit, role) in [
        (VIRTIO_BALLOON_F_STATS_VQ, QueueRole::Stats),
        (VIRTIO_BALLOON_F_FREE_PAGE_HINT, QueueRole::FreePageHint),
        (VIRTIO_BALLOON_F_REPORTING, QueueRole::Reporting),
    ] {
        if features & bit != 0 {
            roles.push(role);
        }
    }
    roles
}

fn align_down(a: u64) -> u64 {
    a & !(BALLOON_PAGE_SIZE - 1)
}

/// The parts of `addr..end` (page aligned) that are guest RAM and `is_backed`, as ranges each inside
/// one guest memory region, ascending; and how many bytes were left out (outside RAM, not
/// backed, or in a page that crosses a region's end).
pub fn backed_ranges(
    addr: u64,
    end: u64,
    mem: &VirtioGuestMemory,
    is_backed: impl Fn(GuestRange) -> bool,
) -> (Vec<GuestRange>, u64) {
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut a = addr;
    while a < end {
        let Some(region) = mem.find_region(GuestAddress(a)) else {
            // A hole: jump to the next region (or the end).
            let next = mem
                .iter()
                .map(|r| align_up_saturating(r.start_addr().0))
                .filter(|&s| s > a)
                .min()
                .map_or(end, |s| s.min(end));
            skipped += next - a;
            a = next;
            continue;
        };
        let region_end = region.start_addr().0.saturating_add(region.len());
        let stop = end.min(align_down(region_end));
        if stop <= a {
            // The page straddles the end of its region.
            let next = a.saturating_add(BALLOON_PAGE_SIZE).min(end);
            skipped += next - a;
            a = next;
            continue;
        }
        let range = GuestRange::new(a, stop - a);
        if is_backed(range) {
            out.push(range);
        } else {
            // Partly backed (e.g. a virtio-mem region with some blocks unplugged): page by
            // page, merging the backed pages of this region only.
            let mut here: Vec<GuestRange> = Vec::new();
            for page in (a..stop).step_by(BALLOON_PAGE_SIZE as usize) {
                let p = GuestRange::new(page, BALLOON_PAGE_SIZE);
                if !is_backed(p) {
                    skipped += BALLOON_PAGE_SIZE;
                    continue;
                }
                match here.last_mut() {
                    Some(last) if last.end() == page => last.len += BALLOON_PAGE_SIZE,
                    _ => here.push(p),
                }
            }
            out.extend(here);
        }
        a = stop;
    }
    (out, skipped)
}

fn align_up_saturating(a: u64) -> u64 {
    a.checked_next_multiple_of(BALLOON_PAGE_SIZE)
        .unwrap_or(u64::MAX)
}

/// The whole 4 KiB pages inside a reported buffer `addr..addr+len`: `(start, end)`, empty if
/// none.
pub fn whole_pages(addr: u64, len: u64) -> (u64, u64) {
    let start = align_up_saturating(addr);
    let end = align_down(addr.saturating_add(len));
    if start >= end {
        (start, start)
    } else {
        (start, end)
    }
}

/// Whether the device may access `addr..addr+len`: guest RAM, backed, all of it.
pub fn buffer_accessible<B: BalloonBackend + ?Sized>(
    addr: u64,
    len: u64,
    mem: &VirtioGuestMemory,
    backend: &B,
) -> bool {
    if len == 0 {
        return true;
    }
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let (start, stop) = (align_down(addr), align_up_saturating(end));
    backed_ranges(start, stop, mem, |r| backend.is_backed(r)).1 == 0
}

/// Whether the chain at `head` reaches an indirect descriptor table that is not accessible
/// (virtio-queue reads such a table while walking the chain, before the device could check
/// it). Walks the direct descriptors, at most the queue size many; the descriptor table itself
/// lies in the rings the device checked at activation.
pub fn indirect_table_inaccessible<B: BalloonBackend + ?Sized>(
    queue: &Queue,
    head: u16,
    mem: &VirtioGuestMemory,
    backend: &B,
) -> bool {
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
            return !buffer_accessible(desc.addr().0, u64::from(desc.len()), mem, backend);
        }
        if !desc.has_next() {
            return false;
        }
        index = desc.next();
    }
    false
}

/// The ring parts of a split queue as `(guest address, length)` (virtio 1.2 section 2.7):
/// descriptor table, available ring, used ring.
pub fn ring_parts(q: &Queue) -> [(u64, u64); 3] {
    let n = u64::from(q.size());
    [
        (q.desc_table(), 16 * n),
        (q.avail_ring(), 6 + 2 * n),
        (q.used_ring(), 6 + 8 * n),
    ]
}
