//! Dependency resolution at the owner (Ray's `LocalDependencyResolver`): a
//! submitted task waits here until each argument passed by ref is ready,
//! gets its value (or its store block's place) filled in, fails at once
//! if one holds an error, and is then queued under its scheduling key,
//! which for a task without a placement asks the node holding most of its
//! argument bytes (Ray's locality-aware leasing).

use super::*;

/// A task whose arguments hold at least this many bytes in another node's
/// store is leased on that node (Ray's locality-aware leasing): moving the
/// task is cheaper than moving the data.
const LOCALITY_MIN_BYTES: u64 = 1 << 20;

/// The nodes other than the primary's that hold a copy of each store
/// argument passed by ref, as the object table knows them.
fn arg_copies(
    objects: &crate::core_worker::IdMap<ObjectId, Box<crate::core_worker::Entry>>,
    args: &[Payload],
    ids: &[(usize, ObjectId)],
) -> Vec<(u32, Vec<u16>)> {
    let mut out = Vec::new();
    for (i, id) in ids {
        let Some(Payload::Store { node, .. }) = args.get(*i) else {
            continue;
        };
        let Some(e) = objects.get(id) else { continue };
        let copies: Vec<u16> = e.copies.iter().copied().filter(|c| c != node).collect();
        if !copies.is_empty() {
            out.push((*i as u32, copies));
        }
    }
    out
}

impl CoreWorker {
    /// The scheduling key of a task whose arguments are resolved.
    pub(super) fn sched_key(&self, t: &TaskEntry) -> SchedKey {
        let mut key = SchedKey {
            shape: t.spec.resources.clone(),
            node: None,
            soft: true,
            spread: false,
        };
        match t.target {
            Target::Node { node, soft } => {
                key.node = Some(node);
                key.soft = soft;
            }
            Target::Spread => key.spread = true,
            Target::Default => {
                // Bytes of its arguments per node, primary and cached
                // copies alike (Ray's locality counts every location),
                // on nodes not known to be lost.
                let dead = |n: u16| self.node_known_lost(n);
                let mut bytes: HashMap<u16, u64> = HashMap::new();
                for (i, a) in t.spec.args.iter().enumerate() {
                    if let Payload::Store { node, len, .. } = a {
                        let copies = crate::transport::copies_of(&t.spec.arg_copies, i);
                        for n in std::iter::once(node).chain(copies) {
                            if !dead(*n) {
                                *bytes.entry(*n).or_default() += len;
                            }
                        }
                    }
                }
                let here = bytes.get(&self.session.node_index).copied().unwrap_or(0);
                if let Some((n, b)) = bytes.into_iter().max_by_key(|(_, b)| *b) {
                    if n != self.session.node_index && b >= LOCALITY_MIN_BYTES && b > here {
                        key.node = Some(n);
                    }
                }
            }
        }
        key
    }

    /// Fills task `id`'s by-ref arguments `deps` that are ready, waits for
    /// the others, and queues it once none is missing (fails it if one
    /// holds an error).
    pub(in crate::core_worker) fn resolve_deps(
        self: &Arc<Self>,
        st: &mut State,
        id: TaskId,
        deps: Vec<(usize, ObjectId)>,
        fx: &mut Effects,
    ) {
        let mut failed = None;
        for (i, dep) in deps {
            match self.poll_value(st, dep, fx) {
                Ok(Some(p)) => {
                    if let Some(e) = payload_error(self, &p) {
                        failed = Some(e);
                        break;
                    }
                    if let Some(t) = st.sub.tasks.get_mut(&id) {
                        t.spec.args[i] = p;
                    }
                }
                Ok(None) => {
                    if let Some(t) = st.sub.tasks.get_mut(&id) {
                        t.deps.push((i, dep));
                    }
                    let w = st.sub.dep_waiters.entry(dep).or_default();
                    if !w.contains(&id) {
                        w.push(id);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.finish_failed(st, id, &e, fx);
        } else {
            self.ready_if_resolved(st, id, fx);
        }
    }

    pub(super) fn ready_if_resolved(
        self: &Arc<Self>,
        st: &mut State,
        id: TaskId,
        fx: &mut Effects,
    ) {
        let Some(t) = st.sub.tasks.get_mut(&id) else {
            return;
        };
        if !t.deps.is_empty() || t.status != Status::WaitingDeps {
            return;
        }
        // Where else its store arguments are: for locality, and for the
        // worker to read from when the primary's node is gone.
        if !t.arg_ids.is_empty() {
            let copies = arg_copies(&st.objects, &t.spec.args, &t.arg_ids);
            t.spec.arg_copies = copies;
        }
        if let Some(a) = t.spec.actor {
            self.flush_actor(st, a, fx);
            return;
        }
        t.status = Status::Queued;
        let class = self.sched_key(t);
        t.key = Some(class.clone());
        st.sub
            .classes
            .entry(class.clone())
            .or_default()
            .queue
            .push_back(id);
        self.dispatch(st, &class, fx);
    }

    /// An object became ready: resolve the tasks waiting for it.
    pub(crate) fn deps_ready(self: &Arc<Self>, st: &mut State, id: ObjectId, fx: &mut Effects) {
        let Some(waiters) = st.sub.dep_waiters.remove(&id) else {
            return;
        };
        let Some(payload) = st.objects.get(&id).and_then(|e| e.value.clone()) else {
            return;
        };
        let err = payload_error(self, &payload);
        for t in waiters {
            if let Some(e) = &err {
                self.finish_failed(st, t, e, fx);
                continue;
            }
            if let Some(task) = st.sub.tasks.get_mut(&t) {
                task.deps.retain(|(i, dep)| {
                    if *dep == id {
                        task.spec.args[*i] = payload.clone();
                        false
                    } else {
                        true
                    }
                });
            }
            self.ready_if_resolved(st, t, fx);
        }
    }
}
