//! Wait, get, cancel and resources: Ray's tests of them, ported.

use super::*;

/// test_wait.py::test_wait (its empty-list case): `ray.wait([])` is
/// `([], [])`, checked before any other argument.
pub(super) fn test_wait_empty_list() {
    one_node(1.0);
    for n in [0, 1, 5] {
        let (ready, rest) = rustray::wait::<u64>(&[], n, None).expect("empty wait");
        assert!(ready.is_empty() && rest.is_empty());
    }
}

/// test_wait.py::test_wait (its invalid-argument cases): duplicate refs
/// and `num_returns` 0 are `ValueError`s in Ray.
pub(super) fn test_wait_invalid_arguments() {
    one_node(1.0);
    let a = inc::remote(1u64).unwrap();
    let b = inc::remote(2u64).unwrap();
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
pub(super) fn test_wait_fetch_local() {
    let nodes = nodes(2);
    let there = other_node(&nodes);
    const N: usize = 8 << 20;
    let r = bytes_here::options()
        .scheduling_strategy(on(&there))
        .remote(N)
        .unwrap();
    // With fetch_local off, ready there is ready: nothing is copied here.
    let before = rustray::store_stats().expect("store stats");
    let (ready, _) = rustray::wait_with(
        std::slice::from_ref(&r),
        1,
        Some(Duration::from_secs(60)),
        false,
    )
    .expect("wait");
    assert_eq!(ready.len(), 1);
    let after = rustray::store_stats().expect("store stats");
    assert!(
        after.used_bytes < before.used_bytes + N as u64,
        "fetch_local=false copied it: {before:?} -> {after:?}"
    );
    drop(ready);
    let (ready, _) =
        rustray::wait(std::slice::from_ref(&r), 1, Some(Duration::from_secs(60))).expect("wait");
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
pub(super) fn test_get_throws_quickly_when_found_exception() {
    one_node(2.0);
    let slow = sleep_ms::remote(20_000u64).unwrap();
    let bad = fails::remote("boom".to_string()).unwrap();
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
pub(super) fn test_remote_cancel() {
    one_node(2.0);
    let outer = spawn_sleeper::remote(60_000u64).unwrap();
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
pub(super) fn test_fractional_gpus_above_one_rejected() {
    one_node(1.0);
    let r = inc::options().num_gpus(1.5).remote(1u64).unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(10)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("whole number"), "{e}");
    // 2 GPUs and half a GPU are valid requests (infeasible here: no GPUs).
    let e = rustray::get_timeout(
        &inc::options().num_gpus(2.0).remote(1u64).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
}

/// test_scheduling.py's fractional cases: a flood of short 0.25-CPU tasks
/// on 4 CPUs runs on at most the 16 workers that fit at once (the raylet
/// does not start a worker per queued request).
pub(super) fn test_fractional_flood_starts_only_the_workers_that_fit() {
    if common::launched() {
        return; // needs a node of exactly 4 CPUs
    }
    one_node(4.0);
    // Long enough that leases pile up (each task's worker stays busy while
    // the next requests arrive), short enough for 10,000 to take seconds.
    const FLOOD_TASK_MS: u64 = 2;
    let refs: Vec<_> = (0..10_000)
        .map(|_| {
            pid_after::options()
                .num_cpus(0.25)
                .remote(FLOOD_TASK_MS)
                .unwrap()
        })
        .collect();
    let pids: std::collections::HashSet<u32> = rustray::get_all(&refs)
        .expect("tasks")
        .into_iter()
        .collect();
    assert!(
        pids.len() <= 16,
        "{} workers ran 0.25-CPU tasks on 4 CPUs",
        pids.len()
    );
    // Nor were more started (each worker logs to its own file).
    let logs = rustray::get_runtime_context().expect("context").log_dir;
    let started = std::fs::read_dir(&logs)
        .expect("log dir")
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("worker-") && n.ends_with(".out")
        })
        .count();
    assert!(
        started <= 16,
        "{started} workers were started for 0.25-CPU tasks on 4 CPUs"
    );
}

/// test_scheduling.py::test_hybrid_policy: the default policy packs a node
/// up to half its CPUs, then spreads: 4 long tasks on 2 nodes of 4 CPUs go
/// 2 and 2, not 4 and 0.
pub(super) fn test_hybrid_policy() {
    if common::launched() {
        return; // needs 2 nodes of 4 CPUs
    }
    rustray::init_with(Config::new().local_nodes(2).num_cpus(4.0)).expect("cluster starts");
    // Let each raylet see the other in its cluster view.
    std::thread::sleep(Duration::from_millis(300));
    let refs: Vec<_> = (0..4)
        .map(|_| node_after::remote(1500u64).unwrap())
        .collect();
    let mut per_node = std::collections::HashMap::<String, usize>::new();
    for n in rustray::get_all(&refs).expect("tasks") {
        *per_node.entry(n).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_node.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![2, 2], "{per_node:?}");
}
