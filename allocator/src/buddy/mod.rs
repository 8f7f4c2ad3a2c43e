//! The buddy allocator of the host memory pool, modelled on Linux 6.1 `mm/page_alloc.c`.
//!
//! The [`Pool`] holds every zone of every node (built from the layout's
//! [`ZoneDescriptor`](crate::types::ZoneDescriptor)s). Each [`Zone`] has
//! `free_area[MAX_ORDER]` with free lists per migratetype (UNMOVABLE, MOVABLE, RECLAIMABLE,
//! and ISOLATE for isolated ranges), pageblocks of order 9 with a migratetype (all MOVABLE
//! at start, as `memmap_init` sets them), and the kernel's algorithms under the kernel's
//! names: `__rmqueue_smallest`, `__rmqueue_fallback` with `fallbacks[]`,
//! `steal_suitable_fallback` / `can_steal_fallback` / `move_freepages_block`, `expand`,
//! `__free_one_page`. Requests walk the preferred node's zonelist (local node first, then
//! the others by distance; zones high to low); ZONE_MOVABLE only serves movable requests
//! (`gfp_zone`). Watermarks and `lowmem_reserve` are computed as `__setup_per_zone_wmarks`
//! and `setup_per_zone_lowmem_reserve` do.
//!
//! # Allocation path and watermarks (what was chosen)
//! A first pass over the zonelist takes a zone only if it stays above its LOW watermark plus
//! `lowmem_reserve[highest_zoneidx]` (`ALLOC_WMARK_LOW`, with `ALLOC_NOFRAGMENT` when the
//! preferred zone is Normal, as the kernel's fast path); a second pass requires only MIN
//! (`ALLOC_WMARK_MIN`, the slow path after waking kswapd). There is no reclaim or
//! compaction; when the second pass fails, the per-CPU lists are drained and the second
//! pass is tried once more (`__alloc_pages_direct_reclaim`'s `drain_all_pages` retry), then
//! [`BuddyError::NoMemory`] is returned. So an allocation never takes a zone to or below
//! `min + lowmem_reserve`.
//!
//! [`Pool::alloc`] and [`Pool::free`] first try a fast path that does exactly what the full
//! path does in its most common case and nothing else: an allocation of a per-CPU order
//! with the default highest zone goes straight to the preferred zone (precomputed per node
//! and migratetype, as the zonelists never change) and its per-CPU list; a free of a
//! per-CPU order outside isolated pageblocks goes straight to the per-CPU list after the
//! same checks. Everything else (errors, other zones, the MIN pass, isolation) takes the
//! full path.
//!
//! # Metadata per page (no `struct page`)
//! | what | bits per 4 KiB page |
//! |---|---|
//! | free-block head bitmaps, one per order (`free_area.rs`) | 2 (1 + 1/2 + 1/4 + ...) |
//! | two-bit tag: free list of a free head, order of an allocated head | 2 |
//! | "allocated head" bit | 1 |
//! | summaries per (order, list) at pageblock granularity, with levels | ≈ 0.09 |
//! | pageblock migratetype (one byte per 512 pages) | ≈ 0.016 |
//! | **total** | **≈ 5.1** |
//!
//! 1 TiB (2^28 pages) therefore needs ≈ 171 MB of metadata (measured by
//! `examples/pool_scale.rs`, and bounded by a unit test), allocated zeroed so only the parts
//! that are written become resident.
//!
//! # Deviations from Linux (deliberate)
//! * Free lists are address ordered (lowest block first) instead of LIFO.
//! * `move_freepages_block` cannot see `PageLRU`; allocated pages of a MOVABLE pageblock
//!   count as movable, those of other pageblocks as not.
//! * No watermark boosting (no kswapd to undo it), no MIGRATE_HIGHATOMIC reserve, no CMA.
//! * Per-CPU caches hold orders 0..=3 and 9 as in Linux 6.1 (`pcp_allowed_order`) and, not
//!   in Linux, orders 4..=8 on *extension lists* with their own refill/flush rule and
//!   limit (see [`pcp`]): the pool's callers allocate and free such blocks constantly, and
//!   Linux would take `zone->lock` and walk the buddy lists for each. A slot may therefore
//!   hold up to `high + 4 * high` pages instead of `high`. A thread keeps one cache slot
//!   (assigned round robin) instead of following the CPU it runs on.
//!   A per-CPU hit of order > 0 checks only the order-0 part of the watermark (the
//!   "a block of this order is free" part is checked when the list is refilled).
//! * A per-CPU refill takes up to `batch` blocks after one watermark check, so a zone can
//!   dip below `min + lowmem_reserve` by less than one batch, as in Linux.
//! * Isolation works on ranges aligned to `MAX_ORDER_NR_PAGES` inside ZONE_MOVABLE; the
//!   zone span never changes (offlining lowers present/managed only).
//!
//! # Locking
//! Each zone's free-block index and counters are under `zone->lock`, each per-CPU cache
//! under its own `pcp->lock`; both are spin locks as in the kernel ([`spinlock`]: a plain
//! store releases them, a waiter yields its CPU after a short spin). Per-CPU paths take the
//! zone lock inside their own lock (refill, flush), never the other way round.

//! # Invariants (checked by [`Pool::validate`], run by the proptests)
//! * No page is handed out twice: allocated blocks, free blocks and per-CPU pages are
//!   pairwise disjoint and cover exactly the present pages of each zone.
//! * free (buddy + per-CPU) + allocated = managed, per zone; each slot's `count` is the
//!   pages on all its lists and `ext_count` those on its extension lists (orders 4..=8).
//! * `nr_free` per order and per migratetype equals a rescan of the free blocks, and
//!   `NR_FREE_PAGES` equals the pages of all free blocks not on the ISOLATE list.
//! * Free blocks in an isolated pageblock are on the ISOLATE list, and ISOLATE blocks lie
//!   in isolated pageblocks: isolated pages are never handed out.
//! * When every block is freed and the per-CPU lists are drained, buddies have merged back
//!   to the block counts the pool started with.

pub mod baseline;
pub mod bitmap;
pub mod free_area;
pub mod isolate;
pub mod pageblock;
pub mod pcp;
pub mod pool;
pub mod report;
pub mod spinlock;
pub mod validate;
pub mod watermark;
pub mod zone;
pub mod zonelist;

#[cfg(test)]
mod tests;

pub use baseline::SimpleBuddy;
pub use free_area::FreeArea;
pub use isolate::OfflineReport;
pub use pool::{AllocRequest, Pool, PoolConfig};
pub use watermark::Wmark;
pub use zone::Zone;

use crate::types::{MigrateType, NodeId, Order, Pfn, MAX_ORDER};

/// Errors of the buddy allocator. Each names the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuddyError {
    /// The order is not below MAX_ORDER.
    #[error("order {0} is not below MAX_ORDER ({MAX_ORDER})")]
    InvalidOrder(u32),
    /// Only UNMOVABLE, MOVABLE and RECLAIMABLE can be requested.
    #[error("migratetype {0:?} cannot be requested (only Unmovable, Movable, Reclaimable)")]
    InvalidMigrateType(MigrateType),
    /// An unmovable or reclaimable request named ZONE_MOVABLE.
    #[error("a {0:?} request may not use ZONE_MOVABLE")]
    MovableZoneForbidden(MigrateType),
    /// The node has no zones in the pool.
    #[error("node {0} is not in the pool")]
    UnknownNode(NodeId),
    /// No zone of the zonelist can serve the request above its MIN watermark.
    #[error("out of memory: no order-{order} block for node {node} above the min watermark")]
    NoMemory {
        /// Requested order.
        order: u32,
        /// Preferred node.
        node: NodeId,
    },
    /// The pfn belongs to no zone.
    #[error("pfn {0} belongs to no zone of the pool")]
    UnknownPfn(Pfn),
    /// The pfn is not aligned to the order.
    #[error("pfn {pfn} is not aligned to order {order}")]
    Misaligned {
        /// The pfn.
        pfn: Pfn,
        /// The order.
        order: u32,
    },
    /// The pfn is not the start of an allocated block (double free or never allocated).
    #[error("pfn {0} is not the start of an allocated block")]
    NotAllocated(Pfn),
    /// The block was allocated with another order.
    #[error("pfn {pfn} was allocated with order {allocated}, freed with order {given}")]
    WrongOrder {
        /// The pfn.
        pfn: Pfn,
        /// Order it was allocated with.
        allocated: u32,
        /// Order given to free.
        given: u32,
    },
    /// The zone descriptors are inconsistent.
    #[error("bad zone descriptors: {0}")]
    BadDescriptor(String),
    /// The node distance table is invalid.
    #[error("bad node distance table: {0}")]
    BadDistance(String),
    /// A range for isolation/offline/online is empty or not aligned.
    #[error("range {start}-{end} must be non-empty and aligned to MAX_ORDER_NR_PAGES (1024)")]
    RangeNotAligned {
        /// Start pfn.
        start: Pfn,
        /// End pfn (exclusive).
        end: Pfn,
    },
    /// The range is not (entirely) in one ZONE_MOVABLE.
    #[error("range {start}-{end} is not inside one ZONE_MOVABLE span")]
    RangeNotMovable {
        /// Start pfn.
        start: Pfn,
        /// End pfn (exclusive).
        end: Pfn,
    },
    /// The range contains pages that are not present (holes or already offline).
    #[error("range {start}-{end} has {missing} pages that are not online")]
    RangeHasHoles {
        /// Start pfn.
        start: Pfn,
        /// End pfn (exclusive).
        end: Pfn,
        /// Pages missing.
        missing: u64,
    },
    /// Onlining: the range overlaps memory that is already online.
    #[error("range {start}-{end} overlaps online memory")]
    RangeOnline {
        /// Start pfn.
        start: Pfn,
        /// End pfn (exclusive).
        end: Pfn,
    },
    /// A pageblock of the range is already isolated (`-EBUSY`).
    #[error("pageblock at {0} is already isolated")]
    AlreadyIsolated(Pfn),
    /// The range is not isolated.
    #[error("range {start}-{end} is not isolated (pageblock at {pfn})")]
    NotIsolated {
        /// Start pfn.
        start: Pfn,
        /// End pfn (exclusive).
        end: Pfn,
        /// First pageblock that is not isolated.
        pfn: Pfn,
    },
    /// The owner's migrate callback failed.
    #[error("migrating block {pfn} (order {order}) failed: {reason}")]
    MigrateFailed {
        /// Block start.
        pfn: Pfn,
        /// Block order.
        order: u32,
        /// The callback's reason.
        reason: String,
    },
    /// After migration, pages of the range are still in use (`test_pages_isolated` failed).
    #[error("range still busy after migration: page {0} is not free")]
    StillBusy(Pfn),
    /// `validate()` found an inconsistency.
    #[error("allocator state corrupt: {0}")]
    Corrupt(String),
}

/// The contract every page allocator of this crate fulfils; the generic test suite runs
/// against each implementation ([`Pool`] and the baseline [`SimpleBuddy`]).
pub trait PageAllocator: Send + Sync {
    /// Allocates a naturally aligned block of `1 << order` pages.
    fn alloc(
        &self,
        order: Order,
        migratetype: MigrateType,
        node: NodeId,
    ) -> Result<Pfn, BuddyError>;
    /// Frees a block returned by `alloc` with the same order.
    fn free(&self, pfn: Pfn, order: Order) -> Result<(), BuddyError>;
    /// Pages under management.
    fn managed_pages(&self) -> u64;
    /// Pages not handed out (free lists plus caches).
    fn free_pages(&self) -> u64;
    /// Returns cached pages to the free lists.
    fn drain(&self);
    /// Free blocks per order.
    fn nr_free_blocks(&self) -> [u64; MAX_ORDER];
    /// Rescans all metadata and rechecks every counter.
    fn validate(&self) -> Result<(), BuddyError>;
}
