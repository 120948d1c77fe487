//! Simulated nodes for the GCS at scale (issue 13): one process plays N
//! raylets against a real GCS, over real sockets and the real protocol,
//! so the control plane's cost at hundreds or thousands of nodes can be
//! measured on one small machine.
//!
//! Each simulated node registers as a raylet does, then reports as a
//! raylet does: every [`REPORT_PERIOD`] in which its free resources
//! changed (a task started or finished there: `churn` is the share of
//! nodes whose resources change in a period), a bare heartbeat once per
//! `HEARTBEAT_EVERY` otherwise, with the version of the cluster view it
//! holds, and takes in the delta it is answered with (and node deaths
//! pushed, as they arrive). A few threads drive all the nodes: each sends its
//! nodes' reports, then reads their answers, so one slow answer does not
//! hold the others' reports back.
//!
//! Measured: the time to register every node; the CPU time of the GCS's
//! threads per second of wall time (the process's CPU time less the
//! simulating threads' own); the bytes the GCS sends and receives per second; and, when
//! asked, how long a hung node (its connection open, its reports stopped)
//! takes to be seen dead by every other node.

mod actors;
mod child;

pub use child::serve_sim_gcs_if_asked;
use child::{cpu_seconds, ensure_descriptors, ChildGcs, SimGcs};

use super::Gcs;
use crate::error::{Error, Result};
use crate::ids::random_u64;
use crate::protocol::{FromGcs, Message, ToGcs};
use crate::resources::ResourceSet;
use crate::session::{Config, Session};
use crate::transport::{self, Conn, Endpoint, Msg, NodeInfo, ResourceReport, Stream};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use std::io::BufReader;
use std::time::{Duration, Instant};

/// How often a raylet reports (as `raylet` does).
pub(crate) const REPORT_PERIOD: Duration = Duration::from_millis(100);
/// The periods between an idle raylet's heartbeats (as `raylet` does).
const HEARTBEAT_PERIODS: u32 =
    (crate::raylet::HEARTBEAT_EVERY.as_millis() / REPORT_PERIOD.as_millis()) as u32;
/// How often the simulated nodes take in pushed deaths while waiting for
/// one.
const PUSH_POLL: Duration = Duration::from_millis(2);
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
    /// Seconds from then until every node had its first answer (the whole
    /// view): the join's cost, which grows with the square of the nodes.
    pub join_settle_s: f64,
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
    /// Of the nodes that saw the hung node dead, how many heard it pushed
    /// (`NodeLost`) before any delta said it.
    pub deaths_pushed: usize,
    /// Nodes whose connection the GCS closed (declared dead) during the run,
    /// the victim aside: reports that came too late, a GCS overloaded.
    pub nodes_lost: usize,
    /// With actors: actors created per second during the steady phase
    /// (see `sim/actors.rs`), how many, and the median creation latency.
    pub actor_create_per_s: Option<f64>,
    /// Actors created.
    pub actors_created: usize,
    /// Median time from asking for an actor to its answer, ms.
    pub actor_create_median_ms: Option<f64>,
    /// Median time from looking an actor up by name to the answer, ms.
    pub actor_lookup_median_ms: Option<f64>,
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
    /// It heard of the victim's death pushed (`NodeLost`), not in a delta.
    death_pushed: bool,
    /// Its connection closed (the GCS declared it dead): it reports no more.
    lost: bool,
    /// Periods since its last report (an idle raylet reports once per
    /// heartbeat).
    quiet: u32,
    /// When it last sent a report (a hung node's last sign of life).
    last_sent: Option<Instant>,
}

/// Counts of one driving thread's period.
#[derive(Default, Clone, Copy)]
struct Traffic {
    bytes_in: u64,
    bytes_out: u64,
    reports: u64,
}

/// Runs `nodes` simulated raylets against a GCS for `seconds` of
/// reporting, `churn` (0 to 1) of them changing their resources each
/// period; then, with `death`, stops one node's reports and waits until
/// every other node sees it dead; with `actors`, simulated core workers
/// create actors during the steady phase (so the GCS's CPU figures then
/// include that work). The GCS runs in this process, or with
/// `apart` in a child process (this same program, which must call
/// [`serve_sim_gcs_if_asked`] first thing in `main`): each process then
/// has its own open-file limit, and the GCS's CPU time is its process's.
pub fn run_node_sim(
    nodes: usize,
    seconds: f64,
    churn: f64,
    death: bool,
    actors: bool,
    apart: bool,
) -> Result<NodeSimReport> {
    if !(1..=u16::MAX as usize).contains(&nodes) || !(0.0..=1.0).contains(&churn) {
        return Err(Error::invalid(format!(
            "node simulation: {nodes} nodes and churn {churn} (1 to 65535 nodes, churn 0 to 1)"
        )));
    }
    // Each actor: its host's connections here, the GCS's watch there.
    let per_actor = if actors {
        actors::ACTORS_MAX as u64 * 4
    } else {
        0
    };
    let mut gcs = if apart {
        ensure_descriptors(nodes, 2, per_actor)?;
        SimGcs::Child(ChildGcs::spawn(nodes)?)
    } else {
        ensure_descriptors(nodes, 4, 2 * per_actor)?;
        let base = Session::new_cluster(Config::new(), true)?;
        let gcs = Gcs::start(base.for_node(0, "sim-gcs")?)?;
        SimGcs::Here(Endpoint::Tcp(gcs.addr()), base.secret, gcs)
    };
    let (endpoint, secret) = match &gcs {
        SimGcs::Child(c) => (c.endpoint.clone(), c.secret),
        SimGcs::Here(e, s, _) => (e.clone(), *s),
    };
    let result = drive(
        &endpoint,
        &secret,
        nodes,
        seconds,
        churn,
        death,
        actors,
        &mut || match &mut gcs {
            SimGcs::Child(c) => (c.cpu_seconds(), false),
            SimGcs::Here(..) => (cpu_seconds(UsageWho::RUSAGE_SELF), true),
        },
    );
    match &mut gcs {
        SimGcs::Child(c) => c.stop(),
        SimGcs::Here(_, _, g) => g.stop(),
    }
    result
}

/// Drives the simulated nodes; `cpu` reads the GCS's CPU seconds so far,
/// and whether the simulating threads' own time is to be taken off (a
/// GCS in this process).
#[allow(clippy::too_many_arguments)]
fn drive(
    endpoint: &Endpoint,
    secret: &crate::transport::Secret,
    nodes: usize,
    seconds: f64,
    churn: f64,
    death: bool,
    actors: bool,
    cpu: &mut dyn FnMut() -> (f64, bool),
) -> Result<NodeSimReport> {
    let drivers = DRIVERS.min(nodes);
    // The nodes' raylet port, where the GCS leases workers for actors
    // (a port nothing listens on without actors).
    let hosts = actors
        .then(|| actors::ActorHosts::start(*secret, nodes))
        .transpose()?;
    let raylet_port = hosts.as_ref().map_or(9, |h| h.raylet_port);
    let mut created = None;
    let victim = death.then_some(nodes as u16 - 1).filter(|_| nodes > 1);
    let t0 = Instant::now();
    // Every thread registers its share of the nodes; once all are in, the
    // main thread sets the phases: the join settles (each node's first
    // answer is the whole view), then the steady phase is measured, then
    // the victim hangs.
    let registered = std::sync::Barrier::new(drivers + 1);
    let phases: std::sync::OnceLock<Phases> = std::sync::OnceLock::new();
    let settled = std::sync::atomic::AtomicUsize::new(0);
    let (mut register_s, mut join_s, mut cpu_steady, mut shared) = (0.0, 0.0, 0.0, false);
    type Outcome = Result<(Vec<SimNode>, Traffic, f64, usize)>;
    let outcome: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..drivers)
            .map(|d| {
                let (registered, phases, settled) = (&registered, &phases, &settled);
                s.spawn(move || -> Outcome {
                    let group: Result<Vec<SimNode>> = (d..nodes)
                        .step_by(drivers)
                        .map(|i| register(endpoint, secret, i as u16, raylet_port))
                        .collect();
                    registered.wait();
                    let mut group = group?;
                    run_group(&mut group, phases, settled, churn, victim)
                        .map(|(t, c, lost)| (group, t, c, lost))
                })
            })
            .collect();
        registered.wait();
        register_s = t0.elapsed().as_secs_f64();
        // The join settles once every node has had its first answer (the
        // whole view), at most SETTLE_MAX; then the steady phase.
        let joined = Instant::now();
        while settled.load(std::sync::atomic::Ordering::Acquire) < drivers
            && joined.elapsed() < SETTLE_MAX
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        join_s = joined.elapsed().as_secs_f64();
        let settle_end = Instant::now() + REPORT_PERIOD;
        let steady_end = settle_end + Duration::from_secs_f64(seconds);
        let _ = phases.set(Phases {
            settle_end,
            steady_end,
            death_deadline: steady_end + super::NODE_TIMEOUT + Duration::from_secs(3),
        });
        // The GCS's CPU time over the steady phase.
        std::thread::sleep(settle_end.saturating_duration_since(Instant::now()));
        let (c0, s0) = cpu();
        if actors {
            created = Some(actors::create_actors(endpoint, secret, steady_end));
        }
        std::thread::sleep(steady_end.saturating_duration_since(Instant::now()));
        cpu_steady = cpu().0 - c0;
        shared = s0;
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid("a simulation thread panicked")))
            })
            .collect()
    });
    let made = created.transpose()?;
    drop(hosts);
    let p = phases
        .get()
        .copied()
        .ok_or_else(|| Error::invalid("node simulation: no phases"))?;
    let wall = seconds.max(1e-9);
    let (mut cpu, mut steady, mut lost) = (cpu_steady, Traffic::default(), 0);
    let (mut seen, mut hung_since) = (Vec::new(), None);
    for o in outcome {
        let (group, t, sim_cpu, l) = o?;
        if shared {
            cpu -= sim_cpu;
        }
        steady.bytes_in += t.bytes_in;
        steady.bytes_out += t.bytes_out;
        steady.reports += t.reports;
        lost += l;
        if let Some(v) = group.iter().find(|n| Some(n.index) == victim) {
            hung_since = v.last_sent;
        }
        seen.extend(
            group
                .into_iter()
                .filter(|n| Some(n.index) != victim && !n.lost),
        );
    }
    // From the hung node's last report (an idle node's heartbeat may have
    // come up to a second before it hung).
    let hung_since = hung_since.unwrap_or(p.steady_end).min(p.steady_end);
    let deaths_pushed = seen.iter().filter(|n| n.death_pushed).count();
    let death_propagation_ms = match victim {
        None => None,
        Some(v) => {
            let last = seen.iter().map(|n| n.saw_death).collect::<Option<Vec<_>>>();
            let Some(times) = last else {
                return Err(Error::invalid(format!(
                    "node simulation: some nodes never saw node {v} dead within {:?}",
                    p.death_deadline - p.steady_end
                )));
            };
            times
                .into_iter()
                .max()
                .map(|t| t.saturating_duration_since(hung_since).as_secs_f64() * 1e3)
        }
    };
    Ok(NodeSimReport {
        nodes,
        register_s,
        join_settle_s: join_s,
        gcs_cpu_pct: cpu.max(0.0) / wall * 100.0,
        gcs_bytes_out_mb_per_s: steady.bytes_out as f64 / wall / 1e6,
        gcs_bytes_in_mb_per_s: steady.bytes_in as f64 / wall / 1e6,
        reports_per_s: steady.reports as f64 / wall,
        death_propagation_ms,
        deaths_pushed,
        nodes_lost: lost,
        actor_create_per_s: made.map(|c| c.actors as f64 / c.seconds.max(1e-9)),
        actors_created: made.map_or(0, |c| c.actors),
        actor_create_median_ms: made.map(|c| c.median_ms),
        actor_lookup_median_ms: made.map(|c| c.lookup_median_ms),
    })
}

/// The longest the join may take to settle before the steady phase.
const SETTLE_MAX: Duration = Duration::from_secs(60);

/// The phases of a run, set once every node is registered.
#[derive(Clone, Copy)]
struct Phases {
    settle_end: Instant,
    steady_end: Instant,
    death_deadline: Instant,
}

/// One thread's nodes reporting through the phases: its steady traffic,
/// its own CPU time over the steady phase, and the nodes it lost (their
/// connection closed: the GCS declared them dead, say).
fn run_group(
    group: &mut [SimNode],
    phases: &std::sync::OnceLock<Phases>,
    settled: &std::sync::atomic::AtomicUsize,
    churn: f64,
    victim: Option<u16>,
) -> Result<(Traffic, f64, usize)> {
    let mut rng = random_u64() | 1;
    let mut steady = Traffic::default();
    let (mut cpu_at_start, mut cpu) = (None, None);
    let mut next = Instant::now();
    // Joining: the first period's answers are the whole view.
    period(group, churn, &mut rng, victim, true)?;
    settled.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    loop {
        let now = Instant::now();
        let Some(&p) = phases.get() else {
            // Still settling: report as usual, count nothing.
            period(group, churn, &mut rng, victim, true)?;
            next = pace(next);
            continue;
        };
        let in_steady = now >= p.settle_end && now < p.steady_end;
        let hung = now >= p.steady_end;
        if in_steady && cpu_at_start.is_none() {
            cpu_at_start = Some(cpu_seconds(UsageWho::RUSAGE_THREAD));
        }
        if hung && cpu.is_none() {
            cpu = cpu_at_start.map(|c| cpu_seconds(UsageWho::RUSAGE_THREAD) - c);
        }
        let done = hung
            && match victim {
                None => true,
                Some(v) => {
                    now >= p.death_deadline
                        || group
                            .iter()
                            .all(|n| n.index == v || n.lost || n.saw_death.is_some())
                }
            };
        if done {
            let lost = group.iter().filter(|n| n.lost).count();
            return Ok((steady, cpu.unwrap_or(0.0), lost));
        }
        let t = period(group, churn, &mut rng, victim, !hung)?;
        if in_steady {
            steady.bytes_in += t.bytes_in;
            steady.bytes_out += t.bytes_out;
            steady.reports += t.reports;
        }
        if hung && victim.is_some() {
            // Waiting for the death: pushes are taken in as they come (a
            // raylet's reader does), not at the next period only, which
            // would add up to a period to what is measured.
            let until = next + REPORT_PERIOD;
            while Instant::now() < until {
                std::thread::sleep(PUSH_POLL.min(until.saturating_duration_since(Instant::now())));
                for n in group.iter_mut() {
                    take_pushed(n, victim, &mut Traffic::default());
                }
            }
        }
        next = pace(next);
    }
}

/// Sleeps until a period after `next`: the next period's start (at once
/// when behind).
fn pace(next: Instant) -> Instant {
    let next = next + REPORT_PERIOD;
    let now = Instant::now();
    if next > now {
        std::thread::sleep(next - now);
        next
    } else {
        now
    }
}

/// What simulated node `index` registers as.
fn sim_node(index: u16, total: ResourceSet, raylet_port: u16) -> NodeInfo {
    NodeInfo {
        index,
        name: format!("sim-{index}"),
        ip: std::net::IpAddr::from([127, 0, 0, 1]),
        raylet_port,
        available: total.clone(),
        total,
        alive: true,
        store_used: 0,
        store_capacity: 1 << 30,
        drivers: 0,
        drivers_seen: 0,
        ranks: Vec::new(),
        fabric: None,
    }
}

/// Connects node `index` and registers it, as a raylet does.
fn register(
    endpoint: &Endpoint,
    secret: &crate::transport::Secret,
    index: u16,
    raylet_port: u16,
) -> Result<SimNode> {
    let stream = endpoint.connect(secret)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| Error::io("setting a simulated node's read timeout", e))?;
    let conn = Conn::new(&stream)?;
    let total = ResourceSet::new().with("CPU", NODE_CPUS)?;
    conn.send(&ToGcs::RegisterNode {
        req: index as u64,
        info: sim_node(index, total, raylet_port),
    })?;
    let mut reader = BufReader::new(stream);
    match read(&mut reader)?.0 {
        Msg::FromGcs(FromGcs::NodeRegistered { result: Ok(()), .. }) => {}
        Msg::FromGcs(FromGcs::NodeRegistered { result: Err(e), .. }) => return Err(e),
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
        death_pushed: false,
        lost: false,
        quiet: 0,
        last_sent: None,
    })
}

fn read(r: &mut BufReader<Stream>) -> Result<(Msg, usize)> {
    let mut body = Vec::new();
    match transport::read_frame_bytes(r, &mut body) {
        Ok(true) => {}
        Ok(false) => {
            return Err(Error::unavailable(
                "node simulation: the GCS closed a connection",
            ))
        }
        Err(e) => return Err(Error::io("node simulation: reading from the GCS", e)),
    }
    let len = 4 + body.len();
    if let Some(version) = whole_view_version(&body) {
        // A joining node's whole view: what a raylet decodes once, on its
        // own machine. Decoding thousands of them here, on this machine's
        // cores, would measure the simulation rather than the GCS (and
        // keep the simulated nodes from reporting in time); its version is
        // what the node holds from then on. Deltas are decoded in full.
        return Ok((
            Msg::FromGcs(FromGcs::ClusterView {
                version,
                joined: Vec::new(),
                changed: Vec::new(),
                candidates: None,
            }),
            len,
        ));
    }
    let m = crate::codec::decode(&body, "message")?;
    Ok((m, len))
}

/// Bodies this long are whole views (a delta of a 0.5 churn is far less).
const WHOLE_VIEW_BYTES: usize = 64 << 10;

/// The version of a large `ClusterView` body, read from its head alone.
fn whole_view_version(body: &[u8]) -> Option<u64> {
    if body.len() < WHOLE_VIEW_BYTES {
        return None;
    }
    // The head of a `ClusterView`: its envelope's and its variant tags,
    // then the version.
    let empty = crate::codec::encode(&Msg::FromGcs(FromGcs::ClusterView {
        version: 0,
        joined: Vec::new(),
        changed: Vec::new(),
        candidates: None,
    }))
    .ok()?;
    // The empty one ends with the version (0), two empty lengths and no
    // candidates.
    let tag = empty.get(..empty.len().checked_sub(4)?)?;
    let rest = body.strip_prefix(tag)?;
    let (version, _) =
        bincode::serde::decode_from_slice::<u64, _>(rest, crate::codec::config()).ok()?;
    Some(version)
}

/// Takes in what the GCS pushed to node `n` since (deaths), as its
/// raylet's reader does when it arrives; never waits for more.
fn take_pushed(n: &mut SimNode, victim: Option<u16>, t: &mut Traffic) {
    while !n.lost
        && (!n.reader.buffer().is_empty() || transport::bytes_waiting(n.reader.get_ref().raw_fd()))
    {
        let Ok((m, len)) = read(&mut n.reader) else {
            n.lost = true;
            break;
        };
        t.bytes_out += len as u64;
        if let Msg::FromGcs(FromGcs::NodeLost { node }) = m {
            if Some(node) == victim && n.saw_death.is_none() {
                n.saw_death = Some(Instant::now());
                n.death_pushed = true;
            }
        }
    }
}

/// One report period of a group of nodes: every report sent, then every
/// answer read.
fn period(
    group: &mut [SimNode],
    churn: f64,
    rng: &mut u64,
    victim: Option<u16>,
    victim_reports: bool,
) -> Result<Traffic> {
    let mut t = Traffic::default();
    let mut asked = Vec::with_capacity(group.len());
    for (i, n) in group.iter_mut().enumerate() {
        if n.lost || (!victim_reports && Some(n.index) == victim) {
            continue; // hung: its connection stays open, its reports stop
        }
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let changed = (*rng % 10_000) as f64 / 10_000.0 < churn;
        n.quiet += 1;
        if !changed && n.version != 0 && n.quiet < HEARTBEAT_PERIODS {
            // Idle, and its heartbeat not yet due: it sends nothing, and
            // takes in a death pushed meanwhile as its raylet's reader
            // would, when it arrives.
            take_pushed(n, victim, &mut t);
            continue;
        }
        n.quiet = 0;
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
                ranks: Vec::new(),
            })
        } else {
            None
        };
        let msg = ToGcs::ReportResources {
            node: n.index,
            report,
            view_version: n.version,
            spill_demand: 0,
        };
        t.bytes_in += 4 + crate::codec::encode(&msg.wire())?.len() as u64;
        if n.conn.send(&msg).is_err() {
            n.lost = true;
            continue;
        }
        n.last_sent = Some(Instant::now());
        asked.push(i);
    }
    for i in asked {
        let n = &mut group[i];
        let Ok((mut m, mut len)) = read(&mut n.reader) else {
            n.lost = true;
            continue;
        };
        // A death pushed ahead of the answer: seen now; the answer follows.
        while let Msg::FromGcs(FromGcs::NodeLost { node }) = m {
            if Some(node) == victim && n.saw_death.is_none() {
                n.saw_death = Some(Instant::now());
                n.death_pushed = true;
            }
            t.bytes_out += len as u64;
            let Ok((next, l)) = read(&mut n.reader) else {
                n.lost = true;
                break;
            };
            (m, len) = (next, l);
        }
        if n.lost {
            continue;
        }
        t.bytes_out += len as u64;
        t.reports += 1;
        if let Msg::FromGcs(FromGcs::ClusterView {
            version,
            joined,
            changed,
            ..
        }) = m
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole view's version is read from its head; deltas and other
    /// messages are left to the full decode.
    #[test]
    fn a_whole_views_version_is_read_from_its_head() {
        let node = |i: u16| sim_node(i, ResourceSet::new(), 9);
        let whole = FromGcs::ClusterView {
            version: 123_456_789,
            joined: (0..4096).map(node).collect(),
            changed: Vec::new(),
            candidates: None,
        };
        let body = crate::codec::encode(&whole.wire()).unwrap();
        assert!(body.len() >= WHOLE_VIEW_BYTES);
        assert_eq!(whole_view_version(&body), Some(123_456_789));
        let small = FromGcs::ClusterView {
            version: 7,
            joined: (0..3).map(node).collect(),
            changed: Vec::new(),
            candidates: None,
        };
        assert_eq!(
            whole_view_version(&crate::codec::encode(&small.wire()).unwrap()),
            None
        );
        let mut other = crate::codec::encode(
            &FromGcs::Nodes {
                req: 1,
                nodes: (0..4096).map(node).collect(),
            }
            .wire(),
        )
        .unwrap();
        assert_eq!(whole_view_version(&other), None);
        other.truncate(2);
        assert_eq!(whole_view_version(&other), None);
    }

    /// A small simulated cluster: every node registers, every report is
    /// answered, a quiet cluster's nodes send a heartbeat a second, not a
    /// report a period, and are answered with no node sent back, and a
    /// hung node is seen dead by every other node within the health-check
    /// bound plus a report period or two.
    #[test]
    fn simulated_nodes_report_and_see_a_hung_node_die() {
        let quiet = run_node_sim(16, 1.0, 0.0, false, false, false).expect("simulation runs");
        assert_eq!(quiet.nodes, 16);
        let per_node = quiet.reports_per_s / 16.0;
        let beats = 1.0 / crate::raylet::HEARTBEAT_EVERY.as_secs_f64();
        assert!(
            per_node >= beats * 0.5 && per_node <= beats * 2.0,
            "{quiet:?}"
        );
        // Nothing changes: each answer is an empty delta.
        assert!(
            quiet.gcs_bytes_out_mb_per_s * 1e6 / quiet.reports_per_s < 40.0,
            "{quiet:?}"
        );
        let busy = run_node_sim(16, 1.0, 1.0, true, false, false).expect("simulation runs");
        let ms = busy.death_propagation_ms.expect("measured");
        let bound = super::super::NODE_TIMEOUT.as_secs_f64() * 1e3;
        assert!(ms >= bound - 50.0 && ms < bound + 1500.0, "{busy:?}");
        // Pushed the moment the GCS declared it (FromGcs::NodeLost), not
        // only in the next report's delta.
        assert!(busy.deaths_pushed > 0, "{busy:?}");
        assert!(
            busy.gcs_bytes_out_mb_per_s > quiet.gcs_bytes_out_mb_per_s * 4.0,
            "churn sends deltas: {busy:?} against {quiet:?}"
        );
    }

    /// Simulated core workers create named actors on simulated nodes while
    /// the nodes report: the GCS places each on its view, leases a worker
    /// from the node's (simulated) raylet and has the constructor run
    /// there; every creation is answered, every actor is found by its name
    /// right after, and the nodes stay alive meanwhile.
    #[test]
    fn simulated_core_workers_create_actors() {
        let r = run_node_sim(16, 1.0, 0.5, false, true, false).expect("simulation runs");
        assert!(r.actors_created >= 20, "{r:?}");
        assert!(r.actors_created <= actors::ACTORS_MAX, "{r:?}");
        assert!(r.actor_create_per_s.is_some_and(|x| x > 0.0), "{r:?}");
        assert!(r.actor_create_median_ms.is_some_and(|x| x > 0.0), "{r:?}");
        assert!(r.actor_lookup_median_ms.is_some_and(|x| x > 0.0), "{r:?}");
        assert_eq!(r.nodes_lost, 0, "{r:?}");
        let none = run_node_sim(4, 0.3, 0.0, false, false, false).expect("simulation runs");
        assert_eq!((none.actors_created, none.actor_create_per_s), (0, None));
    }
}
