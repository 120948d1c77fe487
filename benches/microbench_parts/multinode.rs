//! The local multi-node rows (`--multinode`): 3-node start, the internode
//! transfer beside a plain TCP copy, spilling.

use super::*;

// ---------------------------------------------------------- multi-node

/// The local multi-node cluster: head (node 0, the driver's) + A + B, one
/// CPU each. Unlike bench.py's head (num_cpus=0) the head has a CPU too
/// (every local node gets the same resources); no work is pinned there.
pub(super) fn mn_config() -> rustray::Config {
    rustray::Config::new()
        .local_nodes(MN_NODES)
        .num_cpus(1.0)
        .object_store_memory(MN_STORE)
}

pub(super) fn pin(node: &rustray::Node) -> String {
    format!("node:{}", node.name)
}

pub(super) fn alive_nodes() -> Vec<rustray::Node> {
    let mut nodes: Vec<rustray::Node> = rustray::nodes()
        .expect("multinode: rustray::nodes()")
        .into_iter()
        .filter(|n| n.alive)
        .collect();
    nodes.sort_by_key(|n| n.index);
    nodes
}

/// cluster_start_3node_s: `init_with(local_nodes(3))` until the first
/// trivial task's result is back; start_reps times with shutdown + 1 s
/// between (as cluster_start_s); the last cluster stays up for the other
/// multi-node scenarios.
pub(super) fn sc_cluster_start_3node(c: &Sizes, want: bool) {
    let reps = if want { c.start_reps } else { 1 };
    let mut samples = Vec::new();
    for r in 0..reps {
        let t0 = Instant::now();
        rustray::init_with(mn_config()).expect("cluster_start_3node_s: init_with(local_nodes(3))");
        let v = rustray::get_timeout(&noop::remote(7u64).unwrap(), MN_TIMEOUT)
            .expect("cluster_start_3node_s: first noop task");
        let dt = secs(t0);
        assert_eq!(v, 7, "cluster_start_3node_s: noop(7) returned {v}");
        samples.push(dt);
        if r < reps - 1 {
            rustray::shutdown();
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let nodes = alive_nodes();
    assert_eq!(
        nodes.len(),
        MN_NODES as usize,
        "cluster_start_3node_s: {} alive nodes after init, expected {MN_NODES}",
        nodes.len()
    );
    log(&format!(
        "multinode cluster up: {} nodes ({})",
        nodes.len(),
        nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if want {
        emit(
            "cluster_start_3node_s",
            "s",
            median(&samples),
            1,
            samples.len(),
            vec![
                ("samples", rnd_all(&samples, 4).into()),
                ("first", rnd(samples[0], 4).into()),
                ("mode", "local_nodes".into()),
                ("nodes", nodes.len().into()),
                ("num_cpus_per_node", 1u64.into()),
                (
                    "note",
                    "init_with(local_nodes(3)) + get(noop(7)); 3 raylets, own store each".into(),
                ),
            ],
        );
    }
}

/// Reference for internode_transfer_gb_per_s: a plain TCP copy of `nbytes`
/// over 127.0.0.1 between two threads (a server thread and this one). Per
/// copy: connect, send an 8-byte request, the server write_all()s a
/// pre-touched buffer, this side read_exact()s into a pre-touched buffer;
/// timed from connect to the last byte. Default socket options plus
/// TCP_NODELAY (as the runtime's transport). Separate processes measured the
/// same here (2.2-2.8 GB/s either way on 2 cores).
pub(super) struct TcpCopy {
    addr: std::net::SocketAddr,
    dst: Vec<u8>,
    server: Option<std::thread::JoinHandle<()>>,
}

/// The sending side of a TCP copy: a thread serving `listener`. Per
/// connection: read an 8-byte little-endian request n, write_all() the first
/// n bytes of a pre-touched buffer of `nbytes` (value 7); n == 0 stops it.
pub(super) fn spawn_tcp_server(
    listener: std::net::TcpListener,
    nbytes: usize,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let src = vec![7u8; nbytes]; // non-zero fill: pages touched
        loop {
            let (mut s, _) = listener.accept().expect("tcp copy server: accept");
            s.set_nodelay(true).expect("tcp copy server: nodelay");
            let mut req = [0u8; 8];
            s.read_exact(&mut req)
                .expect("tcp copy server: read request");
            let n = u64::from_le_bytes(req) as usize;
            if n == 0 {
                return; // stop
            }
            s.write_all(&src[..n]).expect("tcp copy server: write");
        }
    })
}

/// Connects to a spawn_tcp_server and asks for `n` bytes (0: stop it).
pub(super) fn tcp_request(addr: std::net::SocketAddr, n: usize, what: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("{what}: connect to {addr}: {e}"));
    s.set_nodelay(true)
        .unwrap_or_else(|e| panic!("{what}: nodelay: {e}"));
    s.write_all(&(n as u64).to_le_bytes())
        .unwrap_or_else(|e| panic!("{what}: send request: {e}"));
    s
}

impl TcpCopy {
    fn start(nbytes: usize) -> TcpCopy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp_copy_gb_per_s: bind");
        let addr = listener
            .local_addr()
            .expect("tcp_copy_gb_per_s: local_addr");
        let server = spawn_tcp_server(listener, nbytes);
        let mut dst = vec![0u8; nbytes];
        dst.fill(2); // calloc'd pages are lazy: touch them
        TcpCopy {
            addr,
            dst,
            server: Some(server),
        }
    }

    fn request(&self, n: usize) -> std::net::TcpStream {
        tcp_request(self.addr, n, "tcp_copy_gb_per_s")
    }

    /// One copy; returns GB/s.
    fn once(&mut self) -> f64 {
        use std::io::Read;
        let n = self.dst.len();
        let t0 = Instant::now();
        let mut s = self.request(n);
        s.read_exact(&mut self.dst)
            .expect("tcp_copy_gb_per_s: read");
        let dt = secs(t0);
        let sum: u64 = self.dst.iter().step_by(4096).map(|&b| b as u64).sum();
        let want = n.div_ceil(4096) as u64 * 7;
        assert_eq!(
            sum, want,
            "tcp_copy_gb_per_s: checksum {sum}, expected {want}"
        );
        n as f64 / GB / dt
    }
}

impl Drop for TcpCopy {
    fn drop(&mut self) {
        drop(self.request(0));
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
    }
}

pub(super) fn emit_tcp_copy(nbytes: usize, tcp: &[f64]) {
    let med = median(tcp);
    emit(
        "tcp_copy_gb_per_s",
        "GB/s",
        med,
        nbytes,
        tcp.len(),
        vec![
            ("samples", rnd_all(tcp, 3).into()),
            ("mb_per_s", rnd(med * 1000.0, 1).into()),
            ("streams", 1u64.into()),
            (
                "note",
                "plain TCP over 127.0.0.1 between two threads: request, write_all of a \
                 pre-touched buffer, read_exact into a pre-touched buffer; timed from \
                 connect; reps interleaved with internode_transfer_gb_per_s's; reference \
                 for it"
                    .into(),
            ),
        ],
    );
}

/// How the internode scenarios read the object (their `extra.read`).
pub(super) const INTERNODE_READ: &str =
    "get_view inside the task on B: the raylet of B pulls the bytes \
     from A's raylet into B's store, the view maps them (no copy out of the store)";

/// One rep of internode_transfer_gb_per_s (and of its Slurm variant): a
/// fresh object of `nbytes` (value seed % 251) made by a task pinned to
/// node `a`; once it exists there, its ref goes boxed to a task pinned to
/// node `b` that times `get_view` (the pull A -> B). Checks length,
/// checksum and placement, frees both copies (+ FREE_PAUSE). Returns
/// (seconds of get_view inside B, seconds from submitting B's task to its
/// result in the driver).
pub(super) fn transfer_once(
    what: &str,
    nbytes: usize,
    seed: u64,
    a: &rustray::Node,
    b: &rustray::Node,
) -> (f64, f64) {
    assert_ne!(a.name, b.name, "{what}: node A == node B");
    let r: ObjectRef<Vec<u8>> = make_on_a::options()
        .resource(&pin(a), 0.01)
        .remote(nbytes, seed)
        .unwrap();
    // Wait until it exists on A, without pulling it here (fetch_local off).
    let (ready, _) = rustray::wait_with(std::slice::from_ref(&r), 1, Some(MN_TIMEOUT), false)
        .unwrap_or_else(|e| panic!("{what}: wait for make_on_a: {e}"));
    assert_eq!(
        ready.len(),
        1,
        "{what}: make_on_a not done within {MN_TIMEOUT:?}"
    );
    drop(ready);
    let t1 = Instant::now();
    let res = pull_on_b::options()
        .resource(&pin(b), 0.01)
        .remote(vec![r.clone()])
        .unwrap();
    let (dt, sum, len, node) =
        rustray::get_timeout(&res, MN_TIMEOUT).unwrap_or_else(|e| panic!("{what}: pull_on_b: {e}"));
    let e2e = secs(t1);
    let want = (nbytes / 4096) as u64 * (seed % 251);
    assert_eq!(len, nbytes, "{what}: B read {len} bytes");
    assert_eq!(
        sum, want,
        "{what}: checksum {sum} on B, expected {want} (seed {seed})"
    );
    assert_eq!(
        node, b.name,
        "{what}: pull_on_b ran on {node}, expected node B {}",
        b.name
    );
    drop(res);
    drop(r);
    std::thread::sleep(FREE_PAUSE); // let both nodes free their copies
    (dt, e2e)
}

/// internode_transfer_gb_per_s, on the cluster left up by
/// sc_cluster_start_3node, plus its reference tcp_copy_gb_per_s (same bytes,
/// same warm-ups and reps, in the same run: each TCP copy right before the
/// transfer of the same rep, so both see the same load).
pub(super) fn sc_internode(c: &Sizes, want_internode: bool, want_tcp: bool) {
    let nbytes = c.internode_bytes;
    let mut tcp = TcpCopy::start(nbytes);
    if !want_internode {
        for _ in 0..c.internode_warmup {
            tcp.once();
        }
        let rates: Vec<f64> = (0..c.internode_reps).map(|_| tcp.once()).collect();
        drop(tcp);
        if want_tcp {
            emit_tcp_copy(nbytes, &rates);
        }
        return;
    }
    let nodes = alive_nodes();
    assert!(
        nodes.len() >= 3,
        "internode_transfer_gb_per_s: {} alive nodes, need 3",
        nodes.len()
    );
    let (head, a, b) = (&nodes[0], &nodes[1], &nodes[2]);
    let one = |seed: u64| transfer_once(INTERNODE, nbytes, seed, a, b);
    let mut tcp_rates = Vec::new();
    // A failed transfer (its panic) still leaves the TCP reference's row.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for w in 0..c.internode_warmup {
            tcp.once();
            one(100 + w as u64); // warm-up (faults in both stores' pages)
        }
        let mut rss_kib = 0u64;
        let mut procs = 0usize;
        for (pid, _) in rustray_processes() {
            let (rss, _) = mem_kib(pid);
            if rss > 0 {
                rss_kib += rss;
                procs += 1;
            }
        }
        let (mut rates, mut e2e_rates, mut get_ms) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..c.internode_reps {
            tcp_rates.push(tcp.once());
            let (dt, e2e) = one(i as u64 + 2);
            rates.push(nbytes as f64 / GB / dt);
            e2e_rates.push(nbytes as f64 / GB / e2e);
            get_ms.push(dt * 1e3);
        }
        (rates, e2e_rates, get_ms, rss_kib, procs)
    }));
    // Finish the reference's reps if the transfer failed part way.
    while tcp_rates.len() < c.internode_reps {
        tcp_rates.push(tcp.once());
    }
    drop(tcp);
    if want_tcp {
        emit_tcp_copy(nbytes, &tcp_rates);
    }
    let (rates, e2e_rates, get_ms, rss_kib, procs) = match run {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    };
    let tcp_med = median(&tcp_rates);
    let med = median(&rates);
    emit(
        INTERNODE,
        "GB/s",
        med,
        nbytes,
        rates.len(),
        vec![
            ("samples", rnd_all(&rates, 3).into()),
            ("get_ms", rnd(median(&get_ms), 2).into()),
            ("end_to_end_gb_per_s", rnd(median(&e2e_rates), 3).into()),
            ("mb_per_s", rnd(med * 1000.0, 1).into()),
            ("tcp_copy_gb_per_s", rnd(tcp_med, 3).into()),
            ("vs_tcp_copy", rnd(med / tcp_med, 3).into()),
            ("target_vs_tcp_copy", 0.9.into()),
            ("nodes", nodes.len().into()),
            (
                "node_names",
                vec![head.name.clone(), a.name.clone(), b.name.clone()].into(),
            ),
            (
                "node_addrs",
                nodes
                    .iter()
                    .map(|n| n.address.to_string())
                    .collect::<Vec<_>>()
                    .into(),
            ),
            ("cluster_rss_mib", rnd(rss_kib as f64 / 1024.0, 1).into()),
            ("cluster_processes", procs.into()),
            ("read", INTERNODE_READ.into()),
            (
                "transport",
                "loopback TCP between two raylet processes".into(),
            ),
            (
                "note",
                "fresh object per rep, made by a task pinned to A (node:<A> 0.01, 1 CPU); \
                 ref passed boxed in a Vec to a task pinned to B; get_view timed inside B"
                    .into(),
            ),
        ],
    );
}

/// spill_throughput_per_s: a batch of `spill_tasks` tasks sleeping 5 ms,
/// submitted at once from the driver to its node; the raylet spills what its
/// one CPU cannot run to the other nodes. value = tasks / wall (including
/// submission); extra.per_node = where they ran.
pub(super) fn sc_spill(c: &Sizes) {
    let n = c.spill_tasks;
    let batch = || -> (f64, BTreeMap<String, usize>) {
        let t0 = Instant::now();
        let refs: Vec<ObjectRef<String>> = (0..n)
            .map(|_| sleep_where::remote(SPILL_SLEEP_MS).unwrap())
            .collect();
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for r in &refs {
            let node = rustray::get_timeout(r, MN_TIMEOUT)
                .expect("spill_throughput_per_s: get of a sleep task");
            *per.entry(node).or_default() += 1;
        }
        (secs(t0), per)
    };
    batch(); // warm-up (starts the workers on every node)
    let nodes = alive_nodes();
    let (mut rates, mut per_rep) = (Vec::new(), Vec::new());
    let mut total: BTreeMap<String, usize> = nodes.iter().map(|n| (n.name.clone(), 0)).collect();
    for _ in 0..c.reps {
        let (dt, per) = batch();
        assert_eq!(
            per.values().sum::<usize>(),
            n,
            "spill_throughput_per_s: result count"
        );
        rates.push(n as f64 / dt);
        for (k, v) in &per {
            *total.entry(k.clone()).or_default() += v;
        }
        per_rep.push(J::Obj(
            per.into_iter().map(|(k, v)| (k, v.into())).collect(),
        ));
    }
    let ideal = nodes.len() as f64 * 1000.0 / SPILL_SLEEP_MS as f64;
    let med = median(&rates);
    emit(
        "spill_throughput_per_s",
        "tasks/s",
        med,
        n,
        rates.len(),
        vec![
            ("samples", rnd_all(&rates, 1).into()),
            ("task_ms", SPILL_SLEEP_MS.into()),
            ("nodes", nodes.len().into()),
            ("cpus_per_node", 1u64.into()),
            ("ideal_per_s", rnd(ideal, 1).into()),
            ("efficiency", rnd(med / ideal, 3).into()),
            (
                "per_node",
                J::Obj(total.into_iter().map(|(k, v)| (k, v.into())).collect()),
            ),
            ("per_node_per_rep", J::Arr(per_rep)),
            (
                "note",
                "n tasks (sleep 5 ms, 1 CPU) submitted at once from the driver on node 0, \
                 unpinned; per_node sums the timed reps"
                    .into(),
            ),
        ],
    );
}
