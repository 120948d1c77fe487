//! GPUs through the CUDA driver (cargo feature `cuda`): how many devices a
//! node has when nothing else says, the device layer user code on a GPU
//! worker reaches for (`context`, copies), and GPU-resident objects.
//!
//! ## GPU-resident objects
//!
//! [`put`] copies a device buffer into memory of the same GPU that other
//! processes of the node can open (a plain `cuMemAlloc`: cudarc's pool
//! allocations cannot be shared by IPC handle), and stores a small
//! descriptor in the object store: node, device UUID, IPC handle, size,
//! element type. The descriptor is an ordinary object, so a
//! [`DeviceRef`] is reference-counted as any `ObjectRef` is, passed to
//! tasks and actors, borrowed across processes; when its last reference
//! goes, its owner frees the device memory, and when the owner dies CUDA
//! frees it with the process. Device memory is counted per GPU against the
//! device's size (see `table.rs`): a full GPU is a clear `StoreFull` error.
//!
//! Reading ([`DeviceRef::get`], [`DeviceRef::to_host`]) takes the cheapest
//! path the reader has: the owner's own buffer in the owner's process (no
//! copy); the buffer opened by CUDA IPC in another process of the node
//! that sees the device (no copy on the same device, one device-to-device
//! copy to another GPU of the node, no host round trip); otherwise (another
//! node, or a process that does not see the device) a host copy the owner
//! makes once into the object store, which the data plane moves like any
//! object, then copied to the reader's device.
//!
//! The driver is looked for at run time (`rustray-cuda`, over `cudarc`
//! with dynamic loading), so a build with this feature needs no CUDA
//! toolkit and runs on machines without a GPU: every call here is then an
//! [`ErrorKind::Gpu`] error naming the missing driver, never a panic.
//!
//! Inside a task or actor holding GPUs, device ordinal 0 is the first of
//! its own devices (CUDA numbers what `CUDA_VISIBLE_DEVICES` shows from 0;
//! [`get_gpu_ids`](crate::get_gpu_ids) gives the node's ids).
//!
//! ```no_run
//! # fn main() -> rustray::Result<()> {
//! let n = rustray::cuda::device_count()?;
//! if n > 0 {
//!     let buf = rustray::cuda::to_device(0, &[1.0f32, 2.0, 3.0])?;
//!     assert_eq!(rustray::cuda::to_host(&buf)?, vec![1.0, 2.0, 3.0]);
//! }
//! # Ok(())
//! # }
//! ```

mod table;

use crate::core_worker::{self, RawRef};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::ObjectId;
use crate::object_ref::ObjectRef;
use rustray_cuda::{DeviceBuffer, IpcMapping, IPC_HANDLE_BYTES};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use table::DeviceTable;

pub use rustray_cuda::{CUdeviceptr, CudaContext, CudaSlice, CudaStream, DeviceRepr};

fn gpu_error(e: rustray_cuda::Error) -> Error {
    Error::new(ErrorKind::Gpu, e.to_string())
}

/// Whether this machine has a CUDA driver (the library loads).
pub fn driver_present() -> bool {
    rustray_cuda::driver_present()
}

/// The GPUs this process sees.
pub fn device_count() -> Result<usize> {
    rustray_cuda::device_count().map_err(gpu_error)
}

/// This process's context on device `ordinal` (0 is the first device
/// this process sees).
pub fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
    rustray_cuda::context(ordinal).map_err(gpu_error)
}

/// Copies host values to a new buffer on device `ordinal`.
pub fn to_device<T: DeviceRepr>(ordinal: usize, host: &[T]) -> Result<CudaSlice<T>> {
    rustray_cuda::to_device(ordinal, host).map_err(gpu_error)
}

/// Copies a device buffer to host memory.
pub fn to_host<T: DeviceRepr>(buf: &CudaSlice<T>) -> Result<Vec<T>> {
    rustray_cuda::to_host(buf).map_err(gpu_error)
}

/// What the object store holds for a GPU-resident object.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Descriptor {
    /// The node and process that own the device memory.
    node: u16,
    owner_pid: u32,
    /// The device, by UUID (each process numbers devices its own way).
    uuid: [u8; 16],
    handle: Vec<u8>,
    bytes: u64,
    /// The element type's name, checked by readers.
    elem: String,
}

/// A GPU-resident object: a reference-counted handle to bytes that stay in
/// device memory (see the module notes). Cheap to clone; can be passed to
/// tasks and actors like an [`ObjectRef`].
///
/// The handle carries a copy of the object's descriptor (it is immutable
/// and small), so a reader opens the device memory without first asking
/// the owner for it.
pub struct DeviceRef<T> {
    desc: ObjectRef<Descriptor>,
    inline: Arc<Descriptor>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for DeviceRef<T> {
    fn clone(&self) -> Self {
        DeviceRef {
            desc: self.desc.clone(),
            inline: self.inline.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> DeviceRef<T> {
    /// The same object as an [`ObjectRef`] of host values: `rustray::get`
    /// on it copies the values from the device to host memory (`E` must be
    /// one of the plain numeric types [`Pod`](crate::Pod) names), so code
    /// that does not care where the bytes are still works.
    ///
    /// ```no_run
    /// # fn main() -> rustray::Result<()> {
    /// rustray::init()?;
    /// let buf = rustray::cuda::to_device(0, &[1.0f32, 2.0])?;
    /// let obj = rustray::cuda::put(&buf)?;
    /// assert_eq!(rustray::get(&obj.host_ref())?, vec![1.0f32, 2.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn host_ref(&self) -> ObjectRef<Vec<T>> {
        ObjectRef::from_raw(self.desc.raw().clone())
    }
}

impl<T> From<DeviceRef<T>> for ObjectRef<Vec<T>> {
    fn from(d: DeviceRef<T>) -> Self {
        d.host_ref()
    }
}

impl<T> std::fmt::Debug for DeviceRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceRef<{}>({})",
            std::any::type_name::<T>(),
            self.desc.id()
        )
    }
}

impl<T> Serialize for DeviceRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (&self.desc, &*self.inline).serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for DeviceRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (desc, inline) = <(ObjectRef<Descriptor>, Descriptor)>::deserialize(d)?;
        Ok(DeviceRef {
            desc,
            inline: Arc::new(inline),
            _t: PhantomData,
        })
    }
}

/// This process's device objects: the bookkeeping, the buffers, and the
/// host copies made for readers that cannot open the device memory.
#[derive(Default)]
struct Registry {
    table: DeviceTable,
    buffers: HashMap<ObjectId, Arc<DeviceBuffer>>,
    staged: HashMap<ObjectId, RawRef>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    // A poisoned lock still holds consistent bookkeeping (each update is
    // one call of the state machine).
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Stores a copy of `buf` as a GPU-resident object on `buf`'s device.
///
/// ```no_run
/// # fn main() -> rustray::Result<()> {
/// rustray::init()?;
/// let buf = rustray::cuda::to_device(0, &[1.0f32; 1024])?;
/// let obj = rustray::cuda::put(&buf)?;
/// assert_eq!(obj.to_host()?, vec![1.0f32; 1024]);
/// # Ok(())
/// # }
/// ```
pub fn put<T: DeviceRepr>(buf: &CudaSlice<T>) -> Result<DeviceRef<T>> {
    let cw = core_worker::current()?;
    install_hooks();
    let gpu = buf.ordinal();
    let bytes = buf.num_bytes() as u64;
    {
        let mut r = registry();
        if !r.table.knows(gpu) {
            let total = buf.context().total_mem().map_err(|e| {
                Error::new(ErrorKind::Gpu, format!("reading GPU {gpu}'s size: {e:?}"))
            })?;
            r.table.set_capacity(gpu, total as u64);
        }
        // Before any allocation: a full GPU is a clear error, not an
        // out-of-memory from the driver.
        r.table.fits(gpu, bytes)?;
    }
    let copy = DeviceBuffer::copy_of(buf).map_err(gpu_error)?;
    let desc = Descriptor {
        node: cw.session.node_index,
        owner_pid: std::process::id(),
        uuid: rustray_cuda::device_uuid(gpu).map_err(gpu_error)?,
        handle: copy.ipc_handle().map_err(gpu_error)?.to_vec(),
        bytes,
        elem: std::any::type_name::<T>().to_string(),
    };
    let inline = Arc::new(desc.clone());
    let desc = crate::put(desc)?;
    let id = desc.raw().id;
    {
        let mut r = registry();
        r.table.admit(id, gpu, bytes)?;
        r.buffers.insert(id, Arc::new(copy));
    }
    cw.mark_device(id);
    Ok(DeviceRef {
        desc,
        inline,
        _t: PhantomData,
    })
}

/// Makes the core worker call into this layer (device objects' release
/// and staging, `get` of their host values). Every process calls it when
/// rustray starts in it.
pub(crate) fn install_hooks() {
    core_worker::DEVICE_HOOKS.get_or_init(|| core_worker::DeviceHooks {
        release,
        stage,
        host_blob,
    });
}

/// `rustray::get::<Vec<E>>` of device object `id` (`bytes`: its blob):
/// the values copied to host memory, written as a `Vec<E>`'s blob; `None`
/// when the object is not a device object.
fn host_blob(id: ObjectId, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let Ok(d) = crate::codec::decode_value::<Descriptor>(bytes) else {
        return Ok(None);
    };
    check_handle(id, &d)?;
    // Sized by what is really there (an open mapping checked against its
    // allocation, or the host copy itself), never by the descriptor's
    // claim alone.
    let blob = match open_here(id, &d)? {
        Some(o) => crate::codec::pod_blob_with(&d.elem, o.bytes(), |dst| o.copy_to_host(dst)),
        None => {
            let staged = staged_bytes(id)?;
            crate::codec::pod_blob_with(&d.elem, staged.len(), |dst| {
                dst.copy_from_slice(&staged);
                Ok(())
            })
        }
    };
    match blob {
        Some(b) => b.map(Some),
        None => Err(Error::new(
            ErrorKind::TypeMismatch,
            format!(
                "device object {id} holds {} values, which `get` cannot return as host values \
                 (only plain numeric elements); read it with DeviceRef::to_host",
                d.elem
            ),
        )),
    }
}

fn check_handle(id: ObjectId, d: &Descriptor) -> Result<()> {
    if d.handle.len() != IPC_HANDLE_BYTES {
        return Err(Error::invalid(format!(
            "device object {id} has a {}-byte IPC handle",
            d.handle.len()
        )));
    }
    Ok(())
}

/// Device object `id`, owned here, went: its memory and host copy go.
pub(crate) fn release(id: ObjectId) {
    let (buffer, staged) = {
        let mut r = registry();
        r.table.release(id);
        (r.buffers.remove(&id), r.staged.remove(&id))
    };
    // Dropped outside the registry's lock: dropping a ref may free its
    // object, which comes back here.
    drop(buffer);
    drop(staged);
}

/// As the owner of device object `id`: the object holding its host copy,
/// made on the first call.
pub(crate) fn stage(id: ObjectId) -> Result<ObjectId> {
    let buffer = {
        let r = registry();
        if let Some(copy) = r.table.staged(id) {
            return Ok(copy);
        }
        r.buffers.get(&id).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::ObjectFreed,
                format!("device object {id} is no longer held by its owner"),
            )
        })?
    };
    let mut host = vec![0u8; buffer.bytes()];
    buffer.copy_to_host(&mut host).map_err(gpu_error)?;
    let copy = crate::put(host)?.into_raw();
    let copy_id = copy.id;
    let mut r = registry();
    if r.table.set_staged(id, copy_id) {
        r.staged.insert(id, copy);
        Ok(copy_id)
    } else if let Some(first) = r.table.staged(id) {
        // Another reader's copy won the race; this one is dropped.
        drop(r);
        drop(copy);
        Ok(first)
    } else {
        drop(r);
        drop(copy);
        Err(Error::new(
            ErrorKind::ObjectFreed,
            format!("device object {id} went while it was being copied"),
        ))
    }
}

/// A device object as this process reads it, on one of its devices.
pub struct DeviceObject<T> {
    held: Held<T>,
    len: usize,
    /// A reference to the object, so its owner keeps the device memory
    /// while this view (an IPC mapping, say) lives.
    _object: ObjectRef<Descriptor>,
}

impl<T> std::fmt::Debug for DeviceObject<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.held {
            Held::Local(_) => "the owner's buffer",
            Held::Mapped(_) => "opened by CUDA IPC",
            Held::Copied(_) => "a copy on this device",
        };
        write!(
            f,
            "DeviceObject<{}>({} elements, {how})",
            std::any::type_name::<T>(),
            self.len
        )
    }
}

enum Held<T> {
    /// The owner's own buffer (the owner's process).
    Local(Arc<DeviceBuffer>),
    /// The owner's buffer opened by IPC (another process, same device).
    Mapped(IpcMapping),
    /// A copy on this process's device.
    Copied(CudaSlice<T>),
}

impl<T: DeviceRepr> DeviceObject<T> {
    /// The device address of the first element, in this process.
    pub fn device_ptr(&self) -> CUdeviceptr {
        match &self.held {
            Held::Local(b) => b.ptr(),
            Held::Mapped(m) => m.ptr(),
            Held::Copied(s) => {
                let stream = s.stream().clone();
                let (p, _sync) = cudarc_ptr(s, &stream);
                p
            }
        }
    }

    /// Elements of `T`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an object of no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy the caller owns, on the same device (for code that writes).
    pub fn to_slice(&self) -> Result<CudaSlice<T>> {
        let (ctx, bytes) = match &self.held {
            Held::Local(b) => (b.context().clone(), b.bytes()),
            Held::Mapped(m) => (m.context().clone(), m.bytes()),
            Held::Copied(s) => (s.context().clone(), s.num_bytes()),
        };
        // SAFETY: the object's bytes were written as `len` values of `T`
        // and stay alive (held by `self`) during the copy.
        unsafe { rustray_cuda::copy_to_slice(&ctx.default_stream(), self.device_ptr(), bytes) }
            .map_err(gpu_error)
    }

    /// The values, copied to host memory.
    pub fn to_host(&self) -> Result<Vec<T>> {
        match &self.held {
            Held::Copied(s) => rustray_cuda::to_host(s).map_err(gpu_error),
            Held::Local(b) => host_values(|dst| b.copy_to_host(dst), b.bytes()),
            Held::Mapped(m) => host_values(
                |dst| rustray_cuda::copy_to_host(m.context(), m.ptr(), m.bytes(), dst),
                m.bytes(),
            ),
        }
    }
}

fn cudarc_ptr<'a, T>(
    s: &'a CudaSlice<T>,
    stream: &'a Arc<CudaStream>,
) -> (CUdeviceptr, impl Drop + 'a) {
    use rustray_cuda::DevicePtr;
    s.device_ptr(stream)
}

/// Host values of `T`, written straight into the vector's memory by
/// `fill` (`bytes` bytes: one copy from the device, none after).
fn host_values<T: DeviceRepr>(
    fill: impl FnOnce(&mut [u8]) -> rustray_cuda::Result<()>,
    bytes: usize,
) -> Result<Vec<T>> {
    let size = std::mem::size_of::<T>();
    if size == 0 || bytes % size != 0 {
        return Err(Error::new(
            ErrorKind::TypeMismatch,
            format!(
                "{bytes} bytes are not a whole number of {}",
                std::any::type_name::<T>()
            ),
        ));
    }
    let len = bytes / size;
    let mut out: Vec<T> = Vec::with_capacity(len);
    // SAFETY: the capacity holds `bytes` bytes; the slice is only written
    // (by the device copy) before the length is set.
    let dst = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), bytes) };
    fill(dst).map_err(gpu_error)?;
    // SAFETY: `fill` succeeded, so all `len` values were written, with the
    // bytes of values of `T` (the descriptor's element type was checked).
    unsafe { out.set_len(len) };
    Ok(out)
}

/// Bytes copied out of a device buffer of `T` back into values of `T`.
fn values_from_bytes<T: DeviceRepr>(raw: &[u8]) -> Result<Vec<T>> {
    let size = std::mem::size_of::<T>();
    if size == 0 || raw.len() % size != 0 {
        return Err(Error::new(
            ErrorKind::TypeMismatch,
            format!(
                "{} bytes are not a whole number of {} ({size} bytes each)",
                raw.len(),
                std::any::type_name::<T>()
            ),
        ));
    }
    let len = raw.len() / size;
    let mut out: Vec<T> = Vec::with_capacity(len);
    // SAFETY: the bytes were copied out of device memory written as `len`
    // values of `T` (the descriptor's element type was checked), which is
    // what cudarc's own device-to-host copies assume of a `DeviceRepr`;
    // the copy fills exactly `len * size` bytes of the new capacity.
    unsafe {
        std::ptr::copy_nonoverlapping(raw.as_ptr(), out.as_mut_ptr().cast::<u8>(), raw.len());
        out.set_len(len);
    }
    Ok(out)
}

impl<T: DeviceRepr> DeviceRef<T> {
    fn descriptor(&self) -> Result<&Descriptor> {
        let d = &*self.inline;
        if d.elem != std::any::type_name::<T>() {
            return Err(Error::new(
                ErrorKind::TypeMismatch,
                format!(
                    "device object {} holds {}, not {}",
                    self.desc.id(),
                    d.elem,
                    std::any::type_name::<T>()
                ),
            ));
        }
        check_handle(self.desc.raw().id, d)?;
        Ok(d)
    }

    /// The object on this process's first GPU (ordinal 0: the first of a
    /// task's own devices): no copy where it already lives there, else one
    /// copy (device to device on the node, through host memory from
    /// another node).
    pub fn get(&self) -> Result<DeviceObject<T>> {
        let d = self.descriptor()?;
        // Lengths come from what is really there, not the descriptor.
        let elems = |bytes: usize| bytes / std::mem::size_of::<T>().max(1);
        let here = context(0)?;
        let here_uuid = rustray_cuda::device_uuid(0).map_err(gpu_error)?;
        match open_here(self.desc.raw().id, d)? {
            // On this process's first device already: no copy.
            Some(open) if d.uuid == here_uuid => {
                return Ok(DeviceObject {
                    len: elems(open.bytes()),
                    held: open.into(),
                    _object: self.desc.clone(),
                })
            }
            // On another device of the node: one device-to-device copy.
            Some(open) => {
                let (src, bytes) = (open.ptr(), open.bytes());
                let stream = here.default_stream();
                // SAFETY: `open` keeps the source (checked against its
                // allocation) alive for the copy: `bytes` bytes of `T`s.
                let copied = unsafe { rustray_cuda::copy_to_slice::<T>(&stream, src, bytes) };
                let s = copied.map_err(gpu_error)?;
                drop(open);
                return Ok(DeviceObject {
                    held: Held::Copied(s),
                    len: elems(bytes),
                    _object: self.desc.clone(),
                });
            }
            None => {}
        }
        let host: Vec<T> = values_from_bytes(&staged_bytes(self.desc.raw().id)?)?;
        let s = to_device(0, &host)?;
        // From pageable memory the copy may return before it lands; a raw
        // pointer handed out now must see the bytes.
        s.stream()
            .synchronize()
            .map_err(|e| Error::new(ErrorKind::Gpu, format!("cuStreamSynchronize: {e:?}")))?;
        Ok(DeviceObject {
            held: Held::Copied(s),
            len: host.len(),
            _object: self.desc.clone(),
        })
    }

    /// The values, in host memory, wherever the object lives: code that
    /// does not care where the bytes are still works.
    pub fn to_host(&self) -> Result<Vec<T>> {
        let d = self.descriptor()?;
        match open_here(self.desc.raw().id, d)? {
            Some(open) => DeviceObject {
                len: open.bytes() / std::mem::size_of::<T>().max(1),
                held: open.into(),
                _object: self.desc.clone(),
            }
            .to_host(),
            None => values_from_bytes(&staged_bytes(self.desc.raw().id)?),
        }
    }
}

/// Device object `id`'s memory opened in this process, if it can be: the
/// owner's own buffer, or an IPC mapping on the device's ordinal here.
fn open_here(id: ObjectId, d: &Descriptor) -> Result<Option<Open>> {
    let cw = core_worker::current()?;
    if d.node != cw.session.node_index {
        return Ok(None);
    }
    if d.owner_pid == std::process::id() {
        let b = registry().buffers.get(&id).cloned();
        return Ok(b.map(Open::Local));
    }
    if !driver_present() {
        return Ok(None);
    }
    let Some(ordinal) = rustray_cuda::ordinal_of(&d.uuid).map_err(gpu_error)? else {
        return Ok(None);
    };
    let mut handle = [0u8; IPC_HANDLE_BYTES];
    handle.copy_from_slice(&d.handle);
    // Where IPC is refused (an exclusive-process GPU, a container
    // without it, MIG), the owner's host copy serves instead.
    match IpcMapping::open(&context(ordinal)?, &handle, d.bytes as usize) {
        Ok(m) => Ok(Some(Open::Mapped(m))),
        Err(e) => {
            crate::session::log!(
                "device object {id}: CUDA IPC open failed ({e}); reading the owner's host copy"
            );
            Ok(None)
        }
    }
}

/// The host copy of device object `id` its owner makes (once), read
/// through the store.
fn staged_bytes(id: ObjectId) -> Result<Vec<u8>> {
    let cw = core_worker::current()?;
    let copy: ObjectRef<Vec<u8>> = ObjectRef::from_raw(cw.staged_copy(id)?);
    crate::get(&copy)
}

/// The owner's device memory, as a process of its node can reach it.
enum Open {
    /// The owner's own buffer (the owner's process).
    Local(Arc<DeviceBuffer>),
    /// Opened by IPC (another process that sees the device).
    Mapped(IpcMapping),
}

impl Open {
    fn ptr(&self) -> CUdeviceptr {
        match self {
            Open::Local(b) => b.ptr(),
            Open::Mapped(m) => m.ptr(),
        }
    }

    /// Its size: the owner's real buffer's, or the mapping's (checked
    /// against the allocation when opened).
    fn bytes(&self) -> usize {
        match self {
            Open::Local(b) => b.bytes(),
            Open::Mapped(m) => m.bytes(),
        }
    }

    fn copy_to_host(&self, dst: &mut [u8]) -> Result<()> {
        match self {
            Open::Local(b) => b.copy_to_host(dst),
            Open::Mapped(m) => rustray_cuda::copy_to_host(m.context(), m.ptr(), m.bytes(), dst),
        }
        .map_err(gpu_error)
    }
}

impl<T> From<Open> for Held<T> {
    fn from(o: Open) -> Held<T> {
        match o {
            Open::Local(b) => Held::Local(b),
            Open::Mapped(m) => Held::Mapped(m),
        }
    }
}

/// Every device object this process owns goes (its cluster shut down).
pub(crate) fn release_all() {
    let gone: Vec<(ObjectId, Option<Arc<DeviceBuffer>>, Option<RawRef>)> = {
        let mut r = registry();
        let ids: Vec<ObjectId> = r
            .table
            .release_all()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.into_iter()
            .map(|id| (id, r.buffers.remove(&id), r.staged.remove(&id)))
            .collect()
    };
    drop(gone);
}

/// Device objects this process owns on GPU `gpu` (its ordinal here), and
/// their bytes.
pub fn device_object_usage(gpu: usize) -> (u64, u64) {
    let u = registry().table.usage(gpu);
    (u.objects, u.used)
}

/// The devices the driver reports, for a node that was told nothing about
/// its GPUs (no `num_gpus`, no `CUDA_VISIBLE_DEVICES`, no Slurm GRES): 0
/// without a driver, and 0, with a log line, when the driver fails.
pub(crate) fn detected_gpus() -> usize {
    if !driver_present() {
        return 0;
    }
    match device_count() {
        Ok(n) => n.min(crate::scheduler::MAX_DEVICES),
        Err(e) => {
            crate::session::log!("GPU detection: {e}; the node offers no GPUs");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A staging request for an object this process does not hold (freed,
    /// or never a device object) is a clear error, not a panic.
    #[test]
    fn staging_an_unknown_object_is_an_error() {
        let id = ObjectId {
            owner: crate::ids::WorkerId(3),
            seq: 9,
        };
        let e = stage(id).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ObjectFreed, "{e}");
        release(id); // nothing held: nothing happens
    }

    /// Host bytes become values only in whole elements.
    #[test]
    fn bytes_back_to_values() {
        let v = [1.5f32, -2.0, 3.25];
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
        assert_eq!(values_from_bytes::<f32>(&raw).unwrap(), v.to_vec());
        let e = values_from_bytes::<f32>(&raw[..5]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TypeMismatch, "{e}");
        assert!(values_from_bytes::<u64>(&[]).unwrap().is_empty());
    }

    /// The no-driver error path of every call: a clear error of kind
    /// `Gpu`, no panic, and a node that detects no GPUs.
    #[test]
    fn without_a_driver_every_call_is_a_clear_error() {
        if driver_present() {
            assert_eq!(detected_gpus(), device_count().expect("driver answers"));
            return;
        }
        assert_eq!(detected_gpus(), 0);
        for e in [
            device_count().unwrap_err(),
            context(0).unwrap_err(),
            to_device(0, &[1u8]).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Gpu, "{e}");
            assert!(e.message().contains("no CUDA driver"), "{e}");
        }
    }
}
