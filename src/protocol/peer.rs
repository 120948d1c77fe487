//! The core worker's service: what core workers send each other (task
//! pushes and results, borrows, object readiness and locations, device
//! object staging), and what the GCS sends the worker it chose to host an
//! actor. A connection to a core worker opens with [`PeerMsg::Hello`].

use super::*;

/// Messages between core workers (and from the GCS to an actor's host).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerMsg {
    Hello {
        from: WorkerId,
    },
    /// Owner to leased worker, or caller to actor.
    PushTask(TaskSpec),
    /// Stops run `attempt` of `task` (see `TaskSpec::attempt`).
    CancelTask {
        task: TaskId,
        attempt: u32,
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
    /// A worker that blocked hands back tasks it had not started yet, so
    /// they can run elsewhere instead of waiting behind it.
    TasksReturned {
        tasks: Vec<TaskId>,
    },
    WorkerUnblocked,
    /// A borrower's `cancel` of an object, to its owner (who submitted the
    /// task that produces it).
    CancelObject {
        id: ObjectId,
    },
    /// A borrower's `free` of an object, to its owner.
    FreeObject {
        id: ObjectId,
    },
    /// Borrower to owner: every copy of the object (the store block
    /// tagged `tag`) is gone; recover it (reconstruction) or say it is lost.
    ObjectLost {
        id: ObjectId,
        tag: u64,
    },
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
    CreateActor {
        spec: ActorSpec,
        /// The GPUs its lease holds (for its whole life).
        gpus: Vec<u32>,
    },
    ActorCreated {
        result: std::result::Result<(), Error>,
    },
}
