//! A core worker's connections (Ray's `core_worker` client pools): to its
//! raylet and to other nodes' raylets, to the GCS, and to other core
//! workers, accepting theirs (each presents the cluster secret, then
//! `Hello`) and opening its own on first use; the cache of the GCS node
//! table those connections are found with; and request/reply calls, each
//! bounded, failed at once when their connection closes.

use super::submitter::Done;
use super::{CoreWorker, RPC_TIMEOUT};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::WorkerId;
use crate::protocol::{FromGcs, FromRaylet, PeerMsg, ToGcs, ToRaylet};
use crate::transport::{self, Conn, ConnId, Endpoint, Listener, Message, Msg, NodeInfo, Stream};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

impl CoreWorker {
    pub(super) fn accept_loop(self: Arc<Self>, listener: Listener) {
        let me = self.clone();
        transport::accept_each(
            listener,
            "rustray-peer-in",
            move || self.shutting_down.load(Ordering::Relaxed),
            move |s| me.clone().serve_incoming(s),
        );
    }

    pub(super) fn serve_incoming(self: Arc<Self>, mut stream: Stream) {
        if !stream.accept_secret(&self.session.secret) {
            return;
        }
        let Ok(conn) = Conn::new(&stream) else { return };
        let conn = Arc::new(conn);
        let mut from: Option<WorkerId> = None;
        let me = self.clone();
        let peer = stream.peer();
        transport::guarded("rustray-peer-in", &peer, || {
            transport::read_loop(stream, |msg| match (&from, msg) {
                (None, Msg::Peer(PeerMsg::Hello { from: f })) => from = Some(f),
                (Some(f), Msg::Peer(msg)) => me.handle_peer(*f, &conn, msg),
                // Only core worker messages are served here (another
                // service's is ignored, as an unexpected one always was);
                // nothing is, before a `Hello`.
                (Some(_), _) => {}
                (None, _) => conn.close(),
            })
        });
        if let Some(f) = from {
            self.peer_gone(f, false);
        }
    }

    /// The connection to another core worker, opened on first use.
    pub(crate) fn peer(self: &Arc<Self>, worker: WorkerId) -> Result<Arc<Conn>> {
        if let Some(c) = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&worker)
        {
            return Ok(c.clone());
        }
        if self.node_known_lost(worker.node()) {
            return Err(Error::new(
                ErrorKind::NodeDied,
                format!("worker {worker} was on node {}, which died", worker.node()),
            ));
        }
        let dialed = transport::dial(&self.worker_endpoint(worker)?, &self.session.secret)?;
        let conn = dialed.conn.clone();
        conn.send(&PeerMsg::Hello { from: self.id })?;
        {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = peers.get(&worker) {
                conn.close();
                return Ok(c.clone());
            }
            peers.insert(worker, conn.clone());
        }
        let (me, me2, c2) = (self.clone(), self.clone(), conn.clone());
        // Results read together (a pipelined worker's batch) are taken in
        // together: kept while another whole frame is already read, then
        // handed over as one, before any other message of the peer's and
        // before its end.
        let batch: Arc<Mutex<Vec<Done>>> = Arc::default();
        let batch2 = batch.clone();
        let take = |b: &Mutex<Vec<Done>>| {
            std::mem::take(&mut *b.lock().unwrap_or_else(|p| p.into_inner()))
        };
        // Served so that a thread waiting for an answer from this worker
        // (a lone task's result, a synchronous call's) may read it itself.
        dialed.serve_waited(
            "rustray-peer-out",
            move |m| {
                // A core worker answers with core worker messages only:
                // another service's is ignored (the results before it are
                // not: they are taken in if nothing else is read).
                let Msg::Peer(m) = m else {
                    if !transport::more_buffered() {
                        me.tasks_done(worker, take(&batch));
                    }
                    return;
                };
                match Done::try_from(m) {
                    Ok(d) => {
                        batch.lock().unwrap_or_else(|p| p.into_inner()).push(d);
                        if !transport::more_buffered() {
                            me.tasks_done(worker, take(&batch));
                        }
                    }
                    Err(other) => {
                        me.tasks_done(worker, take(&batch));
                        me.handle_peer(worker, &c2, other);
                    }
                }
            },
            move || {
                me2.tasks_done(worker, take(&batch2));
                me2.peer_gone(worker, true)
            },
        )
    }

    /// The open connection `id` to `worker`, if it is still the one this
    /// process uses for it (state names connections by id: see `Effects`).
    pub(crate) fn peer_conn(&self, worker: WorkerId, id: ConnId) -> Option<Arc<Conn>> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&worker)
            .filter(|c| c.id() == id)
            .cloned()
    }

    /// Sends to another core worker, ignoring a dead peer (its death is
    /// handled when its connection closes).
    pub(crate) fn send_to(self: &Arc<Self>, worker: WorkerId, msg: PeerMsg) {
        if let Ok(c) = self.peer(worker) {
            let _ = c.send(&msg);
        }
    }

    /// The connection for requests to the GCS: to this node's raylet, which
    /// forwards them (see `raylet::gcs_proxy`): the GCS holds connections
    /// per node, not per process. A connection of its own, read by a thread of
    /// its own: a GCS request made while handling the raylet's messages
    /// (a spillback to a node not in the cache yet) must not wait for an
    /// answer that would arrive behind it on the same connection.
    pub(super) fn gcs_conn(self: &Arc<Self>) -> Result<Arc<Conn>> {
        let mut g = self.gcs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let raylet = Endpoint::Unix(self.session.raylet_socket());
        let dialed = transport::dial(&raylet, &self.session.secret)?;
        let (me, me2, c2) = (self.clone(), self.clone(), dialed.conn.clone());
        let conn = dialed.serve(
            "rustray-gcs",
            move |m| me.handle_reply(m),
            move || {
                *me2.gcs.lock().unwrap_or_else(|p| p.into_inner()) = None;
                me2.fail_pending(&c2);
            },
        )?;
        *g = Some(conn.clone());
        Ok(conn)
    }

    /// Where another process listens: its Unix socket on this node, its TCP
    /// port on its node's address otherwise.
    pub(crate) fn worker_endpoint(self: &Arc<Self>, worker: WorkerId) -> Result<Endpoint> {
        if worker.node() == self.session.node_index {
            return Ok(Endpoint::Unix(self.session.worker_socket(worker)));
        }
        let node = self.node(worker.node())?;
        Ok(Endpoint::Tcp(std::net::SocketAddr::new(
            node.ip,
            worker.port(),
        )))
    }

    /// A node's entry in the node table, asking the GCS on a miss.
    pub(crate) fn node(self: &Arc<Self>, index: u16) -> Result<NodeInfo> {
        self.find_node(|n| n.index == index)?
            .ok_or_else(|| Error::unavailable(format!("node {index} is not in the node table")))
    }

    /// A node's entry by name, asking the GCS when it is not cached.
    pub(crate) fn node_by_name(self: &Arc<Self>, name: &str) -> Result<NodeInfo> {
        self.find_node(|n| n.name == name)?
            .ok_or_else(|| Error::invalid(format!("no node is named `{name}`")))
    }

    /// The first cached node matching `pred`; on a miss, the node table is
    /// read again from the GCS (nodes join while the cluster runs).
    pub(super) fn find_node(
        self: &Arc<Self>,
        pred: impl Fn(&NodeInfo) -> bool,
    ) -> Result<Option<NodeInfo>> {
        let cached = |t: &HashMap<u16, NodeInfo>| t.values().find(|n| pred(n)).cloned();
        if let Some(n) = cached(&self.nodes.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(Some(n));
        }
        let reply = self.gcs_call(|req| ToGcs::GetNodes { req }, "reading the node table")?;
        let FromGcs::Nodes { nodes, .. } = reply else {
            return Err(Error::unavailable("unexpected reply from the GCS"));
        };
        let mut table = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for n in nodes {
            table.insert(n.index, n);
        }
        Ok(cached(&table))
    }

    /// Indices of the nodes believed alive, from the cached node table
    /// (this node when the table is not cached yet).
    pub(crate) fn live_nodes(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|n| n.alive)
            .map(|n| n.index)
            .collect();
        v.sort_unstable();
        if v.is_empty() {
            v.push(self.session.node_index);
        }
        v
    }

    /// The connection to node `node`'s raylet (this node's: the local one).
    pub(crate) fn raylet_of(self: &Arc<Self>, node: u16) -> Result<Arc<Conn>> {
        if node == self.session.node_index {
            return Ok(self.raylet.clone());
        }
        // A hung node's raylet may still accept connections: a node known
        // dead is not asked.
        if self.node_known_lost(node) {
            return Err(Error::new(ErrorKind::NodeDied, format!("node {node} died")));
        }
        let mut g = self
            .remote_raylets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.get(&node) {
            return Ok(c.clone());
        }
        let info = {
            drop(g);
            let info = self.node(node)?;
            g = self
                .remote_raylets
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(c) = g.get(&node) {
                return Ok(c.clone());
            }
            info
        };
        let (me, me2) = (self.clone(), self.clone());
        let conn = transport::dial(&info.raylet(), &self.session.secret)?.serve(
            "rustray-raylet-remote",
            move |m| me.handle_raylet(m),
            move || {
                me2.remote_raylets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&node);
                // Its raylet is gone: locality stops counting that node
                // (until the GCS's node table says otherwise), and the
                // lease requests it held go elsewhere.
                me2.mark_node_lost(node);
                me2.remote_raylet_lost(node);
            },
        )?;
        g.insert(node, conn.clone());
        Ok(conn)
    }

    /// The error for work lost because this process's own raylet died.
    pub(super) fn local_raylet_died(&self) -> Error {
        Error::new(
            ErrorKind::LocalRayletDied,
            format!(
                "this process's raylet (node {}, `{}`) died: its tasks and objects are lost; call shutdown() and init again",
                self.session.node_index, self.session.node
            ),
        )
    }

    /// Records in the cached node table that `node`'s raylet cannot be
    /// reached (a lost node): a later read of the table from the GCS
    /// replaces the entry.
    /// The cached node table says `node` was lost.
    pub(crate) fn node_known_lost(&self, node: u16) -> bool {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .is_some_and(|i| !i.alive)
    }

    /// Refreshes the node cache from the GCS's table (a node known dead
    /// stays dead); returns the nodes it shows dead that this process did
    /// not know of.
    pub(crate) fn refresh_nodes(&self, table: &[NodeInfo]) -> Vec<u16> {
        let mut cache = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut newly_dead = Vec::new();
        for n in table {
            match cache.get(&n.index) {
                Some(c) if !c.alive => continue,
                _ if !n.alive => newly_dead.push(n.index),
                _ => {}
            }
            cache.insert(n.index, n.clone());
        }
        newly_dead
    }

    pub(crate) fn mark_node_lost(&self, node: u16) {
        if let Some(n) = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&node)
        {
            n.alive = false;
        }
    }

    /// Sends a request built around a fresh request number and waits for the
    /// reply carrying it, an answer of service `R`.
    pub(super) fn call<Q: Message, R: TryFrom<Msg, Error = Msg>>(
        &self,
        conn: &Conn,
        build: impl FnOnce(u64) -> Q,
        what: &str,
    ) -> Result<R> {
        let req = self.next_req();
        let (tx, rx) = mpsc::channel();
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req, (conn.id(), tx));
        let sent = conn.send(&build(req));
        // Waiting for the answer: sends held back on this (connection)
        // thread go out first.
        crate::transport::flush_batched();
        let r = sent.and_then(|_| {
            rx.recv_timeout(RPC_TIMEOUT).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => Error::new(
                    ErrorKind::Timeout,
                    format!("{what}: no answer within {RPC_TIMEOUT:?}"),
                ),
                mpsc::RecvTimeoutError::Disconnected => {
                    Error::unavailable(format!("{what}: connection lost"))
                }
            })
        });
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req);
        R::try_from(r?)
            .map_err(|m| Error::invalid(format!("{what}: answered with {}", m.service())))
    }

    /// A request to the GCS, through this node's raylet (see
    /// [`CoreWorker::gcs_conn`]).
    pub(crate) fn gcs_call(
        self: &Arc<Self>,
        build: impl FnOnce(u64) -> ToGcs,
        what: &str,
    ) -> Result<FromGcs> {
        let conn = self.gcs_conn()?;
        match self.call(&conn, |req| ToRaylet::Gcs(build(req)), what)? {
            FromRaylet::Gcs(answer) => Ok(answer),
            FromRaylet::GcsRefused { error, .. } => Err(error),
            other => Err(Error::invalid(format!(
                "{what}: the raylet answered {other:?}"
            ))),
        }
    }

    pub(crate) fn raylet_call(
        &self,
        build: impl FnOnce(u64) -> ToRaylet,
        what: &str,
    ) -> Result<FromRaylet> {
        self.call(&self.raylet, build, what)
    }

    /// An answer to one of [`CoreWorker::call`]'s requests goes to the
    /// thread waiting for it; anything else is dropped.
    pub(super) fn handle_reply(&self, msg: Msg) {
        let Some(req) = msg.answers() else { return };
        if let Some((_, tx)) = self
            .replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req)
        {
            let _ = tx.send(msg);
        }
    }

    /// A connection closed: requests waiting on it fail now ("connection
    /// lost") instead of at their timeout.
    pub(super) fn fail_pending(&self, conn: &Conn) {
        let key = conn.id();
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (c, _)| *c != key);
    }
}
