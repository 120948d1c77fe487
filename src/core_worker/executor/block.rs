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
}

impl BlockGuard {
    pub(crate) fn new(cw: &Arc<CoreWorker>) -> BlockGuard {
        // The caller may wait for a push held back on this (connection)
        // thread...
        crate::transport::flush_batched();
        if cw.is_driver {
            return BlockGuard { cw: None };
        }
        // ...or for a result held back here (from a connection thread,
        // which must not block writing, without waiting for the socket).
        if crate::transport::on_connection_thread() {
            cw.exec.post_held();
        } else {
            cw.exec.flush_held();
        }
        let blocked = cw.exec.lock().block();
        let returned = match blocked {
            None => return BlockGuard { cw: None },
            Some(None) => {
                return BlockGuard {
                    cw: Some(cw.clone()),
                }
            }
            Some(Some(returned)) => returned,
        };
        // A task run on a connection thread (this one or another) stops
        // reading it: another thread reads on, first, so that writing to
        // a peer that waits to write to us cannot stall both.
        cw.lend_inline();
        for (c, tasks) in returned {
            let _ = c.send(&PeerMsg::TasksReturned { tasks });
        }
        let _ = cw.raylet.send(&ToRaylet::Blocked);
        BlockGuard {
            cw: Some(cw.clone()),
        }
    }
}

impl Drop for BlockGuard {
    fn drop(&mut self) {
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
