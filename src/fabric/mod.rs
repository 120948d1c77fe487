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
mod read;
mod setup;
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
