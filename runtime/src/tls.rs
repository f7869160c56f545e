//! TLS 1.3 over any `futures-io` byte stream (a TCP stream of any runtime), with the
//! configuration every driver shares (`clearskies-net`): raw Ed25519 device keys, mutual
//! authentication, peers judged by a [`PeerPolicy`]. `futures-rustls`, ring provider. The TCP
//! drivers only dial, accept and set their sockets' options; the handshakes are here, once.

use std::io;
use std::sync::Arc;

use clearskies_net::rustls::ServerConfig;
use clearskies_net::{PeerKey, PeerPolicy, Purpose, established_peer, handshake_error};
use clearskies_proto::crypto::DeviceKey;
use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::{LazyConfigAcceptor, TlsAcceptor, TlsConnector};

/// A TLS stream over the byte stream `S`, either side.
pub type TlsStream<S> = futures_rustls::TlsStream<S>;

/// Runs the TLS handshake as client on `tcp`, as `key`, judging the server with `policy`.
/// Returns the server's proven key.
pub async fn connect<S>(
    tcp: S,
    key: &DeviceKey,
    policy: PeerPolicy,
) -> io::Result<(PeerKey, TlsStream<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client = TlsConnector::from(clearskies_net::client_config(key, policy))
        .connect(clearskies_net::server_name(), tcp)
        .await
        .map_err(handshake_error)?;
    let peer = established_peer(client.get_ref().1)?;
    Ok((peer, futures_rustls::TlsStream::Client(client)))
}

/// Runs the TLS handshake as server on an accepted `tcp`. Returns the client's proven key.
pub async fn accept<S>(tcp: S, config: Arc<ServerConfig>) -> io::Result<(PeerKey, TlsStream<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
pub async fn accept_either<S>(
    tcp: S,
    members: Arc<ServerConfig>,
    pairing: Arc<ServerConfig>,
) -> io::Result<(Purpose, PeerKey, TlsStream<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = clearskies_net::rustls::server::Acceptor::default();
    let hello = LazyConfigAcceptor::new(acceptor, tcp).await?;
    let purpose = Purpose::of(&hello.client_hello());
    let server = hello
        .into_stream(purpose.config(members, pairing))
        .await
        .map_err(handshake_error)?;
    let peer = established_peer(server.get_ref().1)?;
    Ok((purpose, peer, futures_rustls::TlsStream::Server(server)))
}

/// The channel binding of a finished TLS connection (`clearskies_net::channel_binding`), equal
/// on both ends.
pub fn channel_binding<S>(stream: &TlsStream<S>) -> io::Result<[u8; 32]> {
    match stream {
        futures_rustls::TlsStream::Client(s) => clearskies_net::channel_binding(s.get_ref().1),
        futures_rustls::TlsStream::Server(s) => clearskies_net::channel_binding(s.get_ref().1),
    }
    .map_err(io::Error::other)
}
