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
//! The store's IO shell (spilling to disk, restoring) is in [`store`];
//! the worker processes (start, registration, reaping) in [`worker_pool`];
//! the GCS side (registration, reports, the view, forwarded requests) in
//! [`gcs_link`];
//! pulls from other nodes (their bounds: bytes, threads, time) in [`pull`];
//! start-up (the data plane, the GPUs, the state, the threads) in [`startup`].
//!
//! Across nodes: the raylet registers with the GCS at start-up (an
//! unreachable GCS fails the start with an error naming it), reports its free
//! resources within `REPORT_EVERY` (100 ms) of a change (a heartbeat every
//! second otherwise) and gets the cluster resource view back,
//! which the lease manager uses to spill requests back to other nodes. When
//! the GCS connection closes the cluster is over and the raylet shuts down.
//! It listens on a Unix socket for its node's processes and on TCP for other
//! nodes: lease requests spilled here, frees of objects stored here, and
//! pulls. A pull copies a block of another node's store into this one over
//! a dedicated TCP connection, reading straight into the arena; copies are
//! shared by every reader on the node and freed when the last unpins.

mod gcs_link;
pub(crate) use gcs_link::HEARTBEAT_EVERY;
mod gcs_proxy;
mod pull;
mod startup;
mod store;
mod worker_pool;
pub(crate) use startup::main;

use crate::error::Error;
use crate::ids::WorkerId;
use crate::object_store::{Arena, SpillDir, Store};
use crate::protocol::{FromRaylet, ToGcs, ToRaylet, Transfer};
use crate::scheduler::{Action, ClientId, LeaseManager};
use crate::session::{log, Session};
use crate::transport::{self, Conn, Listener, Msg, NodeInfo, Stream};
use pull::{PullBudget, PullJob, WorkPool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use worker_pool::{kill_target, process_running, MAX_START_FAILURES, MAX_UNCLAIMED};

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

/// In-situ ranks one node records, at most (more would be a peer's lie:
/// no node runs this many ranks).
const MAX_RANKS: usize = 4096;

struct Client {
    conn: Arc<Conn>,
    worker: Option<WorkerId>,
    is_driver: bool,
    /// The connecting process, as the kernel tells it (Unix clients).
    pid: Option<u32>,
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
    /// The spill candidates of the last view that had them, with their
    /// free resources: the only nodes counted as having any.
    candidates: HashMap<u16, crate::scheduler::ResourceSet>,
    /// The spill demand last reported (the GCS sent candidates for it).
    demand_reported: u32,
    /// Drivers that ever registered here.
    drivers_seen: u32,
    /// An embedded cluster's driver: the first client of the process that
    /// started this raylet to register as a driver (the kernel says who
    /// connected). Its leaving ends the cluster; no other client's does.
    own_driver: Option<ClientId>,
    /// In-situ ranks whose drivers registered here, sorted (at most
    /// [`MAX_RANKS`]).
    ranks: Vec<u32>,
    /// Set when shutting down: no more workers are started.
    stopping: bool,
    /// The spawner is starting a worker process, not recorded yet: a
    /// shutdown waits for it to be recorded, or killed and gone, before it
    /// removes the store the worker opens first.
    spawning: bool,
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
    /// The pull threads and the transfers queued for them.
    pull_pool: WorkPool<PullJob>,
    /// The process that started this raylet (read at start, before it can
    /// be reparented): an embedded cluster's driver.
    starter: u32,
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
    /// Core workers' requests forwarded to the GCS, waiting for answers.
    gcs_proxy: gcs_proxy::GcsProxy,
    /// The connection they go on: apart from `gcs`, so that the GCS
    /// serves them on another thread than this node's reports (a slow
    /// request never delays a heartbeat).
    gcs_forward: Mutex<Option<Arc<Conn>>>,
    /// Signalled (with `state`'s lock) when a spill or restore ends.
    room: std::sync::Condvar,
    /// Where this node's spilled objects go.
    spill: SpillDir,
    /// Worker starts asked for, one message each, done by the spawner
    /// thread without the state lock (a slow exec stalls no client).
    spawns: std::sync::mpsc::Sender<()>,
    /// Wakes the report thread before its period ends: the spill demand
    /// outgrew the candidates this node was sent.
    report_wake: std::sync::mpsc::SyncSender<()>,
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

impl Raylet {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
                pid: stream.peer_pid(),
            },
        );
        let peer = stream.peer();
        transport::guarded("raylet-client", &peer, || {
            transport::read_loop(stream, |m| self.handle(id, m))
        });
        self.client_gone(id);
    }

    fn execute(&self, st: &mut State, actions: Vec<Action>) {
        use crate::scheduler::candidates::{outgrown, window};
        if outgrown(st.leases.spill_demand(), window(st.demand_reported)) {
            // Ask for more candidates now rather than at the next report.
            self.ask_for_view();
        }
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
                        let _ = c.conn.post(&FromRaylet::LeaseGranted {
                            req,
                            lease,
                            worker,
                            gpus,
                        });
                    }
                }
                Action::Reject { client, req, error } => {
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.post(&FromRaylet::LeaseFailed { req, error });
                    }
                }
                Action::StartWorker => self.start_worker(st),
                Action::Spillback { client, req, node } => {
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.post(&FromRaylet::LeaseSpillback { req, node });
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
                        let _ = c.post(&FromRaylet::Retire);
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
        let m = match m {
            Msg::ToRaylet(m) => m,
            Msg::Transfer(read) => return self.serve_read(client, read),
            other => return log!("raylet ignores {} from a client", other.service()),
        };
        let mut st = self.lock();
        match m {
            ToRaylet::Register {
                worker,
                pid,
                is_driver,
                rank,
            } => {
                let sender = st.clients.get(&client).and_then(|c| c.pid);
                // One registration per connection, under an id no other
                // connection holds, for the process that connected (the
                // kernel says which): what a registration claims is what
                // this client may free and be killed as.
                let taken = st
                    .clients
                    .iter()
                    .any(|(id, c)| *id != client && c.worker == Some(worker));
                let again = st.clients.get(&client).is_some_and(|c| c.worker.is_some());
                let lie = !is_driver && sender.is_some_and(|p| p != pid);
                if taken || again || lie {
                    log!("a process (pid {sender:?}) registered as worker {worker} (pid {pid}), which {}; ignored",
                        if taken { "another connection holds" } else if again { "follows its own registration" } else { "is not its pid" });
                    return;
                }
                if let Some(c) = st.clients.get_mut(&client) {
                    c.worker = Some(worker);
                    c.is_driver = is_driver;
                }
                if is_driver {
                    st.drivers_seen += 1;
                    if st.own_driver.is_none() && sender == Some(self.starter) {
                        st.own_driver = Some(client);
                    }
                    if let Some(r) = rank {
                        if let Err(at) = st.ranks.binary_search(&r) {
                            if st.ranks.len() < MAX_RANKS {
                                st.ranks.insert(at, r);
                            }
                        }
                    }
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
            ToRaylet::RequestLease { req, shape, spill } => {
                if st.start_failures >= MAX_START_FAILURES {
                    let error = crate::error::Error::unavailable(
                        "worker processes exit before registering: the program must call rustray::init() at the start of main, before anything else",
                    );
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.post(&FromRaylet::LeaseFailed { req, error });
                    }
                    return;
                }
                let a = st.leases.request(client, req, shape, spill);
                self.execute(&mut st, a);
            }
            ToRaylet::ReturnLease { lease, kill } => {
                let a = st.leases.return_lease(lease, kill);
                self.execute(&mut st, a);
            }
            ToRaylet::Blocked => {
                if let Some(w) = st.clients.get(&client).and_then(|c| c.worker) {
                    let a = st.leases.blocked(w);
                    self.execute(&mut st, a);
                }
            }
            ToRaylet::Unblocked => {
                if let Some(w) = st.clients.get(&client).and_then(|c| c.worker) {
                    st.leases.unblocked(w);
                }
            }
            ToRaylet::CreateObject {
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
                    let _ = c.conn.post(&FromRaylet::ObjectCreated { req, result });
                }
            }
            ToRaylet::GetStoreStats { req } => {
                let (spilled_objects, spilled_bytes) = st.store.spilled();
                let reply = FromRaylet::StoreStats {
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
            ToRaylet::FreeObjects { offsets } => {
                // A process of this node frees only blocks it owns (by its
                // registration): a bug or a lie cannot free another's
                // object under its readers. Other nodes' owners free theirs
                // over TCP, where no registration says who they are.
                let local = st.clients.get(&client).map(|c| (c.pid.is_some(), c.worker));
                let mut refused = 0usize;
                for o in offsets {
                    if let Some((true, who)) = local {
                        if st.store.owner_of(o).is_some_and(|owner| Some(owner) != who) {
                            refused += 1;
                            continue;
                        }
                    }
                    st.store.free(o);
                }
                if refused > 0 {
                    log!("a local process (worker {:?}) asked to free {refused} blocks it does not own; refused", local.and_then(|l| l.1));
                }
                drop(self.delete_dead_files(st));
            }
            ToRaylet::KillWorker { worker } => {
                self.execute(&mut st, vec![Action::KillWorker(worker)])
            }
            ToRaylet::RetireRefused => {
                if let Some(w) = st.clients.get(&client).and_then(|c| c.worker) {
                    let a = st.leases.worker_kept(w);
                    self.execute(&mut st, a);
                }
            }
            ToRaylet::PullObject {
                req,
                node,
                offset,
                len,
                tag,
                copies,
            } => self.pull(st, client, req, (node, offset, len, tag), copies),
            ToRaylet::UnpinObject {
                node,
                offset,
                len,
                tag,
            } => unpin_copy(&mut st, (node, offset, len, tag)),
            ToRaylet::PinObjects { req, blocks } => {
                // Spilled blocks are read back first.
                let (mut st, result) = self.pin_blocks(st, &blocks);
                if result.is_ok() {
                    let held = st.pins.entry(client).or_default();
                    held.extend(blocks.iter().map(|(o, _)| *o));
                }
                if let Some(c) = st.clients.get(&client) {
                    let _ = c.conn.post(&FromRaylet::ObjectsPinned { req, result });
                }
            }
            ToRaylet::UnpinObjects { offsets } => {
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
            ToRaylet::Shutdown => {
                drop(st);
                self.shutdown("the driver asked for shutdown");
            }
            ToRaylet::Gcs(m) => {
                drop(st);
                self.forward_to_gcs(client, m);
            }
        }
    }

    /// Serves another node's read of an object's bytes (a data connection
    /// of a pull, [`Transfer`]): from the primary block or this node's
    /// copy, pinned while it is sent.
    fn serve_read(self: &Arc<Self>, client: ClientId, read: Transfer) {
        let Transfer::ReadObject {
            node,
            offset,
            len,
            tag,
            start,
            count,
        } = read
        else {
            return;
        };
        let mut st = self.lock();
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
                    conn.send_with_bytes(&Transfer::ObjectBytes { result: Ok(count) }, bytes)
                }
                Err(e) => conn.send(&Transfer::ObjectBytes { result: Err(e) }),
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

    fn client_gone(&self, client: ClientId) {
        self.gcs_proxy.client_gone(client);
        let mut st = self.lock();
        let Some(c) = st.clients.remove(&client) else {
            return;
        };
        // An embedded cluster ends with its own driver (see `own_driver`:
        // another connection registering as a driver is not it); a launched
        // one serves drivers that come and go (every rank of a simulation).
        if self.session.embedded && st.own_driver == Some(client) {
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
            let _ = gcs.send(&ToGcs::OwnerGone { worker: w });
        }
    }

    /// Kills every worker, removes the node's files, and exits.
    fn shutdown(&self, why: &str) -> ! {
        {
            let mut st = self.lock();
            st.stopping = true;
            log!(
                "raylet shutting down: {why}; store held {} live objects, {} of {} bytes",
                st.store.live_objects(),
                st.store.used(),
                st.store.capacity()
            );
        }
        // A worker the spawner is starting now is recorded, or killed and
        // gone, before the store goes: else it could start after the
        // store was removed, and say so on the user's terminal.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let pids: Vec<u32> = loop {
            let st = self.lock();
            if !st.spawning || std::time::Instant::now() > deadline {
                break st.pids.keys().copied().collect();
            }
            drop(st);
            std::thread::sleep(std::time::Duration::from_millis(1));
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
