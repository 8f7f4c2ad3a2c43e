//! memtide's guest agent: runs inside test guests (started by the guest image's init) and
//! answers commands read line by line from the serial console with records in the line format
//! of [`protocol`]. The test harness parses the same records with [`protocol::Record::parse`].
//!
//! Commands (one per line):
//! - `report`: meminfo, NUMA node masks, every zone of /proc/zoneinfo, the memory block size and
//!   every memory block (online, state, valid zones, node).
//! - `meminfo`: only the meminfo record.
//! - `fill N`: maps N MiB and writes a known pattern into it (kept until `free`).
//! - `verify`: checks the pattern of everything filled so far.
//! - `free`: unmaps everything filled.
//! - `echo WORD...`: prints the words back (an `out` record): a liveness check.
//! - `sh COMMAND...`: runs `/bin/sh -c COMMAND`, one `out` record per output line.
//! - `poweroff`: replies and exits; the guest's init then powers the guest off.
//!
//! Every reply ends with a `done` record naming the command and whether it succeeded.

pub mod agent;
pub mod pattern;
pub mod procfs;
pub mod protocol;
