//! GPUs through the CUDA driver (cargo feature `cuda`): how many devices a
//! node has when nothing else says, and the device layer user code on a
//! GPU worker reaches for (`context`, copies), with rustray's errors.
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

use crate::error::{Error, ErrorKind, Result};
use std::sync::Arc;

pub use rustray_cuda::{CudaContext, CudaSlice, CudaStream, DeviceRepr};

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
