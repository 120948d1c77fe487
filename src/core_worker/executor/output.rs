//! A worker's stdout and stderr: each line copied to the worker's log file
//! and to the terminal prefixed with `(pid=N)`, as Ray's driver prints
//! worker output; and the worker's exit, once what it printed is out.

use crate::session::Session;

/// Redirects stdout/stderr through a pipe whose lines are copied, prefixed
/// with this worker's pid, to the inherited terminal and to the log file.
pub(super) fn forward_output(session: &Session) {
    let pid = std::process::id();
    let Ok((read_end, write_end)) = nix::unistd::pipe() else {
        return;
    };
    // The terminal, kept before stdout is pointed at the pipe.
    let Ok(term) = nix::unistd::dup(std::io::stdout()) else {
        return;
    };
    let _ = nix::unistd::dup2_stdout(&write_end);
    let _ = nix::unistd::dup2_stderr(&write_end);
    drop(write_end);
    let log_path = session.log_dir().join(format!("worker-{pid}.out"));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    *OUTPUT_DONE.lock().unwrap_or_else(|p| p.into_inner()) = Some(done_rx);
    let _ = std::thread::Builder::new()
        .name("rustray-output".into())
        .spawn(move || {
            use std::io::{BufRead, Write};
            let (input, mut out) = (std::fs::File::from(read_end), std::fs::File::from(term));
            let mut logf = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .ok();
            let mut r = std::io::BufReader::new(input);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                let mut prefixed = format!("(pid={pid}) ").into_bytes();
                prefixed.extend_from_slice(&line);
                let _ = out.write_all(&prefixed);
                if let Some(f) = logf.as_mut() {
                    let _ = f.write_all(&line);
                }
                line.clear();
            }
            drop(done_tx);
        });
}

/// Set once the process has decided to exit: no task starts after that.
static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In a worker that is exiting (its raylet is gone, say), a task that was
/// about to start never does: its thread waits for the exit, which comes
/// within the output flush's bound. Running it would repeat its side
/// effects for nothing (its result cannot be stored), and its owner
/// retries it elsewhere once this process is gone.
pub(super) fn hold_if_exiting() {
    while EXITING.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Ends when the output forwarder has copied everything (it drops its
/// sender at the pipe's end).
static OUTPUT_DONE: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>> =
    std::sync::Mutex::new(None);

/// Exits the worker once what it printed has reached the terminal and its
/// log (bounded: a stuck terminal does not keep it alive).
pub(crate) fn exit_flushing_output(code: i32) -> ! {
    use std::io::Write;
    EXITING.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Pointing stdout and stderr at /dev/null closes the pipe's only write
    // ends, so the forwarder reads to its end and stops.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let rx = OUTPUT_DONE.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(rx) = rx {
        let _ = rx.recv_timeout(std::time::Duration::from_millis(500));
    }
    std::process::exit(code)
}
