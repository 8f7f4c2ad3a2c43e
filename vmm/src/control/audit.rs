//! The pool audit: proof that the pool's accounting and the VMs' holdings agree.
//!
//! Invariants checked (on a snapshot taken while no VM is being created):
//! - the buddy allocator's own invariants ([`memtide_allocator::buddy::Pool::validate`]);
//! - no pool page has two owners: the pfn ranges held by the VMs (boot RAM extents and the
//!   pool blocks behind plugged virtio-mem blocks) are pairwise disjoint;
//! - no page leaked: the pages the pool counts as handed out (managed − free) are exactly
//!   the pages the VMs hold.
//!
//! While a VM's guest is plugging or unplugging, a block can be taken from (or given back
//! to) the pool a moment before the VM records it, so the audit compares two snapshots and
//! repeats (a few times) until they agree; an audit of a quiet system is exact.

use serde::{Deserialize, Serialize};

use memtide_allocator::buddy::Pool;

/// What one VM holds of one kind, in pool pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerPages {
    /// The VM.
    pub vm: String,
    /// `boot` (boot RAM) or `plugged` (virtio-mem blocks).
    pub kind: String,
    /// Pool pages held.
    pub pages: u64,
}

/// The outcome of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolAudit {
    /// True when no problem was found.
    pub consistent: bool,
    /// Pages the pool has handed out (managed − free).
    pub allocated_pages: u64,
    /// Pages the VMs hold (the sum of `owners`).
    pub owned_pages: u64,
    /// Holdings per VM and kind.
    pub owners: Vec<OwnerPages>,
    /// What is wrong, one line each (empty when consistent).
    pub problems: Vec<String>,
}

/// One holder's pfn ranges: `(vm, kind, [(first pfn, pages)])`.
pub type Holding = (String, &'static str, Vec<(u64, u64)>);

/// Audits `pool` against `holdings` (see the module docs). `free_pages` is the pool's free
/// count taken with the holdings.
pub fn audit(pool: &Pool, holdings: &[Holding], free_pages: u64) -> PoolAudit {
    let mut problems = Vec::new();
    if let Err(e) = pool.validate() {
        problems.push(format!("buddy allocator: {e}"));
    }
    let managed = pool.managed_pages();
    let allocated = managed.saturating_sub(free_pages);
    let mut ranges: Vec<(u64, u64, usize)> = Vec::new();
    let mut owners = Vec::new();
    for (i, (vm, kind, blocks)) in holdings.iter().enumerate() {
        owners.push(OwnerPages {
            vm: vm.clone(),
            kind: (*kind).to_string(),
            pages: blocks.iter().map(|b| b.1).sum(),
        });
        ranges.extend(blocks.iter().map(|&(pfn, pages)| (pfn, pfn + pages, i)));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((a0, a1, ai), (b0, b1, bi)) = (w[0], w[1]);
        if b0 < a1 {
            problems.push(format!(
                "pfns {a0:#x}..{a1:#x} of {} ({}) and {b0:#x}..{b1:#x} of {} ({}) overlap: \
                 pages with two owners",
                holdings[ai].0, holdings[ai].1, holdings[bi].0, holdings[bi].1
            ));
        }
    }
    let owned: u64 = owners.iter().map(|o| o.pages).sum();
    if owned != allocated {
        problems.push(if owned < allocated {
            format!(
                "the pool handed out {allocated} pages but the VMs hold {owned}: {} pages leaked",
                allocated - owned
            )
        } else {
            format!(
                "the VMs hold {owned} pages but the pool handed out only {allocated}: {} pages \
                 are free in the pool and owned",
                owned - allocated
            )
        });
    }
    PoolAudit {
        consistent: problems.is_empty(),
        allocated_pages: allocated,
        owned_pages: owned,
        owners,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memtide_allocator::buddy::{AllocRequest, PoolConfig};
    use memtide_allocator::layout::ZoneLayout;
    use memtide_allocator::{MigrateType, NodeId, Order};

    fn pool() -> Pool {
        let layout = ZoneLayout::from_specs(&["0:0x0-0x3fffffff".to_string()], None, None, false)
            .expect("layout");
        Pool::new(&layout.zone_descriptors(), PoolConfig::default()).expect("pool")
    }

    fn alloc(p: &Pool, order: u32) -> u64 {
        p.alloc(AllocRequest {
            order: Order(order),
            migratetype: MigrateType::Unmovable,
            node: NodeId(0),
            highest_zone: None,
        })
        .expect("alloc")
        .0
    }

    fn free(p: &Pool) -> u64 {
        p.free_pages_total()
    }

    #[test]
    fn exact_holdings_are_consistent() {
        let p = pool();
        let a = alloc(&p, 9);
        let b = alloc(&p, 3);
        let h = vec![
            ("a".to_string(), "boot", vec![(a, 512)]),
            ("b".to_string(), "plugged", vec![(b, 8)]),
        ];
        let r = audit(&p, &h, free(&p));
        assert!(r.consistent, "{:?}", r.problems);
        assert_eq!((r.allocated_pages, r.owned_pages), (520, 520));
    }

    #[test]
    fn a_leak_and_a_double_owner_are_reported() {
        let p = pool();
        let a = alloc(&p, 9);
        let leaked = alloc(&p, 0);
        let h = vec![("a".to_string(), "boot", vec![(a, 512)])];
        let r = audit(&p, &h, free(&p));
        assert!(!r.consistent);
        assert!(r.problems[0].contains("1 pages leaked"), "{:?}", r.problems);
        // Both VMs claim the same block (and the leaked page is still unowned).
        let h = vec![
            ("a".to_string(), "boot", vec![(a, 512)]),
            ("b".to_string(), "plugged", vec![(a + 8, 8), (leaked, 1)]),
        ];
        let r = audit(&p, &h, free(&p));
        assert!(
            r.problems.iter().any(|m| m.contains("two owners")),
            "{:?}",
            r.problems
        );
        assert!(r
            .problems
            .iter()
            .any(|m| m.contains("free in the pool and owned")));
    }
}
