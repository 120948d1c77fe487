//! Object rows: small and large put/get, memcpy's reference, a large
//! task argument, and wait.

use super::*;

pub(super) fn sc_small_put_get(c: &Sizes, want_put: bool, want_get: bool) {
    let (w, n) = (c.small_warmup, c.small_n);
    let refs: Vec<ObjectRef<u64>> = (0..w as u64)
        .map(|i| rustray::put(i).expect("put_small_per_s: warm-up put"))
        .collect();
    for (i, r) in refs.iter().enumerate() {
        let v = rustray::get(r).expect("get_small_per_s: warm-up get");
        assert_eq!(
            v, i as u64,
            "get_small_per_s: warm-up object {i} read back as {v}"
        );
    }
    drop(refs);
    let (mut put_rates, mut get_rates) = (Vec::new(), Vec::new());
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let refs: Vec<ObjectRef<u64>> = (0..n as u64)
            .map(|i| rustray::put(i).expect("put_small_per_s: put"))
            .collect();
        let t1 = Instant::now();
        let mut bad = None;
        for (i, r) in refs.iter().enumerate() {
            let v = rustray::get(r).expect("get_small_per_s: get");
            if v != i as u64 && bad.is_none() {
                bad = Some((i, v));
            }
        }
        let t2 = Instant::now();
        if let Some((i, v)) = bad {
            panic!("get_small_per_s: object {i} read back as {v}");
        }
        put_rates.push(n as f64 / (t1 - t0).as_secs_f64());
        get_rates.push(n as f64 / (t2 - t1).as_secs_f64());
        drop(refs);
    }
    if want_put {
        emit(
            "put_small_per_s",
            "ops/s",
            median(&put_rates),
            n,
            put_rates.len(),
            vec![("samples", rnd_all(&put_rates, 1).into())],
        );
    }
    if want_get {
        emit(
            "get_small_per_s",
            "ops/s",
            median(&get_rates),
            n,
            get_rates.len(),
            vec![("samples", rnd_all(&get_rates, 1).into())],
        );
    }
}

/// Reference for put_large_gb_per_s: a plain single-threaded `copy_from_slice`
/// of the same size into a pre-touched destination, same warm-ups and reps.
/// Returns the median GB/s.
pub(super) fn sc_memcpy(c: &Sizes, want: bool) -> f64 {
    let nbytes = c.large_put_bytes;
    let src = vec![1u8; nbytes]; // non-zero fill: pages touched
    let mut dst = vec![0u8; nbytes];
    dst.fill(2); // calloc'd pages are lazy: touch them
    for _ in 0..c.large_warmup {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
    }
    dst.fill(2);
    let mut rates = Vec::new();
    let mut times = Vec::new();
    for _ in 0..c.large_reps {
        let t0 = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        let dt = secs(t0);
        rates.push(nbytes as f64 / GB / dt);
        times.push(dt);
    }
    assert!(
        dst == src,
        "memcpy_gb_per_s: destination differs from source after copy"
    );
    let med = median(&rates);
    if want {
        emit(
            "memcpy_gb_per_s",
            "GB/s",
            med,
            nbytes,
            rates.len(),
            vec![
                ("samples", rnd_all(&rates, 3).into()),
                ("copy_ms", rnd(median(&times) * 1e3, 2).into()),
                (
                    "note",
                    "single-threaded copy_from_slice into a pre-touched buffer; \
                     reference for put_large_gb_per_s"
                        .into(),
                ),
            ],
        );
    }
    med
}

pub(super) fn sc_large_put_get(
    c: &Sizes,
    want_put: bool,
    want_cold: bool,
    want_get: bool,
    memcpy: Option<f64>,
) {
    let nbytes = c.large_put_bytes;
    // Warm-up put/get/drop cycles (store pages get faulted in); the very first
    // (cold) put is reported as first_put_gb_per_s. The source array is built
    // (pages touched) before each put, outside the timed region: put moves it.
    let mut cold = Vec::new();
    let mut cold_huge_kb = None;
    for _ in 0..c.large_warmup {
        let arr = vec![1u8; nbytes];
        let t0 = Instant::now();
        let r = rustray::put(arr).expect("put_large_gb_per_s: warm-up put");
        cold.push(nbytes as f64 / GB / secs(t0));
        let v = rustray::get_view(&r).expect("get_large_gb_per_s: warm-up get_view");
        assert_eq!(
            v.len(),
            nbytes,
            "get_large_gb_per_s: warm-up view has the wrong length"
        );
        // How much of the first put's block came as huge pages: says which
        // store the cold row measured.
        if cold_huge_kb.is_none() {
            cold_huge_kb = smaps::mapping_at(v.as_ptr() as usize).map(|m| m.huge_kb);
        }
        drop(v);
        drop(r);
        std::thread::sleep(FREE_PAUSE);
    }
    let (mut put_rates, mut get_rates, mut checks, mut put_s, mut get_s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..c.large_reps {
        let arr = vec![1u8; nbytes];
        let t0 = Instant::now();
        let r = rustray::put(arr).expect("put_large_gb_per_s: put");
        let t1 = Instant::now();
        let v = rustray::get_view(&r).expect("get_large_gb_per_s: get_view"); // zero-copy
        let t2 = Instant::now();
        assert_eq!(
            v.len(),
            nbytes,
            "get_large_gb_per_s: view has the wrong length"
        );
        let t3 = Instant::now();
        let s: u64 = v.iter().step_by(4096).map(|&b| b as u64).sum(); // one byte per page
        checks.push(secs(t3));
        let want = (nbytes / 4096) as u64;
        assert_eq!(
            s, want,
            "get_large_gb_per_s: page-touch sum {s}, expected {want}"
        );
        put_rates.push(nbytes as f64 / GB / (t1 - t0).as_secs_f64());
        get_rates.push(nbytes as f64 / GB / (t2 - t1).as_secs_f64());
        put_s.push((t1 - t0).as_secs_f64());
        get_s.push((t2 - t1).as_secs_f64());
        drop(v);
        drop(r);
        std::thread::sleep(FREE_PAUSE);
    }
    if want_cold {
        // The first put of a 512 MiB object in this cluster: the store's
        // pages are touched for the first time (the cold put).
        let mut extra = vec![("put_ms", rnd(nbytes as f64 / GB / cold[0] * 1e3, 2).into())];
        if let Some(kb) = cold_huge_kb {
            extra.push(("huge_page_mib", ((kb >> 10) as f64).into()));
        }
        if let Some(m) = memcpy {
            extra.push(("memcpy_gb_per_s", rnd(m, 3).into()));
            extra.push(("vs_memcpy", rnd(cold[0] / m, 3).into()));
        }
        emit("put_large_cold_gb_per_s", "GB/s", cold[0], nbytes, 1, extra);
    }
    if want_put {
        let med = median(&put_rates);
        let mut extra = vec![
            ("samples", rnd_all(&put_rates, 3).into()),
            ("put_ms", rnd(median(&put_s) * 1e3, 2).into()),
            ("first_put_gb_per_s", rnd(cold[0], 3).into()),
            ("warmup_samples", rnd_all(&cold, 3).into()),
        ];
        if let Some(m) = memcpy {
            extra.push(("memcpy_gb_per_s", rnd(m, 3).into()));
            extra.push(("vs_memcpy", rnd(med / m, 3).into()));
        }
        emit(
            "put_large_gb_per_s",
            "GB/s",
            med,
            nbytes,
            put_rates.len(),
            extra,
        );
    }
    if want_get {
        emit(
            "get_large_gb_per_s",
            "GB/s",
            median(&get_rates),
            nbytes,
            get_rates.len(),
            vec![
                ("zero_copy", true.into()),
                ("samples", rnd_all(&get_rates, 3).into()),
                ("get_ms", rnd(median(&get_s) * 1e3, 3).into()),
                ("touch_pages_ms", rnd(median(&checks) * 1e3, 3).into()),
            ],
        );
    }
}

pub(super) fn check_large_arg(out: &[(u64, f64)], k: usize, nbytes: usize) {
    assert_eq!(
        out.len(),
        k,
        "task_large_arg_gb_per_s: {} results for {k} tasks",
        out.len()
    );
    for &(s, _) in out {
        assert_eq!(
            s, nbytes as u64,
            "task_large_arg_gb_per_s: a task summed {s}, expected {nbytes}"
        );
    }
}

pub(super) fn sc_task_large_arg(c: &Sizes) {
    let (nbytes, k) = (c.large_arg_bytes, c.large_arg_tasks);
    let r: ObjectRef<Vec<u8>> =
        rustray::put(vec![1u8; nbytes]).expect("task_large_arg_gb_per_s: put of the array");
    // warm-up
    let refs: Vec<ObjectRef<(u64, f64)>> = (0..2)
        .map(|_| array_sum::remote(r.clone()).unwrap())
        .collect();
    let out = rustray::get_all(&refs).expect("task_large_arg_gb_per_s: warm-up get_all");
    check_large_arg(&out, 2, nbytes);
    let (mut rates, mut inner) = (Vec::new(), Vec::new());
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let refs: Vec<ObjectRef<(u64, f64)>> = (0..k)
            .map(|_| array_sum::remote(r.clone()).unwrap())
            .collect();
        let out = rustray::get_all(&refs).expect("task_large_arg_gb_per_s: get_all");
        let dt = secs(t0);
        check_large_arg(&out, k, nbytes);
        rates.push((k * nbytes) as f64 / GB / dt);
        inner.push(out.iter().map(|&(_, t)| t).sum::<f64>() / out.len() as f64);
    }
    drop(r);
    emit(
        "task_large_arg_gb_per_s",
        "GB/s",
        median(&rates),
        k,
        rates.len(),
        vec![
            ("bytes_per_task", nbytes.into()),
            ("samples", rnd_all(&rates, 3).into()),
            ("in_task_sum_ms", rnd(median(&inner) * 1e3, 1).into()),
            (
                "note",
                "k tasks submitted at once, same ref, wall time until all back; \
                 ref passed boxed, get_view (zero-copy) inside the task, summed in u32 \
                 per 64 KiB (numpy's sum is vectorised C; see in_task_sum_ms)"
                    .into(),
            ),
        ],
    );
}

pub(super) fn submit_noops(n: usize) -> Vec<ObjectRef<u64>> {
    (0..n as u64).map(|i| noop::remote(i).unwrap()).collect()
}

pub(super) fn sc_wait(c: &Sizes, want_pending: bool, want_ready: bool) {
    let n = c.wait_n;
    let refs = submit_noops(n); // warm-up
    let (done, rest) = rustray::wait(&refs, n, None).expect("wait_1000_ms: warm-up wait");
    assert!(
        done.len() == n && rest.is_empty(),
        "wait_1000_ms: warm-up wait incomplete"
    );
    let (mut pend, mut ready) = (Vec::new(), Vec::new());
    for _ in 0..c.reps {
        let refs = submit_noops(n);
        let t0 = Instant::now();
        let (done, rest) = rustray::wait(&refs, n, None).expect("wait_1000_ms: wait");
        let t1 = Instant::now();
        assert!(
            done.len() == n && rest.is_empty(),
            "wait_1000_ms: {} ready, {} not ready, expected {n} ready",
            done.len(),
            rest.len()
        );
        let (done2, rest2) = rustray::wait(&refs, n, None).expect("wait_1000_ready_ms: wait");
        let t2 = Instant::now();
        assert!(
            done2.len() == n && rest2.is_empty(),
            "wait_1000_ready_ms: {} ready, {} not ready, expected {n} ready",
            done2.len(),
            rest2.len()
        );
        let vals = rustray::get_all(&refs).expect("wait_1000_ms: get_all after wait");
        for (i, &v) in vals.iter().enumerate() {
            assert_eq!(v, i as u64, "wait_1000_ms: noop({i}) returned {v}");
        }
        pend.push((t1 - t0).as_secs_f64() * 1e3);
        ready.push((t2 - t1).as_secs_f64() * 1e3);
    }
    if want_pending {
        emit(
            "wait_1000_ms",
            "ms",
            median(&pend),
            n,
            pend.len(),
            vec![
                ("samples", rnd_all(&pend, 2).into()),
                (
                    "note",
                    "wait(num_returns=n) right after submitting n trivial tasks; \
                     submission not timed"
                        .into(),
                ),
            ],
        );
    }
    if want_ready {
        emit(
            "wait_1000_ready_ms",
            "ms",
            median(&ready),
            n,
            ready.len(),
            vec![("samples", rnd_all(&ready, 3).into())],
        );
    }
}
