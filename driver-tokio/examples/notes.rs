//! A shared notes list that two devices edit: the database layer as an app embeds it.
//!
//! `cargo run -p clearskies-tokio --example notes`
//!
//! Two devices ("laptop" and "phone") run a whole ClearSkies node each, with their database in
//! a redb file in a temporary folder, connected over loopback TCP + TLS 1.3 with pinned device
//! keys. They add notes, edit the
//! same note while disconnected (a conflict, shown on both with the same winner), resolve it,
//! and the phone restarts from its files and catches up on what it missed.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use clearskies_net::PeerPolicy;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Entry, Event as DbEvent, Member, ShareId};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::{Event, Node};
use clearskies_proto::session::SessionConfig;
use clearskies_store::ReplicaStore;
use clearskies_tokio::MonotonicClock;
use clearskies_tokio::node::{NodeHandle, spawn_node};
use clearskies_tokio::tls;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SHARE: ShareId = [0x5a; 32];

struct Device {
    name: &'static str,
    key: DeviceKey,
    handle: NodeHandle,
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

fn keys() -> (DeviceKey, DeviceKey) {
    // A real app makes these once from OS randomness and keeps them in its store.
    (
        DeviceKey::from_secret(&[1; 32]),
        DeviceKey::from_secret(&[2; 32]),
    )
}

fn members() -> BTreeMap<DeviceId, Member> {
    let (a, b) = keys();
    [a, b]
        .iter()
        .map(|k| {
            (
                k.device_id(),
                Member {
                    public_key: k.public_key(),
                    access: Access::ReadWrite,
                },
            )
        })
        .collect()
}

async fn start(name: &'static str, key: DeviceKey, dir: &std::path::Path) -> Device {
    let clock = MonotonicClock::new();
    let node = Node::new(
        key.clone(),
        SessionConfig {
            device_name: name.into(),
            ..SessionConfig::default()
        },
        clock.now(),
    );
    let (handle, events, task) = spawn_node(node, clock);
    let store = ReplicaStore::open(&dir.join(format!("{name}.redb"))).expect("open store");
    handle
        .open_share(SHARE, members(), store)
        .await
        .expect("open share");
    Device {
        name,
        key,
        handle,
        events,
        task,
    }
}

/// Connects two devices over TCP + TLS 1.3: each proves its device key and accepts only the
/// other's (in the real tool: the members of the shares both hold).
async fn connect(a: &Device, b: &Device) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = clearskies_net::server_config(&a.key, PeerPolicy::pinned([b.key.device_id()]));
    let accepting = async {
        let (tcp, _) = listener.accept().await.unwrap();
        tls::accept(tcp, server).await.expect("TLS accept")
    };
    let dialing = tls::connect(addr, &b.key, PeerPolicy::pinned([a.key.device_id()]));
    let ((peer_of_a, a_stream), dialed) = tokio::join!(accepting, dialing);
    let (peer_of_b, b_stream) = dialed.expect("TLS connect");
    a.handle
        .add_connection(peer_of_a.device_id, a_stream)
        .await
        .unwrap();
    b.handle
        .add_connection(peer_of_b.device_id, b_stream)
        .await
        .unwrap();
}

/// A note as a CBOR text string (a real app would store a map).
fn note(text: &str) -> Bytes {
    let mut v = Vec::with_capacity(text.len() + 2);
    assert!(text.len() < 24, "short notes only in this demo");
    v.push(0x60 + text.len() as u8);
    v.extend_from_slice(text.as_bytes());
    Bytes::from(v)
}

fn text(cbor: &[u8]) -> String {
    String::from_utf8_lossy(cbor.get(1..).unwrap_or_default()).into_owned()
}

/// Waits until `device`'s entry for `key` satisfies `done`, looking again after each event.
async fn settled(device: &mut Device, key: &str, done: impl Fn(&Entry) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if device
                .handle
                .get(SHARE, key)
                .await
                .unwrap()
                .is_some_and(|e| done(&e))
            {
                return;
            }
            match device.events.recv().await {
                None => panic!("{} stopped", device.name),
                Some(Event::Db {
                    event: DbEvent::Conflict { key, siblings },
                    ..
                }) => println!(
                    "{}: CONFLICT on {key}: {}",
                    device.name,
                    siblings
                        .iter()
                        .map(|r| r.value.as_deref().map(text).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(" | ")
                ),
                Some(_) => {}
            }
        }
    })
    .await
    .expect("the change arrives within 10 s");
}

async fn show(device: &Device) {
    let notes = device.handle.list(SHARE, "notes/").await.unwrap();
    let lines: Vec<String> = notes
        .iter()
        .filter_map(|(k, e)| {
            e.winner().value.as_deref().map(|v| {
                format!(
                    "{k} = {:?}{}",
                    text(v),
                    if e.is_conflict() { " (conflict)" } else { "" }
                )
            })
        })
        .collect();
    println!("{:>6}: {}", device.name, lines.join(", "));
}

#[tokio::main]
async fn main() {
    let dir = tempfile_dir();
    let (laptop_key, phone_key) = keys();
    let mut laptop = start("laptop", laptop_key, &dir).await;
    let mut phone = start("phone", phone_key.clone(), &dir).await;
    connect(&laptop, &phone).await;

    laptop
        .handle
        .put(SHARE, "notes/1", note("buy milk"))
        .await
        .unwrap();
    laptop
        .handle
        .put(SHARE, "notes/2", note("call mum"))
        .await
        .unwrap();
    settled(&mut phone, "notes/2", |_| true).await;
    show(&laptop).await;
    show(&phone).await;

    println!("-- the phone goes offline; both edit notes/1");
    phone.handle.shutdown().await;
    phone.task.await.unwrap();
    laptop
        .handle
        .put(SHARE, "notes/1", note("buy oat milk"))
        .await
        .unwrap();
    let mut phone = start("phone", phone_key.clone(), &dir).await;
    phone
        .handle
        .put(SHARE, "notes/1", note("buy milk x2"))
        .await
        .unwrap();
    laptop
        .handle
        .put(SHARE, "notes/3", note("water plants"))
        .await
        .unwrap();
    println!("-- back online");
    connect(&laptop, &phone).await;
    settled(&mut phone, "notes/1", Entry::is_conflict).await;
    settled(&mut laptop, "notes/1", Entry::is_conflict).await;
    settled(&mut phone, "notes/3", |_| true).await;
    show(&laptop).await;
    show(&phone).await;
    let a = laptop.handle.get(SHARE, "notes/1").await.unwrap().unwrap();
    let b = phone.handle.get(SHARE, "notes/1").await.unwrap().unwrap();
    assert!(a.is_conflict() && b.is_conflict());
    assert_eq!(a.winner(), b.winner(), "both devices show the same winner");

    println!("-- the phone resolves it by writing a new version");
    phone
        .handle
        .put(SHARE, "notes/1", note("buy oat milk x2"))
        .await
        .unwrap();
    settled(&mut laptop, "notes/1", |e| {
        e.winner().value.as_deref().map(text).as_deref() == Some("buy oat milk x2")
    })
    .await;
    show(&laptop).await;
    show(&phone).await;
    assert!(
        !laptop
            .handle
            .get(SHARE, "notes/1")
            .await
            .unwrap()
            .unwrap()
            .is_conflict()
    );
    laptop.handle.shutdown().await;
    phone.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("notes demo OK");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("clearskies-notes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    dir
}
