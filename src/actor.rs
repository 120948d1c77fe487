//! Actors: stateful workers whose methods run one at a time, in order per
//! caller.
//!
//! `#[rustray::actor]` on an impl block makes the type an [`ActorClass`];
//! `Type::remote(args)` asks the GCS to create the actor (the GCS leases a
//! dedicated worker from the raylet, runs the constructor there, and restarts
//! the actor up to `max_restarts` times if its process dies). Method calls go
//! straight from the caller to the actor's worker.

use crate::core_worker::submitter::PreparedArg;
use crate::core_worker::{self, CoreWorker, RawRef};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ActorId, ObjectId};
use crate::protocol::{FromGcs, ToGcs};
use crate::scheduler::{ResourceSet, CPU, GPU};
use crate::task::Arg;
use crate::transport::{ActorLookup, ActorSpec, NamedActor, Payload};
use crate::ObjectRef;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;
use std::sync::Arc;

/// A type usable as an actor; implemented by `#[rustray::actor]`.
pub trait ActorClass: 'static {
    /// The class's registered name (its module path).
    const NAME: &'static str;
    /// The generated struct carrying the remote methods.
    type Methods: ActorMethods;
    /// The constructor's arguments: `()`, one type, or a tuple.
    type CtorArgs;
    /// Converts constructor arguments.
    fn ctor_args(args: Self::CtorArgs) -> Vec<Arg>;
}

/// The generated methods of an actor handle.
pub trait ActorMethods: Send + Sync + 'static {
    /// Wraps the untyped handle.
    fn from_core(core: ActorCore) -> Self;
    /// The untyped handle.
    fn core(&self) -> &ActorCore;
}

/// The untyped part of an actor handle.
#[derive(Clone)]
pub struct ActorCore {
    id: ActorId,
    class: &'static str,
    /// The counted stand-in for this actor's handles (owned by the process
    /// that created the actor): the actor ends when the last one anywhere
    /// is dropped. `None` for actors that live until killed (named and
    /// detached ones), and for handles whose creator was already gone.
    token: Option<RawRef>,
    /// How often each call is retried if the actor's process dies.
    max_task_retries: u32,
}

impl std::fmt::Debug for ActorCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorCore({} {})", self.class, self.id)
    }
}

impl ActorCore {
    /// Calls a method; the result is an `ObjectRef` owned by the caller.
    pub fn call<R: 'static>(&self, method: &'static str, args: Vec<Arg>) -> ObjectRef<R> {
        match self.call_n(method, args, 1).pop() {
            Some(r) => r.typed(),
            None => unreachable!("submit returns one ref per requested return"),
        }
    }

    /// Calls a method with `num_returns` results (Ray's
    /// `@ray.method(num_returns=N)`), one ref each.
    pub fn call_n(&self, method: &'static str, args: Vec<Arg>, num_returns: usize) -> Vec<RawRef> {
        let cw = match core_worker::current() {
            Ok(cw) => cw,
            Err(e) => panic!("cannot call `{}::{method}`: {e}", self.class),
        };
        cw.submit(
            method,
            Ok(ResourceSet::new()),
            &crate::SchedulingStrategy::Default,
            self.max_task_retries,
            args.into_iter().map(|a| a.0).collect(),
            num_returns,
            Some(self.id),
            self.token.as_ref(),
            Default::default(),
        )
    }
}

/// A handle to an actor: call its methods (they return `ObjectRef`s),
/// clone it, pass it to tasks.
pub struct ActorHandle<A: ActorClass> {
    methods: A::Methods,
    _a: PhantomData<fn() -> A>,
}

impl<A: ActorClass> ActorHandle<A> {
    /// The actor's id, stable across its restarts (as
    /// [`RuntimeContext::actor_id`](crate::RuntimeContext) gives it inside).
    pub fn id(&self) -> String {
        self.core().id.to_string()
    }

    fn from_core(core: ActorCore) -> ActorHandle<A> {
        ActorHandle {
            methods: A::Methods::from_core(core),
            _a: PhantomData,
        }
    }

    fn core(&self) -> &ActorCore {
        self.methods.core()
    }
}

impl<A: ActorClass> std::ops::Deref for ActorHandle<A> {
    type Target = A::Methods;
    fn deref(&self) -> &A::Methods {
        &self.methods
    }
}

impl<A: ActorClass> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle::from_core(self.core().clone())
    }
}

impl<A: ActorClass> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle<{}>({:?})", A::NAME, self.core().id)
    }
}

/// A handle travels as the actor's id and its token, which is serialized
/// as an object ref is: the value carrying it keeps it alive, and the
/// receiving process registers as a borrower with the actor's creator.
impl<A: ActorClass> Serialize for ActorHandle<A> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let core = self.core();
        if let Some(t) = &core.token {
            core_worker::note_serialized(t);
        }
        (
            core.id,
            core.token.as_ref().map(|t| t.id),
            core.max_task_retries,
        )
            .serialize(s)
    }
}

impl<'de, A: ActorClass> Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (id, token, max_task_retries) = <(ActorId, Option<ObjectId>, u32)>::deserialize(d)?;
        // A creator already gone cannot count this handle; the actor's
        // calls then report whatever became of it.
        let token = match (token, core_worker::current()) {
            (Some(t), Ok(cw)) => cw.adopt_ref(t).ok(),
            _ => None,
        };
        Ok(ActorHandle::from_core(ActorCore {
            id,
            class: A::NAME,
            token,
            max_task_retries,
        }))
    }
}

/// Options for creating an actor (`Type::options().name("x").remote(args)`).
pub struct ActorOptions<A: ActorClass> {
    name: Option<String>,
    namespace: String,
    get_if_exists: bool,
    max_restarts: u32,
    max_task_retries: u32,
    shape: std::result::Result<ResourceSet, Error>,
    /// Some resource was asked for (even 0 CPUs): then the actor is placed
    /// by what it holds, not by Ray's default 1 CPU.
    explicit: bool,
    detached: bool,
    max_concurrency: u32,
    strategy: crate::SchedulingStrategy,
    _a: PhantomData<fn() -> A>,
}

impl<A: ActorClass> std::fmt::Debug for ActorOptions<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorOptions")
            .field("class", &A::NAME)
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl<A: ActorClass> Default for ActorOptions<A> {
    fn default() -> Self {
        ActorOptions::new()
    }
}

impl<A: ActorClass> ActorOptions<A> {
    /// No name, no restarts, no resources held while running, and 1 CPU
    /// free where it is placed (Ray's default for actors: an actor that
    /// asks for nothing still goes to a node with a CPU to spare, and does
    /// not hold it).
    pub fn new() -> ActorOptions<A> {
        ActorOptions {
            name: None,
            namespace: String::new(),
            get_if_exists: false,
            max_restarts: 0,
            max_task_retries: 0,
            shape: Ok(ResourceSet::new()),
            explicit: false,
            detached: false,
            max_concurrency: 1,
            strategy: crate::SchedulingStrategy::Default,
            _a: PhantomData,
        }
    }

    /// Registers the actor under a name, for [`get_actor`].
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The namespace the name lives in (Ray's `namespace=`): the same name
    /// may be taken once per namespace. Default: the cluster's default
    /// namespace, the one [`get_actor`] looks in.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    /// Ray's `get_if_exists=True`: when a live actor of this class already
    /// holds the name, `remote` returns a handle to it (the arguments are
    /// not used) instead of failing; else it creates the actor. Needs a
    /// [`name`](Self::name).
    pub fn get_if_exists(mut self) -> Self {
        self.get_if_exists = true;
        self
    }

    /// Ray's `max_task_retries`: a call whose actor process dies is sent
    /// again, to the restarted actor, up to this many times (default 0: the
    /// call fails with [`ActorDied`](ErrorKind::ActorDied), and a call
    /// made while the actor is restarting fails at once with
    /// [`ActorUnavailable`](ErrorKind::ActorUnavailable)). A retried call
    /// may run twice. Only useful with [`max_restarts`](Self::max_restarts).
    pub fn max_task_retries(mut self, n: impl Into<crate::Retries>) -> Self {
        self.max_task_retries = crate::task::retry_budget(n.into());
        self
    }

    /// Ray's `lifetime="detached"`: the actor outlives the process that
    /// created it and every handle to it, until it is killed (or dies with
    /// no restarts left) or the cluster ends. Give it a name to find it
    /// from other drivers.
    pub fn lifetime_detached(mut self) -> Self {
        self.detached = true;
        self
    }

    /// Ray's threaded actors (`max_concurrency=N`): up to `n` calls run at
    /// once, on `n` threads of the actor's process, in no set order.
    /// Only `&self` methods can run so (a `&mut self` method's call fails
    /// with a message saying so), and the actor type must be `Sync`
    /// (state behind `Mutex` or atomics), else creation fails. Default 1:
    /// one call at a time, in order per caller.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// How often the actor is restarted if its process dies (default 0).
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }

    fn set(mut self, name: &str, amount: f64) -> Self {
        self.explicit = true;
        if let Ok(s) = &mut self.shape {
            if let Err(e) = s.set_request(name, amount) {
                self.shape = Err(e);
            }
        }
        self
    }

    /// CPUs the actor holds for its lifetime (default 0).
    pub fn num_cpus(self, n: f64) -> Self {
        self.set(CPU, n)
    }

    /// GPUs the actor holds for its lifetime (default 0).
    pub fn num_gpus(self, n: f64) -> Self {
        self.set(GPU, n)
    }

    /// A custom resource the actor holds.
    pub fn resource(self, name: &str, amount: f64) -> Self {
        self.set(name, amount)
    }

    /// Where the actor is placed (and re-placed when it restarts).
    pub fn scheduling_strategy(mut self, s: crate::SchedulingStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// Creates the actor; returns once its constructor has run.
    pub fn remote(self, args: A::CtorArgs) -> Result<ActorHandle<A>> {
        let cw = core_worker::current()?;
        let shape = self.shape?;
        if self.name.as_deref() == Some("") {
            return Err(Error::invalid("an actor name must not be empty"));
        }
        if self.get_if_exists && self.name.is_none() {
            return Err(Error::invalid(
                "get_if_exists() needs a name: set one with name(..)",
            ));
        }
        let args = resolve_args(&cw, A::ctor_args(args))?;
        let id = ActorId::random();
        let counted = self.name.is_none() && !self.detached;
        let placement = if self.explicit {
            shape.clone()
        } else {
            ResourceSet::new().with(CPU, 1.0)?
        };
        let spec = ActorSpec {
            id,
            class: A::NAME.to_string(),
            args,
            name: self.name,
            max_restarts: self.max_restarts,
            shape,
            placement,
            strategy: self.strategy,
            owner: cw.id,
            detached: self.detached,
            namespace: self.namespace,
            get_if_exists: self.get_if_exists,
            max_task_retries: self.max_task_retries,
            max_concurrency: self.max_concurrency,
        };
        let info = match cw.gcs_call(
            |req| ToGcs::RegisterActor { req, spec },
            "creating an actor",
        )? {
            FromGcs::ActorRegistered { result, .. } => result?,
            _ => return Err(Error::unavailable("unexpected reply from the GCS")),
        };
        if info.id != id {
            // get_if_exists found the holder of the name (named: no token).
            return Ok(ActorHandle::from_core(ActorCore {
                id: info.id,
                class: A::NAME,
                token: None,
                max_task_retries: info.max_task_retries,
            }));
        }
        // An unnamed actor ends with its last handle; a named one lives
        // until it is killed, dies or its creator dies, and its name is
        // released then; a detached one outlives its creator too.
        let token = counted.then(|| cw.new_actor_token(id));
        Ok(ActorHandle::from_core(ActorCore {
            id,
            class: A::NAME,
            token,
            max_task_retries: self.max_task_retries,
        }))
    }
}

/// Constructor arguments are resolved before creation (the GCS may need to
/// re-run the constructor long after the caller's refs are gone).
fn resolve_args(cw: &Arc<CoreWorker>, args: Vec<Arg>) -> Result<Vec<Payload>> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        match a.0 {
            PreparedArg::Value(blob, _) => out.push(Payload::Inline(blob)),
            PreparedArg::Failed(e) => return Err(e),
            PreparedArg::Ref(r) => {
                let p = cw.wait_local(r.id, None)?;
                let _reading = cw.begin_read(r.id, &p)?;
                out.push(Payload::Inline(cw.payload_bytes(&p)?.to_vec()));
            }
        }
    }
    Ok(out)
}

/// Finds a named actor in the default namespace (Ray's `ray.get_actor`).
pub fn get_actor<A: ActorClass>(name: &str) -> Result<ActorHandle<A>> {
    get_actor_in(name, "")
}

/// Finds a named actor in `namespace` (Ray's
/// `ray.get_actor(name, namespace=...)`).
pub fn get_actor_in<A: ActorClass>(name: &str, namespace: &str) -> Result<ActorHandle<A>> {
    let cw = core_worker::current()?;
    let by = ActorLookup::Name(NamedActor {
        namespace: namespace.to_string(),
        name: name.to_string(),
    });
    let reply = cw.gcs_call(
        |req| ToGcs::LookupActor {
            req,
            by,
            wait: false,
        },
        "looking up a named actor",
    )?;
    let info = match reply {
        FromGcs::ActorLookedUp { result, .. } => result?,
        _ => return Err(Error::unavailable("unexpected reply from the GCS")),
    };
    if info.class != A::NAME {
        return Err(Error::new(
            ErrorKind::TypeMismatch,
            format!("actor `{name}` is a `{}`, not a `{}`", info.class, A::NAME),
        ));
    }
    Ok(ActorHandle::from_core(ActorCore {
        id: info.id,
        class: A::NAME,
        token: None,
        max_task_retries: info.max_task_retries,
    }))
}

/// The live named actors (Ray's `ray.util.list_named_actors`): those of
/// the default namespace as `(namespace, name)` pairs, or, with
/// `all_namespaces`, those of every namespace; sorted.
pub fn list_named_actors(all_namespaces: bool) -> Result<Vec<(String, String)>> {
    let cw = core_worker::current()?;
    let namespace = (!all_namespaces).then(String::new);
    match cw.gcs_call(
        |req| ToGcs::ListNamedActors { req, namespace },
        "listing named actors",
    )? {
        FromGcs::NamedActors { actors, .. } => {
            Ok(actors.into_iter().map(|a| (a.namespace, a.name)).collect())
        }
        _ => Err(Error::unavailable("unexpected reply from the GCS")),
    }
}

/// Kills an actor without restarting it; its pending and later calls fail
/// with [`ActorDied`](ErrorKind::ActorDied).
pub fn kill<A: ActorClass>(h: &ActorHandle<A>) -> Result<()> {
    kill_with(h, true)
}

/// Ray's `ray.kill(actor, no_restart=...)`: with `no_restart` as [`kill`];
/// without, only the actor's process is ended, and the actor restarts as
/// after a crash if `max_restarts` allows (else it is dead).
pub fn kill_with<A: ActorClass>(h: &ActorHandle<A>, no_restart: bool) -> Result<()> {
    let cw = core_worker::current()?;
    let id = h.core().id;
    let msg = |req| ToGcs::KillActor {
        req,
        id,
        no_restart,
    };
    match cw.gcs_call(msg, "killing an actor")? {
        FromGcs::ActorKilled { .. } if !no_restart => Ok(()),
        FromGcs::ActorKilled { .. } => {
            let err = Error::new(
                ErrorKind::ActorDied,
                format!("actor `{}` was killed with rustray::kill", A::NAME),
            );
            cw.actor_killed(id, err);
            Ok(())
        }
        _ => Err(Error::unavailable("unexpected reply from the GCS")),
    }
}

/// Ray's `ray.actor.exit_actor()`: called inside an actor's method, ends
/// the actor for good (no restart, whatever `max_restarts`): the method
/// does not return, its caller and later calls get
/// [`ActorDied`](ErrorKind::ActorDied). Outside an actor it returns an
/// error and nothing happens.
pub fn exit_actor() -> Error {
    let cw = match core_worker::current() {
        Ok(cw) => cw,
        Err(e) => return e,
    };
    let Some(id) = *cw.exec.actor_id.lock().unwrap_or_else(|p| p.into_inner()) else {
        return Error::invalid("exit_actor() was called outside an actor");
    };
    match cw.gcs_call(|req| ToGcs::ExitActor { req, id }, "exiting the actor") {
        Ok(_) => {
            crate::session::log!("actor {id:?} exits (exit_actor)");
            crate::core_worker::executor::exit_flushing_output(0)
        }
        Err(e) => e,
    }
}

/// Error for a method name the actor class does not have.
pub fn unknown_method(class: &str, method: &str) -> Error {
    Error::new(
        ErrorKind::TaskFailed,
        format!("actor class `{class}` has no remote method `{method}`"),
    )
}

/// Error for a `&mut self` method called on a threaded actor.
pub fn needs_exclusive(class: &str, method: &str) -> Error {
    Error::new(
        ErrorKind::TaskFailed,
        format!("`{class}::{method}` takes `&mut self`, but this actor runs calls concurrently (max_concurrency > 1): only `&self` methods can run there; use interior mutability (Mutex, atomics)"),
    )
}

/// Error for an actor whose state is not of the expected class.
pub fn wrong_actor_state(class: &str) -> Error {
    Error::new(
        ErrorKind::TaskFailed,
        format!("this worker's actor is not a `{class}`"),
    )
}
