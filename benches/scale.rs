//! The control plane at scale, on simulated nodes (issue 13): a real GCS
//! in a child process, N raylets played over real sockets by a few threads
//! (`rustray::__private::run_node_sim`; see `src/gcs/sim.rs`). One JSON
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
//!
//! `cargo bench --bench scale` runs 256 and 1,024 nodes (in `make bench`);
//! `-- --large` adds 4,096 (`make scale`); `-- 2048` runs 2,048 alone.

use rustray::__private::{run_node_sim, serve_sim_gcs_if_asked, NodeSimReport};

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
    let mut failed = false;
    for n in sizes {
        let death = n == 1024;
        let r: NodeSimReport = match run_node_sim(n, SECONDS, CHURN, death, true) {
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
    if failed {
        std::process::exit(1);
    }
}
