//! A simple baseline allocator behind the same [`PageAllocator`] trait: a textbook buddy
//! allocator over ordered sets, one lock, no zones, migratetypes, watermarks or caches. It
//! exists so the generic test suite can run against two implementations (llfree-rs style).

use super::zone::lock;
use super::{BuddyError, PageAllocator};
use crate::types::{MigrateType, NodeId, Order, Pfn, ZoneDescriptor, MAX_ORDER};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Inner {
    free: [BTreeSet<u64>; MAX_ORDER],
    allocated: HashMap<u64, u32>,
}

/// The baseline buddy allocator.
#[derive(Debug)]
pub struct SimpleBuddy {
    inner: Mutex<Inner>,
    managed: u64,
}

impl SimpleBuddy {
    /// Manages every present range of the descriptors (nodes and zones are ignored).
    pub fn new(descriptors: &[ZoneDescriptor]) -> SimpleBuddy {
        let mut inner = Inner::default();
        let mut managed = 0;
        for d in descriptors {
            for &(s, e) in &d.present_ranges {
                managed += e.0 - s.0;
                let mut p = s.0;
                while p < e.0 {
                    let align = if p == 0 {
                        MAX_ORDER as u32 - 1
                    } else {
                        p.trailing_zeros()
                    };
                    let fit = 63 - (e.0 - p).leading_zeros();
                    let order = align.min(fit).min(MAX_ORDER as u32 - 1);
                    Self::free_locked(&mut inner, p, order);
                    p += 1 << order;
                }
            }
        }
        SimpleBuddy {
            inner: Mutex::new(inner),
            managed,
        }
    }

    fn free_locked(inner: &mut Inner, mut pfn: u64, mut order: u32) {
        while (order as usize) < MAX_ORDER - 1 {
            let buddy = pfn ^ (1 << order);
            if !inner.free[order as usize].remove(&buddy) {
                break;
            }
            pfn &= buddy;
            order += 1;
        }
        inner.free[order as usize].insert(pfn);
    }
}

impl PageAllocator for SimpleBuddy {
    fn alloc(&self, order: Order, _mt: MigrateType, _node: NodeId) -> Result<Pfn, BuddyError> {
        let o = order.0;
        if o as usize >= MAX_ORDER {
            return Err(BuddyError::InvalidOrder(o));
        }
        let mut inner = lock(&self.inner);
        let Some(cur) = (o as usize..MAX_ORDER).find(|&c| !inner.free[c].is_empty()) else {
            return Err(BuddyError::NoMemory {
                order: o,
                node: NodeId(0),
            });
        };
        let pfn = inner.free[cur].pop_first().ok_or(BuddyError::NoMemory {
            order: o,
            node: NodeId(0),
        })?;
        for h in (o as usize..cur).rev() {
            inner.free[h].insert(pfn + (1 << h));
        }
        inner.allocated.insert(pfn, o);
        Ok(Pfn(pfn))
    }

    fn free(&self, pfn: Pfn, order: Order) -> Result<(), BuddyError> {
        let mut inner = lock(&self.inner);
        match inner.allocated.get(&pfn.0) {
            None => return Err(BuddyError::NotAllocated(pfn)),
            Some(&a) if a != order.0 => {
                return Err(BuddyError::WrongOrder {
                    pfn,
                    allocated: a,
                    given: order.0,
                })
            }
            Some(_) => {}
        }
        inner.allocated.remove(&pfn.0);
        Self::free_locked(&mut inner, pfn.0, order.0);
        Ok(())
    }

    fn managed_pages(&self) -> u64 {
        self.managed
    }

    fn free_pages(&self) -> u64 {
        let inner = lock(&self.inner);
        inner
            .free
            .iter()
            .enumerate()
            .map(|(o, s)| (s.len() as u64) << o)
            .sum()
    }

    fn drain(&self) {}

    fn nr_free_blocks(&self) -> [u64; MAX_ORDER] {
        let inner = lock(&self.inner);
        std::array::from_fn(|o| inner.free[o].len() as u64)
    }

    fn validate(&self) -> Result<(), BuddyError> {
        let inner = lock(&self.inner);
        let mut blocks: Vec<(u64, u64)> = inner
            .free
            .iter()
            .enumerate()
            .flat_map(|(o, s)| s.iter().map(move |&p| (p, p + (1 << o))))
            .chain(inner.allocated.iter().map(|(&p, &o)| (p, p + (1 << o))))
            .collect();
        blocks.sort();
        let total: u64 = blocks.iter().map(|(s, e)| e - s).sum();
        if blocks.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err(BuddyError::Corrupt("overlapping blocks".into()));
        }
        if total != self.managed {
            return Err(BuddyError::Corrupt(format!(
                "blocks hold {total} pages, managed {}",
                self.managed
            )));
        }
        Ok(())
    }
}
