//! GPUs as scheduled devices, on nodes declared with GPUs (no GPU needed):
//! which device ids a task or actor is given, what its
//! `CUDA_VISIBLE_DEVICES` says, fractional sharing, and the accounting.
//! Each test names the Ray test it follows.

mod common;

use rustray::{Config, ErrorKind};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the running task sees: its GPU ids and its `CUDA_VISIBLE_DEVICES`.
type View = (Vec<u32>, String);

fn view() -> View {
    (
        rustray::get_gpu_ids(),
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into()),
    )
}

/// The ids as `CUDA_VISIBLE_DEVICES` should list them.
fn joined(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[rustray::remote]
fn gpu_view(ms: u64) -> View {
    std::thread::sleep(Duration::from_millis(ms));
    view()
}

pub struct GpuHolder {
    built: View,
}

#[rustray::actor]
impl GpuHolder {
    pub fn new() -> Self {
        GpuHolder { built: view() }
    }

    /// What the constructor saw, and what a method sees now.
    pub fn views(&self) -> (View, View) {
        (self.built.clone(), view())
    }
}

fn gpu_node(cpus: f64, gpus: f64) {
    rustray::init_with(Config::new().num_cpus(cpus).num_gpus(gpus)).expect("cluster starts");
}

fn get<T: serde::de::DeserializeOwned + 'static>(r: &rustray::ObjectRef<T>) -> T {
    rustray::get_timeout(r, Duration::from_secs(60)).expect("result")
}

/// The GPU amount the cluster has free comes back to `total`.
fn gpus_come_back(total: f64) {
    common::wait_until("the GPUs are given back", Duration::from_secs(20), || {
        rustray::available_resources()
            .ok()
            .and_then(|a| a.get("GPU").copied())
            == Some(total)
    });
}

/// test_advanced_2.py::test_gpu_ids: concurrent tasks holding GPUs get
/// distinct devices, and their `CUDA_VISIBLE_DEVICES` is exactly those;
/// `num_gpus(0)` sees none.
fn test_gpu_ids() {
    gpu_node(10.0, 10.0);
    let all: Vec<u32> = (0..10).collect();
    // Ten 1-GPU tasks at once: each id once.
    let refs: Vec<_> = (0..10)
        .map(|_| gpu_view::options().num_gpus(1.0).remote(1500).unwrap())
        .collect();
    let mut seen = Vec::new();
    for r in &refs {
        let (ids, env) = get(r);
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(env, joined(&ids));
        seen.extend(ids);
    }
    seen.sort_unstable();
    assert_eq!(seen, all, "each device once");
    // 2, 4 and 4 at once cover all ten.
    let refs: Vec<_> = [2.0, 4.0, 4.0]
        .iter()
        .map(|&k| gpu_view::options().num_gpus(k).remote(1500).unwrap())
        .collect();
    let mut seen = Vec::new();
    for (r, k) in refs.iter().zip([2, 4, 4]) {
        let (ids, env) = get(r);
        assert_eq!(ids.len(), k, "{ids:?}");
        assert_eq!(env, joined(&ids));
        seen.extend(ids);
    }
    seen.sort_unstable();
    assert_eq!(seen, all);
    // No GPU asked: none seen, also on a reused worker.
    for _ in 0..3 {
        assert_eq!(
            get(&gpu_view::remote(0).unwrap()),
            (Vec::new(), String::new())
        );
    }
    // Alternating requests on reused workers: the variable always matches.
    for i in 0..20 {
        let k = [0.0, 1.0, 0.5, 2.0][i % 4];
        let (ids, env) = get(&gpu_view::options().num_gpus(k).remote(0).unwrap());
        assert_eq!(ids.len(), k.ceil() as usize, "{k}: {ids:?}");
        assert_eq!(env, joined(&ids), "{k}");
    }
    gpus_come_back(10.0);
}

/// test_actor_resources.py::test_actor_gpus and its fractional case: an
/// actor's devices are fixed for its life (constructor and methods see the
/// same), six 0.5-GPU actors on three GPUs give each id to exactly two,
/// and the GPUs come back when the actors end.
fn test_actor_gpus() {
    gpu_node(2.0, 3.0);
    let whole: Vec<_> = (0..3)
        .map(|_| {
            GpuHolder::options()
                .num_gpus(1.0)
                .remote(())
                .expect("actor")
        })
        .collect();
    let mut seen = Vec::new();
    for a in &whole {
        let (built, now) = get(&a.views());
        assert_eq!(built, now, "the constructor and a method see the same");
        assert_eq!(built.0.len(), 1);
        assert_eq!(built.1, joined(&built.0));
        seen.extend(built.0);
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2]);
    // More than the node has in total is infeasible, not queued forever.
    let e = GpuHolder::options()
        .num_gpus(4.0)
        .remote(())
        .and_then(|a| rustray::get_timeout(&a.views(), Duration::from_secs(30)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
    drop(whole);
    gpus_come_back(3.0);

    let halves: Vec<_> = (0..6)
        .map(|_| {
            GpuHolder::options()
                .num_gpus(0.5)
                .remote(())
                .expect("actor")
        })
        .collect();
    let mut count: BTreeMap<u32, usize> = BTreeMap::new();
    for a in &halves {
        let (built, now) = get(&a.views());
        assert_eq!(built, now);
        assert_eq!(built.0.len(), 1, "a fraction is one shared device");
        assert_eq!(built.1, joined(&built.0));
        *count.entry(built.0[0]).or_default() += 1;
    }
    assert_eq!(count, BTreeMap::from([(0, 2), (1, 2), (2, 2)]));
    drop(halves);
    gpus_come_back(3.0);
}

/// test_advanced_2.py::test_fractional_resources: many random fractional
/// and whole GPU tasks all run, no device is ever given beyond what it has
/// (two holders of a half never exceed one device), and the available
/// amount comes back exactly to the total.
fn test_fractional_gpu_accounting() {
    gpu_node(8.0, 4.0);
    let shapes = [0.1, 0.25, 0.5, 0.3, 1.0, 2.0, 0.2];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let refs: Vec<_> = (0..200)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = shapes[(rng % shapes.len() as u64) as usize];
            (k, gpu_view::options().num_gpus(k).remote(5).unwrap())
        })
        .collect();
    for (k, r) in &refs {
        let (ids, env) = get(r);
        assert_eq!(ids.len(), k.ceil() as usize, "{k}: {ids:?}");
        assert!(ids.iter().all(|i| *i < 4), "{ids:?}");
        assert_eq!(env, joined(&ids));
    }
    gpus_come_back(4.0);
    assert_eq!(
        rustray::cluster_resources().expect("view").get("GPU"),
        Some(&4.0)
    );
}

/// A node's GPU count is a whole number of devices: a clear error, before
/// anything starts.
fn test_node_gpus_must_be_whole() {
    let e = rustray::init_with(Config::new().num_gpus(1.5)).unwrap_err();
    assert!(e.message().contains("whole number"), "{e}");
}

/// Round-trips `n` values through device 0 of the task.
#[cfg(feature = "cuda")]
#[rustray::remote]
fn on_device(n: u32) -> Result<(usize, Vec<u32>, u64), String> {
    let seen = rustray::cuda::device_count().map_err(|e| e.to_string())?;
    let host: Vec<u32> = (0..n).collect();
    let buf = rustray::cuda::to_device(0, &host).map_err(|e| e.to_string())?;
    let back = rustray::cuda::to_host(&buf).map_err(|e| e.to_string())?;
    Ok((
        seen,
        rustray::get_gpu_ids(),
        back.iter().map(|&x| x as u64).sum(),
    ))
}

/// On a machine with a GPU (run by `cuda/gpu-check.sh`): the node finds
/// its devices through the driver, and a 1-GPU task sees exactly one
/// device, round-trips data through it, and reports its id. Without a
/// driver the node offers no GPU and the task's CUDA calls are clear errors.
#[cfg(feature = "cuda")]
fn test_gpu_tasks_use_their_device() {
    rustray::init_with(Config::new().num_cpus(2.0)).expect("cluster starts");
    let gpus = rustray::cluster_resources()
        .expect("view")
        .get("GPU")
        .copied()
        .unwrap_or(0.0);
    let count = rustray::cuda::device_count().unwrap_or(0);
    if count == 0 {
        assert_eq!(gpus, 0.0, "no usable GPU, none detected");
        let e = get(&on_device::remote(4).unwrap()).unwrap_err();
        if !rustray::cuda::driver_present() {
            assert!(e.contains("no CUDA driver"), "{e}");
        }
        println!("no CUDA device here: the GPU half of this test did not run");
        return;
    }
    assert_eq!(gpus, count as f64, "the driver's devices are the node's");
    let (seen, ids, sum) =
        get(&on_device::options().num_gpus(1.0).remote(1 << 20).unwrap()).expect("runs on its GPU");
    assert_eq!(seen, 1, "a 1-GPU task sees one device");
    assert_eq!(ids.len(), 1);
    assert_eq!(sum, (0..1u64 << 20).sum::<u64>());
    println!("ran on a GPU: {count} devices, task held {ids:?}");
}

/// Reads a device object passed as an argument: its values through host
/// memory, its copy on the task's GPU, and its values as a plain
/// `rustray::get` of host values gives them; and where the task ran.
#[cfg(feature = "cuda")]
#[rustray::remote]
fn read_device_object(
    obj: rustray::cuda::DeviceRef<u32>,
) -> Result<(u64, u64, u64, String), String> {
    let host = obj.to_host().map_err(|e| e.to_string())?;
    let dev = obj.get().map_err(|e| e.to_string())?;
    let again = dev.to_host().map_err(|e| e.to_string())?;
    let plain = rustray::get(&obj.host_ref()).map_err(|e| e.to_string())?;
    let sum = |v: &[u32]| v.iter().map(|&x| x as u64).sum::<u64>();
    Ok((
        sum(&host),
        sum(&again),
        sum(&plain),
        rustray::node_name().map_err(|e| e.to_string())?,
    ))
}

/// GPU-resident objects (run by `cuda/gpu-check.sh` on a GPU machine): a
/// put keeps the bytes on the device; the owner reads its own buffer,
/// a task on the node opens it by CUDA IPC, a task on another node gets
/// it staged through host memory; the device memory counts against the
/// GPU and comes back when the last reference goes. Without a driver the
/// calls are clear errors.
#[cfg(feature = "cuda")]
fn test_device_objects() {
    if rustray::cuda::device_count().unwrap_or(0) == 0 {
        let e = rustray::cuda::to_device(0, &[1u32]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Gpu, "{e}");
        println!("no CUDA device here: device objects did not run");
        return;
    }
    rustray::init_with(Config::new().local_nodes(2).num_cpus(2.0)).expect("cluster starts");
    let n = 1u32 << 22; // 16 MiB
    let want: u64 = (0..n as u64).sum();
    let buf = rustray::cuda::to_device(0, &(0..n).collect::<Vec<u32>>()).expect("on the GPU");
    let obj = rustray::cuda::put(&buf).expect("put");
    drop(buf); // the object is its own copy
    assert_eq!(rustray::cuda::device_object_usage(0), (1, 4 * n as u64));
    // The owner: its own buffer, no copy.
    let mine = obj.get().expect("owner's get");
    assert_eq!(mine.len(), n as usize);
    assert_eq!(mine.to_host().expect("to host").len(), n as usize);
    // Code that does not care where the bytes are: a plain get of host
    // values copies them from the device.
    let plain: Vec<u32> = rustray::get(&obj.host_ref()).expect("get as host values");
    assert_eq!(plain.iter().map(|&x| x as u64).sum::<u64>(), want);
    let nodes = rustray::nodes().expect("nodes");
    for node in &nodes {
        let r = read_device_object::options()
            .num_gpus(1.0)
            .scheduling_strategy(rustray::SchedulingStrategy::NodeAffinity {
                node: node.name.clone(),
                soft: false,
            })
            .remote(obj.clone())
            .unwrap();
        let (host, dev, plain, ran) = get(&r).expect("a task reads the device object");
        assert_eq!((host, dev, plain), (want, want, want), "on {ran}");
        assert_eq!(ran, node.name);
    }
    drop(mine);
    drop(obj);
    common::wait_until(
        "the device memory is freed",
        Duration::from_secs(20),
        || rustray::cuda::device_object_usage(0) == (0, 0),
    );
    println!("device objects ran on a GPU");
}

fn main() {
    common::enter_cluster_role();
    if common::launched() {
        // These tests declare their own nodes' GPUs.
        common::run(&[]);
        return;
    }
    common::run(&[
        ("test_gpu_ids", test_gpu_ids),
        ("test_actor_gpus", test_actor_gpus),
        (
            "test_fractional_gpu_accounting",
            test_fractional_gpu_accounting,
        ),
        ("test_node_gpus_must_be_whole", test_node_gpus_must_be_whole),
        #[cfg(feature = "cuda")]
        (
            "test_gpu_tasks_use_their_device",
            test_gpu_tasks_use_their_device,
        ),
        #[cfg(feature = "cuda")]
        ("test_device_objects", test_device_objects),
    ]);
}
