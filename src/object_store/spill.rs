//! Spill files: the IO half of object spilling (the bookkeeping is in
//! [`table`](super::table)).
//!
//! Each spill batch is one file, with the batch's objects back to back (many
//! objects per file, as Ray's spilling writes them, so a burst of small
//! objects costs one file, not thousands). Files live in a directory of the
//! node's own (`<spill dir>/rustray-spill-<cluster>-<node>`: emulated nodes
//! share a filesystem), made on first use and removed with the node. A file
//! is deleted as soon as none of its objects is on disk any more.
//!
//! The spill directory: `Config::spill_dir` / `--spill-dir` /
//! `RUSTRAY_SPILL_DIR`, else the job's `$TMPDIR` (node-local scratch under
//! Slurm, or a burst buffer when the site points it there), else `/tmp`.

use super::Arena;
use crate::error::{Error, ErrorKind, Result};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(crate) struct SpillDir {
    dir: PathBuf,
}

impl SpillDir {
    pub(crate) fn new(base: &Path, cluster: &str, node: &str) -> SpillDir {
        SpillDir {
            dir: base.join(format!("rustray-spill-{cluster}-{node}")),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, file: u32) -> PathBuf {
        self.dir.join(format!("batch-{file}"))
    }

    /// Writes the blocks `(offset, len)` of `arena` into spill file `file`,
    /// back to back; returns where each starts in it. A failed write (a
    /// full disk, most often) removes the partial file and names the
    /// directory and the cause.
    pub(crate) fn write_batch(
        &self,
        file: u32,
        arena: &Arena,
        blocks: &[(u64, u64)],
    ) -> Result<Vec<u64>> {
        let path = self.file(file);
        let fail = |what: &str, e: std::io::Error| {
            let _ = std::fs::remove_file(&path);
            Error::new(
                ErrorKind::StoreFull,
                format!(
                    "the object store is full and spilling to {} failed ({what}: {e})",
                    self.dir.display()
                ),
            )
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| fail("creating the directory", e))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| fail("creating a spill file", e))?;
        let mut ats = Vec::with_capacity(blocks.len());
        let mut at = 0u64;
        for &(offset, len) in blocks {
            let bytes = arena
                .read(offset, len)
                .map_err(|e| fail("reading the store", std::io::Error::other(e.to_string())))?;
            f.write_all(bytes).map_err(|e| fail("writing", e))?;
            ats.push(at);
            at += len;
        }
        // Written through to the page cache is enough: spilled objects do
        // not outlive the node, so there is nothing to recover after a
        // crash (Ray does not sync its spill files either).
        f.flush().map_err(|e| fail("writing", e))?;
        Ok(ats)
    }

    /// Reads `dst.len()` bytes of spill file `file` from `at`.
    pub(crate) fn read(&self, file: u32, at: u64, dst: &mut [u8]) -> Result<()> {
        let path = self.file(file);
        let f = std::fs::File::open(&path)
            .map_err(|e| Error::io(&format!("opening spill file {}", path.display()), e))?;
        f.read_exact_at(dst, at)
            .map_err(|e| Error::io(&format!("reading spill file {}", path.display()), e))
    }

    pub(crate) fn remove(&self, file: u32) {
        let _ = std::fs::remove_file(self.file(file));
    }

    /// Removes the node's spill directory and everything in it.
    pub(crate) fn remove_all(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The spill directory's parent: the setting, else `RUSTRAY_SPILL_DIR`,
/// else `$TMPDIR`, else `/tmp`.
pub(crate) fn spill_base(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    for var in ["RUSTRAY_SPILL_DIR", "TMPDIR"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
    }
    PathBuf::from("/tmp")
}
