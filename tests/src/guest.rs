//! A running guest: its VMM process (on the local machine or inside the emulated host) and its
//! serial console, over which the harness talks to the guest agent.
//!
//! The console stream carries the guest's serial output and, when the VMM exits, one marker
//! line [`VMM_EXIT_MARKER`]` <status>` written by the harness's wrapper, so a VMM exit is seen
//! in order with the guest's output.

use crate::console::{Console, ConsoleError, Line};
use crate::error::{Error, Result};
use crate::shell::Shell;
use memtide_guest_agent::protocol::{MemoryBlock, NodeMasks, Record, ZoneStat, PREFIX};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The marker line the VMM wrapper prints when the VMM exits: `@@MEMTIDE-VMM-EXIT <status>`.
pub const VMM_EXIT_MARKER: &str = "@@MEMTIDE-VMM-EXIT";

/// Default time an agent command may take (fills of GiBs under emulation take a while).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The guest agent's `report`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// MemTotal in KiB.
    pub mem_total_kib: u64,
    /// MemFree in KiB.
    pub mem_free_kib: u64,
    /// MemAvailable in KiB.
    pub mem_available_kib: u64,
    /// The NUMA node masks the guest sees.
    pub nodes: NodeMasks,
    /// Every zone of every node (/proc/zoneinfo order).
    pub zones: Vec<ZoneStat>,
    /// The memory block size in bytes (absent without memory hotplug support).
    pub block_size: Option<u64>,
    /// Every memory block.
    pub blocks: Vec<MemoryBlock>,
}

impl Report {
    /// Builds a report from the records of a `report` reply.
    pub fn from_records(records: &[Record]) -> Report {
        let mut r = Report::default();
        for rec in records {
            match rec {
                Record::MemInfo {
                    total_kib,
                    free_kib,
                    available_kib,
                } => {
                    r.mem_total_kib = *total_kib;
                    r.mem_free_kib = *free_kib;
                    r.mem_available_kib = *available_kib;
                }
                Record::Nodes(m) => r.nodes = m.clone(),
                Record::Zone(z) => r.zones.push(z.clone()),
                Record::BlockSize { bytes } => r.block_size = Some(*bytes),
                Record::Block(b) => r.blocks.push(b.clone()),
                _ => {}
            }
        }
        r
    }

    /// The zone `name` of `node`.
    pub fn zone(&self, node: u32, name: &str) -> Option<&ZoneStat> {
        self.zones.iter().find(|z| z.node == node && z.name == name)
    }

    /// Sum of `managed` pages over all zones, in KiB (4 KiB pages); equals MemTotal on Linux.
    pub fn managed_kib(&self) -> u64 {
        self.zones.iter().map(|z| z.managed * 4).sum()
    }

    /// Managed KiB of zone `name` summed over all nodes (e.g. how much of MemTotal is in
    /// ZONE_MOVABLE).
    pub fn zone_managed_kib(&self, name: &str) -> u64 {
        self.zones
            .iter()
            .filter(|z| z.name == name)
            .map(|z| z.managed * 4)
            .sum()
    }

    /// Managed KiB of all zones of `node`.
    pub fn node_managed_kib(&self, node: u32) -> u64 {
        self.zones
            .iter()
            .filter(|z| z.node == node)
            .map(|z| z.managed * 4)
            .sum()
    }

    /// Online memory blocks whose zone is `zone` (e.g. `Movable`).
    pub fn online_blocks_in(&self, zone: &str) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.online && b.valid_zones == zone)
            .count()
    }
}

/// How a guest's VMM is stopped when the handle is dropped.
#[derive(Debug)]
pub(crate) enum Reaper {
    /// A local child in its own process group.
    Local(Child),
    /// A process group inside the emulated host, killed through the host shell.
    InHost {
        shell: Arc<Mutex<Shell>>,
        /// The host's console, to tell a hung host by its heartbeat.
        host_console: Console,
        pgid: u32,
        slot: usize,
        slots: Arc<Mutex<Vec<bool>>>,
    },
}

/// How often a wait for a guest in the emulated host looks at the host's health.
const HOST_CHECK_EVERY: Duration = Duration::from_secs(10);

/// A running guest; see the module docs. Dropping it kills the VMM (by pid/process group).
#[derive(Debug)]
pub struct Guest {
    label: String,
    console: Console,
    reaper: Option<Reaper>,
    spawned_at: Instant,
    agent_at: Option<Instant>,
    exit_status: Option<i32>,
}

fn exit_status_of(line: &str) -> Option<i32> {
    let rest = line.trim().strip_prefix(VMM_EXIT_MARKER)?;
    Some(rest.trim().parse().unwrap_or(-1))
}

impl Guest {
    pub(crate) fn new(label: &str, console: Console, reaper: Reaper, spawned_at: Instant) -> Guest {
        Guest {
            label: label.to_string(),
            console,
            reaper: Some(reaper),
            spawned_at,
            agent_at: None,
            exit_status: None,
        }
    }

    /// The guest's label (for messages).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The guest's console (raw access: kernel lines, `INIT` lines, agent lines).
    pub fn console(&mut self) -> &mut Console {
        &mut self.console
    }

    /// When the VMM was started.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// When the agent's first line arrived (after [`Guest::wait_agent`]).
    pub fn agent_at(&self) -> Option<Instant> {
        self.agent_at
    }

    /// The VMM's process id (its process group id too): a local pid, or a pid inside the
    /// emulated host.
    pub fn vmm_pid(&self) -> Option<u32> {
        match &self.reaper {
            Some(Reaper::Local(c)) => Some(c.id()),
            Some(Reaper::InHost { pgid, .. }) => Some(*pgid),
            None => None,
        }
    }

    /// The VMM's exit status once it exited (seen on the console).
    pub fn exit_status(&self) -> Option<i32> {
        self.exit_status
    }

    /// Waits for the agent's `ready` line. A VMM exit first is [`Error::GuestDied`], nothing
    /// within `timeout` is [`Error::GuestSilent`]: both are what [`crate::retry`] retries.
    /// A guest in an emulated host that stops beating (or reports a lockup) meanwhile ends the
    /// wait early as [`Error::HostDied`].
    pub fn wait_agent(&mut self, timeout: Duration) -> Result<Line> {
        let mut exit = None;
        let deadline = Instant::now() + timeout;
        let res = loop {
            // In slices, to look at the host's health in between.
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(HOST_CHECK_EVERY);
            let res = self.console.wait_for_line("agent ready", slice, |l| {
                if let Some(s) = exit_status_of(l) {
                    exit = Some(s);
                    return true;
                }
                l.starts_with(PREFIX) && matches!(Record::parse(l), Ok(Record::Ready { .. }))
            });
            match res {
                Err(ConsoleError::Timeout { .. })
                    if Instant::now() < deadline && self.host_trouble().is_none() => {}
                Err(ConsoleError::Timeout { what, tail, .. }) => {
                    break Err(ConsoleError::Timeout {
                        console: self.console.name().to_string(),
                        what,
                        waited: timeout,
                        tail,
                    })
                }
                other => break other,
            }
        };
        match (res, exit) {
            (Ok(_), Some(status)) => {
                self.exit_status = Some(status);
                Err(Error::GuestDied {
                    label: self.label.clone(),
                    status: format!(" with status {status}"),
                    tail: self.console.tail(),
                })
            }
            (Ok(line), None) => {
                self.agent_at = Some(line.at);
                Ok(line)
            }
            (Err(e @ ConsoleError::Closed { .. }), _) => Err(self.closed(e)),
            (Err(e @ ConsoleError::Timeout { .. }), _) if self.host_trouble().is_some() => {
                Err(self.closed(e))
            }
            (Err(ConsoleError::Timeout { tail, waited, .. }), _) => Err(Error::GuestSilent {
                label: self.label.clone(),
                waited,
                tail,
            }),
            (Err(e), _) => Err(e.into()),
        }
    }

    /// Sends an agent command and returns its reply records (up to and including `done`).
    /// An agent error reply is [`Error::AgentCommand`]; a VMM exit meanwhile is an error too.
    pub fn command(&mut self, cmd: &str, timeout: Duration) -> Result<Vec<Record>> {
        let word = cmd.split_whitespace().next().unwrap_or("").to_string();
        self.console.send_line(cmd).map_err(|e| self.closed(e))?;
        let mut records = Vec::new();
        let mut failure: Option<Error> = None;
        let label = self.label.clone();
        let mut exit = None;
        self.console
            .wait_for_line(&format!("agent reply to {word:?}"), timeout, |l| {
                if let Some(s) = exit_status_of(l) {
                    exit = Some(s);
                    return true;
                }
                if !l.starts_with(PREFIX) {
                    return false;
                }
                match Record::parse(l) {
                    Ok(Record::Done { cmd, ok, msg }) if cmd == word => {
                        if !ok {
                            failure = Some(Error::AgentCommand {
                                label: label.clone(),
                                cmd: cmd.clone(),
                                msg,
                            });
                        }
                        records.push(Record::Done {
                            cmd,
                            ok,
                            msg: String::new(),
                        });
                        true
                    }
                    Ok(Record::Ready { .. }) => {
                        // init restarts the agent when it dies (e.g. killed by the OOM killer).
                        failure = Some(Error::AgentCommand {
                            label: label.clone(),
                            cmd: word.clone(),
                            msg: "the agent died and was restarted before replying (OOM kill?)"
                                .into(),
                        });
                        true
                    }
                    Ok(r) => {
                        records.push(r);
                        false
                    }
                    Err(source) => {
                        failure = Some(Error::AgentProtocol {
                            label: label.clone(),
                            source,
                        });
                        true
                    }
                }
            })
            .map_err(|e| self.closed(e))?;
        if let Some(s) = exit {
            self.exit_status = Some(s);
            // memtide exits 3 when its guest resets; with nothing on the console that is the
            // nested SVM emulation's triple fault, not the guest failing (KVM-HOST.md).
            if s == 3 && !Error::console_shows_guest_failure(&self.console.tail()) {
                Error::note_silent_guest_reset(&label);
            }
            return Err(Error::AgentCommand {
                label,
                cmd: word,
                msg: format!(
                    "the VMM exited with status {s} before the reply; last lines:\n{}",
                    self.console.tail()
                ),
            });
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(records),
        }
    }

    /// MemTotal in KiB (a cheap `meminfo` command, for polling).
    pub fn mem_total_kib(&mut self) -> Result<u64> {
        let recs = self.command("meminfo", COMMAND_TIMEOUT)?;
        recs.iter()
            .find_map(|r| match r {
                Record::MemInfo { total_kib, .. } => Some(*total_kib),
                _ => None,
            })
            .ok_or_else(|| self.missing("meminfo", "meminfo"))
    }

    /// Polls the agent's report every `interval` until `pred` holds; returns that report, or
    /// [`Error::Timeout`] with the last report seen after `timeout`.
    pub fn wait_for_report(
        &mut self,
        what: &str,
        timeout: Duration,
        interval: Duration,
        mut pred: impl FnMut(&Report) -> bool,
    ) -> Result<Report> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.report()?;
            if pred(&r) {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("guest {}: {what}", self.label),
                    waited: timeout,
                    last: format!(
                        "MemTotal {} kB, zones {:?}",
                        r.mem_total_kib,
                        r.zones
                            .iter()
                            .map(|z| format!(
                                "{}:{} present={} managed={}",
                                z.node, z.name, z.present, z.managed
                            ))
                            .collect::<Vec<_>>()
                    ),
                });
            }
            std::thread::sleep(interval);
        }
    }

    /// The agent's full report.
    pub fn report(&mut self) -> Result<Report> {
        Ok(Report::from_records(
            &self.command("report", COMMAND_TIMEOUT)?,
        ))
    }

    /// Fills `mib` MiB with the agent's pattern; returns the MiB the agent holds in all.
    pub fn fill(&mut self, mib: u64) -> Result<u64> {
        let recs = self.command(&format!("fill {mib}"), COMMAND_TIMEOUT)?;
        recs.iter()
            .find_map(|r| {
                if let Record::Filled { total_mib, .. } = r {
                    Some(*total_mib)
                } else {
                    None
                }
            })
            .ok_or_else(|| self.missing("fill", "filled"))
    }

    /// Verifies everything filled; an intact pattern returns the MiB checked, a damaged one is
    /// an [`Error::AgentCommand`] naming the bad words.
    pub fn verify(&mut self) -> Result<u64> {
        let recs = self.command("verify", COMMAND_TIMEOUT)?;
        recs.iter()
            .find_map(|r| {
                if let Record::Verified { mib, .. } = r {
                    Some(*mib)
                } else {
                    None
                }
            })
            .ok_or_else(|| self.missing("verify", "verified"))
    }

    /// Frees everything filled; returns the MiB released.
    pub fn free(&mut self) -> Result<u64> {
        let recs = self.command("free", COMMAND_TIMEOUT)?;
        recs.iter()
            .find_map(|r| {
                if let Record::Freed { mib } = r {
                    Some(*mib)
                } else {
                    None
                }
            })
            .ok_or_else(|| self.missing("free", "freed"))
    }

    /// Runs a shell command in the guest; returns its output lines (fails on non-zero exit).
    pub fn sh(&mut self, cmd: &str) -> Result<Vec<String>> {
        let recs = self.command(&format!("sh {cmd}"), COMMAND_TIMEOUT)?;
        Ok(recs
            .into_iter()
            .filter_map(|r| {
                if let Record::Out(t) = r {
                    Some(t)
                } else {
                    None
                }
            })
            .collect())
    }

    fn missing(&self, cmd: &str, kind: &str) -> Error {
        Error::AgentCommand {
            label: self.label.clone(),
            cmd: cmd.to_string(),
            msg: format!("reply had no {kind} record"),
        }
    }

    /// Why the emulated host behind this guest is dead though its QEMU runs (see
    /// [`crate::EmulatedHost::trouble`]); None for a healthy host or a local guest.
    pub fn host_trouble(&self) -> Option<String> {
        match &self.reaper {
            Some(Reaper::InHost { host_console, .. }) => {
                crate::emulated::host_trouble(host_console)
            }
            _ => None,
        }
    }

    /// A console that closed: for a guest in the emulated host that is the host's QEMU
    /// exiting (the console is a socket to it), i.e. a dead host; otherwise a plain error.
    /// A console that timed out while the emulated host stopped beating: a hung host.
    fn closed(&self, e: ConsoleError) -> Error {
        match (&e, &self.reaper) {
            (ConsoleError::Closed { tail, .. }, Some(Reaper::InHost { .. })) => Error::host_died(
                format!(
                    "guest {}'s console closed: the emulated host's QEMU exited",
                    self.label
                ),
                tail.clone(),
            ),
            (
                ConsoleError::Timeout { what, waited, .. },
                Some(Reaper::InHost { host_console, .. }),
            ) if self.host_trouble().is_some() => Error::host_died(
                format!(
                    "guest {}: no line {what} within {waited:?}, and the emulated host {}",
                    self.label,
                    self.host_trouble().unwrap_or_default()
                ),
                host_console.tail(),
            ),
            (ConsoleError::Closed { tail, .. }, _) => Error::GuestDied {
                label: self.label.clone(),
                status: " without an exit marker".into(),
                tail: tail.clone(),
            },
            _ => e.into(),
        }
    }

    /// Waits until the VMM exits; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        if let Some(s) = self.exit_status {
            return Ok(s);
        }
        let line = self
            .console
            .wait_for_line("VMM exit", timeout, |l| exit_status_of(l).is_some())
            .map_err(|e| self.closed(e))?;
        let status = exit_status_of(&line.text).unwrap_or(-1);
        self.exit_status = Some(status);
        if let Some(Reaper::Local(child)) = self.reaper.as_mut() {
            let _ = child.wait();
        }
        Ok(status)
    }

    /// Asks the agent to power the guest off and waits for the VMM to exit; returns its exit
    /// status.
    pub fn poweroff(&mut self, timeout: Duration) -> Result<i32> {
        self.command("poweroff", timeout)?;
        self.wait_exit(timeout)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        match self.reaper.take() {
            Some(Reaper::Local(mut child)) => {
                if self.exit_status.is_none() {
                    // The VMM runs in its own process group (pgid = its pid): kill the group.
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", "--", &format!("-{}", child.id())])
                        .status();
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
            Some(Reaper::InHost {
                shell,
                host_console,
                pgid,
                slot,
                slots,
            }) => {
                // A hung host cannot kill anything; it is killed whole when it drops.
                if self.exit_status.is_none()
                    && crate::emulated::host_silence(&host_console).is_none()
                {
                    let mut sh = shell.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = sh.run(
                        &format!("kill -KILL -- -{pgid} 2>/dev/null; true"),
                        Duration::from_secs(10),
                    );
                }
                if let Some(s) = slots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(slot)
                {
                    *s = false;
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_marker_is_recognized() {
        assert_eq!(exit_status_of("@@MEMTIDE-VMM-EXIT 0"), Some(0));
        assert_eq!(exit_status_of("@@MEMTIDE-VMM-EXIT 137"), Some(137));
        assert_eq!(exit_status_of("AGENT ready version=1"), None);
    }

    #[test]
    fn report_is_assembled_from_records() {
        let recs = [
            Record::MemInfo {
                total_kib: 8,
                free_kib: 4,
                available_kib: 5,
            },
            Record::Zone(ZoneStat {
                node: 0,
                name: "Movable".into(),
                spanned: 2,
                present: 2,
                managed: 2,
                free: 1,
                start_pfn: Some(1),
            }),
            Record::BlockSize { bytes: 128 << 20 },
            Record::Block(MemoryBlock {
                id: 1,
                node: Some(0),
                online: true,
                state: "online".into(),
                valid_zones: "Movable".into(),
            }),
        ];
        let r = Report::from_records(&recs);
        assert_eq!(r.mem_total_kib, 8);
        assert_eq!(r.managed_kib(), 8);
        assert_eq!(r.zone(0, "Movable").map(|z| z.free), Some(1));
        assert_eq!(r.online_blocks_in("Movable"), 1);
        assert_eq!(r.zone_managed_kib("Movable"), 8);
        assert_eq!(r.zone_managed_kib("Normal"), 0);
        assert_eq!((r.node_managed_kib(0), r.node_managed_kib(1)), (8, 0));
        assert_eq!(r.block_size, Some(128 << 20));
    }
}
