//! Device memory that other processes of the node can open: the storage of
//! a GPU-resident object.
//!
//! Why not a `CudaSlice`: cudarc allocates from the stream-ordered pool
//! (`cuMemAllocAsync`) wherever the device supports it, and pool memory
//! cannot be exported with `cuIpcGetMemHandle`. A [`DeviceBuffer`] is a
//! plain `cuMemAlloc` allocation, so its IPC handle opens in any process
//! of the node that sees the device ([`IpcMapping`], no copy), and it is
//! freed when the buffer drops (the object's owner drops it when the
//! object goes out of scope, or CUDA frees it when the owner dies).
//!
//! Every raw driver call is here, each after [`driver`](crate::driver)
//! said the library is loaded (cudarc panics otherwise).

use crate::{driver, Error, Result};
use cudarc::driver::sys::{self, CUdeviceptr};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr};
use std::sync::Arc;

/// The bytes of a CUDA IPC memory handle.
pub const IPC_HANDLE_BYTES: usize = 64;

fn check(call: &'static str, r: sys::CUresult) -> Result<()> {
    r.result().map_err(|e| crate::driver_error(call, e))
}

/// A device allocation other processes can open by IPC handle.
pub struct DeviceBuffer {
    ctx: Arc<CudaContext>,
    ptr: CUdeviceptr,
    bytes: usize,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer {{ device {}, {} bytes }}",
            self.ctx.ordinal(),
            self.bytes
        )
    }
}

impl DeviceBuffer {
    /// `bytes` of device memory on `ctx`'s device, contents unset.
    pub fn alloc(ctx: &Arc<CudaContext>, bytes: usize) -> Result<DeviceBuffer> {
        driver()?;
        bind(ctx)?;
        // SAFETY: the context is current on this thread; the allocation
        // (at least one byte: a zero-byte cuMemAlloc is an error) is owned
        // by the returned buffer, which frees it once.
        let ptr = unsafe { cudarc::driver::result::malloc_sync(bytes.max(1)) }
            .map_err(|e| crate::driver_error("cuMemAlloc", e))?;
        Ok(DeviceBuffer {
            ctx: ctx.clone(),
            ptr,
            bytes,
        })
    }

    /// A copy of `src` in a new buffer on the same device.
    pub fn copy_of<T: DeviceRepr>(src: &CudaSlice<T>) -> Result<DeviceBuffer> {
        let stream = src.stream().clone();
        let out = DeviceBuffer::alloc(stream.context(), src.num_bytes())?;
        {
            let (from, _done) = src.device_ptr(&stream);
            // SAFETY: `from` holds `src.num_bytes()` bytes and `out` as
            // many; the copy is ordered on the stream that wrote `src`,
            // and synchronised before `src` can be dropped or reused.
            check("cuMemcpyDtoDAsync", unsafe {
                sys::cuMemcpyDtoDAsync_v2(out.ptr, from, out.bytes, stream.cu_stream())
            })?;
        }
        stream
            .synchronize()
            .map_err(|e| crate::driver_error("cuStreamSynchronize", e))?;
        Ok(out)
    }

    /// The device address.
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The context it lives in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The handle another process of the node opens it with.
    pub fn ipc_handle(&self) -> Result<[u8; IPC_HANDLE_BYTES]> {
        driver()?;
        bind(&self.ctx)?;
        let mut h = std::mem::MaybeUninit::<sys::CUipcMemHandle>::uninit();
        // SAFETY: `h` is written by the call before it is read; `ptr` is a
        // live cuMemAlloc allocation of this buffer.
        check("cuIpcGetMemHandle", unsafe {
            sys::cuIpcGetMemHandle(h.as_mut_ptr(), self.ptr)
        })?;
        // SAFETY: initialised by the successful call above.
        let h = unsafe { h.assume_init() };
        let mut out = [0u8; IPC_HANDLE_BYTES];
        for (o, b) in out.iter_mut().zip(h.reserved.iter()) {
            *o = *b as u8;
        }
        Ok(out)
    }

    /// Copies the whole buffer into `dst` (host memory of the same size).
    pub fn copy_to_host(&self, dst: &mut [u8]) -> Result<()> {
        copy_to_host(&self.ctx, self.ptr, self.bytes, dst)
    }
}

/// Makes `ctx` current on this thread. Not `bind_to_thread`, which first
/// returns (and clears) an error an earlier asynchronous call recorded on
/// the context: a free or close must not be skipped for that.
fn bind(ctx: &Arc<CudaContext>) -> Result<()> {
    // SAFETY: the context is alive (`ctx` holds it).
    unsafe { cudarc::driver::result::ctx::set_current(ctx.cu_ctx()) }
        .map_err(|e| crate::driver_error("cuCtxSetCurrent", e))
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let _ = bind(&self.ctx);
        // SAFETY: the buffer owns `ptr`, allocated by cuMemAlloc in this
        // context, and frees it exactly once, here.
        let _ = unsafe { cudarc::driver::result::free_sync(self.ptr) };
    }
}

/// Copies `bytes` at device address `ptr` (in `ctx`) into `dst`.
///
/// `dst` is ordinary (pageable) memory, which the driver copies into
/// slowly (about 1 GB/s measured on an H200 host). Large copies therefore
/// go through two pinned bounce buffers, pipelined: the device writes one
/// chunk into one buffer while the previous chunk is copied out of the
/// other.
pub fn copy_to_host(
    ctx: &Arc<CudaContext>,
    ptr: CUdeviceptr,
    bytes: usize,
    dst: &mut [u8],
) -> Result<()> {
    driver()?;
    if dst.len() != bytes {
        return Err(Error::Driver {
            call: "cuMemcpyDtoH",
            message: format!("{} bytes on the device, {} on the host", bytes, dst.len()),
        });
    }
    bind(ctx)?;
    if bytes >= BOUNCE_MIN {
        // One large copy at a time uses the buffers; another one at the
        // same moment copies directly rather than wait.
        if let Ok(mut bounce) = BOUNCE.try_lock() {
            if bounce.is_none() {
                *bounce = Bounce::alloc();
            }
            if let Some(b) = bounce.as_ref() {
                return b.copy_out(ctx, ptr, dst);
            }
        }
    }
    // SAFETY: `ptr` is live device memory of `bytes` bytes (the caller's
    // buffer or mapping holds it) and `dst` has exactly `bytes` bytes.
    check("cuMemcpyDtoH", unsafe {
        sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), ptr, bytes)
    })
}

/// Copies at or above this size go through the pinned bounce buffers.
const BOUNCE_MIN: usize = 4 << 20;
/// Each of the two bounce buffers.
const BOUNCE_CHUNK: usize = 8 << 20;

static BOUNCE: std::sync::Mutex<Option<Bounce>> = std::sync::Mutex::new(None);

/// Two pinned host buffers of `BOUNCE_CHUNK` bytes (one allocation),
/// portable to every context of the process, kept for the process's life
/// once a large copy needed them.
struct Bounce {
    base: *mut u8,
}

// SAFETY: the buffers are plain host memory, used only under BOUNCE's lock.
unsafe impl Send for Bounce {}

impl Bounce {
    /// None when pinned memory is refused (large copies then go direct).
    fn alloc() -> Option<Bounce> {
        let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: writes one pointer; the allocation is never freed (it
        // lives as long as the process, in the static).
        let r =
            unsafe { sys::cuMemHostAlloc(&mut p, 2 * BOUNCE_CHUNK, sys::CU_MEMHOSTALLOC_PORTABLE) };
        (r.result().is_ok() && !p.is_null()).then(|| Bounce { base: p.cast() })
    }

    fn copy_out(&self, ctx: &Arc<CudaContext>, ptr: CUdeviceptr, dst: &mut [u8]) -> Result<()> {
        let stream = ctx
            .new_stream()
            .map_err(|e| crate::driver_error("cuStreamCreate", e))?;
        let s = stream.cu_stream();
        let total = dst.len();
        let half = |i: usize| (i % 2) * BOUNCE_CHUNK;
        let issue = |i: usize| {
            let off = i * BOUNCE_CHUNK;
            let len = BOUNCE_CHUNK.min(total - off);
            // SAFETY: the source range lies in the `dst.len()` bytes of
            // device memory at `ptr`; the target is one of the two pinned
            // halves, not read until this copy is synchronised.
            check("cuMemcpyDtoHAsync", unsafe {
                sys::cuMemcpyDtoHAsync_v2(
                    self.base.add(half(i)).cast(),
                    ptr + off as CUdeviceptr,
                    len,
                    s,
                )
            })
        };
        let sync = || {
            stream
                .synchronize()
                .map_err(|e| crate::driver_error("cuStreamSynchronize", e))
        };
        let chunks = total.div_ceil(BOUNCE_CHUNK);
        let mut run = || -> Result<()> {
            issue(0)?;
            for i in 0..chunks {
                sync()?; // chunk i is in its half
                if i + 1 < chunks {
                    issue(i + 1)?; // into the other half
                }
                let off = i * BOUNCE_CHUNK;
                let len = BOUNCE_CHUNK.min(total - off);
                // SAFETY: chunk i's copy completed (synchronised above) and
                // the copy in flight writes the other half.
                let src = unsafe { std::slice::from_raw_parts(self.base.add(half(i)), len) };
                dst[off..off + len].copy_from_slice(src);
            }
            Ok(())
        };
        let r = run();
        if r.is_err() {
            // No copy may still be writing the buffers once they are
            // unlocked.
            let _ = stream.synchronize();
        }
        r
    }
}

/// Copies `bytes` at device address `src` into a new `CudaSlice<T>` of
/// `stream`'s device (another device of the node too: the driver copies
/// between devices through unified addressing).
///
/// # Safety
/// `src` must hold `bytes` bytes written as values of `T`, live until
/// this returns, and `bytes` must be a multiple of `size_of::<T>()`.
pub unsafe fn copy_to_slice<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    src: CUdeviceptr,
    bytes: usize,
) -> Result<CudaSlice<T>> {
    driver()?;
    let len = bytes / std::mem::size_of::<T>().max(1);
    // Whole elements only (a forged size cannot overflow the allocation).
    let bytes = len * std::mem::size_of::<T>();
    // SAFETY: the contents are written below, before anyone reads them.
    let mut out =
        unsafe { stream.alloc::<T>(len) }.map_err(|e| crate::driver_error("cuMemAlloc", e))?;
    {
        let (dst, _done) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut out, stream);
        // SAFETY: both ranges hold `bytes` bytes (the caller's promise for
        // `src`); ordered on `stream`, synchronised before returning.
        check("cuMemcpyAsync", unsafe {
            sys::cuMemcpyAsync(dst, src, bytes, stream.cu_stream())
        })?;
    }
    stream
        .synchronize()
        .map_err(|e| crate::driver_error("cuStreamSynchronize", e))?;
    Ok(out)
}

/// Another process's [`DeviceBuffer`], opened in this one by its IPC
/// handle: the same device memory, no copy. Closed when dropped.
pub struct IpcMapping {
    ctx: Arc<CudaContext>,
    ptr: CUdeviceptr,
    bytes: usize,
}

impl IpcMapping {
    /// Opens `handle` (of a buffer of `bytes` bytes) in `ctx`, which must
    /// be a context on the buffer's device or a peer of it.
    pub fn open(
        ctx: &Arc<CudaContext>,
        handle: &[u8; IPC_HANDLE_BYTES],
        bytes: usize,
    ) -> Result<IpcMapping> {
        driver()?;
        bind(ctx)?;
        let mut h = sys::CUipcMemHandle {
            reserved: [0; IPC_HANDLE_BYTES],
        };
        for (o, b) in h.reserved.iter_mut().zip(handle.iter()) {
            *o = *b as std::ffi::c_char;
        }
        let mut ptr: CUdeviceptr = 0;
        // SAFETY: `ptr` is written by the call; the handle is plain bytes
        // (a stale or forged one makes the driver return an error).
        check("cuIpcOpenMemHandle", unsafe {
            sys::cuIpcOpenMemHandle_v2(
                &mut ptr,
                h,
                sys::CUipcMem_flags_enum::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32,
            )
        })?;
        let mapping = IpcMapping {
            ctx: ctx.clone(),
            ptr,
            bytes,
        };
        // `bytes` is what a peer's descriptor claims: readers size host
        // and device buffers by it, so it must not exceed what was mapped.
        let (mut base, mut size) = (0, 0usize);
        // SAFETY: writes two values; `ptr` is the live mapping just opened
        // (closed by `mapping`'s drop if this fails).
        check("cuMemGetAddressRange", unsafe {
            sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr)
        })?;
        let mapped = size.saturating_sub((ptr - base) as usize);
        if bytes > mapped {
            return Err(Error::Driver {
                call: "cuIpcOpenMemHandle",
                message: format!("the handle maps {mapped} bytes, {bytes} were claimed"),
            });
        }
        Ok(mapping)
    }

    /// The device address in this process.
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The context it is open in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

impl Drop for IpcMapping {
    fn drop(&mut self) {
        let _ = bind(&self.ctx);
        // SAFETY: `ptr` came from cuIpcOpenMemHandle in this context and is
        // closed exactly once, here.
        let _ = unsafe { sys::cuIpcCloseMemHandle(self.ptr) };
    }
}

/// The device's UUID (stable across processes, whatever each one's
/// `CUDA_VISIBLE_DEVICES` numbering). Needs no context: looking a device
/// up must not set up every GPU of the node. Read once per process (the
/// devices a process sees do not change), as every `get` of a device
/// object looks its device up.
pub fn device_uuid(ordinal: usize) -> Result<[u8; 16]> {
    let uuids = uuids()?;
    uuids.get(ordinal).copied().ok_or(Error::NoSuchDevice {
        ordinal,
        count: uuids.len(),
    })
}

fn uuids() -> Result<&'static [[u8; 16]]> {
    static UUIDS: std::sync::OnceLock<Vec<[u8; 16]>> = std::sync::OnceLock::new();
    if let Some(u) = UUIDS.get() {
        return Ok(u);
    }
    let mut all = Vec::new();
    for ordinal in 0..crate::device_count()? {
        let dev = cudarc::driver::result::device::get(ordinal as i32)
            .map_err(|e| crate::driver_error("cuDeviceGet", e))?;
        let u = cudarc::driver::result::device::get_uuid(dev)
            .map_err(|e| crate::driver_error("cuDeviceGetUuid", e))?;
        let mut out = [0u8; 16];
        for (o, b) in out.iter_mut().zip(u.bytes.iter()) {
            *o = *b as u8;
        }
        all.push(out);
    }
    Ok(UUIDS.get_or_init(|| all))
}

/// The ordinal under which this process sees the device with `uuid`.
pub fn ordinal_of(uuid: &[u8; 16]) -> Result<Option<usize>> {
    Ok(uuids()?.iter().position(|u| u == uuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large copy to host (through the pinned bounce buffers, chunk
    /// boundaries and a short last chunk included) gives every byte, as a
    /// small direct one does. Runs where there is a GPU (gpu-check.sh).
    #[test]
    fn copies_to_host_give_every_byte() {
        if crate::device_count().unwrap_or(0) == 0 {
            return; // no device: lib.rs's test covers the error path
        }
        for n in [1000, BOUNCE_MIN, 3 * BOUNCE_CHUNK + 12_345] {
            let host: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let buf = crate::to_device(0, &host).expect("to device");
            let stream = buf.stream().clone();
            let mut back = vec![0u8; n];
            {
                let (ptr, _done) = buf.device_ptr(&stream);
                stream.synchronize().expect("sync");
                copy_to_host(stream.context(), ptr, n, &mut back).expect("to host");
            }
            assert!(back == host, "{n} bytes differ after the copy");
        }
    }
}
