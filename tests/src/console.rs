//! A line-oriented console over any byte stream (a child's stdio, a Unix socket to a QEMU
//! serial port): a reader thread splits the output into timestamped lines (also appended to a
//! log file), and [`Console`] handles wait for lines and send lines.
//!
//! A `Console` is a cheap clone: every clone shares the stream and the line history but has
//! its own read cursor, so a guest handle and a test can both follow the same console.
//!
//! Heartbeats: a writer may interleave [`HEARTBEAT`] lines (one `write(2)` each, so never torn)
//! anywhere in the stream, even inside another line; the reader removes them before it splits
//! lines and only records when the last one arrived ([`Console::heartbeat_silence`]). The
//! emulated host prints one every few seconds, so a silent host is told from a slow command.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Lines kept for error messages.
const TAIL_LINES: usize = 25;

/// The heartbeat a writer may interleave with its output (followed by `\n`, or `\r\n`
/// after a tty's output processing). It starts with the ASCII record separator, which no
/// program's output here contains.
pub const HEARTBEAT: &str = "\u{1e}@@MEMTIDE-HEARTBEAT";

/// Removes every complete heartbeat (with its line end) from `buf`; returns how many there
/// were. An incomplete one at the end stays for the next read.
fn strip_heartbeats(buf: &mut Vec<u8>) -> usize {
    let beat = HEARTBEAT.as_bytes();
    let mut removed = 0;
    let mut from = 0;
    while let Some(pos) = buf[from..]
        .windows(beat.len())
        .position(|w| w == beat)
        .map(|p| p + from)
    {
        let rest = &buf[pos + beat.len()..];
        let end = if rest.starts_with(b"\r\n") {
            2
        } else if rest.starts_with(b"\n") {
            1
        } else if rest.is_empty() || rest == b"\r" {
            // The line end has not arrived yet.
            break;
        } else {
            // Not followed by a line end: not a heartbeat; leave it.
            from = pos + 1;
            continue;
        };
        buf.drain(pos..pos + beat.len() + end);
        removed += 1;
        from = pos;
    }
    removed
}

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
    last_heartbeat: Option<Instant>,
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
                    partial.extend_from_slice(&buf[..n]);
                    if strip_heartbeats(&mut partial) > 0 {
                        lock(&s.state).last_heartbeat = Some(Instant::now());
                    }
                    let mut new = Vec::new();
                    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
                        let raw: Vec<u8> = partial.drain(..=pos).collect();
                        if let Some(f) = log.as_mut() {
                            let _ = f.write_all(&raw);
                        }
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
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&partial);
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

    /// How long ago the last [`HEARTBEAT`] arrived; None if none ever did.
    pub fn heartbeat_silence(&self) -> Option<Duration> {
        lock(&self.shared.state).last_heartbeat.map(|t| t.elapsed())
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
        assert_eq!(other.heartbeat_silence(), None);
        let _ = child.wait();
    }

    #[test]
    fn heartbeats_are_removed_wherever_they_land_and_recorded() {
        let beat = HEARTBEAT;
        let cases: &[(&str, &str, usize)] = &[
            ("", "", 0),
            ("a\n", "a\n", 0),
            (&format!("{beat}\r\n"), "", 1),
            (&format!("{beat}\n"), "", 1),
            (&format!("ab{beat}\r\ncd\n"), "abcd\n", 1),
            (&format!("{beat}\n{beat}\r\nx\n{beat}\n"), "x\n", 3),
            // Incomplete: kept until its line end arrives.
            (&format!("x\n{beat}"), &format!("x\n{beat}"), 0),
            (&format!("x\n{beat}\r"), &format!("x\n{beat}\r"), 0),
            (&beat[..5], &beat[..5], 0),
            // The marker without a line end right after it is not a heartbeat.
            (&format!("{beat}X\n"), &format!("{beat}X\n"), 0),
        ];
        for (input, output, n) in cases {
            let mut buf = input.as_bytes().to_vec();
            assert_eq!(strip_heartbeats(&mut buf), *n, "{input:?}");
            assert_eq!(String::from_utf8_lossy(&buf), *output, "{input:?}");
        }
        // Through a real stream, split at every byte: lines come out clean, beats recorded.
        let script = format!(
            "printf 'par'; printf '{b}\\r\\n'; printf 'tial\\n'; printf '{b}\\n'; \
             printf 'end\\n'; sleep 0.3",
            b = beat.replace('\u{1e}', "\\036")
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let Some(out) = child.stdout.take() else {
            panic!("pipe")
        };
        let one_byte_at_a_time = OneByte(out);
        let mut c = Console::start("hb", one_byte_at_a_time, std::io::sink(), None);
        c.wait_for("end", Duration::from_secs(10)).expect("end");
        let texts: Vec<String> = c.lines_since(0).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, vec!["partial", "end"]);
        assert!(c
            .heartbeat_silence()
            .is_some_and(|d| d < Duration::from_secs(10)));
        let _ = child.wait();
    }

    /// A reader that returns one byte per read (the worst split of a stream).
    struct OneByte<R>(R);

    impl<R: Read> Read for OneByte<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }
}
