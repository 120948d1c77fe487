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
//! internode_transfer_gb_per_s (bench.py's scenario) and
//! spill_throughput_per_s; then, if `sinfo` answers with >= 3 nodes,
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::time::{Duration, Instant};

use rustray::{ActorHandle, ActorOptions, ObjectRef};

#[path = "microbench_parts/fabric.rs"]
mod fabric;
#[path = "microbench_parts/floor.rs"]
mod floor;

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
    let refs: Vec<ObjectRef<u64>> = (0..c).map(noop::remote).collect();
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
    let s: u64 = view.iter().map(|&b| b as u64).sum();
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

// ------------------------------------------------------------------ JSON

/// Minimal JSON value, written by hand (no serde_json dependency).
enum J {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl From<bool> for J {
    fn from(v: bool) -> J {
        J::Bool(v)
    }
}
impl From<f64> for J {
    fn from(v: f64) -> J {
        J::Num(v)
    }
}
impl From<u64> for J {
    fn from(v: u64) -> J {
        J::Int(v as i64)
    }
}
impl From<usize> for J {
    fn from(v: usize) -> J {
        J::Int(v as i64)
    }
}
impl From<u32> for J {
    fn from(v: u32) -> J {
        J::Int(v as i64)
    }
}
impl From<&str> for J {
    fn from(v: &str) -> J {
        J::Str(v.to_string())
    }
}
impl From<String> for J {
    fn from(v: String) -> J {
        J::Str(v)
    }
}
impl<T: Into<J>> From<Vec<T>> for J {
    fn from(v: Vec<T>) -> J {
        J::Arr(v.into_iter().map(Into::into).collect())
    }
}
impl<T: Into<J>> From<Option<T>> for J {
    fn from(v: Option<T>) -> J {
        v.map_or(J::Null, Into::into)
    }
}

fn obj(fields: Vec<(&str, J)>) -> J {
    J::Obj(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(out: &mut String, v: &J) {
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Int(i) => out.push_str(&format!("{i}")),
        // Debug keeps a ".0" on integral floats (like Python's json) and uses
        // an exponent only for very large/small magnitudes (valid JSON).
        J::Num(x) if x.is_finite() => out.push_str(&format!("{x:?}")),
        J::Num(_) => out.push_str("null"),
        J::Str(s) => write_str(out, s),
        J::Arr(xs) => {
            out.push('[');
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(out, x);
            }
            out.push(']');
        }
        J::Obj(kv) => {
            out.push('{');
            for (i, (k, x)) in kv.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_json(out, x);
            }
            out.push('}');
        }
    }
}

/// Python's `round(x, nd)` (to within float noise).
fn rnd(x: f64, nd: i32) -> f64 {
    let p = 10f64.powi(nd);
    (x * p).round() / p
}

fn rnd_all(xs: &[f64], nd: i32) -> Vec<f64> {
    xs.iter().map(|&x| rnd(x, nd)).collect()
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|t| t.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn log(msg: &str) {
    eprintln!("[bench] {msg}");
}

fn emit(scenario: &str, unit: &str, value: f64, n: usize, reps: usize, extra: Vec<(&str, J)>) {
    let rec = obj(vec![
        ("scenario", scenario.into()),
        ("unit", unit.into()),
        ("value", rnd(value, 6).into()),
        ("n", n.into()),
        ("reps", reps.into()),
        ("impl", IMPL.into()),
        ("load1", rnd(load1(), 2).into()),
        ("extra", obj(extra)),
    ]);
    let mut line = String::new();
    write_json(&mut line, &rec);
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    writeln!(lock, "{line}").expect("write result line to stdout");
    lock.flush().expect("flush stdout");
}

// ----------------------------------------------------------------- stats

/// `statistics.median`: mean of the two middle values for even lengths.
fn median(xs: &[f64]) -> f64 {
    assert!(!xs.is_empty(), "median of no samples");
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// bench.py's `pct`: nearest rank, Python's round() (ties to even).
fn pct(xs: &[f64], p: f64) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let k = (p / 100.0 * (s.len() as f64 - 1.0)).round_ties_even();
    let k = (k.max(0.0) as usize).min(s.len() - 1);
    s[k]
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn latency_extra(lat: &[f64]) -> Vec<(&'static str, J)> {
    vec![
        ("p10", rnd(pct(lat, 10.0), 1).into()),
        ("p90", rnd(pct(lat, 90.0), 1).into()),
        ("p99", rnd(pct(lat, 99.0), 1).into()),
        ("mean", rnd(mean(lat), 1).into()),
    ]
}

fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

// -------------------------------------------------------- process memory

/// pid -> (ppid, comm) from /proc.
fn proc_table() -> HashMap<u32, (u32, String)> {
    let mut procs = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return procs;
    };
    for ent in dir.flatten() {
        let name = ent.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(lp), Some(rp)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[lp + 1..rp].to_string();
        // after ") ": state ppid ...
        let Some(ppid) = stat[rp + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        procs.insert(pid, (ppid, comm));
    }
    procs
}

/// Every descendant of this driver (the runtime's daemons and workers),
/// driver excluded, with its comm.
fn rustray_processes() -> Vec<(u32, String)> {
    let procs = proc_table();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, (ppid, _)) in &procs {
        children.entry(*ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![std::process::id()];
    while let Some(p) = stack.pop() {
        if let Some(cs) = children.get(&p) {
            for &c in cs {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out.sort_unstable();
    out.into_iter()
        .filter_map(|pid| procs.get(&pid).map(|(_, comm)| (pid, comm.clone())))
        .collect()
}

/// (VmRSS, Pss) in KiB; Pss is 0 where smaps_rollup is unreadable.
fn mem_kib(pid: u32) -> (u64, u64) {
    fn field(text: &str, key: &str) -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|t| t.parse().ok())
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0, 0);
    };
    let rss = field(&status, "VmRSS:").unwrap_or(0);
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| field(&t, "Pss:"))
        .unwrap_or(0);
    (rss, pss)
}

// ------------------------------------------------------------- scenarios

fn sc_cluster_start(cfg: &rustray::Config, c: &Sizes, want: bool, num_cpus: u32) {
    // ray.init() until the first trivial task's result is back; repeated
    // start_reps times with shutdown + 1 s sleep between; the last cluster
    // stays up for the rest of the run.
    let reps = if want { c.start_reps } else { 1 };
    let mut samples = Vec::new();
    for r in 0..reps {
        let t0 = Instant::now();
        rustray::init_with(cfg.clone()).expect("cluster_start_s: rustray::init_with");
        let v = rustray::get(&noop::remote(7u64)).expect("cluster_start_s: first noop task");
        let dt = secs(t0);
        assert_eq!(v, 7, "cluster_start_s: noop(7) returned {v}");
        samples.push(dt);
        if r < reps - 1 {
            rustray::shutdown();
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if want {
        emit(
            "cluster_start_s",
            "s",
            median(&samples),
            1,
            samples.len(),
            vec![
                ("samples", rnd_all(&samples, 4).into()),
                ("first", rnd(samples[0], 4).into()),
                ("mode", "local_start".into()),
                ("num_cpus", num_cpus.into()),
            ],
        );
    }
}

fn sc_idle_rss(c: &Sizes) {
    std::thread::sleep(Duration::from_secs_f64(c.settle_s));
    let mut tot_rss = 0u64;
    let mut tot_pss = 0u64;
    let mut count = 0usize;
    let mut by: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
    let mut procs = Vec::new();
    for (pid, comm) in rustray_processes() {
        let (rss, pss) = mem_kib(pid);
        if rss == 0 {
            continue; // zombie / exited
        }
        count += 1;
        tot_rss += rss;
        tot_pss += pss;
        let e = by.entry(comm.clone()).or_insert((0, 0.0, 0.0));
        e.0 += 1;
        e.1 += rss as f64 / 1024.0;
        e.2 += pss as f64 / 1024.0;
        procs.push(obj(vec![
            ("pid", pid.into()),
            ("comm", comm.as_str().into()),
            ("rss_mb", rnd(rss as f64 / 1024.0, 1).into()),
            ("pss_mb", rnd(pss as f64 / 1024.0, 1).into()),
        ]));
    }
    let (drss, _) = mem_kib(std::process::id());
    let rss_mib = tot_rss as f64 / 1024.0;
    let drss_mib = rnd(drss as f64 / 1024.0, 1);
    let by_process = J::Obj(
        by.into_iter()
            .map(|(k, (n, r, p))| {
                let v = obj(vec![
                    ("count", n.into()),
                    ("rss_mib", rnd(r, 1).into()),
                    ("pss_mib", rnd(p, 1).into()),
                ]);
                (k, v)
            })
            .collect(),
    );
    assert!(
        count > 0,
        "idle_rss_mb: found no descendant processes of the driver"
    );
    emit(
        "idle_rss_mb",
        "MiB",
        rss_mib,
        count,
        1,
        vec![
            ("pss_mib", rnd(tot_pss as f64 / 1024.0, 1).into()),
            ("driver_rss_mb", drss_mib.into()),
            ("driver_rss_mib", drss_mib.into()),
            // every descendant is a core process (no Python helper daemons)
            ("core_rss_mib", rnd(rss_mib, 1).into()),
            ("settle_s", c.settle_s.into()),
            ("by_process", by_process),
            ("processes", J::Arr(procs)),
        ],
    );
}

fn sc_task_sync_latency(c: &Sizes) {
    for i in 0..c.sync_warmup as u64 {
        let v = rustray::get(&noop::remote(i)).expect("task_sync_latency_us: warm-up get");
        assert_eq!(v, i, "task_sync_latency_us: warm-up noop({i}) returned {v}");
    }
    let mut lat = Vec::with_capacity(c.sync_n);
    for i in 0..c.sync_n as u64 {
        let t0 = Instant::now();
        let v = rustray::get(&noop::remote(i)).expect("task_sync_latency_us: get");
        lat.push(secs(t0) * 1e6);
        assert_eq!(v, i, "task_sync_latency_us: noop({i}) returned {v}");
    }
    emit(
        "task_sync_latency_us",
        "us",
        median(&lat),
        lat.len(),
        1,
        latency_extra(&lat),
    );
}

/// Submit n noop tasks, then one get of the whole list; returns the results.
fn async_tasks(n: usize) -> Vec<u64> {
    let refs: Vec<ObjectRef<u64>> = (0..n as u64).map(noop::remote).collect();
    rustray::get_all(&refs).expect("task_async_throughput_per_s: get_all")
}

fn check_async(out: &[u64], n: usize) {
    assert_eq!(
        out.len(),
        n,
        "task_async_throughput_per_s: {} results for {n} tasks",
        out.len()
    );
    for (i, &v) in out.iter().enumerate() {
        assert_eq!(
            v, i as u64,
            "task_async_throughput_per_s: noop({i}) returned {v}"
        );
    }
}

fn sc_task_async(c: &Sizes) {
    let out = async_tasks(c.async_warmup);
    check_async(&out, c.async_warmup);
    let n = c.async_n;
    let mut rates = Vec::new();
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let out = async_tasks(n);
        let dt = secs(t0);
        check_async(&out, n);
        rates.push(n as f64 / dt);
    }
    emit(
        "task_async_throughput_per_s",
        "tasks/s",
        median(&rates),
        n,
        rates.len(),
        vec![("samples", rnd_all(&rates, 1).into())],
    );
}

/// A chain of n links, all submitted up front; returns the final value.
fn chain(n: usize) -> u64 {
    let mut r: ObjectRef<u64> = chain_step::remote(0u64);
    for _ in 0..n - 1 {
        r = chain_step::remote(r);
    }
    rustray::get(&r).expect("task_chain_per_s: get of the last link")
}

fn sc_task_chain(c: &Sizes) {
    let v = chain(c.chain_warmup);
    assert_eq!(
        v, c.chain_warmup as u64,
        "task_chain_per_s: warm-up chain returned {v}"
    );
    let n = c.chain_len;
    let mut rates = Vec::new();
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let v = chain(n);
        let dt = secs(t0);
        assert_eq!(v, n as u64, "task_chain_per_s: chain of {n} returned {v}");
        rates.push(n as f64 / dt);
    }
    emit(
        "task_chain_per_s",
        "tasks/s",
        median(&rates),
        n,
        rates.len(),
        vec![("samples", rnd_all(&rates, 1).into())],
    );
}

fn nested(p: usize, ch: u64) -> Vec<u64> {
    let refs: Vec<ObjectRef<u64>> = (0..p).map(|_| nested_parent::remote(ch)).collect();
    rustray::get_all(&refs).expect("nested_tasks_per_s: get_all of the parents")
}

fn check_nested(out: &[u64], p: usize, ch: u64) {
    assert_eq!(
        out.len(),
        p,
        "nested_tasks_per_s: {} results for {p} parents",
        out.len()
    );
    let want = ch * (ch - 1) / 2;
    for &v in out {
        assert_eq!(
            v, want,
            "nested_tasks_per_s: a parent returned {v}, expected {want}"
        );
    }
}

fn sc_nested(c: &Sizes) {
    let (p, ch) = (c.nested_parents, c.nested_children);
    check_nested(&nested(p, ch), p, ch); // warm-up
    let mut rates = Vec::new();
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let out = nested(p, ch);
        let dt = secs(t0);
        check_nested(&out, p, ch);
        rates.push((p as u64 * ch) as f64 / dt);
    }
    emit(
        "nested_tasks_per_s",
        "inner_tasks/s",
        median(&rates),
        p * ch as usize,
        rates.len(),
        vec![
            ("parents", p.into()),
            ("children_per_parent", ch.into()),
            ("samples", rnd_all(&rates, 1).into()),
        ],
    );
}

fn sc_actor_sync(c: &Sizes) {
    let a = new_counter();
    for k in 0..c.sync_warmup as u64 {
        let v = rustray::get(&a.inc()).expect("actor_call_sync_latency_us: warm-up call");
        assert_eq!(
            v,
            k + 1,
            "actor_call_sync_latency_us: warm-up inc returned {v}"
        );
    }
    let mut lat = Vec::with_capacity(c.sync_n);
    for _ in 0..c.sync_n {
        let t0 = Instant::now();
        rustray::get(&a.inc()).expect("actor_call_sync_latency_us: call");
        lat.push(secs(t0) * 1e6);
    }
    let v = rustray::get(&a.inc()).expect("actor_call_sync_latency_us: final call");
    let want = (c.sync_warmup + c.sync_n + 1) as u64;
    assert_eq!(
        v, want,
        "actor_call_sync_latency_us: counter is {v}, expected {want}"
    );
    rustray::kill(&a).expect("actor_call_sync_latency_us: kill");
    emit(
        "actor_call_sync_latency_us",
        "us",
        median(&lat),
        lat.len(),
        1,
        latency_extra(&lat),
    );
}

fn sc_actor_async(c: &Sizes) {
    let a = new_counter();
    let w = c.actor_async_warmup;
    let refs: Vec<ObjectRef<u64>> = (0..w).map(|_| a.inc()).collect();
    let out = rustray::get_all(&refs).expect("actor_call_async_throughput_per_s: warm-up");
    assert_eq!(
        out.last().copied(),
        Some(w as u64),
        "actor_call_async_throughput_per_s: warm-up ended at the wrong count"
    );
    let n = c.actor_async_n;
    let mut rates = Vec::new();
    let mut done = w as u64;
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let refs: Vec<ObjectRef<u64>> = (0..n).map(|_| a.inc()).collect();
        let out = rustray::get_all(&refs).expect("actor_call_async_throughput_per_s: get_all");
        rates.push(n as f64 / secs(t0));
        // calls executed in submission order
        assert_eq!(
            out.len(),
            n,
            "actor_call_async_throughput_per_s: result count"
        );
        for (i, &v) in out.iter().enumerate() {
            let want = done + i as u64 + 1;
            assert_eq!(
                v, want,
                "actor_call_async_throughput_per_s: call {i} returned {v}, expected {want} (ordering)"
            );
        }
        done += n as u64;
    }
    rustray::kill(&a).expect("actor_call_async_throughput_per_s: kill");
    emit(
        "actor_call_async_throughput_per_s",
        "calls/s",
        median(&rates),
        n,
        rates.len(),
        vec![("samples", rnd_all(&rates, 1).into())],
    );
}

/// Create k Counters, `calls` round-robin calls, get all (timed, cold: includes
/// actor creation); then `calls` more on the same warm actors. Returns (cold s, warm s).
fn actor_many(k: usize, calls: usize) -> (f64, f64) {
    let t0 = Instant::now();
    let actors: Vec<ActorHandle<Counter>> = (0..k).map(|_| new_counter()).collect();
    let refs: Vec<ObjectRef<u64>> = (0..calls).map(|i| actors[i % k].inc()).collect();
    let out1 = rustray::get_all(&refs).expect("actor_many_per_s: get_all (cold)");
    let t_cold = secs(t0);
    let t1 = Instant::now();
    let refs: Vec<ObjectRef<u64>> = (0..calls).map(|i| actors[i % k].inc()).collect();
    let out2 = rustray::get_all(&refs).expect("actor_many_per_s: get_all (warm)");
    let t_warm = secs(t1);
    let refs: Vec<ObjectRef<u64>> = actors.iter().map(|x| x.inc()).collect();
    let fin = rustray::get_all(&refs).expect("actor_many_per_s: get_all (final)");
    assert_eq!(
        out1.len() + out2.len(),
        2 * calls,
        "actor_many_per_s: result count"
    );
    let total: u64 = fin.iter().sum();
    assert_eq!(
        total,
        (2 * calls + k) as u64,
        "actor_many_per_s: counters sum to {total}, expected {}",
        2 * calls + k
    );
    for x in &actors {
        rustray::kill(x).expect("actor_many_per_s: kill");
    }
    (t_cold, t_warm)
}

fn sc_actor_many(c: &Sizes) {
    let (k, calls) = (c.many_actors, c.many_calls);
    actor_many(k, calls); // warm-up
    std::thread::sleep(Duration::from_secs(1)); // let killed actor processes exit
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..c.reps {
        let (tc, tw) = actor_many(k, calls);
        cold.push(calls as f64 / tc);
        warm.push(calls as f64 / tw);
        std::thread::sleep(Duration::from_secs(1));
    }
    emit(
        "actor_many_per_s",
        "calls/s",
        median(&cold),
        calls,
        cold.len(),
        vec![
            ("actors", k.into()),
            ("includes_actor_creation", true.into()),
            ("samples", rnd_all(&cold, 1).into()),
            ("warm_calls_per_s", rnd(median(&warm), 1).into()),
        ],
    );
}

fn sc_small_put_get(c: &Sizes, want_put: bool, want_get: bool) {
    let (w, n) = (c.small_warmup, c.small_n);
    let refs: Vec<ObjectRef<u64>> = (0..w as u64)
        .map(|i| rustray::put(i).expect("put_small_per_s: warm-up put"))
        .collect();
    for (i, r) in refs.iter().enumerate() {
        let v = rustray::get(r).expect("get_small_per_s: warm-up get");
        assert_eq!(
            v, i as u64,
            "get_small_per_s: warm-up object {i} read back as {v}"
        );
    }
    drop(refs);
    let (mut put_rates, mut get_rates) = (Vec::new(), Vec::new());
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let refs: Vec<ObjectRef<u64>> = (0..n as u64)
            .map(|i| rustray::put(i).expect("put_small_per_s: put"))
            .collect();
        let t1 = Instant::now();
        let mut bad = None;
        for (i, r) in refs.iter().enumerate() {
            let v = rustray::get(r).expect("get_small_per_s: get");
            if v != i as u64 && bad.is_none() {
                bad = Some((i, v));
            }
        }
        let t2 = Instant::now();
        if let Some((i, v)) = bad {
            panic!("get_small_per_s: object {i} read back as {v}");
        }
        put_rates.push(n as f64 / (t1 - t0).as_secs_f64());
        get_rates.push(n as f64 / (t2 - t1).as_secs_f64());
        drop(refs);
    }
    if want_put {
        emit(
            "put_small_per_s",
            "ops/s",
            median(&put_rates),
            n,
            put_rates.len(),
            vec![("samples", rnd_all(&put_rates, 1).into())],
        );
    }
    if want_get {
        emit(
            "get_small_per_s",
            "ops/s",
            median(&get_rates),
            n,
            get_rates.len(),
            vec![("samples", rnd_all(&get_rates, 1).into())],
        );
    }
}

/// Reference for put_large_gb_per_s: a plain single-threaded `copy_from_slice`
/// of the same size into a pre-touched destination, same warm-ups and reps.
/// Returns the median GB/s.
fn sc_memcpy(c: &Sizes, want: bool) -> f64 {
    let nbytes = c.large_put_bytes;
    let src = vec![1u8; nbytes]; // non-zero fill: pages touched
    let mut dst = vec![0u8; nbytes];
    dst.fill(2); // calloc'd pages are lazy: touch them
    for _ in 0..c.large_warmup {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
    }
    dst.fill(2);
    let mut rates = Vec::new();
    let mut times = Vec::new();
    for _ in 0..c.large_reps {
        let t0 = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        let dt = secs(t0);
        rates.push(nbytes as f64 / GB / dt);
        times.push(dt);
    }
    assert!(
        dst == src,
        "memcpy_gb_per_s: destination differs from source after copy"
    );
    let med = median(&rates);
    if want {
        emit(
            "memcpy_gb_per_s",
            "GB/s",
            med,
            nbytes,
            rates.len(),
            vec![
                ("samples", rnd_all(&rates, 3).into()),
                ("copy_ms", rnd(median(&times) * 1e3, 2).into()),
                (
                    "note",
                    "single-threaded copy_from_slice into a pre-touched buffer; \
                     reference for put_large_gb_per_s"
                        .into(),
                ),
            ],
        );
    }
    med
}

fn sc_large_put_get(
    c: &Sizes,
    want_put: bool,
    want_cold: bool,
    want_get: bool,
    memcpy: Option<f64>,
) {
    let nbytes = c.large_put_bytes;
    // Warm-up put/get/drop cycles (store pages get faulted in); the very first
    // (cold) put is reported as first_put_gb_per_s. The source array is built
    // (pages touched) before each put, outside the timed region: put moves it.
    let mut cold = Vec::new();
    for _ in 0..c.large_warmup {
        let arr = vec![1u8; nbytes];
        let t0 = Instant::now();
        let r = rustray::put(arr).expect("put_large_gb_per_s: warm-up put");
        cold.push(nbytes as f64 / GB / secs(t0));
        let v = rustray::get_view(&r).expect("get_large_gb_per_s: warm-up get_view");
        assert_eq!(
            v.len(),
            nbytes,
            "get_large_gb_per_s: warm-up view has the wrong length"
        );
        drop(v);
        drop(r);
        std::thread::sleep(FREE_PAUSE);
    }
    let (mut put_rates, mut get_rates, mut checks, mut put_s, mut get_s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..c.large_reps {
        let arr = vec![1u8; nbytes];
        let t0 = Instant::now();
        let r = rustray::put(arr).expect("put_large_gb_per_s: put");
        let t1 = Instant::now();
        let v = rustray::get_view(&r).expect("get_large_gb_per_s: get_view"); // zero-copy
        let t2 = Instant::now();
        assert_eq!(
            v.len(),
            nbytes,
            "get_large_gb_per_s: view has the wrong length"
        );
        let t3 = Instant::now();
        let s: u64 = v.iter().step_by(4096).map(|&b| b as u64).sum(); // one byte per page
        checks.push(secs(t3));
        let want = (nbytes / 4096) as u64;
        assert_eq!(
            s, want,
            "get_large_gb_per_s: page-touch sum {s}, expected {want}"
        );
        put_rates.push(nbytes as f64 / GB / (t1 - t0).as_secs_f64());
        get_rates.push(nbytes as f64 / GB / (t2 - t1).as_secs_f64());
        put_s.push((t1 - t0).as_secs_f64());
        get_s.push((t2 - t1).as_secs_f64());
        drop(v);
        drop(r);
        std::thread::sleep(FREE_PAUSE);
    }
    if want_cold {
        // The first put of a 512 MiB object in this cluster: the store's
        // pages are touched for the first time (the issue's cold put).
        let mut extra = vec![("put_ms", rnd(nbytes as f64 / GB / cold[0] * 1e3, 2).into())];
        if let Some(m) = memcpy {
            extra.push(("memcpy_gb_per_s", rnd(m, 3).into()));
            extra.push(("vs_memcpy", rnd(cold[0] / m, 3).into()));
        }
        emit("put_large_cold_gb_per_s", "GB/s", cold[0], nbytes, 1, extra);
    }
    if want_put {
        let med = median(&put_rates);
        let mut extra = vec![
            ("samples", rnd_all(&put_rates, 3).into()),
            ("put_ms", rnd(median(&put_s) * 1e3, 2).into()),
            ("first_put_gb_per_s", rnd(cold[0], 3).into()),
            ("warmup_samples", rnd_all(&cold, 3).into()),
        ];
        if let Some(m) = memcpy {
            extra.push(("memcpy_gb_per_s", rnd(m, 3).into()));
            extra.push(("vs_memcpy", rnd(med / m, 3).into()));
        }
        emit(
            "put_large_gb_per_s",
            "GB/s",
            med,
            nbytes,
            put_rates.len(),
            extra,
        );
    }
    if want_get {
        emit(
            "get_large_gb_per_s",
            "GB/s",
            median(&get_rates),
            nbytes,
            get_rates.len(),
            vec![
                ("zero_copy", true.into()),
                ("samples", rnd_all(&get_rates, 3).into()),
                ("get_ms", rnd(median(&get_s) * 1e3, 3).into()),
                ("touch_pages_ms", rnd(median(&checks) * 1e3, 3).into()),
            ],
        );
    }
}

fn check_large_arg(out: &[(u64, f64)], k: usize, nbytes: usize) {
    assert_eq!(
        out.len(),
        k,
        "task_large_arg_gb_per_s: {} results for {k} tasks",
        out.len()
    );
    for &(s, _) in out {
        assert_eq!(
            s, nbytes as u64,
            "task_large_arg_gb_per_s: a task summed {s}, expected {nbytes}"
        );
    }
}

fn sc_task_large_arg(c: &Sizes) {
    let (nbytes, k) = (c.large_arg_bytes, c.large_arg_tasks);
    let r: ObjectRef<Vec<u8>> =
        rustray::put(vec![1u8; nbytes]).expect("task_large_arg_gb_per_s: put of the array");
    // warm-up
    let refs: Vec<ObjectRef<(u64, f64)>> = (0..2).map(|_| array_sum::remote(r.clone())).collect();
    let out = rustray::get_all(&refs).expect("task_large_arg_gb_per_s: warm-up get_all");
    check_large_arg(&out, 2, nbytes);
    let (mut rates, mut inner) = (Vec::new(), Vec::new());
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let refs: Vec<ObjectRef<(u64, f64)>> =
            (0..k).map(|_| array_sum::remote(r.clone())).collect();
        let out = rustray::get_all(&refs).expect("task_large_arg_gb_per_s: get_all");
        let dt = secs(t0);
        check_large_arg(&out, k, nbytes);
        rates.push((k * nbytes) as f64 / GB / dt);
        inner.push(out.iter().map(|&(_, t)| t).sum::<f64>() / out.len() as f64);
    }
    drop(r);
    emit(
        "task_large_arg_gb_per_s",
        "GB/s",
        median(&rates),
        k,
        rates.len(),
        vec![
            ("bytes_per_task", nbytes.into()),
            ("samples", rnd_all(&rates, 3).into()),
            ("in_task_sum_ms", rnd(median(&inner) * 1e3, 1).into()),
            (
                "note",
                "k tasks submitted at once, same ref, wall time until all back; \
                 ref passed boxed, get_view (zero-copy) inside the task"
                    .into(),
            ),
        ],
    );
}

fn submit_noops(n: usize) -> Vec<ObjectRef<u64>> {
    (0..n as u64).map(noop::remote).collect()
}

fn sc_wait(c: &Sizes, want_pending: bool, want_ready: bool) {
    let n = c.wait_n;
    let refs = submit_noops(n); // warm-up
    let (done, rest) = rustray::wait(&refs, n, None).expect("wait_1000_ms: warm-up wait");
    assert!(
        done.len() == n && rest.is_empty(),
        "wait_1000_ms: warm-up wait incomplete"
    );
    let (mut pend, mut ready) = (Vec::new(), Vec::new());
    for _ in 0..c.reps {
        let refs = submit_noops(n);
        let t0 = Instant::now();
        let (done, rest) = rustray::wait(&refs, n, None).expect("wait_1000_ms: wait");
        let t1 = Instant::now();
        assert!(
            done.len() == n && rest.is_empty(),
            "wait_1000_ms: {} ready, {} not ready, expected {n} ready",
            done.len(),
            rest.len()
        );
        let (done2, rest2) = rustray::wait(&refs, n, None).expect("wait_1000_ready_ms: wait");
        let t2 = Instant::now();
        assert!(
            done2.len() == n && rest2.is_empty(),
            "wait_1000_ready_ms: {} ready, {} not ready, expected {n} ready",
            done2.len(),
            rest2.len()
        );
        let vals = rustray::get_all(&refs).expect("wait_1000_ms: get_all after wait");
        for (i, &v) in vals.iter().enumerate() {
            assert_eq!(v, i as u64, "wait_1000_ms: noop({i}) returned {v}");
        }
        pend.push((t1 - t0).as_secs_f64() * 1e3);
        ready.push((t2 - t1).as_secs_f64() * 1e3);
    }
    if want_pending {
        emit(
            "wait_1000_ms",
            "ms",
            median(&pend),
            n,
            pend.len(),
            vec![
                ("samples", rnd_all(&pend, 2).into()),
                (
                    "note",
                    "wait(num_returns=n) right after submitting n trivial tasks; \
                     submission not timed"
                        .into(),
                ),
            ],
        );
    }
    if want_ready {
        emit(
            "wait_1000_ready_ms",
            "ms",
            median(&ready),
            n,
            ready.len(),
            vec![("samples", rnd_all(&ready, 3).into())],
        );
    }
}

/// N = max(min_tasks, ceil(P * work_us / d_us)).
fn metg_tasks(c: &Sizes, p: u64, d_us: u64) -> u64 {
    c.metg_min_tasks.max((p * c.metg_work_us).div_ceil(d_us))
}

/// Submit n busy(d_us) at once, get them all; returns (E, W) with
/// E = n*d / (P*W), W = wall time including submission.
fn metg_run(p: u64, d_us: u64, n: u64) -> (f64, f64) {
    let t0 = Instant::now();
    let refs: Vec<ObjectRef<u64>> = (0..n).map(|_| busy::remote(d_us)).collect();
    let out = rustray::get_all(&refs).expect("metg_us: get_all of busy tasks");
    let w = secs(t0);
    assert_eq!(
        out.len() as u64,
        n,
        "metg_us: {} results for {n} busy tasks",
        out.len()
    );
    assert!(
        out.iter().all(|&v| v == d_us),
        "metg_us: a busy({d_us}) task returned another value"
    );
    (n as f64 * d_us as f64 * 1e-6 / (p as f64 * w), w)
}

/// curve = [(d, E)] in ladder order (d descending). j = last entry with
/// E >= 0.5; METG interpolated linearly in log2(d) between j and j+1.
/// Returns (value, bound): "interpolated"; "upper" if nothing after j;
/// "lower" if no E >= 0.5 at all.
fn metg_value(curve: &[(u64, f64)]) -> (f64, &'static str) {
    let Some(j) = curve.iter().rposition(|&(_, e)| e >= METG_EFF) else {
        return (curve[0].0 as f64, "lower");
    };
    let (d_hi, e_hi) = curve[j];
    if j == curve.len() - 1 {
        return (d_hi as f64, "upper");
    }
    let (d_lo, e_lo) = curve[j + 1];
    let t = (e_hi - METG_EFF) / (e_hi - e_lo);
    let (l_hi, l_lo) = ((d_hi as f64).log2(), (d_lo as f64).log2());
    (2f64.powf(l_hi + t * (l_lo - l_hi)), "interpolated")
}

fn sc_metg(c: &Sizes, num_cpus: u32) {
    let p = num_cpus as u64;
    let t_start = Instant::now();
    metg_run(p, METG_WARMUP_US, metg_tasks(c, p, METG_WARMUP_US));
    let (mut curve, mut samples, mut tasks, mut walls) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut below = 0;
    let mut stop = "ladder_end";
    for d in (0..12).map(|k| 16384u64 >> k) {
        let n = metg_tasks(c, p, d);
        let runs: Vec<(f64, f64)> = (0..c.metg_reps).map(|_| metg_run(p, d, n)).collect();
        // Python's max() over (E, W) tuples
        let (e, w) = runs
            .iter()
            .copied()
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .expect("metg_us: no runs");
        curve.push((d, e));
        let mut s: Vec<J> = vec![d.into()];
        s.extend(runs.iter().map(|r| J::Num(rnd(r.0, 4))));
        samples.push(J::Arr(s));
        tasks.push(J::Arr(vec![d.into(), n.into()]));
        walls.push(J::Arr(vec![d.into(), rnd(w, 3).into()]));
        log(&format!("metg d={d}us N={n} E={e:.3} (W={w:.2}s)"));
        below = if e < METG_EFF { below + 1 } else { 0 };
        if below == 2 {
            stop = "two_below";
            break;
        }
        if let Some(budget) = c.metg_budget_s {
            if secs(t_start) > budget {
                stop = "budget";
                break;
            }
        }
    }
    let (value, bound) = metg_value(&curve);
    let curve_j: Vec<J> = curve
        .iter()
        .map(|&(d, e)| J::Arr(vec![d.into(), rnd(e, 4).into()]))
        .collect();
    emit(
        "metg_us",
        "us",
        value,
        curve.len(),
        c.metg_reps,
        vec![
            ("curve", J::Arr(curve_j)),
            ("P", p.into()),
            ("bound", bound.into()),
            ("stop", stop.into()),
            ("samples", J::Arr(samples)),
            ("tasks", J::Arr(tasks)),
            ("best_wall_s", J::Arr(walls)),
            ("threshold", METG_EFF.into()),
            ("scenario_s", rnd(secs(t_start), 1).into()),
            (
                "note",
                "busy(d) spins d us; N tasks submitted at once; E = N*d/(P*W); best of reps per d"
                    .into(),
            ),
        ],
    );
}

// ---------------------------------------------------------- multi-node

/// The local multi-node cluster: head (node 0, the driver's) + A + B, one
/// CPU each. Unlike bench.py's head (num_cpus=0) the head has a CPU too
/// (every local node gets the same resources); no work is pinned there.
fn mn_config() -> rustray::Config {
    rustray::Config::new()
        .local_nodes(MN_NODES)
        .num_cpus(1.0)
        .object_store_memory(MN_STORE)
}

fn pin(node: &rustray::Node) -> String {
    format!("node:{}", node.name)
}

fn alive_nodes() -> Vec<rustray::Node> {
    let mut nodes: Vec<rustray::Node> = rustray::nodes()
        .expect("multinode: rustray::nodes()")
        .into_iter()
        .filter(|n| n.alive)
        .collect();
    nodes.sort_by_key(|n| n.index);
    nodes
}

/// cluster_start_3node_s: `init_with(local_nodes(3))` until the first
/// trivial task's result is back; start_reps times with shutdown + 1 s
/// between (as cluster_start_s); the last cluster stays up for the other
/// multi-node scenarios.
fn sc_cluster_start_3node(c: &Sizes, want: bool) {
    let reps = if want { c.start_reps } else { 1 };
    let mut samples = Vec::new();
    for r in 0..reps {
        let t0 = Instant::now();
        rustray::init_with(mn_config()).expect("cluster_start_3node_s: init_with(local_nodes(3))");
        let v = rustray::get_timeout(&noop::remote(7u64), MN_TIMEOUT)
            .expect("cluster_start_3node_s: first noop task");
        let dt = secs(t0);
        assert_eq!(v, 7, "cluster_start_3node_s: noop(7) returned {v}");
        samples.push(dt);
        if r < reps - 1 {
            rustray::shutdown();
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let nodes = alive_nodes();
    assert_eq!(
        nodes.len(),
        MN_NODES as usize,
        "cluster_start_3node_s: {} alive nodes after init, expected {MN_NODES}",
        nodes.len()
    );
    log(&format!(
        "multinode cluster up: {} nodes ({})",
        nodes.len(),
        nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if want {
        emit(
            "cluster_start_3node_s",
            "s",
            median(&samples),
            1,
            samples.len(),
            vec![
                ("samples", rnd_all(&samples, 4).into()),
                ("first", rnd(samples[0], 4).into()),
                ("mode", "local_nodes".into()),
                ("nodes", nodes.len().into()),
                ("num_cpus_per_node", 1u64.into()),
                (
                    "note",
                    "init_with(local_nodes(3)) + get(noop(7)); 3 raylets, own store each".into(),
                ),
            ],
        );
    }
}

/// Reference for internode_transfer_gb_per_s: a plain TCP copy of `nbytes`
/// over 127.0.0.1 between two threads (a server thread and this one). Per
/// copy: connect, send an 8-byte request, the server write_all()s a
/// pre-touched buffer, this side read_exact()s into a pre-touched buffer;
/// timed from connect to the last byte. Default socket options plus
/// TCP_NODELAY (as the runtime's transport). Separate processes measured the
/// same here (2.2-2.8 GB/s either way on 2 cores).
struct TcpCopy {
    addr: std::net::SocketAddr,
    dst: Vec<u8>,
    server: Option<std::thread::JoinHandle<()>>,
}

/// The sending side of a TCP copy: a thread serving `listener`. Per
/// connection: read an 8-byte little-endian request n, write_all() the first
/// n bytes of a pre-touched buffer of `nbytes` (value 7); n == 0 stops it.
fn spawn_tcp_server(listener: std::net::TcpListener, nbytes: usize) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let src = vec![7u8; nbytes]; // non-zero fill: pages touched
        loop {
            let (mut s, _) = listener.accept().expect("tcp copy server: accept");
            s.set_nodelay(true).expect("tcp copy server: nodelay");
            let mut req = [0u8; 8];
            s.read_exact(&mut req)
                .expect("tcp copy server: read request");
            let n = u64::from_le_bytes(req) as usize;
            if n == 0 {
                return; // stop
            }
            s.write_all(&src[..n]).expect("tcp copy server: write");
        }
    })
}

/// Connects to a spawn_tcp_server and asks for `n` bytes (0: stop it).
fn tcp_request(addr: std::net::SocketAddr, n: usize, what: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("{what}: connect to {addr}: {e}"));
    s.set_nodelay(true)
        .unwrap_or_else(|e| panic!("{what}: nodelay: {e}"));
    s.write_all(&(n as u64).to_le_bytes())
        .unwrap_or_else(|e| panic!("{what}: send request: {e}"));
    s
}

impl TcpCopy {
    fn start(nbytes: usize) -> TcpCopy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp_copy_gb_per_s: bind");
        let addr = listener
            .local_addr()
            .expect("tcp_copy_gb_per_s: local_addr");
        let server = spawn_tcp_server(listener, nbytes);
        let mut dst = vec![0u8; nbytes];
        dst.fill(2); // calloc'd pages are lazy: touch them
        TcpCopy {
            addr,
            dst,
            server: Some(server),
        }
    }

    fn request(&self, n: usize) -> std::net::TcpStream {
        tcp_request(self.addr, n, "tcp_copy_gb_per_s")
    }

    /// One copy; returns GB/s.
    fn once(&mut self) -> f64 {
        use std::io::Read;
        let n = self.dst.len();
        let t0 = Instant::now();
        let mut s = self.request(n);
        s.read_exact(&mut self.dst)
            .expect("tcp_copy_gb_per_s: read");
        let dt = secs(t0);
        let sum: u64 = self.dst.iter().step_by(4096).map(|&b| b as u64).sum();
        let want = n.div_ceil(4096) as u64 * 7;
        assert_eq!(
            sum, want,
            "tcp_copy_gb_per_s: checksum {sum}, expected {want}"
        );
        n as f64 / GB / dt
    }
}

impl Drop for TcpCopy {
    fn drop(&mut self) {
        drop(self.request(0));
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
    }
}

fn emit_tcp_copy(nbytes: usize, tcp: &[f64]) {
    let med = median(tcp);
    emit(
        "tcp_copy_gb_per_s",
        "GB/s",
        med,
        nbytes,
        tcp.len(),
        vec![
            ("samples", rnd_all(tcp, 3).into()),
            ("mb_per_s", rnd(med * 1000.0, 1).into()),
            ("streams", 1u64.into()),
            (
                "note",
                "plain TCP over 127.0.0.1 between two threads: request, write_all of a \
                 pre-touched buffer, read_exact into a pre-touched buffer; timed from \
                 connect; reps interleaved with internode_transfer_gb_per_s's; reference \
                 for it"
                    .into(),
            ),
        ],
    );
}

/// How the internode scenarios read the object (their `extra.read`).
const INTERNODE_READ: &str = "get_view inside the task on B: the raylet of B pulls the bytes \
     from A's raylet into B's store, the view maps them (no copy out of the store)";

/// One rep of internode_transfer_gb_per_s (and of its Slurm variant): a
/// fresh object of `nbytes` (value seed % 251) made by a task pinned to
/// node `a`; once it exists there, its ref goes boxed to a task pinned to
/// node `b` that times `get_view` (the pull A -> B). Checks length,
/// checksum and placement, frees both copies (+ FREE_PAUSE). Returns
/// (seconds of get_view inside B, seconds from submitting B's task to its
/// result in the driver).
fn transfer_once(
    what: &str,
    nbytes: usize,
    seed: u64,
    a: &rustray::Node,
    b: &rustray::Node,
) -> (f64, f64) {
    assert_ne!(a.name, b.name, "{what}: node A == node B");
    let r: ObjectRef<Vec<u8>> = make_on_a::options()
        .resource(&pin(a), 0.01)
        .remote(nbytes, seed);
    // Wait until it exists on A, without pulling it here (fetch_local off).
    let (ready, _) = rustray::wait_with(std::slice::from_ref(&r), 1, Some(MN_TIMEOUT), false)
        .unwrap_or_else(|e| panic!("{what}: wait for make_on_a: {e}"));
    assert_eq!(
        ready.len(),
        1,
        "{what}: make_on_a not done within {MN_TIMEOUT:?}"
    );
    drop(ready);
    let t1 = Instant::now();
    let res = pull_on_b::options()
        .resource(&pin(b), 0.01)
        .remote(vec![r.clone()]);
    let (dt, sum, len, node) =
        rustray::get_timeout(&res, MN_TIMEOUT).unwrap_or_else(|e| panic!("{what}: pull_on_b: {e}"));
    let e2e = secs(t1);
    let want = (nbytes / 4096) as u64 * (seed % 251);
    assert_eq!(len, nbytes, "{what}: B read {len} bytes");
    assert_eq!(
        sum, want,
        "{what}: checksum {sum} on B, expected {want} (seed {seed})"
    );
    assert_eq!(
        node, b.name,
        "{what}: pull_on_b ran on {node}, expected node B {}",
        b.name
    );
    drop(res);
    drop(r);
    std::thread::sleep(FREE_PAUSE); // let both nodes free their copies
    (dt, e2e)
}

/// internode_transfer_gb_per_s, on the cluster left up by
/// sc_cluster_start_3node, plus its reference tcp_copy_gb_per_s (same bytes,
/// same warm-ups and reps, in the same run: each TCP copy right before the
/// transfer of the same rep, so both see the same load).
fn sc_internode(c: &Sizes, want_internode: bool, want_tcp: bool) {
    let nbytes = c.internode_bytes;
    let mut tcp = TcpCopy::start(nbytes);
    if !want_internode {
        for _ in 0..c.internode_warmup {
            tcp.once();
        }
        let rates: Vec<f64> = (0..c.internode_reps).map(|_| tcp.once()).collect();
        drop(tcp);
        if want_tcp {
            emit_tcp_copy(nbytes, &rates);
        }
        return;
    }
    let nodes = alive_nodes();
    assert!(
        nodes.len() >= 3,
        "internode_transfer_gb_per_s: {} alive nodes, need 3",
        nodes.len()
    );
    let (head, a, b) = (&nodes[0], &nodes[1], &nodes[2]);
    let one = |seed: u64| transfer_once(INTERNODE, nbytes, seed, a, b);
    let mut tcp_rates = Vec::new();
    // A failed transfer (its panic) still leaves the TCP reference's row.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for w in 0..c.internode_warmup {
            tcp.once();
            one(100 + w as u64); // warm-up (faults in both stores' pages)
        }
        let mut rss_kib = 0u64;
        let mut procs = 0usize;
        for (pid, _) in rustray_processes() {
            let (rss, _) = mem_kib(pid);
            if rss > 0 {
                rss_kib += rss;
                procs += 1;
            }
        }
        let (mut rates, mut e2e_rates, mut get_ms) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..c.internode_reps {
            tcp_rates.push(tcp.once());
            let (dt, e2e) = one(i as u64 + 2);
            rates.push(nbytes as f64 / GB / dt);
            e2e_rates.push(nbytes as f64 / GB / e2e);
            get_ms.push(dt * 1e3);
        }
        (rates, e2e_rates, get_ms, rss_kib, procs)
    }));
    // Finish the reference's reps if the transfer failed part way.
    while tcp_rates.len() < c.internode_reps {
        tcp_rates.push(tcp.once());
    }
    drop(tcp);
    if want_tcp {
        emit_tcp_copy(nbytes, &tcp_rates);
    }
    let (rates, e2e_rates, get_ms, rss_kib, procs) = match run {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    };
    let tcp_med = median(&tcp_rates);
    let med = median(&rates);
    emit(
        INTERNODE,
        "GB/s",
        med,
        nbytes,
        rates.len(),
        vec![
            ("samples", rnd_all(&rates, 3).into()),
            ("get_ms", rnd(median(&get_ms), 2).into()),
            ("end_to_end_gb_per_s", rnd(median(&e2e_rates), 3).into()),
            ("mb_per_s", rnd(med * 1000.0, 1).into()),
            ("tcp_copy_gb_per_s", rnd(tcp_med, 3).into()),
            ("vs_tcp_copy", rnd(med / tcp_med, 3).into()),
            ("target_vs_tcp_copy", 0.9.into()),
            ("nodes", nodes.len().into()),
            (
                "node_names",
                vec![head.name.clone(), a.name.clone(), b.name.clone()].into(),
            ),
            (
                "node_addrs",
                nodes
                    .iter()
                    .map(|n| n.address.to_string())
                    .collect::<Vec<_>>()
                    .into(),
            ),
            ("cluster_rss_mib", rnd(rss_kib as f64 / 1024.0, 1).into()),
            ("cluster_processes", procs.into()),
            ("read", INTERNODE_READ.into()),
            (
                "transport",
                "loopback TCP between two raylet processes".into(),
            ),
            (
                "note",
                "fresh object per rep, made by a task pinned to A (node:<A> 0.01, 1 CPU); \
                 ref passed boxed in a Vec to a task pinned to B; get_view timed inside B"
                    .into(),
            ),
        ],
    );
}

/// spill_throughput_per_s: a batch of `spill_tasks` tasks sleeping 5 ms,
/// submitted at once from the driver to its node; the raylet spills what its
/// one CPU cannot run to the other nodes. value = tasks / wall (including
/// submission); extra.per_node = where they ran.
fn sc_spill(c: &Sizes) {
    let n = c.spill_tasks;
    let batch = || -> (f64, BTreeMap<String, usize>) {
        let t0 = Instant::now();
        let refs: Vec<ObjectRef<String>> = (0..n)
            .map(|_| sleep_where::remote(SPILL_SLEEP_MS))
            .collect();
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for r in &refs {
            let node = rustray::get_timeout(r, MN_TIMEOUT)
                .expect("spill_throughput_per_s: get of a sleep task");
            *per.entry(node).or_default() += 1;
        }
        (secs(t0), per)
    };
    batch(); // warm-up (starts the workers on every node)
    let nodes = alive_nodes();
    let (mut rates, mut per_rep) = (Vec::new(), Vec::new());
    let mut total: BTreeMap<String, usize> = nodes.iter().map(|n| (n.name.clone(), 0)).collect();
    for _ in 0..c.reps {
        let (dt, per) = batch();
        assert_eq!(
            per.values().sum::<usize>(),
            n,
            "spill_throughput_per_s: result count"
        );
        rates.push(n as f64 / dt);
        for (k, v) in &per {
            *total.entry(k.clone()).or_default() += v;
        }
        per_rep.push(J::Obj(
            per.into_iter().map(|(k, v)| (k, v.into())).collect(),
        ));
    }
    let ideal = nodes.len() as f64 * 1000.0 / SPILL_SLEEP_MS as f64;
    let med = median(&rates);
    emit(
        "spill_throughput_per_s",
        "tasks/s",
        med,
        n,
        rates.len(),
        vec![
            ("samples", rnd_all(&rates, 1).into()),
            ("task_ms", SPILL_SLEEP_MS.into()),
            ("nodes", nodes.len().into()),
            ("cpus_per_node", 1u64.into()),
            ("ideal_per_s", rnd(ideal, 1).into()),
            ("efficiency", rnd(med / ideal, 3).into()),
            (
                "per_node",
                J::Obj(total.into_iter().map(|(k, v)| (k, v.into())).collect()),
            ),
            ("per_node_per_rep", J::Arr(per_rep)),
            (
                "note",
                "n tasks (sleep 5 ms, 1 CPU) submitted at once from the driver on node 0, \
                 unpinned; per_node sums the timed reps"
                    .into(),
            ),
        ],
    );
}

/// Runs a command with a bound; returns (exit status or None if it was
/// killed for overrunning, stdout, stderr, seconds from spawn to exit).
fn run_bounded(
    cmd: &mut std::process::Command,
    limit: Duration,
) -> std::io::Result<(Option<std::process::ExitStatus>, String, String, f64)> {
    use std::io::Read;
    use std::process::Stdio;
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |mut p: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            s.push_str(&String::from_utf8_lossy(&buf));
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let mut status = None;
    let mut dt = 0.0;
    while t0.elapsed() < limit {
        if let Some(s) = child.try_wait()? {
            dt = secs(t0);
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if status.is_none() {
        // Overran: SIGTERM (srun forwards it to the step), then SIGKILL.
        // SAFETY: kill(2) on the pid of the child we spawned and still own.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let grace = Instant::now();
        while grace.elapsed() < Duration::from_secs(10) {
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok((status, out, err, dt))
}

/// Number of nodes `sinfo` lists, or why Slurm is not usable.
fn slurm_nodes() -> Result<usize, String> {
    let mut cmd = std::process::Command::new("sinfo");
    cmd.args(["-h", "-N", "-o", "%N %t"]);
    match run_bounded(&mut cmd, Duration::from_secs(15)) {
        Err(e) => Err(format!("sinfo cannot run: {e}")),
        Ok((Some(st), out, _, _)) if st.success() => {
            let names: BTreeSet<&str> = out
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            Ok(names.len())
        }
        Ok((_, _, err, _)) => Err(format!(
            "sinfo failed: {}",
            err.lines().last().unwrap_or("(no message)")
        )),
    }
}

/// `rust-ray-launch`: $RUSTRAY_LAUNCHER, else next to this binary's
/// target directory (target/release/deps/microbench-* ->
/// target/release/rust-ray-launch), else target/release/ under the cwd.
fn find_launcher() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("RUSTRAY_LAUNCHER") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let mut cands = Vec::new();
    if let Some(d) = exe.parent() {
        cands.push(d.join("rust-ray-launch"));
        if let Some(dd) = d.parent() {
            cands.push(dd.join("rust-ray-launch"));
        }
    }
    cands.push(std::path::PathBuf::from("target/release/rust-ray-launch"));
    cands.into_iter().find(|p| p.is_file())
}

/// cluster_start_slurm_3node_s: `srun -N 3 --ntasks-per-node=1
/// rust-ray-launch -- <this binary> --start-app` end to end (Slurm step
/// start, 3 raylets joining, the driver's init + one task + print, teardown).
/// Skipped with a note when no Slurm with >= 3 nodes answers. The rendezvous
/// directory is the launcher's default ($RUSTRAY_RENDEZVOUS_DIR, else
/// $HOME/.rustray/jobs: shared by the nodes); on a busy cluster the time
/// includes waiting for the allocation.
/// With `mpi`, the same start through MPI (`srun --mpi=pmix ...
/// rust-ray-launch --bootstrap mpi`: MPI_Init and collectives instead of
/// the rendezvous file), as cluster_start_slurm_3node_mpi_s; skipped with
/// a note when the launcher was built without the `mpi` feature.
fn sc_cluster_start_slurm(c: &Sizes, mpi: bool) {
    let name = if mpi {
        START_SLURM_MPI
    } else {
        "cluster_start_slurm_3node_s"
    };
    let n = match slurm_nodes() {
        Ok(n) => n,
        Err(why) => {
            log(&format!("{name} skipped: no Slurm ({why})"));
            return;
        }
    };
    if n < 3 {
        log(&format!("{name} skipped: sinfo lists {n} node(s), need 3"));
        return;
    }
    let Some(launcher) = find_launcher() else {
        log(&format!(
            "{name} skipped: rust-ray-launch not found (build it: cargo build --release \
             -p rust-ray-launch, or set RUSTRAY_LAUNCHER)"
        ));
        return;
    };
    let me = std::env::current_exe().expect("current_exe");
    let (mut samples, mut inner) = (Vec::new(), Vec::new());
    for _ in 0..c.start_reps {
        let mut cmd = std::process::Command::new("srun");
        cmd.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]);
        if mpi {
            cmd.arg("--mpi=pmix");
        }
        cmd.arg(&launcher);
        if mpi {
            cmd.args(["--bootstrap", "mpi"]);
        }
        cmd.arg("--").arg(&me).arg("--start-app");
        let (st, out, err, dt) = run_bounded(&mut cmd, SRUN_TIMEOUT).expect("srun runs");
        let ok = st.is_some_and(|s| s.success());
        let line = out.lines().find(|l| l.starts_with("start-app ok"));
        if mpi && !ok && err.contains("--features mpi") {
            log(&format!(
                "{name} skipped: rust-ray-launch was built without the mpi feature"
            ));
            return;
        }
        if !ok || line.is_none() {
            panic!(
                "{name}: srun failed (status {st:?}, after {dt:.1}s)\n\
                 --- stdout\n{out}--- stderr\n{err}"
            );
        }
        let line = line.unwrap_or_default();
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(k))
                .map(str::to_string)
        };
        let nodes: usize = field("nodes=").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert_eq!(nodes, 3, "{name}: the app saw {nodes} nodes: {line}");
        if let Some(t) = field("init_task_s=").and_then(|v| v.parse::<f64>().ok()) {
            inner.push(t);
        }
        samples.push(dt);
        std::thread::sleep(Duration::from_secs(1));
    }
    emit(
        name,
        "s",
        median(&samples),
        1,
        samples.len(),
        vec![
            ("samples", rnd_all(&samples, 3).into()),
            ("first", rnd(samples[0], 3).into()),
            ("driver_init_task_s", rnd_all(&inner, 5).into()),
            ("slurm_nodes", n.into()),
            ("launcher", launcher.display().to_string().into()),
            (
                "note",
                "srun -N 3 --ntasks-per-node=1 rust-ray-launch -- <microbench> --start-app, \
                 end to end (until srun exits); driver_init_task_s = init + first task \
                 inside the driver"
                    .into(),
            ),
            (
                "bootstrap",
                if mpi {
                    "mpi: srun --mpi=pmix, rust-ray-launch --bootstrap mpi (MPI_Init, allgather, broadcast)"
                } else {
                    "slurm: rendezvous file"
                }
                .into(),
            ),
        ],
    );
}

/// `--start-app`: the tiny application that cluster_start_slurm_3node_s
/// launches: init (joins the launcher's cluster), one task, print, exit.
fn start_app() {
    let t0 = Instant::now();
    rustray::init().expect("start-app: rustray::init");
    let v = rustray::get_timeout(&noop::remote(7u64), MN_TIMEOUT).expect("start-app: noop task");
    let dt = secs(t0);
    assert_eq!(v, 7, "start-app: noop(7) returned {v}");
    let nodes = alive_nodes();
    println!(
        "start-app ok nodes={} init_task_s={dt:.6} node={}",
        nodes.len(),
        rustray::node_name().unwrap_or_default()
    );
    rustray::shutdown();
}

/// `key=value` token of a whitespace-separated line.
fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `--transfer-app <bytes> <warmups> <reps>`: the application that
/// internode_transfer_slurm_gb_per_s launches with `srun -N 2 rust-ray-launch
/// -- <this binary> --transfer-app ...`. Node A = the driver's node (rank 0),
/// node B = the other one. Per warm-up and per rep, interleaved: first the
/// reference (a plain TCP copy of the same bytes A -> B: a server thread in
/// this driver on A writes, a task pinned to B reads, tcp_pull_on_b), then
/// the transfer (transfer_once, as internode_transfer_gb_per_s). Prints
/// `transfer-app ...` lines (parsed by sc_internode_slurm), one per sample
/// as it is taken, so that a failure part way still leaves the earlier ones.
fn transfer_app(nbytes: usize, warmup: usize, reps: usize) {
    const WHAT: &str = "transfer-app";
    rustray::init().expect("transfer-app: rustray::init");
    let nodes = alive_nodes();
    assert!(
        nodes.len() >= 2,
        "{WHAT}: {} alive nodes, need 2",
        nodes.len()
    );
    let me = rustray::node_name().expect("transfer-app: node_name");
    let a = nodes
        .iter()
        .find(|n| n.name == me)
        .unwrap_or_else(|| panic!("{WHAT}: the driver's node {me} is not among the nodes"));
    let b = nodes
        .iter()
        .find(|n| n.name != me)
        .expect("transfer-app: no node other than the driver's");
    println!(
        "{WHAT} nodes n={} a={} a_addr={} b={} b_addr={}",
        nodes.len(),
        a.name,
        a.address,
        b.name,
        b.address
    );
    println!("{WHAT} transport {}", b.transport);
    // The reference's sender: this process, on A, reachable at A's address.
    let listener =
        std::net::TcpListener::bind("0.0.0.0:0").expect("transfer-app: bind the TCP server");
    let port = listener
        .local_addr()
        .expect("transfer-app: local_addr")
        .port();
    let server = spawn_tcp_server(listener, nbytes);
    let srv = std::net::SocketAddr::new(a.address, port);
    let pin_b = pin(b);
    let tcp_once = || -> f64 {
        let r = tcp_pull_on_b::options()
            .resource(&pin_b, 0.01)
            .remote(srv.to_string(), nbytes);
        let (dt, sum, node) = rustray::get_timeout(&r, MN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{WHAT}: tcp_pull_on_b: {e}"));
        let want = nbytes.div_ceil(4096) as u64 * 7;
        assert_eq!(
            sum, want,
            "{WHAT}: TCP copy checksum {sum}, expected {want}"
        );
        assert_eq!(
            node, b.name,
            "{WHAT}: tcp_pull_on_b ran on {node}, expected node B {}",
            b.name
        );
        dt
    };
    for i in 0..warmup + reps {
        let phase = if i < warmup { "warm" } else { "rep" };
        let dt = tcp_once();
        println!("{WHAT} sample kind=tcp phase={phase} i={i} s={dt:.6}");
        let (get_s, e2e_s) = transfer_once(WHAT, nbytes, 100 + i as u64, a, b);
        println!(
            "{WHAT} sample kind=rustray phase={phase} i={i} get_s={get_s:.6} e2e_s={e2e_s:.6}"
        );
    }
    drop(tcp_request(srv, 0, WHAT)); // stop the server
    let _ = server.join();
    println!("{WHAT} ok");
    rustray::shutdown();
}

/// This node's address for the `--tcp-app` receiver: the first non-loopback
/// IPv4 of `hostname -I`, else what the hostname resolves to.
fn node_ip(host: &str) -> Option<std::net::IpAddr> {
    use std::net::{IpAddr, ToSocketAddrs};
    let good = |ip: &IpAddr| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified();
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok();
    if let Some(o) = out.filter(|o| o.status.success()) {
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if let Some(ip) = text
            .split_whitespace()
            .filter_map(|t| t.parse::<IpAddr>().ok())
            .find(good)
        {
            return Some(ip);
        }
    }
    (host, 0)
        .to_socket_addrs()
        .ok()?
        .map(|sa| sa.ip())
        .find(good)
}

/// `--tcp-app <dir> <bytes> <warmups> <reps>`: the plain TCP copy that
/// tcp_copy_slurm_gb_per_s runs with `srun -N 2 --ntasks-per-node=1` when
/// the interleaved copy inside `--transfer-app` is not available (only the
/// reference asked for, or the transfer app failed before its reps). No
/// rustray. Rank 1 (receiver) listens on 0.0.0.0 (port from the OS) and
/// publishes "<its address> <port>" in `<dir>/receiver` (shared
/// filesystem); rank 0 (sender) connects to it once per copy and
/// write_all()s a pre-touched buffer (refilled, untimed, with a new value
/// per copy), rank 1 read_exact()s into a pre-touched buffer, checks it and
/// answers one byte. Timed by the sender from connect to that byte.
fn tcp_app(dir: &str, nbytes: usize, warmup: usize, reps: usize) {
    use std::io::{Read, Write};
    const WHAT: &str = "tcp-app";
    let rank: usize = std::env::var("SLURM_PROCID")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("tcp-app: SLURM_PROCID (run it under srun -N 2 --ntasks-per-node=1)");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let ip = node_ip(&host).unwrap_or_else(|| panic!("{WHAT}: no non-loopback address on {host}"));
    println!("{WHAT} node rank={rank} name={host} addr={ip}");
    let file = std::path::Path::new(dir).join("receiver");
    let total = warmup + reps;
    let value = |i: usize| (i % 250) as u8 + 1;
    match rank {
        1 => {
            let l = std::net::TcpListener::bind("0.0.0.0:0").expect("tcp-app: bind");
            let port = l.local_addr().expect("tcp-app: local_addr").port();
            let mut buf = vec![0u8; nbytes];
            buf.fill(2); // touched
            let tmp = std::path::Path::new(dir).join("receiver.tmp");
            std::fs::write(&tmp, format!("{ip} {port} {host}\n"))
                .expect("tcp-app: write the port file");
            std::fs::rename(&tmp, &file).expect("tcp-app: publish the port file");
            for i in 0..total {
                let (mut s, _) = l.accept().expect("tcp-app: accept");
                s.set_nodelay(true).expect("tcp-app: nodelay");
                s.read_exact(&mut buf).expect("tcp-app: read");
                let sum: u64 = buf.iter().step_by(4096).map(|&b| b as u64).sum();
                let want = nbytes.div_ceil(4096) as u64 * value(i) as u64;
                assert_eq!(
                    sum, want,
                    "{WHAT}: copy {i}: checksum {sum}, expected {want}"
                );
                s.write_all(&[1]).expect("tcp-app: ack");
            }
            println!("{WHAT} receiver ok");
        }
        0 => {
            let t0 = Instant::now();
            let text = loop {
                match std::fs::read_to_string(&file) {
                    Ok(t) if t.ends_with('\n') => break t,
                    _ if t0.elapsed() > Duration::from_secs(60) => {
                        panic!("{WHAT}: {} did not appear within 60 s", file.display())
                    }
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            let mut it = text.split_whitespace();
            let peer: std::net::IpAddr = it
                .next()
                .and_then(|t| t.parse().ok())
                .expect("tcp-app: receiver address");
            let port: u16 = it
                .next()
                .and_then(|t| t.parse().ok())
                .expect("tcp-app: receiver port");
            let peer_name = it.next().unwrap_or("?");
            println!("{WHAT} peer name={peer_name} addr={peer} port={port}");
            let mut src = vec![0u8; nbytes];
            for i in 0..total {
                src.fill(value(i)); // untimed; also touches the pages
                let t = Instant::now();
                let mut s = std::net::TcpStream::connect((peer, port))
                    .unwrap_or_else(|e| panic!("{WHAT}: connect to {peer}:{port}: {e}"));
                s.set_nodelay(true).expect("tcp-app: nodelay");
                s.write_all(&src).expect("tcp-app: write");
                let mut ack = [0u8; 1];
                s.read_exact(&mut ack).expect("tcp-app: read the ack");
                let dt = secs(t);
                let phase = if i < warmup { "warm" } else { "rep" };
                println!("{WHAT} sample phase={phase} i={i} s={dt:.6}");
            }
            println!("{WHAT} sender ok");
        }
        r => println!("{WHAT}: rank {r} idle (only ranks 0 and 1 take part)"),
    }
}

/// What a Slurm TCP reference run gave.
struct SlurmTcp {
    /// GB/s of the timed reps.
    rates: Vec<f64>,
    /// [sender = node A, receiver = node B].
    names: Vec<String>,
    addrs: Vec<String>,
    source: &'static str,
}

/// Runs `srun -N 2 --ntasks-per-node=1 <this binary> --tcp-app ...`.
fn run_tcp_app(c: &Sizes, source: &'static str) -> Result<SlurmTcp, String> {
    let nbytes = c.internode_bytes;
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Shared by the nodes (one filesystem; with real nodes: set TMPDIR to
    // a shared directory).
    let dir =
        std::env::temp_dir().join(format!("rustray-bench-tcp-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let mut cmd = std::process::Command::new("srun");
    cmd.args(["-N", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(&me)
        .arg("--tcp-app")
        .arg(&dir)
        .arg(nbytes.to_string())
        .arg(c.internode_warmup.to_string())
        .arg(c.internode_reps.to_string());
    let res = run_bounded(&mut cmd, SRUN_TRANSFER_TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    let (st, out, err, dt) = res.map_err(|e| format!("srun cannot run: {e}"))?;
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("tcp-app ")).collect();
    let rates: Vec<f64> = lines
        .iter()
        .filter(|l| l.starts_with("tcp-app sample ") && kv(l, "phase") == Some("rep"))
        .filter_map(|l| kv(l, "s").and_then(|v| v.parse::<f64>().ok()))
        .map(|s| nbytes as f64 / GB / s)
        .collect();
    let ok = st.is_some_and(|s| s.success())
        && lines.iter().any(|l| l.starts_with("tcp-app sender ok"))
        && rates.len() == c.internode_reps;
    if !ok {
        return Err(format!(
            "srun --tcp-app failed (status {st:?}, after {dt:.1}s)\n--- stdout\n{out}--- stderr\n{err}"
        ));
    }
    let node = |rank: &str| {
        lines
            .iter()
            .find(|l| l.starts_with("tcp-app node ") && kv(l, "rank") == Some(rank))
            .map(|l| {
                (
                    kv(l, "name").unwrap_or("?").to_string(),
                    kv(l, "addr").unwrap_or("?").to_string(),
                )
            })
            .unwrap_or_else(|| ("?".into(), "?".into()))
    };
    let (n0, n1) = (node("0"), node("1"));
    Ok(SlurmTcp {
        rates,
        names: vec![n0.0, n1.0],
        addrs: vec![n0.1, n1.1],
        source,
    })
}

/// The two nodes' addresses must be real, distinct, non-loopback ones.
fn check_addrs(what: &str, addrs: &[String]) {
    let ips: Vec<std::net::IpAddr> = addrs
        .iter()
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("{what}: node address {a:?} is not an IP address"))
        })
        .collect();
    for ip in &ips {
        assert!(
            !ip.is_loopback() && !ip.is_unspecified(),
            "{what}: node address {ip} is loopback/unspecified (addresses {addrs:?})"
        );
    }
    assert!(
        ips.len() == 2 && ips[0] != ips[1],
        "{what}: the two nodes share an address: {addrs:?}"
    );
}

fn emit_tcp_slurm(nbytes: usize, tcp: &SlurmTcp) {
    let med = median(&tcp.rates);
    emit(
        TCP_SLURM,
        "GB/s",
        med,
        nbytes,
        tcp.rates.len(),
        vec![
            ("samples", rnd_all(&tcp.rates, 3).into()),
            ("mb_per_s", rnd(med * 1000.0, 1).into()),
            ("streams", 1u64.into()),
            ("node_names", tcp.names.clone().into()),
            ("node_addrs", tcp.addrs.clone().into()),
            ("source", tcp.source.into()),
            (
                "note",
                "plain TCP copy of the same bytes from node A to node B of a 2-node Slurm \
                 step (node addresses, not loopback): pre-touched buffers on both sides, \
                 write_all / read_exact, TCP_NODELAY; timed from connect to the last byte; \
                 reference for internode_transfer_slurm_gb_per_s"
                    .into(),
            ),
        ],
    );
}

/// internode_transfer_slurm_gb_per_s and its reference
/// tcp_copy_slurm_gb_per_s on 2 Slurm nodes: `srun -N 2 --ntasks-per-node=1
/// rust-ray-launch --object-store-memory 1.5GiB -- <this binary>
/// --transfer-app <bytes> <warmups> <reps>` (same sizes as
/// internode_transfer_gb_per_s). The app interleaves, per rep, a plain TCP
/// copy A -> B and the rustray transfer A -> B (see transfer_app) and prints
/// the samples; this side parses them. When the reference could not be
/// taken there (only it asked for, or the app failed first), it comes from
/// a separate `srun -N 2 <this binary> --tcp-app` step instead. Skipped
/// with a note when no Slurm with >= 2 nodes answers.
fn sc_internode_slurm(c: &Sizes, want_internode: bool, want_tcp: bool) {
    const WHAT: &str = INTERNODE_SLURM;
    let n = match slurm_nodes() {
        Ok(n) => n,
        Err(why) => {
            log(&format!("{WHAT} / {TCP_SLURM} skipped: no Slurm ({why})"));
            return;
        }
    };
    if n < 2 {
        log(&format!(
            "{WHAT} / {TCP_SLURM} skipped: sinfo lists {n} node(s), need 2"
        ));
        return;
    }
    let nbytes = c.internode_bytes;
    let tcp_only = || {
        let tcp = run_tcp_app(c, "srun -N 2 --ntasks-per-node=1 <microbench> --tcp-app")
            .unwrap_or_else(|e| panic!("{TCP_SLURM}: {e}"));
        check_addrs(TCP_SLURM, &tcp.addrs);
        emit_tcp_slurm(nbytes, &tcp);
    };
    if !want_internode {
        tcp_only();
        return;
    }
    let Some(launcher) = find_launcher() else {
        log(&format!(
            "{WHAT} skipped: rust-ray-launch not found (build it: cargo build --release \
             -p rust-ray-launch, or set RUSTRAY_LAUNCHER)"
        ));
        if want_tcp {
            tcp_only();
        }
        return;
    };
    let me = std::env::current_exe().expect("internode_transfer_slurm_gb_per_s: current_exe");
    let mut cmd = std::process::Command::new("srun");
    cmd.args(["-N", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(&launcher)
        .arg("--object-store-memory")
        .arg(SLURM_STORE.to_string())
        .arg("--")
        .arg(&me)
        .arg("--transfer-app")
        .arg(nbytes.to_string())
        .arg(c.internode_warmup.to_string())
        .arg(c.internode_reps.to_string());
    let (st, out, err, wall) = run_bounded(&mut cmd, SRUN_TRANSFER_TIMEOUT)
        .expect("internode_transfer_slurm_gb_per_s: srun runs");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("transfer-app "))
        .collect();
    let reps_of = |kind: &str| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| {
                l.starts_with("transfer-app sample ")
                    && kv(l, "kind") == Some(kind)
                    && kv(l, "phase") == Some("rep")
            })
            .collect()
    };
    let f = |l: &str, k: &str| kv(l, k).and_then(|v| v.parse::<f64>().ok());
    let tcp_s: Vec<f64> = reps_of("tcp").iter().filter_map(|l| f(l, "s")).collect();
    let get_s: Vec<f64> = reps_of("rustray")
        .iter()
        .filter_map(|l| f(l, "get_s"))
        .collect();
    let e2e_s: Vec<f64> = reps_of("rustray")
        .iter()
        .filter_map(|l| f(l, "e2e_s"))
        .collect();
    let head = lines
        .iter()
        .find(|l| l.starts_with("transfer-app nodes "))
        .copied();
    let ok = st.is_some_and(|s| s.success())
        && lines.contains(&"transfer-app ok")
        && head.is_some()
        && get_s.len() == c.internode_reps
        && e2e_s.len() == c.internode_reps;
    let failure = format!(
        "{WHAT}: srun ... --transfer-app failed (status {st:?}, after {wall:.1}s; \
         {} of {} reps)\n--- stdout\n{out}--- stderr\n{err}",
        get_s.len(),
        c.internode_reps
    );
    let (names, addrs) = match head {
        Some(h) => (
            vec![
                kv(h, "a").unwrap_or("?").to_string(),
                kv(h, "b").unwrap_or("?").to_string(),
            ],
            vec![
                kv(h, "a_addr").unwrap_or("?").to_string(),
                kv(h, "b_addr").unwrap_or("?").to_string(),
            ],
        ),
        None => (Vec::new(), Vec::new()),
    };
    // The reference: interleaved in the app, else its own srun step.
    let tcp = if tcp_s.len() == c.internode_reps {
        Some(SlurmTcp {
            rates: tcp_s.iter().map(|s| nbytes as f64 / GB / s).collect(),
            names: names.clone(),
            addrs: addrs.clone(),
            source: "interleaved with the transfer's reps in the same --transfer-app run \
                     (sender: a thread of the driver on A; receiver: a task pinned to B)",
        })
    } else {
        log(&format!(
            "{TCP_SLURM}: {} of {} interleaved reps from the transfer app; \
             running srun --tcp-app instead",
            tcp_s.len(),
            c.internode_reps
        ));
        match run_tcp_app(
            c,
            "srun -N 2 --ntasks-per-node=1 <microbench> --tcp-app (its own step, right after \
             the transfer's, which did not give the interleaved reps)",
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                log(&format!("{TCP_SLURM}: {e}"));
                None
            }
        }
    };
    if want_tcp {
        if let Some(t) = &tcp {
            check_addrs(TCP_SLURM, &t.addrs);
            emit_tcp_slurm(nbytes, t);
        }
    }
    if !ok {
        panic!("{failure}");
    }
    check_addrs(WHAT, &addrs);
    let rates: Vec<f64> = get_s.iter().map(|s| nbytes as f64 / GB / s).collect();
    let e2e: Vec<f64> = e2e_s.iter().map(|s| nbytes as f64 / GB / s).collect();
    let med = median(&rates);
    let tcp_med = tcp.as_ref().map(|t| median(&t.rates));
    let get_ms: Vec<f64> = get_s.iter().map(|s| s * 1e3).collect();
    emit(
        WHAT,
        "GB/s",
        med,
        nbytes,
        rates.len(),
        vec![
            ("samples", rnd_all(&rates, 3).into()),
            ("get_ms", rnd(median(&get_ms), 2).into()),
            ("end_to_end_gb_per_s", rnd(median(&e2e), 3).into()),
            ("mb_per_s", rnd(med * 1000.0, 1).into()),
            ("tcp_copy_gb_per_s", tcp_med.map(|t| rnd(t, 3)).into()),
            (
                "tcp_copy_samples",
                tcp.as_ref().map(|t| rnd_all(&t.rates, 3)).into(),
            ),
            ("vs_tcp_copy", tcp_med.map(|t| rnd(med / t, 3)).into()),
            ("target_vs_tcp_copy", 0.9.into()),
            ("tcp_copy_source", tcp.as_ref().map(|t| t.source).into()),
            ("nodes", 2u64.into()),
            ("node_names", names.into()),
            ("node_addrs", addrs.into()),
            ("slurm_nodes", n.into()),
            ("warmups", c.internode_warmup.into()),
            ("object_store_memory", SLURM_STORE.into()),
            ("srun_s", rnd(wall, 2).into()),
            ("launcher", launcher.display().to_string().into()),
            ("read", INTERNODE_READ.into()),
            (
                "transport",
                "TCP between the raylets of two Slurm nodes, over the nodes' addresses".into(),
            ),
            (
                "note",
                "srun -N 2 --ntasks-per-node=1 rust-ray-launch -- <microbench> \
                 --transfer-app: driver on node A (rank 0); fresh object per rep made by a \
                 task pinned to A (node:<A> 0.01); ref passed boxed to a task pinned to B; \
                 get_view timed inside B; each rep right after a TCP copy A -> B of the \
                 same bytes"
                    .into(),
            ),
        ],
    );
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
            let memcpy = if want_put || want_cold || w("memcpy_gb_per_s") {
                Some(sc_memcpy(&c, w("memcpy_gb_per_s")))
            } else {
                None
            };
            if want_put || want_cold || w("get_large_gb_per_s") {
                timed_step("put/get_large", || {
                    sc_large_put_get(&c, want_put, want_cold, w("get_large_gb_per_s"), memcpy)
                });
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
        }));
        rustray::shutdown();
        if let Err(e) = res {
            std::panic::resume_unwind(e);
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
    let on_cluster = ["cluster_start_3node_s", INTERNODE, "spill_throughput_per_s"];
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
