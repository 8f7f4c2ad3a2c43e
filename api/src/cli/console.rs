//! `memtide vm console ID`: a VM's serial console socket on this terminal (or on stdio).
//! Bytes from stdin go to the guest's UART, the guest's output comes to stdout (the last
//! 64 KiB of it first). It ends when the VM stops (the socket closes: exit 0) or stdin ends
//! (exit 0). In a terminal, stdin is put in raw mode so keys reach the guest as typed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

/// Attaches stdio to the console socket at `path`.
pub fn attach(path: &Path) -> ExitCode {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "memtide vm console: error: cannot connect to {}: {e}",
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    let mut to_guest = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("memtide vm console: error: {e}");
            return ExitCode::from(1);
        }
    };
    let _raw = memtide_vmm::terminal::RawTerminal::enable(libc::STDIN_FILENO);
    // stdin → guest on its own thread; the process ends with whichever side ends first.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let input_done = done_tx.clone();
    let spawned = std::thread::Builder::new()
        .name("console-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_guest.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = input_done.send(());
        });
    if let Err(e) = spawned {
        eprintln!("memtide vm console: error: {e}");
        return ExitCode::from(1);
    }
    let output = std::thread::Builder::new()
        .name("console-stdout".into())
        .spawn(move || {
            let mut from_guest = stream;
            let mut stdout = std::io::stdout().lock();
            let mut buf = [0u8; 4096];
            loop {
                match from_guest.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdout
                            .write_all(&buf[..n])
                            .and_then(|_| stdout.flush())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = done_tx.send(());
        });
    if let Err(e) = output {
        eprintln!("memtide vm console: error: {e}");
        return ExitCode::from(1);
    }
    let _ = done_rx.recv();
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}
