//! `memtide vm ...`: clients of a running `memtide serve`.
//!
//! ```text
//! memtide vm [--api-sock PATH | --http ADDR] [--json] list
//! memtide vm info ID | pause ID | resume ID | shutdown ID | delete ID
//! memtide vm create [--id ID] [the flags of memtide run]
//! memtide vm resize ID SIZE [--node N] [--wait SECS]
//! memtide vm rebalance FROM TO SIZE [--from-node N] [--to-node N] [--wait SECS]
//! memtide vm balloon ID [--guest-size SIZE | --balloon-size SIZE]
//! memtide vm console ID
//! ```
//!
//! Human tables by default, the API's JSON with `--json`. Exit status: 0 success, 2 when
//! the service refused the request (4xx) or the arguments are bad, 1 otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use memtide_vmm::config::parse_size;
use memtide_vmm::control::{BalloonReport, RebalanceResult, VmInfo};
use memtide_vmm::SerialOutput;
use serde::Serialize;

use super::run::{config_from_args, ArgsError, RunArgs};
use crate::client::{Client, ClientError, Endpoint};
use crate::model::{BalloonBody, CreateVmBody, NumaBody, RebalanceBody, ResizeBody, Size};

/// Default API socket.
pub const DEFAULT_SOCK: &str = "/run/memtide.sock";

/// How to reach the service.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// The service's Unix socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCK)]
    pub api_sock: PathBuf,
    /// Talk HTTP to this TCP address instead of the socket.
    #[arg(long, global = true, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Arguments of `memtide vm`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// How to reach the service.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: VmCommand,
}

/// Arguments of `memtide vm create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The VM's id (default: the first free vmN).
    #[arg(long)]
    pub id: Option<String>,
    /// The VM (as `memtide run`; --serial-file names the console file).
    #[command(flatten)]
    pub run: RunArgs,
}

/// The `memtide vm` subcommands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// List the VMs.
    List,
    /// Show one VM.
    Info {
        /// VM id.
        id: String,
    },
    /// Create and boot a VM.
    Create(Box<CreateArgs>),
    /// Resize a VM (or one guest node) to SIZE of memory in all (boot + hot-plugged).
    Resize {
        /// VM id.
        id: String,
        /// Target size, e.g. 1G.
        size: String,
        /// Only this guest node.
        #[arg(long)]
        node: Option<u32>,
        /// Follow the guest's progress for up to this many seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Move SIZE of hot-plugged memory from VM FROM to VM TO.
    Rebalance {
        /// The VM that gives.
        from: String,
        /// The VM that takes.
        to: String,
        /// How much, e.g. 512M.
        size: String,
        /// Only this guest node of FROM.
        #[arg(long)]
        from_node: Option<u32>,
        /// Only this guest node of TO.
        #[arg(long)]
        to_node: Option<u32>,
        /// Wait up to this many seconds for FROM to give the memory back.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Show a VM's virtio-balloon, or set its target: the memory the guest should end up
    /// with (--guest-size) or the memory the balloon should hold (--balloon-size).
    Balloon {
        /// VM id.
        id: String,
        /// The guest should end up with this much of its boot RAM, e.g. 512M.
        #[arg(long, conflicts_with = "balloon_size")]
        guest_size: Option<String>,
        /// The balloon should hold this much, e.g. 256M (0 deflates it).
        #[arg(long)]
        balloon_size: Option<String>,
    },
    /// Pause a running VM.
    Pause {
        /// VM id.
        id: String,
    },
    /// Resume a paused VM.
    Resume {
        /// VM id.
        id: String,
    },
    /// Stop a VM (its boot RAM returns to the pool).
    Shutdown {
        /// VM id.
        id: String,
    },
    /// Forget a stopped VM.
    Delete {
        /// VM id.
        id: String,
    },
    /// Attach stdin/stdout to a VM's console socket (created with --serial-socket) until the
    /// VM stops or stdin ends. Recent output comes first.
    Console {
        /// VM id.
        id: String,
    },
}

/// The client for `conn`; on failure the exit code.
pub fn client_of(conn: &ConnArgs) -> Result<Client, ExitCode> {
    let endpoint = match conn.http {
        Some(a) => Endpoint::Tcp(a),
        None => Endpoint::Unix(conn.api_sock.clone()),
    };
    // Long enough for a rebalance's wait (at most 600 s) plus the answer.
    Client::new(endpoint, Duration::from_secs(660)).map_err(|e| {
        eprintln!("memtide: error: {e}");
        ExitCode::from(1)
    })
}

fn exit_for(what: &str, e: &ClientError) -> ExitCode {
    eprintln!("memtide {what}: error: {e}");
    ExitCode::from(if e.is_bad_input() { 2 } else { 1 })
}

/// Prints `r` as JSON or with `table`; the exit code.
pub fn report<T: Serialize>(
    what: &str,
    r: Result<T, ClientError>,
    json: bool,
    table: impl Fn(&T) -> String,
) -> ExitCode {
    match r {
        Ok(v) if json => match serde_json::to_string_pretty(&v) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("memtide {what}: error: {e}");
                ExitCode::from(1)
            }
        },
        Ok(v) => {
            print!("{}", table(&v));
            ExitCode::SUCCESS
        }
        Err(e) => exit_for(what, &e),
    }
}

fn mib(b: u64) -> String {
    format!("{}M", b >> 20)
}

/// The table of VMs.
pub fn list_table(vms: &[VmInfo]) -> String {
    let mut out = format!(
        "{:<16} {:<8} {:>5} {:>8} {:>8} {:>8} {:>9}  {}\n",
        "ID", "STATE", "VCPUS", "BOOT", "PLUGGED", "TOTAL", "REQUESTED", "EXIT"
    );
    for v in vms {
        let plugged: u64 = v.nodes.iter().map(|n| n.plugged).sum();
        let requested: u64 = v.nodes.iter().map(|n| n.requested).sum();
        out.push_str(&format!(
            "{:<16} {:<8} {:>5} {:>8} {:>8} {:>8} {:>9}  {}\n",
            v.id,
            v.state.name(),
            v.vcpus,
            mib(v.boot_memory),
            mib(plugged),
            mib(v.total_memory),
            mib(requested),
            v.exit_reason.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// The table of one VM.
pub fn info_table(v: &VmInfo) -> String {
    let mut out = format!(
        "id:          {}\nstate:       {}{}\nvcpus:       {}\nmemory:      {} boot, {} in all\nvirtio-mem:  {}\nkernel:      {}\n",
        v.id,
        v.state.name(),
        v.exit_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        v.vcpus,
        mib(v.boot_memory),
        mib(v.total_memory),
        if v.virtio_mem { "yes" } else { "no" },
        v.kernel
    );
    if let Some(c) = &v.console {
        out.push_str(&format!("console:     {c}\n"));
    }
    if let Some(c) = &v.console_socket {
        out.push_str(&format!(
            "console:     socket {c} (memtide vm console {})\n",
            v.id
        ));
    }
    if let Some(b) = &v.balloon {
        out.push_str(&balloon_table(b));
    }
    out.push_str(&format!(
        "{:<5} {:<5} {:<10} {:>8} {:>9} {:>8} {:>9} {:>8}\n",
        "NODE", "HOST", "VCPUS", "BOOT", "HOTPLUG", "PLUGGED", "REQUESTED", "USABLE"
    ));
    for n in &v.nodes {
        let cpus: Vec<String> = n.vcpus.iter().map(|c| c.to_string()).collect();
        out.push_str(&format!(
            "{:<5} {:<5} {:<10} {:>8} {:>9} {:>8} {:>9} {:>8}\n",
            n.guest_node,
            n.host_node,
            if cpus.is_empty() {
                "-".to_string()
            } else {
                cpus.join(",")
            },
            mib(n.boot_memory),
            mib(n.hotplug_size),
            mib(n.plugged),
            mib(n.requested),
            mib(n.usable)
        ));
    }
    out
}

/// The table of a balloon.
pub fn balloon_table(b: &BalloonReport) -> String {
    let mut out = format!(
        "balloon:     {} target, {} actual, {} ballooned; guest keeps {} of {}{}\n",
        mib(b.target_bytes),
        mib(b.actual_bytes),
        mib(b.ballooned_bytes),
        mib(b.guest_size),
        mib(b.guest_ram),
        if b.active { "" } else { " (no driver yet)" }
    );
    if let Some(stats) = &b.stats {
        let s: Vec<String> = stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("guest stats: {}\n", s.join(" ")));
    }
    out
}

fn rebalance_table(r: &RebalanceResult) -> String {
    format!(
        "moved {} of {} from {} to {}{}\n{}{}",
        mib(r.moved),
        mib(r.requested),
        r.from.id,
        r.to.id,
        if r.complete {
            ""
        } else {
            " (incomplete: the guest did not give more back in time)"
        },
        list_table(std::slice::from_ref(&r.from)),
        list_table(std::slice::from_ref(&r.to))
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    )
}

fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// `p` made absolute against the working directory (it need not exist yet).
fn absolute_path(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// `memtide vm create` arguments → the API body (parsed and defaulted as `memtide run`).
pub fn create_body(args: &CreateArgs) -> Result<CreateVmBody, ArgsError> {
    let c = config_from_args(&args.run)?;
    Ok(CreateVmBody {
        id: args.id.clone(),
        kernel: absolute(&c.kernel),
        initrd: c.initrd.as_deref().map(absolute),
        cmdline: c.cmdline.clone(),
        vcpus: c.vcpus,
        memory: Some(Size(c.memory)),
        numa: c
            .numa
            .iter()
            .map(|n| NumaBody {
                guest_numa_id: n.guest_node,
                cpus: n.vcpus.clone(),
                memory: Size(n.memory),
                host_numa_id: n.host_node,
                hotplug_size: Size(n.hotplug_size),
            })
            .collect(),
        kernelcore: c.guest_kernelcore.clone(),
        movablecore: c.guest_movablecore.clone(),
        cpu_template: (c.cpu_template != memtide_vmm::CpuTemplate::Host)
            .then(|| c.cpu_template.to_string()),
        console: match &c.serial_output {
            SerialOutput::File(p) => Some(absolute_path(p)),
            _ => None,
        },
        console_socket: match &c.serial_output {
            SerialOutput::Socket(p) => Some(absolute_path(p)),
            _ => None,
        },
        balloon: (!args.run.balloon.is_default())
            .then(|| crate::model::BalloonConfigBody::from_config(c.balloon)),
    })
}

/// Follows a resize: prints the plugged size until it reaches the requested size.
fn follow_resize(client: &Client, id: &str, wait: u64, json: bool) -> ExitCode {
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut last = None;
    loop {
        let v = match client.vm(id) {
            Ok(v) => v,
            Err(e) => return exit_for("vm resize", &e),
        };
        let plugged: u64 = v.nodes.iter().map(|n| n.plugged).sum();
        let requested: u64 = v.nodes.iter().map(|n| n.requested).sum();
        if !json && last != Some(plugged) {
            eprintln!(
                "memtide vm resize: {id}: plugged {} of {} requested",
                mib(plugged),
                mib(requested)
            );
            last = Some(plugged);
        }
        let done = plugged == requested;
        if done || Instant::now() >= deadline {
            return report("vm resize", Ok(v), json, |v| {
                let mut t = info_table(v);
                if !done {
                    t.push_str("(the guest had not finished when the wait ended)\n");
                }
                t
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `memtide vm ...`.
pub fn run(args: &VmArgs) -> ExitCode {
    let bad = |msg: String| {
        eprintln!("memtide vm: error: {msg}");
        ExitCode::from(2)
    };
    let size_of = |s: &str| parse_size(s).map(Size).map_err(|e| e.to_string());
    // Check the arguments before talking to the service.
    let create = match &args.command {
        VmCommand::Create(c) => match create_body(c) {
            Ok(b) => Some(b),
            Err((code, msg)) => {
                eprintln!("memtide vm create: error: {msg}");
                return ExitCode::from(code);
            }
        },
        _ => None,
    };
    let client = match client_of(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let json = args.conn.json;
    match &args.command {
        VmCommand::List => report("vm list", client.list_vms(), json, |v| list_table(v)),
        VmCommand::Info { id } => report("vm info", client.vm(id), json, info_table),
        VmCommand::Create(_) => match create {
            Some(body) => report("vm create", client.create_vm(&body), json, info_table),
            None => bad("no VM config".into()),
        },
        VmCommand::Pause { id } => {
            report("vm pause", client.vm_verb(id, "pause"), json, info_table)
        }
        VmCommand::Resume { id } => {
            report("vm resume", client.vm_verb(id, "resume"), json, info_table)
        }
        VmCommand::Shutdown { id } => report(
            "vm shutdown",
            client.vm_verb(id, "shutdown"),
            json,
            info_table,
        ),
        VmCommand::Console { id } => match client.vm(id) {
            Ok(v) => match &v.console_socket {
                Some(p) => super::console::attach(Path::new(p)),
                None => bad(format!(
                    "VM {id} has no console socket (create it with --serial-socket PATH)"
                )),
            },
            Err(e) => exit_for("vm console", &e),
        },
        VmCommand::Delete { id } => match client.delete_vm(id) {
            Ok(()) => {
                if json {
                    println!("{{}}");
                } else {
                    println!("deleted {id}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => exit_for("vm delete", &e),
        },
        VmCommand::Resize {
            id,
            size,
            node,
            wait,
        } => {
            let size = match size_of(size) {
                Ok(s) => s,
                Err(e) => return bad(e),
            };
            let body = ResizeBody {
                size,
                node: *node,
                wait_secs: 0,
            };
            match client.resize(id, &body) {
                Ok(_) => follow_resize(&client, id, *wait, json),
                Err(e) => exit_for("vm resize", &e),
            }
        }
        VmCommand::Balloon {
            id,
            guest_size,
            balloon_size,
        } => {
            let (guest_size, balloon_size) = match (
                guest_size.as_deref().map(size_of).transpose(),
                balloon_size.as_deref().map(size_of).transpose(),
            ) {
                (Ok(g), Ok(b)) => (g, b),
                (Err(e), _) | (_, Err(e)) => return bad(e),
            };
            if guest_size.is_none() && balloon_size.is_none() {
                return report("vm balloon", client.balloon(id), json, balloon_table);
            }
            let body = BalloonBody {
                guest_size,
                balloon_size,
            };
            report(
                "vm balloon",
                client.set_balloon(id, &body),
                json,
                balloon_table,
            )
        }
        VmCommand::Rebalance {
            from,
            to,
            size,
            from_node,
            to_node,
            wait,
        } => {
            let size = match size_of(size) {
                Ok(s) => s,
                Err(e) => return bad(e),
            };
            if !json {
                eprintln!(
                    "memtide vm rebalance: moving {} from {from} to {to} (waiting up to {wait} s)",
                    mib(size.0)
                );
            }
            let body = RebalanceBody {
                from: from.clone(),
                to: to.clone(),
                size,
                from_node: *from_node,
                to_node: *to_node,
                wait_secs: *wait,
            };
            report(
                "vm rebalance",
                client.rebalance(&body),
                json,
                rebalance_table,
            )
        }
    }
}
