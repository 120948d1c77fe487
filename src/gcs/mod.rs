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
//! The state lives in two state machines with no IO, each unit-tested on
//! its own: [`actors::ActorTable`] and [`nodes::NodeTable`] (the node
//! table, health checks and resource view, on a simulated clock). [`Gcs`]
//! is their IO shell: one event loop for every connection
//! (`transport::reactor`: thousands of raylets cost no thread each), the
//! health-check thread, and the threads creating actors and giving their
//! workers back (the only work that may wait on a raylet); connections
//! are opaque ids to the tables, mapped to sockets here. Nothing the event
//! loop runs blocks: answers are posted.

mod actor_scheduler;
mod actor_watch;
mod actors;
pub(crate) mod nodes;
pub(crate) mod sim;

use crate::protocol::{FromGcs, FromRaylet, PeerMsg, ToGcs, ToRaylet};
use actors::{ActorAction, ActorTable, ConnId, Waiter};
use nodes::{NodeTable, NODE_TIMEOUT};

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ActorId, LeaseId, WorkerId};
use crate::scheduler::{ResourceSet, Spill};
use crate::session::{log, Session};
use crate::transport::{self, ActorInfo, ActorState, Conn, Endpoint, Listener, Msg, NodeInfo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long an encoded whole view is given to raylets that ask for one.
const WHOLE_VIEW_REUSE: Duration = Duration::from_millis(100);
/// How long an actor that called `exit_actor` has to exit by itself
/// before its worker is killed (its lease ends when it exits).
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The id the GCS introduces itself with to workers.
const GCS_ID: WorkerId = WorkerId(0);

/// The GCS service.
pub(crate) struct Gcs {
    session: Session,
    table: Mutex<ActorTable>,
    /// The node table and cluster resource view.
    nodes: Mutex<NodeTable>,
    /// Every open client connection, by the id the tables know it by.
    clients: Mutex<HashMap<ConnId, Arc<Conn>>>,
    next_conn: AtomicU64,
    /// Connections to raylets, for actor leases.
    raylets: Mutex<HashMap<u16, Arc<Conn>>>,
    replies: Mutex<HashMap<u64, mpsc::Sender<FromRaylet>>>,
    next_req: AtomicU64,
    stopping: AtomicBool,
    addr: SocketAddr,
    /// Set by `rust-ray-launch stop`; the launcher waits on it.
    stop_requested: (Mutex<bool>, std::sync::Condvar),
    /// Round-robin position for spread actors.
    spread_next: AtomicU64,
    /// The whole view, encoded once for every raylet that asks for it
    /// within [`WHOLE_VIEW_REUSE`] (all of them at once when an allocation
    /// starts), with when it was made.
    whole: Mutex<Option<(std::time::Instant, Arc<Vec<u8>>)>>,
    /// The connection to each actor's worker (see `create_actor` and
    /// `actor_watch`), closed when the worker's node is lost: a hung node's
    /// TCP connections stay open, and its actors must restart all the same.
    watches: Mutex<HashMap<ActorId, (WorkerId, Arc<Conn>)>>,
    /// Actor creations running (`create_actor`), at most [`ACTOR_THREADS`].
    actor_threads: Arc<std::sync::atomic::AtomicUsize>,
    /// The thread watching created actors' connections, once one is.
    watcher: Mutex<Option<Arc<actor_watch::Watcher>>>,
}

/// Actors the GCS creates at once, at most (one thread each, until the
/// constructor has run): past it a creation fails with an error that says
/// so, rather than the GCS starting threads without end. Created actors
/// cost no thread (one watches them all).
const ACTOR_THREADS: usize = 10_000;

impl Gcs {
    /// Starts the GCS threads listening on TCP at the session's address, on
    /// a port the OS picks ([`Gcs::addr`]).
    pub(crate) fn start(session: Session) -> Result<Arc<Gcs>> {
        transport::raise_fd_limit();
        let listener = Listener::bind_tcp(session.ip)?;
        let addr = SocketAddr::new(session.ip, listener.port());
        let gcs = Arc::new(Gcs {
            session,
            table: Mutex::new(ActorTable::default()),
            nodes: Mutex::new(NodeTable::default()),
            clients: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            raylets: Mutex::new(HashMap::new()),
            replies: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            actor_threads: Default::default(),
            addr,
            stop_requested: (Mutex::new(false), std::sync::Condvar::new()),
            spread_next: AtomicU64::new(0),
            whole: Mutex::new(None),
            watches: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
        });
        log!("GCS listening on {addr}");
        let g = gcs.clone();
        std::thread::Builder::new()
            .name("gcs-health".into())
            .spawn(move || transport::vital("gcs-health", || g.health_checks()))
            .map_err(|e| Error::io("spawning the GCS health thread", e))?;
        let g = gcs.clone();
        std::thread::Builder::new()
            .name("gcs".into())
            .spawn(move || {
                transport::vital("gcs", || {
                    let secret = g.session.secret;
                    transport::reactor::serve(listener, secret, "gcs", &Served(g));
                })
            })
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

    /// Every node the cluster has had (dead ones marked), in index order.
    pub(crate) fn nodes(&self) -> Vec<NodeInfo> {
        self.node_table().all()
    }

    fn node_table(&self) -> std::sync::MutexGuard<'_, NodeTable> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn client(&self, id: ConnId) -> Option<Arc<Conn>> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ActorTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reply(&self, m: Msg) {
        let Ok(m) = FromRaylet::try_from(m) else {
            return;
        };
        let req = match &m {
            FromRaylet::LeaseGranted { req, .. }
            | FromRaylet::LeaseFailed { req, .. }
            | FromRaylet::LeaseSpillback { req, .. } => *req,
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

    /// Declares lost every node that stopped reporting, waking when the
    /// first one could fall silent (at most a fifth of the timeout apart,
    /// so a stop is seen soon).
    fn health_checks(self: &Arc<Self>) {
        while !self.stopping.load(Ordering::Relaxed) {
            let now = std::time::Instant::now();
            let next = self
                .node_table()
                .next_deadline()
                .unwrap_or(now + NODE_TIMEOUT);
            let wait = next
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(10), NODE_TIMEOUT / 5);
            std::thread::sleep(wait);
            let silent = self.node_table().silent(std::time::Instant::now());
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
        let conn = self.node_table().lost(index);
        let Some(conn) = conn else {
            return; // lost already
        };
        if let Some(c) = self.client(conn) {
            c.close();
        }
        if let Some(n) = self.node_table().get(index) {
            log!("GCS: node {} ({}) is gone", n.index, n.name);
        }
        // Every live node hears it now rather than with its next report's
        // answer: one message each, never blocking on a slow one.
        let live = self.node_table().live_conns();
        for c in live.into_iter().filter_map(|id| self.client(id)) {
            let _ = c.post(&FromGcs::NodeLost { node: index });
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

    /// The whole cluster view as one encoded frame: made at most once per
    /// [`WHOLE_VIEW_REUSE`], so a thousand raylets joining at once cost
    /// one encoding, not a thousand. A raylet given a view a little older
    /// than the table is sent what changed since at its next report. It
    /// carries every node's load, so no spill candidates (the same frame
    /// for every raylet).
    fn whole_view(&self, now: std::time::Instant) -> Result<Arc<Vec<u8>>> {
        let mut w = self.whole.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made, frame)) = w.as_ref() {
            if now.saturating_duration_since(*made) < WHOLE_VIEW_REUSE {
                return Ok(frame.clone());
            }
        }
        // The asker does not matter: a whole view names no candidates.
        let whole = self.node_table().since(0, 0);
        let frame = Arc::new(transport::encode_frame(&whole)?);
        *w = Some((now, frame.clone()));
        Ok(frame)
    }

    fn handle(self: &Arc<Self>, id: ConnId, conn: &Arc<Conn>, m: ToGcs) {
        match m {
            ToGcs::RegisterNode { req, info } => {
                let line = format!(
                    "GCS node table: node {} ({}) at {}:{} {:?}",
                    info.index, info.name, info.ip, info.raylet_port, info.total
                );
                let result = self
                    .node_table()
                    .register(info, id, std::time::Instant::now());
                if result.is_ok() {
                    log!("{line}");
                }
                let _ = conn.post(&FromGcs::NodeRegistered { req, result });
            }
            ToGcs::ReportResources {
                node,
                report,
                view_version,
                spill_demand,
            } => {
                let now = std::time::Instant::now();
                let delta = {
                    let mut table = self.node_table();
                    table.report(node, report, now);
                    table.spill_demand(node, spill_demand);
                    table.refresh_candidates(now);
                    (!table.wants_whole_view(view_version))
                        .then(|| table.since_frame(view_version, node))
                };
                match delta {
                    Some(frame) => {
                        if let Ok(frame) = frame {
                            let _ = conn.post_frame(&frame);
                        }
                    }
                    None => {
                        if let Ok(frame) = self.whole_view(now) {
                            let _ = conn.post_frame(&frame);
                        }
                    }
                }
            }
            ToGcs::StopCluster => {
                log!("GCS: stop requested");
                self.request_stop();
            }
            ToGcs::GetNodes { req } => {
                let _ = conn.post(&FromGcs::Nodes {
                    req,
                    nodes: self.nodes(),
                });
            }
            ToGcs::RegisterActor { req, spec } => {
                // A node declared lost (not one never seen, nor one that
                // has joined again since): its processes are gone, and a
                // register of theirs still on its way must not outlive them.
                let node_lost = self
                    .node_table()
                    .get(spec.owner.node())
                    .is_some_and(|n| !n.alive);
                let r = self.table().register_from(spec, node_lost);
                match r {
                    Ok((actor, actions)) => {
                        // Answer the creator once the constructor has run
                        // (at once for an existing, settled actor).
                        let settled = self
                            .table()
                            .wait_for_creation(actor, Waiter::Creator { conn: id, req });
                        self.finish(actions, settled);
                    }
                    Err(e) => {
                        let _ = conn.post(&FromGcs::ActorRegistered {
                            req,
                            result: Err(e),
                        });
                    }
                }
            }
            ToGcs::ListNamedActors { req, namespace } => {
                let actors = self.table().named(namespace.as_deref());
                let _ = conn.post(&FromGcs::NamedActors { req, actors });
            }
            ToGcs::LookupActor { req, by, wait } => {
                let w = wait.then_some(Waiter::Lookup { conn: id, req });
                if let Some(result) = self.table().lookup(&by, w) {
                    let _ = conn.post(&FromGcs::ActorLookedUp { req, result });
                }
            }
            ToGcs::KillActor {
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
                let _ = conn.post(&FromGcs::ActorKilled { req });
            }
            ToGcs::ExitActor { req, id } => {
                let (actions, waiters) = self.table().exited(id);
                // The process exits by itself once it has the answer (its
                // lease ends with it): the worker is released, killed if
                // still there, only after a grace, since the answer goes
                // by way of its raylet and must not lose the race.
                self.finish(Vec::new(), waiters);
                let _ = conn.post(&FromGcs::ActorKilled { req });
                self.run_after(actions, EXIT_GRACE);
            }
            ToGcs::ActorOutOfScope { id } => {
                let (actions, waiters) = self.table().out_of_scope(id);
                self.finish(actions, waiters);
            }
            ToGcs::OwnerGone { worker } => {
                let (actions, waiters) = self.table().owner_gone(worker);
                if !waiters.is_empty() || !actions.is_empty() {
                    log!("GCS: worker {worker} is gone; its actors end with it");
                }
                self.finish(actions, waiters);
            }
        }
    }

    /// Answers the waiters of settled actors, then carries out `actions`.
    fn finish(self: &Arc<Self>, actions: Vec<ActorAction>, waiters: Vec<(Waiter, ActorInfo)>) {
        for (w, info) in waiters {
            let (conn, msg) = match w {
                Waiter::Creator { conn, req } => {
                    let result = match info.state {
                        ActorState::Alive => Ok(info),
                        _ => Err(info
                            .death
                            .unwrap_or_else(|| Error::new(ErrorKind::ActorDied, "actor died"))),
                    };
                    (conn, FromGcs::ActorRegistered { req, result })
                }
                Waiter::Lookup { conn, req } => (
                    conn,
                    FromGcs::ActorLookedUp {
                        req,
                        result: Ok(info),
                    },
                ),
            };
            // A waiter whose connection closed is answered by nobody.
            if let Some(c) = self.client(conn) {
                let _ = c.post(&msg);
            }
        }
        self.run(actions);
    }

    /// [`Gcs::run`] after `grace`, on a thread of its own (at once if none
    /// can be had).
    fn run_after(self: &Arc<Self>, actions: Vec<ActorAction>, grace: Duration) {
        let g = self.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("gcs-grace".into())
            .spawn(move || {
                if let Ok(actions) = rx.recv() {
                    std::thread::sleep(grace);
                    g.run(actions);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(actions);
            }
            Err(_) => self.run(actions),
        }
    }

    fn run(self: &Arc<Self>, actions: Vec<ActorAction>) {
        let mut leases = Vec::new();
        for a in actions {
            match a {
                ActorAction::Create(id) => self.start_actor_thread(id),
                ActorAction::ReleaseWorker(lease) => leases.push(lease),
            }
        }
        if leases.is_empty() {
            return;
        }
        // Reaching a raylet may take a connect: never on the event loop.
        let g = self.clone();
        let release = move || {
            for lease in leases {
                if let Ok(c) = g.raylet(lease.node()) {
                    let _ = c.send(&ToRaylet::ReturnLease { lease, kill: true });
                }
            }
        };
        if let Err(release) = transport::spawn_or_return(
            std::thread::Builder::new().name("gcs-release".into()),
            release,
        ) {
            // Better a connect on the event loop than workers held forever.
            log!("GCS: no thread to give workers back; doing it here");
            release();
        }
    }
}

/// The GCS as its event loop serves it.
struct Served(Arc<Gcs>);

impl transport::reactor::Service for Served {
    fn opened(&self, conn: &Arc<Conn>) -> u64 {
        let id = self.0.next_conn.fetch_add(1, Ordering::Relaxed);
        self.0
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, conn.clone());
        id
    }

    fn message(&self, key: u64, conn: &Arc<Conn>, msg: Msg) {
        // Only this service's requests are served here.
        if let Ok(m) = ToGcs::try_from(msg) {
            self.0.handle(key, conn, m);
        }
    }

    fn closed(&self, key: u64) {
        let g = &self.0;
        g.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        // A node's raylet connection (only a registration that succeeded
        // makes it one: a refused duplicate does not take the node down).
        let node = g.node_table().node_of_conn(key);
        if let Some(n) = node {
            g.node_lost(n);
        }
    }

    fn stopping(&self) -> bool {
        self.0.stopping.load(Ordering::Relaxed)
    }
}
