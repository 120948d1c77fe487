//! Tasks: graphs, chains, waits, results taken in together, synchronous
//! callers, tasks run on their connection thread, tasks past one message.

use super::*;

pub(super) fn test_task_graph() {
    common::cluster(2.0, None);
    let id1 = read_array::remote(1u64).unwrap();
    let id2 = read_array::remote(2u64).unwrap();
    let id = add::remote(id1, id2).unwrap();
    let sum = rustray::get(&id).unwrap();
    assert_eq!(sum.len(), 100);
    assert_eq!(sum[0], 100.0 + 200.0);
    assert_eq!(sum[99], 199.0 + 299.0);
}

pub(super) fn test_put_get_and_get_many() {
    common::cluster(2.0, None);
    let r = rustray::put("hello".to_string()).unwrap();
    assert_eq!(rustray::get(&r).unwrap(), "hello");
    let refs: Vec<_> = (0..100u64).map(|i| inc::remote(i).unwrap()).collect();
    let got = rustray::get_all(&refs).unwrap();
    assert_eq!(got, (1..=100).collect::<Vec<u64>>());
    // a value and a ref may be mixed per argument
    let x = rustray::put(vec![1.0, 2.0]).unwrap();
    assert_eq!(
        rustray::get(&add::remote(&x, vec![1.0, 1.0]).unwrap()).unwrap(),
        vec![2.0, 3.0]
    );
}

pub(super) fn test_task_chain() {
    common::cluster(2.0, None);
    let mut r = inc::remote(0u64).unwrap();
    for _ in 1..200 {
        r = inc::remote(r).unwrap();
    }
    assert_eq!(rustray::get(&r).unwrap(), 200);
}

pub(super) fn test_get_timeout() {
    common::cluster(2.0, None);
    let r = sleep_ms::remote(400u64).unwrap();
    let t = Instant::now();
    let e = rustray::get_timeout(&r, Duration::from_millis(50)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(t.elapsed() < Duration::from_millis(350));
    // the object can still be fetched later
    assert_eq!(rustray::get(&r).unwrap(), 400);
}

pub(super) fn test_wait_timeout() {
    common::cluster(2.0, None);
    let fast = inc::remote(1u64).unwrap();
    let slow = sleep_ms::remote(2_000u64).unwrap();
    rustray::get(&fast).unwrap();
    let t = Instant::now();
    let (ready, not_ready) = rustray::wait(
        &[fast.clone(), slow.clone()],
        2,
        Some(Duration::from_millis(100)),
    )
    .unwrap();
    assert!(t.elapsed() < Duration::from_millis(1_000));
    assert_eq!(ready.len(), 1);
    assert_eq!(not_ready.len(), 1);
    assert_eq!(rustray::get(&ready[0]).unwrap(), 2);
    let (ready, _) = rustray::wait(&[fast, slow], 1, None).unwrap();
    assert_eq!(ready.len(), 1);
    assert!(rustray::wait(&[inc::remote(1u64).unwrap()], 2, None).is_err());
}

/// A worker holds a result back while a short task is queued behind it
/// (to send both in one write), but not for as long as that task takes
/// when it turns out long: the result comes within the hold bound.
pub(super) fn test_results_are_not_held_behind_a_long_task() {
    common::cluster(1.0, None);
    // Many quick runs make `sleep_ms` a short function on the one worker
    // (and pipelining sends the next three there at once).
    let warm: Vec<_> = (0..200).map(|_| sleep_ms::remote(0u64).unwrap()).collect();
    rustray::get_all(&warm).unwrap();
    // `a`, `b` and `c` are queued behind `x`; `b` is a short function's
    // call that sleeps (a result is held only with two or more queued).
    let x = nap::remote(30u64).unwrap();
    let a = sleep_ms::remote(0u64).unwrap();
    let b = sleep_ms::remote(1_000u64).unwrap();
    let c = sleep_ms::remote(0u64).unwrap();
    let t = Instant::now();
    assert_eq!(
        rustray::get_timeout(&a, Duration::from_millis(500)).unwrap(),
        0
    );
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(rustray::get(&x).unwrap(), 30);
    assert_eq!(rustray::get(&b).unwrap(), 1_000);
    assert_eq!(rustray::get(&c).unwrap(), 0);
    // And results were held (else this proved nothing): on a cluster of
    // one CPU, all of these ran on the one worker (the suite also runs on
    // bigger clusters, where they may spread).
    let cpus = rustray::cluster_resources().unwrap().get("CPU").copied();
    if cpus == Some(1.0) {
        assert!(rustray::get(&held_results::remote().unwrap()).unwrap() > 0);
    }
}

/// A worker's pipelined results arrive many to a read: the owner takes
/// them in together (one lock of its state, one refill of the pipeline),
/// and every value is right.
pub(super) fn test_results_read_together_are_taken_in_together() {
    common::cluster(1.0, None);
    let before = rustray::__private::results_taken_together();
    let refs: Vec<_> = (0..2_000u64).map(|i| inc::remote(i).unwrap()).collect();
    let out = rustray::get_all(&refs).unwrap();
    assert_eq!(out, (1..=2_000).collect::<Vec<u64>>());
    assert!(
        rustray::__private::results_taken_together() > before,
        "no results were taken in together"
    );
}

/// A caller waiting on each answer (a `get` per task, a synchronous actor
/// call) reads the answer itself while it spins for it, rather than be
/// woken by the connection thread: with a core to spare, a good share of
/// a few hundred such round trips (nearly all on a quiet machine) are read
/// by the caller, and every value is right.
pub(super) fn test_a_synchronous_caller_reads_its_answer_itself() {
    common::cluster(1.0, None);
    let spare = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    // On this node: run as a suite on several nodes, a task or actor sent
    // to another one (this node's CPUs held by earlier tests' actors)
    // answers over TCP, which may take longer than the caller spins.
    let here = rustray::SchedulingStrategy::NodeAffinity {
        node: rustray::node_name().unwrap(),
        soft: false,
    };
    let c = rustray::ActorOptions::<Counter>::new()
        .scheduling_strategy(here.clone())
        .remote(0)
        .unwrap();
    let mut count = 0i64;
    for what in ["task", "actor call"] {
        // Not all: an answer that takes longer than the spin is left to the
        // connection thread. A loaded machine may leave most of a round to
        // it (two CPU hogs left all but 20 of 300): up to three rounds, one
        // of which must have a few (a quiet machine: nearly all).
        const CALLS: u64 = 300;
        let mut best = 0;
        for _ in 0..3 {
            let before = rustray::__private::waiter_reads();
            for i in 0..CALLS {
                if what == "task" {
                    let r = inc::options()
                        .scheduling_strategy(here.clone())
                        .remote(i)
                        .unwrap();
                    assert_eq!(rustray::get(&r).unwrap(), i + 1);
                } else {
                    count += 1;
                    assert_eq!(rustray::get(&c.incr(1)).unwrap(), count);
                }
            }
            best = best.max(rustray::__private::waiter_reads() - before);
            if !spare || best >= CALLS / 100 {
                break;
            }
        }
        if spare {
            assert!(
                best >= CALLS / 100,
                "callers read at most {best} of {CALLS} {what} answers themselves"
            );
        }
    }
}

/// A chain of tasks (each link's argument the one before) sets a value per
/// link, and its lease goes idle between links: neither may wake the
/// driver's threads once per link. Its `get` waits for the last link only,
/// and the housekeeping thread (which returns idle leases) ticks once a
/// lease period while leases keep going idle, instead of being woken.
pub(super) fn test_a_chain_does_not_wake_the_driver_per_link() {
    common::cluster(1.0, None);
    const LINKS: u64 = 400;
    let (sleeps0, passes0) = rustray::__private::wake_counts();
    let t0 = Instant::now();
    let mut r = inc::remote(0u64).unwrap();
    for _ in 1..LINKS {
        r = inc::remote(r).unwrap();
    }
    assert_eq!(rustray::get(&r).unwrap(), LINKS);
    let ms = t0.elapsed().as_millis() as u64;
    let (sleeps, passes) = rustray::__private::wake_counts();
    let (sleeps, passes) = (sleeps - sleeps0, passes - passes0);
    // One sleep for the whole chain, plus one per half second it takes
    // (woken per link: one a link).
    assert!(
        sleeps < 10 + ms / 500,
        "the driver's get slept {sleeps} times for a chain of {LINKS} in {ms} ms"
    );
    // One pass per 10 ms lease period, whatever the links take (woken
    // per link, as many passes as links, each tens of microseconds apart).
    assert!(
        passes < 10 + ms / 10,
        "the housekeeping thread ran {passes} times for a chain of {LINKS} in {ms} ms"
    );
    // `wait` on the last link, and on the first of its links (ready
    // already), sleeps as seldom.
    let first = inc::remote(0u64).unwrap();
    let mut r = inc::remote(first.clone()).unwrap();
    for _ in 2..LINKS {
        r = inc::remote(r).unwrap();
    }
    let (sleeps0, _) = rustray::__private::wake_counts();
    let t0 = Instant::now();
    let (ready, rest) =
        rustray::wait(&[r.clone(), first], 2, Some(Duration::from_secs(60))).unwrap();
    assert_eq!((ready.len(), rest.len()), (2, 0));
    assert_eq!(rustray::get(&r).unwrap(), LINKS);
    let ms = t0.elapsed().as_millis() as u64;
    let sleeps = rustray::__private::wake_counts().0 - sleeps0;
    assert!(
        sleeps < 10 + ms / 500,
        "wait slept {sleeps} times for a chain of {LINKS} in {ms} ms"
    );
}

pub(super) fn test_wait_all() {
    common::cluster(2.0, None);
    let refs: Vec<_> = (0..500u64).map(|i| inc::remote(i).unwrap()).collect();
    let (ready, not_ready) = rustray::wait(&refs, 500, Some(Duration::from_secs(30))).unwrap();
    assert_eq!((ready.len(), not_ready.len()), (500, 0));
}

/// A short function's task runs on the thread that read it (no hand-off
/// to the worker's main thread); one that blocks there in `get` must not
/// leave the tasks pipelined behind it unread: `b` is pushed to the same
/// (one-CPU) worker right behind `a`, and `a` waits for `b`'s value. The
/// worker lends the connection's reading to another thread while `a`
/// blocks, which hands `b` back to its owner; `b` runs on another worker.
pub(super) fn test_a_task_run_on_its_connection_thread_blocks_on_one_behind_it() {
    common::cluster(1.0, None);
    let mb = Mailbox::options().num_cpus(0.0).remote(()).unwrap();
    // Whether a task counts as short is this VM's to say (one slow run
    // among the last ones makes it long): rounds until `a` ran on its
    // connection thread.
    for round in 0..5u64 {
        // Many quick runs make `quick_or_wait` short on the one worker,
        // and the owner pipelines it deep: `a` and `b` travel together.
        let warm: Vec<_> = (0..300)
            .map(|i| quick_or_wait::remote(i, None).unwrap())
            .collect();
        assert_eq!(rustray::get_all(&warm).unwrap().len(), 300);
        let lent_before = rustray::get(&quick_or_wait::remote(0u64, None).unwrap())
            .unwrap()
            .1;
        let burst: Vec<_> = (0..100)
            .map(|i| quick_or_wait::remote(i, None).unwrap())
            .collect();
        let want = 7 + round;
        let a = quick_or_wait::remote(0u64, Some(mb.clone())).unwrap();
        let b = quick_or_wait::remote(want, None).unwrap();
        assert!(rustray::get(&mb.post(b.clone())).unwrap());
        let (v, lent_after, on_conn) = rustray::get_timeout(&a, Duration::from_secs(60))
            .expect("a task blocked on its connection thread must not hang");
        assert_eq!(v, want);
        let deadline = Instant::now() + Duration::from_secs(30);
        while rustray::get(&mb.noted()).unwrap() != want {
            assert!(Instant::now() < deadline, "`a`'s last call never went out");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(rustray::get_all(&burst).unwrap().len(), 100);
        if on_conn {
            assert!(
                lent_after > lent_before,
                "`a` ran on its connection thread: its worker lent the reading"
            );
            return;
        }
    }
    panic!("`a` never ran on its connection thread in 5 rounds");
}

/// A task run on the connection thread that read it has the stack a main
/// thread has: a deep one runs there (without retries, so a worker that
/// overflowed its stack would fail it).
pub(super) fn test_a_task_run_on_its_connection_thread_has_a_main_threads_stack() {
    common::cluster(1.0, None);
    for _round in 0..5 {
        // Quick runs make `deep_stack` short here: the next one runs on
        // its connection thread.
        let warm: Vec<_> = (0..200)
            .map(|_| deep_stack::remote(0u64).unwrap())
            .collect();
        rustray::get_all(&warm).unwrap();
        let r = deep_stack::options().max_retries(0).remote(64u64).unwrap();
        let (sum, on_conn) = rustray::get(&r).expect("a deep stack on a connection thread");
        assert_eq!(sum, (1..=64u64).sum::<u64>());
        if on_conn {
            return;
        }
    }
    panic!("`deep_stack` never ran on its connection thread in 5 rounds");
}

/// `core::wide`: reads a count `n`, then `n` byte vectors; returns how many
/// bytes they hold and the sum of their bytes (registered by hand: no
/// signature has thousands of parameters).
pub(super) fn wide_invoke(
    args: &mut rustray::__private::ArgReader<'_>,
) -> rustray::Result<rustray::__private::Returns> {
    let n: u64 = args.next()?;
    let (mut len, mut sum) = (0u64, 0u64);
    for _ in 0..n {
        let v: Vec<u8> = args.next()?;
        len += v.len() as u64;
        sum += v.iter().map(|b| *b as u64).sum::<u64>();
    }
    let mut ret = rustray::__private::Returns::new();
    ret.push(&(len, sum))?;
    Ok(ret)
}

/// `core::many`: reads a count `n` and a size, and returns `n` byte
/// vectors of that size, the `i`th filled with `i % 251`.
pub(super) fn many_invoke(
    args: &mut rustray::__private::ArgReader<'_>,
) -> rustray::Result<rustray::__private::Returns> {
    let n: u64 = args.next()?;
    let size: usize = args.next()?;
    let mut ret = rustray::__private::Returns::new();
    for i in 0..n {
        ret.push(&vec![(i % 251) as u8; size])?;
    }
    Ok(ret)
}

rustray::__private::inventory::submit! {
    rustray::__private::RemoteFunction { name: "core::wide", invoke: wide_invoke }
}
rustray::__private::inventory::submit! {
    rustray::__private::RemoteFunction { name: "core::many", invoke: many_invoke }
}

/// Runs `core::wide` on `args` (no retries), waiting up to 60 s.
pub(super) fn run_wide(args: Vec<rustray::__private::Arg>) -> rustray::Result<(u64, u64)> {
    let opts = rustray::TaskOptions::new().max_retries(0);
    let refs = rustray::__private::submit_task("core::wide", &opts, args, 1).expect("submitted");
    let r = refs.into_iter().next().expect("one result").typed();
    rustray::get_timeout(&r, Duration::from_secs(60))
}

/// 11,000 arguments of 100,000 bytes by value, 1.1 GB: past the 1 GiB one
/// message carries. Those past what a push carries inline (Ray's
/// `task_rpc_inlined_bytes_limit`) go through the store, and the task runs.
pub(super) fn test_a_task_with_arguments_past_one_message_runs() {
    if common::launched() {
        // Its worker reads the 1.1 GB at once: it needs a store that holds
        // them, and a launched cluster has the launcher's (256 MiB).
        return;
    }
    common::cluster(2.0, None);
    let (n, size) = (11_000u64, 100_000usize);
    let mut args = vec![rustray::IntoArg::<u64>::into_arg(n)];
    args.extend((0..n).map(|_| rustray::IntoArg::<Vec<u8>>::into_arg(vec![7u8; size])));
    let got = run_wide(args).expect("the task ran");
    assert_eq!(got, (n * size as u64, 7 * n * size as u64));
    assert_eq!(rustray::get(&inc::remote(1u64).unwrap()).unwrap(), 2);
}

/// A task whose small objects passed by ref (their values copied into its
/// push as they resolve) come to more than one message to a worker
/// carries fails with an error saying so, rather than wait for a push
/// that never goes; the owner goes on.
pub(super) fn test_a_task_whose_small_ref_arguments_pass_one_message_fails() {
    common::cluster(2.0, None);
    let n = 11_000u64;
    let value = rustray::put(vec![7u8; 100_000]).unwrap();
    let mut args = vec![rustray::IntoArg::<u64>::into_arg(n)];
    args.extend((0..n).map(|_| rustray::IntoArg::<Vec<u8>>::into_arg(&value)));
    let e = run_wide(args).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("core::wide"), "{e}");
    assert!(e.message().contains("one message carries"), "{e}");
    assert_eq!(rustray::get(&inc::remote(1u64).unwrap()).unwrap(), 2);
}

/// A task returning 11,000 values of 100,000 bytes, 1.1 GB: its reply would
/// be past one message (refused, its caller waiting forever) if they all
/// travelled inline; those past the reply's inline bound go through the
/// store, and every one reads back.
pub(super) fn test_a_task_with_results_past_one_message_returns_them() {
    common::cluster(2.0, None);
    let (n, size) = (11_000u64, 100_000usize);
    let args = vec![
        rustray::IntoArg::<u64>::into_arg(n),
        rustray::IntoArg::<usize>::into_arg(size),
    ];
    let opts = rustray::TaskOptions::new().max_retries(0);
    let refs =
        rustray::__private::submit_task("core::many", &opts, args, n as usize).expect("submitted");
    let refs: Vec<ObjectRef<Vec<u8>>> = refs.into_iter().map(|r| r.typed()).collect();
    for i in [0, 1, 103, 104, 105, 5_000, n - 1] {
        let v = rustray::get_timeout(&refs[i as usize], Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("result {i}: {e}"));
        assert_eq!(v.len(), size, "result {i}");
        assert!(v.iter().all(|b| *b == (i % 251) as u8), "result {i}");
    }
    drop(refs);
    assert_eq!(rustray::get(&inc::remote(1u64).unwrap()).unwrap(), 2);
}

/// A finished task's record is kept for the next submission (the owner
/// then allocates none for it, see `Submitter::keep_spare`).
pub(super) fn test_finished_tasks_records_are_reused() {
    common::cluster(2.0, None);
    let before = rustray::__private::task_records_reused();
    for i in 0..10u64 {
        assert_eq!(rustray::get(&inc::remote(i).unwrap()).unwrap(), i + 1);
    }
    let reused = rustray::__private::task_records_reused() - before;
    assert!(reused >= 9, "{reused} of 10 submissions reused a record");
}

pub(super) fn test_num_returns() {
    common::cluster(2.0, None);
    let (a, b) = split::remote(21u64).unwrap();
    assert_eq!(rustray::get(&a).unwrap(), 42);
    assert_eq!(rustray::get(&b).unwrap(), "n=21");
}

pub(super) fn test_task_panic_is_reported() {
    common::cluster(2.0, None);
    let r = fails::remote("boom on purpose".to_string()).unwrap();
    let e = rustray::get(&r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TaskFailed);
    assert!(e.message().contains("fails"), "{e}");
    assert!(e.message().contains("boom on purpose"), "{e}");
    // a failure in a dependency propagates to the dependent task
    let dep = inc::remote(fails::remote("upstream".to_string()).unwrap()).unwrap();
    let e = rustray::get(&dep).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TaskFailed);
    assert!(e.message().contains("upstream"), "{e}");
    // the cluster still works
    assert_eq!(rustray::get(&inc::remote(1u64).unwrap()).unwrap(), 2);
}
