//! An in-process API server on a real Unix socket, backed by the control plane with the
//! fake launcher (real pool, no KVM), and raw HTTP helpers.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use memtide_api::client::{Client, Endpoint};
use memtide_api::server;
use memtide_vmm::control::testing::FakeLauncher;
use memtide_vmm::control::{ControlPlane, PlaneConfig};

static N: AtomicU32 = AtomicU32::new(0);

/// A running server; dropping it stops the server and every VM and removes the socket.
pub struct TestServer {
    pub sock: PathBuf,
    pub plane: Arc<ControlPlane>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server over a 1 GiB host node 0 (half of it ZONE_MOVABLE).
    pub fn start(hotplug: bool) -> TestServer {
        let cfg = PlaneConfig {
            nodes: Some(vec![(0, 1 << 30)]),
            movablecore: Some("50%".into()),
            ..PlaneConfig::default()
        };
        let launcher = FakeLauncher {
            hotplug,
            ..FakeLauncher::default()
        };
        let plane = Arc::new(ControlPlane::new(&cfg, Box::new(launcher)).expect("plane"));
        let sock = std::env::temp_dir().join(format!(
            "memtide-api-test-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let unix = server::bind_unix(&sock).expect("bind");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = server::router(plane.clone());
        let path = sock.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let stop = async move {
                let _ = rx.await;
            };
            rt.block_on(server::serve(router, unix, path, None, stop))
                .expect("serve");
        });
        TestServer {
            sock,
            plane,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.sock.clone()), Duration::from_secs(30)).expect("client")
    }

    /// Sends raw bytes (a whole HTTP request) and returns (status, body).
    pub fn raw(&self, request: &[u8]) -> (u16, String) {
        let mut s = UnixStream::connect(&self.sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The server may answer and close before reading everything (e.g. 413, 431).
        // (No half-close: hyper drops connections whose client shut its write side.)
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.plane.stop_all();
        let _ = std::fs::remove_file(&self.sock);
    }
}
