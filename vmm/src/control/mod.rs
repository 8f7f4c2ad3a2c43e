//! The control plane of `memtide serve`: one host memory pool and every VM of the process.
//!
//! [`ControlPlane`] owns the pool ([`PoolBacking`] over one memfd per host node) and a
//! registry of VMs; each VM runs on a thread of its own (its event loop, plus one thread per
//! vCPU). Front ends talk to it through the typed verbs of [`request`] —
//! [`ControlPlane::handle`] takes any [`Request`] — so the REST API is a thin layer and the
//! control plane is testable without HTTP. Verbs on one VM are serialized by that VM's
//! lock; creates are serialized among themselves. Every verb validates everything before it
//! changes anything.
//!
//! Life cycle: create (build + boot) → running ⇄ paused → stopped (shutdown, or the guest
//! powered off / reset) → delete. A stopped VM's boot RAM is back in the pool.

pub mod audit;
#[cfg(test)]
mod balloon_tests;
pub mod error;
pub mod info;
pub mod machine;
pub mod request;
pub mod resize;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod virtio_mem;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memtide_allocator::PAGE_SIZE;

pub use crate::balloon::BalloonTarget;
use crate::devices::virtio::balloon::TargetError;
pub use audit::PoolAudit;
pub use error::{ControlError, ErrorKind};
pub use info::{BalloonReport, NodeInfo, PoolInfo, VirtioMemReport, VmInfo, VmState};
pub use machine::{HotplugMemory, HotplugNode, KvmLauncher, Launcher, Machine};
pub use request::{
    CreateVm, Rebalance, RebalanceResult, Request, ResizeResult, ResizeVm, Response, SetBalloon,
    VmRef,
};

use crate::config::{SerialOutput, VmConfig, RAM_ALIGN};
use crate::exit::{ExitReason, ExitSignal};
use crate::layout::GuestMemoryMap;
use crate::memory::host::{host_node_bytes, host_node_exists, HostMemory};
use crate::memory::pool::PoolBacking;
use resize::NodeLimits;

/// Longest wait a resize or rebalance may ask for.
pub const MAX_WAIT_SECS: u64 = 600;

/// How long shutdown waits for a VM's threads to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long pause waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Host node ids probed when the pool covers "every host node".
const MAX_HOST_NODES: u32 = 64;

/// How the control plane is set up.
#[derive(Debug, Clone, Default)]
pub struct PlaneConfig {
    /// `(host node, bytes)` the pool manages; `None`: every host node, all its memory.
    pub nodes: Option<Vec<(u32, u64)>>,
    /// Host-side `kernelcore=` (kernel syntax).
    pub kernelcore: Option<String>,
    /// Host-side `movablecore=`.
    pub movablecore: Option<String>,
    /// Where VM consoles go (`<dir>/<id>.console`) when a create names no console file.
    pub console_dir: Option<PathBuf>,
    /// Most VMs at once (0: 64).
    pub max_vms: usize,
}

/// One VM in the registry.
struct VmSlot {
    id: String,
    config: VmConfig,
    console: Option<PathBuf>,
    map: GuestMemoryMap,
    exit: Arc<ExitSignal>,
    hotplug: Option<Arc<dyn HotplugMemory>>,
    balloon: Option<Arc<dyn crate::balloon::BalloonControl>>,
    /// Where its boot RAM is (for the pool audit).
    boot_extents: Vec<crate::memory::backing::BackingExtent>,
    /// The exit reason once the VM thread returned.
    outcome: Arc<(Mutex<Option<String>>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Serializes verbs on this VM.
    op: Mutex<()>,
    created: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn reason_name(r: &Result<ExitReason, crate::vm::VmError>) -> String {
    match r {
        Ok(ExitReason::PowerOff) => "power_off".into(),
        Ok(ExitReason::Reset) => "reset".into(),
        Ok(ExitReason::Stopped) => "stopped".into(),
        Ok(ExitReason::Error(m)) => format!("error: {m}"),
        Err(e) => format!("error: {e}"),
    }
}

impl VmSlot {
    fn exit_reason(&self) -> Option<String> {
        lock(&self.outcome.0).clone()
    }

    fn state(&self) -> VmState {
        if self.exit_reason().is_some() {
            VmState::Stopped
        } else if self.exit.pause_gate().is_paused() {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    fn expect_state(&self, want: &[VmState], verb: &'static str) -> Result<(), ControlError> {
        let s = self.state();
        if want.contains(&s) {
            Ok(())
        } else {
            Err(ControlError::WrongState {
                id: self.id.clone(),
                state: s.name(),
                verb,
            })
        }
    }

    /// Waits until the VM thread returned (at most `timeout`); joins it.
    fn wait_stopped(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.outcome;
        let deadline = Instant::now() + timeout;
        let mut g = lock(m);
        while g.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(g);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        true
    }

    fn limits(&self) -> Vec<NodeLimits> {
        self.config
            .nodes()
            .iter()
            .map(|n| NodeLimits {
                guest_node: n.guest_node,
                boot: n.memory,
                hotplug: n.hotplug_size,
            })
            .collect()
    }

    fn hotplug(&self) -> Result<&Arc<dyn HotplugMemory>, ControlError> {
        self.hotplug
            .as_ref()
            .ok_or_else(|| ControlError::NoVirtioMem(self.id.clone()))
    }

    fn host_node_of(&self, guest_node: u32) -> u32 {
        self.config
            .nodes()
            .iter()
            .find(|n| n.guest_node == guest_node)
            .map_or(0, |n| n.host_node)
    }

    fn info(&self) -> VmInfo {
        let devices = self.hotplug.as_ref().map(|h| h.nodes()).unwrap_or_default();
        let nodes: Vec<NodeInfo> = self
            .config
            .nodes()
            .iter()
            .map(|n| {
                let d = devices.iter().find(|d| d.guest_node == n.guest_node);
                NodeInfo {
                    guest_node: n.guest_node,
                    host_node: n.host_node,
                    vcpus: n.vcpus.clone(),
                    boot_memory: n.memory,
                    hotplug_size: n.hotplug_size,
                    hotplug_addr: self
                        .map
                        .hotplug
                        .iter()
                        .find(|h| h.guest_node == n.guest_node)
                        .map(|h| h.start),
                    plugged: d.map_or(0, |d| d.plugged),
                    requested: d.map_or(0, |d| d.requested),
                    usable: d.map_or(0, |d| d.usable),
                    block_size: d.map_or(0, |d| d.block_size),
                }
            })
            .collect();
        let plugged: u64 = nodes.iter().map(|n| n.plugged).sum();
        let path = |p: &PathBuf| p.display().to_string();
        VmInfo {
            id: self.id.clone(),
            state: self.state(),
            exit_reason: self.exit_reason(),
            vcpus: self.config.vcpus,
            boot_memory: self.config.memory,
            total_memory: self.config.memory + plugged,
            virtio_mem: self.hotplug.is_some(),
            kernel: path(&self.config.kernel),
            initrd: self.config.initrd.as_ref().map(path),
            cmdline: self.config.cmdline.clone(),
            kernelcore: self.config.guest_kernelcore.clone(),
            movablecore: self.config.guest_movablecore.clone(),
            cpu_template: self.config.cpu_template.to_string(),
            console: self.console.as_ref().map(path),
            console_socket: match &self.config.serial_output {
                SerialOutput::Socket(p) => Some(path(p)),
                _ => None,
            },
            uptime_secs: self.created.elapsed().as_secs(),
            nodes,
            balloon: self.balloon_report(),
            virtio_mem_stats: self
                .hotplug
                .as_ref()
                .and_then(|h| h.stats())
                .map(|s| VirtioMemReport::new(&s)),
        }
    }

    fn balloon_report(&self) -> Option<BalloonReport> {
        self.balloon
            .as_ref()
            .map(|b| BalloonReport::new(&b.info(), b.guest_ram()))
    }

    /// Waits (at most `wait`) until every device's plugged size equals its requested size.
    fn wait_plugged(&self, wait: Duration) -> bool {
        let Some(h) = &self.hotplug else {
            return true;
        };
        let deadline = Instant::now() + wait;
        loop {
            if h.nodes().iter().all(|d| d.plugged == d.requested) {
                return true;
            }
            if Instant::now() >= deadline || self.state() == VmState::Stopped {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `id` is a good VM id (also safe as a file name and a URL path segment).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The control plane: the pool and the VMs.
pub struct ControlPlane {
    pool: PoolBacking,
    host: Arc<HostMemory>,
    launcher: Box<dyn Launcher>,
    vms: Mutex<BTreeMap<String, Arc<VmSlot>>>,
    create: Mutex<()>,
    console_dir: Option<PathBuf>,
    max_vms: usize,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("vms", &lock(&self.vms).keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Builds the pool (every host node, or `cfg.nodes`) with the host-side
    /// kernelcore/movablecore and the per-node memfds; VMs are built by `launcher`.
    pub fn new(cfg: &PlaneConfig, launcher: Box<dyn Launcher>) -> Result<Self, ControlError> {
        let nodes = match &cfg.nodes {
            Some(n) => n.clone(),
            None => (0..MAX_HOST_NODES)
                .filter(|&n| host_node_exists(n))
                .filter_map(|n| host_node_bytes(n).filter(|&b| b > 0).map(|b| (n, b)))
                .collect(),
        };
        if nodes.is_empty() {
            return Err(ControlError::Host(
                "no host NUMA node with memory found".into(),
            ));
        }
        let pool = PoolBacking::new(
            &nodes,
            cfg.kernelcore.as_deref(),
            cfg.movablecore.as_deref(),
        )
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let host = Arc::new(
            HostMemory::new(&pool.memfd_sizes()).map_err(|e| ControlError::Host(e.to_string()))?,
        );
        Ok(ControlPlane {
            pool,
            host,
            launcher,
            vms: Mutex::new(BTreeMap::new()),
            create: Mutex::new(()),
            console_dir: cfg.console_dir.clone(),
            max_vms: if cfg.max_vms == 0 { 64 } else { cfg.max_vms },
        })
    }

    /// The pool.
    pub fn pool(&self) -> &PoolBacking {
        &self.pool
    }

    /// Runs any verb.
    pub fn handle(&self, req: Request) -> Result<Response, ControlError> {
        Ok(match req {
            Request::CreateVm(c) => Response::Vm(Box::new(self.create_vm(c)?)),
            Request::ListVms => Response::Vms(self.list_vms()),
            Request::VmInfo(r) => Response::Vm(Box::new(self.vm_info(&r.id)?)),
            Request::Pause(r) => Response::Vm(Box::new(self.pause(&r.id)?)),
            Request::Resume(r) => Response::Vm(Box::new(self.resume(&r.id)?)),
            Request::Shutdown(r) => Response::Vm(Box::new(self.shutdown(&r.id)?)),
            Request::Delete(r) => {
                self.delete(&r.id)?;
                Response::Deleted
            }
            Request::Resize(r) => Response::Resize(Box::new(self.resize(&r)?)),
            Request::Rebalance(r) => Response::Rebalance(Box::new(self.rebalance(&r)?)),
            Request::SetBalloon(r) => Response::Balloon(Box::new(self.set_balloon(&r)?)),
            Request::BalloonInfo(r) => Response::Balloon(Box::new(self.balloon_info(&r.id)?)),
            Request::PoolInfo => Response::Pool(Box::new(self.pool_info())),
            Request::PoolAudit => Response::PoolAudit(Box::new(self.audit_pool())),
        })
    }

    fn slot(&self, id: &str) -> Result<Arc<VmSlot>, ControlError> {
        if !valid_id(id) {
            return Err(ControlError::BadId(id.to_string()));
        }
        lock(&self.vms)
            .get(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(id.to_string()))
    }

    /// Builds and boots a VM.
    pub fn create_vm(&self, req: CreateVm) -> Result<VmInfo, ControlError> {
        let _serial = lock(&self.create);
        let id = match req.id {
            Some(id) if !valid_id(&id) => return Err(ControlError::BadId(id)),
            Some(id) => id,
            None => {
                let vms = lock(&self.vms);
                (0..)
                    .map(|i| format!("vm{i}"))
                    .find(|c| !vms.contains_key(c))
                    .unwrap_or_default()
            }
        };
        {
            let vms = lock(&self.vms);
            if vms.contains_key(&id) {
                return Err(ControlError::Exists(id));
            }
            if vms.len() >= self.max_vms {
                return Err(ControlError::BeyondLimits(format!(
                    "memtide runs at most {} VMs at once (delete stopped ones)",
                    self.max_vms
                )));
            }
        }
        let mut config = req.config;
        config.validate()?;
        config.serial_input = false;
        // A console socket in the config stays; otherwise the console is a file: the one the
        // request names, else one in the console dir, else the config's.
        let console = match (&config.serial_output, req.console, &self.console_dir) {
            (SerialOutput::Socket(_), _, _) => None,
            (_, Some(p), _) => Some(p),
            (_, None, Some(dir)) => Some(dir.join(format!("{id}.console"))),
            (SerialOutput::File(p), None, None) => Some(p.clone()),
            (SerialOutput::Stdout, None, None) => None,
        };
        if let Some(p) = &console {
            config.serial_output = SerialOutput::File(p.clone());
        }
        let machine = self.launcher.launch(&config, &self.pool, &self.host)?;
        let exit = machine.exit_signal();
        let map = machine.memory_map();
        let hotplug = machine.hotplug();
        let balloon = machine.balloon();
        let boot_extents = machine.boot_extents();
        let outcome = Arc::new((Mutex::new(None), Condvar::new()));
        let done = outcome.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vm-{id}"))
            .spawn(move || {
                let r = machine.run();
                *lock(&done.0) = Some(reason_name(&r));
                done.1.notify_all();
            })
            .map_err(|e| ControlError::Internal(format!("spawning the VM thread: {e}")))?;
        let slot = Arc::new(VmSlot {
            id: id.clone(),
            config,
            console,
            map,
            exit,
            hotplug,
            balloon,
            boot_extents,
            outcome,
            thread: Mutex::new(Some(thread)),
            op: Mutex::new(()),
            created: Instant::now(),
        });
        let info = slot.info();
        lock(&self.vms).insert(id, slot);
        Ok(info)
    }

    /// Every VM, by id.
    pub fn list_vms(&self) -> Vec<VmInfo> {
        let slots: Vec<Arc<VmSlot>> = lock(&self.vms).values().cloned().collect();
        slots.iter().map(|s| s.info()).collect()
    }

    /// One VM.
    pub fn vm_info(&self, id: &str) -> Result<VmInfo, ControlError> {
        Ok(self.slot(id)?.info())
    }

    /// Parks every vCPU of a running VM.
    pub fn pause(&self, id: &str) -> Result<VmInfo, ControlError> {
        let s = self.slot(id)?;
        let _op = lock(&s.op);
        s.expect_state(&[VmState::Running], "pause")?;
        s.exit
            .pause_gate()
            .pause(PAUSE_TIMEOUT)
            .map_err(|e| ControlError::Pause(s.id.clone(), e))?;
        Ok(s.info())
    }

    /// Lets a paused VM run again.
    pub fn resume(&self, id: &str) -> Result<VmInfo, ControlError> {
        let s = self.slot(id)?;
        let _op = lock(&s.op);
        s.expect_state(&[VmState::Paused], "resume")?;
        s.exit.pause_gate().resume();
        Ok(s.info())
    }

    /// Stops a running or paused VM and waits until its threads ended and its boot RAM is
    /// back in the pool.
    pub fn shutdown(&self, id: &str) -> Result<VmInfo, ControlError> {
        let s = self.slot(id)?;
        let _op = lock(&s.op);
        s.expect_state(&[VmState::Running, VmState::Paused], "shut down")?;
        s.exit.request(ExitReason::Stopped);
        if !s.wait_stopped(STOP_TIMEOUT) {
            return Err(ControlError::Internal(format!(
                "VM {id:?} did not stop within {STOP_TIMEOUT:?}"
            )));
        }
        // Its memory is back in the pool: guests waiting for some retry now.
        self.kick_busy();
        Ok(s.info())
    }

    /// Kicks every VM's virtio-mem devices that were answered BUSY (pool short); returns
    /// how many.
    fn kick_busy(&self) -> usize {
        let slots: Vec<Arc<VmSlot>> = lock(&self.vms).values().cloned().collect();
        slots
            .iter()
            .filter_map(|s| s.hotplug.as_ref())
            .map(|h| h.kick_busy())
            .sum()
    }

    /// Forgets a stopped VM.
    pub fn delete(&self, id: &str) -> Result<(), ControlError> {
        let s = self.slot(id)?;
        let _op = lock(&s.op);
        s.expect_state(&[VmState::Stopped], "delete (shut it down first)")?;
        s.wait_stopped(STOP_TIMEOUT);
        lock(&self.vms).remove(id);
        Ok(())
    }

    /// The pool's counters.
    pub fn pool_info(&self) -> PoolInfo {
        PoolInfo::from_pool(self.pool.pool())
    }

    /// Audits the pool against what the VMs hold ([`audit`]): no page with two owners, no
    /// page leaked, the buddy allocator's invariants. Holds the create lock (a VM being
    /// built holds pages it is not registered for yet); repeats while plugs or unplugs move
    /// blocks between its snapshots.
    pub fn audit_pool(&self) -> PoolAudit {
        let _no_create = lock(&self.create);
        let mut last = None;
        for _ in 0..10 {
            let before = self.holdings();
            let free = self.pool.pool().free_pages_total();
            let after = self.holdings();
            let report = audit::audit(self.pool.pool(), &after, free);
            if before == after && report.consistent {
                return report;
            }
            last = Some(report);
            std::thread::sleep(Duration::from_millis(20));
        }
        last.unwrap_or_else(|| audit::audit(self.pool.pool(), &self.holdings(), 0))
    }

    /// What every VM that has not stopped holds of the pool, as pfn ranges.
    fn holdings(&self) -> Vec<audit::Holding> {
        let slots: Vec<Arc<VmSlot>> = lock(&self.vms).values().cloned().collect();
        let mut out = Vec::new();
        for s in slots.iter().filter(|s| s.state() != VmState::Stopped) {
            let boot = s
                .boot_extents
                .iter()
                .filter_map(|e| {
                    let (start, _) = self.pool.node_pfn_range(e.host_node)?;
                    Some((start + e.offset / PAGE_SIZE, e.len / PAGE_SIZE))
                })
                .collect();
            out.push((s.id.clone(), "boot", boot));
            if let Some(h) = &s.hotplug {
                let plugged = h
                    .pool_blocks()
                    .into_iter()
                    .map(|(pfn, order)| (pfn, 1u64 << order))
                    .collect();
                out.push((s.id.clone(), "plugged", plugged));
            }
        }
        out
    }

    /// Bytes `host_node`'s ZONE_MOVABLE can give before it falls below its low watermark.
    fn movable_room(&self, host_node: u32) -> u64 {
        self.pool_info()
            .movable_free(host_node)
            .map_or(0, |(free, low)| free.saturating_sub(low) * PAGE_SIZE)
    }

    /// Fails unless the pool can back growing `slot`'s nodes from their current requested
    /// sizes to `targets` (the growth, per host node, against ZONE_MOVABLE's room).
    fn check_pool(
        &self,
        slot: &VmSlot,
        devices: &[HotplugNode],
        targets: &[(u32, u64)],
        credit: &BTreeMap<u32, u64>,
    ) -> Result<(), ControlError> {
        let mut need: BTreeMap<u32, u64> = BTreeMap::new();
        for &(n, t) in targets {
            let cur = devices
                .iter()
                .find(|d| d.guest_node == n)
                .map_or(0, |d| d.requested);
            *need.entry(slot.host_node_of(n)).or_default() += t.saturating_sub(cur);
        }
        for (host, bytes) in need.into_iter().filter(|&(_, b)| b > 0) {
            let room =
                |plane: &Self| plane.movable_room(host) + credit.get(&host).copied().unwrap_or(0);
            let mut room_now = room(self);
            if bytes > room_now {
                // Free pages on the per-CPU lists do not count as free (NR_FREE_PAGES, as in
                // Linux): give them back to the buddy lists, as the kernel drains them
                // before it gives up on an allocation, and look again.
                self.pool.pool().drain_all_pages();
                room_now = room(self);
            }
            let room = room_now;
            if bytes > room {
                return Err(ControlError::Exhausted(format!(
                    "growing VM {:?} needs {} MiB of host node {host}'s ZONE_MOVABLE; {} MiB are free above its low watermark",
                    slot.id,
                    bytes >> 20,
                    room >> 20
                )));
            }
        }
        Ok(())
    }

    /// The balloon of VM `id`.
    pub fn balloon_info(&self, id: &str) -> Result<BalloonReport, ControlError> {
        let s = self.slot(id)?;
        s.balloon_report()
            .ok_or_else(|| ControlError::NoBalloon(s.id.clone()))
    }

    /// Sets a VM's balloon target (see [`SetBalloon`]); returns the balloon at once (the
    /// guest inflates or deflates in the background: poll [`ControlPlane::balloon_info`]).
    pub fn set_balloon(&self, req: &SetBalloon) -> Result<BalloonReport, ControlError> {
        let s = self.slot(&req.id)?;
        let _op = lock(&s.op);
        s.expect_state(&[VmState::Running, VmState::Paused], "set the balloon of")?;
        let b = s
            .balloon
            .as_ref()
            .ok_or_else(|| ControlError::NoBalloon(s.id.clone()))?;
        b.set_target(req.target).map_err(|e| match e {
            TargetError::Unaligned(_) => ControlError::Invalid(e.to_string()),
            _ => ControlError::BeyondLimits(e.to_string()),
        })?;
        Ok(BalloonReport::new(&b.info(), b.guest_ram()))
    }

    /// Resizes a VM or one of its nodes (see [`ResizeVm`]).
    pub fn resize(&self, req: &ResizeVm) -> Result<ResizeResult, ControlError> {
        if !req.size.is_multiple_of(RAM_ALIGN) {
            return Err(ControlError::Unaligned {
                what: "size",
                value: req.size,
                align: RAM_ALIGN,
            });
        }
        if req.wait_secs > MAX_WAIT_SECS {
            return Err(ControlError::BeyondLimits(format!(
                "wait_secs {} is beyond {MAX_WAIT_SECS}",
                req.wait_secs
            )));
        }
        let s = self.slot(&req.id)?;
        let _op = lock(&s.op);
        s.expect_state(&[VmState::Running], "resize")?;
        let targets = resize::plan_resize(&s.id, &s.limits(), req.node, req.size)?;
        let h = s.hotplug()?;
        let devices = h.nodes();
        resize::check_targets(&s.id, &devices, &targets)?;
        self.check_pool(&s, &devices, &targets, &BTreeMap::new())?;
        for &(n, t) in &targets {
            h.set_requested(n, t).map_err(ControlError::Internal)?;
        }
        let complete = s.wait_plugged(Duration::from_secs(req.wait_secs));
        // A shrink gave memory back: guests waiting for some retry now.
        self.kick_busy();
        Ok(ResizeResult {
            vm: s.info(),
            complete,
        })
    }

    /// Moves hot-plugged memory from one VM to another (see [`Rebalance`]): `from` shrinks;
    /// what it gives back within the wait, `to` is asked to plug.
    pub fn rebalance(&self, req: &Rebalance) -> Result<RebalanceResult, ControlError> {
        if req.from == req.to {
            return Err(ControlError::Invalid(format!(
                "rebalance needs two different VMs, got {:?} twice",
                req.from
            )));
        }
        if req.size == 0 {
            return Err(ControlError::Invalid(
                "rebalance size must be above 0".into(),
            ));
        }
        if !req.size.is_multiple_of(RAM_ALIGN) {
            return Err(ControlError::Unaligned {
                what: "size",
                value: req.size,
                align: RAM_ALIGN,
            });
        }
        if req.wait_secs > MAX_WAIT_SECS {
            return Err(ControlError::BeyondLimits(format!(
                "wait_secs {} is beyond {MAX_WAIT_SECS}",
                req.wait_secs
            )));
        }
        let a = self.slot(&req.from)?;
        let b = self.slot(&req.to)?;
        // Lock both VMs in id order (no deadlock with a rebalance the other way).
        let (_l1, _l2) = if a.id < b.id {
            (lock(&a.op), lock(&b.op))
        } else {
            let l2 = lock(&b.op);
            (lock(&a.op), l2)
        };
        a.expect_state(&[VmState::Running], "give memory")?;
        b.expect_state(&[VmState::Running], "take memory")?;
        let (ha, hb) = (a.hotplug()?, b.hotplug()?);
        let (da, db) = (ha.nodes(), hb.nodes());
        let shrink = resize::plan_shrink(&a.id, &da, req.from_node, req.size)?;
        let grow = resize::plan_grow(&b.id, &db, req.to_node, req.size)?;
        resize::check_targets(&a.id, &da, &shrink)?;
        resize::check_targets(&b.id, &db, &grow)?;
        // What A gives back returns to A's host nodes' pool: credit it to B there.
        let mut credit: BTreeMap<u32, u64> = BTreeMap::new();
        for &(n, t) in &shrink {
            let cur = da
                .iter()
                .find(|d| d.guest_node == n)
                .map_or(0, |d| d.requested);
            *credit.entry(a.host_node_of(n)).or_default() += cur.saturating_sub(t);
        }
        self.check_pool(&b, &db, &grow, &credit)?;

        let plugged = |h: &Arc<dyn HotplugMemory>| h.nodes().iter().map(|d| d.plugged).sum::<u64>();
        let before = plugged(ha);
        for &(n, t) in &shrink {
            ha.set_requested(n, t).map_err(ControlError::Internal)?;
        }
        // B grows as A's blocks come back, in B's block granularity: B is granted at most what
        // A has released so far, and A's guest offlining its next blocks overlaps B's guest
        // onlining the ones already moved (the move is not shrink time plus grow time).
        let block = db
            .iter()
            .map(|d| d.block_size)
            .max()
            .unwrap_or(RAM_ALIGN)
            .max(1);
        let deadline = Instant::now() + Duration::from_secs(req.wait_secs);
        let mut granted = 0;
        let stopped = loop {
            let released = before.saturating_sub(plugged(ha)).min(req.size);
            if a.state() == VmState::Stopped {
                break true;
            }
            let grantable = released - released % block;
            if grantable > granted {
                // Planned from B's devices before the move, so targets only ever rise.
                for (n, t) in resize::plan_grow(&b.id, &db, req.to_node, grantable)? {
                    hb.set_requested(n, t).map_err(ControlError::Internal)?;
                }
                granted = grantable;
                self.kick_busy();
            }
            if released >= req.size || Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.kick_busy();
        if stopped {
            // A died or powered off while giving memory back: what it still held went back to
            // the pool with its teardown, not through the guest; that is no move, and the
            // caller hears that A stopped. What its guest had released before is B's.
            return Err(if granted == 0 {
                ControlError::WrongState {
                    id: a.id.clone(),
                    state: "stopped",
                    verb: "finish giving memory (it stopped during the rebalance; its memory went back to the pool and nothing moved)",
                }
            } else {
                ControlError::WrongState {
                    id: a.id.clone(),
                    state: "stopped",
                    verb: "finish giving memory (it stopped during the rebalance; what it had released before moved to the target VM, the rest went back to the pool)",
                }
            });
        }
        let moved = granted;
        if moved > 0 {
            b.wait_plugged(deadline.saturating_duration_since(Instant::now()));
        }
        Ok(RebalanceResult {
            requested: req.size,
            moved,
            complete: moved == req.size,
            from: a.info(),
            to: b.info(),
        })
    }

    /// Stops every VM and waits for them (service shutdown).
    pub fn stop_all(&self) {
        let slots: Vec<Arc<VmSlot>> = lock(&self.vms).values().cloned().collect();
        for s in &slots {
            s.exit.request(ExitReason::Stopped);
        }
        for s in &slots {
            s.wait_stopped(STOP_TIMEOUT);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_all();
    }
}
