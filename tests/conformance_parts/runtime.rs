//! The runtime context and cluster resources: Ray's tests of them, ported.

use super::*;

/// test_runtime_context.py::test_get_context_dict / test_actor_id: the
/// driver, a task and an actor each see where they run.
pub(super) fn test_runtime_context() {
    one_node(2.0);
    let d = rustray::get_runtime_context().expect("driver context");
    assert!(
        d.is_driver && d.task_id.is_none() && d.actor_id.is_none(),
        "{d:?}"
    );
    assert_eq!(d.node_name, rustray::node_name().unwrap());
    assert!(d.log_dir.is_dir(), "{d:?}");
    // test_runtime_context.py::test_get_worker_id: every process has its
    // own worker id, the driver included.
    assert!(!d.worker_id.is_empty(), "{d:?}");
    let w = rustray::get_timeout(&worker_id_here::remote().unwrap(), Duration::from_secs(30))
        .expect("task");
    assert!(!w.is_empty() && w != d.worker_id, "{w} vs {}", d.worker_id);
    let (task, actor, is_driver, node) =
        rustray::get_timeout(&task_context::remote().unwrap(), Duration::from_secs(30))
            .expect("task");
    assert!(
        task.is_some() && actor.is_none() && !is_driver,
        "{task:?} {actor:?}"
    );
    assert!(rustray::nodes().unwrap().iter().any(|n| n.name == node));
    let a = Holder::remote().expect("actor");
    let (actor, task, is_driver) =
        rustray::get_timeout(&a.context(), Duration::from_secs(30)).expect("call");
    assert_eq!(actor.as_deref(), Some(a.id().as_str()));
    assert!(task.is_some() && !is_driver);
    // test_runtime_context.py::test_get_assigned_resources: what the task
    // or actor holds; nothing in a driver.
    assert!(d.assigned_resources.is_empty(), "{d:?}");
    let r = assigned::options().num_cpus(0.5).remote().unwrap();
    let got = rustray::get_timeout(&r, Duration::from_secs(30)).expect("task");
    assert_eq!(got, vec![("CPU".to_string(), 0.5)]);
    let b = Holder::options().num_cpus(1.0).remote(()).expect("actor");
    let got = rustray::get_timeout(&b.assigned(), Duration::from_secs(30)).expect("call");
    assert_eq!(got, vec![("CPU".to_string(), 1.0)]);
    let got = rustray::get_timeout(&a.assigned(), Duration::from_secs(30)).expect("call");
    assert!(got.is_empty(), "a default actor holds nothing: {got:?}");
}

/// Ray's `cluster_utils.Cluster.add_node(num_cpus=.., resources=..)`, as
/// test_advanced_2.py's custom-resource tests use it: local nodes with
/// resources of their own; a task that needs a resource only one node has
/// runs there, and holds what it asked for.
pub(super) fn test_nodes_with_their_own_resources() {
    if common::launched() {
        // The launched cluster's shape is fixed by the launcher (its
        // --local-node flags are tested in tests/launcher.rs).
        return;
    }
    rustray::init_with(
        Config::new()
            .object_store_memory(128 << 20)
            .num_cpus(1.0)
            .add_local_node(Config::new())
            .add_local_node(Config::new().num_cpus(3.0).resource("special", 2.0)),
    )
    .expect("two different nodes");
    let nodes = rustray::nodes().expect("nodes");
    assert_eq!(nodes.len(), 2);
    let total = rustray::cluster_resources().expect("resources");
    assert_eq!(total.get("CPU"), Some(&4.0), "{total:?}");
    assert_eq!(total.get("special"), Some(&2.0), "{total:?}");
    let special_node = nodes
        .iter()
        .find(|n| n.total.iter().any(|(k, v)| k == "special" && *v == 2.0))
        .expect("the node with `special`")
        .name
        .clone();
    assert_eq!(nodes[1].name, special_node, "nodes keep their order");
    let refs: Vec<_> = (0..4)
        .map(|_| {
            node_and_assigned::options()
                .resource("special", 1.0)
                .remote()
                .unwrap()
        })
        .collect();
    for r in &refs {
        let (node, held) = rustray::get_timeout(r, Duration::from_secs(30)).expect("task");
        assert_eq!(node, special_node);
        assert_eq!(
            held,
            vec![("CPU".to_string(), 1.0), ("special".to_string(), 1.0)]
        );
    }
    let e = Config::new()
        .local_nodes(3)
        .add_local_node(Config::new())
        .add_local_node(Config::new());
    rustray::shutdown();
    let err = rustray::init_with(e).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("local_nodes(3)"), "{err}");
}

/// test_basic.py::test_cluster_resources / test_available_resources: the
/// cluster's resources summed over its live nodes; what is free comes back
/// once the tasks holding it end.
pub(super) fn test_cluster_and_available_resources() {
    let nodes = nodes(1);
    let total: f64 = nodes
        .iter()
        .filter(|n| n.alive)
        .flat_map(|n| n.total.iter())
        .filter(|(k, _)| k == "CPU")
        .map(|(_, v)| v)
        .sum();
    let c = rustray::cluster_resources().expect("cluster resources");
    assert_eq!(c.get("CPU").copied(), Some(total), "{c:?}");
    // A task holding a CPU shows in what is available while it runs.
    let busy = sleep_ms::remote(3000u64).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let a = rustray::available_resources().expect("available");
        if a.get("CPU").copied().unwrap_or(total) <= total - 1.0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "available never showed the running task's CPU: {a:?} of {total}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rustray::get_timeout(&busy, Duration::from_secs(30)).expect("task");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let a = rustray::available_resources().expect("available");
        if a.get("CPU").copied() == Some(total) {
            break;
        }
        assert!(
            Instant::now() < end,
            "available never came back to {total}: {a:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// test_basic_2.py's many-custom-resources case: a node with 10,000 custom
/// resources starts (its configuration does not fit a command line or one
/// environment variable), reports them all, and schedules on the last one.
pub(super) fn test_many_custom_resources() {
    if common::launched() {
        return; // the launched cluster's resources are the launcher's
    }
    let mut cfg = Config::new().num_cpus(2.0);
    for i in 0..10_000 {
        cfg = cfg.resource(&format!("custom_resource_{i:05}"), 1.0);
    }
    rustray::init_with(cfg).expect("a node with 10,000 custom resources starts");
    let c = rustray::cluster_resources().expect("cluster resources");
    let custom = c
        .keys()
        .filter(|k| k.starts_with("custom_resource_"))
        .count();
    assert_eq!(custom, 10_000);
    let r = inc::options()
        .resource("custom_resource_09999", 1.0)
        .remote(1u64)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).expect("task"),
        2
    );
}
