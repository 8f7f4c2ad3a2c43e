//! The harness's error type. Two groups matter to the retry policy (see [`crate::retry`]):
//! a dead or silent guest ([`Error::is_dead_guest`]) and a dead host
//! ([`Error::is_dead_host`]); everything else is a real failure and is never retried.

use crate::console::ConsoleError;
use crate::cpio::CpioError;
use crate::kmod::KmodError;
use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

thread_local! {
    /// Set when the harness (in this thread: a test's scenario runs in one) finds the emulated
    /// host dead and no retry has answered it yet: what
    /// [`crate::retry::rerun_on_host_death`] looks at after a failed (panicked) scenario.
    static UNANSWERED_HOST_DEATH: Cell<bool> = const { Cell::new(false) };
}

/// Errors of the test harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An external command could not be run or failed.
    #[error("`{cmd}` failed: {detail}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status and stderr, or the spawn error.
        detail: String,
    },
    /// A tool the harness needs is not installed.
    #[error("{tool} is not installed: {hint}")]
    ToolMissing {
        /// The tool.
        tool: String,
        /// How to get it.
        hint: String,
    },
    /// The Debian kernel package cannot be resolved or fetched.
    #[error("guest kernel: {0}")]
    Kernel(String),
    /// Building an archive failed.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// Resolving kernel modules failed.
    #[error(transparent)]
    Kmod(#[from] KmodError),
    /// Neither hardware KVM nor the emulated host can be used.
    #[error("no usable KVM host: {0}")]
    NoUsableHost(String),
    /// Bad configuration given to the harness.
    #[error("bad harness configuration: {0}")]
    Config(String),
    /// The emulated host died or never became ready (no ready/end marker).
    #[error("emulated KVM host is dead: {reason}; last console lines:\n{tail}")]
    HostDied {
        /// What happened.
        reason: String,
        /// The host console's last lines.
        tail: String,
    },
    /// The guest's VMM exited before the guest agent spoke (a reset or a crash at boot).
    #[error("guest {label}: VMM exited{status} before the guest agent's first line; last lines:\n{tail}")]
    GuestDied {
        /// The guest's label.
        label: String,
        /// ` with status N` when known.
        status: String,
        /// The guest console's last lines.
        tail: String,
    },
    /// The guest printed no agent line within the timeout.
    #[error("guest {label}: no guest agent line within {waited:?}; last lines:\n{tail}")]
    GuestSilent {
        /// The guest's label.
        label: String,
        /// How long we waited.
        waited: Duration,
        /// The guest console's last lines.
        tail: String,
    },
    /// A console wait failed (outside boot, where it is a real failure).
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The guest agent answered a command with an error.
    #[error("guest {label}: agent command {cmd:?} failed: {msg}")]
    AgentCommand {
        /// The guest's label.
        label: String,
        /// The command.
        cmd: String,
        /// The agent's message.
        msg: String,
    },
    /// The guest agent printed a line the harness cannot parse.
    #[error("guest {label}: {source}")]
    AgentProtocol {
        /// The guest's label.
        label: String,
        /// The parse error.
        source: memtide_guest_agent::protocol::ParseError,
    },
    /// A condition polled for did not come true in time.
    #[error("{what}: not reached within {waited:?}; last seen: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
        /// The last state seen.
        last: String,
    },
    /// A command in the host failed (non-zero status).
    #[error("host command {cmd:?} exited with {status}; output:\n{output}")]
    HostCommand {
        /// The command.
        cmd: String,
        /// Its exit status.
        status: i32,
        /// Its output.
        output: String,
    },
}

impl Error {
    /// A guest that died or stayed silent while booting: the retry policy boots it again.
    pub fn is_dead_guest(&self) -> bool {
        matches!(self, Error::GuestDied { .. } | Error::GuestSilent { .. })
    }

    /// A host that died or never became ready: the retry policy boots it once more.
    pub fn is_dead_host(&self) -> bool {
        matches!(self, Error::HostDied { .. })
    }

    /// [`Error::HostDied`], recorded as a host death no retry has answered yet (every dead
    /// host the harness finds is made here).
    pub fn host_died(reason: impl Into<String>, tail: impl Into<String>) -> Error {
        UNANSWERED_HOST_DEATH.set(true);
        Error::HostDied {
            reason: reason.into(),
            tail: tail.into(),
        }
    }

    /// Records that a running guest reset itself with nothing on its console (no panic, no
    /// oops: a triple fault), which the emulated host's nested SVM does now and then
    /// (KVM-HOST.md): like a dead host, it lets [`crate::retry::rerun_on_host_death`] run the
    /// test once more. A VMM error, a panic in the guest or any wrong result is not this.
    pub fn note_silent_guest_reset(label: &str) {
        crate::timing::say(&format!(
            "guest {label} reset itself with no panic or oops on its console (the emulated \
             host's nested SVM does this now and then; KVM-HOST.md)"
        ));
        UNANSWERED_HOST_DEATH.set(true);
    }

    /// Whether a guest console's last lines show the guest kernel failing (a panic, an oops,
    /// a BUG): then a reset is the guest's own failure, not the environment's.
    pub fn console_shows_guest_failure(tail: &str) -> bool {
        [
            "Kernel panic",
            "Oops",
            "BUG:",
            "general protection fault",
            "Call Trace",
        ]
        .iter()
        .any(|k| tail.contains(k))
    }

    /// Takes the record of an unanswered host death (a retry is about to answer it).
    pub(crate) fn take_host_death() -> bool {
        UNANSWERED_HOST_DEATH.replace(false)
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
