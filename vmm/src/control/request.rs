//! The control plane's typed internal API: one struct per verb, [`Request`] to carry any of
//! them, [`Response`] for what comes back. Front ends (the REST API, tests) build these.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::info::{PoolInfo, VmInfo};
use crate::config::VmConfig;

/// Create a VM from `config` and boot it.
#[derive(Debug, Clone)]
pub struct CreateVm {
    /// The id (`None`: the first free `vmN`).
    pub id: Option<String>,
    /// The VM; stdin input is ignored (a service has no terminal). A console socket
    /// ([`crate::config::SerialOutput::Socket`]) is kept; otherwise serial output goes to
    /// `console` if given, else the control plane's console dir, else the service's stdout.
    pub config: VmConfig,
    /// Console file.
    pub console: Option<PathBuf>,
}

/// Names a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRef {
    /// The VM's id.
    pub id: String,
}

/// Resize a VM, or one of its guest nodes, to `size` bytes of memory (boot + plugged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResizeVm {
    /// The VM.
    pub id: String,
    /// One guest node, or the whole VM.
    pub node: Option<u32>,
    /// Target memory, bytes.
    pub size: u64,
    /// Wait up to this long for the guest to plug/unplug (0: return at once).
    pub wait_secs: u64,
}

/// Set a VM's balloon target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetBalloon {
    /// The VM.
    pub id: String,
    /// The target: the guest size the guest should end up with, or the balloon size.
    pub target: crate::balloon::BalloonTarget,
}

/// Move `size` bytes of hot-plugged memory from VM `from` to VM `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebalance {
    /// The VM that shrinks.
    pub from: String,
    /// The VM that grows.
    pub to: String,
    /// Bytes to move.
    pub size: u64,
    /// Only this guest node of `from`.
    pub from_node: Option<u32>,
    /// Only this guest node of `to`.
    pub to_node: Option<u32>,
    /// How long to wait for `from`'s guest to give the memory back.
    pub wait_secs: u64,
}

/// Outcome of a resize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeResult {
    /// The VM after the request (per node requested/plugged).
    pub vm: VmInfo,
    /// Whether every node's plugged size reached its requested size within the wait.
    pub complete: bool,
}

/// Outcome of a rebalance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceResult {
    /// Bytes asked for.
    pub requested: u64,
    /// Bytes `from` gave back within the wait (and `to` was asked to plug).
    pub moved: u64,
    /// Whether all of `requested` moved.
    pub complete: bool,
    /// `from` afterwards.
    pub from: VmInfo,
    /// `to` afterwards.
    pub to: VmInfo,
}

/// Any verb.
#[derive(Debug, Clone)]
pub enum Request {
    /// [`CreateVm`].
    CreateVm(CreateVm),
    /// List every VM.
    ListVms,
    /// Info of one VM.
    VmInfo(VmRef),
    /// Pause a running VM.
    Pause(VmRef),
    /// Resume a paused VM.
    Resume(VmRef),
    /// Stop a running or paused VM (its boot RAM returns to the pool).
    Shutdown(VmRef),
    /// Forget a stopped VM.
    Delete(VmRef),
    /// [`ResizeVm`].
    Resize(ResizeVm),
    /// [`Rebalance`].
    Rebalance(Rebalance),
    /// [`SetBalloon`].
    SetBalloon(SetBalloon),
    /// The VM's balloon.
    BalloonInfo(VmRef),
    /// The host pool.
    PoolInfo,
    /// Audit the pool against the VMs' holdings.
    PoolAudit,
}

/// What a verb returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// One VM.
    Vm(Box<VmInfo>),
    /// Every VM.
    Vms(Vec<VmInfo>),
    /// The VM is gone.
    Deleted,
    /// A resize.
    Resize(Box<ResizeResult>),
    /// A rebalance.
    Rebalance(Box<RebalanceResult>),
    /// The pool.
    Pool(Box<PoolInfo>),
    /// A pool audit.
    PoolAudit(Box<super::audit::PoolAudit>),
    /// A balloon.
    Balloon(Box<super::info::BalloonReport>),
}
