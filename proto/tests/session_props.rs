//! Property tests over random operation sequences on a pair of sessions: sends of every size
//! and priority, deliveries split at random points, time advancing, and hostile bytes.
//! `PROPTEST_CASES=10000 cargo test -p clearskies-proto --test session_props` for a long run.

use core::time::Duration;

use bytes::Bytes;
use clearskies_proto::Timestamp;
use clearskies_proto::session::{
    CloseReason, Event, Priority, Session, SessionConfig, SessionState,
};
use clearskies_proto::wire::{ExtensionMessage, Message};
use proptest::prelude::*;

const EXT: &str = "com.example.prop";

#[derive(Debug, Clone)]
enum Op {
    /// A sends a message of this size and priority, tagged with a sequence number.
    Send { size: usize, control: bool },
    /// Move up to this many bytes from A to B, in pieces of at most `piece`.
    Deliver { max: usize, piece: usize },
    /// Move everything B has for A.
    Reply,
    /// Advance time.
    Advance { millis: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..70_000, any::<bool>()).prop_map(|(size, control)| Op::Send { size, control }),
        (1usize..200_000, 1usize..20_000).prop_map(|(max, piece)| Op::Deliver { max, piece }),
        Just(Op::Reply),
        (0u64..12_000).prop_map(|millis| Op::Advance { millis }),
    ]
}

fn config() -> SessionConfig {
    SessionConfig {
        extensions: vec![EXT.into()],
        keepalive: Duration::from_secs(10),
        ..SessionConfig::default()
    }
}

fn payload(seq: u32, size: usize) -> Bytes {
    let mut v = seq.to_be_bytes().to_vec();
    v.resize(size.max(4), (seq % 251) as u8);
    Bytes::from(v)
}

proptest! {
    // 256 cases by default; PROPTEST_CASES overrides.
    #![proptest_config(ProptestConfig::default())]

    /// Whatever the interleaving, B receives every message A sent, each intact, control
    /// messages in send order and bulk messages in send order; no timer is ever left due.
    #[test]
    fn delivery_is_complete_ordered_and_intact(ops in proptest::collection::vec(op(), 1..60)) {
        let mut now = Timestamp::ZERO;
        let mut a = Session::new(config(), now).unwrap();
        let mut b = Session::new(config(), now).unwrap();
        let mut wire_ab: Vec<u8> = Vec::new();
        let (mut sent_control, mut sent_bulk) = (Vec::new(), Vec::new());
        let (mut got_control, mut got_bulk) = (Vec::new(), Vec::new());
        let mut seq = 0u32;
        let mut established = false;
        let check_events = |s: &mut Session, got_c: &mut Vec<u32>, got_b: &mut Vec<u32>, established: &mut bool| {
            while let Some(e) = s.poll_event() {
                match e {
                    Event::Established(_) => *established = true,
                    Event::Message(Message::Extension(m)) => {
                        let id = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                        // Control messages were sent with odd ids, bulk with even ones.
                        if id % 2 == 1 { got_c.push(id) } else { got_b.push(id) }
                        assert_eq!(m.payload, payload(id, m.payload.len()));
                    }
                    // Starved of input by the op sequence: a legitimate end, checked below.
                    Event::Closed(CloseReason::TimedOut(_)) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        // Handshake first, so sends are allowed.
        while let Some(x) = b.poll_transmit(now) { a.handle_bytes(now, &x); }
        while let Some(x) = a.poll_transmit(now) { b.handle_bytes(now, &x); }
        check_events(&mut a, &mut Vec::new(), &mut Vec::new(), &mut established);
        check_events(&mut b, &mut got_control, &mut got_bulk, &mut established);
        prop_assert!(established);
        for op in ops {
            match op {
                Op::Send { size, control } => {
                    seq += 1;
                    let id = if control { seq * 2 + 1 } else { seq * 2 };
                    let m = Message::Extension(ExtensionMessage { name: EXT.into(), payload: payload(id, size) });
                    let priority = if control { Priority::Control } else { Priority::Bulk };
                    a.send(m, priority).unwrap();
                    if control { sent_control.push(id) } else { sent_bulk.push(id) }
                }
                Op::Deliver { max, piece } => {
                    while wire_ab.len() < max {
                        match a.poll_transmit(now) { Some(x) => wire_ab.extend_from_slice(&x), None => break }
                    }
                    let n = max.min(wire_ab.len());
                    let chunk: Vec<u8> = wire_ab.drain(..n).collect();
                    for p in chunk.chunks(piece) { b.handle_bytes(now, p); }
                }
                Op::Reply => {
                    while let Some(x) = b.poll_transmit(now) { a.handle_bytes(now, &x); }
                }
                Op::Advance { millis } => {
                    now = now + Duration::from_millis(millis);
                    for s in [&mut a, &mut b] {
                        if s.poll_timeout().is_some_and(|t| t <= now) {
                            s.handle_timeout(now);
                            prop_assert!(s.poll_timeout().is_none_or(|t| t > now), "timer stuck");
                        }
                    }
                }
            }
            check_events(&mut b, &mut got_control, &mut got_bulk, &mut established);
            // A only ever sees B's pings and nothing else.
            while let Some(e) = a.poll_event() {
                // A session may legitimately time out if the test starves it of input.
                prop_assert!(matches!(e, Event::Closed(CloseReason::TimedOut(_))), "{e:?}");
            }
            if a.state() == SessionState::Closed || b.state() == SessionState::Closed {
                return Ok(());
            }
        }
        // Flush everything and compare.
        while let Some(x) = a.poll_transmit(now) { wire_ab.extend_from_slice(&x); }
        b.handle_bytes(now, &wire_ab);
        check_events(&mut b, &mut got_control, &mut got_bulk, &mut established);
        prop_assert_eq!(got_control, sent_control);
        prop_assert_eq!(got_bulk, sent_bulk);
    }

    /// Arbitrary bytes after a valid handshake: no panic, at most one Closed event and
    /// nothing after it, never a timer left due.
    #[test]
    fn hostile_bytes_after_handshake(junk in proptest::collection::vec(any::<u8>(), 0..4096),
                                     piece in 1usize..64, advance in 0u64..100_000) {
        let now = Timestamp::ZERO;
        let mut a = Session::new(config(), now).unwrap();
        let mut b = Session::new(config(), now).unwrap();
        while let Some(x) = a.poll_transmit(now) { b.handle_bytes(now, &x); }
        let mut closed = 0;
        for p in junk.chunks(piece) {
            b.handle_bytes(now, p);
            while let Some(e) = b.poll_event() {
                prop_assert_eq!(closed, 0, "event after Closed: {:?}", e);
                if matches!(e, Event::Closed(_)) { closed += 1; }
            }
        }
        let later = now + Duration::from_millis(advance);
        b.handle_timeout(later);
        prop_assert!(b.poll_timeout().is_none_or(|t| t > later));
        while b.poll_transmit(later).is_some() {}
    }
}
