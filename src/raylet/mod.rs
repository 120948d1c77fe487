//! The raylet: one per node. It owns the node's resources and worker pool
//! (granting worker leases through the [`scheduler`](crate::scheduler)
//! state machine) and the node's object store (the arena and its
//! allocator).
//!
//! It runs as its own process (the application's binary re-executed with
//! `RUSTRAY_ROLE=raylet`), so a crashing task cannot take it down, and so it
//! outlives nothing: when the driver's connection closes (orderly shutdown,
//! the end of `main`, or SIGKILL) it kills its workers, unlinks the arena and
//! removes the session's sockets. Workers, in turn, exit when their raylet
//! connection closes.
//!
//! Workers are started by re-executing the application binary with
//! `RUSTRAY_ROLE=worker`, on a spawner thread (never under the state lock:
//! the lock is held for bookkeeping only, and socket writes made under it
//! are non-blocking posts); a single reaper thread collects exited children
//! and reports them to the lease manager and the store (objects fate-share
//! with their owner).
//!
//! The store's IO shell (spilling to disk, restoring) is in [`store`].
//!
//! Across nodes: the raylet registers with the GCS at start-up (an
//! unreachable GCS fails the start with an error naming it), reports its free
//! resources every [`REPORT_EVERY`] and gets the cluster resource view back,
//! which the lease manager uses to spill requests back to other nodes. When
//! the GCS connection closes the cluster is over and the raylet shuts down.
//! It listens on a Unix socket for its node's processes and on TCP for other
//! nodes: lease requests spilled here, frees of objects stored here, and
//! pulls. A pull copies a block of another node's store into this one over
//! a dedicated TCP connection, reading straight into the arena; copies are
//! shared by every reader on the node and freed when the last unpins.

mod store;

use crate::error::{Error, Result};
use crate::ids::WorkerId;
use crate::object_store::{Arena, SpillDir, Store, COPY_OWNER, SPACE_PER_MEMORY};
use crate::scheduler::{Action, ClientId, LeaseManager, PeerNode};
use crate::session::{log, Session, ENV_ROLE, ENV_SESSION};
use crate::transport::{self, Conn, Listener, Msg, NodeInfo, NodeLoad, ResourceReport, Stream};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the raylet reports its free resources to the GCS.
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// Pulls move objects in pieces of this size...
const PULL_CHUNK: u64 = 8 << 20;
/// ...over this many connections at once per object.
const PULL_STREAMS: usize = 4;
/// Bytes being pulled into one node at once: more pulls wait their turn,
/// so a burst of large pulls cannot take the whole store (or the network)
/// at once.
const PULL_BUDGET: u64 = 1 << 30;

/// Bytes in flight of the node's pulls.
#[derive(Default)]
struct PullBudget {
    inflight: Mutex<u64>,
    freed: std::sync::Condvar,
}

/// A share of the pull budget, given back on drop.
struct PullShare<'a> {
    budget: &'a PullBudget,
    bytes: u64,
}

impl PullBudget {
    fn acquire(budget: &PullBudget, bytes: u64) -> PullShare<'_> {
        let mut g = budget.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // A pull bigger than the budget goes alone; waits end as pulls
        // finish, and every pull is bounded by TRANSFER_STALL.
        while *g > 0 && *g + bytes > PULL_BUDGET {
            g = budget.freed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        *g += bytes;
        PullShare { budget, bytes }
    }
}

impl Drop for PullShare<'_> {
    fn drop(&mut self) {
        let mut g = self
            .budget
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *g -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// A call into the fabric provider that has not returned after this long
/// never will: the endpoint is given up.
const WEDGED_AFTER: Duration = Duration::from_secs(3);
/// A transfer that makes no progress for this long has failed.
const TRANSFER_STALL: Duration = Duration::from_secs(30);
/// Bound on registering with the GCS.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// A block of another node's store, copied into this one.
enum CopyState {
    /// Transfer in progress: (client, req) waiting for it.
    Pulling(Vec<(ClientId, u64)>),
    Ready(u64),
}

struct Copy {
    state: CopyState,
    pins: u32,
}

/// (node, offset, len, tag) of the original block.
type CopyKey = (u16, u64, u64, u64);

/// Workers that exit before registering this many times in a row mean the
/// binary does not call `rustray::init()` first: stop retrying.
const MAX_START_FAILURES: u32 = 5;
/// Bound on registrations waiting for the spawner to record their pid (a
/// peer cannot grow the table past it with made-up pids).
const MAX_UNCLAIMED: usize = 1024;

struct Client {
    conn: Arc<Conn>,
    worker: Option<WorkerId>,
    is_driver: bool,
}

/// A worker's `Register` names its pid: it is taken only when it is a
/// process this raylet started and no worker has claimed yet.
fn claim_pid(pids: &mut HashMap<u32, Option<WorkerId>>, worker: WorkerId, pid: u32) -> bool {
    match pids.get_mut(&pid) {
        Some(slot @ None) => {
            *slot = Some(worker);
            true
        }
        _ => false,
    }
}

/// The pid to signal for `worker`: only a live child of this raylet that
/// registered as that worker, and a valid positive pid (never 0 or a
/// negative process-group id, which `kill` would take as "many").
fn kill_target(
    pids: &HashMap<u32, Option<WorkerId>>,
    registered: &HashMap<WorkerId, u32>,
    worker: WorkerId,
) -> Option<i32> {
    let pid = *registered.get(&worker)?;
    let signed = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    (pids.get(&pid) == Some(&Some(worker))).then_some(signed)
}

struct State {
    leases: LeaseManager,
    store: Store,
    clients: HashMap<ClientId, Client>,
    /// pid -> worker id (once registered), for every worker process started
    pids: HashMap<u32, Option<WorkerId>>,
    registered: HashMap<WorkerId, u32>,
    start_failures: u32,
    copies: HashMap<CopyKey, Copy>,
    /// Blocks each local process pinned to read in place (`PinObjects`),
    /// released when it unpins or goes.
    pins: HashMap<ClientId, Vec<u64>>,
    /// The node table, from the GCS's cluster view.
    nodes: HashMap<u16, NodeInfo>,
    /// The version of the cluster view `nodes` holds (0: none yet).
    view_version: u64,
    /// Drivers that ever registered here.
    drivers_seen: u32,
    /// Set when shutting down: no more workers are started.
    stopping: bool,
    /// A spill batch is being written (one at a time).
    spilling: bool,
    /// A background spill (past the threshold) is about to start.
    spill_pending: bool,
    /// Children reaped before the spawner recorded their pid (pid ->
    /// status): the spawner takes them as exits when it does.
    early_exits: HashMap<u32, i32>,
    /// Workers that registered before the spawner recorded their pid
    /// (pid -> their client and id): claimed when it does.
    unclaimed: HashMap<u32, (ClientId, WorkerId)>,
}

struct Raylet {
    session: Session,
    state: Mutex<State>,
    next_client: AtomicU64,
    env: String,
    arena: Arc<Arena>,
    pulls: PullBudget,
    /// The node's fabric endpoint, when objects move by RDMA.
    fabric: Option<Arc<crate::fabric::Fabric>>,
    /// Nodes whose fabric reads failed: pulled over TCP from then on (a
    /// failed read can take a connection-oriented provider's connection
    /// down with it).
    fabric_broken: Mutex<std::collections::HashSet<u16>>,
    /// `--transport fabric`: a failed RDMA read is an error, not a TCP retry.
    fabric_forced: bool,
    /// Set once a provider call never returned: the endpoint is lost and
    /// this node moves objects over TCP from then on, forced or not.
    fabric_wedged: std::sync::atomic::AtomicBool,
    /// The connection to the GCS, once registered.
    gcs: std::sync::OnceLock<Arc<Conn>>,
    /// Signalled (with `state`'s lock) when a spill or restore ends.
    room: std::sync::Condvar,
    /// Where this node's spilled objects go.
    spill: SpillDir,
    /// Worker starts asked for, one message each, done by the spawner
    /// thread without the state lock (a slow exec stalls no client).
    spawns: std::sync::mpsc::Sender<()>,
}

/// Drops one pin of a pulled copy; the last frees its block.
fn unpin_copy(st: &mut State, key: CopyKey) {
    if let Some(c) = st.copies.get_mut(&key) {
        c.pins = c.pins.saturating_sub(1);
        if c.pins == 0 {
            if let Some(Copy {
                state: CopyState::Ready(local),
                ..
            }) = st.copies.remove(&key)
            {
                st.store.free(local);
            }
        }
    }
}

/// Entry point of the raylet process.
pub(crate) fn main(session: Session) -> ! {
    crate::session::open_log(&session, "raylet");
    match run(session) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            log!("raylet failed: {e}");
            eprintln!("rustray raylet failed: {e}");
            std::process::exit(1);
        }
    }
}

fn raise_fd_limit() {
    // Deep nesting starts one worker per blocked task: many connections.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Opens the node's fabric endpoint and registers the whole arena with it,
/// as the transport setting asks; logs one line saying which data plane
/// the node uses and why. None: the built-in TCP path.
fn open_fabric(
    session: &Session,
    arena: &Arc<Arena>,
) -> Result<Option<(Arc<crate::fabric::Fabric>, crate::fabric::FabricAddr)>> {
    use crate::fabric::{Fabric, OpenOptions, Transport};
    let choice = session.config.transport_choice()?;
    let single_host = session.config.single_host();
    let tcp = |why: &str| {
        log!("transport: tcp ({why})");
        Ok(None)
    };
    match choice {
        Transport::Tcp => return tcp("asked for"),
        Transport::Auto
            if single_host || session.config.node_count()? == 1 && !slurm_multi_node() =>
        {
            return tcp("auto: every node is on this host");
        }
        _ => {}
    }
    let forced = choice == Transport::Fabric;
    let opts = OpenOptions {
        forced,
        single_host,
        ip: session.ip,
        name: Some(session.fabric_name()),
    };
    let fail = |e: crate::fabric::FabricError| {
        Error::unavailable(format!(
            "node {} cannot use the fabric transport (--transport fabric): {e}",
            session.node
        ))
    };
    let fabric = match Fabric::open(&opts).map_err(fail)? {
        Ok(f) => Arc::new(f),
        Err(why) => return tcp(&format!("auto: {why}")),
    };
    let addr = fabric.register_arena(arena.clone()).map_err(fail)?;
    if fabric.manual_progress() {
        let f = fabric.clone();
        std::thread::Builder::new()
            .name("raylet-fabric".into())
            .spawn(move || f.progress())
            .map_err(|e| Error::io("spawning the fabric progress thread", e))?;
    }
    log!(
        "transport: fabric, provider {} ({}); arena of {} bytes registered, key {:#x}",
        fabric.provider,
        fabric.why,
        arena.len(),
        addr.key
    );
    Ok(Some((fabric, addr)))
}

/// True inside a Slurm step of more than one node.
fn slurm_multi_node() -> bool {
    std::env::var("SLURM_NNODES")
        .or_else(|_| std::env::var("SLURM_JOB_NUM_NODES"))
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|n| n > 1)
}

/// The node's GPUs when nothing says how many: those the CUDA driver
/// reports (feature `cuda`), numbered from 0.
fn detected_gpus() -> Vec<u32> {
    #[cfg(feature = "cuda")]
    let n = crate::cuda::detected_gpus() as u32;
    #[cfg(not(feature = "cuda"))]
    let n = 0;
    (0..n).collect()
}

fn run(session: Session) -> Result<()> {
    raise_fd_limit();
    let gpu_ids = session.config.node_gpu_ids_or(detected_gpus)?;
    let resources = session.config.node_resources_with(gpu_ids.len())?;
    let store_bytes = session.config.store_bytes()?;
    // Address space for spilled objects beside the memory (see
    // `object_store::table`): sparse, so it costs nothing until written.
    let space = store_bytes.saturating_mul(SPACE_PER_MEMORY);
    let arena = Arc::new(Arena::create(&session.arena_path(), space)?);
    let cpus = resources.get(crate::scheduler::CPU).ceil().max(1.0) as usize;
    let mut leases =
        LeaseManager::new(resources.clone(), cpus.max(2), cpus.max(2)).with_gpu_ids(&gpu_ids)?;
    leases.set_node(session.node_index);
    let prestart = cpus.min(8);
    leases.note_prestarted(prestart);
    let fabric = open_fabric(&session, &arena)?;
    let unix = Listener::bind_unix(&session.raylet_socket())?;
    let (spawns, spawn_rx) = std::sync::mpsc::channel();
    let tcp = Listener::bind_tcp(session.ip)?;
    let raylet = Arc::new(Raylet {
        env: session.to_process_env()?,
        state: Mutex::new(State {
            leases,
            store: Store::new(store_bytes, arena.len() as u64),
            clients: HashMap::new(),
            pids: HashMap::new(),
            registered: HashMap::new(),
            start_failures: 0,
            copies: HashMap::new(),
            pins: HashMap::new(),
            nodes: HashMap::new(),
            view_version: 0,
            drivers_seen: 0,
            stopping: false,
            spilling: false,
            spill_pending: false,
            early_exits: HashMap::new(),
            unclaimed: HashMap::new(),
        }),
        next_client: AtomicU64::new(1),
        arena,
        pulls: PullBudget::default(),
        fabric: fabric.as_ref().map(|(f, _)| f.clone()),
        fabric_broken: Mutex::new(Default::default()),
        fabric_forced: session.config.transport_choice()? == crate::fabric::Transport::Fabric,
        fabric_wedged: Default::default(),
        gcs: std::sync::OnceLock::new(),
        room: std::sync::Condvar::new(),
        spill: session.spill_dir(),
        spawns,
        session,
    });
    let gcs = raylet.register(&resources, tcp.port(), fabric.map(|(_, a)| a))?;
    let _ = raylet.gcs.set(gcs.clone());
    log!(
        "raylet up: node {} ({}) at {}:{}, resources {:?}, store {} bytes at {}",
        raylet.session.node_index,
        raylet.session.node,
        raylet.session.ip,
        tcp.port(),
        resources,
        store_bytes,
        raylet.session.arena_path().display()
    );
    {
        let mut st = raylet.lock();
        for _ in 0..prestart {
            raylet.start_worker(&mut st);
        }
    }
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map(|_| ())
            .map_err(|e| Error::io("spawning a raylet thread", e))
    };
    let r = raylet.clone();
    crate::signals::on_terminate(move |sig| r.shutdown(&format!("signal {sig}")));
    let r = raylet.clone();
    spawn("raylet-reaper", Box::new(move || r.reap()))?;
    let r = raylet.clone();
    spawn("raylet-spawner", Box::new(move || r.spawner(spawn_rx)))?;
    let r = raylet.clone();
    spawn("raylet-report", Box::new(move || r.report(gcs)))?;
    let r = raylet.clone();
    spawn("raylet-tcp", Box::new(move || r.accept(tcp)))?;
    raylet.accept(unix);
    Ok(())
}

impl Raylet {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the cluster: registers this node with the GCS and returns the
    /// connection for reports.
    fn register(
        self: &Arc<Self>,
        resources: &crate::scheduler::ResourceSet,
        port: u16,
        fabric: Option<crate::fabric::FabricAddr>,
    ) -> Result<Arc<Conn>> {
        let s = &self.session;
        let gcs_err = |e: Error| {
            Error::unavailable(format!(
                "node {} cannot register with the GCS at {}: {e}",
                s.node, s.gcs
            ))
        };
        let mut dialed = transport::dial(&s.gcs_endpoint(), &s.secret).map_err(gcs_err)?;
        let conn = dialed.conn.clone();
        conn.send(&Msg::RegisterNode {
            req: 1,
            info: NodeInfo {
                index: s.node_index,
                name: s.node.clone(),
                ip: s.ip,
                raylet_port: port,
                total: resources.clone(),
                available: resources.clone(),
                alive: true,
                store_used: 0,
                store_capacity: self.lock().store.capacity(),
                drivers: 0,
                drivers_seen: 0,
                fabric,
            },
        })
        .map_err(gcs_err)?;
        let io_err = |e: std::io::Error| gcs_err(Error::unavailable(e.to_string()));
        let stream = dialed.stream_mut();
        stream
            .set_read_timeout(Some(REGISTER_TIMEOUT))
            .map_err(io_err)?;
        let reply = transport::read_frame(stream, &mut Vec::new()).map_err(io_err)?;
        stream.set_read_timeout(None).map_err(io_err)?;
        match reply {
            Some(Msg::NodeRegistered { result, .. }) => result.map_err(gcs_err)?,
            _ => return Err(gcs_err(Error::unavailable("no answer to the registration"))),
        }
        let (r, r2) = (self.clone(), self.clone());
        dialed.serve(
            "raylet-gcs",
            move |m| {
                if let Msg::ClusterView {
                    version,
                    joined,
                    changed,
                } = m
                {
                    r.cluster_view(version, joined, changed);
                }
            },
            move || r2.shutdown("the GCS connection closed"),
        )?;
        Ok(conn)
    }

    /// Reports to the GCS until the connection fails: what changed since
    /// the last report (a bare heartbeat when nothing did), and the view
    /// version this node holds (the GCS answers with what changed since).
    fn report(&self, gcs: Arc<Conn>) {
        let mut last: Option<ResourceReport> = None;
        loop {
            let msg = {
                let st = self.lock();
                let now = ResourceReport {
                    available: st.leases.available().clone(),
                    store_used: st.store.used(),
                    store_capacity: st.store.capacity(),
                    drivers: st.clients.values().filter(|c| c.is_driver).count() as u32,
                    drivers_seen: st.drivers_seen,
                };
                let report = (last.as_ref() != Some(&now)).then(|| {
                    last = Some(now.clone());
                    now
                });
                Msg::ReportResources {
                    node: self.session.node_index,
                    report,
                    view_version: st.view_version,
                }
            };
            if gcs.send(&msg).is_err() {
                return;
            }
            std::thread::sleep(REPORT_EVERY);
        }
    }

    /// The nodes changed since this node's view version, up to `version`:
    /// merged into the view this node holds.
    fn cluster_view(&self, version: u64, joined: Vec<NodeInfo>, changed: Vec<NodeLoad>) {
        let me = self.session.node_index;
        let mut st = self.lock();
        // Nodes the view declares dead for the first time: this node's
        // processes hear it from here (O(nodes) GCS connections, not one
        // per process), and give up on everything of those nodes.
        let died: Vec<u16> = match crate::gcs::nodes::apply_delta(&mut st.nodes, joined, changed) {
            Some(died) => {
                st.view_version = st.view_version.max(version);
                died.into_iter().filter(|n| *n != me).collect()
            }
            None => {
                // A change to a node this view never had: its version is
                // wrong (a restarted GCS); the next report asks for all.
                st.view_version = 0;
                Vec::new()
            }
        };
        let mut peers: Vec<PeerNode> = st
            .nodes
            .values()
            .filter(|n| n.alive && n.index != me)
            .map(|n| PeerNode {
                index: n.index,
                total: n.total.clone(),
                available: n.available.clone(),
            })
            .collect();
        // In index order, as the whole view came: ties in placement break
        // the same way on every node.
        peers.sort_by_key(|p| p.index);
        let a = st.leases.set_view(peers);
        self.execute(&mut st, a);
        if died.is_empty() {
            return;
        }
        let clients: Vec<Arc<Conn>> = st.clients.values().map(|c| c.conn.clone()).collect();
        drop(st);
        for node in died {
            log!("node {node} is dead in the cluster view: telling this node's processes");
            for c in &clients {
                let _ = c.try_send(&Msg::NodeDied { node });
            }
        }
    }

    fn accept(self: &Arc<Self>, listener: Listener) {
        let r = self.clone();
        transport::accept_each(
            listener,
            "raylet-client",
            || false,
            move |s| r.clone().serve(s),
        );
    }

    fn serve(self: Arc<Self>, mut stream: Stream) {
        if !stream.accept_secret(&self.session.secret) {
            return;
        }
        let Ok(conn) = Conn::new(&stream) else {
            return;
        };
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        self.lock().clients.insert(
            id,
            Client {
                conn: Arc::new(conn),
                worker: None,
                is_driver: false,
            },
        );
        let peer = stream.peer();
        transport::guarded("raylet-client", &peer, || {
            transport::read_loop(stream, |m| self.handle(id, m))
        });
        self.client_gone(id);
    }

    /// Takes a worker's registration if `pid` is an unclaimed process this
    /// raylet started.
    fn claim_worker(&self, st: &mut State, worker: WorkerId, pid: u32) {
        if !claim_pid(&mut st.pids, worker, pid) {
            // A pid this raylet did not start (or one already claimed): a
            // bug or a forged message. Signalling it later could hit any
            // process of the user.
            log!("worker {worker} registered with pid {pid}, which is not an unclaimed worker process of this raylet; ignored");
            return;
        }
        st.registered.insert(worker, pid);
        st.start_failures = 0;
        let a = st.leases.worker_registered(worker);
        self.execute(st, a);
    }

    /// Asks the spawner thread for a worker process.
    fn start_worker(&self, st: &mut State) {
        if st.stopping {
            // A worker started now would outlive the kill below and find
            // the store gone.
            return;
        }
        let _ = self.spawns.send(());
    }

    /// Starts the worker processes asked for, one at a time, with the state
    /// lock held only to record them.
    fn spawner(&self, asks: std::sync::mpsc::Receiver<()>) {
        for () in asks {
            if self.lock().stopping {
                continue;
            }
            let child = std::process::Command::new(&self.session.exe)
                .args(&self.session.args)
                .env(ENV_ROLE, "worker")
                .env(ENV_SESSION, &self.env)
                .stdin(std::process::Stdio::null())
                .spawn();
            let mut st = self.lock();
            match child {
                Ok(mut c) if st.stopping => {
                    // Shutdown began meanwhile and will not see this one.
                    let _ = c.kill();
                }
                Ok(c) => {
                    let pid = c.id();
                    st.pids.insert(pid, None);
                    if let Some((client, worker)) = st.unclaimed.remove(&pid) {
                        if st.clients.contains_key(&client) {
                            self.claim_worker(&mut st, worker, pid);
                        }
                    }
                    // The reaper thread collects it with waitpid; if it
                    // already did, this is its exit.
                    if let Some(status) = st.early_exits.remove(&pid) {
                        self.child_exited(st, pid, status);
                    }
                }
                Err(e) => {
                    log!("cannot start a worker: {e}");
                    let actions = st.leases.worker_start_failed();
                    self.execute(&mut st, actions);
                }
            }
        }
    }

    fn execute(&self, st: &mut State, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Grant {
                    client,
                    req,
                    lease,
                    worker,
                    gpus,
                } => {
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.post(&Msg::LeaseGranted {
                            req,
                            lease,
                            worker,
                            gpus,
                        });
                    }
                }
                Action::Reject { client, req, error } => {
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.post(&Msg::LeaseFailed { req, error });
                    }
                }
                Action::StartWorker => self.start_worker(st),
                Action::Spillback { client, req, node } => {
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.post(&Msg::LeaseSpillback { req, node });
                    }
                }
                Action::RetireWorker(w) => {
                    let conn = st
                        .clients
                        .values()
                        .find(|c| c.worker == Some(w))
                        .map(|c| c.conn.clone());
                    // Not connected: it is exiting anyway.
                    if let Some(c) = conn {
                        let _ = c.post(&Msg::Retire);
                    }
                }
                Action::KillWorker(w) => {
                    // A child this raylet started and has not reaped (so its
                    // pid is not reused), positive (not a process group).
                    if let Some(pid) = kill_target(&st.pids, &st.registered, w) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
    }

    fn handle(self: &Arc<Self>, client: ClientId, m: Msg) {
        let mut st = self.lock();
        match m {
            Msg::Register {
                worker,
                pid,
                is_driver,
            } => {
                if let Some(c) = st.clients.get_mut(&client) {
                    c.worker = Some(worker);
                    c.is_driver = is_driver;
                }
                if is_driver {
                    st.drivers_seen += 1;
                }
                if !is_driver {
                    if !st.pids.contains_key(&pid) && st.unclaimed.len() < MAX_UNCLAIMED {
                        // Started so fast that the spawner has not recorded
                        // it yet: it completes the registration when it does.
                        st.unclaimed.insert(pid, (client, worker));
                        return;
                    }
                    self.claim_worker(&mut st, worker, pid);
                }
            }
            Msg::RequestLease { req, shape, spill } => {
                if st.start_failures >= MAX_START_FAILURES {
                    let error = crate::error::Error::unavailable(
                        "worker processes exit before registering: the program must call rustray::init() at the start of main, before anything else",
                    );
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.post(&Msg::LeaseFailed { req, error });
                    }
                    return;
                }
                let a = st.leases.request(client, req, shape, spill);
                self.execute(&mut st, a);
            }
            Msg::ReturnLease { lease, kill } => {
                let a = st.leases.return_lease(lease, kill);
                self.execute(&mut st, a);
            }
            Msg::Blocked => {
                if let Some(w) = st.clients.get(&client).and_then(|c| c.worker) {
                    let a = st.leases.blocked(w);
                    self.execute(&mut st, a);
                }
            }
            Msg::Unblocked => {
                if let Some(w) = st.clients.get(&client).and_then(|c| c.worker) {
                    st.leases.unblocked(w);
                }
            }
            Msg::CreateObject {
                req,
                size,
                owner,
                tag,
            } => {
                // Room first (spilling others if need be); the block is
                // pinned for its writer until it unpins it, written.
                let (mut st, room) = self.make_room(st, size);
                let result = room.and_then(|()| st.store.create(size, owner, tag));
                if let Ok(offset) = result {
                    let _ = st.store.pin(offset, tag);
                    st.pins.entry(client).or_default().push(offset);
                    self.spill_past_threshold(&mut st);
                }
                if let Some(c) = st.clients.get(&client) {
                    let _ = c.conn.post(&Msg::ObjectCreated { req, result });
                }
            }
            Msg::GetStoreStats { req } => {
                let (spilled_objects, spilled_bytes) = st.store.spilled();
                let reply = Msg::StoreStats {
                    req,
                    used: st.store.used(),
                    capacity: st.store.capacity(),
                    objects: st.store.live_objects() as u64,
                    spilled_objects,
                    spilled_bytes,
                };
                if let Some(c) = st.clients.get(&client) {
                    let _ = c.conn.post(&reply);
                }
            }
            Msg::FreeObjects { offsets } => {
                for o in offsets {
                    st.store.free(o);
                }
                drop(self.delete_dead_files(st));
            }
            Msg::KillWorker { worker } => self.execute(&mut st, vec![Action::KillWorker(worker)]),
            Msg::RetireRefused => {
                if let Some(w) = st.clients.get(&client).and_then(|c| c.worker) {
                    let a = st.leases.worker_kept(w);
                    self.execute(&mut st, a);
                }
            }
            Msg::PullObject {
                req,
                node,
                offset,
                len,
                tag,
                copies,
            } => self.pull(st, client, req, (node, offset, len, tag), copies),
            Msg::UnpinObject {
                node,
                offset,
                len,
                tag,
            } => unpin_copy(&mut st, (node, offset, len, tag)),
            Msg::PinObjects { req, blocks } => {
                // Spilled blocks are read back first.
                let (mut st, result) = self.pin_blocks(st, &blocks);
                if result.is_ok() {
                    let held = st.pins.entry(client).or_default();
                    held.extend(blocks.iter().map(|(o, _)| *o));
                }
                if let Some(c) = st.clients.get(&client) {
                    let _ = c.conn.post(&Msg::ObjectsPinned { req, result });
                }
            }
            Msg::UnpinObjects { offsets } => {
                let st = &mut *st;
                // Only pins this client holds: a confused one cannot
                // release another reader's.
                if let Some(held) = st.pins.get_mut(&client) {
                    for offset in offsets {
                        if let Some(i) = held.iter().position(|o| *o == offset) {
                            held.swap_remove(i);
                            st.store.unpin(offset);
                        }
                    }
                }
            }
            Msg::ReadObject {
                node,
                offset,
                len,
                tag,
                start,
                count,
            } => {
                let key = (node, offset, len, tag);
                let conn = st.clients.get(&client).map(|c| c.conn.clone());
                // The primary block (read back first if it was spilled), or
                // this node's copy, pinned while it is sent, so it cannot be
                // freed and reused meanwhile.
                let base = if node == self.session.node_index {
                    let (s, r) = self.pin_blocks(st, &[(offset, tag)]);
                    st = s;
                    r.map(|()| (offset, true))
                } else {
                    match st.copies.get_mut(&key) {
                        Some(Copy {
                            state: CopyState::Ready(local),
                            pins,
                        }) => {
                            *pins += 1;
                            Ok((*local, true))
                        }
                        _ => Err(Error::new(
                            crate::error::ErrorKind::ObjectLost,
                            format!("node {} holds no copy of that object", self.session.node),
                        )),
                    }
                };
                drop(st);
                let range = base.clone().and_then(|(b, pinned)| {
                    let in_object = start.checked_add(count).is_some_and(|e| e <= len);
                    if !in_object {
                        return Err(Error::invalid("read outside the object"));
                    }
                    Ok((b + start, pinned))
                });
                if let Some(conn) = conn {
                    // Written straight from the mapping: no copy on this side.
                    let bytes = range.clone().and_then(|(at, _)| self.arena.read(at, count));
                    let _ = match bytes {
                        Ok(bytes) => {
                            conn.send_with_bytes(&Msg::ObjectBytes { result: Ok(count) }, bytes)
                        }
                        Err(e) => conn.send(&Msg::ObjectBytes { result: Err(e) }),
                    };
                }
                if let Ok((_, true)) = base {
                    let mut st = self.lock();
                    if node == self.session.node_index {
                        st.store.unpin(offset);
                    } else {
                        unpin_copy(&mut st, key);
                    }
                }
            }
            Msg::Shutdown => {
                drop(st);
                self.shutdown("the driver asked for shutdown");
            }
            other => log!("raylet ignores unexpected message {other:?}"),
        }
    }

    /// A local process wants a block of another node's store.
    fn pull<'a>(
        self: &'a Arc<Self>,
        mut st: std::sync::MutexGuard<'a, State>,
        client: ClientId,
        req: u64,
        key: CopyKey,
        copies: Vec<u16>,
    ) {
        let reply = |st: &State, result: std::result::Result<u64, Error>| {
            if let Some(c) = st.clients.get(&client) {
                let _ = c.conn.post(&Msg::ObjectPulled { req, result });
            }
        };
        if let Some(c) = st.copies.get_mut(&key) {
            c.pins += 1;
            match &mut c.state {
                CopyState::Ready(local) => {
                    let local = *local;
                    reply(&st, Ok(local));
                }
                CopyState::Pulling(waiters) => waiters.push((client, req)),
            }
            return;
        }
        let (node, _, len, _) = key;
        // Where to read it: the primary's node, then the nodes with copies,
        // skipping nodes known to be lost.
        let me = self.session.node_index;
        let mut sources = vec![node];
        for c in copies {
            if c != me && !sources.contains(&c) {
                sources.push(c);
            }
        }
        sources.retain(|n| st.nodes.get(n).is_none_or(|i| i.alive));
        if sources.is_empty() {
            let e = Error::new(
                crate::error::ErrorKind::ObjectLost,
                format!("every copy of the object is gone: its node {node} was lost and no other node holds one"),
            );
            reply(&st, Err(e));
            return;
        }
        // Room for the copy, spilling objects here if need be; another
        // pull of the same object may have started meanwhile: join it.
        let (s, room) = self.make_room(st, len);
        st = s;
        if st.copies.contains_key(&key) {
            return self.pull(st, client, req, key, Vec::new());
        }
        let local = match room.and_then(|()| st.store.create(len, COPY_OWNER, key.3)) {
            Ok(o) => o,
            Err(e) => {
                reply(&st, Err(e));
                return;
            }
        };
        st.copies.insert(
            key,
            Copy {
                state: CopyState::Pulling(vec![(client, req)]),
                pins: 1,
            },
        );
        drop(st);
        let r = self.clone();
        let _ = std::thread::Builder::new()
            .name("raylet-pull".into())
            .spawn(move || {
                let mut result = Err(Error::new(
                    crate::error::ErrorKind::ObjectLost,
                    "no node could serve the object",
                ));
                let mut local = local;
                // True while `local` may still be written by an abandoned
                // RDMA read: it is then never freed (nor reused).
                let mut local_dirty = false;
                for source in &sources {
                    if let Some(addr) = r.fabric_peer(*source, key) {
                        // One-sided reads bypass the source's CPU: the block
                        // is pinned there first (read back if spilled), held
                        // by this connection until the read is done.
                        let _hold = match r.hold_at_source(*source, key) {
                            Ok(h) => h,
                            Err(e) => {
                                log!("pull of {len} bytes from node {source} failed: {e}");
                                result = Err(e);
                                continue;
                            }
                        };
                        match r.fetch_fabric(&addr, *source, key, local) {
                            Ok(()) => {
                                result = Ok(());
                                break;
                            }
                            Err(e) => {
                                log!(
                                    "{e}; node {source} is read {} from now on",
                                    if r.fabric_forced && !r.fabric_wedged.load(Ordering::Relaxed) { "from copies only" } else { "over TCP" }
                                );
                                r.fabric_broken
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(*source);
                                if e.dirty {
                                    log!("block at {local} ({len} bytes) abandoned to the failed read");
                                    let (mut st, room) = r.make_room(r.lock(), len);
                                    match room.and_then(|()| st.store.create(len, COPY_OWNER, key.3)) {
                                        Ok(o) => local = o,
                                        Err(e) => {
                                            local_dirty = true;
                                            result = Err(e);
                                            break;
                                        }
                                    }
                                }
                                if r.fabric_forced && !r.fabric_wedged.load(Ordering::Relaxed) {
                                    // --transport fabric: no TCP retry from
                                    // this node; a copy elsewhere may serve.
                                    result = Err(Error::new(
                                        crate::error::ErrorKind::ObjectLost,
                                        e.message,
                                    ));
                                    continue;
                                }
                            }
                        }
                    }
                    result = r
                        .node_endpoint(*source)
                        .and_then(|ep| r.fetch(&ep, key, local));
                    match &result {
                        Ok(()) => break,
                        Err(e) => log!("pull of {len} bytes from node {source} failed: {e}"),
                    }
                }
                let mut st = r.lock();
                let waiters = match st.copies.get_mut(&key) {
                    Some(c) => match std::mem::replace(&mut c.state, CopyState::Ready(local)) {
                        CopyState::Pulling(w) => w,
                        CopyState::Ready(_) => Vec::new(),
                    },
                    None => Vec::new(),
                };
                if result.is_err() {
                    st.copies.remove(&key);
                    if !local_dirty {
                        st.store.free(local);
                    }
                }
                for (client, req) in waiters {
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.post(&Msg::ObjectPulled {
                            req,
                            result: result.clone().map(|_| local),
                        });
                    }
                }
            });
    }

    /// The fabric address to read `key` from `source` with, if both nodes
    /// use the same provider and `source` holds the primary block (whose
    /// offset the key names; a copy's offset is known only to its node,
    /// so copies are read over TCP).
    fn fabric_peer(&self, source: u16, key: CopyKey) -> Option<crate::fabric::FabricAddr> {
        let mine = self.fabric.as_ref()?;
        if self.fabric_wedged.load(Ordering::Relaxed) {
            return None;
        }
        if source != key.0
            || self
                .fabric_broken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&source)
        {
            return None;
        }
        let deadline = std::time::Instant::now() + REPORT_EVERY * 20;
        loop {
            if let Some(n) = self.lock().nodes.get(&source) {
                return n.fabric.clone().filter(|a| a.provider == mine.provider);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(REPORT_EVERY / 10);
        }
    }

    /// Reads the primary block of `key` from `source`'s arena into local
    /// block `local` by one-sided RDMA reads: no work for the remote CPU
    /// beyond its provider's progress. Same pull budget as TCP pulls.
    ///
    /// The read runs on a thread of its own, watched: a provider call that
    /// never returns (see [`Fabric::wedged`](crate::fabric::Fabric::wedged))
    /// loses the endpoint, not the pull: the block is abandoned and the
    /// caller reads over TCP.
    fn fetch_fabric(
        self: &Arc<Self>,
        addr: &crate::fabric::FabricAddr,
        source: u16,
        key: CopyKey,
        local: u64,
    ) -> std::result::Result<(), crate::fabric::FabricError> {
        let fabric = self.fabric.clone().ok_or_else(no_fabric)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, a) = (self.clone(), addr.clone());
        std::thread::Builder::new()
            .name("raylet-rdma".into())
            .spawn(move || {
                let _ = tx.send(r.fetch_fabric_here(&a, source, key, local));
            })
            .map_err(|e| crate::fabric::FabricError {
                message: format!("spawning a read thread: {e}"),
                dirty: false,
            })?;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => return r,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(crate::fabric::FabricError {
                        message: "the RDMA read thread panicked".into(),
                        dirty: true,
                    })
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if fabric.wedged(WEDGED_AFTER) {
                        self.fabric_wedged.store(true, Ordering::Relaxed);
                        return Err(crate::fabric::FabricError {
                            message: format!(
                                "the fabric endpoint is stuck: a call into provider {} has not returned for {WEDGED_AFTER:?} (a peer process killed while holding the provider's shared state?); this node moves objects over TCP from now on",
                                fabric.provider
                            ),
                            dirty: true,
                        });
                    }
                }
            }
        }
    }

    fn fetch_fabric_here(
        &self,
        addr: &crate::fabric::FabricAddr,
        source: u16,
        key: CopyKey,
        local: u64,
    ) -> std::result::Result<(), crate::fabric::FabricError> {
        let (_, offset, len, _) = key;
        let fabric = self.fabric.as_ref().ok_or_else(no_fabric)?;
        let _budget = PullBudget::acquire(&self.pulls, len);
        // SAFETY: `local` is the block this pull allocated for the copy; its
        // location is published (ObjectPulled) only once it is filled.
        let dst =
            unsafe { self.arena.write(local, len) }.map_err(|e| crate::fabric::FabricError {
                message: e.to_string(),
                dirty: false,
            })?;
        let label = match self.lock().nodes.get(&source) {
            Some(n) => format!("node {} ({})", n.name, n.ip),
            None => format!("node {source}"),
        };
        let lost = || self.lock().nodes.get(&source).is_none_or(|n| !n.alive);
        fabric.read(addr, &label, offset, dst, TRANSFER_STALL, &lost)
    }

    /// Pins the primary block of `key` at node `source` for a one-sided
    /// read, so it is neither freed nor spilled under the read (a spilled
    /// block is read back into memory first); the pin lasts as long as the
    /// returned connection.
    fn hold_at_source(&self, source: u16, key: CopyKey) -> Result<Stream> {
        let (_, offset, _, tag) = key;
        let lost = |e: String| {
            Error::new(
                crate::error::ErrorKind::ObjectLost,
                format!("node {source} cannot pin the object for an RDMA read: {e}"),
            )
        };
        let ep = self.node_endpoint(source)?;
        let mut stream = ep
            .connect(&self.session.secret)
            .map_err(|e| lost(e.to_string()))?;
        if let Stream::Tcp(t) = &stream {
            t.set_read_timeout(Some(TRANSFER_STALL))
                .map_err(|e| lost(e.to_string()))?;
        }
        Conn::new(&stream)?
            .send(&Msg::PinObjects {
                req: 0,
                blocks: vec![(offset, tag)],
            })
            .map_err(|e| lost(e.to_string()))?;
        let mut frame = Vec::new();
        match transport::read_frame(&mut stream, &mut frame) {
            Ok(Some(Msg::ObjectsPinned { result: Ok(()), .. })) => Ok(stream),
            Ok(Some(Msg::ObjectsPinned { result: Err(e), .. })) => Err(e),
            Ok(_) => Err(lost("unexpected answer".into())),
            Err(e) => Err(lost(e.to_string())),
        }
    }

    /// Node `node`'s raylet, waiting (bounded) for a cluster view that has
    /// it: a node that just joined may not be in this raylet's view yet.
    fn node_endpoint(&self, node: u16) -> Result<transport::Endpoint> {
        let deadline = std::time::Instant::now() + REPORT_EVERY * 20;
        loop {
            if let Some(n) = self.lock().nodes.get(&node) {
                return Ok(n.raylet());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::new(
                    crate::error::ErrorKind::ObjectLost,
                    format!("the object's node {node} is not in the cluster"),
                ));
            }
            std::thread::sleep(REPORT_EVERY / 10);
        }
    }

    /// Reads a block of another node's store into local block `local`:
    /// in [`PULL_CHUNK`] pieces over up to [`PULL_STREAMS`] connections,
    /// each with all its requests sent at once (pipelined), read straight
    /// into the arena. At most [`PULL_BUDGET`] bytes are in flight per node
    /// (one larger object at a time goes alone).
    fn fetch(&self, source: &transport::Endpoint, key: CopyKey, local: u64) -> Result<()> {
        let len = key.2;
        let _budget = PullBudget::acquire(&self.pulls, len);
        // SAFETY: `local` is the block this pull allocated for the copy; its
        // location is published (ObjectPulled) only once it is filled.
        let dst = unsafe { self.arena.write(local, len) }?;
        let mut groups: Vec<Vec<(u64, &mut [u8])>> = Vec::new();
        let n = (len.div_ceil(PULL_CHUNK) as usize).clamp(1, PULL_STREAMS);
        groups.resize_with(n, Vec::new);
        for (i, c) in dst.chunks_mut(PULL_CHUNK as usize).enumerate() {
            groups[i % n].push((i as u64 * PULL_CHUNK, c));
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|g| s.spawn(move || self.fetch_chunks(source, key, g)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::unavailable("a transfer thread panicked")))
                })
                .collect::<Result<Vec<()>>>()
        })
        .map(|_| ())
    }

    /// One connection's share of a pull.
    fn fetch_chunks(
        &self,
        source: &transport::Endpoint,
        key: CopyKey,
        chunks: Vec<(u64, &mut [u8])>,
    ) -> Result<()> {
        let (node, offset, len, tag) = key;
        let lost = |e: std::io::Error| {
            Error::new(
                crate::error::ErrorKind::ObjectLost,
                format!("the transfer from {source} broke off: {e}"),
            )
        };
        let unreachable = |e: Error| {
            Error::new(
                crate::error::ErrorKind::ObjectLost,
                format!("the node holding the object cannot be reached: {e}"),
            )
        };
        let mut stream = source.connect(&self.session.secret).map_err(unreachable)?;
        if let Stream::Tcp(t) = &stream {
            // A node that stops answering mid-transfer fails the pull
            // instead of hanging it.
            t.set_read_timeout(Some(TRANSFER_STALL)).map_err(lost)?;
        }
        let conn = Conn::new(&stream)?;
        for (start, c) in &chunks {
            conn.send(&Msg::ReadObject {
                node,
                offset,
                len,
                tag,
                start: *start,
                count: c.len() as u64,
            })
            .map_err(unreachable)?;
        }
        let mut frame = Vec::new();
        for (_, c) in chunks {
            match transport::read_frame(&mut stream, &mut frame).map_err(lost)? {
                Some(Msg::ObjectBytes { result: Ok(n) }) if n == c.len() as u64 => {}
                Some(Msg::ObjectBytes { result: Err(e) }) => return Err(e),
                _ => return Err(Error::unavailable("unexpected answer to a read")),
            }
            // Straight into the arena: the bytes are copied once, by the kernel.
            std::io::Read::read_exact(&mut stream, c).map_err(lost)?;
        }
        Ok(())
    }

    fn client_gone(&self, client: ClientId) {
        let mut st = self.lock();
        let Some(c) = st.clients.remove(&client) else {
            return;
        };
        // An embedded cluster ends with its driver; a launched one serves
        // drivers that come and go (every rank of a simulation, say).
        if c.is_driver && self.session.embedded {
            drop(st);
            self.shutdown("the driver disconnected");
        }
        // A driver's objects fate-share with it, as a worker's do.
        if let (true, Some(w)) = (c.is_driver, c.worker) {
            let freed = st.store.free_owned_by(w);
            log!("driver {w} disconnected; freed {freed} objects");
        }
        for offset in st.pins.remove(&client).unwrap_or_default() {
            st.store.unpin(offset);
        }
        st.unclaimed.retain(|_, (c, _)| *c != client);
        let mut st = self.delete_dead_files(st);
        let a = st.leases.client_gone(client);
        self.execute(&mut st, a);
        drop(st);
        // The actors it created end with it (the GCS knows which).
        if let (Some(w), Some(gcs)) = (c.worker, self.gcs.get()) {
            let _ = gcs.send(&Msg::OwnerGone { worker: w });
        }
    }

    fn reap(&self) {
        loop {
            use nix::sys::wait::{waitpid, WaitStatus};
            // The exit code, or 128 + the signal (as a shell reports it).
            let (pid, status) = match waitpid(None, None) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32),
                Ok(_) => continue,
                Err(_) => {
                    // No child now (ECHILD), or interrupted.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
            };
            let mut st = self.lock();
            if !st.pids.contains_key(&(pid as u32)) {
                // Not recorded yet (the spawner records a child after
                // starting it), or not a worker: kept for the spawner,
                // bounded.
                if st.early_exits.len() >= 1024 {
                    st.early_exits.clear();
                }
                st.early_exits.insert(pid as u32, status);
                continue;
            }
            self.child_exited(st, pid as u32, status);
        }
    }

    /// A worker process this raylet started exited.
    fn child_exited<'a>(&'a self, mut st: std::sync::MutexGuard<'a, State>, pid: u32, status: i32) {
        let Some(slot) = st.pids.remove(&pid) else {
            return;
        };
        let worker = slot.filter(|w| st.registered.remove(w).is_some());
        if let Some(worker) = worker {
            let freed = st.store.free_owned_by(worker);
            st = self.delete_dead_files(st);
            let _ = std::fs::remove_file(self.session.worker_socket(worker));
            log!("worker {worker} (pid {pid}) exited with status {status}; freed {freed} objects");
        }
        let a = if let Some(worker) = worker {
            st.leases.worker_died(worker)
        } else {
            st.start_failures += 1;
            if st.start_failures >= MAX_START_FAILURES {
                log!("workers keep exiting before registering; giving up on starting more");
                return;
            }
            st.leases.worker_start_failed()
        };
        self.execute(&mut st, a);
    }

    /// Kills every worker, removes the node's files, and exits.
    fn shutdown(&self, why: &str) -> ! {
        let pids: Vec<u32> = {
            let mut st = self.lock();
            st.stopping = true;
            log!(
                "raylet shutting down: {why}; store held {} live objects, {} of {} bytes",
                st.store.live_objects(),
                st.store.used(),
                st.store.capacity()
            );
            st.pids.keys().copied().collect()
        };
        // SIGTERM first: a worker then writes out what its tasks printed
        // and is still in its output pipe (a SIGKILL would lose it); what
        // has not exited a moment later is killed.
        // Our own (unreaped) children.
        let signal_all = |sig: nix::sys::signal::Signal| {
            for pid in &pids {
                if let Ok(p) = i32::try_from(*pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
                }
            }
        };
        signal_all(nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
        while std::time::Instant::now() < deadline && pids.iter().any(|p| process_running(*p)) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        signal_all(nix::sys::signal::Signal::SIGKILL);
        // Wait (bounded) until they are gone, so none creates a file after
        // the cleanup below.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline && pids.iter().any(|p| process_running(*p)) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(f) = &self.fabric {
            f.close();
        }
        let _ = std::fs::remove_file(self.session.arena_path());
        self.spill.remove_all();
        self.session.remove_fabric_files();
        self.session.remove_sockets();
        std::process::exit(0);
    }
}

fn no_fabric() -> crate::fabric::FabricError {
    crate::fabric::FabricError {
        message: "no fabric on this node".into(),
        dirty: false,
    }
}

/// True while `pid` exists and is not a zombie.
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_children_this_raylet_started_are_claimed_and_signalled() {
        let mut pids: HashMap<u32, Option<WorkerId>> = HashMap::new();
        pids.insert(4242, None);
        let (a, b) = (WorkerId(7), WorkerId(8));
        assert!(
            !claim_pid(&mut pids, a, 1),
            "a pid this raylet did not start"
        );
        assert!(
            !claim_pid(&mut pids, a, u32::MAX),
            "kill(-1) must be impossible"
        );
        assert!(claim_pid(&mut pids, a, 4242));
        assert!(!claim_pid(&mut pids, b, 4242), "claimed already");
        let mut registered = HashMap::new();
        registered.insert(a, 4242);
        registered.insert(b, u32::MAX);
        assert_eq!(kill_target(&pids, &registered, a), Some(4242));
        assert_eq!(kill_target(&pids, &registered, b), None);
        pids.remove(&4242); // reaped: the pid may be reused
        assert_eq!(kill_target(&pids, &registered, a), None);
    }
}
