//! vCPUs: CPUID with a coherent topology ([`cpuid`]), boot MSRs ([`msrs`]), the 64-bit boot
//! register state ([`regs`]), CPU templates ([`template`]) and the run loop each vCPU thread
//! executes ([`vcpu`]).

pub mod cpuid;
pub mod msrs;
pub mod regs;
pub mod template;
pub mod topology;
pub mod vcpu;
