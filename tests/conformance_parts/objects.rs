//! Objects and task retries: ownership, `free`, retried exceptions and
//! `max_calls`, from Ray's tests.

use super::*;

/// test_failure.py's owner-death cases (`OwnerDiedError`): objects
/// fate-share with the process that owns them: once it dies, `get` of its
/// objects fails with `OwnerDied`, also for objects this process read
/// before.
pub(super) fn test_owner_died_fate_shares_objects() {
    one_node(2.0);
    let owner = ObjOwner::remote().expect("owner actor");
    let pid = rustray::get_timeout(&owner.pid(), Duration::from_secs(30)).expect("pid");
    let (small, large) =
        rustray::get_timeout(&owner.make(), Duration::from_secs(30)).expect("refs");
    assert_eq!(rustray::get(&small).expect("read before"), vec![5u8; 16]);
    assert_eq!(
        rustray::get_view(&large).expect("view before").len(),
        4 << 20
    );
    rustray::kill(&owner).expect("kill the owner");
    wait_process_gone(pid, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(10);
    for r in [&small, &large] {
        loop {
            match rustray::get_timeout(r, Duration::from_secs(10)) {
                Err(e) if e.kind() == ErrorKind::OwnerDied => break,
                other => {
                    assert!(
                        Instant::now() < end,
                        "still readable after its owner died: {:?}",
                        other.map(|v| v.len())
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// This node's store's used bytes once they stop changing: in a launched
/// suite the drivers of earlier tests may still be releasing their blocks.
fn settled_store() -> u64 {
    let end = Instant::now() + Duration::from_secs(10);
    let mut last = rustray::store_stats().expect("store stats").used_bytes;
    let mut same = 0;
    while same < 5 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        let now = rustray::store_stats().expect("store stats").used_bytes;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Issue 9 (soundness; Ray's plasma keeps an object its clients hold): a
/// borrower's zero-copy view of a block on its node survives the owner's
/// death. The object is gone for new reads (`OwnerDied`), but its bytes are
/// not reused, and rewritten, under the live view; they go when it does.
pub(super) fn test_view_outlives_its_dead_owner() {
    one_node(2.0);
    let base = settled_store();
    let here = rustray::node_name().expect("node");
    let owner = ObjOwner::options()
        .scheduling_strategy(on(&here))
        .remote(())
        .expect("owner actor on this node");
    let pid = rustray::get_timeout(&owner.pid(), Duration::from_secs(30)).expect("pid");
    let (_small, large) =
        rustray::get_timeout(&owner.make(), Duration::from_secs(30)).expect("refs");
    let view = rustray::get_view(&large).expect("view");
    assert_eq!(view.len(), 4 << 20);
    rustray::kill(&owner).expect("kill the owner");
    wait_process_gone(pid, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(10);
    while rustray::get_timeout(&large, Duration::from_secs(10))
        .map_err(|e| e.kind())
        .err()
        != Some(ErrorKind::OwnerDied)
    {
        assert!(Instant::now() < end, "still readable after its owner died");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Were the block freed, puts of its size would reuse it.
    let others: Vec<_> = (0..4)
        .map(|_| rustray::put(vec![9u8; 4 << 20]).expect("put"))
        .collect();
    assert!(view.iter().all(|b| *b == 6), "rewritten under a live view");
    drop(others);
    drop(view);
    store_back_to(base, "released with the last view");
}

/// Waits (bounded) until this node's store is back to `used` bytes.
fn store_back_to(used: u64, what: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let now = rustray::store_stats().expect("store stats").used_bytes;
        if now <= used {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: {now} bytes used, want {used}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// test_advanced.py::test_internal_free: `free` makes objects unavailable
/// at once (`ObjectFreed`), releases their store memory while refs to them
/// remain, waits for a view still reading the block, works from a borrower
/// (through the owner), and on a result still being computed.
pub(super) fn test_internal_free() {
    one_node(2.0);
    let base = settled_store();
    let big = rustray::put(vec![1u8; 8 << 20]).expect("put");
    assert!(rustray::store_stats().unwrap().used_bytes >= base + (8 << 20));
    rustray::free(std::slice::from_ref(&big)).expect("free");
    let e = rustray::get(&big).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ObjectFreed, "{e}");
    store_back_to(base, "freed while its ref lives");

    let small = rustray::put(7u64).expect("put");
    rustray::free(std::slice::from_ref(&small)).expect("free");
    assert_eq!(
        rustray::get(&small).unwrap_err().kind(),
        ErrorKind::ObjectFreed
    );

    // A view keeps the block until it is dropped.
    let viewed = rustray::put(vec![2u8; 8 << 20]).expect("put");
    let view = rustray::get_view(&viewed).expect("view");
    rustray::free(std::slice::from_ref(&viewed)).expect("free");
    assert!(
        rustray::get_view(&viewed).is_err(),
        "no new view of a freed object"
    );
    // Were the block freed, the next put of its size would reuse it and
    // write under the view. (Bounds below are absolute: a launched suite's
    // earlier drivers may still be releasing blocks of their own.)
    let next = rustray::put(vec![9u8; 8 << 20]).expect("put");
    assert!(
        rustray::store_stats().unwrap().used_bytes >= 2 * (8 << 20),
        "freed under a live view"
    );
    assert!(view.iter().all(|b| *b == 2), "rewritten under a live view");
    drop(view);
    rustray::free(&[next]).expect("free");
    store_back_to(base, "released when the view went");

    // A borrower's free reaches the owner.
    let lent = rustray::put(vec![4u8; 1 << 20]).expect("put");
    assert_eq!(
        rustray::get_timeout(
            &frees_them::remote(vec![lent.clone()]).unwrap(),
            Duration::from_secs(30)
        )
        .unwrap(),
        1
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match rustray::get(&lent) {
            Err(e) if e.kind() == ErrorKind::ObjectFreed => break,
            other => {
                assert!(
                    Instant::now() < end,
                    "still there: {:?}",
                    other.map(|v| v.len())
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    store_back_to(base, "freed by a borrower");

    // The argument of a task in flight: kept while the task may read it,
    // released when the task ends though refs to it live on.
    let arg = rustray::put(vec![5u8; 8 << 20]).expect("put");
    let len = len_after::remote(300u64, &arg).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    rustray::free(std::slice::from_ref(&arg)).expect("free");
    match rustray::get_timeout(&len, Duration::from_secs(30)) {
        Ok(n) => assert_eq!(n, 8 << 20),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ObjectFreed, "{e}"),
    }
    store_back_to(base, "an argument freed while its task ran");
    drop(arg);

    // A result still being computed: freed when it arrives.
    let pending = big_after::remote(200u64, 4 << 20).unwrap();
    rustray::free(std::slice::from_ref(&pending)).expect("free");
    assert_eq!(
        rustray::get(&pending).unwrap_err().kind(),
        ErrorKind::ObjectFreed
    );
    std::thread::sleep(Duration::from_millis(400));
    store_back_to(base, "a freed task result");
}

/// test_reference_counting.py's worker-owned objects: a worker that owns
/// an object a driver still holds is not ended by the raylet when it has
/// more idle workers than it keeps (Ray keeps owners alive); the object
/// stays readable.
pub(super) fn test_idle_owner_worker_is_kept() {
    one_node(1.0);
    let owner = owns_one::options().num_cpus(0.25).remote(400u64).unwrap();
    let others: Vec<_> = (0..3)
        .map(|_| sleep_ms::options().num_cpus(0.25).remote(100u64).unwrap())
        .collect();
    for r in &others {
        rustray::get_timeout(r, Duration::from_secs(30)).expect("sleeper");
    }
    let (obj, pid) = rustray::get_timeout(&owner, Duration::from_secs(30)).expect("owner task");
    // Leases go back after they idle; surplus workers are retired then.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the worker owning a live object was ended"
    );
    assert_eq!(
        rustray::get_timeout(&obj, Duration::from_secs(30))
            .expect("owned by a live worker")
            .len(),
        1 << 20
    );
}

/// A fresh marker file for a test's run counting.
fn marker(tag: &str) -> String {
    let m = std::env::temp_dir().join(format!("rustray-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&m);
    m.display().to_string()
}

/// test_failure.py's `retry_exceptions` cases, typed: a task returning
/// `Result<T, E>` hands its `E` to the caller as a value (fields and all,
/// not a panic's message); `retry_exceptions(true)` retries `Err`s and
/// panics within `max_retries`, keeping the last attempt's result;
/// `retry_exceptions_if` retries only the errors it accepts.
pub(super) fn test_retry_exceptions() {
    one_node(2.0);
    let m = marker("appres");
    let r = app_result::remote(m.clone(), 2u32, false).unwrap();
    let got = rustray::get_timeout(&r, Duration::from_secs(30)).expect("a value, not a failure");
    assert_eq!(
        got,
        Err(AppError::Transient { attempt: 1 }),
        "not retried by default"
    );

    let m = marker("appres2");
    let r = app_result::options()
        .retry_exceptions(true)
        .max_retries(3)
        .remote(m, 2u32, false)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Ok(3)
    );

    let m = marker("appres3");
    let r = app_result::options()
        .retry_exceptions(true)
        .max_retries(1)
        .remote(m, 5u32, false)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Err(AppError::Transient { attempt: 2 }),
        "the budget runs out: the last attempt's error"
    );

    let transient_only = |e: &AppError| matches!(e, AppError::Transient { .. });
    let m = marker("appres4");
    let r = app_result::options()
        .retry_exceptions_if(transient_only)
        .remote(m, 2u32, false)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Ok(3)
    );
    let m = marker("appres5");
    let r = app_result::options()
        .retry_exceptions_if(transient_only)
        .remote(m, 2u32, true)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        Err(AppError::Fatal("run 1".into())),
        "an error the filter refuses is not retried"
    );

    let m = marker("panics");
    let r = panics_then_ok::options()
        .retry_exceptions(true)
        .remote(m.clone(), 2u32)
        .unwrap();
    assert_eq!(
        rustray::get_timeout(&r, Duration::from_secs(30)).unwrap(),
        3
    );
    let m = marker("panics2");
    let e = rustray::get_timeout(
        &panics_then_ok::remote(m, 2u32).unwrap(),
        Duration::from_secs(30),
    )
    .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::TaskFailed,
        "panics are not retried by default: {e}"
    );
    for tag in [
        "appres", "appres2", "appres3", "appres4", "appres5", "panics", "panics2",
    ] {
        let _ = std::fs::remove_file(marker(tag));
    }
}

/// test_basic_2.py::test_max_call_tasks: with `max_calls(n)` a worker
/// exits after running the function n times (its process is gone), and
/// every task still completes, pipelined or not.
pub(super) fn test_max_calls() {
    one_node(1.0);
    let mut pids = Vec::new();
    for _ in 0..3 {
        let r = my_pid::options().max_calls(1).remote().unwrap();
        pids.push(rustray::get_timeout(&r, Duration::from_secs(30)).expect("task"));
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "a fresh worker per call: {pids:?}");
    for &p in &pids[..2] {
        wait_process_gone(p, Duration::from_secs(10));
    }
    let refs: Vec<_> = (0..20)
        .map(|_| my_pid::options().max_calls(2).remote().unwrap())
        .collect();
    let got = rustray::get_all(&refs).expect("every task completes");
    let mut per_pid = std::collections::HashMap::new();
    for p in &got {
        *per_pid.entry(*p).or_insert(0) += 1;
    }
    assert!(per_pid.values().all(|&n| n <= 2), "{per_pid:?}");
    assert!(per_pid.len() >= 10, "{per_pid:?}");
    // Tasks without the option still reuse their worker.
    let a = rustray::get_timeout(&my_pid::remote().unwrap(), Duration::from_secs(30)).unwrap();
    let b = rustray::get_timeout(&my_pid::remote().unwrap(), Duration::from_secs(30)).unwrap();
    assert_eq!(a, b);
}
