//! Balloon page frame numbers: the set of pages currently in the balloon, and how a batch of
//! pfns becomes maximal runs of consecutive pages.
//!
//! The balloon protocol speaks in 4 KiB pages whatever the guest's page size
//! (`VIRTIO_BALLOON_PFN_SHIFT` in Linux's `include/uapi/linux/virtio_balloon.h`), as 32-bit
//! little-endian pfns: at most 2^32 pages (16 TiB) are addressable.

use std::collections::BTreeMap;

/// `VIRTIO_BALLOON_PFN_SHIFT`: a balloon pfn is a guest physical address >> 12.
pub const BALLOON_PFN_SHIFT: u32 = 12;
/// Size of one balloon page.
pub const BALLOON_PAGE_SIZE: u64 = 1 << BALLOON_PFN_SHIFT;

/// Pages per chunk of the set (a 512-byte bitmap covers 16 MiB of guest memory).
const CHUNK_PAGES: u64 = 4096;
const WORDS: usize = (CHUNK_PAGES / 64) as usize;

/// A run of consecutive balloon pages: `count` pages from `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PfnRun {
    /// The first pfn.
    pub first: u64,
    /// How many pages (at least 1).
    pub count: u64,
}

impl PfnRun {
    /// The guest physical address of the first page.
    pub fn addr(&self) -> u64 {
        self.first << BALLOON_PFN_SHIFT
    }

    /// The run's size in bytes.
    pub fn len(&self) -> u64 {
        self.count << BALLOON_PFN_SHIFT
    }

    /// Whether the run holds no page (never true for runs made here).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Sorts and deduplicates `pfns` in place; returns how many duplicates were removed.
pub fn sort_dedup(pfns: &mut Vec<u64>) -> usize {
    pfns.sort_unstable();
    let before = pfns.len();
    pfns.dedup();
    before - pfns.len()
}

/// Maximal runs of consecutive pfns in `sorted` (ascending, no duplicates), ascending.
pub fn coalesce(sorted: &[u64]) -> Vec<PfnRun> {
    let mut runs: Vec<PfnRun> = Vec::new();
    for &pfn in sorted {
        match runs.last_mut() {
            Some(run) if run.first + run.count == pfn => run.count += 1,
            _ => runs.push(PfnRun {
                first: pfn,
                count: 1,
            }),
        }
    }
    runs
}

/// A set of balloon pages: a bitmap per 16 MiB chunk that holds any, so a sparse guest
/// physical address space costs only what is ballooned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageSet {
    chunks: BTreeMap<u64, Box<[u64; WORDS]>>,
    count: u64,
}

impl PageSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many pages the set holds.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the set holds no page.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether `pfn` is in the set.
    pub fn contains(&self, pfn: u64) -> bool {
        let (chunk, word, bit) = Self::locate(pfn);
        self.chunks
            .get(&chunk)
            .is_some_and(|c| c[word] & (1 << bit) != 0)
    }

    /// Adds `pfn`; returns whether it was absent.
    pub fn insert(&mut self, pfn: u64) -> bool {
        let (chunk, word, bit) = Self::locate(pfn);
        let c = self
            .chunks
            .entry(chunk)
            .or_insert_with(|| Box::new([0; WORDS]));
        let absent = c[word] & (1 << bit) == 0;
        if absent {
            c[word] |= 1 << bit;
            self.count += 1;
        }
        absent
    }

    /// Removes `pfn`; returns whether it was present.
    pub fn remove(&mut self, pfn: u64) -> bool {
        let (chunk, word, bit) = Self::locate(pfn);
        let Some(c) = self.chunks.get_mut(&chunk) else {
            return false;
        };
        let present = c[word] & (1 << bit) != 0;
        if present {
            c[word] &= !(1 << bit);
            self.count -= 1;
            if c.iter().all(|&w| w == 0) {
                self.chunks.remove(&chunk);
            }
        }
        present
    }

    /// Adds every page of `run`; returns how many were absent.
    pub fn insert_run(&mut self, run: PfnRun) -> u64 {
        (run.first..run.first + run.count)
            .filter(|&p| self.insert(p))
            .count() as u64
    }

    /// Removes every page of `run`; returns how many were present.
    pub fn remove_run(&mut self, run: PfnRun) -> u64 {
        (run.first..run.first + run.count)
            .filter(|&p| self.remove(p))
            .count() as u64
    }

    /// How many pages of `run` the set holds (e.g. for a pool-aware backend keeping its own
    /// set: a pool block is wholly unused when this equals its page count).
    pub fn count_in(&self, run: PfnRun) -> u64 {
        let end = run.first.saturating_add(run.count);
        let mut n = 0;
        let mut pfn = run.first;
        while pfn < end {
            let (chunk, _, _) = Self::locate(pfn);
            let chunk_end = ((chunk + 1) * CHUNK_PAGES).min(end);
            if let Some(c) = self.chunks.get(&chunk) {
                if pfn == chunk * CHUNK_PAGES && chunk_end == (chunk + 1) * CHUNK_PAGES {
                    n += c.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
                } else {
                    n += (pfn..chunk_end)
                        .filter(|&p| {
                            let (_, word, bit) = Self::locate(p);
                            c[word] & (1 << bit) != 0
                        })
                        .count() as u64;
                }
            }
            pfn = chunk_end;
        }
        n
    }

    /// The set as maximal runs, ascending.
    pub fn runs(&self) -> Vec<PfnRun> {
        let mut pfns = Vec::with_capacity(self.count as usize);
        for (&chunk, words) in &self.chunks {
            for (w, &word) in words.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    pfns.push(chunk * CHUNK_PAGES + w as u64 * 64 + b);
                    bits &= bits - 1;
                }
            }
        }
        coalesce(&pfns)
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.count = 0;
    }

    fn locate(pfn: u64) -> (u64, usize, u64) {
        let chunk = pfn / CHUNK_PAGES;
        let within = pfn % CHUNK_PAGES;
        (chunk, (within / 64) as usize, within % 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn coalesce_merges_neighbours_only() {
        assert_eq!(coalesce(&[]), vec![]);
        assert_eq!(
            coalesce(&[1, 2, 3, 5, 7, 8]),
            vec![
                PfnRun { first: 1, count: 3 },
                PfnRun { first: 5, count: 1 },
                PfnRun { first: 7, count: 2 }
            ]
        );
        let r = PfnRun {
            first: 0x100,
            count: 2,
        };
        assert_eq!(
            (r.addr(), r.len(), r.is_empty()),
            (0x10_0000, 0x2000, false)
        );
    }

    #[test]
    fn sort_dedup_counts_duplicates() {
        let mut v = vec![5, 1, 5, 3, 1, 5];
        assert_eq!(sort_dedup(&mut v), 3);
        assert_eq!(v, vec![1, 3, 5]);
    }

    #[test]
    fn page_set_across_chunks() {
        let mut s = PageSet::new();
        assert!(s.insert(4095));
        assert!(s.insert(4096));
        assert!(!s.insert(4096));
        assert!(s.insert(u64::from(u32::MAX)));
        assert_eq!(s.count(), 3);
        assert_eq!(
            s.runs(),
            vec![
                PfnRun {
                    first: 4095,
                    count: 2
                },
                PfnRun {
                    first: u64::from(u32::MAX),
                    count: 1
                }
            ]
        );
        assert!(s.remove(4095));
        assert!(!s.remove(4095));
        assert!(!s.contains(4095) && s.contains(4096));
        assert_eq!(
            s.remove_run(PfnRun {
                first: 0,
                count: 8192
            }),
            1
        );
        assert_eq!(s.chunks.len(), 1, "empty chunks are dropped");
        s.clear();
        assert!(s.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

        /// The set behaves as a BTreeSet, and its runs are exactly the coalesced members.
        #[test]
        fn page_set_matches_a_btreeset(ops in prop::collection::vec((any::<bool>(), 0u64..20_000), 0..400)) {
            let mut s = PageSet::new();
            let mut model = BTreeSet::new();
            for (add, pfn) in ops {
                if add {
                    prop_assert_eq!(s.insert(pfn), model.insert(pfn));
                } else {
                    prop_assert_eq!(s.remove(pfn), model.remove(&pfn));
                }
            }
            prop_assert_eq!(s.count(), model.len() as u64);
            for (first, count) in [(0, 20_000), (0, 4096), (4096, 4096), (100, 5000), (8191, 2)] {
                let expect = model.range(first..first + count).count() as u64;
                prop_assert_eq!(s.count_in(PfnRun { first, count }), expect);
            }
            let members: Vec<u64> = model.iter().copied().collect();
            prop_assert_eq!(s.runs(), coalesce(&members));
            let runs = s.runs();
            for w in runs.windows(2) {
                prop_assert!(w[0].first + w[0].count < w[1].first, "runs are maximal");
            }
        }
    }
}
