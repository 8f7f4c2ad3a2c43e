//! Why a VM stopped, and the one-shot signal (an EventFd) that tells the event loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::pause::PauseGate;

/// Why a VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (reboot, triple fault, `panic=1` after a panic).
    Reset,
    /// The VMM was told to stop (SIGTERM / SIGINT, or an API call).
    Stopped,
    /// A vCPU failed (message says why).
    Error(String),
}

impl ExitReason {
    /// The process exit status `memtide run` uses: 0 power off or stopped, 3 guest reset,
    /// 1 VMM error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExitReason::PowerOff | ExitReason::Stopped => 0,
            ExitReason::Reset => 3,
            ExitReason::Error(_) => 1,
        }
    }
}

/// First-one-wins exit request shared by vCPUs, devices and the event loop.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    requested: AtomicBool,
    evt: EventFd,
    pause: PauseGate,
}

impl ExitSignal {
    /// A fresh, unsignalled exit request.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            requested: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
            pause: PauseGate::new(),
        })
    }

    /// Records `reason` unless another one came first, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.requested.store(true, Ordering::SeqCst);
        // A paused VM must still stop: open its vCPUs' pause gate for good.
        self.pause.release();
        // A failed write means the counter is saturated: the loop is woken already.
        let _ = self.evt.write(1);
    }

    /// Whether an exit was requested (cheap: one atomic load).
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The gate the vCPU threads pass before each `KVM_RUN` (pause/resume).
    pub fn pause_gate(&self) -> &PauseGate {
        &self.pause
    }

    /// The EventFd the event loop waits on.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().expect("eventfd");
        assert_eq!(s.reason(), None);
        s.request(ExitReason::PowerOff);
        s.request(ExitReason::Reset);
        assert_eq!(s.reason(), Some(ExitReason::PowerOff));
        assert_eq!(s.eventfd().read().expect("signalled"), 2);
        assert_eq!(ExitReason::Reset.exit_code(), 3);
    }
}
