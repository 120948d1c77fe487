//! The object table and reference counting (Ray's `reference_counter`):
//! objects this process owns or borrows, their local refs and borrowers,
//! values arriving and waking whoever waits, adopting a ref that came from
//! elsewhere, and freeing what nobody references any more. Transitions run
//! under the state lock and collect what they need done outside it (frees,
//! messages to owners, refs to drop) in an [`Effects`].

use super::{held_block, CoreWorker, Effects, Entry, RawRef, State};
use crate::codec;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ActorId, ObjectId, TaskId, WorkerId};
use crate::transport::{Conn, Msg, Payload};
use std::sync::Arc;

impl CoreWorker {
    /// A new object owned by this process, with one local reference.
    pub(crate) fn new_owned(self: &Arc<Self>, st: &mut State, task: Option<TaskId>) -> RawRef {
        let id = ObjectId {
            owner: self.id,
            seq: self.next_seq(),
        };
        st.objects.insert(
            id,
            Entry {
                local: 1,
                owned: true,
                task,
                ..Entry::default()
            },
        );
        RawRef {
            id,
            cw: self.clone(),
        }
    }

    /// The reference-counted stand-in for the handles of `actor`, which
    /// this process just created: handles carry it, tasks and calls keep it
    /// alive while pending, and borrowers register for it as for any
    /// object, so the actor ends once no handle to it remains anywhere.
    pub(crate) fn new_actor_token(self: &Arc<Self>, actor: ActorId) -> RawRef {
        let mut st = self.lock();
        let r = self.new_owned(&mut st, None);
        if let Some(e) = st.objects.get_mut(&r.id) {
            e.value = Some(Payload::Inline(Vec::new()));
            e.actor = Some(actor);
        }
        r
    }

    pub(super) fn inc_local(&self, id: ObjectId) {
        if let Some(e) = self.lock().objects.get_mut(&id) {
            e.local += 1;
        }
    }

    pub(super) fn dec_local(self: &Arc<Self>, id: ObjectId) {
        let fx = {
            let mut st = self.lock();
            let mut fx = Effects::default();
            if let Some(e) = st.objects.get_mut(&id) {
                e.local = e.local.saturating_sub(1);
            }
            self.maybe_free(&mut st, id, &mut fx);
            fx
        };
        if !fx.is_empty() {
            self.apply(fx);
        }
    }

    /// Frees an object nobody references any more.
    pub(crate) fn maybe_free(&self, st: &mut State, id: ObjectId, fx: &mut Effects) {
        let Some(e) = st.objects.get(&id) else { return };
        if e.freed {
            // A freed object's block may have waited for what just let go
            // of it (a finished task's hold on its argument, say), though
            // refs to the object live on.
            self.release_freed(st, id, fx);
        }
        let Some(e) = st.objects.get(&id) else { return };
        if e.local > 0 || !e.borrowers.is_empty() {
            return;
        }
        if e.owned && e.value.is_none() {
            // Still being computed: freed when the result arrives.
            return;
        }
        let Some(e) = st.objects.remove(&id) else {
            return;
        };
        if let Some(t) = e.made_by {
            Self::release_lineage(st, t);
        }
        // A pulled copy is pinned under the original block's coordinates.
        if let (Some(_), Some(original)) = (&e.local_copy, e.replaced.as_ref().or(e.value.as_ref()))
        {
            fx.unpins.push(original.clone());
            if !e.owned {
                let node = self.session.node_index;
                fx.to_owner
                    .push((id.owner, Msg::RemoveLocation { id, node }));
            }
        }
        if e.held_pin {
            fx.unpin_blocks
                .extend(held_block(&e, self.session.node_index));
        }
        if e.owned {
            if let Some(Payload::Store { node, offset, .. }) = e.value {
                fx.free_offsets.push((node, offset));
            }
            if let Some(Payload::Store { node, offset, .. }) = e.replaced {
                fx.free_offsets.push((node, offset));
            }
            fx.actors_out_of_scope.extend(e.actor);
            if e.device {
                fx.device_frees.push(id);
            }
        } else {
            fx.to_owner.push((id.owner, Msg::RemoveBorrow { id }));
        }
        fx.drops.extend(e.contained);
    }

    /// Records an object's value and wakes whoever waits for it.
    pub(crate) fn set_value(
        self: &Arc<Self>,
        st: &mut State,
        id: ObjectId,
        payload: Payload,
        fx: &mut Effects,
    ) {
        let Some(e) = st.objects.get_mut(&id) else {
            // Nobody holds a ref any more: free it straight away.
            if let Payload::Store { node, offset, .. } = payload {
                if id.owner == self.id {
                    fx.free_offsets.push((node, offset));
                }
            }
            return;
        };
        if e.value.is_some() {
            // A second result for a value already set (a freed object whose
            // task finished after, a retry racing): its block is nobody's.
            if let (true, Payload::Store { node, offset, .. }) = (e.owned, payload) {
                fx.free_offsets.push((node, offset));
            }
            return;
        }
        e.task = None;
        for w in std::mem::take(&mut e.remote_waiters) {
            fx.to_owner.push((
                w,
                Msg::ObjectReady {
                    id,
                    payload: payload.clone(),
                    copies: e.copies.clone(),
                },
            ));
        }
        e.value = Some(payload);
        fx.notify = true;
        self.deps_ready(st, id, fx);
        self.maybe_free(st, id, fx);
    }

    pub(super) fn remote_get(self: &Arc<Self>, from: WorkerId, conn: &Arc<Conn>, id: ObjectId) {
        let mut st = self.lock();
        match st.objects.get_mut(&id) {
            Some(e) => match &e.value {
                Some(p) => {
                    let msg = Msg::ObjectReady {
                        id,
                        payload: p.clone(),
                        copies: e.copies.clone(),
                    };
                    drop(st);
                    let _ = conn.send(&msg);
                }
                None => e.remote_waiters.push(from),
            },
            None => {
                drop(st);
                let err = Error::new(
                    ErrorKind::OwnerDied,
                    format!(
                        "object {id} was already freed by its owner (no reference was registered)"
                    ),
                );
                let _ = conn.send(&Msg::ObjectReady {
                    id,
                    payload: Payload::Inline(codec::encode_error(&err)),
                    copies: Vec::new(),
                });
            }
        }
    }

    pub(super) fn object_ready_remote(
        self: &Arc<Self>,
        id: ObjectId,
        payload: Payload,
        copies: Vec<u16>,
    ) {
        let fx = {
            let mut st = self.lock();
            let mut fx = Effects::default();
            if let Some(e) = st.objects.get_mut(&id) {
                e.copies = copies;
            }
            self.set_value(&mut st, id, payload, &mut fx);
            fx
        };
        self.apply(fx);
    }

    /// A ref to `id` arrived in this process by deserialization.
    pub(crate) fn adopt_ref(self: &Arc<Self>, id: ObjectId) -> Result<RawRef> {
        {
            let mut st = self.lock();
            if let Some(e) = st.objects.get_mut(&id) {
                e.local += 1;
                return Ok(RawRef {
                    id,
                    cw: self.clone(),
                });
            }
            if id.owner == self.id {
                return Err(Error::new(
                    ErrorKind::OwnerDied,
                    format!("object {id} was freed before this reference to it arrived"),
                ));
            }
        }
        let conn = self.peer(id.owner).map_err(|_| {
            Error::new(
                ErrorKind::OwnerDied,
                format!("the owner of object {id} (worker {}) is gone", id.owner),
            )
        })?;
        let reply = self.call(
            &conn,
            |req| Msg::AddBorrow { req, id },
            "registering a borrowed reference",
        )?;
        if !matches!(reply, Msg::BorrowAdded { ok: true, .. }) {
            return Err(Error::new(
                ErrorKind::OwnerDied,
                format!("object {id} no longer exists at its owner"),
            ));
        }
        let mut st = self.lock();
        match st.objects.get_mut(&id) {
            Some(e) => {
                // Raced with another adoption: keep one borrow registered.
                e.local += 1;
                drop(st);
                self.send_to(id.owner, Msg::RemoveBorrow { id });
            }
            None => {
                st.objects.insert(
                    id,
                    Entry {
                        local: 1,
                        ..Entry::default()
                    },
                );
            }
        }
        Ok(RawRef {
            id,
            cw: self.clone(),
        })
    }
}
