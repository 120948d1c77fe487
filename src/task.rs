//! Remote functions: task options, arguments, and the registry that maps a
//! function's name to its code in every process.
//!
//! Workers run the same binary as the driver, so `#[rustray::remote]`
//! registers each function (through `inventory`, at link time) under its
//! module path, and a task names its function by that string.

use crate::codec;
use crate::core_worker::function_manager::{RetryFilter, RetryTest, RETRY_FOREVER};
use crate::core_worker::submitter::PreparedArg;
use crate::core_worker::{self, RawRef};
use crate::error::{Error, Result};
use crate::scheduler::{ResourceSet, CPU, GPU};
use crate::ObjectRef;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// An argument of a task or actor call: a value, or a ref whose value the
/// task receives once it exists.
pub struct Arg(pub(crate) PreparedArg);

impl std::fmt::Debug for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            PreparedArg::Value(b, _) => write!(f, "Arg::Value({} bytes)", b.len()),
            PreparedArg::Ref(r) => write!(f, "Arg::Ref({r:?})"),
            PreparedArg::Failed(e) => write!(f, "Arg::Failed({e})"),
        }
    }
}

/// Something that can be passed where a task expects a `T`: a `T` itself, or
/// an [`ObjectRef<T>`] (the task then runs once the object exists, and gets
/// its value).
pub trait IntoArg<T> {
    /// Converts into an untyped argument.
    fn into_arg(self) -> Arg;
}

impl<T: Serialize + 'static> IntoArg<T> for T {
    fn into_arg(self) -> Arg {
        Arg(encode_arg(&self))
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg {
        Arg(PreparedArg::Ref(self.into_raw()))
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg {
        Arg(PreparedArg::Ref(self.raw().clone()))
    }
}

pub(crate) fn encode_arg<T: Serialize + 'static>(v: &T) -> PreparedArg {
    let (enc, refs) = core_worker::capturing(|| codec::encode_value(v).map(|e| e.into_vec()));
    match enc {
        Ok(blob) => PreparedArg::Value(blob, refs),
        Err(e) => PreparedArg::Failed(e),
    }
}

/// How often a task is retried when its worker dies: a count (`5.into()`,
/// or just `5` where `impl Into<Retries>` is taken), or without end.
///
/// ```
/// use rustray::Retries;
/// assert_eq!(Retries::from(2), Retries::Times(2));
/// # let _ = Retries::Infinite;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retries {
    /// At most this many retries.
    Times(u32),
    /// Retried until it succeeds (Ray's `max_retries=-1`).
    Infinite,
}

impl From<u32> for Retries {
    fn from(n: u32) -> Retries {
        Retries::Times(n)
    }
}

/// A retry count as the submitter keeps it.
pub(crate) fn retry_budget(r: Retries) -> u32 {
    match r {
        Retries::Times(n) => n.min(RETRY_FOREVER - 1),
        Retries::Infinite => RETRY_FOREVER,
    }
}

/// Per-call options of a remote function, in Ray's shape
/// (`f::options().num_cpus(2.0).max_retries(0).remote(..)`).
#[derive(Clone, Debug)]
pub struct TaskOptions {
    shape: std::result::Result<ResourceSet, Error>,
    max_retries: u32,
    strategy: crate::SchedulingStrategy,
    retry_exceptions: Option<RetryFilter>,
    max_calls: u32,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions::new()
    }
}

impl TaskOptions {
    /// One CPU, three retries (Ray's defaults).
    pub fn new() -> TaskOptions {
        TaskOptions {
            shape: Ok(crate::resources::one_cpu().clone()),
            max_retries: 3,
            strategy: crate::SchedulingStrategy::Default,
            retry_exceptions: None,
            max_calls: 0,
        }
    }

    fn set(mut self, name: &str, amount: f64) -> TaskOptions {
        if let Ok(s) = &mut self.shape {
            if let Err(e) = s.set_request(name, amount) {
                self.shape = Err(e);
            }
        }
        self
    }

    /// CPUs the task holds while it runs (default 1).
    pub fn num_cpus(self, n: f64) -> TaskOptions {
        self.set(CPU, n)
    }

    /// GPUs the task holds while it runs (default 0).
    pub fn num_gpus(self, n: f64) -> TaskOptions {
        self.set(GPU, n)
    }

    /// A custom resource the task needs.
    pub fn resource(self, name: &str, amount: f64) -> TaskOptions {
        if name.is_empty() {
            return TaskOptions {
                shape: Err(Error::invalid("a resource name must not be empty")),
                ..self
            };
        }
        self.set(name, amount)
    }

    /// How often the task is re-run if its worker process dies (default
    /// 3): a count, or [`Retries::Infinite`] (Ray's `max_retries=-1`).
    pub fn max_retries(mut self, n: impl Into<Retries>) -> TaskOptions {
        self.max_retries = retry_budget(n.into());
        self
    }

    /// Where the task runs (default: near its arguments, else here).
    pub fn scheduling_strategy(mut self, s: crate::SchedulingStrategy) -> TaskOptions {
        self.strategy = s;
        self
    }

    /// Ray's `retry_exceptions=True`: a task whose function returns `Err`
    /// (a remote function returning `Result<T, E>`) or panics is run
    /// again, within its [`max_retries`](Self::max_retries), as when its
    /// worker dies. Only the last attempt's result is kept. Default: off
    /// (an `Err` is then a value like any other, and a panic fails the
    /// task with [`TaskFailed`](crate::ErrorKind::TaskFailed)).
    pub fn retry_exceptions(mut self, on: bool) -> TaskOptions {
        self.retry_exceptions = on.then(|| RetryFilter(Arc::new(|_: &[u8]| true)));
        self
    }

    /// Retries only the errors `retry(bytes)` accepts, `bytes` being the
    /// encoded result; the typed form is the generated
    /// `f::options().retry_exceptions_if(|e: &E| ..)`.
    #[doc(hidden)]
    pub fn retry_exceptions_filter(mut self, retry: RetryTest) -> TaskOptions {
        self.retry_exceptions = Some(RetryFilter(retry));
        self
    }

    /// Ray's `max_calls`: a worker process that has run this many tasks of
    /// this function exits after the last one, and a fresh worker takes the
    /// next (a way to give back what a library leaks: memory, GPU memory,
    /// file handles). 0, the default, means no limit.
    pub fn max_calls(mut self, n: u32) -> TaskOptions {
        self.max_calls = n;
        self
    }
}

/// A remote function's `Result<T, E>` return type, for
/// `retry_exceptions_if`: `E` is its error type. (A trait with `E` as a
/// parameter, so the generated method's bound is checked where it is
/// called, not for every remote function.)
#[diagnostic::on_unimplemented(
    message = "`retry_exceptions_if` needs a remote function that returns `Result<T, E>` with an `E` to test; `{Self}` is not one",
    label = "not a `Result` with this error type"
)]
pub trait TaskResult<E>: DeserializeOwned + 'static {
    /// The error, if this is one.
    fn into_err(self) -> Option<E>;
}

impl<T: DeserializeOwned + 'static, E: DeserializeOwned + 'static> TaskResult<E>
    for std::result::Result<T, E>
{
    fn into_err(self) -> Option<E> {
        self.err()
    }
}

/// Decodes an encoded `R` and applies `retry` to its error (false when it
/// is no error or does not decode).
#[doc(hidden)]
pub fn error_matches<R: TaskResult<E>, E>(bytes: &[u8], retry: &dyn Fn(&E) -> bool) -> bool {
    codec::decode_value::<R>(bytes)
        .ok()
        .and_then(|r| r.into_err())
        .is_some_and(|e| retry(&e))
}

/// How the generated code tells an application error (`Err` from a
/// function returning `Result`) from any other value, without knowing the
/// type: `(&value).__rustray_is_app_error()` finds this impl for a
/// `Result`, and [`NotAppError`]'s (one reference deeper) for the rest.
#[doc(hidden)]
pub trait IsAppError {
    fn __rustray_is_app_error(&self) -> bool;
}

impl<T, E> IsAppError for std::result::Result<T, E> {
    fn __rustray_is_app_error(&self) -> bool {
        self.is_err()
    }
}

/// See [`IsAppError`].
#[doc(hidden)]
pub trait NotAppError {
    fn __rustray_is_app_error(&self) -> bool;
}

impl<T: ?Sized> NotAppError for &T {
    fn __rustray_is_app_error(&self) -> bool {
        false
    }
}

/// Submits a task by registered name; used by `#[rustray::remote]`.
/// Fails, as actor creation and `put` do, when rustray is not initialized
/// (before `init()` or after `shutdown()`).
pub fn submit_task(
    name: &'static str,
    opts: &TaskOptions,
    args: Vec<Arg>,
    num_returns: usize,
) -> Result<Vec<RawRef>> {
    let cw = core_worker::current()
        .map_err(|e| Error::new(e.kind(), format!("cannot submit `{name}`: {}", e.message())))?;
    Ok(cw.submit(
        name,
        opts.shape.clone(),
        &opts.strategy,
        opts.max_retries,
        args.into_iter().map(|a| a.0).collect(),
        num_returns,
        None,
        None,
        super::core_worker::submitter::Extra {
            retry_exceptions: opts.retry_exceptions.clone(),
            max_calls: opts.max_calls,
        },
    ))
}
