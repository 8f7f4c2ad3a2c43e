//! The virtio-balloon device (virtio 1.2 section 5.5, device id 5): the guest gives 4 KiB
//! pages to the host (inflate) and takes them back (deflate), towards the host's target
//! `num_pages`; optionally it reports statistics (stats queue), deflates under memory pressure
//! (deflate on OOM) and reports free pages (free page reporting, with page poison).
//!
//! memtide's balloon hands scattered pages back: virtio-mem moves whole movable blocks, the
//! balloon returns what is left in between and tells the host how much each guest needs.
//!
//! - [`device`]: the device state, configuration space and queue handling, and the
//!   [`crate::devices::virtio::VirtioDevice`] implementation.
//! - [`backend`]: [`BalloonBackend`], the host side the VMM implements, and
//!   [`HostMappingBackend`], which discards through the VMM's mapping of guest RAM.
//! - [`pages`]: the balloon's page set and pfn runs.
//! - [`queues`]: queue roles by feature, and the checks of guest-controlled addresses.
//! - [`stats`]: the statistics tags and values.
//! - [`target`]: "guest size" ↔ "balloon size" conversions.
//! - [`metrics`]: cumulative counters.
//! - [`event_handler`]: the stats polling timer on the event loop.
//! - [`mod@attach`]: one call that puts a balloon into a VM (irqfd, transport, notifiers, timer,
//!   DSDT object).
//!
//! Wiring one balloon into a VM: [`attach()`] creates everything of steps 1-3 below in one
//! call, leaving the VMM to route MMIO exits to `AttachedBalloon::mmio_read/mmio_write`, add
//! `acpi` to the DSDT and, with [`NotifyMode::EventLoop`], `take_subscribers()` to its event
//! loop ([`NotifyMode::MmioExits`] needs no loop: no ioeventfds, a stats thread). By hand
//! (steps as for virtio-mem in [`crate::devices::virtio`]):
//! 1. `let irq = Arc::new(VirtioInterrupt::new(Box::new(irqfd)));`
//!    `let dev = VirtioBalloon::new(config, backend, irq.clone());`
//!    `let transport = Arc::new(Mutex::new(MmioTransport::new(dev, guest_memory, irq)?));`
//! 2. Route the MMIO window to the transport, register
//!    `event_handler::register_queue_notifiers(&vm_fd, base, dev_queue_count)` (the count is
//!    `transport.device().queue_max_sizes().len()`) and a `QueueNotifyHandler`, add
//!    `VirtioMmioAcpi` to the DSDT.
//! 3. If `config.stats_interval` is set, add a [`event_handler::StatsTimer`] to the event loop,
//!    or start an [`event_handler::StatsPoller`] thread.
//! 4. Control: `device_mut().set_target_pages(n)` / `.set_balloon_size(bytes)`;
//!    read `.info()` (or `.actual_pages()`, `.ballooned_bytes()`, `.stats()`, `.counters()`).

pub mod attach;
pub mod backend;
pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod pages;
pub mod queues;
pub mod stats;
pub mod target;

#[cfg(test)]
mod tests;

pub use attach::{attach, AttachError, AttachedBalloon, BalloonPlacement, NotifyMode};
pub use backend::{
    BalloonBackend, BalloonBackendError, DiscardKind, GuestRange, HostMappingBackend,
};
pub use device::{VirtioBalloon, VirtioBalloonConfig};
pub use metrics::{BalloonCounters, BalloonInfo};
pub use queues::QueueRole;
pub use stats::BalloonStats;
pub use target::{
    balloon_size_for_guest_size, guest_size_for_balloon_size, pages_for_balloon_size, TargetError,
};

/// `VIRTIO_BALLOON_F_MUST_TELL_HOST`: the driver tells the host before reusing deflated pages
/// (memtide always offers it: a backend may hand inflated memory to others until reclaim).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u64 = 1 << 0;
/// `VIRTIO_BALLOON_F_STATS_VQ`: the statistics queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest deflates when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// `VIRTIO_BALLOON_F_FREE_PAGE_HINT` (never offered by memtide; listed for queue numbering).
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u64 = 1 << 3;
/// `VIRTIO_BALLOON_F_PAGE_POISON`: the driver tells `poison_val`, the contents of its free
/// pages (offered with free page reporting).
pub const VIRTIO_BALLOON_F_PAGE_POISON: u64 = 1 << 4;
/// `VIRTIO_BALLOON_F_REPORTING` (the spec's `VIRTIO_BALLOON_F_PAGE_REPORTING`): free page
/// reporting queue.
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
