//! The reading side of framed connections: one thread per connection
//! reads length-prefixed frames (every length bounded before anything is
//! allocated for it) and hands each message to its handler; and what a
//! handler may ask of the thread it runs on: whether more input is already
//! read ([`more_buffered`]), and sends held back to go out in one write
//! with those that handling the rest of the batch makes ([`send_batched`]),
//! and, while it is busy for a while (a task run on this thread that
//! blocks in `get` or runs long), a thread of its own to read on meanwhile
//! ([`ReadingRef::lend`]).

use super::{guarded, Conn, Stream, MAX_FRAME};
use crate::codec;
use crate::error::{Error, Result};
use crate::protocol::{Message, Msg};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::io::{BufReader, Read};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Frames up to this size are read into a buffer sized from their length
/// prefix; larger ones grow it as their bytes arrive.
const FRAME_PREALLOC: usize = 1 << 20;

/// Reads frames until end-of-stream or a protocol error, calling `handle`
/// for each message.
pub(crate) fn read_loop(stream: Stream, handle: impl FnMut(Msg)) -> std::io::Result<()> {
    read_loop_expecting(stream, None, handle)
}

/// [`read_loop`], its reader spinning briefly before it blocks whenever
/// `expect` was set ([`Conn::expect_reply`]).
fn read_loop_expecting(
    stream: Stream,
    expect: Option<Arc<AtomicBool>>,
    mut handle: impl FnMut(Msg),
) -> std::io::Result<()> {
    /// Whatever ends the loop (the peer, an error, a handler's panic):
    /// the handler context is cleared and what was held goes out.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            INPUT.with(|i| i.set((false, -1)));
            READING.with(|r| *r.borrow_mut() = None);
            flush_batched();
        }
    }
    let _done = Done;
    let fd = stream.raw_fd();
    let shared = Arc::new(Shared {
        reading: Mutex::new(Reading {
            r: BufReader::with_capacity(64 * 1024, super::stream::Waiting(stream, expect)),
            body: Vec::new(),
            fd,
            ended: None,
        }),
        lent: AtomicBool::new(false),
    });
    READING.with(|r| *r.borrow_mut() = Some(shared.clone()));
    loop {
        let (msg, more) = {
            let mut g = lock(&shared.reading);
            let Reading { r, body, ended, .. } = &mut *g;
            if let Some(end) = ended.take() {
                // A lender met the stream's end (or an error) for us.
                return end;
            }
            let Some(msg) = read_frame(r, body)? else {
                return Ok(());
            };
            if body.capacity() > 1 << 20 {
                *body = Vec::new();
            }
            // More to handle without reading the socket: a whole frame is
            // already buffered (part of one would mean waiting for the
            // peer).
            (msg, whole_frame(r.buffer()))
        };
        if !more {
            // The last message read: what was held for the batch goes out
            // before its handler runs (which may block, or run a task), and
            // that handler's own sends go out at once.
            flush_batched();
        }
        INPUT.with(|i| i.set((more, fd)));
        handle(msg);
        INPUT.with(|i| i.set((false, -1)));
    }
}

/// A connection thread's reading: its buffer and socket, shared only so
/// that it can be lent ([`ReadingRef::lend`]) while the thread's handler
/// runs a task that blocks or runs long. The thread takes the lock to read
/// and leaves it free while it handles, and a lender reads only while that
/// handler has not returned, so the lock is never contended.
struct Reading {
    r: BufReader<super::stream::Waiting>,
    body: Vec<u8>,
    fd: std::os::fd::RawFd,
    /// How the stream ended while lent (a clean end, or the error): the
    /// connection thread returns it once its handler is back.
    ended: Option<std::io::Result<()>>,
}

struct Shared {
    reading: Mutex<Reading>,
    /// A lender reads it now: what the connection thread knew was
    /// buffered may be gone (see [`more_buffered`]).
    lent: AtomicBool,
}

fn lock(r: &Mutex<Reading>) -> std::sync::MutexGuard<'_, Reading> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// User code runs on this thread (see [`unbatched`]).
    static USER_CODE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This thread reads a lent connection.
    static LENDER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// On a connection thread: its reading, for [`this_reading`].
    static READING: std::cell::RefCell<Option<Arc<Shared>>> = const { std::cell::RefCell::new(None) };
}

/// Readings lent so far in this process (see `__private::lent_readings`).
pub(crate) static LENT_READINGS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// A connection thread's reading, to be lent from any thread while the
/// handler it runs is busy.
#[derive(Clone)]
pub(crate) struct ReadingRef(Arc<Shared>);

/// From a handler on a connection thread: that connection's reading.
pub(crate) fn this_reading() -> Option<ReadingRef> {
    READING.with(|r| r.borrow().clone()).map(ReadingRef)
}

/// The reading of a connection lent to a thread of its own; dropping it
/// takes the reading back, once the lender has handled the message in its
/// hands (and read the rest of a frame it began).
pub(crate) struct Lent {
    shared: Arc<Shared>,
    stop: Arc<(AtomicBool, EventFd)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.stop.0.store(true, Ordering::Release);
        let _ = self.stop.1.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.lent.store(false, Ordering::Release);
    }
}

impl ReadingRef {
    /// Whether both are the reading of one connection.
    pub(crate) fn same(&self, other: &ReadingRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// What the peer sends is read and handed to `handle` on a thread of
    /// its own until the [`Lent`] is dropped (the connection's handler is
    /// busy: a task run there that blocks in `get` or runs long), so that
    /// nothing it may wait for, nor a cancel, sits unread behind it.
    /// `None` when no thread could be started (nothing is lent).
    pub(crate) fn lend(&self, handle: impl FnMut(Msg) + Send + 'static) -> Option<Lent> {
        let shared = self.0.clone();
        let stop = Arc::new((
            AtomicBool::new(false),
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).ok()?,
        ));
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).ok()?;
        epoll
            .add(
                lock(&shared.reading).r.get_ref().0.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, 0),
            )
            .ok()?;
        epoll
            .add(stop.1.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))
            .ok()?;
        shared.lent.store(true, Ordering::Release);
        let (shared2, stop2) = (shared.clone(), stop.clone());
        let started = std::thread::Builder::new()
            .name("rustray-lent".into())
            .spawn(move || read_lent(&shared2.reading, &epoll, &stop2.0, handle));
        let Ok(thread) = started else {
            shared.lent.store(false, Ordering::Release);
            return None;
        };
        LENT_READINGS.fetch_add(1, Ordering::Relaxed);
        Some(Lent {
            shared,
            stop,
            thread: Some(thread),
        })
    }
}

/// On a connection thread, in its handler, after its reading was taken
/// back from a lender: whether more input is buffered is looked at again
/// (the lender may have taken what was).
pub(crate) fn reread_input() {
    let Some(shared) = READING.with(|r| r.borrow().clone()) else {
        return;
    };
    let more = whole_frame(lock(&shared.reading).r.buffer());
    INPUT.with(|i| {
        let (_, fd) = i.get();
        if fd >= 0 {
            i.set((more, fd));
        }
    });
    if !more {
        // Held for a batch the lender has handled: nothing read follows.
        flush_batched();
    }
}

/// Runs `f` (user code, on a connection thread) with its sends going out
/// at once: they belong to no batch of messages read, and what they are
/// for must not wait for the rest of the batch to be handled.
pub(crate) fn unbatched<R>(f: impl FnOnce() -> R) -> R {
    struct Restore((bool, std::os::fd::RawFd), bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INPUT.with(|i| i.set(self.0));
            USER_CODE.with(|u| u.set(self.1));
        }
    }
    let _restore = Restore(
        INPUT.with(|i| i.replace((false, i.get().1))),
        USER_CODE.with(|u| u.replace(true)),
    );
    f()
}

/// Runs `f`, the handler of a message read from socket `fd` on a thread
/// that is not that connection's own (a waiter reading its answer: see
/// `waited`), as the connection thread would: what was held goes out
/// first unless `more` whole frames are buffered behind it, the message
/// counts as handled (not user code) and its sends are batched with those
/// of the frames behind it. The thread's own context comes back after.
pub(super) fn as_handler<R>(more: bool, fd: std::os::fd::RawFd, f: impl FnOnce() -> R) -> R {
    struct Restore((bool, std::os::fd::RawFd), bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INPUT.with(|i| i.set(self.0));
            USER_CODE.with(|u| u.set(self.1));
        }
    }
    if !more {
        flush_batched();
    }
    let _restore = Restore(
        INPUT.with(|i| i.replace((more, fd))),
        USER_CODE.with(|u| u.replace(false)),
    );
    f()
}

/// A lender's loop (see [`ReadingRef::lend`]): reads whole frames as the
/// connection thread would, until stopped or the stream ends. A handler
/// that panics ends the connection, as on the connection's own thread.
fn read_lent(
    reading: &Mutex<Reading>,
    epoll: &Epoll,
    stop: &AtomicBool,
    mut handle: impl FnMut(Msg),
) {
    LENDER.with(|l| l.set(true));
    let mut events = [EpollEvent::empty(); 2];
    // The socket was reported readable: read, even with no byte waiting
    // (its end, which a read reports).
    let mut readable = false;
    while !stop.load(Ordering::Acquire) {
        let mut g = lock(reading);
        if g.ended.is_some() {
            break;
        }
        if !readable && !whole_frame(g.r.buffer()) && !super::bytes_waiting(g.fd) {
            // Wait for the peer (or the stop) without holding the reading.
            drop(g);
            match epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => readable = events[..n].iter().any(|e| e.data() == 0),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
            continue;
        }
        readable = false;
        let Reading { r, body, ended, fd } = &mut *g;
        let msg = match read_frame(r, body) {
            Ok(Some(m)) => m,
            Ok(None) => {
                *ended = Some(Ok(()));
                break;
            }
            Err(e) => {
                *ended = Some(Err(e));
                break;
            }
        };
        let (more, fd) = (whole_frame(r.buffer()), *fd);
        drop(g);
        if !more {
            flush_batched();
        }
        INPUT.with(|i| i.set((more, fd)));
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(msg)));
        INPUT.with(|i| i.set((false, -1)));
        if let Err(p) = handled {
            let what = super::panic_text(&*p);
            crate::log::log!(
                "rustray-lent: a message handler panicked ({what}); connection closed"
            );
            lock(reading).ended = Some(Err(std::io::Error::other("a message handler panicked")));
            break;
        }
    }
    flush_batched();
}

/// Whether `buf` starts with a whole frame.
pub(super) fn whole_frame(buf: &[u8]) -> bool {
    match buf.get(..4) {
        Some(len) => {
            let n = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            buf.len() - 4 >= n
        }
        None => false,
    }
}

thread_local! {
    /// Connections a handler on this thread held messages back on (see
    /// [`send_batched`]), flushed once the read buffer is handled.
    static HELD: std::cell::RefCell<Vec<std::sync::Arc<Conn>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sends `msg` on `conn`; from a message handler with more messages
/// already read and waiting to be handled, holds it back instead, to go
/// out in one write with what the handling of those sends (a batch of task
/// results read at once answered by a batch of pushes). Held messages wait
/// only for input already read, never for the peer: they go out before
/// the last message read is handled, before this thread blocks connecting
/// or waiting for an answer, and before it runs a task ([`flush_batched`]).
pub(crate) fn send_batched(conn: &std::sync::Arc<Conn>, msg: &impl Message) -> Result<()> {
    if !more_buffered() {
        return conn.send(msg);
    }
    conn.hold(msg)?;
    held_on(conn);
    Ok(())
}

/// [`send_batched`] for frames already encoded ([`push_frame`]), one or
/// more back to back.
pub(crate) fn send_frame_batched(conn: &std::sync::Arc<Conn>, frames: &[u8]) -> Result<()> {
    if !more_buffered() {
        return conn.send_parts(None, frames);
    }
    conn.defer(frames)?;
    held_on(conn);
    Ok(())
}

/// Writes what is held on `conn` ([`Conn::hold_frames`]) now, or, from a
/// handler with more messages already read, with what handling them holds
/// ([`flush_batched`]).
pub(crate) fn flush_batched_later(conn: &std::sync::Arc<Conn>) {
    if more_buffered() {
        held_on(conn);
    } else {
        let _ = conn.flush();
    }
}

/// Notes that this thread held a message back on `conn` (to be flushed
/// by [`flush_batched`]).
fn held_on(conn: &std::sync::Arc<Conn>) {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        if !h.iter().any(|c| c.id() == conn.id()) {
            h.push(conn.clone());
        }
    });
}

/// Writes what handlers on this thread held back ([`send_batched`]):
/// called before a handler blocks.
pub(crate) fn flush_batched() {
    let held = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
    for c in held {
        let _ = c.flush();
    }
}

thread_local! {
    /// In a connection thread's handler: whether more input was already
    /// buffered after the message being handled, and the socket.
    static INPUT: std::cell::Cell<(bool, std::os::fd::RawFd)> = const { std::cell::Cell::new((false, -1)) };
}

/// Called from a message handler: true if another whole frame is already
/// read after this one (it is handled next, without waiting for the peer).
/// False in user code run on the thread ([`unbatched`]), and while the
/// thread's reading is lent (the lender handles what was buffered).
pub(crate) fn more_buffered() -> bool {
    INPUT.with(|i| i.get().0) && !lent_here()
}

/// On a connection thread: its reading is lent now (what it had buffered
/// is the lender's to handle).
fn lent_here() -> bool {
    READING.with(|r| {
        r.borrow()
            .as_ref()
            .is_some_and(|s| s.lent.load(Ordering::Acquire))
    })
}

/// Whether this thread is handling a message read from a connection (as
/// opposed to running user code, here or elsewhere, or submitting).
pub(crate) fn in_handler() -> bool {
    INPUT.with(|i| i.get().1 >= 0) && !USER_CODE.with(|u| u.get())
}

/// Whether this thread reads a connection (its own, or one lent to it),
/// user code run on it included: it must never block writing (the peer
/// may be blocked writing to it).
pub(crate) fn on_connection_thread() -> bool {
    INPUT.with(|i| i.get().1 >= 0)
}

/// Whether this thread reads a lent connection ([`ReadingRef::lend`]).
pub(crate) fn on_lender() -> bool {
    LENDER.with(|l| l.get())
}

/// Called from a message handler: true if more messages from the same peer
/// are already waiting (buffered, or in the socket). A pipelining peer is
/// better served by queueing than by handling each message inline.
pub(crate) fn more_input_pending() -> bool {
    let (buffered, fd) = INPUT.with(|i| i.get());
    if lent_here() {
        return false;
    }
    if buffered {
        return true;
    }
    fd >= 0 && bytes_waiting(fd)
}

/// True if bytes wait to be read on socket `fd` (without reading them).
pub(crate) fn bytes_waiting(fd: std::os::fd::RawFd) -> bool {
    bytes_there(fd) > 0
}

/// How many bytes wait to be read on socket `fd` (without reading them).
pub(super) fn bytes_there(fd: std::os::fd::RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes the number of readable bytes into `n`; a
    // closed or foreign descriptor makes it fail, which reads as none.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
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
#[cfg(test)]
pub(crate) fn spawn_reader(
    name: String,
    stream: Stream,
    handle: impl FnMut(Msg) + Send + 'static,
    on_close: impl FnOnce() + Send + 'static,
) -> Result<()> {
    spawn_reader_expecting(name, stream, None, handle, on_close)
}

pub(super) fn spawn_reader_expecting(
    name: String,
    stream: Stream,
    expect: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
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
            guarded(&thread, &peer, || {
                read_loop_expecting(stream, expect, handle)
            });
            on_close();
        })
        .map(|_| ())
        .map_err(|e| Error::io("spawning a connection thread", e))
}
