//! Two devices, each a whole node on tokio with a redb store on disk, sync a database over real
//! loopback sockets: writes are durable when acknowledged, replicate both ways, survive a
//! restart of the node, and a node restarted from its files catches up.
//!
//! The transport here is plain TCP with the peer's identity asserted by the test; the TLS
//! layer (which authenticates it for real) is tested in its own crate.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member, ShareId};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::{Event, Node};
use clearskies_proto::session::SessionConfig;
use clearskies_store::ReplicaStore;
use clearskies_tokio::MonotonicClock;
use clearskies_tokio::node::{NodeHandle, spawn_node};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SHARE: ShareId = [8; 32];

fn key(n: u8) -> DeviceKey {
    DeviceKey::from_secret(&[n; 32])
}

fn members() -> BTreeMap<DeviceId, Member> {
    [1u8, 2]
        .iter()
        .map(|&i| {
            (
                key(i).device_id(),
                Member {
                    public_key: key(i).public_key(),
                    access: Access::ReadWrite,
                },
            )
        })
        .collect()
}

async fn start(
    n: u8,
    dir: &std::path::Path,
) -> (
    NodeHandle,
    mpsc::Receiver<Event>,
    tokio::task::JoinHandle<()>,
) {
    let clock = MonotonicClock::new();
    let config = SessionConfig {
        device_name: format!("device-{n}"),
        ..SessionConfig::default()
    };
    let node = Node::new(key(n), config, clock.now());
    let (handle, events, task) = spawn_node(node, clock);
    let store = ReplicaStore::open(&dir.join(format!("replica-{n}.redb"))).unwrap();
    handle.open_share(SHARE, members(), store).await.unwrap();
    (handle, events, task)
}

async fn connect(a: &NodeHandle, b: &NodeHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, dialed) = tokio::join!(listener.accept(), TcpStream::connect(addr));
    a.add_connection(key(2).device_id(), accepted.unwrap().0)
        .await
        .unwrap();
    b.add_connection(key(1).device_id(), dialed.unwrap())
        .await
        .unwrap();
}

async fn wait_for(events: &mut mpsc::Receiver<Event>, what: impl Fn(&Event) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = events.recv().await {
            if what(&e) {
                return;
            }
        }
        panic!("node stopped");
    })
    .await
    .expect("event within 10 s");
}

async fn value(h: &NodeHandle, key: &str) -> Option<Vec<u8>> {
    h.get(SHARE, key)
        .await
        .unwrap()
        .and_then(|e| e.winner().value.as_ref().map(|v| v.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sync_both_ways_and_a_restarted_node_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut a_events, a_task) = start(1, dir.path()).await;
    let (b, mut b_events, b_task) = start(2, dir.path()).await;
    // Writes made before any connection.
    a.put(SHARE, "notes/a", Bytes::from_static(b"\x61a"))
        .await
        .unwrap();
    b.put(SHARE, "notes/b", Bytes::from_static(b"\x61b"))
        .await
        .unwrap();
    connect(&a, &b).await;
    wait_for(&mut a_events, |e| matches!(e, Event::Db { event: clearskies_proto::db::Event::Changed { key }, .. } if key == "notes/b")).await;
    wait_for(&mut b_events, |e| matches!(e, Event::Db { event: clearskies_proto::db::Event::Changed { key }, .. } if key == "notes/a")).await;
    assert_eq!(value(&b, "notes/a").await, Some(b"\x61a".to_vec()));
    assert_eq!(value(&a, "notes/b").await, Some(b"\x61b".to_vec()));

    // Live: a write on A appears on B.
    for i in 0..100 {
        a.put(
            SHARE,
            &format!("live/{i:03}"),
            Bytes::from(vec![0x40 + (i % 20) as u8]),
        )
        .await
        .unwrap();
    }
    wait_for(&mut b_events, |e| matches!(e, Event::Db { event: clearskies_proto::db::Event::Changed { key }, .. } if key == "live/099")).await;
    assert_eq!(b.list(SHARE, "live/").await.unwrap().len(), 100);

    // B stops; A writes; B restarts from its files and catches up.
    b.shutdown().await;
    b_task.await.unwrap();
    drop(b_events);
    a.delete(SHARE, "notes/a").await.unwrap();
    a.put(SHARE, "while-away", Bytes::from_static(b"\x61x"))
        .await
        .unwrap();
    let (b, mut b_events, _b_task) = start(2, dir.path()).await;
    assert_eq!(
        b.list(SHARE, "live/").await.unwrap().len(),
        100,
        "B's own store kept its copy"
    );
    connect(&a, &b).await;
    wait_for(&mut b_events, |e| matches!(e, Event::Db { event: clearskies_proto::db::Event::Changed { key }, .. } if key == "while-away")).await;
    assert_eq!(value(&b, "notes/a").await, None, "the delete reached B");
    assert!(
        b.get(SHARE, "notes/a")
            .await
            .unwrap()
            .unwrap()
            .winner()
            .is_tombstone()
    );
    a.shutdown().await;
    a_task.await.unwrap();
    let _ = &mut a_events;
}
