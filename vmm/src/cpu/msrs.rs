//! Model-specific registers every vCPU starts with (as a BIOS would leave them).

use kvm_bindings::{kvm_msr_entry, Msrs};

/// MSR numbers (arch/x86/include/asm/msr-index.h).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Errors building the MSR list.
#[derive(Debug, thiserror::Error)]
#[error("building the MSR list: {0:?}")]
pub struct MsrError(pub vmm_sys_util::fam::Error);

/// The boot MSRs.
pub fn boot_msrs() -> Result<Msrs, MsrError> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ])
    .map_err(MsrError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_list_builds() {
        let m = boot_msrs().expect("fits");
        assert_eq!(m.as_slice().len(), 11);
        assert!(m
            .as_slice()
            .iter()
            .any(|e| e.index == MSR_MTRR_DEF_TYPE && e.data == MTRR_ENABLE_WB));
    }
}
