//! Messages between the processes of a cluster and the framing that carries
//! them over Unix-domain sockets on a node.
//!
//! Every connection carries length-prefixed frames (`u32` little-endian length,
//! then the message serialized by [`codec`](crate::codec)). One writer lock per
//! connection makes each frame a single `write` syscall; one reader thread per
//! connection hands decoded messages to a handler. Blocking sockets and a
//! thread per connection keep the latency path to two syscalls and one thread
//! wake-up per hop, which is what the sub-100 µs task round trip needs; the
//! number of connections per process is small (its raylet, the GCS, the
//! workers it leases, the owners it borrows from).
//!
//! The first message on a connection to a core worker's listener is
//! [`Msg::Hello`], naming the connecting process, so that the listener can
//! attribute borrows and detect that process's death by end-of-stream.

use crate::codec;
use crate::error::{Error, Result};
use crate::ids::{ActorId, LeaseId, ObjectId, TaskId, WorkerId};
use crate::scheduler::ResourceSet;
use serde::{Deserialize, Serialize};
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

/// Frames larger than this are a protocol error (a peer sending garbage).
const MAX_FRAME: usize = 1 << 30;

/// Where an object's bytes are: inline (small objects, and stored errors) or
/// in the node's arena.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Payload {
    Inline(Vec<u8>),
    Store { offset: u64, len: u64 },
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
}

/// What the GCS keeps to (re)create an actor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ActorSpec {
    pub(crate) id: ActorId,
    pub(crate) class: String,
    pub(crate) args: Vec<Payload>,
    pub(crate) name: Option<String>,
    pub(crate) max_restarts: u32,
    pub(crate) shape: ResourceSet,
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
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ActorLookup {
    Id(ActorId),
    Name(String),
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
    },
    RequestLease {
        req: u64,
        shape: ResourceSet,
    },
    ReturnLease {
        lease: LeaseId,
        kill: bool,
    },
    /// The worker's running task blocked in `get`/`wait` (lend CPUs back).
    Blocked,
    Unblocked,
    CreateObject {
        req: u64,
        size: u64,
        owner: WorkerId,
    },
    FreeObjects {
        offsets: Vec<u64>,
    },
    KillWorker {
        worker: WorkerId,
    },
    /// The driver asks for an orderly shutdown of the node.
    Shutdown,

    // ---- from the raylet ----
    LeaseGranted {
        req: u64,
        lease: LeaseId,
        worker: WorkerId,
    },
    LeaseFailed {
        req: u64,
        error: Error,
    },
    ObjectCreated {
        req: u64,
        result: std::result::Result<u64, Error>,
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
    /// The results of a task, one payload per return (a stored error blob
    /// when it failed).
    TaskDone {
        task: TaskId,
        returns: Vec<Payload>,
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

    // ---- to and from the GCS ----
    RegisterActor {
        req: u64,
        spec: ActorSpec,
    },
    ActorRegistered {
        req: u64,
        result: std::result::Result<(), Error>,
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
    KillActor {
        req: u64,
        id: ActorId,
    },
    ActorKilled {
        req: u64,
    },

    // ---- GCS to the worker hosting an actor ----
    CreateActor {
        spec: ActorSpec,
    },
    ActorCreated {
        result: std::result::Result<(), Error>,
    },
}

/// The sending half of a connection.
#[derive(Debug)]
pub(crate) struct Conn {
    inner: Mutex<(UnixStream, Vec<u8>)>,
    shutdown: UnixStream,
}

impl Conn {
    pub(crate) fn new(stream: &UnixStream) -> Result<Conn> {
        let w = stream
            .try_clone()
            .map_err(|e| Error::io("cloning socket", e))?;
        let s = stream
            .try_clone()
            .map_err(|e| Error::io("cloning socket", e))?;
        Ok(Conn {
            inner: Mutex::new((w, Vec::with_capacity(256))),
            shutdown: s,
        })
    }

    /// Connects to a listener at `path`.
    pub(crate) fn connect(path: &Path) -> Result<UnixStream> {
        UnixStream::connect(path)
            .map_err(|e| Error::unavailable(format!("cannot connect to {}: {e}", path.display())))
    }

    /// Sends one message as one frame.
    pub(crate) fn send(&self, msg: &Msg) -> Result<()> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (stream, buf) = &mut *guard;
        buf.clear();
        buf.extend_from_slice(&[0u8; 4]);
        codec::encode_append(msg, buf)?;
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_le_bytes());
        let r = stream.write_all(buf);
        if buf.capacity() > 1 << 20 {
            *buf = Vec::with_capacity(256);
        }
        r.map_err(|e| Error::unavailable(format!("peer connection lost: {e}")))
    }

    /// Closes both directions; the peer's reader sees end-of-stream.
    pub(crate) fn close(&self) {
        let _ = self.shutdown.shutdown(std::net::Shutdown::Both);
    }
}

/// Reads frames until end-of-stream or a protocol error, calling `handle`
/// for each message.
pub(crate) fn read_loop(stream: UnixStream, mut handle: impl FnMut(Msg)) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut len = [0u8; 4];
    let mut body = Vec::new();
    loop {
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {n} bytes exceeds the limit"),
            ));
        }
        body.resize(n, 0);
        r.read_exact(&mut body)?;
        let msg: Msg = codec::decode(&body, "message")
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        handle(msg);
        if body.capacity() > 1 << 20 {
            body = Vec::new();
        }
    }
}

/// Runs [`read_loop`] on a named thread, then `on_close`.
pub(crate) fn spawn_reader(
    name: String,
    stream: UnixStream,
    handle: impl FnMut(Msg) + Send + 'static,
    on_close: impl FnOnce() + Send + 'static,
) -> Result<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let _ = read_loop(stream, handle);
            on_close();
        })
        .map(|_| ())
        .map_err(|e| Error::io("spawning a connection thread", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_eof_ends_the_reader() {
        let (a, b) = UnixStream::pair().unwrap();
        let conn = Conn::new(&a).unwrap();
        conn.send(&Msg::Blocked).unwrap();
        conn.send(&Msg::FreeObjects {
            offsets: vec![1, 2, 3],
        })
        .unwrap();
        conn.close();
        drop(a);
        let mut got = Vec::new();
        read_loop(b, |m| got.push(format!("{m:?}"))).unwrap();
        assert_eq!(got, vec!["Blocked", "FreeObjects { offsets: [1, 2, 3] }"]);
    }

    #[test]
    fn oversized_or_garbage_frames_are_errors() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_le_bytes()).unwrap();
        drop(a);
        assert!(read_loop(b, |_| {}).is_err());
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&3u32.to_le_bytes()).unwrap();
        a.write_all(&[0xff, 0xff, 0xff]).unwrap();
        drop(a);
        assert!(read_loop(b, |_| {}).is_err());
    }
}
