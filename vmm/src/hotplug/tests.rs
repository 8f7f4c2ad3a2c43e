//! The pool backend against a real memfd and a real Pool (no KVM), and the wiring against
//! /dev/kvm.

use std::sync::Arc;

use memtide_allocator::{NodeId, ZoneType, PAGE_SIZE};
use vm_memory::{GuestAddress, MmapRegion};

use super::backend::{PoolBackendError, PoolMemoryBackend};
use super::*;
use crate::devices::virtio::mem::{BackendError, MemoryBackend};

const REGION: u64 = 64 << 20;
const START: u64 = 4 << 30;

struct Fixture {
    pool: PoolBacking,
    host: Arc<HostMemory>,
    region: Arc<MmapRegion<()>>,
}

/// One 512 MiB host node, half of it ZONE_MOVABLE.
fn fixture() -> Fixture {
    let pool = PoolBacking::new(&[(0, 512 << 20)], None, Some("256M")).expect("pool");
    let host = Arc::new(HostMemory::new(&pool.memfd_sizes()).expect("memfd"));
    let region = reserve(&host, 0, REGION, 0).expect("reserve");
    Fixture { pool, host, region }
}

fn backend(f: &Fixture, block: u64) -> PoolMemoryBackend {
    PoolMemoryBackend::new(
        f.pool.clone(),
        f.host.clone(),
        0,
        f.region.clone(),
        START,
        block,
    )
    .expect("backend")
}

fn free_pages(f: &Fixture) -> u64 {
    f.pool.pool().drain_all_pages();
    f.pool.pool().free_pages_total()
}

fn movable_range(f: &Fixture) -> (u64, u64) {
    let z = f
        .pool
        .pool()
        .zone(NodeId(0), ZoneType::Movable)
        .expect("movable zone");
    (z.zone_start_pfn(), z.zone_start_pfn() + z.spanned_pages())
}

/// Reads the byte at region offset `off` through the VMM mapping.
fn read(f: &Fixture, off: u64) -> u8 {
    // SAFETY: the caller only reads plugged (mapped) offsets inside the region.
    unsafe { f.region.as_ptr().add(off as usize).read_volatile() }
}

fn write(f: &Fixture, off: u64, v: u8) {
    // SAFETY: the caller only writes plugged (mapped) offsets inside the region.
    unsafe { f.region.as_ptr().add(off as usize).write_volatile(v) }
}

/// Whether the page at region offset `off` is accessible (mincore fails with ENOMEM on
/// unmapped ranges, but a PROT_NONE mapping is mapped: ask /proc/self/maps instead).
fn accessible(f: &Fixture, off: u64) -> bool {
    let addr = f.region.as_ptr() as u64 + off;
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    maps.lines().any(|l| {
        let mut parts = l.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Some((a, b)) = range.split_once('-') else {
            return false;
        };
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap_or(0),
            u64::from_str_radix(b, 16).unwrap_or(0),
        );
        a <= addr && addr < b && perms.starts_with("rw")
    })
}

/// Takes every free ZONE_MOVABLE page as order-0 blocks, then gives back `pages` of them,
/// every other page of a stretch: no block of order >= 1 is free there. Returns the pages
/// kept (the caller frees them).
fn fragment(f: &Fixture, pages: u64) -> Vec<memtide_allocator::Pfn> {
    let pool = f.pool.pool();
    let mut taken = Vec::new();
    loop {
        let r = pool.alloc(memtide_allocator::buddy::AllocRequest {
            order: memtide_allocator::Order(0),
            migratetype: memtide_allocator::MigrateType::Movable,
            node: NodeId(0),
            highest_zone: Some(ZoneType::Movable),
        });
        match r {
            Ok(p) => taken.push(p),
            Err(_) => break,
        }
    }
    let (zs, ze) = movable_range(f);
    taken.sort_by_key(|p| p.0);
    let mut kept = Vec::new();
    let mut given = 0u64;
    for p in taken {
        if p.0 % 2 == 0 && given < pages && p.0 >= zs && p.0 < ze {
            pool.free(p, memtide_allocator::Order(0)).expect("free");
            given += 1;
        } else {
            kept.push(p);
        }
    }
    kept
}

/// Pages of pool memory behind the backend's plugged blocks.
fn pool_pages(b: &PoolMemoryBackend) -> u64 {
    b.pool_blocks().iter().map(|&(_, o)| 1u64 << o).sum()
}

#[test]
fn plug_maps_movable_pool_memory_and_unplug_gives_it_back() {
    let f = fixture();
    let before = free_pages(&f);
    let mut b = backend(&f, 2 << 20);
    assert!(!accessible(&f, 0));
    b.plug(GuestAddress(START + (4 << 20)), 6 << 20)
        .expect("plug 3 blocks");
    assert_eq!(b.plugged_bytes(), 6 << 20);
    assert_eq!(before - free_pages(&f), (6 << 20) / PAGE_SIZE);
    let (zs, ze) = movable_range(&f);
    for (pfn, order) in b.pool_blocks() {
        assert!(
            pfn >= zs && pfn + (1 << order) <= ze,
            "{pfn:#x} not in ZONE_MOVABLE"
        );
    }
    assert!(accessible(&f, 4 << 20) && accessible(&f, (10 << 20) - 1));
    assert!(!accessible(&f, (4 << 20) - 1) && !accessible(&f, 10 << 20));
    // Fresh blocks read as zeros; writes land in the memfd.
    assert_eq!(read(&f, 5 << 20), 0);
    write(&f, 5 << 20, 0xa5);
    assert_eq!(read(&f, 5 << 20), 0xa5);
    b.unplug(GuestAddress(START + (4 << 20)), 2 << 20)
        .expect("unplug one");
    assert!(!accessible(&f, 4 << 20) && !accessible(&f, 5 << 20));
    assert!(accessible(&f, 6 << 20));
    assert_eq!(before - free_pages(&f), (4 << 20) / PAGE_SIZE);
    // Plugging it again gives zeros, not the old pattern.
    b.plug(GuestAddress(START + (4 << 20)), 2 << 20)
        .expect("plug again");
    assert_eq!(read(&f, 5 << 20), 0);
    b.unplug(GuestAddress(START + (4 << 20)), 6 << 20)
        .expect("unplug all three");
    assert_eq!(free_pages(&f), before);
    assert_eq!(b.plugged_bytes(), 0);
    f.pool.pool().validate().expect("pool consistent");
}

#[test]
fn plug_is_all_or_nothing_when_the_pool_runs_dry() {
    let f = fixture();
    let before = free_pages(&f);
    let (zs, ze) = movable_range(&f);
    let movable = (ze - zs) * PAGE_SIZE;
    // Region bigger than ZONE_MOVABLE: asking for all of it must fail and take nothing.
    let big = reserve(&f.host, 0, 512 << 20, 0).expect("reserve");
    let mut b = PoolMemoryBackend::new(f.pool.clone(), f.host.clone(), 0, big, START, 2 << 20)
        .expect("backend");
    let err = b
        .plug(GuestAddress(START), 512 << 20)
        .expect_err("more than ZONE_MOVABLE");
    assert!(matches!(err, BackendError::OutOfMemory(_)), "{err:?}");
    assert_eq!(free_pages(&f), before, "nothing leaked");
    assert_eq!(b.plugged_bytes(), 0);
    // What the zone has does fit (less its min watermark reserve).
    let fits = (movable / 2) & !((2 << 20) - 1);
    b.plug(GuestAddress(START), fits).expect("half of the zone");
    assert_eq!(before - free_pages(&f), fits / PAGE_SIZE);
    drop(b);
    assert_eq!(free_pages(&f), before, "drop returns every block");
    f.pool.pool().validate().expect("pool consistent");
}

#[test]
fn fragmented_zone_plugs_from_smaller_blocks() {
    let f = fixture();
    let pool = f.pool.pool().clone();
    let before = free_pages(&f);
    let kept = fragment(&f, 1024);
    let mut b = backend(&f, 2 << 20);
    b.plug(GuestAddress(START), 2 << 20)
        .expect("one block from 512 single pages");
    let blocks = b.pool_blocks();
    // What stays free below the watermark may hold a few larger blocks, none of order 9.
    assert_eq!(blocks.iter().map(|&(_, o)| 1u64 << o).sum::<u64>(), 512);
    assert!(blocks.len() > 256, "{} blocks", blocks.len());
    assert!(blocks.iter().all(|&(_, o)| o < 9));
    write(&f, 0, 1);
    write(&f, (2 << 20) - 1, 2);
    assert_eq!((read(&f, 0), read(&f, (2 << 20) - 1)), (1, 2));
    b.unplug(GuestAddress(START), 2 << 20).expect("unplug");
    for p in kept {
        pool.free(p, memtide_allocator::Order(0)).expect("free");
    }
    assert_eq!(free_pages(&f), before);
    pool.validate().expect("pool consistent");
}

#[test]
fn bad_ranges_and_states_are_refused_without_change() {
    let f = fixture();
    let before = free_pages(&f);
    let mut b = backend(&f, 2 << 20);
    for (addr, size) in [
        (START - (2 << 20), 2 << 20),
        (START + (1 << 20), 2 << 20),
        (START, 3 << 20),
        (START + REGION - (2 << 20), 4 << 20),
    ] {
        assert!(
            b.plug(GuestAddress(addr), size).is_err(),
            "{addr:#x}+{size:#x}"
        );
    }
    assert!(
        b.unplug(GuestAddress(START), 2 << 20).is_err(),
        "not plugged"
    );
    b.plug(GuestAddress(START), 2 << 20).expect("plug");
    assert!(
        b.plug(GuestAddress(START), 4 << 20).is_err(),
        "partly plugged"
    );
    assert!(
        b.unplug(GuestAddress(START), 4 << 20).is_err(),
        "partly plugged"
    );
    assert_eq!(b.plugged_bytes(), 2 << 20);
    b.release_all();
    assert_eq!(free_pages(&f), before);
    assert_eq!(
        PoolMemoryBackend::new(
            f.pool.clone(),
            f.host.clone(),
            3,
            f.region.clone(),
            START,
            2 << 20
        )
        .err(),
        Some(PoolBackendError::NoPoolNode(3))
    );
    assert_eq!(
        PoolMemoryBackend::new(
            f.pool.clone(),
            f.host.clone(),
            0,
            f.region.clone(),
            START,
            3 << 20
        )
        .err(),
        Some(PoolBackendError::BlockSize(3 << 20))
    );
}

/// The wiring on a real KVM VM: memslot, device config (node id, ACPI PXM), MMIO window,
/// DSDT object, and teardown returning plugged blocks.
#[test]
fn attach_wires_one_device_per_hotplug_node() {
    use crate::config::NumaNodeConfig;
    use crate::devices::virtio::mem::VIRTIO_MEM_F_ACPI_PXM;
    let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
    let vm = kvm.create_vm().expect("vm");
    vm.create_irq_chip().expect("irqchip");
    let nodes = [
        NumaNodeConfig {
            guest_node: 0,
            vcpus: vec![0],
            memory: 64 << 20,
            host_node: 0,
            hotplug_size: 0,
        },
        NumaNodeConfig {
            guest_node: 1,
            vcpus: vec![],
            memory: 64 << 20,
            host_node: 0,
            hotplug_size: 128 << 20,
        },
    ];
    let map = GuestMemoryMap::new(&nodes);
    let f = fixture();
    let before = free_pages(&f);
    let mut alloc = f.pool.clone();
    let ram = crate::memory::GuestRam::new(&map, &f.host, &mut alloc, Some(&vm)).expect("ram");
    let h = VmHotplug::attach(
        &vm,
        &map,
        ram.memory(),
        ram.next_slot(),
        &f.pool,
        &f.host,
        DEFAULT_BLOCK_SIZE,
    )
    .expect("attach")
    .expect("one device");
    assert_eq!(h.acpi().len(), 1);
    assert!(h.acpi()[0].to_bytes().windows(8).any(|w| w == b"LNRO0005"));
    let mut word = [0u8; 4];
    assert!(h.mmio_read(VIRTIO_MMIO_START + 8, &mut word));
    assert_eq!(u32::from_le_bytes(word), 24, "virtio-mem device id");
    assert!(!h.mmio_read(VIRTIO_MMIO_START + MMIO_WINDOW_SIZE, &mut word));
    // Device features, low word: ACPI PXM offered.
    assert!(h.mmio_read(VIRTIO_MMIO_START + 0x10, &mut word));
    assert_ne!(
        u64::from(u32::from_le_bytes(word)) & VIRTIO_MEM_F_ACPI_PXM,
        0
    );
    let mem = h.hotplug_memory();
    let n = mem.nodes();
    assert_eq!(n.len(), 1);
    assert_eq!((n[0].guest_node, n[0].region_size), (1, 128 << 20));
    // Guest memory covers the region (devices may see buffers there).
    use vm_memory::GuestMemoryBackend as _;
    assert!(h
        .memory()
        .address_in_range(GuestAddress(map.hotplug[0].start)));
    // Plug behind the guest's back (as an ACKed request would), then tear down.
    {
        let d = &h.devices[0];
        let mut t = d.transport.lock().expect("lock");
        t.device_mut()
            .backend_mut()
            .plug(GuestAddress(map.hotplug[0].start), 8 << 20)
            .expect("plug");
    }
    assert!(free_pages(&f) < before - (64 << 20) / PAGE_SIZE);
    h.devices[0]
        .transport
        .lock()
        .expect("lock")
        .device_mut()
        .backend_mut()
        .release_all();
    h.release_all();
    use crate::memory::backing::BackingAllocator;
    alloc.free(ram.extents());
    assert_eq!(free_pages(&f), before);
}

#[test]
fn blocks_larger_than_the_pools_largest_order_take_several_pool_blocks() {
    let f = fixture();
    let before = free_pages(&f);
    let mut b = backend(&f, 8 << 20);
    b.plug(GuestAddress(START + (8 << 20)), 16 << 20)
        .expect("two 8 MiB blocks");
    let blocks = b.pool_blocks();
    assert_eq!(blocks.len(), 4, "four order-10 blocks: {blocks:?}");
    assert!(blocks.iter().all(|&(_, o)| o == 10));
    write(&f, 8 << 20, 7);
    write(&f, (24 << 20) - 1, 9);
    assert_eq!((read(&f, 8 << 20), read(&f, (24 << 20) - 1)), (7, 9));
    assert!(
        b.plug(GuestAddress(START + (4 << 20)), 8 << 20).is_err(),
        "not block aligned"
    );
    b.unplug(GuestAddress(START + (16 << 20)), 8 << 20)
        .expect("unplug the second");
    assert!(!accessible(&f, 16 << 20) && accessible(&f, 8 << 20));
    drop(b);
    assert_eq!(free_pages(&f), before);
}

#[test]
fn a_request_takes_one_mmap_and_one_punch_per_contiguous_stretch() {
    let f = fixture();
    let before = free_pages(&f);
    let big = reserve(&f.host, 0, 256 << 20, 0).expect("reserve");
    let mut b = PoolMemoryBackend::new(f.pool.clone(), f.host.clone(), 0, big, START, 2 << 20)
        .expect("backend");
    // A fresh zone hands out 64 adjacent order-9 blocks: the 128 MiB request (64 device
    // blocks) is one stretch of the memfd, mapped and punched with one call each (it was 64
    // of each, plus 64 madvise).
    b.plug(GuestAddress(START), 128 << 20)
        .expect("plug 128 MiB");
    assert_eq!(
        b.hooks().take_counts(),
        (1, 1),
        "(mmap, fallocate) for the plug"
    );
    assert_eq!(pool_pages(&b) * PAGE_SIZE, b.plugged_bytes());
    assert_eq!(before - free_pages(&f), (128 << 20) / PAGE_SIZE);
    // Unplugging a stretch from the middle: one mmap over it, one punch (its pool blocks are
    // adjacent too).
    b.unplug(GuestAddress(START + (32 << 20)), 32 << 20)
        .expect("unplug 32 MiB");
    assert_eq!(
        b.hooks().take_counts(),
        (1, 1),
        "(mmap, fallocate) for the unplug"
    );
    assert_eq!(pool_pages(&b) * PAGE_SIZE, 96 << 20);
    assert_eq!(before - free_pages(&f), (96 << 20) / PAGE_SIZE);
    // Teardown: one mmap per plugged stretch of the region (two), punches per memfd stretch.
    b.release_all();
    let (mmaps, punches) = b.hooks().take_counts();
    assert_eq!(mmaps, 2);
    assert!((1..=2).contains(&punches), "{punches} punches");
    assert_eq!(free_pages(&f), before);
    f.pool.pool().validate().expect("pool consistent");
}

#[test]
fn coalesced_blocks_read_zeros_are_writable_across_boundaries_and_unplug_alone() {
    const BLOCK: u64 = 2 << 20;
    let f = fixture();
    let before = free_pages(&f);
    let mut b = backend(&f, BLOCK);
    let stamp = |off: u64| (off / PAGE_SIZE % 251) as u8 + 1;
    b.plug(GuestAddress(START), 16 << 20)
        .expect("plug 8 blocks");
    for off in (0..16 << 20).step_by(PAGE_SIZE as usize) {
        assert_eq!(read(&f, off), 0, "fresh page at {off:#x}");
        write(&f, off, stamp(off));
    }
    // One copy across every block boundary lands on both sides.
    let pattern = [0x5au8; 8192];
    for i in 1..8 {
        let at = i * BLOCK - 4096;
        // SAFETY: `at..at+8192` lies in the plugged part of the region.
        unsafe {
            std::ptr::copy_nonoverlapping(
                pattern.as_ptr(),
                f.region.as_ptr().add(at as usize),
                pattern.len(),
            )
        };
        assert_eq!((read(&f, at), read(&f, at + 8191)), (0x5a, 0x5a));
        write(&f, at, stamp(at));
        write(&f, at + 4096, stamp(at + 4096));
    }
    // Unplugging block 3 alone leaves its neighbours' data and pool blocks alone.
    b.unplug(GuestAddress(START + 3 * BLOCK), BLOCK)
        .expect("unplug block 3");
    assert!(!accessible(&f, 3 * BLOCK) && !accessible(&f, 4 * BLOCK - 1));
    for off in (0..16 << 20)
        .step_by(PAGE_SIZE as usize)
        .filter(|o| o / BLOCK != 3)
    {
        assert_eq!(read(&f, off), stamp(off), "page at {off:#x}");
    }
    assert_eq!(pool_pages(&b) * PAGE_SIZE, 14 << 20);
    assert_eq!(before - free_pages(&f), (14 << 20) / PAGE_SIZE);
    // Everything back, and plugged again: the same pool pages, punched, read zeros.
    b.unplug(GuestAddress(START), 3 * BLOCK)
        .expect("unplug 0-2");
    b.unplug(GuestAddress(START + 4 * BLOCK), 4 * BLOCK)
        .expect("unplug 4-7");
    assert_eq!(free_pages(&f), before);
    b.plug(GuestAddress(START), 16 << 20)
        .expect("plug 8 blocks again");
    for off in (0..16 << 20).step_by(PAGE_SIZE as usize) {
        assert_eq!(read(&f, off), 0, "replugged page at {off:#x}");
    }
    drop(b);
    assert_eq!(free_pages(&f), before);
    f.pool.pool().validate().expect("pool consistent");
}

#[test]
fn a_failed_mmap_midway_through_a_plug_changes_nothing() {
    let f = fixture();
    let before = free_pages(&f);
    // 2048 single pages, no two adjacent: every page of the request is its own run.
    let kept = fragment(&f, 2048);
    let fragmented = free_pages(&f);
    let mut b = backend(&f, 2 << 20);
    b.plug(GuestAddress(START + (2 << 20)), 2 << 20)
        .expect("plug a neighbour");
    write(&f, 2 << 20, 0x77);
    let with_neighbour = free_pages(&f);
    b.hooks().take_counts();
    b.hooks().fail_mmap_after(300);
    let err = b
        .plug(GuestAddress(START + (4 << 20)), 4 << 20)
        .expect_err("the 301st mmap fails");
    assert!(matches!(err, BackendError::Host { .. }), "{err:?}");
    let (mmaps, _) = b.hooks().take_counts();
    assert!(mmaps >= 300, "{mmaps} mmaps: the failure came midway");
    assert_eq!(free_pages(&f), with_neighbour, "no pool page leaked");
    assert_eq!(b.plugged_bytes(), 2 << 20);
    assert_eq!(pool_pages(&b), 512);
    assert!(!accessible(&f, 4 << 20) && !accessible(&f, (8 << 20) - 1));
    assert!(!accessible(&f, 5 << 20));
    assert_eq!(read(&f, 2 << 20), 0x77, "the neighbour is untouched");
    f.pool.pool().validate().expect("pool consistent");
    // The same request succeeds now and reads zeros.
    b.plug(GuestAddress(START + (4 << 20)), 4 << 20)
        .expect("plug");
    assert_eq!((read(&f, 4 << 20), read(&f, (8 << 20) - 1)), (0, 0));
    drop(b);
    assert_eq!(free_pages(&f), fragmented);
    for p in kept {
        f.pool
            .pool()
            .free(p, memtide_allocator::Order(0))
            .expect("free");
    }
    assert_eq!(free_pages(&f), before);
    f.pool.pool().validate().expect("pool consistent");
}

#[test]
fn a_failed_unplug_keeps_every_block_mapped_with_its_data() {
    let f = fixture();
    let before = free_pages(&f);
    let mut b = backend(&f, 2 << 20);
    b.plug(GuestAddress(START), 6 << 20).expect("plug 3 blocks");
    for i in 0..6u64 {
        write(&f, i << 20, i as u8 + 1);
    }
    let plugged = free_pages(&f);
    let blocks = b.pool_blocks();
    b.hooks().fail_mmap_after(0);
    b.unplug(GuestAddress(START), 6 << 20)
        .expect_err("making the range inaccessible fails");
    assert_eq!(b.plugged_bytes(), 6 << 20);
    assert_eq!(b.pool_blocks(), blocks);
    assert_eq!(free_pages(&f), plugged);
    for i in 0..6u64 {
        assert!(accessible(&f, i << 20));
        assert_eq!(read(&f, i << 20), i as u8 + 1);
    }
    b.unplug(GuestAddress(START), 6 << 20).expect("unplug");
    assert_eq!(free_pages(&f), before);
}
