//! Task submission from the owner's side (Ray's `NormalTaskSubmitter` and
//! actor submit queues).
//!
//! A submitted task first waits for its `ObjectRef` arguments (dependency
//! resolution happens at the owner, so the worker receives values). It then
//! joins the queue of its *scheduling key*: its resource shape plus where it
//! should run ([`SchedKey`]: near its arguments, a chosen node, or spread).
//! The owner asks a raylet (the target node's, else its own) for worker
//! leases per key and, once granted, pushes
//! tasks straight to the leased worker, reusing the lease for every queued
//! task of the same class ("caching scheduling decisions"). Short tasks are
//! pipelined, about a millisecond of work and up to [`leasing::PIPELINE`] per
//! worker, to hide the round trip; tasks
//! of a class whose service time is unknown yet or long go one per worker,
//! so a burst of long tasks asks for more leases (which the raylet may
//! spill to other nodes) instead of queueing behind one worker. A lease
//! idle for [`leasing::LEASE_IDLE`] goes back to the raylet.
//!
//! A worker whose task blocks in `get` hands its not-yet-started tasks back
//! (they are re-queued here and may get another lease), so pipelining never
//! makes a task wait behind one that waits for it.
//!
//! A worker that dies fails over its tasks: each is retried up to its
//! `max_retries`, then fails with a worker-died error.
//!
//! Actor calls skip leasing: each actor has a queue in submission order and
//! calls are sent in that order over this process's single connection to the
//! actor's worker, which is what gives Ray's per-caller ordering. When the
//! actor's process dies, its calls in flight fail, or, within their
//! `max_task_retries`, go back to the front of the queue for the restarted
//! actor; while it restarts, calls without retries fail at once
//! (`ActorUnavailable`) and the others wait.
//!
//! The sans-IO transitions are `leasing`, `lifecycle` and the queue half
//! of `actors`; the shell is this file (submitting, leases granted or
//! refused, cancels), `dependencies` (arguments by ref), `results` (what
//! workers report back, and workers lost) and the sending half of
//! `actors`.

use super::{CoreWorker, Effects, IdMap, State};
use crate::codec;
use crate::core_worker::function_manager::RetryFilter;
use crate::core_worker::RawRef;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ActorId, LeaseId, ObjectId, TaskId, WorkerId};
use crate::log;
use crate::protocol::PeerMsg;
use crate::scheduler::{ResourceSet, Spill};
use crate::transport::{Payload, TaskSpec};
use std::collections::HashMap;
use std::mem::take;
use std::sync::Arc;
use std::time::Instant;

mod actors;
mod dependencies;
mod leasing;
mod lifecycle;
pub(crate) use lifecycle::new_attempt;
mod results;

use actors::ActorQueue;
pub(crate) use leasing::LEASE_IDLE;
use leasing::{ClassQueue, Env, LeaseState};
use lifecycle::{Cancel, Outcome, Report};
pub(crate) use results::{Done, RESULTS_TAKEN_TOGETHER};

impl Env for CoreWorker {
    fn local_node(&self) -> u16 {
        self.session.node_index
    }
    fn live_nodes(&self) -> Vec<u16> {
        CoreWorker::live_nodes(self)
    }
    fn next_req(&self) -> u64 {
        CoreWorker::next_req(self)
    }
    fn submitting(&self) -> bool {
        !crate::transport::in_handler()
    }
}

/// Runs of this process's tasks and actor calls started again after a
/// failure (a worker or node lost, or a retried exception), counted for
/// the chaos suite's report (lineage reconstructions are counted apart, in
/// [`RECONSTRUCTIONS`]).
pub(crate) static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Runs of this process's finished tasks started again to remake a lost
/// result (lineage reconstruction).
pub(crate) static RECONSTRUCTIONS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Where a task should run, resolved at submission (node names to
/// indices, outside the state lock).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Target {
    Default,
    Spread,
    Node { node: u16, soft: bool },
}

/// The scheduling key: tasks with equal keys share leases.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SchedKey {
    shape: ResourceSet,
    /// Ask this node's raylet (else the local one).
    node: Option<u16>,
    /// The raylet may place it elsewhere.
    soft: bool,
    /// Ask each live node in turn.
    spread: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    WaitingDeps,
    Queued,
    Running(WorkerId),
}

pub(super) struct TaskEntry {
    pub(super) spec: TaskSpec,
    /// (argument index, object) still unresolved
    pub(super) deps: Vec<(usize, ObjectId)>,
    /// Refs this task needs alive until it finishes.
    pub(super) keep: Vec<RawRef>,
    /// An actor call's hold on its actor's handle token (see `submit`).
    pub(super) handle: Option<ObjectId>,
    pub(super) target: Target,
    /// Its key once queued.
    pub(super) key: Option<SchedKey>,
    pub(super) retries_left: u32,
    pub(super) max_retries: u32,
    pub(super) status: Status,
    pub(super) cancelled: bool,
    /// When it was pushed to its worker.
    pub(super) pushed: Option<Instant>,
    /// Which application errors are retried (Ray's `retry_exceptions`).
    pub(super) retry_exceptions: Option<RetryFilter>,
    /// The objects passed by ref, by argument index (for their copies).
    pub(super) arg_ids: Vec<(usize, ObjectId)>,
}

impl TaskEntry {
    /// A task just submitted or to be run again, waiting for its
    /// arguments: no retries, no arguments by ref, until set.
    pub(super) fn waiting(
        spec: TaskSpec,
        keep: Vec<RawRef>,
        handle: Option<ObjectId>,
        target: Target,
    ) -> TaskEntry {
        TaskEntry {
            spec,
            deps: Vec::new(),
            keep,
            handle,
            target,
            key: None,
            retries_left: 0,
            max_retries: 0,
            status: Status::WaitingDeps,
            cancelled: false,
            pushed: None,
            retry_exceptions: None,
            arg_ids: Vec::new(),
        }
    }
}

/// Submission options beyond the common ones.
#[derive(Default)]
pub(crate) struct Extra {
    /// Ray's `retry_exceptions` (tasks only).
    pub(crate) retry_exceptions: Option<RetryFilter>,
    /// Ray's `max_calls` (tasks only; 0: no limit).
    pub(crate) max_calls: u32,
}

/// The owner-side submission state (inside the core worker's lock).
#[derive(Default)]
pub(crate) struct Submitter {
    /// Boxed as the object table's entries are (see `State::objects`).
    pub(super) tasks: IdMap<TaskId, Box<TaskEntry>>,
    /// How to run finished tasks again if their results are lost.
    pub(super) lineage: super::lineage::LineageTable,
    classes: IdMap<SchedKey, ClassQueue>,
    dep_waiters: IdMap<ObjectId, Vec<TaskId>>,
    leases: IdMap<LeaseId, LeaseState>,
    by_worker: IdMap<WorkerId, LeaseId>,
    lease_reqs: IdMap<u64, SchedKey>,
    /// Lease requests sent to another node's raylet, by request: that node,
    /// and whether the request may fall back to the local raylet. A raylet
    /// that dies answers none of them.
    remote_reqs: HashMap<u64, (u16, bool)>,
    /// Next node for a spread lease request (index into the live nodes).
    spread_next: usize,
    actors: IdMap<ActorId, ActorQueue>,
    /// Finished tasks' records, kept for the next submissions (see
    /// [`Submitter::keep_spare`]). The boxes are what is kept: each goes
    /// back into `tasks` as it is.
    #[allow(clippy::vec_box)]
    spares: Vec<Box<TaskEntry>>,
}

/// Submissions that reused a finished task's record (see
/// [`Submitter::keep_spare`]), counted for tests.
pub(crate) static RECORDS_REUSED: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// How many finished tasks' records are kept for reuse: a pipeline's worth
/// in flight (up to about half a megabyte).
const SPARES: usize = 512;
/// The longest argument or result list a kept record keeps the room of.
const SPARE_ROOM: usize = 16;

impl Submitter {
    /// The workers leased to this process now.
    pub(crate) fn leased_workers(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.by_worker.keys().copied()
    }

    /// Keeps a finished task's record for a later submission, with the
    /// room of its argument and result lists. Why: a record is made by the
    /// submitting thread and let go by the connection thread that reads
    /// its result, and the allocator serves that pattern slowly (each
    /// thread frees what the other made: glibc's per-thread caches fill on
    /// one side and run dry on the other). A kept record never crosses.
    /// What it still holds goes when it is reused, as the new record is
    /// written over it whole.
    /// A record whose lists grew past [`SPARE_ROOM`] is not kept: a spare
    /// holds a kilobyte or so at most.
    pub(super) fn keep_spare(&mut self, mut t: Box<TaskEntry>) {
        if self.spares.len() < SPARES
            && t.spec.args.capacity() <= SPARE_ROOM
            && t.spec.returns.capacity() <= SPARE_ROOM
        {
            t.spec.args.clear();
            t.spec.returns.clear();
            t.retry_exceptions = None;
            // Its refs went to the effects: one dropped here, under the
            // state lock, would take it again.
            debug_assert!(t.keep.is_empty());
            t.keep = Vec::new();
            t.deps = Vec::new();
            t.arg_ids = Vec::new();
            t.spec.arg_copies = Vec::new();
            t.spec.gpus = Vec::new();
            self.spares.push(t);
        }
    }

    /// Puts actor call `task` at the back of its actor's queue.
    pub(super) fn queue_actor_call(&mut self, actor: ActorId, task: TaskId) {
        self.actors
            .entry(actor)
            .or_default()
            .pending
            .push_back(task);
    }

    /// Some task not finished yet takes `id` as an argument (its worker may
    /// be reading the block in place).
    pub(crate) fn uses_argument(&self, id: ObjectId) -> bool {
        self.tasks
            .values()
            .any(|t| t.arg_ids.iter().any(|(_, a)| *a == id))
    }
}

/// An argument as prepared by the caller.
pub(crate) enum PreparedArg {
    Value(Vec<u8>, Vec<RawRef>),
    Ref(RawRef),
    Failed(Error),
}

pub(crate) fn payload_error(cw: &CoreWorker, p: &Payload) -> Option<Error> {
    // Stored errors always travel inline; a store block is a value.
    if matches!(p, Payload::Store { .. }) {
        return None;
    }
    let bytes = cw.payload_bytes(p).ok()?;
    codec::parse(bytes).ok()?.error()
}

/// A lease request to send: to `node`'s raylet; `fallback` allows asking
/// the local raylet instead when that node cannot be reached.
pub(crate) struct LeaseRequest {
    pub(crate) req: u64,
    pub(crate) shape: ResourceSet,
    pub(crate) node: u16,
    pub(crate) spill: Spill,
    pub(crate) fallback: bool,
}

impl CoreWorker {
    /// Resolves a strategy's node name (may ask the GCS: call it without
    /// the state lock). An unknown node is an error for a hard affinity and
    /// ignored for a soft one.
    fn resolve_target(self: &Arc<Self>, s: &crate::SchedulingStrategy) -> Result<Target> {
        match s {
            crate::SchedulingStrategy::Default => Ok(Target::Default),
            crate::SchedulingStrategy::Spread => {
                // Make sure the node table is cached for round-robin.
                let _ = self.node(self.session.node_index);
                Ok(Target::Spread)
            }
            crate::SchedulingStrategy::NodeAffinity { node, soft } => {
                match self.node_by_name(node) {
                    Ok(n) if n.alive || *soft => Ok(Target::Node {
                        node: n.index,
                        soft: *soft,
                    }),
                    Ok(_) if *soft => Ok(Target::Default),
                    Ok(_) => Err(Error::new(
                        ErrorKind::Unschedulable,
                        format!("hard node affinity: node `{node}` was lost"),
                    )),
                    Err(_) if *soft => Ok(Target::Default),
                    Err(e) if e.kind() == ErrorKind::InvalidArgument => Err(Error::new(
                        ErrorKind::Unschedulable,
                        format!("hard node affinity: {}", e.message()),
                    )),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Submits a task (or, with `actor`, an actor method call) and returns
    /// refs to its results. Submission never waits for the task: only
    /// arguments by value that go through the store wait for their blocks
    /// (one raylet round trip each, bounded). Any failure becomes the value
    /// of the returned refs.
    // The arguments are the task's, as each submitting API has them; a
    // struct for them would only be built here and taken apart below.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        self: &Arc<Self>,
        function: &'static str,
        shape: Result<ResourceSet>,
        strategy: &crate::SchedulingStrategy,
        max_retries: u32,
        args: Vec<PreparedArg>,
        num_returns: usize,
        actor: Option<ActorId>,
        keep_handle: Option<&RawRef>,
        extra: Extra,
    ) -> Vec<RawRef> {
        let id = TaskId {
            owner: self.id,
            seq: self.next_seq(),
        };
        let (target, mut failure) = match self.resolve_target(strategy) {
            Ok(t) => (t, shape.as_ref().err().cloned()),
            Err(e) => (Target::Default, Some(e)),
        };
        let mut payloads = Vec::with_capacity(args.len());
        let mut keep = Vec::new();
        let mut dep_refs = Vec::new();
        let mut inline_room = super::TASK_INLINE_MAX;
        for (i, a) in args.into_iter().enumerate() {
            match a {
                PreparedArg::Value(blob, contained) => {
                    keep.extend(contained);
                    if blob.len() > super::INLINE_MAX.min(inline_room) {
                        // Large by-value arguments go through the store once
                        // rather than being copied into every message, and
                        // so do those past what one push carries inline.
                        match self.put_encoded(codec::Encoded::Blob(blob), Vec::new(), 0) {
                            Ok(r) => {
                                dep_refs.push((i, r.id));
                                payloads.push(Payload::Inline(Vec::new()));
                                keep.push(r);
                            }
                            Err(e) => {
                                failure = Some(e);
                                payloads.push(Payload::Inline(Vec::new()));
                            }
                        }
                    } else {
                        inline_room -= blob.len();
                        payloads.push(Payload::Inline(blob));
                    }
                }
                PreparedArg::Ref(r) => {
                    dep_refs.push((i, r.id));
                    payloads.push(Payload::Inline(Vec::new()));
                    keep.push(r);
                }
                PreparedArg::Failed(e) => {
                    failure = Some(e);
                    payloads.push(Payload::Inline(Vec::new()));
                }
            }
        }
        let mut fx = Effects::default();
        let mut st = self.lock();
        let refs: Vec<RawRef> = (0..num_returns)
            .map(|_| self.new_owned(&mut st, Some(id)))
            .collect();
        // A finished task's record, and the room of its lists, if one is
        // kept (see `Submitter::keep_spare`).
        let mut spare = st.sub.spares.pop();
        let (mut args, mut returns) = match spare.as_deref_mut() {
            Some(t) => (take(&mut t.spec.args), take(&mut t.spec.returns)),
            None => (Vec::new(), Vec::new()),
        };
        returns.extend(refs.iter().map(|r| r.id));
        if args.capacity() < payloads.len() {
            args = payloads;
        } else {
            args.append(&mut payloads);
        }
        let spec = TaskSpec {
            id,
            function: function.into(),
            args,
            returns,
            actor,
            alone: false,
            max_calls: extra.max_calls,
            // The shape travels in the spec (for the runtime context) and
            // is also the scheduling key's.
            resources: shape.unwrap_or_default(),
            arg_copies: Vec::new(),
            gpus: Vec::new(),
            attempt: 0,
        };
        if let Some(e) = failure {
            self.fail_returns(&mut st, &spec, &e, &mut fx);
            drop(st);
            fx.drops.extend(keep);
            self.apply(fx);
            return refs;
        }
        // A call keeps its actor's handle counted until it finishes, so an
        // actor whose last handle was dropped still runs the calls made
        // through it (Ray's submitted-task references). Counted by hand
        // under the lock held here and released under the one held when
        // the call ends: a `RawRef` would lock twice more per call.
        let handle = keep_handle.and_then(|h| {
            let e = st.objects.get_mut(&h.id)?;
            e.local += 1;
            Some(h.id)
        });
        let entry = TaskEntry {
            retries_left: max_retries,
            max_retries,
            retry_exceptions: extra.retry_exceptions,
            arg_ids: dep_refs,
            ..TaskEntry::waiting(spec, keep, handle, target)
        };
        let entry = match spare {
            Some(mut b) => {
                *b = entry;
                RECORDS_REUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                b
            }
            None => Box::new(entry),
        };
        self.enqueue(&mut st, id, entry, &mut fx);
        drop(st);
        self.apply(fx);
        refs
    }

    /// Takes task `id` in: an actor call joins its actor's queue, and its
    /// arguments by ref are waited for (it is queued for a lease once they
    /// are all there).
    pub(super) fn enqueue(
        self: &Arc<Self>,
        st: &mut State,
        id: TaskId,
        entry: Box<TaskEntry>,
        fx: &mut Effects,
    ) {
        let (actor, deps) = (entry.spec.actor, entry.arg_ids.clone());
        st.sub.tasks.insert(id, entry);
        if let Some(a) = actor {
            st.sub.queue_actor_call(a, id);
        }
        self.resolve_deps(st, id, deps, fx);
    }

    /// Stores an already-encoded value as a new owned object, inline if
    /// small and within `inline_room` (see `store_value`).
    pub(crate) fn put_encoded(
        self: &Arc<Self>,
        enc: codec::Encoded<'_>,
        contained: Vec<RawRef>,
        inline_room: usize,
    ) -> Result<RawRef> {
        // The previous puts' idle write pins go back first: this put may
        // need their blocks spilled to fit.
        self.give_back_held_pins();
        let payload = self.store_value(enc, self.id, true, inline_room)?;
        let stored = matches!(payload, Payload::Store { .. });
        let mut st = self.lock();
        let r = self.new_owned(&mut st, None);
        if let Some(e) = st.objects.get_mut(&r.id) {
            e.value = Some(payload);
            e.contained = contained;
            e.held_pin = stored;
        }
        if stored {
            st.held.push((r.id, Instant::now()));
            drop(st);
            self.wake_housekeeping();
        }
        Ok(r)
    }

    pub(super) fn fail_returns(
        self: &Arc<Self>,
        st: &mut State,
        spec: &TaskSpec,
        err: &Error,
        fx: &mut Effects,
    ) {
        let blob = codec::encode_error(err);
        for r in &spec.returns {
            self.set_value(st, *r, Payload::Inline(blob.clone()), fx);
        }
    }

    /// Removes a task and stores `err` as each of its results.
    fn finish_failed(self: &Arc<Self>, st: &mut State, id: TaskId, err: &Error, fx: &mut Effects) {
        let Some(t) = st.sub.take_failed(id) else {
            return;
        };
        self.fail_returns(st, &t.spec, err, fx);
        self.release_handle(st, t.handle, fx);
        fx.drops.extend(t.keep);
    }

    /// Tasks taken out of the queues (see `Effects::taken_out`) fail with
    /// their error, as any task that cannot run does: a `get` of their
    /// results reports it rather than wait for a push that never goes.
    pub(crate) fn fail_taken_out(self: &Arc<Self>, tasks: Vec<(TaskId, Error)>) {
        let mut fx = Effects::default();
        let mut st = self.lock();
        for (id, err) in tasks {
            if err.kind() != ErrorKind::Cancelled {
                log!("{err}");
            }
            self.finish_failed(&mut st, id, &err, &mut fx);
        }
        drop(st);
        self.apply(fx);
    }

    /// Ends an actor call's hold on its handle token (taken in `submit`).
    fn release_handle(&self, st: &mut State, handle: Option<ObjectId>, fx: &mut Effects) {
        let Some(id) = handle else { return };
        if let Some(e) = st.objects.get_mut(&id) {
            e.local = e.local.saturating_sub(1);
        }
        self.maybe_free(st, id, fx);
    }

    /// Pushes queued tasks of a class to its leased workers, and asks for
    /// more leases when the queue outgrows them (see `leasing`).
    fn dispatch(self: &Arc<Self>, st: &mut State, class: &SchedKey, fx: &mut Effects) {
        st.sub.dispatch(class, Instant::now(), &**self, fx);
    }

    pub(crate) fn lease_granted(
        self: &Arc<Self>,
        req: u64,
        lease: LeaseId,
        worker: WorkerId,
        gpus: Vec<u32>,
    ) {
        let conn = self.peer(worker).ok().map(|c| c.id());
        let mut fx = Effects::default();
        let mut st = self.lock();
        let now = Instant::now();
        if st
            .sub
            .lease_granted(req, lease, worker, conn, gpus, now, &**self, &mut fx)
        {
            self.wake_housekeeping();
        }
        drop(st);
        self.apply(fx);
    }

    /// The local raylet redirected a lease request to another node's.
    pub(crate) fn lease_spilled(self: &Arc<Self>, req: u64, node: u16) {
        let mut fx = Effects::default();
        let again = self
            .lock()
            .sub
            .lease_spilled(req, node, self.session.node_index);
        fx.lease_requests.extend(again);
        self.apply(fx);
    }

    /// Node `node`'s raylet is gone: the lease requests it had not
    /// answered go to the local raylet, or fail when they may not.
    pub(crate) fn remote_raylet_lost(self: &Arc<Self>, node: u16) {
        let mut fx = Effects::default();
        let (again, failed) = self.lock().sub.raylet_lost(node, self.session.node_index);
        if !again.is_empty() {
            log!(
                "node {node}'s raylet is gone with {} lease requests unanswered; asking the local raylet",
                again.len()
            );
        }
        fx.lease_requests = again;
        self.apply(fx);
        for req in failed {
            self.lease_failed(
                req,
                Error::new(
                    ErrorKind::NodeDied,
                    format!(
                        "node {node} was lost before it granted a lease for a task bound to it"
                    ),
                ),
            );
        }
    }

    pub(crate) fn lease_failed(self: &Arc<Self>, req: u64, error: Error) {
        let mut fx = Effects::default();
        let mut st = self.lock();
        let (error, failed) = st.sub.lease_failed(req, error);
        for t in failed {
            self.finish_failed(&mut st, t, &error, &mut fx);
        }
        drop(st);
        self.apply(fx);
    }

    /// Fails every pending task (the cluster went away).
    pub(crate) fn fail_all(self: &Arc<Self>, st: &mut State, err: &Error) -> Effects {
        let mut fx = Effects::default();
        for t in st.sub.abandon() {
            self.finish_failed(st, t, err, &mut fx);
        }
        fx
    }

    /// Cancels the task producing `id` (Ray's `ray.cancel(force=True)` for
    /// a running task: its worker is killed and the task is not retried).
    pub(crate) fn cancel(self: &Arc<Self>, id: ObjectId) -> Result<()> {
        if id.owner != self.id {
            // Only the owner knows the task (Ray forwards the cancel to the
            // owner too): a ref a task returned is owned by that task's worker.
            self.send_to(id.owner, PeerMsg::CancelObject { id });
            return Ok(());
        }
        let mut fx = Effects::default();
        let mut st = self.lock();
        let Some(task) = st.objects.get(&id).and_then(|e| e.task) else {
            return Ok(()); // finished already, or not a task result
        };
        let actor = st.sub.tasks.get(&task).and_then(|t| t.spec.actor);
        match st.sub.cancel(task, &mut fx) {
            Cancel::Unknown | Cancel::Signalled => {}
            Cancel::Fail(err) => {
                self.finish_failed(&mut st, task, &err, &mut fx);
                // An actor call not sent yet may have held the calls
                // queued behind it (waiting for its arguments): they go now.
                if let Some(a) = actor {
                    self.flush_actor(&mut st, a, &mut fx);
                }
            }
            Cancel::Refused(err) => return Err(err),
        }
        drop(st);
        self.apply(fx);
        Ok(())
    }
}
