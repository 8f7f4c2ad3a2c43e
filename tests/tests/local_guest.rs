//! The local-guest code path of the harness (used on hardware-KVM machines: the VMM is a
//! child of the test, its stdio the guest console) exercised with QEMU TCG as the VMM, so it
//! runs on machines without usable KVM too. Its own test binary, so it does not compete for
//! the 2 cores with an emulated host started by another test of the same binary.

use memtide_testbed::{GuestImage, KvmHost, Machine, QemuGuest, Timeline};
use std::time::{Duration, Instant};

#[test]
fn local_guest_path_boots_the_image_with_qemu_tcg() {
    // The hardware-KVM code path (VMM as a local child, console on its stdio) with QEMU TCG
    // as the VMM, so it is exercised on machines without usable KVM too.
    let mut t = Timeline::new("local-tcg");
    let image = GuestImage::ensure().unwrap_or_else(|e| panic!("guest image: {e}"));
    let host = KvmHost::local(image, &[]);
    let argv = QemuGuest {
        machine: Machine::Q35,
        tcg: true,
        memory_mib: 256,
        ..QemuGuest::default()
    }
    .argv(&host)
    .expect("argv");
    let mut g = host
        .boot_guest("local-tcg", Duration::from_secs(120), |_| argv.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    t.mark_at("agent ready", g.agent_at().unwrap_or_else(Instant::now));
    let r = g.report().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.mem_total_kib > 180 * 1024 && r.mem_total_kib < 256 * 1024,
        "{}",
        r.mem_total_kib
    );
    assert_eq!(r.managed_kib(), r.mem_total_kib);
    assert_eq!(
        g.poweroff(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}")),
        0
    );
}
