//! Reading the guest's memory state: /proc/meminfo, /proc/zoneinfo,
//! /sys/devices/system/memory and /sys/devices/system/node. The parsers take text (or a root
//! directory) so they can be tested on any file.

use crate::protocol::{parse_node_list, MemoryBlock, NodeMasks, Record, ZoneStat};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors reading the memory state.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file's content is not in the expected format.
    #[error("{path}: unexpected content: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

fn read(path: &Path) -> Result<String, ProcError> {
    fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// MemTotal, MemFree and MemAvailable (KiB) from /proc/meminfo text.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((
        field("MemTotal")?,
        field("MemFree")?,
        field("MemAvailable")?,
    ))
}

/// Every zone of every node from /proc/zoneinfo text, in file order.
pub fn parse_zoneinfo(text: &str) -> Result<Vec<ZoneStat>, String> {
    let mut zones: Vec<ZoneStat> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Node ") {
            let (node, zone) = rest
                .split_once(", zone")
                .ok_or_else(|| format!("bad zone header {line:?}"))?;
            let node = node
                .trim()
                .parse()
                .map_err(|_| format!("bad node id in {line:?}"))?;
            zones.push(ZoneStat {
                node,
                name: zone.trim().to_string(),
                spanned: 0,
                present: 0,
                managed: 0,
                free: 0,
                start_pfn: None,
            });
            continue;
        }
        let Some(zone) = zones.last_mut() else {
            continue;
        };
        let mut words = line.split_whitespace();
        let (key, value) = match (words.next(), words.next(), words.next()) {
            (Some("pages"), Some("free"), Some(v)) => ("free", v),
            (Some(k), Some(v), None) => (k.trim_end_matches(':'), v),
            _ => continue,
        };
        let slot = match key {
            "free" => &mut zone.free,
            "spanned" => &mut zone.spanned,
            "present" => &mut zone.present,
            "managed" => &mut zone.managed,
            "start_pfn" => {
                let v = value
                    .parse()
                    .map_err(|_| format!("bad start_pfn in {line:?}"))?;
                zone.start_pfn = Some(v);
                continue;
            }
            _ => continue,
        };
        *slot = value
            .parse()
            .map_err(|_| format!("bad {key} value in {line:?}"))?;
    }
    if zones.is_empty() {
        return Err("no zones".to_string());
    }
    Ok(zones)
}

/// Node masks from a node directory (normally /sys/devices/system/node). Missing mask files
/// (old kernels) read as empty.
pub fn read_node_masks(dir: &Path) -> Result<NodeMasks, ProcError> {
    let mask = |name: &str| -> Result<Vec<u32>, ProcError> {
        let path = dir.join(name);
        match fs::read_to_string(&path) {
            Ok(t) => parse_node_list(&t).ok_or_else(|| ProcError::Format {
                path,
                what: format!("node list {t:?}"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(ProcError::Read { path, source }),
        }
    };
    Ok(NodeMasks {
        online: mask("online")?,
        possible: mask("possible")?,
        has_memory: mask("has_memory")?,
        has_normal_memory: mask("has_normal_memory")?,
    })
}

/// The memory block size and every memory block (sorted by id) from a memory directory
/// (normally /sys/devices/system/memory).
pub fn read_memory_blocks(dir: &Path) -> Result<(u64, Vec<MemoryBlock>), ProcError> {
    let bs_path = dir.join("block_size_bytes");
    let bs_text = read(&bs_path)?;
    let block_size = u64::from_str_radix(bs_text.trim(), 16).map_err(|_| ProcError::Format {
        path: bs_path,
        what: format!("hex size {bs_text:?}"),
    })?;
    let entries = fs::read_dir(dir).map_err(|source| ProcError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut blocks = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ProcError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_prefix("memory")) else {
            continue;
        };
        let Ok(id) = id.parse::<u64>() else { continue };
        let bdir = entry.path();
        // A block can go away while we read it (unplug in progress): skip it then.
        let Ok(online) = fs::read_to_string(bdir.join("online")) else {
            continue;
        };
        let state = fs::read_to_string(bdir.join("state")).unwrap_or_default();
        let zones = fs::read_to_string(bdir.join("valid_zones")).unwrap_or_default();
        let mut node = None;
        if let Ok(links) = fs::read_dir(&bdir) {
            for l in links.flatten() {
                let n = l.file_name();
                if let Some(id) = n.to_str().and_then(|n| n.strip_prefix("node")) {
                    node = id.parse().ok();
                }
            }
        }
        blocks.push(MemoryBlock {
            id,
            node,
            online: online.trim() == "1",
            state: state.trim().to_string(),
            valid_zones: zones.split_whitespace().collect::<Vec<_>>().join(","),
        });
    }
    blocks.sort_by_key(|b| b.id);
    Ok((block_size, blocks))
}

/// The paths a report reads; [`Sources::system`] for the running kernel.
#[derive(Debug, Clone)]
pub struct Sources {
    /// /proc/meminfo.
    pub meminfo: PathBuf,
    /// /proc/zoneinfo.
    pub zoneinfo: PathBuf,
    /// /sys/devices/system/node.
    pub node_dir: PathBuf,
    /// /sys/devices/system/memory.
    pub memory_dir: PathBuf,
}

impl Sources {
    /// The running kernel's files.
    pub fn system() -> Self {
        Sources {
            meminfo: "/proc/meminfo".into(),
            zoneinfo: "/proc/zoneinfo".into(),
            node_dir: "/sys/devices/system/node".into(),
            memory_dir: "/sys/devices/system/memory".into(),
        }
    }
}

/// Reads MemTotal/MemFree/MemAvailable as a record.
pub fn meminfo_record(src: &Sources) -> Result<Record, ProcError> {
    let text = read(&src.meminfo)?;
    let (total_kib, free_kib, available_kib) =
        parse_meminfo(&text).ok_or_else(|| ProcError::Format {
            path: src.meminfo.clone(),
            what: "no MemTotal/MemFree/MemAvailable".into(),
        })?;
    Ok(Record::MemInfo {
        total_kib,
        free_kib,
        available_kib,
    })
}

/// The full report: meminfo, nodes, zones, block size, blocks (in that order).
pub fn report(src: &Sources) -> Result<Vec<Record>, ProcError> {
    let mut out = vec![meminfo_record(src)?];
    out.push(Record::Nodes(read_node_masks(&src.node_dir)?));
    let zi = read(&src.zoneinfo)?;
    let zones = parse_zoneinfo(&zi).map_err(|what| ProcError::Format {
        path: src.zoneinfo.clone(),
        what,
    })?;
    out.extend(zones.into_iter().map(Record::Zone));
    match read_memory_blocks(&src.memory_dir) {
        Ok((bytes, blocks)) => {
            out.push(Record::BlockSize { bytes });
            out.extend(blocks.into_iter().map(Record::Block));
        }
        // Kernels without memory hotplug have no memory directory: report no blocks.
        Err(ProcError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONEINFO: &str = "Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 36205
  pages free     3840
        boost    0
        min      49
        spanned  4095
        present  3998
        managed  3840
        cma      0
        protection: (0, 2991, 23979, 23979, 23979)
  start_pfn:           1
Node 0, zone  Movable
  pages free     0
        spanned  0
        present  0
        managed  0
        protection: (0, 0, 0, 0, 0)
Node 1, zone   Normal
  pages free     100
        spanned  262144
        present  262144
        managed  250000
  start_pfn:           1048576
";

    #[test]
    fn zoneinfo_parses_populated_and_empty_zones() {
        let z = parse_zoneinfo(ZONEINFO).expect("parses");
        assert_eq!(z.len(), 3);
        assert_eq!(
            z[0],
            ZoneStat {
                node: 0,
                name: "DMA".into(),
                spanned: 4095,
                present: 3998,
                managed: 3840,
                free: 3840,
                start_pfn: Some(1)
            }
        );
        assert_eq!(z[1].name, "Movable");
        assert_eq!(z[1].start_pfn, None);
        assert_eq!(
            (z[2].node, z[2].spanned, z[2].start_pfn),
            (1, 262144, Some(1048576))
        );
        assert!(parse_zoneinfo("nothing").is_err());
        assert!(parse_zoneinfo("Node x, zone DMA\n").is_err());
    }

    #[test]
    fn meminfo_parses() {
        let t = "MemTotal:       24591456 kB\nMemFree:         1000 kB\nMemAvailable:   2000 kB\n";
        assert_eq!(parse_meminfo(t), Some((24591456, 1000, 2000)));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn local_system_report_is_consistent() {
        // The machine running the tests is a Linux machine: its own files must parse.
        let recs = report(&Sources::system()).expect("local report");
        let Record::MemInfo { total_kib, .. } = recs[0] else {
            panic!("first is meminfo")
        };
        assert!(total_kib > 0);
        let zones: Vec<_> = recs
            .iter()
            .filter_map(|r| {
                if let Record::Zone(z) = r {
                    Some(z)
                } else {
                    None
                }
            })
            .collect();
        assert!(!zones.is_empty());
        assert!(
            zones.iter().any(|z| z.managed > 0),
            "some zone manages pages"
        );
        let Record::Nodes(m) = &recs[1] else {
            panic!("second is nodes")
        };
        assert!(m.online.contains(&0));
        for r in &recs {
            let line = r.to_string();
            assert_eq!(&Record::parse(&line).expect("roundtrip"), r);
        }
    }
}
