//! The control plane at scale, on simulated nodes (issue 13): a real GCS
//! in a child process, N raylets played over real sockets by a few threads
//! (`rustray::__private::run_node_sim`; see `src/gcs/sim/`). One JSON
//! object per line, in microbench's shape, `n` being the node count:
//!
//! - `gcs_report_cpu_pct`: CPU time of the GCS's threads per wall second
//!   (percent of one core) while every node reports every 100 ms and half
//!   of them change their free resources each period (tasks starting and
//!   finishing); target at 4,096 nodes: under 50;
//! - `gcs_bytes_out_mb_per_s`: what the GCS sends meanwhile (target at
//!   4,096: under 50);
//! - `cluster_register_1024_s`: registering 1,024 nodes (target: under 2 s);
//! - `cluster_join_view_s`: from then until every node has had the whole
//!   view once (each joining raylet is sent every node);
//! - `node_death_propagation_ms`: a hung node's last report until every
//!   other of 1,024 nodes sees it dead (target: the 5 s health-check bound
//!   plus 100 ms).
//! - `actor_create_per_s`: named actors created per second by 8 simulated
//!   core workers (one at a time each, each then looked up by its name:
//!   `lookup_by_name_median_ms`) while 1,024 simulated nodes report: the
//!   GCS places each, leases a worker from the node's raylet (played by
//!   the simulation) and has the constructor's round trip; `n` is the
//!   actors created (at most 2,000).
//!
//! - `sched_sim_placements_per_s`: the scheduler alone, sans IO on a
//!   simulated clock (`run_sched_sim`: one lease manager per node, the
//!   cluster view every 100 ms): a burst of one-CPU tasks from 64 owners
//!   (a million at 4,096 nodes, 200,000 at 1,024; one in four asking the
//!   node its argument is on), two nodes failing mid-burst; grants per
//!   wall second, with spillbacks, hops, balance and locality (the share
//!   of those run on their argument's node) in `extra`.
//!
//! `cargo bench --bench scale` runs 256 and 1,024 nodes and the scheduler
//! on 1,024 (in `make bench`); `-- --large` adds 4,096 nodes and runs the
//! scheduler on 4,096 (`make scale`); `-- 2048` runs 2,048 alone,
//! `-- --sched-only` the scheduler on 4,096 alone.

use rustray::__private::{run_node_sim, run_sched_sim, serve_sim_gcs_if_asked, NodeSimReport};

const CHURN: f64 = 0.5;
const SECONDS: f64 = 3.0;

fn row(scenario: &str, unit: &str, value: f64, r: &NodeSimReport) {
    let n = r.nodes;
    println!(
        "{{\"scenario\": \"{scenario}\", \"unit\": \"{unit}\", \"value\": {value:.4}, \"n\": {n}, \"reps\": 1, \"impl\": \"rustray-{}\", \"extra\": {{\"simulated_nodes\": {n}, \"churn\": {CHURN}, \"reports_per_s\": {:.0}, \"nodes_lost\": {}}}}}",
        env!("CARGO_PKG_VERSION"),
        r.reports_per_s,
        r.nodes_lost
    );
}

fn main() {
    // The simulation's GCS runs in a child process of this program.
    serve_sim_gcs_if_asked();
    if std::env::var_os("RUSTRAY_ROLE").is_some() {
        let _ = rustray::init();
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Node counts given as arguments, else 256 and 1,024 (and 4,096 with
    // --large).
    let mut sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![256, 1024];
        if args.iter().any(|a| a == "--large") {
            sizes.push(4096);
        }
    }
    // The scheduler simulation: 1,024 nodes, or 4,096 with --large.
    let sched_sizes: Vec<usize> = if args.iter().any(|a| a == "--sched-only" || a == "--large") {
        vec![4096]
    } else {
        vec![1024]
    };
    if args.iter().any(|a| a == "--sched-only") {
        sizes.clear();
    }
    let mut failed = false;
    let sizes_for_actors = sizes.clone();
    for n in sizes {
        let death = n == 1024;
        let r: NodeSimReport = match run_node_sim(n, SECONDS, CHURN, death, false, true) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("[bench-scale] {n} simulated nodes: {e}");
                failed = true;
                continue;
            }
        };
        eprintln!("[bench-scale] {r:?}");
        row("gcs_report_cpu_pct", "%", r.gcs_cpu_pct, &r);
        row(
            "gcs_bytes_out_mb_per_s",
            "MB/s",
            r.gcs_bytes_out_mb_per_s,
            &r,
        );
        if n == 1024 {
            row("cluster_register_1024_s", "s", r.register_s, &r);
        }
        row("cluster_join_view_s", "s", r.join_settle_s, &r);
        if let Some(ms) = r.death_propagation_ms {
            row("node_death_propagation_ms", "ms", ms, &r);
        }
    }
    // Actor creation at 1,024 simulated nodes: simulated core workers ask
    // the GCS for actors while every node reports (a run of its own, so
    // the rows above measure the reports alone).
    if sizes_for_actors.contains(&1024) {
        match run_node_sim(1024, SECONDS, CHURN, false, true, true) {
            Ok(r) => {
                eprintln!("[bench-scale] {r:?}");
                println!(
                    "{{\"scenario\": \"actor_create_per_s\", \"unit\": \"actors/s\", \"value\": {:.1}, \"n\": {}, \"reps\": 1, \"impl\": \"rustray-{}\", \"extra\": {{\"simulated_nodes\": 1024, \"churn\": {CHURN}, \"median_ms\": {:.3}, \"lookup_by_name_median_ms\": {:.3}, \"gcs_cpu_pct\": {:.1}, \"nodes_lost\": {}, \"note\": \"the GCS's side: placement on the view, a lease from the node's raylet, the constructor's round trip (simulated hosts: no worker process starts)\"}}}}",
                    r.actor_create_per_s.unwrap_or(0.0),
                    r.actors_created,
                    env!("CARGO_PKG_VERSION"),
                    r.actor_create_median_ms.unwrap_or(0.0),
                    r.actor_lookup_median_ms.unwrap_or(0.0),
                    r.gcs_cpu_pct,
                    r.nodes_lost
                );
            }
            Err(e) => {
                eprintln!("[bench-scale] actor creation on 1024 simulated nodes: {e}");
                failed = true;
            }
        }
    }
    // The scheduler alone (sans IO, simulated clock): a burst of one-CPU
    // tasks of 10 ms from 64 owners, two nodes failing mid-burst.
    for n in sched_sizes {
        // A million at 4,096 nodes (about a minute here: each spill scans
        // every peer); a fifth of that in make bench.
        let tasks = if n >= 4096 { 1_000_000 } else { 200_000 };
        match run_sched_sim(n, tasks, 64.min(n), 10, 2) {
            Ok(r) => {
                eprintln!("[bench-scale] {r:?}");
                println!(
                    "{{\"scenario\": \"sched_sim_placements_per_s\", \"unit\": \"1/s\", \"value\": {:.1}, \"n\": {tasks}, \"reps\": 1, \"impl\": \"rustray-{}\", \"extra\": {{\"simulated_nodes\": {n}, \"spillbacks\": {}, \"max_hops\": {}, \"resubmitted\": {}, \"imbalance\": {:.3}, \"locality\": {:.3}, \"sim_s\": {:.3}, \"wall_s\": {:.3}}}}}",
                    r.placements_per_s,
                    env!("CARGO_PKG_VERSION"),
                    r.spillbacks,
                    r.max_hops,
                    r.resubmitted,
                    r.imbalance,
                    r.locality,
                    r.sim_s,
                    r.wall_s
                );
            }
            Err(e) => {
                eprintln!("[bench-scale] scheduler simulation on {n} nodes: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
