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
use crate::protocol::PeerMsg;
use crate::transport::{Conn, Payload};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl CoreWorker {
    /// A new object owned by this process, with one local reference.
    pub(crate) fn new_owned(self: &Arc<Self>, st: &mut State, task: Option<TaskId>) -> RawRef {
        let id = ObjectId {
            owner: self.id,
            seq: self.next_seq(),
        };
        st.objects.insert(
            id,
            Box::new(Entry {
                local: 1,
                owned: true,
                task,
                ..Entry::default()
            }),
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
        self.lock().add_local(id);
    }

    pub(super) fn dec_local(self: &Arc<Self>, id: ObjectId) {
        let fx = {
            let mut st = self.lock();
            let mut fx = Effects::default();
            st.drop_local(self.session.node_index, id, &mut fx);
            fx
        };
        if !fx.is_empty() {
            self.apply(fx);
        }
    }

    /// Frees an object nobody references any more (see
    /// [`State::release_if_unreferenced`]).
    pub(crate) fn maybe_free(&self, st: &mut State, id: ObjectId, fx: &mut Effects) {
        st.release_if_unreferenced(self.session.node_index, id, fx);
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
        e.lineage_only = false;
        for w in std::mem::take(&mut e.remote_waiters) {
            fx.to_owner.push((
                w,
                PeerMsg::ObjectReady {
                    id,
                    payload: payload.clone(),
                    copies: e.copies.clone(),
                },
            ));
        }
        e.value = Some(payload);
        st.arrived(id, fx);
        self.deps_ready(st, id, fx);
        self.maybe_free(st, id, fx);
    }

    pub(super) fn remote_get(self: &Arc<Self>, from: WorkerId, conn: &Arc<Conn>, id: ObjectId) {
        let mut st = self.lock();
        // An entry kept for the lineage alone is no object: answered as
        // one already freed.
        match st.objects.get_mut(&id).filter(|e| !e.lineage_only) {
            Some(e) => match &e.value {
                Some(p) => {
                    let msg = PeerMsg::ObjectReady {
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
                let _ = conn.send(&PeerMsg::ObjectReady {
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
            // An entry kept for the lineage alone is no object (its value
            // was freed): a ref arriving for it is one to a freed object.
            if let Some(e) = st.objects.get_mut(&id).filter(|e| !e.lineage_only) {
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
            |req| PeerMsg::AddBorrow { req, id },
            "registering a borrowed reference",
        )?;
        if !matches!(reply, PeerMsg::BorrowAdded { ok: true, .. }) {
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
                self.send_to(id.owner, PeerMsg::RemoveBorrow { id });
            }
            None => {
                st.objects.insert(
                    id,
                    Box::new(Entry {
                        local: 1,
                        ..Entry::default()
                    }),
                );
            }
        }
        Ok(RawRef {
            id,
            cw: self.clone(),
        })
    }
}

impl State {
    /// One more `ObjectRef` (or internal hold) on `id` in this process.
    pub(crate) fn add_local(&mut self, id: ObjectId) {
        if let Some(e) = self.objects.get_mut(&id) {
            e.local += 1;
        }
    }

    /// One `ObjectRef` on `id` in this process went: freed if it was the
    /// last reference anywhere.
    pub(crate) fn drop_local(&mut self, node: u16, id: ObjectId, fx: &mut Effects) {
        if let Some(e) = self.objects.get_mut(&id) {
            e.local = e.local.saturating_sub(1);
        }
        self.release_if_unreferenced(node, id, fx);
    }

    /// Frees object `id` if nothing references it any more: no local ref,
    /// no borrower, and (owned) its value exists. What that takes outside
    /// the state (the store block freed, the owner told of a borrow's end,
    /// a pulled copy unpinned, nested refs dropped, an actor or device
    /// memory released) goes into `fx`. `node`: this process's node.
    pub(crate) fn release_if_unreferenced(&mut self, node: u16, id: ObjectId, fx: &mut Effects) {
        let Some(e) = self.objects.get(&id) else {
            return;
        };
        if e.freed {
            // A freed object's block may have waited for what just let go
            // of it (a finished task's hold on its argument, say), though
            // refs to the object live on.
            self.release_freed(node, id, fx);
        }
        let Some(e) = self.objects.get(&id) else {
            return;
        };
        if e.local > 0 || !e.borrowers.is_empty() {
            return;
        }
        if e.owned && e.value.is_none() {
            // Still being computed: freed when the result arrives.
            return;
        }
        let Some(e) = self.objects.remove(&id) else {
            return;
        };
        if e.owned && e.lineage > 0 && e.made_by.is_some() && e.actor.is_none() && !e.device {
            // An argument of a task whose results may need remaking: the
            // value goes, the entry and its own lineage stay.
            self.objects.insert(
                id,
                Box::new(Entry {
                    owned: true,
                    made_by: e.made_by,
                    lineage: e.lineage,
                    lineage_only: true,
                    ..Entry::default()
                }),
            );
        } else if let Some(t) = e.made_by {
            CoreWorker::release_lineage(self, t);
        }
        // A pulled copy is pinned under the original block's coordinates.
        if let (Some(_), Some(original)) = (&e.local_copy, e.replaced.as_ref().or(e.value.as_ref()))
        {
            fx.unpins.push(original.clone());
            if !e.owned {
                fx.to_owner
                    .push((id.owner, PeerMsg::RemoveLocation { id, node }));
            }
        }
        if e.held_pin {
            fx.unpin_blocks.extend(held_block(&e, node));
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
            fx.to_owner.push((id.owner, PeerMsg::RemoveBorrow { id }));
        }
        fx.drops.extend(e.contained);
    }

    /// Releases a freed object's store block (and this node's pinned copy
    /// of it) once nothing can be reading it in place.
    pub(crate) fn release_freed(&mut self, node: u16, id: ObjectId, fx: &mut Effects) {
        let in_use = match self.objects.get(&id) {
            Some(e) if e.freed && e.owned => {
                e.views > 0 || !e.borrowers.is_empty() || self.sub.uses_argument(id)
            }
            _ => return,
        };
        if in_use {
            return;
        }
        let Some(e) = self.objects.get_mut(&id) else {
            return;
        };
        let Some(old) = e.replaced.take() else {
            return;
        };
        if e.local_copy.take().is_some() {
            fx.unpins.push(old.clone());
        }
        if std::mem::take(&mut e.held_pin) {
            if let Payload::Store {
                node: at, offset, ..
            } = old
            {
                if at == node {
                    fx.unpin_blocks.push(offset);
                }
            }
        }
        if let Payload::Store { node, offset, .. } = old {
            fx.free_offsets.push((node, offset));
        }
    }

    /// Gives back the write pins of puts that no read holds (`held_pin`):
    /// `older_than` those put that long before `now`, or all. Returns
    /// when the next one is due (the housekeeping thread sleeps until then).
    pub(crate) fn release_held_pins(
        &mut self,
        node: u16,
        now: Instant,
        older_than: Option<Duration>,
        fx: &mut Effects,
    ) -> Option<Instant> {
        let mut held = std::mem::take(&mut self.held);
        let mut next = None::<Instant>;
        held.retain(|(id, at)| match self.objects.get_mut(id) {
            Some(e) if e.held_pin && e.views > 0 => true,
            Some(e) if e.held_pin => {
                if let Some(due) = older_than.map(|d| *at + d).filter(|due| *due > now) {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    return true;
                }
                e.held_pin = false;
                fx.unpin_blocks.extend(held_block(e, node));
                false
            }
            _ => false,
        });
        self.held = held;
        next
    }
}

#[cfg(test)]
mod tests {
    //! The ownership transitions on their own: no socket, no process, a
    //! simulated clock for the held write pins.
    use super::*;
    use crate::core_worker::HELD_PIN_FOR;

    const NODE: u16 = 0;

    // Fixed ids (`WorkerId::new` draws a random part).
    fn me() -> WorkerId {
        WorkerId(0x0000_0fa0_0000_0001)
    }

    fn other() -> WorkerId {
        WorkerId(0x0001_0fa1_0000_0002)
    }

    fn block(node: u16, offset: u64) -> Payload {
        Payload::Store {
            node,
            offset,
            len: 4096,
            tag: 7,
        }
    }

    fn owned(st: &mut State, seq: u64, value: Option<Payload>) -> ObjectId {
        let id = ObjectId { owner: me(), seq };
        st.objects.insert(
            id,
            Box::new(Entry {
                local: 1,
                owned: true,
                value,
                ..Entry::default()
            }),
        );
        id
    }

    fn borrowed(st: &mut State, seq: u64, value: Option<Payload>) -> ObjectId {
        let id = ObjectId {
            owner: other(),
            seq,
        };
        st.objects.insert(
            id,
            Box::new(Entry {
                local: 1,
                value,
                ..Entry::default()
            }),
        );
        id
    }

    /// Ray's reference_counter_test "TestBasicBorrowing" at the owner: an
    /// object a borrower holds outlives the owner's last local ref, and its
    /// block is freed once the borrower lets go.
    #[test]
    fn an_owned_object_waits_for_its_borrowers_then_frees_its_block() {
        let mut st = State::default();
        let id = owned(&mut st, 1, Some(block(NODE, 64)));
        st.objects
            .get_mut(&id)
            .unwrap()
            .borrowers
            .insert(other(), 1);
        st.add_local(id);
        let mut fx = Effects::default();
        st.drop_local(NODE, id, &mut fx);
        st.drop_local(NODE, id, &mut fx);
        assert!(st.objects.contains_key(&id), "a borrower still holds it");
        assert!(fx.is_empty());
        st.objects.get_mut(&id).unwrap().borrowers.clear();
        st.release_if_unreferenced(NODE, id, &mut fx);
        assert!(!st.objects.contains_key(&id));
        assert_eq!(fx.free_offsets, vec![(NODE, 64)]);
        assert!(fx.to_owner.is_empty(), "an owner tells nobody");
    }

    /// A task's pending result is not freed for lack of refs: its value
    /// would arrive to nobody and its block leak. It goes once the value
    /// is there.
    #[test]
    fn a_pending_result_is_kept_until_its_value_arrives() {
        let mut st = State::default();
        let id = owned(&mut st, 2, None);
        let mut fx = Effects::default();
        st.drop_local(NODE, id, &mut fx);
        assert!(st.objects.contains_key(&id));
        st.objects.get_mut(&id).unwrap().value = Some(block(NODE, 128));
        st.release_if_unreferenced(NODE, id, &mut fx);
        assert!(!st.objects.contains_key(&id));
        assert_eq!(fx.free_offsets, vec![(NODE, 128)]);
    }

    /// A borrower's last ref going tells the owner (once), and a copy it
    /// pulled into this node's store is unpinned and withdrawn from the
    /// owner's directory; a borrower never frees the owner's block.
    #[test]
    fn a_borrower_lets_go_of_the_owner_and_of_its_pulled_copy() {
        let mut st = State::default();
        let id = borrowed(&mut st, 3, Some(block(1, 256)));
        st.objects.get_mut(&id).unwrap().local_copy = Some(block(NODE, 512));
        st.add_local(id);
        let mut fx = Effects::default();
        st.drop_local(NODE, id, &mut fx);
        assert!(fx.to_owner.is_empty(), "one ref left");
        st.drop_local(NODE, id, &mut fx);
        assert!(fx.free_offsets.is_empty());
        assert!(matches!(
            fx.unpins.as_slice(),
            [Payload::Store {
                node: 1,
                offset: 256,
                ..
            }]
        ));
        let told: Vec<_> = fx
            .to_owner
            .iter()
            .map(|(w, m)| (*w, format!("{m:?}")))
            .collect();
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told.iter().all(|(w, _)| *w == other()), "{told:?}");
        assert!(told[0].1.starts_with("RemoveLocation"), "{told:?}");
        assert!(told[1].1.starts_with("RemoveBorrow"), "{told:?}");
        // A second drop of a gone object changes nothing.
        let mut again = Effects::default();
        st.drop_local(NODE, id, &mut again);
        assert!(again.is_empty());
    }

    /// An actor's handle token ends the actor when it goes; a device
    /// object's descriptor frees its device memory.
    #[test]
    fn actor_tokens_and_device_objects_release_what_they_stand_for() {
        let mut st = State::default();
        let token = owned(&mut st, 4, Some(Payload::Inline(Vec::new())));
        let actor = ActorId(9);
        st.objects.get_mut(&token).unwrap().actor = Some(actor);
        let dev = owned(&mut st, 5, Some(Payload::Inline(vec![1])));
        st.objects.get_mut(&dev).unwrap().device = true;
        let mut fx = Effects::default();
        st.drop_local(NODE, token, &mut fx);
        st.drop_local(NODE, dev, &mut fx);
        assert_eq!(fx.actors_out_of_scope, vec![actor]);
        assert_eq!(fx.device_frees, vec![dev]);
        assert!(st.objects.is_empty());
    }

    /// A put keeps its block's write pin for a read right after it, for
    /// `HELD_PIN_FOR` on the clock, longer while a read holds the block,
    /// and gives it back at once when room is needed.
    #[test]
    fn a_puts_write_pin_is_given_back_on_a_simulated_clock() {
        let mut st = State::default();
        let t0 = Instant::now();
        let id = owned(&mut st, 6, Some(block(NODE, 1024)));
        st.objects.get_mut(&id).unwrap().held_pin = true;
        st.held.push((id, t0));
        let mut fx = Effects::default();
        let due = st.release_held_pins(NODE, t0 + HELD_PIN_FOR / 2, Some(HELD_PIN_FOR), &mut fx);
        assert_eq!(due, Some(t0 + HELD_PIN_FOR), "asks to be woken then");
        assert!(fx.unpin_blocks.is_empty());
        st.objects.get_mut(&id).unwrap().views = 1;
        let later = t0 + 3 * HELD_PIN_FOR;
        assert_eq!(
            st.release_held_pins(NODE, later, Some(HELD_PIN_FOR), &mut fx),
            None
        );
        assert!(fx.unpin_blocks.is_empty(), "a read holds the block");
        st.objects.get_mut(&id).unwrap().views = 0;
        st.release_held_pins(NODE, later, Some(HELD_PIN_FOR), &mut fx);
        assert_eq!(fx.unpin_blocks, vec![1024]);
        assert!(st.held.is_empty());
        assert!(!st.objects[&id].held_pin);

        // Room needed: every idle pin at once, whatever the clock says.
        let id2 = owned(&mut st, 7, Some(block(NODE, 2048)));
        st.objects.get_mut(&id2).unwrap().held_pin = true;
        st.held.push((id2, later));
        let mut fx = Effects::default();
        st.release_held_pins(NODE, later, None, &mut fx);
        assert_eq!(fx.unpin_blocks, vec![2048]);
    }

    /// `rustray::free`: a freed object's block waits for what reads it in
    /// place (a view), then goes, though refs to the object live on.
    #[test]
    fn a_freed_block_waits_for_its_readers() {
        let mut st = State::default();
        let id = owned(&mut st, 8, Some(Payload::Inline(vec![0])));
        {
            let e = st.objects.get_mut(&id).unwrap();
            e.freed = true;
            e.replaced = Some(block(NODE, 4096));
            e.views = 1;
        }
        let mut fx = Effects::default();
        st.release_freed(NODE, id, &mut fx);
        assert!(fx.free_offsets.is_empty(), "still read");
        st.objects.get_mut(&id).unwrap().views = 0;
        st.release_if_unreferenced(NODE, id, &mut fx);
        assert_eq!(fx.free_offsets, vec![(NODE, 4096)]);
        assert!(st.objects.contains_key(&id), "its refs live on");
    }

    /// A value wakes sleepers only when someone sleeps on it; the arrival
    /// log takes only what a following `wait` watches, each `wait` reads
    /// from where it stands, and the log empties when the last one stops.
    #[test]
    fn arrivals_wake_and_log_only_what_is_waited_for() {
        let mut st = State::default();
        let (a, b, c) = (
            owned(&mut st, 1, None),
            owned(&mut st, 2, None),
            owned(&mut st, 3, None),
        );
        let mut fx = Effects::default();
        st.arrived(a, &mut fx);
        assert!(fx.arrived && !fx.notify, "nobody sleeps on it");
        CoreWorker::watch(&mut st, b, true, false); // a get
        CoreWorker::watch(&mut st, c, true, true); // a wait
        let mut cursor = st.follow_arrivals();
        let mut fx = Effects::default();
        st.arrived(b, &mut fx);
        assert!(fx.notify, "the get's value wakes it");
        assert!(st.arrivals.is_empty(), "no wait follows b");
        st.arrived(c, &mut fx);
        assert_eq!(st.arrivals_since(&mut cursor), vec![c]);
        assert!(st.arrivals_since(&mut cursor).is_empty(), "read once");
        let mut late = st.follow_arrivals();
        CoreWorker::watch(&mut st, c, true, true);
        st.arrived(c, &mut fx);
        assert_eq!(
            st.arrivals_since(&mut late),
            vec![c],
            "from where it stands"
        );
        st.unfollow_arrivals();
        assert_eq!(st.arrivals.len(), 2, "one wait still reads it");
        st.unfollow_arrivals();
        assert!(st.arrivals.is_empty(), "the last one gone: emptied");
        assert_eq!(st.arrivals_since(&mut cursor), Vec::<ObjectId>::new());
    }
}
