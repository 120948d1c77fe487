//! Task rows: sync latency, async throughput, chains and nested tasks.

use super::*;

pub(super) fn sc_task_sync_latency(c: &Sizes) {
    for i in 0..c.sync_warmup as u64 {
        let v = rustray::get(&noop::remote(i).unwrap()).expect("task_sync_latency_us: warm-up get");
        assert_eq!(v, i, "task_sync_latency_us: warm-up noop({i}) returned {v}");
    }
    let mut lat = Vec::with_capacity(c.sync_n);
    for i in 0..c.sync_n as u64 {
        let t0 = Instant::now();
        let v = rustray::get(&noop::remote(i).unwrap()).expect("task_sync_latency_us: get");
        lat.push(secs(t0) * 1e6);
        assert_eq!(v, i, "task_sync_latency_us: noop({i}) returned {v}");
    }
    emit(
        "task_sync_latency_us",
        "us",
        median(&lat),
        lat.len(),
        1,
        latency_extra(&lat),
    );
}

/// Submit n noop tasks, then one get of the whole list; returns the results.
pub(super) fn async_tasks(n: usize) -> Vec<u64> {
    let refs: Vec<ObjectRef<u64>> = (0..n as u64).map(|i| noop::remote(i).unwrap()).collect();
    rustray::get_all(&refs).expect("task_async_throughput_per_s: get_all")
}

pub(super) fn check_async(out: &[u64], n: usize) {
    assert_eq!(
        out.len(),
        n,
        "task_async_throughput_per_s: {} results for {n} tasks",
        out.len()
    );
    for (i, &v) in out.iter().enumerate() {
        assert_eq!(
            v, i as u64,
            "task_async_throughput_per_s: noop({i}) returned {v}"
        );
    }
}

pub(super) fn sc_task_async(c: &Sizes) {
    let out = async_tasks(c.async_warmup);
    check_async(&out, c.async_warmup);
    let n = c.async_n;
    let mut rates = Vec::new();
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let out = async_tasks(n);
        let dt = secs(t0);
        check_async(&out, n);
        rates.push(n as f64 / dt);
    }
    emit(
        "task_async_throughput_per_s",
        "tasks/s",
        median(&rates),
        n,
        rates.len(),
        vec![("samples", rnd_all(&rates, 1).into())],
    );
}

/// A chain of n links, all submitted up front; returns the final value.
pub(super) fn chain(n: usize) -> u64 {
    let mut r: ObjectRef<u64> = chain_step::remote(0u64).unwrap();
    for _ in 0..n - 1 {
        r = chain_step::remote(r).unwrap();
    }
    rustray::get(&r).expect("task_chain_per_s: get of the last link")
}

pub(super) fn sc_task_chain(c: &Sizes) {
    let v = chain(c.chain_warmup);
    assert_eq!(
        v, c.chain_warmup as u64,
        "task_chain_per_s: warm-up chain returned {v}"
    );
    let n = c.chain_len;
    let mut rates = Vec::new();
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let v = chain(n);
        let dt = secs(t0);
        assert_eq!(v, n as u64, "task_chain_per_s: chain of {n} returned {v}");
        rates.push(n as f64 / dt);
    }
    emit(
        "task_chain_per_s",
        "tasks/s",
        median(&rates),
        n,
        rates.len(),
        vec![("samples", rnd_all(&rates, 1).into())],
    );
}

pub(super) fn nested(p: usize, ch: u64) -> Vec<u64> {
    let refs: Vec<ObjectRef<u64>> = (0..p).map(|_| nested_parent::remote(ch).unwrap()).collect();
    rustray::get_all(&refs).expect("nested_tasks_per_s: get_all of the parents")
}

pub(super) fn check_nested(out: &[u64], p: usize, ch: u64) {
    assert_eq!(
        out.len(),
        p,
        "nested_tasks_per_s: {} results for {p} parents",
        out.len()
    );
    let want = ch * (ch - 1) / 2;
    for &v in out {
        assert_eq!(
            v, want,
            "nested_tasks_per_s: a parent returned {v}, expected {want}"
        );
    }
}

pub(super) fn sc_nested(c: &Sizes) {
    let (p, ch) = (c.nested_parents, c.nested_children);
    check_nested(&nested(p, ch), p, ch); // warm-up
    let mut rates = Vec::new();
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let out = nested(p, ch);
        let dt = secs(t0);
        check_nested(&out, p, ch);
        rates.push((p as u64 * ch) as f64 / dt);
    }
    emit(
        "nested_tasks_per_s",
        "inner_tasks/s",
        median(&rates),
        p * ch as usize,
        rates.len(),
        vec![
            ("parents", p.into()),
            ("children_per_parent", ch.into()),
            ("samples", rnd_all(&rates, 1).into()),
        ],
    );
}
