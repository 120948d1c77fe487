//! The node table, the health checks and the cluster resource view, as a
//! state machine with no IO, driven by the GCS's shell with the time as a
//! parameter (so the dead-node rule is tested on a simulated clock).
//!
//! A raylet registers its node over its connection; every report renews
//! the node's lease on life; a node silent for [`NODE_TIMEOUT`] is lost, as
//! is one whose raylet's connection closes. A lost node stays in the table
//! (marked dead, as Ray's node table keeps dead nodes) and its index can be
//! registered again.
//!
//! The view travels as deltas: every change (a node joins, reports
//! different resources, is lost) takes the next version, and a raylet
//! holding version `v` is sent what changed since `v`
//! ([`NodeTable::since`]; [`apply_delta`] is the raylet's side): nodes that
//! joined since, in full; nodes lost since (a log of joins and losses by
//! version lets an answer visit only those); and the spill candidates
//! (`scheduler::candidates`), when they were chosen again since: the few
//! nodes with the most free resources and a window of the ranking of the
//! raylet's own, ranked at most every [`CANDIDATES_REFRESH`], each node's
//! load encoded once when it changes, which replace those the raylet
//! held. Other nodes' loads do not travel: half of 4,096 nodes changing
//! every period would make every answer thousands of entries long.
//! A raylet whose resources did not change sends a heartbeat without them.
//! So the GCS's traffic per answer is bounded by the candidates, and what
//! else it sends grows with joins and losses, not with the allocation.

use super::actors::ConnId;
use crate::error::{Error, Result};
use crate::protocol::FromGcs;
use crate::scheduler::candidates::{window, WINDOW};
use crate::scheduler::{Ranking, ResourceSet};
use crate::transport::{NodeInfo, NodeLoad, ResourceReport};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A node whose raylet has not reported for this long is declared lost
/// (a raylet that dies is noticed at once, by its connection closing; this
/// catches one that hangs or whose node stops answering).
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// The spill candidates are chosen again at most this often while loads
/// change (a choice visits every node; reports come by the thousand).
pub(crate) const CANDIDATES_REFRESH: Duration = Duration::from_millis(20);

/// A live node's raylet: its connection and when it last reported.
#[derive(Debug)]
struct Heartbeat {
    conn: ConnId,
    last: Instant,
}

/// A map by node index, as a vector (indices are small and dense): the
/// lookups every report and every delta make need no hashing or tree walk.
#[derive(Debug)]
struct ByIndex<T>(Vec<Option<T>>);

impl<T> Default for ByIndex<T> {
    fn default() -> Self {
        ByIndex(Vec::new())
    }
}

impl<T> ByIndex<T> {
    fn get(&self, i: &u16) -> Option<&T> {
        self.0.get(usize::from(*i)).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, i: &u16) -> Option<&mut T> {
        self.0.get_mut(usize::from(*i)).and_then(Option::as_mut)
    }

    fn insert(&mut self, i: u16, v: T) -> Option<T> {
        let i = usize::from(i);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i].replace(v)
    }

    fn remove(&mut self, i: &u16) -> Option<T> {
        self.0.get_mut(usize::from(*i)).and_then(Option::take)
    }

    /// In index order.
    fn iter(&self) -> impl Iterator<Item = (u16, &T)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((u16::try_from(i).ok()?, v.as_ref()?)))
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flatten()
    }
}

/// The node table (no IO).
#[derive(Debug, Default)]
pub(crate) struct NodeTable {
    nodes: ByIndex<NodeInfo>,
    live: ByIndex<Heartbeat>,
    /// The view's version: bumped by every change.
    version: u64,
    /// The version of each node's last join or loss.
    member_at: ByIndex<u64>,
    /// The same, by version: an answer visits only the joins and losses
    /// since the version its raylet holds.
    members: BTreeMap<u64, u16>,
    /// The version at which each node (last) joined: a raylet whose view
    /// is older is sent the node in full.
    joined: ByIndex<u64>,
    /// Each node's load as an answer carries it, encoded at its change.
    loads: ByIndex<Vec<u8>>,
    /// The ranking the spill candidates are read from.
    cand: Candidates,
    /// Each raylet's spill demand, as last reported.
    demand: ByIndex<u32>,
    /// The window of candidates each raylet was last sent.
    sent_window: ByIndex<usize>,
}

/// The ranking of the live nodes the spill candidates are read from (see
/// `scheduler::candidates`).
#[derive(Debug, Default)]
struct Candidates {
    /// When it was made (none: never).
    at: Option<Instant>,
    /// The version it was made at (a version of its own): a raylet holding
    /// it, or a later one, has its candidates from this ranking.
    version: u64,
    /// Rankings made so far: each raylet's window moves on with each.
    round: u64,
    ranking: Ranking,
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
        let index = info.index;
        self.live.insert(index, Heartbeat { conn, last: now });
        self.nodes.insert(index, info);
        self.member_changed(index);
        self.joined.insert(index, self.version);
        self.encode_load(index);
        Ok(())
    }

    /// Node `index` reported at `now` (`None`: a heartbeat, nothing
    /// changed); false for a node not live here (a report that arrives
    /// after the node was declared lost changes nothing).
    pub(crate) fn report(&mut self, index: u16, r: Option<ResourceReport>, now: Instant) -> bool {
        let Some(h) = self.live.get_mut(&index) else {
            return false;
        };
        h.last = now;
        let Some(r) = r else { return true };
        let Some(n) = self.nodes.get_mut(&index) else {
            return true;
        };
        let same = n.available == r.available
            && n.store_used == r.store_used
            && n.store_capacity == r.store_capacity
            && n.drivers == r.drivers
            && n.drivers_seen == r.drivers_seen
            && n.ranks == r.ranks;
        if !same {
            n.available = r.available;
            n.store_used = r.store_used;
            n.store_capacity = r.store_capacity;
            n.drivers = r.drivers;
            n.drivers_seen = r.drivers_seen;
            n.ranks = r.ranks;
            self.touch();
            self.encode_load(index);
        }
        true
    }

    /// A node's load changed: the view takes the next version.
    fn touch(&mut self) {
        self.version += 1;
    }

    /// Node `index` joined or was lost: the next version, logged.
    fn member_changed(&mut self, index: u16) {
        self.touch();
        if let Some(old) = self.member_at.insert(index, self.version) {
            self.members.remove(&old);
        }
        self.members.insert(self.version, index);
    }

    fn encode_load(&mut self, index: u16) {
        if let Some(bytes) = self
            .nodes
            .get(&index)
            .and_then(|n| crate::codec::encode(&load_of(n)).ok())
        {
            self.loads.insert(index, bytes);
        }
    }

    /// Ranks the live nodes again if loads changed since the last ranking,
    /// at most every [`CANDIDATES_REFRESH`] (`now`).
    pub(crate) fn refresh_candidates(&mut self, now: Instant) {
        if self.cand.version == self.version
            || self
                .cand
                .at
                .is_some_and(|at| now.saturating_duration_since(at) < CANDIDATES_REFRESH)
        {
            return;
        }
        let live: Vec<(u16, &ResourceSet, &ResourceSet)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(i, n)| (i, &n.total, &n.available))
            .collect();
        self.cand.ranking = Ranking::new(&live);
        self.cand.at = Some(now);
        // A version of its own, which no raylet holds yet: one that was
        // answered at the current version (before this ranking, the
        // refresh period not being over) is sent it at its next report.
        self.touch();
        self.cand.version = self.version;
        self.cand.round += 1;
    }

    /// Node `index`'s raylet has `demand` requests waiting that could run
    /// elsewhere: the window of candidates it is sent follows it.
    pub(crate) fn spill_demand(&mut self, index: u16, demand: u32) {
        if self.live.get(&index).is_some() {
            self.demand.insert(index, demand);
        }
    }

    /// Node `asker`'s spill candidates from the last ranking, and the
    /// window they were read with, if the ranking was made since `version`
    /// or its demand outgrew the window it was last sent (never with the
    /// whole view, whose every load is fresh).
    fn candidates_for(&self, asker: u16, version: u64) -> Option<(Vec<u16>, usize)> {
        if self.wants_whole_view(version) {
            return None;
        }
        let w = window(self.demand.get(&asker).copied().unwrap_or(0));
        let grown = w > self.sent_window.get(&asker).copied().unwrap_or(WINDOW);
        (self.cand.version > version || grown)
            .then(|| (self.cand.ranking.for_node(asker, self.cand.round, w), w))
    }

    /// The joins and losses since `version`: the nodes that joined since,
    /// in full, and those lost since (and not back), their last load.
    fn members_since(&self, version: u64) -> (Vec<NodeInfo>, Vec<NodeLoad>) {
        let (mut joined, mut lost) = (Vec::new(), Vec::new());
        for index in self.members.range(version + 1..).map(|(_, i)| *i) {
            let Some(n) = self.nodes.get(&index) else {
                continue;
            };
            if self.joined.get(&index).is_some_and(|j| *j > version) {
                joined.push(n.clone());
            } else if !n.alive {
                lost.push(load_of(n));
            }
        }
        (joined, lost)
    }

    /// [`NodeTable::since`] as the frame of a `ClusterView` message, the
    /// candidates' loads laid out from their encodings (for a raylet that
    /// holds a view: see [`NodeTable::wants_whole_view`]).
    pub(crate) fn since_frame(&mut self, version: u64, asker: u16) -> Result<Vec<u8>> {
        let (joined, changed) = self.members_since(version);
        let mut frame = crate::transport::encode_frame(&FromGcs::ClusterView {
            version: self.version,
            joined,
            changed,
            candidates: None,
        })?;
        if let Some((list, w)) = self.candidates_for(asker, version) {
            self.sent_window.insert(asker, w);
            // `candidates` is the message's last field: `None` is the
            // single byte 0, `Some` the byte 1 and the list (its length,
            // then its items).
            if frame.pop() != Some(0) {
                return Err(Error::invalid(
                    "a cluster view frame not laid out as expected",
                ));
            }
            frame.push(1);
            let loads: Vec<&Vec<u8>> = list.iter().filter_map(|i| self.loads.get(i)).collect();
            crate::codec::encode_append(&(loads.len() as u64), &mut frame)?;
            for l in loads {
                frame.extend_from_slice(l);
            }
            let len = u32::try_from(frame.len() - 4)
                .map_err(|_| Error::invalid("a cluster view too large for one frame"))?;
            frame[..4].copy_from_slice(&len.to_le_bytes());
        }
        Ok(frame)
    }

    /// Whether a raylet holding `version` needs the whole view: it has
    /// none yet, or a version this table never gave out (a restarted GCS).
    pub(crate) fn wants_whole_view(&self, version: u64) -> bool {
        version == 0 || version > self.version
    }

    /// The answer to node `asker`'s raylet holding `version`: the view's
    /// version now, the joins and losses since, and its spill candidates
    /// if the nodes were ranked again since (every node in full, loads
    /// included, for 0 or for a version this table never gave out).
    /// Visits only what changed.
    pub(crate) fn since(&self, version: u64, asker: u16) -> FromGcs {
        let candidates = self.candidates_for(asker, version).map(|(list, _)| {
            list.iter()
                .filter_map(|i| self.nodes.get(i).map(load_of))
                .collect()
        });
        let (joined, changed) = if self.wants_whole_view(version) {
            (self.all(), Vec::new())
        } else {
            self.members_since(version)
        };
        FromGcs::ClusterView {
            version: self.version,
            joined,
            changed,
            candidates,
        }
    }

    /// The live node whose raylet connection `conn` is, if any.
    pub(crate) fn node_of_conn(&self, conn: ConnId) -> Option<u16> {
        self.live
            .iter()
            .find(|(_, h)| h.conn == conn)
            .map(|(i, _)| i)
    }

    /// The live nodes silent for longer than [`NODE_TIMEOUT`] at `now`.
    pub(crate) fn silent(&self, now: Instant) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .live
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.last) > NODE_TIMEOUT)
            .map(|(i, _)| i)
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
        self.member_changed(index);
        self.encode_load(index);
        Some(h.conn)
    }

    /// The connections of the live nodes (each its raylet's).
    pub(crate) fn live_conns(&self) -> Vec<ConnId> {
        self.live.values().map(|h| h.conn).collect()
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

/// What a view delta carries for a node the receiver knows.
pub(crate) fn load_of(n: &NodeInfo) -> NodeLoad {
    NodeLoad {
        index: n.index,
        alive: n.alive,
        load: ResourceReport {
            available: n.available.clone(),
            store_used: n.store_used,
            store_capacity: n.store_capacity,
            drivers: n.drivers,
            drivers_seen: n.drivers_seen,
            ranks: n.ranks.clone(),
        },
    }
}

/// Applies a view delta to a raylet's view of the nodes: the nodes it
/// shows dead for the first time, or `None` when a change names a node
/// the view does not know (the view's version is then wrong, and the
/// whole view must be asked for).
pub(crate) fn apply_delta(
    view: &mut HashMap<u16, NodeInfo>,
    joined: Vec<NodeInfo>,
    changed: Vec<NodeLoad>,
) -> Option<Vec<u16>> {
    let mut died = Vec::new();
    for n in joined {
        if !n.alive && view.get(&n.index).is_none_or(|old| old.alive) {
            died.push(n.index);
        }
        view.insert(n.index, n);
    }
    for c in changed {
        let n = view.get_mut(&c.index)?;
        if !n.alive {
            // Dead for good (the GCS never revives a node; one that
            // registers again comes back in `joined`): an older delta
            // arriving after a pushed death changes nothing.
            continue;
        }
        if !c.alive {
            died.push(c.index);
        }
        n.alive = c.alive;
        n.available = c.load.available;
        n.store_used = c.load.store_used;
        n.store_capacity = c.load.store_capacity;
        n.drivers = c.load.drivers;
        n.drivers_seen = c.load.drivers_seen;
        n.ranks = c.load.ranks.clone();
    }
    Some(died)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Msg;
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
            ranks: Vec::new(),
            fabric: None,
        }
    }

    fn report(cpus: f64) -> Option<ResourceReport> {
        Some(ResourceReport {
            available: ResourceSet::new().with("CPU", cpus).unwrap(),
            store_used: 0,
            store_capacity: 1 << 20,
            drivers: 1,
            drivers_seen: 1,
            ranks: vec![0],
        })
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
        assert_eq!(t.node_of_conn(1), Some(3));
        assert_eq!(t.node_of_conn(2), None);
        t.lost(3);
        assert_eq!(t.node_of_conn(1), None);
        t.register(node(3), 2, t0 + NODE_TIMEOUT).unwrap();
        assert_eq!(t.node_of_conn(2), Some(3));
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

    type Parts = (u64, Vec<NodeInfo>, Vec<NodeLoad>, Option<Vec<NodeLoad>>);

    fn parts(m: FromGcs) -> Parts {
        match m {
            FromGcs::ClusterView {
                version,
                joined,
                changed,
                candidates,
            } => (version, joined, changed, candidates),
            other => panic!("not a view: {other:?}"),
        }
    }

    /// A table of `n` nodes registered at `t0`, ranked once.
    fn ranked_table(n: u16, t0: Instant) -> NodeTable {
        let mut t = NodeTable::default();
        for i in 0..n {
            t.register(node(i), u64::from(i), t0).unwrap();
        }
        t.refresh_candidates(t0);
        t
    }

    /// The frame laid out with the candidates encoded when they were
    /// chosen is the very frame encoding the answer would give, for every
    /// version a raylet may hold, through joins, reports, heartbeats, a
    /// loss and a return.
    #[test]
    fn a_delta_frame_is_the_encoded_delta() {
        let t0 = Instant::now();
        let mut t = NodeTable::default();
        let check = |t: &mut NodeTable| {
            for v in 1..=t.version {
                let want = crate::transport::encode_frame(&t.since(v, 2)).unwrap();
                assert_eq!(t.since_frame(v, 2).unwrap(), want, "since {v}");
            }
        };
        for i in 0..300u16 {
            t.register(node(i), u64::from(i), t0).unwrap();
        }
        t.refresh_candidates(t0);
        check(&mut t);
        for i in 0..300u16 {
            assert!(t.report(i, report(f64::from(i % 7)), t0));
        }
        assert!(t.report(5, None, t0));
        t.refresh_candidates(t0 + CANDIDATES_REFRESH);
        check(&mut t);
        t.lost(7);
        t.register(node(7), 999, t0).unwrap();
        check(&mut t);
    }

    /// However many nodes change, an answer carries the joins and losses
    /// since the raylet's version and at most the candidates: the nodes
    /// with the most free CPU, chosen again at most every
    /// `CANDIDATES_REFRESH` and sent only when they changed.
    #[test]
    fn an_answer_is_bounded_by_the_candidates_whatever_changed() {
        let t0 = Instant::now();
        let mut t = ranked_table(1000, t0);
        let (v, all, _, cands) = parts(t.since(0, 2));
        assert_eq!(all.len(), 1000, "joining: every node in full");
        assert!(cands.is_none(), "every load is in the whole view");
        // Half the nodes change: they fill up, but for node 10.
        for i in (0..1000u16).step_by(2) {
            let cpus = if i == 10 { 4.0 } else { 0.0 };
            assert!(t.report(i, report(cpus), t0));
        }
        t.refresh_candidates(t0 + Duration::from_millis(1));
        let (_, j, c, none) = parts(t.since(v, 2));
        assert!(
            j.is_empty() && c.is_empty() && none.is_none(),
            "not ranked again yet"
        );
        let t1 = t0 + CANDIDATES_REFRESH;
        t.refresh_candidates(t1);
        let (v2, j, c, cands) = parts(t.since(v, 2));
        assert!(j.is_empty() && c.is_empty());
        let cands = cands.expect("ranked again");
        assert_eq!(cands.len(), WINDOW);
        // A slice of the nodes with room: none of the full ones.
        let idx: Vec<u16> = cands.iter().map(|l| l.index).collect();
        assert!(idx.iter().all(|i| i % 2 == 1 || *i == 10), "{idx:?}");
        assert!(t.since_frame(v, 2).unwrap().len() < 1024, "bounded");
        // Another raylet's slice is elsewhere.
        let other: Vec<u16> = parts(t.since(v, 3))
            .3
            .unwrap()
            .iter()
            .map(|l| l.index)
            .collect();
        assert_ne!(idx, other);
        // Nothing new until the nodes are ranked again, which takes a
        // change and the refresh period.
        t.refresh_candidates(t1 + CANDIDATES_REFRESH);
        assert!(parts(t.since(v2, 2)).3.is_none(), "nothing changed");
        for i in &idx {
            assert!(t.report(*i, report(0.0), t1), "a candidate fills up");
        }
        t.refresh_candidates(t1 + CANDIDATES_REFRESH / 2);
        assert!(parts(t.since(v2, 2)).3.is_none(), "within the period");
        t.refresh_candidates(t1 + 2 * CANDIDATES_REFRESH);
        let (_, _, _, cands) = parts(t.since(v2, 2));
        let cands = cands.expect("ranked again");
        assert!(
            !cands.iter().any(|l| idx.contains(&l.index)),
            "no longer with room"
        );
        // A raylet whose spill demand outgrows its window is sent a wider
        // one at once, within the ranking.
        t.spill_demand(2, 300);
        let (_, _, _, wide) = parts(t.since(v2 + 1_000_000, 2));
        assert!(
            wide.is_none(),
            "a version from nowhere: the whole view instead"
        );
        let (v3, ..) = parts(t.since(v2, 2));
        let f = t.since_frame(v3, 2).unwrap();
        let Ok(Msg::FromGcs(FromGcs::ClusterView {
            candidates: Some(wide),
            ..
        })) = crate::codec::decode::<Msg>(&f[4..], "view")
        else {
            panic!("candidates for the wider window")
        };
        assert!(wide.len() >= 300, "{}", wide.len());
        assert!(
            t.since_frame(v3, 2).unwrap().len() < 64,
            "sent once: the window is held"
        );
    }

    /// A raylet answered between a change and the ranking that takes it
    /// in (the refresh period not over) holds a version past the change:
    /// the ranking has a version of its own, so it is still sent it.
    #[test]
    fn a_ranking_made_after_an_answer_still_reaches_that_raylet() {
        let t0 = Instant::now();
        let mut t = ranked_table(100, t0);
        let (v, ..) = parts(t.since(0, 2));
        assert!(t.report(50, report(1.0), t0));
        t.refresh_candidates(t0 + CANDIDATES_REFRESH / 2);
        let (v2, _, _, none) = parts(t.since(v, 2));
        assert!(
            none.is_none() && v2 > v,
            "not ranked yet; the raylet moves on"
        );
        t.refresh_candidates(t0 + CANDIDATES_REFRESH);
        let (_, _, _, cands) = parts(t.since(v2, 2));
        assert!(cands.is_some(), "the new ranking reaches it");
    }

    #[test]
    fn raylets_get_only_what_changed_since_their_version() {
        let t0 = Instant::now();
        let mut t = NodeTable::default();
        for i in 0..4 {
            t.register(node(i), u64::from(i), t0).unwrap();
        }
        t.refresh_candidates(t0);
        // A raylet with nothing gets everything, in full.
        let (v, all, none, cands) = parts(t.since(0, 2));
        assert_eq!(all.len(), 4);
        assert!(none.is_empty());
        assert!(cands.is_none(), "every load is in the whole view");
        let mut view: HashMap<u16, NodeInfo> = HashMap::new();
        assert_eq!(apply_delta(&mut view, all, none), Some(vec![]));
        // Heartbeats and unchanged reports change nothing.
        assert!(t.report(1, None, t0));
        assert!(t.report(
            2,
            report(4.0).map(|mut r| {
                r.drivers = 0;
                r.drivers_seen = 0;
                r.ranks.clear();
                r.store_capacity = 1 << 20;
                r
            }),
            t0
        ));
        t.refresh_candidates(t0 + CANDIDATES_REFRESH);
        let (v2, j, c, cands) = parts(t.since(v, 2));
        assert!(
            j.is_empty() && c.is_empty() && cands.is_none(),
            "{j:?} {c:?}"
        );
        assert_eq!(v2, v);
        // One node's resources change: the candidates travel again, with
        // its new load.
        assert!(t.report(3, report(1.0), t0));
        t.refresh_candidates(t0 + 2 * CANDIDATES_REFRESH);
        let (v3, j, none, cands) = parts(t.since(v, 2));
        assert!(j.is_empty() && none.is_empty());
        let cands = cands.expect("ranked again");
        assert!(cands
            .iter()
            .any(|l| l.index == 3 && l.load.available.get("CPU") == 1.0));
        assert!(v3 > v);
        assert_eq!(apply_delta(&mut view, j, cands), Some(vec![]));
        // A node joins and another is lost: the new one in full, the loss
        // as a load marked dead, seen dead once.
        t.register(node(7), 7, t0).unwrap();
        t.lost(0);
        let (v4, j, lost, _) = parts(t.since(v3, 2));
        assert_eq!(j.iter().map(|n| n.index).collect::<Vec<_>>(), vec![7]);
        assert_eq!(lost.len(), 1);
        assert!(!lost[0].alive && lost[0].index == 0);
        assert_eq!(apply_delta(&mut view, j, lost.clone()), Some(vec![0]));
        assert_eq!(apply_delta(&mut view, vec![], lost), Some(vec![]), "once");
        // A death pushed ahead of an older delta (one that still shows the
        // node alive) stays: only a registration brings a node back.
        let mut stale = load_of(view.get(&0).unwrap());
        stale.alive = true;
        assert_eq!(apply_delta(&mut view, vec![], vec![stale]), Some(vec![]));
        assert!(!view[&0].alive, "not revived by an older delta");
        // Applying the answers in turn gave every node, and the loads of
        // those that changed.
        let mut full: Vec<NodeInfo> = view.into_values().collect();
        full.sort_by_key(|n| n.index);
        let (_, truth, _, _) = parts(t.since(0, 2));
        assert_eq!(format!("{full:?}"), format!("{truth:?}"));
        // A change to a node the view does not know: ask for everything.
        let (_, _, c, _) = parts(t.since(v3, 2));
        assert_eq!(apply_delta(&mut HashMap::new(), vec![], c), None);
        // A version from nowhere (a restarted GCS) gets the whole view.
        assert_eq!(parts(t.since(v4 + 100, 2)).1.len(), 5);
    }
}
