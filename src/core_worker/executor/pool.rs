//! A threaded actor's call threads (Ray's `max_concurrency` > 1): its
//! state shared by them (its type must be `Sync`), and the threads that
//! take its calls from the executor's pool queue, run them at once, and
//! answer each on the connection it came on.

use super::*;

/// Makes a constructed actor's state shareable by threads (its type must
/// be `Sync`).
pub(super) fn share(spec: &ActorSpec, state: Box<dyn Any + Send>) -> Result<SharedActor> {
    let entry = registry_actor(&spec.class).ok_or_else(|| {
        Error::new(
            ErrorKind::TaskFailed,
            format!("actor class `{}` is not registered", spec.class),
        )
    })?;
    match (entry.share)(state) {
        Ok(arc) => Ok((spec.class.clone(), arc)),
        Err(_) => Err(Error::invalid(format!(
            "actor `{}` has max_concurrency = {}, which runs its calls on several threads at once, but its type is not Sync: keep its state behind a Mutex or atomics",
            spec.class, spec.max_concurrency
        ))),
    }
}

/// Starts a threaded actor's `n` call threads; from now on its calls go to
/// them.
pub(super) fn start(cw: &Arc<CoreWorker>, shared: SharedActor, n: u32) -> Result<()> {
    for i in 0..n {
        let cw = cw.clone();
        let shared = shared.clone();
        let r = std::thread::Builder::new()
            .name(format!("rustray-actor-{i}"))
            .spawn(move || pool_thread(&cw, &shared));
        match r {
            Ok(_) => {}
            Err(e) if i == 0 => return Err(Error::io("starting the actor's call threads", e)),
            Err(e) => {
                // Fewer threads than asked still serve every call.
                log!("actor call thread {i} of {n} could not start: {e}");
                break;
            }
        }
    }
    cw.exec
        .threaded
        .store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

fn pool_thread(cw: &Arc<CoreWorker>, shared: &SharedActor) -> ! {
    loop {
        let (spec, conn) = {
            let mut q = cw.exec.pool.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(item) = q.pop_front() {
                    break item;
                }
                q = cw.exec.pool_cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        POOL_TASK.with(|t| t.set(Some(spec.id)));
        let out = run(cw, &spec, None, Some(shared));
        POOL_TASK.with(|t| t.set(None));
        let _ = conn.send(&PeerMsg::TaskDone {
            task: spec.id,
            returns: out.returns,
            app_error: out.app_error,
            exiting: false,
            lost_args: out.lost_args,
        });
    }
}
