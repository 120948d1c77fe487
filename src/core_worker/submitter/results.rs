//! What leased workers and actors report back, on the owner's side (the
//! IO shell over `lifecycle`'s transitions): a batch of results taken in
//! under one lock ([`Done`]), each stored as its return objects or its
//! task retried or remade, the pipelines it frees refilled once; tasks a
//! blocked worker hands back, and its unblocking; a worker or a node lost
//! with tasks or actor calls in flight.

use super::{Outcome, Report, SchedKey, TaskEntry};
use crate::core_worker::{CoreWorker, Effects, State};
use crate::error::{Error, ErrorKind};
use crate::ids::{ActorId, TaskId, WorkerId};
use crate::protocol::PeerMsg;
use crate::transport::Payload;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Task results this process took in as part of a batch of two or more
/// read together (see `tasks_done`), since it started: for tests that
/// check the batching ran.
pub(crate) static RESULTS_TAKEN_TOGETHER: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// A task's end as its worker reported it (`PeerMsg::TaskDone`).
pub(crate) struct Done {
    pub(crate) task: TaskId,
    pub(crate) returns: Vec<Payload>,
    pub(crate) app_error: bool,
    pub(crate) exiting: bool,
    pub(crate) lost_args: Vec<u32>,
}

impl TryFrom<PeerMsg> for Done {
    /// Another message.
    type Error = PeerMsg;
    fn try_from(m: PeerMsg) -> std::result::Result<Done, PeerMsg> {
        match m {
            PeerMsg::TaskDone {
                task,
                returns,
                app_error,
                exiting,
                lost_args,
            } => Ok(Done {
                task,
                returns,
                app_error,
                exiting,
                lost_args,
            }),
            other => Err(other),
        }
    }
}

impl CoreWorker {
    /// Tasks ended on worker `from` (see `lifecycle::Report`): results
    /// read together are taken in together, under one lock of the state,
    /// and each class or actor whose pipeline they free is refilled once.
    /// An empty batch does nothing.
    pub(crate) fn tasks_done(self: &Arc<Self>, from: WorkerId, done: Vec<Done>) {
        if done.is_empty() {
            return;
        }
        if done.len() > 1 {
            RESULTS_TAKEN_TOGETHER
                .fetch_add(done.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        // retry_exceptions: the filter is user code, run outside the lock.
        let retry: Vec<bool> = done.iter().map(|d| self.retried(d)).collect();
        let mut fx = Effects::default();
        let mut st = self.lock();
        let now = Instant::now();
        let mut classes: Vec<SchedKey> = Vec::new();
        let mut actors: Vec<ActorId> = Vec::new();
        let together = done.len();
        for (i, (d, retry)) in done.into_iter().zip(retry).enumerate() {
            let report = Report {
                exiting: d.exiting,
                args_lost: !d.lost_args.is_empty(),
                retry,
                together,
                later: i > 0,
            };
            let ended = st
                .sub
                .task_finished(from, d.task, d.returns, report, now, &mut fx);
            if let Some(due) = ended.idle_due {
                self.housekeeping_due(due);
            }
            match ended.outcome {
                Outcome::Unknown | Outcome::Retried => {}
                Outcome::ArgsLost(t) => self.args_lost(&mut st, t, &d.lost_args, &mut fx),
                Outcome::Done(t, returns) => self.store_results(&mut st, t, returns, &mut fx),
            }
            if let Some(c) = ended.dispatch {
                if !classes.contains(&c) {
                    classes.push(c);
                }
            }
            if let Some(a) = ended.flush_actor {
                if !actors.contains(&a) {
                    actors.push(a);
                }
            }
        }
        for c in &classes {
            self.dispatch(&mut st, c, &mut fx);
        }
        for a in actors {
            self.flush_actor(&mut st, a, &mut fx);
        }
        drop(st);
        self.apply(fx);
    }

    /// Whether an ended task's application error is one its
    /// `retry_exceptions` filter retries (with retries left).
    fn retried(&self, d: &Done) -> bool {
        if !d.app_error {
            return false;
        }
        let filter = {
            let st = self.lock();
            st.sub
                .tasks
                .get(&d.task)
                .filter(|t| t.retries_left > 0 && !t.cancelled)
                .and_then(|t| t.retry_exceptions.clone())
        };
        filter.is_some_and(|f| {
            // A stored error always travels inline; a store block is a
            // value (and is not read here, unpinned).
            d.returns
                .first()
                .and_then(|p| match p {
                    Payload::Inline(b) => Some(b),
                    Payload::Store { .. } => None,
                })
                .is_some_and(|b| (f.0)(b))
        })
    }

    /// Stores a finished task's results as its return objects (an error
    /// when their number is wrong) and lets go of what it held.
    fn store_results(
        self: &Arc<Self>,
        st: &mut State,
        t: Box<TaskEntry>,
        returns: Vec<Payload>,
        fx: &mut Effects,
    ) {
        if returns.len() == t.spec.returns.len() {
            for (id, p) in t.spec.returns.iter().zip(returns) {
                self.set_value(st, *id, p, fx);
            }
            self.record_lineage(st, &t);
        } else {
            let e = Error::new(
                ErrorKind::TaskFailed,
                format!(
                    "task `{}` produced {} results but {} were expected",
                    t.spec.function,
                    returns.len(),
                    t.spec.returns.len()
                ),
            );
            self.fail_returns(st, &t.spec, &e, fx);
        }
        self.release_handle(st, t.handle, fx);
        let mut t = t;
        fx.drops.append(&mut t.keep);
        st.sub.keep_spare(t);
    }

    /// Tasks whose worker on another node died with no retries left: they
    /// fail with `NodeDied`, naming the node, when that node's raylet cannot
    /// be reached any more (the node was lost), else with `WorkerDied`.
    pub(crate) fn fail_worker_deaths(self: &Arc<Self>, deaths: Vec<(TaskId, WorkerId, Error)>) {
        let mut verdicts: HashMap<u16, Option<String>> = HashMap::new();
        for (_, w, _) in &deaths {
            let n = w.node();
            if verdicts.contains_key(&n) {
                continue;
            }
            verdicts.insert(n, self.lost_node_name(n));
        }
        let mut fx = Effects::default();
        let mut st = self.lock();
        for (t, w, err) in deaths {
            let err = match verdicts.get(&w.node()) {
                Some(Some(name)) => {
                    let (function, actor) = st
                        .sub
                        .tasks
                        .get(&t)
                        .map(|e| (e.spec.function.clone(), e.spec.actor.is_some()))
                        .unwrap_or_default();
                    if actor {
                        // Ray's ActorDiedError, its cause the node's death.
                        Error::new(
                            ErrorKind::ActorDied,
                            format!(
                                "the actor's node {} (`{name}`) was lost while it ran `{function}` (the actor restarts elsewhere if it has restarts left; this call is not retried: see max_task_retries)",
                                w.node()
                            ),
                        )
                    } else {
                        Error::new(
                            ErrorKind::NodeDied,
                            format!(
                                "task `{function}` was running on node {} (`{name}`), which was lost; its retries are used up",
                                w.node()
                            ),
                        )
                    }
                }
                _ => err,
            };
            self.finish_failed(&mut st, t, &err, &mut fx);
        }
        drop(st);
        self.apply(fx);
    }

    /// The node's name if it is lost: known lost, or its raylet refuses
    /// connections (bounded by the connect timeout).
    fn lost_node_name(self: &Arc<Self>, node: u16) -> Option<String> {
        let info = self.node(node).ok()?;
        if !info.alive {
            return Some(info.name);
        }
        match info.raylet().connect(&self.session.secret) {
            Ok(_probe) => None,
            Err(_) => {
                self.mark_node_lost(node);
                Some(info.name)
            }
        }
    }

    /// A blocked worker handed back tasks it had not started.
    pub(crate) fn tasks_returned(self: &Arc<Self>, from: WorkerId, tasks: Vec<TaskId>) {
        let mut fx = Effects::default();
        let mut st = self.lock();
        if let Some(class) = st.sub.lease_blocked(from, &tasks, &mut fx) {
            self.dispatch(&mut st, &class, &mut fx);
        }
        drop(st);
        self.apply(fx);
    }

    pub(crate) fn worker_unblocked(self: &Arc<Self>, from: WorkerId) {
        let mut fx = Effects::default();
        let mut st = self.lock();
        if let Some(class) = st.sub.lease_unblocked(from) {
            self.dispatch(&mut st, &class, &mut fx);
        }
        drop(st);
        self.apply(fx);
    }

    /// A worker we pushed work to is gone: retry or fail its tasks.
    pub(crate) fn worker_lost(
        self: &Arc<Self>,
        st: &mut State,
        worker: WorkerId,
        fx: &mut Effects,
    ) {
        let lost = st.sub.worker_lost(worker, self.session.node_index, fx);
        for (t, err) in lost.fail {
            self.finish_failed(st, t, &err, fx);
        }
        if let Some(class) = lost.dispatch {
            self.dispatch(st, &class, fx);
        }
        for a in lost.flush {
            self.flush_actor(st, a, fx);
        }
    }
}
