//! Framed connections: length-prefixed messages on a [`Stream`], sent
//! under one writer lock per connection (or posted without blocking;
//! reading them is `super::read`'s), and [`dial`], the one way a
//! component opens a connection to another.

use super::read::spawn_reader_expecting;
use super::{Endpoint, Secret, Stream};
use crate::codec;
use crate::error::{Error, Result};
use crate::protocol::{Message, Msg, PushRef, TaskSpec, Wire};
use nix::sys::socket::MsgFlags;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

/// A peer that takes no byte of what is sent to it for this long has
/// stopped reading (hung, stopped, or a bug): its connection is closed, as
/// if it had left, so it cannot stall the sender, nor whatever the sender
/// holds while it writes.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes [`Conn::try_send`] may keep for a peer that is not reading before
/// the connection is closed as above. What is kept is measured before more
/// joins it: one frame larger than this (up to [`MAX_FRAME`]) says nothing
/// of the peer, and is kept.
const MAX_OUTBOX: usize = 256 << 20;

/// Frames larger than this are a protocol error (a peer sending garbage).
pub(crate) const MAX_FRAME: usize = 1 << 30;
// A frame's length prefix is a u32.
const _: () = assert!(MAX_FRAME <= u32::MAX as usize);

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
    /// The writer's socket, for [`Conn::close`] to shut down without its
    /// lock (a writer may be blocked in it). Valid while `inner` holds the
    /// stream, that is, for the connection's life; not a descriptor of its
    /// own, so a connection costs two descriptors, not three (the GCS of
    /// thousands of nodes counts them).
    shutdown_fd: std::os::fd::RawFd,
    /// Closed by [`Conn::close`]: nothing more is kept for the peer.
    closed: std::sync::atomic::AtomicBool,
    /// A [`Conn::post`] flusher thread runs for this connection.
    flushing: std::sync::atomic::AtomicBool,
    /// Set by [`Conn::expect_reply`], read (and cleared) by this
    /// connection's reader before it blocks (see `stream::Waiting`, and
    /// `waited` for a connection served with [`Dialed::serve_waited`]).
    expect: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The reading shared with waiting threads, if served with
    /// [`Dialed::serve_waited`] (weak: it holds the handler, which may
    /// hold this connection).
    waited: std::sync::OnceLock<std::sync::Weak<super::waited::Waited>>,
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
    /// `msg` as one frame in `buf`; one larger than [`MAX_FRAME`] fails
    /// as its encoding passes the bound, and nothing is sent.
    fn frame(&mut self, msg: Wire<'_>) -> Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; 4]);
        codec::encode_append_within(&msg, &mut self.buf, MAX_FRAME)?;
        // Within MAX_FRAME, so within a u32.
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

/// Writes as much of `bytes` as the socket takes now, never waiting for
/// room: how much went out.
fn send_now(stream: &Stream, bytes: &[u8]) -> Result<usize> {
    let fd = stream.raw_fd();
    let mut off = 0;
    while off < bytes.len() {
        // MSG_DONTWAIT: return at once rather than wait for room.
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match nix::sys::socket::send(fd, &bytes[off..], flags) {
            Ok(n) if n > 0 => off += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => break,
            Ok(_) => return Err(lost(std::io::ErrorKind::WriteZero.into())),
            Err(e) => return Err(lost(e.into())),
        }
    }
    Ok(off)
}

/// `msg` as one frame (length prefix and body), for [`Conn::post_frame`].
pub(crate) fn encode_frame(msg: &impl Message) -> Result<Vec<u8>> {
    encode_frame_of(&msg.wire())
}

/// A task push as one frame, encoded from the spec its owner keeps (see
/// [`PushRef`]), for [`send_frame_batched`].
pub(crate) fn push_frame(spec: &TaskSpec) -> Result<Vec<u8>> {
    encode_frame_of(&PushRef(spec))
}

/// `value` (a message in its envelope) as one frame.
/// One too large fails as its encoding passes [`MAX_FRAME`], before more
/// is copied.
fn encode_frame_of(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&[0u8; 4]);
    codec::encode_append_within(value, &mut buf, MAX_FRAME)?;
    // Within MAX_FRAME (1 GiB), so within a u32.
    let len = (buf.len() - 4) as u32;
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
        let shutdown_fd = w.raw_fd();
        Ok(Conn {
            id: ConnId::next(),
            inner: Mutex::new(Writer {
                stream: w,
                buf: Vec::with_capacity(256),
                tail: Vec::new(),
            }),
            deferred: Mutex::new(Vec::new()),
            shutdown_fd,
            closed: std::sync::atomic::AtomicBool::new(false),
            flushing: std::sync::atomic::AtomicBool::new(false),
            expect: Default::default(),
            waited: Default::default(),
        })
    }

    /// What was just sent waits on an answer that comes a round trip on (a
    /// lone task, a synchronous actor call): this connection's reader, if
    /// served with [`Dialed::serve`], spins briefly for it before it blocks
    /// (a blocked reader costs a wake-up, on a VM most of a round trip).
    pub(crate) fn expect_reply(&self) {
        self.expect
            .store(true, std::sync::atomic::Ordering::Release);
        // Served with `serve_waited`: this thread may read the answer
        // itself while it waits (see `waited`).
        // Not from a handler: the thread that handles an answer and pushes
        // the next task is not the one waiting (a chain's).
        if super::in_handler() {
            return;
        }
        if let Some(w) = self.waited.get().and_then(std::sync::Weak::upgrade) {
            super::waited::awaiting(&w);
        }
    }

    /// The reading shared with waiting threads, for tests.
    #[cfg(test)]
    pub(crate) fn waited_for_test(&self) -> Option<std::sync::Arc<super::waited::Waited>> {
        self.waited.get().and_then(std::sync::Weak::upgrade)
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

    pub(super) fn send_parts(&self, msg: Option<Wire<'_>>, bytes: &[u8]) -> Result<()> {
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

    /// Keeps one message back, unwritten, to go out with the next write on
    /// this connection ([`Conn::send`], [`Conn::flush`]): many small frames
    /// then cost one `write` (and one wake-up of the peer), not one each.
    /// Whoever holds must see that a flush follows.
    pub(crate) fn hold(&self, msg: &impl Message) -> Result<()> {
        let frame = encode_frame(msg)?;
        self.defer(&frame).map(|_| ())
    }

    /// Queues frames already encoded to go out, unwritten, with the next
    /// write on this connection (see [`Conn::hold`]); never blocks. The
    /// caller flushes them next, so however many they are, they are no
    /// sign of a peer that stopped reading: only a backlog already over
    /// [`MAX_OUTBOX`] is.
    pub(crate) fn hold_frames(&self, frames: &[u8]) -> Result<()> {
        self.defer(frames).map(|_| ())
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
                return self.defer(&encode_frame_of(&msg.wire())?);
            }
        };
        w.frame(msg.wire())?;
        let kept = w.tail.len();
        self.take_deferred(&mut w);
        let Writer { stream, buf, tail } = &mut *w;
        self.write_or_keep(stream, tail, buf, kept)
    }

    /// Writes `bytes` after what is kept (`tail`) without blocking; what
    /// the socket does not take is kept. False when something was kept.
    /// `kept`: bytes were kept before (the socket had no room; a flusher
    /// thread writes them), so these only join them; past [`MAX_OUTBOX`]
    /// the peer counts as not reading. Otherwise `tail` holds only frames
    /// deferred while another thread wrote, no sign of a full socket: they
    /// go first, now.
    fn write_or_keep(
        &self,
        stream: &Stream,
        tail: &mut Vec<u8>,
        bytes: &[u8],
        kept: usize,
    ) -> Result<bool> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            *tail = Vec::new();
            return Err(Error::unavailable("peer connection closed"));
        }
        if kept > MAX_OUTBOX {
            crate::log::log!(
                "{} left {} bytes unread: closing the connection",
                stream.peer(),
                tail.len()
            );
            *tail = Vec::new();
            self.close();
            return Err(Error::unavailable(
                "peer connection closed: the peer stopped reading",
            ));
        }
        if kept > 0 {
            tail.extend_from_slice(bytes);
            return Ok(false);
        }
        if tail.is_empty() {
            let n = send_now(stream, bytes)?;
            if n < bytes.len() {
                tail.extend_from_slice(&bytes[n..]);
                return Ok(false);
            }
            return Ok(true);
        }
        tail.extend_from_slice(bytes);
        let n = send_now(stream, tail)?;
        tail.drain(..n);
        Ok(tail.is_empty())
    }

    /// Writes what is kept or deferred without blocking, as far as the
    /// socket takes it; what it does not take goes out from a flusher
    /// thread ([`Conn::post`]).
    pub(crate) fn post_flush(self: &std::sync::Arc<Self>) -> Result<()> {
        let sent = self.try_send_frame(&[])?;
        self.flush_later(sent)
    }

    /// Sends without ever blocking the caller (who may hold a lock others
    /// need): what the socket does not take now goes out, in order, from a
    /// thread of its own, at most one per connection, so a peer that stops
    /// reading costs only its own connection (closed after the send
    /// timeout).
    pub(crate) fn post(self: &std::sync::Arc<Self>, msg: &impl Message) -> Result<()> {
        let sent = self.try_send(msg)?;
        self.flush_later(sent)
    }

    /// [`Conn::post`] for a frame [`encode_frame`] made.
    pub(crate) fn post_frame(self: &std::sync::Arc<Self>, frame: &[u8]) -> Result<()> {
        let sent = self.try_send_frame(frame)?;
        self.flush_later(sent)
    }

    /// [`Conn::try_send`] for a frame [`encode_frame`] made.
    fn try_send_frame(&self, frame: &[u8]) -> Result<bool> {
        let mut w = match self.inner.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return self.defer(frame);
            }
        };
        let kept = w.tail.len();
        self.take_deferred(&mut w);
        let Writer { stream, tail, .. } = &mut *w;
        self.write_or_keep(stream, tail, frame, kept)
    }

    /// After a non-blocking send: what it kept (`sent` false) goes out from
    /// a flusher thread, at most one per connection.
    fn flush_later(self: &std::sync::Arc<Self>, sent: bool) -> Result<()> {
        use std::sync::atomic::Ordering;
        if sent {
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
        if let Err(e) = spawned {
            // Writing here could block the caller, which must not wait:
            // without a thread the peer cannot be waited for at all.
            self.flushing.store(false, Ordering::Release);
            crate::log::log!(
                "cannot start a thread to send to a slow peer ({e}); connection closed"
            );
            self.close();
            return Err(Error::unavailable(
                "peer connection closed: no thread to send what it did not take",
            ));
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
        let r = w.flush_tail();
        if r.is_err() {
            // Part of the kept bytes may be out: writing them again from
            // their start would break the peer's framing. The connection
            // ends, as a failed send ends it.
            w.tail = Vec::new();
            drop(w);
            self.close();
        }
        r.map_err(lost)
    }

    /// Keeps `frame` for whoever holds the writer next (never waiting for
    /// it); past [`MAX_OUTBOX`] kept bytes (before this frame joins them)
    /// the peer counts as not reading and the connection is closed, what
    /// it kept let go. Nothing is kept for a closed connection.
    pub(super) fn defer(&self, frame: &[u8]) -> Result<bool> {
        let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if d.len() > MAX_OUTBOX || self.closed.load(std::sync::atomic::Ordering::Acquire) {
            *d = Vec::new();
            drop(d);
            self.close();
            return Err(Error::unavailable(
                "peer connection closed: the peer stopped reading",
            ));
        }
        d.extend_from_slice(frame);
        Ok(false)
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
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = nix::sys::socket::shutdown(self.shutdown_fd, nix::sys::socket::Shutdown::Both);
    }
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
        let expect = Some(self.conn.expect.clone());
        spawn_reader_expecting(thread.into(), self.stream, expect, handle, on_close)?;
        Ok(self.conn)
    }

    /// [`Dialed::serve`], with a handler any thread may run: a thread that
    /// sent something on this connection whose answer it waits for may read
    /// that answer itself, and handle it and whatever came before it (see
    /// `waited`), rather than be woken by the connection thread.
    pub(crate) fn serve_waited(
        self,
        thread: &str,
        handle: impl Fn(Msg) + Send + Sync + 'static,
        on_close: impl FnOnce() + Send + 'static,
    ) -> Result<std::sync::Arc<Conn>> {
        use super::waited::Waited;
        // Without a wait set of its own (out of descriptors), the
        // connection is served as any other: nobody else reads it.
        let Ok(epoll) = Waited::wait_set(&self.stream) else {
            return self.serve(thread, handle, on_close);
        };
        let peer = self.stream.peer();
        let waited = Waited::new(
            self.stream,
            epoll,
            self.conn.expect.clone(),
            Box::new(handle),
        );
        let _ = self.conn.waited.set(std::sync::Arc::downgrade(&waited));
        let name = thread.to_string();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                super::guarded(&name, &peer, || super::waited::read_loop_waited(&waited));
                // (After a handler's panic too: what it held goes out.)
                super::read::flush_batched();
                drop(waited);
                on_close();
            })
            .map_err(|e| Error::io("spawning a connection thread", e))?;
        Ok(self.conn)
    }

    /// A connection over `stream` as if dialed, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(stream: Stream) -> Dialed {
        let conn = std::sync::Arc::new(Conn::new(&stream).expect("a test connection"));
        Dialed { conn, stream }
    }

    /// The receiving half, for a caller that reads a reply itself before
    /// serving (a registration).
    pub(crate) fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }
}

#[cfg(test)]
mod tests;
