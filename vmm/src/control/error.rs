//! Errors of the control plane, each with the [`ErrorKind`] a front end maps to its own
//! status (the REST API: 400, 404, 409, 422, 501, 503, 500).

use crate::config::ConfigError;
use crate::memory::backing::BackingError;
use crate::memory::MemoryError;
use crate::pause::PauseError;
use crate::vm::VmError;

/// What kind of failure an error is, for front ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something impossible (bad size, unaligned, bad id).
    BadRequest,
    /// The VM does not exist.
    NotFound,
    /// The VM is in the wrong state for the verb, or the id is taken.
    Conflict,
    /// The request is well-formed but beyond a limit (vCPUs, memory, hot-pluggable range).
    BeyondLimits,
    /// The VMM cannot do this (yet).
    Unsupported,
    /// The host memory pool cannot give the memory now.
    Exhausted,
    /// A host failure (KVM, threads, files).
    Internal,
}

/// Errors of [`super::ControlPlane`].
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A VM id that is not 1-64 characters of `A-Za-z0-9_.-` (not starting with `.` or `-`).
    #[error(
        "bad VM id {0:?}: use 1 to 64 characters from A-Z a-z 0-9 _ . - (not starting with . or -)"
    )]
    BadId(String),
    /// No VM has this id.
    #[error("no VM with id {0:?}")]
    NotFound(String),
    /// The id is taken.
    #[error("a VM with id {0:?} exists already")]
    Exists(String),
    /// The VM is in a state the verb does not apply to.
    #[error("VM {id:?} is {state}: cannot {verb}")]
    WrongState {
        /// The VM.
        id: String,
        /// Its state.
        state: &'static str,
        /// The verb.
        verb: &'static str,
    },
    /// A size is not a multiple of the granularity.
    #[error("{what} {value} is not a multiple of {align} bytes")]
    Unaligned {
        /// Which size.
        what: &'static str,
        /// The value.
        value: u64,
        /// The granularity.
        align: u64,
    },
    /// A request that is malformed in some other way.
    #[error("{0}")]
    Invalid(String),
    /// Beyond a limit.
    #[error("{0}")]
    BeyondLimits(String),
    /// The VM cannot hot(un)plug memory with this VMM.
    #[error("VM {0:?} has no virtio-mem device: it was created without hot-pluggable memory (hotplug size 0 on every node), so nothing can be plugged or unplugged")]
    NoVirtioMem(String),
    /// The VM has no virtio-balloon (its config turned it off).
    #[error("VM {0:?} has no virtio-balloon (it was created with the balloon off)")]
    NoBalloon(String),
    /// The pool cannot give the memory.
    #[error("host memory pool exhausted: {0}")]
    Exhausted(String),
    /// The VM config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Building the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Pausing failed.
    #[error("pausing VM {0:?}: {1}")]
    Pause(String, PauseError),
    /// The host memory pool or the host memory could not be set up.
    #[error("host memory: {0}")]
    Host(String),
    /// A host failure.
    #[error("{0}")]
    Internal(String),
}

fn config_kind(e: &ConfigError) -> ErrorKind {
    match e {
        ConfigError::TooManyVcpus(_)
        | ConfigError::MemoryTooLarge(_)
        | ConfigError::NodeTooSmall(..)
        | ConfigError::ApicIdsExhausted(..) => ErrorKind::BeyondLimits,
        _ => ErrorKind::BadRequest,
    }
}

impl ControlError {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ControlError::BadId(_) | ControlError::Unaligned { .. } | ControlError::Invalid(_) => {
                ErrorKind::BadRequest
            }
            ControlError::NotFound(_) => ErrorKind::NotFound,
            ControlError::Exists(_) | ControlError::WrongState { .. } => ErrorKind::Conflict,
            ControlError::BeyondLimits(_) => ErrorKind::BeyondLimits,
            ControlError::NoVirtioMem(_) | ControlError::NoBalloon(_) => ErrorKind::Unsupported,
            ControlError::Exhausted(_) => ErrorKind::Exhausted,
            ControlError::Config(e) => config_kind(e),
            ControlError::Vm(e) => match e {
                VmError::Config(c) => config_kind(c),
                VmError::Memory(MemoryError::Backing(BackingError::Exhausted { .. })) => {
                    ErrorKind::Exhausted
                }
                VmError::TooManyVcpus(..) | VmError::NoHostNode(..) => ErrorKind::BeyondLimits,
                e if e.is_bad_input() => ErrorKind::BadRequest,
                _ => ErrorKind::Internal,
            },
            ControlError::Pause(_, PauseError::Released) => ErrorKind::Conflict,
            ControlError::Pause(..) | ControlError::Host(_) | ControlError::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            ControlError::Config(ConfigError::UnalignedMemory(3)).kind(),
            ErrorKind::BadRequest
        );
        assert_eq!(
            ControlError::Config(ConfigError::TooManyVcpus(300)).kind(),
            ErrorKind::BeyondLimits
        );
        let exhausted = VmError::Memory(MemoryError::Backing(BackingError::Exhausted {
            node: 0,
            requested: 1,
            available: 0,
        }));
        assert_eq!(ControlError::Vm(exhausted).kind(), ErrorKind::Exhausted);
        assert_eq!(
            ControlError::NotFound("a".into()).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            ControlError::NoVirtioMem("a".into()).kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            ControlError::Pause("a".into(), PauseError::Released).kind(),
            ErrorKind::Conflict
        );
    }
}
