//! The wire protocol: every message the processes of a cluster exchange,
//! one module per service, and the types they carry. Type definitions
//! only: the code that uses them (framing in `transport`, each
//! component's handlers) lives with the component, so that these files
//! *are* the schema. The protocol fingerprint processes compare when they
//! meet (`transport::PROTOCOL`) is computed from these files' tokens,
//! comments and layout ignored, and from the files that define the nested
//! wire types (`ids.rs`, `resources.rs`, `error.rs`): editing a comment
//! changes nothing, changing a message makes builds from the old sources
//! refuse to join with a clear error.
//!
//! Each service has its own enums, so a message's sender and receiver
//! show in its type:
//!
//! | enum | from | to |
//! |---|---|---|
//! | [`ToRaylet`] / [`FromRaylet`] | a node's core workers, the GCS | their raylet |
//! | [`ToGcs`] / [`FromGcs`] | raylets, core workers, the launcher | the GCS |
//! | [`PeerMsg`] | core workers, the GCS (actor creation) | a core worker |
//! | [`Transfer`] | a raylet | another node's raylet |
//!
//! On the wire every frame is one [`Msg`], the envelope naming the service,
//! so that a message sent to the wrong service is refused as such rather
//! than misread. Requests that expect an answer carry a `req` number that
//! the answer echoes.

mod fingerprint;
mod gcs;
mod peer;
mod raylet;
mod transfer;

pub(crate) use fingerprint::PROTOCOL;

pub(crate) use gcs::{FromGcs, ToGcs};
pub(crate) use peer::PeerMsg;
pub(crate) use raylet::{FromRaylet, ToRaylet};
pub(crate) use transfer::Transfer;

// The code that goes with the types (sending, conversions), apart so that
// the files the fingerprint reads stay types only.
mod envelope;
pub(crate) use envelope::{Message, PushRef};
// How byte fields are encoded (as a `Vec<u8>` is, read faster).
pub(crate) mod bytes;

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
    #[serde(with = "bytes")]
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
    Inline(#[serde(with = "bytes")] Vec<u8>),
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
    /// Registered function name, or the method name of an actor call
    /// (borrowed where it was submitted: the name is the code's).
    pub(crate) function: std::borrow::Cow<'static, str>,
    /// Resolved arguments: values only, dependencies already fetched.
    pub(crate) args: Vec<Payload>,
    pub(crate) returns: Vec<ObjectId>,
    pub(crate) actor: Option<ActorId>,
    /// Sent while the caller had nothing else in flight to the worker (a
    /// synchronous caller, a chain of tasks): an actor may run the call
    /// inline, and a worker out of work waits awake for the next push.
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
    /// Which run of the task this is: 0 for the first, one more for each
    /// retry and each reconstruction. A cancel names the run it stops, so
    /// that one meant for a run that ended stops no later run.
    pub(crate) attempt: u32,
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
    /// Calls it runs at once (from its spec): a caller keeps fewer in
    /// flight to an actor that runs one at a time.
    pub(crate) max_concurrency: u32,
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

/// One frame on the wire: a message of one service (see the table above).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Msg {
    ToRaylet(ToRaylet),
    FromRaylet(FromRaylet),
    ToGcs(ToGcs),
    FromGcs(FromGcs),
    Peer(PeerMsg),
    Transfer(Transfer),
}

/// [`Msg`] by reference, encoded exactly as [`Msg`] is (serde writes a
/// reference as what it points to, variants in the same order), so a
/// message is sent without moving it into an envelope.
#[derive(Serialize)]
pub(crate) enum Wire<'a> {
    ToRaylet(&'a ToRaylet),
    FromRaylet(&'a FromRaylet),
    ToGcs(&'a ToGcs),
    FromGcs(&'a FromGcs),
    Peer(&'a PeerMsg),
    Transfer(&'a Transfer),
}
