//! The REST API's request bodies (JSON, unknown fields rejected) and their conversion into
//! the control plane's verbs. Responses are the control plane's own serde types
//! ([`memtide_vmm::control::VmInfo`], [`memtide_vmm::control::PoolInfo`], ...).
//!
//! Sizes are bytes as a JSON integer, or a string with a binary suffix as on the command
//! line (`"512M"`, `"1G"`). Everything the VM config says is validated by
//! [`memtide_vmm::VmConfig::validate`] in the control plane, not here.

use std::fmt;
use std::path::PathBuf;

use memtide_vmm::config::parse_size;
use memtide_vmm::control::{BalloonTarget, CreateVm, Rebalance, ResizeVm, SetBalloon};
use memtide_vmm::{NumaNodeConfig, VmConfig};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes: a JSON integer or a size string (`"512M"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Size(pub u64);

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a size: bytes as a non-negative integer, or a string like \"512M\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
        Ok(Size(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
        u64::try_from(v)
            .map(Size)
            .map_err(|_| E::custom(format!("size {v} is negative")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
        Err(E::custom(format!(
            "size {v} is not a whole number of bytes"
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        parse_size(v).map(Size).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

/// A guest NUMA node (the fields of `memtide run --numa`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaBody {
    /// Guest node id (0..n-1).
    pub guest_numa_id: u32,
    /// Its vCPUs (may be empty: a memory-only node).
    pub cpus: Vec<u32>,
    /// Boot RAM.
    pub memory: Size,
    /// Host node backing it (default 0).
    #[serde(default)]
    pub host_numa_id: u32,
    /// Hot-pluggable range for virtio-mem (a multiple of 128 MiB; default 0).
    #[serde(default)]
    pub hotplug_size: Size,
}

fn one() -> u32 {
    1
}

/// `POST /v1/vms`: the fields of `memtide run`, plus the VM's id and console file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVmBody {
    /// VM id (default: the first free `vmN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Guest kernel (bzImage), an absolute path on the service's host.
    pub kernel: String,
    /// Initramfs, an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Extra kernel command-line arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// vCPUs (default 1).
    #[serde(default = "one")]
    pub vcpus: u32,
    /// Boot RAM (default: the sum of the nodes, else 512 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// Guest NUMA nodes (default: one node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numa: Vec<NumaBody>,
    /// The guest kernel's kernelcore=.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernelcore: Option<String>,
    /// The guest kernel's movablecore=.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub movablecore: Option<String>,
    /// CPUID features the guest sees: "host" (default, all KVM supports) or "x86-64-v2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Serial console file, an absolute path (default: the service's console dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
    /// Serve the serial console on this Unix socket instead (an absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_socket: Option<String>,
    /// The virtio-balloon (default: on, guest statistics every 2 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfigBody>,
}

fn yes() -> bool {
    true
}

/// The virtio-balloon of a new VM (the fields of `memtide run --balloon-*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfigBody {
    /// Whether the VM gets a balloon (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Offer deflate on OOM (default false).
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Offer free page reporting (default false).
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Ask for guest statistics every this many seconds (0: none; default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_interval_secs: Option<u64>,
}

impl BalloonConfigBody {
    /// The device config (None: no balloon).
    pub fn to_config(&self) -> Option<memtide_vmm::devices::virtio::balloon::VirtioBalloonConfig> {
        if !self.enabled {
            return None;
        }
        let mut b = memtide_vmm::balloon::default_balloon_config();
        b.deflate_on_oom = self.deflate_on_oom;
        b.free_page_reporting = self.free_page_reporting;
        if let Some(secs) = self.stats_interval_secs {
            b.stats_interval = (secs > 0).then(|| std::time::Duration::from_secs(secs));
        }
        Some(b)
    }

    /// The body of a device config (None: no balloon).
    pub fn from_config(
        c: Option<memtide_vmm::devices::virtio::balloon::VirtioBalloonConfig>,
    ) -> Self {
        match c {
            None => BalloonConfigBody {
                enabled: false,
                deflate_on_oom: false,
                free_page_reporting: false,
                stats_interval_secs: None,
            },
            Some(b) => BalloonConfigBody {
                enabled: true,
                deflate_on_oom: b.deflate_on_oom,
                free_page_reporting: b.free_page_reporting,
                stats_interval_secs: Some(b.stats_interval.map_or(0, |d| d.as_secs())),
            },
        }
    }
}

/// A body that names something impossible before it reaches the control plane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

fn absolute(what: &str, p: &str) -> Result<PathBuf, BodyError> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(BodyError(format!(
            "{what} {p:?} must be an absolute path (the service's working directory is not yours)"
        )));
    }
    Ok(path)
}

impl CreateVmBody {
    /// The control plane's verb (the config is validated there).
    pub fn into_verb(self) -> Result<CreateVm, BodyError> {
        let kernel = absolute("kernel", &self.kernel)?;
        let initrd = self
            .initrd
            .as_deref()
            .map(|p| absolute("initrd", p))
            .transpose()?;
        let console = self
            .console
            .as_deref()
            .map(|p| absolute("console", p))
            .transpose()?;
        let console_socket = self
            .console_socket
            .as_deref()
            .map(|p| absolute("console_socket", p))
            .transpose()?;
        if console.is_some() && console_socket.is_some() {
            return Err(BodyError(
                "console and console_socket are exclusive: the console goes to one of them".into(),
            ));
        }
        let numa: Vec<NumaNodeConfig> = self
            .numa
            .iter()
            .map(|n| NumaNodeConfig {
                guest_node: n.guest_numa_id,
                vcpus: n.cpus.clone(),
                memory: n.memory.0,
                host_node: n.host_numa_id,
                hotplug_size: n.hotplug_size.0,
            })
            .collect();
        // Same default as `memtide run`: the nodes' sum, else 512 MiB.
        let memory = match self.memory {
            Some(m) => m.0,
            None if !numa.is_empty() => numa
                .iter()
                .try_fold(0u64, |a, n| a.checked_add(n.memory))
                .ok_or_else(|| BodyError("the nodes' memory overflows".into()))?,
            None => 512 << 20,
        };
        let mut config = VmConfig::new(kernel, self.vcpus, memory);
        config.initrd = initrd;
        config.cmdline = self.cmdline;
        config.numa = numa;
        config.guest_kernelcore = self.kernelcore;
        config.guest_movablecore = self.movablecore;
        if let Some(t) = &self.cpu_template {
            config.cpu_template = t
                .parse()
                .map_err(|e| BodyError(format!("cpu_template: {e}")))?;
        }
        config.serial_input = false;
        if let Some(p) = console_socket {
            config.serial_output = memtide_vmm::SerialOutput::Socket(p);
        }
        if let Some(b) = &self.balloon {
            config.balloon = b.to_config();
        }
        Ok(CreateVm {
            id: self.id,
            config,
            console,
        })
    }
}

/// `PUT /v1/vms/{id}/resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    /// Target memory of the VM (or of `node`): boot RAM + plugged.
    pub size: Size,
    /// Only this guest node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    /// Wait up to this many seconds for the guest (default 0: return at once; max 600).
    #[serde(default)]
    pub wait_secs: u64,
}

impl ResizeBody {
    /// The control plane's verb.
    pub fn into_verb(self, id: String) -> ResizeVm {
        ResizeVm {
            id,
            node: self.node,
            size: self.size.0,
            wait_secs: self.wait_secs,
        }
    }
}

/// `PUT /v1/vms/{id}/balloon`: exactly one of the two sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonBody {
    /// The memory the guest should end up with (its boot RAM minus the balloon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_size: Option<Size>,
    /// The memory the balloon should hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_size: Option<Size>,
}

impl BalloonBody {
    /// The control plane's verb; exactly one size must be given.
    pub fn into_verb(self, id: String) -> Result<SetBalloon, BodyError> {
        let target = match (self.guest_size, self.balloon_size) {
            (Some(g), None) => BalloonTarget::GuestSize(g.0),
            (None, Some(b)) => BalloonTarget::BalloonSize(b.0),
            _ => {
                return Err(BodyError(
                    "give exactly one of guest_size and balloon_size".into(),
                ))
            }
        };
        Ok(SetBalloon { id, target })
    }
}

/// `PUT /v1/rebalance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceBody {
    /// The VM that gives memory.
    pub from: String,
    /// The VM that takes it.
    pub to: String,
    /// Bytes to move.
    pub size: Size,
    /// Only this guest node of `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_node: Option<u32>,
    /// Only this guest node of `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_node: Option<u32>,
    /// Wait up to this many seconds for `from`'s guest to give the memory back (default 60).
    #[serde(default = "default_rebalance_wait")]
    pub wait_secs: u64,
}

fn default_rebalance_wait() -> u64 {
    60
}

impl RebalanceBody {
    /// The control plane's verb.
    pub fn into_verb(self) -> Rebalance {
        Rebalance {
            from: self.from,
            to: self.to,
            size: self.size.0,
            from_node: self.from_node,
            to_node: self.to_node,
            wait_secs: self.wait_secs,
        }
    }
}

/// Every error response: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `"ok"` when the service answers.
    pub status: String,
    /// memtide's version.
    pub version: String,
    /// VMs registered.
    pub vms: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_integers_or_strings() {
        let s: Size = serde_json::from_str("536870912").expect("int");
        assert_eq!(s, Size(512 << 20));
        let s: Size = serde_json::from_str("\"512M\"").expect("str");
        assert_eq!(s, Size(512 << 20));
        for bad in [
            "-1",
            "1.5",
            "\"12X\"",
            "18446744073709551616",
            "\"99999999999T\"",
            "null",
        ] {
            assert!(serde_json::from_str::<Size>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_body_converts_and_rejects_unknown_fields() {
        let b: CreateVmBody = serde_json::from_str(
            r#"{"id":"a","kernel":"/k","vcpus":2,"numa":[
                {"guest_numa_id":0,"cpus":[0],"memory":"256M"},
                {"guest_numa_id":1,"cpus":[1],"memory":"256M","host_numa_id":1,"hotplug_size":"1G"}]}"#,
        )
        .expect("valid");
        let v = b.into_verb().expect("verb");
        assert_eq!(v.config.memory, 512 << 20);
        assert_eq!(v.config.numa[1].hotplug_size, 1 << 30);
        v.config.validate().expect("valid config");
        assert!(serde_json::from_str::<CreateVmBody>(r#"{"kernel":"/k","colour":1}"#).is_err());
        let rel: CreateVmBody = serde_json::from_str(r#"{"kernel":"k"}"#).expect("parses");
        assert!(rel.into_verb().is_err());
    }

    #[test]
    fn cpu_template_is_host_unless_named_and_unknown_names_are_refused() {
        let body = |t: &str| -> CreateVmBody {
            serde_json::from_str(&format!(r#"{{"kernel":"/k"{t}}}"#)).expect("parses")
        };
        let v = body("").into_verb().expect("verb");
        assert_eq!(v.config.cpu_template, memtide_vmm::CpuTemplate::Host);
        let v = body(r#","cpu_template":"x86-64-v2""#)
            .into_verb()
            .expect("verb");
        assert_eq!(v.config.cpu_template, memtide_vmm::CpuTemplate::X86_64V2);
        let e = body(r#","cpu_template":"pentium""#)
            .into_verb()
            .expect_err("unknown");
        assert!(
            e.0.contains("cpu_template") && e.0.contains("pentium"),
            "{}",
            e.0
        );
    }
}
