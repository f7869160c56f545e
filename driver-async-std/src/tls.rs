//! TCP + TLS 1.3 on `async-net`: its sockets under the TLS of `clearskies_runtime::tls` (the
//! configuration every driver shares, from `clearskies-net`: raw Ed25519 device keys, mutual
//! authentication, peers judged by a [`PeerPolicy`]). Only the socket glue is here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_net::TcpStream;
pub use clearskies_net::Purpose;
use clearskies_net::rustls::ServerConfig;
use clearskies_net::{PeerKey, PeerPolicy};
use clearskies_proto::crypto::DeviceKey;
use clearskies_runtime::tls;
pub use clearskies_runtime::tls::channel_binding;

/// A TLS stream over TCP, either side.
pub type TlsStream = tls::TlsStream<TcpStream>;

/// Dials `addr` and runs the TLS handshake as client. Returns the peer's proven key.
pub async fn connect(
    addr: SocketAddr,
    key: &DeviceKey,
    policy: PeerPolicy,
) -> io::Result<(PeerKey, TlsStream)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tls::connect(tcp, key, policy).await
}

/// Accepts TLS on an accepted TCP stream. Returns the peer's proven key.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<(PeerKey, TlsStream)> {
    tcp.set_nodelay(true)?;
    tls::accept(tcp, config).await
}

/// Accepts TLS on one port for both purposes (see `clearskies_runtime::tls::accept_either`):
/// members are judged by `members` during the handshake, pairing attempts get `pairing`.
pub async fn accept_either(
    tcp: TcpStream,
    members: Arc<ServerConfig>,
    pairing: Arc<ServerConfig>,
) -> io::Result<(Purpose, PeerKey, TlsStream)> {
    tcp.set_nodelay(true)?;
    tls::accept_either(tcp, members, pairing).await
}
