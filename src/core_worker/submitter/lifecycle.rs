//! A task's life after it is queued, the sans-IO half: what its end, its
//! worker's loss, a lease request's failure or redirection, a cancel and
//! the cluster's loss do to the submission state. As in `leasing`, each
//! transition lives on [`Submitter`], takes what it needs as parameters
//! (the time, this node) and returns what the shell must do next: results
//! to store and tasks to fail (the ownership side, behind the same lock),
//! classes to dispatch, actor queues to flush. Messages to other processes
//! go out as [`Effects`]. The shell (the rest of `submitter`, on
//! `CoreWorker`) takes the lock, calls one of these, and carries out what
//! it returns; its tests (`lifecycle/tests.rs`) drive them without a
//! socket or a clock.
//!
//! Retry rules are Ray's: a task whose worker dies runs again while it has
//! `max_retries` left, else fails with `WorkerDied` (named `NodeDied` by
//! the shell when the node went too); an application error is retried
//! only when its `retry_exceptions` filter accepts it; an actor call in
//! flight when the actor's process dies goes back to the front of its
//! queue within `max_task_retries`, else fails with `ActorDied`; a
//! cancelled task is never retried.

use super::super::Effects;
use super::{LeaseRequest, SchedKey, Status, Submitter, TaskEntry, RETRIES};
use crate::core_worker::function_manager::RETRY_FOREVER;
use crate::error::{Error, ErrorKind};
use crate::ids::{ActorId, TaskId, WorkerId};
use crate::protocol::PeerMsg;
use crate::scheduler::Spill;
use crate::transport::Payload;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// How a task's attempt ended, as its worker reported it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Report {
    /// The worker reached its `max_calls` and exits: its lease ends.
    pub(super) exiting: bool,
    /// The task never ran: some of its arguments were lost.
    pub(super) args_lost: bool,
    /// It raised an application error its `retry_exceptions` filter accepts
    /// (the filter is user code: the shell runs it outside the lock).
    pub(super) retry: bool,
    /// Results of its worker read together with this one (this one
    /// included; 0 counts as 1): the time they took is shared among them,
    /// one sample of the class's service time for all, which the first of
    /// them gives.
    pub(super) together: usize,
    /// Not the first of the results read together: it gives no sample
    /// (nor does the batch, when its first result is of a task no longer
    /// known here).
    pub(super) later: bool,
}

impl Report {
    /// Among how many results this one's time since the worker's previous
    /// result is shared; 0: none, it gives no sample.
    fn share(&self) -> usize {
        if self.later {
            0
        } else {
            self.together.max(1)
        }
    }
}

/// What the shell does after a task's attempt ended.
pub(super) enum Outcome {
    /// Nobody waits for it any more (it was failed already: cancelled, or
    /// its worker given up on); its results' store blocks are freed.
    Unknown,
    /// Queued again for another attempt; this one's results are freed.
    Retried,
    /// It never started: its lost arguments are made again first.
    ArgsLost(Box<TaskEntry>),
    /// Finished: its results are to be stored as its return objects.
    Done(Box<TaskEntry>, Vec<Payload>),
}

/// A task's end, as [`Submitter::task_finished`] decides it.
pub(super) struct Ended {
    pub(super) outcome: Outcome,
    /// The class to dispatch once the outcome is carried out (a pipeline
    /// place came free, or the task was queued again).
    pub(super) dispatch: Option<SchedKey>,
    /// When the lease it ran on falls due back, if it is idle now.
    pub(super) idle_due: Option<Instant>,
    /// The actor whose calls to send next (a place in its pipeline came
    /// free with calls waiting for one).
    pub(super) flush_actor: Option<ActorId>,
}

/// What the shell does after a worker this process pushed to is lost.
#[derive(Default)]
pub(super) struct Lost {
    /// Tasks to fail now, with their error (a task that ran on another
    /// node goes to `Effects::worker_deaths` instead, to be named after
    /// that node's fate).
    pub(super) fail: Vec<(TaskId, Error)>,
    /// The lease's class, to dispatch its tasks queued again.
    pub(super) dispatch: Option<SchedKey>,
    /// Actors whose calls were queued again for the restarted actor.
    pub(super) flush: Vec<ActorId>,
}

/// What a cancel does to a task of this process.
#[derive(Debug)]
pub(super) enum Cancel {
    /// Not a task still pending here: nothing to do.
    Unknown,
    /// It had not been sent: taken out of its queues; fail it with this.
    Fail(Error),
    /// It is running: its worker was asked to stop it (`Effects::sends`).
    Signalled,
    /// An actor call the actor has already received cannot be cancelled.
    Refused(Error),
}

impl Submitter {
    /// Task `task` ended on worker `from` at `now`, as `report` says, with
    /// `returns` as its results.
    pub(super) fn task_finished(
        &mut self,
        from: WorkerId,
        task: TaskId,
        returns: Vec<Payload>,
        report: Report,
        now: Instant,
        fx: &mut Effects,
    ) -> Ended {
        let mut ended = Ended {
            outcome: Outcome::Unknown,
            dispatch: None,
            idle_due: None,
            flush_actor: None,
        };
        let Some(mut t) = self.tasks.remove(&task) else {
            free_blocks(returns, fx);
            return ended;
        };
        if let Some(a) = t.spec.actor {
            if let Some(q) = self.actors.get_mut(&a) {
                q.inflight.retain(|x| *x != task);
                if !q.pending.is_empty() {
                    ended.flush_actor = Some(a);
                }
            }
        } else if self.by_worker.contains_key(&from) {
            if let Some((class, due)) =
                self.finished_on_lease(from, task, t.pushed, now, report.share())
            {
                ended.idle_due = due;
                ended.dispatch = Some(class);
            }
            if report.exiting {
                self.lease_ended_by_worker(from, fx);
            }
        }
        if report.args_lost && !t.cancelled {
            ended.outcome = Outcome::ArgsLost(t);
        } else if report.retry && t.retries_left > 0 && !t.cancelled {
            free_blocks(returns, fx);
            spend_retry(&mut t);
            t.status = Status::Queued;
            t.pushed = None;
            ended.dispatch.clone_from(&t.key);
            if let Some(k) = &t.key {
                self.classes
                    .entry(k.clone())
                    .or_default()
                    .queue
                    .push_front(task);
            }
            self.tasks.insert(task, t);
            ended.outcome = Outcome::Retried;
        } else {
            ended.outcome = Outcome::Done(t, returns);
        }
        ended
    }

    /// Task `t`, back from a worker that could not start it (its arguments
    /// were lost), waits for its arguments again: a task as a task just
    /// submitted does, an actor call at the front of its actor's queue,
    /// ahead of the calls still queued behind it (`flush_actor` sends only
    /// from the queue: a call left out of it would never go out again).
    /// Calls sent after it before it came back run first: unlike Ray,
    /// whose actor waits for a call's arguments before it runs the next.
    pub(in crate::core_worker) fn wait_again(&mut self, mut t: Box<TaskEntry>) {
        let id = t.spec.id;
        t.status = Status::WaitingDeps;
        t.pushed = None;
        t.key = None;
        if let Some(a) = t.spec.actor {
            self.actors.entry(a).or_default().pending.push_front(id);
        }
        self.tasks.insert(id, t);
    }

    /// The worker this process pushed tasks (or actor calls) to is gone:
    /// each task on its lease runs again or fails, and so does each call in
    /// flight to an actor it hosted. `local` is this process's node.
    pub(super) fn worker_lost(&mut self, worker: WorkerId, local: u16, fx: &mut Effects) -> Lost {
        let mut lost = Lost::default();
        let mut fail = |t: TaskId, err: Error, lost: &mut Lost| {
            if worker.node() == local {
                lost.fail.push((t, err));
            } else {
                // Whether that node went too is found out after the lock.
                fx.worker_deaths.push((t, worker, err));
            }
        };
        if let Some((class, inflight)) = self.lease_lost(worker) {
            for t in inflight.iter().rev() {
                let Some(e) = self.tasks.get_mut(t) else {
                    continue;
                };
                if e.cancelled {
                    let err = Error::cancelled(&e.spec.function);
                    lost.fail.push((*t, err));
                } else if e.retries_left > 0 {
                    spend_retry(e);
                    e.status = Status::Queued;
                    self.classes
                        .entry(class.clone())
                        .or_default()
                        .queue
                        .push_front(*t);
                } else {
                    let err = Error::new(
                        ErrorKind::WorkerDied,
                        format!(
                            "the worker process running task `{}` died (worker {worker}); it was tried {} time(s) (max_retries = {})",
                            e.spec.function,
                            e.max_retries + 1,
                            e.max_retries
                        ),
                    );
                    fail(*t, err, &mut lost);
                }
            }
            lost.dispatch = Some(class);
        }
        for (a, q) in self.actors.iter_mut() {
            if q.conn.is_none_or(|(w, _)| w != worker) {
                continue;
            }
            q.conn = None;
            q.lost = Some(worker);
            // Calls held back only by the in-flight bound (ready, at the
            // queue's front) count as sent: without the bound they would
            // have been, so they fare as the calls in flight do, and no
            // later call runs on the restarted actor while an earlier one
            // failed with the lost one.
            if q.sequential && q.inflight.len() >= super::actors::ACTOR_PIPELINE {
                while let Some(t) = q.pending.front().copied() {
                    if !self.tasks.get(&t).is_some_and(|e| e.deps.is_empty()) {
                        break;
                    }
                    q.pending.pop_front();
                    q.inflight.push(t);
                }
            }
            // Calls that may be retried (Ray's max_task_retries) go back to
            // the front of the queue, in order, for the restarted actor.
            let mut failed = Vec::new();
            for t in std::mem::take(&mut q.inflight).into_iter().rev() {
                match self.tasks.get_mut(&t) {
                    Some(e) if e.retries_left > 0 => {
                        spend_retry(e);
                        e.status = Status::Queued;
                        q.pending.push_front(t);
                    }
                    Some(e) => failed.push((t, e.spec.function.clone())),
                    None => {}
                }
            }
            for (t, name) in failed.into_iter().rev() {
                let err = Error::new(
                    ErrorKind::ActorDied,
                    format!("the actor's process died while running `{name}` (the actor restarts if it has restarts left; this call is not retried: see max_task_retries)"),
                );
                fail(t, err, &mut lost);
            }
            if !q.pending.is_empty() {
                lost.flush.push(*a);
            }
        }
        lost
    }

    /// Takes failed task `id` out of the state (and out of its actor's
    /// queues), for the shell to store its error as each result.
    pub(super) fn take_failed(&mut self, id: TaskId) -> Option<Box<TaskEntry>> {
        let t = self.tasks.remove(&id)?;
        if let Some(a) = t.spec.actor {
            if let Some(q) = self.actors.get_mut(&a) {
                q.pending.retain(|x| *x != id);
                q.inflight.retain(|x| *x != id);
            }
        }
        Some(t)
    }

    /// A raylet answered lease request `req` with `error`: the class's
    /// queued tasks fail with it when no other lease or request is left to
    /// run them. Returns the error (a hard affinity's infeasibility is
    /// `Unschedulable`) and those tasks.
    pub(super) fn lease_failed(&mut self, req: u64, error: Error) -> (Error, Vec<TaskId>) {
        self.remote_reqs.remove(&req);
        let Some(class) = self.lease_reqs.remove(&req) else {
            return (error, Vec::new());
        };
        // A hard affinity to a node that can never fit the request is
        // unschedulable there (it may not go elsewhere).
        let error = match class.node {
            Some(n) if !class.soft && error.kind() == ErrorKind::Infeasible => Error::new(
                ErrorKind::Unschedulable,
                format!("hard node affinity to node {n}: {}", error.message()),
            ),
            _ => error,
        };
        let failed = match self.classes.get_mut(&class) {
            Some(cq) => {
                cq.pending_requests = cq.pending_requests.saturating_sub(1);
                if cq.pending_requests == 0 && cq.leases.is_empty() {
                    cq.queue.drain(..).collect()
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        };
        (error, failed)
    }

    /// The local raylet redirected lease request `req` to `node`'s: the
    /// request to send there (which may fall back to the local raylet).
    pub(super) fn lease_spilled(
        &mut self,
        req: u64,
        node: u16,
        local: u16,
    ) -> Option<LeaseRequest> {
        let class = self.lease_reqs.get(&req)?;
        let shape = class.shape.clone();
        if node != local {
            self.remote_reqs.insert(req, (node, true));
        }
        Some(LeaseRequest {
            req,
            shape,
            node,
            spill: Spill::Never,
            fallback: true,
        })
    }

    /// Node `node`'s raylet is gone with lease requests unanswered: those
    /// that may fall back go to the local raylet (`local`); the others are
    /// returned, to fail.
    pub(super) fn raylet_lost(&mut self, node: u16, local: u16) -> (Vec<LeaseRequest>, Vec<u64>) {
        let reqs: Vec<(u64, bool)> = self
            .remote_reqs
            .iter()
            .filter(|(_, (n, _))| *n == node)
            .map(|(r, (_, f))| (*r, *f))
            .collect();
        let (mut again, mut failed) = (Vec::new(), Vec::new());
        for (req, fallback) in reqs {
            self.remote_reqs.remove(&req);
            let Some(class) = self.lease_reqs.get(&req) else {
                continue;
            };
            if fallback {
                again.push(LeaseRequest {
                    req,
                    shape: class.shape.clone(),
                    node: local,
                    spill: Spill::Never,
                    fallback: false,
                });
            } else {
                failed.push(req);
            }
        }
        (again, failed)
    }

    /// Cancels task `task` (Ray's `ray.cancel(force=True)`): one not sent
    /// yet leaves its queues; a running one is marked (never retried) and
    /// its worker told to stop it.
    pub(super) fn cancel(&mut self, task: TaskId, fx: &mut Effects) -> Cancel {
        let Some(t) = self.tasks.get_mut(&task) else {
            return Cancel::Unknown;
        };
        let err = Error::cancelled(&t.spec.function);
        match t.status {
            Status::WaitingDeps | Status::Queued => {
                if let Some(cq) = t.key.as_ref().and_then(|k| self.classes.get_mut(k)) {
                    cq.queue.retain(|x| *x != task);
                }
                for w in self.dep_waiters.values_mut() {
                    w.retain(|x| *x != task);
                }
                if let Some(a) = t.spec.actor {
                    // Sent calls keep their order; an unsent one can go.
                    if let Some(q) = self.actors.get_mut(&a) {
                        q.pending.retain(|x| *x != task);
                    }
                }
                Cancel::Fail(err)
            }
            Status::Running(_) if t.spec.actor.is_some() => Cancel::Refused(Error::invalid(
                "an actor call that already reached the actor cannot be cancelled",
            )),
            Status::Running(worker) => {
                t.cancelled = true;
                if let Some(l) = self.by_worker.get(&worker).and_then(|l| self.leases.get(l)) {
                    let attempt = t.spec.attempt;
                    fx.sends
                        .push((l.worker, l.conn, PeerMsg::CancelTask { task, attempt }));
                }
                Cancel::Signalled
            }
        }
    }

    /// The cluster went away: every lease is dropped; returns every task
    /// still pending, to fail.
    pub(super) fn abandon(&mut self) -> Vec<TaskId> {
        self.leases.clear();
        self.by_worker.clear();
        self.classes.clear();
        self.tasks.keys().copied().collect()
    }
}

/// A task attempt's results nobody will read: their store blocks go back.
fn free_blocks(returns: Vec<Payload>, fx: &mut Effects) {
    for p in returns {
        if let Payload::Store { node, offset, .. } = p {
            fx.free_offsets.push((node, offset));
        }
    }
}

/// Runs of tasks this process started again (retries, reconstructions).
static ATTEMPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The attempt number of a task's new run (`TaskSpec::attempt`): one this
/// process gave no run before (the first run of each task is 0), so that
/// no cancel meant for an earlier run, whatever became of it, matches it.
pub(crate) fn new_attempt() -> u32 {
    ATTEMPTS
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(1)
        .max(1)
}

/// One of the task's retries is used (none is counted for a task retried
/// without end).
fn spend_retry(t: &mut TaskEntry) {
    RETRIES.fetch_add(1, Ordering::Relaxed);
    // A run of its own: a cancel meant for the last one stops not this.
    t.spec.attempt = new_attempt();
    if t.retries_left != RETRY_FOREVER {
        t.retries_left -= 1;
    }
}

#[cfg(test)]
mod tests;
