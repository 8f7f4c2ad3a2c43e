//! The seam between the control plane and a VM: a [`Launcher`] builds a [`Machine`] from a
//! [`VmConfig`] on the shared pool; the control plane runs it on its own thread and talks to
//! it through its [`ExitSignal`] (stop, pause gate) and its [`HotplugMemory`] (virtio-mem).
//!
//! [`KvmLauncher`] builds real KVM VMs ([`Vm`]); tests may plug in their own launcher.

use std::sync::Arc;

use crate::config::VmConfig;
use crate::exit::{ExitReason, ExitSignal};
use crate::layout::GuestMemoryMap;
use crate::memory::host::HostMemory;
use crate::memory::pool::PoolBacking;
use crate::vm::{Console, Vm, VmError};

/// The hot-pluggable memory of one guest node as its virtio-mem device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugNode {
    /// Guest node.
    pub guest_node: u32,
    /// Device block size, bytes.
    pub block_size: u64,
    /// Region size, bytes.
    pub region_size: u64,
    /// `usable_region_size`, bytes.
    pub usable: u64,
    /// `plugged_size`, bytes.
    pub plugged: u64,
    /// `requested_size`, bytes.
    pub requested: u64,
}

/// A VM's virtio-mem devices, one per guest node with a hot-pluggable range.
pub trait HotplugMemory: Send + Sync {
    /// The devices' current sizes, by guest node.
    fn nodes(&self) -> Vec<HotplugNode>;
    /// Sets `requested_size` of `guest_node`'s device (a multiple of its block size, at
    /// most its usable size) and notifies the guest.
    fn set_requested(&self, guest_node: u32, bytes: u64) -> Result<(), String>;
    /// The devices' request counts and host time, summed (None: not measured).
    fn stats(&self) -> Option<crate::devices::virtio::mem::VirtioMemStats> {
        None
    }
    /// Memory went back to the pool: devices whose guest was answered BUSY (pool short)
    /// re-announce their configuration so the guest retries now, not at its retry timer.
    /// Returns how many devices were kicked.
    fn kick_busy(&self) -> usize {
        0
    }
    /// The pool blocks behind every plugged block, `(pfn, order)` (for the pool audit).
    fn pool_blocks(&self) -> Vec<(u64, u32)> {
        Vec::new()
    }
}

/// A built VM, ready to run on a thread of its own.
pub trait Machine: Send {
    /// The exit signal (stop requests, pause gate).
    fn exit_signal(&self) -> Arc<ExitSignal>;
    /// The guest memory map.
    fn memory_map(&self) -> GuestMemoryMap;
    /// The virtio-mem devices, if the VM has any.
    fn hotplug(&self) -> Option<Arc<dyn HotplugMemory>>;
    /// The virtio-balloon, if the VM has one.
    fn balloon(&self) -> Option<Arc<dyn crate::balloon::BalloonControl>> {
        None
    }
    /// The boot RAM's extents in the host memory (for the pool audit; fixed for the VM's
    /// life).
    fn boot_extents(&self) -> Vec<crate::memory::backing::BackingExtent> {
        Vec::new()
    }
    /// Runs until the VM ends; boot RAM goes back to the pool when this returns.
    fn run(self: Box<Self>) -> Result<ExitReason, VmError>;
}

/// Builds machines.
pub trait Launcher: Send + Sync {
    /// Builds a VM from a validated `config` whose serial console is already set, its RAM
    /// from `pool` over `host`. On error nothing stays allocated.
    fn launch(
        &self,
        config: &VmConfig,
        pool: &PoolBacking,
        host: &Arc<HostMemory>,
    ) -> Result<Box<dyn Machine>, VmError>;
}

/// Builds real KVM VMs.
#[derive(Debug, Default)]
pub struct KvmLauncher;

impl Machine for Vm {
    fn exit_signal(&self) -> Arc<ExitSignal> {
        Vm::exit_signal(self)
    }

    fn memory_map(&self) -> GuestMemoryMap {
        Vm::memory_map(self).clone()
    }

    fn hotplug(&self) -> Option<Arc<dyn HotplugMemory>> {
        Vm::hotplug(self)
    }

    fn balloon(&self) -> Option<Arc<dyn crate::balloon::BalloonControl>> {
        Vm::balloon(self)
    }

    fn boot_extents(&self) -> Vec<crate::memory::backing::BackingExtent> {
        Vm::boot_extents(self).to_vec()
    }

    fn run(self: Box<Self>) -> Result<ExitReason, VmError> {
        Vm::run(*self, false)
    }
}

impl Launcher for KvmLauncher {
    fn launch(
        &self,
        config: &VmConfig,
        pool: &PoolBacking,
        host: &Arc<HostMemory>,
    ) -> Result<Box<dyn Machine>, VmError> {
        let console = Console::open(&config.serial_output)?;
        let vm = Vm::with_pool(config, host.clone(), pool, console)?;
        Ok(Box::new(vm))
    }
}
