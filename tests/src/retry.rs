//! The dead-boot policy (KVM-HOST.md "Robustness"): on the emulated host an L2 guest sometimes
//! resets itself at boot (its VMM exits before the agent's first line) or stays silent, and the
//! emulated host kernel itself rarely dies. So a guest boot is tried at most
//! [`GUEST_BOOTS`] times and a host boot at most [`HOST_BOOTS`] times, each retry printed.
//! Only [`Error::is_dead_guest`] / [`Error::is_dead_host`] errors are retried: a wrong result
//! (bad pattern, wrong size, an agent error) is a failure at once.

use crate::error::{Error, Result};
use crate::timing::say;

/// Boots of one guest at most (the first and two more).
pub const GUEST_BOOTS: u32 = 3;

/// Boots of the emulated host at most (the first and one more).
pub const HOST_BOOTS: u32 = 2;

/// Which failures to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Retry dead or silent guests, up to [`GUEST_BOOTS`] boots.
    Guest,
    /// Retry dead hosts, up to [`HOST_BOOTS`] boots.
    Host,
}

impl Policy {
    fn max_boots(self) -> u32 {
        match self {
            Policy::Guest => GUEST_BOOTS,
            Policy::Host => HOST_BOOTS,
        }
    }

    fn retries(self, e: &Error) -> bool {
        match self {
            Policy::Guest => e.is_dead_guest(),
            Policy::Host => e.is_dead_host(),
        }
    }
}

/// Runs `boot(attempt)` (attempt counts from 1) until it succeeds, fails in a way `policy`
/// does not retry, or the boots are used up; prints each retry.
pub fn retry_boot<T>(what: &str, policy: Policy, boot: impl FnMut(u32) -> Result<T>) -> Result<T> {
    retry_boot_at_most(what, policy, policy.max_boots(), boot)
}

/// [`retry_boot`] with at most `max` boots (at most the policy's own limit), for callers that
/// nest retries and must keep the total within the policy.
pub fn retry_boot_at_most<T>(
    what: &str,
    policy: Policy,
    max: u32,
    mut boot: impl FnMut(u32) -> Result<T>,
) -> Result<T> {
    let max = max.clamp(1, policy.max_boots());
    let mut attempt = 1;
    loop {
        match boot(attempt) {
            Err(e) if attempt < max && policy.retries(&e) => {
                if e.is_dead_host() {
                    // This retry answers the host's death.
                    Error::take_host_death();
                }
                let first = e.to_string();
                let first = first.lines().next().unwrap_or("");
                say(&format!(
                    "{what}: boot {attempt} of at most {max} was dead ({first}); booting again"
                ));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Runs a whole test scenario that starts its own emulated host (`scenario(run)`, run counts
/// from 1) and, when it fails (panics or errs) after the harness found that host dead (QEMU
/// exited, or the host stopped beating: [`Error::host_died`]) with no retry answering it, or
/// after the test saw a guest reset itself silently ([`Error::note_silent_guest_reset`]),
/// runs it once more on a fresh host, saying so: the environment failing mid-test is a dead
/// boot, not a result. A scenario that fails otherwise fails at once (never retried).
pub fn rerun_on_host_death<T>(what: &str, mut scenario: impl FnMut(u32) -> T) -> T {
    let mut run = 1;
    loop {
        Error::take_host_death();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(run)));
        match outcome {
            Err(_) if run < HOST_BOOTS && Error::take_host_death() => {
                say(&format!(
                    "{what}: the emulated host died during run {run} (above); running the \
                     test again on a fresh host (run {} of at most {HOST_BOOTS})",
                    run + 1
                ));
                run += 1;
            }
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(v) => return v,
        }
    }
}

/// Polls `check` every `interval` until it returns `Ok(true)` (an `Err` ends the wait at
/// once); after `timeout` fails with [`Error::Timeout`] naming `what`.
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    interval: std::time::Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                waited: timeout,
                last: "-".into(),
            });
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn silent() -> Error {
        Error::GuestSilent {
            label: "g".into(),
            waited: Duration::from_secs(1),
            tail: String::new(),
        }
    }

    #[test]
    fn dead_guests_are_booted_again_at_most_twice() {
        let mut n = 0;
        let r: Result<()> = retry_boot("g", Policy::Guest, |_| {
            n += 1;
            Err(silent())
        });
        assert!(r.is_err_and(|e| e.is_dead_guest()));
        assert_eq!(n, 3);
        let r = retry_boot("g", Policy::Guest, |a| {
            if a < 3 {
                Err(silent())
            } else {
                Ok(a)
            }
        });
        assert_eq!(r.ok(), Some(3));
    }

    #[test]
    fn wrong_results_and_other_kinds_are_not_retried() {
        let mut n = 0;
        let r: Result<()> = retry_boot("g", Policy::Guest, |_| {
            n += 1;
            Err(Error::AgentCommand {
                label: "g".into(),
                cmd: "verify".into(),
                msg: "bad".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(n, 1);
        let mut n = 0;
        let r: Result<()> = retry_boot("h", Policy::Host, |_| {
            n += 1;
            Err(silent())
        });
        assert!(r.is_err());
        assert_eq!(n, 1, "the host policy does not retry guest deaths");
        let mut n = 0;
        let _ = retry_boot::<()>("h", Policy::Host, |_| {
            n += 1;
            Err(Error::host_died("x", ""))
        });
        assert_eq!(n, 2);
    }

    #[test]
    fn nested_callers_can_lower_but_not_raise_the_limit() {
        for (max, expected) in [(1, 1), (2, 2), (10, GUEST_BOOTS), (0, 1)] {
            let mut n = 0;
            let _ = retry_boot_at_most::<()>("g", Policy::Guest, max, |_| {
                n += 1;
                Err(silent())
            });
            assert_eq!(n, expected, "max {max}");
        }
    }

    #[test]
    fn a_scenario_is_run_again_only_after_its_host_died() {
        // Dies once (the harness found the host dead), then passes: two runs.
        let mut runs = Vec::new();
        let v = rerun_on_host_death("t", |run| {
            runs.push(run);
            if run == 1 {
                let e = Error::host_died("hung", "");
                panic!("scenario failed: {e}");
            }
            7
        });
        assert_eq!((v, runs), (7, vec![1, 2]));
        // A failure while the host lives (a wrong result) is not run again.
        let mut n = 0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rerun_on_host_death("t", |_| {
                n += 1;
                panic!("wrong pattern")
            })
        }));
        assert!(r.is_err());
        assert_eq!(n, 1);
        // A host that keeps dying: at most HOST_BOOTS runs, then the failure stands.
        let mut n = 0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rerun_on_host_death("t", |_| {
                n += 1;
                let e = Error::host_died("dead", "");
                panic!("{e}")
            })
        }));
        assert!(r.is_err());
        assert_eq!(n, HOST_BOOTS);
        // A death a retry already answered does not make a later failure a dead boot.
        let mut n = 0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rerun_on_host_death("t", |_| {
                n += 1;
                let booted = retry_boot("h", Policy::Host, |a| {
                    if a == 1 {
                        Err(Error::host_died("first boot dead", ""))
                    } else {
                        Ok(a)
                    }
                });
                assert_eq!(booted.ok(), Some(2));
                panic!("wrong size")
            })
        }));
        assert!(r.is_err());
        assert_eq!(n, 1);
    }

    #[test]
    fn a_silent_guest_reset_reruns_the_scenario_and_a_panicking_guest_is_told_apart() {
        let mut runs = 0;
        rerun_on_host_death("t", |run| {
            runs += 1;
            if run == 1 {
                Error::note_silent_guest_reset("g");
                panic!("g did not crash");
            }
        });
        assert_eq!(runs, 2);
        assert!(Error::console_shows_guest_failure(
            "  | [ 1.0] Kernel panic - not syncing: Attempted to kill init!"
        ));
        assert!(!Error::console_shows_guest_failure(
            "  | AGENT filled mib=4 seed=7 total_mib=56\n  | @@MEMTIDE-VMM-EXIT 0"
        ));
    }

    #[test]
    fn wait_until_polls_until_true_or_times_out() {
        let mut n = 0;
        wait_until(
            "n reaches 3",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                Ok(n >= 3)
            },
        )
        .expect("reached");
        assert_eq!(n, 3);
        let e = wait_until(
            "never",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || Ok(false),
        )
        .expect_err("times out");
        assert!(matches!(e, Error::Timeout { .. }) && e.to_string().contains("never"));
        let e = wait_until(
            "err",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || Err(silent()),
        )
        .expect_err("errors end the wait");
        assert!(e.is_dead_guest());
    }
}
