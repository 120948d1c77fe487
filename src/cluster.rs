//! Starting and stopping a cluster on this machine: the GCS (threads of the
//! starting process) and one raylet process per node, each node with its
//! own name, directory, sockets and object store.
//!
//! Three users: `init()` without a launcher (the embedded cluster, one node
//! or `Config::local_nodes(n)`); `rust-ray-launch` (the launcher hosts the
//! GCS, its raylets run the application's binary as workers, and the
//! application runs as the driver of node 0, joining through
//! `RUSTRAY_ADDRESS`); and `init()` in every rank of a Slurm step, as a
//! simulation linking the library does ([`InSitu`]): rank 0 hosts the GCS,
//! each node's first local rank starts the node's raylet, and every rank is
//! a driver.
//!
//! Every process of the cluster is this crate's code: [`serve_role_if_any`]
//! turns a re-executed binary into a raylet or a worker before anything
//! else runs.

use crate::error::{Error, Result};
use crate::gcs::Gcs;
use crate::protocol::{FromGcs, ToGcs, ToRaylet};
use crate::session::{self, log, Config, Session, ENV_ROLE, ENV_SESSION};
use crate::slurm::{self, SlurmEnv};
use crate::transport::{Conn, NodeInfo};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on every raylet starting and registering with the GCS.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on raylets exiting after being asked to.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on every node of a Slurm step joining (nodes start in parallel,
/// but a busy shared filesystem or a slow node can take a while).
/// `RUSTRAY_JOIN_TIMEOUT_S` overrides it.
const SLURM_JOIN_TIMEOUT: Duration = Duration::from_secs(120);

fn join_timeout() -> Duration {
    std::env::var("RUSTRAY_JOIN_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(SLURM_JOIN_TIMEOUT)
}
/// How long a driver asked to stop gets before it is killed.
const DRIVER_GRACE: Duration = Duration::from_secs(5);

/// In a process started by rustray as a raylet or a worker, runs that role
/// and never returns; otherwise returns at once.
pub fn serve_role_if_any() {
    #[cfg(feature = "cuda")]
    crate::cuda::install_hooks();
    if let Ok(spec) = std::env::var(crate::fabric::ceiling::ENV_PEER) {
        crate::fabric::ceiling::peer_main(&spec);
    }
    let role = match std::env::var(ENV_ROLE) {
        Ok(r) => r,
        Err(_) => return,
    };
    let session = match Session::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rustray {role}: {e}");
            std::process::exit(1);
        }
    };
    match role.as_str() {
        "raylet" => crate::raylet::main(session),
        "worker" => crate::core_worker::executor::main(session),
        other => {
            eprintln!("rustray: unknown {ENV_ROLE}={other}");
            std::process::exit(1);
        }
    }
}

/// A cluster started by this process.
pub(crate) struct LocalCluster {
    gcs: Arc<Gcs>,
    raylets: Vec<Child>,
    /// One per node, in node order.
    pub(crate) sessions: Vec<Session>,
}

impl LocalCluster {
    /// Starts the GCS and `config`'s number of nodes. Raylets run
    /// `raylet_exe`; workers run `app` (the driver's own binary when
    /// embedded).
    pub(crate) fn start(
        config: Config,
        raylet_exe: &Path,
        app: Option<(PathBuf, Vec<String>)>,
        embedded: bool,
    ) -> Result<LocalCluster> {
        let n = config.node_count()?;
        // Every node's settings are checked before anything starts.
        for i in 0..n {
            let c = config.for_local_node(i)?;
            c.node_resources()
                .map_err(|e| Error::new(e.kind(), format!("node {i}: {}", e.message())))?;
            c.store_bytes()?;
        }
        let per_node: Vec<Config> = (0..n)
            .map(|i| config.for_local_node(i))
            .collect::<Result<_>>()?;
        let mut base = Session::new_cluster(config, embedded)?;
        if let Some((exe, args)) = app {
            base.exe = exe;
            base.args = args;
        }
        let host = crate::host::node_name();
        let name = |i: u16| {
            if n == 1 {
                host.clone()
            } else {
                format!("{host}-{i}")
            }
        };
        let gcs = Gcs::start(base.for_node(0, &name(0))?)?;
        base.gcs = gcs.addr();
        let mut cluster = LocalCluster {
            gcs,
            raylets: Vec::new(),
            sessions: Vec::new(),
        };
        let raylet_args: Vec<String> = if embedded {
            std::env::args().skip(1).collect()
        } else {
            Vec::new()
        };
        for (i, node_config) in (0..n).zip(per_node) {
            let mut s = base.for_node(i, &name(i))?;
            s.config = node_config;
            let s = with_node_resource(s);
            match spawn_raylet(raylet_exe, &s, &raylet_args) {
                Ok(c) => cluster.raylets.push(c),
                Err(e) => {
                    cluster.stop();
                    return Err(e);
                }
            }
            cluster.sessions.push(s);
        }
        let expected: Vec<String> = cluster.sessions.iter().map(|s| s.node.clone()).collect();
        let r = wait_registered(
            &cluster.gcs,
            &expected,
            &mut cluster.raylets,
            &cluster.sessions,
            START_TIMEOUT,
        );
        if let Err(e) = r {
            cluster.stop();
            return Err(e);
        }
        Ok(cluster)
    }

    /// Stops every raylet (they stop their workers), then the GCS, and
    /// removes every node's sockets and shared memory.
    pub(crate) fn stop(mut self) {
        for s in &self.sessions {
            send_shutdown(&s.raylet_endpoint(), s);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for c in &mut self.raylets {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        self.gcs.stop();
        for s in &self.sessions {
            s.remove_sockets();
            let _ = std::fs::remove_file(s.arena_path());
            s.remove_fabric_files();
            s.spill_dir().remove_all();
        }
    }
}

/// Ray's convention: every node offers `node:<name>` = 1, so a task can be
/// pinned to a node by asking for a sliver of it.
fn with_node_resource(mut s: Session) -> Session {
    let res = format!("node:{}", s.node);
    s.config = s.config.clone().resource(&res, 1.0);
    s
}

fn spawn_raylet(exe: &Path, s: &Session, args: &[String]) -> Result<Child> {
    std::process::Command::new(exe)
        .args(args)
        .env(ENV_ROLE, "raylet")
        .env(ENV_SESSION, s.to_process_env()?)
        .env_remove(crate::ENV_ADDRESS)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::io(&format!("starting the raylet of node {}", s.node), e))
}

fn send_shutdown(to: &crate::transport::Endpoint, s: &Session) {
    if let Ok(stream) = to.connect(&s.secret) {
        if let Ok(c) = Conn::new(&stream) {
            let _ = c.send(&ToRaylet::Shutdown);
        }
    }
}

/// Waits (bounded) until `expected.len()` nodes are in the GCS's node
/// table; a local raylet that exits, or the time running out, is an error
/// naming the nodes that are missing.
fn wait_registered(
    gcs: &Gcs,
    expected: &[String],
    raylets: &mut [Child],
    sessions: &[Session],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let up: Vec<String> = gcs
            .nodes()
            .into_iter()
            .filter(|n| n.alive)
            .map(|n| n.name)
            .collect();
        if up.len() >= expected.len() {
            return Ok(());
        }
        for (c, s) in raylets.iter_mut().zip(sessions) {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(Error::unavailable(format!(
                    "the raylet of node {} exited during start-up ({status}); see {}",
                    s.node,
                    s.log_dir().join("raylet.log").display()
                )));
            }
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = expected.iter().filter(|n| !up.contains(n)).collect();
            return Err(Error::unavailable(format!(
                "nodes {missing:?} did not register with the GCS within {timeout:?} ({} of {} did: {up:?}); see their raylet logs",
                up.len(),
                expected.len()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

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
fn join_step(
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
fn expected_nodes(env: &SlurmEnv) -> Vec<String> {
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

/// The clusters `rust-ray-launch status`/`stop` can reach: the steps of
/// `job` (default: `$SLURM_JOB_ID`), or, without one, every cluster of this
/// user (Slurm steps and local launchers).
fn find_clusters(job: Option<&str>) -> Result<Vec<(String, Session)>> {
    let job = job
        .map(String::from)
        .or_else(|| std::env::var("SLURM_JOB_ID").ok());
    let dir = slurm::rendezvous_dir();
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // A Slurm job's steps, or a local launcher by its pid.
            let wanted = match &job {
                Some(j) => name.starts_with(&format!("job-{j}.")) || name == format!("local-{j}"),
                None => name.starts_with("job-") || name.starts_with("local-"),
            };
            if !wanted || name.contains(".tmp") {
                continue;
            }
            // Bounded: the directory is the user's, but any file in it is
            // read here.
            if let Ok(text) = session::read_bounded(&e.path(), session::SESSION_FILE_MAX) {
                if let Ok(s) = Session::from_env_str(text.trim()) {
                    out.push((name, s));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.is_empty() {
        return Err(Error::unavailable(match job {
            Some(j) => format!("no rustray cluster of job {j} in {}", dir.display()),
            None => format!("no rustray cluster in {}", dir.display()),
        }));
    }
    Ok(out)
}

/// The cluster a second driver joins (`init_address`): `"auto"` (the one
/// running cluster of this user's rendezvous directory: a launcher's, or a
/// Slurm job's, `$SLURM_JOB_ID`'s first), a rendezvous file's path, or a
/// job id as `rust-ray-launch status --job` takes it. Answers the session
/// of the cluster's node on this host.
pub(crate) fn locate(address: &str) -> Result<Session> {
    // None found is reported below, with the same message as none alive.
    let candidates = if address == "auto" {
        find_clusters(None).unwrap_or_default()
    } else if Path::new(address).is_file() {
        let text = session::read_bounded(Path::new(address), session::SESSION_FILE_MAX)?;
        vec![(address.to_string(), Session::from_env_str(text.trim())?)]
    } else {
        find_clusters(Some(address)).unwrap_or_default()
    };
    let mut live = Vec::new();
    for (name, s) in candidates {
        if let Ok(Some(FromGcs::Nodes { nodes, .. })) =
            ask_gcs(&s, &ToGcs::GetNodes { req: 1 }, true)
        {
            live.push((name, s, nodes));
        }
    }
    let (_, s, nodes) = match live.len() {
        0 => {
            return Err(Error::unavailable(format!(
                "no running rustray cluster found for `{address}` in {} (start one with rust-ray-launch)",
                slurm::rendezvous_dir().display()
            )))
        }
        1 => live.remove(0),
        _ => {
            let names: Vec<&str> = live.iter().map(|(n, _, _)| n.as_str()).collect();
            return Err(Error::invalid(format!(
                "several rustray clusters are running ({}); pass one of them to init_address",
                names.join(", ")
            )));
        }
    };
    // This host's node (local nodes are named `<host>-<i>`).
    let host = crate::host::node_name();
    let local_prefix = format!("{host}-");
    let node = nodes
        .iter()
        .filter(|n| n.alive)
        .find(|n| n.name == host || n.name.starts_with(&local_prefix))
        .ok_or_else(|| {
            Error::unavailable(format!(
                "no node of cluster {} runs on this host ({host}): a driver joins through its own node's raylet",
                s.cluster
            ))
        })?;
    let mut joined = s.for_node(node.index, &node.name)?;
    joined.ip = node.ip;
    Ok(joined)
}

/// Waits (bounded) for rank 0's rendezvous file to name a GCS that
/// answers. A file left by an earlier job with the same id (ids restart
/// when a Slurm controller's state is reset) names a GCS that is gone, so
/// it is read again until rank 0 has replaced it.
fn await_cluster(path: &Path, timeout: Duration) -> Result<Session> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = slurm::await_rendezvous(path, left)?;
        if let Ok(Some(FromGcs::Nodes { .. })) = ask_gcs(&s, &ToGcs::GetNodes { req: 1 }, true) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(Error::unavailable(format!(
                "the cluster named in {} does not answer (is rank 0 up?)",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request to a cluster's GCS, without joining the cluster.
fn ask_gcs(s: &Session, msg: &ToGcs, reply: bool) -> Result<Option<FromGcs>> {
    let mut stream = s.gcs_endpoint().connect(&s.secret)?;
    Conn::new(&stream)?.send(msg)?;
    if !reply {
        return Ok(None);
    }
    if let crate::transport::Stream::Tcp(t) = &stream {
        let _ = t.set_read_timeout(Some(Duration::from_secs(10)));
    }
    let answer = crate::transport::read_frame(&mut stream, &mut Vec::new())
        .map_err(|e| Error::unavailable(format!("the GCS at {} did not answer: {e}", s.gcs)))?;
    answer
        .map(|m| {
            FromGcs::try_from(m).map_err(|m| {
                Error::unavailable(format!(
                    "the GCS at {} answered with {}",
                    s.gcs,
                    m.service()
                ))
            })
        })
        .transpose()
}

/// `rust-ray-launch status`: each node's resources, use and object store.
pub fn status_report(job: Option<&str>) -> Result<String> {
    let mut out = String::new();
    for (name, s) in find_clusters(job)? {
        let reply = ask_gcs(&s, &ToGcs::GetNodes { req: 1 }, true)?;
        let Some(FromGcs::Nodes { nodes, .. }) = reply else {
            return Err(Error::unavailable("unexpected answer from the GCS"));
        };
        out.push_str(&format!(
            "cluster {} ({name}), GCS at {}, {} nodes\n",
            s.cluster,
            s.gcs,
            nodes.len()
        ));
        for n in nodes {
            out.push_str(&node_line(&n));
        }
    }
    Ok(out)
}

fn node_line(n: &NodeInfo) -> String {
    let used = |k: &str| n.total.get(k) - n.available.get(k);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    format!(
        "  node {:>3} {:<20} {:<15} {:<5} CPU {:>5.1}/{:<5.1} GPU {:>4.1}/{:<4.1} store {:>9.1}/{:.1} MiB  transport {}\n",
        n.index,
        n.name,
        n.ip,
        if n.alive { "alive" } else { "DEAD" },
        used(crate::scheduler::CPU),
        n.total.get(crate::scheduler::CPU),
        used(crate::scheduler::GPU),
        n.total.get(crate::scheduler::GPU),
        mib(n.store_used),
        mib(n.store_capacity),
        n.transport_label()
    )
}

/// `rust-ray-launch stop`: ends the driver, then the cluster, of `job`'s
/// steps (default `$SLURM_JOB_ID`); never another job's.
pub fn stop_clusters(job: Option<&str>) -> Result<usize> {
    let found = find_clusters(job)?;
    for (_, s) in &found {
        ask_gcs(s, &ToGcs::StopCluster, false)?;
    }
    Ok(found.len())
}

/// How long rank 0 of an in-situ cluster waits, at `shutdown`, for the
/// other ranks to finish before it ends the cluster
/// (`RUSTRAY_SHUTDOWN_WAIT_S` overrides it).
const INSITU_SHUTDOWN_WAIT: Duration = Duration::from_secs(600);

/// This rank's part in a cluster formed by the ranks of a Slurm step that
/// each call `init()` (a simulation linking the library).
pub(crate) struct InSitu {
    /// Rank 0: the GCS.
    gcs: Option<Arc<Gcs>>,
    /// A node's first local rank: the node's raylet.
    raylet: Option<Child>,
    rendezvous: Option<std::path::PathBuf>,
    tasks: u32,
    session: Session,
    /// When this rank joined: ranks not there by the join timeout after
    /// it never will be.
    started: Instant,
    env: SlurmEnv,
    /// Rank 0: set once the cluster is being ended (by [`InSitu::leave`] or
    /// by the join watchdog), so only one of them ends it.
    ending: Arc<std::sync::atomic::AtomicBool>,
}

/// Ranks named in an error, at most: the rest are counted.
const RANKS_NAMED: usize = 32;

/// `ranks` (sorted) as runs: "2, 5-7, 9", at most [`RANKS_NAMED`] runs.
fn rank_runs(ranks: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &r in ranks {
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == r => *hi = r,
            _ => runs.push((r, r)),
        }
    }
    let mut out: Vec<String> = runs
        .iter()
        .take(RANKS_NAMED)
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    if runs.len() > RANKS_NAMED {
        out.push(format!("and {} more runs", runs.len() - RANKS_NAMED));
    }
    out.join(", ")
}

/// Why the step fails, when ranks of it have not joined: how many, which
/// (by rank), and which of the step's nodes have none. None when all have.
fn missing_ranks(nodes: &[NodeInfo], tasks: u32, env: &SlurmEnv) -> Option<String> {
    let joined: std::collections::BTreeSet<u32> =
        nodes.iter().flat_map(|n| n.ranks.iter().copied()).collect();
    let missing: Vec<u32> = (0..tasks).filter(|r| !joined.contains(r)).collect();
    if missing.is_empty() {
        return None;
    }
    let names: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let absent: Vec<String> = expected_nodes(env)
        .into_iter()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    Some(format!(
        "{} of {tasks} ranks never joined the cluster within {:?} of rank 0 (RUSTRAY_JOIN_TIMEOUT_S): rank{} {}{}",
        missing.len(),
        join_timeout(),
        if missing.len() == 1 { "" } else { "s" },
        rank_runs(&missing),
        if absent.is_empty() {
            String::new()
        } else {
            format!("; nodes with no rank: {}", absent.join(", "))
        }
    ))
}

/// Ends an in-situ cluster from rank 0: every raylet is asked to shut
/// down, the GCS stops, the rendezvous file goes.
fn end_insitu(gcs: &Gcs, session: &Session, rendezvous: Option<&Path>) {
    // Not the dead: each would cost a connect timeout.
    for n in gcs.nodes().into_iter().filter(|n| n.alive) {
        send_shutdown(&n.raylet(), session);
    }
    gcs.stop();
    if let Some(r) = rendezvous {
        let _ = std::fs::remove_file(r);
    }
}

/// The step fails, saying why, rather than ending as if whole.
fn fail_step(why: &str) -> ! {
    log!("rank 0: {why}");
    eprintln!("rustray: {why}; the step fails");
    // srun forwards a task's output asynchronously, and a task that fails
    // (with --kill-on-bad-exit) ends the step: leave the line time to reach
    // the user before the step is torn down (seen lost under load).
    std::thread::sleep(Duration::from_millis(500));
    std::process::exit(1);
}

/// Rank 0's watch over the join: once the join timeout has passed, a step
/// with ranks that never joined fails at once, naming them, though rank 0
/// itself is still at work (a rank stuck before `init` would otherwise
/// hold the whole allocation until rank 0 is done).
fn watch_join(
    gcs: Arc<Gcs>,
    session: Session,
    rendezvous: Option<PathBuf>,
    tasks: u32,
    env: SlurmEnv,
    ending: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let join_by = Instant::now() + join_timeout();
    while Instant::now() < join_by {
        if ending.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(
            join_by
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
    if missing_ranks(&gcs.nodes(), tasks, &env).is_none() {
        return;
    }
    // Ranks are reported with their node's load, every 100 ms: one that
    // joined just now may not be in the table yet.
    std::thread::sleep(Duration::from_millis(500));
    let Some(why) = missing_ranks(&gcs.nodes(), tasks, &env) else {
        return;
    };
    if ending.swap(true, Ordering::AcqRel) {
        return;
    }
    end_insitu(&gcs, &session, rendezvous.as_deref());
    fail_step(&why);
}

impl InSitu {
    /// This rank's place in the step.
    pub(crate) fn rank(&self) -> u32 {
        self.env.rank
    }

    /// Joins (rank 0: starts) the step's cluster; returns this rank's node
    /// session, whose raylet is up.
    pub(crate) fn join(
        config: Config,
        env: SlurmEnv,
        share: &Share<'_>,
    ) -> Result<(Session, InSitu)> {
        let me =
            std::env::current_exe().map_err(|e| Error::io("locating the current executable", e))?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        let (s, gcs, rendezvous) = join_step(&env, config, &me, &args, share)?;
        let mut raylet = if env.local_rank == 0 {
            Some(spawn_raylet(&me, &s, &args)?)
        } else {
            None
        };
        // Every rank waits for its node's raylet (started by the node's
        // first rank) to have joined the cluster, bounded.
        let deadline = Instant::now() + join_timeout();
        loop {
            let joined = || match ask_gcs(&s, &ToGcs::GetNodes { req: 1 }, true) {
                Ok(Some(FromGcs::Nodes { nodes, .. })) => {
                    nodes.iter().any(|n| n.index == s.node_index && n.alive)
                }
                _ => false,
            };
            if s.raylet_endpoint().connect(&s.secret).is_ok() && joined() {
                break;
            }
            if let Some(Ok(Some(st))) = raylet.as_mut().map(|c| c.try_wait()) {
                return Err(Error::unavailable(format!(
                    "the raylet of node {} exited during start-up ({st}); see {}",
                    s.node,
                    s.log_dir().join("raylet.log").display()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::unavailable(format!(
                    "the raylet of node {} did not come up within {:?} (it is started by the node's first rank)",
                    s.node,
                    join_timeout()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let ending = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(g) = &gcs {
            let (g, ses, rdv, tasks, e, end) = (
                g.clone(),
                s.clone(),
                rendezvous.clone(),
                env.tasks,
                env.clone(),
                ending.clone(),
            );
            std::thread::Builder::new()
                .name("rustray-join-watch".into())
                .spawn(move || watch_join(g, ses, rdv, tasks, e, end))
                .map_err(|e| Error::io("spawning the join watchdog", e))?;
        }
        Ok((
            s.clone(),
            InSitu {
                ending,
                gcs,
                raylet,
                rendezvous,
                tasks: env.tasks,
                session: s,
                started: Instant::now(),
                env,
            },
        ))
    }

    /// This rank leaves (its driver already disconnected). Rank 0 first
    /// waits (bounded) until every rank of the step has come and gone, then
    /// ends the cluster; the raylets exit with it.
    pub(crate) fn leave(self) {
        let Some(gcs) = self.gcs else {
            // Raylets outlive the rank that started them: they end with the
            // GCS, so the node's other ranks keep theirs.
            drop(self.raylet);
            return;
        };
        let wait = std::env::var("RUSTRAY_SHUTDOWN_WAIT_S")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or(INSITU_SHUTDOWN_WAIT);
        let deadline = Instant::now() + wait;
        let join_by = self.started + join_timeout();
        if self.ending.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // The join watchdog is failing the step and ends the process;
            // should it not have by then, this rank does, failing too.
            std::thread::sleep(STOP_TIMEOUT * 4);
            std::process::exit(1);
        }
        let mut quiet = 0;
        let mut never_joined = None;
        loop {
            let nodes = gcs.nodes();
            let seen: u32 = nodes.iter().map(|n| n.drivers_seen).sum();
            let now: u32 = nodes.iter().filter(|n| n.alive).map(|n| n.drivers).sum();
            // Past the join timeout, ranks still missing never will come (a
            // rank that hangs or died before `init`): waiting on would only
            // delay the error.
            if Instant::now() > join_by {
                if let Some(why) = missing_ranks(&nodes, self.tasks, &self.env) {
                    never_joined = Some(why);
                    break;
                }
            }
            // Two quiet reports in a row: this rank's own departure has
            // been reported, and no rank is still connected.
            quiet = if seen >= self.tasks && now == 0 {
                quiet + 1
            } else {
                0
            };
            if quiet >= 2 {
                break;
            }
            if Instant::now() > deadline {
                log!("rank 0: ending the cluster after {wait:?} with {now} ranks still connected ({seen} of {} ever joined)", self.tasks);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        end_insitu(&gcs, &self.session, self.rendezvous.as_deref());
        if let Some(mut r) = self.raylet {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline && matches!(r.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if let Some(why) = never_joined {
            fail_step(&why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranks_are_named_as_runs() {
        assert_eq!(rank_runs(&[2]), "2");
        assert_eq!(rank_runs(&[0, 2, 5, 6, 7, 9]), "0, 2, 5-7, 9");
        let many: Vec<u32> = (0..100).map(|r| r * 2).collect();
        let named = rank_runs(&many);
        assert!(named.starts_with("0, 2, 4"), "{named}");
        assert!(named.ends_with("62, and 68 more runs"), "{named}");
    }

    #[test]
    fn an_oversized_rendezvous_file_is_refused_before_it_is_read() {
        let path = std::env::temp_dir().join(format!("rustray-rdv-big-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        // Sparse: the size claims more than a session can take, no disk used.
        f.set_len(session::SESSION_FILE_MAX + 1).unwrap();
        let e = locate(path.to_str().unwrap()).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument, "{e}");
        assert!(e.message().contains("more than"), "{e}");
        let _ = std::fs::remove_file(&path);
    }
}
