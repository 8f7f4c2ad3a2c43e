//! The command interpreter: one command line in, the reply records out.

use crate::pattern::Region;
use crate::procfs::{self, Sources};
use crate::protocol::Record;
use std::process::Command;

/// What the main loop does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next command.
    Continue,
    /// Exit (the guest's init powers off).
    Exit,
}

/// The agent's state: the pattern regions it holds.
#[derive(Debug)]
pub struct Agent {
    sources: Sources,
    regions: Vec<Region>,
    next_seed: u64,
}

impl Agent {
    /// An agent reading the given kernel files.
    pub fn new(sources: Sources) -> Self {
        Agent {
            sources,
            regions: Vec::new(),
            next_seed: 1,
        }
    }

    /// MiB held in pattern regions.
    pub fn held_mib(&self) -> u64 {
        self.regions.iter().map(Region::mib).sum()
    }

    /// Runs one command line; returns its reply (ending with a `done` record) and what next.
    /// Empty lines give no reply.
    pub fn handle(&mut self, line: &str) -> (Vec<Record>, Next) {
        let line = line.trim();
        let (cmd, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let args = args.trim();
        if cmd.is_empty() {
            return (Vec::new(), Next::Continue);
        }
        let mut out = Vec::new();
        let mut next = Next::Continue;
        let result: Result<(), String> = match cmd {
            "report" => procfs::report(&self.sources)
                .map(|recs| out.extend(recs))
                .map_err(|e| e.to_string()),
            "meminfo" => procfs::meminfo_record(&self.sources)
                .map(|r| out.push(r))
                .map_err(|e| e.to_string()),
            "fill" => match args.parse::<u64>() {
                Ok(mib) => {
                    let seed = self.next_seed;
                    match Region::fill(mib, seed) {
                        Ok(r) => {
                            self.next_seed += 1;
                            self.regions.push(r);
                            out.push(Record::Filled {
                                mib,
                                seed,
                                total_mib: self.held_mib(),
                            });
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(_) => Err(format!("fill needs a size in MiB, got {args:?}")),
            },
            "verify" => {
                let mut bad_words = 0;
                let mut first_bad = None;
                let mut offset = 0u64;
                for r in &self.regions {
                    let (bad, first) = r.verify();
                    bad_words += bad;
                    if first_bad.is_none() {
                        first_bad = first.map(|w| offset + w * 8);
                    }
                    offset += r.mib() << 20;
                }
                out.push(Record::Verified {
                    mib: self.held_mib(),
                    bad_words,
                    first_bad,
                });
                if bad_words == 0 {
                    Ok(())
                } else {
                    Err(format!("{bad_words} words lost their pattern"))
                }
            }
            "free" => {
                let mib = self.held_mib();
                self.regions.clear();
                out.push(Record::Freed { mib });
                Ok(())
            }
            "echo" => {
                out.push(Record::Out(args.to_string()));
                Ok(())
            }
            "sh" => match Command::new("/bin/sh").arg("-c").arg(args).output() {
                Ok(o) => {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr);
                    out.extend(text.lines().map(|l| Record::Out(l.to_string())));
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(format!("command exited with {}", o.status))
                    }
                }
                Err(e) => Err(format!("cannot run /bin/sh: {e}")),
            },
            "poweroff" => {
                next = Next::Exit;
                Ok(())
            }
            other => Err(format!("unknown command {other:?}")),
        };
        let (ok, msg) = match result {
            Ok(()) => (true, String::new()),
            Err(m) => (false, m.replace(['\n', '\r'], " ")),
        };
        out.push(Record::Done {
            cmd: cmd.to_string(),
            ok,
            msg,
        });
        (out, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(recs: &[Record]) -> (String, bool) {
        match recs.last() {
            Some(Record::Done { cmd, ok, .. }) => (cmd.clone(), *ok),
            other => panic!("last record is not done: {other:?}"),
        }
    }

    #[test]
    fn commands_reply_and_end_with_done() {
        let mut a = Agent::new(Sources::system());
        let (r, n) = a.handle("report");
        assert_eq!(done(&r), ("report".into(), true));
        assert!(matches!(r[0], Record::MemInfo { .. }));
        assert_eq!(n, Next::Continue);

        let (r, _) = a.handle("fill 3");
        assert_eq!(
            r[0],
            Record::Filled {
                mib: 3,
                seed: 1,
                total_mib: 3
            }
        );
        let (r, _) = a.handle("fill 1");
        assert_eq!(
            r[0],
            Record::Filled {
                mib: 1,
                seed: 2,
                total_mib: 4
            }
        );
        let (r, _) = a.handle("verify");
        assert_eq!(
            r[0],
            Record::Verified {
                mib: 4,
                bad_words: 0,
                first_bad: None
            }
        );
        assert_eq!(done(&r), ("verify".into(), true));
        let (r, _) = a.handle("free");
        assert_eq!(r[0], Record::Freed { mib: 4 });
        assert_eq!(a.held_mib(), 0);

        let (r, _) = a.handle("echo hi there");
        assert_eq!(r[0], Record::Out("hi there".into()));
        let (r, _) = a.handle("sh echo one; echo two");
        assert_eq!(
            r[..2],
            [Record::Out("one".into()), Record::Out("two".into())]
        );
        let (r, _) = a.handle("sh exit 3");
        assert_eq!(done(&r), ("sh".into(), false));

        assert!(a.handle("   ").0.is_empty());
        let (r, n) = a.handle("poweroff");
        assert_eq!((done(&r), n), (("poweroff".into(), true), Next::Exit));
    }

    #[test]
    fn bad_commands_fail_cleanly() {
        let mut a = Agent::new(Sources::system());
        let (r, _) = a.handle("fill lots");
        assert_eq!(done(&r), ("fill".into(), false));
        let (r, _) = a.handle("fill 0");
        assert_eq!(done(&r), ("fill".into(), false));
        let (r, n) = a.handle("dance");
        assert_eq!((done(&r), n), (("dance".into(), false), Next::Continue));
        assert_eq!(a.held_mib(), 0);
    }
}
