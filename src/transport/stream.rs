//! Byte streams between processes: Unix-domain sockets on a node, TCP
//! between nodes; where a listener is ([`Endpoint`]), connecting with the
//! cluster secret, and accepting only connections that present it.

use super::Secret;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

/// How long a new connection may take to present the cluster secret.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connect may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
        // A connection thread's handler about to wait for a peer: what it
        // held back goes out first.
        super::flush_batched();
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

    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
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

    pub(super) fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
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

/// A connection thread's side of a stream: reads block as usual, except
/// after a handler has answered a caller who waits on each answer
/// ([`expect_input_soon`]), or after this process sent, on the
/// connection, something whose answer it waits for (its flag, set by
/// `Conn::expect_reply`: a lone task, a synchronous actor call). The next
/// read then spins briefly first: the message is a round trip away, and a
/// thread awake for it spares the wake-up of a sleeping CPU (on a VM, the
/// bulk of a round trip).
pub(crate) struct Waiting(
    pub(crate) Stream,
    /// Set from another thread: a reply is due (see `Conn::expect_reply`).
    pub(crate) Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
);

/// How long a connection thread told to expect input spins for it.
const EXPECT_SPIN: Duration = Duration::from_micros(50);

thread_local! {
    static EXPECT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// From a connection thread's handler: the peer is likely to send again
/// within a round trip (it waits on each answer), so this thread's next
/// read spins briefly before it blocks.
pub(crate) fn expect_input_soon() {
    EXPECT.with(|e| e.set(true));
}

/// Whether this machine has a core to spare for a spinning thread.
pub(crate) fn spare_core() -> bool {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }) >= 2
}

impl Read for Waiting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use nix::errno::Errno;
        use nix::sys::socket::{recv, MsgFlags};
        let due = self
            .1
            .as_ref()
            .is_some_and(|e| e.swap(false, std::sync::atomic::Ordering::AcqRel));
        if (EXPECT.with(|e| e.replace(false)) || due) && spare_core() {
            let start = std::time::Instant::now();
            while start.elapsed() < EXPECT_SPIN {
                match recv(self.0.raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(n) => return Ok(n),
                    Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
                // Yield rather than spin: on a small node the peer may
                // need this very core to send.
                std::thread::yield_now();
            }
        }
        self.0.read(buf)
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

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

impl std::os::fd::AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

impl Listener {
    /// Accepts without waiting (for an event loop); the connections it
    /// gives are blocking still.
    pub(super) fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Listener::Unix(l) => l.set_nonblocking(on),
            Listener::Tcp(l) => l.set_nonblocking(on),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{read_loop, Conn, ToRaylet};

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
}
