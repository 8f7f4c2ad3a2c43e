//! The plugged state of a virtio-mem device's blocks: one bit per block.

/// A fixed-length bit set with a running count of set bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockBitmap {
    words: Vec<u64>,
    len: usize,
    ones: usize,
}

impl BlockBitmap {
    /// `len` clear bits.
    pub fn new(len: usize) -> Self {
        BlockBitmap {
            words: vec![0; len.div_ceil(64)],
            len,
            ones: 0,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> usize {
        self.ones
    }

    /// Bit `i`; bits past the end read as clear.
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Number of set bits in `first..first + count` (clamped to the bitmap).
    pub fn count_range(&self, first: usize, count: usize) -> usize {
        let end = first.saturating_add(count).min(self.len);
        (first..end).filter(|&i| self.get(i)).count()
    }

    /// Sets (`value == true`) or clears `first..first + count` (clamped to the bitmap).
    pub fn set_range(&mut self, first: usize, count: usize, value: bool) {
        let end = first.saturating_add(count).min(self.len);
        for i in first..end {
            let word = &mut self.words[i / 64];
            let bit = 1u64 << (i % 64);
            if value && *word & bit == 0 {
                *word |= bit;
                self.ones += 1;
            } else if !value && *word & bit != 0 {
                *word &= !bit;
                self.ones -= 1;
            }
        }
    }

    /// The maximal runs of set bits, as `(first, count)`, in ascending order.
    pub fn set_runs(&self) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut start = None;
        for i in 0..=self.len {
            match (self.get(i), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    runs.push((s, i - s));
                    start = None;
                }
                _ => {}
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_runs_and_counts() {
        let mut b = BlockBitmap::new(130);
        assert_eq!(b.len(), 130);
        b.set_range(60, 10, true);
        b.set_range(128, 5, true);
        assert_eq!(b.count_ones(), 12);
        assert_eq!(b.set_runs(), vec![(60, 10), (128, 2)]);
        assert_eq!(b.count_range(55, 10), 5);
        b.set_range(62, 2, false);
        assert_eq!(b.set_runs(), vec![(60, 2), (64, 6), (128, 2)]);
        assert!(!b.get(130));
        assert_eq!(b.count_range(usize::MAX - 1, 5), 0);
        assert!(BlockBitmap::new(0).is_empty());
    }

    proptest! {
        #[test]
        fn matches_a_vec_of_bools(ops in proptest::collection::vec((0usize..200, 0usize..80, any::<bool>()), 0..40)) {
            let mut b = BlockBitmap::new(150);
            let mut model = [false; 150];
            for (first, count, value) in ops {
                b.set_range(first, count, value);
                for m in model.iter_mut().skip(first).take(count) {
                    *m = value;
                }
                prop_assert_eq!(b.count_ones(), model.iter().filter(|&&x| x).count());
            }
            for (i, &m) in model.iter().enumerate() {
                prop_assert_eq!(b.get(i), m);
            }
            let covered: usize = b.set_runs().iter().map(|r| r.1).sum();
            prop_assert_eq!(covered, b.count_ones());
        }
    }
}
