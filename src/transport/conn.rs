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
/// the connection is closed as above.
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
        let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if d.len() > MAX_OUTBOX {
            drop(d);
            self.close();
            return Err(Error::unavailable(
                "peer connection closed: the peer stopped reading",
            ));
        }
        d.extend_from_slice(frames);
        Ok(())
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
        let full = !w.tail.is_empty();
        self.take_deferred(&mut w);
        let Writer { stream, buf, tail } = &mut *w;
        self.write_or_keep(stream, tail, buf, full)
    }

    /// Writes `bytes` after what is kept (`tail`) without blocking; what
    /// the socket does not take is kept. False when something was kept.
    /// `full`: bytes were kept before (the socket had no room; a flusher
    /// thread writes them), so these only join them. Otherwise `tail`
    /// holds only frames deferred while another thread wrote, no sign of a
    /// full socket: they go first, now.
    fn write_or_keep(
        &self,
        stream: &Stream,
        tail: &mut Vec<u8>,
        bytes: &[u8],
        full: bool,
    ) -> Result<bool> {
        // Measured before `bytes` join, as `defer` does.
        if tail.len() > MAX_OUTBOX {
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
        if full {
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
        let full = !w.tail.is_empty();
        self.take_deferred(&mut w);
        let Writer { stream, tail, .. } = &mut *w;
        self.write_or_keep(stream, tail, frame, full)
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
    /// it); past [`MAX_OUTBOX`] kept bytes the peer counts as not reading
    /// and the connection is closed. What is kept is measured before the
    /// frame joins it, as in [`Conn::hold_frames`]: one frame larger than
    /// the bound (up to [`MAX_FRAME`]) is kept whole, as it says nothing
    /// of the peer.
    pub(super) fn defer(&self, frame: &[u8]) -> Result<bool> {
        let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if d.len() > MAX_OUTBOX {
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
mod tests {
    use super::super::read::*;
    use super::*;
    use crate::protocol::{FromGcs, Payload, PeerMsg, ToRaylet};
    use std::io::{BufReader, Read};
    use std::os::unix::net::UnixStream;

    /// A connection thread told to expect input soon spins for it first,
    /// then blocks as before: input within the spin and input long after
    /// both arrive, and a read timeout still ends a wait.
    #[test]
    fn a_reader_expecting_input_gets_it_early_or_late() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut r = super::super::stream::Waiting(Stream::Unix(a), None);
            let mut got = Vec::new();
            for _ in 0..2 {
                super::super::stream::expect_input_soon();
                let mut one = [0u8; 4];
                r.read_exact(&mut one).unwrap();
                got.push(one);
            }
            r.0.set_read_timeout(Some(std::time::Duration::from_millis(20)))
                .unwrap();
            super::super::stream::expect_input_soon();
            let timed_out = r.read(&mut [0u8; 4]).unwrap_err().kind();
            (got, timed_out)
        });
        b.write_all(b"soon").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        b.write_all(b"late").unwrap();
        let (got, timed_out) = reader.join().unwrap();
        assert_eq!(got, vec![*b"soon", *b"late"]);
        assert_eq!(timed_out, std::io::ErrorKind::WouldBlock);
    }

    /// A reply expected on a dialed connection ([`Conn::expect_reply`]) is
    /// what its reader thread waits for awake: the reader takes the flag
    /// (it then spins before it blocks) and the reply, early or late,
    /// arrives all the same.
    #[test]
    fn the_reader_of_a_dialed_connection_takes_an_expected_reply() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let stream = Stream::Unix(a);
        let conn = std::sync::Arc::new(Conn::new(&stream).unwrap());
        let dialed = Dialed { conn, stream };
        let (tx, rx) = std::sync::mpsc::channel();
        let conn = dialed
            .serve("test-expect", move |m| drop(tx.send(m)), || {})
            .unwrap();
        for late in [false, true] {
            conn.expect_reply();
            if late {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            b.write_all(&encode_frame(&ToRaylet::Blocked).unwrap())
                .unwrap();
            let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
            assert!(matches!(got, Msg::ToRaylet(ToRaylet::Blocked)), "{got:?}");
            // Taken at the reader's next read at the latest (a reader
            // blocked already when the flag is set sees it only then).
            let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while conn.expect.load(std::sync::atomic::Ordering::Acquire) {
                assert!(
                    std::time::Instant::now() < until,
                    "the reader never took the flag"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// A frame encoded once reads back as the message, whoever it is sent
    /// to (the GCS's shared whole-view answer).
    /// A small message, told apart by its `version`.
    fn view(version: u64) -> FromGcs {
        FromGcs::ClusterView {
            version,
            joined: Vec::new(),
            changed: Vec::new(),
            candidates: None,
        }
    }

    /// Reads the next frame from `r`, which must be [`view`]`(version)`.
    fn reads_view(r: &mut UnixStream, version: u64) {
        let got = read_frame(r, &mut Vec::new()).unwrap();
        assert!(
            matches!(&got, Some(Msg::FromGcs(FromGcs::ClusterView { version: v, .. })) if *v == version),
            "{got:?}"
        );
    }

    #[test]
    fn an_encoded_frame_reads_back_as_its_message() {
        let frame = encode_frame(&view(7)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let conn = std::sync::Arc::new(Conn::new(&Stream::Unix(a)).unwrap());
        conn.post_frame(&frame).unwrap();
        conn.post_frame(&frame).unwrap();
        for _ in 0..2 {
            reads_view(&mut b, 7);
        }
    }

    /// A message larger than a frame is refused as its encoding passes the
    /// bound (none of it copied or sent: the huge payload's zeroed pages are
    /// never touched), and the connection goes on: what follows reads back
    /// whole. Its length could otherwise wrap the u32 prefix past 4 GiB.
    #[test]
    fn a_message_larger_than_a_frame_is_refused_and_nothing_is_sent() {
        let huge = PeerMsg::TaskDone {
            task: crate::ids::TaskId {
                owner: crate::ids::WorkerId::new(0, 1),
                seq: 1,
            },
            returns: vec![Payload::Inline(vec![0u8; MAX_FRAME + 1])],
            app_error: false,
            exiting: false,
            lost_args: Vec::new(),
        };
        let (a, b) = UnixStream::pair().unwrap();
        let conn = std::sync::Arc::new(Conn::new(&Stream::Unix(a)).unwrap());
        for e in [
            conn.send(&huge).unwrap_err(),
            conn.try_send(&huge).unwrap_err(),
            encode_frame(&huge).unwrap_err(),
        ] {
            assert!(e.message().contains("the most one frame carries"), "{e}");
        }
        conn.send(&view(9)).unwrap();
        let mut r = b;
        reads_view(&mut r, 9);
    }

    /// One frame larger than the outbox's bound is kept whole (a push of
    /// a few hundred MB, deferred while another thread writes, closed the
    /// connection); what is kept past the bound then counts as a peer not
    /// reading.
    #[test]
    fn one_frame_past_the_outbox_bound_is_kept() {
        let (a, _b) = UnixStream::pair().unwrap();
        let conn = Conn::new(&Stream::Unix(a)).unwrap();
        let big = vec![0u8; MAX_OUTBOX + (44 << 20)];
        assert!(!conn.defer(&big).unwrap());
        let e = conn.defer(&[0u8; 16]).unwrap_err();
        assert!(e.message().contains("stopped reading"), "{e}");
    }

    /// `n` requests written at once (then end of input) to a reader's
    /// socket, and a connection for its replies: the reader's side, the
    /// replies' connection, and its peer (with its descriptor, to see what
    /// is waiting there).
    fn requests_read_together(
        n: u64,
    ) -> (
        UnixStream,
        std::sync::Arc<Conn>,
        UnixStream,
        std::os::fd::RawFd,
    ) {
        use std::os::fd::AsRawFd;
        let (input, mut feed) = UnixStream::pair().unwrap();
        let (out, peer) = UnixStream::pair().unwrap();
        let peer_fd = peer.as_raw_fd();
        let replies = std::sync::Arc::new(Conn::new(&Stream::Unix(out)).unwrap());
        let mut frames = Vec::new();
        for offset in 0..n {
            frames.extend(
                encode_frame(&ToRaylet::FreeObjects {
                    offsets: vec![offset],
                })
                .unwrap(),
            );
        }
        feed.write_all(&frames).unwrap();
        (input, replies, peer, peer_fd)
    }

    /// Replies a handler sends while more messages it read wait to be
    /// handled are held back, then go out together, in order, before the
    /// last message read is handled (whose handler may block); the reply
    /// to that one goes out at once.
    #[test]
    fn replies_to_messages_read_together_go_out_together() {
        // Three requests in one write: read at once.
        let (input, replies, peer, peer_fd) = requests_read_together(3);
        let mut seen = Vec::new();
        read_loop(Stream::Unix(input), |m| {
            // What the peer could read when this message came in.
            seen.push(bytes_waiting(peer_fd));
            send_batched(&replies, &m).unwrap();
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![false, false, true],
            "held while more was read, out before the last is handled"
        );
        let mut r = BufReader::new(peer);
        for offset in 0..3u64 {
            let got = read_frame(&mut r, &mut Vec::new()).unwrap();
            assert!(
                matches!(&got, Some(Msg::ToRaylet(ToRaylet::FreeObjects { offsets })) if offsets == &vec![offset]),
                "{got:?}"
            );
        }
        // Outside a batch: sent at once.
        send_batched(&replies, &ToRaylet::Blocked).unwrap();
        let got = read_frame(&mut r, &mut Vec::new()).unwrap();
        assert!(
            matches!(got, Some(Msg::ToRaylet(ToRaylet::Blocked))),
            "{got:?}"
        );
    }

    /// A handler about to connect somewhere (which may wait) writes what
    /// its thread held back first, even with more read to handle.
    #[test]
    fn held_sends_go_out_before_a_handler_connects() {
        let (input, replies, _peer, peer_fd) = requests_read_together(2);
        let nowhere = Endpoint::Unix(
            std::env::temp_dir().join(format!("rustray-test-nowhere-{}", std::process::id())),
        );
        let mut seen = Vec::new();
        let mut first = true;
        read_loop(Stream::Unix(input), |m| {
            if std::mem::replace(&mut first, false) {
                send_batched(&replies, &m).unwrap();
                let held = bytes_waiting(peer_fd);
                // Fails (nobody listens there), but only after the flush.
                assert!(nowhere.connect(&Secret::random()).is_err());
                seen.push((held, bytes_waiting(peer_fd)));
            }
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(false, true)],
            "held, then out before the connect"
        );
    }

    /// Only a whole frame already read counts as more to handle: part of
    /// one means the reader must wait for the peer.
    #[test]
    fn only_a_whole_frame_counts_as_more_input() {
        let f = encode_frame(&ToRaylet::Blocked).unwrap();
        assert!(whole_frame(&f));
        assert!(!whole_frame(&f[..f.len() - 1]));
        assert!(!whole_frame(&f[..3]));
        assert!(!whole_frame(&[]));
        let mut two = f.clone();
        two.extend_from_slice(&f[..2]);
        assert!(whole_frame(&two), "the first of them is whole");
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

    /// A flush that times out with part of the kept bytes written ends the
    /// connection and keeps nothing: written again from their start, those
    /// bytes would break the peer's framing. The peer reads whole frames,
    /// then the end.
    #[test]
    fn a_failed_flush_ends_the_connection_and_keeps_nothing() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Stream::Unix(a), Stream::Unix(b));
        let conn = Conn::with_send_timeout(&a, Duration::from_millis(200)).unwrap();
        let big = ToRaylet::FreeObjects {
            offsets: (0..50_000).collect(),
        };
        // b does not read: sends that do not block fill the socket, then
        // are kept.
        let mut kept = 0;
        for _ in 0..64 {
            if !conn.try_send(&big).unwrap() {
                kept += 1;
            }
        }
        assert!(kept > 0 && conn.pending());
        assert!(
            conn.flush().is_err(),
            "the peer reads nothing: it times out"
        );
        assert!(!conn.pending(), "nothing kept to write again");
        let mut r = BufReader::new(b);
        let mut body = Vec::new();
        let mut whole = 0;
        while let Ok(Some(_)) = read_frame(&mut r, &mut body) {
            whole += 1;
        }
        assert!(whole >= 1, "whole frames, then the end");
        assert!(conn.flush().is_ok(), "nothing left to write");
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

    /// Frames held back (another thread had the writer, or a batch held
    /// them) go out with the next non-blocking send when the socket has
    /// room, in order: they are no sign of a full socket.
    #[test]
    fn held_frames_go_out_with_the_next_try_send() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Stream::Unix(a), Stream::Unix(b));
        let conn = std::sync::Arc::new(Conn::new(&a).unwrap());
        conn.hold(&ToRaylet::Blocked).unwrap();
        assert!(
            conn.try_send(&ToRaylet::Unblocked).unwrap(),
            "written at once, nothing kept"
        );
        conn.hold(&ToRaylet::Blocked).unwrap();
        conn.post_flush().unwrap();
        assert!(!conn.pending(), "post_flush wrote what was held");
        assert_eq!(
            closed_and_read(&conn, a, b),
            vec![
                "ToRaylet(Blocked)",
                "ToRaylet(Unblocked)",
                "ToRaylet(Blocked)"
            ]
        );
    }

    /// Closes `conn` (sending on `a`), then reads what `b` got to its
    /// end, each message as its debug text.
    fn closed_and_read(conn: &Conn, a: Stream, b: Stream) -> Vec<String> {
        conn.close();
        drop(a);
        let mut got = Vec::new();
        read_loop(b, |m| got.push(format!("{m:?}"))).unwrap();
        got
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
        assert_eq!(
            closed_and_read(&conn, a, b),
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
