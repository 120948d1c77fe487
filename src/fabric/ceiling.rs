//! The raw ceiling of the fabric data plane, for `make bench`: a bare
//! `fi_read` loop between two processes, through the same provider, chunk
//! size and reads in flight as [`Fabric::read`], with nothing of rustray
//! around it (no raylet, store allocator, pull budget or messages).
//!
//! The peer is this program re-executed with [`ENV_PEER`] set: it registers
//! a buffer of the requested size, prints its [`FabricAddr`] on stdout,
//! drives progress, and exits when its stdin closes (the reader's end).

use super::{Fabric, FabricAddr, OpenOptions};
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Set in the peer process: `<bytes>,<single_host 0|1>,<ip>`.
pub(crate) const ENV_PEER: &str = "RUSTRAY_FABRIC_PEER";

/// A buffer that is never freed: registered memory must outlive its
/// fabric, which lives as long as the process.
fn leaked_region(len: usize) -> &'static mut [u8] {
    Box::leak(vec![0u8; len.max(1)].into_boxed_slice())
}

fn open(single_host: bool, ip: IpAddr) -> Result<Fabric, String> {
    Fabric::open(&OpenOptions {
        forced: true,
        single_host,
        ip,
        name: None,
    })
    .map_err(|e| e.to_string())?
}

/// The peer's side; never returns.
pub(crate) fn peer_main(spec: &str) -> ! {
    let run = || -> Result<(), String> {
        let mut it = spec.split(',');
        let bytes: usize = it
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|b| *b > 0 && *b <= 16 << 30)
            .ok_or("bad byte count")?;
        let single_host = it.next() == Some("1");
        let ip: IpAddr = it.next().and_then(|v| v.parse().ok()).ok_or("bad ip")?;
        let f = std::sync::Arc::new(open(single_host, ip)?);
        let region = leaked_region(bytes);
        for (i, b) in region.iter_mut().enumerate() {
            *b = (i / 4096) as u8;
        }
        let (addr, _) = f.register_static(region).map_err(|e| e.to_string())?;
        let line = crate::codec::encode(&addr).map_err(|e| e.to_string())?;
        let hex: String = line.iter().map(|b| format!("{b:02x}")).collect();
        println!("{hex}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        let p = f.clone();
        std::thread::spawn(move || p.progress());
        let mut sink = String::new();
        let _ = std::io::stdin().lock().read_line(&mut sink);
        f.close();
        Ok(())
    };
    match run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("fabric peer: {e}");
            std::process::exit(1);
        }
    }
}

/// Reads `bytes` from a peer process `warmup + reps` times; returns the
/// provider and the GB/s of each timed read.
pub fn raw_fi_read_gb_per_s(
    single_host: bool,
    ip: IpAddr,
    bytes: usize,
    warmup: usize,
    reps: usize,
) -> Result<(String, Vec<f64>), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .env(ENV_PEER, format!("{bytes},{},{ip}", single_host as u8))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the fabric peer: {e}"))?;
    let result = (|| {
        let out = child.stdout.take().ok_or("no peer stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let raw: Vec<u8> = (0..line.trim().len() / 2)
            .map(|i| u8::from_str_radix(&line.trim()[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        let addr: FabricAddr =
            crate::codec::decode(&raw, "fabric address").map_err(|e| e.to_string())?;
        let f = open(single_host, ip)?;
        let region = leaked_region(bytes);
        let (_, region) = f.register_static(region).map_err(|e| e.to_string())?;
        let rates = timed_reads(&f, &addr, "the peer", region, warmup, reps)?;
        f.close();
        Ok((f.provider.clone(), rates))
    })();
    drop(child.stdin.take());
    let _ = child.wait();
    result
}

/// The same ceiling between the two ranks of an `srun -N 2` step (one per
/// node), through a network provider: rank 1 registers a buffer and
/// publishes its address in `dir` (a directory both nodes see), then
/// drives progress until rank 0, which reads it `warmup + reps` times,
/// leaves a `done` file. Rank 0 returns the provider and the GB/s of each
/// timed read; rank 1 returns an empty list.
pub fn raw_fi_read_slurm_app(
    dir: &std::path::Path,
    bytes: usize,
    warmup: usize,
    reps: usize,
) -> Result<(String, Vec<f64>), String> {
    let rank: u32 = std::env::var("SLURM_PROCID")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("SLURM_PROCID is not set: run under srun -N 2")?;
    let ip = crate::host::node_ip().map_err(|e| e.to_string())?;
    let f = std::sync::Arc::new(open(false, ip)?);
    let region = leaked_region(bytes);
    let (addr_file, done_file) = (dir.join("addr"), dir.join("done"));
    let bound = Instant::now() + Duration::from_secs(240);
    if rank == 1 {
        for (i, b) in region.iter_mut().enumerate() {
            *b = (i / 4096) as u8;
        }
        let (addr, _) = f.register_static(region).map_err(|e| e.to_string())?;
        let enc = crate::codec::encode(&addr).map_err(|e| e.to_string())?;
        let tmp = dir.join("addr.tmp");
        std::fs::write(&tmp, &enc).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &addr_file).map_err(|e| e.to_string())?;
        let p = f.clone();
        std::thread::spawn(move || p.progress());
        while !done_file.exists() {
            if Instant::now() > bound {
                return Err("rank 0 never finished".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f.close();
        return Ok((f.provider.clone(), Vec::new()));
    }
    let raw = loop {
        match std::fs::read(&addr_file) {
            Ok(b) => break b,
            Err(_) if Instant::now() < bound => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("rank 1 never published its address: {e}")),
        }
    };
    let addr: FabricAddr =
        crate::codec::decode(&raw, "fabric address").map_err(|e| e.to_string())?;
    let (_, region) = f.register_static(region).map_err(|e| e.to_string())?;
    let result = timed_reads(&f, &addr, "rank 1", region, warmup, reps);
    let _ = std::fs::write(&done_file, b"done");
    f.close();
    result.map(|rates| (f.provider.clone(), rates))
}

/// Reads the whole of `region` from `peer` `warmup + reps` times, checking
/// the last byte of the peer's pattern; the GB/s of each timed read.
fn timed_reads(
    f: &Fabric,
    peer: &FabricAddr,
    label: &str,
    region: &mut [u8],
    warmup: usize,
    reps: usize,
) -> Result<Vec<f64>, String> {
    let bytes = region.len();
    let mut rates = Vec::new();
    for i in 0..warmup + reps {
        let t = Instant::now();
        f.read(peer, label, 0, region, Duration::from_secs(60), &|| false)
            .map_err(|e| e.to_string())?;
        let dt = t.elapsed().as_secs_f64();
        if region[bytes - 1] != ((bytes - 1) / 4096) as u8 {
            return Err("the bytes read are wrong".into());
        }
        if i >= warmup {
            rates.push(bytes as f64 / 1e9 / dt);
        }
    }
    Ok(rates)
}
