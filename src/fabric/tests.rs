//! Two endpoints in one process, reading each other's registered memory
//! through a real provider. Skipped (with a line saying so) where
//! libfabric is not installed.

use super::*;
use std::sync::Arc;

fn region(len: usize) -> &'static mut [u8] {
    // Page-aligned and never freed: registered memory must outlive the
    // fabric, which the tests leak too.
    let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
    // SAFETY: non-zero size; leaked for the test process's life.
    unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc_zeroed(layout), len) }
}

fn open(single_host: bool) -> Option<Arc<Fabric>> {
    if sys::load().is_err() {
        eprintln!("libfabric not installed: fabric test skipped");
        return None;
    }
    let f = Fabric::open(&OpenOptions {
        forced: true,
        single_host,
        ip: "127.0.0.1".parse().unwrap(),
    })
    .expect("open")
    .expect("forced open gives a fabric");
    let f = Arc::new(f);
    let p = f.clone();
    std::thread::spawn(move || p.progress());
    Some(f)
}

fn pair(single_host: bool) {
    let (Some(a), Some(b)) = (open(single_host), open(single_host)) else {
        return;
    };
    eprintln!("provider {} ({})", a.provider, a.why);
    let len = 40 << 20;
    let src = region(len);
    for (i, x) in src.iter_mut().enumerate() {
        *x = (i * 7 + i / 4096) as u8;
    }
    let dst = region(len);
    // SAFETY: leaked regions, valid for the process's life.
    let addr_a = unsafe { a.register(src.as_mut_ptr(), len) }.unwrap();
    let _ = unsafe { b.register(dst.as_mut_ptr(), len) }.unwrap();
    for (off, n) in [(0usize, 1usize), (4095, 3), (12345, (9 << 20) + 17), (0, len)] {
        dst[..n].fill(0);
        b.read(&addr_a, "test peer", off as u64, &mut dst[..n], Duration::from_secs(10), &|| false)
            .unwrap();
        assert!(dst[..n] == src[off..off + n], "{n} bytes at {off}");
    }
    // A stale key, where the provider checks keys (network providers do;
    // shared memory reads by address), is a completion error naming the
    // provider, not a hang.
    if !single_host {
        let mut bad = addr_a.clone();
        bad.key ^= 0x5a5a;
        let e = b
            .read(&bad, "test peer", 0, &mut dst[..4096], Duration::from_secs(10), &|| false)
            .unwrap_err();
        assert!(e.message.contains(&a.provider) && e.message.contains("test peer"), "{e}");
        assert!(!e.dirty, "{e}");
        // The peer still serves others after the error (the reader's own
        // connection to it may be gone: rxm drops it, hence the runtime
        // falls back to TCP for a peer whose reads failed).
        let c = open(single_host).unwrap();
        let dst2 = region(1 << 20);
        // SAFETY: a leaked region.
        let _ = unsafe { c.register(dst2.as_mut_ptr(), 1 << 20) }.unwrap();
        c.read(&addr_a, "test peer", 4096, &mut dst2[..], Duration::from_secs(10), &|| false)
            .unwrap();
        assert!(dst2[..] == src[4096..4096 + (1 << 20)]);
    }
    // Out of range of the peer's registration: refused before the provider.
    let e = b
        .read(&addr_a, "test peer", (len - 10) as u64, &mut dst[..4096], Duration::from_secs(10), &|| false)
        .unwrap_err();
    assert!(e.message.contains("outside the peer's"), "{e}");
}

#[test]
fn fabric_read_single_host() {
    pair(true);
}

#[test]
fn fabric_read_across_hosts_provider() {
    pair(false);
}

#[test]
fn software_providers_rank_below_hardware() {
    assert!(is_software("tcp;ofi_rxm"));
    assert!(is_software("shm"));
    assert!(is_software("udp;ofi_rxd"));
    assert!(!is_software("verbs;ofi_rxm"));
    assert!(!is_software("cxi"));
    assert!(!is_software("efa"));
    assert_eq!("fabric".parse::<Transport>(), Ok(Transport::Fabric));
    assert!("rdma".parse::<Transport>().unwrap_err().contains("auto, fabric or tcp"));
}
