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
//! Where each part lives: [`ownership`] (object table, reference
//! counting), [`memory_store`] (waiting for, reading and storing values),
//! [`submitter`] and [`lineage`] (submission, retries, reconstruction),
//! [`executor`] (running tasks), [`free`] (`rustray::free` and blocks
//! still being read), [`peers`] (connections, the node table cache,
//! bounded calls), [`events`] (what arrives on them) and [`effects`]
//! (performing the [`Effects`] of a transition). This file holds the
//! state they share, starting a core worker, housekeeping and `RawRef`.
//!
//! All mutable state sits behind one mutex. Work that must not happen under
//! it (socket writes that could block, dropping refs whose `Drop` locks
//! again) is collected in an [`Effects`] and done after unlocking.

mod effects;
mod events;
mod exec_queue;
pub(crate) mod executor;
pub(crate) mod free;
pub(crate) mod function_manager;
pub(crate) mod lineage;
mod memory_store;
mod ownership;
mod peers;
pub(crate) mod submitter;
pub(crate) use effects::{Effects, Push};

use crate::error::{Error, Result};
use crate::ids::{ActorId, ObjectId, TaskId, WorkerId};
use crate::object_store::Arena;
use crate::protocol::ToRaylet;
use crate::session::Session;
use crate::transport::{self, Conn, ConnId, Listener, Msg, NodeInfo, Payload};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Values up to this size travel inline in messages instead of the store
/// (Ray's `max_direct_call_object_size`).
pub(crate) const INLINE_MAX: usize = 100 * 1024;
/// The most bytes of values one task carries inline, its arguments by
/// value in its push and its results in its reply (Ray's
/// `task_rpc_inlined_bytes_limit`): past it, the rest go through the
/// store however small, so that a task with thousands of small arguments
/// or results still fits one message (and its owner's heap is not where a
/// gigabyte of them lands).
pub(crate) const TASK_INLINE_MAX: usize = 10 << 20;
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

/// The tables a task passes through several times (objects, tasks,
/// leases, by id): hashed with FxHash rather than SipHash. Their keys are
/// ids this process or a peer holding the cluster secret made, not
/// outside input.
pub(crate) type IdMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Sleeps of this process's threads waiting for values (`get`, `wait`),
/// and passes of its housekeeping thread, since it started: for tests that
/// check a chain of tasks does not wake them once per link.
pub(crate) static VALUE_SLEEPS: AtomicU64 = AtomicU64::new(0);
pub(crate) static HOUSEKEEPING_PASSES: AtomicU64 = AtomicU64::new(0);

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
    /// Owner side: lineage records (of tasks whose results are in the
    /// table) that take this object as a by-ref argument. While any does,
    /// the entry outlives its last reference, value freed
    /// (`lineage_only`), so those results can be remade through it (Ray's
    /// lineage pinning).
    pub(crate) lineage: u32,
    /// Kept for the lineage alone: no reference left, value freed; made
    /// again (from `made_by`) only to remake a result that needs it.
    pub(crate) lineage_only: bool,
    /// Owner side, a `put`'s block: this process still holds the pin its
    /// raylet gave the block for writing, so a read right after the put
    /// (the common case) needs no pin round trip. Given back at the end of
    /// the first read, at the next put, or when the object goes, so the
    /// block becomes spillable.
    pub(crate) held_pin: bool,
    /// The descriptor of a GPU-resident object this process owns: when it
    /// goes, so does the device memory (see `crate::cuda`).
    pub(crate) device: bool,
    /// Threads of this process asleep until the value arrives (`get`,
    /// `wait`): only a value someone sleeps on wakes the sleepers (a chain
    /// of tasks sets a value per link; its one `get` waits for the last).
    pub(crate) sleepers: u32,
    /// Those of `sleepers` that are `wait`s reading the arrival log
    /// (`State::arrivals`): only their objects' arrivals are logged.
    pub(crate) followers: u32,
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

/// Everything behind the core worker's lock.
#[derive(Default)]
pub(crate) struct State {
    /// Boxed: an entry is some 300 bytes, and a table of them moved each
    /// entry in and out of it and all of them at each resize (the churn of
    /// a burst of tasks resized it every burst, on fresh pages).
    pub(crate) objects: IdMap<ObjectId, Box<Entry>>,
    pub(crate) sub: submitter::Submitter,
    /// Objects whose entry holds its block's write pin (`Entry::held_pin`),
    /// with when they were put.
    pub(crate) held: Vec<(ObjectId, Instant)>,
    /// Values that `wait`s reading this log wait for (`Entry::followers`),
    /// as they arrive: each `wait` reads what arrived since its last look
    /// instead of polling every ref it still waits for (a `wait` on a
    /// thousand refs wakes hundreds of times). Numbered from
    /// `arrivals_base`; emptied when none of the `log_users` is left. At
    /// most one entry per ref of a `wait` in progress.
    pub(crate) arrivals: Vec<ObjectId>,
    pub(crate) arrivals_base: u64,
    pub(crate) log_users: u32,
}

impl State {
    /// Object `id` has a value now (a result, an error in its place):
    /// wakes the threads asleep on it, if any, and logs it for `wait`s.
    pub(crate) fn arrived(&mut self, id: ObjectId, fx: &mut Effects) {
        fx.arrived = true;
        if let Some(e) = self.objects.get(&id).filter(|e| e.sleepers > 0) {
            fx.notify = true;
            if e.followers > 0 {
                self.arrivals.push(id);
            }
        }
    }

    /// A `wait` starts following the arrival log: where it stands in it.
    pub(crate) fn follow_arrivals(&mut self) -> u64 {
        self.log_users += 1;
        self.arrivals_base + self.arrivals.len() as u64
    }

    /// What arrived since `cursor`, which moves past it.
    pub(crate) fn arrivals_since(&self, cursor: &mut u64) -> Vec<ObjectId> {
        let from = cursor.saturating_sub(self.arrivals_base) as usize;
        let new = self.arrivals.get(from..).unwrap_or_default().to_vec();
        *cursor = self.arrivals_base + self.arrivals.len() as u64;
        new
    }

    /// A `wait` stops following the log; the last one to empties it.
    pub(crate) fn unfollow_arrivals(&mut self) {
        self.log_users = self.log_users.saturating_sub(1);
        if self.log_users == 0 {
            self.arrivals_base += self.arrivals.len() as u64;
            self.arrivals.clear();
        }
    }
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
    /// Pending requests: the connection they went out on (its id, so
    /// a closing connection fails them at once) and where the reply goes.
    replies: Mutex<IdMap<u64, (ConnId, mpsc::Sender<Msg>)>>,
    peers: Mutex<HashMap<WorkerId, Arc<Conn>>>,
    /// The connection for GCS requests (to this node's raylet).
    gcs: Mutex<Option<Arc<Conn>>>,
    /// Connections to other nodes' raylets (leases there, frees there).
    remote_raylets: Mutex<HashMap<u16, Arc<Conn>>>,
    /// The node table, fetched from the GCS when a node is first needed.
    nodes: Mutex<HashMap<u16, NodeInfo>>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) exec: executor::ExecShared,
    lease_wake: (Mutex<bool>, Condvar),
    /// When the housekeeping thread will wake next on its own, in
    /// microseconds since `born` (0: it is awake, or it will not on its
    /// own soon): a lease going idle before then needs no wake-up call.
    /// Written and read under the state lock.
    housekeeping_at: AtomicU64,
    /// Leases gone idle so far (counted under the state lock): while they
    /// keep going idle, the housekeeping thread ticks every
    /// [`LEASE_IDLE`](submitter::LEASE_IDLE) instead of being woken for each
    /// (a chain of tasks idles its lease between every two links).
    idle_events: AtomicU64,
    born: Instant,
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
    /// `rank`: a driver's rank in an in-situ step.
    pub(crate) fn start(
        session: Session,
        is_driver: bool,
        rank: Option<u32>,
    ) -> Result<Arc<CoreWorker>> {
        let arena = Arena::open(&session.arena_path())?;
        let raylet_dialed = transport::dial(&session.raylet_endpoint(), &session.secret)?;
        let raylet = raylet_dialed.conn.clone();
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
            replies: Mutex::default(),
            peers: Mutex::new(HashMap::new()),
            gcs: Mutex::new(None),
            remote_raylets: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            exec: executor::ExecShared::default(),
            lease_wake: (Mutex::new(false), Condvar::new()),
            housekeeping_at: AtomicU64::new(0),
            idle_events: AtomicU64::new(0),
            born: Instant::now(),
        });
        // The listener is bound before registering, so a lease granted to
        // this worker can be connected to at once.
        cw.raylet.send(&ToRaylet::Register {
            worker: id,
            pid: std::process::id(),
            is_driver,
            rank,
        })?;
        let (me, me2) = (cw.clone(), cw.clone());
        raylet_dialed.serve(
            "rustray-raylet",
            move |m| me.handle_raylet(m),
            move || me2.raylet_lost(),
        )?;
        for listener in [unix, tcp] {
            let me = cw.clone();
            std::thread::Builder::new()
                .name("rustray-accept".into())
                .spawn(move || transport::vital("rustray-accept", || me.accept_loop(listener)))
                .map_err(|e| Error::io("spawning the accept thread", e))?;
        }
        let me = cw.clone();
        std::thread::Builder::new()
            .name("rustray-leases".into())
            .spawn(move || transport::vital("rustray-leases", || me.housekeeping()))
            .map_err(|e| Error::io("spawning the housekeeping thread", e))?;
        Ok(cw)
    }

    /// Counts a thread about to sleep until `id` has a value (`on`), or
    /// no longer (see `Entry::sleepers`): only values someone sleeps on
    /// wake the sleepers.
    /// `follow`: for a `wait` that reads the arrival log (see
    /// `State::arrivals`), which then logs this object's arrival.
    pub(crate) fn watch(st: &mut State, id: ObjectId, on: bool, follow: bool) {
        if let Some(e) = st.objects.get_mut(&id) {
            let step = |n: u32| if on { n + 1 } else { n.saturating_sub(1) };
            e.sleepers = step(e.sleepers);
            if follow {
                e.followers = step(e.followers);
            }
        }
    }

    /// Sleeps on `cond` (under the state lock) until woken or `wait`
    /// passes; what it waits for is [`CoreWorker::watch`]ed.
    /// Also says whether it woke because `wait` passed.
    pub(crate) fn sleep_for_values<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        wait: Duration,
    ) -> (MutexGuard<'a, State>, bool) {
        let (st, timeout) = self
            .cond
            .wait_timeout(st, wait)
            .unwrap_or_else(|p| p.into_inner());
        VALUE_SLEEPS.fetch_add(1, Ordering::Relaxed);
        (st, timeout.timed_out())
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

    /// Marks this process blocked while the guard lives (workers only).
    pub(crate) fn block_guard(self: &Arc<Self>) -> executor::BlockGuard {
        executor::BlockGuard::new(self)
    }

    /// Returns idle leases. Sleeps on a condvar while this process holds no
    /// lease: with a thousand workers blocked in nested `get`s, periodic
    /// wake-ups in every process would starve the node.
    fn housekeeping(self: Arc<Self>) {
        let mut seen_idle = 0;
        while !self.shutting_down.load(Ordering::Relaxed) {
            HOUSEKEEPING_PASSES.fetch_add(1, Ordering::Relaxed);
            let (fx, next_due) = {
                let mut st = self.lock();
                let mut fx = Effects::default();
                let now = Instant::now();
                let due = st.sub.return_idle_leases(now, &mut fx);
                let held_due = self.release_held_pins(&mut st, Some(HELD_PIN_FOR), &mut fx);
                let mut next = due.into_iter().chain(held_due).min();
                // Leases went idle since the last pass, and are busy again:
                // tick once more a lease period on rather than sleep until
                // woken, so that the next lease going idle (due a full
                // period after it does) needs no wake-up call. One quiet
                // period ends the ticking.
                let idled = self.idle_events.load(Ordering::Relaxed);
                if next.is_none() && idled != seen_idle {
                    next = Some(now + submitter::LEASE_IDLE);
                }
                seen_idle = idled;
                // Under the lock, so a lease going idle after this sees it.
                let at = next.map_or(0, |d| self.micros_since_born(d).max(1));
                self.housekeeping_at.store(at, Ordering::Relaxed);
                (fx, next)
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

    fn micros_since_born(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.born).as_micros()).unwrap_or(u64::MAX)
    }

    /// A lease went idle (under the state lock), due back at `due`: wakes
    /// the housekeeping thread unless it wakes by then anyway (after every
    /// task of a run of sync calls, a wake-up would cost a thread switch
    /// and the state lock on a path that waits on both).
    pub(crate) fn housekeeping_due(&self, due: Instant) {
        self.idle_events.fetch_add(1, Ordering::Relaxed);
        let at = self.housekeeping_at.load(Ordering::Relaxed);
        if at == 0 || at > self.micros_since_born(due) {
            self.wake_housekeeping();
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
        // Through the state lock: a waiter that saw the flag clear under
        // it is asleep on `cond` by the time the lock is free.
        drop(self.lock());
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
        let drops: Vec<Box<Entry>> = {
            let mut st = self.lock();
            st.sub = submitter::Submitter::default();
            st.objects.drain().map(|(_, e)| e).collect()
        };
        drop(drops);
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
