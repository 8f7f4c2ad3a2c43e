//! Running commands in the emulated host over its console. The host's init reads lines in a
//! `while read -r line; do eval "$line"; done` loop with echo off; [`Shell::run`] sends
//! `( CMD ) </dev/null 2>&1; echo "@@MEMTIDE-DONE <n> $?"` and collects the lines up to the
//! marker. CMD runs in a subshell (an `exit` in it cannot end the host's init), so `cd` and
//! variables do not persist between commands; it must fit on one tty line ([`MAX_COMMAND`]).

use crate::console::Console;
use crate::error::{Error, Result};
use std::time::Duration;

/// The marker ending a command's output.
pub const DONE_MARKER: &str = "@@MEMTIDE-DONE";

/// Longest command line a canonical-mode tty passes (N_TTY_BUF_SIZE is 4096 with the newline).
pub const MAX_COMMAND: usize = 4000;

/// The output of a host command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// The command's exit status.
    pub status: i32,
    /// Its output lines (stdout and stderr, merged).
    pub lines: Vec<String>,
}

impl CmdOutput {
    /// The output joined with newlines.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A command runner on the host console.
#[derive(Debug)]
pub struct Shell {
    console: Console,
    seq: u64,
}

impl Shell {
    /// A runner over `console` (the host's ttyS0).
    pub fn new(console: Console) -> Self {
        Shell { console, seq: 0 }
    }

    /// Runs `cmd` in the host; returns its status and output. A non-zero status is not an
    /// error here (see [`Shell::check`]).
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        self.seq += 1;
        let marker = format!("{DONE_MARKER} {}", self.seq);
        let line = format!("( {cmd} ) </dev/null 2>&1; echo \"{marker} $?\"").replace('\n', " ");
        if line.len() > MAX_COMMAND {
            return Err(Error::Config(format!(
                "host command is {} bytes, longer than a tty line ({MAX_COMMAND}): {cmd:.80}...",
                line.len()
            )));
        }
        self.console.skip_to_end();
        let start = self.console.cursor();
        self.console.send_line(&line)?;
        let prefix = format!("{marker} ");
        let done =
            self.console
                .wait_for_line(&format!("{marker} (end of {cmd:.60})"), timeout, |l| {
                    l.starts_with(&prefix)
                })?;
        let status = done.text[prefix.len()..].trim().parse().unwrap_or(-1);
        let lines = self.console.lines_since(start);
        let end = self.console.cursor().saturating_sub(start + 1);
        Ok(CmdOutput {
            status,
            lines: lines.into_iter().take(end).map(|l| l.text).collect(),
        })
    }

    /// Runs `cmd` and fails with [`Error::HostCommand`] unless it exits 0.
    pub fn check(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let out = self.run(cmd, timeout)?;
        if out.status != 0 {
            return Err(Error::HostCommand {
                cmd: cmd.to_string(),
                status: out.status,
                output: out.text(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn commands_run_in_an_eval_loop_like_the_hosts() {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("while read -r line; do eval \"$line\"; done")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
            panic!("pipes")
        };
        let mut sh = Shell::new(Console::start("loop", out, inp, None));
        let t = Duration::from_secs(10);
        let o = sh.run("echo one; echo two >&2", t).expect("runs");
        assert_eq!(
            o,
            CmdOutput {
                status: 0,
                lines: vec!["one".into(), "two".into()]
            }
        );
        assert_eq!(sh.run("exit 3", t).expect("runs").status, 3);
        assert_eq!(
            sh.run("sleep 0 & echo started", t).expect("runs").lines,
            vec!["started"]
        );
        assert!(matches!(
            sh.check("false", t),
            Err(Error::HostCommand { status: 1, .. })
        ));
        assert!(matches!(
            sh.run(&"x".repeat(5000), t),
            Err(Error::Config(_))
        ));
        let o = sh.run("echo 'a  b'", t).expect("runs");
        assert_eq!(o.lines, vec!["a  b".to_string()]);
        let _ = child.kill();
        let _ = child.wait();
    }
}
