//! A shared notes list that two devices edit: the database layer as an app embeds it.
//!
//! `cargo run -p clearskies-tokio --example notes`
//!
//! Two devices ("laptop" and "phone") run a whole ClearSkies node each, with their database in
//! a redb file in a temporary folder, connected over loopback TCP. They add notes, edit the
//! same note while disconnected (a conflict, shown on both with the same winner), resolve it,
//! and the phone restarts from its files and catches up on what it missed.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Event as DbEvent, Member, ShareId};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::{Event, Node};
use clearskies_proto::session::SessionConfig;
use clearskies_store::ReplicaStore;
use clearskies_tokio::MonotonicClock;
use clearskies_tokio::node::{NodeHandle, spawn_node};
use tokio::net::{TcpListener, TcpStream};
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

async fn connect(a: &Device, b: &Device) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, dialed) = tokio::join!(listener.accept(), TcpStream::connect(addr));
    a.handle
        .add_connection(b.key.device_id(), accepted.unwrap().0)
        .await
        .unwrap();
    b.handle
        .add_connection(a.key.device_id(), dialed.unwrap())
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

/// Waits until `device` has seen a change of `key`, printing conflicts on the way.
async fn changed(device: &mut Device, key: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = device.events.recv().await {
            match e {
                Event::Db {
                    event: DbEvent::Conflict { key, siblings },
                    ..
                } => println!(
                    "{}: CONFLICT on {key}: {}",
                    device.name,
                    siblings
                        .iter()
                        .map(|r| r.value.as_deref().map(text).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(" | ")
                ),
                Event::Db {
                    event: DbEvent::Changed { key: k },
                    ..
                } if k == key => return,
                _ => {}
            }
        }
    })
    .await
    .expect("change within 10 s");
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
    changed(&mut phone, "notes/2").await;
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
    changed(&mut phone, "notes/3").await;
    changed(&mut laptop, "notes/1").await;
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
    changed(&mut laptop, "notes/1").await;
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
