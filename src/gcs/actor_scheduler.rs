//! Creating actors, the GCS's IO side of it (Ray's `GcsActorScheduler`):
//! choosing a node that fits the actor (waiting a little for one to join),
//! leasing a worker from that node's raylet, and asking the worker to run
//! the constructor, on a thread per creation; then the actor's connection
//! goes to the watch thread (`actor_watch`), whose end of it the actor
//! table (`actors`) turns into a restart or a final death.

use super::*;

/// How long an actor that no node can host waits for one to join.
const PLACE_WAIT: Duration = Duration::from_secs(2);

/// How long actor creation may wait for a worker lease.
const LEASE_WAIT: Duration = Duration::from_secs(120);

impl Gcs {
    /// Creates actor `id` on a thread of its own, within [`ACTOR_THREADS`]
    /// creations at once; a creation that cannot have one fails, saying
    /// why (its creator is answered, never left waiting).
    pub(super) fn start_actor_thread(self: &Arc<Self>, id: ActorId) {
        let threads = self.actor_threads.clone();
        let refused = if threads.fetch_add(1, Ordering::AcqRel) >= ACTOR_THREADS {
            Some(format!(
                "the GCS already creates {ACTOR_THREADS} actors, its most at once"
            ))
        } else {
            let g = self.clone();
            let count = threads.clone();
            std::thread::Builder::new()
                .name("gcs-actor".into())
                .spawn(move || {
                    g.create_actor(id);
                    count.fetch_sub(1, Ordering::AcqRel);
                })
                .err()
                .map(|e| format!("the GCS cannot start a thread for it ({e})"))
        };
        if let Some(why) = refused {
            threads.fetch_sub(1, Ordering::AcqRel);
            log!("actor {id} not created: {why}");
            let w = self
                .table()
                .creation_failed(id, Error::unavailable(format!("actor not created: {why}")));
            self.finish(Vec::new(), w);
        }
    }

    pub(super) fn node_info(&self, index: u16) -> Result<NodeInfo> {
        self.node_table()
            .live(index)
            .cloned()
            .ok_or_else(|| Error::unavailable(format!("node {index} is not in the cluster")))
    }

    /// The connection to node `index`'s raylet, opened on first use.
    pub(super) fn raylet(self: &Arc<Self>, index: u16) -> Result<Arc<Conn>> {
        if let Some(c) = self
            .raylets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
        {
            return Ok(c.clone());
        }
        let info = self.node_info(index)?;
        let (g, g2) = (self.clone(), self.clone());
        let conn = transport::dial(&info.raylet(), &self.session.secret)?.serve(
            "gcs-raylet",
            move |m| g.reply(m),
            move || {
                g2.raylets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&index);
            },
        )?;
        let mut g = self.raylets.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.entry(index).or_insert(conn).clone())
    }

    /// The node to place an actor on: the one its strategy names (when
    /// alive, or always for a hard affinity), else, spreading, the next live
    /// node that fits, else the live node with the most free CPU where it
    /// fits now, else one where it fits in total.
    pub(super) fn place(
        &self,
        placement: &ResourceSet,
        shape: &ResourceSet,
        strategy: &crate::SchedulingStrategy,
    ) -> Result<u16> {
        // A node that can host it may still be joining: look again for a
        // while before calling the actor infeasible.
        let deadline = std::time::Instant::now() + PLACE_WAIT;
        loop {
            match self.place_now(placement, shape, strategy) {
                Err(e)
                    if matches!(e.kind(), ErrorKind::Infeasible | ErrorKind::Unschedulable)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    pub(super) fn place_now(
        &self,
        placement: &ResourceSet,
        shape: &ResourceSet,
        strategy: &crate::SchedulingStrategy,
    ) -> Result<u16> {
        let nodes = self.nodes();
        let live = || nodes.iter().filter(|n| n.alive);
        match strategy {
            crate::SchedulingStrategy::NodeAffinity { node, soft } => {
                match nodes.iter().find(|n| &n.name == node) {
                    Some(n) if n.alive && placement.fits(&n.total) => return Ok(n.index),
                    _ if *soft => {}
                    Some(n) => {
                        return Err(Error::new(
                            ErrorKind::Unschedulable,
                            format!(
                                "hard node affinity: node `{node}` {}",
                                if n.alive {
                                    "cannot fit the actor"
                                } else {
                                    "was lost"
                                }
                            ),
                        ))
                    }
                    None => {
                        return Err(Error::new(
                            ErrorKind::Unschedulable,
                            format!("hard node affinity: no node is named `{node}`"),
                        ))
                    }
                }
            }
            crate::SchedulingStrategy::Spread => {
                if let Some(n) = self.in_turn(live().filter(|n| placement.fits(&n.total))) {
                    return Ok(n);
                }
            }
            crate::SchedulingStrategy::Default if shape.is_empty() => {
                // An actor that holds nothing while it runs leaves no trace
                // in the resource view, so "most free CPU" would send every
                // one to the same node: take the nodes where its placement
                // fits in turn instead (Ray picks such actors' nodes at
                // random).
                if let Some(n) = self.in_turn(live().filter(|n| placement.fits(&n.available))) {
                    return Ok(n);
                }
            }
            crate::SchedulingStrategy::Default => {}
        }
        let cpu = |r: &ResourceSet| (r.get(crate::scheduler::CPU) * 1e4) as i64;
        live()
            .filter(|n| placement.fits(&n.available))
            .max_by_key(|n| cpu(&n.available))
            .or_else(|| live().find(|n| placement.fits(&n.total)))
            .map(|n| n.index)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Infeasible,
                    format!(
                        "no node of the cluster can host an actor needing {placement:?} ({} nodes)",
                        nodes.len()
                    ),
                )
            })
    }

    /// The next of `candidates` in the GCS's round-robin order (`None` when
    /// there are none).
    pub(super) fn in_turn<'a>(
        &self,
        candidates: impl Iterator<Item = &'a NodeInfo>,
    ) -> Option<u16> {
        let fit: Vec<&NodeInfo> = candidates.collect();
        if fit.is_empty() {
            return None;
        }
        let i = self.spread_next.fetch_add(1, Ordering::Relaxed) as usize;
        Some(fit[i % fit.len()].index)
    }

    /// Leases a worker for an actor: places it, asks that node's raylet,
    /// follows a spillback; if the node is lost meanwhile (or its raylet
    /// cannot be reached) places it again. Bounded by [`LEASE_WAIT`].
    pub(super) fn lease(
        self: &Arc<Self>,
        placement: &ResourceSet,
        shape: ResourceSet,
        strategy: &crate::SchedulingStrategy,
    ) -> Result<(LeaseId, WorkerId, Vec<u32>)> {
        let deadline = std::time::Instant::now() + LEASE_WAIT;
        let timeout = || {
            Error::new(
                ErrorKind::Timeout,
                format!("no worker could be leased for the actor within {LEASE_WAIT:?}"),
            )
        };
        let mut target: Option<(u16, Spill)> = None;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(timeout());
            }
            let (node, spill) = match target {
                Some(t) => t,
                None => (self.place(placement, &shape, strategy)?, Spill::Now),
            };
            let req = self.next_req.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel();
            self.replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req, tx);
            let sent = self.raylet(node).and_then(|c| {
                c.send(&ToRaylet::RequestLease {
                    req,
                    shape: shape.clone(),
                    spill,
                })
            });
            let reply = match sent {
                Ok(()) => loop {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(m) => break Some(m),
                        Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if self.node_info(node).is_err() || std::time::Instant::now() > deadline
                            {
                                break None;
                            }
                        }
                    }
                },
                Err(e) => {
                    log!("GCS: leasing on node {node} failed ({e}); placing again");
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
            };
            self.replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req);
            match reply {
                Some(FromRaylet::LeaseGranted {
                    lease,
                    worker,
                    gpus,
                    ..
                }) => return Ok((lease, worker, gpus)),
                Some(FromRaylet::LeaseFailed { error, .. }) => return Err(error),
                Some(FromRaylet::LeaseSpillback { node: n, .. }) => {
                    target = Some((n, Spill::Never))
                }
                Some(_) => return Err(Error::unavailable("unexpected reply from the raylet")),
                // The node was lost or unreachable: place again.
                None => target = None,
            }
        }
    }

    /// Creates the actor (on a thread of its own), then hands its
    /// connection to the watch thread (see `actor_watch`): when it closes
    /// the process died, and the actor restarts or dies. A process that
    /// dies in the constructor is restarted here, on this thread.
    pub(super) fn create_actor(self: &Arc<Self>, id: ActorId) {
        while let Some(worker) = self.create_once(id) {
            if !self.actor_process_ended(id, worker, true) {
                return;
            }
        }
    }

    /// One attempt at creating `id`: the worker, when its process ended
    /// before the constructor's outcome came back (None: the attempt is
    /// settled, created, failed or watched).
    fn create_once(self: &Arc<Self>, id: ActorId) -> Option<WorkerId> {
        let spec = self.table().spec(id)?;
        let leased = self.lease(&spec.placement, spec.shape.clone(), &spec.strategy);
        if let Ok((lease, _, _)) = &leased {
            if self.table().ended(id) {
                // Cancelled while it waited for a worker (its creator
                // died, or it was killed): the constructor never runs,
                // and the worker goes back.
                self.finish(vec![ActorAction::ReleaseWorker(*lease)], Vec::new());
                return None;
            }
        }
        let created = leased.and_then(|(lease, worker, gpus)| {
            let node = self.node_info(worker.node())?;
            let stream = Endpoint::Tcp(SocketAddr::new(node.ip, worker.port()))
                .connect(&self.session.secret)?;
            let conn = Arc::new(Conn::new(&stream)?);
            conn.send(&PeerMsg::Hello { from: GCS_ID })?;
            conn.send(&PeerMsg::CreateActor {
                spec: spec.clone(),
                gpus,
            })?;
            Ok((lease, worker, stream, conn))
        });
        let (lease, worker, mut stream, conn) = match created {
            Ok(c) => c,
            Err(e) => {
                log!("actor {} could not be created: {e}", spec.class);
                let w = self.table().creation_failed(id, e);
                self.finish(Vec::new(), w);
                return None;
            }
        };
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (worker, conn.clone()));
        // Lost while this was being set up: the watch ends at once.
        if self.node_info(worker.node()).is_err() {
            conn.close();
        }
        // The constructor's outcome is the first thing the worker says
        // (read unbuffered: what follows is the watch thread's to read).
        let mut body = Vec::new();
        let result = loop {
            match transport::read_frame(&mut stream, &mut body) {
                Ok(Some(Msg::Peer(PeerMsg::ActorCreated { result }))) => break result,
                Ok(Some(_)) => continue,
                // The process ended (or its node was lost).
                Ok(None) => return Some(worker),
                Err(e) => {
                    // Not an end: the worker may live on, so it goes back
                    // (killed) before the actor counts as having lost it.
                    log!("actor {}: bad answer from its worker ({e})", spec.class);
                    self.finish(vec![ActorAction::ReleaseWorker(lease)], Vec::new());
                    return Some(worker);
                }
            }
        };
        match result {
            Ok(()) => {
                let (a, w) = self.table().created(id, worker, lease);
                self.finish(a, w);
            }
            Err(e) => {
                let w = self.table().creation_failed(id, e);
                self.finish(vec![ActorAction::ReleaseWorker(lease)], w);
            }
        }
        if self.stopping.load(Ordering::Relaxed) {
            return None;
        }
        if let Err(e) = self.watch_actor(id, worker, stream) {
            // Unwatched, its death would go unseen: its worker goes back
            // (killed) and the actor counts it lost (a restart, if it has
            // restarts left) rather than live on unwatched.
            log!("actor {} cannot be watched ({e})", spec.class);
            self.finish(vec![ActorAction::ReleaseWorker(lease)], Vec::new());
            return Some(worker);
        }
        None
    }
}
