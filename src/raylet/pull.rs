//! Pulls: copying a block of another node's store into this one, for the
//! node's readers (see the raylet's module notes). A pull is asked for by a
//! local process (`PullObject`); the copy is shared by every reader on the
//! node and freed when the last unpins.
//!
//! Each transfer runs on a pull thread, with the state lock dropped: a
//! one-sided RDMA read from the source's registered arena when both nodes
//! share a fabric provider, else TCP reads of chunks over a few streams,
//! straight into the arena. What bounds a pull:
//! - bytes in flight ([`PULL_BUDGET`]): more pulls wait their turn, so a
//!   burst of large pulls cannot take the whole store (or the network);
//! - threads ([`PULL_THREADS`]): pulls past it queue and are taken by the
//!   next pull thread that finishes, so no peer can make the raylet start
//!   threads without end by asking for many objects;
//! - time ([`TRANSFER_STALL`] without progress, [`WEDGED_AFTER`] for a
//!   provider call): a pull that stalls fails, and its waiters are told.

use super::gcs_link::REPORT_EVERY;
use super::{Copy, CopyKey, CopyState, Raylet, State};
use crate::error::{Error, Result};
use crate::object_store::COPY_OWNER;
use crate::protocol::{FromRaylet, ToRaylet, Transfer};
use crate::scheduler::ClientId;
use crate::session::log;
use crate::transport::{self, Conn, Msg, Stream};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pulls move objects in pieces of this size...
const PULL_CHUNK: u64 = 8 << 20;
/// ...over this many connections at once per object.
const PULL_STREAMS: usize = 4;
/// Bytes being pulled into one node at once: more pulls wait their turn,
/// so a burst of large pulls cannot take the whole store (or the network)
/// at once.
const PULL_BUDGET: u64 = 1 << 30;

/// Bytes in flight of the node's pulls.
#[derive(Default)]
pub(super) struct PullBudget {
    inflight: Mutex<u64>,
    freed: std::sync::Condvar,
}

/// A share of the pull budget, given back on drop.
struct PullShare<'a> {
    budget: &'a PullBudget,
    bytes: u64,
}

impl PullBudget {
    fn acquire(budget: &PullBudget, bytes: u64) -> PullShare<'_> {
        let mut g = budget.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // A pull bigger than the budget goes alone; waits end as pulls
        // finish, and every pull is bounded by TRANSFER_STALL.
        while *g > 0 && *g + bytes > PULL_BUDGET {
            g = budget.freed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        *g += bytes;
        PullShare { budget, bytes }
    }
}

impl Drop for PullShare<'_> {
    fn drop(&mut self) {
        let mut g = self
            .budget
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *g -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// A call into the fabric provider that has not returned after this long
/// never will: the endpoint is given up.
const WEDGED_AFTER: Duration = Duration::from_secs(3);
/// A transfer that makes no progress for this long has failed.
const TRANSFER_STALL: Duration = Duration::from_secs(30);

/// Pull threads at once, at most; more pulls queue for them.
pub(super) const PULL_THREADS: usize = 32;

/// A transfer waiting for a pull thread.
pub(super) struct PullJob {
    key: CopyKey,
    sources: Vec<u16>,
    local: u64,
}

/// At most `cap` threads working through queued jobs: a job waits for a
/// free thread rather than start one past the cap. Threads end when the
/// queue is empty.
pub(super) struct WorkPool<J> {
    cap: usize,
    name: &'static str,
    /// (threads running, jobs waiting for one).
    state: Mutex<(usize, VecDeque<J>)>,
}

impl<J: Send + 'static> WorkPool<J> {
    pub(super) fn new(name: &'static str, cap: usize) -> Self {
        WorkPool {
            cap: cap.max(1),
            name,
            state: Mutex::new((0, VecDeque::new())),
        }
    }

    /// Runs `run(owner, job)` on a pool thread of `pool(owner)`: a new one
    /// while fewer than the cap run, else the next that comes free. When no
    /// thread can be started at all, on the caller's.
    pub(super) fn submit<T: Send + Sync + 'static>(
        owner: &Arc<T>,
        pool: fn(&T) -> &WorkPool<J>,
        run: fn(&Arc<T>, J),
        job: J,
    ) {
        let me = pool(owner);
        {
            let mut st = me.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.0 >= me.cap {
                if st.1.is_empty() {
                    log!("{} {}s busy: more wait for one", me.cap, me.name);
                }
                st.1.push_back(job);
                return;
            }
            st.0 += 1;
        }
        let o = owner.clone();
        let (tx, rx) = std::sync::mpsc::channel::<J>();
        let spawned = std::thread::Builder::new()
            .name(me.name.into())
            .spawn(move || {
                let Ok(mut job) = rx.recv() else { return };
                loop {
                    // A panic in one job (a bug) must not take the thread
                    // and its count with it: the queue would stall.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&o, job)))
                        .is_err()
                    {
                        log!(
                            "a {} job panicked; its waiters get no answer",
                            pool(&o).name
                        );
                    }
                    let mut st = pool(&o).state.lock().unwrap_or_else(|p| p.into_inner());
                    match st.1.pop_front() {
                        Some(next) => job = next,
                        None => {
                            st.0 -= 1;
                            return;
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(job);
            }
            Err(e) => {
                log!("cannot start a {} ({e}); running on this thread", me.name);
                me.state.lock().unwrap_or_else(|p| p.into_inner()).0 -= 1;
                run(owner, job);
            }
        }
    }
}

impl Raylet {
    /// A local process wants a block of another node's store.
    pub(super) fn pull<'a>(
        self: &'a Arc<Self>,
        mut st: std::sync::MutexGuard<'a, State>,
        client: ClientId,
        req: u64,
        key: CopyKey,
        copies: Vec<u16>,
    ) {
        let reply = |st: &State, result: std::result::Result<u64, Error>| {
            if let Some(c) = st.clients.get(&client) {
                let _ = c.conn.post(&FromRaylet::ObjectPulled { req, result });
            }
        };
        if let Some(c) = st.copies.get_mut(&key) {
            c.pins += 1;
            match &mut c.state {
                CopyState::Ready(local) => {
                    let local = *local;
                    reply(&st, Ok(local));
                }
                CopyState::Pulling(waiters) => waiters.push((client, req)),
            }
            return;
        }
        let (node, _, len, _) = key;
        // Where to read it: the primary's node, then the nodes with copies,
        // skipping nodes known to be lost.
        let me = self.session.node_index;
        let mut sources = vec![node];
        for c in copies {
            if c != me && !sources.contains(&c) {
                sources.push(c);
            }
        }
        sources.retain(|n| st.nodes.get(n).is_none_or(|i| i.alive));
        if sources.is_empty() {
            let e = Error::new(
                crate::error::ErrorKind::ObjectLost,
                format!("every copy of the object is gone: its node {node} was lost and no other node holds one"),
            );
            reply(&st, Err(e));
            return;
        }
        // Room for the copy, spilling objects here if need be; another
        // pull of the same object may have started meanwhile: join it.
        let (s, room) = self.make_room(st, len);
        st = s;
        if st.copies.contains_key(&key) {
            return self.pull(st, client, req, key, Vec::new());
        }
        let local = match room.and_then(|()| st.store.create(len, COPY_OWNER, key.3)) {
            Ok(o) => o,
            Err(e) => {
                reply(&st, Err(e));
                return;
            }
        };
        st.copies.insert(
            key,
            Copy {
                state: CopyState::Pulling(vec![(client, req)]),
                pins: 1,
            },
        );
        drop(st);
        WorkPool::submit(
            self,
            |r| &r.pull_pool,
            Raylet::transfer,
            PullJob {
                key,
                sources,
                local,
            },
        );
    }

    /// Copies `job`'s block from the first of its sources that serves it,
    /// then answers everyone waiting for the copy (on a pull thread).
    fn transfer(self: &Arc<Self>, job: PullJob) {
        let PullJob {
            key,
            sources,
            mut local,
        } = job;
        let r = self;
        let len = key.2;
        let mut result = Err(Error::new(
            crate::error::ErrorKind::ObjectLost,
            "no node could serve the object",
        ));
        // True while `local` may still be written by an abandoned
        // RDMA read: it is then never freed (nor reused).
        let mut local_dirty = false;
        for source in &sources {
            if let Some(addr) = r.fabric_peer(*source, key) {
                // One-sided reads bypass the source's CPU: the block
                // is pinned there first (read back if spilled), held
                // by this connection until the read is done.
                let _hold = match r.hold_at_source(*source, key) {
                    Ok(h) => h,
                    Err(e) => {
                        log!("pull of {len} bytes from node {source} failed: {e}");
                        result = Err(e);
                        continue;
                    }
                };
                match r.fetch_fabric(&addr, *source, key, local) {
                    Ok(()) => {
                        result = Ok(());
                        break;
                    }
                    Err(e) => {
                        log!(
                            "{e}; node {source} is read {} from now on",
                            if r.fabric_forced && !r.fabric_wedged.load(Ordering::Relaxed) {
                                "from copies only"
                            } else {
                                "over TCP"
                            }
                        );
                        r.fabric_broken
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(*source);
                        if e.dirty {
                            log!("block at {local} ({len} bytes) abandoned to the failed read");
                            let (mut st, room) = r.make_room(r.lock(), len);
                            match room.and_then(|()| st.store.create(len, COPY_OWNER, key.3)) {
                                Ok(o) => local = o,
                                Err(e) => {
                                    local_dirty = true;
                                    result = Err(e);
                                    break;
                                }
                            }
                        }
                        if r.fabric_forced && !r.fabric_wedged.load(Ordering::Relaxed) {
                            // --transport fabric: no TCP retry from
                            // this node; a copy elsewhere may serve.
                            result =
                                Err(Error::new(crate::error::ErrorKind::ObjectLost, e.message));
                            continue;
                        }
                    }
                }
            }
            result = r
                .node_endpoint(*source)
                .and_then(|ep| r.fetch(&ep, key, local));
            match &result {
                Ok(()) => break,
                Err(e) => log!("pull of {len} bytes from node {source} failed: {e}"),
            }
        }
        let mut st = r.lock();
        let waiters = match st.copies.get_mut(&key) {
            Some(c) => match std::mem::replace(&mut c.state, CopyState::Ready(local)) {
                CopyState::Pulling(w) => w,
                CopyState::Ready(_) => Vec::new(),
            },
            None => Vec::new(),
        };
        if result.is_err() {
            st.copies.remove(&key);
            if !local_dirty {
                st.store.free(local);
            }
        }
        for (client, req) in waiters {
            if let Some(c) = st.clients.get(&client) {
                let _ = c.conn.post(&FromRaylet::ObjectPulled {
                    req,
                    result: result.clone().map(|_| local),
                });
            }
        }
    }

    /// The fabric address to read `key` from `source` with, if both nodes
    /// use the same provider and `source` holds the primary block (whose
    /// offset the key names; a copy's offset is known only to its node,
    /// so copies are read over TCP).
    fn fabric_peer(&self, source: u16, key: CopyKey) -> Option<crate::fabric::FabricAddr> {
        let mine = self.fabric.as_ref()?;
        if self.fabric_wedged.load(Ordering::Relaxed) {
            return None;
        }
        if source != key.0
            || self
                .fabric_broken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&source)
        {
            return None;
        }
        let deadline = std::time::Instant::now() + REPORT_EVERY * 20;
        let mut asked = false;
        loop {
            if let Some(n) = self.lock().nodes.get(&source) {
                return n.fabric.clone().filter(|a| a.provider == mine.provider);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            if !std::mem::replace(&mut asked, true) {
                self.ask_for_view();
            }
            std::thread::sleep(REPORT_EVERY / 10);
        }
    }

    /// Reads the primary block of `key` from `source`'s arena into local
    /// block `local` by one-sided RDMA reads: no work for the remote CPU
    /// beyond its provider's progress. Same pull budget as TCP pulls.
    ///
    /// The read runs on a thread of its own, watched: a provider call that
    /// never returns (see [`Fabric::wedged`](crate::fabric::Fabric::wedged))
    /// loses the endpoint, not the pull: the block is abandoned and the
    /// caller reads over TCP.
    fn fetch_fabric(
        self: &Arc<Self>,
        addr: &crate::fabric::FabricAddr,
        source: u16,
        key: CopyKey,
        local: u64,
    ) -> std::result::Result<(), crate::fabric::FabricError> {
        let fabric = self.fabric.clone().ok_or_else(no_fabric)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, a) = (self.clone(), addr.clone());
        std::thread::Builder::new()
            .name("raylet-rdma".into())
            .spawn(move || {
                let _ = tx.send(r.fetch_fabric_here(&a, source, key, local));
            })
            .map_err(|e| crate::fabric::FabricError {
                message: format!("spawning a read thread: {e}"),
                dirty: false,
            })?;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => return r,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(crate::fabric::FabricError {
                        message: "the RDMA read thread panicked".into(),
                        dirty: true,
                    })
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if fabric.wedged(WEDGED_AFTER) {
                        self.fabric_wedged.store(true, Ordering::Relaxed);
                        return Err(crate::fabric::FabricError {
                            message: format!(
                                "the fabric endpoint is stuck: a call into provider {} has not returned for {WEDGED_AFTER:?} (a peer process killed while holding the provider's shared state?); this node moves objects over TCP from now on",
                                fabric.provider
                            ),
                            dirty: true,
                        });
                    }
                }
            }
        }
    }

    fn fetch_fabric_here(
        &self,
        addr: &crate::fabric::FabricAddr,
        source: u16,
        key: CopyKey,
        local: u64,
    ) -> std::result::Result<(), crate::fabric::FabricError> {
        let (_, offset, len, _) = key;
        let fabric = self.fabric.as_ref().ok_or_else(no_fabric)?;
        let _budget = PullBudget::acquire(&self.pulls, len);
        // SAFETY: `local` is the block this pull allocated for the copy; its
        // location is published (ObjectPulled) only once it is filled.
        let dst = unsafe { self.arena.write(local, len) };
        let dst = dst.map_err(|e| crate::fabric::FabricError {
            message: e.to_string(),
            dirty: false,
        })?;
        let label = match self.lock().nodes.get(&source) {
            Some(n) => format!("node {} ({})", n.name, n.ip),
            None => format!("node {source}"),
        };
        let lost = || self.lock().nodes.get(&source).is_none_or(|n| !n.alive);
        fabric.read(addr, &label, offset, dst, TRANSFER_STALL, &lost)
    }

    /// Pins the primary block of `key` at node `source` for a one-sided
    /// read, so it is neither freed nor spilled under the read (a spilled
    /// block is read back into memory first); the pin lasts as long as the
    /// returned connection.
    fn hold_at_source(&self, source: u16, key: CopyKey) -> Result<Stream> {
        let (_, offset, _, tag) = key;
        let lost = |e: String| {
            Error::new(
                crate::error::ErrorKind::ObjectLost,
                format!("node {source} cannot pin the object for an RDMA read: {e}"),
            )
        };
        let ep = self.node_endpoint(source)?;
        let mut stream = ep
            .connect(&self.session.secret)
            .map_err(|e| lost(e.to_string()))?;
        if let Stream::Tcp(t) = &stream {
            t.set_read_timeout(Some(TRANSFER_STALL))
                .map_err(|e| lost(e.to_string()))?;
        }
        Conn::new(&stream)?
            .send(&ToRaylet::PinObjects {
                req: 0,
                blocks: vec![(offset, tag)],
            })
            .map_err(|e| lost(e.to_string()))?;
        let mut frame = Vec::new();
        match transport::read_frame(&mut stream, &mut frame) {
            Ok(Some(Msg::FromRaylet(FromRaylet::ObjectsPinned { result: Ok(()), .. }))) => {
                Ok(stream)
            }
            Ok(Some(Msg::FromRaylet(FromRaylet::ObjectsPinned { result: Err(e), .. }))) => Err(e),
            Ok(_) => Err(lost("unexpected answer".into())),
            Err(e) => Err(lost(e.to_string())),
        }
    }

    /// Node `node`'s raylet, waiting (bounded) for a cluster view that has
    /// it: a node that just joined may not be in this raylet's view yet.
    fn node_endpoint(&self, node: u16) -> Result<transport::Endpoint> {
        let deadline = std::time::Instant::now() + REPORT_EVERY * 20;
        let mut asked = false;
        loop {
            if let Some(n) = self.lock().nodes.get(&node) {
                return Ok(n.raylet());
            }
            if !std::mem::replace(&mut asked, true) {
                self.ask_for_view();
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::new(
                    crate::error::ErrorKind::ObjectLost,
                    format!("the object's node {node} is not in the cluster"),
                ));
            }
            std::thread::sleep(REPORT_EVERY / 10);
        }
    }

    /// Reads a block of another node's store into local block `local`:
    /// in [`PULL_CHUNK`] pieces over up to [`PULL_STREAMS`] connections,
    /// each with all its requests sent at once (pipelined), read straight
    /// into the arena. At most [`PULL_BUDGET`] bytes are in flight per node
    /// (one larger object at a time goes alone).
    fn fetch(&self, source: &transport::Endpoint, key: CopyKey, local: u64) -> Result<()> {
        let len = key.2;
        let _budget = PullBudget::acquire(&self.pulls, len);
        // SAFETY: `local` is the block this pull allocated for the copy; its
        // location is published (ObjectPulled) only once it is filled.
        let dst = unsafe { self.arena.write(local, len) }?;
        let mut groups: Vec<Vec<(u64, &mut [u8])>> = Vec::new();
        let n = (len.div_ceil(PULL_CHUNK) as usize).clamp(1, PULL_STREAMS);
        groups.resize_with(n, Vec::new);
        for (i, c) in dst.chunks_mut(PULL_CHUNK as usize).enumerate() {
            groups[i % n].push((i as u64 * PULL_CHUNK, c));
        }
        std::thread::scope(|s| {
            // A stream whose thread cannot be started is read on this one.
            let mut here = Vec::new();
            let mut handles = Vec::new();
            for g in groups {
                let (tx, rx) = std::sync::mpsc::channel();
                let spawned = std::thread::Builder::new()
                    .name("raylet-pull-stream".into())
                    .spawn_scoped(s, move || {
                        let Ok(g) = rx.recv() else { return Ok(()) };
                        self.fetch_chunks(source, key, g)
                    });
                match spawned {
                    Ok(h) => {
                        let _ = tx.send(g);
                        handles.push(h);
                    }
                    Err(_) => here.push(g),
                }
            }
            let mut results: Vec<Result<()>> = here
                .into_iter()
                .map(|g| self.fetch_chunks(source, key, g))
                .collect();
            results.extend(handles.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::unavailable("a transfer thread panicked")))
            }));
            results.into_iter().collect::<Result<Vec<()>>>()
        })
        .map(|_| ())
    }

    /// One connection's share of a pull.
    fn fetch_chunks(
        &self,
        source: &transport::Endpoint,
        key: CopyKey,
        chunks: Vec<(u64, &mut [u8])>,
    ) -> Result<()> {
        let (node, offset, len, tag) = key;
        let lost = |e: std::io::Error| {
            Error::new(
                crate::error::ErrorKind::ObjectLost,
                format!("the transfer from {source} broke off: {e}"),
            )
        };
        let unreachable = |e: Error| {
            Error::new(
                crate::error::ErrorKind::ObjectLost,
                format!("the node holding the object cannot be reached: {e}"),
            )
        };
        let mut stream = source.connect(&self.session.secret).map_err(unreachable)?;
        if let Stream::Tcp(t) = &stream {
            // A node that stops answering mid-transfer fails the pull
            // instead of hanging it.
            t.set_read_timeout(Some(TRANSFER_STALL)).map_err(lost)?;
        }
        let conn = Conn::new(&stream)?;
        for (start, c) in &chunks {
            conn.send(&Transfer::ReadObject {
                node,
                offset,
                len,
                tag,
                start: *start,
                count: c.len() as u64,
            })
            .map_err(unreachable)?;
        }
        let mut frame = Vec::new();
        for (_, c) in chunks {
            match transport::read_frame(&mut stream, &mut frame).map_err(lost)? {
                Some(Msg::Transfer(Transfer::ObjectBytes { result: Ok(n) }))
                    if n == c.len() as u64 => {}
                Some(Msg::Transfer(Transfer::ObjectBytes { result: Err(e) })) => return Err(e),
                _ => return Err(Error::unavailable("unexpected answer to a read")),
            }
            // Straight into the arena: the bytes are copied once, by the kernel.
            std::io::Read::read_exact(&mut stream, c).map_err(lost)?;
        }
        Ok(())
    }
}

fn no_fabric() -> crate::fabric::FabricError {
    crate::fabric::FabricError {
        message: "no fabric on this node".into(),
        dirty: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Owner {
        pool: WorkPool<u32>,
        running: AtomicUsize,
        most: AtomicUsize,
        done: AtomicUsize,
    }

    fn job(o: &Arc<Owner>, _: u32) {
        let now = o.running.fetch_add(1, Ordering::SeqCst) + 1;
        o.most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
        o.running.fetch_sub(1, Ordering::SeqCst);
        o.done.fetch_add(1, Ordering::SeqCst);
    }

    /// Many more jobs than the cap, submitted at once: no more than the cap
    /// run at a time, every one runs, and the threads end afterwards.
    #[test]
    fn a_burst_of_jobs_never_runs_more_threads_than_the_cap() {
        let o = Arc::new(Owner {
            pool: WorkPool::new("test-pool", 4),
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        });
        for i in 0..200 {
            WorkPool::submit(&o, |o| &o.pool, job, i);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while o.done.load(Ordering::SeqCst) < 200 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(o.done.load(Ordering::SeqCst), 200);
        let most = o.most.load(Ordering::SeqCst);
        assert!((2..=4).contains(&most), "{most} at once");
        while o.pool.state.lock().unwrap().0 > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(o.pool.state.lock().unwrap().0, 0, "threads left running");
    }
}
