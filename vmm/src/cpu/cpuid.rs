//! Per-vCPU CPUID derived from `KVM_GET_SUPPORTED_CPUID`: the APIC id in leaves 1, 0xb and
//! 0x1f, and the [`CpuTopology`] (one package per guest NUMA node of single-threaded cores) in
//! leaves 1, 4, 0xb/0x1f and 0x8000_0008, so the guest's packages match its NUMA nodes.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use super::topology::CpuTopology;

/// Leaf 1 EDX: Hyper-Threading (more than one logical processor per package).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: TSC deadline timer (KVM emulates it with the in-kernel LAPIC).
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 0x8000_0001 ECX: TOPOEXT (we do not describe leaf 0x8000_001e).
const EXT1_ECX_TOPOEXT: u32 = 1 << 22;
/// Leaf 0x8000_0001 ECX: CmpLegacy (multi-core package).
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Extended topology level types (leaf 0xb ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Adjusts one CPUID entry for the vCPU with `apic_id` (`nvcpus` = cores per package).
fn patch(e: &mut kvm_cpuid_entry2, apic_id: u32, topo: &CpuTopology, tsc_deadline: bool) {
    let core_bits = topo.core_bits();
    let nvcpus = topo.cores_per_package();
    match e.function {
        0x1 => {
            e.ebx = (apic_id << 24) | (((1u32 << core_bits) & 0xff) << 16) | (8 << 8);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            if tsc_deadline {
                e.ecx |= LEAF1_ECX_TSC_DEADLINE;
            }
            if nvcpus > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
        }
        0x4 => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { nvcpus - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff)
                | ((sharing & 0xfff) << 14)
                | ((((1u32 << core_bits) - 1) & 0x3f) << 26);
        }
        0xb | 0x1f => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = nvcpus;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        0x8000_0001 => {
            e.ecx &= !EXT1_ECX_TOPOEXT;
            if nvcpus > 1 {
                e.ecx |= EXT1_ECX_CMP_LEGACY;
            } else {
                e.ecx &= !EXT1_ECX_CMP_LEGACY;
            }
        }
        0x8000_0008 => {
            // ECX[7:0]: cores - 1; ECX[15:12]: APIC id bits for the core id.
            e.ecx = (e.ecx & !0xf0ff) | ((core_bits & 0xf) << 12) | ((nvcpus - 1) & 0xff);
        }
        0x8000_001e => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

/// The XCR0 value enabling every XSAVE feature `cpuid` offers (leaf 0xd, subleaf 0), if any.
pub fn supported_xcr0(cpuid: &CpuId) -> Option<u64> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map(|e| u64::from(e.eax) | (u64::from(e.edx) << 32))
        .filter(|&x| x & 0x3 == 0x3)
}

/// The CPUID of the vCPU with `apic_id`, from the host-supported `base`.
pub fn vcpu_cpuid(base: &CpuId, apic_id: u32, topo: &CpuTopology, tsc_deadline: bool) -> CpuId {
    let mut c = base.clone();
    for e in c.as_mut_slice() {
        patch(e, apic_id, topo, tsc_deadline);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn topology_is_coherent() {
        let base = CpuId::from_entries(&[
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0008, 0),
        ])
        .expect("cpuid");
        let c = vcpu_cpuid(&base, 3, &CpuTopology::new(&[0, 0, 0, 0]), true);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].edx & LEAF1_EDX_HTT, 0);
        assert_ne!(e[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8, e[1].edx), (0, 1, 1, 3));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8, e[2].edx), (2, 4, 2, 3));
        assert_eq!((e[3].ebx, e[3].ecx), (0, 2));
        assert_eq!(e[4].ecx & 0xff, 3);
        assert_eq!((e[4].ecx >> 12) & 0xf, 2);
    }
}
