//! Reading and storing values (Ray's `memory_store`, and the client side
//! of its plasma store): waiting for a value with a bound (spinning
//! briefly before sleeping), inline payloads, blocks of this node's store
//! read in place, pulls of other nodes' blocks into it (pinned while a
//! local entry holds them), and new values written to the store.

use super::{CoreWorker, Effects, State, INLINE_MAX, PULL_ROOM_WAIT, SPIN};
use crate::codec;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ObjectId, WorkerId};
use crate::protocol::{FromRaylet, PeerMsg, ToRaylet};
use crate::transport::Payload;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spare bytes an inline payload may keep from its encoding (the room a
/// small value's blob is made with: see `codec::encode_value`).
const SPARE: usize = 64;

/// `v` with what its encoding left spare given back when that is much.
fn trimmed(mut v: Vec<u8>) -> Vec<u8> {
    if v.capacity() - v.len() > SPARE.max(v.len() / 8) {
        v.shrink_to_fit();
    }
    v
}

impl CoreWorker {
    /// The payload if ready; otherwise asks the owner (once) for it.
    pub(crate) fn poll_value(
        &self,
        st: &mut State,
        id: ObjectId,
        fx: &mut Effects,
    ) -> Result<Option<Payload>> {
        let Some(e) = st.objects.get_mut(&id) else {
            return Err(Error::new(
                ErrorKind::OwnerDied,
                format!("object {id} is not known to this process"),
            ));
        };
        if let Some(v) = &e.value {
            return Ok(Some(v.clone()));
        }
        if !e.owned && !e.requested {
            e.requested = true;
            fx.to_owner.push((id.owner, PeerMsg::GetObject { id }));
        }
        Ok(None)
    }

    /// Waits until `id` has a value or the deadline passes.
    pub(crate) fn wait_value(
        self: &Arc<Self>,
        id: ObjectId,
        deadline: Option<Instant>,
    ) -> Result<Payload> {
        // Taken by every wait, whether or not it spins.
        let awaited = crate::transport::awaited();
        let mut fx = Effects::default();
        let mut st = self.lock();
        if let Some(v) = self.poll_value(&mut st, id, &mut fx)? {
            return Ok(v);
        }
        drop(st);
        let epoch = self.value_epoch.load(Ordering::Acquire);
        self.apply(std::mem::take(&mut fx));
        // Most round trips on a node finish within tens of microseconds:
        // spinning that long avoids a sleep and wake-up on each side and,
        // in a worker, the blocked/unblocked exchange with the raylet.
        if self.spin_for_value(epoch, awaited) {
            let mut st = self.lock();
            if let Some(v) = self.poll_value(&mut st, id, &mut fx)? {
                return Ok(v);
            }
        }
        let _blocked = self.block_guard();
        let mut st = self.lock();
        loop {
            if let Some(v) = self.poll_value(&mut st, id, &mut fx)? {
                return Ok(v);
            }
            if self.shutting_down.load(Ordering::Relaxed) {
                return Err(Error::unavailable("rustray was shut down"));
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "object {id} was not ready in time; it can still be fetched later"
                            ),
                        ));
                    }
                    (d - now).min(Duration::from_millis(500))
                }
                None => Duration::from_millis(500),
            };
            Self::watch(&mut st, id, true, false);
            st = self.sleep_for_values(st, wait).0;
            Self::watch(&mut st, id, false, false);
        }
    }

    /// Spins up to [`SPIN`] for a value to arrive after `epoch`, reading
    /// the connection its answer comes on meanwhile, where this thread may
    /// (see `transport::awaited`): the answer then takes no wake-up.
    pub(super) fn spin_for_value(
        &self,
        epoch: u64,
        awaited: Option<crate::transport::Awaited>,
    ) -> bool {
        if !crate::transport::spare_core() {
            return false;
        }
        let waiter = awaited.and_then(|a| a.waiter());
        self.spin_until(
            || self.value_epoch.load(Ordering::Acquire) != epoch,
            || waiter.as_ref().is_some_and(|w| w.read()),
        )
    }

    /// Spins up to [`SPIN`] until `done()`; true if it became true. Only
    /// on machines with a core to spare for the spinner. Each turn runs
    /// `meanwhile`, and yields the core unless that did something.
    pub(super) fn spin_until(
        &self,
        done: impl Fn() -> bool,
        mut meanwhile: impl FnMut() -> bool,
    ) -> bool {
        if !crate::transport::spare_core() {
            return false;
        }
        let start = Instant::now();
        loop {
            if done() {
                return true;
            }
            if start.elapsed() > SPIN {
                return false;
            }
            if !meanwhile() {
                // Yield rather than spin: on a small node the thread that
                // will deliver the value may need this very core.
                std::thread::yield_now();
            }
        }
    }

    /// The bytes of a payload: inline, or mapped from this node's arena.
    /// A block of another node's store must be pulled first
    /// ([`CoreWorker::wait_local`], [`CoreWorker::pull`]).
    pub(crate) fn payload_bytes<'a>(&'a self, p: &'a Payload) -> Result<&'a [u8]> {
        match p {
            Payload::Inline(b) => Ok(b),
            Payload::Store {
                node, offset, len, ..
            } if *node == self.session.node_index => self.arena.read(*offset, *len),
            Payload::Store { node, .. } => Err(Error::unavailable(format!(
                "internal: object on node {node} read without pulling it to this node"
            ))),
        }
    }

    /// True if the payload's bytes are in another node's store.
    pub(crate) fn is_remote(&self, p: &Payload) -> bool {
        matches!(p, Payload::Store { node, .. } if *node != self.session.node_index)
    }

    /// Copies a block of another node's store into this node's (the local
    /// raylet reuses a copy it already has); pinned until unpinned.
    ///
    /// A store without room for the copy is waited on (other copies and
    /// objects are freed as their readers finish) until `deadline`, or
    /// for [`PULL_ROOM_WAIT`] without one.
    pub(crate) fn pull(
        &self,
        p: &Payload,
        copies: &[u16],
        deadline: Option<Instant>,
    ) -> Result<Payload> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + PULL_ROOM_WAIT);
        let mut pause = Duration::from_millis(2);
        loop {
            match self.pull_once(p, copies) {
                Err(e) if e.kind() == ErrorKind::StoreFull && Instant::now() < deadline => {
                    std::thread::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    );
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    pub(super) fn pull_once(&self, p: &Payload, copies: &[u16]) -> Result<Payload> {
        let Payload::Store {
            node,
            offset,
            len,
            tag,
        } = *p
        else {
            return Ok(p.clone());
        };
        let reply = self.raylet_call(
            |req| ToRaylet::PullObject {
                req,
                node,
                offset,
                len,
                tag,
                copies: copies.to_vec(),
            },
            "pulling an object from another node",
        )?;
        match reply {
            FromRaylet::ObjectPulled { result, .. } => Ok(Payload::Store {
                node: self.session.node_index,
                offset: result?,
                len,
                tag,
            }),
            _ => Err(Error::unavailable("unexpected reply from the raylet")),
        }
    }

    /// Unpins a copy made by [`CoreWorker::pull`] of the block `original`.
    pub(crate) fn unpin(&self, original: &Payload) {
        if let Payload::Store {
            node,
            offset,
            len,
            tag,
        } = *original
        {
            let _ = self.raylet.send(&ToRaylet::UnpinObject {
                node,
                offset,
                len,
                tag,
            });
        }
    }

    /// [`CoreWorker::wait_value`], then, for an object in another node's
    /// store, a local copy kept (pinned) as long as this process holds the
    /// object.
    pub(crate) fn wait_local(
        self: &Arc<Self>,
        id: ObjectId,
        deadline: Option<Instant>,
    ) -> Result<Payload> {
        let p = self.wait_value(id, deadline)?;
        self.local_of(id, p, deadline)
    }

    /// `p`, the value of `id` (as `wait_value` found it), readable here:
    /// itself, or a copy pulled into this node's store.
    pub(crate) fn local_of(
        self: &Arc<Self>,
        id: ObjectId,
        p: Payload,
        deadline: Option<Instant>,
    ) -> Result<Payload> {
        if !self.is_remote(&p) {
            return Ok(p);
        }
        let copies = match self.lock().objects.get(&id) {
            Some(e) => match &e.local_copy {
                Some(c) => return Ok(c.clone()),
                None => e.copies.clone(),
            },
            None => Vec::new(),
        };
        let local = match self.pull(&p, &copies, deadline) {
            Ok(local) => local,
            Err(e) if e.kind() == ErrorKind::ObjectLost => {
                // Recovered from its lineage (or by its owner), else the
                // reason it cannot be.
                let mut fx = Effects::default();
                let r = self.object_lost(&mut self.lock(), id, &p, &e, &mut fx);
                self.apply(fx);
                r?;
                return self.wait_local(id, deadline);
            }
            Err(e) => return Err(e),
        };
        let mut st = self.lock();
        match st.objects.get_mut(&id) {
            Some(e) if e.local_copy.is_none() => {
                e.local_copy = Some(local.clone());
                // Tell the directory: this node now holds a copy.
                let node = self.session.node_index;
                if e.owned {
                    if !e.copies.contains(&node) {
                        e.copies.push(node);
                    }
                } else {
                    drop(st);
                    self.send_to(id.owner, PeerMsg::AddLocation { id, node });
                }
                Ok(local)
            }
            Some(e) => {
                // Another thread pulled it meanwhile: keep one pin.
                let c = e.local_copy.clone().unwrap_or(local);
                drop(st);
                self.unpin(&p);
                Ok(c)
            }
            None => {
                drop(st);
                self.unpin(&p);
                Err(Error::new(
                    ErrorKind::OwnerDied,
                    format!("object {id} was released while it was being read"),
                ))
            }
        }
    }

    /// Stores an encoded value: inline when small ([`INLINE_MAX`]) and
    /// within `inline_room` (what its message may still carry inline, see
    /// `TASK_INLINE_MAX`), else in the arena. With `keep_pin`, the block's
    /// write pin is kept (see `Entry::held_pin`).
    pub(crate) fn store_value(
        &self,
        enc: codec::Encoded<'_>,
        owner: WorkerId,
        keep_pin: bool,
        inline_room: usize,
    ) -> Result<Payload> {
        let len = enc.len();
        if len <= INLINE_MAX.min(inline_room) {
            // A blob becomes the payload as it is, no copy. What its
            // encoding left spare goes back when it is much (a value just
            // past a doubling of the buffer); a put keeps its payload for
            // the object's life.
            return Ok(Payload::Inline(trimmed(enc.into_vec())));
        }
        let tag = crate::ids::random_u64();
        let reply = self.raylet_call(
            |req| ToRaylet::CreateObject {
                req,
                size: len as u64,
                owner,
                tag,
            },
            "allocating in the object store",
        )?;
        let offset = match reply {
            FromRaylet::ObjectCreated { result, .. } => result?,
            _ => return Err(Error::unavailable("unexpected reply from the raylet")),
        };
        // SAFETY: the raylet just allocated this block to us; its location
        // is published (returned) only once it is written.
        let written = unsafe { self.arena.write(offset, len as u64) }.map(|b| enc.write_to(b));
        // Sealed: the raylet pinned it for this write (so it could not be
        // spilled half-written); from now on readers pin it themselves.
        if !keep_pin || written.is_err() {
            let _ = self.raylet.post(&ToRaylet::UnpinObjects {
                offsets: vec![offset],
            });
        }
        written?;
        Ok(Payload::Store {
            node: self.session.node_index,
            tag,
            offset,
            len: len as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inline payload keeps at most a small value's room, or an eighth
    /// of its length, of spare capacity: a put keeps it for the object's
    /// life, and a blob grown by doubling can hold twice its length.
    #[test]
    fn an_inline_payload_keeps_little_spare_room() {
        let small = crate::codec::encode_value(&(7u32, "x".to_string()))
            .unwrap()
            .into_vec();
        let (len, cap) = (small.len(), small.capacity());
        let kept = trimmed(small);
        assert_eq!(
            (kept.len(), kept.capacity()),
            (len, cap),
            "a small value as it is"
        );
        let mut grown = Vec::with_capacity(128 << 10);
        grown.resize((64 << 10) + 1, 1u8);
        let kept = trimmed(grown);
        assert_eq!(kept.len(), (64 << 10) + 1);
        assert!(
            kept.capacity() - kept.len() <= SPARE.max(kept.len() / 8),
            "{} spare",
            kept.capacity() - kept.len()
        );
    }
}
