//! The node table, the health checks and the cluster resource view, as a
//! state machine with no IO, driven by the GCS's shell with the time as a
//! parameter (so the dead-node rule is tested on a simulated clock).
//!
//! A raylet registers its node over its connection; every report renews
//! the node's lease on life; a node silent for [`NODE_TIMEOUT`] is lost, as
//! is one whose raylet's connection closes. A lost node stays in the table
//! (marked dead, as Ray's node table keeps dead nodes) and its index can be
//! registered again.

use super::actors::ConnId;
use crate::error::{Error, Result};
use crate::scheduler::ResourceSet;
use crate::transport::NodeInfo;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A node whose raylet has not reported for this long is declared lost
/// (a raylet that dies is noticed at once, by its connection closing; this
/// catches one that hangs or whose node stops answering).
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// A live node's raylet: its connection and when it last reported.
#[derive(Debug)]
struct Heartbeat {
    conn: ConnId,
    last: Instant,
}

/// What a raylet reports about its node.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) available: ResourceSet,
    pub(crate) store_used: u64,
    pub(crate) store_capacity: u64,
    pub(crate) drivers: u32,
    pub(crate) drivers_seen: u32,
}

/// The node table (no IO).
#[derive(Debug, Default)]
pub(crate) struct NodeTable {
    nodes: BTreeMap<u16, NodeInfo>,
    live: HashMap<u16, Heartbeat>,
}

impl NodeTable {
    /// Node `info.index` registers over connection `conn` at `now`; an
    /// index a live node holds is refused.
    pub(crate) fn register(&mut self, info: NodeInfo, conn: ConnId, now: Instant) -> Result<()> {
        if let Some(n) = self.nodes.get(&info.index).filter(|n| n.alive) {
            return Err(Error::invalid(format!(
                "node index {} is already taken by node {}",
                info.index, n.name
            )));
        }
        self.live.insert(info.index, Heartbeat { conn, last: now });
        self.nodes.insert(info.index, info);
        Ok(())
    }

    /// Node `index` reported at `now`; false for a node not live here (a
    /// report that arrives after the node was declared lost changes
    /// nothing).
    pub(crate) fn report(&mut self, index: u16, r: Report, now: Instant) -> bool {
        let Some(h) = self.live.get_mut(&index) else {
            return false;
        };
        h.last = now;
        if let Some(n) = self.nodes.get_mut(&index) {
            n.available = r.available;
            n.store_used = r.store_used;
            n.store_capacity = r.store_capacity;
            n.drivers = r.drivers;
            n.drivers_seen = r.drivers_seen;
        }
        true
    }

    /// Whether `conn` is live node `index`'s raylet connection.
    pub(crate) fn is_node_conn(&self, index: u16, conn: ConnId) -> bool {
        self.live.get(&index).is_some_and(|h| h.conn == conn)
    }

    /// The live nodes silent for longer than [`NODE_TIMEOUT`] at `now`.
    pub(crate) fn silent(&self, now: Instant) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .live
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.last) > NODE_TIMEOUT)
            .map(|(i, _)| *i)
            .collect();
        out.sort_unstable();
        out
    }

    /// When the next node would fall silent, if nothing is heard from it
    /// (as quinn's `poll_timeout`): the health check's next wake-up.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.live.values().map(|h| h.last + NODE_TIMEOUT).min()
    }

    /// Node `index` is lost: marked dead. Answers its raylet's connection
    /// (for the shell to close) the first time, `None` once it is dead.
    pub(crate) fn lost(&mut self, index: u16) -> Option<ConnId> {
        let h = self.live.remove(&index)?;
        if let Some(n) = self.nodes.get_mut(&index) {
            n.alive = false;
        }
        Some(h.conn)
    }

    /// A live node.
    pub(crate) fn live(&self, index: u16) -> Option<&NodeInfo> {
        self.nodes.get(&index).filter(|n| n.alive)
    }

    /// A node, dead or alive.
    pub(crate) fn get(&self, index: u16) -> Option<&NodeInfo> {
        self.nodes.get(&index)
    }

    /// Every node the cluster has had, in index order (the view raylets
    /// get back, and `rustray::nodes()`).
    pub(crate) fn all(&self) -> Vec<NodeInfo> {
        self.nodes.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn node(index: u16) -> NodeInfo {
        NodeInfo {
            index,
            name: format!("n{index}"),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            raylet_port: 1000 + index,
            total: ResourceSet::new().with("CPU", 4.0).unwrap(),
            available: ResourceSet::new().with("CPU", 4.0).unwrap(),
            alive: true,
            store_used: 0,
            store_capacity: 1 << 20,
            drivers: 0,
            drivers_seen: 0,
            fabric: None,
        }
    }

    fn report(cpus: f64) -> Report {
        Report {
            available: ResourceSet::new().with("CPU", cpus).unwrap(),
            store_used: 0,
            store_capacity: 1 << 20,
            drivers: 1,
            drivers_seen: 1,
        }
    }

    #[test]
    fn a_node_silent_past_the_timeout_is_lost() {
        let t0 = Instant::now();
        let mut t = NodeTable::default();
        t.register(node(0), 10, t0).unwrap();
        t.register(node(1), 11, t0).unwrap();
        assert_eq!(t.next_deadline(), Some(t0 + NODE_TIMEOUT));
        // Node 0 keeps reporting; node 1 goes quiet.
        let mut now = t0;
        for _ in 0..49 {
            now += Duration::from_millis(100);
            assert!(t.report(0, report(2.0), now));
        }
        assert!(t.silent(now).is_empty(), "4.9 s of silence is not yet lost");
        now += Duration::from_millis(200);
        assert!(t.report(0, report(2.0), now));
        assert_eq!(t.silent(now), vec![1]);
        assert_eq!(t.next_deadline(), Some(t0 + NODE_TIMEOUT), "node 1's");
        assert_eq!(t.lost(1), Some(11));
        assert_eq!(t.lost(1), None, "lost once");
        assert!(t.silent(now).is_empty());
        assert_eq!(t.next_deadline(), Some(now + NODE_TIMEOUT), "node 0's");
        // The dead node stays in the view, marked so; its late report
        // changes nothing.
        assert!(!t.report(1, report(4.0), now));
        let all = t.all();
        assert_eq!(all.len(), 2);
        assert!(all[0].alive && !all[1].alive);
        assert_eq!(all[0].available.get("CPU"), 2.0);
        assert!(t.live(1).is_none() && t.get(1).is_some());
    }

    #[test]
    fn an_index_is_unique_among_live_nodes_and_free_after_loss() {
        let t0 = Instant::now();
        let mut t = NodeTable::default();
        t.register(node(3), 1, t0).unwrap();
        let e = t.register(node(3), 2, t0).unwrap_err();
        assert!(e.message().contains("already taken"), "{e}");
        // The refused connection is not the node's.
        assert!(t.is_node_conn(3, 1) && !t.is_node_conn(3, 2));
        t.lost(3);
        assert!(!t.is_node_conn(3, 1));
        t.register(node(3), 2, t0 + NODE_TIMEOUT).unwrap();
        assert!(t.is_node_conn(3, 2));
        assert!(t.live(3).is_some());
    }

    #[test]
    fn no_live_node_no_deadline() {
        let mut t = NodeTable::default();
        assert_eq!(t.next_deadline(), None);
        t.register(node(0), 1, Instant::now()).unwrap();
        t.lost(0);
        assert_eq!(t.next_deadline(), None);
    }
}
