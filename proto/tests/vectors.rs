//! The test vectors of `spec/vectors/`, loaded as the spec states them: if the code and the
//! spec disagree, this fails.

use bytes::Bytes;
use clearskies_proto::Timestamp;
use clearskies_proto::session::{CloseReason, Event, Session, SessionConfig, Timeout};
use clearskies_proto::wire::{
    FrameDecoder, FrameHeader, FrameKind, Message, Reassembler, frame::FLAG_FIN,
};
use serde_json::Value;

mod common;
use common::{cases, load, s, unhex};

#[test]
fn frame_vectors() {
    let doc = load("frames.json");
    let mut checked = 0;
    for case in cases(&doc) {
        let name = s(case, "name");
        let bytes = unhex(s(case, "hex"));
        let mut decoder = FrameDecoder::without_preface();
        decoder.push(&bytes);
        let result = decoder.next_frame();
        let expect = &case["expect"];
        if let Some(code) = expect["error"].as_str() {
            let err = result.expect_err(name);
            assert_eq!(err.code(), code, "{name}: {err}");
        } else {
            let frame = result
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .expect(name);
            let kind = match frame.header.kind {
                FrameKind::Message => "message",
                FrameKind::Segment => "segment",
                FrameKind::Ignorable(_) => "ignorable",
            };
            assert_eq!(kind, s(expect, "kind"), "{name}");
            assert_eq!(
                u64::from(frame.header.kind.to_byte()),
                expect["kind_byte"].as_u64().unwrap()
            );
            assert_eq!(
                frame.header.fin(),
                expect["fin"].as_bool().unwrap(),
                "{name}"
            );
            assert_eq!(
                u64::from(frame.header.stream),
                expect["stream"].as_u64().unwrap(),
                "{name}"
            );
            assert_eq!(
                frame.payload.to_vec(),
                unhex(s(expect, "payload")),
                "{name}"
            );
            assert_eq!(
                decoder.buffered(),
                0,
                "{name}: a vector holds exactly one frame"
            );
            let mut again = Vec::new();
            frame.header.encode(&mut again);
            again.extend_from_slice(&frame.payload);
            assert_eq!(again, bytes, "{name}: re-encoding differs");
            if frame.header.kind == FrameKind::Segment {
                let rebuilt = FrameHeader::segment(
                    frame.payload.len(),
                    frame.header.stream,
                    frame.header.flags & FLAG_FIN != 0,
                );
                assert_eq!(rebuilt, frame.header, "{name}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} frame vectors");
}

fn message_json(m: &Message) -> Value {
    match m {
        Message::Hello(h) => serde_json::json!({
            "type": "HELLO", "versions": h.versions, "extensions": h.extensions,
            "name": h.name, "software": h.software, "keepalive": h.keepalive,
        }),
        Message::Ping => serde_json::json!({"type": "PING"}),
        Message::Close(c) => {
            serde_json::json!({"type": "CLOSE", "code": c.code.0, "reason": c.reason})
        }
        Message::Extension(e) => serde_json::json!({
            "type": "EXTENSION", "name": e.name, "payload": hex::encode(&e.payload),
        }),
        other => panic!("no JSON form for {other:?}"),
    }
}

#[test]
fn message_vectors() {
    let doc = load("messages.json");
    let (mut decoded, mut canonical, mut ignored, mut errors) = (0, 0, 0, 0);
    for case in cases(&doc) {
        let name = s(case, "name");
        let bytes = unhex(s(case, "hex"));
        let body = Bytes::from(bytes.clone());
        let result = Message::decode(&body);
        let expect = &case["expect"];
        if let Some(code) = expect["error"].as_str() {
            let err = result.expect_err(name);
            assert_eq!(err.code(), code, "{name}: {err}");
            errors += 1;
        } else if expect["ignored"].as_bool() == Some(true) {
            assert_eq!(result, Ok(None), "{name}");
            ignored += 1;
        } else {
            let message = result
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .expect(name);
            let mut want = expect["message"].clone();
            if want["type"] == "EXTENSION" {
                want["payload"] = Value::from(hex::encode(unhex(s(&want, "payload"))));
            }
            assert_eq!(message_json(&message), want, "{name}");
            if case["canonical"].as_bool() == Some(true) {
                assert_eq!(
                    hex::encode(message.encode()),
                    hex::encode(&bytes),
                    "{name}: not canonical"
                );
                canonical += 1;
            }
            decoded += 1;
        }
    }
    assert!(
        decoded >= 10 && canonical >= 4 && ignored >= 1 && errors >= 15,
        "too few message vectors: {decoded} {canonical} {ignored} {errors}"
    );
}

fn event_string(e: &Event) -> String {
    match e {
        Event::Established(_) => "established".into(),
        Event::Message(Message::Extension(m)) => {
            format!("message:{}:{}", m.name, hex::encode(&m.payload))
        }
        Event::Closed(CloseReason::Peer { code, .. }) => format!("closed:peer:{}", code.0),
        Event::Closed(CloseReason::Error(e)) => format!("closed:error:{}", e.code()),
        Event::Closed(CloseReason::TimedOut(Timeout::Handshake)) => {
            "closed:timeout:handshake".into()
        }
        Event::Closed(CloseReason::TimedOut(Timeout::Idle)) => "closed:timeout:idle".into(),
        other => format!("{other:?}"),
    }
}

/// Feeds `input` in pieces of `piece` bytes; returns the events and the code of any CLOSE the
/// session sent.
fn run_session(config: &SessionConfig, input: &[u8], piece: usize) -> (Vec<String>, Option<u64>) {
    let now = Timestamp::ZERO;
    let mut session = Session::new(config.clone(), now).unwrap();
    let mut events = Vec::new();
    for chunk in input.chunks(piece) {
        session.handle_bytes(now, chunk);
        events.extend(std::iter::from_fn(|| session.poll_event()).map(|e| event_string(&e)));
    }
    let mut decoder = FrameDecoder::new();
    let mut reassembler = Reassembler::new();
    let mut close = None;
    while let Some(bytes) = session.poll_transmit(now) {
        decoder.push(&bytes);
        while let Some(frame) = decoder.next_frame().unwrap() {
            if let Some(body) = reassembler.push(frame).unwrap()
                && let Some(Message::Close(c)) = Message::decode(&body).unwrap()
            {
                close = Some(u64::from(c.code.0));
            }
        }
    }
    (events, close)
}

#[test]
fn session_vectors() {
    let doc = load("sessions.json");
    let cfg = &doc["config"];
    let config = SessionConfig {
        extensions: cfg["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect(),
        keepalive: std::time::Duration::from_secs(cfg["keepalive_secs"].as_u64().unwrap()),
        protocol_versions: cfg["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect(),
        ..SessionConfig::default()
    };
    let mut checked = 0;
    for case in cases(&doc) {
        let name = s(case, "name");
        let input = unhex(s(case, "hex"));
        let want_events: Vec<String> = case["expect"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let want_close = case["expect"]["close_code"].as_u64();
        for piece in [input.len().max(1), 1] {
            let (events, close) = run_session(&config, &input, piece);
            assert_eq!(events, want_events, "{name} (pieces of {piece})");
            assert_eq!(close, want_close, "{name} (pieces of {piece}): CLOSE code");
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} session vectors");
}
