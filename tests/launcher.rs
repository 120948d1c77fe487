//! `rust-ray-launch` end to end: `--local-nodes` on this machine, and `srun`
//! / `sbatch` on the emulated Slurm cluster that `make test` brings up
//! (slurm/emu-up.sh). This test binary is also the application the launcher
//! runs (`APP_MODE` set), so its workers are this binary too.
//!
//! The Slurm tests fail, rather than skip, when no Slurm cluster answers:
//! set `RUSTRAY_SKIP_SLURM=1` to run the rest on a machine without one.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[rustray::remote]
fn where_am_i(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    rustray::node_name().expect("node name")
}

/// The GPUs a task holds, as it sees them, after a pause (so that tasks
/// sent together hold their devices at once).
#[rustray::remote]
fn gpus_seen(ms: u64) -> (Vec<u32>, String) {
    std::thread::sleep(Duration::from_millis(ms));
    (
        rustray::get_gpu_ids(),
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
    )
}

#[rustray::remote]
fn where_and_raylet(ms: u64) -> (String, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    // A worker's parent is its node's raylet.
    (
        rustray::node_name().expect("node name"),
        std::os::unix::process::parent_id(),
    )
}

#[rustray::remote]
fn fill(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8) ^ seed).collect()
}

#[rustray::remote]
fn boom() -> u32 {
    panic!("the second driver's own failure")
}

/// A named actor two drivers share.
pub struct Tally {
    n: u64,
}

#[rustray::actor]
impl Tally {
    pub fn new() -> Self {
        Tally { n: 0 }
    }
    pub fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }
}

/// A second driver (Ray's `ray.init(address="auto")`): not started by the
/// launcher (no RUSTRAY_ADDRESS), it finds the running cluster through its
/// rendezvous file, uses the first driver's named actor, runs tasks (one
/// failing: its own error), holds an object, and exits.
fn second_driver() -> ! {
    rustray::init_address("auto").expect("joins the running cluster");
    let t = rustray::get_actor::<Tally>("tally").expect("the first driver's actor");
    let n = rustray::get_timeout(&t.add(5), Duration::from_secs(30)).expect("actor call");
    let e = rustray::get_timeout(&boom::remote().unwrap(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), rustray::ErrorKind::TaskFailed, "{e}");
    let held = rustray::put(vec![1u8; 8 << 20]).expect("put");
    // Its actors: one that ends with it, one detached that outlives it.
    let own = Tally::options()
        .name("second_owned")
        .remote(())
        .expect("actor");
    let kept = Tally::options()
        .name("second_detached")
        .lifetime_detached()
        .remote(())
        .expect("actor");
    for a in [&own, &kept] {
        rustray::get_timeout(&a.add(1), Duration::from_secs(30)).expect("actor call");
    }
    let node = rustray::get(&where_am_i::remote(0u64).unwrap()).expect("task");
    println!(
        "second driver: tally {n}, task ran on {node}, holds {} bytes",
        rustray::get_view(&held).expect("view").len()
    );
    rustray::shutdown();
    std::process::exit(0);
}

/// A rank of an in-situ step (every rank calls `init`) in which rank 2
/// never does: it hangs instead, as a rank stuck before `init` would.
/// Rank 0 stays at work for a minute, so the step can fail in time only
/// if rank 0 watches the join while its `main` runs.
fn insitu_straggler() -> ! {
    let rank = std::env::var("SLURM_PROCID").unwrap_or_default();
    if rank == "2" {
        std::thread::sleep(Duration::from_secs(90));
        std::process::exit(0);
    }
    rustray::init().expect("an in-situ rank joins");
    if rank == "0" {
        std::thread::sleep(Duration::from_secs(60));
    }
    rustray::shutdown();
    println!(
        "rank {} left",
        std::env::var("SLURM_PROCID").unwrap_or_default()
    );
    std::process::exit(0);
}

/// The application side: what the launcher runs as the driver.
fn app_main(mode: &str) -> ! {
    rustray::init().expect("the driver joins the launcher's cluster");
    let nodes = rustray::nodes().expect("node table");
    match mode {
        "app" => {
            for n in &nodes {
                let pin = format!("node:{}", n.name);
                let r = where_am_i::options()
                    .resource(&pin, 0.01)
                    .remote(0u64)
                    .unwrap();
                let got = rustray::get(&r).expect("a task on every node");
                assert_eq!(got, n.name);
                // An object made on that node, read here.
                let big = fill::options()
                    .resource(&pin, 0.01)
                    .remote(4 << 20, 7u8)
                    .unwrap();
                let v = rustray::get(&big).expect("object from that node");
                assert!(v.iter().enumerate().all(|(i, b)| *b == (i as u8) ^ 7));
            }
            println!("nodes used: {}", nodes.len());
            for n in &nodes {
                let cpu = n.total.iter().find(|(k, _)| k == "CPU").map(|(_, v)| *v);
                let gpu = n.total.iter().find(|(k, _)| k == "GPU").map(|(_, v)| *v);
                let mem = n.total.iter().find(|(k, _)| k == "memory").map(|(_, v)| *v);
                println!(
                    "node {} {} cpu={} gpu={} memory={}",
                    n.name,
                    n.address,
                    cpu.unwrap_or(0.0),
                    gpu.unwrap_or(0.0),
                    mem.unwrap_or(0.0)
                );
            }
            rustray::shutdown();
            std::process::exit(0);
        }
        "gpus" => {
            // Every node's GRES devices are held by two 1-GPU tasks at
            // once: each gets one, and its CUDA_VISIBLE_DEVICES says so.
            for n in &nodes {
                let pin = format!("node:{}", n.name);
                let refs: Vec<_> = (0..2)
                    .map(|_| {
                        gpus_seen::options()
                            .num_gpus(1.0)
                            .resource(&pin, 0.01)
                            .remote(500u64)
                            .unwrap()
                    })
                    .collect();
                let mut ids = Vec::new();
                for r in &refs {
                    let (got, env) = rustray::get(r).expect("a GPU task");
                    assert_eq!(got.len(), 1, "{got:?}");
                    assert_eq!(env, got[0].to_string());
                    ids.extend(got);
                }
                ids.sort_unstable();
                println!("gpus of {}: {ids:?}", n.name);
            }
            println!(
                "slurm gave CUDA_VISIBLE_DEVICES={}",
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
            );
            rustray::shutdown();
            std::process::exit(0);
        }
        "nodeloss" => {
            // Kill the last node's raylet mid-job (the emulated nodes share
            // one PID namespace): its tasks finish elsewhere.
            let victim = nodes.last().expect("nodes").name.clone();
            let pin = format!("node:{victim}");
            let probe = where_and_raylet::options()
                .resource(&pin, 0.01)
                .remote(0u64)
                .unwrap();
            let (_, raylet) = rustray::get(&probe).expect("probe");
            let refs: Vec<_> = (0..6)
                .map(|_| where_and_raylet::remote(1500u64).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(500));
            let killed = Command::new("kill")
                .args(["-9", &raylet.to_string()])
                .status()
                .expect("kill");
            assert!(killed.success());
            for r in &refs {
                let (node, _) = rustray::get_timeout(r, Duration::from_secs(60))
                    .expect("tasks finish despite the lost node");
                assert_ne!(node, victim);
            }
            println!("survived the loss of {victim}");
            rustray::shutdown();
            std::process::exit(0);
        }
        "two_drivers" => {
            let t = Tally::options().name("tally").remote(()).expect("actor");
            let before = rustray::store_stats().expect("stats").used_bytes;
            let out = Command::new(me())
                .env("APP_MODE", "second_driver")
                .env_remove("RUSTRAY_ADDRESS")
                .output()
                .expect("second driver runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("second driver: tally 5"), "{text}");
            assert_eq!(rustray::get(&t.add(1)).expect("call"), 6);
            // What the second driver held went with it.
            let end = Instant::now() + Duration::from_secs(10);
            while rustray::store_stats().expect("stats").used_bytes > before {
                assert!(
                    Instant::now() < end,
                    "the second driver's object was not freed"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // Its detached actor outlives it; the other ended with it
            // (Ray's non-detached actors fate-share with their driver).
            let kept = rustray::get_actor::<Tally>("second_detached").expect("detached actor");
            assert_eq!(rustray::get(&kept.add(1)).expect("call"), 2);
            let end = Instant::now() + Duration::from_secs(10);
            while rustray::get_actor::<Tally>("second_owned").is_ok() {
                assert!(
                    Instant::now() < end,
                    "the second driver's actor outlived it"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            print!("{text}");
            println!("two drivers shared the cluster");
            rustray::shutdown();
            std::process::exit(0);
        }
        "spill" => {
            // The launcher's store is 64 MiB here: 96 MiB of objects spill
            // under the --spill-dir it was given (SPILL_DIR).
            let dir = std::env::var("SPILL_DIR").expect("SPILL_DIR");
            let refs: Vec<_> = (0..6u8)
                .map(|i| rustray::put(vec![i; 16 << 20]).expect("put spills"))
                .collect();
            let s = rustray::store_stats().expect("stats");
            let here = std::fs::read_dir(&dir)
                .expect("spill dir")
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("rustray-spill-")
                })
                .count();
            assert!(
                s.spilled_objects >= 2 && here >= 1,
                "{s:?}, {here} dirs in {dir}"
            );
            for (i, r) in refs.iter().enumerate() {
                let v = rustray::get_view(r).expect("read back");
                assert!(v.iter().all(|b| *b == i as u8), "object {i} corrupted");
            }
            // The store itself is a file in the --store-dir (STORE_DIR).
            let store_dir = std::env::var("STORE_DIR").expect("STORE_DIR");
            let stores: Vec<_> = std::fs::read_dir(&store_dir)
                .expect("store dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                stores.len() == 1 && stores[0].starts_with("rustray-"),
                "one store file in the --store-dir {store_dir}: {stores:?}"
            );
            println!(
                "spilled {} objects under the --spill-dir",
                s.spilled_objects
            );
            rustray::shutdown();
            std::process::exit(0);
        }
        "exit3" => std::process::exit(3),
        "wait" => {
            println!("waiting");
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(0);
        }
        other => panic!("unknown APP_MODE {other}"),
    }
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/launcher-<hash>
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf()
}

fn launcher() -> PathBuf {
    let p = target_dir().join("rust-ray-launch");
    assert!(
        p.exists(),
        "{} is missing: build it (cargo build --release -p rust-ray-launch)",
        p.display()
    );
    p
}

fn me() -> PathBuf {
    std::env::current_exe().expect("test exe")
}

/// A private rendezvous directory per test run.
fn rdv_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("rustray-launch-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("rendezvous dir");
    d
}

/// Runs `cmd` with a bound; kills it if it overruns.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < limit {
            if d2.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let out = child.wait_with_output().expect("command output");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    out
}

fn text(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    format!(
        "status {:?}\n--- summary\n{}--- stdout\n{stdout}--- stderr\n{stderr}",
        o.status,
        summary(&stdout, &stderr)
    )
}

/// The lines that say what failed (failed tests, and each panic with its
/// message), first: CI keeps only part of a long output.
fn summary(stdout: &str, stderr: &str) -> String {
    let mut out = String::new();
    for text in [stdout, stderr] {
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.ends_with("... FAILED") || l.contains("panicked at") {
                out.push_str(l);
                out.push('\n');
                if l.contains("panicked at") {
                    for next in lines.iter().skip(i + 1).take(2) {
                        out.push_str(next);
                        out.push('\n');
                    }
                }
            }
        }
    }
    out
}

fn launch_local(nodes: u16, mode: &str) -> Command {
    let mut c = Command::new(launcher());
    c.args(["--local-nodes", &nodes.to_string(), "--num-cpus", "1"])
        .args(["--object-store-memory", &(256u64 << 20).to_string()])
        .arg("--")
        .arg(me())
        .env("APP_MODE", mode)
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    c
}

// ------------------------------------------------------------------ tests
// By what they test, in launcher_parts/.

#[path = "launcher_parts/local.rs"]
mod local;
#[path = "launcher_parts/slurm.rs"]
mod slurm;

use local::*;
use slurm::*;

fn main() {
    common::enter_cluster_role();
    if let Ok(mode) = std::env::var("APP_MODE") {
        if mode == "second_driver" {
            second_driver();
        }
        if mode == "insitu_straggler" {
            insitu_straggler();
        }
        app_main(&mode);
    }
    common::run(&[
        ("test_launch_local_nodes", test_launch_local_nodes),
        (
            "test_launch_local_nodes_with_their_own_resources",
            test_launch_local_nodes_with_their_own_resources,
        ),
        (
            "test_launch_returns_the_driver_exit_code",
            test_launch_returns_the_driver_exit_code,
        ),
        (
            "test_second_driver_joins_with_init_address",
            test_second_driver_joins_with_init_address,
        ),
        (
            "test_launch_bad_app_is_a_clear_error",
            test_launch_bad_app_is_a_clear_error,
        ),
        ("test_status_and_stop", test_status_and_stop),
        (
            "test_core_suite_on_local_nodes",
            test_core_suite_on_local_nodes,
        ),
        (
            "test_conformance_suite_on_local_nodes",
            test_conformance_suite_on_local_nodes,
        ),
        (
            "test_core_suite_on_slurm_srun",
            test_core_suite_on_slurm_srun,
        ),
        (
            "test_multinode_suite_on_fabric_local",
            test_multinode_suite_on_fabric_local,
        ),
        (
            "test_launch_bad_transport_is_a_clear_error",
            test_launch_bad_transport_is_a_clear_error,
        ),
        (
            "test_multinode_suite_on_fabric_slurm",
            test_multinode_suite_on_fabric_slurm,
        ),
        ("test_chaos_suite_on_slurm", test_chaos_suite_on_slurm),
        ("test_launch_spill_dir", test_launch_spill_dir),
        (
            "test_sigterm_leaves_nothing_behind",
            test_sigterm_leaves_nothing_behind,
        ),
        (
            "test_stop_only_stops_its_own_cluster",
            test_stop_only_stops_its_own_cluster,
        ),
        ("test_slurm_srun_three_nodes", test_slurm_srun_three_nodes),
        (
            "test_slurm_gres_gpus_are_device_ids",
            test_slurm_gres_gpus_are_device_ids,
        ),
        (
            "test_slurm_allocation_becomes_resources",
            test_slurm_allocation_becomes_resources,
        ),
        ("test_slurm_sbatch", test_slurm_sbatch),
        (
            "test_core_suite_on_slurm_sbatch",
            test_core_suite_on_slurm_sbatch,
        ),
        (
            "test_slurm_node_never_registers",
            test_slurm_node_never_registers,
        ),
        ("test_slurm_two_jobs_at_once", test_slurm_two_jobs_at_once),
        ("test_mpirun_insitu_local", test_mpirun_insitu_local),
        ("test_slurm_mpi_insitu_ranks", test_slurm_mpi_insitu_ranks),
        (
            "test_slurm_mpi_bootstrap_launcher",
            test_slurm_mpi_bootstrap_launcher,
        ),
        (
            "test_slurm_mpi_wrong_plugin_is_a_clear_error",
            test_slurm_mpi_wrong_plugin_is_a_clear_error,
        ),
        (
            "test_bootstrap_mpi_without_the_feature_is_a_clear_error",
            test_bootstrap_mpi_without_the_feature_is_a_clear_error,
        ),
        ("test_slurm_insitu_ranks", test_slurm_insitu_ranks),
        (
            "test_slurm_insitu_rank_that_never_joins_fails_the_step",
            test_slurm_insitu_rank_that_never_joins_fails_the_step,
        ),
        (
            "test_slurm_raylet_killed_mid_job",
            test_slurm_raylet_killed_mid_job,
        ),
    ]);
}
