//! Actor calls from the caller's side (Ray's `ActorTaskSubmitter`): each
//! actor's queue in submission order, sent in that order over this
//! process's one connection to the actor's worker; finding the actor (and
//! finding it again after a restart) through the GCS; failing or keeping
//! the calls of an actor that restarts or dies.

use super::{Effects, State, Status, Submitter};
use crate::core_worker::CoreWorker;
use crate::core_worker::Push;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ActorId, TaskId, WorkerId};
use crate::protocol::{FromGcs, ToGcs};
use crate::transport::{ActorLookup, ActorState, ConnId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Calls in flight to an actor that runs one at a time, at most. The rest
/// wait in the caller's queue and go out as results come back, many in one
/// write (and one wake-up of the actor's connection thread), as a leased
/// worker's pipeline does. It changes no order, nor when a call runs: the
/// actor would run them one after another anyway. An actor running calls
/// at once (`max_concurrency` > 1) gets every call at once: one of them
/// may wait for another sent after it.
pub(super) const ACTOR_PIPELINE: usize = super::leasing::PIPELINE;

/// The actor's worker as its lookup found it.
pub(crate) struct Reached {
    pub(crate) worker: WorkerId,
    pub(crate) conn: ConnId,
    /// It runs one call at a time (`max_concurrency` 1).
    pub(crate) sequential: bool,
}

#[derive(Default)]
pub(super) struct ActorQueue {
    /// The actor's worker, and the connection its calls go on.
    pub(super) conn: Option<(WorkerId, ConnId)>,
    /// The actor runs one call at a time: at most [`ACTOR_PIPELINE`] of
    /// them are in flight.
    pub(super) sequential: bool,
    pub(super) pending: VecDeque<TaskId>,
    pub(super) inflight: Vec<TaskId>,
    pub(super) resolving: bool,
    /// The GCS said the actor is restarting (until it is reached again).
    pub(super) restarting: bool,
    /// The actor's worker whose connection closed: never connected to
    /// again, even while the GCS has not noticed its death yet (its
    /// socket may still accept for a moment while the process exits).
    pub(super) lost: Option<WorkerId>,
    pub(super) dead: Option<Error>,
}

impl Submitter {
    /// The actor's queued calls to send now, in order, as far as their
    /// arguments are resolved and, for an actor running one call at a
    /// time, up to [`ACTOR_PIPELINE`] in flight; each counts as in flight
    /// from here. None without a connection to the actor. A call that
    /// cannot be sent leaves the queue for `fx.taken_out` (it fails; the
    /// ones after it go on).
    pub(super) fn next_actor_calls(&mut self, actor: ActorId, fx: &mut Effects) -> Vec<Push> {
        let mut out = Vec::new();
        let Some(q) = self.actors.get_mut(&actor) else {
            return out;
        };
        let Some((worker, conn)) = q.conn else {
            return out;
        };
        while let Some(t) = q.pending.front().copied() {
            if q.sequential && q.inflight.len() >= ACTOR_PIPELINE {
                // Sent as results come back (`task_finished`).
                break;
            }
            let Some(e) = self.tasks.get_mut(&t) else {
                q.pending.pop_front();
                continue;
            };
            if !e.deps.is_empty() {
                break;
            }
            q.pending.pop_front();
            e.spec.alone = q.inflight.is_empty();
            match Push::new(worker, conn, &e.spec) {
                Ok(push) => {
                    e.status = Status::Running(WorkerId(0));
                    q.inflight.push(t);
                    out.push(push);
                }
                Err(err) => fx.taken_out.push((t, err)),
            }
        }
        out
    }
}

impl CoreWorker {
    /// Sends the actor's queued calls, in order, as far as their arguments
    /// are resolved.
    pub(super) fn flush_actor(self: &Arc<Self>, st: &mut State, actor: ActorId, fx: &mut Effects) {
        let Some(q) = st.sub.actors.get_mut(&actor) else {
            return;
        };
        if let Some(err) = q.dead.clone() {
            let ids: Vec<TaskId> = q.pending.drain(..).collect();
            for t in ids {
                self.finish_failed(st, t, &err, fx);
            }
            return;
        }
        let q_conn = q.conn;
        let conn = q_conn.and_then(|(w, c)| self.peer_conn(w, c));
        let (Some(conn), Some(q_conn)) = (conn, q_conn) else {
            // Known to be restarting while a lookup waits for it: calls
            // that may not wait fail now. Otherwise the lookup below asks
            // the GCS afresh.
            if q.restarting && q.resolving {
                self.fail_unretryable(st, actor, fx);
            }
            let Some(q) = st.sub.actors.get_mut(&actor) else {
                return;
            };
            if !q.resolving && !q.pending.is_empty() {
                q.resolving = true;
                fx.resolve_actors.push(actor);
            }
            return;
        };
        let calls = st.sub.next_actor_calls(actor, fx);
        if calls.is_empty() {
            return;
        }
        if calls.iter().any(|p| p.alone) {
            // A synchronous caller's: the answer is a round trip away.
            conn.expect_reply();
        }
        let mut frames = Vec::with_capacity(calls.iter().map(|p| p.frame.len()).sum());
        for p in &calls {
            frames.extend_from_slice(&p.frame);
        }
        // Queued on the connection under the lock, so that two threads
        // flushing the same actor cannot reorder its calls on the wire
        // (whatever writes on it next writes these first), and written
        // once the lock is let go (never blocking under it, on a thread
        // that may be the one reading the actor's answers).
        if conn.hold_frames(&frames).is_ok() {
            fx.flushes.push(q_conn);
        }
    }

    /// The actor is restarting: its queued calls that may not be retried
    /// fail at once (Ray's `ActorUnavailableError`) instead of waiting.
    /// Whether a call may be retried is what it was made with, not what is
    /// left: a call that already spent its last retry on the lost process
    /// is that retry, queued for the restarted actor (Ray fails fast only
    /// where `max_task_retries` is 0).
    fn fail_unretryable(self: &Arc<Self>, st: &mut State, actor: ActorId, fx: &mut Effects) {
        let Some(q) = st.sub.actors.get_mut(&actor) else {
            return;
        };
        let mut failed = Vec::new();
        let tasks = &st.sub.tasks;
        q.pending.retain(|t| match tasks.get(t) {
            Some(e) if e.max_retries == 0 => {
                failed.push((*t, e.spec.function.clone()));
                false
            }
            _ => true,
        });
        for (t, name) in failed {
            let err = Error::new(
                ErrorKind::ActorUnavailable,
                format!("the actor is restarting (its process died), so `{name}` was not sent; calls made once it is back reach it, and calls with max_task_retries wait for it"),
            );
            self.finish_failed(st, t, &err, fx);
        }
    }

    /// `kill` succeeded: calls from this process fail at once from now on.
    pub(crate) fn actor_killed(self: &Arc<Self>, actor: ActorId, err: Error) {
        let mut fx = Effects::default();
        let mut st = self.lock();
        let q = st.sub.actors.entry(actor).or_default();
        q.dead = Some(err.clone());
        q.conn = None;
        let inflight = std::mem::take(&mut q.inflight);
        for t in inflight {
            self.finish_failed(&mut st, t, &err, &mut fx);
        }
        self.flush_actor(&mut st, actor, &mut fx);
        drop(st);
        self.apply(fx);
    }

    /// Finds the actor's current worker through the GCS (waiting while it
    /// is being created or restarted) and connects to it.
    pub(crate) fn reconnect_actor(self: &Arc<Self>, actor: ActorId) {
        // The GCS may not have noticed yet that the worker we lost is dead:
        // retry (bounded) while the reported worker cannot be reached.
        let deadline = Instant::now() + crate::core_worker::RPC_TIMEOUT;
        let lost = self.lock().sub.actors.get(&actor).and_then(|q| q.lost);
        // First ask without waiting: a restarting actor fails the calls that
        // may not be retried at once; the rest wait for it.
        let mut wait = false;
        let outcome: Result<Reached> = loop {
            let info = self.gcs_call(
                |req| ToGcs::LookupActor {
                    req,
                    by: ActorLookup::Id(actor),
                    wait,
                },
                "looking up an actor",
            );
            if let Ok(FromGcs::ActorLookedUp {
                result: Ok(info), ..
            }) = &info
            {
                if info.state == ActorState::PendingCreation {
                    wait = true;
                    continue;
                }
                // Only a restart: calls to an actor still being created
                // (a handle found by name early) wait for it, as in Ray.
                if info.state == ActorState::Restarting {
                    let mut fx = Effects::default();
                    let mut st = self.lock();
                    let Some(q) = st.sub.actors.get_mut(&actor) else {
                        return;
                    };
                    q.restarting = true;
                    self.fail_unretryable(&mut st, actor, &mut fx);
                    let idle = st
                        .sub
                        .actors
                        .get(&actor)
                        .is_none_or(|q| q.pending.is_empty());
                    if idle {
                        if let Some(q) = st.sub.actors.get_mut(&actor) {
                            q.resolving = false;
                        }
                    }
                    drop(st);
                    self.apply(fx);
                    if idle {
                        return;
                    }
                    wait = true;
                    continue;
                }
            }
            let r = match info {
                Ok(FromGcs::ActorLookedUp {
                    result: Ok(info), ..
                }) => match (info.state, info.worker) {
                    (ActorState::Alive, Some(w))
                        if Some(w) == lost && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    (ActorState::Alive, Some(w)) => match self.peer(w) {
                        Ok(c) => Ok(Reached {
                            worker: w,
                            conn: c.id(),
                            sequential: info.max_concurrency <= 1,
                        }),
                        Err(e) if Instant::now() < deadline => {
                            let _ = e;
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                    _ => Err(info
                        .death
                        .unwrap_or_else(|| Error::new(ErrorKind::ActorDied, "the actor is dead"))),
                },
                Ok(FromGcs::ActorLookedUp { result: Err(e), .. }) => Err(e),
                Ok(_) => Err(Error::unavailable("unexpected reply from the GCS")),
                Err(e) => Err(e),
            };
            break r;
        };
        self.reconnected(actor, outcome);
    }

    /// Where the calls to `actor` go now that it was looked up (or that
    /// looking it up failed: its pending calls fail with that error).
    pub(crate) fn reconnected(self: &Arc<Self>, actor: ActorId, outcome: Result<Reached>) {
        let mut fx = Effects::default();
        let mut st = self.lock();
        if let Some(q) = st.sub.actors.get_mut(&actor) {
            q.resolving = false;
            q.restarting = false;
            match outcome {
                Ok(r) => {
                    q.conn = Some((r.worker, r.conn));
                    q.sequential = r.sequential;
                }
                Err(e) => {
                    if e.kind() == ErrorKind::ActorDied {
                        q.dead = Some(e);
                    } else {
                        let ids: Vec<TaskId> = q.pending.drain(..).collect();
                        for t in ids {
                            self.finish_failed(&mut st, t, &e, &mut fx);
                        }
                    }
                }
            }
            self.flush_actor(&mut st, actor, &mut fx);
        }
        drop(st);
        self.apply(fx);
    }
}
