//! `rust-ray-launch`: a rustray cluster the HPC way.
//!
//! ```text
//! srun rust-ray-launch -- ./app args       # one task per node of the allocation
//! rust-ray-launch --local-nodes 3 -- ./app # the same topology on this machine
//! rust-ray-launch --transport fabric -- ./app  # objects by libfabric RDMA reads
//! rust-ray-launch status [--job ID]        # nodes, resources, object stores
//! rust-ray-launch stop [--job ID]          # ends the driver and the cluster
//! ```
//!
//! Under `srun` every task starts its node's raylet, rank 0 also the GCS;
//! once every node has joined, rank 0 runs the application as the driver
//! and the step ends with its exit code. Nothing to configure: resources
//! come from Slurm (`SLURM_CPUS_ON_NODE`, GPUs from GRES), addresses from
//! the nodes themselves, ports from the OS. The flags override Slurm's
//! resources.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "rust-ray-launch",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Start N nodes on this machine instead of one per Slurm node.
    #[arg(long, value_name = "N")]
    local_nodes: Option<u16>,
    /// A node on this machine with resources of its own (repeatable: one
    /// node per flag, in order), as comma-separated NAME=AMOUNT items:
    /// `num_cpus`, `num_gpus`, `object_store_memory`, or a custom resource.
    /// What it does not set comes from the per-node flags.
    #[arg(long = "local-node", value_name = "NAME=AMOUNT,...", value_parser = parse_node)]
    local_node: Vec<rustray::Config>,
    /// CPUs per node (default: Slurm's allocation, else this machine's cores).
    #[arg(long)]
    num_cpus: Option<f64>,
    /// GPUs per node (default: Slurm's GRES, else 0).
    #[arg(long)]
    num_gpus: Option<f64>,
    /// A custom resource per node, NAME=AMOUNT (repeatable).
    #[arg(long = "resource", value_name = "NAME=AMOUNT", value_parser = parse_resource)]
    resources: Vec<(String, f64)>,
    /// Object store size per node, in bytes.
    #[arg(long, value_name = "BYTES")]
    object_store_memory: Option<u64>,
    /// Where each node spills objects when its store is full (default:
    /// RUSTRAY_SPILL_DIR, else the job's $TMPDIR, else /tmp); every node
    /// writes under its own subdirectory.
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Where each node keeps its object store file (default:
    /// RUSTRAY_STORE_DIR, else /dev/shm): a tmpfs, node-local. In /dev/shm
    /// the store gets huge pages of its own where user namespaces are on
    /// (RUSTRAY_STORE_HUGE_PAGES=0 turns that off); elsewhere the mount
    /// decides.
    #[arg(long, value_name = "DIR")]
    store_dir: Option<PathBuf>,
    /// How objects move between nodes: `fabric` (libfabric RDMA reads;
    /// FI_PROVIDER picks the provider), `tcp` (built in), or `auto`
    /// (fabric when a hardware provider is there, else tcp).
    #[arg(long, value_name = "auto|fabric|tcp")]
    transport: Option<rustray::Transport>,
    /// How the nodes find each other: `slurm` (Slurm's environment and a
    /// rendezvous file) or `mpi` (MPI_Init and collectives: srun --mpi=pmix
    /// rust-ray-launch --bootstrap mpi; needs the `mpi` build feature).
    #[arg(long, value_name = "slurm|mpi", default_value = "slurm")]
    bootstrap: rustray::__private::Bootstrap,
    /// The application and its arguments (after `--`).
    #[arg(last = true, value_name = "APP")]
    app: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the nodes of a running cluster: resources, use, object store.
    Status {
        /// The Slurm job, or a local launcher's pid (default: $SLURM_JOB_ID,
        /// else every cluster of yours).
        #[arg(long)]
        job: Option<String>,
    },
    /// Stop a running cluster: its driver, then every node.
    Stop {
        /// The Slurm job, or a local launcher's pid (default: $SLURM_JOB_ID,
        /// else every cluster of yours).
        #[arg(long)]
        job: Option<String>,
    },
}

fn parse_resource(s: &str) -> Result<(String, f64), String> {
    let (name, amount) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=AMOUNT"))?;
    let amount: f64 = amount
        .parse()
        .map_err(|_| format!("the amount in `{s}` is not a number"))?;
    Ok((name.to_string(), amount))
}

fn parse_node(s: &str) -> Result<rustray::Config, String> {
    let mut c = rustray::Config::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let (name, amount) = parse_resource(item)?;
        c = match name.as_str() {
            "num_cpus" => c.num_cpus(amount),
            "num_gpus" => c.num_gpus(amount),
            "object_store_memory" if amount >= 0.0 && amount.fract() == 0.0 => {
                c.object_store_memory(amount as u64)
            }
            "object_store_memory" => {
                return Err(format!("object_store_memory in `{s}` is not a byte count"))
            }
            _ => c.resource(&name, amount),
        };
    }
    Ok(c)
}

fn main() {
    // Raylets are this binary re-executed: serve that role first.
    rustray::__private::serve_role_if_any();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rust-ray-launch: {e}");
            // A failing rank makes srun end the step (--kill-on-bad-exit);
            // give its I/O forwarding a moment to deliver this message.
            if std::env::var_os("SLURM_JOB_ID").is_some() {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> rustray::Result<i32> {
    match cli.command {
        Some(Command::Status { job }) => {
            print!("{}", rustray::__private::status_report(job.as_deref())?);
            return Ok(0);
        }
        Some(Command::Stop { job }) => {
            let (n, silent) = rustray::__private::stop_clusters(job.as_deref())?;
            println!("asked {n} cluster(s) to stop");
            for s in silent {
                eprintln!("not answering, a stale rendezvous file? {s}");
            }
            return Ok(0);
        }
        None => {}
    }
    let Some((app, args)) = cli.app.split_first() else {
        eprintln!("rust-ray-launch: no application given; usage: rust-ray-launch [OPTIONS] -- APP [ARGS...]");
        return Ok(2);
    };
    let mut config = rustray::Config::new();
    if let Some(n) = cli.num_cpus {
        config = config.num_cpus(n);
    }
    if let Some(n) = cli.num_gpus {
        config = config.num_gpus(n);
    }
    for (name, amount) in &cli.resources {
        config = config.resource(name, *amount);
    }
    if let Some(b) = cli.object_store_memory {
        config = config.object_store_memory(b);
    }
    if let Some(t) = cli.transport {
        config = config.transport(t);
    }
    if let Some(d) = cli.spill_dir {
        config = config.spill_dir(d);
    }
    if let Some(d) = cli.store_dir {
        config = config.store_dir(d);
    }
    let mut local_nodes = cli.local_nodes;
    if !cli.local_node.is_empty() {
        local_nodes = local_nodes.or(Some(cli.local_node.len().min(u16::MAX as usize) as u16));
    }
    for node in cli.local_node {
        config = config.add_local_node(node);
    }
    rustray::__private::launcher_main(rustray::__private::LaunchOptions {
        local_nodes,
        config,
        app: PathBuf::from(app),
        args: args.to_vec(),
        bootstrap: cli.bootstrap,
    })
}
