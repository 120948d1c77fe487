//! The machine's floor beside the rows that should approach it:
//! `uds_roundtrip_us` is one 8-byte round trip over a Unix socket between
//! two processes of this machine (this binary, re-executed with
//! `--uds-echo PATH`, echoes), with nothing of rustray around it. The
//! performance issue's targets read `task_sync_latency_us` and
//! `actor_call_sync_latency_us` against it (at most 2.5x and 1.5x), in the
//! same run.

use super::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

/// `--uds-echo PATH`: connect to PATH and echo 8-byte messages until EOF.
pub(crate) fn uds_echo(path: &str) {
    let mut s = UnixStream::connect(path).expect("uds-echo: connect");
    let mut buf = [0u8; 8];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            return;
        }
    }
}

pub(crate) fn sc_uds_roundtrip(c: &Sizes) {
    let path = std::env::temp_dir().join(format!("rustray-bench-uds-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("uds_roundtrip_us: bind");
    let me = std::env::current_exe().expect("uds_roundtrip_us: current_exe");
    let mut child = std::process::Command::new(me)
        .arg("--uds-echo")
        .arg(&path)
        .spawn()
        .expect("uds_roundtrip_us: spawn the echo process");
    let (mut s, _) = listener.accept().expect("uds_roundtrip_us: accept");
    let mut once = |i: u64| {
        let t0 = Instant::now();
        s.write_all(&i.to_le_bytes())
            .expect("uds_roundtrip_us: write");
        let mut back = [0u8; 8];
        s.read_exact(&mut back).expect("uds_roundtrip_us: read");
        assert_eq!(u64::from_le_bytes(back), i, "uds_roundtrip_us: echo");
        secs(t0) * 1e6
    };
    for i in 0..c.sync_warmup as u64 {
        once(i);
    }
    let lat: Vec<f64> = (0..c.sync_n as u64).map(&mut once).collect();
    drop(s);
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
    emit(
        "uds_roundtrip_us",
        "us",
        median(&lat),
        lat.len(),
        1,
        latency_extra(&lat),
    );
}
