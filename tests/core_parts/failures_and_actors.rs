//! Cancels, retries of killed workers, bad options, and actors: ordering,
//! state, names, restarts and kills.

use super::*;

pub(super) fn test_cancel() {
    common::cluster(1.0, None);
    let blocker = sleep_ms::remote(300u64).unwrap();
    let queued = inc::options().max_retries(0).remote(1u64).unwrap();
    rustray::cancel(&queued).unwrap();
    let e = rustray::get(&queued).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert_eq!(rustray::get(&blocker).unwrap(), 300);
    // a running task: its worker is stopped
    let running = sleep_ms::remote(10_000u64).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    rustray::cancel(&running).unwrap();
    let e = rustray::get_timeout(&running, Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(rustray::get(&inc::remote(1u64).unwrap()).unwrap(), 2);
}

/// A short function's task runs on the thread that read it; one that
/// turns out long is still cancelled at once: its worker lends the
/// connection's reading to another thread once the task has run a while,
/// which reads the cancel (without it, the cancel would wait unread for
/// the task to end).
pub(super) fn test_cancel_a_long_call_of_a_short_function() {
    common::cluster(1.0, None);
    let warm: Vec<_> = (0..200).map(|_| sleep_ms::remote(0u64).unwrap()).collect();
    rustray::get_all(&warm).unwrap();
    let running = sleep_ms::remote(30_000u64).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    rustray::cancel(&running).unwrap();
    let e = rustray::get_timeout(&running, Duration::from_secs(15))
        .expect_err("the cancel reaches the worker and stops the task");
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert_eq!(rustray::get(&inc::remote(1u64).unwrap()).unwrap(), 2);
}

/// Cancelling an actor call that waits for its argument lets the calls
/// queued behind it (held back, in order, behind it) go at once.
pub(super) fn test_cancel_an_actor_call_waiting_for_its_argument() {
    common::cluster(2.0, None);
    let c = Counter::remote(0).unwrap();
    assert_eq!(rustray::get(&c.record(100)).unwrap(), 1);
    let slow = sleep_ms::remote(5_000u64).unwrap();
    let head = c.record(&slow);
    let behind: Vec<_> = (0..3u64).map(|i| c.record(i)).collect();
    rustray::cancel(&head).unwrap();
    let e = rustray::get(&head).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    for (i, r) in behind.iter().enumerate() {
        let n = rustray::get_timeout(r, Duration::from_secs(3))
            .expect("a call queued behind the cancelled one is sent");
        assert_eq!(n, i + 2);
    }
}

pub(super) fn test_worker_killed_task_retried() {
    common::cluster(2.0, None);
    let marker = std::env::temp_dir().join(format!("rustray-die-once-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let (retries, _) = rustray::__private::fault_counts();
    let r = die_once::remote(marker.display().to_string()).unwrap();
    assert_eq!(rustray::get(&r).unwrap(), "survived");
    let _ = std::fs::remove_file(&marker);
    assert_eq!(
        rustray::__private::fault_counts().0,
        retries + 1,
        "the retry was not counted"
    );
    // with no retries left: a worker-died error, never a hang
    let r = die_always::options().max_retries(0).remote().unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert!(e.message().contains("die_always"), "{e}");
    let r = die_always::options().max_retries(2).remote().unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert!(e.message().contains("3 time"), "{e}");
}

pub(super) fn test_nested_tasks_deep_on_one_cpu() {
    common::cluster(1.0, None);
    let r = nest::remote(1000u64).unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(300)).unwrap(),
        1000
    );
}

pub(super) fn test_infeasible_and_bad_options() {
    common::cluster(2.0, None);
    let r = gpu_task::options().num_gpus(1.0).remote().unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(10)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
    let r = gpu_task::options().num_cpus(-1.0).remote().unwrap();
    let e = rustray::get(&r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let r = gpu_task::options()
        .num_cpus(2.0)
        .resource("custom", 0.0)
        .remote()
        .unwrap();
    assert_eq!(rustray::get(&r).unwrap(), 1);
}

pub(super) fn test_tasks_run_in_worker_processes() {
    common::cluster(2.0, None);
    let pids: Vec<u32> =
        rustray::get_all(&(0..20).map(|_| pid::remote().unwrap()).collect::<Vec<_>>()).unwrap();
    assert!(pids.iter().all(|p| *p != std::process::id()));
}

pub(super) fn test_actor_ordering() {
    common::cluster(2.0, None);
    let c = Counter::remote(0).unwrap();
    let refs: Vec<_> = (0..2_000u64).map(|i| c.record(i)).collect();
    let lens = rustray::get_all(&refs).unwrap();
    assert_eq!(lens, (1..=2_000).collect::<Vec<usize>>());
    assert_eq!(
        rustray::get(&c.log()).unwrap(),
        (0..2_000).collect::<Vec<u64>>()
    );
}

/// Synchronous calls (which the actor may run on its connection thread)
/// mixed with bursts of pipelined calls carrying enough data to fill both
/// sockets: every call completes, in order, and nothing deadlocks.
pub(super) fn test_actor_sync_and_burst_calls_mix() {
    common::cluster(2.0, None);
    let c = Counter::remote(0).unwrap();
    let o = Other::remote().unwrap();
    for round in 0..5u64 {
        for i in 0..20 {
            assert_eq!(
                rustray::get(&c.record(round * 1000 + i)).unwrap(),
                (round * 420 + i + 1) as usize
            );
        }
        let burst: Vec<_> = (0..400).map(|i| c.record(round * 1000 + 100 + i)).collect();
        let echoes: Vec<_> = (0..300u32)
            .map(|i| o.echo(vec![(i % 251) as u8; 64 * 1024]))
            .collect();
        let last = rustray::get_timeout(burst.last().unwrap(), Duration::from_secs(60))
            .expect("a burst completes");
        assert_eq!(last, (round * 420 + 420) as usize);
        for (i, e) in echoes.iter().enumerate() {
            let v = rustray::get_timeout(e, Duration::from_secs(60)).expect("echo");
            assert!(v.len() == 64 * 1024 && v[0] == (i % 251) as u8);
        }
    }
    let log = rustray::get(&c.log()).unwrap();
    let mut want = Vec::new();
    for round in 0..5u64 {
        want.extend((0..20).map(|i| round * 1000 + i));
        want.extend((0..400).map(|i| round * 1000 + 100 + i));
    }
    assert_eq!(log, want, "calls ran out of order");
}

pub(super) fn test_actor_state_and_handles_in_tasks() {
    common::cluster(2.0, None);
    let c = Counter::remote(10).unwrap();
    c.incr(1);
    assert_eq!(rustray::get(&c.incr(1)).unwrap(), 12);
    let c2 = c.clone();
    let r = call_counter::remote(c2, 5u64).unwrap();
    assert_eq!(rustray::get(&r).unwrap(), 17);
    assert_eq!(rustray::get(&c.incr(0)).unwrap(), 17);
    let e = rustray::get(&c.fail()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TaskFailed);
    assert!(e.message().contains("method failed on purpose"), "{e}");
    assert_eq!(rustray::get(&c.incr(0)).unwrap(), 17);
}

pub(super) fn test_named_actor() {
    common::cluster(2.0, None);
    let c = Counter::options().name("counter").remote(5).unwrap();
    let h = rustray::get_actor::<Counter>("counter").unwrap();
    h.incr(1);
    assert_eq!(rustray::get(&c.incr(1)).unwrap(), 7);
    let e = rustray::get_actor::<Counter>("nobody").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorNotFound, "{e}");
    let e = rustray::get_actor::<Other>("counter").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TypeMismatch, "{e}");
    let e = Counter::options().name("counter").remote(0).unwrap_err();
    assert!(e.message().contains("already exists"), "{e}");
}

pub(super) fn test_actor_restart() {
    common::cluster(2.0, None);
    let c = Counter::options().max_restarts(1).remote(100).unwrap();
    assert_eq!(rustray::get(&c.incr(1)).unwrap(), 101);
    let e = rustray::get_timeout(&c.crash(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    // restarted: the constructor ran again (calls made while it restarts
    // fail with ActorUnavailable, as in Ray without max_task_retries)
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let v = loop {
        match rustray::get_timeout(&c.incr(1), Duration::from_secs(30)) {
            Err(e) if e.kind() == ErrorKind::ActorUnavailable => {
                assert!(std::time::Instant::now() < end, "not restarted: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    assert_eq!(v, 101);
    let _ = rustray::get_timeout(&c.crash(), Duration::from_secs(30));
    let e = rustray::get_timeout(&c.incr(1), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
}

pub(super) fn test_kill_actor() {
    common::cluster(2.0, None);
    let c = Counter::options().max_restarts(5).remote(0).unwrap();
    assert_eq!(rustray::get(&c.incr(1)).unwrap(), 1);
    rustray::kill(&c).unwrap();
    let e = rustray::get_timeout(&c.incr(1), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    assert!(e.message().contains("killed"), "{e}");
}

pub(super) fn test_many_actors() {
    common::cluster(2.0, None);
    let actors: Vec<_> = (0..8).map(|i| Counter::remote(i).unwrap()).collect();
    let refs: Vec<_> = (0..400).map(|i| actors[i % 8].incr(1)).collect();
    rustray::get_all(&refs).unwrap();
    for (i, a) in actors.iter().enumerate() {
        assert_eq!(rustray::get(&a.incr(0)).unwrap(), i as i64 + 50);
    }
    // Live actors cost the GCS no thread each: creations end, and one
    // thread watches every created actor. (It runs in this process unless
    // a launcher started the cluster.)
    if !common::launched() {
        let threads = |name: &str| {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == name)
                })
                .count()
        };
        // (A former cluster's watch thread ends within half a second.)
        common::wait_until(
            "no GCS thread per actor: the creation threads ended, one watches them all",
            Duration::from_secs(10),
            || threads("gcs-actor") == 0 && threads("gcs-actor-watch") == 1,
        );
    }
}

pub(super) fn test_not_initialized_is_an_error() {
    let e = rustray::put(1u8).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClusterUnavailable, "{e}");
    // Submitting a task or creating an actor fails the same way, with
    // what was being submitted named.
    let e = inc::remote(1u64).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClusterUnavailable, "{e}");
    assert!(
        e.message().contains("inc") && e.message().contains("init()"),
        "{e}"
    );
    let e = inc::options().num_cpus(1.0).remote(1u64).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClusterUnavailable, "{e}");
    let e = Counter::remote(0).map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ClusterUnavailable, "{e}");
    common::cluster(2.0, None);
    let e = rustray::init().unwrap_err();
    assert!(e.message().contains("already initialized"), "{e}");
}
