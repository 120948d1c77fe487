//! Opening the endpoint: asking `fi_getinfo` what the node offers,
//! choosing a provider by its capabilities (never by name; software
//! providers only when asked for), and opening the fabric, domain, CQ, AV
//! and endpoint with the memory-registration mode the provider wants.

use super::*;

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
