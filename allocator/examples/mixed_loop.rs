//! Runs only the `mixed_70pct` workload of `benches/buddy.rs` (fill 4 GiB to 70% with blocks
//! of random order 0..=8, then free a random live block and allocate one of a random order),
//! for the pool or for `buddy_system_allocator`, so that it can be counted with callgrind:
//!
//! ```text
//! cargo build --release -p memtide-allocator --example mixed_loop
//! valgrind --tool=callgrind --toggle-collect='mixed_loop::*steady*' \
//!     target/release/examples/mixed_loop pool 200000
//! ```
//!
//! Only the steady-state loop (`steady_pool` / `steady_bsa`) is collected with that toggle,
//! so the instruction count divided by the iterations is the cost of one free+alloc.
//! `none` runs the loop without an allocator (the workload's own cost), `pair0`/`pair9`
//! the pool's order-0/order-9 alloc+free pairs (`steady_pair`). Besides wall time, the
//! CPU time of the loop is printed: on a machine shared with other work it excludes the
//! time the process waited for a CPU.

use buddy_system_allocator::FrameAllocator;
use memtide_allocator::buddy::{AllocRequest, Pool, PoolConfig};
use memtide_allocator::{MigrateType, NodeId, Order, Pfn, ZoneDescriptor, ZoneType};
use std::time::Instant;

const START: u64 = 1 << 20;
const PAGES: u64 = 1 << 20;

/// xorshift64*, the bench's generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn req(order: u32) -> AllocRequest {
    AllocRequest {
        order: Order(order),
        migratetype: MigrateType::Movable,
        node: NodeId(0),
        highest_zone: None,
    }
}

#[inline(never)]
fn steady_pool(p: &Pool, rng: &mut Rng, live: &mut [(Pfn, u32)], iters: u64) {
    for _ in 0..iters {
        let i = (rng.next() % live.len() as u64) as usize;
        let (pfn, o) = live[i];
        p.free(pfn, Order(o)).expect("free");
        let no = (rng.next() % 9) as u32;
        let n = p.alloc(req(no)).expect("alloc");
        live[i] = (n, no);
    }
}

#[inline(never)]
fn steady_bsa(f: &mut FrameAllocator<33>, rng: &mut Rng, live: &mut [(usize, u32)], iters: u64) {
    for _ in 0..iters {
        let i = (rng.next() % live.len() as u64) as usize;
        let (pfn, o) = live[i];
        f.dealloc(pfn, 1 << o);
        let no = (rng.next() % 9) as u32;
        let n = f.alloc(1 << no).expect("alloc");
        live[i] = (n, no);
    }
}

/// CPU time of this (single-threaded) process so far, so that time spent descheduled on a
/// busy machine is not counted: the scheduler's run time of the thread from
/// `/proc/self/schedstat` (nanoseconds), or, where that file is missing, user + system
/// time from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_seconds() -> Option<f64> {
    if let Some(ns) = std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
    {
        return Some(ns as f64 / 1e9);
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The loop without an allocator: what the workload itself (random numbers, the live
/// table) costs per iteration.
#[inline(never)]
fn steady_none(rng: &mut Rng, live: &mut [(usize, u32)], iters: u64) {
    for _ in 0..iters {
        let i = (rng.next() % live.len() as u64) as usize;
        let (pfn, o) = live[i];
        std::hint::black_box((pfn, o));
        let no = (rng.next() % 9) as u32;
        live[i] = (std::hint::black_box(pfn), no);
    }
}

/// `iters` alloc+free pairs of one order on the pool (the `order0_pair`/`order9_pair`
/// workloads).
#[inline(never)]
fn steady_pair(p: &Pool, order: u32, iters: u64) {
    for _ in 0..iters {
        let pfn = p.alloc(std::hint::black_box(req(order))).expect("alloc");
        p.free(std::hint::black_box(pfn), Order(order))
            .expect("free");
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "pool".into());
    let iters: u64 = match args.next().map(|s| s.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("usage: mixed_loop pool|bsa|none|pair0|pair9 [ITERATIONS]: bad iteration count: {e}");
            std::process::exit(2);
        }
    };
    let target = PAGES * 7 / 10;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t = match which.as_str() {
        "pool" => {
            let d = ZoneDescriptor {
                node: NodeId(0),
                zone: ZoneType::Normal,
                zone_start_pfn: Pfn(START),
                spanned_pages: PAGES,
                present_ranges: vec![(Pfn(START), Pfn(START + PAGES))],
            };
            let cfg = PoolConfig {
                nr_cpus: Some(2),
                ..PoolConfig::default()
            };
            let p = Pool::new(&[d], cfg).expect("pool");
            let mut live = Vec::new();
            let mut used = 0;
            while used < target {
                let o = (rng.next() % 9) as u32;
                live.push((p.alloc(req(o)).expect("prefill"), o));
                used += 1 << o;
            }
            let c = cpu_seconds();
            let t = Instant::now();
            steady_pool(&p, &mut rng, &mut live, iters);
            let t = (t.elapsed(), c.zip(cpu_seconds()).map(|(a, b)| b - a));
            p.validate().expect("valid after the loop");
            t
        }
        "bsa" => {
            let mut f = FrameAllocator::<33>::new();
            f.add_frame(START as usize, (START + PAGES) as usize);
            let mut live = Vec::new();
            let mut used = 0;
            while used < target {
                let o = (rng.next() % 9) as u32;
                live.push((f.alloc(1 << o).expect("prefill"), o));
                used += 1 << o;
            }
            let c = cpu_seconds();
            let t = Instant::now();
            steady_bsa(&mut f, &mut rng, &mut live, iters);
            (t.elapsed(), c.zip(cpu_seconds()).map(|(a, b)| b - a))
        }
        "pair0" | "pair9" => {
            let d = ZoneDescriptor {
                node: NodeId(0),
                zone: ZoneType::Normal,
                zone_start_pfn: Pfn(START),
                spanned_pages: PAGES,
                present_ranges: vec![(Pfn(START), Pfn(START + PAGES))],
            };
            let cfg = PoolConfig {
                nr_cpus: Some(2),
                ..PoolConfig::default()
            };
            let p = Pool::new(&[d], cfg).expect("pool");
            let order = if which == "pair0" { 0 } else { 9 };
            steady_pair(&p, order, 1000);
            let c = cpu_seconds();
            let t = Instant::now();
            steady_pair(&p, order, iters);
            (t.elapsed(), c.zip(cpu_seconds()).map(|(a, b)| b - a))
        }
        "none" => {
            let mut live = Vec::new();
            let mut used = 0;
            while used < target {
                let o = (rng.next() % 9) as u32;
                live.push(((START + used) as usize, o));
                used += 1 << o;
            }
            let c = cpu_seconds();
            let t = Instant::now();
            steady_none(&mut rng, &mut live, iters);
            (t.elapsed(), c.zip(cpu_seconds()).map(|(a, b)| b - a))
        }
        other => {
            eprintln!("usage: mixed_loop pool|bsa|none|pair0|pair9 [ITERATIONS]: unknown allocator {other:?}");
            std::process::exit(2);
        }
    };
    let (wall, cpu) = t;
    let n = iters.max(1) as f64;
    println!(
        "{which}: {iters} free+alloc in {:.3} s, {:.1} ns each (CPU time: {})",
        wall.as_secs_f64(),
        wall.as_nanos() as f64 / n,
        cpu.map_or("unknown".into(), |c| format!("{:.1} ns each", c * 1e9 / n))
    );
}
