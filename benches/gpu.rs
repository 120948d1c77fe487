//! The GPU rows of `make bench` (feature `cuda`): they run only where a
//! CUDA driver and a device are, and print nothing else otherwise. One JSON
//! object per line, in microbench's shape, with the card's name in `extra`:
//!
//! - `gpu_ipc_get_gb_per_s`: a task on the node (another process, same
//!   GPU) gets a 256 MiB device object through CUDA IPC and copies it into
//!   its own device memory; `extra.reference_gb_per_s` is a bare
//!   `cuMemcpyDtoD` of the same bytes in one process (target >= 0.9x).
//! - `gpu_to_host_other_process_gb_per_s`: the same object read into that
//!   task's host memory; reference: a bare `cuMemcpyDtoH`.
//! - `gpu_small_put_get_us`: put of a 4 KiB device buffer, get by its owner.
//!
//! Values are medians over the repetitions; each row first runs once
//! untimed.

use rustray::cuda::{self, DeviceRef};
use std::time::{Duration, Instant};

const BIG: usize = 256 << 20;
const REPS: usize = 5;

/// Gets `obj` on this task's GPU and copies it into memory the task owns:
/// the seconds it took, and of those the seconds `get` took (opening the
/// owner's memory).
#[rustray::remote]
fn ipc_get_copy(obj: DeviceRef<u8>) -> Result<(f64, f64), String> {
    let t0 = Instant::now();
    let dev = obj.get().map_err(|e| e.to_string())?;
    let opened = t0.elapsed().as_secs_f64();
    let own = dev.to_slice().map_err(|e| e.to_string())?;
    let dt = t0.elapsed().as_secs_f64();
    drop(own);
    Ok((dt, opened))
}

/// Reads `obj` into this task's host memory: the seconds it took.
#[rustray::remote]
fn ipc_to_host(obj: DeviceRef<u8>) -> Result<f64, String> {
    let t0 = Instant::now();
    let host = obj.to_host().map_err(|e| e.to_string())?;
    let dt = t0.elapsed().as_secs_f64();
    assert_eq!(host.len(), BIG);
    Ok(dt)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn row(scenario: &str, unit: &str, value: f64, n: usize, card: &str, extra: &str) {
    println!(
        "{{\"scenario\": \"{scenario}\", \"unit\": \"{unit}\", \"value\": {value:.4}, \"n\": {n}, \"reps\": {REPS}, \"impl\": \"rustray-{}\", \"extra\": {{\"card\": \"{card}\"{extra}}}}}",
        env!("CARGO_PKG_VERSION")
    );
}

/// Runs `f` once untimed, then `REPS` times: the median of what it returns.
fn timed(mut f: impl FnMut() -> f64) -> f64 {
    f();
    median((0..REPS).map(|_| f()).collect())
}

fn main() {
    if std::env::var_os("RUSTRAY_ROLE").is_some() {
        let _ = rustray::init();
        return;
    }
    let count = cuda::device_count().unwrap_or(0);
    if count == 0 {
        eprintln!("[bench-gpu] no CUDA driver or device here: no GPU rows");
        return;
    }
    rustray::init_with(rustray::Config::new().num_cpus(2.0)).expect("cluster starts");
    let ctx = cuda::context(0).expect("GPU 0");
    let card = ctx.name().unwrap_or_else(|_| "unknown".into());
    let stream = ctx.default_stream();
    let gb = |secs: f64| BIG as f64 / secs / 1e9;

    // References: bare driver copies of the same bytes in one process.
    let src = cuda::to_device(0, &vec![7u8; BIG]).expect("source buffer");
    let mut dst = stream.alloc_zeros::<u8>(BIG).expect("destination buffer");
    let dtod = timed(|| {
        let t0 = Instant::now();
        stream.memcpy_dtod(&src, &mut dst).expect("cuMemcpyDtoD");
        stream.synchronize().expect("sync");
        t0.elapsed().as_secs_f64()
    });
    let dtoh = timed(|| {
        let t0 = Instant::now();
        let v = stream.clone_dtoh(&src).expect("cuMemcpyDtoH");
        let dt = t0.elapsed().as_secs_f64();
        assert_eq!(v.len(), BIG);
        dt
    });
    drop(dst);

    let obj = cuda::put(&src).expect("put");
    drop(src);
    let in_task = |f: &dyn Fn() -> rustray::ObjectRef<Result<f64, String>>| {
        timed(|| {
            rustray::get_timeout(&f(), Duration::from_secs(120))
                .expect("task")
                .expect("GPU read in the task")
        })
    };
    let mut opens = Vec::new();
    let get = timed(|| {
        let r = ipc_get_copy::options()
            .num_gpus(1.0)
            .remote(obj.clone())
            .unwrap();
        let (dt, open) = rustray::get_timeout(&r, Duration::from_secs(120))
            .expect("task")
            .expect("GPU read in the task");
        opens.push(open);
        dt
    });
    row(
        "gpu_ipc_get_gb_per_s",
        "GB/s",
        gb(get),
        BIG,
        &card,
        &format!(
            ", \"reference_gb_per_s\": {:.3}, \"ratio\": {:.3}, \"get_open_us\": {:.1}",
            gb(dtod),
            dtod / get,
            median(opens) * 1e6
        ),
    );
    let host = in_task(&|| {
        ipc_to_host::options()
            .num_gpus(1.0)
            .remote(obj.clone())
            .unwrap()
    });
    row(
        "gpu_to_host_other_process_gb_per_s",
        "GB/s",
        gb(host),
        BIG,
        &card,
        &format!(
            ", \"reference_gb_per_s\": {:.3}, \"ratio\": {:.3}",
            gb(dtoh),
            dtoh / host
        ),
    );
    drop(obj);

    let small = cuda::to_device(0, &[1u8; 4096]).expect("small buffer");
    let mut samples = Vec::new();
    for i in 0..1001 {
        let t0 = Instant::now();
        let o = cuda::put(&small).expect("put");
        let d = o.get().expect("get");
        let dt = t0.elapsed().as_secs_f64() * 1e6;
        drop(d);
        drop(o);
        if i > 0 {
            samples.push(dt);
        }
    }
    row(
        "gpu_small_put_get_us",
        "us",
        median(samples),
        1000,
        &card,
        "",
    );
    rustray::shutdown();
}
