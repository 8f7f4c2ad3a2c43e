//! Pausing a running VM: a gate every vCPU thread passes at the top of its run loop.
//!
//! [`PauseGate::pause`] closes the gate and kicks the vCPU threads out of `KVM_RUN` (the
//! same real-time signal that stops them) until every one of them is parked at the gate;
//! [`PauseGate::resume`] opens it again. An exit request [`PauseGate::release`]s the gate
//! for good, so a paused VM can always be stopped.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often [`PauseGate::pause`] re-kicks vCPU threads that are not parked yet.
const KICK_INTERVAL: Duration = Duration::from_millis(2);

/// Errors of [`PauseGate::pause`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    /// Not every vCPU parked in time (the gate was opened again).
    #[error("only {parked} of {vcpus} vCPUs stopped within {waited:?}; the VM keeps running")]
    Timeout {
        /// vCPUs parked when we gave up.
        parked: usize,
        /// vCPU threads of the VM.
        vcpus: usize,
        /// How long we waited.
        waited: Duration,
    },
    /// The VM is stopping or stopped.
    #[error("the VM is stopping")]
    Released,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    released: bool,
    parked: usize,
    threads: Vec<libc::pthread_t>,
    kick_signal: i32,
}

/// The pause gate of one VM's vCPU threads.
#[derive(Debug, Default)]
pub struct PauseGate {
    state: Mutex<GateState>,
    cv: Condvar,
}

impl PauseGate {
    /// An open gate with no vCPU threads registered.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the running vCPU threads and the signal that kicks them out of `KVM_RUN`
    /// (a pause waiting for them goes on).
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>, kick_signal: i32) {
        let mut st = self.lock();
        if !st.released {
            st.threads = threads;
            st.kick_signal = kick_signal;
            self.cv.notify_all();
        }
    }

    /// Whether the gate is closed.
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Closes the gate and waits until the vCPU threads are registered and every one is
    /// parked at the gate (at most `timeout`; then the gate opens again and the VM keeps
    /// running).
    pub fn pause(&self, timeout: Duration) -> Result<(), PauseError> {
        let start = Instant::now();
        let mut st = self.lock();
        if st.released {
            return Err(PauseError::Released);
        }
        st.paused = true;
        loop {
            if st.released {
                return Err(PauseError::Released);
            }
            if !st.threads.is_empty() && st.parked >= st.threads.len() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                st.paused = false;
                self.cv.notify_all();
                return Err(PauseError::Timeout {
                    parked: st.parked,
                    vcpus: st.threads.len(),
                    waited: start.elapsed(),
                });
            }
            for &t in &st.threads {
                // SAFETY: the threads are registered while they run and unregistered (under
                // this lock) by `release` before anyone joins them, so `t` is a live thread;
                // the kick signal has a no-op handler installed.
                unsafe { libc::pthread_kill(t, st.kick_signal) };
            }
            st = self
                .cv
                .wait_timeout(st, KICK_INTERVAL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Opens the gate. Returns whether it was closed.
    pub fn resume(&self) -> bool {
        let mut st = self.lock();
        let was = st.paused;
        st.paused = false;
        self.cv.notify_all();
        was
    }

    /// Opens the gate for good and forgets the threads (the VM is stopping).
    pub fn release(&self) {
        let mut st = self.lock();
        st.released = true;
        st.paused = false;
        st.threads.clear();
        self.cv.notify_all();
    }

    /// Called by a vCPU thread before each `KVM_RUN`: waits while the gate is closed.
    pub fn park(&self) {
        let mut st = self.lock();
        if !st.paused || st.released {
            return;
        }
        st.parked += 1;
        self.cv.notify_all();
        while st.paused && !st.released {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.parked -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// Threads that spin through the gate like vCPUs do; pause stops them all, resume lets
    /// them go on, release ends a paused loop.
    #[test]
    fn pause_parks_every_thread_and_release_ends_a_paused_vm() {
        let gate = Arc::new(PauseGate::new());
        let stop = Arc::new(AtomicBool::new(false));
        let laps = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (g, s, l) = (gate.clone(), stop.clone(), laps.clone());
                std::thread::spawn(move || {
                    while !s.load(Ordering::SeqCst) {
                        g.park();
                        l.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(100));
                    }
                })
            })
            .collect();
        // Before the threads are registered a pause waits for them (here: in vain).
        assert!(matches!(
            gate.pause(Duration::from_millis(30)),
            Err(PauseError::Timeout { vcpus: 0, .. })
        ));
        assert!(!gate.is_paused());
        // SIGCHLD's default action is to ignore it: a harmless kick for plain threads.
        gate.set_threads(
            handles.iter().map(|h| h.as_pthread_t()).collect(),
            libc::SIGCHLD,
        );
        gate.pause(Duration::from_secs(5)).expect("all parked");
        assert!(gate.is_paused());
        let before = laps.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(laps.load(Ordering::SeqCst), before, "no lap while paused");
        assert!(gate.resume());
        std::thread::sleep(Duration::from_millis(20));
        assert!(laps.load(Ordering::SeqCst) > before, "laps after resume");
        gate.pause(Duration::from_secs(5)).expect("paused again");
        stop.store(true, Ordering::SeqCst);
        gate.release();
        for h in handles {
            h.join().expect("thread ends");
        }
        assert_eq!(
            gate.pause(Duration::from_secs(1)),
            Err(PauseError::Released)
        );
        assert!(!gate.resume());
    }

    /// A thread that never reaches the gate makes pause time out and reopen the gate.
    #[test]
    fn pause_times_out_when_a_thread_does_not_park() {
        let gate = PauseGate::new();
        let busy = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(300)));
        gate.set_threads(vec![busy.as_pthread_t()], libc::SIGCHLD);
        let e = gate
            .pause(Duration::from_millis(50))
            .expect_err("never parks");
        assert!(
            matches!(
                e,
                PauseError::Timeout {
                    parked: 0,
                    vcpus: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!gate.is_paused());
        gate.release();
        busy.join().expect("join");
    }
}
