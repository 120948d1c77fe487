//! Ray's own tests, ported: each test here follows one test of Ray's suite
//! (`python/ray/tests/<file>::<test>`, named in its doc line) and checks
//! the behaviour that test pins down, through rustray's API. They are the
//! specification Ray users rely on.
//!
//! The suite runs alone (each test starts its own cluster: one node, or
//! the local nodes it needs) and as the driver of `rust-ray-launch
//! --local-nodes 3` (tests/launcher.rs), where every test joins that
//! cluster instead.

mod common;

use rustray::{Config, ErrorKind, SchedulingStrategy};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- remote fns

#[rustray::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[rustray::remote]
fn fails(msg: String) -> u64 {
    panic!("{msg}");
}

#[rustray::remote]
fn inc(x: u64) -> u64 {
    x + 1
}

/// Submits a long task itself and returns its ref: the ref is owned by the
/// worker that ran this task, not by the driver.
#[rustray::remote]
fn spawn_sleeper(ms: u64) -> rustray::ObjectRef<u64> {
    sleep_ms::remote(ms)
}

#[rustray::remote]
fn bytes_here(n: usize) -> Vec<u8> {
    vec![7u8; n]
}

// ---------------------------------------------------------------- helpers

/// A one-node cluster of `cpus` CPUs (or the launched cluster).
fn one_node(cpus: f64) {
    common::cluster(cpus, None);
}

/// A cluster of at least `n` nodes: `n` local nodes, or the launched one.
fn nodes(n: u16) -> Vec<rustray::Node> {
    if common::launched() {
        rustray::init().expect("joins the launched cluster");
    } else {
        rustray::init_with(Config::new().local_nodes(n).num_cpus(2.0)).expect("cluster starts");
    }
    let nodes = rustray::nodes().expect("node table");
    assert!(nodes.len() >= n as usize, "{nodes:?}");
    nodes
}

fn other_node(nodes: &[rustray::Node]) -> String {
    let me = rustray::node_name().expect("node name");
    nodes
        .iter()
        .find(|n| n.alive && n.name != me)
        .map(|n| n.name.clone())
        .expect("a second node")
}

fn on(node: &str) -> SchedulingStrategy {
    SchedulingStrategy::NodeAffinity {
        node: node.to_string(),
        soft: false,
    }
}

// ---------------------------------------------------------------- wait

/// test_wait.py::test_wait (its empty-list case): `ray.wait([])` is
/// `([], [])`, checked before any other argument.
fn test_wait_empty_list() {
    one_node(1.0);
    for n in [0, 1, 5] {
        let (ready, rest) = rustray::wait::<u64>(&[], n, None).expect("empty wait");
        assert!(ready.is_empty() && rest.is_empty());
    }
}

/// test_wait.py::test_wait (its invalid-argument cases): duplicate refs
/// and `num_returns` 0 are `ValueError`s in Ray.
fn test_wait_invalid_arguments() {
    one_node(1.0);
    let a = inc::remote(1u64);
    let b = inc::remote(2u64);
    let e = rustray::wait(&[a.clone(), b.clone(), a.clone()], 1, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("unique"), "{e}");
    let e = rustray::wait(&[a.clone(), b.clone()], 0, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("num_returns"), "{e}");
    let e = rustray::wait(&[a.clone(), b.clone()], 3, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let (ready, rest) = rustray::wait(&[a, b], 2, Some(Duration::from_secs(30))).expect("wait");
    assert_eq!((ready.len(), rest.len()), (2, 0));
}

/// test_multi_node.py / test_wait.py with `fetch_local=True` (Ray's
/// default): once `wait` reports an object of another node ready, it is in
/// this node's store.
fn test_wait_fetch_local() {
    let nodes = nodes(2);
    let there = other_node(&nodes);
    const N: usize = 8 << 20;
    let r = bytes_here::options()
        .scheduling_strategy(on(&there))
        .remote(N);
    // With fetch_local off, ready there is ready: nothing is copied here.
    let before = rustray::store_stats().expect("store stats");
    let (ready, _) = rustray::wait_with(&[r.clone()], 1, Some(Duration::from_secs(60)), false)
        .expect("wait");
    assert_eq!(ready.len(), 1);
    let after = rustray::store_stats().expect("store stats");
    assert!(
        after.used_bytes < before.used_bytes + N as u64,
        "fetch_local=false copied it: {before:?} -> {after:?}"
    );
    drop(ready);
    let (ready, _) = rustray::wait(&[r.clone()], 1, Some(Duration::from_secs(60))).expect("wait");
    assert_eq!(ready.len(), 1);
    let after = rustray::store_stats().expect("store stats");
    assert!(
        after.used_bytes >= before.used_bytes + N as u64,
        "the object was not copied here: {before:?} -> {after:?}"
    );
    let v = rustray::get_view(&r).expect("view");
    assert_eq!((v.len(), v[N - 1]), (N, 7));
    drop((v, r, ready));
}

// ---------------------------------------------------------------- get

/// test_failure.py::test_get_throws_quickly_when_found_exception: a list
/// `get` fails as soon as one element has failed, without waiting for the
/// elements before it.
fn test_get_throws_quickly_when_found_exception() {
    one_node(2.0);
    let slow = sleep_ms::remote(20_000u64);
    let bad = fails::remote("boom".to_string());
    let t = Instant::now();
    let e = rustray::get_all(&[slow.clone(), bad]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TaskFailed, "{e}");
    assert!(e.message().contains("boom"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "waited {:?} for the slow element",
        t.elapsed()
    );
    let _ = rustray::cancel(&slow);
}

// ---------------------------------------------------------------- cancel

/// test_cancel.py::test_remote_cancel: cancelling a ref this process
/// borrows (a task returned it; its owner is that task's worker) reaches
/// the owner and cancels the task.
fn test_remote_cancel() {
    one_node(2.0);
    let outer = spawn_sleeper::remote(60_000u64);
    let inner = rustray::get_timeout(&outer, Duration::from_secs(30)).expect("inner ref");
    // Let the inner task start running.
    std::thread::sleep(Duration::from_millis(300));
    rustray::cancel(&inner).expect("cancel");
    let t = Instant::now();
    let e = rustray::get_timeout(&inner, Duration::from_secs(20)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

// ---------------------------------------------------------------- resources

/// test_basic.py::test_fractional_resources (its invalid case): a GPU is
/// a whole number or a fraction below one.
fn test_fractional_gpus_above_one_rejected() {
    one_node(1.0);
    let r = inc::options().num_gpus(1.5).remote(1u64);
    let e = rustray::get_timeout(&r, Duration::from_secs(10)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("whole number"), "{e}");
    // 2 GPUs and half a GPU are valid requests (infeasible here: no GPUs).
    let e = rustray::get_timeout(
        &inc::options().num_gpus(2.0).remote(1u64),
        Duration::from_secs(30),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
}

fn main() {
    common::enter_cluster_role();
    common::run(&[
        ("test_wait_empty_list", test_wait_empty_list),
        ("test_wait_invalid_arguments", test_wait_invalid_arguments),
        ("test_wait_fetch_local", test_wait_fetch_local),
        (
            "test_get_throws_quickly_when_found_exception",
            test_get_throws_quickly_when_found_exception,
        ),
        ("test_remote_cancel", test_remote_cancel),
        (
            "test_fractional_gpus_above_one_rejected",
            test_fractional_gpus_above_one_rejected,
        ),
    ]);
}
