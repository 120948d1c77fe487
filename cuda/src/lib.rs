//! rustray's GPU device layer over `cudarc`: finding the CUDA driver at run
//! time, counting devices, and the per-device contexts of this process.
//!
//! Why a crate of its own: `cudarc` is kept out of the default build (it
//! is compiled only with rustray's `cuda` feature), and every call into
//! the driver goes through one check first. `cudarc` with dynamic loading
//! *panics* on its first driver call when `libcuda` cannot be loaded, and
//! again on every later call; a process built with `panic = "abort"`
//! would die. So [`driver`] tries the `dlopen` alone (which never panics)
//! once, caches the answer, and every function here returns
//! [`Error::NoDriver`] rather than reaching `cudarc` without a driver.
//!
//! Device ordinals here are the process's own (CUDA numbers the devices
//! `CUDA_VISIBLE_DEVICES` shows from 0); rustray's scheduler speaks in the
//! node's device ids, which is what `CUDA_VISIBLE_DEVICES` lists.

mod buffer;

pub use buffer::{
    copy_to_host, copy_to_slice, device_uuid, ordinal_of, DeviceBuffer, IpcMapping,
    IPC_HANDLE_BYTES,
};
pub use cudarc::driver::sys::CUdeviceptr;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

pub use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr};

/// What went wrong with a GPU call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// `libcuda` could not be loaded: no NVIDIA driver on this machine.
    NoDriver,
    /// The driver is there but has no device with this ordinal.
    NoSuchDevice { ordinal: usize, count: usize },
    /// The driver refused a call.
    Driver { call: &'static str, message: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoDriver => write!(
                f,
                "no CUDA driver: libcuda.so could not be loaded (is the NVIDIA driver installed on this node?)"
            ),
            Error::NoSuchDevice { ordinal, count } => write!(
                f,
                "no GPU {ordinal} in this process: it sees {count} (CUDA_VISIBLE_DEVICES={})",
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
            ),
            Error::Driver { call, message } => write!(f, "CUDA {call} failed: {message}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn driver_error(call: &'static str, e: cudarc::driver::DriverError) -> Error {
    Error::Driver {
        call,
        message: format!("{e:?}"),
    }
}

/// The oldest driver API accepted: CUDA 12.0, the version this build's
/// bindings were generated for.
const MIN_DRIVER_API: i32 = 12000;

/// Whether a CUDA driver of at least CUDA 12.0's API can be loaded here
/// (tried once).
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: is_culib_present only tries to dlopen the library names
        // and closes what it opened; it calls no driver function and has
        // no preconditions.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return false;
        }
        // An older driver than the API this build speaks would hit
        // cudarc's "missing symbol" panic on some later call: refuse it
        // here. cuDriverGetVersion exists in every driver.
        let mut version = 0;
        // SAFETY: the library loads (checked above); the call writes one
        // int and needs no context.
        let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
        r.result().is_ok() && version >= MIN_DRIVER_API
    })
}

/// Ok when the driver can be used; the check every call here makes first.
pub fn driver() -> Result<()> {
    if driver_present() {
        Ok(())
    } else {
        Err(Error::NoDriver)
    }
}

/// The GPUs this process sees (those `CUDA_VISIBLE_DEVICES` lets through).
pub fn device_count() -> Result<usize> {
    driver()?;
    match CudaContext::device_count() {
        Ok(n) => Ok(usize::try_from(n).unwrap_or(0)),
        // cuInit says so when CUDA_VISIBLE_DEVICES hides every device (a
        // task granted no GPU): none, not a failure.
        Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_NO_DEVICE => Ok(0),
        Err(e) => Err(driver_error("cuDeviceGetCount", e)),
    }
}

/// This process's context on device `ordinal` (the primary context,
/// shared by every caller in the process, made on first use).
pub fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
    static CONTEXTS: OnceLock<Mutex<HashMap<usize, Arc<CudaContext>>>> = OnceLock::new();
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::NoSuchDevice { ordinal, count });
    }
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = contexts.get(&ordinal) {
        return Ok(c.clone());
    }
    let c = CudaContext::new(ordinal).map_err(|e| driver_error("cuDevicePrimaryCtxRetain", e))?;
    contexts.insert(ordinal, c.clone());
    Ok(c)
}

/// Copies a device buffer to host memory.
pub fn to_host<T: DeviceRepr>(buf: &CudaSlice<T>) -> Result<Vec<T>> {
    driver()?;
    buf.stream()
        .clone_dtoh(buf)
        .map_err(|e| driver_error("cuMemcpyDtoH", e))
}

/// Copies host memory to a new buffer on device `ordinal`.
pub fn to_device<T: DeviceRepr>(ordinal: usize, host: &[T]) -> Result<CudaSlice<T>> {
    let ctx = context(ordinal)?;
    ctx.default_stream()
        .clone_htod(host)
        .map_err(|e| driver_error("cuMemcpyHtoD", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver every call is a clear error, never a panic; with
    /// one, the calls agree with each other.
    #[test]
    fn every_call_checks_for_the_driver_first() {
        if driver_present() {
            let n = device_count().expect("a driver answers");
            assert!(matches!(
                context(n),
                Err(Error::NoSuchDevice { ordinal, count }) if ordinal == n && count == n
            ));
            return;
        }
        assert_eq!(device_count(), Err(Error::NoDriver));
        assert_eq!(context(0).err(), Some(Error::NoDriver));
        assert_eq!(to_device(0, &[1u32, 2, 3]).err(), Some(Error::NoDriver));
        let e = Error::NoDriver.to_string();
        assert!(e.contains("no CUDA driver"), "{e}");
    }
}
