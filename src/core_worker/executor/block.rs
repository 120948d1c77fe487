//! A worker blocked in `get`/`wait` (Ray's blocked worker): while a
//! [`BlockGuard`] lives, the worker takes no new normal task, hands back
//! those queued behind the one that waits, and its raylet lends the CPU
//! it holds to others (so nested tasks cannot deadlock the node); when the
//! last guard goes, it takes the CPU back and tells its lease holder it may
//! push here again. The queue's rules are `exec_queue`'s.

use crate::core_worker::CoreWorker;
use crate::protocol::{PeerMsg, ToRaylet};
use std::sync::Arc;

/// While alive, the worker counts as blocked in `get`/`wait`.
pub(crate) struct BlockGuard {
    cw: Option<Arc<CoreWorker>>,
    /// A task run on a connection thread blocks: that connection is read
    /// by another thread meanwhile.
    lent: Option<crate::transport::Lent>,
}

impl BlockGuard {
    pub(crate) fn new(cw: &Arc<CoreWorker>) -> BlockGuard {
        // The caller may wait for a push held back on this (connection)
        // thread...
        crate::transport::flush_batched();
        if cw.is_driver {
            return BlockGuard {
                cw: None,
                lent: None,
            };
        }
        // ...or for a result held back here (from a connection thread,
        // which must not block writing, without waiting for the socket).
        if super::INLINE_PEER.with(|p| p.borrow().is_some()) {
            cw.exec.post_held();
        } else {
            cw.exec.flush_held();
        }
        let blocked = cw.exec.lock().block();
        let returned = match blocked {
            None => {
                return BlockGuard {
                    cw: None,
                    lent: None,
                }
            }
            Some(None) => {
                return BlockGuard {
                    cw: Some(cw.clone()),
                    lent: None,
                }
            }
            Some(Some(returned)) => returned,
        };
        for (c, tasks) in returned {
            let _ = c.send(&PeerMsg::TasksReturned { tasks });
        }
        let _ = cw.raylet.send(&ToRaylet::Blocked);
        BlockGuard {
            cw: Some(cw.clone()),
            lent: lend_reading(cw),
        }
    }
}

impl Drop for BlockGuard {
    fn drop(&mut self) {
        // The connection's own thread reads it again from here on.
        drop(self.lent.take());
        let Some(cw) = self.cw.take() else { return };
        let Some(lease_holder) = cw.exec.lock().unblock() else {
            return;
        };
        let _ = cw.raylet.send(&ToRaylet::Unblocked);
        if let Some(conn) = lease_holder {
            let _ = conn.send(&PeerMsg::WorkerUnblocked);
        }
    }
}

/// On a connection thread whose task (run inline) blocks: the connection
/// is lent to a thread of its own until the guard goes, which hands back
/// the pushes that arrive meanwhile as the main thread's blocking would
/// (one of them may make what the task waits for), and handles whatever
/// else the peer sends.
fn lend_reading(cw: &Arc<CoreWorker>) -> Option<crate::transport::Lent> {
    let (from, conn) = super::INLINE_PEER.with(|p| p.borrow().clone())?;
    let cw = cw.clone();
    crate::transport::lend_reader(move |msg| {
        if let crate::transport::Msg::Peer(m) = msg {
            cw.handle_peer(from, &conn, m);
        }
    })
}
