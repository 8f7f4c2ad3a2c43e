//! The pool: every zone of every node, zonelists, watermarks, and the allocation path
//! (`__alloc_pages` → `get_page_from_freelist` → `rmqueue`).

use super::pageblock::list_index;
use super::pcp::{
    pageset_high_and_batch, pcp_allowed_order, pcp_ext_order, pcp_pindex_of, this_slot,
};
use super::watermark::{
    calculate_min_free_kbytes, setup_per_zone_lowmem_reserve, setup_per_zone_wmarks, Wmark,
    DEFAULT_LOWMEM_RESERVE_RATIO, DEFAULT_WATERMARK_SCALE_FACTOR, MAX_NR_ZONES,
};
use super::zone::{AllocFlags, Zone};
use super::zonelist::{gfp_zone, node_orders, LOCAL_DISTANCE, REMOTE_DISTANCE};
use super::{BuddyError, PageAllocator};
use crate::types::{
    MigrateType, NodeId, Order, Pfn, ZoneDescriptor, ZoneType, MAX_NUMNODES, MAX_ORDER,
    PAGEBLOCK_ORDER, PAGE_SIZE,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Tunables of the pool (the kernel's sysctls and boot facts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// `vm.min_free_kbytes`; `None` derives it as Linux does at boot
    /// (`int_sqrt(lowmem_kbytes * 16)` clamped to `[128, 262144]`).
    pub min_free_kbytes: Option<u64>,
    /// Node distance table (SLIT) indexed by node id; `None`: 10 local, 20 remote.
    pub distance: Option<Vec<Vec<u32>>>,
    /// Per-CPU cache slots per zone; `None`: the machine's available parallelism.
    pub nr_cpus: Option<usize>,
    /// `vm.watermark_scale_factor` (default 10).
    pub watermark_scale_factor: u64,
    /// `vm.lowmem_reserve_ratio` (default 256 256 32 0 0).
    pub lowmem_reserve_ratio: [u64; MAX_NR_ZONES],
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_free_kbytes: None,
            distance: None,
            nr_cpus: None,
            watermark_scale_factor: DEFAULT_WATERMARK_SCALE_FACTOR,
            lowmem_reserve_ratio: DEFAULT_LOWMEM_RESERVE_RATIO,
        }
    }
}

/// One allocation request (the parts of a `gfp_t` the pool understands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocRequest {
    /// Block order, `0..MAX_ORDER`.
    pub order: Order,
    /// UNMOVABLE, MOVABLE or RECLAIMABLE.
    pub migratetype: MigrateType,
    /// The preferred node: its zonelist is walked.
    pub node: NodeId,
    /// Highest zone the request may use; `None` is `gfp_zone()` of the migratetype
    /// (Movable for movable requests, Normal otherwise). Lower it to e.g. DMA32 for a
    /// `GFP_DMA32`-like request. Only movable requests may name ZONE_MOVABLE.
    pub highest_zone: Option<ZoneType>,
}

/// The host memory pool: all zones of all nodes.
///
/// `Pool` is `Send + Sync`; each zone has its own lock and per-CPU caches.
#[derive(Debug)]
pub struct Pool {
    pub(crate) nodes: Vec<NodeId>,
    /// `zones[node_pos * 4 + zone_type.index()]`.
    pub(crate) zones: Vec<Zone>,
    node_pos: Vec<Option<usize>>,
    /// Per node position: zone indices in zonelist order.
    pub(crate) zonelists: Vec<Vec<usize>>,
    /// Zone spans sorted by start, for pfn → zone.
    spans: Vec<(u64, u64, usize)>,
    /// Whether no two spans overlap (no `kernelcore=mirror` interleaving), so that the
    /// first span containing a pfn is its zone.
    spans_disjoint: bool,
    /// Per node id: for each per-CPU migratetype (UNMOVABLE, MOVABLE, RECLAIMABLE) with the
    /// default highest zone (`gfp_zone()`), the preferred zone, i.e. the first zone of the
    /// node's zonelist a request may use (`usize::MAX`: none). Zonelists are built once, so
    /// this never changes; it spares the fast path the zonelist walk. With it, whether the
    /// request gets ALLOC_NOFRAGMENT (`alloc_flags_nofragment()` of that zone, which depends
    /// only on the node count and DMA32's present pages, neither of which hotplug changes).
    fast_zone: Vec<[(usize, bool); 3]>,
    pub(crate) config: PoolConfig,
    pub(crate) distance: Vec<Vec<u32>>,
    min_free_kbytes: AtomicU64,
    pub(crate) nr_slots: usize,
    /// `mem_hotplug_lock`: serialises isolation, offlining and onlining.
    pub(crate) hotplug: Mutex<()>,
}

const NR_ZONE_TYPES: usize = ZoneType::ALL.len();

impl Pool {
    /// Builds the pool from the zones the layout computed. Every node mentioned gets all
    /// four zones (missing ones empty), all present pages are freed to the buddy lists, and
    /// watermarks, lowmem reserves, per-CPU batch/high and zonelists are set up.
    pub fn new(descriptors: &[ZoneDescriptor], config: PoolConfig) -> Result<Pool, BuddyError> {
        check_descriptors(descriptors)?;
        let mut nodes: Vec<NodeId> = descriptors.iter().map(|d| d.node).collect();
        nodes.sort();
        nodes.dedup();
        if nodes.is_empty() {
            return Err(BuddyError::BadDescriptor("no zones given".into()));
        }
        let max_node = nodes.last().map_or(0, |n| n.0 as usize);
        let distance = match &config.distance {
            Some(d) => {
                check_distance(d, &nodes)?;
                d.clone()
            }
            None => (0..=max_node)
                .map(|i| {
                    (0..=max_node)
                        .map(|j| {
                            if i == j {
                                LOCAL_DISTANCE
                            } else {
                                REMOTE_DISTANCE
                            }
                        })
                        .collect()
                })
                .collect(),
        };
        let nr_slots = config
            .nr_cpus
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let mut node_pos = vec![None; MAX_NUMNODES];
        let mut zones = Vec::with_capacity(nodes.len() * NR_ZONE_TYPES);
        for (pos, &node) in nodes.iter().enumerate() {
            node_pos[node.0 as usize] = Some(pos);
            for zt in ZoneType::ALL {
                let desc = descriptors.iter().find(|d| d.node == node && d.zone == zt);
                zones.push(Zone::new(node, zt, desc, nr_slots));
            }
        }
        let orders = node_orders(&nodes, &distance);
        let zonelists: Vec<Vec<usize>> = orders
            .iter()
            .map(|order| {
                let mut list = Vec::new();
                for n in order {
                    let pos = node_pos[n.0 as usize].unwrap_or(0);
                    for zt in ZoneType::ALL.iter().rev() {
                        let idx = pos * NR_ZONE_TYPES + zt.index();
                        if zones[idx].is_managed() {
                            list.push(idx);
                        }
                    }
                }
                list
            })
            .collect();
        let mut spans: Vec<(u64, u64, usize)> = zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.spanned_pages > 0)
            .map(|(i, z)| (z.zone_start_pfn, z.zone_start_pfn + z.spanned_pages, i))
            .collect();
        spans.sort();
        let spans_disjoint = spans.windows(2).all(|w| w[0].1 <= w[1].0);
        let fast_zone = node_pos
            .iter()
            .map(|pos| {
                MigrateType::PCPTYPES.map(|mt| {
                    let hz = gfp_zone(mt).index();
                    pos.and_then(|p| {
                        zonelists[p]
                            .iter()
                            .copied()
                            .find(|&i: &usize| zones[i].zone_type.index() <= hz)
                    })
                    .map_or((usize::MAX, false), |i| {
                        (i, alloc_flags_nofragment(&zones, nodes.len(), i))
                    })
                })
            })
            .collect();
        let pool = Pool {
            nodes,
            zones,
            node_pos,
            zonelists,
            spans,
            spans_disjoint,
            fast_zone,
            config,
            distance,
            min_free_kbytes: AtomicU64::new(0),
            nr_slots,
            hotplug: Mutex::new(()),
        };
        pool.init_per_zone_wmark_min();
        Ok(pool)
    }

    /// `init_per_zone_wmark_min()`: derives `min_free_kbytes` (unless configured), then
    /// watermarks, per-CPU high/batch and lowmem reserves. Called at init and after every
    /// online/offline, as `online_pages()`/`offline_pages()` do.
    pub(crate) fn init_per_zone_wmark_min(&self) {
        let lowmem_kbytes: u64 = self
            .zones
            .iter()
            .filter(|z| z.zone_type != ZoneType::Movable)
            .map(|z| z.managed_pages() * (PAGE_SIZE >> 10))
            .sum();
        let mfk = self
            .config
            .min_free_kbytes
            .unwrap_or_else(|| calculate_min_free_kbytes(lowmem_kbytes));
        self.min_free_kbytes.store(mfk, Ordering::Release);
        let input: Vec<(ZoneType, u64)> = self
            .zones
            .iter()
            .map(|z| (z.zone_type, z.managed_pages()))
            .collect();
        let marks = setup_per_zone_wmarks(mfk, self.config.watermark_scale_factor, &input);
        for (z, m) in self.zones.iter().zip(&marks) {
            for (w, v) in z.wmark.iter().zip(m) {
                w.store(*v, Ordering::Release);
            }
            // zone_pcp_update(zone, 0)
            let (high, batch) =
                pageset_high_and_batch(z.managed_pages(), m[1], self.nr_slots as u64);
            if !z.pcp_disabled.load(Ordering::Acquire) {
                z.set_pcp_high_batch(high, batch);
            }
        }
        for pos in 0..self.nodes.len() {
            let mut managed = [0u64; MAX_NR_ZONES];
            for zt in ZoneType::ALL {
                managed[zt.index()] = self.zones[pos * NR_ZONE_TYPES + zt.index()].managed_pages();
            }
            let r = setup_per_zone_lowmem_reserve(&managed, &self.config.lowmem_reserve_ratio);
            for zt in ZoneType::ALL {
                let z = &self.zones[pos * NR_ZONE_TYPES + zt.index()];
                for (slot, v) in z.lowmem_reserve.iter().zip(r[zt.index()]) {
                    slot.store(v, Ordering::Release);
                }
            }
        }
    }

    /// `min_free_kbytes` in force.
    pub fn min_free_kbytes(&self) -> u64 {
        self.min_free_kbytes.load(Ordering::Acquire)
    }

    /// `node_distance(a, b)` from the distance table.
    pub fn node_distance(&self, a: NodeId, b: NodeId) -> Option<u32> {
        self.distance.get(a.0 as usize)?.get(b.0 as usize).copied()
    }

    /// The nodes of the pool, ascending.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The zone `zt` of `node`.
    pub fn zone(&self, node: NodeId, zt: ZoneType) -> Option<&Zone> {
        let pos = (*self.node_pos.get(node.0 as usize)?)?;
        self.zones.get(pos * NR_ZONE_TYPES + zt.index())
    }

    /// All zones, node by node, DMA to Movable.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// The zonelist of `node` as (node, zone type), in the order allocation walks it.
    pub fn zonelist(&self, node: NodeId) -> Option<Vec<(NodeId, ZoneType)>> {
        let pos = (*self.node_pos.get(node.0 as usize)?)?;
        Some(
            self.zonelists[pos]
                .iter()
                .map(|&i| (self.zones[i].node, self.zones[i].zone_type))
                .collect(),
        )
    }

    /// Bytes of metadata of all zones.
    pub fn metadata_bytes(&self) -> usize {
        self.zones.iter().map(Zone::metadata_bytes).sum()
    }

    /// `drain_all_pages(NULL)`: empties every per-CPU list.
    pub fn drain_all_pages(&self) {
        for z in &self.zones {
            z.drain_pages();
        }
    }

    /// The zone whose pages include `pfn`.
    pub(crate) fn zone_of_pfn(&self, pfn: u64) -> Option<usize> {
        let mut found = None;
        for &(s, e, i) in &self.spans {
            if s > pfn {
                break;
            }
            if pfn < e {
                if found.is_none() {
                    found = Some(i);
                } else if self.zones[i].is_allocated_head(pfn)
                    || self.zones[i]
                        .state
                        .lock()
                        .present_ranges
                        .iter()
                        .any(|&(a, b)| a <= pfn && pfn < b)
                {
                    // Overlapping spans (kernelcore=mirror): the zone that owns the page.
                    found = Some(i);
                }
            }
        }
        found
    }

    /// `alloc_flags_nofragment()`: ALLOC_NOFRAGMENT for a preferred ZONE_NORMAL whose node
    /// has DMA32 (or on a single-node pool).
    fn nofragment(&self, preferred: usize) -> bool {
        alloc_flags_nofragment(&self.zones, self.nodes.len(), preferred)
    }

    /// `__alloc_pages()`: a block of `1 << order` pages.
    ///
    /// Fast path first: a request of a per-CPU order with the default highest zone whose
    /// preferred zone is above its LOW watermark is served from (or refilled into) that
    /// zone's per-CPU list, exactly as the full path's first zone would serve it; anything
    /// else (another zone, the MIN pass, order 10, an invalid request) takes the full path.
    #[inline]
    pub fn alloc(&self, req: AllocRequest) -> Result<Pfn, BuddyError> {
        if let Some(pfn) = self.alloc_fast(&req) {
            return Ok(Pfn(pfn));
        }
        self.alloc_slow(req)
    }

    /// The per-CPU hit of [`Pool::alloc`] (see there).
    #[inline(always)]
    fn alloc_fast(&self, req: &AllocRequest) -> Option<u64> {
        if req.highest_zone.is_some() {
            return None;
        }
        let mt = req.migratetype;
        let order = req.order.0;
        let mti = match mt {
            MigrateType::Unmovable | MigrateType::Movable | MigrateType::Reclaimable => {
                list_index(mt)
            }
            _ => return None,
        };
        let l = pcp_pindex_of(mti, order)?;
        let (zi, nofragment) = self.fast_zone.get(req.node.0 as usize)?[mti];
        let zone = self.zones.get(zi)?;
        let slot = this_slot(self.nr_slots);
        zone.rmqueue_pcplist_fast(slot, l, order, mt, gfp_zone(mt).index(), nofragment)
    }

    /// The full `__alloc_pages()`: request checks, zonelist walk, LOW then MIN pass.
    #[inline(never)]
    fn alloc_slow(&self, req: AllocRequest) -> Result<Pfn, BuddyError> {
        let order = req.order.0;
        if order as usize >= MAX_ORDER {
            return Err(BuddyError::InvalidOrder(order));
        }
        let mt = req.migratetype;
        if !MigrateType::PCPTYPES.contains(&mt) {
            return Err(BuddyError::InvalidMigrateType(mt));
        }
        let highest = req.highest_zone.unwrap_or_else(|| gfp_zone(mt));
        if highest == ZoneType::Movable && mt != MigrateType::Movable {
            return Err(BuddyError::MovableZoneForbidden(mt));
        }
        let pos = self
            .node_pos
            .get(req.node.0 as usize)
            .copied()
            .flatten()
            .ok_or(BuddyError::UnknownNode(req.node))?;
        let zonelist = &self.zonelists[pos];
        let hz = highest.index();
        let preferred = zonelist
            .iter()
            .copied()
            .find(|&i| self.zones[i].zone_type.index() <= hz);
        let Some(preferred) = preferred else {
            return Err(BuddyError::NoMemory {
                order,
                node: req.node,
            });
        };
        let flags = AllocFlags {
            wmark: Wmark::Low,
            nofragment: self.nofragment(preferred),
        };
        if let Some(p) = self.get_page_from_freelist(zonelist, preferred, order, mt, hz, flags) {
            return Ok(Pfn(p));
        }
        // Slow path without reclaim: retry against the MIN watermark.
        let flags = AllocFlags {
            wmark: Wmark::Min,
            nofragment: false,
        };
        if let Some(p) = self.get_page_from_freelist(zonelist, preferred, order, mt, hz, flags) {
            return Ok(Pfn(p));
        }
        // __alloc_pages_direct_reclaim(): when nothing was found, the per-CPU lists are
        // drained (drain_all_pages) and the allocation is retried once.
        if self.zones.iter().any(|z| z.pcp_count() > 0) {
            self.drain_all_pages();
            if let Some(p) = self.get_page_from_freelist(zonelist, preferred, order, mt, hz, flags)
            {
                return Ok(Pfn(p));
            }
        }
        Err(BuddyError::NoMemory {
            order,
            node: req.node,
        })
    }

    /// `get_page_from_freelist()`.
    fn get_page_from_freelist(
        &self,
        zonelist: &[usize],
        preferred: usize,
        order: u32,
        mt: MigrateType,
        highest_zoneidx: usize,
        mut flags: AllocFlags,
    ) -> Option<u64> {
        let local_node = self.zones[preferred].node;
        'retry: loop {
            for &zi in zonelist {
                let zone = &self.zones[zi];
                if zone.zone_type.index() > highest_zoneidx {
                    continue;
                }
                if flags.nofragment && self.nodes.len() > 1 && zone.node != local_node {
                    flags.nofragment = false;
                    continue 'retry;
                }
                let mark = zone.wmark_pages(flags.wmark);
                let reserve = zone.lowmem_reserve[highest_zoneidx].load(Ordering::Relaxed);
                // zone_watermark_fast(): the order-0 check needs no lock.
                if zone.nr_free_pages() <= mark + reserve {
                    continue;
                }
                let pcp_order = pcp_allowed_order(order) || pcp_ext_order(order);
                let pfn = if pcp_order && !zone.pcp_disabled.load(Ordering::Acquire) {
                    let slot = this_slot(self.nr_slots);
                    zone.rmqueue_pcplist(slot, order, mt, flags, mark + reserve)
                } else {
                    zone.rmqueue_buddy(order, mt, flags, (order > 0).then_some(mark + reserve))
                };
                if pfn.is_some() {
                    return pfn;
                }
            }
            if flags.nofragment {
                flags.nofragment = false;
                continue 'retry;
            }
            return None;
        }
    }

    /// `__free_pages()`: returns a block handed out by [`Pool::alloc`].
    ///
    /// Fast path first: a valid free of a per-CPU order outside isolated pageblocks goes to
    /// this slot's list after the same checks as the full path; anything else (an error to
    /// report, an isolated pageblock, disabled per-CPU lists, overlapping zone spans, order
    /// 10) takes the full path.
    #[inline]
    pub fn free(&self, pfn: Pfn, order: Order) -> Result<(), BuddyError> {
        if self.free_fast(pfn.0, order.0) {
            return Ok(());
        }
        self.free_slow(pfn, order)
    }

    /// The per-CPU path of [`Pool::free`] (see there); true if the block was freed.
    #[inline(always)]
    fn free_fast(&self, pfn: u64, order: u32) -> bool {
        // Every order up to pageblock order has a per-CPU list (kernel or extension).
        const _: () = assert!(pcp_ext_order(PAGEBLOCK_ORDER - 1) && pcp_allowed_order(3));
        if order > PAGEBLOCK_ORDER || pfn & ((1 << order) - 1) != 0 || !self.spans_disjoint {
            return false;
        }
        let Some(&(_, _, zi)) = self.spans.iter().find(|&&(s, e, _)| s <= pfn && pfn < e) else {
            return false;
        };
        let Some(zone) = self.zones.get(zi) else {
            return false;
        };
        if zone.alloc_order_fast(pfn) != order {
            return false;
        }
        zone.free_pcp_fast(this_slot(self.nr_slots), pfn, order)
    }

    /// The full `__free_pages()` with every check and its error.
    #[inline(never)]
    fn free_slow(&self, pfn: Pfn, order: Order) -> Result<(), BuddyError> {
        let order = order.0;
        if order as usize >= MAX_ORDER {
            return Err(BuddyError::InvalidOrder(order));
        }
        if pfn.0 & ((1 << order) - 1) != 0 {
            return Err(BuddyError::Misaligned { pfn, order });
        }
        let zi = self.zone_of_pfn(pfn.0).ok_or(BuddyError::UnknownPfn(pfn))?;
        let zone = &self.zones[zi];
        if !zone.is_allocated_head(pfn.0) {
            return Err(BuddyError::NotAllocated(pfn));
        }
        let allocated = zone.alloc_order(pfn.0);
        if allocated != order {
            return Err(BuddyError::WrongOrder {
                pfn,
                allocated,
                given: order,
            });
        }
        // The allocated-head bit is cleared under the lock that takes the block back, so a
        // concurrent validate() never sees a block that is neither allocated nor cached.
        let freed = if pcp_allowed_order(order) || pcp_ext_order(order) {
            zone.free_unref_page(this_slot(self.nr_slots), pfn.0, order)
        } else {
            zone.free_one_page(pfn.0, order)
        };
        if freed {
            Ok(())
        } else {
            Err(BuddyError::NotAllocated(pfn))
        }
    }

    /// Pages not handed out: buddy free pages (isolated ones included) plus per-CPU lists.
    pub fn free_pages_total(&self) -> u64 {
        self.zones
            .iter()
            .map(|z| {
                let st = z.state.lock();
                let buddy: u64 = st
                    .free
                    .area
                    .iter()
                    .enumerate()
                    .map(|(o, a)| a.nr_free << o)
                    .sum();
                drop(st);
                buddy + z.pcp_count()
            })
            .sum()
    }

    /// Managed pages of all zones.
    pub fn managed_pages(&self) -> u64 {
        self.zones.iter().map(Zone::managed_pages).sum()
    }

    /// Free blocks per order summed over all zones (`nr_free`).
    pub fn nr_free_blocks(&self) -> [u64; MAX_ORDER] {
        let mut out = [0; MAX_ORDER];
        for z in &self.zones {
            let st = z.state.lock();
            for (o, a) in st.free.area.iter().enumerate() {
                out[o] += a.nr_free;
            }
        }
        out
    }
}

impl PageAllocator for Pool {
    fn alloc(
        &self,
        order: Order,
        migratetype: MigrateType,
        node: NodeId,
    ) -> Result<Pfn, BuddyError> {
        Pool::alloc(
            self,
            AllocRequest {
                order,
                migratetype,
                node,
                highest_zone: None,
            },
        )
    }
    fn free(&self, pfn: Pfn, order: Order) -> Result<(), BuddyError> {
        Pool::free(self, pfn, order)
    }
    fn managed_pages(&self) -> u64 {
        Pool::managed_pages(self)
    }
    fn free_pages(&self) -> u64 {
        self.free_pages_total()
    }
    fn drain(&self) {
        self.drain_all_pages();
    }
    fn nr_free_blocks(&self) -> [u64; MAX_ORDER] {
        Pool::nr_free_blocks(self)
    }
    fn validate(&self) -> Result<(), BuddyError> {
        Pool::validate(self)
    }
}

/// `alloc_flags_nofragment()` for the preferred zone `zones[preferred]` of a pool with
/// `nr_nodes` nodes.
fn alloc_flags_nofragment(zones: &[Zone], nr_nodes: usize, preferred: usize) -> bool {
    let z = &zones[preferred];
    if z.zone_type != ZoneType::Normal {
        return false;
    }
    let dma32 = &zones[preferred - 1];
    !(nr_nodes > 1 && dma32.present_pages() == 0)
}

fn check_descriptors(descs: &[ZoneDescriptor]) -> Result<(), BuddyError> {
    let bad = |m: String| Err(BuddyError::BadDescriptor(m));
    let mut all: Vec<(u64, u64)> = Vec::new();
    for (i, d) in descs.iter().enumerate() {
        if d.node.0 as usize >= MAX_NUMNODES {
            return bad(format!("zone {i}: node {} >= {MAX_NUMNODES}", d.node));
        }
        if descs[..i]
            .iter()
            .any(|o| o.node == d.node && o.zone == d.zone)
        {
            return bad(format!("zone {} of node {} given twice", d.zone, d.node));
        }
        let (s, e) = (d.zone_start_pfn.0, d.zone_end_pfn().0);
        let mut prev = s;
        for &(a, b) in &d.present_ranges {
            if a.0 >= b.0 || a.0 < prev || b.0 > e {
                return bad(format!(
                    "node {} zone {}: present range {a}-{b} empty, unsorted or outside span {s:#x}-{e:#x}",
                    d.node, d.zone
                ));
            }
            prev = b.0;
            all.push((a.0, b.0));
        }
    }
    all.sort();
    for w in all.windows(2) {
        if w[1].0 < w[0].1 {
            return bad(format!(
                "present ranges {:#x}-{:#x} and {:#x}-{:#x} overlap",
                w[0].0, w[0].1, w[1].0, w[1].1
            ));
        }
    }
    Ok(())
}

fn check_distance(d: &[Vec<u32>], nodes: &[NodeId]) -> Result<(), BuddyError> {
    let need = nodes.last().map_or(0, |n| n.0 as usize + 1);
    if d.len() < need || d.iter().any(|r| r.len() != d.len()) {
        return Err(BuddyError::BadDistance(format!(
            "table must be square and cover nodes 0..{need}, got {} rows",
            d.len()
        )));
    }
    for (i, row) in d.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            if (i == j && v != LOCAL_DISTANCE) || (i != j && v <= LOCAL_DISTANCE) {
                return Err(BuddyError::BadDistance(format!(
                    "distance[{i}][{j}] = {v}: local must be 10, remote above 10"
                )));
            }
        }
    }
    Ok(())
}
