//! Simulated nodes for the GCS at scale (issue 13): one process plays N
//! raylets against a real GCS, over real sockets and the real protocol,
//! so the control plane's cost at hundreds or thousands of nodes can be
//! measured on one small machine.
//!
//! Each simulated node registers as a raylet does, then reports every
//! [`REPORT_PERIOD`] as a raylet does: its free resources when they
//! changed (a task started or finished there: `churn` is the share of
//! nodes whose resources change in a period), a bare heartbeat otherwise,
//! with the version of the cluster view it holds, and takes in the delta it
//! is answered with. A few threads drive all the nodes: each sends its
//! nodes' reports, then reads their answers, so one slow answer does not
//! hold the others' reports back.
//!
//! Measured: the time to register every node; the CPU time of the GCS's
//! threads per second of wall time (the process's CPU time less the
//! simulating threads' own); the bytes the GCS sends and receives per second; and, when
//! asked, how long a hung node (its connection open, its reports stopped)
//! takes to be seen dead by every other node.

use super::Gcs;
use crate::error::{Error, Result};
use crate::ids::random_u64;
use crate::resources::ResourceSet;
use crate::session::{Config, Session};
use crate::transport::{self, Conn, Endpoint, Msg, NodeInfo, ResourceReport, Stream};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use std::io::BufReader;
use std::time::{Duration, Instant};

/// How often a raylet reports (as `raylet` does).
pub(crate) const REPORT_PERIOD: Duration = Duration::from_millis(100);
/// CPUs each simulated node declares.
const NODE_CPUS: f64 = 64.0;
/// Threads driving the simulated nodes.
const DRIVERS: usize = 4;

/// What a simulation run measured (see the module notes).
#[derive(Clone, Debug)]
pub struct NodeSimReport {
    /// Simulated nodes.
    pub nodes: usize,
    /// Seconds until every node was registered.
    pub register_s: f64,
    /// CPU time of the GCS's threads per wall second, in percent of one
    /// core, while every node reports.
    pub gcs_cpu_pct: f64,
    /// Bytes the GCS sent (answers to reports), MB per second.
    pub gcs_bytes_out_mb_per_s: f64,
    /// Bytes the GCS received (reports), MB per second.
    pub gcs_bytes_in_mb_per_s: f64,
    /// Reports answered per second.
    pub reports_per_s: f64,
    /// From a hung node's last report until every other node's view shows
    /// it dead, when measured.
    pub death_propagation_ms: Option<f64>,
}

/// One simulated raylet.
struct SimNode {
    index: u16,
    conn: Conn,
    reader: BufReader<Stream>,
    version: u64,
    available: f64,
    /// When this node's view first showed the victim dead.
    saw_death: Option<Instant>,
}

/// Counts of one driving thread's period.
#[derive(Default, Clone, Copy)]
struct Traffic {
    bytes_in: u64,
    bytes_out: u64,
    reports: u64,
}

/// Runs `nodes` simulated raylets against a GCS started in this process
/// for `seconds` of reporting, `churn` (0 to 1) of them changing their
/// resources each period; then, with `death`, stops one node's reports and
/// waits until every other node sees it dead.
pub fn run_node_sim(nodes: usize, seconds: f64, churn: f64, death: bool) -> Result<NodeSimReport> {
    if !(1..=u16::MAX as usize).contains(&nodes) || !(0.0..=1.0).contains(&churn) {
        return Err(Error::invalid(format!(
            "node simulation: {nodes} nodes and churn {churn} (1 to 65535 nodes, churn 0 to 1)"
        )));
    }
    ensure_descriptors(nodes)?;
    let base = Session::new_cluster(Config::new(), true)?;
    let gcs = Gcs::start(base.for_node(0, "sim-gcs")?)?;
    let endpoint = Endpoint::Tcp(gcs.addr());
    let secret = base.secret;
    let result = drive(&endpoint, &secret, nodes, seconds, churn, death);
    gcs.stop();
    result
}

fn drive(
    endpoint: &Endpoint,
    secret: &crate::transport::Secret,
    nodes: usize,
    seconds: f64,
    churn: f64,
    death: bool,
) -> Result<NodeSimReport> {
    let drivers = DRIVERS.min(nodes);
    let t0 = Instant::now();
    // Register in parallel, each thread its share of the nodes.
    let groups: Vec<Vec<SimNode>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..drivers)
            .map(|d| {
                s.spawn(move || -> Result<Vec<SimNode>> {
                    (d..nodes)
                        .step_by(drivers)
                        .map(|i| register(endpoint, secret, i as u16))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid("a simulation thread panicked")))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let register_s = t0.elapsed().as_secs_f64();
    // Joining: each node's first answer is the whole view; not counted as
    // the steady traffic.
    let groups: Vec<Vec<SimNode>> = groups
        .into_iter()
        .map(|mut g| {
            let mut rng = 1;
            period(&mut g, 0.0, &mut rng, None, true).map(|_| g)
        })
        .collect::<Result<_>>()?;

    let victim = death.then_some(nodes as u16 - 1).filter(|_| nodes > 1);
    // The GCS's CPU time: the process's, less the simulating threads' own.
    let cpu0 = cpu_seconds(UsageWho::RUSAGE_SELF);
    let wall0 = Instant::now();
    let mut cpu_steady = 0.0;
    let steady_until = wall0 + Duration::from_secs_f64(seconds);
    // The victim's last report: the steady phase's end.
    let death_deadline = steady_until + super::NODE_TIMEOUT + Duration::from_secs(3);
    type Outcome = Result<(Vec<SimNode>, Traffic, f64)>;
    let outcome: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|mut group| {
                s.spawn(move || -> Outcome {
                    let mut rng = random_u64() | 1;
                    let mut steady = Traffic::default();
                    let mut after = Traffic::default();
                    let my_cpu0 = cpu_seconds(UsageWho::RUSAGE_THREAD);
                    let mut my_cpu = None;
                    let mut next = Instant::now();
                    loop {
                        let now = Instant::now();
                        let in_steady = now < steady_until;
                        if !in_steady && my_cpu.is_none() {
                            my_cpu = Some(cpu_seconds(UsageWho::RUSAGE_THREAD) - my_cpu0);
                        }
                        let done = match victim {
                            _ if in_steady => false,
                            None => true,
                            Some(v) => {
                                now >= death_deadline
                                    || group.iter().all(|n| n.index == v || n.saw_death.is_some())
                            }
                        };
                        if done {
                            return Ok((group, steady, my_cpu.unwrap_or(0.0)));
                        }
                        let t = period(&mut group, churn, &mut rng, victim, in_steady)?;
                        let into = if in_steady { &mut steady } else { &mut after };
                        into.bytes_in += t.bytes_in;
                        into.bytes_out += t.bytes_out;
                        into.reports += t.reports;
                        next += REPORT_PERIOD;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now; // behind: report again at once
                        }
                    }
                })
            })
            .collect();
        // The GCS's CPU time over the steady phase, read as it ends.
        std::thread::sleep(steady_until.saturating_duration_since(Instant::now()));
        cpu_steady = cpu_seconds(UsageWho::RUSAGE_SELF) - cpu0;
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid("a simulation thread panicked")))
            })
            .collect()
    });
    let wall = seconds.max(1e-9);
    let mut cpu = cpu_steady;
    let mut steady = Traffic::default();
    let mut seen = Vec::new();
    for o in outcome {
        let (group, t, sim_cpu) = o?;
        cpu -= sim_cpu;
        steady.bytes_in += t.bytes_in;
        steady.bytes_out += t.bytes_out;
        steady.reports += t.reports;
        seen.extend(group.into_iter().filter(|n| Some(n.index) != victim));
    }
    let death_propagation_ms = match victim {
        None => None,
        Some(v) => {
            let last = seen.iter().map(|n| n.saw_death).collect::<Option<Vec<_>>>();
            let Some(times) = last else {
                return Err(Error::invalid(format!(
                    "node simulation: some nodes never saw node {v} dead within {:?}",
                    death_deadline - steady_until
                )));
            };
            times
                .into_iter()
                .max()
                .map(|t| t.saturating_duration_since(steady_until).as_secs_f64() * 1e3)
        }
    };
    Ok(NodeSimReport {
        nodes,
        register_s,
        gcs_cpu_pct: cpu.max(0.0) / wall * 100.0,
        gcs_bytes_out_mb_per_s: steady.bytes_out as f64 / wall / 1e6,
        gcs_bytes_in_mb_per_s: steady.bytes_in as f64 / wall / 1e6,
        reports_per_s: steady.reports as f64 / wall,
        death_propagation_ms,
    })
}

/// Connects node `index` and registers it, as a raylet does.
fn register(endpoint: &Endpoint, secret: &crate::transport::Secret, index: u16) -> Result<SimNode> {
    let stream = endpoint.connect(secret)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| Error::io("setting a simulated node's read timeout", e))?;
    let conn = Conn::new(&stream)?;
    let total = ResourceSet::new().with("CPU", NODE_CPUS)?;
    conn.send(&Msg::RegisterNode {
        req: index as u64,
        info: NodeInfo {
            index,
            name: format!("sim-{index}"),
            ip: std::net::IpAddr::from([127, 0, 0, 1]),
            raylet_port: 9,
            available: total.clone(),
            total,
            alive: true,
            store_used: 0,
            store_capacity: 1 << 30,
            drivers: 0,
            drivers_seen: 0,
            fabric: None,
        },
    })?;
    let mut reader = BufReader::new(stream);
    match read(&mut reader)?.0 {
        Msg::NodeRegistered { result: Ok(()), .. } => {}
        Msg::NodeRegistered { result: Err(e), .. } => return Err(e),
        other => {
            return Err(Error::invalid(format!(
                "node simulation: {other:?} in answer to a registration"
            )))
        }
    }
    Ok(SimNode {
        index,
        conn,
        reader,
        version: 0,
        available: NODE_CPUS,
        saw_death: None,
    })
}

fn read(r: &mut BufReader<Stream>) -> Result<(Msg, usize)> {
    let mut body = Vec::new();
    match transport::read_frame(r, &mut body) {
        Ok(Some(m)) => Ok((m, 4 + body.len())),
        Ok(None) => Err(Error::unavailable(
            "node simulation: the GCS closed a connection",
        )),
        Err(e) => Err(Error::io("node simulation: reading from the GCS", e)),
    }
}

/// One report period of a group of nodes: every report sent, then every
/// answer read.
fn period(
    group: &mut [SimNode],
    churn: f64,
    rng: &mut u64,
    victim: Option<u16>,
    in_steady: bool,
) -> Result<Traffic> {
    let mut t = Traffic::default();
    let mut asked = Vec::with_capacity(group.len());
    for (i, n) in group.iter_mut().enumerate() {
        if !in_steady && Some(n.index) == victim {
            continue; // hung: its connection stays open, its reports stop
        }
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let changed = (*rng % 10_000) as f64 / 10_000.0 < churn;
        let report = if changed {
            // A task started or finished there.
            n.available = if n.available >= NODE_CPUS {
                n.available - 1.0
            } else {
                n.available + 1.0
            };
            Some(ResourceReport {
                available: ResourceSet::new().with("CPU", n.available)?,
                store_used: 0,
                store_capacity: 1 << 30,
                drivers: 0,
                drivers_seen: 0,
            })
        } else {
            None
        };
        let msg = Msg::ReportResources {
            node: n.index,
            report,
            view_version: n.version,
        };
        t.bytes_in += 4 + crate::codec::encode(&msg)?.len() as u64;
        n.conn.send(&msg)?;
        asked.push(i);
    }
    for i in asked {
        let n = &mut group[i];
        let (m, len) = read(&mut n.reader)?;
        t.bytes_out += len as u64;
        t.reports += 1;
        if let Msg::ClusterView {
            version,
            joined,
            changed,
        } = m
        {
            n.version = n.version.max(version);
            let dead = |i: u16, alive: bool| Some(i) == victim && !alive;
            if n.saw_death.is_none()
                && (joined.iter().any(|x| dead(x.index, x.alive))
                    || changed.iter().any(|x| dead(x.index, x.alive)))
            {
                n.saw_death = Some(Instant::now());
            }
        }
    }
    Ok(t)
}

/// CPU seconds used so far by this process (`RUSAGE_SELF`) or by the
/// calling thread (`RUSAGE_THREAD`). (Per-thread times in `/proc` read 0
/// on some kernels; `getrusage` does not.)
fn cpu_seconds(who: UsageWho) -> f64 {
    let Ok(u) = getrusage(who) else { return 0.0 };
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
    secs(u.user_time()) + secs(u.system_time())
}

/// Raises this process's open-file limit to what `nodes` simulated nodes
/// need (both ends of each connection, each cloned for writing and
/// reading: eight descriptors a node leaves room), or says why it cannot.
fn ensure_descriptors(nodes: usize) -> Result<()> {
    let need = (nodes as u64) * 8 + 256;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small simulated cluster: every node registers, every report is
    /// answered, a quiet cluster's answers are heartbeats (no node sent
    /// back), and a hung node is seen dead by every other node within the
    /// health-check bound plus a report period or two.
    #[test]
    fn simulated_nodes_report_and_see_a_hung_node_die() {
        let quiet = run_node_sim(16, 1.0, 0.0, false).expect("simulation runs");
        assert_eq!(quiet.nodes, 16);
        assert!(quiet.reports_per_s > 16.0 * 5.0, "{quiet:?}");
        // Nothing changes: each answer is an empty delta.
        assert!(
            quiet.gcs_bytes_out_mb_per_s * 1e6 / quiet.reports_per_s < 40.0,
            "{quiet:?}"
        );
        let busy = run_node_sim(16, 1.0, 1.0, true).expect("simulation runs");
        let ms = busy.death_propagation_ms.expect("measured");
        let bound = super::super::NODE_TIMEOUT.as_secs_f64() * 1e3;
        assert!(ms >= bound - 50.0 && ms < bound + 1500.0, "{busy:?}");
        assert!(
            busy.gcs_bytes_out_mb_per_s > quiet.gcs_bytes_out_mb_per_s * 4.0,
            "churn sends deltas: {busy:?} against {quiet:?}"
        );
    }
}
