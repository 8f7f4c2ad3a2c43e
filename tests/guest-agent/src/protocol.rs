//! The agent's line protocol on the serial console, shared by the agent (formatting) and the
//! test harness (parsing).
//!
//! Every line the agent prints starts with [`PREFIX`] followed by a record kind and
//! whitespace-separated `key=value` fields (values never contain whitespace), except `out`
//! lines, which carry raw command output, and the `msg=` field of `done` lines, which runs to the
//! end of the line:
//!
//! ```text
//! AGENT ready version=1
//! AGENT meminfo total_kib=503812 free_kib=462000 available_kib=455000
//! AGENT nodes online=0-1 possible=0-1 has_memory=0-1 has_normal_memory=0-1
//! AGENT zone node=0 name=Normal spanned=131072 present=131072 managed=120000 free=100000 start_pfn=4096
//! AGENT blocksize bytes=134217728
//! AGENT block id=8 node=0 online=1 state=online valid_zones=Movable
//! AGENT filled mib=64 seed=3 total_mib=64
//! AGENT verified mib=64 bad_words=0 first_bad=none
//! AGENT freed mib=64
//! AGENT out some text
//! AGENT done cmd=report status=ok
//! AGENT done cmd=fill status=err msg=cannot map 99999 MiB: Cannot allocate memory
//! ```
//!
//! A command's reply is every record up to and including its `done` line.

use std::collections::BTreeMap;
use std::fmt;

/// The prefix of every agent line.
pub const PREFIX: &str = "AGENT ";

/// The protocol version the agent announces in its `ready` line.
pub const VERSION: u32 = 1;

/// Errors parsing an agent line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The line does not start with [`PREFIX`].
    #[error("not an agent line: {0:?}")]
    NotAgentLine(String),
    /// The record kind is unknown.
    #[error("unknown agent record kind {kind:?} in line {line:?}")]
    UnknownKind {
        /// The kind found.
        kind: String,
        /// The whole line.
        line: String,
    },
    /// A field is missing.
    #[error("agent line {line:?} lacks field {field:?}")]
    MissingField {
        /// The missing key.
        field: &'static str,
        /// The whole line.
        line: String,
    },
    /// A field's value is not what the kind needs.
    #[error("agent line {line:?}: bad value {value:?} for field {field:?}")]
    BadValue {
        /// The key.
        field: &'static str,
        /// The value found.
        value: String,
        /// The whole line.
        line: String,
    },
    /// A token is not `key=value`.
    #[error("agent line {line:?}: token {token:?} is not key=value")]
    BadToken {
        /// The token.
        token: String,
        /// The whole line.
        line: String,
    },
}

/// One zone of one node, from /proc/zoneinfo (page counts, 4 KiB pages on x86_64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneStat {
    /// NUMA node id.
    pub node: u32,
    /// Zone name as the kernel prints it (`DMA`, `DMA32`, `Normal`, `Movable`, `Device`).
    pub name: String,
    /// `spanned` pages.
    pub spanned: u64,
    /// `present` pages.
    pub present: u64,
    /// `managed` pages.
    pub managed: u64,
    /// `pages free`.
    pub free: u64,
    /// `start_pfn`, absent for unpopulated zones.
    pub start_pfn: Option<u64>,
}

/// One memory block from /sys/devices/system/memory/memoryN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBlock {
    /// N of memoryN (block index; physical start = id * block size).
    pub id: u64,
    /// The node the block belongs to (its `nodeX` link), if any.
    pub node: Option<u32>,
    /// The `online` attribute.
    pub online: bool,
    /// The `state` attribute (`online`, `offline`, `going-offline`).
    pub state: String,
    /// The `valid_zones` attribute, words joined by `,` (for an online block, its zone; the
    /// kernel says `none` for a boot block spanning several zones). Empty (`-` on the wire)
    /// when the file is missing.
    pub valid_zones: String,
}

/// The NUMA node masks from /sys/devices/system/node, as kernel range lists (`0-1,3`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeMasks {
    /// `online`.
    pub online: Vec<u32>,
    /// `possible`.
    pub possible: Vec<u32>,
    /// `has_memory`.
    pub has_memory: Vec<u32>,
    /// `has_normal_memory`.
    pub has_normal_memory: Vec<u32>,
}

/// One parsed agent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The agent is up and reads commands.
    Ready {
        /// Protocol version.
        version: u32,
    },
    /// Figures from /proc/meminfo, in KiB.
    MemInfo {
        /// `MemTotal`.
        total_kib: u64,
        /// `MemFree`.
        free_kib: u64,
        /// `MemAvailable`.
        available_kib: u64,
    },
    /// The node masks.
    Nodes(NodeMasks),
    /// One zone.
    Zone(ZoneStat),
    /// The memory block size in bytes.
    BlockSize {
        /// `block_size_bytes`.
        bytes: u64,
    },
    /// One memory block.
    Block(MemoryBlock),
    /// A fill finished.
    Filled {
        /// MiB written by this command.
        mib: u64,
        /// The pattern seed of this region.
        seed: u64,
        /// MiB the agent now holds in all.
        total_mib: u64,
    },
    /// A verify finished.
    Verified {
        /// MiB checked.
        mib: u64,
        /// 8-byte words that did not hold their pattern.
        bad_words: u64,
        /// Byte offset (over all regions in fill order) of the first bad word.
        first_bad: Option<u64>,
    },
    /// Memory released.
    Freed {
        /// MiB released.
        mib: u64,
    },
    /// A line of command output (`sh`).
    Out(String),
    /// The end of a command's reply.
    Done {
        /// The command word.
        cmd: String,
        /// Whether the command succeeded.
        ok: bool,
        /// The error message when it failed.
        msg: String,
    },
}

/// Formats a node list in the kernel's range-list syntax (`0-1,3`); empty gives `none`.
pub fn format_node_list(nodes: &[u32]) -> String {
    if nodes.is_empty() {
        return "none".to_string();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < nodes.len() {
        let start = nodes[i];
        let mut end = start;
        while i + 1 < nodes.len() && nodes[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// Parses the kernel's range-list syntax (`0-1,3`; empty or `none` gives no nodes).
pub fn parse_node_list(s: &str) -> Option<Vec<u32>> {
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.parse().ok()?;
                let b: u32 = b.parse().ok()?;
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        match self {
            Record::Ready { version } => write!(f, "ready version={version}"),
            Record::MemInfo {
                total_kib,
                free_kib,
                available_kib,
            } => write!(
                f,
                "meminfo total_kib={total_kib} free_kib={free_kib} available_kib={available_kib}"
            ),
            Record::Nodes(m) => write!(
                f,
                "nodes online={} possible={} has_memory={} has_normal_memory={}",
                format_node_list(&m.online),
                format_node_list(&m.possible),
                format_node_list(&m.has_memory),
                format_node_list(&m.has_normal_memory)
            ),
            Record::Zone(z) => {
                write!(
                    f,
                    "zone node={} name={} spanned={} present={} managed={} free={}",
                    z.node, z.name, z.spanned, z.present, z.managed, z.free
                )?;
                match z.start_pfn {
                    Some(p) => write!(f, " start_pfn={p}"),
                    None => write!(f, " start_pfn=none"),
                }
            }
            Record::BlockSize { bytes } => write!(f, "blocksize bytes={bytes}"),
            Record::Block(b) => write!(
                f,
                "block id={} node={} online={} state={} valid_zones={}",
                b.id,
                b.node.map_or("none".to_string(), |n| n.to_string()),
                u8::from(b.online),
                b.state,
                if b.valid_zones.is_empty() {
                    "-"
                } else {
                    &b.valid_zones
                }
            ),
            Record::Filled {
                mib,
                seed,
                total_mib,
            } => {
                write!(f, "filled mib={mib} seed={seed} total_mib={total_mib}")
            }
            Record::Verified {
                mib,
                bad_words,
                first_bad,
            } => write!(
                f,
                "verified mib={mib} bad_words={bad_words} first_bad={}",
                first_bad.map_or("none".to_string(), |o| o.to_string())
            ),
            Record::Freed { mib } => write!(f, "freed mib={mib}"),
            Record::Out(text) => write!(f, "out {text}"),
            Record::Done { cmd, ok, msg } => {
                if *ok {
                    write!(f, "done cmd={cmd} status=ok")
                } else {
                    write!(f, "done cmd={cmd} status=err msg={msg}")
                }
            }
        }
    }
}

/// `key=value` fields of one line.
struct Fields<'a> {
    line: &'a str,
    map: BTreeMap<&'a str, &'a str>,
}

impl<'a> Fields<'a> {
    fn parse(line: &'a str, rest: &'a str) -> Result<Self, ParseError> {
        let mut map = BTreeMap::new();
        for token in rest.split_whitespace() {
            let (k, v) = token.split_once('=').ok_or_else(|| ParseError::BadToken {
                token: token.to_string(),
                line: line.to_string(),
            })?;
            map.insert(k, v);
        }
        Ok(Fields { line, map })
    }

    fn str(&self, field: &'static str) -> Result<&'a str, ParseError> {
        self.map
            .get(field)
            .copied()
            .ok_or_else(|| ParseError::MissingField {
                field,
                line: self.line.to_string(),
            })
    }

    fn bad(&self, field: &'static str, value: &str) -> ParseError {
        ParseError::BadValue {
            field,
            value: value.to_string(),
            line: self.line.to_string(),
        }
    }

    fn num<T: std::str::FromStr>(&self, field: &'static str) -> Result<T, ParseError> {
        let v = self.str(field)?;
        v.parse().map_err(|_| self.bad(field, v))
    }

    fn opt_num<T: std::str::FromStr>(&self, field: &'static str) -> Result<Option<T>, ParseError> {
        let v = self.str(field)?;
        if v == "none" {
            return Ok(None);
        }
        v.parse().map(Some).map_err(|_| self.bad(field, v))
    }

    fn nodes(&self, field: &'static str) -> Result<Vec<u32>, ParseError> {
        let v = self.str(field)?;
        parse_node_list(v).ok_or_else(|| self.bad(field, v))
    }
}

impl Record {
    /// Parses one console line. Leading garbage before [`PREFIX`] (e.g. a `\r` or a kernel
    /// message that was cut in) is not accepted: the line must start with the prefix.
    pub fn parse(line: &str) -> Result<Record, ParseError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let body = line
            .strip_prefix(PREFIX)
            .ok_or_else(|| ParseError::NotAgentLine(line.to_string()))?;
        let (kind, rest) = body.split_once(' ').unwrap_or((body, ""));
        if kind == "out" {
            return Ok(Record::Out(rest.to_string()));
        }
        if kind == "done" {
            // msg= runs to the end of the line, so split it off before tokenizing.
            let (head, msg) = match rest.split_once(" msg=") {
                Some((h, m)) => (h, m.to_string()),
                None => (rest, String::new()),
            };
            let f = Fields::parse(line, head)?;
            let status = f.str("status")?;
            let ok = match status {
                "ok" => true,
                "err" => false,
                other => return Err(f.bad("status", other)),
            };
            return Ok(Record::Done {
                cmd: f.str("cmd")?.to_string(),
                ok,
                msg,
            });
        }
        let f = Fields::parse(line, rest)?;
        Ok(match kind {
            "ready" => Record::Ready {
                version: f.num("version")?,
            },
            "meminfo" => Record::MemInfo {
                total_kib: f.num("total_kib")?,
                free_kib: f.num("free_kib")?,
                available_kib: f.num("available_kib")?,
            },
            "nodes" => Record::Nodes(NodeMasks {
                online: f.nodes("online")?,
                possible: f.nodes("possible")?,
                has_memory: f.nodes("has_memory")?,
                has_normal_memory: f.nodes("has_normal_memory")?,
            }),
            "zone" => Record::Zone(ZoneStat {
                node: f.num("node")?,
                name: f.str("name")?.to_string(),
                spanned: f.num("spanned")?,
                present: f.num("present")?,
                managed: f.num("managed")?,
                free: f.num("free")?,
                start_pfn: f.opt_num("start_pfn")?,
            }),
            "blocksize" => Record::BlockSize {
                bytes: f.num("bytes")?,
            },
            "block" => {
                let online: u8 = f.num("online")?;
                let zones = f.str("valid_zones")?;
                Record::Block(MemoryBlock {
                    id: f.num("id")?,
                    node: f.opt_num("node")?,
                    online: online != 0,
                    state: f.str("state")?.to_string(),
                    valid_zones: if zones == "-" {
                        String::new()
                    } else {
                        zones.to_string()
                    },
                })
            }
            "filled" => Record::Filled {
                mib: f.num("mib")?,
                seed: f.num("seed")?,
                total_mib: f.num("total_mib")?,
            },
            "verified" => Record::Verified {
                mib: f.num("mib")?,
                bad_words: f.num("bad_words")?,
                first_bad: f.opt_num("first_bad")?,
            },
            "freed" => Record::Freed { mib: f.num("mib")? },
            other => {
                return Err(ParseError::UnknownKind {
                    kind: other.to_string(),
                    line: line.to_string(),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(r: Record) {
        let line = r.to_string();
        assert!(line.starts_with(PREFIX), "{line}");
        assert_eq!(Record::parse(&line), Ok(r), "line {line}");
    }

    #[test]
    fn every_record_roundtrips() {
        roundtrip(Record::Ready { version: VERSION });
        roundtrip(Record::MemInfo {
            total_kib: 1,
            free_kib: 2,
            available_kib: 3,
        });
        roundtrip(Record::Nodes(NodeMasks {
            online: vec![0, 1, 3],
            possible: vec![0, 1, 2, 3],
            has_memory: vec![],
            has_normal_memory: vec![0],
        }));
        roundtrip(Record::Zone(ZoneStat {
            node: 1,
            name: "Movable".into(),
            spanned: 10,
            present: 9,
            managed: 8,
            free: 7,
            start_pfn: Some(4096),
        }));
        roundtrip(Record::Zone(ZoneStat {
            node: 0,
            name: "Device".into(),
            spanned: 0,
            present: 0,
            managed: 0,
            free: 0,
            start_pfn: None,
        }));
        roundtrip(Record::BlockSize { bytes: 134217728 });
        roundtrip(Record::Block(MemoryBlock {
            id: 40,
            node: Some(1),
            online: true,
            state: "online".into(),
            valid_zones: "Movable".into(),
        }));
        roundtrip(Record::Block(MemoryBlock {
            id: 41,
            node: None,
            online: false,
            state: "offline".into(),
            valid_zones: String::new(),
        }));
        roundtrip(Record::Filled {
            mib: 64,
            seed: 3,
            total_mib: 128,
        });
        roundtrip(Record::Verified {
            mib: 64,
            bad_words: 0,
            first_bad: None,
        });
        roundtrip(Record::Verified {
            mib: 64,
            bad_words: 5,
            first_bad: Some(4096),
        });
        roundtrip(Record::Freed { mib: 64 });
        roundtrip(Record::Out("hello  world = x".into()));
        roundtrip(Record::Done {
            cmd: "report".into(),
            ok: true,
            msg: String::new(),
        });
        roundtrip(Record::Done {
            cmd: "fill".into(),
            ok: false,
            msg: "cannot map: status=ok msg=x".into(),
        });
    }

    #[test]
    fn node_lists() {
        assert_eq!(format_node_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(format_node_list(&[]), "none");
        assert_eq!(parse_node_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_node_list("\n"), Some(vec![]));
        assert_eq!(parse_node_list("2-1"), None);
        assert_eq!(parse_node_list("x"), None);
    }

    #[test]
    fn bad_lines_are_rejected_with_the_offending_part() {
        assert!(matches!(
            Record::parse("kernel: hello"),
            Err(ParseError::NotAgentLine(_))
        ));
        assert!(matches!(
            Record::parse("AGENT bogus a=1"),
            Err(ParseError::UnknownKind { .. })
        ));
        assert!(matches!(
            Record::parse("AGENT meminfo total_kib=1 free_kib=2"),
            Err(ParseError::MissingField {
                field: "available_kib",
                ..
            })
        ));
        assert!(matches!(
            Record::parse("AGENT freed mib=lots"),
            Err(ParseError::BadValue { field: "mib", .. })
        ));
        assert!(matches!(
            Record::parse("AGENT freed 12"),
            Err(ParseError::BadToken { .. })
        ));
        assert!(matches!(
            Record::parse("AGENT done cmd=x status=maybe"),
            Err(ParseError::BadValue {
                field: "status",
                ..
            })
        ));
    }
}
