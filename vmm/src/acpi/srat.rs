//! SRAT: the proximity domain (guest NUMA node) of every vCPU and every memory range, the
//! hot-pluggable ranges flagged so (they are absent from e820 and wait for virtio-mem).

use acpi_tables::sdt::Sdt;
use acpi_tables::srat::MemoryAffinity;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::GuestMemoryMap;

/// SRAT structure type of a processor local APIC affinity entry.
const TYPE_LOCAL_APIC_AFFINITY: u8 = 0;

/// The SRAT for vCPUs on `vcpu_nodes` with `apic_ids` (both by vCPU index) and the memory of
/// `map`.
pub fn srat(vcpu_nodes: &[u32], apic_ids: &[u32], map: &GuestMemoryMap) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"SRAT", 36, 3, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    body.extend(1u32.to_le_bytes()); // reserved, 1 for compatibility
    body.extend(0u64.to_le_bytes());
    for (&apic, &node) in apic_ids.iter().zip(vcpu_nodes) {
        let pd = node.to_le_bytes();
        body.extend([TYPE_LOCAL_APIC_AFFINITY, 16, pd[0], apic as u8]);
        body.extend(1u32.to_le_bytes()); // enabled
        body.push(0); // local SAPIC EID
        body.extend(&pd[1..4]);
        body.extend(0u32.to_le_bytes()); // clock domain
    }
    for r in &map.ram {
        MemoryAffinity::new(r.guest_node, r.start, r.size)
            .enabled()
            .to_aml_bytes(&mut body);
    }
    for h in &map.hotplug {
        MemoryAffinity::new(h.guest_node, h.start, h.size)
            .enabled()
            .hotpluggable()
            .to_aml_bytes(&mut body);
    }
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NumaNodeConfig;

    #[test]
    fn srat_lists_cpus_and_memory_per_node() {
        let nodes: Vec<NumaNodeConfig> = (0..2)
            .map(|i| NumaNodeConfig {
                guest_node: i,
                vcpus: vec![i],
                memory: 256 << 20,
                host_node: 0,
                hotplug_size: if i == 1 { 1 << 30 } else { 0 },
            })
            .collect();
        let s = srat(&[0, 1, 1], &[0, 2, 3], &GuestMemoryMap::new(&nodes));
        assert_eq!(super::super::checksum(&s), 0);
        let mut off = 48;
        let (mut cpus, mut mems) = (Vec::new(), Vec::new());
        while off < s.len() {
            match s[off] {
                0 => cpus.push((s[off + 3], s[off + 2])),
                1 => {
                    let pd = u32::from_le_bytes(s[off + 2..off + 6].try_into().expect("4"));
                    let base = u64::from_le_bytes(s[off + 8..off + 16].try_into().expect("8"));
                    let flags = u32::from_le_bytes(s[off + 28..off + 32].try_into().expect("4"));
                    mems.push((pd, base, flags));
                }
                t => panic!("unexpected SRAT entry type {t}"),
            }
            off += s[off + 1] as usize;
        }
        assert_eq!(cpus, vec![(0, 0), (2, 1), (3, 1)]);
        assert_eq!(mems, vec![(0, 0, 1), (1, 256 << 20, 1), (1, 4 << 30, 3)]);
    }
}
