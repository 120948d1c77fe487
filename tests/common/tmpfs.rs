//! A tmpfs mounted for one test or benchmark row (a store directory with
//! huge pages, say), unmounted when dropped. Mounting needs root, as the
//! emulated Slurm cluster does (`make test` runs as root).

use std::path::PathBuf;
use std::process::Command;

pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs with `options` (`mount -o`) at a fresh directory
    /// named after `name` and this process; the error says why not.
    pub fn mount(name: &str, options: &str) -> Result<Tmpfs, String> {
        let dir = PathBuf::from(format!("/tmp/rustray-{name}-{}", std::process::id()));
        let _ = Command::new("umount").arg(&dir).status();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "rustray-test"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount -t tmpfs -o {options} on {} failed (it needs root; `huge=` also needs a kernel with transparent huge pages)",
                dir.display()
            ));
        }
        Ok(Tmpfs(dir))
    }

    /// The names of the files in it.
    pub fn files(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A cluster still up (a failed test's) maps its store here: stop it
        // first, and detach the mount lazily should anything still hold it.
        rustray::shutdown();
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}
