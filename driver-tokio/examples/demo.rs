//! Two ClearSkies sessions talking over real loopback TCP, in one process.
//!
//! `cargo run -p clearskies-tokio --example demo`
//!
//! "laptop" listens, "phone" dials. Both run proto's `Session` under the tokio driver loop:
//! they handshake (the phone asks for an hourly keep-alive and gets it), the laptop sends a
//! 4 MiB of bulk extension messages (segmented into 16 KiB frames) and a chat line at control
//! priority, the phone checks every byte, and closes the session.
//! Folder sync replaces this demo when the CLI lands.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clearskies_proto::session::{Event, Priority, Session, SessionConfig};
use clearskies_proto::wire::{CloseCode, Message};
use clearskies_tokio::{MonotonicClock, SessionHandle, extension_message, run_session};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const CHAT: &str = "com.example.chat";
const BLOB: &str = "com.example.blob";

fn config(name: &str, keepalive: Duration) -> SessionConfig {
    SessionConfig {
        device_name: name.into(),
        keepalive,
        extensions: vec![CHAT.into(), BLOB.into()],
        ..SessionConfig::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("laptop listening on {addr}");
    let clock = MonotonicClock::new();

    let (laptop, laptop_cmd_rx) = SessionHandle::channel(16);
    let (laptop_ev_tx, mut laptop_ev) = mpsc::channel(16);
    let laptop_task = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await?;
        println!("laptop accepted {peer}");
        stream.set_nodelay(true)?;
        let session = Session::new(config("laptop", Duration::from_secs(30)), clock.now())
            .expect("valid config");
        run_session(session, stream, clock, laptop_cmd_rx, laptop_ev_tx).await
    });

    let (phone, phone_cmd_rx) = SessionHandle::channel(16);
    let (phone_ev_tx, mut phone_ev) = mpsc::channel(16);
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let session = Session::new(config("phone", Duration::from_secs(3600)), clock.now())
        .expect("valid config");
    let phone_task = tokio::spawn(run_session(
        session,
        stream,
        clock,
        phone_cmd_rx,
        phone_ev_tx,
    ));

    for (who, events) in [("laptop", &mut laptop_ev), ("phone", &mut phone_ev)] {
        match events.recv().await {
            Some(Event::Established(n)) => println!(
                "{who}: established with {:?} ({}), protocol {}, extensions {:?}, keep-alive {:?}",
                n.peer_name, n.peer_software, n.version, n.extensions, n.keepalive
            ),
            other => panic!("{who}: expected Established, got {other:?}"),
        }
    }

    let blob: Bytes = (0..4 * 1024 * 1024 - 64)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let started = Instant::now();
    // Four 1 MiB-class messages of bulk data, then a chat line at control priority.
    for part in blob.chunks(1024 * 1024 - 64) {
        let message = extension_message(BLOB, Bytes::copy_from_slice(part));
        laptop
            .send(message, Priority::Bulk)
            .await
            .expect("bulk message accepted");
    }
    let chat = extension_message(CHAT, &b"hello from the laptop"[..]);
    laptop
        .send(chat, Priority::Control)
        .await
        .expect("chat accepted");

    let mut received = Vec::new();
    let mut order = Vec::new();
    while received.len() < blob.len() || !order.contains(&"chat") {
        match phone_ev.recv().await {
            Some(Event::Message(Message::Extension(m))) if m.name == BLOB => {
                received.extend_from_slice(&m.payload);
                order.push("blob");
            }
            Some(Event::Message(Message::Extension(m))) if m.name == CHAT => {
                println!("phone: chat: {}", String::from_utf8_lossy(&m.payload));
                order.push("chat");
            }
            other => panic!("phone: unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(received, blob, "bulk data corrupted");
    println!(
        "phone: received {} bytes of bulk data intact in {:.1} ms; arrival order {:?}",
        received.len(),
        elapsed.as_secs_f64() * 1e3,
        order
    );

    phone
        .close(CloseCode::NORMAL, "demo finished")
        .await
        .expect("phone running");
    match laptop_ev.recv().await {
        Some(Event::Closed(reason)) => println!("laptop: session closed: {reason:?}"),
        other => panic!("laptop: expected Closed, got {other:?}"),
    }
    phone_task.await.expect("phone task")?;
    laptop_task.await.expect("laptop task")?;
    println!("demo OK");
    Ok(())
}
