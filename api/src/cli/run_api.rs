//! `memtide run --serve-sock PATH`: the VM runs under an in-process control plane (the host
//! pool with ZONE_MOVABLE for its hot-pluggable memory) with its console on stdin/stdout,
//! and the REST API answers on PATH, so `memtide vm resize run SIZE --api-sock PATH` grows
//! and shrinks it through virtio-mem, and further VMs created through the API share the pool
//! (`memtide vm rebalance`). memtide ends when the VM `run` stops.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use memtide_vmm::control::{
    ControlPlane, CreateVm, ErrorKind, Launcher, Machine, PlaneConfig, VmState,
};
use memtide_vmm::memory::host::HostMemory;
use memtide_vmm::memory::pool::PoolBacking;
use memtide_vmm::{Console, SerialOutput, Vm, VmConfig, VmError};

use crate::server;

/// The id of the foreground VM.
pub const RUN_VM_ID: &str = "run";

/// Builds KVM VMs; the first one gets the process's stdin/stdout as its console, the
/// others keep the console their request named.
#[derive(Debug, Default)]
struct StdioFirstLauncher {
    stdio_taken: AtomicBool,
}

impl Launcher for StdioFirstLauncher {
    fn launch(
        &self,
        config: &VmConfig,
        pool: &PoolBacking,
        host: &Arc<HostMemory>,
    ) -> Result<Box<dyn Machine>, VmError> {
        let mut config = config.clone();
        let stdio = !self.stdio_taken.swap(true, Ordering::AcqRel);
        let console = match (&config.serial_output, stdio) {
            (SerialOutput::Socket(_), _) => Console::open(&config.serial_output)?,
            (_, true) => {
                config.serial_output = SerialOutput::Stdout;
                config.serial_input = true;
                Console::writer(Box::new(std::io::stdout()))
            }
            (SerialOutput::Stdout, false) => Console::writer(Box::new(std::io::sink())),
            (output, false) => Console::open(output)?,
        };
        let built = Vm::with_pool(&config, host.clone(), pool, console);
        if built.is_err() && stdio {
            self.stdio_taken.store(false, Ordering::Release);
        }
        Ok(Box::new(built?))
    }
}

/// Host-side `movablecore=` that puts every host node's share of the VM's hot-pluggable
/// memory in ZONE_MOVABLE (the kernel spreads movablecore evenly over the nodes), with
/// 64 MiB per node for watermarks.
fn movablecore_for(config: &VmConfig) -> Option<String> {
    let nodes = std::fs::read_dir("/sys/devices/system/node")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("node")
                        .is_some_and(|r| r.parse::<u32>().is_ok())
                })
                .count() as u64
        })
        .unwrap_or(1)
        .max(1);
    let mut per_node = std::collections::BTreeMap::<u32, u64>::new();
    for n in config.nodes() {
        *per_node.entry(n.host_node).or_default() += n.hotplug_size;
    }
    let most = per_node.values().copied().max().filter(|&b| b > 0)?;
    Some(format!("{}", (most + (64 << 20)) * nodes))
}

/// Resolves on SIGTERM or SIGINT (never, if the handlers cannot be installed).
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

/// Runs `config` as VM `run` under a control plane serving the API on `sock`.
pub fn run_with_api(config: VmConfig, sock: &Path, pool_movablecore: Option<String>) -> ExitCode {
    let fail = |msg: String, code: u8| {
        eprintln!("memtide run: error: {msg}");
        ExitCode::from(code)
    };
    let cfg = PlaneConfig {
        nodes: None,
        kernelcore: None,
        movablecore: pool_movablecore.or_else(|| movablecore_for(&config)),
        console_dir: None,
        max_vms: 0,
    };
    let plane = match ControlPlane::new(&cfg, Box::new(StdioFirstLauncher::default())) {
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
    let unix = match server::bind_unix(sock) {
        Ok(l) => l,
        Err(e) => return fail(e.to_string(), 1),
    };
    let created = plane.create_vm(CreateVm {
        id: Some(RUN_VM_ID.into()),
        config,
        console: None,
    });
    if let Err(e) = created {
        let _ = std::fs::remove_file(sock);
        let code = if e.kind() == ErrorKind::BadRequest {
            2
        } else {
            1
        };
        return fail(e.to_string(), code);
    }
    eprintln!(
        "memtide run: VM {RUN_VM_ID:?} running; API on unix:{}",
        sock.display()
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}"), 1),
    };
    let watched = plane.clone();
    let stopped = async move {
        let vm_ended = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let state = watched.vm_info(RUN_VM_ID).map(|v| v.state);
                if !matches!(state, Ok(VmState::Running | VmState::Paused)) {
                    break;
                }
            }
        };
        tokio::select! {
            _ = vm_ended => {}
            _ = signalled() => {}
        }
    };
    let router = server::router(plane.clone());
    let result = rt.block_on(server::serve(
        router,
        unix,
        sock.to_path_buf(),
        None,
        stopped,
    ));
    let reason = plane.vm_info(RUN_VM_ID).ok().and_then(|v| v.exit_reason);
    plane.stop_all();
    eprintln!(
        "memtide run: VM stopped: {}",
        reason.as_deref().unwrap_or("stopped")
    );
    if let Err(e) = result {
        return fail(e.to_string(), 1);
    }
    match reason.as_deref() {
        Some("power_off") | Some("stopped") | None => ExitCode::SUCCESS,
        Some("reset") => ExitCode::from(3),
        Some(_) => ExitCode::from(1),
    }
}
