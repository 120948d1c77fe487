//! The lease manager driven through its events, with no processes: grants,
//! queueing, spillback, blocking, worker reuse and GPU devices.

use super::*;

fn cpus(n: f64) -> ResourceSet {
    ResourceSet::new().with(CPU, n).unwrap()
}

fn w(n: u64) -> WorkerId {
    WorkerId(n)
}

fn grants(actions: &[Action]) -> Vec<(u64, WorkerId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Grant { req, worker, .. } => Some((*req, *worker)),
            _ => None,
        })
        .collect()
}

fn lease_of(actions: &[Action]) -> LeaseId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Grant { lease, .. } => Some(*lease),
            _ => None,
        })
        .expect("a grant")
}

#[test]
fn shapes_compare_exactly() {
    let a = ResourceSet::new()
        .with("GPU", 0.5)
        .unwrap()
        .with("CPU", 1.0)
        .unwrap();
    let b = ResourceSet::new()
        .with("CPU", 1.0)
        .unwrap()
        .with("GPU", 0.5)
        .unwrap();
    assert_eq!(a, b);
    assert!(ResourceSet::new().set("CPU", -1.0).is_err());
    assert!(ResourceSet::new().set("CPU", f64::NAN).is_err());
    assert_eq!(cpus(0.0), ResourceSet::new());
}

#[test]
fn request_starts_a_worker_then_grants() {
    let mut m = LeaseManager::new(cpus(2.0), 4, 4);
    assert_eq!(
        m.request(1, 10, cpus(1.0), Spill::Now),
        vec![Action::StartWorker]
    );
    let a = m.worker_registered(w(7));
    assert_eq!(grants(&a), vec![(10, w(7))]);
    assert_eq!(m.available().get(CPU), 1.0);
}

#[test]
fn infeasible_is_rejected_after_the_view_confirms_it() {
    let mut m = LeaseManager::new(cpus(2.0), 4, 4);
    assert!(m
        .request(1, 1, ResourceSet::new().with(GPU, 1.0).unwrap(), Spill::Now)
        .is_empty());
    assert!(m.set_view(Vec::new()).is_empty());
    // Views alone do not age it (a raylet may get many in a period)...
    assert!(m.set_view(Vec::new()).is_empty());
    assert!(m.set_view(Vec::new()).is_empty());
    // ...nor periods without a view (a node that joined may be on its
    // way)...
    assert!(m.tick().is_empty());
    assert!(m.tick().is_empty());
    assert!(m.tick().is_empty());
    // ...but a second period with a view confirms it.
    assert!(m.set_view(Vec::new()).is_empty());
    let a = m.tick();
    match &a[..] {
        [Action::Reject { error, .. }] => assert_eq!(error.kind(), ErrorKind::Infeasible),
        other => panic!("{other:?}"),
    }
}

#[test]
fn full_node_queues_until_lease_returns_and_reuses_worker() {
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.request(1, 1, cpus(1.0), Spill::Now);
    let l1 = lease_of(&m.worker_registered(w(1)));
    // second request does not fit: no worker is started for it
    assert!(m.request(2, 2, cpus(1.0), Spill::Now).is_empty());
    let a = m.return_lease(l1, false);
    assert_eq!(grants(&a), vec![(2, w(1))]);
}

#[test]
fn blocked_task_lends_its_cpu_for_nesting() {
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.request(1, 1, cpus(1.0), Spill::Now);
    m.worker_registered(w(1));
    assert!(m.request(1, 2, cpus(1.0), Spill::Now).is_empty());
    // the parent blocks in get: its CPU goes to the child
    assert_eq!(m.blocked(w(1)), vec![Action::StartWorker]);
    let a = m.worker_registered(w(2));
    let child = lease_of(&a);
    assert_eq!(grants(&a), vec![(2, w(2))]);
    m.return_lease(child, false);
    m.unblocked(w(1));
    assert_eq!(m.available().get(CPU), 0.0);
}

#[test]
fn unblock_may_oversubscribe_then_recovers() {
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.request(1, 1, cpus(1.0), Spill::Now);
    let parent = lease_of(&m.worker_registered(w(1)));
    m.request(1, 2, cpus(1.0), Spill::Now);
    m.blocked(w(1));
    let child = lease_of(&m.worker_registered(w(2)));
    m.unblocked(w(1));
    assert_eq!(m.available().get(CPU), -1.0);
    m.return_lease(child, false);
    m.return_lease(parent, false);
    assert_eq!(m.available().get(CPU), 1.0);
}

#[test]
fn worker_death_releases_its_lease() {
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.request(1, 1, cpus(1.0), Spill::Now);
    m.worker_registered(w(1));
    m.request(1, 2, cpus(1.0), Spill::Now);
    let a = m.worker_died(w(1));
    assert_eq!(a, vec![Action::StartWorker]);
    assert_eq!(m.lease_count(), 0);
    assert_eq!(grants(&m.worker_registered(w(2))), vec![(2, w(2))]);
}

#[test]
fn gone_client_loses_queue_and_leased_workers() {
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.request(5, 1, cpus(1.0), Spill::Now);
    m.worker_registered(w(1));
    m.request(5, 2, cpus(1.0), Spill::Now);
    let a = m.client_gone(5);
    assert_eq!(a, vec![Action::KillWorker(w(1))]);
    assert_eq!(m.available().get(CPU), 1.0);
    assert_eq!(m.lease_count(), 0);
}

#[test]
fn resource_sets_from_the_wire_are_checked() {
    let enc = |items: Vec<(String, i64)>| crate::codec::encode(&items).unwrap();
    let dec = |b: Vec<u8>| crate::codec::decode::<ResourceSet>(&b, "a resource set");
    let good = cpus(2.0).with("GPU", 1.0).unwrap();
    assert_eq!(dec(crate::codec::encode(&good).unwrap()).unwrap(), good);
    let n = |s: &str| s.to_string();
    for bad in [
        vec![(n("CPU"), 10_000), (n("CPU"), 10_000)],
        vec![(n("b"), 1), (n("a"), 1)],
        vec![(n("CPU"), i64::MAX)],
        vec![(n("CPU"), i64::MIN)],
        vec![(String::new(), 1)],
        vec![("x".repeat(2000), 1)],
    ] {
        assert!(dec(enc(bad.clone())).is_err(), "{bad:?} was accepted");
    }
    // Free amounts at or below zero (all leased, CPUs lent back) are valid.
    assert!(dec(enc(vec![(n("CPU"), -10_000)])).is_ok());
    assert!(dec(enc(vec![(n("CPU"), 0)])).is_ok());
}

/// A request with a negative amount (from a buggy or hostile peer) is
/// refused: granted, it would add to the node's free resources.
#[test]
fn negative_requests_are_refused_and_change_nothing() {
    let mut m = LeaseManager::new(cpus(4.0), 4, 1);
    let n = |s: &str| s.to_string();
    let enc = crate::codec::encode(&vec![(n("CPU"), -20_000i64)]).unwrap();
    let shape: ResourceSet = crate::codec::decode(&enc, "a resource set").unwrap();
    let before = m.available.clone();
    let a = m.request(1, 1, shape, Spill::Now);
    assert!(
        matches!(a.as_slice(), [Action::Reject { req: 1, error, .. }] if error.message().contains("negative")),
        "{a:?}"
    );
    assert_eq!(m.available, before);
    // A good request still gets the node's four CPUs.
    m.request(1, 2, cpus(4.0), Spill::Now);
    assert!(!m.worker_registered(w(1)).is_empty());
}

#[test]
fn surplus_idle_workers_are_killed() {
    let mut m = LeaseManager::new(cpus(4.0), 4, 1);
    m.request(1, 1, cpus(1.0), Spill::Now);
    m.request(1, 2, cpus(1.0), Spill::Now);
    let l1 = lease_of(&m.worker_registered(w(1)));
    let l2 = lease_of(&m.worker_registered(w(2)));
    assert!(m.return_lease(l1, false).is_empty());
    assert_eq!(m.return_lease(l2, false), vec![Action::RetireWorker(w(2))]);
    assert_eq!(m.idle_count(), 1);
    // One that owns objects others use stays, and can be leased again.
    assert!(m.worker_kept(w(2)).is_empty());
    assert_eq!(m.idle_count(), 2);
    m.request(1, 3, cpus(1.0), Spill::Now);
    m.request(1, 4, cpus(1.0), Spill::Now);
    assert_eq!(m.idle_count(), 0);
}

#[test]
fn zero_cpu_actor_leases_need_only_a_worker() {
    let mut m = LeaseManager::new(cpus(1.0), 2, 4);
    for r in 0..3 {
        m.request(1, r, ResourceSet::new(), Spill::Now);
    }
    let mut granted = 0;
    for i in 0..3 {
        granted += grants(&m.worker_registered(w(i))).len();
    }
    assert_eq!(granted, 3);
    assert_eq!(m.available().get(CPU), 1.0);
}

fn peer(index: u16, total: f64, free: f64) -> PeerNode {
    PeerNode {
        index,
        total: cpus(total),
        available: cpus(free),
    }
}

#[test]
fn full_node_spills_back_to_a_node_with_room() {
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.worker_registered(w(1));
    m.set_view(vec![peer(1, 2.0, 0.0), peer(2, 2.0, 2.0)]);
    assert_eq!(grants(&m.request(1, 1, cpus(1.0), Spill::Now)).len(), 1);
    // Full here: node 2 has room, node 1 has none.
    let a = m.request(1, 2, cpus(1.0), Spill::Now);
    assert_eq!(
        a,
        vec![Action::Spillback {
            client: 1,
            req: 2,
            node: 2
        }]
    );
    // Booked against the view: the third goes to node 2 again, the
    // fourth finds no room anywhere and queues here.
    let a = m.request(1, 3, cpus(1.0), Spill::Now);
    assert_eq!(
        a,
        vec![Action::Spillback {
            client: 1,
            req: 3,
            node: 2
        }]
    );
    assert!(m.request(1, 4, cpus(1.0), Spill::Now).is_empty());
    // A spilled request is never spilled again.
    assert!(m.request(2, 5, cpus(1.0), Spill::Never).is_empty());
    // When node 1 frees up, the spillable queued request moves there.
    let a = m.set_view(vec![peer(1, 2.0, 2.0), peer(2, 2.0, 0.0)]);
    assert_eq!(
        a,
        vec![Action::Spillback {
            client: 1,
            req: 4,
            node: 1
        }]
    );
}

/// A burst queued while the node's workers start (nothing granted yet,
/// so every request "fits" what is free) is not all kept: at the next
/// view, those behind more than the node holds move to nodes with room,
/// and those the node will serve stay.
#[test]
fn a_view_moves_what_waits_behind_more_than_the_node_holds() {
    let mut m = LeaseManager::new(cpus(2.0), 8, 8);
    m.set_view(vec![peer(1, 4.0, 0.0)]);
    for req in 1..=6 {
        m.request(1, req, cpus(1.0), Spill::Now);
    }
    assert_eq!(m.spill_demand(), 6, "all queued: workers are starting");
    let a = m.set_view(vec![peer(1, 4.0, 4.0)]);
    let moved: Vec<u64> = a
        .iter()
        .filter_map(|x| match x {
            Action::Spillback { req, node: 1, .. } => Some(*req),
            _ => None,
        })
        .collect();
    assert_eq!(moved, vec![3, 4, 5, 6], "{a:?}");
    assert_eq!(m.spill_demand(), 2);
    // The two that stayed are granted as the workers come.
    assert_eq!(grants(&m.worker_registered(w(1))), vec![(1, w(1))]);
    assert_eq!(grants(&m.worker_registered(w(2))), vec![(2, w(2))]);
}

/// Raylets that see the same view do not all pick the same node among
/// equals: each starts after its own index, so a burst from many owners
/// spreads at once rather than piling onto the lowest index.
#[test]
fn equal_nodes_are_chosen_from_after_each_raylets_own() {
    let view = |me: u16| -> Vec<PeerNode> {
        (0..8u16)
            .filter(|i| *i != me)
            .map(|i| peer(i, 4.0, 4.0))
            .collect()
    };
    let first_spill = |me: u16| -> u16 {
        let mut m = LeaseManager::new(cpus(4.0), 4, 4);
        m.set_node(me);
        m.set_view(view(me));
        for i in 0..4 {
            m.worker_registered(w(i));
        }
        // Past half here: spread to the least busy (all equal).
        m.request(1, 1, cpus(1.0), Spill::Now);
        m.request(1, 2, cpus(1.0), Spill::Now);
        match &m.request(1, 3, cpus(1.0), Spill::Now)[..] {
            [Action::Spillback { node, .. }] => *node,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(first_spill(0), 1);
    assert_eq!(first_spill(3), 4);
    assert_eq!(first_spill(7), 0, "wraps around");
    // And the same when a full node sends by most free CPU.
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.set_node(5);
    m.worker_registered(w(1));
    m.set_view(view(5));
    assert_eq!(grants(&m.request(1, 1, cpus(1.0), Spill::Now)).len(), 1);
    match &m.request(1, 2, cpus(1.0), Spill::Now)[..] {
        [Action::Spillback { node, .. }] => assert_eq!(*node, 6),
        other => panic!("{other:?}"),
    }
}

#[test]
fn default_requests_pack_a_node_to_half_then_spread() {
    // Two nodes of 4 CPUs; four long 1-CPU tasks go 2 and 2.
    let mut m = LeaseManager::new(cpus(4.0), 4, 4);
    m.set_view(vec![peer(1, 4.0, 4.0)]);
    for i in 0..4 {
        m.worker_registered(w(i));
    }
    assert_eq!(grants(&m.request(1, 1, cpus(1.0), Spill::Now)).len(), 1);
    assert_eq!(grants(&m.request(1, 2, cpus(1.0), Spill::Now)).len(), 1);
    for req in [3, 4] {
        assert_eq!(
            m.request(1, req, cpus(1.0), Spill::Now),
            vec![Action::Spillback {
                client: 1,
                req,
                node: 1
            }]
        );
    }
    // The other node is at half now (booked against the view): with
    // every node at the threshold, work stays here.
    assert_eq!(grants(&m.request(1, 5, cpus(1.0), Spill::Now)).len(), 1);
    // Preferred-here and pinned requests are not spread.
    assert_eq!(grants(&m.request(1, 6, cpus(1.0), Spill::Later)).len(), 1);
    let mut m = LeaseManager::new(cpus(4.0), 4, 4);
    m.set_view(vec![peer(1, 4.0, 4.0)]);
    m.worker_registered(w(0));
    m.worker_registered(w(1));
    assert_eq!(grants(&m.request(1, 1, cpus(3.0), Spill::Never)).len(), 1);
    assert_eq!(grants(&m.request(1, 2, cpus(1.0), Spill::Never)).len(), 1);
}

#[test]
fn a_flood_of_fractional_requests_starts_only_the_workers_that_fit() {
    // 4 CPUs, requests of 0.25: at most 16 run at once, so at most 16
    // workers are ever started however many requests queue.
    let mut m = LeaseManager::new(cpus(4.0), 64, 64);
    let mut started = 0;
    for req in 0..100 {
        started += m
            .request(1, req, cpus(0.25), Spill::Now)
            .iter()
            .filter(|a| **a == Action::StartWorker)
            .count();
    }
    assert_eq!(started, 16);
    let mut granted = 0;
    for i in 0..16 {
        granted += grants(&m.worker_registered(w(i))).len();
    }
    assert_eq!(granted, 16);
    assert_eq!(m.available().get(CPU), 0.0);
}

#[test]
fn shapes_too_big_here_go_where_they_fit_or_are_infeasible() {
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.set_view(vec![peer(3, 8.0, 0.0)]);
    let a = m.request(1, 1, cpus(4.0), Spill::Now);
    assert_eq!(
        a,
        vec![Action::Spillback {
            client: 1,
            req: 1,
            node: 3
        }]
    );
    // Fits no node of the view: held while the view may still grow.
    assert!(m.request(1, 2, cpus(16.0), Spill::Now).is_empty());
    let a = m.set_view(vec![peer(3, 8.0, 0.0), peer(4, 16.0, 16.0)]);
    assert_eq!(
        a,
        vec![Action::Spillback {
            client: 1,
            req: 2,
            node: 4
        }]
    );
    assert!(m.request(1, 3, cpus(32.0), Spill::Now).is_empty());
    assert!(m.set_view(vec![peer(3, 8.0, 0.0)]).is_empty());
    assert!(m.tick().is_empty());
    assert!(m.set_view(vec![peer(3, 8.0, 0.0)]).is_empty());
    let a = m.tick();
    assert!(
        matches!(&a[..], [Action::Reject { error, .. }] if error.kind() == ErrorKind::Infeasible)
    );
}

#[test]
fn preferred_here_requests_wait_then_move() {
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.worker_registered(w(1));
    m.set_view(vec![peer(1, 2.0, 2.0)]);
    let l1 = lease_of(&m.request(1, 1, cpus(1.0), Spill::Now));
    // Full here, room on node 1: a preferred-here request queues...
    assert!(m.request(1, 2, cpus(1.0), Spill::Later).is_empty());
    assert!(m.tick().is_empty());
    // ...and is granted here when the CPU frees up soon.
    assert_eq!(grants(&m.return_lease(l1, false)), vec![(2, w(1))]);
    // One that keeps waiting moves after the periods, however many views
    // came meanwhile.
    assert!(m.request(1, 3, cpus(1.0), Spill::Later).is_empty());
    for _ in 0..5 {
        assert!(m.set_view(vec![peer(1, 2.0, 2.0)]).is_empty());
    }
    assert!(m.tick().is_empty());
    let a = m.tick();
    assert_eq!(
        a,
        vec![Action::Spillback {
            client: 1,
            req: 3,
            node: 1
        }]
    );
}

#[test]
fn lease_ids_name_their_node() {
    let mut m = LeaseManager::new(cpus(1.0), 4, 4);
    m.set_node(7);
    m.worker_registered(w(1));
    let l = lease_of(&m.request(1, 1, cpus(1.0), Spill::Now));
    assert_eq!(l.node(), 7);
}

#[test]
fn big_request_does_not_block_small_ones() {
    let mut m = LeaseManager::new(cpus(2.0), 4, 4);
    m.request(1, 1, cpus(1.0), Spill::Now);
    m.worker_registered(w(1));
    m.request(1, 2, cpus(2.0), Spill::Now);
    let a = m.request(1, 3, cpus(1.0), Spill::Now);
    assert_eq!(a, vec![Action::StartWorker]);
    assert_eq!(grants(&m.worker_registered(w(2))), vec![(3, w(2))]);
}

fn gpus(n: f64) -> ResourceSet {
    cpus(1.0).with(GPU, n).unwrap()
}

fn gpu_grants(actions: &[Action]) -> Vec<(WorkerId, Vec<u32>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Grant { worker, gpus, .. } => Some((*worker, gpus.clone())),
            _ => None,
        })
        .collect()
}

/// A node of `cpus` CPUs and GPUs `ids`, with `workers` idle workers.
fn gpu_node(cpus_n: f64, ids: &[u32], workers: u64) -> LeaseManager {
    let total = cpus(cpus_n).with(GPU, ids.len() as f64).unwrap();
    let mut m = LeaseManager::new(total, 64, 64)
        .with_gpu_ids(ids)
        .expect("ids");
    for i in 0..workers {
        m.worker_registered(w(100 + i));
    }
    m
}

#[test]
fn concurrent_gpu_leases_get_distinct_devices() {
    let ids: Vec<u32> = (0..10).collect();
    let mut m = gpu_node(16.0, &ids, 16);
    let mut seen = Vec::new();
    for req in 0..10 {
        for (_, g) in gpu_grants(&m.request(1, req, gpus(1.0), Spill::Never)) {
            seen.extend(g);
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, ids);
    // All ten are held: one more waits.
    assert!(gpu_grants(&m.request(1, 99, gpus(1.0), Spill::Never)).is_empty());

    let mut m = gpu_node(16.0, &ids, 16);
    let mut seen = Vec::new();
    for (req, k) in [2.0, 4.0, 4.0].into_iter().enumerate() {
        let g = gpu_grants(&m.request(1, req as u64, gpus(k), Spill::Never));
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].1.len(), k as usize);
        seen.extend(g[0].1.clone());
    }
    seen.sort_unstable();
    assert_eq!(seen, ids);
}

#[test]
fn fractional_gpu_leases_share_a_device_two_by_two() {
    // Slurm's numbering: the node's devices need not start at 0.
    let mut m = gpu_node(16.0, &[3, 5, 6], 16);
    let mut count = HashMap::new();
    for req in 0..6 {
        let g = gpu_grants(&m.request(1, req, gpus(0.5), Spill::Never));
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].1.len(), 1, "one shared device");
        *count.entry(g[0].1[0]).or_insert(0) += 1;
    }
    assert_eq!(count, HashMap::from([(3, 2), (5, 2), (6, 2)]));
    assert_eq!(m.available().get(GPU), 0.0);
}

#[test]
fn a_worker_that_held_gpus_is_reused_only_for_the_same_devices() {
    let mut m = gpu_node(4.0, &[0, 1], 1);
    let a = m.request(1, 1, gpus(1.0), Spill::Never);
    assert_eq!(gpu_grants(&a), vec![(w(100), vec![0])]);
    m.return_lease(lease_of(&a), false);
    // A CPU-only request: the worker that saw GPU 0 is not given to it.
    let b = m.request(1, 2, cpus(1.0), Spill::Never);
    assert!(gpu_grants(&b).is_empty());
    assert!(b.contains(&Action::StartWorker));
    let b = m.worker_registered(w(7));
    assert_eq!(gpu_grants(&b), vec![(w(7), vec![])]);
    // GPU 0 again: the same worker.
    let c = m.request(1, 3, gpus(1.0), Spill::Never);
    assert_eq!(gpu_grants(&c), vec![(w(100), vec![0])]);
    m.return_lease(lease_of(&b), false);
    // Both GPUs: neither the GPU-0 worker (busy) nor the CPU one.
    let d = m.request(1, 4, gpus(1.0), Spill::Never);
    assert!(gpu_grants(&d).is_empty());
    assert_eq!(
        gpu_grants(&m.worker_registered(w(8))),
        vec![(w(8), vec![1])]
    );
}

#[test]
fn gpu_accounting_never_drifts() {
    // Many random fractional and whole leases, returned, killed or lost
    // with their workers: everything comes back exactly.
    let mut m = gpu_node(64.0, &[0, 1, 2, 3], 64);
    let shapes = [0.1, 0.25, 0.3, 0.5, 1.0, 2.0, 0.7, 0.05];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut held: Vec<(LeaseId, WorkerId)> = Vec::new();
    let mut spare = 1000;
    for req in 0..5000u64 {
        let shape = gpus(shapes[(next() % shapes.len() as u64) as usize]);
        let mut out = m.request(1, req, shape, Spill::Never);
        while out.contains(&Action::StartWorker) {
            spare += 1;
            out = m.worker_registered(w(spare));
        }
        for a in &out {
            if let Action::Grant { lease, worker, .. } = a {
                held.push((*lease, *worker));
            }
        }
        if !held.is_empty() && next() % 3 != 0 {
            let (lease, worker) = held.swap_remove((next() % held.len() as u64) as usize);
            match next() % 3 {
                0 => drop(m.worker_died(worker)),
                1 => drop(m.return_lease(lease, true)),
                _ => drop(m.return_lease(lease, false)),
            }
        }
        assert!(m.available().get(GPU) >= 0.0);
        assert_eq!(m.available().fixed(GPU), m.gpus.free_total());
    }
    m.client_gone(1);
    assert_eq!(m.available(), &m.total);
    assert_eq!(m.gpus.free_total(), 4 * UNIT);
}

#[test]
fn gpu_ids_must_match_the_total() {
    let total = cpus(1.0).with(GPU, 2.0).unwrap();
    assert!(LeaseManager::new(total.clone(), 1, 1)
        .with_gpu_ids(&[0])
        .is_err());
    assert!(LeaseManager::new(total, 1, 1).with_gpu_ids(&[4, 7]).is_ok());
}
