//! Balloon verbs of the control plane with the fake launcher (a guest that follows every
//! target at once).

use super::testing::FakeLauncher;
use super::*;

const M: u64 = 1 << 20;

fn plane() -> ControlPlane {
    let cfg = PlaneConfig {
        nodes: Some(vec![(0, 1 << 30)]),
        max_vms: 3,
        ..PlaneConfig::default()
    };
    ControlPlane::new(&cfg, Box::new(FakeLauncher::default())).expect("plane")
}

fn create(p: &ControlPlane, id: &str, balloon: bool) -> VmInfo {
    let mut config = VmConfig::new("/k".into(), 1, 256 * M);
    if !balloon {
        config.balloon = None;
    }
    p.create_vm(CreateVm {
        id: Some(id.into()),
        config,
        console: None,
    })
    .expect("created")
}

#[test]
fn balloon_targets_in_both_sizes_show_in_vm_info() {
    let p = plane();
    let info = create(&p, "a", true);
    let b = info.balloon.expect("balloon on by default");
    assert_eq!(b.guest_ram, 256 * M);
    assert_eq!(b.target_bytes, 0);
    assert_eq!(b.stats_interval_secs, Some(2));
    let r = p
        .set_balloon(&SetBalloon {
            id: "a".into(),
            target: BalloonTarget::GuestSize(192 * M),
        })
        .expect("guest size");
    assert_eq!((r.target_bytes, r.guest_size), (64 * M, 192 * M));
    let r = p
        .handle(Request::SetBalloon(SetBalloon {
            id: "a".into(),
            target: BalloonTarget::BalloonSize(128 * M),
        }))
        .expect("balloon size");
    let Response::Balloon(r) = r else {
        panic!("{r:?}")
    };
    assert_eq!((r.target_bytes, r.guest_size), (128 * M, 128 * M));
    assert_eq!(p.balloon_info("a").expect("info").actual_bytes, 128 * M);
    let vm = p.vm_info("a").expect("vm");
    assert_eq!(vm.balloon.map(|b| b.ballooned_bytes), Some(128 * M));
}

#[test]
fn bad_balloon_targets_are_refused_and_change_nothing() {
    let p = plane();
    create(&p, "a", true);
    create(&p, "off", false);
    let set = |id: &str, target| {
        p.set_balloon(&SetBalloon {
            id: id.into(),
            target,
        })
    };
    let cases = [
        (
            "a",
            BalloonTarget::GuestSize(257 * M),
            ErrorKind::BeyondLimits,
        ),
        (
            "a",
            BalloonTarget::BalloonSize(257 * M),
            ErrorKind::BeyondLimits,
        ),
        ("a", BalloonTarget::BalloonSize(4097), ErrorKind::BadRequest),
        (
            "off",
            BalloonTarget::BalloonSize(4096),
            ErrorKind::Unsupported,
        ),
        (
            "nope",
            BalloonTarget::BalloonSize(4096),
            ErrorKind::NotFound,
        ),
        (
            "..",
            BalloonTarget::BalloonSize(4096),
            ErrorKind::BadRequest,
        ),
    ];
    for (id, target, kind) in cases {
        let e = set(id, target).expect_err("refused");
        assert_eq!(e.kind(), kind, "{id} {target:?}: {e}");
    }
    assert_eq!(p.balloon_info("a").expect("info").target_bytes, 0);
    assert!(p.vm_info("off").expect("vm").balloon.is_none());
    assert_eq!(
        p.balloon_info("off").expect_err("none").kind(),
        ErrorKind::Unsupported
    );
    p.shutdown("a").expect("stopped");
    let e = set("a", BalloonTarget::BalloonSize(4096)).expect_err("stopped");
    assert_eq!(e.kind(), ErrorKind::Conflict);
}
