//! The allocator inside the store's one shared-memory arena, with no IO.
//!
//! First fit by address with coalescing: a freed block is merged with its
//! neighbours, and the lowest-addressed hole that fits is reused. Reusing the
//! same low addresses keeps the arena's touched pages warm, which is what makes
//! a repeated large `put` run at memcpy speed instead of page-fault speed.

use std::collections::{BTreeMap, HashMap};

/// Why an allocation failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AllocError {
    /// Larger than the whole arena: it can never fit.
    TooLarge { size: u64, capacity: u64 },
    /// No hole is large enough right now.
    Full { size: u64, free: u64 },
}

#[derive(Debug)]
pub(crate) struct Allocator {
    capacity: u64,
    align: u64,
    /// offset -> length of each free hole
    free: BTreeMap<u64, u64>,
    /// offset -> length of each live block
    used: HashMap<u64, u64>,
    used_bytes: u64,
}

impl Allocator {
    pub(crate) fn new(capacity: u64, align: u64) -> Allocator {
        let capacity = capacity / align * align;
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Allocator {
            capacity,
            align,
            free,
            used: HashMap::new(),
            used_bytes: 0,
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used_bytes
    }

    /// Allocates `size` bytes (rounded up to the alignment); returns the offset.
    pub(crate) fn alloc(&mut self, size: u64) -> Result<u64, AllocError> {
        let len = size.max(1).div_ceil(self.align).saturating_mul(self.align);
        if len > self.capacity {
            return Err(AllocError::TooLarge {
                size,
                capacity: self.capacity,
            });
        }
        let hole = self
            .free
            .iter()
            .find(|(_, l)| **l >= len)
            .map(|(o, l)| (*o, *l));
        let Some((off, hole_len)) = hole else {
            return Err(AllocError::Full {
                size,
                free: self.capacity - self.used_bytes,
            });
        };
        self.free.remove(&off);
        if hole_len > len {
            self.free.insert(off + len, hole_len - len);
        }
        self.used.insert(off, len);
        self.used_bytes += len;
        Ok(off)
    }

    /// Frees the block at `offset`; false if there is none (double free).
    pub(crate) fn free(&mut self, offset: u64) -> bool {
        let Some(mut len) = self.used.remove(&offset) else {
            return false;
        };
        self.used_bytes -= len;
        let mut start = offset;
        if let Some(next_len) = self.free.remove(&(offset + len)) {
            len += next_len;
        }
        if let Some((&prev, &prev_len)) = self.free.range(..offset).next_back() {
            if prev + prev_len == offset {
                self.free.remove(&prev);
                start = prev;
                len += prev_len;
            }
        }
        self.free.insert(start, len);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuses_low_addresses() {
        let mut a = Allocator::new(1024, 64);
        let x = a.alloc(100).unwrap();
        let y = a.alloc(64).unwrap();
        assert_eq!((x, y), (0, 128));
        assert!(a.free(x));
        assert_eq!(a.alloc(128).unwrap(), 0);
    }

    #[test]
    fn freeing_coalesces_both_neighbours() {
        let mut a = Allocator::new(64 * 4, 64);
        let b: Vec<u64> = (0..4).map(|_| a.alloc(64).unwrap()).collect();
        assert!(matches!(a.alloc(1), Err(AllocError::Full { .. })));
        a.free(b[0]);
        a.free(b[2]);
        a.free(b[1]);
        assert_eq!(a.alloc(64 * 3).unwrap(), 0);
        a.free(0);
        a.free(b[3]);
        assert_eq!(a.used(), 0);
        assert_eq!(a.alloc(64 * 4).unwrap(), 0);
    }

    #[test]
    fn too_large_and_double_free_are_reported() {
        let mut a = Allocator::new(4096, 64);
        assert_eq!(
            a.alloc(5000),
            Err(AllocError::TooLarge {
                size: 5000,
                capacity: 4096
            })
        );
        let x = a.alloc(10).unwrap();
        assert!(a.free(x));
        assert!(!a.free(x));
        assert!(!a.free(12345));
    }

    #[test]
    fn random_alloc_free_keeps_accounting_exact() {
        let mut a = Allocator::new(1 << 20, 64);
        let mut live = Vec::new();
        let mut seed = 12345u64;
        for _ in 0..5000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if seed % 3 == 0 && !live.is_empty() {
                let i = (seed >> 33) as usize % live.len();
                let off: u64 = live.swap_remove(i);
                assert!(a.free(off));
            } else if let Ok(off) = a.alloc((seed >> 40) % 20000 + 1) {
                assert!(!live.contains(&off));
                live.push(off);
            }
        }
        for off in live {
            assert!(a.free(off));
        }
        assert_eq!(a.used(), 0);
        assert_eq!(a.free.len(), 1);
    }
}
