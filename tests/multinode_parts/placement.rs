//! Placement and transfer across nodes: where tasks and actors run, objects
//! moving between nodes and freed on every one, the GCS's connections.

use super::*;

#[rustray::remote]
pub(super) fn node_table_size(_i: u64) -> usize {
    rustray::nodes().expect("node table").len()
}

/// Ray's GCS scaling concern: core workers reach the GCS through their
/// node's raylet, so the GCS holds two connections per node (the raylet's
/// reports, and the requests it forwards) however many processes ask it
/// things (the node table, from workers on every node, and the driver's
/// own calls): here nine workers and a driver, not thirteen connections.
pub(super) fn test_gcs_holds_connections_per_node_not_per_process() {
    let nodes = three_nodes();
    let gcs = rustray::__private::gcs_address().expect("gcs address");
    let refs: Vec<_> = (0..9u64)
        .map(|i| {
            node_table_size::options()
                .num_cpus(0.25)
                .scheduling_strategy(SchedulingStrategy::Spread)
                .remote(i)
                .unwrap()
        })
        .collect();
    let sizes = rustray::get_all(&refs).expect("node tables");
    assert!(sizes.iter().all(|n| *n == nodes.len()), "{sizes:?}");
    let w = Where::options()
        .name("gcs-connections")
        .remote(())
        .expect("named actor");
    let found = rustray::get_actor::<Where>("gcs-connections").expect("by name");
    rustray::get(&found.call()).expect("call");
    drop(w);
    // A connection whose client has not closed it yet (a process still
    // exiting) is given a few seconds to go; the ones a connection per
    // process would hold stay.
    let want = nodes.len()..=2 * nodes.len();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut n = connections_to(gcs);
    while !want.contains(&n) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
        n = connections_to(gcs);
    }
    assert!(want.contains(&n), "{n} connections to the GCS at {gcs}");
}

pub(super) fn pin(node: &rustray::Node) -> String {
    format!("node:{}", node.name)
}

/// More 1-CPU tasks than one node has CPUs: the raylet spills them back to
/// the other nodes, and every node runs some.
pub(super) fn test_tasks_spill_to_every_node() {
    three_nodes();
    let refs: Vec<_> = (0..24)
        .map(|_| where_am_i::remote(150u64).unwrap())
        .collect();
    let seen: BTreeSet<String> = rustray::get_all(&refs)
        .expect("all tasks finish")
        .into_iter()
        .collect();
    assert_eq!(seen.len(), 3, "tasks ran on {seen:?}");
}

/// A task asking for a resource only one node has runs there.
pub(super) fn test_node_affinity_by_resource() {
    let nodes = three_nodes();
    for n in &nodes {
        let r = where_am_i::options()
            .resource(&pin(n), 0.01)
            .remote(0u64)
            .unwrap();
        assert_eq!(rustray::get(&r).expect("pinned task"), n.name);
    }
}

/// Objects from 1 byte to 256 MiB cross nodes intact, both ways: the
/// driver's objects read by tasks elsewhere, and task results on other
/// nodes read by the driver.
pub(super) fn test_object_transfer_between_nodes() {
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
                .remote(&obj)
                .unwrap();
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
            .remote(n, i as u8)
            .unwrap();
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

/// Reference counting across nodes: once no ref remains, the primary copy
/// and every pulled copy are freed, on every node.
pub(super) fn test_every_copy_freed_when_no_ref_remains() {
    let nodes = three_nodes();
    let mut keep = Vec::new();
    for n in &nodes[1..] {
        // Made on node n, read on the driver's node and on the other node.
        let x = make_bytes::options()
            .resource(&pin(n), 0.01)
            .remote(8 << 20, 1u8)
            .unwrap();
        assert_eq!(rustray::get(&x).expect("pull to node 0").len(), 8 << 20);
        for m in &nodes[1..] {
            let r = checksum::options()
                .resource(&pin(m), 0.01)
                .remote(&x)
                .unwrap();
            rustray::get(&r).expect("read on another node");
        }
        keep.push(x);
    }
    let used = |min: u64| -> bool {
        rustray::nodes()
            .expect("nodes")
            .iter()
            .all(|n| n.store_used >= min)
    };
    // Every node holds some copy while refs live (reports come every 100 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !used(8 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "copies never showed up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(keep);
    assert_every_store_empty();
}

/// Waits (bounded) until every node reports an empty store.
pub(super) fn assert_every_store_empty() {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<(String, u64)> = rustray::nodes()
            .expect("nodes")
            .into_iter()
            .filter(|n| n.store_used > 0)
            .map(|n| (n.name, n.store_used))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store space still in use after the last ref went: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[rustray::remote]
pub(super) fn boxed_checksum(boxed: Vec<rustray::ObjectRef<Vec<u8>>>) -> u64 {
    // Not resolved as an argument: fetched (pulled) inside the task.
    let v = rustray::get_view(&boxed[0]).expect("boxed ref");
    local_checksum(&v)
}

/// Objects made one after another in the same store block (each freed
/// before the next) and read on another node through a borrowed ref: every
/// read sees its own object, never the copy of an earlier one.
pub(super) fn test_reused_store_blocks_never_serve_stale_copies() {
    let nodes = three_nodes();
    for seed in 0..6u8 {
        let x = make_bytes::options()
            .resource(&pin(&nodes[1]), 0.01)
            .remote(4 << 20, seed)
            .unwrap();
        let r = boxed_checksum::options()
            .resource(&pin(&nodes[2]), 0.01)
            .remote(vec![x.clone()])
            .unwrap();
        let got = rustray::get(&r).expect("read on node 2");
        assert_eq!(
            got,
            local_checksum(&pattern(4 << 20, seed)),
            "stale copy for seed {seed}"
        );
        drop(x);
        drop(r);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 1 GiB object made on one node arrives intact on another.
pub(super) fn test_one_gib_transfer() {
    rustray::init_with(
        Config::new()
            .local_nodes(2)
            .num_cpus(1.0)
            .object_store_memory(1200 << 20),
    )
    .expect("a 2-node cluster with 1.2 GiB stores");
    let nodes = rustray::nodes().expect("nodes");
    let n = 1usize << 30;
    let made = make_bytes::options()
        .resource(&pin(&nodes[1]), 0.01)
        .remote(n, 5u8)
        .unwrap();
    let view = rustray::get_view(&made).expect("1 GiB pulled to node 0");
    assert_eq!(view.len(), n);
    assert_eq!(
        local_checksum(&view),
        local_checksum(&pattern(n, 5)),
        "1 GiB corrupted in transit"
    );
}

/// A request no node can ever satisfy fails at once with a clear error.
pub(super) fn test_infeasible_across_nodes() {
    three_nodes();
    let r = where_am_i::options().num_cpus(2.0).remote(0u64).unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(20)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
    let r = where_am_i::options()
        .resource("node:nowhere", 1.0)
        .remote(0u64)
        .unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(20)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
}

/// An actor placed on another node keeps its state and call order.
pub(super) fn test_actor_on_another_node() {
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

#[rustray::remote]
pub(super) fn len_where(data: Vec<u8>) -> (usize, String) {
    (data.len(), rustray::node_name().expect("node name"))
}

/// Ray's scheduling strategies: hard and soft node affinity, spread.
pub(super) fn test_scheduling_strategies() {
    let nodes = three_nodes();
    for n in &nodes {
        let r = where_am_i::options()
            .scheduling_strategy(SchedulingStrategy::NodeAffinity {
                node: n.name.clone(),
                soft: false,
            })
            .remote(0u64)
            .unwrap();
        assert_eq!(rustray::get(&r).expect("hard affinity"), n.name);
    }
    let hard_nowhere = where_am_i::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: "no-such-node".into(),
            soft: false,
        })
        .remote(0u64)
        .unwrap();
    let e = rustray::get(&hard_nowhere).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unschedulable, "{e}");
    assert!(e.message().contains("no-such-node"), "{e}");
    let soft_nowhere = where_am_i::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: "no-such-node".into(),
            soft: true,
        })
        .remote(0u64)
        .unwrap();
    rustray::get(&soft_nowhere).expect("soft affinity falls back");
    // Long enough that no task finishes before every node's first worker
    // has started, even on a loaded machine: a lease freed early would
    // otherwise take a queued task (leases are reused per scheduling key,
    // as in Ray) and the last node could get none.
    let spread: Vec<_> = (0..6)
        .map(|_| {
            where_am_i::options()
                .scheduling_strategy(SchedulingStrategy::Spread)
                .remote(1500u64)
                .unwrap()
        })
        .collect();
    let seen: BTreeSet<String> = rustray::get_all(&spread)
        .expect("spread")
        .into_iter()
        .collect();
    assert_eq!(seen.len(), 3, "spread tasks ran on {seen:?}");
}

/// The talk's `g(id_X)`: a task whose large argument lives in another
/// node's store runs on that node, and the object is not moved.
pub(super) fn test_locality_runs_tasks_where_their_data_is() {
    let nodes = three_nodes();
    for n in &nodes[1..] {
        let x = make_bytes::options()
            .resource(&pin(n), 0.01)
            .remote(32 << 20, 3u8)
            .unwrap();
        for _ in 0..3 {
            let (len, node) = rustray::get(&len_where::remote(&x).unwrap()).expect("consumer");
            assert_eq!(len, 32 << 20);
            assert_eq!(node, n.name, "the consumer did not run where its data is");
        }
    }
}
