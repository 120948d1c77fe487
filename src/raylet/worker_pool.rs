//! The node's worker processes (Ray's `WorkerPool`): starting them on the
//! spawner thread, taking a worker's registration only for a process this
//! raylet started, reaping them, and signalling only its own children.
//! A worker's exit frees the objects it owned and tells the lease manager;
//! workers that keep exiting before they register mean the binary does
//! not call `rustray::init()` first, and starting stops.

use super::{Raylet, State};
use crate::ids::WorkerId;
use crate::session::{log, ENV_ROLE, ENV_SESSION};
use std::collections::HashMap;

/// Workers that exit before registering this many times in a row mean the
/// binary does not call `rustray::init()` first: stop retrying.
pub(super) const MAX_START_FAILURES: u32 = 5;

/// Bound on registrations waiting for the spawner to record their pid (a
/// peer cannot grow the table past it with made-up pids).
pub(super) const MAX_UNCLAIMED: usize = 1024;

/// A worker's `Register` names its pid: it is taken only when it is a
/// process this raylet started and no worker has claimed yet.
fn claim_pid(pids: &mut HashMap<u32, Option<WorkerId>>, worker: WorkerId, pid: u32) -> bool {
    match pids.get_mut(&pid) {
        Some(slot @ None) => {
            *slot = Some(worker);
            true
        }
        _ => false,
    }
}

/// The pid to signal for `worker`: only a live child of this raylet that
/// registered as that worker, and a valid positive pid (never 0 or a
/// negative process-group id, which `kill` would take as "many").
pub(super) fn kill_target(
    pids: &HashMap<u32, Option<WorkerId>>,
    registered: &HashMap<WorkerId, u32>,
    worker: WorkerId,
) -> Option<i32> {
    let pid = *registered.get(&worker)?;
    let signed = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    (pids.get(&pid) == Some(&Some(worker))).then_some(signed)
}

impl Raylet {
    /// Takes a worker's registration if `pid` is an unclaimed process this
    /// raylet started.
    pub(super) fn claim_worker(&self, st: &mut State, worker: WorkerId, pid: u32) {
        if !claim_pid(&mut st.pids, worker, pid) {
            // A pid this raylet did not start (or one already claimed): a
            // bug or a forged message. Signalling it later could hit any
            // process of the user.
            log!("worker {worker} registered with pid {pid}, which is not an unclaimed worker process of this raylet; ignored");
            return;
        }
        st.registered.insert(worker, pid);
        st.start_failures = 0;
        let a = st.leases.worker_registered(worker);
        self.execute(st, a);
    }

    /// Asks the spawner thread for a worker process.
    pub(super) fn start_worker(&self, st: &mut State) {
        if st.stopping {
            // A worker started now would outlive the kill below and find
            // the store gone.
            return;
        }
        let _ = self.spawns.send(());
    }

    /// Starts the worker processes asked for, one at a time, with the state
    /// lock held only to record them.
    pub(super) fn spawner(&self, asks: std::sync::mpsc::Receiver<()>) {
        for () in asks {
            {
                let mut st = self.lock();
                if st.stopping {
                    continue;
                }
                st.spawning = true;
            }
            let child = std::process::Command::new(&self.session.exe)
                .args(&self.session.args)
                .env(ENV_ROLE, "worker")
                .env(ENV_SESSION, &self.env)
                .stdin(std::process::Stdio::null())
                .spawn();
            let mut st = self.lock();
            match child {
                Ok(mut c) if st.stopping => {
                    // Shutdown began meanwhile and will not see this one:
                    // it waits (`spawning`) until this one is gone.
                    drop(st);
                    let _ = c.kill();
                    let gone = std::time::Instant::now() + std::time::Duration::from_secs(3);
                    while process_running(c.id()) && std::time::Instant::now() < gone {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    self.lock().spawning = false;
                }
                Ok(c) => {
                    st.spawning = false;
                    let pid = c.id();
                    st.pids.insert(pid, None);
                    if let Some((client, worker)) = st.unclaimed.remove(&pid) {
                        if st.clients.contains_key(&client) {
                            self.claim_worker(&mut st, worker, pid);
                        }
                    }
                    // The reaper thread collects it with waitpid; if it
                    // already did, this is its exit.
                    if let Some(status) = st.early_exits.remove(&pid) {
                        self.child_exited(st, pid, status);
                    }
                }
                Err(e) => {
                    st.spawning = false;
                    log!("cannot start a worker: {e}");
                    let actions = st.leases.worker_start_failed();
                    self.execute(&mut st, actions);
                }
            }
        }
    }

    pub(super) fn reap(&self) {
        loop {
            use nix::sys::wait::{waitpid, WaitStatus};
            // The exit code, or 128 + the signal (as a shell reports it).
            let (pid, status) = match waitpid(None, None) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32),
                Ok(_) => continue,
                Err(_) => {
                    // No child now (ECHILD), or interrupted.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
            };
            let mut st = self.lock();
            if !st.pids.contains_key(&(pid as u32)) {
                // Not recorded yet (the spawner records a child after
                // starting it), or not a worker: kept for the spawner,
                // bounded.
                if st.early_exits.len() >= 1024 {
                    st.early_exits.clear();
                }
                st.early_exits.insert(pid as u32, status);
                continue;
            }
            self.child_exited(st, pid as u32, status);
        }
    }

    /// A worker process this raylet started exited.
    fn child_exited<'a>(&'a self, mut st: std::sync::MutexGuard<'a, State>, pid: u32, status: i32) {
        let Some(slot) = st.pids.remove(&pid) else {
            return;
        };
        let worker = slot.filter(|w| st.registered.remove(w).is_some());
        if let Some(worker) = worker {
            let freed = st.store.free_owned_by(worker);
            st = self.delete_dead_files(st);
            let _ = std::fs::remove_file(self.session.worker_socket(worker));
            log!("worker {worker} (pid {pid}) exited with status {status}; freed {freed} objects");
        }
        let a = if let Some(worker) = worker {
            st.leases.worker_died(worker)
        } else {
            st.start_failures += 1;
            if st.start_failures >= MAX_START_FAILURES {
                log!("workers keep exiting before registering; giving up on starting more");
                return;
            }
            st.leases.worker_start_failed()
        };
        self.execute(&mut st, a);
    }
}

/// True while `pid` exists and is not a zombie.
pub(super) fn process_running(pid: u32) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_children_this_raylet_started_are_claimed_and_signalled() {
        let mut pids: HashMap<u32, Option<WorkerId>> = HashMap::new();
        pids.insert(4242, None);
        let (a, b) = (WorkerId(7), WorkerId(8));
        assert!(
            !claim_pid(&mut pids, a, 1),
            "a pid this raylet did not start"
        );
        assert!(
            !claim_pid(&mut pids, a, u32::MAX),
            "kill(-1) must be impossible"
        );
        assert!(claim_pid(&mut pids, a, 4242));
        assert!(!claim_pid(&mut pids, b, 4242), "claimed already");
        let mut registered = HashMap::new();
        registered.insert(a, 4242);
        registered.insert(b, u32::MAX);
        assert_eq!(kill_target(&pids, &registered, a), Some(4242));
        assert_eq!(kill_target(&pids, &registered, b), None);
        pids.remove(&4242); // reaped: the pid may be reused
        assert_eq!(kill_target(&pids, &registered, a), None);
    }
}
