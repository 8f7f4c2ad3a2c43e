//! Timing marks the harness prints (these are what later benchmarks compare against), and
//! [`say`], which prints even when libtest captures test output.

use std::io::Write;
use std::time::{Duration, Instant};

/// Prints a harness message on stderr, bypassing libtest's output capture (so host selection,
/// retries and timings always show in `cargo test` output).
pub fn say(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "harness: {msg}");
    let _ = e.flush();
}

/// How long this process has been running (from /proc/self/stat and /proc/uptime; the kernel's
/// USER_HZ is 100 on every Linux architecture memtide runs on). `None` if unreadable.
pub fn process_age() -> Option<Duration> {
    pid_age("self")
}

/// (command name, parent pid, start time in ticks since boot) of a process.
fn stat_of(pid: &str) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split at the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        comm,
        fields.get(1)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

fn pid_age(pid: &str) -> Option<Duration> {
    let (_, _, start_ticks) = stat_of(pid)?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let age = uptime - start_ticks as f64 / 100.0;
    (age >= 0.0).then(|| Duration::from_secs_f64(age))
}

/// How long ago the `cargo` process that runs this test started (`cargo test` start, which
/// includes building and earlier test binaries), if an ancestor is cargo.
pub fn cargo_age() -> Option<Duration> {
    let mut pid = "self".to_string();
    for _ in 0..8 {
        let (comm, ppid, _) = stat_of(&pid)?;
        if comm == "cargo" {
            return pid_age(&pid);
        }
        if ppid <= 1 {
            return None;
        }
        pid = ppid.to_string();
    }
    None
}

/// An ordered set of named instants relative to a start.
#[derive(Debug, Clone)]
pub struct Timeline {
    label: String,
    start: Instant,
    marks: Vec<(String, Instant)>,
}

impl Timeline {
    /// A timeline starting now.
    pub fn new(label: &str) -> Self {
        Timeline {
            label: label.to_string(),
            start: Instant::now(),
            marks: Vec::new(),
        }
    }

    /// The start instant.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records `name` at `at` (e.g. a console line's timestamp) and prints it.
    pub fn mark_at(&mut self, name: &str, at: Instant) -> Duration {
        let d = at.saturating_duration_since(self.start);
        say(&format!(
            "timing [{}] {name}: +{:.2} s",
            self.label,
            d.as_secs_f64()
        ));
        self.marks.push((name.to_string(), at));
        d
    }

    /// Records `name` now and prints it.
    pub fn mark(&mut self, name: &str) -> Duration {
        self.mark_at(name, Instant::now())
    }

    /// The offset of mark `name` from the start.
    pub fn get(&self, name: &str) -> Option<Duration> {
        self.marks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, at)| at.saturating_duration_since(self.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_age_is_plausible() {
        let age = process_age().expect("readable on Linux");
        assert!(age < Duration::from_secs(24 * 3600), "{age:?}");
        // Under `cargo test` the runner is an ancestor and older than this process.
        if let Some(c) = cargo_age() {
            assert!(c >= age, "cargo {c:?} older than the test process {age:?}");
        }
        let (comm, _, _) = stat_of("self").expect("own stat");
        assert!(!comm.is_empty());
    }

    #[test]
    fn marks_are_relative_to_start() {
        let mut t = Timeline::new("t");
        let at = t.start() + Duration::from_millis(1500);
        assert_eq!(t.mark_at("x", at), Duration::from_millis(1500));
        assert_eq!(t.get("x"), Some(Duration::from_millis(1500)));
        assert_eq!(t.get("y"), None);
    }
}
