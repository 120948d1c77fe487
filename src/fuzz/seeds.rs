//! The fuzzer's seeds: one valid instance of every message variant of every
//! service (a test fails when a variant has none), built from small valid
//! ids, shapes, node entries and specs.

use super::*;

pub(super) fn wid(n: u64) -> WorkerId {
    WorkerId(n)
}

pub(super) fn oid(seq: u64) -> ObjectId {
    ObjectId { owner: wid(7), seq }
}

pub(super) fn shape() -> ResourceSet {
    ResourceSet::new()
        .with("CPU", 2.0)
        .and_then(|r| r.with("GPU", 0.5))
        .and_then(|r| r.with("custom_resource", 3.0))
        .expect("a valid shape")
}

pub(super) fn node(i: u16) -> NodeInfo {
    NodeInfo {
        index: i,
        name: format!("node-{i}"),
        ip: std::net::IpAddr::from([10, 0, 0, i as u8]),
        raylet_port: 4000 + i,
        total: shape(),
        available: shape(),
        alive: true,
        store_used: 1 << 20,
        store_capacity: 1 << 30,
        drivers: 1,
        drivers_seen: 2,
        ranks: vec![0, 3],
        fabric: Some(crate::fabric::FabricAddr {
            provider: "shm".into(),
            name: vec![1, 2, 3, 4, 5, 6, 7, 8],
            base: 0x7f00_0000_0000,
            key: 42,
            len: 1 << 30,
        }),
    }
}

pub(super) fn actor_spec() -> ActorSpec {
    ActorSpec {
        id: ActorId(9),
        class: "app::Counter".into(),
        args: vec![Payload::Inline(vec![1, 2, 3])],
        name: Some("counter".into()),
        max_restarts: 3,
        shape: shape(),
        placement: shape(),
        strategy: crate::SchedulingStrategy::NodeAffinity {
            node: "node-1".into(),
            soft: true,
        },
        owner: wid(3),
        detached: false,
        namespace: "ns".into(),
        get_if_exists: true,
        max_task_retries: 2,
        max_concurrency: 4,
    }
}

pub(crate) fn task_spec() -> TaskSpec {
    TaskSpec {
        id: TaskId {
            owner: wid(7),
            seq: 11,
        },
        function: "app::add".into(),
        args: vec![
            Payload::Inline(codec::encode_value(&5u64).expect("encodes").into_vec()),
            Payload::Store {
                node: 1,
                offset: 4096,
                len: 1 << 20,
                tag: 77,
            },
        ],
        returns: vec![oid(12), oid(13)],
        actor: None,
        alone: true,
        max_calls: 0,
        resources: shape(),
        arg_copies: vec![(1, vec![0, 2])],
        gpus: vec![2],
        attempt: 2,
    }
}

pub(super) fn messages() -> Vec<Msg> {
    let err = Error::new(ErrorKind::TaskFailed, "it failed: a message of some length");
    vec![
        Msg::ToRaylet(ToRaylet::Register {
            worker: wid(5),
            pid: 1234,
            is_driver: false,
            rank: Some(3),
        }),
        Msg::ToRaylet(ToRaylet::RequestLease {
            req: 1,
            shape: shape(),
            spill: Spill::Later,
        }),
        Msg::ToRaylet(ToRaylet::CreateObject {
            req: 2,
            size: 1 << 20,
            owner: wid(5),
            tag: 99,
        }),
        Msg::ToRaylet(ToRaylet::PinObjects {
            req: 3,
            blocks: vec![(64, 99), (4096, 100)],
        }),
        Msg::ToRaylet(ToRaylet::FreeObjects {
            offsets: vec![0, 4096, 1 << 20],
        }),
        Msg::ToRaylet(ToRaylet::PullObject {
            req: 3,
            node: 2,
            offset: 64,
            len: 1 << 20,
            tag: 5,
            copies: vec![1, 2],
        }),
        Msg::FromRaylet(FromRaylet::LeaseGranted {
            req: 4,
            lease: LeaseId::new(1, 8),
            worker: wid(9),
            gpus: vec![0, 3],
        }),
        Msg::FromRaylet(FromRaylet::LeaseFailed {
            req: 5,
            error: err.clone(),
        }),
        Msg::FromRaylet(FromRaylet::GcsRefused {
            req: 41,
            error: err.clone(),
        }),
        Msg::FromRaylet(FromRaylet::ObjectPulled {
            req: 6,
            result: Ok(4096),
        }),
        Msg::Peer(PeerMsg::PushTask(task_spec())),
        Msg::Peer(PeerMsg::TaskDone {
            task: task_spec().id,
            returns: vec![Payload::Inline(codec::encode_error(&err))],
            app_error: true,
            exiting: false,
            lost_args: vec![1],
        }),
        Msg::Peer(PeerMsg::ObjectLost { id: oid(4), tag: 5 }),
        Msg::FromRaylet(FromRaylet::NodeDied { node: 3 }),
        Msg::Peer(PeerMsg::ObjectReady {
            id: oid(3),
            payload: Payload::Inline(vec![0; 200]),
            copies: vec![0, 1, 2],
        }),
        Msg::ToGcs(ToGcs::RegisterNode {
            req: 7,
            info: node(1),
        }),
        Msg::ToGcs(ToGcs::ReportResources {
            node: 1,
            report: Some(ResourceReport {
                available: shape(),
                store_used: 10,
                store_capacity: 20,
                drivers: 1,
                drivers_seen: 1,
                ranks: vec![7],
            }),
            view_version: 41,
            spill_demand: 12,
        }),
        Msg::FromGcs(FromGcs::ClusterView {
            version: 42,
            joined: (0..4).map(node).collect(),
            changed: (4..8)
                .map(|i| crate::gcs::nodes::load_of(&node(i)))
                .collect(),
            candidates: Some(
                (1..3)
                    .map(|i| crate::gcs::nodes::load_of(&node(i)))
                    .collect(),
            ),
        }),
        Msg::ToGcs(ToGcs::RegisterActor {
            req: 8,
            spec: actor_spec(),
        }),
        Msg::FromGcs(FromGcs::ActorRegistered {
            req: 9,
            result: Ok(ActorInfo {
                id: ActorId(9),
                class: "app::Counter".into(),
                state: ActorState::Alive,
                worker: Some(wid(4)),
                incarnation: 1,
                death: Some(err.clone()),
                max_task_retries: 0,
                max_concurrency: 1,
            }),
        }),
        Msg::ToGcs(ToGcs::ListNamedActors {
            req: 10,
            namespace: Some("ns".into()),
        }),
        Msg::FromGcs(FromGcs::NamedActors {
            req: 11,
            actors: vec![NamedActor {
                namespace: "ns".into(),
                name: "counter".into(),
            }],
        }),
        Msg::ToGcs(ToGcs::LookupActor {
            req: 12,
            by: ActorLookup::Name(NamedActor {
                namespace: String::new(),
                name: "x".into(),
            }),
            wait: true,
        }),
        // Every other message once, so each variant's layout is mutated
        // from a valid start.
        Msg::ToRaylet(ToRaylet::ReturnLease {
            lease: LeaseId::new(1, 9),
            kill: true,
        }),
        Msg::ToRaylet(ToRaylet::Blocked),
        Msg::ToRaylet(ToRaylet::Unblocked),
        Msg::ToRaylet(ToRaylet::UnpinObjects {
            offsets: vec![0, 4096, 1 << 30],
        }),
        Msg::FromRaylet(FromRaylet::Retire),
        Msg::ToRaylet(ToRaylet::RetireRefused),
        Msg::ToRaylet(ToRaylet::KillWorker { worker: wid(6) }),
        Msg::ToRaylet(ToRaylet::UnpinObject {
            node: 1,
            offset: 4096,
            len: 1 << 20,
            tag: 77,
        }),
        Msg::Transfer(Transfer::ReadObject {
            node: 1,
            offset: 4096,
            len: 1 << 20,
            tag: 77,
            start: 8 << 20,
            count: 1 << 20,
        }),
        Msg::ToRaylet(ToRaylet::Shutdown),
        Msg::FromRaylet(FromRaylet::LeaseSpillback { req: 13, node: 2 }),
        Msg::Transfer(Transfer::ObjectBytes {
            result: Ok(1 << 20),
        }),
        Msg::FromRaylet(FromRaylet::ObjectCreated {
            req: 14,
            result: Err(err.clone()),
        }),
        Msg::FromRaylet(FromRaylet::ObjectsPinned {
            req: 15,
            result: Ok(()),
        }),
        Msg::ToRaylet(ToRaylet::GetStoreStats { req: 16 }),
        Msg::FromRaylet(FromRaylet::StoreStats {
            req: 17,
            used: 1 << 20,
            capacity: 1 << 30,
            objects: 3,
            spilled_objects: 2,
            spilled_bytes: 2 << 20,
        }),
        Msg::Peer(PeerMsg::Hello { from: wid(8) }),
        Msg::Peer(PeerMsg::CancelTask {
            task: TaskId {
                owner: wid(7),
                seq: 3,
            },
            attempt: 1,
        }),
        Msg::Peer(PeerMsg::CancelObject { id: oid(5) }),
        Msg::Peer(PeerMsg::FreeObject { id: oid(6) }),
        Msg::Peer(PeerMsg::WorkerUnblocked),
        Msg::Peer(PeerMsg::TasksReturned {
            tasks: vec![
                TaskId {
                    owner: wid(7),
                    seq: 4,
                },
                TaskId {
                    owner: wid(7),
                    seq: 5,
                },
            ],
        }),
        Msg::Peer(PeerMsg::GetObject { id: oid(7) }),
        Msg::Peer(PeerMsg::AddLocation {
            id: oid(8),
            node: 2,
        }),
        Msg::Peer(PeerMsg::RemoveLocation {
            id: oid(8),
            node: 2,
        }),
        Msg::Peer(PeerMsg::AddBorrow {
            req: 18,
            id: oid(9),
        }),
        Msg::Peer(PeerMsg::BorrowAdded { req: 18, ok: true }),
        Msg::Peer(PeerMsg::RemoveBorrow { id: oid(9) }),
        Msg::FromGcs(FromGcs::NodeRegistered {
            req: 19,
            result: Err(err.clone()),
        }),
        Msg::ToGcs(ToGcs::GetNodes { req: 20 }),
        Msg::FromGcs(FromGcs::Nodes {
            req: 20,
            nodes: (0..3).map(node).collect(),
        }),
        Msg::FromGcs(FromGcs::ActorLookedUp {
            req: 21,
            result: Err(err.clone()),
        }),
        Msg::ToGcs(ToGcs::KillActor {
            req: 22,
            id: ActorId(9),
            no_restart: false,
        }),
        Msg::ToGcs(ToGcs::ExitActor {
            req: 23,
            id: ActorId(9),
        }),
        Msg::FromGcs(FromGcs::ActorKilled { req: 22 }),
        Msg::ToGcs(ToGcs::ActorOutOfScope { id: ActorId(9) }),
        Msg::ToGcs(ToGcs::OwnerGone { worker: wid(4) }),
        Msg::Peer(PeerMsg::CreateActor {
            spec: actor_spec(),
            gpus: vec![1],
        }),
        Msg::Peer(PeerMsg::ActorCreated { result: Err(err) }),
        Msg::ToGcs(ToGcs::StopCluster),
        Msg::Peer(PeerMsg::StageDeviceObject {
            req: 31,
            id: oid(8),
        }),
        Msg::Peer(PeerMsg::DeviceObjectStaged {
            req: 31,
            result: Ok(oid(9)),
        }),
        Msg::ToRaylet(ToRaylet::Gcs(ToGcs::LookupActor {
            req: 32,
            by: ActorLookup::Name(NamedActor {
                namespace: "ns".into(),
                name: "forwarded".into(),
            }),
            wait: true,
        })),
        Msg::FromRaylet(FromRaylet::Gcs(FromGcs::ActorKilled { req: 33 })),
        Msg::FromGcs(FromGcs::NodeLost { node: 7 }),
    ]
}

/// Messages by variant, through an exhaustive match: a new variant does not
/// compile until it is numbered here, and then
/// `every_message_variant_has_a_fuzz_seed` wants a seed of it.
const VARIANTS: usize = 68;

pub(super) fn variant(m: &Msg) -> usize {
    match m {
        Msg::ToRaylet(ToRaylet::Register { .. }) => 0,
        Msg::ToRaylet(ToRaylet::RequestLease { .. }) => 1,
        Msg::ToRaylet(ToRaylet::ReturnLease { .. }) => 2,
        Msg::ToRaylet(ToRaylet::Blocked) => 3,
        Msg::ToRaylet(ToRaylet::Unblocked) => 4,
        Msg::ToRaylet(ToRaylet::CreateObject { .. }) => 5,
        Msg::ToRaylet(ToRaylet::PinObjects { .. }) => 6,
        Msg::ToRaylet(ToRaylet::UnpinObjects { .. }) => 7,
        Msg::ToRaylet(ToRaylet::FreeObjects { .. }) => 8,
        Msg::FromRaylet(FromRaylet::Retire) => 9,
        Msg::ToRaylet(ToRaylet::RetireRefused) => 10,
        Msg::ToRaylet(ToRaylet::KillWorker { .. }) => 11,
        Msg::ToRaylet(ToRaylet::PullObject { .. }) => 12,
        Msg::ToRaylet(ToRaylet::UnpinObject { .. }) => 13,
        Msg::Transfer(Transfer::ReadObject { .. }) => 14,
        Msg::ToRaylet(ToRaylet::Shutdown) => 15,
        Msg::FromRaylet(FromRaylet::LeaseGranted { .. }) => 16,
        Msg::FromRaylet(FromRaylet::LeaseFailed { .. }) => 17,
        Msg::FromRaylet(FromRaylet::LeaseSpillback { .. }) => 18,
        Msg::FromRaylet(FromRaylet::ObjectPulled { .. }) => 19,
        Msg::Transfer(Transfer::ObjectBytes { .. }) => 20,
        Msg::FromRaylet(FromRaylet::ObjectCreated { .. }) => 21,
        Msg::FromRaylet(FromRaylet::ObjectsPinned { .. }) => 22,
        Msg::FromRaylet(FromRaylet::NodeDied { .. }) => 23,
        Msg::ToRaylet(ToRaylet::GetStoreStats { .. }) => 24,
        Msg::FromRaylet(FromRaylet::StoreStats { .. }) => 25,
        Msg::Peer(PeerMsg::Hello { .. }) => 26,
        Msg::Peer(PeerMsg::PushTask(..)) => 27,
        Msg::Peer(PeerMsg::CancelTask { .. }) => 28,
        Msg::Peer(PeerMsg::CancelObject { .. }) => 29,
        Msg::Peer(PeerMsg::FreeObject { .. }) => 30,
        Msg::Peer(PeerMsg::TaskDone { .. }) => 31,
        Msg::Peer(PeerMsg::ObjectLost { .. }) => 32,
        Msg::Peer(PeerMsg::TasksReturned { .. }) => 33,
        Msg::Peer(PeerMsg::WorkerUnblocked) => 34,
        Msg::Peer(PeerMsg::GetObject { .. }) => 35,
        Msg::Peer(PeerMsg::ObjectReady { .. }) => 36,
        Msg::Peer(PeerMsg::AddLocation { .. }) => 37,
        Msg::Peer(PeerMsg::RemoveLocation { .. }) => 38,
        Msg::Peer(PeerMsg::AddBorrow { .. }) => 39,
        Msg::Peer(PeerMsg::BorrowAdded { .. }) => 40,
        Msg::Peer(PeerMsg::RemoveBorrow { .. }) => 41,
        Msg::ToGcs(ToGcs::RegisterNode { .. }) => 42,
        Msg::FromGcs(FromGcs::NodeRegistered { .. }) => 43,
        Msg::ToGcs(ToGcs::ReportResources { .. }) => 44,
        Msg::ToGcs(ToGcs::StopCluster) => 45,
        Msg::FromGcs(FromGcs::ClusterView { .. }) => 46,
        Msg::ToGcs(ToGcs::GetNodes { .. }) => 47,
        Msg::FromGcs(FromGcs::Nodes { .. }) => 48,
        Msg::ToGcs(ToGcs::RegisterActor { .. }) => 49,
        Msg::FromGcs(FromGcs::ActorRegistered { .. }) => 50,
        Msg::ToGcs(ToGcs::ListNamedActors { .. }) => 51,
        Msg::FromGcs(FromGcs::NamedActors { .. }) => 52,
        Msg::ToGcs(ToGcs::LookupActor { .. }) => 53,
        Msg::FromGcs(FromGcs::ActorLookedUp { .. }) => 54,
        Msg::ToGcs(ToGcs::KillActor { .. }) => 55,
        Msg::ToGcs(ToGcs::ExitActor { .. }) => 56,
        Msg::FromGcs(FromGcs::ActorKilled { .. }) => 57,
        Msg::ToGcs(ToGcs::ActorOutOfScope { .. }) => 58,
        Msg::ToGcs(ToGcs::OwnerGone { .. }) => 59,
        Msg::Peer(PeerMsg::CreateActor { .. }) => 60,
        Msg::Peer(PeerMsg::ActorCreated { .. }) => 61,
        Msg::Peer(PeerMsg::StageDeviceObject { .. }) => 62,
        Msg::Peer(PeerMsg::DeviceObjectStaged { .. }) => 63,
        Msg::ToRaylet(ToRaylet::Gcs(_)) => 64,
        Msg::FromRaylet(FromRaylet::Gcs(_)) => 65,
        Msg::FromGcs(FromGcs::NodeLost { .. }) => 66,
        Msg::FromRaylet(FromRaylet::GcsRefused { .. }) => 67,
    }
}

#[test]
fn every_message_variant_has_a_fuzz_seed() {
    let mut seen = [false; VARIANTS];
    for m in messages() {
        seen[variant(&m)] = true;
    }
    let missing: Vec<usize> = (0..VARIANTS).filter(|i| !seen[*i]).collect();
    assert!(
        missing.is_empty(),
        "message variants without a seed in messages(): {missing:?}"
    );
}
