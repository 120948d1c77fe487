//! MPI bootstrap (feature `mpi`): the ranks of an MPI job form one cluster
//! through their communicator instead of the rendezvous file, with no shared
//! filesystem and no polling.
//!
//! Two collectives do it. An allgather of every rank's node name gives the
//! topology: which ranks share a node (the first rank of each node starts
//! its raylet), the node indices, the node count, so `mpirun -np 4 ./sim`
//! works without Slurm. Then rank 0, which starts the GCS, broadcasts the
//! cluster's address and secret (the same string the rendezvous file would
//! hold). Resources still come from Slurm's variables when there are any.
//!
//! A world of one rank while Slurm started several tasks means `srun`'s
//! `--mpi` plugin does not match the MPI library (each task came up as a
//! singleton): an error that says so, never a silent singleton cluster.

use crate::error::{Error, Result};
use crate::session::Session;
use crate::slurm::SlurmEnv;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

/// Bytes of a node name in the allgather (names are at most 24 bytes:
/// `session::node_name`).
const NAME: usize = 64;
/// Bound on the broadcast cluster address (untrusted length from a peer).
const MAX_SESSION: u64 = 1 << 20;

/// Before `MPI_Init` (the launcher's own): a Slurm step of several tasks
/// that srun started without any PMI for MPI to find would come up as
/// singletons, or abort inside `MPI_Init` with a page about building MPI;
/// say what to change instead.
pub(crate) fn precheck() -> Result<()> {
    let tasks: u32 = std::env::var("SLURM_NTASKS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    let pmi = [
        "PMIX_RANK",
        "PMI_RANK",
        "PMI_FD",
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if tasks > 1 && !pmi {
        return Err(Error::invalid(format!(
            "--bootstrap mpi: srun started {tasks} tasks with no PMI for MPI_Init to find (srun --mpi=none?), so MPI would give a world of 1 rank per task; run srun --mpi=pmix (see srun --mpi=list)"
        )));
    }
    Ok(())
}

/// This rank's place in the job, from the communicator.
pub(crate) fn step_env<C: Communicator>(comm: &C) -> Result<SlurmEnv> {
    let size = comm.size().max(1) as u32;
    let rank = comm.rank().max(0) as u32;
    let slurm = SlurmEnv::detect()?;
    if let Some(s) = &slurm {
        if size == 1 && s.tasks > 1 {
            return Err(Error::invalid(format!(
                "MPI_Init gave a world of 1 rank while Slurm started {} tasks: srun's MPI plugin does not match this MPI library (each task came up alone); run srun --mpi=pmix (see srun --mpi=list)",
                s.tasks
            )));
        }
    }
    let me = crate::host::node_name();
    let mut mine = [0u8; NAME];
    let n = me.len().min(NAME);
    mine[..n].copy_from_slice(&me.as_bytes()[..n]);
    let mut all = vec![0u8; NAME * size as usize];
    comm.all_gather_into(&mine[..], &mut all[..]);
    let names: Vec<String> = all
        .chunks(NAME)
        .map(|c| {
            let end = c.iter().position(|b| *b == 0).unwrap_or(NAME);
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect();
    let (node_index, local_rank, nodes) = topology(&names, rank as usize);
    let mut env = slurm.unwrap_or_else(|| SlurmEnv {
        job: format!("mpi-{}", std::process::id()),
        step: "0".into(),
        rank,
        node_index,
        local_rank,
        nodes,
        tasks: size,
        node_name: me.clone(),
        cpus: None,
        gpu_ids: None,
        memory: None,
    });
    env.rank = rank;
    env.node_index = node_index;
    env.local_rank = local_rank;
    env.nodes = nodes;
    env.tasks = size;
    env.node_name = me;
    Ok(env)
}

/// (node index, rank on the node, node count) of `rank`, nodes numbered in
/// the order of their first rank.
fn topology(names: &[String], rank: usize) -> (u16, u32, u16) {
    let mut order: Vec<&String> = Vec::new();
    for n in names {
        if !order.contains(&n) {
            order.push(n);
        }
    }
    let mine = &names[rank];
    let node = order.iter().position(|n| *n == mine).unwrap_or(0) as u16;
    let local = names[..rank].iter().filter(|n| *n == mine).count() as u32;
    (node, local, order.len() as u16)
}

/// Rank 0 passes the cluster it started; every rank gets it back.
pub(crate) fn share_session<C: Communicator>(comm: &C, base: Option<&Session>) -> Result<Session> {
    let root = comm.process_at_rank(0);
    let mut text = match base {
        Some(b) => b.to_env()?.into_bytes(),
        None => Vec::new(),
    };
    let mut len = text.len() as u64;
    root.broadcast_into(&mut len);
    if len > MAX_SESSION {
        return Err(Error::invalid(format!(
            "rank 0 broadcast a cluster address of {len} bytes"
        )));
    }
    text.resize(len as usize, 0);
    root.broadcast_into(&mut text[..]);
    let s = String::from_utf8(text)
        .map_err(|_| Error::invalid("the broadcast cluster address is not text"))?;
    Session::from_env_str(&s)
}

#[cfg(test)]
mod tests {
    use super::topology;

    #[test]
    fn topology_groups_ranks_by_node_in_first_rank_order() {
        let names: Vec<String> = ["b", "a", "b", "c", "a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(topology(&names, 0), (0, 0, 3));
        assert_eq!(topology(&names, 1), (1, 0, 3));
        assert_eq!(topology(&names, 2), (0, 1, 3));
        assert_eq!(topology(&names, 3), (2, 0, 3));
        assert_eq!(topology(&names, 4), (1, 1, 3));
    }
}
