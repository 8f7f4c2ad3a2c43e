//! Control plane tests with the fake launcher: real pool, real pause gate, no KVM.

use super::testing::{used_pages, FakeLauncher};
use super::*;
use crate::config::NumaNodeConfig;

const M: u64 = 1 << 20;

fn plane(hotplug: bool) -> ControlPlane {
    let cfg = PlaneConfig {
        nodes: Some(vec![(0, 1 << 30)]),
        movablecore: Some("50%".into()),
        max_vms: 3,
        ..PlaneConfig::default()
    };
    ControlPlane::new(
        &cfg,
        Box::new(FakeLauncher {
            hotplug,
            ..FakeLauncher::default()
        }),
    )
    .expect("plane")
}

fn config(memory: u64, hotplug: u64) -> VmConfig {
    let mut c = VmConfig::new("/k".into(), 1, memory);
    c.numa = vec![NumaNodeConfig {
        guest_node: 0,
        vcpus: vec![0],
        memory,
        host_node: 0,
        hotplug_size: hotplug,
    }];
    c
}

fn create(p: &ControlPlane, id: &str, memory: u64, hotplug: u64) -> Result<VmInfo, ControlError> {
    p.create_vm(CreateVm {
        id: Some(id.into()),
        config: config(memory, hotplug),
        console: None,
    })
}

#[test]
fn life_cycle_and_pool_accounting() {
    let p = plane(false);
    let used0 = used_pages(p.pool());
    let a = create(&p, "a", 128 * M, 0).expect("a");
    assert_eq!(a.state, VmState::Running);
    assert_eq!(a.boot_memory, 128 * M);
    assert_eq!(used_pages(p.pool()) - used0, 128 * M / 4096);
    assert!(matches!(
        create(&p, "a", 64 * M, 0),
        Err(ControlError::Exists(_))
    ));
    let auto = p
        .create_vm(CreateVm {
            id: None,
            config: config(32 * M, 0),
            console: None,
        })
        .expect("auto id");
    assert_eq!(auto.id, "vm0");
    assert_eq!(p.list_vms().len(), 2);

    assert_eq!(p.pause("a").expect("pause").state, VmState::Paused);
    assert!(matches!(
        p.pause("a"),
        Err(ControlError::WrongState {
            state: "paused",
            ..
        })
    ));
    assert_eq!(p.resume("a").expect("resume").state, VmState::Running);
    assert!(matches!(
        p.resume("a"),
        Err(ControlError::WrongState { .. })
    ));
    assert!(matches!(
        p.delete("a"),
        Err(ControlError::WrongState { .. })
    ));
    // A paused VM can be shut down.
    p.pause("a").expect("pause");
    let s = p.shutdown("a").expect("shutdown");
    assert_eq!(s.state, VmState::Stopped);
    assert_eq!(s.exit_reason.as_deref(), Some("stopped"));
    assert!(matches!(
        p.shutdown("a"),
        Err(ControlError::WrongState { .. })
    ));
    assert_eq!(
        used_pages(p.pool()) - used0,
        32 * M / 4096,
        "a's RAM is back"
    );
    p.delete("a").expect("delete");
    assert!(matches!(p.vm_info("a"), Err(ControlError::NotFound(_))));
    assert!(matches!(p.vm_info("../a"), Err(ControlError::BadId(_))));
    p.shutdown("vm0").expect("stop");
    p.delete("vm0").expect("delete");
    assert_eq!(used_pages(p.pool()), used0);
    p.pool().pool().validate().expect("pool consistent");
}

#[test]
fn bad_creates_change_nothing() {
    let p = plane(false);
    let used0 = used_pages(p.pool());
    let e = create(&p, "a", 3 * M, 0).expect_err("unaligned");
    assert_eq!(e.kind(), ErrorKind::BadRequest, "{e}");
    let mut c = config(64 * M, 0);
    c.vcpus = 999;
    let e = p
        .create_vm(CreateVm {
            id: Some("b".into()),
            config: c,
            console: None,
        })
        .expect_err("vcpus");
    assert_eq!(e.kind(), ErrorKind::BeyondLimits, "{e}");
    // Node 0 has ~512 MiB of kernel zones (movablecore=50%).
    let e = create(&p, "c", 800 * M, 0).expect_err("exhausted");
    assert_eq!(e.kind(), ErrorKind::Exhausted, "{e}");
    let e = create(&p, "/etc", 64 * M, 0).expect_err("bad id");
    assert_eq!(e.kind(), ErrorKind::BadRequest);
    assert!(p.list_vms().is_empty());
    assert_eq!(used_pages(p.pool()), used0);
    for id in ["x", "y", "z"] {
        create(&p, id, 16 * M, 0).expect("fits");
    }
    let e = create(&p, "w", 16 * M, 0).expect_err("max_vms");
    assert_eq!(e.kind(), ErrorKind::BeyondLimits);
}

#[test]
fn resize_without_virtio_mem_is_refused_clearly() {
    let p = plane(false);
    create(&p, "a", 64 * M, 128 * M).expect("a");
    create(&p, "b", 64 * M, 0).expect("b");
    let r = |id: &str, size| ResizeVm {
        id: id.into(),
        node: None,
        size,
        wait_secs: 0,
    };
    let e = p.resize(&r("a", 128 * M)).expect_err("no virtio-mem");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("no virtio-mem device"), "{e}");
    let e = p.resize(&r("b", 128 * M)).expect_err("no hotplug range");
    assert_eq!(e.kind(), ErrorKind::BeyondLimits, "{e}");
    let e = p.resize(&r("a", 128 * M + 4096)).expect_err("unaligned");
    assert_eq!(e.kind(), ErrorKind::BadRequest);
    let e = p.resize(&r("nope", 128 * M)).expect_err("unknown");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = p
        .rebalance(&Rebalance {
            from: "a".into(),
            to: "b".into(),
            size: 64 * M,
            from_node: None,
            to_node: None,
            wait_secs: 0,
        })
        .expect_err("no virtio-mem");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

#[test]
fn resize_and_rebalance_move_pool_blocks() {
    let p = plane(true);
    let used0 = used_pages(p.pool());
    create(&p, "a", 64 * M, 256 * M).expect("a");
    create(&p, "b", 64 * M, 256 * M).expect("b");
    let r = p
        .resize(&ResizeVm {
            id: "a".into(),
            node: Some(0),
            size: 64 * M + 200 * M,
            wait_secs: 5,
        })
        .expect("grow a");
    assert!(r.complete);
    assert_eq!(r.vm.nodes[0].plugged, 200 * M);
    assert_eq!(r.vm.total_memory, 264 * M);
    assert_eq!(used_pages(p.pool()) - used0, (128 + 200) * M / 4096);
    let reb = |size, wait_secs| Rebalance {
        from: "a".into(),
        to: "b".into(),
        size,
        from_node: None,
        to_node: None,
        wait_secs,
    };
    let m = p.rebalance(&reb(150 * M, 5)).expect("move");
    assert!(m.complete);
    assert_eq!(m.moved, 150 * M);
    assert_eq!(m.from.nodes[0].plugged, 50 * M);
    assert_eq!(m.to.nodes[0].plugged, 150 * M);
    assert_eq!(used_pages(p.pool()) - used0, (128 + 200) * M / 4096);
    let audit = p.audit_pool();
    assert!(audit.consistent, "{:?}", audit.problems);
    assert_eq!(audit.owned_pages, (128 + 200) * M / 4096);
    assert_eq!(audit.owners.len(), 4, "boot and plugged of a and b");
    // More than a has: refused before anything changes.
    let e = p.rebalance(&reb(52 * M, 0)).expect_err("a has 50 MiB");
    assert_eq!(e.kind(), ErrorKind::BeyondLimits, "{e}");
    // Beyond b's range.
    let e = p
        .resize(&ResizeVm {
            id: "b".into(),
            node: None,
            size: 64 * M + 258 * M,
            wait_secs: 0,
        })
        .expect_err("beyond");
    assert_eq!(e.kind(), ErrorKind::BeyondLimits);
    let e = p.rebalance(&Rebalance {
        to: "a".into(),
        ..reb(2 * M, 0)
    });
    assert!(matches!(e, Err(ControlError::Invalid(_))));
    p.shutdown("a").expect("stop a");
    let e = p.rebalance(&reb(2 * M, 0)).expect_err("a stopped");
    assert_eq!(e.kind(), ErrorKind::Conflict);
    p.shutdown("b").expect("stop b");
    assert_eq!(used_pages(p.pool()), used0, "plugged blocks are back");
    p.pool().pool().validate().expect("pool consistent");
    let audit = p.audit_pool();
    assert!(audit.consistent && audit.owned_pages == 0, "{audit:?}");
}

#[test]
fn growth_beyond_the_pool_is_refused() {
    let p = plane(true);
    // 4 GiB hot-pluggable range, but ZONE_MOVABLE holds ~512 MiB.
    create(&p, "a", 64 * M, 4096 * M).expect("a");
    let e = p
        .resize(&ResizeVm {
            id: "a".into(),
            node: None,
            size: 64 * M + 1024 * M,
            wait_secs: 0,
        })
        .expect_err("pool");
    assert_eq!(e.kind(), ErrorKind::Exhausted, "{e}");
    assert_eq!(p.vm_info("a").expect("a").nodes[0].requested, 0);
}

/// A plane whose fake guests keep the bytes in the returned counter plugged (memory in use),
/// with VMs a and b (64 MiB boot, 256 MiB hot-pluggable each), a grown by 128 MiB.
fn plane_with_pinned_memory() -> (ControlPlane, Arc<std::sync::atomic::AtomicU64>) {
    let pinned = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cfg = PlaneConfig {
        nodes: Some(vec![(0, 1 << 30)]),
        movablecore: Some("50%".into()),
        ..PlaneConfig::default()
    };
    let launcher = FakeLauncher {
        hotplug: true,
        pinned: pinned.clone(),
    };
    let p = ControlPlane::new(&cfg, Box::new(launcher)).expect("plane");
    create(&p, "a", 64 * M, 256 * M).expect("a");
    create(&p, "b", 64 * M, 256 * M).expect("b");
    p.resize(&ResizeVm {
        id: "a".into(),
        node: None,
        size: 64 * M + 128 * M,
        wait_secs: 1,
    })
    .expect("grow");
    (p, pinned)
}

#[test]
fn partial_shrink_reports_what_moved() {
    let (p, pinned) = plane_with_pinned_memory();
    // The fake guest keeps 100 MiB plugged (memory in use): only 28 MiB can move.
    pinned.store(100 * M, std::sync::atomic::Ordering::SeqCst);
    let m = p
        .rebalance(&Rebalance {
            from: "a".into(),
            to: "b".into(),
            size: 128 * M,
            from_node: None,
            to_node: None,
            wait_secs: 1,
        })
        .expect("partial");
    assert!(!m.complete);
    assert_eq!(m.moved, 28 * M);
    assert_eq!(m.from.nodes[0].plugged, 100 * M);
    assert_eq!(m.from.nodes[0].requested, 0);
    assert_eq!(m.to.nodes[0].plugged, 28 * M);
}

#[test]
fn rebalance_grows_the_target_as_the_source_gives_back() {
    let (p, pinned) = plane_with_pinned_memory();
    // A's guest gives back 28 MiB at once and holds the other 100 MiB until unpinned.
    pinned.store(100 * M, std::sync::atomic::Ordering::SeqCst);
    let m = std::thread::scope(|scope| {
        let mover = scope.spawn(|| {
            p.rebalance(&Rebalance {
                from: "a".into(),
                to: "b".into(),
                size: 128 * M,
                from_node: None,
                to_node: None,
                wait_secs: 20,
            })
        });
        // B already has what A released, while A still holds the rest.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let b = p.vm_info("b").expect("b");
            if b.nodes[0].requested == 28 * M {
                assert_eq!(b.nodes[0].plugged, 28 * M);
                assert_eq!(p.vm_info("a").expect("a").nodes[0].plugged, 100 * M);
                break;
            }
            assert!(b.nodes[0].requested < 28 * M, "never more than released");
            assert!(std::time::Instant::now() < deadline, "b not grown early");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let audit = p.audit_pool();
        assert!(audit.consistent, "{:?}", audit.problems);
        pinned.store(0, std::sync::atomic::Ordering::SeqCst);
        mover.join().expect("mover")
    })
    .expect("move");
    assert!(m.complete);
    assert_eq!(m.moved, 128 * M);
    assert_eq!(
        (m.from.nodes[0].plugged, m.to.nodes[0].plugged),
        (0, 128 * M)
    );
}

#[test]
fn handle_dispatches_every_verb() {
    let p = plane(true);
    let vm = |id: &str| VmRef { id: id.into() };
    let r = p
        .handle(Request::CreateVm(CreateVm {
            id: Some("a".into()),
            config: config(64 * M, 128 * M),
            console: None,
        }))
        .expect("create");
    assert!(matches!(r, Response::Vm(v) if v.id == "a"));
    assert!(matches!(p.handle(Request::ListVms), Ok(Response::Vms(v)) if v.len() == 1));
    assert!(matches!(
        p.handle(Request::VmInfo(vm("a"))),
        Ok(Response::Vm(_))
    ));
    assert!(
        matches!(p.handle(Request::Pause(vm("a"))), Ok(Response::Vm(v)) if v.state == VmState::Paused)
    );
    assert!(
        matches!(p.handle(Request::Resume(vm("a"))), Ok(Response::Vm(v)) if v.state == VmState::Running)
    );
    let r = p.handle(Request::Resize(ResizeVm {
        id: "a".into(),
        node: None,
        size: 64 * M + 64 * M,
        wait_secs: 1,
    }));
    assert!(matches!(r, Ok(Response::Resize(r)) if r.complete));
    let r = p.handle(Request::Rebalance(Rebalance {
        from: "a".into(),
        to: "a".into(),
        size: 2 * M,
        from_node: None,
        to_node: None,
        wait_secs: 0,
    }));
    assert!(matches!(r, Err(ControlError::Invalid(_))));
    assert!(matches!(p.handle(Request::PoolInfo), Ok(Response::Pool(_))));
    assert!(
        matches!(p.handle(Request::Shutdown(vm("a"))), Ok(Response::Vm(v)) if v.state == VmState::Stopped)
    );
    assert!(matches!(
        p.handle(Request::Delete(vm("a"))),
        Ok(Response::Deleted)
    ));
    assert!(matches!(
        p.handle(Request::VmInfo(vm("a"))),
        Err(ControlError::NotFound(_))
    ));
}

/// Verbs from many threads at once: no deadlock, every page back, the pool consistent.
#[test]
fn concurrent_verbs_keep_the_pool_consistent() {
    let p = Arc::new(plane(true));
    let used0 = used_pages(p.pool());
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let id = format!("w{w}-{i}");
                    let _ = create(&p, &id, 32 * M, 128 * M);
                    let _ = p.pause(&id);
                    let _ = p.resume(&id);
                    let _ = p.resize(&ResizeVm {
                        id: id.clone(),
                        node: None,
                        size: 32 * M + 32 * M,
                        wait_secs: 0,
                    });
                    let other = format!("w{}-{i}", (w + 1) % 4);
                    let _ = p.rebalance(&Rebalance {
                        from: id.clone(),
                        to: other,
                        size: 2 * M,
                        from_node: None,
                        to_node: None,
                        wait_secs: 0,
                    });
                    let _ = p.list_vms();
                    let _ = p.pool_info();
                    let _ = p.shutdown(&id);
                    let _ = p.delete(&id);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    p.stop_all();
    for v in p.list_vms() {
        p.delete(&v.id).expect("stopped VMs delete");
    }
    assert!(p.list_vms().is_empty());
    assert_eq!(used_pages(p.pool()), used0);
    p.pool().pool().validate().expect("pool consistent");
}

/// A guest that powers off by itself: the VM is stopped (reason `power_off`), its RAM back
/// in the pool, and it can be deleted.
#[test]
fn a_guest_power_off_stops_the_vm() {
    let p = plane(false);
    let used0 = used_pages(p.pool());
    create(&p, "a", 64 * M, 0).expect("a");
    let s = p.slot("a").expect("slot");
    s.exit.request(ExitReason::PowerOff);
    assert!(s.wait_stopped(Duration::from_secs(10)));
    let v = p.vm_info("a").expect("info");
    assert_eq!(v.state, VmState::Stopped);
    assert_eq!(v.exit_reason.as_deref(), Some("power_off"));
    assert_eq!(used_pages(p.pool()), used0);
    assert!(matches!(
        p.shutdown("a"),
        Err(ControlError::WrongState { .. })
    ));
    p.delete("a").expect("delete");
}
