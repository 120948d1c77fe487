//! Whether this machine lets a user mount a tmpfs of their own. Shared by
//! the integration tests and the library's unit tests (`#[path]`).

/// Whether this machine lets this user mount a huge-page tmpfs in a user
/// namespace of their own, asked of util-linux's `unshare` (not of
/// rustray): where it does, the default store must have huge pages.
/// (Mapped to root there: util-linux's `mount` refuses any other user
/// itself.)
pub fn huge_tmpfs_allowed() -> bool {
    // `deny` takes huge pages from every tmpfs, whatever its mount says.
    let deny = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .is_ok_and(|s| s.contains("[deny]"));
    !deny
        && std::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg("mount -t tmpfs -o size=4m,huge=within_size rustray-probe /dev/shm")
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}
