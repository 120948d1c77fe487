//! This process's log file: one line per event, with the time and the
//! process id, in the session's log directory (`open` is called once the
//! session is known; lines before that are dropped). At the bottom of the
//! module layers, so that every layer can log without importing the
//! session.

use std::io::Write;
use std::sync::Mutex;

static LOG: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Appends this process's log lines to `path` from now on.
pub(crate) fn open(path: &std::path::Path) {
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        *LOG.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
}

/// Appends one line to this process's log file.
pub(crate) fn log_line(msg: std::fmt::Arguments<'_>) {
    let mut g = LOG.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = g.as_mut() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let _ = writeln!(f, "{t:.6} [{}] {msg}", std::process::id());
    }
}

macro_rules! log {
    ($($t:tt)*) => { $crate::log::log_line(format_args!($($t)*)) };
}
pub(crate) use log;
