//! Objects lost with a node or an owner: copies that serve in their place,
//! results and actor calls remade, errors that name what was lost.

use super::*;

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
pub(super) fn test_object_directory_serves_copies_after_primary_loss() {
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
pub(super) fn test_actor_task_reconstruction_after_node_loss() {
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
pub(super) fn test_actor_call_whose_argument_was_lost_runs_once_it_is_remade() {
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
pub(super) fn test_owner_killed_frees_borrowed_copies() {
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
pub(super) fn test_objects_owned_on_a_lost_node_fail_with_owner_died() {
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
pub(super) fn doubled(v: Vec<u8>) -> Vec<u8> {
    let mut out = v.clone();
    out.extend_from_slice(&v);
    out
}

/// test_reconstruction*.py's unreconstructable case: a result whose every
/// copy was lost with its node cannot be made again once the by-ref
/// argument of the task that made it, a `put` object (which no lineage can
/// remake), was released: `get` fails with `ReconstructionFailed` naming
/// why, rather than hanging or running the task without its input.
pub(super) fn test_lost_result_whose_argument_was_released_fails_reconstruction() {
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
pub(super) fn test_lost_result_is_remade_through_an_argument_since_released() {
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
pub(super) fn test_spill_remote_object() {
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
pub(super) fn expected_sum(n: usize, seed: u8) -> u64 {
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
pub(super) fn test_task_lost_with_its_node_names_the_node() {
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
pub(super) fn exits_now() -> u32 {
    std::process::exit(7)
}

/// Ray's pull admission (test_object_manager.py's many-large-arguments
/// cases): 10 tasks, each with its own 36 MB argument made on node 0, run
/// on a node whose 100 MB store holds two such copies at once and that has
/// 4 CPUs: the pulls that find no room wait for it (copies are freed as
/// tasks finish) instead of failing, and every task completes.
pub(super) fn test_task_args_wait_for_room_in_the_store() {
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
pub(super) fn test_locality_counts_cached_copies() {
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
