//! memtide's host memory pool, modelled on Linux's page allocator.
//!
//! Data flows in one direction: a host memory map (physical ranges per NUMA node, like
//! memblock) and the `kernelcore=` / `movablecore=` arguments go into [`layout`], which sizes
//! the zones (DMA, DMA32, Normal, Movable) of every node exactly as Linux 6.1 does on x86_64
//! (`free_area_init`, `find_zone_movable_pfns_for_nodes`). The resulting zone descriptors feed
//! the buddy allocator ([`buddy`]), which hands out pages by order and migratetype through
//! zonelists, keeps watermarks, isolates ranges of ZONE_MOVABLE for offlining and reports in
//! the formats of `/proc/zoneinfo` and `/proc/buddyinfo`.
//!
//! This crate is pure: no KVM, no I/O. The VMM maps what it allocates here onto memfds.

pub mod buddy;
pub mod layout;
pub mod types;

pub use types::*;
