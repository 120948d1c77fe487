//! The RDMA data plane: one libfabric endpoint per raylet, the node's whole
//! object-store arena registered with it once, and one-sided reads of other
//! nodes' arenas straight into this node's.
//!
//! What the rest of the runtime sees is safe: [`Fabric::open`] picks a
//! provider from what `fi_getinfo` reports (never by name), [`Fabric::register`]
//! registers the arena and returns the [`FabricAddr`] a node publishes in its
//! node-table entry, and [`Fabric::read`] copies a range of a peer's arena
//! into a slice of ours, in chunks with several reads in flight, and returns
//! when every byte has landed or with an error naming the peer and the
//! provider. Every `unsafe` of the data plane is in this module and
//! [`sys`], each with its reason.
//!
//! What providers differ in is read from the `fi_info` they return:
//! - `FI_MR_VIRT_ADDR`: remote addresses are virtual addresses (the peer's
//!   published base plus the offset), else offsets into the registration;
//! - `FI_MR_PROV_KEY`: the provider picks the key, else we request one;
//! - `FI_MR_LOCAL`: reads pass the local registration's descriptor;
//! - `FI_MR_ENDPOINT`: the registration is bound to the endpoint and enabled;
//! - `FI_MR_ALLOCATED`: the arena is a live mapping already, nothing to do;
//! - `max_msg_size`: reads are split below it;
//! - `tx_attr.size`: at most that many reads in flight, and `-FI_EAGAIN`
//!   is back-pressure (poll, then post again), never an error;
//! - `FI_PROGRESS_MANUAL`: nothing moves unless someone polls the CQ,
//!   remote reads of *our* arena included, so a progress thread
//!   ([`Fabric::progress`]) polls whenever no reader does.
//!
//! One lock serialises every call on the endpoint and its CQ (the domain is
//! opened `FI_THREAD_DOMAIN`, which every provider supports): completions
//! read by one thread are filed under their operation for the thread that
//! posted it. Calls are short (posting, polling), so the lock is never held
//! across a wait.

pub(crate) mod ceiling;
mod sys;

use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which data plane moves objects between nodes.
///
/// ```
/// let cfg = rustray::Config::new().transport(rustray::Transport::Tcp);
/// # let _ = cfg;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// libfabric when a hardware provider with RMA is there (verbs, cxi,
    /// efa, psm, opx, ...), else the built-in TCP path (the software
    /// providers are no faster than it).
    #[default]
    Auto,
    /// libfabric, whatever the provider; a node that cannot open one fails
    /// to start, with an error naming what is missing.
    Fabric,
    /// The built-in TCP path.
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Transport, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "fabric" => Ok(Transport::Fabric),
            "tcp" => Ok(Transport::Tcp),
            other => Err(format!(
                "unknown transport `{other}`: expected auto, fabric or tcp"
            )),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Auto => "auto",
            Transport::Fabric => "fabric",
            Transport::Tcp => "tcp",
        })
    }
}

/// Providers that carry RMA over the host's own sockets or memory: no
/// faster than the built-in TCP path, so `auto` does not pick them. This is
/// the one place a provider is named, and only to rank, never to
/// special-case: a provider not listed counts as hardware.
const SOFTWARE_PROVIDERS: [&str; 6] = ["tcp", "sockets", "udp", "net", "shm", "ofi_rxm"];

fn is_software(provider: &str) -> bool {
    // Layered names read "core;utility", e.g. "tcp;ofi_rxm".
    provider
        .split(';')
        .all(|p| SOFTWARE_PROVIDERS.contains(&p) || p.starts_with("ofi_"))
}

pub(crate) use crate::protocol::FabricAddr;

/// The largest endpoint name accepted from a peer (a node-table entry is
/// untrusted input): far above any provider's (shm's are ~100 bytes).
pub(crate) const MAX_NAME: usize = 4096;

/// An error of the fabric path, with the provider and, for reads, the peer.
#[derive(Debug, Clone)]
pub(crate) struct FabricError {
    pub(crate) message: String,
    /// True if a read failed with operations still posted into the
    /// destination: the provider may yet write there, so the caller must
    /// not reuse that memory.
    pub(crate) dirty: bool,
}

impl std::fmt::Display for FabricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn err(message: impl Into<String>) -> FabricError {
    FabricError {
        message: message.into(),
        dirty: false,
    }
}

/// How [`Fabric::open`] chooses.
pub(crate) struct OpenOptions {
    /// Forced (`Transport::Fabric`): any provider will do. Otherwise only
    /// hardware providers are taken, and `Ok(None)` means "use TCP".
    pub(crate) forced: bool,
    /// Every node of the cluster is on this host (`local_nodes`): a
    /// provider limited to one host (shared memory) is acceptable, and
    /// preferred. Otherwise the provider must reach other hosts.
    pub(crate) single_host: bool,
    /// The address this node advertises: network providers bind to it.
    pub(crate) ip: IpAddr,
    /// The endpoint's name for providers that address by string (shared
    /// memory names its files after it): unique to the cluster and node,
    /// so that no name left by a killed process (names default to the
    /// pid, and pids are reused) collides, and the cluster's cleanup
    /// knows it. None: the provider's default.
    pub(crate) name: Option<String>,
}

/// Bytes per read: large enough to amortise a request, small enough that
/// several are in flight at once.
const READ_CHUNK: usize = 8 << 20;
/// Reads in flight per transfer (fewer if the TX context takes fewer).
const READ_DEPTH: usize = 8;

/// A libfabric endpoint with the node's arena registered.
pub(crate) struct Fabric {
    lib: &'static sys::Lib,
    raw: Mutex<Raw>,
    /// Nanoseconds since `epoch` at which the lock (and so a provider
    /// call) was last taken while it is held, else 0: see [`Fabric::wedged`].
    held_since: AtomicU64,
    /// The provider's name (`fi_info.fabric_attr.prov_name`).
    pub(crate) provider: String,
    /// Why this provider: one line for the log.
    pub(crate) why: String,
    mr_mode: c_int,
    manual_progress: bool,
    max_msg: usize,
    depth: usize,
    name: Vec<u8>,
    /// What keeps the registered arena mapped (see `register_arena`).
    keep: Mutex<Option<std::sync::Arc<crate::object_store::Arena>>>,
    /// The registered local region, (start address, length), once registered.
    region: Mutex<Option<(usize, usize, usize)>>,
    /// Source of operation ids (the context of each posted read).
    next_op: AtomicU64,
    /// Nanoseconds since `epoch` of the last time a reader polled: the
    /// progress thread stays out of the way while readers drive progress.
    last_poll: AtomicU64,
    epoch: Instant,
}

/// The raw handles, used only under the lock.
struct Raw {
    /// The chosen entry, kept for the endpoint's life (objects opened
    /// from it may refer to its attributes).
    #[allow(dead_code)]
    info: *mut sys::fi_info,
    fabric: *mut sys::fid_fabric,
    domain: *mut sys::fid_domain,
    ep: *mut sys::fid_ep,
    cq: *mut sys::fid_cq,
    av: *mut sys::fid_av,
    mr: *mut sys::fid_mr,
    desc: *mut c_void,
    peers: HashMap<Vec<u8>, sys::fi_addr_t>,
    /// Completions read by any thread, filed by operation id.
    done: HashMap<u64, Result<(), String>>,
    /// Each posted operation's context block (`FI_CONTEXT`/`FI_CONTEXT2`
    /// modes make it the provider's scratch space until completion).
    contexts: HashMap<u64, Box<[u64; 8]>>,
    /// Set by [`Fabric::close`]: every handle is gone.
    closed: bool,
}

// SAFETY: the raw handles are only touched under the `raw` mutex, which
// serialises every call into the provider (FI_THREAD_DOMAIN's contract).
unsafe impl Send for Raw {}

impl Fabric {
    /// Opens an endpoint on the provider the options call for. `Ok(None)`:
    /// not forced and no hardware provider here (use TCP); the string says
    /// why, for the log.
    pub(crate) fn open(
        opts: &OpenOptions,
    ) -> Result<std::result::Result<Fabric, String>, FabricError> {
        let lib = match sys::load() {
            Ok(l) => l,
            Err(e) if !opts.forced => return Ok(Err(e)),
            Err(e) => return Err(err(e)),
        };
        // SAFETY: fi_version has no preconditions.
        let lib_version = unsafe { (lib.version)() };
        let ours = sys::fi_version(sys::FI_MAJOR_VERSION, sys::FI_MINOR_VERSION);
        if lib_version < sys::fi_version(1, 10) {
            let e = format!(
                "libfabric {}.{} is too old (1.10 or later needed)",
                lib_version >> 16,
                lib_version & 0xffff
            );
            return if opts.forced { Err(err(e)) } else { Ok(Err(e)) };
        }
        let version = lib_version.min(ours);
        let list = getinfo(lib, version, opts)?;
        // Choose: the first entry that fits, in libfabric's own order
        // (FI_PROVIDER, when set, has already narrowed the list).
        let mut chosen = None;
        let mut seen = Vec::new();
        for &info in &list.entries {
            // SAFETY: entries of a live fi_getinfo list; their attribute
            // pointers are set by the library.
            let (prov, caps) = unsafe {
                let fa = (*info).fabric_attr;
                (cstr((*fa).prov_name), (*info).caps)
            };
            if !seen.contains(&prov) {
                seen.push(prov.clone());
            }
            if std::env::var_os("RUSTRAY_FABRIC_DEBUG").is_some() {
                eprintln!("fabric candidate {prov} caps {caps:#x}");
            }
            if !opts.forced && is_software(&prov) {
                continue;
            }
            chosen = Some((info, prov));
            break;
        }
        let Some((info, provider)) = chosen else {
            let found = if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            };
            let e = if opts.forced {
                format!("no libfabric provider offers RMA reads over reliable datagram endpoints{} (providers found: {found}; FI_PROVIDER={})",
                    if opts.single_host { "" } else { " to other hosts" },
                    std::env::var("FI_PROVIDER").unwrap_or_else(|_| "unset".into()))
            } else {
                format!("only software providers ({found}), no faster than the built-in TCP path")
            };
            return if opts.forced { Err(err(e)) } else { Ok(Err(e)) };
        };
        let why = if opts.forced {
            format!("transport forced to fabric; first provider that fits: {provider}")
        } else {
            format!("hardware provider {provider} offers RMA reads")
        };
        // SAFETY: `info` is an entry of the live list; fi_dupinfo copies it
        // (without `next`), so the list can be freed.
        let info = unsafe { (lib.dupinfo)(info) };
        drop(list);
        if info.is_null() {
            return Err(err("fi_dupinfo failed (out of memory)"));
        }
        if let Some(name) = &opts.name {
            // SAFETY: `info` is our own copy; its src_addr is a malloc'd
            // string when addr_format is FI_ADDR_STR, replaced by another
            // malloc'd string that fi_freeinfo frees the same way.
            unsafe { rename_str_addr(info, name) };
        }
        Self::open_info(lib, info, provider, why)
    }

    fn open_info(
        lib: &'static sys::Lib,
        info: *mut sys::fi_info,
        provider: String,
        why: String,
    ) -> Result<std::result::Result<Fabric, String>, FabricError> {
        let mut raw = Raw {
            info,
            fabric: std::ptr::null_mut(),
            domain: std::ptr::null_mut(),
            ep: std::ptr::null_mut(),
            cq: std::ptr::null_mut(),
            av: std::ptr::null_mut(),
            mr: std::ptr::null_mut(),
            desc: std::ptr::null_mut(),
            peers: HashMap::new(),
            done: HashMap::new(),
            contexts: HashMap::new(),
            closed: false,
        };
        let fail = |what: &str, rc: isize| {
            err(format!(
                "libfabric provider {provider}: {what} failed: {}",
                strerror(lib, rc)
            ))
        };
        // SAFETY: `info` is a valid fi_info from fi_dupinfo; every pointer
        // handed to the provider below is either from it or an out-pointer
        // into `raw`, and each object is opened on the one before, as the
        // libfabric API requires. Ops are checked present before calls.
        let (mr_mode, manual_progress, max_msg, depth) = unsafe {
            let rc = (lib.fabric)((*info).fabric_attr, &mut raw.fabric, std::ptr::null_mut());
            if rc != 0 {
                return Err(fail("fi_fabric", rc as isize));
            }
            let fops = &*(*raw.fabric).ops;
            let Some(domain) = fops.domain else {
                return Err(fail("fi_domain (missing)", -(sys::FI_ENOSYS as isize)));
            };
            let rc = domain(raw.fabric, info, &mut raw.domain, std::ptr::null_mut());
            if rc != 0 {
                return Err(fail("fi_domain", rc as isize));
            }
            let dops = &*(*raw.domain).ops;
            let mut cq_attr = sys::fi_cq_attr {
                size: 0,
                flags: 0,
                format: sys::FI_CQ_FORMAT_CONTEXT,
                wait_obj: sys::FI_WAIT_NONE,
                signaling_vector: 0,
                wait_cond: 0,
                wait_set: std::ptr::null_mut(),
            };
            let (Some(cq_open), Some(av_open), Some(endpoint)) =
                (dops.cq_open, dops.av_open, dops.endpoint)
            else {
                return Err(fail("domain ops (missing)", -(sys::FI_ENOSYS as isize)));
            };
            let rc = cq_open(raw.domain, &mut cq_attr, &mut raw.cq, std::ptr::null_mut());
            if rc != 0 {
                return Err(fail("fi_cq_open", rc as isize));
            }
            let mut av_attr = sys::fi_av_attr {
                type_: sys::FI_AV_TABLE,
                rx_ctx_bits: 0,
                count: 64,
                ep_per_node: 0,
                name: std::ptr::null(),
                map_addr: std::ptr::null_mut(),
                flags: 0,
            };
            let rc = av_open(raw.domain, &mut av_attr, &mut raw.av, std::ptr::null_mut());
            if rc != 0 {
                return Err(fail("fi_av_open", rc as isize));
            }
            let rc = endpoint(raw.domain, info, &mut raw.ep, std::ptr::null_mut());
            if rc != 0 {
                return Err(fail("fi_endpoint", rc as isize));
            }
            let ep_fid = &mut (*raw.ep).fid as *mut sys::fid;
            let ep_ops = &*(*ep_fid).ops;
            let (Some(bind), Some(control)) = (ep_ops.bind, ep_ops.control) else {
                return Err(fail("endpoint ops (missing)", -(sys::FI_ENOSYS as isize)));
            };
            let rc = bind(ep_fid, &mut (*raw.av).fid, 0);
            if rc != 0 {
                return Err(fail("fi_ep_bind(av)", rc as isize));
            }
            let rc = bind(ep_fid, &mut (*raw.cq).fid, sys::FI_TRANSMIT | sys::FI_RECV);
            if rc != 0 {
                return Err(fail("fi_ep_bind(cq)", rc as isize));
            }
            let rc = control(ep_fid, sys::FI_ENABLE, std::ptr::null_mut());
            if rc != 0 {
                return Err(fail("fi_enable", rc as isize));
            }
            let dattr = &*(*info).domain_attr;
            let ep_attr = &*(*info).ep_attr;
            let tx_attr = &*(*info).tx_attr;
            let mut mr_mode = dattr.mr_mode;
            if mr_mode == sys::FI_MR_BASIC {
                mr_mode = sys::FI_MR_VIRT_ADDR | sys::FI_MR_PROV_KEY | sys::FI_MR_ALLOCATED;
            }
            let max_msg = ep_attr.max_msg_size.max(4096);
            let depth = if tx_attr.size == 0 {
                READ_DEPTH
            } else {
                tx_attr.size.clamp(1, READ_DEPTH)
            };
            (
                mr_mode,
                dattr.data_progress == sys::FI_PROGRESS_MANUAL,
                max_msg,
                depth,
            )
        };
        let mut name = vec![0u8; 256];
        let mut len = name.len();
        // SAFETY: getname writes at most `len` bytes into `name` and sets
        // `len` to the name's size (retried once with that size if larger).
        let rc = unsafe {
            let cm = &*(*raw.ep).cm;
            let Some(getname) = cm.getname else {
                return Err(fail("fi_getname (missing)", -(sys::FI_ENOSYS as isize)));
            };
            let fidp = &mut (*raw.ep).fid as *mut sys::fid;
            let mut rc = getname(fidp, name.as_mut_ptr().cast(), &mut len);
            if rc == -(sys::FI_ETOOSMALL) && len <= MAX_NAME {
                name.resize(len, 0);
                rc = getname(fidp, name.as_mut_ptr().cast(), &mut len);
            }
            rc
        };
        if rc != 0 {
            return Err(fail("fi_getname", rc as isize));
        }
        name.truncate(len);
        Ok(Ok(Fabric {
            lib,
            raw: Mutex::new(raw),
            provider,
            why,
            mr_mode,
            manual_progress,
            max_msg,
            depth,
            name,
            keep: Mutex::new(None),
            region: Mutex::new(None),
            next_op: AtomicU64::new(1),
            last_poll: AtomicU64::new(0),
            held_since: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }

    fn lock(&self) -> RawGuard<'_> {
        let guard = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        let now = (self.epoch.elapsed().as_nanos() as u64).max(1);
        self.held_since.store(now, Ordering::Relaxed);
        RawGuard {
            guard,
            held_since: &self.held_since,
        }
    }

    /// True if one call into the provider has lasted longer than `limit`:
    /// calls post or poll and return in microseconds, so one that does not
    /// return is stuck for good (a shared-memory provider spinning on a
    /// lock that a killed peer process held, say). The endpoint cannot be
    /// used again; the caller moves objects another way.
    pub(crate) fn wedged(&self, limit: Duration) -> bool {
        let since = self.held_since.load(Ordering::Relaxed);
        since != 0
            && (self.epoch.elapsed().as_nanos() as u64).saturating_sub(since)
                > limit.as_nanos() as u64
    }

    /// Registers the node's arena for remote reads by peers and as the
    /// destination of this node's reads; returns what the node publishes.
    /// Once per fabric. The fabric keeps the arena mapped for as long as
    /// it exists: peers read it at any time, without asking.
    pub(crate) fn register_arena(
        &self,
        arena: std::sync::Arc<crate::object_store::Arena>,
    ) -> Result<FabricAddr, FabricError> {
        let (ptr, len) = (arena.base_ptr(), arena.len());
        *self.keep.lock().unwrap_or_else(|p| p.into_inner()) = Some(arena);
        // SAFETY: `keep` holds the mapping for the fabric's whole life.
        unsafe { self.register_raw(ptr, len) }
    }

    /// Registers a buffer that lives as long as the process (the bench's
    /// ceiling, tests); hands it back for use as a read destination.
    pub(crate) fn register_static(
        &self,
        region: &'static mut [u8],
    ) -> Result<(FabricAddr, &'static mut [u8]), FabricError> {
        // SAFETY: a 'static buffer is valid for the process's life.
        let addr = unsafe { self.register_raw(region.as_mut_ptr(), region.len()) }?;
        Ok((addr, region))
    }

    /// Registers `len` bytes at `ptr`. Once per fabric.
    ///
    /// # Safety
    /// The region must stay mapped, readable and writable for as long as
    /// this `Fabric` exists: peers read it at any time, without asking.
    unsafe fn register_raw(&self, ptr: *mut u8, len: usize) -> Result<FabricAddr, FabricError> {
        let mut raw = self.lock();
        if !raw.mr.is_null() {
            return Err(err("the arena is registered already"));
        }
        let requested_key = if self.mr_mode & sys::FI_MR_PROV_KEY != 0 {
            0
        } else {
            // Unique per node and run, so a stale key cannot match.
            crate::ids::random_u64() & 0xffff_ffff
        };
        let fail = |what: &str, rc: isize| {
            err(format!(
                "libfabric provider {}: {what} failed: {}",
                self.provider,
                strerror(self.lib, rc)
            ))
        };
        // SAFETY: the domain is open; the region is valid for `len` bytes
        // for the fabric's life (this function's contract); the MR handle
        // is written through a valid out-pointer.
        unsafe {
            let mrops = &*(*raw.domain).mr;
            let Some(reg) = mrops.reg else {
                return Err(fail("fi_mr_reg (missing)", -(sys::FI_ENOSYS as isize)));
            };
            let mut mr = std::ptr::null_mut();
            let rc = reg(
                &mut (*raw.domain).fid,
                ptr.cast(),
                len,
                sys::FI_REMOTE_READ | sys::FI_READ,
                0,
                requested_key,
                0,
                &mut mr,
                std::ptr::null_mut(),
            );
            if rc != 0 {
                return Err(fail("fi_mr_reg of the object store", rc as isize));
            }
            raw.mr = mr;
            if self.mr_mode & sys::FI_MR_ENDPOINT != 0 {
                let ops = &*(*mr).fid.ops;
                let (Some(bind), Some(control)) = (ops.bind, ops.control) else {
                    return Err(fail("fi_mr_bind (missing)", -(sys::FI_ENOSYS as isize)));
                };
                let rc = bind(&mut (*mr).fid, &mut (*raw.ep).fid, 0);
                if rc != 0 {
                    return Err(fail("fi_mr_bind", rc as isize));
                }
                let rc = control(&mut (*mr).fid, sys::FI_ENABLE, std::ptr::null_mut());
                if rc != 0 {
                    return Err(fail("fi_mr_enable", rc as isize));
                }
            }
            raw.desc = (*mr).mem_desc;
            let key = (*mr).key;
            let base = if self.mr_mode & sys::FI_MR_VIRT_ADDR != 0 {
                ptr as u64
            } else {
                0
            };
            *self.region.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((ptr as usize, len, base as usize));
            Ok(FabricAddr {
                provider: self.provider.clone(),
                name: self.name.clone(),
                base,
                key,
                len: len as u64,
            })
        }
    }

    /// The fi_addr of a peer, inserting it into the address vector once.
    fn peer(&self, raw: &mut Raw, peer: &FabricAddr) -> Result<sys::fi_addr_t, FabricError> {
        if let Some(a) = raw.peers.get(&peer.name) {
            return Ok(*a);
        }
        if peer.name.is_empty() || peer.name.len() > MAX_NAME {
            return Err(err(format!(
                "a peer's fabric address has {} bytes",
                peer.name.len()
            )));
        }
        let mut addr: sys::fi_addr_t = sys::FI_ADDR_UNSPEC;
        // SAFETY: the AV is open; the name buffer is valid for its length
        // (the provider reads exactly one address of its own format from
        // it: names come from the same provider's fi_getname, which the
        // caller checks by the provider's name); one fi_addr is written.
        let rc = unsafe {
            let ops = &*(*raw.av).ops;
            let Some(insert) = ops.insert else {
                return Err(err("fi_av_insert missing"));
            };
            insert(
                raw.av,
                peer.name.as_ptr().cast(),
                1,
                &mut addr,
                0,
                std::ptr::null_mut(),
            )
        };
        if rc != 1 {
            return Err(err(format!(
                "libfabric provider {}: fi_av_insert of a peer failed: {}",
                self.provider,
                if rc < 0 {
                    strerror(self.lib, rc as isize)
                } else {
                    "address refused".into()
                }
            )));
        }
        raw.peers.insert(peer.name.clone(), addr);
        Ok(addr)
    }

    /// Removes a peer from the address vector.
    fn forget_peer(&self, raw: &mut Raw, name: &[u8]) {
        let Some(mut addr) = raw.peers.remove(name) else {
            return;
        };
        // SAFETY: the AV is open and `addr` came from its insert.
        unsafe {
            let ops = &*(*raw.av).ops;
            if let Some(remove) = ops.remove {
                remove(raw.av, &mut addr, 1, 0);
            }
        }
    }

    /// Closes the endpoint and everything opened with it, so that the
    /// provider removes what it created (shared-memory files, sockets).
    /// Reads after this fail. An endpoint stuck in a provider call (see
    /// [`Fabric::wedged`]) is left as it is: waiting for it would hang.
    pub(crate) fn close(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut raw = loop {
            match self.raw.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        if raw.closed {
            return;
        }
        raw.closed = true;
        let fids: [*mut sys::fid; 6] = [
            raw.ep.cast(),
            raw.mr.cast(),
            raw.av.cast(),
            raw.cq.cast(),
            raw.domain.cast(),
            raw.fabric.cast(),
        ];
        for f in fids {
            if f.is_null() {
                continue;
            }
            // SAFETY: each handle was opened once and is closed once, the
            // endpoint before what it is bound to, under the lock.
            unsafe {
                if let Some(close) = (*(*f).ops).close {
                    close(f);
                }
            }
        }
    }

    /// Drains the CQ into `raw.done`; returns how many completions it read.
    fn poll(&self, raw: &mut Raw) -> usize {
        let mut n = 0;
        if raw.closed {
            return 0;
        }
        let mut entries = [sys::fi_cq_entry {
            op_context: std::ptr::null_mut(),
        }; 16];
        loop {
            // SAFETY: the CQ is open with FI_CQ_FORMAT_CONTEXT, whose entries
            // are `fi_cq_entry`; the buffer holds 16 of them.
            let rc = unsafe {
                let ops = &*(*raw.cq).ops;
                match ops.read {
                    Some(read) => read(raw.cq, entries.as_mut_ptr().cast(), entries.len()),
                    None => return n,
                }
            };
            if rc > 0 {
                for e in &entries[..rc as usize] {
                    if let Some(op) = op_of(raw, e.op_context) {
                        raw.done.insert(op, Ok(()));
                    }
                }
                n += rc as usize;
                continue;
            }
            if rc == -(sys::FI_EAVAIL as isize) {
                // SAFETY: a zeroed error entry is a valid input; the
                // provider fills it.
                let mut e: sys::fi_cq_err_entry = unsafe { std::mem::zeroed() };
                // SAFETY: as above; readerr and strerror are the CQ's own.
                let rc = unsafe {
                    let ops = &*(*raw.cq).ops;
                    match ops.readerr {
                        Some(readerr) => readerr(raw.cq, &mut e, 0),
                        None => return n,
                    }
                };
                if rc > 0 {
                    let msg = self.cq_strerror(raw, &e);
                    if let Some(op) = op_of(raw, e.op_context) {
                        raw.done.insert(op, Err(msg));
                    }
                    n += 1;
                    continue;
                }
            }
            return n;
        }
    }

    fn cq_strerror(&self, raw: &Raw, e: &sys::fi_cq_err_entry) -> String {
        let generic = strerror(self.lib, -(e.err as isize));
        // SAFETY: the CQ's strerror formats the provider's own error data,
        // which stays valid until the next CQ read (we hold the lock).
        let detail = unsafe {
            let ops = &*(*raw.cq).ops;
            match ops.strerror {
                Some(f) if ops.size > std::mem::offset_of!(sys::fi_ops_cq, strerror) => {
                    let mut buf = [0 as std::ffi::c_char; 256];
                    let p = f(
                        raw.cq,
                        e.prov_errno,
                        e.err_data,
                        buf.as_mut_ptr(),
                        buf.len(),
                    );
                    if p.is_null() {
                        String::new()
                    } else {
                        cstr(p)
                    }
                }
                _ => String::new(),
            }
        };
        if detail.is_empty() || detail == generic {
            generic
        } else {
            format!("{generic} ({detail})")
        }
    }

    /// Reads `dst.len()` bytes at `offset` of `peer`'s arena into `dst`,
    /// which must lie in this node's registered arena. Returns when every
    /// byte has landed; fails if the transfer makes no progress for
    /// `stall`, or as soon as `lost()` says the peer is gone (checked
    /// while reads are outstanding and nothing completes: a dead peer's
    /// provider may never answer). On error, [`FabricError::dirty`] says
    /// whether reads may still be landing in `dst`.
    pub(crate) fn read(
        &self,
        peer: &FabricAddr,
        peer_label: &str,
        offset: u64,
        dst: &mut [u8],
        stall: Duration,
        lost: &dyn Fn() -> bool,
    ) -> Result<(), FabricError> {
        let want = dst.len();
        let named = |m: String| {
            format!(
                "RDMA read of {want} bytes from {peer_label} over {} failed: {m}",
                self.provider
            )
        };
        if peer.provider != self.provider {
            return Err(err(named(format!(
                "the peer's provider is {}, this node's {}",
                peer.provider, self.provider
            ))));
        }
        let Some((start, len, _)) = *self.region.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Err(err(named("the arena is not registered".into())));
        };
        let d = dst.as_mut_ptr() as usize;
        if d < start || d + dst.len() > start + len {
            return Err(err(named(
                "destination outside the registered arena".into(),
            )));
        }
        let in_peer = offset
            .checked_add(dst.len() as u64)
            .is_some_and(|end| end <= peer.len);
        let Some(remote_base) = peer.base.checked_add(offset).filter(|_| in_peer) else {
            return Err(err(named(format!(
                "bytes {offset}+{want} are outside the peer's {}-byte store",
                peer.len
            ))));
        };
        let chunk = READ_CHUNK.min(self.max_msg).max(1);
        let total = dst.len();
        let mut next = 0usize; // next byte to post
        let mut posted: Vec<u64> = Vec::new();
        let mut failure: Option<String> = None;
        let mut last_progress = Instant::now();
        let mut spins = 0u32;
        loop {
            let mut progressed = false;
            {
                let mut raw = self.lock();
                if raw.closed {
                    return Err(err(named("the endpoint is closed".into())));
                }
                let fi_addr = match self.peer(&mut raw, peer) {
                    Ok(a) => a,
                    Err(e) => {
                        return Err(FabricError {
                            message: named(e.message),
                            dirty: false,
                        })
                    }
                };
                // Post while there is room.
                while failure.is_none() && next < total && posted.len() < self.depth {
                    let n = chunk.min(total - next);
                    let op = self.next_op.fetch_add(1, Ordering::Relaxed);
                    let mut ctx = Box::new([0u64; 8]);
                    let ctx_ptr = ctx.as_mut_ptr().cast::<c_void>();
                    raw.contexts.insert(op, ctx);
                    // SAFETY: `dst[next..next + n]` is inside the registered
                    // region (checked above) and stays borrowed until its
                    // completion is reaped (this function does not return
                    // earlier except with `dirty`); the context block lives
                    // in `raw.contexts` until then; the remote range is the
                    // peer's published registration.
                    let rc = unsafe {
                        let rma = &*(*raw.ep).rma;
                        match rma.read {
                            Some(read) => read(
                                raw.ep,
                                dst.as_mut_ptr().add(next).cast(),
                                n,
                                raw.desc,
                                fi_addr,
                                remote_base + next as u64,
                                peer.key,
                                ctx_ptr,
                            ),
                            None => -(sys::FI_ENOSYS as isize),
                        }
                    };
                    if rc == 0 {
                        posted.push(op);
                        next += n;
                        progressed = true;
                    } else {
                        raw.contexts.remove(&op);
                        if rc != -(sys::FI_EAGAIN as isize) {
                            failure = Some(format!("fi_read: {}", strerror(self.lib, rc)));
                        }
                        break; // back-pressure: poll, then post again
                    }
                }
                if self.poll(&mut raw) > 0 {
                    progressed = true;
                }
                posted.retain(|op| match raw.done.remove(op) {
                    Some(r) => {
                        raw.contexts.remove(op);
                        if let Err(e) = r {
                            failure.get_or_insert(e);
                        }
                        false
                    }
                    None => true,
                });
            }
            self.last_poll
                .store(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if posted.is_empty() && (next >= total || failure.is_some()) {
                return match failure {
                    None => Ok(()),
                    Some(m) => {
                        // A connection-oriented provider may have dropped
                        // its connection to the peer with the error: the
                        // next read starts from a fresh address.
                        self.forget_peer(&mut self.lock(), &peer.name);
                        Err(err(named(m)))
                    }
                };
            }
            let quiet = last_progress.elapsed();
            let gone =
                !progressed && quiet > Duration::from_millis(20) && spins % 256 == 0 && lost();
            if progressed {
                last_progress = Instant::now();
                spins = 0;
            } else if quiet > stall || gone {
                // The posted reads still target `dst`: the caller must not
                // reuse it.
                let mut raw = self.lock();
                for op in &posted {
                    raw.abandon(*op);
                }
                let why = if gone {
                    format!("the peer was lost with {} reads in flight", posted.len())
                } else {
                    format!(
                        "no progress for {stall:.0?} with {} reads in flight",
                        posted.len()
                    )
                };
                drop(raw);
                self.forget_peer(&mut self.lock(), &peer.name);
                return Err(FabricError {
                    message: named(why),
                    dirty: true,
                });
            } else {
                spins = spins.wrapping_add(1);
                if spins > 64 {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Drives the provider's progress for reads of this node's arena by
    /// peers, for providers that make progress only when polled. Runs for
    /// the process's life; stays idle while readers are polling anyway.
    pub(crate) fn progress(&self) {
        if !self.manual_progress {
            return;
        }
        // A remote read of this node's arena completes nothing here, so
        // activity is read from the time a poll takes: an idle poll returns
        // in a microsecond or so, one that served a peer (sent its bytes)
        // takes longer. Busy (yielding) while peers are served, then
        // backing off to a millisecond: a peer's read waits at most that
        // long to start, and an idle node costs next to nothing.
        let poll_once = || {
            let t = Instant::now();
            let n = {
                let mut raw = self.lock();
                self.poll(&mut raw)
            };
            (n, t.elapsed())
        };
        let mut idle_polls: Vec<Duration> = (0..32).map(|_| poll_once().1).collect();
        idle_polls.sort();
        let busy_above = idle_polls[idle_polls.len() / 2] * 4 + Duration::from_micros(2);
        let mut idle = Duration::ZERO;
        loop {
            let since_reader = self
                .epoch
                .elapsed()
                .as_nanos()
                .saturating_sub(self.last_poll.load(Ordering::Relaxed) as u128);
            // Readers on this node poll as they go; stay out of their way.
            if since_reader > 1_000_000 {
                let (n, took) = poll_once();
                if n > 0 || took > busy_above {
                    idle = Duration::ZERO;
                }
            }
            if idle.is_zero() {
                std::thread::yield_now();
            } else {
                std::thread::sleep(idle);
            }
            idle = (idle + Duration::from_micros(20)).min(Duration::from_millis(1));
        }
    }

    /// Whether the provider needs a progress thread.
    pub(crate) fn manual_progress(&self) -> bool {
        self.manual_progress
    }
}

/// The endpoint lock, timing how long it is held.
struct RawGuard<'a> {
    guard: std::sync::MutexGuard<'a, Raw>,
    held_since: &'a AtomicU64,
}

impl std::ops::Deref for RawGuard<'_> {
    type Target = Raw;
    fn deref(&self) -> &Raw {
        &self.guard
    }
}

impl std::ops::DerefMut for RawGuard<'_> {
    fn deref_mut(&mut self) -> &mut Raw {
        &mut self.guard
    }
}

impl Drop for RawGuard<'_> {
    fn drop(&mut self) {
        self.held_since.store(0, Ordering::Relaxed);
    }
}

impl Raw {
    /// Forgets an operation that will never be waited for; its context
    /// block is kept (leaked) since the provider may still use it.
    fn abandon(&mut self, op: u64) {
        if let Some(ctx) = self.contexts.remove(&op) {
            std::mem::forget(ctx);
        }
        self.done.remove(&op);
    }
}

/// The operation whose context block is at `ctx`.
fn op_of(raw: &Raw, ctx: *mut c_void) -> Option<u64> {
    raw.contexts
        .iter()
        .find(|(_, c)| c.as_ptr() as *mut c_void == ctx)
        .map(|(op, _)| *op)
}

/// Gives a string-addressed endpoint the name `name`, keeping the
/// provider's scheme (`<scheme>://<name>`).
///
/// # Safety
/// `info` must be a valid fi_info owned by the caller (from fi_dupinfo).
unsafe fn rename_str_addr(info: *mut sys::fi_info, name: &str) {
    // SAFETY: the caller's contract; the string is NUL-terminated when set.
    unsafe {
        if (*info).addr_format != sys::FI_ADDR_STR || (*info).src_addr.is_null() {
            return;
        }
        let old = cstr((*info).src_addr.cast());
        let Some(scheme_end) = old.find("://") else {
            return;
        };
        let Ok(new) = std::ffi::CString::new(format!("{}{name}", &old[..scheme_end + 3])) else {
            return;
        };
        let copy = libc::strdup(new.as_ptr());
        if copy.is_null() {
            return;
        }
        libc::free((*info).src_addr);
        (*info).src_addr = copy.cast();
        (*info).src_addrlen = new.as_bytes_with_nul().len();
    }
}

/// A live fi_getinfo result, freed on drop.
struct InfoList {
    lib: &'static sys::Lib,
    head: *mut sys::fi_info,
    entries: Vec<*mut sys::fi_info>,
}

impl Drop for InfoList {
    fn drop(&mut self) {
        if !self.head.is_null() {
            // SAFETY: the head of a list from fi_getinfo, freed once.
            unsafe { (self.lib.freeinfo)(self.head) };
        }
    }
}

/// One fi_getinfo call: RDM endpoints with RMA reads and `comm`, bound to
/// `node` when given (`FI_SOURCE`).
fn query(
    lib: &'static sys::Lib,
    version: u32,
    comm: u64,
    node: Option<&CStr>,
) -> Result<InfoList, FabricError> {
    // SAFETY: fi_dupinfo(NULL) is fi_allocinfo: a zeroed fi_info with every
    // attribute struct allocated by the library, freed by fi_freeinfo.
    let hints = InfoList::new(lib, unsafe { (lib.dupinfo)(std::ptr::null()) });
    if hints.head.is_null() {
        return Err(err("fi_allocinfo failed (out of memory)"));
    }
    // SAFETY: writing plain fields of the library-allocated hints.
    unsafe {
        let h = hints.head;
        (*h).caps = sys::FI_RMA | sys::FI_READ | sys::FI_REMOTE_READ | comm;
        (*h).mode = sys::FI_CONTEXT | sys::FI_CONTEXT2;
        (*(*h).ep_attr).type_ = sys::FI_EP_RDM;
        let d = &mut *(*h).domain_attr;
        d.mr_mode = sys::FI_MR_LOCAL
            | sys::FI_MR_VIRT_ADDR
            | sys::FI_MR_ALLOCATED
            | sys::FI_MR_PROV_KEY
            | sys::FI_MR_ENDPOINT;
        d.threading = sys::FI_THREAD_DOMAIN;
        d.av_type = sys::FI_AV_TABLE;
    }
    let mut out = std::ptr::null_mut();
    // SAFETY: valid hints; a NUL-terminated node name or NULL; the result
    // list is written to `out` and freed by the returned InfoList.
    let rc = unsafe {
        (lib.getinfo)(
            version,
            node.map_or(std::ptr::null(), |n| n.as_ptr()),
            std::ptr::null(),
            if node.is_some() { sys::FI_SOURCE } else { 0 },
            hints.head,
            &mut out,
        )
    };
    if rc != 0 {
        return Ok(InfoList::new(lib, std::ptr::null_mut()));
    }
    Ok(InfoList::new(lib, out))
}

/// The candidate endpoints, best first.
fn getinfo(
    lib: &'static sys::Lib,
    version: u32,
    opts: &OpenOptions,
) -> Result<InfoList, FabricError> {
    // Across hosts the provider must say it reaches other hosts. On one
    // host nothing is asked: shared-memory providers may not list
    // FI_LOCAL_COMM (shm in 1.17 refuses it), yet serve it.
    let comm = if opts.single_host {
        0
    } else {
        sys::FI_REMOTE_COMM
    };
    // Network providers bind to the node's advertised address; those that
    // address otherwise (shared memory) refuse it, so ask both ways and
    // keep from the second only providers the first lacked.
    let node = std::ffi::CString::new(opts.ip.to_string()).map_err(|e| err(e.to_string()))?;
    let mut list = query(lib, version, comm, Some(&node))?;
    let unbound = query(lib, version, comm, None)?;
    // On one host, a provider that cannot reach other hosts at all is
    // confined to this one (shared memory: one copy between processes):
    // try it first, as it names itself (given an IP, it would take that
    // as its name, the same in every process of the host).
    let remote = if opts.single_host {
        query(lib, version, sys::FI_REMOTE_COMM, None)?.providers()
    } else {
        Vec::new()
    };
    let confined = |p: &*mut sys::fi_info| opts.single_host && !remote.contains(&prov_of(*p));
    let mut entries: Vec<_> = unbound.walk().into_iter().filter(confined).collect();
    let bound = list.walk();
    let bound_provs: Vec<String> = bound.iter().map(|p| prov_of(*p)).collect();
    entries.extend(bound.into_iter().filter(|p| !confined(p)));
    // Then providers that cannot bind to an IP at all.
    entries.extend(
        unbound
            .walk()
            .into_iter()
            .filter(|p| !confined(p) && !bound_provs.contains(&prov_of(*p))),
    );
    list.entries = entries;
    list.chain(unbound);
    Ok(list)
}

fn prov_of(p: *mut sys::fi_info) -> String {
    // SAFETY: an entry of a live fi_getinfo list, whose fabric_attr the
    // library sets.
    unsafe { cstr((*(*p).fabric_attr).prov_name) }
}

impl InfoList {
    fn new(lib: &'static sys::Lib, head: *mut sys::fi_info) -> InfoList {
        InfoList {
            lib,
            head,
            entries: Vec::new(),
        }
    }

    /// Every entry of the list, in order.
    fn walk(&self) -> Vec<*mut sys::fi_info> {
        let mut v = Vec::new();
        let mut p = self.head;
        while !p.is_null() {
            v.push(p);
            // SAFETY: walking a live list from fi_getinfo.
            p = unsafe { (*p).next };
        }
        v
    }

    fn providers(&self) -> Vec<String> {
        self.walk().into_iter().map(prov_of).collect()
    }

    /// Chains `other`'s list after ours so that one fi_freeinfo frees both
    /// (its entries stay valid as long as `self`).
    fn chain(&mut self, mut other: InfoList) {
        let h = std::mem::replace(&mut other.head, std::ptr::null_mut());
        if h.is_null() {
            return;
        }
        match self.walk().last() {
            // SAFETY: the tail of our own live list.
            Some(tail) => unsafe { (**tail).next = h },
            None => self.head = h,
        }
    }
}

fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string owned by libfabric.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn strerror(lib: &sys::Lib, rc: isize) -> String {
    let code = (-rc).clamp(0, i32::MAX as isize) as c_int;
    // SAFETY: fi_strerror returns a static string for any code.
    let p = unsafe { (lib.strerror)(code) };
    format!("{} ({rc})", cstr(p))
}

#[cfg(test)]
mod tests;
