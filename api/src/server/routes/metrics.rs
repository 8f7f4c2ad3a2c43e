//! `GET /metrics`: Prometheus text format (version 0.0.4): the pool per node and zone
//! (pages by kind, watermarks, free blocks per order), the VMs (state, vCPUs, memory per
//! node) and the API's responses by status code.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use memtide_vmm::control::{PoolInfo, VmInfo, VmState};

use super::blocking;
use crate::server::error::ApiError;
use crate::server::AppState;

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Nanoseconds as seconds with nanosecond precision.
fn seconds(nanos: u64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

fn head(m: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(m, "# HELP {name} {help}");
    let _ = writeln!(m, "# TYPE {name} {kind}");
}

/// The metrics text.
pub fn render(pool: &PoolInfo, vms: &[VmInfo], responses: &[(u16, u64)]) -> String {
    let mut m = String::new();
    head(
        &mut m,
        "memtide_pool_page_size_bytes",
        "gauge",
        "Page size of the host pool.",
    );
    let _ = writeln!(m, "memtide_pool_page_size_bytes {}", pool.page_size);
    head(
        &mut m,
        "memtide_pool_pages",
        "gauge",
        "Pages of a host pool zone: spanned, present, managed, free.",
    );
    for n in &pool.nodes {
        for z in &n.zones {
            for (kind, v) in [
                ("spanned", z.spanned),
                ("present", z.present),
                ("managed", z.managed),
                ("free", z.free),
            ] {
                let _ = writeln!(
                    m,
                    "memtide_pool_pages{{node=\"{}\",zone=\"{}\",kind=\"{kind}\"}} {v}",
                    n.node, z.zone
                );
            }
        }
    }
    head(
        &mut m,
        "memtide_pool_watermark_pages",
        "gauge",
        "Watermarks of a host pool zone.",
    );
    for n in &pool.nodes {
        for z in &n.zones {
            let w = z.watermarks;
            for (level, v) in [("min", w.min), ("low", w.low), ("high", w.high)] {
                let _ = writeln!(
                    m,
                    "memtide_pool_watermark_pages{{node=\"{}\",zone=\"{}\",level=\"{level}\"}} {v}",
                    n.node, z.zone
                );
            }
        }
    }
    head(
        &mut m,
        "memtide_pool_free_blocks",
        "gauge",
        "Free blocks per order of a host pool zone (buddyinfo).",
    );
    for n in &pool.nodes {
        for z in n.zones.iter().filter(|z| z.present > 0) {
            for (order, v) in z.buddyinfo.iter().enumerate() {
                let _ = writeln!(
                    m,
                    "memtide_pool_free_blocks{{node=\"{}\",zone=\"{}\",order=\"{order}\"}} {v}",
                    n.node, z.zone
                );
            }
        }
    }
    head(&mut m, "memtide_vms", "gauge", "VMs by state.");
    for st in [VmState::Running, VmState::Paused, VmState::Stopped] {
        let c = vms.iter().filter(|v| v.state == st).count();
        let _ = writeln!(m, "memtide_vms{{state=\"{}\"}} {c}", st.name());
    }
    head(&mut m, "memtide_vm_vcpus", "gauge", "vCPUs of a VM.");
    for v in vms {
        let _ = writeln!(m, "memtide_vm_vcpus{{vm=\"{}\"}} {}", label(&v.id), v.vcpus);
    }
    head(
        &mut m,
        "memtide_vm_memory_bytes",
        "gauge",
        "Memory of a VM's guest node: boot, plugged, requested, usable (virtio-mem).",
    );
    for v in vms {
        for n in &v.nodes {
            for (kind, b) in [
                ("boot", n.boot_memory),
                ("plugged", n.plugged),
                ("requested", n.requested),
                ("usable", n.usable),
            ] {
                let _ = writeln!(
                    m,
                    "memtide_vm_memory_bytes{{vm=\"{}\",node=\"{}\",kind=\"{kind}\"}} {b}",
                    label(&v.id),
                    n.guest_node
                );
            }
        }
    }
    head(
        &mut m,
        "memtide_vm_balloon_bytes",
        "gauge",
        "A VM's virtio-balloon: target, actual (driver), ballooned (host memory given back), guest_size.",
    );
    for v in vms {
        let Some(b) = &v.balloon else { continue };
        for (kind, x) in [
            ("target", b.target_bytes),
            ("actual", b.actual_bytes),
            ("ballooned", b.ballooned_bytes),
            ("guest_size", b.guest_size),
        ] {
            let _ = writeln!(
                m,
                "memtide_vm_balloon_bytes{{vm=\"{}\",kind=\"{kind}\"}} {x}",
                label(&v.id)
            );
        }
    }
    head(
        &mut m,
        "memtide_vm_balloon_events_total",
        "counter",
        "A VM's virtio-balloon counters since boot (inflated/deflated pages, free page reports and their bytes, errors), by counter name.",
    );
    for v in vms {
        for (counter, x) in v.balloon.iter().flat_map(|b| b.counters.iter()) {
            let _ = writeln!(
                m,
                "memtide_vm_balloon_events_total{{vm=\"{}\",counter=\"{}\"}} {x}",
                label(&v.id),
                label(counter)
            );
        }
    }
    head(
        &mut m,
        "memtide_vm_balloon_stat",
        "gauge",
        "The guest's latest virtio-balloon statistics, by virtio stat name.",
    );
    for v in vms {
        for (stat, x) in v.balloon.iter().flat_map(|b| b.stats.iter().flatten()) {
            let _ = writeln!(
                m,
                "memtide_vm_balloon_stat{{vm=\"{}\",stat=\"{}\"}} {x}",
                label(&v.id),
                label(stat)
            );
        }
    }
    head(
        &mut m,
        "memtide_vm_virtio_mem_host_seconds_total",
        "counter",
        "Wall time memtide spent serving a VM's virtio-mem requests (queue, checks, pool, punch-hole, remap).",
    );
    for v in vms {
        let Some(s) = &v.virtio_mem_stats else {
            continue;
        };
        let _ = writeln!(
            m,
            "memtide_vm_virtio_mem_host_seconds_total{{vm=\"{}\"}} {}",
            label(&v.id),
            seconds(s.host_nanos)
        );
    }
    head(
        &mut m,
        "memtide_vm_virtio_mem_requests_total",
        "counter",
        "virtio-mem requests a VM's guest made, by type.",
    );
    for v in vms {
        for (kind, c) in v.virtio_mem_stats.iter().flat_map(|s| &s.requests) {
            let _ = writeln!(
                m,
                "memtide_vm_virtio_mem_requests_total{{vm=\"{}\",type=\"{}\"}} {c}",
                label(&v.id),
                label(kind)
            );
        }
    }
    head(
        &mut m,
        "memtide_vm_virtio_mem_request_seconds_total",
        "counter",
        "Wall time memtide spent handling a VM's virtio-mem requests, by type.",
    );
    for v in vms {
        for (kind, n) in v.virtio_mem_stats.iter().flat_map(|s| &s.request_nanos) {
            let _ = writeln!(
                m,
                "memtide_vm_virtio_mem_request_seconds_total{{vm=\"{}\",type=\"{}\"}} {}",
                label(&v.id),
                label(kind),
                seconds(*n)
            );
        }
    }
    head(
        &mut m,
        "memtide_api_responses_total",
        "counter",
        "API responses by HTTP status code.",
    );
    for (code, c) in responses {
        let _ = writeln!(m, "memtide_api_responses_total{{code=\"{code}\"}} {c}");
    }
    m
}

/// `GET /metrics`.
pub async fn get(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let (pool, vms) = blocking(&state, |p| Ok((p.pool_info(), p.list_vms()))).await?;
    let responses = state.stats.snapshot();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&pool, &vms, &responses),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use memtide_vmm::control::VirtioMemReport;
    use memtide_vmm::devices::virtio::mem::VirtioMemStats;

    /// A running VM `a` with `stats` (built from JSON: fields other than the required ones
    /// stay at their defaults).
    fn vm(stats: Option<VirtioMemReport>) -> VmInfo {
        let mut v: VmInfo = serde_json::from_value(serde_json::json!({
            "id": "a",
            "state": "running",
            "vcpus": 1,
            "boot_memory": 256u64 << 20,
            "total_memory": 256u64 << 20,
            "virtio_mem": stats.is_some(),
            "kernel": "/k",
            "uptime_secs": 0,
            "nodes": [],
        }))
        .expect("a VmInfo");
        v.virtio_mem_stats = stats;
        v
    }

    fn pool() -> PoolInfo {
        PoolInfo {
            page_size: 4096,
            min_free_kbytes: 0,
            managed_pages: 0,
            free_pages: 0,
            nodes: Vec::new(),
        }
    }

    #[test]
    fn virtio_mem_counters_follow_the_devices() {
        let mut s = VirtioMemStats::default();
        let text = render(&pool(), &[vm(Some(VirtioMemReport::new(&s)))], &[]);
        assert!(
            text.contains("memtide_vm_virtio_mem_host_seconds_total{vm=\"a\"} 0.000000000\n"),
            "{text}"
        );
        assert!(text.contains("memtide_vm_virtio_mem_requests_total{vm=\"a\",type=\"plug\"} 0\n"));
        s.requests.plug = 512;
        s.requests.unplug = 3;
        s.request_nanos.plug = 1_250_000_000;
        s.queue_nanos = 2_000_000_007;
        let text = render(&pool(), &[vm(Some(VirtioMemReport::new(&s)))], &[]);
        for want in [
            "memtide_vm_virtio_mem_host_seconds_total{vm=\"a\"} 2.000000007\n",
            "memtide_vm_virtio_mem_requests_total{vm=\"a\",type=\"plug\"} 512\n",
            "memtide_vm_virtio_mem_requests_total{vm=\"a\",type=\"unplug\"} 3\n",
            "memtide_vm_virtio_mem_request_seconds_total{vm=\"a\",type=\"plug\"} 1.250000000\n",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        // A VM without virtio-mem has no such series.
        let text = render(&pool(), &[vm(None)], &[]);
        assert!(
            !text.contains("memtide_vm_virtio_mem_requests_total{"),
            "{text}"
        );
    }
}
