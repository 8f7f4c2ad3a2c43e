//! Builds a pool describing 1 TiB of host memory (one node: DMA, DMA32 and the rest as
//! Normal and Movable) and prints its metadata size and initialisation time.
//!
//! `cargo run --release -p memtide-allocator --example pool_scale`

use memtide_allocator::buddy::{Pool, PoolConfig};
use memtide_allocator::{NodeId, Pfn, ZoneDescriptor, ZoneType};
use std::time::Instant;

fn zd(zone: ZoneType, start: u64, end: u64) -> ZoneDescriptor {
    ZoneDescriptor {
        node: NodeId(0),
        zone,
        zone_start_pfn: Pfn(start),
        spanned_pages: end - start,
        present_ranges: vec![(Pfn(start), Pfn(end))],
    }
}

fn main() {
    let tib_pages: u64 = 1 << 28;
    let g4 = 1 << 20;
    let end = tib_pages;
    let movable_start = end / 2;
    let zones = [
        zd(ZoneType::Dma, 1, 4096),
        zd(ZoneType::Dma32, 4096, g4),
        zd(ZoneType::Normal, g4, movable_start),
        zd(ZoneType::Movable, movable_start, end),
    ];
    let pages: u64 = zones.iter().map(ZoneDescriptor::present_pages).sum();
    let t = Instant::now();
    let pool = match Pool::new(&zones, PoolConfig::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pool_scale: {e}");
            std::process::exit(1);
        }
    };
    let init = t.elapsed();
    let bytes = pool.metadata_bytes();
    println!("pages described:   {pages} ({} GiB)", pages >> 18);
    println!("init time:         {:.3} s", init.as_secs_f64());
    println!(
        "metadata:          {bytes} bytes ({:.1} MiB)",
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "bits per page:     {:.2}",
        bytes as f64 * 8.0 / pages as f64
    );
    println!("free pages:        {}", pool.free_pages_total());
    print!("{}", pool.buddyinfo());
}
