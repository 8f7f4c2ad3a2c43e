//! The harness's other promises: the guest image is cached and complete; the emulated host
//! carries extra (dynamically linked) binaries, forwards a TCP port from outside to a server
//! inside, runs two guests at once on separate consoles (a microvm one and a q35 one with two
//! guest NUMA nodes, which the agent must report).

use memtide_testbed::{say, GuestImage, HostConfig, KvmHost, Machine, QemuGuest, Timeline};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn guest_image_is_cached_and_holds_init_busybox_agent_and_ordered_modules() {
    let first = GuestImage::ensure().unwrap_or_else(|e| panic!("guest image: {e}"));
    let t = Instant::now();
    let second = GuestImage::ensure().unwrap_or_else(|e| panic!("guest image again: {e}"));
    say(&format!(
        "guest image: second ensure() took {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    assert_eq!(first, second, "a second build finds the same files");
    let pos = |m: &str| {
        first
            .modules
            .iter()
            .position(|x| x == m)
            .unwrap_or_else(|| panic!("{m} in {:?}", first.modules))
    };
    assert!(pos("virtio_ring") < pos("virtio"));
    assert!(pos("virtio") < pos("virtio_pci") && pos("virtio") < pos("virtio_mmio"));
    assert!(
        pos("virtio_pci_modern_dev") < pos("virtio_pci")
            && pos("virtio_pci_legacy_dev") < pos("virtio_pci")
    );
    assert!(pos("virtio_mmio") < pos("virtio_mem") || pos("virtio") < pos("virtio_mem"));
    assert!(pos("virtio") < pos("virtio_balloon"));

    let gz = std::fs::File::open(&first.initrd).expect("initrd readable");
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut plain)
        .expect("gzip");
    let dir = std::env::temp_dir().join(format!("memtide-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let cpio_path = dir.join("initrd.cpio");
    std::fs::write(&cpio_path, &plain).expect("write");
    let out = Command::new("cpio")
        .args(["-it", "-F"])
        .arg(&cpio_path)
        .output()
        .expect("cpio");
    let list = String::from_utf8_lossy(&out.stdout);
    for f in [
        "init",
        "bin/busybox",
        "bin/memtide-guest-agent",
        "dev/console",
        "lib/modules/virtio_mem.ko",
        "lib/modules/virtio_balloon.ko",
    ] {
        assert!(
            list.lines().any(|l| l == f),
            "{f} in the initramfs:\n{list}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// A host that dies mid-test (not a result) runs the test again once on a fresh host.
#[test]
fn emulated_host_forwards_a_port_carries_binaries_and_runs_two_guests() {
    memtide_testbed::rerun_on_host_death("host_features", |_| {
        emulated_host_forwards_a_port_carries_binaries_and_runs_two_guests_on_a_fresh_host()
    });
}

fn emulated_host_forwards_a_port_carries_binaries_and_runs_two_guests_on_a_fresh_host() {
    let mut t = Timeline::new("host-features");
    let image = GuestImage::ensure().unwrap_or_else(|e| panic!("guest image: {e}"));
    let cpio =
        memtide_testbed::tools::need("cpio", "cpio").expect("cpio (a dynamic binary) exists");
    let cfg = HostConfig {
        nodes_mib: vec![1024, 1024],
        image: Some(image),
        extra_binaries: vec![cpio],
        forward_ports: vec![8080],
        ..HostConfig::default()
    };
    let (_sel, host) = KvmHost::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    t.mark("host up");
    let t60 = Duration::from_secs(60);

    // An extra dynamically linked binary runs (its libraries came along).
    let bin = host.binary("cpio").expect("cpio is in the host");
    let v = host
        .check(&format!("{bin} --version"), t60)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(v.text().contains("GNU cpio"), "{v:?}");

    // A server inside the host is reachable through the forwarded loopback port.
    host.check(
        "mkdir -p /tmp/www && echo hello-memtide > /tmp/www/index.html",
        t60,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let argv: Vec<String> = ["httpd", "-f", "-p", "8080", "-h", "/tmp/www"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let pid = host
        .spawn_daemon(&argv, "/tmp/httpd.log")
        .unwrap_or_else(|e| panic!("{e}"));
    say(&format!("httpd runs in the host as pid {pid}"));
    let addr = host.forwarded(8080).expect("port 8080 is forwarded");
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match http_get(addr, "/index.html") {
            Ok(b) if b.contains("hello-memtide") => break b,
            other if Instant::now() > deadline => panic!("no answer through {addr}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert!(body.starts_with("HTTP/1."), "{body}");
    t.mark("forwarded port answered");

    // Two guests at once: microvm with 1 node, q35 with 2 guest NUMA nodes.
    let a_argv = QemuGuest {
        memory_mib: 384,
        ..QemuGuest::default()
    }
    .argv(&host)
    .expect("argv");
    let numa: Vec<String> = [
        "-object",
        "memory-backend-ram,id=g0,size=256M",
        "-numa",
        "node,nodeid=0,memdev=g0,cpus=0",
        "-object",
        "memory-backend-ram,id=g1,size=256M",
        "-numa",
        "node,nodeid=1,memdev=g1,cpus=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let b_spec = QemuGuest {
        machine: Machine::Q35,
        memory_mib: 512,
        cpus: 2,
        extra: numa,
        ..QemuGuest::default()
    };
    let b_argv = b_spec.argv(&host).expect("argv");
    let mut a = host.spawn_guest("a-microvm", &a_argv).expect("spawn a");
    let mut b = host.spawn_guest("b-q35-numa", &b_argv).expect("spawn b");
    // Boot both, each with the dead-boot policy applied on its own.
    let timeout = Duration::from_secs(120);
    for (g, argv) in [(&mut a, &a_argv), (&mut b, &b_argv)] {
        let label = g.label().to_string();
        let mut boots = 1;
        loop {
            match g.wait_agent(timeout) {
                Ok(_) => break,
                Err(e) if e.is_dead_guest() && boots < memtide_testbed::retry::GUEST_BOOTS => {
                    boots += 1;
                    say(&format!(
                        "guest {label} was dead ({}); booting it again (boot {boots})",
                        e.to_string().lines().next().unwrap_or("")
                    ));
                    *g = host.spawn_guest(&label, argv).expect("respawn");
                }
                Err(e) => panic!("{e}"),
            }
        }
        t.mark_at(
            &format!("{label} agent ready"),
            g.agent_at().unwrap_or_else(Instant::now),
        );
    }
    let ra = a.report().unwrap_or_else(|e| panic!("{e}"));
    let rb = b.report().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ra.nodes.online, vec![0]);
    assert_eq!(
        rb.nodes.online,
        vec![0, 1],
        "the q35 guest sees its two NUMA nodes"
    );
    assert!(
        rb.zones.iter().any(|z| z.node == 1 && z.managed > 0),
        "node 1 has memory: {:?}",
        rb.zones
    );
    assert_eq!(rb.managed_kib(), rb.mem_total_kib);
    assert!(
        rb.blocks.iter().any(|bl| bl.node == Some(1)),
        "node 1 has memory blocks"
    );
    for g in [&mut a, &mut b] {
        g.fill(32).unwrap_or_else(|e| panic!("{e}"));
        g.verify().unwrap_or_else(|e| panic!("{e}"));
    }
    for g in [&mut a, &mut b] {
        assert_eq!(
            g.poweroff(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e}")),
            0
        );
    }
    t.mark("both guests powered off");

    // The host beats on its console; the beats never reach the lines commands read.
    let emulated = host.emulated().expect("the emulated host");
    let console = emulated.console();
    assert!(
        console
            .heartbeat_silence()
            .is_some_and(|s| s < Duration::from_secs(15)),
        "the host's heartbeat arrives: {:?}",
        console.heartbeat_silence()
    );
    assert!(
        !console
            .lines_since(0)
            .iter()
            .any(|l| l.text.contains("MEMTIDE-HEARTBEAT")),
        "no heartbeat in the console's lines"
    );
    assert_eq!(emulated.trouble(), None);
    // A command that hangs in a live host is a plain failure, not a dead host.
    let e = host
        .run("sleep 6", Duration::from_secs(2))
        .expect_err("the command outlives its timeout");
    assert!(!e.is_dead_host(), "a live host is not dead: {e}");
    std::thread::sleep(Duration::from_secs(5));
    host.check("true", t60).unwrap_or_else(|e| panic!("{e}"));
    // A host that stops (its QEMU frozen) is found dead by its missing heartbeat.
    let qemu = emulated.qemu_pid().expect("QEMU runs");
    say(&format!(
        "freezing the emulated host (SIGSTOP to QEMU pid {qemu})"
    ));
    // SAFETY: kill(2) with a pid this test started (the host's QEMU, still our child).
    let stopped = unsafe { libc::kill(qemu as libc::pid_t, libc::SIGSTOP) };
    assert_eq!(stopped, 0, "SIGSTOP to QEMU");
    let wait = memtide_testbed::emulated::HEARTBEAT_STALE + Duration::from_secs(5);
    let e = host
        .run("true", wait)
        .expect_err("a frozen host answers nothing");
    // SAFETY: as above.
    unsafe { libc::kill(qemu as libc::pid_t, libc::SIGCONT) };
    assert!(e.is_dead_host(), "a frozen host is dead: {e}");
    t.mark("a frozen host was found dead");
}
