//! A connection over real socket pairs: frames and their bounds, sends
//! that never block (kept, deferred, held), a peer that stops reading,
//! readers that expect input soon, replies to messages read together.

use super::super::read::*;
use super::*;
use crate::protocol::{FromGcs, Payload, PeerMsg, ToRaylet};
use std::io::{BufReader, Read};
use std::os::unix::net::UnixStream;

/// A connection thread told to expect input soon spins for it first,
/// then blocks as before: input within the spin and input long after
/// both arrive, and a read timeout still ends a wait.
#[test]
fn a_reader_expecting_input_gets_it_early_or_late() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = super::super::stream::Waiting(Stream::Unix(a), None);
        let mut got = Vec::new();
        for _ in 0..2 {
            super::super::stream::expect_input_soon();
            let mut one = [0u8; 4];
            r.read_exact(&mut one).unwrap();
            got.push(one);
        }
        r.0.set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        super::super::stream::expect_input_soon();
        let timed_out = r.read(&mut [0u8; 4]).unwrap_err().kind();
        (got, timed_out)
    });
    b.write_all(b"soon").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    b.write_all(b"late").unwrap();
    let (got, timed_out) = reader.join().unwrap();
    assert_eq!(got, vec![*b"soon", *b"late"]);
    assert_eq!(timed_out, std::io::ErrorKind::WouldBlock);
}

/// A reply expected on a dialed connection ([`Conn::expect_reply`]) is
/// what its reader thread waits for awake: the reader takes the flag
/// (it then spins before it blocks) and the reply, early or late,
/// arrives all the same.
#[test]
fn the_reader_of_a_dialed_connection_takes_an_expected_reply() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let stream = Stream::Unix(a);
    let conn = std::sync::Arc::new(Conn::new(&stream).unwrap());
    let dialed = Dialed { conn, stream };
    let (tx, rx) = std::sync::mpsc::channel();
    let conn = dialed
        .serve("test-expect", move |m| drop(tx.send(m)), || {})
        .unwrap();
    for late in [false, true] {
        conn.expect_reply();
        if late {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        b.write_all(&encode_frame(&ToRaylet::Blocked).unwrap())
            .unwrap();
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert!(matches!(got, Msg::ToRaylet(ToRaylet::Blocked)), "{got:?}");
        // Taken at the reader's next read at the latest (a reader
        // blocked already when the flag is set sees it only then).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while conn.expect.load(std::sync::atomic::Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < until,
                "the reader never took the flag"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// A frame encoded once reads back as the message, whoever it is sent
/// to (the GCS's shared whole-view answer).
/// A small message, told apart by its `version`.
fn view(version: u64) -> FromGcs {
    FromGcs::ClusterView {
        version,
        joined: Vec::new(),
        changed: Vec::new(),
        candidates: None,
    }
}

/// Reads the next frame from `r`, which must be [`view`]`(version)`.
fn reads_view(r: &mut UnixStream, version: u64) {
    let got = read_frame(r, &mut Vec::new()).unwrap();
    assert!(
        matches!(&got, Some(Msg::FromGcs(FromGcs::ClusterView { version: v, .. })) if *v == version),
        "{got:?}"
    );
}

#[test]
fn an_encoded_frame_reads_back_as_its_message() {
    let frame = encode_frame(&view(7)).unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    let conn = std::sync::Arc::new(Conn::new(&Stream::Unix(a)).unwrap());
    conn.post_frame(&frame).unwrap();
    conn.post_frame(&frame).unwrap();
    for _ in 0..2 {
        reads_view(&mut b, 7);
    }
}

/// A message larger than a frame is refused as its encoding passes the
/// bound (none of it copied or sent: the huge payload's zeroed pages are
/// never touched), and the connection goes on: what follows reads back
/// whole. Its length could otherwise wrap the u32 prefix past 4 GiB.
#[test]
fn a_message_larger_than_a_frame_is_refused_and_nothing_is_sent() {
    let huge = PeerMsg::TaskDone {
        task: crate::ids::TaskId {
            owner: crate::ids::WorkerId::new(0, 1),
            seq: 1,
        },
        returns: vec![Payload::Inline(vec![0u8; MAX_FRAME + 1])],
        app_error: false,
        exiting: false,
        lost_args: Vec::new(),
    };
    let (a, b) = UnixStream::pair().unwrap();
    let conn = std::sync::Arc::new(Conn::new(&Stream::Unix(a)).unwrap());
    for e in [
        conn.send(&huge).unwrap_err(),
        conn.try_send(&huge).unwrap_err(),
        encode_frame(&huge).unwrap_err(),
    ] {
        assert!(e.message().contains("the most one frame carries"), "{e}");
    }
    conn.send(&view(9)).unwrap();
    let mut r = b;
    reads_view(&mut r, 9);
}

/// One frame larger than the outbox's bound is kept whole, deferred or
/// kept by a send that never blocks (a push of a few hundred MB closed the
/// connection); more on top of a backlog past the bound counts as a peer
/// not reading, and a closed connection keeps nothing more.
#[test]
fn one_frame_past_the_outbox_bound_is_kept() {
    // Past the bound by more than the socket takes in.
    let big = vec![0u8; MAX_OUTBOX + (8 << 20)];
    let (a, _b) = UnixStream::pair().unwrap();
    let conn = Conn::new(&Stream::Unix(a)).unwrap();
    assert!(!conn.defer(&big).unwrap());
    // A send finding it deferred writes first: the peer just has not read
    // yet, and nothing says it stopped.
    assert!(!conn.try_send_frame(&[0u8; 16]).unwrap(), "kept behind it");
    let e = conn.try_send_frame(&[0u8; 16]).unwrap_err();
    assert!(e.message().contains("stopped reading"), "{e}");
    assert!(conn.defer(&[0u8; 16]).is_err(), "closed: nothing more kept");
    let (a, _b) = UnixStream::pair().unwrap();
    let conn = Conn::new(&Stream::Unix(a)).unwrap();
    assert!(!conn.defer(&big).unwrap());
    let e = conn.defer(&[0u8; 16]).unwrap_err();
    assert!(e.message().contains("stopped reading"), "{e}");
}

/// `n` requests written at once (then end of input) to a reader's
/// socket, and a connection for its replies: the reader's side, the
/// replies' connection, and its peer (with its descriptor, to see what
/// is waiting there).
fn requests_read_together(
    n: u64,
) -> (
    UnixStream,
    std::sync::Arc<Conn>,
    UnixStream,
    std::os::fd::RawFd,
) {
    use std::os::fd::AsRawFd;
    let (input, mut feed) = UnixStream::pair().unwrap();
    let (out, peer) = UnixStream::pair().unwrap();
    let peer_fd = peer.as_raw_fd();
    let replies = std::sync::Arc::new(Conn::new(&Stream::Unix(out)).unwrap());
    let mut frames = Vec::new();
    for offset in 0..n {
        frames.extend(
            encode_frame(&ToRaylet::FreeObjects {
                offsets: vec![offset],
            })
            .unwrap(),
        );
    }
    feed.write_all(&frames).unwrap();
    (input, replies, peer, peer_fd)
}

/// Replies a handler sends while more messages it read wait to be
/// handled are held back, then go out together, in order, before the
/// last message read is handled (whose handler may block); the reply
/// to that one goes out at once.
#[test]
fn replies_to_messages_read_together_go_out_together() {
    // Three requests in one write: read at once.
    let (input, replies, peer, peer_fd) = requests_read_together(3);
    let mut seen = Vec::new();
    read_loop(Stream::Unix(input), |m| {
        // What the peer could read when this message came in.
        seen.push(bytes_waiting(peer_fd));
        send_batched(&replies, &m).unwrap();
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![false, false, true],
        "held while more was read, out before the last is handled"
    );
    let mut r = BufReader::new(peer);
    for offset in 0..3u64 {
        let got = read_frame(&mut r, &mut Vec::new()).unwrap();
        assert!(
            matches!(&got, Some(Msg::ToRaylet(ToRaylet::FreeObjects { offsets })) if offsets == &vec![offset]),
            "{got:?}"
        );
    }
    // Outside a batch: sent at once.
    send_batched(&replies, &ToRaylet::Blocked).unwrap();
    let got = read_frame(&mut r, &mut Vec::new()).unwrap();
    assert!(
        matches!(got, Some(Msg::ToRaylet(ToRaylet::Blocked))),
        "{got:?}"
    );
}

/// A handler about to connect somewhere (which may wait) writes what
/// its thread held back first, even with more read to handle.
#[test]
fn held_sends_go_out_before_a_handler_connects() {
    let (input, replies, _peer, peer_fd) = requests_read_together(2);
    let nowhere = Endpoint::Unix(
        std::env::temp_dir().join(format!("rustray-test-nowhere-{}", std::process::id())),
    );
    let mut seen = Vec::new();
    let mut first = true;
    read_loop(Stream::Unix(input), |m| {
        if std::mem::replace(&mut first, false) {
            send_batched(&replies, &m).unwrap();
            let held = bytes_waiting(peer_fd);
            // Fails (nobody listens there), but only after the flush.
            assert!(nowhere.connect(&Secret::random()).is_err());
            seen.push((held, bytes_waiting(peer_fd)));
        }
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![(false, true)],
        "held, then out before the connect"
    );
}

/// Only a whole frame already read counts as more to handle: part of
/// one means the reader must wait for the peer.
#[test]
fn only_a_whole_frame_counts_as_more_input() {
    let f = encode_frame(&ToRaylet::Blocked).unwrap();
    assert!(whole_frame(&f));
    assert!(!whole_frame(&f[..f.len() - 1]));
    assert!(!whole_frame(&f[..3]));
    assert!(!whole_frame(&[]));
    let mut two = f.clone();
    two.extend_from_slice(&f[..2]);
    assert!(whole_frame(&two), "the first of them is whole");
}

#[test]
fn a_peer_that_stops_reading_is_disconnected_not_waited_for() {
    let (a, b) = UnixStream::pair().unwrap();
    let (a, b) = (Stream::Unix(a), Stream::Unix(b));
    let conn =
        std::sync::Arc::new(Conn::with_send_timeout(&a, Duration::from_millis(200)).unwrap());
    let big = ToRaylet::FreeObjects {
        offsets: (0..50_000).collect(),
    };
    // b never reads: the socket buffer fills, then a send times out
    // (on a thread, so that a send that blocks for good fails the test
    // rather than hanging it).
    let (tx, rx) = std::sync::mpsc::channel();
    let c = conn.clone();
    std::thread::spawn(move || {
        let mut sent = 0;
        let err = loop {
            match c.send(&big) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        let _ = tx.send((sent, err));
    });
    let (sent, err) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a send to a peer that never reads gave up");
    assert!(sent >= 1, "{err}");
    // Closed: the reader gets what was sent whole, then the end.
    let mut r = BufReader::new(b);
    let mut body = Vec::new();
    let mut whole = 0;
    while let Ok(Some(_)) = read_frame(&mut r, &mut body) {
        whole += 1;
    }
    assert!(whole >= 1 && whole <= sent, "{whole} of {sent}");
    assert!(
        conn.send(&ToRaylet::Blocked).is_err(),
        "sends after the close fail"
    );
}

/// A flush that times out with part of the kept bytes written ends the
/// connection and keeps nothing: written again from their start, those
/// bytes would break the peer's framing. The peer reads whole frames,
/// then the end.
#[test]
fn a_failed_flush_ends_the_connection_and_keeps_nothing() {
    let (a, b) = UnixStream::pair().unwrap();
    let (a, b) = (Stream::Unix(a), Stream::Unix(b));
    let conn = Conn::with_send_timeout(&a, Duration::from_millis(200)).unwrap();
    let big = ToRaylet::FreeObjects {
        offsets: (0..50_000).collect(),
    };
    // b does not read: sends that do not block fill the socket, then
    // are kept.
    let mut kept = 0;
    for _ in 0..64 {
        if !conn.try_send(&big).unwrap() {
            kept += 1;
        }
    }
    assert!(kept > 0 && conn.pending());
    assert!(
        conn.flush().is_err(),
        "the peer reads nothing: it times out"
    );
    assert!(!conn.pending(), "nothing kept to write again");
    let mut r = BufReader::new(b);
    let mut body = Vec::new();
    let mut whole = 0;
    while let Ok(Some(_)) = read_frame(&mut r, &mut body) {
        whole += 1;
    }
    assert!(whole >= 1, "whole frames, then the end");
    assert!(conn.flush().is_ok(), "nothing left to write");
}

#[test]
fn post_never_blocks_and_delivers_everything_in_order() {
    let (a, b) = UnixStream::pair().unwrap();
    let (a, b) = (Stream::Unix(a), Stream::Unix(b));
    let conn = std::sync::Arc::new(Conn::new(&a).unwrap());
    // Far more than the socket buffer holds, posted while nobody reads:
    // every post returns at once.
    let t0 = std::time::Instant::now();
    for i in 0..400u64 {
        conn.post(&ToRaylet::FreeObjects {
            offsets: vec![i; 1000],
        })
        .unwrap();
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Then read: all of it, in order.
    let mut r = BufReader::new(b);
    let mut body = Vec::new();
    for i in 0..400u64 {
        match read_frame(&mut r, &mut body).unwrap() {
            Some(Msg::ToRaylet(ToRaylet::FreeObjects { offsets })) => assert_eq!(offsets[0], i),
            other => panic!("frame {i}: {other:?}"),
        }
    }
}

#[test]
fn try_send_never_blocks_and_keeps_order() {
    let (a, b) = UnixStream::pair().unwrap();
    let (a, b) = (Stream::Unix(a), Stream::Unix(b));
    let conn = Conn::new(&a).unwrap();
    // Nobody reads: the socket fills, try_send keeps the rest instead of
    // blocking.
    let big = ToRaylet::FreeObjects {
        offsets: (0..4096).collect(),
    };
    let mut sent = 0u64;
    while conn.try_send(&big).unwrap() {
        sent += 1;
        assert!(sent < 100_000, "the socket never filled");
    }
    // A later send must come after what was kept.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        read_loop(b, |m| {
            got.push(matches!(m, Msg::ToRaylet(ToRaylet::Blocked)))
        })
        .unwrap();
        got
    });
    conn.flush().unwrap();
    conn.send(&ToRaylet::Blocked).unwrap();
    conn.close();
    drop(a);
    let got = reader.join().unwrap();
    assert_eq!(got.len() as u64, sent + 2, "every frame arrives whole");
    assert_eq!(got.iter().filter(|b| **b).count(), 1);
    assert!(got[got.len() - 1], "the later frame came last");
}

/// Frames held back (another thread had the writer, or a batch held
/// them) go out with the next non-blocking send when the socket has
/// room, in order: they are no sign of a full socket.
#[test]
fn held_frames_go_out_with_the_next_try_send() {
    let (a, b) = UnixStream::pair().unwrap();
    let (a, b) = (Stream::Unix(a), Stream::Unix(b));
    let conn = std::sync::Arc::new(Conn::new(&a).unwrap());
    conn.hold(&ToRaylet::Blocked).unwrap();
    assert!(
        conn.try_send(&ToRaylet::Unblocked).unwrap(),
        "written at once, nothing kept"
    );
    conn.hold(&ToRaylet::Blocked).unwrap();
    conn.post_flush().unwrap();
    assert!(!conn.pending(), "post_flush wrote what was held");
    assert_eq!(
        closed_and_read(&conn, a, b),
        vec![
            "ToRaylet(Blocked)",
            "ToRaylet(Unblocked)",
            "ToRaylet(Blocked)"
        ]
    );
}

/// Closes `conn` (sending on `a`), then reads what `b` got to its
/// end, each message as its debug text.
fn closed_and_read(conn: &Conn, a: Stream, b: Stream) -> Vec<String> {
    conn.close();
    drop(a);
    let mut got = Vec::new();
    read_loop(b, |m| got.push(format!("{m:?}"))).unwrap();
    got
}

#[test]
fn frames_roundtrip_and_eof_ends_the_reader() {
    let (a, b) = UnixStream::pair().unwrap();
    let (a, b) = (Stream::Unix(a), Stream::Unix(b));
    let conn = Conn::new(&a).unwrap();
    conn.send(&ToRaylet::Blocked).unwrap();
    conn.send(&ToRaylet::FreeObjects {
        offsets: vec![1, 2, 3],
    })
    .unwrap();
    assert_eq!(
        closed_and_read(&conn, a, b),
        vec![
            "ToRaylet(Blocked)",
            "ToRaylet(FreeObjects { offsets: [1, 2, 3] })"
        ]
    );
}

#[test]
fn oversized_or_garbage_frames_are_errors() {
    let (mut a, b) = UnixStream::pair().unwrap();
    a.write_all(&u32::MAX.to_le_bytes()).unwrap();
    drop(a);
    assert!(read_loop(Stream::Unix(b), |_| {}).is_err());
    let (mut a, b) = UnixStream::pair().unwrap();
    a.write_all(&3u32.to_le_bytes()).unwrap();
    a.write_all(&[0xff, 0xff, 0xff]).unwrap();
    drop(a);
    assert!(read_loop(Stream::Unix(b), |_| {}).is_err());
}
