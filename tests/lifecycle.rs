//! Process-level behaviour: worker output reaches the driver's terminal with
//! a pid prefix, and neither `shutdown` nor a driver killed with SIGKILL
//! leaves a process, socket or shared-memory file behind.
//!
//! The tests re-run this binary as a child driver (`--child-*` modes) so
//! that they can watch and kill it from outside.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[rustray::remote]
fn shout(word: String) -> u32 {
    println!("hello from task: {word}");
    eprintln!("to stderr: {word}");
    std::process::id()
}

#[rustray::remote]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[rustray::remote]
fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

#[rustray::remote]
fn checksum(data: Vec<u8>) -> (u64, usize) {
    (common::checksum_of(&data), data.len())
}

#[rustray::remote]
fn forever() -> u32 {
    std::thread::sleep(Duration::from_secs(3600));
    0
}

/// A count that survives only as long as its actor's process does.
pub struct Tally {
    n: u64,
}

#[rustray::actor]
impl Tally {
    pub fn new() -> Self {
        Tally { n: 0 }
    }

    pub fn bump(&mut self) -> (u64, u32) {
        self.n += 1;
        (self.n, std::process::id())
    }
}

fn child_main(mode: &str) {
    rustray::init_with(rustray::Config::new().num_cpus(2.0)).expect("init");
    match mode {
        "--child-print" => {
            let pid = rustray::get(&shout::remote("abc".to_string()).unwrap()).expect("task");
            println!("task pid {pid}");
            rustray::shutdown();
        }
        "--child-hang" => {
            let _r = forever::remote().unwrap();
            let _big = rustray::put(vec![1u8; 1 << 20]).expect("put");
            println!("ready");
            std::thread::sleep(Duration::from_secs(3600));
        }
        "--child-busy-shutdown" => {
            // Many small-CPU tasks make the raylet start workers; shut down
            // while they are still starting.
            let refs: Vec<_> = (0..200)
                .map(|_| nap::options().num_cpus(0.01).remote(50).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(30));
            drop(refs);
            rustray::shutdown();
        }
        "--child-raylet-dies" => {
            // A task on this node: its worker's parent is the raylet.
            let raylet = rustray::get(&parent_pid::remote().unwrap()).expect("task");
            let pending = nap::remote(10_000).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            let ok = Command::new("kill")
                .args(["-9", &raylet.to_string()])
                .status()
                .expect("kill");
            assert!(ok.success());
            let e = rustray::get_timeout(&pending, Duration::from_secs(30)).unwrap_err();
            println!("kind={:?} message={}", e.kind(), e.message());
            rustray::shutdown();
        }
        "--child-no-shutdown" => {
            rustray::get(&shout::remote("x".to_string()).unwrap()).expect("task");
            // returns from main without calling shutdown
        }
        _ => unreachable!(),
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rustray-lc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn child(mode: &str, dir: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.arg(mode)
        .env("RUSTRAY_TMPDIR", dir)
        .env_remove("RUSTRAY_ROLE");
    c
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// What the sessions under `dir` left behind (sockets, arenas).
fn leftovers(dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let sessions: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    if sessions.is_empty() {
        left.push("no session directory was created".to_string());
    }
    for s in sessions {
        for f in std::fs::read_dir(s.path()).unwrap().flatten() {
            if f.path().extension().is_some_and(|x| x == "sock") {
                left.push(format!("socket {}", f.path().display()));
            }
        }
        let shm = format!("/dev/shm/rustray-{}", s.file_name().to_string_lossy());
        // symlink_metadata: the store's name may be a link (huge pages),
        // which dangles once its raylet is gone.
        if std::fs::symlink_metadata(&shm).is_ok() {
            left.push(format!("shared memory {shm}"));
        }
        if !s.path().join("logs").join("raylet.log").exists() {
            left.push("missing raylet log".to_string());
        }
    }
    left
}

fn assert_clean(dir: &Path) {
    let left = leftovers(dir);
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn test_worker_output_reaches_driver_with_pid_prefix() {
    let dir = tmpdir("print");
    let out = child("--child-print", &dir)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("task pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no task pid in output:\n{text}"));
    assert!(
        text.contains(&format!("(pid={pid}) hello from task: abc")),
        "prefixed stdout line missing:\n{text}"
    );
    assert!(
        text.contains(&format!("(pid={pid}) to stderr: abc")),
        "stderr line missing:\n{text}"
    );
    let logged = std::fs::read_dir(&dir).unwrap().flatten().any(|s| {
        std::fs::read_to_string(s.path().join("logs").join(format!("worker-{pid}.out")))
            .is_ok_and(|l| l.contains("hello from task"))
    });
    assert!(logged, "worker output also goes to the log directory");
    assert_clean(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

fn test_driver_sigkill_leaves_nothing() {
    let dir = tmpdir("kill");
    let mut c = child("--child-hang", &dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "child exited early"
        );
    }
    let procs = common::descendants(c.id());
    assert!(
        procs.len() >= 2,
        "raylet and workers run as processes: {procs:?}"
    );
    c.kill().unwrap();
    c.wait().unwrap();
    common::wait_until(
        "raylet and workers to exit",
        Duration::from_secs(10),
        || procs.iter().all(|p| !alive(*p)),
    );
    common::wait_until("cleanup", Duration::from_secs(10), || {
        leftovers(&dir).is_empty()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Shutting down while the raylet is still starting workers is quiet: no
/// worker starts after the store is gone (it would print an error on the
/// user's terminal) and nothing is left behind.
fn test_shutdown_while_workers_start_is_quiet() {
    for _ in 0..5 {
        let dir = tmpdir("busy");
        let out = child("--child-busy-shutdown", &dir).output().unwrap();
        assert!(out.status.success());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains("failed to start"), "{text}");
        common::wait_until("cleanup", Duration::from_secs(10), || {
            leftovers(&dir).is_empty()
        });
        // A worker's own log says it if it started too late (its terminal
        // line can be lost when it exits at once).
        for node in std::fs::read_dir(&dir).unwrap().flatten() {
            for log in std::fs::read_dir(node.path().join("logs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let l = std::fs::read_to_string(log.path()).unwrap_or_default();
                assert!(
                    !l.contains("failed to start"),
                    "{}: {l}",
                    log.path().display()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn test_end_of_main_without_shutdown_cleans_up() {
    let dir = tmpdir("noshut");
    let status = child("--child-no-shutdown", &dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    common::wait_until("cleanup", Duration::from_secs(10), || {
        leftovers(&dir).is_empty()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// test_failure.py's `LocalRayletDiedError`: a driver whose own raylet
/// dies gets a distinct error kind for what it was waiting on, and can
/// still shut down cleanly.
fn test_driver_whose_raylet_dies() {
    let dir = tmpdir("rayletdies");
    let out = child("--child-raylet-dies", &dir).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("kind=LocalRayletDied"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Frames no encoder writes, each to be sent on a connection of its own:
/// for every message kind (its index leads the body), a length field
/// claiming 2^40 bytes at each of the first field positions (the issue's
/// 13-byte frame that aborted the GCS is one of them); a length prefix
/// claiming a gigabyte ahead of 5 bytes; one past the frame limit; a
/// truncated prefix; and seeded random bodies of 2 to 64 bytes.
fn malformed_frames() -> Vec<Vec<u8>> {
    let framed = |body: Vec<u8>| {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend(body);
        f
    };
    let mut frames = Vec::new();
    for kind in 0u8..64 {
        for lead in [&[][..], &[1][..], &[1, 1][..]] {
            let mut body = vec![kind];
            body.extend_from_slice(lead);
            body.push(253);
            body.extend_from_slice(&(1u64 << 40).to_le_bytes());
            frames.push(framed(body));
        }
    }
    let mut gig = (1u32 << 30).to_le_bytes().to_vec();
    gig.extend([1, 2, 3, 4, 5]);
    frames.push(gig);
    frames.push(u32::MAX.to_le_bytes().to_vec());
    frames.push(vec![9, 0]);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = 2 + (x % 63) as usize;
        frames.push(framed(
            x.to_le_bytes().iter().cycle().take(n).copied().collect(),
        ));
    }
    frames
}

/// Issue 9: a peer holding the job's secret that sends the GCS, the raylet
/// and every core worker of the node (the driver included) malformed frames
/// costs only its own connections: the same actor process keeps its state,
/// the node table still answers, and tasks and actors still start.
fn test_malformed_frames_cost_only_their_connection() {
    common::cluster(2.0, None);
    let tally = Tally::remote().expect("actor");
    let (n, actor_pid) = rustray::get_timeout(&tally.bump(), Duration::from_secs(30)).unwrap();
    assert_eq!(n, 1);
    assert!(rustray::get_timeout(
        &shout::remote("before".to_string()).unwrap(),
        Duration::from_secs(30)
    )
    .is_ok());
    let frames = malformed_frames();
    for peer in [
        rustray::__private::Peer::Gcs,
        rustray::__private::Peer::Raylet,
        rustray::__private::Peer::Workers,
    ] {
        let made = rustray::__private::send_raw(peer, &frames).expect("sent");
        assert!(made >= frames.len(), "{peer:?}: {made} connections");
    }
    assert_eq!(
        rustray::get_timeout(&tally.bump(), Duration::from_secs(30)).unwrap(),
        (2, actor_pid),
        "the actor's process or state was lost"
    );
    assert!(alive(actor_pid));
    let nodes = rustray::nodes().expect("the GCS still answers");
    assert!(nodes.iter().all(|n| n.alive), "{nodes:?}");
    let pids: Vec<u32> = (0..4)
        .map(|i| {
            rustray::get_timeout(
                &shout::remote(format!("after {i}")).unwrap(),
                Duration::from_secs(30),
            )
        })
        .collect::<Result<_, _>>()
        .expect("tasks still run");
    assert!(!pids.is_empty());
    let fresh = Tally::remote().expect("a new actor");
    assert_eq!(
        rustray::get_timeout(&fresh.bump(), Duration::from_secs(30))
            .unwrap()
            .0,
        1
    );
}

/// Issue 9: well-formed messages with what no honest peer sends (ids
/// nobody made, offsets and lengths past any store, a resource amount past
/// any node, node indices past the cluster, a `Register` claiming the pid
/// of a process that is no worker followed by a `KillWorker` of it, frees of
/// every block in the store by a process that owns none of them), sent
/// to the GCS, the raylet and every core worker of the node: no component
/// falls over or acts on the lie (the process survives), and the same
/// actor, tasks and new actors run on after.
fn test_hostile_messages_harm_no_one() {
    common::cluster(2.0, None);
    let tally = Tally::remote().expect("actor");
    let (n, actor_pid) = rustray::get_timeout(&tally.bump(), Duration::from_secs(30)).unwrap();
    assert_eq!(n, 1);
    // Objects in the store before: a lie that freed their blocks would
    // let the puts below overwrite them.
    let early: Vec<_> = (0..4u8)
        .map(|i| rustray::put(vec![i; 1 << 20]).expect("put"))
        .collect();
    for (i, r) in early.iter().enumerate() {
        assert!(rustray::get(r).expect("read").iter().all(|b| *b == i as u8));
    }
    let mut bystander = Command::new("sleep").arg("60").spawn().expect("sleep");
    for peer in [
        rustray::__private::Peer::Gcs,
        rustray::__private::Peer::Raylet,
        rustray::__private::Peer::Workers,
    ] {
        let frames = rustray::__private::hostile_frames(peer, bystander.id()).expect("frames");
        let made = rustray::__private::send_raw(peer, &frames).expect("sent");
        assert!(made >= frames.len(), "{peer:?}: {made} connections");
    }
    assert!(
        matches!(bystander.try_wait(), Ok(None)),
        "the raylet killed a process that is not its worker"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert_eq!(
        rustray::get_timeout(&tally.bump(), Duration::from_secs(30)).unwrap(),
        (2, actor_pid),
        "the actor's process or state was lost"
    );
    let nodes = rustray::nodes().expect("the GCS still answers");
    assert!(nodes.iter().all(|n| n.alive), "{nodes:?}");
    for i in 0..4 {
        rustray::get_timeout(
            &shout::remote(format!("after {i}")).unwrap(),
            Duration::from_secs(30),
        )
        .expect("tasks still run");
    }
    let big: Vec<_> = (0..4)
        .map(|_| rustray::put(vec![0xeeu8; 4 << 20]).expect("a large put"))
        .collect();
    assert_eq!(rustray::get(&big[0]).expect("read back").len(), 4 << 20);
    for (i, r) in early.iter().enumerate() {
        let v = rustray::get(r).expect("an object put before");
        assert!(
            v.len() == 1 << 20 && v.iter().all(|b| *b == i as u8),
            "object {i}, put before, was freed and overwritten"
        );
    }
    let fresh = Tally::remote().expect("a new actor");
    assert_eq!(
        rustray::get_timeout(&fresh.bump(), Duration::from_secs(30))
            .unwrap()
            .0,
        1
    );
}

/// A request the raylet will not forward to the GCS (what only a raylet
/// may say) is answered at once with why, not left to its asker's
/// 60-second timeout; the node's own processes go on as before.
fn test_a_refused_gcs_request_is_answered() {
    common::cluster(2.0, None);
    let t0 = Instant::now();
    let answer = rustray::__private::refused_gcs_request(41, Duration::from_secs(20))
        .expect("asked")
        .expect("the raylet answered no refusal");
    assert!(
        answer.contains("GcsRefused") && answer.contains("41") && answer.contains("raylet"),
        "{answer}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20));
    let nodes = rustray::nodes().expect("the GCS still answers");
    assert!(nodes.iter().all(|n| n.alive), "{nodes:?}");
}

/// Issue 9: a local process that asks the raylet many questions and never
/// reads the answers stalls nobody else: the raylet answers without
/// blocking under its lock (a thread of the connection's own writes what
/// the socket does not take), so the driver's own raylet calls (store
/// stats, allocating a large put) still answer at once.
fn test_a_client_that_never_reads_stalls_no_one() {
    common::cluster(2.0, None);
    rustray::__private::flood_raylet(300_000, Duration::from_secs(15)).expect("flood");
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    for _ in 0..20 {
        rustray::store_stats().expect("store stats");
        let big = rustray::put(vec![3u8; 1 << 20]).expect("a large put");
        drop(big);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the raylet stalled: {:?}",
        t0.elapsed()
    );
}

/// Bytes of `path`'s mappings in this process that the kernel maps with
/// huge pages (smaps' `ShmemPmdMapped`/`FilePmdMapped`).
fn huge_mapped_bytes(path: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let name = path.to_string_lossy();
    let mut inside = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.ends_with(name.as_ref());
        } else if inside && (first == "ShmemPmdMapped:" || first == "FilePmdMapped:") {
            kb += words
                .next()
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kb << 10
}

/// `Config::store_dir` (Ray's `plasma_directory`): the node's store file
/// lives in the directory given, every process of the node maps it there (a
/// task reads its argument from it), shutdown removes it, and on a tmpfs
/// mounted with huge pages the store is mapped with them, which is what
/// lets a first large put run at memory speed. A directory that is not
/// there is a clear error.
fn test_store_in_a_directory_of_its_own() {
    // A kernel without transparent huge pages (no sysfs entry) refuses the
    // `huge=` option itself; one that denies them to tmpfs gives 4 KiB
    // pages whatever the mount says. Either way the store directory is
    // still tested, its huge pages only where there are any.
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .is_ok_and(|v| !v.contains("[deny]"));
    let options = if thp {
        "size=512m,huge=within_size"
    } else {
        "size=512m"
    };
    let fs = common::tmpfs::Tmpfs::mount("storedir", options)
        .unwrap_or_else(|e| panic!("{e}: this test mounts a tmpfs, as root"));
    let shm_before = common::shm_files();
    rustray::init_with(
        rustray::Config::new()
            .num_cpus(1.0)
            .object_store_memory(128 << 20)
            .store_dir(&fs.0),
    )
    .expect("a cluster whose store is on the huge-page tmpfs");
    let files = fs.files();
    assert!(
        files.len() == 1 && files[0].starts_with("rustray-"),
        "one store file in the store directory, found {files:?}"
    );
    // (A shared-memory fabric provider's endpoint files, `...-ep`, may
    // appear there: they are not the store.)
    let new_in_shm: Vec<_> = common::shm_files()
        .difference(&shm_before)
        .filter(|f| !f.contains("-ep"))
        .cloned()
        .collect();
    assert!(
        new_in_shm.is_empty(),
        "nothing of the store in /dev/shm: {new_in_shm:?}"
    );
    let data = common::pattern(16 << 20, 3);
    let want = (common::checksum_of(&data), data.len());
    let r = rustray::put(data).expect("put");
    let got = rustray::get(&checksum::remote(r.clone()).unwrap()).expect("task reads its argument");
    assert_eq!(got, want, "the task's argument read from the store");
    let back: Vec<u8> = rustray::get(&r).expect("get");
    assert_eq!((common::checksum_of(&back), back.len()), want);
    let huge = huge_mapped_bytes(&fs.0.join(&files[0]));
    if thp {
        assert!(
            huge >= 2 << 20,
            "the store is mapped with huge pages on a huge-page tmpfs: {huge} bytes are"
        );
    } else {
        println!("(no transparent huge pages for tmpfs in this kernel: {huge} bytes mapped huge)");
    }
    drop(r);
    rustray::shutdown();
    assert!(
        fs.files().is_empty(),
        "shutdown removes the store file: {:?}",
        fs.files()
    );

    let missing = fs.0.join("not-there");
    let err = rustray::init_with(rustray::Config::new().num_cpus(1.0).store_dir(&missing))
        .expect_err("a store directory that does not exist");
    assert!(
        err.to_string().contains(&*missing.to_string_lossy()),
        "the error names the directory: {err}"
    );
}

fn test_shutdown_then_init_again() {
    for _ in 0..3 {
        common::cluster(2.0, None);
        assert!(rustray::get(&shout::remote("again".to_string()).unwrap()).unwrap() > 0);
        rustray::shutdown();
    }
}

fn main() {
    common::enter_cluster_role();
    if let Some(mode) = std::env::args()
        .nth(1)
        .filter(|a| a.starts_with("--child-"))
    {
        child_main(&mode);
        return;
    }
    common::run(&[
        (
            "test_malformed_frames_cost_only_their_connection",
            test_malformed_frames_cost_only_their_connection,
        ),
        (
            "test_a_refused_gcs_request_is_answered",
            test_a_refused_gcs_request_is_answered,
        ),
        (
            "test_hostile_messages_harm_no_one",
            test_hostile_messages_harm_no_one,
        ),
        (
            "test_a_client_that_never_reads_stalls_no_one",
            test_a_client_that_never_reads_stalls_no_one,
        ),
        (
            "test_worker_output_reaches_driver_with_pid_prefix",
            test_worker_output_reaches_driver_with_pid_prefix,
        ),
        (
            "test_driver_sigkill_leaves_nothing",
            test_driver_sigkill_leaves_nothing,
        ),
        (
            "test_end_of_main_without_shutdown_cleans_up",
            test_end_of_main_without_shutdown_cleans_up,
        ),
        (
            "test_shutdown_then_init_again",
            test_shutdown_then_init_again,
        ),
        (
            "test_store_in_a_directory_of_its_own",
            test_store_in_a_directory_of_its_own,
        ),
        (
            "test_driver_whose_raylet_dies",
            test_driver_whose_raylet_dies,
        ),
        (
            "test_shutdown_while_workers_start_is_quiet",
            test_shutdown_while_workers_start_is_quiet,
        ),
    ]);
}
