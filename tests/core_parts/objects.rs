//! Objects: type checks, a store too small or full, results that cannot be
//! stored, zero-copy reads, refs inside values.

use super::*;

pub(super) fn test_get_wrong_type() {
    common::cluster(2.0, None);
    let r = rustray::put(5u32).unwrap();
    let wrong: ObjectRef<String> = serde_roundtrip_retype(&r);
    let e = rustray::get(&wrong).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TypeMismatch);
    assert!(e.message().contains("u32"), "{e}");
    assert_eq!(rustray::get(&r).unwrap(), 5);
}

/// Reinterprets a ref as another type the way a program could by mistake
/// (through its own serialization), to exercise the runtime type check.
pub(super) fn serde_roundtrip_retype<A, B>(r: &ObjectRef<A>) -> ObjectRef<B> {
    let cfg = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(r, cfg).unwrap();
    bincode::serde::decode_from_slice(&bytes, cfg).unwrap().0
}

pub(super) fn test_object_too_large_and_store_full() {
    if common::launched() {
        // Needs its own 8 MiB store; a launched cluster has the launcher's.
        return;
    }
    common::cluster(2.0, Some(8 << 20));
    let e = rustray::put(vec![0u8; 16 << 20]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ObjectTooLarge, "{e}");
    // A full store spills (tests/spill.rs); one whose every object is in
    // use cannot.
    let a = rustray::put(vec![1u8; 5 << 20]).unwrap();
    let view = rustray::get_view(&a).unwrap();
    let e = rustray::put(vec![2u8; 5 << 20]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StoreFull, "{e}");
    // dropping the only ref frees the space
    drop(view);
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rustray::put(vec![3u8; 5 << 20]) {
            Ok(r) => {
                assert_eq!(rustray::get_view(&r).unwrap()[123], 3);
                assert_eq!(rustray::store_stats().unwrap().spilled_objects, 0);
                break;
            }
            Err(e) if Instant::now() < deadline && e.kind() == ErrorKind::StoreFull => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("store space was not freed: {e}"),
        }
    }
}

/// A task whose second result cannot be stored (larger than the whole
/// store): that result is the error, the first and third keep their
/// values, and their blocks are freed with their refs. Before, the error
/// replaced all three, and the first's block, which only its owner may
/// free, stayed in the store until the driver exited.
pub(super) fn test_a_result_that_cannot_be_stored_fails_alone() {
    if common::launched() {
        // Needs its own 8 MiB store; a launched cluster has the launcher's.
        return;
    }
    common::cluster(2.0, Some(8 << 20));
    let used = || rustray::store_stats().expect("store stats").used_bytes;
    let before = used();
    let (a, b, c) = large_between::remote(1usize << 20, 16usize << 20).unwrap();
    let e = rustray::get(&b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ObjectTooLarge, "{e}");
    let v = rustray::get(&a).expect("the result stored before the failure keeps its value");
    assert!(v.len() == 1 << 20 && v.iter().all(|x| *x == 7));
    let w = rustray::get(&c).expect("the result after the failure is stored too");
    assert!(w.len() == 1 << 20 && w.iter().all(|x| *x == 8));
    assert!(
        used() >= before + (2 << 20),
        "the first and third results are in the store"
    );
    drop((a, b, c, v, w));
    // (The free travels to the raylet after the drop returns.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while used() > before {
        assert!(
            Instant::now() < deadline,
            "the results' blocks were not freed: {} bytes used, {before} before",
            used()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The default store (in `/dev/shm`) is on a tmpfs of its own with huge
/// pages, reached through a link at its usual name, which goes with the
/// cluster; `store_huge_pages(false)` keeps a plain `/dev/shm` file.
pub(super) fn test_the_default_store_has_huge_pages() {
    if common::launched() {
        // The launcher made the store.
        return;
    }
    if !common::userns::huge_tmpfs_allowed() {
        eprintln!("skipped: this machine does not let a user mount a tmpfs in a user namespace");
        return;
    }
    // The /dev/shm entry whose file the mapping at `addr` is (the device
    // too: every private tmpfs numbers its inodes from the same start).
    let entry_of = |addr: usize| {
        let m = common::smaps::mapping_at(addr).expect("the view's mapping");
        let entry = std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("rustray-"))
                    && std::fs::metadata(p).is_ok_and(|meta| m.is_of(&meta))
            })
            .expect("a /dev/shm entry names the store");
        (entry, m.huge_kb)
    };
    for huge in [true, false] {
        rustray::init_with(
            rustray::Config::new()
                .num_cpus(1.0)
                .object_store_memory(64 << 20)
                .store_huge_pages(huge),
        )
        .expect("cluster starts");
        let r = rustray::put(vec![3u8; 8 << 20]).unwrap();
        let v = rustray::get_view(&r).unwrap();
        let (entry, huge_kb) = entry_of(v.as_ptr() as usize);
        let link = std::fs::symlink_metadata(&entry)
            .unwrap()
            .file_type()
            .is_symlink();
        assert_eq!(link, huge, "{} is a link: {link}", entry.display());
        // (A plain /dev/shm file may have huge pages too, where the
        // kernel's shmem_enabled says so: not checked.)
        assert!(
            !huge || huge_kb >= 2048,
            "the store's pages are not huge ({huge_kb} kB)"
        );
        drop(v);
        drop(r);
        rustray::shutdown();
        assert!(
            std::fs::symlink_metadata(&entry).is_err(),
            "{} outlived its cluster",
            entry.display()
        );
    }
}

/// A small `/dev/shm` (a container's is often 64 MiB) does not bound the
/// default store, which takes none of it: run again in a user and mount
/// namespace whose `/dev/shm` is a 32 MiB tmpfs, a store of 30% of memory
/// holds an object larger than that. Before, the store was cut to 64 MiB.
pub(super) fn test_a_small_dev_shm_does_not_bound_the_default_store() {
    const NAME: &str = "test_a_small_dev_shm_does_not_bound_the_default_store";
    if common::launched() {
        return;
    }
    if std::env::var_os("RUSTRAY_TEST_SMALL_SHM").is_some() {
        common::cluster(1.0, None);
        let cap = rustray::store_stats().unwrap().capacity_bytes;
        assert!(
            cap > 64 << 20,
            "the store has {cap} bytes: bounded by /dev/shm"
        );
        let r = rustray::put(vec![5u8; 48 << 20]).unwrap();
        assert_eq!(rustray::get_view(&r).unwrap()[(48 << 20) - 1], 5);
        return;
    }
    if !common::userns::huge_tmpfs_allowed() {
        eprintln!("skipped: this machine does not let a user mount a tmpfs in a user namespace");
        return;
    }
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg("mount -t tmpfs -o size=32m rustray-small /dev/shm && exec \"$0\" \"$1\"")
        .arg(std::env::current_exe().unwrap())
        .arg(NAME)
        .env("RUSTRAY_TEST_SMALL_SHM", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the run with a 32 MiB /dev/shm failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(super) fn test_large_objects_zero_copy() {
    common::cluster(2.0, Some(256 << 20));
    let data: Vec<f64> = (0..4_000_000).map(|i| i as f64).collect();
    let r = rustray::put(data).unwrap();
    let v1 = rustray::get_view(&r).unwrap();
    let v2 = rustray::get_view(&r).unwrap();
    assert_eq!(v1.len(), 4_000_000);
    assert_eq!(v1[3_999_999], 3_999_999.0);
    // both views are the same shared memory: no copy was made
    assert_eq!(v1.as_ptr(), v2.as_ptr());
    assert_eq!(v1.as_ptr() as usize % 64, 0);
    let owned: Vec<f64> = rustray::get(&r).unwrap();
    assert_eq!(owned[12345], 12345.0);
    // a task receives the large argument through the store
    let s = add::remote(&r, vec![1.0; 4_000_000]).unwrap();
    assert_eq!(rustray::get_view(&s).unwrap()[10], 11.0);
}

pub(super) fn test_refs_inside_values() {
    common::cluster(2.0, None);
    let inner = rustray::put(vec![7u8; 300_000]).unwrap();
    let b = Boxed {
        label: "x".into(),
        inner: inner.clone(),
    };
    drop(inner);
    let r = sum_boxed::remote(b).unwrap();
    assert_eq!(rustray::get(&r).unwrap(), ("x".to_string(), 7 * 300_000));
    // a ref created and owned by a worker, returned inside a value
    let outer = make_inner::remote(4u64).unwrap();
    let inner: ObjectRef<u64> = rustray::get(&outer).unwrap();
    assert_eq!(rustray::get(&inner).unwrap(), 40);
}
