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
    sleep_ms::remote(ms).unwrap()
}

#[rustray::remote]
fn bytes_here(n: usize) -> Vec<u8> {
    vec![7u8; n]
}

/// An application's own error type, returned by value from a task.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AppError {
    Transient { attempt: u32 },
    Fatal(String),
}

/// Counts its runs in `marker`; the first `fail` runs return `err` (or
/// panic, for `Fatal("panic")`), later ones the run's number.
#[rustray::remote]
fn app_result(marker: String, fail: u32, fatal: bool) -> Result<u32, AppError> {
    let runs = count_run_or_die(&marker, 0);
    if runs > fail {
        return Ok(runs);
    }
    if fatal {
        Err(AppError::Fatal(format!("run {runs}")))
    } else {
        Err(AppError::Transient { attempt: runs })
    }
}

/// Panics on its first `fail` runs (counted in `marker`).
#[rustray::remote]
fn panics_then_ok(marker: String, fail: u32) -> u32 {
    let runs = count_run_or_die(&marker, 0);
    assert!(runs > fail, "run {runs} fails on purpose");
    runs
}

#[rustray::remote]
fn my_pid() -> u32 {
    std::process::id()
}

/// Frees the objects it is given (a borrower's free goes to the owner).
#[rustray::remote]
fn frees_them(refs: Vec<rustray::ObjectRef<Vec<u8>>>) -> usize {
    rustray::free(&refs).expect("free");
    refs.len()
}

#[rustray::remote]
fn len_after(ms: u64, data: Vec<u8>) -> usize {
    std::thread::sleep(Duration::from_millis(ms));
    data.len()
}

#[rustray::remote]
fn big_after(ms: u64, n: usize) -> Vec<u8> {
    std::thread::sleep(Duration::from_millis(ms));
    vec![3u8; n]
}

/// Puts an object (this worker owns it), waits, returns a ref to it and
/// this process's pid.
#[rustray::remote]
fn owns_one(ms: u64) -> (rustray::ObjectRef<Vec<u8>>, u32) {
    let r = rustray::put(vec![9u8; 1 << 20]).expect("put");
    std::thread::sleep(Duration::from_millis(ms));
    (r, std::process::id())
}

/// An actor that reports its process and can sleep or exit on request.
pub struct Holder {
    calls: u64,
}

#[rustray::actor]
impl Holder {
    pub fn new() -> Self {
        Holder { calls: 0 }
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    pub fn slow(&mut self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        self.calls += 1;
        self.calls
    }

    pub fn exit(&self) -> u32 {
        std::process::exit(0)
    }

    pub fn node(&self) -> String {
        rustray::node_name().expect("node name")
    }

    pub fn quit(&self) -> u32 {
        let e = rustray::exit_actor();
        panic!("exit_actor returned: {e}");
    }

    /// Two results, two objects (Ray's `@ray.method(num_returns=2)`).
    #[rustray::method(num_returns = 2)]
    pub fn split(&mut self, x: u64) -> (u64, String) {
        self.calls += 1;
        (x * 2, format!("call {}", self.calls))
    }

    #[rustray::method(num_returns = 3)]
    pub fn three(&self) -> (u8, Vec<u32>, Option<bool>) {
        (1, vec![2, 3], Some(true))
    }

    pub fn assigned(&self) -> Vec<(String, f64)> {
        let c = rustray::get_runtime_context().expect("context");
        c.assigned_resources.into_iter().collect()
    }

    pub fn context(&self) -> (Option<String>, Option<String>, bool) {
        let c = rustray::get_runtime_context().expect("context");
        (c.actor_id, c.task_id, c.is_driver)
    }
}

/// What the running task holds, from its runtime context.
#[rustray::remote]
fn assigned() -> Vec<(String, f64)> {
    let c = rustray::get_runtime_context().expect("context");
    c.assigned_resources.into_iter().collect()
}

/// This task's node and what it holds.
#[rustray::remote]
fn node_and_assigned() -> (String, Vec<(String, f64)>) {
    let c = rustray::get_runtime_context().expect("context");
    (c.node_name, c.assigned_resources.into_iter().collect())
}

/// The worker id of the process running the task.
#[rustray::remote]
fn worker_id_here() -> String {
    rustray::get_runtime_context().expect("context").worker_id
}

/// The runtime context inside a task: (task id, actor id, is_driver, node).
#[rustray::remote]
fn task_context() -> (Option<String>, Option<String>, bool, String) {
    let c = rustray::get_runtime_context().expect("context");
    (c.task_id, c.actor_id, c.is_driver, c.node_name)
}

/// An actor whose constructor kills its own process the first `n` times it
/// runs for a marker file (it counts runs in the file).
pub struct DiesInCtor {
    runs: u32,
}

#[rustray::actor]
impl DiesInCtor {
    pub fn new(marker: String, n: u32) -> Self {
        let runs = count_run_or_die(&marker, n);
        DiesInCtor { runs }
    }

    pub fn runs(&self) -> u32 {
        self.runs
    }
}

/// Kills this process (SIGKILL) as a crash would.
fn kill_self() {
    // SAFETY: sending SIGKILL to our own process; nothing runs after it.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

/// Kills its worker process the first `n` times it runs for `marker`.
#[rustray::remote]
fn dies_n_times(marker: String, n: u32) -> u32 {
    count_run_or_die(&marker, n)
}

/// Counts this run in the `marker` file; the first `n` runs kill their
/// own process there (a crash), later ones return their number.
fn count_run_or_die(marker: &str, n: u32) -> u32 {
    let runs = std::fs::read_to_string(marker)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(marker, runs.to_string()).expect("marker");
    if runs <= n {
        kill_self();
    }
    runs
}

/// An actor that creates other actors (it is their owner).
pub struct Creator {
    made: Vec<rustray::ActorHandle<Holder>>,
}

#[rustray::actor]
impl Creator {
    pub fn new() -> Self {
        Creator { made: Vec::new() }
    }

    /// A new `Holder` (named and detached when `name` is given), kept here
    /// too; returns its handle and process.
    pub fn make(&mut self, name: Option<String>) -> (rustray::ActorHandle<Holder>, u32) {
        let h = match name {
            Some(n) => Holder::options()
                .name(&n)
                .lifetime_detached()
                .remote(())
                .expect("detached actor"),
            None => Holder::remote().expect("actor"),
        };
        let pid = rustray::get(&h.pid()).expect("pid");
        self.made.push(h.clone());
        (h, pid)
    }
}

/// An actor whose constructor is slow from its second run on (a restart),
/// so a test can act while it restarts.
pub struct SlowRestart {
    runs: u32,
}

#[rustray::actor]
impl SlowRestart {
    pub fn new(marker: String, ms: u64) -> Self {
        let runs = count_run_or_die(&marker, 0);
        if runs > 1 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        SlowRestart { runs }
    }

    pub fn runs(&self) -> u32 {
        self.runs
    }

    pub fn exit(&self) -> u32 {
        std::process::exit(0)
    }

    /// Ends the first incarnation's process; later ones answer their run.
    pub fn exit_first(&self) -> u32 {
        if self.runs == 1 {
            std::process::exit(0)
        }
        self.runs
    }
}

/// Ray's actor_restart.py example: exits its process after 10 calls.
pub struct Flaky {
    counter: u32,
}

#[rustray::actor]
impl Flaky {
    pub fn new() -> Self {
        Flaky { counter: 0 }
    }

    pub fn increment_and_possibly_fail(&mut self) -> u32 {
        if self.counter == 10 {
            std::process::exit(0);
        }
        self.counter += 1;
        self.counter
    }
}

/// Ray's latch (test_threaded_actor.py / test_actor.py's
/// max_concurrency cases): `wait` blocks until `count_down` has run `n`
/// times, which only a threaded actor can do while `wait` runs.
pub struct Latch {
    left: std::sync::Mutex<u32>,
    cv: std::sync::Condvar,
}

#[rustray::actor]
impl Latch {
    pub fn new(n: u32) -> Self {
        Latch {
            left: std::sync::Mutex::new(n),
            cv: std::sync::Condvar::new(),
        }
    }

    /// True if the latch opened within `ms`.
    pub fn wait(&self, ms: u64) -> bool {
        let left = self.left.lock().expect("latch");
        let (left, _) = self
            .cv
            .wait_timeout_while(left, Duration::from_millis(ms), |n| *n > 0)
            .expect("latch");
        *left == 0
    }

    pub fn count_down(&self) -> u32 {
        let mut left = self.left.lock().expect("latch");
        *left = left.saturating_sub(1);
        self.cv.notify_all();
        *left
    }

    pub fn thread(&self) -> String {
        std::thread::current().name().unwrap_or("?").to_string()
    }

    pub fn reset(&mut self, n: u32) {
        *self.left.get_mut().expect("latch") = n;
    }
}

/// An actor whose state cannot be shared between threads.
pub struct NotSync {
    n: std::cell::Cell<u32>,
}

#[rustray::actor]
impl NotSync {
    pub fn new() -> Self {
        NotSync {
            n: std::cell::Cell::new(0),
        }
    }

    pub fn bump(&self) -> u32 {
        self.n.set(self.n.get() + 1);
        self.n.get()
    }
}

/// Owns the objects it puts (its process is their owner).
pub struct ObjOwner;

#[rustray::actor]
impl ObjOwner {
    pub fn new() -> Self {
        ObjOwner
    }

    /// A small (inline) and a large (store) object owned here.
    pub fn make(&self) -> (rustray::ObjectRef<Vec<u8>>, rustray::ObjectRef<Vec<u8>>) {
        (
            rustray::put(vec![5u8; 16]).expect("small put"),
            rustray::put(vec![6u8; 4 << 20]).expect("large put"),
        )
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// Holds a borrowed handle for `ms`, then calls the actor through it.
#[rustray::remote]
fn call_later(h: rustray::ActorHandle<Holder>, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    rustray::get(&h.slow(0)).expect("the borrowed handle keeps the actor alive")
}

#[rustray::remote]
fn pid_after(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[rustray::remote]
fn node_after(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    rustray::node_name().expect("node name")
}

// ---------------------------------------------------------------- helpers

/// Waits (bounded) until process `pid` is gone.
fn wait_process_gone(pid: u32, within: Duration) {
    let end = Instant::now() + within;
    let path = format!("/proc/{pid}/stat");
    loop {
        // A reaped process has no entry; a zombie ('Z') has exited too.
        match std::fs::read_to_string(&path) {
            Err(_) => return,
            Ok(stat) => {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                if state.starts_with('Z') {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < end,
            "process {pid} still runs after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
fn test_wait_fetch_local() {
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
fn test_get_throws_quickly_when_found_exception() {
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
fn test_remote_cancel() {
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
fn test_fractional_gpus_above_one_rejected() {
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
fn test_fractional_flood_starts_only_the_workers_that_fit() {
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
fn test_hybrid_policy() {
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

// ---------------------------------------------------------------- actors

/// test_actor.py::test_actor_deletion: when the last handle to an actor is
/// dropped, the actor's process exits (after the calls already made through
/// it) and what it held goes back to its node.
fn test_actor_deletion() {
    one_node(1.0);
    let a = Holder::options().num_cpus(1.0).remote(()).expect("actor");
    let pid = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    let pending = a.slow(300);
    drop(a);
    assert_eq!(
        rustray::get_timeout(&pending, Duration::from_secs(30))
            .expect("a call made before the drop runs"),
        1
    );
    wait_process_gone(pid, Duration::from_secs(10));
    if !common::launched() {
        // The actor's CPU is free again: a 1-CPU task runs on this 1-CPU node.
        let r = inc::remote(1u64).unwrap();
        assert_eq!(
            rustray::get_timeout(&r, Duration::from_secs(30)).expect("task"),
            2
        );
    }
}

/// test_actor.py::test_actor_deletion (a handle passed to a task): a
/// borrowed handle keeps the actor alive after its creator dropped its own;
/// once the borrower is done too, the actor ends.
fn test_actor_deletion_after_borrowed_handle() {
    one_node(2.0);
    let a = Holder::remote().expect("actor");
    let pid = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    let r = call_later::remote(a.clone(), 500u64).unwrap();
    drop(a);
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30))
            .expect("call through the borrowed handle"),
        1
    );
    wait_process_gone(pid, Duration::from_secs(10));
}

/// Ray frees an actor's name when the actor is dead for good
/// (test_actor.py's named-actor cases): a named actor whose process exits
/// with no restarts left gives its name back, and the name can be taken
/// again at once.
fn test_named_actor_name_released_when_it_dies() {
    one_node(2.0);
    let name = format!("conformance-{}", std::process::id());
    let a = Holder::options()
        .name(&name)
        .remote(())
        .expect("named actor");
    let pid = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    let e = rustray::get_timeout(&a.exit(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    wait_process_gone(pid, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(10);
    let b = loop {
        match Holder::options().name(&name).remote(()) {
            Ok(b) => break b,
            Err(e) if Instant::now() < end => {
                assert!(e.message().contains("already exists"), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the name of a dead actor stays taken: {e}"),
        }
    };
    assert_eq!(
        rustray::get_timeout(&b.slow(0), Duration::from_secs(30)).expect("call"),
        1
    );
    // A named actor is not ended by dropping handles: it is found by name.
    drop(b);
    let c = rustray::get_actor::<Holder>(&name).expect("still registered");
    assert_eq!(
        rustray::get_timeout(&c.slow(0), Duration::from_secs(30)).expect("call"),
        2
    );
    rustray::kill(&c).expect("kill");
}

/// test_actor_failures.py::test_actor_restart_on_node_failure's creation
/// case (an actor whose process dies in `__init__` is restarted while
/// `max_restarts` allows): the constructor is retried, and fails for good
/// with `ActorDied` once the restarts are used up.
fn test_actor_constructor_retried_when_its_process_dies() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-ctor-{}", std::process::id()));
    let m = marker.display().to_string();
    let _ = std::fs::remove_file(&marker);
    let a = DiesInCtor::options()
        .max_restarts(2)
        .remote((m.clone(), 2))
        .expect("created on the third try");
    assert_eq!(
        rustray::get_timeout(&a.runs(), Duration::from_secs(30)).expect("runs"),
        3
    );
    drop(a);
    let _ = std::fs::remove_file(&marker);
    let e = DiesInCtor::options()
        .max_restarts(1)
        .remote((m, 5))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    let _ = std::fs::remove_file(&marker);
}

/// test_actor_advanced.py::test_actor_load_balancing: many default actors
/// (they hold no CPU) are spread over the nodes, not stacked on one.
fn test_actor_load_balancing() {
    let nodes = nodes(3);
    let live = nodes.iter().filter(|n| n.alive).count();
    let actors: Vec<_> = (0..30).map(|_| Holder::remote().expect("actor")).collect();
    let mut per_node = std::collections::HashMap::<String, usize>::new();
    for a in &actors {
        let n = rustray::get_timeout(&a.node(), Duration::from_secs(60)).expect("node");
        *per_node.entry(n).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        live,
        "30 actors on {live} nodes: {per_node:?}"
    );
    assert!(
        per_node.values().all(|&c| c >= 30 / live / 2),
        "unbalanced: {per_node:?}"
    );
}

/// test_actor_advanced.py::test_actors_on_nodes_with_no_cpus: an actor that
/// asks for nothing needs a CPU to be placed (Ray's 1 CPU for placement, 0
/// for running), so a cluster without CPUs cannot host it (here: the
/// deliberate `Infeasible` error; Ray keeps it pending), while one that
/// asks for 0 CPUs explicitly is placed anywhere.
fn test_actors_on_nodes_with_no_cpus() {
    if common::launched() {
        return; // the launched cluster has CPUs
    }
    rustray::init_with(Config::new().num_cpus(0.0)).expect("cluster starts");
    let e = Holder::remote().map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
    let a = Holder::options()
        .num_cpus(0.0)
        .remote(())
        .expect("a 0-CPU actor");
    assert_eq!(
        rustray::get_timeout(&a.slow(0), Duration::from_secs(30)).expect("call"),
        1
    );
}

/// test_actor_failures.py's `ray.kill(actor, no_restart=False)` cases: the
/// actor's process ends and the actor restarts (fresh state) while
/// `max_restarts` allows; with none left the same kill leaves it dead.
fn test_kill_with_restart() {
    one_node(2.0);
    let a = Holder::options().max_restarts(1).remote(()).expect("actor");
    assert_eq!(
        rustray::get_timeout(&a.slow(0), Duration::from_secs(30)).unwrap(),
        1
    );
    let pid1 = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    rustray::kill_with(&a, false).expect("kill, restart allowed");
    wait_process_gone(pid1, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(30);
    let pid2 = loop {
        match rustray::get_timeout(&a.pid(), Duration::from_secs(30)) {
            Ok(p) if p != pid1 => break p,
            r => {
                assert!(Instant::now() < end, "the actor did not come back: {r:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    // A new incarnation: its state starts over.
    assert_eq!(
        rustray::get_timeout(&a.slow(0), Duration::from_secs(30)).unwrap(),
        1
    );
    rustray::kill_with(&a, false).expect("kill again");
    wait_process_gone(pid2, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match rustray::get_timeout(&a.pid(), Duration::from_secs(30)) {
            Err(e) if e.kind() == ErrorKind::ActorDied => break,
            r => assert!(Instant::now() < end, "no restarts left, yet: {r:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An actor that leaves a mark when it is constructed.
pub struct Marked;

#[rustray::actor]
impl Marked {
    pub fn new(marker: String) -> Self {
        let _ = std::fs::write(&marker, b"x");
        Marked
    }
    pub fn ping(&self) -> u32 {
        1
    }
}

/// Writes its pid to `pid_file`, then creates an actor of one CPU (which
/// waits for a CPU while the caller keeps them busy).
#[rustray::remote]
fn create_marked(pid_file: String, marker: String) -> u32 {
    let _ = std::fs::write(&pid_file, std::process::id().to_string());
    let a = Marked::options()
        .num_cpus(1.0)
        .remote(marker)
        .expect("actor created");
    rustray::get(&a.ping()).expect("ping")
}

/// test_actor_failures.py's pending-creation case: an actor whose creator
/// dies while it waits to be placed is cancelled: it is never created, and
/// holds nothing once the CPUs it waited for come free.
fn test_pending_actor_cancelled_when_its_creator_dies() {
    if common::launched() {
        return; // needs to keep every CPU of the cluster busy
    }
    one_node(2.0);
    let dir = std::env::temp_dir();
    let pid_file = dir.join(format!("rustray-pending-pid-{}", std::process::id()));
    let marker = dir.join(format!("rustray-pending-made-{}", std::process::id()));
    let (pid_file, marker) = (pid_file.display().to_string(), marker.display().to_string());
    let _ = (
        std::fs::remove_file(&pid_file),
        std::fs::remove_file(&marker),
    );
    // One CPU busy for 3 s, the other held by the creator, waiting in
    // `remote()` for its actor's CPU.
    let hog = sleep_ms::options().num_cpus(1.0).remote(3000u64).unwrap();
    let creator = create_marked::options()
        .num_cpus(1.0)
        .max_retries(0)
        .remote(pid_file.clone(), marker.clone())
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(p) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        {
            break p;
        }
        assert!(Instant::now() < end, "the creator never ran");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let e = rustray::get_timeout(&creator, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    rustray::get_timeout(&hog, Duration::from_secs(30)).expect("hog");
    // The CPUs are free now: a live creation would run; a cancelled one
    // does not, and nothing stays held.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !std::path::Path::new(&marker).exists(),
        "the pending actor was created after its creator died"
    );
    let end = Instant::now() + Duration::from_secs(10);
    while rustray::available_resources()
        .expect("available")
        .get("CPU")
        != Some(&2.0)
    {
        assert!(Instant::now() < end, "CPUs stay held");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&pid_file);
}

/// test_actor_failures.py's owner-death cases: an actor fate-shares with
/// the process that created it (here another actor, killed), even while a
/// driver still holds a handle; a detached one outlives its creator.
fn test_actor_ends_with_its_owner_unless_detached() {
    one_node(4.0);
    let creator = Creator::remote().expect("creator");
    let (owned, owned_pid) =
        rustray::get_timeout(&creator.make(None), Duration::from_secs(30)).expect("owned actor");
    let name = format!("detached-{}", std::process::id());
    let (detached, detached_pid) =
        rustray::get_timeout(&creator.make(Some(name.clone())), Duration::from_secs(30))
            .expect("detached actor");
    rustray::kill(&creator).expect("kill the creator");
    wait_process_gone(owned_pid, Duration::from_secs(10));
    let e = rustray::get_timeout(&owned.pid(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    assert!(e.message().contains("owner"), "{e}");
    assert_eq!(
        rustray::get_timeout(&detached.pid(), Duration::from_secs(30)).expect("detached lives"),
        detached_pid
    );
    let found = rustray::get_actor::<Holder>(&name).expect("found by name");
    drop(detached);
    assert_eq!(
        rustray::get_timeout(&found.slow(0), Duration::from_secs(30)).expect("still alive"),
        1
    );
    rustray::kill(&found).expect("kill the detached actor");
}

/// test_actor.py::test_exit_actor: `exit_actor()` inside a method ends the
/// actor for good (restarts or not); outside an actor it is an error.
fn test_exit_actor() {
    one_node(2.0);
    let e = rustray::exit_actor();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let a = Holder::options().max_restarts(3).remote(()).expect("actor");
    let pid = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    let e = rustray::get_timeout(&a.quit(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    wait_process_gone(pid, Duration::from_secs(10));
    let e = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    assert!(e.message().contains("exit_actor"), "{e}");
}

/// test_actor_unavailable.py's restarting case: a call made while the
/// actor restarts, with no `max_task_retries`, fails at once with
/// `ActorUnavailable` (it does not wait for the restart); calls made once
/// it is back reach it.
fn test_actor_unavailable_while_restarting() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-slowrestart-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let a = SlowRestart::options()
        .max_restarts(1)
        .remote((marker.display().to_string(), 3000))
        .expect("actor");
    assert_eq!(
        rustray::get_timeout(&a.runs(), Duration::from_secs(30)).unwrap(),
        1
    );
    // The call running when the process dies fails (no max_task_retries).
    let e = rustray::get_timeout(&a.exit(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    let t0 = Instant::now();
    let e = rustray::get_timeout(&a.runs(), Duration::from_secs(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorUnavailable, "{e}");
    // "At once": well before the 3 s constructor could have finished.
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    let end = Instant::now() + Duration::from_secs(30);
    let runs = loop {
        match rustray::get_timeout(&a.runs(), Duration::from_secs(30)) {
            Ok(r) => break r,
            Err(e) if e.kind() == ErrorKind::ActorUnavailable && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the restarted actor is not reachable: {e}"),
        }
    };
    assert_eq!(runs, 2, "the second incarnation answers");
    let _ = std::fs::remove_file(&marker);
}

/// test_actor_failures.py's max_task_retries cases, with one retry: a call
/// whose process dies under it spends its retry on the restarted actor,
/// waiting for the restart; it does not fail fast as an unretryable call
/// would, since it was made with `max_task_retries`.
fn test_actor_call_with_one_retry_waits_for_the_restart() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-oneretry-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let a = SlowRestart::options()
        .max_restarts(1)
        .max_task_retries(1)
        .remote((marker.display().to_string(), 1500))
        .expect("actor");
    let r = rustray::get_timeout(&a.exit_first(), Duration::from_secs(60));
    assert_eq!(r.expect("the retry reaches the restarted actor"), 2);
    let _ = std::fs::remove_file(&marker);
}

/// test_actor_advanced.py's named-actor cases: a handle found by name
/// while the actor's constructor still runs queues its calls until the
/// actor is up (only a restart fails calls at once).
fn test_calls_to_an_actor_being_created_wait() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-slowctor-{}", std::process::id()));
    std::fs::write(&marker, "1").expect("marker"); // next run is slow
    let name = format!("slow-ctor-{}", std::process::id());
    let m = marker.display().to_string();
    let n = name.clone();
    let creator = std::thread::spawn(move || {
        SlowRestart::options()
            .name(&n)
            .remote((m, 1000))
            .expect("created")
    });
    let end = Instant::now() + Duration::from_secs(30);
    let found = loop {
        match rustray::get_actor::<SlowRestart>(&name) {
            Ok(h) => break h,
            Err(e) => {
                assert!(Instant::now() < end, "never registered: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    assert!(
        !creator.is_finished(),
        "the constructor should still be running"
    );
    assert_eq!(
        rustray::get_timeout(&found.runs(), Duration::from_secs(30)).expect("waits for creation"),
        2
    );
    let a = creator.join().expect("creator thread");
    rustray::kill(&a).expect("kill");
    let _ = std::fs::remove_file(&marker);
}

/// Ray's actor_restart.py (test_actor_failures.py's max_task_retries
/// cases): with `max_task_retries=-1` a call whose actor process dies is
/// sent again to the restarted actor, so 50 calls to an actor that exits
/// every 10 calls all succeed (1..=10 five times); once its restarts are
/// used up, calls fail with `ActorDied`.
fn test_actor_max_task_retries() {
    one_node(2.0);
    let a = Flaky::options()
        .max_restarts(4)
        .max_task_retries(rustray::Retries::Infinite)
        .remote(())
        .expect("actor");
    let mut seen = Vec::new();
    for _ in 0..50 {
        let r = a.increment_and_possibly_fail();
        seen.push(rustray::get_timeout(&r, Duration::from_secs(60)).expect("retried call"));
    }
    let want: Vec<u32> = (0..5).flat_map(|_| 1..=10).collect();
    assert_eq!(seen, want);
    for _ in 0..3 {
        let e = rustray::get_timeout(&a.increment_and_possibly_fail(), Duration::from_secs(60))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    }
}

/// test_actor.py's `get_if_exists` cases: creating a named actor with
/// `get_if_exists` returns the live holder of the name (same actor, its
/// state kept), creates it when there is none, and refuses an actor of
/// another class.
fn test_actor_get_if_exists() {
    one_node(2.0);
    let name = format!("gie-{}", std::process::id());
    let a = Holder::options()
        .name(&name)
        .get_if_exists()
        .remote(())
        .expect("created");
    assert_eq!(
        rustray::get_timeout(&a.slow(0), Duration::from_secs(30)).unwrap(),
        1
    );
    let b = Holder::options()
        .name(&name)
        .get_if_exists()
        .remote(())
        .expect("found");
    assert_eq!(a.id(), b.id());
    assert_eq!(
        rustray::get_timeout(&b.slow(0), Duration::from_secs(30)).unwrap(),
        2
    );
    let e = Holder::options().name(&name).remote(()).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidArgument,
        "taken without get_if_exists: {e}"
    );
    let e = Flaky::options()
        .name(&name)
        .get_if_exists()
        .remote(())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TypeMismatch, "{e}");
    let e = Holder::options().get_if_exists().remote(()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "no name: {e}");
    rustray::kill(&a).expect("kill");
}

/// test_actor.py's `@ray.method(num_returns=N)` cases: each element of a
/// method's returned tuple is its own object, and the calls keep their
/// order.
fn test_actor_method_num_returns() {
    one_node(2.0);
    let a = Holder::remote().expect("actor");
    let (x, label) = a.split(21);
    let (y, label2) = a.split(1);
    assert_eq!(
        rustray::get_timeout(&x, Duration::from_secs(30)).unwrap(),
        42
    );
    assert_eq!(
        rustray::get_timeout(&label, Duration::from_secs(30)).unwrap(),
        "call 1"
    );
    assert_eq!(
        rustray::get_timeout(&label2, Duration::from_secs(30)).unwrap(),
        "call 2"
    );
    assert_eq!(
        rustray::get_timeout(&y, Duration::from_secs(30)).unwrap(),
        2
    );
    let (p, q, r) = a.three();
    assert_eq!(
        rustray::get_timeout(&p, Duration::from_secs(30)).unwrap(),
        1
    );
    assert_eq!(
        rustray::get_timeout(&q, Duration::from_secs(30)).unwrap(),
        vec![2, 3]
    );
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Some(true)
    );
    // A result passes to a task like any other ref.
    assert_eq!(
        rustray::get_timeout(&inc::remote(&x).unwrap(), Duration::from_secs(30)).unwrap(),
        43
    );
}

/// test_threaded_actor.py / test_actor.py's `max_concurrency` cases: a
/// threaded actor runs calls at once (a latch opens while one call waits
/// in it); a default actor runs them one at a time (the same latch times
/// out); a `&mut self` method and a type that is not `Sync` are refused
/// with messages saying why.
fn test_threaded_actor_max_concurrency() {
    one_node(2.0);
    let l = Latch::options()
        .max_concurrency(4)
        .remote(2)
        .expect("threaded actor");
    let opened = l.wait(20_000);
    std::thread::sleep(Duration::from_millis(50));
    l.count_down();
    l.count_down();
    assert!(rustray::get_timeout(&opened, Duration::from_secs(30)).expect("wait"));
    let names: std::collections::HashSet<String> = (0..16)
        .map(|_| l.thread())
        .collect::<Vec<_>>()
        .iter()
        .map(|r| rustray::get_timeout(r, Duration::from_secs(30)).expect("thread"))
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("rustray-actor-")),
        "{names:?}"
    );
    // More calls waiting at once than a caller keeps in flight to an actor
    // that runs one call at a time: a threaded actor is sent them all, and
    // the call that opens the latch behind them.
    let wide = Latch::options()
        .max_concurrency(80)
        .remote(1)
        .expect("threaded actor");
    let waits: Vec<_> = (0..72).map(|_| wide.wait(20_000)).collect();
    wide.count_down();
    for w in &waits {
        assert!(
            rustray::get_timeout(w, Duration::from_secs(30)).expect("wait"),
            "a call behind 72 waiting ones did not reach the threaded actor"
        );
    }
    let e = rustray::get_timeout(&l.reset(1), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TaskFailed, "{e}");
    assert!(e.message().contains("&mut self"), "{e}");

    let serial = Latch::remote(1).expect("default actor");
    let opened = serial.wait(300);
    serial.count_down();
    assert!(
        !rustray::get_timeout(&opened, Duration::from_secs(30)).expect("wait"),
        "a default actor ran count_down while wait was running"
    );
    assert!(rustray::get_timeout(&serial.wait(0), Duration::from_secs(30)).unwrap());

    let e = NotSync::options()
        .max_concurrency(2)
        .remote(())
        .unwrap_err();
    assert!(e.message().contains("not Sync"), "{e}");
    let ok = NotSync::remote().expect("one call at a time is fine");
    assert_eq!(
        rustray::get_timeout(&ok.bump(), Duration::from_secs(30)).unwrap(),
        1
    );
}

/// test_namespace.py's named-actor cases and test_list_actors.py's
/// list_named_actors cases: a name is taken once per namespace, found only
/// in its namespace, and listed there (all namespaces on request) while
/// its actor lives.
fn test_namespaces_and_list_named_actors() {
    one_node(4.0);
    let name = format!("ns-actor-{}", std::process::id());
    let ns = format!("ns-{}", std::process::id());
    let plain = Holder::options()
        .name(&name)
        .remote(())
        .expect("default namespace");
    let other = Holder::options()
        .name(&name)
        .namespace(&ns)
        .remote(())
        .expect("same name, other namespace");
    assert_ne!(plain.id(), other.id());
    assert_eq!(
        rustray::get_actor::<Holder>(&name).unwrap().id(),
        plain.id()
    );
    assert_eq!(
        rustray::get_actor_in::<Holder>(&name, &ns).unwrap().id(),
        other.id()
    );
    let e = rustray::get_actor_in::<Holder>(&name, "no-such-namespace").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorNotFound, "{e}");
    let here = rustray::list_named_actors(false).expect("list");
    assert!(here.contains(&(String::new(), name.clone())), "{here:?}");
    assert!(!here.iter().any(|(n, _)| n == &ns), "{here:?}");
    let all = rustray::list_named_actors(true).expect("list all");
    assert!(all.contains(&(String::new(), name.clone())), "{all:?}");
    assert!(all.contains(&(ns.clone(), name.clone())), "{all:?}");
    rustray::kill(&other).expect("kill");
    let all = rustray::list_named_actors(true).expect("list all");
    assert!(
        !all.contains(&(ns.clone(), name.clone())),
        "a dead actor is not listed: {all:?}"
    );
    rustray::kill(&plain).expect("kill");
}

/// test_failure.py's `max_retries=-1` case: a task retried without end
/// survives any number of worker deaths; a finite budget runs out.
fn test_infinite_retries() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-retries-{}", std::process::id()));
    let m = marker.display().to_string();
    let _ = std::fs::remove_file(&marker);
    let r = dies_n_times::options()
        .max_retries(rustray::Retries::Infinite)
        .remote(m.clone(), 6u32)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(60)).expect("retried"),
        7
    );
    let _ = std::fs::remove_file(&marker);
    let r = dies_n_times::options()
        .max_retries(2)
        .remote(m, 6u32)
        .unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    let _ = std::fs::remove_file(&marker);
}

/// test_scheduling_2.py's node-affinity cases: a hard affinity that cannot
/// be met (no such node, or a node that can never fit the request) fails
/// as unschedulable, for tasks and actors; a soft one runs elsewhere.
fn test_node_affinity_unschedulable() {
    one_node(2.0);
    let here = rustray::node_name().expect("node");
    let hard = |node: &str| SchedulingStrategy::NodeAffinity {
        node: node.to_string(),
        soft: false,
    };
    let r = inc::options()
        .scheduling_strategy(hard("no-such-node"))
        .remote(1u64)
        .unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unschedulable, "{e}");
    assert!(e.message().contains("no-such-node"), "{e}");
    let r = inc::options()
        .num_cpus(512.0)
        .scheduling_strategy(hard(&here))
        .remote(1u64)
        .unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unschedulable, "{e}");
    let e = Holder::options()
        .scheduling_strategy(hard("no-such-node"))
        .remote(())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unschedulable, "{e}");
    let r = inc::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: "no-such-node".into(),
            soft: true,
        })
        .remote(1u64)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        2
    );
    // Without an affinity the same request is infeasible, as before.
    let r = inc::options().num_cpus(512.0).remote(1u64).unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
}

/// test_failure.py's owner-death cases (`OwnerDiedError`): objects
/// fate-share with the process that owns them: once it dies, `get` of its
/// objects fails with `OwnerDied`, also for objects this process read
/// before.
fn test_owner_died_fate_shares_objects() {
    one_node(2.0);
    let owner = ObjOwner::remote().expect("owner actor");
    let pid = rustray::get_timeout(&owner.pid(), Duration::from_secs(30)).expect("pid");
    let (small, large) =
        rustray::get_timeout(&owner.make(), Duration::from_secs(30)).expect("refs");
    assert_eq!(rustray::get(&small).expect("read before"), vec![5u8; 16]);
    assert_eq!(
        rustray::get_view(&large).expect("view before").len(),
        4 << 20
    );
    rustray::kill(&owner).expect("kill the owner");
    wait_process_gone(pid, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(10);
    for r in [&small, &large] {
        loop {
            match rustray::get_timeout(r, Duration::from_secs(10)) {
                Err(e) if e.kind() == ErrorKind::OwnerDied => break,
                other => {
                    assert!(
                        Instant::now() < end,
                        "still readable after its owner died: {:?}",
                        other.map(|v| v.len())
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// This node's store's used bytes once they stop changing: in a launched
/// suite the drivers of earlier tests may still be releasing their blocks.
fn settled_store() -> u64 {
    let end = Instant::now() + Duration::from_secs(10);
    let mut last = rustray::store_stats().expect("store stats").used_bytes;
    let mut same = 0;
    while same < 5 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        let now = rustray::store_stats().expect("store stats").used_bytes;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Issue 9 (soundness; Ray's plasma keeps an object its clients hold): a
/// borrower's zero-copy view of a block on its node survives the owner's
/// death. The object is gone for new reads (`OwnerDied`), but its bytes are
/// not reused, and rewritten, under the live view; they go when it does.
fn test_view_outlives_its_dead_owner() {
    one_node(2.0);
    let base = settled_store();
    let here = rustray::node_name().expect("node");
    let owner = ObjOwner::options()
        .scheduling_strategy(on(&here))
        .remote(())
        .expect("owner actor on this node");
    let pid = rustray::get_timeout(&owner.pid(), Duration::from_secs(30)).expect("pid");
    let (_small, large) =
        rustray::get_timeout(&owner.make(), Duration::from_secs(30)).expect("refs");
    let view = rustray::get_view(&large).expect("view");
    assert_eq!(view.len(), 4 << 20);
    rustray::kill(&owner).expect("kill the owner");
    wait_process_gone(pid, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(10);
    while rustray::get_timeout(&large, Duration::from_secs(10))
        .map_err(|e| e.kind())
        .err()
        != Some(ErrorKind::OwnerDied)
    {
        assert!(Instant::now() < end, "still readable after its owner died");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Were the block freed, puts of its size would reuse it.
    let others: Vec<_> = (0..4)
        .map(|_| rustray::put(vec![9u8; 4 << 20]).expect("put"))
        .collect();
    assert!(view.iter().all(|b| *b == 6), "rewritten under a live view");
    drop(others);
    drop(view);
    store_back_to(base, "released with the last view");
}

/// Waits (bounded) until this node's store is back to `used` bytes.
fn store_back_to(used: u64, what: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let now = rustray::store_stats().expect("store stats").used_bytes;
        if now <= used {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: {now} bytes used, want {used}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// test_advanced.py::test_internal_free: `free` makes objects unavailable
/// at once (`ObjectFreed`), releases their store memory while refs to them
/// remain, waits for a view still reading the block, works from a borrower
/// (through the owner), and on a result still being computed.
fn test_internal_free() {
    one_node(2.0);
    let base = settled_store();
    let big = rustray::put(vec![1u8; 8 << 20]).expect("put");
    assert!(rustray::store_stats().unwrap().used_bytes >= base + (8 << 20));
    rustray::free(std::slice::from_ref(&big)).expect("free");
    let e = rustray::get(&big).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ObjectFreed, "{e}");
    store_back_to(base, "freed while its ref lives");

    let small = rustray::put(7u64).expect("put");
    rustray::free(std::slice::from_ref(&small)).expect("free");
    assert_eq!(
        rustray::get(&small).unwrap_err().kind(),
        ErrorKind::ObjectFreed
    );

    // A view keeps the block until it is dropped.
    let viewed = rustray::put(vec![2u8; 8 << 20]).expect("put");
    let view = rustray::get_view(&viewed).expect("view");
    rustray::free(std::slice::from_ref(&viewed)).expect("free");
    assert!(
        rustray::get_view(&viewed).is_err(),
        "no new view of a freed object"
    );
    // Were the block freed, the next put of its size would reuse it and
    // write under the view. (Bounds below are absolute: a launched suite's
    // earlier drivers may still be releasing blocks of their own.)
    let next = rustray::put(vec![9u8; 8 << 20]).expect("put");
    assert!(
        rustray::store_stats().unwrap().used_bytes >= 2 * (8 << 20),
        "freed under a live view"
    );
    assert!(view.iter().all(|b| *b == 2), "rewritten under a live view");
    drop(view);
    rustray::free(&[next]).expect("free");
    store_back_to(base, "released when the view went");

    // A borrower's free reaches the owner.
    let lent = rustray::put(vec![4u8; 1 << 20]).expect("put");
    assert_eq!(
        rustray::get_timeout(
            &frees_them::remote(vec![lent.clone()]).unwrap(),
            Duration::from_secs(30)
        )
        .unwrap(),
        1
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match rustray::get(&lent) {
            Err(e) if e.kind() == ErrorKind::ObjectFreed => break,
            other => {
                assert!(
                    Instant::now() < end,
                    "still there: {:?}",
                    other.map(|v| v.len())
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    store_back_to(base, "freed by a borrower");

    // The argument of a task in flight: kept while the task may read it,
    // released when the task ends though refs to it live on.
    let arg = rustray::put(vec![5u8; 8 << 20]).expect("put");
    let len = len_after::remote(300u64, &arg).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    rustray::free(std::slice::from_ref(&arg)).expect("free");
    match rustray::get_timeout(&len, Duration::from_secs(30)) {
        Ok(n) => assert_eq!(n, 8 << 20),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ObjectFreed, "{e}"),
    }
    store_back_to(base, "an argument freed while its task ran");
    drop(arg);

    // A result still being computed: freed when it arrives.
    let pending = big_after::remote(200u64, 4 << 20).unwrap();
    rustray::free(std::slice::from_ref(&pending)).expect("free");
    assert_eq!(
        rustray::get(&pending).unwrap_err().kind(),
        ErrorKind::ObjectFreed
    );
    std::thread::sleep(Duration::from_millis(400));
    store_back_to(base, "a freed task result");
}

/// test_reference_counting.py's worker-owned objects: a worker that owns
/// an object a driver still holds is not ended by the raylet when it has
/// more idle workers than it keeps (Ray keeps owners alive); the object
/// stays readable.
fn test_idle_owner_worker_is_kept() {
    one_node(1.0);
    let owner = owns_one::options().num_cpus(0.25).remote(400u64).unwrap();
    let others: Vec<_> = (0..3)
        .map(|_| sleep_ms::options().num_cpus(0.25).remote(100u64).unwrap())
        .collect();
    for r in &others {
        rustray::get_timeout(r, Duration::from_secs(30)).expect("sleeper");
    }
    let (obj, pid) = rustray::get_timeout(&owner, Duration::from_secs(30)).expect("owner task");
    // Leases go back after they idle; surplus workers are retired then.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the worker owning a live object was ended"
    );
    assert_eq!(
        rustray::get_timeout(&obj, Duration::from_secs(30))
            .expect("owned by a live worker")
            .len(),
        1 << 20
    );
}

/// A fresh marker file for a test's run counting.
fn marker(tag: &str) -> String {
    let m = std::env::temp_dir().join(format!("rustray-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&m);
    m.display().to_string()
}

/// test_failure.py's `retry_exceptions` cases, typed: a task returning
/// `Result<T, E>` hands its `E` to the caller as a value (fields and all,
/// not a panic's message); `retry_exceptions(true)` retries `Err`s and
/// panics within `max_retries`, keeping the last attempt's result;
/// `retry_exceptions_if` retries only the errors it accepts.
fn test_retry_exceptions() {
    one_node(2.0);
    let m = marker("appres");
    let r = app_result::remote(m.clone(), 2u32, false).unwrap();
    let got = rustray::get_timeout(&r, Duration::from_secs(30)).expect("a value, not a failure");
    assert_eq!(
        got,
        Err(AppError::Transient { attempt: 1 }),
        "not retried by default"
    );

    let m = marker("appres2");
    let r = app_result::options()
        .retry_exceptions(true)
        .max_retries(3)
        .remote(m, 2u32, false)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Ok(3)
    );

    let m = marker("appres3");
    let r = app_result::options()
        .retry_exceptions(true)
        .max_retries(1)
        .remote(m, 5u32, false)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Err(AppError::Transient { attempt: 2 }),
        "the budget runs out: the last attempt's error"
    );

    let transient_only = |e: &AppError| matches!(e, AppError::Transient { .. });
    let m = marker("appres4");
    let r = app_result::options()
        .retry_exceptions_if(transient_only)
        .remote(m, 2u32, false)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Ok(3)
    );
    let m = marker("appres5");
    let r = app_result::options()
        .retry_exceptions_if(transient_only)
        .remote(m, 2u32, true)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Err(AppError::Fatal("run 1".into())),
        "an error the filter refuses is not retried"
    );

    let m = marker("panics");
    let r = panics_then_ok::options()
        .retry_exceptions(true)
        .remote(m.clone(), 2u32)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        3
    );
    let m = marker("panics2");
    let e = rustray::get_timeout(
        &panics_then_ok::remote(m, 2u32).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::TaskFailed,
        "panics are not retried by default: {e}"
    );
    for tag in [
        "appres", "appres2", "appres3", "appres4", "appres5", "panics", "panics2",
    ] {
        let _ = std::fs::remove_file(marker(tag));
    }
}

/// test_basic_2.py::test_max_call_tasks: with `max_calls(n)` a worker
/// exits after running the function n times (its process is gone), and
/// every task still completes, pipelined or not.
fn test_max_calls() {
    one_node(1.0);
    let mut pids = Vec::new();
    for _ in 0..3 {
        let r = my_pid::options().max_calls(1).remote().unwrap();
        pids.push(rustray::get_timeout(&r, Duration::from_secs(30)).expect("task"));
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "a fresh worker per call: {pids:?}");
    for &p in &pids[..2] {
        wait_process_gone(p, Duration::from_secs(10));
    }
    let refs: Vec<_> = (0..20)
        .map(|_| my_pid::options().max_calls(2).remote().unwrap())
        .collect();
    let got = rustray::get_all(&refs).expect("every task completes");
    let mut per_pid = std::collections::HashMap::new();
    for p in &got {
        *per_pid.entry(*p).or_insert(0) += 1;
    }
    assert!(per_pid.values().all(|&n| n <= 2), "{per_pid:?}");
    assert!(per_pid.len() >= 10, "{per_pid:?}");
    // Tasks without the option still reuse their worker.
    let a = rustray::get_timeout(&my_pid::remote().unwrap(), Duration::from_secs(30)).unwrap();
    let b = rustray::get_timeout(&my_pid::remote().unwrap(), Duration::from_secs(30)).unwrap();
    assert_eq!(a, b);
}

// ---------------------------------------------------------------- runtime

/// test_runtime_context.py::test_get_context_dict / test_actor_id: the
/// driver, a task and an actor each see where they run.
fn test_runtime_context() {
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
fn test_nodes_with_their_own_resources() {
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
fn test_cluster_and_available_resources() {
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
fn test_many_custom_resources() {
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
        (
            "test_fractional_flood_starts_only_the_workers_that_fit",
            test_fractional_flood_starts_only_the_workers_that_fit,
        ),
        ("test_hybrid_policy", test_hybrid_policy),
        ("test_actor_deletion", test_actor_deletion),
        (
            "test_actor_deletion_after_borrowed_handle",
            test_actor_deletion_after_borrowed_handle,
        ),
        (
            "test_named_actor_name_released_when_it_dies",
            test_named_actor_name_released_when_it_dies,
        ),
        (
            "test_actor_constructor_retried_when_its_process_dies",
            test_actor_constructor_retried_when_its_process_dies,
        ),
        ("test_actor_load_balancing", test_actor_load_balancing),
        (
            "test_actors_on_nodes_with_no_cpus",
            test_actors_on_nodes_with_no_cpus,
        ),
        ("test_kill_with_restart", test_kill_with_restart),
        ("test_exit_actor", test_exit_actor),
        (
            "test_actor_ends_with_its_owner_unless_detached",
            test_actor_ends_with_its_owner_unless_detached,
        ),
        ("test_infinite_retries", test_infinite_retries),
        (
            "test_actor_unavailable_while_restarting",
            test_actor_unavailable_while_restarting,
        ),
        ("test_actor_max_task_retries", test_actor_max_task_retries),
        (
            "test_actor_call_with_one_retry_waits_for_the_restart",
            test_actor_call_with_one_retry_waits_for_the_restart,
        ),
        (
            "test_calls_to_an_actor_being_created_wait",
            test_calls_to_an_actor_being_created_wait,
        ),
        ("test_actor_get_if_exists", test_actor_get_if_exists),
        (
            "test_actor_method_num_returns",
            test_actor_method_num_returns,
        ),
        (
            "test_threaded_actor_max_concurrency",
            test_threaded_actor_max_concurrency,
        ),
        (
            "test_namespaces_and_list_named_actors",
            test_namespaces_and_list_named_actors,
        ),
        (
            "test_node_affinity_unschedulable",
            test_node_affinity_unschedulable,
        ),
        (
            "test_owner_died_fate_shares_objects",
            test_owner_died_fate_shares_objects,
        ),
        ("test_internal_free", test_internal_free),
        (
            "test_view_outlives_its_dead_owner",
            test_view_outlives_its_dead_owner,
        ),
        (
            "test_idle_owner_worker_is_kept",
            test_idle_owner_worker_is_kept,
        ),
        ("test_retry_exceptions", test_retry_exceptions),
        ("test_max_calls", test_max_calls),
        ("test_runtime_context", test_runtime_context),
        (
            "test_pending_actor_cancelled_when_its_creator_dies",
            test_pending_actor_cancelled_when_its_creator_dies,
        ),
        (
            "test_nodes_with_their_own_resources",
            test_nodes_with_their_own_resources,
        ),
        (
            "test_cluster_and_available_resources",
            test_cluster_and_available_resources,
        ),
        ("test_many_custom_resources", test_many_custom_resources),
    ]);
}
