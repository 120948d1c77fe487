//! The rows on an (emulated) Slurm cluster: `srun` start-up, with and
//! without MPI, and the transfer between two Slurm nodes beside a TCP copy;
//! and the small applications those launch (`--start-app`, `--transfer-app`,
//! `--tcp-app`).

use super::*;

/// Runs a command with a bound; returns (exit status or None if it was
/// killed for overrunning, stdout, stderr, seconds from spawn to exit).
pub(super) fn run_bounded(
    cmd: &mut std::process::Command,
    limit: Duration,
) -> std::io::Result<(Option<std::process::ExitStatus>, String, String, f64)> {
    use std::io::Read;
    use std::process::Stdio;
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |mut p: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            s.push_str(&String::from_utf8_lossy(&buf));
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let mut status = None;
    let mut dt = 0.0;
    while t0.elapsed() < limit {
        if let Some(s) = child.try_wait()? {
            dt = secs(t0);
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if status.is_none() {
        // Overran: SIGTERM (srun forwards it to the step), then SIGKILL.
        // SAFETY: kill(2) on the pid of the child we spawned and still own.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let grace = Instant::now();
        while grace.elapsed() < Duration::from_secs(10) {
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok((status, out, err, dt))
}

/// Number of nodes `sinfo` lists, or why Slurm is not usable.
pub(super) fn slurm_nodes() -> Result<usize, String> {
    let mut cmd = std::process::Command::new("sinfo");
    cmd.args(["-h", "-N", "-o", "%N %t"]);
    match run_bounded(&mut cmd, Duration::from_secs(15)) {
        Err(e) => Err(format!("sinfo cannot run: {e}")),
        Ok((Some(st), out, _, _)) if st.success() => {
            let names: BTreeSet<&str> = out
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            Ok(names.len())
        }
        Ok((_, _, err, _)) => Err(format!(
            "sinfo failed: {}",
            err.lines().last().unwrap_or("(no message)")
        )),
    }
}

/// `rust-ray-launch`: $RUSTRAY_LAUNCHER, else next to this binary's
/// target directory (target/release/deps/microbench-* ->
/// target/release/rust-ray-launch), else target/release/ under the cwd.
pub(super) fn find_launcher() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("RUSTRAY_LAUNCHER") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let mut cands = Vec::new();
    if let Some(d) = exe.parent() {
        cands.push(d.join("rust-ray-launch"));
        if let Some(dd) = d.parent() {
            cands.push(dd.join("rust-ray-launch"));
        }
    }
    cands.push(std::path::PathBuf::from("target/release/rust-ray-launch"));
    cands.into_iter().find(|p| p.is_file())
}

/// cluster_start_slurm_3node_s: `srun -N 3 --ntasks-per-node=1
/// rust-ray-launch -- <this binary> --start-app` end to end (Slurm step
/// start, 3 raylets joining, the driver's init + one task + print, teardown).
/// Skipped with a note when no Slurm with >= 3 nodes answers. The rendezvous
/// directory is the launcher's default ($RUSTRAY_RENDEZVOUS_DIR, else
/// $HOME/.rustray/jobs: shared by the nodes); on a busy cluster the time
/// includes waiting for the allocation.
/// With `mpi`, the same start through MPI (`srun --mpi=pmix ...
/// rust-ray-launch --bootstrap mpi`: MPI_Init and collectives instead of
/// the rendezvous file), as cluster_start_slurm_3node_mpi_s; skipped with
/// a note when the launcher was built without the `mpi` feature.
pub(super) fn sc_cluster_start_slurm(c: &Sizes, mpi: bool) {
    let name = if mpi {
        START_SLURM_MPI
    } else {
        "cluster_start_slurm_3node_s"
    };
    let n = match slurm_nodes() {
        Ok(n) => n,
        Err(why) => {
            log(&format!("{name} skipped: no Slurm ({why})"));
            return;
        }
    };
    if n < 3 {
        log(&format!("{name} skipped: sinfo lists {n} node(s), need 3"));
        return;
    }
    let Some(launcher) = find_launcher() else {
        log(&format!(
            "{name} skipped: rust-ray-launch not found (build it: cargo build --release \
             -p rust-ray-launch, or set RUSTRAY_LAUNCHER)"
        ));
        return;
    };
    let me = std::env::current_exe().expect("current_exe");
    let (mut samples, mut inner) = (Vec::new(), Vec::new());
    for _ in 0..c.start_reps {
        let mut cmd = std::process::Command::new("srun");
        cmd.args(["-N", "3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]);
        if mpi {
            cmd.arg("--mpi=pmix");
        }
        cmd.arg(&launcher);
        if mpi {
            cmd.args(["--bootstrap", "mpi"]);
        }
        cmd.arg("--").arg(&me).arg("--start-app");
        let (st, out, err, dt) = run_bounded(&mut cmd, SRUN_TIMEOUT).expect("srun runs");
        let ok = st.is_some_and(|s| s.success());
        let line = out.lines().find(|l| l.starts_with("start-app ok"));
        if mpi && !ok && err.contains("--features mpi") {
            log(&format!(
                "{name} skipped: rust-ray-launch was built without the mpi feature"
            ));
            return;
        }
        if !ok || line.is_none() {
            panic!(
                "{name}: srun failed (status {st:?}, after {dt:.1}s)\n\
                 --- stdout\n{out}--- stderr\n{err}"
            );
        }
        let line = line.unwrap_or_default();
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(k))
                .map(str::to_string)
        };
        let nodes: usize = field("nodes=").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert_eq!(nodes, 3, "{name}: the app saw {nodes} nodes: {line}");
        if let Some(t) = field("init_task_s=").and_then(|v| v.parse::<f64>().ok()) {
            inner.push(t);
        }
        samples.push(dt);
        std::thread::sleep(Duration::from_secs(1));
    }
    emit(
        name,
        "s",
        median(&samples),
        1,
        samples.len(),
        vec![
            ("samples", rnd_all(&samples, 3).into()),
            ("first", rnd(samples[0], 3).into()),
            ("driver_init_task_s", rnd_all(&inner, 5).into()),
            ("slurm_nodes", n.into()),
            ("launcher", launcher.display().to_string().into()),
            (
                "note",
                "srun -N 3 --ntasks-per-node=1 rust-ray-launch -- <microbench> --start-app, \
                 end to end (until srun exits); driver_init_task_s = init + first task \
                 inside the driver"
                    .into(),
            ),
            (
                "bootstrap",
                if mpi {
                    "mpi: srun --mpi=pmix, rust-ray-launch --bootstrap mpi (MPI_Init, allgather, broadcast)"
                } else {
                    "slurm: rendezvous file"
                }
                .into(),
            ),
        ],
    );
}

/// `--start-app`: the tiny application that cluster_start_slurm_3node_s
/// launches: init (joins the launcher's cluster), one task, print, exit.
pub(super) fn start_app() {
    let t0 = Instant::now();
    rustray::init().expect("start-app: rustray::init");
    let v = rustray::get_timeout(&noop::remote(7u64).unwrap(), MN_TIMEOUT)
        .expect("start-app: noop task");
    let dt = secs(t0);
    assert_eq!(v, 7, "start-app: noop(7) returned {v}");
    let nodes = alive_nodes();
    println!(
        "start-app ok nodes={} init_task_s={dt:.6} node={}",
        nodes.len(),
        rustray::node_name().unwrap_or_default()
    );
    rustray::shutdown();
}

/// `key=value` token of a whitespace-separated line.
pub(super) fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `--transfer-app <bytes> <warmups> <reps>`: the application that
/// internode_transfer_slurm_gb_per_s launches with `srun -N 2 rust-ray-launch
/// -- <this binary> --transfer-app ...`. Node A = the driver's node (rank 0),
/// node B = the other one. Per warm-up and per rep, interleaved: first the
/// reference (a plain TCP copy of the same bytes A -> B: a server thread in
/// this driver on A writes, a task pinned to B reads, tcp_pull_on_b), then
/// the transfer (transfer_once, as internode_transfer_gb_per_s). Prints
/// `transfer-app ...` lines (parsed by sc_internode_slurm), one per sample
/// as it is taken, so that a failure part way still leaves the earlier ones.
pub(super) fn transfer_app(nbytes: usize, warmup: usize, reps: usize) {
    const WHAT: &str = "transfer-app";
    rustray::init().expect("transfer-app: rustray::init");
    let nodes = alive_nodes();
    assert!(
        nodes.len() >= 2,
        "{WHAT}: {} alive nodes, need 2",
        nodes.len()
    );
    let me = rustray::node_name().expect("transfer-app: node_name");
    let a = nodes
        .iter()
        .find(|n| n.name == me)
        .unwrap_or_else(|| panic!("{WHAT}: the driver's node {me} is not among the nodes"));
    let b = nodes
        .iter()
        .find(|n| n.name != me)
        .expect("transfer-app: no node other than the driver's");
    println!(
        "{WHAT} nodes n={} a={} a_addr={} b={} b_addr={}",
        nodes.len(),
        a.name,
        a.address,
        b.name,
        b.address
    );
    println!("{WHAT} transport {}", b.transport);
    // The reference's sender: this process, on A, reachable at A's address.
    let listener =
        std::net::TcpListener::bind("0.0.0.0:0").expect("transfer-app: bind the TCP server");
    let port = listener
        .local_addr()
        .expect("transfer-app: local_addr")
        .port();
    let server = spawn_tcp_server(listener, nbytes);
    let srv = std::net::SocketAddr::new(a.address, port);
    let pin_b = pin(b);
    let tcp_once = || -> f64 {
        let r = tcp_pull_on_b::options()
            .resource(&pin_b, 0.01)
            .remote(srv.to_string(), nbytes)
            .unwrap();
        let (dt, sum, node) = rustray::get_timeout(&r, MN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{WHAT}: tcp_pull_on_b: {e}"));
        let want = nbytes.div_ceil(4096) as u64 * 7;
        assert_eq!(
            sum, want,
            "{WHAT}: TCP copy checksum {sum}, expected {want}"
        );
        assert_eq!(
            node, b.name,
            "{WHAT}: tcp_pull_on_b ran on {node}, expected node B {}",
            b.name
        );
        dt
    };
    for i in 0..warmup + reps {
        let phase = if i < warmup { "warm" } else { "rep" };
        let dt = tcp_once();
        println!("{WHAT} sample kind=tcp phase={phase} i={i} s={dt:.6}");
        let (get_s, e2e_s) = transfer_once(WHAT, nbytes, 100 + i as u64, a, b);
        println!(
            "{WHAT} sample kind=rustray phase={phase} i={i} get_s={get_s:.6} e2e_s={e2e_s:.6}"
        );
    }
    drop(tcp_request(srv, 0, WHAT)); // stop the server
    let _ = server.join();
    println!("{WHAT} ok");
    rustray::shutdown();
}

/// This node's address for the `--tcp-app` receiver: the first non-loopback
/// IPv4 of `hostname -I`, else what the hostname resolves to.
pub(super) fn node_ip(host: &str) -> Option<std::net::IpAddr> {
    use std::net::{IpAddr, ToSocketAddrs};
    let good = |ip: &IpAddr| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified();
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok();
    if let Some(o) = out.filter(|o| o.status.success()) {
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if let Some(ip) = text
            .split_whitespace()
            .filter_map(|t| t.parse::<IpAddr>().ok())
            .find(good)
        {
            return Some(ip);
        }
    }
    (host, 0)
        .to_socket_addrs()
        .ok()?
        .map(|sa| sa.ip())
        .find(good)
}

/// `--tcp-app <dir> <bytes> <warmups> <reps>`: the plain TCP copy that
/// tcp_copy_slurm_gb_per_s runs with `srun -N 2 --ntasks-per-node=1` when
/// the interleaved copy inside `--transfer-app` is not available (only the
/// reference asked for, or the transfer app failed before its reps). No
/// rustray. Rank 1 (receiver) listens on 0.0.0.0 (port from the OS) and
/// publishes "<its address> <port>" in `<dir>/receiver` (shared
/// filesystem); rank 0 (sender) connects to it once per copy and
/// write_all()s a pre-touched buffer (refilled, untimed, with a new value
/// per copy), rank 1 read_exact()s into a pre-touched buffer, checks it and
/// answers one byte. Timed by the sender from connect to that byte.
pub(super) fn tcp_app(dir: &str, nbytes: usize, warmup: usize, reps: usize) {
    use std::io::{Read, Write};
    const WHAT: &str = "tcp-app";
    let rank: usize = std::env::var("SLURM_PROCID")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("tcp-app: SLURM_PROCID (run it under srun -N 2 --ntasks-per-node=1)");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let ip = node_ip(&host).unwrap_or_else(|| panic!("{WHAT}: no non-loopback address on {host}"));
    println!("{WHAT} node rank={rank} name={host} addr={ip}");
    let file = std::path::Path::new(dir).join("receiver");
    let total = warmup + reps;
    let value = |i: usize| (i % 250) as u8 + 1;
    match rank {
        1 => {
            let l = std::net::TcpListener::bind("0.0.0.0:0").expect("tcp-app: bind");
            let port = l.local_addr().expect("tcp-app: local_addr").port();
            let mut buf = vec![0u8; nbytes];
            buf.fill(2); // touched
            let tmp = std::path::Path::new(dir).join("receiver.tmp");
            std::fs::write(&tmp, format!("{ip} {port} {host}\n"))
                .expect("tcp-app: write the port file");
            std::fs::rename(&tmp, &file).expect("tcp-app: publish the port file");
            for i in 0..total {
                let (mut s, _) = l.accept().expect("tcp-app: accept");
                s.set_nodelay(true).expect("tcp-app: nodelay");
                s.read_exact(&mut buf).expect("tcp-app: read");
                let sum: u64 = buf.iter().step_by(4096).map(|&b| b as u64).sum();
                let want = nbytes.div_ceil(4096) as u64 * value(i) as u64;
                assert_eq!(
                    sum, want,
                    "{WHAT}: copy {i}: checksum {sum}, expected {want}"
                );
                s.write_all(&[1]).expect("tcp-app: ack");
            }
            println!("{WHAT} receiver ok");
        }
        0 => {
            let t0 = Instant::now();
            let text = loop {
                match std::fs::read_to_string(&file) {
                    Ok(t) if t.ends_with('\n') => break t,
                    _ if t0.elapsed() > Duration::from_secs(60) => {
                        panic!("{WHAT}: {} did not appear within 60 s", file.display())
                    }
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            let mut it = text.split_whitespace();
            let peer: std::net::IpAddr = it
                .next()
                .and_then(|t| t.parse().ok())
                .expect("tcp-app: receiver address");
            let port: u16 = it
                .next()
                .and_then(|t| t.parse().ok())
                .expect("tcp-app: receiver port");
            let peer_name = it.next().unwrap_or("?");
            println!("{WHAT} peer name={peer_name} addr={peer} port={port}");
            let mut src = vec![0u8; nbytes];
            for i in 0..total {
                src.fill(value(i)); // untimed; also touches the pages
                let t = Instant::now();
                let mut s = std::net::TcpStream::connect((peer, port))
                    .unwrap_or_else(|e| panic!("{WHAT}: connect to {peer}:{port}: {e}"));
                s.set_nodelay(true).expect("tcp-app: nodelay");
                s.write_all(&src).expect("tcp-app: write");
                let mut ack = [0u8; 1];
                s.read_exact(&mut ack).expect("tcp-app: read the ack");
                let dt = secs(t);
                let phase = if i < warmup { "warm" } else { "rep" };
                println!("{WHAT} sample phase={phase} i={i} s={dt:.6}");
            }
            println!("{WHAT} sender ok");
        }
        r => println!("{WHAT}: rank {r} idle (only ranks 0 and 1 take part)"),
    }
}

/// What a Slurm TCP reference run gave.
pub(super) struct SlurmTcp {
    /// GB/s of the timed reps.
    rates: Vec<f64>,
    /// [sender = node A, receiver = node B].
    names: Vec<String>,
    addrs: Vec<String>,
    source: &'static str,
}

/// Runs `srun -N 2 --ntasks-per-node=1 <this binary> --tcp-app ...`.
pub(super) fn run_tcp_app(c: &Sizes, source: &'static str) -> Result<SlurmTcp, String> {
    let nbytes = c.internode_bytes;
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Shared by the nodes (one filesystem; with real nodes: set TMPDIR to
    // a shared directory).
    let dir =
        std::env::temp_dir().join(format!("rustray-bench-tcp-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let mut cmd = std::process::Command::new("srun");
    cmd.args(["-N", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(&me)
        .arg("--tcp-app")
        .arg(&dir)
        .arg(nbytes.to_string())
        .arg(c.internode_warmup.to_string())
        .arg(c.internode_reps.to_string());
    let res = run_bounded(&mut cmd, SRUN_TRANSFER_TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    let (st, out, err, dt) = res.map_err(|e| format!("srun cannot run: {e}"))?;
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("tcp-app ")).collect();
    let rates: Vec<f64> = lines
        .iter()
        .filter(|l| l.starts_with("tcp-app sample ") && kv(l, "phase") == Some("rep"))
        .filter_map(|l| kv(l, "s").and_then(|v| v.parse::<f64>().ok()))
        .map(|s| nbytes as f64 / GB / s)
        .collect();
    let ok = st.is_some_and(|s| s.success())
        && lines.iter().any(|l| l.starts_with("tcp-app sender ok"))
        && rates.len() == c.internode_reps;
    if !ok {
        return Err(format!(
            "srun --tcp-app failed (status {st:?}, after {dt:.1}s)\n--- stdout\n{out}--- stderr\n{err}"
        ));
    }
    let node = |rank: &str| {
        lines
            .iter()
            .find(|l| l.starts_with("tcp-app node ") && kv(l, "rank") == Some(rank))
            .map(|l| {
                (
                    kv(l, "name").unwrap_or("?").to_string(),
                    kv(l, "addr").unwrap_or("?").to_string(),
                )
            })
            .unwrap_or_else(|| ("?".into(), "?".into()))
    };
    let (n0, n1) = (node("0"), node("1"));
    Ok(SlurmTcp {
        rates,
        names: vec![n0.0, n1.0],
        addrs: vec![n0.1, n1.1],
        source,
    })
}

/// The two nodes' addresses must be real, distinct, non-loopback ones.
pub(super) fn check_addrs(what: &str, addrs: &[String]) {
    let ips: Vec<std::net::IpAddr> = addrs
        .iter()
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("{what}: node address {a:?} is not an IP address"))
        })
        .collect();
    for ip in &ips {
        assert!(
            !ip.is_loopback() && !ip.is_unspecified(),
            "{what}: node address {ip} is loopback/unspecified (addresses {addrs:?})"
        );
    }
    assert!(
        ips.len() == 2 && ips[0] != ips[1],
        "{what}: the two nodes share an address: {addrs:?}"
    );
}

pub(super) fn emit_tcp_slurm(nbytes: usize, tcp: &SlurmTcp) {
    let med = median(&tcp.rates);
    emit(
        TCP_SLURM,
        "GB/s",
        med,
        nbytes,
        tcp.rates.len(),
        vec![
            ("samples", rnd_all(&tcp.rates, 3).into()),
            ("mb_per_s", rnd(med * 1000.0, 1).into()),
            ("streams", 1u64.into()),
            ("node_names", tcp.names.clone().into()),
            ("node_addrs", tcp.addrs.clone().into()),
            ("source", tcp.source.into()),
            (
                "note",
                "plain TCP copy of the same bytes from node A to node B of a 2-node Slurm \
                 step (node addresses, not loopback): pre-touched buffers on both sides, \
                 write_all / read_exact, TCP_NODELAY; timed from connect to the last byte; \
                 reference for internode_transfer_slurm_gb_per_s"
                    .into(),
            ),
        ],
    );
}

/// internode_transfer_slurm_gb_per_s and its reference
/// tcp_copy_slurm_gb_per_s on 2 Slurm nodes: `srun -N 2 --ntasks-per-node=1
/// rust-ray-launch --object-store-memory 1.5GiB -- <this binary>
/// --transfer-app <bytes> <warmups> <reps>` (same sizes as
/// internode_transfer_gb_per_s). The app interleaves, per rep, a plain TCP
/// copy A -> B and the rustray transfer A -> B (see transfer_app) and prints
/// the samples; this side parses them. When the reference could not be
/// taken there (only it asked for, or the app failed first), it comes from
/// a separate `srun -N 2 <this binary> --tcp-app` step instead. Skipped
/// with a note when no Slurm with >= 2 nodes answers.
pub(super) fn sc_internode_slurm(c: &Sizes, want_internode: bool, want_tcp: bool) {
    const WHAT: &str = INTERNODE_SLURM;
    let n = match slurm_nodes() {
        Ok(n) => n,
        Err(why) => {
            log(&format!("{WHAT} / {TCP_SLURM} skipped: no Slurm ({why})"));
            return;
        }
    };
    if n < 2 {
        log(&format!(
            "{WHAT} / {TCP_SLURM} skipped: sinfo lists {n} node(s), need 2"
        ));
        return;
    }
    let nbytes = c.internode_bytes;
    let tcp_only = || {
        let tcp = run_tcp_app(c, "srun -N 2 --ntasks-per-node=1 <microbench> --tcp-app")
            .unwrap_or_else(|e| panic!("{TCP_SLURM}: {e}"));
        check_addrs(TCP_SLURM, &tcp.addrs);
        emit_tcp_slurm(nbytes, &tcp);
    };
    if !want_internode {
        tcp_only();
        return;
    }
    let Some(launcher) = find_launcher() else {
        log(&format!(
            "{WHAT} skipped: rust-ray-launch not found (build it: cargo build --release \
             -p rust-ray-launch, or set RUSTRAY_LAUNCHER)"
        ));
        if want_tcp {
            tcp_only();
        }
        return;
    };
    let me = std::env::current_exe().expect("internode_transfer_slurm_gb_per_s: current_exe");
    let mut cmd = std::process::Command::new("srun");
    cmd.args(["-N", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(&launcher)
        .arg("--object-store-memory")
        .arg(SLURM_STORE.to_string())
        .arg("--")
        .arg(&me)
        .arg("--transfer-app")
        .arg(nbytes.to_string())
        .arg(c.internode_warmup.to_string())
        .arg(c.internode_reps.to_string());
    let (st, out, err, wall) = run_bounded(&mut cmd, SRUN_TRANSFER_TIMEOUT)
        .expect("internode_transfer_slurm_gb_per_s: srun runs");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("transfer-app "))
        .collect();
    let reps_of = |kind: &str| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| {
                l.starts_with("transfer-app sample ")
                    && kv(l, "kind") == Some(kind)
                    && kv(l, "phase") == Some("rep")
            })
            .collect()
    };
    let f = |l: &str, k: &str| kv(l, k).and_then(|v| v.parse::<f64>().ok());
    let tcp_s: Vec<f64> = reps_of("tcp").iter().filter_map(|l| f(l, "s")).collect();
    let get_s: Vec<f64> = reps_of("rustray")
        .iter()
        .filter_map(|l| f(l, "get_s"))
        .collect();
    let e2e_s: Vec<f64> = reps_of("rustray")
        .iter()
        .filter_map(|l| f(l, "e2e_s"))
        .collect();
    let head = lines
        .iter()
        .find(|l| l.starts_with("transfer-app nodes "))
        .copied();
    let ok = st.is_some_and(|s| s.success())
        && lines.contains(&"transfer-app ok")
        && head.is_some()
        && get_s.len() == c.internode_reps
        && e2e_s.len() == c.internode_reps;
    let failure = format!(
        "{WHAT}: srun ... --transfer-app failed (status {st:?}, after {wall:.1}s; \
         {} of {} reps)\n--- stdout\n{out}--- stderr\n{err}",
        get_s.len(),
        c.internode_reps
    );
    let (names, addrs) = match head {
        Some(h) => (
            vec![
                kv(h, "a").unwrap_or("?").to_string(),
                kv(h, "b").unwrap_or("?").to_string(),
            ],
            vec![
                kv(h, "a_addr").unwrap_or("?").to_string(),
                kv(h, "b_addr").unwrap_or("?").to_string(),
            ],
        ),
        None => (Vec::new(), Vec::new()),
    };
    // The reference: interleaved in the app, else its own srun step.
    let tcp = if tcp_s.len() == c.internode_reps {
        Some(SlurmTcp {
            rates: tcp_s.iter().map(|s| nbytes as f64 / GB / s).collect(),
            names: names.clone(),
            addrs: addrs.clone(),
            source: "interleaved with the transfer's reps in the same --transfer-app run \
                     (sender: a thread of the driver on A; receiver: a task pinned to B)",
        })
    } else {
        log(&format!(
            "{TCP_SLURM}: {} of {} interleaved reps from the transfer app; \
             running srun --tcp-app instead",
            tcp_s.len(),
            c.internode_reps
        ));
        match run_tcp_app(
            c,
            "srun -N 2 --ntasks-per-node=1 <microbench> --tcp-app (its own step, right after \
             the transfer's, which did not give the interleaved reps)",
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                log(&format!("{TCP_SLURM}: {e}"));
                None
            }
        }
    };
    if want_tcp {
        if let Some(t) = &tcp {
            check_addrs(TCP_SLURM, &t.addrs);
            emit_tcp_slurm(nbytes, t);
        }
    }
    if !ok {
        panic!("{failure}");
    }
    check_addrs(WHAT, &addrs);
    let rates: Vec<f64> = get_s.iter().map(|s| nbytes as f64 / GB / s).collect();
    let e2e: Vec<f64> = e2e_s.iter().map(|s| nbytes as f64 / GB / s).collect();
    let med = median(&rates);
    let tcp_med = tcp.as_ref().map(|t| median(&t.rates));
    let get_ms: Vec<f64> = get_s.iter().map(|s| s * 1e3).collect();
    emit(
        WHAT,
        "GB/s",
        med,
        nbytes,
        rates.len(),
        vec![
            ("samples", rnd_all(&rates, 3).into()),
            ("get_ms", rnd(median(&get_ms), 2).into()),
            ("end_to_end_gb_per_s", rnd(median(&e2e), 3).into()),
            ("mb_per_s", rnd(med * 1000.0, 1).into()),
            ("tcp_copy_gb_per_s", tcp_med.map(|t| rnd(t, 3)).into()),
            (
                "tcp_copy_samples",
                tcp.as_ref().map(|t| rnd_all(&t.rates, 3)).into(),
            ),
            ("vs_tcp_copy", tcp_med.map(|t| rnd(med / t, 3)).into()),
            ("target_vs_tcp_copy", 0.9.into()),
            ("tcp_copy_source", tcp.as_ref().map(|t| t.source).into()),
            ("nodes", 2u64.into()),
            ("node_names", names.into()),
            ("node_addrs", addrs.into()),
            ("slurm_nodes", n.into()),
            ("warmups", c.internode_warmup.into()),
            ("object_store_memory", SLURM_STORE.into()),
            ("srun_s", rnd(wall, 2).into()),
            ("launcher", launcher.display().to_string().into()),
            ("read", INTERNODE_READ.into()),
            (
                "transport",
                "TCP between the raylets of two Slurm nodes, over the nodes' addresses".into(),
            ),
            (
                "note",
                "srun -N 2 --ntasks-per-node=1 rust-ray-launch -- <microbench> \
                 --transfer-app: driver on node A (rank 0); fresh object per rep made by a \
                 task pinned to A (node:<A> 0.01); ref passed boxed to a task pinned to B; \
                 get_view timed inside B; each rep right after a TCP copy A -> B of the \
                 same bytes"
                    .into(),
            ),
        ],
    );
}
