//! Actor creation at scale, in the node simulation: simulated core workers
//! ask the GCS for actors while every simulated node reports, and this
//! process plays what the GCS reaches to create them, over real sockets
//! and the real protocol.
//!
//! - Every simulated node advertises one raylet port, served here: a lease
//!   request is granted at once, with a worker on one of the nodes (in
//!   turn), so the GCS's placement, leasing and creation run in full.
//! - Every such worker is one listener here: it takes the GCS's `Hello`
//!   and `CreateActor` and answers `ActorCreated`, then holds the
//!   connection open, as an actor's host does for the actor's life.
//! - Creators: a few threads, each with its own connection to the GCS,
//!   register named actors one after another (`RegisterActor`, answered
//!   once the actor is alive), each then looked up by its name
//!   (`LookupActor`), until the phase ends or enough exist.
//!
//! What it measures is the GCS's side of creating actors (placement on
//! the view of N nodes, the lease, the constructor's round trip, the
//! answer), not a worker process's start-up.

use crate::error::{Error, Result};
use crate::ids::{ActorId, LeaseId, WorkerId};
use crate::protocol::{
    ActorLookup, ActorSpec, FromGcs, FromRaylet, Msg, NamedActor, PeerMsg, ToGcs, ToRaylet,
};
use crate::resources::ResourceSet;
use crate::transport::{self, Conn, Endpoint, Listener, Secret, Stream};
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Threads registering actors at once.
const CREATORS: usize = 8;
/// At most this many actors per run: each holds a GCS thread and a
/// connection for its life (the GCS's own cap is 10,000).
pub(super) const ACTORS_MAX: usize = 2_000;

/// The raylet and worker listeners of the simulated nodes.
pub(super) struct ActorHosts {
    /// The port every simulated node advertises as its raylet's.
    pub(super) raylet_port: u16,
    worker_port: u16,
    stop: Arc<AtomicBool>,
    /// Every connection served, closed when the simulation ends (so the
    /// GCS's watches of the actors end too, in a GCS run in-process).
    served: Arc<std::sync::Mutex<Vec<Stream>>>,
}

impl ActorHosts {
    /// Starts the listeners for `nodes` simulated nodes.
    pub(super) fn start(secret: Secret, nodes: usize) -> Result<ActorHosts> {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let (raylets, workers) = (Listener::bind_tcp(loopback)?, Listener::bind_tcp(loopback)?);
        let (raylet_port, worker_port) = (raylets.port(), workers.port());
        let stop = Arc::new(AtomicBool::new(false));
        let served: Arc<std::sync::Mutex<Vec<Stream>>> = Arc::default();
        let leases = Arc::new(AtomicU64::new(0));
        let nodes = nodes.clamp(1, u16::MAX as usize) as u64;
        let (s, kept) = (stop.clone(), served.clone());
        spawn("sim-raylets", move || {
            let stopped = s.clone();
            transport::accept_each(
                raylets,
                "sim-raylet",
                move || stopped.load(Ordering::Relaxed),
                move |stream| {
                    keep(&kept, &stream);
                    grant_leases(stream, &secret, &leases, nodes, worker_port)
                },
            )
        })?;
        let (s, kept) = (stop.clone(), served.clone());
        spawn("sim-workers", move || {
            let stopped = s.clone();
            transport::accept_each(
                workers,
                "sim-worker",
                move || stopped.load(Ordering::Relaxed),
                move |stream| {
                    keep(&kept, &stream);
                    host_actor(stream, &secret)
                },
            )
        })?;
        Ok(ActorHosts {
            raylet_port,
            worker_port,
            stop,
            served,
        })
    }
}

impl Drop for ActorHosts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake each accept loop so it sees the flag.
        for port in [self.raylet_port, self.worker_port] {
            let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        }
        for s in self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            s.shutdown();
        }
    }
}

/// Keeps a handle on a served connection, to close it at the end.
fn keep(served: &std::sync::Mutex<Vec<Stream>>, stream: &Stream) {
    if let Ok(s) = stream.try_clone() {
        served.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map(|_| ())
        .map_err(|e| Error::io("starting a simulation thread", e))
}

/// A simulated raylet's connection from the GCS: every lease request is
/// granted, its worker on the next node in turn.
fn grant_leases(mut stream: Stream, secret: &Secret, leases: &AtomicU64, nodes: u64, port: u16) {
    if !stream.accept_secret(secret) {
        return;
    }
    let Ok(conn) = Conn::new(&stream) else { return };
    let _ = transport::read_loop(stream, |m| {
        if let Msg::ToRaylet(ToRaylet::RequestLease { req, .. }) = m {
            let seq = leases.fetch_add(1, Ordering::Relaxed);
            let _ = conn.send(&FromRaylet::LeaseGranted {
                req,
                lease: LeaseId::new((seq % nodes) as u16, seq),
                worker: WorkerId::new((seq % nodes) as u16, port),
                gpus: Vec::new(),
            });
        }
    });
}

/// A simulated actor host: the constructor "runs" at once; the connection
/// stays open until the GCS closes it.
fn host_actor(mut stream: Stream, secret: &Secret) {
    if !stream.accept_secret(secret) {
        return;
    }
    let Ok(conn) = Conn::new(&stream) else { return };
    let _ = transport::read_loop(stream, |m| {
        if let Msg::Peer(PeerMsg::CreateActor { .. }) = m {
            let _ = conn.send(&PeerMsg::ActorCreated { result: Ok(()) });
        }
    });
}

/// What the creators measured.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Created {
    pub(super) actors: usize,
    pub(super) seconds: f64,
    /// Median time from `RegisterActor` to its answer.
    pub(super) median_ms: f64,
    /// Median time from looking an actor up by its name to the answer.
    pub(super) lookup_median_ms: f64,
}

/// Registers actors from [`CREATORS`] connections until `until` or
/// [`ACTORS_MAX`] of them; every one must be created.
pub(super) fn create_actors(
    endpoint: &Endpoint,
    secret: &Secret,
    until: Instant,
) -> Result<Created> {
    let t0 = Instant::now();
    let made = AtomicU64::new(0);
    let results: Vec<Result<(Vec<f64>, Vec<f64>)>> = std::thread::scope(|s| {
        let made = &made;
        let handles: Vec<_> = (0..CREATORS)
            .map(|c| s.spawn(move || creator(endpoint, secret, c as u16, until, made)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid("an actor creator panicked")))
            })
            .collect()
    });
    let seconds = t0.elapsed().as_secs_f64();
    let (mut latencies, mut lookups) = (Vec::new(), Vec::new());
    for r in results {
        let (c, l) = r?;
        latencies.extend(c);
        lookups.extend(l);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Ok(Created {
        actors: latencies.len(),
        seconds,
        median_ms: median(&mut latencies),
        lookup_median_ms: median(&mut lookups),
    })
}

/// One creator: named actors one at a time, each then looked up by its
/// name (as a core worker's `get_actor`); their creation and lookup
/// latencies in ms. A lookup that does not find the actor just created
/// fails the run.
fn creator(
    endpoint: &Endpoint,
    secret: &Secret,
    me: u16,
    until: Instant,
    made: &AtomicU64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let stream = endpoint.connect(secret)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| Error::io("setting a creator's read timeout", e))?;
    let conn = Conn::new(&stream)?;
    let mut reader = BufReader::new(stream);
    let cpu = ResourceSet::new().with("CPU", 1.0)?;
    let (mut out, mut lookups) = (Vec::new(), Vec::new());
    let mut req = 0u64;
    while Instant::now() < until && made.fetch_add(1, Ordering::Relaxed) < ACTORS_MAX as u64 {
        req += 1;
        let id = ActorId::random();
        let name = format!("sim-{me}-{req}");
        let spec = ActorSpec {
            id,
            class: "SimActor".into(),
            args: Vec::new(),
            name: Some(name.clone()),
            max_restarts: 0,
            shape: ResourceSet::new(),
            placement: cpu.clone(),
            strategy: crate::resources::SchedulingStrategy::Default,
            // A creator on node 0 (alive throughout).
            owner: WorkerId::new(0, 60_000 + me),
            detached: false,
            namespace: String::new(),
            get_if_exists: false,
            max_task_retries: 0,
            max_concurrency: 1,
        };
        let sent = Instant::now();
        conn.send(&ToGcs::RegisterActor { req, spec })?;
        loop {
            match super::read(&mut reader)?.0 {
                Msg::FromGcs(FromGcs::ActorRegistered { req: r, result }) if r == req => {
                    result?;
                    break;
                }
                _ => continue,
            }
        }
        out.push(sent.elapsed().as_secs_f64() * 1e3);
        req += 1;
        let asked = Instant::now();
        conn.send(&ToGcs::LookupActor {
            req,
            by: ActorLookup::Name(NamedActor {
                namespace: String::new(),
                name: name.clone(),
            }),
            wait: false,
        })?;
        loop {
            match super::read(&mut reader)?.0 {
                Msg::FromGcs(FromGcs::ActorLookedUp { req: r, result }) if r == req => {
                    let found = result?;
                    if found.id != id {
                        return Err(Error::invalid(format!(
                            "node simulation: `{name}` looked up as {:?}, created as {id:?}",
                            found.id
                        )));
                    }
                    break;
                }
                _ => continue,
            }
        }
        lookups.push(asked.elapsed().as_secs_f64() * 1e3);
    }
    Ok((out, lookups))
}
