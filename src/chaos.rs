//! Fault injection from inside a driver, for the tests that prove a bad
//! peer harms nobody else (not API: reached through `__private`).
//!
//! A peer of a launched cluster is any process that presents the job's
//! secret: a bug, a mixed build or a corrupted buffer in one of them must
//! cost at most the connection it arrived on. [`send_raw`] plays such a
//! peer: it connects as a real process of the job would, then writes bytes
//! no encoder would produce.

use crate::codec;
use crate::error::{Error, Result};
use crate::transport::Endpoint;
use crate::transport::Msg;
use crate::transport::Stream;
use std::io::{Read, Write};
use std::time::Duration;

/// Which components of this driver's cluster [`send_raw`] writes to.
#[derive(Clone, Copy, Debug)]
pub enum Peer {
    /// The GCS (over TCP, as raylets reach it).
    Gcs,
    /// This node's raylet (its Unix socket).
    Raylet,
    /// Every core worker of this node, drivers included (their sockets).
    Workers,
}

/// Opens a fresh connection to each `to` peer per frame in `frames`,
/// presents the cluster secret, writes the frame's bytes as they are and
/// waits (bounded) for the peer to close the connection or go quiet.
/// Returns the number of connections made.
pub fn send_raw(to: Peer, frames: &[Vec<u8>]) -> Result<usize> {
    let cw = crate::core_worker::current()?;
    let s = &cw.session;
    let endpoints: Vec<Endpoint> = match to {
        Peer::Gcs => vec![Endpoint::Tcp(s.gcs)],
        Peer::Raylet => vec![Endpoint::Unix(s.raylet_socket())],
        Peer::Workers => std::fs::read_dir(&s.dir)
            .map_err(|e| Error::io(&format!("listing {}", s.dir.display()), e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("w-") && n.ends_with(".sock"))
            })
            .map(Endpoint::Unix)
            .collect(),
    };
    let mut made = 0;
    for ep in &endpoints {
        for f in frames {
            // A worker may have exited since the listing: not a finding.
            let Ok(mut conn) = ep.connect(&s.secret) else {
                continue;
            };
            made += 1;
            let _ = conn.write_all(f);
            wait_closed(&mut conn, Duration::from_millis(50));
        }
    }
    Ok(made)
}

/// Reads (and drops) what the peer sends until it closes the connection
/// or `quiet` passes without a byte.
fn wait_closed(conn: &mut Stream, quiet: Duration) {
    let _ = conn.set_read_timeout(Some(quiet));
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Plays a local process that asks this node's raylet `requests` cheap
/// questions (its store's stats) on one connection and never reads the
/// answers, holding the connection open for `hold` (on a thread of its
/// own; returns at once). The raylet must go on serving everyone else.
pub fn flood_raylet(requests: usize, hold: Duration) -> Result<()> {
    let cw = crate::core_worker::current()?;
    let s = &cw.session;
    let mut conn = Endpoint::Unix(s.raylet_socket()).connect(&s.secret)?;
    let mut frames = Vec::new();
    for i in 0..requests {
        let body = codec::encode(&Msg::GetStoreStats { req: i as u64 })?;
        frames.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frames.extend_from_slice(&body);
    }
    std::thread::Builder::new()
        .name("chaos-flood".into())
        .spawn(move || {
            let _ = conn.write_all(&frames);
            std::thread::sleep(hold);
        })
        .map_err(|e| Error::io("starting the flooding thread", e))?;
    Ok(())
}
