//! The one error type of the public API.
//!
//! As in rayon and tokio, the representation is private: callers match on
//! [`ErrorKind`] and read the message, so new detail can be added without a
//! breaking change. Errors cross process boundaries (a task's panic becomes the
//! driver's `get` error), so the private representation is serializable.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, for matching. The message says the details.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The task (or actor method) panicked or returned an error; also set on
    /// tasks whose dependency failed.
    TaskFailed,
    /// The worker process running the task died and no retries were left.
    WorkerDied,
    /// The actor's process died and it has no restarts left, or it was
    /// killed; also a call that was running when the actor's process died
    /// and may not be retried (Ray's `max_task_retries`).
    ActorDied,
    /// The actor is restarting and the call may not be retried, so it was
    /// not sent (Ray's `ActorUnavailableError`); later calls reach the
    /// restarted actor.
    ActorUnavailable,
    /// A `get` or `wait` ran past its timeout. The object may still arrive.
    Timeout,
    /// The task was cancelled with [`cancel`](crate::cancel).
    Cancelled,
    /// `get` asked for a different type than the object holds.
    TypeMismatch,
    /// The object is larger than the whole object store.
    ObjectTooLarge,
    /// The object store has no room for the object right now.
    StoreFull,
    /// No actor has that name.
    ActorNotFound,
    /// No node can ever satisfy the requested resources.
    Infeasible,
    /// A hard node affinity cannot be met: the node does not exist, was
    /// lost, or can never fit the request (Ray's `TaskUnschedulableError`
    /// and `ActorUnschedulableError`).
    Unschedulable,
    /// The process that owns the object died, so the object is lost.
    OwnerDied,
    /// The object was freed with [`free`](crate::free) (Ray's
    /// `ObjectFreedError`).
    ObjectFreed,
    /// The node running the task was lost (its raylet died or stopped
    /// answering) and the task had no retries left (Ray's `NodeDiedError`);
    /// the message names the node.
    NodeDied,
    /// This driver's own raylet died: the node's tasks and objects are gone
    /// (Ray's `LocalRayletDiedError`).
    LocalRayletDied,
    /// Every copy of the object was on a node that was lost, or a transfer
    /// between nodes failed.
    ObjectLost,
    /// A lost object could not be recomputed from its lineage: its task
    /// ran out of retries, an argument it needs is gone, or it failed
    /// (Ray's `ObjectReconstructionFailedError`).
    ReconstructionFailed,
    /// The cluster is not running (no `init`, or after `shutdown`), or a
    /// cluster process could not be reached.
    ClusterUnavailable,
    /// An argument was invalid (the message names it).
    InvalidArgument,
    /// An operating-system error (sockets, shared memory, processes).
    Io,
    /// A GPU call failed: no CUDA driver on the node, no such device, or
    /// the driver refused (the message names the call).
    Gpu,
}

/// An error from a rustray call: a kind plus a message naming the problem.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    repr: Box<Repr>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Repr {
    kind: ErrorKind,
    message: String,
    /// The operating-system error behind an `Io` error, for
    /// [`std::error::Error::source`] (in this process only: it does not
    /// travel, and errors compare by kind and message).
    #[serde(skip)]
    source: Option<std::sync::Arc<std::io::Error>>,
}

impl PartialEq for Repr {
    fn eq(&self, other: &Repr) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for Repr {}

/// `Result` with rustray's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            repr: Box::new(Repr {
                kind,
                message: message.into(),
                source: None,
            }),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.repr.kind
    }

    /// The human-readable description (also what `Display` prints).
    pub fn message(&self) -> &str {
        &self.repr.message
    }

    pub(crate) fn io(context: &str, e: std::io::Error) -> Error {
        let mut err = Error::new(ErrorKind::Io, format!("{context}: {e}"));
        err.repr.source = Some(std::sync::Arc::new(e));
        err
    }

    pub(crate) fn unavailable(what: impl Into<String>) -> Error {
        Error::new(ErrorKind::ClusterUnavailable, what)
    }

    pub(crate) fn invalid(what: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, what)
    }

    /// The error of task `function`, cancelled (Ray's `TaskCancelledError`).
    pub(crate) fn cancelled(function: &str) -> Error {
        Error::new(
            ErrorKind::Cancelled,
            format!("task `{function}` was cancelled"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.repr.kind {
            ErrorKind::TaskFailed => "task failed",
            ErrorKind::WorkerDied => "worker died",
            ErrorKind::ActorDied => "actor died",
            ErrorKind::ActorUnavailable => "actor unavailable",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::TypeMismatch => "type mismatch",
            ErrorKind::ObjectTooLarge => "object too large",
            ErrorKind::StoreFull => "object store full",
            ErrorKind::ActorNotFound => "actor not found",
            ErrorKind::Infeasible => "infeasible resource request",
            ErrorKind::Unschedulable => "unschedulable",
            ErrorKind::OwnerDied => "owner died",
            ErrorKind::ObjectFreed => "object freed",
            ErrorKind::NodeDied => "node died",
            ErrorKind::LocalRayletDied => "local raylet died",
            ErrorKind::ObjectLost => "object lost",
            ErrorKind::ReconstructionFailed => "reconstruction failed",
            ErrorKind::ClusterUnavailable => "cluster unavailable",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Io => "I/O error",
            ErrorKind::Gpu => "GPU error",
        };
        write!(f, "{label}: {}", self.repr.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}, {:?})", self.repr.kind, self.repr.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.repr
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_keeps_its_cause_as_source() {
        use std::error::Error as _;
        let e = Error::io(
            "opening x",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        let src = e.source().expect("a source");
        let io = src.downcast_ref::<std::io::Error>().expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(e.message().starts_with("opening x: "), "{e}");
        // It does not travel: a decoded error has none, and still compares
        // equal by kind and message.
        let back: Error =
            crate::codec::decode(&crate::codec::encode(&e).unwrap(), "an error").unwrap();
        assert!(back.source().is_none());
        assert_eq!(back, e);
        assert!(Error::invalid("x").source().is_none());
    }

    #[test]
    fn display_names_kind_and_message() {
        let e = Error::new(ErrorKind::Timeout, "get of 0123 after 10ms");
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.to_string(), "timed out: get of 0123 after 10ms");
    }
}
