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
//!     cargo bench --bench microbench -- --only task_sync_latency_us,put_small_per_s
//!     cargo bench --bench microbench -- --num-cpus 4
//!     cargo bench --bench microbench -- --list
//! Unknown arguments (such as the `--bench` that cargo passes) are ignored.
//!
//! Worker processes re-execute this binary with the same argv and enter
//! worker mode inside `rustray::init_with` (which never returns there).  So
//! nothing before the first `init_with` may have side effects, except the
//! `--list` / bad-argument exits: those end the driver before any cluster (and
//! so any worker) exists, so no worker ever sees such an argv.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::time::{Duration, Instant};

use rustray::{ActorHandle, ActorOptions, ObjectRef};

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
    "get_large_gb_per_s",
    "task_large_arg_gb_per_s",
    "wait_1000_ms",
    "wait_1000_ready_ms",
    "metg_us",
    "internode_transfer_gb_per_s",
];
const INTERNODE: &str = "internode_transfer_gb_per_s";

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

fn sc_large_put_get(c: &Sizes, want_put: bool, want_get: bool, memcpy: Option<f64>) {
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

// ------------------------------------------------------------------ main

struct Args {
    quick: bool,
    only: Vec<String>,
    list: bool,
    num_cpus: u32,
}

/// Parses argv by hand; unknown arguments (cargo's `--bench`, ...) are ignored.
/// Side-effect free except for exiting on a malformed value (before init).
fn parse_args() -> Args {
    let mut a = Args {
        quick: false,
        only: Vec::new(),
        list: false,
        num_cpus: 2,
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
    // Nothing with side effects before the first init_with (workers re-exec
    // this binary with the same argv and become workers inside init_with).
    let args = parse_args();
    if args.list {
        // Only ever reached by a driver (it exits before any worker exists).
        for s in SCENARIOS {
            if *s == INTERNODE {
                println!("{s} (multinode, not yet)");
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
    let want: BTreeSet<&str> = if args.only.is_empty() {
        SCENARIOS
            .iter()
            .copied()
            .filter(|s| *s != INTERNODE)
            .collect()
    } else {
        args.only.iter().map(String::as_str).collect()
    };
    let w = |s: &str| want.contains(s);

    let t_all = Instant::now();
    let single = want.iter().any(|s| *s != INTERNODE);
    if single {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sc_cluster_start(&cfg, &c, w("cluster_start_s"), args.num_cpus);
            log(&format!(
                "{IMPL} pid {} mode={} num_cpus={} load1={}",
                std::process::id(),
                if args.quick { "quick" } else { "full" },
                args.num_cpus,
                load1()
            ));
            if w("idle_rss_mb") {
                sc_idle_rss(&c);
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
            let memcpy = if want_put || w("memcpy_gb_per_s") {
                Some(sc_memcpy(&c, w("memcpy_gb_per_s")))
            } else {
                None
            };
            if want_put || w("get_large_gb_per_s") {
                timed_step("put/get_large", || {
                    sc_large_put_get(&c, want_put, w("get_large_gb_per_s"), memcpy)
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
    if w(INTERNODE) {
        log("internode_transfer_gb_per_s skipped: multinode, not yet");
    }
    log(&format!(
        "total wall time {:.1}s load1={}",
        secs(t_all),
        load1()
    ));
}
