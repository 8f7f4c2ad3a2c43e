//! The generic test suite (run against [`Pool`] and [`SimpleBuddy`]) and pool-specific
//! tests: fallback/stealing, zonelists, watermarks, isolation, reports, metadata budget,
//! and seeded proptests that call `validate()`.

use super::*;
use crate::types::{ZoneType, MAX_ORDER_NR_PAGES};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::HashSet;

fn zd(node: u32, zone: ZoneType, start: u64, end: u64, ranges: &[(u64, u64)]) -> ZoneDescriptor {
    ZoneDescriptor {
        node: NodeId(node),
        zone,
        zone_start_pfn: Pfn(start),
        spanned_pages: end - start,
        present_ranges: ranges.iter().map(|&(s, e)| (Pfn(s), Pfn(e))).collect(),
    }
}

use crate::types::ZoneDescriptor;

/// A small single-node machine: DMA (pfn 1..4096 with a hole), DMA32 up to 64 MiB, and a
/// Movable zone of 32 MiB.
fn small_machine() -> Vec<ZoneDescriptor> {
    vec![
        zd(0, ZoneType::Dma, 1, 4096, &[(1, 159), (256, 4096)]),
        zd(0, ZoneType::Dma32, 4096, 16384, &[(4096, 16384)]),
        zd(0, ZoneType::Movable, 16384, 24576, &[(16384, 24576)]),
    ]
}

fn small_config() -> PoolConfig {
    PoolConfig {
        nr_cpus: Some(2),
        ..PoolConfig::default()
    }
}

fn two_nodes() -> Vec<ZoneDescriptor> {
    vec![
        zd(0, ZoneType::Dma32, 0, 8192, &[(0, 8192)]),
        zd(0, ZoneType::Normal, 8192, 16384, &[(8192, 16384)]),
        zd(1, ZoneType::Normal, 16384, 24576, &[(16384, 24576)]),
        zd(1, ZoneType::Movable, 24576, 32768, &[(24576, 32768)]),
    ]
}

// ----- generic suite ------------------------------------------------------------------

fn suite_no_double_handout(a: &dyn PageAllocator) {
    let initial = a.nr_free_blocks();
    let mut live: Vec<(Pfn, Order)> = Vec::new();
    let mut pages = HashSet::new();
    let mut order = 0u32;
    while let Ok(p) = a.alloc(Order(order), MigrateType::Movable, NodeId(0)) {
        assert_eq!(
            p.0 % (1 << order),
            0,
            "block {p} not aligned to order {order}"
        );
        for q in p.0..p.0 + (1 << order) {
            assert!(pages.insert(q), "page {q:#x} handed out twice");
        }
        live.push((p, Order(order)));
        order = (order + 3) % 6;
    }
    assert!(!live.is_empty());
    let allocated: u64 = live.iter().map(|(_, o)| o.nr_pages()).sum();
    assert_eq!(a.free_pages() + allocated, a.managed_pages());
    a.validate().expect("valid while full");
    for (p, o) in live.drain(..).rev() {
        a.free(p, o).expect("free");
    }
    a.drain();
    a.validate().expect("valid after freeing");
    assert_eq!(a.free_pages(), a.managed_pages());
    assert_eq!(
        a.nr_free_blocks(),
        initial,
        "buddies did not merge back fully"
    );
}

fn suite_rejects_bad_frees(a: &dyn PageAllocator) {
    let p = a
        .alloc(Order(2), MigrateType::Movable, NodeId(0))
        .expect("alloc");
    assert_eq!(
        a.free(p, Order(1)),
        Err(BuddyError::WrongOrder {
            pfn: p,
            allocated: 2,
            given: 1
        })
    );
    a.free(p, Order(2)).expect("free");
    assert_eq!(a.free(p, Order(2)), Err(BuddyError::NotAllocated(p)));
    assert!(matches!(
        a.alloc(Order(11), MigrateType::Movable, NodeId(0)),
        Err(BuddyError::InvalidOrder(11))
    ));
    a.validate().expect("valid");
}

fn suite_random_ops(a: &dyn PageAllocator, seed: u64) {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 1,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed)),
    );
    let ops = proptest::collection::vec((0u32..8, any::<bool>(), 0usize..1000), 1..400);
    let initial = a.nr_free_blocks();
    runner
        .run(&ops, |ops| {
            let mut live: Vec<(Pfn, Order)> = Vec::new();
            for (order, alloc, pick) in ops {
                if alloc || live.is_empty() {
                    if let Ok(p) = a.alloc(Order(order), MigrateType::Movable, NodeId(0)) {
                        live.push((p, Order(order)));
                    }
                } else {
                    let (p, o) = live.swap_remove(pick % live.len());
                    a.free(p, o)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                let allocated: u64 = live.iter().map(|(_, o)| o.nr_pages()).sum();
                prop_assert_eq!(a.free_pages() + allocated, a.managed_pages());
            }
            a.validate()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (p, o) in live {
                a.free(p, o)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            a.drain();
            a.validate()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(a.nr_free_blocks(), initial);
            Ok(())
        })
        .expect("random operations keep the invariants");
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b
}

fn run_suite(make: &dyn Fn() -> Box<dyn PageAllocator>) {
    suite_no_double_handout(make().as_ref());
    suite_rejects_bad_frees(make().as_ref());
    for seed in 0..8 {
        suite_random_ops(make().as_ref(), seed);
    }
}

#[test]
fn generic_suite_pool() {
    run_suite(&|| Box::new(Pool::new(&small_machine(), small_config()).expect("pool")));
}

#[test]
fn generic_suite_baseline() {
    run_suite(&|| Box::new(SimpleBuddy::new(&small_machine())));
}

// ----- pool specifics -------------------------------------------------------------------

fn req(order: u32, mt: MigrateType, node: u32) -> AllocRequest {
    AllocRequest {
        order: Order(order),
        migratetype: mt,
        node: NodeId(node),
        highest_zone: None,
    }
}

#[test]
fn movable_zone_never_serves_unmovable() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let movable = pool.zone(NodeId(0), ZoneType::Movable).expect("zone");
    let (ms, me) = (
        movable.zone_start_pfn(),
        movable.zone_start_pfn() + movable.spanned_pages(),
    );
    let mut got = Vec::new();
    while let Ok(p) = pool.alloc(req(0, MigrateType::Unmovable, 0)) {
        assert!(
            !(ms..me).contains(&p.0),
            "unmovable page {p} from ZONE_MOVABLE"
        );
        got.push(p);
    }
    // Movable requests still succeed, from ZONE_MOVABLE.
    let p = pool
        .alloc(req(0, MigrateType::Movable, 0))
        .expect("movable");
    assert!((ms..me).contains(&p.0));
    assert_eq!(
        pool.alloc(AllocRequest {
            highest_zone: Some(ZoneType::Movable),
            ..req(0, MigrateType::Unmovable, 0)
        }),
        Err(BuddyError::MovableZoneForbidden(MigrateType::Unmovable))
    );
    pool.validate().expect("valid");
}

#[test]
fn allocation_stops_at_min_watermark_plus_reserve() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let mut n = 0;
    while pool.alloc(req(0, MigrateType::Movable, 0)).is_ok() {
        n += 1;
    }
    assert!(n > 0);
    for z in pool.zones().iter().filter(|z| z.is_managed()) {
        // highest_zoneidx Movable = 3 for movable requests.
        let limit = z.wmark_pages(Wmark::Min) + z.lowmem_reserve()[3];
        // Stopped at the limit; a per-CPU refill may dip below it by less than one batch,
        // as in Linux (`rmqueue_bulk` checks the watermark once per batch).
        let batch = super::pcp::zone_batchsize(z.managed_pages()).max(1);
        let free = z.nr_free_pages();
        assert!(
            free <= limit,
            "zone {:?} free {free} limit {limit}",
            z.zone_type()
        );
        assert!(
            free + batch > limit,
            "zone {:?} free {free} far below {limit}",
            z.zone_type()
        );
    }
    // The last order-0 allocation failed with NoMemory.
    assert!(matches!(
        pool.alloc(req(0, MigrateType::Movable, 0)),
        Err(BuddyError::NoMemory { .. })
    ));
    pool.validate().expect("valid");
}

#[test]
fn zonelist_orders_local_first_high_to_low() {
    let pool = Pool::new(&two_nodes(), small_config()).expect("pool");
    assert_eq!(
        pool.zonelist(NodeId(1)).expect("zl"),
        vec![
            (NodeId(1), ZoneType::Movable),
            (NodeId(1), ZoneType::Normal),
            (NodeId(0), ZoneType::Normal),
            (NodeId(0), ZoneType::Dma32),
        ]
    );
    // Unmovable requests on node 1 spill to node 0 (never node 1's Movable zone).
    let mut nodes = HashSet::new();
    while let Ok(p) = pool.alloc(req(3, MigrateType::Unmovable, 1)) {
        assert!(!(24576..32768).contains(&p.0));
        nodes.insert(p.0 >= 16384);
    }
    assert_eq!(nodes.len(), 2, "spilled to the remote node");
    pool.validate().expect("valid");
}

#[test]
fn unmovable_fallback_steals_whole_pageblock() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let p = pool
        .alloc(req(0, MigrateType::Unmovable, 0))
        .expect("alloc");
    let zone = pool.zones().iter().find(|z| z.spans(p.0)).expect("zone");
    // Everything started MOVABLE: the unmovable request stole a whole pageblock.
    assert_eq!(zone.pageblock_mt(p.0), MigrateType::Unmovable);
    let pt = pool.pagetypeinfo();
    assert!(pt.contains("Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic      Isolate \n"), "{pt}");
    pool.validate().expect("valid");
    // A movable order-3 request that can't steal a pageblock takes the smallest fallback.
    let pool2 = Pool::new(&small_machine(), small_config()).expect("pool");
    let mut live = Vec::new();
    while let Ok(p) = pool2.alloc(req(5, MigrateType::Unmovable, 0)) {
        live.push(p);
    }
    pool2.validate().expect("valid after stealing everything");
}

#[test]
fn isolation_offline_online_round_trip() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let (s, e) = (Pfn(16384), Pfn(16384 + 2 * MAX_ORDER_NR_PAGES));
    // Leave order-0 and order-9 blocks of the range on the per-CPU lists.
    let cached: Vec<Pfn> = (0..200)
        .map(|_| pool.alloc(req(0, MigrateType::Movable, 0)).expect("alloc"))
        .collect();
    let thp = pool.alloc(req(9, MigrateType::Movable, 0)).expect("alloc");
    for p in cached {
        pool.free(p, Order(0)).expect("free");
    }
    pool.free(thp, Order(9)).expect("free");
    assert!(
        pool.zone(NodeId(0), ZoneType::Movable)
            .expect("z")
            .pcp_count()
            > 0
    );
    // Fill part of the range with movable allocations.
    let mut live = HashSet::new();
    for _ in 0..40 {
        let p = pool.alloc(req(4, MigrateType::Movable, 0)).expect("alloc");
        live.insert(p);
    }
    let in_range: usize = live.iter().filter(|p| (s.0..e.0).contains(&p.0)).count();
    assert!(in_range > 0);
    let before = pool
        .zone(NodeId(0), ZoneType::Movable)
        .expect("z")
        .managed_pages();
    let live_cell = std::cell::RefCell::new(live);
    let report = pool
        .offline_pages(s, e, |pfn, order| {
            let new = pool
                .alloc(req(order.0, MigrateType::Movable, 0))
                .map_err(|e| e.to_string())?;
            assert!(
                !(s.0..e.0).contains(&new.0),
                "replacement {new} inside the isolated range"
            );
            pool.free(pfn, order).map_err(|e| e.to_string())?;
            let mut l = live_cell.borrow_mut();
            l.remove(&pfn);
            l.insert(new);
            Ok(())
        })
        .expect("offline");
    assert_eq!(report.nr_pages, 2 * MAX_ORDER_NR_PAGES);
    assert_eq!(report.migrated.len(), in_range);
    let z = pool.zone(NodeId(0), ZoneType::Movable).expect("z");
    assert_eq!(z.managed_pages(), before - 2 * MAX_ORDER_NR_PAGES);
    pool.validate().expect("valid after offline");
    assert!(matches!(
        pool.online_pages(Pfn(4096), Pfn(5120)),
        Err(BuddyError::RangeNotMovable { .. })
    ));
    pool.online_pages(s, e).expect("online");
    assert_eq!(z.managed_pages(), before);
    assert!(matches!(
        pool.online_pages(s, e),
        Err(BuddyError::RangeOnline { .. })
    ));
    pool.validate().expect("valid after online");
    for p in live_cell.into_inner() {
        pool.free(p, Order(4)).expect("free");
    }
    pool.drain_all_pages();
    pool.validate().expect("valid");
    let fresh = Pool::new(&small_machine(), small_config()).expect("pool");
    assert_eq!(pool.buddyinfo(), fresh.buddyinfo());
}

#[test]
fn isolated_pages_are_never_handed_out() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let (s, e) = (Pfn(16384), Pfn(24576));
    pool.start_isolate_page_range(s, e).expect("isolate");
    assert_eq!(
        pool.start_isolate_page_range(s, e),
        Err(BuddyError::AlreadyIsolated(s))
    );
    pool.validate().expect("valid while isolated");
    while let Ok(p) = pool.alloc(req(0, MigrateType::Movable, 0)) {
        assert!(!(s.0..e.0).contains(&p.0));
    }
    pool.test_pages_isolated(s, e)
        .expect("all free and isolated");
    pool.undo_isolate_page_range(s, e).expect("undo");
    pool.validate().expect("valid");
    assert!(matches!(
        pool.start_isolate_page_range(Pfn(16384), Pfn(16385)),
        Err(BuddyError::RangeNotAligned { .. })
    ));
    assert!(matches!(
        pool.start_isolate_page_range(Pfn(4096), Pfn(5120)),
        Err(BuddyError::RangeNotMovable { .. })
    ));
}

#[test]
fn offline_failure_undoes_isolation() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let p = pool.alloc(req(9, MigrateType::Movable, 0)).expect("alloc");
    let s = Pfn(p.0 & !(MAX_ORDER_NR_PAGES - 1));
    let e = Pfn(s.0 + MAX_ORDER_NR_PAGES);
    let err = pool
        .offline_pages(s, e, |_, _| Err("pinned".into()))
        .expect_err("must fail");
    assert!(matches!(err, BuddyError::MigrateFailed { .. }), "{err}");
    pool.validate().expect("valid");
    assert_eq!(
        pool.zone(NodeId(0), ZoneType::Movable)
            .expect("z")
            .pageblock_mt(s.0),
        MigrateType::Movable
    );
    pool.free(p, Order(9)).expect("free");
}

#[test]
fn reports_have_kernel_layout() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let bi = pool.buddyinfo();
    let first = bi.lines().next().expect("line");
    assert!(first.starts_with("Node 0, zone      DMA "), "{first}");
    // DMA: pfn 1..159 and 256..4096 freed in aligned chunks.
    let fields: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(fields.len(), 4 + MAX_ORDER);
    assert_eq!(first.len(), "Node 0, zone      DMA ".len() + 7 * MAX_ORDER);
    let zi = pool.zoneinfo();
    let z = pool.zone(NodeId(0), ZoneType::Dma).expect("dma");
    let expected_head = format!(
        "Node 0, zone      DMA\n  pages free     {}\n        boost    0\n        min      {}\n        low      {}\n        high     {}\n        spanned  4095\n        present  3998\n        managed  3998\n        cma      0\n        protection: (0, {}, {}, {}, {})\n      nr_free_pages {}\n  pagesets\n    cpu: 0\n",
        z.nr_free_pages(),
        z.wmark_pages(Wmark::Min),
        z.wmark_pages(Wmark::Low),
        z.wmark_pages(Wmark::High),
        z.lowmem_reserve()[1],
        z.lowmem_reserve()[2],
        z.lowmem_reserve()[3],
        z.lowmem_reserve()[4],
        z.nr_free_pages(),
    );
    assert!(zi.starts_with(&expected_head), "{zi}");
    assert!(
        zi.contains("  node_unreclaimable:  0\n  start_pfn:           1\nNode 0, zone    DMA32\n"),
        "{zi}"
    );
    assert!(
        zi.contains("Node 0, zone   Normal\n  pages free     0\n"),
        "{zi}"
    );
    assert!(zi.ends_with("Node 0, zone   Device\n  pages free     0\n        boost    0\n        min      0\n        low      0\n        high     0\n        spanned  0\n        present  0\n        managed  0\n        cma      0\n        protection: (0, 0, 0, 0, 0)\n"), "{zi}");
    assert!(
        zi.contains("              batch: 1\n  vm stats threshold: 4\n    cpu: 1\n"),
        "{zi}"
    );
    assert_eq!(super::report::calculate_normal_threshold(1 << 20, 2), 28);
    // lowmem_reserve of DMA: DMA32 12288 / 256 = 48; + Normal 0; + Movable 8192 -> 80.
    assert_eq!(z.lowmem_reserve(), [0, 48, 48, 80, 80]);
    let pt = pool.pagetypeinfo();
    assert!(pt.starts_with("Page block order: 9\nPages per block:  512\n\nFree pages count per migrate type at order       0      1"), "{pt}");
    assert!(
        pt.contains("Node    0, zone      DMA, type      Movable "),
        "{pt}"
    );
}

#[test]
fn min_free_kbytes_derived_like_linux() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    // lowmem = DMA 3998 + DMA32 12288 pages = 65144 KiB -> int_sqrt(65144*16) = 1020.
    assert_eq!(pool.min_free_kbytes(), 1020);
    let mv = pool.zone(NodeId(0), ZoneType::Movable).expect("z");
    assert_eq!(mv.wmark_pages(Wmark::Min), 32);
}

#[test]
fn bad_inputs_are_rejected() {
    let mut d = small_machine();
    d[1].present_ranges = vec![(Pfn(100), Pfn(5000))];
    assert!(matches!(
        Pool::new(&d, small_config()),
        Err(BuddyError::BadDescriptor(_))
    ));
    let cfg = PoolConfig {
        distance: Some(vec![vec![10, 5], vec![5, 10]]),
        ..small_config()
    };
    assert!(matches!(
        Pool::new(&two_nodes(), cfg),
        Err(BuddyError::BadDistance(_))
    ));
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    assert_eq!(
        pool.alloc(req(0, MigrateType::Movable, 7)),
        Err(BuddyError::UnknownNode(NodeId(7)))
    );
    assert_eq!(
        pool.free(Pfn(1 << 40), Order(0)),
        Err(BuddyError::UnknownPfn(Pfn(1 << 40)))
    );
    assert_eq!(
        pool.free(Pfn(17), Order(1)),
        Err(BuddyError::Misaligned {
            pfn: Pfn(17),
            order: 1
        })
    );
    assert_eq!(
        pool.alloc(req(0, MigrateType::Isolate, 0)),
        Err(BuddyError::InvalidMigrateType(MigrateType::Isolate))
    );
}

#[test]
fn threads_allocate_disjoint_pages() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let all: Vec<Vec<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    for i in 0..3000u32 {
                        if let Ok(p) = pool.alloc(req(i % 2, MigrateType::Movable, 0)) {
                            mine.push((p, i % 2));
                        }
                        if i % 3 == 0 {
                            if let Some((p, o)) = mine.pop() {
                                pool.free(p, Order(o)).expect("free");
                            }
                        }
                    }
                    mine.iter()
                        .flat_map(|&(p, o)| p.0..p.0 + (1 << o))
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut seen = HashSet::new();
    for p in all.iter().flatten() {
        assert!(
            seen.insert(*p),
            "page {p:#x} handed out twice across threads"
        );
    }
    pool.validate().expect("valid after threads");
}

/// The per-CPU extension lists (orders 4..=8, not in Linux): a refill takes `ext_batch`
/// blocks under one lock, a free goes back to the list (the zone's free pages do not
/// change), a list never grows beyond twice its batch, and draining returns everything.
#[test]
fn extension_lists_cache_orders_four_to_eight() {
    use super::pcp::{ext_batch, ext_pindex};
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let z = pool.zone(NodeId(0), ZoneType::Movable).expect("movable");
    let free0 = z.nr_free_pages();
    let p = pool
        .alloc(req(5, MigrateType::Movable, 0))
        .expect("order 5");
    assert_eq!(z.zone_type(), ZoneType::Movable);
    let slot = super::pcp::this_slot(pool.nr_slots);
    let batch = z.pcp[slot].0.lock().batch;
    let n = ext_batch(batch, 5);
    // The refill took n blocks out of the buddy lists; one went to the caller.
    assert_eq!(z.nr_free_pages(), free0 - (n << 5));
    assert_eq!(z.pcp_count(), (n - 1) << 5);
    pool.free(p, Order(5)).expect("free");
    assert_eq!(z.nr_free_pages(), free0 - (n << 5));
    assert_eq!(z.pcp_count(), n << 5);
    pool.validate().expect("valid with cached blocks");
    // Free many order-4 blocks: the list is flushed whenever it passes 2 * ext_batch.
    let cap = 2 * ext_batch(batch, 4);
    let blocks: Vec<Pfn> = (0..3 * cap)
        .map(|_| {
            pool.alloc(req(4, MigrateType::Movable, 0))
                .expect("order 4")
        })
        .collect();
    let l = ext_pindex(MigrateType::Movable, 4);
    for b in blocks {
        pool.free(b, Order(4)).expect("free");
        assert!(z.pcp[slot].0.lock().lists[l].len() as u64 <= cap);
    }
    pool.validate().expect("valid after flushes");
    pool.drain_all_pages();
    assert_eq!(z.pcp_count(), 0);
    assert_eq!(z.nr_free_pages(), free0);
    pool.validate().expect("valid after drain");
}

/// When an allocation finds nothing, the per-CPU lists (extension lists included) are
/// drained and the allocation retried, as `__alloc_pages_direct_reclaim` does: so blocks
/// cached on a slot never make an allocation fail.
#[test]
fn exhaustion_drains_per_cpu_lists_before_failing() {
    let pool = Pool::new(&small_machine(), small_config()).expect("pool");
    let mut live = Vec::new();
    while let Ok(p) = pool.alloc(req(6, MigrateType::Movable, 0)) {
        live.push(p);
    }
    // Free as many order-6 blocks as the slot's order-6 extension list keeps without a
    // flush: they stay cached, and the zones stay at their watermarks.
    let z = pool.zone(NodeId(0), ZoneType::Movable).expect("movable");
    let slot = super::pcp::this_slot(pool.nr_slots);
    let (batch, ext_limit) = {
        let pcp = z.pcp[slot].0.lock();
        (pcp.batch, pcp.ext_limit)
    };
    // Neither the list's cap (2 * ext_batch blocks) nor the slot's limit is passed.
    let n = (super::pcp::ext_batch(batch, 6).min(ext_limit >> 6)) as usize;
    assert!(n >= 1, "batch {batch}, ext_limit {ext_limit}");
    assert!(
        live.len() > n && (live[0].0 - 16384) < 8192,
        "first blocks from Movable"
    );
    for p in live.drain(..n) {
        pool.free(p, Order(6)).expect("free");
    }
    let cached: u64 = pool.zones().iter().map(|z| z.pcp_count()).sum();
    assert_eq!(cached, (n as u64) << 6);
    // Order 4 has nothing cached and no zone is above its watermark: only the drain makes
    // the cached pages available (four order-4 blocks per order-6 block).
    let mut again = 0;
    while pool.alloc(req(4, MigrateType::Movable, 0)).is_ok() {
        again += 1;
    }
    assert!(
        again >= 2 * n,
        "only {again} order-4 blocks after the drain"
    );
    assert!(pool.zones().iter().all(|z| z.pcp_count() == 0));
    pool.validate().expect("valid");
}

#[test]
fn threads_allocate_disjoint_blocks_of_every_cached_order() {
    let pool = Pool::new(&two_nodes(), small_config()).expect("pool");
    let all: Vec<Vec<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u32)
            .map(|t| {
                let pool = &pool;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..2000u32 {
                        let o = (i * 7 + t) % 9;
                        let mt = MigrateType::PCPTYPES[(i % 3) as usize];
                        if let Ok(p) = pool.alloc(req(o, mt, t % 2)) {
                            mine.push((p, o));
                        }
                        if i % 2 == 0 && mine.len() > 4 {
                            let (p, o) = mine.swap_remove((i as usize * 31) % mine.len());
                            pool.free(p, Order(o)).expect("free");
                        }
                    }
                    mine.iter()
                        .flat_map(|&(p, o)| p.0..p.0 + (1 << o))
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut seen = HashSet::new();
    for p in all.iter().flatten() {
        assert!(
            seen.insert(*p),
            "page {p:#x} handed out twice across threads"
        );
    }
    pool.validate().expect("valid after threads");
}

#[test]
fn validate_runs_while_threads_allocate() {
    let pool = Pool::new(&two_nodes(), small_config()).expect("pool");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let (pool, stop) = (&pool, &stop);
            s.spawn(move || {
                let mut live = Vec::new();
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let order = [0, 1, 3, 5, 9][(i % 5) as usize];
                    if let Ok(p) =
                        pool.alloc(req(order, MigrateType::PCPTYPES[(i % 3) as usize], t))
                    {
                        live.push((p, order));
                    }
                    if i % 2 == 1 {
                        if let Some((p, o)) = live.pop() {
                            pool.free(p, Order(o)).expect("free");
                        }
                    }
                    i += 1;
                }
                for (p, o) in live {
                    pool.free(p, Order(o)).expect("free");
                }
            });
        }
        for _ in 0..30 {
            pool.validate().expect("valid while other threads run");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    pool.validate().expect("valid");
}

#[test]
fn pool_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
    assert_send_sync::<SimpleBuddy>();
}

#[test]
fn metadata_budget_per_page() {
    // 4 GiB of one zone: must stay under 6 bits per page.
    let pages = 1u64 << 20;
    let pool = Pool::new(
        &[zd(0, ZoneType::Normal, 0, pages, &[(0, pages)])],
        small_config(),
    )
    .expect("pool");
    let bits_per_page = pool.metadata_bytes() as f64 * 8.0 / pages as f64;
    assert!(bits_per_page < 6.0, "{bits_per_page} bits per page");
    assert!(
        bits_per_page > 4.0,
        "{bits_per_page}: budget accounting lost a bitmap"
    );
}

proptest! {
    #![proptest_config(Config {
        cases: 32,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d65_6d74_6964_6521),
        ..Config::default()
    })]

    /// Mixed migratetypes and orders across two nodes: validate() holds after every batch,
    /// and freeing everything merges back to the initial buddyinfo.
    #[test]
    fn pool_invariants_hold(ops in proptest::collection::vec((0u32..11, 0usize..3, 0u32..2, any::<bool>(), 0usize..1000), 1..300)) {
        let pool = Pool::new(&two_nodes(), small_config()).expect("pool");
        let initial = pool.buddyinfo();
        let mut live: Vec<(Pfn, u32)> = Vec::new();
        for (i, (order, mt, node, alloc, pick)) in ops.into_iter().enumerate() {
            if alloc || live.is_empty() {
                if let Ok(p) = pool.alloc(req(order, MigrateType::PCPTYPES[mt], node)) {
                    live.push((p, order));
                }
            } else {
                let (p, o) = live.swap_remove(pick % live.len());
                pool.free(p, Order(o)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            if i % 50 == 0 {
                pool.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        pool.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (p, o) in live {
            pool.free(p, Order(o)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        pool.drain_all_pages();
        pool.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(pool.buddyinfo(), initial);
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 24,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6f66_666c_696e_6521),
        ..Config::default()
    })]

    /// Allocation and free interleaved with offlining (migrating what is in the way) and
    /// onlining 4 MiB blocks of node 1's ZONE_MOVABLE: validate() holds after every
    /// hotplug step and everything merges back at the end.
    #[test]
    fn hotplug_keeps_invariants(ops in proptest::collection::vec((0u32..4, 0u32..10, 0usize..3, 0usize..1000), 1..120)) {
        let pool = Pool::new(&two_nodes(), small_config()).expect("pool");
        let initial = pool.buddyinfo();
        let live = std::cell::RefCell::new(Vec::<(Pfn, u32)>::new());
        let mut offline = [false; 8];
        for (kind, order, mt, pick) in ops {
            match kind {
                0 | 1 => {
                    let node = (pick % 2) as u32;
                    if let Ok(p) = pool.alloc(req(order, MigrateType::PCPTYPES[mt], node)) {
                        live.borrow_mut().push((p, order));
                    }
                }
                2 => {
                    let mut l = live.borrow_mut();
                    if !l.is_empty() {
                        let i = pick % l.len();
                        let (p, o) = l.swap_remove(i);
                        pool.free(p, Order(o)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    }
                }
                _ => {
                    let k = pick % 8;
                    let s = Pfn(24576 + k as u64 * MAX_ORDER_NR_PAGES);
                    let e = Pfn(s.0 + MAX_ORDER_NR_PAGES);
                    if offline[k] {
                        pool.online_pages(s, e).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        offline[k] = false;
                    } else {
                        let r = pool.offline_pages(s, e, |pfn, o| {
                            let new = pool.alloc(req(o.0, MigrateType::Movable, 1)).map_err(|e| e.to_string())?;
                            pool.free(pfn, o).map_err(|e| e.to_string())?;
                            let mut l = live.borrow_mut();
                            if let Some(x) = l.iter_mut().find(|x| x.0 == pfn) {
                                x.0 = new;
                            }
                            Ok(())
                        });
                        match r {
                            Ok(_) => offline[k] = true,
                            Err(BuddyError::MigrateFailed { .. }) => {}
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                    pool.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for &(p, _) in live.borrow().iter() {
                        for (k2, off) in offline.iter().enumerate() {
                            let s2 = 24576 + k2 as u64 * MAX_ORDER_NR_PAGES;
                            prop_assert!(!(*off && (s2..s2 + MAX_ORDER_NR_PAGES).contains(&p.0)), "live block {} in offline memory", p);
                        }
                    }
                }
            }
        }
        for (p, o) in live.into_inner() {
            pool.free(p, Order(o)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        for (k, off) in offline.iter().enumerate() {
            if *off {
                let s = Pfn(24576 + k as u64 * MAX_ORDER_NR_PAGES);
                pool.online_pages(s, Pfn(s.0 + MAX_ORDER_NR_PAGES)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        pool.drain_all_pages();
        pool.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(pool.buddyinfo(), initial);
    }
}
