//! TCP + TLS 1.3 on tokio, with the configuration every driver shares (`clearskies-net`):
//! raw Ed25519 device keys, mutual authentication, peers judged by a [`PeerPolicy`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use clearskies_net::Purpose;
use clearskies_net::{PeerKey, PeerPolicy, established_peer, handshake_error};
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
        .map_err(handshake_error)?;
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
        .map_err(handshake_error)?;
    let peer = established_peer(tls.get_ref().1)?;
    Ok((peer, tokio_rustls::TlsStream::Server(tls)))
}

/// Accepts TLS on one port for both purposes: reads the ClientHello's ALPN first, then runs
/// the handshake with the members configuration (strangers refused during the handshake) or
/// the pairing one.
pub async fn accept_either(
    tcp: TcpStream,
    members: Arc<clearskies_net::rustls::ServerConfig>,
    pairing: Arc<clearskies_net::rustls::ServerConfig>,
) -> io::Result<(Purpose, PeerKey, TlsStream)> {
    tcp.set_nodelay(true)?;
    let start = tokio_rustls::LazyConfigAcceptor::new(
        clearskies_net::rustls::server::Acceptor::default(),
        tcp,
    )
    .await?;
    let purpose = Purpose::of(&start.client_hello());
    let tls = start
        .into_stream(purpose.config(members, pairing))
        .await
        .map_err(handshake_error)?;
    let peer = established_peer(tls.get_ref().1)?;
    Ok((purpose, peer, tokio_rustls::TlsStream::Server(tls)))
}

/// The channel binding of a finished TLS connection (`clearskies_net::channel_binding`).
pub fn channel_binding(stream: &TlsStream) -> io::Result<[u8; 32]> {
    match stream {
        tokio_rustls::TlsStream::Client(s) => clearskies_net::channel_binding(s.get_ref().1),
        tokio_rustls::TlsStream::Server(s) => clearskies_net::channel_binding(s.get_ref().1),
    }
    .map_err(io::Error::other)
}
