//! Lock-free per-page bitmaps of a zone (the free-block heads and summaries, which only
//! the zone lock touches, are plain words in `free_area.rs`).
//!
//! * `AtomicBitmap`: one bit per page, readable and updatable without the zone lock (the
//!   "allocated head" bits, cleared and set by the per-CPU fast path).
//! * `AtomicTags`: two bits per page (free-list tags of free heads, order codes of allocated
//!   heads); written only under the zone lock, read without it.
//!
//! All of them are allocated zeroed (`calloc`), so a large, mostly untouched bitmap costs
//! address space, not resident memory, until it is written.

use std::sync::atomic::{AtomicU64, Ordering};

const WORD_BITS: u64 = 64;

fn words_for(bits: u64) -> usize {
    bits.div_ceil(WORD_BITS) as usize
}

/// A bitmap whose bits can be set and cleared without a lock.
#[derive(Debug, Default)]
pub(crate) struct AtomicBitmap {
    words: Vec<AtomicU64>,
}

impl AtomicBitmap {
    /// A bitmap of `len` clear bits.
    pub(crate) fn new(len: u64) -> AtomicBitmap {
        AtomicBitmap {
            words: zeroed_atomics(words_for(len)),
        }
    }

    /// Whether bit `i` is set.
    #[inline]
    pub(crate) fn test(&self, i: u64) -> bool {
        self.words[(i / WORD_BITS) as usize].load(Ordering::Acquire) & (1 << (i % WORD_BITS)) != 0
    }

    /// Sets bit `i`; returns whether it was set before.
    #[inline]
    pub(crate) fn test_and_set(&self, i: u64) -> bool {
        let bit = 1 << (i % WORD_BITS);
        self.words[(i / WORD_BITS) as usize].fetch_or(bit, Ordering::AcqRel) & bit != 0
    }

    /// Clears bit `i`; returns whether it was set before.
    #[inline]
    pub(crate) fn test_and_clear(&self, i: u64) -> bool {
        let bit = 1 << (i % WORD_BITS);
        self.words[(i / WORD_BITS) as usize].fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// Number of set bits.
    pub(crate) fn count_ones(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }

    /// Bytes of memory the bitmap occupies.
    pub(crate) fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// Two bits per index. Writers must be serialised (the zone lock); readers need no lock and
/// see either the old or the new value of a word, never a torn one.
#[derive(Debug, Default)]
pub(crate) struct AtomicTags {
    words: Vec<AtomicU64>,
}

impl AtomicTags {
    /// `len` tags, all zero.
    pub(crate) fn new(len: u64) -> AtomicTags {
        AtomicTags {
            words: zeroed_atomics(words_for(len * 2)),
        }
    }

    /// The tag at `i` (0..=3).
    #[inline]
    pub(crate) fn get(&self, i: u64) -> u8 {
        let w = self.words[(i / 32) as usize].load(Ordering::Acquire);
        ((w >> ((i % 32) * 2)) & 3) as u8
    }

    /// The tags at `i` and `i + 1` in one read: bits 0-1 the tag at `i`, bits 2-3 the tag at
    /// `i + 1` when both lie in one word (always when `i` is even), else 0.
    #[inline]
    pub(crate) fn get_pair(&self, i: u64) -> u8 {
        let w = self.words[(i / 32) as usize].load(Ordering::Acquire);
        ((w >> ((i % 32) * 2)) & 0xf) as u8
    }

    /// Sets the tag at `i`. The caller holds the lock that serialises writers.
    #[inline]
    pub(crate) fn set(&self, i: u64, tag: u8) {
        let word = &self.words[(i / 32) as usize];
        let shift = (i % 32) * 2;
        let w = word.load(Ordering::Relaxed);
        let new = (w & !(3 << shift)) | (u64::from(tag & 3) << shift);
        if new != w {
            word.store(new, Ordering::Release);
        }
    }

    /// Bytes of memory the tags occupy.
    pub(crate) fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// `n` zeroed atomics, allocated with `calloc` so that untouched pages stay unbacked.
fn zeroed_atomics(n: usize) -> Vec<AtomicU64> {
    let v: Vec<u64> = vec![0; n];
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: AtomicU64 has the same size, alignment and bit validity as u64 (documented in
    // std), the allocation came from a Vec<u64> with this exact length and capacity, and the
    // original Vec is never dropped (ManuallyDrop), so ownership moves to the new Vec.
    unsafe { Vec::from_raw_parts(ptr.cast::<AtomicU64>(), len, cap) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_bits_and_tags() {
        let a = AtomicBitmap::new(130);
        assert!(!a.test_and_set(129));
        assert!(a.test_and_set(129));
        assert!(a.test(129));
        assert!(a.test_and_clear(129));
        assert!(!a.test_and_clear(129));
        let t = AtomicTags::new(100);
        t.set(33, 2);
        t.set(34, 3);
        t.set(33, 1);
        assert_eq!((t.get(32), t.get(33), t.get(34)), (0, 1, 3));
        assert_eq!(t.get_pair(33), 1 | 3 << 2);
        t.set(63, 2);
        assert_eq!(t.get_pair(63), 2);
    }
}
