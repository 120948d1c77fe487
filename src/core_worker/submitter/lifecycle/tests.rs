//! The lifecycle transitions on their own: no socket, no clock (the
//! times are made up), the leases set up through `leasing`'s helpers.

use super::super::actors::ActorQueue;
use super::super::leasing::tests::{class, env, pushed, queue, spec_of, TestEnv, OWNER};
use super::*;
use crate::ids::{LeaseId, ObjectId};
use crate::transport::ConnId;
use std::time::Duration;

/// The first lease request of `class` granted to `worker` at `now`,
/// with the class's tasks known to be short (so they are pipelined).
fn leased(sub: &mut Submitter, env: &TestEnv, class: &SchedKey, worker: WorkerId) -> Effects {
    let now = Instant::now();
    sub.classes.get_mut(class).unwrap().service = Some(Duration::from_micros(20));
    let mut fx = Effects::default();
    sub.dispatch(class, now, env, &mut fx);
    // Any request out for the class (one asked for earlier will do).
    let req = sub
        .lease_reqs
        .iter()
        .filter(|(_, c)| *c == class)
        .map(|(r, _)| *r)
        .min()
        .expect("a lease request out");
    let mut fx = Effects::default();
    let conn = ConnId::for_test(worker.0);
    let lease = LeaseId::new(0, worker.0);
    assert!(sub.lease_granted(
        req,
        lease,
        worker,
        Some(conn),
        Vec::new(),
        now,
        env,
        &mut fx
    ));
    fx
}

fn store(offset: u64) -> Payload {
    Payload::Store {
        node: 0,
        offset,
        len: 8,
        tag: 1,
    }
}

/// A lost worker's tasks run again while they have retries (at the
/// front of their queue, in order), else fail with `WorkerDied` here,
/// or go to `worker_deaths` when the worker was on another node (to be
/// named after that node's fate); a cancelled one is never retried.
#[test]
fn a_lost_workers_tasks_run_again_within_their_retries_then_fail() {
    let (env, class) = (env(), class(false));
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 4);
    for (t, r) in tasks.iter().zip([1, 0, 3, 2]) {
        let e = sub.tasks.get_mut(t).unwrap();
        (e.retries_left, e.max_retries) = (r, r);
    }
    sub.tasks.get_mut(&tasks[3]).unwrap().cancelled = true;
    let worker = WorkerId::new(0, 4100);
    assert_eq!(pushed(&leased(&mut sub, &env, &class, worker)).len(), 4);
    let mut fx = Effects::default();
    let lost = sub.worker_lost(worker, 0, &mut fx);
    assert_eq!(lost.dispatch, Some(class.clone()));
    let failed: Vec<(TaskId, ErrorKind)> = lost.fail.iter().map(|(t, e)| (*t, e.kind())).collect();
    assert_eq!(
        failed,
        vec![
            (tasks[3], ErrorKind::Cancelled),
            (tasks[1], ErrorKind::WorkerDied)
        ]
    );
    assert!(lost.fail[1].1.message().contains("max_retries = 0"));
    let queued: Vec<TaskId> = sub.classes[&class].queue.iter().copied().collect();
    assert_eq!(queued, vec![tasks[0], tasks[2]], "retried, in order");
    assert_eq!(sub.tasks[&tasks[0]].retries_left, 0);
    assert_eq!(sub.tasks[&tasks[2]].retries_left, 2);
    // Each retry is a run of its own: a cancel meant for the lost one
    // does not stop it (see `TaskSpec::attempt`).
    let (a0, a2) = (
        sub.tasks[&tasks[0]].spec.attempt,
        sub.tasks[&tasks[2]].spec.attempt,
    );
    assert!(a0 != 0 && a2 != 0 && a0 != a2, "{a0} {a2}");
    assert!(fx.worker_deaths.is_empty() && sub.leases.is_empty());

    // The same loss on another node: the failure waits for the verdict
    // on that node.
    let remote = WorkerId::new(1, 4101);
    sub.classes.get_mut(&class).unwrap().queue.clear();
    sub.classes
        .get_mut(&class)
        .unwrap()
        .queue
        .push_back(tasks[0]);
    leased(&mut sub, &env, &class, remote);
    let mut fx = Effects::default();
    let lost = sub.worker_lost(remote, 0, &mut fx);
    assert!(lost.fail.is_empty());
    assert_eq!(fx.worker_deaths.len(), 1);
    assert_eq!(fx.worker_deaths[0].0, tasks[0]);
    assert_eq!(fx.worker_deaths[0].2.kind(), ErrorKind::WorkerDied);
}

/// A task's end frees its pipeline place (the class is dispatched) and,
/// when the lease empties, says when it falls due; the results go to
/// the shell. An exception its filter retries goes back to the front
/// of the queue with that attempt's blocks freed; a report for a task
/// nobody waits for only frees its blocks.
#[test]
fn a_finished_task_is_stored_retried_or_dropped() {
    let (env, class) = (env(), class(false));
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 2);
    sub.tasks.get_mut(&tasks[1]).unwrap().retries_left = 1;
    let worker = WorkerId::new(0, 4102);
    leased(&mut sub, &env, &class, worker);
    let now = Instant::now();
    let mut fx = Effects::default();
    let report = Report::default();
    let ended = sub.task_finished(worker, tasks[0], vec![store(64)], report, now, &mut fx);
    assert!(matches!(&ended.outcome, Outcome::Done(t, r) if t.spec.id == tasks[0] && r.len() == 1));
    assert_eq!(ended.dispatch, Some(class.clone()));
    assert_eq!(ended.idle_due, None, "one task still runs there");
    assert!(fx.free_offsets.is_empty());

    let retry = Report {
        retry: true,
        ..Report::default()
    };
    let ended = sub.task_finished(worker, tasks[1], vec![store(128)], retry, now, &mut fx);
    assert!(matches!(ended.outcome, Outcome::Retried));
    assert_eq!(ended.dispatch, Some(class.clone()));
    assert_eq!(
        ended.idle_due,
        Some(now + super::super::leasing::LEASE_IDLE)
    );
    assert_eq!(fx.free_offsets, vec![(0, 128)]);
    let e = &sub.tasks[&tasks[1]];
    assert_eq!((e.retries_left, e.status), (0, Status::Queued));
    assert_eq!(sub.classes[&class].queue.front(), Some(&tasks[1]));

    sub.tasks.remove(&tasks[1]);
    let ended = sub.task_finished(worker, tasks[1], vec![store(192)], retry, now, &mut fx);
    assert!(matches!(ended.outcome, Outcome::Unknown));
    assert_eq!(fx.free_offsets, vec![(0, 128), (0, 192)]);
}

/// A task whose arguments were lost never ran: it comes back whole for
/// the shell to remake them, unless it was cancelled (then it is done,
/// and fails as cancelled when its results are stored).
#[test]
fn a_task_that_lost_its_arguments_comes_back_to_the_shell() {
    let (env, class) = (env(), class(false));
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 1);
    let worker = WorkerId::new(0, 4103);
    leased(&mut sub, &env, &class, worker);
    let mut fx = Effects::default();
    let lost = Report {
        args_lost: true,
        exiting: true,
        ..Report::default()
    };
    let ended = sub.task_finished(worker, tasks[0], Vec::new(), lost, Instant::now(), &mut fx);
    assert!(matches!(&ended.outcome, Outcome::ArgsLost(t) if t.spec.id == tasks[0]));
    assert!(sub.leases.is_empty(), "the worker exits: its lease ends");
}

/// Cancelling a task not sent yet takes it out of its queue; a running
/// one is marked and its worker told; a call an actor already has
/// cannot be cancelled.
#[test]
fn cancel_takes_a_queued_task_out_and_signals_a_running_one() {
    let (env, class) = (env(), class(false));
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 2);
    let mut fx = Effects::default();
    assert!(
        matches!(sub.cancel(tasks[1], &mut fx), Cancel::Fail(e) if e.kind() == ErrorKind::Cancelled)
    );
    assert_eq!(sub.classes[&class].queue.len(), 1);
    let worker = WorkerId::new(0, 4104);
    leased(&mut sub, &env, &class, worker);
    let mut fx = Effects::default();
    assert!(matches!(sub.cancel(tasks[0], &mut fx), Cancel::Signalled));
    assert!(sub.tasks[&tasks[0]].cancelled);
    assert!(matches!(
        &fx.sends[..],
        [(w, c, PeerMsg::CancelTask { task, attempt: 0 })] if *w == worker && *c == ConnId::for_test(worker.0) && *task == tasks[0]
    ));
    sub.tasks.get_mut(&tasks[0]).unwrap().spec.actor = Some(ActorId(7));
    assert!(matches!(sub.cancel(tasks[0], &mut fx), Cancel::Refused(_)));
    assert!(matches!(
        sub.cancel(
            TaskId {
                owner: OWNER,
                seq: 99
            },
            &mut fx
        ),
        Cancel::Unknown
    ));
}

/// A failed lease request fails its class's queued tasks only when no
/// lease or other request is left to run them; a hard affinity's
/// infeasible answer is `Unschedulable`.
#[test]
fn a_failed_lease_request_fails_the_class_when_nothing_else_can_run_it() {
    let env = env();
    let hard = SchedKey {
        node: Some(2),
        ..class(false)
    };
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &hard, 2);
    let mut fx = Effects::default();
    sub.dispatch(&hard, Instant::now(), &env, &mut fx);
    let reqs: Vec<u64> = fx.lease_requests.iter().map(|r| r.req).collect();
    assert_eq!(reqs.len(), 2);
    let infeasible = || Error::new(ErrorKind::Infeasible, "no node has 9 GPUs");
    let (_, failed) = sub.lease_failed(reqs[0], infeasible());
    assert!(failed.is_empty(), "another request is out");
    let (err, failed) = sub.lease_failed(reqs[1], infeasible());
    assert_eq!(failed, tasks);
    assert_eq!(err.kind(), ErrorKind::Unschedulable);
    assert!(err.message().contains("node 2"));
    let (err, failed) = sub.lease_failed(reqs[1], infeasible());
    assert!(
        failed.is_empty() && err.kind() == ErrorKind::Infeasible,
        "answered once"
    );
}

/// A request the local raylet spilled goes to the node named (and may
/// fall back); when that node's raylet is lost, its requests that may
/// fall back go to the local raylet, and those bound to it fail.
#[test]
fn a_lost_raylets_requests_fall_back_to_the_local_one_or_fail() {
    let env = env();
    let (any, bound) = (
        class(false),
        SchedKey {
            node: Some(1),
            ..class(false)
        },
    );
    let mut sub = Submitter::default();
    queue(&mut sub, &any, 1);
    let mut fx = Effects::default();
    sub.dispatch(&any, Instant::now(), &env, &mut fx);
    let spilled = fx.lease_requests[0].req;
    let again = sub.lease_spilled(spilled, 1, 0).expect("a request");
    assert_eq!((again.node, again.fallback), (1, true));
    assert_eq!(sub.lease_spilled(12345, 1, 0).map(|r| r.req), None);
    sub.tasks.clear();
    queue(&mut sub, &bound, 1);
    let mut fx = Effects::default();
    sub.dispatch(&bound, Instant::now(), &env, &mut fx);
    let pinned = fx.lease_requests[0].req;
    let (again, failed) = sub.raylet_lost(2, 0);
    assert!(again.is_empty() && failed.is_empty(), "not node 2's");
    let (again, failed) = sub.raylet_lost(1, 0);
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].req, again[0].node, again[0].fallback),
        (spilled, 0, false)
    );
    assert_eq!(failed, vec![pinned]);
    assert!(sub.remote_reqs.is_empty());
}

/// `actor` reached on `worker`'s connection, with these calls in flight
/// and these queued.
fn reached(
    sub: &mut Submitter,
    actor: ActorId,
    worker: WorkerId,
    sequential: bool,
    inflight: &[TaskId],
    pending: &[TaskId],
) {
    sub.actors.insert(
        actor,
        ActorQueue {
            conn: Some((worker, ConnId::for_test(9))),
            sequential,
            inflight: inflight.to_vec(),
            pending: pending.iter().copied().collect(),
            ..ActorQueue::default()
        },
    );
}

/// `n` calls to `actor`, taken in (not yet in any of its queues).
fn actor_calls(sub: &mut Submitter, actor: ActorId, n: u64) -> Vec<TaskId> {
    let calls = queue(sub, &class(false), n);
    sub.classes.clear();
    for t in &calls {
        sub.tasks.get_mut(t).unwrap().spec.actor = Some(actor);
    }
    calls
}

/// Results read together share the time they took since the worker's
/// previous one: four read at once 400 us after their push are 100 us
/// each to the class's moving average, not one of 400 and three of 0 (which
/// pulled it toward 0, and the pipeline deeper than its millisecond).
#[test]
fn results_read_together_share_the_time_they_took() {
    let (env, class, t0) = (env(), class(false), Instant::now());
    let mut sub = Submitter::default();
    let tasks = queue(&mut sub, &class, 5);
    let worker = WorkerId::new(0, 4009);
    leased(&mut sub, &env, &class, worker);
    let done = t0 + Duration::from_micros(400);
    let mut fx = Effects::default();
    for (i, t) in tasks[..4].iter().enumerate() {
        sub.tasks.get_mut(t).unwrap().pushed = Some(t0);
        let report = Report {
            together: 4,
            later: i > 0,
            ..Report::default()
        };
        sub.task_finished(worker, *t, Vec::new(), report, done, &mut fx);
    }
    // (`leased` measured 20 us before.)
    assert_eq!(
        sub.classes[&class].service,
        Some(Duration::from_micros((3 * 20 + 100) / 4))
    );
    let next = done + Duration::from_micros(50);
    sub.tasks.get_mut(&tasks[4]).unwrap().pushed = Some(t0);
    sub.task_finished(
        worker,
        tasks[4],
        Vec::new(),
        Report::default(),
        next,
        &mut fx,
    );
    assert_eq!(
        sub.classes[&class].service,
        Some(Duration::from_nanos((3 * 40_000 + 50_000) / 4)),
        "timed from the batch before, not from its push"
    );
}

/// Calls in flight to an actor whose process died go back to the front
/// of its queue, in order, within their retries (the actor is to be
/// flushed once it is back); the others fail with `ActorDied`.
#[test]
fn an_actors_calls_in_flight_are_requeued_or_fail_when_its_process_dies() {
    let mut sub = Submitter::default();
    let (actor, worker) = (ActorId(5), WorkerId::new(0, 4105));
    let calls = actor_calls(&mut sub, actor, 3);
    for (t, r) in calls.iter().zip([2, 0, 1]) {
        let e = sub.tasks.get_mut(t).unwrap();
        e.retries_left = r;
        e.status = Status::Running(WorkerId(0));
    }
    reached(&mut sub, actor, worker, false, &calls, &[]);
    let mut fx = Effects::default();
    let lost = sub.worker_lost(worker, 0, &mut fx);
    assert_eq!(lost.flush, vec![actor]);
    assert_eq!(lost.dispatch, None);
    assert_eq!(lost.fail.len(), 1);
    assert_eq!(lost.fail[0].0, calls[1]);
    assert_eq!(lost.fail[0].1.kind(), ErrorKind::ActorDied);
    let q = &sub.actors[&actor];
    assert_eq!(
        q.pending.iter().copied().collect::<Vec<_>>(),
        vec![calls[0], calls[2]]
    );
    assert!(q.conn.is_none() && q.inflight.is_empty());
    assert_eq!(q.lost, Some(worker), "never reconnected to");
    let t = sub.take_failed(calls[0]).expect("pending");
    assert_eq!(t.spec.id, calls[0]);
    assert_eq!(sub.actors[&actor].pending.len(), 1, "out of its queue too");
}

/// An actor call that lost its arguments goes back to the front of
/// its actor's queue: it holds the calls behind it while its arguments
/// are remade, then goes out first.
#[test]
fn an_actor_call_that_lost_its_arguments_is_queued_again_first() {
    let mut sub = Submitter::default();
    let (actor, worker) = (ActorId(6), WorkerId::new(0, 4106));
    let calls = actor_calls(&mut sub, actor, 2);
    reached(&mut sub, actor, worker, true, &[], &calls);
    let first = sub.next_actor_calls(actor, &mut Effects::default());
    assert_eq!(first.len(), 2);
    let mut fx = Effects::default();
    let lost = Report {
        args_lost: true,
        ..Report::default()
    };
    let ended = sub.task_finished(worker, calls[0], Vec::new(), lost, Instant::now(), &mut fx);
    let Outcome::ArgsLost(t) = ended.outcome else {
        panic!("the call comes back to be remade");
    };
    let arg = ObjectId {
        owner: WorkerId::new(0, 1),
        seq: 77,
    };
    sub.wait_again(t);
    sub.tasks.get_mut(&calls[0]).unwrap().deps.push((0, arg));
    sub.queue_actor_call(
        actor,
        TaskId {
            owner: WorkerId::new(0, 1),
            seq: 900,
        },
    );
    let q = &sub.actors[&actor];
    assert_eq!(q.pending.front(), Some(&calls[0]));
    assert_eq!(q.inflight, vec![calls[1]]);
    assert_eq!(sub.tasks[&calls[0]].status, Status::WaitingDeps);
    assert!(
        sub.next_actor_calls(actor, &mut Effects::default())
            .is_empty(),
        "held while remade"
    );
    sub.tasks.get_mut(&calls[0]).unwrap().deps.clear();
    let again: Vec<TaskId> = sub
        .next_actor_calls(actor, &mut Effects::default())
        .iter()
        .map(|p| spec_of(p).id)
        .collect();
    assert_eq!(again.first(), Some(&calls[0]), "sent again, first");
}

/// Below the in-flight bound, calls still queued when an actor's
/// process dies were not held back by it (they were not sent for
/// another reason): they wait for the restarted actor, as before.
#[test]
fn calls_queued_below_the_bound_wait_for_the_restart() {
    let mut sub = Submitter::default();
    let (actor, worker) = (ActorId(8), WorkerId::new(0, 4108));
    let calls = actor_calls(&mut sub, actor, 5);
    reached(&mut sub, actor, worker, true, &calls[..3], &calls[3..]);
    let mut fx = Effects::default();
    let lost = sub.worker_lost(worker, 0, &mut fx);
    let failed: Vec<TaskId> = lost.fail.iter().map(|(t, _)| *t).collect();
    assert_eq!(failed, calls[..3].to_vec(), "those in flight");
    let q = &sub.actors[&actor];
    assert_eq!(
        q.pending.iter().copied().collect::<Vec<_>>(),
        calls[3..].to_vec()
    );
    assert_eq!(lost.flush, vec![actor], "they wait for the restarted actor");
}

/// An actor call that cannot be sent (its push larger than a message)
/// leaves the queue to fail, never in flight; the calls after it go out,
/// in order.
#[test]
fn an_actor_call_too_large_to_send_fails_and_the_rest_go() {
    let mut sub = Submitter::default();
    let (actor, worker) = (ActorId(7), WorkerId::new(0, 4107));
    let calls = actor_calls(&mut sub, actor, 3);
    reached(&mut sub, actor, worker, true, &[], &calls);
    // Zeroed pages, never touched: the size is known without encoding.
    let huge = crate::transport::Payload::Inline(vec![0u8; crate::transport::MAX_FRAME + 1]);
    sub.tasks.get_mut(&calls[1]).unwrap().spec.args = vec![huge];
    let mut fx = Effects::default();
    let sent: Vec<TaskId> = sub
        .next_actor_calls(actor, &mut fx)
        .iter()
        .map(|p| spec_of(p).id)
        .collect();
    assert_eq!(sent, vec![calls[0], calls[2]]);
    let failed: Vec<TaskId> = fx.taken_out.iter().map(|(t, _)| *t).collect();
    assert_eq!(failed, vec![calls[1]]);
    assert!(!sub.actors[&actor].inflight.contains(&calls[1]));
}

/// An actor running one call at a time has at most `ACTOR_PIPELINE`
/// calls in flight, sent in order; each result frees a place and asks
/// for the next call to go out. A threaded actor gets every call.
#[test]
fn a_sequential_actor_gets_a_pipeline_of_calls_a_threaded_one_all() {
    use super::super::actors::ACTOR_PIPELINE;
    for sequential in [true, false] {
        let mut sub = Submitter::default();
        let (actor, worker) = (ActorId(7), WorkerId::new(0, 4107));
        let calls = actor_calls(&mut sub, actor, ACTOR_PIPELINE as u64 + 10);
        reached(&mut sub, actor, worker, sequential, &[], &calls);
        let sent: Vec<TaskId> = sub
            .next_actor_calls(actor, &mut Effects::default())
            .iter()
            .map(|p| spec_of(p).id)
            .collect();
        let mut fx = Effects::default();
        let mut first_done = |sub: &mut Submitter| {
            let report = Report::default();
            sub.task_finished(
                worker,
                calls[0],
                Vec::new(),
                report,
                Instant::now(),
                &mut fx,
            )
            .flush_actor
        };
        if !sequential {
            assert_eq!(sent, calls, "a threaded actor: every call at once");
            assert_eq!(first_done(&mut sub), None, "nothing left to send");
            continue;
        }
        assert_eq!(
            sent,
            calls[..ACTOR_PIPELINE].to_vec(),
            "in order, a pipeline's worth"
        );
        assert!(
            sub.next_actor_calls(actor, &mut Effects::default())
                .is_empty(),
            "no place free"
        );
        assert_eq!(first_done(&mut sub), Some(actor), "a place came free");
        let next: Vec<TaskId> = sub
            .next_actor_calls(actor, &mut Effects::default())
            .iter()
            .map(|p| spec_of(p).id)
            .collect();
        assert_eq!(next, vec![calls[ACTOR_PIPELINE]]);
        assert_eq!(sub.actors[&actor].inflight.len(), ACTOR_PIPELINE);
        assert_eq!(sub.actors[&actor].pending.len(), 9);
        // The actor's process dies: the calls held back by the bound
        // fail with those in flight (none has retries), none is left
        // to run on a restarted actor.
        let lost = sub.worker_lost(worker, 0, &mut fx);
        assert_eq!(lost.fail.len(), ACTOR_PIPELINE + 9);
        assert!(lost
            .fail
            .iter()
            .all(|(_, e)| e.kind() == ErrorKind::ActorDied));
        assert!(sub.actors[&actor].pending.is_empty());
    }
}
