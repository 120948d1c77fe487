//! The core worker: the part of rustray inside every driver and worker
//! process (Ray's `CoreWorker`).
//!
//! It owns, for its process:
//! - the **object table**: objects this process owns (it `put` them or
//!   submitted the task that returns them) and objects it borrows (refs that
//!   reached it from elsewhere). Small values live here inline; large ones are
//!   locations in the node's shared arena, mapped once per process;
//! - **reference counting** (Ray's ownership model): an owned object is freed
//!   when no `ObjectRef` remains in this process and no borrower holds one.
//!   A process that deserializes a ref it does not own registers itself with
//!   the owner (acknowledged before use, so the owner cannot free the object
//!   in between) and deregisters when its last copy drops. Refs nested inside
//!   a value are kept alive by the value's entry (see `contained`);
//! - **task submission** ([`submitter`]): leases, lease reuse, pipelining,
//!   retries and actor call ordering;
//! - **task execution** in worker processes ([`executor`]);
//! - its **connections**: to its raylet (and, for leases spilled there or
//!   objects stored there, other nodes' raylets), to the GCS, and to other
//!   core workers: each listens on a Unix socket named after its worker id
//!   for its own node and on the TCP port its id embeds for other nodes.
//!
//! All mutable state sits behind one mutex. Work that must not happen under
//! it (socket writes that could block, dropping refs whose `Drop` locks
//! again) is collected in an [`Effects`] and done after unlocking.

pub(crate) mod executor;
pub(crate) mod free;
pub(crate) mod lineage;
pub(crate) mod submitter;

use crate::codec;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ActorId, LeaseId, ObjectId, TaskId, WorkerId};
use crate::object_store::Arena;
use crate::session::{log, Session};
use crate::transport::{self, Conn, Endpoint, Listener, Msg, NodeInfo, Payload, Stream};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Values up to this size travel inline in messages instead of the store
/// (Ray's `max_direct_call_object_size`).
pub(crate) const INLINE_MAX: usize = 100 * 1024;
/// Bound on a request/reply exchange with a cluster process.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pull with no deadline of its own (a task's argument) waits
/// for room in this node's store before failing with `StoreFull`.
pub(crate) const PULL_ROOM_WAIT: Duration = Duration::from_secs(60);
/// How long a put's write pin is kept for a read right after the put
/// (`Entry::held_pin`) while nothing reads it.
const HELD_PIN_FOR: Duration = Duration::from_millis(100);
/// How long `get` spins for a value before it sleeps (and, in a worker,
/// reports itself blocked).
const SPIN: Duration = Duration::from_micros(50);

/// One object in this process's table.
#[derive(Default)]
pub(crate) struct Entry {
    /// The value, once it exists (a stored error blob when its task failed).
    pub(crate) value: Option<Payload>,
    /// `ObjectRef`s (and internal holds) in this process.
    pub(crate) local: u32,
    pub(crate) owned: bool,
    /// Owner side: other processes holding refs, with counts.
    pub(crate) borrowers: HashMap<WorkerId, u32>,
    /// Owner side: processes waiting for the value.
    pub(crate) remote_waiters: Vec<WorkerId>,
    /// Borrower side: the value was requested from the owner.
    pub(crate) requested: bool,
    /// Refs serialized inside the value: alive as long as the value is.
    pub(crate) contained: Vec<RawRef>,
    /// Owner side: the task producing the value, while pending.
    pub(crate) task: Option<TaskId>,
    /// A copy pulled from another node's store into this node's, pinned in
    /// the local raylet while this entry lives.
    pub(crate) local_copy: Option<Payload>,
    /// The value an `OwnerDied` or `ObjectFreed` error replaced: the block
    /// `local_copy` is pinned under, and, for a freed owned object, the
    /// block still to free (see `free.rs`).
    pub(crate) replaced: Option<Payload>,
    /// `rustray::free` was called on it.
    pub(crate) freed: bool,
    /// Reads of its store block in place in this process (`get` decoding,
    /// live `ObjectView`s): a freed block waits for them.
    pub(crate) views: u32,
    /// The object directory: nodes other than the primary's holding a copy
    /// (owner side: reported by borrowers; borrower side: as last told).
    pub(crate) copies: Vec<u16>,
    /// Owner side: this object stands for the handles of an actor this
    /// process created (Ray counts actor handles as it counts object refs):
    /// when it is freed, no handle remains anywhere and the actor ends.
    pub(crate) actor: Option<ActorId>,
    /// Owner side: the finished task whose lineage can make it again.
    pub(crate) made_by: Option<TaskId>,
    /// Owner side, a `put`'s block: this process still holds the pin its
    /// raylet gave the block for writing, so a read right after the put
    /// (the common case) needs no pin round trip. Given back at the end of
    /// the first read, at the next put, or when the object goes, so the
    /// block becomes spillable.
    pub(crate) held_pin: bool,
    /// The descriptor of a GPU-resident object this process owns: when it
    /// goes, so does the device memory (see `crate::cuda`).
    pub(crate) device: bool,
}

/// What the GPU object layer (`crate::cuda`, feature `cuda`) does when a
/// device object's descriptor goes, and when a reader asks its owner for a
/// host copy, and how `get` reads one as host values. Set once by that
/// layer (when a process starts), so the core worker does not depend on it.
pub(crate) struct DeviceHooks {
    pub(crate) release: fn(ObjectId),
    pub(crate) stage: fn(ObjectId) -> Result<ObjectId>,
    /// Object `id`'s blob (`bytes`) as the blob of host values when it is
    /// a device object's descriptor; `None` when it is not one.
    pub(crate) host_blob: HostBlobHook,
}

/// See [`DeviceHooks::host_blob`].
pub(crate) type HostBlobHook = fn(ObjectId, &[u8]) -> Result<Option<Vec<u8>>>;

pub(crate) static DEVICE_HOOKS: std::sync::OnceLock<DeviceHooks> = std::sync::OnceLock::new();

/// Side effects computed under the state lock, performed after it.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) sends: Vec<(Arc<Conn>, Msg)>,
    pub(crate) to_owner: Vec<(WorkerId, Msg)>,
    pub(crate) drops: Vec<RawRef>,
    /// Store blocks to free, by node.
    pub(crate) free_offsets: Vec<(u16, u64)>,
    /// Pulled copies to unpin locally, by their original block.
    pub(crate) unpins: Vec<Payload>,
    /// Blocks of this node's store whose pin this process gives back (see
    /// `Entry::held_pin`).
    pub(crate) unpin_blocks: Vec<u64>,
    pub(crate) notify: bool,
    pub(crate) lease_requests: Vec<submitter::LeaseRequest>,
    pub(crate) return_leases: Vec<(LeaseId, bool)>,
    pub(crate) kill_workers: Vec<WorkerId>,
    pub(crate) resolve_actors: Vec<ActorId>,
    /// Actors none of whose handles remain, for the GCS to end.
    pub(crate) actors_out_of_scope: Vec<ActorId>,
    /// GPU-resident objects that went: their device memory is freed.
    pub(crate) device_frees: Vec<ObjectId>,
    /// Tasks whose worker on another node died, to fail once it is known
    /// whether the node went with it.
    pub(crate) worker_deaths: Vec<(TaskId, WorkerId, Error)>,
}

/// Everything behind the core worker's lock.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) objects: HashMap<ObjectId, Entry>,
    pub(crate) sub: submitter::Submitter,
    /// Objects whose entry holds its block's write pin (`Entry::held_pin`),
    /// with when they were put.
    pub(crate) held: Vec<(ObjectId, Instant)>,
}

/// The core worker of this process.
pub(crate) struct CoreWorker {
    pub(crate) id: WorkerId,
    pub(crate) is_driver: bool,
    pub(crate) session: Session,
    pub(crate) arena: Arena,
    pub(crate) raylet: Arc<Conn>,
    pub(crate) state: Mutex<State>,
    pub(crate) cond: Condvar,
    /// Bumped whenever a value arrives (before `cond` is notified), so a
    /// waiter can spin on it briefly instead of sleeping at once.
    value_epoch: AtomicU64,
    next_seq: AtomicU64,
    next_req: AtomicU64,
    /// Pending requests: the connection they went out on (its address, so
    /// a closing connection fails them at once) and where the reply goes.
    replies: Mutex<HashMap<u64, (usize, mpsc::Sender<Msg>)>>,
    peers: Mutex<HashMap<WorkerId, Arc<Conn>>>,
    gcs: Mutex<Option<Arc<Conn>>>,
    /// Connections to other nodes' raylets (leases there, frees there).
    remote_raylets: Mutex<HashMap<u16, Arc<Conn>>>,
    /// The node table, fetched from the GCS when a node is first needed.
    nodes: Mutex<HashMap<u16, NodeInfo>>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) exec: executor::ExecShared,
    lease_wake: (Mutex<bool>, Condvar),
}

static CURRENT: RwLock<Option<Arc<CoreWorker>>> = RwLock::new(None);

/// The running core worker of this process.
pub(crate) fn current() -> Result<Arc<CoreWorker>> {
    CURRENT
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| Error::unavailable("rustray is not initialized: call rustray::init() first"))
}

pub(crate) fn set_current(cw: Option<Arc<CoreWorker>>) {
    *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = cw;
}

impl CoreWorker {
    /// Connects to the node's raylet, maps the arena and starts listening:
    /// on a Unix socket for processes of this node and on TCP for others.
    /// The TCP port becomes part of this process's id (its address).
    pub(crate) fn start(session: Session, is_driver: bool) -> Result<Arc<CoreWorker>> {
        let arena = Arena::open(&session.arena_path())?;
        let raylet_stream = session.raylet_endpoint().connect(&session.secret)?;
        let raylet = Arc::new(Conn::new(&raylet_stream)?);
        let tcp = Listener::bind_tcp(session.ip)?;
        let id = WorkerId::new(session.node_index, tcp.port());
        let unix = Listener::bind_unix(&session.worker_socket(id))?;
        let cw = Arc::new(CoreWorker {
            id,
            is_driver,
            session,
            arena,
            raylet,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            value_epoch: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            next_req: AtomicU64::new(1),
            replies: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            gcs: Mutex::new(None),
            remote_raylets: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            exec: executor::ExecShared::default(),
            lease_wake: (Mutex::new(false), Condvar::new()),
        });
        // The listener is bound before registering, so a lease granted to
        // this worker can be connected to at once.
        cw.raylet.send(&Msg::Register {
            worker: id,
            pid: std::process::id(),
            is_driver,
        })?;
        let me = cw.clone();
        transport::spawn_reader(
            "rustray-raylet".into(),
            raylet_stream,
            move |m| me.handle_raylet(m),
            {
                let me = cw.clone();
                move || me.raylet_lost()
            },
        )?;
        for listener in [unix, tcp] {
            let me = cw.clone();
            std::thread::Builder::new()
                .name("rustray-accept".into())
                .spawn(move || me.accept_loop(listener))
                .map_err(|e| Error::io("spawning the accept thread", e))?;
        }
        let me = cw.clone();
        std::thread::Builder::new()
            .name("rustray-leases".into())
            .spawn(move || me.housekeeping())
            .map_err(|e| Error::io("spawning the housekeeping thread", e))?;
        Ok(cw)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn next_req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    // ------------------------------------------------------------------
    // Connections
    // ------------------------------------------------------------------

    fn accept_loop(self: Arc<Self>, listener: Listener) {
        let me = self.clone();
        transport::accept_each(
            listener,
            "rustray-peer-in",
            move || self.shutting_down.load(Ordering::Relaxed),
            move |s| me.clone().serve_incoming(s),
        );
    }

    fn serve_incoming(self: Arc<Self>, mut stream: Stream) {
        if !stream.accept_secret(&self.session.secret) {
            return;
        }
        let Ok(conn) = Conn::new(&stream) else { return };
        let conn = Arc::new(conn);
        let mut from: Option<WorkerId> = None;
        let me = self.clone();
        let peer = stream.peer();
        transport::guarded("rustray-peer-in", &peer, || {
            transport::read_loop(stream, |msg| match (&from, msg) {
                (None, Msg::Hello { from: f }) => from = Some(f),
                (Some(f), msg) => me.handle_peer(*f, &conn, msg),
                (None, _) => conn.close(),
            })
        });
        if let Some(f) = from {
            self.peer_gone(f, false);
        }
    }

    /// The connection to another core worker, opened on first use.
    pub(crate) fn peer(self: &Arc<Self>, worker: WorkerId) -> Result<Arc<Conn>> {
        if let Some(c) = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&worker)
        {
            return Ok(c.clone());
        }
        if self.node_known_lost(worker.node()) {
            return Err(Error::new(
                ErrorKind::NodeDied,
                format!("worker {worker} was on node {}, which died", worker.node()),
            ));
        }
        let stream = self
            .worker_endpoint(worker)?
            .connect(&self.session.secret)?;
        let conn = Arc::new(Conn::new(&stream)?);
        conn.send(&Msg::Hello { from: self.id })?;
        {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = peers.get(&worker) {
                conn.close();
                return Ok(c.clone());
            }
            peers.insert(worker, conn.clone());
        }
        let me = self.clone();
        let c2 = conn.clone();
        let me2 = self.clone();
        transport::spawn_reader(
            "rustray-peer-out".into(),
            stream,
            move |m| me.handle_peer(worker, &c2, m),
            move || me2.peer_gone(worker, true),
        )?;
        Ok(conn)
    }

    /// Sends to another core worker, ignoring a dead peer (its death is
    /// handled when its connection closes).
    pub(crate) fn send_to(self: &Arc<Self>, worker: WorkerId, msg: Msg) {
        if let Ok(c) = self.peer(worker) {
            let _ = c.send(&msg);
        }
    }

    fn gcs_conn(self: &Arc<Self>) -> Result<Arc<Conn>> {
        let mut g = self.gcs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let stream = self.session.gcs_endpoint().connect(&self.session.secret)?;
        let conn = Arc::new(Conn::new(&stream)?);
        let me = self.clone();
        let me2 = self.clone();
        let c2 = conn.clone();
        transport::spawn_reader(
            "rustray-gcs".into(),
            stream,
            move |m| me.handle_reply(m),
            move || {
                *me2.gcs.lock().unwrap_or_else(|p| p.into_inner()) = None;
                me2.fail_pending(&c2);
            },
        )?;
        *g = Some(conn.clone());
        Ok(conn)
    }

    /// Where another process listens: its Unix socket on this node, its TCP
    /// port on its node's address otherwise.
    pub(crate) fn worker_endpoint(self: &Arc<Self>, worker: WorkerId) -> Result<Endpoint> {
        if worker.node() == self.session.node_index {
            return Ok(Endpoint::Unix(self.session.worker_socket(worker)));
        }
        let node = self.node(worker.node())?;
        Ok(Endpoint::Tcp(std::net::SocketAddr::new(
            node.ip,
            worker.port(),
        )))
    }

    /// A node's entry in the node table, asking the GCS on a miss.
    pub(crate) fn node(self: &Arc<Self>, index: u16) -> Result<NodeInfo> {
        self.find_node(|n| n.index == index)?
            .ok_or_else(|| Error::unavailable(format!("node {index} is not in the node table")))
    }

    /// A node's entry by name, asking the GCS when it is not cached.
    pub(crate) fn node_by_name(self: &Arc<Self>, name: &str) -> Result<NodeInfo> {
        self.find_node(|n| n.name == name)?
            .ok_or_else(|| Error::invalid(format!("no node is named `{name}`")))
    }

    /// The first cached node matching `pred`; on a miss, the node table is
    /// read again from the GCS (nodes join while the cluster runs).
    fn find_node(self: &Arc<Self>, pred: impl Fn(&NodeInfo) -> bool) -> Result<Option<NodeInfo>> {
        let cached = |t: &HashMap<u16, NodeInfo>| t.values().find(|n| pred(n)).cloned();
        if let Some(n) = cached(&self.nodes.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(Some(n));
        }
        let reply = self.gcs_call(|req| Msg::GetNodes { req }, "reading the node table")?;
        let Msg::Nodes { nodes, .. } = reply else {
            return Err(Error::unavailable("unexpected reply from the GCS"));
        };
        let mut table = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for n in nodes {
            table.insert(n.index, n);
        }
        Ok(cached(&table))
    }

    /// Indices of the nodes believed alive, from the cached node table
    /// (this node when the table is not cached yet).
    pub(crate) fn live_nodes(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|n| n.alive)
            .map(|n| n.index)
            .collect();
        v.sort_unstable();
        if v.is_empty() {
            v.push(self.session.node_index);
        }
        v
    }

    /// The connection to node `node`'s raylet (this node's: the local one).
    pub(crate) fn raylet_of(self: &Arc<Self>, node: u16) -> Result<Arc<Conn>> {
        if node == self.session.node_index {
            return Ok(self.raylet.clone());
        }
        // A hung node's raylet may still accept connections: a node known
        // dead is not asked.
        if self.node_known_lost(node) {
            return Err(Error::new(ErrorKind::NodeDied, format!("node {node} died")));
        }
        let mut g = self
            .remote_raylets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.get(&node) {
            return Ok(c.clone());
        }
        let info = {
            drop(g);
            let info = self.node(node)?;
            g = self
                .remote_raylets
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(c) = g.get(&node) {
                return Ok(c.clone());
            }
            info
        };
        let stream = info.raylet().connect(&self.session.secret)?;
        let conn = Arc::new(Conn::new(&stream)?);
        let me = self.clone();
        let me2 = self.clone();
        transport::spawn_reader(
            "rustray-raylet-remote".into(),
            stream,
            move |m| me.handle_raylet(m),
            move || {
                me2.remote_raylets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&node);
                // Its raylet is gone: locality stops counting that node
                // (until the GCS's node table says otherwise), and the
                // lease requests it held go elsewhere.
                me2.mark_node_lost(node);
                me2.remote_raylet_lost(node);
            },
        )?;
        g.insert(node, conn.clone());
        Ok(conn)
    }

    /// The error for work lost because this process's own raylet died.
    fn local_raylet_died(&self) -> Error {
        Error::new(
            ErrorKind::LocalRayletDied,
            format!(
                "this process's raylet (node {}, `{}`) died: its tasks and objects are lost; call shutdown() and init again",
                self.session.node_index, self.session.node
            ),
        )
    }

    /// Records in the cached node table that `node`'s raylet cannot be
    /// reached (a lost node): a later read of the table from the GCS
    /// replaces the entry.
    /// The cached node table says `node` was lost.
    pub(crate) fn node_known_lost(&self, node: u16) -> bool {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .is_some_and(|i| !i.alive)
    }

    /// Refreshes the node cache from the GCS's table (a node known dead
    /// stays dead); returns the nodes it shows dead that this process did
    /// not know of.
    pub(crate) fn refresh_nodes(&self, table: &[NodeInfo]) -> Vec<u16> {
        let mut cache = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut newly_dead = Vec::new();
        for n in table {
            match cache.get(&n.index) {
                Some(c) if !c.alive => continue,
                _ if !n.alive => newly_dead.push(n.index),
                _ => {}
            }
            cache.insert(n.index, n.clone());
        }
        newly_dead
    }

    pub(crate) fn mark_node_lost(&self, node: u16) {
        if let Some(n) = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&node)
        {
            n.alive = false;
        }
    }

    /// Sends a request built around a fresh request number and waits for the
    /// reply carrying it.
    fn call(&self, conn: &Conn, build: impl FnOnce(u64) -> Msg, what: &str) -> Result<Msg> {
        let req = self.next_req();
        let (tx, rx) = mpsc::channel();
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req, (conn as *const Conn as usize, tx));
        let sent = conn.send(&build(req));
        let r = sent.and_then(|_| {
            rx.recv_timeout(RPC_TIMEOUT).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => Error::new(
                    ErrorKind::Timeout,
                    format!("{what}: no answer within {RPC_TIMEOUT:?}"),
                ),
                mpsc::RecvTimeoutError::Disconnected => {
                    Error::unavailable(format!("{what}: connection lost"))
                }
            })
        });
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req);
        r
    }

    pub(crate) fn gcs_call(
        self: &Arc<Self>,
        build: impl FnOnce(u64) -> Msg,
        what: &str,
    ) -> Result<Msg> {
        let conn = self.gcs_conn()?;
        self.call(&conn, build, what)
    }

    pub(crate) fn raylet_call(&self, build: impl FnOnce(u64) -> Msg, what: &str) -> Result<Msg> {
        self.call(&self.raylet, build, what)
    }

    fn handle_reply(&self, msg: Msg) {
        let req = match &msg {
            Msg::ObjectCreated { req, .. }
            | Msg::ObjectPulled { req, .. }
            | Msg::ObjectsPinned { req, .. }
            | Msg::Nodes { req, .. }
            | Msg::BorrowAdded { req, .. }
            | Msg::ActorRegistered { req, .. }
            | Msg::ActorLookedUp { req, .. }
            | Msg::NamedActors { req, .. }
            | Msg::StoreStats { req, .. }
            | Msg::DeviceObjectStaged { req, .. }
            | Msg::ActorKilled { req } => *req,
            _ => return,
        };
        if let Some((_, tx)) = self
            .replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req)
        {
            let _ = tx.send(msg);
        }
    }

    /// A connection closed: requests waiting on it fail now ("connection
    /// lost") instead of at their timeout.
    fn fail_pending(&self, conn: &Conn) {
        let key = conn as *const Conn as usize;
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (c, _)| *c != key);
    }

    fn handle_raylet(self: &Arc<Self>, msg: Msg) {
        match msg {
            Msg::LeaseGranted {
                req,
                lease,
                worker,
                gpus,
            } => self.lease_granted(req, lease, worker, gpus),
            Msg::LeaseFailed { req, error } => self.lease_failed(req, error),
            Msg::LeaseSpillback { req, node } => self.lease_spilled(req, node),
            Msg::Retire => self.retire(),
            Msg::NodeDied { node } => self.node_died(node),
            other => self.handle_reply(other),
        }
    }

    /// As the owner of device object `id`: its host copy (see
    /// `crate::cuda`).
    fn stage_device_object(self: &Arc<Self>, id: ObjectId) -> Result<ObjectId> {
        match DEVICE_HOOKS.get() {
            Some(h) => (h.stage)(id),
            None => Err(Error::new(
                ErrorKind::Gpu,
                format!("object {id}'s owner holds no device objects (is it built with rustray's cuda feature?)"),
            )),
        }
    }

    /// The host copy of device object `id`, made by its owner: a ref this
    /// process holds.
    #[cfg(feature = "cuda")]
    pub(crate) fn staged_copy(self: &Arc<Self>, id: ObjectId) -> Result<RawRef> {
        let copy = if id.owner == self.id {
            self.stage_device_object(id)?
        } else {
            let conn = self.peer(id.owner).map_err(|_| {
                Error::new(
                    ErrorKind::OwnerDied,
                    format!(
                        "the owner of device object {id} (worker {}) is gone",
                        id.owner
                    ),
                )
            })?;
            match self.call(
                &conn,
                |req| Msg::StageDeviceObject { req, id },
                "copying a device object to host memory",
            )? {
                Msg::DeviceObjectStaged { result, .. } => result?,
                _ => return Err(Error::unavailable("unexpected reply to a staging request")),
            }
        };
        self.adopt_ref(copy)
    }

    /// Marks owned object `id` as a GPU-resident object's descriptor.
    #[cfg(feature = "cuda")]
    pub(crate) fn mark_device(&self, id: ObjectId) {
        if let Some(e) = self.lock().objects.get_mut(&id) {
            e.device = true;
        }
    }

    /// The GCS declared node `node` dead (heard through this node's
    /// raylet): whatever this process has there is given up, whether or
    /// not its connections closed (a hung node keeps them open). Its
    /// raylet's unanswered lease requests go elsewhere; its core workers
    /// count as gone: objects they own fail with `OwnerDied`, tasks and
    /// calls running there are retried or failed, their borrows end.
    pub(crate) fn node_died(self: &Arc<Self>, node: u16) {
        if node == self.session.node_index || self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        self.mark_node_lost(node);
        let raylet = self
            .remote_raylets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
        if let Some(c) = raylet {
            c.close();
        }
        self.remote_raylet_lost(node);
        let mut workers: std::collections::BTreeSet<WorkerId> = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .filter(|w| w.node() == node)
            .collect();
        {
            let st = self.lock();
            for (id, e) in &st.objects {
                if !e.owned && id.owner.node() == node {
                    workers.insert(id.owner);
                }
                workers.extend(e.borrowers.keys().filter(|w| w.node() == node));
            }
            workers.extend(st.sub.leased_workers().filter(|w| w.node() == node));
        }
        if !workers.is_empty() {
            log!(
                "node {node} died: {} of its processes this one depended on are gone",
                workers.len()
            );
        }
        for w in workers {
            let conn = self
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&w)
                .cloned();
            match conn {
                // Its reader ends, and reports the peer gone.
                Some(c) => c.close(),
                None => self.peer_gone(w, true),
            }
        }
    }

    /// The raylet has more idle workers than it keeps: exit, unless this
    /// process owns objects or actors that are still referenced (their
    /// owner must live, as in Ray), or hosts an actor.
    fn retire(self: &Arc<Self>) {
        let owns = self.lock().objects.values().any(|e| e.owned);
        let hosts_actor = self
            .exec
            .actor_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if owns || hosts_actor || self.is_driver {
            let _ = self.raylet.send(&Msg::RetireRefused);
            return;
        }
        log!("idle worker retires (the raylet keeps fewer idle workers)");
        executor::exit_flushing_output(0);
    }

    fn raylet_lost(self: &Arc<Self>) {
        if !self.is_driver && !self.shutting_down.load(Ordering::Relaxed) {
            // Our node is gone: nothing this worker does can be delivered.
            // It exits before its pending raylet calls fail, so that a
            // task storing its result reports no error of its own: its
            // owner sees the worker die, and retries it (workers share
            // their raylet's fate, as in Ray).
            log!("raylet connection closed; worker exiting");
            executor::exit_flushing_output(0);
        }
        self.fail_pending(&self.raylet);
        if self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        log!("raylet connection lost");
        eprintln!("rustray: the raylet process died; the cluster is unusable (call shutdown and init again)");
        let err = self.local_raylet_died();
        let fx = {
            let mut st = self.lock();
            self.fail_all(&mut st, &err)
        };
        self.apply(fx);
        self.session.remove_sockets();
        self.arena.unlink();
    }

    fn handle_peer(self: &Arc<Self>, from: WorkerId, conn: &Arc<Conn>, msg: Msg) {
        match msg {
            Msg::PushTask(spec) => self.exec_push(conn, spec),
            Msg::CreateActor { spec, gpus } => self.exec_create_actor(conn, spec, gpus),
            Msg::CancelTask { task } => self.exec_cancel(conn, task),
            Msg::FreeObject { id } => self.free_object(id),
            Msg::CancelObject { id } => {
                if let Err(e) = self.cancel(id) {
                    log!("cancel of {id} forwarded by {from} failed: {e}");
                }
            }
            Msg::TaskDone {
                task,
                returns,
                app_error,
                exiting,
                lost_args,
            } => self.task_done(from, task, returns, app_error, exiting, lost_args),
            Msg::ObjectLost { id, tag } => {
                let mut fx = Effects::default();
                {
                    let mut st = self.lock();
                    let lost = st.objects.get(&id).and_then(|e| match &e.value {
                        Some(p @ Payload::Store { tag: t, .. }) if *t == tag && e.owned => {
                            Some(p.clone())
                        }
                        _ => None,
                    });
                    if let Some(lost) = lost {
                        let why = Error::new(
                            ErrorKind::ObjectLost,
                            format!("every copy of object {id} is gone (found by {from})"),
                        );
                        let _ = self.object_lost(&mut st, id, &lost, &why, &mut fx);
                    }
                }
                self.apply(fx);
            }
            Msg::TasksReturned { tasks } => self.tasks_returned(from, tasks),
            Msg::WorkerUnblocked => self.worker_unblocked(from),
            Msg::GetObject { id } => self.remote_get(from, conn, id),
            Msg::ObjectReady {
                id,
                payload,
                copies,
            } => self.object_ready_remote(id, payload, copies),
            Msg::AddLocation { id, node } => {
                if let Some(e) = self.lock().objects.get_mut(&id).filter(|e| e.owned) {
                    if !e.copies.contains(&node) {
                        e.copies.push(node);
                    }
                }
            }
            Msg::RemoveLocation { id, node } => {
                if let Some(e) = self.lock().objects.get_mut(&id) {
                    e.copies.retain(|n| *n != node);
                }
            }
            Msg::AddBorrow { req, id } => {
                let ok = {
                    let mut st = self.lock();
                    match st.objects.get_mut(&id) {
                        Some(e) if e.owned => {
                            *e.borrowers.entry(from).or_insert(0) += 1;
                            true
                        }
                        _ => false,
                    }
                };
                let _ = conn.send(&Msg::BorrowAdded { req, ok });
            }
            Msg::RemoveBorrow { id } => {
                let fx = {
                    let mut st = self.lock();
                    let mut fx = Effects::default();
                    if let Some(e) = st.objects.get_mut(&id) {
                        if let Some(n) = e.borrowers.get_mut(&from) {
                            *n -= 1;
                            if *n == 0 {
                                e.borrowers.remove(&from);
                            }
                        }
                    }
                    self.maybe_free(&mut st, id, &mut fx);
                    fx
                };
                self.apply(fx);
            }
            Msg::StageDeviceObject { req, id } => {
                let result = self.stage_device_object(id);
                let _ = conn.send(&Msg::DeviceObjectStaged { req, result });
            }
            other => self.handle_reply(other),
        }
    }

    /// Another core worker's connection closed: it died or shut down.
    fn peer_gone(self: &Arc<Self>, worker: WorkerId, outgoing: bool) {
        if outgoing {
            let gone = self
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&worker);
            if let Some(c) = gone {
                self.fail_pending(&c);
            }
        }
        if self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let fx = {
            let mut st = self.lock();
            let mut fx = Effects::default();
            // Its borrows end with it.
            let ids: Vec<ObjectId> = st
                .objects
                .iter()
                .filter(|(_, e)| {
                    e.borrowers.contains_key(&worker) || e.remote_waiters.contains(&worker)
                })
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(e) = st.objects.get_mut(&id) {
                    e.borrowers.remove(&worker);
                    e.remote_waiters.retain(|w| *w != worker);
                }
                self.maybe_free(&mut st, id, &mut fx);
            }
            if outgoing {
                // Objects it owned that we were waiting for are lost.
                let err = Error::new(
                    ErrorKind::OwnerDied,
                    format!(
                        "the owner of this object (worker {worker}) died before it was fetched"
                    ),
                );
                let blob = codec::encode_error(&err);
                let lost: Vec<ObjectId> = st
                    .objects
                    .iter()
                    .filter(|(id, e)| id.owner == worker && !e.owned && e.value.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                for id in lost {
                    self.set_value(&mut st, id, Payload::Inline(blob.clone()), &mut fx);
                }
                // Objects fate-share with their owner (as in Ray): one read
                // before fails from now on too. A copy pulled here is
                // unpinned once no view of it is left.
                let died = Error::new(
                    ErrorKind::OwnerDied,
                    format!("the owner of this object (worker {worker}) died; objects share their owner's fate"),
                );
                let died = codec::encode_error(&died);
                let mut dead = Vec::new();
                for (id, e) in st.objects.iter_mut() {
                    if id.owner == worker && !e.owned && e.replaced.is_none() && e.value.is_some() {
                        e.replaced = e.value.replace(Payload::Inline(died.clone()));
                        fx.notify = true;
                        dead.push(*id);
                    }
                }
                for id in dead {
                    self.release_dead_copy(&mut st, id, &mut fx);
                }
                self.worker_lost(&mut st, worker, &mut fx);
            }
            fx
        };
        self.apply(fx);
    }

    /// Performs the effects collected under the lock.
    pub(crate) fn apply(self: &Arc<Self>, fx: Effects) {
        if fx.notify {
            self.value_epoch.fetch_add(1, Ordering::Release);
            self.cond.notify_all();
        }
        for (conn, msg) in fx.sends {
            let _ = conn.send(&msg);
        }
        for (owner, msg) in fx.to_owner {
            self.send_to(owner, msg);
        }
        if !fx.unpin_blocks.is_empty() {
            let _ = self.raylet.post(&Msg::UnpinObjects {
                offsets: fx.unpin_blocks,
            });
        }
        if !fx.free_offsets.is_empty() {
            let mut by_node: HashMap<u16, Vec<u64>> = HashMap::new();
            for (node, offset) in fx.free_offsets {
                by_node.entry(node).or_default().push(offset);
            }
            for (node, offsets) in by_node {
                if let Ok(c) = self.raylet_of(node) {
                    let _ = c.send(&Msg::FreeObjects { offsets });
                }
            }
        }
        for original in fx.unpins {
            self.unpin(&original);
        }
        if !fx.worker_deaths.is_empty() {
            // Probing a node may take up to a connect timeout: not on the
            // thread that reads the connections.
            let me = self.clone();
            let deaths = fx.worker_deaths;
            let spawned = std::thread::Builder::new()
                .name("rustray-node-check".into())
                .spawn(move || me.fail_worker_deaths(deaths));
            if let Err(e) = spawned {
                log!("could not check whether a node was lost: {e}");
            }
        }
        for r in fx.lease_requests {
            let submitter::LeaseRequest {
                req,
                shape,
                node,
                spill,
                fallback,
            } = r;
            let local = node == self.session.node_index;
            let sent = self.raylet_of(node).and_then(|c| {
                c.send(&Msg::RequestLease {
                    req,
                    shape: shape.clone(),
                    spill,
                })
            });
            match sent {
                Ok(()) => {}
                // The local raylet cannot be reached: it died.
                Err(_) if local => self.lease_failed(req, self.local_raylet_died()),
                Err(e) if !fallback => self.lease_failed(req, e),
                Err(e) => {
                    // The node the request was spilled to is unreachable
                    // (lost since the view was taken): queue it here.
                    log!("lease request spilled to node {node} failed ({e}); asking the local raylet");
                    self.mark_node_lost(node);
                    let _ = self.raylet.send(&Msg::RequestLease {
                        req,
                        shape,
                        spill: crate::scheduler::Spill::Never,
                    });
                }
            }
        }
        for (lease, kill) in fx.return_leases {
            if let Ok(c) = self.raylet_of(lease.node()) {
                let _ = c.send(&Msg::ReturnLease { lease, kill });
            }
        }
        for worker in fx.kill_workers {
            let _ = self.raylet.send(&Msg::KillWorker { worker });
        }
        if let (false, Some(h)) = (fx.device_frees.is_empty(), DEVICE_HOOKS.get()) {
            for id in fx.device_frees {
                (h.release)(id);
            }
        }
        for id in fx.actors_out_of_scope {
            match self.gcs_conn() {
                Ok(c) => {
                    let _ = c.send(&Msg::ActorOutOfScope { id });
                }
                Err(e) => log!("cannot end actor {id:?}, out of scope: {e}"),
            }
        }
        for actor in fx.resolve_actors {
            let me = self.clone();
            let _ = std::thread::Builder::new()
                .name("rustray-actor-resolve".into())
                .spawn(move || me.reconnect_actor(actor));
        }
        drop(fx.drops);
    }

    // ------------------------------------------------------------------
    // Object table and reference counting
    // ------------------------------------------------------------------

    /// A new object owned by this process, with one local reference.
    pub(crate) fn new_owned(self: &Arc<Self>, st: &mut State, task: Option<TaskId>) -> RawRef {
        let id = ObjectId {
            owner: self.id,
            seq: self.next_seq(),
        };
        st.objects.insert(
            id,
            Entry {
                local: 1,
                owned: true,
                task,
                ..Entry::default()
            },
        );
        RawRef {
            id,
            cw: self.clone(),
        }
    }

    /// The reference-counted stand-in for the handles of `actor`, which
    /// this process just created: handles carry it, tasks and calls keep it
    /// alive while pending, and borrowers register for it as for any
    /// object, so the actor ends once no handle to it remains anywhere.
    pub(crate) fn new_actor_token(self: &Arc<Self>, actor: ActorId) -> RawRef {
        let mut st = self.lock();
        let r = self.new_owned(&mut st, None);
        if let Some(e) = st.objects.get_mut(&r.id) {
            e.value = Some(Payload::Inline(Vec::new()));
            e.actor = Some(actor);
        }
        r
    }

    fn inc_local(&self, id: ObjectId) {
        if let Some(e) = self.lock().objects.get_mut(&id) {
            e.local += 1;
        }
    }

    fn dec_local(self: &Arc<Self>, id: ObjectId) {
        let fx = {
            let mut st = self.lock();
            let mut fx = Effects::default();
            if let Some(e) = st.objects.get_mut(&id) {
                e.local = e.local.saturating_sub(1);
            }
            self.maybe_free(&mut st, id, &mut fx);
            fx
        };
        if !fx.is_empty() {
            self.apply(fx);
        }
    }

    /// Frees an object nobody references any more.
    pub(crate) fn maybe_free(&self, st: &mut State, id: ObjectId, fx: &mut Effects) {
        let Some(e) = st.objects.get(&id) else { return };
        if e.freed {
            // A freed object's block may have waited for what just let go
            // of it (a finished task's hold on its argument, say), though
            // refs to the object live on.
            self.release_freed(st, id, fx);
        }
        let Some(e) = st.objects.get(&id) else { return };
        if e.local > 0 || !e.borrowers.is_empty() {
            return;
        }
        if e.owned && e.value.is_none() {
            // Still being computed: freed when the result arrives.
            return;
        }
        let Some(e) = st.objects.remove(&id) else {
            return;
        };
        if let Some(t) = e.made_by {
            Self::release_lineage(st, t);
        }
        // A pulled copy is pinned under the original block's coordinates.
        if let (Some(_), Some(original)) = (&e.local_copy, e.replaced.as_ref().or(e.value.as_ref()))
        {
            fx.unpins.push(original.clone());
            if !e.owned {
                let node = self.session.node_index;
                fx.to_owner
                    .push((id.owner, Msg::RemoveLocation { id, node }));
            }
        }
        if e.held_pin {
            fx.unpin_blocks
                .extend(held_block(&e, self.session.node_index));
        }
        if e.owned {
            if let Some(Payload::Store { node, offset, .. }) = e.value {
                fx.free_offsets.push((node, offset));
            }
            if let Some(Payload::Store { node, offset, .. }) = e.replaced {
                fx.free_offsets.push((node, offset));
            }
            fx.actors_out_of_scope.extend(e.actor);
            if e.device {
                fx.device_frees.push(id);
            }
        } else {
            fx.to_owner.push((id.owner, Msg::RemoveBorrow { id }));
        }
        fx.drops.extend(e.contained);
    }

    /// Records an object's value and wakes whoever waits for it.
    pub(crate) fn set_value(
        self: &Arc<Self>,
        st: &mut State,
        id: ObjectId,
        payload: Payload,
        fx: &mut Effects,
    ) {
        let Some(e) = st.objects.get_mut(&id) else {
            // Nobody holds a ref any more: free it straight away.
            if let Payload::Store { node, offset, .. } = payload {
                if id.owner == self.id {
                    fx.free_offsets.push((node, offset));
                }
            }
            return;
        };
        if e.value.is_some() {
            // A second result for a value already set (a freed object whose
            // task finished after, a retry racing): its block is nobody's.
            if let (true, Payload::Store { node, offset, .. }) = (e.owned, payload) {
                fx.free_offsets.push((node, offset));
            }
            return;
        }
        e.task = None;
        for w in std::mem::take(&mut e.remote_waiters) {
            fx.to_owner.push((
                w,
                Msg::ObjectReady {
                    id,
                    payload: payload.clone(),
                    copies: e.copies.clone(),
                },
            ));
        }
        e.value = Some(payload);
        fx.notify = true;
        self.deps_ready(st, id, fx);
        self.maybe_free(st, id, fx);
    }

    fn remote_get(self: &Arc<Self>, from: WorkerId, conn: &Arc<Conn>, id: ObjectId) {
        let mut st = self.lock();
        match st.objects.get_mut(&id) {
            Some(e) => match &e.value {
                Some(p) => {
                    let msg = Msg::ObjectReady {
                        id,
                        payload: p.clone(),
                        copies: e.copies.clone(),
                    };
                    drop(st);
                    let _ = conn.send(&msg);
                }
                None => e.remote_waiters.push(from),
            },
            None => {
                drop(st);
                let err = Error::new(
                    ErrorKind::OwnerDied,
                    format!(
                        "object {id} was already freed by its owner (no reference was registered)"
                    ),
                );
                let _ = conn.send(&Msg::ObjectReady {
                    id,
                    payload: Payload::Inline(codec::encode_error(&err)),
                    copies: Vec::new(),
                });
            }
        }
    }

    fn object_ready_remote(self: &Arc<Self>, id: ObjectId, payload: Payload, copies: Vec<u16>) {
        let fx = {
            let mut st = self.lock();
            let mut fx = Effects::default();
            if let Some(e) = st.objects.get_mut(&id) {
                e.copies = copies;
            }
            self.set_value(&mut st, id, payload, &mut fx);
            fx
        };
        self.apply(fx);
    }

    /// A ref to `id` arrived in this process by deserialization.
    pub(crate) fn adopt_ref(self: &Arc<Self>, id: ObjectId) -> Result<RawRef> {
        {
            let mut st = self.lock();
            if let Some(e) = st.objects.get_mut(&id) {
                e.local += 1;
                return Ok(RawRef {
                    id,
                    cw: self.clone(),
                });
            }
            if id.owner == self.id {
                return Err(Error::new(
                    ErrorKind::OwnerDied,
                    format!("object {id} was freed before this reference to it arrived"),
                ));
            }
        }
        let conn = self.peer(id.owner).map_err(|_| {
            Error::new(
                ErrorKind::OwnerDied,
                format!("the owner of object {id} (worker {}) is gone", id.owner),
            )
        })?;
        let reply = self.call(
            &conn,
            |req| Msg::AddBorrow { req, id },
            "registering a borrowed reference",
        )?;
        if !matches!(reply, Msg::BorrowAdded { ok: true, .. }) {
            return Err(Error::new(
                ErrorKind::OwnerDied,
                format!("object {id} no longer exists at its owner"),
            ));
        }
        let mut st = self.lock();
        match st.objects.get_mut(&id) {
            Some(e) => {
                // Raced with another adoption: keep one borrow registered.
                e.local += 1;
                drop(st);
                self.send_to(id.owner, Msg::RemoveBorrow { id });
            }
            None => {
                st.objects.insert(
                    id,
                    Entry {
                        local: 1,
                        ..Entry::default()
                    },
                );
            }
        }
        Ok(RawRef {
            id,
            cw: self.clone(),
        })
    }

    /// The payload if ready; otherwise asks the owner (once) for it.
    pub(crate) fn poll_value(
        &self,
        st: &mut State,
        id: ObjectId,
        fx: &mut Effects,
    ) -> Result<Option<Payload>> {
        let Some(e) = st.objects.get_mut(&id) else {
            return Err(Error::new(
                ErrorKind::OwnerDied,
                format!("object {id} is not known to this process"),
            ));
        };
        if let Some(v) = &e.value {
            return Ok(Some(v.clone()));
        }
        if !e.owned && !e.requested {
            e.requested = true;
            fx.to_owner.push((id.owner, Msg::GetObject { id }));
        }
        Ok(None)
    }

    /// Waits until `id` has a value or the deadline passes.
    pub(crate) fn wait_value(
        self: &Arc<Self>,
        id: ObjectId,
        deadline: Option<Instant>,
    ) -> Result<Payload> {
        let mut fx = Effects::default();
        let mut st = self.lock();
        if let Some(v) = self.poll_value(&mut st, id, &mut fx)? {
            return Ok(v);
        }
        drop(st);
        let epoch = self.value_epoch.load(Ordering::Acquire);
        self.apply(std::mem::take(&mut fx));
        // Most round trips on a node finish within tens of microseconds:
        // spinning that long avoids a sleep and wake-up on each side and,
        // in a worker, the blocked/unblocked exchange with the raylet.
        if self.spin_for_value(epoch) {
            let mut st = self.lock();
            if let Some(v) = self.poll_value(&mut st, id, &mut fx)? {
                return Ok(v);
            }
        }
        let _blocked = self.block_guard();
        let mut st = self.lock();
        loop {
            if let Some(v) = self.poll_value(&mut st, id, &mut fx)? {
                return Ok(v);
            }
            if self.shutting_down.load(Ordering::Relaxed) {
                return Err(Error::unavailable("rustray was shut down"));
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "object {id} was not ready in time; it can still be fetched later"
                            ),
                        ));
                    }
                    d - now
                }
                None => Duration::from_millis(500),
            };
            st = self
                .cond
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Spins up to [`SPIN`] for a value to arrive after `epoch`.
    fn spin_for_value(&self, epoch: u64) -> bool {
        self.spin_until(|| self.value_epoch.load(Ordering::Acquire) != epoch)
    }

    /// Spins up to [`SPIN`] until `done()`; true if it became true. Only
    /// on machines with a core to spare for the spinner.
    fn spin_until(&self, done: impl Fn() -> bool) -> bool {
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cores = *CORES.get_or_init(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if cores < 2 {
            return false;
        }
        let start = Instant::now();
        loop {
            if done() {
                return true;
            }
            if start.elapsed() > SPIN {
                return false;
            }
            // Yield rather than spin: on a small node the thread that will
            // deliver the value may need this very core.
            std::thread::yield_now();
        }
    }

    /// The bytes of a payload: inline, or mapped from this node's arena.
    /// A block of another node's store must be pulled first
    /// ([`CoreWorker::wait_local`], [`CoreWorker::pull`]).
    pub(crate) fn payload_bytes<'a>(&'a self, p: &'a Payload) -> Result<&'a [u8]> {
        match p {
            Payload::Inline(b) => Ok(b),
            Payload::Store {
                node, offset, len, ..
            } if *node == self.session.node_index => self.arena.read(*offset, *len),
            Payload::Store { node, .. } => Err(Error::unavailable(format!(
                "internal: object on node {node} read without pulling it to this node"
            ))),
        }
    }

    /// True if the payload's bytes are in another node's store.
    pub(crate) fn is_remote(&self, p: &Payload) -> bool {
        matches!(p, Payload::Store { node, .. } if *node != self.session.node_index)
    }

    /// Copies a block of another node's store into this node's (the local
    /// raylet reuses a copy it already has); pinned until unpinned.
    ///
    /// A store without room for the copy is waited on (other copies and
    /// objects are freed as their readers finish) until `deadline`, or
    /// for [`PULL_ROOM_WAIT`] without one.
    pub(crate) fn pull(
        &self,
        p: &Payload,
        copies: &[u16],
        deadline: Option<Instant>,
    ) -> Result<Payload> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + PULL_ROOM_WAIT);
        let mut pause = Duration::from_millis(2);
        loop {
            match self.pull_once(p, copies) {
                Err(e) if e.kind() == ErrorKind::StoreFull && Instant::now() < deadline => {
                    std::thread::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    );
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    fn pull_once(&self, p: &Payload, copies: &[u16]) -> Result<Payload> {
        let Payload::Store {
            node,
            offset,
            len,
            tag,
        } = *p
        else {
            return Ok(p.clone());
        };
        let reply = self.raylet_call(
            |req| Msg::PullObject {
                req,
                node,
                offset,
                len,
                tag,
                copies: copies.to_vec(),
            },
            "pulling an object from another node",
        )?;
        match reply {
            Msg::ObjectPulled { result, .. } => Ok(Payload::Store {
                node: self.session.node_index,
                offset: result?,
                len,
                tag,
            }),
            _ => Err(Error::unavailable("unexpected reply from the raylet")),
        }
    }

    /// Unpins a copy made by [`CoreWorker::pull`] of the block `original`.
    pub(crate) fn unpin(&self, original: &Payload) {
        if let Payload::Store {
            node,
            offset,
            len,
            tag,
        } = *original
        {
            let _ = self.raylet.send(&Msg::UnpinObject {
                node,
                offset,
                len,
                tag,
            });
        }
    }

    /// [`CoreWorker::wait_value`], then, for an object in another node's
    /// store, a local copy kept (pinned) as long as this process holds the
    /// object.
    pub(crate) fn wait_local(
        self: &Arc<Self>,
        id: ObjectId,
        deadline: Option<Instant>,
    ) -> Result<Payload> {
        let p = self.wait_value(id, deadline)?;
        if !self.is_remote(&p) {
            return Ok(p);
        }
        let copies = match self.lock().objects.get(&id) {
            Some(e) => match &e.local_copy {
                Some(c) => return Ok(c.clone()),
                None => e.copies.clone(),
            },
            None => Vec::new(),
        };
        let local = match self.pull(&p, &copies, deadline) {
            Ok(local) => local,
            Err(e) if e.kind() == ErrorKind::ObjectLost => {
                // Recovered from its lineage (or by its owner), else the
                // reason it cannot be.
                let mut fx = Effects::default();
                let r = self.object_lost(&mut self.lock(), id, &p, &e, &mut fx);
                self.apply(fx);
                r?;
                return self.wait_local(id, deadline);
            }
            Err(e) => return Err(e),
        };
        let mut st = self.lock();
        match st.objects.get_mut(&id) {
            Some(e) if e.local_copy.is_none() => {
                e.local_copy = Some(local.clone());
                // Tell the directory: this node now holds a copy.
                let node = self.session.node_index;
                if e.owned {
                    if !e.copies.contains(&node) {
                        e.copies.push(node);
                    }
                } else {
                    drop(st);
                    self.send_to(id.owner, Msg::AddLocation { id, node });
                }
                Ok(local)
            }
            Some(e) => {
                // Another thread pulled it meanwhile: keep one pin.
                let c = e.local_copy.clone().unwrap_or(local);
                drop(st);
                self.unpin(&p);
                Ok(c)
            }
            None => {
                drop(st);
                self.unpin(&p);
                Err(Error::new(
                    ErrorKind::OwnerDied,
                    format!("object {id} was released while it was being read"),
                ))
            }
        }
    }

    /// Stores an encoded value: inline when small, else in the arena. With
    /// `keep_pin`, the block's write pin is kept (see `Entry::held_pin`).
    pub(crate) fn store_value(
        &self,
        enc: &codec::Encoded<'_>,
        owner: WorkerId,
        keep_pin: bool,
    ) -> Result<Payload> {
        let len = enc.len();
        if len <= INLINE_MAX {
            let mut v = vec![0u8; len];
            enc.write_to(&mut v);
            return Ok(Payload::Inline(v));
        }
        let tag = crate::ids::random_u64();
        let reply = self.raylet_call(
            |req| Msg::CreateObject {
                req,
                size: len as u64,
                owner,
                tag,
            },
            "allocating in the object store",
        )?;
        let offset = match reply {
            Msg::ObjectCreated { result, .. } => result?,
            _ => return Err(Error::unavailable("unexpected reply from the raylet")),
        };
        // SAFETY: the raylet just allocated this block to us; its location
        // is published (returned) only once it is written.
        let written = unsafe { self.arena.write(offset, len as u64) }.map(|b| enc.write_to(b));
        // Sealed: the raylet pinned it for this write (so it could not be
        // spilled half-written); from now on readers pin it themselves.
        if !keep_pin || written.is_err() {
            let _ = self.raylet.post(&Msg::UnpinObjects {
                offsets: vec![offset],
            });
        }
        written?;
        Ok(Payload::Store {
            node: self.session.node_index,
            tag,
            offset,
            len: len as u64,
        })
    }

    /// Marks this process blocked while the guard lives (workers only).
    pub(crate) fn block_guard(self: &Arc<Self>) -> executor::BlockGuard {
        executor::BlockGuard::new(self)
    }

    /// Returns idle leases. Sleeps on a condvar while this process holds no
    /// lease: with a thousand workers blocked in nested `get`s, periodic
    /// wake-ups in every process would starve the node.
    fn housekeeping(self: Arc<Self>) {
        while !self.shutting_down.load(Ordering::Relaxed) {
            let (fx, next_due) = {
                let mut st = self.lock();
                let (mut fx, due) = self.return_idle_leases(&mut st);
                let held_due = self.release_held_pins(&mut st, Some(HELD_PIN_FOR), &mut fx);
                (fx, due.into_iter().chain(held_due).min())
            };
            if !fx.is_empty() {
                self.apply(fx);
            }
            // Sleep until the next idle lease is due, or until woken because
            // a lease became idle; busy leases need no ticking.
            let wait = next_due
                .map(|d| {
                    d.saturating_duration_since(Instant::now())
                        .max(Duration::from_micros(200))
                })
                .unwrap_or(Duration::from_secs(1));
            let g = self.lease_wake.0.lock().unwrap_or_else(|p| p.into_inner());
            let mut g = self
                .lease_wake
                .1
                .wait_timeout_while(g, wait, |woken| !*woken)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            *g = false;
        }
    }

    /// Wakes the housekeeping thread: a lease was granted.
    pub(crate) fn wake_housekeeping(&self) {
        *self.lease_wake.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.lease_wake.1.notify_one();
    }

    /// Stops this core worker's threads and connections.
    pub(crate) fn stop(self: &Arc<Self>) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.cond.notify_all();
        self.wake_housekeeping();
        // Wake the accept loops so they see the flag.
        let _ = std::os::unix::net::UnixStream::connect(self.session.worker_socket(self.id));
        let _ = std::net::TcpStream::connect((self.session.ip, self.id.port()));
        let _ = std::fs::remove_file(self.session.worker_socket(self.id));
        for (_, c) in self
            .remote_raylets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            c.close();
        }
        for (_, c) in self.peers.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            c.close();
        }
        if let Some(c) = self.gcs.lock().unwrap_or_else(|p| p.into_inner()).take() {
            c.close();
        }
        self.raylet.close();
        let drops: Vec<Entry> = {
            let mut st = self.lock();
            st.sub = submitter::Submitter::default();
            st.objects.drain().map(|(_, e)| e).collect()
        };
        drop(drops);
    }
}

impl Effects {
    fn is_empty(&self) -> bool {
        self.sends.is_empty()
            && self.to_owner.is_empty()
            && self.drops.is_empty()
            && self.free_offsets.is_empty()
            && self.unpins.is_empty()
            && self.unpin_blocks.is_empty()
            && !self.notify
            && self.lease_requests.is_empty()
            && self.return_leases.is_empty()
            && self.kill_workers.is_empty()
            && self.resolve_actors.is_empty()
            && self.actors_out_of_scope.is_empty()
            && self.device_frees.is_empty()
    }
}

/// An untyped, counted reference to an object: the core of `ObjectRef<T>`.
pub struct RawRef {
    pub(crate) id: ObjectId,
    pub(crate) cw: Arc<CoreWorker>,
}

impl RawRef {
    /// Gives the reference its type.
    pub fn typed<T>(self) -> crate::ObjectRef<T> {
        crate::ObjectRef::from_raw(self)
    }
}

impl Clone for RawRef {
    fn clone(&self) -> RawRef {
        self.cw.inc_local(self.id);
        RawRef {
            id: self.id,
            cw: self.cw.clone(),
        }
    }
}

impl Drop for RawRef {
    fn drop(&mut self) {
        if !self.cw.shutting_down.load(Ordering::Relaxed) {
            self.cw.dec_local(self.id);
        }
    }
}

impl std::fmt::Debug for RawRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef({})", self.id)
    }
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Vec<RawRef>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a serialization) collecting the refs serialized inside it, so
/// the container can keep them alive.
pub(crate) fn capturing<R>(f: impl FnOnce() -> R) -> (R, Vec<RawRef>) {
    let prev = CAPTURE.with(|c| c.borrow_mut().replace(Vec::new()));
    let r = f();
    let got = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), prev));
    (r, got.unwrap_or_default())
}

/// Called by `ObjectRef`'s `Serialize`.
pub(crate) fn note_serialized(r: &RawRef) {
    CAPTURE.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push(r.clone());
        }
    });
}

/// The block of this node's store whose write pin an entry holds.
pub(crate) fn held_block(e: &Entry, node_index: u16) -> Option<u64> {
    [e.value.as_ref(), e.replaced.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|p| match p {
            Payload::Store { node, offset, .. } if *node == node_index => Some(*offset),
            _ => None,
        })
}
