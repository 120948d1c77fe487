//! Spill candidates: the part of the cluster's load a raylet needs to
//! spill well, and all of the other nodes' loads that the GCS sends it
//! (issue 13).
//!
//! A raylet spills a request that does not fit to the node with the most
//! free CPU among those it fits on now (`LeaseManager::spill_target`),
//! booking each choice against its view so a burst spreads. It does not
//! need every node's load for that, only enough nodes with room:
//! - a window of the ranking by free CPU: a slice of the nodes with room
//!   (a CPU free; the top of the ranking when fewer have room), different
//!   for each raylet and moving on with each ranking: [`WINDOW`] nodes, or
//!   as many as the raylet has requests waiting (its spill demand, sent
//!   with each report; at most [`MAX_WINDOW`]);
//! - for each other resource kind in the cluster, the [`PER_KIND`] nodes
//!   with the most of it free.
//!
//! The slices are what keeps a burst spread: were every raylet sent the
//! same few best nodes, a burst from many owners would pile onto them
//! (each raylet books its choices against its own view only, filling each
//! node it knows), where with the whole view each spreads its share over
//! every node. A raylet whose demand outgrows its window reports at once
//! rather than at its next period, so a burst waits a round trip to the
//! GCS for a wider window, not a period.
//!
//! The GCS ranks its table once per refresh, not per report, and sends a
//! raylet its list when a new ranking was made since the version the
//! raylet holds. A raylet replaces the list it held, and counts every
//! other node as having nothing free, so a node that filled up since it
//! was listed is never chosen on stale figures. What travels per answer is
//! bounded by the list, whatever the number of nodes or how many of them
//! changed: at 4,096 nodes with half of them changing every period, a full
//! delta would be thousands of entries per answer.
//!
//! The same selection feeds the scheduler simulation, whose test compares
//! placement with it against placement with every node's load, on the same
//! bursts.

use super::{ResourceSet, CPU};
use crate::resources::UNIT;

/// The nodes with the most free of each other resource kind every raylet
/// is sent.
pub(crate) const PER_KIND: usize = 8;
/// The nodes of the ranking each raylet is sent, its own slice, at
/// least...
pub(crate) const WINDOW: usize = 16;
/// ...and at most, whatever its spill demand.
pub(crate) const MAX_WINDOW: usize = 1024;

/// Whether a raylet whose candidates were read with a window of `asked`
/// and has `demand` requests waiting now reports at once, for a wider
/// window, rather than at its next period: when the window it needs has
/// doubled (so a growing queue reports early a few times, not at every
/// request).
pub(crate) fn outgrown(demand: u32, asked: usize) -> bool {
    window(demand) >= 2 * asked
}

/// The window for a raylet with `demand` requests that could spill.
pub(crate) fn window(demand: u32) -> usize {
    usize::try_from(demand)
        .unwrap_or(MAX_WINDOW)
        .clamp(WINDOW, MAX_WINDOW)
}
/// Resource kinds other than CPU that candidates are chosen by, at most
/// (by name; requests for kinds past these spill by the nodes' totals, as
/// infeasible ones do).
pub(crate) const OTHER_KINDS: usize = 3;

/// A ranking of the live nodes, made once and read for every raylet.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Ranking {
    /// Every live node, most free CPU first (ties to the lower index).
    by_cpu: Vec<u16>,
    /// How many of those have a CPU free (a prefix of `by_cpu`).
    room: usize,
    /// The most free of each other kind (the shared part beyond CPU).
    others: Vec<u16>,
}

impl Ranking {
    /// Ranks `nodes` (index, total, free).
    pub(crate) fn new(nodes: &[(u16, &ResourceSet, &ResourceSet)]) -> Ranking {
        let mut by_cpu: Vec<(i64, u16)> = nodes
            .iter()
            .map(|(i, _, free)| (-free.fixed(CPU), *i))
            .collect();
        by_cpu.sort_unstable();
        let room = by_cpu.iter().take_while(|(neg, _)| -*neg >= UNIT).count();
        let mut kinds: Vec<&str> = nodes
            .iter()
            .flat_map(|(_, total, _)| total.items.iter().map(|(k, _)| k.as_str()))
            .filter(|k| *k != CPU)
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        let mut others = Vec::new();
        let mut ranked: Vec<(i64, u16)> = Vec::new();
        for kind in kinds.into_iter().take(OTHER_KINDS) {
            ranked.clear();
            ranked.extend(
                nodes
                    .iter()
                    .filter(|(_, total, _)| total.fixed(kind) > 0)
                    .map(|(i, _, free)| (-free.fixed(kind), *i)),
            );
            if ranked.len() > PER_KIND {
                ranked.select_nth_unstable(PER_KIND);
                ranked.truncate(PER_KIND);
            }
            others.extend(ranked.iter().map(|(_, i)| *i));
        }
        Ranking {
            by_cpu: by_cpu.into_iter().map(|(_, i)| i).collect(),
            room,
            others,
        }
    }

    /// The candidates for the raylet of node `asker` from the `round`-th
    /// ranking, with a window of `window` nodes: its slice, and the most
    /// free of the other kinds, in index order, each once (at most
    /// `window + OTHER_KINDS * PER_KIND` nodes).
    pub(crate) fn for_node(&self, asker: u16, round: u64, window: usize) -> Vec<u16> {
        let mut out: Vec<u16> = Vec::new();
        // The slice is drawn from the nodes with room (or, when fewer have
        // room than a window holds, from the top of the ranking).
        let end = self.room.max(window).min(self.by_cpu.len());
        let rest = &self.by_cpu[..end];
        if !rest.is_empty() {
            // Consecutive raylets, and consecutive rounds, read consecutive
            // windows: together they cover the ranking.
            // A slice at least half the nodes with room: all of them.
            let take = if rest.len() <= 2 * window {
                rest.len()
            } else {
                window
            };
            // Raylets start at scattered places (their indices hashed, as
            // owners may sit on evenly spaced nodes), each moving on by a
            // window with each ranking.
            let scatter = u64::from(asker).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
            let start = (scatter + round * WINDOW as u64) % rest.len() as u64;
            out.extend(rest.iter().cycle().skip(start as usize).take(take));
        }
        out.extend(&self.others);
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::GPU;

    fn set(cpu: f64, gpu: f64) -> ResourceSet {
        let mut r = ResourceSet::new().with(CPU, cpu).unwrap();
        if gpu > 0.0 {
            r = r.with(GPU, gpu).unwrap();
        }
        r
    }

    /// Each raylet gets its own slice of the nodes with room, and the
    /// nodes with the most free GPU among the nodes that have GPUs at all
    /// (a GPU node is a candidate for GPU work even when its CPUs are the
    /// busiest); other raylets, or later rankings, get other slices, which
    /// together cover the nodes with room.
    #[test]
    fn a_slice_of_ones_own_and_the_most_free_of_each_kind() {
        let n = 100usize;
        let totals: Vec<ResourceSet> = (0..n)
            .map(|i| set(64.0, if i < 2 { 4.0 } else { 0.0 }))
            .collect();
        // Node i has i CPUs free, and the GPU nodes 0 and 1 one GPU each.
        let free: Vec<ResourceSet> = (0..n)
            .map(|i| set(i as f64, if i < 2 { 1.0 } else { 0.0 }))
            .collect();
        let nodes: Vec<(u16, &ResourceSet, &ResourceSet)> =
            (0..n).map(|i| (i as u16, &totals[i], &free[i])).collect();
        let r = Ranking::new(&nodes);
        let a = r.for_node(5, 0, WINDOW);
        assert_eq!(a.len(), WINDOW + 2);
        assert!(a.contains(&0) && a.contains(&1), "the GPU nodes: {a:?}");
        // Another raylet, or the next round, reads another slice.
        let b = r.for_node(6, 0, WINDOW);
        assert_ne!(a, b);
        assert_ne!(r.for_node(5, 1, WINDOW), a);
        // Over the rounds, every node with room is a raylet's candidate.
        let mut seen = vec![false; n];
        for round in 0..8 {
            for i in r.for_node(5, round, WINDOW) {
                seen[usize::from(i)] = true;
            }
        }
        assert!(seen[1..].iter().all(|s| *s), "{seen:?}");
    }

    /// A raylet with requests waiting gets a window as wide as its demand,
    /// within bounds.
    #[test]
    fn the_window_grows_with_the_demand() {
        assert_eq!(window(0), WINDOW);
        assert_eq!(window(300), 300);
        assert_eq!(window(u32::MAX), MAX_WINDOW);
        let (total, free) = (set(8.0, 0.0), set(8.0, 0.0));
        let nodes: Vec<(u16, &ResourceSet, &ResourceSet)> =
            (0..3000).map(|i| (i, &total, &free)).collect();
        let r = Ranking::new(&nodes);
        assert_eq!(r.for_node(9, 0, window(300)).len(), 300);
        assert_eq!(r.for_node(9, 0, window(5000)).len(), MAX_WINDOW);
        // A window of at least half the nodes with room takes them all.
        let r = Ranking::new(&nodes[..1500]);
        assert_eq!(r.for_node(9, 0, window(1000)).len(), 1500);
    }

    /// Windows are slices of the nodes with room: a full node is nobody's
    /// candidate while others have room.
    #[test]
    fn windows_are_drawn_from_the_nodes_with_room() {
        let total = set(8.0, 0.0);
        let (free, full) = (set(2.0, 0.0), set(0.5, 0.0));
        // Nodes 0-59 have room, 60-199 not.
        let nodes: Vec<(u16, &ResourceSet, &ResourceSet)> = (0..200)
            .map(|i| (i, &total, if i < 60 { &free } else { &full }))
            .collect();
        let r = Ranking::new(&nodes);
        for asker in 0..20 {
            let l = r.for_node(asker, 3, WINDOW);
            assert!(l.iter().all(|i| *i < 60), "{l:?}");
            assert_eq!(l.len(), WINDOW);
        }
    }

    /// A queue reports early when the window it needs has doubled, not at
    /// every request.
    #[test]
    fn a_queue_reports_early_when_its_window_doubles() {
        assert!(!outgrown(0, WINDOW));
        assert!(!outgrown(31, WINDOW));
        assert!(outgrown(32, WINDOW));
        assert!(!outgrown(63, 32));
        assert!(outgrown(64, 32));
        assert!(!outgrown(u32::MAX, MAX_WINDOW), "at the widest: never");
    }

    /// Small clusters: everything, each once; nothing from nothing.
    #[test]
    fn a_small_cluster_is_sent_whole() {
        let (total, free) = (set(8.0, 0.0), set(8.0, 0.0));
        let nodes: Vec<(u16, &ResourceSet, &ResourceSet)> =
            (0..20).map(|i| (i, &total, &free)).collect();
        assert_eq!(
            Ranking::new(&nodes).for_node(3, 7, WINDOW),
            (0..20).collect::<Vec<u16>>()
        );
        assert!(Ranking::new(&[]).for_node(0, 0, WINDOW).is_empty());
    }
}
