//! Launching on this machine: local nodes, a second driver, exit codes, `status`
//! and `stop`, signals, and the core, conformance and multinode suites run as
//! the driver of a launched cluster.

use super::*;

/// `rust-ray-launch --spill-dir DIR --store-dir SDIR`: a full store spills
/// to DIR, the store itself is a file in SDIR, and both are gone with the
/// cluster.
pub(super) fn test_launch_spill_dir() {
    let dir = std::env::temp_dir().join(format!("rustray-launch-spill-{}", std::process::id()));
    let store_dir =
        std::env::temp_dir().join(format!("rustray-launch-store-{}", std::process::id()));
    for d in [&dir, &store_dir] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).expect("dir");
    }
    let mut c = Command::new(launcher());
    c.args(["--local-nodes", "1", "--num-cpus", "1"])
        .args(["--object-store-memory", &(64u64 << 20).to_string()])
        .arg("--spill-dir")
        .arg(&dir)
        .arg("--store-dir")
        .arg(&store_dir)
        .arg("--")
        .arg(me())
        .env("APP_MODE", "spill")
        .env("SPILL_DIR", &dir)
        .env("STORE_DIR", &store_dir)
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    let out = run_bounded(c, Duration::from_secs(60));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("under the --spill-dir"), "{t}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the spill dir: {left:?}");
    let left: Vec<_> = std::fs::read_dir(&store_dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the store dir: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&store_dir);
}

pub(super) fn test_launch_local_nodes() {
    let out = run_bounded(launch_local(3, "app"), Duration::from_secs(60));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nodes used: 3"), "{t}");
}

/// `--local-node` gives each local node resources of its own.
pub(super) fn test_launch_local_nodes_with_their_own_resources() {
    let mut c = Command::new(launcher());
    c.args(["--num-cpus", "1", "--object-store-memory"])
        .arg((256u64 << 20).to_string())
        .args(["--local-node", "num_gpus=0"])
        .args(["--local-node", "num_cpus=3,num_gpus=2,special=1"])
        .arg("--")
        .arg(me())
        .env("APP_MODE", "app")
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    let out = run_bounded(c, Duration::from_secs(60));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nodes used: 2"), "{t}");
    assert!(t.contains("cpu=1 gpu=0"), "{t}");
    assert!(t.contains("cpu=3 gpu=2"), "{t}");
    let mut bad = Command::new(launcher());
    bad.args(["--local-node", "num_cpus=x", "--", "true"]);
    let out = run_bounded(bad, Duration::from_secs(30));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("num_cpus=x"), "{t}");
}

/// `init_address("auto")` from a process the launcher did not start joins
/// the running cluster as a second driver (see `second_driver`); with no
/// cluster running it is a clear error.
pub(super) fn test_second_driver_joins_with_init_address() {
    let out = run_bounded(launch_local(2, "two_drivers"), Duration::from_secs(120));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("two drivers shared the cluster"), "{t}");
    let mut c = Command::new(me());
    c.env("APP_MODE", "second_driver")
        .env_remove("RUSTRAY_ADDRESS")
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir().join("empty"));
    let out = run_bounded(c, Duration::from_secs(60));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("no running rustray cluster"), "{t}");
}

pub(super) fn test_launch_returns_the_driver_exit_code() {
    let out = run_bounded(launch_local(2, "exit3"), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

pub(super) fn test_launch_bad_app_is_a_clear_error() {
    let mut c = Command::new(launcher());
    c.args(["--local-nodes", "2", "--", "/nonexistent/app"]);
    let out = run_bounded(c, Duration::from_secs(30));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("/nonexistent/app") && t.contains("not found"),
        "{t}"
    );
}

pub(super) fn status_in(dir: &std::path::Path) -> Output {
    let mut s = Command::new(launcher());
    s.arg("status").env("RUSTRAY_RENDEZVOUS_DIR", dir);
    run_bounded(s, Duration::from_secs(20))
}

/// Starts a 2-node launcher whose driver waits, in its own rendezvous
/// directory; returns it once `status` shows both nodes, with the report.
// The launcher is the caller's to wait for (it is returned); if a check
// in between panics, the test binary's end takes it down.
#[allow(clippy::zombie_processes)]
pub(super) fn start_waiting_cluster(dir: &std::path::Path) -> (std::process::Child, String) {
    let _ = std::fs::remove_dir_all(dir);
    let mut c = launch_local(2, "wait");
    c.env("RUSTRAY_RENDEZVOUS_DIR", dir);
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("launcher starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = status_in(dir);
        let t = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && t.matches(" alive ").count() == 2 {
            return (child, t);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("status never showed 2 nodes: {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `status` shows the running cluster's nodes; `stop` ends its driver and
/// the cluster, and nothing of it is left behind.
pub(super) fn test_status_and_stop() {
    let dir = rdv_dir().join("status");
    let (child, report) = start_waiting_cluster(&dir);
    assert!(
        report.contains("2 nodes") && report.contains("store"),
        "{report}"
    );
    // A connection without the cluster's secret is refused: closed before
    // any message is read, and the cluster goes on.
    let gcs = report
        .split("GCS at ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("GCS address in the status report");
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(gcs).expect("connect to the GCS port");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&[0u8; 16]);
        let _ = s.write_all(&[4, 0, 0, 0, 1, 2, 3, 4]);
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a connection without the secret got an answer");
    }
    assert!(status_in(&dir).status.success(), "the cluster went down");
    let mut stop = Command::new(launcher());
    stop.arg("stop").env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    let o = run_bounded(stop, Duration::from_secs(20));
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    let out = child.wait_with_output().expect("launcher output");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t0.elapsed()
    );
    // The driver got SIGTERM.
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
    let o = status_in(&dir);
    assert!(!o.status.success(), "cluster still listed: {}", text(&o));
}

/// `stop --job` ends that cluster and no other, even when both publish in
/// the same rendezvous directory.
pub(super) fn test_stop_only_stops_its_own_cluster() {
    let dir = rdv_dir().join("two");
    let (a, _) = start_waiting_cluster(&dir);
    // What the first cluster's rendezvous file says, for a stale copy once
    // that cluster is gone (a job whose rank 0 was killed leaves one).
    let a_file =
        std::fs::read(dir.join(format!("local-{}", a.id()))).expect("the first cluster's file");
    // A second cluster in the same directory (start_waiting_cluster would
    // wipe it).
    let mut c = launch_local(2, "wait");
    c.env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    let mut b = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("second launcher");
    let deadline = Instant::now() + Duration::from_secs(30);
    while String::from_utf8_lossy(&status_in(&dir).stdout)
        .matches(" alive ")
        .count()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "the second cluster never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stop = Command::new(launcher());
    stop.args(["stop", "--job", &a.id().to_string()])
        .env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    assert!(run_bounded(stop, Duration::from_secs(20)).status.success());
    let out = a.wait_with_output().expect("first launcher ends");
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
    // The other cluster still runs and answers.
    assert!(
        matches!(b.try_wait(), Ok(None)),
        "the other cluster was stopped too"
    );
    let mut st = Command::new(launcher());
    st.args(["status", "--job", &b.id().to_string()])
        .env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    let o = run_bounded(st, Duration::from_secs(20));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .matches(" alive ")
            .count()
            == 2,
        "{}",
        text(&o)
    );
    // A stale file (named to be read first) does not keep `status` from
    // reporting the live cluster, nor `stop` from stopping it.
    std::fs::write(dir.join("local-0"), &a_file).expect("stale file");
    let mut st = Command::new(launcher());
    st.arg("status").env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    let o = run_bounded(st, Duration::from_secs(20));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && report.matches(" alive ").count() == 2
            && report.contains("not answering"),
        "{}",
        text(&o)
    );
    let mut stop = Command::new(launcher());
    stop.arg("stop").env("RUSTRAY_RENDEZVOUS_DIR", &dir);
    let o = run_bounded(stop, Duration::from_secs(20));
    assert!(o.status.success(), "{}", text(&o));
    let out = b.wait_with_output().expect("second launcher ends");
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
}

/// SIGTERM to the launcher (what `scancel` or Ctrl-C does) ends the driver
/// and the cluster, leaving no shared memory, socket or process behind.
pub(super) fn test_sigterm_leaves_nothing_behind() {
    let dir = rdv_dir().join("sigterm");
    let (child, report) = start_waiting_cluster(&dir);
    let cluster = report
        .split_whitespace()
        .nth(1)
        .expect("cluster id in the status report")
        .to_string();
    let shm = || -> Vec<String> {
        std::fs::read_dir("/dev/shm")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(&cluster))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(shm().len(), 2, "one arena per node while it runs");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t0 = Instant::now();
    let out = child.wait_with_output().expect("launcher output");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shm().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(shm().is_empty(), "left behind: {:?}", shm());
    let base = std::env::var_os("RUSTRAY_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/rustray"));
    let socks: Vec<PathBuf> = std::fs::read_dir(&base)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&cluster))
                .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    assert!(socks.is_empty(), "sockets left: {socks:?}");
}

/// The core test binary (tests/core.rs), to run the single-node suite as
/// the driver of a multi-node cluster.
pub(super) fn core_suite() -> PathBuf {
    test_binary("core")
}

/// The newest build of the integration test binary `name`.
pub(super) fn test_binary(name: &str) -> PathBuf {
    let prefix = format!("{name}-");
    let deps = target_dir().join("deps");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&deps)
        .expect("deps dir")
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && !n.contains('.')
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.pop().expect("the test binary is built").1
}

pub(super) const SUITE_STORE: u64 = 256 << 20;

pub(super) fn assert_suite_passed(out: &Output) {
    let t = text(out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&all_of_core_suite()), "{t}");
}

/// The summary line of a run of the whole core suite, every test passed
/// (the count asked of the binary itself).
pub(super) fn all_of_core_suite() -> String {
    let out = Command::new(core_suite())
        .arg("--count")
        .env("RUSTRAY_SKIP_SLURM", "1")
        .output()
        .expect("the core suite runs");
    let t = text(&out);
    let n: usize = t
        .lines()
        .find_map(|l| l.strip_suffix(" tests")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the core suite did not say how many tests it has: {t}"));
    assert!(n > 20, "{t}");
    format!("test result: ok. {n} passed; 0 failed")
}

/// The single-node suite, unchanged, on 3 local nodes.
pub(super) fn test_core_suite_on_local_nodes() {
    let mut c = Command::new(launcher());
    c.args(["--local-nodes", "3", "--num-cpus", "2"])
        .args(["--object-store-memory", &SUITE_STORE.to_string()])
        .arg("--")
        .arg(core_suite())
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    assert_suite_passed(&run_bounded(c, Duration::from_secs(240)));
}

/// Ray's ported tests (tests/conformance.rs) with 3 local nodes as the
/// cluster they join.
pub(super) fn test_conformance_suite_on_local_nodes() {
    let mut c = Command::new(launcher());
    c.args(["--local-nodes", "3", "--num-cpus", "2"])
        .args(["--object-store-memory", &SUITE_STORE.to_string()])
        .arg("--")
        .arg(test_binary("conformance"))
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    let out = run_bounded(c, Duration::from_secs(300));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("test result: ok.") && t.contains(" 0 failed;"),
        "{t}"
    );
    assert!(!t.contains(" 0 passed;"), "{t}");
}

/// The whole multi-node suite with objects moved by libfabric (`shm`
/// between local nodes), as `RUSTRAY_TRANSPORT=fabric` asks.
pub(super) fn test_multinode_suite_on_fabric_local() {
    // The provider's shared-memory files of the endpoints, left by nobody:
    // not by the raylets the suite kills, nor by stuck endpoints.
    let endpoints = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir("/dev/shm")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("rustray-") && n.contains("-ep"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = endpoints();
    let mut c = Command::new(test_binary("multinode"));
    c.env("RUSTRAY_TRANSPORT", "fabric");
    let out = run_bounded(c, Duration::from_secs(300));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let left: Vec<String> = endpoints().difference(&before).cloned().collect();
    assert!(left.is_empty(), "endpoint files left in /dev/shm: {left:?}");
    assert!(t.contains("transport: fabric (shm)"), "{t}");
    assert!(t.contains("test result: ok."), "{t}");
    assert!(!t.contains(" 0 passed;"), "{t}");
}

/// `rust-ray-launch ARGS -- <this test> app` fails, saying `needle`.
pub(super) fn assert_launch_fails(args: &[&str], needle: &str) {
    let mut c = Command::new(launcher());
    c.args(args)
        .arg("--")
        .arg(me())
        .env("APP_MODE", "app")
        .env("RUSTRAY_RENDEZVOUS_DIR", rdv_dir());
    let out = run_bounded(c, Duration::from_secs(30));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains(needle), "{t}");
}

/// A bad transport is a clear error before anything starts.
pub(super) fn test_launch_bad_transport_is_a_clear_error() {
    assert_launch_fails(
        &["--local-nodes", "2", "--transport", "rdma"],
        "auto, fabric or tcp",
    );
}
