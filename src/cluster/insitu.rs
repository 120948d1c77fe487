//! A cluster formed in situ by the ranks of a Slurm step that each call
//! `init()` (a simulation linking the library): rank 0 hosts the GCS, each
//! node's first local rank its raylet, every rank is a driver; joining is
//! bounded and names the ranks that never came, and rank 0 ends the
//! cluster once every rank has left.

use super::launch::{expected_nodes, join_step};
use super::*;

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
}
