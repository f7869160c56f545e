//! The driver conformance suite (`clearskies_runtime::conformance`) over TCP + TLS 1.3 with
//! pinned device keys, on real loopback sockets, on tokio: two devices with redb stores sync
//! both ways and catch up after a restart, a stranger is refused in the handshake, a
//! connection cut mid-transfer is reported and healed by reconnecting, a read-only member's
//! writes are refused, acknowledged writes survive a shutdown, and a device pairs with an
//! access code and then syncs.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;

use clearskies_net::rustls::ServerConfig;
use clearskies_net::{PeerKey, PeerPolicy};
use clearskies_proto::crypto::DeviceKey;
use clearskies_tokio::Tokio;
use clearskies_tokio::conformance::{self, Cut, PairingTransport, Transport};
use clearskies_tokio::node::FuturesIo;
use clearskies_tokio::tls::{self, TlsStream};
use tokio::net::{TcpListener, TcpStream};

struct Tls;

impl Transport for Tls {
    type Listener = (TcpListener, Arc<ServerConfig>);
    type Runtime = Tokio;
    type Family = FuturesIo;
    type Stream = TlsStream;

    fn runtime(&self) -> Tokio {
        Tokio
    }

    async fn listen(&self, key: &DeviceKey, policy: PeerPolicy) -> Self::Listener {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        (listener, clearskies_net::server_config(key, policy))
    }

    fn addr(listener: &Self::Listener) -> SocketAddr {
        listener.0.local_addr().unwrap()
    }

    async fn accept(&self, listener: &Self::Listener) -> io::Result<(PeerKey, TlsStream, Cut)> {
        let (tcp, _) = listener.0.accept().await?;
        // A second handle on the socket, to shut it down under the TLS stream.
        let tcp = tcp.into_std()?;
        let twin = tcp.try_clone()?;
        let tcp = TcpStream::from_std(tcp)?;
        let (peer, stream) = tls::accept(tcp, listener.1.clone()).await?;
        let cut: Cut = Box::new(move || {
            let _ = twin.shutdown(Shutdown::Both);
        });
        Ok((peer, stream, cut))
    }

    async fn dial(
        &self,
        key: &DeviceKey,
        policy: PeerPolicy,
        addr: SocketAddr,
    ) -> io::Result<(PeerKey, TlsStream)> {
        tls::connect(addr, key, policy).await
    }
}

impl PairingTransport for Tls {
    fn channel_binding(stream: &TlsStream) -> io::Result<[u8; 32]> {
        tls::channel_binding(stream)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sync_both_ways_and_a_restarted_node_catches_up() {
    conformance::two_nodes_sync_both_ways_and_a_restarted_node_catches_up(&Tls).await;
}

#[tokio::test]
async fn a_device_that_is_not_a_member_is_refused_in_the_handshake() {
    conformance::a_device_that_is_not_a_member_is_refused_in_the_handshake(&Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_transfer_is_reported_and_the_replicas_converge_after_reconnecting() {
    conformance::a_connection_cut_mid_transfer_is_reported_and_the_replicas_converge_after_reconnecting(&Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_streams_the_changes_under_its_prefix() {
    conformance::a_watch_streams_the_changes_under_its_prefix(&Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_member_reads_but_its_writes_are_refused() {
    conformance::a_read_only_member_reads_but_its_writes_are_refused(&Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_survives_shutdown_and_reaches_the_peer_after_restart() {
    conformance::an_acknowledged_write_survives_shutdown_and_reaches_the_peer_after_restart(&Tls)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_pairs_with_an_access_code_then_syncs_as_a_member() {
    conformance::a_device_pairs_with_an_access_code_then_syncs_as_a_member(&Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_keeps_the_connection_up_and_redials_after_a_cut() {
    conformance::a_dialer_keeps_the_connection_up_and_redials_after_a_cut(&Tls).await;
}
