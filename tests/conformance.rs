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

// ------------------------------------------------------------------ tests
// By what they test, in conformance_parts/.

#[path = "conformance_parts/actors.rs"]
mod actors;
#[path = "conformance_parts/basics.rs"]
mod basics;
#[path = "conformance_parts/objects.rs"]
mod objects;
#[path = "conformance_parts/runtime.rs"]
mod runtime;

use actors::*;
use basics::*;
use objects::*;
use runtime::*;

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
