//! Memory filled with a known pattern: anonymous mappings the agent writes, verifies and
//! unmaps (so the pages go back to the guest kernel at once).

use std::ptr::NonNull;

/// Bytes in a MiB.
pub const MIB: usize = 1 << 20;

/// Errors handling pattern memory.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// The size is zero or overflows the address space.
    #[error("bad size {0} MiB")]
    BadSize(u64),
    /// mmap failed.
    #[error("cannot map {mib} MiB: {source}")]
    Map {
        /// The size asked for.
        mib: u64,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The pattern word at `index` of a region with `seed`: an odd-multiplier hash, so that
/// neighbouring words, pages and regions all differ and a page of zeros never matches.
pub fn pattern_word(seed: u64, index: u64) -> u64 {
    (index ^ seed.rotate_left(32))
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1
}

/// One anonymous private mapping filled with the pattern of its seed.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u64>,
    words: usize,
    seed: u64,
}

// SAFETY: the region owns its mapping exclusively; nothing else refers to it.
unsafe impl Send for Region {}

impl Region {
    /// Maps `mib` MiB and writes the pattern of `seed` into every word.
    pub fn fill(mib: u64, seed: u64) -> Result<Region, PatternError> {
        let bytes = usize::try_from(mib)
            .ok()
            .and_then(|m| m.checked_mul(MIB))
            .filter(|b| *b > 0)
            .ok_or(PatternError::BadSize(mib))?;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(PatternError::Map {
                mib,
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(p.cast::<u64>()).ok_or(PatternError::Map {
            mib,
            source: std::io::Error::other("mmap returned null"),
        })?;
        let mut region = Region {
            ptr,
            words: bytes / 8,
            seed,
        };
        for (i, w) in region.words_mut().iter_mut().enumerate() {
            *w = pattern_word(seed, i as u64);
        }
        Ok(region)
    }

    fn words(&self) -> &[u64] {
        // SAFETY: ptr maps `words` u64s, readable and writable, for the region's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.words) }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `words`; `&mut self` guarantees no other reference to the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.words) }
    }

    /// The region's size in MiB.
    pub fn mib(&self) -> u64 {
        (self.words * 8 / MIB) as u64
    }

    /// The region's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Counts words that do not hold their pattern; returns (count, index of the first).
    pub fn verify(&self) -> (u64, Option<u64>) {
        let mut bad = 0;
        let mut first = None;
        for (i, w) in self.words().iter().enumerate() {
            // Volatile so that the compiler cannot reuse values it wrote in `fill`.
            // SAFETY: `w` is a valid reference into the mapping.
            let v = unsafe { std::ptr::read_volatile(w) };
            if v != pattern_word(self.seed, i as u64) {
                bad += 1;
                first.get_or_insert(i as u64);
            }
        }
        (bad, first)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this region created and owns.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.words * 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_verifies_and_detects_corruption() {
        let mut r = Region::fill(2, 7).expect("maps 2 MiB");
        assert_eq!(r.mib(), 2);
        assert_eq!(r.verify(), (0, None));
        r.words_mut()[1000] ^= 4;
        r.words_mut()[5000] = 0;
        assert_eq!(r.verify(), (2, Some(1000)));
    }

    #[test]
    fn patterns_differ_between_seeds_and_words() {
        assert_ne!(pattern_word(1, 0), pattern_word(2, 0));
        assert_ne!(pattern_word(1, 0), pattern_word(1, 1));
        assert_ne!(pattern_word(1, 0), 0);
    }

    #[test]
    fn zero_size_is_refused() {
        assert!(matches!(Region::fill(0, 1), Err(PatternError::BadSize(0))));
        assert!(matches!(
            Region::fill(u64::MAX, 1),
            Err(PatternError::BadSize(_))
        ));
    }
}
