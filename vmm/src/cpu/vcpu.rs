//! One vCPU and the loop its thread runs: KVM_RUN, dispatch port I/O to the bus, stop when
//! the VM's exit signal is raised (other threads kick it out of KVM_RUN with a signal).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use kvm_bindings::{kvm_mp_state, CpuId, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use super::topology::CpuTopology;
use super::{cpuid, msrs, regs};
use crate::devices::PioBus;
use crate::exit::{ExitReason, ExitSignal};
use crate::memory::GuestMemory;

/// `KVM_SYSTEM_EVENT_SHUTDOWN` / `_RESET` (include/uapi/linux/kvm.h).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("creating vCPU {0}: {1}")]
    Create(u32, kvm_ioctls::Error),
    /// KVM_SET_CPUID2 failed.
    #[error("setting CPUID of vCPU {0}: {1}")]
    Cpuid(u32, kvm_ioctls::Error),
    /// Building or setting the MSRs failed.
    #[error("setting MSRs of vCPU {0}: {1}")]
    Msrs(u32, String),
    /// Register setup failed.
    #[error("setting registers of vCPU {0}: {1}")]
    Regs(u32, regs::RegsError),
    /// KVM_SET_MP_STATE failed.
    #[error("setting MP state {1} of vCPU {0}: {2}")]
    MpState(u32, u32, kvm_ioctls::Error),
    /// KVM_SET_XCRS failed.
    #[error("setting XCR0 of vCPU {0} to {1:#x}: {2}")]
    Xcr0(u32, u64, kvm_ioctls::Error),
    /// The kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of [`kick_signal`] once per process: its only effect is to
/// make a blocking KVM_RUN return EINTR.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    static FAILED: AtomicBool = AtomicBool::new(false);
    ONCE.call_once(|| {
        if vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler).is_err() {
            FAILED.store(true, Ordering::SeqCst);
        }
    });
    if FAILED.load(Ordering::SeqCst) {
        return Err(VcpuError::Signal(vmm_sys_util::errno::Error::new(
            libc::EINVAL,
        )));
    }
    Ok(())
}

/// Starts the vCPU with XCR0 = every XSAVE feature its CPUID offers, the value the guest
/// kernel enables at boot anyway. KVM derives CPUID[0xd,0].EBX (the XSAVE size) from its own
/// copy of XCR0; under nested KVM on QEMU TCG the guest's XSETBV does not reach KVM, the
/// size stays at the x87-only 576 bytes and the kernel disables XSAVE ("XSAVE consistency
/// problem"). With XCR0 preset the size is right from the start.
fn set_xcr0(fd: &VcpuFd, xcr0: u64) -> Result<(), kvm_ioctls::Error> {
    let mut xcrs = fd.get_xcrs()?;
    xcrs.nr_xcrs = 1;
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = xcr0;
    fd.set_xcrs(&xcrs)
}

/// Where a vCPU's MMIO exits go (e.g. the virtio-mmio windows of
/// [`crate::hotplug::VmHotplug`]). Each call returns false if no device holds `addr`.
pub trait MmioHandler: Send + Sync {
    /// A guest read of `data.len()` bytes at guest physical `addr`.
    fn read(&self, addr: u64, data: &mut [u8]) -> bool;
    /// A guest write at guest physical `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
    bus: Arc<PioBus>,
    exit: Arc<ExitSignal>,
    mmio: Option<Arc<dyn MmioHandler>>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("id", &self.id).finish()
    }
}

impl Vcpu {
    /// Creates the vCPU with APIC (and KVM vCPU) id `id` with CPUID for `topo`, MSRs and the
    /// LAPIC LINT pins set.
    pub fn new(
        vm: &VmFd,
        id: u32,
        topo: &CpuTopology,
        base_cpuid: &CpuId,
        tsc_deadline: bool,
        bus: Arc<PioBus>,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        let c = cpuid::vcpu_cpuid(base_cpuid, id, topo, tsc_deadline);
        fd.set_cpuid2(&c).map_err(|e| VcpuError::Cpuid(id, e))?;
        let m = msrs::boot_msrs().map_err(|e| VcpuError::Msrs(id, e.to_string()))?;
        let n = fd
            .set_msrs(&m)
            .map_err(|e| VcpuError::Msrs(id, e.to_string()))?;
        if n != m.as_slice().len() {
            let bad = m.as_slice().get(n).map_or(0, |e| e.index);
            return Err(VcpuError::Msrs(id, format!("KVM refused MSR {bad:#x}")));
        }
        regs::setup_lint(&fd).map_err(|e| VcpuError::Regs(id, e))?;
        if let Some(xcr0) = cpuid::supported_xcr0(&c) {
            set_xcr0(&fd, xcr0).map_err(|e| VcpuError::Xcr0(id, xcr0, e))?;
        }
        Ok(Vcpu {
            fd,
            id,
            bus,
            exit,
            mmio: None,
        })
    }

    /// Routes this vCPU's MMIO exits to `handler` (without one, reads see 0xff and writes
    /// are dropped).
    pub fn set_mmio_handler(&mut self, handler: Arc<dyn MmioHandler>) {
        self.mmio = Some(handler);
    }

    /// Makes this the boot vCPU: long mode at the kernel's 64-bit `entry`, runnable.
    pub fn setup_boot(&self, mem: &GuestMemory, entry: u64) -> Result<(), VcpuError> {
        regs::setup_boot_vcpu(&self.fd, mem, entry).map_err(|e| VcpuError::Regs(self.id, e))?;
        self.set_mp_state(KVM_MP_STATE_RUNNABLE)
    }

    /// Makes this an application processor: it waits in the in-kernel LAPIC for the guest's
    /// INIT/SIPI (`KVM_MP_STATE_UNINITIALIZED`), then starts at the SIPI vector.
    pub fn setup_ap(&self) -> Result<(), VcpuError> {
        self.set_mp_state(KVM_MP_STATE_UNINITIALIZED)
    }

    fn set_mp_state(&self, mp_state: u32) -> Result<(), VcpuError> {
        self.fd
            .set_mp_state(kvm_mp_state { mp_state })
            .map_err(|e| VcpuError::MpState(self.id, mp_state, e))
    }

    /// The KVM vCPU fd (for tests and special setups such as real mode).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs until the VM's exit signal is raised. Port I/O goes to the bus; a guest reset,
    /// triple fault or failure raises the exit signal itself.
    pub fn run(mut self) {
        // The kick must be deliverable to this thread.
        let _ = vmm_sys_util::signal::unblock_signal(kick_signal());
        while !self.exit.is_requested() {
            // Paused VMs wait here (see crate::pause); an exit request opens the gate.
            self.exit.pause_gate().park();
            if self.exit.is_requested() {
                break;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => self.bus.read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => self.bus.write(port, data),
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.as_ref().is_some_and(|m| m.read(addr, data)) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if let Some(m) = &self.mmio {
                        m.write(addr, data);
                    }
                }
                Ok(VcpuExit::Shutdown) => self.exit.request(ExitReason::Reset),
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => self.exit.request(ExitReason::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => self.exit.request(ExitReason::Reset),
                    other => self.exit.request(ExitReason::Error(format!(
                        "vCPU {}: unexpected system event {other}",
                        self.id
                    ))),
                },
                Ok(VcpuExit::Hlt) => {
                    // Only without an in-kernel LAPIC; a halted lone CPU never wakes.
                    self.exit
                        .request(ExitReason::Error(format!("vCPU {} halted", self.id)))
                }
                Ok(VcpuExit::Intr) => {}
                Ok(other) => self.exit.request(ExitReason::Error(format!(
                    "vCPU {}: unhandled exit {other:?}",
                    self.id
                ))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => self
                    .exit
                    .request(ExitReason::Error(format!("vCPU {}: KVM_RUN: {e}", self.id))),
            }
        }
    }
}
