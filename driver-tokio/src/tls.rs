//! TCP + TLS 1.3 on tokio, with the configuration every driver shares (`clearskies-net`):
//! raw Ed25519 device keys, mutual authentication, peers judged by a [`PeerPolicy`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use clearskies_net::{PeerKey, PeerPolicy, describe_handshake_error, established_peer};
use clearskies_proto::crypto::DeviceKey;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A TLS stream over TCP, either side.
pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;

/// Dials `addr` and runs the TLS handshake as client. Returns the peer's proven key.
pub async fn connect(
    addr: SocketAddr,
    key: &DeviceKey,
    policy: PeerPolicy,
) -> io::Result<(PeerKey, TlsStream)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let connector = TlsConnector::from(clearskies_net::client_config(key, policy));
    let tls = connector
        .connect(clearskies_net::server_name(), tcp)
        .await
        .map_err(|e| io::Error::new(e.kind(), describe_handshake_error(&e)))?;
    let peer = established_peer(tls.get_ref().1)?;
    Ok((peer, tokio_rustls::TlsStream::Client(tls)))
}

/// Accepts TLS on an accepted TCP stream. Returns the peer's proven key.
pub async fn accept(
    tcp: TcpStream,
    config: Arc<clearskies_net::rustls::ServerConfig>,
) -> io::Result<(PeerKey, TlsStream)> {
    tcp.set_nodelay(true)?;
    let tls = TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(|e| io::Error::new(e.kind(), describe_handshake_error(&e)))?;
    let peer = established_peer(tls.get_ref().1)?;
    Ok((peer, tokio_rustls::TlsStream::Server(tls)))
}
