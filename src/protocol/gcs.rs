//! The GCS's service: what raylets (joining, reporting), core workers
//! (actors, names, the node table) and `rust-ray-launch` ask of the GCS,
//! and its answers.

use super::*;

/// Requests the GCS serves.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToGcs {
    /// A raylet joins the cluster.
    RegisterNode {
        req: u64,
        info: NodeInfo,
    },
    /// A raylet's periodic report: what its node has now, or `None` (a
    /// heartbeat) when that has not changed since its last report; with
    /// the version of the cluster view it holds, answered with the entries
    /// changed since (the whole view for version 0), and its spill demand:
    /// the requests waiting there that could run elsewhere (the spill
    /// candidates it is sent grow with it, within bounds).
    ReportResources {
        node: u16,
        report: Option<ResourceReport>,
        view_version: u64,
        spill_demand: u32,
    },
    GetNodes {
        req: u64,
    },
    RegisterActor {
        req: u64,
        spec: ActorSpec,
    },
    /// Look an actor up; with `wait`, answer only once it is alive or dead.
    LookupActor {
        req: u64,
        by: ActorLookup,
        wait: bool,
    },
    /// Ray's `ray.util.list_named_actors`: in `namespace`, or in all.
    ListNamedActors {
        req: u64,
        namespace: Option<String>,
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
    /// From an actor's creator: every handle to it is gone (no reply).
    ActorOutOfScope {
        id: ActorId,
    },
    /// From a raylet: a driver or worker process of its node is gone, so
    /// the actors it owns end with it (no reply).
    OwnerGone {
        worker: WorkerId,
    },
    /// `rust-ray-launch stop`: end the cluster's driver and the cluster.
    StopCluster,
}

/// The GCS's answers to [`ToGcs`] requests.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromGcs {
    NodeRegistered {
        req: u64,
        result: std::result::Result<(), Error>,
    },
    /// The view changed since the asker's view version, and the version
    /// the view is at now: nodes it has not seen yet (joined since, or all
    /// of them for version 0) in full; nodes lost since, their last load
    /// marked dead; and, when they changed since, the spill candidates with
    /// their loads (at most a few dozen nodes, whatever the cluster's size:
    /// they replace those held, and every other node counts as having
    /// nothing free; see `scheduler::candidates`).
    ClusterView {
        version: u64,
        joined: Vec<NodeInfo>,
        changed: Vec<NodeLoad>,
        candidates: Option<Vec<NodeLoad>>,
    },
    Nodes {
        req: u64,
        nodes: Vec<NodeInfo>,
    },
    /// Answers `RegisterActor` once the constructor has run: the actor
    /// (another one, already there, for `get_if_exists`).
    ActorRegistered {
        req: u64,
        result: std::result::Result<ActorInfo, Error>,
    },
    ActorLookedUp {
        req: u64,
        result: std::result::Result<ActorInfo, Error>,
    },
    NamedActors {
        req: u64,
        actors: Vec<NamedActor>,
    },
    ActorKilled {
        req: u64,
    },
    /// Pushed to every live node the moment the GCS declares `node` lost
    /// (one message per node per death): what the next view delta says
    /// too, a report period sooner.
    NodeLost {
        node: u16,
    },
}
