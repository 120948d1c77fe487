//! Cluster rows: how long a cluster takes to start (`cluster_start_s`),
//! and what an idle one holds in memory (`idle_rss_mb`).

use super::*;

pub(super) fn sc_cluster_start(cfg: &rustray::Config, c: &Sizes, want: bool, num_cpus: u32) {
    // ray.init() until the first trivial task's result is back; repeated
    // start_reps times with shutdown + 1 s sleep between; the last cluster
    // stays up for the rest of the run.
    let reps = if want { c.start_reps } else { 1 };
    let mut samples = Vec::new();
    for r in 0..reps {
        let t0 = Instant::now();
        rustray::init_with(cfg.clone()).expect("cluster_start_s: rustray::init_with");
        let v =
            rustray::get(&noop::remote(7u64).unwrap()).expect("cluster_start_s: first noop task");
        let dt = secs(t0);
        assert_eq!(v, 7, "cluster_start_s: noop(7) returned {v}");
        samples.push(dt);
        if r < reps - 1 {
            rustray::shutdown();
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if want {
        emit(
            "cluster_start_s",
            "s",
            median(&samples),
            1,
            samples.len(),
            vec![
                ("samples", rnd_all(&samples, 4).into()),
                ("first", rnd(samples[0], 4).into()),
                ("mode", "local_start".into()),
                ("num_cpus", num_cpus.into()),
            ],
        );
    }
}

pub(super) fn sc_idle_rss(c: &Sizes) {
    std::thread::sleep(Duration::from_secs_f64(c.settle_s));
    let mut tot_rss = 0u64;
    let mut tot_pss = 0u64;
    let mut count = 0usize;
    let mut by: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
    let mut procs = Vec::new();
    for (pid, comm) in rustray_processes() {
        let (rss, pss) = mem_kib(pid);
        if rss == 0 {
            continue; // zombie / exited
        }
        count += 1;
        tot_rss += rss;
        tot_pss += pss;
        let e = by.entry(comm.clone()).or_insert((0, 0.0, 0.0));
        e.0 += 1;
        e.1 += rss as f64 / 1024.0;
        e.2 += pss as f64 / 1024.0;
        procs.push(obj(vec![
            ("pid", pid.into()),
            ("comm", comm.as_str().into()),
            ("rss_mb", rnd(rss as f64 / 1024.0, 1).into()),
            ("pss_mb", rnd(pss as f64 / 1024.0, 1).into()),
        ]));
    }
    let (drss, _) = mem_kib(std::process::id());
    let rss_mib = tot_rss as f64 / 1024.0;
    let drss_mib = rnd(drss as f64 / 1024.0, 1);
    let by_process = J::Obj(
        by.into_iter()
            .map(|(k, (n, r, p))| {
                let v = obj(vec![
                    ("count", n.into()),
                    ("rss_mib", rnd(r, 1).into()),
                    ("pss_mib", rnd(p, 1).into()),
                ]);
                (k, v)
            })
            .collect(),
    );
    assert!(
        count > 0,
        "idle_rss_mb: found no descendant processes of the driver"
    );
    emit(
        "idle_rss_mb",
        "MiB",
        rss_mib,
        count,
        1,
        vec![
            ("pss_mib", rnd(tot_pss as f64 / 1024.0, 1).into()),
            ("driver_rss_mb", drss_mib.into()),
            ("driver_rss_mib", drss_mib.into()),
            // every descendant is a core process (no Python helper daemons)
            ("core_rss_mib", rnd(rss_mib, 1).into()),
            ("settle_s", c.settle_s.into()),
            ("by_process", by_process),
            ("processes", J::Arr(procs)),
        ],
    );
}
