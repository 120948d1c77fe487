//! Watching live actors' processes, all from one thread: the GCS holds a
//! connection to each actor's worker, and that connection ending is how it
//! learns the process died (or its node was lost: the GCS then closes the
//! node's watched connections itself, since a hung node's stay open).
//!
//! Creating an actor takes a thread of its own while it runs (leasing a
//! worker, the constructor); once the actor is created its connection
//! moves here, so the number of live actors costs descriptors, not
//! threads. The loop waits on every watched socket at once (epoll) and
//! only looks for the end: nothing the worker sends after `ActorCreated`
//! means anything to the GCS, so it is read and dropped, a bounded amount
//! per turn, so one talkative worker cannot starve the others. When one
//! ends, the actor table decides between a restart (on a creation thread
//! of its own) and a final death ([`Gcs::actor_process_ended`]).

use super::*;
use crate::transport::Stream;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::MsgFlags;
use std::os::fd::{AsFd, BorrowedFd};

/// Bytes read from one watched socket per turn of the loop, at most.
const READ_BUDGET: usize = 64 << 10;
/// How often the loop looks whether the GCS is stopping.
const STOP_CHECK: u16 = 500;

/// The watched connections and the epoll set that waits on them.
pub(super) struct Watcher {
    epoll: Epoll,
    watched: Mutex<HashMap<u64, Watched>>,
    next: AtomicU64,
}

struct Watched {
    actor: ActorId,
    worker: WorkerId,
    stream: Stream,
}

impl Watcher {
    pub(super) fn new() -> Result<Watcher> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| Error::io("creating the GCS's actor watch", e.into()))?;
        Ok(Watcher {
            epoll,
            watched: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching `stream`, the connection to `actor`'s `worker`.
    fn add(&self, actor: ActorId, worker: WorkerId, stream: Stream) -> Result<()> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the descriptor belongs to `stream`, which the map keeps
        // open until the token is taken out of the epoll set again.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.raw_fd()) };
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        let mut map = self.lock();
        self.epoll
            .add(fd, EpollEvent::new(flags, token))
            .map_err(|e| Error::io("watching an actor's connection", e.into()))?;
        map.insert(
            token,
            Watched {
                actor,
                worker,
                stream,
            },
        );
        Ok(())
    }

    /// The connection `token` ended: no longer watched.
    fn remove(&self, token: u64) -> Option<Watched> {
        let w = self.lock().remove(&token)?;
        let _ = self.epoll.delete(w.stream.as_fd());
        Some(w)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Whether `stream` is still open after reading what it has (dropped).
fn still_open(stream: &Stream, chunk: &mut [u8]) -> bool {
    let fd = stream.raw_fd();
    let mut budget = READ_BUDGET;
    while budget > 0 {
        match nix::sys::socket::recv(fd, chunk, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return false,
            Ok(n) => budget = budget.saturating_sub(n),
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

impl Gcs {
    /// Watches created actor `id`, whose process is `worker`, through
    /// `stream` (its end is the process's death), on the watch thread,
    /// started with the first. Without a watch the actor could not be
    /// restarted: the error says why.
    pub(super) fn watch_actor(
        self: &Arc<Self>,
        id: ActorId,
        worker: WorkerId,
        stream: Stream,
    ) -> Result<()> {
        let watcher = {
            let mut slot = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(w) => w.clone(),
                None => {
                    let w = Arc::new(Watcher::new()?);
                    let (g, w2) = (self.clone(), w.clone());
                    std::thread::Builder::new()
                        .name("gcs-actor-watch".into())
                        .spawn(move || transport::vital("gcs-actor-watch", || g.watch_loop(&w2)))
                        .map_err(|e| Error::io("starting the GCS's actor watch thread", e))?;
                    *slot = Some(w.clone());
                    w
                }
            }
        };
        watcher.add(id, worker, stream)
    }

    fn watch_loop(self: &Arc<Self>, w: &Watcher) {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut chunk = vec![0u8; 16 << 10];
        while !self.stopping.load(Ordering::Relaxed) {
            let n = match w.epoll.wait(&mut events, EpollTimeout::from(STOP_CHECK)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                // A bug (the set is this thread's own): unwatched actors
                // would never restart, so the process ends (see `vital`).
                Err(e) => panic!("epoll_wait on the actor watch failed: {e}"),
            };
            for ev in &events[..n] {
                let token = ev.data();
                let open = match w.lock().get(&token) {
                    Some(x) => still_open(&x.stream, &mut chunk),
                    None => continue,
                };
                if open {
                    continue;
                }
                if let Some(gone) = w.remove(token) {
                    drop(gone.stream);
                    if self.actor_process_ended(gone.actor, gone.worker, false) {
                        // (If no thread can be had for it, the creation
                        // fails and the actor's waiters are told why.)
                        self.start_actor_thread(gone.actor);
                    }
                }
            }
        }
    }

    /// The process `worker` of actor `id` is gone (`in_constructor`: before
    /// it said the constructor had run): true when the actor is to be
    /// created again (it has restarts left), else it is dead for good.
    pub(super) fn actor_process_ended(
        self: &Arc<Self>,
        id: ActorId,
        worker: WorkerId,
        in_constructor: bool,
    ) -> bool {
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if self.stopping.load(Ordering::Relaxed) {
            return false;
        }
        // A process that died in the constructor counts as a restart too,
        // as in Ray: the creation is retried, on another node if need be,
        // while restarts remain.
        let (actions, waiters) = self.table().worker_died(id);
        let class = self.table().spec(id).map(|s| s.class).unwrap_or_default();
        log!(
            "actor {class} lost its worker {worker}{}: {actions:?}",
            if in_constructor {
                " in its constructor"
            } else {
                ""
            },
        );
        // The creator, still waiting when the constructor died, is
        // answered with the death; lookups with the actor's state.
        self.finish(Vec::new(), waiters);
        actions.contains(&ActorAction::Create(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A watched connection is seen to end however it ends (the peer
    /// closes, or only talks first), and one that talks stays watched.
    #[test]
    fn the_end_of_a_watched_connection_is_seen() {
        let w = Watcher::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let (c, d) = UnixStream::pair().unwrap();
        w.add(ActorId::random(), WorkerId(1), Stream::Unix(b))
            .unwrap();
        w.add(ActorId::random(), WorkerId(2), Stream::Unix(d))
            .unwrap();
        assert_eq!(w.len(), 2);
        let mut events = vec![EpollEvent::empty(); 8];
        let mut chunk = vec![0u8; 1024];
        // Talk on one, close the other after a few bytes.
        use std::io::Write;
        (&c).write_all(&[7u8; 3000]).unwrap();
        (&a).write_all(b"bye").unwrap();
        drop(a);
        let mut ended = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while ended.is_empty() && std::time::Instant::now() < until {
            let n = w
                .epoll
                .wait(&mut events, EpollTimeout::from(100u16))
                .unwrap();
            for ev in &events[..n] {
                let open = still_open(&w.lock()[&ev.data()].stream, &mut chunk);
                if !open {
                    ended.push(w.remove(ev.data()).unwrap().worker);
                }
            }
        }
        assert_eq!(ended, vec![WorkerId(1)]);
        assert_eq!(w.len(), 1, "the talking one is still watched");
        drop(c);
    }
}
