//! Resize and rebalance planning: pure functions from a VM's nodes and a request to the
//! `requested_size` each virtio-mem device should get. Every size the user gives is checked
//! here before any device changes (no partial state change on bad input).

use super::error::ControlError;
use super::machine::HotplugNode;

/// What a guest node has: boot RAM and its hot-pluggable range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// Guest node.
    pub guest_node: u32,
    /// Boot RAM, bytes.
    pub boot: u64,
    /// Hot-pluggable range, bytes.
    pub hotplug: u64,
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

/// The plugged size per guest node that makes the VM (or node `node`) have `size` bytes of
/// memory in all (boot + plugged). A VM-level resize fills the nodes' hot-pluggable ranges
/// in guest node order.
pub fn plan_resize(
    id: &str,
    nodes: &[NodeLimits],
    node: Option<u32>,
    size: u64,
) -> Result<Vec<(u32, u64)>, ControlError> {
    match node {
        Some(n) => {
            let l = nodes
                .iter()
                .find(|l| l.guest_node == n)
                .ok_or_else(|| ControlError::Invalid(format!("VM {id:?} has no guest node {n}")))?;
            let max = l.boot.saturating_add(l.hotplug);
            if size < l.boot || size > max {
                return Err(ControlError::BeyondLimits(format!(
                    "node {n} of VM {id:?} can have {} to {} (boot RAM + hotplug_size), not {size} bytes",
                    mib(l.boot),
                    mib(max)
                )));
            }
            Ok(vec![(n, size - l.boot)])
        }
        None => {
            let boot: u64 = nodes.iter().map(|l| l.boot).sum();
            let range: u64 = nodes.iter().map(|l| l.hotplug).sum();
            let max = boot.saturating_add(range);
            if size < boot || size > max {
                let why = if range == 0 {
                    " (it has no hot-pluggable memory: hotplug_size is 0 on every node)"
                } else {
                    ""
                };
                return Err(ControlError::BeyondLimits(format!(
                    "VM {id:?} can have {} to {} (boot RAM + hotplug_size), not {size} bytes{why}",
                    mib(boot),
                    mib(max)
                )));
            }
            let mut left = size - boot;
            Ok(nodes
                .iter()
                .filter(|l| l.hotplug > 0)
                .map(|l| {
                    let take = left.min(l.hotplug);
                    left -= take;
                    (l.guest_node, take)
                })
                .collect())
        }
    }
}

/// Checks `targets` against the devices (block size, usable size) and returns them.
pub fn check_targets(
    id: &str,
    devices: &[HotplugNode],
    targets: &[(u32, u64)],
) -> Result<(), ControlError> {
    for &(n, t) in targets {
        let d = devices
            .iter()
            .find(|d| d.guest_node == n)
            .ok_or_else(|| ControlError::NoVirtioMem(id.to_string()))?;
        if d.block_size == 0 || !t.is_multiple_of(d.block_size) {
            return Err(ControlError::Unaligned {
                what: "plugged size",
                value: t,
                align: d.block_size,
            });
        }
        // The device grows its usable region to fit a new request: the region is the bound.
        if t > d.region_size {
            return Err(ControlError::BeyondLimits(format!(
                "node {n} of VM {id:?} may plug at most {} (its virtio-mem region), not {}",
                mib(d.region_size),
                mib(t)
            )));
        }
    }
    Ok(())
}

/// The devices a resize may touch, lowest guest node first: the one of guest node `node`, or
/// all; asking for a node without a device is an error.
fn choose_nodes<'a>(
    id: &str,
    devices: &'a [HotplugNode],
    node: Option<u32>,
) -> Result<Vec<&'a HotplugNode>, ControlError> {
    let chosen: Vec<&HotplugNode> = devices
        .iter()
        .filter(|d| node.is_none_or(|n| d.guest_node == n))
        .collect();
    match node {
        Some(n) if chosen.is_empty() => Err(ControlError::Invalid(format!(
            "VM {id:?} has no hot-pluggable guest node {n}"
        ))),
        _ => Ok(chosen),
    }
}

/// Takes `size` bytes from the nodes' requested sizes (node `node` only, or the highest
/// nodes first): the new requested size per node.
pub fn plan_shrink(
    id: &str,
    devices: &[HotplugNode],
    node: Option<u32>,
    size: u64,
) -> Result<Vec<(u32, u64)>, ControlError> {
    let mut chosen = choose_nodes(id, devices, node)?;
    chosen.reverse();
    let have: u64 = chosen.iter().map(|d| d.requested).sum();
    if have < size {
        return Err(ControlError::BeyondLimits(format!(
            "VM {id:?} has {} hot-plugged{}; cannot give {}",
            mib(have),
            node.map(|n| format!(" on node {n}")).unwrap_or_default(),
            mib(size)
        )));
    }
    let mut left = size;
    Ok(chosen
        .into_iter()
        .map(|d| {
            let take = left.min(d.requested);
            left -= take;
            (d.guest_node, d.requested - take)
        })
        .collect())
}

/// Adds `size` bytes to the nodes' requested sizes (node `node` only, or the lowest nodes
/// first, up to each usable size): the new requested size per node.
pub fn plan_grow(
    id: &str,
    devices: &[HotplugNode],
    node: Option<u32>,
    size: u64,
) -> Result<Vec<(u32, u64)>, ControlError> {
    let chosen = choose_nodes(id, devices, node)?;
    let room: u64 = chosen
        .iter()
        .map(|d| d.region_size.saturating_sub(d.requested))
        .sum();
    if room < size {
        return Err(ControlError::BeyondLimits(format!(
            "VM {id:?} has room for {} more{}; cannot take {}",
            mib(room),
            node.map(|n| format!(" on node {n}")).unwrap_or_default(),
            mib(size)
        )));
    }
    let mut left = size;
    Ok(chosen
        .into_iter()
        .map(|d| {
            let take = left.min(d.region_size.saturating_sub(d.requested));
            left -= take;
            (d.guest_node, d.requested + take)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn limits() -> Vec<NodeLimits> {
        vec![
            NodeLimits {
                guest_node: 0,
                boot: 256 * M,
                hotplug: 0,
            },
            NodeLimits {
                guest_node: 1,
                boot: 256 * M,
                hotplug: 1024 * M,
            },
            NodeLimits {
                guest_node: 2,
                boot: 256 * M,
                hotplug: 512 * M,
            },
        ]
    }

    fn dev(n: u32, requested: u64, usable: u64) -> HotplugNode {
        HotplugNode {
            guest_node: n,
            block_size: 2 * M,
            region_size: usable,
            usable,
            plugged: requested,
            requested,
        }
    }

    #[test]
    fn vm_resize_fills_nodes_in_order() {
        let p = plan_resize("a", &limits(), None, 768 * M + 1200 * M).expect("fits");
        assert_eq!(p, vec![(1, 1024 * M), (2, 176 * M)]);
        assert_eq!(
            plan_resize("a", &limits(), None, 768 * M).expect("boot only"),
            vec![(1, 0), (2, 0)]
        );
        assert!(matches!(
            plan_resize("a", &limits(), None, 767 * M),
            Err(ControlError::BeyondLimits(_))
        ));
        assert!(matches!(
            plan_resize("a", &limits(), None, 768 * M + 1537 * M),
            Err(ControlError::BeyondLimits(_))
        ));
    }

    #[test]
    fn node_resize_is_bounded_by_the_node() {
        assert_eq!(
            plan_resize("a", &limits(), Some(2), 512 * M).expect("fits"),
            vec![(2, 256 * M)]
        );
        assert!(matches!(
            plan_resize("a", &limits(), Some(0), 258 * M),
            Err(ControlError::BeyondLimits(_))
        ));
        assert!(matches!(
            plan_resize("a", &limits(), Some(7), 258 * M),
            Err(ControlError::Invalid(_))
        ));
        let e = plan_resize("a", &limits()[..1], None, 512 * M).expect_err("no range");
        assert!(e.to_string().contains("no hot-pluggable memory"), "{e}");
    }

    #[test]
    fn targets_are_checked_against_the_devices() {
        let d = [dev(1, 0, 1024 * M)];
        check_targets("a", &d, &[(1, 512 * M)]).expect("ok");
        assert!(matches!(
            check_targets("a", &d, &[(1, 3 * M)]),
            Err(ControlError::Unaligned { .. })
        ));
        assert!(matches!(
            check_targets("a", &d, &[(1, 2048 * M)]),
            Err(ControlError::BeyondLimits(_))
        ));
        assert!(matches!(
            check_targets("a", &d, &[(0, 0)]),
            Err(ControlError::NoVirtioMem(_))
        ));
    }

    #[test]
    fn shrink_and_grow_split_over_nodes() {
        let d = [dev(1, 256 * M, 1024 * M), dev(2, 128 * M, 512 * M)];
        assert_eq!(
            plan_shrink("a", &d, None, 200 * M).expect("fits"),
            vec![(2, 0), (1, 184 * M)]
        );
        assert_eq!(
            plan_shrink("a", &d, Some(1), 100 * M).expect("fits"),
            vec![(1, 156 * M)]
        );
        assert!(matches!(
            plan_shrink("a", &d, None, 385 * M),
            Err(ControlError::BeyondLimits(_))
        ));
        assert_eq!(
            plan_grow("a", &d, None, 800 * M).expect("fits"),
            vec![(1, 1024 * M), (2, 160 * M)]
        );
        assert!(matches!(
            plan_grow("a", &d, Some(2), 385 * M),
            Err(ControlError::BeyondLimits(_))
        ));
        assert!(matches!(
            plan_grow("a", &d, Some(0), 2 * M),
            Err(ControlError::Invalid(_))
        ));
    }
}
