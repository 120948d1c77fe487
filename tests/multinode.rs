//! Several nodes on one machine (`Config::local_nodes`): each node its own
//! raylet process, object store and workers, the GCS coordinating leases
//! across them. The same code paths run under `rust-ray-launch` and Slurm.

mod common;

use rustray::{Config, ErrorKind, SchedulingStrategy};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[rustray::remote]
fn where_am_i(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    rustray::node_name().expect("node name inside a task")
}

#[rustray::remote]
fn checksum(data: Vec<u8>) -> (u64, usize, String) {
    let sum = data.iter().enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_mul(31).wrapping_add(*b as u64 ^ i as u64)
    });
    (sum, data.len(), rustray::node_name().expect("node name"))
}

#[rustray::remote]
fn make_bytes(n: usize, seed: u8) -> Vec<u8> {
    pattern(n, seed)
}

/// Puts a block from inside a task: its worker owns it.
#[rustray::remote]
fn put_and_own(n: usize, seed: u8) -> (rustray::ObjectRef<Vec<u8>>, u32) {
    let r = rustray::put(pattern(n, seed)).expect("put in a task");
    (r, std::process::id())
}

use common::{checksum_of as local_checksum, pattern};

pub struct Where {
    calls: u64,
}

#[rustray::actor]
impl Where {
    pub fn new() -> Self {
        Where { calls: 0 }
    }
    pub fn call(&mut self) -> (u64, String) {
        self.calls += 1;
        (self.calls, rustray::node_name().expect("node name"))
    }
}

fn three_nodes() -> Vec<rustray::Node> {
    three_nodes_with(Config::new())
}

fn three_nodes_with(cfg: Config) -> Vec<rustray::Node> {
    rustray::init_with(
        cfg.local_nodes(3)
            .num_cpus(1.0)
            .object_store_memory(640 << 20),
    )
    .expect("a 3-node cluster starts");
    let nodes = rustray::nodes().expect("node table");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.alive));
    nodes
}

/// Established connections whose local end is `addr`, those accepted by
/// the server listening there, as this network namespace's
/// /proc/net/tcp{,6} list them. The address counts whole, not only its
/// port: another address's socket may use the same port number.
fn connections_to(addr: std::net::SocketAddr) -> usize {
    // Each 32-bit word of the address as the kernel prints it: its bytes
    // as stored, read as a native-order number, in hex.
    let words = |b: &[u8]| -> String {
        b.chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    };
    let port = format!("{:04X}", addr.port());
    let ip = addr.ip();
    let mut forms = Vec::new();
    match ip {
        std::net::IpAddr::V4(v4) => {
            forms.push(format!("{}:{port}", words(&v4.octets())));
            // Accepted on an IPv6 socket: the IPv4-mapped form.
            forms.push(format!("{}:{port}", words(&v4.to_ipv6_mapped().octets())));
        }
        std::net::IpAddr::V6(v6) => forms.push(format!("{}:{port}", words(&v6.octets()))),
    }
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, remote address, state (01: established)
            f.len() > 3 && f[3] == "01" && forms.iter().any(|a| a == f[1])
        })
        .count()
}

// ------------------------------------------------------------------ tests
// By what they test, in multinode_parts/.

#[path = "multinode_parts/fabric.rs"]
mod fabric;
#[path = "multinode_parts/lost_objects.rs"]
mod lost_objects;
#[path = "multinode_parts/node_loss.rs"]
mod node_loss;
#[path = "multinode_parts/placement.rs"]
mod placement;

use fabric::*;
use lost_objects::*;
use node_loss::*;
use placement::*;

fn main() {
    common::enter_cluster_role();
    common::run(&[
        (
            "test_gcs_holds_connections_per_node_not_per_process",
            test_gcs_holds_connections_per_node_not_per_process,
        ),
        ("test_spill_remote_object", test_spill_remote_object),
        (
            "test_actors_restart_when_their_node_is_lost_hung",
            test_actors_restart_when_their_node_is_lost_hung,
        ),
        (
            "test_actor_task_reconstruction_after_node_loss",
            test_actor_task_reconstruction_after_node_loss,
        ),
        (
            "test_actor_call_whose_argument_was_lost_runs_once_it_is_remade",
            test_actor_call_whose_argument_was_lost_runs_once_it_is_remade,
        ),
        (
            "test_owner_killed_frees_borrowed_copies",
            test_owner_killed_frees_borrowed_copies,
        ),
        (
            "test_objects_owned_on_a_lost_node_fail_with_owner_died",
            test_objects_owned_on_a_lost_node_fail_with_owner_died,
        ),
        (
            "test_lost_result_whose_argument_was_released_fails_reconstruction",
            test_lost_result_whose_argument_was_released_fails_reconstruction,
        ),
        (
            "test_lost_result_is_remade_through_an_argument_since_released",
            test_lost_result_is_remade_through_an_argument_since_released,
        ),
        (
            "test_fabric_transfer_verified",
            test_fabric_transfer_verified,
        ),
        (
            "test_fabric_source_killed_mid_read",
            test_fabric_source_killed_mid_read,
        ),
        (
            "test_fabric_reader_killed_mid_read",
            test_fabric_reader_killed_mid_read,
        ),
        ("test_fabric_pull_racing_free", test_fabric_pull_racing_free),
        (
            "test_fabric_provider_cannot_open",
            test_fabric_provider_cannot_open,
        ),
        (
            "test_tasks_spill_to_every_node",
            test_tasks_spill_to_every_node,
        ),
        (
            "test_node_affinity_by_resource",
            test_node_affinity_by_resource,
        ),
        (
            "test_object_transfer_between_nodes",
            test_object_transfer_between_nodes,
        ),
        ("test_infeasible_across_nodes", test_infeasible_across_nodes),
        ("test_one_gib_transfer", test_one_gib_transfer),
        (
            "test_reused_store_blocks_never_serve_stale_copies",
            test_reused_store_blocks_never_serve_stale_copies,
        ),
        (
            "test_every_copy_freed_when_no_ref_remains",
            test_every_copy_freed_when_no_ref_remains,
        ),
        ("test_actor_on_another_node", test_actor_on_another_node),
        ("test_scheduling_strategies", test_scheduling_strategies),
        (
            "test_locality_runs_tasks_where_their_data_is",
            test_locality_runs_tasks_where_their_data_is,
        ),
        ("test_node_lost_mid_job", test_node_lost_mid_job),
        (
            "test_hung_node_is_lost_everywhere",
            test_hung_node_is_lost_everywhere,
        ),
        (
            "test_lineage_reconstruction_of_lost_results",
            test_lineage_reconstruction_of_lost_results,
        ),
        (
            "test_object_directory_serves_copies_after_primary_loss",
            test_object_directory_serves_copies_after_primary_loss,
        ),
        (
            "test_locality_counts_cached_copies",
            test_locality_counts_cached_copies,
        ),
        (
            "test_task_args_wait_for_room_in_the_store",
            test_task_args_wait_for_room_in_the_store,
        ),
        (
            "test_task_lost_with_its_node_names_the_node",
            test_task_lost_with_its_node_names_the_node,
        ),
    ]);
}
