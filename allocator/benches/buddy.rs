//! The pool's buddy allocator against `buddy_system_allocator` 0.13 on the same workloads:
//! order-0 alloc+free pairs, order-9 pairs, a random mixed-order workload at 70% fill, and
//! order-0 pairs from two threads at once. Results are recorded in `allocator/BENCHMARKS.md`.

#![allow(missing_docs)]

use buddy_system_allocator::{FrameAllocator, LockedFrameAllocator};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use memtide_allocator::buddy::{AllocRequest, Pool, PoolConfig};
use memtide_allocator::{MigrateType, NodeId, Order, Pfn, ZoneDescriptor, ZoneType};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// 4 GiB of ZONE_NORMAL starting at 4 GiB.
const START: u64 = 1 << 20;
const PAGES: u64 = 1 << 20;

fn pool() -> Pool {
    let d = ZoneDescriptor {
        node: NodeId(0),
        zone: ZoneType::Normal,
        zone_start_pfn: Pfn(START),
        spanned_pages: PAGES,
        present_ranges: vec![(Pfn(START), Pfn(START + PAGES))],
    };
    Pool::new(
        &[d],
        PoolConfig {
            nr_cpus: Some(2),
            ..PoolConfig::default()
        },
    )
    .expect("pool")
}

fn bsa() -> FrameAllocator<33> {
    let mut f = FrameAllocator::<33>::new();
    f.add_frame(START as usize, (START + PAGES) as usize);
    f
}

fn req(order: u32) -> AllocRequest {
    AllocRequest {
        order: Order(order),
        migratetype: MigrateType::Movable,
        node: NodeId(0),
        highest_zone: None,
    }
}

/// xorshift64*: deterministic workload.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn pairs(c: &mut Criterion) {
    for order in [0u32, 9] {
        let mut g = c.benchmark_group(format!("order{order}_pair"));
        let p = pool();
        g.bench_function("memtide_pool", |b| {
            b.iter(|| {
                let pfn = p.alloc(black_box(req(order))).expect("alloc");
                p.free(black_box(pfn), Order(order)).expect("free");
            })
        });
        let mut f = bsa();
        g.bench_function("buddy_system_allocator", |b| {
            b.iter(|| {
                let pfn = f.alloc(black_box(1 << order)).expect("alloc");
                f.dealloc(black_box(pfn), 1 << order);
            })
        });
        g.finish();
    }
}

/// Orders 0..=8, fill to 70% of the pages, then each iteration frees a random live block
/// and allocates a block of a random order.
fn mixed(c: &mut Criterion) {
    let mut g = c.benchmark_group("mixed_70pct");
    let target = PAGES * 7 / 10;
    {
        let p = pool();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut live: Vec<(Pfn, u32)> = Vec::new();
        let mut used = 0;
        while used < target {
            let o = (rng.next() % 9) as u32;
            let pfn = p.alloc(req(o)).expect("prefill");
            live.push((pfn, o));
            used += 1 << o;
        }
        g.bench_function(BenchmarkId::new("memtide_pool", "free+alloc"), |b| {
            b.iter(|| {
                let i = (rng.next() % live.len() as u64) as usize;
                let (pfn, o) = live[i];
                p.free(pfn, Order(o)).expect("free");
                let no = (rng.next() % 9) as u32;
                let n = p.alloc(req(no)).expect("alloc");
                live[i] = (n, no);
            })
        });
    }
    {
        let mut f = bsa();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut live: Vec<(usize, u32)> = Vec::new();
        let mut used = 0;
        while used < target {
            let o = (rng.next() % 9) as u32;
            let pfn = f.alloc(1 << o).expect("prefill");
            live.push((pfn, o));
            used += 1 << o;
        }
        g.bench_function(
            BenchmarkId::new("buddy_system_allocator", "free+alloc"),
            |b| {
                b.iter(|| {
                    let i = (rng.next() % live.len() as u64) as usize;
                    let (pfn, o) = live[i];
                    f.dealloc(pfn, 1 << o);
                    let no = (rng.next() % 9) as u32;
                    let n = f.alloc(1 << no).expect("alloc");
                    live[i] = (n, no);
                })
            },
        );
    }
    {
        // The same with the crate's thread-safe wrapper (a spin mutex around it), which is
        // what the pool's thread safety should be compared with.
        let f = LockedFrameAllocator::<33>::new();
        f.lock().add_frame(START as usize, (START + PAGES) as usize);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut live: Vec<(usize, u32)> = Vec::new();
        let mut used = 0;
        while used < target {
            let o = (rng.next() % 9) as u32;
            let pfn = f.lock().alloc(1 << o).expect("prefill");
            live.push((pfn, o));
            used += 1 << o;
        }
        g.bench_function(
            BenchmarkId::new("buddy_system_allocator_locked", "free+alloc"),
            |b| {
                b.iter(|| {
                    let i = (rng.next() % live.len() as u64) as usize;
                    let (pfn, o) = live[i];
                    f.lock().dealloc(pfn, 1 << o);
                    let no = (rng.next() % 9) as u32;
                    let n = f.lock().alloc(1 << no).expect("alloc");
                    live[i] = (n, no);
                })
            },
        );
    }
    g.finish();
}

/// Two threads each doing `iters` order-0 alloc+free pairs on one shared allocator; the
/// reported time is per iteration, i.e. per pair *per thread* (two pairs complete in it).
fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("order0_pair_2threads");
    let p = pool();
    g.bench_function("memtide_pool", |b| {
        b.iter_custom(|iters| {
            run_two(iters, || {
                let pfn = p.alloc(req(0)).expect("alloc");
                p.free(black_box(pfn), Order(0)).expect("free");
            })
        })
    });
    let f = LockedFrameAllocator::<33>::new();
    f.lock().add_frame(START as usize, (START + PAGES) as usize);
    g.bench_function("buddy_system_allocator", |b| {
        b.iter_custom(|iters| {
            run_two(iters, || {
                let pfn = f.lock().alloc(1).expect("alloc");
                f.lock().dealloc(black_box(pfn), 1);
            })
        })
    });
    g.finish();
}

fn run_two(iters: u64, op: impl Fn() + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..iters {
                    op();
                }
            });
        }
    });
    start.elapsed()
}

criterion_group!(benches, pairs, mixed, two_threads);
criterion_main!(benches);
