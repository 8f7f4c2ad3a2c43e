//! The lock of a zone and of each per-CPU cache: a test-and-test-and-set spin lock, as the
//! kernel's `zone->lock` and `pcp->lock` are spinlocks.
//!
//! Why not `std::sync::Mutex`: every section under these locks is short (a split, a merge,
//! a list push), and on x86 an uncontended `Mutex` costs two locked instructions per
//! lock/unlock pair (`cmpxchg` to take it, `xchg` to release it and learn whether a waiter
//! must be woken) plus a poison check on each side. Releasing a spin lock is a plain
//! release store, which halves the atomic read-modify-writes on the allocation paths.
//!
//! Waiting: a contender spins on a plain load (no cache-line ping-pong) with
//! [`std::hint::spin_loop`], and after [`SPINS_BEFORE_YIELD`] rounds yields its CPU to the
//! scheduler on every round, so a preempted holder is not starved by spinners on a busy
//! machine. There is no poisoning: the sections never leave the data half-updated on a
//! valid call (the zone's invariants are checked by `validate()` instead).

use std::cell::UnsafeCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

/// Spins before a waiter starts yielding its CPU.
pub const SPINS_BEFORE_YIELD: u32 = 64;

/// A spin lock around `T` (see the module docs).
pub struct SpinLock<T> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `data` to one thread at a time (the `locked` flag is
// taken with Acquire and released with Release), so sharing a `SpinLock<T>` between threads
// is sound whenever `T` may be sent between them, exactly as for `std::sync::Mutex`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the `T` it owns; sound when `T: Send`.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock around `data`.
    pub const fn new(data: T) -> SpinLock<T> {
        SpinLock {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(data),
        }
    }

    /// Takes the lock, waiting while another thread holds it.
    #[inline]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        SpinLockGuard { lock: self }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        loop {
            while self.locked.load(Ordering::Relaxed) {
                if spins < SPINS_BEFORE_YIELD {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinLockGuard { lock: self })
    }
}

impl<T: Default> Default for SpinLock<T> {
    fn default() -> Self {
        SpinLock::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_lock() {
            Some(g) => f.debug_struct("SpinLock").field("data", &*g).finish(),
            None => f.write_str("SpinLock { <locked> }"),
        }
    }
}

/// Access to the data of a held [`SpinLock`]; dropping it releases the lock.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock, so no other
        // reference to the data is live.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference through the
        // guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_other_threads() {
        let l = SpinLock::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        // A non-atomic read-modify-write: lost updates if two threads were
                        // inside at once.
                        let mut g = l.lock();
                        let v = *g;
                        std::hint::black_box(&v);
                        *g = v + 1;
                    }
                });
            }
        });
        assert_eq!(*l.lock(), 80_000);
    }

    #[test]
    fn try_lock_fails_while_held_and_guard_releases() {
        let l = SpinLock::new(1);
        let g = l.lock();
        assert!(l.try_lock().is_none());
        assert!(format!("{l:?}").contains("locked"));
        drop(g);
        *l.try_lock().expect("free after drop") += 1;
        assert_eq!(*l.lock(), 2);
    }
}
