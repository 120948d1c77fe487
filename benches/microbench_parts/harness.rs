//! The harness every scenario shares: JSON rows in bench.py's shape,
//! statistics over samples, and the processes and memory of a cluster.

use super::*;

// ------------------------------------------------------------------ JSON

/// Minimal JSON value, written by hand (no serde_json dependency).
pub(super) enum J {
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

pub(super) fn obj(fields: Vec<(&str, J)>) -> J {
    J::Obj(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

pub(super) fn write_str(out: &mut String, s: &str) {
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

pub(super) fn write_json(out: &mut String, v: &J) {
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
pub(super) fn rnd(x: f64, nd: i32) -> f64 {
    let p = 10f64.powi(nd);
    (x * p).round() / p
}

pub(super) fn rnd_all(xs: &[f64], nd: i32) -> Vec<f64> {
    xs.iter().map(|&x| rnd(x, nd)).collect()
}

pub(super) fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|t| t.parse().ok()))
        .unwrap_or(f64::NAN)
}

pub(super) fn log(msg: &str) {
    eprintln!("[bench] {msg}");
}

pub(super) fn emit(
    scenario: &str,
    unit: &str,
    value: f64,
    n: usize,
    reps: usize,
    extra: Vec<(&str, J)>,
) {
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
pub(super) fn median(xs: &[f64]) -> f64 {
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
pub(super) fn pct(xs: &[f64], p: f64) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let k = (p / 100.0 * (s.len() as f64 - 1.0)).round_ties_even();
    let k = (k.max(0.0) as usize).min(s.len() - 1);
    s[k]
}

pub(super) fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

pub(super) fn latency_extra(lat: &[f64]) -> Vec<(&'static str, J)> {
    vec![
        ("p10", rnd(pct(lat, 10.0), 1).into()),
        ("p90", rnd(pct(lat, 90.0), 1).into()),
        ("p99", rnd(pct(lat, 99.0), 1).into()),
        ("mean", rnd(mean(lat), 1).into()),
    ]
}

pub(super) fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

// -------------------------------------------------------- process memory

/// pid -> (ppid, comm) from /proc.
pub(super) fn proc_table() -> HashMap<u32, (u32, String)> {
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
pub(super) fn rustray_processes() -> Vec<(u32, String)> {
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
pub(super) fn mem_kib(pid: u32) -> (u64, u64) {
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
