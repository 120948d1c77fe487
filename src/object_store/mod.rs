//! The node's object store: ONE pre-allocated shared-memory arena, mapped by
//! every process on the node, with an allocator inside.
//!
//! One arena rather than a file per object because the RDMA transport will
//! register it with the network card once, and because mapping it once per
//! process makes every later read a pointer offset (zero copy).
//!
//! Ownership of the bytes: the raylet holds the [`Store`] (the allocator and
//! which owner each block belongs to) and is the only one that allocates or
//! frees. A writer asks the raylet for a block, fills it through its own
//! mapping, and only then publishes the location (the "seal"): after that the
//! bytes are immutable, so readers need no lock. A block is freed when its
//! owner says no reference remains, or when the owner process exits (objects
//! fate-share with their owner, as in Ray).
//!
//! A process other than the owner that reads a block in place (a borrower's
//! `get` or view, a task's argument) first pins it at the raylet, naming the
//! object's random tag so a reused block is never mistaken for it. A free
//! of a pinned block only dooms it: the allocator gets it back at the last
//! unpin, so no block is reused, and rewritten, under a live reader,
//! whatever became of its owner.
//!
//! The arena file lives in `/dev/shm` under a name carrying the cluster id and
//! node name; tmpfs pages are only allocated when first touched, so a large
//! arena costs nothing until used.

mod allocator;

pub(crate) use allocator::AllocError;
use allocator::Allocator;

use crate::codec::ALIGN;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::WorkerId;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A mapping of the node's arena into this process.
#[derive(Debug)]
pub(crate) struct Arena {
    ptr: *mut u8,
    len: usize,
    path: PathBuf,
}

// SAFETY: the arena is plain shared memory; concurrent access is coordinated
// by the create/seal protocol (a block is written by one process before its
// location is published, and never written after).
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// Creates the arena file (which must not exist) and maps it.
    pub(crate) fn create(path: &Path, len: u64) -> Result<Arena> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(&format!("creating object store {}", path.display()), e))?;
        file.set_len(len)
            .map_err(|e| Error::io(&format!("sizing object store {}", path.display()), e))?;
        Self::map(file, len as usize, path)
    }

    /// Maps an existing arena.
    pub(crate) fn open(path: &Path) -> Result<Arena> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(&format!("opening object store {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("object store metadata", e))?
            .len() as usize;
        Self::map(file, len, path)
    }

    fn map(file: std::fs::File, len: usize, path: &Path) -> Result<Arena> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Err(Error::invalid("object store size must be > 0"));
        }
        // SAFETY: mapping a regular file we opened read-write, length checked
        // non-zero; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(
                "mapping the object store",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Arena {
            ptr: ptr.cast(),
            len,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Start of the mapping, for registering it with the fabric.
    pub(crate) fn base_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn check(&self, offset: u64, len: u64) -> Result<(usize, usize)> {
        let end = offset.checked_add(len).filter(|e| *e <= self.len as u64);
        match end {
            Some(_) => Ok((offset as usize, len as usize)),
            None => Err(Error::invalid(format!(
                "object location {offset}+{len} is outside the {}-byte store",
                self.len
            ))),
        }
    }

    /// The bytes of a sealed block.
    pub(crate) fn read(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let (o, l) = self.check(offset, len)?;
        // SAFETY: in bounds (checked). A sealed block is never written again
        // while it is read: its reader is its owner (who alone frees it), or
        // holds a pin at the raylet (a pulled copy's, or `PinObjects`), and
        // a pinned block is not reallocated (see `Store::free`).
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.add(o), l) })
    }

    /// The bytes of a block, to fill before its location is published.
    ///
    /// # Safety
    /// `offset..offset + len` must be a block the raylet allocated to the
    /// caller (`CreateObject`, or a pulled copy's block) and not yet
    /// published, so that no other reference into it exists: the raylet
    /// hands out only blocks that no view or pin on the node still holds.
    #[allow(clippy::mut_from_ref)]
    // SAFETY: callers promise what `# Safety` says; the bounds are checked
    // here.
    pub(crate) unsafe fn write(&self, offset: u64, len: u64) -> Result<&mut [u8]> {
        let (o, l) = self.check(offset, len)?;
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(o), l) })
    }

    /// Removes the arena's name; mappings stay valid until unmapped.
    pub(crate) fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The raylet's bookkeeping of the arena.
#[derive(Debug)]
pub(crate) struct Store {
    alloc: Allocator,
    /// Live blocks: their owner and their object's tag.
    blocks: HashMap<u64, (WorkerId, u64)>,
    /// Readers' pins, by block (live or doomed).
    pins: HashMap<u64, u32>,
    /// Blocks freed while pinned: back to the allocator at the last unpin.
    doomed: HashSet<u64>,
}

impl Store {
    pub(crate) fn new(capacity: u64) -> Store {
        Store {
            alloc: Allocator::new(capacity, ALIGN as u64),
            blocks: HashMap::new(),
            pins: HashMap::new(),
            doomed: HashSet::new(),
        }
    }

    /// Allocates a block for an object owned by `owner`, tagged `tag`.
    pub(crate) fn create(&mut self, size: u64, owner: WorkerId, tag: u64) -> Result<u64> {
        match self.alloc.alloc(size) {
            Ok(off) => {
                self.blocks.insert(off, (owner, tag));
                Ok(off)
            }
            Err(AllocError::TooLarge { size, capacity }) => Err(Error::new(
                ErrorKind::ObjectTooLarge,
                format!(
                    "object of {size} bytes is larger than the object store ({capacity} bytes); start the cluster with a larger object_store_memory"
                ),
            )),
            Err(AllocError::Full { size, free }) => Err(Error::new(
                ErrorKind::StoreFull,
                format!(
                    "no room for an object of {size} bytes: {free} of {} bytes free (in fragments) and spilling is not supported yet; drop references to free objects",
                    self.alloc.capacity()
                ),
            )),
        }
    }

    /// Frees a block, or, while readers pin it, dooms it (its object is
    /// gone at once; its bytes stay until the last unpin). False if no such
    /// block is live.
    pub(crate) fn free(&mut self, offset: u64) -> bool {
        if self.blocks.remove(&offset).is_none() {
            return false;
        }
        if self.pins.contains_key(&offset) {
            self.doomed.insert(offset);
            return true;
        }
        self.alloc.free(offset)
    }

    /// Pins the live block at `offset` if it still holds the object tagged
    /// `tag`.
    pub(crate) fn pin(&mut self, offset: u64, tag: u64) -> Result<()> {
        match self.blocks.get(&offset) {
            Some((_, t)) if *t == tag => {
                *self.pins.entry(offset).or_insert(0) += 1;
                Ok(())
            }
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
        let Some(n) = self.pins.get_mut(&offset) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.pins.remove(&offset);
            if self.doomed.remove(&offset) {
                self.alloc.free(offset);
            }
        }
    }

    /// Frees every block owned by a process that exited.
    pub(crate) fn free_owned_by(&mut self, owner: WorkerId) -> usize {
        let offs: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, (o, _))| *o == owner)
            .map(|(off, _)| *off)
            .collect();
        for off in &offs {
            self.free(*off);
        }
        offs.len()
    }

    pub(crate) fn used(&self) -> u64 {
        self.alloc.used()
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.alloc.capacity()
    }

    pub(crate) fn live_objects(&self) -> usize {
        self.alloc.live_blocks()
    }
}

/// Path of a node's arena.
pub(crate) fn arena_path(cluster: &str, node: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/rustray-{cluster}-{node}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_is_shared_between_mappings_and_unlinked() {
        let path = PathBuf::from(format!("/dev/shm/rustray-test-{}", std::process::id()));
        let a = Arena::create(&path, 1 << 20).unwrap();
        let b = Arena::open(&path).unwrap();
        // SAFETY: a test arena nobody else writes or reads meanwhile.
        unsafe { a.write(4096, 5) }
            .unwrap()
            .copy_from_slice(b"hello");
        assert_eq!(b.read(4096, 5).unwrap(), b"hello");
        assert!(b.read((1 << 20) - 2, 5).is_err());
        a.unlink();
        assert!(!path.exists());
        assert_eq!(b.read(4096, 5).unwrap(), b"hello");
    }

    #[test]
    fn store_errors_name_the_problem_and_owner_exit_frees() {
        let mut s = Store::new(1 << 16);
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
        let mut s = Store::new(1 << 16);
        let a = s.create(40_000, WorkerId(1), 7).unwrap();
        // Only the object it holds can be pinned.
        assert_eq!(s.pin(a, 8).unwrap_err().kind(), ErrorKind::ObjectLost);
        s.pin(a, 7).unwrap();
        s.pin(a, 7).unwrap();
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
}
