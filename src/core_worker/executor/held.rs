//! Results of short tasks held back to travel in batches (see the
//! executor's design note): a finished task's result waits, on its
//! connection, while the task queued next is short here on average
//! ([`HOLD_SHORT`]); what is held goes out with the next result sent,
//! when the main thread runs out of work or a task blocks, and, when the
//! task behind turns out long, from the hold watch [`HOLD_MAX`] after the
//! hold began. A hold also ends when the process does, and before a task
//! blocks in `get`/`wait` (it may wait for a held result). The watch
//! also lends the reading of a task run on its connection thread that
//! runs long (see `inline`); it parks while nothing is held and no such
//! task runs.

use super::ExecShared;
use crate::core_worker::CoreWorker;
use crate::protocol::PeerMsg;
use crate::session::log;
use crate::transport::Conn;
use std::sync::Arc;

/// Results held back: on which connections, since when, and whether the
/// hold watch sleeps until the next hold.
#[derive(Default)]
pub(super) struct Held {
    conns: Vec<Arc<Conn>>,
    since: Option<std::time::Instant>,
    watch: Watch,
}

#[derive(Default, PartialEq)]
enum Watch {
    /// Not started (no result was held yet in this process).
    #[default]
    None,
    /// Checking every [`HOLD_MAX`].
    Ticking,
    /// Parked until a result is held or a task runs on a connection
    /// thread.
    Parked,
}

/// The hold watch parks after this long with nothing held (and no task
/// running on a connection thread).
const WATCH_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Results this worker process held back since it started (see
/// `rustray::__private::held_results`: tests check the batching ran).
pub(crate) static HELD_RESULTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A result is held back (to go out in one write with the next ones)
/// only while the task queued next takes less than this on average here...
pub(super) const HOLD_SHORT: std::time::Duration = std::time::Duration::from_micros(100);
/// ...and for at most this long.
const HOLD_MAX: std::time::Duration = std::time::Duration::from_millis(1);

impl ExecShared {
    /// Records one run of `function` taking `ns`.
    pub(super) fn ran(&self, function: &str, ns: u64) {
        let mut m = self.run_ns.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(function) {
            Some(avg) => *avg = (*avg / 4) * 3 + ns / 4,
            None => {
                m.insert(function.to_string(), ns);
            }
        }
    }

    /// Whether `function` ran here before, and briefly on average.
    pub(super) fn runs_short(&self, function: &str) -> bool {
        let m = self.run_ns.lock().unwrap_or_else(|p| p.into_inner());
        m.get(function)
            .is_some_and(|ns| *ns < HOLD_SHORT.as_nanos() as u64)
    }

    /// Writes every result held back. Before the main thread waits, before
    /// a task blocks (it may wait for one of them), before the process
    /// ends, with any result sent, and by the hold watch past [`HOLD_MAX`].
    pub(crate) fn flush_held(&self) {
        for c in self.take_held() {
            let _ = c.flush();
        }
    }

    /// [`ExecShared::flush_held`] for a connection thread, which must
    /// never block writing: what a socket does not take now goes out from
    /// a flusher thread.
    pub(crate) fn post_held(&self) {
        for c in self.take_held() {
            let _ = c.post_flush();
        }
    }

    /// The connections results are held on; the hold ends.
    fn take_held(&self) -> Vec<Arc<Conn>> {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        h.since = None;
        std::mem::take(&mut h.conns)
    }

    pub(super) fn any_held(&self) -> bool {
        !self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .conns
            .is_empty()
    }
}

impl CoreWorker {
    /// Holds `done` back on `conn` if a short task is queued next (its
    /// result then goes out with this one) and nothing was held for
    /// longer than [`HOLD_MAX`]; false when the caller must send it. A
    /// task that turns out long does not keep what was held: the hold
    /// watch writes it once [`HOLD_MAX`] passed.
    pub(super) fn hold_result(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        done: &PeerMsg,
        next_short: bool,
    ) -> bool {
        if !next_short {
            return false;
        }
        let mut h = self.exec.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if h.since
            .is_some_and(|t| now.saturating_duration_since(t) >= HOLD_MAX)
        {
            return false;
        }
        if !self.watching(&mut h) {
            // Without the watch nothing bounds a hold: none.
            return false;
        }
        if conn.hold(done).is_err() {
            return false;
        }
        if !h.conns.iter().any(|c| c.id() == conn.id()) {
            h.conns.push(conn.clone());
        }
        h.since.get_or_insert(now);
        HELD_RESULTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Sees that the hold watch ticks (started, or woken from parking);
    /// false when it could not be started.
    fn watching(self: &Arc<Self>, h: &mut Held) -> bool {
        match h.watch {
            Watch::Ticking => {}
            Watch::Parked => {
                h.watch = Watch::Ticking;
                self.exec.held_cv.notify_one();
            }
            Watch::None => {
                let cw = self.clone();
                let started = std::thread::Builder::new()
                    .name("rustray-hold".into())
                    .spawn(move || cw.watch_held());
                if started.is_err() {
                    return false;
                }
                h.watch = Watch::Ticking;
            }
        }
        true
    }

    /// A task runs on a connection thread: the hold watch ticks meanwhile
    /// (it lends the reading of one that runs long: see `inline`).
    pub(super) fn keep_watching(self: &Arc<Self>) {
        let mut h = self.exec.held.lock().unwrap_or_else(|p| p.into_inner());
        if h.watch != Watch::Ticking && !self.watching(&mut h) {
            log!("no thread to watch tasks run on connection threads");
        }
    }

    /// The hold watch: writes results held back for [`HOLD_MAX`] (the task
    /// behind them ran long), and lends the reading of a task run on its
    /// connection thread for [`super::inline::LEND_AFTER`]. Ticks while
    /// results are held or such a task runs, parks after [`WATCH_IDLE`]
    /// with neither.
    fn watch_held(self: &Arc<Self>) {
        let mut idle_since = std::time::Instant::now();
        loop {
            if self.lend_if_long(std::time::Instant::now()) {
                idle_since = std::time::Instant::now();
            }
            let wait = {
                let mut h = self.exec.held.lock().unwrap_or_else(|p| p.into_inner());
                let now = std::time::Instant::now();
                match h.since {
                    Some(t) if now.saturating_duration_since(t) >= HOLD_MAX => {
                        drop(h);
                        self.exec.flush_held();
                        continue;
                    }
                    Some(t) => {
                        idle_since = now;
                        HOLD_MAX.saturating_sub(now.saturating_duration_since(t))
                    }
                    // (A task set running on a connection thread since the
                    // look above waits for this lock to wake the watch, or
                    // is seen here: nothing runs unwatched.)
                    None if now.saturating_duration_since(idle_since) >= WATCH_IDLE
                        && !self.runs_inline() =>
                    {
                        h.watch = Watch::Parked;
                        while h.watch == Watch::Parked {
                            h = self.exec.held_cv.wait(h).unwrap_or_else(|p| p.into_inner());
                        }
                        idle_since = std::time::Instant::now();
                        continue;
                    }
                    None => HOLD_MAX,
                }
            };
            std::thread::sleep(wait);
        }
    }
}
