//! The actor table: the GCS's record of every actor, its names, and who
//! waits for one to settle, as a state machine with no IO. The shell
//! ([`Gcs`](super::Gcs)) feeds it events (registered, created, its worker
//! died, killed, out of scope, owner gone) and carries out the
//! [`ActorAction`]s and answers the [`Waiter`]s that come back.
//!
//! Connections are opaque [`ConnId`]s here; the shell keeps the sockets.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ActorId, LeaseId, WorkerId};
use crate::transport::{ActorInfo, ActorLookup, ActorSpec, ActorState, NamedActor};
use std::collections::{HashMap, HashSet, VecDeque};

/// Owners remembered as gone, at most (the oldest are forgotten first).
/// An owner's `RegisterActor` travels through its raylet on another GCS
/// connection than the raylet's word that the owner is gone, so it may be
/// served after it: the register must still find the owner gone. A few
/// seconds' worth of worker exits is all that race needs.
const GONE_OWNERS_MAX: usize = 65_536;

struct ActorRecord {
    spec: ActorSpec,
    state: ActorState,
    worker: Option<WorkerId>,
    lease: Option<LeaseId>,
    incarnation: u32,
    restarts: u32,
    killed: bool,
    death: Option<Error>,
}

/// A connection to the GCS, as the tables know it (the shell maps it to
/// its socket).
pub(crate) type ConnId = u64;

/// Who waits for an actor to settle (alive, or dead for good).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiter {
    /// The creator's `RegisterActor` request: answered once the
    /// constructor has run (or failed for good).
    Creator { conn: ConnId, req: u64 },
    /// A `LookupActor` that asked to wait while the actor is being
    /// (re)created.
    Lookup { conn: ConnId, req: u64 },
}

/// What the shell must do after a transition.
#[derive(Debug, PartialEq)]
pub(crate) enum ActorAction {
    /// (Re)create the actor: lease a worker and run the constructor.
    Create(ActorId),
    /// Give the worker back to the raylet, killing it.
    ReleaseWorker(LeaseId),
}

/// The actor table (no IO).
#[derive(Default)]
pub(crate) struct ActorTable {
    actors: HashMap<ActorId, ActorRecord>,
    /// Live named actors, by (namespace, name).
    names: HashMap<(String, String), ActorId>,
    waiters: HashMap<ActorId, Vec<Waiter>>,
    /// Processes known gone (`owner_gone`), oldest first in `gone_order`.
    gone: HashSet<WorkerId>,
    gone_order: VecDeque<WorkerId>,
}

impl ActorTable {
    /// [`ActorTable::register_from`] an owner whose node is not lost.
    #[cfg(test)]
    pub(crate) fn register(&mut self, spec: ActorSpec) -> Result<(ActorId, Vec<ActorAction>)> {
        self.register_from(spec, false)
    }

    /// Registers an actor to create; answers the actor the creator gets
    /// (with `get_if_exists`, the live one already holding the name) and
    /// what to do. `owner_node_lost`: the owner's node is one the cluster
    /// has declared lost (the shell knows the node table), so the owner
    /// went with it; an owner reported gone itself is remembered here.
    pub(crate) fn register_from(
        &mut self,
        spec: ActorSpec,
        owner_node_lost: bool,
    ) -> Result<(ActorId, Vec<ActorAction>)> {
        if !spec.detached && (owner_node_lost || self.gone.contains(&spec.owner)) {
            // It would end with its owner at once: nothing is created, and
            // no name taken.
            return Err(Error::new(
                ErrorKind::ActorDied,
                format!(
                    "actor `{}` was not created: its owner (worker {}, which asked for it) is gone{}",
                    spec.class,
                    spec.owner,
                    if owner_node_lost {
                        ", with its node"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if let Some(name) = &spec.name {
            let key = (spec.namespace.clone(), name.clone());
            if let Some(&existing) = self.names.get(&key) {
                let class = self.actors.get(&existing).map(|a| a.spec.class.as_str());
                return match class {
                    Some(c) if spec.get_if_exists && c == spec.class => Ok((existing, Vec::new())),
                    Some(c) if spec.get_if_exists => Err(Error::new(
                        ErrorKind::TypeMismatch,
                        format!("actor `{name}` is a `{c}`, not a `{}`", spec.class),
                    )),
                    _ => Err(Error::invalid(format!(
                        "an actor named `{name}` already exists{}",
                        in_namespace(&spec.namespace)
                    ))),
                };
            }
            self.names.insert(key, spec.id);
        }
        let id = spec.id;
        self.actors.insert(
            id,
            ActorRecord {
                spec,
                state: ActorState::PendingCreation,
                worker: None,
                lease: None,
                incarnation: 0,
                restarts: 0,
                killed: false,
                death: None,
            },
        );
        Ok((id, vec![ActorAction::Create(id)]))
    }

    /// The creator of `id` waits for its constructor to have run (answered
    /// at once if the actor is settled already: `get_if_exists`).
    pub(crate) fn wait_for_creation(&mut self, id: ActorId, w: Waiter) -> Vec<(Waiter, ActorInfo)> {
        self.waiters.entry(id).or_default().push(w);
        self.settle(id)
    }

    /// The live named actors, in `namespace` or in all, sorted.
    pub(crate) fn named(&self, namespace: Option<&str>) -> Vec<NamedActor> {
        let mut out: Vec<NamedActor> = self
            .names
            .keys()
            .filter(|(ns, _)| namespace.is_none_or(|want| want == ns))
            .map(|(ns, name)| NamedActor {
                namespace: ns.clone(),
                name: name.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    pub(crate) fn spec(&self, id: ActorId) -> Option<ActorSpec> {
        self.actors.get(&id).map(|a| a.spec.clone())
    }

    fn info(a: &ActorRecord) -> ActorInfo {
        ActorInfo {
            id: a.spec.id,
            class: a.spec.class.clone(),
            state: a.state,
            worker: a.worker,
            incarnation: a.incarnation,
            death: a.death.clone(),
            max_task_retries: a.spec.max_task_retries,
            max_concurrency: a.spec.max_concurrency,
        }
    }

    /// Settled actors answer their waiters.
    fn settle(&mut self, id: ActorId) -> Vec<(Waiter, ActorInfo)> {
        let Some(a) = self.actors.get(&id) else {
            return Vec::new();
        };
        if !matches!(a.state, ActorState::Alive | ActorState::Dead) {
            return Vec::new();
        }
        let info = Self::info(a);
        self.waiters
            .remove(&id)
            .unwrap_or_default()
            .into_iter()
            .map(|w| (w, info.clone()))
            .collect()
    }

    /// Whether the actor ended (killed, out of scope, or its owner died):
    /// a creation still waiting for a worker is then cancelled.
    pub(crate) fn ended(&self, id: ActorId) -> bool {
        self.actors.get(&id).is_none_or(|a| a.killed)
    }

    /// The constructor ran on `worker`. A kill that raced the creation wins.
    pub(crate) fn created(
        &mut self,
        id: ActorId,
        worker: WorkerId,
        lease: LeaseId,
    ) -> (Vec<ActorAction>, Vec<(Waiter, ActorInfo)>) {
        let Some(a) = self.actors.get_mut(&id) else {
            return (vec![ActorAction::ReleaseWorker(lease)], Vec::new());
        };
        if a.killed {
            return (vec![ActorAction::ReleaseWorker(lease)], self.settle(id));
        }
        a.state = ActorState::Alive;
        a.worker = Some(worker);
        a.lease = Some(lease);
        (Vec::new(), self.settle(id))
    }

    /// Creation failed for good (constructor panicked, no worker, ...).
    pub(crate) fn creation_failed(&mut self, id: ActorId, err: Error) -> Vec<(Waiter, ActorInfo)> {
        if let Some(a) = self.actors.get_mut(&id) {
            a.state = ActorState::Dead;
            a.worker = None;
            a.lease = None;
            a.death = Some(err);
            Self::release_name(&mut self.names, a);
        }
        self.settle(id)
    }

    /// The actor's process died: restart it or declare it dead.
    pub(crate) fn worker_died(
        &mut self,
        id: ActorId,
    ) -> (Vec<ActorAction>, Vec<(Waiter, ActorInfo)>) {
        let Some(a) = self.actors.get_mut(&id) else {
            return (Vec::new(), Vec::new());
        };
        a.worker = None;
        a.lease = None;
        if a.state == ActorState::Dead {
            return (Vec::new(), self.settle(id));
        }
        if !a.killed && a.restarts < a.spec.max_restarts {
            a.restarts += 1;
            a.incarnation += 1;
            a.state = ActorState::Restarting;
            return (vec![ActorAction::Create(id)], Vec::new());
        }
        a.state = ActorState::Dead;
        a.death = Some(Error::new(
            ErrorKind::ActorDied,
            format!(
                "actor `{}` died: its process exited and it was restarted {} of max_restarts = {} times",
                a.spec.class, a.restarts, a.spec.max_restarts
            ),
        ));
        Self::release_name(&mut self.names, a);
        (Vec::new(), self.settle(id))
    }

    /// `kill(handle)`: dead for good, whatever its restarts.
    pub(crate) fn kill(&mut self, id: ActorId) -> (Vec<ActorAction>, Vec<(Waiter, ActorInfo)>) {
        self.end(id, |class| {
            format!("actor `{class}` was killed with rustray::kill")
        })
    }

    /// `kill(no_restart = false)`: end the actor's process only; its death
    /// is then handled as a crash (restarted while `max_restarts` allows).
    pub(crate) fn end_process(&mut self, id: ActorId) -> Vec<ActorAction> {
        match self.actors.get_mut(&id) {
            Some(a) if a.state == ActorState::Alive => a
                .lease
                .take()
                .map(ActorAction::ReleaseWorker)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The actor called `exit_actor()`: dead for good, not restarted.
    pub(crate) fn exited(&mut self, id: ActorId) -> (Vec<ActorAction>, Vec<(Waiter, ActorInfo)>) {
        self.end(id, |class| {
            format!("actor `{class}` exited by calling rustray::exit_actor()")
        })
    }

    /// Every handle to the actor was dropped (its owner's reference count
    /// reached zero, borrowers included): it ends as if killed, and its
    /// worker and resources go back to its node (Ray's out-of-scope actor).
    pub(crate) fn out_of_scope(
        &mut self,
        id: ActorId,
    ) -> (Vec<ActorAction>, Vec<(Waiter, ActorInfo)>) {
        self.end(id, |class| {
            format!("actor `{class}` ended because every handle to it was dropped")
        })
    }

    /// The process `worker` is gone: the actors it created end with it
    /// (see [`ActorTable::owner_died`]), and one it asked for that is
    /// registered later is refused.
    pub(crate) fn owner_gone(
        &mut self,
        worker: WorkerId,
    ) -> (Vec<ActorAction>, Vec<(Waiter, ActorInfo)>) {
        if self.gone.insert(worker) {
            self.gone_order.push_back(worker);
            if self.gone_order.len() > GONE_OWNERS_MAX {
                if let Some(old) = self.gone_order.pop_front() {
                    self.gone.remove(&old);
                }
            }
        }
        self.owner_died(|o| o == worker)
    }

    /// The processes `owner` accepts are gone (one worker, or every
    /// process of a lost node): the actors they created end with them,
    /// pending ones included (they then hold nothing), except detached
    /// ones.
    pub(crate) fn owner_died(
        &mut self,
        owner: impl Fn(WorkerId) -> bool,
    ) -> (Vec<ActorAction>, Vec<(Waiter, ActorInfo)>) {
        let doomed: Vec<(ActorId, WorkerId)> = self
            .actors
            .values()
            .filter(|a| !a.spec.detached && a.state != ActorState::Dead && owner(a.spec.owner))
            .map(|a| (a.spec.id, a.spec.owner))
            .collect();
        let (mut actions, mut waiters) = (Vec::new(), Vec::new());
        for (id, w) in doomed {
            let (a, ws) = self.end(id, |class| {
                format!("actor `{class}` ended because its owner (worker {w}, which created it) died; create it with lifetime_detached() to outlive its creator")
            });
            actions.extend(a);
            waiters.extend(ws);
        }
        (actions, waiters)
    }

    /// A name is freed when its actor is dead for good.
    fn release_name(names: &mut HashMap<(String, String), ActorId>, a: &ActorRecord) {
        if let Some(name) = &a.spec.name {
            let key = (a.spec.namespace.clone(), name.clone());
            if names.get(&key) == Some(&a.spec.id) {
                names.remove(&key);
            }
        }
    }

    fn end(
        &mut self,
        id: ActorId,
        why: impl FnOnce(&str) -> String,
    ) -> (Vec<ActorAction>, Vec<(Waiter, ActorInfo)>) {
        let Some(a) = self.actors.get_mut(&id) else {
            return (Vec::new(), Vec::new());
        };
        a.killed = true;
        a.state = ActorState::Dead;
        a.death = Some(Error::new(ErrorKind::ActorDied, why(&a.spec.class)));
        Self::release_name(&mut self.names, a);
        let actions = a
            .lease
            .take()
            .map(ActorAction::ReleaseWorker)
            .into_iter()
            .collect();
        (actions, self.settle(id))
    }

    /// Answers now, or registers a waiter (returns `None`).
    pub(crate) fn lookup(
        &mut self,
        by: &ActorLookup,
        wait: Option<Waiter>,
    ) -> Option<Result<ActorInfo>> {
        let id = match by {
            ActorLookup::Id(id) => *id,
            ActorLookup::Name(n) => match self.names.get(&(n.namespace.clone(), n.name.clone())) {
                Some(id) => *id,
                None => {
                    return Some(Err(Error::new(
                        ErrorKind::ActorNotFound,
                        format!(
                            "no actor is named `{}`{}",
                            n.name,
                            in_namespace(&n.namespace)
                        ),
                    )))
                }
            },
        };
        let Some(a) = self.actors.get(&id) else {
            return Some(Err(Error::new(
                ErrorKind::ActorNotFound,
                format!("unknown {id:?}"),
            )));
        };
        match (a.state, wait) {
            (ActorState::Alive | ActorState::Dead, _) | (_, None) => Some(Ok(Self::info(a))),
            (_, Some(w)) => {
                self.waiters.entry(id).or_default().push(w);
                None
            }
        }
    }
}

/// " in namespace `x`" for messages (nothing for the default one).
fn in_namespace(ns: &str) -> String {
    if ns.is_empty() {
        String::new()
    } else {
        format!(" in namespace `{ns}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::ResourceSet;

    fn spec(name: Option<&str>, max_restarts: u32) -> ActorSpec {
        ActorSpec {
            id: ActorId::random(),
            class: "m::Counter".into(),
            args: Vec::new(),
            name: name.map(String::from),
            max_restarts,
            shape: ResourceSet::new(),
            placement: ResourceSet::new(),
            strategy: crate::SchedulingStrategy::Default,
            owner: WorkerId(1),
            detached: false,
            namespace: String::new(),
            get_if_exists: false,
            max_task_retries: 0,
            max_concurrency: 1,
        }
    }

    fn named(name: &str) -> ActorLookup {
        ActorLookup::Name(NamedActor {
            namespace: String::new(),
            name: name.into(),
        })
    }

    #[test]
    fn names_live_in_namespaces_and_get_if_exists_finds_the_holder() {
        let mut t = ActorTable::default();
        let a = spec(Some("x"), 0);
        let id = a.id;
        t.register(a).unwrap();
        let mut other_ns = spec(Some("x"), 0);
        other_ns.namespace = "ns2".into();
        let id2 = other_ns.id;
        assert_eq!(
            t.register(other_ns).unwrap(),
            (id2, vec![ActorAction::Create(id2)])
        );
        let mut again = spec(Some("x"), 0);
        again.get_if_exists = true;
        assert_eq!(
            t.register(again).unwrap(),
            (id, Vec::new()),
            "the holder, nothing to create"
        );
        let mut wrong = spec(Some("x"), 0);
        wrong.get_if_exists = true;
        wrong.class = "m::Other".into();
        assert_eq!(
            t.register(wrong).unwrap_err().kind(),
            ErrorKind::TypeMismatch
        );
        let names = |t: &ActorTable, ns: Option<&str>| -> Vec<String> {
            t.named(ns)
                .into_iter()
                .map(|n| format!("{}/{}", n.namespace, n.name))
                .collect()
        };
        assert_eq!(names(&t, None), vec!["/x", "ns2/x"]);
        assert_eq!(names(&t, Some("ns2")), vec!["ns2/x"]);
        t.kill(id);
        assert_eq!(names(&t, None), vec!["ns2/x"]);
        let e = t.lookup(&named("x"), None).unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ActorNotFound);
    }

    #[test]
    fn names_are_unique_and_freed_by_kill() {
        let mut t = ActorTable::default();
        let a = spec(Some("x"), 0);
        let id = a.id;
        t.register(a).unwrap();
        assert!(t.register(spec(Some("x"), 0)).is_err());
        t.kill(id);
        t.register(spec(Some("x"), 0)).unwrap();
    }

    #[test]
    fn names_are_freed_when_the_actor_dies_or_goes_out_of_scope() {
        let mut t = ActorTable::default();
        let a = spec(Some("d"), 0);
        let id = a.id;
        t.register(a).unwrap();
        t.created(id, WorkerId(5), LeaseId(1));
        t.worker_died(id);
        let b = spec(Some("d"), 0);
        let id_b = b.id;
        t.register(b).unwrap();
        let (act, _) = t.out_of_scope(id_b);
        assert!(act.is_empty(), "not created yet: no worker to release");
        let info = t.lookup(&ActorLookup::Id(id_b), None).unwrap().unwrap();
        assert_eq!(info.state, ActorState::Dead);
        assert!(info.death.unwrap().message().contains("dropped"));
        // The old actor's death does not free the new actor's name.
        let c = spec(Some("d"), 0);
        t.register(c).unwrap();
        t.worker_died(id);
        assert!(t.register(spec(Some("d"), 0)).is_err());
    }

    #[test]
    fn actors_end_with_their_owner_unless_detached() {
        let mut t = ActorTable::default();
        let mut alive = spec(Some("o"), 3);
        alive.owner = WorkerId(7);
        let mut pending = spec(None, 0);
        pending.owner = WorkerId(7);
        let mut detached = spec(None, 0);
        detached.owner = WorkerId(7);
        detached.detached = true;
        let other = spec(None, 0);
        let ids = [alive.id, pending.id, detached.id, other.id];
        for s in [alive, pending, detached, other] {
            t.register(s).unwrap();
        }
        t.created(ids[0], WorkerId(5), LeaseId(1));
        let (act, _) = t.owner_died(|w| w == WorkerId(7));
        assert_eq!(act, vec![ActorAction::ReleaseWorker(LeaseId(1))]);
        let state = |t: &mut ActorTable, id| t.lookup(&ActorLookup::Id(id), None).unwrap().unwrap();
        assert_eq!(state(&mut t, ids[0]).state, ActorState::Dead);
        assert!(state(&mut t, ids[0])
            .death
            .unwrap()
            .message()
            .contains("owner"));
        // A pending actor is cancelled: the worker that comes late is
        // released, not used.
        assert_eq!(state(&mut t, ids[1]).state, ActorState::Dead);
        let (act, _) = t.created(ids[1], WorkerId(6), LeaseId(2));
        assert_eq!(act, vec![ActorAction::ReleaseWorker(LeaseId(2))]);
        assert_eq!(state(&mut t, ids[2]).state, ActorState::PendingCreation);
        assert_eq!(state(&mut t, ids[3]).state, ActorState::PendingCreation);
        // Its name is free again.
        t.register(spec(Some("o"), 0)).unwrap();
    }

    /// An owner's register that arrives after the word that the owner is
    /// gone (they travel on different connections) creates nothing and
    /// takes no name; a detached actor does not depend on its owner.
    #[test]
    fn a_register_after_its_owner_is_gone_creates_nothing() {
        let mut t = ActorTable::default();
        let (act, _) = t.owner_gone(WorkerId(9));
        assert!(act.is_empty());
        let mut late = spec(Some("late"), 0);
        late.owner = WorkerId(9);
        let e = t.register(late).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ActorDied);
        assert!(e.message().contains("owner"), "{e}");
        let mut detached = spec(None, 0);
        detached.owner = WorkerId(9);
        detached.detached = true;
        let (_, act) = t.register(detached).unwrap();
        assert_eq!(act.len(), 1, "a detached actor is created");
        let mut other = spec(Some("late"), 0);
        other.owner = WorkerId(10);
        // An owner whose node was declared lost is gone with it.
        let e = t.register_from(other.clone(), true).unwrap_err();
        assert!(e.message().contains("with its node"), "{e}");
        assert!(t.register(other).is_ok(), "the name was not taken");
        // The record is bounded: the oldest owners are forgotten first.
        for w in 0..GONE_OWNERS_MAX as u64 {
            t.owner_gone(WorkerId(1_000_000 + w));
        }
        assert_eq!(t.gone.len(), GONE_OWNERS_MAX);
        assert!(!t.gone.contains(&WorkerId(9)));
    }

    #[test]
    fn a_kill_that_allows_restarts_only_ends_the_process() {
        let mut t = ActorTable::default();
        let a = spec(None, 1);
        let id = a.id;
        t.register(a).unwrap();
        assert!(t.end_process(id).is_empty(), "not created yet");
        t.created(id, WorkerId(5), LeaseId(1));
        assert_eq!(
            t.end_process(id),
            vec![ActorAction::ReleaseWorker(LeaseId(1))]
        );
        let (act, _) = t.worker_died(id);
        assert_eq!(act, vec![ActorAction::Create(id)], "restarted");
        t.created(id, WorkerId(6), LeaseId(2));
        let (act, _) = t.exited(id);
        assert_eq!(act, vec![ActorAction::ReleaseWorker(LeaseId(2))]);
        let (act, _) = t.worker_died(id);
        assert!(act.is_empty(), "an actor that exited is not restarted");
    }

    #[test]
    fn restarts_are_counted_then_actor_dies() {
        let mut t = ActorTable::default();
        let a = spec(None, 1);
        let id = a.id;
        t.register(a).unwrap();
        t.created(id, WorkerId(5), LeaseId(1));
        let (act, _) = t.worker_died(id);
        assert_eq!(act, vec![ActorAction::Create(id)]);
        assert_eq!(t.actors[&id].state, ActorState::Restarting);
        t.created(id, WorkerId(6), LeaseId(2));
        assert_eq!(t.actors[&id].incarnation, 1);
        let (act, _) = t.worker_died(id);
        assert!(act.is_empty());
        let info = t.lookup(&ActorLookup::Id(id), None).unwrap().unwrap();
        assert_eq!(info.state, ActorState::Dead);
        assert_eq!(info.death.unwrap().kind(), ErrorKind::ActorDied);
    }

    #[test]
    fn killed_actor_is_not_restarted() {
        let mut t = ActorTable::default();
        let a = spec(None, 5);
        let id = a.id;
        t.register(a).unwrap();
        t.created(id, WorkerId(5), LeaseId(1));
        let (act, _) = t.kill(id);
        assert_eq!(act, vec![ActorAction::ReleaseWorker(LeaseId(1))]);
        let (act, _) = t.worker_died(id);
        assert!(act.is_empty());
        assert_eq!(t.actors[&id].state, ActorState::Dead);
    }

    #[test]
    fn lookups_wait_while_restarting_and_unknown_names_fail() {
        let mut t = ActorTable::default();
        let a = spec(Some("c"), 1);
        let id = a.id;
        t.register(a).unwrap();
        let w = Waiter::Lookup { conn: 3, req: 9 };
        assert!(t.lookup(&named("c"), Some(w)).is_none());
        let (_, answered) = t.created(id, WorkerId(1), LeaseId(1));
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].0, w);
        assert_eq!(answered[0].1.state, ActorState::Alive);
        let e = t.lookup(&named("nope"), None).unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ActorNotFound);
    }

    #[test]
    fn kill_during_creation_releases_the_late_worker() {
        let mut t = ActorTable::default();
        let a = spec(None, 3);
        let id = a.id;
        t.register(a).unwrap();
        t.kill(id);
        let (act, _) = t.created(id, WorkerId(2), LeaseId(7));
        assert_eq!(act, vec![ActorAction::ReleaseWorker(LeaseId(7))]);
    }
}
