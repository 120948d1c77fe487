//! The slice of libfabric's C ABI (1.x) that the data plane uses, and the
//! loader that finds `libfabric.so.1` at run time.
//!
//! Written by hand from the 1.17 headers (`rdma/fabric.h`, `fi_domain.h`,
//! `fi_endpoint.h`, `fi_eq.h`, `fi_rma.h`, `fi_cm.h`) rather than generated
//! at build time, so that `cargo build` needs neither libfabric's headers
//! nor libclang, and one binary uses whichever libfabric the site provides
//! (HPC centres build their own, for their network). The layouts are
//! checked against the real headers by the `fabric_abi` test whenever the
//! headers are installed (`make test` installs them).
//!
//! Only five functions are exported by the library: everything else
//! (`fi_domain`, `fi_endpoint`, `fi_read`, `fi_cq_read`, `fi_close`, ...)
//! is a `static inline` in the headers that calls through the ops tables
//! each object carries, and [`super`] does the same through these structs.
//! libfabric only ever appends to its attribute structs and ops tables, and
//! every such struct here is allocated by the library (`fi_dupinfo`), never
//! by us, so a newer library's larger structs are read correctly; ops are
//! checked against the table's `size` before use, as `FI_CHECK_OP` does.

#![allow(non_camel_case_types, dead_code)]

use std::ffi::{c_char, c_int, c_void};

pub(crate) type fi_addr_t = u64;
pub(crate) type ssize_t = isize;

pub(crate) const FI_MAJOR_VERSION: u32 = 1;
pub(crate) const FI_MINOR_VERSION: u32 = 17;
pub(crate) const fn fi_version(major: u32, minor: u32) -> u32 {
    (major << 16) | minor
}

// Capabilities and flags (fabric.h).
pub(crate) const FI_MSG: u64 = 1 << 1;
pub(crate) const FI_RMA: u64 = 1 << 2;
pub(crate) const FI_READ: u64 = 1 << 8;
pub(crate) const FI_WRITE: u64 = 1 << 9;
pub(crate) const FI_RECV: u64 = 1 << 10;
pub(crate) const FI_SEND: u64 = 1 << 11;
pub(crate) const FI_TRANSMIT: u64 = FI_SEND;
pub(crate) const FI_REMOTE_READ: u64 = 1 << 12;
pub(crate) const FI_REMOTE_WRITE: u64 = 1 << 13;
pub(crate) const FI_HMEM: u64 = 1 << 47;
pub(crate) const FI_LOCAL_COMM: u64 = 1 << 51;
pub(crate) const FI_REMOTE_COMM: u64 = 1 << 52;
pub(crate) const FI_SOURCE: u64 = 1 << 57;
pub(crate) const FI_CONTEXT: u64 = 1 << 59;
pub(crate) const FI_CONTEXT2: u64 = 1 << 52;
pub(crate) const FI_ADDR_UNSPEC: fi_addr_t = u64::MAX;

// mr_mode bits.
pub(crate) const FI_MR_LOCAL: c_int = 1 << 2;
pub(crate) const FI_MR_RAW: c_int = 1 << 3;
pub(crate) const FI_MR_VIRT_ADDR: c_int = 1 << 4;
pub(crate) const FI_MR_ALLOCATED: c_int = 1 << 5;
pub(crate) const FI_MR_PROV_KEY: c_int = 1 << 6;
pub(crate) const FI_MR_MMU_NOTIFY: c_int = 1 << 7;
pub(crate) const FI_MR_RMA_EVENT: c_int = 1 << 8;
pub(crate) const FI_MR_ENDPOINT: c_int = 1 << 9;
pub(crate) const FI_MR_HMEM: c_int = 1 << 10;
/// The legacy basic mode (1.4 and before): virtual addresses, provider
/// keys and allocated memory, all at once.
pub(crate) const FI_MR_BASIC: c_int = 1;
pub(crate) const FI_MR_SCALABLE: c_int = 2;

// Enums, as C ints.
pub(crate) const FI_EP_RDM: c_int = 3;
pub(crate) const FI_PROGRESS_AUTO: c_int = 1;
pub(crate) const FI_PROGRESS_MANUAL: c_int = 2;
pub(crate) const FI_THREAD_SAFE: c_int = 1;
pub(crate) const FI_THREAD_DOMAIN: c_int = 3;
pub(crate) const FI_AV_TABLE: c_int = 2;
pub(crate) const FI_WAIT_NONE: c_int = 0;
pub(crate) const FI_CQ_FORMAT_CONTEXT: c_int = 1;
pub(crate) const FI_ENABLE: c_int = 6;
pub(crate) const FI_ADDR_STR: u32 = 9;

// Errors (fi_errno.h): positive here, returned negated.
pub(crate) const FI_EAGAIN: c_int = libc::EAGAIN;
pub(crate) const FI_ENODATA: c_int = libc::ENODATA;
pub(crate) const FI_ENOSYS: c_int = libc::ENOSYS;
pub(crate) const FI_ECANCELED: c_int = libc::ECANCELED;
pub(crate) const FI_EAVAIL: c_int = 259;
pub(crate) const FI_ETOOSMALL: c_int = 257;

#[repr(C)]
pub(crate) struct fid {
    pub fclass: usize,
    pub context: *mut c_void,
    pub ops: *mut fi_ops,
}

#[repr(C)]
pub(crate) struct fi_ops {
    pub size: usize,
    pub close: Option<unsafe extern "C" fn(*mut fid) -> c_int>,
    pub bind: Option<unsafe extern "C" fn(*mut fid, *mut fid, u64) -> c_int>,
    pub control: Option<unsafe extern "C" fn(*mut fid, c_int, *mut c_void) -> c_int>,
    pub ops_open: *mut c_void,
    pub tostr: *mut c_void,
    pub ops_set: *mut c_void,
}

#[repr(C)]
pub(crate) struct fi_tx_attr {
    pub caps: u64,
    pub mode: u64,
    pub op_flags: u64,
    pub msg_order: u64,
    pub comp_order: u64,
    pub inject_size: usize,
    pub size: usize,
    pub iov_limit: usize,
    pub rma_iov_limit: usize,
    pub tclass: u32,
}

#[repr(C)]
pub(crate) struct fi_rx_attr {
    pub caps: u64,
    pub mode: u64,
    pub op_flags: u64,
    pub msg_order: u64,
    pub comp_order: u64,
    pub total_buffered_recv: usize,
    pub size: usize,
    pub iov_limit: usize,
}

#[repr(C)]
pub(crate) struct fi_ep_attr {
    pub type_: c_int,
    pub protocol: u32,
    pub protocol_version: u32,
    pub max_msg_size: usize,
    pub msg_prefix_size: usize,
    pub max_order_raw_size: usize,
    pub max_order_war_size: usize,
    pub max_order_waw_size: usize,
    pub mem_tag_format: u64,
    pub tx_ctx_cnt: usize,
    pub rx_ctx_cnt: usize,
    pub auth_key_size: usize,
    pub auth_key: *mut u8,
}

#[repr(C)]
pub(crate) struct fi_domain_attr {
    pub domain: *mut fid_domain,
    pub name: *mut c_char,
    pub threading: c_int,
    pub control_progress: c_int,
    pub data_progress: c_int,
    pub resource_mgmt: c_int,
    pub av_type: c_int,
    pub mr_mode: c_int,
    pub mr_key_size: usize,
    pub cq_data_size: usize,
    pub cq_cnt: usize,
    pub ep_cnt: usize,
    pub tx_ctx_cnt: usize,
    pub rx_ctx_cnt: usize,
    pub max_ep_tx_ctx: usize,
    pub max_ep_rx_ctx: usize,
    pub max_ep_stx_ctx: usize,
    pub max_ep_srx_ctx: usize,
    pub cntr_cnt: usize,
    pub mr_iov_limit: usize,
    pub caps: u64,
    pub mode: u64,
    pub auth_key: *mut u8,
    pub auth_key_size: usize,
    pub max_err_data: usize,
    pub mr_cnt: usize,
    pub tclass: u32,
}

#[repr(C)]
pub(crate) struct fi_fabric_attr {
    pub fabric: *mut fid_fabric,
    pub name: *mut c_char,
    pub prov_name: *mut c_char,
    pub prov_version: u32,
    pub api_version: u32,
}

#[repr(C)]
pub(crate) struct fi_info {
    pub next: *mut fi_info,
    pub caps: u64,
    pub mode: u64,
    pub addr_format: u32,
    pub src_addrlen: usize,
    pub dest_addrlen: usize,
    pub src_addr: *mut c_void,
    pub dest_addr: *mut c_void,
    pub handle: *mut fid,
    pub tx_attr: *mut fi_tx_attr,
    pub rx_attr: *mut fi_rx_attr,
    pub ep_attr: *mut fi_ep_attr,
    pub domain_attr: *mut fi_domain_attr,
    pub fabric_attr: *mut fi_fabric_attr,
    pub nic: *mut c_void,
}

#[repr(C)]
pub(crate) struct fi_ops_fabric {
    pub size: usize,
    pub domain: Option<
        unsafe extern "C" fn(
            *mut fid_fabric,
            *mut fi_info,
            *mut *mut fid_domain,
            *mut c_void,
        ) -> c_int,
    >,
    pub passive_ep: *mut c_void,
    pub eq_open: *mut c_void,
    pub wait_open: *mut c_void,
    pub trywait: *mut c_void,
}

#[repr(C)]
pub(crate) struct fid_fabric {
    pub fid: fid,
    pub ops: *mut fi_ops_fabric,
    pub api_version: u32,
}

#[repr(C)]
pub(crate) struct fi_av_attr {
    pub type_: c_int,
    pub rx_ctx_bits: c_int,
    pub count: usize,
    pub ep_per_node: usize,
    pub name: *const c_char,
    pub map_addr: *mut c_void,
    pub flags: u64,
}

#[repr(C)]
pub(crate) struct fi_cq_attr {
    pub size: usize,
    pub flags: u64,
    pub format: c_int,
    pub wait_obj: c_int,
    pub signaling_vector: c_int,
    pub wait_cond: c_int,
    pub wait_set: *mut c_void,
}

#[repr(C)]
pub(crate) struct fi_ops_domain {
    pub size: usize,
    pub av_open: Option<
        unsafe extern "C" fn(
            *mut fid_domain,
            *mut fi_av_attr,
            *mut *mut fid_av,
            *mut c_void,
        ) -> c_int,
    >,
    pub cq_open: Option<
        unsafe extern "C" fn(
            *mut fid_domain,
            *mut fi_cq_attr,
            *mut *mut fid_cq,
            *mut c_void,
        ) -> c_int,
    >,
    pub endpoint: Option<
        unsafe extern "C" fn(*mut fid_domain, *mut fi_info, *mut *mut fid_ep, *mut c_void) -> c_int,
    >,
}

#[repr(C)]
pub(crate) struct fi_ops_mr {
    pub size: usize,
    #[allow(clippy::type_complexity)]
    pub reg: Option<
        unsafe extern "C" fn(
            *mut fid,
            *const c_void,
            usize,
            u64,
            u64,
            u64,
            u64,
            *mut *mut fid_mr,
            *mut c_void,
        ) -> c_int,
    >,
}

#[repr(C)]
pub(crate) struct fid_domain {
    pub fid: fid,
    pub ops: *mut fi_ops_domain,
    pub mr: *mut fi_ops_mr,
}

#[repr(C)]
pub(crate) struct fid_mr {
    pub fid: fid,
    pub mem_desc: *mut c_void,
    pub key: u64,
}

#[repr(C)]
pub(crate) struct fi_ops_av {
    pub size: usize,
    pub insert: Option<
        unsafe extern "C" fn(
            *mut fid_av,
            *const c_void,
            usize,
            *mut fi_addr_t,
            u64,
            *mut c_void,
        ) -> c_int,
    >,
    pub insertsvc: *mut c_void,
    pub insertsym: *mut c_void,
    pub remove: Option<unsafe extern "C" fn(*mut fid_av, *mut fi_addr_t, usize, u64) -> c_int>,
}

#[repr(C)]
pub(crate) struct fid_av {
    pub fid: fid,
    pub ops: *mut fi_ops_av,
}

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct fi_cq_entry {
    pub op_context: *mut c_void,
}

#[repr(C)]
pub(crate) struct fi_cq_err_entry {
    pub op_context: *mut c_void,
    pub flags: u64,
    pub len: usize,
    pub buf: *mut c_void,
    pub data: u64,
    pub tag: u64,
    pub olen: usize,
    pub err: c_int,
    pub prov_errno: c_int,
    pub err_data: *mut c_void,
    pub err_data_size: usize,
}

#[repr(C)]
pub(crate) struct fi_ops_cq {
    pub size: usize,
    pub read: Option<unsafe extern "C" fn(*mut fid_cq, *mut c_void, usize) -> ssize_t>,
    pub readfrom: *mut c_void,
    pub readerr: Option<unsafe extern "C" fn(*mut fid_cq, *mut fi_cq_err_entry, u64) -> ssize_t>,
    pub sread: *mut c_void,
    pub sreadfrom: *mut c_void,
    pub signal: *mut c_void,
    pub strerror: Option<
        unsafe extern "C" fn(
            *mut fid_cq,
            c_int,
            *const c_void,
            *mut c_char,
            usize,
        ) -> *const c_char,
    >,
}

#[repr(C)]
pub(crate) struct fid_cq {
    pub fid: fid,
    pub ops: *mut fi_ops_cq,
}

#[repr(C)]
pub(crate) struct fi_ops_cm {
    pub size: usize,
    pub setname: *mut c_void,
    pub getname: Option<unsafe extern "C" fn(*mut fid, *mut c_void, *mut usize) -> c_int>,
}

#[repr(C)]
pub(crate) struct fi_ops_rma {
    pub size: usize,
    #[allow(clippy::type_complexity)]
    pub read: Option<
        unsafe extern "C" fn(
            *mut fid_ep,
            *mut c_void,
            usize,
            *mut c_void,
            fi_addr_t,
            u64,
            u64,
            *mut c_void,
        ) -> ssize_t,
    >,
}

#[repr(C)]
pub(crate) struct fid_ep {
    pub fid: fid,
    pub ops: *mut c_void,
    pub cm: *mut fi_ops_cm,
    pub msg: *mut c_void,
    pub rma: *mut fi_ops_rma,
    pub tagged: *mut c_void,
    pub atomic: *mut c_void,
    pub collective: *mut c_void,
}

type GetinfoFn = unsafe extern "C" fn(
    u32,
    *const c_char,
    *const c_char,
    u64,
    *const fi_info,
    *mut *mut fi_info,
) -> c_int;
type FreeinfoFn = unsafe extern "C" fn(*mut fi_info);
type DupinfoFn = unsafe extern "C" fn(*const fi_info) -> *mut fi_info;
type FabricFn =
    unsafe extern "C" fn(*mut fi_fabric_attr, *mut *mut fid_fabric, *mut c_void) -> c_int;
type StrerrorFn = unsafe extern "C" fn(c_int) -> *const c_char;
type VersionFn = unsafe extern "C" fn() -> u32;

/// The exported functions used, resolved from the library found at run
/// time.
pub(crate) struct Lib {
    pub getinfo: GetinfoFn,
    pub freeinfo: FreeinfoFn,
    pub dupinfo: DupinfoFn,
    pub fabric: FabricFn,
    pub strerror: StrerrorFn,
    pub version: VersionFn,
}

/// Library names tried in order: the ABI-versioned name first (what a
/// site's module system puts on `LD_LIBRARY_PATH`), then the dev symlink.
const NAMES: [&str; 2] = ["libfabric.so.1\0", "libfabric.so\0"];

/// Loads libfabric once per process; the error says what was tried.
pub(crate) fn load() -> Result<&'static Lib, String> {
    static LIB: std::sync::OnceLock<Result<Lib, String>> = std::sync::OnceLock::new();
    LIB.get_or_init(open).as_ref().map_err(|e| e.clone())
}

fn open() -> Result<Lib, String> {
    let mut handle = std::ptr::null_mut();
    for name in NAMES {
        // SAFETY: a NUL-terminated name; dlopen has no other precondition.
        handle = unsafe { libc::dlopen(name.as_ptr().cast(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            break;
        }
    }
    if handle.is_null() {
        return Err(
            "libfabric.so.1 not found on the library path (load your site's libfabric module, or install libfabric1)"
                .into(),
        );
    }
    let sym = |name: &str| -> Result<*mut c_void, String> {
        let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: a live handle from dlopen and a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            Err(format!("libfabric lacks the symbol {name}"))
        } else {
            Ok(p)
        }
    };
    // SAFETY: each symbol is the libfabric function of that name, whose C
    // signature is the one the field declares (fabric.h); the handle is
    // never closed, so the pointers stay valid for the process's life.
    unsafe {
        Ok(Lib {
            getinfo: std::mem::transmute::<*mut c_void, GetinfoFn>(sym("fi_getinfo")?),
            freeinfo: std::mem::transmute::<*mut c_void, FreeinfoFn>(sym("fi_freeinfo")?),
            dupinfo: std::mem::transmute::<*mut c_void, DupinfoFn>(sym("fi_dupinfo")?),
            fabric: std::mem::transmute::<*mut c_void, FabricFn>(sym("fi_fabric")?),
            strerror: std::mem::transmute::<*mut c_void, StrerrorFn>(sym("fi_strerror")?),
            version: std::mem::transmute::<*mut c_void, VersionFn>(sym("fi_version")?),
        })
    }
}
