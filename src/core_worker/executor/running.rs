//! Running one task's code in a worker: its arguments read in place from
//! the spec or the store (pulled from another node's store first, pinned
//! for the task's duration), the function or actor method invoked with
//! panics caught and reported as the task's error, and its returns stored
//! (inline, or in the node's store when large). The executor decides where
//! and when a task runs; this is what running it is.

use super::output::{exit_flushing_output, hold_if_exiting};
use super::{error_blob, error_returns, CoreWorker, SharedActor};
use crate::codec;
use crate::core_worker::function_manager::{registry_actor, registry_function, ArgReader, Returns};
use crate::error::{Error, ErrorKind, Result};
use crate::session::log;
use crate::transport::{ActorSpec, Payload, TaskSpec};
use std::any::Any;
use std::sync::{Arc, Mutex};

/// Arguments in another node's store, pulled into this node's for the
/// task's duration, and arguments in this node's store, pinned for it
/// (both released when dropped).
struct LocalArgs<'a> {
    cw: &'a CoreWorker,
    /// As the spec has them.
    args: &'a [Payload],
    /// By index, the local copies of those pulled from other nodes
    /// (empty when none was: the common case costs no allocation).
    pulled: Vec<(usize, Payload)>,
    _pins: Option<crate::core_worker::free::BlockPins>,
}

impl<'a> LocalArgs<'a> {
    /// `copies`: other nodes holding an argument (by index), tried when
    /// its primary's node cannot serve it.
    /// Fails naming the argument whose every copy is gone, if that is
    /// why: its owner can reconstruct it and run the task again.
    fn new(
        cw: &'a CoreWorker,
        args: &'a [Payload],
        copies: &[(u32, Vec<u16>)],
    ) -> std::result::Result<LocalArgs<'a>, (Error, Option<u32>)> {
        // This node's blocks first: their owner may die while the task
        // reads them.
        let pins = if args.iter().any(|p| matches!(p, Payload::Store { .. })) {
            let here: Vec<&Payload> = args.iter().filter(|p| !cw.is_remote(p)).collect();
            cw.pin_local(&here).map_err(|e| (e, None))?
        } else {
            None
        };
        let mut out = LocalArgs {
            cw,
            args,
            pulled: Vec::new(),
            _pins: pins,
        };
        for (i, p) in args.iter().enumerate() {
            if cw.is_remote(p) {
                let local = cw
                    .pull(p, crate::transport::copies_of(copies, i), None)
                    .map_err(|e| {
                        let lost = (e.kind() == ErrorKind::ObjectLost).then_some(i as u32);
                        (e, lost)
                    })?;
                out.pulled.push((i, local));
            }
        }
        Ok(out)
    }

    /// Each argument's bytes, read in place (the pulled ones from their
    /// local copies).
    fn bytes(&self) -> Result<Vec<&[u8]>> {
        let mut pulled = self.pulled.iter().peekable();
        self.args
            .iter()
            .enumerate()
            .map(|(i, p)| match pulled.next_if(|(j, _)| *j == i) {
                Some((_, local)) => self.cw.payload_bytes(local),
                None => self.cw.payload_bytes(p),
            })
            .collect()
    }
}

impl Drop for LocalArgs<'_> {
    fn drop(&mut self) {
        // The pins were taken on the blocks pulled from (see `pull`).
        for (i, _) in &self.pulled {
            self.cw.unpin(&self.args[*i]);
        }
    }
}

pub(super) fn construct(cw: &Arc<CoreWorker>, spec: &ActorSpec) -> Result<Box<dyn Any + Send>> {
    hold_if_exiting();
    let entry = registry_actor(&spec.class).ok_or_else(|| {
        Error::new(
            ErrorKind::TaskFailed,
            format!(
                "actor class `{}` is not registered in this binary",
                spec.class
            ),
        )
    })?;
    let local = LocalArgs::new(cw, &spec.args, &[]).map_err(|(e, _)| e)?;
    let bytes = local.bytes()?;
    let mut reader = ArgReader::new(&bytes, &spec.class);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (entry.construct)(&mut reader)
    })) {
        Ok(r) => r,
        Err(p) => Err(Error::new(
            ErrorKind::ActorDied,
            format!(
                "the constructor of actor `{}` panicked: {}",
                spec.class,
                crate::transport::panic_text(&*p)
            ),
        )),
    }
}

/// Runs one task and turns its outcome into result payloads; says whether
/// the function returned `Err` (an application error).
/// What running a task gave: a `TaskDone`'s contents.
/// How a task's run ended: what it returned (or its error, as its
/// returns), and whether it could run at all.
pub(super) struct Outcome {
    pub(super) returns: Vec<Payload>,
    pub(super) app_error: bool,
    /// Arguments it could not start without: every copy was gone.
    pub(super) lost_args: Vec<u32>,
}

pub(super) fn run(
    cw: &Arc<CoreWorker>,
    spec: &TaskSpec,
    actor: Option<&mut (String, Box<dyn Any + Send>)>,
    shared: Option<&SharedActor>,
) -> Outcome {
    hold_if_exiting();
    if spec.actor.is_none() {
        cw.exec.assign(&spec.resources, &spec.gpus);
    }
    let local = match LocalArgs::new(cw, &spec.args, &spec.arg_copies) {
        Ok(l) => l,
        // Its raylet is gone (see `store_returns`).
        Err((e, _)) if e.kind() == ErrorKind::ClusterUnavailable => {
            log!("cannot read a task's arguments ({e}); worker exiting");
            exit_flushing_output(0);
        }
        Err((e, lost)) => {
            return Outcome {
                returns: error_returns(spec, &e),
                app_error: false,
                lost_args: lost.into_iter().collect(),
            }
        }
    };
    let mut panicked = false;
    let outcome = invoke(spec, &local, actor, shared, &mut panicked);
    drop(local);
    let (returns, app_error) = match outcome {
        Ok(r) => {
            let app_error = r.app_error;
            (store_returns(cw, spec, r), app_error)
        }
        // A panic is an application error too (`retry_exceptions(true)`
        // retries it, as Ray retries any exception); a task that could not
        // start (unregistered, bad arguments) is not.
        Err(e) => (error_returns(spec, &e), panicked),
    };
    Outcome {
        returns,
        app_error,
        lost_args: Vec::new(),
    }
}

fn store_returns(cw: &Arc<CoreWorker>, spec: &TaskSpec, returns: Returns) -> Vec<Payload> {
    if returns.blobs.len() != spec.returns.len() {
        let e = Error::new(
            ErrorKind::TaskFailed,
            format!(
                "`{}` returned {} values but the caller expects {}",
                spec.function,
                returns.blobs.len(),
                spec.returns.len()
            ),
        );
        return error_returns(spec, &e);
    }
    // Refs serialized inside results stay alive as long as this worker does
    // (the owner of the result does not yet track nested refs).
    keep_forever(returns.refs);
    let mut out = Vec::with_capacity(returns.blobs.len());
    // Small results travel in the reply until it carries its bound inline;
    // the rest go through the store (a reply past one message could not be
    // sent at all).
    let mut inline_room = crate::core_worker::TASK_INLINE_MAX;
    for blob in returns.blobs {
        match cw.store_value(
            codec::Encoded::Blob(blob),
            spec.id.owner,
            false,
            inline_room,
        ) {
            Ok(p) => {
                if let Payload::Inline(b) = &p {
                    inline_room -= b.len();
                }
                out.push(p)
            }
            // The raylet is gone (its connection is): this worker goes
            // with it rather than report the task failed, so the owner
            // retries the task elsewhere.
            Err(e) if e.kind() == ErrorKind::ClusterUnavailable => {
                log!("cannot store a result ({e}); worker exiting");
                exit_flushing_output(0);
            }
            // This result carries the error; the others keep their
            // values. Those stored are in blocks that belong to the owner,
            // which alone may free them (the raylet refuses this worker's
            // free of them): reported as values, they are freed with their
            // refs, where an error in their place left them in the store
            // until the owner exited.
            Err(e) => out.push(Payload::Inline(error_blob(spec, &e))),
        }
    }
    out
}

fn keep_forever(refs: Vec<crate::core_worker::RawRef>) {
    static KEPT: Mutex<Vec<crate::core_worker::RawRef>> = Mutex::new(Vec::new());
    if !refs.is_empty() {
        KEPT.lock().unwrap_or_else(|p| p.into_inner()).extend(refs);
    }
}

/// The state an actor call runs on.
enum CallState<'a> {
    /// A threaded actor's, shared by its call threads (`&self` methods).
    Shared(&'a Arc<dyn Any + Send + Sync>),
    /// This thread's own.
    Own(&'a mut Box<dyn Any + Send>),
}

fn invoke(
    spec: &TaskSpec,
    local: &LocalArgs<'_>,
    actor: Option<&mut (String, Box<dyn Any + Send>)>,
    shared: Option<&SharedActor>,
    panicked: &mut bool,
) -> Result<Returns> {
    let bytes = local.bytes()?;
    let mut reader = ArgReader::new(&bytes, &spec.function);
    // What ran, for an error's message (made only for one).
    let mut class_name: &str = "";
    let result = match spec.actor {
        None => {
            let f = registry_function(&spec.function).ok_or_else(|| {
                Error::new(
                    ErrorKind::TaskFailed,
                    format!(
                        "remote function `{}` is not registered in this binary",
                        spec.function
                    ),
                )
            })?;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut reader)))
        }
        Some(_) => {
            let (class, state) = match (shared, actor) {
                (Some((class, state)), _) => (class.as_str(), CallState::Shared(state)),
                (None, Some((class, state))) => (class.as_str(), CallState::Own(state)),
                (None, None) => {
                    return Err(Error::new(
                        ErrorKind::ActorDied,
                        "this worker hosts no actor",
                    ))
                }
            };
            class_name = class;
            let entry = registry_actor(class).ok_or_else(|| {
                Error::new(
                    ErrorKind::ActorDied,
                    format!("actor class `{class}` is not registered"),
                )
            })?;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match state {
                CallState::Shared(s) => (entry.dispatch_shared)(&**s, &spec.function, &mut reader),
                CallState::Own(s) => (entry.dispatch)(s.as_mut(), &spec.function, &mut reader),
            }))
        }
    };
    let what = || match spec.actor {
        None => format!("task `{}`", spec.function),
        Some(_) => format!("actor method `{class_name}::{}`", spec.function),
    };
    match result {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) if e.kind() == ErrorKind::TaskFailed => Err(e),
        Ok(Err(e)) => Err(Error::new(
            ErrorKind::TaskFailed,
            format!("{} failed: {e}", what()),
        )),
        Err(p) => {
            *panicked = true;
            Err(Error::new(
                ErrorKind::TaskFailed,
                format!("{} panicked: {}", what(), crate::transport::panic_text(&*p)),
            ))
        }
    }
}
