//! Pairing over TCP + TLS on the async-std / smol family: the logic is
//! `clearskies_runtime::pairing`'s, re-exported here. `async-net` streams are `futures-io`
//! streams, so an accepted one goes straight to [`admit_tcp`] (or, once
//! [`tls::accept_either`] has sorted it as a pairing attempt, through [`PairingStream::tls`]
//! to [`admit_stream`]); only dialling is this driver's.

use std::net::SocketAddr;

use clearskies_net::PeerPolicy;
use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::pair::Joined;
pub use clearskies_runtime::pairing::{
    NOT_A_MEMBER, PairingFailure, PairingStream, admit_stream, admit_tcp, unix_micros,
};

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
    let connection = PairingStream::tls(stream, inviter.public_key)?;
    clearskies_runtime::pairing::join_stream(runtime, connection, key, code).await
}
