//! Lineage reconstruction: an object whose every copy was lost (its node
//! died) is recomputed by running the task that made it again, as Ray's
//! owner does (`core_worker/object_recovery_manager.cc` with the task
//! manager's lineage).
//!
//! The owner keeps, for each finished task with results in the store, how
//! to run it again (its spec, target and remaining retries), for as long
//! as one of those results is in the object table. When a `get` (or a
//! borrower, or a worker starting a task) finds every copy of such a result
//! gone, the owner resets the task's stored results to pending and submits
//! the task again under its own id, its by-ref arguments resolved afresh;
//! an argument that is itself lost is recovered the same way when the
//! worker reports it (`TaskDone::lost_args`), so recovery recurses through
//! the lineage. Each run counts against the task's `max_retries`.
//!
//! The lineage pins the entries of its tasks' by-ref arguments (Ray's
//! lineage pinning): an argument whose last reference went keeps its entry
//! (not its value, whose block is freed) while a lineage record needs it,
//! and is made again first, the same way, when a result that needs it is.
//! Records and pinned entries go together when the last result goes.
//!
//! What cannot be recovered gets a value that says why, so every waiter
//! fails at once: a `put` object, or a result of a task without retries,
//! stays `ObjectLost`; a task out of retries, or whose by-ref argument was
//! a released `put` object (not reconstructable), is
//! `ReconstructionFailed`.
//!
//! Actor results are recomputed as Ray does, only for calls with
//! `max_task_retries`: the method is called again on the actor as it is
//! now (restarted elsewhere if its node was lost), at the back of this
//! caller's queue for it, holding a count on the actor's handle as the
//! first call did; once no handle of the actor is left, the call cannot
//! run again (`ReconstructionFailed`).

use super::submitter::{Target, TaskEntry};
use super::{CoreWorker, Effects, RawRef, State};
use crate::codec;
use crate::core_worker::function_manager::RetryFilter;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ObjectId, TaskId};
use crate::log;
use crate::protocol::PeerMsg;
use crate::transport::{Payload, TaskSpec};
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes of lineage an owner keeps at most (specs with their inline
/// arguments); past it, new results are not reconstructable (Ray's
/// `max_lineage_bytes`, 1 GiB there).
const MAX_LINEAGE_BYTES: usize = 256 << 20;

/// How to run a finished task again.
pub(crate) struct Lineage {
    spec: TaskSpec,
    arg_ids: Vec<(usize, ObjectId)>,
    target: Target,
    retries_left: u32,
    max_retries: u32,
    retry_exceptions: Option<RetryFilter>,
    /// An actor call's actor handle token (see `TaskEntry::handle`).
    handle: Option<ObjectId>,
    /// Objects in the table that this task made.
    live: u32,
    bytes: usize,
}

impl Lineage {
    /// The spec of the task's next run: a run of its own (see
    /// `TaskSpec::attempt`), so that a cancel that came too late for an
    /// earlier run stops not this one.
    fn next_run(&mut self) -> TaskSpec {
        self.spec.attempt = super::submitter::new_attempt();
        self.spec.clone()
    }
}

/// The owner's lineage, by task.
#[derive(Default)]
pub(crate) struct LineageTable {
    tasks: HashMap<TaskId, Lineage>,
    bytes: usize,
    /// The cap was reached (logged once).
    full: bool,
}

fn spec_bytes(spec: &TaskSpec) -> usize {
    // An argument in the store is kept as its location (about 32 bytes).
    256 + spec.function.len() + super::effects::inline_arg_bytes(spec) + 32 * spec.args.len()
}

/// The store block a payload names, by its tag.
fn tag_of(p: &Payload) -> Option<u64> {
    match p {
        Payload::Store { tag, .. } => Some(*tag),
        Payload::Inline(_) => None,
    }
}

impl CoreWorker {
    /// A task finished with results in the store: keep how to run it again
    /// while any of them lives.
    pub(super) fn record_lineage(&self, st: &mut State, t: &TaskEntry) {
        if t.max_retries == 0 || t.cancelled {
            return;
        }
        let tid = t.spec.id;
        let known = st.sub.lineage.tasks.contains_key(&tid);
        let bytes = spec_bytes(&t.spec);
        if !known && st.sub.lineage.bytes + bytes > MAX_LINEAGE_BYTES {
            if !st.sub.lineage.full {
                st.sub.lineage.full = true;
                log!(
                    "lineage of this process's tasks passed {MAX_LINEAGE_BYTES} bytes: results of later tasks are not reconstructable if lost"
                );
            }
            return;
        }
        let mut new = 0;
        for r in &t.spec.returns {
            if let Some(e) = st.objects.get_mut(r) {
                if matches!(e.value, Some(Payload::Store { .. })) && e.made_by != Some(tid) {
                    e.made_by = Some(tid);
                    new += 1;
                }
            }
        }
        let table = &mut st.sub.lineage;
        if let Some(l) = table.tasks.get_mut(&tid) {
            l.live += new;
            l.retries_left = t.retries_left;
            return;
        }
        if new == 0 {
            return;
        }
        table.bytes += bytes;
        for (_, a) in &t.arg_ids {
            if let Some(e) = st.objects.get_mut(a).filter(|e| e.owned) {
                e.lineage += 1;
            }
        }
        let table = &mut st.sub.lineage;
        table.tasks.insert(
            tid,
            Lineage {
                spec: t.spec.clone(),
                arg_ids: t.arg_ids.clone(),
                target: t.target.clone(),
                retries_left: t.retries_left,
                max_retries: t.max_retries,
                retry_exceptions: t.retry_exceptions.clone(),
                handle: t.handle,
                live: new,
                bytes,
            },
        );
    }

    /// An object made by `tid` left the table. The last one takes the
    /// task's record, and with it the pins on its arguments: an argument
    /// kept for the lineage alone goes too, and so, in turn, may its own.
    pub(super) fn release_lineage(st: &mut State, tid: TaskId) {
        let mut work = vec![tid];
        while let Some(tid) = work.pop() {
            let table = &mut st.sub.lineage;
            let Some(l) = table.tasks.get_mut(&tid) else {
                continue;
            };
            l.live = l.live.saturating_sub(1);
            if l.live > 0 {
                continue;
            }
            table.bytes -= l.bytes;
            let Some(l) = table.tasks.remove(&tid) else {
                continue;
            };
            for (_, a) in &l.arg_ids {
                let Some(e) = st.objects.get_mut(a).filter(|e| e.owned) else {
                    continue;
                };
                e.lineage = e.lineage.saturating_sub(1);
                if e.lineage == 0 && e.lineage_only {
                    if let Some(t) = st.objects.remove(a).and_then(|e| e.made_by) {
                        work.push(t);
                    }
                }
            }
        }
    }

    /// Every copy of `id`'s block `lost` is gone (`why`). The owner
    /// recomputes it from its lineage, or makes its value the error saying
    /// why it cannot; a borrower tells the owner and will ask it again.
    /// `Ok`: a new value is coming (wait for it); `Err`: it is not.
    pub(crate) fn object_lost(
        self: &Arc<Self>,
        st: &mut State,
        id: ObjectId,
        lost: &Payload,
        why: &Error,
        fx: &mut Effects,
    ) -> Result<()> {
        let Some(e) = st.objects.get_mut(&id) else {
            return Err(why.clone());
        };
        let current = e.value.as_ref().and_then(tag_of);
        if current.is_none() || current != tag_of(lost) {
            // Recovered since, or being recovered: wait for that.
            return Ok(());
        }
        if !e.owned {
            e.value = None;
            e.requested = false;
            if e.local_copy.take().is_some() {
                fx.unpins.push(lost.clone());
            }
            if let Some(tag) = tag_of(lost) {
                fx.to_owner
                    .push((id.owner, PeerMsg::ObjectLost { id, tag }));
            }
            return Ok(());
        }
        match self.reconstruct(st, id, lost, why, fx) {
            Ok(()) => Ok(()),
            Err(err) => {
                // Every later get, and every borrower asking, fails at once.
                if let Some(e) = st.objects.get_mut(&id) {
                    e.value = Some(Payload::Inline(codec::encode_error(&err)));
                    if e.local_copy.take().is_some() {
                        fx.unpins.push(lost.clone());
                    }
                    fx.notify = true;
                    st.arrived(id, fx);
                }
                Err(err)
            }
        }
    }

    /// Submits again the task that made owned object `id`, then, the same
    /// way, the arguments kept for the lineage alone that it needs (and
    /// theirs): a worklist, not recursion, as a chain of tasks can be
    /// thousands long. An argument that cannot be made again gets the
    /// error as its value, so the task waiting for it fails with why.
    fn reconstruct(
        self: &Arc<Self>,
        st: &mut State,
        id: ObjectId,
        lost: &Payload,
        why: &Error,
        fx: &mut Effects,
    ) -> Result<()> {
        let mut work = self.reconstruct_one(st, id, lost, why, fx)?;
        while let Some(a) = work.pop() {
            let need = Error::new(
                ErrorKind::ObjectLost,
                format!("its value was freed, and the remaking of lost object {id} needs it"),
            );
            match self.reconstruct_one(st, a, &Payload::Inline(Vec::new()), &need, fx) {
                Ok(more) => work.extend(more),
                Err(e) => {
                    let e = Error::new(
                        ErrorKind::ReconstructionFailed,
                        format!(
                            "object {id} was lost and its lineage's argument {a} cannot be made again: {}",
                            e.message()
                        ),
                    );
                    self.set_value(st, a, Payload::Inline(codec::encode_error(&e)), fx);
                }
            }
        }
        Ok(())
    }

    /// Submits again the task that made owned object `id` (`lost`: its
    /// block that is gone, or an empty inline payload when nothing was lost
    /// but a value freed). Returns its by-ref arguments kept for the
    /// lineage alone, to be made again too.
    fn reconstruct_one(
        self: &Arc<Self>,
        st: &mut State,
        id: ObjectId,
        lost: &Payload,
        why: &Error,
        fx: &mut Effects,
    ) -> Result<Vec<ObjectId>> {
        let Some(tid) = st.objects.get(&id).and_then(|e| e.made_by) else {
            return Err(Error::new(
                ErrorKind::ObjectLost,
                format!(
                    "{}; object {id} was put, or made by a task without retries, so it cannot be reconstructed",
                    why.message()
                ),
            ));
        };
        if st.sub.tasks.contains_key(&tid) {
            return Ok(Vec::new());
        }
        let failed = |msg: String| Error::new(ErrorKind::ReconstructionFailed, msg);
        let Some(l) = st.sub.lineage.tasks.get_mut(&tid) else {
            return Err(failed(format!(
                "object {id} was lost ({}) and the lineage of the task that made it is gone",
                why.message()
            )));
        };
        if l.retries_left == 0 {
            return Err(failed(format!(
                "object {id} was lost ({}) and task `{}` that made it has no retries left (max_retries = {})",
                why.message(),
                l.spec.function,
                l.max_retries
            )));
        }
        if let Some((_, a)) = l.arg_ids.iter().find(|(_, a)| !st.objects.contains_key(a)) {
            return Err(failed(format!(
                "object {id} was lost ({}) and task `{}` that made it cannot run again: its argument {a} was released",
                why.message(),
                l.spec.function
            )));
        }
        // Arguments kept for the lineage alone are made again after (this
        // task waits for them as for any pending argument).
        let pinned: Vec<ObjectId> = l
            .arg_ids
            .iter()
            .map(|(_, a)| *a)
            .filter(|a| st.objects.get(a).is_some_and(|e| e.lineage_only))
            .collect();
        // An actor call runs again through a handle of its actor, counted
        // as the first run's was; with none left the actor is gone.
        let handle = match (l.spec.actor, l.handle) {
            (Some(actor), token) => {
                match token.and_then(|h| st.objects.get_mut(&h).map(|e| (h, e))) {
                    Some((h, e)) => {
                        e.local += 1;
                        Some(h)
                    }
                    None if token.is_none() => None,
                    None => {
                        return Err(failed(format!(
                            "object {id} was lost ({}) and actor {actor} that made it with `{}` has no handle left to call it again",
                            why.message(),
                            l.spec.function
                        )))
                    }
                }
            }
            (None, _) => None,
        };
        super::submitter::RECONSTRUCTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if l.retries_left != crate::core_worker::function_manager::RETRY_FOREVER {
            l.retries_left -= 1;
        }
        let mut spec = l.next_run();
        let arg_ids = l.arg_ids.clone();
        let (target, retries_left, max_retries, retry_exceptions) = (
            match l.target {
                // A soft affinity to the lost node runs elsewhere now.
                Target::Node { node, soft: true } if self.node_known_lost(node) => Target::Default,
                ref t => t.clone(),
            },
            l.retries_left,
            l.max_retries,
            l.retry_exceptions.clone(),
        );
        for (i, _) in &arg_ids {
            spec.args[*i] = Payload::Inline(Vec::new());
        }
        spec.arg_copies.clear();
        log!(
            "object {id} was lost ({}): running task `{}` again to reconstruct it",
            why.message(),
            spec.function
        );
        let returns = spec.returns.clone();
        // The run holds its arguments, as the first one did.
        let mut keep = Vec::with_capacity(arg_ids.len());
        for (_, a) in &arg_ids {
            if let Some(e) = st.objects.get_mut(a) {
                e.local += 1;
                keep.push(RawRef {
                    id: *a,
                    cw: self.clone(),
                });
            }
        }
        let lost_node = match lost {
            Payload::Store { node, .. } => Some(*node),
            Payload::Inline(_) => None,
        };
        // Its results in the store are made again: pending until then.
        for r in &returns {
            let Some(e) = st.objects.get_mut(r) else {
                continue;
            };
            if e.lineage_only {
                // Its value was freed already: pending again, and in use.
                e.lineage_only = false;
                e.task = Some(tid);
                continue;
            }
            if lost_node.is_none() && e.value.is_some() {
                // Nothing was lost (a freed argument is being remade): a
                // result that is there stays (the run's copy of it is
                // freed as a duplicate when it comes).
                continue;
            }
            let Some(old @ Payload::Store { node, offset, .. }) = e.value.clone() else {
                continue;
            };
            e.value = None;
            e.task = Some(tid);
            e.copies.clear();
            if e.local_copy.take().is_some() {
                fx.unpins.push(old);
            }
            if Some(node) != lost_node {
                fx.free_offsets.push((node, offset));
            }
        }
        let entry = Box::new(TaskEntry {
            retries_left,
            max_retries,
            retry_exceptions,
            arg_ids,
            ..TaskEntry::waiting(spec, keep, handle, target)
        });
        self.enqueue(st, tid, entry, fx);
        Ok(pinned)
    }

    /// A worker could not start `t`: the arguments at `lost_args` had lost
    /// every copy. Recovers them and queues `t` again for when they are
    /// back (not a retry of `t`), or fails it with the reason they cannot be.
    pub(super) fn args_lost(
        self: &Arc<Self>,
        st: &mut State,
        mut t: Box<TaskEntry>,
        lost_args: &[u32],
        fx: &mut Effects,
    ) {
        let mut deps = Vec::new();
        for idx in lost_args {
            let Some(&(i, arg)) = t.arg_ids.iter().find(|(i, _)| *i as u32 == *idx) else {
                continue;
            };
            let Some(lost) = t.spec.args.get(i).cloned() else {
                continue;
            };
            let why = Error::new(
                ErrorKind::ObjectLost,
                format!(
                    "every copy of argument {i} of task `{}` is gone",
                    t.spec.function
                ),
            );
            if let Err(e) = self.object_lost(st, arg, &lost, &why, fx) {
                self.fail_returns(st, &t.spec, &e, fx);
                fx.drops.extend(std::mem::take(&mut t.keep));
                return;
            }
            t.spec.args[i] = Payload::Inline(Vec::new());
            deps.push((i, arg));
        }
        let id = t.spec.id;
        st.sub.wait_again(t);
        self.resolve_deps(st, id, deps, fx);
    }
}

#[cfg(test)]
mod tests {
    //! Lineage pinning on its own: no socket, no process.
    use super::*;
    use crate::core_worker::Entry;
    use crate::ids::WorkerId;

    const NODE: u16 = 0;

    fn me() -> WorkerId {
        WorkerId(0x0000_0fa0_0000_0001)
    }

    fn block(offset: u64) -> Payload {
        Payload::Store {
            node: NODE,
            offset,
            len: 4096,
            tag: 7,
        }
    }

    /// An owned object in the store, made by task `made_by`, with one ref.
    fn made(st: &mut State, seq: u64, made_by: TaskId) -> ObjectId {
        let id = ObjectId { owner: me(), seq };
        st.objects.insert(
            id,
            Box::new(Entry {
                local: 1,
                owned: true,
                value: Some(block(seq * 4096)),
                made_by: Some(made_by),
                ..Entry::default()
            }),
        );
        id
    }

    /// Task `tid`'s lineage: it made `result` from the by-ref `args`.
    fn record(st: &mut State, tid: TaskId, result: ObjectId, args: &[ObjectId]) {
        for a in args {
            if let Some(e) = st.objects.get_mut(a) {
                e.lineage += 1;
            }
        }
        st.sub.lineage.tasks.insert(
            tid,
            Lineage {
                spec: TaskSpec {
                    id: tid,
                    function: "f".into(),
                    args: args.iter().map(|_| Payload::Inline(Vec::new())).collect(),
                    returns: vec![result],
                    actor: None,
                    alone: false,
                    max_calls: 0,
                    resources: crate::resources::ResourceSet::new(),
                    arg_copies: Vec::new(),
                    gpus: Vec::new(),
                    attempt: 0,
                },
                arg_ids: args.iter().copied().enumerate().collect(),
                target: Target::Default,
                retries_left: 3,
                max_retries: 3,
                retry_exceptions: None,
                handle: None,
                live: 1,
                bytes: 300,
            },
        );
        st.sub.lineage.bytes += 300;
    }

    fn task(seq: u64) -> TaskId {
        TaskId { owner: me(), seq }
    }

    /// Each run that remakes a task's results is an attempt no run of it
    /// had before.
    #[test]
    fn each_remaking_run_is_a_new_attempt() {
        let mut st = State::default();
        let a = made(&mut st, 1, task(1));
        record(&mut st, task(1), a, &[]);
        let l = st.sub.lineage.tasks.get_mut(&task(1)).unwrap();
        assert_eq!(l.spec.attempt, 0);
        let (one, two) = (l.next_run().attempt, l.next_run().attempt);
        assert!(one != 0 && two != 0 && one != two, "{one} {two}");
    }

    /// `a = f()`, `b = g(a)`, `c = h(b)`: dropping the refs to `a` and `b`
    /// frees their blocks but keeps their entries for `c`'s lineage (and
    /// nothing else sees them: no object, no borrow); dropping `c` lets the
    /// whole chain go, lineage records included.
    #[test]
    fn released_arguments_stay_for_the_lineage_then_go_with_it() {
        let mut st = State::default();
        let a = made(&mut st, 1, task(1));
        let b = made(&mut st, 2, task(2));
        let c = made(&mut st, 3, task(3));
        record(&mut st, task(1), a, &[]);
        record(&mut st, task(2), b, &[a]);
        record(&mut st, task(3), c, &[b]);
        let mut fx = Effects::default();
        st.drop_local(NODE, a, &mut fx);
        st.drop_local(NODE, b, &mut fx);
        assert_eq!(fx.free_offsets, vec![(NODE, 4096), (NODE, 8192)]);
        for id in [a, b] {
            let e = &st.objects[&id];
            assert!(e.lineage_only && e.value.is_none(), "{id}");
        }
        assert_eq!(st.sub.lineage.tasks.len(), 3, "every record stays");
        let mut fx = Effects::default();
        st.drop_local(NODE, c, &mut fx);
        assert_eq!(fx.free_offsets, vec![(NODE, 12288)]);
        assert!(st.objects.is_empty(), "{:?}", st.objects.keys());
        assert!(st.sub.lineage.tasks.is_empty());
        assert_eq!(st.sub.lineage.bytes, 0);
    }

    /// A put object is no lineage's to remake: its entry goes with its last
    /// ref, whatever lineage takes it as an argument.
    #[test]
    fn a_released_put_argument_is_not_kept() {
        let mut st = State::default();
        let p = ObjectId {
            owner: me(),
            seq: 9,
        };
        st.objects.insert(
            p,
            Box::new(Entry {
                local: 1,
                owned: true,
                value: Some(block(0)),
                ..Entry::default()
            }),
        );
        let r = made(&mut st, 10, task(10));
        record(&mut st, task(10), r, &[p]);
        let mut fx = Effects::default();
        st.drop_local(NODE, p, &mut fx);
        assert!(!st.objects.contains_key(&p));
        assert_eq!(fx.free_offsets, vec![(NODE, 0)]);
    }
}
