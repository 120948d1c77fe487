//! Two endpoints in one process, reading each other's registered memory
//! through a real provider. Skipped (with a line saying so) where
//! libfabric is not installed.

use super::*;
use std::sync::Arc;

fn region(len: usize) -> &'static mut [u8] {
    // Never freed: registered memory must outlive the fabric, which the
    // tests leak too.
    Box::leak(vec![0u8; len].into_boxed_slice())
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
        name: None,
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
    let (addr_a, src) = a.register_static(src).unwrap();
    let (_, dst) = b.register_static(dst).unwrap();
    for (off, n) in [
        (0usize, 1usize),
        (4095, 3),
        (12345, (9 << 20) + 17),
        (0, len),
    ] {
        dst[..n].fill(0);
        b.read(
            &addr_a,
            "test peer",
            off as u64,
            &mut dst[..n],
            Duration::from_secs(10),
            &|| false,
        )
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
            .read(
                &bad,
                "test peer",
                0,
                &mut dst[..4096],
                Duration::from_secs(10),
                &|| false,
            )
            .unwrap_err();
        assert!(
            e.message.contains(&a.provider) && e.message.contains("test peer"),
            "{e}"
        );
        assert!(!e.dirty, "{e}");
        // The peer still serves others after the error (the reader's own
        // connection to it may be gone: rxm drops it, hence the runtime
        // falls back to TCP for a peer whose reads failed).
        let c = open(single_host).unwrap();
        let dst2 = region(1 << 20);
        let (_, dst2) = c.register_static(dst2).unwrap();
        c.read(
            &addr_a,
            "test peer",
            4096,
            &mut dst2[..],
            Duration::from_secs(10),
            &|| false,
        )
        .unwrap();
        assert!(dst2[..] == src[4096..4096 + (1 << 20)]);
    }
    // Out of range of the peer's registration: refused before the provider.
    let e = b
        .read(
            &addr_a,
            "test peer",
            (len - 10) as u64,
            &mut dst[..4096],
            Duration::from_secs(10),
            &|| false,
        )
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
    assert!("rdma"
        .parse::<Transport>()
        .unwrap_err()
        .contains("auto, fabric or tcp"));
}

/// Our hand-written layouts against the installed headers: every field we
/// read or write, by offset, and the struct sizes where we build the
/// struct ourselves. Runs where the headers are (make test installs them).
#[test]
fn fabric_abi_matches_the_headers() {
    if !std::path::Path::new("/usr/include/rdma/fabric.h").exists() {
        eprintln!("libfabric headers not installed: ABI test skipped");
        return;
    }
    use std::mem::{offset_of, size_of};
    let checks: Vec<(&str, &str, usize)> = vec![
        ("struct fi_info", "caps", offset_of!(sys::fi_info, caps)),
        ("struct fi_info", "mode", offset_of!(sys::fi_info, mode)),
        (
            "struct fi_info",
            "tx_attr",
            offset_of!(sys::fi_info, tx_attr),
        ),
        (
            "struct fi_info",
            "ep_attr",
            offset_of!(sys::fi_info, ep_attr),
        ),
        (
            "struct fi_info",
            "domain_attr",
            offset_of!(sys::fi_info, domain_attr),
        ),
        (
            "struct fi_info",
            "fabric_attr",
            offset_of!(sys::fi_info, fabric_attr),
        ),
        (
            "struct fi_tx_attr",
            "size",
            offset_of!(sys::fi_tx_attr, size),
        ),
        (
            "struct fi_ep_attr",
            "max_msg_size",
            offset_of!(sys::fi_ep_attr, max_msg_size),
        ),
        (
            "struct fi_domain_attr",
            "threading",
            offset_of!(sys::fi_domain_attr, threading),
        ),
        (
            "struct fi_domain_attr",
            "data_progress",
            offset_of!(sys::fi_domain_attr, data_progress),
        ),
        (
            "struct fi_domain_attr",
            "av_type",
            offset_of!(sys::fi_domain_attr, av_type),
        ),
        (
            "struct fi_domain_attr",
            "mr_mode",
            offset_of!(sys::fi_domain_attr, mr_mode),
        ),
        (
            "struct fi_fabric_attr",
            "prov_name",
            offset_of!(sys::fi_fabric_attr, prov_name),
        ),
        ("struct fid", "ops", offset_of!(sys::fid, ops)),
        ("struct fi_ops", "close", offset_of!(sys::fi_ops, close)),
        ("struct fi_ops", "bind", offset_of!(sys::fi_ops, bind)),
        ("struct fi_ops", "control", offset_of!(sys::fi_ops, control)),
        ("struct fid_fabric", "ops", offset_of!(sys::fid_fabric, ops)),
        (
            "struct fi_ops_fabric",
            "domain",
            offset_of!(sys::fi_ops_fabric, domain),
        ),
        ("struct fid_domain", "ops", offset_of!(sys::fid_domain, ops)),
        ("struct fid_domain", "mr", offset_of!(sys::fid_domain, mr)),
        (
            "struct fi_ops_domain",
            "av_open",
            offset_of!(sys::fi_ops_domain, av_open),
        ),
        (
            "struct fi_ops_domain",
            "cq_open",
            offset_of!(sys::fi_ops_domain, cq_open),
        ),
        (
            "struct fi_ops_domain",
            "endpoint",
            offset_of!(sys::fi_ops_domain, endpoint),
        ),
        ("struct fi_ops_mr", "reg", offset_of!(sys::fi_ops_mr, reg)),
        (
            "struct fid_mr",
            "mem_desc",
            offset_of!(sys::fid_mr, mem_desc),
        ),
        ("struct fid_mr", "key", offset_of!(sys::fid_mr, key)),
        (
            "struct fi_av_attr",
            "type",
            offset_of!(sys::fi_av_attr, type_),
        ),
        (
            "struct fi_av_attr",
            "flags",
            offset_of!(sys::fi_av_attr, flags),
        ),
        (
            "struct fi_ops_av",
            "insert",
            offset_of!(sys::fi_ops_av, insert),
        ),
        (
            "struct fi_ops_av",
            "remove",
            offset_of!(sys::fi_ops_av, remove),
        ),
        ("struct fid_av", "ops", offset_of!(sys::fid_av, ops)),
        (
            "struct fi_cq_attr",
            "format",
            offset_of!(sys::fi_cq_attr, format),
        ),
        (
            "struct fi_cq_attr",
            "wait_obj",
            offset_of!(sys::fi_cq_attr, wait_obj),
        ),
        (
            "struct fi_cq_attr",
            "wait_set",
            offset_of!(sys::fi_cq_attr, wait_set),
        ),
        (
            "struct fi_cq_err_entry",
            "err",
            offset_of!(sys::fi_cq_err_entry, err),
        ),
        (
            "struct fi_cq_err_entry",
            "prov_errno",
            offset_of!(sys::fi_cq_err_entry, prov_errno),
        ),
        (
            "struct fi_cq_err_entry",
            "err_data",
            offset_of!(sys::fi_cq_err_entry, err_data),
        ),
        ("struct fi_ops_cq", "read", offset_of!(sys::fi_ops_cq, read)),
        (
            "struct fi_ops_cq",
            "readerr",
            offset_of!(sys::fi_ops_cq, readerr),
        ),
        (
            "struct fi_ops_cq",
            "strerror",
            offset_of!(sys::fi_ops_cq, strerror),
        ),
        ("struct fid_cq", "ops", offset_of!(sys::fid_cq, ops)),
        (
            "struct fi_ops_cm",
            "getname",
            offset_of!(sys::fi_ops_cm, getname),
        ),
        (
            "struct fi_ops_rma",
            "read",
            offset_of!(sys::fi_ops_rma, read),
        ),
        ("struct fid_ep", "cm", offset_of!(sys::fid_ep, cm)),
        ("struct fid_ep", "rma", offset_of!(sys::fid_ep, rma)),
    ];
    let sizes: Vec<(&str, usize)> = vec![
        ("struct fi_av_attr", size_of::<sys::fi_av_attr>()),
        ("struct fi_cq_attr", size_of::<sys::fi_cq_attr>()),
        ("struct fi_cq_entry", size_of::<sys::fi_cq_entry>()),
        ("struct fi_cq_err_entry", size_of::<sys::fi_cq_err_entry>()),
        ("struct fid_mr", size_of::<sys::fid_mr>()),
    ];
    let consts: Vec<(&str, i128)> = vec![
        ("FI_RMA", sys::FI_RMA as i128),
        ("FI_READ", sys::FI_READ as i128),
        ("FI_REMOTE_READ", sys::FI_REMOTE_READ as i128),
        ("FI_REMOTE_COMM", sys::FI_REMOTE_COMM as i128),
        ("FI_LOCAL_COMM", sys::FI_LOCAL_COMM as i128),
        ("FI_SOURCE", sys::FI_SOURCE as i128),
        ("FI_CONTEXT", sys::FI_CONTEXT as i128),
        ("FI_CONTEXT2", sys::FI_CONTEXT2 as i128),
        ("FI_TRANSMIT", sys::FI_TRANSMIT as i128),
        ("FI_RECV", sys::FI_RECV as i128),
        ("FI_MR_LOCAL", sys::FI_MR_LOCAL as i128),
        ("FI_MR_VIRT_ADDR", sys::FI_MR_VIRT_ADDR as i128),
        ("FI_MR_ALLOCATED", sys::FI_MR_ALLOCATED as i128),
        ("FI_MR_PROV_KEY", sys::FI_MR_PROV_KEY as i128),
        ("FI_MR_ENDPOINT", sys::FI_MR_ENDPOINT as i128),
        ("FI_MR_BASIC", sys::FI_MR_BASIC as i128),
        ("FI_EP_RDM", sys::FI_EP_RDM as i128),
        ("FI_PROGRESS_MANUAL", sys::FI_PROGRESS_MANUAL as i128),
        ("FI_THREAD_DOMAIN", sys::FI_THREAD_DOMAIN as i128),
        ("FI_AV_TABLE", sys::FI_AV_TABLE as i128),
        ("FI_WAIT_NONE", sys::FI_WAIT_NONE as i128),
        ("FI_CQ_FORMAT_CONTEXT", sys::FI_CQ_FORMAT_CONTEXT as i128),
        ("FI_ENABLE", sys::FI_ENABLE as i128),
        ("FI_ADDR_STR", sys::FI_ADDR_STR as i128),
        ("FI_EAVAIL", sys::FI_EAVAIL as i128),
        ("FI_ETOOSMALL", sys::FI_ETOOSMALL as i128),
        ("FI_EAGAIN", sys::FI_EAGAIN as i128),
    ];
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <rdma/fabric.h>\n#include <rdma/fi_domain.h>\n#include <rdma/fi_endpoint.h>\n#include <rdma/fi_cm.h>\n#include <rdma/fi_eq.h>\n#include <rdma/fi_rma.h>\n#include <rdma/fi_errno.h>\nint main(void) {\n",
    );
    for (s, f, _) in &checks {
        c += &format!("  printf(\"%zu\\n\", offsetof({s}, {f}));\n");
    }
    for (s, _) in &sizes {
        c += &format!("  printf(\"%zu\\n\", sizeof({s}));\n");
    }
    for (k, _) in &consts {
        c += &format!("  printf(\"%lld\\n\", (long long)({k}));\n");
    }
    c += "  return 0;\n}\n";
    let dir = std::env::temp_dir().join(format!("rustray-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("abi.c"), c).unwrap();
    let cc = std::process::Command::new("cc")
        .arg(dir.join("abi.c"))
        .arg("-o")
        .arg(dir.join("abi"))
        .output()
        .expect("cc runs");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = std::process::Command::new(dir.join("abi"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let got: Vec<i128> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let want: Vec<(String, i128)> = checks
        .iter()
        .map(|(s, f, o)| (format!("offsetof({s}, {f})"), *o as i128))
        .chain(
            sizes
                .iter()
                .map(|(s, n)| (format!("sizeof({s})"), *n as i128)),
        )
        .chain(consts.iter().map(|(k, v)| (k.to_string(), *v)))
        .collect();
    assert_eq!(got.len(), want.len());
    for ((what, ours), theirs) in want.iter().zip(&got) {
        assert_eq!(ours, theirs, "{what}: ours {ours}, the headers' {theirs}");
    }
}
