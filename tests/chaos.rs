//! The chaos suite: random SIGKILLs of workers, actor processes and a
//! raylet (never the driver's node) while a workload of task graphs, actor
//! calls and large objects runs on a 3-node cluster. Every result is the
//! right value or a clear error of an expected kind; nothing waits past its
//! bound; after shutdown no process of the cluster and no shared-memory
//! file is left. The counts (kills, retries, lineage reconstructions, errors
//! by kind) are printed.
//!
//! It runs on `--local-nodes`-style local nodes, and as the driver of a
//! 3-node emulated Slurm step (`tests/launcher.rs`,
//! `test_chaos_suite_on_slurm`). `make test` runs it for a few seconds
//! (`CHAOS_SECONDS`, default 8); `make chaos` for longer.

mod common;

use rustray::{Config, ErrorKind, Retries, SchedulingStrategy};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long any one result may take, kills and recoveries included.
const BOUND: Duration = Duration::from_secs(60);

fn marker() -> String {
    std::env::temp_dir()
        .join(format!("rustray-chaos-runs-{}", std::process::id()))
        .display()
        .to_string()
}

/// Counts one execution (runs minus tasks: re-executions by retry or
/// reconstruction).
fn count_run(marker: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(marker)
    {
        let _ = f.write_all(b"x");
    }
}

fn block(n: usize, seed: u64) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(seed) as u8)
        .collect()
}

fn sum(v: &[u8]) -> u64 {
    v.iter().map(|b| *b as u64).sum()
}

/// A leaf of a task graph: a store-sized block (256 KiB).
#[rustray::remote]
fn leaf(marker: String, seed: u64, ms: u64) -> Vec<u8> {
    count_run(&marker);
    std::thread::sleep(Duration::from_millis(ms));
    block(256 << 10, seed)
}

/// A reduction over leaves passed by ref.
#[rustray::remote]
fn reduce(marker: String, a: Vec<u8>, b: Vec<u8>) -> u64 {
    count_run(&marker);
    sum(&a) + sum(&b)
}

/// Reads a large object the driver put.
#[rustray::remote]
fn checksum(marker: String, data: Vec<u8>) -> u64 {
    count_run(&marker);
    sum(&data)
}

pub struct Echo {
    calls: u64,
}

#[rustray::actor]
impl Echo {
    pub fn new() -> Self {
        Echo { calls: 0 }
    }

    pub fn echo(&mut self, x: u64) -> u64 {
        self.calls += 1;
        x
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// This task's node and its raylet's pid (a worker's parent).
#[rustray::remote]
fn raylet_here() -> (String, u32) {
    (
        rustray::node_name().expect("node"),
        std::os::unix::process::parent_id(),
    )
}

fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

/// A small xorshift: the run is random, the seed printed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    /// A result: the right value, or an error of a kind chaos may cause.
    fn check<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: &str,
        got: rustray::Result<T>,
        want: T,
    ) {
        match got {
            Ok(v) => {
                assert_eq!(v, want, "{what}: a wrong value");
                self.ok += 1;
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::WorkerDied
                            | ErrorKind::ActorDied
                            | ErrorKind::ActorUnavailable
                            | ErrorKind::ObjectLost
                            | ErrorKind::OwnerDied
                            | ErrorKind::ReconstructionFailed
                            | ErrorKind::NodeDied
                    ),
                    "{what}: not a clear error of chaos: {e}"
                );
                *self.errors.entry(format!("{:?}", e.kind())).or_default() += 1;
            }
        }
    }
}

fn test_chaos_kills_workers_actors_and_a_raylet() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(1)
        });
    println!("chaos: {seconds} s, seed {seed} (CHAOS_SEED replays the kill order)");
    let marker = marker();
    let _ = std::fs::remove_file(&marker);
    let shm_before = common::shm_files();
    rustray::init_with(
        Config::new()
            .local_nodes(3)
            .num_cpus(2.0)
            .object_store_memory(512 << 20),
    )
    .expect("a 3-node cluster");
    let cluster = rustray::nodes().expect("nodes");
    let me = rustray::node_name().expect("node");
    // Every node's raylet, from a probe task pinned there.
    let mut raylets = BTreeMap::new();
    for n in &cluster {
        let (name, pid) = rustray::get_timeout(
            &raylet_here::options()
                .scheduling_strategy(SchedulingStrategy::NodeAffinity {
                    node: n.name.clone(),
                    soft: false,
                })
                .remote()
                .unwrap(),
            BOUND,
        )
        .expect("probe");
        raylets.insert(name, pid);
    }
    let victim_node = cluster
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != me)
        .expect("another node");
    let victim_raylet = raylets[&victim_node];

    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let driver = std::process::id();
    let killer = {
        let (stop, kills) = (stop.clone(), kills.clone());
        let raylets: Vec<u32> = raylets.values().copied().collect();
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let start = Instant::now();
            let mut raylet_killed = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200 + rng.next() % 400));
                // Once, half-way: a whole node (not the driver's).
                if !raylet_killed && start.elapsed() > Duration::from_secs(seconds / 2) {
                    kill9(victim_raylet);
                    raylet_killed = true;
                    kills.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // A worker or actor process of any live raylet (never a
                // raylet's other children, never the driver).
                let mut workers: Vec<u32> = raylets
                    .iter()
                    .filter(|r| !(raylet_killed && **r == victim_raylet))
                    .flat_map(|r| common::children(*r))
                    .filter(|p| *p != driver)
                    .collect();
                workers.sort();
                if workers.is_empty() {
                    continue;
                }
                let w = workers[(rng.next() as usize) % workers.len()];
                kill9(w);
                kills.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let mut tally = Tally::default();
    let mut tasks = 0u64;
    let echo = Echo::options()
        .max_restarts(1000)
        .max_task_retries(Retries::Infinite)
        .remote(())
        .expect("actor");
    let big = rustray::put(block(8 << 20, 7)).expect("put");
    let big_sum = sum(&block(8 << 20, 7));
    let t0 = Instant::now();
    let mut round = 0u64;
    while t0.elapsed() < Duration::from_secs(seconds) {
        round += 1;
        // A task graph: leaves (some on the node that will be lost), then
        // pairwise reductions of their results passed by ref.
        let leaves: Vec<_> = (0..6)
            .map(|i| {
                let opts = leaf::options().max_retries(Retries::Infinite);
                let opts = if i % 2 == 0 {
                    opts.scheduling_strategy(SchedulingStrategy::NodeAffinity {
                        node: victim_node.clone(),
                        soft: true,
                    })
                } else {
                    opts
                };
                opts.remote(marker.clone(), round * 10 + i, 20u64).unwrap()
            })
            .collect();
        let reductions: Vec<_> = leaves
            .chunks(2)
            .map(|p| {
                reduce::options()
                    .max_retries(Retries::Infinite)
                    .remote(marker.clone(), &p[0], &p[1])
                    .unwrap()
            })
            .collect();
        let checks: Vec<_> = (0..3)
            .map(|_| {
                checksum::options()
                    .max_retries(Retries::Infinite)
                    .remote(marker.clone(), &big)
                    .unwrap()
            })
            .collect();
        let calls: Vec<_> = (0..10).map(|i| (i, echo.echo(round * 100 + i))).collect();
        tasks += (leaves.len() + reductions.len() + checks.len()) as u64;
        for (k, r) in reductions.iter().enumerate() {
            let want = sum(&block(256 << 10, round * 10 + 2 * k as u64))
                + sum(&block(256 << 10, round * 10 + 2 * k as u64 + 1));
            tally.check("a reduction", rustray::get_timeout(r, BOUND), want);
        }
        for r in &checks {
            tally.check("a checksum", rustray::get_timeout(r, BOUND), big_sum);
        }
        for (i, r) in &calls {
            tally.check(
                "an actor call",
                rustray::get_timeout(r, BOUND),
                round * 100 + i,
            );
        }
        for (i, r) in leaves.iter().enumerate() {
            let got = rustray::get_timeout(r, BOUND).map(|v| sum(&v));
            tally.check("a leaf", got, sum(&block(256 << 10, round * 10 + i as u64)));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = killer.join();
    let runs = std::fs::read(&marker).map(|b| b.len() as u64).unwrap_or(0);
    let (retries, reconstructions) = rustray::__private::fault_counts();
    println!(
        "chaos: {round} rounds, {tasks} tasks, {} results right, errors {:?}, {} kills, {retries} retries, {reconstructions} reconstructions, {} runs past the first",
        tally.ok,
        tally.errors,
        kills.load(Ordering::Relaxed),
        runs.saturating_sub(tasks)
    );
    assert!(tally.ok > 0, "nothing completed");
    assert!(kills.load(Ordering::Relaxed) > 0, "nothing was killed");
    rustray::shutdown();
    let _ = std::fs::remove_file(&marker);
    if common::launched() {
        // The cluster is the launcher's and ends with the step: the
        // launcher test checks that nothing is left after it.
        return;
    }
    // Nothing is left: no process below the driver, no store file.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left = common::descendants(driver);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "processes left after shutdown: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<String> = common::shm_files()
        .difference(&shm_before)
        .cloned()
        .collect();
    assert!(left.is_empty(), "shared-memory files left: {left:?}");
}

fn main() {
    common::enter_cluster_role();
    common::run(&[(
        "test_chaos_kills_workers_actors_and_a_raylet",
        test_chaos_kills_workers_actors_and_a_raylet,
    )]);
}
