//! Running external tools (apt-get, dpkg, ldd, cargo) with errors that name the command.

use crate::error::{Error, Result};
use std::path::Path;
use std::process::{Command, Output};

/// Runs `cmd` to completion; fails unless it exits 0. Returns its output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    let out = cmd.output().map_err(|e| Error::Command {
        cmd: line.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: line,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out)
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Finds `tool` in PATH.
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds `tool` in PATH or fails naming the Debian package that has it.
pub fn need(tool: &str, package: &str) -> Result<std::path::PathBuf> {
    which(tool).ok_or_else(|| Error::ToolMissing {
        tool: tool.to_string(),
        hint: format!("install the Debian package {package} (scripts/install-deps.sh does)"),
    })
}

/// Makes the kernel kill `cmd`'s process (SIGKILL) when the thread that spawns it dies, so a
/// test process killed by a signal (a CI timeout) leaves no emulated host running. Spawn
/// such commands from the thread that owns the handle: the signal follows that thread.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        for s in [
            "plain",
            "a b",
            "it's",
            "",
            "$HOME",
            "x;y",
            "-M=microvm,acpi=on",
        ] {
            let out = run(Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(s))))
            .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }

    #[test]
    fn die_with_parent_still_runs_the_command() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("grep -E '^PPid' /proc/self/status >/dev/null && echo ok");
        die_with_parent(&mut cmd);
        let out = run(&mut cmd).expect("runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }

    #[test]
    fn failures_name_the_command() {
        let e = run(Command::new("sh").arg("-c").arg("echo oops >&2; exit 3")).expect_err("fails");
        let msg = e.to_string();
        assert!(
            msg.contains("sh -c") && msg.contains("oops") && msg.contains('3'),
            "{msg}"
        );
        assert!(matches!(
            need("no-such-tool-memtide", "pkg"),
            Err(Error::ToolMissing { .. })
        ));
    }
}
