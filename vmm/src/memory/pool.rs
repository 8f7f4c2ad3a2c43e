//! Boot RAM from the host memory pool (memtide-allocator's buddy [`Pool`]).
//!
//! The pool's physical address space is the host memory memtide manages: each host node's
//! memfd is one range of it, laid out one after the other from address 0 (so host node `n`'s
//! page `p` is pfn `node_start_pfn(n) + p`, and memfd offset `p * 4096`). Its zones come from
//! the allocator's Linux-faithful layout with the host-side `kernelcore=`/`movablecore=`.
//! Boot RAM is requested as UNMOVABLE, which the pool never serves from ZONE_MOVABLE (that
//! is kept for virtio-mem blocks); blocks are at most order 10 (4 MiB).

use std::collections::BTreeMap;
use std::sync::Arc;

use memtide_allocator::buddy::{AllocRequest, BuddyError, Pool, PoolConfig};
use memtide_allocator::layout::{LayoutError, ZoneLayout};
use memtide_allocator::{MigrateType, NodeId, Order, Pfn, ZoneType, MAX_ORDER, PAGE_SIZE};

use super::backing::{BackingAllocator, BackingError, BackingExtent};

/// Errors building the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolBackingError {
    /// The host memory map or kernelcore/movablecore is invalid.
    #[error("host memory pool layout: {0}")]
    Layout(#[from] LayoutError),
    /// The buddy allocator refused the zones.
    #[error("host memory pool: {0}")]
    Buddy(#[from] BuddyError),
    /// A host node was given twice or with no memory.
    #[error("host node {0} given twice or with a size that is not a positive multiple of 4 MiB")]
    BadNode(u32),
}

/// The pool as a [`BackingAllocator`].
#[derive(Debug, Clone)]
pub struct PoolBacking {
    pool: Arc<Pool>,
    /// host node → (first pfn, pages) of its range in the pool.
    nodes: BTreeMap<u32, (u64, u64)>,
}

/// Largest block the pool hands out for guest RAM (order 10, 4 MiB, `MAX_ORDER - 1`).
const MAX_BLOCK_ORDER: u32 = (MAX_ORDER - 1) as u32;

impl PoolBacking {
    /// A pool over `(host node, bytes)` ranges (each a multiple of 4 MiB), zoned with the
    /// host-side `kernelcore`/`movablecore` (kernel syntax).
    pub fn new(
        nodes: &[(u32, u64)],
        kernelcore: Option<&str>,
        movablecore: Option<&str>,
    ) -> Result<Self, PoolBackingError> {
        let block = PAGE_SIZE << MAX_BLOCK_ORDER;
        let mut sorted = nodes.to_vec();
        sorted.sort_by_key(|n| n.0);
        let mut map = BTreeMap::new();
        let mut specs = Vec::new();
        let mut next = 0u64;
        for &(node, bytes) in &sorted {
            if bytes == 0 || !bytes.is_multiple_of(block) || map.contains_key(&node) {
                return Err(PoolBackingError::BadNode(node));
            }
            specs.push(format!("{node}:{next:#x}-{:#x}", next + bytes - 1));
            map.insert(node, (next / PAGE_SIZE, bytes / PAGE_SIZE));
            next += bytes;
        }
        let layout = ZoneLayout::from_specs(&specs, kernelcore, movablecore, false)?;
        let pool = Pool::new(&layout.zone_descriptors(), PoolConfig::default())?;
        Ok(PoolBacking {
            pool: Arc::new(pool),
            nodes: map,
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// `(first pfn, pages)` of `host_node`'s range in the pool (its memfd offset 0 is the
    /// first pfn).
    pub fn node_pfn_range(&self, host_node: u32) -> Option<(u64, u64)> {
        self.nodes.get(&host_node).copied()
    }

    /// Bytes of memfd each host node needs (for [`super::host::HostMemory::new`]).
    pub fn memfd_sizes(&self) -> Vec<(u32, u64)> {
        self.nodes
            .iter()
            .map(|(&n, &(_, pages))| (n, pages * PAGE_SIZE))
            .collect()
    }

    /// Free pages of `host_node` in zones boot RAM may use (all but ZONE_MOVABLE).
    pub fn free_kernel_pages(&self, host_node: u32) -> u64 {
        ZoneType::ALL
            .iter()
            .filter(|z| **z != ZoneType::Movable)
            .filter_map(|z| self.pool.zone(NodeId(host_node), *z))
            .map(|z| z.nr_free_pages())
            .sum()
    }

    fn free_blocks(&self, blocks: &[(Pfn, u32)]) {
        for &(pfn, order) in blocks {
            // The block came from this pool with this order: freeing cannot fail.
            let _ = self.pool.free(pfn, Order(order));
        }
    }
}

impl BackingAllocator for PoolBacking {
    fn alloc_boot_ram(
        &mut self,
        host_node: u32,
        bytes: u64,
    ) -> Result<Vec<BackingExtent>, BackingError> {
        if !bytes.is_multiple_of(PAGE_SIZE) {
            return Err(BackingError::Unaligned(bytes));
        }
        let &(start, pages) = self
            .nodes
            .get(&host_node)
            .ok_or(BackingError::NoSuchNode(host_node))?;
        let mut blocks: Vec<(Pfn, u32)> = Vec::new();
        let mut left = bytes / PAGE_SIZE;
        while left > 0 {
            let order = (63 - left.leading_zeros()).min(MAX_BLOCK_ORDER);
            let req = AllocRequest {
                order: Order(order),
                migratetype: MigrateType::Unmovable,
                node: NodeId(host_node),
                highest_zone: None,
            };
            let got = self.pool.alloc(req);
            // Only this node's memory may back the guest node (its memfd is mbind-ed there);
            // a block the zonelist found on another node goes back.
            let pfn = match got {
                Ok(p) if p.0 >= start && p.0 + (1 << order) <= start + pages => p,
                other => {
                    if let Ok(p) = other {
                        self.free_blocks(&[(p, order)]);
                    }
                    self.free_blocks(&blocks);
                    return Err(BackingError::Exhausted {
                        node: host_node,
                        requested: bytes,
                        available: self.free_kernel_pages(host_node) * PAGE_SIZE,
                    });
                }
            };
            blocks.push((pfn, order));
            left -= 1 << order;
        }
        Ok(blocks
            .into_iter()
            .map(|(pfn, order)| BackingExtent {
                host_node,
                offset: (pfn.0 - start) * PAGE_SIZE,
                len: PAGE_SIZE << order,
            })
            .collect())
    }

    fn free(&mut self, extents: &[BackingExtent]) {
        for e in extents {
            let Some(&(start, _)) = self.nodes.get(&e.host_node) else {
                continue;
            };
            let pages = e.len / PAGE_SIZE;
            if pages.is_power_of_two() {
                let pfn = Pfn(start + e.offset / PAGE_SIZE);
                let _ = self.pool.free(pfn, Order(pages.trailing_zeros()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_movable(p: &PoolBacking, node: u32, e: &BackingExtent) -> bool {
        let Some(z) = p.pool().zone(NodeId(node), ZoneType::Movable) else {
            return false;
        };
        let (start, _) = p.nodes[&node];
        let pfn = start + e.offset / PAGE_SIZE;
        z.present_pages() > 0
            && pfn >= z.zone_start_pfn()
            && pfn < z.zone_start_pfn() + z.spanned_pages()
    }

    #[test]
    fn boot_ram_never_comes_from_zone_movable() {
        // Two 1 GiB host nodes, half of each movable.
        let mut p =
            PoolBacking::new(&[(0, 1 << 30), (1, 1 << 30)], None, Some("50%")).expect("pool");
        let movable = p
            .pool()
            .zone(NodeId(1), ZoneType::Movable)
            .map(|z| z.present_pages())
            .unwrap_or(0);
        assert!(movable > 0, "the layout made ZONE_MOVABLE");
        let x = p
            .alloc_boot_ram(1, 256 << 20)
            .expect("256 MiB fits in node 1's kernel zones");
        assert_eq!(x.iter().map(|e| e.len).sum::<u64>(), 256 << 20);
        assert!(x.iter().all(|e| e.len <= 4 << 20 && e.host_node == 1));
        assert!(x.iter().all(|e| !in_movable(&p, 1, e)));
        assert!(x.iter().all(|e| e.offset + e.len <= 1 << 30));
        // More than node 1's kernel zones hold: refused, nothing leaked.
        let free_before = p.pool().free_pages_total();
        let err = p
            .alloc_boot_ram(1, 768 << 20)
            .expect_err("beyond the kernel zones");
        assert!(
            matches!(err, BackingError::Exhausted { node: 1, .. }),
            "{err:?}"
        );
        assert_eq!(p.pool().free_pages_total(), free_before);
        p.free(&x);
        p.pool().drain_all_pages();
        p.pool().validate().expect("pool consistent");
        assert_eq!(p.memfd_sizes(), vec![(0, 1 << 30), (1, 1 << 30)]);
    }

    #[test]
    fn odd_sizes_and_unknown_nodes() {
        let mut p = PoolBacking::new(&[(0, 256 << 20)], None, None).expect("pool");
        let x = p.alloc_boot_ram(0, (6 << 20) + 8192).expect("fits");
        assert_eq!(x.iter().map(|e| e.len).sum::<u64>(), (6 << 20) + 8192);
        assert_eq!(p.alloc_boot_ram(3, 4096), Err(BackingError::NoSuchNode(3)));
        assert!(PoolBacking::new(&[(0, 5 << 20)], None, None).is_err());
        p.free(&x);
        p.pool().validate().expect("pool consistent");
    }
}
