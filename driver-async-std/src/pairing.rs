//! Pairing over TCP + TLS on the async-std / smol family: the socket glue around
//! `clearskies_runtime::pairing`, which holds the logic.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_net::TcpStream;
use clearskies_net::PeerPolicy;
use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::Member;
use clearskies_proto::pair::{Admitted, Invitations, Joined};
pub use clearskies_runtime::pairing::{NOT_A_MEMBER, PairingFailure, admit_tls, unix_micros};
use clearskies_runtime::pairing::{admit_tcp, join_tls};

use crate::{AsyncIo, tls};

/// The joiner: dials `addr` as `key` and pairs with `code`, its session's tasks on `runtime`.
/// Returns the share, access and members.
pub async fn join(
    runtime: &AsyncIo,
    addr: SocketAddr,
    key: &DeviceKey,
    code: &AccessCode,
) -> Result<Joined, PairingFailure> {
    let (inviter, stream) = tls::connect(addr, key, PeerPolicy::Pairing).await?;
    join_tls(runtime, inviter, stream, key, code).await
}

/// The inviter: pairs the device that connected on `tcp`, checking its code against
/// `invitations`. `members(admitted)` records the new member and returns the share's member
/// list (the new device included) to grant. For a connection [`tls::accept_either`] accepted
/// in pairing mode, call [`admit_tls`].
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
    tcp.set_nodelay(true)?;
    admit_tcp(runtime, tcp, ip.as_bytes(), key, invitations, members).await
}
