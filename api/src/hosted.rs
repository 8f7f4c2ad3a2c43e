//! `memtide serve` inside a KVM host of the test bed ([`memtide_testbed::KvmHost`]) and VMs
//! created through its REST API from outside (the emulated host's forwarded port, or
//! loopback on hardware KVM). Used by `memtide demo` and by the end-to-end API tests.
//!
//! A VM whose guest dies or stays silent before the guest agent's first line on its console
//! is booted again (KVM-HOST.md's dead-boot policy, via [`retry_boot`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use memtide_testbed::retry::wait_until;
use memtide_testbed::{retry_boot, say, Error, KvmHost, Policy, Result};
use memtide_vmm::control::{VmInfo, VmState};

use crate::client::{Client, ClientError, Endpoint};
use crate::model::{CreateVmBody, NumaBody, Size};

/// How long a quick host command (a grep, a tail, a kill) may take: seconds when the host is
/// idle, but its emulated CPUs may be busy booting guests, and a command without its end
/// marker fails the test (a host that stopped beating is a dead host either way).
const HOST_POLL_TIMEOUT: Duration = Duration::from_secs(60);

/// A `memtide serve` running in a host, and the client that reaches it.
#[derive(Debug)]
pub struct HostedService {
    /// The client (TCP, through the forwarded port).
    pub client: Client,
    /// The service's pid in the host.
    pub pid: u32,
    /// The address outside that reaches its HTTP port.
    pub addr: SocketAddr,
    /// Its Unix socket in the host.
    pub sock: String,
    /// Its log file in the host.
    pub log: String,
}

/// The address `memtide serve --http` listens on in a host for `port`: every interface in
/// the emulated host (the forwarded port arrives on its NIC), loopback on this machine.
pub fn listen_addr(host: &KvmHost, port: u16) -> String {
    match host {
        KvmHost::Emulated(_) => format!("0.0.0.0:{port}"),
        KvmHost::Hardware(_) => format!("127.0.0.1:{port}"),
    }
}

/// Turns an API client error into a test-bed error.
pub fn api_error(e: ClientError) -> Error {
    Error::Config(format!("API: {e}"))
}

/// Starts `memtide serve --api-sock SOCK --http ADDR:PORT EXTRA...` in `host` (`memtide`
/// is its path there; `port` must be one of the host's forwarded ports), logging to `log`,
/// and waits until it answers (at most `wait`).
pub fn start_serve(
    host: &KvmHost,
    memtide: &str,
    port: u16,
    sock: &str,
    log: &str,
    extra: &[&str],
    wait: Duration,
) -> Result<HostedService> {
    let mut argv: Vec<String> = vec![
        memtide.into(),
        "serve".into(),
        "--api-sock".into(),
        sock.into(),
        "--http".into(),
        listen_addr(host, port),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let pid = host.spawn_daemon(&argv, log)?;
    let addr = host
        .forwarded(port)
        .ok_or_else(|| Error::Config(format!("host port {port} is not forwarded")))?;
    let client = Client::new(Endpoint::Tcp(addr), Duration::from_secs(180)).map_err(api_error)?;
    let waited = wait_until(
        "memtide serve answers",
        wait,
        Duration::from_millis(200),
        || Ok(client.health().is_ok()),
    );
    if let Err(e) = waited {
        let tail = host
            .run(&format!("tail -n 20 {log}"), HOST_POLL_TIMEOUT)
            .map(|o| o.text())
            .unwrap_or_default();
        return Err(Error::Config(format!("{e}; {log}:\n{tail}")));
    }
    Ok(HostedService {
        client,
        pid,
        addr,
        sock: sock.into(),
        log: log.into(),
    })
}

impl HostedService {
    /// Stops the service (SIGTERM: it stops every VM) and waits until its socket is gone.
    pub fn stop(&self, host: &KvmHost, wait: Duration) -> Result<()> {
        host.check(&format!("kill -TERM {}", self.pid), HOST_POLL_TIMEOUT)?;
        wait_until(
            "memtide serve removes its socket",
            wait,
            Duration::from_millis(300),
            || {
                Ok(host
                    .run(&format!("test -e {}", self.sock), HOST_POLL_TIMEOUT)?
                    .status
                    != 0)
            },
        )
    }
}

/// The body creating VM `id` from the host's guest image, console to `console` (a file in
/// the host), the extra command line `cmdline`.
pub fn vm_body(
    host: &KvmHost,
    id: &str,
    vcpus: u32,
    numa: Vec<NumaBody>,
    cmdline: &str,
    console: &str,
) -> CreateVmBody {
    CreateVmBody {
        id: Some(id.into()),
        kernel: host.guest_kernel(),
        initrd: Some(host.guest_initrd()),
        cmdline: Some(cmdline.into()),
        vcpus,
        memory: None,
        numa,
        kernelcore: None,
        movablecore: None,
        cpu_template: None,
        console: Some(console.into()),
        console_socket: None,
        balloon: None,
    }
}

/// One guest NUMA node: `cpus`, `boot` bytes of boot RAM and `hotplug` bytes of
/// hot-pluggable range, backed by host node `host_node`.
pub fn numa_node(
    guest_node: u32,
    cpus: Vec<u32>,
    boot: u64,
    host_node: u32,
    hotplug: u64,
) -> NumaBody {
    NumaBody {
        guest_numa_id: guest_node,
        cpus,
        memory: Size(boot),
        host_numa_id: host_node,
        hotplug_size: Size(hotplug),
    }
}

/// Creates the VM; returns when it was created (running).
pub fn create_vm(c: &Client, b: &CreateVmBody) -> Result<Instant> {
    let start = Instant::now();
    let info = c.create_vm(b).map_err(api_error)?;
    if info.state != VmState::Running {
        return Err(Error::Config(format!(
            "VM {}: {} after create, not running",
            info.id,
            info.state.name()
        )));
    }
    Ok(start)
}

/// Waits (at most `timeout`) for the guest agent's first line on the console of the VM
/// created at `start`. A VM that stops first is dead, one without the line in time is
/// silent: both are deleted and reported as dead guests (so [`boot_vm`] boots them again).
pub fn wait_agent(
    host: &KvmHost,
    c: &Client,
    b: &CreateVmBody,
    start: Instant,
    timeout: Duration,
) -> Result<VmInfo> {
    let id = b.id.clone().unwrap_or_default();
    let console = b.console.clone().unwrap_or_default();
    loop {
        let out = host.run(
            &format!("grep -c 'AGENT ready' {console} 2>/dev/null"),
            HOST_POLL_TIMEOUT,
        )?;
        if out.lines.last().is_some_and(|l| l.trim() != "0") {
            say(&format!(
                "{id}: guest agent ready {:.1} s after create",
                start.elapsed().as_secs_f64()
            ));
            return c.vm(&id).map_err(api_error);
        }
        let v = c.vm(&id).map_err(api_error)?;
        let dead = v.state == VmState::Stopped;
        if dead || start.elapsed() > timeout {
            let tail = host
                .run(&format!("tail -n 5 {console}"), HOST_POLL_TIMEOUT)?
                .text();
            if !dead {
                c.vm_verb(&id, "shutdown").map_err(api_error)?;
            }
            c.delete_vm(&id).map_err(api_error)?;
            return Err(if dead {
                Error::GuestDied {
                    label: id,
                    status: format!(" ({})", v.exit_reason.unwrap_or_default()),
                    tail,
                }
            } else {
                Error::GuestSilent {
                    label: id,
                    waited: timeout,
                    tail,
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for the VM created (by [`create_vm`]) at `first`, and creates it again when its
/// guest was dead, as the dead-boot policy allows.
pub fn boot_vm(
    host: &KvmHost,
    c: &Client,
    b: &CreateVmBody,
    first: Instant,
    timeout: Duration,
) -> Result<VmInfo> {
    let id = b.id.clone().unwrap_or_default();
    retry_boot(&id, Policy::Guest, |attempt| {
        let start = if attempt == 1 {
            first
        } else {
            create_vm(c, b)?
        };
        wait_agent(host, c, b, start, timeout)
    })
}
