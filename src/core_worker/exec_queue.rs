//! The worker's execution queue, the sans-IO half of `executor`: which
//! pushed task runs next, when a task or an actor call may run at once on
//! the thread it arrived on, what a worker blocked in `get` hands back to
//! whom, and
//! what a cancel finds. Its transitions take the connection a task came on
//! as an opaque handle (`C`: an `Arc<Conn>` in the worker, a plain id in
//! the tests below) and return what to send on which; the executor holds
//! it behind its lock and does the sending.
//!
//! The rules: one task at a time, in arrival order (which gives actors
//! their per-caller order); a worker blocked in `get`/`wait` takes no new
//! normal task (each is handed straight back to its owner) and hands back
//! those queued behind the blocked one, grouped by owner connection, so
//! nothing waits on a task that waits; actor calls always stay.

use crate::ids::TaskId;
use crate::transport::{ActorSpec, Conn, ConnId, TaskSpec};
use std::collections::VecDeque;
use std::sync::Arc;

/// A connection a task arrived on, as the queue needs it: comparable by
/// identity, cheap to clone.
pub(crate) trait PeerHandle: Clone {
    /// The connection's identity.
    fn conn_id(&self) -> ConnId;
}

impl PeerHandle for Arc<Conn> {
    fn conn_id(&self) -> ConnId {
        self.id()
    }
}

/// Work for the worker's main thread.
pub(crate) enum Item<C> {
    Task(TaskSpec, C),
    /// An actor to construct, with the GPUs its lease holds.
    Create(ActorSpec, Vec<u32>, C),
    /// Write out what a connection thread's non-blocking send left behind.
    Flush(C),
}

/// Where a pushed task goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Back to its owner at once: the worker is blocked.
    HandBack,
    /// Run now on the arriving thread (it holds the current slot).
    Inline,
    /// Queued for the main thread (wake it).
    Queued,
    /// Cancelled before it came (see `Queue::early_cancels`): answer it as
    /// cancelled, unstarted.
    Cancelled,
}

/// What a cancel found.
#[derive(Debug)]
pub(crate) enum Cancelled {
    /// Taken out of the queue unstarted: answer it as cancelled.
    Queued(TaskSpec),
    /// A normal task running now: only the process's end stops it.
    Running,
    /// Not here (finished, never came, or an actor call running).
    Absent,
}

/// The first block of the running task: the tasks to hand back, by the
/// connection they came on (that of the running task's lease holder
/// included, even with nothing to hand back, so it stops pipelining here).
pub(crate) type HandBacks<C> = Vec<(C, Vec<TaskId>)>;

/// The queue and the slot of the task running now.
pub(crate) struct Queue<C> {
    items: VecDeque<Item<C>>,
    /// Nested `get`/`wait` blocks of the running task.
    blocked: u32,
    /// The running task, the connection it came on, and whether it is an
    /// actor call.
    current: Option<(TaskId, C, bool)>,
    /// Which run of its task the running task is (`TaskSpec::attempt`).
    current_attempt: u32,
    /// Cancels of tasks not here, the latest [`EARLY_CANCELS`]: the owner
    /// sends a cancel from whichever thread cancels, and it can overtake
    /// the task's push, sent by another; the push, when it comes, is then
    /// answered as cancelled instead of run. Kept by run (`attempt`): a
    /// cancel of a run that ended here, or was handed back, is kept too,
    /// and must not stop a later run of the same task (a retry, or the
    /// reconstruction of a lost result), which comes as the next attempt.
    early_cancels: VecDeque<(TaskId, u32)>,
}

/// How many cancels of tasks not (yet) here a worker remembers.
const EARLY_CANCELS: usize = 64;

impl<C> Default for Queue<C> {
    fn default() -> Self {
        Queue {
            items: VecDeque::new(),
            blocked: 0,
            current: None,
            current_attempt: 0,
            early_cancels: VecDeque::new(),
        }
    }
}

impl<C: PeerHandle> Queue<C> {
    /// A task pushed on `conn`. A normal task `short` here (its function
    /// ran briefly on average, and it is no `max_calls` one) finding the
    /// worker idle runs inline, pipelined or not: the thread that read it
    /// runs it, with no hand-off to the main thread. An actor call runs
    /// inline only from a caller with nothing else in flight
    /// (`spec.alone`), finding the worker idle, its calls `short` on
    /// average and no further message waiting (`more_input`, asked last).
    /// A normal task while blocked goes back.
    pub(crate) fn admit(
        &mut self,
        spec: TaskSpec,
        conn: &C,
        short: bool,
        more_input: impl FnOnce() -> bool,
    ) -> (Admit, Option<TaskSpec>) {
        if !self.early_cancels.is_empty() {
            if let Some(i) = self
                .early_cancels
                .iter()
                .position(|c| *c == (spec.id, spec.attempt))
            {
                self.early_cancels.remove(i);
                return (Admit::Cancelled, Some(spec));
            }
        }
        if self.blocked > 0 && spec.actor.is_none() {
            return (Admit::HandBack, Some(spec));
        }
        let idle = self.items.is_empty() && self.current.is_none() && self.blocked == 0;
        let inline = match spec.actor {
            None => idle && short,
            Some(_) => spec.alone && idle && short && !more_input(),
        };
        if inline {
            self.current = Some((spec.id, conn.clone(), spec.actor.is_some()));
            self.current_attempt = spec.attempt;
            return (Admit::Inline, Some(spec));
        }
        self.items.push_back(Item::Task(spec, conn.clone()));
        (Admit::Queued, None)
    }

    /// Queues work that is not a task (an actor's construction, a flush).
    pub(crate) fn push(&mut self, item: Item<C>) {
        self.items.push_back(item);
    }

    /// The next item for the main thread, none while a task runs (on a
    /// connection thread); a task taken holds the current slot.
    pub(crate) fn next(&mut self) -> Option<Item<C>> {
        if self.current.is_some() {
            return None;
        }
        let it = self.items.pop_front()?;
        if let Item::Task(s, c) = &it {
            self.current = Some((s.id, c.clone(), s.actor.is_some()));
            self.current_attempt = s.attempt;
        }
        Some(it)
    }

    /// The task queued next, if the queue's front is a task.
    pub(crate) fn front_task(&self) -> Option<&TaskSpec> {
        match self.items.front() {
            Some(Item::Task(s, _)) => Some(s),
            _ => None,
        }
    }

    /// Items queued (not counting the running task).
    pub(crate) fn queued(&self) -> usize {
        self.items.len()
    }

    /// The running task ended; true when more waits in the queue.
    pub(crate) fn finish(&mut self) -> bool {
        self.current = None;
        !self.items.is_empty()
    }

    /// The task running now, if any.
    pub(crate) fn current(&self) -> Option<TaskId> {
        self.current.as_ref().map(|(t, _, _)| *t)
    }

    /// Cancels run `attempt` of `task` here. A cancel of another run of a
    /// task queued or running here was meant for one that ended (the
    /// owner sends it from whichever thread cancels, and it can come after
    /// the push of the next run): it stops nothing.
    pub(crate) fn cancel(&mut self, task: TaskId, attempt: u32) -> Cancelled {
        if let Some(i) = self
            .items
            .iter()
            .position(|it| matches!(it, Item::Task(s, _) if s.id == task && s.attempt == attempt))
        {
            if let Some(Item::Task(spec, _)) = self.items.remove(i) {
                return Cancelled::Queued(spec);
            }
        }
        if self
            .items
            .iter()
            .any(|it| matches!(it, Item::Task(s, _) if s.id == task))
        {
            return Cancelled::Absent;
        }
        match &self.current {
            Some((t, _, false)) if *t == task && self.current_attempt == attempt => {
                Cancelled::Running
            }
            Some((t, ..)) if *t == task => Cancelled::Absent,
            _ => {
                if self.early_cancels.len() == EARLY_CANCELS {
                    self.early_cancels.pop_front();
                }
                self.early_cancels.push_back((task, attempt));
                Cancelled::Absent
            }
        }
    }

    /// The running task blocks in `get`/`wait`. `None` when nothing runs
    /// (a driver's thread, say: nothing to do) or when it was blocked
    /// already (nested: counted only); else the hand-backs to send, and
    /// then the raylet is to be told.
    pub(crate) fn block(&mut self) -> Option<Option<HandBacks<C>>> {
        let (_, conn, is_actor) = self.current.clone()?;
        self.blocked += 1;
        if self.blocked > 1 {
            return Some(None);
        }
        let mut returned: HandBacks<C> = Vec::new();
        let mut keep = VecDeque::new();
        for it in self.items.drain(..) {
            match it {
                Item::Task(s, c) if s.actor.is_none() => {
                    match returned
                        .iter_mut()
                        .find(|(rc, _)| rc.conn_id() == c.conn_id())
                    {
                        Some((_, v)) => v.push(s.id),
                        None => returned.push((c, vec![s.id])),
                    }
                }
                other => keep.push_back(other),
            }
        }
        self.items = keep;
        if !is_actor && !returned.iter().any(|(c, _)| c.conn_id() == conn.conn_id()) {
            returned.push((conn, Vec::new()));
        }
        Some(Some(returned))
    }

    /// One block ends. `None` while another is still open; else the
    /// raylet is to be told, and the running normal task's lease holder
    /// (returned) that it may push here again.
    pub(crate) fn unblock(&mut self) -> Option<Option<C>> {
        self.blocked = self.blocked.saturating_sub(1);
        if self.blocked > 0 {
            return None;
        }
        Some(match &self.current {
            Some((_, conn, false)) => Some(conn.clone()),
            _ => None,
        })
    }
}

/// Whether a connection thread, handed normal task `spec` after one that
/// came alone or not (`prev_alone`), should wait awake for the next push:
/// two lone pushes in a row are a caller waiting on each task (a sync
/// loop, a chain), whose next push is a round trip away; the first push of
/// a burst comes alone too, and no other follows it alone (except in a
/// burst of two: its second goes once the first is done, alone again, and
/// the wait awake is spent for nothing).
pub(crate) fn caller_waits_on_each(prev_alone: bool, spec: &TaskSpec) -> bool {
    spec.actor.is_none() && prev_alone && spec.alone
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ActorId, WorkerId};
    use crate::resources::ResourceSet;

    #[derive(Clone, Debug, PartialEq)]
    struct Peer(u64);

    impl PeerHandle for Peer {
        fn conn_id(&self) -> ConnId {
            ConnId::for_test(self.0)
        }
    }

    fn spec(seq: u64, actor: bool) -> TaskSpec {
        TaskSpec {
            id: TaskId {
                owner: WorkerId(0x0001_0000_0042),
                seq,
            },
            function: "f".into(),
            args: Vec::new(),
            returns: Vec::new(),
            actor: actor.then_some(ActorId(3)),
            alone: true,
            max_calls: 0,
            resources: ResourceSet::new(),
            arg_copies: Vec::new(),
            gpus: Vec::new(),
            attempt: 0,
        }
    }

    /// Only a lone normal task after another lone one makes the reader
    /// wait awake (actor calls have their own rule: they may run inline).
    #[test]
    fn a_reader_waits_awake_only_for_a_caller_waiting_on_each_task() {
        let mut s = spec(1, false);
        assert!(caller_waits_on_each(true, &s), "a sync loop");
        assert!(!caller_waits_on_each(false, &s), "the first of a burst");
        s.alone = false;
        assert!(!caller_waits_on_each(true, &s), "pipelined");
        assert!(!caller_waits_on_each(true, &spec(2, true)), "an actor call");
    }

    fn task_ids(q: &Queue<Peer>) -> Vec<u64> {
        q.items
            .iter()
            .filter_map(|it| match it {
                Item::Task(s, _) => Some(s.id.seq),
                _ => None,
            })
            .collect()
    }

    /// Tasks run one at a time in arrival order; the main thread takes
    /// nothing while a task runs.
    #[test]
    fn tasks_run_one_at_a_time_in_arrival_order() {
        let mut q = Queue::default();
        for i in 0..3 {
            assert_eq!(
                q.admit(spec(i, false), &Peer(1), false, || false).0,
                Admit::Queued
            );
        }
        let Some(Item::Task(s, _)) = q.next() else {
            panic!("a task")
        };
        assert_eq!((s.id.seq, q.current()), (0, Some(s.id)));
        assert!(q.next().is_none(), "one at a time");
        assert!(q.finish(), "more queued");
        let order: Vec<u64> = std::iter::from_fn(|| {
            let it = q.next()?;
            q.finish();
            match it {
                Item::Task(s, _) => Some(s.id.seq),
                _ => None,
            }
        })
        .collect();
        assert_eq!(order, vec![1, 2]);
        assert!(!q.finish() && q.current().is_none());
    }

    /// A lone actor call runs inline only on an idle worker whose calls are
    /// short and with no further message waiting; otherwise it queues.
    #[test]
    fn a_lone_short_actor_call_runs_inline_only_on_an_idle_worker() {
        let mut q = Queue::default();
        assert_eq!(
            q.admit(spec(0, true), &Peer(1), false, || false).0,
            Admit::Queued,
            "not short"
        );
        q.next();
        assert_eq!(
            q.admit(spec(1, true), &Peer(1), true, || false).0,
            Admit::Queued,
            "busy"
        );
        q.finish();
        q.next();
        q.finish();
        assert_eq!(
            q.admit(spec(2, true), &Peer(1), true, || true).0,
            Admit::Queued,
            "more input"
        );
        q.next();
        q.finish();
        let mut pipelined = spec(3, true);
        pipelined.alone = false;
        assert_eq!(
            q.admit(pipelined, &Peer(1), true, || false).0,
            Admit::Queued,
            "pipelined"
        );
        q.next();
        q.finish();
        let (admit, back) = q.admit(spec(5, true), &Peer(1), true, || false);
        assert_eq!(admit, Admit::Inline);
        assert_eq!(back.map(|s| s.id.seq), Some(5));
        assert_eq!(q.current().map(|t| t.seq), Some(5));
        assert!(q.next().is_none(), "the inline call holds the slot");
    }

    /// A short normal task runs inline on an idle worker, pipelined or
    /// not, more input waiting or not; one not (yet) short, or arriving
    /// while another task runs or waits in the queue, is queued; while
    /// blocked it goes back.
    #[test]
    fn a_short_task_runs_inline_on_an_idle_worker_even_pipelined() {
        let mut q = Queue::default();
        let mut pipelined = spec(0, false);
        pipelined.alone = false;
        let (admit, back) = q.admit(pipelined, &Peer(1), true, || true);
        assert_eq!(admit, Admit::Inline, "pipelined, more input waiting");
        assert_eq!(back.map(|s| s.id.seq), Some(0));
        assert_eq!(q.current().map(|t| t.seq), Some(0));
        assert!(q.next().is_none(), "the inline task holds the slot");
        assert_eq!(
            q.admit(spec(1, false), &Peer(1), true, || false).0,
            Admit::Queued,
            "busy"
        );
        assert!(q.finish(), "one queued");
        assert_eq!(
            q.admit(spec(2, false), &Peer(1), true, || false).0,
            Admit::Queued,
            "another queued before it"
        );
        while q.next().is_some() {
            q.finish();
        }
        assert_eq!(
            q.admit(spec(3, false), &Peer(1), false, || false).0,
            Admit::Queued,
            "not short"
        );
        q.next();
        assert!(q.block().is_some(), "task 3 blocks");
        assert_eq!(
            q.admit(spec(4, false), &Peer(1), true, || false).0,
            Admit::HandBack,
            "blocked"
        );
    }

    /// The first block hands back the normal tasks queued behind the
    /// running one, grouped by connection in order, and tells the running
    /// task's lease holder even with nothing of its own queued; actor
    /// calls stay. New tasks go straight back while blocked. Nested blocks
    /// are counted; the last unblock names the lease holder to tell.
    #[test]
    fn a_blocked_worker_hands_back_its_queue_by_owner() {
        let mut q = Queue::default();
        q.admit(spec(0, false), &Peer(1), false, || false);
        q.next();
        q.admit(spec(1, false), &Peer(2), true, || false);
        q.admit(spec(2, true), &Peer(3), true, || false);
        q.admit(spec(3, false), &Peer(4), true, || false);
        q.admit(spec(4, false), &Peer(2), true, || false);
        let back = q.block().expect("a task runs").expect("first block");
        let back: Vec<(u64, Vec<u64>)> = back
            .into_iter()
            .map(|(c, ts)| (c.0, ts.iter().map(|t| t.seq).collect()))
            .collect();
        assert_eq!(back, vec![(2, vec![1, 4]), (4, vec![3]), (1, vec![])]);
        assert_eq!(task_ids(&q), vec![2], "the actor call stays");
        assert_eq!(
            q.admit(spec(5, false), &Peer(2), true, || false).0,
            Admit::HandBack
        );
        assert_eq!(
            q.admit(spec(6, true), &Peer(3), true, || false).0,
            Admit::Queued
        );
        assert_eq!(q.block().map(|b| b.is_none()), Some(true), "nested");
        assert_eq!(q.unblock(), None, "still blocked");
        assert_eq!(q.unblock(), Some(Some(Peer(1))));
        assert_eq!(
            q.admit(spec(7, false), &Peer(2), true, || false).0,
            Admit::Queued
        );

        let mut idle: Queue<Peer> = Queue::default();
        assert!(idle.block().is_none(), "nothing runs: nothing to hand back");
    }

    /// A cancel takes a queued task out unstarted; a running normal task
    /// can only be stopped by the process's end; a running actor call is
    /// not this worker's to cancel.
    #[test]
    fn cancel_finds_queued_and_running_tasks() {
        let mut q = Queue::default();
        q.admit(spec(0, false), &Peer(1), false, || false);
        q.admit(spec(1, false), &Peer(1), false, || false);
        q.next();
        assert!(matches!(q.cancel(spec(1, false).id, 0), Cancelled::Queued(s) if s.id.seq == 1));
        assert!(task_ids(&q).is_empty());
        assert!(matches!(q.cancel(spec(0, false).id, 0), Cancelled::Running));
        assert!(matches!(q.cancel(spec(9, false).id, 0), Cancelled::Absent));
        q.finish();
        q.admit(spec(2, true), &Peer(1), true, || false);
        q.next();
        assert!(
            matches!(q.cancel(spec(2, true).id, 0), Cancelled::Absent),
            "an actor call"
        );
    }

    /// A cancel that overtook its task's push (sent by another thread of
    /// the owner) is remembered: the push, when it comes, is answered as
    /// cancelled, not run; others are admitted as before. The latest
    /// `EARLY_CANCELS` are remembered.
    #[test]
    fn a_cancel_that_overtook_its_push_cancels_it_when_it_comes() {
        let mut q: Queue<Peer> = Queue::default();
        assert!(matches!(q.cancel(spec(5, false).id, 0), Cancelled::Absent));
        let (admit, back) = q.admit(spec(5, false), &Peer(1), true, || false);
        assert_eq!(admit, Admit::Cancelled);
        assert_eq!(back.map(|s| s.id.seq), Some(5));
        assert!(q.current().is_none(), "it never started");
        assert_eq!(
            q.admit(spec(6, false), &Peer(1), true, || false).0,
            Admit::Inline
        );
        q.finish();
        for seq in 100..100 + EARLY_CANCELS as u64 + 1 {
            q.cancel(spec(seq, false).id, 0);
        }
        assert_eq!(
            q.admit(spec(100, false), &Peer(1), true, || false).0,
            Admit::Inline,
            "the oldest is forgotten"
        );
        q.finish();
        assert_eq!(
            q.admit(spec(101, false), &Peer(1), true, || false).0,
            Admit::Cancelled
        );
        q.cancel(spec(200, false).id, 0);
        q.admit(spec(7, false), &Peer(1), false, || false);
        q.next();
        assert!(q.block().is_some(), "the running task blocks");
        assert_eq!(
            q.admit(spec(200, false), &Peer(1), false, || false).0,
            Admit::Cancelled,
            "answered, not handed back"
        );
    }

    /// A cancel stops the run it names: one that came after its run ended
    /// here (it is kept, as it could have overtaken that run's push) does
    /// not stop the task's next run, a retry or the reconstruction of a
    /// lost result, which comes as the next attempt.
    #[test]
    fn a_cancel_of_a_run_that_ended_does_not_stop_the_next_run() {
        let mut q: Queue<Peer> = Queue::default();
        assert_eq!(
            q.admit(spec(5, false), &Peer(1), true, || false).0,
            Admit::Inline
        );
        q.finish();
        assert!(matches!(q.cancel(spec(5, false).id, 0), Cancelled::Absent));
        let mut again = spec(5, false);
        again.attempt = 1;
        assert_eq!(
            q.admit(again.clone(), &Peer(1), true, || false).0,
            Admit::Inline,
            "the next run goes ahead"
        );
        q.finish();
        // A cancel of that run overtaking its push still stops it.
        again.attempt = 2;
        q.cancel(again.id, 2);
        assert_eq!(
            q.admit(again.clone(), &Peer(1), true, || false).0,
            Admit::Cancelled
        );
        // A cancel of an earlier run that comes after the next run's push
        // stops neither that run, queued or running, nor a later one.
        again.attempt = 3;
        q.admit(spec(8, false), &Peer(1), false, || false);
        q.admit(again.clone(), &Peer(1), false, || false);
        assert!(matches!(q.cancel(again.id, 2), Cancelled::Absent));
        assert_eq!(q.queued(), 2, "the queued run stays");
        q.next();
        q.finish();
        assert!(matches!(q.next(), Some(Item::Task(s, _)) if s.attempt == 3));
        assert!(
            matches!(q.cancel(again.id, 2), Cancelled::Absent),
            "running"
        );
        assert_eq!(q.current(), Some(again.id), "it runs on");
        assert!(matches!(q.cancel(again.id, 3), Cancelled::Running));
        q.finish();
        again.attempt = 4;
        assert_eq!(
            q.admit(again, &Peer(1), true, || false).0,
            Admit::Inline,
            "no early cancel was kept for it"
        );
    }
}
