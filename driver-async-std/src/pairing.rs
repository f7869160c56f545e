//! Pairing over TCP + TLS on the async-std / smol family: the connection glue around
//! `clearskies_runtime::pairing`, which holds the logic.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_net::TcpStream;
use clearskies_net::PeerPolicy;
use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::Member;
use clearskies_proto::pair::{Admitted, Invitations, Joined};
pub use clearskies_runtime::pairing::{NOT_A_MEMBER, PairingFailure, unix_micros};
use clearskies_runtime::pairing::{PairingStream, admit_stream, join_stream};

use crate::AsyncIo;
use crate::tls::{self, TlsStream};

/// The joiner: dials `addr` as `key` and pairs with `code`, running the session on `runtime`.
/// Returns the share, access and members.
pub async fn join(
    runtime: &AsyncIo,
    addr: SocketAddr,
    key: &DeviceKey,
    code: &AccessCode,
) -> Result<Joined, PairingFailure> {
    let (inviter, stream) = tls::connect(addr, key, PeerPolicy::Pairing).await?;
    let binding = tls::channel_binding(&stream)?;
    let connection = PairingStream {
        stream,
        binding,
        peer_key: inviter.public_key,
    };
    join_stream(runtime, connection, key, code).await
}

/// The inviter: pairs the device that connected on `tcp`, checking its code against
/// `invitations`. `members(admitted)` records the new member and returns the share's member
/// list (the new device included) to grant.
pub async fn admit(
    runtime: &AsyncIo,
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
    let config = clearskies_net::server_config(key, PeerPolicy::Pairing);
    let (joiner, stream) = tls::accept(tcp, config).await?;
    admit_tls(
        runtime,
        stream,
        joiner.public_key,
        ip.as_bytes(),
        key,
        invitations,
        members,
    )
    .await
}

/// The inviter on a TLS connection already accepted in pairing mode (by
/// [`tls::accept_either`]), from a device with public key `peer_key` at `address` (an opaque
/// key for the per-address limit).
pub async fn admit_tls(
    runtime: &AsyncIo,
    stream: TlsStream,
    peer_key: [u8; 32],
    address: &[u8],
    key: &DeviceKey,
    invitations: Arc<Mutex<Invitations>>,
    members: impl FnMut(&Admitted) -> Vec<Member>,
) -> Result<Admitted, PairingFailure> {
    let binding = tls::channel_binding(&stream)?;
    let connection = PairingStream {
        stream,
        binding,
        peer_key,
    };
    admit_stream(runtime, connection, address, key, invitations, members).await
}
