//! The raylet's service: what a node's core workers ask of their raylet
//! (leases, store blocks, pulls from other nodes, pins) and what it sends
//! back (grants, spillbacks, answers, retirement, node deaths). The GCS
//! uses the same requests when it leases a worker for an actor. A core
//! worker's requests for the GCS go through its raylet too ([`ToRaylet::Gcs`]),
//! so the GCS holds connections per node, not per process.

use super::*;

/// Requests a raylet serves, from its node's core workers (and from the
/// GCS, leasing workers for actors).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToRaylet {
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
    /// How full the node's store is (`rustray::store_stats`).
    GetStoreStats {
        req: u64,
    },
    /// The driver asks for an orderly shutdown of the node.
    Shutdown,
    /// A request for the GCS, forwarded on the raylet's own GCS connection
    /// (the requests a core worker makes: the node table, actors, names);
    /// its answer comes back as [`FromRaylet::Gcs`], with the sender's
    /// `req`.
    Gcs(ToGcs),
}

/// A raylet's answers to [`ToRaylet`] requests, and what it tells its
/// core workers unasked.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromRaylet {
    /// The GCS's answer to a forwarded [`ToRaylet::Gcs`] request.
    Gcs(FromGcs),
    /// A [`ToRaylet::Gcs`] request numbered `req` that gets no answer from
    /// the GCS, and why: not a core worker's to make, too many waiting,
    /// the GCS unreachable, or its connection lost before it answered.
    GcsRefused {
        req: u64,
        error: Error,
    },
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
    ObjectCreated {
        req: u64,
        result: std::result::Result<u64, Error>,
    },
    ObjectsPinned {
        req: u64,
        result: std::result::Result<(), Error>,
    },
    ObjectPulled {
        req: u64,
        result: std::result::Result<u64, Error>,
    },
    StoreStats {
        req: u64,
        used: u64,
        capacity: u64,
        objects: u64,
        spilled_objects: u64,
        spilled_bytes: u64,
    },
    /// Raylet to an idle worker: exit unless you own what others use.
    Retire,
    /// Raylet to its node's core workers: the GCS declared node `node`
    /// dead (its raylet left, or stopped reporting while its connections
    /// stayed open).
    NodeDied {
        node: u16,
    },
}
