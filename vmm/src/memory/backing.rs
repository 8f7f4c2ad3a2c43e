//! The boundary between the VMM and the host memory pool: who decides which part of a host
//! node's memfd backs a piece of guest RAM.
//!
//! The pool (memtide-allocator's buddy allocator) implements [`BackingAllocator`]; boot RAM
//! must come from the host node's kernel (non-movable) zones, never from ZONE_MOVABLE, which
//! the pool keeps for virtio-mem blocks that can be unplugged again.
//! [`LinearBacking`] is the simple baseline behind the same trait: a bump allocator per node.

use std::collections::BTreeMap;

/// A piece of a host node's memfd handed out for guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackingExtent {
    /// Host NUMA node (whose memfd this is an offset into).
    pub host_node: u32,
    /// Byte offset into the node's memfd (page aligned).
    pub offset: u64,
    /// Length in bytes (page aligned).
    pub len: u64,
}

/// Errors of a [`BackingAllocator`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackingError {
    /// The node's pool cannot give that much boot (non-movable) memory.
    #[error("host node {node} cannot back {requested} bytes of boot RAM ({available} bytes free in its kernel zones)")]
    Exhausted {
        /// Host node asked.
        node: u32,
        /// Bytes requested.
        requested: u64,
        /// Bytes still available.
        available: u64,
    },
    /// The allocator manages no memory on that node.
    #[error("the memory pool has no host node {0}")]
    NoSuchNode(u32),
    /// The request is not a multiple of the page size.
    #[error("{0} bytes is not a multiple of 4096")]
    Unaligned(u64),
}

/// Hands out host memory (memfd offsets) for guest RAM.
pub trait BackingAllocator: Send {
    /// Allocates `bytes` of boot RAM on `host_node` from its kernel (non-movable) zones. The
    /// extents together cover exactly `bytes`; they need not be contiguous.
    fn alloc_boot_ram(
        &mut self,
        host_node: u32,
        bytes: u64,
    ) -> Result<Vec<BackingExtent>, BackingError>;

    /// Returns extents obtained from this allocator.
    fn free(&mut self, extents: &[BackingExtent]);
}

/// Baseline allocator: a bump pointer per host node over `[0, capacity)`, with freed extents
/// kept on a free list and reused first-fit.
#[derive(Debug, Default)]
pub struct LinearBacking {
    nodes: BTreeMap<u32, LinearNode>,
}

#[derive(Debug, Default)]
struct LinearNode {
    capacity: u64,
    next: u64,
    free: Vec<(u64, u64)>,
}

impl LinearNode {
    fn available(&self) -> u64 {
        self.capacity - self.next + self.free.iter().map(|&(_, l)| l).sum::<u64>()
    }
}

impl LinearBacking {
    /// An allocator managing `capacity` bytes of memfd per `(host node, capacity)`.
    pub fn new(nodes: &[(u32, u64)]) -> Self {
        LinearBacking {
            nodes: nodes
                .iter()
                .map(|&(n, capacity)| {
                    (
                        n,
                        LinearNode {
                            capacity,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        }
    }
}

impl BackingAllocator for LinearBacking {
    fn alloc_boot_ram(
        &mut self,
        host_node: u32,
        bytes: u64,
    ) -> Result<Vec<BackingExtent>, BackingError> {
        if !bytes.is_multiple_of(4096) {
            return Err(BackingError::Unaligned(bytes));
        }
        let n = self
            .nodes
            .get_mut(&host_node)
            .ok_or(BackingError::NoSuchNode(host_node))?;
        let available = n.available();
        if bytes > available {
            return Err(BackingError::Exhausted {
                node: host_node,
                requested: bytes,
                available,
            });
        }
        let mut out = Vec::new();
        let mut left = bytes;
        while left > 0 {
            if let Some(i) = n.free.iter().position(|_| true) {
                let (off, len) = n.free[i];
                let take = len.min(left);
                if take == len {
                    n.free.remove(i);
                } else {
                    n.free[i] = (off + take, len - take);
                }
                out.push(BackingExtent {
                    host_node,
                    offset: off,
                    len: take,
                });
                left -= take;
            } else {
                out.push(BackingExtent {
                    host_node,
                    offset: n.next,
                    len: left,
                });
                n.next += left;
                left = 0;
            }
        }
        Ok(out)
    }

    fn free(&mut self, extents: &[BackingExtent]) {
        for e in extents {
            if let Some(n) = self.nodes.get_mut(&e.host_node) {
                n.free.push((e.offset, e.len));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_until_exhausted_and_reuses_freed() {
        let mut a = LinearBacking::new(&[(0, 64 << 20)]);
        let x = a.alloc_boot_ram(0, 32 << 20).expect("fits");
        assert_eq!(
            x,
            vec![BackingExtent {
                host_node: 0,
                offset: 0,
                len: 32 << 20
            }]
        );
        let y = a.alloc_boot_ram(0, 32 << 20).expect("fits");
        assert_eq!(y[0].offset, 32 << 20);
        assert!(matches!(
            a.alloc_boot_ram(0, 4096),
            Err(BackingError::Exhausted { available: 0, .. })
        ));
        a.free(&x);
        let z = a
            .alloc_boot_ram(0, 16 << 20)
            .expect("reuses the freed extent");
        assert_eq!(z[0].offset, 0);
        assert_eq!(a.alloc_boot_ram(1, 4096), Err(BackingError::NoSuchNode(1)));
        assert_eq!(a.alloc_boot_ram(0, 100), Err(BackingError::Unaligned(100)));
    }
}
