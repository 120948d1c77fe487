//! Actor rows: sync latency, async throughput, many actors.

use super::*;

pub(super) fn sc_actor_sync(c: &Sizes) {
    let a = new_counter();
    for k in 0..c.sync_warmup as u64 {
        let v = rustray::get(&a.inc()).expect("actor_call_sync_latency_us: warm-up call");
        assert_eq!(
            v,
            k + 1,
            "actor_call_sync_latency_us: warm-up inc returned {v}"
        );
    }
    let mut lat = Vec::with_capacity(c.sync_n);
    for _ in 0..c.sync_n {
        let t0 = Instant::now();
        rustray::get(&a.inc()).expect("actor_call_sync_latency_us: call");
        lat.push(secs(t0) * 1e6);
    }
    let v = rustray::get(&a.inc()).expect("actor_call_sync_latency_us: final call");
    let want = (c.sync_warmup + c.sync_n + 1) as u64;
    assert_eq!(
        v, want,
        "actor_call_sync_latency_us: counter is {v}, expected {want}"
    );
    rustray::kill(&a).expect("actor_call_sync_latency_us: kill");
    emit(
        "actor_call_sync_latency_us",
        "us",
        median(&lat),
        lat.len(),
        1,
        latency_extra(&lat),
    );
}

pub(super) fn sc_actor_async(c: &Sizes) {
    let a = new_counter();
    let w = c.actor_async_warmup;
    let refs: Vec<ObjectRef<u64>> = (0..w).map(|_| a.inc()).collect();
    let out = rustray::get_all(&refs).expect("actor_call_async_throughput_per_s: warm-up");
    assert_eq!(
        out.last().copied(),
        Some(w as u64),
        "actor_call_async_throughput_per_s: warm-up ended at the wrong count"
    );
    let n = c.actor_async_n;
    let mut rates = Vec::new();
    let mut done = w as u64;
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let refs: Vec<ObjectRef<u64>> = (0..n).map(|_| a.inc()).collect();
        let out = rustray::get_all(&refs).expect("actor_call_async_throughput_per_s: get_all");
        rates.push(n as f64 / secs(t0));
        // calls executed in submission order
        assert_eq!(
            out.len(),
            n,
            "actor_call_async_throughput_per_s: result count"
        );
        for (i, &v) in out.iter().enumerate() {
            let want = done + i as u64 + 1;
            assert_eq!(
                v, want,
                "actor_call_async_throughput_per_s: call {i} returned {v}, expected {want} (ordering)"
            );
        }
        done += n as u64;
    }
    rustray::kill(&a).expect("actor_call_async_throughput_per_s: kill");
    emit(
        "actor_call_async_throughput_per_s",
        "calls/s",
        median(&rates),
        n,
        rates.len(),
        vec![("samples", rnd_all(&rates, 1).into())],
    );
}

/// Create k Counters, `calls` round-robin calls, get all (timed, cold: includes
/// actor creation); then `calls` more on the same warm actors. Returns (cold s, warm s).
pub(super) fn actor_many(k: usize, calls: usize) -> (f64, f64) {
    let t0 = Instant::now();
    let actors: Vec<ActorHandle<Counter>> = (0..k).map(|_| new_counter()).collect();
    let refs: Vec<ObjectRef<u64>> = (0..calls).map(|i| actors[i % k].inc()).collect();
    let out1 = rustray::get_all(&refs).expect("actor_many_per_s: get_all (cold)");
    let t_cold = secs(t0);
    let t1 = Instant::now();
    let refs: Vec<ObjectRef<u64>> = (0..calls).map(|i| actors[i % k].inc()).collect();
    let out2 = rustray::get_all(&refs).expect("actor_many_per_s: get_all (warm)");
    let t_warm = secs(t1);
    let refs: Vec<ObjectRef<u64>> = actors.iter().map(|x| x.inc()).collect();
    let fin = rustray::get_all(&refs).expect("actor_many_per_s: get_all (final)");
    assert_eq!(
        out1.len() + out2.len(),
        2 * calls,
        "actor_many_per_s: result count"
    );
    let total: u64 = fin.iter().sum();
    assert_eq!(
        total,
        (2 * calls + k) as u64,
        "actor_many_per_s: counters sum to {total}, expected {}",
        2 * calls + k
    );
    for x in &actors {
        rustray::kill(x).expect("actor_many_per_s: kill");
    }
    (t_cold, t_warm)
}

pub(super) fn sc_actor_many(c: &Sizes) {
    let (k, calls) = (c.many_actors, c.many_calls);
    actor_many(k, calls); // warm-up
    std::thread::sleep(Duration::from_secs(1)); // let killed actor processes exit
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..c.reps {
        let (tc, tw) = actor_many(k, calls);
        cold.push(calls as f64 / tc);
        warm.push(calls as f64 / tw);
        std::thread::sleep(Duration::from_secs(1));
    }
    emit(
        "actor_many_per_s",
        "calls/s",
        median(&cold),
        calls,
        cold.len(),
        vec![
            ("actors", k.into()),
            ("includes_actor_creation", true.into()),
            ("samples", rnd_all(&cold, 1).into()),
            ("warm_calls_per_s", rnd(median(&warm), 1).into()),
        ],
    );
}
