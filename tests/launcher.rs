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

/// `rust-ray-launch --spill-dir DIR --store-dir SDIR`: a full store spills
/// to DIR, the store itself is a file in SDIR, and both are gone with the
/// cluster.
fn test_launch_spill_dir() {
    let dir = std::env::temp_dir().join(format!("rustray-launch-spill-{}", std::process::id()));
    let store_dir =
        std::env::temp_dir().join(format!("rustray-launch-store-{}", std::process::id()));
    for d in [&dir, &store_dir] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).expect("dir");
    }
    let mut c = Command::new(launcher());
    c.args(["--local-nodes", "1", "--num-cpus", "1"])
        .args(["--object-store-memory", &(64u64 << 20).to_string()])
        .arg("--spill-dir")
        .arg(&dir)
        .arg("--store-dir")
        .arg(&store_dir)
        .arg("--")
        .arg(me())
        .env("APP_MODE", "spill")
        .env("SPILL_DIR", &dir)
        .env("STORE_DIR", &store_dir)
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    let out = run_bounded(c, Duration::from_secs(60));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("under the --spill-dir"), "{t}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the spill dir: {left:?}");
    let left: Vec<_> = std::fs::read_dir(&store_dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the store dir: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&store_dir);
}

fn test_launch_local_nodes() {
    let out = run_bounded(launch_local(3, "app"), Duration::from_secs(60));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nodes used: 3"), "{t}");
}

/// `--local-node` gives each local node resources of its own.
fn test_launch_local_nodes_with_their_own_resources() {
    let mut c = Command::new(launcher());
    c.args(["--num-cpus", "1", "--object-store-memory"])
        .arg((256u64 << 20).to_string())
        .args(["--local-node", "num_gpus=0"])
        .args(["--local-node", "num_cpus=3,num_gpus=2,special=1"])
        .arg("--")
        .arg(me())
        .env("APP_MODE", "app")
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    let out = run_bounded(c, Duration::from_secs(60));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nodes used: 2"), "{t}");
    assert!(t.contains("cpu=1 gpu=0"), "{t}");
    assert!(t.contains("cpu=3 gpu=2"), "{t}");
    let mut bad = Command::new(launcher());
    bad.args(["--local-node", "num_cpus=x", "--", "true"]);
    let out = run_bounded(bad, Duration::from_secs(30));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("num_cpus=x"), "{t}");
}

/// `init_address("auto")` from a process the launcher did not start joins
/// the running cluster as a second driver (see `second_driver`); with no
/// cluster running it is a clear error.
fn test_second_driver_joins_with_init_address() {
    let out = run_bounded(launch_local(2, "two_drivers"), Duration::from_secs(120));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("two drivers shared the cluster"), "{t}");
    let mut c = Command::new(me());
    c.env("APP_MODE", "second_driver")
        .env_remove("RUSTRAY_ADDRESS")
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir().join("empty"));
    let out = run_bounded(c, Duration::from_secs(60));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("no running rustray cluster"), "{t}");
}

fn test_launch_returns_the_driver_exit_code() {
    let out = run_bounded(launch_local(2, "exit3"), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

fn test_launch_bad_app_is_a_clear_error() {
    let mut c = Command::new(launcher());
    c.args(["--local-nodes", "2", "--", "/nonexistent/app"]);
    let out = run_bounded(c, Duration::from_secs(30));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("/nonexistent/app") && t.contains("not found"),
        "{t}"
    );
}

fn status_in(dir: &std::path::Path) -> Output {
    let mut s = Command::new(launcher());
    s.arg("status").env("RUSTRAY_RENDEZVOUS_DIR", dir);
    run_bounded(s, Duration::from_secs(20))
}

/// Starts a 2-node launcher whose driver waits, in its own rendezvous
/// directory; returns it once `status` shows both nodes, with the report.
// The launcher is the caller's to wait for (it is returned); if a check
// in between panics, the test binary's end takes it down.
#[allow(clippy::zombie_processes)]
fn start_waiting_cluster(dir: &std::path::Path) -> (std::process::Child, String) {
    let _ = std::fs::remove_dir_all(dir);
    let mut c = launch_local(2, "wait");
    c.env("RUSTRAY_RENDEZVOUS_DIR", dir);
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("launcher starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = status_in(dir);
        let t = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && t.matches(" alive ").count() == 2 {
            return (child, t);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("status never showed 2 nodes: {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `status` shows the running cluster's nodes; `stop` ends its driver and
/// the cluster, and nothing of it is left behind.
fn test_status_and_stop() {
    let dir = rdv_dir().join("status");
    let (child, report) = start_waiting_cluster(&dir);
    assert!(
        report.contains("2 nodes") && report.contains("store"),
        "{report}"
    );
    // A connection without the cluster's secret is refused: closed before
    // any message is read, and the cluster goes on.
    let gcs = report
        .split("GCS at ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("GCS address in the status report");
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(gcs).expect("connect to the GCS port");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&[0u8; 16]);
        let _ = s.write_all(&[4, 0, 0, 0, 1, 2, 3, 4]);
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a connection without the secret got an answer");
    }
    assert!(status_in(&dir).status.success(), "the cluster went down");
    let mut stop = Command::new(launcher());
    stop.arg("stop").env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    let o = run_bounded(stop, Duration::from_secs(20));
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    let out = child.wait_with_output().expect("launcher output");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t0.elapsed()
    );
    // The driver got SIGTERM.
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
    let o = status_in(&dir);
    assert!(!o.status.success(), "cluster still listed: {}", text(&o));
}

/// `stop --job` ends that cluster and no other, even when both publish in
/// the same rendezvous directory.
fn test_stop_only_stops_its_own_cluster() {
    let dir = rdv_dir().join("two");
    let (a, _) = start_waiting_cluster(&dir);
    // A second cluster in the same directory (start_waiting_cluster would
    // wipe it).
    let mut c = launch_local(2, "wait");
    c.env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    let mut b = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("second launcher");
    let deadline = Instant::now() + Duration::from_secs(30);
    while String::from_utf8_lossy(&status_in(&dir).stdout)
        .matches(" alive ")
        .count()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "the second cluster never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stop = Command::new(launcher());
    stop.args(["stop", "--job", &a.id().to_string()])
        .env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    assert!(run_bounded(stop, Duration::from_secs(20)).status.success());
    let out = a.wait_with_output().expect("first launcher ends");
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
    // The other cluster still runs and answers.
    assert!(
        matches!(b.try_wait(), Ok(None)),
        "the other cluster was stopped too"
    );
    let mut st = Command::new(launcher());
    st.args(["status", "--job", &b.id().to_string()])
        .env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    let o = run_bounded(st, Duration::from_secs(20));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .matches(" alive ")
            .count()
            == 2,
        "{}",
        text(&o)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status();
    let _ = b.wait();
}

/// SIGTERM to the launcher (what `scancel` or Ctrl-C does) ends the driver
/// and the cluster, leaving no shared memory, socket or process behind.
fn test_sigterm_leaves_nothing_behind() {
    let dir = rdv_dir().join("sigterm");
    let (child, report) = start_waiting_cluster(&dir);
    let cluster = report
        .split_whitespace()
        .nth(1)
        .expect("cluster id in the status report")
        .to_string();
    let shm = || -> Vec<String> {
        std::fs::read_dir("/dev/shm")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(&cluster))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(shm().len(), 2, "one arena per node while it runs");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t0 = Instant::now();
    let out = child.wait_with_output().expect("launcher output");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shm().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(shm().is_empty(), "left behind: {:?}", shm());
    let base = std::env::var_os("RUSTRAY_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/rustray"));
    let socks: Vec<PathBuf> = std::fs::read_dir(&base)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&cluster))
                .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    assert!(socks.is_empty(), "sockets left: {socks:?}");
}

/// The core test binary (tests/core.rs), to run the single-node suite as
/// the driver of a multi-node cluster.
fn core_suite() -> PathBuf {
    test_binary("core")
}

/// The newest build of the integration test binary `name`.
fn test_binary(name: &str) -> PathBuf {
    let prefix = format!("{name}-");
    let deps = target_dir().join("deps");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&deps)
        .expect("deps dir")
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && !n.contains('.')
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.pop().expect("the test binary is built").1
}

const SUITE_STORE: u64 = 256 << 20;

fn assert_suite_passed(out: &Output) {
    let t = text(out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&all_of_core_suite()), "{t}");
}

/// The summary line of a run of the whole core suite, every test passed
/// (the count asked of the binary itself).
fn all_of_core_suite() -> String {
    let out = Command::new(core_suite())
        .arg("--count")
        .env("RUSTRAY_SKIP_SLURM", "1")
        .output()
        .expect("the core suite runs");
    let t = text(&out);
    let n: usize = t
        .lines()
        .find_map(|l| l.strip_suffix(" tests")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the core suite did not say how many tests it has: {t}"));
    assert!(n > 20, "{t}");
    format!("test result: ok. {n} passed; 0 failed")
}

/// The single-node suite, unchanged, on 3 local nodes.
fn test_core_suite_on_local_nodes() {
    let mut c = Command::new(launcher());
    c.args(["--local-nodes", "3", "--num-cpus", "2"])
        .args(["--object-store-memory", &SUITE_STORE.to_string()])
        .arg("--")
        .arg(core_suite())
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    assert_suite_passed(&run_bounded(c, Duration::from_secs(240)));
}

/// Ray's ported tests (tests/conformance.rs) with 3 local nodes as the
/// cluster they join.
fn test_conformance_suite_on_local_nodes() {
    let mut c = Command::new(launcher());
    c.args(["--local-nodes", "3", "--num-cpus", "2"])
        .args(["--object-store-memory", &SUITE_STORE.to_string()])
        .arg("--")
        .arg(test_binary("conformance"))
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    let out = run_bounded(c, Duration::from_secs(300));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("test result: ok.") && t.contains(" 0 failed;"),
        "{t}"
    );
    assert!(!t.contains(" 0 passed;"), "{t}");
}

/// The whole multi-node suite with objects moved by libfabric (`shm`
/// between local nodes), as `RUSTRAY_TRANSPORT=fabric` asks.
fn test_multinode_suite_on_fabric_local() {
    // The provider's shared-memory files of the endpoints, left by nobody:
    // not by the raylets the suite kills, nor by stuck endpoints.
    let endpoints = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir("/dev/shm")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("rustray-") && n.contains("-ep"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = endpoints();
    let mut c = Command::new(test_binary("multinode"));
    c.env("RUSTRAY_TRANSPORT", "fabric");
    let out = run_bounded(c, Duration::from_secs(300));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let left: Vec<String> = endpoints().difference(&before).cloned().collect();
    assert!(left.is_empty(), "endpoint files left in /dev/shm: {left:?}");
    assert!(t.contains("transport: fabric (shm)"), "{t}");
    assert!(t.contains("test result: ok."), "{t}");
    assert!(!t.contains(" 0 passed;"), "{t}");
}

/// `rust-ray-launch ARGS -- <this test> app` fails, saying `needle`.
fn assert_launch_fails(args: &[&str], needle: &str) {
    let mut c = Command::new(launcher());
    c.args(args)
        .arg("--")
        .arg(me())
        .env("APP_MODE", "app")
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    let out = run_bounded(c, Duration::from_secs(30));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains(needle), "{t}");
}

/// A bad transport is a clear error before anything starts.
fn test_launch_bad_transport_is_a_clear_error() {
    assert_launch_fails(
        &["--local-nodes", "2", "--transport", "rdma"],
        "auto, fabric or tcp",
    );
}

// ------------------------------------------------------------------ Slurm

/// The multi-node suite as the driver of a 3-node Slurm step launched with
/// `--transport fabric`: objects cross the emulated nodes' network
/// namespaces by `fi_read` over a network provider (tcp;ofi_rxm here;
/// verbs, cxi or efa on a real cluster). Less the tests that kill a node:
/// a launched cluster does not get it back for the tests after them
/// (test_slurm_raylet_killed_mid_job covers node loss under Slurm).
fn test_multinode_suite_on_fabric_slurm() {
    if !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(launcher())
        .args(["--transport", "fabric", "--num-cpus", "1"])
        .args(["--object-store-memory", &(1400u64 << 20).to_string()])
        .arg("--")
        .arg(test_binary("multinode"))
        .args(["--skip=killed", "--skip=lost", "--skip=loss"]);
    slurm_env(&mut c, "none");
    c.env_remove("APP_MODE");
    let out = run_bounded(c, Duration::from_secs(240));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("transport: fabric (tcp;ofi_rxm)"), "{t}");
    assert!(t.contains("test result: ok."), "{t}");
    assert!(!t.contains(" 0 passed;"), "{t}");
}

/// The chaos suite (tests/chaos.rs) as the driver of a 3-node Slurm step:
/// random SIGKILLs of workers, actors and one node's raylet under srun;
/// every result is right or a clear error, and once the step is over no
/// process of the job and no shared-memory file is left on any node (the
/// emulated nodes share one process table and one /dev/shm).
fn test_chaos_suite_on_slurm() {
    if !slurm_wanted() {
        return;
    }
    let shm = common::shm_files;
    let before = shm();
    let chaos = test_binary("chaos");
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(launcher())
        .args(["--num-cpus", "2"])
        .args(["--object-store-memory", &(512u64 << 20).to_string()])
        .arg("--")
        .arg(&chaos);
    slurm_env(&mut c, "none");
    c.env_remove("APP_MODE").env("CHAOS_SECONDS", "8");
    let out = run_bounded(c, Duration::from_secs(240));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("chaos: ") && t.contains(" kills, "), "{t}");
    assert!(t.contains("test result: ok. 1 passed"), "{t}");
    // Nothing of the job is left: no process running the chaos binary (the
    // raylets and workers re-execute it), no store or endpoint file.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                        let argv0 = cmd.split(|b| *b == 0).next()?;
                        (argv0 == chaos.as_os_str().as_encoded_bytes())
                            .then(|| e.file_name().to_string_lossy().into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let files: Vec<String> = shm().difference(&before).cloned().collect();
        if left.is_empty() && files.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "left after the step: processes {left:?}, /dev/shm files {files:?}\n{t}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn slurm_wanted() -> bool {
    std::env::var_os("RUSTRAY_SKIP_SLURM").is_none()
}

fn slurm_env(c: &mut Command, mode: &str) {
    c.env("APP_MODE", mode)
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir())
        .env("RUSTRAY_TMPDIR", std::env::temp_dir().join("rustray"));
}

fn srun(nodes: u16, extra: &[&str], mode: &str) -> Output {
    srun_launch(nodes, extra, &[], mode)
}

/// `srun -N nodes <extra> rust-ray-launch <launch_args> -- <this test> `.
fn srun_launch(nodes: u16, extra: &[&str], launch_args: &[&str], mode: &str) -> Output {
    let mut c = Command::new("srun");
    c.args([
        "-N",
        &nodes.to_string(),
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
    ])
    .args(extra)
    .arg(launcher())
    .args(launch_args)
    .args(["--object-store-memory", &(256u64 << 20).to_string()])
    .arg("--")
    .arg(me());
    slurm_env(&mut c, mode);
    run_bounded(c, Duration::from_secs(120))
}

/// The single-node suite on 3 Slurm nodes, through srun.
fn test_core_suite_on_slurm_srun() {
    if !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(launcher())
        .args([
            "--num-cpus",
            "2",
            "--object-store-memory",
            &SUITE_STORE.to_string(),
        ])
        .arg("--")
        .arg(core_suite());
    slurm_env(&mut c, "none");
    c.env_remove("APP_MODE");
    assert_suite_passed(&run_bounded(c, Duration::from_secs(240)));
}

fn test_slurm_srun_three_nodes() {
    if !slurm_wanted() {
        return;
    }
    let out = srun(3, &[], "app");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nodes used: 3"), "{t}");
    // Every node advertises its own address, never loopback.
    let addrs: std::collections::BTreeSet<&str> = t
        .lines()
        .filter(|l| l.starts_with("node "))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(addrs.len(), 3, "{t}");
    assert!(addrs.iter().all(|a| !a.starts_with("127.")), "{t}");
}

fn test_slurm_allocation_becomes_resources() {
    if !slurm_wanted() {
        return;
    }
    let out = srun(2, &["--gpus-per-node=2", "-c", "2"], "app");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // GRES GPUs and -c CPUs become each node's resources. (Memory is not a
    // consumable in the emulated cluster, so Slurm exports no
    // SLURM_MEM_PER_NODE here; the unit tests in src/slurm.rs cover it.)
    assert_eq!(t.matches("gpu=2").count(), 2, "{t}");
    assert_eq!(t.matches("cpu=2").count(), 2, "{t}");
}

/// GRES GPUs are devices with ids: on every node of the step, two 1-GPU
/// tasks at once hold the two devices Slurm allocated there, each seeing
/// its own in CUDA_VISIBLE_DEVICES (the emulated cluster's fake GPUs are
/// /dev/null-backed device files).
fn test_slurm_gres_gpus_are_device_ids() {
    if !slurm_wanted() {
        return;
    }
    let out = srun(2, &["--gpus-per-node=2", "-c", "2"], "gpus");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("slurm gave CUDA_VISIBLE_DEVICES=0,1"), "{t}");
    assert_eq!(t.matches("gpus of ").count(), 2, "{t}");
    assert_eq!(t.matches(": [0, 1]").count(), 2, "{t}");
}

/// Submits `slurm/rust-ray.sbatch -N 3 <app>` and returns the job's output
/// once it has left the queue.
fn sbatch(app: &std::path::Path, mode: &str, sbatch_args: &[&str]) -> String {
    let dir = rdv_dir();
    let log = dir.join("sbatch-%j.out");
    let script = std::env::current_dir()
        .expect("cwd")
        .join("slurm/rust-ray.sbatch");
    let mut c = Command::new("sbatch");
    c.args(["--parsable", "-N", "3"])
        .args(sbatch_args)
        .arg("-o")
        .arg(&log)
        .arg(&script)
        .arg(app)
        .env("RUST_RAY_LAUNCH", launcher());
    slurm_env(&mut c, mode);
    let out = run_bounded(c, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out));
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let mut q = Command::new("squeue");
        q.args(["-h", "-j", &job]);
        let q = run_bounded(q, Duration::from_secs(10));
        if String::from_utf8_lossy(&q.stdout).trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "job {job} did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = std::fs::read_to_string(dir.join(format!("sbatch-{job}.out"))).unwrap_or_default();
    format!("job {job} output:\n{t}")
}

fn test_slurm_sbatch() {
    if !slurm_wanted() {
        return;
    }
    let t = sbatch(&me(), "app", &[]);
    assert!(t.contains("nodes used: 3"), "{t}");
}

/// The single-node suite on 3 Slurm nodes, through sbatch.
fn test_core_suite_on_slurm_sbatch() {
    if !slurm_wanted() {
        return;
    }
    // 2 CPUs per node, from the allocation (-c 2), as the suite expects.
    let t = sbatch(&core_suite(), "none", &["-c", "2"]);
    assert!(t.contains(&all_of_core_suite()), "{t}");
}

/// A rank that never starts its raylet: rank 0 fails the step with an
/// error naming the missing node, within the join bound, and no rank hangs.
fn test_slurm_node_never_registers() {
    if !slurm_wanted() {
        return;
    }
    let dir = rdv_dir();
    let conf = dir.join("multi-prog.conf");
    std::fs::write(
        &conf,
        format!(
            "0-1 {} -- {}\n2 sleep 60\n",
            launcher().display(),
            me().display()
        ),
    )
    .expect("multi-prog file");
    let mut c = Command::new("srun");
    c.args([
        "-N",
        "3",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "--multi-prog",
    ])
    .arg(&conf)
    .env("RUSTRAY_JOIN_TIMEOUT_S", "5");
    slurm_env(&mut c, "app");
    let t0 = Instant::now();
    let out = run_bounded(c, Duration::from_secs(90));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("did not register"), "{t}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}

/// The library linked into a simulation: every rank of `srun -N 3
/// --ntasks-per-node=2` calls `init()`; they form one cluster by
/// themselves and rank 0 gathers every rank's analysis results.
fn test_slurm_insitu_ranks() {
    if !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=2", "--kill-on-bad-exit=1"])
        .arg(target_dir().join("examples/insitu"));
    slurm_env(&mut c, "none");
    let out = run_bounded(c, Duration::from_secs(120));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("gathered 24 results from 6 ranks on 3 nodes"),
        "{t}"
    );
}

/// An in-situ step with a rank that never calls `init`: once the join
/// timeout has passed, rank 0 fails the step though its own `main` is still
/// at work, saying how many ranks never joined, which, and which nodes had
/// none (before, rank 0 waited 600 s).
fn test_slurm_insitu_rank_that_never_joins_fails_the_step() {
    if !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(me());
    slurm_env(&mut c, "insitu_straggler");
    c.env("RUSTRAY_JOIN_TIMEOUT_S", "5");
    let t0 = std::time::Instant::now();
    let out = run_bounded(c, Duration::from_secs(120));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("1 of 3 ranks never joined the cluster"), "{t}");
    assert!(t.contains("(RUSTRAY_JOIN_TIMEOUT_S): rank 2"), "{t}");
    assert!(t.contains("nodes with no rank: "), "{t}");
    assert!(
        t0.elapsed() < Duration::from_secs(45),
        "took {:?}: {t}",
        t0.elapsed()
    );
}

/// A raylet killed mid-job on a Slurm node: the GCS notices, the tasks
/// that ran there are retried on the other nodes, the job succeeds.
fn test_slurm_raylet_killed_mid_job() {
    if !slurm_wanted() {
        return;
    }
    let out = srun(3, &[], "nodeloss");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("survived the loss of node"), "{t}");
}

// ------------------------------------------------------------------ MPI

/// `mpirun -np 4 ./sim` without Slurm: the ranks of an MPI simulation join
/// one cluster through their communicator (examples/insitu_mpi.rs).
fn test_mpirun_insitu_local() {
    if !cfg!(feature = "mpi") {
        return;
    }
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "4"])
        .arg(target_dir().join("examples/insitu_mpi"))
        .env_remove("SLURM_JOB_ID")
        .env("RUSTRAY_TMPDIR", std::env::temp_dir().join("rustray"));
    assert_insitu_mpi(
        c,
        "world of 4 ranks: gathered 12 results from 4 ranks on 1 nodes",
    );
}

/// Runs an examples/insitu_mpi command; it succeeds and rank 0 says `want`.
fn assert_insitu_mpi(c: Command, want: &str) {
    let out = run_bounded(c, Duration::from_secs(120));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(want), "{t}");
}

/// The same under `srun --mpi=pmix` on 3 Slurm nodes, 2 ranks each: the
/// bootstrap goes through MPI, across the nodes.
fn test_slurm_mpi_insitu_ranks() {
    if !cfg!(feature = "mpi") || !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args([
        "--mpi=pmix",
        "-N",
        "3",
        "--ntasks-per-node=2",
        "--kill-on-bad-exit=1",
    ])
    .arg(target_dir().join("examples/insitu_mpi"));
    slurm_env(&mut c, "none");
    c.env_remove("APP_MODE");
    assert_insitu_mpi(
        c,
        "world of 6 ranks: gathered 18 results from 6 ranks on 3 nodes",
    );
}

/// `srun --mpi=pmix rust-ray-launch --bootstrap mpi -- app`: one launcher
/// per node, MPI_Init and collectives in place of the rendezvous file.
fn test_slurm_mpi_bootstrap_launcher() {
    if !cfg!(feature = "mpi") || !slurm_wanted() {
        return;
    }
    let out = srun_launch(3, &["--mpi=pmix"], &["--bootstrap", "mpi"], "app");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nodes used: 3"), "{t}");
    let addrs: std::collections::BTreeSet<&str> = t
        .lines()
        .filter(|l| l.starts_with("node "))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(addrs.len(), 3, "{t}");
}

/// srun without an MPI plugin: a clear error naming the fix, not a world
/// of singletons or MPI's own abort page.
fn test_slurm_mpi_wrong_plugin_is_a_clear_error() {
    if !cfg!(feature = "mpi") || !slurm_wanted() {
        return;
    }
    let out = srun_launch(2, &["--mpi=none"], &["--bootstrap", "mpi"], "app");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("srun --mpi=pmix"), "{t}");
}

/// A launcher built without the feature says how to get it.
fn test_bootstrap_mpi_without_the_feature_is_a_clear_error() {
    if !cfg!(feature = "mpi") {
        assert_launch_fails(&["--bootstrap", "mpi"], "--features mpi");
    }
}

/// Two jobs on the same nodes at once: each its own cluster.
fn test_slurm_two_jobs_at_once() {
    if !slurm_wanted() {
        return;
    }
    let a = std::thread::spawn(|| srun(2, &["--overlap", "--oversubscribe"], "app"));
    let b = std::thread::spawn(|| srun(2, &["--overlap", "--oversubscribe"], "app"));
    for o in [a.join().expect("job a"), b.join().expect("job b")] {
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert!(t.contains("nodes used: 2"), "{t}");
    }
}

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
