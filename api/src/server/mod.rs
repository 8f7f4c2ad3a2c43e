//! The REST server: HTTP/1.1 + JSON (axum on hyper/tokio) on a Unix socket (created 0600)
//! and optionally a TCP address. Routes ([`routes`], one module per resource) turn requests
//! into the control plane's typed verbs; [`error`] maps every failure to its status and a
//! `{"error": ...}` body. Bodies are limited to [`BODY_LIMIT`] bytes; unknown JSON fields
//! are rejected.

pub mod error;
pub mod routes;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, Uri};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use memtide_vmm::control::ControlPlane;

use error::ApiError;

/// Largest request body accepted (bytes): a VM config is far smaller.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Responses by status code, for `/metrics`.
#[derive(Debug, Default)]
pub struct ResponseStats {
    by_code: Mutex<BTreeMap<u16, u64>>,
}

impl ResponseStats {
    fn count(&self, code: u16) {
        *self
            .by_code
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// `(status, responses)` so far.
    pub fn snapshot(&self) -> Vec<(u16, u64)> {
        self.by_code
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(&k, &v)| (k, v))
            .collect()
    }
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The control plane.
    pub plane: Arc<ControlPlane>,
    /// Response counters.
    pub stats: Arc<ResponseStats>,
}

async fn count(State(stats): State<Arc<ResponseStats>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    stats.count(resp.status().as_u16());
    resp
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::wrong_method(method.as_str(), uri.path())
}

/// The full router: routes, 404/405 fallbacks with JSON bodies, body limit, counters.
pub fn router(plane: Arc<ControlPlane>) -> Router {
    let stats = Arc::new(ResponseStats::default());
    let state = AppState {
        plane,
        stats: stats.clone(),
    };
    routes::routes()
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(stats, count))
        .with_state(state)
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something listens on the socket already.
    #[error("{0} is in use by a running service")]
    SocketInUse(PathBuf),
    /// A path exists that is not a socket.
    #[error("{0} exists and is not a socket; not removing it")]
    NotASocket(PathBuf),
    /// Binding failed.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Binds the Unix socket with mode 0600 (a stale socket of a dead service is replaced).
pub fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, ServeError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServeError::NotASocket(path.to_path_buf()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::SocketInUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |e| ServeError::Bind(path.display().to_string(), e);
    // SAFETY: umask only changes the process's file creation mask; the old one is restored
    // right after bind, so the socket is never reachable by others.
    let old = unsafe { libc::umask(0o177) };
    let l = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let l = l.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    l.set_nonblocking(true).map_err(bind_err)?;
    Ok(l)
}

/// Serves `router` on the Unix socket `unix` (and TCP `tcp`) until `shutdown` completes;
/// removes the socket file at the end.
pub async fn serve(
    router: Router,
    unix: std::os::unix::net::UnixListener,
    unix_path: PathBuf,
    tcp: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let unix = tokio::net::UnixListener::from_std(unix).map_err(ServeError::Serve)?;
    let u = axum::serve(unix, router.clone()).with_graceful_shutdown(stop(rx.clone()));
    let result = match tcp {
        Some(t) => {
            t.set_nonblocking(true).map_err(ServeError::Serve)?;
            let t = tokio::net::TcpListener::from_std(t).map_err(ServeError::Serve)?;
            let h = axum::serve(t, router).with_graceful_shutdown(stop(rx));
            let (a, b) = tokio::join!(u, h);
            a.and(b)
        }
        None => u.await,
    };
    let _ = std::fs::remove_file(&unix_path);
    result.map_err(ServeError::Serve)
}

/// Binds a TCP listener.
pub fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    std::net::TcpListener::bind(addr).map_err(|e| ServeError::Bind(addr.to_string(), e))
}
