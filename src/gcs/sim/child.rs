//! The GCS under measurement, apart from the simulator: in this process
//! (threads) or in a child process of its own (`RUSTRAY_SIM_GCS`), whose
//! CPU time is then read from the kernel without the simulating threads',
//! and the descriptor limit a simulation of N nodes needs.

use super::*;

/// The GCS a simulation runs against: in a child process, or in this one
/// (its address, the cluster's secret, the service).
pub(super) enum SimGcs {
    Child(ChildGcs),
    Here(Endpoint, crate::transport::Secret, std::sync::Arc<Gcs>),
}

/// The variable that makes a process the simulation's GCS (its value:
/// the node count, for the open-file limit).
const ENV_SIM_GCS: &str = "RUSTRAY_SIM_GCS";

/// In the child process [`run_node_sim`] starts with `apart`: serves as
/// the simulation's GCS and exits (printing its address and secret, then
/// answering `cpu` lines with its CPU seconds until its input closes).
/// Elsewhere returns at once.
pub fn serve_sim_gcs_if_asked() {
    let Ok(n) = std::env::var(ENV_SIM_GCS) else {
        return;
    };
    // The node count only sizes the open-file limit; a bad value is one.
    let nodes = n.parse().unwrap_or(1).min(u16::MAX as usize);
    let code = match serve_sim_gcs(nodes) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("simulation GCS: {e}");
            1
        }
    };
    std::process::exit(code);
}

pub(super) fn serve_sim_gcs(nodes: usize) -> Result<()> {
    use std::io::{BufRead, Write};
    // Each node's connection, the raylets actors are placed on, and the
    // actors' workers.
    let actors = actors::ACTORS_MAX as u64;
    ensure_descriptors(nodes, 2, (nodes as u64).min(actors) * 2 + actors * 2)?;
    let base = Session::new_cluster(Config::new(), true)?;
    let session = base.for_node(0, "sim-gcs")?;
    crate::log::open(&session.dir.join("logs").join("gcs.log"));
    let gcs = Gcs::start(session)?;
    let hex: String = base.secret.0.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock<'_>, line: String| {
        writeln!(out, "{line}").and_then(|()| out.flush())
    };
    say(&mut out, format!("{} {hex}", gcs.addr())).map_err(|e| Error::io("writing", e))?;
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("cpu") => say(&mut out, cpu_seconds(UsageWho::RUSAGE_SELF).to_string())
                .map_err(|e| Error::io("writing", e))?,
            _ => break,
        }
    }
    gcs.stop();
    Ok(())
}

/// The simulation's GCS in a child process.
pub(super) struct ChildGcs {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
    output: BufReader<std::process::ChildStdout>,
    pub(super) endpoint: Endpoint,
    pub(super) secret: crate::transport::Secret,
}

impl ChildGcs {
    pub(super) fn spawn(nodes: usize) -> Result<ChildGcs> {
        use std::io::{BufRead, Read};
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().map_err(|e| Error::io("locating this program", e))?;
        let mut child = Command::new(exe)
            .env(ENV_SIM_GCS, nodes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("starting the simulation's GCS", e))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::invalid("the simulation's GCS has no pipes"));
        };
        let mut output = BufReader::new(output);
        let mut line = String::new();
        output
            .by_ref()
            .take(256)
            .read_line(&mut line)
            .map_err(|e| Error::io("reading the simulation GCS's address", e))?;
        let bad = || {
            Error::invalid(format!(
                "the simulation's GCS answered {line:?} (does main call serve_sim_gcs_if_asked?)"
            ))
        };
        let mut parts = line.split_whitespace();
        let addr: std::net::SocketAddr =
            parts.next().and_then(|a| a.parse().ok()).ok_or_else(bad)?;
        let hex = parts.next().filter(|h| h.len() == 32).ok_or_else(bad)?;
        let mut secret = [0u8; 16];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(ChildGcs {
            child,
            input: Some(input),
            output,
            endpoint: Endpoint::Tcp(addr),
            secret: crate::transport::Secret(secret),
        })
    }

    /// The child's CPU seconds so far (0 if it cannot say).
    pub(super) fn cpu_seconds(&mut self) -> f64 {
        use std::io::{BufRead, Read, Write};
        let Some(input) = self.input.as_mut() else {
            return 0.0;
        };
        if writeln!(input, "cpu").and_then(|()| input.flush()).is_err() {
            return 0.0;
        }
        let mut line = String::new();
        let _ = self.output.by_ref().take(64).read_line(&mut line);
        line.trim().parse().unwrap_or(0.0)
    }

    pub(super) fn stop(&mut self) {
        drop(self.input.take()); // its input closes: it stops and exits
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// CPU seconds used so far by this process (`RUSAGE_SELF`) or by the
/// calling thread (`RUSAGE_THREAD`). (Per-thread times in `/proc` read 0
/// on some kernels; `getrusage` does not.)
pub(super) fn cpu_seconds(who: UsageWho) -> f64 {
    let Ok(u) = getrusage(who) else { return 0.0 };
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
    secs(u.user_time()) + secs(u.system_time())
}

/// Raises this process's open-file limit to what `nodes` simulated nodes
/// need here, `per_node` descriptors each (a connection's end is two: the
/// socket and its clone for writing; a GCS in this process holds both
/// ends), or says why it cannot.
pub(super) fn ensure_descriptors(nodes: usize, per_node: u64, more: u64) -> Result<()> {
    let need = (nodes as u64)
        .saturating_mul(per_node)
        .saturating_add(more)
        .saturating_add(256);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| Error::io("reading the open-file limit", e.into()))?;
    if soft >= need {
        return Ok(());
    }
    // Above the hard limit only a privileged process may go (root here).
    setrlimit(Resource::RLIMIT_NOFILE, need, hard.max(need)).map_err(|e| {
        Error::invalid(format!(
            "node simulation: {nodes} nodes need {need} open files; the limit is {soft} \
             (hard {hard}) and raising it failed: {e}"
        ))
    })
}
