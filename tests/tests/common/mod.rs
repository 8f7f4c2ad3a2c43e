//! Helpers shared by the tests that run memtide's own VMM in the KVM host.

pub mod api_vm;
pub mod balloon;

use memtide_testbed::cache::workspace_root;
use memtide_testbed::tools::run;
use memtide_testbed::KvmHost;
use std::path::PathBuf;
use std::process::Command;

/// Builds the `memtide` binary (debug, in its own target dir so the running test build's
/// lock is not contended) and returns its path.
#[allow(dead_code)] // each test target uses one of the two
pub fn memtide_binary() -> PathBuf {
    memtide_binary_with(false)
}

/// Builds the `memtide` binary, optimised when `release`, and returns its path.
pub fn memtide_binary_with(release: bool) -> PathBuf {
    let ws = workspace_root();
    let target = ws.join("target").join("memtide-bin");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "memtide-api", "--bin", "memtide"]);
    if release {
        cmd.arg("--release");
    }
    cmd.arg("--manifest-path")
        .arg(ws.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("CARGO_BUILD_TARGET");
    run(&mut cmd).expect("building memtide");
    target
        .join(if release { "release" } else { "debug" })
        .join("memtide")
}

/// `memtide run` argv for the guest image in the host, `args` appended.
pub fn run_argv(host: &KvmHost, memtide: &str, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        memtide.into(),
        "run".into(),
        "--kernel".into(),
        host.guest_kernel(),
        "--initrd".into(),
        host.guest_initrd(),
        "--cmdline".into(),
        // The same arguments QEMU gets from the harness (quiet console, no CMOS RTC probe,
        // which costs seconds of nested exits where the machine has no RTC), so boot times
        // compare like with like.
        memtide_testbed::image::DEFAULT_CMDLINE.into(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}
