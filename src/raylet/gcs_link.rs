//! The raylet's side of the GCS: joining the cluster (registration, bounded
//! by `REGISTER_TIMEOUT`), reporting what changed every `REPORT_EVERY` (a
//! bare heartbeat every `HEARTBEAT_EVERY` when nothing did), the
//! cluster view it gets back as versioned deltas (and node deaths pushed
//! the moment the GCS declares them), and the core workers' requests it
//! forwards on a second connection (see `gcs_proxy`).

use super::{gcs_proxy, Raylet};
use crate::error::{Error, Result};
use crate::protocol::{FromGcs, FromRaylet, ToGcs};
use crate::scheduler::{ClientId, PeerNode};
use crate::session::log;
use crate::transport::{self, Conn, Msg, NodeInfo, NodeLoad, ResourceReport};
use std::sync::Arc;
use std::time::Duration;

/// How often the raylet reports its free resources to the GCS.
pub(super) const REPORT_EVERY: Duration = Duration::from_millis(100);
/// How often a raylet whose load did not change, and with no request
/// waiting to spill, reports all the same: the heartbeat that keeps its
/// node alive at the GCS (well within `gcs::nodes::NODE_TIMEOUT`) and
/// brings it the joins since. Not every `REPORT_EVERY`: at thousands of
/// nodes, answering a heartbeat that carries nothing is most of the GCS's
/// work (a send each), and an idle raylet needs no fresher view: a change,
/// or a request to spill, has it report at once again.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Reports asked for early (a spill demand that outgrew the candidates)
/// come at most this often.
const REPORT_SOONEST: Duration = Duration::from_millis(5);

/// Bound on registering with the GCS.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

impl Raylet {
    /// Joins the cluster: registers this node with the GCS and returns the
    /// connection for reports.
    pub(super) fn register(
        self: &Arc<Self>,
        resources: &crate::scheduler::ResourceSet,
        port: u16,
        fabric: Option<crate::fabric::FabricAddr>,
    ) -> Result<Arc<Conn>> {
        let s = &self.session;
        let gcs_err = |e: Error| {
            Error::unavailable(format!(
                "node {} cannot register with the GCS at {}: {e}",
                s.node, s.gcs
            ))
        };
        let mut dialed = transport::dial(&s.gcs_endpoint(), &s.secret).map_err(gcs_err)?;
        let conn = dialed.conn.clone();
        conn.send(&ToGcs::RegisterNode {
            req: 1,
            info: NodeInfo {
                index: s.node_index,
                name: s.node.clone(),
                ip: s.ip,
                raylet_port: port,
                total: resources.clone(),
                available: resources.clone(),
                alive: true,
                store_used: 0,
                store_capacity: self.lock().store.capacity(),
                drivers: 0,
                drivers_seen: 0,
                ranks: Vec::new(),
                fabric,
            },
        })
        .map_err(gcs_err)?;
        let io_err = |e: std::io::Error| gcs_err(Error::unavailable(e.to_string()));
        let stream = dialed.stream_mut();
        stream
            .set_read_timeout(Some(REGISTER_TIMEOUT))
            .map_err(io_err)?;
        let reply = transport::read_frame(stream, &mut Vec::new()).map_err(io_err)?;
        stream.set_read_timeout(None).map_err(io_err)?;
        match reply {
            Some(Msg::FromGcs(FromGcs::NodeRegistered { result, .. })) => {
                result.map_err(gcs_err)?
            }
            _ => return Err(gcs_err(Error::unavailable("no answer to the registration"))),
        }
        let (r, r2) = (self.clone(), self.clone());
        dialed.serve(
            "raylet-gcs",
            move |m| match m {
                Msg::FromGcs(FromGcs::ClusterView {
                    version,
                    joined,
                    changed,
                    candidates,
                }) => r.cluster_view(version, joined, changed, candidates),
                Msg::FromGcs(FromGcs::NodeLost { node }) => r.node_lost_pushed(node),
                _ => {}
            },
            move || r2.shutdown("the GCS connection closed"),
        )?;
        Ok(conn)
    }

    /// Reports to the GCS until the connection fails: what changed since
    /// the last report, and the view version this node holds (the GCS
    /// answers with what changed since). Nothing changed, no request
    /// waiting to spill and a view held: a bare heartbeat, only once per
    /// [`HEARTBEAT_EVERY`] (see [`heartbeat_due`]).
    pub(super) fn report(&self, gcs: Arc<Conn>, wake: std::sync::mpsc::Receiver<()>) {
        let mut last: Option<ResourceReport> = None;
        let mut sent_at: Option<std::time::Instant> = None;
        let mut woken = false;
        let mut ticked = std::time::Instant::now();
        loop {
            let msg = {
                let mut st = self.lock();
                if ticked.elapsed() >= REPORT_EVERY {
                    // A period passed: waiting lease requests age (early
                    // reports do not count).
                    ticked = std::time::Instant::now();
                    let a = st.leases.tick();
                    self.execute(&mut st, a);
                }
                let spill_demand = st.leases.spill_demand();
                let now = ResourceReport {
                    available: st.leases.available().clone(),
                    store_used: st.store.used(),
                    store_capacity: st.store.capacity(),
                    drivers: st.clients.values().filter(|c| c.is_driver).count() as u32,
                    drivers_seen: st.drivers_seen,
                    ranks: st.ranks.clone(),
                };
                let report = (last.as_ref() != Some(&now)).then(|| {
                    last = Some(now.clone());
                    now
                });
                let now = std::time::Instant::now();
                let since = sent_at.map(|t| now.saturating_duration_since(t));
                let send = report.is_some()
                    || woken
                    || st.view_version == 0
                    || heartbeat_due(spill_demand, since);
                if send {
                    st.demand_reported = spill_demand;
                }
                send.then_some(ToGcs::ReportResources {
                    node: self.session.node_index,
                    report,
                    view_version: st.view_version,
                    spill_demand,
                })
            };
            let tick = std::time::Instant::now();
            if let Some(msg) = msg {
                if gcs.send(&msg).is_err() {
                    return;
                }
                sent_at = Some(tick);
            }
            // The next report at the period's end, or sooner when the
            // spill demand outgrows the candidates (but not more often
            // than REPORT_SOONEST).
            woken = match wake.recv_timeout(REPORT_EVERY) {
                Ok(()) => {
                    std::thread::sleep(REPORT_SOONEST.saturating_sub(tick.elapsed()));
                    true
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
        }
    }

    /// Reports now rather than at the next period (or heartbeat): the
    /// answer brings the nodes that joined since this raylet's view, which
    /// something here waits for. A full channel means a report is on its
    /// way already.
    pub(super) fn ask_for_view(&self) {
        let _ = self.report_wake.try_send(());
    }

    /// The GCS declared `node` lost: the view says so now (as the next
    /// delta will), without changing the view's version.
    fn node_lost_pushed(&self, node: u16) {
        let load = {
            let st = self.lock();
            st.nodes.get(&node).filter(|n| n.alive).map(|n| NodeLoad {
                alive: false,
                ..crate::gcs::nodes::load_of(n)
            })
        };
        if let Some(l) = load {
            self.cluster_view(0, Vec::new(), vec![l], None);
        }
    }

    /// What changed since this node's view version, up to `version`:
    /// merged into the view this node holds. New spill candidates replace
    /// the old: only they count as having anything free (a node that was
    /// a candidate and is no more may have filled up since).
    fn cluster_view(
        &self,
        version: u64,
        joined: Vec<NodeInfo>,
        mut changed: Vec<NodeLoad>,
        candidates: Option<Vec<NodeLoad>>,
    ) {
        let me = self.session.node_index;
        let mut st = self.lock();
        if st.view_version == 0 && !joined.is_empty() {
            // The whole view (on joining, or after losing track): every
            // node's load, fresh, so every node counts until the next
            // candidates come.
            st.candidates = joined
                .iter()
                .filter(|n| n.alive)
                .map(|n| (n.index, n.available.clone()))
                .collect();
        } else if let Some(c) = candidates {
            st.candidates = c
                .iter()
                .filter(|l| l.alive)
                .map(|l| (l.index, l.load.available.clone()))
                .collect();
            changed.extend(c);
        }
        // Nodes the view declares dead for the first time: this node's
        // processes hear it from here (O(nodes) GCS connections, not one
        // per process), and give up on everything of those nodes.
        let died: Vec<u16> = match crate::gcs::nodes::apply_delta(&mut st.nodes, joined, changed) {
            Some(died) => {
                st.view_version = st.view_version.max(version);
                died.into_iter().filter(|n| *n != me).collect()
            }
            None => {
                // A change to a node this view never had: its version is
                // wrong (a restarted GCS); the next report asks for all.
                st.view_version = 0;
                Vec::new()
            }
        };
        let mut peers: Vec<PeerNode> = st
            .nodes
            .values()
            .filter(|n| n.alive && n.index != me)
            .map(|n| PeerNode {
                index: n.index,
                total: n.total.clone(),
                available: st.candidates.get(&n.index).cloned().unwrap_or_default(),
            })
            .collect();
        // In index order, as the whole view came: ties in placement break
        // the same way on every node.
        peers.sort_by_key(|p| p.index);
        let a = st.leases.set_view(peers);
        self.execute(&mut st, a);
        if died.is_empty() {
            return;
        }
        let clients: Vec<Arc<Conn>> = st.clients.values().map(|c| c.conn.clone()).collect();
        drop(st);
        for node in died {
            log!("node {node} is dead in the cluster view: telling this node's processes");
            for c in &clients {
                let _ = c.try_send(&FromRaylet::NodeDied { node });
            }
        }
    }

    /// A core worker's request for the GCS goes out on this raylet's GCS
    /// connection (see `gcs_proxy`). A request that will get no answer
    /// from the GCS is answered here with the reason, so its asker fails
    /// at once.
    pub(super) fn forward_to_gcs(self: &Arc<Self>, client: ClientId, mut m: ToGcs) {
        let theirs = m.req_mut().copied();
        let gcs = match self.forward_conn() {
            Ok(c) => c,
            Err(e) => {
                log!("raylet: cannot forward a request to the GCS: {e}");
                let e = Error::unavailable(format!("the GCS cannot be reached: {e}"));
                return self.refuse_forwarded(client, theirs, e);
            }
        };
        match self.gcs_proxy.outgoing(client, &mut m) {
            Ok(mine) => {
                let sent = gcs.send(&m);
                // The connection may have closed meanwhile, its waiting
                // requests answered before this one was among them: then
                // no answer comes for it either.
                let current = self
                    .gcs_forward
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, &gcs));
                if sent.is_err() || !current {
                    if let Some((client, req)) = mine.and_then(|r| self.gcs_proxy.unsent(r)) {
                        let why = match sent {
                            Err(e) => format!("sending to the GCS failed: {e}"),
                            Ok(()) => "the raylet's connection to the GCS closed".into(),
                        };
                        self.refuse_forwarded(client, Some(req), Error::unavailable(why));
                    }
                }
            }
            Err(gcs_proxy::Refused::NotForwardable) => {
                log!("raylet: a client's request not forwarded to the GCS (only a raylet may send it)");
                let e = Error::invalid(
                    "this request to the GCS is a raylet's or the launcher's to make, \
                     not a core worker's: refused",
                );
                self.refuse_forwarded(client, theirs, e);
            }
            Err(gcs_proxy::Refused::Full) => {
                log!(
                    "raylet: {} requests already wait for the GCS; one more refused",
                    gcs_proxy::MAX_FORWARDED
                );
                let e = Error::unavailable(format!(
                    "{} requests from this node already wait for the GCS; try again later",
                    gcs_proxy::MAX_FORWARDED
                ));
                self.refuse_forwarded(client, theirs, e);
            }
        }
    }

    /// Tells `client` its request `req` (none: a one-way message) gets no
    /// answer from the GCS, and why.
    fn refuse_forwarded(&self, client: ClientId, req: Option<u64>, error: Error) {
        let Some(req) = req else { return };
        let conn = self.lock().clients.get(&client).map(|c| c.conn.clone());
        if let Some(c) = conn {
            let _ = c.post(&FromRaylet::GcsRefused { req, error });
        }
    }

    /// The connection forwarded requests go on, opened on first use; when
    /// it closes, the answers it owed are given up (their askers time
    /// out) and the next request opens another.
    fn forward_conn(self: &Arc<Self>) -> Result<Arc<Conn>> {
        let mut f = self.gcs_forward.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = f.as_ref() {
            return Ok(c.clone());
        }
        let s = &self.session;
        let dialed = transport::dial(&s.gcs_endpoint(), &s.secret)?;
        let (r, r2) = (self.clone(), self.clone());
        let conn = dialed.serve(
            "raylet-gcs-forward",
            move |m| {
                if let Msg::FromGcs(answer) = m {
                    r.gcs_answered(answer);
                }
            },
            move || {
                *r2.gcs_forward.lock().unwrap_or_else(|p| p.into_inner()) = None;
                for (client, req) in r2.gcs_proxy.forget_all() {
                    let e = Error::unavailable(
                        "the raylet's connection to the GCS closed before the GCS answered",
                    );
                    r2.refuse_forwarded(client, Some(req), e);
                }
            },
        )?;
        *f = Some(conn.clone());
        Ok(conn)
    }

    /// The GCS answered a forwarded request: back to its asker, without
    /// blocking this connection's reader (cluster views come on it too).
    fn gcs_answered(&self, answer: FromGcs) {
        let Some((client, answer)) = self.gcs_proxy.incoming(answer) else {
            return;
        };
        let conn = self.lock().clients.get(&client).map(|c| c.conn.clone());
        if let Some(c) = conn {
            let _ = c.post(&FromRaylet::Gcs(answer));
        }
    }
}

/// Whether a raylet whose load did not change sends a report all the same:
/// while requests wait to spill (its candidates should stay fresh), on
/// its first report, and once per [`HEARTBEAT_EVERY`] (`since` the last
/// report sent).
pub(super) fn heartbeat_due(spill_demand: u32, since: Option<Duration>) -> bool {
    spill_demand > 0 || since.is_none_or(|s| s >= HEARTBEAT_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_raylet_reports_once_per_heartbeat() {
        assert!(heartbeat_due(0, None), "the first report goes out");
        assert!(!heartbeat_due(0, Some(REPORT_EVERY)));
        assert!(!heartbeat_due(
            0,
            Some(HEARTBEAT_EVERY - Duration::from_millis(1))
        ));
        assert!(heartbeat_due(0, Some(HEARTBEAT_EVERY)));
        assert!(
            heartbeat_due(3, Some(REPORT_EVERY)),
            "requests waiting to spill want fresh candidates every period"
        );
        // Several heartbeats fit in the time after which the GCS declares
        // a silent node lost.
        assert!(HEARTBEAT_EVERY * 4 <= crate::gcs::nodes::NODE_TIMEOUT);
    }
}
