//! A cluster session on this node: its id, its directory, the role of this
//! process, the configuration passed from driver to raylet to workers, and the
//! per-process log files.
//!
//! Everything a node creates is named after the cluster id and the node name
//! (`/tmp/rustray/<cluster>-<node>/...`, `/dev/shm/rustray-<cluster>-<node>`
//! or the same name in the configured store directory),
//! so two clusters on one machine, or emulated nodes sharing a filesystem,
//! never collide. Socket paths stay well under the 108-byte `sun_path` limit.

use crate::error::{Error, Result};
use crate::ids::WorkerId;
use crate::scheduler::{ResourceSet, CPU, GPU};
use crate::transport::{Endpoint, Secret};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub(crate) const ENV_ROLE: &str = "RUSTRAY_ROLE";
pub(crate) const ENV_SESSION: &str = "RUSTRAY_SESSION";

/// Settings for [`init_with`](crate::init_with).
///
/// ```
/// let cfg = rustray::Config::new().num_cpus(4.0).object_store_memory(1 << 30);
/// # let _ = cfg;
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Config {
    num_cpus: Option<f64>,
    num_gpus: Option<f64>,
    /// The node's GPUs by device id, when known from the environment (a
    /// Slurm step's GRES); otherwise `CUDA_VISIBLE_DEVICES` or 0 up.
    gpu_ids: Option<Vec<u32>>,
    resources: Vec<(String, f64)>,
    object_store_memory: Option<u64>,
    local_nodes: Option<u16>,
    transport: Option<crate::fabric::Transport>,
    spill_dir: Option<std::path::PathBuf>,
    store_dir: Option<std::path::PathBuf>,
    store_huge_pages: Option<bool>,
    /// Nodes on this machine with their own settings (`add_local_node`).
    per_node: Vec<Config>,
}

impl Config {
    /// Defaults: all cores, no GPUs, an object store of 30% of memory
    /// (a store that is a plain file is bounded by the room in its
    /// [`store_dir`](Config::store_dir); one on huge pages of its own, the
    /// default, is not).
    pub fn new() -> Config {
        Config::default()
    }

    /// CPUs the node offers to tasks (default: the cores of this machine).
    pub fn num_cpus(mut self, n: f64) -> Config {
        self.num_cpus = Some(n);
        self
    }

    /// GPUs the node offers: a whole number of devices (default: those
    /// `CUDA_VISIBLE_DEVICES` lists, or Slurm's GRES under `srun`, else
    /// none). With `CUDA_VISIBLE_DEVICES` set, the node's devices are the
    /// first `n` it lists; otherwise they are numbered from 0. A task or
    /// actor granted GPUs sees exactly its own devices (see
    /// [`get_gpu_ids`](crate::get_gpu_ids)).
    pub fn num_gpus(mut self, n: f64) -> Config {
        self.num_gpus = Some(n);
        self
    }

    /// The node's GPUs are these devices (from Slurm's GRES).
    pub(crate) fn gpu_ids(mut self, ids: Vec<u32>) -> Config {
        self.gpu_ids = Some(ids);
        self
    }

    pub(crate) fn has_gpu_ids(&self) -> bool {
        self.gpu_ids.is_some()
    }

    /// The node's GPUs by device id, in the node's own numbering (what
    /// `CUDA_VISIBLE_DEVICES` means on it): those Slurm allocated, or
    /// those `CUDA_VISIBLE_DEVICES` lists, the first `num_gpus` of them
    /// when that is set; without a list, `num_gpus` devices from 0.
    pub(crate) fn node_gpu_ids(&self) -> Result<Vec<u32>> {
        self.node_gpu_ids_or(Vec::new)
    }

    /// As [`Config::node_gpu_ids`], with `detect` giving the devices when
    /// nothing says how many (the raylet asks the CUDA driver).
    pub(crate) fn node_gpu_ids_or(&self, detect: impl FnOnce() -> Vec<u32>) -> Result<Vec<u32>> {
        let listed = match &self.gpu_ids {
            Some(ids) => Some(ids.clone()),
            None => match std::env::var(crate::scheduler::CUDA_VISIBLE_DEVICES) {
                Ok(v) => Some(crate::scheduler::parse_device_list(
                    crate::scheduler::CUDA_VISIBLE_DEVICES,
                    &v,
                )?),
                Err(_) => None,
            },
        };
        let Some(n) = self.num_gpus else {
            return Ok(listed.unwrap_or_else(detect));
        };
        if !n.is_finite() || n < 0.0 || n.fract() != 0.0 {
            return Err(Error::invalid(format!(
                "num_gpus must be a whole number of devices, got {n}"
            )));
        }
        if n > crate::scheduler::MAX_DEVICES as f64 {
            return Err(Error::invalid(format!(
                "num_gpus({n}) is more than the {} devices a node may have",
                crate::scheduler::MAX_DEVICES
            )));
        }
        let n = n as usize;
        match listed {
            Some(ids) if ids.len() >= n => Ok(ids[..n].to_vec()),
            Some(ids) => Err(Error::invalid(format!(
                "num_gpus({n}) but the node's device list has only {} ({ids:?}, from {})",
                ids.len(),
                if self.gpu_ids.is_some() {
                    "Slurm's GRES"
                } else {
                    "CUDA_VISIBLE_DEVICES"
                }
            ))),
            None => Ok((0..n as u32).collect()),
        }
    }

    /// A custom resource the node offers, as Ray's `resources={...}`.
    pub fn resource(mut self, name: &str, amount: f64) -> Config {
        self.resources.push((name.to_string(), amount));
        self
    }

    /// Size of the node's shared-memory object store in bytes.
    pub fn object_store_memory(mut self, bytes: u64) -> Config {
        self.object_store_memory = Some(bytes);
        self
    }

    /// Where a node spills objects when its store is full (Ray's object
    /// spilling): each node writes under its own subdirectory of `dir`.
    /// Default: `RUSTRAY_SPILL_DIR`, else the job's `$TMPDIR` (node-local
    /// scratch under Slurm, or the burst buffer a site points it at), else
    /// `/tmp`.
    ///
    /// ```
    /// let cfg = rustray::Config::new().spill_dir("/scratch/spill");
    /// # let _ = cfg;
    /// ```
    pub fn spill_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Config {
        self.spill_dir = Some(dir.into());
        self
    }

    /// The directory holding each node's object store file (Ray's
    /// `plasma_directory`): a tmpfs, where pages cost nothing until used.
    /// Default: `RUSTRAY_STORE_DIR`, else `/dev/shm`. A store that is a
    /// plain file there has its default size bounded by the room left.
    ///
    /// In `/dev/shm` the store gets 2 MiB pages of its own where the
    /// machine allows (see [`store_huge_pages`](Config::store_huge_pages)).
    /// Elsewhere it is a plain file, whose pages the directory's mount
    /// decides: a tmpfs mounted with `huge=within_size` hands them out 2 MiB
    /// at a time, a default one 4 KiB at a time, which bounds the first
    /// large put into a fresh store. (`hugetlbfs` does not fit: it reserves
    /// every page of a mapping when mapped, and the store maps address
    /// space for spilled objects beside its memory.)
    ///
    /// ```
    /// let cfg = rustray::Config::new().store_dir("/dev/shm");
    /// # let _ = cfg;
    /// ```
    pub fn store_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Config {
        // Absolute here: every process of the node (workers, other nodes'
        // launchers) must name the same file, whatever its own directory.
        let dir = dir.into();
        self.store_dir = Some(std::path::absolute(&dir).unwrap_or(dir));
        self
    }

    /// Whether a store in `/dev/shm` (the default directory) goes on a
    /// tmpfs of its own with 2 MiB pages, mounted without root in a user
    /// namespace, with its usual name in `/dev/shm` a link to it. Default:
    /// yes, unless `RUSTRAY_STORE_HUGE_PAGES` is `0` (or `false`, `no`,
    /// `off`). Pages are still only
    /// allocated when first written, but 2 MiB at a time, so the first
    /// large put into a fresh store runs near memory speed rather than at
    /// the rate the kernel faults in 4 KiB pages. Where user namespaces are
    /// off, the store is a plain `/dev/shm` file whatever this says. A
    /// store in another [`store_dir`](Config::store_dir) is a plain file
    /// there (that directory's mount decides its pages). Processes of the
    /// node reach the store through the raylet's `/proc` entry: where they
    /// share `/dev/shm` but not the raylet's pid namespace, turn this off.
    ///
    /// ```
    /// let cfg = rustray::Config::new().store_huge_pages(false);
    /// # let _ = cfg;
    /// ```
    pub fn store_huge_pages(mut self, on: bool) -> Config {
        self.store_huge_pages = Some(on);
        self
    }

    /// Whether this node's store goes on a huge-page tmpfs of its own (see
    /// [`store_huge_pages`](Config::store_huge_pages)).
    pub(crate) fn wants_huge_store(&self) -> bool {
        let on = self.store_huge_pages.unwrap_or_else(|| {
            std::env::var("RUSTRAY_STORE_HUGE_PAGES").map_or(true, |v| {
                !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "false" | "no" | "off"
                )
            })
        });
        on && self.store_base() == std::path::Path::new("/dev/shm")
    }

    /// The directory of this node's store file: the setting, else the
    /// environment, else `/dev/shm`.
    pub(crate) fn store_base(&self) -> std::path::PathBuf {
        if let Some(d) = &self.store_dir {
            return d.clone();
        }
        match std::env::var_os("RUSTRAY_STORE_DIR").filter(|v| !v.is_empty()) {
            Some(v) => {
                let v = std::path::PathBuf::from(v);
                std::path::absolute(&v).unwrap_or(v)
            }
            None => std::path::PathBuf::from("/dev/shm"),
        }
    }

    /// The spill directory's parent for this node.
    pub(crate) fn spill_base(&self) -> std::path::PathBuf {
        crate::object_store::spill_base(self.spill_dir.as_deref())
    }

    /// Start this many nodes on this machine, each with its own raylet and
    /// object store and the resources above (default 1): the topology of a
    /// multi-node cluster, without Slurm.
    pub fn local_nodes(mut self, n: u16) -> Config {
        self.local_nodes = Some(n);
        self
    }

    /// Adds a node on this machine with settings of its own (Ray's
    /// `cluster_utils.Cluster.add_node(num_cpus=.., resources=..)`), so a
    /// test or a trial run can have nodes that differ, as on a real
    /// allocation. What `node` sets (CPUs, GPUs, store size and directory,
    /// custom resources by name) replaces the cluster-wide setting for that node;
    /// the rest is inherited. Each call adds one node, in order (node 0
    /// first); [`local_nodes`](Self::local_nodes), if also given, must
    /// equal their number.
    ///
    /// ```
    /// let cfg = rustray::Config::new()
    ///     .object_store_memory(256 << 20)
    ///     .add_local_node(rustray::Config::new().num_cpus(1.0))
    ///     .add_local_node(rustray::Config::new().num_cpus(4.0).resource("ssd", 1.0));
    /// # let _ = cfg;
    /// ```
    pub fn add_local_node(mut self, node: Config) -> Config {
        self.per_node.push(node);
        self
    }

    /// The settings of local node `i`: the cluster-wide ones with that
    /// node's own (from `add_local_node`) laid over them.
    pub(crate) fn for_local_node(&self, i: u16) -> Result<Config> {
        let n = self.node_count()?;
        let mut c = Config {
            per_node: Vec::new(),
            local_nodes: Some(n),
            ..self.clone()
        };
        if let Some(own) = self.per_node.get(usize::from(i)) {
            if !own.per_node.is_empty() || own.local_nodes.is_some() {
                return Err(Error::invalid(
                    "a node given to add_local_node cannot itself have local nodes",
                ));
            }
            c.num_cpus = own.num_cpus.or(c.num_cpus);
            c.num_gpus = own.num_gpus.or(c.num_gpus);
            c.gpu_ids = own.gpu_ids.clone().or(c.gpu_ids);
            c.object_store_memory = own.object_store_memory.or(c.object_store_memory);
            c.store_dir = own.store_dir.clone().or(c.store_dir);
            c.store_huge_pages = own.store_huge_pages.or(c.store_huge_pages);
            for (k, v) in &own.resources {
                c.resources.retain(|(name, _)| name != k);
                c.resources.push((k.clone(), *v));
            }
        }
        Ok(c)
    }

    /// How objects move between nodes (default [`Transport::Auto`](crate::Transport::Auto), or
    /// `RUSTRAY_TRANSPORT=auto|fabric|tcp` in the environment): libfabric
    /// one-sided reads, or the built-in TCP path. See
    /// [`Transport`](crate::Transport).
    pub fn transport(mut self, t: crate::fabric::Transport) -> Config {
        self.transport = Some(t);
        self
    }

    /// The transport asked for: the setting, else the environment, else auto.
    pub(crate) fn transport_choice(&self) -> Result<crate::fabric::Transport> {
        if let Some(t) = self.transport {
            return Ok(t);
        }
        match std::env::var("RUSTRAY_TRANSPORT") {
            Ok(v) if !v.is_empty() => v
                .parse()
                .map_err(|e: String| Error::invalid(format!("RUSTRAY_TRANSPORT: {e}"))),
            _ => Ok(crate::fabric::Transport::Auto),
        }
    }

    /// True when every node runs on this machine (`local_nodes`).
    pub(crate) fn single_host(&self) -> bool {
        self.local_nodes.is_some() || !self.per_node.is_empty()
    }

    pub(crate) fn has_num_cpus(&self) -> bool {
        self.num_cpus.is_some()
    }

    pub(crate) fn has_resource(&self, name: &str) -> bool {
        self.resources.iter().any(|(k, _)| k == name)
    }

    pub(crate) fn node_count(&self) -> Result<u16> {
        let listed = u16::try_from(self.per_node.len())
            .map_err(|_| Error::invalid("too many local nodes (at most 65535)"))?;
        match (self.local_nodes, listed) {
            (Some(0), _) => Err(Error::invalid("local_nodes must be at least 1")),
            (Some(n), 0) => Ok(n),
            (Some(n), m) if n != m => Err(Error::invalid(format!(
                "local_nodes({n}) but {m} nodes were added with add_local_node"
            ))),
            (_, 0) => Ok(1),
            (_, m) => Ok(m),
        }
    }

    pub(crate) fn node_resources(&self) -> Result<ResourceSet> {
        self.node_resources_with(self.node_gpu_ids()?.len())
    }

    /// The node's resources, with `gpus` devices.
    pub(crate) fn node_resources_with(&self, gpus: usize) -> Result<ResourceSet> {
        let cpus = self.num_cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0)
        });
        let mut r = ResourceSet::new();
        r.set(CPU, cpus)?;
        r.set(GPU, gpus as f64)?;
        for (k, v) in &self.resources {
            if k.is_empty() {
                return Err(Error::invalid("a resource name must not be empty"));
            }
            r.set(k, *v)?;
        }
        Ok(r)
    }

    /// The store's memory: the setting, else 30% of this machine's,
    /// bounded by the room left in the store directory.
    pub(crate) fn store_bytes(&self) -> Result<u64> {
        self.store_bytes_on(false)
    }

    /// [`store_bytes`](Config::store_bytes) for a store on a tmpfs of its
    /// own (`own_tmpfs`, see `object_store::hugefs`): the room left in the
    /// store directory does not bound it, since the store takes none of
    /// it. (A container's `/dev/shm` is often 64 MiB.)
    pub(crate) fn store_bytes_on(&self, own_tmpfs: bool) -> Result<u64> {
        let dir = self.store_base();
        if !dir.is_dir() {
            return Err(Error::invalid(format!(
                "the object store directory {} {} (store_dir / RUSTRAY_STORE_DIR)",
                dir.display(),
                if dir.exists() {
                    "is not a directory"
                } else {
                    "does not exist"
                }
            )));
        }
        if let Some(b) = self.object_store_memory {
            if b < 1 << 20 {
                return Err(Error::invalid(format!(
                    "object_store_memory must be at least 1 MiB, got {b} bytes"
                )));
            }
            return Ok(b);
        }
        use nix::unistd::{sysconf, SysconfVar};
        let conf = |v| sysconf(v).ok().flatten().unwrap_or(0).max(0) as u64;
        let pages = conf(SysconfVar::_PHYS_PAGES);
        let page = conf(SysconfVar::PAGE_SIZE);
        let mut bytes = pages * page * 3 / 10;
        if let Some(shm) = free_bytes(&dir).filter(|_| !own_tmpfs) {
            bytes = bytes.min(shm * 9 / 10);
        }
        Ok(bytes.max(64 << 20))
    }
}

/// Longest session string passed inline in an environment variable.
const ENV_INLINE_MAX: usize = 64 << 10;
/// Largest session file read back (a session names at most a few hundred
/// thousand resources; anything larger is not one of ours).
pub(crate) const SESSION_FILE_MAX: u64 = 64 << 20;

/// Reads a small text file, refusing one larger than `max` bytes before
/// reading it (the path came from the environment).
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<String> {
    use std::io::Read;
    let what = || format!("reading the session file {}", path.display());
    let f = std::fs::File::open(path).map_err(|e| Error::io(&what(), e))?;
    let len = f.metadata().map_err(|e| Error::io(&what(), e))?.len();
    if len > max {
        return Err(Error::invalid(format!(
            "the session file {} holds {len} bytes, more than the {max} a session can take",
            path.display()
        )));
    }
    let mut s = String::with_capacity(len as usize);
    f.take(max)
        .read_to_string(&mut s)
        .map_err(|e| Error::io(&what(), e))?;
    Ok(s)
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// What every process of a node's session knows, passed in the environment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) cluster: String,
    /// This node's name (file names carry it: emulated nodes share /tmp).
    pub(crate) node: String,
    /// This node's index in the cluster (node ids embed it).
    pub(crate) node_index: u16,
    pub(crate) dir: PathBuf,
    pub(crate) config: Config,
    pub(crate) secret: Secret,
    /// The GCS's address.
    pub(crate) gcs: SocketAddr,
    /// The address this node advertises and listens on.
    pub(crate) ip: IpAddr,
    /// What the raylet runs as a worker: the application binary.
    pub(crate) exe: PathBuf,
    pub(crate) args: Vec<String>,
    /// An embedded cluster ends with its driver; a launched one with its GCS.
    pub(crate) embedded: bool,
}

impl Session {
    /// A new cluster: its id and secret. Call [`Session::for_node`] next.
    pub(crate) fn new_cluster(config: Config, embedded: bool) -> Result<Session> {
        let exe =
            std::env::current_exe().map_err(|e| Error::io("locating the current executable", e))?;
        Ok(Session {
            cluster: format!("{:012x}", crate::ids::random_u64() >> 16),
            node: String::new(),
            node_index: 0,
            dir: PathBuf::new(),
            config,
            secret: Secret::random(),
            gcs: SocketAddr::from(([127, 0, 0, 1], 0)),
            ip: IpAddr::from([127, 0, 0, 1]),
            exe,
            args: std::env::args().skip(1).collect(),
            embedded,
        })
    }

    /// This cluster's session on node `index` called `name`; creates the
    /// node's directory.
    pub(crate) fn for_node(&self, index: u16, name: &str) -> Result<Session> {
        let base = std::env::var_os("RUSTRAY_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/rustray"));
        let dir = base.join(format!("{}-{name}", self.cluster));
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(|e| Error::io(&format!("creating session dir {}", dir.display()), e))?;
        // Only this user may reach the node's sockets (the secret guards them
        // too) or read its logs.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let mut s = self.clone();
        s.node = name.to_string();
        s.node_index = index;
        s.dir = dir;
        Ok(s)
    }

    /// The session as one string for the environment (and rendezvous
    /// files): the protocol fingerprint, then the encoding in hex.
    pub(crate) fn to_env(&self) -> Result<String> {
        // The store directory travels resolved: whoever reads the session
        // (a worker, another node's launcher, a driver joining later) may
        // have another environment or working directory, and must name the
        // same arena file.
        let body = if self.config.store_dir.is_some() {
            crate::codec::encode(self)?
        } else {
            let mut s = self.clone();
            s.config.store_dir = Some(self.config.store_base());
            crate::codec::encode(&s)?
        };
        Ok(format!(
            "rr{:016x}-{}",
            crate::transport::PROTOCOL,
            hex(&body)
        ))
    }

    /// The session for a child process's environment: [`Session::to_env`]
    /// when it is short; otherwise (a node with thousands of custom
    /// resources, say) it is written to `session.env` in the node's
    /// directory, readable by this user only, and the variable holds
    /// `@<path>`. Linux caps one environment string at 128 KiB: past that
    /// the child would not start ("Argument list too long").
    pub(crate) fn to_process_env(&self) -> Result<String> {
        let s = self.to_env()?;
        if s.len() <= ENV_INLINE_MAX || self.dir.as_os_str().is_empty() {
            return Ok(s);
        }
        let path = self.dir.join("session.env");
        let tmp = self.dir.join(format!("session.env.{}", std::process::id()));
        std::fs::write(&tmp, &s)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(&format!("writing {}", path.display()), e))?;
        Ok(format!("@{}", path.display()))
    }

    pub(crate) fn from_env() -> Result<Session> {
        let v = std::env::var(ENV_SESSION)
            .map_err(|_| Error::invalid(format!("{ENV_SESSION} is not set")))?;
        Self::from_env_str(&v)
    }

    /// Reads [`Session::to_env`]'s string; one from a build of rustray
    /// whose protocol differs is a clear error, not a garbled cluster.
    pub(crate) fn from_env_str(v: &str) -> Result<Session> {
        if let Some(path) = v.strip_prefix('@') {
            return Self::from_env_str(&read_bounded(Path::new(path), SESSION_FILE_MAX)?);
        }
        let mine = format!("rr{:016x}", crate::transport::PROTOCOL);
        let (version, body) = v
            .split_once('-')
            .ok_or_else(|| Error::invalid("the cluster address is corrupt"))?;
        if version != mine {
            return Err(Error::invalid(format!(
                "this program and the cluster it joins were built from different versions of rustray (protocol {} vs {}); rebuild rust-ray-launch and the application from the same source",
                version.trim_start_matches("rr"),
                mine.trim_start_matches("rr")
            )));
        }
        let bytes = unhex(body).ok_or_else(|| Error::invalid("the cluster address is corrupt"))?;
        crate::codec::decode(&bytes, "session")
    }

    pub(crate) fn raylet_socket(&self) -> PathBuf {
        self.dir.join("raylet.sock")
    }

    pub(crate) fn worker_socket(&self, w: WorkerId) -> PathBuf {
        self.dir.join(format!("w-{w}.sock"))
    }

    pub(crate) fn gcs_endpoint(&self) -> Endpoint {
        Endpoint::Tcp(self.gcs)
    }

    pub(crate) fn raylet_endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.raylet_socket())
    }

    pub(crate) fn arena_path(&self) -> PathBuf {
        crate::object_store::arena_path(&self.config.store_base(), &self.cluster, &self.node)
    }

    /// The node's fabric endpoint name, for providers that name endpoints
    /// by string (see `fabric::OpenOptions::name`).
    pub(crate) fn fabric_name(&self) -> String {
        format!("rustray-{}-{}-ep", self.cluster, self.node)
    }

    /// Removes what a shared-memory provider keeps under the endpoint's
    /// name (`/dev/shm/<name>`, with the provider's own suffixes): a
    /// raylet killed with SIGKILL, or one whose endpoint got stuck, cannot
    /// close it, so the cluster's cleanup removes it with the arena.
    /// This node's spill directory.
    pub(crate) fn spill_dir(&self) -> crate::object_store::SpillDir {
        crate::object_store::SpillDir::new(&self.config.spill_base(), &self.cluster, &self.node)
    }

    pub(crate) fn remove_fabric_files(&self) {
        let name = self.fabric_name();
        let Ok(rd) = std::fs::read_dir("/dev/shm") else {
            return;
        };
        for e in rd.flatten() {
            let f = e.file_name();
            let f = f.to_string_lossy();
            if f == name
                || f.strip_prefix(name.as_str())
                    .is_some_and(|r| r.starts_with(':'))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    pub(crate) fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Removes every socket of the session (the logs stay).
    pub(crate) fn remove_sockets(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                // The session file carries the cluster's secret: it goes
                // with the sockets.
                if e.path().extension().is_some_and(|x| x == "sock")
                    || e.file_name() == "session.env"
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Opens this process's log file in the session's log directory.
pub(crate) fn open_log(session: &Session, name: &str) {
    crate::log::open(&session.log_dir().join(format!("{name}.log")));
}

pub(crate) use crate::log::log;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_session_travels_as_a_file() {
        let mut cfg = Config::new();
        for i in 0..5_000 {
            cfg = cfg.resource(&format!("r{i}"), 1.0);
        }
        let dir = std::env::temp_dir().join(format!("rustray-session-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Session::new_cluster(cfg, true).unwrap();
        s.dir = dir.clone();
        let v = s.to_process_env().unwrap();
        assert!(
            v.starts_with('@') && v.len() < 4096,
            "{}",
            &v[..64.min(v.len())]
        );
        let back = Session::from_env_str(&v).unwrap();
        assert_eq!(back.config.node_resources().unwrap().get("r4999"), 1.0);
        // A missing or oversized file is a clear error.
        s.remove_sockets();
        let e = Session::from_env_str(&v).unwrap_err();
        assert!(e.message().contains("session file"), "{e}");
        let big = dir.join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(SESSION_FILE_MAX + 1)
            .unwrap();
        let e = Session::from_env_str(&format!("@{}", big.display())).unwrap_err();
        assert!(e.message().contains("more than"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn session_roundtrips_through_env_string() {
        let mut s =
            Session::new_cluster(Config::new().num_cpus(3.0).resource("nodeA", 1.0), true).unwrap();
        s.node = "n1".into();
        let back = Session::from_env_str(&s.to_env().unwrap()).unwrap();
        assert_eq!(back.node, "n1");
        assert_eq!(back.config.node_resources().unwrap().get("nodeA"), 1.0);
        assert!(unhex("zz").is_none());
        // Another build's session is refused with a clear error.
        let other = s.to_env().unwrap().replacen("rr", "rr0", 1);
        let e = Session::from_env_str(&other).unwrap_err();
        assert!(
            e.to_string().contains("different versions of rustray"),
            "{e}"
        );
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let e = Config::new().num_cpus(-1.0).node_resources().unwrap_err();
        assert!(e.to_string().contains("CPU"), "{e}");
        assert!(Config::new().object_store_memory(10).store_bytes().is_err());
        let e = Config::new()
            .store_dir("/nonexistent/rustray-store")
            .store_bytes()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/rustray-store does not exist"),
            "{e}"
        );
    }

    #[test]
    fn the_store_directory_is_absolute_and_names_the_arena() {
        let c = Config::new().store_dir("stores");
        let dir = c.store_base();
        assert!(dir.is_absolute() && dir.ends_with("stores"), "{dir:?}");
        let mut s = Session::new_cluster(c, true).unwrap();
        s.node = "n1".into();
        let back = Session::from_env_str(&s.to_env().unwrap()).unwrap();
        assert_eq!(
            back.arena_path(),
            dir.join(format!("rustray-{}-n1", s.cluster))
        );
        // Unset, it travels as this process resolves it (the environment's,
        // else /dev/shm): a reader with another environment names the same
        // file.
        let s = Session::new_cluster(Config::new(), true).unwrap();
        let back = Session::from_env_str(&s.to_env().unwrap()).unwrap();
        assert_eq!(back.config.store_dir, Some(s.config.store_base()));
    }
}
