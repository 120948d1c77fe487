//! The raylet forwards its core workers' requests to the GCS on a GCS
//! connection of its own ([`ToRaylet::Gcs`](crate::protocol::ToRaylet::Gcs)),
//! beside the one it registered and reports on (so the GCS serves them on
//! another thread than the node's heartbeats): rank 0 holds two
//! connections per node rather than one per process (at 1,024 nodes of 64
//! workers, 2,048 connections and their threads rather than 65,000).
//!
//! Request numbers are the asker's own, so two workers may use the same:
//! a forwarded request gets a number of the raylet's, and the answer gets
//! the asker's back on its way to it. Only the requests a core worker
//! makes are forwarded (the node table, actors, names); what only a raylet
//! or the launcher may say (joining, reporting, a process gone, stopping
//! the cluster) is refused, so a local process cannot speak for its node.
//! A request the GCS never answers (a lookup that waits for an actor that
//! never comes) leaves an entry until its asker goes; at most
//! [`MAX_FORWARDED`] wait at once. A request that will get no answer from
//! the GCS (refused here, not sent, or waiting when the connection to the
//! GCS closes) is answered by the raylet with the reason
//! ([`FromRaylet::GcsRefused`](crate::protocol::FromRaylet::GcsRefused)),
//! so its asker fails at once rather than at its timeout.

use super::ClientId;
use crate::protocol::{FromGcs, ToGcs};
use std::collections::HashMap;
use std::sync::Mutex;

/// Forwarded requests waiting for the GCS's answer, at most.
pub(super) const MAX_FORWARDED: usize = 65_536;

/// The forwarded requests waiting for an answer: the raylet's number for
/// each, and whose it is (the client and its own number).
#[derive(Debug, Default)]
pub(super) struct GcsProxy {
    inner: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    next: u64,
    waiting: HashMap<u64, (ClientId, u64)>,
}

/// Why a request was not forwarded.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Not a core worker's request.
    NotForwardable,
    /// [`MAX_FORWARDED`] already wait.
    Full,
}

impl GcsProxy {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `m`, from `client`, the raylet's own request to send: its
    /// number replaced by one of the raylet's (none for a one-way message).
    /// Returns that number.
    pub(super) fn outgoing(&self, client: ClientId, m: &mut ToGcs) -> Result<Option<u64>, Refused> {
        if !m.forwardable() {
            return Err(Refused::NotForwardable);
        }
        let Some(req) = m.req_mut() else {
            return Ok(None);
        };
        let mut p = self.lock();
        if p.waiting.len() >= MAX_FORWARDED {
            return Err(Refused::Full);
        }
        p.next += 1;
        let mine = p.next;
        p.waiting.insert(mine, (client, *req));
        *req = mine;
        Ok(Some(mine))
    }

    /// The request numbered `mine` was not sent after all: whose it was.
    pub(super) fn unsent(&self, mine: u64) -> Option<(ClientId, u64)> {
        self.lock().waiting.remove(&mine)
    }

    /// An answer from the GCS: whose it is, with the asker's number back
    /// in it (none if it answers no forwarded request).
    pub(super) fn incoming(&self, mut m: FromGcs) -> Option<(ClientId, FromGcs)> {
        let req = m.req_mut()?;
        let (client, theirs) = self.lock().waiting.remove(req)?;
        *req = theirs;
        Some((client, m))
    }

    /// The connection they went on closed: no answer is coming. Returns
    /// whose they were, with the askers' numbers.
    pub(super) fn forget_all(&self) -> Vec<(ClientId, u64)> {
        self.lock().waiting.drain().map(|(_, w)| w).collect()
    }

    /// `client` is gone: its requests' answers go nowhere.
    pub(super) fn client_gone(&self, client: ClientId) {
        self.lock().waiting.retain(|_, (c, _)| *c != client);
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ActorId;

    /// Two clients using the same request number get their own answers
    /// back, each under its number; what only a raylet may say is not
    /// forwarded; a gone client's requests are forgotten.
    #[test]
    fn answers_go_back_to_their_askers_under_their_numbers() {
        let proxy = GcsProxy::default();
        let (a, b) = (ClientId::from(1u64), ClientId::from(2u64));
        let mut ma = ToGcs::GetNodes { req: 7 };
        let mut mb = ToGcs::GetNodes { req: 7 };
        let ra = proxy.outgoing(a, &mut ma).unwrap().expect("numbered");
        let rb = proxy.outgoing(b, &mut mb).unwrap().expect("numbered");
        assert_ne!(ra, rb);
        assert!(matches!(ma, ToGcs::GetNodes { req } if req == ra));
        let (to, back) = proxy
            .incoming(FromGcs::ActorKilled { req: rb })
            .expect("b's");
        assert_eq!(to, b);
        assert!(matches!(back, FromGcs::ActorKilled { req: 7 }));
        assert!(
            proxy.incoming(FromGcs::ActorKilled { req: rb }).is_none(),
            "once"
        );
        let mut oneway = ToGcs::ActorOutOfScope {
            id: ActorId::random(),
        };
        assert_eq!(proxy.outgoing(a, &mut oneway), Ok(None));
        for mut m in [
            ToGcs::StopCluster,
            ToGcs::OwnerGone {
                worker: crate::ids::WorkerId::new(0, 1),
            },
        ] {
            assert_eq!(proxy.outgoing(a, &mut m), Err(Refused::NotForwardable));
        }
        proxy.client_gone(a);
        assert_eq!(proxy.waiting(), 0);
        assert!(proxy.incoming(FromGcs::ActorKilled { req: ra }).is_none());
        // Not sent after all, or the GCS connection lost: whose they were
        // comes back, for the raylet to answer them.
        let mut mc = ToGcs::GetNodes { req: 9 };
        let rc = proxy.outgoing(b, &mut mc).unwrap().expect("numbered");
        assert_eq!(proxy.unsent(rc), Some((b, 9)));
        assert_eq!(proxy.unsent(rc), None);
        proxy.outgoing(a, &mut ToGcs::GetNodes { req: 5 }).unwrap();
        let mut lost = proxy.forget_all();
        lost.sort_by_key(|(_, req)| *req);
        assert_eq!(lost, vec![(a, 5)]);
        assert_eq!(proxy.waiting(), 0);
    }

    /// At most MAX_FORWARDED wait at once.
    #[test]
    fn forwarded_requests_are_bounded() {
        let proxy = GcsProxy::default();
        let c = ClientId::from(3u64);
        for _ in 0..MAX_FORWARDED {
            proxy.outgoing(c, &mut ToGcs::GetNodes { req: 1 }).unwrap();
        }
        assert_eq!(
            proxy.outgoing(c, &mut ToGcs::GetNodes { req: 1 }),
            Err(Refused::Full)
        );
        proxy.client_gone(c);
        assert!(proxy.outgoing(c, &mut ToGcs::GetNodes { req: 1 }).is_ok());
    }
}
