//! This process's mappings, as `/proc/self/smaps` describes them: which
//! file a mapping is of, and how much of it is mapped with huge pages.
//! Shared by the tests and the benches (`#[path]`).

/// A mapping of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The device of the mapped file (major, minor).
    pub dev: (u32, u32),
    pub inode: u64,
    /// kB of it mapped with huge pages (`ShmemPmdMapped`).
    pub huge_kb: u64,
}

impl Mapping {
    /// Whether this is a mapping of the file `meta` describes.
    pub fn is_of(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let dev = meta.dev();
        self.inode == meta.ino() && self.dev == (libc::major(dev), libc::minor(dev))
    }
}

/// The mapping holding `addr`, if any.
pub fn mapping_at(addr: usize) -> Option<Mapping> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut found: Option<Mapping> = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let range = fields.first().and_then(|r| r.split_once('-'));
        if let Some((a, b)) = range {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                found = None;
                if a <= addr && addr < b {
                    let (maj, min) = fields.get(3)?.split_once(':')?;
                    found = Some(Mapping {
                        dev: (
                            u32::from_str_radix(maj, 16).ok()?,
                            u32::from_str_radix(min, 16).ok()?,
                        ),
                        inode: fields.get(4)?.parse().ok()?,
                        huge_kb: 0,
                    });
                }
                continue;
            }
        }
        if let (Some(m), Some(v)) = (found.as_mut(), line.strip_prefix("ShmemPmdMapped:")) {
            m.huge_kb = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            return found;
        }
    }
    found
}
