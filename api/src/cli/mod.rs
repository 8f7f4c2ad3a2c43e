//! The `memtide` command line: one module per subcommand, dispatched from [`run()`].
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad input (clap's own usage errors are 2 too).

pub mod balloon_args;
pub mod console;
pub mod demo;
pub mod image;
pub mod pool;
pub mod run;
pub mod run_api;
pub mod serve;
pub mod vm;
pub mod zones;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// memtide: a KVM virtual machine monitor and guest-memory balloon service.
#[derive(Debug, Parser)]
#[command(name = "memtide", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `memtide`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the zone layout Linux 6.1 computes for a memory map and kernelcore=/movablecore=.
    Zones(zones::ZonesArgs),
    /// Build the guest image (kernel + initramfs with the guest agent) into the cache.
    Image(image::ImageArgs),
    /// Boot one VM in the foreground (serial console on stdout/stdin).
    Run(run::RunArgs),
    /// Run the service: the host memory pool, VMs, the REST API on a Unix socket.
    Serve(serve::ServeArgs),
    /// Talk to a running service about its VMs.
    Vm(vm::VmArgs),
    /// Show a running service's host memory pool.
    Pool(pool::PoolArgs),
    /// The main job end to end: two guests in a KVM host, memory moved from one to the other.
    Demo(demo::DemoArgs),
}

/// Parses the process arguments, runs the subcommand and returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Zones(args) => zones::run(&args),
        Command::Image(args) => image::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Vm(args) => vm::run(&args),
        Command::Pool(args) => pool::run(&args),
        Command::Demo(args) => demo::run(&args),
    }
}
