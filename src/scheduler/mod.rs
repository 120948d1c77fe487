//! Resource accounting and the raylet's worker-lease policy, as a
//! deterministic state machine with no IO.
//!
//! The raylet's IO shell feeds events in (a lease request arrived, a worker
//! registered, a lease came back, a worker died, a task blocked in `get`) and
//! executes the [`Action`]s that come out (grant, reject, start or kill a
//! worker). Keeping the policy pure lets the tests below drive it through
//! races that are hard to provoke with real processes.
//!
//! Policy, following Ray's local lease manager:
//! - requests are served first come, first served, skipping ones that do not
//!   fit yet so a large request does not block small ones; a worker is
//!   started only for a request that fits beside those already waiting;
//! - Ray's hybrid policy for default requests: a node keeps them while it
//!   is less than half busy, then sends them to the least busy node below
//!   half, if any ([`SPREAD_THRESHOLD`]);
//! - a request that does not fit the node's free resources now is spilled
//!   back to a node where it does, chosen from the cluster resource view
//!   (Ray's spillback); one that can never fit this node goes to a node
//!   that has the resources in total. One that no node in the view can ever
//!   fit is held for [`INFEASIBLE_AFTER_VIEWS`] view updates (the view may
//!   predate a node that just joined), then rejected as infeasible rather
//!   than queued forever. A spilled request is never spilled again, so it
//!   cannot bounce;
//! - queued requests are re-examined when the view changes, so work waiting
//!   here moves to a node that frees up;
//! - a task blocked in `get`/`wait` lends its CPUs back, which is what lets
//!   deep nesting make progress on a small node; on unblocking it takes them
//!   back even if that oversubscribes the node for a while, as Ray does.
//!
//! Amounts are fixed point (1/10000 of a unit) so that shapes can be hashed
//! and compared exactly, as Ray's `FixedPoint`.

use crate::error::{Error, ErrorKind};
use crate::ids::{LeaseId, WorkerId};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fmt;

const SCALE: f64 = 10_000.0;
/// Cluster views a request that fits no node waits through before it is
/// rejected as infeasible.
pub(crate) const INFEASIBLE_AFTER_VIEWS: u32 = 2;
/// The CPU resource's name.
pub(crate) const CPU: &str = "CPU";
/// The GPU resource's name.
pub(crate) const GPU: &str = "GPU";

/// Where a task or an actor runs, as Ray's scheduling strategies.
///
/// ```
/// use rustray::SchedulingStrategy;
/// let s = SchedulingStrategy::NodeAffinity { node: "node3".into(), soft: true };
/// # let _ = s;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum SchedulingStrategy {
    /// Ray's default: on the node that holds most of the task's argument
    /// bytes when they are elsewhere (1 MiB or more), else on the caller's
    /// node, spilling to other nodes when it is full.
    #[default]
    Default,
    /// Spread over the nodes: leases are asked of each live node in turn.
    Spread,
    /// On the named node (see [`nodes`](crate::nodes)). With `soft`, on
    /// another node when that one is full or lost; without, the task
    /// fails if the node is lost or cannot fit it.
    NodeAffinity {
        /// The node's name.
        node: String,
        /// Fall back to other nodes.
        soft: bool,
    },
}

/// A set of named resource amounts (a task's shape or a node's capacity).
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub(crate) struct ResourceSet {
    // sorted by name, no zero amounts: equal shapes compare equal
    items: Vec<(String, i64)>,
}

/// The largest amount one resource may hold, in fixed-point units (about
/// 1.15e14 of the resource: bytes of memory on the largest nodes fit), so
/// that sums within a node cannot overflow.
const MAX_FIXED: i64 = 1 << 60;
/// The longest resource name accepted from the wire.
const MAX_NAME: usize = 1024;

/// A set decoded from another process is checked (names sorted, unique,
/// bounded; amounts bounded): a corrupt or forged report cannot inflate or
/// overflow a node's resources, or break the binary searches. Amounts may
/// be zero (a node's free CPUs when all are leased) or negative (they dip
/// below zero while a blocked worker's lent CPUs are taken back).
impl<'de> Deserialize<'de> for ResourceSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<(String, i64)>::deserialize(d)?;
        ResourceSet::checked(items).map_err(serde::de::Error::custom)
    }
}

impl ResourceSet {
    fn checked(items: Vec<(String, i64)>) -> Result<ResourceSet, String> {
        for (i, (name, amount)) in items.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(format!(
                    "a resource name of {} bytes (1 to {MAX_NAME} allowed)",
                    name.len()
                ));
            }
            if amount.unsigned_abs() > MAX_FIXED as u64 {
                return Err(format!("resource `{name}` has an invalid amount {amount}"));
            }
            if i > 0 && items[i - 1].0 >= *name {
                return Err(format!("resource `{name}` is out of order or repeated"));
            }
        }
        Ok(ResourceSet { items })
    }
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, (k, v)) in self.items.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{k}: {}", *v as f64 / SCALE)?;
        }
        write!(f, "}}")
    }
}

impl ResourceSet {
    pub(crate) fn new() -> ResourceSet {
        ResourceSet::default()
    }

    /// Nothing asked for.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sets `name` to `amount`; rejects negative or non-finite amounts.
    pub(crate) fn set(&mut self, name: &str, amount: f64) -> Result<(), Error> {
        if !amount.is_finite() || amount < 0.0 {
            return Err(Error::invalid(format!(
                "resource `{name}` must be a finite amount >= 0, got {amount}"
            )));
        }
        let fixed = ((amount * SCALE).round() as i64).min(MAX_FIXED);
        match self.items.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) if fixed == 0 => {
                self.items.remove(i);
            }
            Ok(i) => self.items[i].1 = fixed,
            Err(_) if fixed == 0 => {}
            Err(i) => self.items.insert(i, (name.to_string(), fixed)),
        }
        Ok(())
    }

    /// Sets an amount a task or actor asks for: as [`ResourceSet::set`],
    /// and, as Ray, a unit-instance resource (a GPU is a device: it can be
    /// shared as a fraction of one, never split across two) is a whole
    /// number or a fraction below 1.
    pub(crate) fn set_request(&mut self, name: &str, amount: f64) -> Result<(), Error> {
        if name == GPU && amount > 1.0 && amount.fract() != 0.0 {
            return Err(Error::invalid(format!(
                "resource `{name}` must be a whole number or a fraction below 1, got {amount}"
            )));
        }
        self.set(name, amount)
    }

    pub(crate) fn with(mut self, name: &str, amount: f64) -> Result<ResourceSet, Error> {
        self.set(name, amount)?;
        Ok(self)
    }

    pub(crate) fn get(&self, name: &str) -> f64 {
        self.fixed(name) as f64 / SCALE
    }

    fn fixed(&self, name: &str) -> i64 {
        self.items
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .map(|i| self.items[i].1)
            .unwrap_or(0)
    }

    /// The amounts by name.
    pub(crate) fn to_vec(&self) -> Vec<(String, f64)> {
        self.items
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / SCALE))
            .collect()
    }

    /// True when every amount in `self` is available in `avail`.
    pub(crate) fn fits(&self, avail: &ResourceSet) -> bool {
        self.items.iter().all(|(k, v)| avail.fixed(k) >= *v)
    }

    fn add_signed(&mut self, other: &ResourceSet, sign: i64) {
        for (k, v) in &other.items {
            let cur = self.fixed(k) + sign * v;
            match self.items.binary_search_by(|(n, _)| n.as_str().cmp(k)) {
                Ok(i) => self.items[i].1 = cur,
                Err(i) => self.items.insert(i, (k.clone(), cur)),
            }
        }
    }

    /// Only the CPU part of the shape (what a blocked task lends back).
    fn cpu_only(&self) -> ResourceSet {
        let mut r = ResourceSet::new();
        let cpu = self.fixed(CPU);
        if cpu != 0 {
            r.items.push((CPU.to_string(), cpu));
        }
        r
    }
}

/// Who asked for a lease: one connection to the raylet.
pub(crate) type ClientId = u64;

/// What the IO shell must do.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    Grant {
        client: ClientId,
        req: u64,
        lease: LeaseId,
        worker: WorkerId,
    },
    Reject {
        client: ClientId,
        req: u64,
        error: Error,
    },
    /// Start one more worker process.
    StartWorker,
    /// Kill this worker (its lease holder is gone, or it must not be
    /// reused).
    KillWorker(WorkerId),
    /// Ask this surplus idle worker to exit: it does unless it owns objects
    /// or actors others still use (Ray keeps such workers), and then comes
    /// back through [`LeaseManager::worker_kept`].
    RetireWorker(WorkerId),
    /// Tell the client to ask node `node`'s raylet instead.
    Spillback {
        client: ClientId,
        req: u64,
        node: u16,
    },
}

/// Whether a lease request may go to another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Spill {
    /// Never (it was spilled here already, or it has a hard affinity).
    Never,
    /// At once, when it does not fit here now.
    Now,
    /// This node is preferred (the task's data is here, or a soft
    /// affinity): it queues here, and moves only if it is still waiting
    /// after [`PREFER_HERE_VIEWS`] cluster views and another node has room.
    Later,
}

/// Ray's hybrid policy: a node keeps default work while it is less busy
/// than this (in the most used resource the request needs); from there on
/// the work goes to a node still below it, if there is one. So a node
/// packs up to half, then the cluster spreads (Ray's `spread_threshold`).
const SPREAD_THRESHOLD: f64 = 0.5;

/// Views a preferred-here request waits through before it may move.
pub(crate) const PREFER_HERE_VIEWS: u32 = 2;

/// Another node as this raylet sees it in the cluster resource view.
#[derive(Clone, Debug)]
pub(crate) struct PeerNode {
    pub(crate) index: u16,
    pub(crate) total: ResourceSet,
    pub(crate) available: ResourceSet,
}

#[derive(Debug)]
struct Pending {
    client: ClientId,
    req: u64,
    shape: ResourceSet,
    spill: Spill,
    /// Views seen since it arrived (while held as infeasible, or queued).
    views: u32,
}

#[derive(Debug)]
struct Lease {
    client: ClientId,
    worker: WorkerId,
    shape: ResourceSet,
    blocked: bool,
}

/// The raylet's lease manager.
#[derive(Debug)]
pub(crate) struct LeaseManager {
    total: ResourceSet,
    available: ResourceSet,
    queue: VecDeque<Pending>,
    idle: Vec<WorkerId>,
    starting: usize,
    max_starting: usize,
    max_idle: usize,
    leases: HashMap<LeaseId, Lease>,
    by_worker: HashMap<WorkerId, LeaseId>,
    next_lease: u64,
    node: u16,
    /// The other live nodes, from the last cluster view.
    peers: Vec<PeerNode>,
    /// Requests that fit no node of the view (yet).
    infeasible: Vec<Pending>,
}

impl LeaseManager {
    /// A node with `total` resources; at most `max_starting` workers start at
    /// once and at most `max_idle` idle workers are kept.
    pub(crate) fn new(total: ResourceSet, max_starting: usize, max_idle: usize) -> LeaseManager {
        LeaseManager {
            available: total.clone(),
            total,
            queue: VecDeque::new(),
            idle: Vec::new(),
            starting: 0,
            max_starting: max_starting.max(1),
            max_idle,
            leases: HashMap::new(),
            by_worker: HashMap::new(),
            next_lease: 1,
            node: 0,
            peers: Vec::new(),
            infeasible: Vec::new(),
        }
    }

    /// This node's index (lease ids carry it).
    pub(crate) fn set_node(&mut self, node: u16) {
        self.node = node;
    }

    pub(crate) fn available(&self) -> &ResourceSet {
        &self.available
    }

    /// A new cluster view (the other live nodes): queued requests that fit
    /// elsewhere now move there.
    pub(crate) fn set_view(&mut self, peers: Vec<PeerNode>) -> Vec<Action> {
        self.peers = peers;
        let mut out = Vec::new();
        for mut p in std::mem::take(&mut self.infeasible) {
            p.views += 1;
            out.extend(self.place(p));
        }
        let mut i = 0;
        while i < self.queue.len() {
            let p = &mut self.queue[i];
            p.views += 1;
            let waited = p.spill == Spill::Now || p.views >= PREFER_HERE_VIEWS;
            if p.spill == Spill::Never || !waited || p.shape.fits(&self.available) {
                i += 1;
                continue;
            }
            let shape = p.shape.clone();
            match self.spill_target(&shape, false) {
                Some(node) => {
                    if let Some(p) = self.queue.remove(i) {
                        out.push(Action::Spillback {
                            client: p.client,
                            req: p.req,
                            node,
                        });
                    }
                }
                None => i += 1,
            }
        }
        out
    }

    /// The node to send `shape` to: the one with the most free CPU among
    /// those where it fits now; with `by_total`, else any node whose total
    /// fits (it will queue there). Books the shape against that node's view
    /// so a burst of requests spreads instead of all landing on one node.
    fn spill_target(&mut self, shape: &ResourceSet, by_total: bool) -> Option<u16> {
        let now = self
            .peers
            .iter_mut()
            .filter(|n| shape.fits(&n.available))
            .max_by_key(|n| n.available.fixed(CPU));
        if let Some(n) = now {
            n.available.add_signed(shape, -1);
            return Some(n.index);
        }
        if by_total {
            return self
                .peers
                .iter()
                .filter(|n| shape.fits(&n.total))
                .max_by_key(|n| n.total.fixed(CPU))
                .map(|n| n.index);
        }
        None
    }

    /// The shell started `n` workers on its own (prestart at boot).
    pub(crate) fn note_prestarted(&mut self, n: usize) {
        self.starting += n;
    }

    /// A lease request arrived.
    pub(crate) fn request(
        &mut self,
        client: ClientId,
        req: u64,
        shape: ResourceSet,
        spill: Spill,
    ) -> Vec<Action> {
        self.place(Pending {
            client,
            req,
            shape,
            spill,
            views: 0,
        })
    }

    /// How busy a node is: the largest fraction in use, over the
    /// resources `shape` asks for (Ray's critical resource utilization).
    fn utilization(total: &ResourceSet, free: &ResourceSet, shape: &ResourceSet) -> f64 {
        shape
            .items
            .iter()
            .filter_map(|(k, _)| {
                let t = total.fixed(k);
                (t > 0).then(|| (t - free.fixed(k)) as f64 / t as f64)
            })
            .fold(0.0, f64::max)
    }

    /// Under the hybrid policy, the node a default request should go to
    /// instead of this one: this node is at [`SPREAD_THRESHOLD`] or past
    /// it, and another, where it fits now, is below (the least busy one).
    fn spread_target(&mut self, shape: &ResourceSet) -> Option<u16> {
        // Requests queued here count as busy: they are granted as soon as
        // workers are ready.
        let mut free = self.available.clone();
        for q in &self.queue {
            free.add_signed(&q.shape, -1);
        }
        if Self::utilization(&self.total, &free, shape) < SPREAD_THRESHOLD {
            return None;
        }
        let best = self
            .peers
            .iter_mut()
            .filter(|n| shape.fits(&n.available))
            .map(|n| (Self::utilization(&n.total, &n.available, shape), n))
            .filter(|(u, _)| *u < SPREAD_THRESHOLD)
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n)?;
        // Until the next view arrives, count what was sent there.
        best.available.add_signed(shape, -1);
        Some(best.index)
    }

    /// Grants, queues, spills, holds or rejects a request.
    fn place(&mut self, p: Pending) -> Vec<Action> {
        let fits_here = p.shape.fits(&self.total);
        if p.spill == Spill::Now && fits_here {
            if let Some(node) = self.spread_target(&p.shape) {
                return vec![Action::Spillback {
                    client: p.client,
                    req: p.req,
                    node,
                }];
            }
        }
        let spill_now = p.spill == Spill::Now || (p.spill == Spill::Later && !fits_here);
        if spill_now && !p.shape.fits(&self.available) {
            if let Some(node) = self.spill_target(&p.shape, !fits_here) {
                return vec![Action::Spillback {
                    client: p.client,
                    req: p.req,
                    node,
                }];
            }
        }
        if !fits_here {
            if p.spill != Spill::Never && p.views < INFEASIBLE_AFTER_VIEWS {
                self.infeasible.push(p);
                return Vec::new();
            }
            let error = Error::new(
                ErrorKind::Infeasible,
                format!(
                    "the request {:?} exceeds what any node of the cluster has in total (this node: {:?}; {} other nodes); no node can run it",
                    p.shape,
                    self.total,
                    self.peers.len()
                ),
            );
            return vec![Action::Reject {
                client: p.client,
                req: p.req,
                error,
            }];
        }
        let mut p = p;
        p.views = 0;
        self.queue.push_back(p);
        self.schedule()
    }

    /// A worker process finished starting and is ready for leases.
    pub(crate) fn worker_registered(&mut self, worker: WorkerId) -> Vec<Action> {
        self.starting = self.starting.saturating_sub(1);
        self.idle.push(worker);
        self.schedule()
    }

    /// A worker process failed to start (it exited before registering).
    pub(crate) fn worker_start_failed(&mut self) -> Vec<Action> {
        self.starting = self.starting.saturating_sub(1);
        self.schedule()
    }

    /// The holder gave the lease back; `kill` when the worker must not be
    /// reused (a killed actor, a cancelled running task).
    pub(crate) fn return_lease(&mut self, lease: LeaseId, kill: bool) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(l) = self.release(lease) {
            if kill {
                out.push(Action::KillWorker(l.worker));
            } else if self.idle.len() >= self.max_idle && self.queue.is_empty() {
                out.push(Action::RetireWorker(l.worker));
            } else {
                self.idle.push(l.worker);
            }
        }
        out.extend(self.schedule());
        out
    }

    fn release(&mut self, lease: LeaseId) -> Option<Lease> {
        let l = self.leases.remove(&lease)?;
        self.by_worker.remove(&l.worker);
        let held = if l.blocked {
            let mut s = l.shape.clone();
            s.add_signed(&l.shape.cpu_only(), -1);
            s
        } else {
            l.shape.clone()
        };
        self.available.add_signed(&held, 1);
        Some(l)
    }

    /// A worker asked to retire stays (it owns what others still use): it
    /// is idle again, beyond `max_idle` if need be.
    pub(crate) fn worker_kept(&mut self, worker: WorkerId) -> Vec<Action> {
        if !self.idle.contains(&worker) && !self.by_worker.contains_key(&worker) {
            self.idle.push(worker);
        }
        self.schedule()
    }

    /// A worker process exited (crash, kill, or shutdown).
    pub(crate) fn worker_died(&mut self, worker: WorkerId) -> Vec<Action> {
        self.idle.retain(|w| *w != worker);
        if let Some(lease) = self.by_worker.get(&worker).copied() {
            self.release(lease);
        }
        self.schedule()
    }

    /// A connection closed: drop its queued requests and kill the workers it
    /// leased, since they would run work nobody will collect.
    pub(crate) fn client_gone(&mut self, client: ClientId) -> Vec<Action> {
        self.queue.retain(|p| p.client != client);
        self.infeasible.retain(|p| p.client != client);
        let gone: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.client == client)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in gone {
            if let Some(l) = self.release(id) {
                out.push(Action::KillWorker(l.worker));
            }
        }
        out.extend(self.schedule());
        out
    }

    /// The leased worker blocked in `get`/`wait`: lend its CPUs back.
    pub(crate) fn blocked(&mut self, worker: WorkerId) -> Vec<Action> {
        let Some(l) = self
            .by_worker
            .get(&worker)
            .and_then(|id| self.leases.get_mut(id))
        else {
            return Vec::new();
        };
        if l.blocked {
            return Vec::new();
        }
        l.blocked = true;
        let cpu = l.shape.cpu_only();
        self.available.add_signed(&cpu, 1);
        self.schedule()
    }

    /// The worker resumed: it takes its CPUs back (possibly oversubscribing).
    pub(crate) fn unblocked(&mut self, worker: WorkerId) {
        let Some(l) = self
            .by_worker
            .get(&worker)
            .and_then(|id| self.leases.get_mut(id))
        else {
            return;
        };
        if !l.blocked {
            return;
        }
        l.blocked = false;
        let cpu = l.shape.cpu_only();
        self.available.add_signed(&cpu, -1);
    }

    #[cfg(test)]
    pub(crate) fn lease_count(&self) -> usize {
        self.leases.len()
    }

    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.len()
    }

    fn schedule(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        let mut waiting_for_worker = 0usize;
        // What is left once the requests already waiting for a worker are
        // counted: a worker is started only for a request that would still
        // fit beside them, so a flood of small fractional requests starts
        // as many workers as can run at once (16 of 0.25 CPU on 4 CPUs),
        // not one per request that fits on its own.
        let mut unclaimed = self.available.clone();
        let mut i = 0;
        while i < self.queue.len() {
            if !self.queue[i].shape.fits(&unclaimed) {
                i += 1;
                continue;
            }
            let Some(worker) = self.idle.pop() else {
                waiting_for_worker += 1;
                unclaimed.add_signed(&self.queue[i].shape, -1);
                i += 1;
                continue;
            };
            let Some(p) = self.queue.remove(i) else { break };
            let lease = LeaseId::new(self.node, self.next_lease);
            self.next_lease += 1;
            self.available.add_signed(&p.shape, -1);
            unclaimed.add_signed(&p.shape, -1);
            self.leases.insert(
                lease,
                Lease {
                    client: p.client,
                    worker,
                    shape: p.shape,
                    blocked: false,
                },
            );
            self.by_worker.insert(worker, lease);
            out.push(Action::Grant {
                client: p.client,
                req: p.req,
                lease,
                worker,
            });
        }
        while self.starting < waiting_for_worker.min(self.max_starting) {
            self.starting += 1;
            out.push(Action::StartWorker);
        }
        out
    }
}

#[cfg(test)]
mod tests {
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
        let a = m.set_view(Vec::new());
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
        let a = m.set_view(vec![peer(3, 8.0, 0.0)]);
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
        assert!(m.set_view(vec![peer(1, 2.0, 2.0)]).is_empty());
        // ...and is granted here when the CPU frees up soon.
        assert_eq!(grants(&m.return_lease(l1, false)), vec![(2, w(1))]);
        // One that keeps waiting moves after the views.
        assert!(m.request(1, 3, cpus(1.0), Spill::Later).is_empty());
        assert!(m.set_view(vec![peer(1, 2.0, 2.0)]).is_empty());
        let a = m.set_view(vec![peer(1, 2.0, 2.0)]);
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
}
