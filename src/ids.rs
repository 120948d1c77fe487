//! Identifiers of workers, objects, tasks, actors and clusters.
//!
//! As in Ray, an object id embeds its owner: the worker that created the
//! object (by `put` or by submitting the task that returns it). Anyone holding
//! the id can therefore find the owner to ask for the value or to report a
//! borrow, without a directory lookup.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A fresh random 64-bit value from the kernel.
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into the valid buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // getrandom cannot fail for 8 bytes on Linux >= 3.17; mix time and pid
        // rather than panic if it somehow does.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(buf)
}

/// One process of the cluster that runs rustray's core worker: the driver or
/// a worker.
///
/// The id is also the process's address, as Ray embeds the owner's address
/// in every ObjectRef: `node (16 bits) | TCP port (16) | random (32)`. With
/// the node table (node index to IP) anyone holding an object id can reach
/// its owner, on this node by the Unix socket named after the id, from
/// another node by TCP.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct WorkerId(pub(crate) u64);

impl WorkerId {
    pub(crate) fn new(node: u16, port: u16) -> WorkerId {
        WorkerId((node as u64) << 48 | (port as u64) << 32 | (random_u64() & 0xffff_ffff) | 1)
    }

    /// The node the process runs on.
    pub(crate) fn node(self) -> u16 {
        (self.0 >> 48) as u16
    }

    /// The TCP port the process listens on.
    pub(crate) fn port(self) -> u16 {
        (self.0 >> 32) as u16
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An object's id (Ray's `ObjectID`): its owner (the process that put it
/// or submitted the task returning it) plus a sequence number unique
/// within the owner. [`ObjectRef::id`](crate::ObjectRef::id) gives it;
/// ids compare, hash and print (`owner/seq`).
///
/// ```no_run
/// # fn main() -> rustray::Result<()> {
/// rustray::init()?;
/// let a = rustray::put(1u32)?;
/// assert_eq!(a.id(), a.clone().id());
/// assert_ne!(a.id(), rustray::put(1u32)?.id());
/// println!("{}", a.id());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId {
    pub(crate) owner: WorkerId,
    pub(crate) seq: u64,
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.seq)
    }
}
impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A task: its submitter plus a sequence number (shared with object ids).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct TaskId {
    pub(crate) owner: WorkerId,
    pub(crate) seq: u64,
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {self}")
    }
}

/// As the public API prints it (`rustray::get_runtime_context`).
impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.seq)
    }
}

/// An actor, stable across restarts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct ActorId(pub(crate) u64);

impl ActorId {
    pub(crate) fn random() -> ActorId {
        ActorId(random_u64())
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "actor {self}")
    }
}

/// As the public API prints it (`ActorHandle::id`, the runtime context).
impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A lease granted by a raylet: `node (16 bits) | sequence (48)`, so the
/// holder knows which raylet to give it back to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub(crate) struct LeaseId(pub(crate) u64);

impl LeaseId {
    pub(crate) fn new(node: u16, seq: u64) -> LeaseId {
        LeaseId((node as u64) << 48 | (seq & 0xffff_ffff_ffff))
    }

    /// The node whose raylet granted it.
    pub(crate) fn node(self) -> u16 {
        (self.0 >> 48) as u16
    }
}
