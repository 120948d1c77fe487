//! What a core worker does with what arrives (the IO shell's dispatch):
//! its raylet's messages (lease grants, spillbacks, retirement, node
//! deaths), other core workers' requests (gets, borrows, results, device
//! object staging), and the end of a connection: a peer or its raylet
//! gone, with what fails or is recovered because of it.

use super::submitter::Done;
#[cfg(feature = "cuda")]
use super::RawRef;
use super::{executor, CoreWorker, Effects, DEVICE_HOOKS};
use crate::codec;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ObjectId, WorkerId};
use crate::protocol::{FromRaylet, PeerMsg, ToRaylet};
use crate::session::log;
use crate::transport::{Conn, Msg, Payload};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl CoreWorker {
    /// What a raylet (this node's, or another node's asked for a lease)
    /// sends: only that service's messages are taken.
    pub(super) fn handle_raylet(self: &Arc<Self>, msg: Msg) {
        let msg = match FromRaylet::try_from(msg) {
            Ok(m) => m,
            Err(other) => return log!("ignored {} on a raylet connection", other.service()),
        };
        match msg {
            FromRaylet::LeaseGranted {
                req,
                lease,
                worker,
                gpus,
            } => self.lease_granted(req, lease, worker, gpus),
            FromRaylet::LeaseFailed { req, error } => self.lease_failed(req, error),
            FromRaylet::LeaseSpillback { req, node } => self.lease_spilled(req, node),
            FromRaylet::Retire => self.retire(),
            FromRaylet::NodeDied { node } => self.node_died(node),
            other => self.handle_reply(other.into()),
        }
    }

    /// As the owner of device object `id`: its host copy (see
    /// `crate::cuda`).
    pub(super) fn stage_device_object(self: &Arc<Self>, id: ObjectId) -> Result<ObjectId> {
        match DEVICE_HOOKS.get() {
            Some(h) => (h.stage)(id),
            None => Err(Error::new(
                ErrorKind::Gpu,
                format!("object {id}'s owner holds no device objects (is it built with rustray's cuda feature?)"),
            )),
        }
    }

    /// The host copy of device object `id`, made by its owner: a ref this
    /// process holds.
    #[cfg(feature = "cuda")]
    pub(crate) fn staged_copy(self: &Arc<Self>, id: ObjectId) -> Result<RawRef> {
        let copy = if id.owner == self.id {
            self.stage_device_object(id)?
        } else {
            let conn = self.peer(id.owner).map_err(|_| {
                Error::new(
                    ErrorKind::OwnerDied,
                    format!(
                        "the owner of device object {id} (worker {}) is gone",
                        id.owner
                    ),
                )
            })?;
            match self.call(
                &conn,
                |req| PeerMsg::StageDeviceObject { req, id },
                "copying a device object to host memory",
            )? {
                PeerMsg::DeviceObjectStaged { result, .. } => result?,
                _ => return Err(Error::unavailable("unexpected reply to a staging request")),
            }
        };
        self.adopt_ref(copy)
    }

    /// Marks owned object `id` as a GPU-resident object's descriptor.
    #[cfg(feature = "cuda")]
    pub(crate) fn mark_device(&self, id: ObjectId) {
        if let Some(e) = self.lock().objects.get_mut(&id) {
            e.device = true;
        }
    }

    /// The GCS declared node `node` dead (heard through this node's
    /// raylet): whatever this process has there is given up, whether or
    /// not its connections closed (a hung node keeps them open). Its
    /// raylet's unanswered lease requests go elsewhere; its core workers
    /// count as gone: objects they own fail with `OwnerDied`, tasks and
    /// calls running there are retried or failed, their borrows end.
    pub(crate) fn node_died(self: &Arc<Self>, node: u16) {
        if node == self.session.node_index || self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        self.mark_node_lost(node);
        let raylet = self
            .remote_raylets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
        if let Some(c) = raylet {
            c.close();
        }
        self.remote_raylet_lost(node);
        let mut workers: std::collections::BTreeSet<WorkerId> = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .filter(|w| w.node() == node)
            .collect();
        {
            let st = self.lock();
            for (id, e) in &st.objects {
                if !e.owned && id.owner.node() == node {
                    workers.insert(id.owner);
                }
                workers.extend(e.borrowers.keys().filter(|w| w.node() == node));
            }
            workers.extend(st.sub.leased_workers().filter(|w| w.node() == node));
        }
        if !workers.is_empty() {
            log!(
                "node {node} died: {} of its processes this one depended on are gone",
                workers.len()
            );
        }
        for w in workers {
            let conn = self
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&w)
                .cloned();
            match conn {
                // Its reader ends, and reports the peer gone.
                Some(c) => c.close(),
                None => self.peer_gone(w, true),
            }
        }
    }

    /// The raylet has more idle workers than it keeps: exit, unless this
    /// process owns objects or actors that are still referenced (their
    /// owner must live, as in Ray), or hosts an actor.
    pub(super) fn retire(self: &Arc<Self>) {
        let owns = self.lock().objects.values().any(|e| e.owned);
        let hosts_actor = self
            .exec
            .actor_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if owns || hosts_actor || self.is_driver {
            let _ = self.raylet.send(&ToRaylet::RetireRefused);
            return;
        }
        log!("idle worker retires (the raylet keeps fewer idle workers)");
        executor::exit_flushing_output(0);
    }

    pub(super) fn raylet_lost(self: &Arc<Self>) {
        if !self.is_driver && !self.shutting_down.load(Ordering::Relaxed) {
            // Our node is gone: nothing this worker does can be delivered.
            // It exits before its pending raylet calls fail, so that a
            // task storing its result reports no error of its own: its
            // owner sees the worker die, and retries it (workers share
            // their raylet's fate, as in Ray).
            log!("raylet connection closed; worker exiting");
            executor::exit_flushing_output(0);
        }
        self.fail_pending(&self.raylet);
        if self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        log!("raylet connection lost");
        eprintln!("rustray: the raylet process died; the cluster is unusable (call shutdown and init again)");
        let err = self.local_raylet_died();
        let fx = {
            let mut st = self.lock();
            self.fail_all(&mut st, &err)
        };
        self.apply(fx);
        self.session.remove_sockets();
        self.arena.unlink();
    }

    pub(super) fn handle_peer(self: &Arc<Self>, from: WorkerId, conn: &Arc<Conn>, msg: PeerMsg) {
        match msg {
            PeerMsg::PushTask(spec) => self.exec_push(from, conn, spec),
            PeerMsg::CreateActor { spec, gpus } => self.exec_create_actor(conn, spec, gpus),
            PeerMsg::CancelTask { task, attempt } => self.exec_cancel(conn, task, attempt),
            PeerMsg::FreeObject { id } => self.free_object(id),
            PeerMsg::CancelObject { id } => {
                if let Err(e) = self.cancel(id) {
                    log!("cancel of {id} forwarded by {from} failed: {e}");
                }
            }
            m @ PeerMsg::TaskDone { .. } => {
                if let Ok(d) = Done::try_from(m) {
                    self.tasks_done(from, vec![d]);
                }
            }
            PeerMsg::ObjectLost { id, tag } => {
                let mut fx = Effects::default();
                {
                    let mut st = self.lock();
                    let lost = st.objects.get(&id).and_then(|e| match &e.value {
                        Some(p @ Payload::Store { tag: t, .. }) if *t == tag && e.owned => {
                            Some(p.clone())
                        }
                        _ => None,
                    });
                    if let Some(lost) = lost {
                        let why = Error::new(
                            ErrorKind::ObjectLost,
                            format!("every copy of object {id} is gone (found by {from})"),
                        );
                        let _ = self.object_lost(&mut st, id, &lost, &why, &mut fx);
                    }
                }
                self.apply(fx);
            }
            PeerMsg::TasksReturned { tasks } => self.tasks_returned(from, tasks),
            PeerMsg::WorkerUnblocked => self.worker_unblocked(from),
            PeerMsg::GetObject { id } => self.remote_get(from, conn, id),
            PeerMsg::ObjectReady {
                id,
                payload,
                copies,
            } => self.object_ready_remote(id, payload, copies),
            PeerMsg::AddLocation { id, node } => {
                if let Some(e) = self.lock().objects.get_mut(&id).filter(|e| e.owned) {
                    if !e.copies.contains(&node) {
                        e.copies.push(node);
                    }
                }
            }
            PeerMsg::RemoveLocation { id, node } => {
                if let Some(e) = self.lock().objects.get_mut(&id) {
                    e.copies.retain(|n| *n != node);
                }
            }
            PeerMsg::AddBorrow { req, id } => {
                let ok = {
                    let mut st = self.lock();
                    match st.objects.get_mut(&id) {
                        // An entry kept for the lineage alone is no object.
                        Some(e) if e.owned && !e.lineage_only => {
                            *e.borrowers.entry(from).or_insert(0) += 1;
                            true
                        }
                        _ => false,
                    }
                };
                let _ = conn.send(&PeerMsg::BorrowAdded { req, ok });
            }
            PeerMsg::RemoveBorrow { id } => {
                let fx = {
                    let mut st = self.lock();
                    let mut fx = Effects::default();
                    if let Some(e) = st.objects.get_mut(&id) {
                        if let Some(n) = e.borrowers.get_mut(&from) {
                            *n -= 1;
                            if *n == 0 {
                                e.borrowers.remove(&from);
                            }
                        }
                    }
                    self.maybe_free(&mut st, id, &mut fx);
                    fx
                };
                self.apply(fx);
            }
            PeerMsg::StageDeviceObject { req, id } => {
                let result = self.stage_device_object(id);
                let _ = conn.send(&PeerMsg::DeviceObjectStaged { req, result });
            }
            other => self.handle_reply(other.into()),
        }
    }

    /// Another core worker's connection closed: it died or shut down.
    pub(super) fn peer_gone(self: &Arc<Self>, worker: WorkerId, outgoing: bool) {
        if outgoing {
            let gone = self
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&worker);
            if let Some(c) = gone {
                self.fail_pending(&c);
            }
        }
        if self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let fx = {
            let mut st = self.lock();
            let mut fx = Effects::default();
            // Its borrows end with it.
            let ids: Vec<ObjectId> = st
                .objects
                .iter()
                .filter(|(_, e)| {
                    e.borrowers.contains_key(&worker) || e.remote_waiters.contains(&worker)
                })
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(e) = st.objects.get_mut(&id) {
                    e.borrowers.remove(&worker);
                    e.remote_waiters.retain(|w| *w != worker);
                }
                self.maybe_free(&mut st, id, &mut fx);
            }
            if outgoing {
                // Objects it owned that we were waiting for are lost.
                let err = Error::new(
                    ErrorKind::OwnerDied,
                    format!(
                        "the owner of this object (worker {worker}) died before it was fetched"
                    ),
                );
                let blob = codec::encode_error(&err);
                let lost: Vec<ObjectId> = st
                    .objects
                    .iter()
                    .filter(|(id, e)| id.owner == worker && !e.owned && e.value.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                for id in lost {
                    self.set_value(&mut st, id, Payload::Inline(blob.clone()), &mut fx);
                }
                // Objects fate-share with their owner (as in Ray): one read
                // before fails from now on too. A copy pulled here is
                // unpinned once no view of it is left.
                let died = Error::new(
                    ErrorKind::OwnerDied,
                    format!("the owner of this object (worker {worker}) died; objects share their owner's fate"),
                );
                let died = codec::encode_error(&died);
                let mut dead = Vec::new();
                for (id, e) in st.objects.iter_mut() {
                    if id.owner == worker && !e.owned && e.replaced.is_none() && e.value.is_some() {
                        e.replaced = e.value.replace(Payload::Inline(died.clone()));
                        fx.notify = true;
                        dead.push(*id);
                    }
                }
                for id in dead {
                    self.release_dead_copy(&mut st, id, &mut fx);
                }
                self.worker_lost(&mut st, worker, &mut fx);
            }
            fx
        };
        self.apply(fx);
    }
}
