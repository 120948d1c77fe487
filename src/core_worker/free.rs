//! Explicit frees (Ray's internal `free`) and the read guards that keep
//! them safe.
//!
//! `free` makes an object unavailable at once: its value becomes an
//! `ObjectFreed` error for every later `get`, here and, through the owner,
//! in every process that asks for it. Its store block, though, is released
//! only when nothing can still be reading it in place: no read guard in the
//! owner's process (a `get` decoding from the block, a live `ObjectView`),
//! no borrower (which may be reading it on the same node), and no pending
//! task whose argument it is. Until then the block is kept under
//! `Entry::replaced` and released by the first of [`CoreWorker::end_read`]
//! or `maybe_free`, which runs whenever a ref, a borrower or a finished
//! task's hold on its argument lets go.
//!
//! That covers frees by the owner. A reader that is not the owner cannot
//! stop the owner's death from freeing the block (the raylet frees a dead
//! process's blocks), and nobody else could stop the raylet spilling an
//! unpinned block to disk, so every in-place read, the owner's included,
//! pins the block at the raylet first ([`BlockPins`]): the raylet then
//! keeps the bytes in memory until the pin goes (reading a spilled object
//! back first).

use super::{CoreWorker, Effects, State};
use crate::codec;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::ObjectId;
use crate::protocol::{FromRaylet, PeerMsg, ToRaylet};
use crate::transport::Payload;
use std::sync::Arc;

/// Counts a read of an object's store block in place, for as long as it
/// lives (see the module notes).
pub(crate) struct ReadGuard {
    cw: Arc<CoreWorker>,
    id: ObjectId,
    _pins: Option<BlockPins>,
}

/// Pins at this node's raylet on blocks this process reads in place,
/// released when dropped (or when the process ends).
pub(crate) struct BlockPins {
    raylet: Arc<crate::transport::Conn>,
    offsets: Vec<u64>,
}

impl Drop for BlockPins {
    fn drop(&mut self) {
        let offsets = std::mem::take(&mut self.offsets);
        let _ = self.raylet.send(&ToRaylet::UnpinObjects { offsets });
    }
}

impl CoreWorker {
    /// Gives back the write pins of puts that no read holds (`held_pin`):
    /// `older_than` those put that long ago, or all. Returns when the next
    /// one is due, for the housekeeping thread.
    pub(crate) fn release_held_pins(
        &self,
        st: &mut State,
        older_than: Option<std::time::Duration>,
        fx: &mut Effects,
    ) -> Option<std::time::Instant> {
        let now = std::time::Instant::now();
        st.release_held_pins(self.session.node_index, now, older_than, fx)
    }

    /// Gives back every idle held write pin now (before asking the raylet
    /// for room: a put, or a read that may restore a spilled object).
    pub(crate) fn give_back_held_pins(&self) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            if st.held.is_empty() {
                return;
            }
            self.release_held_pins(&mut st, None, &mut fx);
        }
        if !fx.unpin_blocks.is_empty() {
            let _ = self.raylet.post(&ToRaylet::UnpinObjects {
                offsets: fx.unpin_blocks,
            });
        }
    }

    /// Pins the blocks of this node's store among `payloads` (all or
    /// none); `None` when there are none. Fails when one was released
    /// meanwhile (its owner freed it or died).
    pub(crate) fn pin_local(&self, payloads: &[&Payload]) -> Result<Option<BlockPins>> {
        let blocks: Vec<(u64, u64)> = payloads
            .iter()
            .filter_map(|p| match **p {
                Payload::Store {
                    node, offset, tag, ..
                } if node == self.session.node_index => Some((offset, tag)),
                _ => None,
            })
            .collect();
        if blocks.is_empty() {
            return Ok(None);
        }
        // A pinned block may have to be read back from disk: this
        // process's idle write pins must not stand in the way.
        self.give_back_held_pins();
        let offsets = blocks.iter().map(|(o, _)| *o).collect();
        match self.raylet_call(
            |req| ToRaylet::PinObjects { req, blocks },
            "pinning objects to read",
        )? {
            FromRaylet::ObjectsPinned { result, .. } => result.map_err(|e| {
                Error::new(
                    ErrorKind::OwnerDied,
                    format!("{} (it cannot be read)", e.message()),
                )
            })?,
            _ => return Err(Error::unavailable("unexpected reply from the raylet")),
        }
        Ok(Some(BlockPins {
            raylet: self.raylet.clone(),
            offsets,
        }))
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        self.cw.end_read(self.id);
    }
}

impl CoreWorker {
    /// Starts reading `payload` (what `wait_local` answered for `id`) in
    /// place. Fails if the object was freed in between; `None` for inline
    /// values, which no free can pull away.
    pub(crate) fn begin_read(
        self: &Arc<Self>,
        id: ObjectId,
        payload: &Payload,
    ) -> Result<Option<ReadGuard>> {
        if matches!(payload, Payload::Inline(_)) {
            return Ok(None);
        }
        let pin = {
            let mut st = self.lock();
            match st.objects.get_mut(&id) {
                Some(e) if !e.freed => {
                    e.views += 1;
                    // A block on this node, the owner's own included: the
                    // raylet may spill what nobody pins. A pulled copy, or
                    // a put's block whose write pin is still held, is
                    // pinned already.
                    e.local_copy.is_none() && !e.held_pin
                }
                _ => return Err(freed_error(id)),
            }
        };
        let mut guard = ReadGuard {
            cw: self.clone(),
            id,
            _pins: None,
        };
        if pin {
            // On failure the guard's drop ends the read.
            guard._pins = self.pin_local(&[payload])?;
        }
        Ok(Some(guard))
    }

    fn end_read(self: &Arc<Self>, id: ObjectId) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            if let Some(e) = st.objects.get_mut(&id) {
                e.views = e.views.saturating_sub(1);
                // A put's write pin covered the first read: given back.
                if e.views == 0 && e.held_pin {
                    e.held_pin = false;
                    fx.unpin_blocks
                        .extend(super::held_block(e, self.session.node_index));
                }
            }
            self.release_freed(&mut st, id, &mut fx);
            self.release_dead_copy(&mut st, id, &mut fx);
        }
        self.apply(fx);
    }

    /// A borrowed object whose value is gone (its owner died, or it was
    /// freed): this node's pulled copy of it is unpinned, so the store gets
    /// the memory back, as soon as no read of it is in progress here.
    pub(crate) fn release_dead_copy(&self, st: &mut State, id: ObjectId, fx: &mut Effects) {
        let Some(e) = st.objects.get_mut(&id) else {
            return;
        };
        if e.owned || e.views > 0 || e.local_copy.is_none() {
            return;
        }
        let Some(original) = e.replaced.clone() else {
            return;
        };
        e.local_copy = None;
        fx.unpins.push(original);
        let node = self.session.node_index;
        fx.to_owner
            .push((id.owner, PeerMsg::RemoveLocation { id, node }));
    }

    /// `rustray::free` of one object, from any process holding a ref: a
    /// borrower forwards it to the owner and forgets its own value.
    pub(crate) fn free_object(self: &Arc<Self>, id: ObjectId) {
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            let blob = codec::encode_error(&freed_error(id));
            let owned = id.owner == self.id;
            if let Some(e) = st.objects.get_mut(&id) {
                if !e.freed {
                    e.freed = true;
                    let old = e.value.replace(Payload::Inline(blob));
                    fx.notify = true;
                    // The block (or, for a borrower, the block its pulled
                    // copy is pinned under) until it can go.
                    if e.replaced.is_none() {
                        e.replaced = old;
                    }
                    st.arrived(id, &mut fx);
                }
            }
            if owned {
                self.release_freed(&mut st, id, &mut fx);
            } else {
                fx.to_owner.push((id.owner, PeerMsg::FreeObject { id }));
                self.release_dead_copy(&mut st, id, &mut fx);
            }
        }
        self.apply(fx);
    }

    /// Releases a freed object's store block (and this node's pinned copy
    /// of it) once nothing can be reading it in place.
    pub(crate) fn release_freed(&self, st: &mut State, id: ObjectId, fx: &mut Effects) {
        st.release_freed(self.session.node_index, id, fx);
    }
}

pub(crate) fn freed_error(id: ObjectId) -> Error {
    Error::new(
        ErrorKind::ObjectFreed,
        format!("object {id} was freed with rustray::free"),
    )
}
