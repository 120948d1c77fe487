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
//! - GPUs are devices with ids ([`devices`]): a grant names the devices
//!   it holds, and a worker that held some devices is reused only for
//!   leases of the same devices (a process keeps its `CUDA_VISIBLE_DEVICES`
//!   once CUDA is initialised in it); other requests get fresh workers.
//!
//! Amounts are fixed point ([`ResourceSet`]).

use crate::error::{Error, ErrorKind};
use crate::ids::{LeaseId, WorkerId};

pub(crate) mod candidates;
mod devices;
pub(crate) mod sim;

pub use crate::resources::SchedulingStrategy;
use crate::resources::UNIT;
pub(crate) use crate::resources::{ResourceSet, Spill, CPU, GPU};
pub(crate) use candidates::Ranking;
pub(crate) use devices::{parse_device_list, Devices, CUDA_VISIBLE_DEVICES, MAX_DEVICES};
use std::collections::{HashMap, VecDeque};

/// Report periods (see [`LeaseManager::tick`]) a request that fits no
/// node waits through before it is rejected as infeasible.
pub(crate) const INFEASIBLE_AFTER_PERIODS: u32 = 2;

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
        /// The GPUs it holds, by the node's device ids.
        gpus: Vec<u32>,
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

/// Ray's hybrid policy: a node keeps default work while it is less busy
/// than this (in the most used resource the request needs); from there on
/// the work goes to a node still below it, if there is one. So a node
/// packs up to half, then the cluster spreads (Ray's `spread_threshold`).
const SPREAD_THRESHOLD: f64 = 0.5;

/// Report periods a preferred-here request waits through before it may
/// move. Periods, not views: a raylet asking for a wider view gets views
/// more often, and that must not shorten the wait for a task's data node.
pub(crate) const PREFER_HERE_PERIODS: u32 = 2;

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
    /// Report periods since it arrived (while held as infeasible, or
    /// queued).
    periods: u32,
}

#[derive(Debug)]
struct Lease {
    client: ClientId,
    worker: WorkerId,
    shape: ResourceSet,
    /// Its share of the GPUs.
    gpus: devices::Share,
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
    /// A view came since the last [`LeaseManager::tick`].
    viewed: bool,
    gpus: Devices,
    /// The GPUs each worker that has held a lease was given (empty for
    /// none), on a node with GPUs: it is reused only for the same set.
    device_sets: HashMap<WorkerId, Vec<u32>>,
}

impl LeaseManager {
    /// A node with `total` resources; at most `max_starting` workers start at
    /// once and at most `max_idle` idle workers are kept.
    /// Its GPUs are numbered 0 up (see [`LeaseManager::with_gpu_ids`]).
    pub(crate) fn new(total: ResourceSet, max_starting: usize, max_idle: usize) -> LeaseManager {
        let gpus = (total.fixed(GPU) / UNIT) as u32;
        LeaseManager {
            gpus: Devices::new(&(0..gpus).collect::<Vec<_>>()),
            device_sets: HashMap::new(),
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
            viewed: false,
        }
    }

    /// The node's GPUs are these devices (as many as its total has).
    pub(crate) fn with_gpu_ids(mut self, ids: &[u32]) -> Result<LeaseManager, Error> {
        if ids.len() as i64 * UNIT != self.total.fixed(GPU) {
            return Err(Error::invalid(format!(
                "the node has {} GPUs but {} device ids ({ids:?})",
                self.total.get(GPU),
                ids.len()
            )));
        }
        self.gpus = Devices::new(ids);
        Ok(self)
    }

    /// This node's index (lease ids carry it).
    pub(crate) fn set_node(&mut self, node: u16) {
        self.node = node;
    }

    pub(crate) fn available(&self) -> &ResourceSet {
        &self.available
    }

    /// Requests waiting here: how many spill candidates this node asks the
    /// GCS for (see `candidates::window`), one node each at most. (Those
    /// spilled here already, which may not move again, are counted too:
    /// this is read after every transition and must not walk the queue.)
    pub(crate) fn spill_demand(&self) -> u32 {
        u32::try_from(self.queue.len() + self.infeasible.len()).unwrap_or(u32::MAX)
    }

    /// A new cluster view (the other live nodes): queued requests that fit
    /// elsewhere now move there.
    pub(crate) fn set_view(&mut self, peers: Vec<PeerNode>) -> Vec<Action> {
        self.peers = peers;
        self.viewed = true;
        self.place_queued(false, false)
    }

    /// A report period passed (the shell calls this every period, whatever
    /// views came): queued requests age by one, so preferred-here ones may
    /// move; requests that fit no node age only if a view came in the
    /// period (a node that just joined may be on its way: a rejection
    /// needs views of two periods to confirm it).
    pub(crate) fn tick(&mut self) -> Vec<Action> {
        let viewed = std::mem::take(&mut self.viewed);
        self.place_queued(true, viewed)
    }

    /// Queued requests that fit elsewhere now (by the view) move there,
    /// but for those this node serves first (they fit in what the requests
    /// ahead of them leave free: no lease holds it yet while workers
    /// start, so the free amount alone would keep a whole burst here).
    /// `aged`: a report period passed for the queued requests;
    /// `confirmed`: one passed, with a view, for those fitting no node.
    fn place_queued(&mut self, aged: bool, confirmed: bool) -> Vec<Action> {
        let mut out = Vec::new();
        let age = u32::from(aged);
        for mut p in std::mem::take(&mut self.infeasible) {
            p.periods = p.periods.saturating_add(u32::from(confirmed));
            out.extend(self.place(p));
        }
        // What the requests ahead that stay leave free here: a request
        // that fits in it is served here as soon as a worker is ready; one
        // behind more than the node holds free moves if it fits elsewhere.
        let mut free = self.available.clone();
        let mut i = 0;
        while i < self.queue.len() {
            let p = &mut self.queue[i];
            p.periods = p.periods.saturating_add(age);
            let waited = p.spill == Spill::Now || p.periods >= PREFER_HERE_PERIODS;
            let fits = p.shape.fits(&free);
            if fits {
                free.add_signed(&p.shape, -1);
            }
            if p.spill == Spill::Never || !waited || fits {
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
    /// Among equals, the first after this node's index: raylets reading the
    /// same view then start on different nodes, not all on the lowest.
    fn spill_target(&mut self, shape: &ResourceSet, by_total: bool) -> Option<u16> {
        let me = self.node;
        let now = self
            .peers
            .iter_mut()
            .filter(|n| shape.fits(&n.available))
            .max_by_key(|n| {
                (
                    n.available.fixed(CPU),
                    std::cmp::Reverse(n.index.wrapping_sub(me)),
                )
            });
        if let Some(n) = now {
            n.available.add_signed(shape, -1);
            return Some(n.index);
        }
        if by_total {
            return self
                .peers
                .iter()
                .filter(|n| shape.fits(&n.total))
                .max_by_key(|n| {
                    (
                        n.total.fixed(CPU),
                        std::cmp::Reverse(n.index.wrapping_sub(me)),
                    )
                })
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
        // A negative amount would fit anywhere and, granted, add to the
        // node's free resources: a bug or a hostile peer, refused.
        if let Some((name, amount)) = shape.negative() {
            let error = Error::invalid(format!(
                "a lease request for {amount} of `{name}`: amounts cannot be negative"
            ));
            return vec![Action::Reject { client, req, error }];
        }
        self.place(Pending {
            client,
            req,
            shape,
            spill,
            periods: 0,
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

    /// What is free here once the requests queued here are served: they
    /// are granted as soon as workers are ready, so they count as busy.
    fn free_after_queue(&self) -> ResourceSet {
        let mut free = self.available.clone();
        for q in &self.queue {
            free.add_signed(&q.shape, -1);
        }
        free
    }

    /// Under the hybrid policy, the node a default request should go to
    /// instead of this one: this node (`free` being what its queue leaves)
    /// is at [`SPREAD_THRESHOLD`] or past it, and another, where it fits
    /// now, is below (the least busy one; among equals, the first after
    /// this node's index, as in `spill_target`).
    fn spread_target(&mut self, shape: &ResourceSet, free: &ResourceSet) -> Option<u16> {
        if Self::utilization(&self.total, free, shape) < SPREAD_THRESHOLD {
            return None;
        }
        let me = self.node;
        let best = self
            .peers
            .iter_mut()
            .filter(|n| shape.fits(&n.available))
            .map(|n| (Self::utilization(&n.total, &n.available, shape), n))
            .filter(|(u, _)| *u < SPREAD_THRESHOLD)
            .min_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then(a.1.index.wrapping_sub(me).cmp(&b.1.index.wrapping_sub(me)))
            })
            .map(|(_, n)| n)?;
        // Until the next view arrives, count what was sent there.
        best.available.add_signed(shape, -1);
        Some(best.index)
    }

    /// Grants, queues, spills, holds or rejects a request.
    fn place(&mut self, p: Pending) -> Vec<Action> {
        let fits_here = p.shape.fits(&self.total);
        if p.spill == Spill::Now && fits_here {
            let free = self.free_after_queue();
            if let Some(node) = self.spread_target(&p.shape, &free) {
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
            if p.spill != Spill::Never && p.periods < INFEASIBLE_AFTER_PERIODS {
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
        p.periods = 0;
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
        self.gpus.give_back(&l.gpus);
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
        self.device_sets.remove(&worker);
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

    /// The idle worker to run a lease of GPUs `ids` on: the most recently
    /// idle one that held the same devices, else one that never held a
    /// lease (on a node without GPUs, simply the most recently idle).
    fn idle_for(&self, ids: &[u32]) -> Option<usize> {
        if self.gpus.count() == 0 {
            return self.idle.len().checked_sub(1);
        }
        let mut fresh = None;
        for (i, w) in self.idle.iter().enumerate().rev() {
            match self.device_sets.get(w) {
                Some(set) if set == ids => return Some(i),
                None if fresh.is_none() => fresh = Some(i),
                _ => {}
            }
        }
        fresh
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
            // The devices it would hold: none free may serve it although
            // the amount is (fractions spread over several devices).
            let Some(share) = self.gpus.pick(self.queue[i].shape.fixed(GPU)) else {
                i += 1;
                continue;
            };
            let ids = self.gpus.ids(&share);
            let Some(at) = self.idle_for(&ids) else {
                waiting_for_worker += 1;
                unclaimed.add_signed(&self.queue[i].shape, -1);
                i += 1;
                continue;
            };
            let Some(p) = self.queue.remove(i) else { break };
            let worker = self.idle.remove(at);
            let lease = LeaseId::new(self.node, self.next_lease);
            self.next_lease += 1;
            self.available.add_signed(&p.shape, -1);
            unclaimed.add_signed(&p.shape, -1);
            self.gpus.take(&share);
            if self.gpus.count() > 0 {
                self.device_sets.insert(worker, ids.clone());
            }
            self.leases.insert(
                lease,
                Lease {
                    client: p.client,
                    worker,
                    shape: p.shape,
                    gpus: share,
                    blocked: false,
                },
            );
            self.by_worker.insert(worker, lease);
            out.push(Action::Grant {
                client: p.client,
                req: p.req,
                lease,
                worker,
                gpus: ids,
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
mod tests;
