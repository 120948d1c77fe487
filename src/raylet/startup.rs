//! The raylet's start-up: what the node has (its resources and GPUs, its
//! store's size), the data plane it uses (libfabric or the built-in TCP
//! path, and why, logged in one line), its listeners, its registration
//! with the GCS, and the threads that serve it from then on. A start-up
//! that fails ends the raylet process with the error, which its launcher
//! reports.

use super::{gcs_proxy, pull, Raylet, State};
use crate::error::{Error, Result};
use crate::object_store::{Arena, Store, SPACE_PER_MEMORY};
use crate::scheduler::LeaseManager;
use crate::session::{log, Session};
use crate::transport::{self, Listener};
use pull::{PullBudget, WorkPool};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

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

/// Opens the node's fabric endpoint and registers the whole arena with it,
/// as the transport setting asks; logs one line saying which data plane
/// the node uses and why. None: the built-in TCP path.
fn open_fabric(
    session: &Session,
    arena: &Arc<Arena>,
) -> Result<Option<(Arc<crate::fabric::Fabric>, crate::fabric::FabricAddr)>> {
    use crate::fabric::{Fabric, OpenOptions, Transport};
    let choice = session.config.transport_choice()?;
    let single_host = session.config.single_host();
    let tcp = |why: &str| {
        log!("transport: tcp ({why})");
        Ok(None)
    };
    match choice {
        Transport::Tcp => return tcp("asked for"),
        Transport::Auto
            if single_host || session.config.node_count()? == 1 && !slurm_multi_node() =>
        {
            return tcp("auto: every node is on this host");
        }
        _ => {}
    }
    let forced = choice == Transport::Fabric;
    let opts = OpenOptions {
        forced,
        single_host,
        ip: session.ip,
        name: Some(session.fabric_name()),
    };
    let fail = |e: crate::fabric::FabricError| {
        Error::unavailable(format!(
            "node {} cannot use the fabric transport (--transport fabric): {e}",
            session.node
        ))
    };
    let fabric = match Fabric::open(&opts).map_err(fail)? {
        Ok(f) => Arc::new(f),
        Err(why) => return tcp(&format!("auto: {why}")),
    };
    let addr = fabric.register_arena(arena.clone()).map_err(fail)?;
    if fabric.manual_progress() {
        let f = fabric.clone();
        std::thread::Builder::new()
            .name("raylet-fabric".into())
            .spawn(move || f.progress())
            .map_err(|e| Error::io("spawning the fabric progress thread", e))?;
    }
    log!(
        "transport: fabric, provider {} ({}); arena of {} bytes registered, key {:#x}",
        fabric.provider,
        fabric.why,
        arena.len(),
        addr.key
    );
    Ok(Some((fabric, addr)))
}

/// True inside a Slurm step of more than one node.
fn slurm_multi_node() -> bool {
    std::env::var("SLURM_NNODES")
        .or_else(|_| std::env::var("SLURM_JOB_NUM_NODES"))
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|n| n > 1)
}

/// The node's GPUs when nothing says how many: those the CUDA driver
/// reports (feature `cuda`), numbered from 0.
fn detected_gpus() -> Vec<u32> {
    #[cfg(feature = "cuda")]
    let n = crate::cuda::detected_gpus() as u32;
    #[cfg(not(feature = "cuda"))]
    let n = 0;
    (0..n).collect()
}

/// The node's arena and the bytes of memory it offers: on a tmpfs of its
/// own with huge pages where wanted and the machine allows, sized without
/// regard to the room in `/dev/shm`; else a plain file there, bounded by
/// that room (a file past it would fault its writers with SIGBUS).
fn create_arena(session: &Session) -> Result<(Arena, u64)> {
    // Address space for spilled objects beside the memory (see
    // `object_store::table`): sparse, so it costs nothing until written.
    let space = |bytes: u64| bytes.saturating_mul(SPACE_PER_MEMORY);
    let path = session.arena_path();
    if session.config.wants_huge_store() {
        let bytes = session.config.store_bytes_on(true)?;
        match Arena::create_huge(&path, space(bytes)) {
            Ok(a) => return Ok((a, bytes)),
            Err(e) => crate::log::log!(
                "object store: no huge pages ({e}); a plain file in {}",
                session.config.store_base().display()
            ),
        }
    }
    let bytes = session.config.store_bytes()?;
    Ok((Arena::create(&path, space(bytes))?, bytes))
}

fn run(session: Session) -> Result<()> {
    // Deep nesting starts one worker per blocked task: many connections.
    transport::raise_fd_limit();
    let gpu_ids = session.config.node_gpu_ids_or(detected_gpus)?;
    let resources = session.config.node_resources_with(gpu_ids.len())?;
    let (arena, store_bytes) = create_arena(&session)?;
    let arena = Arc::new(arena);
    let cpus = resources.get(crate::scheduler::CPU).ceil().max(1.0) as usize;
    let mut leases =
        LeaseManager::new(resources.clone(), cpus.max(2), cpus.max(2)).with_gpu_ids(&gpu_ids)?;
    leases.set_node(session.node_index);
    let prestart = cpus.min(8);
    leases.note_prestarted(prestart);
    let fabric = open_fabric(&session, &arena)?;
    let unix = Listener::bind_unix(&session.raylet_socket())?;
    let (spawns, spawn_rx) = std::sync::mpsc::channel();
    let (report_wake, wake_rx) = std::sync::mpsc::sync_channel(1);
    let tcp = Listener::bind_tcp(session.ip)?;
    let raylet = Arc::new(Raylet {
        env: session.to_process_env()?,
        state: Mutex::new(State {
            leases,
            store: Store::new(store_bytes, arena.len() as u64),
            clients: HashMap::new(),
            pids: HashMap::new(),
            registered: HashMap::new(),
            start_failures: 0,
            copies: HashMap::new(),
            pins: HashMap::new(),
            nodes: HashMap::new(),
            view_version: 0,
            candidates: HashMap::new(),
            demand_reported: 0,
            drivers_seen: 0,
            ranks: Vec::new(),
            own_driver: None,
            stopping: false,
            spawning: false,
            spilling: false,
            spill_pending: false,
            early_exits: HashMap::new(),
            unclaimed: HashMap::new(),
        }),
        next_client: AtomicU64::new(1),
        arena,
        pulls: PullBudget::default(),
        pull_pool: WorkPool::new("raylet-pull", pull::PULL_THREADS),
        starter: std::os::unix::process::parent_id(),
        fabric: fabric.as_ref().map(|(f, _)| f.clone()),
        fabric_broken: Mutex::new(Default::default()),
        fabric_forced: session.config.transport_choice()? == crate::fabric::Transport::Fabric,
        fabric_wedged: Default::default(),
        gcs: std::sync::OnceLock::new(),
        gcs_proxy: gcs_proxy::GcsProxy::default(),
        gcs_forward: Mutex::new(None),
        room: std::sync::Condvar::new(),
        spill: session.spill_dir(),
        spawns,
        report_wake,
        session,
    });
    let gcs = raylet.register(&resources, tcp.port(), fabric.map(|(_, a)| a))?;
    let _ = raylet.gcs.set(gcs.clone());
    log!(
        "raylet up: node {} ({}) at {}:{}, resources {:?}, store {} bytes at {}",
        raylet.session.node_index,
        raylet.session.node,
        raylet.session.ip,
        tcp.port(),
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
    let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || transport::vital(name, f))
            .map(|_| ())
            .map_err(|e| Error::io("spawning a raylet thread", e))
    };
    let r = raylet.clone();
    crate::signals::on_terminate(move |sig| r.shutdown(&format!("signal {sig}")));
    let r = raylet.clone();
    spawn("raylet-reaper", Box::new(move || r.reap()))?;
    let r = raylet.clone();
    spawn("raylet-spawner", Box::new(move || r.spawner(spawn_rx)))?;
    let r = raylet.clone();
    spawn("raylet-report", Box::new(move || r.report(gcs, wake_rx)))?;
    let r = raylet.clone();
    spawn("raylet-tcp", Box::new(move || r.accept(tcp)))?;
    transport::vital("raylet-unix", || raylet.accept(unix));
    Ok(())
}
