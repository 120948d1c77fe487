//! The IO half of the core worker's state machine: what a transition
//! decided under the state lock ([`Effects`]: messages to peers, task
//! pushes, store frees and unpins, lease requests and returns, wake-ups),
//! and [`CoreWorker::apply`], which carries it out once the lock is let go
//! (so no thread ever writes to a socket, or drops a ref that locks again,
//! while holding it).

use super::{submitter, CoreWorker, RawRef, DEVICE_HOOKS};
use crate::error::Error;
use crate::ids::{ActorId, LeaseId, ObjectId, TaskId, WorkerId};
use crate::protocol::{PeerMsg, ToGcs, ToRaylet};
use crate::session::log;
use crate::transport::{self, ConnId, Payload};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Side effects computed under the state lock, performed after it.
#[derive(Default)]
pub(crate) struct Effects {
    /// Messages to other core workers, each on the connection named (and
    /// dropped if that connection is gone).
    pub(crate) sends: Vec<(WorkerId, ConnId, PeerMsg)>,
    /// Task pushes, likewise (see [`Push`]).
    pub(crate) pushes: Vec<Push>,
    /// Connections with frames queued on them under the lock
    /// ([`crate::transport::Conn::hold_frames`]), to write once it is let go.
    pub(crate) flushes: Vec<(WorkerId, ConnId)>,
    pub(crate) to_owner: Vec<(WorkerId, PeerMsg)>,
    pub(crate) drops: Vec<RawRef>,
    /// Store blocks to free, by node.
    pub(crate) free_offsets: Vec<(u16, u64)>,
    /// Pulled copies to unpin locally, by their original block.
    pub(crate) unpins: Vec<Payload>,
    /// Blocks of this node's store whose pin this process gives back (see
    /// `Entry::held_pin`).
    pub(crate) unpin_blocks: Vec<u64>,
    /// Wake the threads asleep on `cond` (a value one of them waits for
    /// arrived, or values changed for all of them).
    pub(crate) notify: bool,
    /// A value arrived: ends the spins of waiters not asleep yet.
    pub(crate) arrived: bool,
    pub(crate) lease_requests: Vec<submitter::LeaseRequest>,
    pub(crate) return_leases: Vec<(LeaseId, bool)>,
    pub(crate) kill_workers: Vec<WorkerId>,
    pub(crate) resolve_actors: Vec<ActorId>,
    /// Actors none of whose handles remain, for the GCS to end.
    pub(crate) actors_out_of_scope: Vec<ActorId>,
    /// GPU-resident objects that went: their device memory is freed.
    pub(crate) device_frees: Vec<ObjectId>,
    /// Tasks whose worker on another node died, to fail once it is known
    /// whether the node went with it.
    pub(crate) worker_deaths: Vec<(TaskId, WorkerId, Error)>,
    /// Tasks taken out of the submitter's queues to fail with the error:
    /// they can never be sent (their push does not fit one message), or
    /// were cancelled while their worker handed them back unstarted.
    pub(crate) taken_out: Vec<(TaskId, Error)>,
}

/// A task pushed to a worker: its frame, encoded from the spec the owner
/// keeps (no copy of the spec is made to send it).
pub(crate) struct Push {
    pub(crate) worker: WorkerId,
    pub(crate) conn: ConnId,
    /// As the spec's `alone`: the caller waits awake for the answer.
    pub(crate) alone: bool,
    pub(crate) frame: Vec<u8>,
}

impl Push {
    /// `spec` pushed to `worker` on `conn`; the task's error if it cannot
    /// be encoded: larger than one message. Its arguments by value are
    /// bounded together at submission (`TASK_INLINE_MAX`), but the values
    /// of small objects passed by ref are copied in as they resolve, and
    /// how many there are is not bounded.
    pub(crate) fn new(
        worker: WorkerId,
        conn: ConnId,
        spec: &transport::TaskSpec,
    ) -> std::result::Result<Push, Error> {
        // The arguments by value alone past the bound: no need to encode
        // (and copy) a gigabyte to find out.
        let inline = inline_arg_bytes(spec);
        let encoded = if inline > transport::MAX_FRAME {
            Err(Error::invalid(format!(
                "its arguments by value, with the small objects passed by ref copied in, come \
                 to {inline} bytes, more than the {} one message carries; pass fewer, larger \
                 objects (one over {} bytes is read from the object store)",
                transport::MAX_FRAME,
                super::INLINE_MAX
            )))
        } else {
            transport::push_frame(spec)
        };
        match encoded {
            Ok(frame) => Ok(Push {
                worker,
                conn,
                alone: spec.alone,
                frame,
            }),
            Err(e) => Err(Error::invalid(format!(
                "task `{}` cannot be sent to a worker: {}",
                spec.function,
                e.message()
            ))),
        }
    }
}

/// The bytes of a task's arguments carried by value in its spec.
pub(crate) fn inline_arg_bytes(spec: &transport::TaskSpec) -> usize {
    spec.args
        .iter()
        .map(|p| match p {
            Payload::Inline(b) => b.len(),
            Payload::Store { .. } => 0,
        })
        .sum()
}

impl CoreWorker {
    /// Performs the effects collected under the lock.
    pub(crate) fn apply(self: &Arc<Self>, fx: Effects) {
        if fx.notify || fx.arrived {
            self.value_epoch.fetch_add(1, Ordering::Release);
        }
        if fx.notify {
            self.cond.notify_all();
        }
        // The pushes to one worker go out in one write (in their order),
        // or are held with what a batch of results being handled frees.
        let mut by_conn: Vec<(WorkerId, ConnId, bool, Vec<u8>)> = Vec::new();
        for p in fx.pushes {
            match by_conn
                .iter_mut()
                .find(|(w, c, ..)| *w == p.worker && *c == p.conn)
            {
                Some((_, _, alone, frames)) => {
                    *alone |= p.alone;
                    frames.extend_from_slice(&p.frame);
                }
                None => by_conn.push((p.worker, p.conn, p.alone, p.frame)),
            }
        }
        for (worker, conn, alone, frames) in by_conn {
            if let Some(c) = self.peer_conn(worker, conn) {
                if alone {
                    c.expect_reply();
                }
                let _ = transport::send_frame_batched(&c, &frames);
            }
        }
        // After the pushes: a cancel (the only message here) never reaches
        // a worker before a push of the task it stops made in the same
        // effects. (One applied by another thread may still overtake a
        // push: the worker then knows no such task, and it runs.)
        for (worker, conn, msg) in fx.sends {
            if let Some(c) = self.peer_conn(worker, conn) {
                let _ = transport::send_batched(&c, &msg);
            }
        }
        for (worker, conn) in fx.flushes {
            if let Some(c) = self.peer_conn(worker, conn) {
                transport::flush_batched_later(&c);
            }
        }
        for (owner, msg) in fx.to_owner {
            self.send_to(owner, msg);
        }
        if !fx.unpin_blocks.is_empty() {
            let _ = self.raylet.post(&ToRaylet::UnpinObjects {
                offsets: fx.unpin_blocks,
            });
        }
        if !fx.free_offsets.is_empty() {
            let mut by_node: HashMap<u16, Vec<u64>> = HashMap::new();
            for (node, offset) in fx.free_offsets {
                by_node.entry(node).or_default().push(offset);
            }
            for (node, offsets) in by_node {
                if let Ok(c) = self.raylet_of(node) {
                    let _ = c.send(&ToRaylet::FreeObjects { offsets });
                }
            }
        }
        for original in fx.unpins {
            self.unpin(&original);
        }
        if !fx.taken_out.is_empty() {
            self.fail_taken_out(fx.taken_out);
        }
        if !fx.worker_deaths.is_empty() {
            // Probing a node may take up to a connect timeout: not on the
            // thread that reads the connections.
            let me = self.clone();
            let deaths = fx.worker_deaths;
            let spawned = transport::spawn_or_return(
                std::thread::Builder::new().name("rustray-node-check".into()),
                move || me.fail_worker_deaths(deaths),
            );
            if let Err(check) = spawned {
                // Without it the tasks would wait forever: better a probe
                // on this thread (bounded: a connect, a GCS call's timeout;
                // the GCS's answers come on a connection of their own).
                log!("no thread to check whether a node was lost; checking here");
                check();
            }
        }
        for r in fx.lease_requests {
            let submitter::LeaseRequest {
                req,
                shape,
                node,
                spill,
                fallback,
            } = r;
            let local = node == self.session.node_index;
            let sent = self.raylet_of(node).and_then(|c| {
                c.send(&ToRaylet::RequestLease {
                    req,
                    shape: shape.clone(),
                    spill,
                })
            });
            match sent {
                Ok(()) => {}
                // The local raylet cannot be reached: it died.
                Err(_) if local => self.lease_failed(req, self.local_raylet_died()),
                Err(e) if !fallback => self.lease_failed(req, e),
                Err(e) => {
                    // The node the request was spilled to is unreachable
                    // (lost since the view was taken): queue it here.
                    log!("lease request spilled to node {node} failed ({e}); asking the local raylet");
                    self.mark_node_lost(node);
                    let _ = self.raylet.send(&ToRaylet::RequestLease {
                        req,
                        shape,
                        spill: crate::scheduler::Spill::Never,
                    });
                }
            }
        }
        for (lease, kill) in fx.return_leases {
            if let Ok(c) = self.raylet_of(lease.node()) {
                let _ = c.send(&ToRaylet::ReturnLease { lease, kill });
            }
        }
        for worker in fx.kill_workers {
            let _ = self.raylet.send(&ToRaylet::KillWorker { worker });
        }
        if let (false, Some(h)) = (fx.device_frees.is_empty(), DEVICE_HOOKS.get()) {
            for id in fx.device_frees {
                (h.release)(id);
            }
        }
        for id in fx.actors_out_of_scope {
            let sent = self
                .gcs_conn()
                .and_then(|c| c.send(&ToRaylet::Gcs(ToGcs::ActorOutOfScope { id })));
            if let Err(e) = sent {
                log!("cannot end actor {id:?}, out of scope: {e}");
            }
        }
        for actor in fx.resolve_actors {
            let me = self.clone();
            let spawned = transport::spawn_or_return(
                std::thread::Builder::new().name("rustray-actor-resolve".into()),
                move || me.reconnect_actor(actor),
            );
            if spawned.is_err() {
                // Looking the actor up waits on the GCS, maybe on the very
                // thread that reads its answers: not here. Its calls fail
                // instead of waiting forever.
                self.reconnected(
                    actor,
                    Err(Error::unavailable(format!(
                        "no thread could be started to find actor {actor:?} again (a thread limit?)"
                    ))),
                );
            }
        }
        drop(fx.drops);
    }
}

impl Effects {
    pub(crate) fn is_empty(&self) -> bool {
        self.sends.is_empty()
            && self.pushes.is_empty()
            && self.flushes.is_empty()
            && self.to_owner.is_empty()
            && self.drops.is_empty()
            && self.free_offsets.is_empty()
            && self.unpins.is_empty()
            && self.unpin_blocks.is_empty()
            && !self.notify
            && !self.arrived
            && self.lease_requests.is_empty()
            && self.return_leases.is_empty()
            && self.kill_workers.is_empty()
            && self.resolve_actors.is_empty()
            && self.actors_out_of_scope.is_empty()
            && self.device_frees.is_empty()
            && self.worker_deaths.is_empty()
            && self.taken_out.is_empty()
    }
}
