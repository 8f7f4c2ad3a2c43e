//! memtide's virtual machine monitor: builds a VM from a [`VmConfig`], backs its RAM with pages
//! from the host pool (`memtide-allocator`), boots an unmodified Linux bzImage on KVM and runs
//! its devices (serial console, and later virtio-mmio, virtio-mem, virtio-balloon).
//!
//! Flow: [`config`] (pure validation) → [`vm::Vm::new`] (kernel checks, KVM VM with in-kernel
//! irqchip and PIT, [`memory`] from the pool, [`boot`] images and zero page, [`acpi`] tables,
//! [`devices`], [`cpu`] vCPUs) → [`vm::Vm::run`] (one thread per vCPU, the [`event_loop`] on
//! the calling thread) → an [`exit::ExitReason`].

pub mod acpi;
pub mod balloon;
pub mod boot;
pub mod config;
pub mod control;
pub mod cpu;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod hotplug;
pub mod layout;
pub mod memory;
pub mod pause;
pub mod terminal;
pub mod vm;
pub mod zones;

pub use config::{NumaNodeConfig, SerialOutput, VmConfig};
pub use cpu::template::CpuTemplate;
pub use exit::ExitReason;
pub use vm::{Console, Vm, VmError};
