//! A small test harness for integration tests that start clusters.
//!
//! These test binaries are `harness = false` because rustray re-executes the
//! running binary as its raylet and worker processes: `main` must reach
//! `rustray::init()` before any test harness runs. In the driver, each test
//! runs in turn (clusters are per process) and the output follows libtest's
//! shape, including the `test result:` summary line.

#![allow(dead_code)]

pub mod smaps;
pub mod tmpfs;
pub mod userns;

use std::time::Instant;

pub type TestFn = fn();

/// In a raylet or worker process, enters it (never returns); in the test
/// driver, returns.
pub fn enter_cluster_role() {
    if std::env::var_os("RUSTRAY_ROLE").is_some() {
        let _ = rustray::init();
        unreachable!("rustray::init returns only in the driver");
    }
}

/// Runs the tests whose names contain the first non-flag argument, less
/// those whose names contain a `--skip=TEXT` argument.
pub fn run(tests: &[(&str, TestFn)]) {
    // How many tests the binary has, for a harness that runs it elsewhere
    // and checks they all passed.
    if std::env::args().any(|a| a == "--count") {
        println!("{} tests", tests.len());
        return;
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let skips: Vec<String> = std::env::args()
        .filter_map(|a| a.strip_prefix("--skip=").map(str::to_string))
        .collect();
    let start = Instant::now();
    let selected: Vec<_> = tests
        .iter()
        .filter(|(n, _)| filter.as_deref().is_none_or(|f| n.contains(f)))
        .filter(|(n, _)| !skips.iter().any(|s| n.contains(s.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, f) in &selected {
        let t = Instant::now();
        let r = std::panic::catch_unwind(*f);
        // A failed test may leave its cluster up: the next test needs a fresh one.
        rustray::shutdown();
        match r {
            Ok(()) => println!("test {name} ... ok ({:.2}s)", t.elapsed().as_secs_f64()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    let filtered = tests.len() - selected.len();
    if !failed.is_empty() {
        println!("\nfailures:");
        for f in &failed {
            println!("    {f}");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len(),
        filtered,
        start.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

/// True when this test binary runs as the driver of a launched cluster
/// (`rust-ray-launch -- <test binary>`): `init` then joins that cluster and
/// the settings passed to it do not apply.
pub fn launched() -> bool {
    std::env::var_os("RUSTRAY_ADDRESS").is_some()
}

/// Starts a cluster with `cpus` CPUs and an optional store size.
pub fn cluster(cpus: f64, store: Option<u64>) {
    let mut cfg = rustray::Config::new().num_cpus(cpus);
    if let Some(s) = store {
        cfg = cfg.object_store_memory(s);
    }
    rustray::init_with(cfg).expect("cluster starts");
}

/// Every live process below `root` (not `root`; zombies left out).
pub fn descendants(root: u32) -> Vec<u32> {
    let parent = parents();
    parent
        .keys()
        .copied()
        .filter(|p| {
            let mut cur = *p;
            for _ in 0..64 {
                match parent.get(&cur) {
                    Some(pp) if *pp == root => return true,
                    Some(pp) => cur = *pp,
                    None => return false,
                }
            }
            false
        })
        .collect()
}

/// The live processes whose parent is `root`.
pub fn children(root: u32) -> Vec<u32> {
    parents()
        .into_iter()
        .filter(|(_, pp)| *pp == root)
        .map(|(p, _)| p)
        .collect()
}

/// Each live process's parent, from /proc.
fn parents() -> std::collections::HashMap<u32, u32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the `(comm)` field: state, then the parent pid.
        let Some(rest) = stat.rsplit(')').next() else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") {
            continue;
        }
        if let Some(pp) = f.get(1).and_then(|x| x.parse::<u32>().ok()) {
            parent.insert(pid, pp);
        }
    }
    parent
}

/// rustray's files in /dev/shm (stores, fabric endpoints).
pub fn shm_files() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("rustray-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `n` bytes of a pattern that differs with `seed`, for checked transfers.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// A position-sensitive checksum of `data`.
pub fn checksum_of(data: &[u8]) -> u64 {
    data.iter().enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_mul(31).wrapping_add(*b as u64 ^ i as u64)
    })
}

/// Waits for `f` (every 20 ms), failing the test after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
