//! rustray microbenchmark: a scenario-for-scenario mirror of Ray's peer
//! harness `peers/ray/bench.py` (see `research/ray-bench.md`).
//!
//! Output: one JSON object per line on stdout:
//!     {"scenario": str, "unit": str, "value": float, "n": int,
//!      "reps": int, "impl": "rustray-<version>", "load1": float, "extra": {...}}
//! Progress lines (`[bench] ...`) go to stderr.
//!
//! Conventions (identical to bench.py):
//!   * GB = 1e9 bytes; MiB = 2^20 bytes.
//!   * "value" of a throughput scenario is the MEDIAN over `reps` timed
//!     repetitions, each scenario first runs an untimed warm-up of the same
//!     shape; "value" of a latency scenario is the MEDIAN over `n` samples.
//!   * Timer: `std::time::Instant` in the driver.
//!   * metg_us is a sweep over task durations (see `sc_metg`).
//!
//! Usage:
//!     cargo bench --bench microbench                       # full run, num_cpus=2
//!     cargo bench --bench microbench -- --quick            # smoke run
//!     cargo bench --bench microbench -- --multinode        # also the multi-node rows
//!     cargo bench --bench microbench -- --only task_sync_latency_us,put_small_per_s
//!     cargo bench --bench microbench -- --num-cpus 4
//!     cargo bench --bench microbench -- --list
//! Unknown arguments (such as the `--bench` that cargo passes) are ignored.
//!
//! `--multinode` (as bench.py's) adds, after the single-node run, on a local
//! 3-node cluster (`Config::local_nodes(3)`, 1 CPU and a 2 GiB store per
//! node: a head = the driver's node, node A, node B): cluster_start_3node_s,
//! tcp_copy_gb_per_s (plain loopback TCP, the reference),
//! internode_transfer_gb_per_s (bench.py's scenario),
//! spill_throughput_per_s and metg_3node_us (the METG sweep across the
//! three nodes); then, if `sinfo` answers with >= 3 nodes,
//! cluster_start_slurm_3node_s (`srun -N 3 rust-ray-launch -- <this binary>
//! --start-app`; rust-ray-launch from $RUSTRAY_LAUNCHER or next to this
//! binary's target directory); and, if it answers with >= 2 nodes,
//! internode_transfer_slurm_gb_per_s with its reference
//! tcp_copy_slurm_gb_per_s (`srun -N 2 rust-ray-launch -- <this binary>
//! --transfer-app ...`: the same transfer as internode_transfer_gb_per_s
//! between the two Slurm nodes, interleaved per rep with a plain TCP copy of
//! the same bytes between them; see sc_internode_slurm). Then the data
//! plane's rows (microbench_parts/fabric.rs): raw_fi_read_gb_per_s, the
//! bare fi_read ceiling between two processes (shm), and
//! internode_transfer_gb_per_s once per transport (fabric, tcp) and size
//! (1 MiB .. 1 GiB) on local nodes, and between two Slurm nodes when sinfo
//! answers (rows told apart by extra.transport / extra.slurm).
//!
//! Raylet and worker processes re-execute this binary with the same argv and
//! `RUSTRAY_ROLE` set; `main` hands them to `rustray::init` first thing
//! (it never returns there). `--start-app` is the tiny application that
//! cluster_start_slurm_3node_s launches (init, one task, print, exit);
//! `--transfer-app <bytes> <warmups> <reps>` the one of
//! internode_transfer_slurm_gb_per_s; `--tcp-app <dir> <bytes> <warmups>
//! <reps>` a rustray-free TCP copy between ranks 0 and 1 of an `srun -N 2`
//! step (the reference when the transfer app cannot give it).
//!
//! Layout: this file holds the scenario list, the sizes, the remote
//! functions and actors the scenarios call, argument parsing and `main`;
//! each family of scenarios is a file of `microbench_parts/`: `harness`
//! (JSON rows, statistics, process memory), `floor` (the machine's floor),
//! `cluster` (start-up and idle memory), `tasks`, `actors`, `objects`, `metg`, `multinode` (local nodes), `slurm`
//! (an emulated or real Slurm cluster, and the applications it launches)
//! and `fabric` (the data plane). A scenario is a `sc_*` function there,
//! called from `main` when its row is wanted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::time::{Duration, Instant};

use rustray::{ActorHandle, ActorOptions, ObjectRef};

#[path = "microbench_parts/harness.rs"]
mod harness;
use harness::*;
#[path = "microbench_parts/cluster.rs"]
mod cluster;
use cluster::*;
#[path = "microbench_parts/tasks.rs"]
mod tasks;
use tasks::*;
#[path = "microbench_parts/actors.rs"]
mod actors;
use actors::*;
#[path = "microbench_parts/objects.rs"]
mod objects;
use objects::*;
#[path = "microbench_parts/metg.rs"]
mod metg;
use metg::*;
#[path = "microbench_parts/multinode.rs"]
mod multinode;
use multinode::*;
#[path = "microbench_parts/slurm.rs"]
mod slurm;
use slurm::*;
#[path = "microbench_parts/cold.rs"]
mod cold;
#[path = "microbench_parts/fabric.rs"]
mod fabric;
#[path = "microbench_parts/floor.rs"]
mod floor;
#[path = "../tests/common/smaps.rs"]
#[allow(dead_code)] // shared with the tests, which use all of it
mod smaps;

const MIB: usize = 1 << 20;
const GB: f64 = 1e9;
/// After dropping a large object, before the next put (as bench.py).
const FREE_PAUSE: Duration = Duration::from_millis(300);
const METG_WARMUP_US: u64 = 1000;
const METG_EFF: f64 = 0.5;
const IMPL: &str = concat!("rustray-", env!("CARGO_PKG_VERSION"));

/// Run order of bench.py, plus `memcpy_gb_per_s` (the reference for
/// put_large_gb_per_s, which bench.py does not have).
const SCENARIOS: &[&str] = &[
    "cluster_start_s",
    "idle_rss_mb",
    // the machine's floor (microbench_parts/floor.rs)
    "uds_roundtrip_us",
    "task_sync_latency_us",
    "task_async_throughput_per_s",
    "task_chain_per_s",
    "nested_tasks_per_s",
    "actor_call_sync_latency_us",
    "actor_call_async_throughput_per_s",
    "actor_many_per_s",
    "put_small_per_s",
    "get_small_per_s",
    "memcpy_gb_per_s",
    "put_large_gb_per_s",
    // the first large put of the cluster's store (pages never touched)
    "put_large_cold_gb_per_s",
    // its floor: the kernel faulting in a fresh /dev/shm file, no copy
    cold::FIRST_TOUCH,
    // the first large put into a plain /dev/shm store (4 KiB pages)
    cold::COLD_4K,
    "get_large_gb_per_s",
    "task_large_arg_gb_per_s",
    "wait_1000_ms",
    "wait_1000_ready_ms",
    "metg_us",
    // --multinode (bench.py's is internode_transfer_gb_per_s; the rest are
    // rustray's own: its reference TCP copy and the multi-node issue's rows)
    "cluster_start_3node_s",
    "tcp_copy_gb_per_s",
    "internode_transfer_gb_per_s",
    "spill_throughput_per_s",
    "metg_3node_us",
    "cluster_start_slurm_3node_s",
    START_SLURM_MPI,
    "tcp_copy_slurm_gb_per_s",
    "internode_transfer_slurm_gb_per_s",
    // The data plane: the raw fi_read ceiling (internode_transfer_gb_per_s
    // then also gets one row per transport and size)
    fabric::RAW,
];
const INTERNODE: &str = "internode_transfer_gb_per_s";
/// cluster_start_slurm_3node_s through the MPI bootstrap.
const START_SLURM_MPI: &str = "cluster_start_slurm_3node_mpi_s";
/// internode_transfer_gb_per_s on 2 Slurm nodes (`srun -N 2 rust-ray-launch
/// -- <this binary> --transfer-app ...`) and its reference.
const INTERNODE_SLURM: &str = "internode_transfer_slurm_gb_per_s";
const TCP_SLURM: &str = "tcp_copy_slurm_gb_per_s";
/// Run only with `--multinode` (or named in `--only`), on their own clusters
/// after the single-node run, as bench.py's internode_transfer_gb_per_s.
const MULTINODE: &[&str] = &[
    "cluster_start_3node_s",
    "tcp_copy_gb_per_s",
    INTERNODE,
    "spill_throughput_per_s",
    "metg_3node_us",
    "cluster_start_slurm_3node_s",
    START_SLURM_MPI,
    TCP_SLURM,
    INTERNODE_SLURM,
    fabric::RAW,
];
/// Nodes of the local multi-node cluster: a head (the driver's node, no
/// work is pinned there) + node A + node B, as bench.py's Cluster.
const MN_NODES: u16 = 3;
/// Object store per node (bench.py: 2 GiB; mapped lazily).
const MN_STORE: u64 = 2 << 30;
/// Bound on any single multi-node get, so a library hang fails the run
/// with a message instead of hanging it.
const MN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on one `srun ... rust-ray-launch` start.
const SRUN_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on the `srun ... --transfer-app` step (cluster start, warm-ups and
/// reps of both the transfer and its TCP reference, teardown) and on the
/// `srun ... --tcp-app` step.
const SRUN_TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// Object store per node of the 2-node Slurm cluster (`--object-store-memory`).
const SLURM_STORE: u64 = 3 << 29; // 1.5 GiB
/// spill_throughput_per_s: the sleep of each task.
const SPILL_SLEEP_MS: u64 = 5;

// ------------------------------------------------------------------- sizes

/// bench.py's FULL / QUICK dicts.
struct Sizes {
    start_reps: usize,
    settle_s: f64,
    sync_warmup: usize,
    sync_n: usize,
    async_n: usize,
    async_warmup: usize,
    reps: usize,
    chain_len: usize,
    chain_warmup: usize,
    nested_parents: usize,
    nested_children: u64,
    actor_async_n: usize,
    actor_async_warmup: usize,
    many_actors: usize,
    many_calls: usize,
    small_n: usize,
    small_warmup: usize,
    large_put_bytes: usize,
    large_warmup: usize,
    large_reps: usize,
    large_arg_bytes: usize,
    large_arg_tasks: usize,
    wait_n: usize,
    metg_min_tasks: u64,
    metg_work_us: u64,
    metg_reps: usize,
    metg_budget_s: Option<f64>,
    internode_bytes: usize,
    internode_warmup: usize,
    internode_reps: usize,
    spill_tasks: usize,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            start_reps: 3,
            settle_s: 3.0,
            sync_warmup: 100,
            sync_n: 1000,
            async_n: 20000,
            async_warmup: 2000,
            reps: 3,
            chain_len: 1000,
            chain_warmup: 100,
            nested_parents: 20,
            nested_children: 100,
            actor_async_n: 10000,
            actor_async_warmup: 1000,
            many_actors: 16,
            many_calls: 1000,
            small_n: 10000,
            small_warmup: 1000,
            large_put_bytes: 512 * MIB,
            large_warmup: 6,
            large_reps: 5,
            large_arg_bytes: 256 * MIB,
            large_arg_tasks: 10,
            wait_n: 1000,
            metg_min_tasks: 200,
            metg_work_us: 500_000,
            metg_reps: 2,
            metg_budget_s: None,
            internode_bytes: 256 * MIB,
            internode_warmup: 3,
            internode_reps: 5,
            spill_tasks: 300,
        }
    }

    fn quick() -> Sizes {
        Sizes {
            start_reps: 1,
            settle_s: 2.0,
            sync_warmup: 20,
            sync_n: 200,
            async_n: 2000,
            async_warmup: 200,
            reps: 1,
            chain_len: 200,
            chain_warmup: 20,
            nested_parents: 4,
            nested_children: 50,
            actor_async_n: 2000,
            actor_async_warmup: 200,
            many_actors: 4,
            many_calls: 200,
            small_n: 2000,
            small_warmup: 200,
            large_put_bytes: 128 * MIB,
            large_warmup: 2,
            large_reps: 2,
            large_arg_bytes: 64 * MIB,
            large_arg_tasks: 4,
            wait_n: 1000,
            metg_min_tasks: 100,
            metg_work_us: 200_000,
            metg_reps: 2,
            metg_budget_s: Some(60.0),
            internode_bytes: 64 * MIB,
            internode_warmup: 1,
            internode_reps: 2,
            spill_tasks: 60,
        }
    }
}

// ------------------------------------------------------------ remote defs

/// Trivial task: small int in, same int out.
#[rustray::remote]
fn noop(i: u64) -> u64 {
    i
}

/// Chain link: receives the previous link's value (the runtime resolves the ref).
#[rustray::remote]
fn chain_step(x: u64) -> u64 {
    x + 1
}

/// Submits `c` trivial tasks from inside a task, gets them all.
#[rustray::remote]
fn nested_parent(c: u64) -> u64 {
    let refs: Vec<ObjectRef<u64>> = (0..c).map(|i| noop::remote(i).unwrap()).collect();
    rustray::get_all(&refs)
        .expect("nested_parent: inner noop tasks")
        .iter()
        .sum()
}

/// Receives the ref of a large u8 array (boxed: NOT resolved by the runtime),
/// maps it zero-copy with `get_view`, returns (byte sum, seconds spent summing).
#[rustray::remote]
fn array_sum(a: ObjectRef<Vec<u8>>) -> (u64, f64) {
    let view = rustray::get_view(&a).expect("array_sum: get_view of the argument");
    let t0 = Instant::now();
    // Summed in u32 per 64 KiB (no overflow: 65,536 x 255 < 2^32), which
    // the compiler vectorises well; widening every byte to u64 ran at half
    // numpy's speed and made the row measure the loop, not the runtime.
    let s: u64 = view
        .chunks(1 << 16)
        .map(|c| c.iter().map(|&b| b as u32).sum::<u32>() as u64)
        .sum();
    (s, t0.elapsed().as_secs_f64())
}

/// Spins on the CPU (no sleep) for `d_us` microseconds, returns `d_us`.
#[rustray::remote]
fn busy(d_us: u64) -> u64 {
    let end = Instant::now() + Duration::from_micros(d_us);
    while Instant::now() < end {}
    d_us
}

/// Multi-node: made on node A (pinned by the caller), like bench.py's
/// `np.full(nbytes, seed % 251, uint8)`.
#[rustray::remote]
fn make_on_a(nbytes: usize, seed: u64) -> Vec<u8> {
    vec![(seed % 251) as u8; nbytes]
}

/// Multi-node: runs on node B. `boxed = [ref]` is NOT resolved before the
/// task starts, so the pull A -> B is timed here, around `get_view` (the
/// raylet pulls the bytes into B's store; the view maps them, no further
/// copy). Returns (seconds, sum of every 4096th byte, length, node name).
#[rustray::remote]
fn pull_on_b(boxed: Vec<ObjectRef<Vec<u8>>>) -> (f64, u64, usize, String) {
    let t0 = Instant::now();
    let v = rustray::get_view(&boxed[0]).expect("pull_on_b: get_view of the boxed ref");
    let dt = t0.elapsed().as_secs_f64();
    let s: u64 = v.iter().step_by(4096).map(|&b| b as u64).sum();
    let node = rustray::node_name().expect("pull_on_b: node_name");
    (dt, s, v.len(), node)
}

/// tcp_copy_slurm_gb_per_s (inside `--transfer-app`): runs on node B, the
/// reference's receiver. Connects to the TCP server of the driver on node A
/// (`addr` = A's address:port), asks for `n` bytes and read_exact()s them into
/// a pre-touched buffer kept by this worker across calls (allocated and
/// filled before the clock starts). Timed from connect to the last byte, as
/// TcpCopy::once. Returns (seconds, sum of every 4096th byte, node name).
#[rustray::remote]
fn tcp_pull_on_b(addr: String, n: usize) -> (f64, u64, String) {
    use std::io::Read;
    static BUF: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
    let mut buf = BUF.lock().unwrap_or_else(|e| e.into_inner());
    if buf.len() != n {
        *buf = Vec::new();
        *buf = vec![0u8; n];
    }
    buf.fill(2); // touched (and no stale bytes from the previous copy)
    let sa: std::net::SocketAddr = addr.parse().expect("tcp_pull_on_b: server address");
    let t0 = Instant::now();
    let mut s = tcp_request(sa, n, "tcp_pull_on_b");
    s.read_exact(&mut buf).expect("tcp_pull_on_b: read");
    let dt = secs(t0);
    let sum: u64 = buf.iter().step_by(4096).map(|&b| b as u64).sum();
    let node = rustray::node_name().expect("tcp_pull_on_b: node_name");
    (dt, sum, node)
}

/// spill_throughput_per_s: sleeps `ms`, returns the node it ran on.
#[rustray::remote]
fn sleep_where(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    rustray::node_name().expect("sleep_where: node_name")
}

#[derive(Default)]
pub struct Counter {
    n: u64,
}

#[rustray::actor]
impl Counter {
    pub fn new() -> Self {
        Counter { n: 0 }
    }

    pub fn inc(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

fn new_counter() -> ActorHandle<Counter> {
    ActorOptions::<Counter>::new()
        .remote(())
        .expect("create Counter actor")
}

// ------------------------------------------------------------------ main

struct Args {
    quick: bool,
    only: Vec<String>,
    list: bool,
    num_cpus: u32,
    multinode: bool,
    start_app: bool,
    /// `--uds-echo <path>`: the echo side of uds_roundtrip_us
    uds_echo: Option<String>,
    /// `--transfer-app <bytes> <warmups> <reps>`
    transfer_app: Option<(usize, usize, usize)>,
    /// `--tcp-app <dir> <bytes> <warmups> <reps>`
    tcp_app: Option<(String, usize, usize, usize)>,
    /// `--raw-fabric-app <dir> <bytes> <warmups> <reps>`
    raw_fabric_app: Option<(String, usize, usize, usize)>,
}

/// Parses argv by hand; unknown arguments (cargo's `--bench`, ...) are ignored.
/// Side-effect free except for exiting on a malformed value (before init).
fn parse_args() -> Args {
    let mut a = Args {
        quick: false,
        only: Vec::new(),
        list: false,
        num_cpus: 2,
        multinode: false,
        start_app: false,
        uds_echo: None,
        transfer_app: None,
        tcp_app: None,
        raw_fabric_app: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let arg = argv[i].as_str();
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (arg, None),
        };
        let value = |i: &mut usize| -> String {
            if let Some(v) = inline.clone() {
                return v;
            }
            *i += 1;
            match argv.get(*i) {
                Some(v) => v.clone(),
                None => {
                    eprintln!("[bench] {key} needs a value");
                    std::process::exit(2);
                }
            }
        };
        match key {
            "--quick" => a.quick = true,
            "--list" => a.list = true,
            "--multinode" => a.multinode = true,
            "--start-app" => a.start_app = true,
            "--uds-echo" => a.uds_echo = Some(value(&mut i)),
            "--transfer-app" | "--tcp-app" | "--raw-fabric-app" => {
                // Positional values: [dir] bytes warmups reps.
                let num = |i: &mut usize| -> usize {
                    let v = value(i);
                    v.parse().unwrap_or_else(|_| {
                        eprintln!("[bench] {key}: bad number {v:?}");
                        std::process::exit(2);
                    })
                };
                if key == "--tcp-app" {
                    let dir = value(&mut i);
                    let (n, w, r) = (num(&mut i), num(&mut i), num(&mut i));
                    a.tcp_app = Some((dir, n, w, r));
                } else if key == "--raw-fabric-app" {
                    let dir = value(&mut i);
                    let (n, w, r) = (num(&mut i), num(&mut i), num(&mut i));
                    a.raw_fabric_app = Some((dir, n, w, r));
                } else {
                    let (n, w, r) = (num(&mut i), num(&mut i), num(&mut i));
                    a.transfer_app = Some((n, w, r));
                }
            }
            "--only" => {
                a.only = value(&mut i)
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "--num-cpus" => {
                let v = value(&mut i);
                a.num_cpus = match v.parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        eprintln!("[bench] --num-cpus: bad value {v:?}");
                        std::process::exit(2);
                    }
                };
            }
            _ => {} // ignored
        }
        i += 1;
    }
    a
}

type ScenarioFn = fn(&Sizes);

fn timed_step(name: &str, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    log(&format!("{name} done in {:.1}s", secs(t)));
}

fn main() {
    // Raylets and workers are this binary re-executed (same argv, role in
    // the environment): enter that role before anything else runs.
    // `init` never returns there.
    rustray::__private::serve_role_if_any();
    if std::env::var_os("RUSTRAY_ROLE").is_some() {
        let _ = rustray::init();
        unreachable!("rustray::init returns only in a driver");
    }
    let args = parse_args();
    if args.start_app {
        start_app();
        return;
    }
    if let Some(path) = &args.uds_echo {
        floor::uds_echo(path);
        return;
    }
    if let Some((n, w, r)) = args.transfer_app {
        transfer_app(n, w, r);
        return;
    }
    if let Some((dir, n, w, r)) = &args.tcp_app {
        tcp_app(dir, *n, *w, *r);
        return;
    }
    if let Some((dir, n, w, r)) = &args.raw_fabric_app {
        fabric::raw_fabric_app(dir, *n, *w, *r);
        return;
    }
    if args.list {
        for s in SCENARIOS {
            if MULTINODE.contains(s) {
                println!("{s} (--multinode)");
            } else {
                println!("{s}");
            }
        }
        return;
    }
    for s in &args.only {
        if !SCENARIOS.contains(&s.as_str()) {
            eprintln!("[bench] unknown scenario {s:?}; see --list");
            std::process::exit(2);
        }
    }
    let cfg = rustray::Config::new().num_cpus(args.num_cpus as f64);
    let c = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    // As bench.py: without --only, the single-node scenarios, plus the
    // multi-node ones with --multinode.
    let want: BTreeSet<&str> = if args.only.is_empty() {
        SCENARIOS
            .iter()
            .copied()
            .filter(|s| args.multinode || !MULTINODE.contains(s))
            .collect()
    } else {
        args.only.iter().map(String::as_str).collect()
    };
    let w = |s: &str| want.contains(s);

    let t_all = Instant::now();
    log(&format!(
        "{IMPL} pid {} mode={}{} num_cpus={} load1={}",
        std::process::id(),
        if args.quick { "quick" } else { "full" },
        if args.multinode { " multinode" } else { "" },
        args.num_cpus,
        load1()
    ));
    let single = want.iter().any(|s| !MULTINODE.contains(s));
    if single {
        let want_4k = w(cold::COLD_4K);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sc_cluster_start(&cfg, &c, w("cluster_start_s"), args.num_cpus);
            if w("idle_rss_mb") {
                sc_idle_rss(&c);
            }
            if w("uds_roundtrip_us") {
                timed_step("uds_roundtrip_us", || floor::sc_uds_roundtrip(&c));
            }
            let steps: [(&str, ScenarioFn); 7] = [
                ("task_sync_latency_us", sc_task_sync_latency),
                ("task_async_throughput_per_s", sc_task_async),
                ("task_chain_per_s", sc_task_chain),
                ("nested_tasks_per_s", sc_nested),
                ("actor_call_sync_latency_us", sc_actor_sync),
                ("actor_call_async_throughput_per_s", sc_actor_async),
                ("actor_many_per_s", sc_actor_many),
            ];
            for (name, f) in steps {
                if w(name) {
                    timed_step(name, || f(&c));
                }
            }
            if w("put_small_per_s") || w("get_small_per_s") {
                timed_step("put/get_small", || {
                    sc_small_put_get(&c, w("put_small_per_s"), w("get_small_per_s"))
                });
            }
            let want_put = w("put_large_gb_per_s");
            let want_cold = w("put_large_cold_gb_per_s");
            let memcpy = if want_put || want_cold || want_4k || w("memcpy_gb_per_s") {
                Some(sc_memcpy(&c, w("memcpy_gb_per_s")))
            } else {
                None
            };
            if want_put || want_cold || w("get_large_gb_per_s") {
                timed_step("put/get_large", || {
                    sc_large_put_get(&c, want_put, want_cold, w("get_large_gb_per_s"), memcpy)
                });
            }
            if w(cold::FIRST_TOUCH) {
                timed_step(cold::FIRST_TOUCH, || cold::sc_first_touch(&c));
            }
            if w("task_large_arg_gb_per_s") {
                timed_step("task_large_arg_gb_per_s", || sc_task_large_arg(&c));
            }
            if w("wait_1000_ms") || w("wait_1000_ready_ms") {
                timed_step("wait_1000", || {
                    sc_wait(&c, w("wait_1000_ms"), w("wait_1000_ready_ms"))
                });
            }
            if w("metg_us") {
                timed_step("metg_us", || sc_metg(&c, args.num_cpus));
            }
            memcpy
        }));
        rustray::shutdown();
        let memcpy = match res {
            Ok(m) => m,
            Err(e) => std::panic::resume_unwind(e),
        };
        // On clusters of its own, after the single-node cluster is gone.
        if want_4k {
            timed_step(cold::COLD_4K, || {
                cold::sc_cold_4k(&c, args.num_cpus as usize, memcpy)
            });
        }
    }
    // Multi-node: each step on its own, so that a failing one (its panic
    // message and backtrace go to stderr) does not hide the others' rows;
    // the run still exits non-zero at the end.
    let mut failed: Vec<&str> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut()| -> bool {
        let t = Instant::now();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        if ok {
            log(&format!("{name} done in {:.1}s", secs(t)));
        } else {
            log(&format!("{name} FAILED after {:.1}s", secs(t)));
            failed.push(name);
        }
        ok
    };
    // One local 3-node cluster (head + A + B) for these, as bench.py's
    // internode Cluster; the tcp_copy reference needs none but runs with
    // internode (same run, same conditions).
    let on_cluster = [
        "cluster_start_3node_s",
        INTERNODE,
        "spill_throughput_per_s",
        "metg_3node_us",
    ];
    if on_cluster.iter().any(|s| w(s)) {
        let up = step("cluster_start_3node_s", &mut || {
            sc_cluster_start_3node(&c, w("cluster_start_3node_s"))
        });
        if up {
            if w(INTERNODE) || w("tcp_copy_gb_per_s") {
                step(INTERNODE, &mut || {
                    sc_internode(&c, w(INTERNODE), w("tcp_copy_gb_per_s"))
                });
            }
            if w("spill_throughput_per_s") {
                step("spill_throughput_per_s", &mut || sc_spill(&c));
            }
            if w("metg_3node_us") {
                step("metg_3node_us", &mut || sc_metg_3node(&c));
            }
        } else {
            log("multinode scenarios on the local cluster skipped: it did not start");
        }
        rustray::shutdown();
    } else if w("tcp_copy_gb_per_s") {
        step("tcp_copy_gb_per_s", &mut || sc_internode(&c, false, true));
    }
    // The data plane by transport and size, beside the fi_read ceiling.
    if w(fabric::RAW) || w(INTERNODE) {
        let mut raw = Vec::new();
        step(fabric::RAW, &mut || {
            raw = fabric::sc_raw(args.quick, w(fabric::RAW))
        });
        if w(INTERNODE) {
            step("internode_transfer_gb_per_s by transport", &mut || {
                fabric::sc_transports(args.quick, &raw)
            });
            let mut raw_slurm = Vec::new();
            step("raw_fi_read_gb_per_s on Slurm", &mut || {
                raw_slurm = fabric::sc_raw_slurm(args.quick, w(fabric::RAW))
            });
            step(
                "internode_transfer_gb_per_s by transport on Slurm",
                &mut || fabric::sc_transports_slurm(args.quick, &raw_slurm),
            );
        }
    }
    if w("cluster_start_slurm_3node_s") {
        step("cluster_start_slurm_3node_s", &mut || {
            sc_cluster_start_slurm(&c, false)
        });
    }
    if w(START_SLURM_MPI) {
        step(START_SLURM_MPI, &mut || sc_cluster_start_slurm(&c, true));
    }
    if w(INTERNODE_SLURM) || w(TCP_SLURM) {
        step(INTERNODE_SLURM, &mut || {
            sc_internode_slurm(&c, w(INTERNODE_SLURM), w(TCP_SLURM))
        });
    }
    log(&format!(
        "total wall time {:.1}s load1={}",
        secs(t_all),
        load1()
    ));
    if !failed.is_empty() {
        log(&format!("FAILED: {}", failed.join(", ")));
        std::process::exit(1);
    }
}
