//! TCP + TLS 1.3 on `async-net` and `futures-rustls`, with the configuration every driver
//! shares (`clearskies-net`): raw Ed25519 device keys, mutual authentication, peers judged by a
//! [`PeerPolicy`]. Only the socket glue is here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_net::TcpStream;
pub use clearskies_net::Purpose;
use clearskies_net::rustls::ServerConfig;
use clearskies_net::{PeerKey, PeerPolicy, established_peer, handshake_error};
use clearskies_proto::crypto::DeviceKey;
use futures_rustls::{LazyConfigAcceptor, TlsAcceptor, TlsConnector};

/// A TLS stream over TCP, either side.
pub type TlsStream = futures_rustls::TlsStream<TcpStream>;

/// Dials `addr` and runs the TLS handshake as client. Returns the peer's proven key.
pub async fn connect(
    addr: SocketAddr,
    key: &DeviceKey,
    policy: PeerPolicy,
) -> io::Result<(PeerKey, TlsStream)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let client = TlsConnector::from(clearskies_net::client_config(key, policy))
        .connect(clearskies_net::server_name(), tcp)
        .await
        .map_err(handshake_error)?;
    let peer = established_peer(client.get_ref().1)?;
    Ok((peer, futures_rustls::TlsStream::Client(client)))
}

/// Accepts TLS on an accepted TCP stream. Returns the peer's proven key.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<(PeerKey, TlsStream)> {
    tcp.set_nodelay(true)?;
    let server = TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(handshake_error)?;
    let peer = established_peer(server.get_ref().1)?;
    Ok((peer, futures_rustls::TlsStream::Server(server)))
}

/// Accepts TLS on one port for both purposes: reads the ClientHello's ALPN first
/// ([`Purpose::of`]), then runs the handshake with the members configuration (strangers refused
/// during the handshake) or the pairing one.
pub async fn accept_either(
    tcp: TcpStream,
    members: Arc<ServerConfig>,
    pairing: Arc<ServerConfig>,
) -> io::Result<(Purpose, PeerKey, TlsStream)> {
    tcp.set_nodelay(true)?;
    let hello =
        LazyConfigAcceptor::new(clearskies_net::rustls::server::Acceptor::default(), tcp).await?;
    let purpose = Purpose::of(&hello.client_hello());
    let server = hello
        .into_stream(purpose.config(members, pairing))
        .await
        .map_err(handshake_error)?;
    let peer = established_peer(server.get_ref().1)?;
    Ok((purpose, peer, futures_rustls::TlsStream::Server(server)))
}

/// The channel binding of a finished TLS connection (`clearskies_net::channel_binding`).
pub fn channel_binding(stream: &TlsStream) -> io::Result<[u8; 32]> {
    match stream {
        futures_rustls::TlsStream::Client(s) => clearskies_net::channel_binding(s.get_ref().1),
        futures_rustls::TlsStream::Server(s) => clearskies_net::channel_binding(s.get_ref().1),
    }
    .map_err(io::Error::other)
}
