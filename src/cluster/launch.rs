//! `rust-ray-launch`: starting a cluster for an application, locally
//! (`--local-nodes`), across the nodes of a Slurm allocation (one raylet per
//! node, the GCS in the launcher of node 0), or bootstrapped by MPI; then
//! running the application as the driver and ending the cluster with it.

use super::*;

/// Settings of `rust-ray-launch`.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Nodes to start on this machine (`--local-nodes`); `None` under Slurm
    /// means one per node of the step.
    pub local_nodes: Option<u16>,
    /// Resources and store size of each node (flags override Slurm's).
    pub config: Config,
    /// The application.
    pub app: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// How the nodes find each other.
    pub bootstrap: Bootstrap,
}

/// How the ranks of a step form one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bootstrap {
    /// Slurm's environment and a rendezvous file (or local nodes).
    #[default]
    Slurm,
    /// `MPI_Init` and collectives over the world communicator.
    Mpi,
}

impl std::str::FromStr for Bootstrap {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Bootstrap, String> {
        match s {
            "slurm" => Ok(Bootstrap::Slurm),
            "mpi" => Ok(Bootstrap::Mpi),
            o => Err(format!("unknown bootstrap `{o}`: expected slurm or mpi")),
        }
    }
}

/// `rust-ray-launch [--local-nodes n] -- app args`. Under `srun` every task
/// starts its node's raylet and rank 0 also the GCS; otherwise the nodes
/// start on this machine. Rank 0 (or the local launcher) runs the
/// application as the driver once every node has joined, stops the cluster
/// when it exits, and returns its exit code; other ranks return when their
/// raylet ends.
pub fn launcher_main(opts: LaunchOptions) -> Result<i32> {
    let app = resolve_app(&opts.app)?;
    if opts.bootstrap == Bootstrap::Mpi {
        return launch_mpi(opts, app);
    }
    match (opts.local_nodes, SlurmEnv::detect()?) {
        (None, Some(env)) => launch_slurm(opts, app, env, &Share::File),
        (n, _) => launch_local(opts, app, n.unwrap_or(1)),
    }
}

/// `--bootstrap mpi`: one launcher per node of an MPI job (`srun --mpi=pmix`
/// or `mpirun --map-by node`); the communicator carries the bootstrap.
#[cfg(feature = "mpi")]
fn launch_mpi(opts: LaunchOptions, app: PathBuf) -> Result<i32> {
    if opts.local_nodes.is_some() {
        return Err(Error::invalid(
            "--bootstrap mpi and --local-nodes exclude each other",
        ));
    }
    crate::mpi_boot::precheck()?;
    let universe = mpi::initialize()
        .ok_or_else(|| Error::invalid("MPI was initialized already in this process"))?;
    let world = universe.world();
    let env = crate::mpi_boot::step_env(&world)?;
    if env.local_rank != 0 {
        return Err(Error::invalid(format!(
            "--bootstrap mpi runs one launcher per node, but node {} has {} or more ranks (srun --ntasks-per-node=1, or mpirun --map-by ppr:1:node)",
            env.node_name,
            env.local_rank + 1
        )));
    }
    let share = |b: Option<&Session>| crate::mpi_boot::share_session(&world, b);
    log!("MPI bootstrap: {} ranks on {} nodes", env.tasks, env.nodes);
    let code = launch_slurm(opts, app, env, &Share::With(&share));
    // Every launcher reaches MPI_Finalize (the universe's drop) together.
    drop(universe);
    code
}

#[cfg(not(feature = "mpi"))]
fn launch_mpi(_opts: LaunchOptions, _app: PathBuf) -> Result<i32> {
    Err(Error::invalid(
        "this rust-ray-launch was built without MPI support: rebuild it with `cargo build --release --features mpi` (needs an MPI library and libclang)",
    ))
}

fn launch_local(opts: LaunchOptions, app: PathBuf, n: u16) -> Result<i32> {
    let me =
        std::env::current_exe().map_err(|e| Error::io("locating the launcher executable", e))?;
    let cluster = LocalCluster::start(
        opts.config.local_nodes(n),
        &me,
        Some((app.clone(), opts.args.clone())),
        false,
    )?;
    let first = cluster.sessions[0].clone();
    session::open_log(&first, "launcher");
    let g = cluster.gcs.clone();
    crate::signals::on_terminate(move |_| g.request_stop());
    let rdv = slurm::rendezvous_dir().join(format!("local-{}", std::process::id()));
    let published = slurm::publish(&rdv, &first);
    let code = run_driver(&cluster.gcs, &app, &opts.args, &first);
    if published.is_ok() {
        let _ = std::fs::remove_file(&rdv);
    }
    cluster.stop();
    code
}

fn launch_slurm(
    opts: LaunchOptions,
    app: PathBuf,
    env: SlurmEnv,
    share: &Share<'_>,
) -> Result<i32> {
    let me =
        std::env::current_exe().map_err(|e| Error::io("locating the launcher executable", e))?;
    let (s, gcs, rdv) = join_step(&env, opts.config, &app, &opts.args, share)?;
    let ip = s.ip;
    session::open_log(&s, &format!("launcher-{}", env.rank));
    log!(
        "launcher rank {} (local rank {}) on node {} ({ip}): job {} step {}, {} nodes",
        env.rank,
        env.local_rank,
        s.node,
        env.job,
        env.step,
        env.nodes
    );
    let mut raylet = spawn_raylet(&me, &s, &[])?;
    if let Some(g) = gcs.clone() {
        // scancel or Ctrl-C: stop the driver, then the cluster, in order.
        crate::signals::on_terminate(move |_| g.request_stop());
    } else {
        // Other ranks: the raylet cleans up after the same signal.
        crate::signals::on_terminate(|_| std::process::exit(143));
    }
    let Some(gcs) = gcs else {
        // Not rank 0: serve until the cluster ends (the raylet exits when
        // the GCS goes away or is told to stop).
        let status = raylet
            .wait()
            .map_err(|e| Error::io("waiting for the raylet", e))?;
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            // A killed raylet could not remove its shared memory.
            let _ = std::fs::remove_file(s.arena_path());
            s.remove_fabric_files();
            s.spill_dir().remove_all();
            // The node was lost mid-job (killed, OOM): the GCS has noticed
            // and the cluster carries on without it, so this rank must not
            // fail the step (srun --kill-on-bad-exit would end every node).
            eprintln!(
                "rust-ray-launch: the raylet of node {} was killed by signal {sig}; the cluster carries on without this node",
                s.node
            );
            return Ok(0);
        }
        // A raylet that failed to start or register has said why.
        return Ok(if status.success() { 0 } else { 1 });
    };
    let expected = expected_nodes(&env);
    let joined = wait_registered(
        &gcs,
        &expected,
        std::slice::from_mut(&mut raylet),
        std::slice::from_ref(&s),
        join_timeout(),
    );
    let code = match joined {
        Ok(()) => run_driver(&gcs, &app, &opts.args, &s),
        Err(e) => Err(e),
    };
    // The end of the cluster: every raylet stops (their workers with them),
    // then the other ranks' launchers return.
    for n in gcs.nodes() {
        send_shutdown(&n.raylet(), &s);
    }
    gcs.stop();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && matches!(raylet.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = raylet.kill();
    let _ = raylet.wait();
    if let Some(rdv) = rdv {
        let _ = std::fs::remove_file(&rdv);
    }
    code
}

/// This rank's node session in its Slurm step's cluster: rank 0 starts
/// the GCS and publishes the cluster in the step's rendezvous file, the
/// other ranks read it. Workers run `app args`. Returns the session, the
/// GCS (rank 0) and the rendezvous path.
pub(super) fn join_step(
    env: &SlurmEnv,
    config: Config,
    app: &Path,
    args: &[String],
    share: &Share<'_>,
) -> Result<(Session, Option<Arc<Gcs>>, Option<PathBuf>)> {
    let ip = crate::host::node_ip()?;
    let config = env.node_config(config);
    let (base, gcs) = if env.rank == 0 {
        let mut base = Session::new_cluster(config.clone(), false)?;
        base.ip = ip;
        let gcs = Gcs::start(base.for_node(env.node_index, &env.node_name)?)?;
        base.gcs = gcs.addr();
        share.share(Some(&base), env)?;
        (base, Some(gcs))
    } else {
        (share.share(None, env)?, None)
    };
    let rdv = match share {
        Share::File => Some(env.rendezvous()),
        Share::With(_) => None,
    };
    let mut s = base.for_node(env.node_index, &env.node_name)?;
    s.ip = ip;
    s.config = config;
    s.exe = app.to_path_buf();
    s.args = args.to_vec();
    Ok((with_node_resource(s), gcs, rdv))
}

/// How the ranks of a step learn the cluster rank 0 started.
pub(crate) enum Share<'a> {
    /// The step's rendezvous file (`$RUSTRAY_RENDEZVOUS_DIR`).
    File,
    /// A collective of the job's own (MPI's broadcast): rank 0 passes its
    /// session, every rank gets it back.
    #[allow(dead_code)]
    With(&'a dyn Fn(Option<&Session>) -> Result<Session>),
}

impl Share<'_> {
    fn share(&self, base: Option<&Session>, env: &SlurmEnv) -> Result<Session> {
        match (self, base) {
            (Share::File, Some(b)) => {
                slurm::publish(&env.rendezvous(), b)?;
                Ok(b.clone())
            }
            (Share::File, None) => await_cluster(&env.rendezvous(), join_timeout()),
            (Share::With(f), b) => f(b),
        }
    }
}

/// The node names of the step, for error messages: `scontrol show
/// hostnames` of the step's node list, else `node 0..n`.
pub(super) fn expected_nodes(env: &SlurmEnv) -> Vec<String> {
    let list = std::env::var("SLURM_STEP_NODELIST")
        .or_else(|_| std::env::var("SLURM_JOB_NODELIST"))
        .ok();
    let names = list.and_then(|l| {
        let out = std::process::Command::new("scontrol")
            .args(["show", "hostnames", &l])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        (names.len() == env.nodes as usize).then_some(names)
    });
    names.unwrap_or_else(|| (0..env.nodes).map(|i| format!("node {i}")).collect())
}

/// Runs the application as the cluster's driver until it exits, or until
/// `rust-ray-launch stop` (then it gets SIGTERM, and SIGKILL after a grace
/// period). Returns its exit code (128 + signal if killed).
fn run_driver(gcs: &Gcs, app: &Path, args: &[String], s: &Session) -> Result<i32> {
    log!("launcher: running {} as the driver", app.display());
    let mut child = std::process::Command::new(app)
        .args(args)
        .env(crate::ENV_ADDRESS, s.to_process_env()?)
        .spawn()
        .map_err(|e| Error::io(&format!("running {}", app.display()), e))?;
    let mut stop_at: Option<Instant> = None;
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .map_err(|e| Error::io("waiting for the driver", e))?
        {
            break st;
        }
        match stop_at {
            None if gcs.wait_stop_request(Duration::from_millis(50)) => {
                log!("launcher: stop requested; sending SIGTERM to the driver");
                // Our own child, not yet reaped: the pid is still its.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                stop_at = Some(Instant::now() + DRIVER_GRACE);
            }
            Some(t) if Instant::now() > t => {
                let _ = child.kill();
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The application's path: as given if it names a file, else looked up in
/// `PATH`, as a shell would.
fn resolve_app(app: &Path) -> Result<PathBuf> {
    let found = if app.components().count() > 1 {
        Some(app.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(app))
                .find(|p| p.is_file())
        })
    };
    match found {
        Some(p) if p.is_file() => p
            .canonicalize()
            .map_err(|e| Error::io(&format!("resolving {}", p.display()), e)),
        _ => Err(Error::invalid(format!(
            "the application `{}` was not found",
            app.display()
        ))),
    }
}
