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

mod insitu;
mod launch;

pub(crate) use insitu::InSitu;
pub(crate) use launch::Share;
pub use launch::{launcher_main, Bootstrap, LaunchOptions};

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
/// A cluster whose GCS does not answer (its rendezvous file outlived it:
/// a job whose rank 0 was killed) is a line saying so, not the end of the
/// report.
pub fn status_report(job: Option<&str>) -> Result<String> {
    let mut out = String::new();
    for (name, s) in find_clusters(job)? {
        let nodes = match ask_gcs(&s, &ToGcs::GetNodes { req: 1 }, true) {
            Ok(Some(FromGcs::Nodes { nodes, .. })) => nodes,
            Ok(_) => {
                out.push_str(&format!(
                    "cluster {} ({name}), GCS at {}: unexpected answer\n",
                    s.cluster, s.gcs
                ));
                continue;
            }
            Err(e) => {
                out.push_str(&format!(
                    "cluster {} ({name}), GCS at {}: not answering, a stale rendezvous file? ({e})\n",
                    s.cluster, s.gcs
                ));
                continue;
            }
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
/// steps (default `$SLURM_JOB_ID`); never another job's. Returns how many
/// were asked to stop, and the clusters whose GCS did not answer (a
/// rendezvous file that outlived its cluster), which do not keep the
/// others from stopping; an error when none answered.
pub fn stop_clusters(job: Option<&str>) -> Result<(usize, Vec<String>)> {
    let mut stopped = 0;
    let mut silent = Vec::new();
    let mut first_error = None;
    for (name, s) in find_clusters(job)? {
        match ask_gcs(&s, &ToGcs::StopCluster, false) {
            Ok(_) => stopped += 1,
            Err(e) => {
                silent.push(format!("{name} (GCS at {}: {e})", s.gcs));
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if stopped == 0 => Err(e),
        _ => Ok((stopped, silent)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
