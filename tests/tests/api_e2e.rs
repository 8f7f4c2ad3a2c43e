//! The REST API end to end (issue 6 acceptance): `memtide serve` runs inside the KVM host
//! (the emulated one here: its HTTP port forwarded to a loopback port outside); from
//! outside, the API client and the `memtide` CLI create two VMs from the guest image, read
//! their info, the pool and the metrics, pause/resume, resize b (virtio-mem), rebalance the
//! plugged memory from b to a, send hostile requests, shut the VMs down and delete them; the
//! pool's free pages come back exactly.
//!
//! A VM whose guest dies or stays silent before the guest agent's first line on its console
//! is booted again at most twice (KVM-HOST.md's dead-boot policy, via `memtide_api::hosted::boot_vm`).

#[allow(dead_code)] // run_argv is for the `memtide run` tests
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::memtide_binary;
use memtide_api::client::Client;
use memtide_api::hosted;
use memtide_api::model::{CreateVmBody, NumaBody, RebalanceBody, ResizeBody, Size};
use memtide_testbed::{say, GuestImage, HostConfig, KvmHost, Result, Timeline};
use memtide_vmm::control::{VmInfo, VmState};

const M: u64 = 1 << 20;
const PORT: u16 = 8080;
const SOCK: &str = "/tmp/memtide.sock";
const AGENT_TIMEOUT: Duration = Duration::from_secs(90);

fn body(host: &KvmHost, id: &str, vcpus: u32, numa: Vec<NumaBody>) -> CreateVmBody {
    hosted::vm_body(
        host,
        id,
        vcpus,
        numa,
        "quiet loglevel=1",
        &format!("/tmp/{id}.console"),
    )
}

fn node(id: u32, cpus: Vec<u32>, mib: u64, host_node: u32, hotplug_mib: u64) -> NumaBody {
    hosted::numa_node(id, cpus, mib * M, host_node, hotplug_mib * M)
}

fn create(c: &Client, b: &CreateVmBody) -> Result<Instant> {
    hosted::create_vm(c, b)
}

/// Waits for a VM created at `first` (boot 1); boots it again on a dead guest.
fn boot(host: &KvmHost, c: &Client, b: &CreateVmBody, first: Instant) -> VmInfo {
    hosted::boot_vm(host, c, b, first, AGENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("VM {:?}: {e}", b.id))
}

fn free_pages(c: &Client) -> u64 {
    c.pool().expect("pool").free_pages
}

/// A few hostile requests through the forwarded port: clean 4xx, no change.
fn hostile(c: &Client) {
    let before = c.list_vms().expect("list").len();
    let pool = free_pages(c);
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("POST", "/v1/vms", Some("{"), 400),
        (
            "POST",
            "/v1/vms",
            Some("{\"kernel\":\"/k\",\"memory\":-1}"),
            400,
        ),
        (
            "POST",
            "/v1/vms",
            Some("{\"kernel\":\"/k\",\"memory\":99999999999999999999}"),
            400,
        ),
        (
            "POST",
            "/v1/vms",
            Some("{\"kernel\":\"/k\",\"colour\":1}"),
            400,
        ),
        (
            "POST",
            "/v1/vms",
            Some("{\"kernel\":\"/k\",\"vcpus\":300}"),
            422,
        ),
        (
            "POST",
            "/v1/vms",
            Some("{\"kernel\":\"/k\",\"id\":\"a\"}"),
            409,
        ),
        ("GET", "/v1/vms/nope", None, 404),
        ("GET", "/v1/vms/..%2Fetc", None, 400),
        ("DELETE", "/v1/pool", None, 405),
        ("DELETE", "/v1/vms/a", None, 409),
        ("PUT", "/v1/vms/a/resume", None, 409),
        ("PUT", "/v1/vms/a/resize", Some("{\"size\":\"3M\"}"), 400),
        (
            "PUT",
            "/v1/rebalance",
            Some("{\"from\":\"a\",\"to\":\"a\",\"size\":\"2M\"}"),
            400,
        ),
    ];
    let big = format!(
        "{{\"kernel\":\"/k\",\"cmdline\":\"{}\"}}",
        "a".repeat(100_000)
    );
    let mut all: Vec<(&str, &str, Option<String>, u16)> = cases
        .into_iter()
        .map(|(m, p, b, s)| (m, p, b.map(str::to_string), s))
        .collect();
    all.push(("POST", "/v1/vms", Some(big), 413));
    for (m, p, b, want) in all {
        let r = c.raw(m, p, b.map(String::into_bytes)).expect("request");
        let text = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, want, "{m} {p}: {text}");
        assert!(
            text.contains("\"error\""),
            "{m} {p}: JSON error body, got {text}"
        );
    }
    assert_eq!(c.list_vms().expect("list").len(), before);
    assert_eq!(free_pages(c), pool, "no pool change");
}

fn cli(memtide: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(memtide)
        .args(args)
        .output()
        .expect("memtide CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A host that dies mid-test (not a result) runs the test again once on a fresh host.
#[test]
fn api_creates_and_drives_two_vms_from_outside_the_host() {
    memtide_testbed::rerun_on_host_death("api_e2e", |_| {
        api_creates_and_drives_two_vms_from_outside_the_host_on_a_fresh_host()
    });
}

fn api_creates_and_drives_two_vms_from_outside_the_host_on_a_fresh_host() {
    let mut t = Timeline::new("api-e2e");
    let memtide_local = memtide_binary();
    let image = GuestImage::ensure().expect("guest image");
    let cfg = HostConfig {
        nodes_mib: vec![1536, 1536],
        image: Some(image),
        extra_binaries: vec![memtide_local.clone()],
        forward_ports: vec![PORT],
        ..HostConfig::default()
    };
    let (_sel, host) = KvmHost::start(&cfg).expect("a KVM host");
    t.mark("host up");
    let memtide = host.binary("memtide").expect("memtide in the host");
    let svc = hosted::start_serve(
        &host,
        &memtide,
        PORT,
        SOCK,
        "/tmp/serve.log",
        &["--movablecore", "25%"],
        Duration::from_secs(30),
    )
    .expect("memtide serve");
    let (pid, addr, c) = (svc.pid, svc.addr, &svc.client);
    t.mark("service up");
    let sock = host
        .check(&format!("ls -l {SOCK}"), Duration::from_secs(10))
        .expect("socket");
    assert!(
        sock.text().contains("srw-------"),
        "socket mode 0600: {sock:?}"
    );
    say(&format!(
        "memtide serve (pid {pid}) at http://{addr} (host port {PORT})"
    ));

    let pool0 = c.pool().expect("pool");
    assert_eq!(pool0.nodes.len(), 2, "the host's two NUMA nodes");
    for n in &pool0.nodes {
        let movable = n
            .zones
            .iter()
            .find(|z| z.zone == "Movable")
            .expect("Movable");
        assert!(
            movable.managed > 0,
            "node {}: ZONE_MOVABLE from --movablecore",
            n.node
        );
        for z in &n.zones {
            let by_order: u64 = z.buddyinfo.iter().enumerate().map(|(o, c)| c << o).sum();
            assert_eq!(
                by_order, z.free,
                "node {} {}: buddyinfo sums to free",
                n.node, z.zone
            );
        }
    }

    // a: one node with a 128 MiB hot-pluggable range on host node 0 (takes what b gives).
    let a = body(&host, "a", 1, vec![node(0, vec![0], 256, 0, 128)]);
    // b: a second guest node with memory only, on host node 1, with a hot-pluggable range.
    let b = body(
        &host,
        "b",
        1,
        vec![node(0, vec![0], 128, 0, 0), node(1, vec![], 128, 1, 256)],
    );
    // Both boot at once (one vCPU each on the host's two).
    let (ta, tb) = (create(c, &a).expect("a"), create(c, &b).expect("b"));
    let va = boot(&host, c, &a, ta);
    t.mark("a: agent ready");
    let vb = boot(&host, c, &b, tb);
    t.mark("b: agent ready");
    assert_eq!((va.vcpus, va.boot_memory, va.nodes.len()), (1, 256 * M, 1));
    assert_eq!((vb.vcpus, vb.boot_memory, vb.nodes.len()), (1, 256 * M, 2));
    assert!(vb.nodes[1].vcpus.is_empty());
    assert_eq!(vb.nodes[1].host_node, 1);
    assert_eq!(vb.nodes[1].hotplug_size, 256 * M);
    assert!(vb.nodes[1].hotplug_addr.is_some());
    let list = c.list_vms().expect("list");
    assert!(list.iter().all(|v| v.state == VmState::Running), "{list:?}");
    // Boot RAM comes from the pool in whole blocks: exactly 512 MiB less free.
    assert_eq!(pool0.free_pages - free_pages(c), 512 * M / 4096);

    let metrics = c.metrics().expect("metrics");
    for want in [
        "memtide_vms{state=\"running\"} 2",
        "memtide_vm_vcpus{vm=\"b\"} 1",
        "memtide_vm_memory_bytes{vm=\"b\",node=\"1\",kind=\"boot\"} 134217728",
        "memtide_pool_pages{node=\"1\",zone=\"Movable\",kind=\"managed\"}",
    ] {
        assert!(metrics.contains(want), "{want} in /metrics");
    }

    // The CLI from outside, over the forwarded port.
    let http = addr.to_string();
    let (code, out) = cli(&memtide_local, &["vm", "list", "--http", &http]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("a ") && l.contains("running")),
        "{out}"
    );
    let (code, out) = cli(&memtide_local, &["pool", "--http", &http]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Movable"), "{out}");
    let (code, out) = cli(&memtide_local, &["vm", "info", "nope", "--http", &http]);
    assert_eq!(code, 2, "unknown VM: exit 2: {out}");

    assert_eq!(
        c.vm_verb("a", "pause").expect("pause").state,
        VmState::Paused
    );
    assert_eq!(
        c.vm_verb("a", "resume").expect("resume").state,
        VmState::Running
    );

    assert!(
        va.virtio_mem && vb.virtio_mem,
        "a and b have virtio-mem devices"
    );
    let r = c
        .resize(
            "b",
            &ResizeBody {
                size: Size(384 * M),
                node: None,
                wait_secs: 30,
            },
        )
        .expect("resize b");
    assert!(r.complete, "b plugged 128 MiB: {:?}", r.vm.nodes);
    assert_eq!(r.vm.nodes[1].plugged, 128 * M);
    t.mark("b resized");

    // Rebalance from outside: the 128 MiB b just got move to a.
    let r = c
        .rebalance(&RebalanceBody {
            from: "b".into(),
            to: "a".into(),
            size: Size(128 * M),
            from_node: None,
            to_node: None,
            wait_secs: 120,
        })
        .expect("rebalance b -> a");
    assert!(r.complete, "128 MiB moved: {r:?}");
    assert_eq!(r.moved, 128 * M);
    assert_eq!(r.from.nodes[1].plugged, 0, "b gave its plugged memory back");
    memtide_testbed::wait_until(
        "a plugs 128 MiB",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || Ok(c.vm("a").expect("info a").nodes[0].plugged == 128 * M),
    )
    .expect("a plugged what b gave");
    say("rebalance: 128 MiB moved from b to a");
    t.mark("b -> a rebalanced");

    hostile(c);
    t.mark("hostile requests rejected");

    for id in ["a", "b"] {
        let v = c.vm_verb(id, "shutdown").expect("shutdown");
        assert_eq!(v.state, VmState::Stopped);
        assert_eq!(v.exit_reason.as_deref(), Some("stopped"));
        c.delete_vm(id).expect("delete");
    }
    assert!(c.list_vms().expect("list").is_empty());
    assert_eq!(
        free_pages(c),
        pool0.free_pages,
        "every page back in the pool"
    );
    t.mark("VMs shut down and deleted");

    svc.stop(&host, Duration::from_secs(20))
        .expect("stop serve");
    let log = host
        .check("cat /tmp/serve.log", Duration::from_secs(10))
        .expect("log");
    assert!(log.text().contains("stopping every VM"), "{log:?}");
    if let KvmHost::Emulated(h) = host {
        assert!(
            h.shutdown().expect("shutdown"),
            "the host printed its end marker"
        );
    }
}
