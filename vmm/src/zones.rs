//! The closed loop with the allocator: the VMM knows the memory map it gives a guest, so
//! memtide-allocator's Linux-faithful zone computation on that map, with the guest's own
//! `kernelcore=`/`movablecore=`, predicts the guest's /proc/zoneinfo (spanned and present
//! pages per node and zone).

use memtide_allocator::layout::{LayoutError, ZoneLayout};

use crate::config::VmConfig;
use crate::layout::GuestMemoryMap;

/// The `memtide zones --node` specs (`N:START-END`, END inclusive) of the guest's memblock.
pub fn guest_node_specs(map: &GuestMemoryMap) -> Vec<String> {
    map.early_node_ranges()
        .into_iter()
        .map(|(n, s, e)| format!("{n}:{s:#x}-{e:#x}"))
        .collect()
}

/// The zone layout the guest kernel of `config` will compute at boot.
pub fn predict_guest_zones(config: &VmConfig) -> Result<ZoneLayout, LayoutError> {
    let map = GuestMemoryMap::new(&config.nodes());
    ZoneLayout::from_specs(
        &guest_node_specs(&map),
        config.guest_kernelcore.as_deref(),
        config.guest_movablecore.as_deref(),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use memtide_allocator::{NodeId, ZoneType};

    /// What a Debian 6.1 guest reported under memtide with 512 MiB on one node: DMA spanned
    /// 4095 present 3998, DMA32 spanned 126976 present 126976 (tests/vmm_boot).
    #[test]
    fn one_node_matches_the_booted_guest() {
        let c = VmConfig::new("/k".into(), 1, 512 << 20);
        let l = predict_guest_zones(&c).expect("layout");
        let dma = l.zone(NodeId(0), ZoneType::Dma).expect("DMA");
        assert_eq!((dma.spanned_pages, dma.present_pages), (4095, 3998));
        let dma32 = l.zone(NodeId(0), ZoneType::Dma32).expect("DMA32");
        assert_eq!((dma32.spanned_pages, dma32.present_pages), (126976, 126976));
    }

    #[test]
    fn movablecore_moves_pages_into_zone_movable() {
        let mut c = VmConfig::new("/k".into(), 1, 512 << 20);
        c.guest_movablecore = Some("128M".into());
        let l = predict_guest_zones(&c).expect("layout");
        let m = l.zone(NodeId(0), ZoneType::Movable).expect("Movable");
        assert_eq!(m.present_pages, 32768);
    }
}
