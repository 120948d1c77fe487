//! The libfabric data plane between nodes: verified transfers, a source or
//! reader killed mid-read, a pull racing a free, a provider that cannot open.

use super::*;

#[rustray::remote]
pub(super) fn two_len_where(a: Vec<u8>, b: Vec<u8>) -> (usize, String) {
    (a.len() + b.len(), rustray::node_name().expect("node name"))
}

/// Under `--transport fabric` (here `Config::transport`; launched: the
/// launcher's flag) every node reads others' objects by one-sided RDMA
/// reads: `shm` between local nodes, a network provider between Slurm
/// nodes. No TCP fallback when forced, so intact bytes mean the fabric
/// moved them. Sizes straddle chunks and pages; both directions.
pub(super) fn test_fabric_transfer_verified() {
    let nodes = three_nodes_with(Config::new().transport(rustray::Transport::Fabric));
    for n in &nodes {
        assert!(n.transport.starts_with("fabric ("), "{n:?}");
        if common::launched() && std::env::var_os("SLURM_JOB_ID").is_some() {
            // Between hosts: a provider that reaches other hosts.
            assert!(!n.transport.contains("shm"), "{n:?}");
        }
    }
    println!("transport: {}", nodes[0].transport);
    for (i, &n) in [1usize, 4097, (8 << 20) + 13, (64 << 20) + 1, 200 << 20]
        .iter()
        .enumerate()
    {
        let data = pattern(n, i as u8);
        let want = local_checksum(&data);
        let obj = rustray::put(data).expect("put");
        let r = checksum::options()
            .resource(&pin(&nodes[2]), 0.01)
            .remote(&obj)
            .unwrap();
        let (sum, len, node) = rustray::get(&r).expect("checksum on node 2");
        assert_eq!((sum, len), (want, n), "{n} bytes corrupted by fabric");
        assert_eq!(node, nodes[2].name);
        let made = make_bytes::options()
            .resource(&pin(&nodes[1]), 0.01)
            .remote(n, i as u8)
            .unwrap();
        let back = rustray::get_view(&made).expect("result from node 1");
        assert_eq!(
            local_checksum(&back),
            want,
            "{n} bytes from node 1 corrupted"
        );
    }
    // Eight readers on three nodes of one object at once.
    let data = pattern(48 << 20, 9);
    let want = local_checksum(&data);
    let obj = rustray::put(data).expect("put");
    let readers: Vec<_> = (0..8)
        .map(|i| {
            checksum::options()
                .resource(&pin(&nodes[i % 3]), 0.01)
                .remote(&obj)
                .unwrap()
        })
        .collect();
    for (sum, len, _) in rustray::get_all(&readers).expect("8 readers") {
        assert_eq!((sum, len), (want, 48 << 20));
    }
}

/// A node killed while an object moves between two nodes by RDMA: the
/// source (the object's node) or the reader. The read fails (or
/// completes) within a bound, never hangs, and the surviving nodes go on
/// moving objects. (With `shm`, a reader killed inside the provider can
/// leave a lock of the source's shared region held: the other nodes'
/// endpoints then wedge, which they notice and move objects over TCP
/// instead; the abandoned block stays allocated, so the object is sized to
/// leave room for a second copy.)
pub(super) fn killed_mid_read(kill_source: bool) {
    let nodes = three_nodes_with(Config::new().transport(rustray::Transport::Fabric));
    let (source, reader) = (&nodes[1], &nodes[2]);
    let victim = if kill_source { source } else { reader };
    let victim_raylet = raylet_pid_of(victim);
    let n = 200 << 20;
    let big = make_bytes::options()
        .resource(&pin(source), 0.01)
        .remote(n, 6u8)
        .unwrap();
    // Made on the source and not copied to this node.
    rustray::wait_with(
        std::slice::from_ref(&big),
        1,
        Some(Duration::from_secs(60)),
        false,
    )
    .expect("made");
    let read = checksum::options()
        .resource(&pin(reader), 0.01)
        .max_retries(0)
        .remote(&big)
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    kill9(victim_raylet);
    let t0 = std::time::Instant::now();
    match rustray::get_timeout(&read, Duration::from_secs(60)) {
        Ok((_, len, _)) => assert_eq!(len, n),
        Err(e) => assert_ne!(e.kind(), ErrorKind::Timeout, "{e}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(45),
        "took {:?}",
        t0.elapsed()
    );
    if kill_source {
        // Node 0 and the reader still move objects by fabric.
        let data = pattern(9 << 20, 5);
        let want = local_checksum(&data);
        let obj = rustray::put(data).expect("put");
        let (sum, _, _) = rustray::get(
            &checksum::options()
                .resource(&pin(reader), 0.01)
                .remote(&obj)
                .unwrap(),
        )
        .expect("after the loss");
        assert_eq!(sum, want);
    } else {
        // The source still serves the object, to node 0.
        let want = local_checksum(&pattern(n, 6));
        let (sum, len, node) = rustray::get(
            &checksum::options()
                .resource(&pin(&nodes[0]), 0.01)
                .remote(&big)
                .unwrap(),
        )
        .expect("the source still serves");
        assert_eq!((sum, len, node.as_str()), (want, n, nodes[0].name.as_str()));
    }
}

pub(super) fn test_fabric_source_killed_mid_read() {
    killed_mid_read(true);
}

pub(super) fn test_fabric_reader_killed_mid_read() {
    killed_mid_read(false);
}

/// Pulls racing the free of their object: the driver drops its ref right
/// after handing it to a reader on another node. The reader's borrow keeps
/// the object alive, the bytes are right every time, and once the readers
/// are done every block on every node is freed.
pub(super) fn test_fabric_pull_racing_free() {
    let nodes = three_nodes_with(Config::new().transport(rustray::Transport::Fabric));
    let mut reads = Vec::new();
    for i in 0..16usize {
        let n = (3 << 20) + i * 4099;
        let data = pattern(n, i as u8);
        let want = local_checksum(&data);
        let obj = rustray::put(data).expect("put");
        let r = checksum::options()
            .resource(&pin(&nodes[1 + i % 2]), 0.01)
            .remote(&obj)
            .unwrap();
        drop(obj);
        reads.push((r, want, n));
    }
    for (r, want, n) in reads {
        let (sum, len, _) = rustray::get(&r).expect("read after the driver's free");
        assert_eq!((sum, len), (want, n));
    }
    assert_every_store_empty();
}

/// `--transport fabric` with no provider that can open (here FI_PROVIDER
/// names none): the cluster does not start, and the error names the node,
/// the transport and what is missing.
pub(super) fn test_fabric_provider_cannot_open() {
    if common::launched() {
        return; // the launcher's environment decides there
    }
    std::env::set_var("FI_PROVIDER", "no-such-provider");
    let r = rustray::init_with(
        Config::new()
            .local_nodes(2)
            .num_cpus(1.0)
            .object_store_memory(64 << 20)
            .transport(rustray::Transport::Fabric),
    );
    std::env::remove_var("FI_PROVIDER");
    let e = r.expect_err("a cluster without a usable provider");
    let raylet_log = e
        .message()
        .rsplit("see ")
        .next()
        .and_then(|p| std::fs::read_to_string(p.trim()).ok())
        .unwrap_or_default();
    let all = format!("{e}\n{raylet_log}");
    assert!(
        all.contains("cannot use the fabric transport") && all.contains("no-such-provider"),
        "{all}"
    );
}
