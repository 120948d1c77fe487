//! Fuzzing, on stable Rust, of every decoder of bytes that come from outside
//! the process: protocol frames (length prefix and message), object blobs,
//! the session string of rendezvous files and `RUSTRAY_SESSION`, a
//! `ResourceSet` on its own, and the Slurm environment.
//!
//! cargo-fuzz needs a nightly compiler, so this is a plain test with its own
//! mutator: each input is a valid seed mutated (bit flips, truncation,
//! inflated length fields, spliced seeds, inserted and deleted runs) or
//! random bytes. A decoder passes when no input panics and no input makes
//! it hold more memory than [`bound`] allows for the bytes it was given; a
//! counting global allocator (test builds only) measures the peak.
//!
//! `make test` runs [`DEFAULT_INPUTS`] inputs per decoder;
//! `make fuzz` runs ten million (`RUSTRAY_FUZZ_INPUTS`). The seed of the
//! random stream is printed, and `RUSTRAY_FUZZ_SEED` replays one.

pub(crate) mod seeds;
use seeds::{messages, node, shape, wid};

use crate::codec;
use crate::error::{Error, ErrorKind};
use crate::ids::{ActorId, LeaseId, ObjectId, TaskId, WorkerId};
use crate::protocol::{FromGcs, FromRaylet, PeerMsg, ToGcs, ToRaylet, Transfer};
use crate::scheduler::{ResourceSet, Spill};
use crate::session::{Config, Session};
use crate::transport::{
    self, ActorInfo, ActorLookup, ActorSpec, ActorState, Msg, NamedActor, NodeInfo, Payload,
    ResourceReport, TaskSpec,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

/// Inputs per decoder in `make test`.
const DEFAULT_INPUTS: u64 = 200_000;

/// Memory a decode of `len` bytes may hold at its peak: what its length
/// fields may claim ([`codec::decode_limit`]), plus the frame buffer's own
/// bytes and serde's cautious preallocation of sequences (1 MiB each, a few
/// levels deep).
fn bound(len: usize) -> usize {
    codec::decode_limit(len) + 2 * len + (4 << 20)
}

// ---- the counting allocator --------------------------------------------

/// The system allocator, counting the bytes the current thread holds while
/// a measurement is armed.
pub(crate) struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // try_with: never panic in the allocator, even as the thread ends.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counting touches only const-initialised thread-locals, which allocate
// nothing.
unsafe impl GlobalAlloc for Counting {
    // SAFETY: GlobalAlloc's contract binds the caller; it is passed on
    // to System unchanged.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    // SAFETY: GlobalAlloc's contract binds the caller; it is passed on
    // to System unchanged.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    // SAFETY: GlobalAlloc's contract binds the caller; it is passed on
    // to System unchanged.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    // SAFETY: GlobalAlloc's contract binds the caller; it is passed on
    // to System unchanged.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f`, returning the peak of the bytes this thread held during it.
pub(crate) fn peak_of(f: impl FnOnce()) -> usize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    PEAK.with(|p| p.get()).max(0) as usize
}

// ---- the mutator --------------------------------------------------------

/// splitmix64: small, fast, and the same stream for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Lengths a hostile or corrupted field might claim.
const INFLATED: [u64; 6] = [
    u64::MAX,
    1 << 40,
    1 << 32,
    u32::MAX as u64,
    1 << 30,
    (1 << 20) + 1,
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(16) == 0 {
        let n = rng.below(300);
        return (0..n).map(|_| rng.next() as u8).collect();
    }
    let mut b = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            0 | 1 => {
                for _ in 0..1 + rng.below(4) {
                    if !b.is_empty() {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                }
            }
            2 => b.truncate(rng.below(b.len() + 1)),
            3 => {
                // An inflated length: a varint tag for a u64 (or u32) and a
                // huge value, over whatever stood at a random place.
                let at = rng.below(b.len() + 1);
                let v = INFLATED[rng.below(INFLATED.len())];
                let mut field = if v > u32::MAX as u64 {
                    let mut f = vec![253u8];
                    f.extend_from_slice(&v.to_le_bytes());
                    f
                } else {
                    let mut f = vec![252u8];
                    f.extend_from_slice(&(v as u32).to_le_bytes());
                    f
                };
                if rng.below(2) == 0 {
                    // Raw little-endian, as in a frame's length prefix.
                    field = v.to_le_bytes()[..4 + 4 * rng.below(2)].to_vec();
                }
                let end = (at + field.len()).min(b.len());
                b.splice(at..end, field);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(b.len() + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            5 => {
                let at = rng.below(b.len() + 1);
                let n = 1 + rng.below(16);
                let run: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, run);
            }
            _ => {
                if !b.is_empty() {
                    let at = rng.below(b.len());
                    let end = (at + 1 + rng.below(16)).min(b.len());
                    b.drain(at..end);
                }
            }
        }
    }
    b
}

// ---- the decoders and their seeds ---------------------------------------

struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    decode: fn(&[u8]),
}

/// A message as it travels: length prefix and body.
fn frame(m: &Msg) -> Vec<u8> {
    let body = codec::encode(m).expect("encodes");
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

fn targets() -> Vec<Target> {
    let msgs = messages();
    let mut blobs: Vec<Vec<u8>> = vec![
        codec::encode_value(&vec![7u8; 300])
            .expect("encodes")
            .into_vec(),
        codec::encode_value(&vec![1.5f64; 40])
            .expect("encodes")
            .into_vec(),
        codec::encode_value(&String::from("a string value"))
            .expect("encodes")
            .into_vec(),
        codec::encode_value(&(3u64, String::from("pair"), vec![1u32, 2, 3]))
            .expect("encodes")
            .into_vec(),
        codec::encode_error(&Error::new(ErrorKind::ObjectLost, "lost")),
    ];
    blobs.push(
        codec::encode_value(&vec![String::from("many"); 50])
            .expect("encodes")
            .into_vec(),
    );
    let session = {
        let mut cfg = Config::new().num_cpus(4.0);
        cfg = cfg.resource("custom", 2.0);
        let mut s = Session::new_cluster(cfg, true).expect("a session");
        s.node = "node-0".into();
        s.args = vec!["--flag".into(), "value".into()];
        s.to_env().expect("encodes").into_bytes()
    };
    vec![
        Target {
            name: "frame",
            seeds: msgs.iter().map(frame).collect(),
            decode: |b| {
                let mut body = Vec::new();
                let mut r = std::io::Cursor::new(b);
                while let Ok(Some(_)) = transport::read_frame(&mut r, &mut body) {}
            },
        },
        Target {
            name: "message",
            seeds: msgs
                .iter()
                .map(|m| codec::encode(m).expect("encodes"))
                .collect(),
            decode: |b| {
                let _ = codec::decode::<Msg>(b, "message");
            },
        },
        Target {
            name: "blob",
            seeds: blobs,
            decode: |b| {
                let _ = codec::decode_value::<Vec<u8>>(b);
                let _ = codec::decode_value::<Vec<f64>>(b);
                let _ = codec::decode_value::<String>(b);
                let _ = codec::decode_value::<(u64, String, Vec<u32>)>(b);
                let _ = codec::decode_value::<Vec<String>>(b);
                if let Ok(blob) = codec::parse(b) {
                    let _ = blob.error();
                }
            },
        },
        Target {
            name: "resource set",
            seeds: vec![codec::encode(&shape()).expect("encodes")],
            decode: |b| {
                let _ = codec::decode::<ResourceSet>(b, "resources");
            },
        },
        Target {
            name: "session",
            seeds: vec![session],
            decode: |b| {
                // Hex text in a file or a variable; `@` would name a file.
                let text = String::from_utf8_lossy(b);
                if !text.starts_with('@') {
                    let _ = Session::from_env_str(&text);
                }
            },
        },
        Target {
            name: "slurm environment",
            seeds: vec![b"4242\x001\x000\x003\x00node[1-3]\x008\x002,3\x00".to_vec()],
            decode: |b| {
                let vals: Vec<String> = b
                    .split(|c| *c == 0)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                let names = [
                    "SLURM_JOB_ID",
                    "SLURM_PROCID",
                    "SLURM_NODEID",
                    "SLURM_NNODES",
                    "SLURM_JOB_NODELIST",
                    "SLURM_NTASKS",
                    "CUDA_VISIBLE_DEVICES",
                ];
                let _ = crate::slurm::SlurmEnv::detect_with(|name| {
                    names
                        .iter()
                        .position(|n| *n == name)
                        .and_then(|i| vals.get(i).cloned())
                });
            },
        },
    ]
}

fn run(t: &Target, inputs: u64, seed: u64) -> String {
    let mut rng = Rng(seed ^ t.name.len() as u64);
    let start = Instant::now();
    let mut max_peak = 0usize;
    for i in 0..inputs {
        let input = mutate(&mut rng, &t.seeds);
        let r = std::panic::catch_unwind(|| peak_of(|| (t.decode)(&input)));
        let shown: String = input.iter().take(64).map(|b| format!("{b:02x}")).collect();
        let Ok(peak) = r else {
            panic!("{}: input {i} (seed {seed:#x}) panicked: {shown}", t.name);
        };
        assert!(
            peak <= bound(input.len()),
            "{}: input {i} (seed {seed:#x}) of {} bytes held {peak} bytes: {shown}",
            t.name,
            input.len()
        );
        max_peak = max_peak.max(peak);
    }
    format!(
        "fuzz {}: {inputs} inputs, no panic, peak {max_peak} bytes, {:.1}s",
        t.name,
        start.elapsed().as_secs_f64()
    )
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn fuzz_decoders() {
    let inputs = env_u64("RUSTRAY_FUZZ_INPUTS").unwrap_or(DEFAULT_INPUTS);
    let seed = env_u64("RUSTRAY_FUZZ_SEED").unwrap_or_else(crate::ids::random_u64);
    println!("fuzz seed {seed:#x} (RUSTRAY_FUZZ_SEED replays it)");
    let targets = targets();
    let reports: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| s.spawn(move || run(t, inputs, seed)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    });
    for r in reports {
        println!("{r}");
    }
}

/// The bounds never refuse a valid message: every seed, and messages dense
/// in small numbers at every size (bincode's accounting claims each number
/// at its size in memory), decode back.
#[test]
fn every_valid_message_decodes() {
    let mut msgs = messages();
    for n in [10usize, 500, 4_000, 20_000, 100_000] {
        msgs.push(Msg::ToRaylet(ToRaylet::FreeObjects {
            offsets: vec![1; n],
        }));
        msgs.push(Msg::FromGcs(FromGcs::ClusterView {
            version: n as u64,
            joined: (0..(n / 100).max(1) as u16).map(node).collect(),
            changed: (0..(n / 50).max(1) as u16)
                .map(|i| crate::gcs::nodes::load_of(&node(i)))
                .collect(),
            candidates: Some(
                (0..(n / 200).max(1) as u16)
                    .map(|i| crate::gcs::nodes::load_of(&node(i)))
                    .collect(),
            ),
        }));
        msgs.push(Msg::Peer(PeerMsg::TasksReturned {
            tasks: vec![
                TaskId {
                    owner: wid(0),
                    seq: 0
                };
                n
            ],
        }));
    }
    for m in &msgs {
        let body = codec::encode(m).expect("encodes");
        let back = codec::decode::<Msg>(&body, "message");
        assert!(back.is_ok(), "{} bytes: {:?}", body.len(), back.err());
        let f = frame(m);
        let mut r = std::io::Cursor::new(&f);
        let mut buf = Vec::new();
        assert!(matches!(
            transport::read_frame(&mut r, &mut buf),
            Ok(Some(_))
        ));
    }
}

#[test]
fn the_mutator_inflates_truncates_and_splices() {
    let seeds = vec![vec![1u8; 32], vec![2u8; 32]];
    let mut rng = Rng(1);
    let outs: Vec<Vec<u8>> = (0..2000).map(|_| mutate(&mut rng, &seeds)).collect();
    assert!(outs.iter().any(|o| o.len() < 32), "truncated");
    assert!(
        outs.iter().any(|o| o.windows(2).any(|w| w == [1, 2])),
        "spliced"
    );
    assert!(outs.iter().any(|o| o.contains(&253)), "inflated");
    // The allocator counts: a 1 MiB vector held is seen.
    let p = peak_of(|| drop(std::hint::black_box(vec![0u8; 1 << 20])));
    assert!(p >= 1 << 20, "{p}");
}
