//! Register state for the 64-bit boot protocol: a flat GDT, identity-mapped page tables for
//! the first 1 GiB, long mode on, `rip` at the kernel's 64-bit entry and `rsi` at the zero
//! page (Documentation/x86/boot.rst, "64-bit BOOT PROTOCOL"). Also the local APIC's LINT0/1.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};
use crate::memory::GuestMemory;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// Local APIC register offsets (Intel SDM vol. 3, 10.4.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// LVT delivery modes.
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// Errors setting up vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Writing the GDT/IDT/page tables failed.
    #[error("writing boot structures: {0}")]
    Memory(vm_memory::GuestMemoryError),
}

/// A GDT entry from flags, base and limit (the kernel's `GDT_ENTRY`).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM segment of GDT entry `entry` at index `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let limit_raw = ((entry & 0x000f_0000_0000_0000) >> 32 | (entry & 0xffff)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if present == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Writes the GDT, an empty IDT and the identity page tables; returns the special registers
/// for long mode based on `sregs` (as read from the vCPU).
pub fn long_mode_sregs(mem: &GuestMemory, mut sregs: kvm_sregs) -> Result<kvm_sregs, RegsError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(RegsError::Memory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::Memory)?;
    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    // PML4[0] -> PDPT, PDPT[0] -> PD, PD maps 0..1 GiB with 2 MiB pages (present, rw, PS).
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(RegsError::Memory)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(RegsError::Memory)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(RegsError::Memory)?;
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// General registers at the kernel's 64-bit entry.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// FPU state after reset (x87 control word 0x37f, MXCSR 0x1f80).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Sets up the boot vCPU: long-mode special registers, general registers, FPU.
pub fn setup_boot_vcpu(fd: &VcpuFd, mem: &GuestMemory, entry: u64) -> Result<(), RegsError> {
    let sregs = fd
        .get_sregs()
        .map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    let sregs = long_mode_sregs(mem, sregs)?;
    fd.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))?;
    fd.set_regs(&boot_regs(entry))
        .map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))?;
    fd.set_fpu(&boot_fpu())
        .map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))
}

fn get_u32(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let b: [u8; 4] = std::array::from_fn(|i| regs[off + i] as u8);
    u32::from_le_bytes(b)
}

fn set_u32(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as std::os::raw::c_char;
    }
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a BIOS leaves them.
pub fn setup_lint(fd: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = fd
        .get_lapic()
        .map_err(|e| RegsError::Kvm("KVM_GET_LAPIC", e))?;
    let lvt0 = get_u32(&lapic.regs, APIC_LVT0);
    set_u32(
        &mut lapic.regs,
        APIC_LVT0,
        (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8),
    );
    let lvt1 = get_u32(&lapic.regs, APIC_LVT1);
    set_u32(
        &mut lapic.regs,
        APIC_LVT1,
        (lvt1 & !0x700) | (APIC_MODE_NMI << 8),
    );
    fd.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn gdt_segments_decode() {
        let code = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(
            (code.selector, code.l, code.present, code.type_),
            (8, 1, 1, 0xb)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let tss = segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!((tss.selector, tss.type_, tss.s), (0x18, 0xb, 0));
    }

    #[test]
    fn page_tables_identity_map() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        let s = long_mode_sregs(&mem, kvm_sregs::default()).expect("sregs");
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.efer & EFER_LMA, 0);
        let pde5: u64 = mem.read_obj(GuestAddress(PDE_START + 5 * 8)).expect("pde");
        assert_eq!(pde5, (5 << 21) | 0x83);
    }
}
