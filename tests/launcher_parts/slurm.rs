//! Launching under Slurm (the emulated cluster `make test` brings up): srun and
//! sbatch steps, allocations as resources, nodes that never register or die,
//! in-situ ranks, and MPI bootstrapping.

use super::*;

/// The multi-node suite as the driver of a 3-node Slurm step launched with
/// `--transport fabric`: objects cross the emulated nodes' network
/// namespaces by `fi_read` over a network provider (tcp;ofi_rxm here;
/// verbs, cxi or efa on a real cluster). Less the tests that kill a node:
/// a launched cluster does not get it back for the tests after them
/// (test_slurm_raylet_killed_mid_job covers node loss under Slurm).
pub(super) fn test_multinode_suite_on_fabric_slurm() {
    if !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(launcher())
        .args(["--transport", "fabric", "--num-cpus", "1"])
        .args(["--object-store-memory", &(1400u64 << 20).to_string()])
        .arg("--")
        .arg(test_binary("multinode"))
        .args(["--skip=killed", "--skip=lost", "--skip=loss"]);
    slurm_env(&mut c, "none");
    c.env_remove("APP_MODE");
    let out = run_bounded(c, Duration::from_secs(240));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("transport: fabric (tcp;ofi_rxm)"), "{t}");
    assert!(t.contains("test result: ok."), "{t}");
    assert!(!t.contains(" 0 passed;"), "{t}");
}

/// The chaos suite (tests/chaos.rs) as the driver of a 3-node Slurm step:
/// random SIGKILLs of workers, actors and one node's raylet under srun;
/// every result is right or a clear error, and once the step is over no
/// process of the job and no shared-memory file is left on any node (the
/// emulated nodes share one process table and one /dev/shm).
pub(super) fn test_chaos_suite_on_slurm() {
    if !slurm_wanted() {
        return;
    }
    let shm = common::shm_files;
    let before = shm();
    let chaos = test_binary("chaos");
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(launcher())
        .args(["--num-cpus", "2"])
        .args(["--object-store-memory", &(512u64 << 20).to_string()])
        .arg("--")
        .arg(&chaos);
    slurm_env(&mut c, "none");
    c.env_remove("APP_MODE").env("CHAOS_SECONDS", "8");
    let out = run_bounded(c, Duration::from_secs(240));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("chaos: ") && t.contains(" kills, "), "{t}");
    assert!(t.contains("test result: ok. 1 passed"), "{t}");
    // Nothing of the job is left: no process running the chaos binary (the
    // raylets and workers re-execute it), no store or endpoint file.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                        let argv0 = cmd.split(|b| *b == 0).next()?;
                        (argv0 == chaos.as_os_str().as_encoded_bytes())
                            .then(|| e.file_name().to_string_lossy().into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let files: Vec<String> = shm().difference(&before).cloned().collect();
        if left.is_empty() && files.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "left after the step: processes {left:?}, /dev/shm files {files:?}\n{t}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn slurm_wanted() -> bool {
    std::env::var_os("RUSTRAY_SKIP_SLURM").is_none()
}

pub(super) fn slurm_env(c: &mut Command, mode: &str) {
    c.env("APP_MODE", mode)
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir())
        .env("RUSTRAY_TMPDIR", std::env::temp_dir().join("rustray"));
}

pub(super) fn srun(nodes: u16, extra: &[&str], mode: &str) -> Output {
    srun_launch(nodes, extra, &[], mode)
}

/// `srun -N nodes <extra> rust-ray-launch <launch_args> -- <this test> `.
pub(super) fn srun_launch(nodes: u16, extra: &[&str], launch_args: &[&str], mode: &str) -> Output {
    let mut c = Command::new("srun");
    c.args([
        "-N",
        &nodes.to_string(),
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
    ])
    .args(extra)
    .arg(launcher())
    .args(launch_args)
    .args(["--object-store-memory", &(256u64 << 20).to_string()])
    .arg("--")
    .arg(me());
    slurm_env(&mut c, mode);
    run_bounded(c, Duration::from_secs(120))
}

/// The single-node suite on 3 Slurm nodes, through srun.
pub(super) fn test_core_suite_on_slurm_srun() {
    if !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(launcher())
        .args([
            "--num-cpus",
            "2",
            "--object-store-memory",
            &SUITE_STORE.to_string(),
        ])
        .arg("--")
        .arg(core_suite());
    slurm_env(&mut c, "none");
    c.env_remove("APP_MODE");
    assert_suite_passed(&run_bounded(c, Duration::from_secs(240)));
}

pub(super) fn test_slurm_srun_three_nodes() {
    if !slurm_wanted() {
        return;
    }
    let out = srun(3, &[], "app");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nodes used: 3"), "{t}");
    // Every node advertises its own address, never loopback.
    let addrs: std::collections::BTreeSet<&str> = t
        .lines()
        .filter(|l| l.starts_with("node "))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(addrs.len(), 3, "{t}");
    assert!(addrs.iter().all(|a| !a.starts_with("127.")), "{t}");
}

pub(super) fn test_slurm_allocation_becomes_resources() {
    if !slurm_wanted() {
        return;
    }
    let out = srun(2, &["--gpus-per-node=2", "-c", "2"], "app");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // GRES GPUs and -c CPUs become each node's resources. (Memory is not a
    // consumable in the emulated cluster, so Slurm exports no
    // SLURM_MEM_PER_NODE here; the unit tests in src/slurm.rs cover it.)
    assert_eq!(t.matches("gpu=2").count(), 2, "{t}");
    assert_eq!(t.matches("cpu=2").count(), 2, "{t}");
}

/// GRES GPUs are devices with ids: on every node of the step, two 1-GPU
/// tasks at once hold the two devices Slurm allocated there, each seeing
/// its own in CUDA_VISIBLE_DEVICES (the emulated cluster's fake GPUs are
/// /dev/null-backed device files).
pub(super) fn test_slurm_gres_gpus_are_device_ids() {
    if !slurm_wanted() {
        return;
    }
    let out = srun(2, &["--gpus-per-node=2", "-c", "2"], "gpus");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("slurm gave CUDA_VISIBLE_DEVICES=0,1"), "{t}");
    assert_eq!(t.matches("gpus of ").count(), 2, "{t}");
    assert_eq!(t.matches(": [0, 1]").count(), 2, "{t}");
}

/// Submits `slurm/rust-ray.sbatch -N 3 <app>` and returns the job's output
/// once it has left the queue.
pub(super) fn sbatch(app: &std::path::Path, mode: &str, sbatch_args: &[&str]) -> String {
    let dir = rdv_dir();
    let log = dir.join("sbatch-%j.out");
    let script = std::env::current_dir()
        .expect("cwd")
        .join("slurm/rust-ray.sbatch");
    let mut c = Command::new("sbatch");
    c.args(["--parsable", "-N", "3"])
        .args(sbatch_args)
        .arg("-o")
        .arg(&log)
        .arg(&script)
        .arg(app)
        .env("RUST_RAY_LAUNCH", launcher());
    slurm_env(&mut c, mode);
    let out = run_bounded(c, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out));
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let mut q = Command::new("squeue");
        q.args(["-h", "-j", &job]);
        let q = run_bounded(q, Duration::from_secs(10));
        if String::from_utf8_lossy(&q.stdout).trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "job {job} did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = std::fs::read_to_string(dir.join(format!("sbatch-{job}.out"))).unwrap_or_default();
    format!("job {job} output:\n{t}")
}

pub(super) fn test_slurm_sbatch() {
    if !slurm_wanted() {
        return;
    }
    let t = sbatch(&me(), "app", &[]);
    assert!(t.contains("nodes used: 3"), "{t}");
}

/// The single-node suite on 3 Slurm nodes, through sbatch.
pub(super) fn test_core_suite_on_slurm_sbatch() {
    if !slurm_wanted() {
        return;
    }
    // 2 CPUs per node, from the allocation (-c 2), as the suite expects.
    let t = sbatch(&core_suite(), "none", &["-c", "2"]);
    assert!(t.contains(&all_of_core_suite()), "{t}");
}

/// A rank that never starts its raylet: rank 0 fails the step with an
/// error naming the missing node, within the join bound, and no rank hangs.
pub(super) fn test_slurm_node_never_registers() {
    if !slurm_wanted() {
        return;
    }
    let dir = rdv_dir();
    let conf = dir.join("multi-prog.conf");
    std::fs::write(
        &conf,
        format!(
            "0-1 {} -- {}\n2 sleep 60\n",
            launcher().display(),
            me().display()
        ),
    )
    .expect("multi-prog file");
    let mut c = Command::new("srun");
    c.args([
        "-N",
        "3",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "--multi-prog",
    ])
    .arg(&conf)
    .env("RUSTRAY_JOIN_TIMEOUT_S", "5");
    slurm_env(&mut c, "app");
    let t0 = Instant::now();
    let out = run_bounded(c, Duration::from_secs(90));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("did not register"), "{t}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}

/// The library linked into a simulation: every rank of `srun -N 3
/// --ntasks-per-node=2` calls `init()`; they form one cluster by
/// themselves and rank 0 gathers every rank's analysis results.
pub(super) fn test_slurm_insitu_ranks() {
    if !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=2", "--kill-on-bad-exit=1"])
        .arg(target_dir().join("examples/insitu"));
    slurm_env(&mut c, "none");
    let out = run_bounded(c, Duration::from_secs(120));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("gathered 24 results from 6 ranks on 3 nodes"),
        "{t}"
    );
}

/// An in-situ step with a rank that never calls `init`: once the join
/// timeout has passed, rank 0 fails the step though its own `main` is still
/// at work, saying how many ranks never joined, which, and which nodes had
/// none (before, rank 0 waited 600 s).
pub(super) fn test_slurm_insitu_rank_that_never_joins_fails_the_step() {
    if !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(me());
    slurm_env(&mut c, "insitu_straggler");
    c.env("RUSTRAY_JOIN_TIMEOUT_S", "5");
    let t0 = std::time::Instant::now();
    let out = run_bounded(c, Duration::from_secs(120));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("1 of 3 ranks never joined the cluster"), "{t}");
    assert!(t.contains("(RUSTRAY_JOIN_TIMEOUT_S): rank 2"), "{t}");
    assert!(t.contains("nodes with no rank: "), "{t}");
    assert!(
        t0.elapsed() < Duration::from_secs(45),
        "took {:?}: {t}",
        t0.elapsed()
    );
}

/// A raylet killed mid-job on a Slurm node: the GCS notices, the tasks
/// that ran there are retried on the other nodes, the job succeeds.
pub(super) fn test_slurm_raylet_killed_mid_job() {
    if !slurm_wanted() {
        return;
    }
    let out = srun(3, &[], "nodeloss");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("survived the loss of node"), "{t}");
}

// ------------------------------------------------------------------ MPI

/// `mpirun -np 4 ./sim` without Slurm: the ranks of an MPI simulation join
/// one cluster through their communicator (examples/insitu_mpi.rs).
pub(super) fn test_mpirun_insitu_local() {
    if !cfg!(feature = "mpi") {
        return;
    }
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "4"])
        .arg(target_dir().join("examples/insitu_mpi"))
        .env_remove("SLURM_JOB_ID")
        .env("RUSTRAY_TMPDIR", std::env::temp_dir().join("rustray"));
    assert_insitu_mpi(
        c,
        "world of 4 ranks: gathered 12 results from 4 ranks on 1 nodes",
    );
}

/// Runs an examples/insitu_mpi command; it succeeds and rank 0 says `want`.
pub(super) fn assert_insitu_mpi(c: Command, want: &str) {
    let out = run_bounded(c, Duration::from_secs(120));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(want), "{t}");
}

/// The same under `srun --mpi=pmix` on 3 Slurm nodes, 2 ranks each: the
/// bootstrap goes through MPI, across the nodes.
pub(super) fn test_slurm_mpi_insitu_ranks() {
    if !cfg!(feature = "mpi") || !slurm_wanted() {
        return;
    }
    let mut c = Command::new("srun");
    c.args([
        "--mpi=pmix",
        "-N",
        "3",
        "--ntasks-per-node=2",
        "--kill-on-bad-exit=1",
    ])
    .arg(target_dir().join("examples/insitu_mpi"));
    slurm_env(&mut c, "none");
    c.env_remove("APP_MODE");
    assert_insitu_mpi(
        c,
        "world of 6 ranks: gathered 18 results from 6 ranks on 3 nodes",
    );
}

/// `srun --mpi=pmix rust-ray-launch --bootstrap mpi -- app`: one launcher
/// per node, MPI_Init and collectives in place of the rendezvous file.
pub(super) fn test_slurm_mpi_bootstrap_launcher() {
    if !cfg!(feature = "mpi") || !slurm_wanted() {
        return;
    }
    let out = srun_launch(3, &["--mpi=pmix"], &["--bootstrap", "mpi"], "app");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nodes used: 3"), "{t}");
    let addrs: std::collections::BTreeSet<&str> = t
        .lines()
        .filter(|l| l.starts_with("node "))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(addrs.len(), 3, "{t}");
}

/// srun without an MPI plugin: a clear error naming the fix, not a world
/// of singletons or MPI's own abort page.
pub(super) fn test_slurm_mpi_wrong_plugin_is_a_clear_error() {
    if !cfg!(feature = "mpi") || !slurm_wanted() {
        return;
    }
    let out = srun_launch(2, &["--mpi=none"], &["--bootstrap", "mpi"], "app");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("srun --mpi=pmix"), "{t}");
}

/// A launcher built without the feature says how to get it.
pub(super) fn test_bootstrap_mpi_without_the_feature_is_a_clear_error() {
    if !cfg!(feature = "mpi") {
        assert_launch_fails(&["--bootstrap", "mpi"], "--features mpi");
    }
}

/// Two jobs on the same nodes at once: each its own cluster.
pub(super) fn test_slurm_two_jobs_at_once() {
    if !slurm_wanted() {
        return;
    }
    let a = std::thread::spawn(|| srun(2, &["--overlap", "--oversubscribe"], "app"));
    let b = std::thread::spawn(|| srun(2, &["--overlap", "--oversubscribe"], "app"));
    for o in [a.join().expect("job a"), b.join().expect("job b")] {
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert!(t.contains("nodes used: 2"), "{t}");
    }
}
