//! Ray Core semantics on one node: tasks, objects, actors, errors.
//! Names follow Ray's own tests (`test_wait_timeout`, `test_actor_ordering`, ...).

mod common;

use rustray::{ErrorKind, ObjectRef};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- remote fns

#[rustray::remote]
fn read_array(seed: u64) -> Vec<f64> {
    (0..100).map(|i| (seed * 100 + i) as f64).collect()
}

#[rustray::remote]
fn add(a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter().zip(&b).map(|(x, y)| x + y).collect()
}

#[rustray::remote]
fn inc(x: u64) -> u64 {
    x + 1
}

#[rustray::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[rustray::remote]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Results this worker held back so far (see `test_results_are_not_held_behind_a_long_task`).
#[rustray::remote]
fn held_results() -> u64 {
    rustray::__private::held_results()
}

#[rustray::remote]
fn fails(msg: String) -> u64 {
    panic!("{msg}");
}

#[rustray::remote(num_returns = 2)]
fn split(x: u64) -> (u64, String) {
    (x * 2, format!("n={x}"))
}

#[rustray::remote(num_returns = 3)]
fn large_between(small: usize, large: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (vec![7u8; small], vec![9u8; large], vec![8u8; small])
}

#[rustray::remote]
fn pid() -> u32 {
    std::process::id()
}

/// Nests: each level submits the next and blocks in `get` on it.
#[rustray::remote]
fn nest(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    rustray::get(&nest::remote(depth - 1).unwrap()).expect("inner level") + 1
}

/// Kills its own worker process the first time it runs for `marker`.
#[rustray::remote]
fn die_once(marker: String) -> String {
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"x").expect("marker file");
        kill_self();
    }
    "survived".to_string()
}

#[rustray::remote]
fn die_always() -> u64 {
    kill_self();
    0
}

fn kill_self() {
    // SAFETY: sending SIGKILL to our own process.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Boxed {
    label: String,
    inner: ObjectRef<Vec<u8>>,
}

/// Receives a ref inside a value (not resolved by the runtime) and gets it.
#[rustray::remote]
fn sum_boxed(b: Boxed) -> (String, u64) {
    let v = rustray::get_view(&b.inner).expect("boxed ref");
    (b.label, v.iter().map(|x| *x as u64).sum())
}

/// Returns a ref to an object it put itself (the worker owns it).
#[rustray::remote]
fn make_inner(n: u64) -> ObjectRef<u64> {
    rustray::put(n * 10).expect("put in task")
}

#[rustray::remote]
fn call_counter(c: rustray::ActorHandle<Counter>, times: u64) -> i64 {
    let mut last = 0;
    for _ in 0..times {
        last = rustray::get(&c.incr(1)).expect("actor call from task");
    }
    last
}

#[rustray::remote]
fn gpu_task() -> u64 {
    1
}

/// Returns `x` at once; given a mailbox, waits in `get` for a ref to be
/// posted there, then for its value. Also: how many times this worker
/// lent a connection's reading so far, and whether it ran on the
/// connection thread that read its push.
#[rustray::remote]
fn quick_or_wait(x: u64, mailbox: Option<rustray::ActorHandle<Mailbox>>) -> (u64, u64, bool) {
    let on_conn = std::thread::current().name() == Some("rustray-peer-in");
    let Some(mb) = mailbox else {
        return (x, rustray::__private::lent_readings(), on_conn);
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(r) = rustray::get(&mb.fetch()).expect("the mailbox answers") {
            let v = rustray::get(&r).expect("the value posted").0;
            // A call nobody waits for, made once the reading was lent
            // (what was buffered then is gone): it goes out at once.
            drop(mb.note(v));
            return (v, rustray::__private::lent_readings(), on_conn);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("nothing was posted to the mailbox");
}

/// Recurses `depth` levels of 64 KiB frames (4 MiB of stack at 64, past
/// a default thread's 2 MiB); also whether it ran on the connection thread
/// that read its push.
#[rustray::remote]
fn deep_stack(depth: u64) -> (u64, bool) {
    #[inline(never)]
    fn down(d: u64) -> u64 {
        let frame = std::hint::black_box([d as u8; 64 * 1024]);
        if d == 0 {
            return frame[7] as u64;
        }
        down(d - 1) + std::hint::black_box(frame[100]) as u64
    }
    let on_conn = std::thread::current().name() == Some("rustray-peer-in");
    (down(depth), on_conn)
}

// ---------------------------------------------------------------- actors

pub struct Counter {
    n: i64,
    log: Vec<u64>,
}

#[rustray::actor]
impl Counter {
    pub fn new(start: i64) -> Self {
        Counter {
            n: start,
            log: Vec::new(),
        }
    }

    pub fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }

    pub fn record(&mut self, i: u64) -> usize {
        self.log.push(i);
        self.log.len()
    }

    pub fn log(&self) -> Vec<u64> {
        self.log.clone()
    }

    pub fn crash(&self) -> i64 {
        kill_self();
        0
    }

    pub fn fail(&self) -> i64 {
        panic!("method failed on purpose");
    }
}

pub struct Other;

/// Holds one ref for whoever asks.
pub struct Mailbox {
    posted: Option<ObjectRef<(u64, u64, bool)>>,
    noted: u64,
}

#[rustray::actor]
impl Mailbox {
    pub fn new() -> Self {
        Mailbox {
            posted: None,
            noted: 0,
        }
    }

    pub fn note(&mut self, v: u64) -> u64 {
        self.noted = v;
        v
    }

    pub fn noted(&self) -> u64 {
        self.noted
    }

    pub fn post(&mut self, r: ObjectRef<(u64, u64, bool)>) -> bool {
        self.posted = Some(r);
        true
    }

    pub fn fetch(&self) -> Option<ObjectRef<(u64, u64, bool)>> {
        self.posted.clone()
    }
}

#[rustray::actor]
impl Other {
    pub fn new() -> Self {
        Other
    }

    pub fn ping(&self) -> u8 {
        1
    }

    pub fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

// ------------------------------------------------------------------ tests
// By what they test, in core_parts/.

#[path = "core_parts/failures_and_actors.rs"]
mod failures_and_actors;
#[path = "core_parts/objects.rs"]
mod objects;
#[path = "core_parts/tasks.rs"]
mod tasks;

use failures_and_actors::*;
use objects::*;
use tasks::*;

fn main() {
    common::enter_cluster_role();
    common::run(&[
        ("test_task_graph", test_task_graph),
        ("test_put_get_and_get_many", test_put_get_and_get_many),
        ("test_task_chain", test_task_chain),
        ("test_get_timeout", test_get_timeout),
        ("test_wait_timeout", test_wait_timeout),
        ("test_wait_all", test_wait_all),
        (
            "test_results_are_not_held_behind_a_long_task",
            test_results_are_not_held_behind_a_long_task,
        ),
        (
            "test_results_read_together_are_taken_in_together",
            test_results_read_together_are_taken_in_together,
        ),
        (
            "test_a_chain_does_not_wake_the_driver_per_link",
            test_a_chain_does_not_wake_the_driver_per_link,
        ),
        (
            "test_a_synchronous_caller_reads_its_answer_itself",
            test_a_synchronous_caller_reads_its_answer_itself,
        ),
        (
            "test_a_task_run_on_its_connection_thread_blocks_on_one_behind_it",
            test_a_task_run_on_its_connection_thread_blocks_on_one_behind_it,
        ),
        (
            "test_a_task_run_on_its_connection_thread_has_a_main_threads_stack",
            test_a_task_run_on_its_connection_thread_has_a_main_threads_stack,
        ),
        ("test_num_returns", test_num_returns),
        (
            "test_a_result_that_cannot_be_stored_fails_alone",
            test_a_result_that_cannot_be_stored_fails_alone,
        ),
        (
            "test_finished_tasks_records_are_reused",
            test_finished_tasks_records_are_reused,
        ),
        (
            "test_a_task_with_arguments_past_one_message_runs",
            test_a_task_with_arguments_past_one_message_runs,
        ),
        (
            "test_a_task_whose_small_ref_arguments_pass_one_message_fails",
            test_a_task_whose_small_ref_arguments_pass_one_message_fails,
        ),
        (
            "test_a_task_with_results_past_one_message_returns_them",
            test_a_task_with_results_past_one_message_returns_them,
        ),
        ("test_task_panic_is_reported", test_task_panic_is_reported),
        ("test_get_wrong_type", test_get_wrong_type),
        (
            "test_object_too_large_and_store_full",
            test_object_too_large_and_store_full,
        ),
        ("test_large_objects_zero_copy", test_large_objects_zero_copy),
        (
            "test_the_default_store_has_huge_pages",
            test_the_default_store_has_huge_pages,
        ),
        (
            "test_a_small_dev_shm_does_not_bound_the_default_store",
            test_a_small_dev_shm_does_not_bound_the_default_store,
        ),
        ("test_refs_inside_values", test_refs_inside_values),
        ("test_cancel", test_cancel),
        (
            "test_cancel_a_long_call_of_a_short_function",
            test_cancel_a_long_call_of_a_short_function,
        ),
        (
            "test_cancel_an_actor_call_waiting_for_its_argument",
            test_cancel_an_actor_call_waiting_for_its_argument,
        ),
        (
            "test_worker_killed_task_retried",
            test_worker_killed_task_retried,
        ),
        (
            "test_nested_tasks_deep_on_one_cpu",
            test_nested_tasks_deep_on_one_cpu,
        ),
        (
            "test_infeasible_and_bad_options",
            test_infeasible_and_bad_options,
        ),
        (
            "test_tasks_run_in_worker_processes",
            test_tasks_run_in_worker_processes,
        ),
        ("test_actor_ordering", test_actor_ordering),
        (
            "test_actor_sync_and_burst_calls_mix",
            test_actor_sync_and_burst_calls_mix,
        ),
        (
            "test_actor_state_and_handles_in_tasks",
            test_actor_state_and_handles_in_tasks,
        ),
        ("test_named_actor", test_named_actor),
        ("test_actor_restart", test_actor_restart),
        ("test_kill_actor", test_kill_actor),
        ("test_many_actors", test_many_actors),
        (
            "test_not_initialized_is_an_error",
            test_not_initialized_is_an_error,
        ),
    ]);
}
