//! Termination signals (SIGTERM from Slurm or `kill`, SIGINT from Ctrl-C,
//! SIGHUP) turned into an orderly shutdown: the handler only writes the
//! signal number to a pipe (async-signal-safe); a thread reading the pipe
//! runs the shutdown. Without this a raylet killed by `scancel` would leave
//! its shared-memory arena behind.

use std::sync::atomic::{AtomicI32, Ordering};

static PIPE_W: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_W.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a local.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Runs `f(signal)` on a thread when SIGTERM, SIGINT or SIGHUP arrives.
/// Call once per process.
pub(crate) fn on_terminate(f: impl FnOnce(i32) + Send + 'static) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    PIPE_W.store(fds[1], Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installing a handler that only calls write(2); the
        // sigaction struct is zeroed then filled.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let read_fd = fds[0];
    let _ = std::thread::Builder::new()
        .name("rustray-signals".into())
        .spawn(move || {
            let mut b = 0u8;
            loop {
                // SAFETY: reading one byte into a local from our pipe.
                let n = unsafe { libc::read(read_fd, (&mut b as *mut u8).cast(), 1) };
                if n == 1 {
                    f(b as i32);
                    return;
                }
                if n == 0 {
                    return;
                }
            }
        });
}
