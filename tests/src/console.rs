//! A line-oriented console over any byte stream (a child's stdio, a Unix socket to a QEMU
//! serial port): a reader thread splits the output into timestamped lines (also appended to a
//! log file), and [`Console`] handles wait for lines and send lines.
//!
//! A `Console` is a cheap clone: every clone shares the stream and the line history but has
//! its own read cursor, so a guest handle and a test can both follow the same console.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Lines kept for error messages.
const TAIL_LINES: usize = 25;

/// Errors waiting on a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Nothing matching arrived in time.
    #[error("console {console}: no line {what} within {waited:?}; last lines:\n{tail}")]
    Timeout {
        /// The console's name.
        console: String,
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last lines seen.
        tail: String,
    },
    /// The stream ended (the process behind it exited) before a matching line.
    #[error("console {console}: closed while waiting for a line {what}; last lines:\n{tail}")]
    Closed {
        /// The console's name.
        console: String,
        /// What was awaited.
        what: String,
        /// The last lines seen.
        tail: String,
    },
    /// Writing to the console failed.
    #[error("console {console}: cannot send {line:?}: {source}")]
    Send {
        /// The console's name.
        console: String,
        /// The line.
        line: String,
        /// The OS error.
        source: io::Error,
    },
}

/// One line of console output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When the reader saw the end of the line.
    pub at: Instant,
    /// The text, without `\r`/`\n`.
    pub text: String,
}

#[derive(Debug, Default)]
struct State {
    lines: Vec<Line>,
    closed: bool,
}

struct Shared {
    name: String,
    state: Mutex<State>,
    cond: Condvar,
    writer: Mutex<Box<dyn Write + Send>>,
    echo: bool,
}

/// A handle on a console; see the module docs.
#[derive(Clone)]
pub struct Console {
    shared: Arc<Shared>,
    cursor: usize,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("name", &self.shared.name)
            .field("cursor", &self.cursor)
            .finish()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Console {
    /// Starts a console named `name` reading `reader` (in a thread, until end of stream) and
    /// writing to `writer`; every line is appended to `log` if given. With the environment
    /// variable `MEMTIDE_CONSOLE_ECHO=1` every line is also printed to stderr.
    pub fn start(
        name: &str,
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        log: Option<PathBuf>,
    ) -> Console {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            writer: Mutex::new(Box::new(writer)),
            echo: std::env::var("MEMTIDE_CONSOLE_ECHO").is_ok_and(|v| v == "1"),
        });
        let s = Arc::clone(&shared);
        let born = Instant::now();
        let mut log = log.and_then(|p| File::options().create(true).append(true).open(p).ok());
        thread::Builder::new()
            .name(format!("console-{name}"))
            .spawn(move || {
                let mut reader = reader;
                let mut buf = [0u8; 8192];
                let mut partial: Vec<u8> = Vec::new();
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if let Some(f) = log.as_mut() {
                        let _ = f.write_all(&buf[..n]);
                    }
                    partial.extend_from_slice(&buf[..n]);
                    let mut new = Vec::new();
                    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
                        let raw: Vec<u8> = partial.drain(..=pos).collect();
                        let text = String::from_utf8_lossy(&raw)
                            .trim_end_matches(['\n', '\r'])
                            .trim_start_matches('\r')
                            .to_string();
                        if s.echo {
                            let t = born.elapsed().as_secs_f64();
                            crate::timing::say(&format!("[{} +{t:.2}] {text}", s.name));
                        }
                        new.push(Line {
                            at: Instant::now(),
                            text,
                        });
                    }
                    if !new.is_empty() {
                        lock(&s.state).lines.extend(new);
                        s.cond.notify_all();
                    }
                }
                let mut st = lock(&s.state);
                if !partial.is_empty() {
                    let text = String::from_utf8_lossy(&partial)
                        .trim_end_matches('\r')
                        .to_string();
                    st.lines.push(Line {
                        at: Instant::now(),
                        text,
                    });
                }
                st.closed = true;
                drop(st);
                s.cond.notify_all();
            })
            .ok();
        Console { shared, cursor: 0 }
    }

    /// The console's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Sends `line` followed by `\n`.
    pub fn send_line(&self, line: &str) -> Result<(), ConsoleError> {
        let mut w = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let res = w
            .write_all(line.as_bytes())
            .and_then(|_| w.write_all(b"\n"))
            .and_then(|_| w.flush());
        res.map_err(|source| ConsoleError::Send {
            console: self.shared.name.clone(),
            line: line.to_string(),
            source,
        })
    }

    /// The read cursor: the index of the next line `wait_for_line` looks at.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Moves the cursor past every line received so far (ignore old output).
    pub fn skip_to_end(&mut self) {
        self.cursor = lock(&self.shared.state).lines.len();
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    /// All lines from index `from` on.
    pub fn lines_since(&self, from: usize) -> Vec<Line> {
        let st = lock(&self.shared.state);
        st.lines
            .get(from..)
            .map(<[Line]>::to_vec)
            .unwrap_or_default()
    }

    /// The last few lines, joined, for error messages.
    pub fn tail(&self) -> String {
        let st = lock(&self.shared.state);
        let start = st.lines.len().saturating_sub(TAIL_LINES);
        st.lines[start..]
            .iter()
            .map(|l| format!("  | {}", l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a line after the cursor satisfies `pred`; returns it and moves the cursor
    /// past it. `what` describes the awaited line for the error message.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<Line, ConsoleError> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.state);
        loop {
            while self.cursor < st.lines.len() {
                let i = self.cursor;
                self.cursor += 1;
                if pred(&st.lines[i].text) {
                    return Ok(st.lines[i].clone());
                }
            }
            if st.closed {
                drop(st);
                return Err(ConsoleError::Closed {
                    console: self.shared.name.clone(),
                    what: what.to_string(),
                    tail: self.tail(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                return Err(ConsoleError::Timeout {
                    console: self.shared.name.clone(),
                    what: what.to_string(),
                    waited: timeout,
                    tail: self.tail(),
                });
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Waits for a line containing `pattern` (see [`Console::wait_for_line`]).
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<Line, ConsoleError> {
        self.wait_for_line(&format!("containing {pattern:?}"), timeout, |l| {
            l.contains(pattern)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn lines_are_split_matched_and_timed_out() {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("printf 'one\\r\\ntwo\\n'; read x; echo got $x; printf tail")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
            panic!("pipes")
        };
        let mut c = Console::start("t", out, inp, None);
        let l = c.wait_for("two", Duration::from_secs(10)).expect("two");
        assert_eq!(l.text, "two");
        assert_eq!(c.lines_since(0)[0].text, "one");
        let mut other = c.clone();
        assert!(matches!(
            c.wait_for("never", Duration::from_millis(100)),
            Err(ConsoleError::Timeout { .. })
        ));
        c.send_line("ping").expect("send");
        assert_eq!(
            other
                .wait_for("got", Duration::from_secs(10))
                .expect("reply")
                .text,
            "got ping"
        );
        // The last partial line is delivered at end of stream, then waits fail as closed.
        assert_eq!(
            other
                .wait_for("tail", Duration::from_secs(10))
                .expect("partial")
                .text,
            "tail"
        );
        assert!(matches!(
            other.wait_for("more", Duration::from_secs(10)),
            Err(ConsoleError::Closed { .. })
        ));
        assert!(other.is_closed());
        let _ = child.wait();
    }
}
