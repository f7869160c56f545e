//! The tokio driver loop on real loopback TCP sockets: handshake, a segmented message, a
//! peer that sends garbage, and a peer that vanishes.

use std::time::Duration;

use bytes::Bytes;
use clearskies_proto::session::{CloseReason, Event, Priority, Session, SessionConfig};
use clearskies_proto::wire::{CloseCode, Message};
use clearskies_tokio::{MonotonicClock, SessionHandle, extension_message, run_session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const EXT: &str = "com.example.test";

fn config(name: &str) -> SessionConfig {
    SessionConfig {
        device_name: name.into(),
        extensions: vec![EXT.into()],
        ..SessionConfig::default()
    }
}

struct Running {
    handle: SessionHandle,
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn start(name: &str, stream: TcpStream, clock: MonotonicClock) -> Running {
    let (handle, commands) = SessionHandle::channel(8);
    let (events_tx, events) = mpsc::channel(64);
    let session = Session::new(config(name), clock.now()).unwrap();
    let task = tokio::spawn(run_session(session, stream, clock, commands, events_tx));
    Running {
        handle,
        events,
        task,
    }
}

async fn pair() -> (Running, Running) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = MonotonicClock::new();
    let (accepted, dialed) = tokio::join!(listener.accept(), TcpStream::connect(addr));
    (
        start("a", accepted.unwrap().0, clock),
        start("b", dialed.unwrap(), clock),
    )
}

async fn next(r: &mut Running) -> Event {
    tokio::time::timeout(Duration::from_secs(10), r.events.recv())
        .await
        .expect("event within 10 s")
        .expect("session running")
}

#[tokio::test]
async fn sessions_handshake_exchange_and_close_over_tcp() {
    let (mut a, mut b) = pair().await;
    assert!(matches!(next(&mut a).await, Event::Established(n) if n.peer_name == "b"));
    assert!(matches!(next(&mut b).await, Event::Established(n) if n.peer_name == "a"));
    let payload: Bytes = (0..900_000u32)
        .map(|i| (i % 241) as u8)
        .collect::<Vec<_>>()
        .into();
    a.handle
        .send(extension_message(EXT, payload.clone()), Priority::Bulk)
        .await
        .unwrap();
    match next(&mut b).await {
        Event::Message(Message::Extension(m)) => assert_eq!(m.payload, payload),
        other => panic!("{other:?}"),
    }
    b.handle.close(CloseCode::GOING_AWAY, "bye").await.unwrap();
    assert_eq!(
        next(&mut a).await,
        Event::Closed(CloseReason::Peer {
            code: CloseCode::GOING_AWAY,
            reason: "bye".into()
        })
    );
    a.task.await.unwrap().unwrap();
    b.task.await.unwrap().unwrap();
}

/// A close asked for right after sends goes out after them: the peer gets every message, then
/// the close (proto's own `close` would discard whatever was still queued).
#[tokio::test]
async fn messages_queued_before_a_close_all_arrive_before_it() {
    let (mut a, mut b) = pair().await;
    assert!(matches!(next(&mut a).await, Event::Established(_)));
    assert!(matches!(next(&mut b).await, Event::Established(_)));
    // Several frames' worth of bulk and a control message, queued back to back, then close.
    let big: Bytes = vec![7u8; 300_000].into();
    // Issued together, so the close reaches the session while the messages are still queued.
    let (first, second, close) = tokio::join!(
        a.handle
            .send(extension_message(EXT, big.clone()), Priority::Bulk),
        a.handle
            .send(extension_message(EXT, &b"last word"[..]), Priority::Control),
        a.handle.close(CloseCode::NORMAL, "done"),
    );
    first.unwrap();
    second.unwrap();
    close.unwrap();
    let mut got = Vec::new();
    loop {
        match next(&mut b).await {
            Event::Message(Message::Extension(m)) => got.push(m.payload),
            Event::Closed(reason) => {
                assert_eq!(
                    reason,
                    CloseReason::Peer {
                        code: CloseCode::NORMAL,
                        reason: "done".into()
                    }
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // Control overtakes bulk; both arrive.
    assert_eq!(got.len(), 2, "both messages before the close");
    assert!(got.contains(&big));
    assert!(got.contains(&Bytes::from_static(b"last word")));
    a.task.await.unwrap().unwrap();
    b.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn garbage_from_a_stranger_is_refused_with_a_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = MonotonicClock::new();
    let (accepted, dialed) = tokio::join!(listener.accept(), TcpStream::connect(addr));
    let mut a = start("a", accepted.unwrap().0, clock);
    let mut stranger = dialed.unwrap();
    stranger
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let event = next(&mut a).await;
    let Event::Closed(CloseReason::Error(e)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(e.code(), "bad-preface");
    // The stranger receives our preface and a CLOSE naming the problem, then EOF.
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stranger.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with(b"CSKY\x00\x01"));
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("did not start with the ClearSkies preface"),
        "{text}"
    );
    a.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_vanished_peer_is_reported_as_transport_lost() {
    let (mut a, mut b) = pair().await;
    next(&mut a).await;
    next(&mut b).await;
    b.task.abort();
    let _ = b.task.await;
    assert_eq!(
        next(&mut a).await,
        Event::Closed(CloseReason::TransportLost)
    );
}

#[tokio::test]
async fn both_sides_sending_bulk_at_once_do_not_deadlock() {
    let (mut a, mut b) = pair().await;
    next(&mut a).await;
    next(&mut b).await;
    // Far more than two loopback socket buffers in each direction at the same time.
    let payload = Bytes::from(vec![0x5a; 1_000_000]);
    for r in [&a, &b] {
        for _ in 0..8 {
            r.handle
                .send(extension_message(EXT, payload.clone()), Priority::Bulk)
                .await
                .unwrap();
        }
    }
    for r in [&mut a, &mut b] {
        for _ in 0..8 {
            match next(r).await {
                Event::Message(Message::Extension(m)) => assert_eq!(m.payload, payload),
                other => panic!("{other:?}"),
            }
        }
    }
}
