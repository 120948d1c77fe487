//! The data-plane rows of `--multinode`: `internode_transfer_gb_per_s` once
//! per transport (`fabric`, `tcp`) and object size on a local 3-node cluster
//! (the `shm` provider between local raylets), beside the raw ceiling
//! `raw_fi_read_gb_per_s`: a bare `fi_read` loop between two processes with
//! the same provider, chunk size and reads in flight, nothing of rustray
//! around it. Rows carry `extra.transport` and `extra.provider`; fabric rows
//! also `vs_raw_fi_read` (the ratio to the ceiling at the same size, same
//! run). When `sinfo` answers with 2 nodes or more, the same rows between
//! two Slurm nodes (`srun -N 2 rust-ray-launch --transport T -- <this
//! binary> --transfer-app ...`), `extra.slurm` true.

use super::*;

pub(crate) const RAW: &str = "raw_fi_read_gb_per_s";

fn sizes(quick: bool) -> Vec<usize> {
    if quick {
        vec![MIB, 16 * MIB]
    } else {
        vec![MIB, 16 * MIB, 256 * MIB, 1024 * MIB]
    }
}

fn reps_for(quick: bool, n: usize) -> (usize, usize) {
    match (quick, n >= 256 * MIB) {
        (true, _) => (1, 2),
        (false, true) => (1, 3),
        (false, false) => (2, 5),
    }
}

/// raw_fi_read_gb_per_s per size: (size, provider, median GB/s).
pub(crate) fn sc_raw(quick: bool, emit_rows: bool) -> Vec<(usize, String, f64)> {
    let mut out = Vec::new();
    for n in sizes(quick) {
        let (w, r) = reps_for(quick, n);
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        match rustray::__private::raw_fi_read_gb_per_s(true, ip, n, w, r) {
            Ok((provider, rates)) => {
                let med = median(&rates);
                if emit_rows {
                    emit_raw(n, &provider, &rates, false);
                }
                out.push((n, provider, med));
            }
            Err(e) => log(&format!("{RAW} of {n} bytes: {e}")),
        }
    }
    out
}

/// internode_transfer_gb_per_s per transport and size, each transport on
/// its own fresh 3-node cluster.
pub(crate) fn sc_transports(quick: bool, raw: &[(usize, String, f64)]) {
    for transport in [rustray::Transport::Fabric, rustray::Transport::Tcp] {
        rustray::init_with(
            rustray::Config::new()
                .local_nodes(MN_NODES)
                .num_cpus(1.0)
                .object_store_memory(MN_STORE)
                .transport(transport),
        )
        .unwrap_or_else(|e| panic!("{INTERNODE} ({transport}): cluster: {e}"));
        let nodes = alive_nodes();
        assert!(nodes.len() >= 3, "{INTERNODE}: {} nodes", nodes.len());
        let label = nodes[2].transport.clone();
        let provider = label
            .strip_prefix("fabric (")
            .and_then(|p| p.strip_suffix(')'))
            .unwrap_or("none")
            .to_string();
        for n in sizes(quick) {
            let (w, r) = reps_for(quick, n);
            let what = format!("{INTERNODE} {transport} {n}");
            for i in 0..w {
                transfer_once(&what, n, 50 + i as u64, &nodes[1], &nodes[2]);
            }
            let rates: Vec<f64> = (0..r)
                .map(|i| {
                    let (dt, _) = transfer_once(&what, n, 60 + i as u64, &nodes[1], &nodes[2]);
                    n as f64 / GB / dt
                })
                .collect();
            let med = median(&rates);
            let mut extra: Vec<(&str, J)> = vec![
                ("samples", rnd_all(&rates, 3).into()),
                ("transport", transport.to_string().into()),
                ("provider", provider.as_str().into()),
                ("read", INTERNODE_READ.into()),
            ];
            if transport == rustray::Transport::Fabric {
                if let Some((_, _, ceiling)) =
                    raw.iter().find(|(s, p, _)| *s == n && *p == provider)
                {
                    extra.push(("vs_raw_fi_read", rnd(med / ceiling, 3).into()));
                }
            }
            emit(INTERNODE, "GB/s", med, n, rates.len(), extra);
        }
        rustray::shutdown();
    }
}

/// internode_transfer_gb_per_s per transport and size between two Slurm
/// nodes: one `srun -N 2 rust-ray-launch --transport T ... --transfer-app`
/// step per transport and size (its interleaved TCP copies are not used).
pub(crate) fn sc_transports_slurm(quick: bool, raw: &[(usize, String, f64)]) {
    match slurm_nodes() {
        Ok(n) if n >= 2 => {}
        Ok(n) => return log(&format!("{INTERNODE} on Slurm skipped: {n} node(s)")),
        Err(why) => return log(&format!("{INTERNODE} on Slurm skipped: no Slurm ({why})")),
    }
    let Some(launcher) = find_launcher() else {
        return log(&format!(
            "{INTERNODE} on Slurm skipped: rust-ray-launch not found"
        ));
    };
    let me = std::env::current_exe().expect("current_exe");
    for transport in ["fabric", "tcp"] {
        for n in sizes(quick) {
            let (w, r) = reps_for(quick, n);
            let mut cmd = std::process::Command::new("srun");
            cmd.args(["-N", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
                .arg(&launcher)
                .args(["--transport", transport])
                .arg("--object-store-memory")
                .arg(SLURM_STORE.to_string())
                .arg("--")
                .arg(&me)
                .arg("--transfer-app")
                .arg(n.to_string())
                .arg(w.to_string())
                .arg(r.to_string());
            let (st, out, err, wall) =
                run_bounded(&mut cmd, SRUN_TRANSFER_TIMEOUT).expect("srun runs");
            let rates: Vec<f64> = out
                .lines()
                .filter(|l| {
                    l.starts_with("transfer-app sample ")
                        && kv(l, "kind") == Some("rustray")
                        && kv(l, "phase") == Some("rep")
                })
                .filter_map(|l| kv(l, "get_s").and_then(|v| v.parse::<f64>().ok()))
                .map(|s| n as f64 / GB / s)
                .collect();
            let label = out
                .lines()
                .find_map(|l| l.strip_prefix("transfer-app transport "))
                .unwrap_or("?")
                .to_string();
            if !st.is_some_and(|s| s.success()) || rates.len() != r {
                log(&format!(
                    "{INTERNODE} on Slurm ({transport}, {n} bytes) failed after {wall:.1}s:\n{out}\n{err}"
                ));
                continue;
            }
            let provider = label
                .strip_prefix("fabric (")
                .and_then(|p| p.strip_suffix(')'))
                .unwrap_or("none")
                .to_string();
            let med = median(&rates);
            let mut extra: Vec<(&str, J)> = Vec::new();
            if let Some((_, _, c)) = raw.iter().find(|(s, p, _)| *s == n && *p == provider) {
                extra.push(("vs_raw_fi_read", rnd(med / c, 3).into()));
            }
            emit(
                INTERNODE,
                "GB/s",
                med,
                n,
                rates.len(),
                vec![
                    ("samples", rnd_all(&rates, 3).into()),
                    ("transport", transport.into()),
                    ("provider", provider.as_str().into()),
                    ("slurm", true.into()),
                    ("read", INTERNODE_READ.into()),
                    (
                        "note",
                        "between two emulated Slurm nodes (network namespaces on one host, \
                         veth + bridge): a network provider over the kernel's TCP, so no \
                         faster than the built-in path here; on RDMA hardware the order flips"
                            .into(),
                    ),
                ]
                .into_iter()
                .chain(extra)
                .collect(),
            );
        }
    }
}

/// `--raw-fabric-app`: both ranks of `srun -N 2`; rank 0 prints its samples.
pub(crate) fn raw_fabric_app(dir: &str, n: usize, w: usize, r: usize) {
    match rustray::__private::raw_fi_read_slurm_app(std::path::Path::new(dir), n, w, r) {
        Ok((provider, rates)) => {
            if !rates.is_empty() {
                println!("raw-fabric-app provider {provider}");
                for g in rates {
                    println!("raw-fabric-app rate {g}");
                }
            }
        }
        Err(e) => {
            eprintln!("raw-fabric-app: {e}");
            std::process::exit(1);
        }
    }
}

/// raw_fi_read_gb_per_s between two Slurm nodes, per size.
pub(crate) fn sc_raw_slurm(quick: bool, emit_rows: bool) -> Vec<(usize, String, f64)> {
    let mut out = Vec::new();
    if !matches!(slurm_nodes(), Ok(n) if n >= 2) {
        log(&format!("{RAW} on Slurm skipped: no Slurm with 2 nodes"));
        return out;
    }
    let me = std::env::current_exe().expect("current_exe");
    for n in sizes(quick) {
        let (w, r) = reps_for(quick, n);
        let dir =
            std::env::temp_dir().join(format!("rustray-bench-raw-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("raw dir");
        let mut cmd = std::process::Command::new("srun");
        cmd.args(["-N", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
            .arg(&me)
            .arg("--raw-fabric-app")
            .arg(&dir)
            .arg(n.to_string())
            .arg(w.to_string())
            .arg(r.to_string());
        let res = run_bounded(&mut cmd, SRUN_TRANSFER_TIMEOUT);
        let _ = std::fs::remove_dir_all(&dir);
        let Ok((st, stdout, err, wall)) = res else {
            log(&format!("{RAW} on Slurm: srun cannot run"));
            return out;
        };
        let provider = stdout
            .lines()
            .find_map(|l| l.strip_prefix("raw-fabric-app provider "))
            .unwrap_or("?")
            .to_string();
        let rates: Vec<f64> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("raw-fabric-app rate "))
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        if !st.is_some_and(|s| s.success()) || rates.len() != r {
            log(&format!(
                "{RAW} on Slurm ({n} bytes) failed after {wall:.1}s:\n{stdout}\n{err}"
            ));
            continue;
        }
        let med = median(&rates);
        if emit_rows {
            emit_raw(n, &provider, &rates, true);
        }
        out.push((n, provider, med));
    }
    out
}

/// One raw_fi_read_gb_per_s row.
fn emit_raw(n: usize, provider: &str, rates: &[f64], slurm: bool) {
    let what = if slurm {
        "bare fi_read loop between the two ranks of srun -N 2 (emulated nodes), the data \
         plane's chunk size and reads in flight"
    } else {
        "bare fi_read loop between two processes on this host, the data plane's chunk size \
         and reads in flight, destination buffer warm"
    };
    let mut extra: Vec<(&str, J)> = vec![
        ("samples", rnd_all(rates, 3).into()),
        ("provider", provider.into()),
    ];
    if slurm {
        extra.push(("slurm", true.into()));
    }
    extra.push(("what", what.into()));
    emit(RAW, "GB/s", median(rates), n, rates.len(), extra);
}
