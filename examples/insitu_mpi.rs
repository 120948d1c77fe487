//! In-situ analysis in an MPI simulation: the ranks join one rustray
//! cluster through their own communicator (`init_with_mpi`), no rendezvous
//! file, no Slurm needed. Each step, each rank puts its slab of a simulated
//! field into its node's store and submits an analysis task on it; results
//! go to a named actor rank 0 created; an MPI reduction checks them.
//!
//! ```text
//! cargo build --release --features mpi --example insitu_mpi
//! mpirun -np 4 target/release/examples/insitu_mpi            # one node
//! srun --mpi=pmix -N 3 --ntasks-per-node=2 target/release/examples/insitu_mpi
//! ```

use rustray::mpi::collective::SystemOperation;
use rustray::mpi::traits::*;
use std::time::{Duration, Instant};

const STEPS: u64 = 3;
const SLAB: usize = 128 * 1024;

#[rustray::remote]
fn slab_max(slab: Vec<f64>) -> f64 {
    slab.iter().copied().fold(f64::MIN, f64::max)
}

/// Gathers (rank, step, max, node) from every rank.
pub struct Collector {
    results: Vec<(u64, u64, f64, String)>,
}

#[rustray::actor]
impl Collector {
    pub fn new() -> Self {
        Collector {
            results: Vec::new(),
        }
    }
    pub fn record(&mut self, rank: u64, step: u64, max: f64, node: String) -> usize {
        self.results.push((rank, step, max, node));
        self.results.len()
    }
    /// (results, distinct ranks, distinct nodes, global max)
    pub fn summary(&self) -> (usize, usize, usize, f64) {
        let ranks: std::collections::BTreeSet<u64> = self.results.iter().map(|r| r.0).collect();
        let nodes: std::collections::BTreeSet<&String> =
            self.results.iter().map(|r| &r.3).collect();
        let max = self.results.iter().map(|r| r.2).fold(f64::MIN, f64::max);
        (self.results.len(), ranks.len(), nodes.len(), max)
    }
}

fn simulate(rank: u64, step: u64) -> Vec<f64> {
    (0..SLAB)
        .map(|i| {
            ((rank as f64 * 1.3 + i as f64 * 1e-3 + step as f64).sin()) * (rank + step + 1) as f64
        })
        .collect()
}

fn main() -> rustray::Result<()> {
    // rustray's raylet and worker processes are this binary: they serve
    // their role here and never reach MPI_Init.
    rustray::__private::serve_role_if_any();
    let t0 = Instant::now();
    let universe = rustray::mpi::initialize().expect("MPI_Init");
    let world = universe.world();
    let (rank, size) = (world.rank() as u64, world.size() as u64);
    rustray::init_with_mpi(&world, rustray::Config::new())?;
    let joined = t0.elapsed();
    let collector = if rank == 0 {
        Collector::options().name("collector").remote(())?
    } else {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rustray::get_actor::<Collector>("collector") {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
    };
    let node = rustray::node_name()?;
    let mut my_max = f64::MIN;
    for step in 0..STEPS {
        let data = simulate(rank, step);
        my_max = data.iter().copied().fold(my_max, f64::max);
        let slab = rustray::put(data)?;
        let m = rustray::get(&slab_max::remote(&slab)?)?;
        rustray::get(&collector.record(rank, step, m, node.clone()))?;
    }
    // Every rank's results are in once every rank has passed this barrier.
    world.barrier();
    let mut global = f64::MIN;
    world.all_reduce_into(&my_max, &mut global, SystemOperation::max());
    if rank == 0 {
        let (n, ranks, nodes, max) = rustray::get(&collector.summary())?;
        assert_eq!(n as u64, size * STEPS, "results");
        assert!(
            (max - global).abs() < 1e-9,
            "actor max {max} vs MPI max {global}"
        );
        println!(
            "world of {size} ranks: gathered {n} results from {ranks} ranks on {nodes} nodes; bootstrap {:.3} s; global max {max:.3} (MPI agrees)",
            joined.as_secs_f64()
        );
    }
    rustray::shutdown();
    Ok(())
}
