//! The function manager (Ray's `function_manager`): the remote functions
//! and actor classes this binary registered (by `#[rustray::remote]` and
//! `#[rustray::actor]`, collected at link time), found by name when a
//! task arrives; how a task reads its arguments and hands back its
//! results; and the retry bookkeeping types the submitter keeps. Below
//! the public API (`task`, `actor`), which builds on it.

use super::RawRef;
use crate::codec;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The retry budget that never runs out.
pub(crate) const RETRY_FOREVER: u32 = u32::MAX;

/// Which application errors (a task's `Err`) are retried: a test run on
/// the owner over the encoded result.
#[derive(Clone)]
pub(crate) struct RetryFilter(pub(crate) RetryTest);

/// A test over a task's encoded result: retry it?
pub(crate) type RetryTest = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

impl std::fmt::Debug for RetryFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryFilter")
    }
}

/// Reads a task's arguments, in order, on the worker.
pub struct ArgReader<'a> {
    args: &'a [&'a [u8]],
    next: usize,
    function: &'a str,
}

impl std::fmt::Debug for ArgReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ArgReader(`{}`, argument {} of {})",
            self.function,
            self.next + 1,
            self.args.len()
        )
    }
}

impl<'a> ArgReader<'a> {
    pub(crate) fn new(args: &'a [&'a [u8]], function: &'a str) -> ArgReader<'a> {
        ArgReader {
            args,
            next: 0,
            function,
        }
    }

    /// Decodes the next argument.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: DeserializeOwned + 'static>(&mut self) -> Result<T> {
        let i = self.next;
        self.next += 1;
        let bytes = self.args.get(i).ok_or_else(|| {
            Error::invalid(format!(
                "`{}` expects more arguments than the {} it was given",
                self.function,
                self.args.len()
            ))
        })?;
        codec::decode_value::<T>(bytes).map_err(|e| {
            Error::new(
                e.kind(),
                format!("argument {} of `{}`: {}", i + 1, self.function, e.message()),
            )
        })
    }
}

/// The encoded results of a task.
#[derive(Default)]
pub struct Returns {
    pub(crate) blobs: Vec<Vec<u8>>,
    pub(crate) refs: Vec<RawRef>,
    /// The function returned `Err` (for `retry_exceptions`).
    pub(crate) app_error: bool,
}

impl std::fmt::Debug for Returns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Returns({} results, {} refs{})",
            self.blobs.len(),
            self.refs.len(),
            if self.app_error { ", an Err" } else { "" }
        )
    }
}

impl Returns {
    /// No results yet.
    pub fn new() -> Returns {
        Returns::default()
    }

    /// Marks the result as an application error (the function's `Err`).
    pub fn set_app_error(&mut self, is_err: bool) {
        self.app_error |= is_err;
    }

    /// Appends one result.
    pub fn push<T: Serialize + 'static>(&mut self, value: &T) -> Result<()> {
        let (enc, refs) = super::capturing(|| codec::encode_value(value).map(|e| e.into_vec()));
        self.blobs.push(enc?);
        self.refs.extend(refs);
        Ok(())
    }
}

/// A remote function's entry point: decode arguments, run, encode results.
pub type InvokeFn = fn(&mut ArgReader<'_>) -> Result<Returns>;

/// A remote function registered by `#[rustray::remote]`.
pub struct RemoteFunction {
    /// Its module path, the same in every process running this binary.
    pub name: &'static str,
    /// Its entry point.
    pub invoke: InvokeFn,
}

impl std::fmt::Debug for RemoteFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteFunction({})", self.name)
    }
}

inventory::collect!(RemoteFunction);

/// Constructs an actor's state from its constructor arguments.
pub type ConstructFn = fn(&mut ArgReader<'_>) -> Result<Box<dyn std::any::Any + Send>>;
/// Runs one method on an actor's state.
pub type DispatchFn =
    fn(&mut (dyn std::any::Any + Send), &str, &mut ArgReader<'_>) -> Result<Returns>;

/// Turns a constructed actor's state into one that threads can share
/// (for `max_concurrency` above 1); gives it back when its type is not
/// `Sync`.
pub type ShareFn =
    fn(
        Box<dyn std::any::Any + Send>,
    )
        -> std::result::Result<Arc<dyn std::any::Any + Send + Sync>, Box<dyn std::any::Any + Send>>;
/// Runs one `&self` method on shared actor state (a threaded actor).
pub type DispatchSharedFn =
    fn(&(dyn std::any::Any + Send + Sync), &str, &mut ArgReader<'_>) -> Result<Returns>;

/// An actor class registered by `#[rustray::actor]`.
pub struct ActorClassEntry {
    /// The class name (`ActorClass::NAME`).
    pub name: &'static str,
    /// Runs the constructor.
    pub construct: ConstructFn,
    /// Runs a method.
    pub dispatch: DispatchFn,
    /// Shares the state between threads, when its type is `Sync`.
    pub share: ShareFn,
    /// Runs a `&self` method on shared state.
    pub dispatch_shared: DispatchSharedFn,
}

impl std::fmt::Debug for ActorClassEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorClassEntry({})", self.name)
    }
}

/// How the generated `share` tells a `Sync` actor type from another
/// without naming the bound: `(&Sharer(..)).__rustray_share()` finds
/// [`ShareSync`]'s impl when `T: Sync`, else [`ShareNotSync`]'s (one
/// reference deeper).
#[doc(hidden)]
pub struct Sharer<T>(pub std::cell::Cell<Option<T>>);

impl<T> std::fmt::Debug for Sharer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sharer<{}>", std::any::type_name::<T>())
    }
}

#[doc(hidden)]
pub trait ShareSync {
    fn __rustray_share(
        &self,
    ) -> std::result::Result<Arc<dyn std::any::Any + Send + Sync>, Box<dyn std::any::Any + Send>>;
}

impl<T: std::any::Any + Send + Sync> ShareSync for Sharer<T> {
    fn __rustray_share(
        &self,
    ) -> std::result::Result<Arc<dyn std::any::Any + Send + Sync>, Box<dyn std::any::Any + Send>>
    {
        match self.0.take() {
            Some(t) => Ok(Arc::new(t)),
            None => Err(Box::new(())),
        }
    }
}

/// See [`ShareSync`].
#[doc(hidden)]
pub trait ShareNotSync {
    fn __rustray_share(
        &self,
    ) -> std::result::Result<Arc<dyn std::any::Any + Send + Sync>, Box<dyn std::any::Any + Send>>;
}

impl<T: std::any::Any + Send> ShareNotSync for &Sharer<T> {
    fn __rustray_share(
        &self,
    ) -> std::result::Result<Arc<dyn std::any::Any + Send + Sync>, Box<dyn std::any::Any + Send>>
    {
        match self.0.take() {
            Some(t) => Err(Box::new(t)),
            None => Err(Box::new(())),
        }
    }
}

inventory::collect!(ActorClassEntry);

pub(crate) fn registry_function(name: &str) -> Option<InvokeFn> {
    static MAP: OnceLock<HashMap<&'static str, InvokeFn>> = OnceLock::new();
    MAP.get_or_init(|| {
        inventory::iter::<RemoteFunction>
            .into_iter()
            .map(|f| (f.name, f.invoke))
            .collect()
    })
    .get(name)
    .copied()
}

pub(crate) fn registry_actor(name: &str) -> Option<&'static ActorClassEntry> {
    static MAP: OnceLock<HashMap<&'static str, &'static ActorClassEntry>> = OnceLock::new();
    MAP.get_or_init(|| {
        inventory::iter::<ActorClassEntry>
            .into_iter()
            .map(|a| (a.name, a))
            .collect()
    })
    .get(name)
    .copied()
}
