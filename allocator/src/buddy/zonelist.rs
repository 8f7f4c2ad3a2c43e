//! Zonelists (`build_all_zonelists`, `build_zonelists`, `find_next_best_node`) and
//! `gfp_zone()`.
//!
//! A node's zonelist lists the zones of its own node first, then of the other nodes by
//! distance; within a node from the highest zone to the lowest, skipping zones without
//! managed pages (`build_zonerefs_node`). Ties in distance are broken as Linux does, with
//! `node_load[]` spreading nodes at the same distance round robin over the local nodes, and
//! the "prefer the next node" penalty for lower node ids.

use crate::types::{MigrateType, NodeId, ZoneType, MAX_NUMNODES};

/// `LOCAL_DISTANCE`.
pub const LOCAL_DISTANCE: u32 = 10;
/// `REMOTE_DISTANCE`.
pub const REMOTE_DISTANCE: u32 = 20;

/// `gfp_zone()` for the pool's requests: the highest zone a request of `mt` may use.
/// Movable requests (`GFP_HIGHUSER_MOVABLE`) may use ZONE_MOVABLE; all others stop at
/// ZONE_NORMAL, so ZONE_MOVABLE never serves an unmovable or reclaimable request.
pub const fn gfp_zone(mt: MigrateType) -> ZoneType {
    match mt {
        MigrateType::Movable => ZoneType::Movable,
        _ => ZoneType::Normal,
    }
}

/// `find_next_best_node()` order of all nodes for every node, mirroring the kernel's
/// `node_load[]` tie-breaking. `nodes` are the node ids with memory, ascending; `distance`
/// is indexed by node id. Returns, per entry of `nodes`, the node order.
pub fn node_orders(nodes: &[NodeId], distance: &[Vec<u32>]) -> Vec<Vec<NodeId>> {
    let dist = |a: NodeId, b: NodeId| distance[a.0 as usize][b.0 as usize];
    let mut node_load = vec![0u64; MAX_NUMNODES];
    let mut orders = Vec::with_capacity(nodes.len());
    for &local in nodes {
        let mut used = [false; MAX_NUMNODES];
        let mut order = Vec::with_capacity(nodes.len());
        let mut prev = local;
        loop {
            // find_next_best_node()
            let best = if !used[local.0 as usize] {
                Some(local)
            } else {
                let mut min_val = u64::MAX;
                let mut best = None;
                for &n in nodes {
                    if used[n.0 as usize] {
                        continue;
                    }
                    let mut val = u64::from(dist(local, n));
                    val += u64::from(n < local);
                    // Every node is assumed to have CPUs: PENALTY_FOR_NODE_WITH_CPUS is
                    // added to all candidates and cannot change the choice.
                    val *= MAX_NUMNODES as u64;
                    val += node_load[n.0 as usize];
                    if val < min_val {
                        min_val = val;
                        best = Some(n);
                    }
                }
                best
            };
            let Some(node) = best else { break };
            used[node.0 as usize] = true;
            if dist(local, node) != dist(local, prev) {
                node_load[node.0 as usize] += 1;
            }
            order.push(node);
            prev = node;
        }
        orders.push(order);
    }
    orders
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> Vec<Vec<u32>> {
        (0..n)
            .map(|i| (0..n).map(|j| if i == j { 10 } else { 20 }).collect())
            .collect()
    }

    #[test]
    fn local_node_first_then_by_distance() {
        let mut d = table(3);
        d[0][2] = 15;
        d[2][0] = 15;
        let nodes = [NodeId(0), NodeId(1), NodeId(2)];
        let o = node_orders(&nodes, &d);
        assert_eq!(o[0], vec![NodeId(0), NodeId(2), NodeId(1)]);
        assert_eq!(o[1][0], NodeId(1));
        assert_eq!(o[2], vec![NodeId(2), NodeId(0), NodeId(1)]);
    }

    #[test]
    fn equal_distances_prefer_next_node() {
        let nodes = [NodeId(0), NodeId(1), NodeId(2), NodeId(3)];
        let o = node_orders(&nodes, &table(4));
        assert_eq!(o[0][0], NodeId(0));
        assert_eq!(o[2][0], NodeId(2));
        // n < local is penalised: node 2 looks at node 3 before nodes 0 and 1.
        assert_eq!(o[2][1], NodeId(3));
        for ord in &o {
            let mut s = ord.clone();
            s.sort();
            assert_eq!(s, nodes);
        }
    }

    #[test]
    fn gfp_zone_keeps_unmovable_out_of_movable() {
        assert_eq!(gfp_zone(MigrateType::Movable), ZoneType::Movable);
        assert_eq!(gfp_zone(MigrateType::Unmovable), ZoneType::Normal);
        assert_eq!(gfp_zone(MigrateType::Reclaimable), ZoneType::Normal);
    }
}
