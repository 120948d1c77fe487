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
//! - With no answer due, the connection thread reads as any does, blocked
//!   in its read with the lock held (one system call per read). With one
//!   due, it spins briefly for it (taking what the socket holds, without
//!   waiting, while no waiter reads; not at all when the sender will read
//!   it, which it would race), then waits for the socket in an epoll
//!   set of its own, without the lock, and reads only what is there (the
//!   rest of a frame whose start arrived excepted).
//! - While a waiter is at it, the socket's interest in that set is cut to
//!   the peer's close, so that the answer does not also wake the
//!   connection thread; the last waiter to leave puts it back, and what
//!   arrived meanwhile that no waiter read wakes it then (the set is level
//!   triggered).
//! - A waiter never blocks in a read (its wait has a bound): it reads only
//!   frames wholly there, and leaves one still arriving, or one whose
//!   length is past the bound, to the connection thread.
//! - A waiter that meets the stream's end, bad input or a handler's panic
//!   records it and shuts the socket down, so that the connection thread
//!   wakes, returns it, and the connection ends as it would have there.
//!   Once it is recorded, nothing more is read, by anyone.

use super::read::{as_handler, bytes_there, read_frame, whole_frame};
use super::{spare_core, Stream};
use crate::protocol::Msg;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags, EpollTimeout};
use std::io::{BufRead, BufReader};
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

/// The interest of the connection thread's wait set in the socket: its
/// bytes, or (while a waiter reads) only the peer's close (a TCP peer's
/// close raises no `EPOLLHUP`, only `EPOLLRDHUP`).
fn interest(all: bool) -> EpollFlags {
    if all {
        EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP
    } else {
        EpollFlags::EPOLLRDHUP
    }
}

/// The reading of a connection served with `serve_waited`, shared by its
/// connection thread and the threads waiting for its answers.
pub(crate) struct Waited {
    reading: Mutex<Reading>,
    handle: Box<dyn Fn(Msg) + Send + Sync>,
    /// The connection thread's wait set: the socket alone.
    epoll: Epoll,
    fd: RawFd,
    /// Waiters reading now: the socket's interest is cut while any is.
    waiters: AtomicU32,
    /// Held while the interest follows `waiters` to or from zero.
    turning: Mutex<()>,
    /// An answer is due (shared with the connection's `Conn::expect_reply`).
    expect: Arc<AtomicBool>,
    /// The thread that sent what the answer is due for will read it
    /// ([`awaiting`]): the connection thread waits without spinning.
    caller_reads: AtomicBool,
    /// The connection thread waits in its wait set now (for tests).
    #[cfg(test)]
    parked: AtomicBool,
}

/// What the connection thread knows of the socket before it reads.
#[derive(Clone, Copy)]
enum Hint {
    /// Nothing known: it blocks in its read if no answer is due, else
    /// reads only what is there.
    None,
    /// It saw bytes waiting, or its wait set reported the socket, when
    /// waiters had read `n` times: unless they read since, a read returns
    /// at once (bytes, or the end).
    Seen(u64),
}

/// The socket as the reading's buffer reads it: blocking, or (for the
/// connection thread's spin) taking only what is there.
struct Sock {
    s: Stream,
    dont_wait: bool,
}

impl std::io::Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.dont_wait {
            return self.s.read(buf);
        }
        use nix::sys::socket::{recv, MsgFlags};
        recv(self.s.raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(std::io::Error::from)
    }
}

struct Reading {
    r: BufReader<Sock>,
    body: Vec<u8>,
    /// How the stream ended, met by a waiter: the connection thread
    /// returns it.
    ended: Option<std::io::Result<()>>,
    /// The stream's end is recorded (`ended`, or the connection thread has
    /// returned it): nothing is read any more.
    over: bool,
    /// Reads by waiters that handled a message, so far.
    taken: u64,
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
    /// The connection thread's wait set for `stream` (made before the
    /// stream is given up, so that a failure leaves it to be served
    /// plainly).
    pub(super) fn wait_set(stream: &Stream) -> std::io::Result<Epoll> {
        let epoll = Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(stream.as_fd(), EpollEvent::new(interest(true), 0))?;
        Ok(epoll)
    }

    /// The reading of `stream`, whose connection thread waits in `epoll`
    /// ([`Waited::wait_set`]).
    pub(super) fn new(
        stream: Stream,
        epoll: Epoll,
        expect: Arc<AtomicBool>,
        handle: Box<dyn Fn(Msg) + Send + Sync>,
    ) -> Arc<Waited> {
        Arc::new(Waited {
            fd: stream.raw_fd(),
            reading: Mutex::new(Reading {
                r: BufReader::with_capacity(
                    64 * 1024,
                    Sock {
                        s: stream,
                        dont_wait: false,
                    },
                ),
                body: Vec::new(),
                ended: None,
                over: false,
                taken: 0,
            }),
            handle,
            epoll,
            waiters: AtomicU32::new(0),
            turning: Mutex::new(()),
            expect,
            caller_reads: AtomicBool::new(false),
            #[cfg(test)]
            parked: AtomicBool::new(false),
        })
    }

    /// Reads and handles one message, blocking until it is whole.
    fn one(&self, g: &mut Reading) -> std::io::Result<()> {
        let Reading { r, body, .. } = g;
        let Some(msg) = read_frame(r, body)? else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        if body.capacity() > 1 << 20 {
            *body = Vec::new();
        }
        let more = whole_frame(r.buffer());
        as_handler(more, self.fd, || (self.handle)(msg));
        Ok(())
    }

    /// Reads and handles the messages that are there now, to the end of
    /// what one read of the socket brought; how many. `sure`: a read
    /// returns at once (see [`Hint::Seen`]). A `waiter` reads only frames
    /// wholly there (it must never block in a read: its wait has a bound);
    /// the connection thread also one whose start is there (the rest is on
    /// its way). `Err` when the stream ended (`UnexpectedEof` for a clean
    /// end).
    fn drain(&self, g: &mut Reading, sure: bool, waiter: bool) -> std::io::Result<u64> {
        let mut handled = 0;
        let mut sure = sure;
        loop {
            if !whole_frame(g.r.buffer()) {
                if handled > 0 && g.r.buffer().is_empty() {
                    // What the last read brought is handled: the caller
                    // looks at the socket again (its wait set, or its spin).
                    return Ok(handled);
                }
                let empty = g.r.buffer().is_empty();
                let readable = sure
                    || match peek(self.fd)? {
                        Peek::Frame => empty || !waiter,
                        Peek::Part => !waiter,
                        // Read at once: 0 bytes, the end.
                        Peek::End => empty,
                        Peek::Nothing => false,
                    };
                if !readable {
                    return Ok(handled);
                }
            }
            sure = false;
            self.one(g)?;
            handled += 1;
        }
    }

    /// From the connection thread's spin: takes into the (empty) buffer
    /// what the socket holds now, without waiting (one system call, where
    /// looking first costs two); true if there was something (or the end,
    /// or an error: the next turn of the loop finds it), or if the buffer
    /// already held part of a frame (its rest is on its way), or if the
    /// stream's end is recorded. False, without a look, while a waiter
    /// reads.
    fn fill_now(&self) -> bool {
        let Ok(mut g) = self.reading.try_lock() else {
            return false;
        };
        if g.over || !g.r.buffer().is_empty() {
            return true;
        }
        g.r.get_mut().dont_wait = true;
        let got = g.r.fill_buf().map(|_| ());
        g.r.get_mut().dont_wait = false;
        match got {
            Ok(()) => true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                false
            }
            // Taken by this read: the loop returns it.
            Err(e) => {
                g.ended = Some(Err(e));
                g.over = true;
                true
            }
        }
    }

    /// Records how the stream ended, for the connection thread, and wakes
    /// it by shutting the socket down.
    fn end(&self, g: &mut Reading, how: std::io::Result<()>) {
        if !g.over {
            g.ended = Some(how);
            g.over = true;
        }
        // SAFETY: shutdown(2) on the connection's socket, open for as
        // long as this reading holds its stream; it closes nothing.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }

    /// Sets the socket's interest in the connection thread's wait set.
    fn interest(&self, all: bool) {
        let mut ev = EpollEvent::new(interest(all), 0);
        // SAFETY: the socket is open for as long as this reading holds its
        // stream (it is closed only when the `Waited` is dropped), and the
        // borrow does not outlive this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        if let Err(e) = self.epoll.modify(fd, &mut ev) {
            // The connection thread might never be woken for its bytes:
            // the connection ends, visibly, rather than stall.
            crate::log::log!(
                "waited connection: epoll interest not changed ({e}); connection closed"
            );
            // SAFETY: as above; shutdown(2) closes nothing.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
    }
}

/// What a read of the socket would find now.
enum Peek {
    /// A whole frame (its length prefix and as many bytes as it says).
    Frame,
    /// Bytes, but not a whole frame yet.
    Part,
    /// The peer's end: a read returns 0 bytes.
    End,
    Nothing,
}

/// Looks at the socket without taking anything or waiting: one system
/// call when nothing is there, two when something is.
fn peek(fd: RawFd) -> std::io::Result<Peek> {
    use nix::errno::Errno;
    use nix::sys::socket::{recv, MsgFlags};
    let mut len = [0u8; 4];
    match recv(fd, &mut len, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => Ok(Peek::End),
        Ok(4) => {
            let need = (u32::from_le_bytes(len) as usize).saturating_add(4);
            Ok(if bytes_there(fd) >= need {
                Peek::Frame
            } else {
                Peek::Part
            })
        }
        Ok(_) => Ok(Peek::Part),
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(Peek::Nothing),
        Err(e) => Err(e.into()),
    }
}

/// The connection thread's loop, until the stream ends: blocked in its
/// read while no answer is due; else waiting for the socket (spinning
/// first while no waiter reads), then reading what is there.
pub(super) fn read_loop_waited(w: &Waited) -> std::io::Result<()> {
    let mut events = [EpollEvent::empty(); 1];
    let mut hint = Hint::None;
    // An answer is due: the flag, taken (the caller may set it again
    // meanwhile, for its next call).
    let mut due = false;
    'serve: loop {
        let end = 'read: {
            let mut g = lock(&w.reading);
            due |= w.expect.swap(false, Ordering::AcqRel);
            let step = match g.ended.take() {
                Some(end) => {
                    g.over = true;
                    break 'read end;
                }
                None if matches!(hint, Hint::None) && !due => {
                    if !whole_frame(g.r.buffer()) {
                        // About to block in the read: what handling the
                        // last message held back goes out first (a waiter
                        // may have handled the rest of its batch).
                        super::read::flush_batched();
                    }
                    w.one(&mut g).map(|_| true)
                }
                None => {
                    let sure = matches!(hint, Hint::Seen(n) if n == g.taken);
                    w.drain(&mut g, sure, false).map(|_| {
                        due |= w.expect.swap(false, Ordering::AcqRel);
                        whole_frame(g.r.buffer()) || !due
                    })
                }
            };
            match step {
                Ok(again) => {
                    hint = Hint::None;
                    if again {
                        continue 'serve;
                    }
                }
                Err(e) => {
                    g.over = true;
                    match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => break 'read Ok(()),
                        _ => break 'read Err(e),
                    }
                }
            }
            // An answer is due: wait with the reading left free for the
            // thread waiting for it; spin first while that thread does not
            // read.
            due = false;
            let taken = g.taken;
            drop(g);
            super::read::flush_batched();
            // Not when the thread that sent it will read the answer: a
            // spin here would race it (on a busy node, win every time).
            if spare_core() && !w.caller_reads.swap(false, Ordering::AcqRel) {
                let start = Instant::now();
                while start.elapsed() < EXPECT_SPIN && w.waiters.load(Ordering::Acquire) == 0 {
                    if w.fill_now() {
                        hint = Hint::Seen(taken);
                        break;
                    }
                    std::thread::yield_now();
                }
                if matches!(hint, Hint::Seen(_)) {
                    continue 'serve;
                }
            }
            #[cfg(test)]
            w.parked.store(true, Ordering::Release);
            let woke = w.epoll.wait(&mut events, EpollTimeout::NONE);
            #[cfg(test)]
            w.parked.store(false, Ordering::Release);
            match woke {
                Ok(n) if n > 0 => hint = Hint::Seen(taken),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => break 'read Err(e.into()),
            }
            continue 'serve;
        };
        // Every way out marks the reading over (under the lock it read
        // under, where it had it), so that no waiter reads past the end;
        // a handler's panic here poisons the lock instead, which keeps
        // waiters out as well.
        lock(&w.reading).over = true;
        super::read::flush_batched();
        return end;
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
    w.caller_reads.store(true, Ordering::Release);
    AWAITED.with(|a| *a.borrow_mut() = Some(Arc::downgrade(w)));
}

/// From a thread about to wait for a value: the connection its answer may
/// come on, if the last message this thread sent waiting on an answer went
/// on one served with `serve_waited`. Taken, whether or not the thread then
/// reads it ([`Awaited::waiter`]): every wait for a value forgets it, so
/// that a later one does not read a connection it expects nothing from.
pub(crate) fn awaited() -> Option<Awaited> {
    AWAITED.with(|a| a.borrow_mut().take()).map(Awaited)
}

/// The connection a waiting thread's answer may come on (see [`awaited`]).
pub(crate) struct Awaited(Weak<Waited>);

impl Awaited {
    /// Starts reading it (until the [`Waiter`] is dropped).
    pub(crate) fn waiter(self) -> Option<Waiter> {
        let w = self.0.upgrade()?;
        let _turning = lock(&w.turning);
        if w.waiters.fetch_add(1, Ordering::AcqRel) == 0 {
            w.interest(false);
        }
        drop(_turning);
        Some(Waiter(w))
    }
}

/// A thread reading a connection for the answer it waits for; dropping it
/// gives the reading back to the connection thread.
pub(crate) struct Waiter(Arc<Waited>);

impl Waiter {
    /// Reads and handles, on this thread, the messages that are there now,
    /// unless another thread reads the connection at the moment; true if
    /// it handled one (or met the stream's end).
    pub(crate) fn read(&self) -> bool {
        let w = &self.0;
        let Ok(mut g) = w.reading.try_lock() else {
            return false;
        };
        if g.over {
            return false;
        }
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            w.drain(&mut g, false, true)
        }));
        let handled = match got {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                let how = match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => Ok(()),
                    _ => Err(e),
                };
                w.end(&mut g, how);
                drop(g);
                super::read::flush_batched();
                return true;
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
                drop(g);
                super::read::flush_batched();
                return true;
            }
        };
        if handled == 0 {
            return false;
        }
        g.taken += 1;
        drop(g);
        WAITER_READS.fetch_add(handled, Ordering::Relaxed);
        super::read::flush_batched();
        true
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
        let (conn, seen, closed) = serve(Stream::Unix(a));
        (conn, b, seen, closed)
    }

    fn serve(a: Stream) -> (Arc<super::super::Conn>, Seen, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let (closed_tx, closed) = mpsc::channel();
        let conn = Dialed::for_test(a)
            .serve_waited(
                "test-waited",
                move |m| drop(lock(&tx).send((m, std::thread::current().id()))),
                move || {
                    let _ = closed_tx.send(());
                },
            )
            .unwrap();
        (conn, rx, closed)
    }

    fn frame() -> Vec<u8> {
        encode_frame(&ToRaylet::Blocked).unwrap()
    }

    /// Brings the connection thread to wait in its wait set, as it does
    /// once it has handled an answer that was due: a message is sent with
    /// an answer due and handled there, then it is given time to spin.
    fn settle(conn: &super::super::Conn, peer: &mut impl Write, seen: &Seen) {
        let w = conn.waited_for_test().expect("served with serve_waited");
        // A connection thread that took the flag before the message came
        // (it had only just started) handles it, then, with no answer due,
        // blocks in its read: the next round brings it to its wait set.
        for _ in 0..10 {
            conn.expect_reply();
            drop(awaited());
            peer.write_all(&frame()).unwrap();
            let (_, t) = seen.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_ne!(t, std::thread::current().id());
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                if w.parked.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        panic!("the connection thread never waited in its wait set");
    }

    /// A served connection, settled, with this thread waiting on it.
    fn waiting() -> (
        Arc<super::super::Conn>,
        UnixStream,
        Seen,
        mpsc::Receiver<()>,
        Waiter,
    ) {
        let (conn, mut peer, seen, closed) = served();
        settle(&conn, &mut peer, &seen);
        conn.expect_reply();
        let w = awaited().and_then(Awaited::waiter).expect("awaited");
        (conn, peer, seen, closed, w)
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
        assert!(awaited().is_none(), "nothing awaited yet");
        settle(&conn, &mut peer, &seen);
        conn.expect_reply();
        let w = awaited()
            .and_then(Awaited::waiter)
            .expect("awaited on a waited connection");
        assert!(awaited().is_none(), "taken by the first wait");
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
        let (_conn, mut peer, seen, _closed, w) = waiting();
        peer.write_all(&frame()).unwrap();
        assert!(
            seen.recv_timeout(Duration::from_millis(100)).is_err(),
            "the connection thread took it while a waiter was at it"
        );
        drop(w);
        let (_, t) = seen.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_ne!(t, std::thread::current().id());
    }

    /// A waiter never blocks in a read (its wait has a bound): a frame not
    /// wholly there is left until it is, and one whose length is past the
    /// bound is left to the connection thread, which ends the connection
    /// once the waiter has gone. The peer's end, met by either, ends it.
    #[test]
    fn a_waiter_reads_whole_frames_only_and_the_end_ends_the_connection() {
        let (_conn, mut peer, seen, _closed, w) = waiting();
        let f = frame();
        let (head, rest) = f.split_at(f.len() / 2);
        peer.write_all(head).unwrap();
        let rest = rest.to_vec();
        let mut late = peer.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            late.write_all(&rest).unwrap();
        });
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let t = Instant::now();
            let got = w.read();
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "a waiter blocked reading"
            );
            if got {
                break;
            }
            assert!(Instant::now() < until, "the whole frame was never read");
            std::thread::yield_now();
        }
        writer.join().unwrap();
        let (_, t) = seen.try_recv().expect("handled");
        assert_eq!(t, std::thread::current().id());
        drop(w);

        // A whole frame that does not decode: the waiter meets it, and the
        // connection thread, parked with its interest cut, is woken to end
        // the connection.
        let (_conn, mut peer, _seen, closed, w) = waiting();
        let mut garbage = 8u32.to_le_bytes().to_vec();
        garbage.extend([0xff; 8]);
        peer.write_all(&garbage).unwrap();
        read_until_handled(&w);
        closed
            .recv_timeout(Duration::from_secs(5))
            .expect("the waiter's bad input ended the connection");
        assert!(!w.read(), "nothing is read after the end");
        drop(w);

        for bad in [true, false] {
            let (_conn, mut peer, _seen, closed, w) = waiting();
            if bad {
                // A length prefix past the bound.
                peer.write_all(&u32::MAX.to_le_bytes()).unwrap();
                for _ in 0..50 {
                    assert!(!w.read(), "a frame that cannot be whole was read");
                    std::thread::sleep(Duration::from_millis(1));
                }
                drop(w);
                closed
                    .recv_timeout(Duration::from_secs(5))
                    .expect("bad input ended the connection");
            } else {
                drop(peer);
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

    /// A peer's close ends the connection while a waiter holds it (the
    /// connection thread's wait set keeps watching for it), over TCP too,
    /// where a close raises no hang-up, only the peer's read hang-up.
    #[test]
    fn a_peers_close_is_seen_while_a_waiter_holds_the_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (a, _) = listener.accept().unwrap();
        let (conn, seen, closed) = serve(Stream::Tcp(a));
        settle(&conn, &mut peer, &seen);
        conn.expect_reply();
        let w = awaited().and_then(Awaited::waiter).expect("awaited");
        drop(peer);
        closed
            .recv_timeout(Duration::from_secs(5))
            .expect("the close was seen with the waiter still there");
        assert!(!w.read(), "nothing is read after the end");
    }
}
