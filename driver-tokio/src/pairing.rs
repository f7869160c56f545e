//! Pairing over TCP + TLS on tokio: the socket glue around `clearskies_runtime::pairing`,
//! which holds the logic (proto's sans-IO joiner and inviter inside a session, with the
//! connection's exporter value as channel binding).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clearskies_net::PeerPolicy;
use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::Member;
use clearskies_proto::pair::{Admitted, Invitations, Joined};
pub use clearskies_runtime::pairing::{NOT_A_MEMBER, PairingFailure, unix_micros};
use clearskies_runtime::pairing::{
    PairingStream, admit_stream as admit_inviter, admit_tcp, join_stream,
};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::Tokio;
use crate::tls::{self, TlsStream};

/// The joiner: dials `addr`, pairs with `code`. Returns the share, access and members.
pub async fn join(
    addr: SocketAddr,
    key: &DeviceKey,
    code: &AccessCode,
) -> Result<Joined, PairingFailure> {
    let (inviter, stream) = tls::connect(addr, key, PeerPolicy::Pairing).await?;
    let connection = PairingStream::tls(stream, inviter.public_key)?;
    join_stream(&Tokio, connection, key, code).await
}

/// The inviter: pairs a device that connected on `tcp`, checking its code against
/// `invitations`. `members(admitted)` records the new member and returns the share's member
/// list (the new device included) to grant.
pub async fn admit(
    tcp: TcpStream,
    key: &DeviceKey,
    invitations: Arc<Mutex<Invitations>>,
    members: impl FnMut(&Admitted) -> Vec<Member>,
) -> Result<Admitted, PairingFailure> {
    // The per-address limit is keyed by the IP alone (a retry comes from a new port).
    let ip = tcp
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    tcp.set_nodelay(true)?;
    admit_tcp(
        &Tokio,
        tcp.compat(),
        ip.as_bytes(),
        key,
        invitations,
        members,
    )
    .await
}

/// The inviter on a TLS connection already accepted in pairing mode, from a device with
/// public key `peer_key` at `address` (an opaque key for the per-address limit).
pub async fn admit_stream(
    stream: TlsStream,
    peer_key: [u8; 32],
    address: &[u8],
    key: &DeviceKey,
    invitations: Arc<Mutex<Invitations>>,
    members: impl FnMut(&Admitted) -> Vec<Member>,
) -> Result<Admitted, PairingFailure> {
    let connection = PairingStream::tls(stream, peer_key)?;
    admit_inviter(&Tokio, connection, address, key, invitations, members).await
}

/// The joiner on any tokio byte stream already connected in pairing mode (a QUIC stream, a
/// TLS stream adapted to tokio), given its channel binding and the inviter's proven key.
pub async fn join_on<S>(
    stream: S,
    binding: [u8; 32],
    inviter_key: [u8; 32],
    key: &DeviceKey,
    code: &AccessCode,
) -> Result<Joined, PairingFailure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let connection = PairingStream {
        stream: stream.compat(),
        binding,
        peer_key: inviter_key,
    };
    join_stream(&Tokio, connection, key, code).await
}

/// The inviter on any tokio byte stream already accepted in pairing mode, given its channel
/// binding, the joiner's proven key and its `address` (an opaque key for the per-address
/// limit).
pub async fn admit_on<S>(
    stream: S,
    binding: [u8; 32],
    peer_key: [u8; 32],
    address: &[u8],
    key: &DeviceKey,
    invitations: Arc<Mutex<Invitations>>,
    members: impl FnMut(&Admitted) -> Vec<Member>,
) -> Result<Admitted, PairingFailure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let connection = PairingStream {
        stream: stream.compat(),
        binding,
        peer_key,
    };
    admit_inviter(&Tokio, connection, address, key, invitations, members).await
}
