//! A serial console on a Unix socket (as Cloud Hypervisor's `--serial socket=PATH`): the VMM
//! listens on `PATH` (mode 0600); one client at a time gets the console's output and feeds
//! its input. A client that connects later first gets the last [`BACKLOG_BYTES`] of output,
//! so nothing the guest printed before (its boot, an agent's ready line) is missed; a new
//! client replaces the old one. A client that stops reading is dropped after
//! [`CLIENT_WRITE_TIMEOUT`] rather than stalling the vCPU that writes to the UART.
//!
//! Data flow: guest `out` to the UART → [`ConsoleWriter`] → backlog + client socket; client
//! socket → reader thread → [`SerialDevice::enqueue_input`] (held back while the UART's FIFO
//! is full). Dropping the [`ConsoleSocket`] shuts the client's connection (so it sees the end)
//! and removes the socket file.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use super::serial::SerialDevice;

/// How much recent output a new client is given first.
pub const BACKLOG_BYTES: usize = 64 << 10;

/// How long a write to the client may block before the client is dropped.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors setting up the console socket.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleSocketError {
    /// Something that is not a socket is in the way.
    #[error("console socket {0}: the path exists and is not a socket")]
    NotASocket(PathBuf),
    /// Another process listens there.
    #[error("console socket {0}: another process is listening there")]
    InUse(PathBuf),
    /// Binding, chmod or the accept thread failed.
    #[error("console socket {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Output state shared by the writer and the accept thread: one lock, so a new client's
/// replay and the bytes written after it never overlap or leave a gap.
#[derive(Default)]
struct Output {
    backlog: VecDeque<u8>,
    client: Option<UnixStream>,
}

struct Shared {
    output: Mutex<Output>,
    serial: OnceLock<Arc<Mutex<SerialDevice>>>,
    closed: AtomicBool,
}

impl Shared {
    fn output(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The listening console socket of one VM.
pub struct ConsoleSocket {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ConsoleSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSocket")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The console's output end, given to the UART.
pub struct ConsoleWriter(Arc<Shared>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = self.0.output();
        out.backlog.extend(buf);
        let excess = out.backlog.len().saturating_sub(BACKLOG_BYTES);
        out.backlog.drain(..excess);
        if let Some(c) = out.client.as_mut() {
            if c.write_all(buf).is_err() {
                // Gone or not reading: drop it; the guest goes on.
                if let Some(c) = out.client.take() {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ConsoleSocket {
    /// Listens on `path` (a stale socket file left by a dead VMM is replaced; a live one is
    /// an error) and returns the socket and the writer for the UART.
    pub fn bind(path: &Path) -> Result<(ConsoleSocket, ConsoleWriter), ConsoleSocketError> {
        let io = |e| ConsoleSocketError::Io(path.to_path_buf(), e);
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(ConsoleSocketError::NotASocket(path.to_path_buf()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ConsoleSocketError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            let _ = std::fs::remove_file(path);
            io(e)
        })?;
        let shared = Arc::new(Shared {
            output: Mutex::new(Output::default()),
            serial: OnceLock::new(),
            closed: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("console-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))
            .map_err(|e| {
                let _ = std::fs::remove_file(path);
                io(e)
            })?;
        let writer = ConsoleWriter(shared.clone());
        Ok((
            ConsoleSocket {
                path: path.to_path_buf(),
                shared,
                accept: Some(accept),
            },
            writer,
        ))
    }

    /// Feeds what clients send to `serial` from now on.
    pub fn attach_input(&self, serial: Arc<Mutex<SerialDevice>>) {
        let _ = self.shared.serial.set(serial);
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(c) = self.shared.output().client.take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Wake the accept thread; it sees `closed` and ends.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut stream) = conn else { continue };
        if stream
            .set_write_timeout(Some(CLIENT_WRITE_TIMEOUT))
            .is_err()
        {
            continue;
        }
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        {
            let mut out = shared.output();
            let (a, b) = out.backlog.as_slices();
            if stream
                .write_all(a)
                .and_then(|_| stream.write_all(b))
                .is_err()
            {
                continue;
            }
            if let Some(old) = out.client.replace(stream) {
                let _ = old.shutdown(std::net::Shutdown::Both);
            }
        }
        let input_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("console-input".into())
            .spawn(move || input_loop(reader, &input_shared));
        if spawned.is_err() {
            if let Some(c) = shared.output().client.take() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Copies one client's bytes into the UART until the client goes away.
fn input_loop(mut reader: UnixStream, shared: &Shared) {
    let mut buf = [0u8; 256];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            let taken = match shared.serial.get() {
                Some(s) => s
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .enqueue_input(rest),
                None => 0,
            };
            rest = &rest[taken..];
            if !rest.is_empty() {
                // The FIFO is full (or the UART not wired yet): the guest drains it soon.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::PioDevice;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A fresh directory for one test's sockets (removed at the end).
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> TestDir {
            let p =
                std::env::temp_dir().join(format!("memtide-console-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("test dir");
            TestDir(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut v = vec![0u8; n];
        s.read_exact(&mut v).expect("read");
        v
    }

    #[test]
    fn backlog_replay_live_output_and_input() {
        let dir = TestDir::new("replay");
        let path = dir.path().join("c.sock");
        let (sock, mut writer) = ConsoleSocket::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            irq,
            Box::new(std::io::sink()),
        )));
        sock.attach_input(serial.clone());
        writer.write_all(b"before ").expect("write");
        let mut client = UnixStream::connect(&path).expect("connect");
        assert_eq!(read_exact_timeout(&mut client, 7), b"before ");
        // Give the accept thread time to make it the client, then write live output.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sock.shared.output().client.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        writer.write_all(b"after").expect("write");
        assert_eq!(read_exact_timeout(&mut client, 5), b"after");
        // Input reaches the UART's receive buffer.
        client.write_all(b"xy").expect("send");
        let mut got = Vec::new();
        while got.len() < 2 && std::time::Instant::now() < deadline {
            let mut lsr = [0u8];
            serial.lock().expect("lock").read(5, &mut lsr);
            if lsr[0] & 1 == 1 {
                let mut b = [0u8];
                serial.lock().expect("lock").read(0, &mut b);
                got.push(b[0]);
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(got, b"xy");
        // Dropping the socket ends the client's stream and removes the file.
        drop(sock);
        let mut rest = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(client.read_to_end(&mut rest).expect("eof"), 0);
        assert!(!path.exists());
    }

    #[test]
    fn refuses_a_live_socket_and_a_regular_file() {
        let dir = TestDir::new("refuse");
        let path = dir.path().join("c.sock");
        let (_sock, _w) = ConsoleSocket::bind(&path).expect("bind");
        assert!(matches!(
            ConsoleSocket::bind(&path),
            Err(ConsoleSocketError::InUse(_))
        ));
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(
            ConsoleSocket::bind(&file),
            Err(ConsoleSocketError::NotASocket(_))
        ));
        // A stale socket (no listener) is replaced.
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).expect("bind"));
        assert!(ConsoleSocket::bind(&stale).is_ok());
    }

    #[test]
    fn backlog_keeps_only_the_tail() {
        let dir = TestDir::new("tail");
        let path = dir.path().join("c.sock");
        let (_sock, mut writer) = ConsoleSocket::bind(&path).expect("bind");
        let big = vec![b'a'; BACKLOG_BYTES];
        writer.write_all(&big).expect("write");
        writer.write_all(b"tail").expect("write");
        let mut client = UnixStream::connect(&path).expect("connect");
        let got = read_exact_timeout(&mut client, BACKLOG_BYTES);
        assert_eq!(&got[BACKLOG_BYTES - 4..], b"tail");
    }
}
