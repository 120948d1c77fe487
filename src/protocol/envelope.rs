//! What goes with the envelope ([`Msg`]): sending any service's message
//! ([`Message`]), putting one in and taking it out of its envelope, and
//! what an envelope holds, for errors and for matching answers to
//! requests. Code, so kept out of the files the protocol fingerprint reads.

use super::*;

/// A message that can be sent: any service's enum, or an envelope.
pub(crate) trait Message: std::fmt::Debug {
    /// The message in its envelope, for encoding.
    fn wire(&self) -> Wire<'_>;
}

impl Message for Msg {
    fn wire(&self) -> Wire<'_> {
        match self {
            Msg::ToRaylet(m) => Wire::ToRaylet(m),
            Msg::FromRaylet(m) => Wire::FromRaylet(m),
            Msg::ToGcs(m) => Wire::ToGcs(m),
            Msg::FromGcs(m) => Wire::FromGcs(m),
            Msg::Peer(m) => Wire::Peer(m),
            Msg::Transfer(m) => Wire::Transfer(m),
        }
    }
}

/// A task push by reference: encoded exactly as
/// `Msg::Peer(PeerMsg::PushTask(spec))` is (a unit test below checks the
/// variant indexes), so an owner pushes the spec it keeps without
/// cloning it first.
pub(crate) struct PushRef<'a>(pub(crate) &'a TaskSpec);

/// `Msg::Peer`'s and `PeerMsg::PushTask`'s places in their enums.
const MSG_PEER: u32 = 4;
const PEER_PUSH_TASK: u32 = 1;

impl Serialize for PushRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        struct Push<'a>(&'a TaskSpec);
        impl Serialize for Push<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_newtype_variant("PeerMsg", PEER_PUSH_TASK, "PushTask", self.0)
            }
        }
        s.serialize_newtype_variant("Msg", MSG_PEER, "Peer", &Push(self.0))
    }
}

/// Each service's enum goes into, is taken out of, and is sent in its
/// envelope.
macro_rules! service {
    ($($ty:ident => $variant:ident),* $(,)?) => {$(
        impl Message for $ty {
            fn wire(&self) -> Wire<'_> {
                Wire::$variant(self)
            }
        }
        impl From<$ty> for Msg {
            fn from(m: $ty) -> Msg {
                Msg::$variant(m)
            }
        }
        impl TryFrom<Msg> for $ty {
            /// The message, for another service.
            type Error = Msg;
            fn try_from(m: Msg) -> std::result::Result<$ty, Msg> {
                match m {
                    Msg::$variant(m) => Ok(m),
                    other => Err(other),
                }
            }
        }
    )*};
}

service! {
    ToRaylet => ToRaylet,
    FromRaylet => FromRaylet,
    ToGcs => ToGcs,
    FromGcs => FromGcs,
    PeerMsg => Peer,
    Transfer => Transfer,
}

impl Msg {
    /// The service the message is for, for errors and logs.
    pub(crate) fn service(&self) -> &'static str {
        match self {
            Msg::ToRaylet(_) => "a request to a raylet",
            Msg::FromRaylet(_) => "a raylet's answer",
            Msg::ToGcs(_) => "a request to the GCS",
            Msg::FromGcs(_) => "the GCS's answer",
            Msg::Peer(_) => "a core worker message",
            Msg::Transfer(_) => "an object transfer",
        }
    }

    /// The request number an answer echoes, when it is one.
    pub(crate) fn answers(&self) -> Option<u64> {
        match self {
            Msg::FromRaylet(FromRaylet::Gcs(m)) => m.req(),
            Msg::FromRaylet(
                FromRaylet::GcsRefused { req, .. }
                | FromRaylet::ObjectCreated { req, .. }
                | FromRaylet::ObjectPulled { req, .. }
                | FromRaylet::ObjectsPinned { req, .. }
                | FromRaylet::StoreStats { req, .. },
            ) => Some(*req),
            Msg::FromGcs(m) => m.req(),
            Msg::Peer(
                PeerMsg::BorrowAdded { req, .. } | PeerMsg::DeviceObjectStaged { req, .. },
            ) => Some(*req),
            _ => None,
        }
    }
}

impl ToGcs {
    /// Whether a raylet forwards this request for one of its core workers
    /// ([`ToRaylet::Gcs`]): what a core worker asks of the GCS, not what
    /// only a raylet or the launcher may say (joining, reporting, a
    /// process gone, stopping the cluster).
    pub(crate) fn forwardable(&self) -> bool {
        matches!(
            self,
            ToGcs::GetNodes { .. }
                | ToGcs::RegisterActor { .. }
                | ToGcs::ListNamedActors { .. }
                | ToGcs::LookupActor { .. }
                | ToGcs::KillActor { .. }
                | ToGcs::ExitActor { .. }
                | ToGcs::ActorOutOfScope { .. }
        )
    }

    /// The request's number, when it expects an answer (a forwarding
    /// raylet gives it one of its own).
    pub(crate) fn req_mut(&mut self) -> Option<&mut u64> {
        match self {
            ToGcs::RegisterNode { req, .. }
            | ToGcs::GetNodes { req }
            | ToGcs::RegisterActor { req, .. }
            | ToGcs::ListNamedActors { req, .. }
            | ToGcs::LookupActor { req, .. }
            | ToGcs::KillActor { req, .. }
            | ToGcs::ExitActor { req, .. } => Some(req),
            ToGcs::ReportResources { .. }
            | ToGcs::StopCluster
            | ToGcs::ActorOutOfScope { .. }
            | ToGcs::OwnerGone { .. } => None,
        }
    }
}

/// `$on` applied to the request number of a [`FromGcs`] answer (by
/// reference or by mutable reference), `None` for a view update.
macro_rules! from_gcs_req {
    ($m:expr, $req:ident => $on:expr) => {
        match $m {
            FromGcs::NodeRegistered { $req, .. }
            | FromGcs::Nodes { $req, .. }
            | FromGcs::ActorRegistered { $req, .. }
            | FromGcs::ActorLookedUp { $req, .. }
            | FromGcs::NamedActors { $req, .. }
            | FromGcs::ActorKilled { $req } => Some($on),
            FromGcs::ClusterView { .. } | FromGcs::NodeLost { .. } => None,
        }
    };
}

impl FromGcs {
    /// The request number the answer echoes (none for a view update).
    pub(crate) fn req(&self) -> Option<u64> {
        from_gcs_req!(self, req => *req)
    }

    /// [`FromGcs::req`], to set (a forwarding raylet restores the
    /// asker's number).
    pub(crate) fn req_mut(&mut self) -> Option<&mut u64> {
        from_gcs_req!(self, req => req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::ids::WorkerId;

    /// A message sent by reference ([`Wire`]) is the same bytes as the
    /// envelope it is decoded into, for every service; taking it out of
    /// the envelope gives it back, and another service's type refuses it.
    #[test]
    fn a_message_sent_by_reference_decodes_as_its_envelope() {
        let worker = WorkerId::new(1, 2);
        let msgs: Vec<Msg> = vec![
            ToRaylet::Blocked.into(),
            FromRaylet::NodeDied { node: 7 }.into(),
            ToGcs::OwnerGone { worker }.into(),
            FromGcs::ActorKilled { req: 9 }.into(),
            PeerMsg::Hello { from: worker }.into(),
            Transfer::ObjectBytes { result: Ok(5) }.into(),
        ];
        for m in msgs {
            let by_ref = codec::encode(&m.wire()).unwrap();
            let back: Msg = codec::decode(&by_ref, "message").unwrap();
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
            assert_eq!(back.service(), m.service());
        }
        let m: Msg = FromGcs::ActorKilled { req: 9 }.into();
        assert_eq!(m.answers(), Some(9));
        let m = FromRaylet::try_from(m).expect_err("a GCS answer is no raylet's");
        assert!(matches!(
            FromGcs::try_from(m),
            Ok(FromGcs::ActorKilled { req: 9 })
        ));
        let inner = codec::encode(&ToRaylet::Blocked).unwrap();
        let whole = codec::encode(&ToRaylet::Blocked.wire()).unwrap();
        assert_ne!(inner, whole, "the envelope names the service");
    }

    /// A push by reference is the same bytes as the push message.
    #[test]
    fn a_push_by_reference_is_the_push_message() {
        let spec = crate::fuzz::seeds::task_spec();
        let by_ref = codec::encode(&PushRef(&spec)).unwrap();
        let msg = Msg::Peer(PeerMsg::PushTask(spec));
        assert_eq!(by_ref, codec::encode(&msg).unwrap());
        let back: Msg = codec::decode(&by_ref, "message").unwrap();
        assert_eq!(format!("{back:?}"), format!("{msg:?}"));
    }
}
