//! In-situ analysis: the library linked into a simulation.
//!
//! Every rank of the job calls `rustray::init()`; under Slurm they form one
//! cluster by themselves (rank 0 hosts the GCS, each node's first rank its
//! raylet) and every rank is a driver. Each step, each rank puts its slab of
//! a simulated field into its node's object store and submits an analysis
//! task on it (which runs next to the data); results go to a named actor
//! that rank 0 created, and rank 0 prints the gathered summary.
//!
//! ```text
//! srun -N 3 --ntasks-per-node=2 target/release/examples/insitu
//! cargo run --release --example insitu        # one rank, embedded cluster
//! ```

use std::time::{Duration, Instant};

const STEPS: u64 = 4;
const SLAB: usize = 256 * 1024;

/// Statistics of one slab: (min, max, mean).
#[rustray::remote]
fn analyze(slab: Vec<f64>) -> (f64, f64, f64) {
    let (mut lo, mut hi, mut sum) = (f64::MAX, f64::MIN, 0.0);
    for &x in &slab {
        lo = lo.min(x);
        hi = hi.max(x);
        sum += x;
    }
    (lo, hi, sum / slab.len() as f64)
}

/// Gathers every rank's per-step statistics.
pub struct Collector {
    results: Vec<(u64, u64, f64, f64, f64, String)>,
}

#[rustray::actor]
impl Collector {
    pub fn new() -> Self {
        Collector {
            results: Vec::new(),
        }
    }

    pub fn record(&mut self, rank: u64, step: u64, stats: (f64, f64, f64), node: String) -> usize {
        self.results
            .push((rank, step, stats.0, stats.1, stats.2, node));
        self.results.len()
    }

    pub fn count(&self) -> usize {
        self.results.len()
    }

    /// (results, distinct ranks, distinct nodes, global max)
    pub fn summary(&self) -> (usize, usize, usize, f64) {
        let ranks: std::collections::BTreeSet<u64> = self.results.iter().map(|r| r.0).collect();
        let nodes: std::collections::BTreeSet<&String> =
            self.results.iter().map(|r| &r.5).collect();
        let max = self.results.iter().map(|r| r.3).fold(f64::MIN, f64::max);
        (self.results.len(), ranks.len(), nodes.len(), max)
    }
}

/// The "simulation": a smooth field that moves with time.
fn simulate(rank: u64, step: u64) -> Vec<f64> {
    (0..SLAB)
        .map(|i| {
            ((rank as f64 * 1.7 + i as f64 * 1e-3 + step as f64 * 0.1).sin()) * (step + 1) as f64
        })
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> rustray::Result<()> {
    rustray::init()?;
    let rank = env_u64("SLURM_PROCID", 0);
    let ranks = env_u64("SLURM_NTASKS", 1);
    let t0 = Instant::now();
    let collector = if rank == 0 {
        Collector::options().name("collector").remote(())?
    } else {
        // Rank 0 creates it; wait (bounded) until it exists.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rustray::get_actor::<Collector>("collector") {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
    };
    let node = rustray::node_name()?;
    let mut recorded = Vec::new();
    for step in 0..STEPS {
        let slab = rustray::put(simulate(rank, step))?;
        let stats = analyze::remote(&slab)?;
        recorded.push(collector.record(rank, step, stats, node.clone()));
    }
    // Every record reached the collector (a failed one is an error here,
    // not a missing result rank 0 would wait for).
    rustray::get_all(&recorded)?;
    if rank == 0 {
        let want = (ranks * STEPS) as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        while rustray::get(&collector.count())? < want {
            if Instant::now() > deadline {
                eprintln!("insitu: only some results arrived");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (n, r, nodes, max) = rustray::get(&collector.summary())?;
        println!(
            "gathered {n} results from {r} ranks on {nodes} nodes in {:.2} s; global max {max:.3}",
            t0.elapsed().as_secs_f64()
        );
    }
    rustray::shutdown();
    Ok(())
}
