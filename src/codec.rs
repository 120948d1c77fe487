//! Byte formats, in one place so the wire format can change without touching
//! the rest: control messages (serde through bincode 2) and object blobs.
//!
//! # Object blobs
//! Every object, whether it travels inline in a message or sits in the shared
//! object store, is one self-describing blob:
//!
//! ```text
//! 0      4     5     6          8            16                 header_len
//! | magic | kind | pod | name_len | payload_len | type name | pad | payload |
//! ```
//!
//! The header is padded to 64 bytes so that, with 64-byte aligned store
//! allocations, the payload of a plain numeric vector is aligned for a
//! zero-copy `&[f64]` view. The type name lets `get` fail with a clear
//! type-mismatch error rather than decode garbage. Plain numeric vectors
//! (`Vec<u8>`, `Vec<f64>`, ...) skip serde and are stored as raw
//! little-endian elements, so a large `put` is one `memcpy`.

use crate::error::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::{Any, TypeId};

pub(crate) fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Serializes a control message or value with serde.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|e| Error::invalid(format!("cannot serialize value: {e}")))
}

/// Appends the serialization of `value` to `out`.
pub(crate) fn encode_append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("cannot serialize value: {e}")))
}

/// [`encode_append`] of at most `max` bytes: a longer encoding stops as
/// it passes the bound (nothing past it is copied) and fails, `out` left
/// as it was.
pub(crate) fn encode_append_within<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<()> {
    struct Within<'a> {
        out: &'a mut Vec<u8>,
        left: usize,
        over: bool,
    }
    impl std::io::Write for Within<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.write_all(b).map(|()| b.len())
        }
        fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
            if b.len() > self.left {
                self.over = true;
                return Err(std::io::Error::other("over the bound"));
            }
            self.left -= b.len();
            self.out.extend_from_slice(b);
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let start = out.len();
    let mut w = Within {
        out,
        left: max,
        over: false,
    };
    let r = bincode::serde::encode_into_std_write(value, &mut w, config());
    let over = w.over;
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            out.truncate(start);
            Err(Error::invalid(if over {
                format!("a message of more than {max} bytes, the most one frame carries")
            } else {
                format!("cannot serialize value: {e}")
            }))
        }
    }
}

/// Deserializes a control message or value; `what` names it in the error.
///
/// The bytes come from outside the process (a peer's frame, a store block),
/// so a length field in them must not decide how much is allocated: bincode
/// allocates a string's claimed length before it reads it. Each decode is
/// therefore limited by bincode's own claim accounting to [`decode_limit`]
/// of the bytes given. That accounting also counts every decoded number at
/// its size in memory (a one-byte varint `u64` claims 8 bytes), so the
/// limit leaves room for 16 claimed bytes per byte given, the most any
/// valid input claims (a `u128` in one byte); its const tiers (bincode's
/// limit is a const generic) grow by 4. Sequences and maps need no limit:
/// serde preallocates them cautiously (at most 1 MiB) and grows them only
/// as elements decode.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    fn tier<T: DeserializeOwned, const N: usize>(
        bytes: &[u8],
    ) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(bytes, config().with_limit::<N>())
    }
    const T0: usize = DECODE_TIER_0;
    let r = match decode_limit(bytes.len()) {
        T0 => tier::<T, T0>(bytes),
        n if n <= T0 << 2 => tier::<T, { T0 << 2 }>(bytes),
        n if n <= T0 << 4 => tier::<T, { T0 << 4 }>(bytes),
        n if n <= T0 << 6 => tier::<T, { T0 << 6 }>(bytes),
        n if n <= T0 << 8 => tier::<T, { T0 << 8 }>(bytes),
        n if n <= T0 << 10 => tier::<T, { T0 << 10 }>(bytes),
        n if n <= T0 << 12 => tier::<T, { T0 << 12 }>(bytes),
        n if n <= T0 << 14 => tier::<T, { T0 << 14 }>(bytes),
        n if n <= T0 << 16 => tier::<T, { T0 << 16 }>(bytes),
        n if n <= T0 << 18 => tier::<T, { T0 << 18 }>(bytes),
        n if n <= T0 << 20 => tier::<T, { T0 << 20 }>(bytes),
        n if n <= T0 << 22 => tier::<T, { T0 << 22 }>(bytes),
        _ => tier::<T, DECODE_TIER_MAX>(bytes),
    };
    match r {
        Ok((v, used)) if used == bytes.len() => Ok(v),
        // Bytes after a whole value: not what any encoder here writes (a
        // splice, a corrupted length), so not a message to act on.
        Ok((_, used)) => Err(Error::invalid(format!(
            "cannot decode {what}: {} bytes after its end",
            bytes.len() - used
        ))),
        Err(bincode::error::DecodeError::LimitExceeded) => Err(Error::invalid(format!(
            "cannot decode {what}: a length in its {} bytes claims more than they hold",
            bytes.len()
        ))),
        Err(e) => Err(Error::invalid(format!("cannot decode {what}: {e}"))),
    }
}

/// The smallest decode limit: 64 KiB.
const DECODE_TIER_0: usize = 64 << 10;
/// The largest (for inputs above 4 GiB): 1 TiB.
const DECODE_TIER_MAX: usize = DECODE_TIER_0 << 24;
/// Bytes bincode's accounting may claim per byte of valid input.
const CLAIM_PER_BYTE: usize = 16;

/// The most that the length fields in `len` bytes may make [`decode`]
/// allocate (strings and byte buffers, which bincode allocates before
/// reading them): 16 times `len` rounded up to a power of 4 times 64 KiB,
/// so at most 64 times the bytes given, and at least 64 KiB.
pub(crate) fn decode_limit(len: usize) -> usize {
    let want = len.saturating_mul(CLAIM_PER_BYTE);
    let mut limit = DECODE_TIER_0;
    while limit < want && limit < DECODE_TIER_MAX {
        limit <<= 2;
    }
    limit
}

const MAGIC: u32 = 0x3142_5252; // "RRB1"
const KIND_SERDE: u8 = 0;
const KIND_POD: u8 = 1;
const KIND_ERROR: u8 = 2;
const FIXED: usize = 16;
/// Alignment of blob headers and store allocations.
pub(crate) const ALIGN: usize = 64;

/// Element types stored raw, so they can be read without a copy
/// ([`get_view`](crate::get_view)).
pub trait Pod:
    Copy + Send + Sync + Serialize + DeserializeOwned + 'static + sealed::Sealed
{
    #[doc(hidden)]
    const CODE: u8;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! pod {
    ($($t:ty => $c:expr),*) => {$(
        impl sealed::Sealed for $t {}
        impl Pod for $t { const CODE: u8 = $c; }
    )*};
}
pod!(u8 => 1, i8 => 2, u16 => 3, i16 => 4, u32 => 5, i32 => 6, u64 => 7, i64 => 8, f32 => 9, f64 => 10);

/// If `value` is a `Vec<E>` of a [`Pod`] type, its raw bytes and element code.
fn pod_bytes<T: 'static>(value: &T) -> Option<(u8, &[u8])> {
    fn raw<E: Pod>(v: &dyn Any) -> Option<(u8, &[u8])> {
        let v = v.downcast_ref::<Vec<E>>()?;
        // SAFETY: E is a plain numeric type with no padding or invalid bit
        // patterns; the slice covers exactly the vector's initialized elements.
        let bytes = unsafe {
            std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(&v[..]))
        };
        Some((E::CODE, bytes))
    }
    let any = value as &dyn Any;
    raw::<u8>(any)
        .or_else(|| raw::<f64>(any))
        .or_else(|| raw::<f32>(any))
        .or_else(|| raw::<i64>(any))
        .or_else(|| raw::<u64>(any))
        .or_else(|| raw::<i32>(any))
        .or_else(|| raw::<u32>(any))
        .or_else(|| raw::<i16>(any))
        .or_else(|| raw::<u16>(any))
        .or_else(|| raw::<i8>(any))
}

/// The blob of a `Vec<E>` of the [`Pod`] type named `elem`
/// (`std::any::type_name::<E>()`), whose `bytes` raw elements `fill`
/// writes in place (one copy, straight into the blob). `None` when `elem`
/// names no `Pod` type or `bytes` is not a whole number of elements.
#[cfg(feature = "cuda")]
pub(crate) fn pod_blob_with<F>(elem: &str, bytes: usize, fill: F) -> Option<Result<Vec<u8>>>
where
    F: FnOnce(&mut [u8]) -> Result<()>,
{
    fn shape<E: Pod>(elem: &str) -> Option<(u8, &'static str, usize)> {
        (std::any::type_name::<E>() == elem).then(|| {
            (
                E::CODE,
                std::any::type_name::<Vec<E>>(),
                std::mem::size_of::<E>(),
            )
        })
    }
    let (code, type_name, size) = shape::<u8>(elem)
        .or_else(|| shape::<i8>(elem))
        .or_else(|| shape::<u16>(elem))
        .or_else(|| shape::<i16>(elem))
        .or_else(|| shape::<u32>(elem))
        .or_else(|| shape::<i32>(elem))
        .or_else(|| shape::<u64>(elem))
        .or_else(|| shape::<i64>(elem))
        .or_else(|| shape::<f32>(elem))
        .or_else(|| shape::<f64>(elem))?;
    if bytes % size != 0 {
        return None;
    }
    let h = header_len(type_name);
    let mut out = vec![0u8; h + bytes];
    write_header(&mut out[..h], KIND_POD, code, type_name, bytes);
    Some(fill(&mut out[h..]).map(|()| out))
}

fn header_len(type_name: &str) -> usize {
    (FIXED + type_name.len()).div_ceil(ALIGN) * ALIGN
}

fn write_header(dst: &mut [u8], kind: u8, pod: u8, type_name: &str, payload_len: usize) {
    dst[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    dst[4] = kind;
    dst[5] = pod;
    dst[6..8].copy_from_slice(&(type_name.len() as u16).to_le_bytes());
    dst[8..16].copy_from_slice(&(payload_len as u64).to_le_bytes());
    dst[FIXED..FIXED + type_name.len()].copy_from_slice(type_name.as_bytes());
    dst[FIXED + type_name.len()..header_len(type_name)].fill(0);
}

/// A value ready to be written as a blob, borrowing raw vectors so that
/// writing into the store is the only copy.
pub(crate) enum Encoded<'a> {
    Raw {
        pod: u8,
        type_name: &'static str,
        bytes: &'a [u8],
    },
    Blob(Vec<u8>),
}

impl Encoded<'_> {
    /// Total blob length.
    pub(crate) fn len(&self) -> usize {
        match self {
            Encoded::Raw {
                type_name, bytes, ..
            } => header_len(type_name) + bytes.len(),
            Encoded::Blob(b) => b.len(),
        }
    }

    /// Writes the blob into `dst`, which is exactly `len()` bytes.
    pub(crate) fn write_to(&self, dst: &mut [u8]) {
        match self {
            Encoded::Raw {
                pod,
                type_name,
                bytes,
            } => {
                let h = header_len(type_name);
                write_header(&mut dst[..h], KIND_POD, *pod, type_name, bytes.len());
                parallel_copy(&mut dst[h..], bytes);
            }
            Encoded::Blob(b) => parallel_copy(dst, b),
        }
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Encoded::Blob(b) => b,
            raw => {
                let mut v = vec![0u8; raw.len()];
                raw.write_to(&mut v);
                v
            }
        }
    }
}

/// Copies at or above this size are split across cores: one core cannot
/// saturate memory bandwidth (Ray's plasma copies with several threads too).
const PARALLEL_COPY_MIN: usize = 16 << 20;

/// `dst.copy_from_slice(src)`, split across up to 4 scoped threads when
/// large.
fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "parallel_copy: lengths differ");
    if src.len() < PARALLEL_COPY_MIN {
        dst.copy_from_slice(src);
        return;
    }
    // available_parallelism reads cgroup files: once per process.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4)
    });
    if threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    // Shares cut at 2 MiB boundaries of the address space, so no two
    // threads fault in the same huge page.
    let base = dst.as_ptr() as usize;
    let len = src.len();
    let chunk = len.div_ceil(threads).next_multiple_of(HUGE_PAGE);
    let cut = |at: usize| {
        if at == 0 {
            0
        } else {
            ((base + at).next_multiple_of(HUGE_PAGE) - base).min(len)
        }
    };
    let mut shares = Vec::with_capacity(threads);
    let (mut rest_d, mut rest_s, mut at) = (dst, src, 0);
    while !rest_s.is_empty() {
        let end = cut(at + chunk);
        let (d, dn) = std::mem::take(&mut rest_d).split_at_mut(end - at);
        let (c, cn) = rest_s.split_at(end - at);
        shares.push((d, c));
        (rest_d, rest_s, at) = (dn, cn, end);
    }
    std::thread::scope(|s| {
        let mut shares = shares.into_iter();
        let first = shares.next();
        for (d, c) in shares {
            s.spawn(move || fill(d, c));
        }
        if let Some((d, c)) = first {
            fill(d, c);
        }
    });
}

const HUGE_PAGE: usize = 2 << 20;

/// Copies `src` into `dst`, faulting cold pages in first with few system
/// calls (MADV_POPULATE_WRITE, Linux 5.14): a store page never touched
/// costs a trap per 4 KiB otherwise, which made the first large put of a
/// fresh store run at a fifth of memcpy speed.
///
/// The destination is taken 2 MiB (one huge page) at a time, one page of
/// each piece probed with `mincore`. A cold piece is faulted in and copied
/// at once, while the kernel's zeroes are still in cache (faulting a whole
/// share in first wrote them back to memory, to be read again by the
/// copy). A run of warm pieces is copied in one call, which lets memcpy
/// stream it past the cache (piece by piece, warm puts ran at two thirds
/// the speed). Older kernels refuse the advice; the copy then faults as
/// before.
fn fill(dst: &mut [u8], src: &[u8]) {
    let base = dst.as_ptr() as usize;
    let len = src.len();
    let (mut warm_from, mut off) = (0, 0);
    while off < len {
        let end = ((base + off + 1).next_multiple_of(HUGE_PAGE) - base).min(len);
        if !resident(base + off) {
            dst[warm_from..off].copy_from_slice(&src[warm_from..off]);
            populate(&mut dst[off..end]);
            dst[off..end].copy_from_slice(&src[off..end]);
            warm_from = end;
        }
        off = end;
    }
    dst[warm_from..].copy_from_slice(&src[warm_from..]);
}

const PAGE: usize = 4096;

/// Whether the page holding `addr` (in a live mapping) is resident.
fn resident(addr: usize) -> bool {
    let mut v = 0u8;
    // SAFETY: `addr` lies in a live mapping of this process (a slice the
    // caller holds); mincore reads no memory and writes one byte for the
    // one page asked.
    let rc = unsafe { libc::mincore((addr & !(PAGE - 1)) as *mut libc::c_void, PAGE, &mut v) };
    rc != 0 || v & 1 == 1
}

/// Faults `dst`'s pages in (from the start of its first page).
fn populate(dst: &mut [u8]) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let start = dst.as_mut_ptr() as usize & !(PAGE - 1);
    let end = dst.as_mut_ptr() as usize + dst.len();
    // SAFETY: the range is `dst`'s (from the start of its first page);
    // populating only faults pages in, it changes no byte of them.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE);
    }
}

/// Encodes a value as a blob.
pub(crate) fn encode_value<T: Serialize + 'static>(value: &T) -> Result<Encoded<'_>> {
    let type_name = std::any::type_name::<T>();
    if let Some((pod, bytes)) = pod_bytes(value) {
        return Ok(Encoded::Raw {
            pod,
            type_name,
            bytes,
        });
    }
    let h = header_len(type_name);
    let mut out = header_room(h);
    encode_append(value, &mut out)?;
    let payload_len = out.len() - h;
    write_header(&mut out[..h], KIND_SERDE, 0, type_name, payload_len);
    Ok(Encoded::Blob(out))
}

/// A blob's `h` header bytes (zero, written once the payload's length is
/// known), with room after them for a small payload: a small value's blob
/// is then one allocation, not one grown by a second.
fn header_room(h: usize) -> Vec<u8> {
    const SMALL: usize = 64;
    let mut out = Vec::with_capacity(h + SMALL);
    out.resize(h, 0);
    out
}

/// Encodes an error as a blob: whoever gets the object gets the error.
pub(crate) fn encode_error(err: &Error) -> Vec<u8> {
    let h = header_len("");
    let mut out = header_room(h);
    // An Error always serializes (plain strings and an enum).
    let _ = encode_append(err, &mut out);
    let payload_len = out.len() - h;
    write_header(&mut out[..h], KIND_ERROR, 0, "", payload_len);
    out
}

/// A parsed blob header.
pub(crate) struct Blob<'a> {
    kind: u8,
    pod: u8,
    type_name: &'a str,
    payload: &'a [u8],
    payload_offset: usize,
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Blob<'_>> {
    let corrupt = || Error::invalid("corrupt object blob");
    if bytes.len() < FIXED || bytes[0..4] != MAGIC.to_le_bytes() {
        return Err(corrupt());
    }
    let name_len = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
    let mut pl = [0u8; 8];
    pl.copy_from_slice(&bytes[8..16]);
    let payload_len = u64::from_le_bytes(pl) as usize;
    let type_name = bytes
        .get(FIXED..FIXED + name_len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(corrupt)?;
    let h = header_len(type_name);
    let payload = bytes
        .get(h..h.saturating_add(payload_len))
        .ok_or_else(corrupt)?;
    Ok(Blob {
        kind: bytes[4],
        pod: bytes[5],
        type_name,
        payload,
        payload_offset: h,
    })
}

impl<'a> Blob<'a> {
    /// The stored error, if this blob holds one.
    pub(crate) fn error(&self) -> Option<Error> {
        if self.kind != KIND_ERROR {
            return None;
        }
        Some(decode::<Error>(self.payload, "stored error").unwrap_or_else(|e| e))
    }

    fn check_type(&self, wanted: &str) -> Result<()> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        if self.type_name != wanted {
            return Err(Error::new(
                ErrorKind::TypeMismatch,
                format!(
                    "the object holds a `{}` but `{}` was asked for",
                    self.type_name, wanted
                ),
            ));
        }
        Ok(())
    }

    /// Offset of the raw elements of a pod vector within the blob, after
    /// checking the blob holds `Vec<E>`.
    pub(crate) fn pod_payload<E: Pod>(&self) -> Result<(usize, usize)> {
        self.check_type(std::any::type_name::<Vec<E>>())?;
        if self.kind != KIND_POD || self.pod != E::CODE {
            return Err(Error::invalid("object is not a raw numeric vector"));
        }
        Ok((
            self.payload_offset,
            self.payload.len() / std::mem::size_of::<E>(),
        ))
    }
}

/// Decodes a blob as `T`, or returns the error it holds.
pub(crate) fn decode_value<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T> {
    let blob = parse(bytes)?;
    blob.check_type(std::any::type_name::<T>())?;
    if blob.kind == KIND_POD {
        return decode_pod::<T>(&blob);
    }
    decode(blob.payload, std::any::type_name::<T>())
}

fn decode_pod<T: 'static>(blob: &Blob<'_>) -> Result<T> {
    fn copy<E: Pod>(payload: &[u8]) -> Box<dyn Any> {
        let n = payload.len() / std::mem::size_of::<E>();
        let mut v: Vec<E> = Vec::with_capacity(n);
        // SAFETY: the destination has capacity for n elements (n * size_of E
        // bytes, within payload); E accepts any bit pattern, so after the copy
        // the first n elements are initialized. Unaligned source is fine for a
        // byte copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                v.as_mut_ptr().cast::<u8>(),
                n * std::mem::size_of::<E>(),
            );
            v.set_len(n);
        }
        Box::new(v)
    }
    let p = blob.payload;
    let boxed: Box<dyn Any> = match blob.pod {
        1 => copy::<u8>(p),
        2 => copy::<i8>(p),
        3 => copy::<u16>(p),
        4 => copy::<i16>(p),
        5 => copy::<u32>(p),
        6 => copy::<i32>(p),
        7 => copy::<u64>(p),
        8 => copy::<i64>(p),
        9 => copy::<f32>(p),
        10 => copy::<f64>(p),
        _ => return Err(Error::invalid("corrupt object blob (element code)")),
    };
    boxed
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| Error::invalid("object element type does not match its type name"))
}

/// True when the type is one a `Vec<E>` fast path exists for.
pub(crate) fn is_pod_vec<T: 'static>() -> bool {
    let t = TypeId::of::<T>();
    [
        TypeId::of::<Vec<u8>>(),
        TypeId::of::<Vec<f64>>(),
        TypeId::of::<Vec<f32>>(),
        TypeId::of::<Vec<i64>>(),
        TypeId::of::<Vec<u64>>(),
        TypeId::of::<Vec<i32>>(),
        TypeId::of::<Vec<u32>>(),
        TypeId::of::<Vec<i16>>(),
        TypeId::of::<Vec<u16>>(),
        TypeId::of::<Vec<i8>>(),
    ]
    .contains(&t)
}

#[cfg(test)]
mod tests {
    /// An encoding bounded to `max` bytes: the same bytes within it; past
    /// it an error saying so, and `out` as it was.
    #[test]
    fn a_bounded_encoding_stops_at_its_bound() {
        let value = (1u64, vec![5u8; 1000]);
        let mut plain = vec![9u8; 3];
        super::encode_append(&value, &mut plain).unwrap();
        let mut within = vec![9u8; 3];
        super::encode_append_within(&value, &mut within, 2000).unwrap();
        assert_eq!(within, plain);
        let mut over = vec![9u8; 3];
        let e = super::encode_append_within(&value, &mut over, 999).unwrap_err();
        assert!(e.message().contains("more than 999 bytes"), "{e}");
        assert_eq!(over, vec![9u8; 3]);
    }

    /// A small value's blob is made once, with room for its payload after
    /// the header: not grown from the header's size by doubling (a header
    /// of 128 bytes would then leave a 256-byte buffer).
    #[test]
    fn a_small_blob_is_one_allocation_with_room_after_its_header() {
        let value = std::collections::BTreeMap::<String, Vec<u64>>::new();
        let name = std::any::type_name::<std::collections::BTreeMap<String, Vec<u64>>>();
        let h = super::header_len(name);
        assert_eq!(h, 128, "{name}: a header past the first 64 bytes");
        let blob = super::encode_value(&value).unwrap().into_vec();
        assert!(blob.len() > h && blob.len() <= h + 64, "{}", blob.len());
        assert_eq!(blob.capacity(), h + 64);
    }

    /// Host values of a device object come out as an ordinary blob of
    /// `Vec<E>`, written in place; only plain numeric whole elements.
    #[cfg(feature = "cuda")]
    #[test]
    fn pod_blob_from_raw_elements() {
        let v = [1.5f32, -2.0];
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let blob = pod_blob_with("f32", raw.len(), |dst| {
            dst.copy_from_slice(&raw);
            Ok(())
        })
        .expect("f32 is plain")
        .expect("filled");
        assert_eq!(decode_value::<Vec<f32>>(&blob).unwrap(), v.to_vec());
        let e = decode_value::<Vec<u32>>(&blob).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TypeMismatch, "{e}");
        assert!(pod_blob_with("f32", 7, |_| Ok(())).is_none(), "not whole");
        assert!(pod_blob_with("my::Point", 8, |_| Ok(())).is_none());
        let failed = pod_blob_with("u8", 3, |_| Err(Error::invalid("device gone")));
        assert!(matches!(failed, Some(Err(_))));
    }
    use super::*;

    #[test]
    fn parallel_copy_copies_every_byte() {
        let src: Vec<u8> = (0..(PARALLEL_COPY_MIN + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        // At offsets that put the shares' and pieces' cuts (at 2 MiB
        // boundaries of the address space) anywhere in the copy.
        for off in [0, 1, 4095, HUGE_PAGE - 3, HUGE_PAGE + 5] {
            let mut dst = vec![0xeeu8; src.len() + 2 * HUGE_PAGE];
            parallel_copy(&mut dst[off..off + src.len()], &src);
            assert!(dst[off..off + src.len()] == src[..], "offset {off}");
            assert!(dst[..off].iter().all(|b| *b == 0xee), "offset {off}");
            assert!(
                dst[off + src.len()..].iter().all(|b| *b == 0xee),
                "offset {off}"
            );
        }
        // Into fresh memory with every other 2 MiB piece touched: warm runs
        // and cold pieces (faulted in, then copied) alternate.
        let mut map = memmap2::MmapMut::map_anon(src.len() + 2 * HUGE_PAGE).unwrap();
        let base = map.as_ptr() as usize;
        let first = base.next_multiple_of(HUGE_PAGE) - base;
        for piece in (first..map.len()).step_by(2 * HUGE_PAGE) {
            map[piece] = 0xee;
        }
        for off in [0, 4097] {
            parallel_copy(&mut map[off..off + src.len()], &src);
            assert!(map[off..off + src.len()] == src[..], "offset {off}");
        }
    }

    #[test]
    fn serde_value_roundtrips_with_type_check() {
        let blob = encode_value(&(7u32, "x".to_string())).unwrap().into_vec();
        let v: (u32, String) = decode_value(&blob).unwrap();
        assert_eq!(v, (7, "x".to_string()));
        let err = decode_value::<u64>(&blob).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TypeMismatch);
        assert!(
            err.message().contains("(u32, alloc::string::String)"),
            "{err}"
        );
    }

    #[test]
    fn pod_vectors_are_raw_and_aligned() {
        let v: Vec<f64> = (0..1000).map(|i| i as f64 * 0.5).collect();
        let enc = encode_value(&v).unwrap();
        assert!(matches!(enc, Encoded::Raw { .. }));
        let blob = enc.into_vec();
        let parsed = parse(&blob).unwrap();
        let (off, n) = parsed.pod_payload::<f64>().unwrap();
        assert_eq!(off % ALIGN, 0);
        assert_eq!(n, 1000);
        let back: Vec<f64> = decode_value(&blob).unwrap();
        assert_eq!(back, v);
        assert_eq!(
            decode_value::<Vec<f32>>(&blob).unwrap_err().kind(),
            ErrorKind::TypeMismatch
        );
    }

    #[test]
    fn error_blob_decodes_to_error() {
        let e = Error::new(ErrorKind::TaskFailed, "boom");
        let blob = encode_error(&e);
        assert_eq!(decode_value::<u8>(&blob).unwrap_err(), e);
    }

    #[test]
    fn inflated_length_fields_are_refused_before_allocating() {
        // A string claiming 2^40 bytes in 9 bytes (varint tag 253: a u64).
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let e = decode::<String>(&bytes, "a name").unwrap_err();
        assert!(e.to_string().contains("claims more than they hold"), "{e}");
        // Inside a message, and as a byte buffer in a value.
        let mut frame = encode(&(7u32, String::from("x"))).unwrap();
        frame.truncate(1);
        frame.extend_from_slice(&bytes);
        assert!(decode::<(u32, String)>(&frame, "a frame").is_err());
        // A length just above the limit of its tier, and legit inputs that
        // fill their tier, at both ends of the tiers.
        for n in [0usize, 100, 4 << 10, (4 << 10) + 1, 1 << 20, 9 << 20] {
            let s = "a".repeat(n);
            let enc = encode(&s).unwrap();
            assert_eq!(decode::<String>(&enc, "s").unwrap(), s);
            assert!(decode_limit(enc.len()) >= enc.len());
            assert!(decode_limit(enc.len()) <= (64 * enc.len()).max(64 << 10));
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = encode(&(1u32, String::from("x"))).unwrap();
        assert!(decode::<(u32, String)>(&b, "v").is_ok());
        b.push(0);
        let e = decode::<(u32, String)>(&b, "v").unwrap_err();
        assert!(e.to_string().contains("1 bytes after its end"), "{e}");
    }

    #[test]
    fn decode_limits_leave_room_for_every_valid_input() {
        assert_eq!(decode_limit(0), 64 << 10);
        assert_eq!(decode_limit(4 << 10), 64 << 10);
        assert_eq!(decode_limit((4 << 10) + 1), 256 << 10);
        assert_eq!(decode_limit(1 << 30), 16 << 30);
        assert_eq!(decode_limit(usize::MAX), 1 << 40);
        // Inputs dense in one-byte numbers, each claimed at its size in
        // memory, at and around the tier boundaries: all decode.
        for n in [1usize, 4095, 4096, 4097, 16_383, 16_384, 65_536, 300_000] {
            let v: Vec<u64> = vec![1; n];
            let enc = encode(&v).unwrap();
            assert_eq!(decode::<Vec<u64>>(&enc, "v").unwrap(), v, "{n}");
            let w: Vec<(u16, bool, Option<u8>)> = vec![(1, true, None); n];
            let enc = encode(&w).unwrap();
            assert_eq!(
                decode::<Vec<(u16, bool, Option<u8>)>>(&enc, "w").unwrap(),
                w
            );
            let e: Vec<String> = vec![String::new(); n];
            let enc = encode(&e).unwrap();
            assert_eq!(decode::<Vec<String>>(&enc, "e").unwrap(), e);
        }
    }

    #[test]
    fn truncated_blob_is_an_error_not_a_panic() {
        let blob = encode_value(&vec![1u8; 100]).unwrap().into_vec();
        for cut in [0, 3, 15, 40, 100] {
            assert!(decode_value::<Vec<u8>>(&blob[..cut]).is_err());
        }
    }
}
