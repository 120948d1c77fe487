//! Fault injection from inside a driver, for the tests that prove a bad
//! peer harms nobody else (not API: reached through `__private`).
//!
//! A peer of a launched cluster is any process that presents the job's
//! secret: a bug, a mixed build or a corrupted buffer in one of them must
//! cost at most the connection it arrived on. [`send_raw`] plays such a
//! peer: it connects as a real process of the job would, then writes bytes
//! no encoder would produce.

use crate::codec;
use crate::error::{Error, Result};
use crate::ids::{ActorId, LeaseId, ObjectId, TaskId, WorkerId};
use crate::protocol::{ActorLookup, NamedActor, Payload, TaskSpec};
use crate::protocol::{Message, PeerMsg, ToGcs, ToRaylet, Transfer};
use crate::scheduler::ResourceSet;
use crate::transport::Endpoint;
use crate::transport::Msg;
use crate::transport::Stream;
use std::io::{Read, Write};
use std::time::Duration;

/// Which components of this driver's cluster [`send_raw`] writes to.
#[derive(Clone, Copy, Debug)]
pub enum Peer {
    /// The GCS (over TCP, as raylets reach it).
    Gcs,
    /// This node's raylet (its Unix socket).
    Raylet,
    /// Every core worker of this node, drivers included (their sockets).
    Workers,
}

/// Opens a fresh connection to each `to` peer per frame in `frames`,
/// presents the cluster secret, writes the frame's bytes as they are and
/// waits (bounded) for the peer to close the connection or go quiet.
/// Returns the number of connections made.
pub fn send_raw(to: Peer, frames: &[Vec<u8>]) -> Result<usize> {
    let cw = crate::core_worker::current()?;
    let s = &cw.session;
    let endpoints: Vec<Endpoint> = match to {
        Peer::Gcs => vec![Endpoint::Tcp(s.gcs)],
        Peer::Raylet => vec![Endpoint::Unix(s.raylet_socket())],
        Peer::Workers => std::fs::read_dir(&s.dir)
            .map_err(|e| Error::io(&format!("listing {}", s.dir.display()), e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("w-") && n.ends_with(".sock"))
            })
            .map(Endpoint::Unix)
            .collect(),
    };
    let mut made = 0;
    for ep in &endpoints {
        for f in frames {
            // A worker may have exited since the listing: not a finding.
            let Ok(mut conn) = ep.connect(&s.secret) else {
                continue;
            };
            made += 1;
            let _ = conn.write_all(f);
            wait_closed(&mut conn, Duration::from_millis(50));
        }
    }
    Ok(made)
}

/// Well-formed frames of real messages carrying what no honest peer sends,
/// for `to`: ids nobody made, a pid that is no worker's, offsets and
/// lengths past any store, amounts past any node, node indices past the
/// cluster. Each entry (one frame, or a few meant to arrive in order) goes
/// on a connection of its own ([`send_raw`]). `not_a_worker`: a live
/// process that is no worker of the cluster: the raylet is told it is one
/// (its pid in a `Register`), then asked to kill that worker.
pub fn hostile_frames(to: Peer, not_a_worker: u32) -> Result<Vec<Vec<u8>>> {
    let frame = |msgs: &[Msg]| -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for m in msgs {
            let body = codec::encode(m)?;
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&body);
        }
        Ok(out)
    };
    let stranger = WorkerId(crate::ids::random_u64());
    let nobody = ObjectId {
        owner: stranger,
        seq: 7,
    };
    let far = u64::MAX - 7;
    let huge = ResourceSet::new().with("CPU", 1e15)?;
    let sets: Vec<Vec<Msg>> = match to {
        Peer::Raylet => vec![
            // Through the raylet, what only a raylet or the launcher may
            // tell the GCS: stopping the cluster, a process gone, a node
            // joining again.
            vec![
                Msg::ToRaylet(ToRaylet::Gcs(ToGcs::StopCluster)),
                Msg::ToRaylet(ToRaylet::Gcs(ToGcs::OwnerGone { worker: stranger })),
                Msg::ToRaylet(ToRaylet::Gcs(ToGcs::ReportResources {
                    node: 0,
                    report: None,
                    view_version: u64::MAX,
                    spill_demand: u32::MAX,
                })),
            ],
            vec![
                Msg::ToRaylet(ToRaylet::Register {
                    worker: stranger,
                    pid: not_a_worker,
                    is_driver: false,
                    rank: Some(u32::MAX),
                }),
                Msg::ToRaylet(ToRaylet::KillWorker { worker: stranger }),
            ],
            vec![
                Msg::ToRaylet(ToRaylet::Register {
                    worker: stranger,
                    pid: u32::MAX,
                    is_driver: true,
                    rank: Some(u32::MAX),
                }),
                Msg::ToRaylet(ToRaylet::KillWorker { worker: stranger }),
            ],
            vec![Msg::ToRaylet(ToRaylet::RequestLease {
                req: 1,
                shape: huge,
                spill: crate::resources::Spill::Now,
            })],
            vec![Msg::ToRaylet(ToRaylet::ReturnLease {
                lease: LeaseId::new(u16::MAX, far),
                kill: true,
            })],
            vec![
                Msg::ToRaylet(ToRaylet::Blocked),
                Msg::ToRaylet(ToRaylet::Unblocked),
                Msg::ToRaylet(ToRaylet::RetireRefused),
            ],
            vec![Msg::ToRaylet(ToRaylet::CreateObject {
                req: 2,
                size: u64::MAX,
                owner: stranger,
                tag: 1,
            })],
            vec![Msg::ToRaylet(ToRaylet::CreateObject {
                req: 3,
                size: 1 << 50,
                owner: stranger,
                tag: 1,
            })],
            vec![Msg::ToRaylet(ToRaylet::PinObjects {
                req: 4,
                blocks: vec![(far, 1), (0, 0), (4096, u64::MAX)],
            })],
            vec![
                Msg::ToRaylet(ToRaylet::UnpinObjects {
                    offsets: vec![far, 0, 4096],
                }),
                Msg::ToRaylet(ToRaylet::FreeObjects {
                    offsets: vec![far, 1 << 50],
                }),
            ],
            // Every block in the store's first 16 MiB, freed by a process
            // that owns none of them (unregistered, then as a made-up
            // worker).
            vec![Msg::ToRaylet(ToRaylet::FreeObjects {
                offsets: (0..16u64 << 20).step_by(codec::ALIGN).collect(),
            })],
            vec![
                Msg::ToRaylet(ToRaylet::Register {
                    worker: stranger,
                    pid: std::process::id(),
                    is_driver: true,
                    rank: None,
                }),
                Msg::ToRaylet(ToRaylet::FreeObjects {
                    offsets: (0..16u64 << 20).step_by(codec::ALIGN).collect(),
                }),
            ],
            vec![Msg::ToRaylet(ToRaylet::PullObject {
                req: 5,
                node: u16::MAX,
                offset: far,
                len: u64::MAX,
                tag: 1,
                copies: vec![u16::MAX - 1; 64],
            })],
            vec![Msg::ToRaylet(ToRaylet::UnpinObject {
                node: u16::MAX,
                offset: far,
                len: u64::MAX,
                tag: 1,
            })],
            vec![Msg::Transfer(Transfer::ReadObject {
                node: 0,
                offset: far,
                len: u64::MAX,
                tag: 1,
                start: u64::MAX - 1,
                count: u64::MAX,
            })],
        ],
        Peer::Gcs => vec![
            vec![Msg::ToGcs(ToGcs::ReportResources {
                node: u16::MAX,
                report: None,
                view_version: u64::MAX,
                spill_demand: u32::MAX,
            })],
            vec![Msg::ToGcs(ToGcs::LookupActor {
                req: 1,
                by: ActorLookup::Id(ActorId(far)),
                wait: true,
            })],
            vec![Msg::ToGcs(ToGcs::LookupActor {
                req: 2,
                by: ActorLookup::Name(NamedActor {
                    namespace: "\u{0}".repeat(64),
                    name: "x".repeat(4096),
                }),
                wait: false,
            })],
            vec![Msg::ToGcs(ToGcs::KillActor {
                req: 3,
                id: ActorId(far),
                no_restart: true,
            })],
            vec![Msg::ToGcs(ToGcs::ExitActor {
                req: 4,
                id: ActorId(far),
            })],
            vec![
                Msg::ToGcs(ToGcs::ActorOutOfScope { id: ActorId(far) }),
                Msg::ToGcs(ToGcs::OwnerGone { worker: stranger }),
            ],
            vec![Msg::ToGcs(ToGcs::ListNamedActors {
                req: 5,
                namespace: Some(String::new()),
            })],
        ],
        Peer::Workers => vec![
            vec![
                Msg::Peer(PeerMsg::Hello { from: stranger }),
                Msg::Peer(PeerMsg::PushTask(TaskSpec {
                    id: TaskId {
                        owner: stranger,
                        seq: 1,
                    },
                    function: "no::such::function".into(),
                    args: vec![Payload::Store {
                        node: u16::MAX,
                        offset: far,
                        len: u64::MAX,
                        tag: 1,
                    }],
                    returns: vec![nobody],
                    actor: Some(ActorId(far)),
                    alone: true,
                    max_calls: 0,
                    resources: ResourceSet::new(),
                    arg_copies: vec![(9, vec![u16::MAX])],
                    gpus: vec![u32::MAX],
                    attempt: u32::MAX,
                })),
            ],
            vec![
                Msg::Peer(PeerMsg::Hello { from: stranger }),
                Msg::Peer(PeerMsg::CancelTask {
                    task: TaskId {
                        owner: stranger,
                        seq: far,
                    },
                    attempt: u32::MAX,
                }),
                Msg::Peer(PeerMsg::CancelObject { id: nobody }),
                Msg::Peer(PeerMsg::FreeObject { id: nobody }),
                Msg::Peer(PeerMsg::GetObject { id: nobody }),
                Msg::Peer(PeerMsg::AddLocation {
                    id: nobody,
                    node: u16::MAX,
                }),
                Msg::Peer(PeerMsg::RemoveLocation {
                    id: nobody,
                    node: u16::MAX,
                }),
                Msg::Peer(PeerMsg::AddBorrow { req: 1, id: nobody }),
                Msg::Peer(PeerMsg::RemoveBorrow { id: nobody }),
                Msg::Peer(PeerMsg::ObjectLost { id: nobody, tag: 1 }),
            ],
            vec![
                Msg::Peer(PeerMsg::Hello { from: stranger }),
                Msg::Peer(PeerMsg::TaskDone {
                    task: TaskId {
                        owner: stranger,
                        seq: far,
                    },
                    returns: vec![Payload::Store {
                        node: u16::MAX,
                        offset: far,
                        len: u64::MAX,
                        tag: 1,
                    }],
                    app_error: false,
                    exiting: true,
                    lost_args: vec![u32::MAX, 0],
                }),
                Msg::Peer(PeerMsg::TasksReturned {
                    tasks: vec![TaskId {
                        owner: stranger,
                        seq: far,
                    }],
                }),
                Msg::Peer(PeerMsg::ObjectReady {
                    id: nobody,
                    payload: Payload::Inline(vec![0xff; 64]),
                    copies: vec![u16::MAX; 16],
                }),
                Msg::Peer(PeerMsg::WorkerUnblocked),
            ],
        ],
    };
    sets.iter().map(|m| frame(m)).collect()
}

/// Plays a local process that asks this node's raylet to forward to the
/// GCS what only a raylet may say (a node joining, numbered `req`), and
/// returns the answer it gets within `within`, as text (`None`: none came).
pub fn refused_gcs_request(req: u64, within: Duration) -> Result<Option<String>> {
    let cw = crate::core_worker::current()?;
    let s = &cw.session;
    let mut conn = Endpoint::Unix(s.raylet_socket()).connect(&s.secret)?;
    let info = crate::transport::NodeInfo {
        index: u16::MAX,
        name: "chaos".into(),
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        raylet_port: 0,
        total: ResourceSet::new(),
        available: ResourceSet::new(),
        alive: true,
        store_used: 0,
        store_capacity: 0,
        drivers: 0,
        drivers_seen: 0,
        ranks: Vec::new(),
        fabric: None,
    };
    let msg = Msg::ToRaylet(ToRaylet::Gcs(ToGcs::RegisterNode { req, info }));
    let body = codec::encode(&msg)?;
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    conn.write_all(&frame)
        .map_err(|e| Error::io("writing to the raylet", e))?;
    let _ = conn.set_read_timeout(Some(within));
    let mut body = Vec::new();
    while let Ok(Some(m)) = crate::transport::read_frame(&mut conn, &mut body) {
        if m.answers() == Some(req) {
            return Ok(Some(format!("{m:?}")));
        }
    }
    Ok(None)
}

/// Reads (and drops) what the peer sends until it closes the connection
/// or `quiet` passes without a byte.
fn wait_closed(conn: &mut Stream, quiet: Duration) {
    let _ = conn.set_read_timeout(Some(quiet));
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Plays a local process that asks this node's raylet `requests` cheap
/// questions (its store's stats) on one connection and never reads the
/// answers, holding the connection open for `hold` (on a thread of its
/// own; returns at once). The raylet must go on serving everyone else.
pub fn flood_raylet(requests: usize, hold: Duration) -> Result<()> {
    let cw = crate::core_worker::current()?;
    let s = &cw.session;
    let mut conn = Endpoint::Unix(s.raylet_socket()).connect(&s.secret)?;
    let mut frames = Vec::new();
    for i in 0..requests {
        let body = codec::encode(&ToRaylet::GetStoreStats { req: i as u64 }.wire())?;
        frames.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frames.extend_from_slice(&body);
    }
    std::thread::Builder::new()
        .name("chaos-flood".into())
        .spawn(move || {
            let _ = conn.write_all(&frames);
            std::thread::sleep(hold);
        })
        .map_err(|e| Error::io("starting the flooding thread", e))?;
    Ok(())
}
