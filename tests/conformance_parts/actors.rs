//! Actors: Ray's tests of their lifetimes, restarts, names and calls, ported.

use super::*;

/// test_actor.py::test_actor_deletion: when the last handle to an actor is
/// dropped, the actor's process exits (after the calls already made through
/// it) and what it held goes back to its node.
pub(super) fn test_actor_deletion() {
    one_node(1.0);
    let a = Holder::options().num_cpus(1.0).remote(()).expect("actor");
    let pid = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    let pending = a.slow(300);
    drop(a);
    assert_eq!(
        rustray::get_timeout(&pending, Duration::from_secs(30))
            .expect("a call made before the drop runs"),
        1
    );
    wait_process_gone(pid, Duration::from_secs(10));
    if !common::launched() {
        // The actor's CPU is free again: a 1-CPU task runs on this 1-CPU node.
        let r = inc::remote(1u64).unwrap();
        assert_eq!(
            rustray::get_timeout(&r, Duration::from_secs(30)).expect("task"),
            2
        );
    }
}

/// test_actor.py::test_actor_deletion (a handle passed to a task): a
/// borrowed handle keeps the actor alive after its creator dropped its own;
/// once the borrower is done too, the actor ends.
pub(super) fn test_actor_deletion_after_borrowed_handle() {
    one_node(2.0);
    let a = Holder::remote().expect("actor");
    let pid = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    let r = call_later::remote(a.clone(), 500u64).unwrap();
    drop(a);
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30))
            .expect("call through the borrowed handle"),
        1
    );
    wait_process_gone(pid, Duration::from_secs(10));
}

/// Ray frees an actor's name when the actor is dead for good
/// (test_actor.py's named-actor cases): a named actor whose process exits
/// with no restarts left gives its name back, and the name can be taken
/// again at once.
pub(super) fn test_named_actor_name_released_when_it_dies() {
    one_node(2.0);
    let name = format!("conformance-{}", std::process::id());
    let a = Holder::options()
        .name(&name)
        .remote(())
        .expect("named actor");
    let pid = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    let e = rustray::get_timeout(&a.exit(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    wait_process_gone(pid, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(10);
    let b = loop {
        match Holder::options().name(&name).remote(()) {
            Ok(b) => break b,
            Err(e) if Instant::now() < end => {
                assert!(e.message().contains("already exists"), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the name of a dead actor stays taken: {e}"),
        }
    };
    assert_eq!(
        rustray::get_timeout(&b.slow(0), Duration::from_secs(30)).expect("call"),
        1
    );
    // A named actor is not ended by dropping handles: it is found by name.
    drop(b);
    let c = rustray::get_actor::<Holder>(&name).expect("still registered");
    assert_eq!(
        rustray::get_timeout(&c.slow(0), Duration::from_secs(30)).expect("call"),
        2
    );
    rustray::kill(&c).expect("kill");
}

/// test_actor_failures.py::test_actor_restart_on_node_failure's creation
/// case (an actor whose process dies in `__init__` is restarted while
/// `max_restarts` allows): the constructor is retried, and fails for good
/// with `ActorDied` once the restarts are used up.
pub(super) fn test_actor_constructor_retried_when_its_process_dies() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-ctor-{}", std::process::id()));
    let m = marker.display().to_string();
    let _ = std::fs::remove_file(&marker);
    let a = DiesInCtor::options()
        .max_restarts(2)
        .remote((m.clone(), 2))
        .expect("created on the third try");
    assert_eq!(
        rustray::get_timeout(&a.runs(), Duration::from_secs(30)).expect("runs"),
        3
    );
    drop(a);
    let _ = std::fs::remove_file(&marker);
    let e = DiesInCtor::options()
        .max_restarts(1)
        .remote((m, 5))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    let _ = std::fs::remove_file(&marker);
}

/// test_actor_advanced.py::test_actor_load_balancing: many default actors
/// (they hold no CPU) are spread over the nodes, not stacked on one.
pub(super) fn test_actor_load_balancing() {
    let nodes = nodes(3);
    let live = nodes.iter().filter(|n| n.alive).count();
    let actors: Vec<_> = (0..30).map(|_| Holder::remote().expect("actor")).collect();
    let mut per_node = std::collections::HashMap::<String, usize>::new();
    for a in &actors {
        let n = rustray::get_timeout(&a.node(), Duration::from_secs(60)).expect("node");
        *per_node.entry(n).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        live,
        "30 actors on {live} nodes: {per_node:?}"
    );
    assert!(
        per_node.values().all(|&c| c >= 30 / live / 2),
        "unbalanced: {per_node:?}"
    );
}

/// test_actor_advanced.py::test_actors_on_nodes_with_no_cpus: an actor that
/// asks for nothing needs a CPU to be placed (Ray's 1 CPU for placement, 0
/// for running), so a cluster without CPUs cannot host it (here: the
/// deliberate `Infeasible` error; Ray keeps it pending), while one that
/// asks for 0 CPUs explicitly is placed anywhere.
pub(super) fn test_actors_on_nodes_with_no_cpus() {
    if common::launched() {
        return; // the launched cluster has CPUs
    }
    rustray::init_with(Config::new().num_cpus(0.0)).expect("cluster starts");
    let e = Holder::remote().map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
    let a = Holder::options()
        .num_cpus(0.0)
        .remote(())
        .expect("a 0-CPU actor");
    assert_eq!(
        rustray::get_timeout(&a.slow(0), Duration::from_secs(30)).expect("call"),
        1
    );
}

/// test_actor_failures.py's `ray.kill(actor, no_restart=False)` cases: the
/// actor's process ends and the actor restarts (fresh state) while
/// `max_restarts` allows; with none left the same kill leaves it dead.
pub(super) fn test_kill_with_restart() {
    one_node(2.0);
    let a = Holder::options().max_restarts(1).remote(()).expect("actor");
    assert_eq!(
        rustray::get_timeout(&a.slow(0), Duration::from_secs(30)).unwrap(),
        1
    );
    let pid1 = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    rustray::kill_with(&a, false).expect("kill, restart allowed");
    wait_process_gone(pid1, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(30);
    let pid2 = loop {
        match rustray::get_timeout(&a.pid(), Duration::from_secs(30)) {
            Ok(p) if p != pid1 => break p,
            r => {
                assert!(Instant::now() < end, "the actor did not come back: {r:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    // A new incarnation: its state starts over.
    assert_eq!(
        rustray::get_timeout(&a.slow(0), Duration::from_secs(30)).unwrap(),
        1
    );
    rustray::kill_with(&a, false).expect("kill again");
    wait_process_gone(pid2, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match rustray::get_timeout(&a.pid(), Duration::from_secs(30)) {
            Err(e) if e.kind() == ErrorKind::ActorDied => break,
            r => assert!(Instant::now() < end, "no restarts left, yet: {r:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An actor that leaves a mark when it is constructed.
pub struct Marked;

#[rustray::actor]
impl Marked {
    pub fn new(marker: String) -> Self {
        let _ = std::fs::write(&marker, b"x");
        Marked
    }
    pub fn ping(&self) -> u32 {
        1
    }
}

/// Writes its pid to `pid_file`, then creates an actor of one CPU (which
/// waits for a CPU while the caller keeps them busy).
#[rustray::remote]
fn create_marked(pid_file: String, marker: String) -> u32 {
    let _ = std::fs::write(&pid_file, std::process::id().to_string());
    let a = Marked::options()
        .num_cpus(1.0)
        .remote(marker)
        .expect("actor created");
    rustray::get(&a.ping()).expect("ping")
}

/// test_actor_failures.py's pending-creation case: an actor whose creator
/// dies while it waits to be placed is cancelled: it is never created, and
/// holds nothing once the CPUs it waited for come free.
pub(super) fn test_pending_actor_cancelled_when_its_creator_dies() {
    if common::launched() {
        return; // needs to keep every CPU of the cluster busy
    }
    one_node(2.0);
    let dir = std::env::temp_dir();
    let pid_file = dir.join(format!("rustray-pending-pid-{}", std::process::id()));
    let marker = dir.join(format!("rustray-pending-made-{}", std::process::id()));
    let (pid_file, marker) = (pid_file.display().to_string(), marker.display().to_string());
    let _ = (
        std::fs::remove_file(&pid_file),
        std::fs::remove_file(&marker),
    );
    // One CPU busy for 3 s, the other held by the creator, waiting in
    // `remote()` for its actor's CPU.
    let hog = sleep_ms::options().num_cpus(1.0).remote(3000u64).unwrap();
    let creator = create_marked::options()
        .num_cpus(1.0)
        .max_retries(0)
        .remote(pid_file.clone(), marker.clone())
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(p) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        {
            break p;
        }
        assert!(Instant::now() < end, "the creator never ran");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let e = rustray::get_timeout(&creator, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    rustray::get_timeout(&hog, Duration::from_secs(30)).expect("hog");
    // The CPUs are free now: a live creation would run; a cancelled one
    // does not, and nothing stays held.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !std::path::Path::new(&marker).exists(),
        "the pending actor was created after its creator died"
    );
    let end = Instant::now() + Duration::from_secs(10);
    while rustray::available_resources()
        .expect("available")
        .get("CPU")
        != Some(&2.0)
    {
        assert!(Instant::now() < end, "CPUs stay held");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&pid_file);
}

/// test_actor_failures.py's owner-death cases: an actor fate-shares with
/// the process that created it (here another actor, killed), even while a
/// driver still holds a handle; a detached one outlives its creator.
pub(super) fn test_actor_ends_with_its_owner_unless_detached() {
    one_node(4.0);
    let creator = Creator::remote().expect("creator");
    let (owned, owned_pid) =
        rustray::get_timeout(&creator.make(None), Duration::from_secs(30)).expect("owned actor");
    let name = format!("detached-{}", std::process::id());
    let (detached, detached_pid) =
        rustray::get_timeout(&creator.make(Some(name.clone())), Duration::from_secs(30))
            .expect("detached actor");
    rustray::kill(&creator).expect("kill the creator");
    wait_process_gone(owned_pid, Duration::from_secs(10));
    let e = rustray::get_timeout(&owned.pid(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    assert!(e.message().contains("owner"), "{e}");
    assert_eq!(
        rustray::get_timeout(&detached.pid(), Duration::from_secs(30)).expect("detached lives"),
        detached_pid
    );
    let found = rustray::get_actor::<Holder>(&name).expect("found by name");
    drop(detached);
    assert_eq!(
        rustray::get_timeout(&found.slow(0), Duration::from_secs(30)).expect("still alive"),
        1
    );
    rustray::kill(&found).expect("kill the detached actor");
}

/// test_actor.py::test_exit_actor: `exit_actor()` inside a method ends the
/// actor for good (restarts or not); outside an actor it is an error.
pub(super) fn test_exit_actor() {
    one_node(2.0);
    let e = rustray::exit_actor();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let a = Holder::options().max_restarts(3).remote(()).expect("actor");
    let pid = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).expect("pid");
    let e = rustray::get_timeout(&a.quit(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    wait_process_gone(pid, Duration::from_secs(10));
    let e = rustray::get_timeout(&a.pid(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    assert!(e.message().contains("exit_actor"), "{e}");
}

/// test_actor_unavailable.py's restarting case: a call made while the
/// actor restarts, with no `max_task_retries`, fails at once with
/// `ActorUnavailable` (it does not wait for the restart); calls made once
/// it is back reach it.
pub(super) fn test_actor_unavailable_while_restarting() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-slowrestart-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let a = SlowRestart::options()
        .max_restarts(1)
        .remote((marker.display().to_string(), 3000))
        .expect("actor");
    assert_eq!(
        rustray::get_timeout(&a.runs(), Duration::from_secs(30)).unwrap(),
        1
    );
    // The call running when the process dies fails (no max_task_retries).
    let e = rustray::get_timeout(&a.exit(), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    let t0 = Instant::now();
    let e = rustray::get_timeout(&a.runs(), Duration::from_secs(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorUnavailable, "{e}");
    // "At once": well before the 3 s constructor could have finished.
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    let end = Instant::now() + Duration::from_secs(30);
    let runs = loop {
        match rustray::get_timeout(&a.runs(), Duration::from_secs(30)) {
            Ok(r) => break r,
            Err(e) if e.kind() == ErrorKind::ActorUnavailable && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the restarted actor is not reachable: {e}"),
        }
    };
    assert_eq!(runs, 2, "the second incarnation answers");
    let _ = std::fs::remove_file(&marker);
}

/// test_actor_failures.py's max_task_retries cases, with one retry: a call
/// whose process dies under it spends its retry on the restarted actor,
/// waiting for the restart; it does not fail fast as an unretryable call
/// would, since it was made with `max_task_retries`.
pub(super) fn test_actor_call_with_one_retry_waits_for_the_restart() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-oneretry-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let a = SlowRestart::options()
        .max_restarts(1)
        .max_task_retries(1)
        .remote((marker.display().to_string(), 1500))
        .expect("actor");
    let r = rustray::get_timeout(&a.exit_first(), Duration::from_secs(60));
    assert_eq!(r.expect("the retry reaches the restarted actor"), 2);
    let _ = std::fs::remove_file(&marker);
}

/// test_actor_advanced.py's named-actor cases: a handle found by name
/// while the actor's constructor still runs queues its calls until the
/// actor is up (only a restart fails calls at once).
pub(super) fn test_calls_to_an_actor_being_created_wait() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-slowctor-{}", std::process::id()));
    std::fs::write(&marker, "1").expect("marker"); // next run is slow
    let name = format!("slow-ctor-{}", std::process::id());
    let m = marker.display().to_string();
    let n = name.clone();
    let creator = std::thread::spawn(move || {
        SlowRestart::options()
            .name(&n)
            .remote((m, 1000))
            .expect("created")
    });
    let end = Instant::now() + Duration::from_secs(30);
    let found = loop {
        match rustray::get_actor::<SlowRestart>(&name) {
            Ok(h) => break h,
            Err(e) => {
                assert!(Instant::now() < end, "never registered: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    assert!(
        !creator.is_finished(),
        "the constructor should still be running"
    );
    assert_eq!(
        rustray::get_timeout(&found.runs(), Duration::from_secs(30)).expect("waits for creation"),
        2
    );
    let a = creator.join().expect("creator thread");
    rustray::kill(&a).expect("kill");
    let _ = std::fs::remove_file(&marker);
}

/// Ray's actor_restart.py (test_actor_failures.py's max_task_retries
/// cases): with `max_task_retries=-1` a call whose actor process dies is
/// sent again to the restarted actor, so 50 calls to an actor that exits
/// every 10 calls all succeed (1..=10 five times); once its restarts are
/// used up, calls fail with `ActorDied`.
pub(super) fn test_actor_max_task_retries() {
    one_node(2.0);
    let a = Flaky::options()
        .max_restarts(4)
        .max_task_retries(rustray::Retries::Infinite)
        .remote(())
        .expect("actor");
    let mut seen = Vec::new();
    for _ in 0..50 {
        let r = a.increment_and_possibly_fail();
        seen.push(rustray::get_timeout(&r, Duration::from_secs(60)).expect("retried call"));
    }
    let want: Vec<u32> = (0..5).flat_map(|_| 1..=10).collect();
    assert_eq!(seen, want);
    for _ in 0..3 {
        let e = rustray::get_timeout(&a.increment_and_possibly_fail(), Duration::from_secs(60))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    }
}

/// test_actor.py's `get_if_exists` cases: creating a named actor with
/// `get_if_exists` returns the live holder of the name (same actor, its
/// state kept), creates it when there is none, and refuses an actor of
/// another class.
pub(super) fn test_actor_get_if_exists() {
    one_node(2.0);
    let name = format!("gie-{}", std::process::id());
    let a = Holder::options()
        .name(&name)
        .get_if_exists()
        .remote(())
        .expect("created");
    assert_eq!(
        rustray::get_timeout(&a.slow(0), Duration::from_secs(30)).unwrap(),
        1
    );
    let b = Holder::options()
        .name(&name)
        .get_if_exists()
        .remote(())
        .expect("found");
    assert_eq!(a.id(), b.id());
    assert_eq!(
        rustray::get_timeout(&b.slow(0), Duration::from_secs(30)).unwrap(),
        2
    );
    let e = Holder::options().name(&name).remote(()).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidArgument,
        "taken without get_if_exists: {e}"
    );
    let e = Flaky::options()
        .name(&name)
        .get_if_exists()
        .remote(())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TypeMismatch, "{e}");
    let e = Holder::options().get_if_exists().remote(()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "no name: {e}");
    rustray::kill(&a).expect("kill");
}

/// test_actor.py's `@ray.method(num_returns=N)` cases: each element of a
/// method's returned tuple is its own object, and the calls keep their
/// order.
pub(super) fn test_actor_method_num_returns() {
    one_node(2.0);
    let a = Holder::remote().expect("actor");
    let (x, label) = a.split(21);
    let (y, label2) = a.split(1);
    assert_eq!(
        rustray::get_timeout(&x, Duration::from_secs(30)).unwrap(),
        42
    );
    assert_eq!(
        rustray::get_timeout(&label, Duration::from_secs(30)).unwrap(),
        "call 1"
    );
    assert_eq!(
        rustray::get_timeout(&label2, Duration::from_secs(30)).unwrap(),
        "call 2"
    );
    assert_eq!(
        rustray::get_timeout(&y, Duration::from_secs(30)).unwrap(),
        2
    );
    let (p, q, r) = a.three();
    assert_eq!(
        rustray::get_timeout(&p, Duration::from_secs(30)).unwrap(),
        1
    );
    assert_eq!(
        rustray::get_timeout(&q, Duration::from_secs(30)).unwrap(),
        vec![2, 3]
    );
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Some(true)
    );
    // A result passes to a task like any other ref.
    assert_eq!(
        rustray::get_timeout(&inc::remote(&x).unwrap(), Duration::from_secs(30)).unwrap(),
        43
    );
}

/// test_threaded_actor.py / test_actor.py's `max_concurrency` cases: a
/// threaded actor runs calls at once (a latch opens while one call waits
/// in it); a default actor runs them one at a time (the same latch times
/// out); a `&mut self` method and a type that is not `Sync` are refused
/// with messages saying why.
pub(super) fn test_threaded_actor_max_concurrency() {
    one_node(2.0);
    let l = Latch::options()
        .max_concurrency(4)
        .remote(2)
        .expect("threaded actor");
    let opened = l.wait(20_000);
    std::thread::sleep(Duration::from_millis(50));
    l.count_down();
    l.count_down();
    assert!(rustray::get_timeout(&opened, Duration::from_secs(30)).expect("wait"));
    let names: std::collections::HashSet<String> = (0..16)
        .map(|_| l.thread())
        .collect::<Vec<_>>()
        .iter()
        .map(|r| rustray::get_timeout(r, Duration::from_secs(30)).expect("thread"))
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("rustray-actor-")),
        "{names:?}"
    );
    // More calls waiting at once than a caller keeps in flight to an actor
    // that runs one call at a time: a threaded actor is sent them all, and
    // the call that opens the latch behind them.
    let wide = Latch::options()
        .max_concurrency(80)
        .remote(1)
        .expect("threaded actor");
    let waits: Vec<_> = (0..72).map(|_| wide.wait(20_000)).collect();
    wide.count_down();
    for w in &waits {
        assert!(
            rustray::get_timeout(w, Duration::from_secs(30)).expect("wait"),
            "a call behind 72 waiting ones did not reach the threaded actor"
        );
    }
    let e = rustray::get_timeout(&l.reset(1), Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TaskFailed, "{e}");
    assert!(e.message().contains("&mut self"), "{e}");

    let serial = Latch::remote(1).expect("default actor");
    let opened = serial.wait(300);
    serial.count_down();
    assert!(
        !rustray::get_timeout(&opened, Duration::from_secs(30)).expect("wait"),
        "a default actor ran count_down while wait was running"
    );
    assert!(rustray::get_timeout(&serial.wait(0), Duration::from_secs(30)).unwrap());

    let e = NotSync::options()
        .max_concurrency(2)
        .remote(())
        .unwrap_err();
    assert!(e.message().contains("not Sync"), "{e}");
    let ok = NotSync::remote().expect("one call at a time is fine");
    assert_eq!(
        rustray::get_timeout(&ok.bump(), Duration::from_secs(30)).unwrap(),
        1
    );
}

/// test_namespace.py's named-actor cases and test_list_actors.py's
/// list_named_actors cases: a name is taken once per namespace, found only
/// in its namespace, and listed there (all namespaces on request) while
/// its actor lives.
pub(super) fn test_namespaces_and_list_named_actors() {
    one_node(4.0);
    let name = format!("ns-actor-{}", std::process::id());
    let ns = format!("ns-{}", std::process::id());
    let plain = Holder::options()
        .name(&name)
        .remote(())
        .expect("default namespace");
    let other = Holder::options()
        .name(&name)
        .namespace(&ns)
        .remote(())
        .expect("same name, other namespace");
    assert_ne!(plain.id(), other.id());
    assert_eq!(
        rustray::get_actor::<Holder>(&name).unwrap().id(),
        plain.id()
    );
    assert_eq!(
        rustray::get_actor_in::<Holder>(&name, &ns).unwrap().id(),
        other.id()
    );
    let e = rustray::get_actor_in::<Holder>(&name, "no-such-namespace").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorNotFound, "{e}");
    let here = rustray::list_named_actors(false).expect("list");
    assert!(here.contains(&(String::new(), name.clone())), "{here:?}");
    assert!(!here.iter().any(|(n, _)| n == &ns), "{here:?}");
    let all = rustray::list_named_actors(true).expect("list all");
    assert!(all.contains(&(String::new(), name.clone())), "{all:?}");
    assert!(all.contains(&(ns.clone(), name.clone())), "{all:?}");
    rustray::kill(&other).expect("kill");
    let all = rustray::list_named_actors(true).expect("list all");
    assert!(
        !all.contains(&(ns.clone(), name.clone())),
        "a dead actor is not listed: {all:?}"
    );
    rustray::kill(&plain).expect("kill");
}

/// test_failure.py's `max_retries=-1` case: a task retried without end
/// survives any number of worker deaths; a finite budget runs out.
pub(super) fn test_infinite_retries() {
    one_node(2.0);
    let marker = std::env::temp_dir().join(format!("rustray-retries-{}", std::process::id()));
    let m = marker.display().to_string();
    let _ = std::fs::remove_file(&marker);
    let r = dies_n_times::options()
        .max_retries(rustray::Retries::Infinite)
        .remote(m.clone(), 6u32)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(60)).expect("retried"),
        7
    );
    let _ = std::fs::remove_file(&marker);
    let r = dies_n_times::options()
        .max_retries(2)
        .remote(m, 6u32)
        .unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    let _ = std::fs::remove_file(&marker);
}

/// test_scheduling_2.py's node-affinity cases: a hard affinity that cannot
/// be met (no such node, or a node that can never fit the request) fails
/// as unschedulable, for tasks and actors; a soft one runs elsewhere.
pub(super) fn test_node_affinity_unschedulable() {
    one_node(2.0);
    let here = rustray::node_name().expect("node");
    let hard = |node: &str| SchedulingStrategy::NodeAffinity {
        node: node.to_string(),
        soft: false,
    };
    let r = inc::options()
        .scheduling_strategy(hard("no-such-node"))
        .remote(1u64)
        .unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unschedulable, "{e}");
    assert!(e.message().contains("no-such-node"), "{e}");
    let r = inc::options()
        .num_cpus(512.0)
        .scheduling_strategy(hard(&here))
        .remote(1u64)
        .unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unschedulable, "{e}");
    let e = Holder::options()
        .scheduling_strategy(hard("no-such-node"))
        .remote(())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unschedulable, "{e}");
    let r = inc::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: "no-such-node".into(),
            soft: true,
        })
        .remote(1u64)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        2
    );
    // Without an affinity the same request is infeasible, as before.
    let r = inc::options().num_cpus(512.0).remote(1u64).unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
}
