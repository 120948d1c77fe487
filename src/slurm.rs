//! Bootstrapping a cluster inside a Slurm allocation: what a node learns
//! from its environment, its own address, and the job-scoped rendezvous
//! through which rank 0 hands the GCS address and the cluster secret to the
//! other ranks.
//!
//! Nothing is configured by hand. Slurm says which task is rank 0
//! (`SLURM_PROCID`), which node this is (`SLURM_NODEID`), how many nodes
//! there are and what they were given (`SLURM_CPUS_ON_NODE`,
//! GRES GPUs by device id from `CUDA_VISIBLE_DEVICES`, `SLURM_STEP_GPUS`
//! or `SLURM_JOB_GPUS`, counted by `SLURM_GPUS_ON_NODE`). The node
//! advertises its
//! own non-loopback address (a hostname that resolves to 127.0.0.1 is
//! ignored), ports are picked by the OS, and the GCS's address reaches the
//! other ranks through a file named after the job and step, readable by the
//! user alone, in a directory on the shared filesystem
//! (`$RUSTRAY_RENDEZVOUS_DIR`, default `$HOME/.rustray/jobs`): two jobs, or
//! two steps of one job, never see each other's clusters.

use crate::error::{Error, Result};
use crate::session::{Config, Session};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The resource Slurm's `--mem` becomes (Ray's name for it).
const MEMORY: &str = "memory";

/// What this task of a Slurm step knows from its environment.
#[derive(Clone, Debug)]
pub(crate) struct SlurmEnv {
    pub(crate) job: String,
    pub(crate) step: String,
    /// Global rank of this task.
    pub(crate) rank: u32,
    /// Index of this node in the step.
    pub(crate) node_index: u16,
    /// Rank of this task among the tasks on its node.
    pub(crate) local_rank: u32,
    pub(crate) nodes: u16,
    /// Tasks in the step.
    pub(crate) tasks: u32,
    pub(crate) node_name: String,
    pub(crate) cpus: Option<f64>,
    /// The GPUs Slurm gave the node, by device id (GRES).
    pub(crate) gpu_ids: Option<Vec<u32>>,
    /// Memory allocated on the node, in bytes (`--mem`).
    pub(crate) memory: Option<f64>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Reads Slurm's variables through `get` (the environment, or a map in
/// tests).
struct Vars<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn text(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    fn num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        match self.text(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Error::invalid(format!("{name}={v} is not a number"))),
        }
    }
}

impl SlurmEnv {
    /// The step this process is a task of, if it runs under `srun`.
    pub(crate) fn detect() -> Result<Option<SlurmEnv>> {
        Self::detect_with(|name| std::env::var(name).ok())
    }

    pub(crate) fn detect_with(get: impl Fn(&str) -> Option<String>) -> Result<Option<SlurmEnv>> {
        let v = Vars(get);
        let (Some(job), Some(rank)) = (v.text("SLURM_JOB_ID"), v.num::<u32>("SLURM_PROCID")?)
        else {
            return Ok(None);
        };
        let Some(node_index) = v.num::<u16>("SLURM_NODEID")? else {
            return Ok(None);
        };
        let nodes = v
            .num::<u16>("SLURM_STEP_NUM_NODES")?
            .or(v.num::<u16>("SLURM_NNODES")?)
            .unwrap_or(1);
        // The devices, in the numbering the step's processes use: what
        // Slurm put in CUDA_VISIBLE_DEVICES for GRES, else the step's or
        // the job's GPU list; SLURM_GPUS_ON_NODE says how many (devices
        // 0 up when nothing lists them).
        let mut gpu_ids = None;
        for name in [
            crate::scheduler::CUDA_VISIBLE_DEVICES,
            "SLURM_STEP_GPUS",
            "SLURM_JOB_GPUS",
        ] {
            if let Some(list) = v.text(name) {
                gpu_ids = Some(crate::scheduler::parse_device_list(name, &list)?);
                break;
            }
        }
        if let Some(n) = v.num::<u32>("SLURM_GPUS_ON_NODE")? {
            let n = n.min(crate::scheduler::MAX_DEVICES as u32);
            gpu_ids = Some(match gpu_ids {
                Some(mut ids) => {
                    ids.truncate(n as usize);
                    ids
                }
                None => (0..n).collect(),
            });
        }
        Ok(Some(SlurmEnv {
            job,
            step: v.text("SLURM_STEP_ID").unwrap_or_else(|| "batch".into()),
            rank,
            node_index,
            local_rank: v.num("SLURM_LOCALID")?.unwrap_or(0),
            nodes,
            tasks: v
                .num::<u32>("SLURM_STEP_NUM_TASKS")?
                .or(v.num::<u32>("SLURM_NTASKS")?)
                .unwrap_or(1),
            node_name: v
                .text("SLURMD_NODENAME")
                .unwrap_or_else(crate::host::node_name),
            cpus: v.num("SLURM_CPUS_ON_NODE")?,
            gpu_ids,
            // Exported when memory is a consumable resource of the cluster.
            memory: v
                .num::<f64>("SLURM_MEM_PER_NODE")?
                .map(|mb| mb * (1u64 << 20) as f64),
        }))
    }

    /// The node's resources: what Slurm allocated, unless `config` says
    /// otherwise.
    pub(crate) fn node_config(&self, mut config: Config) -> Config {
        if let (false, Some(c)) = (config.has_num_cpus(), self.cpus) {
            config = config.num_cpus(c);
        }
        if let (false, Some(ids)) = (config.has_gpu_ids(), &self.gpu_ids) {
            config = config.gpu_ids(ids.clone());
        }
        // Ray's `memory` resource, in bytes: what the allocation granted.
        if let (false, Some(m)) = (config.has_resource(MEMORY), self.memory) {
            config = config.resource(MEMORY, m);
        }
        config
    }

    /// The rendezvous file of this job step.
    pub(crate) fn rendezvous(&self) -> PathBuf {
        rendezvous_dir().join(format!("job-{}.{}", self.job, self.step))
    }
}

/// Where rendezvous files live: on the shared filesystem, per user.
pub(crate) fn rendezvous_dir() -> PathBuf {
    var("RUSTRAY_RENDEZVOUS_DIR")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".rustray/jobs")))
        .unwrap_or_else(|| PathBuf::from("/tmp/rustray/jobs"))
}

/// Publishes the cluster (rank 0): written to a temporary name and renamed,
/// so a reader never sees half a file; mode 0600, since it holds the secret.
pub(crate) fn publish(path: &std::path::Path, base: &Session) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| Error::invalid("the rendezvous path has no directory"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(&format!("creating {}", dir.display()), e))?;
    // Whatever is there is an earlier job's: this rank 0 is the only writer.
    let _ = std::fs::remove_file(path);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(base.to_env().map_err(std::io::Error::other)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        Error::io(
            &format!("writing the rendezvous file {}", path.display()),
            e,
        )
    })
}

/// Waits (bounded) for rank 0's rendezvous file and reads the cluster.
pub(crate) fn await_rendezvous(path: &std::path::Path, timeout: Duration) -> Result<Session> {
    let deadline = Instant::now() + timeout;
    // Not found when opened, whatever is there by the time it is looked
    // at again: rank 0 removes an earlier job's file, then renames its own
    // into place, and that may fall between the two.
    let not_found = |e: &Error| {
        std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    };
    loop {
        // Bounded read; a file not there (yet, or being replaced) is
        // waited for.
        match crate::session::read_bounded(path, crate::session::SESSION_FILE_MAX) {
            Ok(s) => return Session::from_env_str(s.trim()),
            Err(e) if not_found(&e) || !path.exists() => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(Error::unavailable(format!(
                "rank 0 did not publish the cluster at {} within {timeout:?} (did it fail to start?)",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<SlurmEnv>> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SlurmEnv::detect_with(|k| m.get(k).cloned())
    }

    #[test]
    fn the_allocation_becomes_the_node_resources() {
        let e = env(&[
            ("SLURM_JOB_ID", "42"),
            ("SLURM_STEP_ID", "3"),
            ("SLURM_PROCID", "5"),
            ("SLURM_NODEID", "2"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_NUM_NODES", "4"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURMD_NODENAME", "cn17"),
            ("SLURM_CPUS_ON_NODE", "32"),
            ("CUDA_VISIBLE_DEVICES", "0,1,2,3"),
            ("SLURM_MEM_PER_NODE", "1000"),
        ])
        .unwrap()
        .expect("a Slurm step");
        assert_eq!(
            (e.rank, e.node_index, e.local_rank, e.nodes, e.tasks),
            (5, 2, 1, 4, 8)
        );
        assert!(e.rendezvous().ends_with("job-42.3"));
        let r = e.node_config(Config::new()).node_resources().unwrap();
        assert_eq!(r.get("CPU"), 32.0);
        assert_eq!(r.get("GPU"), 4.0);
        assert_eq!(r.get("memory"), 1000.0 * (1u64 << 20) as f64);
        // Flags win over the allocation.
        let r = e
            .node_config(Config::new().num_cpus(2.0).resource("memory", 5.0))
            .node_resources()
            .unwrap();
        assert_eq!((r.get("CPU"), r.get("memory")), (2.0, 5.0));
        // SLURM_GPUS_ON_NODE wins over CUDA_VISIBLE_DEVICES.
        let e = env(&[
            ("SLURM_JOB_ID", "1"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NODEID", "0"),
            ("SLURM_GPUS_ON_NODE", "2"),
            ("CUDA_VISIBLE_DEVICES", "0,1,2,3"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(e.gpu_ids, Some(vec![0, 1]));
        // The step's devices keep Slurm's numbering; --num-gpus takes the
        // first of them, and cannot ask for more than were allocated.
        let e = env(&[
            ("SLURM_JOB_ID", "1"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NODEID", "0"),
            ("SLURM_STEP_GPUS", "2,5,7"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(e.gpu_ids, Some(vec![2, 5, 7]));
        let c = e.node_config(Config::new());
        assert_eq!(c.node_gpu_ids().unwrap(), vec![2, 5, 7]);
        let c = e.node_config(Config::new().num_gpus(2.0));
        assert_eq!(c.node_gpu_ids().unwrap(), vec![2, 5]);
        let err = e
            .node_config(Config::new().num_gpus(4.0))
            .node_resources()
            .unwrap_err();
        assert!(err.message().contains("only 3"), "{err}");
        let bad = env(&[
            ("SLURM_JOB_ID", "1"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NODEID", "0"),
            ("SLURM_JOB_GPUS", "0,x"),
        ])
        .unwrap_err();
        assert!(bad.message().contains("SLURM_JOB_GPUS"), "{bad}");
    }

    #[test]
    fn outside_slurm_or_bad_values() {
        assert!(env(&[]).unwrap().is_none());
        assert!(env(&[("SLURM_JOB_ID", "1")]).unwrap().is_none());
        let e = env(&[
            ("SLURM_JOB_ID", "1"),
            ("SLURM_PROCID", "x"),
            ("SLURM_NODEID", "0"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("SLURM_PROCID=x"), "{e}");
    }

    /// A new cluster whose GCS is at `gcs`, published as rank 0 would in a
    /// directory of this test's own (`tag`), at `job`: the directory, the
    /// file, and the session.
    fn published(
        tag: &str,
        job: &str,
        gcs: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf, Session) {
        let dir = std::env::temp_dir().join(format!("rustray-{tag}-{}", std::process::id()));
        let path = dir.join(job);
        let mut s = Session::new_cluster(Config::new(), false).unwrap();
        s.gcs = gcs.parse().unwrap();
        publish(&path, &s).unwrap();
        (dir, path, s)
    }

    #[test]
    fn rendezvous_roundtrips_and_is_private() {
        let (dir, path, s) = published("rdv", "job-7.0", "10.77.0.11:4242");
        let back = await_rendezvous(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(back.gcs, s.gcs);
        assert_eq!(back.cluster, s.cluster);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the secret must be readable by the user alone"
        );
        let e = await_rendezvous(&dir.join("job-8.0"), Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("rank 0 did not publish"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Rank 0 removes what an earlier job left, then renames its file into
    /// place: a rank that found nothing when it opened the file and finds
    /// it there a moment later waits on, never taking the miss for an
    /// error (one Slurm run failed so, its step cancelled).
    #[test]
    fn a_rendezvous_file_replaced_while_read_is_waited_for() {
        let (dir, path, s) = published("rdv-race", "job-9.0", "10.77.0.11:4243");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, s, stop) = (path.clone(), s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    publish(&path, &s).unwrap();
                    // There between replacements, as a published file is:
                    // a rank reading in a loop must find it in the end.
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let until = Instant::now() + Duration::from_secs(1);
        let mut reads = 0;
        while Instant::now() < until {
            let back = await_rendezvous(&path, Duration::from_secs(5));
            assert_eq!(back.map(|b| b.gcs).ok(), Some(s.gcs), "read {reads}");
            reads += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
