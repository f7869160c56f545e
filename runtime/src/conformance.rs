//! The driver conformance suite (`STYLE.md` rule 14): the scenarios every transport that feeds
//! this runtime must pass, written once. A driver's tests implement [`Transport`] (listen,
//! accept, dial on real sockets, and the [`Runtime`] the nodes run on) and call each scenario;
//! the scenarios run whole nodes with redb stores and assert on what the replicas hold.
//!
//! Built only with the `conformance` feature, which driver crates enable for their tests.
//!
//! Devices: device 1 ("A") listens, device 2 ("B") dials; both are members of one share,
//! read-write unless a scenario says otherwise. Device 3 is a stranger, or pairs in.
//!
//! The scenarios, each a function generic over the transport:
//!
//! * replicate the database both ways, live and after a restart:
//!   [`two_nodes_sync_both_ways_and_a_restarted_node_catches_up`];
//! * refuse an unknown device: [`a_device_that_is_not_a_member_is_refused_in_the_handshake`];
//! * survive a dropped connection mid-transfer:
//!   [`a_connection_cut_mid_transfer_is_reported_and_the_replicas_converge_after_reconnecting`];
//! * enforce read-only: [`a_read_only_member_reads_but_its_writes_are_refused`];
//! * shut down without losing an acknowledged write:
//!   [`an_acknowledged_write_survives_shutdown_and_reaches_the_peer_after_restart`];
//! * pair (transports that implement [`PairingTransport`]):
//!   [`a_device_pairs_with_an_access_code_then_syncs_as_a_member`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clearskies_net::{PeerKey, PeerPolicy};
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{self, Access, Member, ShareId};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::{Event, Node};
use clearskies_proto::session::SessionConfig;
use clearskies_store::ReplicaStore;
use futures_util::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::node::{IntoStream, NodeHandle, spawn_node};
use crate::{MonotonicClock, Runtime, Task};

/// Cuts a connection abruptly, as a network failure or a crashed peer would: the session gets
/// no chance to close.
pub type Cut = Box<dyn FnOnce() + Send>;

/// A transport under test: authenticated connections over real sockets.
///
/// The scenarios await these futures on the test's own task, never spawned, so they need not
/// be `Send`.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// The runtime the nodes run on.
    type Runtime: Runtime;
    /// What [`Transport::listen`] returns: a bound listening socket and its configuration.
    type Listener;
    /// The I/O trait family of [`Transport::Stream`] (see [`IntoStream`]).
    type Family;
    /// The authenticated byte stream.
    type Stream: IntoStream<Self::Family>;

    /// The runtime the nodes run on.
    fn runtime(&self) -> Self::Runtime;

    /// Binds a listener on loopback that presents `key` and judges dialers with `policy`.
    async fn listen(&self, key: &DeviceKey, policy: PeerPolicy) -> Self::Listener;

    /// Where the listener can be dialled.
    fn addr(listener: &Self::Listener) -> SocketAddr;

    /// Accepts one connection and completes its handshake. Returns the dialer's proven key, the
    /// stream, and a [`Cut`] that kills the connection. It may finish only once the dialer has
    /// written (QUIC announces a stream with its first bytes), so the suite hands the dialer's
    /// stream to its node without waiting for `accept`.
    async fn accept(&self, listener: &Self::Listener) -> io::Result<(PeerKey, Self::Stream, Cut)>;

    /// Dials `addr` as `key`, judging the listener with `policy`. Returns the listener's proven
    /// key and the stream.
    async fn dial(
        &self,
        key: &DeviceKey,
        policy: PeerPolicy,
        addr: SocketAddr,
    ) -> io::Result<(PeerKey, Self::Stream)>;
}

const SHARE: ShareId = [8; 32];
/// How long a scenario waits for something that should happen at once on loopback.
const PATIENCE: Duration = Duration::from_secs(20);

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

struct Device {
    handle: NodeHandle,
    events: mpsc::Receiver<Event>,
    task: Task<()>,
}

/// Starts device `n` on `runtime` with its store in `dir` (reopened if it exists), both devices
/// read-write members.
async fn start<R: Runtime>(runtime: &R, n: u8, dir: &std::path::Path) -> Device {
    start_with(runtime, n, dir, members()).await
}

/// [`start`] with the share's member list as device `n` knows it.
async fn start_with<R: Runtime>(
    runtime: &R,
    n: u8,
    dir: &std::path::Path,
    members: BTreeMap<DeviceId, Member>,
) -> Device {
    let clock = MonotonicClock::new();
    let config = SessionConfig {
        device_name: format!("device-{n}"),
        // The shortest keep-alive: a cut whose close never arrives (QUIC's CONNECTION_CLOSE
        // can be dropped on a socket saturated by bulk data) is still noticed by the
        // session's idle timeout, 3 × 5 s, within PATIENCE.
        keepalive: clearskies_proto::wire::MIN_KEEPALIVE,
        ..SessionConfig::default()
    };
    let node = Node::new(key(n), config, clock.now());
    let (handle, events, task) = spawn_node(runtime.clone(), node, clock);
    let store = ReplicaStore::open(&dir.join(format!("replica-{n}.redb"))).expect("open store");
    handle
        .open_share(SHARE, members, store)
        .await
        .expect("open share");
    Device {
        handle,
        events,
        task,
    }
}

impl Device {
    async fn stop(self) {
        self.handle.shutdown().await;
        self.task.await.expect("node task");
    }
}

/// Connects A (device 1, listening) and B (device 2, dialling), each pinning the other's key,
/// and hands each end to its node. Returns the cut of A's end.
async fn connect<T: Transport>(transport: &T, a: &NodeHandle, b: &NodeHandle) -> Cut {
    connect_device(transport, a, b, 2).await
}

/// [`connect`] with device `b` dialling instead of device 2.
async fn connect_device<T: Transport>(
    transport: &T,
    a: &NodeHandle,
    b: &NodeHandle,
    b_n: u8,
) -> Cut {
    let listener = transport
        .listen(&key(1), PeerPolicy::pinned([key(b_n).device_id()]))
        .await;
    let addr = T::addr(&listener);
    let accepting = async {
        let (peer, stream, cut) = transport.accept(&listener).await.expect("A accepts B");
        assert_eq!(peer.device_id, key(b_n).device_id());
        a.add_connection::<T::Family>(peer.device_id, stream)
            .await
            .expect("A running");
        cut
    };
    let dialing = async {
        let (peer, stream) = transport
            .dial(&key(b_n), PeerPolicy::pinned([key(1).device_id()]), addr)
            .await
            .expect("B dials A");
        assert_eq!(peer.device_id, key(1).device_id());
        b.add_connection::<T::Family>(peer.device_id, stream)
            .await
            .expect("B running");
    };
    let (cut, ()) = tokio::join!(accepting, dialing);
    cut
}

async fn wait_for<R: Runtime>(
    runtime: &R,
    events: &mut mpsc::Receiver<Event>,
    mut what: impl FnMut(&Event) -> bool,
) {
    crate::timeout(runtime, PATIENCE, async {
        while let Some(e) = events.recv().await {
            if what(&e) {
                return;
            }
        }
        panic!("node stopped");
    })
    .await
    .expect("the event in time");
}

fn changed(key: &'static str) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Db { event: db::Event::Changed { key: k }, .. } if k == key)
}

async fn value(h: &NodeHandle, key: &str) -> Option<Vec<u8>> {
    h.get(SHARE, key)
        .await
        .expect("node running")
        .and_then(|e| e.winner().value.as_ref().map(|v| v.to_vec()))
}

/// Every key with all its current versions: what two converged replicas hold alike (an
/// [`db::Entry`] also carries per-replica bookkeeping).
async fn records(h: &NodeHandle) -> Vec<(String, Vec<db::Record>)> {
    h.list(SHARE, "")
        .await
        .expect("node running")
        .into_iter()
        .map(|(key, entry)| (key, entry.siblings().cloned().collect()))
        .collect()
}

/// Two devices sync writes made before connecting both ways, then live writes; B stops, A
/// writes and deletes, B restarts from its files and catches up.
pub async fn two_nodes_sync_both_ways_and_a_restarted_node_catches_up<T: Transport>(transport: &T) {
    let rt = transport.runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut a = start(&rt, 1, dir.path()).await;
    let mut b = start(&rt, 2, dir.path()).await;
    // Writes made before any connection.
    a.handle
        .put(SHARE, "notes/a", Bytes::from_static(b"\x61a"))
        .await
        .unwrap();
    b.handle
        .put(SHARE, "notes/b", Bytes::from_static(b"\x61b"))
        .await
        .unwrap();
    let _ = connect(transport, &a.handle, &b.handle).await;
    wait_for(&rt, &mut a.events, changed("notes/b")).await;
    wait_for(&rt, &mut b.events, changed("notes/a")).await;
    // Both report agreement once the exchange settles.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(a.handle.synced_with(key(2).device_id()).await.unwrap()
        && b.handle.synced_with(key(1).device_id()).await.unwrap())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes never reported being in sync"
        );
        crate::sleep(&rt, Duration::from_millis(20)).await;
    }
    assert_eq!(value(&b.handle, "notes/a").await, Some(b"\x61a".to_vec()));
    assert_eq!(value(&a.handle, "notes/b").await, Some(b"\x61b".to_vec()));

    // Live: a write on A appears on B.
    for i in 0..100 {
        a.handle
            .put(
                SHARE,
                &format!("live/{i:03}"),
                Bytes::from(vec![0x40 + (i % 20) as u8]),
            )
            .await
            .unwrap();
    }
    wait_for(&rt, &mut b.events, changed("live/099")).await;
    assert_eq!(b.handle.list(SHARE, "live/").await.unwrap().len(), 100);

    // B stops; A writes; B restarts from its files and catches up.
    b.stop().await;
    a.handle.delete(SHARE, "notes/a").await.unwrap();
    a.handle
        .put(SHARE, "while-away", Bytes::from_static(b"\x61x"))
        .await
        .unwrap();
    let mut b = start(&rt, 2, dir.path()).await;
    assert_eq!(
        b.handle.list(SHARE, "live/").await.unwrap().len(),
        100,
        "B's own store kept its copy"
    );
    let _ = connect(transport, &a.handle, &b.handle).await;
    wait_for(&rt, &mut b.events, changed("while-away")).await;
    assert_eq!(
        value(&b.handle, "notes/a").await,
        None,
        "the delete reached B"
    );
    assert!(
        b.handle
            .get(SHARE, "notes/a")
            .await
            .unwrap()
            .unwrap()
            .winner()
            .is_tombstone()
    );
    a.stop().await;
    b.stop().await;
}

/// Device 3, not a member, dials device 1, which accepts only members: device 1's accept fails
/// with an error naming device 3, and device 3 learns it was refused (on connect or its first
/// read) without receiving any data.
pub async fn a_device_that_is_not_a_member_is_refused_in_the_handshake<T: Transport>(
    transport: &T,
) {
    let members: Vec<DeviceId> = members().into_keys().collect();
    let listener = transport.listen(&key(1), PeerPolicy::pinned(members)).await;
    let addr = T::addr(&listener);
    let accepting = transport.accept(&listener);
    let dialing = async {
        let (_, stream) = transport
            .dial(&key(3), PeerPolicy::pinned([key(1).device_id()]), addr)
            .await?;
        let mut stream = IntoStream::<T::Family>::into_stream(stream);
        let mut buf = [0u8; 1];
        match stream.read(&mut buf).await? {
            0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
            _ => Ok(buf),
        }
    };
    let (accepted, dialed) = crate::timeout(&transport.runtime(), PATIENCE, async {
        tokio::join!(accepting, dialing)
    })
    .await
    .expect("the refusal in time");
    let err = accepted.err().expect("the stranger must be refused");
    let text = err.to_string();
    assert!(text.contains(&key(3).device_id().to_string()), "{text}");
    assert!(text.contains("refused"), "{text}");
    let dial_err = dialed.expect_err("the stranger learns it was refused and gets no data");
    assert!(
        dial_err.kind() != io::ErrorKind::UnexpectedEof,
        "the stranger should see a refusal, not a plain close: {dial_err}"
    );
}

/// Number of writes in the bulk batch of [`a_connection_cut_mid_transfer_is_reported_and_the_replicas_converge_after_reconnecting`].
const BULK_WRITES: usize = 300;
/// Size of each bulk value: with [`BULK_WRITES`], several MiB, so the cut lands mid-transfer.
const BULK_VALUE_LEN: usize = 16 * 1024;

/// A writes a large batch while connected to B; A's end of the connection is cut while the
/// batch is flowing. B reports the peer down; both keep writing; after reconnecting, both
/// replicas hold exactly the same entries.
pub async fn a_connection_cut_mid_transfer_is_reported_and_the_replicas_converge_after_reconnecting<
    T: Transport,
>(
    transport: &T,
) {
    let rt = transport.runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = start(&rt, 1, dir.path()).await;
    let mut b = start(&rt, 2, dir.path()).await;
    let cut = connect(transport, &a.handle, &b.handle).await;
    wait_for(&rt, &mut b.events, |e| matches!(e, Event::PeerUp { .. })).await;
    // A's events are not examined: drain them so that A never waits on its event channel.
    let Device {
        handle: a_handle,
        events: mut a_events,
        task: a_task,
    } = a;
    let a_drain = crate::spawn_task(&rt, async move { while a_events.recv().await.is_some() {} });

    let mut writes = Vec::new();
    for i in 0..BULK_WRITES {
        let a = a_handle.clone();
        writes.push(crate::spawn_task(&rt, async move {
            let value = Bytes::from(vec![0x40 + (i % 20) as u8; BULK_VALUE_LEN]);
            a.put(SHARE, &format!("bulk/{i:04}"), value).await
        }));
    }
    // As soon as bulk data reaches B, cut the connection.
    wait_for(&rt, &mut b.events, |e| {
        matches!(e, Event::Db { event: db::Event::Changed { key }, .. } if key.starts_with("bulk/"))
    })
    .await;
    cut();
    let a_id = key(1).device_id();
    wait_for(
        &rt,
        &mut b.events,
        |e| matches!(e, Event::PeerDown { peer, .. } if *peer == a_id),
    )
    .await;
    let b_had = b.handle.list(SHARE, "bulk/").await.unwrap().len();
    assert!(
        b_had < BULK_WRITES,
        "the cut should land mid-transfer (B already had all {b_had} writes)"
    );

    // Both sides go on writing while apart.
    for done in writes {
        done.await
            .expect("write task")
            .expect("A's write is durable");
    }
    b.handle
        .put(SHARE, "from-b/apart", Bytes::from_static(b"\x61b"))
        .await
        .unwrap();
    let Device {
        handle: b_handle,
        events: mut b_events,
        task: b_task,
    } = b;
    let b_drain = crate::spawn_task(&rt, async move { while b_events.recv().await.is_some() {} });

    let _ = connect(transport, &a_handle, &b_handle).await;
    let converged = crate::timeout(&rt, PATIENCE, async {
        loop {
            let on_a = records(&a_handle).await;
            let on_b = records(&b_handle).await;
            if on_a.len() == BULK_WRITES + 1 && on_a == on_b {
                return;
            }
            crate::sleep(&rt, Duration::from_millis(50)).await;
        }
    })
    .await;
    let (on_a, on_b) = (records(&a_handle).await, records(&b_handle).await);
    assert!(
        converged.is_some(),
        "replicas did not converge: A has {} entries, B has {}",
        on_a.len(),
        on_b.len()
    );
    for (handle, task, drain) in [(a_handle, a_task, a_drain), (b_handle, b_task, b_drain)] {
        handle.shutdown().await;
        task.await.expect("node task");
        drain.await.expect("drain task");
    }
}

/// The database's `watch(prefix)`: a stream of the keys that change under the prefix, written
/// here or by a peer, and of nothing else.
pub async fn a_watch_streams_the_changes_under_its_prefix<T: Transport>(transport: &T) {
    let rt = transport.runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = start(&rt, 1, dir.path()).await;
    let b = start(&rt, 2, dir.path()).await;
    let mut watch = b.handle.watch(SHARE, "notes/").await.expect("B running");
    let _ = connect(transport, &a.handle, &b.handle).await;
    for key in ["other/1", "notes/from-a"] {
        a.handle
            .put(SHARE, key, Bytes::from_static(b"\x61a"))
            .await
            .unwrap();
    }
    b.handle
        .put(SHARE, "notes/from-b", Bytes::from_static(b"\x61b"))
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    crate::timeout(&rt, PATIENCE, async {
        while seen.len() < 2 {
            seen.insert(watch.next().await.expect("the node runs"));
        }
    })
    .await
    .expect("both changes in time");
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["notes/from-a", "notes/from-b"],
        "only keys under the prefix"
    );
}

/// Writes started in [`an_acknowledged_write_survives_shutdown_and_reaches_the_peer_after_restart`].
const WRITES_AROUND_SHUTDOWN: usize = 200;

/// A writes a stream of documents and shuts down while writes are still in flight. Every write
/// that was acknowledged (its `put` returned a dot) is in A's store when A restarts, and reaches
/// B once they connect; a write that was not acknowledged may or may not be there.
pub async fn an_acknowledged_write_survives_shutdown_and_reaches_the_peer_after_restart<
    T: Transport,
>(
    transport: &T,
) {
    let rt = transport.runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = start(&rt, 1, dir.path()).await;
    let mut writes = Vec::new();
    for i in 0..WRITES_AROUND_SHUTDOWN {
        let a = a.handle.clone();
        writes.push(crate::spawn_task(&rt, async move {
            let value = Bytes::from(vec![0x40 + (i % 20) as u8; 64]);
            a.put(SHARE, &format!("durable/{i:04}"), value)
                .await
                .is_ok()
        }));
    }
    // Shut down once some writes are acknowledged and others are still queued.
    let first = writes.remove(0).await.expect("write task");
    assert!(first, "the first write is acknowledged");
    a.stop().await;
    let mut acknowledged = vec![0];
    for (i, write) in writes.into_iter().enumerate() {
        if write.await.expect("write task") {
            acknowledged.push(i + 1);
        }
    }

    let a = start(&rt, 1, dir.path()).await;
    let on_a = a
        .handle
        .list(SHARE, "durable/")
        .await
        .expect("node running");
    let mut b = start(&rt, 2, dir.path()).await;
    let _ = connect(transport, &a.handle, &b.handle).await;
    let expected_b = on_a.len();
    crate::timeout(&rt, PATIENCE, async {
        while b
            .handle
            .list(SHARE, "durable/")
            .await
            .expect("node running")
            .len()
            < expected_b
        {
            let _ = b.events.recv().await;
        }
    })
    .await
    .expect("B gets A's writes in time");
    for i in acknowledged {
        let key = format!("durable/{i:04}");
        let want = Some(vec![0x40 + (i % 20) as u8; 64]);
        assert_eq!(
            value(&a.handle, &key).await,
            want,
            "acknowledged {key} lost on A"
        );
        assert_eq!(
            value(&b.handle, &key).await,
            want,
            "acknowledged {key} not on B"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// Device 2 is a read-only member. A device 2 that still believes it may write (a stale member
/// list) writes; device 1 refuses its records with `read-only-writer`, both sides report the
/// refusal, and device 1's writes still reach it. Restarted with the right list, device 2
/// refuses its own writes.
pub async fn a_read_only_member_reads_but_its_writes_are_refused<T: Transport>(transport: &T) {
    let rt = transport.runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut read_only = members();
    if let Some(m) = read_only.get_mut(&key(2).device_id()) {
        m.access = Access::ReadOnly;
    }
    let mut a = start_with(&rt, 1, dir.path(), read_only.clone()).await;
    // B's list is stale: it thinks it may still write.
    let mut b = start(&rt, 2, dir.path()).await;
    a.handle
        .put(SHARE, "from-a", Bytes::from_static(b"\x61a"))
        .await
        .expect("A writes");
    b.handle
        .put(SHARE, "from-b", Bytes::from_static(b"\x61b"))
        .await
        .expect("B writes locally");
    let _ = connect(transport, &a.handle, &b.handle).await;
    let (a_id, b_id) = (key(1).device_id(), key(2).device_id());
    wait_for(&rt, &mut a.events, |e| {
        matches!(e, Event::Db { event: db::Event::Refused { peer, key, error, by_peer: false }, .. }
            if *peer == b_id && key == "from-b" && error == "read-only-writer")
    })
    .await;
    // B hears both A's write and A's refusal of its own, in either order.
    let (mut got_a, mut refused) = (false, false);
    wait_for(&rt, &mut b.events, |e| {
        got_a |= changed("from-a")(e);
        refused |= matches!(e, Event::Db { event: db::Event::Refused { peer, key, by_peer: true, .. }, .. }
            if *peer == a_id && key == "from-b");
        got_a && refused
    })
    .await;
    assert_eq!(
        value(&a.handle, "from-b").await,
        None,
        "A took a read-only write"
    );
    assert_eq!(value(&b.handle, "from-a").await, Some(b"\x61a".to_vec()));
    b.stop().await;

    let b = start_with(&rt, 2, dir.path(), read_only).await;
    let refused = b
        .handle
        .put(SHARE, "again", Bytes::from_static(b"\x61c"))
        .await;
    assert!(
        matches!(refused, Err(crate::node::NodeError::Refused(_))),
        "a read-only member's own write must be refused: {refused:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// A transport whose connections can carry pairing: both ends export the same channel binding.
pub trait PairingTransport: Transport {
    /// The channel binding of a connection (`spec/transport.md` § 8).
    fn channel_binding(stream: &Self::Stream) -> io::Result<[u8; 32]>;
}

/// Device 3 pairs with device 1 using an access code over a pairing-mode connection (any key
/// accepted, the PAKE decides); then it connects as a member with the member list it was
/// granted, and the two sync both ways. A wrong code on a second attempt is refused on both
/// sides.
pub async fn a_device_pairs_with_an_access_code_then_syncs_as_a_member<T: PairingTransport>(
    transport: &T,
) {
    use crate::pairing::{PairingStream, admit_stream, join_stream};
    use clearskies_proto::code::AccessCode;
    use clearskies_proto::pair::{InvitationOptions, Invitations};
    use std::sync::{Arc, Mutex};

    let rt = transport.runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut a = start(&rt, 1, dir.path()).await;
    a.handle
        .put(SHARE, "before-pairing", Bytes::from_static(b"\x61a"))
        .await
        .expect("A writes");
    let mut registry = Invitations::new();
    let code = registry
        .create(
            crate::unix_micros(),
            [0x5c; 16],
            SHARE,
            InvitationOptions::default(),
        )
        .expect("an invitation");
    let invitations = Arc::new(Mutex::new(registry));

    let pair = |code: AccessCode| {
        let (rt, invitations) = (rt.clone(), invitations.clone());
        async move {
            let listener = transport.listen(&key(1), PeerPolicy::Pairing).await;
            let addr = T::addr(&listener);
            let admitting = async {
                let (peer, stream, _cut) = transport.accept(&listener).await?;
                let connection = PairingStream {
                    binding: T::channel_binding(&stream)?,
                    stream: IntoStream::<T::Family>::into_stream(stream),
                    peer_key: peer.public_key,
                };
                let granted = |admitted: &clearskies_proto::pair::Admitted| {
                    let mut granted: Vec<Member> = members().into_values().collect();
                    granted.push(Member {
                        public_key: admitted.public_key,
                        access: admitted.access,
                    });
                    granted
                };
                admit_stream(&rt, connection, b"loopback", &key(1), invitations, granted).await
            };
            let joining = async {
                let (peer, stream) = transport.dial(&key(3), PeerPolicy::Pairing, addr).await?;
                let connection = PairingStream {
                    binding: T::channel_binding(&stream)?,
                    stream: IntoStream::<T::Family>::into_stream(stream),
                    peer_key: peer.public_key,
                };
                join_stream(&rt, connection, &key(3), &code).await
            };
            crate::timeout(&rt, PATIENCE, async { tokio::join!(admitting, joining) })
                .await
                .expect("pairing in time")
        }
    };

    // A wrong secret (same locator) fails on both sides, and admits nobody.
    let mut wrong = code.to_bytes();
    wrong[15] ^= 1;
    let (admitted, joined) = pair(AccessCode::from_bytes(wrong)).await;
    let (admitted, joined) = (
        admitted.expect_err("wrong code"),
        joined.expect_err("wrong code"),
    );
    assert_eq!(admitted.code(), Some("wrong-secret"), "{admitted}");
    assert_eq!(joined.code(), Some("wrong-secret"), "{joined}");

    let (admitted, joined) = pair(code).await;
    let admitted = admitted.expect("A admits device 3");
    let joined = joined.expect("device 3 joins");
    assert_eq!(admitted.public_key, key(3).public_key());
    assert_eq!(joined.share_id, SHARE);
    assert_eq!(joined.inviter_public_key, key(1).public_key());

    // Both record the membership, then device 3 connects as a member and syncs.
    a.handle
        .add_member(
            SHARE,
            Member {
                public_key: admitted.public_key,
                access: admitted.access,
            },
        )
        .await
        .expect("A running");
    let granted: BTreeMap<DeviceId, Member> = joined
        .members
        .iter()
        .map(|m| (DeviceId::from_public_key(&m.public_key), m.clone()))
        .collect();
    assert!(granted.contains_key(&key(3).device_id()));
    let mut c = start_with(&rt, 3, dir.path(), granted).await;
    let _ = connect_device(transport, &a.handle, &c.handle, 3).await;
    wait_for(&rt, &mut c.events, changed("before-pairing")).await;
    c.handle
        .put(SHARE, "from-c", Bytes::from_static(b"\x61c"))
        .await
        .expect("C writes");
    wait_for(&rt, &mut a.events, changed("from-c")).await;
    assert_eq!(value(&a.handle, "from-c").await, Some(b"\x61c".to_vec()));
    a.stop().await;
    c.stop().await;
}

/// The driver's dialer ([`crate::dial::keep_connected`]) keeps B connected to A: it connects,
/// and after the connection is cut it redials by itself and the replicas go on syncing.
pub async fn a_dialer_keeps_the_connection_up_and_redials_after_a_cut<T: Transport>(transport: &T) {
    let rt = transport.runtime();
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = start(&rt, 1, dir.path()).await;
    let b = start(&rt, 2, dir.path()).await;
    let Device {
        handle: a_handle,
        events: mut a_events,
        task: a_task,
    } = a;
    let a_drain = crate::spawn_task(&rt, async move { while a_events.recv().await.is_some() {} });
    let Device {
        handle: b_handle,
        events: mut b_events,
        task: b_task,
    } = b;
    let listener = transport
        .listen(&key(1), PeerPolicy::pinned([key(2).device_id()]))
        .await;
    let addr = T::addr(&listener);
    let cuts: std::sync::Mutex<Vec<Cut>> = std::sync::Mutex::new(Vec::new());
    let accepting = async {
        loop {
            if let Ok((peer, stream, cut)) = transport.accept(&listener).await {
                cuts.lock().expect("cuts").push(cut);
                if a_handle
                    .add_connection::<T::Family>(peer.device_id, stream)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    };
    let b_key = key(2);
    let dialing = crate::dial::keep_connected(&rt, &b_handle, || {
        transport.dial(&b_key, PeerPolicy::pinned([key(1).device_id()]), addr)
    });
    let a_id = key(1).device_id();
    let body = async {
        wait_for(&rt, &mut b_events, |e| matches!(e, Event::PeerUp { .. })).await;
        a_handle
            .put(SHARE, "first", Bytes::from_static(b"\x61a"))
            .await
            .unwrap();
        wait_for(&rt, &mut b_events, changed("first")).await;
        let taken: Vec<Cut> = cuts.lock().expect("cuts").drain(..).collect();
        for cut in taken {
            cut();
        }
        wait_for(
            &rt,
            &mut b_events,
            |e| matches!(e, Event::PeerDown { peer, .. } if *peer == a_id),
        )
        .await;
        // Nobody redials by hand: the dialer does.
        wait_for(&rt, &mut b_events, |e| matches!(e, Event::PeerUp { .. })).await;
        a_handle
            .put(SHARE, "after-redial", Bytes::from_static(b"\x61b"))
            .await
            .unwrap();
        wait_for(&rt, &mut b_events, changed("after-redial")).await;
    };
    futures_util::future::select(
        Box::pin(body),
        Box::pin(futures_util::future::join(accepting, dialing)),
    )
    .await;
    a_handle.shutdown().await;
    b_handle.shutdown().await;
    let _ = a_task.await;
    let _ = b_task.await;
    let _ = a_drain.await;
}
