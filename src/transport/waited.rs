//! Connections whose answers the thread waiting for them may read itself.
//!
//! A caller that sent something whose answer it waits for (a lone task, a
//! synchronous actor call) spins for it briefly (`CoreWorker::wait_value`).
//! Left to the connection's own thread, the answer crosses three threads:
//! the caller's, the peer's, then the connection thread, which reads it,
//! stores the value and wakes the caller. On a connection served with
//! [`super::Dialed::serve_waited`] the spinning caller reads the answer and
//! runs the connection's handler itself ([`Waiter::read`]): two threads,
//! each of which can keep a core, as a bare socket round trip.
//!
//! How the two readers share one socket:
//! - Messages are read and handled under one lock, by one thread at a
//!   time, each whole before the next is read: the order of a connection's
//!   messages holds whichever thread handles them.
//! - The connection thread never blocks in a read while holding the lock:
//!   it waits for the socket in an epoll set of its own, then reads only
//!   what is there (the rest of a frame whose start arrived excepted).
//! - While a waiter is at it, the socket is taken out of that set (its
//!   interest cleared), so the answer does not also wake the connection
//!   thread; the last waiter to leave puts it back, and what arrived
//!   meanwhile that no waiter read wakes it then (the set is level
//!   triggered). A peer's close is reported to the set whatever the
//!   interest.
//! - A waiter that meets the stream's end, bad input or a handler's panic
//!   records it and shuts the socket down, so that the connection thread
//!   wakes, returns it, and the connection ends as it would have there.

use super::read::{as_handler, read_frame, whole_frame};
use super::{bytes_waiting, spare_core, Stream};
use crate::protocol::Msg;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::io::BufReader;
use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long the connection thread spins for an answer that is due
/// (`Conn::expect_reply`) while no waiter reads: as `stream::Waiting`.
const EXPECT_SPIN: Duration = Duration::from_micros(50);

/// Messages read and handled by the threads waiting for them, in this
/// process (see `__private::waiter_reads`).
pub(crate) static WAITER_READS: AtomicU64 = AtomicU64::new(0);

/// The reading of a connection served with `serve_waited`, shared by its
/// connection thread and the threads waiting for its answers.
pub(crate) struct Waited {
    reading: Mutex<Reading>,
    handle: Box<dyn Fn(Msg) + Send + Sync>,
    /// The connection thread's wait set: the socket alone.
    epoll: Epoll,
    fd: RawFd,
    /// Waiters reading now: the socket's interest is cleared while any is.
    waiters: AtomicU32,
    /// Held while the interest follows `waiters` to or from zero.
    turning: Mutex<()>,
    /// An answer is due (shared with the connection's `Conn::expect_reply`).
    expect: Arc<AtomicBool>,
}

/// What the reader knows of the socket before it looks.
#[derive(Clone, Copy)]
enum Hint {
    /// Bytes are waiting (a spin saw them).
    Bytes,
    /// The wait set reported it readable: bytes, or its end.
    Readable,
    /// Nothing.
    None,
}

struct Reading {
    r: BufReader<Stream>,
    body: Vec<u8>,
    /// How the stream ended, met by a waiter: the connection thread
    /// returns it.
    ended: Option<std::io::Result<()>>,
    /// The connection thread has returned: nothing is read any more.
    over: bool,
}

impl std::fmt::Debug for Waited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waited").field("fd", &self.fd).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Waited {
    pub(super) fn new(
        stream: Stream,
        expect: Arc<AtomicBool>,
        handle: Box<dyn Fn(Msg) + Send + Sync>,
    ) -> std::io::Result<Arc<Waited>> {
        let fd = stream.raw_fd();
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
        Ok(Arc::new(Waited {
            reading: Mutex::new(Reading {
                r: BufReader::with_capacity(64 * 1024, stream),
                body: Vec::new(),
                ended: None,
                over: false,
            }),
            handle,
            epoll,
            fd,
            waiters: AtomicU32::new(0),
            turning: Mutex::new(()),
            expect,
        }))
    }

    /// Reads and handles the messages whose bytes are there now (to the
    /// end of what one read of the socket brought); true if it handled
    /// one. `Err` when the stream ended (`UnexpectedEof` for a clean end).
    fn drain(&self, g: &mut Reading, hint: Hint) -> std::io::Result<bool> {
        let mut handled = false;
        let mut hint = hint;
        loop {
            if !whole_frame(g.r.buffer()) {
                if handled && g.r.buffer().is_empty() {
                    // What the last read brought is handled: the caller
                    // looks at the socket again (its wait set, or its spin).
                    return Ok(true);
                }
                match hint {
                    Hint::Bytes => {}
                    // Reported readable with no byte waiting: the end of
                    // the stream, or another reader took the bytes first.
                    Hint::Readable => {
                        if g.r.buffer().is_empty() && !bytes_waiting(self.fd) && !at_end(self.fd)? {
                            return Ok(handled);
                        }
                    }
                    Hint::None => {
                        if !bytes_waiting(self.fd) {
                            return Ok(handled);
                        }
                    }
                }
            }
            hint = Hint::None;
            let Reading { r, body, .. } = g;
            let Some(msg) = read_frame(r, body)? else {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            };
            if body.capacity() > 1 << 20 {
                *body = Vec::new();
            }
            let more = whole_frame(r.buffer());
            as_handler(more, self.fd, || (self.handle)(msg));
            handled = true;
        }
    }

    /// Records how the stream ended, for the connection thread, and wakes
    /// it by shutting the socket down.
    fn end(&self, g: &mut Reading, how: std::io::Result<()>) {
        if g.ended.is_none() {
            g.ended = Some(how);
        }
        // SAFETY: shutdown(2) on the connection's socket, open for as
        // long as this reading holds its stream; it closes nothing.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }

    /// Clears or restores the socket's interest in the connection thread's
    /// wait set.
    fn interest(&self, on: bool) {
        let flags = if on {
            EpollFlags::EPOLLIN
        } else {
            EpollFlags::empty()
        };
        let mut ev = EpollEvent::new(flags, 0);
        // SAFETY: the socket is open for as long as this reading holds its
        // stream (it is closed only when the `Waited` is dropped), and the
        // borrow does not outlive this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        if let Err(e) = self.epoll.modify(fd, &mut ev) {
            crate::log::log!("waited connection: epoll interest not changed ({e})");
        }
    }
}

/// Whether the socket is at its end (a read would return 0 bytes), not
/// merely empty now.
fn at_end(fd: RawFd) -> std::io::Result<bool> {
    use nix::errno::Errno;
    use nix::sys::socket::{recv, MsgFlags};
    let mut one = [0u8; 1];
    match recv(fd, &mut one, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => Ok(true),
        Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The connection thread's loop: waits for the socket (spinning first when
/// an answer is due and no waiter reads), then reads and handles what is
/// there, until the stream ends.
pub(super) fn read_loop_waited(w: &Waited) -> std::io::Result<()> {
    struct Over<'a>(&'a Waited);
    impl Drop for Over<'_> {
        fn drop(&mut self) {
            lock(&self.0.reading).over = true;
            super::read::flush_batched();
        }
    }
    let _over = Over(w);
    let mut events = [EpollEvent::empty(); 1];
    let mut hint = Hint::None;
    loop {
        {
            let mut g = lock(&w.reading);
            if let Some(end) = g.ended.take() {
                return end;
            }
            match w.drain(&mut g, hint) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            hint = Hint::None;
            if !w.expect.load(Ordering::Acquire) {
                // No answer is due to a waiting thread: read as any
                // connection thread does, blocked in the read, the reading
                // held (one system call, where a wait set costs two).
                super::read::flush_batched();
                let Reading { r, body, .. } = &mut *g;
                let Some(msg) = read_frame(r, body)? else {
                    return Ok(());
                };
                let more = whole_frame(r.buffer());
                as_handler(more, w.fd, || (w.handle)(msg));
                continue;
            }
        }
        // An answer is due: wait with the reading left free for the
        // thread waiting for it; spin first if that thread does not read.
        super::read::flush_batched();
        w.expect.store(false, Ordering::Release);
        if spare_core() {
            let start = Instant::now();
            while start.elapsed() < EXPECT_SPIN && w.waiters.load(Ordering::Acquire) == 0 {
                if bytes_waiting(w.fd) {
                    hint = Hint::Bytes;
                    break;
                }
                std::thread::yield_now();
            }
            if matches!(hint, Hint::Bytes) {
                continue;
            }
        }
        match w.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) if n > 0 => hint = Hint::Readable,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

thread_local! {
    /// The connection this thread last sent something on whose answer it
    /// waits for (`Conn::expect_reply`), if served with `serve_waited`.
    static AWAITED: std::cell::RefCell<Option<Weak<Waited>>> = const { std::cell::RefCell::new(None) };
}

/// This thread sent, on the connection read through `w`, something whose
/// answer it will wait for.
pub(super) fn awaiting(w: &Arc<Waited>) {
    AWAITED.with(|a| *a.borrow_mut() = Some(Arc::downgrade(w)));
}

/// From a thread about to wait for a value: the connection its answer
/// comes on, to read while it spins ([`Waiter::read`]), if this thread's
/// last message waiting on an answer went on one served with
/// `serve_waited`. Taken: the next wait needs a message of its own.
pub(crate) fn waiter() -> Option<Waiter> {
    let w = AWAITED.with(|a| a.borrow_mut().take())?.upgrade()?;
    let _turning = lock(&w.turning);
    if w.waiters.fetch_add(1, Ordering::AcqRel) == 0 {
        w.interest(false);
    }
    drop(_turning);
    Some(Waiter(w))
}

/// A thread reading a connection for the answer it waits for; dropping it
/// gives the reading back to the connection thread.
pub(crate) struct Waiter(Arc<Waited>);

impl Waiter {
    /// Reads and handles, on this thread, the messages that are there now,
    /// unless another thread reads the connection at the moment; true if
    /// it handled one.
    pub(crate) fn read(&self) -> bool {
        let w = &self.0;
        let Ok(mut g) = w.reading.try_lock() else {
            return false;
        };
        if g.ended.is_some() || g.over {
            return false;
        }
        let got =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.drain(&mut g, Hint::None)));
        let handled = match got {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let how = match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => Ok(()),
                    _ => Err(e),
                };
                w.end(&mut g, how);
                true
            }
            Err(p) => {
                let what = super::panic_text(&*p);
                crate::log::log!(
                    "a message handler panicked on a waiting thread ({what}); connection closed"
                );
                w.end(
                    &mut g,
                    Err(std::io::Error::other("a message handler panicked")),
                );
                true
            }
        };
        drop(g);
        if handled {
            WAITER_READS.fetch_add(1, Ordering::Relaxed);
            super::read::flush_batched();
        }
        handled
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let _turning = lock(&self.0.turning);
        if self.0.waiters.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.interest(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{encode_frame, Dialed, Stream};
    use super::*;
    use crate::protocol::ToRaylet;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::thread::ThreadId;

    type Seen = mpsc::Receiver<(Msg, ThreadId)>;

    /// A served connection whose handler reports each message with the
    /// thread that handled it, the peer's end, and a receiver that fires
    /// when the connection ends.
    fn served() -> (
        Arc<super::super::Conn>,
        UnixStream,
        Seen,
        mpsc::Receiver<()>,
    ) {
        let (a, b) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let (closed_tx, closed) = mpsc::channel();
        let conn = Dialed::for_test(Stream::Unix(a))
            .serve_waited(
                "test-waited",
                move |m| drop(lock(&tx).send((m, std::thread::current().id()))),
                move || {
                    let _ = closed_tx.send(());
                },
            )
            .unwrap();
        (conn, b, rx, closed)
    }

    fn frame() -> Vec<u8> {
        encode_frame(&ToRaylet::Blocked).unwrap()
    }

    /// Brings the connection thread to wait in its wait set, as it does
    /// once it has handled an answer that was due: a message is sent with
    /// an answer due and handled there, then it is given time to spin.
    fn settle(conn: &super::super::Conn, peer: &mut UnixStream, seen: &Seen) {
        conn.expect_reply();
        drop(waiter());
        peer.write_all(&frame()).unwrap();
        let (_, t) = seen.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_ne!(t, std::thread::current().id());
        std::thread::sleep(Duration::from_millis(20));
    }

    /// Reads as the waiter until it handled something, within a bound.
    fn read_until_handled(w: &Waiter) {
        let until = Instant::now() + Duration::from_secs(5);
        while !w.read() {
            assert!(Instant::now() < until, "the waiter never read the answer");
            std::thread::yield_now();
        }
    }

    /// The thread that sent something whose answer it waits for reads
    /// that answer and runs the handler itself, the messages before it
    /// too, in order; without a waiter the connection thread does.
    #[test]
    fn a_waiter_reads_and_handles_its_answer_on_its_own_thread() {
        let (conn, mut peer, seen, _closed) = served();
        assert!(waiter().is_none(), "nothing awaited yet");
        settle(&conn, &mut peer, &seen);
        conn.expect_reply();
        let w = waiter().expect("awaited on a waited connection");
        assert!(waiter().is_none(), "taken by the first wait");
        let mut three = frame();
        three.extend(encode_frame(&ToRaylet::Unblocked).unwrap());
        three.extend(frame());
        peer.write_all(&three).unwrap();
        read_until_handled(&w);
        let me = std::thread::current().id();
        let got: Vec<(Msg, ThreadId)> = seen.try_iter().collect();
        assert_eq!(got.len(), 3, "all that came in one read: {got:?}");
        assert!(got.iter().all(|(_, t)| *t == me), "handled here");
        assert!(matches!(got[1].0, Msg::ToRaylet(ToRaylet::Unblocked)));
        drop(w);
        // No waiter: the connection thread reads what comes next (its
        // wait set has the socket again).
        peer.write_all(&frame()).unwrap();
        let (_, t) = seen.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_ne!(t, me, "the connection thread handled it");
    }

    /// While a waiter is at it, the connection thread is not woken by the
    /// socket: what the waiter does not read before it leaves, the
    /// connection thread reads once it has left.
    #[test]
    fn what_a_waiter_leaves_unread_the_connection_thread_reads() {
        let (conn, mut peer, seen, _closed) = served();
        settle(&conn, &mut peer, &seen);
        conn.expect_reply();
        let w = waiter().expect("awaited");
        peer.write_all(&frame()).unwrap();
        assert!(
            seen.recv_timeout(Duration::from_millis(100)).is_err(),
            "the connection thread took it while a waiter was at it"
        );
        drop(w);
        let (_, t) = seen.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_ne!(t, std::thread::current().id());
    }

    /// The stream's end, or bad input, met by a waiter ends the connection
    /// as it would have on the connection thread: it is reported closed.
    #[test]
    fn a_waiter_meeting_the_end_or_bad_input_ends_the_connection() {
        for bad in [false, true] {
            let (conn, mut peer, seen, closed) = served();
            settle(&conn, &mut peer, &seen);
            conn.expect_reply();
            let w = waiter().expect("awaited");
            if bad {
                // A length prefix past the bound.
                peer.write_all(&u32::MAX.to_le_bytes()).unwrap();
            } else {
                drop(peer);
            }
            // Whichever meets it (a peer's close wakes the connection
            // thread even while a waiter reads; bad input is the waiter's
            // to find), the connection ends.
            let until = Instant::now() + Duration::from_secs(5);
            while closed.try_recv().is_err() {
                assert!(Instant::now() < until, "the connection never ended");
                w.read();
                std::thread::yield_now();
            }
            assert!(!w.read(), "nothing is read after the end");
        }
    }
}
