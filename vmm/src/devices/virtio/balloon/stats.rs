//! Guest memory statistics from the stats queue (virtio 1.2 section 5.5.6, Memory Statistics).
//!
//! The protocol runs backwards: the driver primes the queue with one buffer of
//! `struct virtio_balloon_stat { le16 tag; le64 val; }` entries (packed, 10 bytes each); the
//! device keeps that buffer and, when it wants fresh values, returns it (used, length 0); the
//! driver then refills it with current values and offers it again.

use std::time::SystemTime;

/// `VIRTIO_BALLOON_S_SWAP_IN`: bytes swapped in.
pub const VIRTIO_BALLOON_S_SWAP_IN: u16 = 0;
/// `VIRTIO_BALLOON_S_SWAP_OUT`: bytes swapped out.
pub const VIRTIO_BALLOON_S_SWAP_OUT: u16 = 1;
/// `VIRTIO_BALLOON_S_MAJFLT`: major page faults.
pub const VIRTIO_BALLOON_S_MAJFLT: u16 = 2;
/// `VIRTIO_BALLOON_S_MINFLT`: minor page faults.
pub const VIRTIO_BALLOON_S_MINFLT: u16 = 3;
/// `VIRTIO_BALLOON_S_MEMFREE`: free memory in bytes.
pub const VIRTIO_BALLOON_S_MEMFREE: u16 = 4;
/// `VIRTIO_BALLOON_S_MEMTOT`: total memory in bytes.
pub const VIRTIO_BALLOON_S_MEMTOT: u16 = 5;
/// `VIRTIO_BALLOON_S_AVAIL`: available memory in bytes (MemAvailable).
pub const VIRTIO_BALLOON_S_AVAIL: u16 = 6;
/// `VIRTIO_BALLOON_S_CACHES`: disk caches in bytes.
pub const VIRTIO_BALLOON_S_CACHES: u16 = 7;
/// `VIRTIO_BALLOON_S_HTLB_PGALLOC`: successful hugetlb page allocations.
pub const VIRTIO_BALLOON_S_HTLB_PGALLOC: u16 = 8;
/// `VIRTIO_BALLOON_S_HTLB_PGFAIL`: failed hugetlb page allocations.
pub const VIRTIO_BALLOON_S_HTLB_PGFAIL: u16 = 9;
/// `VIRTIO_BALLOON_S_OOM_KILL` (Linux 6.12+, not in virtio 1.2): OOM killer invocations.
pub const VIRTIO_BALLOON_S_OOM_KILL: u16 = 10;
/// `VIRTIO_BALLOON_S_ALLOC_STALL` (Linux 6.12+): allocations that entered the slow path.
pub const VIRTIO_BALLOON_S_ALLOC_STALL: u16 = 11;
/// `VIRTIO_BALLOON_S_ASYNC_SCAN` (Linux 6.12+): memory scanned by kswapd.
pub const VIRTIO_BALLOON_S_ASYNC_SCAN: u16 = 12;
/// `VIRTIO_BALLOON_S_DIRECT_SCAN` (Linux 6.12+): memory scanned by direct reclaim.
pub const VIRTIO_BALLOON_S_DIRECT_SCAN: u16 = 13;
/// `VIRTIO_BALLOON_S_ASYNC_RECLAIM` (Linux 6.12+): memory reclaimed by kswapd.
pub const VIRTIO_BALLOON_S_ASYNC_RECLAIM: u16 = 14;
/// `VIRTIO_BALLOON_S_DIRECT_RECLAIM` (Linux 6.12+): memory reclaimed directly.
pub const VIRTIO_BALLOON_S_DIRECT_RECLAIM: u16 = 15;
/// `VIRTIO_BALLOON_S_NR`: the number of tags memtide knows.
pub const VIRTIO_BALLOON_S_NR: usize = 16;

/// The name of each tag (index = tag), as Linux's `VIRTIO_BALLOON_S_NAMES`.
pub const STAT_NAMES: [&str; VIRTIO_BALLOON_S_NR] = [
    "swap-in",
    "swap-out",
    "major-faults",
    "minor-faults",
    "free-memory",
    "total-memory",
    "available-memory",
    "disk-caches",
    "hugetlb-allocations",
    "hugetlb-failures",
    "oom-kills",
    "alloc-stalls",
    "async-scans",
    "direct-scans",
    "async-reclaims",
    "direct-reclaims",
];

/// Size of one `struct virtio_balloon_stat`.
pub const STAT_ENTRY_SIZE: usize = 10;
/// The most of a stats buffer the device reads (Linux sends at most 16 entries, 160 bytes):
/// bounds the copy from a hostile buffer.
pub const MAX_STATS_BYTES: usize = 4096;

/// The guest's latest statistics: each value the driver sent, by tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonStats {
    /// When the device received these values.
    pub updated_at: SystemTime,
    values: [Option<u64>; VIRTIO_BALLOON_S_NR],
    /// Entries with a tag memtide does not know (ignored, as the spec requires).
    pub unknown_tags: u32,
}

impl BalloonStats {
    /// Parses a stats buffer received at `now`. A trailing partial entry is ignored; a tag
    /// sent twice keeps its last value.
    pub fn parse(bytes: &[u8], now: SystemTime) -> Self {
        let mut stats = BalloonStats {
            updated_at: now,
            values: [None; VIRTIO_BALLOON_S_NR],
            unknown_tags: 0,
        };
        for entry in bytes.chunks_exact(STAT_ENTRY_SIZE) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut val = [0u8; 8];
            val.copy_from_slice(&entry[2..10]);
            match stats.values.get_mut(usize::from(tag)) {
                Some(slot) => *slot = Some(u64::from_le_bytes(val)),
                None => stats.unknown_tags += 1,
            }
        }
        stats
    }

    /// The value of `tag`, if the guest sent it.
    pub fn get(&self, tag: u16) -> Option<u64> {
        self.values.get(usize::from(tag)).copied().flatten()
    }

    /// Every value the guest sent, as `(name, value)` in tag order (e.g. for /metrics).
    pub fn named_values(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        STAT_NAMES
            .iter()
            .zip(self.values.iter())
            .filter_map(|(name, v)| v.map(|v| (*name, v)))
    }

    /// Bytes swapped in.
    pub fn swap_in(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_SWAP_IN)
    }
    /// Bytes swapped out.
    pub fn swap_out(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_SWAP_OUT)
    }
    /// Major faults.
    pub fn major_faults(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_MAJFLT)
    }
    /// Minor faults.
    pub fn minor_faults(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_MINFLT)
    }
    /// Free memory in bytes.
    pub fn free_memory(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_MEMFREE)
    }
    /// Total memory in bytes (the guest's MemTotal).
    pub fn total_memory(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_MEMTOT)
    }
    /// Available memory in bytes (the guest's MemAvailable).
    pub fn available_memory(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_AVAIL)
    }
    /// Disk caches in bytes.
    pub fn disk_caches(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_CACHES)
    }
    /// Successful hugetlb allocations.
    pub fn hugetlb_allocations(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_HTLB_PGALLOC)
    }
    /// Failed hugetlb allocations.
    pub fn hugetlb_failures(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_HTLB_PGFAIL)
    }
    /// OOM kills (guests with Linux 6.12 or later).
    pub fn oom_kills(&self) -> Option<u64> {
        self.get(VIRTIO_BALLOON_S_OOM_KILL)
    }
}

/// Encodes `(tag, value)` entries as a driver does (for tests and tools).
pub fn encode_stats(entries: &[(u16, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * STAT_ENTRY_SIZE);
    for (tag, val) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&val.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_known_unknown_partial_and_repeated() {
        let mut bytes = encode_stats(&[
            (VIRTIO_BALLOON_S_MEMFREE, 100 << 20),
            (VIRTIO_BALLOON_S_MEMTOT, 1 << 30),
            (99, 5),
            (VIRTIO_BALLOON_S_MEMFREE, 90 << 20),
            (VIRTIO_BALLOON_S_OOM_KILL, 2),
        ]);
        bytes.extend_from_slice(&[4, 0, 1]); // partial entry
        let now = SystemTime::UNIX_EPOCH;
        let s = BalloonStats::parse(&bytes, now);
        assert_eq!(s.free_memory(), Some(90 << 20));
        assert_eq!(s.total_memory(), Some(1 << 30));
        assert_eq!(s.oom_kills(), Some(2));
        assert_eq!(s.swap_in(), None);
        assert_eq!(s.unknown_tags, 1);
        assert_eq!(s.updated_at, now);
        let named: Vec<_> = s.named_values().collect();
        assert_eq!(
            named,
            vec![
                ("free-memory", 90 << 20),
                ("total-memory", 1 << 30),
                ("oom-kills", 2)
            ]
        );
    }

    #[test]
    fn every_accessor_reads_its_tag() {
        let entries: Vec<(u16, u64)> = (0..VIRTIO_BALLOON_S_NR as u16)
            .map(|t| (t, 1000 + u64::from(t)))
            .collect();
        let s = BalloonStats::parse(&encode_stats(&entries), SystemTime::now());
        let got = [
            s.swap_in(),
            s.swap_out(),
            s.major_faults(),
            s.minor_faults(),
            s.free_memory(),
            s.total_memory(),
            s.available_memory(),
            s.disk_caches(),
            s.hugetlb_allocations(),
            s.hugetlb_failures(),
            s.oom_kills(),
        ];
        for (tag, v) in got.iter().enumerate() {
            assert_eq!(*v, Some(1000 + tag as u64), "tag {tag}");
        }
        assert_eq!(s.named_values().count(), VIRTIO_BALLOON_S_NR);
    }
}
