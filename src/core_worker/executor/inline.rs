//! Tasks run on the connection thread that read them (see the executor's
//! design note): the one running now, and the lending of its connection's
//! reading ([`ReadingRef::lend`]) while it is busy: from the first block in
//! `get`/`wait` of the worker (on whichever thread), or once it has run
//! [`LEND_AFTER`] (the hold watch looks). Pushes behind it are then handed
//! back (blocked) or queued for the main thread, and a cancel lands,
//! rather than sit unread. The reading comes back when the task ends, on
//! its own thread.

use super::CoreWorker;
use crate::ids::WorkerId;
use crate::session::log;
use crate::transport::{Conn, Lent, Msg, ReadingRef, TaskSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A task run on its connection thread for this long lends the reading:
/// short functions run well under it ([`super::held::HOLD_SHORT`] on
/// average), one that turns out long still sees a cancel soon.
pub(super) const LEND_AFTER: Duration = Duration::from_millis(10);

/// The task running on a connection thread, if any.
#[derive(Default)]
pub(super) struct Inline {
    run: Option<Run>,
}

struct Run {
    from: WorkerId,
    conn: Arc<Conn>,
    reading: ReadingRef,
    since: Instant,
    lent: Option<Lent>,
}

/// Ends the inline run when dropped, should [`CoreWorker::end_inline`]
/// not have been reached: a panic in rustray's own code around the task
/// (user code's are caught). The task's slot is then never freed and the
/// worker could run nothing more: it exits, and its owners retry what it
/// held, as for any worker lost.
struct Ending<'a>(&'a Arc<CoreWorker>);

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.0.end_inline();
        if std::thread::panicking() {
            log!("worker exits: a task run on a connection thread left it unable to run more");
            super::exit_flushing_output(1);
        }
    }
}

impl CoreWorker {
    fn inline_state(&self) -> std::sync::MutexGuard<'_, Inline> {
        self.exec.inline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a task admitted inline (this connection thread holds the
    /// `current` slot), pushed by `from` on `conn`.
    pub(super) fn run_inline(self: &Arc<Self>, from: WorkerId, conn: &Arc<Conn>, spec: &TaskSpec) {
        // What handling earlier messages of the batch held back goes out
        // now, not after a task that may run long.
        crate::transport::flush_batched();
        let _ending = Ending(self);
        if let Some(reading) = crate::transport::this_reading() {
            self.inline_state().run = Some(Run {
                from,
                conn: conn.clone(),
                reading,
                since: Instant::now(),
                lent: None,
            });
            self.keep_watching();
        }
        self.run_current(conn, spec, true);
    }

    /// The task run on this connection thread has ended (its code, not yet
    /// its bookkeeping): the reading comes back from a lender, before the
    /// `current` slot is freed, so that no push the lender reads can be
    /// admitted to run on the lender. A no-op the second time.
    pub(super) fn end_inline(&self) {
        let mine = crate::transport::this_reading();
        let run = {
            let mut i = self.inline_state();
            match (&i.run, &mine) {
                (Some(r), Some(m)) if r.reading.same(m) => i.run.take(),
                _ => None,
            }
        };
        if let Some(Run {
            lent: Some(lent), ..
        }) = run
        {
            drop(lent);
            crate::transport::reread_input();
        }
    }

    /// Lends the reading of the connection whose task runs inline now, if
    /// one does and it is not lent already (the worker blocks, or the task
    /// runs long).
    pub(super) fn lend_inline(self: &Arc<Self>) {
        let mut i = self.inline_state();
        let Some(run) = &mut i.run else { return };
        if run.lent.is_some() {
            return;
        }
        let (cw, from, conn) = (self.clone(), run.from, run.conn.clone());
        run.lent = run.reading.lend(move |msg| {
            if let Msg::Peer(m) = msg {
                cw.handle_peer(from, &conn, m);
            }
        });
    }

    /// Whether a task runs on a connection thread now.
    pub(super) fn runs_inline(&self) -> bool {
        self.inline_state().run.is_some()
    }

    /// From the hold watch: a task run inline for [`LEND_AFTER`] lends its
    /// reading. Whether one runs (the watch keeps ticking).
    pub(super) fn lend_if_long(self: &Arc<Self>, now: Instant) -> bool {
        let since = self.inline_state().run.as_ref().map(|r| r.since);
        match since {
            Some(t) if now.saturating_duration_since(t) >= LEND_AFTER => {
                self.lend_inline();
                true
            }
            Some(_) => true,
            None => false,
        }
    }
}
