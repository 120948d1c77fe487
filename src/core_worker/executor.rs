//! Task execution in a worker process.
//!
//! A worker process is the application's own binary re-executed by the
//! raylet with `RUSTRAY_ROLE=worker`; its `rustray::init()` lands here and
//! never returns. Tasks pushed by lease holders (and actor calls) arrive on
//! connection threads and queue up; the process's main thread runs them one
//! at a time, in arrival order, which gives actors their single-threaded,
//! per-caller-ordered semantics.
//!
//! Two shortcuts run a task on the connection thread it arrived on, with
//! no hand-off to the main thread (a wake-up of a sleeping thread, most of
//! a small task's cost on a small node):
//! - a normal task of a function that ran here briefly on average
//!   ([`held::HOLD_SHORT`]), no `max_calls` one, that finds the worker
//!   idle, pipelined or not: the thread runs a pipelined batch as it reads
//!   it, holding each result back while more of the batch is read, and
//!   the last one takes them all out in one write;
//! - an actor call from a caller with nothing else in flight to the actor
//!   (a synchronous caller) that finds the actor idle, nothing queued, no
//!   further message already waiting, and the actor's calls short (under
//!   [`INLINE_MAX`] on average).
//!
//! Order holds: a caller's calls arrive on one connection, read one at a
//! time, and anything queued runs first. Results go back without ever
//! blocking on the socket ([`Conn::try_send`], [`Conn::post`]): a
//! connection thread blocked writing to a caller that is itself blocked
//! writing to us would stop both. What the socket does not take is
//! flushed by the main thread or a flusher thread. The task's own sends
//! (tasks it submits, calls it makes) go out at once, not with the batch.
//! While a task run this way is busy (the worker blocks in `get`, or it
//! has run [`inline::LEND_AFTER`]), the connection's reading is lent to a
//! thread of its own ([`inline`]), so pushes behind it are handed back or
//! queued as with the main thread, and a cancel lands: never left unread
//! (one of them may make what it waits for).
//!
//! Results of short tasks travel in batches ([`held`]): while the task
//! queued next ran briefly here on average, a finished task's result is
//! held back to go out in one write with the next ones, which costs the
//! owner one wake-up for many results rather than one each.
//!
//! Round trips with a caller that waits on each answer (a chain of tasks,
//! one `get` per call) are spent awake: after a task that came alone
//! (`TaskSpec::alone`), the main thread spins briefly for the next push
//! before it sleeps, and the connection thread spins briefly for the next
//! push after an inline actor call or a second lone short task in a row
//! ([`crate::transport::expect_input_soon`]). On a VM, waking a sleeping
//! CPU is most of a socket round trip; a pipelined caller's tasks come
//! alone only at the start of a burst (nothing else in flight on the
//! lease), so they cost almost no spinning.
//!
//! While the running task blocks in `get`/`wait`, the worker tells its raylet
//! (which lends the task's CPUs to others) and hands the tasks queued behind
//! it back to their owners, so nothing waits on a blocked worker ([`block`]).
//!
//! The worker's stdout and stderr go through a pipe ([`output`]): each line
//! is copied to the worker's log file and to the terminal prefixed with
//! `(pid=N)`, as Ray's driver prints worker output.

use super::exec_queue::{Admit, Cancelled};
use super::CoreWorker;
use crate::codec;
use crate::core_worker::function_manager::registry_actor;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{TaskId, WorkerId};
use crate::protocol::PeerMsg;
use crate::session::{log, Session};
use crate::transport::{ActorSpec, Conn, Payload, TaskSpec};
use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

mod block;
mod held;
mod inline;
mod output;
mod pool;
mod running;
pub(crate) use block::BlockGuard;
use held::Held;
pub(crate) use held::HELD_RESULTS;
pub(crate) use output::exit_flushing_output;
use output::forward_output;
use running::{construct, run};

type Item = super::exec_queue::Item<Arc<Conn>>;
type Queue = super::exec_queue::Queue<Arc<Conn>>;

/// Actor calls shorter than this on average may run on their connection
/// thread (longer ones would keep it from reading the caller's messages).
const INLINE_MAX: std::time::Duration = std::time::Duration::from_micros(500);

/// An actor's class name and state.
type ActorState = (String, Box<dyn Any + Send>);

/// The execution queue shared between connection threads and the main thread.
pub(crate) struct ExecShared {
    q: Mutex<Queue>,
    cv: Condvar,
    /// The actor this worker hosts, once constructed. Only the holder of
    /// `Queue::current` locks it.
    actor: Mutex<Option<ActorState>>,
    /// The actor this worker hosts (set before its constructor runs).
    pub(crate) actor_id: Mutex<Option<crate::ids::ActorId>>,
    /// Moving average of the actor's call time, in nanoseconds (starts
    /// above the bar: a new actor's first calls go to the main thread until
    /// they are measured short).
    call_ns: std::sync::atomic::AtomicU64,
    /// Tasks run here, by function, for those with `max_calls`.
    calls: Mutex<std::collections::HashMap<String, u32>>,
    /// What the running task (or the hosted actor) holds: amounts, and
    /// the GPUs by device id.
    assigned: Mutex<(crate::scheduler::ResourceSet, Option<Vec<u32>>)>,
    /// A threaded actor (`max_concurrency` > 1) is hosted: its calls go
    /// to `pool` and run on its threads, not on the main thread.
    threaded: std::sync::atomic::AtomicBool,
    pool: Mutex<VecDeque<(TaskSpec, Arc<Conn>)>>,
    pool_cv: Condvar,
    /// Items queued for the main thread so far: what it watches while it
    /// spins before sleeping (see `worker_main`).
    pushed: std::sync::atomic::AtomicU64,
    /// The main thread sleeps on `cv` (written under `q`'s lock).
    sleeping: std::sync::atomic::AtomicBool,
    /// Moving average of each function's run time here, in nanoseconds:
    /// whether the task queued next is short enough to hold a result back
    /// for (see [`held::HOLD_SHORT`]).
    run_ns: Mutex<std::collections::HashMap<String, u64>>,
    /// The connections results are held back on, and since when.
    held: Mutex<Held>,
    /// The task running on a connection thread, if any (see `inline`).
    inline: Mutex<inline::Inline>,
    /// Wakes the hold watch (see `held`).
    held_cv: Condvar,
}

thread_local! {
    /// On a connection thread: the last task pushed on it came alone.
    static LAST_PUSH_ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The call a threaded actor's pool thread is running.
    static POOL_TASK: std::cell::Cell<Option<TaskId>> = const { std::cell::Cell::new(None) };
}

/// A threaded actor's state, shared by its pool threads.
type SharedActor = (String, Arc<dyn Any + Send + Sync>);

impl Default for ExecShared {
    fn default() -> Self {
        ExecShared {
            q: Mutex::default(),
            cv: Condvar::new(),
            actor: Mutex::new(None),
            actor_id: Mutex::new(None),
            call_ns: std::sync::atomic::AtomicU64::new(2 * INLINE_MAX.as_nanos() as u64),
            calls: Mutex::default(),
            assigned: Mutex::default(),
            threaded: std::sync::atomic::AtomicBool::new(false),
            pool: Mutex::default(),
            pool_cv: Condvar::new(),
            pushed: std::sync::atomic::AtomicU64::new(0),
            sleeping: std::sync::atomic::AtomicBool::new(false),
            run_ns: Mutex::default(),
            held: Mutex::default(),
            inline: Mutex::default(),
            held_cv: Condvar::new(),
        }
    }
}

impl ExecShared {
    /// Something was queued for the main thread, or its task ended: wakes
    /// it (its spin sees the count change).
    fn wake_main(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.pushed.fetch_add(1, SeqCst);
        // A notify is a system call even with nobody waiting: only for a
        // main thread asleep (set under the queue's lock, which the caller
        // took to queue what it wakes it for, so it is seen here), and
        // only once per sleep: a thread woken takes a while to run, and the
        // pushes read meanwhile would each notify it again.
        if self.sleeping.swap(false, SeqCst) {
            self.cv.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task (or actor call) this worker is running, if any.
    pub(crate) fn current_task(&self) -> Option<TaskId> {
        if let Some(t) = POOL_TASK.with(|t| t.get()) {
            return Some(t);
        }
        self.lock().current()
    }

    /// What the running task or the hosted actor holds (Ray's
    /// `get_assigned_resources`).
    pub(crate) fn assigned(&self) -> Vec<(String, f64)> {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .to_vec()
    }

    /// The GPUs the running task (or the hosted actor) holds.
    pub(crate) fn gpu_ids(&self) -> Vec<u32> {
        let a = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        a.1.clone().unwrap_or_default()
    }

    /// Records what the next task holds and, before its code runs, makes
    /// its GPUs the only ones CUDA shows it (Ray's `CUDA_VISIBLE_DEVICES`,
    /// in the node's numbering; empty for none, so `num_gpus(0)` sees no
    /// GPU). The raylet reuses a worker only for leases of the same devices
    /// (CUDA reads the variable once, at its initialisation), so in a
    /// worker that has run GPU code the value never changes.
    fn assign(&self, r: &crate::scheduler::ResourceSet, gpus: &[u32]) {
        let mut a = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        if a.0 != *r {
            a.0 = r.clone();
        }
        if a.1.as_deref() != Some(gpus) {
            let list: Vec<String> = gpus.iter().map(|g| g.to_string()).collect();
            // Set from the thread about to run user code, under std's
            // environment lock; the worker's other threads do not read the
            // environment through libc.
            std::env::set_var(crate::scheduler::CUDA_VISIBLE_DEVICES, list.join(","));
            a.1 = Some(gpus.to_vec());
        }
    }

    /// Counts one more run of `function` here (for `max_calls`).
    fn count_call(&self, function: &str) -> u32 {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let n = calls.entry(function.to_string()).or_insert(0);
        *n += 1;
        *n
    }
}

impl CoreWorker {
    pub(crate) fn exec_push(self: &Arc<Self>, from: WorkerId, conn: &Arc<Conn>, spec: TaskSpec) {
        if spec.actor.is_some()
            && self
                .exec
                .threaded
                .load(std::sync::atomic::Ordering::Acquire)
        {
            self.exec
                .pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((spec, conn.clone()));
            self.exec.pool_cv.notify_one();
            return;
        }
        // Short enough to run on this thread (see the design note): a
        // normal task of a function that ran briefly here before, or an
        // actor call of an actor whose calls do.
        // Never on a lender: it reads for a task still running, and must
        // not stop reading to run another.
        let short = !crate::transport::on_lender()
            && match spec.actor {
                None => spec.max_calls == 0 && self.exec.runs_short(&spec.function),
                Some(_) => {
                    self.exec.call_ns.load(std::sync::atomic::Ordering::Relaxed)
                        < INLINE_MAX.as_nanos() as u64
                }
            };
        // Decided now, done once the task is queued (not for a task handed
        // back: its owner pushes nothing more until this worker unblocks).
        let prev_alone = LAST_PUSH_ALONE.with(|a| a.get());
        let wait_awake = super::exec_queue::caller_waits_on_each(prev_alone, &spec)
            && self.exec.runs_short(&spec.function);
        let alone = spec.alone;
        // An actor call with more already on the way (pipelining) gets the
        // queue: reading and running then overlap. A short task runs here
        // pipelined or not: its hand-off would cost more than it.
        let (admit, spec) =
            self.exec
                .lock()
                .admit(spec, conn, short, crate::transport::more_input_pending);
        match (admit, spec) {
            (Admit::Cancelled, Some(spec)) => answer_cancelled(conn, &spec),
            (Admit::HandBack, Some(spec)) => {
                let _ = conn.send(&PeerMsg::TasksReturned {
                    tasks: vec![spec.id],
                });
            }
            (Admit::Inline, Some(spec)) => {
                LAST_PUSH_ALONE.with(|a| a.set(alone));
                self.run_inline(from, conn, &spec);
                if wait_awake {
                    // Its caller waits on each result (a chain, a `get`
                    // per task): the next push is a round trip away.
                    crate::transport::expect_input_soon();
                }
            }
            _ => {
                LAST_PUSH_ALONE.with(|a| a.set(alone));
                if wait_awake {
                    crate::transport::expect_input_soon();
                }
                self.exec.wake_main()
            }
        }
    }

    /// Runs the task whose `current` slot this thread holds, reports it,
    /// and hands the queue back to the main thread. `inline`: on a
    /// connection thread, which must never block writing.
    fn run_current(self: &Arc<Self>, conn: &Arc<Conn>, spec: &TaskSpec, inline: bool) {
        let t0 = std::time::Instant::now();
        let out = crate::transport::unbatched(|| {
            let mut actor = self.exec.actor.lock().unwrap_or_else(|p| p.into_inner());
            run(self, spec, actor.as_mut(), None)
        });
        if inline {
            self.end_inline();
        }
        let exiting = spec.max_calls > 0 && self.exec.count_call(&spec.function) >= spec.max_calls;
        let t = t0.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        if spec.actor.is_some() {
            let avg = &self.exec.call_ns;
            let old = avg.load(std::sync::atomic::Ordering::Relaxed);
            avg.store((old / 4) * 3 + t / 4, std::sync::atomic::Ordering::Relaxed);
        }
        if !inline || spec.actor.is_none() {
            // A normal task is measured wherever it ran: a function grown
            // long stops running on connection threads.
            self.exec.ran(&spec.function, t);
        }
        let (more, next_short) = {
            let mut q = self.exec.lock();
            // A worker about to exit (max_calls) keeps the slot: nothing
            // may start here that its owner would count as not started.
            let more = !exiting && q.finish();
            // Held only with two or more queued: the owner then has the
            // batch while the last of them runs, not after (its pipeline
            // would empty and this worker idle for a round trip).
            let next = q.front_task().filter(|_| q.queued() >= 2);
            (
                more,
                !inline && next.is_some_and(|s| self.exec.runs_short(&s.function)),
            )
        };
        let done = PeerMsg::TaskDone {
            task: spec.id,
            returns: out.returns,
            app_error: out.app_error,
            exiting,
            lost_args: out.lost_args,
        };
        if exiting {
            // Ray's max_calls: the result goes out, then the process ends
            // (its owner requeues whatever else it had sent here: none of
            // it started).
            self.exec.flush_held();
            let _ = conn.send(&done);
            log!(
                "worker exits: `{}` ran max_calls = {} times here",
                spec.function,
                spec.max_calls
            );
            exit_flushing_output(0);
        }
        if !inline {
            // Results of short tasks with more queued behind them go out
            // together: one write, and one wake-up of the owner, for many.
            if !self.hold_result(conn, &done, next_short) {
                let _ = conn.send(&done);
                self.exec.flush_held();
            }
        } else if spec.actor.is_none() {
            // A pipelined batch run here: while more of it is read, the
            // result is held (bounded as the main thread's holds are),
            // and the last one takes all out in one write, never waiting
            // for room in the socket.
            if !(crate::transport::more_buffered() && self.hold_result(conn, &done, true)) {
                let _ = conn.post(&done);
                self.exec.post_held();
            }
        } else if let Ok(false) = conn.try_send(&done) {
            self.exec.lock().push(Item::Flush(conn.clone()));
            self.exec.wake_main();
            return;
        } else {
            // An inline call's caller had nothing else in flight: it waits
            // for this answer, and its next call follows a round trip on.
            crate::transport::expect_input_soon();
        }
        if more {
            self.exec.wake_main();
        }
    }

    pub(crate) fn exec_create_actor(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        spec: ActorSpec,
        gpus: Vec<u32>,
    ) {
        self.exec
            .lock()
            .push(Item::Create(spec, gpus, conn.clone()));
        self.exec.wake_main();
    }

    pub(crate) fn exec_cancel(self: &Arc<Self>, conn: &Arc<Conn>, task: TaskId, attempt: u32) {
        let found = self.exec.lock().cancel(task, attempt);
        if let Cancelled::Queued(spec) = found {
            answer_cancelled(conn, &spec);
        } else if let Cancelled::Running = found {
            // A running task cannot be interrupted safely from outside, so,
            // as Ray's force-cancel, the worker process ends; its owner
            // fails the cancelled task and retries the others it had queued.
            log!("task {task:?} cancelled while running; worker exits");
            self.exec.flush_held();
            std::process::exit(1);
        }
    }
}

/// Answers task `spec`, not started, as cancelled. Posted: the reading
/// thread that calls this must not block writing.
fn answer_cancelled(conn: &Arc<Conn>, spec: &TaskSpec) {
    let err = Error::cancelled(&spec.function);
    let _ = conn.post(&PeerMsg::TaskDone {
        task: spec.id,
        returns: error_returns(spec, &err),
        app_error: false,
        exiting: false,
        lost_args: Vec::new(),
    });
}

/// `err` as each of the task's results. They travel inline in its reply,
/// so together they stay within what a reply carries inline: a long
/// message (a panic's, say) times thousands of results is cut to fit
/// rather than make a reply too large to send.
fn error_returns(spec: &TaskSpec, err: &Error) -> Vec<Payload> {
    let blob = error_blob(spec, err);
    spec.returns
        .iter()
        .map(|_| Payload::Inline(blob.clone()))
        .collect()
}

/// `err` encoded as the value of one of `spec`'s results, cut so that
/// one in each of them still fits a reply's inline bound.
fn error_blob(spec: &TaskSpec, err: &Error) -> Vec<u8> {
    let mut blob = codec::encode_error(err);
    let room = crate::core_worker::TASK_INLINE_MAX / spec.returns.len().max(1);
    if blob.len() > room {
        let msg = err.message();
        let mut cut = room.saturating_sub(256).min(msg.len());
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        blob = codec::encode_error(&Error::new(
            err.kind(),
            format!(
                "{}... (the last {} bytes of the message cut: it was repeated in each of {} results)",
                &msg[..cut],
                msg.len() - cut,
                spec.returns.len()
            ),
        ));
        if blob.len() > room {
            // Tens of thousands of results: the kind alone (a reply past
            // one message takes millions).
            blob = codec::encode_error(&Error::new(err.kind(), String::new()));
        }
    }
    blob
}

/// Entry point of a worker process: serve tasks until the raylet goes away.
pub(crate) fn main(session: Session) -> ! {
    crate::session::open_log(&session, &format!("worker-{}", std::process::id()));
    forward_output(&session);
    // The raylet ends its workers with SIGTERM first: lines a finished task
    // printed may still sit in the output pipe, and are written out before
    // the process goes.
    crate::signals::on_terminate(|_| exit_flushing_output(0));
    let cw = match CoreWorker::start(session, false, None) {
        Ok(cw) => cw,
        Err(e) => {
            log!("worker failed to start: {e}");
            eprintln!("rustray worker failed to start: {e}");
            std::process::exit(1);
        }
    };
    log!("worker {} started", cw.id);
    super::set_current(Some(cw.clone()));
    // The last task run came alone: its caller is likely to push the next
    // one as soon as it has the result.
    let mut last_alone = false;
    loop {
        let item = {
            let mut q = cw.exec.lock();
            let mut spun = !last_alone;
            loop {
                // One task at a time: wait while a connection thread runs
                // one.
                if let Some(it) = q.next() {
                    break it;
                }
                if cw.exec.any_held() {
                    // Nothing to run: what was held back goes out first.
                    drop(q);
                    cw.exec.flush_held();
                    q = cw.exec.lock();
                    continue;
                }
                // Out of work: the next task of a chain, or of a caller
                // making one call at a time, is usually a round trip away.
                // Waiting that long awake spares this thread a wake-up
                // (on a VM, one of an idle CPU) per task.
                // (Once per time out of work; the queue is looked at again
                // under the lock after, as a push may land as it ends.)
                if !spun {
                    spun = true;
                    let seen = cw.exec.pushed.load(std::sync::atomic::Ordering::Acquire);
                    drop(q);
                    cw.spin_until(
                        || cw.exec.pushed.load(std::sync::atomic::Ordering::Acquire) != seen,
                        || false,
                    );
                    q = cw.exec.lock();
                    continue;
                }
                cw.exec
                    .sleeping
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                q = cw.exec.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                cw.exec
                    .sleeping
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            }
        };
        match item {
            Item::Task(spec, conn) => {
                last_alone = spec.alone;
                cw.run_current(&conn, &spec, false)
            }
            Item::Flush(conn) => {
                let _ = conn.flush();
            }
            Item::Create(spec, gpus, conn) => {
                *cw.exec.actor_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec.id);
                cw.exec.assign(&spec.shape, &gpus);
                let result = construct(&cw, &spec).and_then(|state| {
                    if spec.max_concurrency > 1 {
                        let shared = pool::share(&spec, state)?;
                        pool::start(&cw, shared, spec.max_concurrency)?;
                    } else {
                        *cw.exec.actor.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((spec.class.clone(), state));
                    }
                    Ok(())
                });
                if let Err(e) = &result {
                    log!("actor {} failed to construct: {e}", spec.class);
                }
                let _ = conn.send(&PeerMsg::ActorCreated { result });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    /// Work queued while the main thread sleeps wakes it once: the first
    /// push takes the flag, and those read before it runs again make no
    /// system call of their own.
    #[test]
    fn a_sleeping_main_thread_is_woken_once() {
        let exec = ExecShared::default();
        exec.wake_main();
        assert!(!exec.sleeping.load(SeqCst), "awake: nothing to notify");
        exec.sleeping.store(true, SeqCst);
        exec.wake_main();
        assert!(!exec.sleeping.load(SeqCst), "the flag is taken by the wake");
        exec.wake_main();
        assert_eq!(exec.pushed.load(SeqCst), 3, "every push is counted");
    }

    /// A task's error repeated in each of its results stays within what a
    /// reply carries inline: a 100 KB panic message in 11,000 results
    /// (1.1 GB, past one message: the reply could not be sent) is cut to
    /// fit; a short one in a few results is kept whole.
    #[test]
    fn an_error_in_every_result_fits_one_reply() {
        let returns = |n: u64| TaskSpec {
            id: crate::ids::TaskId {
                owner: WorkerId(0x0001_0000_0042),
                seq: 1,
            },
            function: "f".into(),
            args: Vec::new(),
            returns: (0..n)
                .map(|seq| crate::ids::ObjectId {
                    owner: WorkerId(0x0001_0000_0042),
                    seq,
                })
                .collect(),
            actor: None,
            alone: false,
            max_calls: 0,
            resources: Default::default(),
            arg_copies: Vec::new(),
            gpus: Vec::new(),
            attempt: 0,
        };
        let long = Error::new(ErrorKind::TaskFailed, "é".repeat(50_000));
        let out = error_returns(&returns(11_000), &long);
        assert_eq!(out.len(), 11_000);
        let bytes: usize = out
            .iter()
            .map(|p| match p {
                Payload::Inline(b) => b.len(),
                Payload::Store { .. } => panic!("an error travels inline"),
            })
            .sum();
        assert!(
            bytes <= crate::core_worker::TASK_INLINE_MAX,
            "{bytes} bytes"
        );
        let Payload::Inline(b) = &out[0] else {
            unreachable!()
        };
        let e = codec::parse(b).unwrap().error().expect("an error");
        assert_eq!(e.kind(), ErrorKind::TaskFailed);
        assert!(e.message().starts_with("éé"), "{e}");
        assert!(e.message().contains("cut"), "{e}");
        let short = Error::new(ErrorKind::TaskFailed, "boom");
        let out = error_returns(&returns(3), &short);
        let Payload::Inline(b) = &out[2] else {
            unreachable!()
        };
        assert_eq!(codec::parse(b).unwrap().error().unwrap().message(), "boom");
    }
}
