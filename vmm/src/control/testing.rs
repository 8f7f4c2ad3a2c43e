//! A [`Launcher`] for tests of the control plane and its front ends without KVM: a
//! [`FakeMachine`] takes its boot RAM from the real pool (so the pool's accounting is
//! exercised), runs one thread that passes the pause gate like a vCPU, and — if its config has
//! hot-pluggable nodes — a [`FakeHotplug`] that plugs 2 MiB MOVABLE blocks from the pool at
//! once (a guest that never refuses, unless told to keep some memory).
//!
//! Built for `cfg(test)` and with the `test-utils` feature only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memtide_allocator::buddy::AllocRequest;
use memtide_allocator::{MigrateType, NodeId, Order, Pfn};

use super::machine::{HotplugMemory, HotplugNode, Launcher, Machine};
use crate::config::VmConfig;
use crate::exit::{ExitReason, ExitSignal};
use crate::layout::GuestMemoryMap;
use crate::memory::backing::{BackingAllocator, BackingExtent};
use crate::memory::host::HostMemory;
use crate::memory::pool::PoolBacking;
use crate::vm::VmError;

/// Block size of [`FakeHotplug`] (2 MiB, order 9).
pub const FAKE_BLOCK: u64 = 2 << 20;

/// Launches [`FakeMachine`]s.
#[derive(Debug, Default)]
pub struct FakeLauncher {
    /// Whether machines get a [`FakeHotplug`] for their hot-pluggable nodes.
    pub hotplug: bool,
    /// Bytes per node every fake guest refuses to unplug (memory in use), shared with the
    /// test.
    pub pinned: Arc<AtomicU64>,
}

/// A machine with no KVM behind it.
pub struct FakeMachine {
    exit: Arc<ExitSignal>,
    map: GuestMemoryMap,
    pool: PoolBacking,
    extents: Vec<BackingExtent>,
    hotplug: Option<Arc<FakeHotplug>>,
    balloon: Option<Arc<FakeBalloon>>,
}

/// A balloon whose guest follows every target at once (`actual` = `num_pages`).
#[derive(Debug)]
pub struct FakeBalloon {
    config: crate::devices::virtio::balloon::VirtioBalloonConfig,
    guest_ram: u64,
    pages: Mutex<u32>,
}

impl crate::balloon::BalloonControl for FakeBalloon {
    fn guest_ram(&self) -> u64 {
        self.guest_ram
    }

    fn info(&self) -> crate::devices::virtio::balloon::BalloonInfo {
        let pages = *self.pages.lock().unwrap_or_else(|p| p.into_inner());
        crate::devices::virtio::balloon::BalloonInfo {
            config: self.config,
            active: true,
            deflate_on_oom: self.config.deflate_on_oom,
            free_page_reporting: self.config.free_page_reporting,
            target_pages: pages,
            actual_pages: pages,
            ballooned_pages: u64::from(pages),
            counters: Default::default(),
            stats: None,
        }
    }

    fn set_target(
        &self,
        target: crate::balloon::BalloonTarget,
    ) -> Result<(), crate::devices::virtio::balloon::TargetError> {
        use crate::devices::virtio::balloon::{
            balloon_size_for_guest_size, pages_for_balloon_size, TargetError,
        };
        let size = match target {
            crate::balloon::BalloonTarget::GuestSize(g) => {
                balloon_size_for_guest_size(self.guest_ram, g)?
            }
            crate::balloon::BalloonTarget::BalloonSize(b) if b > self.guest_ram => {
                return Err(TargetError::BalloonSizeTooLarge(b, self.guest_ram))
            }
            crate::balloon::BalloonTarget::BalloonSize(b) => b,
        };
        *self.pages.lock().unwrap_or_else(|p| p.into_inner()) = pages_for_balloon_size(size)?;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct FakeNode {
    host_node: u32,
    region: u64,
    requested: u64,
    blocks: Vec<Pfn>,
}

/// virtio-mem devices that plug and unplug at once, from and to the pool's ZONE_MOVABLE.
pub struct FakeHotplug {
    pool: PoolBacking,
    nodes: Mutex<BTreeMap<u32, FakeNode>>,
    pinned: Arc<AtomicU64>,
}

impl FakeHotplug {
    fn settle(&self, n: &mut FakeNode) {
        self.unplug_unpinned(n);
        let want = (n.requested / FAKE_BLOCK) as usize;
        while n.blocks.len() < want {
            let req = AllocRequest {
                order: Order(9),
                migratetype: MigrateType::Movable,
                node: NodeId(n.host_node),
                highest_zone: None,
            };
            match self.pool.pool().alloc(req) {
                Ok(p) => n.blocks.push(p),
                Err(_) => break,
            }
        }
    }

    /// Unplugs down to the target as far as the pinned memory allows.
    fn unplug_unpinned(&self, n: &mut FakeNode) {
        let pinned = self.pinned.load(Ordering::SeqCst) / FAKE_BLOCK;
        let want = (n.requested / FAKE_BLOCK) as usize;
        while n.blocks.len() > want && n.blocks.len() as u64 > pinned {
            if let Some(pfn) = n.blocks.pop() {
                let _ = self.pool.pool().free(pfn, Order(9));
            }
        }
    }

    fn release_all(&self) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for n in nodes.values_mut() {
            for pfn in n.blocks.drain(..) {
                let _ = self.pool.pool().free(pfn, Order(9));
            }
        }
    }
}

impl HotplugMemory for FakeHotplug {
    fn nodes(&self) -> Vec<HotplugNode> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        // The guest keeps giving back what it was asked to (memory the test unpinned).
        for n in nodes.values_mut() {
            self.unplug_unpinned(n);
        }
        nodes
            .iter()
            .map(|(&g, n)| HotplugNode {
                guest_node: g,
                block_size: FAKE_BLOCK,
                region_size: n.region,
                usable: n.region,
                plugged: n.blocks.len() as u64 * FAKE_BLOCK,
                requested: n.requested,
            })
            .collect()
    }

    fn set_requested(&self, guest_node: u32, bytes: u64) -> Result<(), String> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let n = nodes
            .get_mut(&guest_node)
            .ok_or_else(|| format!("no device on node {guest_node}"))?;
        if bytes > n.region || !bytes.is_multiple_of(FAKE_BLOCK) {
            return Err(format!("bad requested size {bytes}"));
        }
        n.requested = bytes;
        self.settle(n);
        Ok(())
    }

    fn pool_blocks(&self) -> Vec<(u64, u32)> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .values()
            .flat_map(|n| n.blocks.iter().map(|p| (p.0, 9)))
            .collect()
    }
}

impl Machine for FakeMachine {
    fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    fn memory_map(&self) -> GuestMemoryMap {
        self.map.clone()
    }

    fn hotplug(&self) -> Option<Arc<dyn HotplugMemory>> {
        self.hotplug.clone().map(|h| h as Arc<dyn HotplugMemory>)
    }

    fn balloon(&self) -> Option<Arc<dyn crate::balloon::BalloonControl>> {
        self.balloon
            .clone()
            .map(|b| b as Arc<dyn crate::balloon::BalloonControl>)
    }

    fn boot_extents(&self) -> Vec<BackingExtent> {
        self.extents.clone()
    }

    fn run(mut self: Box<Self>) -> Result<ExitReason, VmError> {
        let exit = self.exit.clone();
        let vcpu = std::thread::spawn({
            let exit = exit.clone();
            move || {
                while !exit.is_requested() {
                    exit.pause_gate().park();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        exit.pause_gate().set_threads(
            vec![std::os::unix::thread::JoinHandleExt::as_pthread_t(&vcpu)],
            libc::SIGCHLD,
        );
        let _ = vcpu.join();
        if let Some(h) = &self.hotplug {
            h.release_all();
        }
        let extents = std::mem::take(&mut self.extents);
        self.pool.free(&extents);
        Ok(exit.reason().unwrap_or(ExitReason::Stopped))
    }
}

impl Launcher for FakeLauncher {
    fn launch(
        &self,
        config: &VmConfig,
        pool: &PoolBacking,
        _host: &Arc<HostMemory>,
    ) -> Result<Box<dyn Machine>, VmError> {
        config.validate()?;
        let mut pool = pool.clone();
        let mut extents = Vec::new();
        for n in config.nodes() {
            match pool.alloc_boot_ram(n.host_node, n.memory) {
                Ok(x) => extents.extend(x),
                Err(e) => {
                    pool.free(&extents);
                    return Err(VmError::Memory(e.into()));
                }
            }
        }
        let hotplug = self.hotplug.then(|| {
            Arc::new(FakeHotplug {
                pool: pool.clone(),
                nodes: Mutex::new(
                    config
                        .nodes()
                        .iter()
                        .filter(|n| n.hotplug_size > 0)
                        .map(|n| {
                            (
                                n.guest_node,
                                FakeNode {
                                    host_node: n.host_node,
                                    region: n.hotplug_size,
                                    ..Default::default()
                                },
                            )
                        })
                        .collect(),
                ),
                pinned: self.pinned.clone(),
            })
        });
        let exit = Arc::new(ExitSignal::new().map_err(VmError::EventFd)?);
        Ok(Box::new(FakeMachine {
            exit,
            map: GuestMemoryMap::new(&config.nodes()),
            pool,
            extents,
            hotplug,
            balloon: config.balloon.map(|c| {
                Arc::new(FakeBalloon {
                    config: c,
                    guest_ram: config.memory,
                    pages: Mutex::new(c.target_pages),
                })
            }),
        }))
    }
}

/// Pages of the pool not free (handed out), for leak checks.
pub fn used_pages(pool: &PoolBacking) -> u64 {
    pool.pool().drain_all_pages();
    pool.pool().managed_pages() - pool.pool().free_pages_total()
}
