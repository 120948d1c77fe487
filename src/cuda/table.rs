//! The bookkeeping of GPU-resident objects in their owner's process, as a
//! state machine with no IO (the device calls are the caller's).
//!
//! A device object counts against its GPU as a host object counts against
//! the node's store: the GPU has a budget (its memory), an object that
//! does not fit is a clear error naming the GPU and the amounts, and what
//! an object held comes back when the object goes, whether by reference
//! counting (its descriptor freed everywhere) or because its owner ends.
//! It also remembers the host copy made for a reader that could not open
//! the device memory (another node, or a process without the device), so
//! that copy is made once and freed with the object.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::ObjectId;
use std::collections::HashMap;

/// What one GPU holds as objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Bytes device objects may take in all (the device's memory).
    pub(crate) capacity: u64,
    pub(crate) used: u64,
    pub(crate) objects: u64,
}

#[derive(Debug)]
struct Held {
    gpu: usize,
    bytes: u64,
    staged: Option<ObjectId>,
}

/// What an object that went had held, for the caller to free.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Released {
    pub(crate) gpu: usize,
    pub(crate) bytes: u64,
    /// Its host copy, if one was made.
    pub(crate) staged: Option<ObjectId>,
}

/// The device objects of this process, by GPU (the process's ordinal).
#[derive(Debug, Default)]
pub(crate) struct DeviceTable {
    gpus: HashMap<usize, Usage>,
    objects: HashMap<ObjectId, Held>,
}

impl DeviceTable {
    /// GPU `gpu` has `bytes` of memory for objects (set once it is known).
    pub(crate) fn set_capacity(&mut self, gpu: usize, bytes: u64) {
        self.gpus.entry(gpu).or_default().capacity = bytes;
    }

    pub(crate) fn knows(&self, gpu: usize) -> bool {
        self.gpus.contains_key(&gpu)
    }

    /// Counts object `id` of `bytes` against GPU `gpu`, or says why not.
    pub(crate) fn admit(&mut self, id: ObjectId, gpu: usize, bytes: u64) -> Result<()> {
        if self.objects.contains_key(&id) {
            return Err(Error::invalid(format!(
                "device object {id} is already stored"
            )));
        }
        self.fits(gpu, bytes)?;
        let u = self.gpus.entry(gpu).or_default();
        u.used += bytes;
        u.objects += 1;
        self.objects.insert(
            id,
            Held {
                gpu,
                bytes,
                staged: None,
            },
        );
        Ok(())
    }

    /// Whether an object of `bytes` fits on GPU `gpu` now, or why not (asked
    /// before allocating, and again when admitting).
    pub(crate) fn fits(&self, gpu: usize, bytes: u64) -> Result<()> {
        let u = self.usage(gpu);
        if u.used.saturating_add(bytes) > u.capacity {
            return Err(Error::new(
                ErrorKind::StoreFull,
                format!(
                    "GPU {gpu} is full: {bytes} bytes do not fit beside the {} bytes of its {} device objects ({} bytes in all)",
                    u.used, u.objects, u.capacity
                ),
            ));
        }
        Ok(())
    }

    /// Object `id` went (no reference left): what it held.
    pub(crate) fn release(&mut self, id: ObjectId) -> Option<Released> {
        let h = self.objects.remove(&id)?;
        if let Some(u) = self.gpus.get_mut(&h.gpu) {
            u.used = u.used.saturating_sub(h.bytes);
            u.objects = u.objects.saturating_sub(1);
        }
        Some(Released {
            gpu: h.gpu,
            bytes: h.bytes,
            staged: h.staged,
        })
    }

    /// Every object goes (the process, or its cluster, ends).
    pub(crate) fn release_all(&mut self) -> Vec<(ObjectId, Released)> {
        let ids: Vec<ObjectId> = self.objects.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.release(id).map(|r| (id, r)))
            .collect()
    }

    /// The host copy of `id`, if made.
    pub(crate) fn staged(&self, id: ObjectId) -> Option<ObjectId> {
        self.objects.get(&id).and_then(|h| h.staged)
    }

    /// Records the host copy of `id`; false when the object is gone (the
    /// copy is then the caller's to drop).
    pub(crate) fn set_staged(&mut self, id: ObjectId, copy: ObjectId) -> bool {
        match self.objects.get_mut(&id) {
            Some(h) if h.staged.is_none() => {
                h.staged = Some(copy);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn usage(&self, gpu: usize) -> Usage {
        self.gpus.get(&gpu).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::WorkerId;

    fn oid(n: u64) -> ObjectId {
        ObjectId {
            owner: WorkerId(1),
            seq: n,
        }
    }

    #[test]
    fn objects_count_against_their_gpu_until_they_go() {
        let mut t = DeviceTable::default();
        t.set_capacity(0, 1000);
        t.set_capacity(1, 500);
        t.admit(oid(1), 0, 600).unwrap();
        t.admit(oid(2), 1, 500).unwrap();
        // GPU 0 has 400 left; GPU 1 none.
        assert!(t.fits(0, 400).is_ok() && t.fits(0, 401).is_err());
        let e = t.admit(oid(3), 0, 401).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StoreFull);
        assert!(e.message().contains("GPU 0 is full"), "{e}");
        assert!(t.admit(oid(3), 1, 1).is_err());
        t.admit(oid(3), 0, 400).unwrap();
        assert_eq!(
            t.usage(0),
            Usage {
                capacity: 1000,
                used: 1000,
                objects: 2
            }
        );
        assert_eq!(
            t.release(oid(1)),
            Some(Released {
                gpu: 0,
                bytes: 600,
                staged: None
            })
        );
        assert_eq!(t.release(oid(1)), None, "released once");
        t.admit(oid(4), 0, 600).unwrap();
        assert_eq!(t.usage(0).used, 1000);
    }

    #[test]
    fn a_host_copy_is_made_once_and_goes_with_the_object() {
        let mut t = DeviceTable::default();
        t.set_capacity(0, 100);
        t.admit(oid(1), 0, 10).unwrap();
        assert_eq!(t.staged(oid(1)), None);
        assert!(t.set_staged(oid(1), oid(50)));
        assert!(!t.set_staged(oid(1), oid(51)), "one copy");
        assert_eq!(t.staged(oid(1)), Some(oid(50)));
        assert!(!t.set_staged(oid(9), oid(52)), "no such object");
        assert_eq!(t.release(oid(1)).and_then(|r| r.staged), Some(oid(50)));
    }

    #[test]
    fn the_end_of_the_owner_releases_everything() {
        let mut t = DeviceTable::default();
        t.set_capacity(0, 100);
        t.set_capacity(1, 100);
        for i in 0..10 {
            t.admit(oid(i), (i % 2) as usize, 10).unwrap();
        }
        assert_eq!(t.release_all().len(), 10);
        assert_eq!(t.usage(0).used + t.usage(1).used, 0);
        assert_eq!(t.usage(0).objects + t.usage(1).objects, 0);
        assert!(t.admit(oid(0), 0, 100).is_ok());
    }
}
