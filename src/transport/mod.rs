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
//! workers it leases, the owners it borrows from). The GCS, with a
//! connection or two per node, serves them all from one event loop instead
//! ([`reactor`]).
//!
//! Every connection, Unix or TCP, opens with the cluster's 16-byte secret
//! (generated when the cluster starts, passed to its processes in their
//! environment). A listener checks it on the connection's own thread (the
//! event loop: as its bytes arrive), within a bound, and drops a connection
//! without it: two jobs, or two users,
//! sharing a node cannot reach each other's processes.
//!
//! A connection to a worker this process sends tasks or calls to may also
//! be read by the thread waiting for its answer ([`waited`]): a caller
//! spinning for a lone task's result reads and handles it itself, so that
//! a synchronous round trip crosses two threads, not three.
//!
//! A handler that sends while more messages it read wait to be handled
//! may hold its sends back ([`send_batched`]): they go out in one write
//! once the reader has handled all it read (a batch of task results
//! answered by a batch of pushes), never waiting on the peer.
//!
//! The first message on a connection to a core worker's listener is
//! [`PeerMsg::Hello`], naming the connecting process, so that the listener can
//! attribute borrows and detect that process's death by end-of-stream.
//!
//! [`stream`] holds the byte streams (endpoints, the secret handshake,
//! listeners); [`conn`] the framed connections on them (sending without
//! blocking on a stalled peer, the one dial-and-serve helper); [`read`]
//! their reading (frames with bounded lengths, one thread per connection,
//! batching, and lending a busy thread's reading to another); [`waited`]
//! the reading shared with threads waiting for answers; this
//! module what serves them (the
//! accept loop with its connection cap, and the guards that keep a bad
//! peer or a bug in a handler from ending more than its connection).

mod conn;
pub(crate) mod reactor;
mod read;
mod stream;
mod waited;

pub(crate) use crate::protocol::*;
pub(crate) use conn::*;
pub(crate) use read::*;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
pub(crate) use stream::*;
pub(crate) use waited::{awaited, Awaited, WAITER_READS};

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

/// Raises this process's limit on open descriptors to the most it may
/// have: a raylet holds a connection or two per worker, the GCS two per
/// node and two per live actor, well past the usual soft limit of 1,024.
/// (The GCS of an embedded cluster runs in the driver: its process, and
/// the processes it starts after, get the raised limit too, as under
/// `ulimit -n` set to the hard limit.)
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Runs `work` on a new thread from `builder`, or, when no thread can be
/// had (a process or cgroup thread limit, no memory for a stack), gives it
/// back so the caller can do the work some other way: `std`'s `spawn`
/// drops its closure on failure, and with it whatever the work was to
/// carry out (a lease to give back, calls waiting on an answer).
pub(crate) fn spawn_or_return<F>(builder: std::thread::Builder, work: F) -> Result<(), F>
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<F>(1);
    let spawned = builder.spawn(move || {
        if let Ok(work) = rx.recv() {
            work();
        }
    });
    match spawned {
        // The thread waits for it: the send fails only if it is gone.
        Ok(_) => tx.send(work).map_err(|e| e.0),
        Err(_) => Err(work),
    }
}

/// What a panic said (its message, when it is a string).
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string())
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
            let what = panic_text(&*p);
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

/// The stack of a connection thread: user code may run on one (a worker
/// runs a short task on the thread that read it), so it gets what a main
/// thread usually has. Address space only: pages are used as touched.
const CONN_STACK: usize = 8 << 20;

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
            .stack_size(CONN_STACK)
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
    use std::io::Read;
    use std::net::TcpStream;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn work_no_thread_can_take_is_given_back() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        let here = std::thread::current().id();
        let on_thread = spawn_or_return(std::thread::Builder::new(), move || {
            let _ = tx2.send(std::thread::current().id());
        });
        assert!(on_thread.is_ok());
        let ran_on = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_ne!(ran_on, here, "ran on a thread of its own");
        // A stack larger than the address space: no thread can be had.
        let impossible = std::thread::Builder::new().stack_size(1 << 50);
        let back = spawn_or_return(impossible, move || {
            let _ = tx.send(std::thread::current().id());
        });
        let Err(work) = back else {
            panic!("a thread with a 1 PiB stack was started")
        };
        assert!(rx.try_recv().is_err(), "not run when given back");
        work();
        assert_eq!(rx.try_recv().unwrap(), here);
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
}
