//! CPU templates: which of the CPUID features KVM supports a guest sees. [`CpuTemplate::Host`]
//! (the default) passes everything KVM offers; [`CpuTemplate::X86_64V2`] is the x86-64-v2
//! microarchitecture level (SSE4.2, POPCNT, CMPXCHG16B, no XSAVE and nothing that needs it:
//! AVX, AVX2, AVX-512, FMA, F16C, PKU, AMX, VAES...), for a fleet of mixed hosts or to compare
//! with a guest that runs without XSAVE (a guest of QEMU 7.2 on nested KVM under TCG turns
//! XSAVE off at boot: its XCR0 never reaches KVM). Without XSAVE the leaf 0xd entries go too,
//! so the vCPU starts with XCR0 untouched (see [`super::cpuid::supported_xcr0`]).

use kvm_bindings::CpuId;

/// What CPUID features a guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuTemplate {
    /// Everything KVM supports (`KVM_GET_SUPPORTED_CPUID`).
    #[default]
    Host,
    /// x86-64-v2: no XSAVE, nor any feature that depends on it or belongs to x86-64-v3+.
    X86_64V2,
}

/// An unknown template name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CPU template {0:?} (known: host, x86-64-v2)")]
pub struct UnknownTemplate(pub String);

impl std::str::FromStr for CpuTemplate {
    type Err = UnknownTemplate;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(CpuTemplate::Host),
            "x86-64-v2" => Ok(CpuTemplate::X86_64V2),
            other => Err(UnknownTemplate(other.to_string())),
        }
    }
}

impl std::fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuTemplate::Host => "host",
            CpuTemplate::X86_64V2 => "x86-64-v2",
        })
    }
}

/// Which register of a CPUID entry a mask applies to.
#[derive(Debug, Clone, Copy)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// Bits x86-64-v2 clears: `(leaf, subleaf, register, bits)`, named after the SDM/APM.
const X86_64_V2_CLEARS: &[(u32, u32, Reg, u32)] = &[
    // Leaf 1 ECX: FMA (12), MOVBE (22), XSAVE (26), OSXSAVE (27), AVX (28), F16C (29).
    (
        0x1,
        0,
        Reg::Ecx,
        1 << 12 | 1 << 22 | 1 << 26 | 1 << 27 | 1 << 28 | 1 << 29,
    ),
    // Leaf 7.0 EBX: BMI1 (3), AVX2 (5), BMI2 (8), AVX512F/DQ (16, 17), AVX512IFMA (21),
    // AVX512PF/ER/CD (26-28), AVX512BW/VL (30, 31).
    (
        0x7,
        0,
        Reg::Ebx,
        1 << 3
            | 1 << 5
            | 1 << 8
            | 1 << 16
            | 1 << 17
            | 1 << 21
            | 1 << 26
            | 1 << 27
            | 1 << 28
            | 1 << 30
            | 1 << 31,
    ),
    // Leaf 7.0 ECX: AVX512VBMI (1), PKU (3), OSPKE (4), AVX512_VBMI2 (6), VAES (9),
    // VPCLMULQDQ (10), AVX512_VNNI (11), AVX512_BITALG (12), AVX512_VPOPCNTDQ (14).
    (
        0x7,
        0,
        Reg::Ecx,
        1 << 1 | 1 << 3 | 1 << 4 | 1 << 6 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12 | 1 << 14,
    ),
    // Leaf 7.0 EDX: AVX512_4VNNIW/4FMAPS (2, 3), AVX512_VP2INTERSECT (8), AMX_BF16 (22),
    // AVX512_FP16 (23), AMX_TILE (24), AMX_INT8 (25).
    (
        0x7,
        0,
        Reg::Edx,
        1 << 2 | 1 << 3 | 1 << 8 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 25,
    ),
    // Leaf 7.1 EAX: AVX_VNNI (4), AVX512_BF16 (5), AVX_IFMA (23).
    (0x7, 1, Reg::Eax, 1 << 4 | 1 << 5 | 1 << 23),
    // Leaf 0x8000_0001 ECX: ABM/LZCNT (5), XOP (11), FMA4 (16), TBM (21).
    (
        0x8000_0001,
        0,
        Reg::Ecx,
        1 << 5 | 1 << 11 | 1 << 16 | 1 << 21,
    ),
];

impl CpuTemplate {
    /// Applies the template to `cpuid` (KVM's supported CPUID, before per-vCPU patching).
    pub fn apply(&self, cpuid: &mut CpuId) {
        if *self == CpuTemplate::Host {
            return;
        }
        for e in cpuid.as_mut_slice() {
            for &(leaf, subleaf, reg, bits) in X86_64_V2_CLEARS {
                if e.function == leaf && e.index == subleaf {
                    let r = match reg {
                        Reg::Eax => &mut e.eax,
                        Reg::Ebx => &mut e.ebx,
                        Reg::Ecx => &mut e.ecx,
                        Reg::Edx => &mut e.edx,
                    };
                    *r &= !bits;
                }
            }
            // No XSAVE: no XSAVE state components either.
            if e.function == 0xd {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32, value: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: value,
            ebx: value,
            ecx: value,
            edx: value,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("entry")
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for t in [CpuTemplate::Host, CpuTemplate::X86_64V2] {
            assert_eq!(t.to_string().parse::<CpuTemplate>(), Ok(t));
        }
        let e = "x86-64-v9".parse::<CpuTemplate>().expect_err("unknown");
        assert!(e.to_string().contains("x86-64-v9") && e.to_string().contains("host"));
        assert_eq!(CpuTemplate::default(), CpuTemplate::Host);
    }

    #[test]
    fn x86_64_v2_hides_xsave_and_what_needs_it_and_keeps_the_rest() {
        let all = u32::MAX;
        let base = CpuId::from_entries(&[
            entry(0x1, 0, all),
            entry(0x7, 0, all),
            entry(0x7, 1, all),
            entry(0xd, 0, all),
            entry(0xd, 1, all),
            entry(0x8000_0001, 0, all),
            entry(0x4000_0001, 0, all),
        ])
        .expect("cpuid");
        let mut host = base.clone();
        CpuTemplate::Host.apply(&mut host);
        assert_eq!(host, base, "host changes nothing");

        let mut v2 = base.clone();
        CpuTemplate::X86_64V2.apply(&mut v2);
        let l1 = find(&v2, 0x1, 0);
        for bit in [12, 22, 26, 27, 28, 29] {
            assert_eq!(l1.ecx & (1 << bit), 0, "leaf 1 ECX bit {bit}");
        }
        // SSE3 (0), SSSE3 (9), CX16 (13), SSE4.1/4.2 (19, 20), POPCNT (23) stay: x86-64-v2.
        for bit in [0, 9, 13, 19, 20, 23] {
            assert_ne!(l1.ecx & (1 << bit), 0, "leaf 1 ECX bit {bit} kept");
        }
        assert_eq!(l1.edx, all, "leaf 1 EDX untouched");
        let l7 = find(&v2, 0x7, 0);
        assert_eq!(l7.ebx & (1 << 5), 0, "AVX2");
        assert_eq!(l7.ebx & (1 << 16), 0, "AVX512F");
        assert_eq!(l7.ecx & (1 << 3), 0, "PKU");
        assert_eq!(l7.ecx & (1 << 9), 0, "VAES");
        assert_ne!(l7.ebx & 1, 0, "FSGSBASE kept");
        assert_eq!(find(&v2, 0x7, 1).eax & (1 << 4), 0, "AVX_VNNI");
        for sub in [0, 1] {
            let d = find(&v2, 0xd, sub);
            assert_eq!((d.eax, d.ebx, d.ecx, d.edx), (0, 0, 0, 0), "leaf 0xd.{sub}");
        }
        assert_eq!(
            super::super::cpuid::supported_xcr0(&v2),
            None,
            "XCR0 left alone"
        );
        assert_eq!(find(&v2, 0x8000_0001, 0).ecx & (1 << 5), 0, "LZCNT");
        assert_eq!(
            find(&v2, 0x4000_0001, 0).eax,
            all,
            "KVM's PV leaf untouched"
        );
    }
}
