//! The virtio-balloon of a `memtide run` guest as the tests see it: the `memtide vm balloon`
//! CLI against the run's REST socket (JSON), and memtide's resident shared memory (RssShmem:
//! the memfd pages behind guest RAM) in the KVM host.

#![allow(dead_code)] // each test target uses a part

use memtide_testbed::{Error, KvmHost, Result};
use std::time::{Duration, Instant};

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// The first integer after `"key":` in `text` (None for `null`, `false`, or a missing key).
pub fn num(text: &str, key: &str) -> Option<u64> {
    text.split(&format!("\"{key}\":"))
        .nth(1)?
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The boolean after `"key":` in `text` (None for a missing key or another value).
pub fn flag(text: &str, key: &str) -> Option<bool> {
    let rest = text.split(&format!("\"{key}\":")).nth(1)?.trim_start();
    if rest.starts_with("true") {
        Some(true)
    } else if rest.starts_with("false") {
        Some(false)
    } else {
        None
    }
}

/// `memtide vm balloon run` against the REST socket of one `memtide run` in the host.
#[derive(Debug, Clone)]
pub struct BalloonCli {
    memtide: String,
    sock: String,
}

impl BalloonCli {
    /// The CLI at `memtide` (path in the host) for the run serving on `sock`.
    pub fn new(memtide: &str, sock: &str) -> Self {
        BalloonCli {
            memtide: memtide.to_string(),
            sock: sock.to_string(),
        }
    }

    /// The REST socket.
    pub fn sock(&self) -> &str {
        &self.sock
    }

    /// `memtide vm balloon run [args] --json`: the balloon's JSON.
    pub fn run(&self, host: &KvmHost, args: &str) -> Result<String> {
        Ok(host
            .check(
                &format!(
                    "{} vm balloon run {args} --json --api-sock {}",
                    self.memtide, self.sock
                ),
                Duration::from_secs(30),
            )?
            .text())
    }

    /// The balloon's JSON (no target change).
    pub fn show(&self, host: &KvmHost) -> Result<String> {
        self.run(host, "")
    }

    /// Polls every 500 ms until `ok` holds for the balloon's JSON, or `timeout` passed;
    /// returns the last JSON either way (the caller asserts on it).
    pub fn until(
        &self,
        host: &KvmHost,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let b = self.show(host)?;
            if ok(&b) || start.elapsed() > timeout {
                return Ok(b);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The last line of a host command's output as an integer.
fn last_number(host: &KvmHost, cmd: &str, what: &str) -> Result<u64> {
    let out = host.check(cmd, Duration::from_secs(30))?;
    out.lines
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| Error::Config(format!("no {what}: {:?}", out.lines)))
}

/// The resident shared memory of the first `memtide` process in the host, bytes.
pub fn memtide_shmem(host: &KvmHost) -> Result<u64> {
    let kib = last_number(
        host,
        "p=$(grep -l '^memtide$' /proc/[0-9]*/comm | head -n 1); \
         awk '/^RssShmem:/ {print $2}' \"${p%/comm}/status\"",
        "RssShmem",
    )?;
    Ok(kib * 1024)
}

/// The pid of the `memtide` process in process group `pgid` (a guest's VMM group,
/// `Guest::vmm_pid`), for telling several `memtide run`s apart.
pub fn memtide_pid(host: &KvmHost, pgid: u32) -> Result<u32> {
    let pid = last_number(
        host,
        &format!(
            "cat /proc/[0-9]*/stat 2>/dev/null | \
             awk '$2 == \"(memtide)\" && $5 == {pgid} {{print $1}}'"
        ),
        &format!("memtide process in group {pgid}"),
    )?;
    u32::try_from(pid).map_err(|_| Error::Config(format!("pid {pid} out of range")))
}

/// The resident shared memory of process `pid` in the host, bytes.
pub fn shmem_of(host: &KvmHost, pid: u32) -> Result<u64> {
    let kib = last_number(
        host,
        &format!("awk '/^RssShmem:/ {{print $2}}' /proc/{pid}/status"),
        &format!("RssShmem of pid {pid}"),
    )?;
    Ok(kib * 1024)
}
