//! Two devices, each a whole node on tokio with a redb store on disk, sync a database over real
//! loopback sockets: writes are durable when acknowledged, replicate both ways, survive a
//! restart of the node, and a node restarted from its files catches up.
//!
//! The transport is TCP + TLS 1.3 with pinned device keys; an unknown device is refused in the
//! handshake.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use clearskies_net::PeerPolicy;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member, ShareId};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::{Event, Node};
use clearskies_proto::session::SessionConfig;
use clearskies_store::ReplicaStore;
use clearskies_tokio::MonotonicClock;
use clearskies_tokio::node::{NodeHandle, spawn_node};
use clearskies_tokio::tls;
use tokio::net::TcpListener;
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

/// Connects A (device 1, listening) and B (device 2, dialling) over TCP + TLS 1.3, each
/// pinning the other's device key.
async fn connect(a: &NodeHandle, b: &NodeHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = clearskies_net::server_config(&key(1), PeerPolicy::pinned([key(2).device_id()]));
    let accepting = async {
        let (tcp, _) = listener.accept().await.unwrap();
        tls::accept(tcp, server).await.unwrap()
    };
    let key2 = key(2);
    let dialing = tls::connect(addr, &key2, PeerPolicy::pinned([key(1).device_id()]));
    let ((peer_of_a, a_stream), dialed) = tokio::join!(accepting, dialing);
    let (peer_of_b, b_stream) = dialed.unwrap();
    assert_eq!(peer_of_a.device_id, key(2).device_id());
    assert_eq!(peer_of_b.device_id, key(1).device_id());
    a.add_connection(peer_of_a.device_id, a_stream)
        .await
        .unwrap();
    b.add_connection(peer_of_b.device_id, b_stream)
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

#[tokio::test]
async fn a_device_that_is_not_a_member_is_refused_in_the_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Device 1 accepts only members (1 and 2); device 3 is a stranger.
    let members: Vec<DeviceId> = members().into_keys().collect();
    let server = clearskies_net::server_config(&key(1), PeerPolicy::pinned(members));
    let accepting = async {
        let (tcp, _) = listener.accept().await.unwrap();
        tls::accept(tcp, server).await
    };
    let dialing = async {
        let (_, mut stream) =
            tls::connect(addr, &key(3), PeerPolicy::pinned([key(1).device_id()])).await?;
        // In TLS 1.3 the client learns of its refusal on its first read.
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1];
        stream.read(&mut buf).await.map(|_| ())
    };
    let (accepted, dialed) = tokio::join!(accepting, dialing);
    let err = accepted.expect_err("the stranger must be refused");
    let text = err.to_string();
    assert!(text.contains(&key(3).device_id().to_string()), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(dialed.is_err(), "the stranger learns it was refused");
}
