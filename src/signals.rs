//! Termination signals (SIGTERM from Slurm or `kill`, SIGINT from Ctrl-C,
//! SIGHUP) turned into an orderly shutdown: the handler only writes the
//! signal number to a pipe (async-signal-safe); a thread reading the pipe
//! runs the shutdown. Without this a raylet killed by `scancel` would leave
//! its shared-memory arena behind.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

/// The pipe's write end, kept open for the process's life.
static PIPE: OnceLock<OwnedFd> = OnceLock::new();
static PIPE_W: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_W.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a local
        // (nix's write takes a borrowed fd, which a handler cannot build).
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Runs `f(signal)` on a thread when SIGTERM, SIGINT or SIGHUP arrives.
/// Call once per process.
pub(crate) fn on_terminate(f: impl FnOnce(i32) + Send + 'static) {
    let Ok((read_end, write_end)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return;
    };
    PIPE_W.store(write_end.as_raw_fd(), Ordering::Relaxed);
    let _ = PIPE.set(write_end);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2), which is
        // async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
    let _ = std::thread::Builder::new()
        .name("rustray-signals".into())
        .spawn(move || {
            let mut input = std::fs::File::from(read_end);
            let mut b = [0u8; 1];
            loop {
                match input.read(&mut b) {
                    Ok(1) => {
                        f(b[0] as i32);
                        return;
                    }
                    Ok(_) => return,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
}
