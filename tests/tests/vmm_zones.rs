//! The closed loop between the VMM and the allocator (issue 4): memtide knows the memory map
//! it gives a guest; the allocator's zone computation on that map with the guest's own
//! `kernelcore=`/`movablecore=` must predict the guest's /proc/zoneinfo (spanned and present
//! pages per node and zone). Guests with 1 and 2 NUMA nodes and several kernelcore /
//! movablecore values boot in memtide; the agent's report is compared with the prediction.

mod common;

use common::{memtide_binary, run_argv};
use memtide_allocator::ZoneType;
use memtide_testbed::{say, GuestImage, HostConfig, KvmHost, Timeline};
use memtide_vmm::config::NumaNodeConfig;
use memtide_vmm::zones::predict_guest_zones;
use memtide_vmm::VmConfig;
use std::time::Duration;

struct Case {
    label: &'static str,
    memory_mib: u64,
    numa: &'static [&'static str],
    kernelcore: Option<&'static str>,
    movablecore: Option<&'static str>,
}

impl Case {
    fn config(&self) -> VmConfig {
        let mut c = VmConfig::new("/guest/vmlinuz".into(), 2, self.memory_mib << 20);
        c.numa = self
            .numa
            .iter()
            .map(|s| s.parse::<NumaNodeConfig>().expect("valid --numa"))
            .collect();
        c.guest_kernelcore = self.kernelcore.map(String::from);
        c.guest_movablecore = self.movablecore.map(String::from);
        c.validate().expect("valid config");
        c
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--vcpus".to_string(),
            "2".into(),
            "--memory".into(),
            format!("{}M", self.memory_mib),
        ];
        for n in self.numa {
            a.push("--numa".into());
            a.push(n.to_string());
        }
        if let Some(k) = self.kernelcore {
            a.push("--kernelcore".into());
            a.push(k.into());
        }
        if let Some(m) = self.movablecore {
            a.push("--movablecore".into());
            a.push(m.into());
        }
        a
    }
}

/// A host that dies mid-test (not a result) runs the test again once on a fresh host.
#[test]
fn allocator_predicts_the_guests_zoneinfo() {
    memtide_testbed::rerun_on_host_death("vmm_zones", |_| {
        allocator_predicts_the_guests_zoneinfo_on_a_fresh_host()
    });
}

fn allocator_predicts_the_guests_zoneinfo_on_a_fresh_host() {
    let mut t = Timeline::new("vmm-zones");
    let memtide_local = memtide_binary();
    let image = GuestImage::ensure().expect("guest image");
    let cfg = HostConfig {
        nodes_mib: vec![1536, 1536],
        image: Some(image),
        extra_binaries: vec![memtide_local],
        ..HostConfig::default()
    };
    let (_sel, host) = KvmHost::start(&cfg).expect("a KVM host");
    let memtide = host.binary("memtide").expect("memtide in the host");
    let two = &[
        "guest_numa_id=0,cpus=0,memory=384M,host_numa_id=0",
        "guest_numa_id=1,cpus=1,memory=256M,host_numa_id=1",
    ];
    let cases = [
        Case {
            label: "1node",
            memory_mib: 512,
            numa: &[],
            kernelcore: None,
            movablecore: None,
        },
        Case {
            label: "1node-movablecore-128M",
            memory_mib: 512,
            numa: &[],
            kernelcore: None,
            movablecore: Some("128M"),
        },
        Case {
            label: "1node-kernelcore-200M",
            memory_mib: 512,
            numa: &[],
            kernelcore: Some("200M"),
            movablecore: None,
        },
        Case {
            label: "2nodes-movablecore-30%",
            memory_mib: 640,
            numa: two,
            kernelcore: None,
            movablecore: Some("30%"),
        },
        Case {
            label: "2nodes-kernelcore-256M",
            memory_mib: 640,
            numa: two,
            kernelcore: Some("256M"),
            movablecore: None,
        },
    ];
    for case in &cases {
        let prediction = predict_guest_zones(&case.config()).expect("prediction");
        let args = case.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let argv = run_argv(&host, &memtide, &args);
        let mut guest = host
            .boot_guest(case.label, Duration::from_secs(150), |_| argv.clone())
            .expect("guest boots to the agent");
        let report = guest.report().expect("agent report");
        let mut compared = 0;
        for node in prediction.nodes() {
            for zt in [
                ZoneType::Dma,
                ZoneType::Dma32,
                ZoneType::Normal,
                ZoneType::Movable,
            ] {
                let want = prediction.zone(node.nid, zt).expect("every zone type");
                let got = report.zone(node.nid.0, zt.name()).unwrap_or_else(|| {
                    panic!(
                        "{}: guest has no {} zone on node {}",
                        case.label,
                        zt.name(),
                        node.nid.0
                    )
                });
                say(&format!(
                    "{}: node {} {:<7} predicted spanned {:>6} present {:>6}, guest spanned {:>6} present {:>6}",
                    case.label,
                    node.nid.0,
                    zt.name(),
                    want.spanned_pages,
                    want.present_pages,
                    got.spanned,
                    got.present
                ));
                assert_eq!(
                    (got.spanned, got.present),
                    (want.spanned_pages, want.present_pages),
                    "{}: node {} zone {}",
                    case.label,
                    node.nid.0,
                    zt.name()
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 4 * case.config().nodes().len());
        if case.movablecore.is_some() || case.kernelcore.is_some() {
            let movable: u64 = prediction
                .nodes()
                .iter()
                .filter_map(|n| prediction.zone(n.nid, ZoneType::Movable))
                .map(|z| z.present_pages)
                .sum();
            assert!(movable > 0, "{}: the case makes ZONE_MOVABLE", case.label);
        }
        assert_eq!(
            guest.poweroff(Duration::from_secs(60)).expect("poweroff"),
            0
        );
        t.mark(&format!("{} compared", case.label));
    }
    if let KvmHost::Emulated(h) = host {
        assert!(
            h.shutdown().expect("shutdown"),
            "the host printed its end marker"
        );
    }
}
