//! The guest CPU topology: one package (socket) per guest NUMA node, single-threaded cores.
//! A vCPU's APIC id is `(node << core_bits) | position in its node`, so the package id the
//! guest derives from CPUID equals the NUMA node and no cache is shared across nodes.

/// Where every vCPU sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuTopology {
    apic_ids: Vec<u32>,
    core_bits: u32,
    cores_per_package: u32,
}

/// Bits needed to number `n` items (ceil(log2(n))).
pub fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl CpuTopology {
    /// The topology for vCPUs on guest nodes `vcpu_nodes` (index = vCPU).
    pub fn new(vcpu_nodes: &[u32]) -> Self {
        let nodes = vcpu_nodes.iter().copied().max().map_or(0, |m| m + 1);
        let mut count = vec![0u32; nodes as usize];
        let mut position = Vec::with_capacity(vcpu_nodes.len());
        for &n in vcpu_nodes {
            position.push(count[n as usize]);
            count[n as usize] += 1;
        }
        let cores_per_package = count.iter().copied().max().unwrap_or(1).max(1);
        let core_bits = bits_for(cores_per_package);
        let apic_ids = vcpu_nodes
            .iter()
            .zip(position)
            .map(|(&n, p)| (n << core_bits) | p)
            .collect();
        CpuTopology {
            apic_ids,
            core_bits,
            cores_per_package,
        }
    }

    /// APIC id of vCPU `index`.
    pub fn apic_id(&self, index: usize) -> u32 {
        self.apic_ids[index]
    }

    /// APIC ids, by vCPU index.
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids
    }

    /// The largest APIC id.
    pub fn max_apic_id(&self) -> u32 {
        self.apic_ids.iter().copied().max().unwrap_or(0)
    }

    /// APIC id bits of the core within a package.
    pub fn core_bits(&self) -> u32 {
        self.core_bits
    }

    /// Cores (= logical CPUs) in the largest package.
    pub fn cores_per_package(&self) -> u32 {
        self.cores_per_package
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_package_per_node() {
        let t = CpuTopology::new(&[0, 0, 1, 1, 1]);
        assert_eq!(t.core_bits(), 2);
        assert_eq!(t.cores_per_package(), 3);
        assert_eq!(t.apic_ids(), &[0, 1, 4, 5, 6]);
        let t = CpuTopology::new(&[1, 0]);
        assert_eq!(t.apic_ids(), &[1, 0]);
        let t = CpuTopology::new(&[0, 0, 0, 0]);
        assert_eq!(t.apic_ids(), &[0, 1, 2, 3]);
        assert_eq!(
            [
                bits_for(1),
                bits_for(2),
                bits_for(3),
                bits_for(4),
                bits_for(5)
            ],
            [0, 1, 2, 2, 3]
        );
    }
}
