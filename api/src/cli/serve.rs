//! `memtide serve`: the service. One host memory pool, any number of VMs, the REST API on a
//! Unix socket (mode 0600) and optionally on TCP.
//!
//! ```text
//! memtide serve --api-sock PATH [--http [ADDR]] [--kernelcore SPEC] [--movablecore SPEC]
//!               [--pool-node N:SIZE]... [--console-dir DIR] [--max-vms N]
//! ```
//!
//! The pool covers every host NUMA node (all of its memory; or SIZE of each `--pool-node`
//! given), zoned with the host-side
//! kernelcore=/movablecore= (ZONE_MOVABLE is what virtio-mem plugs from). SIGTERM/SIGINT
//! stop every VM, close the listeners and remove the socket. Exit status: 0 after a signal,
//! 2 on bad input, 1 on a host failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use memtide_vmm::config::parse_size;
use memtide_vmm::control::{ControlPlane, ErrorKind, KvmLauncher, PlaneConfig};
use memtide_vmm::memory::host::host_node_exists;

use crate::server;

/// Arguments of `memtide serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The API's Unix socket (created with mode 0600).
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// Also serve HTTP on this TCP address (default 127.0.0.1:8080 when given without one).
    /// The API has no authentication: keep it on loopback.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    pub http: Option<SocketAddr>,
    /// Host-side kernelcore= for the pool's zones (kernel syntax).
    #[arg(long, value_name = "SPEC")]
    pub kernelcore: Option<String>,
    /// Host-side movablecore= for the pool's zones (kernel syntax).
    #[arg(long, value_name = "SPEC")]
    pub movablecore: Option<String>,
    /// Let the pool manage SIZE of host node N (e.g. 0:2G, a multiple of 4 MiB); repeat per
    /// node. Default: every host node, all of its memory.
    #[arg(long, value_name = "N:SIZE")]
    pub pool_node: Vec<String>,
    /// Directory for VM consoles (`<id>.console`) of VMs created without a console file.
    #[arg(long, value_name = "DIR")]
    pub console_dir: Option<PathBuf>,
    /// Most VMs at once.
    #[arg(long, default_value_t = 64)]
    pub max_vms: usize,
}

async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// Parses the `--pool-node N:SIZE` options (`None` when there are none).
pub fn pool_nodes(specs: &[String]) -> Result<Option<Vec<(u32, u64)>>, String> {
    if specs.is_empty() {
        return Ok(None);
    }
    specs
        .iter()
        .map(|s| {
            let (n, size) = s
                .split_once(':')
                .ok_or_else(|| format!("--pool-node {s:?}: expected N:SIZE, e.g. 0:2G"))?;
            let node: u32 = n
                .parse()
                .map_err(|_| format!("--pool-node {s:?}: bad node number {n:?}"))?;
            if !host_node_exists(node) {
                return Err(format!(
                    "--pool-node {s:?}: host NUMA node {node} does not exist"
                ));
            }
            let size = parse_size(size).map_err(|e| format!("--pool-node {s:?}: {e}"))?;
            Ok((node, size))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Runs `memtide serve`.
pub fn run(args: &ServeArgs) -> ExitCode {
    let fail = |msg: String, code: u8| {
        eprintln!("memtide serve: error: {msg}");
        ExitCode::from(code)
    };
    if let Some(d) = &args.console_dir {
        if !d.is_dir() {
            return fail(
                format!("--console-dir {} is not a directory", d.display()),
                2,
            );
        }
    }
    let nodes = match pool_nodes(&args.pool_node) {
        Ok(n) => n,
        Err(e) => return fail(e, 2),
    };
    let cfg = PlaneConfig {
        nodes,
        kernelcore: args.kernelcore.clone(),
        movablecore: args.movablecore.clone(),
        console_dir: args.console_dir.clone(),
        max_vms: args.max_vms,
    };
    let plane = match ControlPlane::new(&cfg, Box::new(KvmLauncher)) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            let code = if e.kind() == ErrorKind::BadRequest {
                2
            } else {
                1
            };
            return fail(e.to_string(), code);
        }
    };
    let unix = match server::bind_unix(&args.api_sock) {
        Ok(l) => l,
        Err(e) => return fail(e.to_string(), 1),
    };
    let tcp = match args.http.map(server::bind_tcp).transpose() {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&args.api_sock);
            return fail(e.to_string(), 1);
        }
    };
    let pool = plane.pool_info();
    eprintln!(
        "memtide serve: API on unix:{}{}; pool: {} host node(s), {} MiB managed",
        args.api_sock.display(),
        args.http
            .map(|a| format!(" and http://{a}"))
            .unwrap_or_default(),
        pool.nodes.len(),
        (pool.managed_pages * pool.page_size) >> 20
    );
    if let Some(a) = args.http.filter(|a| !a.ip().is_loopback()) {
        eprintln!("memtide serve: warning: {a} is not loopback and the API has no authentication");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}"), 1),
    };
    let router = server::router(plane.clone());
    let result = rt.block_on(server::serve(
        router,
        unix,
        args.api_sock.clone(),
        tcp,
        signalled(),
    ));
    eprintln!("memtide serve: stopping every VM");
    plane.stop_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.to_string(), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_nodes_parse() {
        assert_eq!(pool_nodes(&[]), Ok(None));
        assert_eq!(
            pool_nodes(&["0:2G".to_string()]),
            Ok(Some(vec![(0, 2 << 30)]))
        );
        for bad in ["0", "x:1G", "0:1X", "999:1G"] {
            let e = pool_nodes(&[bad.to_string()]).expect_err(bad);
            assert!(e.contains("--pool-node"), "{e}");
        }
    }
}
