//! Leasing on its own: a test `Env`, made-up times, effects read back
//! instead of sent. The helpers here set up classes, queues and leases for
//! the other sans-IO tests of the submitter too.

use super::super::{Target, TaskEntry};
use super::*;
use crate::error::ErrorKind;
use crate::protocol::PeerMsg;
use crate::resources::ResourceSet;
use crate::transport::TaskSpec;
use std::cell::Cell;

pub(crate) const OWNER: WorkerId = WorkerId(0x0001_0000_1234);

/// The process as leasing sees it: node 0 of nodes 0, 1 and 2.
pub(crate) struct TestEnv {
    live: Vec<u16>,
    req: Cell<u64>,
    pub(crate) submitting: Cell<bool>,
}

impl Env for TestEnv {
    fn local_node(&self) -> u16 {
        0
    }
    fn live_nodes(&self) -> Vec<u16> {
        self.live.clone()
    }
    fn next_req(&self) -> u64 {
        self.req.set(self.req.get() + 1);
        self.req.get()
    }
    fn submitting(&self) -> bool {
        self.submitting.get()
    }
}

pub(crate) fn env() -> TestEnv {
    TestEnv {
        live: vec![0, 1, 2],
        req: Cell::new(0),
        submitting: Cell::new(false),
    }
}

pub(crate) fn class(spread: bool) -> SchedKey {
    SchedKey {
        shape: ResourceSet::new(),
        node: None,
        soft: false,
        spread,
    }
}

/// `n` tasks queued in `class`, their ids in order.
pub(crate) fn queue(sub: &mut Submitter, class: &SchedKey, n: u64) -> Vec<TaskId> {
    (0..n)
        .map(|seq| {
            let id = TaskId { owner: OWNER, seq };
            let spec = TaskSpec {
                id,
                function: "f".into(),
                args: Vec::new(),
                returns: Vec::new(),
                actor: None,
                alone: false,
                max_calls: 0,
                resources: ResourceSet::new(),
                arg_copies: Vec::new(),
                gpus: Vec::new(),
                attempt: 0,
            };
            let entry = Box::new(TaskEntry {
                key: Some(class.clone()),
                status: Status::Queued,
                ..TaskEntry::waiting(spec, Vec::new(), None, Target::Default)
            });
            sub.tasks.insert(id, entry);
            sub.classes
                .entry(class.clone())
                .or_default()
                .queue
                .push_back(id);
            id
        })
        .collect()
}

/// The tasks pushed, in order, with the worker and connection each went to.
pub(crate) fn pushed(fx: &Effects) -> Vec<(WorkerId, ConnId, TaskId)> {
    fx.pushes
        .iter()
        .map(|p| (p.worker, p.conn, spec_of(p).id))
        .collect()
}

/// The spec a push's frame carries.
pub(crate) fn spec_of(p: &Push) -> crate::transport::TaskSpec {
    match crate::codec::decode(&p.frame[4..], "push") {
        Ok(crate::protocol::Msg::Peer(PeerMsg::PushTask(spec))) => spec,
        other => panic!("not a push: {other:?}"),
    }
}

/// A class whose tasks' service time is not known yet runs one task
/// per leased worker, so a burst asks for more leases (up to
/// `MAX_PENDING_LEASES` at once) instead of queueing behind one.
#[test]
fn an_unmeasured_class_runs_one_task_per_lease_and_asks_for_more() {
    let (env, class, now) = (env(), class(false), Instant::now());
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 6);
    let mut fx = Effects::default();
    sub.dispatch(&class, now, &env, &mut fx);
    assert!(fx.pushes.is_empty(), "no lease yet");
    let reqs: Vec<u64> = fx.lease_requests.iter().map(|r| r.req).collect();
    assert_eq!(reqs.len(), MAX_PENDING_LEASES);
    assert!(fx
        .lease_requests
        .iter()
        .all(|r| r.node == 0 && r.spill == Spill::Now && r.fallback));

    let (worker, conn) = (WorkerId::new(0, 4000), ConnId::for_test(1));
    let lease = LeaseId::new(0, 1);
    let mut fx = Effects::default();
    let kept = sub.lease_granted(
        reqs[0],
        lease,
        worker,
        Some(conn),
        vec![3],
        now,
        &env,
        &mut fx,
    );
    assert!(kept);
    assert_eq!(pushed(&fx), vec![(worker, conn, tasks[0])]);
    assert_eq!(spec_of(&fx.pushes[0]).gpus, vec![3]);
    assert_eq!(sub.tasks[&tasks[0]].status, Status::Running(worker));
    // Five still wait, one lease each: requests are topped up to the
    // cap again.
    assert_eq!(fx.lease_requests.len(), 1);
    assert_eq!(sub.classes[&class].pending_requests, MAX_PENDING_LEASES);
}

/// Once its tasks are known to be short, a class pipelines up to
/// `PIPELINE` of them on each leased worker, and asks for leases only
/// for what exceeds that.
#[test]
fn short_tasks_are_pipelined_up_to_the_depth() {
    let (env, class) = (env(), class(false));
    let (sub, tasks, fx) = short_class_leased(&env, &class, PIPELINE + 4);
    let got: Vec<TaskId> = pushed(&fx).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(got, tasks[..PIPELINE].to_vec(), "in submission order");
    assert_eq!(sub.classes[&class].queue.len(), 4);
    assert_eq!(alone(&fx), vec![false; PIPELINE], "others behind each");
}

/// `n` tasks of a class known to be short (5 us), queued, then a lease
/// granted for them (to worker 4001): what the grant pushed.
fn short_class_leased(
    env: &TestEnv,
    class: &SchedKey,
    n: usize,
) -> (Submitter, Vec<TaskId>, Effects) {
    let now = Instant::now();
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, class, n as u64);
    sub.classes.get_mut(class).unwrap().service = Some(Duration::from_micros(5));
    let worker = WorkerId::new(0, 4001);
    let fx = first_lease(&mut sub, env, class, worker, LeaseId::new(0, 2), now);
    (sub, tasks, fx)
}

/// The class's tasks dispatched with no lease yet, and the lease asked
/// for granted at `at` as `lease` on `worker`: what the grant pushes.
fn first_lease(
    sub: &mut Submitter,
    env: &TestEnv,
    class: &SchedKey,
    worker: WorkerId,
    lease: LeaseId,
    at: Instant,
) -> Effects {
    let mut fx = Effects::default();
    sub.dispatch(class, at, env, &mut fx);
    let req = fx.lease_requests[0].req;
    let mut fx = Effects::default();
    let conn = ConnId::for_test(worker.0 & 0xff);
    sub.lease_granted(req, lease, worker, Some(conn), Vec::new(), at, env, &mut fx);
    fx
}

/// A task whose push cannot fit one message (too many small objects
/// passed by ref, their values copied in) never goes in flight: it leaves the queue to fail with an error
/// saying so, and the tasks behind it are pushed.
#[test]
fn a_task_too_large_to_push_fails_and_the_ones_behind_it_go() {
    let (env, class, now) = (env(), class(false), Instant::now());
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 3);
    sub.classes.get_mut(&class).unwrap().service = Some(Duration::from_micros(5));
    // Zeroed pages, never touched: the size is known without encoding.
    let huge = crate::transport::Payload::Inline(vec![0u8; crate::transport::MAX_FRAME + 1]);
    sub.tasks.get_mut(&tasks[0]).unwrap().spec.args = vec![huge];
    let worker = WorkerId::new(0, 4001);
    let fx = first_lease(&mut sub, &env, &class, worker, LeaseId::new(0, 2), now);
    let failed: Vec<TaskId> = fx.taken_out.iter().map(|(t, _)| *t).collect();
    assert_eq!(failed, vec![tasks[0]]);
    let e = &fx.taken_out[0].1;
    assert!(
        e.message().contains("cannot be sent") && e.message().contains("one message carries"),
        "{e}"
    );
    let got: Vec<TaskId> = pushed(&fx).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(got, tasks[1..].to_vec());
    assert!(sub.leases.values().all(|l| !l.inflight.contains(&tasks[0])));
    assert!(
        matches!(sub.tasks[&tasks[0]].status, Status::Queued),
        "never running"
    );
}

/// A submitting thread gives a busy lease only `SUBMIT_DEPTH` tasks;
/// the thread handling its results fills the rest of the pipeline.
#[test]
fn a_submitting_thread_leaves_the_pipeline_to_the_results() {
    let (env, class, now) = (env(), class(false), Instant::now());
    let (_, _, fx) = short_class_leased(&env, &class, 10);
    assert_eq!(pushed(&fx).len(), 10, "granted on a handler thread: all");

    env.submitting.set(true);
    let (mut sub, tasks, fx) = short_class_leased(&env, &class, 10);
    let got: Vec<TaskId> = pushed(&fx).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(got, tasks[..SUBMIT_DEPTH].to_vec(), "submitting: one");
    assert!(
        fx.lease_requests.is_empty(),
        "the lease's pipeline has room for the rest: no more leases asked for"
    );
    env.submitting.set(false);
    let mut fx = Effects::default();
    let worker = sub.leased_workers().next().expect("leased");
    sub.finished_on_lease(worker, tasks[0], Some(now), now, 1)
        .expect("on a lease");
    sub.dispatch(&class, now, &env, &mut fx);
    let got: Vec<TaskId> = pushed(&fx).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(
        got,
        tasks[SUBMIT_DEPTH..].to_vec(),
        "the results' thread: the rest"
    );
}

/// The longer a short class's tasks take, the fewer are pipelined on
/// one worker (about a millisecond of work each), two at least; a
/// class at or past `SHORT_TASK`, or not measured yet, one at a time.
#[test]
fn the_pipeline_holds_about_a_millisecond_of_work() {
    let depth = |us: Option<u64>| {
        let cq = ClassQueue {
            service: us.map(Duration::from_micros),
            ..ClassQueue::default()
        };
        cq.depth()
    };
    assert_eq!(depth(Some(0)), PIPELINE);
    assert_eq!(depth(Some(5)), PIPELINE);
    assert_eq!(depth(Some(50)), 20);
    assert_eq!(depth(Some(250)), 4);
    assert_eq!(depth(Some(900)), 2);
    assert_eq!(depth(Some(1000)), 1);
    assert_eq!(depth(Some(50_000)), 1);
    assert_eq!(depth(None), 1);
}

/// Whether each push went alone (nothing else in flight on its lease
/// or queued behind it).
fn alone(fx: &Effects) -> Vec<bool> {
    fx.pushes
        .iter()
        .map(|p| {
            assert_eq!(spec_of(p).alone, p.alone);
            p.alone
        })
        .collect()
}

/// A lease kept after its tasks finish goes back after `LEASE_IDLE`;
/// until then the state says when it falls due (the housekeeping
/// thread's timer).
#[test]
fn an_idle_lease_goes_back_after_lease_idle_and_says_when() {
    let (env, class, t0) = (env(), class(false), Instant::now());
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 1);
    let (worker, lease) = (WorkerId::new(0, 4002), LeaseId::new(0, 3));
    let fx = first_lease(&mut sub, &env, &class, worker, lease, t0);
    assert_eq!(pushed(&fx).len(), 1);
    assert_eq!(
        alone(&fx),
        vec![true],
        "a lone task says so (the worker waits awake)"
    );
    let mut fx = Effects::default();
    assert_eq!(sub.return_idle_leases(t0, &mut fx), None, "busy: not idle");
    // The task finishes (what `task_done` records).
    let l = sub.leases.get_mut(&lease).unwrap();
    l.inflight.retain(|t| *t != tasks[0]);
    l.idle_since = Some(t0);
    let soon = t0 + LEASE_IDLE / 2;
    assert_eq!(sub.return_idle_leases(soon, &mut fx), Some(t0 + LEASE_IDLE));
    assert!(fx.return_leases.is_empty());
    assert_eq!(sub.return_idle_leases(t0 + LEASE_IDLE, &mut fx), None);
    assert_eq!(fx.return_leases, vec![(lease, false)]);
    assert!(sub.leases.is_empty() && sub.by_worker.is_empty());
    assert!(sub.classes[&class].leases.is_empty());
}

/// A class learns its tasks' service time as they finish: once short,
/// the lease takes a pipeline of them instead of one at a time. A
/// worker that ends its lease (`max_calls`) hands its unstarted tasks
/// back to the front of the queue, in order.
#[test]
fn short_service_starts_pipelining_and_an_ended_lease_requeues_its_tasks() {
    let (env, class, t0) = (env(), class(false), Instant::now());
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 5);
    let (worker, lease) = (WorkerId::new(0, 4004), LeaseId::new(0, 6));
    let fx = first_lease(&mut sub, &env, &class, worker, lease, t0);
    assert_eq!(pushed(&fx).len(), 1, "service time unknown: one at a time");
    let done = t0 + Duration::from_micros(80);
    let (c, idle_due) = sub
        .finished_on_lease(worker, tasks[0], Some(t0), done, 1)
        .expect("on a lease");
    assert_eq!(c, class);
    assert_eq!(idle_due, Some(done + LEASE_IDLE));
    assert_eq!(sub.classes[&class].service, Some(Duration::from_micros(80)));
    sub.tasks.remove(&tasks[0]);
    let mut fx = Effects::default();
    sub.dispatch(&class, done, &env, &mut fx);
    let got: Vec<TaskId> = pushed(&fx).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(got, tasks[1..].to_vec(), "the rest at once, in order");
    let mut fx = Effects::default();
    sub.lease_ended_by_worker(worker, &mut fx);
    assert!(fx.taken_out.is_empty());
    let queued: Vec<TaskId> = sub.classes[&class].queue.iter().copied().collect();
    assert_eq!(queued, tasks[1..].to_vec());
    assert!(sub.leases.is_empty() && sub.by_worker.is_empty());
    assert!(tasks[1..]
        .iter()
        .all(|t| sub.tasks[t].status == Status::Queued));
}

/// A worker blocked in `get` hands back what it had not started: those
/// tasks go to the front of the queue, and its lease takes no pushes
/// until it unblocks (so nothing waits behind a task that waits). A
/// lost worker's lease ends with its in-flight tasks handed over.
#[test]
fn a_blocked_lease_takes_no_pushes_until_it_unblocks() {
    let (env, class, now) = (env(), class(false), Instant::now());
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 4);
    sub.classes.get_mut(&class).unwrap().service = Some(Duration::from_micros(10));
    let worker = WorkerId::new(0, 4005);
    let fx = first_lease(&mut sub, &env, &class, worker, LeaseId::new(0, 7), now);
    assert_eq!(pushed(&fx).len(), 4, "pipelined");
    let mut fx = Effects::default();
    let c = sub
        .lease_blocked(worker, &tasks[1..], &mut fx)
        .expect("leased");
    assert!(fx.taken_out.is_empty());
    let queued: Vec<TaskId> = sub.classes[&c].queue.iter().copied().collect();
    assert_eq!(queued, tasks[1..].to_vec(), "handed back, in order");
    let mut fx = Effects::default();
    sub.dispatch(&class, now, &env, &mut fx);
    assert!(fx.pushes.is_empty(), "a blocked lease takes nothing");
    // They wait for the other leases already asked for (three of the
    // first four requests are still out).
    assert_eq!(sub.classes[&class].pending_requests, 3);
    sub.lease_unblocked(worker).expect("leased");
    let mut fx = Effects::default();
    sub.dispatch(&class, now, &env, &mut fx);
    assert_eq!(pushed(&fx).len(), 3);
    let (c, inflight) = sub.lease_lost(worker).expect("leased");
    assert_eq!((c, inflight), (class.clone(), tasks.clone()));
    assert!(sub.leases.is_empty() && sub.classes[&class].leases.is_empty());
    assert_eq!(sub.lease_unblocked(worker), None, "gone");
}

/// A task cancelled while its worker hands it back unstarted (the cancel
/// reached a worker that no longer had it) fails instead of going back to
/// the queue: run elsewhere, it would not be stopped. The others go back.
/// So does one in flight on a worker ending its lease (`max_calls`).
#[test]
fn a_task_cancelled_as_it_is_handed_back_fails_rather_than_runs() {
    let (env, class, now) = (env(), class(false), Instant::now());
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 4);
    sub.classes.get_mut(&class).unwrap().service = Some(Duration::from_micros(10));
    let worker = WorkerId::new(0, 4006);
    let fx = first_lease(&mut sub, &env, &class, worker, LeaseId::new(0, 8), now);
    assert_eq!(pushed(&fx).len(), 4, "pipelined");
    sub.tasks.get_mut(&tasks[2]).unwrap().cancelled = true;
    let mut fx = Effects::default();
    sub.lease_blocked(worker, &tasks[1..3], &mut fx)
        .expect("leased");
    let failed: Vec<TaskId> = fx.taken_out.iter().map(|(t, _)| *t).collect();
    assert_eq!(failed, vec![tasks[2]]);
    assert_eq!(fx.taken_out[0].1.kind(), ErrorKind::Cancelled);
    let queued: Vec<TaskId> = sub.classes[&class].queue.iter().copied().collect();
    assert_eq!(queued, vec![tasks[1]]);
    sub.tasks.get_mut(&tasks[3]).unwrap().cancelled = true;
    let mut fx = Effects::default();
    sub.lease_ended_by_worker(worker, &mut fx);
    let failed: Vec<TaskId> = fx.taken_out.iter().map(|(t, _)| *t).collect();
    assert_eq!(failed, vec![tasks[3]]);
    let queued: Vec<TaskId> = sub.classes[&class].queue.iter().copied().collect();
    assert_eq!(queued, vec![tasks[0], tasks[1]]);
}

/// A grant nobody waits for goes back at once; one whose worker could
/// not be reached goes back with the worker killed; neither is kept.
#[test]
fn unwanted_or_unreachable_grants_go_back() {
    let (env, class, now) = (env(), class(false), Instant::now());
    let mut sub = Submitter::default();
    let mut fx = Effects::default();
    let w = WorkerId::new(0, 4003);
    assert!(!sub.lease_granted(
        99,
        LeaseId::new(0, 4),
        w,
        Some(ConnId::for_test(4)),
        Vec::new(),
        now,
        &env,
        &mut fx
    ));
    assert_eq!(fx.return_leases, vec![(LeaseId::new(0, 4), false)]);
    queue(&mut sub, &class, 1);
    let mut fx = Effects::default();
    sub.dispatch(&class, now, &env, &mut fx);
    let req = fx.lease_requests[0].req;
    let mut fx = Effects::default();
    assert!(!sub.lease_granted(
        req,
        LeaseId::new(0, 5),
        w,
        None,
        Vec::new(),
        now,
        &env,
        &mut fx
    ));
    assert_eq!(fx.return_leases[0], (LeaseId::new(0, 5), true));
    assert!(fx.pushes.is_empty() && sub.leases.is_empty());
}

/// Spread requests go to the live nodes in turn (a request for another
/// node is remembered, so that node's loss can redirect it), and wait
/// a little there before they may spill.
#[test]
fn spread_requests_go_round_the_live_nodes() {
    let (env, class, now) = (env(), class(true), Instant::now());
    let mut sub = Submitter::default();
    queue(&mut sub, &class, 4);
    let mut fx = Effects::default();
    sub.dispatch(&class, now, &env, &mut fx);
    let nodes: Vec<u16> = fx.lease_requests.iter().map(|r| r.node).collect();
    assert_eq!(nodes, vec![1, 2, 0, 1]);
    assert!(fx.lease_requests.iter().all(|r| r.spill == Spill::Later));
    assert_eq!(sub.remote_reqs.len(), 3, "requests sent to nodes 1 and 2");
}
