//! The driver conformance suite (`clearskies_runtime::conformance`) over TCP + TLS 1.3 with
//! pinned device keys, on real loopback sockets: two devices with redb stores sync both ways
//! and catch up after a restart, a stranger is refused in the handshake, and a connection cut
//! mid-transfer is reported and healed by reconnecting.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;

use clearskies_net::rustls::ServerConfig;
use clearskies_net::{PeerKey, PeerPolicy};
use clearskies_proto::crypto::DeviceKey;
use clearskies_tokio::Tokio;
use clearskies_tokio::conformance::{self, Cut, Transport};
use clearskies_tokio::node::TokioIo;
use clearskies_tokio::tls::{self, TlsStream};
use tokio::net::{TcpListener, TcpStream};

struct Tls;

impl Transport for Tls {
    type Listener = (TcpListener, Arc<ServerConfig>);
    type Runtime = Tokio;
    type Family = TokioIo;
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
