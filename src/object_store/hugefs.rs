//! The arena's file on a tmpfs of its own, with 2 MiB pages, mounted without
//! root.
//!
//! Why: the first put into a fresh store writes pages the kernel has never
//! handed out, and `/dev/shm` hands them out 4 KiB at a time (each a fault,
//! an allocation and a zeroing). Many kernels leave shared-memory huge pages
//! off (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` = `never`), and
//! that setting covers `/dev/shm` and memfds alike; a tmpfs mounted with
//! `huge=within_size` is governed by its own option instead, and hands out
//! 2 MiB at a time, still only when first touched. Mounting one needs
//! `CAP_SYS_ADMIN`, which an unprivileged user has inside a user namespace
//! of their own: so a short-lived child process enters a new user and mount
//! namespace, mounts the tmpfs over `/dev/shm` there (its private view),
//! creates the file, and the raylet opens that file through the child's
//! `/proc/<pid>/fd` before the child exits. The open file keeps the mount
//! alive after its namespace is gone, and the mount goes (memory and all)
//! when the last process of the node unmaps the file: the memory of a store
//! whose raylet was killed goes with its last user, where a `/dev/shm` file
//! stayed until someone removed it (the link stays, dangling, until the
//! cluster's cleanup removes it).
//!
//! Other processes of the node reach the file through a symbolic link at
//! the arena's usual path (`/dev/shm/rustray-<cluster>-<node>`) pointing at
//! the raylet's `/proc/<pid>/fd/<n>`: a process of the same user that sees
//! the raylet in its `/proc` opens it there. Processes that share
//! `/dev/shm` but not the raylet's pid namespace (containers run with a
//! shared IPC namespace only), or a raylet `/proc` hides (a non-dumpable
//! binary, a security module's policy), cannot: there the store must be a
//! plain file, `RUSTRAY_STORE_HUGE_PAGES=0`, and the error opening it says
//! so.
//!
//! Where user namespaces are off (`user.max_user_namespaces` = 0, some
//! hardened kernels) the child fails at its first step, and the caller
//! falls back to a plain file in `/dev/shm`: the store works, with 4 KiB
//! pages.
//!
//! The child is forked from a process that may have other threads, so it
//! makes system calls only, on buffers prepared before the fork: no
//! allocation, no lock, no panic.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long the child may take to report (it makes a dozen system calls).
const CHILD_TIMEOUT: Duration = Duration::from_secs(5);

/// The steps of the child, named in the error when one fails.
const STEPS: [&str; 8] = [
    "",
    "entering a new user and mount namespace",
    "denying setgroups in the new user namespace",
    "mapping the user id",
    "mapping the group id",
    "mounting a tmpfs with huge pages",
    "creating the store file",
    "sizing the store file",
];

/// Where the child mounts its tmpfs, in its own view of the file system.
const MOUNT_POINT: &str = "/dev/shm";

/// Creates a `len`-byte file named `name` on a fresh tmpfs with 2 MiB
/// pages, private to the file: returns it opened read-write, or why not.
pub(crate) fn create(name: &str, len: u64) -> Result<std::fs::File, String> {
    if name.is_empty() || name.contains('/') {
        return Err(format!("{name:?} is not a file name"));
    }
    // Room for the file, rounded up to whole huge pages.
    let size = len
        .checked_next_multiple_of(2 << 20)
        .ok_or("store too large")?;
    let max_fd = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft.min(1 << 16) as i32);
    let prepared = Prepared {
        max_fd,
        uid_map: format!("{0} {0} 1", nix::unistd::geteuid()).into_bytes(),
        gid_map: format!("{0} {0} 1", nix::unistd::getegid()).into_bytes(),
        mount_data: cstring(format!(
            "size={size},huge=within_size,mode=0700,nr_inodes=4"
        ))?,
        mount_point: cstring(MOUNT_POINT.to_string())?,
        file: cstring(format!("{MOUNT_POINT}/{name}"))?,
        len: i64::try_from(len).map_err(|_| "store too large")?,
    };
    let (mut ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    // SAFETY: the child runs `child` only, which makes system calls on
    // memory prepared above and ends in `_exit`: it allocates nothing and
    // takes no lock another thread of this process might have held at the
    // fork.
    let pid = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => {
            let code = child(&prepared, theirs.as_fd(), ours.as_raw_fd());
            // SAFETY: ends the child without running this process's
            // exit handlers or destructors (they belong to the parent).
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
    };
    drop(theirs);
    let r = take_file(&mut ours, pid, len);
    // Closing our end lets a child that reported go; one that did not is
    // killed. Either way it is reaped, within a bound.
    drop(ours);
    reap(pid, r.is_err());
    r
}

/// What the child needs, prepared before the fork.
struct Prepared {
    /// Descriptors the child closes one by one where close_range is
    /// missing: the open-file limit, at most 65,536.
    max_fd: i32,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    mount_data: CString,
    mount_point: CString,
    file: CString,
    len: i64,
}

fn cstring(s: String) -> Result<CString, String> {
    CString::new(s).map_err(|_| "a NUL byte in a path".to_string())
}

/// The child: sets the file up, reports `[0, fd]` (or `[step, errno]`) on
/// `sock`, and waits for the parent to close its end. Every other
/// descriptor the fork gave the child is closed first: its copy of the
/// parent's end would keep that wait from ever ending, and copies of any
/// other socket or pipe of the parent (another store's helper, say) would
/// hold them open behind the parent's back.
fn child(p: &Prepared, sock: std::os::fd::BorrowedFd<'_>, parent_end: i32) -> i32 {
    let keep = sock.as_raw_fd() as libc::c_uint;
    // SAFETY: close_range only closes descriptors, none of which this
    // child uses but `sock` (left out of both ranges).
    let closed = unsafe {
        (keep == 0 || libc::syscall(libc::SYS_close_range, 0, keep - 1, 0) == 0)
            && libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0) == 0
    };
    if !closed {
        // Kernels before 5.9 have no close_range (and a seccomp filter may
        // refuse it): the parent's end first, then one by one up to a
        // bound (closing a descriptor closed already does nothing, and
        // nothing has been opened since that could have taken a number).
        let _ = nix::unistd::close(parent_end);
        for fd in 0..p.max_fd {
            if fd != keep as i32 {
                let _ = nix::unistd::close(fd);
            }
        }
    }
    let report = |step: u8, value: i32| {
        let mut msg = [0u8; 5];
        msg[0] = step;
        msg[1..].copy_from_slice(&value.to_le_bytes());
        let _ = nix::unistd::write(sock, &msg);
    };
    match setup(p) {
        Ok(fd) => {
            report(0, fd.as_raw_fd());
            // Keeps `fd` open until the parent has opened the file.
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(sock, &mut b);
            0
        }
        Err((step, e)) => {
            report(step, e as i32);
            1
        }
    }
}

fn setup(p: &Prepared) -> Result<OwnedFd, (u8, nix::errno::Errno)> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let write_file = |path: &std::ffi::CStr, data: &[u8]| {
        let fd = open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        nix::unistd::write(&fd, data).map(drop)
    };
    nix::sched::unshare(
        nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNS,
    )
    .map_err(|e| (1, e))?;
    // An unprivileged process may map its group only after giving up
    // setgroups (kernels before 3.19 have no such file, and no such rule).
    match write_file(c"/proc/self/setgroups", b"deny") {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err((2, e)),
    }
    write_file(c"/proc/self/uid_map", &p.uid_map).map_err(|e| (3, e))?;
    write_file(c"/proc/self/gid_map", &p.gid_map).map_err(|e| (4, e))?;
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some(c"rustray"),
        p.mount_point.as_c_str(),
        Some(c"tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(p.mount_data.as_c_str()),
    )
    .map_err(|e| (5, e))?;
    let fd = open(
        p.file.as_c_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(|e| (6, e))?;
    nix::unistd::ftruncate(&fd, p.len).map_err(|e| (7, e))?;
    Ok(fd)
}

/// Reads the child's report (bounded) and opens the file it names.
fn take_file(
    sock: &mut UnixStream,
    pid: nix::unistd::Pid,
    len: u64,
) -> Result<std::fs::File, String> {
    sock.set_read_timeout(Some(CHILD_TIMEOUT))
        .map_err(|e| format!("socket timeout: {e}"))?;
    let mut msg = [0u8; 5];
    sock.read_exact(&mut msg)
        .map_err(|e| format!("no word from the namespace helper: {e}"))?;
    let value = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
    if msg[0] != 0 {
        let step = STEPS.get(usize::from(msg[0])).copied().unwrap_or("?");
        return Err(format!(
            "{step}: {}",
            nix::errno::Errno::from_raw(value).desc()
        ));
    }
    let path = format!("/proc/{pid}/fd/{value}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {path}: {e}"))?;
    let got = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    if got != len {
        return Err(format!("{path} has {got} bytes, not {len}"));
    }
    Ok(file)
}

/// Reaps the child: it exits once our end of the socket closes; one that
/// failed to report (or takes longer than a bound) is killed first.
fn reap(pid: nix::unistd::Pid, kill: bool) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    if kill {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Ok(WaitStatus::StillAlive) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
            Err(nix::errno::Errno::EINTR) => {}
            _ => return,
        }
    }
}

// The probe and the smaps reader the integration tests use (written for
// their crates, where `pub` reaches them).
#[cfg(test)]
#[path = "../../tests/common/smaps.rs"]
#[allow(dead_code, unreachable_pub)]
mod test_smaps;
#[cfg(test)]
#[path = "../../tests/common/userns.rs"]
#[allow(unreachable_pub)]
mod test_userns;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use super::test_smaps as smaps;
    pub(crate) use super::test_userns::huge_tmpfs_allowed as machine_allows;

    #[test]
    fn the_file_gets_huge_pages_where_the_machine_allows() {
        if !machine_allows() {
            eprintln!("skipped: no user namespaces with tmpfs mounts here");
            return;
        }
        let len = 8u64 << 20;
        let file = create("rustray-hugefs-test", len).expect("create");
        // SAFETY: a file of this test's own, which nobody else maps.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map");
        map.fill(7);
        let huge_kb = smaps::mapping_at(map.as_ptr() as usize).map_or(0, |m| m.huge_kb);
        assert!(huge_kb >= 2048, "the store's pages are not huge");
        // A second opening of the same file sees the bytes (the path other
        // processes take, through /proc/<pid>/fd).
        let again =
            std::fs::File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("reopen");
        // SAFETY: read-only mapping of the file above.
        let view = unsafe { memmap2::Mmap::map(&again) }.expect("map again");
        assert_eq!(view.len(), len as usize);
        assert!(view.iter().step_by(4096).all(|b| *b == 7));
    }

    #[test]
    fn a_bad_name_is_refused() {
        assert!(create("a/b", 1 << 20).is_err());
        assert!(create("", 1 << 20).is_err());
    }
}
