//! Several nodes on one machine (`Config::local_nodes`): each node its own
//! raylet process, object store and workers, the GCS coordinating leases
//! across them. The same code paths run under `rust-ray-launch` and Slurm.

mod common;

use rustray::{Config, ErrorKind, SchedulingStrategy};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[rustray::remote]
fn where_am_i(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    rustray::node_name().expect("node name inside a task")
}

#[rustray::remote]
fn checksum(data: Vec<u8>) -> (u64, usize, String) {
    let sum = data.iter().enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_mul(31).wrapping_add(*b as u64 ^ i as u64)
    });
    (sum, data.len(), rustray::node_name().expect("node name"))
}

#[rustray::remote]
fn make_bytes(n: usize, seed: u8) -> Vec<u8> {
    pattern(n, seed)
}

/// Puts a block from inside a task: its worker owns it.
#[rustray::remote]
fn put_and_own(n: usize, seed: u8) -> (rustray::ObjectRef<Vec<u8>>, u32) {
    let r = rustray::put(pattern(n, seed)).expect("put in a task");
    (r, std::process::id())
}

use common::{checksum_of as local_checksum, pattern};

pub struct Where {
    calls: u64,
}

#[rustray::actor]
impl Where {
    pub fn new() -> Self {
        Where { calls: 0 }
    }
    pub fn call(&mut self) -> (u64, String) {
        self.calls += 1;
        (self.calls, rustray::node_name().expect("node name"))
    }
}

fn three_nodes() -> Vec<rustray::Node> {
    three_nodes_with(Config::new())
}

fn three_nodes_with(cfg: Config) -> Vec<rustray::Node> {
    rustray::init_with(
        cfg.local_nodes(3)
            .num_cpus(1.0)
            .object_store_memory(640 << 20),
    )
    .expect("a 3-node cluster starts");
    let nodes = rustray::nodes().expect("node table");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.alive));
    nodes
}

/// Established connections whose local end is `addr`, those accepted by
/// the server listening there, as this network namespace's
/// /proc/net/tcp{,6} list them. The address counts whole, not only its
/// port: another address's socket may use the same port number.
fn connections_to(addr: std::net::SocketAddr) -> usize {
    // Each 32-bit word of the address as the kernel prints it: its bytes
    // as stored, read as a native-order number, in hex.
    let words = |b: &[u8]| -> String {
        b.chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    };
    let port = format!("{:04X}", addr.port());
    let ip = addr.ip();
    let mut forms = Vec::new();
    match ip {
        std::net::IpAddr::V4(v4) => {
            forms.push(format!("{}:{port}", words(&v4.octets())));
            // Accepted on an IPv6 socket: the IPv4-mapped form.
            forms.push(format!("{}:{port}", words(&v4.to_ipv6_mapped().octets())));
        }
        std::net::IpAddr::V6(v6) => forms.push(format!("{}:{port}", words(&v6.octets()))),
    }
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, remote address, state (01: established)
            f.len() > 3 && f[3] == "01" && forms.iter().any(|a| a == f[1])
        })
        .count()
}

#[rustray::remote]
fn node_table_size(_i: u64) -> usize {
    rustray::nodes().expect("node table").len()
}

/// Ray's GCS scaling concern: core workers reach the GCS through their
/// node's raylet, so the GCS holds two connections per node (the raylet's
/// reports, and the requests it forwards) however many processes ask it
/// things (the node table, from workers on every node, and the driver's
/// own calls): here nine workers and a driver, not thirteen connections.
fn test_gcs_holds_connections_per_node_not_per_process() {
    let nodes = three_nodes();
    let gcs = rustray::__private::gcs_address().expect("gcs address");
    let refs: Vec<_> = (0..9u64)
        .map(|i| {
            node_table_size::options()
                .num_cpus(0.25)
                .scheduling_strategy(SchedulingStrategy::Spread)
                .remote(i)
                .unwrap()
        })
        .collect();
    let sizes = rustray::get_all(&refs).expect("node tables");
    assert!(sizes.iter().all(|n| *n == nodes.len()), "{sizes:?}");
    let w = Where::options()
        .name("gcs-connections")
        .remote(())
        .expect("named actor");
    let found = rustray::get_actor::<Where>("gcs-connections").expect("by name");
    rustray::get(&found.call()).expect("call");
    drop(w);
    // A connection whose client has not closed it yet (a process still
    // exiting) is given a few seconds to go; the ones a connection per
    // process would hold stay.
    let want = nodes.len()..=2 * nodes.len();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut n = connections_to(gcs);
    while !want.contains(&n) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
        n = connections_to(gcs);
    }
    assert!(want.contains(&n), "{n} connections to the GCS at {gcs}");
}

fn pin(node: &rustray::Node) -> String {
    format!("node:{}", node.name)
}

/// More 1-CPU tasks than one node has CPUs: the raylet spills them back to
/// the other nodes, and every node runs some.
fn test_tasks_spill_to_every_node() {
    three_nodes();
    let refs: Vec<_> = (0..24)
        .map(|_| where_am_i::remote(150u64).unwrap())
        .collect();
    let seen: BTreeSet<String> = rustray::get_all(&refs)
        .expect("all tasks finish")
        .into_iter()
        .collect();
    assert_eq!(seen.len(), 3, "tasks ran on {seen:?}");
}

/// A task asking for a resource only one node has runs there.
fn test_node_affinity_by_resource() {
    let nodes = three_nodes();
    for n in &nodes {
        let r = where_am_i::options()
            .resource(&pin(n), 0.01)
            .remote(0u64)
            .unwrap();
        assert_eq!(rustray::get(&r).expect("pinned task"), n.name);
    }
}

/// Objects from 1 byte to 256 MiB cross nodes intact, both ways: the
/// driver's objects read by tasks elsewhere, and task results on other
/// nodes read by the driver.
fn test_object_transfer_between_nodes() {
    let nodes = three_nodes();
    for (i, &n) in [1usize, 100, 200 << 10, 8 << 20, 256 << 20]
        .iter()
        .enumerate()
    {
        let data = pattern(n, i as u8);
        let want = local_checksum(&data);
        let obj = rustray::put(data).expect("put");
        // Read on node 2, twice (the second read reuses the node's copy).
        for _ in 0..2 {
            let r = checksum::options()
                .resource(&pin(&nodes[2]), 0.01)
                .remote(&obj)
                .unwrap();
            let (sum, len, node) = rustray::get(&r).expect("checksum on node 2");
            assert_eq!(
                (sum, len),
                (want, n),
                "object of {n} bytes corrupted in transit"
            );
            assert_eq!(node, nodes[2].name);
        }
        // Made on node 1, read here on node 0.
        let made = make_bytes::options()
            .resource(&pin(&nodes[1]), 0.01)
            .remote(n, i as u8)
            .unwrap();
        let back = rustray::get(&made).expect("result from node 1");
        assert_eq!(
            local_checksum(&back),
            want,
            "{n} bytes from node 1 corrupted"
        );
        let view = rustray::get_view(&made).expect("view of the pulled copy");
        assert_eq!(view.len(), n);
    }
}

/// Reference counting across nodes: once no ref remains, the primary copy
/// and every pulled copy are freed, on every node.
fn test_every_copy_freed_when_no_ref_remains() {
    let nodes = three_nodes();
    let mut keep = Vec::new();
    for n in &nodes[1..] {
        // Made on node n, read on the driver's node and on the other node.
        let x = make_bytes::options()
            .resource(&pin(n), 0.01)
            .remote(8 << 20, 1u8)
            .unwrap();
        assert_eq!(rustray::get(&x).expect("pull to node 0").len(), 8 << 20);
        for m in &nodes[1..] {
            let r = checksum::options()
                .resource(&pin(m), 0.01)
                .remote(&x)
                .unwrap();
            rustray::get(&r).expect("read on another node");
        }
        keep.push(x);
    }
    let used = |min: u64| -> bool {
        rustray::nodes()
            .expect("nodes")
            .iter()
            .all(|n| n.store_used >= min)
    };
    // Every node holds some copy while refs live (reports come every 100 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !used(8 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "copies never showed up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(keep);
    assert_every_store_empty();
}

/// Waits (bounded) until every node reports an empty store.
fn assert_every_store_empty() {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<(String, u64)> = rustray::nodes()
            .expect("nodes")
            .into_iter()
            .filter(|n| n.store_used > 0)
            .map(|n| (n.name, n.store_used))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store space still in use after the last ref went: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[rustray::remote]
fn boxed_checksum(boxed: Vec<rustray::ObjectRef<Vec<u8>>>) -> u64 {
    // Not resolved as an argument: fetched (pulled) inside the task.
    let v = rustray::get_view(&boxed[0]).expect("boxed ref");
    local_checksum(&v)
}

/// Objects made one after another in the same store block (each freed
/// before the next) and read on another node through a borrowed ref: every
/// read sees its own object, never the copy of an earlier one.
fn test_reused_store_blocks_never_serve_stale_copies() {
    let nodes = three_nodes();
    for seed in 0..6u8 {
        let x = make_bytes::options()
            .resource(&pin(&nodes[1]), 0.01)
            .remote(4 << 20, seed)
            .unwrap();
        let r = boxed_checksum::options()
            .resource(&pin(&nodes[2]), 0.01)
            .remote(vec![x.clone()])
            .unwrap();
        let got = rustray::get(&r).expect("read on node 2");
        assert_eq!(
            got,
            local_checksum(&pattern(4 << 20, seed)),
            "stale copy for seed {seed}"
        );
        drop(x);
        drop(r);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 1 GiB object made on one node arrives intact on another.
fn test_one_gib_transfer() {
    rustray::init_with(
        Config::new()
            .local_nodes(2)
            .num_cpus(1.0)
            .object_store_memory(1200 << 20),
    )
    .expect("a 2-node cluster with 1.2 GiB stores");
    let nodes = rustray::nodes().expect("nodes");
    let n = 1usize << 30;
    let made = make_bytes::options()
        .resource(&pin(&nodes[1]), 0.01)
        .remote(n, 5u8)
        .unwrap();
    let view = rustray::get_view(&made).expect("1 GiB pulled to node 0");
    assert_eq!(view.len(), n);
    assert_eq!(
        local_checksum(&view),
        local_checksum(&pattern(n, 5)),
        "1 GiB corrupted in transit"
    );
}

/// A request no node can ever satisfy fails at once with a clear error.
fn test_infeasible_across_nodes() {
    three_nodes();
    let r = where_am_i::options().num_cpus(2.0).remote(0u64).unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(20)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
    let r = where_am_i::options()
        .resource("node:nowhere", 1.0)
        .remote(0u64)
        .unwrap();
    let e = rustray::get_timeout(&r, Duration::from_secs(20)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Infeasible, "{e}");
}

/// An actor placed on another node keeps its state and call order.
fn test_actor_on_another_node() {
    let nodes = three_nodes();
    let a = Where::options()
        .resource(&pin(&nodes[2]), 0.01)
        .remote(())
        .expect("actor on node 2");
    let refs: Vec<_> = (0..50).map(|_| a.call()).collect();
    for (i, r) in refs.iter().enumerate() {
        let (n, node) = rustray::get(r).expect("actor call");
        assert_eq!(n, i as u64 + 1, "calls ran out of order");
        assert_eq!(node, nodes[2].name);
    }
}

#[rustray::remote]
fn where_and_raylet(ms: u64) -> (String, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    // A worker's parent process is its node's raylet.
    (
        rustray::node_name().expect("node name"),
        std::os::unix::process::parent_id(),
    )
}

/// The pid of `node`'s raylet (a worker's parent), from a task there.
fn raylet_pid_of(node: &rustray::Node) -> u32 {
    rustray::get(
        &where_and_raylet::options()
            .resource(&pin(node), 0.01)
            .remote(0u64)
            .unwrap(),
    )
    .expect("a probe task on the node")
    .1
}

/// Counts its runs in `marker` (a file: runs may be in any process), then
/// makes `n` bytes; says on which node.
#[rustray::remote]
fn counted_bytes(marker: String, n: usize, seed: u8) -> (Vec<u8>, String) {
    count_run(&marker);
    (pattern(n, seed), rustray::node_name().expect("node name"))
}

/// Gets a ref it was lent (a borrower's `get`, not an argument), and says
/// how many bytes and where.
#[rustray::remote]
fn borrowed_len(boxed: Vec<rustray::ObjectRef<(Vec<u8>, String)>>) -> (usize, String) {
    let v = rustray::get_timeout(&boxed[0], Duration::from_secs(60)).expect("borrowed get");
    (v.0.len(), rustray::node_name().expect("node name"))
}

/// Counts its runs in `marker`, then returns its argument's bytes reversed.
#[rustray::remote]
fn counted_reverse(marker: String, data: (Vec<u8>, String)) -> (Vec<u8>, String) {
    count_run(&marker);
    let mut v = data.0;
    v.reverse();
    (v, rustray::node_name().expect("node name"))
}

fn count_run(marker: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(marker)
        .expect("marker file");
    f.write_all(b"x").expect("marker write");
}

/// Makes blocks on demand, counting its runs in a marker file.
pub struct Producer;

#[rustray::actor]
impl Producer {
    pub fn new() -> Self {
        Producer
    }
    pub fn make(&mut self, marker: String, n: usize, seed: u8) -> (Vec<u8>, String) {
        count_run(&marker);
        (pattern(n, seed), rustray::node_name().expect("node name"))
    }
}

/// A fresh run-counting marker file for `runs` (removed if left over).
fn marker(name: &str) -> String {
    let m = std::env::temp_dir().join(format!("rustray-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&m);
    m.display().to_string()
}

/// Prefer `node`, and run elsewhere once it is lost.
fn soft_on(node: &rustray::Node) -> SchedulingStrategy {
    SchedulingStrategy::NodeAffinity {
        node: node.name.clone(),
        soft: true,
    }
}

/// Waits up to `secs` for `r` to be ready where it was made, without a
/// copy of it here (`fetch_local` off): its node's copy stays the only one.
fn ready_there<T>(r: &rustray::ObjectRef<T>, secs: u64) {
    let (ready, _) = rustray::wait_with(
        std::slice::from_ref(r),
        1,
        Some(Duration::from_secs(secs)),
        false,
    )
    .expect("wait");
    assert_eq!(ready.len(), 1, "not ready within {secs} s");
}

fn runs(marker: &str) -> usize {
    std::fs::read(marker).map(|b| b.len()).unwrap_or(0)
}

/// test_reconstruction.py's basic and chained reconstruction: results
/// whose only copies were on a lost node are recomputed on a live node by
/// running their tasks again, recursively through a lost argument (the
/// second task's input, on the same node); each run counts against the
/// task's `max_retries`. A result of a task without retries stays lost.
fn test_lineage_reconstruction_of_lost_results() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    let (ma, mb) = (marker("recon-a"), marker("recon-b"));
    let there = soft_on(victim);
    let a = counted_bytes::options()
        .scheduling_strategy(there.clone())
        .remote(ma.clone(), 1 << 20, 3u8)
        .unwrap();
    let b = counted_reverse::options()
        .scheduling_strategy(there.clone())
        .remote(mb.clone(), &a)
        .unwrap();
    let mc = marker("recon-c");
    let c = counted_bytes::options()
        .scheduling_strategy(there.clone())
        .remote(mc.clone(), 1 << 20, 5u8)
        .unwrap();
    let lost_for_good = make_bytes::options()
        .scheduling_strategy(there)
        .max_retries(0)
        .remote(1 << 20, 4u8)
        .unwrap();
    let (ready, _) = rustray::wait_with(
        &[a.clone(), b.clone(), c.clone()],
        3,
        Some(Duration::from_secs(30)),
        false,
    )
    .expect("wait");
    assert_eq!(ready.len(), 3);
    ready_there(&lost_for_good, 30);
    assert_eq!((runs(&ma), runs(&mb)), (1, 1));
    let (_, reconstructions) = rustray::__private::fault_counts();
    kill9(raylet);
    let (bytes, node) = rustray::get_timeout(&b, Duration::from_secs(60)).expect("b recomputed");
    let mut want = pattern(1 << 20, 3);
    want.reverse();
    assert!(bytes == want, "b's bytes");
    assert_ne!(node, victim.name);
    assert_eq!(runs(&mb), 2, "b ran again");
    assert_eq!(runs(&ma), 2, "its lost argument a ran again first");
    assert_eq!(
        rustray::__private::fault_counts().1,
        reconstructions + 2,
        "b's and a's reconstructions were not counted as such"
    );
    let (bytes, _) = rustray::get_timeout(&a, Duration::from_secs(60)).expect("a");
    assert!(bytes == pattern(1 << 20, 3), "a's bytes");
    assert_eq!(runs(&ma), 2, "a recomputed once");
    // A borrower that finds every copy gone asks the owner, which
    // recomputes the object for it.
    let (len, _) = rustray::get_timeout(
        &borrowed_len::remote(vec![c.clone()]).unwrap(),
        Duration::from_secs(60),
    )
    .expect("a borrower's get of a lost object");
    assert_eq!(len, 1 << 20);
    // Known issue under `--transport fabric` (shm): after a read from the
    // lost node fails, the endpoint's next read from a live node stalls
    // until the 30 s transfer timeout, the borrower reports the recomputed
    // copy lost too, and c runs a third time.
    let fabric = std::env::var("RUSTRAY_TRANSPORT").as_deref() == Ok("fabric");
    let c_runs = runs(&mc);
    assert!(
        c_runs == 2 || (fabric && c_runs == 3),
        "c recomputed for the borrower: {c_runs} runs"
    );
    let _ = std::fs::remove_file(&mc);
    let e = rustray::get_timeout(&lost_for_good, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ObjectLost, "{e}");
    assert!(e.message().contains("cannot be reconstructed"), "{e}");
    let _ = (std::fs::remove_file(&ma), std::fs::remove_file(&mb));
}

/// `root` and every process below it.
fn tree(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    all.extend(common::descendants(root));
    all
}

fn signal(pids: &[u32], sig: &str) {
    for p in pids {
        let _ = std::process::Command::new("kill")
            .args([sig, &p.to_string()])
            .status();
    }
}

/// A node that hangs (its raylet and workers stopped, their connections
/// open) is declared dead by the GCS after the report timeout, and every
/// process that depends on it hears so: a task running there is retried
/// on a live node instead of waiting on the open connection for ever.
fn test_hung_node_is_lost_everywhere() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    let long = where_am_i::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: victim.name.clone(),
            soft: true,
        })
        .remote(3000u64)
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let hung = tree(raylet);
    assert!(
        hung.len() >= 2,
        "the raylet and the task's worker: {hung:?}"
    );
    signal(&hung, "-STOP");
    let t0 = std::time::Instant::now();
    let r = rustray::get_timeout(&long, Duration::from_secs(40));
    signal(&hung, "-KILL");
    let node = r.expect("the task is retried on a live node");
    assert_ne!(node, victim.name);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let dead = rustray::nodes()
        .expect("nodes")
        .into_iter()
        .find(|n| n.name == victim.name)
        .expect("listed");
    assert!(!dead.alive);
}

/// An actor whose constructor takes a while.
pub struct SlowStart;

#[rustray::actor]
impl SlowStart {
    pub fn new(ms: u64) -> Self {
        std::thread::sleep(Duration::from_millis(ms));
        SlowStart
    }
    pub fn node(&self) -> String {
        rustray::node_name().expect("node name")
    }
}

/// test_actor_failures.py's node-failure cases, on a hung node (its raylet
/// and workers stopped, their connections open): an actor running there,
/// and one whose constructor was running there, restart on a live node
/// once the node is declared lost, within `max_restarts`; calls made
/// meanwhile reach the new incarnation (`max_task_retries`).
fn test_actors_restart_when_their_node_is_lost_hung() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    let there = soft_on(victim);
    let up = Where::options()
        .max_restarts(1)
        .max_task_retries(1)
        .scheduling_strategy(there.clone())
        .remote(())
        .expect("actor");
    let (_, node) = rustray::get_timeout(&up.call(), Duration::from_secs(30)).expect("call");
    assert_eq!(node, victim.name);
    let starting = SlowStart::options()
        .max_restarts(1)
        .max_task_retries(1)
        .scheduling_strategy(there)
        .remote(3000u64)
        .expect("actor");
    // Its constructor is running on the victim when the node hangs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tree(raylet).len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the second actor's worker never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let hung = tree(raylet);
    signal(&hung, "-STOP");
    let t0 = Instant::now();
    let call = rustray::get_timeout(&up.call(), Duration::from_secs(40));
    let built = rustray::get_timeout(&starting.node(), Duration::from_secs(40));
    signal(&hung, "-KILL");
    let (_, node) = call.expect("the running actor restarted on a live node");
    assert_ne!(node, victim.name);
    let node = built.expect("the constructor ran again on a live node");
    assert_ne!(node, victim.name);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

fn kill9(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -9 {pid}");
}

/// A node lost mid-job (its raylet killed): the GCS notices at once, tasks
/// that were running there are retried on the other nodes, an actor there
/// restarts elsewhere, and an object whose only copy was there is an
/// object-lost error, not a hang.
fn test_node_lost_mid_job() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    // An object whose only copy is in node 2's store (never fetched here),
    // made by a task without retries: not reconstructable.
    let only_there = make_bytes::options()
        .resource(&pin(victim), 0.01)
        .max_retries(0)
        .remote(1 << 20, 9u8)
        .unwrap();
    ready_there(&only_there, 20);
    // An actor on node 2 by soft affinity: it may restart elsewhere.
    // Its calls may be retried, so one made while it restarts waits.
    let a = Where::options()
        .max_restarts(1)
        .max_task_retries(1)
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: victim.name.clone(),
            soft: true,
        })
        .remote(())
        .expect("actor");
    let (_, actor_node) = rustray::get(&a.call()).expect("actor call");
    assert_eq!(actor_node, victim.name);
    // Long tasks over every node.
    let refs: Vec<_> = (0..6)
        .map(|_| where_and_raylet::remote(1500u64).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    kill9(raylet);
    let t0 = std::time::Instant::now();
    for r in &refs {
        let (node, _) = rustray::get_timeout(r, Duration::from_secs(60))
            .expect("every task finishes, retried if it ran on the lost node");
        assert_ne!(node, victim.name, "a task finished on the lost node");
    }
    // The GCS marked the node dead.
    let dead = rustray::nodes()
        .expect("nodes")
        .into_iter()
        .find(|n| n.name == victim.name)
        .expect("the lost node is still listed");
    assert!(!dead.alive, "node {} still alive", dead.name);
    let e = rustray::get_timeout(&only_there, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ObjectLost, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    // The actor: alive on another node if it was on the lost one.
    let (n, node) = rustray::get_timeout(&a.call(), Duration::from_secs(30))
        .expect("the actor answers after the loss");
    assert_ne!(node, victim.name);
    assert_eq!(n, 1, "a restarted actor starts from its constructor");
}

#[rustray::remote]
fn len_where(data: Vec<u8>) -> (usize, String) {
    (data.len(), rustray::node_name().expect("node name"))
}

/// Ray's scheduling strategies: hard and soft node affinity, spread.
fn test_scheduling_strategies() {
    let nodes = three_nodes();
    for n in &nodes {
        let r = where_am_i::options()
            .scheduling_strategy(SchedulingStrategy::NodeAffinity {
                node: n.name.clone(),
                soft: false,
            })
            .remote(0u64)
            .unwrap();
        assert_eq!(rustray::get(&r).expect("hard affinity"), n.name);
    }
    let hard_nowhere = where_am_i::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: "no-such-node".into(),
            soft: false,
        })
        .remote(0u64)
        .unwrap();
    let e = rustray::get(&hard_nowhere).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unschedulable, "{e}");
    assert!(e.message().contains("no-such-node"), "{e}");
    let soft_nowhere = where_am_i::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: "no-such-node".into(),
            soft: true,
        })
        .remote(0u64)
        .unwrap();
    rustray::get(&soft_nowhere).expect("soft affinity falls back");
    // Long enough that no task finishes before every node's first worker
    // has started, even on a loaded machine: a lease freed early would
    // otherwise take a queued task (leases are reused per scheduling key,
    // as in Ray) and the last node could get none.
    let spread: Vec<_> = (0..6)
        .map(|_| {
            where_am_i::options()
                .scheduling_strategy(SchedulingStrategy::Spread)
                .remote(1500u64)
                .unwrap()
        })
        .collect();
    let seen: BTreeSet<String> = rustray::get_all(&spread)
        .expect("spread")
        .into_iter()
        .collect();
    assert_eq!(seen.len(), 3, "spread tasks ran on {seen:?}");
}

/// The talk's `g(id_X)`: a task whose large argument lives in another
/// node's store runs on that node, and the object is not moved.
fn test_locality_runs_tasks_where_their_data_is() {
    let nodes = three_nodes();
    for n in &nodes[1..] {
        let x = make_bytes::options()
            .resource(&pin(n), 0.01)
            .remote(32 << 20, 3u8)
            .unwrap();
        for _ in 0..3 {
            let (len, node) = rustray::get(&len_where::remote(&x).unwrap()).expect("consumer");
            assert_eq!(len, 32 << 20);
            assert_eq!(node, n.name, "the consumer did not run where its data is");
        }
    }
}

/// Holds refs (and so the copies pulled to its node) for as long as it
/// lives.
pub struct Holder {
    held: Vec<rustray::ObjectRef<Vec<u8>>>,
}

#[rustray::actor]
impl Holder {
    pub fn new() -> Self {
        Holder { held: Vec::new() }
    }
    /// Pulls the object to this node and keeps it.
    pub fn hold(&mut self, boxed: Vec<rustray::ObjectRef<Vec<u8>>>) -> usize {
        let n = rustray::get_view(&boxed[0])
            .expect("pull to the holder")
            .len();
        self.held.extend(boxed);
        n
    }
    pub fn where_(&self) -> (String, u32) {
        (
            rustray::node_name().expect("node name"),
            std::os::unix::process::parent_id(),
        )
    }
}

/// The object directory: the owner learns which nodes hold copies, and a
/// reader pulls from a copy when the primary's node is gone, so an object
/// outlives the node it was made on while another node holds it.
fn test_object_directory_serves_copies_after_primary_loss() {
    let nodes = three_nodes();
    let (primary, holder_node) = (&nodes[1], &nodes[2]);
    let x = make_bytes::options()
        .resource(&pin(primary), 0.01)
        .remote(6 << 20, 4u8)
        .unwrap();
    let primary_raylet = raylet_pid_of(primary);
    let holder = Holder::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: holder_node.name.clone(),
            soft: false,
        })
        .remote(())
        .expect("holder actor");
    assert_eq!(
        rustray::get(&holder.where_()).expect("holder").0,
        holder_node.name
    );
    assert_eq!(
        rustray::get(&holder.hold(vec![x.clone()])).expect("hold"),
        6 << 20
    );
    // The primary's node goes; the driver (the owner) has never read x.
    kill9(primary_raylet);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rustray::nodes()
        .expect("nodes")
        .iter()
        .any(|n| n.name == primary.name && n.alive)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "node loss not noticed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A task reading x gets it from the copy too (Ray resolves task
    // arguments from any live location), and runs where the copy is: the
    // lost primary's node does not count.
    let (sum, len, ran_on) =
        rustray::get_timeout(&checksum::remote(&x).unwrap(), Duration::from_secs(60))
            .expect("a task's argument served from the copy");
    assert_eq!(len, 6 << 20);
    assert_eq!(sum, expected_sum(6 << 20, 4), "corrupted");
    assert_eq!(
        ran_on, holder_node.name,
        "the task did not run where the copy is"
    );
    let v = rustray::get_view(&x).expect("served from the copy on the holder's node");
    assert_eq!(local_checksum(&v), local_checksum(&pattern(6 << 20, 4)));
}

/// test_reconstruction.py's actor case: a result of an actor call whose
/// only copy was on a lost node is recomputed, when the call has
/// `max_task_retries`, by calling the method again on the actor restarted
/// elsewhere; without it the result stays `ObjectLost`.
fn test_actor_task_reconstruction_after_node_loss() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    let (ma, mb) = (marker("actor-recon-a"), marker("actor-recon-b"));
    let there = soft_on(victim);
    // (Retries: the recomputing call may first reach the dying actor.)
    let retried = Producer::options()
        .max_restarts(1)
        .max_task_retries(5)
        .scheduling_strategy(there.clone())
        .remote(())
        .expect("actor");
    let plain = Producer::options()
        .max_restarts(1)
        .scheduling_strategy(there)
        .remote(())
        .expect("actor");
    // Where they run (a small, inline result).
    for h in [&retried, &plain] {
        let (_, node) =
            rustray::get_timeout(&h.make(marker("probe"), 8, 0), Duration::from_secs(30))
                .expect("a call");
        assert_eq!(node, victim.name, "the actor runs on the node to lose");
    }
    let a = retried.make(ma.clone(), 1 << 20, 9);
    let b = plain.make(mb.clone(), 1 << 20, 8);
    // Ready, and not copied here: the lost node's blocks are the only ones.
    let (ready, _) = rustray::wait_with(
        &[a.clone(), b.clone()],
        2,
        Some(Duration::from_secs(30)),
        false,
    )
    .expect("wait");
    assert_eq!(ready.len(), 2);
    assert_eq!((runs(&ma), runs(&mb)), (1, 1));
    kill9(raylet);
    let (bytes, node) =
        rustray::get_timeout(&a, Duration::from_secs(60)).expect("a recomputed by the actor");
    assert!(bytes == pattern(1 << 20, 9), "a's bytes");
    assert_ne!(node, victim.name, "the restarted actor made it");
    // Ran again: on the restarted actor, and possibly once more on the
    // dying one first, when the recomputing call reached it before its
    // process saw its raylet go (a method runs at least once, as in Ray).
    let again = runs(&ma);
    assert!(
        (2..=3).contains(&again),
        "the method ran again: {again} runs"
    );
    let e = rustray::get_timeout(&b, Duration::from_secs(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ObjectLost, "{e}");
    assert_eq!(runs(&mb), 1);
}

/// An actor call whose by-ref argument is lost by the time the actor
/// runs it (its only copy was on a node lost while the call waited behind
/// another) is not lost with it: the owner remakes the argument through
/// its lineage and sends the call again (the call after it, already sent,
/// runs first).
fn test_actor_call_whose_argument_was_lost_runs_once_it_is_remade() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    let ma = marker("actor-arg-a");
    let a = counted_bytes::options()
        .scheduling_strategy(soft_on(victim))
        .remote(ma.clone(), 1 << 20, 7u8)
        .unwrap();
    ready_there(&a, 30);
    let actor = Sleeper::options()
        .resource(&pin(&nodes[1]), 0.01)
        .remote(())
        .expect("actor on a node that stays");
    assert_eq!(rustray::get(&actor.nap(0)).expect("the actor is up"), 0);
    // Both calls reach the actor at once; the second reads `a` only once
    // the first is done, after `a`'s node is gone.
    let busy = actor.nap(1500);
    let read = actor.len_of(&a);
    let after = actor.nap(1);
    std::thread::sleep(Duration::from_millis(300));
    kill9(raylet);
    assert_eq!(
        rustray::get_timeout(&busy, Duration::from_secs(30)),
        Ok(1500)
    );
    let n = rustray::get_timeout(&read, Duration::from_secs(60))
        .expect("the call ran once its argument was remade");
    assert_eq!(n, 1 << 20);
    assert_eq!(runs(&ma), 2, "a was made again");
    assert_eq!(rustray::get_timeout(&after, Duration::from_secs(30)), Ok(1));
    let _ = std::fs::remove_file(&ma);
}

/// Objects fate-share with their owner, copies included: a borrower's copy
/// of an object, pulled into its node's store, is freed when the owner
/// dies, although the borrower still holds the ref (whose `get` now fails
/// with `OwnerDied`).
fn test_owner_killed_frees_borrowed_copies() {
    let nodes = three_nodes();
    let me = rustray::node_name().expect("node");
    let other = nodes.iter().find(|n| n.name != me).expect("another node");
    let (inner, pid) = rustray::get_timeout(
        &put_and_own::options()
            .resource(&pin(other), 0.01)
            .remote(16usize << 20, 3u8)
            .unwrap(),
        Duration::from_secs(30),
    )
    .expect("a task puts and returns the ref");
    let v = rustray::get(&inner).expect("a borrowed read pulls a copy here");
    assert_eq!(local_checksum(&v), local_checksum(&pattern(16 << 20, 3)));
    drop(v);
    let with_copy = rustray::store_stats().expect("stats").used_bytes;
    assert!(with_copy >= 16 << 20, "{with_copy}");
    kill9(pid);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let e = rustray::get_timeout(&inner, Duration::from_secs(1)).err();
        let used = rustray::store_stats().expect("stats").used_bytes;
        if e.as_ref().is_some_and(|e| e.kind() == ErrorKind::OwnerDied)
            && used + (16 << 20) <= with_copy
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "the copy outlived its owner: get {e:?}, store {used} bytes of {with_copy} with it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(inner);
}

/// Ray fate-shares objects with their owner's node
/// (test_failure*.py's owner-node cases): an object owned by a worker on a
/// node that hangs (its connections stay open, so only the node's loss is
/// heard, not a closed connection) fails `get` with `OwnerDied` once the
/// node is declared lost, even where it was read before.
fn test_objects_owned_on_a_lost_node_fail_with_owner_died() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    let (inner, _) = rustray::get_timeout(
        &put_and_own::options()
            .resource(&pin(victim), 0.01)
            .remote(1usize << 20, 5u8)
            .unwrap(),
        Duration::from_secs(30),
    )
    .expect("a task on the victim puts and returns the ref");
    let v = rustray::get(&inner).expect("read while its owner lives");
    assert_eq!(local_checksum(&v), local_checksum(&pattern(1 << 20, 5)));
    drop(v);
    let hung = tree(raylet);
    signal(&hung, "-STOP");
    let t0 = Instant::now();
    let seen = loop {
        match rustray::get_timeout(&inner, Duration::from_millis(500)) {
            Err(e) if e.kind() == ErrorKind::OwnerDied => break Ok(e),
            other if t0.elapsed() > Duration::from_secs(20) => break Err(format!("{other:?}")),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    signal(&hung, "-KILL");
    let e = seen.expect("OwnerDied once the owner's node is lost");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "{:?}: {e}",
        t0.elapsed()
    );
    drop(inner);
}

/// Doubles its argument (a result big enough for the store).
#[rustray::remote]
fn doubled(v: Vec<u8>) -> Vec<u8> {
    let mut out = v.clone();
    out.extend_from_slice(&v);
    out
}

/// test_reconstruction*.py's unreconstructable case: a result whose every
/// copy was lost with its node cannot be made again once the by-ref
/// argument of the task that made it, a `put` object (which no lineage can
/// remake), was released: `get` fails with `ReconstructionFailed` naming
/// why, rather than hanging or running the task without its input.
fn test_lost_result_whose_argument_was_released_fails_reconstruction() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    let arg = rustray::put(pattern(1 << 20, 9)).expect("put the argument");
    let r = doubled::options()
        .resource(&pin(victim), 0.01)
        .max_retries(3)
        .remote(arg.clone())
        .unwrap();
    // Ready, its only copy on the victim (not fetched here).
    ready_there(&r, 30);
    drop(arg);
    signal(&tree(raylet), "-KILL");
    let e = rustray::get_timeout(&r, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReconstructionFailed, "{e}");
    assert!(e.message().contains("was released"), "{e}");
}

/// Ray's lineage pinning: a lost result is remade though the by-ref
/// argument of the task that made it was released meanwhile (its last
/// `ObjectRef` dropped, its block freed): the argument's entry outlives it
/// for the lineage, and the argument is made again first, from its own
/// lineage. Fails if the lineage did not pin its arguments.
fn test_lost_result_is_remade_through_an_argument_since_released() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    let (ma, mb) = (marker("pin-a"), marker("pin-b"));
    let there = soft_on(victim);
    let a = counted_bytes::options()
        .scheduling_strategy(there.clone())
        .remote(ma.clone(), 1 << 20, 6u8)
        .unwrap();
    let b = counted_reverse::options()
        .scheduling_strategy(there)
        .remote(mb.clone(), &a)
        .unwrap();
    ready_there(&b, 30);
    assert_eq!((runs(&ma), runs(&mb)), (1, 1));
    drop(a);
    kill9(raylet);
    let (bytes, node) = rustray::get_timeout(&b, Duration::from_secs(60))
        .expect("b remade through its released argument");
    let mut want = pattern(1 << 20, 6);
    want.reverse();
    assert!(bytes == want, "b's bytes");
    assert_ne!(node, victim.name);
    assert_eq!((runs(&ma), runs(&mb)), (2, 2), "a, then b, ran again");
    let _ = (std::fs::remove_file(&ma), std::fs::remove_file(&mb));
}

/// Ray's `test_spill_remote_object`: objects spilled on one node are read
/// by tasks on another: the pull makes the source read them back from its
/// disk (over TCP, or pinned for the RDMA read under the fabric transport).
fn test_spill_remote_object() {
    if common::launched() {
        return; // needs stores of its own sizes
    }
    rustray::init_with(
        Config::new()
            .num_cpus(1.0)
            .add_local_node(Config::new().object_store_memory(48 << 20))
            .add_local_node(Config::new().num_cpus(2.0).object_store_memory(256 << 20)),
    )
    .expect("two nodes");
    let nodes = rustray::nodes().expect("nodes");
    let refs: Vec<_> = (0..8u8)
        .map(|i| rustray::put(pattern(12 << 20, i)).expect("put spills on node 0"))
        .collect();
    let s = rustray::store_stats().expect("stats");
    assert!(s.spilled_objects >= 4, "{s:?}");
    let sums: Vec<_> = refs
        .iter()
        .map(|r| {
            checksum::options()
                .resource(&pin(&nodes[1]), 0.01)
                .remote(r)
                .unwrap()
        })
        .collect();
    for (i, r) in sums.iter().enumerate() {
        let (sum, len, node) = rustray::get_timeout(r, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!((len, node.as_str()), (12 << 20, nodes[1].name.as_str()));
        assert_eq!(sum, expected_sum(12 << 20, i as u8), "task {i}: corrupted");
    }
}

/// `checksum`'s sum of `pattern(n, seed)`, computed here.
fn expected_sum(n: usize, seed: u8) -> u64 {
    pattern(n, seed)
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, b)| {
            acc.wrapping_mul(31).wrapping_add(*b as u64 ^ i as u64)
        })
}

/// test_failure.py's node-death cases (`NodeDiedError`): a task whose node
/// is lost while it runs, with no retries left, fails saying which node; a
/// worker that dies on a live node is still `WorkerDied`.
fn test_task_lost_with_its_node_names_the_node() {
    let nodes = three_nodes();
    let victim = &nodes[2];
    let raylet = raylet_pid_of(victim);
    let doomed = where_and_raylet::options()
        .resource(&pin(victim), 0.01)
        .max_retries(0)
        .remote(5000u64)
        .unwrap();
    // An actor call running there fails as the actor's death, its node named.
    let actor = Sleeper::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: victim.name.clone(),
            soft: false,
        })
        .remote(())
        .expect("actor on the victim");
    let call = actor.nap(5000);
    std::thread::sleep(Duration::from_millis(500));
    kill9(raylet);
    let e = rustray::get_timeout(&doomed, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NodeDied, "{e}");
    assert!(e.message().contains(&victim.name), "{e}");
    let e = rustray::get_timeout(&call, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ActorDied, "{e}");
    assert!(e.message().contains(&victim.name), "{e}");
    let other = &nodes[1];
    let crash = exits_now::options()
        .resource(&pin(other), 0.01)
        .max_retries(0)
        .remote()
        .unwrap();
    let e = rustray::get_timeout(&crash, Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
}

/// An actor whose calls take a while.
pub struct Sleeper;

#[rustray::actor]
impl Sleeper {
    pub fn new() -> Self {
        Sleeper
    }
    pub fn nap(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
    pub fn len_of(&self, data: (Vec<u8>, String)) -> usize {
        data.0.len()
    }
}

#[rustray::remote]
fn exits_now() -> u32 {
    std::process::exit(7)
}

/// Ray's pull admission (test_object_manager.py's many-large-arguments
/// cases): 10 tasks, each with its own 36 MB argument made on node 0, run
/// on a node whose 100 MB store holds two such copies at once and that has
/// 4 CPUs: the pulls that find no room wait for it (copies are freed as
/// tasks finish) instead of failing, and every task completes.
fn test_task_args_wait_for_room_in_the_store() {
    rustray::init_with(
        Config::new()
            .num_cpus(1.0)
            .add_local_node(Config::new().object_store_memory(512 << 20))
            .add_local_node(Config::new().num_cpus(4.0).object_store_memory(100 << 20)),
    )
    .expect("two nodes");
    let nodes = rustray::nodes().expect("nodes");
    let small = &nodes[1];
    let args: Vec<_> = (0..10u8)
        .map(|i| rustray::put(pattern(36 << 20, i)).expect("put 36 MB on node 0"))
        .collect();
    let refs: Vec<_> = args
        .iter()
        .map(|a| {
            checksum::options()
                .resource(&pin(small), 0.01)
                .max_retries(0)
                .remote(a)
                .unwrap()
        })
        .collect();
    for (i, r) in refs.iter().enumerate() {
        let (sum, len, node) = rustray::get_timeout(r, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(len, 36 << 20);
        assert_eq!(node, small.name);
        assert_eq!(sum, expected_sum(36 << 20, i as u8), "task {i}: corrupted");
    }
}

/// Ray's locality-aware leasing counts every location of an argument,
/// cached copies included: x (8 MiB) made on node 1 and copied to node 2,
/// y (2 MiB) made on node 2: a task of both runs on node 2 (10 MiB there
/// against 8 MiB on node 1; by primary copies alone node 1 would win).
fn test_locality_counts_cached_copies() {
    let nodes = three_nodes();
    let (n1, n2) = (&nodes[1], &nodes[2]);
    let x = make_bytes::options()
        .resource(&pin(n1), 0.01)
        .remote(8 << 20, 1u8)
        .unwrap();
    let y = make_bytes::options()
        .resource(&pin(n2), 0.01)
        .remote(2 << 20, 2u8)
        .unwrap();
    let holder = Holder::options()
        .scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: n2.name.clone(),
            soft: false,
        })
        .remote(())
        .expect("holder actor");
    assert_eq!(
        rustray::get(&holder.hold(vec![x.clone()])).expect("hold"),
        8 << 20
    );
    rustray::wait(std::slice::from_ref(&y), 1, Some(Duration::from_secs(30))).expect("y made");
    for _ in 0..3 {
        let (len, node) = rustray::get(&two_len_where::remote(&x, &y).unwrap()).expect("consumer");
        assert_eq!(len, 10 << 20);
        assert_eq!(
            node, n2.name,
            "the task did not run where most of its bytes are"
        );
    }
}

#[rustray::remote]
fn two_len_where(a: Vec<u8>, b: Vec<u8>) -> (usize, String) {
    (a.len() + b.len(), rustray::node_name().expect("node name"))
}

/// Under `--transport fabric` (here `Config::transport`; launched: the
/// launcher's flag) every node reads others' objects by one-sided RDMA
/// reads: `shm` between local nodes, a network provider between Slurm
/// nodes. No TCP fallback when forced, so intact bytes mean the fabric
/// moved them. Sizes straddle chunks and pages; both directions.
fn test_fabric_transfer_verified() {
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
fn killed_mid_read(kill_source: bool) {
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

fn test_fabric_source_killed_mid_read() {
    killed_mid_read(true);
}

fn test_fabric_reader_killed_mid_read() {
    killed_mid_read(false);
}

/// Pulls racing the free of their object: the driver drops its ref right
/// after handing it to a reader on another node. The reader's borrow keeps
/// the object alive, the bytes are right every time, and once the readers
/// are done every block on every node is freed.
fn test_fabric_pull_racing_free() {
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
fn test_fabric_provider_cannot_open() {
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

fn main() {
    common::enter_cluster_role();
    common::run(&[
        (
            "test_gcs_holds_connections_per_node_not_per_process",
            test_gcs_holds_connections_per_node_not_per_process,
        ),
        ("test_spill_remote_object", test_spill_remote_object),
        (
            "test_actors_restart_when_their_node_is_lost_hung",
            test_actors_restart_when_their_node_is_lost_hung,
        ),
        (
            "test_actor_task_reconstruction_after_node_loss",
            test_actor_task_reconstruction_after_node_loss,
        ),
        (
            "test_actor_call_whose_argument_was_lost_runs_once_it_is_remade",
            test_actor_call_whose_argument_was_lost_runs_once_it_is_remade,
        ),
        (
            "test_owner_killed_frees_borrowed_copies",
            test_owner_killed_frees_borrowed_copies,
        ),
        (
            "test_objects_owned_on_a_lost_node_fail_with_owner_died",
            test_objects_owned_on_a_lost_node_fail_with_owner_died,
        ),
        (
            "test_lost_result_whose_argument_was_released_fails_reconstruction",
            test_lost_result_whose_argument_was_released_fails_reconstruction,
        ),
        (
            "test_lost_result_is_remade_through_an_argument_since_released",
            test_lost_result_is_remade_through_an_argument_since_released,
        ),
        (
            "test_fabric_transfer_verified",
            test_fabric_transfer_verified,
        ),
        (
            "test_fabric_source_killed_mid_read",
            test_fabric_source_killed_mid_read,
        ),
        (
            "test_fabric_reader_killed_mid_read",
            test_fabric_reader_killed_mid_read,
        ),
        ("test_fabric_pull_racing_free", test_fabric_pull_racing_free),
        (
            "test_fabric_provider_cannot_open",
            test_fabric_provider_cannot_open,
        ),
        (
            "test_tasks_spill_to_every_node",
            test_tasks_spill_to_every_node,
        ),
        (
            "test_node_affinity_by_resource",
            test_node_affinity_by_resource,
        ),
        (
            "test_object_transfer_between_nodes",
            test_object_transfer_between_nodes,
        ),
        ("test_infeasible_across_nodes", test_infeasible_across_nodes),
        ("test_one_gib_transfer", test_one_gib_transfer),
        (
            "test_reused_store_blocks_never_serve_stale_copies",
            test_reused_store_blocks_never_serve_stale_copies,
        ),
        (
            "test_every_copy_freed_when_no_ref_remains",
            test_every_copy_freed_when_no_ref_remains,
        ),
        ("test_actor_on_another_node", test_actor_on_another_node),
        ("test_scheduling_strategies", test_scheduling_strategies),
        (
            "test_locality_runs_tasks_where_their_data_is",
            test_locality_runs_tasks_where_their_data_is,
        ),
        ("test_node_lost_mid_job", test_node_lost_mid_job),
        (
            "test_hung_node_is_lost_everywhere",
            test_hung_node_is_lost_everywhere,
        ),
        (
            "test_lineage_reconstruction_of_lost_results",
            test_lineage_reconstruction_of_lost_results,
        ),
        (
            "test_object_directory_serves_copies_after_primary_loss",
            test_object_directory_serves_copies_after_primary_loss,
        ),
        (
            "test_locality_counts_cached_copies",
            test_locality_counts_cached_copies,
        ),
        (
            "test_task_args_wait_for_room_in_the_store",
            test_task_args_wait_for_room_in_the_store,
        ),
        (
            "test_task_lost_with_its_node_names_the_node",
            test_task_lost_with_its_node_names_the_node,
        ),
    ]);
}
