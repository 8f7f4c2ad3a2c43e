//! The virtio-balloon device: configuration space, the balloon's page accounting, and the
//! handling of the inflate, deflate, stats and free page reporting queues.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader};

use super::backend::{BalloonBackend, DiscardKind, GuestRange};
use super::metrics::{BalloonCounters, BalloonInfo};
use super::pages::{coalesce, sort_dedup, PageSet, PfnRun, BALLOON_PAGE_SIZE, BALLOON_PFN_SHIFT};
use super::queues::{
    backed_ranges, buffer_accessible, indirect_table_inaccessible, queue_roles, ring_parts,
    whole_pages, QueueRole,
};
use super::stats::{BalloonStats, MAX_STATS_BYTES};
use super::target::{pages_for_balloon_size, TargetError};
use super::{
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_PAGE_POISON,
    VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::devices::virtio::{
    ActivateError, FeatureError, VirtioDevice, VirtioGuestMemory, VirtioInterrupt,
    FEATURE_VERSION_1,
};

/// Maximum size of every balloon queue (Linux needs one buffer per queue at a time; the free
/// page reporting queue takes up to 32 descriptors per report).
pub const QUEUE_SIZE: u16 = 256;
/// Size of the configuration space (`struct virtio_balloon_config`): `num_pages`, `actual`,
/// `free_page_hint_cmd_id` (always 0: free page hinting is not offered) and `poison_val`
/// (written by the driver when `VIRTIO_BALLOON_F_PAGE_POISON` is offered, i.e. with free page
/// reporting).
pub const CONFIG_SIZE: usize = 16;
/// Pfns read from an inflate/deflate buffer per step (Linux sends at most 256 per buffer).
const PFN_BATCH: usize = 1024;
/// The most pfns one inflate/deflate buffer may carry (1 GiB of pages; Linux sends 256): the
/// rest of a larger buffer is ignored, so a hostile chain cannot stall the event loop.
pub const MAX_PFNS_PER_BUFFER: usize = 1 << 18;
/// The most bytes one free page report may cover (Linux reports at most 32 blocks of at most
/// 4 MiB, 128 MiB): the rest of a larger report is ignored.
pub const MAX_REPORT_BYTES: u64 = 1 << 30;

/// What the balloon offers and where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioBalloonConfig {
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest may deflate under memory pressure
    /// (and then does not count ballooned pages out of MemTotal).
    pub deflate_on_oom: bool,
    /// Offer `VIRTIO_BALLOON_F_REPORTING` (free page reporting).
    pub free_page_reporting: bool,
    /// Offer `VIRTIO_BALLOON_F_STATS_VQ` and ask for statistics this often (the VMM arms the
    /// timer, see [`super::event_handler::StatsTimer`]). `None`: no stats queue.
    pub stats_interval: Option<Duration>,
    /// The initial `num_pages` (balloon size in 4 KiB pages), usually 0.
    pub target_pages: u32,
}

/// A virtio-balloon device.
pub struct VirtioBalloon<B: BalloonBackend> {
    config: VirtioBalloonConfig,
    queue_sizes: Vec<u16>,
    num_pages: u32,
    actual: u32,
    poison_val: u32,
    backend: B,
    interrupt: Arc<VirtioInterrupt>,
    acked_features: u64,
    roles: Vec<QueueRole>,
    active: bool,
    ballooned: PageSet,
    counters: BalloonCounters,
    stats: Option<BalloonStats>,
    /// The head of the statistics buffer the device holds (returned to ask for new values).
    stats_buffer: Option<u16>,
    stats_request_pending: bool,
    /// Guest memory as the transport last passed it (for reclaiming on a reset, which comes
    /// without it).
    mem: Option<VirtioGuestMemory>,
}

impl<B: BalloonBackend> std::fmt::Debug for VirtioBalloon<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBalloon")
            .field("config", &self.config)
            .field("num_pages", &self.num_pages)
            .field("actual", &self.actual)
            .field("ballooned_pages", &self.ballooned.count())
            .field("acked_features", &self.acked_features)
            .field("active", &self.active)
            .finish()
    }
}

impl<B: BalloonBackend> VirtioBalloon<B> {
    /// A device with an empty balloon. `interrupt` is the `Arc` later given to the transport;
    /// the device announces target changes through it.
    pub fn new(config: VirtioBalloonConfig, backend: B, interrupt: Arc<VirtioInterrupt>) -> Self {
        let mut device = VirtioBalloon {
            config,
            queue_sizes: Vec::new(),
            num_pages: config.target_pages,
            actual: 0,
            poison_val: 0,
            backend,
            interrupt,
            acked_features: 0,
            roles: Vec::new(),
            active: false,
            ballooned: PageSet::new(),
            counters: BalloonCounters::default(),
            stats: None,
            stats_buffer: None,
            stats_request_pending: false,
            mem: None,
        };
        device.queue_sizes = vec![QUEUE_SIZE; queue_roles(device.offered_features()).len()];
        device
    }

    fn offered_features(&self) -> u64 {
        let mut f = FEATURE_VERSION_1 | VIRTIO_BALLOON_F_MUST_TELL_HOST;
        if self.config.stats_interval.is_some() {
            f |= VIRTIO_BALLOON_F_STATS_VQ;
        }
        if self.config.deflate_on_oom {
            f |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if self.config.free_page_reporting {
            // PAGE_POISON comes with reporting: Linux drops reporting when the guest poisons
            // or zeroes free pages (page_poison=1, init_on_free=1) and the device cannot be
            // told the poison value.
            f |= VIRTIO_BALLOON_F_REPORTING | VIRTIO_BALLOON_F_PAGE_POISON;
        }
        f
    }

    /// The configuration the device was built with.
    pub fn config(&self) -> VirtioBalloonConfig {
        self.config
    }

    /// Asks the guest for a balloon of `pages` 4 KiB pages (`num_pages`) and raises a
    /// configuration-change interrupt.
    pub fn set_target_pages(&mut self, pages: u32) {
        self.num_pages = pages;
        self.interrupt.config_changed();
    }

    /// Asks the guest for a balloon of `balloon_size` bytes (see
    /// [`super::target::balloon_size_for_guest_size`] to start from the size the guest should
    /// keep). Nothing changes on error.
    pub fn set_balloon_size(&mut self, balloon_size: u64) -> Result<(), TargetError> {
        let pages = pages_for_balloon_size(balloon_size)?;
        self.set_target_pages(pages);
        Ok(())
    }

    /// `num_pages`: the balloon size the host asks for, in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.num_pages
    }

    /// `actual`: the balloon size the driver reports, in 4 KiB pages.
    pub fn actual_pages(&self) -> u32 {
        self.actual
    }

    /// `poison_val`: the value the guest fills free pages with (0: none, or zeroes).
    pub fn poison_val(&self) -> u32 {
        self.poison_val
    }

    /// The pages the device holds in the balloon (inflated and discarded, not deflated);
    /// equals `actual` for a well-behaved driver once it has written it.
    pub fn ballooned_pages(&self) -> u64 {
        self.ballooned.count()
    }

    /// [`VirtioBalloon::ballooned_pages`] in bytes.
    pub fn ballooned_bytes(&self) -> u64 {
        self.ballooned.count() * BALLOON_PAGE_SIZE
    }

    /// The ballooned pages as maximal runs, ascending.
    pub fn ballooned_runs(&self) -> Vec<PfnRun> {
        self.ballooned.runs()
    }

    /// The guest's latest statistics, if it sent any.
    pub fn stats(&self) -> Option<&BalloonStats> {
        self.stats.as_ref()
    }

    /// Cumulative counters.
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// A snapshot of everything the control plane shows.
    pub fn info(&self) -> BalloonInfo {
        BalloonInfo {
            config: self.config,
            active: self.active,
            deflate_on_oom: self.acked_features & VIRTIO_BALLOON_F_DEFLATE_ON_OOM != 0,
            free_page_reporting: self.acked_features & VIRTIO_BALLOON_F_REPORTING != 0,
            target_pages: self.num_pages,
            actual_pages: self.actual,
            ballooned_pages: self.ballooned.count(),
            counters: self.counters,
            stats: self.stats.clone(),
        }
    }

    /// Whether the driver is running the device.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The features the driver accepted (0 before activation).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The index of queue `role` in the running device (queue indexes depend on the accepted
    /// features, see [`queue_roles`]).
    pub fn queue_index(&self, role: QueueRole) -> Option<usize> {
        self.roles.iter().position(|&r| r == role)
    }

    /// Asks the driver for fresh statistics: marks the held statistics buffer for return and
    /// gives the stats queue's index, which the caller then notifies
    /// (`MmioTransport::notify`): the device first takes in any buffer waiting in the queue,
    /// then returns the buffer it holds, and the transport interrupts the driver. `None` when
    /// the device is not running with a stats queue.
    ///
    /// A buffer may wait in the queue unseen: Linux primes the stats queue and notifies it
    /// before it sets DRIVER_OK (`init_vqs` runs before `virtio_device_ready`), and the
    /// transport ignores notifications before DRIVER_OK. The first request picks that buffer
    /// up (its values are the driver's initial ones) and returns it at once.
    pub fn request_stats(&mut self) -> Option<usize> {
        if !self.active {
            return None;
        }
        let index = self.queue_index(QueueRole::Stats)?;
        self.stats_request_pending = true;
        Some(index)
    }

    /// Whether the device holds a statistics buffer (ready to request new values).
    pub fn holds_stats_buffer(&self) -> bool {
        self.stats_buffer.is_some()
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[0..4].copy_from_slice(&self.num_pages.to_le_bytes());
        c[4..8].copy_from_slice(&self.actual.to_le_bytes());
        c[12..16].copy_from_slice(&self.poison_val.to_le_bytes());
        c
    }

    /// Whether the device may read the buffers of `chain` (all in backed guest RAM).
    fn chain_accessible(
        &self,
        queue: &Queue,
        chain: &DescriptorChain<&VirtioGuestMemory>,
        mem: &VirtioGuestMemory,
    ) -> bool {
        !indirect_table_inaccessible(queue, chain.head_index(), mem, &self.backend)
            && chain
                .clone()
                .all(|d| buffer_accessible(d.addr().0, u64::from(d.len()), mem, &self.backend))
    }

    /// Reads the pfns of an inflate (`inflate`) or deflate buffer and applies them batch by
    /// batch.
    fn handle_pfn_chain(
        &mut self,
        chain: DescriptorChain<&VirtioGuestMemory>,
        mem: &VirtioGuestMemory,
        inflate: bool,
    ) {
        let reader: Result<Reader<'_, ()>, _> = Reader::new(mem, chain);
        let Ok(mut reader) = reader else {
            self.counters.dropped_chains += 1;
            return;
        };
        self.counters.pfn_buffers += 1;
        let total = reader.available_bytes();
        if !total.is_multiple_of(4) {
            // A partial pfn: the rest of the buffer is still applied.
            self.counters.invalid_pfns += 1;
        }
        let mut left = total / 4;
        if left > MAX_PFNS_PER_BUFFER {
            self.counters.oversized_chains += 1;
            self.counters.invalid_pfns += (left - MAX_PFNS_PER_BUFFER) as u64;
            left = MAX_PFNS_PER_BUFFER;
        }
        let mut buf = [0u8; PFN_BATCH * 4];
        while left > 0 {
            let n = left.min(PFN_BATCH);
            if reader.read_exact(&mut buf[..n * 4]).is_err() {
                self.counters.dropped_chains += 1;
                return;
            }
            let pfns: Vec<u64> = buf[..n * 4]
                .chunks_exact(4)
                .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            if inflate {
                self.inflate(pfns, mem);
            } else {
                self.deflate(pfns, mem);
            }
            left -= n;
        }
    }

    /// Inflates `pfns`: new, valid pages are discarded in merged ranges and join the balloon.
    fn inflate(&mut self, mut pfns: Vec<u64>, mem: &VirtioGuestMemory) {
        self.counters.redundant_pfns += sort_dedup(&mut pfns) as u64;
        let before = pfns.len();
        pfns.retain(|&p| !self.ballooned.contains(p));
        self.counters.redundant_pfns += (before - pfns.len()) as u64;
        for run in coalesce(&pfns) {
            let backend = &self.backend;
            let (ranges, skipped) = backed_ranges(run.addr(), run.addr() + run.len(), mem, |r| {
                backend.is_backed(r)
            });
            self.counters.invalid_pfns += skipped / BALLOON_PAGE_SIZE;
            for r in ranges {
                match self.backend.discard(r, DiscardKind::Inflated) {
                    Ok(()) => {
                        self.ballooned.insert_run(range_run(r));
                        self.counters.inflated_pages += r.pages();
                    }
                    Err(_) => self.counters.discard_errors += 1,
                }
            }
        }
    }

    /// Deflates `pfns`: pages in the balloon leave it, the backend reclaims them in merged
    /// ranges (before the buffer is returned, so before the guest uses them).
    fn deflate(&mut self, mut pfns: Vec<u64>, mem: &VirtioGuestMemory) {
        self.counters.redundant_pfns += sort_dedup(&mut pfns) as u64;
        let before = pfns.len();
        pfns.retain(|&p| self.ballooned.contains(p));
        self.counters.redundant_pfns += (before - pfns.len()) as u64;
        for run in coalesce(&pfns) {
            self.counters.deflated_pages += self.release_run(run, mem);
        }
    }

    /// Takes `run` (all in the balloon) out of the balloon and has the backend reclaim it,
    /// split at guest memory region boundaries; returns the pages released.
    fn release_run(&mut self, run: PfnRun, mem: &VirtioGuestMemory) -> u64 {
        let (ranges, _) = backed_ranges(run.addr(), run.addr() + run.len(), mem, |_| true);
        for r in ranges {
            if self.backend.reclaim(r).is_err() {
                self.counters.reclaim_errors += 1;
            }
        }
        self.ballooned.remove_run(run)
    }

    /// Discards the whole backed pages of each reported buffer that are not in the balloon.
    fn handle_report_chain(
        &mut self,
        chain: DescriptorChain<&VirtioGuestMemory>,
        mem: &VirtioGuestMemory,
    ) {
        self.counters.reports += 1;
        // A guest that poisons free pages (poison_val != 0) checks the poison when it
        // allocates them again: discarding would turn them into zeroes (virtio 1.2 section
        // 5.5.6, Page Poison), so such reports are acknowledged and counted without a discard.
        let keep_contents =
            self.acked_features & VIRTIO_BALLOON_F_PAGE_POISON != 0 && self.poison_val != 0;
        let mut budget = MAX_REPORT_BYTES;
        let mut oversized = false;
        for desc in chain {
            let mut len = u64::from(desc.len());
            if len > budget {
                oversized = true;
                self.counters.invalid_report_bytes += len - budget;
                len = budget;
            }
            budget -= len;
            if len == 0 {
                continue;
            }
            let (start, end) = whole_pages(desc.addr().0, len);
            self.counters.invalid_report_bytes += len - (end - start).min(len);
            let backend = &self.backend;
            let (ranges, skipped) = backed_ranges(start, end, mem, |r| backend.is_backed(r));
            self.counters.invalid_report_bytes += skipped;
            for r in ranges {
                if keep_contents {
                    self.counters.kept_report_bytes += r.len;
                    continue;
                }
                for piece in self.outside_balloon(r) {
                    match self.backend.discard(piece, DiscardKind::Reported) {
                        Ok(()) => self.counters.reported_bytes += piece.len,
                        Err(_) => self.counters.discard_errors += 1,
                    }
                }
            }
        }
        if oversized {
            self.counters.oversized_chains += 1;
        }
    }

    /// The parts of `r` whose pages are not in the balloon (a driver never reports
    /// ballooned pages; a hostile one must not make the device discard them as "reported").
    fn outside_balloon(&self, r: GuestRange) -> Vec<GuestRange> {
        if self.ballooned.is_empty() {
            return vec![r];
        }
        let mut out: Vec<GuestRange> = Vec::new();
        let first = r.addr.0 >> BALLOON_PFN_SHIFT;
        for pfn in first..first + r.pages() {
            if self.ballooned.contains(pfn) {
                continue;
            }
            let addr = pfn << BALLOON_PFN_SHIFT;
            match out.last_mut() {
                Some(last) if last.end() == addr => last.len += BALLOON_PAGE_SIZE,
                _ => out.push(GuestRange::new(addr, BALLOON_PAGE_SIZE)),
            }
        }
        out
    }

    /// Takes in a statistics buffer: records its values and holds it (returning a buffer held
    /// before, which a driver does not send). Returns whether a buffer was used.
    fn handle_stats_chain(
        &mut self,
        chain: DescriptorChain<&VirtioGuestMemory>,
        queue: &mut Queue,
        mem: &VirtioGuestMemory,
    ) -> bool {
        let head = chain.head_index();
        let reader: Result<Reader<'_, ()>, _> = Reader::new(mem, chain);
        match reader {
            Ok(mut reader) => {
                let n = reader.available_bytes().min(MAX_STATS_BYTES);
                let mut bytes = vec![0u8; n];
                if reader.read_exact(&mut bytes).is_ok() {
                    self.stats = Some(BalloonStats::parse(&bytes, SystemTime::now()));
                    self.counters.stats_updates += 1;
                } else {
                    self.counters.dropped_chains += 1;
                }
            }
            Err(_) => self.counters.dropped_chains += 1,
        }
        let mut used = false;
        if let Some(old) = self.stats_buffer.replace(head) {
            used = self.add_used(queue, old, mem);
        }
        used
    }

    fn add_used(&mut self, queue: &mut Queue, head: u16, mem: &VirtioGuestMemory) -> bool {
        if queue.add_used(mem, head, 0).is_err() {
            self.counters.dropped_chains += 1;
            return false;
        }
        true
    }

    /// Gives every ballooned page back (a reset: the new driver knows nothing of them).
    fn release_all(&mut self) {
        // Pages are only ballooned through `process_queue`, which stored the memory.
        let Some(mem) = self.mem.clone() else {
            return;
        };
        for run in self.ballooned.runs() {
            self.counters.reset_reclaimed_pages += self.release_run(run, &mem);
        }
    }
}

/// The pfn run of a page-aligned range.
fn range_run(r: GuestRange) -> PfnRun {
    PfnRun {
        first: r.addr.0 >> BALLOON_PFN_SHIFT,
        count: r.pages(),
    }
}

impl<B: BalloonBackend> VirtioDevice for VirtioBalloon<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.offered_features()
    }

    /// The transport needs every queue the device declared to be ready, and the device
    /// declares the queues of every feature it offers: a driver that leaves out a queue
    /// feature is refused here, at FEATURES_OK, rather than failing activation later. (Linux
    /// accepts both queue features whenever offered: it would drop free page reporting only
    /// for a guest that poisons free pages without `PAGE_POISON` offered, which memtide
    /// offers with reporting.)
    fn check_features(&self, acked: u64) -> Result<(), FeatureError> {
        let queue_features =
            self.offered_features() & (VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_REPORTING);
        let missing = queue_features & !acked;
        if missing != 0 {
            return Err(FeatureError::Missing(missing));
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

    /// The driver may write `actual` (bytes 4..8, virtio 1.2 section 5.5.4) and, when
    /// `VIRTIO_BALLOON_F_PAGE_POISON` is offered, `poison_val` (bytes 12..16); bytes written
    /// elsewhere are ignored and counted.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let poison_writable = self.offered_features() & VIRTIO_BALLOON_F_PAGE_POISON != 0;
        let mut actual = self.actual.to_le_bytes();
        let mut poison = self.poison_val.to_le_bytes();
        let mut ignored = false;
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(pos @ 4..=7) => actual[(pos - 4) as usize] = b,
                Some(pos @ 12..=15) if poison_writable => poison[(pos - 12) as usize] = b,
                _ => ignored = true,
            }
        }
        if ignored {
            self.counters.ignored_config_writes += 1;
        }
        let actual = u32::from_le_bytes(actual);
        let poison = u32::from_le_bytes(poison);
        if actual != self.actual || poison != self.poison_val {
            self.actual = actual;
            self.poison_val = poison;
            self.interrupt.bump_config_generation();
        }
    }

    fn activate(&mut self, acked_features: u64, queues: &[Queue]) -> Result<(), ActivateError> {
        for (i, q) in queues.iter().enumerate() {
            if ring_parts(q)
                .iter()
                .any(|&(addr, len)| !self.backend_accessible(addr, len))
            {
                return Err(ActivateError::RingsInaccessible(i));
            }
        }
        self.acked_features = acked_features;
        self.roles = queue_roles(acked_features);
        self.active = true;
        Ok(())
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &VirtioGuestMemory) -> bool {
        if !self.active {
            return false;
        }
        let Some(&role) = self.roles.get(index) else {
            return false;
        };
        if self.mem.is_none() {
            self.mem = Some(mem.clone());
        }
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            // Reported buffers are never read, only their addresses matter.
            let readable = if role == QueueRole::Reporting {
                !indirect_table_inaccessible(queue, head, mem, &self.backend)
            } else {
                self.chain_accessible(queue, &chain, mem)
            };
            if !readable {
                self.counters.dropped_chains += 1;
                used |= self.add_used(queue, head, mem);
                continue;
            }
            match role {
                QueueRole::Inflate => self.handle_pfn_chain(chain, mem, true),
                QueueRole::Deflate => self.handle_pfn_chain(chain, mem, false),
                QueueRole::Reporting => self.handle_report_chain(chain, mem),
                QueueRole::Stats => {
                    used |= self.handle_stats_chain(chain, queue, mem);
                    continue;
                }
                // Never offered, so never a queue role of a running device.
                QueueRole::FreePageHint => {}
            }
            used |= self.add_used(queue, head, mem);
        }
        // A statistics request returns the buffer held now (taken in just above, if the
        // driver's buffer was waiting in the queue).
        if role == QueueRole::Stats && std::mem::take(&mut self.stats_request_pending) {
            if let Some(head) = self.stats_buffer.take() {
                if self.add_used(queue, head, mem) {
                    used = true;
                    self.counters.stats_requests += 1;
                }
            }
        }
        used
    }

    /// A driver reset: the new driver starts with an empty balloon, so every ballooned page
    /// is reclaimed and `actual` returns to 0; `num_pages` (the host's wish) stays.
    fn reset(&mut self) {
        self.release_all();
        self.active = false;
        self.acked_features = 0;
        self.roles.clear();
        self.stats_buffer = None;
        self.stats_request_pending = false;
        self.actual = 0;
        self.poison_val = 0;
    }
}

impl<B: BalloonBackend> VirtioBalloon<B> {
    /// Whether the device may access `addr..addr+len` according to the backend (used for the
    /// rings at activation, where the transport already checked they are in guest memory).
    fn backend_accessible(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let start = addr & !(BALLOON_PAGE_SIZE - 1);
        let Some(stop) = end.checked_next_multiple_of(BALLOON_PAGE_SIZE) else {
            return false;
        };
        (start..stop).step_by(BALLOON_PAGE_SIZE as usize).all(|p| {
            self.backend
                .is_backed(GuestRange::new(p, BALLOON_PAGE_SIZE))
        })
    }
}
