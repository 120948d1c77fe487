//! The framing that carries the messages of [`protocol`](crate::protocol)
//! between the processes of a cluster, and the streams under it:
//! Unix-domain sockets between processes of one node, TCP between nodes.
//! (The message types are re-exported here, so `transport::Msg` reads as
//! before.)
//!
//! Every connection carries length-prefixed frames (`u32` little-endian length,
//! then the message serialized by [`codec`](crate::codec)). One writer lock per
//! connection makes each frame a single `write` syscall; one reader thread per
//! connection hands decoded messages to a handler. Blocking sockets and a
//! thread per connection keep the latency path to two syscalls and one thread
//! wake-up per hop, which is what the sub-100 µs task round trip needs; the
//! number of connections per process is small (its raylet, the GCS, the
//! workers it leases, the owners it borrows from).
//!
//! Every connection, Unix or TCP, opens with the cluster's 16-byte secret
//! (generated when the cluster starts, passed to its processes in their
//! environment). A listener checks it on the connection's own thread, with a
//! bounded read, and drops a connection without it: two jobs, or two users,
//! sharing a node cannot reach each other's processes.
//!
//! The first message on a connection to a core worker's listener is
//! [`PeerMsg::Hello`], naming the connecting process, so that the listener can
//! attribute borrows and detect that process's death by end-of-stream.

use crate::codec;
use crate::error::{Error, Result};
pub(crate) use crate::protocol::*;
use nix::sys::socket::MsgFlags;
use serde::{Deserialize, Serialize};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Fingerprint of the protocol: a hash of what the messages are, the
/// type definitions in `protocol/` and the files defining the wire types
/// they nest (ids, resource sets, errors), read as tokens: comments and
/// layout do not count. Processes built from sources whose messages differ
/// refuse to join one cluster with a clear error (see
/// `Session::from_env_str`).
pub(crate) const PROTOCOL: u64 = {
    let mut h = FNV_OFFSET;
    h = schema_hash(h, include_str!("protocol/mod.rs").as_bytes());
    h = schema_hash(h, include_str!("protocol/raylet.rs").as_bytes());
    h = schema_hash(h, include_str!("protocol/gcs.rs").as_bytes());
    h = schema_hash(h, include_str!("protocol/peer.rs").as_bytes());
    h = schema_hash(h, include_str!("protocol/transfer.rs").as_bytes());
    h = schema_hash(h, include_str!("ids.rs").as_bytes());
    h = schema_hash(h, include_str!("resources.rs").as_bytes());
    schema_hash(h, include_str!("error.rs").as_bytes())
};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

const fn fnv1a_byte(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
}

const fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Folds Rust source into `h` token by token: comments (line, doc and
/// block) are skipped, whitespace counts only where it separates two words
/// (`pub enum`), string and char literals are taken as written.
const fn schema_hash(mut h: u64, src: &[u8]) -> u64 {
    let mut i = 0;
    let mut prev = b' ';
    let mut gap = false;
    while i < src.len() {
        let b = src[i];
        if b == b'/' && i + 1 < src.len() && src[i + 1] == b'/' {
            while i < src.len() && src[i] != b'\n' {
                i += 1;
            }
            gap = true;
            continue;
        }
        if b == b'/' && i + 1 < src.len() && src[i + 1] == b'*' {
            i += 2;
            while i + 1 < src.len() && !(src[i] == b'*' && src[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            gap = true;
            continue;
        }
        if b.is_ascii_whitespace() {
            gap = true;
            i += 1;
            continue;
        }
        if gap && is_ident(prev) && is_ident(b) {
            h = fnv1a_byte(h, b' ');
        }
        gap = false;
        if b == b'"' {
            // A string literal, escapes included, verbatim: a `//` inside
            // it is not a comment.
            h = fnv1a_byte(h, b);
            i += 1;
            while i < src.len() && src[i] != b'"' {
                if src[i] == b'\\' && i + 1 < src.len() {
                    h = fnv1a_byte(h, src[i]);
                    i += 1;
                }
                h = fnv1a_byte(h, src[i]);
                i += 1;
            }
            if i < src.len() {
                h = fnv1a_byte(h, b'"');
            }
            prev = b'"';
            i += 1;
            continue;
        }
        h = fnv1a_byte(h, b);
        prev = b;
        i += 1;
    }
    h
}

/// How long a new connection may take to present the cluster secret.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connect may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that takes no byte of what is sent to it for this long has
/// stopped reading (hung, stopped, or a bug): its connection is closed, as
/// if it had left, so it cannot stall the sender, nor whatever the sender
/// holds while it writes.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes [`Conn::try_send`] may keep for a peer that is not reading before
/// the connection is closed as above.
const MAX_OUTBOX: usize = 256 << 20;

/// The cluster's shared secret, presented first on every connection.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Secret(pub(crate) [u8; 16]);

impl Secret {
    pub(crate) fn random() -> Secret {
        let a = crate::ids::random_u64().to_le_bytes();
        let b = crate::ids::random_u64().to_le_bytes();
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&a);
        s[8..].copy_from_slice(&b);
        Secret(s)
    }

    /// Constant-time comparison, so timing does not leak the secret.
    fn matches(&self, other: &[u8; 16]) -> bool {
        self.0
            .iter()
            .zip(other)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where a listener is: a socket file on this node, or a TCP address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

impl Endpoint {
    /// Connects and presents the secret.
    pub(crate) fn connect(&self, secret: &Secret) -> Result<Stream> {
        let unreachable =
            |e: std::io::Error| Error::unavailable(format!("cannot connect to {self}: {e}"));
        let mut s = match self {
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p).map_err(unreachable)?),
            Endpoint::Tcp(a) => {
                let t = TcpStream::connect_timeout(a, CONNECT_TIMEOUT).map_err(unreachable)?;
                // Small control messages must not wait for Nagle's timer.
                let _ = t.set_nodelay(true);
                Stream::Tcp(t)
            }
        };
        s.write_all(&secret.0).map_err(unreachable)?;
        Ok(s)
    }
}

/// A connected byte stream: Unix on a node, TCP between nodes.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub(crate) fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }

    /// The connecting side's address, for logs.
    pub(crate) fn peer(&self) -> String {
        match self {
            Stream::Unix(_) => "a local process".to_string(),
            Stream::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
        }
    }

    /// The pid of the process at the other end of a Unix connection, as the
    /// kernel saw it connect (`SO_PEERCRED`): unlike a pid a message
    /// claims, one no peer can forge. None over TCP.
    pub(crate) fn peer_pid(&self) -> Option<u32> {
        match self {
            Stream::Unix(s) => {
                nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
                    .ok()
                    .and_then(|c| u32::try_from(c.pid()).ok())
            }
            Stream::Tcp(_) => None,
        }
    }

    /// Server side of the handshake: true if the peer presented `secret`
    /// within the time limit.
    pub(crate) fn accept_secret(&mut self, secret: &Secret) -> bool {
        let mut got = [0u8; 16];
        let ok = self.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_ok()
            && self.read_exact(&mut got).is_ok()
            && secret.matches(&got)
            && self.set_read_timeout(None).is_ok();
        if !ok {
            crate::log::log!(
                "refused a connection from {} that did not present the cluster secret",
                self.peer()
            );
            self.shutdown();
        }
        ok
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A listening socket.
pub(crate) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    pub(crate) fn bind_unix(path: &std::path::Path) -> Result<Listener> {
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path)
            .map(Listener::Unix)
            .map_err(|e| Error::io(&format!("listening on {}", path.display()), e))
    }

    /// Binds `ip` on a port the OS picks.
    pub(crate) fn bind_tcp(ip: std::net::IpAddr) -> Result<Listener> {
        TcpListener::bind((ip, 0))
            .map(Listener::Tcp)
            .map_err(|e| Error::io(&format!("listening on {ip}"), e))
    }

    /// The port of a TCP listener (0 for a Unix one).
    pub(crate) fn port(&self) -> u16 {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.port()).unwrap_or(0),
            Listener::Unix(_) => 0,
        }
    }

    /// Waits for the next connection; the secret is checked later, on the
    /// connection's own thread ([`Stream::accept_secret`]).
    pub(crate) fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }
}

/// Frames larger than this are a protocol error (a peer sending garbage).
const MAX_FRAME: usize = 1 << 30;
/// Frames up to this size are read into a buffer sized from their length
/// prefix; larger ones grow it as their bytes arrive.
const FRAME_PREALLOC: usize = 1 << 20;

impl NodeInfo {
    /// "tcp", or "fabric (<provider>)".
    pub(crate) fn transport_label(&self) -> String {
        match &self.fabric {
            Some(f) => format!("fabric ({})", f.provider),
            None => "tcp".into(),
        }
    }

    pub(crate) fn raylet(&self) -> Endpoint {
        Endpoint::Tcp(SocketAddr::new(self.ip, self.raylet_port))
    }
}

/// The nodes holding other copies of argument `i`, from a task's
/// `arg_copies` (none when it has no entry).
pub(crate) fn copies_of(arg_copies: &[(u32, Vec<u16>)], i: usize) -> &[u16] {
    arg_copies
        .iter()
        .find(|(j, _)| *j as usize == i)
        .map(|(_, c)| c.as_slice())
        .unwrap_or_default()
}

/// A connection's identity, unique in the process for its life: what
/// state that must not hold the connection itself (a request waiting for
/// its answer, a lease) keeps to name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnId(u64);

impl ConnId {
    fn next() -> ConnId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// An id no connection has, for state tested without one.
    #[cfg(test)]
    pub(crate) fn for_test(n: u64) -> ConnId {
        ConnId(u64::MAX - n)
    }
}

/// The sending half of a connection.
#[derive(Debug)]
pub(crate) struct Conn {
    id: ConnId,
    inner: Mutex<Writer>,
    /// Frames from [`Conn::try_send`] while another thread held `inner`
    /// (perhaps blocked writing): they go out, in order, before the next
    /// frame written under `inner`. This lock is never held across IO.
    deferred: Mutex<Vec<u8>>,
    shutdown: Stream,
    /// A [`Conn::post`] flusher thread runs for this connection.
    flushing: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Writer {
    stream: Stream,
    buf: Vec<u8>,
    /// Bytes a [`Conn::try_send`] could not write without blocking: they go
    /// out first, before any later frame ([`Conn::flush`] or the next send).
    tail: Vec<u8>,
}

impl Writer {
    fn frame(&mut self, msg: Wire<'_>) -> Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; 4]);
        codec::encode_append(&msg, &mut self.buf)?;
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    fn flush_tail(&mut self) -> std::io::Result<()> {
        if !self.tail.is_empty() {
            self.stream.write_all(&self.tail)?;
            self.tail = Vec::new();
        }
        Ok(())
    }
}

/// `msg` as one frame (length prefix and body), for [`Conn::send_frame`].
pub(crate) fn encode_frame(msg: &impl Message) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 4];
    codec::encode_append(&msg.wire(), &mut buf)?;
    let len = u32::try_from(buf.len() - 4)
        .ok()
        .filter(|n| (*n as usize) <= MAX_FRAME)
        .ok_or_else(|| Error::invalid("a message too large for one frame"))?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    Ok(buf)
}

fn lost(e: std::io::Error) -> Error {
    Error::unavailable(format!("peer connection lost: {e}"))
}

impl Conn {
    pub(crate) fn new(stream: &Stream) -> Result<Conn> {
        Self::with_send_timeout(stream, SEND_TIMEOUT)
    }

    /// A connection whose peer is given up on when it takes no byte for
    /// `timeout` (see [`SEND_TIMEOUT`]).
    pub(crate) fn with_send_timeout(stream: &Stream, timeout: Duration) -> Result<Conn> {
        let w = stream
            .try_clone()
            .map_err(|e| Error::io("cloning socket", e))?;
        w.set_write_timeout(Some(timeout))
            .map_err(|e| Error::io("setting a socket's send timeout", e))?;
        let s = stream
            .try_clone()
            .map_err(|e| Error::io("cloning socket", e))?;
        Ok(Conn {
            id: ConnId::next(),
            inner: Mutex::new(Writer {
                stream: w,
                buf: Vec::with_capacity(256),
                tail: Vec::new(),
            }),
            deferred: Mutex::new(Vec::new()),
            shutdown: s,
            flushing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This connection's identity.
    pub(crate) fn id(&self) -> ConnId {
        self.id
    }

    /// Sends one message as one frame.
    pub(crate) fn send(&self, msg: &impl Message) -> Result<()> {
        self.send_with_bytes(msg, &[])
    }

    /// Sends one message followed by raw bytes outside the framing (a block
    /// of the store, written straight from the mapping without a copy).
    pub(crate) fn send_with_bytes(&self, msg: &impl Message, bytes: &[u8]) -> Result<()> {
        self.send_parts(Some(msg.wire()), bytes)
    }

    /// Sends a frame [`encode_frame`] made: one message encoded once and
    /// sent to many peers (the GCS's whole-view answer to joining raylets).
    pub(crate) fn send_frame(&self, frame: &[u8]) -> Result<()> {
        self.send_parts(None, frame)
    }

    fn send_parts(&self, msg: Option<Wire<'_>>, bytes: &[u8]) -> Result<()> {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match msg {
            Some(m) => w.frame(m)?,
            None => w.buf.clear(),
        }
        self.take_deferred(&mut w);
        let Writer { stream, buf, tail } = &mut *w;
        // Frames kept back go out with this one, in one write.
        let mut r = if tail.is_empty() {
            stream.write_all(buf)
        } else {
            tail.extend_from_slice(buf);
            let r = stream.write_all(tail);
            *tail = Vec::new();
            r
        };
        if r.is_ok() && !bytes.is_empty() {
            r = stream.write_all(bytes);
        }
        if buf.capacity() > 1 << 20 {
            *buf = Vec::with_capacity(256);
        }
        if let Err(e) = &r {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                // Part of a frame may be out: nothing more can follow it.
                crate::log::log!(
                    "{} took nothing sent to it for the send timeout: closing the connection",
                    stream.peer()
                );
                self.close();
            }
        }
        r.map_err(lost)
    }

    /// Sends one message without ever blocking: what the socket does not
    /// take now is kept and goes out first on the next [`Conn::send`] or
    /// [`Conn::flush`]. Returns false when something was kept (the caller
    /// must see that a flush happens). For threads that must keep reading
    /// their own socket: blocking there on a write to a peer that is itself
    /// blocked writing to us would deadlock both.
    pub(crate) fn try_send(&self, msg: &impl Message) -> Result<bool> {
        let mut w = match self.inner.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Another thread is writing (maybe blocked): never wait
                // for it.
                let mut frame = Vec::new();
                frame.extend_from_slice(&[0u8; 4]);
                codec::encode_append(&msg.wire(), &mut frame)?;
                let len = (frame.len() - 4) as u32;
                frame[..4].copy_from_slice(&len.to_le_bytes());
                self.deferred
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&frame);
                return Ok(false);
            }
        };
        w.frame(msg.wire())?;
        self.take_deferred(&mut w);
        let Writer { stream, buf, tail } = &mut *w;
        if tail.len() + buf.len() > MAX_OUTBOX {
            crate::log::log!(
                "{} left {} bytes unread: closing the connection",
                stream.peer(),
                tail.len()
            );
            self.close();
            return Err(Error::unavailable(
                "peer connection closed: the peer stopped reading",
            ));
        }
        if !tail.is_empty() {
            tail.extend_from_slice(buf);
            return Ok(false);
        }
        let fd = stream.raw_fd();
        let mut off = 0;
        while off < buf.len() {
            // MSG_DONTWAIT: return at once rather than wait for room.
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match nix::sys::socket::send(fd, &buf[off..], flags) {
                Ok(n) if n > 0 => off += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => {
                    tail.extend_from_slice(&buf[off..]);
                    return Ok(false);
                }
                Ok(_) => return Err(lost(std::io::ErrorKind::WriteZero.into())),
                Err(e) => return Err(lost(e.into())),
            }
        }
        Ok(true)
    }

    /// Sends without ever blocking the caller (who may hold a lock others
    /// need): what the socket does not take now goes out, in order, from a
    /// thread of its own, at most one per connection, so a peer that stops
    /// reading costs only its own connection (closed after the send
    /// timeout).
    pub(crate) fn post(self: &std::sync::Arc<Self>, msg: &impl Message) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.try_send(msg)? {
            return Ok(());
        }
        if self.flushing.swap(true, Ordering::AcqRel) {
            // The running flusher sees these bytes (it checks again after
            // it clears the flag).
            return Ok(());
        }
        let c = self.clone();
        let spawned = std::thread::Builder::new()
            .name("conn-flush".into())
            .spawn(move || loop {
                let ok = c.flush().is_ok();
                c.flushing.store(false, Ordering::Release);
                // Bytes posted after the flush took its share and before
                // the flag dropped were left to this thread: go again,
                // unless another flusher has started (or the peer is gone).
                if !ok || !c.pending() || c.flushing.swap(true, Ordering::AcqRel) {
                    break;
                }
            });
        if spawned.is_err() {
            self.flushing.store(false, Ordering::Release);
            return self.flush();
        }
        Ok(())
    }

    /// Bytes [`Conn::try_send`] kept are still to go out.
    fn pending(&self) -> bool {
        let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        !w.tail.is_empty()
            || !self
                .deferred
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    }

    /// Writes what [`Conn::try_send`] kept (blocking).
    pub(crate) fn flush(&self) -> Result<()> {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.take_deferred(&mut w);
        w.flush_tail().map_err(lost)
    }

    /// Moves deferred frames to the writer's tail (under `inner`).
    fn take_deferred(&self, w: &mut Writer) {
        let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if !d.is_empty() {
            w.tail.append(&mut d);
        }
    }

    /// Closes both directions; the peer's reader sees end-of-stream.
    pub(crate) fn close(&self) {
        self.shutdown.shutdown();
    }
}

/// Reads frames until end-of-stream or a protocol error, calling `handle`
/// for each message.
pub(crate) fn read_loop(stream: Stream, mut handle: impl FnMut(Msg)) -> std::io::Result<()> {
    let fd = stream.raw_fd();
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut body = Vec::new();
    while let Some(msg) = read_frame(&mut r, &mut body)? {
        INPUT.with(|i| i.set((!r.buffer().is_empty(), fd)));
        handle(msg);
        INPUT.with(|i| i.set((false, -1)));
        if body.capacity() > 1 << 20 {
            body = Vec::new();
        }
    }
    Ok(())
}

thread_local! {
    /// In a connection thread's handler: whether more input was already
    /// buffered after the message being handled, and the socket.
    static INPUT: std::cell::Cell<(bool, std::os::fd::RawFd)> = const { std::cell::Cell::new((false, -1)) };
}

/// Called from a message handler: true if more messages from the same peer
/// are already waiting (buffered, or in the socket). A pipelining peer is
/// better served by queueing than by handling each message inline.
pub(crate) fn more_input_pending() -> bool {
    let (buffered, fd) = INPUT.with(|i| i.get());
    if buffered {
        return true;
    }
    if fd < 0 {
        return false;
    }
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes the number of readable bytes into `n`.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    rc == 0 && n > 0
}

/// Reads one frame; `None` at a clean end-of-stream.
pub(crate) fn read_frame(r: &mut impl Read, body: &mut Vec<u8>) -> std::io::Result<Option<Msg>> {
    if !read_frame_bytes(r, body)? {
        return Ok(None);
    }
    codec::decode(body, "message")
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// Reads one frame's body into `body`, undecoded; false at the end of the
/// stream.
pub(crate) fn read_frame_bytes(r: &mut impl Read, body: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes exceeds the limit"),
        ));
    }
    if n <= FRAME_PREALLOC.max(body.capacity()) {
        body.resize(n, 0);
        r.read_exact(body)?;
    } else {
        // A length prefix is a claim, not bytes: the buffer grows with what
        // actually arrives, so a 5-byte frame cannot allocate a gigabyte.
        body.clear();
        let got = r.by_ref().take(n as u64).read_to_end(body)?;
        if got < n {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("frame of {n} bytes ended after {got}"),
            ));
        }
    }
    Ok(true)
}

/// Runs [`read_loop`] on a named thread, then `on_close`.
pub(crate) fn spawn_reader(
    name: String,
    stream: Stream,
    handle: impl FnMut(Msg) + Send + 'static,
    on_close: impl FnOnce() + Send + 'static,
) -> Result<()> {
    let thread = name.clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            // A panic in a handler (a bug, or data a peer sent that the
            // handler trusted) ends this one connection, reported, not the
            // component silently: on_close runs as for any closed peer.
            let peer = stream.peer();
            guarded(&thread, &peer, || read_loop(stream, handle));
            on_close();
        })
        .map(|_| ())
        .map_err(|e| Error::io("spawning a connection thread", e))
}

/// An outgoing connection, secret presented, not yet served: the one way
/// every component opens a connection to another (connect, present the
/// cluster secret, wrap the sending half, then a reader thread for what
/// comes back). Two steps, so a caller can register the connection (or
/// send a first message) before anything that arrives on it is handled.
#[derive(Debug)]
pub(crate) struct Dialed {
    /// The sending half.
    pub(crate) conn: std::sync::Arc<Conn>,
    stream: Stream,
}

/// Connects to `to` and presents `secret` (see [`Dialed`]).
pub(crate) fn dial(to: &Endpoint, secret: &Secret) -> Result<Dialed> {
    let stream = to.connect(secret)?;
    let conn = std::sync::Arc::new(Conn::new(&stream)?);
    Ok(Dialed { conn, stream })
}

impl Dialed {
    /// Serves what arrives on a reader thread named `thread` (`handle` per
    /// message, `on_close` once when the connection ends); the sending half.
    pub(crate) fn serve(
        self,
        thread: &str,
        handle: impl FnMut(Msg) + Send + 'static,
        on_close: impl FnOnce() + Send + 'static,
    ) -> Result<std::sync::Arc<Conn>> {
        spawn_reader(thread.into(), self.stream, handle, on_close)?;
        Ok(self.conn)
    }

    /// The receiving half, for a caller that reads a reply itself before
    /// serving (a registration).
    pub(crate) fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }
}

/// Runs the body of a thread its process cannot do without (an accept
/// loop, the raylet's reaper or reports, the GCS's health checks, a core
/// worker's housekeeping). A panic in it is a bug that would otherwise end
/// the component silently (a node that never reports, a dead worker never
/// reaped): the process says so and exits, so that the cluster sees a dead
/// process and recovers from it as from any other.
pub(crate) fn vital(thread: &'static str, body: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        crate::log::log!("{thread} panicked ({what}); this process cannot go on without it");
        eprintln!("rustray: internal thread {thread} panicked ({what}); exiting");
        std::process::exit(101);
    }
}

/// Runs a connection's serving loop, reporting how it ended badly: a
/// malformed frame, or a panic in a handler (a bug, or data a peer sent
/// that the handler trusted), ends that one connection with a log line
/// naming the thread and the peer, never the process.
pub(crate) fn guarded(thread: &str, peer: &str, serve: impl FnOnce() -> std::io::Result<()>) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(serve)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            crate::log::log!("{thread}: malformed input from {peer} ({e}); connection closed");
        }
        Ok(Err(_)) => {}
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            crate::log::log!(
                "{thread}: a message handler panicked on input from {peer} ({what}); connection closed"
            );
        }
    }
}

/// Connections served at once by one listener, at most: past it a new one
/// is closed at once, with a log line, so no peer can make a component
/// start threads without end.
const MAX_CONNECTIONS: usize = 16_384;

/// Accepts connections until `stopped()`, serving each on its own thread
/// named `name` (at most [`MAX_CONNECTIONS`] at once).
pub(crate) fn accept_each(
    listener: Listener,
    name: &'static str,
    stopped: impl Fn() -> bool,
    serve: impl Fn(Stream) + Send + Sync + 'static,
) {
    accept_capped(listener, name, MAX_CONNECTIONS, stopped, serve)
}

/// [`accept_each`], serving at most `cap` connections at once.
fn accept_capped(
    listener: Listener,
    name: &'static str,
    cap: usize,
    stopped: impl Fn() -> bool,
    serve: impl Fn(Stream) + Send + Sync + 'static,
) {
    let serve = std::sync::Arc::new(serve);
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let s = listener.accept();
        if stopped() {
            return;
        }
        let Ok(stream) = s else { continue };
        use std::sync::atomic::Ordering;
        if live.fetch_add(1, Ordering::AcqRel) >= cap {
            live.fetch_sub(1, Ordering::AcqRel);
            crate::log::log!(
                "{name}: {cap} connections already served; refused one from {}",
                stream.peer()
            );
            stream.shutdown();
            continue;
        }
        let (serve, count) = (serve.clone(), live.clone());
        let r = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                serve(stream);
                count.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = r {
            live.fetch_sub(1, Ordering::AcqRel);
            crate::log::log!("{name}: cannot start a connection thread ({e}); refused one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(src: &str) -> u64 {
        schema_hash(FNV_OFFSET, src.as_bytes())
    }

    /// The fingerprint is the messages' schema: comments, doc comments and
    /// layout do not change it; a field, a type, a variant or a string
    /// literal does, and `//` inside a string is no comment.
    #[test]
    fn fingerprint_ignores_comments_and_layout_only() {
        let base = "/// A message.\npub(crate) enum Msg {\n    Ping { req: u64 },\n}\n";
        let same = [
            "pub(crate) enum Msg { Ping { req: u64 }, }",
            "/// Another comment.\npub(crate)  enum Msg {\n  // which\n  Ping { /* asks */ req: u64 },\n}",
        ];
        for s in same {
            assert_eq!(fp(base), fp(s), "{s}");
        }
        let different = [
            "pub(crate) enum Msg { Ping { req: u32 } }",
            "pub(crate) enum Msg { Ping { req: u64, from: u16 } }",
            "pub(crate) enum Msg { Pong { req: u64 } }",
            "pub(crate) enum Msg { Ping { req: u64 }, Pong }",
            "pub(crate) enumMsg { Ping { req: u64 } }",
        ];
        for d in different {
            assert_ne!(fp(base), fp(d), "{d}");
        }
        assert_ne!(
            fp(r#"const A: &str = "a//b";"#),
            fp(r#"const A: &str = "a//c";"#)
        );
    }

    /// A frame encoded once reads back as the message, whoever it is sent
    /// to (the GCS's shared whole-view answer).
    #[test]
    fn an_encoded_frame_reads_back_as_its_message() {
        let msg = FromGcs::ClusterView {
            version: 7,
            joined: Vec::new(),
            changed: Vec::new(),
        };
        let frame = encode_frame(&msg).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let conn = Conn::new(&Stream::Unix(a)).unwrap();
        conn.send_frame(&frame).unwrap();
        conn.send_frame(&frame).unwrap();
        let mut r = b;
        for _ in 0..2 {
            let got = read_frame(&mut r, &mut Vec::new()).unwrap();
            assert!(
                matches!(
                    got,
                    Some(Msg::FromGcs(FromGcs::ClusterView { version: 7, .. }))
                ),
                "{got:?}"
            );
        }
    }

    /// The files the fingerprint reads hold type definitions only (their
    /// code lives with the components, and in `protocol/envelope.rs`), so
    /// the fingerprint changes with the messages, not with code that
    /// happens to sit beside them.
    #[test]
    fn protocol_files_are_types_only() {
        for (file, src) in [
            ("mod.rs", include_str!("protocol/mod.rs")),
            ("raylet.rs", include_str!("protocol/raylet.rs")),
            ("gcs.rs", include_str!("protocol/gcs.rs")),
            ("peer.rs", include_str!("protocol/peer.rs")),
            ("transfer.rs", include_str!("protocol/transfer.rs")),
        ] {
            for line in src.lines().map(str::trim_start) {
                if line.starts_with("//") {
                    continue;
                }
                for word in ["fn ", "impl ", "impl<", "static ", "const ", "macro_rules"] {
                    assert!(!line.contains(word), "protocol/{file} has code: {line}");
                }
            }
        }
    }

    #[test]
    fn a_panicking_handler_or_a_malformed_frame_closes_only_its_connection() {
        for malformed in [false, true] {
            let (a, b) = UnixStream::pair().unwrap();
            let (a, b) = (Stream::Unix(a), Stream::Unix(b));
            let (tx, rx) = std::sync::mpsc::channel();
            spawn_reader(
                "test-reader".into(),
                b,
                |_| panic!("handler bug"),
                move || {
                    let _ = tx.send(());
                },
            )
            .unwrap();
            if malformed {
                let Stream::Unix(mut raw) = a else {
                    unreachable!()
                };
                use std::io::Write;
                // A frame of 8 bytes that decode to no message.
                raw.write_all(&8u32.to_le_bytes()).unwrap();
                raw.write_all(&[0xff; 8]).unwrap();
                assert!(rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok());
                drop(raw);
            } else {
                Conn::new(&a).unwrap().send(&ToRaylet::Blocked).unwrap();
                assert!(rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok());
            }
        }
    }

    #[test]
    fn a_peer_that_stops_reading_is_disconnected_not_waited_for() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Stream::Unix(a), Stream::Unix(b));
        let conn =
            std::sync::Arc::new(Conn::with_send_timeout(&a, Duration::from_millis(200)).unwrap());
        let big = ToRaylet::FreeObjects {
            offsets: (0..50_000).collect(),
        };
        // b never reads: the socket buffer fills, then a send times out
        // (on a thread, so that a send that blocks for good fails the test
        // rather than hanging it).
        let (tx, rx) = std::sync::mpsc::channel();
        let c = conn.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            let err = loop {
                match c.send(&big) {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
            };
            let _ = tx.send((sent, err));
        });
        let (sent, err) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a send to a peer that never reads gave up");
        assert!(sent >= 1, "{err}");
        // Closed: the reader gets what was sent whole, then the end.
        let mut r = BufReader::new(b);
        let mut body = Vec::new();
        let mut whole = 0;
        while let Ok(Some(_)) = read_frame(&mut r, &mut body) {
            whole += 1;
        }
        assert!(whole >= 1 && whole <= sent, "{whole} of {sent}");
        assert!(
            conn.send(&ToRaylet::Blocked).is_err(),
            "sends after the close fail"
        );
    }

    /// A panic in a vital thread ends its process, loudly (exit 101 and a
    /// line naming the thread), rather than leaving it running without
    /// the thread. Runs itself as a child to see the exit.
    #[test]
    fn a_panic_in_a_vital_thread_ends_the_process_saying_so() {
        if std::env::var("RUSTRAY_TEST_VITAL_CHILD").is_ok() {
            let t = std::thread::spawn(|| vital("test-vital", || panic!("on purpose")));
            let _ = t.join();
            // Not reached: the panic ended the process.
            std::process::exit(0);
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "transport::tests::a_panic_in_a_vital_thread_ends_the_process_saying_so",
                "--exact",
                "--nocapture",
            ])
            .env("RUSTRAY_TEST_VITAL_CHILD", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(101), "{err}");
        assert!(
            err.contains("internal thread test-vital panicked (on purpose)"),
            "{err}"
        );
    }

    /// Past the cap a new connection is closed at once (its peer reads the
    /// end); one served connection ending makes room for the next.
    #[test]
    fn connections_past_the_cap_are_closed_and_room_comes_back() {
        let listener = Listener::bind_tcp("127.0.0.1".parse().unwrap()).unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], listener.port()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let server = std::thread::spawn(move || {
            accept_capped(
                listener,
                "test-accept",
                2,
                move || st.load(std::sync::atomic::Ordering::SeqCst),
                // Served until the peer closes.
                |mut s| {
                    let mut b = [0u8; 64];
                    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                },
            )
        });
        let open = || {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            c
        };
        // Closed by the server: the read sees the end (Ok(0)) or a reset.
        let closed = |c: &mut TcpStream| !matches!(c.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut);
        let (mut a, mut b) = (open(), open());
        std::thread::sleep(Duration::from_millis(100));
        let mut c = open();
        assert!(
            closed(&mut c),
            "a third connection past a cap of 2 was served"
        );
        assert!(
            !closed(&mut a) && !closed(&mut b),
            "served connections were closed"
        );
        drop(a);
        std::thread::sleep(Duration::from_millis(200));
        let mut d = open();
        assert!(
            !closed(&mut d),
            "the room a closed connection left was not given back"
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(open());
        server.join().unwrap();
    }

    #[test]
    fn post_never_blocks_and_delivers_everything_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Stream::Unix(a), Stream::Unix(b));
        let conn = std::sync::Arc::new(Conn::new(&a).unwrap());
        // Far more than the socket buffer holds, posted while nobody reads:
        // every post returns at once.
        let t0 = std::time::Instant::now();
        for i in 0..400u64 {
            conn.post(&ToRaylet::FreeObjects {
                offsets: vec![i; 1000],
            })
            .unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // Then read: all of it, in order.
        let mut r = BufReader::new(b);
        let mut body = Vec::new();
        for i in 0..400u64 {
            match read_frame(&mut r, &mut body).unwrap() {
                Some(Msg::ToRaylet(ToRaylet::FreeObjects { offsets })) => assert_eq!(offsets[0], i),
                other => panic!("frame {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn try_send_never_blocks_and_keeps_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Stream::Unix(a), Stream::Unix(b));
        let conn = Conn::new(&a).unwrap();
        // Nobody reads: the socket fills, try_send keeps the rest instead of
        // blocking.
        let big = ToRaylet::FreeObjects {
            offsets: (0..4096).collect(),
        };
        let mut sent = 0u64;
        while conn.try_send(&big).unwrap() {
            sent += 1;
            assert!(sent < 100_000, "the socket never filled");
        }
        // A later send must come after what was kept.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            read_loop(b, |m| {
                got.push(matches!(m, Msg::ToRaylet(ToRaylet::Blocked)))
            })
            .unwrap();
            got
        });
        conn.flush().unwrap();
        conn.send(&ToRaylet::Blocked).unwrap();
        conn.close();
        drop(a);
        let got = reader.join().unwrap();
        assert_eq!(got.len() as u64, sent + 2, "every frame arrives whole");
        assert_eq!(got.iter().filter(|b| **b).count(), 1);
        assert!(got[got.len() - 1], "the later frame came last");
    }

    #[test]
    fn tcp_connections_without_the_secret_are_refused() {
        let secret = Secret::random();
        let l = Listener::bind_tcp("127.0.0.1".parse().unwrap()).unwrap();
        let ep = Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], l.port())));
        // Right secret: accepted, and a frame gets through.
        let c = ep.connect(&secret).unwrap();
        let mut s = l.accept().unwrap();
        assert!(s.accept_secret(&secret));
        Conn::new(&c).unwrap().send(&ToRaylet::Blocked).unwrap();
        drop(c);
        let mut got = Vec::new();
        read_loop(s, |m| got.push(format!("{m:?}"))).unwrap();
        assert_eq!(got, vec!["ToRaylet(Blocked)"]);
        // Wrong secret: refused and closed.
        let c = ep.connect(&Secret::random()).unwrap();
        let mut s = l.accept().unwrap();
        assert!(!s.accept_secret(&secret));
        let mut buf = [0u8; 1];
        let mut c = c;
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0, "refused peer sees EOF");
    }

    #[test]
    fn frames_roundtrip_and_eof_ends_the_reader() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Stream::Unix(a), Stream::Unix(b));
        let conn = Conn::new(&a).unwrap();
        conn.send(&ToRaylet::Blocked).unwrap();
        conn.send(&ToRaylet::FreeObjects {
            offsets: vec![1, 2, 3],
        })
        .unwrap();
        conn.close();
        drop(a);
        let mut got = Vec::new();
        read_loop(b, |m| got.push(format!("{m:?}"))).unwrap();
        assert_eq!(
            got,
            vec![
                "ToRaylet(Blocked)",
                "ToRaylet(FreeObjects { offsets: [1, 2, 3] })"
            ]
        );
    }

    #[test]
    fn oversized_or_garbage_frames_are_errors() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_le_bytes()).unwrap();
        drop(a);
        assert!(read_loop(Stream::Unix(b), |_| {}).is_err());
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&3u32.to_le_bytes()).unwrap();
        a.write_all(&[0xff, 0xff, 0xff]).unwrap();
        drop(a);
        assert!(read_loop(Stream::Unix(b), |_| {}).is_err());
    }
}
