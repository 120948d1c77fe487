//! Object spilling (Ray's `python/ray/tests/test_object_spilling.py`): a
//! store that fills up moves its oldest unused objects to disk, and a `get`,
//! a task's argument or another node's pull reads them back.

mod common;

use rustray::{Config, ErrorKind, ObjectRef};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[rustray::remote]
fn checksum(data: Vec<u8>) -> (u64, usize, String) {
    (
        sum(&data),
        data.len(),
        rustray::node_name().expect("node name"),
    )
}

use common::{checksum_of as sum, pattern};

/// A fresh directory for one test's spill files.
fn spill_dir(test: &str) -> PathBuf {
    let d = PathBuf::from(format!(
        "/tmp/rustray-spilltest-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("spill test dir");
    d
}

/// Spill files under `dir` (every node's).
fn spill_files(dir: &Path) -> usize {
    let Ok(nodes) = std::fs::read_dir(dir) else {
        return 0;
    };
    nodes
        .flatten()
        .filter_map(|n| std::fs::read_dir(n.path()).ok())
        .map(|files| files.count())
        .sum()
}

/// Waits (bounded) for `f`.
fn eventually(what: &str, f: impl Fn() -> bool) {
    common::wait_until(what, Duration::from_secs(10), f);
}

/// Ray's `test_spill_objects_automatically`: three times the store's worth
/// of objects, all referenced, are put; every one reads back intact through
/// `get` and as a task's argument; the store never holds more than its
/// memory, and the spill files go with the objects.
fn test_spill_objects_automatically() {
    if common::launched() {
        return; // needs its own small store
    }
    let dir = spill_dir("auto");
    rustray::init_with(
        Config::new()
            .num_cpus(2.0)
            .object_store_memory(64 << 20)
            .spill_dir(&dir),
    )
    .expect("cluster starts");
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..12u8)
        .map(|i| rustray::put(pattern(16 << 20, i)).expect("a put spills older objects"))
        .collect();
    let s = rustray::store_stats().expect("stats");
    assert!(s.used_bytes <= s.capacity_bytes, "{s:?}");
    assert!(s.spilled_objects >= 8, "{s:?}");
    assert_eq!(s.num_objects, 12, "{s:?}");
    assert!(spill_files(&dir) >= 1, "no spill file in {}", dir.display());
    // `get` reads them back (spilling others to make room), in any order.
    for i in [0usize, 11, 3, 7, 1] {
        let v = rustray::get(&refs[i]).expect("get of a spilled object");
        assert_eq!(sum(&v), sum(&pattern(16 << 20, i as u8)), "object {i}");
    }
    // Views too: the bytes stay in memory while the view lives.
    let view = rustray::get_view(&refs[5]).expect("view");
    // Tasks read them as arguments.
    let sums: Vec<_> = refs.iter().map(|r| checksum::remote(r).unwrap()).collect();
    for (i, r) in sums.iter().enumerate() {
        let (got, len, _) = rustray::get_timeout(r, Duration::from_secs(60)).expect("task");
        assert_eq!(len, 16 << 20);
        assert_eq!(got, sum(&pattern(16 << 20, i as u8)), "task {i}: corrupted");
    }
    assert_eq!(
        sum(&view),
        sum(&pattern(16 << 20, 5)),
        "a live view was spilled"
    );
    drop(view);
    drop(refs);
    eventually("the spill files to go with the objects", || {
        spill_files(&dir) == 0
    });
    let s = rustray::store_stats().expect("stats");
    assert_eq!((s.spilled_objects, s.num_objects), (0, 0), "{s:?}");
    rustray::shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ray's `object_spilling_threshold`: a store filled past 80% of its
/// memory spills its oldest objects down to it in the background, with no
/// put waiting for it (and no put having failed to fit).
fn test_spill_past_the_threshold_in_the_background() {
    if common::launched() {
        return;
    }
    let dir = spill_dir("threshold");
    rustray::init_with(
        Config::new()
            .num_cpus(1.0)
            .object_store_memory(64 << 20)
            .spill_dir(&dir),
    )
    .expect("cluster starts");
    // 56 MiB of 64: every put fits, the store ends 87% full.
    let refs: Vec<_> = (0..4u8)
        .map(|i| rustray::put(pattern(14 << 20, i)).expect("put"))
        .collect();
    eventually("a background spill", || {
        let s = rustray::store_stats().expect("stats");
        s.spilled_objects >= 1 && s.used_bytes <= s.capacity_bytes / 100 * 80
    });
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(
            sum(&rustray::get(r).expect("get")),
            sum(&pattern(14 << 20, i as u8))
        );
    }
    drop(refs);
    rustray::shutdown();
    let left = spill_files(&dir);
    assert_eq!(left, 0, "spill files left after shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Puts a block from a task (another process than the driver) and sums it.
#[rustray::remote]
fn put_in_task(n: usize, seed: u8) -> u64 {
    let r = rustray::put(pattern(n, seed)).expect("put in a task");
    sum(&rustray::get(&r).expect("get in a task"))
}

/// A driver's put that nothing reads is spillable for other processes'
/// puts soon after (the owner gives back the block's write pin it keeps
/// for a read right after the put within 100 ms).
fn test_a_put_nobody_reads_is_spilled_for_another_process() {
    if common::launched() {
        return;
    }
    common::cluster(1.0, Some(16 << 20));
    let a = rustray::put(pattern(10 << 20, 1)).expect("put");
    std::thread::sleep(Duration::from_millis(400));
    let got = rustray::get_timeout(
        &put_in_task::remote(10usize << 20, 2u8).unwrap(),
        Duration::from_secs(30),
    )
    .expect("the task's put spills the driver's");
    assert_eq!(got, sum(&pattern(10 << 20, 2)));
    assert_eq!(
        sum(&rustray::get(&a).expect("a reads back")),
        sum(&pattern(10 << 20, 1))
    );
}

/// Ray's `test_spilling_not_done_for_pinned_object`: an object being read
/// (a live view) is not spilled, so a put that only it could make room for
/// fails with `StoreFull`; once the view is gone the same put spills it,
/// and it reads back intact.
fn test_spilling_not_done_for_pinned_object() {
    if common::launched() {
        return;
    }
    common::cluster(2.0, Some(8 << 20));
    let a = rustray::put(vec![1u8; 5 << 20]).expect("put");
    let view = rustray::get_view(&a).expect("view");
    let e = rustray::put(vec![2u8; 5 << 20]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StoreFull, "{e}");
    assert!(e.message().contains("nothing can be spilled"), "{e}");
    assert!(view.iter().all(|b| *b == 1));
    drop(view);
    let b = rustray::put(vec![2u8; 5 << 20]).expect("a spills now");
    let s = rustray::store_stats().expect("stats");
    assert_eq!(s.spilled_objects, 1, "{s:?}");
    assert!(rustray::get_view(&a)
        .expect("a reads back")
        .iter()
        .all(|b| *b == 1));
    assert!(rustray::get_view(&b)
        .expect("b reads back")
        .iter()
        .all(|b| *b == 2));
}

/// A spill directory with no room left: the put that needed the spill
/// fails with a `StoreFull` error naming the directory and the cause, and
/// no object is lost or corrupted (the spill's partial file is removed).
fn test_spill_dir_full_is_a_clear_error() {
    if common::launched() {
        return;
    }
    // A real filesystem that fills up: an 8 MiB tmpfs of the test's own.
    let dir = spill_dir("full");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "mounting a tmpfs for the test needs root (make test runs as root)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            rustray::shutdown();
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unmount = Unmount(dir.clone());
    rustray::init_with(
        Config::new()
            .num_cpus(1.0)
            .object_store_memory(16 << 20)
            .spill_dir(&dir),
    )
    .expect("cluster starts");
    let mb6 = 6 << 20;
    let mut refs: Vec<_> = (0..3u8)
        .map(|i| rustray::put(pattern(mb6, i)).expect("the first spill fits the disk"))
        .collect();
    assert_eq!(rustray::store_stats().expect("stats").spilled_objects, 1);
    let e = rustray::put(pattern(mb6, 3)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StoreFull, "{e}");
    assert!(
        e.message().contains(&dir.display().to_string())
            && e.message().contains("No space left on device"),
        "{e}"
    );
    assert_eq!(spill_files(&dir), 1, "the failed spill's file was left");
    // Nothing lost: the two in memory read back, and the spilled one too
    // once there is room for it without spilling.
    for (i, r) in refs.iter().enumerate().skip(1) {
        assert_eq!(
            sum(&rustray::get(r).expect("in memory")),
            sum(&pattern(mb6, i as u8))
        );
    }
    refs.truncate(2);
    refs.remove(1);
    // (The frees travel to the raylet after the drops return.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        match rustray::get(&refs[0]) {
            Ok(v) => break v,
            Err(e) if e.kind() == ErrorKind::StoreFull && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("the spilled object did not read back: {e}"),
        }
    };
    assert_eq!(sum(&v), sum(&pattern(mb6, 0)));
}

fn main() {
    common::enter_cluster_role();
    common::run(&[
        (
            "test_spill_objects_automatically",
            test_spill_objects_automatically,
        ),
        (
            "test_spill_past_the_threshold_in_the_background",
            test_spill_past_the_threshold_in_the_background,
        ),
        (
            "test_a_put_nobody_reads_is_spilled_for_another_process",
            test_a_put_nobody_reads_is_spilled_for_another_process,
        ),
        (
            "test_spilling_not_done_for_pinned_object",
            test_spilling_not_done_for_pinned_object,
        ),
        (
            "test_spill_dir_full_is_a_clear_error",
            test_spill_dir_full_is_a_clear_error,
        ),
    ]);
}
