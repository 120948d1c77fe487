//! The raylet's IO shell around its store's bookkeeping
//! ([`Store`](crate::object_store::Store), no IO): making room by spilling
//! objects to disk, and restoring them when a reader pins them.
//!
//! A create that does not fit spills at once; a store past the spill
//! threshold (80% of its memory) spills down to it in the background. Spill
//! and restore IO runs on the thread that needs it (the requesting client's,
//! a transfer's, or the background spill's), with the state lock dropped;
//! one spill batch runs at a time (`State::spilling`), and threads that find a batch in
//! flight or a block moving wait on [`Raylet::room`], a condvar of the state
//! lock, for a bounded time ([`ROOM_WAIT`]).

use super::{Raylet, State};
use crate::error::{Error, ErrorKind, Result};
use crate::object_store::{Batch, Pin};
use crate::session::log;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

/// Bound on waiting for another thread's spill or restore to finish.
const ROOM_WAIT: Duration = Duration::from_secs(60);

type Guard<'a> = MutexGuard<'a, State>;

impl Raylet {
    /// Waits (bounded by `deadline`) for the store to change.
    fn wait_store<'a>(&'a self, st: Guard<'a>, deadline: Instant) -> Result<Guard<'a>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                ErrorKind::StoreFull,
                format!(
                    "the object store did not make room within {ROOM_WAIT:?} (a spill or restore on this node is stuck)"
                ),
            ));
        }
        let (st, _) = self
            .room
            .wait_timeout(st, left.min(Duration::from_millis(100)))
            .unwrap_or_else(|p| p.into_inner());
        Ok(st)
    }

    /// Makes room for `size` more bytes in memory, spilling objects to disk
    /// when they do not fit. `StoreFull` when nothing can be spilled (every
    /// object in memory is pinned) or the spill directory cannot take them.
    pub(super) fn make_room<'a>(&'a self, mut st: Guard<'a>, size: u64) -> (Guard<'a>, Result<()>) {
        let deadline = Instant::now() + ROOM_WAIT;
        loop {
            // (Too large for the store at all: the create says so.)
            if st.store.has_room(size) || st.store.too_large(size) {
                return (st, Ok(()));
            }
            if st.spilling {
                st = match self.wait_store(st, deadline) {
                    Ok(st) => st,
                    Err(e) => return (self.lock(), Err(e)),
                };
                continue;
            }
            let batch = st.store.pick_victims(size);
            if batch.blocks.is_empty() {
                let e = st.store.full_error(size);
                return (st, Err(e));
            }
            let (s, r) = self.spill_batch(st, batch);
            st = s;
            if let Err(e) = r {
                return (st, Err(e));
            }
        }
    }

    /// Writes a batch of blocks (marked spilling) to a spill file and
    /// releases their memory; on a write error they stay in memory.
    fn spill_batch<'a>(&'a self, mut st: Guard<'a>, batch: Batch) -> (Guard<'a>, Result<()>) {
        st.spilling = true;
        drop(st);
        let bytes: u64 = batch.blocks.iter().map(|(_, l)| l).sum();
        let started = Instant::now();
        let written = self
            .spill
            .write_batch(batch.file, &self.arena, &batch.blocks);
        st = self.lock();
        let ats = match written {
            Ok(ats) => ats,
            Err(e) => {
                log!("spilling {bytes} bytes failed: {e}");
                st.store.spill_failed(&batch);
                st.spilling = false;
                self.room.notify_all();
                let st = self.delete_dead_files(st);
                return (st, Err(e));
            }
        };
        let evict = st.store.spill_written(&batch, &ats);
        drop(st);
        for &(off, len) in &evict {
            if let Err(e) = self.arena.release_pages(off, len) {
                // The bytes are on disk either way; only the memory is not
                // given back early.
                log!("{e}");
            }
        }
        st = self.lock();
        st.store.evicted(&evict);
        st.spilling = false;
        self.room.notify_all();
        log!(
            "spilled {} objects ({} bytes) to {} in {:?}",
            evict.len(),
            evict.iter().map(|(_, l)| l).sum::<u64>(),
            self.spill.path().display(),
            started.elapsed()
        );
        (self.delete_dead_files(st), Ok(()))
    }

    /// Past the spill threshold (Ray's `object_spilling_threshold`): spills
    /// down to it on a thread of its own, so that later creates find room
    /// without waiting for a spill.
    pub(super) fn spill_past_threshold(self: &Arc<Self>, st: &mut State) {
        if st.spilling || st.spill_pending || !st.store.past_threshold() {
            return;
        }
        st.spill_pending = true;
        let r = self.clone();
        let spawned = std::thread::Builder::new()
            .name("raylet-spill".into())
            .spawn(move || {
                let mut st = r.lock();
                st.spill_pending = false;
                if st.spilling || !st.store.past_threshold() {
                    return;
                }
                let batch = st.store.pick_victims(0);
                if !batch.blocks.is_empty() {
                    drop(r.spill_batch(st, batch));
                }
            });
        if spawned.is_err() {
            st.spill_pending = false;
        }
    }

    /// Pins the blocks `(offset, tag)` of this node's store for a reader,
    /// all or none, restoring spilled ones from disk first.
    pub(super) fn pin_blocks<'a>(
        &'a self,
        mut st: Guard<'a>,
        blocks: &[(u64, u64)],
    ) -> (Guard<'a>, Result<()>) {
        let mut done = Vec::with_capacity(blocks.len());
        let mut result = Ok(());
        for &(offset, tag) in blocks {
            let (s, r) = self.pin_one(st, offset, tag);
            st = s;
            match r {
                Ok(()) => done.push(offset),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            for offset in done {
                st.store.unpin(offset);
            }
            st = self.delete_dead_files(st);
        }
        (st, result)
    }

    fn pin_one<'a>(&'a self, mut st: Guard<'a>, offset: u64, tag: u64) -> (Guard<'a>, Result<()>) {
        let deadline = Instant::now() + ROOM_WAIT;
        loop {
            match st.store.pin(offset, tag) {
                Err(e) => return (st, Err(e)),
                Ok(Pin::Pinned) => return (st, Ok(())),
                Ok(Pin::Busy) => {
                    st = match self.wait_store(st, deadline) {
                        Ok(st) => st,
                        Err(e) => return (self.lock(), Err(e)),
                    };
                }
                Ok(Pin::OnDisk { len }) => {
                    let (s, r) = self.make_room(st, len);
                    st = s;
                    if let Err(e) = r {
                        return (st, Err(e));
                    }
                    // Another thread may have restored (or freed) it while
                    // room was made; then the next pin says so.
                    if let Some((file, at, len)) = st.store.begin_restore(offset, tag) {
                        drop(st);
                        // SAFETY: the block is being restored: the store
                        // takes no pin on it until `restored`, and every
                        // in-place reader pins, so nothing else refers to it.
                        let read = unsafe { self.arena.write(offset, len) }
                            .and_then(|dst| self.spill.read(file, at, dst));
                        st = self.lock();
                        st.store.restored(offset, read.is_ok());
                        self.room.notify_all();
                        st = self.delete_dead_files(st);
                        if let Err(e) = read {
                            let e = Error::new(
                                ErrorKind::ObjectLost,
                                format!("a spilled object could not be read back: {e}"),
                            );
                            return (st, Err(e));
                        }
                    }
                }
            }
        }
    }

    /// Deletes the spill files that hold no object any more.
    pub(super) fn delete_dead_files<'a>(&'a self, mut st: Guard<'a>) -> Guard<'a> {
        let dead = st.store.take_dead_files();
        if dead.is_empty() {
            return st;
        }
        drop(st);
        for f in dead {
            self.spill.remove(f);
        }
        self.lock()
    }
}
