//! The node's object store: ONE pre-allocated shared-memory arena, mapped by
//! every process on the node, with an allocator inside.
//!
//! One arena rather than a file per object because the RDMA transport will
//! register it with the network card once, and because mapping it once per
//! process makes every later read a pointer offset (zero copy).
//!
//! Ownership of the bytes: the raylet holds the [`Store`] (the allocator,
//! which owner each block belongs to, which blocks are spilled) and is the
//! only one that allocates or frees. A writer asks the raylet for a block
//! (pinned for it until it is written), fills it through its own mapping,
//! and only then publishes the location (the "seal"): after that the bytes
//! are immutable, so readers need no lock. A block is freed when its owner
//! says no reference remains, or when the owner process exits (objects
//! fate-share with their owner, as in Ray).
//!
//! Every process that reads a block in place (a `get` or view, the owner's
//! included, a task's argument, a transfer to another node) first pins it
//! at the raylet, naming the object's random tag so a reused block is never
//! mistaken for it. A free of a pinned block only dooms it: the allocator
//! gets it back at the last unpin, so no block is reused, and rewritten,
//! under a live reader, whatever became of its owner. Unpinned blocks are
//! what spilling may move to disk (see [`table`]); a pin brings them back.
//!
//! The arena file lives in `/dev/shm` (or the configured store directory,
//! `Config::store_dir`) under a name carrying the cluster id and node name;
//! tmpfs pages are only allocated when first touched, so a large arena
//! costs nothing until used. In `/dev/shm` the name is a link to a file on
//! a tmpfs of the store's own, with huge pages, where the machine allows
//! it ([`hugefs`]): that is what lets the first put run near memory speed.

mod allocator;
mod hugefs;
mod spill;
mod table;

pub(crate) use spill::{spill_base, SpillDir};
pub(crate) use table::{Batch, Pin, Store, COPY_OWNER, SPACE_PER_MEMORY};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A mapping of the node's arena into this process.
#[derive(Debug)]
pub(crate) struct Arena {
    /// The shared mapping, held to unmap it when the arena drops. Raw:
    /// blocks are handed out as slices one at a time, never the whole map.
    _map: memmap2::MmapRaw,
    ptr: *mut u8,
    len: usize,
    path: PathBuf,
    /// Kept open to release the pages of spilled blocks.
    file: std::fs::File,
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

    /// Creates the arena on a tmpfs of its own with 2 MiB pages (see
    /// [`hugefs`]), `path` (which must not exist) a link to it; or says why
    /// the machine does not allow it.
    pub(crate) fn create_huge(path: &Path, len: u64) -> std::result::Result<Arena, String> {
        use std::os::fd::AsRawFd;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("the store's path has no file name")?;
        let file = hugefs::create(name, len)?;
        // Other processes open the file through this process's descriptor,
        // which stays open as long as the arena (`Arena::file`).
        let target = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        std::os::unix::fs::symlink(&target, path)
            .map_err(|e| format!("linking {} to {target}: {e}", path.display()))?;
        Self::map(file, len as usize, path).map_err(|e| {
            let _ = std::fs::remove_file(path);
            e.to_string()
        })
    }

    /// Maps an existing arena.
    pub(crate) fn open(path: &Path) -> Result<Arena> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                // A link to the raylet's descriptor (see `hugefs`) opens
                // only where the raylet's /proc entry can be read.
                let linked = std::fs::read_link(path).is_ok_and(|t| t.starts_with("/proc/"));
                let hint = if linked {
                    " (a link into the raylet's /proc: a process outside its pid \
                     namespace cannot follow it; RUSTRAY_STORE_HUGE_PAGES=0 makes \
                     the store a plain file)"
                } else {
                    ""
                };
                Error::io(&format!("opening object store {}{hint}", path.display()), e)
            })?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("object store metadata", e))?
            .len() as usize;
        Self::map(file, len, path)
    }

    fn map(file: std::fs::File, len: usize, path: &Path) -> Result<Arena> {
        if len == 0 {
            return Err(Error::invalid("object store size must be > 0"));
        }
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| Error::io("mapping the object store", e))?;
        Ok(Arena {
            ptr: map.as_mut_ptr(),
            _map: map,
            len,
            path: path.to_path_buf(),
            file,
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
    /// published, or a spilled block the raylet is restoring, so that no
    /// other reference into it exists: the raylet hands out only blocks
    /// that no view or pin on the node still holds, and takes no pin on a
    /// block being restored.
    #[allow(clippy::mut_from_ref)]
    // SAFETY: callers promise what `# Safety` says; the bounds are checked
    // here.
    pub(crate) unsafe fn write(&self, offset: u64, len: u64) -> Result<&mut [u8]> {
        let (o, l) = self.check(offset, len)?;
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(o), l) })
    }

    /// Gives the memory of the whole pages inside `offset..offset + len`
    /// back to the system (a spilled block's): the range reads as zeros
    /// until written again. Only a block nobody reads or writes may be
    /// released (the store evicts only blocks no pin holds).
    pub(crate) fn release_pages(&self, offset: u64, len: u64) -> Result<()> {
        let (o, l) = self.check(offset, len)?;
        let page = 4096usize;
        let start = o.div_ceil(page) * page;
        let end = (o + l) / page * page;
        if end <= start {
            return Ok(());
        }
        // Punching a hole frees the tmpfs pages of that range and keeps the
        // file's size; no memory is touched through the mapping here.
        nix::fcntl::fallocate(
            &self.file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            start as libc::off_t,
            (end - start) as libc::off_t,
        )
        .map_err(|e| Error::io("releasing a spilled object's memory", e.into()))?;
        Ok(())
    }

    /// Removes the arena's name; mappings stay valid until unmapped.
    pub(crate) fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Path of a node's arena in the store directory `dir`.
pub(crate) fn arena_path(dir: &Path, cluster: &str, node: &str) -> PathBuf {
    dir.join(format!("rustray-{cluster}-{node}"))
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
    fn released_pages_are_given_back_and_neighbours_kept() {
        let path = PathBuf::from(format!("/dev/shm/rustray-test-rel-{}", std::process::id()));
        let a = Arena::create(&path, 1 << 20).unwrap();
        let blocks = |f: &std::fs::File| {
            use std::os::unix::fs::MetadataExt;
            f.metadata().unwrap().blocks()
        };
        // SAFETY: a test arena nobody else writes or reads meanwhile.
        unsafe { a.write(0, 1 << 20) }.unwrap().fill(7);
        let full = blocks(&a.file);
        // A block from 100 to 3 pages + 100: only its two whole pages go.
        a.release_pages(100, 3 * 4096).unwrap();
        assert_eq!(blocks(&a.file), full - 2 * 4096 / 512);
        let r = a.read(0, 5 * 4096).unwrap();
        assert!(r[..4096].iter().all(|b| *b == 7));
        assert!(r[4096..3 * 4096].iter().all(|b| *b == 0));
        assert!(r[3 * 4096..].iter().all(|b| *b == 7));
        assert!(a.release_pages(1 << 20, 1).is_err());
        a.unlink();
    }

    /// The same on a store with huge pages: the pages released inside a
    /// 2 MiB page go back (the kernel splits it), their neighbours stay.
    #[test]
    fn released_pages_of_a_huge_page_are_given_back() {
        if !hugefs::tests::machine_allows() {
            eprintln!("skipped: no user namespaces with tmpfs mounts here");
            return;
        }
        let path = PathBuf::from(format!("/dev/shm/rustray-test-hrel-{}", std::process::id()));
        let len = 4u64 << 20;
        let a = Arena::create_huge(&path, len).unwrap();
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        let blocks = |f: &std::fs::File| {
            use std::os::unix::fs::MetadataExt;
            f.metadata().unwrap().blocks()
        };
        // SAFETY: a test arena nobody else writes or reads meanwhile.
        unsafe { a.write(0, len) }.unwrap().fill(7);
        let full = blocks(&a.file);
        a.release_pages(100, 3 * 4096).unwrap();
        assert_eq!(blocks(&a.file), full - 2 * 4096 / 512);
        let r = a.read(0, len).unwrap();
        assert!(r[..4096].iter().all(|b| *b == 7));
        assert!(r[4096..3 * 4096].iter().all(|b| *b == 0));
        assert!(r[3 * 4096..].iter().all(|b| *b == 7));
        // Another process's way in: the link.
        let b = Arena::open(&path).unwrap();
        assert_eq!(b.read(len - 5, 5).unwrap(), [7u8; 5]);
        a.unlink();
        assert!(std::fs::symlink_metadata(&path).is_err());
    }
}
