//! The wire protocol: every message the processes of a cluster exchange,
//! and the types they carry. Type definitions only: the code that uses
//! them (framing in `transport`, each component's handlers) lives with the
//! component, so that this file *is* the schema. The protocol fingerprint
//! processes compare when they meet (`transport::PROTOCOL`) is computed
//! from this file's tokens, comments and layout ignored, and from the
//! files that define the nested wire types (`ids.rs`, `resources.rs`,
//! `error.rs`): editing a comment here changes nothing, changing a message
//! makes builds from the old sources refuse to join with a clear error.
//!
//! Who sends what to whom is in each [`Msg`] variant's comment; requests
//! carry a `req` number their reply echoes.

use crate::error::Error;
use crate::ids::{ActorId, LeaseId, ObjectId, TaskId, WorkerId};
use crate::resources::ResourceSet;
use serde::{Deserialize, Serialize};

/// What a node publishes so that others can read its arena (by libfabric
/// one-sided reads; see `fabric`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FabricAddr {
    /// The provider, as libfabric names it (`tcp;ofi_rxm`, `shm`, `verbs;ofi_rxm`).
    pub(crate) provider: String,
    /// The endpoint's name (`fi_getname`), raw.
    pub(crate) name: Vec<u8>,
    /// Remote address of arena offset 0: its virtual address under
    /// `FI_MR_VIRT_ADDR`, else 0.
    pub(crate) base: u64,
    /// The arena registration's key.
    pub(crate) key: u64,
    /// Bytes registered: reads beyond are refused before reaching the
    /// provider (some check bounds and keys, shared memory does not).
    pub(crate) len: u64,
}

/// Where an object's bytes are: inline (small objects, and stored errors) or
/// in the node's arena.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Payload {
    Inline(Vec<u8>),
    /// A block of node `node`'s arena; another node reads it by pulling a
    /// copy into its own store. `tag` is random per stored object, so a copy
    /// of a freed block can never be mistaken for the block's next object.
    Store {
        node: u16,
        offset: u64,
        len: u64,
        tag: u64,
    },
}

/// What a raylet reports about its node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ResourceReport {
    pub(crate) available: ResourceSet,
    /// Object store bytes in use and in total.
    pub(crate) store_used: u64,
    pub(crate) store_capacity: u64,
    /// Drivers connected to the node now, and ever.
    pub(crate) drivers: u32,
    pub(crate) drivers_seen: u32,
    /// The in-situ ranks (Slurm or MPI) whose drivers ever registered here,
    /// sorted: how rank 0 names the ranks that never joined.
    pub(crate) ranks: Vec<u32>,
}

/// A node as the GCS's node table records it; the table, with each node's
/// last reported free resources, is also the cluster resource view.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    pub(crate) index: u16,
    pub(crate) name: String,
    /// The address the node advertises (never loopback on a real cluster).
    pub(crate) ip: std::net::IpAddr,
    pub(crate) raylet_port: u16,
    pub(crate) total: ResourceSet,
    pub(crate) available: ResourceSet,
    pub(crate) alive: bool,
    /// Object store bytes in use and in total, at the last report.
    pub(crate) store_used: u64,
    pub(crate) store_capacity: u64,
    /// Drivers connected to the node now, and ever.
    pub(crate) drivers: u32,
    pub(crate) drivers_seen: u32,
    /// The in-situ ranks whose drivers ever registered here, sorted.
    pub(crate) ranks: Vec<u32>,
    /// How other nodes read this node's store: its fabric endpoint and
    /// arena registration, or None for the built-in TCP path.
    pub(crate) fabric: Option<FabricAddr>,
}

/// What changes about a node while it runs (its load, and whether it is
/// alive): a view delta carries this alone for a node the receiver knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeLoad {
    pub(crate) index: u16,
    pub(crate) alive: bool,
    pub(crate) load: ResourceReport,
}

/// A task (or actor method call) as pushed to the worker that runs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TaskSpec {
    pub(crate) id: TaskId,
    /// Registered function name, or the method name of an actor call.
    pub(crate) function: String,
    /// Resolved arguments: values only, dependencies already fetched.
    pub(crate) args: Vec<Payload>,
    pub(crate) returns: Vec<ObjectId>,
    pub(crate) actor: Option<ActorId>,
    /// An actor call sent while the caller had no other call in flight to
    /// that actor (a synchronous caller): the actor may run it inline.
    pub(crate) alone: bool,
    /// Ray's `max_calls`: the worker exits once it has run this many tasks
    /// of this function (0: no limit).
    pub(crate) max_calls: u32,
    /// What the task holds while it runs (empty for actor calls: the
    /// actor's own resources apply), for the runtime context.
    pub(crate) resources: crate::resources::ResourceSet,
    /// Other nodes holding a copy of a store argument, by argument index:
    /// the worker reads from one of them when the primary's node is gone.
    pub(crate) arg_copies: Vec<(u32, Vec<u16>)>,
    /// The GPUs of the lease it runs on, by the node's device ids (set at
    /// push, as Ray's `resource_mapping`; empty for actor calls).
    pub(crate) gpus: Vec<u32>,
}

/// What the GCS keeps to (re)create an actor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ActorSpec {
    pub(crate) id: ActorId,
    pub(crate) class: String,
    pub(crate) args: Vec<Payload>,
    pub(crate) name: Option<String>,
    pub(crate) max_restarts: u32,
    /// What the actor holds while it lives.
    pub(crate) shape: ResourceSet,
    /// What a node must have free to be chosen for it: `shape`, or, for
    /// an actor that asked for no resources at all, 1 CPU (Ray's default
    /// actor: 1 CPU to be placed, 0 to run).
    pub(crate) placement: ResourceSet,
    pub(crate) strategy: crate::resources::SchedulingStrategy,
    /// The process that created it: the actor fate-shares with it unless
    /// `detached` (Ray's owner-based actor lifetime).
    pub(crate) owner: WorkerId,
    /// Lives until killed or the cluster ends, whoever created it.
    pub(crate) detached: bool,
    /// The namespace its name lives in (`""`: the cluster's default).
    pub(crate) namespace: String,
    /// Ray's `get_if_exists`: when the name is taken by a live actor of the
    /// same class, registration answers with that actor instead.
    pub(crate) get_if_exists: bool,
    /// How often each call is retried when the actor's process dies
    /// (Ray's `max_task_retries`; `RETRY_FOREVER` for without end).
    pub(crate) max_task_retries: u32,
    /// Calls run at once (Ray's threaded actors); 1: one at a time.
    pub(crate) max_concurrency: u32,
}

/// An actor's state as the GCS reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ActorState {
    PendingCreation,
    Alive,
    Restarting,
    Dead,
}

/// The GCS's answer about one actor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ActorInfo {
    pub(crate) id: ActorId,
    pub(crate) class: String,
    pub(crate) state: ActorState,
    /// The worker running the actor, when alive.
    pub(crate) worker: Option<WorkerId>,
    /// Incremented on every restart, so callers can tell a new incarnation.
    pub(crate) incarnation: u32,
    /// Why the actor is dead (when it is).
    pub(crate) death: Option<Error>,
    /// Its calls' retry budget (from its spec), for handles found by name.
    pub(crate) max_task_retries: u32,
}

/// A named actor, as `list_named_actors` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NamedActor {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ActorLookup {
    Id(ActorId),
    Name(NamedActor),
}

/// Every message of the protocol. Requests that expect an answer carry a
/// `req` number that the answer echoes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Msg {
    // ---- to the raylet ----
    /// A core worker (driver or worker) introduces itself to its raylet.
    Register {
        worker: WorkerId,
        pid: u32,
        is_driver: bool,
        /// A driver's rank in an in-situ step (Slurm or MPI).
        rank: Option<u32>,
    },
    /// `spill`: whether the raylet may redirect the request to another
    /// node (never once a request has been spilled, so it never bounces).
    RequestLease {
        req: u64,
        shape: ResourceSet,
        spill: crate::resources::Spill,
    },
    ReturnLease {
        lease: LeaseId,
        kill: bool,
    },
    /// The worker's running task blocked in `get`/`wait` (lend CPUs back).
    Blocked,
    Unblocked,
    /// `tag`: the object's random tag, which pins name (see
    /// `object_store`'s notes).
    CreateObject {
        req: u64,
        size: u64,
        owner: WorkerId,
        tag: u64,
    },
    /// Pin blocks of this node's store (offset, tag) that the sender reads
    /// in place but does not own, all or none (answered with
    /// `ObjectsPinned`); held until `UnpinObjects` or the sender's end.
    PinObjects {
        req: u64,
        blocks: Vec<(u64, u64)>,
    },
    UnpinObjects {
        offsets: Vec<u64>,
    },
    FreeObjects {
        offsets: Vec<u64>,
    },
    /// Raylet to an idle worker: exit unless you own what others use.
    Retire,
    /// Worker to raylet: not exiting (it owns objects or actors in use).
    RetireRefused,
    KillWorker {
        worker: WorkerId,
    },
    /// Make a local copy of a block of another node's store (answered with
    /// `ObjectPulled`); the copy stays pinned until `UnpinObject`.
    PullObject {
        req: u64,
        node: u16,
        offset: u64,
        len: u64,
        tag: u64,
        /// Other nodes holding copies (from the owner's object directory),
        /// tried when the primary's node cannot serve it.
        copies: Vec<u16>,
    },
    UnpinObject {
        node: u16,
        offset: u64,
        len: u64,
        tag: u64,
    },
    /// Raylet to raylet, on a data connection: send bytes `start ..
    /// start + count` of the object stored at `node/offset/len/tag`, from
    /// the primary block if this is `node`, else from this node's copy.
    /// Answered by `ObjectBytes` followed by the raw bytes.
    ReadObject {
        node: u16,
        offset: u64,
        len: u64,
        tag: u64,
        start: u64,
        count: u64,
    },
    /// The driver asks for an orderly shutdown of the node.
    Shutdown,

    // ---- from the raylet ----
    LeaseGranted {
        req: u64,
        lease: LeaseId,
        worker: WorkerId,
        /// The GPUs the lease holds, by the node's device ids.
        gpus: Vec<u32>,
    },
    LeaseFailed {
        req: u64,
        error: Error,
    },
    /// Ask node `node`'s raylet instead (Ray's spillback).
    LeaseSpillback {
        req: u64,
        node: u16,
    },
    ObjectPulled {
        req: u64,
        result: std::result::Result<u64, Error>,
    },
    /// `len` raw bytes follow this frame on the stream (or `error`).
    ObjectBytes {
        result: std::result::Result<u64, Error>,
    },
    ObjectCreated {
        req: u64,
        result: std::result::Result<u64, Error>,
    },
    ObjectsPinned {
        req: u64,
        result: std::result::Result<(), Error>,
    },
    /// Raylet to its node's core workers: the GCS declared node `node`
    /// dead (its raylet left, or stopped reporting while its connections
    /// stayed open).
    NodeDied {
        node: u16,
    },
    /// How full the node's store is (`rustray::store_stats`).
    GetStoreStats {
        req: u64,
    },
    StoreStats {
        req: u64,
        used: u64,
        capacity: u64,
        objects: u64,
        spilled_objects: u64,
        spilled_bytes: u64,
    },

    // ---- between core workers ----
    Hello {
        from: WorkerId,
    },
    /// Owner to leased worker, or caller to actor.
    PushTask(TaskSpec),
    CancelTask {
        task: TaskId,
    },
    /// A borrower's `cancel` of an object, to its owner (who submitted the
    /// task that produces it).
    CancelObject {
        id: ObjectId,
    },
    /// A borrower's `free` of an object, to its owner.
    FreeObject {
        id: ObjectId,
    },
    /// The results of a task, one payload per return (a stored error blob
    /// when it failed).
    TaskDone {
        task: TaskId,
        returns: Vec<Payload>,
        /// The function returned `Err` (an application error).
        app_error: bool,
        /// The worker exits now (`max_calls` reached): tasks still in
        /// flight to it never started; the lease ends with it.
        exiting: bool,
        /// It could not start: these arguments (by index) were lost with
        /// every copy. The owner recovers them and runs it again.
        lost_args: Vec<u32>,
    },
    /// Borrower to owner: every copy of the object (the store block
    /// tagged `tag`) is gone; recover it (reconstruction) or say it is lost.
    ObjectLost {
        id: ObjectId,
        tag: u64,
    },
    /// A worker that blocked hands back tasks it had not started yet, so
    /// they can run elsewhere instead of waiting behind it.
    TasksReturned {
        tasks: Vec<TaskId>,
    },
    WorkerUnblocked,
    /// Borrower to owner: send the value when it is ready.
    GetObject {
        id: ObjectId,
    },
    ObjectReady {
        id: ObjectId,
        payload: Payload,
        /// Nodes holding copies besides the primary's (the directory).
        copies: Vec<u16>,
    },
    /// Borrower to owner: a copy of the object now lives on `node` / no
    /// longer does (the owner's object directory).
    AddLocation {
        id: ObjectId,
        node: u16,
    },
    RemoveLocation {
        id: ObjectId,
        node: u16,
    },
    /// Borrower to owner: count me as holding a reference (acknowledged, so
    /// the object cannot be freed in between).
    AddBorrow {
        req: u64,
        id: ObjectId,
    },
    BorrowAdded {
        req: u64,
        ok: bool,
    },
    RemoveBorrow {
        id: ObjectId,
    },
    /// Reader to the owner of a GPU-resident object it cannot open in
    /// place (another node, or no such device): make a host copy of it
    /// (once; it lives as long as the object) and say which object holds
    /// it.
    StageDeviceObject {
        req: u64,
        id: ObjectId,
    },
    DeviceObjectStaged {
        req: u64,
        result: std::result::Result<ObjectId, Error>,
    },

    // ---- to and from the GCS ----
    /// A raylet joins the cluster.
    RegisterNode {
        req: u64,
        info: NodeInfo,
    },
    NodeRegistered {
        req: u64,
        result: std::result::Result<(), Error>,
    },
    /// A raylet's periodic report: what its node has now, or `None` (a
    /// heartbeat) when that has not changed since its last report; with
    /// the version of the cluster view it holds, answered with the entries
    /// changed since (the whole view for version 0).
    ReportResources {
        node: u16,
        report: Option<ResourceReport>,
        view_version: u64,
    },
    /// `rust-ray-launch stop`: end the cluster's driver and the cluster.
    StopCluster,
    /// The view changed since the asker's view version, and the version
    /// the view is at now: nodes it has not seen yet (joined since, or all
    /// of them for version 0) in full, the others' load alone.
    ClusterView {
        version: u64,
        joined: Vec<NodeInfo>,
        changed: Vec<NodeLoad>,
    },
    GetNodes {
        req: u64,
    },
    Nodes {
        req: u64,
        nodes: Vec<NodeInfo>,
    },
    RegisterActor {
        req: u64,
        spec: ActorSpec,
    },
    /// Answers `RegisterActor` once the constructor has run: the actor
    /// (another one, already there, for `get_if_exists`).
    ActorRegistered {
        req: u64,
        result: std::result::Result<ActorInfo, Error>,
    },
    /// Ray's `ray.util.list_named_actors`: in `namespace`, or in all.
    ListNamedActors {
        req: u64,
        namespace: Option<String>,
    },
    NamedActors {
        req: u64,
        actors: Vec<NamedActor>,
    },
    /// Look an actor up; with `wait`, answer only once it is alive or dead.
    LookupActor {
        req: u64,
        by: ActorLookup,
        wait: bool,
    },
    ActorLookedUp {
        req: u64,
        result: std::result::Result<ActorInfo, Error>,
    },
    /// `kill`: with `no_restart`, dead for good; without, its process is
    /// ended and it restarts if `max_restarts` allows (Ray's
    /// `ray.kill(actor, no_restart=False)`).
    KillActor {
        req: u64,
        id: ActorId,
        no_restart: bool,
    },
    /// From the actor's own process (`exit_actor`): it ends for good; the
    /// process exits once this is answered (with `ActorKilled`).
    ExitActor {
        req: u64,
        id: ActorId,
    },
    ActorKilled {
        req: u64,
    },
    /// From an actor's creator: every handle to it is gone (no reply).
    ActorOutOfScope {
        id: ActorId,
    },
    /// From a raylet: a driver or worker process of its node is gone, so
    /// the actors it owns end with it (no reply).
    OwnerGone {
        worker: WorkerId,
    },

    // ---- GCS to the worker hosting an actor ----
    CreateActor {
        spec: ActorSpec,
        /// The GPUs its lease holds (for its whole life).
        gpus: Vec<u32>,
    },
    ActorCreated {
        result: std::result::Result<(), Error>,
    },
}
