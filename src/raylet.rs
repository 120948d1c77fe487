//! The raylet: one per node. It owns the node's resources and worker pool
//! (granting worker leases through the [`scheduler`](crate::scheduler)
//! state machine) and the node's object store (the arena and its
//! allocator).
//!
//! It runs as its own process (the application's binary re-executed with
//! `RUSTRAY_ROLE=raylet`), so a crashing task cannot take it down, and so it
//! outlives nothing: when the driver's connection closes (orderly shutdown,
//! the end of `main`, or SIGKILL) it kills its workers, unlinks the arena and
//! removes the session's sockets. Workers, in turn, exit when their raylet
//! connection closes.
//!
//! Workers are started by re-executing the same binary with
//! `RUSTRAY_ROLE=worker`; a single reaper thread collects exited children
//! and reports them to the lease manager and the store (objects fate-share
//! with their owner). Spillback to other nodes comes with the multi-node
//! issue: a request that does not fit this node is answered infeasible here.

use crate::error::Result;
use crate::ids::WorkerId;
use crate::object_store::{Arena, Store};
use crate::scheduler::{Action, ClientId, LeaseManager};
use crate::session::{log, Session, ENV_ROLE, ENV_SESSION, ENV_WORKER_ID};
use crate::transport::{self, Conn, Msg};
use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Workers that exit before registering this many times in a row mean the
/// binary does not call `rustray::init()` first: stop retrying.
const MAX_START_FAILURES: u32 = 5;

struct Client {
    conn: Arc<Conn>,
    worker: Option<WorkerId>,
    is_driver: bool,
}

struct State {
    leases: LeaseManager,
    store: Store,
    clients: HashMap<ClientId, Client>,
    /// pid -> worker id, for every worker process started
    pids: HashMap<u32, WorkerId>,
    registered: HashMap<WorkerId, u32>,
    start_failures: u32,
}

struct Raylet {
    session: Session,
    state: Mutex<State>,
    next_client: AtomicU64,
    env: String,
}

/// Entry point of the raylet process.
pub(crate) fn main(session: Session) -> ! {
    crate::session::open_log(&session, "raylet");
    match run(session) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            log!("raylet failed: {e}");
            eprintln!("rustray raylet failed: {e}");
            std::process::exit(1);
        }
    }
}

fn raise_fd_limit() {
    // Deep nesting starts one worker per blocked task: many connections.
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn run(session: Session) -> Result<()> {
    raise_fd_limit();
    let resources = session.config.node_resources()?;
    let store_bytes = session.config.store_bytes()?;
    let arena = Arena::create(&session.arena_path(), store_bytes)?;
    let cpus = resources.get(crate::scheduler::CPU).ceil().max(1.0) as usize;
    let mut leases = LeaseManager::new(resources.clone(), cpus.max(2), cpus.max(2));
    let prestart = cpus.min(8);
    leases.note_prestarted(prestart);
    let raylet = Arc::new(Raylet {
        env: session.to_env()?,
        state: Mutex::new(State {
            leases,
            store: Store::new(arena.len() as u64),
            clients: HashMap::new(),
            pids: HashMap::new(),
            registered: HashMap::new(),
            start_failures: 0,
        }),
        next_client: AtomicU64::new(1),
        session,
    });
    let listener_path = raylet.session.raylet_socket();
    let listener = UnixListener::bind(&listener_path).map_err(|e| {
        crate::error::Error::io(&format!("listening on {}", listener_path.display()), e)
    })?;
    log!(
        "raylet up: resources {:?}, store {} bytes at {}",
        resources,
        store_bytes,
        raylet.session.arena_path().display()
    );
    {
        let mut st = raylet.lock();
        for _ in 0..prestart {
            raylet.start_worker(&mut st);
        }
    }
    let r = raylet.clone();
    std::thread::Builder::new()
        .name("raylet-reaper".into())
        .spawn(move || r.reap())
        .map_err(|e| crate::error::Error::io("spawning the reaper", e))?;
    // Keep the arena mapped for the raylet's lifetime (it is unlinked at exit).
    let _arena = arena;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(conn) = Conn::new(&stream) else {
            continue;
        };
        let id = raylet.next_client.fetch_add(1, Ordering::Relaxed);
        raylet.lock().clients.insert(
            id,
            Client {
                conn: Arc::new(conn),
                worker: None,
                is_driver: false,
            },
        );
        let r = raylet.clone();
        let r2 = raylet.clone();
        let _ = transport::spawn_reader(
            "raylet-client".into(),
            stream,
            move |m| r.handle(id, m),
            move || r2.client_gone(id),
        );
    }
    Ok(())
}

impl Raylet {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_worker(&self, st: &mut State) {
        let worker = WorkerId::random();
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let args: Vec<String> = std::env::args().skip(1).collect();
        let child = std::process::Command::new(exe)
            .args(args)
            .env(ENV_ROLE, "worker")
            .env(ENV_SESSION, &self.env)
            .env(ENV_WORKER_ID, format!("{:x}", worker.0))
            .stdin(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                st.pids.insert(c.id(), worker);
                // The reaper thread collects it with waitpid.
                drop(c);
            }
            Err(e) => {
                log!("cannot start a worker: {e}");
                let actions = st.leases.worker_start_failed();
                self.execute(st, actions);
            }
        }
    }

    fn execute(&self, st: &mut State, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Grant {
                    client,
                    req,
                    lease,
                    worker,
                } => {
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.send(&Msg::LeaseGranted { req, lease, worker });
                    }
                }
                Action::Reject { client, req, error } => {
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.send(&Msg::LeaseFailed { req, error });
                    }
                }
                Action::StartWorker => self.start_worker(st),
                Action::KillWorker(w) => {
                    if let Some(pid) = st.registered.get(&w) {
                        // SAFETY: kill has no memory preconditions; the pid is
                        // our child (not yet reaped, so not reused).
                        unsafe {
                            libc::kill(*pid as i32, libc::SIGKILL);
                        }
                    }
                }
            }
        }
    }

    fn handle(&self, client: ClientId, m: Msg) {
        let mut st = self.lock();
        match m {
            Msg::Register {
                worker,
                pid,
                is_driver,
            } => {
                if let Some(c) = st.clients.get_mut(&client) {
                    c.worker = Some(worker);
                    c.is_driver = is_driver;
                }
                if !is_driver {
                    st.registered.insert(worker, pid);
                    st.start_failures = 0;
                    let a = st.leases.worker_registered(worker);
                    self.execute(&mut st, a);
                }
            }
            Msg::RequestLease { req, shape } => {
                if st.start_failures >= MAX_START_FAILURES {
                    let error = crate::error::Error::unavailable(
                        "worker processes exit before registering: the program must call rustray::init() at the start of main, before anything else",
                    );
                    if let Some(c) = st.clients.get(&client) {
                        let _ = c.conn.send(&Msg::LeaseFailed { req, error });
                    }
                    return;
                }
                let a = st.leases.request(client, req, shape);
                self.execute(&mut st, a);
            }
            Msg::ReturnLease { lease, kill } => {
                let a = st.leases.return_lease(lease, kill);
                self.execute(&mut st, a);
            }
            Msg::Blocked => {
                if let Some(w) = st.clients.get(&client).and_then(|c| c.worker) {
                    let a = st.leases.blocked(w);
                    self.execute(&mut st, a);
                }
            }
            Msg::Unblocked => {
                if let Some(w) = st.clients.get(&client).and_then(|c| c.worker) {
                    st.leases.unblocked(w);
                }
            }
            Msg::CreateObject { req, size, owner } => {
                let result = st.store.create(size, owner);
                if let Some(c) = st.clients.get(&client) {
                    let _ = c.conn.send(&Msg::ObjectCreated { req, result });
                }
            }
            Msg::FreeObjects { offsets } => {
                for o in offsets {
                    st.store.free(o);
                }
            }
            Msg::KillWorker { worker } => self.execute(&mut st, vec![Action::KillWorker(worker)]),
            Msg::Shutdown => {
                drop(st);
                self.shutdown("the driver asked for shutdown");
            }
            other => log!("raylet ignores unexpected message {other:?}"),
        }
    }

    fn client_gone(&self, client: ClientId) {
        let mut st = self.lock();
        let Some(c) = st.clients.remove(&client) else {
            return;
        };
        if c.is_driver {
            drop(st);
            self.shutdown("the driver disconnected");
        }
        let a = st.leases.client_gone(client);
        self.execute(&mut st, a);
    }

    fn reap(&self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a valid int.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid <= 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            let mut st = self.lock();
            let Some(worker) = st.pids.remove(&(pid as u32)) else {
                continue;
            };
            let was_registered = st.registered.remove(&worker).is_some();
            let freed = st.store.free_owned_by(worker);
            let _ = std::fs::remove_file(self.session.worker_socket(worker));
            log!("worker {worker} (pid {pid}) exited with status {status}; freed {freed} objects");
            let a = if was_registered {
                st.leases.worker_died(worker)
            } else {
                st.start_failures += 1;
                if st.start_failures >= MAX_START_FAILURES {
                    log!("workers keep exiting before registering; giving up on starting more");
                    continue;
                }
                st.leases.worker_start_failed()
            };
            self.execute(&mut st, a);
        }
    }

    /// Kills every worker, removes the node's files, and exits.
    fn shutdown(&self, why: &str) -> ! {
        let pids: Vec<u32> = {
            let st = self.lock();
            log!(
                "raylet shutting down: {why}; store held {} live objects, {} of {} bytes",
                st.store.live_objects(),
                st.store.used(),
                st.store.capacity()
            );
            st.pids.keys().copied().collect()
        };
        for pid in &pids {
            // SAFETY: signalling our own (unreaped) children.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        // Wait (bounded) until they are gone, so none creates a file after
        // the cleanup below.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline && pids.iter().any(|p| process_running(*p)) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = std::fs::remove_file(self.session.arena_path());
        self.session.remove_sockets();
        std::process::exit(0);
    }
}

/// True while `pid` exists and is not a zombie.
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}
