//! METG: the minimum effective task granularity at 50% efficiency
//! (Task Bench), as a sweep over task durations.

use super::*;

/// N = max(min_tasks, ceil(P * work_us / d_us)).
pub(super) fn metg_tasks(c: &Sizes, p: u64, d_us: u64) -> u64 {
    c.metg_min_tasks.max((p * c.metg_work_us).div_ceil(d_us))
}

/// Submit n busy(d_us) at once, get them all; returns (E, W) with
/// E = n*d / (P*W), W = wall time including submission.
pub(super) fn metg_run(p: u64, d_us: u64, n: u64) -> (f64, f64) {
    let t0 = Instant::now();
    let refs: Vec<ObjectRef<u64>> = (0..n).map(|_| busy::remote(d_us).unwrap()).collect();
    let out = rustray::get_all(&refs).expect("metg_us: get_all of busy tasks");
    let w = secs(t0);
    assert_eq!(
        out.len() as u64,
        n,
        "metg_us: {} results for {n} busy tasks",
        out.len()
    );
    assert!(
        out.iter().all(|&v| v == d_us),
        "metg_us: a busy({d_us}) task returned another value"
    );
    (n as f64 * d_us as f64 * 1e-6 / (p as f64 * w), w)
}

/// curve = [(d, E)] in ladder order (d descending). j = last entry with
/// E >= 0.5; METG interpolated linearly in log2(d) between j and j+1.
/// Returns (value, bound): "interpolated"; "upper" if nothing after j;
/// "lower" if no E >= 0.5 at all.
pub(super) fn metg_value(curve: &[(u64, f64)]) -> (f64, &'static str) {
    let Some(j) = curve.iter().rposition(|&(_, e)| e >= METG_EFF) else {
        return (curve[0].0 as f64, "lower");
    };
    let (d_hi, e_hi) = curve[j];
    if j == curve.len() - 1 {
        return (d_hi as f64, "upper");
    }
    let (d_lo, e_lo) = curve[j + 1];
    let t = (e_hi - METG_EFF) / (e_hi - e_lo);
    let (l_hi, l_lo) = ((d_hi as f64).log2(), (d_lo as f64).log2());
    (2f64.powf(l_hi + t * (l_lo - l_hi)), "interpolated")
}

pub(super) fn sc_metg(c: &Sizes, num_cpus: u32) {
    metg_sweep(c, num_cpus as u64, "metg_us", Vec::new());
}

/// `metg_3node_us`: the same sweep on the local 3-node cluster (1 CPU per
/// node; the driver's node submits, the others are reached by spillback).
/// P is the cluster's 3 CPUs, as `metg_us`'s is its node's: `busy` spins
/// on the clock, so three of them on this machine's cores still take d
/// each (the nodes share the cores, with the raylets and the driver).
pub(super) fn sc_metg_3node(c: &Sizes) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    metg_sweep(
        c,
        MN_NODES as u64,
        "metg_3node_us",
        vec![
            ("nodes", (MN_NODES as u64).into()),
            ("machine_cores", cores.into()),
        ],
    );
}

fn metg_sweep(c: &Sizes, p: u64, name: &str, mut extra: Vec<(&str, J)>) {
    let t_start = Instant::now();
    metg_run(p, METG_WARMUP_US, metg_tasks(c, p, METG_WARMUP_US));
    let (mut curve, mut samples, mut tasks, mut walls) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut below = 0;
    let mut stop = "ladder_end";
    for d in (0..12).map(|k| 16384u64 >> k) {
        let n = metg_tasks(c, p, d);
        let runs: Vec<(f64, f64)> = (0..c.metg_reps).map(|_| metg_run(p, d, n)).collect();
        // Python's max() over (E, W) tuples
        let (e, w) = runs
            .iter()
            .copied()
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .expect("metg_us: no runs");
        curve.push((d, e));
        let mut s: Vec<J> = vec![d.into()];
        s.extend(runs.iter().map(|r| J::Num(rnd(r.0, 4))));
        samples.push(J::Arr(s));
        tasks.push(J::Arr(vec![d.into(), n.into()]));
        walls.push(J::Arr(vec![d.into(), rnd(w, 3).into()]));
        log(&format!("metg d={d}us N={n} E={e:.3} (W={w:.2}s)"));
        below = if e < METG_EFF { below + 1 } else { 0 };
        if below == 2 {
            stop = "two_below";
            break;
        }
        if let Some(budget) = c.metg_budget_s {
            if secs(t_start) > budget {
                stop = "budget";
                break;
            }
        }
    }
    let (value, bound) = metg_value(&curve);
    let curve_j: Vec<J> = curve
        .iter()
        .map(|&(d, e)| J::Arr(vec![d.into(), rnd(e, 4).into()]))
        .collect();
    extra.extend(vec![
        ("curve", J::Arr(curve_j)),
        ("P", p.into()),
        ("bound", bound.into()),
        ("stop", stop.into()),
        ("samples", J::Arr(samples)),
        ("tasks", J::Arr(tasks)),
        ("best_wall_s", J::Arr(walls)),
        ("threshold", METG_EFF.into()),
        ("scenario_s", rnd(secs(t_start), 1).into()),
        (
            "note",
            "busy(d) spins d us; N tasks submitted at once; E = N*d/(P*W); best of reps per d"
                .into(),
        ),
    ]);
    emit(name, "us", value, curve.len(), c.metg_reps, extra);
}
