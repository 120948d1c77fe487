//! Serving many connections from one thread: an epoll loop that accepts,
//! checks each connection's secret, reads whatever has arrived on every
//! ready socket and hands each whole frame to a [`Service`], which answers
//! without blocking ([`Conn::post`]). For a component whose peers number
//! in the thousands (the GCS: a connection or two per node), where a
//! thread per connection would cost a thread and two context switches per
//! message, and thousands of threads in all.
//!
//! The bounds are those of the threaded path ([`accept_each`] and
//! [`read_loop`](super::read_loop)): a connection must present the secret
//! within [`HANDSHAKE_TIMEOUT`](super::stream) or is dropped; a frame's
//! length is checked before anything is buffered for it, and a buffer
//! grows only with bytes that arrived; at most [`MAX_CONNECTIONS`] are
//! served at once. A malformed frame, or a panic in the service on one,
//! closes that connection alone, with a log line naming the peer. Reads
//! never block (`MSG_DONTWAIT` on a socket that stays blocking for its
//! [`Conn`]'s writes, which share its file description), and each ready
//! socket gives at most [`READ_BUDGET`] bytes per turn, so a busy peer
//! cannot starve the others.

use super::{Conn, Listener, Secret, Stream, MAX_CONNECTIONS};
use crate::codec;
use crate::protocol::Msg;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::MsgFlags;
use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

/// Bytes read from one socket before the loop turns to the next.
const READ_BUDGET: usize = 256 << 10;
/// The epoll token of the listener (connections count up from 0).
const LISTENER: u64 = u64::MAX;
/// How long the listener rests after accepting failed.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What a component served by [`serve`] does with its connections. Every
/// call is made on the loop's thread: none may block (answer with
/// [`Conn::post`], hand slow work to a thread of its own).
pub(crate) trait Service {
    /// A connection presented the secret: `conn` sends on it. Returns the
    /// service's own key for it, given back with each of its messages.
    fn opened(&self, conn: &Arc<Conn>) -> u64;
    /// A message arrived on connection `key`.
    fn message(&self, key: u64, conn: &Arc<Conn>, msg: Msg);
    /// Connection `key` ended (only for one that was `opened`).
    fn closed(&self, key: u64);
    /// Stop accepting (the loop ends once its connections have ended).
    fn stopping(&self) -> bool;
}

/// A connection the loop serves.
struct Entry {
    stream: Stream,
    /// Until the secret is in: its bytes so far, and when it connected.
    handshake: Option<Vec<u8>>,
    /// Once the secret is in: its sending half and the service's key.
    conn: Option<(Arc<Conn>, u64)>,
    /// Bytes received and not yet a whole frame (from `start`).
    buf: Vec<u8>,
    start: usize,
    peer: String,
}

/// Serves `listener`'s connections on this thread (named `name` in log
/// lines) until `svc` is stopping and every connection has ended.
pub(crate) fn serve(listener: Listener, secret: Secret, name: &'static str, svc: &impl Service) {
    if let Err(e) = run(listener, secret, name, svc) {
        crate::log::log!("{name}: the event loop failed ({e}); no more connections are served");
    }
}

fn run(
    listener: Listener,
    secret: Secret,
    name: &'static str,
    svc: &impl Service,
) -> std::io::Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    listener.set_nonblocking(true)?;
    epoll.add(
        listener.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
    )?;
    // Taken out of the set for a moment when accepting fails (out of
    // descriptors: the pending connection would wake the loop at once,
    // again and again); dropped when stopping, so that connecting fails
    // rather than waits in the backlog.
    let mut listener = Some(listener);
    let mut paused: Option<Instant> = None;
    let mut conns: HashMap<u64, Entry> = HashMap::new();
    let mut handshakes: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut next: u64 = 0;
    let mut events = vec![EpollEvent::empty(); 256];
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if listener.is_some() && svc.stopping() {
            if let Some(l) = listener.take() {
                let _ = epoll.delete(l.as_fd());
            }
        }
        if listener.is_none() && conns.is_empty() {
            return Ok(());
        }
        if let (Some(at), Some(l)) = (paused, &listener) {
            if at.elapsed() >= ACCEPT_PAUSE {
                paused = None;
                let _ = epoll.add(l.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, LISTENER));
            }
        }
        let wait = if paused.is_some() { 20u16 } else { 1000 };
        let n = match epoll.wait(&mut events, EpollTimeout::from(wait)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == LISTENER {
                if let Some(l) = listener.as_ref().filter(|_| !svc.stopping()) {
                    if !accept_all(l, &epoll, &mut conns, &mut handshakes, &mut next, name) {
                        let _ = epoll.delete(l.as_fd());
                        paused = Some(Instant::now());
                    }
                }
                continue;
            }
            let open = match conns.get_mut(&token) {
                Some(e) => read_ready(e, &secret, svc, &mut chunk, name),
                None => continue,
            };
            if !open {
                close(&epoll, &mut conns, token, svc);
            }
        }
        // Connections that have not presented the secret in time.
        let now = Instant::now();
        while let Some((at, token)) = handshakes.front().copied() {
            if now.saturating_duration_since(at) < super::stream::HANDSHAKE_TIMEOUT {
                break;
            }
            handshakes.pop_front();
            if let Some(e) = conns.get(&token).filter(|e| e.handshake.is_some()) {
                crate::log::log!(
                    "{name}: {} did not present the cluster secret in time; dropped",
                    e.peer
                );
                close(&epoll, &mut conns, token, svc);
            }
        }
    }
}

/// Accepts every pending connection; false when accepting failed (out of
/// descriptors, say), for the loop to stop listening a moment.
fn accept_all(
    listener: &Listener,
    epoll: &Epoll,
    conns: &mut HashMap<u64, Entry>,
    handshakes: &mut VecDeque<(Instant, u64)>,
    next: &mut u64,
    name: &str,
) -> bool {
    loop {
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                crate::log::log!("{name}: cannot accept a connection ({e}); pausing");
                return false;
            }
        };
        if conns.len() >= MAX_CONNECTIONS {
            crate::log::log!(
                "{name}: {MAX_CONNECTIONS} connections already served; refused one from {}",
                stream.peer()
            );
            stream.shutdown();
            continue;
        }
        let token = *next;
        *next += 1;
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if epoll
            .add(stream.as_fd(), EpollEvent::new(flags, token))
            .is_err()
        {
            continue;
        }
        let now = Instant::now();
        handshakes.push_back((now, token));
        conns.insert(
            token,
            Entry {
                peer: stream.peer(),
                stream,
                handshake: Some(Vec::with_capacity(16)),
                conn: None,
                buf: Vec::new(),
                start: 0,
            },
        );
    }
}

/// Reads what arrived on `e` and serves its whole frames; false when the
/// connection is to end (closed by the peer, a bad secret, a malformed
/// frame, or a panic in the service).
fn read_ready(
    e: &mut Entry,
    secret: &Secret,
    svc: &impl Service,
    chunk: &mut [u8],
    name: &str,
) -> bool {
    let fd = e.stream.raw_fd();
    let mut budget = READ_BUDGET;
    while budget > 0 {
        let got = match nix::sys::socket::recv(fd, chunk, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        };
        budget = budget.saturating_sub(got);
        let mut bytes = &chunk[..got];
        if let Some(have) = &mut e.handshake {
            let take = (16 - have.len()).min(bytes.len());
            have.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if have.len() < 16 {
                continue;
            }
            let mut presented = [0u8; 16];
            presented.copy_from_slice(have);
            if !secret.matches(&presented) {
                crate::log::log!(
                    "{name}: {} presented a wrong cluster secret; dropped",
                    e.peer
                );
                return false;
            }
            e.handshake = None;
            let Ok(conn) = Conn::new(&e.stream) else {
                return false;
            };
            let conn = Arc::new(conn);
            let key = svc.opened(&conn);
            e.conn = Some((conn, key));
        }
        e.buf.extend_from_slice(bytes);
        if !frames(e, svc, name) {
            return false;
        }
    }
    true
}

/// Serves the whole frames in `e`'s buffer; false on a malformed one or a
/// panic in the service.
fn frames(e: &mut Entry, svc: &impl Service, name: &str) -> bool {
    let Some((conn, key)) = e.conn.clone() else {
        return true;
    };
    loop {
        let have = &e.buf[e.start..];
        if have.len() < 4 {
            break;
        }
        let n = u32::from_le_bytes([have[0], have[1], have[2], have[3]]) as usize;
        if n > super::conn::MAX_FRAME {
            crate::log::log!(
                "{name}: malformed input from {} (a frame of {n} bytes); connection closed",
                e.peer
            );
            return false;
        }
        if have.len() < 4 + n {
            break;
        }
        let msg: Msg = match codec::decode(&have[4..4 + n], "message") {
            Ok(m) => m,
            Err(err) => {
                crate::log::log!(
                    "{name}: malformed input from {} ({err}); connection closed",
                    e.peer
                );
                return false;
            }
        };
        e.start += 4 + n;
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            svc.message(key, &conn, msg)
        }));
        if served.is_err() {
            crate::log::log!(
                "{name}: a message handler panicked on input from {}; connection closed",
                e.peer
            );
            return false;
        }
    }
    // What is left is part of a frame: keep it at the front.
    if e.start == e.buf.len() {
        e.buf.clear();
        if e.buf.capacity() > 1 << 20 {
            e.buf = Vec::new();
        }
    } else if e.start > 0 {
        e.buf.drain(..e.start);
    }
    e.start = 0;
    true
}

fn close(epoll: &Epoll, conns: &mut HashMap<u64, Entry>, token: u64, svc: &impl Service) {
    let Some(e) = conns.remove(&token) else {
        return;
    };
    let _ = epoll.delete(e.stream.as_fd());
    if let Some((c, key)) = &e.conn {
        c.close();
        svc.closed(*key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ToRaylet;
    use crate::transport::Endpoint;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        next: AtomicU64,
        got: Mutex<Vec<(u64, String, std::thread::ThreadId)>>,
        closed: Mutex<Vec<u64>>,
        stop: AtomicBool,
    }

    impl Service for Recorder {
        fn opened(&self, _conn: &Arc<Conn>) -> u64 {
            self.next.fetch_add(1, Ordering::Relaxed)
        }
        fn message(&self, key: u64, conn: &Arc<Conn>, msg: Msg) {
            if matches!(msg, Msg::ToRaylet(ToRaylet::Unblocked)) {
                panic!("a handler bug");
            }
            let _ = conn.post(&ToRaylet::Blocked);
            let me = std::thread::current().id();
            self.got.lock().unwrap().push((key, format!("{msg:?}"), me));
        }
        fn closed(&self, key: u64) {
            self.closed.lock().unwrap().push(key);
        }
        fn stopping(&self) -> bool {
            self.stop.load(Ordering::Relaxed)
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// One thread serves hundreds of connections, each one's messages in
    /// order, each answered; a wrong secret, a malformed frame or a panic
    /// in the service ends that connection alone; once stopping, the loop
    /// ends when its connections have.
    #[test]
    fn one_thread_serves_many_connections_and_bad_ones_end_alone() {
        let listener = Listener::bind_tcp("127.0.0.1".parse().unwrap()).unwrap();
        let ep = Endpoint::Tcp(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            listener.port(),
        )));
        let secret = Secret::random();
        let svc = Arc::new(Recorder::default());
        let s = svc.clone();
        let looper = std::thread::spawn(move || serve(listener, secret, "test-loop", &*s));
        let n = 300;
        let mut clients = Vec::new();
        for _ in 0..n {
            let stream = ep.connect(&secret).unwrap();
            let conn = Conn::new(&stream).unwrap();
            conn.send(&ToRaylet::Blocked).unwrap();
            clients.push((stream, conn));
        }
        for (_, conn) in &clients {
            conn.send(&ToRaylet::RetireRefused).unwrap();
        }
        wait_for("every message", || svc.got.lock().unwrap().len() == 2 * n);
        {
            let got = svc.got.lock().unwrap();
            let threads: std::collections::HashSet<_> = got.iter().map(|g| g.2).collect();
            assert_eq!(threads.len(), 1, "one thread for all");
            for key in 0..n as u64 {
                let mine: Vec<&str> = got
                    .iter()
                    .filter(|g| g.0 == key)
                    .map(|g| g.1.as_str())
                    .collect();
                assert_eq!(mine.len(), 2, "connection {key}");
                assert!(
                    mine[0].contains("Blocked") && mine[1].contains("RetireRefused"),
                    "{mine:?}"
                );
            }
        }
        // Every connection got its answers.
        for (stream, _) in &mut clients {
            for _ in 0..2 {
                let m = crate::transport::read_frame(stream, &mut Vec::new()).unwrap();
                assert!(matches!(m, Some(Msg::ToRaylet(ToRaylet::Blocked))), "{m:?}");
            }
        }
        // A wrong secret: dropped before anything is served.
        let mut wrong = ep.connect(&Secret::random()).unwrap();
        let _ = Conn::new(&wrong).unwrap().send(&ToRaylet::Blocked);
        let mut b = [0u8; 1];
        assert!(matches!(
            std::io::Read::read(&mut wrong, &mut b),
            Ok(0) | Err(_)
        ));
        // A malformed frame, and a panic in the service: each ends its
        // own connection.
        let before = svc.closed.lock().unwrap().len();
        let mut bad = ep.connect(&secret).unwrap();
        bad.write_all(&8u32.to_le_bytes()).unwrap();
        bad.write_all(&[0xff; 8]).unwrap();
        let panicky = ep.connect(&secret).unwrap();
        Conn::new(&panicky)
            .unwrap()
            .send(&ToRaylet::Unblocked)
            .unwrap();
        wait_for("both closed", || {
            svc.closed.lock().unwrap().len() == before + 2
        });
        // The others are still served.
        clients[7].1.send(&ToRaylet::Blocked).unwrap();
        wait_for("a later message", || {
            svc.got.lock().unwrap().len() == 2 * n + 1
        });
        // Stopping: the loop ends once its connections have.
        svc.stop.store(true, Ordering::Relaxed);
        drop(clients);
        drop((wrong, bad, panicky));
        let _ = std::net::TcpStream::connect(match &ep {
            Endpoint::Tcp(a) => *a,
            Endpoint::Unix(_) => unreachable!(),
        });
        wait_for("the loop to end", || looper.is_finished());
        assert_eq!(svc.closed.lock().unwrap().len(), n + 2);
    }
}
