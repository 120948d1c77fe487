//! Leasing, the sans-IO half of task submission: each scheduling class's
//! queue, the leases held for it, which task goes to which leased worker
//! (pipelining short tasks), how many leases to ask for, and when an idle
//! lease goes back. Its transitions live on [`Submitter`], take the time
//! as a parameter and what they need of the process through [`Env`], and
//! return what to send as [`Effects`] (a push names its connection by id),
//! so they are tested (`leasing/tests.rs`) without a socket or a clock.
//! The IO shell is the rest of `submitter` (on `CoreWorker`): it takes the
//! lock, calls a transition, and applies its effects.

use super::super::{Effects, Push};
use super::{LeaseRequest, SchedKey, Status, Submitter};
use crate::error::Error;
use crate::ids::{LeaseId, TaskId, WorkerId};
use crate::scheduler::Spill;
use crate::transport::ConnId;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Tasks in flight per leased worker, at most.
pub(crate) const PIPELINE: usize = 64;
/// A leased worker is given about this much work (by its class's service
/// time) to hold queued: more than the round trip it hides, so the worker
/// never waits for the owner's next push, and little enough that tasks
/// pushed to a busy worker do not wait long while another sits idle. Tiny
/// tasks thus travel [`PIPELINE`] at a time (one write, one wake-up of the
/// worker for many); a class taking [`SHORT_TASK`] or more goes one at a
/// time.
pub(super) const PIPELINE_WORK: Duration = Duration::from_millis(1);
/// How long an idle lease is kept for reuse before it goes back.
pub(crate) const LEASE_IDLE: Duration = Duration::from_millis(10);
/// Outstanding lease requests per scheduling class.
pub(super) const MAX_PENDING_LEASES: usize = 4;
/// Tasks whose measured service time is below this are pipelined.
pub(super) const SHORT_TASK: Duration = Duration::from_millis(1);
const _: () = assert!(PIPELINE_WORK.as_nanos() <= SHORT_TASK.as_nanos() * PIPELINE as u128);

/// What leasing needs of the process it runs in.
pub(crate) trait Env {
    /// This process's node.
    fn local_node(&self) -> u16;
    /// The nodes alive now, as this process knows them (asked only for
    /// spread requests).
    fn live_nodes(&self) -> Vec<u16>;
    /// A request number not used before.
    fn next_req(&self) -> u64;
    /// The caller submits tasks (it is not handling a batch of results):
    /// it gives a lease with tasks in flight at most [`SUBMIT_DEPTH`], and
    /// leaves the rest of its pipeline to be filled as results come back.
    fn submitting(&self) -> bool;
}

/// Tasks in flight per leased worker that a submitting thread pushes
/// (see [`Env::submitting`]): one, so an idle worker starts at once. The
/// rest of a pipeline goes from the thread handling the worker's results,
/// many pushes in one write, where each push from a submitting thread is a
/// write of its own (and a wake-up of the worker's reader). With a second
/// one queued behind (so the worker would not wait for the owner between
/// the two), a burst of tiny tasks made nearly a write per task: each
/// finished before the next was submitted.
pub(crate) const SUBMIT_DEPTH: usize = 1;

#[derive(Default)]
pub(super) struct ClassQueue {
    pub(super) queue: VecDeque<TaskId>,
    pub(super) leases: Vec<LeaseId>,
    pub(super) pending_requests: usize,
    /// Moving average of the class's task service time, once measured.
    pub(super) service: Option<Duration>,
}

impl ClassQueue {
    /// Tasks in flight per leased worker: [`PIPELINE_WORK`] of them by
    /// the class's service time (2 at least for a short class, so one
    /// waits while the other runs), one while it is unknown or long.
    pub(super) fn depth(&self) -> usize {
        match self.service {
            Some(t) if t < SHORT_TASK => {
                let n = PIPELINE_WORK.as_nanos() / t.as_nanos().max(1);
                (n.min(PIPELINE as u128) as usize).max(2)
            }
            _ => 1,
        }
    }
}

pub(super) struct LeaseState {
    pub(super) worker: WorkerId,
    pub(super) class: SchedKey,
    /// The connection to the worker the lease was granted with: pushes go
    /// on it alone, never on a later one to the same address.
    pub(super) conn: ConnId,
    pub(super) inflight: Vec<TaskId>,
    pub(super) blocked: bool,
    pub(super) idle_since: Option<Instant>,
    /// When its last task finished (service time of pipelined tasks
    /// starts there, not at their push).
    pub(super) last_done: Option<Instant>,
    /// The GPUs the lease holds: every task pushed on it carries them.
    pub(super) gpus: Vec<u32>,
}

impl Submitter {
    /// Pushes queued tasks of a class to its leased workers, and asks for
    /// more leases when the queue outgrows them.
    pub(super) fn dispatch(
        &mut self,
        class: &SchedKey,
        now: Instant,
        env: &impl Env,
        fx: &mut Effects,
    ) {
        let Some(cq) = self.classes.get_mut(class) else {
            return;
        };
        let full = cq.depth();
        let depth = if env.submitting() {
            full.min(SUBMIT_DEPTH)
        } else {
            full
        };
        while !cq.queue.is_empty() {
            let best = cq
                .leases
                .iter()
                .filter_map(|l| self.leases.get(l).map(|s| (*l, s)))
                .filter(|(_, s)| !s.blocked && s.inflight.len() < depth)
                .min_by_key(|(_, s)| s.inflight.len())
                .map(|(l, _)| l);
            let Some(lid) = best else { break };
            let Some(tid) = cq.queue.pop_front() else {
                break;
            };
            let (Some(lease), Some(task)) = (self.leases.get_mut(&lid), self.tasks.get_mut(&tid))
            else {
                continue;
            };
            // Alone: nothing else in flight on the lease or queued behind
            // (a chain's next link, a caller waiting on each task): the
            // worker then waits awake for the next one (see `worker_main`).
            task.spec.alone = lease.inflight.is_empty() && cq.queue.is_empty();
            task.spec.gpus.clone_from(&lease.gpus);
            match Push::new(lease.worker, lease.conn, &task.spec) {
                Ok(push) => {
                    task.status = Status::Running(lease.worker);
                    task.pushed = Some(now);
                    lease.inflight.push(tid);
                    lease.idle_since = None;
                    fx.pushes.push(push);
                }
                // Out of the queue, never in flight: it fails.
                Err(e) => fx.taken_out.push((tid, e)),
            }
        }
        // What the leases held will take as their results come back (a
        // submitting thread left their pipelines part empty) needs no
        // lease of its own.
        let (mut usable, mut room) = (0usize, 0usize);
        for s in cq.leases.iter().filter_map(|l| self.leases.get(l)) {
            if !s.blocked {
                usable += 1;
                room += full.saturating_sub(s.inflight.len());
            }
        }
        let left = cq.queue.len().saturating_sub(room);
        let want = if left == 0 {
            0
        } else if usable == 0 {
            left.min(MAX_PENDING_LEASES)
        } else {
            left.div_ceil(full).min(MAX_PENDING_LEASES)
        };
        while cq.pending_requests < want {
            cq.pending_requests += 1;
            let req = env.next_req();
            self.lease_reqs.insert(req, class.clone());
            let node = match class.node {
                Some(n) => n,
                None if class.spread => {
                    let live = env.live_nodes();
                    self.spread_next = self.spread_next.wrapping_add(1);
                    live.get(self.spread_next % live.len().max(1))
                        .copied()
                        .unwrap_or(env.local_node())
                }
                None => env.local_node(),
            };
            let fallback = class.node.is_none() || class.soft;
            if node != env.local_node() {
                self.remote_reqs.insert(req, (node, fallback));
            }
            fx.lease_requests.push(LeaseRequest {
                req,
                shape: class.shape.clone(),
                node,
                spill: match (class.node, class.soft) {
                    // A spread request waits a little on the node chosen
                    // for it before it may spill (a momentarily busy node
                    // would otherwise send its share to its neighbours and
                    // get none).
                    (None, _) if class.spread => Spill::Later,
                    (None, _) => Spill::Now,
                    (Some(_), true) => Spill::Later,
                    (Some(_), false) => Spill::Never,
                },
                fallback,
            });
        }
    }

    /// A lease was granted for request `req`: kept for its class if tasks
    /// still wait there and its worker could be reached (`conn`), else
    /// given back (and its worker killed when it could not be reached).
    /// True when a lease was kept (idle leases then need watching).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lease_granted(
        &mut self,
        req: u64,
        lease: LeaseId,
        worker: WorkerId,
        conn: Option<ConnId>,
        gpus: Vec<u32>,
        now: Instant,
        env: &impl Env,
        fx: &mut Effects,
    ) -> bool {
        self.remote_reqs.remove(&req);
        let Some(class) = self.lease_reqs.remove(&req) else {
            fx.return_leases.push((lease, false));
            return false;
        };
        let cq = self.classes.entry(class.clone()).or_default();
        cq.pending_requests = cq.pending_requests.saturating_sub(1);
        let kept = match conn {
            Some(conn) if !cq.queue.is_empty() => {
                cq.leases.push(lease);
                self.by_worker.insert(worker, lease);
                self.leases.insert(
                    lease,
                    LeaseState {
                        worker,
                        class: class.clone(),
                        conn,
                        inflight: Vec::new(),
                        blocked: false,
                        idle_since: Some(now),
                        last_done: None,
                        gpus,
                    },
                );
                true
            }
            Some(_) => {
                fx.return_leases.push((lease, false));
                false
            }
            None => {
                fx.return_leases.push((lease, true));
                false
            }
        };
        self.dispatch(&class, now, env, fx);
        kept
    }

    /// Task `task`, pushed at `pushed`, finished on `worker`'s lease at
    /// `now`: the lease's pipeline frees a place, and the class's service
    /// time (a moving average, from when the worker could start the task:
    /// its push, or the previous task's end) learns of it, shared among
    /// the `share` results read together of which this is the first (0: a
    /// later one of them, no sample). Returns the lease's class, and when
    /// the lease is due back if it is idle now.
    pub(super) fn finished_on_lease(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        pushed: Option<Instant>,
        now: Instant,
        share: usize,
    ) -> Option<(SchedKey, Option<Instant>)> {
        let l = self.leases.get_mut(self.by_worker.get(&worker)?)?;
        l.inflight.retain(|x| *x != task);
        // Results read together share one `now`: the first of them is the
        // sample for all (the time since the worker's previous result,
        // divided among them), the others none (each would be 0, and pull
        // the average toward pipelining longer tasks deeper than
        // `PIPELINE_WORK`).
        let started = match (pushed, l.last_done) {
            _ if share == 0 => None,
            (Some(p), Some(d)) => Some(p.max(d)),
            (p, _) => p,
        };
        l.last_done = Some(now);
        let mut idle_due = None;
        if l.inflight.is_empty() {
            l.idle_since = Some(now);
            idle_due = Some(now + LEASE_IDLE);
        }
        let class = l.class.clone();
        if let (Some(s), Some(cq)) = (started, self.classes.get_mut(&class)) {
            let shared = u32::try_from(share).unwrap_or(u32::MAX);
            let t = now.saturating_duration_since(s) / shared;
            cq.service = Some(match cq.service {
                Some(avg) => (avg * 3 + t) / 4,
                None => t,
            });
        }
        Some((class, idle_due))
    }

    /// The lease's worker ends it (it exits: `max_calls` reached): the
    /// tasks still in flight on it never started and go back to the front
    /// of their class's queue, in order (those cancelled meanwhile fail).
    pub(super) fn lease_ended_by_worker(&mut self, worker: WorkerId, fx: &mut Effects) {
        let Some(lid) = self.by_worker.remove(&worker) else {
            return;
        };
        let Some(l) = self.leases.remove(&lid) else {
            return;
        };
        self.classes
            .entry(l.class.clone())
            .or_default()
            .leases
            .retain(|x| *x != lid);
        self.requeue_unstarted(&l.class, &l.inflight, fx);
    }

    /// The lease's worker blocked in `get`/`wait` and handed back `tasks`
    /// it had not started: the lease takes no more pushes until it
    /// unblocks, and those tasks go back to the front of their queue, in
    /// order, to run elsewhere (those cancelled meanwhile fail). Returns
    /// the class to dispatch.
    pub(super) fn lease_blocked(
        &mut self,
        worker: WorkerId,
        tasks: &[TaskId],
        fx: &mut Effects,
    ) -> Option<SchedKey> {
        let l = self.leases.get_mut(self.by_worker.get(&worker)?)?;
        l.blocked = true;
        l.inflight.retain(|t| !tasks.contains(t));
        let class = l.class.clone();
        self.requeue_unstarted(&class, tasks, fx);
        Some(class)
    }

    /// Puts `tasks`, pushed but never started, back at the front of
    /// `class`'s queue, in order. One cancelled meanwhile (its cancel went
    /// to a worker that no longer had it) fails instead: run elsewhere, it
    /// would not be stopped.
    fn requeue_unstarted(&mut self, class: &SchedKey, tasks: &[TaskId], fx: &mut Effects) {
        for t in tasks.iter().rev() {
            let Some(e) = self.tasks.get_mut(t) else {
                continue;
            };
            if e.cancelled {
                let err = Error::cancelled(&e.spec.function);
                fx.taken_out.push((*t, err));
                continue;
            }
            e.status = Status::Queued;
            e.pushed = None;
            self.classes
                .entry(class.clone())
                .or_default()
                .queue
                .push_front(*t);
        }
    }

    /// The lease's worker is running again: it takes pushes again.
    pub(super) fn lease_unblocked(&mut self, worker: WorkerId) -> Option<SchedKey> {
        let l = self.leases.get_mut(self.by_worker.get(&worker)?)?;
        l.blocked = false;
        Some(l.class.clone())
    }

    /// The lease's worker is gone: the lease ends; returns its class and
    /// the tasks that were in flight on it, in push order (for the shell
    /// to retry or fail).
    pub(super) fn lease_lost(&mut self, worker: WorkerId) -> Option<(SchedKey, Vec<TaskId>)> {
        let lid = self.by_worker.remove(&worker)?;
        let l = self.leases.remove(&lid)?;
        if let Some(cq) = self.classes.get_mut(&l.class) {
            cq.leases.retain(|x| *x != lid);
        }
        Some((l.class, l.inflight))
    }

    /// Gives back leases idle for longer than [`LEASE_IDLE`]; also says
    /// when the next idle lease falls due.
    pub(crate) fn return_idle_leases(&mut self, now: Instant, fx: &mut Effects) -> Option<Instant> {
        let mut next_due: Option<Instant> = None;
        let mut idle = Vec::new();
        for (id, l) in &self.leases {
            let Some(since) = l.idle_since.filter(|_| l.inflight.is_empty()) else {
                continue;
            };
            if !self
                .classes
                .get(&l.class)
                .is_none_or(|c| c.queue.is_empty())
            {
                continue;
            }
            let due = since + LEASE_IDLE;
            if due <= now {
                idle.push(*id);
            } else {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
            }
        }
        for lid in idle {
            if let Some(l) = self.leases.remove(&lid) {
                self.by_worker.remove(&l.worker);
                if let Some(cq) = self.classes.get_mut(&l.class) {
                    cq.leases.retain(|x| *x != lid);
                }
                fx.return_leases.push((lid, false));
            }
        }
        next_due
    }
}

#[cfg(test)]
pub(super) mod tests;
