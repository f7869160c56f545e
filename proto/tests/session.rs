//! Session behaviour over a direct in-memory pipe (no simulator): negotiation, segmentation
//! and scheduling, keep-alive, close, API misuse and hostile bytes.

use core::time::Duration;

use bytes::Bytes;
use clearskies_proto::session::{
    CloseReason, Event, Priority, Session, SessionConfig, SessionState, Timeout,
};
use clearskies_proto::wire::{
    CloseCode, ExtensionMessage, FrameDecoder, IDLE_TIMEOUT_FACTOR, MAX_FRAME_PAYLOAD,
    MAX_KEEPALIVE, MAX_MESSAGE_SIZE, MAX_REASON_LEN, MIN_KEEPALIVE, Message, Reassembler,
    SEND_QUEUE_LIMIT,
};
use clearskies_proto::{Error, Incompatibility, Misuse, ProtocolViolation, Timestamp};

const CHAT: &str = "com.example.chat";

fn config(name: &str, keepalive_secs: u64) -> SessionConfig {
    SessionConfig {
        device_name: name.into(),
        keepalive: Duration::from_secs(keepalive_secs),
        extensions: vec![CHAT.into(), "org.clearskies.test".into()],
        ..SessionConfig::default()
    }
}

fn ext(payload: impl Into<Bytes>) -> Message {
    Message::Extension(ExtensionMessage {
        name: CHAT.into(),
        payload: payload.into(),
    })
}

/// Moves every byte each side has to the other until both are quiet.
fn exchange(a: &mut Session, b: &mut Session, now: Timestamp) {
    loop {
        let mut moved = false;
        while let Some(bytes) = a.poll_transmit(now) {
            b.handle_bytes(now, &bytes);
            moved = true;
        }
        while let Some(bytes) = b.poll_transmit(now) {
            a.handle_bytes(now, &bytes);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn established(a_cfg: SessionConfig, b_cfg: SessionConfig) -> (Session, Session) {
    let now = Timestamp::ZERO;
    let mut a = Session::new(a_cfg, now).unwrap();
    let mut b = Session::new(b_cfg, now).unwrap();
    exchange(&mut a, &mut b, now);
    assert!(matches!(events(&mut a)[..], [Event::Established(_)]));
    assert!(matches!(events(&mut b)[..], [Event::Established(_)]));
    (a, b)
}

#[test]
fn negotiation_picks_highest_common_version_shared_extensions_and_longer_keepalive() {
    let phone = SessionConfig {
        protocol_versions: vec![1, 2, 3],
        extensions: vec![CHAT.into(), "com.example.phone-only".into()],
        ..config("phone", 3600)
    };
    let desktop = SessionConfig {
        protocol_versions: vec![2, 3, 4],
        extensions: vec!["org.clearskies.test".into(), CHAT.into()],
        ..config("desktop", 30)
    };
    let now = Timestamp::ZERO;
    let mut a = Session::new(phone, now).unwrap();
    let mut b = Session::new(desktop, now).unwrap();
    exchange(&mut a, &mut b, now);
    let [Event::Established(na)] = &events(&mut a)[..] else {
        panic!()
    };
    let [Event::Established(nb)] = &events(&mut b)[..] else {
        panic!()
    };
    assert_eq!(na.version, 3);
    assert_eq!(na.extensions, vec![CHAT.to_owned()]);
    assert_eq!(na.keepalive, Duration::from_secs(3600));
    assert_eq!(na.peer_name, "desktop");
    assert_eq!(nb.peer_name, "phone");
    assert_eq!(
        (nb.version, &nb.extensions, nb.keepalive),
        (na.version, &na.extensions, na.keepalive)
    );
}

#[test]
fn keepalive_requests_are_clamped() {
    let (a, _) = established(config("a", 1), config("b", 2));
    assert_eq!(a.negotiated().unwrap().keepalive, MIN_KEEPALIVE);
    let (a, _) = established(config("a", 10 * 86400), config("b", 2));
    assert_eq!(a.negotiated().unwrap().keepalive, MAX_KEEPALIVE);
}

#[test]
fn no_common_version_closes_both_sides_as_incompatible() {
    let now = Timestamp::ZERO;
    let mut a = Session::new(
        SessionConfig {
            protocol_versions: vec![1],
            ..config("a", 30)
        },
        now,
    )
    .unwrap();
    let mut b = Session::new(
        SessionConfig {
            protocol_versions: vec![2],
            ..config("b", 30)
        },
        now,
    )
    .unwrap();
    exchange(&mut a, &mut b, now);
    // b saw a's HELLO first and refused it; its CLOSE overtook its own unsent HELLO, so a
    // learns of the incompatibility from b's reason.
    let evs = events(&mut b);
    let [
        Event::Closed(CloseReason::Error(Error::Incompatible(Incompatibility::NoCommonVersion {
            ..
        }))),
    ] = &evs[..]
    else {
        panic!("{evs:?}")
    };
    let evs = events(&mut a);
    let [Event::Closed(CloseReason::Peer { code, reason })] = &evs[..] else {
        panic!("{evs:?}")
    };
    assert_eq!(*code, CloseCode::INCOMPATIBLE);
    assert!(
        reason.contains("no common protocol version (ours [2], theirs [1])"),
        "{reason}"
    );
    assert!(a.is_finished() && b.is_finished());
}

#[test]
fn messages_arrive_intact_across_segments() {
    let (mut a, mut b) = established(config("a", 30), config("b", 30));
    let big: Vec<u8> = (0..MAX_MESSAGE_SIZE - 64)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let small = b"hello".to_vec();
    a.send(ext(big.clone()), Priority::Bulk).unwrap();
    a.send(ext(small.clone()), Priority::Bulk).unwrap();
    exchange(&mut a, &mut b, Timestamp::ZERO);
    let evs = events(&mut b);
    let payloads: Vec<&[u8]> = evs
        .iter()
        .map(|e| match e {
            Event::Message(Message::Extension(m)) => &m.payload[..],
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(payloads, vec![&big[..], &small[..]]);
}

#[test]
fn control_message_overtakes_bulk_after_at_most_one_frame() {
    let (mut a, mut b) = established(config("a", 30), config("b", 30));
    let now = Timestamp::ZERO;
    a.send(ext(vec![1u8; 900_000]), Priority::Bulk).unwrap();
    // The transport takes one frame of the bulk message...
    let first = a.poll_transmit(now).unwrap();
    b.handle_bytes(now, &first);
    // ...then a control message is queued; it must be the very next frame.
    a.send(ext(&b"urgent"[..]), Priority::Control).unwrap();
    let next = a.poll_transmit(now).unwrap();
    b.handle_bytes(now, &next);
    let evs = events(&mut b);
    let [Event::Message(Message::Extension(m))] = &evs[..] else {
        panic!("{evs:?}")
    };
    assert_eq!(&m.payload[..], b"urgent");
    // The bulk message still completes afterwards.
    exchange(&mut a, &mut b, now);
    let evs = events(&mut b);
    let [Event::Message(Message::Extension(m))] = &evs[..] else {
        panic!("{evs:?}")
    };
    assert_eq!(m.payload.len(), 900_000);
}

#[test]
fn frames_never_exceed_the_limit() {
    let (mut a, _b) = established(config("a", 30), config("b", 30));
    a.send(ext(vec![0u8; 3 * MAX_FRAME_PAYLOAD + 5]), Priority::Bulk)
        .unwrap();
    let mut decoder = FrameDecoder::without_preface();
    let mut reassembler = Reassembler::new();
    let mut frames = 0;
    let mut complete = 0;
    while let Some(bytes) = a.poll_transmit(Timestamp::ZERO) {
        decoder.push(&bytes);
        while let Some(frame) = decoder.next_frame().unwrap() {
            assert!(frame.payload.len() <= MAX_FRAME_PAYLOAD);
            frames += 1;
            if reassembler.push(frame).unwrap().is_some() {
                complete += 1;
            }
        }
    }
    assert_eq!((frames, complete), (4, 1));
}

#[test]
fn send_refusals_leave_the_session_usable() {
    let now = Timestamp::ZERO;
    let mut a = Session::new(config("a", 30), now).unwrap();
    assert_eq!(
        a.send(ext(&b"x"[..]), Priority::Control),
        Err(Misuse::NotEstablished.into())
    );
    let mut b = Session::new(config("b", 30), now).unwrap();
    exchange(&mut a, &mut b, now);
    events(&mut a);
    events(&mut b);
    assert_eq!(
        a.send(Message::Ping, Priority::Control),
        Err(Misuse::ReservedMessage.into())
    );
    let other = Message::Extension(ExtensionMessage {
        name: "com.example.unknown".into(),
        payload: Bytes::new(),
    });
    assert_eq!(
        a.send(other, Priority::Control),
        Err(Misuse::ExtensionNotNegotiated {
            name: "com.example.unknown".into()
        }
        .into())
    );
    let err = a
        .send(ext(vec![0u8; MAX_MESSAGE_SIZE]), Priority::Bulk)
        .unwrap_err();
    assert_eq!(err.code(), "send-too-large");
    let mut queued = 0;
    let err = loop {
        match a.send(ext(vec![0u8; MAX_MESSAGE_SIZE / 2]), Priority::Bulk) {
            Ok(()) => queued += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), "send-queue-full");
    assert!(a.send_queue_len() <= SEND_QUEUE_LIMIT);
    assert!(queued >= 15);
    // Still established; the queue drains to the peer.
    assert_eq!(a.state(), SessionState::Established);
    exchange(&mut a, &mut b, now);
    assert_eq!(events(&mut b).len(), queued);
    a.close(now, CloseCode::NORMAL, "done");
    assert_eq!(
        a.send(ext(&b"x"[..]), Priority::Control),
        Err(Misuse::Closed.into())
    );
}

#[test]
fn bad_config_is_refused() {
    let bad = SessionConfig {
        extensions: vec!["NoDots".into()],
        ..config("a", 30)
    };
    assert_eq!(
        Session::new(bad, Timestamp::ZERO).unwrap_err().code(),
        "bad-config"
    );
    let long = SessionConfig {
        device_name: "x".repeat(65),
        ..config("a", 30)
    };
    assert_eq!(
        Session::new(long, Timestamp::ZERO).unwrap_err().code(),
        "bad-config"
    );
}

#[test]
fn orderly_close_reaches_the_peer_with_code_and_reason() {
    let (mut a, mut b) = established(config("a", 30), config("b", 30));
    let now = Timestamp::from_secs(1);
    a.send(ext(vec![0u8; 100_000]), Priority::Bulk).unwrap();
    let long_reason = "é".repeat(MAX_REASON_LEN); // 2 bytes each: must be cut on a boundary
    a.close(now, CloseCode::GOING_AWAY, &long_reason);
    let evs = events(&mut a);
    let [Event::Closed(CloseReason::Local { code, reason })] = &evs[..] else {
        panic!()
    };
    assert_eq!(*code, CloseCode::GOING_AWAY);
    assert_eq!(reason.len(), MAX_REASON_LEN);
    assert!(!a.is_finished(), "the CLOSE frame is still to be sent");
    exchange(&mut a, &mut b, now);
    assert!(a.is_finished());
    assert_eq!(a.poll_timeout(), None);
    let evs = events(&mut b);
    // The unsent bulk message was dropped; only the close arrives.
    let [Event::Closed(CloseReason::Peer { code, reason: r })] = &evs[..] else {
        panic!("{evs:?}")
    };
    assert_eq!((*code, r), (CloseCode::GOING_AWAY, reason));
    assert!(b.is_finished());
    // Closing again is harmless.
    a.close(now, CloseCode::NORMAL, "again");
    assert!(events(&mut a).is_empty());
}

#[test]
fn keepalive_pings_and_idle_timeout() {
    let (mut a, mut b) = established(config("a", 30), config("b", 30));
    let keepalive = Duration::from_secs(30);
    // Both sides exchange pings while time passes: nobody times out.
    let mut now = Timestamp::ZERO;
    for _ in 0..100 {
        let next = a.poll_timeout().unwrap().min(b.poll_timeout().unwrap());
        assert!(next > now);
        now = next;
        a.handle_timeout(now);
        b.handle_timeout(now);
        exchange(&mut a, &mut b, now);
    }
    assert!(now >= Timestamp::ZERO + keepalive * 90);
    assert_eq!(
        (a.state(), b.state()),
        (SessionState::Established, SessionState::Established)
    );
    assert!(
        a.stats().pings_sent >= 90 && a.stats().pings_sent <= 101,
        "{:?}",
        a.stats()
    );
    // Now b goes silent: a gives up after IDLE_TIMEOUT_FACTOR intervals without input.
    let silent_since = now;
    loop {
        let next = a.poll_timeout().unwrap();
        assert!(next > now);
        now = next;
        a.handle_timeout(now);
        while a.poll_transmit(now).is_some() {}
        if a.state() == SessionState::Closed {
            break;
        }
    }
    assert_eq!(now - silent_since, keepalive * IDLE_TIMEOUT_FACTOR);
    let evs = events(&mut a);
    assert_eq!(
        evs,
        vec![Event::Closed(CloseReason::TimedOut(Timeout::Idle))]
    );
}

#[test]
fn handshake_times_out_without_hello() {
    let mut a = Session::new(config("a", 30), Timestamp::ZERO).unwrap();
    let deadline = a.poll_timeout().unwrap();
    a.handle_timeout(deadline - Duration::from_micros(1));
    assert_eq!(a.state(), SessionState::Handshaking);
    a.handle_timeout(deadline);
    assert_eq!(
        events(&mut a),
        vec![Event::Closed(CloseReason::TimedOut(Timeout::Handshake))]
    );
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn time_going_backwards_is_clamped() {
    let (mut a, _b) = established(config("a", 30), config("b", 30));
    a.handle_timeout(Timestamp::from_secs(40));
    let deadline = a.poll_timeout().unwrap();
    // A driver passing an earlier `now` cannot move timers back or fire them early.
    a.handle_timeout(Timestamp::from_secs(1));
    assert_eq!(a.poll_timeout(), Some(deadline));
}

#[test]
fn garbage_closes_only_this_session_with_a_reason() {
    let (mut a, mut b) = established(config("a", 30), config("b", 30));
    let now = Timestamp::ZERO;
    // A frame header with a critical unknown kind.
    b.handle_bytes(now, &[0, 0, 0, 1, 0x03, 0, 0, 0, 0xff]);
    let evs = events(&mut b);
    assert_eq!(
        evs,
        vec![Event::Closed(CloseReason::Error(
            ProtocolViolation::UnknownFrameKind { kind: 3 }.into()
        ))]
    );
    // More bytes after the failure are ignored.
    b.handle_bytes(now, b"more garbage");
    assert!(events(&mut b).is_empty());
    // The peer learns why.
    exchange(&mut a, &mut b, now);
    let evs = events(&mut a);
    let [Event::Closed(CloseReason::Peer { code, reason })] = &evs[..] else {
        panic!("{evs:?}")
    };
    assert_eq!(*code, CloseCode::PROTOCOL_ERROR);
    assert!(
        reason.contains("unknown critical frame kind 0x03"),
        "{reason}"
    );
}

#[test]
fn transport_loss_is_reported_once() {
    let (mut a, _b) = established(config("a", 30), config("b", 30));
    a.handle_transport_closed(Timestamp::from_secs(1));
    a.handle_transport_closed(Timestamp::from_secs(2));
    assert_eq!(
        events(&mut a),
        vec![Event::Closed(CloseReason::TransportLost)]
    );
    assert!(a.is_finished());
    assert_eq!(a.poll_transmit(Timestamp::from_secs(2)), None);
}
