//! `ObjectRef<T>` and the object API: `put`, `get`, `wait`, `cancel`, and
//! zero-copy views.

use crate::codec::{self, Pod};
use crate::core_worker::{self, CoreWorker, Effects, RawRef};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::ObjectId;
use crate::transport::Payload;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// A future of an immutable object in the cluster: returned by `put` and by
/// submitting a task, resolved by [`get`]. Cheap to clone; can be passed to
/// tasks (as an argument, or inside another value) and to other processes.
/// The object is freed when no `ObjectRef` to it remains anywhere.
pub struct ObjectRef<T> {
    raw: RawRef,
    _t: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_raw(raw: RawRef) -> ObjectRef<T> {
        ObjectRef {
            raw,
            _t: PhantomData,
        }
    }

    pub(crate) fn raw(&self) -> &RawRef {
        &self.raw
    }

    pub(crate) fn into_raw(self) -> RawRef {
        self.raw
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.raw.id
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef::from_raw(self.raw.clone())
    }
}

/// Refs are equal when they name the same object.
impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw.id == other.raw.id
    }
}

impl<T> Eq for ObjectRef<T> {}

impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.raw.id.hash(h)
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectRef<{}>({})",
            std::any::type_name::<T>(),
            self.raw.id
        )
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        core_worker::note_serialized(&self.raw);
        self.raw.id.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let id = ObjectId::deserialize(d)?;
        let cw = core_worker::current().map_err(serde::de::Error::custom)?;
        cw.adopt_ref(id)
            .map(ObjectRef::from_raw)
            .map_err(serde::de::Error::custom)
    }
}

/// Stores a value in the object store and returns a ref to it.
///
/// Small values stay in this process; large ones are written once into the
/// node's shared arena (plain numeric vectors such as `Vec<u8>` or
/// `Vec<f64>` with a single `memcpy`).
pub fn put<T: Serialize + Send + 'static>(value: T) -> Result<ObjectRef<T>> {
    let cw = core_worker::current()?;
    let (enc, refs) = core_worker::capturing(|| codec::encode_value(&value));
    let enc = enc?;
    let big = enc.len() > core_worker::INLINE_MAX;
    let raw = cw.put_encoded(enc, refs, usize::MAX)?;
    // Freeing a large source buffer is not the caller's wait.
    if big && codec::is_pod_vec::<T>() {
        let _ = std::thread::Builder::new().spawn(move || drop(value));
    }
    Ok(ObjectRef::from_raw(raw))
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

fn get_inner<T: DeserializeOwned + 'static>(
    r: &ObjectRef<T>,
    timeout: Option<Duration>,
) -> Result<T> {
    let cw = &r.raw.cw;
    not_shut_down(cw)?;
    let payload = cw.wait_local(r.raw.id, deadline(timeout))?;
    decode_got(r, payload)
}

/// A `get` after `shutdown` fails rather than waiting.
fn not_shut_down(cw: &CoreWorker) -> Result<()> {
    if cw.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::unavailable("rustray was shut down"));
    }
    Ok(())
}

/// `r`'s value decoded from `payload`, which `wait_local` gave.
fn decode_got<T: DeserializeOwned + 'static>(r: &ObjectRef<T>, payload: Payload) -> Result<T> {
    let cw = &r.raw.cw;
    // A block read in place is not released under the decoder by `free`.
    let _reading = cw.begin_read(r.raw.id, &payload)?;
    let bytes = cw.payload_bytes(&payload)?;
    match codec::decode_value::<T>(bytes) {
        // A GPU-resident object read as host values (`Vec<E>`): copied
        // from the device, so code that does not care where the bytes are
        // still works (feature `cuda`).
        Err(e) if e.kind() == ErrorKind::TypeMismatch => {
            match crate::core_worker::DEVICE_HOOKS.get() {
                Some(h) => match (h.host_blob)(r.raw.id, bytes)? {
                    Some(host) => codec::decode_value::<T>(&host),
                    None => Err(e),
                },
                None => Err(e),
            }
        }
        other => other,
    }
}

/// Ray's `free` (`ray._private.internal_api.free`): the objects are gone
/// at once for every holder: a later `get` fails with
/// [`ObjectFreed`](crate::ErrorKind::ObjectFreed), whoever owns them (a
/// borrower's free goes to the owner). Their store memory is released as
/// soon as nothing can still be reading it in place (a view, a borrower, a
/// task that takes it as argument). For memory-hungry pipelines that know
/// an object will not be read again while refs to it remain.
///
/// ```no_run
/// # fn main() -> rustray::Result<()> {
/// rustray::init()?;
/// let big = rustray::put(vec![0u8; 64 << 20])?;
/// rustray::free(&[big.clone()])?;
/// assert!(rustray::get(&big).is_err());
/// # Ok(()) }
/// ```
pub fn free<T>(refs: &[ObjectRef<T>]) -> Result<()> {
    for r in refs {
        r.raw.cw.free_object(r.raw.id);
    }
    Ok(())
}

/// Waits for the object and returns its value.
///
/// Fails with the task's error if the task producing it failed, or with a
/// type-mismatch error if the object holds another type.
pub fn get<T: DeserializeOwned + 'static>(r: &ObjectRef<T>) -> Result<T> {
    get_inner(r, None)
}

/// Like [`get`], but gives up after `timeout` with a
/// [`Timeout`](ErrorKind::Timeout) error; the object can still be fetched later.
pub fn get_timeout<T: DeserializeOwned + 'static>(
    r: &ObjectRef<T>,
    timeout: Duration,
) -> Result<T> {
    get_inner(r, Some(timeout))
}

/// Gets many objects, in order. Fails as soon as any of them has failed,
/// whatever its position (as Ray's `ray.get(list)`): a failed last element
/// is reported without waiting for the first ones to finish.
pub fn get_all<T: DeserializeOwned + 'static>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(refs.len());
    // Held from the first slice that passes: a worker then reports itself
    // blocked once, not once per slice.
    let mut blocked = None;
    for (i, r) in refs.iter().enumerate() {
        // Waiting in order costs one wake-up per value, as plain gets do;
        // a slice that passes without this value looks for a failure among
        // the later ones (one scan per slice, not per arriving value).
        let payload = loop {
            let slice = Instant::now() + GET_ALL_SLICE;
            match r.raw.cw.wait_value(r.raw.id, Some(slice)) {
                Err(e) if e.kind() == ErrorKind::Timeout && Instant::now() >= slice => {
                    if let Some(e) = first_failure(&refs[i + 1..]) {
                        return Err(e);
                    }
                    blocked.get_or_insert_with(|| r.raw.cw.block_guard());
                }
                Err(e) => return Err(e),
                Ok(p) => break p,
            }
        };
        // As `get` from here, without finding the value a second time.
        not_shut_down(&r.raw.cw)?;
        let payload = r.raw.cw.local_of(r.raw.id, payload, None)?;
        out.push(decode_got(r, payload)?);
    }
    Ok(out)
}

/// How long [`get_all`] waits on one element before it looks for a failed
/// one further on.
const GET_ALL_SLICE: Duration = Duration::from_millis(10);

/// The error of the first of `refs` that has failed already, if any.
fn first_failure<T>(refs: &[ObjectRef<T>]) -> Option<Error> {
    let cw = &refs.first()?.raw.cw;
    let mut fx = Effects::default();
    let mut failed = None;
    {
        let mut st = cw.lock();
        for r in refs {
            match cw.poll_value(&mut st, r.raw.id, &mut fx) {
                Ok(None) => continue,
                Ok(Some(p)) => failed = core_worker::submitter::payload_error(cw, &p),
                Err(e) => failed = Some(e),
            }
            if failed.is_some() {
                break;
            }
        }
    }
    cw.apply(fx);
    failed
}

/// Waits until `num_returns` of `refs` are ready or `timeout` passes, and
/// splits them into (ready, not ready), each in the order given.
///
/// As Ray's `ray.wait` (with its default `fetch_local=True`): an empty list
/// gives `([], [])`; duplicate refs, `num_returns` 0 or more than the refs
/// given are errors; objects reported ready are in this node's store (a
/// ready object of another node is copied here before `wait` returns).
pub fn wait<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<Split<T>> {
    wait_with(refs, num_returns, timeout, true)
}

/// What [`wait`] answers: the ready refs, then the others.
type Split<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// [`wait`] with Ray's `fetch_local` argument: with `false`, an object is
/// ready once it exists anywhere in the cluster, and is not copied here.
pub fn wait_with<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
    fetch_local: bool,
) -> Result<Split<T>> {
    if refs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut seen = std::collections::HashSet::with_capacity(refs.len());
    if let Some(dup) = refs.iter().find(|r| !seen.insert(r.raw.id)) {
        return Err(Error::invalid(format!(
            "wait requires unique refs: {} appears more than once",
            dup.raw.id
        )));
    }
    if num_returns == 0 {
        return Err(Error::invalid(
            "wait: num_returns must be at least 1 (got 0)",
        ));
    }
    if num_returns > refs.len() {
        return Err(Error::invalid(format!(
            "num_returns ({num_returns}) exceeds the number of refs ({})",
            refs.len()
        )));
    }
    let end = deadline(timeout);
    let ready = wait_ready(refs, num_returns, timeout)?;
    let mut yes = Vec::new();
    let mut no = Vec::new();
    for (r, ok) in refs.iter().zip(ready) {
        if ok && yes.len() < num_returns {
            yes.push(r.clone());
        } else {
            no.push(r.clone());
        }
    }
    // fetch_local: a ready object of another node is copied into this
    // node's store (and pinned while this process holds it), so the `get`
    // that follows reads it in place. A copy that fails is left for `get`
    // to report.
    if fetch_local {
        let cw = &refs[0].raw.cw;
        for r in &yes {
            let remote = {
                let st = cw.lock();
                st.objects
                    .get(&r.raw.id)
                    .and_then(|e| e.value.as_ref())
                    .is_some_and(|p| cw.is_remote(p))
            };
            if remote {
                let _ = cw.wait_local(r.raw.id, end);
            }
        }
    }
    Ok((yes, no))
}

/// Waits until `num_returns` of `refs` are ready or the deadline passes;
/// per ref: ready (or unknown, so that `get` reports it).
///
/// Until its first sleep it polls the refs not ready yet; from then on it
/// watches them (their values wake it) and reads the values that arrived
/// from the core worker's arrival log, so that a wake-up costs what
/// arrived, not what is still pending (a wait on many refs wakes once per
/// batch of values; polling them all each time is quadratic).
fn wait_ready<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<Vec<bool>> {
    let Some(first) = refs.first() else {
        return Ok(Vec::new());
    };
    let cw = first.raw.cw.clone();
    let end = deadline(timeout);
    let mut guard = None;
    let mut ready = vec![false; refs.len()];
    let mut n = 0;
    let mut pending: Vec<usize> = (0..refs.len()).collect();
    // Once watching: the pending refs by object (unique: `wait_with`
    // refuses a ref passed twice), and where this wait stands in the
    // arrival log.
    let mut watched: Option<(HashMap<ObjectId, Vec<usize>>, u64)> = None;
    let mut st = cw.lock();
    let mut slept_out = false;
    loop {
        let mut fx = Effects::default();
        match &mut watched {
            None => pending.retain(|&i| {
                // An unknown object cannot become ready: count it as ready
                // so that `get` reports the error instead of `wait` hanging.
                let now_ready =
                    !matches!(cw.poll_value(&mut st, refs[i].raw.id, &mut fx), Ok(None));
                if now_ready {
                    ready[i] = true;
                    n += 1;
                }
                !now_ready
            }),
            Some((by_id, cursor)) => {
                let mut arrived = st.arrivals_since(cursor);
                if slept_out {
                    // A whole bound asleep: look at every ref still waited
                    // for, whatever the log says.
                    let ids: Vec<ObjectId> = by_id.keys().copied().collect();
                    arrived
                        .extend(ids.into_iter().filter(|id| {
                            !matches!(cw.poll_value(&mut st, *id, &mut fx), Ok(None))
                        }));
                }
                for id in arrived {
                    for i in by_id.remove(&id).unwrap_or_default() {
                        ready[i] = true;
                        n += 1;
                        CoreWorker::watch(&mut st, id, false, true);
                    }
                }
            }
        }
        let timed_out = end.is_some_and(|d| Instant::now() >= d);
        let shut = cw.shutting_down.load(std::sync::atomic::Ordering::Relaxed);
        let done = n >= num_returns || timed_out;
        if done || shut {
            if let Some((by_id, _)) = watched.take() {
                // What is still pending is watched no more.
                for (id, idx) in by_id {
                    for _ in idx {
                        CoreWorker::watch(&mut st, id, false, true);
                    }
                }
                st.unfollow_arrivals();
            }
            drop(st);
            cw.apply(fx);
            if done {
                return Ok(ready);
            }
            return Err(Error::unavailable("rustray was shut down"));
        }
        // Whatever needs the lock dropped (messages to owners, telling the
        // raylet this worker blocks) is followed by polling again before
        // any wait: a value that arrived meanwhile woke nobody.
        if !fx.is_empty() || guard.is_none() {
            drop(st);
            cw.apply(fx);
            if guard.is_none() {
                guard = Some(cw.block_guard());
            }
            st = cw.lock();
            continue;
        }
        if watched.is_none() {
            // Under the lock the last poll held: nothing arrives between.
            let mut by_id: HashMap<ObjectId, Vec<usize>> = HashMap::new();
            for &i in &pending {
                let id = refs[i].raw.id;
                by_id.entry(id).or_default().push(i);
                CoreWorker::watch(&mut st, id, true, true);
            }
            let cursor = st.follow_arrivals();
            watched = Some((by_id, cursor));
        }
        let wait = end
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(500))
            .min(Duration::from_millis(500));
        (st, slept_out) = cw.sleep_for_values(st, wait);
    }
}

/// Cancels the task that produces `r`: a queued task is dropped; a running
/// one is stopped by ending its worker process (Ray's `force=True`). Its
/// `get` then fails with [`Cancelled`](ErrorKind::Cancelled).
pub fn cancel<T>(r: &ObjectRef<T>) -> Result<()> {
    r.raw.cw.cancel(r.raw.id)
}

/// A read-only view of a `Vec<E>` object without copying it out of the
/// shared store. Keeps the object alive while it exists.
pub struct ObjectView<E: Pod> {
    ptr: *const E,
    len: usize,
    // Dropped before `_keep`: the read ends before the ref does.
    _read: Option<crate::core_worker::free::ReadGuard>,
    _keep: Option<RawRef>,
    _owned: Option<Vec<E>>,
}

// SAFETY: the view is read-only over immutable shared memory (or owns its
// data); E is Send + Sync.
unsafe impl<E: Pod> Send for ObjectView<E> {}
// SAFETY: as above.
unsafe impl<E: Pod> Sync for ObjectView<E> {}

impl<E: Pod> std::ops::Deref for ObjectView<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        // SAFETY: ptr/len describe `len` initialized, aligned elements kept
        // alive by `_keep` (the arena block) or `_owned`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<E: Pod> std::fmt::Debug for ObjectView<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectView<{}>(len {})",
            std::any::type_name::<E>(),
            self.len
        )
    }
}

/// Reads a `Vec<E>` object in place: for objects in the shared store no byte
/// is copied, whatever the size.
pub fn get_view<E: Pod>(r: &ObjectRef<Vec<E>>) -> Result<ObjectView<E>> {
    let cw = &r.raw.cw;
    let payload = cw.wait_local(r.raw.id, None)?;
    let read = cw.begin_read(r.raw.id, &payload)?;
    match &payload {
        Payload::Store { offset, len, .. } => {
            let bytes = cw.arena.read(*offset, *len)?;
            let blob = codec::parse(bytes)?;
            let (off, n) = blob.pod_payload::<E>()?;
            let ptr = bytes[off..].as_ptr();
            if (ptr as usize) % std::mem::align_of::<E>() != 0 {
                return Err(Error::invalid("object payload is misaligned"));
            }
            Ok(ObjectView {
                ptr: ptr.cast(),
                len: n,
                _read: read,
                _keep: Some(r.raw.clone()),
                _owned: None,
            })
        }
        Payload::Inline(bytes) => {
            let v: Vec<E> = codec::decode_value(bytes)?;
            Ok(ObjectView {
                ptr: v.as_ptr(),
                len: v.len(),
                _read: None,
                _keep: None,
                _owned: Some(v),
            })
        }
    }
}
