//! Starting and stopping a cluster on this machine: the GCS (threads of the
//! starting process) and one raylet process per node, each node with its
//! own name, directory, sockets and object store.
//!
//! Two users: `init()` without a launcher (the embedded cluster, one node
//! or `Config::local_nodes(n)`), and `rust-ray-launch --local-nodes n`
//! (the launcher hosts the GCS, its raylets run the application's binary as
//! workers, and the application runs as the driver of node 0, joining
//! through `RUSTRAY_ADDRESS`).
//!
//! Every process of the cluster is this crate's code: [`serve_role_if_any`]
//! turns a re-executed binary into a raylet or a worker before anything
//! else runs.

use crate::error::{Error, Result};
use crate::gcs::Gcs;
use crate::session::{self, log, Config, Session, ENV_ROLE, ENV_SESSION};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on every raylet starting and registering with the GCS.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on raylets exiting after being asked to.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// In a process started by rustray as a raylet or a worker, runs that role
/// and never returns; otherwise returns at once.
pub fn serve_role_if_any() {
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
        "worker" => crate::worker::executor::main(session),
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
        config.node_resources()?;
        config.store_bytes()?;
        let mut base = Session::new_cluster(config, embedded)?;
        if let Some((exe, args)) = app {
            base.exe = exe;
            base.args = args;
        }
        let host = session::node_name();
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
        for i in 0..n {
            let mut s = base.for_node(i, &name(i))?;
            // Ray's convention: every node offers `node:<name>` = 1, so a
            // task can be pinned to a node by asking for a sliver of it.
            let res = format!("node:{}", s.node);
            s.config = s.config.clone().resource(&res, 1.0);
            let child = std::process::Command::new(raylet_exe)
                .args(&raylet_args)
                .env(ENV_ROLE, "raylet")
                .env(ENV_SESSION, s.to_env()?)
                .env_remove("RUSTRAY_ADDRESS")
                .stdin(std::process::Stdio::null())
                .spawn();
            match child {
                Ok(c) => cluster.raylets.push(c),
                Err(e) => {
                    cluster.stop();
                    return Err(Error::io("starting a raylet process", e));
                }
            }
            cluster.sessions.push(s);
        }
        if let Err(e) = cluster.wait_registered() {
            cluster.stop();
            return Err(e);
        }
        Ok(cluster)
    }

    /// Waits (bounded) until every node is in the GCS's node table.
    fn wait_registered(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let up = self.gcs.nodes().iter().filter(|n| n.alive).count();
            if up == self.sessions.len() {
                return Ok(());
            }
            for (c, s) in self.raylets.iter_mut().zip(&self.sessions) {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(Error::unavailable(format!(
                        "the raylet of node {} exited during start-up ({status}); see {}",
                        s.node,
                        s.log_dir().join("raylet.log").display()
                    )));
                }
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = self.sessions.iter().map(|s| s.node.as_str()).collect();
                return Err(Error::unavailable(format!(
                    "only {up} of the nodes {names:?} registered with the GCS within {START_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Stops every raylet (they stop their workers), then the GCS, and
    /// removes every node's sockets and shared memory.
    pub(crate) fn stop(mut self) {
        for s in &self.sessions {
            if let Ok(stream) = s.raylet_endpoint().connect(&s.secret) {
                if let Ok(c) = crate::transport::Conn::new(&stream) {
                    let _ = c.send(&crate::transport::Msg::Shutdown);
                }
            }
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
        }
    }
}

/// Settings of `rust-ray-launch` for a cluster on this machine.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Nodes to start (each its own raylet and object store).
    pub nodes: u16,
    /// Resources and store size of each node.
    pub config: Config,
    /// The application.
    pub app: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// `rust-ray-launch --local-nodes n -- app args`: starts the cluster, runs
/// the application as the driver of node 0, stops the cluster when it
/// exits and returns its exit code.
pub fn launcher_main(opts: LaunchOptions) -> Result<i32> {
    let app = resolve_app(&opts.app)?;
    let me =
        std::env::current_exe().map_err(|e| Error::io("locating the launcher executable", e))?;
    let cluster = LocalCluster::start(
        opts.config.local_nodes(opts.nodes),
        &me,
        Some((app.clone(), opts.args.clone())),
        false,
    )?;
    session::open_log(&cluster.sessions[0], "launcher");
    log!("launcher: running {} as the driver", app.display());
    let status = std::process::Command::new(&app)
        .args(&opts.args)
        .env("RUSTRAY_ADDRESS", cluster.sessions[0].to_env()?)
        .status();
    cluster.stop();
    let status = status.map_err(|e| Error::io(&format!("running {}", app.display()), e))?;
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
