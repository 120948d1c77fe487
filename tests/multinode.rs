//! Several nodes on one machine (`Config::local_nodes`): each node its own
//! raylet process, object store and workers, the GCS coordinating leases
//! across them. The same code paths run under `rust-ray-launch` and Slurm.

mod common;

use rustray::{Config, ErrorKind};
use std::collections::BTreeSet;
use std::time::Duration;

#[rustray::remote]
fn where_am_i(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    rustray::node_name().expect("node name inside a task")
}

#[rustray::remote]
fn checksum(data: Vec<u8>) -> (u64, usize, String) {
    let sum = data.iter().enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_mul(31).wrapping_add(*b as u64 ^ i as u64)
    });
    (sum, data.len(), rustray::node_name().expect("node name"))
}

#[rustray::remote]
fn make_bytes(n: usize, seed: u8) -> Vec<u8> {
    pattern(n, seed)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn local_checksum(data: &[u8]) -> u64 {
    data.iter().enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_mul(31).wrapping_add(*b as u64 ^ i as u64)
    })
}

pub struct Where {
    calls: u64,
}

#[rustray::actor]
impl Where {
    pub fn new() -> Self {
        Where { calls: 0 }
    }
    pub fn call(&mut self) -> (u64, String) {
        self.calls += 1;
        (self.calls, rustray::node_name().expect("node name"))
    }
}

fn three_nodes() -> Vec<rustray::Node> {
    rustray::init_with(
        Config::new()
            .local_nodes(3)
            .num_cpus(1.0)
            .object_store_memory(640 << 20),
    )
    .expect("a 3-node cluster starts");
    let nodes = rustray::nodes().expect("node table");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.alive));
    nodes
}

fn pin(node: &rustray::Node) -> String {
    format!("node:{}", node.name)
}

/// More 1-CPU tasks than one node has CPUs: the raylet spills them back to
/// the other nodes, and every node runs some.
fn test_tasks_spill_to_every_node() {
    three_nodes();
    let refs: Vec<_> = (0..24).map(|_| where_am_i::remote(150u64)).collect();
    let seen: BTreeSet<String> = rustray::get_all(&refs)
        .expect("all tasks finish")
        .into_iter()
        .collect();
    assert_eq!(seen.len(), 3, "tasks ran on {seen:?}");
}

/// A task asking for a resource only one node has runs there.
fn test_node_affinity_by_resource() {
    let nodes = three_nodes();
    for n in &nodes {
        let r = where_am_i::options().resource(&pin(n), 0.01).remote(0u64);
        assert_eq!(rustray::get(&r).expect("pinned task"), n.name);
    }
}

/// Objects from 1 byte to 256 MiB cross nodes intact, both ways: the
/// driver's objects read by tasks elsewhere, and task results on other
/// nodes read by the driver.
fn test_object_transfer_between_nodes() {
    let nodes = three_nodes();
    for (i, &n) in [1usize, 100, 200 << 10, 8 << 20, 256 << 20]
        .iter()
        .enumerate()
    {
        let data = pattern(n, i as u8);
        let want = local_checksum(&data);
        let obj = rustray::put(data).expect("put");
        // Read on node 2, twice (the second read reuses the node's copy).
        for _ in 0..2 {
            let r = checksum::options()
                .resource(&pin(&nodes[2]), 0.01)
                .remote(&obj);
            let (sum, len, node) = rustray::get(&r).expect("checksum on node 2");
            assert_eq!(
                (sum, len),
                (want, n),
                "object of {n} bytes corrupted in transit"
            );
            assert_eq!(node, nodes[2].name);
        }
        // Made on node 1, read here on node 0.
        let made = make_bytes::options()
            .resource(&pin(&nodes[1]), 0.01)
            .remote(n, i as u8);
        let back = rustray::get(&made).expect("result from node 1");
        assert_eq!(
            local_checksum(&back),
            want,
            "{n} bytes from node 1 corrupted"
        );
        let view = rustray::get_view(&made).expect("view of the pulled copy");
        assert_eq!(view.len(), n);
    }
}

/// A request no node can ever satisfy fails at once with a clear error.
fn test_infeasible_across_nodes() {
    three_nodes();
    let r = where_am_i::options().num_cpus(2.0).remote(0u64);
    let e = rustray::get_timeout(&r, Duration::from_secs(20)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
    let r = where_am_i::options()
        .resource("node:nowhere", 1.0)
        .remote(0u64);
    let e = rustray::get_timeout(&r, Duration::from_secs(20)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
}

/// An actor placed on another node keeps its state and call order.
fn test_actor_on_another_node() {
    let nodes = three_nodes();
    let a = Where::options()
        .resource(&pin(&nodes[2]), 0.01)
        .remote(())
        .expect("actor on node 2");
    let refs: Vec<_> = (0..50).map(|_| a.call()).collect();
    for (i, r) in refs.iter().enumerate() {
        let (n, node) = rustray::get(r).expect("actor call");
        assert_eq!(n, i as u64 + 1, "calls ran out of order");
        assert_eq!(node, nodes[2].name);
    }
}

fn main() {
    common::enter_cluster_role();
    common::run(&[
        (
            "test_tasks_spill_to_every_node",
            test_tasks_spill_to_every_node,
        ),
        (
            "test_node_affinity_by_resource",
            test_node_affinity_by_resource,
        ),
        (
            "test_object_transfer_between_nodes",
            test_object_transfer_between_nodes,
        ),
        ("test_infeasible_across_nodes", test_infeasible_across_nodes),
        ("test_actor_on_another_node", test_actor_on_another_node),
    ]);
}
