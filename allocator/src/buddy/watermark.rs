//! Watermarks and lowmem reserves, computed as Linux 6.1 computes them
//! (`calculate_min_free_kbytes`, `__setup_per_zone_wmarks`, `setup_per_zone_lowmem_reserve`,
//! `__zone_watermark_ok`).
//!
//! What the pool chose for the allocation path (documented in [`super`]): the first pass over
//! the zonelist requires the LOW watermark (`ALLOC_WMARK_LOW`, the kernel's fast path); if no
//! zone qualifies, a second pass requires only MIN (`ALLOC_WMARK_MIN`, what the slow path
//! uses after waking kswapd). There is no reclaim, so an allocation that would take a zone to
//! or below `min + lowmem_reserve[highest_zoneidx]` fails with
//! [`super::BuddyError::NoMemory`].

use super::free_area::FreeArea;
use super::pageblock::{list_index, NR_FREE_LISTS};
use crate::types::{MigrateType, ZoneType, MAX_ORDER, PAGE_SHIFT};

/// Zones per node whose reserve appears in `/proc/zoneinfo`'s `protection:` line:
/// DMA, DMA32, Normal, Movable and Device (`MAX_NR_ZONES` of an x86_64 kernel with
/// `CONFIG_ZONE_DEVICE`, as Debian's 6.1 kernels are built). ZONE_DEVICE never has pages.
pub const MAX_NR_ZONES: usize = 5;

/// `sysctl_lowmem_reserve_ratio[]` defaults: DMA 256, DMA32 256, Normal 32, Movable 0
/// (and Device 0).
pub const DEFAULT_LOWMEM_RESERVE_RATIO: [u64; MAX_NR_ZONES] = [256, 256, 32, 0, 0];

/// `watermark_scale_factor` default (10, i.e. 0.1% of the zone).
pub const DEFAULT_WATERMARK_SCALE_FACTOR: u64 = 10;

/// `SWAP_CLUSTER_MAX`.
const SWAP_CLUSTER_MAX: u64 = 32;

/// Which watermark an allocation pass checks (`ALLOC_WMARK_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wmark {
    /// `WMARK_MIN`.
    Min = 0,
    /// `WMARK_LOW`.
    Low = 1,
    /// `WMARK_HIGH`.
    High = 2,
}

/// `int_sqrt()`: the integer square root, rounded down.
pub fn int_sqrt(x: u64) -> u64 {
    if x < 2 {
        return x;
    }
    let mut r = (x as f64).sqrt() as u64;
    while r * r > x {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= x {
        r += 1;
    }
    r
}

/// `calculate_min_free_kbytes()`: `int_sqrt(lowmem_kbytes * 16)` clamped to
/// `[128, 262144]`, where `lowmem_kbytes` is the managed memory of all zones below
/// ZONE_MOVABLE (`nr_free_buffer_pages()` at boot, before any watermark exists).
pub fn calculate_min_free_kbytes(lowmem_kbytes: u64) -> u64 {
    int_sqrt(lowmem_kbytes * 16).clamp(128, 262_144)
}

fn mult_frac(x: u64, n: u64, d: u64) -> u64 {
    (x / d) * n + ((x % d) * n) / d
}

/// `__setup_per_zone_wmarks()` over all zones of all nodes, given as (zone type, managed
/// pages). Returns `[min, low, high]` per zone in the same order.
pub fn setup_per_zone_wmarks(
    min_free_kbytes: u64,
    watermark_scale_factor: u64,
    zones: &[(ZoneType, u64)],
) -> Vec<[u64; 3]> {
    let pages_min = min_free_kbytes >> (PAGE_SHIFT - 10);
    let lowmem_pages: u64 = zones
        .iter()
        .filter(|(t, _)| *t != ZoneType::Movable)
        .map(|(_, m)| m)
        .sum();
    zones
        .iter()
        .map(|&(zt, managed)| {
            let tmp = if lowmem_pages == 0 {
                0
            } else {
                ((u128::from(pages_min) * u128::from(managed)) / u128::from(lowmem_pages)) as u64
            };
            let min = if zt == ZoneType::Movable {
                (managed / 1024).clamp(SWAP_CLUSTER_MAX, 128)
            } else {
                tmp
            };
            let delta = (tmp >> 2).max(mult_frac(managed, watermark_scale_factor, 10_000));
            let low = min + delta;
            [min, low, low + delta]
        })
        .collect()
}

/// `setup_per_zone_lowmem_reserve()` for one node: `managed[i]` are the managed pages of
/// zone `i` (DMA, DMA32, Normal, Movable, Device). Returns `lowmem_reserve[i][j]`.
pub fn setup_per_zone_lowmem_reserve(
    managed: &[u64; MAX_NR_ZONES],
    ratio: &[u64; MAX_NR_ZONES],
) -> [[u64; MAX_NR_ZONES]; MAX_NR_ZONES] {
    let mut reserve = [[0; MAX_NR_ZONES]; MAX_NR_ZONES];
    for i in 0..MAX_NR_ZONES - 1 {
        let clear = ratio[i] == 0 || managed[i] == 0;
        let mut managed_pages = 0;
        for j in i + 1..MAX_NR_ZONES {
            managed_pages += managed[j];
            reserve[i][j] = if clear { 0 } else { managed_pages / ratio[i] };
        }
    }
    reserve
}

/// `__zone_watermark_ok()` (no high-atomic reserve, no CMA, no ALLOC_HIGH/HARDER): whether a
/// zone with `free_pages` free pages may serve an `order` allocation against `mark` plus the
/// reserve it keeps for requests whose highest zone is `highest_zoneidx`.
pub fn zone_watermark_ok(
    free_pages: u64,
    order: u32,
    mark: u64,
    lowmem_reserve: u64,
    area: &[FreeArea; MAX_ORDER],
) -> bool {
    let free_pages = free_pages as i64 - ((1i64 << order) - 1);
    if free_pages <= (mark + lowmem_reserve) as i64 {
        return false;
    }
    if order == 0 {
        return true;
    }
    area[order as usize..].iter().any(|a| {
        a.nr_free != 0
            && MigrateType::PCPTYPES
                .iter()
                .any(|&mt| a.nr_free_mt[list_index(mt)] != 0)
    })
}

const _: () = assert!(NR_FREE_LISTS == 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_kbytes_examples() {
        // 4 GiB of lowmem: sqrt(4194304 * 16) = 8192.
        assert_eq!(calculate_min_free_kbytes(4 << 20), 8192);
        assert_eq!(calculate_min_free_kbytes(100), 128);
        assert_eq!(calculate_min_free_kbytes(1 << 40), 262_144);
        assert_eq!(int_sqrt(15), 3);
        assert_eq!(int_sqrt(16), 4);
    }

    #[test]
    fn wmarks_split_min_by_managed_and_cap_movable() {
        let zones = [
            (ZoneType::Dma, 3_998),
            (ZoneType::Dma32, 1_000_000),
            (ZoneType::Normal, 3_000_000),
            (ZoneType::Movable, 2_000_000),
        ];
        let w = setup_per_zone_wmarks(16_384, 10, &zones);
        // pages_min = 4096, lowmem = 4_003_998.
        let tmp_dma = 4096 * 3_998 / 4_003_998;
        assert_eq!(w[0][0], tmp_dma);
        let tmp_n = 4096u64 * 3_000_000 / 4_003_998;
        assert_eq!(w[2][0], tmp_n);
        let d = (tmp_n / 4).max(3_000);
        assert_eq!(w[2][1], tmp_n + d);
        assert_eq!(w[2][2], tmp_n + 2 * d);
        // Movable: min capped to clamp(managed/1024, 32, 128); deltas from the uncapped tmp.
        assert_eq!(w[3][0], 128);
        let tmp_m = 4096u64 * 2_000_000 / 4_003_998;
        assert_eq!(w[3][1], 128 + (tmp_m / 4).max(2_000));
    }

    #[test]
    fn lowmem_reserve_like_linux() {
        let r = setup_per_zone_lowmem_reserve(
            &[3_998, 1_000_000, 3_000_000, 2_000_000, 0],
            &DEFAULT_LOWMEM_RESERVE_RATIO,
        );
        assert_eq!(r[0], [0, 3906, 15625, 23437, 23437]);
        assert_eq!(r[1], [0, 0, 11718, 19531, 19531]);
        assert_eq!(r[2], [0, 0, 0, 62500, 62500]);
        assert_eq!(r[3], [0; 5]);
    }

    #[test]
    fn watermark_ok_checks_reserve_and_high_order() {
        let mut area = [FreeArea::default(); MAX_ORDER];
        assert!(!zone_watermark_ok(100, 0, 90, 10, &area));
        assert!(zone_watermark_ok(101, 0, 90, 10, &area));
        assert!(!zone_watermark_ok(1000, 3, 90, 10, &area));
        area[5].nr_free = 1;
        area[5].nr_free_mt[list_index(MigrateType::Isolate)] = 1;
        assert!(!zone_watermark_ok(1000, 3, 90, 10, &area));
        area[5].nr_free_mt[list_index(MigrateType::Movable)] = 1;
        assert!(zone_watermark_ok(1000, 3, 90, 10, &area));
    }
}
