//! The raylet's bookkeeping of its node's store, with no IO: which block
//! holds which object for which owner, who pins it, and where its bytes
//! are (in memory, on their way to disk, on disk, on their way back).
//!
//! Two budgets, because spilling (Ray's object spilling) must free memory
//! without moving objects: every process names a stored object by its
//! block's offset, so an object restored from disk goes back to the same
//! offset. The arena's address space is therefore larger than the memory
//! the store may use ([`SPACE_PER_MEMORY`] times): the allocator hands out
//! addresses, and `resident` counts the bytes whose pages are in memory,
//! against `memory`. Spilling an object writes its bytes to a spill file and
//! then releases its pages (the IO shell punches them out of the tmpfs
//! file); its address stays reserved until it is freed.
//!
//! Only primary copies that nobody pins are spilled: every process reading
//! a block in place pins it first (owner included), and a block being
//! written is pinned by its writer from `CreateObject` until it is sealed,
//! so no live view ever sees pages go. A block moving between memory and
//! disk holds a pin of the mover's, so a free in between only dooms it.
//!
//! The shell drives it: [`Store::pick_victims`] when a create or a restore
//! needs room, then [`Store::spill_written`] and [`Store::evicted`] around
//! its IO (or [`Store::spill_failed`]); a pin that finds an object on disk
//! gets [`Pin::OnDisk`], and the shell calls [`Store::begin_restore`] and
//! [`Store::restored`] around reading it back.

use super::allocator::{AllocError, Allocator};
use crate::codec::ALIGN;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::WorkerId;
use std::collections::HashMap;

/// How much larger the arena's address space is than its memory budget:
/// live objects may total this many times the memory, the rest on disk.
pub(crate) const SPACE_PER_MEMORY: u64 = 16;
/// Spilling makes room down to this share of the memory budget (Ray's
/// `object_spilling_threshold`), so that one spill batch serves several
/// creates instead of one object per create; a store past it spills in the
/// background.
const SPILL_TARGET_PERCENT: u64 = 80;
/// The owner recorded for copies pulled from other nodes: freed by
/// unpinning, never spilled (the primary is elsewhere).
pub(crate) const COPY_OWNER: WorkerId = WorkerId(0);

/// Where a block's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Memory,
    /// Being written to a spill file (readers may still pin and read it).
    Spilling,
    /// On disk; its pages are being released (no new pins until done).
    Evicting {
        file: u32,
        at: u64,
    },
    /// On disk only: `file`'s bytes `at..at + len`.
    Disk {
        file: u32,
        at: u64,
    },
    /// Being read back from disk (no pins until done).
    Restoring {
        file: u32,
        at: u64,
    },
}

impl Loc {
    fn resident(self) -> bool {
        !matches!(self, Loc::Disk { .. })
    }
}

#[derive(Debug)]
struct Block {
    owner: WorkerId,
    tag: u64,
    /// Bytes it takes (its size rounded up to the alignment).
    len: u64,
    /// Last use (creation, a pin, a restore): the least recently used
    /// objects spill first.
    seq: u64,
    pins: u32,
    /// Freed while pinned: released at the last unpin.
    doomed: bool,
    loc: Loc,
}

/// What a pin found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pin {
    Pinned,
    /// Spilled: restore it (it needs `len` bytes of room), then pin again.
    OnDisk {
        len: u64,
    },
    /// Moving between memory and disk right now: try again shortly.
    Busy,
}

/// A spill batch to write: `(offset, len)` of each block, into `file`.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) file: u32,
    pub(crate) blocks: Vec<(u64, u64)>,
}

#[derive(Debug)]
pub(crate) struct Store {
    alloc: Allocator,
    memory: u64,
    resident: u64,
    blocks: HashMap<u64, Block>,
    next_seq: u64,
    /// Spill files, with how many objects each still holds on disk.
    files: HashMap<u32, u32>,
    next_file: u32,
    /// Spill files that hold nothing any more, for the shell to delete.
    dead_files: Vec<u32>,
}

impl Store {
    /// A store that may keep `memory` bytes in memory, in an address space
    /// of `space` bytes (at least `memory`).
    pub(crate) fn new(memory: u64, space: u64) -> Store {
        Store {
            alloc: Allocator::new(space.max(memory), ALIGN as u64),
            memory,
            resident: 0,
            blocks: HashMap::new(),
            next_seq: 0,
            files: HashMap::new(),
            next_file: 0,
            dead_files: Vec::new(),
        }
    }

    fn rounded(size: u64) -> u64 {
        size.max(1)
            .div_ceil(ALIGN as u64)
            .saturating_mul(ALIGN as u64)
    }

    /// Whether `size` bytes could never fit, however much is spilled.
    pub(crate) fn too_large(&self, size: u64) -> bool {
        Self::rounded(size) > self.memory
    }

    /// Whether the bytes in memory passed the spill target: a background
    /// spill should bring them back under it.
    pub(crate) fn past_threshold(&self) -> bool {
        self.resident > self.memory / 100 * SPILL_TARGET_PERCENT
    }

    /// Whether `size` more bytes fit in memory now.
    pub(crate) fn has_room(&self, size: u64) -> bool {
        self.resident.saturating_add(Self::rounded(size)) <= self.memory
    }

    /// Allocates a block for an object owned by `owner`, tagged `tag`. The
    /// shell makes room first (see [`pick_victims`](Self::pick_victims));
    /// without room it is `StoreFull`.
    pub(crate) fn create(&mut self, size: u64, owner: WorkerId, tag: u64) -> Result<u64> {
        let len = Self::rounded(size);
        if self.too_large(size) {
            return Err(Error::new(
                ErrorKind::ObjectTooLarge,
                format!(
                    "object of {size} bytes is larger than the object store ({} bytes); start the cluster with a larger object_store_memory",
                    self.memory
                ),
            ));
        }
        if !self.has_room(size) {
            return Err(self.full_error(size));
        }
        match self.alloc.alloc(size) {
            Ok(off) => {
                self.resident += len;
                self.next_seq += 1;
                self.blocks.insert(
                    off,
                    Block {
                        owner,
                        tag,
                        len,
                        seq: self.next_seq,
                        pins: 0,
                        doomed: false,
                        loc: Loc::Memory,
                    },
                );
                Ok(off)
            }
            Err(AllocError::TooLarge { .. } | AllocError::Full { .. }) => Err(Error::new(
                ErrorKind::StoreFull,
                format!(
                    "no room for an object of {size} bytes: live objects fill the store's address space ({} bytes, {SPACE_PER_MEMORY}x its memory, spilled objects included); drop references to free objects",
                    self.alloc.capacity()
                ),
            )),
        }
    }

    /// The error for a create or restore that found no room and nothing
    /// to spill.
    pub(crate) fn full_error(&self, size: u64) -> Error {
        Error::new(
            ErrorKind::StoreFull,
            format!(
                "no room for an object of {size} bytes: {} of {} bytes in use and nothing can be spilled (every object in memory is being read, written or pulled); drop references or views to free objects",
                self.resident, self.memory
            ),
        )
    }

    /// Frees a block, or, while it is pinned, dooms it (its object is gone
    /// at once; its bytes stay until the last unpin). False if no such
    /// object is live.
    pub(crate) fn free(&mut self, offset: u64) -> bool {
        match self.blocks.get_mut(&offset) {
            Some(b) if !b.doomed => {
                b.doomed = true;
                if b.pins == 0 {
                    self.release(offset);
                }
                true
            }
            _ => false,
        }
    }

    fn release(&mut self, offset: u64) {
        let Some(b) = self.blocks.remove(&offset) else {
            return;
        };
        if b.loc.resident() {
            self.resident -= b.len;
        }
        if let Loc::Disk { file, .. } = b.loc {
            self.file_lost_one(file);
        }
        self.alloc.free(offset);
    }

    fn file_lost_one(&mut self, file: u32) {
        if let Some(n) = self.files.get_mut(&file) {
            *n -= 1;
            if *n == 0 {
                self.files.remove(&file);
                self.dead_files.push(file);
            }
        }
    }

    /// Pins the live block at `offset` if it still holds the object tagged
    /// `tag`; an object on disk must first be restored.
    pub(crate) fn pin(&mut self, offset: u64, tag: u64) -> Result<Pin> {
        match self.blocks.get_mut(&offset) {
            Some(b) if b.tag == tag && !b.doomed => match b.loc {
                Loc::Memory | Loc::Spilling => {
                    b.pins += 1;
                    self.next_seq += 1;
                    b.seq = self.next_seq;
                    Ok(Pin::Pinned)
                }
                Loc::Disk { .. } => Ok(Pin::OnDisk { len: b.len }),
                Loc::Evicting { .. } | Loc::Restoring { .. } => Ok(Pin::Busy),
            },
            _ => Err(Error::new(
                ErrorKind::ObjectLost,
                format!(
                    "the object at {offset} in this node's store was released (its owner freed it or died)"
                ),
            )),
        }
    }

    /// Drops one pin; the last one of a doomed block frees it.
    pub(crate) fn unpin(&mut self, offset: u64) {
        let Some(b) = self.blocks.get_mut(&offset) else {
            return;
        };
        if b.pins == 0 {
            return;
        }
        b.pins -= 1;
        if b.pins == 0 && b.doomed {
            self.release(offset);
        }
    }

    /// Frees every block owned by a process that exited.
    /// The owner of the block at `offset`, if one is there.
    pub(crate) fn owner_of(&self, offset: u64) -> Option<WorkerId> {
        self.blocks.get(&offset).map(|b| b.owner)
    }

    pub(crate) fn free_owned_by(&mut self, owner: WorkerId) -> usize {
        let offs: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.owner == owner && !b.doomed)
            .map(|(off, _)| *off)
            .collect();
        for off in &offs {
            self.free(*off);
        }
        offs.len()
    }

    /// Chooses primary copies to spill so that `size` more bytes fit (down
    /// to the spill target when there is that much to spill), least
    /// recently used first, among those in memory that nobody pins; marks them spilling
    /// (pinned by the spill). Empty when nothing can be spilled.
    pub(crate) fn pick_victims(&mut self, size: u64) -> Batch {
        let want = self.resident.saturating_add(Self::rounded(size));
        let target = self.memory / 100 * SPILL_TARGET_PERCENT;
        let need = want.saturating_sub(target.min(self.memory));
        let mut candidates: Vec<(u64, u64, u64)> = self
            .blocks
            .iter()
            .filter(|(_, b)| {
                b.loc == Loc::Memory && b.pins == 0 && !b.doomed && b.owner != COPY_OWNER
            })
            .map(|(off, b)| (b.seq, *off, b.len))
            .collect();
        candidates.sort_unstable();
        let mut batch = Batch {
            file: self.next_file,
            blocks: Vec::new(),
        };
        let mut got = 0u64;
        for (_, off, len) in candidates {
            if got >= need {
                break;
            }
            got += len;
            batch.blocks.push((off, len));
            if let Some(b) = self.blocks.get_mut(&off) {
                b.loc = Loc::Spilling;
                b.pins += 1;
            }
        }
        if !batch.blocks.is_empty() {
            self.next_file += 1;
        }
        batch
    }

    /// The batch is on disk (block `i` at `ats[i]` of the file): blocks
    /// nobody pinned meanwhile are to be evicted (returned: their pages
    /// are to be released, then [`evicted`](Self::evicted)); the others
    /// stay in memory and their disk copy is dropped.
    pub(crate) fn spill_written(&mut self, batch: &Batch, ats: &[u64]) -> Vec<(u64, u64)> {
        let mut evict = Vec::new();
        for (&(off, len), &at) in batch.blocks.iter().zip(ats) {
            let Some(b) = self.blocks.get_mut(&off) else {
                continue;
            };
            if b.loc != Loc::Spilling {
                continue;
            }
            if b.pins == 1 && !b.doomed {
                b.loc = Loc::Evicting {
                    file: batch.file,
                    at,
                };
                *self.files.entry(batch.file).or_insert(0) += 1;
                evict.push((off, len));
            } else {
                b.loc = Loc::Memory;
                self.unpin(off);
            }
        }
        if !self.files.contains_key(&batch.file) {
            self.dead_files.push(batch.file);
        }
        evict
    }

    /// The pages of these blocks are released: they are on disk only.
    pub(crate) fn evicted(&mut self, blocks: &[(u64, u64)]) {
        for &(off, _) in blocks {
            let Some(b) = self.blocks.get_mut(&off) else {
                continue;
            };
            if let Loc::Evicting { file, at } = b.loc {
                b.loc = Loc::Disk { file, at };
                self.resident -= b.len;
                self.unpin(off);
            }
        }
    }

    /// The batch could not be written: its blocks stay in memory.
    pub(crate) fn spill_failed(&mut self, batch: &Batch) {
        for &(off, _) in &batch.blocks {
            if let Some(b) = self.blocks.get_mut(&off) {
                if b.loc == Loc::Spilling {
                    b.loc = Loc::Memory;
                    self.unpin(off);
                }
            }
        }
        self.dead_files.push(batch.file);
    }

    /// Starts reading a spilled object back, if it is still on disk and
    /// there is room: returns (file, at, len) to read into its block (the
    /// restore pins it until [`restored`](Self::restored)).
    pub(crate) fn begin_restore(&mut self, offset: u64, tag: u64) -> Option<(u32, u64, u64)> {
        let room = self.memory.saturating_sub(self.resident);
        let b = self.blocks.get_mut(&offset)?;
        let Loc::Disk { file, at } = b.loc else {
            return None;
        };
        if b.tag != tag || b.doomed || b.len > room {
            return None;
        }
        b.loc = Loc::Restoring { file, at };
        b.pins += 1;
        self.resident += b.len;
        Some((file, at, b.len))
    }

    /// The read back of `offset` ended: in memory again (its disk copy is
    /// dropped), or, when the read failed, still on disk only.
    pub(crate) fn restored(&mut self, offset: u64, ok: bool) {
        let Some(b) = self.blocks.get_mut(&offset) else {
            return;
        };
        let Loc::Restoring { file, at } = b.loc else {
            return;
        };
        if ok {
            b.loc = Loc::Memory;
            self.next_seq += 1;
            b.seq = self.next_seq;
            self.file_lost_one(file);
        } else {
            b.loc = Loc::Disk { file, at };
            self.resident -= b.len;
        }
        self.unpin(offset);
    }

    /// Spill files that hold nothing any more (taken once).
    pub(crate) fn take_dead_files(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.dead_files)
    }

    /// Bytes in memory (objects, copies, and their alignment).
    pub(crate) fn used(&self) -> u64 {
        self.resident
    }

    /// The memory budget.
    pub(crate) fn capacity(&self) -> u64 {
        self.memory
    }

    /// Objects and copies stored (in memory or spilled).
    pub(crate) fn live_objects(&self) -> usize {
        self.blocks.values().filter(|b| !b.doomed).count()
    }

    /// (objects, bytes) on disk only.
    pub(crate) fn spilled(&self) -> (u64, u64) {
        self.blocks
            .values()
            .filter(|b| matches!(b.loc, Loc::Disk { .. }) && !b.doomed)
            .fold((0, 0), |(n, bytes), b| (n + 1, bytes + b.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn store_errors_name_the_problem_and_owner_exit_frees() {
        let mut s = Store::new(1 << 16, 1 << 16);
        let e = s.create(1 << 20, WorkerId(1), 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ObjectTooLarge);
        let _a = s.create(40_000, WorkerId(1), 7).unwrap();
        let e = s.create(40_000, WorkerId(2), 8).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StoreFull);
        assert_eq!(s.free_owned_by(WorkerId(1)), 1);
        assert_eq!(s.used(), 0);
        s.create(40_000, WorkerId(2), 9).unwrap();
    }

    #[test]
    fn a_pinned_block_outlives_its_owner_and_is_never_reused_under_a_reader() {
        let mut s = Store::new(1 << 16, 1 << 16);
        let a = s.create(40_000, WorkerId(1), 7).unwrap();
        // Only the object it holds can be pinned.
        assert_eq!(s.pin(a, 8).unwrap_err().kind(), ErrorKind::ObjectLost);
        assert_eq!(s.pin(a, 7).unwrap(), Pin::Pinned);
        assert_eq!(s.pin(a, 7).unwrap(), Pin::Pinned);
        // The owner dies: the object is gone, its bytes are not.
        assert_eq!(s.free_owned_by(WorkerId(1)), 1);
        assert!(s.pin(a, 7).is_err(), "a doomed block takes no new pins");
        assert_eq!(
            s.create(40_000, WorkerId(2), 9).unwrap_err().kind(),
            ErrorKind::StoreFull
        );
        s.unpin(a);
        assert!(s.used() >= 40_000);
        s.unpin(a);
        assert_eq!(s.used(), 0);
        assert_eq!(s.create(40_000, WorkerId(2), 9).unwrap(), a);
        // An explicit free of a pinned block waits the same way; unpins of
        // blocks never pinned change nothing.
        s.pin(a, 9).unwrap();
        assert!(s.free(a));
        assert!(!s.free(a), "freed once");
        s.unpin(a + 64);
        assert!(s.used() >= 40_000);
        s.unpin(a);
        assert_eq!(s.used(), 0);
    }

    /// Runs a batch through spill and eviction as the shell does.
    fn spill(s: &mut Store, size: u64) -> Vec<u64> {
        let batch = s.pick_victims(size);
        let ats: Vec<u64> = batch.blocks.iter().map(|(o, _)| o * 2).collect();
        let evict = s.spill_written(&batch, &ats);
        s.evicted(&evict);
        evict.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn spilling_takes_the_oldest_unpinned_primaries_down_to_the_target() {
        let mut s = Store::new(10 * MB, 160 * MB);
        let a = s.create(3 * MB, WorkerId(1), 1).unwrap();
        let b = s.create(3 * MB, WorkerId(1), 2).unwrap();
        let c = s.create(3 * MB, COPY_OWNER, 3).unwrap();
        assert!(!s.has_room(3 * MB));
        assert_eq!(
            s.create(3 * MB, WorkerId(1), 4).unwrap_err().kind(),
            ErrorKind::StoreFull
        );
        // a is read in place: b goes (c is a copy, never spilled); 12 MB
        // wanted, 8 MB target: b alone (3 MB) is all there is.
        s.pin(a, 1).unwrap();
        assert_eq!(spill(&mut s, 3 * MB), vec![b]);
        assert_eq!(s.spilled(), (1, 3 * MB));
        assert_eq!(s.used(), 6 * MB);
        assert_eq!(s.pin(b, 2).unwrap(), Pin::OnDisk { len: 3 * MB });
        let d = s.create(3 * MB, WorkerId(1), 4).unwrap();
        assert_ne!(d, b, "a spilled object keeps its address");
        // Everything left is pinned or a copy: nothing to spill.
        s.pin(d, 4).unwrap();
        assert!(s.pick_victims(3 * MB).blocks.is_empty());
        assert_eq!(s.live_objects(), 4);
        assert!(s.take_dead_files().is_empty());
        let _ = c;
    }

    #[test]
    fn the_least_recently_used_object_spills_first() {
        let mut s = Store::new(10 * MB, 160 * MB);
        let a = s.create(3 * MB, WorkerId(1), 1).unwrap();
        let b = s.create(3 * MB, WorkerId(1), 2).unwrap();
        let c = s.create(3 * MB, WorkerId(1), 3).unwrap();
        // a was read last: b, the least recently used, goes.
        s.pin(a, 1).unwrap();
        s.unpin(a);
        assert_eq!(spill(&mut s, MB), vec![b]);
        // Read back, b is the most recently used: c goes next, then a.
        s.begin_restore(b, 2).unwrap();
        s.restored(b, true);
        assert_eq!(spill(&mut s, MB), vec![c]);
        assert_eq!(spill(&mut s, 3 * MB), vec![a]);
    }

    #[test]
    fn restore_brings_an_object_back_to_its_address_and_drops_its_file() {
        let mut s = Store::new(10 * MB, 160 * MB);
        let a = s.create(4 * MB, WorkerId(1), 1).unwrap();
        let b = s.create(4 * MB, WorkerId(1), 2).unwrap();
        assert_eq!(spill(&mut s, 4 * MB), vec![a, b]);
        assert_eq!(s.used(), 0);
        let (file, at, len) = s.begin_restore(a, 1).unwrap();
        assert_eq!((at, len), (a * 2, 4 * MB));
        assert_eq!(s.pin(a, 1).unwrap(), Pin::Busy, "no pins while restoring");
        assert!(s.begin_restore(a, 1).is_none(), "restored once");
        s.restored(a, true);
        assert_eq!(s.pin(a, 1).unwrap(), Pin::Pinned);
        assert_eq!(s.used(), 4 * MB);
        // The file still holds b; it dies with b's free.
        assert!(s.take_dead_files().is_empty());
        assert!(s.free(b));
        assert_eq!(s.take_dead_files(), vec![file]);
        assert_eq!(s.spilled(), (0, 0));
        // A failed read leaves it on disk.
        s.unpin(a);
        let c = s.create(5 * MB, WorkerId(1), 3).unwrap();
        assert_eq!(spill(&mut s, 6 * MB), vec![a, c]);
        let (_, _, _) = s.begin_restore(c, 3).unwrap();
        s.restored(c, false);
        assert_eq!(s.pin(c, 3).unwrap(), Pin::OnDisk { len: 5 * MB });
        assert_eq!(s.used(), 0);
    }

    #[test]
    fn frees_and_pins_while_an_object_moves_lose_nothing_and_leak_nothing() {
        let mut s = Store::new(10 * MB, 160 * MB);
        let a = s.create(4 * MB, WorkerId(1), 1).unwrap();
        let b = s.create(4 * MB, WorkerId(1), 2).unwrap();
        let batch = s.pick_victims(4 * MB);
        assert_eq!(batch.blocks.len(), 2);
        // Pinned while it was written: it stays in memory.
        assert_eq!(s.pin(a, 1).unwrap(), Pin::Pinned);
        // Freed while it was written: released once the spill lets go.
        assert!(s.free(b));
        let evict = s.spill_written(&batch, &[0, 4 * MB]);
        assert!(evict.is_empty());
        assert_eq!(s.take_dead_files(), vec![batch.file]);
        assert_eq!(s.used(), 4 * MB);
        s.unpin(a);
        // Freed while evicting: released when the eviction ends.
        let batch = s.pick_victims(8 * MB);
        assert_eq!(batch.blocks, vec![(a, 4 * MB)]);
        let evict = s.spill_written(&batch, &[0]);
        assert_eq!(s.pin(a, 1).unwrap(), Pin::Busy);
        assert!(s.free(a));
        s.evicted(&evict);
        assert_eq!(s.used(), 0);
        assert_eq!(s.live_objects(), 0);
        assert_eq!(s.take_dead_files(), vec![batch.file]);
        // A failed write keeps everything in memory.
        let c = s.create(4 * MB, WorkerId(1), 3).unwrap();
        let batch = s.pick_victims(8 * MB);
        s.spill_failed(&batch);
        assert_eq!(s.pin(c, 3).unwrap(), Pin::Pinned);
        assert_eq!(s.used(), 4 * MB);
        // An owner's exit frees its spilled objects and their files.
        s.unpin(c);
        assert_eq!(spill(&mut s, 8 * MB), vec![c]);
        s.take_dead_files();
        assert_eq!(s.free_owned_by(WorkerId(1)), 1);
        assert_eq!(s.take_dead_files().len(), 1);
        assert_eq!((s.used(), s.live_objects()), (0, 0));
    }
}
