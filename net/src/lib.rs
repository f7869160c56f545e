//! # clearskies-net
//!
//! The TLS 1.3 configuration every ClearSkies driver shares (tokio TCP, async-std TCP, quinn
//! QUIC), so that no driver carries TLS code of its own. It is runtime-agnostic: it builds
//! [`rustls`] configurations and reads finished connections, and never touches a socket.
//!
//! `spec/transport.md` is normative; in short:
//!
//! * **TLS 1.3 only**, rustls with the ring provider; no resumption, no 0-RTT.
//! * **Raw public keys** (RFC 7250): a device presents its Ed25519 device key as a DER
//!   `SubjectPublicKeyInfo` ([`spki`]), never an X.509 certificate. The key is the identity;
//!   its [`DeviceId`](clearskies_proto::identity::DeviceId) is SHA-256 of the 32 key bytes.
//! * **Mutual authentication**: the server requires the client's key, and both sides judge the
//!   other's key with a [`PeerPolicy`]: [`PeerPolicy::Members`] accepts only devices of a share
//!   both hold and refuses any other during the handshake, with a reason; [`PeerPolicy::Pairing`]
//!   accepts any key, for the pairing exchange that follows to authenticate.
//! * **ALPN** [`ALPN`] (`clearskies/1`); the client names the server [`SERVER_NAME`] and sends
//!   no SNI, since identities are keys, not names.
//! * **Channel binding**: [`channel_binding`] is the TLS exporter with label
//!   [`CHANNEL_BINDING_LABEL`], 32 bytes, no context; the pairing transcript includes it, so a
//!   man in the middle, who holds two different TLS sessions, cannot complete a pairing.
//!
//! ## Using it from a driver
//!
//! ```
//! use clearskies_net::{PeerPolicy, client_config, server_config, server_name};
//! use clearskies_proto::crypto::DeviceKey;
//!
//! let me = DeviceKey::from_secret(&[1; 32]);
//! let friend = DeviceKey::from_secret(&[2; 32]).device_id();
//! let policy = PeerPolicy::pinned([friend]);
//! let server = server_config(&me, policy.clone()); // for the listener
//! let client = client_config(&me, policy); // for the dialer, with `server_name()`
//! # let _ = (server, client, server_name());
//! ```
//!
//! After the handshake, call [`established_peer`] (it checks TLS 1.3 and ALPN and returns the
//! peer's [`PeerKey`]) and [`channel_binding`]; hand both to proto. A failed handshake's error
//! becomes a human message with [`describe_handshake_error`].
//!
//! With TLS 1.3 the server learns the client's key only after the client has finished its side
//! of the handshake: a client the server refuses sees its `connect` succeed and the refusal
//! (a `certificate_unknown` alert) on its first read.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod failure;
mod keys;
mod policy;
mod verifier;

use std::fmt;
use std::sync::Arc;

use clearskies_proto::crypto::DeviceKey;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, CommonState, HandshakeKind, ProtocolVersion, ServerConfig};

pub use failure::{HandshakeFailure, describe_handshake_error, handshake_error};
pub use keys::{PeerKey, SPKI_LEN, SPKI_PREFIX, public_key_from_spki, spki};
pub use policy::{KeyPolicy, KeyRefused, PeerPolicy};
/// The rustls this crate configures, for drivers to name its types without pinning their own.
pub use rustls;

use verifier::RawKeyVerifier;

/// The ALPN protocol name (RFC 7301) of ClearSkies over TLS, version 1: member sessions.
pub const ALPN: &[u8] = b"clearskies/1";

/// The ALPN protocol name of a connection that comes to pair. A listener reads it from the
/// ClientHello and picks its configuration before the handshake, so member connections are
/// judged (and strangers refused) during the handshake while pairings accept any key.
pub const PAIRING_ALPN: &[u8] = b"clearskies-pair/1";

/// The ALPN a configuration with `policy` offers.
fn alpn_for(policy: &PeerPolicy) -> Vec<u8> {
    match policy {
        PeerPolicy::Pairing => PAIRING_ALPN.to_vec(),
        PeerPolicy::Members(_) => ALPN.to_vec(),
    }
}

/// The server name a client dials: identities are keys, so the name is a fixed placeholder in
/// the reserved `.invalid` domain (RFC 6761). It is not sent (no SNI) and not checked.
pub const SERVER_NAME: &str = "clearskies.invalid";

/// The TLS exporter label (RFC 8446 § 7.5) of [`channel_binding`].
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-clearskies-channel-binding";

/// Length in bytes of [`channel_binding`].
pub const CHANNEL_BINDING_LEN: usize = 32;

/// [`SERVER_NAME`] as rustls takes it, for `connect`.
pub fn server_name() -> ServerName<'static> {
    // Invariant: SERVER_NAME is a constant, valid DNS name; the unit test `server_name_parses`
    // covers it.
    ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name")
}

/// The provider every configuration uses: rustls's ring provider.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's configuration: TLS 1.3, presents `key` as a raw public key, requires the
/// client's raw public key and judges it with `policy`.
pub fn server_config(key: &DeviceKey, policy: PeerPolicy) -> Arc<ServerConfig> {
    // Invariant: the ring provider supports TLS 1.3 with its default suites and groups; the
    // tests build this configuration on every run.
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .with_client_cert_verifier(RawKeyVerifier::new(policy.clone()))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(keys::certified_key(key)),
        ));
    config.alpn_protocols = vec![alpn_for(&policy)];
    // No resumption: every connection runs the full handshake, so every connection checks the
    // peer's key against the policy as it is now.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Arc::new(config)
}

/// The dialer's configuration: TLS 1.3, presents `key` as a raw public key and judges the
/// server's raw public key with `policy`. Connect with [`server_name`].
pub fn client_config(key: &DeviceKey, policy: PeerPolicy) -> Arc<ClientConfig> {
    // Invariant: as in `server_config`.
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous() // a custom verifier: pinned keys instead of a CA
        .with_custom_certificate_verifier(RawKeyVerifier::new(policy.clone()))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(keys::certified_key(key)),
        ));
    config.alpn_protocols = vec![alpn_for(&policy)];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Arc::new(config)
}

/// The key the peer proved it holds, once the handshake has completed (with either policy).
/// `None` while handshaking, or if the peer presented no Ed25519 raw public key (which the
/// verifiers of this crate never let through).
pub fn peer_device(conn: &CommonState) -> Option<PeerKey> {
    if conn.is_handshaking() {
        return None;
    }
    PeerKey::from_certificates(conn.peer_certificates()?)
}

/// What a connection accepted on a device's one port came for, read from its ClientHello's
/// ALPN before the handshake goes on (`accept_either` in the TCP drivers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A member's session: the peer is judged by the members policy during the handshake.
    Member,
    /// A pairing attempt ([`PAIRING_ALPN`]): any key is accepted; the PAKE decides.
    Pairing,
}

impl Purpose {
    /// The purpose a ClientHello asks for: pairing if it offers [`PAIRING_ALPN`].
    pub fn of(hello: &rustls::server::ClientHello<'_>) -> Purpose {
        if hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == PAIRING_ALPN))
        {
            Purpose::Pairing
        } else {
            Purpose::Member
        }
    }

    /// Which of the two server configurations the handshake goes on with.
    pub fn config(
        self,
        members: Arc<ServerConfig>,
        pairing: Arc<ServerConfig>,
    ) -> Arc<ServerConfig> {
        match self {
            Purpose::Member => members,
            Purpose::Pairing => pairing,
        }
    }
}

/// Why a finished TLS connection is not a ClearSkies connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotEstablished {
    /// The handshake has not completed yet.
    Handshaking,
    /// Not TLS 1.3 (cannot happen with this crate's configurations).
    WrongVersion,
    /// The peer did not agree to [`ALPN`]: it chose no protocol (the bytes are `None`) or
    /// another one.
    WrongProtocol(Option<Vec<u8>>),
    /// The peer presented no Ed25519 raw public key.
    NoPeerKey,
    /// The session was resumed rather than fully authenticated (cannot happen with this
    /// crate's configurations, which disable resumption).
    Resumed,
}

impl fmt::Display for NotEstablished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotEstablished::Handshaking => write!(f, "the TLS handshake has not completed"),
            NotEstablished::WrongVersion => write!(f, "the connection is not TLS 1.3"),
            NotEstablished::WrongProtocol(None) => write!(
                f,
                "the peer did not agree to the application protocol \"{}\"",
                String::from_utf8_lossy(ALPN)
            ),
            NotEstablished::WrongProtocol(Some(other)) => write!(
                f,
                "the peer chose the application protocol \"{}\", not \"{}\"",
                String::from_utf8_lossy(other),
                String::from_utf8_lossy(ALPN)
            ),
            NotEstablished::NoPeerKey => write!(f, "the peer presented no device key"),
            NotEstablished::Resumed => write!(f, "the TLS session was resumed"),
        }
    }
}

impl std::error::Error for NotEstablished {}

impl From<NotEstablished> for std::io::Error {
    fn from(err: NotEstablished) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }
}

/// Checks that a connection whose handshake succeeded is a ClearSkies connection (full TLS 1.3
/// handshake, ALPN [`ALPN`]) and returns the peer's key. Drivers call it once, right after the
/// handshake, and close the connection on `Err`.
///
/// rustls lets a TCP peer that offers no ALPN at all through the handshake; this is where such
/// a peer is refused.
pub fn established_peer(conn: &CommonState) -> Result<PeerKey, NotEstablished> {
    if conn.is_handshaking() {
        return Err(NotEstablished::Handshaking);
    }
    if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
        return Err(NotEstablished::WrongVersion);
    }
    if conn.handshake_kind() != Some(HandshakeKind::Full)
        && conn.handshake_kind() != Some(HandshakeKind::FullWithHelloRetryRequest)
    {
        return Err(NotEstablished::Resumed);
    }
    match conn.alpn_protocol() {
        Some(protocol) if protocol == ALPN || protocol == PAIRING_ALPN => {}
        other => return Err(NotEstablished::WrongProtocol(other.map(<[u8]>::to_vec))),
    }
    peer_device(conn).ok_or(NotEstablished::NoPeerKey)
}

/// A connection whose TLS exporter (RFC 5705, RFC 8446 § 7.5) can be read: rustls's TCP
/// connections and its QUIC [`rustls::quic::Connection`]. (quinn exposes the same exporter as
/// `Connection::export_keying_material`; call it with [`CHANNEL_BINDING_LABEL`] and an empty
/// context, which TLS 1.3 defines to equal no context.)
pub trait KeyingMaterialExporter {
    /// Fills `output` with the exporter value for `label` and `context`.
    fn export(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: Option<&[u8]>,
    ) -> Result<(), rustls::Error>;
}

macro_rules! exporter_for {
    ($($ty:ty),* $(,)?) => {$(
        impl KeyingMaterialExporter for $ty {
            fn export(
                &self,
                output: &mut [u8],
                label: &[u8],
                context: Option<&[u8]>,
            ) -> Result<(), rustls::Error> {
                self.export_keying_material(output, label, context).map(|_| ())
            }
        }
    )*};
}

exporter_for!(
    rustls::ClientConnection,
    rustls::ServerConnection,
    rustls::Connection,
    rustls::quic::Connection,
);

/// The channel binding of a connection: its TLS exporter value for [`CHANNEL_BINDING_LABEL`],
/// [`CHANNEL_BINDING_LEN`] bytes, no context. Both ends of one TLS session compute the same
/// value; any two sessions (including the two legs a man in the middle must run) differ. The
/// pairing transcript includes it.
///
/// Fails only before the handshake has completed.
pub fn channel_binding(
    conn: &impl KeyingMaterialExporter,
) -> Result<[u8; CHANNEL_BINDING_LEN], rustls::Error> {
    let mut out = [0; CHANNEL_BINDING_LEN];
    conn.export(&mut out, CHANNEL_BINDING_LABEL, None)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_parses() {
        assert_eq!(server_name().to_str(), SERVER_NAME);
    }

    #[test]
    fn configs_are_tls13_raw_keys_only() {
        let key = DeviceKey::from_secret(&[3; 32]);
        let server = server_config(&key, PeerPolicy::Pairing);
        let client = client_config(&key, PeerPolicy::Pairing);
        assert!(server.cert_resolver.only_raw_public_keys());
        assert!(client.client_auth_cert_resolver.only_raw_public_keys());
        assert_eq!(server.alpn_protocols, vec![PAIRING_ALPN.to_vec()]);
        assert_eq!(client.alpn_protocols, vec![PAIRING_ALPN.to_vec()]);
        let members = PeerPolicy::pinned([key.device_id()]);
        assert_eq!(
            server_config(&key, members.clone()).alpn_protocols,
            vec![ALPN.to_vec()]
        );
        assert_eq!(
            client_config(&key, members).alpn_protocols,
            vec![ALPN.to_vec()]
        );
        assert!(!client.enable_sni);
        assert_eq!(server.send_tls13_tickets, 0);
    }
}
