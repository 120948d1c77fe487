//! The first large put into a fresh store, beside what bounds it.
//!
//! A never-touched page of the store's tmpfs file costs the kernel a page
//! allocation (and a zeroing) before the put's copy can write it, so the
//! first put of a fresh cluster (`put_large_cold_gb_per_s`) cannot beat how
//! fast the kernel hands out such pages. The default store takes them 2 MiB
//! at a time, from a tmpfs of its own (`object_store::hugefs`).
//! `put_large_cold_4k_gb_per_s` is the same put into a plain `/dev/shm`
//! file (`store_huge_pages(false)`, or a machine without user namespaces),
//! 4 KiB at a time, and `shm_first_touch_gb_per_s` that store's floor: a
//! fresh `/dev/shm` file faulted in the way the store does it
//! (MADV_POPULATE_WRITE, on as many threads as the store's copy uses), no
//! byte copied. In a VM that hands free memory back to its host, the host
//! faults in every never-touched page anew, huge or not: that cost is the
//! machine's, and the rows show it.

use super::*;

pub(super) const FIRST_TOUCH: &str = "shm_first_touch_gb_per_s";
pub(super) const COLD_4K: &str = "put_large_cold_4k_gb_per_s";

/// Fresh clusters (and fresh files) per row: one cold sample each.
const COLD_REPS: usize = 3;

/// Threads the store's large copy runs on (`codec::parallel_copy`).
fn copy_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// Faults `part` in as the store does: MADV_POPULATE_WRITE, else (an older
/// kernel) one write per page.
fn fault_in(part: &mut [u8]) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: `part` is a live, writable slice of this process's mapping;
    // populating faults its pages in and changes no byte.
    let rc = unsafe {
        libc::madvise(
            part.as_mut_ptr() as *mut libc::c_void,
            part.len(),
            MADV_POPULATE_WRITE,
        )
    };
    if rc != 0 {
        for b in part.iter_mut().step_by(4096) {
            *b = 0;
        }
    }
}

pub(super) fn sc_first_touch(c: &Sizes) {
    let nbytes = c.large_put_bytes;
    let threads = copy_threads();
    let mut rates = Vec::new();
    for rep in 0..COLD_REPS {
        let path = format!("/dev/shm/rustray-bench-touch-{}-{rep}", std::process::id());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("shm_first_touch_gb_per_s: creating the /dev/shm file");
        let _ = std::fs::remove_file(&path); // the mapping keeps it
        f.set_len(nbytes as u64)
            .expect("shm_first_touch_gb_per_s: sizing the /dev/shm file");
        // SAFETY: a file of this process's own, unlinked: nobody else maps
        // or resizes it.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }
            .expect("shm_first_touch_gb_per_s: mapping the /dev/shm file");
        // 2 MiB-aligned shares, as the store's copy splits its work.
        let chunk = nbytes.div_ceil(threads).next_multiple_of(2 << 20);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for part in map.chunks_mut(chunk) {
                s.spawn(move || fault_in(part));
            }
        });
        rates.push(nbytes as f64 / GB / secs(t0));
    }
    emit(
        FIRST_TOUCH,
        "GB/s",
        median(&rates),
        nbytes,
        rates.len(),
        vec![
            ("samples", rnd_all(&rates, 3).into()),
            ("threads", (threads as f64).into()),
            (
                "note",
                "faulting in a never-touched /dev/shm file as the store does, \
                 nothing copied: the floor of put_large_cold_gb_per_s"
                    .into(),
            ),
        ],
    );
}

pub(super) fn sc_cold_4k(c: &Sizes, num_cpus: usize, memcpy: Option<f64>) {
    let nbytes = c.large_put_bytes;
    let mut rates = Vec::new();
    let mut huge_kb = 0;
    for _ in 0..COLD_REPS {
        rustray::init_with(
            rustray::Config::new()
                .num_cpus(num_cpus as f64)
                .object_store_memory(nbytes as u64 + (64 << 20))
                .store_huge_pages(false),
        )
        .expect("put_large_cold_4k_gb_per_s: a cluster with a plain /dev/shm store");
        let arr = vec![1u8; nbytes];
        let t0 = Instant::now();
        let r = rustray::put(arr).expect("put_large_cold_4k_gb_per_s: put");
        rates.push(nbytes as f64 / GB / secs(t0));
        let v = rustray::get_view(&r).expect("put_large_cold_4k_gb_per_s: get_view");
        assert_eq!(
            v.len(),
            nbytes,
            "put_large_cold_4k_gb_per_s: view has the wrong length"
        );
        huge_kb = huge_kb.max(smaps::mapping_at(v.as_ptr() as usize).map_or(0, |m| m.huge_kb));
        drop(v);
        drop(r);
        rustray::shutdown();
    }
    let med = median(&rates);
    let mut extra = vec![
        ("samples", rnd_all(&rates, 3).into()),
        (
            "note",
            "first put of each of 3 fresh clusters whose store is a plain \
             /dev/shm file (store_huge_pages(false), or no user namespaces)"
                .into(),
        ),
    ];
    extra.push(("huge_page_mib", ((huge_kb >> 10) as f64).into()));
    if let Some(m) = memcpy {
        extra.push(("memcpy_gb_per_s", rnd(m, 3).into()));
        extra.push(("vs_memcpy", rnd(med / m, 3).into()));
    }
    emit(COLD_4K, "GB/s", med, nbytes, rates.len(), extra);
}
