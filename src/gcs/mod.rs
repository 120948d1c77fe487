//! The Global Control Store: cluster-wide state. It is a set of threads of
//! the process that started the cluster (the driver of an embedded cluster,
//! or `rust-ray-launch` on rank 0), listening on TCP.
//!
//! It owns the node table (raylets register at start-up; a raylet whose
//! connection closes marks its node dead), the cluster resource view (each
//! raylet reports its free resources and gets the whole view back), the
//! actor table (with actor names) and actor
//! lifecycle: creating an actor (lease a dedicated worker from a raylet, run
//! the constructor there), noticing its process die (its connection closes),
//! restarting it up to `max_restarts`, and answering "where is actor X"
//! lookups, holding the answer back while the actor is being (re)created.
//!
//! [`ActorTable`] is the state machine (no IO, unit-tested below); [`Gcs`]
//! is its IO shell.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ActorId, LeaseId, WorkerId};
use crate::scheduler::{ResourceSet, Spill};
use crate::session::{log, Session};
use crate::transport::{
    self, ActorInfo, ActorLookup, ActorSpec, ActorState, Conn, Endpoint, Listener, Msg, NamedActor,
    NodeInfo, Stream,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// A node whose raylet has not reported for this long is declared lost
/// (a raylet that dies is noticed at once, by its connection closing; this
/// catches one that hangs or whose node stops answering).
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an actor that no node can host waits for one to join.
const PLACE_WAIT: Duration = Duration::from_secs(2);
/// How long actor creation may wait for a worker lease.
const LEASE_WAIT: Duration = Duration::from_secs(120);
/// The id the GCS introduces itself with to workers.
const GCS_ID: WorkerId = WorkerId(0);

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

/// A lookup waiting for an actor to settle.
pub(crate) type Waiter = (Arc<Conn>, u64);

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
}

impl ActorTable {
    /// Registers an actor to create; answers the actor the creator gets
    /// (with `get_if_exists`, the live one already holding the name) and
    /// what to do.
    pub(crate) fn register(&mut self, spec: ActorSpec) -> Result<(ActorId, Vec<ActorAction>)> {
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

/// The GCS service.
pub(crate) struct Gcs {
    session: Session,
    table: Mutex<ActorTable>,
    /// The node table and cluster resource view.
    nodes: Mutex<BTreeMap<u16, NodeInfo>>,
    /// Connections to raylets, for actor leases.
    raylets: Mutex<HashMap<u16, Arc<Conn>>>,
    replies: Mutex<HashMap<u64, mpsc::Sender<Msg>>>,
    next_req: AtomicU64,
    stopping: AtomicBool,
    addr: SocketAddr,
    /// Set by `rust-ray-launch stop`; the launcher waits on it.
    stop_requested: (Mutex<bool>, std::sync::Condvar),
    /// Each registered raylet's connection and its last report.
    heartbeats: Mutex<HashMap<u16, (Arc<Conn>, std::time::Instant)>>,
    /// Round-robin position for spread actors.
    spread_next: AtomicU64,
    /// The connection watching each actor's worker (see `create_and_watch`),
    /// closed when the worker's node is lost: a hung node's TCP connections
    /// stay open, and its actors must restart all the same.
    watches: Mutex<HashMap<ActorId, (WorkerId, Arc<Conn>)>>,
}

impl Gcs {
    /// Starts the GCS threads listening on TCP at the session's address, on
    /// a port the OS picks ([`Gcs::addr`]).
    pub(crate) fn start(session: Session) -> Result<Arc<Gcs>> {
        let listener = Listener::bind_tcp(session.ip)?;
        let addr = SocketAddr::new(session.ip, listener.port());
        let gcs = Arc::new(Gcs {
            session,
            table: Mutex::new(ActorTable::default()),
            nodes: Mutex::new(BTreeMap::new()),
            raylets: Mutex::new(HashMap::new()),
            replies: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            addr,
            stop_requested: (Mutex::new(false), std::sync::Condvar::new()),
            heartbeats: Mutex::new(HashMap::new()),
            spread_next: AtomicU64::new(0),
            watches: Mutex::new(HashMap::new()),
        });
        log!("GCS listening on {addr}");
        let g = gcs.clone();
        std::thread::Builder::new()
            .name("gcs-health".into())
            .spawn(move || g.health_checks())
            .map_err(|e| Error::io("spawning the GCS health thread", e))?;
        let g = gcs.clone();
        std::thread::Builder::new()
            .name("gcs".into())
            .spawn(move || g.accept(listener))
            .map_err(|e| Error::io("spawning the GCS thread", e))?;
        Ok(gcs)
    }

    /// Asks the launcher to stop the driver and the cluster.
    pub(crate) fn request_stop(&self) {
        let (flag, cv) = &self.stop_requested;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Waits up to `timeout` for a stop request; true if one came.
    pub(crate) fn wait_stop_request(&self, timeout: Duration) -> bool {
        let (flag, cv) = &self.stop_requested;
        let g = flag.lock().unwrap_or_else(|p| p.into_inner());
        *cv.wait_timeout_while(g, timeout, |stop| !*stop)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Where raylets and workers reach the GCS.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.addr);
        for (_, c) in self
            .raylets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            c.close();
        }
    }

    /// The live nodes, in index order.
    pub(crate) fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ActorTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reply(&self, m: Msg) {
        let req = match &m {
            Msg::LeaseGranted { req, .. }
            | Msg::LeaseFailed { req, .. }
            | Msg::LeaseSpillback { req, .. } => *req,
            _ => return,
        };
        if let Some(tx) = self
            .replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req)
        {
            let _ = tx.send(m);
        }
    }

    fn accept(self: Arc<Self>, listener: Listener) {
        let g = self.clone();
        transport::accept_each(
            listener,
            "gcs-client",
            move || self.stopping.load(Ordering::Relaxed),
            move |s| g.clone().serve(s),
        );
    }

    fn serve(self: Arc<Self>, mut stream: Stream) {
        if !stream.accept_secret(&self.session.secret) {
            return;
        }
        let Ok(conn) = Conn::new(&stream) else { return };
        let conn = Arc::new(conn);
        let mut node = None;
        let peer = stream.peer();
        transport::guarded("gcs-client", &peer, || {
            transport::read_loop(stream, |m| {
                let registering = match &m {
                    Msg::RegisterNode { info, .. } => Some(info.index),
                    _ => None,
                };
                self.handle(&conn, m);
                // Only a registration that succeeded makes this the node's
                // connection (a refused duplicate must not take the node
                // down).
                if let Some(i) = registering.filter(|i| self.is_node_conn(*i, &conn)) {
                    node = Some(i);
                }
            })
        });
        if let Some(n) = node.filter(|n| self.is_node_conn(*n, &conn)) {
            self.node_lost(n);
        }
    }

    fn is_node_conn(&self, index: u16, conn: &Arc<Conn>) -> bool {
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .is_some_and(|(c, _)| Arc::ptr_eq(c, conn))
    }

    /// Declares lost every node that stopped reporting.
    fn health_checks(self: &Arc<Self>) {
        while !self.stopping.load(Ordering::Relaxed) {
            std::thread::sleep(NODE_TIMEOUT / 5);
            let silent: Vec<u16> = self
                .heartbeats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(_, (_, t))| t.elapsed() > NODE_TIMEOUT)
                .map(|(n, _)| *n)
                .collect();
            for n in silent {
                log!("GCS: node {n} sent no report for {NODE_TIMEOUT:?}");
                self.node_lost(n);
            }
        }
    }

    /// A raylet's connection closed, or it stopped reporting: the node is
    /// gone. Its connection is closed too, so a raylet that was only slow
    /// shuts down rather than serve a cluster that counts it dead.
    fn node_lost(self: &Arc<Self>, index: u16) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        if let Some((c, _)) = self
            .heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&index)
        {
            c.close();
        }
        if let Some(n) = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&index)
        {
            n.alive = false;
            log!("GCS: node {} ({}) is gone", n.index, n.name);
        }
        if let Some(c) = self
            .raylets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&index)
        {
            c.close();
        }
        // The node's processes are gone with it: so are the actors they
        // owned (wherever those run), and the actors running there restart
        // elsewhere (their watches end as if their process had died).
        let (actions, waiters) = self.table().owner_died(|o| o.node() == index);
        self.finish(actions, waiters);
        let watched: Vec<Arc<Conn>> = self
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|(w, _)| w.node() == index)
            .map(|(_, c)| c.clone())
            .collect();
        for c in watched {
            c.close();
        }
    }

    fn answer(waiters: Vec<(Waiter, ActorInfo)>) {
        for ((conn, req), info) in waiters {
            let _ = conn.send(&Msg::ActorLookedUp {
                req,
                result: Ok(info),
            });
        }
    }

    fn handle(self: &Arc<Self>, conn: &Arc<Conn>, m: Msg) {
        match m {
            Msg::RegisterNode { req, info } => {
                let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
                let result = match nodes.get(&info.index) {
                    Some(n) if n.alive => Err(Error::invalid(format!(
                        "node index {} is already taken by node {}",
                        info.index, n.name
                    ))),
                    _ => {
                        log!(
                            "GCS node table: node {} ({}) at {}:{} {:?}",
                            info.index,
                            info.name,
                            info.ip,
                            info.raylet_port,
                            info.total
                        );
                        self.heartbeats
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(info.index, (conn.clone(), std::time::Instant::now()));
                        nodes.insert(info.index, info);
                        Ok(())
                    }
                };
                drop(nodes);
                let _ = conn.send(&Msg::NodeRegistered { req, result });
            }
            Msg::ReportResources {
                node,
                available,
                store_used,
                store_capacity,
                drivers,
                drivers_seen,
            } => {
                if let Some((_, t)) = self
                    .heartbeats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&node)
                {
                    *t = std::time::Instant::now();
                }
                let view = {
                    let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(n) = nodes.get_mut(&node) {
                        n.available = available;
                        n.store_used = store_used;
                        n.store_capacity = store_capacity;
                        n.drivers = drivers;
                        n.drivers_seen = drivers_seen;
                    }
                    nodes.values().cloned().collect()
                };
                let _ = conn.send(&Msg::ClusterView { nodes: view });
            }
            Msg::StopCluster => {
                log!("GCS: stop requested");
                self.request_stop();
            }
            Msg::GetNodes { req } => {
                let _ = conn.send(&Msg::Nodes {
                    req,
                    nodes: self.nodes(),
                });
            }
            Msg::RegisterActor { req, spec } => {
                let r = self.table().register(spec);
                match r {
                    Ok((id, actions)) => {
                        // Answer the creator once the constructor has run.
                        self.table()
                            .waiters
                            .entry(id)
                            .or_default()
                            .push((conn.clone(), u64::MAX - req));
                        // An existing actor (get_if_exists) may be settled
                        // already: answer at once then.
                        let settled = self.table().settle(id);
                        self.finish(actions, settled);
                    }
                    Err(e) => {
                        let _ = conn.send(&Msg::ActorRegistered {
                            req,
                            result: Err(e),
                        });
                    }
                }
            }
            Msg::ListNamedActors { req, namespace } => {
                let actors = self.table().named(namespace.as_deref());
                let _ = conn.send(&Msg::NamedActors { req, actors });
            }
            Msg::LookupActor { req, by, wait } => {
                let w = wait.then(|| (conn.clone(), req));
                if let Some(result) = self.table().lookup(&by, w) {
                    let _ = conn.send(&Msg::ActorLookedUp { req, result });
                }
            }
            Msg::KillActor {
                req,
                id,
                no_restart,
            } => {
                let (actions, waiters) = if no_restart {
                    self.table().kill(id)
                } else {
                    (self.table().end_process(id), Vec::new())
                };
                self.finish(actions, waiters);
                let _ = conn.send(&Msg::ActorKilled { req });
            }
            Msg::ExitActor { req, id } => {
                let (actions, waiters) = self.table().exited(id);
                // The worker is released after the answer: the process
                // exits by itself once it has it.
                self.finish(Vec::new(), waiters);
                let _ = conn.send(&Msg::ActorKilled { req });
                self.run(actions);
            }
            Msg::ActorOutOfScope { id } => {
                let (actions, waiters) = self.table().out_of_scope(id);
                self.finish(actions, waiters);
            }
            Msg::OwnerGone { worker } => {
                let (actions, waiters) = self.table().owner_died(|o| o == worker);
                if !waiters.is_empty() || !actions.is_empty() {
                    log!("GCS: worker {worker} is gone; its actors end with it");
                }
                self.finish(actions, waiters);
            }
            _ => {}
        }
    }

    fn finish(self: &Arc<Self>, actions: Vec<ActorAction>, waiters: Vec<(Waiter, ActorInfo)>) {
        let (creators, lookups): (Vec<_>, Vec<_>) = waiters
            .into_iter()
            .partition(|((_, req), _)| *req > u64::MAX / 2);
        for ((conn, req), info) in creators {
            let result = match info.state {
                ActorState::Alive => Ok(info),
                _ => Err(info
                    .death
                    .unwrap_or_else(|| Error::new(ErrorKind::ActorDied, "actor died"))),
            };
            let _ = conn.send(&Msg::ActorRegistered {
                req: u64::MAX - req,
                result,
            });
        }
        Self::answer(lookups);
        self.run(actions);
    }

    fn run(self: &Arc<Self>, actions: Vec<ActorAction>) {
        for a in actions {
            match a {
                ActorAction::Create(id) => {
                    let g = self.clone();
                    let _ = std::thread::Builder::new()
                        .name("gcs-actor".into())
                        .spawn(move || g.create_and_watch(id));
                }
                ActorAction::ReleaseWorker(lease) => {
                    if let Ok(c) = self.raylet(lease.node()) {
                        let _ = c.send(&Msg::ReturnLease { lease, kill: true });
                    }
                }
            }
        }
    }

    fn node_info(&self, index: u16) -> Result<NodeInfo> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .filter(|n| n.alive)
            .cloned()
            .ok_or_else(|| Error::unavailable(format!("node {index} is not in the cluster")))
    }

    /// The connection to node `index`'s raylet, opened on first use.
    fn raylet(self: &Arc<Self>, index: u16) -> Result<Arc<Conn>> {
        if let Some(c) = self
            .raylets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
        {
            return Ok(c.clone());
        }
        let info = self.node_info(index)?;
        let stream = info.raylet().connect(&self.session.secret)?;
        let conn = Arc::new(Conn::new(&stream)?);
        let g = self.clone();
        let g2 = self.clone();
        transport::spawn_reader(
            "gcs-raylet".into(),
            stream,
            move |m| g.reply(m),
            move || {
                g2.raylets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&index);
            },
        )?;
        let mut g = self.raylets.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.entry(index).or_insert(conn).clone())
    }

    /// The node to place an actor on: the one its strategy names (when
    /// alive, or always for a hard affinity), else, spreading, the next live
    /// node that fits, else the live node with the most free CPU where it
    /// fits now, else one where it fits in total.
    fn place(
        &self,
        placement: &ResourceSet,
        shape: &ResourceSet,
        strategy: &crate::SchedulingStrategy,
    ) -> Result<u16> {
        // A node that can host it may still be joining: look again for a
        // while before calling the actor infeasible.
        let deadline = std::time::Instant::now() + PLACE_WAIT;
        loop {
            match self.place_now(placement, shape, strategy) {
                Err(e)
                    if matches!(e.kind(), ErrorKind::Infeasible | ErrorKind::Unschedulable)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    fn place_now(
        &self,
        placement: &ResourceSet,
        shape: &ResourceSet,
        strategy: &crate::SchedulingStrategy,
    ) -> Result<u16> {
        let nodes = self.nodes();
        let live = || nodes.iter().filter(|n| n.alive);
        match strategy {
            crate::SchedulingStrategy::NodeAffinity { node, soft } => {
                match nodes.iter().find(|n| &n.name == node) {
                    Some(n) if n.alive && placement.fits(&n.total) => return Ok(n.index),
                    _ if *soft => {}
                    Some(n) => {
                        return Err(Error::new(
                            ErrorKind::Unschedulable,
                            format!(
                                "hard node affinity: node `{node}` {}",
                                if n.alive {
                                    "cannot fit the actor"
                                } else {
                                    "was lost"
                                }
                            ),
                        ))
                    }
                    None => {
                        return Err(Error::new(
                            ErrorKind::Unschedulable,
                            format!("hard node affinity: no node is named `{node}`"),
                        ))
                    }
                }
            }
            crate::SchedulingStrategy::Spread => {
                if let Some(n) = self.in_turn(live().filter(|n| placement.fits(&n.total))) {
                    return Ok(n);
                }
            }
            crate::SchedulingStrategy::Default if shape.is_empty() => {
                // An actor that holds nothing while it runs leaves no trace
                // in the resource view, so "most free CPU" would send every
                // one to the same node: take the nodes where its placement
                // fits in turn instead (Ray picks such actors' nodes at
                // random).
                if let Some(n) = self.in_turn(live().filter(|n| placement.fits(&n.available))) {
                    return Ok(n);
                }
            }
            crate::SchedulingStrategy::Default => {}
        }
        let cpu = |r: &ResourceSet| (r.get(crate::scheduler::CPU) * 1e4) as i64;
        live()
            .filter(|n| placement.fits(&n.available))
            .max_by_key(|n| cpu(&n.available))
            .or_else(|| live().find(|n| placement.fits(&n.total)))
            .map(|n| n.index)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Infeasible,
                    format!(
                        "no node of the cluster can host an actor needing {placement:?} ({} nodes)",
                        nodes.len()
                    ),
                )
            })
    }

    /// The next of `candidates` in the GCS's round-robin order (`None` when
    /// there are none).
    fn in_turn<'a>(&self, candidates: impl Iterator<Item = &'a NodeInfo>) -> Option<u16> {
        let fit: Vec<&NodeInfo> = candidates.collect();
        if fit.is_empty() {
            return None;
        }
        let i = self.spread_next.fetch_add(1, Ordering::Relaxed) as usize;
        Some(fit[i % fit.len()].index)
    }

    /// Leases a worker for an actor: places it, asks that node's raylet,
    /// follows a spillback; if the node is lost meanwhile (or its raylet
    /// cannot be reached) places it again. Bounded by [`LEASE_WAIT`].
    fn lease(
        self: &Arc<Self>,
        placement: &ResourceSet,
        shape: ResourceSet,
        strategy: &crate::SchedulingStrategy,
    ) -> Result<(LeaseId, WorkerId, Vec<u32>)> {
        let deadline = std::time::Instant::now() + LEASE_WAIT;
        let timeout = || {
            Error::new(
                ErrorKind::Timeout,
                format!("no worker could be leased for the actor within {LEASE_WAIT:?}"),
            )
        };
        let mut target: Option<(u16, Spill)> = None;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(timeout());
            }
            let (node, spill) = match target {
                Some(t) => t,
                None => (self.place(placement, &shape, strategy)?, Spill::Now),
            };
            let req = self.next_req.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel();
            self.replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req, tx);
            let sent = self.raylet(node).and_then(|c| {
                c.send(&Msg::RequestLease {
                    req,
                    shape: shape.clone(),
                    spill,
                })
            });
            let reply = match sent {
                Ok(()) => loop {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(m) => break Some(m),
                        Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if self.node_info(node).is_err() || std::time::Instant::now() > deadline
                            {
                                break None;
                            }
                        }
                    }
                },
                Err(e) => {
                    log!("GCS: leasing on node {node} failed ({e}); placing again");
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
            };
            self.replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req);
            match reply {
                Some(Msg::LeaseGranted {
                    lease,
                    worker,
                    gpus,
                    ..
                }) => return Ok((lease, worker, gpus)),
                Some(Msg::LeaseFailed { error, .. }) => return Err(error),
                Some(Msg::LeaseSpillback { node: n, .. }) => target = Some((n, Spill::Never)),
                Some(_) => return Err(Error::unavailable("unexpected reply from the raylet")),
                // The node was lost or unreachable: place again.
                None => target = None,
            }
        }
    }

    /// Creates the actor, then watches its connection: when it closes the
    /// process died, and the actor restarts or dies.
    fn create_and_watch(self: Arc<Self>, id: ActorId) {
        loop {
            let Some(spec) = self.table().spec(id) else {
                return;
            };
            let leased = self.lease(&spec.placement, spec.shape.clone(), &spec.strategy);
            if let Ok((lease, _, _)) = &leased {
                if self.table().ended(id) {
                    // Cancelled while it waited for a worker (its creator
                    // died, or it was killed): the constructor never runs,
                    // and the worker goes back.
                    self.finish(vec![ActorAction::ReleaseWorker(*lease)], Vec::new());
                    return;
                }
            }
            let created = leased.and_then(|(lease, worker, gpus)| {
                let node = self.node_info(worker.node())?;
                let stream = Endpoint::Tcp(SocketAddr::new(node.ip, worker.port()))
                    .connect(&self.session.secret)?;
                let conn = Arc::new(Conn::new(&stream)?);
                conn.send(&Msg::Hello { from: GCS_ID })?;
                conn.send(&Msg::CreateActor {
                    spec: spec.clone(),
                    gpus,
                })?;
                Ok((lease, worker, stream, conn))
            });
            let (lease, worker, stream, conn) = match created {
                Ok(c) => c,
                Err(e) => {
                    log!("actor {} could not be created: {e}", spec.class);
                    let w = self.table().creation_failed(id, e);
                    self.finish(Vec::new(), w);
                    return;
                }
            };
            self.watches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, (worker, conn.clone()));
            // Lost while this was being set up: the watch ends at once.
            if self.node_info(worker.node()).is_err() {
                conn.close();
            }
            let mut first = true;
            let me = self.clone();
            let _ = transport::read_loop(stream, |m| {
                if let (true, Msg::ActorCreated { result }) = (first, m) {
                    first = false;
                    match result {
                        Ok(()) => {
                            let (a, w) = me.table().created(id, worker, lease);
                            me.finish(a, w);
                        }
                        Err(e) => {
                            let w = me.table().creation_failed(id, e);
                            me.finish(vec![ActorAction::ReleaseWorker(lease)], w);
                        }
                    }
                }
            });
            self.watches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            // A process that died in the constructor (first) counts as a
            // restart too, as in Ray: the creation is retried, on another
            // node if need be, while restarts remain.
            let (actions, waiters) = self.table().worker_died(id);
            log!(
                "actor {} lost its worker {worker}{}: {:?}",
                spec.class,
                if first { " in its constructor" } else { "" },
                actions
            );
            let restart = actions.contains(&ActorAction::Create(id));
            // The creator, still waiting when the constructor died, is
            // answered with the death; lookups with the actor's state.
            self.finish(Vec::new(), waiters);
            if !restart {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        let w = (Arc::new(Conn::new(&Stream::Unix(x)).unwrap()), 9);
        assert!(t.lookup(&named("c"), Some(w)).is_none());
        let (_, answered) = t.created(id, WorkerId(1), LeaseId(1));
        assert_eq!(answered.len(), 1);
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
