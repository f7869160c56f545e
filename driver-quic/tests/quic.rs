//! The driver conformance suite (`clearskies_runtime::conformance`) over QUIC on real loopback
//! UDP sockets: two devices with redb stores sync both ways and catch up after a restart, a
//! stranger is refused in the handshake, a connection closed mid-transfer is reported and
//! healed by reconnecting, a read-only member's writes are refused, and acknowledged writes
//! survive a shutdown; the same on an endpoint that also serves pairing ([`bind_either`]), on
//! which a device also pairs with an access code and then syncs as a member. Plus what only
//! QUIC has here: its channel binding, and members and pairing told apart by ALPN on one
//! endpoint.

use std::io;
use std::net::SocketAddr;

use clearskies_net::{CHANNEL_BINDING_LEN, PeerKey, PeerPolicy};
use clearskies_proto::crypto::DeviceKey;
use clearskies_quic::quinn::{Endpoint, VarInt};
use clearskies_quic::{
    Purpose, QuicStream, accept, accept_either, bind, bind_either, channel_binding, client, connect,
};
use clearskies_tokio::Tokio;
use clearskies_tokio::conformance::{self, Cut, PairingTransport, Transport};
use clearskies_tokio::node::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Each listener is an endpoint of its own; each dial binds a fresh endpoint for the dialer
/// and drops its handle once connected (the stream keeps it open). Both are made by [`bind`],
/// so both could accept and dial.
struct Quic;

impl Transport for Quic {
    type Listener = Endpoint;
    type Runtime = Tokio;
    type Family = TokioIo;
    type Stream = QuicStream;

    fn runtime(&self) -> Tokio {
        Tokio
    }

    async fn listen(&self, key: &DeviceKey, policy: PeerPolicy) -> Endpoint {
        bind(loopback(), key, policy).unwrap()
    }

    fn addr(listener: &Endpoint) -> SocketAddr {
        listener.local_addr().unwrap()
    }

    async fn accept(&self, listener: &Endpoint) -> io::Result<(PeerKey, QuicStream, Cut)> {
        let incoming = listener
            .accept()
            .await
            .ok_or_else(|| io::Error::other("the endpoint is closed"))?;
        let (peer, stream) = accept(listener, incoming).await?;
        let connection = stream.connection().clone();
        let cut: Cut = Box::new(move || connection.close(VarInt::from_u32(99), b"cut"));
        Ok((peer, stream, cut))
    }

    async fn dial(
        &self,
        key: &DeviceKey,
        policy: PeerPolicy,
        addr: SocketAddr,
    ) -> io::Result<(PeerKey, QuicStream)> {
        let endpoint = bind(loopback(), key, policy)?;
        connect(&endpoint, addr).await
    }
}

/// Like [`Quic`], with listeners made by [`bind_either`] (members and pairing on one endpoint)
/// and dialers by [`client`].
struct QuicEither;

impl Transport for QuicEither {
    type Listener = Endpoint;
    type Runtime = Tokio;
    type Family = TokioIo;
    type Stream = QuicStream;

    fn runtime(&self) -> Tokio {
        Tokio
    }

    async fn listen(&self, key: &DeviceKey, policy: PeerPolicy) -> Endpoint {
        bind_either(loopback(), key, policy).unwrap()
    }

    fn addr(listener: &Endpoint) -> SocketAddr {
        listener.local_addr().unwrap()
    }

    /// Accepts members and pairing attempts alike, as a daemon's endpoint does; what a
    /// connection is for was decided by its ALPN during the handshake.
    async fn accept(&self, listener: &Endpoint) -> io::Result<(PeerKey, QuicStream, Cut)> {
        let incoming = listener
            .accept()
            .await
            .ok_or_else(|| io::Error::other("the endpoint is closed"))?;
        let (_purpose, peer, stream) = accept_either(listener, incoming).await?;
        let connection = stream.connection().clone();
        let cut: Cut = Box::new(move || connection.close(VarInt::from_u32(99), b"cut"));
        Ok((peer, stream, cut))
    }

    async fn dial(
        &self,
        key: &DeviceKey,
        policy: PeerPolicy,
        addr: SocketAddr,
    ) -> io::Result<(PeerKey, QuicStream)> {
        let endpoint = client(loopback(), key, policy)?;
        connect(&endpoint, addr).await
    }
}

impl PairingTransport for QuicEither {
    fn channel_binding(stream: &QuicStream) -> io::Result<[u8; CHANNEL_BINDING_LEN]> {
        stream.channel_binding().map_err(|_| {
            io::Error::other("no channel binding: the QUIC handshake has not completed")
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_pairs_with_an_access_code_then_syncs_as_a_member() {
    conformance::a_device_pairs_with_an_access_code_then_syncs_as_a_member(&QuicEither).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_also_pairs_syncs_members_and_refuses_strangers_in_the_handshake() {
    conformance::two_nodes_sync_both_ways_and_a_restarted_node_catches_up(&QuicEither).await;
    conformance::a_device_that_is_not_a_member_is_refused_in_the_handshake(&QuicEither).await;
}

#[tokio::test]
async fn one_endpoint_tells_members_from_pairing_attempts_by_alpn() {
    let laptop = DeviceKey::from_secret(&[1; 32]);
    let member = DeviceKey::from_secret(&[2; 32]);
    let stranger = DeviceKey::from_secret(&[3; 32]);
    let listener = bind_either(
        loopback(),
        &laptop,
        PeerPolicy::pinned([member.device_id()]),
    )
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let dial = |key: &DeviceKey, policy: PeerPolicy| {
        let endpoint = client(loopback(), key, policy).unwrap();
        async move {
            let (peer, mut stream) = connect(&endpoint, addr).await?;
            stream.write_all(b"x").await?;
            io::Result::Ok((peer, stream))
        }
    };
    let accepting = async {
        let incoming = listener.accept().await.unwrap();
        accept_either(&listener, incoming).await
    };

    // A member comes to sync.
    let (accepted, dialed) = tokio::join!(
        accepting,
        dial(&member, PeerPolicy::pinned([laptop.device_id()]))
    );
    let (purpose, peer, _stream) = accepted.unwrap();
    assert_eq!(purpose, Purpose::Member);
    assert_eq!(peer.device_id, member.device_id());
    assert_eq!(dialed.unwrap().0.device_id, laptop.device_id());

    // A stranger comes to pair: any key is accepted, and both ends get the same binding.
    let accepting = async {
        let incoming = listener.accept().await.unwrap();
        accept_either(&listener, incoming).await
    };
    let (accepted, dialed) = tokio::join!(accepting, dial(&stranger, PeerPolicy::Pairing));
    let (purpose, peer, stream) = accepted.unwrap();
    let (_, dialed) = dialed.unwrap();
    assert_eq!(purpose, Purpose::Pairing);
    assert_eq!(peer.device_id, stranger.device_id());
    assert_eq!(
        stream.channel_binding().unwrap(),
        dialed.channel_binding().unwrap()
    );

    // The same stranger coming to sync is refused during the handshake, and told so.
    let accepting = async {
        let incoming = listener.accept().await.unwrap();
        accept_either(&listener, incoming).await
    };
    let endpoint = client(
        loopback(),
        &stranger,
        PeerPolicy::pinned([laptop.device_id()]),
    )
    .unwrap();
    let dialing = async {
        let (_, mut stream) = connect(&endpoint, addr).await?;
        stream.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.map(|_| ())
    };
    let (accepted, dialed) = tokio::join!(accepting, dialing);
    let Err(refused) = accepted else {
        panic!("the stranger was accepted")
    };
    let refused = refused.to_string();
    assert!(
        refused.contains(&stranger.device_id().to_string()),
        "{refused}"
    );
    let told = dialed.expect_err("the stranger learns it").to_string();
    assert!(told.contains("refused this device"), "{told}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sync_both_ways_and_a_restarted_node_catches_up() {
    conformance::two_nodes_sync_both_ways_and_a_restarted_node_catches_up(&Quic).await;
}

#[tokio::test]
async fn a_device_that_is_not_a_member_is_refused_in_the_handshake() {
    conformance::a_device_that_is_not_a_member_is_refused_in_the_handshake(&Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_transfer_is_reported_and_the_replicas_converge_after_reconnecting() {
    conformance::a_connection_cut_mid_transfer_is_reported_and_the_replicas_converge_after_reconnecting(&Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_member_reads_but_its_writes_are_refused() {
    conformance::a_read_only_member_reads_but_its_writes_are_refused(&Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_survives_shutdown_and_reaches_the_peer_after_restart() {
    conformance::an_acknowledged_write_survives_shutdown_and_reaches_the_peer_after_restart(&Quic)
        .await;
}

/// Connects `dialer` to `listener` (both endpoints of `bind`); the dialer writes one byte so
/// that the listener's `accept` sees the stream.
async fn pair(listener: &Endpoint, dialer: &Endpoint) -> (QuicStream, QuicStream) {
    let addr = listener.local_addr().unwrap();
    let accepting = async {
        let incoming = listener.accept().await.unwrap();
        accept(listener, incoming).await.unwrap()
    };
    let dialing = async {
        let (_, mut stream) = connect(dialer, addr).await.unwrap();
        stream.write_all(b"x").await.unwrap();
        stream
    };
    let ((_, mut accepted), dialed) = tokio::join!(accepting, dialing);
    let mut byte = [0u8; 1];
    accepted.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"x");
    (accepted, dialed)
}

#[tokio::test]
async fn channel_binding_is_equal_on_both_ends_and_differs_between_connections() {
    let one = DeviceKey::from_secret(&[1; 32]);
    let two = DeviceKey::from_secret(&[2; 32]);
    let a = bind(loopback(), &one, PeerPolicy::pinned([two.device_id()])).unwrap();
    let b = bind(loopback(), &two, PeerPolicy::pinned([one.device_id()])).unwrap();

    let (accepted, dialed) = pair(&a, &b).await;
    let listener_side = channel_binding(accepted.connection()).unwrap();
    let dialer_side = dialed.channel_binding().unwrap();
    assert_eq!(listener_side.len(), CHANNEL_BINDING_LEN);
    assert_eq!(listener_side, dialer_side);
    assert_ne!(listener_side, [0; CHANNEL_BINDING_LEN]);

    // Another connection between the same devices, this time dialled the other way: a new
    // TLS session, so a new value (both ends still agree).
    let (accepted_again, dialed_again) = pair(&b, &a).await;
    let again = channel_binding(accepted_again.connection()).unwrap();
    assert_eq!(again, dialed_again.channel_binding().unwrap());
    assert_ne!(again, listener_side);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_keeps_the_connection_up_and_redials_after_a_cut() {
    conformance::a_dialer_keeps_the_connection_up_and_redials_after_a_cut(&Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_streams_the_changes_under_its_prefix() {
    conformance::a_watch_streams_the_changes_under_its_prefix(&Quic).await;
}
